//! Worktree bootstrap: what the supervisor does in a fresh slot before it starts the runner —
//! copy the repository's `copy_files` from the main checkout, then run its `setup` argv.
//!
//! It is part of the attempt, not of the slot's allocation, so a failure is seen and recorded
//! like any other end: an `infra` failure in `exit.json` (retried without counting against the
//! task), the runner never started. Setup runs like a runner: no shell, stdin null, its own
//! process group, output into the attempt's log, stopped by the same stop requests.

use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::supervisor::{Exit, FailureClass, RunnerDir, RunnerRecord, StopReason};
use crate::sys::{self, WakePipe};
use crate::timefmt;

/// One file to copy into the slot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyFile {
    pub from: PathBuf,
    pub to: PathBuf,
}

/// What a slot needs before its runner, as the launcher hands it to the supervisor.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bootstrap {
    pub setup: Vec<String>,
    pub setup_timeout: Duration,
    pub copy_files: Vec<CopyFile>,
}

/// How the supervisor learns of a stop request while setup runs.
pub struct Signals<'a> {
    pub wake: &'a WakePipe,
    pub terminate: &'a AtomicBool,
}

/// Copies the files and runs setup. `Err` carries the attempt's end when the runner must not
/// start: an `infra` failure, or a stop requested meanwhile.
pub fn run(record: &RunnerRecord, dir: &RunnerDir, signals: &Signals<'_>) -> Result<(), Exit> {
    let started = Instant::now();
    prepare(record, dir, signals, started)?;
    if dir.stop_path().exists() {
        // A stop requested before the runner started, whose signal may not have reached us
        // (the supervisor's pid is only published once the runner runs).
        let mut exit = ended(record, started);
        exit.stopped = Some(requested_stop(dir));
        return Err(exit);
    }
    Ok(())
}

/// The reason a stop request gave; a bare signal is the dispatcher's drain.
fn requested_stop(dir: &RunnerDir) -> StopReason {
    fs::read_to_string(dir.stop_path())
        .ok()
        .as_deref()
        .and_then(StopReason::parse)
        .unwrap_or(StopReason::Interrupted)
}

fn prepare(
    record: &RunnerRecord,
    dir: &RunnerDir,
    signals: &Signals<'_>,
    started: Instant,
) -> Result<(), Exit> {
    for file in &record.copy_files {
        copy(file).map_err(|reason| infra(record, started, reason))?;
        eprintln!("# dispatcher-supervisor: copied {}", file.from.display());
    }
    if record.setup.is_empty() {
        return Ok(());
    }
    let shown = shown(&record.setup);
    eprintln!("# dispatcher-supervisor: setup {shown}");
    let timeout = Duration::from_millis(record.setup_timeout_ms.unwrap_or(u64::MAX));
    match setup(record, dir, signals, timeout) {
        Ok(SetupEnd::Exited(status)) if status.success() => {
            eprintln!("# dispatcher-supervisor: setup {shown} done");
            Ok(())
        }
        Ok(SetupEnd::Exited(status)) => {
            let how = match (status.code(), status.signal()) {
                (Some(code), _) => format!("with exit code {code}"),
                (None, Some(signal)) => format!("killed by signal {signal}"),
                (None, None) => "without an exit status".to_owned(),
            };
            Err(infra(record, started, format!("setup {shown} failed {how}")))
        }
        Ok(SetupEnd::TimedOut) => Err(infra(
            record,
            started,
            format!(
                "setup {shown} timed out after {}",
                format_duration(timeout)
            ),
        )),
        Ok(SetupEnd::Stopped(reason)) => {
            let mut exit = ended(record, started);
            exit.stopped = Some(reason);
            Err(exit)
        }
        Err(err) => Err(infra(
            record,
            started,
            format!("setup {shown} could not start: {err}"),
        )),
    }
}

/// The argv as a message shows it: `npm ci` in backquotes.
fn shown(argv: &[String]) -> String {
    format!("`{}`", argv.join(" "))
}

/// A timeout as the config would write it: `10m`, `90s`, `1500ms`.
fn format_duration(duration: Duration) -> String {
    let secs = duration.as_secs();
    if duration.subsec_nanos() != 0 {
        format!("{}ms", duration.as_millis())
    } else if secs != 0 && secs % 3600 == 0 {
        format!("{}h", secs / 3600)
    } else if secs != 0 && secs % 60 == 0 {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

fn copy(file: &CopyFile) -> Result<(), String> {
    let problem = |what: &str, err: io::Error| {
        format!(
            "copy_files: cannot {what} {}: {err}",
            file.from.display()
        )
    };
    let meta = fs::metadata(&file.from).map_err(|err| problem("read", err))?;
    if !meta.is_file() {
        return Err(format!(
            "copy_files: {} is not a file",
            file.from.display()
        ));
    }
    if let Some(parent) = file.to.parent() {
        fs::create_dir_all(parent).map_err(|err| problem("copy", err))?;
    }
    fs::copy(&file.from, &file.to).map_err(|err| problem("copy", err))?;
    Ok(())
}

enum SetupEnd {
    Exited(ExitStatus),
    TimedOut,
    Stopped(StopReason),
}

/// Runs the setup argv to its end, a timeout or a stop request; a timed-out or stopped setup
/// is killed with its process group (TERM, then KILL after the grace period).
fn setup(
    record: &RunnerRecord,
    dir: &RunnerDir,
    signals: &Signals<'_>,
    timeout: Duration,
) -> io::Result<SetupEnd> {
    let (program, args) = record
        .setup
        .split_first()
        .ok_or_else(|| io::Error::other("empty setup"))?;
    let mut child = Command::new(program)
        .args(args)
        .current_dir(&record.cwd)
        .stdin(Stdio::null())
        .process_group(0)
        .spawn()?;
    let pid = child.id();
    let started = Instant::now();
    let grace = Duration::from_millis(record.stop_grace_ms);
    let mut stopping: Option<(SetupEnd, Instant)> = None;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        let now = Instant::now();
        match &stopping {
            Some((_, kill_at)) if now >= *kill_at => {
                sys::signal_group(pid, libc::SIGKILL);
                let status = child.wait()?;
                break status;
            }
            Some(_) => {}
            None => {
                let end = if signals.terminate.load(Ordering::Relaxed) {
                    Some(SetupEnd::Stopped(requested_stop(dir)))
                } else if now.duration_since(started) >= timeout {
                    Some(SetupEnd::TimedOut)
                } else {
                    None
                };
                if let Some(end) = end {
                    sys::signal_group(pid, libc::SIGTERM);
                    stopping = Some((end, now + grace));
                }
            }
        }
        let next = match &stopping {
            Some((_, kill_at)) => *kill_at,
            None => started + timeout,
        };
        let wait = next
            .saturating_duration_since(Instant::now())
            .min(Duration::from_secs(1));
        if sys::poll_readable(&[signals.wake.as_raw_fd()], Some(wait)).is_err() {
            std::thread::sleep(Duration::from_millis(50));
        }
        signals.wake.drain();
    };
    // Whatever setup left running (a daemon it started) is not the runner's to inherit.
    if sys::group_alive(pid) {
        sys::signal_group(pid, libc::SIGKILL);
    }
    Ok(match stopping {
        Some((end, _)) => end,
        None => SetupEnd::Exited(status),
    })
}

/// An end without a runner, at the time of the call.
fn ended(record: &RunnerRecord, started: Instant) -> Exit {
    Exit {
        runner_id: record.runner_id.clone(),
        exit_code: None,
        signal: None,
        stopped: None,
        duration_seconds: started.elapsed().as_secs_f64(),
        log_truncated: false,
        error: None,
        finished_at: Some(timefmt::now_string()),
        reason: None,
        class: None,
    }
}

/// An `infra` failure: retried without counting against the task.
fn infra(record: &RunnerRecord, started: Instant, reason: String) -> Exit {
    eprintln!("# dispatcher-supervisor: {reason}");
    let mut exit = ended(record, started);
    exit.reason = Some(reason);
    exit.class = Some(FailureClass::Infra);
    exit
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_is_shown_in_backquotes() {
        assert_eq!(shown(&["npm".into(), "ci".into()]), "`npm ci`");
    }

    #[test]
    fn timeouts_read_as_written() {
        assert_eq!(format_duration(Duration::from_secs(600)), "10m");
        assert_eq!(format_duration(Duration::from_secs(7200)), "2h");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn a_missing_source_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = CopyFile {
            from: dir.path().join("main/.env"),
            to: dir.path().join("slot/.env"),
        };
        let err = copy(&file).unwrap_err();
        assert!(err.starts_with("copy_files: cannot read "), "{err}");
        assert!(err.contains("main/.env"), "{err}");
        fs::create_dir_all(dir.path().join("main/sub")).unwrap();
        fs::write(dir.path().join("main/.env"), "A=1\n").unwrap();
        copy(&file).unwrap();
        assert_eq!(fs::read_to_string(&file.to).unwrap(), "A=1\n");
        let not_a_file = CopyFile {
            from: dir.path().join("main/sub"),
            to: dir.path().join("slot/sub"),
        };
        assert!(copy(&not_a_file).unwrap_err().contains("is not a file"));
    }
}

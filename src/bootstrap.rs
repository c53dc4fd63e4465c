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

/// Why the runner must not start.
enum NoRunner {
    /// An `infra` failure, with its reason.
    Infra(String),
    Stopped(StopReason),
}

/// Copies the files and runs setup. `Some` is the attempt's end when the runner must not
/// start: an `infra` failure, or a stop requested meanwhile.
pub fn run(record: &RunnerRecord, dir: &RunnerDir, signals: &Signals<'_>) -> Option<Exit> {
    let started = Instant::now();
    let mut outcome = prepare(record, dir, signals);
    if outcome.is_ok() && dir.stop_path().exists() {
        // A stop requested before the runner started, whose signal may not have reached us
        // (the supervisor's pid is only published once the runner runs).
        outcome = Err(NoRunner::Stopped(requested_stop(dir)));
    }
    // Built only when there is no runner to start: the clock reading costs a local-time
    // lookup in every supervisor.
    let no_runner = outcome.err()?;
    let mut exit = Exit {
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
    };
    match no_runner {
        NoRunner::Infra(reason) => {
            eprintln!("# dispatcher-supervisor: {reason}");
            exit.reason = Some(reason);
            // Retried without counting against the task (`max_infra_retries`).
            exit.class = Some(FailureClass::Infra);
        }
        NoRunner::Stopped(reason) => exit.stopped = Some(reason),
    }
    Some(exit)
}

/// The reason a stop request gave; a bare signal is the dispatcher's drain.
fn requested_stop(dir: &RunnerDir) -> StopReason {
    fs::read_to_string(dir.stop_path())
        .ok()
        .as_deref()
        .and_then(StopReason::parse)
        .unwrap_or(StopReason::Interrupted)
}

fn prepare(record: &RunnerRecord, dir: &RunnerDir, signals: &Signals<'_>) -> Result<(), NoRunner> {
    for file in &record.copy_files {
        copy(file, &record.cwd).map_err(NoRunner::Infra)?;
        eprintln!("# dispatcher-supervisor: copied {}", file.from.display());
    }
    if record.setup.is_empty() {
        return Ok(());
    }
    let shown = shown(&record.setup);
    eprintln!("# dispatcher-supervisor: setup {shown}");
    let timeout = Duration::from_millis(record.setup_timeout_ms.unwrap_or(u64::MAX));
    let end = setup(record, dir, signals, timeout)
        .map_err(|err| NoRunner::Infra(format!("setup {shown} could not start: {err}")))?;
    match end {
        SetupEnd::Exited(status) if status.success() => {
            eprintln!("# dispatcher-supervisor: setup {shown} done");
            Ok(())
        }
        SetupEnd::Exited(status) => Err(NoRunner::Infra(match (status.code(), status.signal()) {
            (Some(code), _) => format!("setup {shown} failed with exit code {code}"),
            (None, Some(signal)) => format!("setup {shown} was killed by signal {signal}"),
            (None, None) => format!("setup {shown} ended without an exit status"),
        })),
        SetupEnd::TimedOut => Err(NoRunner::Infra(format!(
            "setup {shown} timed out after {}",
            format_duration(timeout)
        ))),
        SetupEnd::Stopped(reason) => Err(NoRunner::Stopped(reason)),
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

fn copy(file: &CopyFile, slot: &std::path::Path) -> Result<(), String> {
    let problem = |what: &str, err: io::Error| {
        format!("copy_files: cannot {what} {}: {err}", file.from.display())
    };
    let meta = fs::metadata(&file.from).map_err(|err| problem("read", err))?;
    if !meta.is_file() {
        return Err(format!("copy_files: {} is not a file", file.from.display()));
    }
    if let Some(parent) = file.to.parent() {
        fs::create_dir_all(parent).map_err(|err| problem("copy", err))?;
    }
    // The slot holds what the repository and earlier attempts left: a symlink there (or in a
    // parent) must not make the copy write outside the slot.
    let mut at = file.to.as_path();
    loop {
        if fs::symlink_metadata(at).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(format!(
                "copy_files: {} is a symbolic link in the slot; not copying through it",
                at.display()
            ));
        }
        match at.parent() {
            Some(parent) if parent.starts_with(slot) && parent != slot => at = parent,
            _ => break,
        }
    }
    let _ = fs::remove_file(&file.to);
    let mut source = fs::File::open(&file.from).map_err(|err| problem("read", err))?;
    let mut target = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&file.to)
        .map_err(|err| problem("copy", err))?;
    io::copy(&mut source, &mut target).map_err(|err| problem("copy", err))?;
    target
        .set_permissions(meta.permissions())
        .map_err(|err| problem("copy", err))?;
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
        let err = copy(&file, dir.path()).unwrap_err();
        assert!(err.starts_with("copy_files: cannot read "), "{err}");
        assert!(err.contains("main/.env"), "{err}");
        fs::create_dir_all(dir.path().join("main/sub")).unwrap();
        fs::write(dir.path().join("main/.env"), "A=1\n").unwrap();
        copy(&file, dir.path()).unwrap();
        assert_eq!(fs::read_to_string(&file.to).unwrap(), "A=1\n");
        let not_a_file = CopyFile {
            from: dir.path().join("main/sub"),
            to: dir.path().join("slot/sub"),
        };
        assert!(copy(&not_a_file, dir.path())
            .unwrap_err()
            .contains("is not a file"));
    }

    #[test]
    fn a_symlink_in_the_slot_is_never_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let slot = dir.path().join("slot");
        fs::create_dir_all(&slot).unwrap();
        fs::write(dir.path().join(".env"), "SECRET=1\n").unwrap();
        let outside = dir.path().join("outside.txt");
        fs::write(&outside, "keep\n").unwrap();
        std::os::unix::fs::symlink(&outside, slot.join(".env")).unwrap();
        let file = CopyFile {
            from: dir.path().join(".env"),
            to: slot.join(".env"),
        };
        let err = copy(&file, &slot).unwrap_err();
        assert!(err.contains("symbolic link"), "{err}");
        assert_eq!(fs::read_to_string(&outside).unwrap(), "keep\n");
    }
}

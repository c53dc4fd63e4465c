//! `type = "slurm"`: one batch job per attempt, submitted with `sbatch --parsable`, watched
//! with one `squeue` per tick, its end read from `scontrol show job` (or `sacct` once the
//! controller has forgotten it), stopped with `scancel`.
//!
//! The job's script is a fixed two-line `exec "$@"`: the runner's argv travels as the
//! script's arguments, so no task field is ever parsed by a shell. The runner's environment
//! is the environment of `sbatch` itself, exported by name (`--export=NAME,…`), so no value
//! is on a command line. Output goes straight into the attempt's log (`--output`,
//! appending), and heartbeats are the log and the heartbeat file growing: the state dir must
//! be on a filesystem the nodes share; the slot is the working directory only when
//! `shared_workspaces` is true.

use std::collections::HashMap;
use std::time::Duration;

use super::tool::{Tool, ToolError};
use super::{Ending, Engine, EngineError, JobState, Submission};
use crate::config::EngineSettings;
use crate::launcher::{LaunchSpec, RunnerView};

/// The batch script of every job: run the arguments, as they are.
const EXEC_SCRIPT: &str = "#!/bin/sh\nexec \"$@\"\n";

pub struct Slurm {
    settings: EngineSettings,
}

impl Slurm {
    pub fn new(settings: EngineSettings) -> Slurm {
        Slurm { settings }
    }

    fn tool(&self, program: &str) -> Tool {
        Tool::new(program, self.settings.command_timeout)
    }
}

/// Whether a failed call only says that none of the ids is known any more.
fn unknown_job(err: &ToolError) -> bool {
    err.stderr().contains("Invalid job id")
}

impl Engine for Slurm {
    fn check(&self) -> Result<(), EngineError> {
        let mut sinfo = self.tool("sinfo").args(["-h", "-o", "%P %a"]);
        if let Some(partition) = &self.settings.partition {
            sinfo = sinfo.arg(format!("--partition={partition}"));
        }
        let out = sinfo.output()?;
        if out.trim().is_empty() {
            let what = self.settings.partition.as_deref().map_or_else(
                || "the cluster has no partition".to_string(),
                |p| format!("the cluster has no partition {p:?}"),
            );
            return Err(EngineError::Setup(what));
        }
        Ok(())
    }

    fn view(&self, req: &LaunchSpec) -> RunnerView {
        RunnerView {
            workdir: self.settings.shared_workspaces.then(|| req.workdir.clone()),
            runner_dir: Some(req.runner_dir.path().to_path_buf()),
            host_env: true,
        }
    }

    fn submit(&self, job: &Submission<'_>) -> Result<String, EngineError> {
        let script = job.runner_dir.join("job.sh");
        std::fs::write(&script, EXEC_SCRIPT).map_err(|err| {
            EngineError::Setup(format!("cannot write {}: {err}", script.display()))
        })?;
        // Names only; the values are in sbatch's own environment. A name Slurm could not
        // parse out of the list cannot be exported this way.
        let names: Vec<String> = job
            .env
            .keys()
            .filter_map(|k| k.to_str())
            .filter(|k| !k.is_empty() && !k.contains([',', '=']))
            .map(str::to_owned)
            .collect();
        let mut sbatch = self.tool("sbatch").args([
            "--parsable".to_string(),
            format!("--job-name={}", job.runner_id),
            // Slurm expands `%j`, `%x` … in file names; a `%` of a spec or task name is literal.
            format!(
                "--output={}",
                job.log_path.display().to_string().replace('%', "%%")
            ),
            "--open-mode=append".to_string(),
            format!("--export={}", names.join(",")),
        ]);
        if self.settings.shared_workspaces {
            sbatch = sbatch.arg(format!("--chdir={}", job.workdir.display()));
        }
        if job.cpus > 0.0 {
            // Slurm counts whole CPUs.
            sbatch = sbatch.arg(format!("--cpus-per-task={}", job.cpus.ceil() as u64));
        }
        if job.memory_mb > 0 {
            sbatch = sbatch.arg(format!("--mem={}M", job.memory_mb));
        }
        if let Some(timeout) = job.timeout {
            sbatch = sbatch.arg(format!("--time={}", minutes(timeout)));
        }
        for (flag, value) in [
            ("partition", &self.settings.partition),
            ("account", &self.settings.account),
            ("qos", &self.settings.qos),
        ] {
            if let Some(value) = value {
                sbatch = sbatch.arg(format!("--{flag}={value}"));
            }
        }
        let sbatch = sbatch
            .args(self.settings.extra_args.iter().cloned())
            .arg(script.to_string_lossy().into_owned())
            .args(job.argv.iter().cloned())
            .envs(job.env.clone());
        let command = sbatch.describe();
        let out = sbatch.output()?;
        // `--parsable` prints `id` or `id;cluster`.
        let id = out.trim().split(';').next().unwrap_or_default().to_string();
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit() || c == '_') {
            return Err(EngineError::Answer {
                command,
                message: format!("expected a job id, got {:?}", out.trim()),
            });
        }
        Ok(id)
    }

    fn poll(&self, ids: &[String]) -> Result<HashMap<String, JobState>, EngineError> {
        let answer = self
            .tool("squeue")
            .args(["-h", "-t", "all", "-o", "%i|%T", "-j"])
            .arg(ids.join(","))
            .output();
        let out = match answer {
            Ok(out) => out,
            Err(err) if unknown_job(&err) => return Ok(HashMap::new()),
            Err(err) => return Err(err.into()),
        };
        let mut states = HashMap::new();
        for line in out.lines() {
            let Some((id, state)) = line.trim().split_once('|') else {
                continue;
            };
            // Ended jobs are left out: their exit code comes from `final_state`.
            if let Some(live) = live_state(state) {
                states.insert(id.to_string(), live);
            }
        }
        Ok(states)
    }

    fn final_state(&self, id: &str) -> Result<Option<JobState>, EngineError> {
        match self
            .tool("scontrol")
            .args(["show", "job", "-o", id])
            .output()
        {
            Ok(out) => {
                let field = |name: &str| {
                    out.split_whitespace()
                        .find_map(|f| f.strip_prefix(name))
                        .map(str::to_owned)
                };
                let state = field("JobState=").unwrap_or_default();
                let code = field("ExitCode=").unwrap_or_default();
                Ok(Some(ending_of(id, &state, &code)))
            }
            Err(err) if unknown_job(&err) => self.accounted_state(id),
            Err(err) => Err(err.into()),
        }
    }

    fn stop(&self, id: &str, _grace: Duration) -> Result<(), EngineError> {
        // Slurm sends TERM, then KILL after the cluster's KillWait.
        match self.tool("scancel").arg(id).output() {
            Ok(_) => Ok(()),
            Err(err) if unknown_job(&err) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }

    fn find(&self, runner_id: &str) -> Result<Option<String>, EngineError> {
        let out = self
            .tool("squeue")
            .args(["-h", "-t", "all", "-o", "%i"])
            .arg(format!("--name={runner_id}"))
            .output()?;
        Ok(super::first_line(&out))
    }
}

impl Slurm {
    /// The end of a job the controller no longer holds, from accounting if the cluster
    /// keeps it; `None` when nothing remembers the job.
    fn accounted_state(&self, id: &str) -> Result<Option<JobState>, EngineError> {
        let answer = self
            .tool("sacct")
            .args(["-n", "-P", "-X", "-o", "State,ExitCode", "-j", id])
            .output();
        let Ok(out) = answer else {
            return Ok(None);
        };
        Ok(out.lines().find_map(|line| {
            let (state, code) = line.trim().split_once('|')?;
            Some(ending_of(id, state, code))
        }))
    }
}

/// `squeue`'s state of a job that has not ended, or `None` for an ended one.
fn live_state(state: &str) -> Option<JobState> {
    match state {
        "RUNNING" | "COMPLETING" | "STAGE_OUT" | "SIGNALING" | "STOPPED" | "SUSPENDED"
        | "RESIZING" => Some(JobState::Running),
        "PENDING" | "CONFIGURING" | "REQUEUED" | "REQUEUE_FED" | "REQUEUE_HOLD"
        | "RESV_DEL_HOLD" | "SPECIAL_EXIT" => Some(JobState::Queued),
        _ => None,
    }
}

/// A job's end from its state (`FAILED`, `CANCELLED by 0` …) and `ExitCode=code:signal`.
fn ending_of(id: &str, state: &str, exit_code: &str) -> JobState {
    let state = state.split_whitespace().next().unwrap_or_default();
    if let Some(live) = live_state(state) {
        return live;
    }
    let (code, signal) = exit_code.split_once(':').unwrap_or((exit_code, "0"));
    let code: i32 = code.trim().parse().unwrap_or(0);
    let signal: i32 = signal.trim().parse().unwrap_or(0);
    let signal = (signal != 0).then_some(signal);
    JobState::Finished(match state {
        "COMPLETED" => Ending::exited(code, signal),
        "FAILED" if signal.is_some() && code == 0 => Ending {
            exit_code: None,
            signal,
            reason: None,
            timed_out: false,
        },
        "FAILED" => Ending::exited(code, signal),
        other => Ending {
            exit_code: (code != 0).then_some(code),
            signal,
            reason: Some(format!(
                "slurm job {id}: {}",
                if other.is_empty() { "UNKNOWN" } else { other }
            )),
            // Slurm's TIMEOUT is the `--time` we gave it, rounded up to whole minutes: the
            // watcher's own clock normally ends the job first.
            timed_out: false,
        },
    })
}

/// Slurm's `--time` in whole minutes, rounded up (at least one).
fn minutes(timeout: Duration) -> u64 {
    timeout.as_secs().div_ceil(60).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_map_slurm_states_to_attempt_outcomes() {
        let ended = |state, code| match ending_of("7", state, code) {
            JobState::Finished(ending) => ending,
            other => panic!("{other:?}"),
        };
        assert_eq!(ended("COMPLETED", "0:0"), Ending::exited(0, None));
        assert_eq!(ended("FAILED", "3:0"), Ending::exited(3, None));
        let killed = ended("FAILED", "0:9");
        assert_eq!((killed.exit_code, killed.signal), (None, Some(9)));
        assert_eq!(
            ended("TIMEOUT", "0:15").reason.as_deref(),
            Some("slurm job 7: TIMEOUT")
        );
        assert_eq!(
            ended("CANCELLED by 0", "0:15").reason.as_deref(),
            Some("slurm job 7: CANCELLED")
        );
        assert_eq!(
            ended("OUT_OF_MEMORY", "0:125").reason.as_deref(),
            Some("slurm job 7: OUT_OF_MEMORY")
        );
        assert_eq!(ending_of("7", "RUNNING", "0:0"), JobState::Running);
    }

    #[test]
    fn time_limits_round_up_to_whole_minutes() {
        assert_eq!(minutes(Duration::from_secs(1)), 1);
        assert_eq!(minutes(Duration::from_secs(60)), 1);
        assert_eq!(minutes(Duration::from_secs(61)), 2);
    }
}

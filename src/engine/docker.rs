//! `type = "docker"`: one container per attempt, `docker run -d` with the runner's
//! environment (by name: values travel in the client's environment), the slot mounted at
//! `/workspace` and the runner directory at `/dispatcher` when `shared_workspaces` is true,
//! `--cpus`/`--memory` from the task's request and labels naming runner, task and spec.
//! All of a pool's containers are inspected in one call per tick; output is copied into the
//! attempt's log by `docker logs -f`; stop is `docker stop -t <grace>`; after a restart a
//! container is found again by its label.

use std::collections::HashMap;
use std::fs::File;
use std::process::{Child, Command};
use std::time::{Duration, SystemTime};

use super::tool::{Tool, ToolError};
use super::{Ending, Engine, EngineError, JobState, Submission, RUNNER_MOUNT, WORKSPACE};
use crate::config::EngineSettings;
use crate::launcher::{LaunchSpec, RunnerView};

/// Label keys set on every container.
pub const LABEL_RUNNER: &str = "dispatcher.runner-id";
pub const LABEL_POOL: &str = "dispatcher.pool";
pub const LABEL_SPEC: &str = "dispatcher.spec";
pub const LABEL_TASK: &str = "dispatcher.task";
pub const LABEL_ATTEMPT: &str = "dispatcher.attempt";

/// What `docker inspect` prints per container.
const INSPECT_FORMAT: &str =
    "{{.Id}}|{{.State.Status}}|{{.State.ExitCode}}|{{.State.OOMKilled}}|{{.State.Error}}";

pub struct Docker {
    pool: String,
    settings: EngineSettings,
}

impl Docker {
    pub fn new(pool: &str, settings: EngineSettings) -> Docker {
        Docker {
            pool: pool.to_string(),
            settings,
        }
    }

    fn docker(&self) -> Tool {
        Tool::new("docker", self.settings.command_timeout)
    }

    /// `docker inspect` of some containers: the states of those it knows.
    fn inspect(&self, ids: &[String]) -> Result<HashMap<String, JobState>, EngineError> {
        let answer = self
            .docker()
            .args(["inspect", "--format", INSPECT_FORMAT])
            .args(ids.iter().cloned())
            .output();
        let out = match answer {
            Ok(out) => out,
            // Gone containers are named on stderr; the others are still on stdout.
            Err(ToolError::Failed { stderr, stdout, .. }) if stderr.contains("No such") => stdout,
            Err(err) => return Err(err.into()),
        };
        Ok(out.lines().filter_map(parse_inspect_line).collect())
    }
}

/// One line of [`INSPECT_FORMAT`]: the container id and its state.
fn parse_inspect_line(line: &str) -> Option<(String, JobState)> {
    let mut fields = line.trim().splitn(5, '|');
    let id = fields.next()?.to_string();
    let status = fields.next()?;
    let code: i32 = fields.next()?.parse().ok()?;
    let oom = fields.next()? == "true";
    let error = fields.next().unwrap_or_default().trim();
    let state = match status {
        "created" => JobState::Queued,
        "running" | "paused" | "restarting" | "removing" => JobState::Running,
        _ if oom => JobState::Finished(Ending {
            exit_code: Some(code),
            signal: None,
            reason: Some(format!("container {}: OOMKilled", short(&id))),
            timed_out: false,
        }),
        "exited" if error.is_empty() => JobState::Finished(Ending::exited(code, None)),
        other => JobState::Finished(Ending {
            exit_code: (code != 0).then_some(code),
            signal: None,
            reason: Some(format!(
                "container {}: {other}{}{error}",
                short(&id),
                if error.is_empty() { "" } else { ": " }
            )),
            timed_out: false,
        }),
    };
    Some((id, state))
}

/// The 12-character form of a container id, as `docker ps` shows it.
fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

impl Engine for Docker {
    fn check(&self) -> Result<(), EngineError> {
        self.docker()
            .args(["version", "--format", "{{.Server.Version}}"])
            .output()?;
        Ok(())
    }

    fn view(&self, _req: &LaunchSpec) -> RunnerView {
        super::container_view(&self.settings)
    }

    fn submit(&self, job: &Submission<'_>) -> Result<String, EngineError> {
        let image = self.settings.image.as_deref().unwrap_or_default();
        let mut run = self.docker().args([
            "run".to_string(),
            "-d".to_string(),
            format!("--name={}", job.runner_id),
            format!("--label={LABEL_RUNNER}={}", job.runner_id),
            format!("--label={LABEL_POOL}={}", job.pool),
            format!("--label={LABEL_SPEC}={}", job.spec),
            format!("--label={LABEL_TASK}={}", job.task_id),
            format!("--label={LABEL_ATTEMPT}={}", job.attempt),
        ]);
        if self.settings.shared_workspaces {
            run = run.args([
                format!("--volume={}:{WORKSPACE}", job.workdir.display()),
                format!("--workdir={WORKSPACE}"),
                format!("--volume={}:{RUNNER_MOUNT}", job.runner_dir.display()),
            ]);
        }
        if job.cpus > 0.0 {
            run = run.arg(format!("--cpus={}", job.cpus));
        }
        if job.memory_mb > 0 {
            run = run.arg(format!("--memory={}m", job.memory_mb));
        }
        for name in job.env.keys().filter_map(|k| k.to_str()) {
            // `-e NAME` takes the value from the client's environment, off the command line.
            run = run.args(["-e", name]);
        }
        let run = run
            .args(self.settings.extra_args.iter().cloned())
            .arg(image)
            .args(job.argv.iter().cloned())
            .envs(job.env.clone());
        let command = run.describe();
        let out = run.output()?;
        let id = out
            .trim()
            .lines()
            .last()
            .unwrap_or_default()
            .trim()
            .to_string();
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(EngineError::Answer {
                command,
                message: format!("expected a container id, got {:?}", out.trim()),
            });
        }
        Ok(id)
    }

    fn poll(&self, ids: &[String]) -> Result<HashMap<String, JobState>, EngineError> {
        self.inspect(ids)
    }

    fn final_state(&self, id: &str) -> Result<Option<JobState>, EngineError> {
        Ok(self.inspect(&[id.to_string()])?.remove(id))
    }

    fn stop(&self, id: &str, grace: Duration) -> Result<(), EngineError> {
        // `docker stop` waits out the grace period: it runs beside the watcher, which sees
        // the container exit on a later tick.
        let stop = Tool::new("docker", grace + self.settings.command_timeout).args([
            "stop".to_string(),
            "-t".to_string(),
            grace.as_secs().to_string(),
            id.to_string(),
        ]);
        let pool = self.pool.clone();
        std::thread::Builder::new()
            .name("docker-stop".into())
            .spawn(move || {
                if let Err(err) = stop.output() {
                    log::warn!("pool {pool}: {err}");
                }
            })
            .map_err(|err| EngineError::Setup(format!("cannot start docker stop: {err}")))?;
        Ok(())
    }

    fn find(&self, runner_id: &str) -> Result<Option<String>, EngineError> {
        let out = self
            .docker()
            .args(["ps", "-a", "-q", "--no-trunc", "--filter"])
            .arg(format!("label={LABEL_RUNNER}={runner_id}"))
            .output()?;
        Ok(super::first_line(&out))
    }

    fn follow_logs(&self, id: &str, log: File, since: Option<SystemTime>) -> Option<Child> {
        let mut logs = Command::new("docker");
        logs.args(["logs", "--follow"]);
        if let Some(since) = since {
            let secs = since
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            logs.arg(format!("--since={secs}"));
        }
        logs.arg(id);
        super::spawn_follower(logs, log, &self.pool, short(id))
    }

    fn forget(&self, id: &str) {
        if let Err(err) = self.docker().args(["rm", "--force", id]).output() {
            log::warn!(
                "pool {}: cannot remove container {}: {err}",
                self.pool,
                short(id)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inspect_lines_become_job_states() {
        let state = |line: &str| parse_inspect_line(line).unwrap().1;
        assert_eq!(state("abc|running|0|false|"), JobState::Running);
        assert_eq!(state("abc|created|0|false|"), JobState::Queued);
        assert_eq!(
            state("abc|exited|3|false|"),
            JobState::Finished(Ending::exited(3, None))
        );
        let JobState::Finished(oom) = state("abc|exited|137|true|") else {
            panic!()
        };
        assert_eq!(oom.reason.as_deref(), Some("container abc: OOMKilled"));
        let JobState::Finished(dead) = state("abc|dead|0|false|mount failed") else {
            panic!()
        };
        assert_eq!(
            dead.reason.as_deref(),
            Some("container abc: dead: mount failed")
        );
    }
}

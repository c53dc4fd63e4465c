//! The one place that starts runner processes: argv placeholders, the runner environment
//! contract, the attempt's log file, its own process group, and signals to that group.
//!
//! Nothing here goes through a shell: a task's title is an argument, never code.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Instant, SystemTime};

use serde_json::{json, Value};

use crate::config::PoolConfig;
use crate::registry::Task;

/// Everything needed to start one attempt of one task.
pub struct LaunchRequest<'a> {
    pub runner_id: &'a str,
    pub pool_name: &'a str,
    pub pool: &'a PoolConfig,
    pub spec: &'a str,
    pub task: &'a Task,
    pub attempt: u32,
    /// The runner's working directory (a workspace slot or a scratch directory).
    pub workdir: &'a Path,
    /// Where the runner's stdout and stderr are appended.
    pub log_path: &'a Path,
    /// Directory for this runner's private files (context, heartbeat).
    pub runner_dir: &'a Path,
}

/// A started runner: the child process and the files the watchdog looks at.
#[derive(Debug)]
pub struct RunnerProcess {
    pub runner_id: String,
    pub child: Child,
    pub pid: u32,
    pub log_path: PathBuf,
    pub heartbeat_path: PathBuf,
    pub started: Instant,
    pub started_at: SystemTime,
}

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("cannot prepare {path}: {source}")]
    Prepare { path: PathBuf, source: io::Error },
    #[error("cannot start runner {program:?}: {source}")]
    Spawn { program: String, source: io::Error },
}

/// Values substituted for `{name}` in each argument of a pool's command.
pub struct Placeholders<'a> {
    pub task_id: &'a str,
    pub spec: &'a str,
    pub title: &'a str,
    pub slot_path: &'a str,
    pub branch: &'a str,
    pub runner_id: &'a str,
    pub context_file: &'a str,
}

impl Placeholders<'_> {
    fn lookup(&self, name: &str) -> Option<&str> {
        Some(match name {
            "task_id" => self.task_id,
            "spec" => self.spec,
            "title" => self.title,
            "slot_path" => self.slot_path,
            "branch" => self.branch,
            "runner_id" => self.runner_id,
            "context_file" => self.context_file,
            _ => return None,
        })
    }

    /// Substitutes known placeholders in one pass, so a value that itself contains
    /// `{spec}` (a title, say) is inserted verbatim and never expanded again.
    /// Unknown `{…}` sequences are kept as they are.
    pub fn expand(&self, arg: &str) -> String {
        let mut out = String::with_capacity(arg.len());
        let mut rest = arg;
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            match after
                .find('}')
                .and_then(|close| self.lookup(&after[..close]).map(|value| (close, value)))
            {
                Some((close, value)) => {
                    out.push_str(value);
                    rest = &after[close + 1..];
                }
                None => {
                    out.push('{');
                    rest = after;
                }
            }
        }
        out.push_str(rest);
        out
    }
}

/// The JSON given to the runner in `TASK_CONTEXT` and `TASK_CONTEXT_FILE`, with
/// NecroCode's field names.
pub fn task_context(req: &LaunchRequest<'_>) -> Value {
    let task = req.task;
    json!({
        "task_id": task.id,
        "spec_name": req.spec,
        "task_title": task.title,
        "task_description": task.description,
        "dependencies": task.dependencies,
        "required_skill": task.required_skill,
        "slot_id": task.assigned_slot,
        "slot_path": req.workdir.to_string_lossy(),
        "repo_url": Value::Null,
        "branch_name": task.reserved_branch,
        "metadata": task.metadata,
        "runner_id": req.runner_id,
        "attempt": req.attempt,
        "pool": req.pool_name,
    })
}

fn prepare_dir(path: &Path) -> Result<(), LaunchError> {
    fs::create_dir_all(path).map_err(|source| LaunchError::Prepare {
        path: path.to_path_buf(),
        source,
    })
}

/// Environment variable name for a pool `config` key: `RUNNER_<KEY>` in upper case.
pub fn config_env_name(key: &str) -> String {
    format!("RUNNER_{}", key.to_ascii_uppercase())
}

/// Starts one runner. The process gets its own process group (so a terminal's Ctrl-C
/// reaches only the dispatcher, which then drains), a null stdin, and the attempt's log
/// file as stdout and stderr: no pipes, so no reader thread and no SIGPIPE if the
/// dispatcher dies.
pub fn launch(req: &LaunchRequest<'_>) -> Result<RunnerProcess, LaunchError> {
    prepare_dir(req.workdir)?;
    prepare_dir(req.runner_dir)?;
    if let Some(parent) = req.log_path.parent() {
        prepare_dir(parent)?;
    }

    let context = task_context(req);
    let context_text = context.to_string();
    let context_path = req.runner_dir.join("context.json");
    fs::write(&context_path, &context_text).map_err(|source| LaunchError::Prepare {
        path: context_path.clone(),
        source,
    })?;
    let heartbeat_path = req.runner_dir.join("heartbeat");
    File::create(&heartbeat_path).map_err(|source| LaunchError::Prepare {
        path: heartbeat_path.clone(),
        source,
    })?;

    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(req.log_path)
        .map_err(|source| LaunchError::Prepare {
            path: req.log_path.to_path_buf(),
            source,
        })?;
    // A header line makes each attempt's log self-describing; it also counts as the
    // first sign of life.
    let _ = writeln!(
        log,
        "# dispatcher: runner {} task {}/{} attempt {} pool {}",
        req.runner_id, req.spec, req.task.id, req.attempt, req.pool_name
    );
    let log_err = log.try_clone().map_err(|source| LaunchError::Prepare {
        path: req.log_path.to_path_buf(),
        source,
    })?;

    let workdir = req.workdir.to_string_lossy();
    let context_file = context_path.to_string_lossy();
    let placeholders = Placeholders {
        task_id: &req.task.id,
        spec: req.spec,
        title: &req.task.title,
        slot_path: &workdir,
        branch: req.task.reserved_branch.as_deref().unwrap_or(""),
        runner_id: req.runner_id,
        context_file: &context_file,
    };
    let argv: Vec<String> = req
        .pool
        .command
        .iter()
        .map(|a| placeholders.expand(a))
        .collect();
    let (program, args) = argv
        .split_first()
        .expect("config guarantees a non-empty command");

    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for (key, value) in &req.pool.config {
        env.insert(config_env_name(key), value.clone());
    }
    env.extend(req.pool.env.iter().map(|(k, v)| (k.clone(), v.clone())));

    let mut command = Command::new(program);
    command
        .args(args)
        .current_dir(req.workdir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err))
        .envs(&env)
        .env("RUNNER_ID", req.runner_id)
        .env("POOL_NAME", req.pool_name)
        .env("TASK_CONTEXT", &context_text)
        .env("TASK_CONTEXT_FILE", &context_path)
        .env("DISPATCHER_HEARTBEAT_FILE", &heartbeat_path)
        .env("DISPATCHER_ATTEMPT", req.attempt.to_string())
        .process_group(0);
    let child = command.spawn().map_err(|source| LaunchError::Spawn {
        program: program.clone(),
        source,
    })?;
    Ok(RunnerProcess {
        runner_id: req.runner_id.to_string(),
        pid: child.id(),
        child,
        log_path: req.log_path.to_path_buf(),
        heartbeat_path,
        started: Instant::now(),
        started_at: SystemTime::now(),
    })
}

/// Sends `signal` to the runner's whole process group. A group that is already gone is
/// not an error: the runner may have exited between our check and the signal.
pub fn signal_group(pgid: u32, signal: libc::c_int) {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else {
        return;
    };
    if pgid <= 1 {
        return;
    }
    // SAFETY: kill(2) with a negative pid signals a process group; it has no memory effects.
    unsafe {
        libc::kill(-pgid, signal);
    }
}

/// Whether any process of the group is still alive.
pub fn group_alive(pgid: u32) -> bool {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else {
        return false;
    };
    // SAFETY: signal 0 only checks for existence and permission.
    unsafe { libc::kill(-pgid, 0) == 0 }
}

/// How a runner process ended, from its wait status.
pub fn describe_exit(status: ExitStatus) -> (Option<i32>, Option<i32>) {
    use std::os::unix::process::ExitStatusExt;
    (status.code(), status.signal())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placeholders() -> Placeholders<'static> {
        Placeholders {
            task_id: "1.2",
            spec: "chat",
            title: "say {spec} $(rm -rf /)",
            slot_path: "/w/slot1",
            branch: "task/chat/1.2",
            runner_id: "r-1",
            context_file: "/s/ctx.json",
        }
    }

    #[test]
    fn expands_every_known_placeholder() {
        let p = placeholders();
        assert_eq!(
            p.expand("{spec}/{task_id}@{branch} in {slot_path} as {runner_id} {context_file}"),
            "chat/1.2@task/chat/1.2 in /w/slot1 as r-1 /s/ctx.json"
        );
    }

    #[test]
    fn inserted_values_are_not_expanded_again() {
        assert_eq!(
            placeholders().expand("--title={title}"),
            "--title=say {spec} $(rm -rf /)"
        );
    }

    #[test]
    fn unknown_and_unbalanced_braces_are_kept() {
        let p = placeholders();
        assert_eq!(p.expand("{nope} {spec"), "{nope} {spec");
        assert_eq!(p.expand("{{spec}}"), "{chat}");
        assert_eq!(p.expand("json: {}"), "json: {}");
    }

    #[test]
    fn config_keys_become_runner_variables() {
        assert_eq!(config_env_name("model_name"), "RUNNER_MODEL_NAME");
    }
}

//! Pools whose runners an external engine runs: a Slurm cluster, a Docker engine, a
//! Kubernetes cluster. Each engine pool has one watcher thread ([`watch`]) that submits its
//! jobs, watches all of them with one batched call per tick, enforces timeouts and
//! heartbeats, relays stops and adopts jobs after a restart; every engine command goes
//! through [`tool::Tool`], never on the core thread.
//!
//! An engine runner has a runner directory like a local one (`runner.json` with `engine`
//! set, `context.json`, `heartbeat`, and `exit.json` once it ended), plus `engine.json`, the
//! job's id, written as soon as the engine accepted it. There is no supervisor: the engine
//! itself keeps the job alive while no dispatcher runs.

pub mod docker;
pub mod kubernetes;
pub mod slurm;
pub mod tool;
mod watch;

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fs::File;
use std::path::Path;
use std::process::Child;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use crossbeam_channel::Sender;
use serde::{Deserialize, Serialize};

use crate::config::{Config, EngineSettings, PoolConfig, PoolKind};
use crate::fsutil;
use crate::launcher::{LaunchSpec, RunnerView};
use crate::supervisor::{RunnerDir, RunnerRecord, StopReason};
use crate::watchdog::RunnerEvent;
pub use tool::ToolError;

/// A job as its engine reports it.
#[derive(Clone, Debug, PartialEq)]
pub enum JobState {
    /// Accepted, waiting for resources: its timeouts have not started.
    Queued,
    Running,
    Finished(Ending),
}

/// How a job ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Ending {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// Set when the engine, not the program, ended the job, or the program's status is not
    /// known: why (`slurm job 12: TIMEOUT`). The attempt then counts as failed.
    pub reason: Option<String>,
    /// The engine ended the job at the time limit the dispatcher gave it (the pool's
    /// `timeout`): the attempt counts as timed out, as if the watcher had stopped it.
    pub timed_out: bool,
}

impl Ending {
    /// The program ended by itself with this status.
    pub fn exited(exit_code: i32, signal: Option<i32>) -> Ending {
        Ending {
            exit_code: Some(exit_code),
            signal,
            reason: None,
            timed_out: false,
        }
    }
}

/// An engine that did not give a usable answer.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error("`{command}` gave an answer that cannot be read: {message}")]
    Answer { command: String, message: String },
    #[error("{0}")]
    Setup(String),
}

/// Everything an engine needs to submit one attempt.
pub struct Submission<'a> {
    pub runner_id: &'a str,
    pub pool: &'a str,
    pub spec: &'a str,
    pub task_id: &'a str,
    pub attempt: u32,
    /// The runner's argv (placeholders expanded); empty: the image's own entrypoint.
    pub argv: &'a [String],
    /// The runner's complete environment: passed through the tool's environment or stdin,
    /// never its argv.
    pub env: &'a BTreeMap<OsString, OsString>,
    /// The workspace slot on this machine.
    pub workdir: &'a Path,
    pub runner_dir: &'a Path,
    pub log_path: &'a Path,
    pub timeout: Option<Duration>,
    pub cpus: f64,
    pub memory_mb: u64,
}

/// One engine's command-line interface. Every call may block up to the pool's
/// `engine_command_timeout`; callers are watcher threads only.
pub trait Engine: Send {
    /// Whether the engine answers; the error says why not, for `status`.
    fn check(&self) -> Result<(), EngineError>;
    /// Where a runner of this engine sees its files.
    fn view(&self, req: &LaunchSpec) -> RunnerView;
    /// Submits one attempt; the engine's id of the job.
    fn submit(&self, job: &Submission<'_>) -> Result<String, EngineError>;
    /// The states of `ids` in one call. A job missing from the answer is no longer listed;
    /// [`Engine::final_state`] says how it ended.
    fn poll(&self, ids: &[String]) -> Result<HashMap<String, JobState>, EngineError>;
    /// How a job that `poll` no longer lists ended; `None` when the engine has forgotten it.
    fn final_state(&self, id: &str) -> Result<Option<JobState>, EngineError>;
    /// Asks the engine to stop a job (TERM, then KILL after `grace` where the engine allows).
    fn stop(&self, id: &str, grace: Duration) -> Result<(), EngineError>;
    /// The job of a runner found by its name or labels (adoption when `engine.json` was never
    /// written), if the engine knows one.
    fn find(&self, runner_id: &str) -> Result<Option<String>, EngineError>;
    /// Starts copying the job's output into the attempt's log (from `since` on, for an
    /// adopted job whose earlier output is already there), for engines whose output does
    /// not land there by itself.
    fn follow_logs(&self, _id: &str, _log: File, _since: Option<SystemTime>) -> Option<Child> {
        None
    }
    /// Removes what the engine keeps of a job whose end is recorded.
    fn forget(&self, _id: &str) {}
}

/// The engine of a pool, from its configuration.
pub fn build(pool_name: &str, pool: &PoolConfig) -> Option<Box<dyn Engine>> {
    let settings = pool.engine.clone();
    match pool.kind {
        PoolKind::LocalProcess => None,
        PoolKind::Slurm => Some(Box::new(slurm::Slurm::new(settings))),
        PoolKind::Docker => Some(Box::new(docker::Docker::new(pool_name, settings))),
        PoolKind::Kubernetes => Some(Box::new(kubernetes::Kubernetes::new(pool_name, settings))),
    }
}

/// Where a container sees its slot and its runner directory, when they are mounted.
pub const WORKSPACE: &str = "/workspace";
pub const RUNNER_MOUNT: &str = "/dispatcher";

/// How a container runner sees its files: the mount points when the engine's nodes share
/// this machine's files, nothing otherwise; never this machine's environment.
fn container_view(settings: &EngineSettings) -> RunnerView {
    let shared = settings.shared_workspaces;
    RunnerView {
        workdir: shared.then(|| std::path::PathBuf::from(WORKSPACE)),
        runner_dir: shared.then(|| std::path::PathBuf::from(RUNNER_MOUNT)),
        host_env: false,
    }
}

/// The first non-empty line of a tool's answer (a job id, a container id, `job.batch/x`).
fn first_line(out: &str) -> Option<String> {
    out.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_owned)
}

/// Starts a log follower (`docker logs -f`, `kubectl logs -f`) writing into the attempt's
/// log; `None`, with a warning, when it cannot start (the job runs on without it).
fn spawn_follower(
    mut command: std::process::Command,
    log: File,
    pool: &str,
    id: &str,
) -> Option<Child> {
    use std::os::unix::process::CommandExt;
    use std::process::Stdio;
    let err = log.try_clone().ok()?;
    // Its own process group: a Ctrl-C in the dispatcher's terminal must not cut the copy of
    // a job's output while the drain waits for the job.
    let child = command
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(err))
        .spawn();
    match child {
        Ok(child) => Some(child),
        Err(err) => {
            log::warn!("pool {pool}: cannot follow the output of {id}: {err}");
            None
        }
    }
}

/// `engine.json`: the job of an engine runner.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EngineRecord {
    pub engine: String,
    pub job_id: String,
    pub submitted_at: String,
}

fn engine_record_path(dir: &RunnerDir) -> std::path::PathBuf {
    dir.path().join("engine.json")
}

pub fn read_engine_record(dir: &RunnerDir) -> Option<EngineRecord> {
    let bytes = std::fs::read(engine_record_path(dir)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn write_engine_record(dir: &RunnerDir, record: &EngineRecord) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?;
    fsutil::write_atomic(&engine_record_path(dir), &bytes)
}

/// What a watcher thread is asked to do.
pub enum EngineCommand {
    /// Submit an attempt, with the configuration in force when it was claimed.
    Launch(Box<LaunchSpec>, Arc<Config>),
    /// Watch a job an earlier dispatcher submitted.
    Adopt {
        runner_id: String,
        dir: RunnerDir,
        record: Box<RunnerRecord>,
    },
    Stop {
        runner_id: String,
        reason: StopReason,
    },
    StopAll {
        reason: StopReason,
    },
}

/// The watcher threads of all engine pools, started on first use, one per pool.
#[derive(Clone)]
pub struct EngineHub {
    inner: Arc<Mutex<HubInner>>,
}

struct HubInner {
    events: Sender<RunnerEvent>,
    pools: HashMap<String, Sender<EngineCommand>>,
    threads: Vec<JoinHandle<()>>,
    closed: bool,
}

impl EngineHub {
    fn lock(&self) -> MutexGuard<'_, HubInner> {
        // A panic elsewhere leaves the map itself intact.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn new(events: Sender<RunnerEvent>) -> EngineHub {
        EngineHub {
            inner: Arc::new(Mutex::new(HubInner {
                events,
                pools: HashMap::new(),
                threads: Vec::new(),
                closed: false,
            })),
        }
    }

    /// Starts the watcher of an engine pool if it is not running yet: it checks the engine
    /// at once and reports whether the pool can take tasks.
    pub fn ensure(&self, pool_name: &str, pool: &PoolConfig) {
        let mut inner = self.lock();
        if inner.closed || inner.pools.contains_key(pool_name) {
            return;
        }
        let Some(engine) = build(pool_name, pool) else {
            return;
        };
        let (tx, rx) = crossbeam_channel::unbounded();
        let events = inner.events.clone();
        let name = pool_name.to_string();
        let config = pool.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("engine-{pool_name}"))
            .spawn(move || watch::Watcher::new(name, engine, &config, events).run(&rx));
        match spawned {
            Ok(thread) => {
                inner.pools.insert(pool_name.to_string(), tx);
                inner.threads.push(thread);
            }
            Err(err) => log::error!("cannot start the watcher of pool {pool_name}: {err}"),
        }
    }

    /// Sends a command to a pool's watcher, starting it first if needed.
    pub fn send(&self, pool_name: &str, pool: &PoolConfig, command: EngineCommand) {
        self.ensure(pool_name, pool);
        let inner = self.lock();
        match inner.pools.get(pool_name) {
            Some(tx) if tx.send(command).is_ok() => {}
            _ => log::error!("the watcher of pool {pool_name} is gone: a command was dropped"),
        }
    }

    /// Sends a stop of a runner to the watcher of its pool, if that watcher runs.
    pub fn stop(&self, pool_name: &str, runner_id: String, reason: StopReason) {
        let inner = self.lock();
        if let Some(tx) = inner.pools.get(pool_name) {
            let _ = tx.send(EngineCommand::Stop { runner_id, reason });
        }
    }

    /// Stops every engine runner.
    pub fn stop_all(&self, reason: StopReason) {
        let inner = self.lock();
        for tx in inner.pools.values() {
            let _ = tx.send(EngineCommand::StopAll { reason });
        }
    }

    /// Ends the watchers (jobs keep running in their engines) and waits for them.
    pub fn shutdown(&self) {
        let threads = {
            let mut inner = self.lock();
            inner.closed = true;
            inner.pools.clear();
            std::mem::take(&mut inner.threads)
        };
        for thread in threads {
            let _ = thread.join();
        }
    }
}

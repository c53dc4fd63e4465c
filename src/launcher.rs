//! The one place that starts runners: it prepares the attempt's files (context, heartbeat,
//! log, `runner.json`), takes the runner's lock and has the supervisor that owns the runner
//! started (see [`crate::supervisor`] for the protocol, [`crate::spawn_server`] for how).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::Seek;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use crate::config::PoolConfig;
use crate::placeholders::Placeholders;
use crate::registry::Task;
use crate::runner_env::{self, EnvError, RunnerFacts};
use crate::spawn_server::{SpawnFailure, SpawnRequest, SpawnServer};
use crate::supervisor::{supervisor_version, RunnerRecord, SUPERVISE_ARG, SUPERVISOR_PROGRAM};
use crate::supervisor::{Liveness, RunnerDir};
use crate::sys::{self, PidFd};
use crate::timefmt;

/// Everything needed to start one attempt of one task, owned, so a launch can be handed to
/// a worker thread.
#[derive(Clone, Debug)]
pub struct LaunchSpec {
    pub runner_id: String,
    pub pool_name: String,
    pub spec: String,
    pub task: Task,
    pub attempt: u32,
    /// The runner's working directory (a workspace slot or a scratch directory).
    pub workdir: PathBuf,
    pub repo_url: Option<String>,
    /// Where the runner's stdout and stderr are appended.
    pub log_path: PathBuf,
    pub runner_dir: RunnerDir,
    pub owner: String,
    pub heartbeat_timeout: Option<Duration>,
    pub stop_grace: Duration,
    pub max_log_bytes: Option<u64>,
    /// What the slot needs before the runner (local pools; engines do not run it).
    pub bootstrap: Option<crate::bootstrap::Bootstrap>,
    /// The first of the slot's ports (`DISPATCHER_PORT_BASE`), when its repository has some.
    pub port_base: Option<u16>,
}

/// A started runner: its supervisor process and the files the watchdog looks at.
#[derive(Debug)]
pub struct Launched {
    pub runner_id: String,
    pub dir: RunnerDir,
    /// Our child when the supervisor was exec'd here; `None` when the spawn server forked it.
    pub supervisor: Option<Child>,
    pub supervisor_pid: Option<u32>,
    pub pidfd: Option<PidFd>,
    pub log_path: PathBuf,
    pub heartbeat_path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("cannot prepare {path}: {source}")]
    Prepare { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Env(#[from] EnvError),
    #[error("cannot start the runner supervisor {program}: {source}")]
    Spawn { program: PathBuf, source: io::Error },
}

fn prepare_error(path: &Path) -> impl FnOnce(io::Error) -> LaunchError {
    let path = path.to_path_buf();
    move |source| LaunchError::Prepare { path, source }
}

/// Where a runner sees its files: the host's own paths for a local runner, mount points
/// inside a container, nothing when the engine's nodes do not share this machine's files.
#[derive(Clone, Debug)]
pub struct RunnerView {
    pub workdir: Option<PathBuf>,
    /// The runner directory (context file, heartbeat file).
    pub runner_dir: Option<PathBuf>,
    /// Whether the runner runs on this machine's software (see
    /// [`runner_env::runner_environment`]).
    pub host_env: bool,
}

impl RunnerView {
    /// A runner that sees this machine's files at their own paths.
    pub fn local(req: &LaunchSpec) -> RunnerView {
        RunnerView {
            workdir: Some(req.workdir.clone()),
            runner_dir: Some(req.runner_dir.path().to_path_buf()),
            host_env: true,
        }
    }
}

/// An attempt's files, written, and what its runner is given.
pub struct Prepared {
    /// The runner's complete environment (it holds secrets: never written to disk).
    pub env: BTreeMap<OsString, OsString>,
    pub record: RunnerRecord,
    /// The attempt's log, opened for appending, after the header line.
    pub log: File,
    pub heartbeat_path: PathBuf,
}

/// Writes an attempt's files (working directory, context, heartbeat file, log header) and
/// works out the runner's argv and environment, as `view` says the runner sees them.
pub fn prepare(
    req: &LaunchSpec,
    pool: &PoolConfig,
    view: &RunnerView,
) -> Result<Prepared, LaunchError> {
    let facts = &RunnerFacts {
        runner_id: &req.runner_id,
        pool_name: &req.pool_name,
        pool,
        spec: &req.spec,
        task: &req.task,
        attempt: req.attempt,
        workdir: &req.workdir,
        shown_workdir: view.workdir.as_deref(),
        repo_url: req.repo_url.as_deref(),
        port_base: req.port_base,
        previous_attempt: crate::attempts::previous_attempt(&req.task, req.attempt),
    };
    let dir = &req.runner_dir;
    fs::create_dir_all(facts.workdir).map_err(prepare_error(facts.workdir))?;
    fs::create_dir_all(dir.path()).map_err(prepare_error(dir.path()))?;
    if let Some(parent) = req.log_path.parent() {
        fs::create_dir_all(parent).map_err(prepare_error(parent))?;
    }

    let context = runner_env::task_context(facts).to_string();
    let context_path = dir.path().join("context.json");
    fs::write(&context_path, &context).map_err(prepare_error(&context_path))?;
    let heartbeat_path = dir.path().join("heartbeat");
    File::create(&heartbeat_path).map_err(prepare_error(&heartbeat_path))?;
    let shown_dir = view.runner_dir.as_deref();
    let shown_context = shown_dir.map(|d| d.join("context.json"));
    let context_env = match &shown_context {
        Some(path) => runner_env::context_env_value(facts, &context, path),
        None => context.clone(),
    };
    if context_env.len() != context.len() {
        log::warn!(
            "task {}/{}: its context ({} bytes) is too big for one environment variable; TASK_CONTEXT names the file that holds it",
            facts.spec,
            facts.task.id,
            context.len()
        );
    }
    let mut contract: Vec<(&str, OsString)> = vec![
        ("RUNNER_ID", facts.runner_id.into()),
        ("POOL_NAME", facts.pool_name.into()),
        ("TASK_CONTEXT", context_env.into()),
        ("DISPATCHER_ATTEMPT", facts.attempt.to_string().into()),
    ];
    if let Some(port_base) = facts.port_base {
        contract.push(("DISPATCHER_PORT_BASE", port_base.to_string().into()));
    }
    if let (Some(shown_dir), Some(shown_context)) = (shown_dir, shown_context.clone()) {
        contract.push(("TASK_CONTEXT_FILE", shown_context.into()));
        contract.push((
            "DISPATCHER_HEARTBEAT_FILE",
            shown_dir.join("heartbeat").into(),
        ));
        contract.push(("DISPATCHER_RUNNER_DIR", shown_dir.into()));
        contract.push((
            "DISPATCHER_RESULT_FILE",
            shown_dir.join("result.json").into(),
        ));
    }
    let env = runner_env::runner_environment(facts, &contract, view.host_env)?;

    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&req.log_path)
        .map_err(prepare_error(&req.log_path))?;
    // A header line makes each attempt's log self-describing. Formatted first: written
    // straight to the file, each piece of the format would be a write call of its own.
    let header = format!(
        "# dispatcher: runner {} task {}/{} attempt {} pool {}\n",
        facts.runner_id, facts.spec, facts.task.id, facts.attempt, facts.pool_name
    );
    let _ = log.write_all(header.as_bytes());

    let shown_workdir = view
        .workdir
        .as_deref()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let context_file = shown_context
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let placeholders = Placeholders {
        task_id: &facts.task.id,
        spec: facts.spec,
        title: &facts.task.title,
        slot_path: &shown_workdir,
        branch: facts.task.reserved_branch.as_deref().unwrap_or(""),
        runner_id: facts.runner_id,
        context_file: &context_file,
    };
    let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let mut record = RunnerRecord {
        runner_id: facts.runner_id.to_string(),
        spec: facts.spec.to_string(),
        task_id: facts.task.id.clone(),
        attempt: facts.attempt,
        pool: facts.pool_name.to_string(),
        owner: req.owner.clone(),
        created_at: timefmt::now_string(),
        argv: facts
            .pool
            .command
            .iter()
            .map(|a| placeholders.expand(a))
            .collect(),
        cwd: facts.workdir.to_path_buf(),
        log_path: req.log_path.clone(),
        heartbeat_path: heartbeat_path.clone(),
        timeout_ms: facts.pool.timeout.map(millis),
        heartbeat_timeout_ms: req.heartbeat_timeout.map(millis),
        stop_grace_ms: millis(req.stop_grace),
        max_log_bytes: req.max_log_bytes,
        slot_id: facts.task.assigned_slot.clone(),
        memory_limit_mb: pool.memory_limit_mb,
        engine: pool
            .kind
            .is_engine()
            .then(|| pool.kind.as_str().to_string()),
        copy_files: Vec::new(),
        setup: Vec::new(),
        setup_timeout_ms: None,
    };
    // Only a supervisor on this machine bootstraps a slot; an engine's job runs elsewhere.
    if let Some(bootstrap) = req.bootstrap.as_ref().filter(|_| !pool.kind.is_engine()) {
        record.copy_files.clone_from(&bootstrap.copy_files);
        record.setup.clone_from(&bootstrap.setup);
        record.setup_timeout_ms = Some(millis(bootstrap.setup_timeout));
    }
    Ok(Prepared {
        env,
        record,
        log,
        heartbeat_path,
    })
}

/// Starts one runner under its supervisor, forked by the spawn server (or exec'd here when
/// no server takes the request). The runner's record is written and its lock taken before
/// the supervisor exists, and the supervisor inherits the locked descriptor, so there is no
/// instant at which the runner exists with a free lock. The supervisor gets a session of its
/// own, a null stdin, and the attempt's log as stdout and stderr (no pipes: nothing breaks
/// if the dispatcher dies). The runner's environment is the supervisor's own, so secrets
/// never go to disk.
pub fn launch(req: &LaunchSpec, pool: &PoolConfig) -> Result<Launched, LaunchError> {
    let Prepared {
        env,
        record,
        log,
        heartbeat_path,
    } = prepare(req, pool, &RunnerView::local(req))?;
    let dir = &req.runner_dir;
    // The record file is also the runner's lock. It is locked here and becomes the
    // supervisor's standard input, so the supervisor holds the lock from its first instant
    // and no other process inherits it. Our copy closes when `record_file` drops, without
    // unlocking: the flock belongs to the open file, which the supervisor keeps open.
    let record_path = dir.record_path();
    let mut record_file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&record_path)
        .map_err(prepare_error(&record_path))?;
    if !sys::holds_flock(&record_file) {
        let busy = io::Error::other("the runner lock is already held");
        return Err(prepare_error(&record_path)(busy));
    }
    // Complete before the supervisor exists (it reads the file from its start). Not synced:
    // the record only matters while this machine runs — a crash of the machine ends the
    // supervisor and its runner, and a record lost with them reads as the same "lost" runner
    // as a record with a free lock and no exit. The registry's claim is what is durable. On a
    // slow disk these fsyncs and supervisor.json's took a fifth of W1's time.
    let bytes = serde_json::to_vec_pretty(&record).map_err(io::Error::other);
    bytes
        .and_then(|bytes| record_file.write_all(&bytes))
        .and_then(|()| record_file.rewind())
        .map_err(prepare_error(&record_path))?;
    let program = supervisor_program().map_err(prepare_error(Path::new("/proc/self/exe")))?;
    let started = match fork_supervisor(req, program, &env, record_file, log)? {
        Forked::Started(started) => started,
        Forked::Exec(record_file, log) => exec_supervisor(req, program, &env, record_file, log)?,
    };
    Ok(Launched {
        runner_id: req.runner_id.clone(),
        dir: dir.clone(),
        supervisor: started.child,
        supervisor_pid: started.pid,
        pidfd: started.pidfd,
        log_path: req.log_path.clone(),
        heartbeat_path,
    })
}

/// A supervisor that runs: our child when exec'd here, the spawn server's when forked.
struct Started {
    child: Option<Child>,
    pid: Option<u32>,
    pidfd: Option<PidFd>,
}

enum Forked {
    Started(Started),
    /// No forked supervisor runs: the descriptors (the record locked) come back for an exec.
    Exec(File, File),
}

/// Has the spawn server fork the supervisor (see [`crate::spawn_server`]).
fn fork_supervisor(
    req: &LaunchSpec,
    program: &Path,
    env: &BTreeMap<OsString, OsString>,
    record_file: File,
    log: File,
) -> Result<Forked, LaunchError> {
    let server = spawn_server(program);
    // The server's working directory changes with every request: relative paths would
    // resolve against the previous runner's.
    let absolute = |path: &Path| std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let request = SpawnRequest {
        dir: absolute(req.runner_dir.path()),
        cwd: absolute(&req.workdir),
        env: env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    };
    let spawn_error = |source| LaunchError::Spawn {
        program: program.to_path_buf(),
        source,
    };
    match server.spawn(&request, &record_file, &log) {
        // Without the server's pidfd the supervisor is followed by its lock: a pidfd opened
        // here could name another process, since the server may have reaped this one.
        Ok(spawned) => Ok(Forked::Started(Started {
            child: None,
            pid: Some(spawned.pid),
            pidfd: spawned.pidfd,
        })),
        Err(SpawnFailure::Refused(message)) => Err(spawn_error(io::Error::other(message))),
        Err(SpawnFailure::NotSent(err)) => {
            log::warn!(
                "runner {}: {err}; its supervisor is started directly",
                req.runner_id
            );
            Ok(Forked::Exec(record_file, log))
        }
        Err(failure @ SpawnFailure::Unconfirmed(_)) => {
            // Only the runner's files can tell whether the server forked before it was lost
            // (it is killed by now, so none of its copies hold the lock): once our own copy
            // is closed, a lock still held is a supervisor's, and an `exit.json` is one that
            // has already finished. The watchdog follows either by its lock, without a pid.
            drop(record_file);
            match req.runner_dir.liveness() {
                Liveness::Alive | Liveness::Exited(_) => {
                    log::warn!("runner {}: {failure}; its supervisor runs", req.runner_id);
                    Ok(Forked::Started(Started {
                        child: None,
                        pid: None,
                        pidfd: None,
                    }))
                }
                Liveness::Lost => {
                    // Nothing runs: the supervisor is exec'd here, under the lock taken again.
                    log::warn!(
                        "runner {}: {failure}; its supervisor is started directly",
                        req.runner_id
                    );
                    let record_path = req.runner_dir.record_path();
                    let relocked = OpenOptions::new()
                        .read(true)
                        .write(true)
                        .open(&record_path)
                        .and_then(|file| {
                            if sys::holds_flock(&file) {
                                Ok(file)
                            } else {
                                Err(io::Error::other("the runner lock was taken meanwhile"))
                            }
                        })
                        .map_err(prepare_error(&record_path))?;
                    Ok(Forked::Exec(relocked, log))
                }
            }
        }
    }
}

/// Starts the supervisor program as our own child (when no spawn server can).
fn exec_supervisor(
    req: &LaunchSpec,
    program: &Path,
    env: &BTreeMap<OsString, OsString>,
    record_file: File,
    log: File,
) -> Result<Started, LaunchError> {
    let log_err = log.try_clone().map_err(prepare_error(&req.log_path))?;
    let supervisor = Command::new(program)
        .arg(SUPERVISE_ARG)
        .arg(req.runner_dir.path())
        .env_clear()
        .envs(env)
        .current_dir(&req.workdir)
        .stdin(Stdio::from(record_file))
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err))
        .spawn()
        .map_err(|source| LaunchError::Spawn {
            program: program.to_path_buf(),
            source,
        })?;
    let pid = supervisor.id();
    Ok(Started {
        child: Some(supervisor),
        pid: Some(pid),
        pidfd: open_pidfd(req, pid),
    })
}

/// The supervisor runs from here on: a failure to open its pidfd must not lose it (the
/// watchdog then follows it by its lock instead).
fn open_pidfd(req: &LaunchSpec, pid: u32) -> Option<PidFd> {
    match PidFd::open(pid) {
        Ok(pidfd) => Some(pidfd),
        Err(err) => {
            log::warn!(
                "runner {}: no pidfd for its supervisor ({err}); watching its lock",
                req.runner_id
            );
            None
        }
    }
}

/// The spawn server of this process, run by `program` (decided once, like the program).
fn spawn_server(program: &Path) -> &'static SpawnServer {
    static SERVER: OnceLock<SpawnServer> = OnceLock::new();
    SERVER.get_or_init(|| SpawnServer::new(program.to_path_buf()))
}

/// The program that supervises runners — run as the spawn server, or exec'd per runner when
/// no server can take a request: `dispatcher-supervisor` beside this executable when it
/// answers with this build's id, else this executable in its hidden mode. The small program
/// starts faster and its forks are cheaper (far fewer pages mapped: 1,000 starts 1.1 s
/// against 1.5 s). Decided once per process.
fn supervisor_program() -> io::Result<&'static Path> {
    static PROGRAM: OnceLock<PathBuf> = OnceLock::new();
    if let Some(program) = PROGRAM.get() {
        return Ok(program);
    }
    let own = std::env::current_exe()?;
    let sibling = own.with_file_name(SUPERVISOR_PROGRAM);
    let expected = supervisor_version();
    let program = match version_of(&sibling) {
        Ok(answer) if answer == expected => sibling,
        Ok(_) => {
            log::warn!(
                "{} is not this build's supervisor ({expected}); runners are supervised by {}",
                sibling.display(),
                own.display()
            );
            own
        }
        Err(err) if sibling.exists() => {
            log::warn!(
                "{} does not answer ({err}); runners are supervised by {}",
                sibling.display(),
                own.display()
            );
            own
        }
        Err(_) => {
            log::debug!(
                "no {}; runners are supervised by {}",
                sibling.display(),
                own.display()
            );
            own
        }
    };
    Ok(PROGRAM.get_or_init(|| program))
}

/// What `program --version` prints (trimmed); a program that does not answer within a few
/// seconds is killed and counts as an error.
fn version_of(program: &Path) -> io::Result<String> {
    use std::os::unix::process::CommandExt;
    let mut child = Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()?;
    let stdout = crate::subprocess::drain(child.stdout.take());
    let status = crate::subprocess::wait_with_timeout(&mut child, Duration::from_secs(5))?;
    let out = stdout.join().unwrap_or_default();
    match status {
        Some(status) if status.success() => Ok(String::from_utf8_lossy(&out).trim().to_string()),
        Some(status) => Err(io::Error::other(format!("--version: {status}"))),
        None => Err(io::Error::other("--version did not answer")),
    }
}

//! The runner supervisor: a small process (this binary in a hidden mode) that owns one
//! runner, so that the runner outlives a crash of the dispatcher — the pattern of conmon and
//! containerd-shim.
//!
//! Protocol, in the runner's directory `<state_dir>/runners/<runner_id>/`:
//! 1. The dispatcher writes `runner.json` (what to run, limits) and flocks it *before* the
//!    supervisor exists; the locked file becomes the supervisor's standard input, so from
//!    its first instant "runner.json locked" means "supervisor alive" — immune to pid reuse.
//!    A crash before the spawn leaves a record with a free lock and no exit: nothing ran.
//! 2. The supervisor starts the runner in its own process group (its output straight into
//!    the attempt's log, no pipes), writes `supervisor.json` (its pid and the runner's), and
//!    enforces the execution timeout, the heartbeat timeout and the log cap itself, whether
//!    or not the dispatcher is still there.
//! 3. A stop request is `stop` (the reason) followed by SIGTERM to the supervisor, which
//!    relays TERM to the runner's group and KILL after the grace period.
//! 4. When the runner has exited, the supervisor kills what is left of its group, writes
//!    `exit.json` atomically and exits, releasing the lock. So a free lock plus `exit.json`
//!    means finished, a free lock without it means lost.

use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::fsutil::{self, FileLock};
use crate::sys::{self, WakePipe};
use crate::timefmt;

/// The hidden first argument that turns the binary into a supervisor.
pub const SUPERVISE_ARG: &str = "__supervise";

/// The supervisor's own small program, installed beside `dispatcher`.
pub const SUPERVISOR_PROGRAM: &str = "dispatcher-supervisor";

/// What `dispatcher-supervisor --version` prints: the dispatcher only uses a supervisor
/// program of its own build (the runner directory protocol is not versioned otherwise; the
/// build id is a hash of the sources, see `build.rs`).
pub fn supervisor_version() -> String {
    format!(
        "{SUPERVISOR_PROGRAM} {} (build {})",
        env!("CARGO_PKG_VERSION"),
        env!("DISPATCHER_BUILD_ID")
    )
}

/// Why the runner was stopped; decides how its attempt is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The pool's execution `timeout` passed.
    TimedOut,
    /// No heartbeat for `heartbeat_timeout`.
    HeartbeatLost,
    /// The dispatcher is draining; the attempt is not counted.
    Interrupted,
    /// `dispatcher cancel`: the task is failed, not retried.
    Cancelled,
    /// Its pool's or spec's hard budget cap was crossed: the task is failed, not retried.
    BudgetExceeded,
    /// No progress for `stall_timeout` with `stall_action = "restart"`: counted, retried.
    Stalled,
    /// No progress for `stall_timeout` with `stall_action = "fail"`: the task is failed.
    StallFailed,
}

impl StopReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::TimedOut => "timed_out",
            StopReason::HeartbeatLost => "heartbeat_lost",
            StopReason::Interrupted => "interrupted",
            StopReason::Cancelled => "cancelled",
            StopReason::BudgetExceeded => "budget_exceeded",
            StopReason::Stalled => "stalled",
            StopReason::StallFailed => "stall_failed",
        }
    }

    pub(crate) fn parse(text: &str) -> Option<StopReason> {
        [
            StopReason::TimedOut,
            StopReason::HeartbeatLost,
            StopReason::Interrupted,
            StopReason::Cancelled,
            StopReason::BudgetExceeded,
            StopReason::Stalled,
            StopReason::StallFailed,
        ]
        .into_iter()
        .find(|r| r.as_str() == text.trim())
    }
}

/// `runner.json`: everything the supervisor needs, written before it starts. The runner's
/// environment is not in it: it reaches the supervisor as its own environment, so secrets
/// never touch the disk.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunnerRecord {
    pub runner_id: String,
    pub spec: String,
    pub task_id: String,
    pub attempt: u32,
    pub pool: String,
    pub owner: String,
    pub created_at: String,
    pub argv: Vec<String>,
    pub cwd: PathBuf,
    pub log_path: PathBuf,
    pub heartbeat_path: PathBuf,
    pub timeout_ms: Option<u64>,
    pub heartbeat_timeout_ms: Option<u64>,
    pub stop_grace_ms: u64,
    pub max_log_bytes: Option<u64>,
    #[serde(default)]
    pub slot_id: Option<String>,
    /// Address-space limit of the runner (and its children), in MiB.
    #[serde(default)]
    pub memory_limit_mb: Option<u64>,
    /// The engine that runs it (`slurm`, `docker`, `kubernetes`); `None`: a supervisor on this
    /// machine. An engine runner has no supervisor and no lock: `engine.json` names its job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<String>,
    /// The slot's bootstrap, done before the runner starts (see [`crate::bootstrap`]): files
    /// copied from the main checkout, then the `setup` argv with its timeout.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub copy_files: Vec<crate::bootstrap::CopyFile>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub setup: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setup_timeout_ms: Option<u64>,
}

/// `supervisor.json`, written once the runner has started.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SupervisorInfo {
    pub supervisor_pid: u32,
    pub runner_pid: u32,
    pub started_at: String,
}

/// `exit.json`: how the attempt ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Exit {
    pub runner_id: String,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// Set when the runner was stopped on purpose.
    pub stopped: Option<StopReason>,
    pub duration_seconds: f64,
    #[serde(default)]
    pub log_truncated: bool,
    /// Set when there is no exit status: the runner could not start, or was lost.
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub finished_at: Option<String>,
    /// Why an engine ended the job when its program did not end it by itself (Slurm's
    /// `TIMEOUT`, `NODE_FAIL`, a container `OOMKilled` …): a failed attempt, with this reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Why a failed attempt failed, when something says so (the runner's exit code 75 or
    /// result file, the pool's output patterns, a failed worktree setup); `None`: plain failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<FailureClass>,
}

/// Kinds of failure that are handled differently from a plain failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureClass {
    /// The runner failed on its own account: counted, retried with backoff.
    Failed,
    /// The provider refused for now: the pool's breaker opens; the attempt is not counted.
    RateLimited,
    /// The provider's credentials expired: the pool's breaker opens; not counted.
    AuthExpired,
    /// Something around the runner failed (the machine, the network, worktree setup):
    /// retried with backoff without counting against the task.
    Infra,
}

impl FailureClass {
    pub const ALL: [FailureClass; 4] = [
        FailureClass::Failed,
        FailureClass::RateLimited,
        FailureClass::AuthExpired,
        FailureClass::Infra,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::Failed => "failed",
            FailureClass::RateLimited => "rate_limited",
            FailureClass::AuthExpired => "auth_expired",
            FailureClass::Infra => "infra",
        }
    }

    pub fn parse(text: &str) -> Option<FailureClass> {
        FailureClass::ALL.into_iter().find(|c| c.as_str() == text)
    }

    /// Whether this failure opens its pool's circuit breaker.
    pub fn opens_breaker(self) -> bool {
        matches!(self, FailureClass::RateLimited | FailureClass::AuthExpired)
    }

    /// Whether the attempt counts against the task's `max_attempts`.
    pub fn counts(self) -> bool {
        self == FailureClass::Failed
    }
}

impl Exit {
    /// An attempt that ended without the runner ever reporting (could not start, lost).
    pub fn without_status(runner_id: &str, error: String) -> Exit {
        Exit {
            runner_id: runner_id.to_string(),
            exit_code: None,
            signal: None,
            stopped: None,
            duration_seconds: 0.0,
            log_truncated: false,
            error: Some(error),
            finished_at: Some(timefmt::now_string()),
            reason: None,
            class: None,
        }
    }

    pub fn succeeded(&self) -> bool {
        self.stopped.is_none()
            && self.error.is_none()
            && self.reason.is_none()
            && self.exit_code == Some(0)
    }

    pub fn duration(&self) -> Duration {
        Duration::try_from_secs_f64(self.duration_seconds).unwrap_or_default()
    }

    /// One word for events and logs.
    pub fn outcome(&self) -> &'static str {
        match (self.stopped, &self.error) {
            (Some(reason), _) => reason.as_str(),
            (None, Some(_)) => "lost",
            (None, None) if self.succeeded() => "succeeded",
            (None, None) => "failed",
        }
    }

    /// `what`, followed by the detail the dispatcher recorded in `reason`, if any.
    fn with_reason(&self, what: &str) -> String {
        match &self.reason {
            Some(detail) => format!("{what}: {detail}"),
            None => what.to_string(),
        }
    }

    /// A human description of a failure, for `last_error`.
    pub fn describe(&self) -> String {
        match (self.stopped, &self.error, self.exit_code, self.signal) {
            (Some(StopReason::TimedOut), ..) => "execution timeout exceeded".into(),
            (Some(StopReason::HeartbeatLost), ..) => "no heartbeat within heartbeat_timeout".into(),
            (Some(StopReason::Interrupted), ..) => "interrupted by dispatcher shutdown".into(),
            (Some(StopReason::Cancelled), ..) => "cancelled".into(),
            (Some(StopReason::BudgetExceeded), ..) => self.with_reason("budget exceeded"),
            (Some(StopReason::Stalled | StopReason::StallFailed), ..) => {
                self.with_reason("stalled: no progress within stall_timeout")
            }
            (None, Some(error), ..) => error.clone(),
            (None, None, code, _) if self.reason.is_some() => {
                let reason = self.reason.as_deref().unwrap_or_default();
                match code {
                    Some(code) => format!("{reason} (exit code {code})"),
                    None => reason.to_string(),
                }
            }
            (None, None, Some(code), _) => format!("exited with code {code}"),
            (None, None, None, Some(signal)) => format!("killed by signal {signal}"),
            (None, None, None, None) => "ended without an exit status".into(),
        }
    }
}

/// One runner's directory and the files of the protocol.
#[derive(Clone, Debug)]
pub struct RunnerDir {
    path: PathBuf,
}

/// What the files of a runner directory say about its runner.
#[derive(Debug)]
pub enum Liveness {
    /// The supervisor holds the lock.
    Alive,
    /// The supervisor is gone and recorded how the runner ended.
    Exited(Exit),
    /// The supervisor is gone (or never started) without recording an end.
    Lost,
}

impl RunnerDir {
    pub fn new(path: impl Into<PathBuf>) -> RunnerDir {
        RunnerDir { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn record_path(&self) -> PathBuf {
        self.path.join("runner.json")
    }

    pub fn exit_path(&self) -> PathBuf {
        self.path.join("exit.json")
    }

    pub fn supervisor_path(&self) -> PathBuf {
        self.path.join("supervisor.json")
    }

    pub fn stop_path(&self) -> PathBuf {
        self.path.join("stop")
    }

    pub fn read_record(&self) -> io::Result<RunnerRecord> {
        read_json(&self.record_path())
    }

    pub fn read_exit(&self) -> Option<Exit> {
        read_json(&self.exit_path()).ok()
    }

    pub fn read_supervisor(&self) -> Option<SupervisorInfo> {
        read_json(&self.supervisor_path()).ok()
    }

    /// Decided by the lock, never by a pid: a lock we can take means no supervisor. An
    /// engine runner has no supervisor: until its end is recorded, only its engine can say
    /// it is gone, so it counts as alive here.
    pub fn liveness(&self) -> Liveness {
        if let Ok(None) = FileLock::try_acquire(&self.record_path()) {
            return Liveness::Alive;
        }
        match self.read_exit() {
            Some(exit) => Liveness::Exited(exit),
            None if self.engine().is_some() => Liveness::Alive,
            None => Liveness::Lost,
        }
    }

    /// The engine of an engine runner (from `runner.json`).
    pub fn engine(&self) -> Option<String> {
        self.read_record().ok().and_then(|record| record.engine)
    }

    /// Records why the runner is being stopped; the caller then signals the supervisor.
    pub fn request_stop(&self, reason: StopReason) -> io::Result<()> {
        fsutil::write_atomic(&self.stop_path(), reason.as_str().as_bytes())
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> io::Result<T> {
    let bytes = fs::read(path)?;
    serde_json::from_slice(&bytes).map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err))
}

// ----- the supervisor process ------------------------------------------------------------

static WAKE_FD: AtomicI32 = AtomicI32::new(-1);
static TERMINATE: AtomicBool = AtomicBool::new(false);

extern "C" fn on_child(_: libc::c_int) {
    sys::write_byte_from_handler(WAKE_FD.load(Ordering::Relaxed));
}

extern "C" fn on_terminate(_: libc::c_int) {
    TERMINATE.store(true, Ordering::Relaxed);
    sys::write_byte_from_handler(WAKE_FD.load(Ordering::Relaxed));
}

/// If this process was started as a supervisor (or as the spawn server that forks them, see
/// [`crate::spawn_server`]), runs it and exits; otherwise returns at once. The `dispatcher`
/// binary calls it first thing; a program that embeds the library and starts runners must
/// call it first thing in `main` too.
pub fn run_if_requested() {
    let args: Vec<OsString> = std::env::args_os().collect();
    let mode = args.get(1).map(OsString::as_os_str);
    if mode == Some(crate::spawn_server::SPAWN_SERVER_ARG.as_ref()) {
        crate::spawn_server::serve();
    }
    if mode != Some(SUPERVISE_ARG.as_ref()) {
        return;
    }
    let Some(dir) = args.get(2) else {
        eprintln!("usage: {SUPERVISE_ARG} RUNNER_DIR < RUNNER_DIR/runner.json (locked)");
        std::process::exit(2);
    };
    supervise_and_exit(&RunnerDir::new(PathBuf::from(dir)));
}

/// Supervises the runner of `dir` and exits: the body of a supervisor process, whether it
/// was exec'd or forked by the spawn server. Expects the locked `runner.json` as standard
/// input, the attempt's log as standard output and error, the runner's environment as its
/// own and its working directory as the current one.
pub(crate) fn supervise_and_exit(dir: &RunnerDir) -> ! {
    let code = match supervise(dir) {
        Ok(()) => 0,
        Err(err) => {
            eprintln!("# dispatcher-supervisor: {err}");
            1
        }
    };
    std::process::exit(code);
}

struct Stopping {
    reason: StopReason,
    kill_at: Instant,
    killed: bool,
}

fn supervise(dir: &RunnerDir) -> io::Result<()> {
    // Handlers first, then unblock: the dispatcher blocks SIGINT/SIGTERM/SIGHUP in its
    // threads (one thread waits for them) and we inherit that mask. A stop signal that came
    // early is then delivered to our handler instead of killing us.
    let wake = WakePipe::new()?;
    WAKE_FD.store(wake.write_fd(), Ordering::Relaxed);
    sys::install_signal_handler(libc::SIGCHLD, on_child);
    for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        sys::install_signal_handler(signal, on_terminate);
    }
    sys::SignalSet::unblock_all()?;
    // Out of the terminal's session, so its Ctrl-C and hang-up never reach us or the runner.
    sys::new_session()?;
    // Standard input is the locked runner.json: held until the supervisor exits, and while
    // it is, the runner counts as alive.
    let mut lock = sys::take_stdin()?;
    if !sys::holds_flock(&lock) {
        return Err(io::Error::other("runner.json is locked by another process"));
    }
    let mut bytes = Vec::new();
    io::Read::read_to_end(&mut lock, &mut bytes)?;
    let record: RunnerRecord = serde_json::from_slice(&bytes)
        .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err))?;

    // Setup belongs to the attempt: its output goes to the log, its failure is the attempt's
    // end, and a stop request that comes meanwhile ends it without starting the runner.
    let signals = crate::bootstrap::Signals {
        wake: &wake,
        terminate: &TERMINATE,
    };
    if let Some(exit) = crate::bootstrap::run(&record, dir, &signals) {
        return write_exit(dir, &exit);
    }

    let started = Instant::now();
    let (program, args) = record
        .argv
        .split_first()
        .ok_or_else(|| io::Error::other("runner.json has an empty argv"))?;
    let mut command = Command::new(program);
    command
        .args(args)
        .current_dir(&record.cwd)
        .stdin(Stdio::null())
        .process_group(0);
    if let Some(limit) = record.memory_limit_mb {
        let bytes = limit.saturating_mul(1 << 20);
        // SAFETY: runs between fork and exec in this single-threaded supervisor and only
        // calls setrlimit, which is async-signal-safe.
        unsafe {
            command.pre_exec(move || sys::limit_address_space(bytes));
        }
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(err) => {
            let error = format!("cannot start runner {program:?}: {err}");
            eprintln!("# dispatcher-supervisor: {error}");
            return write_exit(dir, &Exit::without_status(&record.runner_id, error));
        }
    };
    let runner_pid = child.id();
    let info = SupervisorInfo {
        supervisor_pid: std::process::id(),
        runner_pid,
        started_at: timefmt::now_string(),
    };
    // From here on the runner exists: no early return may leave it unwatched. Without
    // supervisor.json (a full disk, say) status lacks the pid; liveness never needs it. Not
    // synced: it names processes, which a crash of the machine ends along with it.
    let info_written = serde_json::to_vec(&info)
        .map_err(io::Error::other)
        .and_then(|bytes| fsutil::replace(&dir.supervisor_path(), &bytes));
    if let Err(err) = info_written {
        eprintln!("# dispatcher-supervisor: cannot write supervisor.json: {err}");
    }

    let ms = |value: Option<u64>| value.map(Duration::from_millis);
    let timeout = ms(record.timeout_ms);
    let heartbeat_timeout = ms(record.heartbeat_timeout_ms);
    let stop_grace = Duration::from_millis(record.stop_grace_ms);
    let mut heartbeat = Heartbeat::new(&record);
    let mut log_cap = record
        .max_log_bytes
        .map(|cap| LogCap::new(&record.log_path, cap));
    let mut stopping: Option<Stopping> = None;

    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(err) => {
                // Cannot tell whether the runner lives: end it rather than lose track of it.
                eprintln!("# dispatcher-supervisor: cannot poll the runner ({err}); killing it");
                sys::signal_group(runner_pid, libc::SIGKILL);
                let status = child.wait()?;
                break status;
            }
        }
        let now = Instant::now();
        // Look before judging: a touch made just before this check must count.
        heartbeat.observe(now);
        match &mut stopping {
            Some(stop) => {
                if !stop.killed && now >= stop.kill_at {
                    eprintln!("# dispatcher-supervisor: runner ignored SIGTERM; sending SIGKILL");
                    sys::signal_group(runner_pid, libc::SIGKILL);
                    stop.killed = true;
                }
            }
            None => {
                let reason = if TERMINATE.load(Ordering::Relaxed) {
                    let requested = fs::read_to_string(dir.stop_path()).ok();
                    Some(
                        requested
                            .as_deref()
                            .and_then(StopReason::parse)
                            .unwrap_or(StopReason::Interrupted),
                    )
                } else if timeout.is_some_and(|t| now.duration_since(started) >= t) {
                    Some(StopReason::TimedOut)
                } else if heartbeat_timeout.is_some_and(|t| heartbeat.silent_for(now) >= t) {
                    Some(StopReason::HeartbeatLost)
                } else {
                    None
                };
                if let Some(reason) = reason {
                    eprintln!(
                        "# dispatcher-supervisor: stopping runner ({})",
                        reason.as_str()
                    );
                    sys::signal_group(runner_pid, libc::SIGTERM);
                    stopping = Some(Stopping {
                        reason,
                        kill_at: now + stop_grace,
                        killed: false,
                    });
                }
            }
        }
        if let Some(cap) = &mut log_cap {
            cap.enforce();
        }

        // Sleep until a child exits, a signal arrives, or the next check is due.
        let mut next = now + heartbeat.check_interval(heartbeat_timeout);
        if let Some(t) = timeout {
            next = next.min(started + t);
        }
        if let Some(stop) = &stopping {
            if !stop.killed {
                next = next.min(stop.kill_at);
            }
        }
        if let Some(cap) = &log_cap {
            next = next.min(now + cap.check_interval());
        }
        let wait = next.saturating_duration_since(Instant::now());
        if sys::poll_readable(&[wake.as_raw_fd()], Some(wait)).is_err() {
            // The loop still ticks: a failed wait only makes it poll sooner.
            std::thread::sleep(Duration::from_millis(50));
        }
        wake.drain();
    };

    // Whatever the runner left behind belongs to the finished attempt.
    if sys::group_alive(runner_pid) {
        sys::signal_group(runner_pid, libc::SIGKILL);
    }
    // What was written since the last check (up to a check interval of a fast writer's
    // output) is past the cap too.
    if let Some(cap) = &mut log_cap {
        cap.enforce();
    }
    let exit = Exit {
        runner_id: record.runner_id.clone(),
        exit_code: status.code(),
        signal: status.signal(),
        stopped: stopping.map(|s| s.reason),
        duration_seconds: started.elapsed().as_secs_f64(),
        log_truncated: log_cap.is_some_and(|cap| cap.truncated),
        error: None,
        finished_at: Some(timefmt::now_string()),
        reason: None,
        class: None,
    };
    eprintln!("# dispatcher-supervisor: runner {}", exit.describe_end());
    write_exit(dir, &exit)
}

impl Exit {
    fn describe_end(&self) -> String {
        match (self.exit_code, self.stopped) {
            (Some(0), None) => "exited with code 0".into(),
            _ => self.describe(),
        }
    }
}

fn write_exit(dir: &RunnerDir, exit: &Exit) -> io::Result<()> {
    let bytes = serde_json::to_vec_pretty(exit).map_err(io::Error::other)?;
    fsutil::write_atomic(&dir.exit_path(), &bytes)
}

/// Signs of life: the log grows or the heartbeat file's mtime changes.
struct Heartbeat {
    log_path: PathBuf,
    heartbeat_path: PathBuf,
    log_size: u64,
    touched: Option<SystemTime>,
    last: Instant,
}

impl Heartbeat {
    fn new(record: &RunnerRecord) -> Heartbeat {
        Heartbeat {
            log_size: file_size(&record.log_path),
            touched: mtime(&record.heartbeat_path),
            log_path: record.log_path.clone(),
            heartbeat_path: record.heartbeat_path.clone(),
            last: Instant::now(),
        }
    }

    fn observe(&mut self, now: Instant) {
        let size = file_size(&self.log_path);
        let touched = mtime(&self.heartbeat_path);
        if size != self.log_size || touched != self.touched {
            self.last = now;
        }
        self.log_size = size;
        self.touched = touched;
    }

    fn silent_for(&self, now: Instant) -> Duration {
        now.duration_since(self.last)
    }

    /// Often enough to notice silence within a quarter of the timeout, at most once a second.
    fn check_interval(&self, timeout: Option<Duration>) -> Duration {
        let second = Duration::from_secs(1);
        timeout.map_or(second, |t| (t / 4).clamp(Duration::from_millis(25), second))
    }
}

/// Keeps an attempt's log at most `cap` bytes plus a marker. The runner writes straight into
/// the file (O_APPEND), so the supervisor cuts it back whenever it grew past the cap; the
/// overshoot between two checks is bounded by checking often while the log grows fast.
struct LogCap {
    path: PathBuf,
    cap: u64,
    truncated: bool,
    marker_len: u64,
    last_size: u64,
}

impl LogCap {
    fn new(path: &Path, cap: u64) -> LogCap {
        LogCap {
            path: path.to_path_buf(),
            cap,
            truncated: false,
            marker_len: 0,
            last_size: file_size(path),
        }
    }

    fn check_interval(&self) -> Duration {
        if self.truncated || self.last_size > self.cap / 2 {
            Duration::from_millis(50)
        } else {
            Duration::from_secs(1)
        }
    }

    fn enforce(&mut self) {
        let size = file_size(&self.path);
        self.last_size = size;
        let limit = self.cap + self.marker_len;
        if size <= limit {
            return;
        }
        // Not O_APPEND: the marker goes at offset `cap` whatever the runner appended since
        // the cut, so the next cut back to `cap + marker_len` keeps exactly the marker.
        let Ok(file) = OpenOptions::new().write(true).open(&self.path) else {
            return;
        };
        if self.truncated {
            let _ = file.set_len(limit);
        } else {
            let _ = file.set_len(self.cap);
            let marker = format!(
                "\n# dispatcher: log truncated at max_log_bytes ({} bytes); further output discarded\n",
                self.cap
            );
            let _ = file.write_all_at(marker.as_bytes(), self.cap);
            self.marker_len = marker.len() as u64;
            self.truncated = true;
        }
        self.last_size = self.cap + self.marker_len;
    }
}

fn file_size(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

fn mtime(path: &Path) -> Option<SystemTime> {
    fs::metadata(path).and_then(|m| m.modified()).ok()
}

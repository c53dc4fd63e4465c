//! The core thread: the one owner of all scheduling state (the queue, pool loads, the
//! running table, retry timers, the drain). Other threads only send it messages.
//!
//! One turn of the loop: take one message (control first, then runner exits, then registry
//! changes) or a timer, apply it, then run a scheduling pass and publish the status.
//!
//! The claim protocol: the core picks assignments, writes READY→RUNNING for all of one
//! spec's picks in one locked read-modify-write (skipping any task whose state changed
//! meanwhile), and only then starts the runners. A runner's end is written the same way,
//! checking that the task is still RUNNING under that runner's id. A write that fails is
//! kept and retried; the loop itself never returns early on an error.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use chrono::NaiveDateTime;
use crossbeam_channel::{select_biased, Receiver, Sender};
use serde_json::json;

use crate::config::Config;
use crate::launcher::{self, LaunchRequest};
use crate::monitor::{Monitor, RegistryEvent};
use crate::registry::{Event, EventLog, Registry, TaskState, Taskset};
use crate::runner_env::RunnerFacts;
use crate::scheduler::{self, PoolLoad, QueuedTask, TaskKey};
use crate::statedir::{InstanceLock, StateDir};
use crate::status::{
    self, DispatcherInfo, PoolStatus, RetryStatus, RunnerStatus, StatusReport, StuckStatus,
    TasksetStatus, UnroutableStatus,
};
use crate::supervisor::{Exit, Liveness, RunnerDir, StopReason};
use crate::sys::PidFd;
use crate::timefmt;
use crate::view;
use crate::watchdog::{RunnerEvent, Watch, WatchCommand, Watchdog};

/// How often the status snapshot is refreshed while something changes.
const SNAPSHOT_INTERVAL: Duration = Duration::from_secs(1);
/// How often it is rewritten when nothing changes, so readers can tell we are alive.
const SNAPSHOT_KEEPALIVE: Duration = Duration::from_secs(5);
/// How long a spec whose registry write failed is left alone before trying again.
const WRITE_RETRY: Duration = Duration::from_secs(2);

/// Requests from outside the core; a request that needs an answer carries its reply.
pub enum Control {
    /// Ctrl-C or SIGTERM. The first starts the drain, a second (`force`) stops runners now.
    Shutdown {
        force: bool,
    },
    /// `Dispatcher::stop`: drain, waiting at most `timeout` for runners to finish.
    Drain {
        timeout: Duration,
    },
    Status(Sender<StatusReport>),
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunOutcome {
    /// `--until-idle`: nothing is left to do and every task is done.
    AllDone,
    /// `--until-idle`: nothing is left to do and some tasks failed.
    SomeFailed,
    /// `--until-idle`: tasks remain that can never run (failed or missing dependency,
    /// no pool for their skill, an unreadable taskset).
    NeverRunnable,
    /// Stopped by a signal or `stop()`; every runner was finished or interrupted.
    Drained,
}

impl RunOutcome {
    /// The documented exit code of `dispatcher run`.
    pub fn exit_code(self) -> u8 {
        match self {
            RunOutcome::AllDone => 0,
            RunOutcome::SomeFailed => 3,
            RunOutcome::NeverRunnable => 4,
            RunOutcome::Drained => 130,
        }
    }
}

/// What `Dispatcher::start` hands the core thread.
pub struct CoreParts {
    /// Held until the core ends: one dispatcher per state directory.
    pub lock: InstanceLock,
    pub control: Receiver<Control>,
    pub watchdog: Watchdog,
    pub runner_events: Receiver<RunnerEvent>,
}

struct PoolRuntime {
    name: String,
    running: usize,
}

struct SpecState {
    /// The last readable version (kept while the file is broken so running tasks finish).
    taskset: Option<Arc<Taskset>>,
    error: Option<String>,
    /// Not scheduled until then, after a failed write.
    suspended_until: Option<Instant>,
    never_runnable: Vec<(String, String)>,
}

struct Running {
    key: TaskKey,
    runner_id: String,
    /// `None` for an adopted runner whose pool is no longer configured.
    pool: Option<usize>,
    adopted: bool,
    attempt: u32,
    pid: Option<u32>,
    title: String,
    started_at: String,
    started: Instant,
    log_path: PathBuf,
    last_heartbeat: Option<String>,
}

/// An attempt that ended and still has to be written to the registry.
struct Finish {
    run: Running,
    exit: Exit,
}

struct Drain {
    deadline: Instant,
    stopping: bool,
}

struct RetryWait {
    due: BTreeSet<(NaiveDateTime, TaskKey)>,
    by_spec: HashMap<Arc<str>, Vec<(NaiveDateTime, TaskKey)>>,
}

pub struct Core {
    config: Arc<Config>,
    registry: Registry,
    events: EventLog,
    state: StateDir,
    until_idle: bool,
    owner: String,
    started_at: String,
    run_prefix: String,
    runner_seq: u64,
    heartbeat_timeout: Option<Duration>,
    watchdog: Option<Watchdog>,

    pools: Vec<PoolRuntime>,
    routes: HashMap<Option<String>, Arc<[usize]>>,
    specs: BTreeMap<String, SpecState>,
    queue: scheduler::Queue,
    retry: RetryWait,
    unroutable: BTreeMap<TaskKey, Option<String>>,
    unroutable_logged: BTreeSet<TaskKey>,
    /// Tasks this dispatcher has claimed and not yet written back, by runner id.
    claimed: HashMap<TaskKey, String>,
    running: HashMap<String, Running>,
    pending: Vec<Finish>,
    drain: Option<Drain>,
    scanned: bool,
    scan_error: Option<String>,

    snapshot_dirty: bool,
    snapshot_written: Option<Instant>,
}

impl Core {
    pub fn new(config: Arc<Config>, state: StateDir, until_idle: bool) -> Core {
        let registry = Registry::new(&config.task_registry.dir);
        let events = EventLog::new(&registry, state.event_fallback_path());
        let owner = format!(
            "{}:{}",
            hostname(),
            std::fs::canonicalize(state.root())
                .unwrap_or_else(|_| state.root().to_path_buf())
                .display()
        );
        let epoch_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let pools: Vec<PoolRuntime> = config
            .agent_pools
            .keys()
            .map(|name| PoolRuntime {
                name: name.clone(),
                running: 0,
            })
            .collect();
        let heartbeat = config.dispatcher.heartbeat_timeout;
        Core {
            heartbeat_timeout: (!heartbeat.is_zero()).then_some(heartbeat),
            watchdog: None,
            queue: scheduler::Queue::new(config.dispatcher.scheduling_policy),
            registry,
            events,
            state,
            until_idle,
            owner,
            started_at: timefmt::now_string(),
            run_prefix: format!("{epoch_ms:x}"),
            runner_seq: 0,
            pools,
            routes: HashMap::new(),
            specs: BTreeMap::new(),
            retry: RetryWait {
                due: BTreeSet::new(),
                by_spec: HashMap::new(),
            },
            unroutable: BTreeMap::new(),
            unroutable_logged: BTreeSet::new(),
            claimed: HashMap::new(),
            running: HashMap::new(),
            pending: Vec::new(),
            drain: None,
            scanned: false,
            scan_error: None,
            snapshot_dirty: true,
            snapshot_written: None,
            config,
        }
    }

    /// Runs until idle (with `--until-idle`) or until drained. Owns the monitor and the
    /// watchdog threads and joins them before returning.
    pub fn run(mut self, parts: CoreParts) -> RunOutcome {
        let (registry_tx, registry_rx) = crossbeam_channel::unbounded();
        let monitor = Monitor::spawn(
            self.registry.clone(),
            self.config.dispatcher.poll_interval,
            registry_tx,
        );
        self.watchdog = Some(parts.watchdog);
        let runner_rx = parts.runner_events;
        let control = parts.control;
        let mut control_open = true;
        log::info!(
            "dispatcher started: registry {}, state dir {}, {} pools, policy {}",
            self.registry.root().display(),
            self.state.root().display(),
            self.pools.len(),
            self.config.dispatcher.scheduling_policy.as_str()
        );
        if self.pools.is_empty() {
            log::warn!("no agent pools are configured: no task can run");
        }

        let outcome = loop {
            let timeout = self.next_wakeup();
            // Control first (shutdown must not wait behind a flood of changes), then
            // runner exits (they free capacity), then registry changes.
            select_biased! {
                recv(control) -> msg => match msg {
                    Ok(msg) => self.on_control(msg),
                    Err(_) => {
                        if control_open {
                            log::debug!("control peer gone");
                            control_open = false;
                        }
                    }
                },
                recv(runner_rx) -> msg => match msg {
                    Ok(event) => self.on_runner(event),
                    Err(_) => log::error!("watchdog gone"),
                },
                recv(registry_rx) -> msg => match msg {
                    Ok(event) => self.on_registry(event),
                    Err(_) => log::error!("registry monitor gone"),
                },
                default(timeout) => {}
            }
            self.on_timers();
            self.retry_pending();
            self.schedule();
            self.publish(false);
            if let Some(outcome) = self.finished() {
                break outcome;
            }
            if !control_open && self.drain.is_none() && !self.until_idle {
                // Nobody can stop us any more: treat it as a stop request.
                self.start_drain(self.config.dispatcher.graceful_shutdown_timeout);
            }
        };
        drop(monitor);
        self.watchdog.take();
        self.publish(true);
        drop(parts.lock);
        outcome
    }

    fn next_wakeup(&self) -> Duration {
        let now = Instant::now();
        let mut wake = now + SNAPSHOT_INTERVAL;
        if let Some((at, _)) = self.retry.due.first() {
            let wait = at
                .signed_duration_since(timefmt::now())
                .to_std()
                .unwrap_or(Duration::ZERO);
            wake = wake.min(now + wait);
        }
        if let Some(drain) = &self.drain {
            if !drain.stopping {
                wake = wake.min(drain.deadline);
            }
        }
        wake.saturating_duration_since(now)
    }

    // ----- messages -------------------------------------------------------------------

    fn on_control(&mut self, msg: Control) {
        match msg {
            Control::Status(reply) => {
                let _ = reply.send(self.report());
            }
            Control::Shutdown { force: false } | Control::Drain { .. } if self.drain.is_none() => {
                let timeout = match msg {
                    Control::Drain { timeout } => timeout,
                    _ => self.config.dispatcher.graceful_shutdown_timeout,
                };
                self.start_drain(timeout);
            }
            Control::Shutdown { .. } | Control::Drain { .. } => {
                let drain = self.drain.get_or_insert(Drain {
                    deadline: Instant::now(),
                    stopping: false,
                });
                if !self.running.is_empty() {
                    log::warn!(
                        "stopping {} runners now; their tasks go back to ready",
                        self.running.len()
                    );
                }
                drain.stopping = true;
                drain.deadline = Instant::now();
                self.send_watchdog(WatchCommand::StopAll {
                    reason: StopReason::Interrupted,
                });
            }
        }
        self.snapshot_dirty = true;
    }

    fn start_drain(&mut self, timeout: Duration) {
        if !self.running.is_empty() {
            log::warn!(
                "draining: no new tasks; waiting up to {}s for {} runners (Ctrl-C again stops them now)",
                timeout.as_secs(),
                self.running.len()
            );
        } else {
            log::info!("draining: no runners to wait for");
        }
        self.drain = Some(Drain {
            deadline: Instant::now() + timeout,
            stopping: false,
        });
    }

    fn on_timers(&mut self) {
        if let Some(drain) = &mut self.drain {
            if !drain.stopping && Instant::now() >= drain.deadline {
                drain.stopping = true;
                if !self.running.is_empty() {
                    log::warn!(
                        "graceful shutdown timeout reached: stopping {} runners",
                        self.running.len()
                    );
                }
                self.send_watchdog(WatchCommand::StopAll {
                    reason: StopReason::Interrupted,
                });
            }
        }
        let now = Instant::now();
        let resume: Vec<String> = self
            .specs
            .iter()
            .filter(|(_, s)| s.suspended_until.is_some_and(|until| until <= now))
            .map(|(spec, _)| spec.clone())
            .collect();
        for spec in resume {
            if let Some(state) = self.specs.get_mut(&spec) {
                state.suspended_until = None;
            }
            self.requeue_spec(&spec);
        }
        self.release_due_retries();
    }

    fn on_runner(&mut self, event: RunnerEvent) {
        match event {
            RunnerEvent::Heartbeat { runner_id, at } => {
                if let Some(run) = self.running.get_mut(&runner_id) {
                    run.last_heartbeat = Some(timefmt::format(timefmt::from_system(at)));
                }
            }
            RunnerEvent::Pid { runner_id, pid } => {
                if let Some(run) = self.running.get_mut(&runner_id) {
                    run.pid = Some(pid);
                }
            }
            RunnerEvent::Exited(exit) => {
                let Some(run) = self.running.remove(&exit.runner_id) else {
                    log::warn!("exit of unknown runner {}", exit.runner_id);
                    return;
                };
                if let Some(pool) = run.pool {
                    self.pools[pool].running -= 1;
                }
                self.record_finish(Finish { run, exit });
            }
        }
        self.snapshot_dirty = true;
    }

    fn on_registry(&mut self, event: RegistryEvent) {
        match event {
            RegistryEvent::Changed { spec, taskset } => match taskset {
                Ok(taskset) => {
                    let state = self.spec_state(&spec);
                    let stale = state
                        .taskset
                        .as_ref()
                        .is_some_and(|known| known.version > taskset.version);
                    if !stale {
                        if state.error.take().is_some() {
                            log::info!("taskset {spec} is readable again");
                        }
                        self.refresh_spec(&spec, taskset);
                    }
                }
                Err(error) => {
                    let state = self.spec_state(&spec);
                    if state.error.as_deref() != Some(&error) {
                        log::error!("{error}; its tasks are not scheduled until the file is fixed");
                        state.error = Some(error);
                    }
                    self.unqueue_spec(&spec);
                }
            },
            RegistryEvent::Removed { spec } => {
                log::info!("taskset {spec} was removed");
                self.unqueue_spec(&spec);
                self.specs.remove(&spec);
            }
            RegistryEvent::ScanFailed(error) => {
                if self.scan_error.as_deref() != Some(&error) {
                    log::error!("{error}");
                    self.scan_error = Some(error);
                }
            }
            RegistryEvent::ScanDone => {
                if !self.scanned {
                    log::info!(
                        "registry read: {} tasksets, {} runnable tasks",
                        self.specs.len(),
                        self.queue.len()
                    );
                }
                self.scanned = true;
            }
        }
        self.snapshot_dirty = true;
    }

    fn spec_state(&mut self, spec: &str) -> &mut SpecState {
        self.specs
            .entry(spec.to_string())
            .or_insert_with(|| SpecState {
                taskset: None,
                error: None,
                suspended_until: None,
                never_runnable: Vec::new(),
            })
    }

    // ----- the queue ------------------------------------------------------------------

    fn route(&mut self, skill: Option<&str>) -> Arc<[usize]> {
        let key = skill.map(str::to_string);
        if let Some(route) = self.routes.get(&key) {
            return route.clone();
        }
        let names: Vec<String> = self
            .config
            .pools_for_skill(skill)
            .into_iter()
            .map(String::from)
            .collect();
        let route: Arc<[usize]> = names
            .iter()
            .filter_map(|name| self.pools.iter().position(|p| &p.name == name))
            .collect();
        self.routes.insert(key, route.clone());
        route
    }

    fn unqueue_spec(&mut self, spec: &str) {
        self.queue.remove_spec(spec);
        for entry in self.retry.by_spec.remove(spec).unwrap_or_default() {
            self.retry.due.remove(&entry);
        }
        self.unroutable.retain(|key, _| &*key.spec != spec);
    }

    /// Takes a freshly read taskset as the truth for its spec and rebuilds that spec's
    /// part of the queue, retry timers and "no pool" list.
    fn refresh_spec(&mut self, spec: &str, taskset: Arc<Taskset>) {
        let state = self.spec_state(spec);
        state.taskset = Some(taskset);
        self.requeue_spec(spec);
    }

    fn requeue_spec(&mut self, spec: &str) {
        self.unqueue_spec(spec);
        let Some(state) = self.specs.get(spec) else {
            return;
        };
        let Some(taskset) = state.taskset.clone() else {
            return;
        };
        if state.error.is_some() {
            return;
        }
        let suspended = state.suspended_until.is_some();
        let now = timefmt::now();
        let mut promotable = false;
        let mut lost = Vec::new();
        for task in &taskset.tasks {
            let key = TaskKey::new(spec, &task.id);
            match task.state {
                TaskState::Ready => {}
                TaskState::Blocked => {
                    promotable |= view::dependencies_done(&taskset, task);
                    continue;
                }
                TaskState::Running => {
                    let meta = task.dispatcher_meta();
                    if meta.owner.as_deref() == Some(&self.owner)
                        && !self.claimed.contains_key(&key)
                    {
                        lost.push(key);
                    }
                    continue;
                }
                TaskState::Done | TaskState::Failed => continue,
            }
            if self.claimed.contains_key(&key) || !view::dependencies_done(&taskset, task) {
                continue;
            }
            let pools = self.route(task.required_skill.as_deref());
            if pools.is_empty() {
                if self.unroutable_logged.insert(key.clone()) {
                    log::warn!(
                        "task {key} needs skill {:?} but no pool serves it (see [skill_mapping]); it stays queued",
                        task.required_skill.as_deref().unwrap_or("(none)")
                    );
                }
                self.unroutable.insert(key, task.required_skill.clone());
                continue;
            }
            if let Some(at) = view::next_attempt_at(task).filter(|at| *at > now) {
                self.retry.due.insert((at, key.clone()));
                self.retry
                    .by_spec
                    .entry(key.spec.clone())
                    .or_default()
                    .push((at, key));
                continue;
            }
            if !suspended {
                self.queue.insert(QueuedTask {
                    key,
                    priority: task.priority,
                    ready_at: view::ready_at(task),
                    pools,
                });
            }
        }
        let never_runnable = view::never_runnable(&taskset);
        if let Some(state) = self.specs.get_mut(spec) {
            let mut list: Vec<(String, String)> = never_runnable.into_iter().collect();
            list.sort();
            state.never_runnable = list;
        }
        if suspended {
            return;
        }
        if promotable {
            self.promote_unblocked(spec);
        }
        for key in lost {
            self.recover_claimed(&key);
        }
    }

    /// Moves retries whose time has come into the queue.
    fn release_due_retries(&mut self) {
        let now = timefmt::now();
        let mut specs = BTreeSet::new();
        while let Some((at, key)) = self.retry.due.first().cloned() {
            if at > now {
                break;
            }
            self.retry.due.pop_first();
            specs.insert(key.spec.to_string());
        }
        for spec in specs {
            self.requeue_spec(&spec);
        }
    }

    // ----- registry writes --------------------------------------------------------------

    /// Makes blocked tasks whose dependencies are all done ready (a file written by hand,
    /// or by a tool that does not unblock).
    fn promote_unblocked(&mut self, spec: &str) {
        let now = timefmt::now_string();
        let result = self.registry.update(spec, |taskset| {
            let ids = taskset.unblock_ready_dependents(&now);
            let changed = !ids.is_empty();
            (ids, changed)
        });
        match result {
            Ok((ids, taskset)) => {
                let events: Vec<Event> = ids
                    .iter()
                    .map(|id| {
                        Event::new("TaskReady", spec, Some(id)).with("reason", "dependencies done")
                    })
                    .collect();
                self.events.append(&events);
                if !ids.is_empty() {
                    self.refresh_spec(spec, Arc::new(taskset));
                }
            }
            Err(err) => self.write_failed(spec, &err.to_string()),
        }
    }

    /// A task this dispatcher's state dir claimed that no runner of ours holds: a previous
    /// dispatcher on this state dir stopped while it ran. Its runner directory decides:
    /// supervisor alive → adopt it; exit recorded → finish the task as it says; neither →
    /// the attempt is lost (it counts) and the task is retried with backoff.
    ///
    /// The caller's list of such tasks can be stale: recovering one task writes the registry,
    /// and the refresh after that write recovers the spec's other tasks itself. So the task
    /// is checked again here against the current taskset and our claims.
    fn recover_claimed(&mut self, key: &TaskKey) {
        if self.claimed.contains_key(key) {
            return;
        }
        let Some(taskset) = self.specs.get(&*key.spec).and_then(|s| s.taskset.clone()) else {
            return;
        };
        let Some(task) = taskset.task(&key.id) else {
            return;
        };
        let meta = task.dispatcher_meta();
        if task.state != TaskState::Running || meta.owner.as_deref() != Some(&self.owner) {
            return;
        }
        let runner_id = task
            .runner_id
            .clone()
            .or(meta.runner_id.clone())
            .unwrap_or_default();
        let pool = meta
            .pool
            .as_deref()
            .and_then(|name| self.pools.iter().position(|p| p.name == name));
        let mut run = Running {
            runner_id: runner_id.clone(),
            key: key.clone(),
            pool,
            adopted: true,
            attempt: meta.attempts,
            pid: None,
            title: task.title.clone(),
            started_at: meta.started_at.clone().unwrap_or_default(),
            started: Instant::now(),
            log_path: self.state.attempt_log(&key.spec, &key.id, meta.attempts),
            last_heartbeat: None,
        };
        self.claimed.insert(key.clone(), runner_id.clone());
        let dir = match crate::names::validate("runner id", &runner_id) {
            Ok(()) => Some(RunnerDir::new(self.state.runner_dir(&runner_id))),
            Err(_) => None,
        };
        let liveness = dir.as_ref().map_or(Liveness::Lost, RunnerDir::liveness);
        match liveness {
            Liveness::Alive => {
                let dir = dir.expect("alive runners have a directory");
                let info = dir.read_supervisor();
                run.pid = info.as_ref().map(|i| i.runner_pid);
                if let Ok(record) = dir.read_record() {
                    run.started_at = record.created_at;
                    run.log_path = record.log_path;
                }
                log::info!(
                    "adopting runner {runner_id} of {key} (attempt {}), still running",
                    run.attempt
                );
                self.events
                    .append(&[Event::new("RunnerAdopted", &key.spec, Some(&key.id))
                        .with("runner_id", runner_id.as_str())
                        .with("attempt", run.attempt)
                        .with("pid", json!(run.pid))]);
                let pidfd = info.and_then(|i| PidFd::open(i.supervisor_pid).ok());
                // The pid was read from a file: only trust the descriptor if the lock still
                // says the supervisor lives (a live process's pid cannot have been reused).
                let pidfd = pidfd.filter(|_| matches!(dir.liveness(), Liveness::Alive));
                self.send_watchdog(WatchCommand::Watch(Box::new(Watch {
                    runner_id: runner_id.clone(),
                    heartbeat_path: dir.path().join("heartbeat"),
                    dir,
                    supervisor: None,
                    pidfd,
                    log_path: run.log_path.clone(),
                })));
                if let Some(pool) = pool {
                    self.pools[pool].running += 1;
                }
                self.running.insert(runner_id, run);
            }
            Liveness::Exited(exit) => {
                log::info!(
                    "runner {runner_id} of {key} ended while no dispatcher ran; recording it"
                );
                self.record_finish(Finish { run, exit });
            }
            Liveness::Lost => {
                log::warn!(
                    "task {key} was left running by a previous dispatcher and its runner {runner_id} is gone; the attempt counts as lost"
                );
                self.events
                    .append(&[Event::new("RunnerLost", &key.spec, Some(&key.id))
                        .with("runner_id", runner_id.as_str())
                        .with("attempt", run.attempt)]);
                let exit = Exit::without_status(
                    &runner_id,
                    "runner lost: its dispatcher stopped and no exit status was recorded".into(),
                );
                self.record_finish(Finish { run, exit });
            }
        }
    }

    fn write_failed(&mut self, spec: &str, error: &str) {
        log::error!("{error}; retrying in {}s", WRITE_RETRY.as_secs());
        let state = self.spec_state(spec);
        state.suspended_until = Some(Instant::now() + WRITE_RETRY);
        self.queue.remove_spec(spec);
    }

    fn retry_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut self.pending);
        for finish in pending {
            let suspended = self
                .specs
                .get(&*finish.run.key.spec)
                .and_then(|s| s.suspended_until)
                .is_some();
            if suspended {
                self.pending.push(finish);
                continue;
            }
            self.record_finish(finish);
        }
    }

    /// Writes the end of an attempt. On a failed write the finish is kept in `pending`
    /// and retried; the task stays claimed (and counted) until it is written.
    fn record_finish(&mut self, finish: Finish) {
        let key = finish.run.key.clone();
        let exit = &finish.exit;
        let retry = &self.config.retry;
        let now = timefmt::now();
        let now_text = timefmt::format(now);
        let result = self.registry.update(&key.spec, |taskset| {
            let Some(task) = taskset.task_mut(&key.id) else {
                return (Verdict::Gone, false);
            };
            if task.state != TaskState::Running
                || task.runner_id.as_deref() != Some(&finish.run.runner_id)
            {
                return (Verdict::Gone, false);
            }
            let mut meta = task.dispatcher_meta();
            meta.last_exit_code = exit.exit_code;
            meta.pid = None;
            task.updated_at = Some(now_text.clone());
            let verdict = if exit.succeeded() {
                task.state = TaskState::Done;
                meta.last_error = None;
                meta.next_attempt_at = None;
                Verdict::Done(Vec::new())
            } else if exit.stopped == Some(StopReason::Interrupted) {
                // Interrupted by our own shutdown: the attempt does not count.
                meta.attempts = meta.attempts.saturating_sub(1);
                meta.ready_at = Some(now_text.clone());
                task.state = TaskState::Ready;
                Verdict::Interrupted
            } else {
                meta.last_error = Some(exit.describe());
                if meta.attempts >= retry.max_attempts {
                    task.state = TaskState::Failed;
                    meta.next_attempt_at = None;
                    Verdict::Failed(meta.attempts)
                } else {
                    let delay = retry.backoff(meta.attempts);
                    let at =
                        now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
                    let at_text = timefmt::format(at);
                    meta.next_attempt_at = Some(at_text.clone());
                    meta.ready_at = Some(at_text.clone());
                    task.state = TaskState::Ready;
                    Verdict::Retry(at_text, delay)
                }
            };
            task.set_dispatcher_meta(&meta);
            let verdict = match verdict {
                Verdict::Done(_) => Verdict::Done(taskset.unblock_ready_dependents(&now_text)),
                other => other,
            };
            (verdict, true)
        });
        let (verdict, taskset) = match result {
            Ok(done) => done,
            Err(err) => {
                self.write_failed(&key.spec, &format!("cannot record the end of {key}: {err}"));
                self.pending.push(finish);
                return;
            }
        };
        self.claimed.remove(&key);
        self.events.append(&finish_events(&finish, &verdict));
        // The registry now says how the attempt ended; the runner's files have served.
        if crate::names::validate("runner id", &finish.run.runner_id).is_ok() {
            let _ = std::fs::remove_dir_all(self.state.runner_dir(&finish.run.runner_id));
        }
        log_verdict(&finish, &verdict);
        if !matches!(verdict, Verdict::Gone) {
            self.refresh_spec(&key.spec, Arc::new(taskset));
        }
    }

    // ----- scheduling -----------------------------------------------------------------

    fn schedule(&mut self) {
        if self.drain.is_some() || !self.scanned || self.queue.is_empty() {
            return;
        }
        let global_free = self
            .config
            .dispatcher
            .max_global_concurrency
            .saturating_sub(self.running.len() + self.pending.len());
        if global_free == 0 {
            return;
        }
        let mut loads: Vec<PoolLoad> = self
            .pools
            .iter()
            .map(|p| {
                let pool = &self.config.agent_pools[&p.name];
                PoolLoad {
                    running: p.running,
                    max: pool.max_concurrency,
                    enabled: pool.enabled,
                }
            })
            .collect();
        let plan = scheduler::plan(&self.queue, &mut loads, global_free);
        let mut by_spec: BTreeMap<Arc<str>, Vec<(TaskKey, usize)>> = BTreeMap::new();
        for (key, pool) in plan {
            by_spec
                .entry(key.spec.clone())
                .or_default()
                .push((key, pool));
        }
        for (spec, picks) in by_spec {
            self.claim_and_launch(&spec, picks);
        }
    }

    fn next_runner_id(&mut self, pool: usize) -> String {
        self.runner_seq += 1;
        format!(
            "runner-{}-{}-{}",
            self.pools[pool].name, self.run_prefix, self.runner_seq
        )
    }

    /// Claims one spec's picks in a single write, then starts their runners.
    fn claim_and_launch(&mut self, spec: &str, picks: Vec<(TaskKey, usize)>) {
        let picks: Vec<(TaskKey, usize, String)> = picks
            .into_iter()
            .map(|(key, pool)| {
                let runner_id = self.next_runner_id(pool);
                (key, pool, runner_id)
            })
            .collect();
        let now = timefmt::now_string();
        let owner = self.owner.clone();
        let pool_names: Vec<String> = self.pools.iter().map(|p| p.name.clone()).collect();
        let result = self.registry.update(spec, |taskset| {
            let mut claimed = Vec::new();
            for (key, pool, runner_id) in &picks {
                let runnable = taskset.task(&key.id).is_some_and(|task| {
                    task.state == TaskState::Ready && view::dependencies_done(taskset, task)
                });
                if !runnable {
                    continue;
                }
                let task = taskset.task_mut(&key.id).expect("checked above");
                let mut meta = task.dispatcher_meta();
                meta.attempts += 1;
                meta.pool = Some(pool_names[*pool].clone());
                meta.runner_id = Some(runner_id.clone());
                meta.owner = Some(owner.clone());
                meta.started_at = Some(now.clone());
                meta.next_attempt_at = None;
                task.set_dispatcher_meta(&meta);
                task.state = TaskState::Running;
                task.runner_id = Some(runner_id.clone());
                task.updated_at = Some(now.clone());
                claimed.push((key.clone(), *pool, runner_id.clone(), meta.attempts));
            }
            let changed = !claimed.is_empty();
            (claimed, changed)
        });
        let (claimed, taskset) = match result {
            Ok(done) => done,
            Err(err) => {
                self.write_failed(spec, &format!("cannot claim tasks of {spec}: {err}"));
                return;
            }
        };
        if claimed.len() < picks.len() {
            log::debug!(
                "{} of {} picks in {spec} changed state before the claim",
                picks.len() - claimed.len(),
                picks.len()
            );
        }
        for (key, _, runner_id, _) in &claimed {
            self.claimed.insert(key.clone(), runner_id.clone());
        }
        let taskset = Arc::new(taskset);
        self.refresh_spec(spec, taskset.clone());
        let events: Vec<Event> = claimed
            .iter()
            .map(|(key, pool, runner_id, attempt)| {
                Event::new("TaskAssigned", spec, Some(&key.id))
                    .with("old_state", "ready")
                    .with("new_state", "running")
                    .with("runner_id", runner_id.as_str())
                    .with("pool", self.pools[*pool].name.as_str())
                    .with("attempt", *attempt)
                    .with("assigned_slot", serde_json::Value::Null)
            })
            .collect();
        self.events.append(&events);
        for (key, pool, runner_id, attempt) in claimed {
            let task = taskset.task(&key.id).expect("claimed task exists");
            self.launch(&key, task, pool, runner_id, attempt);
        }
    }

    fn send_watchdog(&self, command: WatchCommand) {
        if let Some(watchdog) = &self.watchdog {
            watchdog.send(command);
        }
    }

    fn launch(
        &mut self,
        key: &TaskKey,
        task: &crate::registry::Task,
        pool: usize,
        runner_id: String,
        attempt: u32,
    ) {
        let pool_name = self.pools[pool].name.clone();
        let pool_config = &self.config.agent_pools[&pool_name];
        let workdir = self.state.scratch_dir(&key.spec, &key.id);
        let log_path = self.state.attempt_log(&key.spec, &key.id, attempt);
        let runner_dir = RunnerDir::new(self.state.runner_dir(&runner_id));
        let request = LaunchRequest {
            facts: RunnerFacts {
                runner_id: &runner_id,
                pool_name: &pool_name,
                pool: pool_config,
                spec: &key.spec,
                task,
                attempt,
                workdir: &workdir,
                repo_url: None,
            },
            log_path: &log_path,
            runner_dir: &runner_dir,
            owner: &self.owner,
            heartbeat_timeout: self.heartbeat_timeout,
            stop_grace: self.config.dispatcher.stop_grace_period,
            max_log_bytes: self.config.dispatcher.max_log_bytes,
        };
        let started = launcher::launch(&request);
        let run = Running {
            key: key.clone(),
            runner_id: runner_id.clone(),
            pool: Some(pool),
            adopted: false,
            attempt,
            pid: None,
            title: task.title.clone(),
            started_at: timefmt::now_string(),
            started: Instant::now(),
            log_path: log_path.clone(),
            last_heartbeat: None,
        };
        match started {
            Ok(launched) => {
                let supervisor_pid = launched.supervisor.id();
                log::info!(
                    "started {key} attempt {attempt} on pool {pool_name} (runner {runner_id}, supervisor pid {supervisor_pid})"
                );
                self.events
                    .append(&[Event::new("RunnerStarted", &key.spec, Some(&key.id))
                        .with("runner_id", runner_id.as_str())
                        .with("pool", pool_name.as_str())
                        .with("attempt", attempt)
                        .with("supervisor_pid", supervisor_pid)
                        .with("log_file", log_path.display().to_string())]);
                self.send_watchdog(WatchCommand::Watch(Box::new(Watch {
                    runner_id: runner_id.clone(),
                    dir: launched.dir,
                    supervisor: Some(launched.supervisor),
                    pidfd: Some(launched.pidfd),
                    log_path: launched.log_path,
                    heartbeat_path: launched.heartbeat_path,
                })));
                self.pools[pool].running += 1;
                self.running.insert(runner_id, run);
            }
            Err(err) => {
                log::error!("task {key}: {err}");
                let exit = Exit::without_status(&runner_id, err.to_string());
                self.record_finish(Finish { run, exit });
            }
        }
    }

    // ----- ending -----------------------------------------------------------------------

    fn finished(&mut self) -> Option<RunOutcome> {
        if let Some(drain) = &self.drain {
            if !self.running.is_empty() {
                return None;
            }
            if !self.pending.is_empty() {
                if !drain.stopping || Instant::now() < drain.deadline + WRITE_RETRY * 5 {
                    return None;
                }
                for finish in &self.pending {
                    log::error!(
                        "task {} stays running in the registry: its end could not be written",
                        finish.run.key
                    );
                }
            }
            log::info!("drained: no runner left");
            return Some(RunOutcome::Drained);
        }
        if !self.until_idle || !self.scanned {
            return None;
        }
        let busy = !self.running.is_empty()
            || !self.pending.is_empty()
            || !self.claimed.is_empty()
            || !self.retry.due.is_empty()
            || self.specs.values().any(|s| s.suspended_until.is_some())
            || self.queue_has_servable_task()
            || self.running_elsewhere();
        if busy {
            return None;
        }
        let mut outcome = RunOutcome::AllDone;
        for (spec, state) in &self.specs {
            if state.error.is_some() {
                return Some(RunOutcome::NeverRunnable);
            }
            let Some(taskset) = &state.taskset else {
                continue;
            };
            for task in &taskset.tasks {
                match task.state {
                    TaskState::Done => {}
                    TaskState::Failed => outcome = RunOutcome::SomeFailed,
                    _ => {
                        log::info!(
                            "idle, but {spec}/{} ({}) can never run",
                            task.id,
                            task.state
                        );
                        return Some(RunOutcome::NeverRunnable);
                    }
                }
            }
        }
        Some(outcome)
    }

    /// Whether the queue holds a task that some enabled pool could take.
    fn queue_has_servable_task(&self) -> bool {
        self.queue.iter().any(|(_, pools)| {
            pools
                .iter()
                .any(|&p| self.config.agent_pools[&self.pools[p].name].enabled)
        })
    }

    /// Tasks RUNNING under another dispatcher: their end will make more work runnable.
    fn running_elsewhere(&self) -> bool {
        self.specs
            .values()
            .filter_map(|s| s.taskset.as_ref())
            .any(|ts| {
                ts.tasks.iter().any(|t| {
                    t.state == TaskState::Running
                        && t.dispatcher_meta().owner.as_deref() != Some(&self.owner)
                })
            })
    }

    // ----- status -----------------------------------------------------------------------

    fn publish(&mut self, last: bool) {
        let due = match self.snapshot_written {
            None => true,
            Some(at) => {
                let age = at.elapsed();
                (self.snapshot_dirty && age >= SNAPSHOT_INTERVAL) || age >= SNAPSHOT_KEEPALIVE
            }
        };
        if !due && !last {
            return;
        }
        let mut report = self.report();
        if last {
            report.dispatcher.running = false;
        }
        if let Err(err) = report.write_snapshot(&self.state) {
            log::warn!(
                "cannot write status snapshot {}: {err}",
                self.state.snapshot_path().display()
            );
        }
        self.snapshot_written = Some(Instant::now());
        self.snapshot_dirty = false;
    }

    fn report(&self) -> StatusReport {
        let mut totals = status::empty_counts();
        let mut tasksets = Vec::with_capacity(self.specs.len());
        let mut blocked_forever = Vec::new();
        for (spec, state) in &self.specs {
            let mut counts = status::empty_counts();
            if let Some(taskset) = &state.taskset {
                for task in &taskset.tasks {
                    *counts.entry(task.state.as_str().to_string()).or_default() += 1;
                }
            }
            for (state_name, n) in &counts {
                *totals.entry(state_name.clone()).or_default() += n;
            }
            blocked_forever.extend(state.never_runnable.iter().map(|(id, reason)| StuckStatus {
                spec: spec.clone(),
                task_id: id.clone(),
                reason: reason.clone(),
            }));
            tasksets.push(TasksetStatus {
                spec: spec.clone(),
                version: state.taskset.as_ref().map(|t| t.version),
                tasks: state.taskset.as_ref().map_or(0, |t| t.tasks.len()),
                counts,
                error: state.error.clone(),
            });
        }
        let mut running: Vec<RunnerStatus> = self
            .running
            .values()
            .map(|r| RunnerStatus {
                runner_id: Some(r.runner_id.clone()),
                spec: r.key.spec.to_string(),
                task_id: r.key.id.to_string(),
                title: r.title.clone(),
                pool: r.pool.map(|p| self.pools[p].name.clone()),
                adopted: r.adopted,
                pid: r.pid,
                attempt: r.attempt,
                started_at: Some(r.started_at.clone()),
                runtime_seconds: Some(r.started.elapsed().as_secs_f64()),
                last_heartbeat: r.last_heartbeat.clone(),
                log_file: Some(r.log_path.display().to_string()),
            })
            .collect();
        running.sort_by(|a, b| (&a.spec, &a.task_id).cmp(&(&b.spec, &b.task_id)));
        let retrying = self
            .retry
            .due
            .iter()
            .map(|(at, key)| {
                let meta = self
                    .specs
                    .get(&*key.spec)
                    .and_then(|s| s.taskset.as_ref())
                    .and_then(|ts| ts.task(&key.id))
                    .map(crate::registry::Task::dispatcher_meta)
                    .unwrap_or_default();
                RetryStatus {
                    spec: key.spec.to_string(),
                    task_id: key.id.to_string(),
                    attempts: meta.attempts,
                    next_attempt_at: timefmt::format(*at),
                    last_error: meta.last_error,
                }
            })
            .collect();
        StatusReport {
            schema_version: status::SCHEMA_VERSION,
            dispatcher: DispatcherInfo {
                running: true,
                pid: Some(std::process::id()),
                started_at: Some(self.started_at.clone()),
                updated_at: Some(timefmt::now_string()),
                draining: self.drain.is_some(),
                policy: self
                    .config
                    .dispatcher
                    .scheduling_policy
                    .as_str()
                    .to_string(),
                state_dir: self.state.root().display().to_string(),
                registry_dir: self.registry.root().display().to_string(),
            },
            queue_length: self.queue.len(),
            totals,
            pools: self
                .pools
                .iter()
                .map(|p| {
                    let pool = &self.config.agent_pools[&p.name];
                    PoolStatus {
                        name: p.name.clone(),
                        kind: pool.kind.as_str().to_string(),
                        running: p.running,
                        max_concurrency: pool.max_concurrency,
                        enabled: pool.enabled,
                    }
                })
                .collect(),
            running,
            retrying,
            unroutable: self
                .unroutable
                .iter()
                .map(|(key, skill)| UnroutableStatus {
                    spec: key.spec.to_string(),
                    task_id: key.id.to_string(),
                    required_skill: skill.clone(),
                })
                .collect(),
            blocked_forever,
            tasksets,
        }
    }
}

/// What writing an attempt's end did to its task.
enum Verdict {
    /// Done; the ids of dependents that became ready.
    Done(Vec<String>),
    /// Back to ready, with the retry time and delay.
    Retry(String, Duration),
    /// Failed for good after this many attempts.
    Failed(u32),
    /// Back to ready without counting the attempt.
    Interrupted,
    /// The task changed under us (removed, reset by hand): nothing written.
    Gone,
}

fn finish_events(finish: &Finish, verdict: &Verdict) -> Vec<Event> {
    let run = &finish.run;
    let exit = &finish.exit;
    let (spec, id) = (&*run.key.spec, Some(&*run.key.id));
    let mut events = Vec::new();
    if exit.error.is_none() {
        events.push(
            Event::new("RunnerFinished", spec, id)
                .with("runner_id", run.runner_id.as_str())
                .with("attempt", run.attempt)
                .with("outcome", exit.outcome())
                .with("exit_code", json!(exit.exit_code))
                .with("signal", json!(exit.signal))
                .with("duration_seconds", exit.duration_seconds),
        );
    }
    if let Some(reason @ (StopReason::TimedOut | StopReason::HeartbeatLost)) = exit.stopped {
        events.push(
            Event::new("RunnerTimedOut", spec, id)
                .with("runner_id", run.runner_id.as_str())
                .with("attempt", run.attempt)
                .with("reason", reason.as_str()),
        );
    }
    let base = |name: &str| {
        Event::new(name, spec, id)
            .with("runner_id", run.runner_id.as_str())
            .with("attempt", run.attempt)
    };
    match verdict {
        Verdict::Done(unblocked) => {
            events.push(
                base("TaskCompleted")
                    .with("old_state", "running")
                    .with("new_state", "done")
                    .with("duration_seconds", exit.duration_seconds),
            );
            for dependent in unblocked {
                events.push(
                    Event::new("TaskReady", spec, Some(dependent))
                        .with("reason", "dependencies done"),
                );
            }
        }
        Verdict::Retry(at, delay) => events.push(
            base("TaskRetryScheduled")
                .with("old_state", "running")
                .with("new_state", "ready")
                .with("next_attempt_at", at.as_str())
                .with("delay_seconds", delay.as_secs_f64())
                .with("error", exit.describe())
                .with("exit_code", json!(exit.exit_code)),
        ),
        Verdict::Failed(attempts) => events.push(
            base("TaskFailed")
                .with("old_state", "running")
                .with("new_state", "failed")
                .with("attempts", *attempts)
                .with("error", exit.describe())
                .with("exit_code", json!(exit.exit_code)),
        ),
        Verdict::Interrupted => events.push(
            base("TaskInterrupted")
                .with("old_state", "running")
                .with("new_state", "ready")
                .with("reason", "dispatcher shutdown"),
        ),
        Verdict::Gone => {}
    }
    events
}

fn log_verdict(finish: &Finish, verdict: &Verdict) {
    let key = &finish.run.key;
    let attempt = finish.run.attempt;
    match verdict {
        Verdict::Done(unblocked) if unblocked.is_empty() => {
            log::info!("{key} done (attempt {attempt})");
        }
        Verdict::Done(unblocked) => {
            log::info!(
                "{key} done (attempt {attempt}); now ready: {}",
                unblocked.join(", ")
            );
        }
        Verdict::Retry(at, _) => log::warn!(
            "{key} attempt {attempt} failed ({}); retry at {at}",
            finish.exit.describe()
        ),
        Verdict::Failed(attempts) => log::error!(
            "{key} failed after {attempts} attempts ({})",
            finish.exit.describe()
        ),
        Verdict::Interrupted => log::warn!("{key} interrupted; back to ready"),
        Verdict::Gone => log::warn!(
            "{key} changed in the registry while runner {} ran; its end was not recorded",
            finish.run.runner_id
        ),
    }
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its whole length; gethostname NUL-terminates within it
    // or truncates, and we stop at the first NUL either way.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

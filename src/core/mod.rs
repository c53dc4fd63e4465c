//! The core thread: the one owner of all scheduling state (the queue, pool loads, the
//! running table, retry timers, the drain). Other threads only send it messages.
//!
//! One turn of the loop: wait for a message (control first, then runner events, then registry
//! changes) or a timer; take every other message already waiting; then *commit*: one locked
//! read-modify-write per spec that records the attempts which ended and claims the tasks the
//! planner picked, and only after that write, start the claimed tasks' runners. Batching
//! keeps the registry cost per turn, not per task.
//!
//! The claim protocol: a task goes READY→RUNNING in the registry (re-read under the spec's
//! lock, state re-checked) before its runner starts; a runner's end is written checking that
//! the task is still RUNNING under that runner's id. A write that fails is kept and retried;
//! the loop never returns early on an error.
//!
//! Submodules: `placement` keeps the queue, retry timers and "no pool" list in step with the
//! registry; `commit` does the batched writes and launches; `recovery` adopts or finishes
//! runners left by an earlier dispatcher; `report` builds the status report; `footprints`
//! keeps tasks that touch the same paths apart.

mod breakers;
mod budgets;
mod commit;
mod deadlocks;
mod footprints;
mod placement;
mod recovery;
mod reload;
mod report;
mod slots;
mod stalls;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{select_biased, Receiver, Sender};

use crate::config::Config;
use crate::engine::EngineHub;
use crate::launch_pool::LaunchPool;
use crate::monitor::{Monitor, RegistryEvent};
use crate::registry::{Event, EventLog, Registry, TaskState, Taskset};
use crate::scheduler::{self, Resources, TaskKey};
use crate::statedir::{InstanceLock, StateDir};
use crate::status::StatusReport;
use crate::supervisor::{Exit, StopReason};
use crate::timefmt;
use crate::watchdog::Usage;
use crate::watchdog::{RunnerEvent, WatchCommand, Watchdog};

use crate::slot_worker::SlotWorkers;
use crate::slots::{Allocation, SlotManager};
use commit::Pick;
use placement::RetryWait;

/// How often the status snapshot is refreshed while something changes.
const SNAPSHOT_INTERVAL: Duration = Duration::from_secs(1);
/// How often it is rewritten when nothing changes, so readers can tell we are alive.
const SNAPSHOT_KEEPALIVE: Duration = Duration::from_secs(5);
/// How long a spec whose registry write failed is left alone before trying again.
const WRITE_RETRY: Duration = Duration::from_secs(2);
/// How often finished runners' directories are removed while runners keep running.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);
/// Messages taken per turn after the first, so one flood cannot starve the commit.
const BATCH: usize = 512;
/// At most this much kept task text (see [`crate::registry::RenderedTasks`]) over all
/// tasksets: enough for the busy ones, without doubling the memory of a big registry.
const RENDERED_BUDGET: usize = 8 << 20;

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
    /// SIGHUP: a new configuration, already validated.
    Reload(Box<Config>),
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
    /// For the launcher threads, which report starts on the same channel as the watchdog.
    pub runner_events_tx: Sender<RunnerEvent>,
}

struct PoolRuntime {
    name: String,
    /// Places taken: running runners plus picks on their way to starting.
    running: usize,
    /// Sum of the requests of those places.
    cpu_used: f64,
    memory_used_mb: u64,
    /// At its CPU or memory quota while it had room for more runners (logged once).
    quota_blocked: bool,
    /// Switched off with `dispatcher pool disable` (the state dir's `pools.json`).
    switched_off: bool,
    /// An engine pool whose engine has not answered (yet): why. It takes no tasks.
    engine_error: Option<String>,
    /// Whether its engine has been asked once (always true for a local pool): until then
    /// `--until-idle` cannot tell whether its tasks will run.
    engine_checked: bool,
    /// Open after a rate-limit or expired-credentials failure: no new tasks until it closes.
    breaker: Option<breakers::Breaker>,
    /// Set while its budget is spent: why. It takes no task until the budget is whole again.
    budget_spent: Option<String>,
}

impl PoolRuntime {
    /// A pool with nothing running in it. An engine pool waits for its engine's first
    /// answer before it takes tasks.
    fn idle(name: &str, config: &crate::config::PoolConfig) -> PoolRuntime {
        PoolRuntime {
            name: name.to_string(),
            running: 0,
            cpu_used: 0.0,
            memory_used_mb: 0,
            quota_blocked: false,
            switched_off: false,
            engine_error: config
                .kind
                .is_engine()
                .then(|| "its engine has not answered yet".to_string()),
            engine_checked: !config.kind.is_engine(),
            breaker: None,
            budget_spent: None,
        }
    }

    /// Whether it takes new tasks: enabled in the config, not switched off, its engine
    /// (if any) answering.
    fn takes_tasks(&self, config: &Config) -> bool {
        config.agent_pools[&self.name].enabled
            && !self.switched_off
            && self.engine_error.is_none()
            && self.breaker.is_none()
            && self.budget_spent.is_none()
    }

    /// Whether it will take tasks by itself before long: once its engine gives its first
    /// answer, or once its open breaker closes (at a known time).
    fn takes_tasks_later(&self, config: &Config) -> bool {
        let waiting =
            !self.engine_checked || (self.breaker.is_some() && self.engine_error.is_none());
        config.agent_pools[&self.name].enabled && !self.switched_off && waiting
    }
}

struct SpecState {
    /// The last readable version (kept while the file is broken so running tasks finish).
    taskset: Option<Arc<Taskset>>,
    error: Option<String>,
    /// Not scheduled until then, after a failed write.
    suspended_until: Option<Instant>,
    /// Tasks that can never run, with the reason; `None` until computed after a change.
    never_runnable: Option<Vec<(String, String)>>,
    /// The fingerprint of the file `taskset` was read from or written to, if known: a write
    /// that finds the file unchanged under the lock need not read it again.
    fingerprint: Option<crate::registry::Fingerprint>,
    /// Each task's text as our last write rendered it, reused for the tasks a write leaves.
    rendered: crate::registry::RenderedTasks,
    /// When it was last written ([`Core::writes`] then): the texts of the tasksets written
    /// longest ago go first when they exceed [`RENDERED_BUDGET`].
    written_seq: u64,
}

/// The workspace slot a task holds.
#[derive(Clone, Debug)]
struct SlotHold {
    repo: String,
    slot_id: String,
}

/// A runner of ours (started or adopted) that has not ended yet.
struct Running {
    key: TaskKey,
    runner_id: String,
    slot: Option<SlotHold>,
    /// What it counts against its pool's quotas.
    resources: Resources,
    /// Measured use of its process group (`None` until first measured).
    usage: Option<Usage>,
    /// When its task became ready (for the wait-time histogram).
    ready_at: chrono::NaiveDateTime,
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
    /// The engine's id of its job, for an engine pool's runner.
    engine_id: Option<String>,
    /// What the runner reported spending so far (its heartbeat file's last JSON line).
    spend: Option<crate::runner_report::Spend>,
    /// Why it needs a person's attention (a budget's soft cap crossed), once flagged.
    needs_attention: Option<String>,
    /// Why the dispatcher stopped it (budget, stall), recorded with its end.
    stop_detail: Option<String>,
    /// Its progress, for stall detection.
    progress: stalls::Progress,
    /// The paths its task declared it touches: queued tasks that overlap them wait.
    footprint: Option<Arc<scheduler::Footprint>>,
}

/// An attempt that ended and still has to be written to the registry.
struct Finish {
    run: Running,
    exit: Exit,
    /// What the runner's result file said, if it wrote one.
    result: Option<crate::runner_report::RunnerResult>,
}

struct Drain {
    deadline: Instant,
    stopping: bool,
}

pub struct Core {
    config: Arc<Config>,
    registry: Registry,
    events: EventLog,
    state: StateDir,
    until_idle: bool,
    /// `host:state_dir`, written into each claim so a later dispatcher can recognise it.
    owner: String,
    started_at: String,
    run_prefix: String,
    runner_seq: u64,
    heartbeat_timeout: Option<Duration>,
    watchdog: Option<Watchdog>,
    launcher: Option<LaunchPool>,
    /// The watcher threads of engine pools (slurm, docker, kubernetes).
    engines: Option<EngineHub>,
    /// Recorded spend per spec, counted again only when its taskset changes.
    spend_cache: HashMap<String, budgets::SpecSpend>,
    /// Ready tasks set aside because a budget refuses them, with the reason.
    budget_waiting: BTreeMap<TaskKey, String>,
    /// Fingerprints runners' working directories for stall detection.
    probe: Option<crate::progress_probe::ProgressProbe>,
    monitor: Option<Monitor>,
    /// Notes of this turn that describe no change of the registry (runner starts, waits):
    /// each goes out with the next append of its taskset's events in this turn's commit, or
    /// at the turn's end.
    outbox: Vec<Event>,
    slots: SlotManager,
    slot_workers: Option<SlotWorkers>,
    /// Free slots per managed repository; filled once the slot threads have started.
    free_slots: HashMap<Arc<str>, usize>,
    slots_ready: bool,
    /// Whether a repository named by a task has a slot pool (configured or on disk).
    repo_managed: HashMap<String, bool>,
    /// Picks waiting for their slot, and picks with a slot waiting for their claim.
    allocating: HashMap<TaskKey, Pick>,
    allocated: Vec<(Pick, Allocation)>,
    /// Slot releases sent (or held back until `slots_ready`) and not answered yet.
    releasing: usize,
    early_releases: Vec<crate::slot_worker::SlotJob>,
    /// Releases in flight per task, and allocations held back until their task's release is
    /// done: the next attempt must find the checkpoint its predecessor's release makes.
    releases_of: HashMap<TaskKey, usize>,
    allocations_after_release: Vec<crate::slot_worker::SlotJob>,
    /// Patch artifacts of released slots, to add to their tasks in the next write.
    pending_artifacts: Vec<(TaskKey, serde_json::Value)>,
    /// The last slot error per repository with broken slots, for `status`.
    slot_errors: BTreeMap<String, String>,
    /// Slot jobs sent so far: a recount is only applied if none went out while it ran.
    slot_jobs_sent: u64,
    /// When the slot files were last counted, and the `slot_jobs_sent` of a recount on its way.
    last_slot_recount: Instant,
    recount_in_flight: Option<u64>,
    /// The last deadlock check: when, what it found, what was already announced.
    last_deadlock_check: Option<Instant>,
    deadlocks: Vec<crate::deadlock::Finding>,
    announced: crate::deadlock::Announced,
    /// `[deadlock] action = "fail"` fired: the drain ends with exit 4.
    deadlock_failed: bool,
    counters: crate::metrics::Counters,
    notifier: Option<crate::notify::Notifier>,
    /// Runners asked to stop for `dispatcher cancel`.
    cancelling: HashSet<String>,
    /// When `pools.json` was last read (its mtime), and whether it ever was.
    overrides_stamp: Option<SystemTime>,
    overrides_read: bool,
    last_overrides_check: Instant,
    /// Runner directories of recorded attempts, removed in batches (see `sweep`).
    finished_dirs: Vec<PathBuf>,
    /// Taskset writes so far (orders [`SpecState::written_seq`]).
    writes: u64,
    last_sweep: Instant,

    pools: Vec<PoolRuntime>,
    /// Pools serving a skill, and whether they are mapped to it (not reached by `default`).
    routes: HashMap<Option<String>, (Arc<[usize]>, bool)>,
    specs: BTreeMap<String, SpecState>,
    queue: scheduler::Queue,
    retry: RetryWait,
    unroutable: BTreeMap<TaskKey, Option<String>>,
    unroutable_logged: BTreeSet<TaskKey>,
    /// Tasks whose `metadata.touches` is malformed, with why (logged once, in `status`).
    footprint_errors: BTreeMap<TaskKey, String>,
    /// Tasks waiting for an overlapping footprint, with the task they wait for: logged once
    /// per wait, forgotten when they leave the queue.
    footprint_logged: HashMap<TaskKey, TaskKey>,
    /// With `learn_footprints`: tasks whose last patch is saved but not yet recorded in the
    /// registry. They wait, so that their next attempt is placed with what it taught.
    awaiting_patch: HashSet<TaskKey>,
    /// Tasks this dispatcher has claimed and not yet written back, with their runner id.
    claimed: HashMap<TaskKey, String>,
    running: HashMap<String, Running>,
    /// Ended attempts waiting for the next commit (or for a failed write to be retried).
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
            crate::sys::hostname(),
            std::fs::canonicalize(state.root())
                .unwrap_or_else(|_| state.root().to_path_buf())
                .display()
        );
        let epoch_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let pools: Vec<PoolRuntime> = config
            .agent_pools
            .iter()
            .map(|(name, pool)| PoolRuntime::idle(name, pool))
            .collect();
        let heartbeat = config.dispatcher.heartbeat_timeout;
        Core {
            heartbeat_timeout: (!heartbeat.is_zero()).then_some(heartbeat),
            watchdog: None,
            launcher: None,
            engines: None,
            spend_cache: HashMap::new(),
            budget_waiting: BTreeMap::new(),
            probe: None,
            monitor: None,
            outbox: Vec::new(),
            slots: SlotManager::new(&config.repo_pool),
            slot_workers: None,
            free_slots: HashMap::new(),
            slots_ready: false,
            repo_managed: HashMap::new(),
            allocating: HashMap::new(),
            allocated: Vec::new(),
            releasing: 0,
            early_releases: Vec::new(),
            releases_of: HashMap::new(),
            allocations_after_release: Vec::new(),
            pending_artifacts: Vec::new(),
            slot_errors: BTreeMap::new(),
            slot_jobs_sent: 0,
            last_slot_recount: Instant::now(),
            recount_in_flight: None,
            cancelling: HashSet::new(),
            last_deadlock_check: None,
            deadlocks: Vec::new(),
            announced: crate::deadlock::Announced::default(),
            deadlock_failed: false,
            counters: crate::metrics::Counters::default(),
            notifier: None,
            overrides_stamp: None,
            overrides_read: false,
            last_overrides_check: Instant::now(),
            finished_dirs: Vec::new(),
            writes: 0,
            last_sweep: Instant::now(),
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
            retry: RetryWait::default(),
            unroutable: BTreeMap::new(),
            unroutable_logged: BTreeSet::new(),
            footprint_errors: BTreeMap::new(),
            footprint_logged: HashMap::new(),
            awaiting_patch: HashSet::new(),
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
        self.monitor = Some(Monitor::spawn(
            self.registry.clone(),
            self.config.dispatcher.poll_interval,
            registry_tx,
        ));
        let stall_detection = self
            .config
            .agent_pools
            .values()
            .any(|p| p.agent.stall_timeout.is_some());
        if stall_detection {
            match crate::progress_probe::ProgressProbe::spawn(parts.runner_events_tx.clone()) {
                Ok(probe) => self.probe = Some(probe),
                Err(err) => log::error!("cannot start the progress probe: {err}"),
            }
        }
        let engines = EngineHub::new(parts.runner_events_tx.clone());
        for (name, pool) in &self.config.agent_pools {
            engines.ensure(name, pool);
        }
        self.engines = Some(engines.clone());
        match LaunchPool::spawn(&parts.watchdog.handle(), &engines, &parts.runner_events_tx) {
            Ok(pool) => self.launcher = Some(pool),
            Err(err) => log::error!("cannot start launcher threads: {err}"),
        }
        drop(parts.runner_events_tx);
        let (slot_tx, slot_rx) = crossbeam_channel::unbounded();
        match SlotWorkers::spawn(&self.slots, &slot_tx) {
            Ok(workers) => self.slot_workers = Some(workers),
            Err(err) => log::error!("cannot start slot threads: {err}"),
        }
        drop(slot_tx);
        if let Some(settings) = self.config.notifications.clone() {
            match crate::notify::Notifier::spawn(settings) {
                Ok(notifier) => self.notifier = Some(notifier),
                Err(err) => log::error!("cannot start the notification thread: {err}"),
            }
        }
        self.watchdog = Some(parts.watchdog);
        self.load_breakers();
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
            // Control first (shutdown must not wait behind a flood of changes), then runner
            // events (they free capacity), then registry changes.
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
                recv(slot_rx) -> msg => match msg {
                    Ok(event) => self.on_slot(event),
                    Err(_) => log::error!("slot threads gone"),
                },
                recv(registry_rx) -> msg => match msg {
                    Ok(event) => self.on_registry(event),
                    Err(_) => log::error!("registry monitor gone"),
                },
                default(timeout) => {}
            }
            // Whatever else is already waiting joins this turn's commit.
            for event in runner_rx.try_iter().take(BATCH) {
                self.on_runner(event);
            }
            for event in slot_rx.try_iter().take(BATCH) {
                self.on_slot(event);
            }
            for event in registry_rx.try_iter().take(BATCH) {
                self.on_registry(event);
            }
            self.on_timers();
            self.check_deadlocks(false);
            // The notes heard this turn (runner starts among them) join the appends of the
            // tasksets this commit writes, ahead of its events: one sync per taskset, not two.
            self.commit();
            if !self.outbox.is_empty() {
                self.events.append(&std::mem::take(&mut self.outbox));
            }
            self.publish(false);
            self.sweep(false);
            if let Some(outcome) = self.finished() {
                break outcome;
            }
            if !control_open && self.drain.is_none() && !self.until_idle {
                // Nobody can stop us any more: treat it as a stop request.
                self.start_drain(self.config.dispatcher.graceful_shutdown_timeout);
            }
        };
        self.notify_end(outcome);
        self.monitor.take();
        self.sweep(true);
        self.launcher.take();
        self.probe.take();
        if let Some(engines) = self.engines.take() {
            engines.shutdown();
        }
        self.slot_workers.take();
        // Queued notices (the run's end among them) go out before the state dir is released.
        self.notifier.take();
        self.watchdog.take();
        self.publish(true);
        drop(parts.lock);
        outcome
    }

    fn next_wakeup(&self) -> Duration {
        if !self.pending.is_empty() && self.specs.values().all(|s| s.suspended_until.is_none()) {
            return Duration::ZERO;
        }
        let now = Instant::now();
        let mut wake = now + SNAPSHOT_INTERVAL;
        for at in [self.retry.next_due(), self.next_breaker_close()]
            .into_iter()
            .flatten()
        {
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
        for state in self.specs.values() {
            if let Some(until) = state.suspended_until {
                wake = wake.min(until);
            }
        }
        // `pools.json` is read once per poll interval, however short it is.
        wake = wake.min(self.last_overrides_check + self.config.dispatcher.poll_interval);
        wake.saturating_duration_since(now)
    }

    /// Removes the runner directories of recorded attempts, in the background, when nothing
    /// runs or once a minute. Batching matters: on some filesystems (ext4 without a journal)
    /// creating files right after deleting others is slow, which would tax every launch.
    fn sweep(&mut self, now: bool) {
        let due = now
            || (self.running.is_empty() && !self.finished_dirs.is_empty())
            || self.last_sweep.elapsed() >= SWEEP_INTERVAL;
        if !due {
            return;
        }
        self.last_sweep = Instant::now();
        for dir in self.finished_dirs.drain(..) {
            match &self.launcher {
                Some(launcher) => launcher.remove_dir(dir),
                None => {
                    let _ = std::fs::remove_dir_all(dir);
                }
            }
        }
    }

    fn pool_enabled(&self, pool: usize) -> bool {
        self.pools[pool].takes_tasks(&self.config)
    }

    /// Applies `pools.json` when it changed: a pool switched off takes no new tasks (its
    /// running ones finish); switched on, it takes tasks again.
    fn read_pool_overrides(&mut self) {
        let path = self.state.pool_overrides_path();
        let stamp = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        if stamp == self.overrides_stamp && self.overrides_read {
            return;
        }
        self.overrides_stamp = stamp;
        self.overrides_read = true;
        let overrides = crate::control::PoolOverrides::read(&self.state);
        for pool in &mut self.pools {
            let off = overrides.disabled.contains(&pool.name);
            if off != pool.switched_off {
                log::info!(
                    "pool {} {}",
                    pool.name,
                    if off { "disabled" } else { "enabled" }
                );
                pool.switched_off = off;
                self.snapshot_dirty = true;
            }
        }
    }

    /// Asks the watchdog to stop the runners of tasks that `dispatcher cancel` marked.
    fn honour_cancel(&mut self, key: &TaskKey, task: &crate::registry::Task) {
        if !task.dispatcher_meta().cancel_requested {
            return;
        }
        let Some(runner_id) = self.claimed.get(key).cloned() else {
            return;
        };
        if self.running.contains_key(&runner_id) && self.cancelling.insert(runner_id.clone()) {
            log::warn!("cancelling {key}: stopping runner {runner_id}");
            self.stop_runner(runner_id, StopReason::Cancelled);
        }
    }

    /// Hands a notice to the notification thread (if configured) without ever waiting.
    fn notify(&mut self, notice: crate::notify::Notice) {
        if let Some(notifier) = &self.notifier {
            if !notifier.notify(notice) {
                self.counters.notifications_dropped += 1;
            }
        }
    }

    /// The last notices of a run: how it ended, with the totals.
    fn notify_end(&mut self, outcome: RunOutcome) {
        let totals: Vec<String> = self
            .report()
            .totals
            .iter()
            .map(|(state, n)| format!("{n} {state}"))
            .collect();
        let host = crate::sys::hostname();
        if outcome == RunOutcome::Drained {
            self.notify(
                crate::notify::Notice::new(
                    "drained",
                    format!(
                        "dispatcher on {host} drained and stopped ({})",
                        totals.join(", ")
                    ),
                )
                .with("outcome", "drained"),
            );
        }
        let how = match outcome {
            RunOutcome::AllDone => "every task is done",
            RunOutcome::SomeFailed => "some tasks failed",
            RunOutcome::NeverRunnable => "some tasks can never run",
            RunOutcome::Drained => "stopped",
        };
        self.notify(
            crate::notify::Notice::new(
                "run_finished",
                format!(
                    "dispatcher run on {host} finished: {how} ({})",
                    totals.join(", ")
                ),
            )
            .with("exit_code", outcome.exit_code()),
        );
    }

    /// Takes a place in a pool for a task with this request.
    fn take_place(&mut self, pool: usize, resources: Resources) {
        let p = &mut self.pools[pool];
        p.running += 1;
        p.cpu_used += resources.cpu;
        p.memory_used_mb += resources.memory_mb;
    }

    /// Gives a place back (the attempt ended, or never started).
    fn free_place(&mut self, pool: usize, resources: Resources) {
        let p = &mut self.pools[pool];
        p.running = p.running.saturating_sub(1);
        p.cpu_used = (p.cpu_used - resources.cpu).max(0.0);
        p.memory_used_mb = p.memory_used_mb.saturating_sub(resources.memory_mb);
    }

    fn send_watchdog(&self, command: WatchCommand) {
        if let Some(watchdog) = &self.watchdog {
            watchdog.send(command);
        }
    }

    /// Stops one runner: through its engine's watcher for an engine pool's runner, through
    /// the watchdog (and its supervisor) otherwise.
    fn stop_runner(&self, runner_id: String, reason: StopReason) {
        let engine_pool = self
            .running
            .get(&runner_id)
            .filter(|run| run.engine_id.is_some() || self.runs_on_engine(run))
            .and_then(|run| run.pool)
            .map(|pool| self.pools[pool].name.clone());
        match (engine_pool, &self.engines) {
            (Some(pool), Some(engines)) => engines.stop(&pool, runner_id, reason),
            _ => self.send_watchdog(WatchCommand::Stop { runner_id, reason }),
        }
    }

    fn runs_on_engine(&self, run: &Running) -> bool {
        run.pool
            .and_then(|p| self.config.agent_pools.get(&self.pools[p].name))
            .is_some_and(|pool| pool.kind.is_engine())
    }

    /// Stops every runner, local and engine ones.
    fn stop_all_runners(&self, reason: StopReason) {
        self.send_watchdog(WatchCommand::StopAll { reason });
        if let Some(engines) = &self.engines {
            engines.stop_all(reason);
        }
    }

    // ----- messages -------------------------------------------------------------------

    fn on_control(&mut self, msg: Control) {
        match msg {
            Control::Status(reply) => {
                self.compute_never_runnable();
                let _ = reply.send(self.report());
            }
            Control::Reload(config) => self.reload(*config),
            Control::Shutdown { force: false } | Control::Drain { .. } if self.drain.is_none() => {
                let timeout = match msg {
                    Control::Drain { timeout } => timeout,
                    _ => self.config.dispatcher.graceful_shutdown_timeout,
                };
                self.start_drain(timeout);
            }
            Control::Shutdown { .. } | Control::Drain { .. } => {
                if !self.running.is_empty() {
                    log::warn!(
                        "stopping {} runners now; their tasks go back to ready",
                        self.running.len()
                    );
                }
                self.drain = Some(Drain {
                    deadline: Instant::now(),
                    stopping: true,
                });
                self.stop_all_runners(StopReason::Interrupted);
            }
        }
        self.snapshot_dirty = true;
    }

    fn start_drain(&mut self, timeout: Duration) {
        if self.running.is_empty() {
            log::info!("draining: no runners to wait for");
        } else {
            log::warn!(
                "draining: no new tasks; waiting up to {}s for {} runners (Ctrl-C again stops them now)",
                timeout.as_secs(),
                self.running.len()
            );
        }
        self.drain = Some(Drain {
            deadline: Instant::now() + timeout,
            stopping: false,
        });
    }

    fn on_timers(&mut self) {
        self.close_due_breakers();
        self.refresh_pool_budgets();
        self.check_stalls();
        if !self.overrides_read
            || self.last_overrides_check.elapsed() >= self.config.dispatcher.poll_interval
        {
            self.last_overrides_check = Instant::now();
            self.read_pool_overrides();
            self.recheck_budget_waiting();
        }
        self.recount_slots_when_due();
        if let Some(drain) = &mut self.drain {
            if !drain.stopping && Instant::now() >= drain.deadline {
                drain.stopping = true;
                if !self.running.is_empty() {
                    log::warn!(
                        "graceful shutdown timeout reached: stopping {} runners",
                        self.running.len()
                    );
                }
                self.stop_all_runners(StopReason::Interrupted);
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
            let Some(state) = self.specs.get_mut(&spec) else {
                continue;
            };
            state.suspended_until = None;
            if state.taskset.is_none() && !self.reload_taskset(&spec) {
                continue;
            }
            self.requeue_spec(&spec);
        }
        self.release_due_retries();
    }

    fn on_runner(&mut self, event: RunnerEvent) {
        match event {
            RunnerEvent::Report { runner_id, report } => {
                self.note_progress_value(&runner_id, &report);
                let Some(run) = self.running.get_mut(&runner_id) else {
                    return;
                };
                if let Some(spend) = crate::runner_report::Spend::from_json(&report) {
                    run.spend = Some(spend);
                    if self.config.has_budgets() {
                        self.check_runner_budget(&runner_id);
                    }
                }
            }
            RunnerEvent::Worktree {
                runner_id,
                fingerprint,
            } => self.note_worktree(&runner_id, fingerprint),
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
            RunnerEvent::Usage { runner_id, usage } => {
                if let Some(run) = self.running.get_mut(&runner_id) {
                    run.usage = Some(usage);
                }
            }
            RunnerEvent::PoolEngine { pool, error } => {
                if let Some(runtime) = self.pools.iter_mut().find(|p| p.name == pool) {
                    runtime.engine_error = error;
                    runtime.engine_checked = true;
                }
            }
            RunnerEvent::Started {
                runner_id,
                supervisor_pid,
                engine_id,
            } => {
                if let Some(run) = self.running.get_mut(&runner_id) {
                    if run.adopted || run.engine_id.is_some() {
                        // An adopted job found again: nothing new started.
                        run.engine_id = engine_id;
                        self.snapshot_dirty = true;
                        return;
                    }
                    run.engine_id.clone_from(&engine_id);
                    let run = &self.running[&runner_id];
                    let waited = timefmt::now().signed_duration_since(run.ready_at);
                    let waited = waited.to_std().unwrap_or_default().as_secs_f64();
                    self.counters.task_wait_seconds.observe(waited);
                    let pool = run.pool.map_or("?", |p| self.pools[p].name.as_str());
                    let how = match (&engine_id, supervisor_pid) {
                        (Some(id), _) => format!("job {id}"),
                        (None, Some(pid)) => format!("supervisor pid {pid}"),
                        (None, None) => "no supervisor".to_string(),
                    };
                    log::info!(
                        "started {} attempt {} on pool {pool} (runner {runner_id}, {how})",
                        run.key,
                        run.attempt
                    );
                    let mut event = Event::new("RunnerStarted", &run.key.spec, Some(&run.key.id))
                        .with("runner_id", runner_id.as_str())
                        .with("pool", pool)
                        .with("attempt", run.attempt)
                        .with("log_file", run.log_path.display().to_string());
                    if let Some(pid) = supervisor_pid {
                        event = event.with("supervisor_pid", pid);
                    }
                    if let Some(id) = &engine_id {
                        event = event.with("engine_id", id.as_str());
                    }
                    self.outbox.push(event);
                }
            }
            RunnerEvent::LaunchFailed { runner_id, error } => self.launch_failed(&runner_id, error),
            RunnerEvent::Exited(exit) => {
                let Some(run) = self.running.remove(&exit.runner_id) else {
                    log::warn!("exit of unknown runner {}", exit.runner_id);
                    return;
                };
                self.cancelling.remove(&exit.runner_id);
                if let Some(pool) = run.pool {
                    self.free_place(pool, run.resources);
                }
                self.finish(run, exit);
            }
        }
        self.snapshot_dirty = true;
    }

    fn on_registry(&mut self, event: RegistryEvent) {
        match event {
            RegistryEvent::Changed {
                spec,
                taskset,
                fingerprint,
            } => match taskset {
                Ok(taskset) => {
                    let state = self.spec_state(&spec);
                    // Older than what we hold, or exactly what we wrote ourselves (the
                    // monitor saw our own rename before hearing of it): nothing to do.
                    let stale = state.error.is_none()
                        && state.taskset.as_ref().is_some_and(|known| {
                            known.version > taskset.version
                                || (known.version == taskset.version && **known == *taskset)
                        });
                    if !stale {
                        if state.error.take().is_some() {
                            log::info!("taskset {spec} is readable again");
                        }
                        state.taskset = Some(taskset);
                        state.fingerprint = fingerprint;
                        self.requeue_spec(&spec);
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
            RegistryEvent::ScanDone { took } => {
                self.counters
                    .registry_poll_seconds
                    .observe(took.as_secs_f64());
                if !self.scanned {
                    log::info!(
                        "registry read: {} tasksets, {} runnable tasks",
                        self.specs.len(),
                        self.queue.len()
                    );
                    self.start_slots();
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
                never_runnable: None,
                fingerprint: None,
                rendered: crate::registry::RenderedTasks::default(),
                written_seq: 0,
            })
    }

    // ----- ending -----------------------------------------------------------------------

    fn finished(&mut self) -> Option<RunOutcome> {
        if let Some(drain) = &self.drain {
            if !self.running.is_empty() {
                return None;
            }
            let slots_busy = !self.allocating.is_empty()
                || !self.allocated.is_empty()
                || self.releasing > 0
                || !self.pending_artifacts.is_empty();
            if !self.pending.is_empty() || slots_busy {
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
            if self.deadlock_failed {
                return Some(RunOutcome::NeverRunnable);
            }
            return Some(RunOutcome::Drained);
        }
        if !self.until_idle || !self.scanned {
            return None;
        }
        let busy = !self.running.is_empty()
            || !self.pending.is_empty()
            || !self.allocating.is_empty()
            || !self.allocated.is_empty()
            || self.releasing > 0
            || !self.pending_artifacts.is_empty()
            || !self.claimed.is_empty()
            || !self.retry.is_empty()
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

    /// Whether the queue holds a task that some enabled pool could take (its request within
    /// the pool's quotas), with a slot that is free or may come free. A pool that will take
    /// tasks before long (its engine's first answer, its breaker closing) counts as one that
    /// could.
    fn queue_has_servable_task(&self) -> bool {
        self.queue.entries().any(|(_, needs)| {
            let pool_open = needs.pools.iter().any(|&p| {
                (self.pool_enabled(p) || self.pools[p].takes_tasks_later(&self.config))
                    && crate::deadlock::quota_shortfall(
                        &self.config.agent_pools[&self.pools[p].name],
                        needs.resources,
                    )
                    .is_none()
            });
            pool_open
                && needs
                    .repo
                    .as_deref()
                    .is_none_or(|repo| self.slot_may_come(repo))
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
}

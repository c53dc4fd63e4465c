//! The runner watchdog: one thread that watches every runner's supervisor (started by us or
//! adopted after a restart), reports each runner's end exactly once, relays stop requests,
//! and notices signs of life for `status`.
//!
//! It sleeps in `poll(2)` on one process-exit descriptor (pidfd) per supervisor plus a wake
//! pipe for commands, so an exit is seen at once and an idle dispatcher does not spin. The
//! supervisors themselves enforce timeouts and heartbeats, so they keep doing it while the
//! dispatcher is gone.

use std::collections::HashMap;
use std::fs;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, Sender, TryRecvError};

use crate::procfs;
pub use crate::procfs::Usage;
use crate::supervisor::{Exit, Liveness, RunnerDir, StopReason};
use crate::sys::{self, PidFd, WakePipe};

/// How often logs and heartbeat files are looked at for `status`, and adopted runners
/// without a pidfd are checked.
const LOOK_INTERVAL: Duration = Duration::from_secs(1);
/// How often runners' memory and CPU use is measured for `status` (one pass over /proc).
const USAGE_INTERVAL: Duration = Duration::from_secs(5);
/// How often a new runner's pid is looked for until its supervisor has written it.
const PID_POLL: Duration = Duration::from_millis(20);
/// How long that quick polling lasts; past it the pid is looked for once a second.
const PID_PATIENCE: Duration = Duration::from_secs(5);

/// A runner to watch.
pub struct Watch {
    pub runner_id: String,
    pub dir: RunnerDir,
    /// Our child when we exec'd the supervisor (reaped here); `None` when the spawn server
    /// forked it (and reaps it) or when it was adopted.
    pub supervisor: Option<Child>,
    /// `None` when the supervisor's pid is not known (adopted, or a start the spawn server
    /// could not confirm): it is then followed by its lock.
    pub pidfd: Option<PidFd>,
    pub log_path: PathBuf,
    pub heartbeat_path: PathBuf,
}

pub enum WatchCommand {
    Watch(Box<Watch>),
    Stop {
        runner_id: String,
        reason: StopReason,
    },
    StopAll {
        reason: StopReason,
    },
}

pub enum RunnerEvent {
    /// A launcher thread started the runner's supervisor, or an engine accepted its job
    /// (or an adopted job was found).
    Started {
        runner_id: String,
        supervisor_pid: Option<u32>,
        /// The engine's id of the job (Slurm job id, container id, Job name).
        engine_id: Option<String>,
    },
    /// Whether an engine pool's engine answers (`error: None`) or not, and why.
    PoolEngine {
        pool: String,
        error: Option<String>,
    },
    /// A launcher thread could not start it.
    LaunchFailed {
        runner_id: String,
        error: String,
    },
    Exited(Exit),
    /// The last JSON line of the runner's heartbeat file, when it changed: spend so far,
    /// progress (see [`crate::runner_report`]).
    Report {
        runner_id: String,
        report: serde_json::Value,
    },
    /// A fingerprint of a runner's working directory from the progress probe (`None` when
    /// it could not be taken).
    Worktree {
        runner_id: String,
        fingerprint: Option<u64>,
    },
    /// A new sign of life (log output or a touched heartbeat file).
    Heartbeat {
        runner_id: String,
        at: SystemTime,
    },
    /// The runner process's pid, once its supervisor has reported it.
    Pid {
        runner_id: String,
        pid: u32,
    },
    /// Measured resource use of the runner's process group.
    Usage {
        runner_id: String,
        usage: Usage,
    },
}

/// The watchdog thread: its command sender, its wake pipe and its join handle.
pub struct Watchdog {
    handle: Option<WatchdogHandle>,
    thread: Option<JoinHandle<()>>,
}

/// A cloneable way to send the watchdog commands (launcher threads hand it new runners).
#[derive(Clone)]
pub struct WatchdogHandle {
    commands: Sender<WatchCommand>,
    wake: Arc<WakePipe>,
}

impl WatchdogHandle {
    pub fn send(&self, command: WatchCommand) {
        if self.commands.send(command).is_ok() {
            self.wake.wake();
        } else {
            log::error!("watchdog gone: command dropped");
        }
    }
}

impl Watchdog {
    pub fn spawn(events: Sender<RunnerEvent>) -> std::io::Result<Watchdog> {
        let (commands, inbox) = crossbeam_channel::unbounded();
        let wake = Arc::new(WakePipe::new()?);
        let actor_wake = wake.clone();
        let thread = thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || Actor::new(events).run(&inbox, &actor_wake))?;
        Ok(Watchdog {
            handle: Some(WatchdogHandle { commands, wake }),
            thread: Some(thread),
        })
    }

    pub fn handle(&self) -> WatchdogHandle {
        self.handle
            .clone()
            .expect("the handle lives as long as the watchdog")
    }

    pub fn send(&self, command: WatchCommand) {
        if let Some(handle) = &self.handle {
            handle.send(command);
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // Closing the channel ends the actor (once every clone of the handle is gone).
        // Runners it still watched keep running under their supervisors, to be adopted by
        // the next dispatcher.
        if let Some(handle) = self.handle.take() {
            let wake = handle.wake.clone();
            drop(handle);
            wake.wake();
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Watched {
    watch: Watch,
    /// A stop that could not be signalled yet (adopted, supervisor pid not known).
    pending_stop: Option<StopReason>,
    /// The first stop asked of this runner, if any.
    stop_sent: Option<StopReason>,
    pid_reported: bool,
    /// The runner's pid, which is also its process group.
    runner_pid: Option<u32>,
    since: Instant,
    log_size: u64,
    heartbeat_mtime: Option<SystemTime>,
}

impl Watched {
    /// Its runner's pid is still expected from `supervisor.json`.
    fn awaits_pid(&self) -> bool {
        !self.pid_reported && self.since.elapsed() < PID_PATIENCE
    }
}

struct Actor {
    events: Sender<RunnerEvent>,
    runners: HashMap<String, Watched>,
    last_look: Instant,
    last_usage: Instant,
    /// When `supervisor.json`s were last looked for: at most every `PID_POLL`, however often
    /// runners start and end (each wakes this thread).
    last_pid_poll: Instant,
    /// Set by `StopAll`: runners handed over later (launched meanwhile) are stopped at once.
    stopping_all: Option<StopReason>,
    /// Stops for runners not handed over yet.
    early_stops: HashMap<String, StopReason>,
}

impl Actor {
    fn new(events: Sender<RunnerEvent>) -> Actor {
        Actor {
            events,
            runners: HashMap::new(),
            last_look: Instant::now(),
            last_usage: Instant::now(),
            last_pid_poll: Instant::now(),
            stopping_all: None,
            early_stops: HashMap::new(),
        }
    }

    fn run(mut self, inbox: &Receiver<WatchCommand>, wake: &WakePipe) {
        loop {
            loop {
                match inbox.try_recv() {
                    Ok(command) => self.handle(command),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        if !self.runners.is_empty() {
                            log::info!(
                                "leaving {} runners to their supervisors",
                                self.runners.len()
                            );
                        }
                        return;
                    }
                }
            }
            if self.last_look.elapsed() >= LOOK_INTERVAL {
                self.look();
                self.last_look = Instant::now();
            }
            if self.last_usage.elapsed() >= USAGE_INTERVAL && !self.runners.is_empty() {
                self.measure_usage();
                self.last_usage = Instant::now();
            }
            let waiting_for_pids = if self.last_pid_poll.elapsed() >= PID_POLL {
                self.last_pid_poll = Instant::now();
                self.report_pids()
            } else {
                self.runners.values().any(Watched::awaits_pid)
            };
            // One descriptor per supervisor: readable once it has exited.
            let mut ids: Vec<String> = Vec::with_capacity(self.runners.len());
            let mut fds: Vec<RawFd> = vec![wake.as_raw_fd()];
            for (id, watched) in &self.runners {
                if let Some(pidfd) = &watched.watch.pidfd {
                    ids.push(id.clone());
                    fds.push(pidfd.as_raw_fd());
                }
            }
            let mut wait = LOOK_INTERVAL.saturating_sub(self.last_look.elapsed());
            if waiting_for_pids {
                // A new supervisor reports its runner's pid within milliseconds; `status`
                // should show it as soon as that.
                wait = wait.min(PID_POLL.saturating_sub(self.last_pid_poll.elapsed()));
            }
            match sys::poll_readable(&fds, Some(wait)) {
                Ok(ready) => {
                    for (id, _) in ids.iter().zip(&ready[1..]).filter(|(_, r)| **r) {
                        self.finish(id);
                    }
                }
                Err(err) => {
                    log::error!("watchdog cannot wait for runners: {err}");
                    thread::sleep(Duration::from_millis(100));
                }
            }
            wake.drain();
        }
    }

    fn handle(&mut self, command: WatchCommand) {
        match command {
            WatchCommand::Watch(watch) => {
                let log_size = file_size(&watch.log_path);
                let heartbeat_mtime = mtime(&watch.heartbeat_path);
                let id = watch.runner_id.clone();
                let stop = self.early_stops.remove(&id).or(self.stopping_all);
                let mut watched = Watched {
                    watch: *watch,
                    pending_stop: None,
                    stop_sent: None,
                    pid_reported: false,
                    runner_pid: None,
                    since: Instant::now(),
                    log_size,
                    heartbeat_mtime,
                };
                if let Some(reason) = stop {
                    request_stop(&mut watched, reason);
                }
                self.runners.insert(id, watched);
            }
            WatchCommand::Stop { runner_id, reason } => match self.runners.get_mut(&runner_id) {
                Some(watched) => request_stop(watched, reason),
                None => {
                    self.early_stops.insert(runner_id, reason);
                }
            },
            WatchCommand::StopAll { reason } => {
                self.stopping_all = Some(reason);
                for watched in self.runners.values_mut() {
                    request_stop(watched, reason);
                }
            }
        }
    }

    fn finish(&mut self, id: &str) {
        let Some(mut watched) = self.runners.remove(id) else {
            return;
        };
        if let Some(child) = &mut watched.watch.supervisor {
            // Reap our child so no zombie is left behind.
            let _ = child.wait();
        }
        let exit = watched.watch.dir.read_exit().unwrap_or_else(|| {
            let mut exit = Exit::without_status(
                id,
                "the runner's supervisor ended without recording an exit status".into(),
            );
            // A stop sent before the supervisor's handlers were in place ends it at once:
            // the attempt ends as that stop says (an interrupted attempt does not count).
            if let Some(reason) = watched.pending_stop.or(watched.stop_sent) {
                exit.stopped = Some(reason);
                exit.error = None;
            }
            exit
        });
        if self.events.send(RunnerEvent::Exited(exit)).is_err() {
            log::warn!("core gone: end of runner {id} not reported");
        }
    }

    /// Reports runner pids that supervisors have written since the last look. Returns
    /// whether some recently started runner has not reported one yet.
    fn report_pids(&mut self) -> bool {
        let mut waiting = false;
        for (id, watched) in &mut self.runners {
            if watched.pid_reported {
                continue;
            }
            if let Some(info) = watched.watch.dir.read_supervisor() {
                watched.pid_reported = true;
                watched.runner_pid = Some(info.runner_pid);
                let _ = self.events.send(RunnerEvent::Pid {
                    runner_id: id.clone(),
                    pid: info.runner_pid,
                });
            } else if watched.awaits_pid() {
                waiting = true;
            }
        }
        waiting
    }

    /// Resource use of each runner's process group, from one pass over `/proc`.
    fn measure_usage(&mut self) {
        let groups = procfs::usage_by_group();
        for (id, watched) in &self.runners {
            let Some(usage) = watched.runner_pid.and_then(|pid| groups.get(&pid)) else {
                continue;
            };
            let _ = self.events.send(RunnerEvent::Usage {
                runner_id: id.clone(),
                usage: *usage,
            });
        }
    }

    /// Once a second: signs of life, and adopted runners known only by their lock.
    fn look(&mut self) {
        let mut gone = Vec::new();
        for (id, watched) in &mut self.runners {
            if watched.watch.pidfd.is_none() {
                match watched.watch.dir.liveness() {
                    Liveness::Alive => {
                        watched.watch.pidfd = watched
                            .watch
                            .dir
                            .read_supervisor()
                            .and_then(|info| PidFd::open(info.supervisor_pid).ok());
                        if let Some(reason) = watched.pending_stop.take() {
                            request_stop(watched, reason);
                        }
                    }
                    Liveness::Exited(_) | Liveness::Lost => gone.push(id.clone()),
                }
            }
            let size = file_size(&watched.watch.log_path);
            let touched = mtime(&watched.watch.heartbeat_path);
            if size != watched.log_size || touched != watched.heartbeat_mtime {
                let beat_changed = touched != watched.heartbeat_mtime;
                watched.log_size = size;
                watched.heartbeat_mtime = touched;
                let _ = self.events.send(RunnerEvent::Heartbeat {
                    runner_id: id.clone(),
                    at: SystemTime::now(),
                });
                if beat_changed {
                    if let Some(report) =
                        crate::runner_report::read_beat(&watched.watch.heartbeat_path)
                    {
                        let _ = self.events.send(RunnerEvent::Report {
                            runner_id: id.clone(),
                            report,
                        });
                    }
                }
            }
        }
        for id in gone {
            self.finish(&id);
        }
    }
}

/// Records the reason, then wakes the supervisor with SIGTERM; it relays TERM to the
/// runner's group and KILL after the grace period.
fn request_stop(watched: &mut Watched, reason: StopReason) {
    watched.stop_sent.get_or_insert(reason);
    let watch = &watched.watch;
    if let Err(err) = watch.dir.request_stop(reason) {
        log::warn!(
            "cannot record the stop reason of runner {}: {err}",
            watch.runner_id
        );
    }
    match &watch.pidfd {
        Some(pidfd) => pidfd.signal(libc::SIGTERM),
        None => watched.pending_stop = Some(reason),
    }
}

fn file_size(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

fn mtime(path: &Path) -> Option<SystemTime> {
    fs::metadata(path).and_then(|m| m.modified()).ok()
}

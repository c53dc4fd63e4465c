//! The runner watchdog: one thread that owns every running child process, notices exits,
//! heartbeats and timeouts, and stops runners (TERM to the group, KILL after a grace period).
//!
//! The core hands a started [`RunnerProcess`] over with [`WatchCommand::Watch`] and gets back
//! exactly one [`RunnerEvent::Exited`] per runner, after the process has been reaped.

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{select, tick, Receiver, Sender};

use crate::launcher::{self, RunnerProcess};

/// How often exits are polled. Runners are long-lived, but a short task's turnaround
/// matters too; a `try_wait` per runner per tick is a cheap syscall.
const EXIT_POLL: Duration = Duration::from_millis(20);
/// How often heartbeat files and logs are looked at (two `stat`s per runner).
const HEARTBEAT_POLL: Duration = Duration::from_millis(500);

/// Why the dispatcher stopped a runner; decides how its attempt is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The pool's execution `timeout` passed.
    TimedOut,
    /// No heartbeat for `heartbeat_timeout`.
    HeartbeatLost,
    /// The dispatcher is draining; the attempt is not counted.
    Interrupted,
}

impl StopReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::TimedOut => "timed_out",
            StopReason::HeartbeatLost => "heartbeat_lost",
            StopReason::Interrupted => "interrupted",
        }
    }
}

/// Limits the watchdog enforces for one runner.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub timeout: Option<Duration>,
    /// `None` disables the heartbeat check.
    pub heartbeat_timeout: Option<Duration>,
    pub stop_grace: Duration,
}

pub enum WatchCommand {
    Watch(Box<RunnerProcess>, Limits),
    Stop {
        runner_id: String,
        reason: StopReason,
    },
    StopAll {
        reason: StopReason,
        grace: Option<Duration>,
    },
}

/// How an attempt ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exit {
    pub runner_id: String,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// Set when the dispatcher stopped the runner.
    pub stopped: Option<StopReason>,
    pub duration: Duration,
}

impl Exit {
    pub fn succeeded(&self) -> bool {
        self.stopped.is_none() && self.exit_code == Some(0)
    }

    /// One word for metrics, events and logs.
    pub fn outcome(&self) -> &'static str {
        match self.stopped {
            Some(reason) => reason.as_str(),
            None if self.exit_code == Some(0) => "succeeded",
            None => "failed",
        }
    }

    /// A human description of a failure, for `last_error`.
    pub fn describe(&self) -> String {
        match (self.stopped, self.exit_code, self.signal) {
            (Some(StopReason::TimedOut), ..) => "execution timeout exceeded".to_string(),
            (Some(StopReason::HeartbeatLost), ..) => "no heartbeat within heartbeat_timeout".into(),
            (Some(StopReason::Interrupted), ..) => "interrupted by dispatcher shutdown".into(),
            (None, Some(code), _) => format!("exited with code {code}"),
            (None, None, Some(signal)) => format!("killed by signal {signal}"),
            (None, None, None) => "ended without an exit status".into(),
        }
    }
}

pub enum RunnerEvent {
    Exited(Exit),
    /// A new sign of life (log output or a touched heartbeat file).
    Heartbeat {
        runner_id: String,
        at: SystemTime,
    },
}

/// The watchdog thread: its command sender and join handle.
pub struct Watchdog {
    commands: Sender<WatchCommand>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    pub fn spawn(events: Sender<RunnerEvent>) -> Watchdog {
        let (commands, inbox) = crossbeam_channel::unbounded();
        let thread = thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || Actor::new(events).run(&inbox))
            .expect("spawn watchdog thread");
        Watchdog {
            commands,
            thread: Some(thread),
        }
    }

    pub fn send(&self, command: WatchCommand) {
        if self.commands.send(command).is_err() {
            log::error!("watchdog gone: command dropped");
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // Closing the channel tells the actor to stop what is left and finish.
        let (closed, _) = crossbeam_channel::bounded(0);
        self.commands = closed;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Watched {
    process: RunnerProcess,
    limits: Limits,
    last_heartbeat: Instant,
    log_size: u64,
    heartbeat_mtime: Option<SystemTime>,
    stopping: Option<Stopping>,
}

struct Stopping {
    reason: StopReason,
    kill_at: Instant,
    killed: bool,
}

struct Actor {
    events: Sender<RunnerEvent>,
    runners: HashMap<String, Watched>,
    last_heartbeat_check: Instant,
}

impl Actor {
    fn new(events: Sender<RunnerEvent>) -> Actor {
        Actor {
            events,
            runners: HashMap::new(),
            last_heartbeat_check: Instant::now(),
        }
    }

    fn run(mut self, inbox: &Receiver<WatchCommand>) {
        let ticker = tick(EXIT_POLL);
        let mut open = true;
        loop {
            if open {
                select! {
                    recv(inbox) -> command => match command {
                        Ok(command) => self.handle(command),
                        Err(_) => {
                            open = false;
                            if !self.runners.is_empty() {
                                log::warn!("core gone: stopping {} runners", self.runners.len());
                            }
                            self.stop_all(StopReason::Interrupted, None);
                        }
                    },
                    recv(ticker) -> _ => self.check(),
                }
            } else {
                if self.runners.is_empty() {
                    return;
                }
                let _ = ticker.recv();
                self.check();
            }
        }
    }

    fn handle(&mut self, command: WatchCommand) {
        match command {
            WatchCommand::Watch(process, limits) => {
                let log_size = file_size(&process.log_path);
                let heartbeat_mtime = mtime(&process.heartbeat_path);
                self.runners.insert(
                    process.runner_id.clone(),
                    Watched {
                        process: *process,
                        limits,
                        last_heartbeat: Instant::now(),
                        log_size,
                        heartbeat_mtime,
                        stopping: None,
                    },
                );
            }
            WatchCommand::Stop { runner_id, reason } => {
                if let Some(watched) = self.runners.get_mut(&runner_id) {
                    begin_stop(watched, reason, None);
                }
            }
            WatchCommand::StopAll { reason, grace } => self.stop_all(reason, grace),
        }
    }

    fn stop_all(&mut self, reason: StopReason, grace: Option<Duration>) {
        for watched in self.runners.values_mut() {
            begin_stop(watched, reason, grace);
        }
    }

    fn check(&mut self) {
        let now = Instant::now();
        let check_heartbeats = now.duration_since(self.last_heartbeat_check) >= HEARTBEAT_POLL;
        if check_heartbeats {
            self.last_heartbeat_check = now;
        }
        let mut exited = Vec::new();
        for (id, watched) in &mut self.runners {
            match watched.process.child.try_wait() {
                Ok(Some(status)) => {
                    exited.push((id.clone(), status));
                    continue;
                }
                Ok(None) => {}
                Err(err) => log::warn!("cannot poll runner {id}: {err}"),
            }
            if let Some(stopping) = &mut watched.stopping {
                if !stopping.killed && now >= stopping.kill_at {
                    log::warn!(
                        "runner {id} (pid {}) ignored SIGTERM; sending SIGKILL",
                        watched.process.pid
                    );
                    launcher::signal_group(watched.process.pid, libc::SIGKILL);
                    stopping.killed = true;
                }
                continue;
            }
            if check_heartbeats {
                if let Some(at) = watched.observe_heartbeat() {
                    let _ = self.events.send(RunnerEvent::Heartbeat {
                        runner_id: id.clone(),
                        at,
                    });
                }
            }
            let mut exceeded = watched.limit_exceeded(now);
            if exceeded == Some(StopReason::HeartbeatLost) {
                // Heartbeats are looked at only every HEARTBEAT_POLL, so `last_heartbeat` can
                // lag the real sign of life by that much: look once more before killing, or a
                // runner beating just inside the timeout is taken for a silent one.
                if let Some(at) = watched.observe_heartbeat() {
                    let _ = self.events.send(RunnerEvent::Heartbeat {
                        runner_id: id.clone(),
                        at,
                    });
                    exceeded = None;
                }
            }
            if let Some(reason) = exceeded {
                log::warn!(
                    "runner {id} (pid {}) {}; stopping it",
                    watched.process.pid,
                    match reason {
                        StopReason::TimedOut => "exceeded its execution timeout",
                        _ => "sent no heartbeat within heartbeat_timeout",
                    }
                );
                begin_stop(watched, reason, None);
            }
        }
        for (id, status) in exited {
            let watched = self.runners.remove(&id).expect("exited runner is watched");
            // Children the runner left behind belong to the finished attempt; nothing may
            // keep running in its name.
            if launcher::group_alive(watched.process.pid) {
                launcher::signal_group(watched.process.pid, libc::SIGKILL);
            }
            let (exit_code, signal) = launcher::describe_exit(status);
            let exit = Exit {
                runner_id: id,
                exit_code,
                signal,
                stopped: watched.stopping.as_ref().map(|s| s.reason),
                duration: watched.process.started.elapsed(),
            };
            if self.events.send(RunnerEvent::Exited(exit)).is_err() {
                log::warn!("core gone: runner exit not reported");
            }
        }
    }
}

impl Watched {
    /// Returns the time of a new sign of life, if the log grew or the heartbeat file
    /// was touched since the last look.
    fn observe_heartbeat(&mut self) -> Option<SystemTime> {
        let size = file_size(&self.process.log_path);
        let touched = mtime(&self.process.heartbeat_path);
        let alive = size != self.log_size || touched != self.heartbeat_mtime;
        self.log_size = size;
        self.heartbeat_mtime = touched;
        if alive {
            self.last_heartbeat = Instant::now();
            Some(SystemTime::now())
        } else {
            None
        }
    }

    fn limit_exceeded(&self, now: Instant) -> Option<StopReason> {
        if let Some(timeout) = self.limits.timeout {
            if now.duration_since(self.process.started) >= timeout {
                return Some(StopReason::TimedOut);
            }
        }
        if let Some(timeout) = self.limits.heartbeat_timeout {
            if now.duration_since(self.last_heartbeat) >= timeout {
                return Some(StopReason::HeartbeatLost);
            }
        }
        None
    }
}

fn begin_stop(watched: &mut Watched, reason: StopReason, grace: Option<Duration>) {
    let grace = grace.unwrap_or(watched.limits.stop_grace);
    match &mut watched.stopping {
        // A second, more urgent stop (a second Ctrl-C) shortens the grace period.
        Some(stopping) => {
            stopping.kill_at = stopping.kill_at.min(Instant::now() + grace);
        }
        None => {
            launcher::signal_group(watched.process.pid, libc::SIGTERM);
            watched.stopping = Some(Stopping {
                reason,
                kill_at: Instant::now() + grace,
                killed: false,
            });
        }
    }
}

fn file_size(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

fn mtime(path: &Path) -> Option<SystemTime> {
    fs::metadata(path).and_then(|m| m.modified()).ok()
}

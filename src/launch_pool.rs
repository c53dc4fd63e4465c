//! Launcher threads: starting a runner (files, lock, spawn of its supervisor) takes
//! milliseconds, so the core hands each claimed task to a small pool of workers and stays
//! free to schedule. A worker gives the started supervisor to the watchdog and tells the
//! core the runner started, or why it could not. Attempts of engine pools go to their
//! pool's watcher thread instead ([`crate::engine`]). The same workers remove the runner
//! directories of finished attempts, which costs about as much as creating them.

use std::path::PathBuf;
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use crossbeam_channel::Sender;

use crate::config::Config;
use crate::engine::{EngineCommand, EngineHub};
use crate::launcher::{self, LaunchSpec};
use crate::watchdog::{RunnerEvent, Watch, WatchCommand, WatchdogHandle};

/// Enough to overlap file I/O and process creation on a small machine; starting runners is
/// never the long part of a task.
pub const WORKERS: usize = 4;

pub struct LaunchPool {
    jobs: Option<Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
}

enum Job {
    /// A runner to start, with the configuration in force when it was claimed: a SIGHUP
    /// reload changes pools and their commands for the next launches.
    Launch(Box<LaunchSpec>, Arc<Config>),
    Remove(PathBuf),
}

impl LaunchPool {
    pub fn spawn(
        watchdog: &WatchdogHandle,
        engines: &EngineHub,
        events: &Sender<RunnerEvent>,
    ) -> std::io::Result<LaunchPool> {
        let (jobs, inbox) = crossbeam_channel::unbounded::<Job>();
        let mut threads = Vec::with_capacity(WORKERS);
        for n in 0..WORKERS {
            let inbox = inbox.clone();
            let watchdog = watchdog.clone();
            let engines = engines.clone();
            let events = events.clone();
            let thread = thread::Builder::new()
                .name(format!("launcher-{n}"))
                .spawn(move || {
                    for job in inbox {
                        match job {
                            Job::Launch(spec, config) => {
                                start(&config, &watchdog, &engines, &events, *spec);
                            }
                            Job::Remove(dir) => {
                                if let Err(err) = std::fs::remove_dir_all(&dir) {
                                    log::debug!("cannot remove {}: {err}", dir.display());
                                }
                            }
                        }
                    }
                })?;
            threads.push(thread);
        }
        Ok(LaunchPool {
            jobs: Some(jobs),
            threads,
        })
    }

    /// Starts a runner of a pool of `config` (the configuration in force now).
    pub fn submit(&self, spec: LaunchSpec, config: Arc<Config>) {
        self.send(Job::Launch(Box::new(spec), config));
    }

    /// Removes a finished runner's directory in the background.
    pub fn remove_dir(&self, dir: PathBuf) {
        self.send(Job::Remove(dir));
    }

    fn send(&self, job: Job) {
        if let Some(jobs) = &self.jobs {
            if jobs.send(job).is_err() {
                log::error!("launcher threads gone: a job was dropped");
            }
        }
    }
}

impl Drop for LaunchPool {
    fn drop(&mut self) {
        // Closing the queue lets each worker finish its current launch and stop.
        self.jobs.take();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn start(
    config: &Arc<Config>,
    watchdog: &WatchdogHandle,
    engines: &EngineHub,
    events: &Sender<RunnerEvent>,
    job: LaunchSpec,
) {
    let Some(pool) = config.agent_pools.get(&job.pool_name) else {
        let _ = events.send(RunnerEvent::LaunchFailed {
            runner_id: job.runner_id,
            error: format!("pool {:?} is not configured", job.pool_name),
        });
        return;
    };
    if pool.kind.is_engine() {
        // The pool's watcher submits it: engine calls never block these threads.
        let name = job.pool_name.clone();
        engines.send(
            &name,
            pool,
            EngineCommand::Launch(Box::new(job), Arc::clone(config)),
        );
        return;
    }
    match launcher::launch(&job, pool) {
        Ok(launched) => {
            // "Started" goes out before the watchdog learns of the runner, so the core can
            // never hear of its end first.
            let _ = events.send(RunnerEvent::Started {
                runner_id: job.runner_id.clone(),
                supervisor_pid: launched.supervisor_pid,
                engine_id: None,
            });
            watchdog.send(WatchCommand::Watch(Box::new(Watch {
                runner_id: job.runner_id,
                dir: launched.dir,
                supervisor: launched.supervisor,
                pidfd: launched.pidfd,
                log_path: launched.log_path,
                heartbeat_path: launched.heartbeat_path,
            })));
        }
        Err(err) => {
            let _ = events.send(RunnerEvent::LaunchFailed {
                runner_id: job.runner_id,
                error: err.to_string(),
            });
        }
    }
}

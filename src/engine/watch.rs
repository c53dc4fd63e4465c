//! The watcher of one engine pool: a thread that submits the pool's jobs, looks at all of
//! them with one batched call per `engine_poll_interval`, turns signs of life into
//! heartbeats, enforces the execution and heartbeat timeouts, relays stops, records each
//! job's end in `exit.json` and reports it to the core exactly once.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, Sender};

use super::{
    read_engine_record, write_engine_record, Ending, Engine, EngineCommand, EngineRecord, JobState,
    Submission,
};
use crate::config::{Config, EngineSettings, PoolConfig, PoolKind};
use crate::launcher::{self, LaunchSpec, Prepared};
use crate::supervisor::{Exit, RunnerDir, RunnerRecord, StopReason};
use crate::timefmt;
use crate::watchdog::RunnerEvent;

/// How often an engine that did not answer is asked again.
const RECHECK_INTERVAL: Duration = Duration::from_secs(30);
/// How long a log follower may take to copy the last output after its job ended.
const FOLLOWER_PATIENCE: Duration = Duration::from_secs(5);

/// One job of the pool, from submission (or adoption) to its recorded end.
struct Job {
    runner_id: String,
    dir: RunnerDir,
    /// `None` while an adopted runner's job is still being looked for by name.
    id: Option<String>,
    log_path: PathBuf,
    heartbeat_path: PathBuf,
    submitted: Instant,
    /// When the engine was first seen running it: the timeouts count from here.
    running_since: Option<Instant>,
    timeout: Option<Duration>,
    heartbeat_timeout: Option<Duration>,
    stop_grace: Duration,
    /// The last sign of life: output or a touched heartbeat file.
    last_sign: Instant,
    seen: (u64, Option<SystemTime>),
    /// Why we are stopping it, once we asked; `stop_sent` once the engine took the request.
    stopping: Option<StopReason>,
    stop_sent: bool,
    follower: Option<Child>,
}

pub(super) struct Watcher {
    pool: String,
    engine: Box<dyn Engine>,
    kind: PoolKind,
    settings: EngineSettings,
    events: Sender<RunnerEvent>,
    jobs: HashMap<String, Job>,
    /// `Some(why)` while the engine does not answer.
    down: Option<String>,
    /// The last failure to read the jobs, so that a long outage is logged once.
    poll_error: Option<String>,
    next_check: Instant,
}

impl Watcher {
    pub(super) fn new(
        pool: String,
        engine: Box<dyn Engine>,
        config: &PoolConfig,
        events: Sender<RunnerEvent>,
    ) -> Watcher {
        Watcher {
            pool,
            engine,
            kind: config.kind,
            settings: config.engine.clone(),
            events,
            jobs: HashMap::new(),
            down: Some("not checked yet".into()),
            poll_error: None,
            next_check: Instant::now(),
        }
    }

    pub(super) fn run(mut self, inbox: &Receiver<EngineCommand>) {
        let mut next_tick = Instant::now();
        loop {
            let now = Instant::now();
            if now >= self.next_check && self.down.is_some() {
                self.check();
            }
            if now >= next_tick {
                self.tick();
                next_tick = Instant::now() + self.settings.poll_interval;
            }
            let wake = if self.down.is_some() {
                next_tick.min(self.next_check)
            } else {
                next_tick
            };
            match inbox.recv_deadline(wake) {
                Ok(command) => self.handle(command),
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
            }
        }
        for job in self.jobs.values_mut() {
            // The jobs go on in their engine; a restarted dispatcher adopts them.
            if let Some(mut follower) = job.follower.take() {
                let _ = follower.kill();
                let _ = follower.wait();
            }
        }
    }

    /// Asks the engine whether it answers, and tells the core when that changes.
    fn check(&mut self) {
        self.next_check = Instant::now() + RECHECK_INTERVAL;
        match self.engine.check() {
            Ok(()) => {
                log::info!("pool {}: its engine answers", self.pool);
                self.down = None;
                self.send(RunnerEvent::PoolEngine {
                    pool: self.pool.clone(),
                    error: None,
                });
            }
            Err(err) => {
                let error = err.to_string();
                if self.down.as_deref() != Some(error.as_str()) {
                    log::error!(
                        "pool {}: its engine does not answer, so the pool takes no tasks (asking again every {}s): {error}",
                        self.pool,
                        RECHECK_INTERVAL.as_secs()
                    );
                    self.send(RunnerEvent::PoolEngine {
                        pool: self.pool.clone(),
                        error: Some(error.clone()),
                    });
                }
                self.down = Some(error);
            }
        }
    }

    fn send(&self, event: RunnerEvent) {
        let _ = self.events.send(event);
    }

    fn handle(&mut self, command: EngineCommand) {
        match command {
            EngineCommand::Launch(spec, config) => self.launch(*spec, &config),
            EngineCommand::Adopt {
                runner_id,
                dir,
                record,
            } => self.adopt(runner_id, dir, &record),
            EngineCommand::Stop { runner_id, reason } => {
                if let Some(job) = self.jobs.get_mut(&runner_id) {
                    request_stop(job, reason);
                }
                self.send_stops();
            }
            EngineCommand::StopAll { reason } => {
                for job in self.jobs.values_mut() {
                    request_stop(job, reason);
                }
                self.send_stops();
            }
        }
    }

    fn launch(&mut self, spec: LaunchSpec, config: &Arc<Config>) {
        let failed = |error: String| RunnerEvent::LaunchFailed {
            runner_id: spec.runner_id.clone(),
            error,
        };
        let Some(pool) = config.agent_pools.get(&spec.pool_name) else {
            self.send(failed(format!(
                "pool {:?} is not configured",
                spec.pool_name
            )));
            return;
        };
        // Settings changed by a reload apply from the next submission on.
        if pool.engine != self.settings || pool.kind != self.kind {
            if let Some(engine) = super::build(&spec.pool_name, pool) {
                self.engine = engine;
                self.kind = pool.kind;
                self.settings = pool.engine.clone();
            }
        }
        if let Some(why) = &self.down {
            self.send(failed(format!(
                "pool {}: its engine does not answer: {why}",
                self.pool
            )));
            return;
        }
        let view = self.engine.view(&spec);
        let prepared = match launcher::prepare(&spec, pool, &view) {
            Ok(prepared) => prepared,
            Err(err) => {
                self.send(failed(err.to_string()));
                return;
            }
        };
        let Prepared {
            env,
            record,
            log,
            heartbeat_path,
        } = prepared;
        if let Err(err) = write_record(&spec.runner_dir, &record) {
            self.send(failed(format!(
                "cannot write {}: {err}",
                spec.runner_dir.record_path().display()
            )));
            return;
        }
        let resources = crate::scheduler::task_resources(&spec.task, Some(pool));
        let submission = Submission {
            runner_id: &spec.runner_id,
            pool: &spec.pool_name,
            spec: &spec.spec,
            task_id: &spec.task.id,
            attempt: spec.attempt,
            argv: &record.argv,
            env: &env,
            workdir: &spec.workdir,
            runner_dir: spec.runner_dir.path(),
            log_path: &spec.log_path,
            timeout: pool.timeout,
            cpus: resources.cpu,
            memory_mb: resources.memory_mb,
        };
        let id = match self.engine.submit(&submission) {
            Ok(id) => id,
            Err(err) => {
                self.send(failed(format!("pool {}: {err}", self.pool)));
                return;
            }
        };
        let engine_record = EngineRecord {
            engine: pool.kind.as_str().to_string(),
            job_id: id.clone(),
            submitted_at: timefmt::now_string(),
        };
        if let Err(err) = write_engine_record(&spec.runner_dir, &engine_record) {
            // The job runs; a restart finds it by its name instead.
            log::warn!(
                "runner {}: cannot record its job {id}: {err}",
                spec.runner_id
            );
        }
        log::debug!("pool {}: runner {} is job {id}", self.pool, spec.runner_id);
        self.send(RunnerEvent::Started {
            runner_id: spec.runner_id.clone(),
            supervisor_pid: None,
            engine_id: Some(id.clone()),
        });
        let follower = self.engine.follow_logs(&id, log, None);
        let now = Instant::now();
        self.jobs.insert(
            spec.runner_id.clone(),
            Job {
                runner_id: spec.runner_id,
                dir: spec.runner_dir,
                id: Some(id),
                log_path: spec.log_path,
                heartbeat_path,
                submitted: now,
                running_since: None,
                timeout: pool.timeout,
                heartbeat_timeout: spec.heartbeat_timeout,
                stop_grace: spec.stop_grace,
                last_sign: now,
                seen: (0, None),
                stopping: None,
                stop_sent: false,
                follower,
            },
        );
    }

    fn adopt(&mut self, runner_id: String, dir: RunnerDir, record: &RunnerRecord) {
        let id = read_engine_record(&dir).map(|r| r.job_id);
        let millis = |ms: u64| Duration::from_millis(ms);
        let now = Instant::now();
        let mut job = Job {
            runner_id: runner_id.clone(),
            heartbeat_path: record.heartbeat_path.clone(),
            dir,
            id,
            log_path: record.log_path.clone(),
            submitted: now,
            running_since: None,
            timeout: record.timeout_ms.map(millis),
            heartbeat_timeout: record.heartbeat_timeout_ms.map(millis),
            stop_grace: millis(record.stop_grace_ms),
            last_sign: now,
            seen: (0, None),
            stopping: None,
            stop_sent: false,
            follower: None,
        };
        if let Some(id) = &job.id {
            if let Ok(log) = append_to(&job.log_path) {
                let since = log.metadata().and_then(|m| m.modified()).ok();
                job.follower = self.engine.follow_logs(id, log, since);
            }
            self.send(RunnerEvent::Started {
                runner_id: runner_id.clone(),
                supervisor_pid: None,
                engine_id: Some(id.clone()),
            });
        }
        self.jobs.insert(runner_id, job);
    }

    /// One look at every job: their states in one call, then the ends, signs of life and
    /// timeouts.
    fn tick(&mut self) {
        if self.jobs.is_empty() {
            return;
        }
        self.find_unknown_ids();
        let ids: Vec<String> = self.jobs.values().filter_map(|j| j.id.clone()).collect();
        if ids.is_empty() {
            return;
        }
        let states = match self.engine.poll(&ids) {
            Ok(states) => {
                if self.poll_error.take().is_some() {
                    log::info!("pool {}: its jobs can be read again", self.pool);
                }
                states
            }
            Err(err) => {
                // Never an end: the jobs may well run on. Asked again next tick; said once.
                let error = err.to_string();
                if self.poll_error.as_deref() != Some(error.as_str()) {
                    log::warn!("pool {}: cannot look at its jobs: {error}", self.pool);
                }
                self.poll_error = Some(error);
                return;
            }
        };
        let runners: Vec<String> = self.jobs.keys().cloned().collect();
        for runner_id in runners {
            let Some(id) = self.jobs.get(&runner_id).and_then(|j| j.id.clone()) else {
                continue;
            };
            let state = match states.get(&id) {
                Some(state) => Some(state.clone()),
                None => match self.engine.final_state(&id) {
                    Ok(state) => state.or_else(|| Some(forgotten(&id))),
                    Err(err) => {
                        log::warn!("pool {}: cannot read how job {id} ended: {err}", self.pool);
                        None
                    }
                },
            };
            match state {
                None | Some(JobState::Queued) => {}
                Some(JobState::Running) => self.observe(&runner_id),
                Some(JobState::Finished(ending)) => self.finish(&runner_id, &id, ending),
            }
        }
        self.send_stops();
    }

    /// Adopted runners whose `engine.json` was never written: look for their job by name.
    fn find_unknown_ids(&mut self) {
        let unknown: Vec<String> = self
            .jobs
            .values()
            .filter(|j| j.id.is_none())
            .map(|j| j.runner_id.clone())
            .collect();
        for runner_id in unknown {
            match self.engine.find(&runner_id) {
                Ok(Some(id)) => {
                    log::info!("pool {}: runner {runner_id} is job {id}", self.pool);
                    if let Some(job) = self.jobs.get_mut(&runner_id) {
                        job.id = Some(id.clone());
                    }
                    self.send(RunnerEvent::Started {
                        runner_id,
                        supervisor_pid: None,
                        engine_id: Some(id),
                    });
                }
                Ok(None) => {
                    let ending = Ending {
                        exit_code: None,
                        signal: None,
                        reason: None,
                        timed_out: false,
                    };
                    let error = format!(
                        "runner lost: the {} engine has no job named {runner_id}",
                        self.pool
                    );
                    self.end(&runner_id, None, ending, Some(error));
                }
                Err(err) => log::warn!(
                    "pool {}: cannot look for the job of runner {runner_id}: {err}",
                    self.pool
                ),
            }
        }
    }

    /// A running job: its clocks start, its signs of life are read, its limits enforced.
    fn observe(&mut self, runner_id: &str) {
        let Some(job) = self.jobs.get_mut(runner_id) else {
            return;
        };
        let now = Instant::now();
        let since = *job.running_since.get_or_insert(now);
        let seen = (
            std::fs::metadata(&job.log_path).map_or(0, |m| m.len()),
            std::fs::metadata(&job.heartbeat_path)
                .and_then(|m| m.modified())
                .ok(),
        );
        if seen != job.seen {
            let beat_changed = seen.1 != job.seen.1;
            job.seen = seen;
            job.last_sign = now;
            let _ = self.events.send(RunnerEvent::Heartbeat {
                runner_id: runner_id.to_string(),
                at: SystemTime::now(),
            });
            if beat_changed {
                if let Some(report) = crate::runner_report::read_beat(&job.heartbeat_path) {
                    let _ = self.events.send(RunnerEvent::Report {
                        runner_id: runner_id.to_string(),
                        report,
                    });
                }
            }
        }
        if job.stopping.is_some() {
            return;
        }
        if job.timeout.is_some_and(|limit| now - since >= limit) {
            log::warn!("runner {runner_id} passed its execution timeout; stopping its job");
            request_stop(job, StopReason::TimedOut);
        } else if job
            .heartbeat_timeout
            .is_some_and(|limit| now - job.last_sign.max(since) >= limit)
        {
            log::warn!("runner {runner_id} gave no sign of life within heartbeat_timeout; stopping its job");
            request_stop(job, StopReason::HeartbeatLost);
        }
    }

    /// Sends the stop requests the engine has not taken yet.
    fn send_stops(&mut self) {
        for job in self.jobs.values_mut() {
            let (Some(_), false, Some(id)) = (job.stopping, job.stop_sent, job.id.as_deref())
            else {
                continue;
            };
            match self.engine.stop(id, job.stop_grace) {
                Ok(()) => job.stop_sent = true,
                Err(err) => log::warn!(
                    "pool {}: cannot stop job {id} of runner {} (trying again): {err}",
                    self.pool,
                    job.runner_id
                ),
            }
        }
    }

    fn finish(&mut self, runner_id: &str, id: &str, ending: Ending) {
        self.end(runner_id, Some(id), ending, None);
    }

    /// Records a job's end in `exit.json` and reports it, once.
    fn end(&mut self, runner_id: &str, id: Option<&str>, ending: Ending, error: Option<String>) {
        let Some(mut job) = self.jobs.remove(runner_id) else {
            return;
        };
        if let Some(mut follower) = job.follower.take() {
            wait_for_follower(&mut follower);
        }
        // An engine that enforced the pool's timeout itself ended the attempt the way the
        // watcher would have.
        let stopped = job
            .stopping
            .or(ending.timed_out.then_some(StopReason::TimedOut));
        let exit = Exit {
            runner_id: runner_id.to_string(),
            exit_code: ending.exit_code,
            signal: ending.signal,
            stopped,
            duration_seconds: job.submitted.elapsed().as_secs_f64(),
            log_truncated: false,
            error,
            finished_at: Some(timefmt::now_string()),
            reason: ending.reason.filter(|_| stopped.is_none()),
            class: None,
        };
        let bytes = serde_json::to_vec_pretty(&exit).unwrap_or_default();
        if let Err(err) = crate::fsutil::write_atomic(&job.dir.exit_path(), &bytes) {
            log::warn!("runner {runner_id}: cannot record its end: {err}");
        }
        if let Some(id) = id {
            self.engine.forget(id);
        }
        self.send(RunnerEvent::Exited(exit));
    }
}

fn request_stop(job: &mut Job, reason: StopReason) {
    if job.stopping.is_none() {
        job.stopping = Some(reason);
        job.stop_sent = false;
    }
}

/// A job the engine no longer knows at all: its end cannot be known.
fn forgotten(id: &str) -> JobState {
    JobState::Finished(Ending {
        exit_code: None,
        signal: None,
        reason: Some(format!(
            "job {id} vanished from its engine without a recorded end"
        )),
        timed_out: false,
    })
}

fn write_record(dir: &RunnerDir, record: &RunnerRecord) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?;
    crate::fsutil::write_atomic(&dir.record_path(), &bytes)
}

fn append_to(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

/// Gives a log follower a moment to copy the job's last output, then ends it.
fn wait_for_follower(follower: &mut Child) {
    let deadline = Instant::now() + FOLLOWER_PATIENCE;
    let mut pause = Duration::from_millis(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = follower.try_wait() {
            return;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
    let _ = follower.kill();
    let _ = follower.wait();
}

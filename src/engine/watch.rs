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
    read_engine_record, write_engine_record, Ending, Engine, EngineCommand, EngineError,
    EngineRecord, JobState, Submission,
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
    /// When the engine took the stop request: asked again if the job outlives it.
    stop_sent_at: Option<Instant>,
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
    /// Stops that arrived before their job was submitted (launches come through the
    /// launcher threads, stops straight from the core), and a drain's stop of everything.
    early_stops: HashMap<String, StopReason>,
    stopping_all: Option<StopReason>,
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
            early_stops: HashMap::new(),
            stopping_all: None,
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
                match self.jobs.get_mut(&runner_id) {
                    Some(job) => request_stop(job, reason),
                    None => {
                        self.early_stops.insert(runner_id, reason);
                    }
                }
                self.send_stops();
            }
            EngineCommand::StopAll { reason } => {
                self.stopping_all = Some(reason);
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
        let stopped = self
            .early_stops
            .remove(&spec.runner_id)
            .or(self.stopping_all);
        if let Some(reason) = stopped {
            // Stopped before it was submitted: it never runs.
            let mut exit = Exit::without_status(&spec.runner_id, String::new());
            exit.error = None;
            exit.stopped = Some(reason);
            self.send(RunnerEvent::Exited(exit));
            return;
        }
        if let Some(why) = self.down.clone() {
            self.send(infra_end(
                &spec.runner_id,
                format!("pool {}: its engine does not answer: {why}", self.pool),
            ));
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
            Err(err) => match self.after_failed_submit(&spec.runner_id, &err) {
                Some(id) => id,
                None => return,
            },
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
                stop_sent_at: None,
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
            stop_sent_at: None,
            follower: None,
        };
        // The execution timeout counts from the submission, not from this adoption.
        let submitted = read_engine_record(&job.dir).and_then(|r| timefmt::parse(&r.submitted_at));
        if let Some(at) = submitted {
            let age = (timefmt::now() - at).to_std().unwrap_or_default();
            job.running_since = now.checked_sub(age);
            job.submitted = job.running_since.unwrap_or(now);
        }
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

    /// A submission the engine refused or did not answer: the job may exist anyway (the
    /// answer timed out after the engine took it), the engine may have gone away (an infra
    /// failure; the pool is disabled until it answers again), or the job itself was refused.
    fn after_failed_submit(&mut self, runner_id: &str, err: &EngineError) -> Option<String> {
        if let Ok(Some(id)) = self.engine.find(runner_id) {
            log::warn!(
                "pool {}: submitting runner {runner_id} reported an error ({err}) but the engine runs it as {id}",
                self.pool
            );
            return Some(id);
        }
        if let Err(down) = self.engine.check() {
            let why = down.to_string();
            log::error!(
                "pool {}: its engine stopped answering, so the pool takes no tasks (asking again every {}s): {why}",
                self.pool,
                RECHECK_INTERVAL.as_secs()
            );
            self.down = Some(why.clone());
            self.next_check = Instant::now() + RECHECK_INTERVAL;
            self.send(RunnerEvent::PoolEngine {
                pool: self.pool.clone(),
                error: Some(why),
            });
            self.send(infra_end(runner_id, format!("pool {}: {err}", self.pool)));
            return None;
        }
        self.send(RunnerEvent::LaunchFailed {
            runner_id: runner_id.to_string(),
            error: format!("pool {}: {err}", self.pool),
        });
        None
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
                        if let Ok(log) = append_to(&job.log_path) {
                            let since = log.metadata().and_then(|m| m.modified()).ok();
                            job.follower = self.engine.follow_logs(&id, log, since);
                        }
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
        // A follower that died (a cut `kubectl logs` stream) is started again from now on.
        let follower_gone = job
            .follower
            .as_mut()
            .is_some_and(|f| matches!(f.try_wait(), Ok(Some(_))));
        if follower_gone {
            job.follower = None;
            if let (Some(id), Ok(log)) = (job.id.clone(), append_to(&job.log_path)) {
                job.follower = self.engine.follow_logs(&id, log, Some(SystemTime::now()));
            }
        }
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
        let patience = self.settings.command_timeout;
        for job in self.jobs.values_mut() {
            // Asked again when the job outlives its grace period and a command's time by far:
            // the engine may have lost the request.
            let overdue = job
                .stop_sent_at
                .is_some_and(|at| at.elapsed() > job.stop_grace + patience * 2);
            let (Some(_), Some(id)) = (job.stopping, job.id.as_deref()) else {
                continue;
            };
            if job.stop_sent && !overdue {
                continue;
            }
            match self.engine.stop(id, job.stop_grace) {
                Ok(()) => {
                    job.stop_sent = true;
                    job.stop_sent_at = Some(Instant::now());
                }
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

/// The end of an attempt that never reached a job because the engine stopped answering: an
/// `infra` failure, retried without counting against the task.
fn infra_end(runner_id: &str, error: String) -> RunnerEvent {
    let mut exit = Exit::without_status(runner_id, error);
    exit.class = Some(crate::supervisor::FailureClass::Infra);
    RunnerEvent::Exited(exit)
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

#[cfg(test)]
mod tests {
    //! The watcher against a scripted engine (no engine runs on the test machine): what it
    //! does when a submission fails and when a stop comes before its job.

    use std::sync::Mutex;

    use super::*;
    use crate::registry::Task;

    /// An engine whose answers the test sets, recording what it was asked.
    #[derive(Default)]
    struct Scripted {
        submit_fails: bool,
        check_fails: bool,
        found: Option<String>,
        calls: Arc<Mutex<Vec<String>>>,
    }

    impl Engine for Scripted {
        fn check(&self) -> Result<(), EngineError> {
            self.calls.lock().unwrap().push("check".into());
            if self.check_fails {
                return Err(EngineError::Setup("cannot connect".into()));
            }
            Ok(())
        }
        fn view(&self, req: &LaunchSpec) -> launcher::RunnerView {
            launcher::RunnerView::local(req)
        }
        fn submit(&self, _job: &Submission<'_>) -> Result<String, EngineError> {
            self.calls.lock().unwrap().push("submit".into());
            if self.submit_fails {
                return Err(EngineError::Setup("submit timed out".into()));
            }
            Ok("42".into())
        }
        fn poll(&self, _ids: &[String]) -> Result<HashMap<String, JobState>, EngineError> {
            Ok(HashMap::new())
        }
        fn final_state(&self, _id: &str) -> Result<Option<JobState>, EngineError> {
            Ok(None)
        }
        fn stop(&self, _id: &str, _grace: Duration) -> Result<(), EngineError> {
            Ok(())
        }
        fn find(&self, _runner_id: &str) -> Result<Option<String>, EngineError> {
            self.calls.lock().unwrap().push("find".into());
            Ok(self.found.clone())
        }
    }

    struct Rig {
        watcher: Watcher,
        events: Receiver<RunnerEvent>,
        config: Arc<Config>,
        dir: tempfile::TempDir,
    }

    fn rig(engine: Scripted) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::from_toml_str(
            "[agent_pools.hpc]\ntype = \"slurm\"\ncommand = [\"/bin/true\"]\n",
            &dir.path().join("dispatcher.toml"),
        )
        .unwrap();
        let (tx, events) = crossbeam_channel::unbounded();
        let mut watcher = Watcher::new(
            "hpc".into(),
            Box::new(engine),
            &config.agent_pools["hpc"],
            tx,
        );
        watcher.down = None;
        Rig {
            watcher,
            events,
            config: Arc::new(config),
            dir,
        }
    }

    fn spec(rig: &Rig, runner_id: &str) -> LaunchSpec {
        let root = rig.dir.path();
        let task: Task = serde_json::from_value(serde_json::json!({
            "id": "t", "title": "t", "state": "running"
        }))
        .unwrap();
        LaunchSpec {
            runner_id: runner_id.into(),
            pool_name: "hpc".into(),
            spec: "s".into(),
            task,
            attempt: 1,
            workdir: root.join("work"),
            repo_url: None,
            log_path: root.join("logs/attempt-1.log"),
            runner_dir: RunnerDir::new(root.join("runners").join(runner_id)),
            owner: "test".into(),
            heartbeat_timeout: None,
            stop_grace: Duration::from_secs(1),
            max_log_bytes: None,
            bootstrap: None,
            port_base: None,
        }
    }

    fn drain(events: &Receiver<RunnerEvent>) -> Vec<RunnerEvent> {
        events.try_iter().collect()
    }

    #[test]
    fn an_engine_gone_at_submission_disables_the_pool_and_the_attempt_is_infra() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let mut rig = rig(Scripted {
            submit_fails: true,
            check_fails: true,
            calls: calls.clone(),
            ..Scripted::default()
        });
        let launch = spec(&rig, "r1");
        rig.watcher.launch(launch, &rig.config.clone());
        let events = drain(&rig.events);
        assert!(events
            .iter()
            .any(|e| matches!(e, RunnerEvent::PoolEngine { error: Some(_), .. })));
        let ended = events.iter().find_map(|e| match e {
            RunnerEvent::Exited(exit) => Some(exit.clone()),
            _ => None,
        });
        let ended = ended.expect("the attempt ends");
        assert_eq!(ended.class, Some(crate::supervisor::FailureClass::Infra));
        assert!(rig.watcher.down.is_some());
        // The next launch is not even submitted while the engine is down.
        let launch = spec(&rig, "r2");
        rig.watcher.launch(launch, &rig.config.clone());
        let submits = calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| *c == "submit")
            .count();
        assert_eq!(submits, 1);
    }

    #[test]
    fn a_job_the_engine_took_despite_an_error_is_watched() {
        let mut rig = rig(Scripted {
            submit_fails: true,
            found: Some("77".into()),
            ..Scripted::default()
        });
        let launch = spec(&rig, "r1");
        rig.watcher.launch(launch, &rig.config.clone());
        let started = drain(&rig.events)
            .into_iter()
            .any(|e| matches!(e, RunnerEvent::Started { engine_id: Some(id), .. } if id == "77"));
        assert!(started);
        assert!(rig.watcher.jobs.contains_key("r1"));
    }

    #[test]
    fn a_stop_that_comes_before_its_job_keeps_it_from_being_submitted() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let mut rig = rig(Scripted {
            calls: calls.clone(),
            ..Scripted::default()
        });
        rig.watcher.handle(EngineCommand::Stop {
            runner_id: "r1".into(),
            reason: StopReason::Cancelled,
        });
        let launch = spec(&rig, "r1");
        rig.watcher.launch(launch, &rig.config.clone());
        let stopped = drain(&rig.events).into_iter().find_map(|e| match e {
            RunnerEvent::Exited(exit) => exit.stopped,
            _ => None,
        });
        assert_eq!(stopped, Some(StopReason::Cancelled));
        assert!(!calls.lock().unwrap().iter().any(|c| c == "submit"));
    }
}

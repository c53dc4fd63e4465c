//! Runners and claims left behind by an earlier dispatcher: adopt a runner whose supervisor
//! still lives, finish one that recorded its exit, count one that is gone as lost; take over
//! a claim whose owner is provably gone; make ready the blocked tasks whose dependencies are
//! already done.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde_json::json;

use super::{Core, Running};
use crate::engine::EngineCommand;
use crate::registry::{Event, Task, TaskState};
use crate::scheduler::TaskKey;
use crate::statedir::StateDir;
use crate::supervisor::{Exit, Liveness, RunnerDir, RunnerRecord};
use crate::sys::{self, PidFd};
use crate::timefmt;
use crate::watchdog::{Watch, WatchCommand};

impl Core {
    /// Makes blocked tasks whose dependencies are all done ready (a file written by hand,
    /// or by a tool that does not unblock).
    pub(super) fn promote_unblocked(&mut self, spec: &str) {
        let now = timefmt::now_string();
        let known_version = self
            .specs
            .get(spec)
            .and_then(|s| s.taskset.as_ref())
            .map(|ts| ts.version);
        let result = self.registry.update(spec, |taskset| {
            let read_version = taskset.version;
            let ids = taskset.unblock_ready_dependents(&now);
            let changed = !ids.is_empty();
            ((ids, read_version), changed)
        });
        match result {
            Ok(((ids, read_version), taskset)) => {
                let events: Vec<Event> = ids
                    .iter()
                    .map(|id| {
                        Event::new("TaskReady", spec, Some(id)).with("reason", "dependencies done")
                    })
                    .collect();
                self.events.append(&events);
                // The file was replaced (or re-read): its fingerprint is not known here.
                self.spec_state(spec).fingerprint = None;
                if known_version != Some(read_version) {
                    // Another writer's change came in with this write: place every task.
                    self.spec_state(spec).taskset = Some(Arc::new(taskset));
                    self.requeue_spec(spec);
                } else if !ids.is_empty() {
                    self.refresh_tasks(spec, &Arc::new(taskset), &ids);
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
    /// Checked again here, whoever calls: a task already claimed (recovered earlier in the
    /// same pass) or no longer running must not be recovered a second time.
    pub(super) fn recover_claimed(&mut self, key: &TaskKey, state_root: &Path) {
        if self.claimed.contains_key(key) {
            return;
        }
        let Some(taskset) = self.specs.get(&*key.spec).and_then(|s| s.taskset.clone()) else {
            return;
        };
        let Some(task) = taskset.task(&key.id) else {
            return;
        };
        if task.state != TaskState::Running {
            return;
        }
        let meta = task.dispatcher_meta();
        let runner_id = task
            .runner_id
            .clone()
            .or(meta.runner_id.clone())
            .unwrap_or_default();
        let pool = meta
            .pool
            .as_deref()
            .and_then(|name| self.pools.iter().position(|p| p.name == name));
        let slot = self.slot_hold_of(task);
        let pool_config = meta
            .pool
            .as_deref()
            .and_then(|name| self.config.agent_pools.get(name));
        let resources = crate::scheduler::task_resources(task, pool_config);
        let footprint = self.footprint_of(key, task);
        let mut run = Running {
            slot,
            resources,
            usage: None,
            ready_at: crate::view::ready_at(task, &meta),
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
            engine_id: None,
            spend: None,
            needs_attention: None,
            stop_detail: None,
            progress: super::stalls::Progress::new(self.state.scratch_dir(&key.spec, &key.id)),
            footprint,
        };
        self.claimed.insert(key.clone(), runner_id.clone());
        let dir = match crate::names::validate("runner id", &runner_id) {
            Ok(()) => Some(RunnerDir::new(
                StateDir::new(state_root).runner_dir(&runner_id),
            )),
            Err(_) => None,
        };
        let liveness = dir.as_ref().map_or(Liveness::Lost, RunnerDir::liveness);
        let engine_record = dir
            .as_ref()
            .and_then(|d| d.read_record().ok())
            .filter(|r| r.engine.is_some());
        match liveness {
            Liveness::Alive if engine_record.is_some() => {
                let dir = dir.expect("alive runners have a directory");
                let record = engine_record.expect("checked above");
                self.adopt_engine_runner(key, task, run, dir, record);
            }
            Liveness::Alive => {
                let dir = dir.expect("alive runners have a directory");
                let info = dir.read_supervisor();
                run.pid = info.as_ref().map(|i| i.runner_pid);
                if let Ok(record) = dir.read_record() {
                    run.started_at = record.created_at;
                    run.log_path = record.log_path;
                    run.progress = super::stalls::Progress::new(record.cwd);
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
                    self.take_place(pool, run.resources);
                }
                self.running.insert(runner_id, run);
                // A cancel asked for while no dispatcher watched it applies now.
                self.honour_cancel(key, task);
            }
            Liveness::Exited(exit) => {
                log::info!(
                    "runner {runner_id} of {key} ended while no dispatcher ran; recording it"
                );
                self.finish(run, exit);
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
                self.finish(run, exit);
            }
        }
    }

    /// A job an earlier dispatcher submitted to an engine pool: its watcher finds the job
    /// (by the id in `engine.json`, or by name) and reports its end, or that it is gone.
    fn adopt_engine_runner(
        &mut self,
        key: &TaskKey,
        task: &Task,
        mut run: Running,
        dir: RunnerDir,
        record: RunnerRecord,
    ) {
        let runner_id = run.runner_id.clone();
        let job = crate::engine::read_engine_record(&dir).map(|r| r.job_id);
        run.started_at.clone_from(&record.created_at);
        run.log_path.clone_from(&record.log_path);
        run.progress = super::stalls::Progress::new(record.cwd.clone());
        run.engine_id.clone_from(&job);
        log::info!(
            "adopting runner {runner_id} of {key} (attempt {}), job {} of pool {}",
            run.attempt,
            job.as_deref()
                .unwrap_or("not recorded; looking for it by name"),
            record.pool
        );
        let mut event = Event::new("RunnerAdopted", &key.spec, Some(&key.id))
            .with("runner_id", runner_id.as_str())
            .with("attempt", run.attempt);
        if let Some(job) = &job {
            event = event.with("engine_id", job.as_str());
        }
        self.events.append(&[event]);
        let pool_name = record.pool.clone();
        let pool_config = self.config.agent_pools.get(&pool_name).cloned();
        match (&self.engines, &pool_config) {
            (Some(engines), Some(pool)) if pool.kind.is_engine() => engines.send(
                &pool_name,
                pool,
                EngineCommand::Adopt {
                    runner_id: runner_id.clone(),
                    dir,
                    record: Box::new(record),
                },
            ),
            _ => {
                log::warn!(
                    "runner {runner_id} of {key} ran on engine pool {pool_name} which is no longer configured; the attempt counts as lost"
                );
                let exit = Exit::without_status(
                    &runner_id,
                    format!("runner lost: its pool {pool_name} is no longer configured"),
                );
                self.finish(run, exit);
                return;
            }
        }
        if let Some(pool) = run.pool {
            self.take_place(pool, run.resources);
        }
        self.running.insert(runner_id, run);
        self.honour_cancel(key, task);
    }

    /// A task RUNNING under another dispatcher's claim is left alone unless its owner is
    /// provably gone: same host, its state dir's instance lock is free (no dispatcher), and
    /// the task's runner directory there has no live supervisor. Then the state dir of the
    /// dead owner is returned, to finish or count the attempt from its files. A claim from
    /// another host is never touched: nothing here can prove that host's runner is gone.
    pub(super) fn owner_gone(&self, owner: &str, task: &Task) -> Option<PathBuf> {
        let (host, root) = owner.split_once(':')?;
        if host != sys::hostname() {
            return None;
        }
        let root = PathBuf::from(root);
        if !root.is_dir() {
            return None;
        }
        let state = StateDir::new(&root);
        if state.lock_is_held() {
            return None;
        }
        let runner_id = task.runner_id.as_deref()?;
        crate::names::validate("runner id", runner_id).ok()?;
        let dir = RunnerDir::new(state.runner_dir(runner_id));
        if matches!(dir.liveness(), Liveness::Alive) {
            return None;
        }
        log::warn!(
            "task {}: its owner {owner} is gone (no dispatcher, no supervisor); taking it over",
            task.id
        );
        Some(root)
    }
}

//! The commit step of each turn: plan the next assignments, then per spec one locked
//! read-modify-write that records every attempt that ended and claims every task picked,
//! then the events of that write, then the launches. A failed write leaves the spec alone
//! for a moment and keeps the ended attempts to write later.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::NaiveDateTime;
use serde_json::json;

use super::{Core, Finish, Running, SlotHold, RENDERED_BUDGET, WRITE_RETRY};
use crate::config::RetrySettings;
use crate::launcher::LaunchSpec;
use crate::registry::{AttemptRecord, Event, Task, TaskState, Taskset};
use crate::scheduler::{self, PlanInput, PoolLoad, Resources, TaskKey};
use crate::slots::Allocation;
use crate::supervisor::{Exit, FailureClass, RunnerDir, StopReason};
use crate::timefmt;
use crate::view;

/// A task picked for a pool, with the id its runner will have. Its place in the pool is
/// counted from the moment it is picked.
pub(super) struct Pick {
    pub(super) key: TaskKey,
    pub(super) pool: usize,
    runner_id: String,
    /// What the task counts against its pool's quotas.
    pub(super) resources: Resources,
    /// The repository whose slot it needs, if any (kept here: its taskset may go away).
    pub(super) repo: Option<Arc<str>>,
    /// The paths it declared it touches, held from the pick on.
    pub(super) footprint: Option<Arc<scheduler::Footprint>>,
}

#[derive(Default)]
struct Batch {
    finishes: Vec<Finish>,
    picks: Vec<(Pick, Option<Allocation>)>,
    artifacts: Vec<(TaskKey, serde_json::Value)>,
}

/// What writing an attempt's end did to its task.
pub(super) enum Verdict {
    Done,
    /// Back to ready, with the retry time and delay.
    Retry(String, Duration),
    /// Failed for good after this many attempts.
    Failed(u32),
    /// Back to ready without counting the attempt.
    Interrupted,
    /// Back to ready without counting the attempt: its pool's breaker opened (rate limit,
    /// expired credentials).
    Requeued(FailureClass),
    /// Failed for good by `dispatcher cancel`.
    Cancelled,
    /// The task changed under us (removed, reset by hand): nothing written.
    Gone,
}

/// A claim made in the write: the task, its slot and its attempt number.
struct Claimed {
    pick: Pick,
    slot: Option<Allocation>,
    attempt: u32,
}

impl Core {
    pub(super) fn commit(&mut self) {
        if self.drain.is_some() {
            // Draining: no new task starts, not even one whose slot just arrived.
            for (pick, slot) in std::mem::take(&mut self.allocated) {
                self.give_back(&pick, Some(slot));
            }
        }
        let picks = self.plan();
        let mut batches: BTreeMap<Arc<str>, Batch> = BTreeMap::new();
        for finish in std::mem::take(&mut self.pending) {
            let suspended = self
                .specs
                .get(&*finish.run.key.spec)
                .is_some_and(|s| s.suspended_until.is_some());
            if suspended {
                self.pending.push(finish);
            } else {
                let spec = finish.run.key.spec.clone();
                batches.entry(spec).or_default().finishes.push(finish);
            }
        }
        let with_slots = std::mem::take(&mut self.allocated)
            .into_iter()
            .map(|(pick, slot)| (pick, Some(slot)));
        for (pick, slot) in picks.into_iter().map(|p| (p, None)).chain(with_slots) {
            batches
                .entry(pick.key.spec.clone())
                .or_default()
                .picks
                .push((pick, slot));
        }
        for (key, artifact) in std::mem::take(&mut self.pending_artifacts) {
            let suspended = self
                .specs
                .get(&*key.spec)
                .is_some_and(|s| s.suspended_until.is_some());
            if suspended {
                self.pending_artifacts.push((key, artifact));
            } else {
                let spec = key.spec.clone();
                batches
                    .entry(spec)
                    .or_default()
                    .artifacts
                    .push((key, artifact));
            }
        }
        for (spec, batch) in batches {
            self.write_batch(&spec, batch);
        }
    }

    /// The next assignments, within the global and per-pool caps and the free slots of
    /// each repository. Picks that need a slot go to the slot threads; the others are
    /// returned, to be claimed now.
    fn plan(&mut self) -> Vec<Pick> {
        if self.drain.is_some() || !self.scanned || self.queue.is_empty() {
            self.note_quota_blocks(&HashSet::new());
            return Vec::new();
        }
        let global_free = self
            .config
            .dispatcher
            .max_global_concurrency
            .saturating_sub(self.running.len() + self.allocating.len() + self.allocated.len());
        if global_free == 0 {
            return Vec::new();
        }
        let mut loads: Vec<PoolLoad> = self
            .pools
            .iter()
            .map(|p| {
                let pool = &self.config.agent_pools[&p.name];
                PoolLoad {
                    running: p.running,
                    max: pool.max_concurrency,
                    enabled: p.takes_tasks(&self.config),
                    cpu_used: p.cpu_used,
                    cpu_quota: pool.cpu_quota,
                    memory_used_mb: p.memory_used_mb,
                    memory_quota_mb: pool.memory_quota_mb,
                    default_resources: Resources {
                        cpu: pool.default_cpu,
                        memory_mb: pool.default_memory_mb,
                    },
                }
            })
            .collect();
        let mut spec_running: HashMap<Arc<str>, usize> = HashMap::new();
        let placed = self
            .running
            .values()
            .map(|r| &r.key)
            .chain(self.allocating.keys())
            .chain(self.allocated.iter().map(|(p, _)| &p.key));
        for key in placed {
            *spec_running.entry(key.spec.clone()).or_default() += 1;
        }
        let starving_before = self.config.dispatcher.starvation_after.map(|after| {
            timefmt::now() - chrono::Duration::from_std(after).unwrap_or(chrono::Duration::MAX)
        });
        let mut held = self.held_footprints();
        let plan = scheduler::plan(
            &self.queue,
            PlanInput {
                loads: &mut loads,
                free_slots: &mut self.free_slots,
                global_free,
                spec_running: &mut spec_running,
                weights: &self.config.fair_share_weights,
                starving_before,
                held: &mut held,
            },
        );
        self.note_quota_blocks(&plan.quota_blocked);
        if !plan.footprint_waits.is_empty() {
            self.note_footprint_waits(plan.footprint_waits, &held);
        }
        let mut picks = Vec::with_capacity(plan.assignments.len());
        for (key, pool) in plan.assignments {
            self.runner_seq += 1;
            let runner_id = format!(
                "runner-{}-{}-{}",
                self.pools[pool].name, self.run_prefix, self.runner_seq
            );
            let task = self
                .specs
                .get(&*key.spec)
                .and_then(|s| s.taskset.clone())
                .and_then(|ts| ts.task(&key.id).cloned());
            let pool_config = &self.config.agent_pools[&self.pools[pool].name];
            let resources = match &task {
                Some(task) => crate::scheduler::task_resources(task, Some(pool_config)),
                None => Resources {
                    cpu: pool_config.default_cpu,
                    memory_mb: pool_config.default_memory_mb,
                },
            };
            if let Some(task) = task.as_ref().filter(|_| pool_config.agent.budget.is_some()) {
                if let Some(why) = self.pool_budget_refuses(pool, task) {
                    // The planner counted a slot of its repository as taken: it is not.
                    if let Some(repo) = self.repo_of(task) {
                        *self.free_slots.entry(repo).or_insert(0) += 1;
                    }
                    self.set_aside_for_budget(key, why);
                    continue;
                }
            }
            self.take_place(pool, resources);
            let repo = task.as_ref().and_then(|t| self.repo_of(t));
            // Taken from the queue entry: parsed once, when the task was queued.
            let footprint = self.queue.footprint_of(&key);
            self.footprint_logged.remove(&key);
            let pick = Pick {
                key,
                pool,
                runner_id,
                resources,
                repo: repo.clone(),
                footprint,
            };
            match repo {
                Some(repo) => self.allocate(pick, &repo),
                None => picks.push(pick),
            }
        }
        picks
    }

    /// Logs each pool that reaches its CPU or memory quota, once per episode.
    fn note_quota_blocks(&mut self, blocked: &HashSet<usize>) {
        for (index, pool) in self.pools.iter_mut().enumerate() {
            let now_blocked = blocked.contains(&index);
            if now_blocked && !pool.quota_blocked {
                let config = &self.config.agent_pools[&pool.name];
                log::warn!(
                    "pool {} is at its quota (cpu {:.1}/{}, memory {} MiB/{}); its tasks wait",
                    pool.name,
                    pool.cpu_used,
                    config.cpu_quota.map_or("-".into(), |q| q.to_string()),
                    pool.memory_used_mb,
                    config.memory_quota_mb.map_or("-".into(), |q| q.to_string()),
                );
            } else if !now_blocked
                && pool.quota_blocked
                && pool.running < config_max(&self.config, &pool.name)
            {
                log::info!("pool {} is below its quota again", pool.name);
            }
            pool.quota_blocked = now_blocked;
        }
    }

    fn write_batch(&mut self, spec: &str, batch: Batch) {
        let Batch {
            finishes,
            picks,
            artifacts,
        } = batch;
        let now = timefmt::now();
        let now_text = timefmt::format(now);
        let retry = self.config.retry.clone();
        let owner = self.owner.clone();
        let pool_names: Vec<String> = self.pools.iter().map(|p| p.name.clone()).collect();
        let known_version = self
            .specs
            .get(spec)
            .and_then(|s| s.taskset.as_ref())
            .map(|ts| ts.version);
        // The held copy is lent to the write, which changes it in place when the file is
        // still what we last saw; it comes back as the written taskset.
        let mut known = self
            .specs
            .get_mut(spec)
            .and_then(|s| Some((s.fingerprint?, s.taskset.take()?)));
        let lent = known.is_some();
        let own_write = self.monitor.as_ref().map(|m| m.begin_write(spec));
        let rendered = self.specs.get_mut(spec).map(|s| &mut s.rendered);
        let result = self
            .registry
            .update_known(spec, &mut known, rendered, |taskset, touched| {
                // What the file held under the lock, before our change: another writer may have
                // changed it since we last read it.
                let read_version = taskset.version;
                let (verdicts, checkpoints): (Vec<Verdict>, Vec<Option<String>>) = finishes
                    .iter()
                    .map(|finish| apply_finish(taskset, finish, &retry, now))
                    .unzip();
                let unblocked = if verdicts.iter().any(|v| matches!(v, Verdict::Done)) {
                    taskset.unblock_ready_dependents(&now_text)
                } else {
                    Vec::new()
                };
                let attempts: Vec<Option<u32>> = picks
                    .iter()
                    .map(|(pick, slot)| {
                        let name = &pool_names[pick.pool];
                        claim(taskset, pick, slot.as_ref(), name, &owner, &now_text)
                    })
                    .collect();
                let mut added = false;
                for (key, artifact) in &artifacts {
                    if let Some(task) = taskset.task_mut(&key.id) {
                        task.artifacts.push(artifact.clone());
                        added = true;
                    }
                }
                // Every task written differently: the others are written from their last text.
                touched.extend(finishes.iter().map(|f| f.run.key.id.to_string()));
                touched.extend(unblocked.iter().cloned());
                touched.extend(picks.iter().map(|(pick, _)| pick.key.id.to_string()));
                touched.extend(artifacts.iter().map(|(key, _)| key.id.to_string()));
                let changed = verdicts.iter().any(|v| !matches!(v, Verdict::Gone))
                    || !unblocked.is_empty()
                    || attempts.iter().any(Option::is_some)
                    || added;
                (
                    (verdicts, checkpoints, unblocked, attempts, read_version),
                    changed,
                )
            });
        let (
            (verdicts, checkpoints, unblocked, attempts, read_version),
            taskset,
            fingerprint,
            reused,
        ) = match result {
            Ok(done) => done,
            Err(err) => {
                self.take_back(spec, lent, known);
                self.write_error(spec, &err, finishes, picks, artifacts);
                return;
            }
        };
        // Held again at once: what runs below (releases, give-backs) may look at it.
        let taskset = Arc::new(taskset);
        self.spec_state(spec).taskset = Some(taskset.clone());
        self.keep_rendered_within_budget(spec);
        let mut claimed = Vec::new();
        let mut refused: Vec<String> = Vec::new();
        for ((pick, slot), attempt) in picks.into_iter().zip(attempts) {
            match attempt {
                Some(attempt) => claimed.push(Claimed {
                    pick,
                    slot,
                    attempt,
                }),
                None => {
                    // Changed under us (done, failed, cancelled): placed anew below, so it is
                    // not picked again on the strength of what we held.
                    refused.push(pick.key.id.to_string());
                    self.give_back(&pick, slot);
                }
            }
        }
        if let Some(mark) = own_write {
            mark.written(fingerprint);
        }
        let written_fingerprint = fingerprint;

        let mut events = Vec::new();
        let mut changed: Vec<String> = Vec::new();
        for ((finish, verdict), checkpoint) in finishes.iter().zip(&verdicts).zip(checkpoints) {
            let pool = finish
                .run
                .pool
                .map_or_else(|| "unknown".to_string(), |p| self.pools[p].name.clone());
            *self
                .counters
                .attempts
                .entry(pool)
                .or_default()
                .entry(finish.exit.outcome().to_string())
                .or_default() += 1;
            if matches!(verdict, Verdict::Retry(..)) {
                self.counters.retries_scheduled += 1;
            }
            if let Some(notice) = notice_for(finish, verdict) {
                self.notify(notice);
            }
            if finish.exit.error.is_none() {
                let pool = finish
                    .run
                    .pool
                    .map_or_else(|| "unknown".to_string(), |p| self.pools[p].name.clone());
                self.counters
                    .task_run_seconds
                    .entry(pool)
                    .or_default()
                    .observe(finish.exit.duration_seconds);
            }
            events.extend(finish_events(finish, verdict));
            log_verdict(finish, verdict, &unblocked);
            self.claimed.remove(&finish.run.key);
            self.release_after(finish, checkpoint);
            changed.push(finish.run.key.id.to_string());
            // The registry now says how the attempt ended; the runner's files have served.
            if crate::names::validate("runner id", &finish.run.runner_id).is_ok() {
                self.finished_dirs
                    .push(self.state.runner_dir(&finish.run.runner_id));
            }
        }
        for id in &unblocked {
            events
                .push(Event::new("TaskReady", spec, Some(id)).with("reason", "dependencies done"));
            changed.push(id.clone());
        }
        for c in &claimed {
            let mut event = Event::new("TaskAssigned", spec, Some(&c.pick.key.id))
                .with("old_state", "ready")
                .with("new_state", "running")
                .with("runner_id", c.pick.runner_id.as_str())
                .with("pool", self.pools[c.pick.pool].name.as_str())
                .with("attempt", c.attempt);
            // As NecroCode's event: the slot and branch the task was given, when it got one.
            event = match &c.slot {
                Some(slot) => event
                    .with("assigned_slot", slot.slot_id.as_str())
                    .with("reserved_branch", slot.branch.as_str()),
                None => event.with("assigned_slot", serde_json::Value::Null),
            };
            events.push(event);
            self.claimed
                .insert(c.pick.key.clone(), c.pick.runner_id.clone());
            *self
                .counters
                .tasks_assigned
                .entry(self.pools[c.pick.pool].name.clone())
                .or_default() += 1;
            changed.push(c.pick.key.id.to_string());
        }
        // This taskset's notes heard before the write go first, in the same append.
        let (mut appended, others): (Vec<Event>, Vec<Event>) = std::mem::take(&mut self.outbox)
            .into_iter()
            .partition(|event| event.spec_name == spec);
        self.outbox = others;
        appended.append(&mut events);
        self.events.append(&appended);
        changed.extend(refused);
        // A task held back until its patch was recorded is placed again, with the footprint
        // it learned from it.
        for (key, _) in &artifacts {
            if self.awaiting_patch.remove(key) {
                changed.push(key.id.to_string());
            }
        }
        if reused && known_version == Some(read_version) {
            self.refresh_tasks(spec, &taskset, &changed);
            if written_fingerprint.is_some() {
                self.spec_state(spec).fingerprint = written_fingerprint;
            }
        } else {
            self.spec_state(spec).fingerprint = written_fingerprint;
            // Another writer's change came in with this write; the monitor will not read this
            // version again (the write mark told it), so every task is placed anew here.
            self.spec_state(spec).taskset = Some(taskset.clone());
            self.requeue_spec(spec);
        }
        for c in claimed {
            let task = taskset.task(&c.pick.key.id).expect("claimed task exists");
            self.launch(c.pick, c.slot, task, c.attempt);
        }
        self.snapshot_dirty = true;
    }

    /// Drops the kept task texts of the tasksets written longest ago while all of them
    /// together exceed [`RENDERED_BUDGET`]; `spec` was just written.
    fn keep_rendered_within_budget(&mut self, spec: &str) {
        self.writes += 1;
        let writes = self.writes;
        self.spec_state(spec).written_seq = writes;
        let mut total: usize = self.specs.values().map(|s| s.rendered.size()).sum();
        while total > RENDERED_BUDGET {
            let Some(oldest) = self
                .specs
                .values_mut()
                .filter(|s| s.rendered.size() > 0)
                .min_by_key(|s| s.written_seq)
            else {
                break;
            };
            total -= oldest.rendered.size();
            oldest.rendered.clear();
        }
    }

    /// After a failed write: the taskset lent to it goes back, or, when the write took it (it
    /// may hold a change that never reached the file), the file is read again so that what
    /// the core places is what the registry says.
    fn take_back(
        &mut self,
        spec: &str,
        lent: bool,
        known: Option<(crate::registry::Fingerprint, Arc<Taskset>)>,
    ) {
        match known {
            Some((fingerprint, taskset)) => {
                let state = self.spec_state(spec);
                state.fingerprint = Some(fingerprint);
                state.taskset = Some(taskset);
            }
            None if lent => {
                self.reload_taskset(spec);
            }
            None => {}
        }
    }

    /// Reads a taskset the core lost its copy of (a write took it and failed). Until that
    /// succeeds the spec stays suspended: the file did not change, so the monitor will not
    /// send it again, and a spec without a taskset would never be scheduled nor hold up
    /// `--until-idle`.
    pub(super) fn reload_taskset(&mut self, spec: &str) -> bool {
        self.spec_state(spec).fingerprint = None;
        match self.registry.load(spec) {
            Ok(taskset) => {
                self.spec_state(spec).taskset = Some(Arc::new(taskset));
                true
            }
            Err(err) => {
                self.write_failed(spec, &format!("cannot read taskset {spec} again: {err}"));
                false
            }
        }
    }

    /// A batch that could not be written: a removed taskset forgets its tasks; any other
    /// error keeps the ends for the next try and gives the picks back.
    fn write_error(
        &mut self,
        spec: &str,
        err: &crate::registry::RegistryError,
        finishes: Vec<Finish>,
        picks: Vec<(Pick, Option<Allocation>)>,
        artifacts: Vec<(TaskKey, serde_json::Value)>,
    ) {
        if err.is_missing() {
            // The taskset was removed: its tasks are gone, so are their claims. Ended
            // attempts give their slots back; picks give back their places and slots.
            log::warn!("taskset {spec} is gone; forgetting its running and picked tasks");
            for finish in &finishes {
                self.claimed.remove(&finish.run.key);
                self.release_after(finish, None);
            }
            for (pick, slot) in picks {
                self.give_back(&pick, slot);
            }
            for (key, _) in &artifacts {
                self.awaiting_patch.remove(key);
            }
            return;
        }
        let what = if finishes.is_empty() {
            format!("claim tasks of {spec}")
        } else {
            let keys: Vec<String> = finishes.iter().map(|f| f.run.key.to_string()).collect();
            format!("record the end of {}", keys.join(", "))
        };
        self.pending.extend(finishes);
        self.pending_artifacts.extend(artifacts);
        // Nothing was claimed: the picks' pool places and slots go back.
        for (pick, slot) in picks {
            self.give_back(&pick, slot);
        }
        self.write_failed(spec, &format!("cannot {what}: {err}"));
    }

    /// A pick that was not claimed (its task changed meanwhile): its pool place and its slot
    /// go back.
    fn give_back(&mut self, pick: &Pick, slot: Option<Allocation>) {
        self.free_place(pick.pool, pick.resources);
        if let (Some(slot), Some(repo)) = (slot, &pick.repo) {
            let hold = SlotHold {
                repo: repo.to_string(),
                slot_id: slot.slot_id,
            };
            self.release(&pick.key, hold, 0, None);
        }
    }

    /// Counts the claimed task as running (its capacity is taken from now on) and hands its
    /// start to a launcher thread.
    fn launch(&mut self, pick: Pick, slot: Option<Allocation>, task: &Task, attempt: u32) {
        let Pick {
            key,
            pool,
            runner_id,
            resources,
            repo,
            footprint,
        } = pick;
        let pool_name = self.pools[pool].name.clone();
        let log_path = self.state.attempt_log(&key.spec, &key.id, attempt);
        let hold = slot.as_ref().zip(repo).map(|(s, repo)| SlotHold {
            repo: repo.to_string(),
            slot_id: s.slot_id.clone(),
        });
        let bootstrap = slot
            .as_ref()
            .zip(hold.as_ref())
            .and_then(|(slot, hold)| self.bootstrap_of(&hold.repo, &slot.slot_path));
        let port_base = slot.as_ref().and_then(|slot| slot.port_base);
        let (workdir, repo_url) = match slot {
            Some(slot) => (slot.slot_path, Some(slot.repo_url)),
            None => (self.state.scratch_dir(&key.spec, &key.id), None),
        };
        let progress = super::stalls::Progress::new(workdir.clone());
        let job = LaunchSpec {
            runner_id: runner_id.clone(),
            pool_name,
            spec: key.spec.to_string(),
            task: task.clone(),
            attempt,
            workdir,
            repo_url,
            log_path: log_path.clone(),
            runner_dir: RunnerDir::new(self.state.runner_dir(&runner_id)),
            owner: self.owner.clone(),
            heartbeat_timeout: self.heartbeat_timeout,
            stop_grace: self.config.dispatcher.stop_grace_period,
            max_log_bytes: self.config.dispatcher.max_log_bytes,
            bootstrap,
            port_base,
        };
        self.running.insert(
            runner_id.clone(),
            Running {
                key,
                runner_id,
                slot: hold,
                resources,
                usage: None,
                ready_at: view::ready_at(task, &task.dispatcher_meta()),
                pool: Some(pool),
                adopted: false,
                attempt,
                pid: None,
                title: task.title.clone(),
                started_at: timefmt::now_string(),
                started: Instant::now(),
                log_path,
                last_heartbeat: None,
                engine_id: None,
                spend: None,
                needs_attention: None,
                stop_detail: None,
                progress,
                footprint,
            },
        );
        match &self.launcher {
            Some(launcher) => launcher.submit(job, self.config.clone()),
            None => self.launch_failed(&job.runner_id, "no launcher threads".into()),
        }
    }

    /// A runner that could not be started: its attempt ends as a failure.
    pub(super) fn launch_failed(&mut self, runner_id: &str, error: String) {
        let Some(run) = self.running.remove(runner_id) else {
            return;
        };
        log::error!("task {}: {error}", run.key);
        if let Some(pool) = run.pool {
            self.free_place(pool, run.resources);
        }
        let exit = Exit::without_status(runner_id, error);
        self.finish(run, exit);
    }

    pub(super) fn write_failed(&mut self, spec: &str, error: &str) {
        log::error!("{error}; retrying in {}s", WRITE_RETRY.as_secs());
        let state = self.spec_state(spec);
        state.suspended_until = Some(Instant::now() + WRITE_RETRY);
        self.queue.remove_spec(spec);
    }
}

/// READY→RUNNING for one pick, if the task is still ready with its dependencies done,
/// recording its slot and branch. Returns the attempt number.
fn claim(
    taskset: &mut Taskset,
    pick: &Pick,
    slot: Option<&Allocation>,
    pool: &str,
    owner: &str,
    now: &str,
) -> Option<u32> {
    let runnable = taskset.task(&pick.key.id).is_some_and(|task| {
        task.state == TaskState::Ready && view::dependencies_done(taskset, task)
    });
    if !runnable {
        return None;
    }
    let task = taskset.task_mut(&pick.key.id)?;
    let mut meta = task.dispatcher_meta();
    // Pin the ready time before updated_at moves, so that a task that comes back to ready
    // (interrupted) keeps its place in line and its starvation age.
    if meta.ready_at.is_none() {
        meta.ready_at = task.updated_at.clone().or_else(|| task.created_at.clone());
    }
    meta.attempts += 1;
    meta.pool = Some(pool.to_string());
    meta.runner_id = Some(pick.runner_id.clone());
    meta.owner = Some(owner.to_string());
    meta.started_at = Some(now.to_string());
    meta.next_attempt_at = None;
    task.set_dispatcher_meta(&meta);
    task.state = TaskState::Running;
    task.runner_id = Some(pick.runner_id.clone());
    task.updated_at = Some(now.to_string());
    if let Some(slot) = slot {
        task.assigned_slot = Some(slot.slot_id.clone());
        task.reserved_branch = Some(slot.branch.clone());
    }
    Some(meta.attempts)
}

/// Writes the end of one attempt into the taskset (under the caller's lock). Also returns,
/// for a failed attempt that held a slot, the ref its worktree is to be saved under: the name
/// is decided here, from the history, so the record names it before the release makes it.
fn apply_finish(
    taskset: &mut Taskset,
    finish: &Finish,
    retry: &RetrySettings,
    now: NaiveDateTime,
) -> (Verdict, Option<String>) {
    let exit = &finish.exit;
    let now_text = timefmt::format(now);
    let Some(task) = taskset.task_mut(&finish.run.key.id) else {
        return (Verdict::Gone, None);
    };
    if task.state != TaskState::Running || task.runner_id.as_deref() != Some(&finish.run.runner_id)
    {
        return (Verdict::Gone, None);
    }
    let mut meta = task.dispatcher_meta();
    meta.last_exit_code = exit.exit_code;
    meta.pid = None;
    task.updated_at = Some(now_text.clone());
    let class = exit
        .class
        .filter(|_| !exit.succeeded() && exit.stopped.is_none());
    let verdict = if exit.succeeded() {
        // Done is done, even if a cancel arrived as the runner was finishing.
        task.state = TaskState::Done;
        meta.last_error = None;
        meta.next_attempt_at = None;
        meta.cancel_requested = false;
        Verdict::Done
    } else if exit.stopped == Some(StopReason::Cancelled) || meta.cancel_requested {
        task.state = TaskState::Failed;
        meta.last_error = Some("cancelled".into());
        meta.next_attempt_at = None;
        meta.cancel_requested = false;
        Verdict::Cancelled
    } else if matches!(
        exit.stopped,
        Some(StopReason::BudgetExceeded | StopReason::StallFailed)
    ) {
        // Retrying would spend more, or stall again: a person decides.
        task.state = TaskState::Failed;
        meta.last_error = Some(exit.describe());
        meta.next_attempt_at = None;
        Verdict::Failed(meta.attempts)
    } else if exit.stopped == Some(StopReason::Interrupted) {
        // Interrupted by our own shutdown: the attempt does not count, and the task keeps
        // its ready time, so it keeps its place in the queue.
        meta.attempts = meta.attempts.saturating_sub(1);
        task.state = TaskState::Ready;
        task.runner_id = None;
        Verdict::Interrupted
    } else if let Some(class) = class
        .filter(|c| c.opens_breaker())
        .filter(|_| meta.requeues < retry.max_infra_retries)
    {
        // The provider, not the task, failed: the breaker holds the pool back, and the task
        // keeps its attempt and its place in line — up to max_infra_retries times, so a runner
        // that always says "rate limited" cannot run forever.
        meta.requeues += 1;
        meta.attempts = meta.attempts.saturating_sub(1);
        meta.last_error = Some(exit.describe());
        meta.next_attempt_at = None;
        task.state = TaskState::Ready;
        task.runner_id = None;
        Verdict::Requeued(class)
    } else {
        meta.last_error = Some(exit.describe());
        let infra = class == Some(FailureClass::Infra);
        if infra {
            meta.attempts = meta.attempts.saturating_sub(1);
            meta.infra_failures += 1;
        }
        let exhausted = if infra {
            meta.infra_failures > retry.max_infra_retries
        } else {
            meta.attempts >= retry.max_attempts
        };
        if exhausted {
            task.state = TaskState::Failed;
            meta.next_attempt_at = None;
            Verdict::Failed(meta.attempts)
        } else {
            let nth = if infra {
                meta.infra_failures
            } else {
                meta.attempts
            };
            let delay = retry.backoff(nth);
            let at = now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
            let at_text = timefmt::format(at);
            meta.next_attempt_at = Some(at_text.clone());
            meta.ready_at = Some(at_text.clone());
            task.state = TaskState::Ready;
            task.runner_id = None;
            Verdict::Retry(at_text, delay)
        }
    };
    let counted = !matches!(verdict, Verdict::Interrupted | Verdict::Requeued(_))
        && class != Some(FailureClass::Infra);
    if let Some(result) = &finish.result {
        task.artifacts.extend(result.artifacts.iter().cloned());
    }
    let spend = finish
        .result
        .as_ref()
        .and_then(|r| r.spend)
        .or(finish.run.spend)
        .map(crate::runner_report::Spend::to_json);
    let checkpoint = (finish.run.slot.is_some() && !exit.succeeded()).then(|| {
        let attempt = finish.run.attempt;
        let nth = 1 + meta.history.iter().filter(|r| r.attempt == attempt).count();
        crate::slots::checkpoint_ref(&finish.run.key.spec, &finish.run.key.id, attempt, nth)
    });
    meta.history.push(AttemptRecord {
        attempt: finish.run.attempt,
        runner_id: finish.run.runner_id.clone(),
        pool: meta.pool.clone(),
        started_at: Some(finish.run.started_at.clone()).filter(|s| !s.is_empty()),
        ended_at: now_text,
        outcome: exit.outcome().to_string(),
        class: class.map(|c| c.as_str().to_string()),
        error: (!exit.succeeded()).then(|| exit.describe()),
        exit_code: exit.exit_code,
        counted,
        log_file: Some(finish.run.log_path.display().to_string()),
        spend,
        checkpoint_ref: checkpoint.clone(),
        ..AttemptRecord::default()
    });
    task.set_dispatcher_meta(&meta);
    (verdict, checkpoint)
}

/// The notification an attempt's end is worth, if any (users pick which kinds they get).
fn notice_for(finish: &Finish, verdict: &Verdict) -> Option<crate::notify::Notice> {
    use crate::notify::Notice;
    let key = &finish.run.key;
    let error = finish.exit.describe();
    let notice = match verdict {
        Verdict::Failed(attempts) => Notice::new(
            "task_failed",
            format!("{key} failed after {attempts} attempts: {error}"),
        )
        .with("attempts", *attempts),
        Verdict::Done => Notice::new(
            "task_done",
            format!("{key} done (attempt {})", finish.run.attempt),
        ),
        Verdict::Retry(at, _) => Notice::new(
            "task_retry",
            format!(
                "{key} attempt {} failed ({error}); retry at {at}",
                finish.run.attempt
            ),
        ),
        _ => return None,
    };
    Some(
        notice
            .task(&key.spec, &key.id)
            .with("runner_id", finish.run.runner_id.as_str())
            .with("error", error),
    )
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
        Verdict::Done => events.push(
            base("TaskCompleted")
                .with("old_state", "running")
                .with("new_state", "done")
                .with("duration_seconds", exit.duration_seconds),
        ),
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
        Verdict::Cancelled => events.push(
            base("TaskCancelled")
                .with("old_state", "running")
                .with("new_state", "failed")
                .with("reason", "cancelled"),
        ),
        Verdict::Interrupted => events.push(
            base("TaskInterrupted")
                .with("old_state", "running")
                .with("new_state", "ready")
                .with("reason", "dispatcher shutdown"),
        ),
        Verdict::Requeued(class) => events.push(
            base("TaskRequeued")
                .with("old_state", "running")
                .with("new_state", "ready")
                .with("class", class.as_str())
                .with("error", exit.describe()),
        ),
        Verdict::Gone => {}
    }
    events
}

fn log_verdict(finish: &Finish, verdict: &Verdict, unblocked: &[String]) {
    let key = &finish.run.key;
    let attempt = finish.run.attempt;
    match verdict {
        Verdict::Done if unblocked.is_empty() => log::info!("{key} done (attempt {attempt})"),
        Verdict::Done => log::info!(
            "{key} done (attempt {attempt}); ready in {}: {}",
            key.spec,
            unblocked.join(", ")
        ),
        Verdict::Retry(at, _) => log::warn!(
            "{key} attempt {attempt} failed ({}); retry at {at}",
            finish.exit.describe()
        ),
        Verdict::Failed(attempts) => log::error!(
            "{key} failed after {attempts} attempts ({})",
            finish.exit.describe()
        ),
        Verdict::Interrupted => log::warn!("{key} interrupted; back to ready"),
        Verdict::Requeued(class) => log::warn!(
            "{key} attempt {attempt} ended {} ({}); back to ready, the attempt not counted",
            class.as_str(),
            finish.exit.describe()
        ),
        Verdict::Cancelled => log::warn!("{key} cancelled"),
        Verdict::Gone => log::warn!(
            "{key} changed in the registry while runner {} ran; its end was not recorded",
            finish.run.runner_id
        ),
    }
}

fn config_max(config: &crate::config::Config, pool: &str) -> usize {
    config
        .agent_pools
        .get(pool)
        .map_or(0, |p| p.max_concurrency)
}

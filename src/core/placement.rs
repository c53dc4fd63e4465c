//! Keeps the core's view of each spec in step with the registry: every task of a taskset is
//! placed in exactly one of the queue, the retry timers or the "no pool serves it" list, or
//! in none (blocked, running, finished). A whole spec is re-placed when its file changed
//! outside; after the core's own writes only the tasks it changed are.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use chrono::NaiveDateTime;

use super::Core;
use crate::registry::{Task, TaskState, Taskset};
use crate::scheduler::{QueuedTask, Request, TaskKey};
use crate::timefmt;
use crate::view;

/// Ready tasks whose retry is not due yet.
#[derive(Default)]
pub(super) struct RetryWait {
    due: BTreeSet<(NaiveDateTime, TaskKey)>,
    at: HashMap<TaskKey, NaiveDateTime>,
}

impl RetryWait {
    pub(super) fn insert(&mut self, key: TaskKey, at: NaiveDateTime) {
        self.remove(&key);
        self.due.insert((at, key.clone()));
        self.at.insert(key, at);
    }

    pub(super) fn remove(&mut self, key: &TaskKey) {
        if let Some(at) = self.at.remove(key) {
            self.due.remove(&(at, key.clone()));
        }
    }

    fn remove_spec(&mut self, spec: &str) {
        let keys: Vec<TaskKey> = self
            .at
            .keys()
            .filter(|k| &*k.spec == spec)
            .cloned()
            .collect();
        for key in keys {
            self.remove(&key);
        }
    }

    pub(super) fn next_due(&self) -> Option<NaiveDateTime> {
        self.due.first().map(|(at, _)| *at)
    }

    /// Takes the entries due at `now` or earlier.
    fn take_due(&mut self, now: NaiveDateTime) -> Vec<TaskKey> {
        let mut keys = Vec::new();
        while let Some((at, key)) = self.due.first().cloned() {
            if at > now {
                break;
            }
            self.due.pop_first();
            self.at.remove(&key);
            keys.push(key);
        }
        keys
    }

    pub(super) fn is_empty(&self) -> bool {
        self.due.is_empty()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &(NaiveDateTime, TaskKey)> {
        self.due.iter()
    }
}

/// What placing the tasks found that needs a registry write or a recovery.
#[derive(Default)]
struct Findings {
    /// A blocked task whose dependencies are all done (a file written by hand).
    promotable: bool,
    /// Tasks RUNNING under a claim nobody serves, with the state dir to recover them from.
    orphans: Vec<(TaskKey, PathBuf)>,
}

impl Core {
    /// The pools that can serve a skill, as indices, and whether they are mapped to it
    /// rather than reached through `default`; cached per skill.
    pub(super) fn route(&mut self, skill: Option<&str>) -> (Arc<[usize]>, bool) {
        let key = skill.map(str::to_string);
        if let Some(route) = self.routes.get(&key) {
            return route.clone();
        }
        let pools: Arc<[usize]> = self
            .config
            .pools_for_skill(skill)
            .into_iter()
            .filter_map(|name| self.pools.iter().position(|p| p.name == name))
            .collect();
        let route = (pools, self.config.skill_is_mapped(skill));
        self.routes.insert(key, route.clone());
        route
    }

    pub(super) fn unqueue_spec(&mut self, spec: &str) {
        self.queue.remove_spec(spec);
        self.budget_waiting.retain(|key, _| &*key.spec != spec);
        self.retry.remove_spec(spec);
        self.unroutable.retain(|key, _| &*key.spec != spec);
    }

    fn unplace(&mut self, key: &TaskKey) {
        self.queue.remove(key);
        self.budget_waiting.remove(key);
        self.retry.remove(key);
        self.unroutable.remove(key);
    }

    /// Re-places every task of a spec from its current taskset (after an outside change).
    pub(super) fn requeue_spec(&mut self, spec: &str) {
        self.unqueue_spec(spec);
        let Some(state) = self.specs.get_mut(spec) else {
            return;
        };
        state.never_runnable = None;
        let Some(taskset) = state.taskset.clone() else {
            return;
        };
        if state.error.is_some() {
            return;
        }
        let suspended = state.suspended_until.is_some();
        let now = timefmt::now();
        let mut findings = Findings::default();
        for task in &taskset.tasks {
            self.place(spec, &taskset, task, now, suspended, &mut findings);
        }
        if !suspended {
            self.act_on(spec, findings);
        }
    }

    /// Takes the taskset the core itself just wrote and re-places only the tasks it changed.
    pub(super) fn refresh_tasks(&mut self, spec: &str, taskset: &Arc<Taskset>, ids: &[String]) {
        let state = self.spec_state(spec);
        state.taskset = Some(taskset.clone());
        state.never_runnable = None;
        let suspended = state.suspended_until.is_some();
        let now = timefmt::now();
        let mut findings = Findings::default();
        for id in ids {
            let key = TaskKey::new(spec, id);
            self.unplace(&key);
            if let Some(task) = taskset.task(id) {
                self.place(spec, taskset, task, now, suspended, &mut findings);
            }
        }
        if !suspended {
            self.act_on(spec, findings);
        }
    }

    fn place(
        &mut self,
        spec: &str,
        taskset: &Taskset,
        task: &Task,
        now: NaiveDateTime,
        suspended: bool,
        findings: &mut Findings,
    ) {
        let key = TaskKey::new(spec, &task.id);
        // Parsed for every placed task, so a malformed `touches` is reported before the
        // task is ready, and its report goes away when it is fixed or the task ends.
        let footprint = self.footprint_of(&key, task);
        match task.state {
            TaskState::Ready => {}
            TaskState::Blocked => {
                findings.promotable |= view::dependencies_done(taskset, task);
                return;
            }
            TaskState::Running => {
                if self.claimed.contains_key(&key) {
                    self.honour_cancel(&key, task);
                } else {
                    let owner = task.dispatcher_meta().owner;
                    if owner.as_deref() == Some(&self.owner) {
                        findings
                            .orphans
                            .push((key, self.state.root().to_path_buf()));
                    } else if let Some(root) =
                        owner.as_deref().and_then(|o| self.owner_gone(o, task))
                    {
                        findings.orphans.push((key, root));
                    }
                }
                return;
            }
            TaskState::Done | TaskState::Failed => return,
        }
        let reserved = self.claimed.contains_key(&key)
            || self.allocating.contains_key(&key)
            || self.allocated.iter().any(|(pick, _)| pick.key == key)
            || self.awaiting_patch.contains(&key);
        if reserved || !view::dependencies_done(taskset, task) {
            return;
        }
        let (pools, direct) = self.route(task.required_skill.as_deref());
        if pools.is_empty() {
            if self.unroutable_logged.insert(key.clone()) {
                log::warn!(
                    "task {key} needs skill {:?} but no pool serves it (see [skill_mapping]); it stays queued",
                    task.required_skill.as_deref().unwrap_or("(none)")
                );
            }
            self.unroutable.insert(key, task.required_skill.clone());
            return;
        }
        let meta = task.dispatcher_meta();
        if let Some(at) = view::next_attempt_at(&meta).filter(|at| *at > now) {
            self.retry.insert(key, at);
            return;
        }
        if let Some(why) = self.spec_budget_refuses(spec, task) {
            self.set_aside_for_budget(key, why);
            return;
        }
        if !suspended {
            let repo = self.repo_of(task);
            self.queue.insert(QueuedTask {
                key,
                priority: task.priority,
                ready_at: view::ready_at(task, &meta),
                pools,
                repo,
                direct,
                resources: Request::of_task(task),
                footprint,
            });
        }
    }

    fn act_on(&mut self, spec: &str, findings: Findings) {
        if findings.promotable {
            self.promote_unblocked(spec);
        }
        for (key, state_root) in findings.orphans {
            self.recover_claimed(&key, &state_root);
        }
    }

    /// Moves retries whose time has come into the queue.
    pub(super) fn release_due_retries(&mut self) {
        let due = self.retry.take_due(timefmt::now());
        let mut by_spec: HashMap<String, Vec<String>> = HashMap::new();
        for key in due {
            by_spec
                .entry(key.spec.to_string())
                .or_default()
                .push(key.id.to_string());
        }
        for (spec, ids) in by_spec {
            let Some(taskset) = self.specs.get(&spec).and_then(|s| s.taskset.clone()) else {
                continue;
            };
            self.refresh_tasks(&spec, &taskset, &ids);
        }
    }

    /// Fills in, for specs that changed, which tasks can never run (for status and idle).
    pub(super) fn compute_never_runnable(&mut self) {
        for state in self.specs.values_mut() {
            if state.never_runnable.is_some() {
                continue;
            }
            let list = match &state.taskset {
                Some(taskset) => {
                    let mut list: Vec<(String, String)> =
                        view::never_runnable(taskset).into_iter().collect();
                    list.sort();
                    list
                }
                None => Vec::new(),
            };
            state.never_runnable = Some(list);
        }
    }
}

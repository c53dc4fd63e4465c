//! The core's side of task footprints (`metadata.touches`): parsing them when a task is
//! placed (malformed ones reported once, then ignored), the footprints held by the tasks
//! that run or are on their way, and the log line and event once per wait.
//!
//! The rule itself lives in the planner: a queued task whose footprint overlaps a held one
//! of the same repository is passed over, and the tasks behind it still get their turn.

use std::sync::Arc;

use super::Core;
use crate::registry::{Event, Task, TaskState};
use crate::scheduler::{Footprint, HeldFootprints, TaskKey};
use crate::status::{FootprintErrorStatus, FootprintHolder, FootprintWaitStatus};

impl Core {
    /// The footprint a task declares. A malformed `touches` is logged once (again only if
    /// the mistake changes), kept for `status`, and counts as no footprint. Without
    /// `touches`, and with `learn_footprints`, the files its earlier attempts changed.
    pub(super) fn footprint_of(&mut self, key: &TaskKey, task: &Task) -> Option<Arc<Footprint>> {
        let finished = matches!(task.state, TaskState::Done | TaskState::Failed);
        if finished || !task.metadata.contains_key("touches") {
            if !self.footprint_errors.is_empty() {
                self.footprint_errors.remove(key);
            }
            let learn = !finished && self.config.dispatcher.learn_footprints;
            return learn
                .then(|| Footprint::learned(&task.metadata, &task.artifacts))
                .flatten()
                .map(Arc::new);
        }
        match Footprint::of_task(&task.metadata) {
            Ok(footprint) => {
                self.footprint_errors.remove(key);
                footprint.map(Arc::new)
            }
            Err(err) => {
                let error = err.to_string();
                if self.footprint_errors.get(key) != Some(&error) {
                    log::warn!("task {key}: {error}; it is scheduled as if it had no footprint");
                    self.footprint_errors.insert(key.clone(), error);
                }
                None
            }
        }
    }

    /// Footprints of the runners and of the picks waiting for their slot or their claim.
    pub(super) fn held_footprints(&self) -> HeldFootprints {
        let mut held = HeldFootprints::new();
        let running = self.running.values().map(|r| (&r.key, &r.footprint));
        let picked = self
            .allocating
            .values()
            .chain(self.allocated.iter().map(|(pick, _)| pick))
            .map(|p| (&p.key, &p.footprint));
        for (key, footprint) in running.chain(picked) {
            if let Some(footprint) = footprint {
                held.entry(footprint.repo.clone())
                    .or_default()
                    .push((key.clone(), footprint.clone()));
            }
        }
        held
    }

    /// Logs (and records as a `TaskWaitingForFootprint` event) each task the planner passed
    /// over for its footprint, once per wait: again only when it waits for another task.
    pub(super) fn note_footprint_waits(
        &mut self,
        waits: Vec<(TaskKey, TaskKey)>,
        held: &HeldFootprints,
    ) {
        for (key, holder) in waits {
            if self.footprint_logged.get(&key) == Some(&holder) {
                continue;
            }
            let mine = self.queue.footprint_of(&key);
            let theirs = held
                .values()
                .flatten()
                .find(|(k, _)| *k == holder)
                .map(|(_, f)| f.clone());
            let (paths, holder_paths) = match (mine, theirs) {
                (Some(mine), Some(theirs)) => mine
                    .overlap(&theirs)
                    .map(|o| (o.mine, o.theirs))
                    .unwrap_or_default(),
                _ => Default::default(),
            };
            log::info!(
                "task {key} waits for {holder}: both touch {} ({})",
                paths.join(", "),
                holder_paths.join(", ")
            );
            self.outbox.push(
                Event::new("TaskWaitingForFootprint", &key.spec, Some(&key.id))
                    .with("conflicts_with_spec", &*holder.spec)
                    .with("conflicts_with_task_id", &*holder.id)
                    .with("paths", paths)
                    .with("conflicting_paths", holder_paths),
            );
            self.footprint_logged.insert(key, holder);
        }
    }

    /// A wait ends when the task leaves the queue (picked, changed, removed): forget it, so
    /// the next wait is logged again.
    pub(super) fn forget_ended_footprint_waits(&mut self) {
        if !self.footprint_logged.is_empty() {
            let queue = &self.queue;
            self.footprint_logged.retain(|key, _| queue.contains(key));
        }
    }

    /// `status`: queued tasks whose footprint overlaps a held one, with the holder.
    pub(super) fn footprint_wait_report(&self) -> Vec<FootprintWaitStatus> {
        if self.queue.is_empty() {
            return Vec::new();
        }
        let held = self.held_footprints();
        if held.is_empty() {
            return Vec::new();
        }
        self.queue
            .waiting_for_footprints(&held)
            .map(|(key, footprint, (holder, theirs))| {
                let overlap = footprint.overlap(theirs).unwrap_or_default();
                FootprintWaitStatus {
                    spec: key.spec.to_string(),
                    task_id: key.id.to_string(),
                    repo: footprint.repo.to_string(),
                    conflicts_with: FootprintHolder {
                        spec: holder.spec.to_string(),
                        task_id: holder.id.to_string(),
                        paths: overlap.theirs,
                    },
                    paths: overlap.mine,
                }
            })
            .collect()
    }

    /// `status`: tasks whose `touches` could not be used, while their taskset still has them.
    pub(super) fn footprint_error_report(&self) -> Vec<FootprintErrorStatus> {
        self.footprint_errors
            .iter()
            .filter(|(key, _)| {
                self.specs
                    .get(&*key.spec)
                    .and_then(|s| s.taskset.as_ref())
                    .is_some_and(|ts| ts.task(&key.id).is_some())
            })
            .map(|(key, error)| FootprintErrorStatus {
                spec: key.spec.to_string(),
                task_id: key.id.to_string(),
                error: error.clone(),
            })
            .collect()
    }
}

//! The core's side of workspace slots: which tasks need one, free slots per repository,
//! allocation before the claim, release (with the patch artifact) after each attempt. The
//! git work itself happens on the slot threads.
//!
//! Order for a task that names a managed repository: the planner reserves a free slot of
//! its repository and a place in its pool; a slot thread allocates the slot; the next commit
//! claims the task with `assigned_slot` and `reserved_branch` set; the runner starts in the
//! slot. No free slot → the task waits in the queue without holding up other repositories.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use serde_json::json;

use super::{Core, Finish, SlotHold};
use crate::registry::{Task, TaskState};
use crate::scheduler::TaskKey;
use crate::slot_worker::{SlotCounts, SlotEvent, SlotJob};
use crate::slots::Release;
use crate::timefmt;

impl Core {
    /// The managed repository a task's runner needs a slot of, if any. A task that names a
    /// repository without a pool runs in a scratch directory, as one that names none.
    pub(super) fn repo_of(&mut self, task: &Task) -> Option<Arc<str>> {
        let repo = task.metadata.get("repo_name")?.as_str()?;
        let managed = match self.repo_managed.get(repo) {
            Some(managed) => *managed,
            None => {
                let managed = crate::names::validate("repository name", repo).is_ok()
                    && self.slots.has_repo(repo);
                if !managed {
                    log::info!(
                        "repository {repo:?} has no slot pool ([repo_pool]); its tasks run in scratch directories"
                    );
                }
                self.repo_managed.insert(repo.to_string(), managed);
                managed
            }
        };
        managed.then(|| Arc::from(repo))
    }

    /// What a fresh slot of `repo` at `slot_path` needs before the runner: the configured
    /// `copy_files` (from the main checkout to the same place in the slot) and `setup`.
    pub(super) fn bootstrap_of(
        &self,
        repo: &str,
        slot_path: &std::path::Path,
    ) -> Option<crate::bootstrap::Bootstrap> {
        let config = self
            .config
            .repo_pool
            .repos
            .iter()
            .find(|r| r.name == repo)?;
        let wanted = &config.bootstrap;
        if wanted.setup.is_empty() && wanted.copy_files.is_empty() {
            return None;
        }
        // Config loading refused copy_files without a local url.
        let main = config.main_checkout().unwrap_or_default();
        let copy_files = wanted
            .copy_files
            .iter()
            .map(|path| crate::bootstrap::CopyFile {
                from: main.join(path),
                to: slot_path.join(path),
            })
            .collect();
        Some(crate::bootstrap::Bootstrap {
            setup: wanted.setup.clone(),
            setup_timeout: wanted.setup_timeout,
            copy_files,
        })
    }

    /// The slot a running task holds, from the registry.
    pub(super) fn slot_hold_of(&mut self, task: &Task) -> Option<SlotHold> {
        let repo = self.repo_of(task)?;
        let slot_id = task.assigned_slot.clone()?;
        Some(SlotHold {
            repo: repo.to_string(),
            slot_id,
        })
    }

    /// After the first full read of the registry: create the pools and free the slots whose
    /// tasks are no longer running (a crash left them allocated).
    pub(super) fn start_slots(&mut self) {
        let running_slots: Vec<String> = self
            .specs
            .values()
            .filter_map(|s| s.taskset.as_ref())
            .flat_map(|ts| ts.tasks.iter())
            .filter(|t| t.state == TaskState::Running)
            .filter_map(|t| t.assigned_slot.clone())
            .collect();
        self.send_slot_job(SlotJob::Start { running_slots });
    }

    fn send_slot_job(&mut self, job: SlotJob) {
        self.slot_jobs_sent += 1;
        match &self.slot_workers {
            Some(workers) => workers.send(job),
            None => log::error!("no slot threads: a slot job was dropped"),
        }
    }

    /// Once per poll interval, when no slot job is in flight, has the slot files counted
    /// again, so that slots repaired by `dispatcher slots sync` or freed by another process
    /// come back into use without a restart.
    pub(super) fn recount_slots_when_due(&mut self) {
        let due = self.slots_ready
            && self.recount_in_flight.is_none()
            && !self.free_slots.is_empty()
            && self.allocating.is_empty()
            && self.releasing == 0
            && self.last_slot_recount.elapsed() >= self.config.dispatcher.poll_interval;
        if due {
            self.send_slot_job(SlotJob::Recount);
            self.recount_in_flight = Some(self.slot_jobs_sent);
        }
    }

    /// Takes the counts of the slot files as ours, unless a slot job raced the reading.
    fn apply_recount(&mut self, counts: SlotCounts) {
        self.last_slot_recount = Instant::now();
        let Some(sent_at) = self.recount_in_flight.take() else {
            return;
        };
        let raced =
            sent_at != self.slot_jobs_sent || !self.allocating.is_empty() || self.releasing > 0;
        if raced {
            return;
        }
        let SlotCounts { free, broken } = counts;
        for (repo, free) in free {
            let old = self.free_slots.insert(Arc::from(repo.as_str()), free);
            if old.is_some_and(|old| old != free) {
                log::info!("slots: {repo} has {free} free slots now, as its slot files say");
            }
        }
        self.note_broken_slots(&broken);
    }

    /// `slot_errors` lists the repositories with slots in `error`: those found on disk too,
    /// and none whose slots were all repaired.
    fn note_broken_slots(&mut self, broken: &HashMap<String, usize>) {
        self.slot_errors
            .retain(|repo, _| broken.get(repo).is_some_and(|&n| n > 0));
        for (repo, &n) in broken {
            if n > 0 && !self.slot_errors.contains_key(repo) {
                self.slot_errors.insert(
                    repo.clone(),
                    format!("{n} slot(s) in error: `dispatcher slots sync` repairs them"),
                );
            }
        }
    }

    /// Sends the pick to a slot thread; its pool place is already reserved.
    /// A task whose last slot is still being released waits for that release, so that its
    /// next attempt sees the checkpoint the release saves.
    pub(super) fn allocate(&mut self, pick: super::Pick, repo: &str) {
        self.queue.remove(&pick.key);
        let job = SlotJob::Allocate {
            key: pick.key.clone(),
            repo: repo.to_string(),
        };
        if self.releases_of.contains_key(&pick.key) {
            self.allocations_after_release.push(job);
        } else {
            self.send_slot_job(job);
        }
        self.allocating.insert(pick.key.clone(), pick);
    }

    /// Gives a slot back (its changes saved as a patch first), after the attempt's end is
    /// in the registry or when a claim did not happen.
    ///
    /// Before the slot threads have reported the free slots at start-up, releases wait:
    /// that report replaces the counts, so a release counted before it would be lost.
    ///
    /// `checkpoint`: the ref the worktree of a failed attempt is saved under first.
    pub(super) fn release(
        &mut self,
        key: &TaskKey,
        hold: SlotHold,
        attempt: u32,
        checkpoint: Option<String>,
    ) {
        self.releasing += 1;
        *self.releases_of.entry(key.clone()).or_default() += 1;
        let job = SlotJob::Release {
            key: key.clone(),
            repo: hold.repo,
            slot_id: hold.slot_id,
            patch_path: self.state.patch_path(&key.spec, &key.id, attempt),
            checkpoint,
        };
        if self.slots_ready {
            self.send_slot_job(job);
        } else {
            self.early_releases.push(job);
        }
    }

    pub(super) fn release_after(&mut self, finish: &Finish, checkpoint: Option<String>) {
        if let Some(hold) = finish.run.slot.clone() {
            self.release(&finish.run.key, hold, finish.run.attempt, checkpoint);
        }
    }

    /// A release of `key` is answered: allocations that waited for it go out.
    fn release_done(&mut self, key: &TaskKey) {
        if let Some(n) = self.releases_of.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                self.releases_of.remove(key);
            }
        }
        let (ready, waiting): (Vec<SlotJob>, Vec<SlotJob>) =
            std::mem::take(&mut self.allocations_after_release)
                .into_iter()
                .partition(|job| match job {
                    SlotJob::Allocate { key, .. } => !self.releases_of.contains_key(key),
                    _ => true,
                });
        self.allocations_after_release = waiting;
        for job in ready {
            self.send_slot_job(job);
        }
    }

    pub(super) fn on_slot(&mut self, event: SlotEvent) {
        match event {
            SlotEvent::Ready(SlotCounts { free, broken }) => {
                for (repo, n) in free {
                    self.free_slots.insert(Arc::from(repo.as_str()), n);
                }
                self.note_broken_slots(&broken);
                self.last_slot_recount = Instant::now();
                self.slots_ready = true;
                for job in std::mem::take(&mut self.early_releases) {
                    self.send_slot_job(job);
                }
            }
            SlotEvent::Allocated { key, repo, result } => {
                let Some(pick) = self.allocating.remove(&key) else {
                    return;
                };
                match result {
                    Ok(Some(allocation)) if self.drain.is_none() => {
                        self.allocated.push((pick, allocation));
                    }
                    Ok(Some(allocation)) => {
                        // Draining: the claim will not happen; hand the slot back at once.
                        self.free_place(pick.pool, pick.resources);
                        let hold = SlotHold {
                            repo,
                            slot_id: allocation.slot_id,
                        };
                        self.release(&key, hold, 0, None);
                    }
                    Ok(None) => {
                        // Our count was ahead of the files (another process took a slot).
                        self.free_slots.insert(Arc::from(repo.as_str()), 0);
                        self.unreserve(&pick);
                    }
                    Err(error) => {
                        log::error!("no slot for {key}: {error}; the task waits for another slot");
                        self.slot_errors.insert(repo, error);
                        self.unreserve(&pick);
                    }
                }
            }
            SlotEvent::Recounted(counts) => self.apply_recount(counts),
            SlotEvent::Released {
                key,
                repo,
                slot_id,
                result,
            } => {
                self.releasing -= 1;
                self.release_done(&key);
                match result {
                    Ok(Release::NotHeld) => {}
                    Ok(Release::Released(patch)) => {
                        *self.free_slots.entry(Arc::from(repo.as_str())).or_insert(0) += 1;
                        if let Some(patch) = patch {
                            if self.config.dispatcher.learn_footprints {
                                // Until the patch is in the registry the task's footprint
                                // is not known: take it out of line until then.
                                self.queue.remove(&key);
                                self.retry.remove(&key);
                                self.awaiting_patch.insert(key.clone());
                            }
                            let artifact = json!({
                                "type": "diff",
                                "uri": format!("file://{}", patch.path.display()),
                                "size_bytes": patch.size_bytes,
                                "created_at": timefmt::now_string(),
                                "metadata": {"slot_id": slot_id, "paths": patch.paths},
                            });
                            self.pending_artifacts.push((key, artifact));
                        }
                    }
                    Err(error) => {
                        log::error!("releasing slot {slot_id} of {key} failed: {error}; the slot is out of use until `dispatcher slots sync`");
                        self.slot_errors.insert(repo, error);
                    }
                }
            }
        }
        self.snapshot_dirty = true;
    }

    /// A pick that will not be claimed: its pool place is free again and the task goes back
    /// to the queue.
    fn unreserve(&mut self, pick: &super::Pick) {
        self.free_place(pick.pool, pick.resources);
        let spec = pick.key.spec.to_string();
        if let Some(taskset) = self.specs.get(&spec).and_then(|s| s.taskset.clone()) {
            self.refresh_tasks(&spec, &taskset, &[pick.key.id.to_string()]);
        }
    }

    /// Whether a task waiting for a slot of `repo` can still get one.
    pub(super) fn slot_may_come(&self, repo: &str) -> bool {
        !self.slots_ready
            || self.free_slots.get(repo).copied().unwrap_or(0) > 0
            || self.releasing > 0
            || !self.allocating.is_empty()
            || self
                .running
                .values()
                .any(|r| r.slot.as_ref().is_some_and(|s| s.repo == repo))
    }
}

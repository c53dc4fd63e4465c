//! Slot threads: every git command of the workspace slots (sync, allocate, release, recover)
//! runs here, never on the core thread and never under a registry lock. The core sends jobs
//! and gets one answer per job on its own channel.

use std::collections::HashMap;
use std::path::PathBuf;
use std::thread::{self, JoinHandle};

use crossbeam_channel::Sender;

use crate::scheduler::TaskKey;
use crate::slots::{Allocation, Release, SlotManager, SlotState};

/// Two, so a slow fetch for one repository does not hold up a release in another.
const WORKERS: usize = 2;

pub enum SlotJob {
    /// Create or grow the configured pools, free the slots whose tasks are not running (by
    /// slot id), then report how many slots each pool has free.
    Start {
        running_slots: Vec<String>,
    },
    Allocate {
        key: TaskKey,
        repo: String,
    },
    Release {
        key: TaskKey,
        repo: String,
        slot_id: String,
        patch_path: PathBuf,
        /// For a failed attempt: the ref its worktree is saved under before the clean.
        checkpoint: Option<String>,
    },
    /// Read the slot files again: slots repaired by `dispatcher slots sync` or freed by
    /// another process while we run are otherwise never seen.
    Recount,
}

/// Slots per repository as the slot files say.
#[derive(Debug, Default)]
pub struct SlotCounts {
    pub free: HashMap<String, usize>,
    /// Slots in `error`, out of use until `slots sync` repairs them.
    pub broken: HashMap<String, usize>,
}

pub enum SlotEvent {
    /// The counts after `Start`.
    Ready(SlotCounts),
    /// The counts after `Recount`.
    Recounted(SlotCounts),
    Allocated {
        key: TaskKey,
        repo: String,
        result: Result<Option<Allocation>, String>,
    },
    Released {
        key: TaskKey,
        repo: String,
        slot_id: String,
        result: Result<Release, String>,
    },
}

pub struct SlotWorkers {
    jobs: Option<Sender<SlotJob>>,
    threads: Vec<JoinHandle<()>>,
}

impl SlotWorkers {
    pub fn spawn(
        manager: &SlotManager,
        events: &Sender<SlotEvent>,
    ) -> std::io::Result<SlotWorkers> {
        let (jobs, inbox) = crossbeam_channel::unbounded::<SlotJob>();
        let mut threads = Vec::with_capacity(WORKERS);
        for n in 0..WORKERS {
            let inbox = inbox.clone();
            let manager = manager.clone();
            let events = events.clone();
            threads.push(
                thread::Builder::new()
                    .name(format!("slots-{n}"))
                    .spawn(move || {
                        for job in inbox {
                            if events.send(run(&manager, job)).is_err() {
                                log::debug!("core gone: slot answer dropped");
                            }
                        }
                    })?,
            );
        }
        Ok(SlotWorkers {
            jobs: Some(jobs),
            threads,
        })
    }

    pub fn send(&self, job: SlotJob) {
        if let Some(jobs) = &self.jobs {
            if jobs.send(job).is_err() {
                log::error!("slot threads gone: a slot job was dropped");
            }
        }
    }
}

impl Drop for SlotWorkers {
    fn drop(&mut self) {
        // Queued releases still run: a slot must not stay allocated to a finished task.
        self.jobs.take();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn run(manager: &SlotManager, job: SlotJob) -> SlotEvent {
    match job {
        SlotJob::Start { running_slots } => {
            match manager.sync() {
                Ok(changes) => changes.iter().for_each(|c| log::info!("slots: {c}")),
                Err(err) => log::error!("slots: {err}"),
            }
            match manager.recover(&|slot_id| running_slots.iter().any(|s| s == slot_id)) {
                Ok(freed) => freed.iter().for_each(|c| log::info!("slots: {c}")),
                Err(err) => log::error!("slots: {err}"),
            }
            SlotEvent::Ready(count_slots(manager))
        }
        SlotJob::Allocate { key, repo } => {
            let result = manager
                .allocate(&repo, &key.spec, &key.id)
                .map_err(|err| err.to_string());
            SlotEvent::Allocated { key, repo, result }
        }
        SlotJob::Release {
            key,
            repo,
            slot_id,
            patch_path,
            checkpoint,
        } => {
            let holder = format!("{}/{}", key.spec, key.id);
            let result = manager
                .release_held(&slot_id, Some(&holder), &patch_path, checkpoint.as_deref())
                .map_err(|err| err.to_string());
            SlotEvent::Released {
                key,
                repo,
                slot_id,
                result,
            }
        }
        SlotJob::Recount => SlotEvent::Recounted(count_slots(manager)),
    }
}

/// Available and broken slots per pool, as the slot files say.
fn count_slots(manager: &SlotManager) -> SlotCounts {
    let pools = match manager.slot_states() {
        Ok(pools) => pools,
        Err(err) => {
            log::error!("slots: {err}");
            return SlotCounts::default();
        }
    };
    let mut counts = SlotCounts::default();
    for (repo, states) in pools {
        let in_state = |state| states.iter().filter(|&&s| s == state).count();
        counts
            .broken
            .insert(repo.clone(), in_state(SlotState::Error));
        counts.free.insert(repo, in_state(SlotState::Available));
    }
    counts
}

//! Live control: change a task's priority, retry a failed task, cancel a task, switch a pool
//! on or off. Each works whether or not a dispatcher runs: task changes are registry writes
//! (the running dispatcher sees them at its next poll), pool switches live in the state
//! dir's `pools.json` (read at every poll). Each records an event.

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::fsutil;
use crate::registry::{json, Event, EventLog, Registry, TaskState};
use crate::statedir::StateDir;
use crate::supervisor::{Liveness, RunnerDir, StopReason};
use crate::sys;
use crate::timefmt;
use crate::view;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{0:?} is not SPEC/TASK_ID")]
    BadTaskRef(String),
    #[error("no task {spec}/{id} in the registry")]
    NoSuchTask { spec: String, id: String },
    #[error("task {spec}/{id} is {state}: only a failed task can be retried")]
    NotFailed {
        spec: String,
        id: String,
        state: TaskState,
    },
    #[error("task {spec}/{id} is already {state}")]
    AlreadyFinished {
        spec: String,
        id: String,
        state: TaskState,
    },
    #[error("no pool named {0:?} in the configuration")]
    NoSuchPool(String),
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
    #[error("cannot write {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// Splits `SPEC/TASK_ID` (the task id may not contain `/`; the spec may not either).
pub fn parse_task_ref(text: &str) -> Result<(String, String), ControlError> {
    match text.split_once('/') {
        Some((spec, id)) if !spec.is_empty() && !id.is_empty() && !id.contains('/') => {
            Ok((spec.to_string(), id.to_string()))
        }
        _ => Err(ControlError::BadTaskRef(text.to_string())),
    }
}

fn missing(spec: &str, id: &str) -> ControlError {
    ControlError::NoSuchTask {
        spec: spec.into(),
        id: id.into(),
    }
}

/// Sets a task's priority; returns the old one.
pub fn set_priority(
    registry: &Registry,
    events: &EventLog,
    spec: &str,
    id: &str,
    priority: i64,
) -> Result<i64, ControlError> {
    let now = timefmt::now_string();
    let (old, _) = registry.update(spec, |ts| match ts.task_mut(id) {
        Some(task) => {
            let old = task.priority;
            task.priority = priority;
            // Without `ready_at`, `updated_at` is the ready time: pin it before touching
            // `updated_at`, so the task keeps its place in line (fifo, ties, starvation).
            let mut meta = task.dispatcher_meta();
            if task.state == TaskState::Ready && meta.ready_at.is_none() {
                let ready = view::ready_at(task, &meta);
                if ready != chrono::NaiveDateTime::MIN {
                    meta.ready_at = Some(timefmt::format(ready));
                    task.set_dispatcher_meta(&meta);
                }
            }
            task.updated_at = Some(now.clone());
            (Some(old), old != priority)
        }
        None => (None, false),
    })?;
    let old = old.ok_or_else(|| missing(spec, id))?;
    events.append(&[Event::new("TaskPriorityChanged", spec, Some(id))
        .with("old_priority", old)
        .with("new_priority", priority)]);
    Ok(old)
}

/// A failed task back to ready with its attempts reset.
pub fn retry(
    registry: &Registry,
    events: &EventLog,
    spec: &str,
    id: &str,
) -> Result<(), ControlError> {
    let now = timefmt::now_string();
    let (found, _) = registry.update(spec, |ts| {
        let Some(task) = ts.task_mut(id) else {
            return (None, false);
        };
        if task.state != TaskState::Failed {
            return (Some(Err(task.state)), false);
        }
        let mut meta = task.dispatcher_meta();
        meta.attempts = 0;
        meta.infra_failures = 0;
        meta.requeues = 0;
        meta.next_attempt_at = None;
        meta.last_error = None;
        meta.cancel_requested = false;
        meta.ready_at = Some(now.clone());
        task.set_dispatcher_meta(&meta);
        task.state = TaskState::Ready;
        task.runner_id = None;
        task.updated_at = Some(now.clone());
        (Some(Ok(())), true)
    })?;
    match found {
        None => Err(missing(spec, id)),
        Some(Err(state)) => Err(ControlError::NotFailed {
            spec: spec.into(),
            id: id.into(),
            state,
        }),
        Some(Ok(())) => {
            events.append(&[Event::new("TaskRetried", spec, Some(id))
                .with("old_state", "failed")
                .with("new_state", "ready")
                .with("reason", "dispatcher retry")]);
            Ok(())
        }
    }
}

/// What `cancel` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Cancelled {
    /// It was waiting: now failed.
    Queued,
    /// It runs under a dispatcher, which stops its runner and fails it.
    Requested,
    /// It ran with no dispatcher watching: its runner was stopped here and it is failed.
    Stopped,
}

/// Cancels a task: a waiting one is failed at once with reason `cancelled`; a running one
/// has its runner stopped (by the dispatcher that watches it, or here if none does) and is
/// then failed with reason `cancelled`.
pub fn cancel(
    registry: &Registry,
    events: &EventLog,
    state: &StateDir,
    spec: &str,
    id: &str,
) -> Result<Cancelled, ControlError> {
    let now = timefmt::now_string();
    // A running task whose dispatcher is gone (our state dir, no instance lock) is stopped
    // here, since nobody else will.
    let dispatcher_alive = state.lock_is_held();
    let (outcome, _) = registry.update(spec, |ts| {
        let Some(task) = ts.task_mut(id) else {
            return (None, false);
        };
        let mut meta = task.dispatcher_meta();
        let outcome = match task.state {
            TaskState::Done | TaskState::Failed => return (Some(Err(task.state)), false),
            TaskState::Running if dispatcher_alive => {
                meta.cancel_requested = true;
                Cancelled::Requested
            }
            TaskState::Running => {
                if let Some(runner_id) = task.runner_id.as_deref() {
                    stop_orphan(state, runner_id);
                }
                Cancelled::Stopped
            }
            TaskState::Ready | TaskState::Blocked => Cancelled::Queued,
        };
        if outcome != Cancelled::Requested {
            meta.last_error = Some("cancelled".into());
            meta.next_attempt_at = None;
            task.state = TaskState::Failed;
        }
        task.set_dispatcher_meta(&meta);
        task.updated_at = Some(now.clone());
        (Some(Ok(outcome)), true)
    })?;
    match outcome {
        None => Err(missing(spec, id)),
        Some(Err(state)) => Err(ControlError::AlreadyFinished {
            spec: spec.into(),
            id: id.into(),
            state,
        }),
        Some(Ok(outcome)) => {
            let event = match outcome {
                Cancelled::Requested => Event::new("TaskCancelRequested", spec, Some(id)),
                _ => Event::new("TaskCancelled", spec, Some(id))
                    .with("new_state", "failed")
                    .with("reason", "cancelled"),
            };
            events.append(&[event]);
            Ok(outcome)
        }
    }
}

/// Stops a runner whose dispatcher is gone: the stop reason, then SIGTERM to its supervisor
/// (which escalates to KILL after the grace period), if its lock says it is alive.
fn stop_orphan(state: &StateDir, runner_id: &str) {
    if crate::names::validate("runner id", runner_id).is_err() {
        return;
    }
    let dir = RunnerDir::new(state.runner_dir(runner_id));
    if !matches!(dir.liveness(), Liveness::Alive) {
        return;
    }
    let _ = dir.request_stop(StopReason::Cancelled);
    if let Some(info) = dir.read_supervisor() {
        if let Ok(pidfd) = sys::PidFd::open(info.supervisor_pid) {
            // The lock is checked again after opening: the pid cannot have been reused by
            // then if the supervisor still holds it.
            if matches!(dir.liveness(), Liveness::Alive) {
                pidfd.signal(libc::SIGTERM);
            }
        }
    }
}

/// `pools.json`: pools switched off at run time.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct PoolOverrides {
    #[serde(default)]
    pub disabled: BTreeSet<String>,
}

impl PoolOverrides {
    /// The overrides in effect (none when the file is missing or unreadable).
    pub fn read(state: &StateDir) -> PoolOverrides {
        let path = state.pool_overrides_path();
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return PoolOverrides::default()
            }
            Err(err) => {
                log::warn!(
                    "cannot read {}: {err}; no pool is switched off",
                    path.display()
                );
                return PoolOverrides::default();
            }
        };
        serde_json::from_slice(&bytes).unwrap_or_else(|err| {
            log::warn!("invalid {}: {err}; no pool is switched off", path.display());
            PoolOverrides::default()
        })
    }
}

/// Switches a pool on or off; returns whether that changed anything.
pub fn set_pool_enabled(
    state: &StateDir,
    pool: &str,
    known: bool,
    enabled: bool,
) -> Result<bool, ControlError> {
    if !known {
        return Err(ControlError::NoSuchPool(pool.to_string()));
    }
    let mut overrides = PoolOverrides::read(state);
    let changed = if enabled {
        overrides.disabled.remove(pool)
    } else {
        overrides.disabled.insert(pool.to_string())
    };
    if changed {
        let path = state.pool_overrides_path();
        let bytes = serde_json::to_vec_pretty(&overrides).expect("overrides serialize");
        fsutil::write_atomic(&path, &bytes).map_err(|source| ControlError::Io { path, source })?;
        let name = if enabled {
            "PoolEnabled"
        } else {
            "PoolDisabled"
        };
        append_dispatcher_event(state, &Event::new(name, "", None).with("pool", pool));
    }
    Ok(changed)
}

/// Appends an event that belongs to no spec to `<state_dir>/events.jsonl`.
pub fn append_dispatcher_event(state: &StateDir, event: &Event) {
    let path = state.dispatcher_events_path();
    let written = json::to_line_bytes(event)
        .map_err(std::io::Error::other)
        .and_then(|mut line| {
            line.push(b'\n');
            append(&path, &line)
        });
    if let Err(err) = written {
        log::warn!("cannot append to {}: {err}", path.display());
    }
}

fn append(path: &Path, line: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = OpenOptions::new().create(true).append(true).open(path)?;
    file.write_all(line)?;
    file.sync_data()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_refs_split_at_the_slash() {
        assert_eq!(
            parse_task_ref("chat/1.2").unwrap(),
            ("chat".into(), "1.2".into())
        );
        assert!(parse_task_ref("chat").is_err());
        assert!(parse_task_ref("/1").is_err());
        assert!(parse_task_ref("a/b/c").is_err());
    }

    #[test]
    fn pool_switches_persist_and_report_changes() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        assert!(set_pool_enabled(&state, "gpu", true, false).unwrap());
        assert!(!set_pool_enabled(&state, "gpu", true, false).unwrap());
        assert!(PoolOverrides::read(&state).disabled.contains("gpu"));
        assert!(set_pool_enabled(&state, "gpu", true, true).unwrap());
        assert!(PoolOverrides::read(&state).disabled.is_empty());
        assert!(matches!(
            set_pool_enabled(&state, "nope", false, true),
            Err(ControlError::NoSuchPool(_))
        ));
        let events = std::fs::read_to_string(state.dispatcher_events_path()).unwrap();
        assert_eq!(events.lines().count(), 2);
        assert!(events.contains("\"PoolDisabled\""));
    }
}

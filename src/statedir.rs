//! The dispatcher's own state directory: its layout, and the lock that allows one
//! dispatcher per state directory.
//!
//! ```text
//! <state_dir>/dispatcher.lock                      flock held for the dispatcher's life; holds its pid
//! <state_dir>/status.json                          snapshot for `dispatcher status` (atomic rename)
//! <state_dir>/events-fallback.jsonl                events that could not reach the registry
//! <state_dir>/logs/<spec>/<task_id>/attempt-<n>.log
//! <state_dir>/runners/<runner_id>/                 context.json, heartbeat
//! <state_dir>/scratch/<spec>/<task_id>/            working directory of tasks without a repository
//! ```

use std::fs;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::fsutil::FileLock;

#[derive(Clone, Debug)]
pub struct StateDir {
    root: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum StateDirError {
    #[error("cannot use state dir {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("another dispatcher (pid {pid}) is already running with state dir {path}")]
    Busy { pid: String, path: PathBuf },
}

/// How long taking the instance lock waits for a probe to let go of it.
const PROBE_PATIENCE: std::time::Duration = std::time::Duration::from_millis(300);

/// Held while the dispatcher runs; dropping it releases the state directory.
#[derive(Debug)]
pub struct InstanceLock {
    _lock: FileLock,
}

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> StateDir {
        StateDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn lock_path(&self) -> PathBuf {
        self.root.join("dispatcher.lock")
    }

    pub fn snapshot_path(&self) -> PathBuf {
        self.root.join("status.json")
    }

    pub fn event_fallback_path(&self) -> PathBuf {
        self.root.join("events-fallback.jsonl")
    }

    /// Events that belong to no spec (pools enabled or disabled, configuration reloads).
    pub fn dispatcher_events_path(&self) -> PathBuf {
        self.root.join("events.jsonl")
    }

    /// Pools switched off with `dispatcher pool disable` (they survive restarts).
    pub fn pool_overrides_path(&self) -> PathBuf {
        self.root.join("pools.json")
    }

    pub fn attempt_log(&self, spec: &str, task_id: &str, attempt: u32) -> PathBuf {
        self.root
            .join("logs")
            .join(spec)
            .join(task_id)
            .join(format!("attempt-{attempt}.log"))
    }

    pub fn runner_dir(&self, runner_id: &str) -> PathBuf {
        self.root.join("runners").join(runner_id)
    }

    /// Where a task's uncommitted changes are saved when its slot is released.
    pub fn patch_path(&self, spec: &str, task_id: &str, attempt: u32) -> PathBuf {
        self.root
            .join("patches")
            .join(spec)
            .join(task_id)
            .join(format!("attempt-{attempt}.patch"))
    }

    pub fn scratch_dir(&self, spec: &str, task_id: &str) -> PathBuf {
        self.root.join("scratch").join(spec).join(task_id)
    }

    /// Whether a dispatcher holds this state dir now (probes the lock without keeping it).
    pub fn lock_is_held(&self) -> bool {
        matches!(FileLock::try_acquire(&self.lock_path()), Ok(None))
    }

    /// Takes the instance lock, or says which pid holds it.
    pub fn lock(&self) -> Result<InstanceLock, StateDirError> {
        let io = |source| StateDirError::Io {
            path: self.root.clone(),
            source,
        };
        fs::create_dir_all(&self.root).map_err(io)?;
        let path = self.lock_path();
        // `status`, `cancel` and a takeover check probe this lock for an instant; a dispatcher
        // starting in that instant waits it out rather than report a busy state dir.
        let mut held = FileLock::acquire(&path, PROBE_PATIENCE).map(Some);
        if matches!(&held, Err(err) if err.kind() == std::io::ErrorKind::TimedOut) {
            held = Ok(None);
        }
        match held.map_err(io)? {
            Some(lock) => {
                let mut file = lock.file();
                file.set_len(0).map_err(io)?;
                file.rewind().map_err(io)?;
                writeln!(file, "{}", std::process::id()).map_err(io)?;
                file.sync_data().map_err(io)?;
                Ok(InstanceLock { _lock: lock })
            }
            None => {
                let mut pid = String::new();
                let _ = fs::File::open(&path).and_then(|mut f| f.read_to_string(&mut pid));
                let pid = pid.trim();
                Err(StateDirError::Busy {
                    pid: if pid.is_empty() {
                        "unknown".into()
                    } else {
                        pid.into()
                    },
                    path: self.root.clone(),
                })
            }
        }
    }
}

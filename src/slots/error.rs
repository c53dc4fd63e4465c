//! Errors of the workspace slots; each names the repository or slot, and a failed git command
//! carries the command, its directory and its stderr.

use std::io;
use std::path::PathBuf;

use super::git::GitError;
use crate::names::NameError;

#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("unknown repository {repo:?}: not in [repo_pool] and no pool.json under {}", dir.display())]
    UnknownRepo { repo: String, dir: PathBuf },
    #[error("unknown slot {slot_id:?}: no {}", path.display())]
    UnknownSlot { slot_id: String, path: PathBuf },
    /// A file system call failed; `action` is a verb such as "read", "write" or "lock".
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("invalid {}: {source}", path.display())]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    /// `subject` is `slot <id>` or `repository <name>`.
    #[error("{subject}: {source}")]
    Git { subject: String, source: GitError },
    #[error("slot {slot_id}: {} is not a git checkout (its .git is missing)", path.display())]
    NotACheckout { slot_id: String, path: PathBuf },
    #[error("repository {repo}: base branch {branch:?} is neither on origin nor a local branch")]
    NoBaseBranch { repo: String, branch: String },
    #[error("repository {repo}: {} exists but is neither a slot nor a git checkout; move it away", path.display())]
    Obstructed { repo: String, path: PathBuf },
}

impl SlotError {
    pub(super) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        SlotError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

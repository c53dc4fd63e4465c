//! Errors of the task registry; every variant names the file it is about.

use std::io;
use std::path::PathBuf;

use crate::names::NameError;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A file system call failed; `action` is a verb such as "read", "write" or "lock".
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// The taskset file is not JSON of the expected shape (serde_json adds line and column).
    #[error("invalid taskset {}: {source}", path.display())]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    /// The taskset parsed but breaks a rule (spec name, task ids).
    #[error("invalid taskset {}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
    /// A line of an events file is not a valid event.
    #[error("invalid event in {} line {line}: {source}", path.display())]
    EventLine {
        path: PathBuf,
        line: usize,
        source: serde_json::Error,
    },
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("taskset {} already exists", path.display())]
    Exists { path: PathBuf },
}

impl RegistryError {
    /// The taskset file does not exist (any more).
    pub fn is_missing(&self) -> bool {
        matches!(self, RegistryError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

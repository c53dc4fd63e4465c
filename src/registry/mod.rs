//! The NecroCode-compatible task registry: taskset documents, their locked read-modify-write
//! store, and the append-only event log.

mod error;
mod events;
pub mod json;
mod model;
mod render;
mod store;

pub use error::RegistryError;
pub use events::{Event, EventLog};
pub use model::{AttemptRecord, DispatcherMeta, Task, TaskState, Taskset};
pub use render::RenderedTasks;
pub use store::{Fingerprint, Registry};

#[cfg(test)]
pub(crate) mod test_support {
    use std::fs;
    use std::path::{Path, PathBuf};

    pub fn fixture_registry() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/necrocode/registry")
    }

    pub fn fixture_taskset_path(spec: &str) -> PathBuf {
        fixture_registry()
            .join("tasksets")
            .join(spec)
            .join("taskset.json")
    }

    /// A writable copy of the fixture registry in a fresh temp dir (the registry is `<tmp>/registry`).
    pub fn copy_fixture_registry() -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("registry");
        copy_dir(&fixture_registry(), &root);
        (tmp, root)
    }

    fn copy_dir(from: &Path, to: &Path) {
        fs::create_dir_all(to).unwrap();
        for entry in fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy_dir(&entry.path(), &target);
            } else {
                fs::copy(entry.path(), &target).unwrap();
            }
        }
    }
}

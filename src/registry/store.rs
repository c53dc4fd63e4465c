//! The file store of tasksets: paths, cheap change detection, and the locked read-modify-write.
//!
//! Every write follows NecroCode's protocol: flock `<root>/locks/<spec>.lock`, re-read and
//! validate `taskset.json`, change it, bump `version`, write `taskset.tmp`, fsync, rename. A file
//! that does not parse is never written over, so a human's half-finished edit is not lost.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::fsutil::{self, FileLock};
use crate::names;
use crate::registry::{RegistryError, RenderedTasks, Taskset};
use crate::timefmt;

/// How long a write waits for another writer (ours or NecroCode's) to release the spec's lock.
const LOCK_TIMEOUT: Duration = Duration::from_secs(10);

/// A registry root directory (`<root>/tasksets`, `<root>/events`, `<root>/locks`).
#[derive(Clone, Debug)]
pub struct Registry {
    root: PathBuf,
}

/// What a single `stat` says about a taskset file; a different value means it must be re-read.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Fingerprint {
    mtime_ns: i128,
    size: u64,
    ino: u64,
}

#[cfg(test)]
impl Fingerprint {
    pub(crate) fn for_tests(mtime_ns: i128, size: u64, ino: u64) -> Fingerprint {
        Fingerprint {
            mtime_ns,
            size,
            ino,
        }
    }
}

impl Registry {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Registry { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/tasksets/<spec>/taskset.json`; `spec` must already be validated.
    pub fn taskset_path(&self, spec: &str) -> PathBuf {
        self.root.join("tasksets").join(spec).join("taskset.json")
    }

    /// `<root>/locks/<spec>.lock`; `spec` must already be validated.
    pub fn lock_path(&self, spec: &str) -> PathBuf {
        self.root.join("locks").join(format!("{spec}.lock"))
    }

    /// `<root>/events/<spec>/events.jsonl`; `spec` must already be validated.
    pub fn events_path(&self, spec: &str) -> PathBuf {
        self.root.join("events").join(spec).join("events.jsonl")
    }

    /// Directory names under `tasksets/` holding a `taskset.json` entry, sorted. Unsafe names
    /// are included so that `load` can report them; a missing `tasksets/` means no specs.
    pub fn list_specs(&self) -> Result<Vec<String>, RegistryError> {
        let dir = self.root.join("tasksets");
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(RegistryError::Io {
                    action: "list",
                    path: dir,
                    source,
                })
            }
        };
        let mut specs = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| RegistryError::Io {
                action: "list",
                path: dir.clone(),
                source,
            })?;
            if fs::symlink_metadata(entry.path().join("taskset.json")).is_err() {
                continue;
            }
            match entry.file_name().into_string() {
                Ok(name) => specs.push(name),
                Err(name) => {
                    log::warn!(
                        "ignoring taskset directory with a non-UTF-8 name {name:?} in {}",
                        dir.display()
                    );
                }
            }
        }
        specs.sort();
        Ok(specs)
    }

    /// Stats the spec's taskset file without reading it; `None` when it does not exist.
    pub fn fingerprint(&self, spec: &str) -> Result<Option<Fingerprint>, RegistryError> {
        names::validate("spec name", spec)?;
        let path = self.taskset_path(spec);
        match fs::metadata(&path) {
            Ok(meta) => Ok(Some(Fingerprint {
                mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
                size: meta.size(),
                ino: meta.ino(),
            })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(RegistryError::Io {
                action: "stat",
                path,
                source,
            }),
        }
    }

    /// Reads, parses and validates the spec's taskset (without taking the lock: the file is
    /// only ever replaced by rename, so a reader sees a whole version).
    pub fn load(&self, spec: &str) -> Result<Taskset, RegistryError> {
        names::validate("spec name", spec)?;
        read_taskset(&self.taskset_path(spec), spec)
    }

    /// Locked read-modify-write. `f` gets the current taskset and returns its result and whether
    /// it changed anything; only then is `version` bumped, `updated_at` set and the file
    /// replaced. Returns `f`'s result and the taskset as it now is.
    pub fn update<R>(
        &self,
        spec: &str,
        f: impl FnOnce(&mut Taskset) -> (R, bool),
    ) -> Result<(R, Taskset), RegistryError> {
        self.update_fingerprinted(spec, f)
            .map(|(result, taskset, _)| (result, taskset))
    }

    /// [`Registry::update`], also returning the file's fingerprint after a write, taken while
    /// the lock is still held: a watcher told of it can skip re-reading this write without
    /// any risk of skipping another writer's.
    pub fn update_fingerprinted<R>(
        &self,
        spec: &str,
        f: impl FnOnce(&mut Taskset) -> (R, bool),
    ) -> Result<(R, Taskset, Option<Fingerprint>), RegistryError> {
        self.update_known(spec, &mut None, None, |taskset, _| f(taskset))
            .map(|(result, taskset, fingerprint, _)| (result, taskset, fingerprint))
    }

    /// [`Registry::update_fingerprinted`] for a caller that holds the taskset as it last read
    /// or wrote it, with that file's fingerprint: when the file under the lock still has that
    /// fingerprint, the held copy is taken out of `known` and changed in place instead of
    /// reading and parsing the file again (no copy when nobody else shares it: a whole
    /// taskset cloned and dropped per write was a fifth of the core's time in W1). The last
    /// value says whether it was (false: the file was read, someone else may have changed it).
    ///
    /// On an error `known` still holds the copy if it was not touched yet; if it is empty, the
    /// held copy may have been changed without the change reaching the file, so the caller
    /// must read the file again.
    ///
    /// With `rendered`, `f` must list the id of every task it changes in its second argument:
    /// the other tasks are written from the text the last write rendered (see
    /// [`RenderedTasks`]).
    pub fn update_known<R>(
        &self,
        spec: &str,
        known: &mut Option<(Fingerprint, Arc<Taskset>)>,
        mut rendered: Option<&mut RenderedTasks>,
        f: impl FnOnce(&mut Taskset, &mut Vec<String>) -> (R, bool),
    ) -> Result<(R, Taskset, Option<Fingerprint>, bool), RegistryError> {
        names::validate("spec name", spec)?;
        let path = self.taskset_path(spec);
        let _lock = self.lock(spec)?;
        let held_is_current = match known {
            Some((fingerprint, _)) => self.fingerprint(spec)? == Some(*fingerprint),
            None => false,
        };
        let (mut taskset, read) = match known.take() {
            Some((fingerprint, held)) if held_is_current => {
                (Arc::unwrap_or_clone(held), Some(fingerprint))
            }
            other => {
                *known = other;
                (read_taskset(&path, spec)?, None)
            }
        };
        let reused = read.is_some();
        let mut touched = Vec::new();
        let (result, changed) = f(&mut taskset, &mut touched);
        if changed {
            taskset.version += 1;
            taskset.updated_at = Some(timefmt::now_string());
            // A change that breaks the rules (say, a duplicate id) must not reach the file.
            validate_at(&taskset, spec, &path)?;
            let written = match rendered.as_deref_mut() {
                Some(rendered) => {
                    let document = rendered.render(&taskset, read, &touched);
                    fsutil::write_atomic_pieces(&path, &mut document.pieces())
                }
                None => fsutil::write_atomic(&path, &taskset.to_json_bytes()),
            };
            written.map_err(|source| RegistryError::Io {
                action: "write",
                path,
                source,
            })?;
            let fingerprint = self.fingerprint(spec)?;
            if let Some(rendered) = rendered {
                rendered.written_as(fingerprint);
            }
            return Ok((result, taskset, fingerprint, reused));
        }
        Ok((result, taskset, None, reused))
    }

    /// Writes a new taskset under its lock; fails if the spec already has one. Missing
    /// `created_at`/`updated_at` are set to now, since NecroCode's readers require them.
    pub fn create(&self, taskset: &Taskset) -> Result<(), RegistryError> {
        let spec = taskset.spec_name.as_str();
        names::validate("spec name", spec)?;
        let path = self.taskset_path(spec);
        validate_at(taskset, spec, &path)?;
        let _lock = self.lock(spec)?;
        match fs::symlink_metadata(&path) {
            Ok(_) => return Err(RegistryError::Exists { path }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(RegistryError::Io {
                    action: "stat",
                    path,
                    source,
                })
            }
        }
        let mut taskset = taskset.clone();
        let now = timefmt::now_string();
        taskset.created_at.get_or_insert_with(|| now.clone());
        taskset.updated_at.get_or_insert(now);
        fsutil::write_atomic(&path, &taskset.to_json_bytes()).map_err(|source| RegistryError::Io {
            action: "write",
            path,
            source,
        })
    }

    fn lock(&self, spec: &str) -> Result<FileLock, RegistryError> {
        let path = self.lock_path(spec);
        FileLock::acquire(&path, LOCK_TIMEOUT).map_err(|source| RegistryError::Io {
            action: "lock",
            path,
            source,
        })
    }
}

fn read_taskset(path: &Path, spec: &str) -> Result<Taskset, RegistryError> {
    let bytes = fs::read(path).map_err(|source| RegistryError::Io {
        action: "read",
        path: path.to_owned(),
        source,
    })?;
    let taskset: Taskset =
        serde_json::from_slice(&bytes).map_err(|source| RegistryError::Parse {
            path: path.to_owned(),
            source,
        })?;
    validate_at(&taskset, spec, path)?;
    Ok(taskset)
}

/// [`Taskset::validate`], with the file named in the error.
fn validate_at(taskset: &Taskset, spec: &str, path: &Path) -> Result<(), RegistryError> {
    taskset
        .validate(spec)
        .map_err(|reason| RegistryError::Invalid {
            path: path.to_owned(),
            reason,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::test_support::{copy_fixture_registry, fixture_taskset_path};
    use crate::registry::TaskState;
    use serde_json::Value;

    #[test]
    fn paths_follow_necrocode_layout() {
        let r = Registry::new("/reg");
        assert_eq!(
            r.taskset_path("a"),
            Path::new("/reg/tasksets/a/taskset.json")
        );
        assert_eq!(r.lock_path("a"), Path::new("/reg/locks/a.lock"));
        assert_eq!(r.events_path("a"), Path::new("/reg/events/a/events.jsonl"));
        assert_eq!(r.root(), Path::new("/reg"));
    }

    #[test]
    fn lists_and_loads_fixture_specs() {
        let (_tmp, root) = copy_fixture_registry();
        let r = Registry::new(&root);
        fs::create_dir_all(root.join("tasksets/empty-dir")).unwrap();
        assert_eq!(r.list_specs().unwrap(), ["chat-app", "tiny"]);
        let t = r.load("chat-app").unwrap();
        assert_eq!((t.version, t.tasks.len()), (7, 5));
        assert_eq!(t.task("2").unwrap().state, TaskState::Failed);
        assert!(Registry::new(root.join("nothing"))
            .list_specs()
            .unwrap()
            .is_empty());
    }

    #[test]
    fn fingerprint_changes_on_write_and_is_none_when_missing() {
        let (_tmp, root) = copy_fixture_registry();
        let r = Registry::new(&root);
        assert_eq!(r.fingerprint("nope").unwrap(), None);
        let before = r.fingerprint("tiny").unwrap().unwrap();
        assert_eq!(r.fingerprint("tiny").unwrap(), Some(before));
        r.update("tiny", |_| ((), true)).unwrap();
        assert_ne!(r.fingerprint("tiny").unwrap(), Some(before));
    }

    #[test]
    fn update_bumps_version_and_updated_at() {
        let (_tmp, root) = copy_fixture_registry();
        let r = Registry::new(&root);
        let (ids, t) = r
            .update("tiny", |t| {
                let ids = t.unblock_ready_dependents(&timefmt::now_string());
                let changed = !ids.is_empty();
                (ids, changed)
            })
            .unwrap();
        assert_eq!(ids, ["2"]);
        assert_eq!(t.version, 2);
        assert_ne!(t.updated_at.as_deref(), Some("2026-11-29T09:07:09.898360"));
        assert!(timefmt::parse(t.updated_at.as_deref().unwrap()).is_some());
        let reloaded = r.load("tiny").unwrap();
        assert_eq!(reloaded, t);
        assert_eq!(reloaded.task("2").unwrap().state, TaskState::Ready);
        assert!(!root.join("tasksets/tiny/taskset.tmp").exists());
    }

    #[test]
    fn update_known_uses_the_held_copy_only_while_the_file_is_unchanged() {
        let (_tmp, root) = copy_fixture_registry();
        let r = Registry::new(&root);
        let on_disk = r.load("tiny").unwrap();
        let fingerprint = r.fingerprint("tiny").unwrap().unwrap();
        // A held copy that differs from the file in a way a re-read would undo: it is used,
        // which shows the file was not read again.
        let mut held = on_disk.clone();
        held.metadata.insert("held".into(), Value::Bool(true));
        let held = Arc::new(held);
        let mut known = Some((fingerprint, held.clone()));
        let (_, t, written, reused) = r
            .update_known("tiny", &mut known, None, |_, _| ((), true))
            .unwrap();
        assert!(reused);
        assert!(known.is_none(), "the held copy was taken");
        assert_eq!(t.metadata.get("held"), Some(&Value::Bool(true)));
        let written = written.unwrap();
        // Another writer replaces the file: the stale fingerprint no longer matches, so the
        // file is read and its change kept.
        let mut other = r.load("tiny").unwrap();
        other.metadata.insert("other".into(), Value::Bool(true));
        fsutil::write_atomic(&r.taskset_path("tiny"), &other.to_json_bytes()).unwrap();
        let mut known = Some((written, held));
        let (_, t, _, reused) = r
            .update_known("tiny", &mut known, None, |_, _| ((), false))
            .unwrap();
        assert!(!reused);
        assert!(known.is_some(), "a stale copy is left to the caller");
        assert_eq!(t.metadata.get("other"), Some(&Value::Bool(true)));
    }

    #[test]
    fn update_known_hands_an_untouched_copy_back_on_error() {
        let (_tmp, root) = copy_fixture_registry();
        let r = Registry::new(&root);
        let held = Arc::new(r.load("tiny").unwrap());
        let fingerprint = r.fingerprint("tiny").unwrap().unwrap();
        fs::remove_file(r.taskset_path("tiny")).unwrap();
        let mut known = Some((fingerprint, held));
        let err = r
            .update_known("tiny", &mut known, None, |_, _| ((), true))
            .unwrap_err();
        assert!(err.is_missing(), "{err}");
        let (kept, copy) = known.expect("the copy comes back");
        assert_eq!((kept, copy.tasks.len()), (fingerprint, 2));
    }

    #[test]
    fn update_returning_false_writes_nothing() {
        let (_tmp, root) = copy_fixture_registry();
        let r = Registry::new(&root);
        let path = r.taskset_path("chat-app");
        let bytes = fs::read(&path).unwrap();
        let mtime = fs::metadata(&path).unwrap().modified().unwrap();
        let (value, t) = r
            .update("chat-app", |t| {
                t.version = 99;
                (42, false)
            })
            .unwrap();
        assert_eq!((value, t.version), (42, 99));
        assert_eq!(fs::read(&path).unwrap(), bytes);
        assert_eq!(fs::metadata(&path).unwrap().modified().unwrap(), mtime);
    }

    #[test]
    fn unknown_fields_survive_update() {
        let (_tmp, root) = copy_fixture_registry();
        let r = Registry::new(&root);
        let path = r.taskset_path("chat-app");
        let mut doc: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        doc["x_top"] = Value::from("top");
        doc["tasks"][0]["x_task"] = serde_json::json!({"nested": [1, 2]});
        doc["tasks"][0]["artifacts"][0]["x_artifact"] = Value::from(3.5);
        fs::write(&path, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();

        r.update("chat-app", |t| {
            t.task_mut("1.1").unwrap().state = TaskState::Running;
            ((), true)
        })
        .unwrap();

        let after: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(after["x_top"], "top");
        assert_eq!(
            after["tasks"][0]["x_task"],
            serde_json::json!({"nested": [1, 2]})
        );
        assert_eq!(after["tasks"][0]["artifacts"][0]["x_artifact"], 3.5);
        assert_eq!(after["tasks"][1]["state"], "running");
        assert_eq!(after["version"], 8);
    }

    #[test]
    fn corrupt_file_fails_with_path_and_stays_untouched() {
        let (_tmp, root) = copy_fixture_registry();
        let r = Registry::new(&root);
        let path = r.taskset_path("tiny");
        let full = fs::read(&path).unwrap();
        let truncated = &full[..full.len() / 2];
        fs::write(&path, truncated).unwrap();

        let err = r.load("tiny").unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("invalid taskset {}: ", path.display())),
            "{err}"
        );
        assert!(err.contains("line"), "{err}");
        let err = r.update("tiny", |_| ((), true)).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert_eq!(fs::read(&path).unwrap(), truncated);

        fs::write(&path, "").unwrap();
        let err = r.load("tiny").unwrap_err().to_string();
        assert!(err.contains("EOF while parsing"), "{err}");

        fs::write(&path, r#"{"spec_name": "tiny", "version": "seven"}"#).unwrap();
        let err = r.load("tiny").unwrap_err().to_string();
        assert!(
            err.contains(&path.display().to_string()) && err.contains("invalid type"),
            "{err}"
        );
    }

    #[test]
    fn taskset_that_is_a_directory_is_a_clear_error() {
        let (_tmp, root) = copy_fixture_registry();
        let r = Registry::new(&root);
        let path = r.taskset_path("weird");
        fs::create_dir_all(&path).unwrap();
        assert!(r.list_specs().unwrap().contains(&"weird".to_owned()));
        let err = r.load("weird").unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("cannot read {}: ", path.display())),
            "{err}"
        );
        assert!(r.update("weird", |_| ((), true)).is_err());
    }

    #[test]
    fn duplicate_ids_and_wrong_spec_name_are_reported() {
        let (_tmp, root) = copy_fixture_registry();
        let r = Registry::new(&root);
        let path = r.taskset_path("tiny");
        let text = fs::read_to_string(&path)
            .unwrap()
            .replace("\"id\": \"2\"", "\"id\": \"1\"");
        fs::write(&path, text).unwrap();
        let err = r.load("tiny").unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "invalid taskset {}: duplicate task id \"1\"",
                path.display()
            )
        );

        fs::create_dir_all(root.join("tasksets/copy")).unwrap();
        fs::copy(fixture_taskset_path("chat-app"), r.taskset_path("copy")).unwrap();
        let err = r.load("copy").unwrap_err().to_string();
        assert!(
            err.contains("does not match directory name \"copy\""),
            "{err}"
        );
    }

    #[test]
    fn update_refuses_to_write_an_invalid_change() {
        let (_tmp, root) = copy_fixture_registry();
        let r = Registry::new(&root);
        let before = fs::read(r.taskset_path("tiny")).unwrap();
        let err = r
            .update("tiny", |t| {
                t.tasks[1].id = "1".into();
                ((), true)
            })
            .unwrap_err();
        assert!(err.to_string().contains("duplicate task id"), "{err}");
        assert_eq!(fs::read(r.taskset_path("tiny")).unwrap(), before);
    }

    #[test]
    fn path_traversal_spec_name_is_rejected_before_fs_access() {
        // The root does not exist: any file system access would fail with a different error.
        let r = Registry::new("/nonexistent-registry-root");
        for spec in ["../x", "..", ".hidden", "a/b", ""] {
            for err in [
                r.load(spec).unwrap_err(),
                r.update(spec, |_| ((), true)).unwrap_err(),
                r.fingerprint(spec).unwrap_err(),
            ] {
                assert!(matches!(err, RegistryError::Name(_)), "{spec:?}: {err}");
                assert!(err.to_string().starts_with("invalid spec name"), "{err}");
            }
        }
        assert!(!Path::new("/nonexistent-registry-root").exists());
    }

    #[test]
    fn create_writes_new_taskset_and_refuses_existing() {
        let tmp = tempfile::tempdir().unwrap();
        let r = Registry::new(tmp.path());
        let mut t: Taskset = serde_json::from_str(
            r#"{"spec_name": "new", "version": 1, "tasks": [{"id": "1", "title": "T", "state": "ready"}], "metadata": {}}"#,
        )
        .unwrap();
        r.create(&t).unwrap();
        let loaded = r.load("new").unwrap();
        assert!(loaded.created_at.is_some() && loaded.updated_at.is_some());
        assert_eq!(loaded.tasks, t.tasks);
        assert!(matches!(
            r.create(&t).unwrap_err(),
            RegistryError::Exists { .. }
        ));
        t.spec_name = "../evil".into();
        assert!(matches!(r.create(&t).unwrap_err(), RegistryError::Name(_)));
    }

    #[test]
    fn concurrent_updates_lose_no_increment() {
        let (_tmp, root) = copy_fixture_registry();
        let r = Registry::new(&root);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let r = r.clone();
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        r.update("tiny", |t| {
                            let n = t
                                .metadata
                                .get("counter")
                                .and_then(Value::as_u64)
                                .unwrap_or(0);
                            t.metadata.insert("counter".into(), Value::from(n + 1));
                            ((), true)
                        })
                        .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let t = r.load("tiny").unwrap();
        assert_eq!(t.metadata["counter"], 200);
        assert_eq!(t.version, 201);
    }
}

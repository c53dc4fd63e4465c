//! The progress probe: a thread that fingerprints runners' working directories for stall
//! detection, off the core thread. A git worktree's fingerprint is its HEAD, the paths
//! `git status` lists and their sizes and modification times, so a commit, an edit or a new
//! file changes it; any other directory is fingerprinted by walking its files.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io;
use std::path::{Path, PathBuf};
use std::thread::{self, JoinHandle};
use std::time::{Duration, UNIX_EPOCH};

use crossbeam_channel::Sender;

use crate::slots::git::Git;
use crate::watchdog::RunnerEvent;

/// How long one git command of the probe may take.
const GIT_TIMEOUT: Duration = Duration::from_secs(30);
/// The most files a walk looks at: enough to see an agent's edits, bounded for huge trees.
const WALK_LIMIT: usize = 20_000;

pub struct ProgressProbe {
    jobs: Option<Sender<(String, PathBuf)>>,
    thread: Option<JoinHandle<()>>,
}

impl ProgressProbe {
    /// Starts the thread; its answers are `RunnerEvent::Worktree` on `events`.
    pub fn spawn(events: Sender<RunnerEvent>) -> io::Result<ProgressProbe> {
        let (jobs, inbox) = crossbeam_channel::unbounded::<(String, PathBuf)>();
        let thread = thread::Builder::new()
            .name("progress-probe".into())
            .spawn(move || {
                for (runner_id, dir) in inbox {
                    let fingerprint = match fingerprint(&dir) {
                        Ok(value) => Some(value),
                        Err(err) => {
                            log::debug!("cannot fingerprint {}: {err}", dir.display());
                            None
                        }
                    };
                    let event = RunnerEvent::Worktree {
                        runner_id,
                        fingerprint,
                    };
                    if events.send(event).is_err() {
                        break;
                    }
                }
            })?;
        Ok(ProgressProbe {
            jobs: Some(jobs),
            thread: Some(thread),
        })
    }

    /// Asks for a fingerprint of a runner's working directory.
    pub fn probe(&self, runner_id: &str, dir: &Path) {
        if let Some(jobs) = &self.jobs {
            let _ = jobs.send((runner_id.to_string(), dir.to_path_buf()));
        }
    }
}

impl Drop for ProgressProbe {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A value that changes when the directory's content does.
pub fn fingerprint(dir: &Path) -> io::Result<u64> {
    let mut hasher = DefaultHasher::new();
    // `--no-optional-locks`: `git status` would otherwise refresh the index under
    // `index.lock`, failing the agent's own `git add` or `git commit` at that instant.
    let head = Git::new(dir)
        .args([
            "--no-optional-locks",
            "rev-parse",
            "--verify",
            "--quiet",
            "HEAD",
        ])
        .timeout(GIT_TIMEOUT)
        .output();
    let status = Git::new(dir)
        .args([
            "--no-optional-locks",
            "status",
            "--porcelain=v1",
            "-z",
            "--untracked-files=all",
        ])
        .timeout(GIT_TIMEOUT)
        .output();
    match status {
        Ok(listing) => {
            head.unwrap_or_default().hash(&mut hasher);
            listing.hash(&mut hasher);
            // `XY path\0` entries; a rename adds its old path as the next entry.
            for entry in listing.split(|b| *b == 0).filter(|e| e.len() > 3) {
                let path = dir.join(String::from_utf8_lossy(&entry[3..]).as_ref());
                stamp(&path).hash(&mut hasher);
            }
        }
        Err(_) if dir.is_dir() => walk(dir, &mut hasher)?,
        Err(err) => return Err(io::Error::other(err.to_string())),
    }
    Ok(hasher.finish())
}

/// Size and modification time of a file, `None` when it is gone.
fn stamp(path: &Path) -> Option<(u64, u128)> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    let mtime = meta
        .modified()
        .ok()?
        .duration_since(UNIX_EPOCH)
        .ok()?
        .as_nanos();
    Some((meta.len(), mtime))
}

fn walk(root: &Path, hasher: &mut DefaultHasher) -> io::Result<()> {
    let mut stack = vec![root.to_path_buf()];
    let mut seen = 0;
    while let Some(dir) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&dir)?.filter_map(Result::ok).collect();
        entries.sort_by_key(std::fs::DirEntry::file_name);
        for entry in entries {
            seen += 1;
            if seen > WALK_LIMIT {
                return Ok(());
            }
            let path = entry.path();
            path.hash(hasher);
            stamp(&path).hash(hasher);
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(path);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_directory_changes_its_fingerprint_with_a_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let before = fingerprint(dir.path()).unwrap();
        assert_eq!(fingerprint(dir.path()).unwrap(), before);
        std::fs::write(dir.path().join("new.txt"), "x").unwrap();
        assert_ne!(fingerprint(dir.path()).unwrap(), before);
    }

    #[test]
    fn a_worktree_changes_its_fingerprint_with_an_edit_and_a_commit() {
        let dir = tempfile::tempdir().unwrap();
        let git = |args: &[&str]| {
            Git::new(dir.path())
                .args(["-c", "user.name=t", "-c", "user.email=t@e"])
                .args(args)
                .run()
                .unwrap();
        };
        git(&["init", "--quiet"]);
        std::fs::write(dir.path().join("a.txt"), "1").unwrap();
        git(&["add", "a.txt"]);
        git(&["commit", "--quiet", "-m", "one"]);
        let clean = fingerprint(dir.path()).unwrap();
        std::fs::write(dir.path().join("a.txt"), "22").unwrap();
        let edited = fingerprint(dir.path()).unwrap();
        assert_ne!(edited, clean);
        git(&["commit", "--quiet", "-am", "two"]);
        let committed = fingerprint(dir.path()).unwrap();
        assert_ne!(committed, edited);
        assert_ne!(committed, clean);
    }
}

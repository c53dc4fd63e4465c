//! Workspace slots ("repo pool"): a fixed set of checkouts per repository, each lent to one
//! task at a time, in NecroCode's on-disk layout.
//!
//! ```text
//! <workspaces>/<repo>/pool.json          pool metadata
//! <workspaces>/<repo>/.repo/             the main clone (pools this module creates)
//! <workspaces>/<repo>/slot<N>/           a worktree of .repo, or a full clone (NecroCode's)
//! <workspaces>/<repo>/slot<N>/slot.json  the slot's state, kept out of git's sight
//! <workspaces>/locks/<slot_id>.lock      flock while a slot changes hands
//! <workspaces>/locks/<repo>.pool.lock    flock while slots are added or removed
//! ```
//!
//! The protocol: `slot.json` says who has a slot; the slot's flock only guards a change of
//! hands. Allocation takes the lock of the least recently used `available` slot (skipping
//! locked ones), re-reads `slot.json` under it, and writes `allocated` *before* touching git,
//! so that a crash at any later point leaves a slot that [`SlotManager::recover`] cleans.
//! Release first saves the uncommitted changes while the slot still reads `allocated`, then
//! writes `cleaning`, cleans, and writes `available`: a crash during the clean leaves
//! `cleaning`, which recovery cleans again without a second patch. A git failure puts the slot
//! in `error` (with the message in `metadata.error`); allocation skips such slots and `sync`
//! tries to repair them.
//!
//! Every git command goes through `git::Git` (`git.rs`), which stops repository discovery at
//! the slot, so a slot whose `.git` is gone fails instead of cleaning an enclosing repository.

pub(crate) mod branch;
mod checkpoint;
mod error;
pub(crate) mod git;
mod model;
mod view;

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::config::RepoPoolSettings;
use crate::fsutil::{self, FileLock};
use crate::names;
use crate::registry::json::to_pretty_bytes;
use crate::timefmt;

pub use branch::branch_name;
pub use checkpoint::{checkpoint_ref, REF_PREFIX};
pub use error::SlotError;
pub use git::GitError;
pub use model::SlotState;
pub use view::{render, PoolView, SlotView};

use git::Git;
use model::{PoolFile, SlotFile, META_ERROR, META_SPEC, META_TASK, META_TASK_ID};

/// `branch_pattern` when the config gives none.
pub const DEFAULT_BRANCH_PATTERN: &str = "task/{spec}/{task_id}";
/// `base_branch` when the config gives none, and for pools found on disk but not configured.
pub const DEFAULT_BASE_BRANCH: &str = "main";

/// The state file inside each slot; kept by every clean and hidden from `git status`.
const SLOT_FILE: &str = "slot.json";
/// The same file as an anchored ignore pattern, so that a `slot.json` deeper in the
/// repository is still the repository's own business.
const SLOT_FILE_PATTERN: &str = "/slot.json";
/// `fsutil::write_atomic`'s temp file for `slot.json`; hidden too, so that one left by a
/// crash never lands in a patch (the next clean removes it).
const SLOT_TEMP_PATTERN: &str = "/slot.tmp";
const POOL_FILE: &str = "pool.json";
const MAIN_CLONE: &str = ".repo";
const RECOVERED_DIR: &str = "recovered";
const LOCKS_DIR: &str = "locks";

/// A release waits this long for a slot lock that an allocation (fetch included) holds.
const SLOT_LOCK_WAIT: Duration = Duration::from_secs(600);
/// A sync waits this long for another process's sync of the same pool, which may be cloning.
const POOL_LOCK_WAIT: Duration = Duration::from_secs(3600);
/// Commands that write a whole working tree (checkout, reset, clean, worktree add) on a large
/// repository can take much longer than the default.
const WORKTREE_TIMEOUT: Duration = Duration::from_secs(600);
const CLONE_TIMEOUT: Duration = Duration::from_secs(3600);

/// One `[[repo_pool.repos]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoConfig {
    /// A safe name: the pool's directory and part of every slot id.
    pub name: String,
    /// Anything `git clone` accepts; a relative local path is already anchored to the config.
    pub url: String,
    /// How many slots the pool should have (at least one).
    pub slots: usize,
    pub base_branch: String,
    /// `{spec}` and `{task_id}` are replaced; see [`branch_name`].
    pub branch_pattern: String,
    /// What a fresh slot needs before its runner starts (`setup`, `copy_files`, ports).
    pub bootstrap: BootstrapConfig,
}

/// Per-repository worktree bootstrap: run by each attempt's supervisor in the slot before the
/// runner, so that a failure is that attempt's (`infra`) failure, visible and retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapConfig {
    /// An argv run in the slot (no shell); empty: none.
    pub setup: Vec<String>,
    pub setup_timeout: Duration,
    /// Paths relative to the main checkout (the repository's local `url`), copied into the
    /// slot at the same relative path. Checked at load: relative, no `..`.
    pub copy_files: Vec<String>,
    /// The first port of slot 1; slot `N` gets `port_base + (N - 1) * ports_per_slot`.
    pub port_base: Option<u16>,
    pub ports_per_slot: u16,
}

/// `setup_timeout` when the config gives none.
pub const DEFAULT_SETUP_TIMEOUT: Duration = Duration::from_secs(600);
/// `ports_per_slot` when the config gives none.
pub const DEFAULT_PORTS_PER_SLOT: u16 = 10;

impl Default for BootstrapConfig {
    fn default() -> BootstrapConfig {
        BootstrapConfig {
            setup: Vec::new(),
            setup_timeout: DEFAULT_SETUP_TIMEOUT,
            copy_files: Vec::new(),
            port_base: None,
            ports_per_slot: DEFAULT_PORTS_PER_SLOT,
        }
    }
}

impl BootstrapConfig {
    /// The first port of slot `number` (from 1), when the repository has a port range.
    pub fn port_base_of(&self, number: u32) -> Option<u16> {
        let base = u32::from(self.port_base?);
        let offset = number.checked_sub(1)? * u32::from(self.ports_per_slot);
        u16::try_from(base + offset).ok()
    }
}

impl RepoConfig {
    /// Where `copy_files` come from: the repository's `url` when it is a local directory
    /// (a path, or a `file://` URL), the user's own working copy; `None` for a remote.
    pub fn main_checkout(&self) -> Option<PathBuf> {
        let path = match self.url.strip_prefix("file://") {
            Some(path) => Path::new(path),
            None if self.url.contains("://") => return None,
            None => Path::new(&self.url),
        };
        path.is_absolute().then(|| path.to_path_buf())
    }
}

/// A slot lent to a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub slot_id: String,
    pub slot_path: PathBuf,
    pub repo_url: String,
    pub branch: String,
    /// The first of the slot's ports, when its repository has a port range.
    pub port_base: Option<u16>,
}

/// The uncommitted changes of a released slot, saved as a `git apply`-able binary diff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Patch {
    pub path: PathBuf,
    pub size_bytes: u64,
    /// The files it changes, relative to the repository root (a rename as both names).
    pub paths: Vec<String>,
}

/// What a release did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Release {
    /// The slot is free again; the patch of the changes it held, if any.
    Released(Option<Patch>),
    /// It was not this task's to release (free already, or lent to another task).
    NotHeld,
}

/// Allocates, releases and maintains the slots of every pool under one workspaces directory.
/// Cheap to clone; all coordination is through files, so several threads and processes may
/// share one workspaces directory.
#[derive(Debug, Clone)]
pub struct SlotManager {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    repos: Vec<RepoConfig>,
}

/// A slot's identity and place; its state lives in the file.
#[derive(Debug, Clone)]
struct Slot {
    repo: String,
    number: u32,
    id: String,
    path: PathBuf,
}

impl Slot {
    fn file_path(&self) -> PathBuf {
        self.path.join(SLOT_FILE)
    }

    fn subject(&self) -> String {
        format!("slot {}", self.id)
    }

    fn git(&self) -> Git {
        Git::new(&self.path)
    }
}

/// What the manager knows about one repository's pool: its config, or defaults around what
/// `pool.json` says for a pool found on disk.
struct Settings {
    url: String,
    base_branch: String,
    branch_pattern: String,
}

impl SlotManager {
    pub fn new(settings: &RepoPoolSettings) -> SlotManager {
        // Slot paths are handed to runners that start elsewhere, and written to slot.json.
        let dir = std::path::absolute(&settings.dir).unwrap_or_else(|_| settings.dir.clone());
        SlotManager {
            inner: Arc::new(Inner {
                dir,
                repos: settings.repos.clone(),
            }),
        }
    }

    /// Whether tasks of `repo` can get a slot: it is configured, or a pool of it exists.
    pub fn has_repo(&self, repo: &str) -> bool {
        self.configured(repo).is_some()
            || (names::validate("repository name", repo).is_ok()
                && self.pool_dir(repo).join(POOL_FILE).is_file())
    }

    /// Makes every configured pool match its config: clones, adds or removes free slots,
    /// and tries to repair slots in `error`. Returns one line per change.
    pub fn sync(&self) -> Result<Vec<String>, SlotError> {
        let mut lines = Vec::new();
        for repo in &self.inner.repos {
            self.sync_repo(repo, &mut lines)?;
        }
        Ok(lines)
    }

    /// Lends the least recently used free slot of `repo` to task `spec/task_id`, on a fresh
    /// branch from the base. `None` when every slot is taken.
    pub fn allocate(
        &self,
        repo: &str,
        spec: &str,
        task_id: &str,
    ) -> Result<Option<Allocation>, SlotError> {
        names::validate("repository name", repo)?;
        names::validate("spec name", spec)?;
        names::validate("task id", task_id)?;
        if let Some(config) = self.configured(repo) {
            if !self.pool_dir(repo).join(POOL_FILE).is_file() {
                let mut lines = Vec::new();
                self.sync_repo(config, &mut lines)?;
                for line in lines {
                    log::info!("{line}");
                }
            }
        }
        let settings = self.settings(repo)?;
        let mut free: Vec<(Slot, SlotFile)> = self
            .read_slots(repo)?
            .into_iter()
            .filter(|(_, file)| file.state == SlotState::Available)
            .collect();
        // Never-used slots (`None`) sort first, then the longest idle; the number breaks ties
        // so that the order is the same in every process.
        free.sort_by_key(|(slot, file)| (file.last_used(), slot.number));
        let branch = branch_name(&settings.branch_pattern, spec, task_id);
        for (slot, _) in free {
            let lock_path = self.lock_path(&slot.id);
            let Some(_lock) = FileLock::try_acquire(&lock_path)
                .map_err(|e| SlotError::io("lock", &lock_path, e))?
            else {
                // Another thread or process is handing this slot over right now.
                continue;
            };
            // What we read before the lock may be stale; only the file under the lock counts.
            let Some(mut file) = self.read_slot_file(&slot)? else {
                continue;
            };
            if file.state != SlotState::Available {
                continue;
            }
            if let Err(err) = self.prepare(&slot, &mut file, &settings, spec, task_id, &branch) {
                self.mark_error(&slot, &mut file, &err);
                return Err(err);
            }
            log::info!("{}: allocated to {spec}/{task_id} on {branch}", slot.id);
            let port_base = self
                .configured(repo)
                .and_then(|config| config.bootstrap.port_base_of(slot.number));
            return Ok(Some(Allocation {
                slot_id: slot.id,
                slot_path: slot.path,
                repo_url: settings.url,
                branch,
                port_base,
            }));
        }
        Ok(None)
    }

    /// Takes a slot back after an attempt: saves its uncommitted changes (tracked and
    /// untracked, `slot.json` and ignored files excepted) to `patch_path`, then resets and
    /// cleans it onto the base. The task branch and its commits stay. `None` when there was
    /// nothing uncommitted. On a git failure the slot goes to `error` and the error is returned.
    pub fn release(&self, slot_id: &str, patch_path: &Path) -> Result<Option<Patch>, SlotError> {
        match self.release_held(slot_id, None, patch_path, None)? {
            Release::Released(patch) => Ok(patch),
            Release::NotHeld => Ok(None),
        }
    }

    /// [`SlotManager::release`] on behalf of `holder` (`spec/task_id`): a slot that is free
    /// already, or now allocated to another task (recovery freed it and it was lent again),
    /// is left alone and reported as [`Release::NotHeld`]. With `checkpoint`, the worktree is
    /// first saved as a commit under that ref (see `checkpoint.rs`); a failure to do so is
    /// only logged, since the patch still keeps the changes.
    pub fn release_held(
        &self,
        slot_id: &str,
        holder: Option<&str>,
        patch_path: &Path,
        checkpoint: Option<&str>,
    ) -> Result<Release, SlotError> {
        let slot = self.slot(slot_id)?;
        let _lock = self.lock_slot(&slot)?;
        let Some(mut file) = self.read_slot_file(&slot)? else {
            return Err(SlotError::UnknownSlot {
                slot_id: slot.id.clone(),
                path: slot.file_path(),
            });
        };
        if file.state == SlotState::Available {
            log::debug!("{}: released twice; it is already available", slot.id);
            return Ok(Release::NotHeld);
        }
        if let (Some(holder), Some(task)) = (holder, file.task()) {
            if file.state == SlotState::Allocated && task != holder {
                log::warn!(
                    "{}: not released for {holder}: it is allocated to {task}",
                    slot.id
                );
                return Ok(Release::NotHeld);
            }
        }
        let base = self.settings(&slot.repo)?.base_branch;
        match self.reclaim(&slot, &mut file, &base, patch_path, checkpoint) {
            Ok(patch) => {
                log::info!("{}: released", slot.id);
                Ok(Release::Released(patch))
            }
            Err(err) => {
                self.mark_error(&slot, &mut file, &err);
                Err(err)
            }
        }
    }

    /// After a crash: frees every `allocated` slot whose task `is_running` denies (keyed by
    /// slot id), and cleans again every slot left `cleaning`. Uncommitted work found in a freed
    /// slot is saved under `<workspaces>/<repo>/recovered/`. A slot that fails goes to `error`
    /// and is reported; the others are still recovered.
    pub fn recover(&self, is_running: &dyn Fn(&str) -> bool) -> Result<Vec<String>, SlotError> {
        let mut lines = Vec::new();
        for repo in self.repo_names()? {
            let base = self.settings(&repo)?.base_branch;
            for (slot, file) in self.read_slots(&repo)? {
                let stale = |file: &SlotFile| match file.state {
                    SlotState::Allocated => !is_running(&slot.id),
                    SlotState::Cleaning => true,
                    SlotState::Available | SlotState::Error => false,
                };
                if stale(&file) {
                    if let Some(line) = self.try_reclaim(&slot, &base, &stale)? {
                        lines.push(line);
                    }
                }
            }
        }
        Ok(lines)
    }

    /// The state of every slot of every pool, from the `slot.json` files alone: cheap enough
    /// to call every few seconds, unlike [`list`](Self::list), which measures disk usage.
    pub fn slot_states(&self) -> Result<Vec<(String, Vec<SlotState>)>, SlotError> {
        let mut pools = Vec::new();
        for repo in self.repo_names()? {
            let states = self
                .read_slots(&repo)?
                .into_iter()
                .map(|(_, file)| file.state)
                .collect();
            pools.push((repo, states));
        }
        Ok(pools)
    }

    /// Every pool (configured or found on disk) with its slots, for `dispatcher slots`.
    pub fn list(&self) -> Result<Vec<PoolView>, SlotError> {
        let mut pools = Vec::new();
        for repo in self.repo_names()? {
            let pool_dir = self.pool_dir(&repo);
            let pool_file = self.read_pool_file(&repo)?;
            let configured = self.configured(&repo);
            let repo_url = match (configured, &pool_file) {
                (Some(config), _) => config.url.clone(),
                (None, Some(pool)) => pool.repo_url.clone(),
                (None, None) => String::new(),
            };
            let slots: Vec<SlotView> = self
                .read_slots(&repo)?
                .into_iter()
                .map(|(slot, file)| SlotView::new(&slot.id, &slot.path, &file))
                .collect();
            let main_clone = pool_dir.join(MAIN_CLONE);
            pools.push(PoolView {
                repo_name: repo.clone(),
                repo_url,
                configured: configured.is_some(),
                configured_slots: configured.map(|config| config.slots),
                synced: pool_file.is_some(),
                path: pool_dir,
                main_clone_bytes: main_clone.is_dir().then(|| view::disk_usage(&main_clone)),
                slots,
            });
        }
        Ok(pools)
    }

    /// Whether checkpoint `refname` of a task of `repo` still exists: `None` when it cannot
    /// tell (no such pool, git failing). In a pool of worktrees the main clone holds every
    /// ref; in a NecroCode pool of full clones each slot has its own, so any of them counts.
    pub fn checkpoint_exists(&self, repo: &str, refname: &str) -> Option<bool> {
        names::validate("repository name", repo).ok()?;
        let main_clone = self.pool_dir(repo).join(MAIN_CLONE);
        let dirs: Vec<PathBuf> = if main_clone.join(".git").exists() {
            vec![main_clone]
        } else {
            let slots = self.read_slots(repo).ok()?;
            slots.into_iter().map(|(slot, _)| slot.path).collect()
        };
        let mut answer = None;
        for dir in dirs {
            match checkpoint::exists(&dir, refname) {
                Ok(true) => return Some(true),
                Ok(false) => answer = Some(false),
                Err(err) => log::debug!("cannot look for {refname}: {err}"),
            }
        }
        answer
    }

    // ----- sync -----

    fn sync_repo(&self, config: &RepoConfig, lines: &mut Vec<String>) -> Result<(), SlotError> {
        let repo = config.name.as_str();
        names::validate("repository name", repo)?;
        let _lock = self.lock_pool(repo)?;
        let pool_dir = self.pool_dir(repo);
        fs::create_dir_all(&pool_dir).map_err(|e| SlotError::io("create", &pool_dir, e))?;
        let mut present: Vec<u32> = self
            .read_slots(repo)?
            .iter()
            .map(|(slot, _)| slot.number)
            .collect();
        let main_clone = pool_dir.join(MAIN_CLONE);
        // A NecroCode pool (full clones, no main clone) is used as it is, and grows by clones.
        let full_clones = !main_clone.join(".git").exists() && !present.is_empty();
        if !full_clones && !main_clone.join(".git").exists() {
            clone(repo, &config.url, &pool_dir, MAIN_CLONE, true)?;
            lines.push(format!("{repo}: cloned {}", config.url));
        }
        let mut pool = match self.read_pool_file(repo)? {
            Some(pool) => {
                if pool.repo_url != config.url {
                    log::warn!(
                        "{repo}: pool.json names {} but the config says {}; the slots keep \
                         the origin they were cloned from",
                        pool.repo_url,
                        config.url
                    );
                }
                pool
            }
            None => {
                let now = timefmt::now_string();
                lines.push(format!("{repo}: created pool {}", pool_dir.display()));
                PoolFile {
                    repo_name: repo.to_owned(),
                    repo_url: config.url.clone(),
                    num_slots: 0,
                    created_at: now.clone(),
                    updated_at: now,
                    metadata: Map::new(),
                    other: Map::new(),
                }
            }
        };

        while present.len() < config.slots {
            let number = (1..).find(|n| !present.contains(n)).unwrap_or(1);
            let slot = self.slot_at(repo, number);
            self.create_slot(&slot, config, full_clones)?;
            present.push(number);
            lines.push(format!("{}: added {}", slot.id, slot.path.display()));
        }
        present.sort_unstable();
        while present.len() > config.slots {
            let removed = self.remove_free_slot(repo, &present, full_clones)?;
            let Some(number) = removed else {
                lines.push(format!(
                    "{repo}: {} slot(s) more than configured are in use; they go on a later sync",
                    present.len() - config.slots
                ));
                break;
            };
            present.retain(|&n| n != number);
            lines.push(format!("{}: removed", self.slot_at(repo, number).id));
        }

        let base = &config.base_branch;
        for (slot, file) in self.read_slots(repo)? {
            if file.state == SlotState::Error {
                let broken = |file: &SlotFile| file.state == SlotState::Error;
                let line = if full_clones || slot.path.join(".git").exists() {
                    self.try_reclaim(&slot, base, &broken)?
                } else {
                    self.try_rebuild(&slot, config, &broken)?
                };
                lines.extend(line);
            }
        }

        if pool.num_slots != present.len() || !pool_dir.join(POOL_FILE).is_file() {
            pool.num_slots = present.len();
            pool.updated_at = timefmt::now_string();
            write_json(&pool_dir.join(POOL_FILE), &pool)?;
        }
        Ok(())
    }

    /// Makes `slot` a checkout with a fresh `slot.json`: a worktree of the main clone, or a
    /// clone of its own in a NecroCode pool. A directory left by an interrupted earlier sync
    /// (a checkout without `slot.json`) is adopted.
    fn create_slot(
        &self,
        slot: &Slot,
        config: &RepoConfig,
        full_clone: bool,
    ) -> Result<(), SlotError> {
        let repo = &slot.repo;
        if slot.path.exists() {
            if !slot.path.join(".git").exists() {
                return Err(SlotError::Obstructed {
                    repo: repo.clone(),
                    path: slot.path.clone(),
                });
            }
        } else if full_clone {
            let name = format!("slot{}", slot.number);
            clone(repo, &config.url, &self.pool_dir(repo), &name, false)?;
        } else {
            let main_clone = self.pool_dir(repo).join(MAIN_CLONE);
            let start = start_point(&main_clone, repo, &config.base_branch)?;
            let main = |git: Git| {
                git.run().map_err(|source| SlotError::Git {
                    subject: format!("repository {repo}"),
                    source,
                })
            };
            // A slot directory deleted by hand is still registered; prune forgets it.
            main(Git::new(&main_clone).args(["worktree", "prune"]))?;
            main(
                Git::new(&main_clone)
                    .args(["worktree", "add", "--quiet", "--detach"])
                    .path_arg(&slot.path)
                    .arg(&start)
                    .timeout(WORKTREE_TIMEOUT),
            )?;
        }
        ensure_excluded(slot)?;
        let start = start_point(&slot.path, repo, &config.base_branch)?;
        clean_onto(slot, &start)?;
        let now = timefmt::now_string();
        let commit = slot
            .git()
            .args(["rev-parse", "HEAD"])
            .text()
            .map_err(git_error(slot))?;
        let mut file = SlotFile {
            slot_id: slot.id.clone(),
            repo_name: repo.clone(),
            repo_url: config.url.clone(),
            slot_path: String::new(),
            state: SlotState::Available,
            allocation_count: 0,
            total_usage_seconds: 0,
            last_allocated_at: None,
            last_released_at: None,
            current_branch: Some(config.base_branch.clone()),
            current_commit: Some(commit),
            metadata: Map::new(),
            created_at: now.clone(),
            updated_at: now,
            other: Map::new(),
        };
        write_slot(slot, &mut file)
    }

    /// Removes the highest-numbered free slot; `None` when every one is in use.
    fn remove_free_slot(
        &self,
        repo: &str,
        present: &[u32],
        full_clones: bool,
    ) -> Result<Option<u32>, SlotError> {
        for &number in present.iter().rev() {
            let slot = self.slot_at(repo, number);
            let lock_path = self.lock_path(&slot.id);
            let Some(_lock) = FileLock::try_acquire(&lock_path)
                .map_err(|e| SlotError::io("lock", &lock_path, e))?
            else {
                continue;
            };
            match self.read_slot_file(&slot)? {
                Some(file) if file.state == SlotState::Available => {}
                _ => continue,
            }
            if full_clones {
                fs::remove_dir_all(&slot.path)
                    .map_err(|e| SlotError::io("remove", &slot.path, e))?;
            } else {
                let main_clone = self.pool_dir(repo).join(MAIN_CLONE);
                // --force: slot.json is an ignored file, which a plain remove refuses to lose.
                Git::new(&main_clone)
                    .args(["worktree", "remove", "--force"])
                    .path_arg(&slot.path)
                    .timeout(WORKTREE_TIMEOUT)
                    .run()
                    .map_err(|source| SlotError::Git {
                        subject: slot.subject(),
                        source,
                    })?;
            }
            return Ok(Some(number));
        }
        Ok(None)
    }

    // ----- allocation and release -----

    /// Marks the slot allocated, then puts the task's branch in it.
    fn prepare(
        &self,
        slot: &Slot,
        file: &mut SlotFile,
        settings: &Settings,
        spec: &str,
        task_id: &str,
        branch: &str,
    ) -> Result<(), SlotError> {
        check_checkout(slot)?;
        file.state = SlotState::Allocated;
        file.allocation_count += 1;
        file.last_allocated_at = Some(timefmt::now_string());
        file.clear_task();
        let meta = [
            (META_TASK, format!("{spec}/{task_id}")),
            (META_TASK_ID, task_id.to_owned()),
            (META_SPEC, spec.to_owned()),
        ];
        for (key, value) in meta {
            file.metadata.insert(key.to_owned(), Value::String(value));
        }
        // Written before git runs: from here on a crash leaves a slot that recovery cleans.
        write_slot(slot, file)?;

        // A NecroCode clone has never been told to hide slot.json.
        ensure_excluded(slot)?;
        if let Some(config) = self.configured(&slot.repo) {
            exclude_copied(slot, &config.bootstrap.copy_files)?;
        }
        fetch_base(slot, &settings.base_branch);
        let start = start_point(&slot.path, &slot.repo, &settings.base_branch)?;
        let start_commit = rev(slot, &start)?.unwrap_or_default();
        if let Some(old) = rev(slot, &format!("refs/heads/{branch}"))? {
            if old != start_commit {
                // `checkout -B` moves the branch: every attempt starts from the base. The old
                // tip stays reachable through the reflog; say where it was.
                log::warn!(
                    "{}: branch {branch} was at {old}; it starts again from {start}",
                    slot.id
                );
            }
        }
        slot.git()
            .args(["checkout", "--quiet", "--force", "--no-track", "-B", branch])
            .arg(&start)
            .timeout(WORKTREE_TIMEOUT)
            .run()
            .map_err(git_error(slot))?;
        // Leftovers a NecroCode clone may hold; our own slots are clean already.
        clean_untracked(slot)?;
        file.current_branch = Some(branch.to_owned());
        file.current_commit = Some(start_commit);
        write_slot(slot, file)
    }

    /// The shared end of release, recovery and repair: patch (unless the slot was already
    /// being cleaned, when its patch exists), mark `cleaning`, clean onto the base, account the
    /// time held, mark `available`.
    fn reclaim(
        &self,
        slot: &Slot,
        file: &mut SlotFile,
        base: &str,
        patch_path: &Path,
        checkpoint: Option<&str>,
    ) -> Result<Option<Patch>, SlotError> {
        check_checkout(slot)?;
        // A NecroCode slot recovered before we ever allocated it may still show slot.json.
        ensure_excluded(slot)?;
        let patch = if file.state == SlotState::Cleaning {
            None
        } else {
            save_patch(slot, patch_path, checkpoint)?
        };
        file.state = SlotState::Cleaning;
        write_slot(slot, file)?;
        let start = start_point(&slot.path, &slot.repo, base)?;
        clean_onto(slot, &start)?;
        let commit = rev(slot, "HEAD")?;

        let now = timefmt::now();
        let allocated = file.last_allocated_at.as_deref().and_then(timefmt::parse);
        let released = file.last_released_at.as_deref().and_then(timefmt::parse);
        // Count the time since the last allocation, unless a release already counted it.
        let counted = |at: &chrono::NaiveDateTime| match released {
            Some(released) => released < *at,
            None => true,
        };
        if let Some(allocated) = allocated.filter(counted) {
            let held = (now - allocated).num_seconds();
            file.total_usage_seconds += u64::try_from(held).unwrap_or(0);
        }
        file.state = SlotState::Available;
        file.last_released_at = Some(timefmt::format(now));
        file.current_branch = Some(base.to_owned());
        file.current_commit = commit;
        file.clear_task();
        write_slot(slot, file)?;
        Ok(patch)
    }

    /// Reclaims `slot` for recovery or repair if it is free of other hands and `wanted` still
    /// holds under its lock; the line says what happened. A failure is recorded on the slot and
    /// reported as a line, since one broken slot must not stop the others' recovery.
    fn try_reclaim(
        &self,
        slot: &Slot,
        base: &str,
        wanted: &dyn Fn(&SlotFile) -> bool,
    ) -> Result<Option<String>, SlotError> {
        self.repair_if(slot, wanted, |file| {
            let was = file.state;
            let task = file.task();
            let patch_path = self.recovered_path(slot, ".patch");
            let patch = self.reclaim(slot, file, base, &patch_path, None)?;
            let mut line = format!("{}: {} slot cleaned and available", slot.id, was.as_str());
            if let Some(task) = task {
                line.push_str(&format!(" (task {task})"));
            }
            if let Some(patch) = patch {
                line.push_str(&format!(
                    "; uncommitted changes saved to {}",
                    patch.path.display()
                ));
            }
            Ok(line)
        })
    }

    /// A worktree slot that is no longer a checkout (its `.git` link gone) cannot be cleaned:
    /// its directory is moved aside under `recovered/`, files and all, and the slot is made
    /// again from the main clone.
    fn try_rebuild(
        &self,
        slot: &Slot,
        config: &RepoConfig,
        wanted: &dyn Fn(&SlotFile) -> bool,
    ) -> Result<Option<String>, SlotError> {
        self.repair_if(slot, wanted, |_| {
            let recovered = self.pool_dir(&slot.repo).join(RECOVERED_DIR);
            let aside = self.recovered_path(slot, "");
            fs::create_dir_all(&recovered)
                .and_then(|()| fs::rename(&slot.path, &aside))
                .map_err(|e| SlotError::io("move aside", &slot.path, e))?;
            self.create_slot(slot, config, false)?;
            Ok(format!(
                "{}: not a checkout any more; rebuilt, its old files kept in {}",
                slot.id,
                aside.display()
            ))
        })
    }

    /// A new name under the pool's `recovered/` for what is saved from `slot`:
    /// `<slot_id>-<timestamp><suffix>`.
    fn recovered_path(&self, slot: &Slot, suffix: &str) -> PathBuf {
        let stamp = timefmt::now().format("%Y%m%dT%H%M%S%.6f");
        self.pool_dir(&slot.repo)
            .join(RECOVERED_DIR)
            .join(format!("{}-{stamp}{suffix}", slot.id))
    }

    /// Runs `repair` on `slot` under its lock if the slot is free of other hands and `wanted`
    /// holds; `None` otherwise. A failed repair is recorded on the slot (when its directory is
    /// still there) and reported as a line.
    fn repair_if(
        &self,
        slot: &Slot,
        wanted: &dyn Fn(&SlotFile) -> bool,
        repair: impl FnOnce(&mut SlotFile) -> Result<String, SlotError>,
    ) -> Result<Option<String>, SlotError> {
        let lock_path = self.lock_path(&slot.id);
        let Some(_lock) =
            FileLock::try_acquire(&lock_path).map_err(|e| SlotError::io("lock", &lock_path, e))?
        else {
            return Ok(None);
        };
        let Some(mut file) = self.read_slot_file(slot)? else {
            return Ok(None);
        };
        if !wanted(&file) {
            return Ok(None);
        }
        let line = repair(&mut file).unwrap_or_else(|err| {
            if slot.path.is_dir() {
                self.mark_error(slot, &mut file, &err);
            }
            format!("{}: still in error: {err}", slot.id)
        });
        log::info!("{line}");
        Ok(Some(line))
    }

    /// Records `err` on the slot so that allocation skips it. Failing to write is logged: the
    /// caller is already returning `err`, the more useful of the two.
    fn mark_error(&self, slot: &Slot, file: &mut SlotFile, err: &SlotError) {
        log::error!("{}: {err}", slot.id);
        file.state = SlotState::Error;
        file.metadata
            .insert(META_ERROR.to_owned(), Value::String(err.to_string()));
        if let Err(write_err) = write_slot(slot, file) {
            log::error!("{}: cannot record the error state: {write_err}", slot.id);
        }
    }

    // ----- layout and files -----

    fn configured(&self, repo: &str) -> Option<&RepoConfig> {
        self.inner.repos.iter().find(|config| config.name == repo)
    }

    fn settings(&self, repo: &str) -> Result<Settings, SlotError> {
        if let Some(config) = self.configured(repo) {
            return Ok(Settings {
                url: config.url.clone(),
                base_branch: config.base_branch.clone(),
                branch_pattern: config.branch_pattern.clone(),
            });
        }
        match self.read_pool_file(repo)? {
            Some(pool) => Ok(Settings {
                url: pool.repo_url,
                base_branch: DEFAULT_BASE_BRANCH.to_owned(),
                branch_pattern: DEFAULT_BRANCH_PATTERN.to_owned(),
            }),
            None => Err(SlotError::UnknownRepo {
                repo: repo.to_owned(),
                dir: self.inner.dir.clone(),
            }),
        }
    }

    fn pool_dir(&self, repo: &str) -> PathBuf {
        self.inner.dir.join(repo)
    }

    fn lock_path(&self, slot_id: &str) -> PathBuf {
        self.inner
            .dir
            .join(LOCKS_DIR)
            .join(format!("{slot_id}.lock"))
    }

    fn lock_slot(&self, slot: &Slot) -> Result<FileLock, SlotError> {
        let path = self.lock_path(&slot.id);
        FileLock::acquire(&path, SLOT_LOCK_WAIT).map_err(|e| SlotError::io("lock", &path, e))
    }

    fn lock_pool(&self, repo: &str) -> Result<FileLock, SlotError> {
        let path = self
            .inner
            .dir
            .join(LOCKS_DIR)
            .join(format!("{repo}.pool.lock"));
        FileLock::acquire(&path, POOL_LOCK_WAIT).map_err(|e| SlotError::io("lock", &path, e))
    }

    fn slot_at(&self, repo: &str, number: u32) -> Slot {
        Slot {
            repo: repo.to_owned(),
            number,
            id: format!("workspace-{repo}-slot{number}"),
            path: self.pool_dir(repo).join(format!("slot{number}")),
        }
    }

    /// The slot named by an id `workspace-<repo>-slot<N>`, which must exist.
    fn slot(&self, slot_id: &str) -> Result<Slot, SlotError> {
        names::validate("slot id", slot_id)?;
        let parsed = slot_id
            .strip_prefix("workspace-")
            .and_then(|rest| rest.rsplit_once("-slot"))
            .and_then(|(repo, number)| Some((repo, slot_number(number)?)))
            .filter(|(repo, _)| names::validate("repository name", repo).is_ok());
        let slot = parsed.map(|(repo, number)| self.slot_at(repo, number));
        match slot {
            Some(slot) if slot.file_path().is_file() => Ok(slot),
            _ => Err(SlotError::UnknownSlot {
                slot_id: slot_id.to_owned(),
                path: match parsed {
                    Some((repo, number)) => self.slot_at(repo, number).file_path(),
                    None => self.inner.dir.join("<repo>/slot<N>").join(SLOT_FILE),
                },
            }),
        }
    }

    /// Configured repositories and pools found on disk, sorted.
    fn repo_names(&self) -> Result<Vec<String>, SlotError> {
        let mut repos: Vec<String> = self.inner.repos.iter().map(|r| r.name.clone()).collect();
        let dir = &self.inner.dir;
        match fs::read_dir(dir) {
            Ok(entries) => {
                for entry in entries {
                    let entry = entry.map_err(|e| SlotError::io("list", dir, e))?;
                    let Ok(name) = entry.file_name().into_string() else {
                        continue;
                    };
                    let is_pool = names::validate("repository name", &name).is_ok()
                        && entry.path().join(POOL_FILE).is_file();
                    if is_pool {
                        repos.push(name);
                    }
                }
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(SlotError::io("list", dir, err)),
        }
        repos.sort();
        repos.dedup();
        Ok(repos)
    }

    fn read_pool_file(&self, repo: &str) -> Result<Option<PoolFile>, SlotError> {
        read_json(&self.pool_dir(repo).join(POOL_FILE))
    }

    fn read_slot_file(&self, slot: &Slot) -> Result<Option<SlotFile>, SlotError> {
        read_json(&slot.file_path())
    }

    /// The slots of a pool (directories `slot<N>` holding a `slot.json`), by number.
    fn read_slots(&self, repo: &str) -> Result<Vec<(Slot, SlotFile)>, SlotError> {
        let dir = self.pool_dir(repo);
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(SlotError::io("list", &dir, err)),
        };
        let mut slots = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| SlotError::io("list", &dir, e))?;
            let name = entry.file_name();
            let number = name
                .to_str()
                .and_then(|name| name.strip_prefix("slot"))
                .and_then(slot_number);
            let Some(number) = number else {
                continue;
            };
            let slot = self.slot_at(repo, number);
            if let Some(file) = self.read_slot_file(&slot)? {
                slots.push((slot, file));
            }
        }
        slots.sort_by_key(|(slot, _)| slot.number);
        Ok(slots)
    }
}

/// `N` of `slot<N>`: a positive decimal number without leading zeros, so that each slot has
/// exactly one spelling.
fn slot_number(text: &str) -> Option<u32> {
    let number: u32 = text.parse().ok()?;
    (number > 0 && number.to_string() == text).then_some(number)
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, SlotError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(SlotError::io("read", path, err)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| SlotError::Parse {
            path: path.to_path_buf(),
            source,
        })
}

fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), SlotError> {
    let bytes = to_pretty_bytes(value).map_err(|source| SlotError::Parse {
        path: path.to_path_buf(),
        source,
    })?;
    fsutil::write_atomic(path, &bytes).map_err(|e| SlotError::io("write", path, e))
}

/// Writes `slot.json`, with the path where the slot really is: a pool copied from another
/// machine still names the old one.
fn write_slot(slot: &Slot, file: &mut SlotFile) -> Result<(), SlotError> {
    file.slot_path = slot.path.to_string_lossy().into_owned();
    file.updated_at = timefmt::now_string();
    write_json(&slot.file_path(), file)
}

// ----- git steps -----

fn git_error(slot: &Slot) -> impl Fn(GitError) -> SlotError + '_ {
    move |source| SlotError::Git {
        subject: slot.subject(),
        source,
    }
}

/// `git clone` into `<parent>/<name>`, through a temporary name so that an interrupted clone
/// never looks like a finished one.
fn clone(
    repo: &str,
    url: &str,
    parent: &Path,
    name: &str,
    no_checkout: bool,
) -> Result<(), SlotError> {
    let partial = parent.join(format!("{name}.partial"));
    if partial.exists() {
        fs::remove_dir_all(&partial).map_err(|e| SlotError::io("remove", &partial, e))?;
    }
    let mut git = Git::new(parent).args(["clone", "--quiet"]);
    if no_checkout {
        // The main clone only holds objects and refs for its worktrees.
        git = git.arg("--no-checkout");
    }
    git.args(["--", url])
        .path_arg(&partial)
        .timeout(CLONE_TIMEOUT)
        .run()
        .map_err(|source| SlotError::Git {
            subject: format!("repository {repo}"),
            source,
        })?;
    let target = parent.join(name);
    fs::rename(&partial, &target).map_err(|e| SlotError::io("rename", &partial, e))
}

/// Refuses to run git in a slot without its `.git`: the error is clearer than git's, and the
/// check does not depend on git honouring the discovery ceiling.
fn check_checkout(slot: &Slot) -> Result<(), SlotError> {
    if slot.path.join(".git").exists() {
        Ok(())
    } else {
        Err(SlotError::NotACheckout {
            slot_id: slot.id.clone(),
            path: slot.path.clone(),
        })
    }
}

/// Adds `/slot.json` to the repository's `info/exclude` (shared by all worktrees of a main
/// clone), so that `git status` and `git add -A` never see it.
fn ensure_excluded(slot: &Slot) -> Result<(), SlotError> {
    let patterns = [SLOT_FILE_PATTERN.to_owned(), SLOT_TEMP_PATTERN.to_owned()];
    exclude(slot, "dispatcher slot state", &patterns)
}

/// Hides the repository's `copy_files` the same way: they are the slot's environment (often
/// secrets, like `.env`), not an agent's work, so they must not land in patches or
/// checkpoints. A file the repository tracks is not affected.
fn exclude_copied(slot: &Slot, copy_files: &[String]) -> Result<(), SlotError> {
    let patterns: Vec<String> = copy_files
        .iter()
        .map(|path| exclude_pattern(path))
        .collect();
    exclude(slot, "dispatcher copy_files", &patterns)
}

/// `path` as an ignore pattern that matches only itself: anchored by its leading `/` (which
/// also keeps a `!` or `#` from meaning negation or a comment), glob characters escaped.
fn exclude_pattern(path: &str) -> String {
    let mut pattern = String::from("/");
    for c in path.trim_start_matches("./").chars() {
        if matches!(c, '*' | '?' | '[' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    if pattern.ends_with(' ') {
        pattern.insert(pattern.len() - 1, '\\');
    }
    pattern
}

/// Appends to the repository's `info/exclude` each of `patterns` it lacks, under `# header`.
fn exclude(slot: &Slot, header: &str, patterns: &[String]) -> Result<(), SlotError> {
    if patterns.is_empty() {
        return Ok(());
    }
    let text = slot
        .git()
        .args(["rev-parse", "--git-path", "info/exclude"])
        .text()
        .map_err(git_error(slot))?;
    let path = slot.path.join(text);
    let current = match fs::read_to_string(&path) {
        Ok(current) => current,
        Err(err) if err.kind() == io::ErrorKind::NotFound => String::new(),
        Err(err) => return Err(SlotError::io("read", &path, err)),
    };
    let missing: Vec<&String> = patterns
        .iter()
        .filter(|pattern| !current.lines().any(|line| line == pattern.as_str()))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| SlotError::io("create", dir, e))?;
    }
    let separator = if current.is_empty() || current.ends_with('\n') {
        ""
    } else {
        "\n"
    };
    let mut lines = format!("{separator}# {header}\n");
    for pattern in missing {
        lines.push_str(pattern);
        lines.push('\n');
    }
    // Append mode: two slots of one main clone may add the line at once; a duplicate line
    // is harmless, a lost write would not be.
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut out| out.write_all(lines.as_bytes()))
        .map_err(|e| SlotError::io("write", &path, e))
}

/// Updates `origin/<base>` when origin is reachable. A failure is only a warning: the slot
/// still works from the last fetched base.
fn fetch_base(slot: &Slot, base: &str) {
    let has_origin = slot
        .git()
        .args(["remote", "get-url", "origin"])
        .succeeds()
        .unwrap_or(false);
    if !has_origin {
        return;
    }
    let refspec = format!("+refs/heads/{base}:refs/remotes/origin/{base}");
    if let Err(err) = slot
        .git()
        .args(["fetch", "--quiet", "--no-tags", "origin", &refspec])
        .run()
    {
        log::warn!(
            "{}: fetch failed; using the last fetched {base}: {err}",
            slot.id
        );
    }
}

/// `origin/<base>` when that remote-tracking branch exists, else the local `<base>`, as a
/// full ref name.
fn start_point(dir: &Path, repo: &str, base: &str) -> Result<String, SlotError> {
    for candidate in [
        format!("refs/remotes/origin/{base}"),
        format!("refs/heads/{base}"),
    ] {
        let found = Git::new(dir)
            .args(["rev-parse", "--verify", "--quiet"])
            .arg(format!("{candidate}^{{commit}}"))
            .succeeds()
            .map_err(|source| SlotError::Git {
                subject: format!("repository {repo}"),
                source,
            })?;
        if found {
            return Ok(candidate);
        }
    }
    Err(SlotError::NoBaseBranch {
        repo: repo.to_owned(),
        branch: base.to_owned(),
    })
}

/// The commit `name` points at, or `None` if it does not exist.
fn rev(slot: &Slot, name: &str) -> Result<Option<String>, SlotError> {
    let found = slot
        .git()
        .args(["rev-parse", "--verify", "--quiet"])
        .arg(format!("{name}^{{commit}}"))
        .text();
    match found {
        Ok(commit) => Ok(Some(commit)),
        Err(GitError::Failed { .. }) => Ok(None),
        Err(err) => Err(git_error(slot)(err)),
    }
}

/// Saves what `git add -A` would stage (so ignored files, `slot.json` among them, are left
/// out) as a binary diff against HEAD. The staging happens in a copy of the index, so the slot's own
/// index is never touched; the copy keeps the cached stat data, so unchanged files are not
/// hashed again. With `checkpoint`, the same staging is also committed under that ref.
fn save_patch(
    slot: &Slot,
    patch_path: &Path,
    checkpoint: Option<&str>,
) -> Result<Option<Patch>, SlotError> {
    let to_path = |text: String| slot.path.join(text);
    let index = slot
        .git()
        .args(["rev-parse", "--git-path", "index"])
        .text()
        .map(to_path)
        .map_err(git_error(slot))?;
    let temp_index = slot
        .git()
        .args(["rev-parse", "--git-path", "dispatcher-patch-index"])
        .text()
        .map(to_path)
        .map_err(git_error(slot))?;
    match fs::copy(&index, &temp_index) {
        Ok(_) => {}
        // A fresh clone may have no index yet; git builds one from scratch.
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(SlotError::io("copy", &index, err)),
    }
    let diff = slot
        .git()
        .env_path("GIT_INDEX_FILE", &temp_index)
        .args(["add", "--all"])
        .timeout(WORKTREE_TIMEOUT)
        .run()
        .and_then(|()| {
            if let Some(refname) = checkpoint {
                match checkpoint::commit(&slot.path, &temp_index, refname) {
                    Ok(commit) => log::info!("{}: checkpoint {refname} at {commit}", slot.id),
                    Err(err) => log::warn!("{}: no checkpoint {refname}: {err}", slot.id),
                }
            }
            slot.git()
                .env_path("GIT_INDEX_FILE", &temp_index)
                .args([
                    "diff",
                    "--cached",
                    "--binary",
                    "--no-color",
                    "--no-ext-diff",
                    "--src-prefix=a/",
                    "--dst-prefix=b/",
                    "HEAD",
                ])
                .timeout(WORKTREE_TIMEOUT)
                .output()
        })
        .and_then(|diff| {
            if diff.is_empty() {
                return Ok((diff, Vec::new()));
            }
            // The names, for learned footprints: NUL-separated, so no quoting to undo.
            let names = slot
                .git()
                .env_path("GIT_INDEX_FILE", &temp_index)
                .args([
                    "diff",
                    "--cached",
                    "--name-only",
                    "-z",
                    "--no-renames",
                    "HEAD",
                ])
                .timeout(WORKTREE_TIMEOUT)
                .output()?;
            Ok((diff, names))
        });
    // The copy is scratch either way; a leftover would only waste space.
    let _ = fs::remove_file(&temp_index);
    let (diff, names) = diff.map_err(git_error(slot))?;
    if diff.is_empty() {
        return Ok(None);
    }
    let paths = names
        .split(|&b| b == 0)
        .filter(|name| !name.is_empty())
        .map(|name| String::from_utf8_lossy(name).into_owned())
        .collect();
    let patch_path = unused_patch_path(patch_path);
    fsutil::write_atomic(&patch_path, &diff).map_err(|e| SlotError::io("write", &patch_path, e))?;
    Ok(Some(Patch {
        path: patch_path,
        size_bytes: diff.len() as u64,
        paths,
    }))
}

/// `path`, or `<stem>-2.patch`, `<stem>-3.patch`… when it is taken: an attempt cut short by a
/// drain or a crash keeps its number, and its patch must not be overwritten by the next one.
fn unused_patch_path(path: &Path) -> PathBuf {
    if !path.exists() {
        return path.to_path_buf();
    }
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    (2u32..)
        .map(|n| path.with_file_name(format!("{stem}-{n}.patch")))
        .find(|candidate| !candidate.exists())
        .expect("some suffix is free")
}

/// Discards every change and untracked file (except `slot.json`) and checks out `start`
/// detached, so the next task sees a pristine checkout. Branches are not touched.
fn clean_onto(slot: &Slot, start: &str) -> Result<(), SlotError> {
    slot.git()
        .args(["reset", "--hard", "--quiet"])
        .timeout(WORKTREE_TIMEOUT)
        .run()
        .and_then(|()| {
            slot.git()
                .args(["checkout", "--quiet", "--force", "--detach", start])
                .timeout(WORKTREE_TIMEOUT)
                .run()
        })
        .map_err(git_error(slot))?;
    clean_untracked(slot)
}

/// `git clean -ffdx` keeping `slot.json`: `-x` drops ignored build output too, and `-ff`
/// also removes nested repositories an agent may have created.
fn clean_untracked(slot: &Slot) -> Result<(), SlotError> {
    slot.git()
        .args(["clean", "-ffdxq", "-e", SLOT_FILE_PATTERN])
        .timeout(WORKTREE_TIMEOUT)
        .run()
        .map_err(git_error(slot))
}

#[cfg(test)]
mod tests;

//! What `dispatcher slots` shows: the pools and their slots as data (`--json`) and as text.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::model::{SlotFile, SlotState};

/// One pool, configured or found on disk.
#[derive(Debug, Clone, Serialize)]
pub struct PoolView {
    pub repo_name: String,
    pub repo_url: String,
    /// Listed in `[repo_pool]`; a pool found on disk only is used but never synced.
    pub configured: bool,
    /// The configured slot count, which `sync` makes true.
    pub configured_slots: Option<usize>,
    /// Whether `pool.json` exists.
    pub synced: bool,
    pub path: PathBuf,
    /// Size of the main clone (`.repo`), which holds the objects of every worktree slot;
    /// `None` for a pool of full clones.
    pub main_clone_bytes: Option<u64>,
    pub slots: Vec<SlotView>,
}

/// One slot.
#[derive(Debug, Clone, Serialize)]
pub struct SlotView {
    pub slot_id: String,
    pub slot_path: PathBuf,
    pub state: SlotState,
    /// `spec/task_id` of the task holding the slot.
    pub task: Option<String>,
    pub allocation_count: u64,
    pub total_usage_seconds: u64,
    pub last_allocated_at: Option<String>,
    pub last_released_at: Option<String>,
    pub current_branch: Option<String>,
    pub current_commit: Option<String>,
    /// Why the slot is in `error`.
    pub error: Option<String>,
    /// Apparent size of everything under the slot directory.
    pub disk_bytes: u64,
}

impl SlotView {
    pub(super) fn new(slot_id: &str, path: &Path, file: &SlotFile) -> SlotView {
        SlotView {
            slot_id: slot_id.to_owned(),
            slot_path: path.to_path_buf(),
            state: file.state,
            // Only a held slot has a task; NecroCode leaves stale task metadata behind.
            task: match file.state {
                SlotState::Allocated | SlotState::Cleaning | SlotState::Error => file.task(),
                SlotState::Available => None,
            },
            allocation_count: file.allocation_count,
            total_usage_seconds: file.total_usage_seconds,
            last_allocated_at: file.last_allocated_at.clone(),
            last_released_at: file.last_released_at.clone(),
            current_branch: file.current_branch.clone(),
            current_commit: file.current_commit.clone(),
            error: file.error().map(str::to_owned),
            disk_bytes: disk_usage(path),
        }
    }
}

/// Total apparent size of the files under `path`, not following symlinks. Unreadable parts
/// count as empty: this is a display figure, not an invariant.
pub(super) fn disk_usage(path: &Path) -> u64 {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    let Ok(entries) = fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| disk_usage(&entry.path()))
        .sum()
}

/// The text form of `dispatcher slots`.
pub fn render(pools: &[PoolView]) -> String {
    if pools.is_empty() {
        return "no repository pools (add [[repo_pool.repos]] to the config)\n".to_owned();
    }
    let mut out = String::new();
    for pool in pools {
        let mut title = format!("{}  {}", pool.repo_name, pool.repo_url);
        let _ = write!(title, "  {} slot(s)", pool.slots.len());
        match pool.configured_slots {
            Some(wanted) if wanted != pool.slots.len() || !pool.synced => {
                let _ = write!(title, ", {wanted} configured: run `dispatcher slots sync`");
            }
            Some(_) => {}
            None => title.push_str(", not configured"),
        }
        if let Some(bytes) = pool.main_clone_bytes {
            let _ = write!(title, ", main clone {}", format_bytes(bytes));
        }
        let header = ["SLOT", "STATE", "TASK", "BRANCH", "ALLOCS", "USED", "DISK"];
        let rows = pool.slots.iter().map(|slot| {
            let mut state = slot.state.as_str().to_owned();
            if let Some(error) = &slot.error {
                let _ = write!(state, " ({error})");
            }
            vec![
                slot.slot_id.clone(),
                state,
                slot.task.clone().unwrap_or_else(|| "-".to_owned()),
                slot.current_branch
                    .clone()
                    .unwrap_or_else(|| "-".to_owned()),
                slot.allocation_count.to_string(),
                crate::status::format_seconds(slot.total_usage_seconds as f64),
                format_bytes(slot.disk_bytes),
            ]
        });
        crate::status::section(&mut out, &title, &header, rows);
    }
    out
}

fn format_bytes(bytes: u64) -> String {
    const UNITS: &[&str] = &["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_shown_in_binary_units() {
        assert_eq!(format_bytes(0), "0 B");
        assert_eq!(format_bytes(1023), "1023 B");
        assert_eq!(format_bytes(1536), "1.5 KiB");
        assert_eq!(format_bytes(5 * 1024 * 1024 * 1024), "5.0 GiB");
    }
}

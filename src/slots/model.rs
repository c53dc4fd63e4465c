//! `pool.json` and `slot.json` in the field layout of NecroCode's Python `PoolManager`. Fields
//! this version does not know are kept, so a read-modify-write never drops NecroCode's data.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// A slot's state, spelled as NecroCode spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlotState {
    Available,
    Allocated,
    Cleaning,
    Error,
}

impl SlotState {
    pub fn as_str(self) -> &'static str {
        match self {
            SlotState::Available => "available",
            SlotState::Allocated => "allocated",
            SlotState::Cleaning => "cleaning",
            SlotState::Error => "error",
        }
    }
}

/// `<workspaces>/<repo>/pool.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolFile {
    pub repo_name: String,
    pub repo_url: String,
    pub num_slots: usize,
    pub created_at: String,
    pub updated_at: String,
    #[serde(default)]
    pub metadata: Map<String, Value>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// `<workspaces>/<repo>/slot<N>/slot.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SlotFile {
    pub slot_id: String,
    pub repo_name: String,
    pub repo_url: String,
    pub slot_path: String,
    pub state: SlotState,
    #[serde(default)]
    pub allocation_count: u64,
    /// Whole seconds; NecroCode may write a float, which is rounded on reading.
    #[serde(default, deserialize_with = "seconds")]
    pub total_usage_seconds: u64,
    #[serde(default)]
    pub last_allocated_at: Option<String>,
    #[serde(default)]
    pub last_released_at: Option<String>,
    #[serde(default)]
    pub current_branch: Option<String>,
    #[serde(default)]
    pub current_commit: Option<String>,
    #[serde(default)]
    pub metadata: Map<String, Value>,
    pub created_at: String,
    pub updated_at: String,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// Metadata keys the dispatcher sets on a slot. `task_id` and `spec_name` are the ones
/// NecroCode writes; `task` (`spec/task_id`) is the dispatcher's one-glance form of both.
pub const META_TASK: &str = "task";
pub const META_TASK_ID: &str = "task_id";
pub const META_SPEC: &str = "spec_name";
/// The message of the failure that put a slot in the `error` state.
pub const META_ERROR: &str = "error";

impl SlotFile {
    /// The task holding the slot: `metadata.task`, else NecroCode's `spec_name`/`task_id`.
    pub fn task(&self) -> Option<String> {
        let text = |key| self.metadata.get(key).and_then(Value::as_str);
        if let Some(task) = text(META_TASK) {
            return Some(task.to_owned());
        }
        match (text(META_SPEC), text(META_TASK_ID)) {
            (Some(spec), Some(id)) => Some(format!("{spec}/{id}")),
            (None, Some(id)) => Some(id.to_owned()),
            _ => None,
        }
    }

    pub fn error(&self) -> Option<&str> {
        self.metadata.get(META_ERROR).and_then(Value::as_str)
    }

    /// Forgets the task and any earlier error, as when the slot becomes free again.
    pub fn clear_task(&mut self) {
        for key in [META_TASK, META_TASK_ID, META_SPEC, META_ERROR] {
            self.metadata.remove(key);
        }
    }

    /// When the slot last changed hands, for least-recently-used order; `None` if never used.
    pub fn last_used(&self) -> Option<chrono::NaiveDateTime> {
        let times = [&self.last_allocated_at, &self.last_released_at];
        times
            .into_iter()
            .filter_map(|time| time.as_deref().and_then(crate::timefmt::parse))
            .max()
    }
}

fn seconds<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    let value = Option::<f64>::deserialize(deserializer)?.unwrap_or(0.0);
    // Negative or NaN durations cannot be meant; they count as nothing used.
    Ok(if value.is_finite() && value > 0.0 {
        value.round() as u64
    } else {
        0
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::json::to_pretty_bytes;
    use std::path::Path;

    fn fixture(path: &str) -> String {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/necrocode/workspaces/chat-app");
        std::fs::read_to_string(root.join(path)).unwrap()
    }

    #[test]
    fn necrocode_files_round_trip_byte_for_byte() {
        for path in ["pool.json", "slot1/slot.json", "slot2/slot.json"] {
            let text = fixture(path);
            let bytes = if path == "pool.json" {
                to_pretty_bytes(&serde_json::from_str::<PoolFile>(&text).unwrap())
            } else {
                to_pretty_bytes(&serde_json::from_str::<SlotFile>(&text).unwrap())
            };
            assert_eq!(String::from_utf8(bytes.unwrap()).unwrap(), text, "{path}");
        }
    }

    #[test]
    fn reads_necrocode_task_metadata_and_float_seconds() {
        let slot: SlotFile = serde_json::from_str(&fixture("slot2/slot.json")).unwrap();
        assert_eq!(slot.state, SlotState::Allocated);
        assert_eq!(slot.task().as_deref(), Some("chat-app/1.1"));
        assert!(slot.last_used().is_some());

        let text = fixture("slot1/slot.json").replace(
            "\"total_usage_seconds\": 0",
            "\"total_usage_seconds\": 12.6, \"future_field\": [1]",
        );
        let slot: SlotFile = serde_json::from_str(&text).unwrap();
        assert_eq!(slot.total_usage_seconds, 13);
        assert_eq!(slot.other["future_field"], serde_json::json!([1]));
        assert_eq!(slot.last_used(), None);
    }
}

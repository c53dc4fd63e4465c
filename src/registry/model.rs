//! The taskset document as NecroCode writes it: field order, nulls and unknown fields are kept so
//! that a read-modify-write changes only what the dispatcher meant to change.

use std::collections::HashSet;
use std::fmt;

use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::names;
use crate::registry::json;

/// A task's lifecycle state, spelled as NecroCode spells it.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    Ready,
    Running,
    Blocked,
    Done,
    Failed,
}

impl TaskState {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Ready => "ready",
            TaskState::Running => "running",
            TaskState::Blocked => "blocked",
            TaskState::Done => "done",
            TaskState::Failed => "failed",
        }
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One spec's `taskset.json`. Fields are declared in the order NecroCode writes them.
///
/// Unknown keys land in `extra` and are written back after the known ones. A timestamp that is
/// missing stays missing; one that is an explicit `null` is written back as `null` (remembered
/// as a `null` under the same key in `extra`).
#[derive(Deserialize, Clone, Debug, PartialEq)]
#[serde(from = "TasksetRepr")]
pub struct Taskset {
    pub spec_name: String,
    pub version: u64,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
    pub tasks: Vec<Task>,
    pub metadata: Map<String, Value>,
    pub extra: Map<String, Value>,
}

/// One task. Missing optional fields get defaults so a hand-written taskset with only `id`,
/// `title` and `state` per task loads; the nullable fields are written as `null` when `None`,
/// as NecroCode does.
#[derive(Deserialize, Clone, Debug, PartialEq)]
#[serde(from = "TaskRepr")]
pub struct Task {
    pub id: String,
    pub title: String,
    pub description: String,
    pub state: TaskState,
    pub dependencies: Vec<String>,
    pub required_skill: Option<String>,
    pub priority: i64,
    pub is_optional: bool,
    pub assigned_slot: Option<String>,
    pub reserved_branch: Option<String>,
    pub runner_id: Option<String>,
    pub artifacts: Vec<Value>,
    pub metadata: Map<String, Value>,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
    pub extra: Map<String, Value>,
}

/// What the dispatcher persists per task, under `task.metadata["dispatcher"]` (Python tools drop
/// unknown top-level task keys when they rewrite a file, but keep metadata).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct DispatcherMeta {
    /// Attempts started and counted against the retry limit.
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runner_id: Option<String>,
    /// The state dir of the dispatcher that claimed the task.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready_at: Option<String>,
    /// `dispatcher cancel` asked for the running attempt to be stopped.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancel_requested: bool,
    /// Attempts that failed for `infra` reasons (not counted in `attempts`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub infra_failures: u32,
    /// Attempts handed back uncounted because their pool's breaker opened.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub requeues: u32,
    /// Every ended attempt, oldest first (`dispatcher attempts`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<AttemptRecord>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// One ended attempt of a task, kept in its metadata.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct AttemptRecord {
    /// The attempt's number; an attempt that did not count shares its number with the next.
    pub attempt: u32,
    pub runner_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    pub ended_at: String,
    /// `succeeded`, `failed`, `timed_out`, `heartbeat_lost`, `cancelled`, `interrupted`, `lost`.
    pub outcome: String,
    /// The failure class, when one was given (`rate_limited`, `auth_expired`, `infra` …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Whether it counted against `max_attempts`.
    pub counted: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_file: Option<String>,
    /// The git ref holding the attempt's worktree, uncommitted changes included.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint_ref: Option<String>,
    /// What the runner reported spending.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spend: Option<Value>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

const DISPATCHER_KEY: &str = "dispatcher";

impl Task {
    /// The dispatcher's bookkeeping; the default when it is missing or malformed.
    pub fn dispatcher_meta(&self) -> DispatcherMeta {
        self.metadata
            .get(DISPATCHER_KEY)
            .and_then(|v| DispatcherMeta::deserialize(v).ok())
            .unwrap_or_default()
    }

    /// Stores `m` under `metadata["dispatcher"]`, keeping the other keys and their order.
    pub fn set_dispatcher_meta(&mut self, m: &DispatcherMeta) {
        let value = serde_json::to_value(m).unwrap_or_else(|_| Value::Object(Map::new()));
        // On an existing key, the order-preserving map replaces the value in place.
        self.metadata.insert(DISPATCHER_KEY.to_owned(), value);
    }
}

impl Taskset {
    /// A taskset of `(id, state, dependencies)` rows, each task titled by its id.
    #[cfg(test)]
    pub(crate) fn from_rows(spec: &str, rows: &[(&str, &str, &[&str])]) -> Taskset {
        let tasks: Vec<Value> = rows
            .iter()
            .map(|(id, state, deps)| {
                serde_json::json!({"id": id, "title": id, "state": state, "dependencies": deps})
            })
            .collect();
        serde_json::from_value(serde_json::json!({
            "spec_name": spec, "version": 1, "tasks": tasks, "metadata": {}
        }))
        .expect("rows make a valid taskset")
    }

    pub fn task(&self, id: &str) -> Option<&Task> {
        self.tasks.iter().find(|t| t.id == id)
    }

    pub fn task_mut(&mut self, id: &str) -> Option<&mut Task> {
        self.tasks.iter_mut().find(|t| t.id == id)
    }

    /// Makes every `blocked` task whose dependencies all exist and are `done` `ready`, stamping
    /// `updated_at` and `metadata.dispatcher.ready_at` with `now`; returns their ids.
    ///
    /// A blocked task without dependencies is left alone: nothing NecroCode does creates one,
    /// so it was blocked on purpose by a person.
    pub fn unblock_ready_dependents(&mut self, now: &str) -> Vec<String> {
        let done: HashSet<String> = self
            .tasks
            .iter()
            .filter(|t| t.state == TaskState::Done)
            .map(|t| t.id.clone())
            .collect();
        let mut unblocked = Vec::new();
        for task in &mut self.tasks {
            let ready = task.state == TaskState::Blocked
                && !task.dependencies.is_empty()
                && task.dependencies.iter().all(|d| done.contains(d));
            if ready {
                task.state = TaskState::Ready;
                task.updated_at = Some(now.to_owned());
                let mut meta = task.dispatcher_meta();
                meta.ready_at = Some(now.to_owned());
                task.set_dispatcher_meta(&meta);
                unblocked.push(task.id.clone());
            }
        }
        unblocked
    }

    /// Checks what must hold before the taskset is used or written: `spec_name` matches the
    /// directory, names are safe path parts and task ids are unique. Unknown dependencies are
    /// allowed; such a task is simply never runnable.
    pub fn validate(&self, dir_name: &str) -> Result<(), String> {
        if self.spec_name != dir_name {
            return Err(format!(
                "spec_name {:?} does not match directory name {dir_name:?}",
                self.spec_name
            ));
        }
        names::validate("spec name", &self.spec_name).map_err(|e| e.to_string())?;
        let mut seen = HashSet::with_capacity(self.tasks.len());
        for task in &self.tasks {
            names::validate("task id", &task.id).map_err(|e| e.to_string())?;
            if !seen.insert(task.id.as_str()) {
                return Err(format!("duplicate task id {:?}", task.id));
            }
        }
        Ok(())
    }

    /// The file content as Python's `json.dump(indent=2)` writes it (no trailing newline).
    pub fn to_json_bytes(&self) -> Vec<u8> {
        // Serialising strings, numbers and string-keyed maps into a Vec cannot fail.
        json::to_pretty_bytes(self).expect("taskset serializes to JSON")
    }
}

/// The on-disk shape of `Taskset` when reading, distinguishing a missing timestamp from an
/// explicit `null`.
#[derive(Deserialize)]
#[serde(rename = "Taskset")]
struct TasksetRepr {
    spec_name: String,
    #[serde(default)]
    version: u64,
    #[serde(default, deserialize_with = "nullable::deserialize")]
    created_at: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable::deserialize")]
    updated_at: Option<Option<String>>,
    #[serde(default)]
    tasks: Vec<Task>,
    #[serde(default)]
    metadata: Map<String, Value>,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

const TASKSET_FIELDS: &[&str] = &[
    "spec_name",
    "version",
    "created_at",
    "updated_at",
    "tasks",
    "metadata",
];

impl From<TasksetRepr> for Taskset {
    fn from(r: TasksetRepr) -> Self {
        let mut extra = r.extra;
        let created_at = remember_null(r.created_at, &mut extra, "created_at");
        let updated_at = remember_null(r.updated_at, &mut extra, "updated_at");
        Taskset {
            spec_name: r.spec_name,
            version: r.version,
            created_at,
            updated_at,
            tasks: r.tasks,
            metadata: r.metadata,
            extra,
        }
    }
}

/// The on-disk shape of `Task` when reading; see `TasksetRepr`.
#[derive(Deserialize)]
#[serde(rename = "Task")]
struct TaskRepr {
    id: String,
    title: String,
    #[serde(default)]
    description: String,
    state: TaskState,
    #[serde(default)]
    dependencies: Vec<String>,
    #[serde(default)]
    required_skill: Option<String>,
    #[serde(default)]
    priority: i64,
    #[serde(default)]
    is_optional: bool,
    #[serde(default)]
    assigned_slot: Option<String>,
    #[serde(default)]
    reserved_branch: Option<String>,
    #[serde(default)]
    runner_id: Option<String>,
    #[serde(default)]
    artifacts: Vec<Value>,
    #[serde(default)]
    metadata: Map<String, Value>,
    #[serde(default, deserialize_with = "nullable::deserialize")]
    created_at: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable::deserialize")]
    updated_at: Option<Option<String>>,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

const TASK_FIELDS: &[&str] = &[
    "id",
    "title",
    "description",
    "state",
    "dependencies",
    "required_skill",
    "priority",
    "is_optional",
    "assigned_slot",
    "reserved_branch",
    "runner_id",
    "artifacts",
    "metadata",
    "created_at",
    "updated_at",
];

impl From<TaskRepr> for Task {
    fn from(r: TaskRepr) -> Self {
        let mut extra = r.extra;
        let created_at = remember_null(r.created_at, &mut extra, "created_at");
        let updated_at = remember_null(r.updated_at, &mut extra, "updated_at");
        Task {
            id: r.id,
            title: r.title,
            description: r.description,
            state: r.state,
            dependencies: r.dependencies,
            required_skill: r.required_skill,
            priority: r.priority,
            is_optional: r.is_optional,
            assigned_slot: r.assigned_slot,
            reserved_branch: r.reserved_branch,
            runner_id: r.runner_id,
            artifacts: r.artifacts,
            metadata: r.metadata,
            created_at,
            updated_at,
            extra,
        }
    }
}

// Writing borrows: no copy of the taskset is made to write it (it is written at every
// claim and every end of an attempt). Keys go in NecroCode's order, then the unknown ones.
impl Serialize for Taskset {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.serialize_with_tasks(serializer, &self.tasks)
    }
}

impl Taskset {
    /// The document with `tasks` standing for its task list (the tasks themselves, or their
    /// JSON text: see [`crate::registry::RenderedTasks`]).
    pub(crate) fn serialize_with_tasks<S: Serializer, T: Serialize + ?Sized>(
        &self,
        serializer: S,
        tasks: &T,
    ) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("spec_name", &self.spec_name)?;
        map.serialize_entry("version", &self.version)?;
        timestamp_entries(
            &mut map,
            self.created_at.as_deref(),
            self.updated_at.as_deref(),
            &self.extra,
        )?;
        map.serialize_entry("tasks", tasks)?;
        map.serialize_entry("metadata", &self.metadata)?;
        unknown_entries(&mut map, &self.extra, TASKSET_FIELDS)?;
        map.end()
    }
}

impl Serialize for Task {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("id", &self.id)?;
        map.serialize_entry("title", &self.title)?;
        map.serialize_entry("description", &self.description)?;
        map.serialize_entry("state", &self.state)?;
        map.serialize_entry("dependencies", &self.dependencies)?;
        map.serialize_entry("required_skill", &self.required_skill)?;
        map.serialize_entry("priority", &self.priority)?;
        map.serialize_entry("is_optional", &self.is_optional)?;
        map.serialize_entry("assigned_slot", &self.assigned_slot)?;
        map.serialize_entry("reserved_branch", &self.reserved_branch)?;
        map.serialize_entry("runner_id", &self.runner_id)?;
        map.serialize_entry("artifacts", &self.artifacts)?;
        map.serialize_entry("metadata", &self.metadata)?;
        timestamp_entries(
            &mut map,
            self.created_at.as_deref(),
            self.updated_at.as_deref(),
            &self.extra,
        )?;
        unknown_entries(&mut map, &self.extra, TASK_FIELDS)?;
        map.end()
    }
}

/// A timestamp: its text, or `null` if the file had an explicit `null` there, or nothing.
fn timestamp_entry<M: SerializeMap>(
    map: &mut M,
    key: &str,
    value: Option<&str>,
    extra: &Map<String, Value>,
) -> Result<(), M::Error> {
    match value {
        Some(text) => map.serialize_entry(key, text),
        None if extra.get(key) == Some(&Value::Null) => map.serialize_entry(key, &Value::Null),
        None => Ok(()),
    }
}

/// `created_at` and `updated_at`, as [`timestamp_entry`] writes each.
fn timestamp_entries<M: SerializeMap>(
    map: &mut M,
    created_at: Option<&str>,
    updated_at: Option<&str>,
    extra: &Map<String, Value>,
) -> Result<(), M::Error> {
    timestamp_entry(map, "created_at", created_at, extra)?;
    timestamp_entry(map, "updated_at", updated_at, extra)
}

/// The unknown keys, after the known ones (a remembered `null` timestamp is not one).
fn unknown_entries<M: SerializeMap>(
    map: &mut M,
    extra: &Map<String, Value>,
    known: &[&str],
) -> Result<(), M::Error> {
    for (key, value) in extra {
        if !known.contains(&key.as_str()) {
            map.serialize_entry(key, value)?;
        }
    }
    Ok(())
}

/// Reading: an explicit `null` becomes `None` plus a `null` under `key` in `extra`.
fn remember_null(
    field: Option<Option<String>>,
    extra: &mut Map<String, Value>,
    key: &str,
) -> Option<String> {
    match field {
        Some(Some(s)) => Some(s),
        Some(None) => {
            extra.insert(key.to_owned(), Value::Null);
            None
        }
        None => None,
    }
}

/// Reads `Option<Option<String>>`: missing (`None`, through `default`), explicit `null`
/// (`Some(None)`) or a string.
mod nullable {
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Option<String>>, D::Error> {
        Option::<String>::deserialize(d).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::test_support::fixture_taskset_path;

    fn parse(text: &str) -> Taskset {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn fixture_tasksets_round_trip_byte_exact() {
        for spec in ["chat-app", "tiny"] {
            let bytes = std::fs::read(fixture_taskset_path(spec)).unwrap();
            let taskset: Taskset = serde_json::from_slice(&bytes).unwrap();
            taskset.validate(spec).unwrap();
            assert_eq!(
                String::from_utf8(taskset.to_json_bytes()).unwrap(),
                String::from_utf8(bytes).unwrap(),
                "{spec}"
            );
        }
    }

    #[test]
    fn minimal_hand_written_taskset_loads_with_defaults() {
        let t =
            parse(r#"{"spec_name": "s", "tasks": [{"id": "1", "title": "T", "state": "ready"}]}"#);
        let task = t.task("1").unwrap();
        assert_eq!(task.description, "");
        assert!(task.dependencies.is_empty());
        assert_eq!((task.priority, task.is_optional), (0, false));
        assert_eq!(t.version, 0);
        let out = String::from_utf8(t.to_json_bytes()).unwrap();
        assert!(
            !out.contains("created_at"),
            "missing timestamps stay missing: {out}"
        );
        assert!(out.contains("\"assigned_slot\": null"), "{out}");
    }

    #[test]
    fn explicit_null_timestamps_stay_null_in_place() {
        let text = r#"{"spec_name": "s", "version": 1, "created_at": null, "tasks": [{"id": "1", "title": "T", "state": "ready", "created_at": "x", "updated_at": null}], "metadata": {}}"#;
        let t = parse(text);
        assert_eq!(t.created_at, None);
        let out = String::from_utf8(json::to_line_bytes(&t).unwrap()).unwrap();
        assert!(out.starts_with(r#"{"spec_name": "s", "version": 1, "created_at": null, "tasks""#));
        assert!(
            out.contains(r#""created_at": "x", "updated_at": null}], "metadata": {}}"#),
            "{out}"
        );

        // Once set, the value replaces the remembered null instead of duplicating the key.
        let mut t = t;
        t.created_at = Some("2026-01-01T00:00:00.000000".into());
        let out = String::from_utf8(json::to_line_bytes(&t).unwrap()).unwrap();
        assert_eq!(out.matches("\"created_at\"").count(), 2, "{out}");
    }

    #[test]
    fn unknown_fields_survive_at_every_level() {
        let text = r#"{"spec_name": "s", "version": 1, "tasks": [{"id": "1", "title": "T", "state": "done", "artifacts": [{"type": "diff", "x_art": [1]}], "x_task": {"a": 1}}], "metadata": {}, "x_top": "keep"}"#;
        let t = parse(text);
        assert_eq!(t.extra["x_top"], "keep");
        assert_eq!(t.tasks[0].extra["x_task"]["a"], 1);
        let back: Value = serde_json::from_slice(&t.to_json_bytes()).unwrap();
        assert_eq!(back["x_top"], "keep");
        assert_eq!(back["tasks"][0]["x_task"]["a"], 1);
        assert_eq!(back["tasks"][0]["artifacts"][0]["x_art"][0], 1);
    }

    #[test]
    fn dispatcher_meta_round_trips_and_keeps_other_metadata() {
        let mut t = parse(&std::fs::read_to_string(fixture_taskset_path("chat-app")).unwrap());
        let task = t.task_mut("1.1").unwrap();
        assert_eq!(task.dispatcher_meta(), DispatcherMeta::default());
        let mut meta = DispatcherMeta {
            attempts: 2,
            pool: Some("backend".into()),
            ..Default::default()
        };
        meta.extra.insert("future".into(), Value::from(true));
        task.set_dispatcher_meta(&meta);
        task.metadata.insert("after".into(), Value::from(1));
        meta.attempts = 3;
        task.set_dispatcher_meta(&meta);
        let keys: Vec<&str> = task.metadata.keys().map(String::as_str).collect();
        assert_eq!(keys, ["spec_name", "repo_name", "dispatcher", "after"]);
        assert_eq!(task.dispatcher_meta(), meta);
        assert_eq!(
            serde_json::to_string(&task.metadata["dispatcher"]).unwrap(),
            r#"{"attempts":3,"pool":"backend","future":true}"#
        );
    }

    #[test]
    fn malformed_dispatcher_meta_reads_as_default() {
        let mut t = parse(
            r#"{"spec_name": "s", "tasks": [{"id": "1", "title": "T", "state": "ready", "metadata": {"dispatcher": {"attempts": "many"}}}]}"#,
        );
        assert_eq!(t.tasks[0].dispatcher_meta(), DispatcherMeta::default());
        t.tasks[0]
            .metadata
            .insert("dispatcher".into(), Value::from(7));
        assert_eq!(t.tasks[0].dispatcher_meta(), DispatcherMeta::default());
    }

    #[test]
    fn unblock_makes_tiny_task_2_ready() {
        let mut t = parse(&std::fs::read_to_string(fixture_taskset_path("tiny")).unwrap());
        let now = "2026-11-29T10:00:00.000000";
        assert_eq!(t.unblock_ready_dependents(now), ["2"]);
        let task = t.task("2").unwrap();
        assert_eq!(task.state, TaskState::Ready);
        assert_eq!(task.updated_at.as_deref(), Some(now));
        assert_eq!(task.dispatcher_meta().ready_at.as_deref(), Some(now));
        assert!(t.unblock_ready_dependents(now).is_empty());
    }

    #[test]
    fn unblock_waits_for_all_dependencies() {
        let mut t = parse(&std::fs::read_to_string(fixture_taskset_path("chat-app")).unwrap());
        // 1.2 waits for 1.1 (ready), 3 waits for 1.1 and 2 (failed): nothing becomes ready.
        assert!(t.unblock_ready_dependents("now").is_empty());
        t.task_mut("1.1").unwrap().state = TaskState::Done;
        assert_eq!(t.unblock_ready_dependents("now"), ["1.2"]);
        let mut t = parse(
            r#"{"spec_name": "s", "tasks": [{"id": "1", "title": "T", "state": "blocked", "dependencies": ["gone"]}, {"id": "2", "title": "T", "state": "blocked"}]}"#,
        );
        assert!(t.unblock_ready_dependents("now").is_empty());
    }

    #[test]
    fn validate_reports_mismatch_bad_names_and_duplicates() {
        let t = parse(
            r#"{"spec_name": "s", "tasks": [{"id": "1", "title": "A", "state": "ready"}, {"id": "1", "title": "B", "state": "ready"}]}"#,
        );
        assert_eq!(t.validate("s").unwrap_err(), "duplicate task id \"1\"");
        assert!(t.validate("other").unwrap_err().contains("\"other\""));
        let t = parse(
            r#"{"spec_name": "s", "tasks": [{"id": "../1", "title": "A", "state": "ready"}]}"#,
        );
        assert!(t
            .validate("s")
            .unwrap_err()
            .contains("invalid task id \"../1\""));
        let t = parse(
            r#"{"spec_name": "s", "tasks": [{"id": "1", "title": "A", "state": "ready", "dependencies": ["nope"]}]}"#,
        );
        t.validate("s").unwrap();
    }

    #[test]
    fn task_state_strings() {
        for (state, s) in [(TaskState::Ready, "ready"), (TaskState::Failed, "failed")] {
            assert_eq!(state.to_string(), s);
            assert_eq!(serde_json::to_value(state).unwrap(), s);
        }
    }
}

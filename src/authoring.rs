//! Task authoring: `add` one task, `import` a TOML, JSON or Kiro-style `tasks.md` file, and the
//! `tasks` listing, so nobody edits `taskset.json` by hand.
//!
//! Every change is validated as a whole before anything is written: names, duplicate ids,
//! unknown dependencies and cycles are collected (each with its source line when there is one)
//! and reported together. The check runs again under the spec's lock, against the taskset as it
//! is then, so a concurrent writer cannot slip a conflicting id in between.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::names;
use crate::registry::{Event, EventLog, Registry, RegistryError, Task, TaskState, Taskset};
use crate::timefmt;

/// NecroCode's event name for a new task.
pub const EVENT_CREATED: &str = "TaskCreated";

/// One task to create, as `add` or an import file describes it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NewTask {
    pub id: String,
    pub title: String,
    pub description: String,
    pub skill: Option<String>,
    pub priority: i64,
    /// Ids of the tasks it waits for (existing or new in the same batch).
    pub after: Vec<String>,
    /// Stored as `metadata.repo_name`.
    pub repo: Option<String>,
    /// Already done (a ticked `- [x]` checklist item, or `done = true`).
    pub done: bool,
    pub optional: bool,
    /// The line of the import file that declares it, for error messages.
    pub line: Option<usize>,
}

/// One thing wrong with a batch, with the line it comes from when known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub line: Option<usize>,
    pub message: String,
}

impl Problem {
    fn new(line: Option<usize>, message: impl Into<String>) -> Problem {
        Problem {
            line,
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthoringError {
    /// The batch breaks a rule; nothing was written. `source_name` is the file or "add".
    #[error("{}", problems_text(source_name, problems))]
    Invalid {
        source_name: String,
        problems: Vec<Problem>,
    },
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

fn problems_text(source_name: &str, problems: &[Problem]) -> String {
    if let [only] = problems {
        return format!("{source_name}: {only}; nothing written");
    }
    let mut text = format!(
        "{source_name}: {} problems; nothing written",
        problems.len()
    );
    for problem in problems {
        text.push_str("\n  ");
        text.push_str(&problem.to_string());
    }
    text
}

/// What a successful `add` or `import` created.
#[derive(Debug, PartialEq)]
pub struct Created {
    pub spec: String,
    /// `(id, state)` of each new task, in order.
    pub tasks: Vec<(String, TaskState)>,
    /// Whether the spec's taskset was created by this call.
    pub new_spec: bool,
}

/// Adds `batch` to `spec` (creating its taskset when missing) after checking all of it;
/// records one `TaskCreated` event per task. `source_name` prefixes the error.
pub fn create_tasks(
    registry: &Registry,
    events: &EventLog,
    spec: &str,
    batch: &[NewTask],
    source_name: &str,
) -> Result<Created, AuthoringError> {
    let invalid = |problems: Vec<Problem>| AuthoringError::Invalid {
        source_name: source_name.to_owned(),
        problems,
    };
    if let Err(err) = names::validate("spec name", spec) {
        return Err(invalid(vec![Problem::new(None, err.to_string())]));
    }
    if batch.is_empty() {
        return Err(invalid(vec![Problem::new(None, "no tasks to add")]));
    }
    let now = timefmt::now_string();
    let created = match registry.load(spec) {
        Err(err) if err.is_missing() => {
            let tasks = plan(None, batch, &now).map_err(invalid)?;
            let taskset = Taskset {
                spec_name: spec.to_owned(),
                version: 1,
                created_at: Some(now.clone()),
                updated_at: Some(now.clone()),
                tasks,
                metadata: Map::new(),
                extra: Map::new(),
            };
            match registry.create(&taskset) {
                Ok(()) => Some(taskset.tasks),
                // Someone created the spec since we looked: merge into theirs instead.
                Err(RegistryError::Exists { .. }) => None,
                Err(err) => return Err(err.into()),
            }
        }
        Err(err) => return Err(err.into()),
        Ok(_) => None,
    };
    let (tasks, new_spec) = match created {
        Some(tasks) => (tasks, true),
        None => {
            let (result, _) =
                registry.update(spec, |taskset| match plan(Some(taskset), batch, &now) {
                    Ok(tasks) => {
                        taskset.tasks.extend(tasks.iter().cloned());
                        (Ok(tasks), true)
                    }
                    Err(problems) => (Err(problems), false),
                })?;
            (result.map_err(invalid)?, false)
        }
    };
    let recorded: Vec<Event> = tasks
        .iter()
        .map(|task| {
            Event::new(EVENT_CREATED, spec, Some(&task.id))
                .with("title", task.title.clone())
                .with("state", task.state.as_str())
        })
        .collect();
    events.append(&recorded);
    Ok(Created {
        spec: spec.to_owned(),
        tasks: tasks.iter().map(|t| (t.id.clone(), t.state)).collect(),
        new_spec,
    })
}

/// Checks `batch` against `existing` and builds its tasks, or returns every problem found.
fn plan(
    existing: Option<&Taskset>,
    batch: &[NewTask],
    now: &str,
) -> Result<Vec<Task>, Vec<Problem>> {
    let mut problems = Vec::new();
    let old: &[Task] = existing.map_or(&[], |t| t.tasks.as_slice());
    let old_ids: HashSet<&str> = old.iter().map(|t| t.id.as_str()).collect();
    let mut new_lines: HashMap<&str, Option<usize>> = HashMap::new();
    for task in batch {
        let line = task.line;
        if let Err(err) = names::validate("task id", &task.id) {
            problems.push(Problem::new(line, err.to_string()));
            continue;
        }
        if task.title.trim().is_empty() {
            problems.push(Problem::new(
                line,
                format!("task {} has an empty title", task.id),
            ));
        }
        if old_ids.contains(task.id.as_str()) {
            problems.push(Problem::new(
                line,
                format!("duplicate task id {:?}: the spec already has it", task.id),
            ));
        } else if let Some(first) = new_lines.get(task.id.as_str()) {
            let at = first.map_or(String::new(), |l| format!(" on line {l}"));
            problems.push(Problem::new(
                line,
                format!("duplicate task id {:?}: declared already{at}", task.id),
            ));
        } else {
            new_lines.insert(&task.id, line);
        }
        for field in [("skill", &task.skill), ("repo", &task.repo)] {
            if let (name, Some(value)) = field {
                if value.trim().is_empty() {
                    problems.push(Problem::new(
                        line,
                        format!("task {} has an empty {name}", task.id),
                    ));
                }
            }
        }
        if let Some(repo) = &task.repo {
            // The repository name becomes a directory of the workspace pool.
            if let Err(err) = names::validate("repository name", repo) {
                problems.push(Problem::new(line, err.to_string()));
            }
        }
        for dep in &task.after {
            let known = old_ids.contains(dep.as_str()) || batch.iter().any(|t| &t.id == dep);
            if !known {
                problems.push(Problem::new(
                    line,
                    format!("task {} depends on unknown task {dep:?}", task.id),
                ));
            }
        }
    }
    problems.extend(cycles(old, batch));
    // Reported in file order, so the list reads alongside the file.
    problems.sort_by_key(|p| p.line);
    if !problems.is_empty() {
        return Err(problems);
    }

    // States: a new task is ready when every dependency is done (old or ticked in the batch).
    let done: HashSet<&str> = old
        .iter()
        .filter(|t| t.state == TaskState::Done)
        .map(|t| t.id.as_str())
        .chain(batch.iter().filter(|t| t.done).map(|t| t.id.as_str()))
        .collect();
    let tasks = batch
        .iter()
        .map(|new| {
            let state = if new.done {
                TaskState::Done
            } else if new.after.iter().all(|d| done.contains(d.as_str())) {
                TaskState::Ready
            } else {
                TaskState::Blocked
            };
            let mut metadata = Map::new();
            if let Some(repo) = &new.repo {
                metadata.insert("repo_name".into(), Value::String(repo.clone()));
            }
            Task {
                id: new.id.clone(),
                title: new.title.trim().to_owned(),
                description: new.description.clone(),
                state,
                dependencies: new.after.clone(),
                required_skill: new.skill.clone(),
                priority: new.priority,
                is_optional: new.optional,
                assigned_slot: None,
                reserved_branch: None,
                runner_id: None,
                artifacts: Vec::new(),
                metadata,
                created_at: Some(now.to_owned()),
                updated_at: Some(now.to_owned()),
                extra: Map::new(),
            }
        })
        .collect();
    Ok(tasks)
}

/// Dependency cycles that go through at least one new task (an old cycle is `check`'s
/// business, not a reason to refuse new tasks), each reported once as its path.
fn cycles(old: &[Task], batch: &[NewTask]) -> Vec<Problem> {
    // Nodes: old tasks, then new ones; unknown dependencies are reported elsewhere.
    let ids: Vec<&str> = old
        .iter()
        .map(|t| t.id.as_str())
        .chain(batch.iter().map(|t| t.id.as_str()))
        .collect();
    // A duplicated id is reported elsewhere; its first declaration is the one followed.
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (i, id) in ids.iter().enumerate() {
        index.entry(id).or_insert(i);
    }
    let deps: Vec<Vec<usize>> = old
        .iter()
        .map(|t| &t.dependencies)
        .chain(batch.iter().map(|t| &t.after))
        .map(|deps| {
            deps.iter()
                .filter_map(|d| index.get(d.as_str()).copied())
                .collect()
        })
        .collect();
    let line_of = |node: usize| node.checked_sub(old.len()).and_then(|i| batch[i].line);

    // Iterative depth-first search (no recursion: a generated import may be a long chain).
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Finished,
    }
    let mut mark = vec![Mark::New; ids.len()];
    let mut problems = Vec::new();
    let mut seen_cycles: HashSet<Vec<usize>> = HashSet::new();
    for start in 0..ids.len() {
        if mark[start] != Mark::New {
            continue;
        }
        let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
        mark[start] = Mark::OnPath;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            if let Some(&dep) = deps[node].get(*next) {
                *next += 1;
                match mark[dep] {
                    Mark::New => {
                        mark[dep] = Mark::OnPath;
                        stack.push((dep, 0));
                    }
                    Mark::OnPath => {
                        let from = stack.iter().position(|&(n, _)| n == dep).unwrap_or(0);
                        let members: Vec<usize> = stack[from..].iter().map(|&(n, _)| n).collect();
                        let mut key = members.clone();
                        key.sort_unstable();
                        let touches_new = members.iter().any(|&m| m >= old.len());
                        if touches_new && seen_cycles.insert(key) {
                            let mut path: Vec<&str> = members.iter().map(|&m| ids[m]).collect();
                            path.push(ids[dep]);
                            let first_new = members.iter().copied().find(|&m| m >= old.len());
                            problems.push(Problem::new(
                                first_new.and_then(line_of),
                                format!("dependency cycle {}", path.join(" -> ")),
                            ));
                        }
                    }
                    Mark::Finished => {}
                }
            } else {
                mark[node] = Mark::Finished;
                stack.pop();
            }
        }
    }
    problems
}

// ----- import files ---------------------------------------------------------------------------

/// The tasks of an import file and the spec it names (if it names one).
#[derive(Debug, Default, PartialEq)]
pub struct ImportFile {
    pub spec: Option<String>,
    pub tasks: Vec<NewTask>,
}

/// One task as a TOML or JSON import file writes it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTask {
    id: String,
    title: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    skill: Option<String>,
    #[serde(default)]
    priority: i64,
    #[serde(default)]
    after: Vec<String>,
    #[serde(default)]
    repo: Option<String>,
    #[serde(default)]
    done: bool,
    #[serde(default)]
    optional: bool,
}

impl RawTask {
    fn into_new(self, line: Option<usize>) -> NewTask {
        NewTask {
            id: self.id,
            title: self.title,
            description: self.description,
            skill: self.skill,
            priority: self.priority,
            after: self.after,
            repo: self.repo,
            done: self.done,
            optional: self.optional,
            line,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlFile {
    #[serde(default)]
    spec: Option<String>,
    #[serde(default)]
    tasks: Vec<toml::Spanned<RawTask>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonFile {
    #[serde(default)]
    spec: Option<String>,
    #[serde(default)]
    tasks: Vec<RawTask>,
}

/// Reads and parses an import file, choosing the format by extension (`.toml`, `.json`,
/// `.md`). A file that does not parse is one problem, with the parser's line.
pub fn read_import(path: &Path) -> Result<ImportFile, AuthoringError> {
    let source_name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| AuthoringError::Read {
        path: path.to_owned(),
        source,
    })?;
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let parsed = match ext.as_deref() {
        Some("toml") => parse_toml(&text),
        Some("json") => parse_json(&text),
        Some("md" | "markdown") => parse_tasks_md(&text),
        _ => Err(vec![Problem::new(
            None,
            "unknown import format: use a .toml, .json or .md (tasks.md) file",
        )]),
    };
    parsed.map_err(|problems| AuthoringError::Invalid {
        source_name,
        problems,
    })
}

pub fn parse_toml(text: &str) -> Result<ImportFile, Vec<Problem>> {
    let file: TomlFile = toml::from_str(text).map_err(|err| {
        let line = err.span().map(|span| line_at(text, span.start));
        vec![Problem::new(line, err.message().trim().to_owned())]
    })?;
    let tasks = file
        .tasks
        .into_iter()
        .map(|spanned| {
            let line = line_at(text, spanned.span().start);
            spanned.into_inner().into_new(Some(line))
        })
        .collect();
    Ok(ImportFile {
        spec: file.spec,
        tasks,
    })
}

/// JSON has no spans in serde_json, so each task's line is found by looking for its
/// `"id": "<id>"` pair after the previous task's; a task whose pair is not written that way
/// is reported without a line.
pub fn parse_json(text: &str) -> Result<ImportFile, Vec<Problem>> {
    let file: JsonFile = serde_json::from_str(text).map_err(|err| {
        vec![Problem::new(
            Some(err.line()),
            strip_position(&err.to_string()),
        )]
    })?;
    let mut from = 0;
    let tasks = file
        .tasks
        .into_iter()
        .map(|raw| {
            let line = find_json_id(text, from, &raw.id).map(|at| {
                from = at + 1;
                line_at(text, at)
            });
            raw.into_new(line)
        })
        .collect();
    Ok(ImportFile {
        spec: file.spec,
        tasks,
    })
}

fn strip_position(message: &str) -> String {
    match message.find(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message.to_owned(),
    }
}

/// The byte offset of the next `"id"` key at or after `from` whose value is `id`.
fn find_json_id(text: &str, from: usize, id: &str) -> Option<usize> {
    let value = serde_json::to_string(id).ok()?;
    let mut at = from;
    while let Some(found) = text.get(at..)?.find("\"id\"") {
        let key = at + found;
        let rest = text[key + 4..].trim_start();
        if let Some(rest) = rest.strip_prefix(':') {
            if rest.trim_start().starts_with(&value) {
                return Some(key);
            }
        }
        at = key + 4;
    }
    None
}

/// 1-based line of a byte offset.
fn line_at(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Parses a Kiro-style `tasks.md` checklist.
///
/// - A task is a checkbox item whose text starts with an id made of digits and dots:
///   `- [ ] 1.2 Title`, `- [x] 1.2 Title` (done), `- [ ]* 1.3 Title` (optional, as Kiro marks
///   them); a trailing dot after the id (`1.`) is dropped. `*` works as the bullet too.
/// - Under a task, a line `depends: 1.1, 1.3` (also `depends on:`, `after:`, optionally as a
///   bullet and wrapped in `_…_`) lists its dependencies. Nesting never implies one: `2.1`
///   under `2` does not wait for it unless a line says so.
/// - Likewise `skill: NAME`, `priority: N` and `repo: NAME` set those fields.
/// - Kiro's `_Requirements: 1.1_` names requirements, not tasks, so it is kept in the
///   description like any other detail bullet, never read as a dependency.
/// - Other lines under a task become its description; headings and blank lines are ignored.
pub fn parse_tasks_md(text: &str) -> Result<ImportFile, Vec<Problem>> {
    let mut tasks: Vec<NewTask> = Vec::new();
    let mut problems = Vec::new();
    let mut in_fence = false;
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let trimmed = raw.trim();
        // Code blocks in a plan are examples, not tasks.
        if trimmed.starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence || trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if let Some((done, optional, rest)) = checkbox(trimmed) {
            let (id, title) = match rest.split_once(char::is_whitespace) {
                Some((id, title)) => (id, title.trim()),
                None => (rest, ""),
            };
            let id = id.strip_suffix('.').unwrap_or(id);
            if id.is_empty()
                || !id
                    .split('.')
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            {
                problems.push(Problem::new(
                    Some(line),
                    format!("checklist item {rest:?} does not start with a task id such as 1.2"),
                ));
                continue;
            }
            tasks.push(NewTask {
                id: id.to_owned(),
                title: title.to_owned(),
                done,
                optional,
                line: Some(line),
                ..NewTask::default()
            });
            continue;
        }
        let Some(task) = tasks.last_mut() else {
            // Text before the first task (an introduction) is not part of any task.
            if field_line(trimmed).is_some() {
                problems.push(Problem::new(
                    Some(line),
                    "dependency or field line before any task",
                ));
            }
            continue;
        };
        match field_line(trimmed) {
            Some(("depends", value)) => {
                task.after.extend(
                    value
                        .split([',', ' '])
                        .map(str::trim)
                        .filter(|d| !d.is_empty())
                        .map(|d| d.strip_suffix('.').unwrap_or(d).to_owned()),
                );
            }
            Some(("skill", value)) => task.skill = Some(value.to_owned()),
            Some(("repo", value)) => task.repo = Some(value.to_owned()),
            Some(("priority", value)) => match value.parse() {
                Ok(priority) => task.priority = priority,
                Err(_) => problems.push(Problem::new(
                    Some(line),
                    format!(
                        "priority {value:?} of task {} is not a whole number",
                        task.id
                    ),
                )),
            },
            _ => {
                let detail = trimmed.strip_prefix("- ").unwrap_or(trimmed);
                if !task.description.is_empty() {
                    task.description.push('\n');
                }
                task.description.push_str(detail);
            }
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(ImportFile { spec: None, tasks })
}

/// `- [ ] rest`, `- [x] rest`, `- [ ]* rest` (also with `*` as the bullet): (done, optional, rest).
fn checkbox(line: &str) -> Option<(bool, bool, &str)> {
    let rest = line
        .strip_prefix("- ")
        .or_else(|| line.strip_prefix("* "))?;
    let rest = rest.trim_start();
    let (done, rest) = if let Some(r) = rest.strip_prefix("[ ]") {
        (false, r)
    } else if let Some(r) = rest
        .strip_prefix("[x]")
        .or_else(|| rest.strip_prefix("[X]"))
    {
        (true, r)
    } else {
        return None;
    };
    let (optional, rest) = match rest.strip_prefix('*') {
        Some(r) => (true, r),
        None => (false, rest),
    };
    Some((done, optional, rest.trim()))
}

/// A `key: value` line under a task (`depends`, `skill`, `priority`, `repo`), optionally a
/// bullet and wrapped in `_…_`; the key is returned normalised.
fn field_line(line: &str) -> Option<(&'static str, &str)> {
    let line = line
        .strip_prefix("- ")
        .or_else(|| line.strip_prefix("* "))
        .unwrap_or(line)
        .trim();
    let line = match line.strip_prefix('_').and_then(|l| l.strip_suffix('_')) {
        Some(inner) => inner.trim(),
        None => line,
    };
    let (key, value) = line.split_once(':')?;
    let key = match key.trim().to_ascii_lowercase().as_str() {
        "depends" | "depends on" | "after" => "depends",
        "skill" => "skill",
        "priority" => "priority",
        "repo" => "repo",
        _ => return None,
    };
    Some((key, value.trim()))
}

// ----- listing --------------------------------------------------------------------------------

/// One row of `dispatcher tasks` (and one object of `--json`).
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct TaskRow {
    pub spec_name: String,
    pub id: String,
    pub state: TaskState,
    pub priority: i64,
    pub required_skill: Option<String>,
    pub dependencies: Vec<String>,
    pub repo_name: Option<String>,
    pub title: String,
}

/// The tasks of `taskset`, in file order, optionally only those in `state`.
pub fn rows(taskset: &Taskset, state: Option<TaskState>) -> Vec<TaskRow> {
    taskset
        .tasks
        .iter()
        .filter(|t| state.is_none_or(|s| t.state == s))
        .map(|t| TaskRow {
            spec_name: taskset.spec_name.clone(),
            id: t.id.clone(),
            state: t.state,
            priority: t.priority,
            required_skill: t.required_skill.clone(),
            dependencies: t.dependencies.clone(),
            repo_name: t
                .metadata
                .get("repo_name")
                .and_then(Value::as_str)
                .map(str::to_owned),
            title: t.title.clone(),
        })
        .collect()
}

/// An aligned table: SPEC, ID, STATE, PRIORITY, SKILL, DEPENDS, TITLE.
pub fn render_rows(rows: &[TaskRow]) -> String {
    let header = [
        "SPEC", "ID", "STATE", "PRIORITY", "SKILL", "DEPENDS", "TITLE",
    ];
    let mut table: Vec<[String; 7]> = vec![header.map(str::to_owned)];
    for row in rows {
        let deps = if row.dependencies.is_empty() {
            "-".to_owned()
        } else {
            row.dependencies.join(",")
        };
        table.push([
            row.spec_name.clone(),
            row.id.clone(),
            row.state.to_string(),
            row.priority.to_string(),
            row.required_skill.clone().unwrap_or_else(|| "-".into()),
            deps,
            row.title.clone(),
        ]);
    }
    crate::table::aligned(&table)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(id: &str, after: &[&str]) -> NewTask {
        NewTask {
            id: id.into(),
            title: format!("task {id}"),
            after: after.iter().map(|s| (*s).to_owned()).collect(),
            ..NewTask::default()
        }
    }

    #[test]
    fn states_follow_dependencies_and_done_items() {
        let mut first = new("1", &[]);
        first.done = true;
        let batch = [first, new("2", &["1"]), new("3", &["2"])];
        let tasks = plan(None, &batch, "now").unwrap();
        let states: Vec<TaskState> = tasks.iter().map(|t| t.state).collect();
        assert_eq!(
            states,
            [TaskState::Done, TaskState::Ready, TaskState::Blocked]
        );
    }

    #[test]
    fn cycles_are_reported_once_with_their_path() {
        let batch = [
            new("1", &["3"]),
            new("2", &["1"]),
            new("3", &["2"]),
            new("4", &["4"]),
        ];
        let problems = plan(None, &batch, "now").unwrap_err();
        let messages: Vec<&str> = problems.iter().map(|p| p.message.as_str()).collect();
        assert_eq!(
            messages,
            [
                "dependency cycle 1 -> 3 -> 2 -> 1",
                "dependency cycle 4 -> 4"
            ]
        );
    }

    #[test]
    fn tasks_md_items_fields_and_problems() {
        let text = "# Plan\n\n- [x] 1. Setup\n  - make dirs\n  - _Requirements: 1.1_\n\
                    - [ ] 2 Models\n  - [ ]* 2.1 Interfaces\n    - depends: 1, 2\n    - skill: backend\n";
        let file = parse_tasks_md(text).unwrap();
        let ids: Vec<&str> = file.tasks.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["1", "2", "2.1"]);
        assert!(file.tasks[0].done);
        assert_eq!(file.tasks[0].description, "make dirs\n_Requirements: 1.1_");
        assert!(file.tasks[1].after.is_empty());
        assert_eq!(file.tasks[2].after, ["1", "2"]);
        assert!(file.tasks[2].optional);
        assert_eq!(file.tasks[2].skill.as_deref(), Some("backend"));
        assert_eq!(file.tasks[2].line, Some(7));

        let bad = parse_tasks_md("depends: 1\n- [ ] Title only\n").unwrap_err();
        let lines: Vec<Option<usize>> = bad.iter().map(|p| p.line).collect();
        assert_eq!(lines, [Some(1), Some(2)]);
    }

    #[test]
    fn toml_and_json_tasks_carry_their_lines() {
        let toml = "spec = \"s\"\n\n[[tasks]]\nid = \"1\"\ntitle = \"A\"\n\n[[tasks]]\nid = \"2\"\ntitle = \"B\"\nafter = [\"1\"]\n";
        let file = parse_toml(toml).unwrap();
        let lines: Vec<Option<usize>> = file.tasks.iter().map(|t| t.line).collect();
        assert_eq!(lines, [Some(3), Some(7)], "the [[tasks]] header lines");
        let json = "{\"spec\": \"s\", \"tasks\": [\n {\"id\": \"1\", \"title\": \"A\"},\n {\"title\": \"B\", \"id\": \"2\"}\n]}";
        let file = parse_json(json).unwrap();
        let lines: Vec<Option<usize>> = file.tasks.iter().map(|t| t.line).collect();
        assert_eq!(lines, [Some(2), Some(3)]);
    }
}

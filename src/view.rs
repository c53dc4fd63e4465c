//! Read-only questions about a taskset that both the core and the offline `status` ask:
//! is a task runnable, since when, when is its retry due, and which tasks can never run.

use std::collections::{HashMap, VecDeque};

use chrono::NaiveDateTime;

use crate::registry::{DispatcherMeta, Task, TaskState, Taskset};
use crate::timefmt;

/// Whether every dependency of `task` exists and is done.
pub fn dependencies_done(taskset: &Taskset, task: &Task) -> bool {
    task.dependencies.iter().all(|dep| {
        taskset
            .task(dep)
            .is_some_and(|d| d.state == TaskState::Done)
    })
}

/// When the task became ready, for queue order: the dispatcher's own record, else the
/// task's `updated_at`, else its `created_at`.
pub fn ready_at(task: &Task, meta: &DispatcherMeta) -> NaiveDateTime {
    let candidates = [
        meta.ready_at.as_deref(),
        task.updated_at.as_deref(),
        task.created_at.as_deref(),
    ];
    let ready = candidates.into_iter().flatten().find_map(timefmt::parse);
    ready.unwrap_or(NaiveDateTime::MIN)
}

/// When a failed attempt's retry is due, if one is scheduled.
pub fn next_attempt_at(meta: &DispatcherMeta) -> Option<NaiveDateTime> {
    meta.next_attempt_at.as_deref().and_then(timefmt::parse)
}

/// Tasks that are neither done nor failed and can never run as the taskset stands, with
/// the reason: a dependency that failed or does not exist, a dependency cycle, or a
/// dependency that itself can never run. Linear in tasks plus dependencies.
pub fn never_runnable(taskset: &Taskset) -> HashMap<String, String> {
    let index: HashMap<&str, &Task> = taskset.tasks.iter().map(|t| (t.id.as_str(), t)).collect();
    let mut doomed: HashMap<String, String> = HashMap::new();
    let mut open_deps: HashMap<&str, usize> = HashMap::new();
    let mut dependents: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut resolved: VecDeque<&str> = VecDeque::new();

    for task in &taskset.tasks {
        if matches!(task.state, TaskState::Done | TaskState::Failed) {
            continue;
        }
        let mut open = 0;
        for dep in &task.dependencies {
            match index.get(dep.as_str()).map(|d| d.state) {
                None => {
                    doomed.insert(
                        task.id.clone(),
                        format!("dependency {dep:?} does not exist"),
                    );
                }
                Some(TaskState::Failed) => {
                    doomed.insert(task.id.clone(), format!("dependency {dep:?} failed"));
                }
                Some(TaskState::Done) => {}
                Some(_) => {
                    open += 1;
                    dependents
                        .entry(dep.as_str())
                        .or_default()
                        .push(task.id.as_str());
                }
            }
        }
        if doomed.contains_key(&task.id) {
            continue;
        }
        open_deps.insert(task.id.as_str(), open);
        if open == 0 {
            resolved.push_back(task.id.as_str());
        }
    }
    // Kahn's walk: a task whose open dependencies can all run can run too. What is never
    // reached sits on a cycle or behind a doomed task.
    while let Some(id) = resolved.pop_front() {
        for &dependent in dependents.get(id).map(Vec::as_slice).unwrap_or_default() {
            if let Some(open) = open_deps.get_mut(dependent) {
                *open -= 1;
                if *open == 0 {
                    resolved.push_back(dependent);
                }
            }
        }
    }
    for (id, open) in open_deps {
        if open > 0 {
            doomed.insert(
                id.to_string(),
                "waits on a dependency cycle or on a task that can never run".into(),
            );
        }
    }
    doomed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taskset(tasks: &[(&str, &str, &[&str])]) -> Taskset {
        Taskset::from_rows("s", tasks)
    }

    #[test]
    fn failed_missing_and_cyclic_dependencies_are_never_runnable() {
        let ts = taskset(&[
            ("ok", "done", &[]),
            ("bad", "failed", &[]),
            ("after-ok", "ready", &["ok"]),
            ("after-bad", "blocked", &["bad"]),
            ("behind-doomed", "blocked", &["after-bad"]),
            ("missing", "blocked", &["ghost"]),
            ("cycle-a", "blocked", &["cycle-b"]),
            ("cycle-b", "blocked", &["cycle-a"]),
            ("chain", "blocked", &["after-ok"]),
        ]);
        let doomed = never_runnable(&ts);
        let mut ids: Vec<&str> = doomed.keys().map(String::as_str).collect();
        ids.sort_unstable();
        assert_eq!(
            ids,
            [
                "after-bad",
                "behind-doomed",
                "cycle-a",
                "cycle-b",
                "missing"
            ]
        );
        assert!(doomed["after-bad"].contains("failed"));
        assert!(doomed["missing"].contains("does not exist"));
    }

    #[test]
    fn ready_time_prefers_the_dispatcher_record() {
        let mut ts = taskset(&[("t", "ready", &[])]);
        let task = &mut ts.tasks[0];
        task.updated_at = Some("2026-11-29T10:00:00.000000".into());
        let mut meta = task.dispatcher_meta();
        assert_eq!(
            timefmt::format(ready_at(task, &meta)),
            "2026-11-29T10:00:00.000000"
        );
        meta.ready_at = Some("2026-11-29T11:00:00.000000".into());
        assert_eq!(
            timefmt::format(ready_at(task, &meta)),
            "2026-11-29T11:00:00.000000"
        );
    }
}

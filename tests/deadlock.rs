//! Deadlock detection through the real binary: `dispatcher check` names each cycle by its path
//! and each stuck task by its ids, exits 4 on findings and 0 when clean, and the offline
//! `status` lists the same findings.

mod support;

use std::process::Output;

use serde_json::{json, Value};
use support::*;

/// Pools for the tests: `backend` serves tasks without a skill too; `gpu` is disabled.
const POOLS: &str = "[agent_pools.backend]\ncommand = [\"true\"]\n\n\
                     [agent_pools.gpu]\ncommand = [\"true\"]\nenabled = false\n\n\
                     [skill_mapping]\ndefault = [\"backend\"]\n";

fn env_with(tasks: &[Value]) -> Env {
    let env = Env::new();
    env.config("", POOLS).taskset("chat-app", tasks);
    env
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).expect("stdout is UTF-8")
}

/// `check --json`: the exit code and the findings.
fn check_json(env: &Env) -> (Option<i32>, Value) {
    let out = env.output(&["check", "--json"]);
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|err| {
        panic!(
            "check --json printed no JSON ({err}); stderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), doc["findings"].clone())
}

/// `check` for people: the exit code and stdout.
fn check_text(env: &Env) -> (Option<i32>, String) {
    let out = env.output(&["check"]);
    (out.status.code(), stdout(&out))
}

#[test]
fn three_task_cycle_is_reported_as_its_path_and_check_exits_4() {
    let env = env_with(&[
        json!({"id": "1.1", "state": "done"}),
        json!({"id": "1.4", "state": "blocked", "dependencies": ["1.3"]}),
        json!({"id": "1.2", "state": "ready", "dependencies": ["1.4"]}),
        json!({"id": "1.3", "state": "blocked", "dependencies": ["1.2", "1.1"]}),
    ]);
    let (code, findings) = check_json(&env);
    assert_eq!(code, Some(4));
    assert_eq!(
        findings,
        json!([{"kind": "cycle", "spec": "chat-app", "path": ["1.2", "1.4", "1.3", "1.2"]}])
    );
    let (code, text) = check_text(&env);
    assert_eq!(code, Some(4));
    assert_eq!(text, "cycle in chat-app: 1.2 → 1.4 → 1.3 → 1.2\n");
}

#[test]
fn task_on_a_failed_dependency_is_reported_with_both_ids_and_so_is_the_task_behind_it() {
    let env = env_with(&[
        json!({"id": "2", "state": "failed"}),
        json!({"id": "3", "state": "blocked", "dependencies": ["2"]}),
        json!({"id": "4", "state": "blocked", "dependencies": ["3"]}),
        json!({"id": "5", "state": "blocked", "dependencies": ["ghost"]}),
    ]);
    let (code, findings) = check_json(&env);
    assert_eq!(code, Some(4));
    assert_eq!(
        findings,
        json!([
            {"kind": "failed_dependency", "spec": "chat-app", "task_id": "3", "dependency": "2"},
            {"kind": "missing_dependency", "spec": "chat-app", "task_id": "5",
             "dependency": "ghost"},
            {"kind": "blocked_behind", "spec": "chat-app", "task_id": "4", "blocker": "3"},
        ])
    );
    let (code, text) = check_text(&env);
    assert_eq!(code, Some(4));
    assert_eq!(
        text,
        "chat-app/3 waits on failed dependency 2\n\
         chat-app/5 waits on dependency ghost, which does not exist\n\
         chat-app/4 waits on 3, which can never run\n"
    );
}

#[test]
fn skill_no_enabled_pool_serves_is_reported_with_task_and_skill() {
    let env = Env::new();
    // No default mapping here: a skill without a pool of its own has nowhere to go.
    env.config(
        "",
        "[agent_pools.backend]\ncommand = [\"true\"]\n\n\
         [agent_pools.gpu]\ncommand = [\"true\"]\nenabled = false\n",
    )
    .taskset(
        "chat-app",
        &[
            json!({"id": "1", "state": "ready", "required_skill": "backend"}),
            json!({"id": "9", "state": "ready", "required_skill": "gpu"}),
            json!({"id": "11", "state": "blocked", "required_skill": "ml",
                   "dependencies": ["1"]}),
        ],
    );
    let (code, findings) = check_json(&env);
    assert_eq!(code, Some(4));
    assert_eq!(
        findings,
        json!([
            {"kind": "no_pool", "spec": "chat-app", "task_id": "9", "required_skill": "gpu",
             "disabled_pools": ["gpu"]},
            {"kind": "no_pool", "spec": "chat-app", "task_id": "11", "required_skill": "ml",
             "disabled_pools": []},
        ])
    );
    let (code, text) = check_text(&env);
    assert_eq!(code, Some(4));
    assert_eq!(
        text,
        "chat-app/9 needs skill \"gpu\" but no enabled pool serves it (pool gpu is disabled)\n\
         chat-app/11 needs skill \"ml\" but no enabled pool serves it\n"
    );
}

#[test]
fn clean_registry_checks_with_exit_0() {
    let env = env_with(&[
        json!({"id": "1", "state": "done"}),
        json!({"id": "2", "state": "failed"}),
        json!({"id": "3", "state": "ready", "dependencies": ["1"]}),
        json!({"id": "4", "state": "blocked", "dependencies": ["3"]}),
        json!({"id": "5", "state": "running"}),
    ]);
    let (code, findings) = check_json(&env);
    assert_eq!(code, Some(0));
    assert_eq!(findings, json!([]));
    let (code, text) = check_text(&env);
    assert_eq!(code, Some(0));
    assert_eq!(text, "no deadlocks or stuck tasks\n");
}

#[test]
fn unreadable_taskset_is_a_finding_and_the_other_tasksets_are_still_checked() {
    let env = env_with(&[json!({"id": "a", "state": "blocked", "dependencies": ["a"]})]);
    env.write_taskset_raw("broken", "{\"spec_name\": \"broken\", \"tasks\": [");
    let (code, findings) = check_json(&env);
    assert_eq!(code, Some(4));
    // Tasksets are checked in the order of their names.
    assert_eq!(findings[0]["kind"], "unreadable");
    assert_eq!(findings[0]["spec"], "broken");
    assert_eq!(
        findings[1],
        json!({"kind": "cycle", "spec": "chat-app", "path": ["a", "a"]})
    );
    let error = findings[0]["error"].as_str().unwrap();
    assert!(
        error.contains("broken/taskset.json") && error.contains("EOF"),
        "{error}"
    );
}

#[test]
fn check_without_a_registry_is_an_error_not_a_clean_bill() {
    let env = Env::new();
    env.config("", POOLS);
    let out = env.output(&["check"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("registry directory") && stderr.contains("does not exist"),
        "{stderr}"
    );
}

#[test]
fn bad_deadlock_setting_is_an_error_naming_key_and_line() {
    let env = Env::new();
    // The support config puts [dispatcher] and [task_registry] on lines 1 to 8.
    env.config("", "[deadlock]\naction = \"explode\"\n");
    let out = env.output(&["check"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "dispatcher.toml:10: deadlock.action: unknown deadlock action \"explode\" \
             (supported: warn, fail)"
        ),
        "{stderr}"
    );
}

#[test]
fn offline_status_lists_the_same_findings_as_check() {
    let env = env_with(&[
        json!({"id": "1", "state": "failed"}),
        json!({"id": "2", "state": "blocked", "dependencies": ["1"]}),
        json!({"id": "x", "state": "blocked", "dependencies": ["y"]}),
        json!({"id": "y", "state": "blocked", "dependencies": ["x"]}),
        json!({"id": "g", "state": "ready", "required_skill": "gpu"}),
    ]);
    let (_, findings) = check_json(&env);
    let report = status_json(&env);
    assert_eq!(report["dispatcher"]["running"], false);
    assert_eq!(report["deadlocks"], findings);
    assert_eq!(
        report["deadlocks"],
        json!([
            {"kind": "cycle", "spec": "chat-app", "path": ["x", "y", "x"]},
            {"kind": "failed_dependency", "spec": "chat-app", "task_id": "2", "dependency": "1"},
            {"kind": "no_pool", "spec": "chat-app", "task_id": "g", "required_skill": "gpu",
             "disabled_pools": ["gpu"]},
        ])
    );

    let out = env.output(&["status"]);
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    let section: Vec<&str> = text
        .lines()
        .skip_while(|line| *line != "DEADLOCKS AND STUCK TASKS")
        .take_while(|line| !line.is_empty())
        .collect();
    assert_eq!(
        section,
        [
            "DEADLOCKS AND STUCK TASKS",
            "  KIND               FINDING",
            "  cycle              cycle in chat-app: x → y → x",
            "  failed_dependency  chat-app/2 waits on failed dependency 1",
            "  no_pool            chat-app/g needs skill \"gpu\" but no enabled pool serves it \
             (pool gpu is disabled)",
        ]
    );
}

#[test]
fn request_larger_than_every_serving_quota_is_reported_and_until_idle_exits_4() {
    let env = Env::new();
    env.config(
        "",
        "[agent_pools.backend]\ncommand = [\"true\"]\ncpu_quota = 2\nmemory_quota = \"512MiB\"\n\n\
         [skill_mapping]\ndefault = [\"backend\"]\n",
    )
    .taskset(
        "chat-app",
        &[
            json!({"id": "1", "state": "ready",
                   "metadata": {"resources": {"cpu": 2, "memory_mb": 512}}}),
            json!({"id": "2", "state": "ready", "metadata": {"resources": {"cpu": 3}}}),
            json!({"id": "3", "state": "blocked", "dependencies": ["2"]}),
        ],
    );
    let (code, findings) = check_json(&env);
    assert_eq!(code, Some(4));
    assert_eq!(
        findings,
        json!([
            {"kind": "over_quota", "spec": "chat-app", "task_id": "2", "pools": ["backend"],
             "detail": "cpu 3 > cpu_quota 2 in pool backend"},
            {"kind": "blocked_behind", "spec": "chat-app", "task_id": "3", "blocker": "2"},
        ])
    );

    // `run --until-idle` runs what fits, then stops instead of waiting for room that can
    // never come.
    let (status, log) = env.run_until_idle();
    assert_eq!(status.code(), Some(4), "log:\n{log}");
    let taskset = env.read_taskset("chat-app");
    let states: Vec<&str> = taskset["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .map(|t| t["state"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(states, ["done", "ready", "blocked"], "log:\n{log}");
    assert!(
        log.contains("asks for more than any serving pool's quota: cpu 3 > cpu_quota 2"),
        "the finding is logged:\n{log}"
    );
}

//! Task authoring end to end: `add`, `import` (TOML, JSON, tasks.md) and `tasks` against a temp
//! registry, with every rejected change leaving the registry byte-identical; plus the shell
//! integration (`completions`, `man`).

mod support;

use std::fs;

use serde_json::{json, Value};
use support::*;

fn env_with_config() -> Env {
    let env = Env::new();
    env.config("", "");
    env
}

fn ok(env: &Env, args: &[&str]) -> String {
    let out = env.output(args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a command that must fail with exit 1 and returns its stderr.
fn fails(env: &Env, args: &[&str]) -> String {
    let out = env.output(args);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{args:?} should fail; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr).unwrap()
}

fn ids_and_states(env: &Env, spec: &str) -> Vec<(String, String)> {
    env.read_taskset(spec)["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["id"].as_str().unwrap().to_string(),
                t["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn add_creates_a_necrocode_taskset_and_appends_under_the_lock() {
    let env = env_with_config();
    ok(
        &env,
        &[
            "add", "chat", "--id", "1", "--title", "Schema", "--skill", "backend",
        ],
    );
    let doc = env.read_taskset("chat");
    assert_eq!(doc["spec_name"], "chat");
    assert_eq!(doc["version"], 1);
    assert!(doc["created_at"].is_string() && doc["updated_at"].is_string());
    assert_eq!(doc["metadata"], json!({}));
    let keys: Vec<&String> = doc["tasks"][0].as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        [
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
            "updated_at"
        ]
    );
    assert_eq!(env.state_of("chat", "1"), "ready");
    assert_eq!(env.task("chat", "1")["required_skill"], "backend");

    let out = ok(
        &env,
        &[
            "add",
            "chat",
            "--id",
            "2",
            "--title",
            "API",
            "--after",
            "1",
            "--priority",
            "5",
            "--repo",
            "chat-app",
        ],
    );
    assert_eq!(out, "chat/2: added (blocked)\n");
    let task = env.task("chat", "2");
    assert_eq!(task["state"], "blocked");
    assert_eq!(task["dependencies"], json!(["1"]));
    assert_eq!(task["priority"], 5);
    assert_eq!(task["metadata"], json!({"repo_name": "chat-app"}));
    assert_eq!(env.read_taskset("chat")["version"], 2);

    let created = env.events_of_type("chat", "TaskCreated");
    assert_eq!(created.len(), 2);
    assert_eq!(created[1]["task_id"], "2");
    assert_eq!(
        created[1]["details"],
        json!({"title": "API", "state": "blocked"})
    );
}

#[test]
fn add_after_done_tasks_is_ready() {
    let env = env_with_config();
    env.taskset("s", &[json!({"id": "1", "state": "done"})]);
    ok(
        &env,
        &["add", "s", "--id", "2", "--title", "Next", "--after", "1"],
    );
    assert_eq!(env.state_of("s", "2"), "ready");
}

#[test]
fn rejected_adds_exit_1_and_leave_the_registry_byte_identical() {
    let env = env_with_config();
    env.taskset(
        "s",
        &[
            json!({"id": "1"}),
            json!({"id": "2", "dependencies": ["3"]}),
        ],
    );
    let before = fs::read(env.taskset_path("s")).unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &["add", "s", "--id", "9", "--title", "x", "--after", "nope"],
            "unknown task \"nope\"",
        ),
        (
            &["add", "s", "--id", "1", "--title", "x"],
            "duplicate task id \"1\"",
        ),
        (
            &["add", "s", "--id", "../x", "--title", "x"],
            "invalid task id \"../x\"",
        ),
        (
            &["add", "s", "--id", "3", "--title", "x", "--after", "2"],
            "dependency cycle",
        ),
        (
            &["add", "../evil", "--id", "1", "--title", "x"],
            "invalid spec name",
        ),
    ];
    for (args, expected) in cases {
        let stderr = fails(&env, args);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(stderr.contains("nothing written"), "{stderr}");
        assert_eq!(fs::read(env.taskset_path("s")).unwrap(), before, "{args:?}");
    }
    assert!(env.events("s").is_empty());
    assert!(!env.registry().join("evil").exists());
    assert_eq!(paths_under(&env.registry().join("tasksets")).len(), 2);
}

#[test]
fn import_toml_creates_tasks_with_deps_skills_and_repos() {
    let env = env_with_config();
    fs::write(
        env.path().join("plan.toml"),
        r#"spec = "web"

[[tasks]]
id = "1"
title = "Schema"
skill = "backend"
repo = "web-app"

[[tasks]]
id = "2"
title = "UI"
description = "the pages"
priority = 3
after = ["1"]
"#,
    )
    .unwrap();
    let out = ok(&env, &["import", "plan.toml"]);
    assert_eq!(
        out,
        "web: new spec\nweb/1: added (ready)\nweb/2: added (blocked)\n"
    );
    let two = env.task("web", "2");
    assert_eq!(two["dependencies"], json!(["1"]));
    assert_eq!(two["priority"], 3);
    assert_eq!(two["description"], "the pages");
    assert_eq!(env.task("web", "1")["metadata"]["repo_name"], "web-app");
    assert_eq!(env.events_of_type("web", "TaskCreated").len(), 2);
}

#[test]
fn import_json_merges_new_ids_into_an_existing_spec() {
    let env = env_with_config();
    env.taskset("api", &[json!({"id": "1", "state": "done"})]);
    fs::write(
        env.path().join("more.json"),
        r#"{"tasks": [
  {"id": "2", "title": "Handlers", "after": ["1"]},
  {"id": "3", "title": "Docs", "after": ["2"], "skill": "docs"}
]}"#,
    )
    .unwrap();
    ok(&env, &["import", "more.json", "--spec", "api"]);
    assert_eq!(
        ids_and_states(&env, "api"),
        [
            ("1".into(), "done".into()),
            ("2".into(), "ready".into()),
            ("3".into(), "blocked".into())
        ]
    );
    assert_eq!(env.read_taskset("api")["version"], 2);
}

#[test]
fn import_tasks_md_with_done_items_and_dependency_lines() {
    let env = env_with_config();
    let dir = env.path().join(".kiro/specs/shop");
    fs::create_dir_all(&dir).unwrap();
    fs::write(
        dir.join("tasks.md"),
        "# Implementation Plan\n\n\
         - [x] 1. Set up the project\n  - Create the directories\n  - _Requirements: 1.1_\n\n\
         - [ ] 2. Data models\n\
         - [ ] 2.1 Product model\n  - depends: 1\n  - skill: backend\n\
         - [ ]* 2.2 Tests for the models\n  - _Depends on: 2.1, 2_\n",
    )
    .unwrap();
    // The spec name comes from the Kiro directory.
    ok(&env, &["import", ".kiro/specs/shop/tasks.md"]);
    assert_eq!(
        ids_and_states(&env, "shop"),
        [
            ("1".into(), "done".into()),
            ("2".into(), "ready".into()),
            ("2.1".into(), "ready".into()),
            ("2.2".into(), "blocked".into()),
        ]
    );
    let one = env.task("shop", "1");
    assert_eq!(one["title"], "Set up the project");
    assert_eq!(
        one["description"],
        "Create the directories\n_Requirements: 1.1_"
    );
    assert_eq!(
        one["dependencies"],
        json!([]),
        "requirements are not dependencies"
    );
    assert_eq!(
        env.task("shop", "2")["dependencies"],
        json!([]),
        "nesting is no dependency"
    );
    assert_eq!(env.task("shop", "2.1")["required_skill"], "backend");
    let tests = env.task("shop", "2.2");
    assert_eq!(tests["dependencies"], json!(["2.1", "2"]));
    assert_eq!(tests["is_optional"], true);
}

#[test]
fn an_import_with_several_problems_reports_each_with_its_line_and_writes_nothing() {
    let env = env_with_config();
    env.taskset("m", &[json!({"id": "1"})]);
    let before = fs::read(env.taskset_path("m")).unwrap();
    fs::write(
        env.path().join("bad.md"),
        "# Plan\n\
         - [ ] 1 Already there\n\
         - [ ] 2 Uses a ghost\n  - depends: 7\n\
         - [ ] 3 Loops\n  - depends: 4\n\
         - [ ] 4 Back\n  - depends: 3\n\
         - [ ] 4 Again\n",
    )
    .unwrap();
    let stderr = fails(&env, &["import", "bad.md", "--spec", "m"]);
    for expected in [
        "4 problems; nothing written",
        "line 2: duplicate task id \"1\"",
        "line 3: task 2 depends on unknown task \"7\"",
        "line 9: duplicate task id \"4\": declared already on line 7",
        "line 5: dependency cycle 3 -> 4 -> 3",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
    assert_eq!(fs::read(env.taskset_path("m")).unwrap(), before);
    assert!(env.events("m").is_empty());

    // Problems found while parsing come with their lines too, and no spec is created.
    fs::write(
        env.path().join("bad.toml"),
        "spec = \"n\"\n[[tasks]]\nid = \"1\"\ntitel = \"x\"\n",
    )
    .unwrap();
    let stderr = fails(&env, &["import", "bad.toml"]);
    assert!(stderr.contains("line 4: unknown field `titel`"), "{stderr}");
    assert!(!env.taskset_path("n").exists());
}

#[test]
fn tasks_lists_as_a_table_or_json_filtered_by_spec_and_state() {
    let env = env_with_config();
    env.taskset(
        "a",
        &[
            json!({"id": "1", "state": "done"}),
            json!({"id": "2", "dependencies": ["1"], "required_skill": "web", "priority": 4}),
        ],
    );
    env.taskset(
        "b",
        &[json!({"id": "x", "title": "Other", "state": "failed"})],
    );

    let table = ok(&env, &["tasks"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        lines[0],
        "SPEC  ID  STATE   PRIORITY  SKILL  DEPENDS  TITLE"
    );
    assert_eq!(lines[2], "a     2   ready   4         web    1        2");
    assert_eq!(lines.len(), 4);

    let all: Value = serde_json::from_str(&ok(&env, &["tasks", "--json"])).unwrap();
    assert_eq!(all.as_array().unwrap().len(), 3);
    assert_eq!(all[1]["spec_name"], "a");
    assert_eq!(all[1]["dependencies"], json!(["1"]));

    let one: Value = serde_json::from_str(&ok(&env, &["tasks", "--json", "--spec", "b"])).unwrap();
    assert_eq!(
        one,
        json!([{"spec_name": "b", "id": "x", "state": "failed", "priority": 0,
        "required_skill": null, "dependencies": [], "repo_name": null, "title": "Other"}])
    );

    let ready: Value =
        serde_json::from_str(&ok(&env, &["tasks", "--json", "--state", "ready"])).unwrap();
    let ids: Vec<&str> = ready
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["2"]);

    let out = env.output(&["tasks", "--state", "sleeping"]);
    assert_eq!(out.status.code(), Some(2), "clap rejects an unknown state");
}

#[test]
fn completions_and_man_page_come_from_the_clap_definitions() {
    let env = Env::new();
    let bash = ok(&env, &["completions", "bash"]);
    for word in ["dispatcher", "import", "tasks", "status", "completions"] {
        assert!(bash.contains(word), "bash completions lack {word}");
    }
    assert!(ok(&env, &["completions", "zsh"]).contains("#compdef dispatcher"));
    assert!(ok(&env, &["completions", "fish"]).contains("complete -c dispatcher"));
    let man = ok(&env, &["man"]);
    assert!(man.contains("\n.TH dispatcher 1"), "{man}");
    assert!(
        man.contains(".SH SUBCOMMANDS") && man.contains("dispatcher\\-import"),
        "{man}"
    );
}

#[test]
fn status_watch_redraws_with_a_separator_when_not_a_terminal() {
    let env = env_with_config();
    env.taskset("s", &[json!({"id": "1"})]);
    let log = env.path().join("watch.out");
    let mut child = env
        .command(&["status", "--watch", "--interval", "50ms"])
        .stdout(fs::File::create(&log).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for("two refreshes", || {
        fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("\n----\n")
            .count()
            >= 2
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        !fs::read_to_string(&log).unwrap().contains('\x1b'),
        "no ANSI codes into a file"
    );
}

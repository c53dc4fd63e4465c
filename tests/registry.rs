//! The registry contract end to end: NecroCode-written files are read and changed only where
//! the dispatcher must change them, broken or hostile tasksets are reported without stopping
//! the others, runners get exactly the documented argv and environment, config errors name
//! file, line and key, and `status` works without a running dispatcher.

mod support;

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};
use support::*;

// ----- helpers ------------------------------------------------------------------------------

/// `[agent_pools.<name>]` running the test runner `script` with `args` and `env`.
fn pool(name: &str, script: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let mut command = vec![toml_str(&runner(script))];
    command.extend(args.iter().map(|a| toml_str(a)));
    let env: Vec<String> = env
        .iter()
        .map(|(k, v)| format!("{k} = {}", toml_str(v)))
        .collect();
    format!(
        "[agent_pools.{name}]\nmax_concurrency = 2\ncommand = [{}]\nenv = {{ {} }}\n\n",
        command.join(", "),
        env.join(", ")
    )
}

/// A pool whose runner appends `start <task_id> <pool>` and `end …` lines to `ledger` and
/// exits 0 at once.
fn recording_pool(name: &str, ledger: &Path) -> String {
    pool(
        name,
        "record.sh",
        &["{task_id}", name],
        &[("LEDGER", &ledger.display().to_string()), ("SLEEP", "0")],
    )
}

/// The `(task_id, pool)` of each `start` line of a ledger, in order; empty if nothing ran.
fn ledger_starts(ledger: &Path) -> Vec<(String, String)> {
    fs::read_to_string(ledger)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let mut words = line.split(' ');
            (words.next() == Some("start")).then(|| {
                let task = words.next().unwrap().to_string();
                let pool = words.next().unwrap().to_string();
                (task, pool)
            })
        })
        .collect()
}

/// The index of the ledger line `<kind> <task_id> …`.
fn ledger_index(ledger: &Path, kind: &str, task: &str) -> usize {
    let text = fs::read_to_string(ledger).unwrap();
    let prefix = format!("{kind} {task} ");
    text.lines()
        .position(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} line in ledger:\n{text}"))
}

/// Naive ISO-8601 with exactly six fraction digits, as Python's `isoformat()` writes it:
/// `^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}$`.
fn is_naive_micros(text: &str) -> bool {
    const SHAPE: &[u8] = b"0000-00-00T00:00:00.000000";
    text.len() == SHAPE.len()
        && text.bytes().zip(SHAPE).all(|(c, &want)| match want {
            b'0' => c.is_ascii_digit(),
            other => c == other,
        })
}

/// Every string stored under a key ending in `_at`, anywhere in `value`, with its JSON path.
fn timestamps(value: &Value, path: &str, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                let child_path = format!("{path}.{key}");
                if let (true, Some(text)) = (key.ends_with("_at"), child.as_str()) {
                    out.push((child_path.clone(), text.to_string()));
                }
                timestamps(child, &child_path, out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                timestamps(child, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// `value` the way Python's `json.dumps(value)` writes it (default separators, ASCII only),
/// so event lines can be compared with what NecroCode itself would append.
fn py_dumps(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => py_string(s),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(py_dumps).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Object(map) => {
            let items: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{}: {}", py_string(k), py_dumps(v)))
                .collect();
            format!("{{{}}}", items.join(", "))
        }
    }
}

/// `value` the way Python's `json.dump(value, f, indent=2)` writes a taskset file.
fn py_pretty(value: &Value) -> String {
    fn write(value: &Value, depth: usize, out: &mut String) {
        let pad = |n: usize| "  ".repeat(n);
        match value {
            Value::Array(items) if !items.is_empty() => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    out.push_str(if i == 0 { "\n" } else { ",\n" });
                    out.push_str(&pad(depth + 1));
                    write(item, depth + 1, out);
                }
                out.push('\n');
                out.push_str(&pad(depth));
                out.push(']');
            }
            Value::Object(map) if !map.is_empty() => {
                out.push('{');
                for (i, (key, item)) in map.iter().enumerate() {
                    out.push_str(if i == 0 { "\n" } else { ",\n" });
                    out.push_str(&pad(depth + 1));
                    out.push_str(&py_string(key));
                    out.push_str(": ");
                    write(item, depth + 1, out);
                }
                out.push('\n');
                out.push_str(&pad(depth));
                out.push('}');
            }
            other => out.push_str(&py_dumps(other)),
        }
    }
    let mut out = String::new();
    write(value, 0, &mut out);
    out
}

/// The taskset file is exactly what Python's `json.dump(indent=2)` would write for its
/// content, so NecroCode's tools see no diff noise after a dispatcher write.
fn assert_python_layout(env: &Env, spec: &str) {
    let text = fs::read_to_string(env.taskset_path(spec)).unwrap();
    let value: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        text,
        py_pretty(&value),
        "{spec}: not Python's json.dump layout"
    );
}

fn py_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
    }
    out.push('"');
    out
}

/// Checks one appended event line: NecroCode's key order, Python's `json.dumps` layout, the
/// right spec, a task id, a naive microsecond timestamp and an object of details.
fn assert_event_line(line: &str, spec: &str) {
    let event: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    let keys: Vec<&str> = event
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        ["event_type", "spec_name", "task_id", "timestamp", "details"],
        "{line}"
    );
    assert!(event["event_type"].is_string(), "{line}");
    assert_eq!(event["spec_name"], spec, "{line}");
    assert!(event["task_id"].is_string(), "{line}");
    assert!(
        is_naive_micros(event["timestamp"].as_str().unwrap()),
        "{line}"
    );
    assert!(event["details"].is_object(), "{line}");
    assert_eq!(py_dumps(&event), line, "not Python's json.dumps layout");
}

fn find_task<'a>(taskset: &'a Value, id: &str) -> &'a Value {
    taskset["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == id)
        .unwrap_or_else(|| panic!("no task {id}"))
}

/// A task without the fields the dispatcher legitimately changes when it runs one.
fn without_run_fields(task: &Value) -> Value {
    let mut task = task.clone();
    let map = task.as_object_mut().unwrap();
    for key in ["state", "runner_id", "updated_at"] {
        map.remove(key);
    }
    map["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("dispatcher");
    task
}

fn assert_exit(status: std::process::ExitStatus, code: i32, log: &str) {
    assert_eq!(status.code(), Some(code), "dispatcher log:\n{log}");
}

// ----- 1. NecroCode's own files ---------------------------------------------------------------

#[test]
fn necrocode_fixture_runs_ready_and_unblocked_tasks_and_leaves_the_rest_untouched() {
    let env = Env::new();
    copy_dir(&fixture_registry(), &env.registry());
    let ledger = env.path().join("ledger");
    let pools: String = ["backend", "frontend", "devops", "default"]
        .iter()
        .map(|name| recording_pool(name, &ledger))
        .collect();
    env.config("", &pools);
    let before = env.read_taskset("chat-app");
    let events_path = |spec: &str| env.registry().join(format!("events/{spec}/events.jsonl"));
    let events_before: Vec<Vec<u8>> = ["chat-app", "tiny"]
        .iter()
        .map(|spec| fs::read(events_path(spec)).unwrap())
        .collect();

    let (status, log) = env.run_until_idle();

    // Task 3 waits on task 2, which NecroCode recorded as failed: it can never run.
    assert_exit(status, 4, &log);
    let after = env.read_taskset("chat-app");
    for (id, state) in [
        ("1", "done"),
        ("1.1", "done"),
        ("1.2", "done"),
        ("2", "failed"),
        ("3", "blocked"),
    ] {
        assert_eq!(find_task(&after, id)["state"], state, "task {id}");
    }
    // 1.1 was ready; 1.2 only became runnable when 1.1 finished.
    assert!(
        ledger_index(&ledger, "end", "1.1") < ledger_index(&ledger, "start", "1.2"),
        "1.2 must start after 1.1 ended"
    );
    let mut starts = ledger_starts(&ledger);
    starts.sort();
    let expected: Vec<(String, String)> =
        [("1.1", "backend"), ("1.2", "backend"), ("2", "default")]
            .iter()
            .map(|(t, p)| (t.to_string(), p.to_string()))
            .collect();
    assert_eq!(starts, expected, "only chat-app 1.1, 1.2 and tiny 2 run");

    // What the dispatcher had no reason to touch is exactly as NecroCode wrote it.
    for id in ["1", "2", "3"] {
        assert_eq!(find_task(&after, id), find_task(&before, id), "task {id}");
    }
    for id in ["1.1", "1.2"] {
        assert_eq!(
            without_run_fields(find_task(&after, id)),
            without_run_fields(find_task(&before, id)),
            "task {id} beyond state, runner_id, updated_at and metadata.dispatcher"
        );
    }
    for key in ["spec_name", "created_at", "metadata"] {
        assert_eq!(after[key], before[key], "taskset {key}");
    }
    assert!(after["version"].as_u64().unwrap() > 7, "version is bumped");
    assert_python_layout(&env, "chat-app");
    assert_python_layout(&env, "tiny");

    // The event logs keep NecroCode's lines byte for byte; ours follow in its format.
    for (spec, original) in ["chat-app", "tiny"].iter().zip(&events_before) {
        let now = fs::read(events_path(spec)).unwrap();
        assert!(now.starts_with(original), "{spec} events were rewritten");
        let appended = String::from_utf8(now[original.len()..].to_vec()).unwrap();
        assert!(!appended.is_empty(), "{spec}: no events appended");
        for line in appended.lines() {
            assert_event_line(line, spec);
        }
    }

    let report = status_json(&env);
    assert_eq!(report["dispatcher"]["running"], false);
    let stuck = report["blocked_forever"].as_array().unwrap();
    assert_eq!(stuck.len(), 1, "{stuck:?}");
    assert_eq!(stuck[0]["spec"], "chat-app");
    assert_eq!(stuck[0]["task_id"], "3");
    assert!(
        stuck[0]["reason"].as_str().unwrap().contains("\"2\""),
        "the reason names the failed dependency: {}",
        stuck[0]["reason"]
    );
}

// ----- 2. A hand-written taskset in DESIGN.md's shape ------------------------------------------

/// DESIGN.md's example, with the `…` placeholders filled in, a done task `1.1` for `1.2` to
/// wait on, and fields no tool knows at every level.
const DESIGN_EXAMPLE: &str = r#"{ "spec_name": "chat-app", "version": 7,
  "created_at": "2026-11-28T10:00:00.000000", "updated_at": "2026-11-28T10:05:00.123456",
  "metadata": {"x_taskset_meta": {"keep": [1, "two", null, 2.5]}},
  "tasks": [ { "id": "1.1", "title": "Models", "description": "done before",
               "state": "done", "dependencies": [], "required_skill": "backend",
               "priority": 1, "is_optional": false,
               "assigned_slot": null, "reserved_branch": null, "runner_id": "runner-old",
               "artifacts": [],
               "metadata": {"repo_name": "chat-app"},
               "created_at": "2026-11-28T10:00:00.000000", "updated_at": "2026-11-28T10:01:00.000000" },
             { "id": "1.2", "title": "JWT auth", "description": "…",
               "state": "blocked", "dependencies": ["1.1"], "required_skill": "backend",
               "priority": 5, "is_optional": false,
               "assigned_slot": null, "reserved_branch": null, "runner_id": null,
               "artifacts": [ {"type": "diff", "uri": "file:///tmp/necro/1.2/changes.diff", "size_bytes": 2048,
                               "created_at": "2026-11-28T10:02:00.000000", "metadata": {"x_artifact_meta": "m"},
                               "x_artifact": {"nested": [true, false]}} ],
               "metadata": {"repo_name": "chat-app", "x_meta": {"a": "b"}},
               "created_at": "2026-11-28T10:00:00.000000", "updated_at": "2026-11-28T10:00:00.000000",
               "x_task": [1, {"n": null}] } ],
  "x_top": "kept" }"#;

#[test]
fn design_example_taskset_runs_to_done_keeping_unknown_fields_and_python_timestamps() {
    let env = Env::new();
    let ledger = env.path().join("ledger");
    env.config("", &recording_pool("backend", &ledger));
    env.write_taskset_raw("chat-app", DESIGN_EXAMPLE);
    let before: Value = serde_json::from_str(DESIGN_EXAMPLE).unwrap();

    let (status, log) = env.run_until_idle();

    assert_exit(status, 0, &log);
    let after = env.read_taskset("chat-app");
    let task = find_task(&after, "1.2");
    assert_eq!(task["state"], "done");
    assert_eq!(ledger_starts(&ledger), [("1.2".into(), "backend".into())]);

    // Unknown fields at every level, and every field the run had no business changing.
    assert_eq!(after["x_top"], "kept");
    assert_eq!(after["metadata"], before["metadata"]);
    assert_eq!(task["x_task"], json!([1, {"n": null}]));
    assert_eq!(task["metadata"]["x_meta"], json!({"a": "b"}));
    assert_eq!(task["artifacts"], before["tasks"][1]["artifacts"]);
    assert_eq!(task["description"], "…");
    assert_eq!(
        without_run_fields(task),
        without_run_fields(&before["tasks"][1])
    );
    assert_eq!(find_task(&after, "1.1"), &before["tasks"][0]);
    let keys = |v: &Value| -> Vec<String> { v.as_object().unwrap().keys().cloned().collect() };
    assert_eq!(keys(task), keys(&before["tasks"][1]), "task key order");
    assert_eq!(after["created_at"], before["created_at"]);

    // Each write bumps the version (promote, claim, finish: at least one).
    assert!(
        after["version"].as_u64().unwrap() > 7,
        "version: {}",
        after["version"]
    );
    let mut stamps = Vec::new();
    timestamps(&after, "$", &mut stamps);
    assert!(
        stamps
            .iter()
            .any(|(p, _)| p == "$.tasks[1].metadata.dispatcher.started_at"),
        "the dispatcher records when it started the task: {stamps:?}"
    );
    for (path, text) in &stamps {
        assert!(is_naive_micros(text), "{path} = {text:?}");
    }
    assert_ne!(after["updated_at"], before["updated_at"]);
    assert_ne!(task["updated_at"], before["tasks"][1]["updated_at"]);
    // Python's ensure_ascii: the ellipsis is stored escaped.
    assert_python_layout(&env, "chat-app");
    let text = fs::read_to_string(env.taskset_path("chat-app")).unwrap();
    assert!(text.contains(r#""description": "\u2026""#), "{text}");
}

// ----- 3. Unreadable tasksets ------------------------------------------------------------------

/// Sets up a broken spec `bad_spec` (through `make_bad`, given its `taskset.json` path) next to
/// a good one, runs until idle, and checks: the good one ran, the broken one is reported on
/// stderr and in `status --json` with every text `expect` computes, its file (if it is one)
/// was not touched, and the run ended with exit code 4.
fn assert_broken_taskset_reported(
    bad_spec: &str,
    make_bad: impl FnOnce(&Path),
    expect: impl FnOnce(&Env) -> Vec<String>,
) {
    let env = Env::new();
    let ledger = env.path().join("ledger");
    env.config("", &recording_pool("default", &ledger));
    env.taskset(
        "good",
        &[
            json!({"id": "a"}),
            json!({"id": "b", "state": "blocked", "dependencies": ["a"]}),
        ],
    );
    let bad_path = env
        .registry()
        .join("tasksets")
        .join(bad_spec)
        .join("taskset.json");
    fs::create_dir_all(bad_path.parent().unwrap()).unwrap();
    make_bad(&bad_path);
    let bad_bytes = fs::read(&bad_path).ok();
    let was_dir = bad_path.is_dir();
    let expect = expect(&env);

    let (status, log) = env.run_until_idle();

    assert_exit(status, 4, &log);
    assert_eq!(env.state_of("good", "a"), "done");
    assert_eq!(env.state_of("good", "b"), "done");
    assert_eq!(
        fs::read(&bad_path).ok(),
        bad_bytes,
        "the broken file changed"
    );
    assert_eq!(bad_path.is_dir(), was_dir);
    assert!(!log.contains("panicked"), "{log}");
    for text in &expect {
        assert!(log.contains(text), "stderr should name {text:?}:\n{log}");
    }

    let report = status_json(&env);
    let tasksets = report["tasksets"].as_array().unwrap();
    let entry = tasksets
        .iter()
        .find(|t| t["spec"] == bad_spec)
        .unwrap_or_else(|| panic!("{bad_spec} missing from status: {tasksets:?}"));
    let error = entry["error"].as_str().unwrap_or_default();
    for text in &expect {
        assert!(
            error.contains(text),
            "status error {error:?} lacks {text:?}"
        );
    }
    let good = tasksets.iter().find(|t| t["spec"] == "good").unwrap();
    assert_eq!(good["error"], Value::Null);
    assert_eq!(good["counts"]["done"], 2);
}

fn taskset_file_shown(env: &Env, spec: &str) -> String {
    env.shown(&format!("registry/tasksets/{spec}/taskset.json"))
}

#[test]
fn truncated_taskset_is_reported_by_path_left_as_is_and_others_run() {
    let full = fs::read(fixture_registry().join("tasksets/chat-app/taskset.json")).unwrap();
    assert_broken_taskset_reported(
        "chat-app",
        |path| fs::write(path, &full[..full.len() / 2]).unwrap(),
        |env| vec![taskset_file_shown(env, "chat-app")],
    );
}

#[test]
fn empty_taskset_file_is_reported_by_path_and_others_run() {
    assert_broken_taskset_reported(
        "empty",
        |path| fs::write(path, "").unwrap(),
        |env| vec![taskset_file_shown(env, "empty")],
    );
}

#[test]
fn taskset_json_that_is_a_directory_is_reported_by_path_and_others_run() {
    assert_broken_taskset_reported(
        "dir",
        |path| fs::create_dir(path).unwrap(),
        |env| vec![taskset_file_shown(env, "dir")],
    );
}

#[test]
fn duplicate_task_ids_are_reported_with_the_id_and_others_run() {
    let doc = json!({"spec_name": "dups", "version": 1, "metadata": {}, "tasks": [
        {"id": "twice", "title": "A", "state": "ready"},
        {"id": "twice", "title": "B", "state": "ready"},
    ]});
    assert_broken_taskset_reported(
        "dups",
        |path| fs::write(path, serde_json::to_string_pretty(&doc).unwrap()).unwrap(),
        |env| {
            vec![
                taskset_file_shown(env, "dups"),
                "duplicate task id \"twice\"".into(),
            ]
        },
    );
}

#[test]
fn hidden_spec_directory_is_reported_by_name_not_a_crash() {
    let doc = json!({"spec_name": ".hidden", "version": 1, "metadata": {}, "tasks": [
        {"id": "1", "title": "A", "state": "ready"},
    ]});
    assert_broken_taskset_reported(
        ".hidden",
        |path| fs::write(path, doc.to_string()).unwrap(),
        |_| vec!["\".hidden\"".into()],
    );
}

// ----- 4. Titles are data ----------------------------------------------------------------------

#[test]
fn title_with_shell_metacharacters_reaches_the_runner_as_one_verbatim_argument() {
    let env = Env::new();
    let out = env.path().join("out");
    fs::create_dir_all(&out).unwrap();
    env.config(
        "",
        &pool(
            "default",
            "args.sh",
            &["{title}", "--spec={spec}", "{task_id}"],
            &[("OUT_DIR", &out.display().to_string())],
        ),
    );
    // `rm -rf keep` rather than `rm -rf /`: it proves the same thing if a shell ever ran the
    // title, without risking the machine.
    let title = r#"$(touch PWNED) ; rm -rf keep ; `touch PWNED2` | && "quotes' {spec} *"#;
    env.taskset("meta", &[json!({"id": "t1", "title": title})]);
    // Sentinels for `rm -rf keep` in both places a shell could run: the dispatcher's directory
    // and the runner's.
    let sentinels = [
        env.path().join("keep"),
        env.state().join("scratch/meta/t1/keep"),
    ];
    for dir in &sentinels {
        fs::create_dir_all(dir).unwrap();
    }

    let (status, log) = env.run_until_idle();

    assert_exit(status, 0, &log);
    let args: Vec<PathBuf> = paths_under(&out)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "args"))
        .collect();
    assert_eq!(args.len(), 1, "{args:?}");
    let args = fs::read_to_string(&args[0]).unwrap();
    let args: Vec<&str> = args.lines().collect();
    // `{spec}` inside the title stays literal; the one in the command's own argument does not.
    assert_eq!(args, [title, "--spec=meta", "t1"]);
    let pwned: Vec<PathBuf> = paths_under(env.path())
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("PWNED"))
        })
        .collect();
    assert!(pwned.is_empty(), "a shell ran the title: {pwned:?}");
    for dir in &sentinels {
        assert!(dir.is_dir(), "{} was removed", dir.display());
    }
    assert_eq!(env.task("meta", "t1")["title"], title);
}

// ----- 5. The runner contract ------------------------------------------------------------------

fn parse_env_dump(text: &str) -> Map<String, Value> {
    text.lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_string(), Value::from(v)))
        .collect()
}

#[test]
fn runner_gets_the_documented_environment_working_directory_and_log() {
    let env = Env::new();
    let out = env.path().join("out");
    fs::create_dir_all(&out).unwrap();
    let mut config = pool(
        "backend",
        "contract.sh",
        &[
            "{context_file}",
            "{runner_id}",
            "{slot_path}",
            "{branch}",
            "{spec}/{task_id}",
        ],
        &[
            ("OUT_DIR", &out.display().to_string()),
            ("CUSTOM_VAR", "from pool env"),
        ],
    );
    config.push_str("[agent_pools.backend.config]\nmodel = \"x\"\n");
    env.config("", &config);
    env.taskset(
        "contract",
        &[
            json!({"id": "base", "state": "done"}),
            json!({"id": "work", "title": "Wire the API", "description": "Add the endpoints",
                   "dependencies": ["base"], "required_skill": "backend", "priority": 3,
                   "metadata": {"ticket": 42, "labels": ["api", "v2"]}}),
        ],
    );

    let (status, log) = env.run_until_idle();

    assert_exit(status, 0, &log);
    let dumps: Vec<PathBuf> = paths_under(&out)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "env"))
        .collect();
    assert_eq!(dumps.len(), 1, "exactly one runner ran: {dumps:?}");
    let runner_id = dumps[0].file_stem().unwrap().to_string_lossy().to_string();
    let record = |ext: &str| fs::read_to_string(out.join(format!("{runner_id}.{ext}"))).unwrap();
    let vars = parse_env_dump(&record("env"));
    let var = |name: &str| {
        vars.get(name)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("runner lacks {name}; it got {vars:?}"))
            .to_string()
    };

    let task = env.task("contract", "work");
    assert_eq!(task["state"], "done");
    assert_eq!(var("RUNNER_ID"), runner_id);
    assert_eq!(task["runner_id"], runner_id.as_str());
    assert_eq!(
        task["metadata"]["dispatcher"]["runner_id"],
        runner_id.as_str()
    );
    assert_eq!(var("POOL_NAME"), "backend");
    assert_eq!(var("DISPATCHER_ATTEMPT"), "1");
    assert_eq!(var("RUNNER_MODEL"), "x");
    assert_eq!(var("CUSTOM_VAR"), "from pool env");

    let scratch = fs::canonicalize(env.state().join("scratch/contract/work")).unwrap();
    let context_text = var("TASK_CONTEXT");
    let context: Value = serde_json::from_str(&context_text).expect("TASK_CONTEXT is JSON");
    for key in [
        "task_id",
        "spec_name",
        "task_title",
        "task_description",
        "dependencies",
        "required_skill",
        "slot_id",
        "slot_path",
        "repo_url",
        "branch_name",
        "metadata",
        "runner_id",
        "attempt",
        "pool",
    ] {
        assert!(
            context.get(key).is_some(),
            "TASK_CONTEXT lacks {key}: {context}"
        );
    }
    assert_eq!(context["task_id"], "work");
    assert_eq!(context["spec_name"], "contract");
    assert_eq!(context["task_title"], "Wire the API");
    assert_eq!(context["task_description"], "Add the endpoints");
    assert_eq!(context["dependencies"], json!(["base"]));
    assert_eq!(context["required_skill"], "backend");
    assert_eq!(context["slot_id"], Value::Null);
    assert_eq!(context["repo_url"], Value::Null);
    assert_eq!(context["branch_name"], Value::Null);
    assert_eq!(context["metadata"]["ticket"], 42);
    assert_eq!(context["metadata"]["labels"], json!(["api", "v2"]));
    assert_eq!(context["runner_id"], runner_id.as_str());
    assert_eq!(context["attempt"], 1);
    assert_eq!(context["pool"], "backend");
    let slot_path = context["slot_path"].as_str().unwrap();
    assert_eq!(fs::canonicalize(slot_path).unwrap(), scratch);

    // The file carries the very same document.
    assert_eq!(record("context"), context_text);
    // The runner's directory is removed once its end is recorded, so compare the path only.
    assert!(
        Path::new(&var("TASK_CONTEXT_FILE"))
            .ends_with(format!("state/runners/{runner_id}/context.json")),
        "{}",
        var("TASK_CONTEXT_FILE")
    );
    assert_eq!(
        record("heartbeat").trim(),
        "present",
        "heartbeat file while running"
    );
    assert!(
        Path::new(&var("DISPATCHER_HEARTBEAT_FILE"))
            .starts_with(fs::canonicalize(env.state()).unwrap()),
        "heartbeat file lives in the state dir: {}",
        var("DISPATCHER_HEARTBEAT_FILE")
    );
    assert_eq!(
        Path::new(record("pwd").trim()),
        scratch,
        "working directory"
    );

    let args = record("args");
    let args: Vec<&str> = args.lines().collect();
    assert_eq!(args.len(), 5, "{args:?}");
    assert_eq!(args[0], var("TASK_CONTEXT_FILE"));
    assert_eq!(args[1], runner_id);
    assert_eq!(args[2], slot_path);
    assert_eq!(args[3], "", "no branch without a workspace slot");
    assert_eq!(args[4], "contract/work");

    let attempt_log = env.state().join("logs/contract/work/attempt-1.log");
    let text = fs::read_to_string(&attempt_log)
        .unwrap_or_else(|e| panic!("{}: {e}", attempt_log.display()));
    assert!(
        text.contains(&format!("contract runner stdout {runner_id}")),
        "{text}"
    );
    assert!(
        text.contains(&format!("contract runner stderr {runner_id}")),
        "{text}"
    );
}

// ----- 6. Config errors ------------------------------------------------------------------------

/// One invalid `dispatcher.toml`: the `[dispatcher]` lines and the rest, a text on the line
/// the error must point at, the dotted key as rendered (empty for a whole unknown section,
/// which has no parent key) and part of the message.
struct BadConfig {
    dispatcher: &'static str,
    extra: &'static str,
    at: &'static str,
    key: &'static str,
    message: &'static str,
}

fn assert_config_rejected(case: &BadConfig) {
    let env = Env::new();
    env.config(case.dispatcher, case.extra);
    env.taskset("s", &[json!({"id": "a"})]);
    let taskset = fs::read(env.taskset_path("s")).unwrap();
    let text = fs::read_to_string(env.config_path()).unwrap();
    let line = 1 + text
        .lines()
        .position(|l| l.contains(case.at))
        .unwrap_or_else(|| panic!("{:?} not in config", case.at));

    let (status, log) = env.run_until_idle();

    assert_exit(status, 1, &log);
    let mut expected = format!("dispatcher: error: dispatcher.toml:{line}: ");
    if !case.key.is_empty() {
        expected.push_str(case.key);
        expected.push_str(": ");
    }
    assert!(
        log.starts_with(&expected),
        "stderr should start with {expected:?}:\n{log}"
    );
    assert!(
        log.contains(case.message),
        "{:?} not in {log}",
        case.message
    );
    assert_eq!(log.lines().count(), 1, "one error line: {log}");
    assert!(!env.state().exists(), "state dir created despite the error");
    assert_eq!(fs::read(env.taskset_path("s")).unwrap(), taskset);
    assert!(!env.registry().join("events").exists(), "events written");
}

#[test]
fn unknown_dispatcher_key_is_an_error_naming_key_and_line() {
    assert_config_rejected(&BadConfig {
        dispatcher: "max_runners = 3",
        extra: "",
        at: "max_runners",
        key: "dispatcher",
        message: "unknown key \"max_runners\"",
    });
}

#[test]
fn unknown_section_is_an_error_naming_it_and_its_line() {
    assert_config_rejected(&BadConfig {
        dispatcher: "",
        extra: "[scheduler]\nkind = \"fast\"\n",
        at: "[scheduler]",
        key: "",
        message: "unknown key \"scheduler\"",
    });
}

#[test]
fn bad_duration_is_an_error_naming_key_and_line() {
    assert_config_rejected(&BadConfig {
        dispatcher: "heartbeat_timeout = \"5 parsecs\"",
        extra: "",
        at: "heartbeat_timeout",
        key: "dispatcher.heartbeat_timeout",
        message: "invalid duration \"5 parsecs\"",
    });
}

#[test]
fn bad_scheduling_policy_is_an_error_naming_key_and_line() {
    assert_config_rejected(&BadConfig {
        dispatcher: "scheduling_policy = \"random\"",
        extra: "",
        at: "scheduling_policy",
        key: "dispatcher.scheduling_policy",
        message: "\"random\"",
    });
}

#[test]
fn skill_mapping_to_a_missing_pool_is_an_error_naming_key_and_line() {
    assert_config_rejected(&BadConfig {
        dispatcher: "",
        extra:
            "[agent_pools.local]\ncommand = [\"true\"]\n\n[skill_mapping]\nbackend = [\"ghost\"]\n",
        at: "backend =",
        key: "skill_mapping.backend[0]",
        message: "pool \"ghost\" is not defined",
    });
}

#[test]
fn pool_without_command_is_an_error_naming_key_and_line() {
    assert_config_rejected(&BadConfig {
        dispatcher: "",
        extra: "[agent_pools.nocmd]\nmax_concurrency = 1\n",
        at: "[agent_pools.nocmd]",
        key: "agent_pools.nocmd",
        message: "missing key \"command\"",
    });
}

#[test]
fn explicit_missing_config_file_is_an_error_naming_the_path() {
    let env = Env::new();
    env.taskset("s", &[json!({"id": "a"})]);
    let taskset = fs::read(env.taskset_path("s")).unwrap();
    // Without a config of its own the run would otherwise fall back to the defaults.
    let mut run = env.spawn_run(&["--until-idle", "--config", "missing.toml"]);
    let status = run.wait(DEADLINE);
    let log = run.stderr();
    assert_exit(status, 1, &log);
    assert!(
        log.starts_with("dispatcher: error: cannot read config missing.toml: "),
        "{log}"
    );
    assert!(!env.path().join(".dispatcher").exists());
    assert!(!env.state().exists());
    assert_eq!(fs::read(env.taskset_path("s")).unwrap(), taskset);
}

// ----- 7. Names that would escape their directory ----------------------------------------------

#[test]
fn spec_name_or_task_id_escaping_its_directory_is_rejected_by_value_and_others_run() {
    let env = Env::new();
    let ledger = env.path().join("ledger");
    env.config("", &recording_pool("default", &ledger));
    env.taskset("good", &[json!({"id": "ok"})]);
    // A document whose spec name differs from its directory and climbs out of `tasksets/`.
    let victim = json!({"spec_name": "../escaped", "version": 1, "metadata": {}, "tasks": [
        {"id": "a", "title": "A", "state": "ready"},
    ]});
    env.write_taskset_raw("victim", &serde_json::to_string_pretty(&victim).unwrap());
    // A task id that would put its log and scratch dir beside its spec's.
    env.taskset("climber", &[json!({"id": "../x"}), json!({"id": "fine"})]);
    let originals: Vec<Vec<u8>> = ["victim", "climber"]
        .iter()
        .map(|s| fs::read(env.taskset_path(s)).unwrap())
        .collect();

    let (status, log) = env.run_until_idle();

    assert_exit(status, 4, &log);
    assert_eq!(env.state_of("good", "ok"), "done");
    assert_eq!(ledger_starts(&ledger), [("ok".into(), "default".into())]);
    let spec_message = "spec_name \"../escaped\" does not match directory name \"victim\"";
    let id_message = "invalid task id \"../x\"";
    assert!(log.contains(spec_message), "{log}");
    assert!(log.contains(id_message), "{log}");
    let report = status_json(&env);
    let error_of = |spec: &str| {
        report["tasksets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["spec"] == spec)
            .and_then(|t| t["error"].as_str())
            .unwrap_or_default()
            .to_string()
    };
    assert!(error_of("victim").contains(spec_message), "{report}");
    assert!(error_of("climber").contains(id_message), "{report}");
    for (spec, original) in ["victim", "climber"].iter().zip(&originals) {
        assert_eq!(&fs::read(env.taskset_path(spec)).unwrap(), original);
    }

    // Nothing named after the hostile values exists anywhere, and the dispatcher wrote only
    // into the registry and its state dir.
    for path in paths_under(env.path()) {
        let name = path.file_name().unwrap().to_string_lossy();
        assert!(
            name != "escaped" && name != "x",
            "written: {}",
            path.display()
        );
        let top = path.strip_prefix(env.path()).unwrap().components().next();
        let top = top.unwrap().as_os_str().to_string_lossy();
        assert!(
            ["registry", "state", "dispatcher.toml", "ledger"].contains(&top.as_ref())
                || top.starts_with("dispatcher-"),
            "written outside registry and state dir: {}",
            path.display()
        );
    }
    let names = |dir: PathBuf| -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    };
    assert_eq!(names(env.registry().join("events")), ["good"]);
    assert_eq!(names(env.state().join("logs")), ["good"]);
    assert_eq!(names(env.state().join("scratch")), ["good"]);
}

// ----- 8. Events when the registry's log cannot be written -------------------------------------

#[test]
fn events_go_to_the_fallback_file_when_the_events_dir_cannot_be_created() {
    let env = Env::new();
    let ledger = env.path().join("ledger");
    env.config("", &recording_pool("default", &ledger));
    env.taskset(
        "audit",
        &[
            json!({"id": "a"}),
            json!({"id": "b", "state": "blocked", "dependencies": ["a"]}),
        ],
    );
    // A regular file where the spec's events directory belongs: unlike permissions, this
    // defeats root too.
    let blocker = env.registry().join("events/audit");
    fs::create_dir_all(blocker.parent().unwrap()).unwrap();
    fs::write(&blocker, "not a directory\n").unwrap();

    let (status, log) = env.run_until_idle();

    assert_exit(status, 0, &log);
    assert_eq!(env.state_of("audit", "a"), "done");
    assert_eq!(env.state_of("audit", "b"), "done");
    assert_eq!(fs::read_to_string(&blocker).unwrap(), "not a directory\n");
    let fallback = env.state().join("events-fallback.jsonl");
    let text = fs::read_to_string(&fallback)
        .unwrap_or_else(|e| panic!("{}: {e}\n{log}", fallback.display()));
    for line in text.lines() {
        assert_event_line(line, "audit");
    }
    let events: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let has = |event_type: &str, task: &str| {
        events
            .iter()
            .any(|e| e["event_type"] == event_type && e["task_id"] == task)
    };
    for (event_type, task) in [
        ("TaskAssigned", "a"),
        ("RunnerStarted", "a"),
        ("RunnerFinished", "a"),
        ("TaskCompleted", "a"),
        ("TaskReady", "b"),
        ("TaskAssigned", "b"),
        ("TaskCompleted", "b"),
    ] {
        assert!(
            has(event_type, task),
            "no {event_type} for {task} in:\n{text}"
        );
    }
    assert!(
        log.contains("events-fallback.jsonl"),
        "the fallback is logged:\n{log}"
    );
}

/// Runner starts heard in a turn are appended together with that turn's writes (one sync per
/// taskset): each attempt's events must still read in the order things happened, also when
/// a runner's start and end are heard at once (a runner that ends at once, many in flight).
#[test]
fn each_attempts_events_are_in_the_order_things_happened() {
    let env = Env::new();
    env.config(
        "max_global_concurrency = 8",
        "[agent_pools.default]\ncommand = [\"true\"]\nmax_concurrency = 8\n",
    );
    let ids: Vec<String> = (0..40).map(|n| format!("t{n}")).collect();
    for spec in ["one", "two"] {
        let tasks: Vec<Value> = ids.iter().map(|id| json!({"id": id})).collect();
        env.taskset(spec, &tasks);
    }

    let (status, log) = env.run_until_idle();

    assert_exit(status, 0, &log);
    let expected = [
        "TaskAssigned",
        "RunnerStarted",
        "RunnerFinished",
        "TaskCompleted",
    ];
    for spec in ["one", "two"] {
        let events = env.events(spec);
        for id in &ids {
            assert_eq!(env.state_of(spec, id), "done");
            let order: Vec<&str> = events
                .iter()
                .filter(|e| e["task_id"] == id.as_str())
                .filter_map(|e| e["event_type"].as_str())
                .filter(|t| expected.contains(t))
                .collect();
            assert_eq!(order, expected, "events of {spec}/{id}");
        }
    }
}

// ----- 9. status without a dispatcher ----------------------------------------------------------

/// The header and rows of one section of `status`' human output.
fn section<'a>(text: &'a str, title: &str) -> Vec<&'a str> {
    let mut lines = text.lines().skip_while(|l| *l != title);
    assert!(lines.next().is_some(), "no {title} section in:\n{text}");
    lines.take_while(|l| !l.trim().is_empty()).collect()
}

/// Each column starts at the same offset in the header and in every row, after a gap of at
/// least two spaces (an empty last cell is trimmed away).
fn assert_aligned(lines: &[&str], header: &[&str]) {
    let head = lines[0];
    assert_eq!(
        head.split_whitespace().count(),
        header.join(" ").split(' ').count(),
        "{head}"
    );
    let mut starts = Vec::new();
    let mut from = 0;
    for word in header {
        let at = from
            + head[from..]
                .find(word)
                .unwrap_or_else(|| panic!("{word} in {head}"));
        starts.push(at);
        from = at + word.len();
    }
    for row in &lines[1..] {
        for &at in &starts[1..] {
            if row.len() <= at {
                continue;
            }
            assert!(
                &row[at - 2..at] == "  " && !row[at..].starts_with(' '),
                "column at {at} misaligned:\n{head}\n{row}"
            );
        }
    }
}

#[test]
fn status_without_dispatcher_reports_registry_counts_in_json_and_aligned_tables() {
    let env = Env::new();
    let ledger = env.path().join("ledger");
    let mut config = recording_pool("local", &ledger);
    config.push_str("[skill_mapping]\nbackend = [\"local\"]\n");
    env.config("", &config);
    env.taskset(
        "s",
        &[
            json!({"id": "a", "required_skill": "backend"}),
            json!({"id": "b", "state": "blocked", "dependencies": ["a"], "required_skill": "backend"}),
            json!({"id": "c", "state": "done"}),
            json!({"id": "d", "state": "failed"}),
            json!({"id": "e", "state": "blocked", "dependencies": ["d"], "required_skill": "backend"}),
            json!({"id": "f", "required_skill": "gpu"}),
        ],
    );
    let taskset = fs::read(env.taskset_path("s")).unwrap();

    let out = env.output(&["status"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("dispatcher: not running"), "{text}");
    assert_aligned(
        &section(&text, "POOLS"),
        &["POOL", "TYPE", "RUNNING", "CPU", "MEMORY MIB", "ENABLED"],
    );
    assert_aligned(
        &section(&text, "TASKSETS"),
        &[
            "SPEC", "VERSION", "READY", "RUNNING", "BLOCKED", "DONE", "FAILED", "ERROR",
        ],
    );
    assert_aligned(&section(&text, "NEVER RUNNABLE"), &["TASK", "REASON"]);
    assert_aligned(&section(&text, "NO POOL SERVES"), &["TASK", "SKILL"]);

    let report = status_json(&env);
    for key in [
        "schema_version",
        "dispatcher",
        "queue_length",
        "totals",
        "pools",
        "running",
        "retrying",
        "unroutable",
        "blocked_forever",
        "tasksets",
    ] {
        assert!(report.get(key).is_some(), "status --json lacks {key}");
    }
    assert_eq!(report["schema_version"], 1);
    assert_eq!(report["dispatcher"]["running"], false);
    assert_eq!(report["dispatcher"]["pid"], Value::Null);
    assert_eq!(report["queue_length"], 1, "only a can run now");
    let counts = json!({"ready": 2, "running": 0, "blocked": 2, "done": 1, "failed": 1});
    assert_eq!(report["totals"], counts);
    assert_eq!(
        report["pools"],
        json!([{"name": "local", "type": "local-process", "running": 0,
                "max_concurrency": 2, "enabled": true, "cpu_used": 0.0, "cpu_quota": null,
                "memory_used_mb": 0, "memory_quota_mb": null, "quota_blocked": false}])
    );
    assert_eq!(report["running"], json!([]));
    assert_eq!(report["retrying"], json!([]));
    assert_eq!(
        report["unroutable"],
        json!([{"spec": "s", "task_id": "f", "required_skill": "gpu"}])
    );
    let stuck = report["blocked_forever"].as_array().unwrap();
    assert_eq!(stuck.len(), 1, "{stuck:?}");
    assert_eq!(
        (&stuck[0]["spec"], &stuck[0]["task_id"]),
        (&json!("s"), &json!("e"))
    );
    assert!(stuck[0]["reason"].as_str().unwrap().contains("\"d\""));
    assert_eq!(
        report["tasksets"],
        json!([{"spec": "s", "version": 1, "tasks": 6, "counts": counts, "error": null}])
    );

    // Reading status changes nothing.
    assert!(!env.state().exists(), "status created the state dir");
    assert_eq!(fs::read(env.taskset_path("s")).unwrap(), taskset);
    assert!(ledger_starts(&ledger).is_empty());
}

#[test]
fn status_ignores_a_snapshot_left_by_a_dispatcher_that_is_gone() {
    let env = Env::new();
    let ledger = env.path().join("ledger");
    env.config("", &recording_pool("default", &ledger));
    env.taskset("s", &[json!({"id": "a"})]);
    let (status, log) = env.run_until_idle();
    assert_exit(status, 0, &log);

    // Start from the real snapshot that run left, then make it claim to be live.
    let snapshot_path = env.state().join("status.json");
    let mut snapshot: Value = serde_json::from_slice(&fs::read(&snapshot_path).unwrap()).unwrap();
    assert_eq!(
        snapshot["dispatcher"]["running"], false,
        "a finished run says so"
    );
    let dead_pid = {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    };
    let now = chrono::Local::now()
        .naive_local()
        .format("%Y-%m-%dT%H:%M:%S%.6f")
        .to_string();
    snapshot["dispatcher"]["running"] = json!(true);
    snapshot["dispatcher"]["updated_at"] = json!(now);
    let write = |snapshot: &Value, pid: u32| {
        let mut snapshot = snapshot.clone();
        snapshot["dispatcher"]["pid"] = json!(pid);
        fs::write(
            &snapshot_path,
            serde_json::to_vec_pretty(&snapshot).unwrap(),
        )
        .unwrap();
    };

    write(&snapshot, dead_pid);
    let text = String::from_utf8(env.output(&["status"]).stdout).unwrap();
    assert!(text.starts_with("dispatcher: not running"), "{text}");
    let report = status_json(&env);
    assert_eq!(report["dispatcher"]["running"], false);
    assert_eq!(report["dispatcher"]["pid"], Value::Null);
    assert_eq!(report["totals"]["done"], 1, "counts come from the registry");

    // Control: the same snapshot with a live pid is believed, so it was the dead pid, not
    // some other flaw in the hand-made snapshot, that made status ignore it.
    let live = std::process::id();
    write(&snapshot, live);
    let text = String::from_utf8(env.output(&["status"]).stdout).unwrap();
    assert!(
        text.starts_with(&format!("dispatcher: running (pid {live}")),
        "{text}"
    );
}

// ----- 10. Blocked tasks whose dependencies are done -------------------------------------------

#[test]
fn blocked_task_with_done_dependencies_is_promoted_to_ready_and_run() {
    let env = Env::new();
    copy_dir(
        &fixture_registry().join("tasksets/tiny"),
        &env.registry().join("tasksets/tiny"),
    );
    copy_dir(
        &fixture_registry().join("events/tiny"),
        &env.registry().join("events/tiny"),
    );
    let ledger = env.path().join("ledger");
    env.config("", &recording_pool("default", &ledger));
    let before = env.read_taskset("tiny");

    let (status, log) = env.run_until_idle();

    assert_exit(status, 0, &log);
    assert_eq!(env.state_of("tiny", "2"), "done");
    assert_eq!(&env.task("tiny", "1"), find_task(&before, "1"));
    assert_eq!(ledger_starts(&ledger), [("2".into(), "default".into())]);
    let events = env.events("tiny");
    let index = |event_type: &str| {
        events
            .iter()
            .position(|e| e["event_type"] == event_type && e["task_id"] == "2")
            .unwrap_or_else(|| panic!("no {event_type} for task 2: {events:?}"))
    };
    assert!(index("TaskReady") < index("TaskAssigned"));
    assert!(index("TaskAssigned") < index("TaskCompleted"));
    let ready = &events[index("TaskReady")];
    assert_eq!(ready["details"]["reason"], "dependencies done");
}

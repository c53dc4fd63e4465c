//! `dispatcher events` and `dispatcher graph`: the real binary on a temp registry.

mod support;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Instant;

use serde_json::json;
use support::{Env, DEADLINE};

fn event(spec: &str, task: Option<&str>, kind: &str, ts: &str) -> String {
    let doc = json!({
        "event_type": kind, "spec_name": spec, "task_id": task, "timestamp": ts,
        "details": {"runner_id": "r-1", "attempt": 1, "duration_seconds": 12.34}
    });
    // Python's separators, as the registry's lines are written.
    serde_json::to_string(&doc)
        .unwrap()
        .replace("\":", "\": ")
        .replace(",\"", ", \"")
}

fn append(path: &Path, lines: &[String]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    for line in lines {
        writeln!(file, "{line}").unwrap();
    }
}

fn spec_events(env: &Env, spec: &str) -> std::path::PathBuf {
    env.registry()
        .join("events")
        .join(spec)
        .join("events.jsonl")
}

/// Two specs and the dispatcher's own log, their times interleaved.
fn env_with_events() -> (Env, Vec<String>) {
    let env = Env::new();
    env.config("", "");
    env.taskset("alpha", &[json!({"id": "1"})]);
    let a1 = event(
        "alpha",
        Some("1"),
        "TaskReady",
        "2026-11-29T10:00:01.000000",
    );
    let a2 = event(
        "alpha",
        Some("1"),
        "TaskCompleted",
        "2026-11-29T10:00:04.000000",
    );
    let b1 = event("beta", Some("1"), "TaskReady", "2026-11-29T10:00:02.000000");
    let b2 = event("beta", Some("2"), "TaskReady", "2026-11-29T10:00:05.000000");
    let d1 = event("", None, "PoolDisabled", "2026-11-29T10:00:03.000000");
    append(&spec_events(&env, "alpha"), &[a1.clone(), a2.clone()]);
    append(&spec_events(&env, "beta"), &[b1.clone(), b2.clone()]);
    append(&env.state().join("events.jsonl"), std::slice::from_ref(&d1));
    (env, vec![a1, b1, d1, a2, b2])
}

fn stdout_of(env: &Env, args: &[&str]) -> String {
    let out = env.output(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn events_are_merged_in_time_order_and_filtered() {
    let (env, ordered) = env_with_events();
    let json = stdout_of(&env, &["events", "--json"]);
    assert_eq!(json, ordered.join("\n") + "\n");

    let human = stdout_of(&env, &["events"]);
    let lines: Vec<&str> = human.lines().collect();
    assert_eq!(lines.len(), 5, "{human}");
    assert_eq!(
        lines[3],
        "2026-11-29T10:00:04.000000  alpha/1  TaskCompleted  runner_id=r-1 attempt=1 duration=12.3s"
    );
    assert!(lines[2].starts_with("2026-11-29T10:00:03.000000  -  PoolDisabled  "));

    let beta = stdout_of(&env, &["events", "--spec", "beta", "--json"]);
    assert_eq!(beta, format!("{}\n{}\n", ordered[1], ordered[4]));
    let task1 = stdout_of(&env, &["events", "--task", "1", "--json"]);
    assert_eq!(
        task1,
        format!("{}\n{}\n{}\n", ordered[0], ordered[1], ordered[3])
    );
    let both = stdout_of(&env, &["events", "--spec", "alpha", "--task", "1"]);
    assert_eq!(both.lines().count(), 2);
}

#[test]
fn a_malformed_event_line_is_reported_and_skipped() {
    let (env, ordered) = env_with_events();
    let path = spec_events(&env, "beta");
    append(&path, &["{not json".to_owned()]);
    let out = env.output(&["events", "--json"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        ordered.join("\n") + "\n"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "skipping malformed event in {} line 3",
            path.display()
        )),
        "{stderr}"
    );
}

/// `dispatcher events --follow --json` in the background, its stdout piped.
fn follow_json(env: &Env) -> std::process::Child {
    env.command(&["events", "--follow", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn follow_prints_events_appended_after_start() {
    let (env, ordered) = env_with_events();
    let mut child = follow_json(&env);
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let end = Instant::now() + DEADLINE;
    let next = || {
        rx.recv_timeout(end.saturating_duration_since(Instant::now()))
            .expect("events --follow printed a line before the deadline")
    };
    for expected in &ordered {
        assert_eq!(&next(), expected);
    }
    // A spec that did not exist when following started, and one that did.
    let late = event(
        "gamma",
        Some("9"),
        "TaskFailed",
        "2026-11-29T10:01:00.000000",
    );
    append(&spec_events(&env, "gamma"), std::slice::from_ref(&late));
    assert_eq!(next(), late);
    let later = event(
        "alpha",
        Some("1"),
        "TaskRetried",
        "2026-11-29T10:02:00.000000",
    );
    append(&spec_events(&env, "alpha"), std::slice::from_ref(&later));
    assert_eq!(next(), later);
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Done 1 <- ready 2; a cycle 4 -> 5 -> 6 -> 4; 7 waits on a dependency that does not exist.
fn env_with_graph() -> Env {
    let env = Env::new();
    env.config("", "");
    env.taskset(
        "alpha",
        &[
            json!({"id": "1", "title": "Say \"hi\"\nnow", "state": "done"}),
            json!({"id": "2", "title": "Second", "dependencies": ["1"]}),
            json!({"id": "4", "state": "blocked", "dependencies": ["6"]}),
            json!({"id": "5", "state": "blocked", "dependencies": ["4"]}),
            json!({"id": "6", "state": "blocked", "dependencies": ["5"]}),
            json!({"id": "7", "state": "failed", "dependencies": ["ghost"]}),
        ],
    );
    env.taskset("beta", &[json!({"id": "1", "state": "running"})]);
    env
}

#[test]
fn graph_dot_has_nodes_edges_colours_and_a_red_cycle() {
    let env = env_with_graph();
    let dot = stdout_of(&env, &["graph"]);
    assert!(dot.starts_with("digraph tasks {\n"), "{dot}");
    for expected in [
        "label=\"alpha\";",
        "label=\"beta\";",
        "\"alpha/1\" [label=\"1: Say \\\"hi\\\"\\nnow\", fillcolor=\"#a1d99b\"",
        "\"alpha/2\" [label=\"2: Second\", fillcolor=\"#9ecae1\"",
        "\"alpha/7\" [label=\"7\", fillcolor=\"#fc9272\"",
        "\"beta/1\" [label=\"1\", fillcolor=\"#fdd835\"",
        "\"alpha/1\" -> \"alpha/2\";",
        "\"alpha/ghost\" [label=\"ghost (missing)\", style=dashed",
        "\"alpha/ghost\" -> \"alpha/7\" [style=dashed];",
    ] {
        assert!(dot.contains(expected), "missing {expected:?} in:\n{dot}");
    }
    for id in ["4", "5", "6"] {
        let node = format!(
            "\"alpha/{id}\" [label=\"{id}\", fillcolor=\"#d9d9d9\", tooltip=\"blocked\", \
             color=\"#d62728\", penwidth=3];"
        );
        assert!(dot.contains(&node), "missing {node:?} in:\n{dot}");
    }
    for (from, to) in [("6", "4"), ("4", "5"), ("5", "6")] {
        let edge = format!(
            "\"alpha/{from}\" -> \"alpha/{to}\" [color=\"#d62728\", penwidth=3, style=bold];"
        );
        assert!(dot.contains(&edge), "missing {edge:?} in:\n{dot}");
    }
    assert!(!dot.contains("\"alpha/1\" [label=\"1: Say \\\"hi\\\"\\nnow\", fillcolor=\"#a1d99b\", tooltip=\"done\", color"));

    let one = stdout_of(&env, &["graph", "--spec", "beta"]);
    assert!(
        one.contains("\"beta/1\"") && !one.contains("alpha"),
        "{one}"
    );
}

#[test]
fn graph_mermaid_has_one_subgraph_per_spec_and_styles() {
    let env = env_with_graph();
    let text = stdout_of(&env, &["graph", "--format", "mermaid"]);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "flowchart LR");
    assert_eq!(lines[1], "  subgraph s0[\"alpha\"]");
    assert_eq!(lines[2], "    s0_t0[\"1: Say #quot;hi#quot; now\"]");
    for expected in [
        "    s0_t0 --> s0_t1",
        "    s0_t6[\"ghost (missing)\"]",
        "    s0_t6 -.-> s0_t5",
        "  subgraph s1[\"beta\"]",
        "  end",
        "  classDef done fill:#a1d99b",
        "  class s0_t0 done",
        "  class s1_t0 running",
        "  class s0_t6 missing",
        "  style s0_t2 stroke:#d62728,stroke-width:4px",
        "  linkStyle 1,2,3 stroke:#d62728,stroke-width:4px",
    ] {
        assert!(
            lines.contains(&expected),
            "missing {expected:?} in:\n{text}"
        );
    }
    assert_eq!(text.matches("subgraph").count(), 2);
    assert_eq!(text.matches("\n  end\n").count(), 2);

    let out = env.output(&["graph", "--format", "mermaid", "--output", "x.svg"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot render Mermaid"));
}

#[test]
fn graph_output_renders_an_svg_with_dot() {
    if std::process::Command::new("dot")
        .arg("-V")
        .output()
        .is_err()
    {
        eprintln!("skipped: Graphviz's dot is not installed (.ci/run installs it)");
        return;
    }
    let env = env_with_graph();
    let out = env.output(&["graph", "--output", "g.svg"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty());
    let svg = fs::read_to_string(env.path().join("g.svg")).unwrap();
    assert!(svg.contains("<svg"), "{svg}");
    assert!(svg.contains("2: Second"), "{svg}");
}

#[test]
fn graph_output_without_dot_says_how_to_get_it() {
    let env = env_with_graph();
    let empty = env.path().join("empty-bin");
    fs::create_dir(&empty).unwrap();
    let out = env
        .command(&["graph", "--output", "g.png"])
        .env("PATH", &empty)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "dispatcher: error: --output needs Graphviz's dot, which is not installed \
             (apt-get install graphviz); use --format dot to get the text"
        ),
        "{stderr}"
    );
    assert!(!env.path().join("g.png").exists());
}

#[test]
fn follow_ends_when_its_reader_goes_away() {
    let (env, ordered) = env_with_events();
    let mut child = follow_json(&env);
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    reader.read_line(&mut first).unwrap();
    assert_eq!(first.trim_end(), ordered[0]);
    // Like `| head -1`: the reader leaves while no new event comes to fail a write.
    drop(reader);
    let end = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > end {
            child.kill().unwrap();
            panic!("events --follow kept running after its reader went away");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
}

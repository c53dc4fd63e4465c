//! The README's demo, run as a test: the root `dispatcher.toml` and `examples/demo/` copied
//! into a temp dir (laid out as `examples/demo.sh` does under `.demo/`, with its demo git
//! repository), run until idle.

mod support;

use std::fs;
use std::path::Path;
use std::process::Command;

use support::copy_dir;

#[test]
fn demo_runs_to_completion_with_one_retry() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    fs::copy(
        root.join("dispatcher.toml"),
        dir.path().join("dispatcher.toml"),
    )
    .unwrap();
    copy_dir(
        &root.join("examples/demo"),
        &dir.path().join("examples/demo"),
    );
    copy_dir(
        &root.join("examples/demo/registry"),
        &dir.path().join(".demo/registry"),
    );
    let origin = Command::new(dir.path().join("examples/demo/make-origin.sh"))
        .arg(".demo/origin")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(origin.status.success(), "{origin:?}");

    let output = Command::new(support::BIN)
        .args(["run", "--until-idle"])
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "log:\n{log}");

    let text = fs::read_to_string(
        dir.path()
            .join(".demo/registry/tasksets/chat-app/taskset.json"),
    )
    .unwrap();
    let taskset: serde_json::Value = serde_json::from_str(&text).unwrap();
    let tasks = taskset["tasks"].as_array().unwrap();
    assert!(tasks.iter().all(|t| t["state"] == "done"), "{text}");
    let attempts = |id: &str| {
        tasks.iter().find(|t| t["id"] == id).unwrap()["metadata"]["dispatcher"]["attempts"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(attempts("2"), 2, "the flaky task fails once, then succeeds");
    assert_eq!(attempts("1"), 1);
    // Two skills went to two pools; the devops task reached backend through `default`.
    let pool = |id: &str| {
        tasks.iter().find(|t| t["id"] == id).unwrap()["metadata"]["dispatcher"]["pool"].clone()
    };
    // Every task ran in a workspace slot, on its own branch, which holds its commit.
    let task = |id: &str| tasks.iter().find(|t| t["id"] == id).unwrap().clone();
    assert_eq!(task("3")["reserved_branch"], "task/chat-app/3");
    assert!(task("3")["assigned_slot"]
        .as_str()
        .unwrap()
        .starts_with("workspace-chat-app-slot"));
    let log = Command::new("git")
        .args([
            "-C",
            ".demo/workspaces/chat-app/.repo",
            "log",
            "--format=%s",
            "task/chat-app/3",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&log.stdout).contains("chat-app/3: Deploy"),
        "{log:?}"
    );
    assert_eq!(pool("1"), "backend");
    assert_eq!(pool("2"), "frontend");
    assert_eq!(pool("3"), "backend");
}

//! Slots for agents, end to end: a failed attempt's worktree is kept as a checkpoint ref that
//! the next attempt is told about (`previous_attempt` in TASK_CONTEXT) and `dispatcher
//! attempts` lists; a fresh slot is bootstrapped (copy_files, setup) before the runner, a
//! failing setup is an `infra` failure, and each slot has its own port range.
//!
//! Every test builds a real origin repository and runs the real binary with
//! `tests/runners/agent_slot.sh` (and `setup.sh` as the setup step); tests wait for the
//! records those scripts write and for registry states, never for a guessed time.

mod support;

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use support::*;

// ----- helpers -------------------------------------------------------------------------------

/// For [`make_origin`]: `.env` is ignored, as a project keeps its secrets out of git.
const IGNORED_ENV: &[(&str, &str)] = &[(".gitignore", ".env\n")];

/// A config with one pool `agents` of `max` runners running `agent_slot.sh {task_id}` (with
/// `OUT_DIR` and `runner_env`), short retry delays, and repository `app` of `slots` slots
/// with `repo_extra` lines (bootstrap keys) appended.
fn configure(
    env: &Env,
    max: usize,
    origin: &Path,
    slots: usize,
    repo_extra: &str,
    runner_env: &[(&str, String)],
) {
    let mut vars = vec![("OUT_DIR", out_dir(env).display().to_string())];
    vars.extend(runner_env.iter().cloned());
    let text = format!(
        "{}\n[retry]\nmax_attempts = 3\ninitial_delay = \"10ms\"\nmax_delay = \"50ms\"\n\
         max_infra_retries = 1\n\n[repo_pool]\ndir = \"workspaces\"\n\n\
         [[repo_pool.repos]]\nname = \"app\"\nurl = {}\nslots = {slots}\n{repo_extra}\n",
        only_pool(
            "agents",
            max,
            &cmd("agent_slot.sh", &["{task_id}"]),
            &vars,
            ""
        ),
        toml_str(&origin.display().to_string()),
    );
    env.config("", &text);
}

fn app_task(id: &str) -> Value {
    json!({"id": id, "metadata": {"repo_name": "app"}})
}

/// What the runner recorded for `task`'s attempt `n` (`what`: pwd, context, port…), if it did.
fn recorded(env: &Env, task: &str, n: u32, what: &str) -> Option<String> {
    let path = env.path().join("out").join(format!("{task}.{n}.{what}"));
    fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

fn record(env: &Env, task: &str, n: u32, what: &str) -> String {
    recorded(env, task, n, what)
        .unwrap_or_else(|| panic!("runner of {task} attempt {n} recorded no .{what}"))
}

fn context(env: &Env, task: &str, n: u32) -> Value {
    serde_json::from_str(&record(env, task, n, "context")).expect("TASK_CONTEXT is JSON")
}

fn history(env: &Env, spec: &str, id: &str) -> Vec<Value> {
    env.task(spec, id)["metadata"]["dispatcher"]["history"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn main_clone(env: &Env) -> PathBuf {
    env.path().join("workspaces/app/.repo")
}

fn attempts_json(env: &Env, task: &str) -> Vec<Value> {
    let out = env.output(&["attempts", task, "--json"]);
    assert!(
        out.status.success(),
        "attempts --json failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: Value = serde_json::from_slice(&out.stdout).expect("attempts --json is JSON");
    list.as_array().expect("a JSON array").clone()
}

// ----- checkpointed retries ------------------------------------------------------------------

#[test]
fn a_retried_attempt_sees_its_predecessors_ref_with_the_uncommitted_file_in_it() {
    let env = Env::new();
    let origin = make_origin(&env, "app", IGNORED_ENV);
    // Two slots: the retry gets the other, never-used one, so the ref must be shared.
    configure(&env, 1, &origin, 2, "", &[("FAIL_FIRST", "1".into())]);
    env.taskset("s", &[app_task("t")]);

    let (status, log) = env.run_until_idle();
    assert_eq!(status.code(), Some(0), "log:\n{log}");
    assert_eq!(env.state_of("s", "t"), "done");

    let first = context(&env, "t", 1);
    assert_eq!(first["previous_attempt"], Value::Null, "{first}");
    let second = context(&env, "t", 2);
    let previous = &second["previous_attempt"];
    let refname = "refs/dispatcher/s/t/attempt-1";
    assert_eq!(previous["attempt"], 1, "{previous}");
    assert_eq!(previous["outcome"], "failed", "{previous}");
    assert_eq!(previous["exit_code"], 7, "{previous}");
    assert_eq!(previous["error"], "exited with code 7", "{previous}");
    assert_eq!(previous["checkpoint_ref"], refname, "{previous}");
    let tail = previous["log_tail"].as_str().expect("log_tail is text");
    assert!(tail.contains("attempt 1 of t giving up"), "{tail:?}");
    assert_ne!(
        record(&env, "t", 1, "pwd"),
        record(&env, "t", 2, "pwd"),
        "the retry ran in the other slot"
    );
    // The runner itself read the ref and found the uncommitted file in it.
    assert_eq!(record(&env, "t", 2, "shown"), "progress of t");

    // The checkpoint sits on top of the attempt's HEAD, in the main clone, and the slot
    // was cleaned as ever.
    let clone = main_clone(&env);
    assert_eq!(
        git(&clone, &["show", &format!("{refname}:work.txt")]),
        "progress of t"
    );
    assert_eq!(
        git(&clone, &["rev-parse", &format!("{refname}^")]),
        git(&origin, &["rev-parse", "main"])
    );
    let slot1 = Path::new(&record(&env, "t", 1, "pwd")).to_path_buf();
    assert!(
        !slot1.join("work.txt").exists(),
        "the failed slot was cleaned"
    );

    let attempts = attempts_json(&env, "s/t");
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!(attempts[0]["attempt"], 1);
    assert_eq!(attempts[0]["outcome"], "failed");
    assert_eq!(attempts[0]["checkpoint_ref"], refname);
    assert_eq!(attempts[0]["checkpoint_exists"], true);
    assert_eq!(attempts[1]["attempt"], 2);
    assert_eq!(attempts[1]["outcome"], "succeeded");
    assert_eq!(
        attempts[1]["checkpoint_ref"],
        Value::Null,
        "no checkpoint of a success"
    );
    assert_eq!(history(&env, "s", "t")[0]["checkpoint_ref"], refname);

    // For people: a table; a ref deleted since is marked gone.
    git(&clone, &["update-ref", "-d", refname]);
    let out = env.output(&["attempts", "s/t"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[0].starts_with("ATTEMPT"), "{text}");
    assert!(lines[1].contains(&format!("{refname} (gone)")), "{text}");
    assert!(lines[2].contains("succeeded"), "{text}");
}

#[test]
fn attempts_of_a_missing_task_is_an_error_naming_it() {
    let env = Env::new();
    let origin = make_origin(&env, "app", IGNORED_ENV);
    configure(&env, 1, &origin, 1, "", &[]);
    env.taskset("s", &[app_task("t")]);
    for task in ["s/nope", "nospec/t"] {
        let out = env.output(&["attempts", task, "--json"]);
        assert_eq!(out.status.code(), Some(1), "{task}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(&format!("no task {task}")), "{stderr}");
        assert!(out.stdout.is_empty());
    }
    let out = env.output(&["attempts", "s/t"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "s/t: no attempts yet\n"
    );
    assert_eq!(attempts_json(&env, "s/t"), Vec::<Value>::new());
}

// ----- worktree bootstrap --------------------------------------------------------------------

#[test]
fn setup_failure_is_an_infra_failure() {
    let env = Env::new();
    let origin = make_origin(&env, "app", IGNORED_ENV);
    let setup = runner("setup.sh");
    let extra = format!("setup = [{}, \"fail\"]\n", toml_str(&setup));
    configure(&env, 1, &origin, 1, &extra, &[]);
    env.taskset("s", &[app_task("t")]);

    let (status, log) = env.run_until_idle();
    assert_eq!(status.code(), Some(3), "the task failed; log:\n{log}");
    let task = env.task("s", "t");
    assert_eq!(task["state"], "failed");
    let meta = &task["metadata"]["dispatcher"];
    // Infra failures never count against the task; max_infra_retries = 1: two tries.
    assert_eq!(meta["attempts"], 0, "{meta}");
    assert_eq!(meta["infra_failures"], 2, "{meta}");
    let expected = format!("setup `{setup} fail` failed with exit code 1");
    assert_eq!(meta["last_error"], expected.as_str(), "{meta}");
    let history = history(&env, "s", "t");
    assert_eq!(history.len(), 2, "{history:?}");
    for record in &history {
        assert_eq!(record["class"], "infra", "{record}");
        assert_eq!(record["counted"], false, "{record}");
        assert_eq!(record["error"], expected.as_str(), "{record}");
    }
    // The runner never ran; setup's output is in the attempt's log.
    assert!(
        fs::read_dir(out_dir(&env)).unwrap().next().is_none(),
        "the runner ran"
    );
    let attempt_log = fs::read_to_string(env.state().join("logs/s/t/attempt-1.log")).unwrap();
    assert!(
        attempt_log.contains("setup failing on purpose"),
        "{attempt_log}"
    );
    let listed = attempts_json(&env, "s/t");
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[1]["class"], "infra");
}

#[test]
fn setup_runs_before_the_runner_and_copy_files_come_from_the_main_checkout() {
    let env = Env::new();
    let origin = make_origin(&env, "app", IGNORED_ENV);
    fs::write(origin.join(".env"), "SECRET=from-main\n").unwrap();
    let extra = format!(
        "setup = [{}, \"ok\"]\nsetup_timeout = \"1m\"\ncopy_files = [\".env\"]\n",
        toml_str(&runner("setup.sh"))
    );
    configure(&env, 1, &origin, 1, &extra, &[]);
    env.taskset("s", &[app_task("t")]);

    let (status, log) = env.run_until_idle();
    assert_eq!(status.code(), Some(0), "log:\n{log}");
    assert_eq!(record(&env, "t", 1, "env"), "SECRET=from-main");
    // Setup ran first, in the slot, and already saw the copied file.
    assert_eq!(record(&env, "t", 1, "setup"), "made by setup\nsaw .env");
    // The copied file is the slot's environment, not work: it stays out of the patch (which
    // does hold setup's untracked file).
    let patches: Vec<PathBuf> = paths_under(&env.state().join("patches"))
        .into_iter()
        .filter(|path| path.is_file())
        .collect();
    assert_eq!(patches.len(), 1, "{patches:?}");
    let patch = fs::read_to_string(&patches[0]).unwrap();
    assert!(patch.contains("setup-made.txt"), "{patch}");
    assert!(
        !patch.contains("from-main"),
        "the secret leaked into {patch}"
    );
    assert_eq!(record(&env, "t", 1, "port"), "none");
    assert!(context(&env, "t", 1).get("port_base").is_none());
    let attempt_log = fs::read_to_string(env.state().join("logs/s/t/attempt-1.log")).unwrap();
    let setup_at = attempt_log
        .find("setup running")
        .expect("setup output in the log");
    let announced_at = attempt_log
        .find("# dispatcher-supervisor: setup")
        .expect("the supervisor names the setup step");
    assert!(announced_at < setup_at, "{attempt_log}");
}

#[test]
fn a_missing_copy_file_is_an_infra_failure_naming_it() {
    let env = Env::new();
    let origin = make_origin(&env, "app", IGNORED_ENV);
    configure(&env, 1, &origin, 1, "copy_files = [\".env\"]\n", &[]);
    env.taskset("s", &[app_task("t")]);

    let (status, log) = env.run_until_idle();
    assert_eq!(status.code(), Some(3), "log:\n{log}");
    let meta = &env.task("s", "t")["metadata"]["dispatcher"];
    let error = meta["last_error"].as_str().unwrap_or_default();
    let missing = origin.join(".env").display().to_string();
    assert!(
        error.starts_with("copy_files: cannot read ") && error.contains(&missing),
        "{error}"
    );
    assert_eq!(meta["attempts"], 0, "{meta}");
}

#[test]
fn two_tasks_in_two_slots_get_different_port_bases() {
    let env = Env::new();
    let origin = make_origin(&env, "app", IGNORED_ENV);
    configure(
        &env,
        2,
        &origin,
        2,
        "port_base = 41000\nports_per_slot = 5\n",
        &[],
    );
    env.taskset("s", &[app_task("a"), app_task("b")]);

    let (status, log) = env.run_until_idle();
    assert_eq!(status.code(), Some(0), "log:\n{log}");
    let mut ports = Vec::new();
    for id in ["a", "b"] {
        let port: u16 = record(&env, id, 1, "port").parse().expect("a port number");
        let ctx = context(&env, id, 1);
        assert_eq!(ctx["port_base"], port, "{ctx}");
        // slot<N> starts at port_base + (N - 1) * ports_per_slot.
        let slot = ctx["slot_id"].as_str().unwrap();
        let n: u16 = slot.rsplit_once("slot").unwrap().1.parse().unwrap();
        assert_eq!(port, 41000 + (n - 1) * 5, "{slot}");
        ports.push(port);
    }
    ports.sort_unstable();
    assert_eq!(ports, [41000, 41005]);
}

#[test]
fn a_setup_past_its_timeout_is_killed_as_an_infra_failure() {
    let env = Env::new();
    let origin = make_origin(&env, "app", IGNORED_ENV);
    let setup = runner("setup.sh");
    let extra = format!(
        "setup = [{}, \"hang\"]\nsetup_timeout = \"300ms\"\n",
        toml_str(&setup)
    );
    configure(&env, 1, &origin, 1, &extra, &[]);
    env.taskset("s", &[app_task("t")]);

    let (status, log) = env.run_until_idle();
    assert_eq!(status.code(), Some(3), "log:\n{log}");
    let meta = &env.task("s", "t")["metadata"]["dispatcher"];
    assert_eq!(
        meta["last_error"],
        format!("setup `{setup} hang` timed out after 300ms"),
        "{meta}"
    );
    assert_eq!(meta["attempts"], 0, "{meta}");
    assert!(recorded(&env, "t", 1, "done").is_none(), "the runner ran");
}

#[test]
fn a_drain_during_setup_stops_it_and_the_attempt_is_not_counted() {
    let env = Env::new();
    let origin = make_origin(&env, "app", IGNORED_ENV);
    let extra = format!("setup = [{}, \"hang\"]\n", toml_str(&runner("setup.sh")));
    configure(&env, 1, &origin, 1, &extra, &[]);
    env.taskset("s", &[app_task("t")]);

    let mut run = env.spawn_run(&[]);
    let started = out_dir(&env).join("setup.started");
    wait_for("setup to start", || started.exists());
    // The first Ctrl-C waits for runners; the second stops them, setup included.
    run.signal(libc::SIGINT);
    wait_for("the drain to start", || run.stderr().contains("draining"));
    run.signal(libc::SIGINT);
    let status = run.wait(DEADLINE);
    assert_eq!(status.code(), Some(130), "log:\n{}", run.stderr());
    assert_eq!(env.state_of("s", "t"), "ready");
    let history = history(&env, "s", "t");
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(history[0]["outcome"], "interrupted");
    assert_eq!(history[0]["counted"], false);
    assert!(recorded(&env, "t", 1, "done").is_none(), "the runner ran");
}

//! Workspace slots end to end: tasks that name a managed repository run in a slot (a git
//! worktree of the pool's main clone) on their own branch; slots are lent one task at a time,
//! cleaned between tasks with the leftovers saved as patch artifacts; a task without a free
//! slot waits; a broken slot is put aside; a restart frees slots whose tasks are gone.
//!
//! Every test builds a real origin repository in its temp dir and runs the real binary with
//! `tests/runners/slot.sh`, which records what it finds in its slot (path, branch, `git
//! status`, context) and, when asked, commits, leaves changes behind, or waits for a gate file.
//! Tests wait for those records and for registry and slot states, never for a guessed time.

mod support;

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use support::*;

// ----- helpers -------------------------------------------------------------------------------

/// One `[[repo_pool.repos]]` entry.
struct Repo<'a> {
    name: &'a str,
    origin: &'a Path,
    slots: usize,
}

/// [`configure`] with one repository, `app` with `slots` slots, made here; returns its origin.
fn configure_app(env: &Env, max: usize, slots: usize, runner_env: &[(&str, String)]) -> PathBuf {
    let origin = make_origin(env, "app", &[]);
    let app = Repo {
        name: "app",
        origin: &origin,
        slots,
    };
    configure(env, max, &[app], runner_env);
    origin
}

/// A config with one pool `agents` (of `max` runners) running `slot.sh {task_id}` with `env`
/// plus `OUT_DIR`, serving every task, and the repository pools `repos` under `workspaces/`.
fn configure(env: &Env, max: usize, repos: &[Repo<'_>], runner_env: &[(&str, String)]) {
    let mut vars = vec![format!(
        "OUT_DIR = {}",
        toml_str(&out_dir(env).display().to_string())
    )];
    vars.extend(
        runner_env
            .iter()
            .map(|(k, v)| format!("{k} = {}", toml_str(v))),
    );
    let mut text = format!(
        "[agent_pools.agents]\ntype = \"local-process\"\nmax_concurrency = {max}\n\
         command = [{}, \"{{task_id}}\"]\nenv = {{ {} }}\n\n\
         [skill_mapping]\ndefault = [\"agents\"]\n\n[repo_pool]\ndir = \"workspaces\"\n",
        toml_str(&runner("slot.sh")),
        vars.join(", ")
    );
    for repo in repos {
        text.push_str(&format!(
            "\n[[repo_pool.repos]]\nname = {}\nurl = {}\nslots = {}\nbase_branch = \"main\"\n",
            toml_str(repo.name),
            toml_str(&repo.origin.display().to_string()),
            repo.slots
        ));
    }
    env.config("", &text);
}

/// A ready task of `repo` (`None`: a task that names no repository).
fn task(id: &str, repo: Option<&str>) -> Value {
    match repo {
        Some(repo) => json!({"id": id, "metadata": {"repo_name": repo}}),
        None => json!({"id": id}),
    }
}

/// One record of a runner (`pwd`, `branch`, `status`, `context`), trimmed.
fn record(env: &Env, task: &str, what: &str) -> String {
    let path = env.path().join("out").join(format!("{task}.{what}"));
    fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_string()
}

fn started(env: &Env, task: &str) -> bool {
    env.path()
        .join("out")
        .join(format!("{task}.started"))
        .exists()
}

fn context(env: &Env, task: &str) -> Value {
    serde_json::from_str(&record(env, task, "context")).expect("TASK_CONTEXT is JSON")
}

fn workspaces(env: &Env) -> PathBuf {
    env.path().join("workspaces")
}

/// The physical path of `path`, as the runner's `pwd -P` prints it.
fn real(path: &Path) -> String {
    fs::canonicalize(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .display()
        .to_string()
}

/// `dispatcher slots --json`: every slot of every pool, flattened.
fn slots(env: &Env) -> Vec<Value> {
    let out = env.output(&["slots", "--json"]);
    assert!(
        out.status.success(),
        "slots --json failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pools: Value = serde_json::from_slice(&out.stdout).expect("slots --json prints JSON");
    pools
        .as_array()
        .expect("a list of pools")
        .iter()
        .flat_map(|pool| pool["slots"].as_array().expect("slots").clone())
        .collect()
}

/// `dispatcher slots sync`, which must succeed.
fn slots_sync(env: &Env) {
    let out = env.output(&["slots", "sync"]);
    assert!(
        out.status.success(),
        "slots sync failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn slot(env: &Env, slot_id: &str) -> Value {
    slots(env)
        .into_iter()
        .find(|s| s["slot_id"] == slot_id)
        .unwrap_or_else(|| panic!("no slot {slot_id}"))
}

/// Gate files for `slot.sh` (`GATE_DIR`). Dropping the guard opens every gate, so runners
/// held by a test that fails still end.
struct Gates(PathBuf);

impl Gates {
    fn new(env: &Env) -> Gates {
        let dir = env.path().join("gates");
        fs::create_dir_all(&dir).unwrap();
        Gates(dir)
    }

    fn open(&self, name: &str) {
        fs::write(self.0.join(name), "").unwrap();
    }

    fn dir(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for Gates {
    fn drop(&mut self) {
        let _ = fs::write(self.0.join("all"), "");
    }
}

/// `(start, end)` nanoseconds of each task in a `slot.sh` ledger, one run per task.
fn spans(ledger: &Path) -> Vec<(String, u128, u128)> {
    let text = fs::read_to_string(ledger).unwrap_or_default();
    let marks: Vec<(&str, &str, u128)> = text
        .lines()
        .map(|line| {
            let parts: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(parts.len(), 4, "ledger line {line:?}");
            (parts[0], parts[1], parts[3].parse().expect("ledger time"))
        })
        .collect();
    let mut tasks: Vec<&str> = marks.iter().map(|m| m.1).collect();
    tasks.sort_unstable();
    tasks.dedup();
    tasks
        .into_iter()
        .map(|task| {
            let at = |kind: &str| {
                let found: Vec<u128> = marks
                    .iter()
                    .filter(|m| m.0 == kind && m.1 == task)
                    .map(|m| m.2)
                    .collect();
                assert_eq!(found.len(), 1, "{task} has one {kind}: {text}");
                found[0]
            };
            (task.to_string(), at("start"), at("end"))
        })
        .collect()
}

/// The most runs between their start and end at one moment (touching counts as overlap).
fn max_overlap(spans: &[(String, u128, u128)]) -> usize {
    max_concurrent(
        spans
            .iter()
            .flat_map(|(_, start, end)| [(*start, true), (*end, false)]),
    )
}

fn assert_all_done(env: &Env, spec: &str) {
    for task in env.read_taskset(spec)["tasks"].as_array().unwrap() {
        assert_eq!(task["state"], "done", "{task}");
    }
}

// ----- tests ---------------------------------------------------------------------------------

#[test]
fn concurrent_tasks_of_one_repo_get_distinct_slots_and_branches() {
    let env = Env::new();
    let gates = Gates::new(&env);
    let origin = configure_app(&env, 2, 2, &[("GATE_DIR", gates.dir())]);
    env.taskset("s", &[task("a", Some("app")), task("b", Some("app"))]);

    let mut run = env.spawn_run(&["--until-idle"]);
    // Both hold their slot at the same time: each waits for its gate.
    wait_for("both runners to start", || {
        started(&env, "a") && started(&env, "b")
    });
    let pool = real(&workspaces(&env).join("app"));
    let (pwd_a, pwd_b) = (record(&env, "a", "pwd"), record(&env, "b", "pwd"));
    assert_ne!(pwd_a, pwd_b, "two running tasks share a slot");
    for (id, pwd) in [("a", &pwd_a), ("b", &pwd_b)] {
        let in_slot = pwd
            .strip_prefix(&format!("{pool}/slot"))
            .is_some_and(|n| n == "1" || n == "2");
        assert!(in_slot, "{id} ran in {pwd}, not a slot of {pool}");
        let branch = format!("task/s/{id}");
        assert_eq!(record(&env, id, "branch"), branch);
        let ctx = context(&env, id);
        assert_eq!(ctx["branch_name"], branch.as_str());
        assert_eq!(real(Path::new(ctx["slot_path"].as_str().unwrap())), *pwd);
        assert_eq!(ctx["repo_url"], origin.display().to_string());
        let task = env.task("s", id);
        assert_eq!(task["reserved_branch"], branch.as_str());
        assert_eq!(task["assigned_slot"], ctx["slot_id"]);
        let slot_id = ctx["slot_id"].as_str().expect("slot_id in TASK_CONTEXT");
        let held = slot(&env, slot_id);
        assert_eq!(held["state"], "allocated");
        assert_eq!(held["task"], format!("s/{id}"));
    }
    assert_ne!(context(&env, "a")["slot_id"], context(&env, "b")["slot_id"]);

    gates.open("all");
    let status = run.wait(DEADLINE);
    assert_eq!(status.code(), Some(0), "log:\n{}", run.stderr());
    assert_all_done(&env, "s");
}

#[test]
fn the_task_branch_keeps_the_runners_commit_after_the_run() {
    let env = Env::new();
    let origin = configure_app(&env, 1, 1, &[("COMMIT", "1".into())]);
    env.taskset("s", &[task("t1", Some("app"))]);

    let (status, log) = env.run_until_idle();
    assert_eq!(status.code(), Some(0), "log:\n{log}");
    assert_eq!(env.task("s", "t1")["reserved_branch"], "task/s/t1");
    assert_eq!(record(&env, "t1", "branch"), "task/s/t1");

    // Branches of worktree slots live in the pool's main clone.
    let main_clone = workspaces(&env).join("app/.repo");
    let subjects = git(&main_clone, &["log", "--format=%s", "task/s/t1"]);
    assert_eq!(
        subjects.lines().collect::<Vec<_>>(),
        ["work of task t1", "initial"]
    );
    assert_eq!(
        git(&main_clone, &["show", "task/s/t1:committed-t1.txt"]),
        "committed by t1"
    );
    // The slot itself is back on the base, without the task's commit.
    let slot = workspaces(&env).join("app/slot1");
    assert_eq!(
        git(&slot, &["rev-parse", "HEAD"]),
        git(&origin, &["rev-parse", "main"])
    );
    assert!(!slot.join("committed-t1.txt").exists());
}

#[test]
fn changes_left_in_a_slot_are_gone_for_the_next_task_and_saved_as_a_patch() {
    let env = Env::new();
    let origin = configure_app(&env, 1, 1, &[("DIRTY", "1".into())]);
    env.taskset(
        "s",
        &[
            task("t1", Some("app")),
            json!({"id": "t2", "state": "blocked", "dependencies": ["t1"],
                   "metadata": {"repo_name": "app"}}),
        ],
    );

    let (status, log) = env.run_until_idle();
    assert_eq!(status.code(), Some(0), "log:\n{log}");
    // One slot: t2 got the checkout t1 left, and found it pristine.
    assert_eq!(record(&env, "t1", "pwd"), record(&env, "t2", "pwd"));
    assert_eq!(record(&env, "t1", "status"), "");
    assert_eq!(record(&env, "t2", "status"), "", "t2 saw t1's leftovers");

    for (id, other) in [("t1", "t2"), ("t2", "t1")] {
        let artifacts = env.task("s", id)["artifacts"].clone();
        let diffs: Vec<&Value> = artifacts
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["type"] == "diff")
            .collect();
        assert_eq!(diffs.len(), 1, "{id}: {artifacts}");
        let uri = diffs[0]["uri"].as_str().unwrap();
        let path = PathBuf::from(uri.strip_prefix("file://").expect("a file:// uri"));
        assert_eq!(
            path,
            env.state().join(format!("patches/s/{id}/attempt-1.patch"))
        );
        let patch = fs::read_to_string(&path).unwrap();
        assert_eq!(diffs[0]["size_bytes"], patch.len());
        assert!(patch.contains(&format!("+modified by {id}")), "{patch}");
        assert!(patch.contains(&format!("untracked-{id}.txt")), "{patch}");
        assert!(patch.contains(&format!("+untracked by {id}")), "{patch}");
        assert!(
            !patch.contains(other),
            "{id}'s patch holds {other}'s work:\n{patch}"
        );
        // It is a patch git can apply to the base.
        git(&origin, &["apply", "--check", path.to_str().unwrap()]);
    }
    let slot = workspaces(&env).join("app/slot1");
    assert_eq!(
        git(&slot, &["status", "--porcelain", "--untracked-files=all"]),
        ""
    );
}

#[test]
fn five_tasks_share_two_slots_and_wait_for_one_without_failing() {
    let env = Env::new();
    let gates = Gates::new(&env);
    let origin = make_origin(&env, "app", &[]);
    let ledger = env.path().join("ledger");
    let app = Repo {
        name: "app",
        origin: &origin,
        slots: 2,
    };
    let runner_env = [
        ("GATE_DIR", gates.dir()),
        ("LEDGER", ledger.display().to_string()),
    ];
    configure(&env, 5, &[app], &runner_env);
    let ids = ["t1", "t2", "t3", "t4", "t5"];
    let tasks: Vec<Value> = ids.iter().map(|id| task(id, Some("app"))).collect();
    env.taskset("s", &tasks);

    let mut run = env.spawn_run(&["--until-idle"]);
    let count_started = || ids.iter().filter(|id| started(&env, id)).count();
    let mut waiting = Vec::new();
    wait_for("two runners and three tasks waiting for a slot", || {
        waiting = status_json(&env)["waiting_for_slot"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        count_started() == 2 && waiting.len() == 3
    });
    for entry in &waiting {
        assert_eq!(entry["repo"], "app", "{entry}");
        assert_eq!(
            env.state_of("s", entry["task_id"].as_str().unwrap()),
            "ready"
        );
    }
    assert_eq!(
        count_started(),
        2,
        "a third task started with both slots held"
    );

    gates.open("all");
    let status = run.wait(DEADLINE);
    assert_eq!(status.code(), Some(0), "log:\n{}", run.stderr());
    assert_all_done(&env, "s");
    let spans = spans(&ledger);
    assert_eq!(spans.len(), 5, "each task ran once: {spans:?}");
    assert_eq!(max_overlap(&spans), 2, "{spans:?}");
    for id in ids {
        let attempts = env.task("s", id)["metadata"]["dispatcher"]["attempts"].clone();
        assert_eq!(
            attempts, 1,
            "{id} waited for a slot without a failed attempt"
        );
    }
}

#[test]
fn a_task_of_another_repo_runs_while_one_repos_slots_are_busy() {
    let env = Env::new();
    let gates = Gates::new(&env);
    let (app_origin, lib_origin) = (make_origin(&env, "app", &[]), make_origin(&env, "lib", &[]));
    let ledger = env.path().join("ledger");
    let repos = [
        Repo {
            name: "app",
            origin: &app_origin,
            slots: 1,
        },
        Repo {
            name: "lib",
            origin: &lib_origin,
            slots: 1,
        },
    ];
    let runner_env = [
        ("GATE_DIR", gates.dir()),
        ("LEDGER", ledger.display().to_string()),
    ];
    configure(&env, 3, &repos, &runner_env);
    // Queue order a1, a2, b1: b1 must get past a2, which waits for app's only slot.
    env.taskset(
        "s",
        &[
            json!({"id": "a1", "priority": 3, "metadata": {"repo_name": "app"}}),
            json!({"id": "a2", "priority": 2, "metadata": {"repo_name": "app"}}),
            json!({"id": "b1", "priority": 1, "metadata": {"repo_name": "lib"}}),
        ],
    );
    gates.open("a2");
    gates.open("b1");

    let mut run = env.spawn_run(&["--until-idle"]);
    wait_for("b1 done while a1 holds app's slot", || {
        started(&env, "a1") && env.state_of("s", "b1") == "done"
    });
    wait_for("a2 listed as waiting for a slot of app", || {
        status_json(&env)["waiting_for_slot"]
            .as_array()
            .is_some_and(|w| w.iter().any(|e| e["task_id"] == "a2" && e["repo"] == "app"))
    });
    assert_eq!(env.state_of("s", "a1"), "running");
    assert_eq!(env.state_of("s", "a2"), "ready");
    assert!(
        !started(&env, "a2"),
        "a2 started while a1 held app's only slot"
    );
    assert_eq!(
        record(&env, "b1", "pwd"),
        real(&workspaces(&env).join("lib/slot1"))
    );

    gates.open("a1");
    let status = run.wait(DEADLINE);
    assert_eq!(status.code(), Some(0), "log:\n{}", run.stderr());
    assert_all_done(&env, "s");
    let spans = spans(&ledger);
    let span = |id: &str| spans.iter().find(|s| s.0 == id).cloned().unwrap();
    assert!(span("a2").1 > span("a1").2, "a2 overlapped a1: {spans:?}");
    assert!(span("b1").2 < span("a1").2, "b1 waited for a1: {spans:?}");
    assert_eq!(record(&env, "a1", "pwd"), record(&env, "a2", "pwd"));
}

#[test]
fn a_broken_slot_goes_to_error_and_the_task_runs_in_another() {
    let env = Env::new();
    let gates = Gates::new(&env);
    configure_app(&env, 1, 2, &[("GATE_DIR", gates.dir())]);
    env.taskset("s", &[task("t1", Some("app"))]);

    slots_sync(&env);
    // slot1 is the one allocation tries first (both unused, lowest number first).
    let broken = workspaces(&env).join("app/slot1");
    fs::remove_file(broken.join(".git")).unwrap();

    let mut run = env.spawn_run(&["--until-idle"]);
    wait_for("t1 to start", || started(&env, "t1"));
    assert_eq!(
        record(&env, "t1", "pwd"),
        real(&workspaces(&env).join("app/slot2"))
    );
    let slot1 = slot(&env, "workspace-app-slot1");
    assert_eq!(slot1["state"], "error", "{slot1}");
    assert!(
        slot1["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{slot1}"
    );
    let on_disk: Value =
        serde_json::from_str(&fs::read_to_string(broken.join("slot.json")).unwrap()).unwrap();
    assert_eq!(on_disk["state"], "error");
    wait_for("status to list the slot error", || {
        status_json(&env)["slot_errors"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["repo"] == "app"))
    });

    gates.open("t1");
    let status = run.wait(DEADLINE);
    assert_eq!(status.code(), Some(0), "log:\n{}", run.stderr());
    assert_eq!(env.state_of("s", "t1"), "done");
    assert_eq!(env.task("s", "t1")["assigned_slot"], "workspace-app-slot2");
    assert_eq!(slot(&env, "workspace-app-slot1")["state"], "error");
    assert_eq!(slot(&env, "workspace-app-slot2")["state"], "available");
}

#[test]
fn a_slot_repaired_by_slots_sync_while_run_is_running_is_used_without_a_restart() {
    let env = Env::new();
    configure_app(&env, 1, 1, &[]);
    env.taskset("s", &[task("t1", Some("app"))]);
    slots_sync(&env);
    // The only slot breaks (its `.git` link gone): the task waits, and status says why.
    fs::remove_file(workspaces(&env).join("app/slot1/.git")).unwrap();

    let mut run = env.spawn_run(&[]);
    wait_for("the slot to go to error", || {
        slot(&env, "workspace-app-slot1")["state"] == "error"
    });
    wait_for("status to list the slot error", || {
        status_json(&env)["slot_errors"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["repo"] == "app"))
    });
    assert!(!started(&env, "t1"));
    assert_eq!(env.state_of("s", "t1"), "ready", "log:\n{}", run.stderr());

    // `slots sync` rebuilds the slot while `run` keeps running.
    slots_sync(&env);
    assert_eq!(slot(&env, "workspace-app-slot1")["state"], "available");
    wait_for("t1 to run in the repaired slot", || {
        env.state_of("s", "t1") == "done"
    });
    assert_eq!(
        record(&env, "t1", "pwd"),
        real(&workspaces(&env).join("app/slot1"))
    );
    wait_for("status to drop the repaired slot's error", || {
        status_json(&env)["slot_errors"]
            .as_array()
            .is_some_and(Vec::is_empty)
    });
    run.signal(libc::SIGINT);
    assert_eq!(run.wait(DEADLINE).code(), Some(130), "{}", run.stderr());
}

#[test]
fn a_restart_after_sigkill_frees_stale_slots() {
    let env = Env::new();
    let gates = Gates::new(&env);
    configure_app(
        &env,
        2,
        2,
        &[("GATE_DIR", gates.dir()), ("DIRTY", "1".into())],
    );
    env.taskset("s", &[task("a", Some("app")), task("b", Some("app"))]);

    let mut first = env.spawn_run(&[]);
    wait_for("both runners to start", || {
        started(&env, "a") && started(&env, "b")
    });
    first.signal(libc::SIGKILL);
    first.wait(DEADLINE);
    let slot_of = |id: &str| {
        env.task("s", id)["assigned_slot"]
            .as_str()
            .expect("assigned_slot")
            .to_string()
    };
    let (slot_a, slot_b) = (slot_of("a"), slot_of("b"));
    for (id, slot_id) in [("a", &slot_a), ("b", &slot_b)] {
        assert_eq!(slot(&env, slot_id)["task"], format!("s/{id}"));
    }

    // While no dispatcher runs: b's runner ends (its supervisor records the exit), and b is
    // marked done by hand, so no recovery of the task will ever release its slot.
    gates.open("b");
    let b = env.task("s", "b");
    let runner_b = b["runner_id"]
        .as_str()
        .or(b["metadata"]["dispatcher"]["runner_id"].as_str())
        .expect("b's runner id")
        .to_string();
    let exit_b = env
        .state()
        .join("runners")
        .join(&runner_b)
        .join("exit.json");
    wait_for("b's runner to end", || exit_b.exists());
    let mut doc = env.read_taskset("s");
    for task in doc["tasks"].as_array_mut().unwrap() {
        if task["id"] == "b" {
            task["state"] = json!("done");
        }
    }
    env.write_taskset_raw("s", &serde_json::to_string_pretty(&doc).unwrap());

    let mut second = env.spawn_run(&["--until-idle"]);
    wait_for("b's stale slot to be freed", || {
        slot(&env, &slot_b)["state"] == "available"
    });
    // a's runner outlived the dispatcher and was adopted: its slot stays its own.
    let held = slot(&env, &slot_a);
    assert_eq!(held["state"], "allocated", "{held}");
    assert_eq!(held["task"], "s/a");
    let slot_b_path = PathBuf::from(slot(&env, &slot_b)["slot_path"].as_str().unwrap());
    assert_eq!(
        git(
            &slot_b_path,
            &["status", "--porcelain", "--untracked-files=all"]
        ),
        "",
        "the freed slot was not cleaned"
    );
    let recovered: Vec<String> = fs::read_dir(workspaces(&env).join("app/recovered"))
        .expect("b's leftovers saved under recovered/")
        .map(|e| fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    assert!(
        recovered.iter().any(|p| p.contains("+modified by b")),
        "{recovered:?}"
    );

    gates.open("a");
    let status = second.wait(DEADLINE);
    assert_eq!(status.code(), Some(0), "log:\n{}", second.stderr());
    assert_all_done(&env, "s");
    let states: Vec<(String, String)> = slots(&env)
        .iter()
        .map(|s| (s["slot_id"].to_string(), s["state"].to_string()))
        .collect();
    assert!(
        states.iter().all(|(_, state)| state == "\"available\""),
        "{states:?}"
    );
}

#[test]
fn a_task_of_an_unconfigured_repo_runs_in_the_scratch_dir() {
    let env = Env::new();
    configure_app(&env, 2, 1, &[]);
    env.taskset(
        "s",
        &[
            task("elsewhere", Some("no-such-repo")),
            task("in-app", Some("app")),
        ],
    );

    let (status, log) = env.run_until_idle();
    assert_eq!(status.code(), Some(0), "log:\n{log}");
    assert_all_done(&env, "s");
    assert_eq!(
        record(&env, "elsewhere", "pwd"),
        real(&env.state().join("scratch/s/elsewhere"))
    );
    let task = env.task("s", "elsewhere");
    assert_eq!(task["assigned_slot"], Value::Null);
    assert_eq!(task["reserved_branch"], Value::Null);
    assert_eq!(context(&env, "elsewhere")["slot_id"], Value::Null);
    // The configured repository's task, in the same run, did get a slot.
    assert_eq!(
        record(&env, "in-app", "pwd"),
        real(&workspaces(&env).join("app/slot1"))
    );
}

#[test]
fn a_runner_that_ended_while_the_dispatcher_was_down_gives_its_slot_back() {
    let env = Env::new();
    let gates = Gates::new(&env);
    configure_app(
        &env,
        2,
        1,
        &[("GATE_DIR", gates.dir()), ("DIRTY", "1".into())],
    );
    // a goes first; c waits for the only slot.
    env.taskset(
        "s",
        &[
            json!({"id": "a", "priority": 2, "metadata": {"repo_name": "app"}}),
            json!({"id": "c", "priority": 1, "metadata": {"repo_name": "app"}}),
        ],
    );
    gates.open("c");

    let mut first = env.spawn_run(&[]);
    wait_for("a to start", || started(&env, "a"));
    first.signal(libc::SIGKILL);
    first.wait(DEADLINE);
    assert!(!started(&env, "c"), "c started while a held the only slot");
    // a ends while no dispatcher runs; its supervisor records the exit.
    gates.open("a");
    let runner = env.task("s", "a")["metadata"]["dispatcher"]["runner_id"]
        .as_str()
        .expect("a's runner id")
        .to_string();
    let exit = env.state().join("runners").join(&runner).join("exit.json");
    wait_for("a's runner to end", || exit.exists());
    assert_eq!(slot(&env, "workspace-app-slot1")["task"], "s/a");

    // The restart finishes a from its exit record, then releases its slot: c gets it.
    let (status, log) = env.run_until_idle();
    assert_eq!(status.code(), Some(0), "log:\n{log}");
    assert_all_done(&env, "s");
    assert_eq!(record(&env, "a", "pwd"), record(&env, "c", "pwd"));
    assert_eq!(record(&env, "c", "status"), "", "c saw a's leftovers");
    let artifacts = env.task("s", "a")["artifacts"].clone();
    assert!(
        artifacts
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["type"] == "diff"),
        "a's patch artifact: {artifacts}"
    );
    assert_eq!(slot(&env, "workspace-app-slot1")["state"], "available");
}

#[test]
fn task_assigned_event_names_the_slot_and_branch() {
    // The dispatcher wrote `"assigned_slot": null` in every TaskAssigned event, slot or not,
    // where NecroCode's event names the slot and the branch the task was given.
    let env = Env::new();
    configure_app(&env, 2, 1, &[]);
    env.taskset("s", &[task("t1", Some("app")), task("t2", None)]);

    let (status, log) = env.run_until_idle();
    assert_eq!(status.code(), Some(0), "log:\n{log}");
    let assigned = |id: &str| {
        let events: Vec<Value> = env
            .events_of_type("s", "TaskAssigned")
            .into_iter()
            .filter(|e| e["task_id"] == id)
            .collect();
        assert_eq!(events.len(), 1, "{id}: {events:?}");
        events[0]["details"].clone()
    };
    let t1 = assigned("t1");
    assert_eq!(t1["assigned_slot"], "workspace-app-slot1", "{t1}");
    assert_eq!(t1["reserved_branch"], "task/s/t1", "{t1}");
    let t2 = assigned("t2");
    assert_eq!(t2["assigned_slot"], Value::Null, "{t2}");
}

//! Fault injection: the dispatcher is SIGKILLed at random moments, restarted over runners that
//! outlived it, fed files written behind its back or broken on purpose, has its registry made
//! read-only, and runs runners that ignore SIGTERM, fork, flood their log or look for secrets.
//! Through all of it no task is lost, no finished task runs again, and no attempt that is
//! still running is thrown away.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

// ----- helpers ------------------------------------------------------------------------------

/// `[agent_pools.<name>]` running the test runner `script` with `args`, `env` and `extra`
/// lines (such as `max_concurrency = 8`).
fn pool(name: &str, script: &str, args: &[&str], env: &[(&str, &str)], extra: &str) -> String {
    let program = if script.starts_with('/') {
        script.to_string()
    } else {
        runner(script)
    };
    let mut command = vec![toml_str(&program)];
    command.extend(args.iter().map(|a| toml_str(a)));
    let env: Vec<String> = env
        .iter()
        .map(|(k, v)| format!("{k} = {}", toml_str(v)))
        .collect();
    format!(
        "[agent_pools.{name}]\ncommand = [{}]\nenv = {{ {} }}\n{extra}\n\n",
        command.join(", "),
        env.join(", ")
    )
}

fn path_str(path: &Path) -> String {
    path.display().to_string()
}

/// The `(task_id, attempt)` of each line of a ledger written by `ledger.sh` or `gated.sh`.
fn ledger(path: &Path) -> Vec<(String, u32)> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| {
            let (id, attempt) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("malformed ledger line {line:?}"));
            let attempt = attempt
                .parse()
                .unwrap_or_else(|_| panic!("malformed ledger line {line:?}"));
            (id.to_string(), attempt)
        })
        .collect()
}

/// `metadata.dispatcher.attempts` of a task (0 when never claimed).
fn attempts(task: &Value) -> u64 {
    task["metadata"]["dispatcher"]["attempts"]
        .as_u64()
        .unwrap_or(0)
}

/// A marker unique to this test's temp dir: its last path component. It is in the argv of
/// every supervisor (the runner dir) and in every runner's environment (paths we pass).
fn marker(env: &Env) -> String {
    env.path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// The `owner` a dispatcher on this env's state dir writes into the tasks it claims:
/// `<hostname>:<canonical state dir>` (see `Core::new`).
fn owner_of(env: &Env) -> String {
    fs::create_dir_all(env.state()).unwrap();
    let host = fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string();
    format!(
        "{host}:{}",
        fs::canonicalize(env.state()).unwrap().display()
    )
}

fn assert_exit(status: std::process::ExitStatus, code: i32, log: &str) {
    assert_eq!(status.code(), Some(code), "dispatcher log:\n{log}");
    assert!(!log.contains("panicked"), "dispatcher panicked:\n{log}");
}

/// A tiny deterministic RNG (xorshift64): it only decides *when* faults are injected.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low + 1)
    }
}

/// SIGKILLs a background dispatcher and reaps it.
fn crash(run: &mut Run) {
    run.signal(libc::SIGKILL);
    let status = run.wait(DEADLINE);
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL),
        "the dispatcher ended on its own ({status:?}):\n{}",
        run.stderr()
    );
}

/// Reads the pid a gated runner recorded once it exists.
fn wait_pid(file: &Path) -> u32 {
    wait_for(&format!("{}", file.display()), || {
        fs::read_to_string(file).is_ok_and(|t| t.trim().parse::<u32>().is_ok())
    });
    fs::read_to_string(file).unwrap().trim().parse().unwrap()
}

/// Every regular file below `dir`.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    paths_under(dir)
        .into_iter()
        .filter(|p| p.symlink_metadata().is_ok_and(|m| m.is_file()))
        .collect()
}

// ----- 1. crash loop ------------------------------------------------------------------------

/// Sizes of the crash loop, chosen to stay well under a minute on a shared 2-core machine
/// (about 20 s there): 200 tasks of 0–300 ms on 8 runners, 12 SIGKILLs 100–1000 ms apart.
const CRASH_TASKS: usize = 200;
const CRASH_SPECS: usize = 4;
const CRASH_KILLS: usize = 12;
const CRASH_SEED: u64 = 0x9e37_79b9_7f4a_7c15;

#[test]
fn crash_loop_of_sigkills_loses_no_task_runs_none_twice_and_leaves_no_process() {
    let started = Instant::now();
    let env = Env::new();
    let marker = marker(&env);
    let ledger_path = env.path().join("ledger");
    env.config(
        "max_global_concurrency = 8\nheartbeat_timeout = \"30s\"",
        &format!(
            "[retry]\nmax_attempts = 50\ninitial_delay = \"100ms\"\nmax_delay = \"1s\"\n\n{}",
            pool(
                "default",
                "ledger.sh",
                &["{task_id}", &marker],
                &[("LEDGER", &path_str(&ledger_path))],
                "max_concurrency = 8",
            )
        ),
    );
    let per_spec = CRASH_TASKS / CRASH_SPECS;
    for s in 0..CRASH_SPECS {
        let tasks: Vec<Value> = (0..per_spec)
            .map(|i| json!({"id": format!("t{}", s * per_spec + i)}))
            .collect();
        env.taskset(&format!("crash-{s}"), &tasks);
    }

    let mut rng = XorShift(CRASH_SEED);
    for _ in 0..CRASH_KILLS {
        let mut run = env.spawn_run(&[]);
        // The fault being injected: a SIGKILL at a random moment of the run.
        std::thread::sleep(Duration::from_millis(rng.between(100, 1000)));
        crash(&mut run);
    }
    let (status, log) = env.run_until_idle();
    assert_exit(status, 0, &log);

    let lines = ledger(&ledger_path);
    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
    for (id, attempt) in &lines {
        assert!(
            seen.insert(id.clone(), *attempt).is_none(),
            "task {id} ran to the end more than once: {:?}",
            lines.iter().filter(|(i, _)| i == id).collect::<Vec<_>>()
        );
    }
    let mut adopted = 0;
    let mut lost = 0;
    for s in 0..CRASH_SPECS {
        let spec = format!("crash-{s}");
        adopted += env.events_of_type(&spec, "RunnerAdopted").len();
        lost += env.events_of_type(&spec, "RunnerLost").len();
        for task in env.read_taskset(&spec)["tasks"].as_array().unwrap() {
            let id = task["id"].as_str().unwrap();
            assert_eq!(task["state"], "done", "{spec}/{id}: {task}");
            let ran = seen
                .get(id)
                .unwrap_or_else(|| panic!("{spec}/{id} is done but never ran"));
            assert_eq!(
                u64::from(*ran),
                attempts(task),
                "{spec}/{id}: the attempt that ran is not the attempt the registry counts"
            );
        }
    }
    assert_eq!(seen.len(), CRASH_TASKS, "ledger: {lines:?}");
    let left = processes_mentioning(&marker);
    assert!(left.is_empty(), "processes left behind: {left:#?}");
    let supervisors: Vec<String> = processes_with("__supervise")
        .into_iter()
        .filter(|p| p.contains(&marker))
        .collect();
    assert!(supervisors.is_empty(), "supervisors left: {supervisors:#?}");
    eprintln!(
        "crash loop: {CRASH_KILLS} kills, {adopted} runners adopted, {lost} lost, {} retried, {:?}",
        lines.iter().filter(|(_, a)| *a > 1).count(),
        started.elapsed()
    );
}

// ----- 2–4. recovery at start-up ------------------------------------------------------------

/// A config whose pools run `gated.sh {task_id}` with `OUT_DIR` and `LEDGER` in the temp
/// dir: pool `default` exits 0, pool `failing` exits 3.
fn gated_config(env: &Env, retry: &str) -> (PathBuf, PathBuf) {
    let out = env.path().join("out");
    fs::create_dir_all(&out).unwrap();
    let ledger_path = env.path().join("ledger");
    let common = [
        ("OUT_DIR", path_str(&out)),
        ("LEDGER", path_str(&ledger_path)),
    ];
    let common: Vec<(&str, &str)> = common.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut failing = common.clone();
    failing.push(("EXIT", "3"));
    env.config(
        "",
        &format!(
            "[retry]\n{retry}\n\n{}{}",
            pool(
                "default",
                "gated.sh",
                &["{task_id}"],
                &common,
                "max_concurrency = 4"
            ),
            pool(
                "failing",
                "gated.sh",
                &["{task_id}"],
                &failing,
                "max_concurrency = 4"
            ),
        ),
    );
    (out, ledger_path)
}

#[test]
fn runner_outlives_a_sigkilled_dispatcher_and_is_adopted_and_finished_by_the_next() {
    let env = Env::new();
    let (out, ledger_path) = gated_config(&env, "max_attempts = 3\ninitial_delay = \"100ms\"");
    env.taskset("adopt", &[json!({"id": "long"})]);

    let mut first = env.spawn_run(&[]);
    let pid = wait_pid(&out.join("long.pid"));
    crash(&mut first);
    assert!(
        pid_alive(pid),
        "killing the dispatcher killed its runner:\n{}",
        first.stderr()
    );
    assert_eq!(env.state_of("adopt", "long"), "running");

    let mut second = env.spawn_run(&["--until-idle"]);
    wait_for("status to show the adopted runner", || {
        let report = status_json(&env);
        report["running"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["task_id"] == "long" && r["adopted"] == true)
    });
    let report = status_json(&env);
    let entry = &report["running"][0];
    assert_eq!(entry["attempt"], 1, "{entry}");
    wait_for("the adopted runner's pid and heartbeat in status", || {
        let r = &status_json(&env)["running"][0];
        r["pid"] == pid && !r["last_heartbeat"].is_null()
    });
    let adopted = env.events_of_type("adopt", "RunnerAdopted");
    assert_eq!(adopted.len(), 1, "{adopted:?}");
    assert_eq!(adopted[0]["details"]["attempt"], 1);

    fs::write(out.join("gate-long"), "").unwrap();
    let status = second.wait(DEADLINE);
    assert_exit(status, 0, &second.stderr());
    let task = env.task("adopt", "long");
    assert_eq!(task["state"], "done");
    assert_eq!(attempts(&task), 1);
    assert_eq!(ledger(&ledger_path), [("long".to_string(), 1)]);
    assert!(!pid_alive(pid));
    assert!(env.events_of_type("adopt", "RunnerLost").is_empty());
    assert_eq!(env.events_of_type("adopt", "TaskCompleted").len(), 1);
}

#[test]
fn exit_recorded_while_no_dispatcher_ran_finishes_the_task_as_exit_json_says() {
    let env = Env::new();
    let (out, ledger_path) = gated_config(&env, "max_attempts = 2\ninitial_delay = \"100ms\"");
    env.taskset(
        "offline",
        &[
            json!({"id": "ok", "required_skill": "default"}),
            json!({"id": "bad", "required_skill": "failing"}),
        ],
    );

    let mut first = env.spawn_run(&[]);
    wait_pid(&out.join("ok.pid"));
    wait_pid(&out.join("bad.pid"));
    crash(&mut first);
    let runner_dirs: Vec<PathBuf> = ["ok", "bad"]
        .iter()
        .map(|id| {
            let runner_id = env.task("offline", id)["runner_id"]
                .as_str()
                .unwrap()
                .to_string();
            env.state().join("runners").join(runner_id)
        })
        .collect();
    fs::write(out.join("gate-ok"), "").unwrap();
    fs::write(out.join("gate-bad"), "").unwrap();
    for dir in &runner_dirs {
        let exit = dir.join("exit.json");
        wait_for("the supervisor to write exit.json", || exit.exists());
    }
    let exit: Value =
        serde_json::from_str(&fs::read_to_string(runner_dirs[1].join("exit.json")).unwrap())
            .unwrap();
    assert_eq!(exit["exit_code"], 3, "{exit}");
    assert_eq!(env.state_of("offline", "ok"), "running");
    assert_eq!(env.state_of("offline", "bad"), "running");

    let (status, log) = env.run_until_idle();
    assert_exit(status, 3, &log);
    let ok = env.task("offline", "ok");
    assert_eq!(ok["state"], "done");
    assert_eq!(attempts(&ok), 1);
    // The failure recorded offline counts as attempt 1 and schedules a retry; the retry
    // (attempt 2) fails too and max_attempts = 2 ends it.
    let retry = env.events_of_type("offline", "TaskRetryScheduled");
    assert_eq!(retry.len(), 1, "{retry:?}");
    assert_eq!(retry[0]["task_id"], "bad");
    assert_eq!(retry[0]["details"]["attempt"], 1);
    assert_eq!(retry[0]["details"]["exit_code"], 3);
    let bad = env.task("offline", "bad");
    assert_eq!(bad["state"], "failed");
    assert_eq!(attempts(&bad), 2);
    assert_eq!(bad["metadata"]["dispatcher"]["last_exit_code"], 3);
    let mut ran = ledger(&ledger_path);
    ran.sort();
    assert_eq!(
        ran,
        [("bad".to_string(), 1), ("bad".into(), 2), ("ok".into(), 1)]
    );
    assert!(
        env.events_of_type("offline", "RunnerLost").is_empty(),
        "{:#?}\n{log}",
        env.events("offline")
    );
    assert!(env.events_of_type("offline", "RunnerAdopted").is_empty());
    for dir in &runner_dirs {
        assert!(
            !dir.exists(),
            "{} is left after its end was recorded",
            dir.display()
        );
    }
}

/// Regression: recovering one task at start-up writes the registry, which re-read the spec
/// and recovered the *other* tasks inside that write's refresh; the outer pass then recovered
/// them again from its stale list: a second `RunnerAdopted` (and a pool slot counted twice,
/// for good) for a live runner, a spurious `RunnerLost` for a finished one.
#[test]
fn recovering_one_task_at_start_up_does_not_recover_the_others_twice() {
    let env = Env::new();
    let (out, ledger_path) = gated_config(&env, "max_attempts = 3\ninitial_delay = \"100ms\"");
    env.taskset(
        "twice",
        &[
            json!({"id": "ended"}),
            json!({"id": "alive"}),
            json!({"id": "failed", "required_skill": "failing"}),
        ],
    );
    let mut first = env.spawn_run(&[]);
    for id in ["ended", "alive", "failed"] {
        wait_pid(&out.join(format!("{id}.pid")));
    }
    crash(&mut first);
    fs::write(out.join("gate-ended"), "").unwrap();
    fs::write(out.join("gate-failed"), "").unwrap();
    for id in ["ended", "failed"] {
        let runner_id = env.task("twice", id)["runner_id"]
            .as_str()
            .unwrap()
            .to_string();
        let exit = env
            .state()
            .join("runners")
            .join(runner_id)
            .join("exit.json");
        wait_for("exit.json", || exit.exists());
    }

    let mut second = env.spawn_run(&["--until-idle"]);
    wait_for("status to show the adopted runner", || {
        status_json(&env)["running"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["task_id"] == "alive" && r["adopted"] == true)
    });
    let report = status_json(&env);
    let default = report["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "default")
        .unwrap();
    assert_eq!(default["running"], 1, "one adopted runner: {report}");
    assert_eq!(env.events_of_type("twice", "RunnerAdopted").len(), 1);
    assert!(
        env.events_of_type("twice", "RunnerLost").is_empty(),
        "{:#?}",
        env.events_of_type("twice", "RunnerLost")
    );

    fs::write(out.join("gate-alive"), "").unwrap();
    let status = second.wait(DEADLINE);
    assert_exit(status, 3, &second.stderr());
    assert_eq!(env.state_of("twice", "ended"), "done");
    assert_eq!(env.state_of("twice", "alive"), "done");
    assert_eq!(env.state_of("twice", "failed"), "failed");
    let mut ran = ledger(&ledger_path);
    ran.sort();
    assert_eq!(
        ran,
        [
            ("alive".to_string(), 1),
            ("ended".into(), 1),
            ("failed".into(), 1),
            ("failed".into(), 2),
            ("failed".into(), 3)
        ]
    );
    assert_eq!(env.events_of_type("twice", "RunnerAdopted").len(), 1);
    assert!(env.events_of_type("twice", "RunnerLost").is_empty());
}

#[test]
fn task_running_under_this_state_dir_without_runner_is_lost_counted_and_retried_and_another_owners_is_left_alone(
) {
    let env = Env::new();
    let (out, ledger_path) = gated_config(&env, "max_attempts = 3\ninitial_delay = \"100ms\"");
    fs::write(out.join("gate-lost"), "").unwrap();
    fs::write(out.join("gate-theirs"), "").unwrap();
    fs::write(out.join("gate-foreign"), "").unwrap();
    let running = |owner: &str, runner_id: &str| {
        json!({"state": "running", "runner_id": runner_id, "metadata": {"dispatcher": {
            "attempts": 1, "pool": "default", "runner_id": runner_id, "owner": owner,
            "started_at": "2026-11-29T09:00:00.000000"}}})
    };
    let mine = owner_of(&env);
    let other = "otherhost:/srv/elsewhere/.dispatcher";
    let mut lost = running(&mine, "runner-default-0-1");
    lost["id"] = json!("lost");
    let mut theirs = running(other, "runner-default-0-2");
    theirs["id"] = json!("theirs");
    env.taskset("recover", &[lost, theirs]);
    let mut foreign = running(other, "runner-default-0-3");
    foreign["id"] = json!("foreign");
    env.taskset("foreign", &[foreign]);
    let foreign_bytes = fs::read(env.taskset_path("foreign")).unwrap();
    let theirs_before = env.task("recover", "theirs");

    let mut run = env.spawn_run(&[]);
    wait_for("the lost task to be retried to done", || {
        env.state_of("recover", "lost") == "done"
    });
    // Give the dispatcher a full scan after that write: the other owner's tasks are seen
    // on every pass and must be left alone on each.
    let version = env.read_taskset("recover")["version"].as_u64().unwrap();
    wait_for("a status snapshot that has read the final version", || {
        status_json(&env)["tasksets"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["spec"] == "recover" && t["version"].as_u64() == Some(version))
    });
    run.signal(libc::SIGTERM);
    let status = run.wait(DEADLINE);
    assert_exit(status, 130, &run.stderr());

    let events = env.events_of_type("recover", "RunnerLost");
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["task_id"], "lost");
    assert_eq!(events[0]["details"]["runner_id"], "runner-default-0-1");
    assert_eq!(events[0]["details"]["attempt"], 1);
    let retry = env.events_of_type("recover", "TaskRetryScheduled");
    assert_eq!(retry.len(), 1, "{retry:?}");
    assert_eq!(retry[0]["task_id"], "lost");
    let task = env.task("recover", "lost");
    assert_eq!(attempts(&task), 2, "the lost attempt counts: {task}");
    assert_eq!(ledger(&ledger_path), [("lost".to_string(), 2)]);

    assert_eq!(env.task("recover", "theirs"), theirs_before);
    assert_eq!(
        fs::read(env.taskset_path("foreign")).unwrap(),
        foreign_bytes
    );
    assert!(env.events("foreign").is_empty());
    assert!(!out.join("theirs.pid").exists() && !out.join("foreign.pid").exists());
}

// ----- 5. concurrent writers ----------------------------------------------------------------

/// NecroCode's write protocol, in Python: flock on `<registry>/locks/<spec>.lock`, re-read,
/// change, bump `version`, write `taskset.tmp`, fsync, `os.replace`. It adds `n` tasks in
/// batches of `batch`, spread over the given specs (every other task blocked on its spec's
/// task `hold-<k>`, so some are always not started yet), and after each batch changes the
/// priority of a random not-yet-started task, one write per change, `changes` times in all.
/// Prints the priority it set last per task.
const NECROCODE_WRITER: &str = r#"
import datetime, fcntl, json, os, random, sys
registry, n, batch, changes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
specs = sys.argv[5:]
rng = random.Random(20261129)

def update(spec, change):
    path = os.path.join(registry, "tasksets", spec, "taskset.json")
    lock_path = os.path.join(registry, "locks", spec + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with open(path) as f:
            doc = json.load(f)
        result = change(doc)
        doc["version"] += 1
        doc["updated_at"] = datetime.datetime.now().isoformat()
        tmp = os.path.join(os.path.dirname(path), "taskset.tmp")
        with open(tmp, "w") as f:
            json.dump(doc, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return result
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

def add(k, first, count):
    def change(doc):
        now = datetime.datetime.now().isoformat()
        for i in range(first, first + count):
            blocked = i % 2 == 1
            doc["tasks"].append({
                "id": "w%d" % i, "title": "written by python %d" % i, "description": "",
                "state": "blocked" if blocked else "ready",
                "dependencies": ["hold-%d" % k] if blocked else [], "required_skill": None,
                "priority": 0, "is_optional": False, "assigned_slot": None,
                "reserved_branch": None, "runner_id": None, "artifacts": [],
                "metadata": {}, "created_at": now, "updated_at": now})
    update(specs[k], change)

final = {}
def reprioritize(doc):
    fresh = [t for t in doc["tasks"]
             if t["id"].startswith("w") and t["state"] in ("ready", "blocked")
             and "dispatcher" not in t["metadata"]]
    task = rng.choice(fresh)
    task["priority"] = rng.randint(-1000, 1000)
    final[task["id"]] = task["priority"]

batches = n // batch
for b in range(batches):
    add(b % len(specs), b * batch, batch)
    for _ in range(changes // batches):
        update(specs[rng.randrange(min(b + 1, len(specs)))], reprioritize)
print(json.dumps(final))
"#;

#[test]
fn necrocode_writer_adding_tasks_and_priorities_while_dispatcher_runs_loses_nothing_and_all_finish()
{
    // 500 tasks over 4 tasksets rather than one: every write rewrites a whole taskset, and
    // a 500-task file makes the (debug-built) dispatcher's ~1000 writes alone take a minute
    // on a busy 2-core machine. Each file still sees both writers all the time.
    const TASKS: usize = 500;
    const BATCH: usize = 25;
    const CHANGES: usize = 1000;
    const SPECS: usize = 4;
    let env = Env::new();
    let out = env.path().join("out");
    fs::create_dir_all(&out).unwrap();
    let ledger_path = env.path().join("ledger");
    let ledger_env = [
        ("LEDGER", path_str(&ledger_path)),
        ("OUT_DIR", path_str(&out)),
    ];
    let ledger_env: Vec<(&str, &str)> = ledger_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.config(
        "max_global_concurrency = 12",
        &format!(
            "{}{}",
            pool(
                "default",
                "ledger.sh",
                &["{task_id}"],
                &ledger_env,
                "max_concurrency = 8"
            ),
            pool(
                "hold",
                "gated.sh",
                &["{task_id}"],
                &ledger_env,
                "max_concurrency = 4"
            ),
        ),
    );
    let specs: Vec<String> = (0..SPECS).map(|k| format!("busy-{k}")).collect();
    for (k, spec) in specs.iter().enumerate() {
        env.taskset(
            spec,
            &[json!({"id": format!("hold-{k}"), "required_skill": "hold"})],
        );
    }
    fs::create_dir_all(env.registry().join("locks")).unwrap();

    let mut run = env.spawn_run(&[]);
    for k in 0..SPECS {
        wait_pid(&out.join(format!("hold-{k}.pid")));
    }
    let writing = Instant::now();
    let writer = Command::new("python3")
        .arg("-c")
        .arg(NECROCODE_WRITER)
        .arg(env.registry())
        .args([TASKS, BATCH, CHANGES].map(|n| n.to_string()))
        .args(&specs)
        .stderr(Stdio::inherit())
        .output()
        .expect("run python3");
    assert!(writer.status.success(), "the python writer failed");
    let final_priority: BTreeMap<String, i64> =
        serde_json::from_slice(&writer.stdout).expect("writer prints its priorities");
    let wrote = writing.elapsed();
    for k in 0..SPECS {
        fs::write(out.join(format!("gate-hold-{k}")), "").unwrap();
    }
    // Parsing the tasksets costs: look at them only once every runner has reported.
    let total = TASKS + SPECS;
    wait_for("every task to be done", || {
        ledger(&ledger_path).len() >= total
            && specs.iter().all(|spec| {
                env.read_taskset(spec)["tasks"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|t| t["state"] == "done")
            })
    });
    eprintln!(
        "python writer: {wrote:?}; all done {:?} later",
        writing.elapsed() - wrote
    );
    run.signal(libc::SIGTERM);
    let status = run.wait(DEADLINE);
    assert_exit(status, 130, &run.stderr());

    let mut tasks: BTreeMap<String, Value> = BTreeMap::new();
    for spec in &specs {
        for task in env.read_taskset(spec)["tasks"].as_array().unwrap() {
            let id = task["id"].as_str().unwrap().to_string();
            assert!(
                tasks.insert(id.clone(), task.clone()).is_none(),
                "{id} twice"
            );
        }
    }
    assert_eq!(tasks.len(), total);
    for i in 0..TASKS {
        let task = tasks
            .get(&format!("w{i}"))
            .unwrap_or_else(|| panic!("task w{i} was lost"));
        assert_eq!(task["state"], "done", "w{i}");
    }
    assert!(!final_priority.is_empty());
    for (id, priority) in &final_priority {
        assert_eq!(
            tasks[id]["priority"], *priority,
            "priority of {id} was lost"
        );
    }
    let mut ran: BTreeMap<String, u32> = BTreeMap::new();
    for (id, attempt) in ledger(&ledger_path) {
        assert!(ran.insert(id.clone(), attempt).is_none(), "{id} ran twice");
    }
    assert_eq!(ran.len(), total);
}

// ----- 6. bad input -------------------------------------------------------------------------

/// A NecroCode-shaped taskset document with one task whose `field` is the raw JSON `raw`.
fn taskset_with_raw_field(spec: &str, field: &str, raw: &str) -> String {
    format!(
        "{{\n  \"spec_name\": \"{spec}\",\n  \"version\": 1,\n  \"metadata\": {{}},\n  \"tasks\": [\n    {{\n      \"id\": \"1\",\n      \"title\": \"one\",\n      \"state\": \"ready\",\n      \"{field}\": {raw}\n    }}\n  ]\n}}\n"
    )
}

/// The 1-based line of `needle` in `text`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in {text}"))
        + 1
}

#[test]
fn wrong_types_nan_and_out_of_range_priority_are_reported_by_file_and_line_left_byte_identical_and_others_run(
) {
    let env = Env::new();
    let ledger_path = env.path().join("ledger");
    env.config(
        "",
        &pool(
            "default",
            "ledger.sh",
            &["{task_id}"],
            &[("LEDGER", &path_str(&ledger_path))],
            "max_concurrency = 4",
        ),
    );
    env.taskset("good", &[json!({"id": "a"}), json!({"id": "b"})]);
    let nan = Command::new("python3")
        .args([
            "-c",
            "import json; print(json.dumps({'spec_name': 'nan', 'version': 1, 'metadata': {}, \
             'tasks': [{'id': '1', 'title': 'one', 'state': 'ready', 'priority': float('nan')}]}, indent=2))",
        ])
        .output()
        .expect("python3");
    let nan = String::from_utf8(nan.stdout).unwrap();
    assert!(nan.contains("NaN"), "{nan}");
    // (spec, file, the key on the offending line, the offending value as written and as the
    // error names it; for NaN, which is not JSON at all, it can only say where)
    let cases = [
        (
            "prio-string",
            taskset_with_raw_field("prio-string", "priority", "\"high\""),
            "priority",
            "\"high\"",
            Some("\"high\""),
        ),
        (
            "deps-string",
            taskset_with_raw_field("deps-string", "dependencies", "\"1\""),
            "dependencies",
            "\"1\"",
            Some("string \"1\", expected a sequence"),
        ),
        (
            "prio-huge",
            taskset_with_raw_field("prio-huge", "priority", "1e30"),
            "priority",
            "1e30",
            Some("1e+30"),
        ),
        ("nan", nan, "priority", "NaN", None),
    ];
    for (spec, text, ..) in &cases {
        env.write_taskset_raw(spec, text);
    }

    let (status, log) = env.run_until_idle();

    assert_exit(status, 4, &log);
    assert_eq!(env.state_of("good", "a"), "done");
    assert_eq!(env.state_of("good", "b"), "done");
    let report = status_json(&env);
    for (spec, text, key, token, named) in &cases {
        let path = env.shown(&format!("registry/tasksets/{spec}/taskset.json"));
        let line = format!("line {}", line_of(text, &format!("\"{key}\": {token}")));
        assert_eq!(
            fs::read_to_string(env.taskset_path(spec)).unwrap(),
            *text,
            "{spec}: the bad file changed"
        );
        let logged = log
            .lines()
            .find(|l| l.contains(&path))
            .unwrap_or_else(|| panic!("stderr does not name {path}:\n{log}"));
        assert!(logged.contains(&line), "{spec}: {logged:?} lacks {line:?}");
        if let Some(named) = named {
            assert!(logged.contains(named), "{spec}: {logged:?} lacks {named}");
        }
        let entry = report["tasksets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["spec"] == *spec)
            .unwrap_or_else(|| panic!("{spec} missing from status"));
        let error = entry["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(&path) && error.contains(&line),
            "{spec}: {error:?}"
        );
    }
    let mut ran: Vec<String> = ledger(&ledger_path).into_iter().map(|(id, _)| id).collect();
    ran.sort();
    assert_eq!(ran, ["a", "b"]);
}

#[test]
fn unknown_dependency_never_runs_is_named_in_blocked_forever_and_others_run() {
    let env = Env::new();
    let ledger_path = env.path().join("ledger");
    env.config(
        "",
        &pool(
            "default",
            "ledger.sh",
            &["{task_id}"],
            &[("LEDGER", &path_str(&ledger_path))],
            "",
        ),
    );
    env.taskset(
        "deps",
        &[
            json!({"id": "free"}),
            json!({"id": "orphan", "state": "blocked", "dependencies": ["free", "ghost"]}),
        ],
    );

    let (status, log) = env.run_until_idle();

    assert_exit(status, 4, &log);
    assert_eq!(env.state_of("deps", "free"), "done");
    assert_eq!(env.state_of("deps", "orphan"), "blocked");
    assert_eq!(ledger(&ledger_path), [("free".to_string(), 1)]);
    let report = status_json(&env);
    let stuck = report["blocked_forever"].as_array().unwrap();
    let entry = stuck
        .iter()
        .find(|s| s["task_id"] == "orphan")
        .unwrap_or_else(|| panic!("orphan not in blocked_forever: {report}"));
    let reason = entry["reason"].as_str().unwrap();
    assert!(reason.contains("ghost"), "{reason}");
}

#[test]
fn one_megabyte_title_runs_end_to_end() {
    let env = Env::new();
    let out = env.path().join("out");
    fs::create_dir_all(&out).unwrap();
    // The runner keeps the context file and $TASK_CONTEXT, nothing else.
    let script = "cp \"$TASK_CONTEXT_FILE\" \"$OUT_DIR/context.json\"; \
                  printf %s \"$TASK_CONTEXT\" > \"$OUT_DIR/context.env\"";
    env.config(
        "",
        &pool(
            "default",
            "/bin/sh",
            &["-c", script],
            &[("OUT_DIR", &path_str(&out))],
            "",
        ),
    );
    let title: String = "0123456789abcdef".repeat(65_536); // 1 MiB
    let description = "Ω".repeat(1000);
    env.taskset(
        "big",
        &[json!({"id": "huge", "title": title, "description": description})],
    );

    let (status, log) = env.run_until_idle();

    assert_exit(status, 0, &log);
    let task = env.task("big", "huge");
    assert_eq!(task["state"], "done", "{}", task["metadata"]);
    assert_eq!(task["title"].as_str().unwrap(), title);
    assert_eq!(attempts(&task), 1);
    let context: Value =
        serde_json::from_str(&fs::read_to_string(out.join("context.json")).unwrap()).unwrap();
    assert_eq!(context["task_title"].as_str().unwrap(), title);
    assert_eq!(context["task_description"].as_str().unwrap(), description);
    // One environment string is at most 128 KiB (MAX_ARG_STRLEN): $TASK_CONTEXT may be cut
    // down, but it is JSON that names the task and where the whole document is.
    let in_env: Value = serde_json::from_str(&fs::read_to_string(out.join("context.env")).unwrap())
        .expect("TASK_CONTEXT is JSON");
    assert_eq!(in_env["task_id"], "huge", "{in_env}");
    assert_eq!(in_env["spec_name"], "big", "{in_env}");
}

#[test]
fn unicode_spec_ids_titles_and_descriptions_run_to_done_and_round_trip_as_ascii_escapes() {
    let env = Env::new();
    let ledger_path = env.path().join("ledger");
    env.config(
        "",
        &pool(
            "default",
            "ledger.sh",
            &["{task_id}"],
            &[("LEDGER", &path_str(&ledger_path))],
            "",
        ),
    );
    let spec = "ünï-コード-🚀";
    let tasks = [
        (
            "タスク-1",
            "標題 🚀 émoji ✓",
            "説明: 漢字かなカナ 🦀🔥 e\u{301} ﷽",
        ),
        ("✓-2", "第二 👩‍💻", "依存 → タスク-1; 𝄞 music"),
    ];
    env.taskset(
        spec,
        &[
            json!({"id": tasks[0].0, "title": tasks[0].1, "description": tasks[0].2}),
            json!({"id": tasks[1].0, "title": tasks[1].1, "description": tasks[1].2,
                   "state": "blocked", "dependencies": [tasks[0].0]}),
        ],
    );

    let (status, log) = env.run_until_idle();

    assert_exit(status, 0, &log);
    let bytes = fs::read(env.taskset_path(spec)).unwrap();
    assert!(
        bytes.is_ascii(),
        "the taskset is written with \\uXXXX escapes"
    );
    let text = String::from_utf8(bytes).unwrap();
    assert!(text.contains("\\u30bf\\u30b9\\u30af-1"), "{text}"); // タスク
    assert!(text.contains("\\ud83d\\ude80"), "{text}"); // 🚀 as a surrogate pair
    let doc: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(doc["spec_name"], spec);
    for (task, (id, title, description)) in doc["tasks"].as_array().unwrap().iter().zip(tasks) {
        assert_eq!(task["id"], id);
        assert_eq!(task["title"], title);
        assert_eq!(task["description"], description);
        assert_eq!(task["state"], "done");
    }
    assert_eq!(
        ledger(&ledger_path),
        [(tasks[0].0.to_string(), 1), (tasks[1].0.to_string(), 1)]
    );
    for line in fs::read_to_string(
        env.registry()
            .join("events")
            .join(spec)
            .join("events.jsonl"),
    )
    .unwrap()
    .lines()
    {
        assert!(line.is_ascii(), "event line not escaped: {line}");
    }
}

#[test]
fn extreme_priorities_are_kept_and_run_in_order() {
    let env = Env::new();
    let ledger_path = env.path().join("ledger");
    env.config(
        "max_global_concurrency = 1",
        &pool(
            "default",
            "ledger.sh",
            &["{task_id}"],
            &[("LEDGER", &path_str(&ledger_path))],
            "max_concurrency = 1",
        ),
    );
    let priorities = [
        ("min", i64::MIN),
        ("zero", 0),
        ("max", i64::MAX),
        ("neg", -5),
        ("pos", 5),
    ];
    let tasks: Vec<Value> = priorities
        .iter()
        .map(|(id, p)| json!({"id": id, "priority": p}))
        .collect();
    env.taskset("prio", &tasks);

    let (status, log) = env.run_until_idle();

    assert_exit(status, 0, &log);
    let order: Vec<String> = ledger(&ledger_path).into_iter().map(|(id, _)| id).collect();
    assert_eq!(order, ["max", "pos", "zero", "neg", "min"]);
    for (id, priority) in priorities {
        let task = env.task("prio", id);
        assert_eq!(task["priority"].as_i64(), Some(priority), "{id}");
        assert_eq!(task["state"], "done");
    }
    let text = fs::read_to_string(env.taskset_path("prio")).unwrap();
    assert!(
        text.contains("\"priority\": -9223372036854775808"),
        "{text}"
    );
    assert!(text.contains("\"priority\": 9223372036854775807"), "{text}");
}

// ----- 7. environment faults ----------------------------------------------------------------

fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn registry_made_read_only_mid_run_keeps_tasks_ready_reports_the_error_and_recovers() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if root && Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("SKIPPED: running as root and setpriv(1) is missing, so permission bits cannot be made to matter");
        return;
    }
    let env = Env::new();
    let (out, ledger_path) = gated_config(&env, "max_attempts = 3\ninitial_delay = \"100ms\"");
    env.taskset("ro", &[json!({"id": "a"})]);
    fs::create_dir_all(env.registry().join("locks")).unwrap();
    if root {
        // As root, permission bits do not stop writes: run as `nobody` over files it owns.
        let chown = Command::new("chown")
            .args(["-R", "65534:65534"])
            .arg(env.path())
            .status()
            .unwrap();
        assert!(chown.success());
    }
    let log = env.path().join("dispatcher.log");
    let mut command = if root {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
            BIN,
        ]);
        c
    } else {
        Command::new(BIN)
    };
    let child = command
        .args(["run", "--until-idle"])
        .current_dir(env.path())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut run = Run {
        child,
        log: log.clone(),
    };
    wait_pid(&out.join("a.pid"));

    let taskset_dir = env.taskset_path("ro").parent().unwrap().to_path_buf();
    let locks_dir = env.registry().join("locks");
    set_mode(&taskset_dir, 0o555);
    set_mode(&locks_dir, 0o555);
    // A new task arrives (written as its owner would: temp file, rename).
    let mut doc = env.read_taskset("ro");
    doc["version"] = json!(doc["version"].as_u64().unwrap() + 1);
    let mut b = doc["tasks"][0].clone();
    b["id"] = json!("b");
    b["title"] = json!("b");
    b["state"] = json!("ready");
    b["runner_id"] = Value::Null;
    b["metadata"] = json!({});
    doc["tasks"].as_array_mut().unwrap().push(b);
    let tmp = taskset_dir.join("incoming.tmp");
    fs::write(&tmp, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    if root {
        std::os::unix::fs::chown(&tmp, Some(65534), Some(65534)).unwrap();
    }
    fs::rename(&tmp, env.taskset_path("ro")).unwrap();
    fs::write(out.join("gate-b"), "").unwrap();

    wait_for("the failed claim of b in stderr", || {
        run.stderr().contains("cannot claim tasks of ro")
    });
    assert!(
        run.stderr().contains("Permission denied"),
        "{}",
        run.stderr()
    );
    let b = env.task("ro", "b");
    assert_eq!(b["state"], "ready");
    assert_eq!(attempts(&b), 0);
    assert!(!out.join("b.pid").exists(), "b started without a claim");

    // a's runner ends while the registry is read-only: its end cannot be written yet.
    fs::write(out.join("gate-a"), "").unwrap();
    wait_for("the failed write of a's end in stderr", || {
        run.stderr().contains("cannot record the end of ro/a")
    });
    assert_eq!(env.state_of("ro", "a"), "running");

    set_mode(&taskset_dir, 0o755);
    set_mode(&locks_dir, 0o755);
    let status = run.wait(DEADLINE);
    assert_exit(status, 0, &run.stderr());
    for id in ["a", "b"] {
        let task = env.task("ro", id);
        assert_eq!(task["state"], "done", "{id}");
        assert_eq!(attempts(&task), 1, "{id}");
    }
    let mut ran = ledger(&ledger_path);
    ran.sort();
    assert_eq!(ran, [("a".to_string(), 1), ("b".into(), 1)]);
    assert_eq!(env.events_of_type("ro", "TaskCompleted").len(), 2);
}

#[test]
fn runner_ignoring_sigterm_is_killed_after_the_grace_period_on_drain_and_its_task_is_ready() {
    let env = Env::new();
    let out = env.path().join("out");
    fs::create_dir_all(&out).unwrap();
    env.config(
        "graceful_shutdown_timeout = \"0s\"\nstop_grace_period = \"1s\"",
        &pool(
            "default",
            "stubborn.sh",
            &[],
            &[("OUT_DIR", &path_str(&out))],
            "",
        ),
    );
    env.taskset("drain", &[json!({"id": "stubborn"})]);

    let mut run = env.spawn_run(&[]);
    let pid = wait_pid(&out.join("pid"));
    let interrupted = Instant::now();
    run.signal(libc::SIGINT);
    let status = run.wait(DEADLINE);
    let took = interrupted.elapsed();

    assert_exit(status, 130, &run.stderr());
    assert!(took >= Duration::from_secs(1), "stopped after {took:?}");
    assert!(!pid_alive(pid), "the runner survived the drain");
    let task = env.task("drain", "stubborn");
    assert_eq!(task["state"], "ready");
    assert_eq!(attempts(&task), 0, "an interrupted attempt does not count");
    assert_eq!(env.events_of_type("drain", "TaskInterrupted").len(), 1);
    let attempt_log =
        fs::read_to_string(env.state().join("logs/drain/stubborn/attempt-1.log")).unwrap();
    assert!(
        attempt_log.contains("ignored SIGTERM; sending SIGKILL"),
        "{attempt_log}"
    );
    let left = processes_mentioning(&marker(&env));
    assert!(left.is_empty(), "{left:#?}");
}

#[test]
fn background_children_of_a_runner_that_exits_are_killed_with_its_group() {
    let env = Env::new();
    let out = env.path().join("out");
    fs::create_dir_all(&out).unwrap();
    env.config(
        "",
        &pool(
            "default",
            "forker.sh",
            &[],
            &[("OUT_DIR", &path_str(&out))],
            "",
        ),
    );
    env.taskset("forks", &[json!({"id": "parent"})]);

    let (status, log) = env.run_until_idle();

    assert_exit(status, 0, &log);
    assert_eq!(env.state_of("forks", "parent"), "done");
    let children: Vec<u32> = fs::read_to_string(out.join("children"))
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(children.len(), 2);
    for pid in children {
        assert!(!pid_alive(pid), "background child {pid} outlived its task");
    }
    let left = processes_mentioning(&marker(&env));
    assert!(left.is_empty(), "{left:#?}");
}

#[test]
fn gigabyte_of_runner_output_is_capped_at_max_log_bytes_with_a_marker_and_the_task_finishes() {
    const CAP: u64 = 1_000_000; // "1MB"
    let env = Env::new();
    env.config(
        "max_log_bytes = \"1MB\"",
        &pool("default", "flood.sh", &[], &[], ""),
    );
    env.taskset("flood", &[json!({"id": "gigabyte"})]);

    let (status, log) = env.run_until_idle();

    assert_exit(status, 0, &log);
    assert_eq!(env.state_of("flood", "gigabyte"), "done");
    let path = env.state().join("logs/flood/gigabyte/attempt-1.log");
    let size = fs::metadata(&path).unwrap().len();
    let text = fs::read(&path).unwrap();
    let tail = String::from_utf8_lossy(&text[text.len().saturating_sub(200)..]).into_owned();
    assert!(
        size <= CAP + 256,
        "the log is {size} bytes, over max_log_bytes ({CAP}) plus a marker line"
    );
    assert!(
        String::from_utf8_lossy(&text).contains("max_log_bytes"),
        "no truncation marker; tail: {tail}"
    );
}

// ----- 8. security --------------------------------------------------------------------------

#[test]
fn env_file_secret_reaches_only_the_runner_and_inherit_env_false_passes_only_the_allowlist() {
    const SECRET: &str = "hunter2-secret";
    let env = Env::new();
    let out = env.path().join("out");
    fs::create_dir_all(&out).unwrap();
    fs::write(
        env.path().join("secrets.env"),
        format!("# runner credentials\nAPI_TOKEN={SECRET}\n"),
    )
    .unwrap();
    env.config(
        "",
        &pool(
            "default",
            "envdump.sh",
            &["{task_id}"],
            &[("OUT_DIR", &path_str(&out))],
            "inherit_env = false\npass_env = [\"ALLOWED_VAR\"]\nenv_file = \"secrets.env\"",
        ),
    );
    env.taskset("sec", &[json!({"id": "agent"})]);

    let log = env.path().join("dispatcher.log");
    let child = env
        .command(&["run", "--until-idle"])
        .env("ALLOWED_VAR", "allowed-value")
        .env("FORBIDDEN_VAR", "forbidden-value")
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut run = Run { child, log };
    let dump = out.join("agent.env");
    wait_for("the runner's environment dump", || {
        fs::read_to_string(&dump).is_ok_and(|t| t.contains("PATH="))
    });
    // While the runner runs its files (runner.json, context.json, …) exist: check them now.
    let assert_no_secret_in = |what: &str, text: &str| {
        assert!(!text.contains(SECRET), "the secret leaked into {what}");
    };
    let check_dirs = || {
        for dir in [env.state(), env.registry()] {
            for file in files_under(&dir) {
                let bytes = fs::read(&file).unwrap_or_default();
                assert_no_secret_in(
                    &file.display().to_string(),
                    &String::from_utf8_lossy(&bytes),
                );
            }
        }
    };
    wait_for("the running snapshot", || {
        status_json(&env)["running"]
            .as_array()
            .is_some_and(|r| !r.is_empty())
    });
    check_dirs();
    let status_out = env.output(&["status", "--json"]);
    assert_no_secret_in(
        "status --json",
        &String::from_utf8_lossy(&status_out.stdout),
    );
    assert_no_secret_in(
        "status stderr",
        &String::from_utf8_lossy(&status_out.stderr),
    );
    let human = env.output(&["status"]);
    assert_no_secret_in("status", &String::from_utf8_lossy(&human.stdout));

    fs::write(out.join("gate-agent"), "").unwrap();
    let status = run.wait(DEADLINE);
    assert_exit(status, 0, &run.stderr());
    check_dirs();
    assert_no_secret_in("the dispatcher's stderr", &run.stderr());

    let vars: BTreeMap<String, String> = fs::read_to_string(&dump)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(
        vars.get("ALLOWED_VAR").map(String::as_str),
        Some("allowed-value")
    );
    assert_eq!(vars.get("API_TOKEN").map(String::as_str), Some(SECRET));
    assert!(vars.contains_key("PATH"));
    assert!(!vars.contains_key("FORBIDDEN_VAR"), "{vars:?}");
    assert!(!vars.contains_key("RUST_LOG"), "not in pass_env: {vars:?}");
    let context = vars.get("TASK_CONTEXT").expect("TASK_CONTEXT");
    assert_no_secret_in("TASK_CONTEXT", context);
}

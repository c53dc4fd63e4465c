//! Scheduling end to end: policy order, concurrency caps, skill routing, dependencies,
//! retries with backoff, heartbeat and execution timeouts, the drain on SIGINT/SIGTERM, the
//! one-dispatcher-per-state-dir lock, `status --json` while running, and the exit codes.
//!
//! Runners are the shell scripts under `tests/runners/`. Most record "start"/"end" lines with
//! nanosecond timestamps in a ledger file, so order and overlap are read from what really
//! ran, not inferred from timing. Runners that must outlive a check wait for a gate file
//! that the test creates, instead of sleeping for a guessed time.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use support::*;

// ----- helpers -------------------------------------------------------------------------------

/// A marker unique to one test (its temp dir), passed as a runner argument so that the
/// process table can be searched for exactly this test's runners.
fn marker(env: &Env) -> String {
    env.path().join("marker").display().to_string()
}

fn pids(env: &Env) -> Vec<u32> {
    fs::read_to_string(env.path().join("out/pids"))
        .unwrap_or_default()
        .lines()
        .map(|l| l.trim().parse().expect("pid line"))
        .collect()
}

/// Whether `pid` is a live (not zombie, not reaped) process: a zombie's cmdline is empty.
fn live(pid: u32) -> bool {
    fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty())
}

fn start_order(marks: &[Mark]) -> Vec<String> {
    marks
        .iter()
        .filter(|m| m.start)
        .map(|m| m.task.clone())
        .collect()
}

/// The most runs that were between their "start" and "end" at the same moment, over the
/// marks `keep` selects. A start and an end at the same nanosecond count as overlapping, so
/// the measure errs on the high side.
fn max_overlap(marks: &[Mark], keep: impl Fn(&Mark) -> bool) -> usize {
    max_concurrent(marks.iter().filter(|m| keep(m)).map(|m| (m.ns, m.start)))
}

/// `dispatcher.toml` with `dispatcher` settings, the `retry` section text (or nothing), and
/// one local pool `local` of `max` runners running `command` with `vars` and `extra` lines,
/// every task routed to it.
fn local_config(
    env: &Env,
    dispatcher: &str,
    retry: &str,
    max: usize,
    command: &[String],
    vars: &[(&str, String)],
    extra: &str,
) {
    env.config(
        dispatcher,
        &format!("{retry}{}", only_pool("local", max, command, vars, extra)),
    );
}

fn meta(env: &Env, spec: &str, id: &str) -> Value {
    env.task(spec, id)["metadata"]["dispatcher"].clone()
}

fn timestamp(event: &Value) -> chrono::NaiveDateTime {
    let text = event["timestamp"].as_str().expect("event timestamp");
    chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f")
        .unwrap_or_else(|e| panic!("timestamp {text:?}: {e}"))
}

fn events_for(env: &Env, spec: &str, event_type: &str, task: &str) -> Vec<Value> {
    env.events_of_type(spec, event_type)
        .into_iter()
        .filter(|e| e["task_id"] == task)
        .collect()
}

/// Tasks that all become ready at once, with distinct ready times (`updated_at`) and
/// priorities chosen so that the priority and fifo orders differ.
fn ordering_tasks() -> Vec<Value> {
    let at = |s: u32| format!("2026-11-29T09:00:{s:02}.000000");
    [
        ("low", 1, 0),
        ("neg", -3, 0),
        ("high", 9, 5),
        ("mid-late", 5, 4),
        ("mid-early", 5, 2),
        ("tie-b", 5, 3),
        ("tie-a", 5, 3),
    ]
    .iter()
    .map(
        |&(id, priority, second)| json!({"id": id, "priority": priority, "updated_at": at(second)}),
    )
    .collect()
}

fn one_slot_ledger_config(env: &Env, policy: &str) -> PathBuf {
    let ledger = env.path().join("ledger");
    env.config(
        &format!("scheduling_policy = \"{policy}\""),
        &only_pool(
            "solo",
            1,
            &cmd("record.sh", &["{task_id}", "solo"]),
            &[
                ("LEDGER", ledger.display().to_string()),
                ("SLEEP", "0".into()),
            ],
            "",
        ),
    );
    ledger
}

// ----- order ---------------------------------------------------------------------------------

#[test]
fn priority_policy_starts_by_priority_then_ready_time_then_id() {
    let env = Env::new();
    let ledger_path = one_slot_ledger_config(&env, "priority");
    env.taskset("s", &ordering_tasks());
    let (status, log) = env.run_until_idle();
    assert_eq!(status.code(), Some(0), "log:\n{log}");
    // One slot, so each start waits for the previous end: the ledger is the queue order.
    assert_eq!(
        start_order(&ledger(&ledger_path)),
        [
            "high",
            "mid-early",
            "tie-a",
            "tie-b",
            "mid-late",
            "low",
            "neg"
        ]
    );
}

#[test]
fn fifo_policy_starts_by_ready_time_regardless_of_priority() {
    let env = Env::new();
    let ledger_path = one_slot_ledger_config(&env, "fifo");
    env.taskset("s", &ordering_tasks());
    let (status, log) = env.run_until_idle();
    assert_eq!(status.code(), Some(0), "log:\n{log}");
    assert_eq!(
        start_order(&ledger(&ledger_path)),
        [
            "low",
            "neg",
            "mid-early",
            "tie-a",
            "tie-b",
            "mid-late",
            "high"
        ]
    );
}

// ----- caps and routing ----------------------------------------------------------------------

#[test]
fn pool_and_global_caps_are_never_exceeded() {
    let env = Env::new();
    let ledger_path = env.path().join("ledger");
    let env_vars = [
        ("LEDGER", ledger_path.display().to_string()),
        ("SLEEP", "0.3".into()),
    ];
    // Pools allow 2 + 3 = 5 at once; the global cap of 4 must bind first.
    env.config(
        "max_global_concurrency = 4",
        &format!(
            "{}{}[skill_mapping]\nx = [\"a\"]\ny = [\"b\"]\n",
            pool(
                "a",
                2,
                &cmd("record.sh", &["{task_id}", "a"]),
                &env_vars,
                ""
            ),
            pool(
                "b",
                3,
                &cmd("record.sh", &["{task_id}", "b"]),
                &env_vars,
                ""
            ),
        ),
    );
    let tasks: Vec<Value> = (0..12)
        .map(|i| json!({"id": format!("t{i:02}"), "required_skill": if i % 2 == 0 { "x" } else { "y" }}))
        .collect();
    env.taskset("s", &tasks);
    let (status, log) = env.run_until_idle();
    assert_eq!(status.code(), Some(0), "log:\n{log}");

    let marks = ledger(&ledger_path);
    assert_eq!(marks.iter().filter(|m| m.start).count(), 12, "{marks:?}");
    let in_a = max_overlap(&marks, |m| m.tag == "a");
    let in_b = max_overlap(&marks, |m| m.tag == "b");
    let global = max_overlap(&marks, |_| true);
    assert!(in_a <= 2, "pool a ran {in_a} at once: {marks:?}");
    assert!(in_b <= 3, "pool b ran {in_b} at once: {marks:?}");
    assert!(global <= 4, "{global} ran at once, cap 4: {marks:?}");
    assert!(global >= 2, "runners never overlapped: {marks:?}");
}

#[test]
fn skills_route_to_mapped_named_and_default_pools() {
    let env = Env::new();
    let ledger_path = env.path().join("ledger");
    let vars = [
        ("LEDGER", ledger_path.display().to_string()),
        ("SLEEP", "0".into()),
    ];
    let pools: String = ["fe", "be", "ops"]
        .iter()
        .map(|name| pool(name, 2, &cmd("record.sh", &["{task_id}", name]), &vars, ""))
        .collect();
    env.config(
        "",
        &format!("{pools}[skill_mapping]\nweb = [\"fe\"]\ndefault = [\"ops\"]\n"),
    );
    env.taskset(
        "s",
        &[
            json!({"id": "mapped", "required_skill": "web"}),
            json!({"id": "named", "required_skill": "be"}),
            json!({"id": "unmapped", "required_skill": "rust"}),
            json!({"id": "no-skill"}),
        ],
    );
    let (status, log) = env.run_until_idle();
    assert_eq!(status.code(), Some(0), "log:\n{log}");

    let expected = [
        ("mapped", "fe"),
        ("named", "be"),
        ("unmapped", "ops"),
        ("no-skill", "ops"),
    ];
    let ran_in: BTreeMap<String, String> = ledger(&ledger_path)
        .into_iter()
        .filter(|m| m.start)
        .map(|m| (m.task, m.tag))
        .collect();
    for (task, pool) in expected {
        assert_eq!(ran_in[task], pool, "{task} ran in the wrong pool");
        assert_eq!(meta(&env, "s", task)["pool"], pool, "{task} metadata pool");
        let assigned = events_for(&env, "s", "TaskAssigned", task);
        assert_eq!(assigned.len(), 1);
        assert_eq!(assigned[0]["details"]["pool"], pool);
    }
}

#[test]
fn busy_pool_does_not_block_a_task_another_pool_can_run() {
    let env = Env::new();
    let out = out_dir(&env);
    let ledger_path = env.path().join("ledger");
    let gate = env.path().join("gate");
    let vars = [
        ("LEDGER", ledger_path.display().to_string()),
        ("OUT_DIR", out.display().to_string()),
        ("GATE", gate.display().to_string()),
        ("SLEEP", "0".into()),
    ];
    // Skills named like the pools route to them without a mapping.
    env.config(
        "",
        &format!(
            "{}{}",
            pool(
                "slow",
                1,
                &cmd("gate.sh", &["{task_id}", "slow"]),
                &vars,
                ""
            ),
            pool(
                "fast",
                1,
                &cmd("record.sh", &["{task_id}", "fast"]),
                &vars,
                ""
            ),
        ),
    );
    env.taskset(
        "s",
        &[
            json!({"id": "long", "required_skill": "slow", "priority": 10}),
            json!({"id": "behind", "required_skill": "slow", "priority": 9}),
            json!({"id": "quick", "required_skill": "fast", "priority": 1}),
        ],
    );
    let mut run = env.spawn_run(&["--until-idle"]);
    // "quick" is last in priority order, behind a task waiting for the full "slow" pool;
    // it must still run and finish while "long" holds that pool.
    wait_for("quick to be done", || env.state_of("s", "quick") == "done");
    assert_eq!(env.state_of("s", "long"), "running");
    assert_eq!(env.state_of("s", "behind"), "ready");
    assert!(events_for(&env, "s", "TaskAssigned", "behind").is_empty());

    fs::write(&gate, "").unwrap();
    let status = run.wait(DEADLINE);
    assert_eq!(status.code(), Some(0), "log:\n{}", run.stderr());
    let marks = ledger(&ledger_path);
    let (long_start, long_end) = span(&marks, "long");
    let (quick_start, quick_end) = span(&marks, "quick");
    let (behind_start, _) = span(&marks, "behind");
    // Both were claimed in one turn and started by parallel launcher threads, so which
    // process started first is not defined (quick may even end before long's runner writes
    // its first line); what matters is that quick ran and ended while long held its pool.
    assert!(quick_start < long_end && quick_end < long_end, "{marks:?}");
    assert!(long_start < long_end, "{marks:?}");
    assert!(
        behind_start > long_end,
        "slow pool ran two at once: {marks:?}"
    );
}

#[test]
fn unroutable_task_is_reported_and_until_idle_exits_4() {
    let env = Env::new();
    let ledger_path = env.path().join("ledger");
    // No mapping for "gpu", no pool named "gpu", no default mapping, no pool named "default".
    env.config(
        "",
        &format!(
            "{}[skill_mapping]\nweb = [\"local\"]\n",
            pool(
                "local",
                1,
                &cmd("record.sh", &["{task_id}", "local"]),
                &[
                    ("LEDGER", ledger_path.display().to_string()),
                    ("SLEEP", "0".into())
                ],
                "",
            ),
        ),
    );
    env.taskset(
        "s",
        &[
            json!({"id": "render", "required_skill": "gpu"}),
            json!({"id": "page", "required_skill": "web"}),
        ],
    );

    let mut run = env.spawn_run(&[]);
    wait_for("status to list the unroutable task", || {
        let report = status_json(&env);
        report["dispatcher"]["running"] == true
            && report["unroutable"]
                .as_array()
                .is_some_and(|u| !u.is_empty())
    });
    let report = status_json(&env);
    let unroutable = report["unroutable"].as_array().unwrap();
    assert_eq!(unroutable.len(), 1, "{report:#}");
    assert_eq!(unroutable[0]["task_id"], "render");
    assert_eq!(unroutable[0]["required_skill"], "gpu");
    run.signal(libc::SIGINT);
    assert_eq!(run.wait(DEADLINE).code(), Some(130), "{}", run.stderr());

    let (status, log) = env.run_until_idle();
    assert_eq!(status.code(), Some(4), "log:\n{log}");
    assert_eq!(env.state_of("s", "render"), "ready");
    assert_eq!(env.state_of("s", "page"), "done");
    assert!(events_for(&env, "s", "TaskAssigned", "render").is_empty());
}

// ----- dependencies --------------------------------------------------------------------------

#[test]
fn dependents_start_only_after_their_dependencies_end() {
    let env = Env::new();
    let ledger_path = env.path().join("ledger");
    local_config(
        &env,
        "",
        "",
        3,
        &cmd("record.sh", &["{task_id}", "local"]),
        &[
            ("LEDGER", ledger_path.display().to_string()),
            ("SLEEP", "0.1".into()),
        ],
        "",
    );
    // A chain a→b→c and a diamond d→{e,f}→g, side by side.
    let deps: &[(&str, &[&str])] = &[
        ("a", &[]),
        ("b", &["a"]),
        ("c", &["b"]),
        ("d", &[]),
        ("e", &["d"]),
        ("f", &["d"]),
        ("g", &["e", "f"]),
    ];
    let tasks: Vec<Value> = deps
        .iter()
        .map(|(id, d)| {
            let state = if d.is_empty() { "ready" } else { "blocked" };
            json!({"id": id, "state": state, "dependencies": d})
        })
        .collect();
    env.taskset("s", &tasks);
    let (status, log) = env.run_until_idle();
    assert_eq!(status.code(), Some(0), "log:\n{log}");

    let marks = ledger(&ledger_path);
    for (id, dependencies) in deps {
        assert_eq!(env.state_of("s", id), "done");
        let (start, _) = span(&marks, id);
        for dep in *dependencies {
            let (_, dep_end) = span(&marks, dep);
            assert!(
                start > dep_end,
                "{id} started before {dep} ended: {marks:?}"
            );
        }
        let ready = events_for(&env, "s", "TaskReady", id);
        let expected = usize::from(!dependencies.is_empty());
        assert_eq!(ready.len(), expected, "TaskReady events for {id}");
    }
}

#[test]
fn blocked_task_whose_dependencies_are_already_done_is_made_ready_and_runs() {
    let env = Env::new();
    let ledger_path = env.path().join("ledger");
    local_config(
        &env,
        "",
        "",
        1,
        &cmd("record.sh", &["{task_id}", "local"]),
        &[
            ("LEDGER", ledger_path.display().to_string()),
            ("SLEEP", "0".into()),
        ],
        "",
    );
    // Written by hand (or by a tool that does not unblock): nothing will ever finish
    // "earlier", so only the dispatcher's own check can release "later".
    env.taskset(
        "s",
        &[
            json!({"id": "earlier", "state": "done"}),
            json!({"id": "later", "state": "blocked", "dependencies": ["earlier"]}),
        ],
    );
    let (status, log) = env.run_until_idle();
    assert_eq!(status.code(), Some(0), "log:\n{log}");
    assert_eq!(env.state_of("s", "later"), "done");
    assert_eq!(start_order(&ledger(&ledger_path)), ["later"]);
    assert_eq!(events_for(&env, "s", "TaskReady", "later").len(), 1);
}

#[test]
fn dependent_of_a_failed_task_is_blocked_forever_and_exit_is_4() {
    let env = Env::new();
    local_config(
        &env,
        "",
        "[retry]\nmax_attempts = 1\n\n",
        1,
        &cmd("fail.sh", &[]),
        &[],
        "",
    );
    env.taskset(
        "s",
        &[
            json!({"id": "base"}),
            json!({"id": "after", "state": "blocked", "dependencies": ["base"]}),
        ],
    );
    let (status, log) = env.run_until_idle();
    // "after" can never run, which outranks "some failed" (3).
    assert_eq!(status.code(), Some(4), "log:\n{log}");
    assert_eq!(env.state_of("s", "base"), "failed");
    assert_eq!(env.state_of("s", "after"), "blocked");
    let report = status_json(&env);
    let stuck = report["blocked_forever"].as_array().unwrap();
    assert_eq!(stuck.len(), 1, "{report:#}");
    assert_eq!(stuck[0]["task_id"], "after");
}

// ----- retries -------------------------------------------------------------------------------

#[test]
fn failing_task_retries_with_growing_backoff_then_fails_with_exit_3() {
    let env = Env::new();
    local_config(
        &env,
        "",
        "[retry]\nmax_attempts = 3\ninitial_delay = \"300ms\"\nbackoff_base = 2\nmax_delay = \"10s\"\n\n",
        1, &cmd("fail.sh", &[]), &[("EXIT", "7".into())], "",
    );
    env.taskset("s", &[json!({"id": "doomed"})]);
    let (status, log) = env.run_until_idle();
    assert_eq!(status.code(), Some(3), "log:\n{log}");

    assert_eq!(env.state_of("s", "doomed"), "failed");
    let m = meta(&env, "s", "doomed");
    assert_eq!(m["attempts"], 3, "{m:#}");
    assert_eq!(m["last_exit_code"], 7, "{m:#}");
    for attempt in 1..=3 {
        let log = env
            .state()
            .join(format!("logs/s/doomed/attempt-{attempt}.log"));
        let text = fs::read_to_string(&log).unwrap_or_else(|_| panic!("{} missing", log.display()));
        assert!(
            text.contains(&format!("attempt {attempt})")),
            "attempt {attempt} log:\n{text}"
        );
    }
    assert!(!env.state().join("logs/s/doomed/attempt-4.log").exists());

    let retries = env.events_of_type("s", "TaskRetryScheduled");
    let delays: Vec<f64> = retries
        .iter()
        .map(|e| e["details"]["delay_seconds"].as_f64().unwrap())
        .collect();
    assert_eq!(delays.len(), 2, "{retries:#?}");
    assert!((delays[0] - 0.3).abs() < 1e-3, "{delays:?}");
    assert!((delays[1] - 0.6).abs() < 1e-3, "{delays:?}");
    let failed = env.events_of_type("s", "TaskFailed");
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["details"]["attempts"], 3);

    // No retry starts before it is due, and the wait between attempts grew.
    let starts: Vec<_> = env
        .events_of_type("s", "RunnerStarted")
        .iter()
        .map(timestamp)
        .collect();
    assert_eq!(starts.len(), 3);
    for (retry, next_start) in retries.iter().zip(&starts[1..]) {
        let due = chrono::NaiveDateTime::parse_from_str(
            retry["details"]["next_attempt_at"].as_str().unwrap(),
            "%Y-%m-%dT%H:%M:%S%.f",
        )
        .unwrap();
        assert!(
            *next_start >= due,
            "retry started at {next_start}, due {due}"
        );
    }
    let first_gap = starts[1] - starts[0];
    let second_gap = starts[2] - starts[1];
    assert!(second_gap > first_gap, "gaps {first_gap} then {second_gap}");
}

#[test]
fn task_failing_once_is_done_on_its_second_attempt() {
    let env = Env::new();
    local_config(
        &env,
        "",
        "[retry]\nmax_attempts = 3\ninitial_delay = \"200ms\"\n\n",
        1,
        &cmd("flaky.sh", &[]),
        &[],
        "",
    );
    env.taskset("s", &[json!({"id": "flaky"})]);
    let (status, log) = env.run_until_idle();
    assert_eq!(status.code(), Some(0), "log:\n{log}");
    assert_eq!(env.state_of("s", "flaky"), "done");
    let m = meta(&env, "s", "flaky");
    assert_eq!(m["attempts"], 2, "{m:#}");
    assert_eq!(m["last_exit_code"], 0, "{m:#}");
    assert_eq!(env.events_of_type("s", "TaskRetryScheduled").len(), 1);
    assert_eq!(env.events_of_type("s", "TaskCompleted").len(), 1);
}

// ----- timeouts ------------------------------------------------------------------------------

#[test]
fn silent_runner_is_killed_for_lost_heartbeat_and_the_attempt_counts() {
    let env = Env::new();
    let out = out_dir(&env);
    let mark = marker(&env);
    local_config(
        &env,
        "heartbeat_timeout = \"1s\"\nstop_grace_period = \"1s\"",
        "[retry]\nmax_attempts = 2\ninitial_delay = \"200ms\"\n\n",
        1,
        &cmd("hang.sh", &["{task_id}", &mark]),
        &[("OUT_DIR", out.display().to_string())],
        "",
    );
    env.taskset("s", &[json!({"id": "mute"})]);
    let (status, log) = env.run_until_idle();
    assert_eq!(status.code(), Some(3), "log:\n{log}");
    assert_eq!(env.state_of("s", "mute"), "failed");
    // Both attempts were counted: without that, a silent runner would retry forever.
    assert_eq!(meta(&env, "s", "mute")["attempts"], 2);
    let timed_out = env.events_of_type("s", "RunnerTimedOut");
    assert_eq!(timed_out.len(), 2, "{timed_out:#?}");
    for event in &timed_out {
        assert_eq!(event["details"]["reason"], "heartbeat_lost");
    }
    assert_eq!(pids(&env).len(), 2);
    assert!(pids(&env).into_iter().all(|pid| !live(pid)));
    assert_eq!(processes_with(&mark), Vec::<String>::new());
}

#[test]
fn runner_that_touches_its_heartbeat_outlives_the_heartbeat_timeout() {
    let env = Env::new();
    let out = out_dir(&env);
    local_config(
        &env,
        "heartbeat_timeout = \"1s\"",
        "[retry]\nmax_attempts = 1\n\n",
        1,
        &cmd("sleep.sh", &[]),
        &[
            ("OUT_DIR", out.display().to_string()),
            ("SLEEP", "3".into()),
        ],
        "",
    );
    env.taskset("s", &[json!({"id": "busy"})]);
    let (status, log) = env.run_until_idle();
    assert_eq!(status.code(), Some(0), "log:\n{log}");
    assert_eq!(env.state_of("s", "busy"), "done");
    assert!(env.events_of_type("s", "RunnerTimedOut").is_empty());
    // It really ran past the heartbeat timeout, so the check had a chance to fire.
    let finished = env.events_of_type("s", "RunnerFinished");
    let duration = finished[0]["details"]["duration_seconds"].as_f64().unwrap();
    assert!(duration > 1.0, "ran only {duration}s");
}

/// Regression: the watchdog looked at heartbeats only every 500 ms but killed as soon as its
/// last look was `heartbeat_timeout` old, so a runner touching its heartbeat every 600 ms
/// could seem silent for two looks (about 1.04 s) and was killed under a 1 s timeout.
#[test]
fn heartbeat_just_inside_the_timeout_is_not_taken_for_a_lost_one() {
    let env = Env::new();
    local_config(
        &env,
        "heartbeat_timeout = \"1s\"",
        "[retry]\nmax_attempts = 1\n\n",
        1,
        &cmd("pulse.sh", &[]),
        &[("PULSE", "0.6".into()), ("SLEEP", "6".into())],
        "",
    );
    env.taskset("s", &[json!({"id": "steady"})]);
    let (status, log) = env.run_until_idle();
    // Never 1 s without a heartbeat, so never killed for a lost one.
    assert!(
        env.events_of_type("s", "RunnerTimedOut").is_empty(),
        "log:\n{log}"
    );
    assert_eq!(status.code(), Some(0), "log:\n{log}");
    assert_eq!(env.state_of("s", "steady"), "done");
}

#[test]
fn runner_past_the_pool_timeout_is_stopped_and_the_task_fails() {
    let env = Env::new();
    let out = out_dir(&env);
    let mark = marker(&env);
    local_config(
        &env,
        "stop_grace_period = \"1s\"",
        "[retry]\nmax_attempts = 1\n\n",
        1,
        &cmd("sleep.sh", &["{task_id}", &mark]),
        &[("OUT_DIR", out.display().to_string())],
        "timeout = \"1s\"",
    );
    env.taskset("s", &[json!({"id": "endless"})]);
    let (status, log) = env.run_until_idle();
    assert_eq!(status.code(), Some(3), "log:\n{log}");
    assert_eq!(env.state_of("s", "endless"), "failed");
    let m = meta(&env, "s", "endless");
    assert_eq!(m["attempts"], 1);
    assert_eq!(m["last_error"], "execution timeout exceeded", "{m:#}");
    let timed_out = env.events_of_type("s", "RunnerTimedOut");
    assert_eq!(timed_out.len(), 1);
    assert_eq!(timed_out[0]["details"]["reason"], "timed_out");
    assert_eq!(processes_with(&mark), Vec::<String>::new());
}

// ----- the drain -----------------------------------------------------------------------------

/// Config for drain tests: one pool of two slots running `script` with the test's marker,
/// `OUT_DIR`, `LEDGER` and `GATE` set; `dispatcher` adds to the `[dispatcher]` section.
fn drain_config(env: &Env, script: &str, dispatcher: &str) -> (String, PathBuf, PathBuf) {
    let out = out_dir(env);
    let mark = marker(env);
    let ledger_path = env.path().join("ledger");
    let gate = env.path().join("gate");
    local_config(
        env,
        dispatcher,
        "",
        2,
        &cmd(script, &["{task_id}", "local", &mark]),
        &[
            ("OUT_DIR", out.display().to_string()),
            ("LEDGER", ledger_path.display().to_string()),
            ("GATE", gate.display().to_string()),
        ],
        "",
    );
    env.taskset(
        "s",
        &[
            json!({"id": "one", "priority": 1}),
            json!({"id": "two", "priority": 1}),
            // Lowest priority: waits for a free slot, so it is queued when the drain starts.
            json!({"id": "three"}),
        ],
    );
    (mark, ledger_path, gate)
}

/// Asserts what an interrupted drain leaves: every task ready with no attempt counted,
/// a `TaskInterrupted` for each started one, "three" never started, no runner left.
fn assert_interrupted(env: &Env, mark: &str) {
    for id in ["one", "two", "three"] {
        assert_eq!(env.state_of("s", id), "ready", "{id}");
        let attempts = meta(env, "s", id)["attempts"].as_u64().unwrap_or(0);
        assert_eq!(attempts, 0, "{id}: the interrupted attempt must not count");
    }
    let interrupted: Vec<String> = env
        .events_of_type("s", "TaskInterrupted")
        .iter()
        .map(|e| e["task_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(interrupted.len(), 2, "{interrupted:?}");
    assert!(!interrupted.contains(&"three".to_string()));
    assert!(events_for(env, "s", "TaskAssigned", "three").is_empty());
    // The dispatcher has exited: every runner it started must be gone already.
    assert_eq!(processes_with(mark), Vec::<String>::new());
    assert!(pids(env).into_iter().all(|pid| !live(pid)));
}

fn wait_for_two_runners(env: &Env) {
    wait_for("two runners to start", || pids(env).len() == 2);
}

#[test]
fn sigint_stops_long_runners_after_the_graceful_timeout_and_exits_130() {
    let env = Env::new();
    let (mark, _, _) = drain_config(
        &env,
        "sleep.sh",
        "graceful_shutdown_timeout = \"1s\"\nstop_grace_period = \"1s\"",
    );
    let mut run = env.spawn_run(&[]);
    wait_for_two_runners(&env);
    run.signal(libc::SIGINT);
    let status = run.wait(DEADLINE);
    assert_eq!(status.code(), Some(130), "log:\n{}", run.stderr());
    assert_interrupted(&env, &mark);
}

#[test]
fn sigterm_drains_like_sigint() {
    let env = Env::new();
    let (mark, _, _) = drain_config(
        &env,
        "sleep.sh",
        "graceful_shutdown_timeout = \"1s\"\nstop_grace_period = \"1s\"",
    );
    let mut run = env.spawn_run(&[]);
    wait_for_two_runners(&env);
    run.signal(libc::SIGTERM);
    let status = run.wait(DEADLINE);
    assert_eq!(status.code(), Some(130), "log:\n{}", run.stderr());
    assert_interrupted(&env, &mark);
}

#[test]
fn runners_that_finish_within_the_graceful_timeout_end_done() {
    let env = Env::new();
    let (mark, ledger_path, gate) = drain_config(
        &env,
        "gate.sh",
        "graceful_shutdown_timeout = \"300s\"\nstop_grace_period = \"1s\"",
    );
    let mut run = env.spawn_run(&[]);
    wait_for_two_runners(&env);
    run.signal(libc::SIGINT);
    // Let the runners end only once the dispatcher is known to be draining.
    wait_for("the drain to start", || run.stderr().contains("draining"));
    fs::write(&gate, "").unwrap();
    let status = run.wait(DEADLINE);
    assert_eq!(status.code(), Some(130), "log:\n{}", run.stderr());

    let started = start_order(&ledger(&ledger_path));
    assert_eq!(started.len(), 2, "no new task starts while draining");
    for id in &started {
        assert_eq!(env.state_of("s", id), "done");
        assert_eq!(meta(&env, "s", id)["attempts"], 1);
    }
    assert_eq!(env.state_of("s", "three"), "ready");
    assert!(env.events_of_type("s", "TaskInterrupted").is_empty());
    assert_eq!(processes_with(&mark), Vec::<String>::new());
}

#[test]
fn second_sigint_stops_runners_without_waiting_for_the_graceful_timeout() {
    let env = Env::new();
    // 300 s is far past DEADLINE: only the second SIGINT can end this run in time.
    let (mark, _, _) = drain_config(
        &env,
        "sleep.sh",
        "graceful_shutdown_timeout = \"300s\"\nstop_grace_period = \"1s\"",
    );
    let mut run = env.spawn_run(&[]);
    wait_for_two_runners(&env);
    run.signal(libc::SIGINT);
    wait_for("the drain to start", || run.stderr().contains("draining"));
    run.signal(libc::SIGINT);
    let status = run.wait(DEADLINE);
    assert_eq!(status.code(), Some(130), "log:\n{}", run.stderr());
    assert_interrupted(&env, &mark);
}

#[test]
fn runner_ignoring_sigterm_is_killed_after_the_stop_grace_period() {
    let env = Env::new();
    // The default stop_grace_period (10 s) would also pass; 1 s keeps the test quick.
    let (mark, _, _) = drain_config(
        &env,
        "stubborn.sh",
        "graceful_shutdown_timeout = \"1s\"\nstop_grace_period = \"1s\"",
    );
    let mut run = env.spawn_run(&[]);
    wait_for_two_runners(&env);
    run.signal(libc::SIGINT);
    let status = run.wait(DEADLINE);
    assert_eq!(status.code(), Some(130), "log:\n{}", run.stderr());
    // The runner's supervisor escalates, and says so in the attempt's log.
    let logs = attempt_logs_text(&env.state().join("logs"));
    assert!(logs.contains("SIGKILL"), "attempt logs:\n{logs}");
    assert_interrupted(&env, &mark);
}

// ----- instance lock and status --------------------------------------------------------------

#[test]
fn second_dispatcher_on_the_same_state_dir_exits_1_naming_the_first() {
    let env = Env::new();
    env.config("", "");
    let mut first = env.spawn_run(&[]);
    wait_for("the first dispatcher to report itself running", || {
        status_json(&env)["dispatcher"]["running"] == true
    });
    let second = env.output(&["run", "--until-idle"]);
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "stderr:\n{stderr}");
    assert!(
        stderr.contains(&format!("pid {}", first.pid())),
        "stderr names the running dispatcher {}:\n{stderr}",
        first.pid()
    );
    // The refused start left the first one alone.
    assert!(first.child.try_wait().unwrap().is_none());
    first.signal(libc::SIGINT);
    assert_eq!(first.wait(DEADLINE).code(), Some(130));
}

#[test]
fn status_json_shows_live_runners_while_running_and_not_running_after() {
    let env = Env::new();
    let out = out_dir(&env);
    local_config(
        &env,
        "graceful_shutdown_timeout = \"1s\"\nstop_grace_period = \"1s\"",
        "",
        2,
        &cmd("sleep.sh", &["{task_id}"]),
        &[("OUT_DIR", out.display().to_string())],
        "",
    );
    env.taskset("s", &[json!({"id": "work"})]);
    let mut run = env.spawn_run(&[]);
    // A claimed task is listed at once; its pid follows once its supervisor has started it.
    wait_for("status to show the runner with its pid", || {
        status_json(&env)["running"]
            .as_array()
            .is_some_and(|r| r.len() == 1 && r[0]["pid"].is_u64())
    });
    let report = status_json(&env);
    assert_eq!(report["dispatcher"]["running"], true);
    assert_eq!(report["dispatcher"]["pid"], run.pid());
    let runner = &report["running"][0];
    assert_eq!(runner["task_id"], "work");
    assert_eq!(runner["spec"], "s");
    assert_eq!(runner["pool"], "local");
    assert_eq!(runner["attempt"], 1);
    let pid = u32::try_from(runner["pid"].as_u64().expect("runner pid")).unwrap();
    assert!(live(pid), "runner pid {pid} is not a live process");
    assert_eq!(pids(&env), [pid], "status shows the runner's own pid");
    let log_file = runner["log_file"].as_str().unwrap();
    assert!(Path::new(log_file).exists(), "{log_file}");
    let pools = report["pools"].as_array().unwrap();
    assert_eq!(pools.len(), 1);
    assert_eq!(pools[0]["name"], "local");
    assert_eq!(pools[0]["running"], 1);
    assert_eq!(pools[0]["max_concurrency"], 2);

    run.signal(libc::SIGINT);
    assert_eq!(run.wait(DEADLINE).code(), Some(130), "{}", run.stderr());
    let report = status_json(&env);
    assert_eq!(report["dispatcher"]["running"], false, "{report:#}");
    assert_eq!(report["running"], json!([]), "{report:#}");
}

/// Every attempt log under `dir`, concatenated.
fn attempt_logs_text(dir: &std::path::Path) -> String {
    let mut text = String::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return text;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            text.push_str(&attempt_logs_text(&path));
        } else {
            text.push_str(&std::fs::read_to_string(&path).unwrap_or_default());
        }
    }
    text
}

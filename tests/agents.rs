//! Agent-specific failure handling with real runners (tests/runners/agent.sh): failure
//! classes from the result file, exit code 75 and output patterns; per-pool circuit breakers;
//! infra failures that do not count; result-file artifacts and spend in the attempt history.

mod support;

use std::fs;
use std::path::PathBuf;

use serde_json::{json, Value};
use support::{cmd, ledger, only_pool, pool, status_json, wait_for, Env, DEADLINE};

/// One pool `agents` of `max` runners running agent.sh with `env`, plus `extra` pool lines.
fn agent_config(env: &Env, max: usize, vars: &[(&str, &str)], extra: &str) -> PathBuf {
    let out = env.path().join("out");
    fs::create_dir_all(&out).unwrap();
    let mut all: Vec<(&str, String)> = vec![
        ("OUT_DIR", out.display().to_string()),
        ("LEDGER", out.join("ledger").display().to_string()),
    ];
    all.extend(vars.iter().map(|(k, v)| (*k, (*v).to_string())));
    env.config(
        "",
        &format!(
            "[retry]\nmax_attempts = 1\ninitial_delay = \"100ms\"\n\n{}",
            only_pool("agents", max, &cmd("agent.sh", &["{task_id}"]), &all, extra),
        ),
    );
    out
}

fn meta(task: &Value) -> &Value {
    &task["metadata"]["dispatcher"]
}

fn history(task: &Value) -> Vec<Value> {
    meta(task)["history"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn run_to_end(env: &Env, code: i32) -> String {
    let mut run = env.spawn_run(&["--until-idle"]);
    let status = run.wait(DEADLINE);
    let log = run.stderr();
    assert_eq!(status.code(), Some(code), "dispatcher log:\n{log}");
    assert!(!log.contains("panicked"), "{log}");
    log
}

fn dispatcher_events(env: &Env) -> Vec<Value> {
    fs::read_to_string(env.state().join("events.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn a_rate_limited_runner_opens_the_breaker_and_the_queue_waits_with_attempts_unspent() {
    let env = Env::new();
    let out = agent_config(
        &env,
        1,
        &[
            ("MODE", "result"),
            ("FAIL_STATUS", "rate_limited"),
            ("RETRY_AFTER", "2"),
        ],
        "breaker_cooldown = \"1h\"",
    );
    // Only the first task's first attempt is refused: the others never fail.
    env.taskset(
        "s",
        &[
            json!({"id": "a", "priority": 3}),
            json!({"id": "b", "priority": 2}),
            json!({"id": "c", "priority": 1}),
        ],
    );
    for other in ["b", "c"] {
        fs::write(out.join(format!("{other}.count")), "5").unwrap();
    }
    let mut run = env.spawn_run(&["--until-idle"]);
    wait_for("the breaker to open", || {
        status_json(&env)["pools"][0]["breaker"].is_object()
    });
    let report = status_json(&env);
    let breaker = &report["pools"][0]["breaker"];
    assert_eq!(breaker["class"], "rate_limited", "{report}");
    assert!(
        breaker["message"]
            .as_str()
            .unwrap()
            .contains("provider said no"),
        "{breaker}"
    );
    assert_eq!(
        env.state_of("s", "b"),
        "ready",
        "queued tasks wait while it is open"
    );
    let human = String::from_utf8_lossy(&env.output(&["status"]).stdout).into_owned();
    assert!(human.contains("breaker open (rate_limited)"), "{human}");

    let status = run.wait(DEADLINE);
    assert_eq!(status.code(), Some(0), "{}", run.stderr());
    // Nothing started while the breaker was open: the next start came after it closed.
    let marks = ledger(&out.join("ledger"));
    let first_end = marks.iter().find(|m| !m.start).unwrap().ns;
    let next_start = marks.iter().filter(|m| m.start).nth(1).unwrap().ns;
    let closes_at = chrono::NaiveDateTime::parse_from_str(
        breaker["closes_at"].as_str().unwrap(),
        "%Y-%m-%dT%H:%M:%S%.f",
    )
    .unwrap();
    let closes_ns = closes_at
        .and_local_timezone(chrono::Local)
        .unwrap()
        .timestamp_nanos_opt()
        .unwrap() as u128;
    assert!(next_start >= first_end);
    assert!(
        next_start + 5_000_000 >= closes_ns,
        "a task started {} ms before the breaker closed",
        (closes_ns - next_start) / 1_000_000
    );
    for id in ["a", "b", "c"] {
        assert_eq!(env.state_of("s", id), "done");
    }
    let a = env.task("s", "a");
    assert_eq!(
        meta(&a)["attempts"],
        1,
        "the refused attempt is not counted: {a}"
    );
    let tries = history(&a);
    assert_eq!(tries.len(), 2, "{tries:?}");
    assert_eq!(tries[0]["class"], "rate_limited");
    assert_eq!(tries[0]["counted"], false);
    assert_eq!(tries[1]["outcome"], "succeeded");
    assert_eq!(env.events_of_type("s", "TaskRequeued").len(), 1);
    let kinds: Vec<Value> = dispatcher_events(&env)
        .iter()
        .map(|e| e["event_type"].clone())
        .collect();
    assert!(kinds.contains(&json!("PoolBreakerOpened")), "{kinds:?}");
    assert!(kinds.contains(&json!("PoolBreakerClosed")), "{kinds:?}");
}

#[test]
fn output_patterns_and_exit_code_75_classify_failures() {
    let env = Env::new();
    agent_config(
        &env,
        1,
        &[("MODE", "output")],
        "breaker_cooldown = \"200ms\"\n[agent_pools.agents.classify]\nrate_limited = [\"usage limit.*resets\"]",
    );
    env.taskset("s", &[json!({"id": "p"})]);
    run_to_end(&env, 0);
    let tries = history(&env.task("s", "p"));
    assert_eq!(tries[0]["class"], "rate_limited", "{tries:?}");
    assert_eq!(meta(&env.task("s", "p"))["attempts"], 1);

    let env = Env::new();
    agent_config(
        &env,
        1,
        &[("MODE", "exit75")],
        "breaker_cooldown = \"200ms\"",
    );
    env.taskset("s", &[json!({"id": "t"})]);
    run_to_end(&env, 0);
    let task = env.task("s", "t");
    let tries = history(&task);
    assert_eq!(tries[0]["class"], "rate_limited", "{tries:?}");
    assert_eq!(tries[0]["exit_code"], 75);
    assert_eq!(meta(&task)["attempts"], 1);
}

#[test]
fn a_later_silent_failure_is_not_classified_by_an_earlier_attempts_output() {
    // The rate-limited attempt does not count, so the next one shares its log: its own plain
    // failure must count, or the task would be retried for ever.
    let env = Env::new();
    agent_config(
        &env,
        1,
        &[("MODE", "output"), ("THEN_FAIL", "1")],
        "breaker_cooldown = \"100ms\"\n[agent_pools.agents.classify]\nrate_limited = [\"usage limit\"]",
    );
    env.taskset("s", &[json!({"id": "q"})]);
    run_to_end(&env, 3);
    let task = env.task("s", "q");
    assert_eq!(task["state"], "failed");
    let tries = history(&task);
    assert_eq!(tries.len(), 2, "{tries:?}");
    assert_eq!(tries[0]["class"], "rate_limited");
    assert!(tries[1]["class"].is_null(), "{tries:?}");
    assert_eq!(tries[1]["counted"], true);
}

#[test]
fn infra_failures_retry_without_counting_until_their_own_limit() {
    let env = Env::new();
    agent_config(
        &env,
        1,
        &[
            ("MODE", "result"),
            ("FAIL_STATUS", "infra"),
            ("FAIL_TIMES", "2"),
        ],
        "",
    );
    env.taskset("s", &[json!({"id": "i"})]);
    // max_attempts = 1: two counted failures would fail the task.
    run_to_end(&env, 0);
    let task = env.task("s", "i");
    assert_eq!(task["state"], "done");
    assert_eq!(meta(&task)["attempts"], 1);
    assert_eq!(meta(&task)["infra_failures"], 2);
    let tries = history(&task);
    assert_eq!(tries.len(), 3);
    assert!(tries[..2]
        .iter()
        .all(|t| t["class"] == "infra" && t["counted"] == false));

    // Past max_infra_retries the task fails, with the runner's message.
    let env = Env::new();
    agent_config(
        &env,
        1,
        &[
            ("MODE", "result"),
            ("FAIL_STATUS", "infra"),
            ("FAIL_TIMES", "99"),
        ],
        "",
    );
    let text = fs::read_to_string(env.config_path()).unwrap().replace(
        "max_attempts = 1",
        "max_attempts = 1\nmax_infra_retries = 2",
    );
    fs::write(env.config_path(), text).unwrap();
    env.taskset("s", &[json!({"id": "j"})]);
    run_to_end(&env, 3);
    let task = env.task("s", "j");
    assert_eq!(task["state"], "failed");
    assert_eq!(history(&task).len(), 3, "two retries after the first");
    let error = meta(&task)["last_error"].as_str().unwrap();
    assert!(error.contains("infra: provider said no"), "{error}");
    // `dispatcher retry` gives the task its infra retries back too.
    let out = env.output(&["retry", "s/j"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(meta(&env.task("s", "j"))["infra_failures"].is_null());
}

#[test]
fn result_file_artifacts_and_spend_are_recorded() {
    let env = Env::new();
    let out = agent_config(&env, 1, &[("FAIL_TIMES", "0")], "");
    env.taskset("s", &[json!({"id": "r"})]);
    run_to_end(&env, 0);
    let task = env.task("s", "r");
    let uri = format!("file://{}/report-r.md", out.display());
    assert!(
        task["artifacts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["uri"] == uri.as_str()),
        "{task}"
    );
    assert_eq!(
        history(&task)[0]["spend"],
        json!({"tokens": 100, "cost_usd": 0.25})
    );
}

#[test]
fn a_malformed_result_file_is_reported_and_the_exit_code_decides() {
    let env = Env::new();
    let out = env.path().join("out");
    fs::create_dir_all(&out).unwrap();
    let script = out.join("bad-result.sh");
    fs::write(
        &script,
        "#!/bin/sh\necho '{\"status\": \"exploded\"}' > \"$DISPATCHER_RESULT_FILE\"\nexit 0\n",
    )
    .unwrap();
    fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    env.config(
        "",
        &only_pool("agents", 1, &[script.display().to_string()], &[], ""),
    );
    env.taskset("s", &[json!({"id": "m"})]);
    let log = run_to_end(&env, 0);
    assert_eq!(env.state_of("s", "m"), "done");
    assert!(log.contains("\"exploded\" is not one of"), "{log}");
}

/// A pool `agents` running spender.sh with `vars` and `extra` pool lines, plus `more` config.
fn spender_config(env: &Env, vars: &[(&str, &str)], extra: &str, more: &str) {
    let all: Vec<(&str, String)> = vars.iter().map(|(k, v)| (*k, (*v).to_string())).collect();
    env.config(
        "",
        &format!(
            "[retry]\nmax_attempts = 2\ninitial_delay = \"100ms\"\n\n{}\n{more}",
            only_pool("agents", 2, &cmd("spender.sh", &["{task_id}"]), &all, extra),
        ),
    );
}

#[test]
fn a_runner_past_the_hard_cap_is_stopped_after_being_flagged_at_the_soft_cap() {
    let env = Env::new();
    spender_config(
        &env,
        &[("STEP_USD", "0.05")],
        "budget_usd = 1.0\nbudget_soft = 0.3\nbudget_period = \"day\"",
        "",
    );
    env.taskset("s", &[json!({"id": "big"})]);
    let mut run = env.spawn_run(&[]);
    wait_for("the soft cap to flag the task", || {
        status_json(&env)["running"][0]["needs_attention"].is_string()
    });
    let report = status_json(&env);
    let why = report["running"][0]["needs_attention"].as_str().unwrap();
    assert!(why.contains("pool agents spent $"), "{why}");
    assert!(report["running"][0]["spend"]["cost_usd"].as_f64().unwrap() >= 0.3);
    assert_eq!(env.events_of_type("s", "BudgetSoftCapReached").len(), 1);

    wait_for("the hard cap to stop it", || {
        env.state_of("s", "big") == "failed"
    });
    let task = env.task("s", "big");
    let error = meta(&task)["last_error"].as_str().unwrap();
    assert!(
        error.starts_with("budget exceeded: pool agents spent $"),
        "{error}"
    );
    let spent = history(&task)[0]["spend"]["cost_usd"].as_f64().unwrap();
    assert!(
        spent >= 1.0,
        "the spend that crossed the cap is recorded: {spent}"
    );
    assert_eq!(history(&task).len(), 1, "not retried");
    wait_for("status to show the pool's budget spent", || {
        let report = status_json(&env);
        report["budgets"][0]["state"] == "exhausted"
    });
    let human = String::from_utf8_lossy(&env.output(&["status"]).stdout).into_owned();
    assert!(
        human.contains("BUDGETS") && human.contains("exhausted"),
        "{human}"
    );
    run.signal(libc::SIGTERM);
    run.wait(DEADLINE);
}

#[test]
fn a_task_whose_estimate_does_not_fit_the_spec_budget_waits_while_a_smaller_one_runs() {
    let env = Env::new();
    spender_config(
        &env,
        &[("STEPS", "2"), ("STEP_USD", "0.4")],
        "",
        "[spec_budgets.s]\nbudget_usd = 1.0",
    );
    env.taskset(
        "s",
        &[
            json!({"id": "first"}),
            json!({"id": "large", "dependencies": ["first"], "state": "blocked",
                   "metadata": {"estimate": {"usd": 0.5}}}),
            json!({"id": "small", "dependencies": ["first"], "state": "blocked",
                   "metadata": {"estimate": {"usd": 0.1}}}),
        ],
    );
    // The small one spends its own 0.8 too, past the budget: it was allowed on its estimate.
    let mut run = env.spawn_run(&[]);
    wait_for("the small task to run to its end", || {
        env.state_of("s", "small") == "done"
    });
    wait_for("status to show the large task waiting for budget", || {
        let report = status_json(&env);
        report["waiting_for_budget"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["task_id"] == "large")
    });
    let report = status_json(&env);
    let waiting = &report["waiting_for_budget"][0];
    let reason = waiting["reason"].as_str().unwrap();
    assert!(
        reason.contains("does not fit") || reason.contains("budget spent"),
        "{reason}"
    );
    assert_eq!(env.state_of("s", "large"), "ready");
    assert_eq!(report["budgets"][0]["scope"], "spec");
    assert!(report["budgets"][0]["spent_usd"].as_f64().unwrap() >= 1.6 - 1e-9);
    run.signal(libc::SIGTERM);
    run.wait(DEADLINE);
}

/// Pools `chat` (chatter.sh) and `work` (worker.sh), both with `stall_timeout`.
fn stall_config(env: &Env, timeout: &str, action: &str) {
    let extra = format!("stall_timeout = \"{timeout}\"\nstall_action = \"{action}\"");
    env.config(
        "heartbeat_timeout = \"1h\"\ngraceful_shutdown_timeout = \"1s\"",
        &format!(
            "[retry]\nmax_attempts = 1\n\n{}\n{}\n[skill_mapping]\nchat = [\"chat\"]\nwork = [\"work\"]\n",
            pool("chat", 1, &cmd("chatter.sh", &[]), &[], &extra),
            pool("work", 1, &cmd("worker.sh", &[]), &[("STEPS", "15".into())], &extra),
        ),
    );
}

#[test]
fn a_runner_that_prints_forever_without_touching_its_worktree_is_found_stalled() {
    let env = Env::new();
    stall_config(&env, "1s", "fail");
    env.taskset(
        "s",
        &[
            json!({"id": "idle", "required_skill": "chat"}),
            json!({"id": "busy", "required_skill": "work"}),
        ],
    );
    let log = run_to_end(&env, 3);
    let idle = env.task("s", "idle");
    assert_eq!(idle["state"], "failed");
    let error = meta(&idle)["last_error"].as_str().unwrap();
    assert!(
        error.starts_with("stalled: no progress within stall_timeout"),
        "{error}"
    );
    let stalled = env.events_of_type("s", "RunnerStalled");
    assert_eq!(stalled.len(), 1, "{stalled:?}");
    assert_eq!(stalled[0]["task_id"], "idle");
    assert_eq!(stalled[0]["details"]["action"], "fail");
    // Three seconds of steady edits with a one-second stall timeout: never stalled.
    assert_eq!(env.state_of("s", "busy"), "done", "{log}");
}

#[test]
fn a_stalled_runner_under_warn_is_shown_in_status_and_keeps_running() {
    let env = Env::new();
    stall_config(&env, "1s", "warn");
    env.taskset("s", &[json!({"id": "idle", "required_skill": "chat"})]);
    let mut run = env.spawn_run(&[]);
    wait_for("status to show the runner stalled", || {
        status_json(&env)["running"][0]["stalled_since"].is_string()
    });
    assert_eq!(env.state_of("s", "idle"), "running");
    let human = String::from_utf8_lossy(&env.output(&["status"]).stdout).into_owned();
    assert!(
        human.contains("NEEDS ATTENTION") && human.contains("stalled since"),
        "{human}"
    );
    assert_eq!(env.events_of_type("s", "RunnerStalled").len(), 1);
    run.signal(libc::SIGTERM);
    run.wait(DEADLINE);
}

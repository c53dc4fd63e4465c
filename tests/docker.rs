//! Docker pools end to end, against a STAND-IN `docker` (`tests/engines/docker`, a test
//! double: no Docker engine runs where these tests run). The stand-in records each argv and
//! plays the engine's answers; the programs of its "containers" are the real runner scripts
//! of `tests/runners/`, run as local processes, so what a runner saw and did is read from
//! what it wrote, and the argv the dispatcher gave the engine from the stand-in's log.
//! One test runs the real engine instead, and is skipped with a message when none answers.

mod support;

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::{json, Value};
use support::standin::Standin;
use support::*;

/// A value that must reach the runner but never a command line.
const SECRET: &str = "s3cr3t-token-7f1e";

fn out_dir(env: &Env) -> PathBuf {
    let dir = env.path().join("out");
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// One docker pool `box` running `command` (with `pool_extra` keys), tasks routed to it by
/// default, `max_attempts` attempts per task, then `extra` (right after `[skill_mapping]`).
fn docker_config(env: &Env, max_attempts: u32, command: &[String], pool_extra: &str, extra: &str) {
    let out = out_dir(env);
    env.config(
        "stop_grace_period = \"1s\"",
        &format!(
            "[retry]\nmax_attempts = {max_attempts}\ninitial_delay = \"100ms\"\n\n{}{}{extra}",
            typed_pool(
                "docker",
                "box",
                2,
                command,
                &[
                    ("OUT_DIR", out.display().to_string()),
                    ("LEDGER", env.path().join("ledger").display().to_string()),
                    ("API_TOKEN", SECRET.to_string()),
                ],
                &format!(
                    "image = \"registry.example/agent:1\"\nengine_poll_interval = \"100ms\"\n{pool_extra}"
                ),
            ),
            default_to("box"),
        ),
    );
}

fn attempts(task: &Value) -> u64 {
    task["metadata"]["dispatcher"]["attempts"]
        .as_u64()
        .unwrap_or(0)
}

/// The one container the stand-in was given: its directory.
fn only_container(standin: &Standin) -> PathBuf {
    let dirs = standin.dirs("docker");
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs[0].clone()
}

fn container_id(dir: &std::path::Path) -> String {
    dir.file_name().unwrap().to_string_lossy().into_owned()
}

fn assert_exit(status: std::process::ExitStatus, code: i32, log: &str) {
    assert_eq!(status.code(), Some(code), "dispatcher log:\n{log}");
}

#[test]
fn a_task_runs_in_a_container_with_its_labels_resources_and_secret_by_name_only() {
    let env = Env::new();
    let standin = Standin::install(&env);
    docker_config(&env, 2, &cmd("args.sh", &["{task_id}"]), "", "");
    env.taskset(
        "web",
        &[json!({"id": "t1", "metadata": {"resources": {"cpu": 0.5, "memory_mb": 256}}})],
    );

    let (status, log) = env.run_until_idle();
    assert_exit(status, 0, &log);
    assert_eq!(env.state_of("web", "t1"), "done");

    let started = env.events_of_type("web", "RunnerStarted");
    assert_eq!(started.len(), 1, "{started:?}");
    let runner_id = started[0]["details"]["runner_id"]
        .as_str()
        .unwrap()
        .to_string();
    let dir = only_container(&standin);
    let id = container_id(&dir);
    assert_eq!(started[0]["details"]["engine_id"], id.as_str());

    let runs = standin.calls_of(&["run"]);
    assert_eq!(runs.len(), 1, "{runs:?}");
    let argv = &runs[0];
    assert_eq!(
        argv[..4],
        ["docker", "run", "-d", &format!("--name={runner_id}")]
    );
    for wanted in [
        format!("--label=dispatcher.runner-id={runner_id}"),
        "--label=dispatcher.task=t1".to_string(),
        "--label=dispatcher.spec=web".to_string(),
        "--label=dispatcher.pool=box".to_string(),
        "--label=dispatcher.attempt=1".to_string(),
        "--cpus=0.5".to_string(),
        "--memory=256m".to_string(),
        "--workdir=/workspace".to_string(),
    ] {
        assert!(argv.contains(&wanted), "{wanted} missing from {argv:?}");
    }
    // `-e NAME`, never `-e NAME=VALUE`: values travel in the client's environment.
    let names: Vec<&str> = argv
        .windows(2)
        .filter(|w| w[0] == "-e")
        .map(|w| w[1].as_str())
        .collect();
    assert!(names.contains(&"API_TOKEN"), "{names:?}");
    assert!(names.contains(&"TASK_CONTEXT"), "{names:?}");
    assert!(names.iter().all(|n| !n.contains('=')), "{names:?}");
    let tail = &argv[argv.len() - 3..];
    assert_eq!(
        tail,
        ["registry.example/agent:1", &runner("args.sh"), "t1"],
        "image then the runner's argv"
    );
    let recorded = fs::read_to_string(&standin.log).unwrap();
    assert!(
        !recorded.contains(SECRET),
        "a secret reached an argv:\n{recorded}"
    );

    // The runner saw the secret, its contract variables as the container sees them, and
    // its task id as an argument.
    let out = env.path().join("out");
    let runner_env = fs::read_to_string(out.join(format!("{runner_id}.env"))).unwrap();
    assert!(
        runner_env.contains(&format!("API_TOKEN={SECRET}")),
        "{runner_env}"
    );
    let record = Standin::read(&dir, "record.json");
    assert_eq!(
        record["Env"]["DISPATCHER_HEARTBEAT_FILE"],
        "/dispatcher/heartbeat"
    );
    assert_eq!(
        record["Env"]["TASK_CONTEXT_FILE"],
        "/dispatcher/context.json"
    );
    assert_eq!(record["Labels"]["dispatcher.task"], "t1");
    let args = fs::read_to_string(out.join(format!("{runner_id}.args"))).unwrap();
    assert_eq!(args, "t1\n");
    // The finished container is removed.
    assert_eq!(standin.calls_of(&["rm", "--force", &id]).len(), 1);
}

#[test]
fn a_failing_container_exit_code_is_a_failed_attempt_and_is_retried() {
    let env = Env::new();
    let standin = Standin::install(&env);
    docker_config(&env, 2, &cmd("flaky.sh", &[]), "", "");
    env.taskset("web", &[json!({"id": "flaky"})]);

    let (status, log) = env.run_until_idle();
    assert_exit(status, 0, &log);
    let task = env.task("web", "flaky");
    assert_eq!(task["state"], "done");
    assert_eq!(attempts(&task), 2);
    let retry = env.events_of_type("web", "TaskRetryScheduled");
    assert_eq!(retry.len(), 1, "{retry:?}");
    assert_eq!(retry[0]["details"]["exit_code"], 5);
    assert_eq!(retry[0]["details"]["error"], "exited with code 5");
    let finished = env.events_of_type("web", "RunnerFinished");
    let outcomes: Vec<&Value> = finished.iter().map(|e| &e["details"]["outcome"]).collect();
    assert_eq!(outcomes, [&json!("failed"), &json!("succeeded")]);
    assert_eq!(standin.calls_of(&["run"]).len(), 2);
}

#[test]
fn the_execution_timeout_stops_the_container_and_counts_as_timed_out() {
    let env = Env::new();
    let standin = Standin::install(&env);
    docker_config(&env, 1, &cmd("hang.sh", &[]), "timeout = \"1s\"", "");
    env.taskset("web", &[json!({"id": "slow"})]);

    let (status, log) = env.run_until_idle();
    // Exit code 3: a task failed.
    assert_exit(status, 3, &log);
    let task = env.task("web", "slow");
    assert_eq!(task["state"], "failed");
    assert_eq!(
        task["metadata"]["dispatcher"]["last_error"],
        "execution timeout exceeded"
    );
    let timed_out = env.events_of_type("web", "RunnerTimedOut");
    assert_eq!(timed_out.len(), 1, "{timed_out:?}");
    assert_eq!(timed_out[0]["details"]["reason"], "timed_out");
    let id = container_id(&only_container(&standin));
    let stops = standin.calls_of(&["stop"]);
    assert_eq!(stops, [vec!["docker", "stop", "-t", "1", id.as_str()]]);
}

#[test]
fn container_output_reaches_the_attempt_log() {
    let env = Env::new();
    let _standin = Standin::install(&env);
    let command: Vec<String> = ["sh", "-c", "echo to-stdout; echo to-stderr >&2"]
        .map(String::from)
        .to_vec();
    docker_config(&env, 2, &command, "", "");
    env.taskset("web", &[json!({"id": "talk"})]);

    let (status, log) = env.run_until_idle();
    assert_exit(status, 0, &log);
    let attempt_log = env.state().join("logs/web/talk/attempt-1.log");
    let text = fs::read_to_string(&attempt_log).unwrap();
    assert!(text.starts_with("# dispatcher: runner "), "{text}");
    assert!(text.contains("\nto-stdout\n"), "{text}");
    assert!(text.contains("to-stderr\n"), "{text}");
}

#[test]
fn status_json_shows_the_container_id_of_a_running_runner() {
    let env = Env::new();
    let standin = Standin::install(&env);
    docker_config(&env, 2, &cmd("gated.sh", &["{task_id}"]), "", "");
    env.taskset("web", &[json!({"id": "held"})]);
    let out = env.path().join("out");

    let mut run = env.spawn_run(&["--until-idle"]);
    wait_for("the runner to start", || out.join("held.pid").exists());
    let id = container_id(&only_container(&standin));
    wait_for("status to show the container id", || {
        let report = status_json(&env);
        report["running"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["task_id"] == "held" && r["engine_id"] == id.as_str())
    });
    fs::write(out.join("gate-held"), "").unwrap();
    let status = run.wait(DEADLINE);
    assert_exit(status, 0, &run.stderr());
    assert_eq!(env.state_of("web", "held"), "done");
}

#[test]
fn an_engine_that_does_not_answer_takes_no_tasks_while_a_local_pool_runs_its_own() {
    let env = Env::new();
    let standin = Standin::install(&env);
    standin.set("down");
    let local = pool(
        "local",
        1,
        &["sh".to_string(), "-c".to_string(), "exit 0".to_string()],
        &[],
        "",
    );
    docker_config(
        &env,
        2,
        &cmd("args.sh", &["{task_id}"]),
        "",
        // `extra` follows the `[skill_mapping]` table: its first line is a skill route.
        &format!("local = [\"local\"]\n\n{local}"),
    );
    env.taskset(
        "web",
        &[
            json!({"id": "boxed"}),
            json!({"id": "here", "required_skill": "local"}),
        ],
    );

    let mut run = env.spawn_run(&[]);
    wait_for("the local task to be done", || {
        env.state_of("web", "here") == "done"
    });
    wait_for("status to report the engine error", || {
        let report = status_json(&env);
        report["pools"].as_array().unwrap().iter().any(|p| {
            p["name"] == "box"
                && p["engine_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("Cannot connect to the Docker daemon"))
        })
    });
    wait_for("the dispatcher log to name the pool's engine", || {
        run.stderr()
            .contains("pool box: its engine does not answer, so the pool takes no tasks")
    });
    assert_eq!(env.state_of("web", "boxed"), "ready");
    assert!(
        standin.calls_of(&["run"]).is_empty(),
        "{:?}",
        standin.calls()
    );
    let report = status_json(&env);
    let local = report["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "local")
        .unwrap()
        .clone();
    assert!(local.get("engine_error").is_none(), "{local}");
    run.signal(libc::SIGTERM);
    run.wait(DEADLINE);
}

#[test]
fn a_container_outlives_a_sigkilled_dispatcher_and_is_adopted_by_the_next() {
    let env = Env::new();
    let standin = Standin::install(&env);
    docker_config(&env, 2, &cmd("gated.sh", &["{task_id}"]), "", "");
    env.taskset("web", &[json!({"id": "long"})]);
    let out = env.path().join("out");

    let mut first = env.spawn_run(&[]);
    wait_for("the runner to start", || out.join("long.pid").exists());
    let id = container_id(&only_container(&standin));
    wait_for("the container id to be recorded", || {
        !env.events_of_type("web", "RunnerStarted").is_empty()
    });
    first.signal(libc::SIGKILL);
    first.wait(DEADLINE);
    let pid: u32 = fs::read_to_string(out.join("long.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(pid_alive(pid), "the container died with its dispatcher");

    let mut second = env.spawn_run(&["--until-idle"]);
    wait_for("the runner to be adopted", || {
        !env.events_of_type("web", "RunnerAdopted").is_empty()
    });
    fs::write(out.join("gate-long"), "").unwrap();
    let status = second.wait(DEADLINE);
    assert_exit(status, 0, &second.stderr());

    let task = env.task("web", "long");
    assert_eq!(task["state"], "done");
    assert_eq!(attempts(&task), 1);
    let adopted = env.events_of_type("web", "RunnerAdopted");
    assert_eq!(adopted.len(), 1, "{adopted:?}");
    assert_eq!(adopted[0]["details"]["engine_id"], id.as_str());
    assert_eq!(standin.calls_of(&["run"]).len(), 1);
    // The second dispatcher follows the output from where the attempt's log ends.
    let follows = standin.calls_of(&["logs", "--follow"]);
    assert_eq!(follows.len(), 2, "{follows:?}");
    assert!(follows[1][3].starts_with("--since="), "{follows:?}");
    assert_eq!(follows[1][4], id);
    assert_eq!(
        fs::read_to_string(env.path().join("ledger")).unwrap(),
        "long 1\n"
    );
}

/// Regression: `run --until-idle` ended at once with exit 4 ("idle, but web/t1 (ready) can
/// never run") when its docker pool's engine had not answered its first check yet: a
/// pool waiting for that answer counted as one that would never take the task.
#[test]
fn until_idle_waits_for_the_first_answer_of_a_slow_engine() {
    let env = Env::new();
    let standin = Standin::install(&env);
    fs::write(standin.state.join("slow-version"), "1").unwrap();
    docker_config(&env, 1, &cmd("args.sh", &["{task_id}"]), "", "");
    env.taskset("web", &[json!({"id": "t1"})]);

    let (status, log) = env.run_until_idle();
    assert_exit(status, 0, &log);
    assert_eq!(env.state_of("web", "t1"), "done");
    assert!(!log.contains("can never run"), "{log}");
}

/// The real engine, when one answers here (CI machines with Docker); skipped otherwise.
#[test]
fn the_real_docker_engine_runs_a_task_when_one_answers() {
    let answers = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success());
    if !answers {
        eprintln!(
            "skipped: no Docker engine answers `docker version` here; the stand-in tests above cover the docker pool"
        );
        return;
    }
    let env = Env::new();
    let command: Vec<String> = [
        "sh",
        "-c",
        "echo real-engine-$DISPATCHER_ATTEMPT; test -f \"$TASK_CONTEXT_FILE\"",
    ]
    .map(String::from)
    .to_vec();
    env.config(
        "",
        &format!(
            "{}{}",
            typed_pool(
                "docker",
                "box",
                1,
                &command,
                &[],
                "image = \"busybox:1.36\"\nengine_poll_interval = \"200ms\"\n",
            ),
            default_to("box"),
        ),
    );
    env.taskset("web", &[json!({"id": "real"})]);
    let (status, log) = env.run_until_idle();
    assert_exit(status, 0, &log);
    assert_eq!(env.state_of("web", "real"), "done");
    let text = fs::read_to_string(env.state().join("logs/web/real/attempt-1.log")).unwrap();
    assert!(text.contains("real-engine-1"), "{text}");
}

//! Docker pools end to end, against a STAND-IN `docker` (`tests/engines/docker`, a test
//! double: no Docker engine runs where these tests run). The stand-in records each argv and
//! plays the engine's answers; the programs of its "containers" are the real runner scripts
//! of `tests/runners/`, run as local processes, so what a runner saw and did is read from
//! what it wrote, and the argv the dispatcher gave the engine from the stand-in's log.
//! One test runs the real engine instead, and is skipped with a message when none answers.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{json, Value};
use support::engine_tests::Engine;
use support::standin::Standin;
use support::*;

/// A value that must reach the runner but never a command line.
const SECRET: &str = "s3cr3t-token-7f1e";

/// The docker pool `box` of these tests.
const DOCKER: Engine = Engine {
    kind: "docker",
    pool: "box",
    keys: "image = \"registry.example/agent:1\"\n",
    token: SECRET,
    noun: "container",
    start: &["run"],
    only_id: |standin| container_id(&only_container(standin)),
    // `docker logs --follow --since=… ID`
    since_at: 3,
    log_target: str::to_string,
};

/// The one container the stand-in was given: its directory.
fn only_container(standin: &Standin) -> PathBuf {
    let dirs = standin.dirs("docker");
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs[0].clone()
}

fn container_id(dir: &Path) -> String {
    dir.file_name().unwrap().to_string_lossy().into_owned()
}

#[test]
fn a_task_runs_in_a_container_with_its_labels_resources_and_secret_by_name_only() {
    let (case, runner_id, id) = DOCKER.run_t1_with_resources();
    let standin = &case.standin;
    let dir = only_container(standin);

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
    case.assert_runner_got_the_token_and_t1(&DOCKER, &runner_id);
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
    // The finished container is removed.
    assert_eq!(standin.calls_of(&["rm", "--force", &id]).len(), 1);
}

#[test]
fn a_failing_container_exit_code_is_a_failed_attempt_and_is_retried() {
    let case = DOCKER.a_failing_exit_code_is_retried();
    let finished = case.env.events_of_type("web", "RunnerFinished");
    let outcomes: Vec<&Value> = finished.iter().map(|e| &e["details"]["outcome"]).collect();
    assert_eq!(outcomes, [&json!("failed"), &json!("succeeded")]);
    assert_eq!(case.standin.calls_of(&["run"]).len(), 2);
}

#[test]
fn the_execution_timeout_stops_the_container_and_counts_as_timed_out() {
    let case = DOCKER.a_hanging_runner_times_out(&[]);
    let timed_out = case.env.events_of_type("web", "RunnerTimedOut");
    assert_eq!(timed_out[0]["details"]["reason"], "timed_out");
    let id = container_id(&only_container(&case.standin));
    let stops = case.standin.calls_of(&["stop"]);
    assert_eq!(stops, [vec!["docker", "stop", "-t", "1", id.as_str()]]);
}

#[test]
fn container_output_reaches_the_attempt_log() {
    DOCKER.output_reaches_the_attempt_log(2);
}

#[test]
fn status_json_shows_the_container_id_of_a_running_runner() {
    DOCKER.status_json_shows_the_engine_id(2);
}

#[test]
fn an_engine_that_does_not_answer_takes_no_tasks_while_a_local_pool_runs_its_own() {
    let (case, mut run) = DOCKER.a_silent_engine_takes_no_tasks_while_a_local_pool_runs(
        "down",
        "Cannot connect to the Docker daemon",
        2,
    );
    let report = status_json(&case.env);
    let local = report["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "local")
        .unwrap()
        .clone();
    assert!(local.get("engine_error").is_none(), "{local}");
    run.terminate();
}

#[test]
fn a_container_outlives_a_sigkilled_dispatcher_and_is_adopted_by_the_next() {
    DOCKER.a_runner_outlives_a_sigkilled_dispatcher_and_is_adopted();
}

/// Regression: `run --until-idle` ended at once with exit 4 ("idle, but web/t1 (ready) can
/// never run") when its docker pool's engine had not answered its first check yet: a
/// pool waiting for that answer counted as one that would never take the task.
#[test]
fn until_idle_waits_for_the_first_answer_of_a_slow_engine() {
    let env = Env::new();
    let standin = Standin::install(&env);
    fs::write(standin.state.join("slow-version"), "1").unwrap();
    DOCKER.config(&env, 1, &cmd("args.sh", &["{task_id}"]), "", "");
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

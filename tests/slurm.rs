//! `type = "slurm"` against a real single-node Slurm cluster (munged, slurmctld, slurmd from
//! Debian's packages), brought up once per test run by `tests/slurm/cluster.sh`. Without
//! the packages the tests say so and pass, unless `DISPATCHER_REQUIRE_SLURM=1` (CI sets it)
//! makes that a failure.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use serde_json::{json, Value};
use support::{max_concurrent, runner, status_json, toml_str, wait_for, Env, Run, DEADLINE};

/// Where the test cluster lives: one per machine (Slurm's ports are fixed).
const CLUSTER_DIR: &str = "/tmp/dispatcher-slurm-tests";

/// The cluster's `slurm.conf`, starting the cluster on first use; `None` when Slurm is not
/// installed here (and not required).
fn cluster() -> Option<&'static str> {
    static CONF: OnceLock<Option<String>> = OnceLock::new();
    CONF.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/slurm/cluster.sh");
        let out = Command::new(script)
            .args(["up", CLUSTER_DIR])
            .stdin(Stdio::null())
            .output()
            .expect("run tests/slurm/cluster.sh");
        let stderr = String::from_utf8_lossy(&out.stderr);
        match out.status.code() {
            Some(0) => Some(String::from_utf8_lossy(&out.stdout).trim().to_string()),
            Some(2) if std::env::var_os("DISPATCHER_REQUIRE_SLURM").is_none() => {
                eprintln!(
                    "SKIPPED: no Slurm here ({}); .ci/run installs it",
                    stderr.trim()
                );
                None
            }
            _ => panic!("cannot bring up the Slurm test cluster: {stderr}"),
        }
    })
    .as_deref()
}

/// `dispatcher run` with the cluster's config in its environment.
fn spawn(env: &Env, conf: &str, args: &[&str]) -> Run {
    env.set_var("SLURM_CONF", conf);
    env.spawn_run(args)
}

fn slurm(conf: &str, args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .env("SLURM_CONF", conf)
        .output()
        .expect("run a Slurm client");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `JobState` of a job, from the controller.
fn job_state(conf: &str, id: &str) -> String {
    let out = slurm(conf, &["scontrol", "show", "job", "-o", id]);
    out.split_whitespace()
        .find_map(|f| f.strip_prefix("JobState="))
        .unwrap_or_default()
        .to_string()
}

/// A config with one slurm pool `hpc` running `script TASK_ID hpc`, every task routed to it.
fn slurm_config(env: &Env, script: &str, max: usize, dispatcher: &str, extra: &str) -> PathBuf {
    let out = env.path().join("out");
    fs::create_dir_all(&out).unwrap();
    env.config(
        dispatcher,
        &format!(
            "[retry]\nmax_attempts = 1\ninitial_delay = \"100ms\"\n\n\
             [agent_pools.hpc]\ntype = \"slurm\"\nmax_concurrency = {max}\n\
             command = [{}, \"{{task_id}}\", \"hpc\"]\nengine_poll_interval = \"100ms\"\n\
             env = {{ OUT_DIR = {}, LEDGER = {} }}\n{extra}\n\n\
             [skill_mapping]\ndefault = [\"hpc\"]\n",
            toml_str(&runner(script)),
            toml_str(&out.display().to_string()),
            toml_str(&out.join("ledger").display().to_string()),
        ),
    );
    out
}

fn attempts(task: &Value) -> u64 {
    task["metadata"]["dispatcher"]["attempts"]
        .as_u64()
        .unwrap_or(0)
}

/// The engine id of the first runner shown by `status`, once there is one.
fn running_job(env: &Env) -> String {
    let mut id = String::new();
    wait_for("a runner with its Slurm job id in status", || {
        let report = status_json(env);
        match report["running"][0]["engine_id"].as_str() {
            Some(found) => {
                id = found.to_string();
                true
            }
            None => false,
        }
    });
    id
}

fn assert_exit(run: &mut Run, code: i32) {
    let status = run.wait(DEADLINE);
    let log = run.stderr();
    assert_eq!(
        status.code(),
        Some(code),
        "dispatcher log {}:\n{log}",
        run.log.display()
    );
    assert!(!log.contains("panicked"), "dispatcher panicked:\n{log}");
}

#[test]
fn a_task_runs_as_a_slurm_job_with_its_context_and_secrets_off_the_command_line() {
    let Some(conf) = cluster() else { return };
    let env = Env::new();
    let out = slurm_config(&env, "gated.sh", 1, "", "");
    // The same job also records its environment: a second pool runs slurm_env.sh.
    let secrets = env.path().join("secrets.env");
    fs::write(&secrets, "AGENT_SECRET=hunter2-slurm\n").unwrap();
    let text = fs::read_to_string(env.config_path()).unwrap().replace(
        "[skill_mapping]\ndefault = [\"hpc\"]",
        &format!(
            "[agent_pools.probe]\ntype = \"slurm\"\ncommand = [{}, \"{{task_id}}\"]\n\
             engine_poll_interval = \"100ms\"\nenv_file = {}\nenv = {{ OUT_DIR = {} }}\n\n\
             [skill_mapping]\ndefault = [\"hpc\"]\nprobe = [\"probe\"]",
            toml_str(&runner("slurm_env.sh")),
            toml_str(&secrets.display().to_string()),
            toml_str(&out.display().to_string()),
        ),
    );
    fs::write(env.config_path(), text).unwrap();
    env.taskset(
        "s",
        &[
            json!({"id": "gate"}),
            json!({"id": "probe", "required_skill": "probe"}),
        ],
    );
    let mut run = spawn(&env, conf, &["--until-idle"]);

    let job = running_job(&env);
    assert!(job.chars().all(|c| c.is_ascii_digit()), "{job}");
    let shown = slurm(conf, &["scontrol", "show", "job", "-o", &job]);
    let runner_id = env.task("s", "gate")["runner_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(shown.contains(&format!("JobName={runner_id}")), "{shown}");
    wait_for("the probe job to record its environment", || {
        out.join("probe.env").exists()
    });
    fs::write(out.join("gate-gate"), "").unwrap();
    assert_exit(&mut run, 0);

    assert_eq!(env.state_of("s", "gate"), "done");
    assert_eq!(env.state_of("s", "probe"), "done");
    let recorded = fs::read_to_string(out.join("probe.env")).unwrap();
    assert!(recorded.contains("secret=hunter2-slurm"), "{recorded}");
    assert!(recorded.contains("\"task_id\":\"probe\""), "{recorded}");
    let log = fs::read_to_string(env.state().join("logs/s/probe/attempt-1.log")).unwrap();
    assert!(log.contains("job output of probe"), "{log}");
    // The job's record in the controller (its command line, its arguments) holds no secret.
    let probe_job = env
        .events_of_type("s", "RunnerStarted")
        .into_iter()
        .find(|e| e["task_id"] == "probe")
        .expect("RunnerStarted for probe")["details"]["engine_id"]
        .as_str()
        .unwrap()
        .to_string();
    let shown = slurm(conf, &["scontrol", "show", "job", "-o", &probe_job]);
    assert!(shown.contains("JobState=COMPLETED"), "{shown}");
    assert!(!shown.contains("hunter2"), "{shown}");
}

#[test]
fn a_failing_job_is_a_failed_attempt_with_its_exit_code_and_is_retried() {
    let Some(conf) = cluster() else { return };
    let env = Env::new();
    slurm_config(&env, "fail.sh", 1, "", "env_file = \"/dev/null\"");
    let text = fs::read_to_string(env.config_path())
        .unwrap()
        .replace("max_attempts = 1", "max_attempts = 2");
    fs::write(env.config_path(), text).unwrap();
    env.taskset("s", &[json!({"id": "bad"})]);
    let mut run = spawn(&env, conf, &["--until-idle"]);
    assert_exit(&mut run, 3);
    let task = env.task("s", "bad");
    assert_eq!(task["state"], "failed");
    assert_eq!(attempts(&task), 2);
    let error = task["metadata"]["dispatcher"]["last_error"]
        .as_str()
        .unwrap();
    assert!(error.contains("exited with code 3"), "{error}");
    let log = fs::read_to_string(env.state().join("logs/s/bad/attempt-2.log")).unwrap();
    assert!(log.contains("failing on purpose (attempt 2)"), "{log}");
}

#[test]
fn the_execution_timeout_cancels_the_job_and_counts_as_timed_out() {
    let Some(conf) = cluster() else { return };
    let env = Env::new();
    slurm_config(&env, "hang.sh", 1, "", "timeout = \"1s\"");
    env.taskset("s", &[json!({"id": "slow"})]);
    let mut run = spawn(&env, conf, &["--until-idle"]);
    let job = running_job(&env);
    assert_exit(&mut run, 3);
    let task = env.task("s", "slow");
    assert_eq!(task["state"], "failed");
    let error = task["metadata"]["dispatcher"]["last_error"]
        .as_str()
        .unwrap();
    assert!(error.contains("execution timeout"), "{error}");
    assert_eq!(job_state(conf, &job), "CANCELLED");
}

#[test]
fn cancel_stops_the_job_and_fails_the_task() {
    let Some(conf) = cluster() else { return };
    let env = Env::new();
    slurm_config(&env, "gated.sh", 1, "", "");
    env.taskset("s", &[json!({"id": "victim"})]);
    let mut run = spawn(&env, conf, &["--until-idle"]);
    let job = running_job(&env);
    let out = env.output(&["cancel", "s/victim"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_exit(&mut run, 3);
    let task = env.task("s", "victim");
    assert_eq!(task["state"], "failed");
    assert_eq!(
        task["metadata"]["dispatcher"]["last_error"].as_str(),
        Some("cancelled")
    );
    assert_eq!(job_state(conf, &job), "CANCELLED");
}

#[test]
fn a_drain_cancels_the_jobs_and_gives_their_tasks_back() {
    let Some(conf) = cluster() else { return };
    let env = Env::new();
    slurm_config(
        &env,
        "gated.sh",
        2,
        "graceful_shutdown_timeout = \"1s\"",
        "",
    );
    env.taskset("s", &[json!({"id": "a"}), json!({"id": "b"})]);
    let mut run = spawn(&env, conf, &[]);
    wait_for("both jobs to run", || {
        let report = status_json(&env);
        let running = report["running"].as_array().unwrap();
        running.len() == 2 && running.iter().all(|r| r["engine_id"].is_string())
    });
    let jobs: Vec<String> = status_json(&env)["running"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["engine_id"].as_str().unwrap().to_string())
        .collect();
    run.signal(libc::SIGTERM);
    assert_exit(&mut run, 130);
    for id in ["a", "b"] {
        let task = env.task("s", id);
        assert_eq!(task["state"], "ready", "{task}");
        assert_eq!(
            attempts(&task),
            0,
            "an interrupted attempt is not counted: {task}"
        );
    }
    for job in &jobs {
        assert_eq!(job_state(conf, job), "CANCELLED");
    }
}

#[test]
fn a_restarted_dispatcher_adopts_the_running_job_by_its_id() {
    let Some(conf) = cluster() else { return };
    let env = Env::new();
    let out = slurm_config(&env, "gated.sh", 1, "", "");
    env.taskset("s", &[json!({"id": "long"})]);
    let mut first = spawn(&env, conf, &[]);
    let job = running_job(&env);
    first.signal(libc::SIGKILL);
    first.wait(DEADLINE);
    assert_eq!(job_state(conf, &job), "RUNNING");
    let offline = status_json(&env);
    assert_eq!(offline["dispatcher"]["running"], false);
    assert_eq!(
        offline["running"][0]["engine_id"],
        job.as_str(),
        "status without a dispatcher names the job: {offline}"
    );

    let mut second = spawn(&env, conf, &["--until-idle"]);
    wait_for("status to show the adopted job", || {
        let r = &status_json(&env)["running"][0];
        r["adopted"] == true && r["engine_id"] == job.as_str()
    });
    let adopted = env.events_of_type("s", "RunnerAdopted");
    assert_eq!(adopted.len(), 1, "{adopted:?}");
    assert_eq!(adopted[0]["details"]["engine_id"], job.as_str());
    fs::write(out.join("gate-long"), "").unwrap();
    assert_exit(&mut second, 0);
    let task = env.task("s", "long");
    assert_eq!(task["state"], "done");
    assert_eq!(attempts(&task), 1);
    assert_eq!(
        fs::read_to_string(out.join("ledger")).unwrap(),
        "long 1\n",
        "the job ran once"
    );
    assert!(env.events_of_type("s", "RunnerLost").is_empty());
}

#[test]
fn fifty_jobs_finish_and_never_exceed_the_pool_cap() {
    let Some(conf) = cluster() else { return };
    let env = Env::new();
    let out = slurm_config(&env, "record.sh", 4, "", "");
    let tasks: Vec<Value> = (0..50).map(|n| json!({"id": format!("t{n:02}")})).collect();
    env.taskset("s", &tasks);
    let mut run = spawn(&env, conf, &["--until-idle"]);
    assert_exit(&mut run, 0);
    let taskset = env.read_taskset("s");
    let done = taskset["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["state"] == "done")
        .count();
    assert_eq!(done, 50);
    let marks = support::ledger(&out.join("ledger"));
    assert_eq!(marks.iter().filter(|m| m.start).count(), 50);
    let peak = max_concurrent(marks.iter().map(|m| (m.ns, m.start)));
    assert!(
        peak <= 4,
        "{peak} jobs ran at once with max_concurrency = 4"
    );
    assert!(peak >= 2, "the jobs never overlapped: peak {peak}");
}

#[test]
fn an_unreachable_cluster_disables_its_pool_while_local_pools_run() {
    // Needs no cluster: the pool points at one that does not exist.
    let env = Env::new();
    let out = slurm_config(&env, "gated.sh", 1, "", "");
    let text = fs::read_to_string(env.config_path()).unwrap().replace(
        "[skill_mapping]\ndefault = [\"hpc\"]",
        &format!(
            "{}\n[skill_mapping]\ndefault = [\"hpc\"]\nlocal = [\"here\"]",
            support::pool(
                "here",
                1,
                &support::cmd("record.sh", &["{task_id}", "here"]),
                &[("LEDGER", out.join("local").display().to_string())],
                ""
            )
        ),
    );
    fs::write(env.config_path(), text).unwrap();
    env.taskset(
        "s",
        &[
            json!({"id": "remote"}),
            json!({"id": "near", "required_skill": "local"}),
        ],
    );
    let mut run = spawn(&env, "/nonexistent/slurm.conf", &[]);
    wait_for("the local task to finish", || {
        env.state_of("s", "near") == "done"
    });
    wait_for("status to report the slurm pool's engine", || {
        let report = status_json(&env);
        report["pools"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "hpc" && p["engine_error"].is_string())
    });
    assert_eq!(env.state_of("s", "remote"), "ready");
    let human = String::from_utf8_lossy(&env.output(&["status"]).stdout).into_owned();
    assert!(
        human.contains("pool hpc: engine does not answer"),
        "{human}"
    );
    run.signal(libc::SIGTERM);
    run.wait(DEADLINE);
    let log = run.stderr();
    assert!(
        log.contains("pool hpc: its engine does not answer"),
        "{log}"
    );
}

//! End-to-end checks that docker and kubernetes pools share, run against the stand-ins of
//! [`super::standin`]: each takes an [`Engine`] that says how the engine's pool is set up and
//! how its runners show, asserts what every engine must do, and hands back the workspace so
//! that the test binary can add what only its engine does.

use std::fs;

use serde_json::json;

use super::standin::Standin;
use super::*;

/// How one engine's pool is configured and how its runners show in the stand-in's records.
pub struct Engine {
    /// The pool's `type` (`docker`, `kubernetes`).
    pub kind: &'static str,
    /// The pool's name; tasks are routed to it by default.
    pub pool: &'static str,
    /// The pool's engine keys (image, namespace, context …), one a line.
    pub keys: &'static str,
    /// What every runner gets as `API_TOKEN`.
    pub token: &'static str,
    /// What a runner of this engine is called in messages (`container`, `job`).
    pub noun: &'static str,
    /// The words of the stand-in call that starts a runner (`run`, `create`).
    pub start: &'static [&'static str],
    /// The engine id of the one runner the stand-in was given; panics unless there is one.
    pub only_id: fn(&Standin) -> String,
    /// Where the `--since=` argument stands in a `logs --follow` call; the argument naming
    /// the runner follows it.
    pub since_at: usize,
    /// How a `logs` call names a runner, from its engine id.
    pub log_target: fn(&str) -> String,
}

/// A test's workspace with the stand-ins installed. The stand-in is the first field so that
/// it is dropped first, killing the programs still running before the temp dir goes.
pub struct Case {
    pub standin: Standin,
    pub env: Env,
}

impl Case {
    /// Asserts that runner `runner_id` saw the engine's token in its environment and the
    /// task id `t1` as its one argument (what `args.sh` records).
    pub fn assert_runner_got_the_token_and_t1(&self, engine: &Engine, runner_id: &str) {
        let out = self.env.path().join("out");
        let seen = fs::read_to_string(out.join(format!("{runner_id}.env"))).unwrap();
        assert!(
            seen.contains(&format!("API_TOKEN={}", engine.token)),
            "{seen}"
        );
        let args = fs::read_to_string(out.join(format!("{runner_id}.args"))).unwrap();
        assert_eq!(args, "t1\n");
    }
}

impl Engine {
    /// Writes a config with this engine's pool (2 runners) running `command` with
    /// `pool_extra` keys, `OUT_DIR`, `LEDGER` and `API_TOKEN`; tasks routed to it by default,
    /// `max_attempts` attempts per task, then `extra` (right after `[skill_mapping]`).
    pub fn config(
        &self,
        env: &Env,
        max_attempts: u32,
        command: &[String],
        pool_extra: &str,
        extra: &str,
    ) {
        let out = out_dir(env);
        env.config(
            "stop_grace_period = \"1s\"",
            &format!(
                "[retry]\nmax_attempts = {max_attempts}\ninitial_delay = \"100ms\"\n\n{}{}{extra}",
                typed_pool(
                    self.kind,
                    self.pool,
                    2,
                    command,
                    &[
                        ("OUT_DIR", out.display().to_string()),
                        ("LEDGER", env.path().join("ledger").display().to_string()),
                        ("API_TOKEN", self.token.to_string()),
                    ],
                    &format!(
                        "{}engine_poll_interval = \"100ms\"\n{pool_extra}",
                        self.keys
                    ),
                ),
                default_to(self.pool),
            ),
        );
    }

    /// A workspace with the stand-ins installed and `flags` set on them (see
    /// [`Standin::set`]), configured by [`Engine::config`].
    pub fn case(
        &self,
        flags: &[&str],
        max_attempts: u32,
        command: &[String],
        pool_extra: &str,
        extra: &str,
    ) -> Case {
        let env = Env::new();
        let standin = Standin::install(&env);
        for flag in flags {
            standin.set(flag);
        }
        self.config(&env, max_attempts, command, pool_extra, extra);
        Case { standin, env }
    }

    /// Runs task `t1` (half a CPU, 256 MB) to done with `args.sh {task_id}`; returns the
    /// workspace, the runner's id and its engine id, which `RunnerStarted` must name.
    pub fn run_t1_with_resources(&self) -> (Case, String, String) {
        let case = self.case(&[], 2, &cmd("args.sh", &["{task_id}"]), "", "");
        let env = &case.env;
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
        let id = (self.only_id)(&case.standin);
        assert_eq!(started[0]["details"]["engine_id"], id.as_str());
        (case, runner_id, id)
    }

    /// A runner that exits 5 and then 0 (`flaky.sh`): the first attempt fails with that
    /// code, a retry is scheduled, and the second attempt finishes the task.
    pub fn a_failing_exit_code_is_retried(&self) -> Case {
        let case = self.case(&[], 2, &cmd("flaky.sh", &[]), "", "");
        let env = &case.env;
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
        case
    }

    /// A runner that never ends, under a 1s pool timeout and a single attempt: the task
    /// fails as timed out and the run exits 3 (a task failed). `flags` set up the stand-in.
    pub fn a_hanging_runner_times_out(&self, flags: &[&str]) -> Case {
        let case = self.case(flags, 1, &cmd("hang.sh", &[]), "timeout = \"1s\"", "");
        let env = &case.env;
        env.taskset("web", &[json!({"id": "slow"})]);

        let (status, log) = env.run_until_idle();
        assert_exit(status, 3, &log);
        let task = env.task("web", "slow");
        assert_eq!(task["state"], "failed");
        assert_eq!(
            task["metadata"]["dispatcher"]["last_error"],
            "execution timeout exceeded"
        );
        let timed_out = env.events_of_type("web", "RunnerTimedOut");
        assert_eq!(timed_out.len(), 1, "{timed_out:?}");
        case
    }

    /// What a runner writes to stdout and stderr ends up in its attempt's log, after the
    /// dispatcher's header line.
    pub fn output_reaches_the_attempt_log(&self, max_attempts: u32) -> Case {
        let command: Vec<String> = ["sh", "-c", "echo to-stdout; echo to-stderr >&2"]
            .map(String::from)
            .to_vec();
        let case = self.case(&[], max_attempts, &command, "", "");
        let env = &case.env;
        env.taskset("web", &[json!({"id": "talk"})]);

        let (status, log) = env.run_until_idle();
        assert_exit(status, 0, &log);
        let text = fs::read_to_string(env.state().join("logs/web/talk/attempt-1.log")).unwrap();
        assert!(text.starts_with("# dispatcher: runner "), "{text}");
        assert!(text.contains("\nto-stdout\n"), "{text}");
        assert!(text.contains("to-stderr\n"), "{text}");
        case
    }

    /// `status --json` names the engine id of a runner while it runs (held by its gate).
    pub fn status_json_shows_the_engine_id(&self, max_attempts: u32) {
        let case = self.case(&[], max_attempts, &cmd("gated.sh", &["{task_id}"]), "", "");
        let env = &case.env;
        env.taskset("web", &[json!({"id": "held"})]);
        let out = env.path().join("out");

        let mut run = env.spawn_run(&["--until-idle"]);
        wait_for("the runner to start", || out.join("held.pid").exists());
        let id = (self.only_id)(&case.standin);
        wait_for("status to show the engine id", || {
            status_json(env)["running"]
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

    /// With the stand-in's `flag` set the engine does not answer (its client prints
    /// `error`): the pool takes no task and says why, while a local pool beside it runs its
    /// own. Returns the workspace and the dispatcher, still running, for more checks.
    pub fn a_silent_engine_takes_no_tasks_while_a_local_pool_runs(
        &self,
        flag: &str,
        error: &str,
        max_attempts: u32,
    ) -> (Case, Run) {
        let local = pool(
            "local",
            1,
            &["sh".to_string(), "-c".to_string(), "exit 0".to_string()],
            &[],
            "",
        );
        let case = self.case(
            &[flag],
            max_attempts,
            &cmd("args.sh", &["{task_id}"]),
            "",
            // `extra` follows the `[skill_mapping]` table: its first line is a skill route.
            &format!("local = [\"local\"]\n\n{local}"),
        );
        let env = &case.env;
        env.taskset(
            "web",
            &[
                json!({"id": "remote"}),
                json!({"id": "here", "required_skill": "local"}),
            ],
        );

        let run = env.spawn_run(&[]);
        wait_for("the local task to be done", || {
            env.state_of("web", "here") == "done"
        });
        wait_for("status to report the engine error", || {
            status_json(env)["pools"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| {
                    p["name"] == self.pool
                        && p["engine_error"]
                            .as_str()
                            .is_some_and(|e| e.contains(error))
                })
        });
        let message = format!(
            "pool {}: its engine does not answer, so the pool takes no tasks",
            self.pool
        );
        wait_for("the dispatcher log to name the pool's engine", || {
            run.stderr().contains(&message)
        });
        assert_eq!(env.state_of("web", "remote"), "ready");
        assert!(
            case.standin.calls_of(self.start).is_empty(),
            "{:?}",
            case.standin.calls()
        );
        (case, run)
    }

    /// A runner survives its dispatcher's SIGKILL; the next dispatcher adopts it instead of
    /// starting another, follows its output from where the log ends, and finishes the task
    /// in the one attempt.
    pub fn a_runner_outlives_a_sigkilled_dispatcher_and_is_adopted(&self) {
        let case = self.case(&[], 2, &cmd("gated.sh", &["{task_id}"]), "", "");
        let (env, standin) = (&case.env, &case.standin);
        env.taskset("web", &[json!({"id": "long"})]);
        let out = env.path().join("out");

        let mut first = env.spawn_run(&[]);
        wait_for("the runner to start", || out.join("long.pid").exists());
        let id = (self.only_id)(standin);
        wait_for(&format!("the {} to be recorded", self.noun), || {
            !env.events_of_type("web", "RunnerStarted").is_empty()
        });
        first.signal(libc::SIGKILL);
        first.wait(DEADLINE);
        let pid: u32 = fs::read_to_string(out.join("long.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(pid_alive(pid), "the {} died with its dispatcher", self.noun);

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
        assert_eq!(standin.calls_of(self.start).len(), 1);
        // The second dispatcher follows the output from where the attempt's log ends.
        let follows = standin.calls_of(&["logs", "--follow"]);
        assert_eq!(follows.len(), 2, "{follows:?}");
        assert!(
            follows[1][self.since_at].starts_with("--since="),
            "{follows:?}"
        );
        assert_eq!(follows[1][self.since_at + 1], (self.log_target)(&id));
        assert_eq!(
            fs::read_to_string(env.path().join("ledger")).unwrap(),
            "long 1\n"
        );
    }
}

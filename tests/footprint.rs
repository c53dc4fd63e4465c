//! Footprint-aware scheduling end to end: tasks of one repository whose `metadata.touches`
//! overlap never run side by side, the waiting one is in `status` with the task it waits
//! for, and nothing else is held back (other repositories, tasks without touches, tasks
//! whose touches are malformed and therefore ignored).
//!
//! Runners are `tests/runners/hold.sh`: each writes "start"/"end" ledger lines and works
//! until the test opens its gate file, so what overlapped is read from what really ran and
//! no check depends on timing. The repositories named here have no `[repo_pool]`: their
//! tasks run in scratch directories, and the footprint rule still applies by repository name.

mod support;

use std::fs;
use std::path::PathBuf;

use serde_json::{json, Value};
use support::*;

/// A pool of `max` runners of `hold.sh`, the ledger and the gates' directory.
struct Setup {
    env: Env,
    ledger: PathBuf,
    out: PathBuf,
}

impl Setup {
    fn new(max: usize, extra: &str) -> Setup {
        let command = cmd("hold.sh", &["{task_id}", "work"]);
        Setup::with(Env::new(), "", max, &command, &[], extra)
    }

    /// `env` configured with a pool `work` of `max` runners of `command` with the ledger, the
    /// gates' directory and `more_vars` in their environment; `dispatcher` lines go in
    /// `[dispatcher]`, `extra` after `[skill_mapping]`.
    fn with(
        env: Env,
        dispatcher: &str,
        max: usize,
        command: &[String],
        more_vars: &[(&str, String)],
        extra: &str,
    ) -> Setup {
        let ledger = env.path().join("ledger");
        let out = out_dir(&env);
        let mut vars = vec![
            ("LEDGER", ledger.display().to_string()),
            ("OUT_DIR", out.display().to_string()),
        ];
        vars.extend(more_vars.iter().cloned());
        env.config(
            dispatcher,
            &format!("{}{extra}", only_pool("work", max, command, &vars, "")),
        );
        Setup { env, ledger, out }
    }

    /// Writes `tasks` as the taskset `s` and starts `run --until-idle` on the workspace.
    fn start(&self, tasks: &[Value]) -> Run {
        self.env.taskset("s", tasks);
        self.env.spawn_run(&["--until-idle"])
    }

    fn open_gate(&self, task: &str) {
        fs::write(self.out.join(format!("gate-{task}")), "").unwrap();
    }

    /// Opens the gates of `tasks`, then waits for `run` to end and asserts it exited 0.
    fn open_gates_and_finish(&self, run: &mut Run, tasks: &[&str]) {
        for task in tasks {
            self.open_gate(task);
        }
        let status = run.wait(DEADLINE);
        assert_exit(status, 0, &run.stderr());
    }

    fn marks(&self) -> Vec<Mark> {
        ledger(&self.ledger)
    }

    fn started(&self, task: &str) -> bool {
        self.marks().iter().any(|m| m.start && m.task == task)
    }

    /// `(start, end)` of the one run of `task`.
    fn span(&self, task: &str) -> (u128, u128) {
        span(&self.marks(), task)
    }

    /// Waits until a task is reported waiting for a footprint or `task` starts, then asserts
    /// that `task` did not start beside `running`. Either outcome ends the wait, so a broken
    /// rule fails at once, not at the deadline.
    fn assert_held_back(&self, task: &str, running: &str) {
        wait_for(
            &format!("{task} to be reported waiting, or to start"),
            || !waiting_for_footprint(&self.env).is_empty() || self.started(task),
        );
        assert!(
            !self.started(task),
            "{task} started beside {running}: {:?}",
            self.marks()
        );
    }
}

fn task(id: &str, priority: i64, metadata: &Value) -> Value {
    json!({"id": id, "priority": priority, "metadata": metadata})
}

/// A task of repository `app` that touches `touches`.
fn app_task(id: &str, priority: i64, touches: &[&str]) -> Value {
    task(
        id,
        priority,
        &json!({"repo_name": "app", "touches": touches}),
    )
}

fn overlapped(a: (u128, u128), b: (u128, u128)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

fn waiting_for_footprint(env: &Env) -> Vec<Value> {
    status_json(env)["waiting_for_footprint"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn two_overlapping_tasks_never_overlap_in_time_while_a_disjoint_one_runs_beside_them() {
    let setup = Setup::new(3, "");
    let env = &setup.env;
    let mut run = setup.start(&[
        app_task("A", 9, &["src/auth/**"]),
        app_task("B", 8, &["src/auth/login.rs"]),
        app_task("C", 7, &["docs/**"]),
    ]);
    // A and C start at once; B, behind A in line, is passed over and C is not held up.
    wait_for("A and C to start", || {
        setup.started("A") && setup.started("C")
    });
    setup.assert_held_back("B", "A");
    assert_eq!(env.state_of("s", "B"), "ready");

    setup.open_gate("A");
    wait_for("B to start after A", || setup.started("B"));
    setup.open_gates_and_finish(&mut run, &["B", "C"]);

    let (a, b, c) = (setup.span("A"), setup.span("B"), setup.span("C"));
    assert!(!overlapped(a, b), "A and B overlapped: {:?}", setup.marks());
    assert!(
        overlapped(c, a) || overlapped(c, b),
        "C ran alone: {:?}",
        setup.marks()
    );
}

#[test]
fn status_shows_the_waiting_task_with_the_task_it_waits_for() {
    let setup = Setup::new(3, "[metrics]\ntextfile = \"metrics.prom\"\n");
    let env = &setup.env;
    let mut run = setup.start(&[
        app_task("A", 9, &["src/auth/**", "README.md"]),
        app_task("B", 8, &["src/auth/login.rs"]),
    ]);
    wait_for("A to start", || setup.started("A"));
    setup.assert_held_back("B", "A");
    let waiting = waiting_for_footprint(env);
    assert_eq!(
        waiting,
        [json!({
            "spec": "s", "task_id": "B", "repo": "app",
            "conflicts_with": {"spec": "s", "task_id": "A", "paths": ["src/auth/**"]},
            "paths": ["src/auth/login.rs"],
        })]
    );
    let human = env.output(&["status"]);
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(text.contains("WAITING FOR A FOOTPRINT"), "{text}");
    assert!(text.contains("s/B") && text.contains("s/A"), "{text}");
    let metrics = env.path().join("metrics.prom");
    wait_for("the footprint gauge", || {
        fs::read_to_string(&metrics)
            .unwrap_or_default()
            .lines()
            .any(|l| l == "dispatcher_waiting_for_footprint 1")
    });

    setup.open_gates_and_finish(&mut run, &["A", "B"]);
    assert!(setup.span("A").1 < setup.span("B").0, "{:?}", setup.marks());
    // Logged once per wait, not on every turn it went on.
    let log = run.stderr();
    assert_eq!(
        log.matches("task s/B waits for s/A").count(),
        1,
        "log:\n{log}"
    );
    let events = env.events_of_type("s", "TaskWaitingForFootprint");
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["task_id"], "B");
    assert_eq!(events[0]["details"]["conflicts_with_task_id"], "A");
    assert!(
        waiting_for_footprint(env).is_empty(),
        "no dispatcher, no wait"
    );
}

#[test]
fn different_repositories_never_conflict() {
    let setup = Setup::new(3, "");
    let env = &setup.env;
    // A second spec, same repository as "one": specs do not matter, repositories do.
    env.taskset(
        "t",
        &[task(
            "same",
            7,
            &json!({"repo_name": "one", "touches": ["src/x.rs"]}),
        )],
    );
    let mut run = setup.start(&[
        task("one", 9, &json!({"repo_name": "one", "touches": ["**"]})),
        task("two", 8, &json!({"repo_name": "two", "touches": ["**"]})),
    ]);
    wait_for("both repositories' tasks to run", || {
        setup.started("one") && setup.started("two")
    });
    // The pool has room for "same" too: only its footprint holds it back.
    wait_for("t/same to wait for s/one, or to start", || {
        setup.started("same")
            || waiting_for_footprint(env)
                .iter()
                .any(|w| w["task_id"] == "same" && w["conflicts_with"]["task_id"] == "one")
    });
    assert!(!setup.started("same"));
    setup.open_gates_and_finish(&mut run, &["one", "two", "same"]);
    assert!(overlapped(setup.span("one"), setup.span("two")));
    assert!(setup.span("one").1 < setup.span("same").0);
}

#[test]
fn tasks_without_touches_or_without_a_repository_are_unaffected() {
    let setup = Setup::new(3, "");
    let env = &setup.env;
    let mut run = setup.start(&[
        app_task("all", 9, &["**"]),
        task("untouched", 8, &json!({"repo_name": "app"})),
        task("nowhere", 7, &json!({"touches": ["**"]})),
    ]);
    wait_for("all three to run at once", || {
        ["all", "untouched", "nowhere"]
            .iter()
            .all(|t| setup.started(t))
    });
    assert!(waiting_for_footprint(env).is_empty());
    setup.open_gates_and_finish(&mut run, &["all", "untouched", "nowhere"]);
}

#[test]
fn malformed_touches_are_reported_once_and_ignored() {
    let setup = Setup::new(3, "");
    let env = &setup.env;
    let mut run = setup.start(&[
        app_task("all", 9, &["**"]),
        app_task("absolute", 8, &["/etc/**"]),
        task(
            "string",
            7,
            &json!({"repo_name": "app", "touches": "src/**"}),
        ),
    ]);
    // Ignored footprints conflict with nobody: all three run beside the one touching "**".
    wait_for("all three to run at once", || {
        ["all", "absolute", "string"]
            .iter()
            .all(|t| setup.started(t))
    });
    let errors = status_json(env)["footprint_errors"].clone();
    assert_eq!(
        errors,
        json!([
            {"spec": "s", "task_id": "absolute",
             "error": "metadata.touches[0] \"/etc/**\" is absolute; patterns are relative to the repository root"},
            {"spec": "s", "task_id": "string",
             "error": "metadata.touches must be a list of path patterns, not a string"},
        ])
    );
    let human = String::from_utf8_lossy(&env.output(&["status"]).stdout).into_owned();
    assert!(human.contains("FOOTPRINTS IGNORED"), "{human}");
    setup.open_gates_and_finish(&mut run, &["all", "absolute", "string"]);
    let log = run.stderr();
    assert_eq!(
        log.matches("task s/absolute: metadata.touches[0]").count(),
        1,
        "logged once:\n{log}"
    );
}

#[test]
fn a_footprint_is_learned_from_the_patch_of_an_earlier_attempt() {
    let env = Env::new();
    let origin = make_origin(&env, "app", &[]);
    let repo_pool = format!(
        "\n[retry]\nmax_attempts = 3\ninitial_delay = \"100ms\"\n\n\
         [repo_pool]\ndir = \"workspaces\"\n\n[[repo_pool.repos]]\nname = \"app\"\n\
         url = {}\nslots = 2\nbase_branch = \"main\"\n",
        toml_str(&origin.display().to_string()),
    );
    let setup = Setup::with(
        env,
        "learn_footprints = true",
        2,
        &cmd("learn.sh", &["{task_id}"]),
        &[
            ("FAIL_FIRST", "L".to_string()),
            ("TOUCH", "src/auth/login.rs".to_string()),
        ],
        &repo_pool,
    );
    let env = &setup.env;
    // L declares nothing; its first attempt changes src/auth/login.rs and fails. A touches
    // src/auth/** and holds its slot until the test lets it go.
    let mut run = setup.start(&[
        task("L", 9, &json!({"repo_name": "app"})),
        app_task("A", 8, &["src/auth/**"]),
    ]);
    wait_for("A to run", || setup.started("A"));
    // L's retry now has the footprint its first patch names, which overlaps A's.
    wait_for("L to wait for A, or to start", || {
        setup.started("L")
            || waiting_for_footprint(env).iter().any(|w| {
                w["task_id"] == "L"
                    && w["conflicts_with"]["task_id"] == "A"
                    && w["paths"] == json!(["src/auth/login.rs"])
            })
    });
    assert!(!setup.started("L"), "L ran beside A: {:?}", setup.marks());
    let artifacts = env.task("s", "L")["artifacts"].clone();
    assert_eq!(
        artifacts[0]["metadata"]["paths"],
        json!(["src/auth/login.rs"]),
        "{artifacts}"
    );

    setup.open_gates_and_finish(&mut run, &["A", "L"]);
    // L ran twice (its first attempt failed), so its first start is the one to compare.
    let marks = setup.marks();
    let end_a = marks.iter().find(|m| !m.start && m.task == "A").unwrap().ns;
    let start_l = marks.iter().find(|m| m.start && m.task == "L").unwrap().ns;
    assert!(end_a < start_l, "{marks:?}");
}

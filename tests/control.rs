//! Scheduling policies, quotas, live control and deadlock checks, end to end: fair-share and
//! its weights, `skill-based` against `priority`, `starvation_after`, CPU and memory quotas,
//! `pool disable`/`enable`, `priority`, `cancel` and `retry` on a running dispatcher and
//! without one, SIGHUP reloads, and the deadlock check of `run` (`action = "fail"` too).
//!
//! Runners are the scripts under `tests/runners/`. `hold.sh` records "start"/"end" ledger lines
//! with nanosecond timestamps and keeps running until the test opens its gate file, so what
//! ran, in which order and alongside what is read from the ledger, and every wait is for a
//! condition with a deadline, never for a guessed time.

mod support;

use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;
use std::process::Output;

use serde_json::{json, Value};
use support::*;

// ----- helpers -------------------------------------------------------------------------------

/// The files a test's runners share with it: the ledger, `$OUT_DIR` (pids, per-task gates)
/// and the gate that releases every runner at once.
struct Bench {
    ledger: PathBuf,
    out: PathBuf,
    gate: PathBuf,
}

impl Bench {
    fn new(env: &Env) -> Bench {
        let out = env.path().join("out");
        fs::create_dir_all(&out).unwrap();
        Bench {
            ledger: env.path().join("ledger"),
            out,
            gate: env.path().join("gate"),
        }
    }

    /// The environment every runner script here reads.
    fn vars(&self) -> Vec<(&'static str, String)> {
        vec![
            ("LEDGER", self.ledger.display().to_string()),
            ("OUT_DIR", self.out.display().to_string()),
            ("GATE", self.gate.display().to_string()),
        ]
    }

    /// Lets `hold.sh` of `task` finish.
    fn open(&self, task: &str) {
        fs::write(self.out.join(format!("gate-{task}")), "").unwrap();
    }

    /// Lets every runner finish, now and from now on.
    fn open_all(&self) {
        fs::write(&self.gate, "").unwrap();
    }

    fn marks(&self) -> Vec<Mark> {
        ledger(&self.ledger)
    }

    /// Tasks in the order their runners started.
    fn started(&self) -> Vec<String> {
        self.marks()
            .into_iter()
            .filter(|m| m.start)
            .map(|m| m.task)
            .collect()
    }

    /// Pids `hold.sh` runners recorded, in start order.
    fn pids(&self) -> Vec<u32> {
        fs::read_to_string(self.out.join("pids"))
            .unwrap_or_default()
            .lines()
            .map(|l| l.trim().parse().expect("pid line"))
            .collect()
    }
}

/// Tasks whose runner started and has not recorded its end.
fn running_now(marks: &[Mark]) -> BTreeSet<String> {
    let mut running = BTreeSet::new();
    for mark in marks {
        if mark.start {
            running.insert(mark.task.clone());
        } else {
            running.remove(&mark.task);
        }
    }
    running
}

/// The most of `weight` that runners held at once, over every start and end in time order.
/// A start and an end at the same nanosecond count as overlapping (starts first), so the
/// measure errs on the high side.
fn peak(marks: &[Mark], weight: impl Fn(&str) -> f64) -> f64 {
    let mut points: Vec<&Mark> = marks.iter().collect();
    points.sort_by_key(|m| (m.ns, !m.start));
    let (mut now, mut max) = (0.0_f64, 0.0_f64);
    for mark in points {
        if mark.start {
            now += weight(&mark.task);
            max = max.max(now);
        } else {
            now -= weight(&mark.task);
        }
    }
    max
}

fn meta(env: &Env, spec: &str, id: &str) -> Value {
    env.task(spec, id)["metadata"]["dispatcher"].clone()
}

/// `<state_dir>/events.jsonl`: the events that belong to no spec.
fn dispatcher_events(env: &Env, event_type: &str) -> Vec<Value> {
    fs::read_to_string(env.state().join("events.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("event line is JSON"))
        .filter(|e| e["event_type"] == event_type)
        .collect()
}

fn events_for(env: &Env, spec: &str, event_type: &str, task: &str) -> Vec<Value> {
    env.events_of_type(spec, event_type)
        .into_iter()
        .filter(|e| e["task_id"] == task)
        .collect()
}

/// The pool named `name` in a `status --json` report.
fn pool_report(report: &Value, name: &str) -> Value {
    report["pools"]
        .as_array()
        .expect("pools")
        .iter()
        .find(|p| p["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no pool {name} in {report:#}"))
}

/// Waits until the running dispatcher has read the taskset of `spec` as it is on disk now
/// (its status shows that version), so a change made by a command has reached its queue.
fn wait_until_dispatcher_read(env: &Env, spec: &str) {
    wait_until_read_per(env, spec, "dispatcher.toml");
}

/// `status --json` with the configuration file `config`.
fn status_per(env: &Env, config: &str) -> Value {
    let out = env.output(&["--config", config, "status", "--json"]);
    assert_eq!(out.status.code(), Some(0), "status: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).expect("status --json prints JSON")
}

/// [`wait_until_dispatcher_read`], asking `status` with the configuration file `config`.
fn wait_until_read_per(env: &Env, spec: &str, config: &str) {
    let version = env.read_taskset(spec)["version"].as_u64().unwrap();
    wait_for(
        &format!("the dispatcher to read {spec} version {version}"),
        || {
            status_per(env, config)["tasksets"]
                .as_array()
                .is_some_and(|sets| {
                    sets.iter().any(|s| {
                        s["spec"] == spec && s["version"].as_u64().is_some_and(|v| v >= version)
                    })
                })
        },
    );
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Naive local time in the registry's format, `seconds_ago` before now.
fn local_time(seconds_ago: i64) -> String {
    (chrono::Local::now().naive_local() - chrono::Duration::seconds(seconds_ago))
        .format("%Y-%m-%dT%H:%M:%S%.6f")
        .to_string()
}

// ----- fair-share ----------------------------------------------------------------------------

/// Runs specs `a` and `b` (`per_spec` gated tasks each) on one `fair-share` pool of 4 and, at
/// every decision, checks how the 4 places are split while both specs still have tasks
/// waiting. Runners are released a few at a time in a fixed pattern (one of a, two of a, one
/// of b, one of each, two of b), so the dispatcher has to rebalance after every kind of
/// change; after each release the test waits until the pool is full again, then reads the
/// split from the ledger. Returns how many decisions were checked.
///
/// Why decisions and not every instant of a free-running ledger: two runners of one spec can
/// end within microseconds of each other, and the four launcher threads start the runners of
/// one decision in any order, so the raw ledger of short runners shows gaps of 2 that no
/// scheduler could avoid. Gated runners make every decision observable instead.
fn fair_share_split(weights: &str, per_spec: usize, expected: (usize, usize)) -> usize {
    const PLACES: usize = 4;
    let env = Env::new();
    let bench = Bench::new(&env);
    env.config(
        "scheduling_policy = \"fair-share\"",
        &format!(
            "{weights}\n{}",
            only_pool(
                "shared",
                PLACES,
                &cmd("hold.sh", &["{task_id}", "{spec}"]),
                &bench.vars(),
                ""
            ),
        ),
    );
    for spec in ["a", "b"] {
        let tasks: Vec<Value> = (0..per_spec)
            .map(|i| json!({"id": format!("{spec}{i:02}")}))
            .collect();
        env.taskset(spec, &tasks);
    }
    let total = 2 * per_spec;
    let mut run = env.spawn_run(&["--until-idle"]);
    let patterns: [&[&str]; 5] = [&["a"], &["a", "a"], &["b"], &["a", "b"], &["b", "b"]];
    let mut released: BTreeSet<String> = BTreeSet::new();
    let mut checked = 0;
    for step in 0.. {
        let mut marks = Vec::new();
        wait_for(&format!("the pool to fill again (step {step})"), || {
            marks = bench.marks();
            let ended: BTreeSet<&str> = marks
                .iter()
                .filter(|m| !m.start)
                .map(|m| m.task.as_str())
                .collect();
            let all_released_ended = released.iter().all(|t| ended.contains(t.as_str()));
            all_released_ended && running_now(&marks).len() == PLACES.min(total - ended.len())
        });
        let running = running_now(&marks);
        let ended = marks.iter().filter(|m| !m.start).count();
        if ended == total {
            break;
        }
        let count = |spec: &str| running.iter().filter(|t| t.starts_with(spec)).count();
        let waiting = |spec: &str| {
            per_spec
                - marks
                    .iter()
                    .filter(|m| m.start && m.task.starts_with(spec))
                    .count()
        };
        if waiting("a") > 0 && waiting("b") > 0 {
            assert_eq!(
                (count("a"), count("b")),
                expected,
                "step {step}: places split wrongly while both specs wait; running {running:?}"
            );
            checked += 1;
        }
        let mut opened = false;
        for spec in patterns[step % patterns.len()] {
            let next = running
                .iter()
                .find(|t| t.starts_with(spec) && !released.contains(*t));
            if let Some(task) = next {
                bench.open(task);
                released.insert(task.clone());
                opened = true;
            }
        }
        if !opened {
            let task = running.iter().next().expect("a runner to release").clone();
            bench.open(&task);
            released.insert(task);
        }
    }
    let status = run.wait(DEADLINE);
    assert_eq!(status.code(), Some(0), "log:\n{}", run.stderr());
    let marks = bench.marks();
    assert_eq!(marks.iter().filter(|m| m.start).count(), total, "{marks:?}");
    let most = peak(&marks, |_| 1.0);
    assert!(most <= PLACES as f64, "{most} ran at once in a pool of 4");
    checked
}

#[test]
fn fair_share_keeps_two_equal_specs_at_two_places_each_at_every_decision() {
    let checked = fair_share_split("", 12, (2, 2));
    // The split is checked only while both specs wait: make sure that was most of the run.
    assert!(checked >= 6, "only {checked} decisions checked");
}

#[test]
fn fair_share_weight_3_gives_its_spec_3_of_4_places_at_every_decision() {
    let checked = fair_share_split("[fair_share]\nweights = { a = 3 }\n", 12, (3, 1));
    assert!(checked >= 4, "only {checked} decisions checked");
}

// ----- skill-based and starvation ------------------------------------------------------------

/// One place, `record.sh` runners: the ledger's start order is the order of decisions.
fn start_order_on_one_place(dispatcher: &str, tasks: &[Value]) -> Vec<String> {
    let env = Env::new();
    let bench = Bench::new(&env);
    let mut vars = bench.vars();
    vars.push(("SLEEP", "0".into()));
    // The pool serves skill "backend" by its name and every unmapped skill as the default.
    env.config(
        dispatcher,
        &only_pool(
            "backend",
            1,
            &cmd("record.sh", &["{task_id}", "backend"]),
            &vars,
            "",
        ),
    );
    env.taskset("s", tasks);
    let (status, log) = env.run_until_idle();
    assert_eq!(status.code(), Some(0), "log:\n{log}");
    bench.started()
}

#[test]
fn skill_based_starts_the_mapped_backend_task_before_a_higher_priority_unmapped_one() {
    let tasks = [
        json!({"id": "docs-high", "required_skill": "docs", "priority": 10}),
        json!({"id": "backend-low", "required_skill": "backend", "priority": 1}),
    ];
    assert_eq!(
        start_order_on_one_place("scheduling_policy = \"priority\"", &tasks),
        ["docs-high", "backend-low"],
        "priority: the higher priority first, whatever the skill"
    );
    assert_eq!(
        start_order_on_one_place("scheduling_policy = \"skill-based\"", &tasks),
        ["backend-low", "docs-high"],
        "skill-based: the task whose skill maps to the pool first"
    );
}

#[test]
fn starvation_after_takes_an_old_low_priority_task_first_and_without_it_last() {
    let now = local_time(0);
    let tasks = [
        json!({"id": "new-high", "priority": 9, "updated_at": now}),
        json!({"id": "old-low", "priority": 0, "updated_at": "2020-01-01T00:00:00.000000"}),
        json!({"id": "new-mid", "priority": 5, "updated_at": now}),
    ];
    assert_eq!(
        start_order_on_one_place(
            "scheduling_policy = \"priority\"\nstarvation_after = \"1h\"",
            &tasks
        ),
        ["old-low", "new-high", "new-mid"]
    );
    assert_eq!(
        start_order_on_one_place("scheduling_policy = \"priority\"", &tasks),
        ["new-high", "new-mid", "old-low"]
    );
}

// ----- quotas --------------------------------------------------------------------------------

/// One pool of 10 places capped by `quota_line`; tasks ask `(id, request, priority)` with
/// `request` a `metadata.resources` object. The first task (highest priority) fills the
/// quota alone and is held until `status --json` has shown the pool at its quota; then every
/// runner is released (each working 50 ms) and the ledger is checked: the sum of `key` over
/// running tasks never went past `cap`. Returns the pool as the held status showed it.
fn quota_holds(quota_line: &str, key: &str, cap: f64, tasks: &[(&str, Value, i64)]) -> Value {
    let env = Env::new();
    let bench = Bench::new(&env);
    let mut vars = bench.vars();
    vars.push(("SLEEP", "0.05".into()));
    env.config(
        "",
        &only_pool(
            "q",
            10,
            &cmd("hold.sh", &["{task_id}", "q"]),
            &vars,
            quota_line,
        ),
    );
    let task_values: Vec<Value> = tasks
        .iter()
        .map(|(id, request, priority)| {
            json!({"id": id, "priority": priority, "metadata": {"resources": request}})
        })
        .collect();
    env.taskset("s", &task_values);
    let request = |task: &str| {
        tasks
            .iter()
            .find(|(id, _, _)| *id == task)
            .and_then(|(_, r, _)| r[key].as_f64())
            .unwrap_or_else(|| panic!("request of {task}"))
    };

    let mut run = env.spawn_run(&["--until-idle"]);
    let mut held = Value::Null;
    wait_for(
        "the first task to run and status to show the pool at its quota",
        || {
            held = pool_report(&status_json(&env), "q");
            held["quota_blocked"] == true && !bench.started().is_empty()
        },
    );
    // Nothing else started while the first task held the whole quota.
    assert_eq!(bench.started(), [tasks[0].0], "{held:#}");
    assert_eq!(held["running"], 1, "{held:#}");

    bench.open_all();
    let status = run.wait(DEADLINE);
    assert_eq!(status.code(), Some(0), "log:\n{}", run.stderr());
    for (id, _, _) in tasks {
        assert_eq!(env.state_of("s", id), "done", "{id}");
    }
    let marks = bench.marks();
    assert_eq!(marks.iter().filter(|m| m.start).count(), tasks.len());
    let most = peak(&marks, request);
    assert!(
        most <= cap + 1e-9,
        "running tasks held {most} {key}, quota {cap}: {marks:?}"
    );
    assert!(
        run.stderr().contains("pool q is at its quota"),
        "the quota episode is logged:\n{}",
        run.stderr()
    );
    held
}

#[test]
fn cpu_quota_is_never_exceeded_and_status_shows_the_pool_at_quota() {
    let one = json!({"cpu": 1});
    let two = json!({"cpu": 2});
    let held = quota_holds(
        "cpu_quota = 2",
        "cpu",
        2.0,
        &[
            ("big", two.clone(), 9),
            ("s1", one.clone(), 5),
            ("s2", one.clone(), 5),
            ("s3", one.clone(), 5),
            ("big2", two, 4),
            ("s4", one.clone(), 3),
            ("s5", one, 3),
        ],
    );
    assert_eq!(held["cpu_used"].as_f64(), Some(2.0), "{held:#}");
    assert_eq!(held["cpu_quota"].as_f64(), Some(2.0), "{held:#}");
}

#[test]
fn memory_quota_is_never_exceeded_and_status_shows_the_pool_at_quota() {
    let half = json!({"cpu": 0, "memory_mb": 512});
    let full = json!({"cpu": 0, "memory_mb": 1024});
    let held = quota_holds(
        "memory_quota = \"1GiB\"",
        "memory_mb",
        1024.0,
        &[
            ("huge", full.clone(), 9),
            ("m1", half.clone(), 5),
            ("m2", half.clone(), 5),
            ("m3", half.clone(), 5),
            ("huge2", full, 4),
            ("m4", half, 3),
        ],
    );
    assert_eq!(held["memory_used_mb"], 1024, "{held:#}");
    assert_eq!(held["memory_quota_mb"], 1024, "{held:#}");
}

/// Regression: a request naming only `memory_mb` counted 1 CPU, not the pool's
/// `default_resources` CPU, so two such tasks could not share a quota they fit in together.
#[test]
fn partial_resource_request_takes_the_pools_default_for_the_missing_part() {
    let env = Env::new();
    let bench = Bench::new(&env);
    env.config(
        "",
        &only_pool(
            "q",
            10,
            &cmd("hold.sh", &["{task_id}", "q"]),
            &bench.vars(),
            "cpu_quota = 1\ndefault_resources = { cpu = 0.5, memory_mb = 0 }",
        ),
    );
    let asks_memory = json!({"resources": {"memory_mb": 10}});
    env.taskset(
        "s",
        &[
            json!({"id": "m1", "metadata": asks_memory}),
            json!({"id": "m2", "metadata": asks_memory}),
        ],
    );
    let mut run = env.spawn_run(&["--until-idle"]);
    // Either both start (0.5 + 0.5 CPU fit the quota of 1) or the pool reports itself at
    // its quota with one running.
    let mut q = Value::Null;
    wait_for("both to start or the pool to be at its quota", || {
        q = pool_report(&status_json(&env), "q");
        running_now(&bench.marks()).len() == 2 || q["quota_blocked"] == true
    });
    assert_eq!(running_now(&bench.marks()).len(), 2, "{q:#}");
    wait_for("status to show both", || {
        pool_report(&status_json(&env), "q")["running"] == 2
    });
    let q = pool_report(&status_json(&env), "q");
    assert_eq!(q["cpu_used"].as_f64(), Some(1.0), "{q:#}");
    assert_eq!(q["memory_used_mb"], 20, "{q:#}");
    bench.open_all();
    let status = run.wait(DEADLINE);
    assert_eq!(status.code(), Some(0), "log:\n{}", run.stderr());
}

// ----- pool switches and priorities ----------------------------------------------------------

#[test]
fn disabled_pool_launches_nothing_new_until_enabled_and_both_switches_are_events() {
    let env = Env::new();
    let bench = Bench::new(&env);
    let vars = bench.vars();
    // Skills named like the pools route to them.
    env.config(
        "",
        &format!(
            "{}{}",
            pool("p", 1, &cmd("hold.sh", &["{task_id}", "p"]), &vars, ""),
            pool(
                "other",
                1,
                &cmd("hold.sh", &["{task_id}", "other"]),
                &vars,
                ""
            ),
        ),
    );
    env.taskset(
        "s",
        &[
            json!({"id": "t1", "required_skill": "p", "priority": 9}),
            json!({"id": "t2", "required_skill": "p"}),
            json!({"id": "t3", "required_skill": "p"}),
        ],
    );
    // Not --until-idle: with its only pool disabled, t2 and t3 could never run, and an
    // idle `--until-idle` would rightly exit 4 there.
    let mut run = env.spawn_run(&[]);
    wait_for("t1 to start", || bench.started() == ["t1"]);

    let unknown = env.output(&["pool", "disable", "nosuch"]);
    assert_eq!(unknown.status.code(), Some(1), "{}", stderr(&unknown));
    assert!(
        stderr(&unknown).contains("\"nosuch\""),
        "{}",
        stderr(&unknown)
    );

    let out = env.output(&["pool", "disable", "p"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "pool p: disabled\n");
    wait_for("status to show pool p disabled", || {
        pool_report(&status_json(&env), "p")["enabled"] == false
    });

    // The held runner finishes; its end is written in the same registry write that would
    // have claimed its successor, so once t1 is done the decision has been made.
    bench.open("t1");
    wait_for("t1 to be done", || env.state_of("s", "t1") == "done");
    // Later decisions too: a task for the other pool, added now, is read, run and recorded.
    bench.open("probe");
    env.taskset(
        "probe",
        &[json!({"id": "probe", "required_skill": "other"})],
    );
    wait_for("the probe task to be done", || {
        env.state_of("probe", "probe") == "done"
    });
    assert_eq!(bench.started(), ["t1", "probe"]);
    for id in ["t2", "t3"] {
        assert_eq!(env.state_of("s", id), "ready", "{id}");
        assert!(events_for(&env, "s", "TaskAssigned", id).is_empty(), "{id}");
    }
    wait_for("status to show pool p idle", || {
        pool_report(&status_json(&env), "p")["running"] == 0
    });

    bench.open("t2");
    bench.open("t3");
    let out = env.output(&["pool", "enable", "p"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "pool p: enabled\n");
    wait_for("t2 and t3 to be done", || {
        env.state_of("s", "t2") == "done" && env.state_of("s", "t3") == "done"
    });
    run.signal(libc::SIGINT);
    assert_eq!(run.wait(DEADLINE).code(), Some(130), "{}", run.stderr());

    let disabled = dispatcher_events(&env, "PoolDisabled");
    let enabled = dispatcher_events(&env, "PoolEnabled");
    assert_eq!(disabled.len(), 1, "{disabled:#?}");
    assert_eq!(enabled.len(), 1, "{enabled:#?}");
    assert_eq!(disabled[0]["details"]["pool"], "p");
    assert_eq!(enabled[0]["details"]["pool"], "p");
}

#[test]
fn priority_raised_while_running_changes_the_next_launch() {
    let env = Env::new();
    let bench = Bench::new(&env);
    env.config(
        "scheduling_policy = \"priority\"",
        &only_pool(
            "solo",
            1,
            &cmd("hold.sh", &["{task_id}", "solo"]),
            &bench.vars(),
            "",
        ),
    );
    env.taskset(
        "s",
        &[
            json!({"id": "hold", "priority": 100}),
            json!({"id": "a", "priority": 5}),
            json!({"id": "b", "priority": 1}),
        ],
    );
    bench.open("a");
    bench.open("b");
    let mut run = env.spawn_run(&["--until-idle"]);
    wait_for("hold to start", || bench.started() == ["hold"]);

    let out = env.output(&["priority", "s/b", "10"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "s/b: priority 1 -> 10\n");
    assert_eq!(env.task("s", "b")["priority"], 10);
    wait_until_dispatcher_read(&env, "s");

    bench.open("hold");
    let status = run.wait(DEADLINE);
    assert_eq!(status.code(), Some(0), "log:\n{}", run.stderr());
    assert_eq!(bench.started(), ["hold", "b", "a"]);
    let changed = events_for(&env, "s", "TaskPriorityChanged", "b");
    assert_eq!(changed.len(), 1, "{changed:#?}");
    assert_eq!(changed[0]["details"]["old_priority"], 1);
    assert_eq!(changed[0]["details"]["new_priority"], 10);
}

/// Regression: `dispatcher priority` rewrote the task's `updated_at`, which is its ready time
/// when `metadata.dispatcher.ready_at` is not set (every task NecroCode wrote ready), so a
/// task whose priority was changed went to the back of the `fifo` queue, and lost its place
/// among equal priorities and its `starvation_after` age under every policy.
#[test]
fn priority_change_keeps_the_tasks_place_in_fifo_order() {
    let env = Env::new();
    let bench = Bench::new(&env);
    env.config(
        "scheduling_policy = \"fifo\"",
        &only_pool(
            "solo",
            1,
            &cmd("hold.sh", &["{task_id}", "solo"]),
            &bench.vars(),
            "",
        ),
    );
    let at = |s: u32| format!("2026-11-29T09:00:{s:02}.000000");
    env.taskset(
        "s",
        &[
            json!({"id": "first", "updated_at": at(0)}),
            json!({"id": "second", "updated_at": at(1)}),
            json!({"id": "third", "updated_at": at(2)}),
        ],
    );
    bench.open("second");
    bench.open("third");
    let mut run = env.spawn_run(&["--until-idle"]);
    wait_for("first to start", || bench.started() == ["first"]);
    let out = env.output(&["priority", "s/second", "3"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    wait_until_dispatcher_read(&env, "s");
    bench.open("first");
    let status = run.wait(DEADLINE);
    assert_eq!(status.code(), Some(0), "log:\n{}", run.stderr());
    assert_eq!(bench.started(), ["first", "second", "third"]);
}

// ----- cancel and retry ----------------------------------------------------------------------

/// A pool of one place running `family.sh`, at most 3 attempts per task, a 1 s grace period.
/// Returns the marker the runners carry.
fn family_config(env: &Env, bench: &Bench) -> String {
    let mark = env.path().join("marker").display().to_string();
    env.config(
        "stop_grace_period = \"1s\"",
        &format!(
            "[retry]\nmax_attempts = 3\ninitial_delay = \"100ms\"\n\n{}",
            only_pool(
                "local",
                1,
                &cmd("family.sh", &["{task_id}", &mark]),
                &bench.vars(),
                ""
            ),
        ),
    );
    mark
}

/// The runner's pid and its background child's, once `family.sh` of `task` has written them.
fn family_pids(bench: &Bench, task: &str) -> (u32, u32) {
    let path = bench.out.join(format!("{task}.pids"));
    wait_for(&format!("{task} to start"), || path.exists());
    let text = fs::read_to_string(&path).unwrap();
    let pids: Vec<u32> = text
        .split_whitespace()
        .map(|p| p.parse().expect("pid"))
        .collect();
    assert_eq!(pids.len(), 2, "{text:?}");
    (pids[0], pids[1])
}

#[test]
fn cancel_of_a_running_task_kills_its_process_group_and_fails_it_without_retry() {
    let env = Env::new();
    let bench = Bench::new(&env);
    let mark = family_config(&env, &bench);
    env.taskset(
        "s",
        &[
            json!({"id": "victim", "priority": 9}),
            json!({"id": "queued", "priority": 1}),
            json!({"id": "finished", "state": "done"}),
        ],
    );
    let mut run = env.spawn_run(&["--until-idle"]);
    let (runner_pid, child_pid) = family_pids(&bench, "victim");
    assert!(pid_alive(runner_pid) && pid_alive(child_pid));

    // A waiting task is failed by the command itself, at once.
    let out = env.output(&["cancel", "s/queued"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "s/queued: failed (cancelled before it ran)\n");
    assert_eq!(env.state_of("s", "queued"), "failed");
    assert_eq!(meta(&env, "s", "queued")["last_error"], "cancelled");
    assert_eq!(events_for(&env, "s", "TaskCancelled", "queued").len(), 1);

    // A finished task cannot be cancelled.
    let out = env.output(&["cancel", "s/finished"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("s/finished is already done"),
        "{}",
        stderr(&out)
    );

    let out = env.output(&["cancel", "s/victim"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "s/victim: cancel requested: the dispatcher stops its runner\n"
    );
    wait_for("the runner and its child to be gone", || {
        !pid_alive(runner_pid) && !pid_alive(child_pid)
    });
    // Both cancelled tasks failed, nothing else can run: idle with failures.
    let status = run.wait(DEADLINE);
    assert_eq!(status.code(), Some(3), "log:\n{}", run.stderr());
    assert_eq!(env.state_of("s", "victim"), "failed");
    let m = meta(&env, "s", "victim");
    assert_eq!(m["last_error"], "cancelled", "{m:#}");
    assert_eq!(m["attempts"], 1, "a cancel is not retried: {m:#}");
    assert_eq!(
        events_for(&env, "s", "TaskCancelRequested", "victim").len(),
        1
    );
    assert_eq!(events_for(&env, "s", "TaskCancelled", "victim").len(), 1);
    assert_eq!(events_for(&env, "s", "TaskAssigned", "victim").len(), 1);
    assert!(events_for(&env, "s", "TaskRetryScheduled", "victim").is_empty());
    assert!(events_for(&env, "s", "TaskAssigned", "queued").is_empty());
    assert_eq!(processes_with(&mark), Vec::<String>::new());
}

#[test]
fn cancel_without_a_dispatcher_stops_the_orphaned_runner_and_retry_runs_the_task_again() {
    let env = Env::new();
    let bench = Bench::new(&env);
    let mark = family_config(&env, &bench);
    env.taskset("s", &[json!({"id": "orphan"})]);
    let mut run = env.spawn_run(&[]);
    let (runner_pid, child_pid) = family_pids(&bench, "orphan");
    // The dispatcher dies; its runner lives on under its supervisor.
    run.child.kill().unwrap();
    run.child.wait().unwrap();
    assert!(pid_alive(runner_pid) && pid_alive(child_pid));
    assert_eq!(env.state_of("s", "orphan"), "running");

    let out = env.output(&["cancel", "s/orphan"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "s/orphan: runner stopped; failed (cancelled)\n"
    );
    assert_eq!(env.state_of("s", "orphan"), "failed");
    assert_eq!(meta(&env, "s", "orphan")["last_error"], "cancelled");
    assert_eq!(events_for(&env, "s", "TaskCancelled", "orphan").len(), 1);
    wait_for("the orphaned runner and its child to be gone", || {
        !pid_alive(runner_pid) && !pid_alive(child_pid)
    });
    wait_for("no process of the test to be left", || {
        processes_with(&mark).is_empty()
    });

    let out = env.output(&["retry", "s/orphan"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(env.state_of("s", "orphan"), "ready");
    assert_eq!(meta(&env, "s", "orphan")["attempts"], 0);
    assert_eq!(events_for(&env, "s", "TaskRetried", "orphan").len(), 1);

    bench.open_all();
    let (status, log) = env.run_until_idle();
    assert_eq!(status.code(), Some(0), "log:\n{log}");
    assert_eq!(env.state_of("s", "orphan"), "done");
    assert_eq!(meta(&env, "s", "orphan")["attempts"], 1);
}

// ----- SIGHUP --------------------------------------------------------------------------------

#[test]
fn sighup_raising_max_concurrency_takes_effect_and_an_invalid_file_keeps_the_old_limit() {
    let env = Env::new();
    let bench = Bench::new(&env);
    let config = |max: usize, extra: &str| {
        env.config(
            "",
            &only_pool(
                "local",
                max,
                &cmd("hold.sh", &["{task_id}", "local"]),
                &bench.vars(),
                extra,
            ),
        );
    };
    config(1, "");
    let tasks: Vec<Value> = (1..=4).map(|i| json!({"id": format!("t{i}")})).collect();
    env.taskset("s", &tasks);
    let mut run = env.spawn_run(&["--until-idle"]);
    wait_for("one runner", || bench.pids().len() == 1);
    let first = bench.pids()[0];

    // An unknown key: the file is rejected and the running configuration stays. `status`
    // would reject it too, so it reads a copy of the valid file meanwhile.
    fs::copy(env.config_path(), env.path().join("valid.toml")).unwrap();
    config(3, "bogus_key = 1");
    run.signal(libc::SIGHUP);
    wait_for("the rejected reload to be logged", || {
        run.stderr().contains("bogus_key")
    });
    let log = run.stderr();
    let line = log
        .lines()
        .find(|l| l.contains("bogus_key"))
        .unwrap()
        .to_string();
    assert!(
        line.contains("dispatcher.toml") && line.contains("unknown key"),
        "{line}"
    );
    // Make the dispatcher decide again after the rejected reload: a new taskset it must
    // read and queue (the commands cannot help: they read the broken file too). It still
    // runs one task only.
    env.taskset("more", &[json!({"id": "t5"})]);
    wait_until_read_per(&env, "more", "valid.toml");
    assert_eq!(bench.pids(), [first]);
    let local = pool_report(&status_per(&env, "valid.toml"), "local");
    assert_eq!(local["max_concurrency"], 1, "{local:#}");
    assert!(dispatcher_events(&env, "ConfigReloaded").is_empty());

    config(3, "");
    run.signal(libc::SIGHUP);
    // hold.sh writes its pid before its ledger line: wait for both.
    wait_for("three runners at once", || {
        bench.pids().len() == 3 && running_now(&bench.marks()).len() == 3
    });
    assert!(pid_alive(first), "the reload must not stop a runner");
    wait_for("status to show 3 of 3 running", || {
        let p = pool_report(&status_json(&env), "local");
        p["max_concurrency"] == 3 && p["running"] == 3
    });
    let reloaded = dispatcher_events(&env, "ConfigReloaded");
    assert_eq!(reloaded.len(), 1, "{reloaded:#?}");
    assert_eq!(reloaded[0]["details"]["pools"], 1);

    bench.open_all();
    let status = run.wait(DEADLINE);
    assert_eq!(status.code(), Some(0), "log:\n{}", run.stderr());
    let marks = bench.marks();
    assert_eq!(marks.iter().filter(|m| m.start).count(), 5);
    assert!(peak(&marks, |_| 1.0) <= 3.0, "{marks:?}");
}

/// SIGHUP applies "pools (new, removed, limits, quotas, commands for new launches)": a pool
/// added by the reload runs the task that had no pool, and a changed command is what the
/// next launch of an existing pool runs.
#[test]
fn sighup_adds_a_pool_and_changes_a_command_for_the_next_launches() {
    let env = Env::new();
    let bench = Bench::new(&env);
    let hold = |tag: &str| cmd("hold.sh", &["{task_id}", tag]);
    // One attempt: a launch that fails shows at once instead of after the retries.
    let retry = "[retry]\nmax_attempts = 1\n\n";
    env.config(
        "",
        &format!("{retry}{}", pool("a", 1, &hold("v1"), &bench.vars(), "")),
    );
    env.taskset(
        "s",
        &[
            json!({"id": "t1", "required_skill": "a", "priority": 9}),
            json!({"id": "t2", "required_skill": "a"}),
            // No pool serves skill b until the reload.
            json!({"id": "t3", "required_skill": "b"}),
        ],
    );
    let mut run = env.spawn_run(&["--until-idle"]);
    wait_for("t1 to start", || bench.started() == ["t1"]);

    env.config(
        "",
        &format!(
            "{retry}{}{}",
            pool("a", 1, &hold("v2"), &bench.vars(), ""),
            pool("b", 1, &hold("b"), &bench.vars(), "")
        ),
    );
    run.signal(libc::SIGHUP);
    wait_for("the reload", || {
        !dispatcher_events(&env, "ConfigReloaded").is_empty()
    });
    for task in ["t1", "t2", "t3"] {
        bench.open(task);
    }
    let status = run.wait(DEADLINE);
    assert_eq!(status.code(), Some(0), "log:\n{}", run.stderr());
    let ran: Vec<(String, String)> = bench
        .marks()
        .into_iter()
        .filter(|m| m.start)
        .map(|m| (m.task, m.tag))
        .collect();
    let mut ran_sorted = ran.clone();
    ran_sorted.sort();
    let expected =
        [("t1", "v1"), ("t2", "v2"), ("t3", "b")].map(|(t, tag)| (t.to_string(), tag.to_string()));
    assert_eq!(ran_sorted, expected, "{ran:?}");
    for task in ["t1", "t2", "t3"] {
        assert_eq!(meta(&env, "s", task)["attempts"], 1, "{task}");
    }
}

// ----- deadlocks in `run` --------------------------------------------------------------------

/// A pool for skill `web` only; no default, so a `gpu` task has nowhere to go.
fn web_only_config(env: &Env, bench: &Bench, dispatcher: &str, deadlock: &str) {
    env.config(
        dispatcher,
        &format!(
            "[deadlock]\ncheck_interval = \"200ms\"\n{deadlock}\n\n{}[skill_mapping]\nweb = [\"local\"]\n",
            pool(
                "local",
                1,
                &cmd("hold.sh", &["{task_id}", "local"]),
                &bench.vars(),
                ""
            ),
        ),
    );
}

/// A 3-task cycle.
fn cycle_tasks() -> Vec<Value> {
    vec![
        json!({"id": "c1", "state": "blocked", "required_skill": "web", "dependencies": ["c2"]}),
        json!({"id": "c2", "state": "blocked", "required_skill": "web", "dependencies": ["c3"]}),
        json!({"id": "c3", "state": "blocked", "required_skill": "web", "dependencies": ["c1"]}),
    ]
}

#[test]
fn run_reports_a_cycle_a_failed_dependency_and_an_unserved_skill_once_each_and_check_exits_4() {
    let env = Env::new();
    let bench = Bench::new(&env);
    web_only_config(&env, &bench, "", "");
    let mut tasks = cycle_tasks();
    tasks.extend([
        json!({"id": "f", "state": "failed", "required_skill": "web"}),
        json!({"id": "w", "state": "blocked", "required_skill": "web", "dependencies": ["f"]}),
        json!({"id": "g", "required_skill": "gpu"}),
        json!({"id": "ok", "required_skill": "web"}),
    ]);
    env.taskset("chat", &tasks);
    bench.open_all();
    let expected = [
        "cycle in chat: c1 → c2 → c3 → c1",
        "chat/w waits on failed dependency f",
        "chat/g needs skill \"gpu\" but no enabled pool serves it",
    ];

    let mut run = env.spawn_run(&[]);
    wait_for("every finding to be logged", || {
        let log = run.stderr();
        expected.iter().all(|e| log.contains(e))
    });
    // At least two more checks (every 200 ms): the status snapshot, refreshed after each
    // check at most once a second, must have been rewritten twice since.
    let stamp = || status_json(&env)["dispatcher"]["updated_at"].clone();
    for _ in 0..2 {
        let before = stamp();
        wait_for("the status snapshot to be refreshed", || stamp() != before);
    }
    assert_eq!(env.state_of("chat", "ok"), "done");
    let log = run.stderr();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("deadlock check: "))
        .collect();
    assert_eq!(warnings.len(), 3, "one warning per finding:\n{log}");
    for finding in expected {
        let lines = warnings.iter().filter(|l| l.ends_with(finding)).count();
        assert_eq!(lines, 1, "{finding:?} logged once:\n{log}");
    }

    let mut detected: Vec<Value> = env
        .events_of_type("chat", "DeadlockDetected")
        .into_iter()
        .map(|e| json!({"task_id": e["task_id"], "details": e["details"]}))
        .collect();
    detected.sort_by_key(|e| {
        e["details"]["kind"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    });
    assert_eq!(
        Value::Array(detected),
        json!([
            {"task_id": null, "details": {"kind": "cycle", "path": ["c1", "c2", "c3", "c1"],
                                          "message": expected[0]}},
            {"task_id": "w", "details": {"kind": "failed_dependency", "dependency": "f",
                                         "message": expected[1]}},
            {"task_id": "g", "details": {"kind": "no_pool", "required_skill": "gpu",
                                         "disabled_pools": [], "message": expected[2]}},
        ])
    );

    let report = status_json(&env);
    let mut listed: Vec<Value> = report["deadlocks"].as_array().expect("deadlocks").clone();
    listed.sort_by_key(|f| f["kind"].as_str().unwrap_or_default().to_string());
    assert_eq!(
        Value::Array(listed),
        json!([
            {"kind": "cycle", "spec": "chat", "path": ["c1", "c2", "c3", "c1"]},
            {"kind": "failed_dependency", "spec": "chat", "task_id": "w", "dependency": "f"},
            {"kind": "no_pool", "spec": "chat", "task_id": "g", "required_skill": "gpu",
             "disabled_pools": []},
        ])
    );

    let out = env.output(&["check"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let mut lines: Vec<String> = stdout(&out).lines().map(str::to_string).collect();
    lines.sort();
    let mut want: Vec<String> = expected.iter().map(|e| (*e).to_string()).collect();
    want.sort();
    assert_eq!(lines, want);

    run.signal(libc::SIGINT);
    assert_eq!(run.wait(DEADLINE).code(), Some(130), "{}", run.stderr());
}

#[test]
fn deadlock_action_fail_makes_run_drain_its_runners_and_exit_4() {
    let env = Env::new();
    let bench = Bench::new(&env);
    web_only_config(&env, &bench, "", "action = \"fail\"");
    env.taskset(
        "good",
        &[
            json!({"id": "long", "required_skill": "web", "priority": 9}),
            json!({"id": "later", "required_skill": "web"}),
        ],
    );
    let mut run = env.spawn_run(&[]);
    wait_for("long to start", || bench.started() == ["long"]);

    // A cycle appears while a runner works: the check finds it, the dispatcher drains.
    env.taskset("bad", &cycle_tasks());
    wait_for("the drain to start", || run.stderr().contains("draining"));
    assert!(
        run.stderr()
            .contains("deadlock check: cycle in bad: c1 → c2 → c3 → c1"),
        "{}",
        run.stderr()
    );
    assert!(run.child.try_wait().unwrap().is_none(), "it waits for long");

    bench.open("long");
    let status = run.wait(DEADLINE);
    assert_eq!(status.code(), Some(4), "log:\n{}", run.stderr());
    assert_eq!(
        env.state_of("good", "long"),
        "done",
        "the drain let it finish"
    );
    assert_eq!(
        env.state_of("good", "later"),
        "ready",
        "nothing new while draining"
    );
    assert_eq!(bench.started(), ["long"]);
    let detected = env.events_of_type("bad", "DeadlockDetected");
    assert_eq!(detected.len(), 1, "{detected:#?}");
    assert_eq!(
        detected[0]["details"]["path"],
        json!(["c1", "c2", "c3", "c1"])
    );
}

#[test]
fn metrics_count_attempts_show_pools_and_deadlocks_in_the_textfile_and_the_command() {
    let env = Env::new();
    let textfile = env.path().join("metrics.prom");
    env.config(
        "",
        &format!(
            "[metrics]\ntextfile = {}\n\n{}",
            toml_str(&textfile.display().to_string()),
            only_pool("p", 2, &["true".to_string()], &[], "cpu_quota = 4"),
        ),
    );
    env.taskset(
        "s",
        &[
            json!({"id": "ok1"}),
            json!({"id": "ok2"}),
            json!({"id": "c1", "state": "blocked", "dependencies": ["c2"]}),
            json!({"id": "c2", "state": "blocked", "dependencies": ["c1"]}),
        ],
    );
    let (status, log) = env.run_until_idle();
    assert_eq!(status.code(), Some(4), "the cycle never runs:\n{log}");
    // The dispatcher's last snapshot: its counters, its pools, the deadlock it found.
    let text = std::fs::read_to_string(&textfile).expect("the metrics textfile is written");
    for line in [
        "dispatcher_up 0",
        "dispatcher_tasks_assigned_total{pool=\"p\"} 2",
        "dispatcher_attempts_total{pool=\"p\",outcome=\"succeeded\"} 2",
        "dispatcher_pool_max_concurrency{pool=\"p\"} 2",
        "dispatcher_pool_cpu_quota{pool=\"p\"} 4",
        "dispatcher_deadlocks{kind=\"cycle\"} 1",
        "dispatcher_deadlocks_detected_total 1",
        "dispatcher_tasks{spec=\"s\",state=\"done\"} 2",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in:\n{text}"
        );
    }
    assert!(text.contains("# TYPE dispatcher_attempts_total counter"));
    // Without a dispatcher, the command gives what the registry alone says.
    let out = env.output(&["metrics"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.lines().any(|l| l == "dispatcher_up 0"), "{text}");
    assert!(
        text.lines()
            .any(|l| l == "dispatcher_deadlocks{kind=\"cycle\"} 1"),
        "{text}"
    );
}

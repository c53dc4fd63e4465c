//! The quickest end-to-end check: one taskset with a dependency, run until idle.

mod support;

use serde_json::json;
use support::*;

#[test]
fn dependent_tasks_run_to_done_and_exit_zero() {
    let env = Env::new();
    let ledger = env.path().join("ledger");
    env.config(
        "",
        &format!(
            "[agent_pools.local]\nmax_concurrency = 2\ncommand = [\"{}\", \"{{task_id}}\", \"local\"]\nenv = {{ LEDGER = \"{}\", SLEEP = \"0\" }}\n\n[skill_mapping]\ndefault = [\"local\"]\n",
            runner("record.sh"),
            ledger.display()
        ),
    );
    env.taskset(
        "s",
        &[
            json!({"id": "a"}),
            json!({"id": "b", "state": "blocked", "dependencies": ["a"]}),
        ],
    );
    let (status, log) = env.run_until_idle();
    assert_eq!(status.code(), Some(0), "log:\n{log}");
    assert_eq!(env.state_of("s", "a"), "done");
    assert_eq!(env.state_of("s", "b"), "done");
    let ledger = std::fs::read_to_string(ledger).unwrap();
    let starts: Vec<&str> = ledger.lines().filter(|l| l.starts_with("start")).collect();
    assert_eq!(starts.len(), 2);
    assert!(
        starts[0].starts_with("start a"),
        "a runs before b: {ledger}"
    );
}

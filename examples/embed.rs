//! Embedding the dispatcher in a Rust program: build a config in code, write a small taskset,
//! `start()`, watch `status()`, and `stop()` (the drain) once the work is done.
//!
//! Run with `cargo run --example embed`.

use std::time::{Duration, Instant};

use dispatcher::config::PoolConfig;
use dispatcher::registry::{Registry, Taskset};
use dispatcher::{Config, Dispatcher};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Runners are started under a supervisor, which is this same program in a hidden mode:
    // a program that embeds the dispatcher hands over to it first thing.
    dispatcher::supervisor::run_if_requested();
    let dir = tempfile::tempdir()?;
    let mut config = Config::default_in(dir.path());
    config.task_registry.dir = dir.path().join("registry");
    config.dispatcher.poll_interval = Duration::from_millis(200);
    config.agent_pools.insert(
        "echo".into(),
        PoolConfig {
            max_concurrency: 2,
            timeout: Some(Duration::from_secs(60)),
            // The runner: any program. Placeholders are replaced per argument, no shell.
            ..PoolConfig::new(vec![
                "echo".into(),
                "working on {spec}/{task_id}: {title}".into(),
            ])
        },
    );
    config
        .skill_mapping
        .insert("default".into(), vec!["echo".into()]);

    let taskset: Taskset = serde_json::from_value(serde_json::json!({
        "spec_name": "embedded", "version": 1, "metadata": {},
        "tasks": [
            {"id": "1", "title": "first", "state": "ready"},
            {"id": "2", "title": "second", "state": "blocked", "dependencies": ["1"]}
        ]
    }))?;
    Registry::new(&config.task_registry.dir).create(&taskset)?;

    let mut dispatcher = Dispatcher::new(config);
    dispatcher.start()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let report = dispatcher.status()?;
        let done = report.totals.get("done").copied().unwrap_or(0);
        println!(
            "queued {}, running {}, done {done}",
            report.queue_length,
            report.running.len()
        );
        if done == taskset.tasks.len() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let outcome = dispatcher.stop(Duration::from_secs(10))?;
    println!("stopped: {outcome:?}");
    Ok(())
}

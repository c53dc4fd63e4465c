//! W5, the claim cost: `Registry::update` claiming tasks of one 10,000-task taskset (the
//! whole file is read, parsed, changed, serialised, fsynced and renamed), one task per write
//! against eight in one write, and where the time of one write goes.
//!
//! `cargo bench --bench claim [-- --quick]`

#[path = "common/mod.rs"]
mod common;

use dispatcher::fsutil;
use dispatcher::registry::{Registry, RenderedTasks, TaskState, Taskset};

use common::{report, time_n};

/// What the core's claim does to a task (`core::commit::claim`): READY → RUNNING with the
/// runner id and the dispatcher's bookkeeping in `metadata.dispatcher`.
fn claim(taskset: &mut Taskset, id: &str, runner_id: &str) -> bool {
    let Some(task) = taskset.task_mut(id) else {
        return false;
    };
    if task.state != TaskState::Ready {
        return false;
    }
    let now = dispatcher::timefmt::now_string();
    let mut meta = task.dispatcher_meta();
    meta.attempts += 1;
    meta.pool = Some("default".into());
    meta.runner_id = Some(runner_id.into());
    meta.owner = Some("bench:/tmp/state".into());
    meta.started_at = Some(now.clone());
    task.set_dispatcher_meta(&meta);
    task.state = TaskState::Running;
    task.runner_id = Some(runner_id.into());
    task.updated_at = Some(now);
    true
}

fn main() {
    let quick = common::quick();
    let (tasks, runs) = if quick { (500, 5) } else { (10_000, 15) };
    let dir = common::temp_dir();
    let root = dir.path().join("registry");
    let t = tasks.to_string();
    common::generate(&root, &["--specs", "1", "--tasks", &t, "--state", "ready"]);
    let registry = Registry::new(&root);
    let spec = "spec-000";
    let size = std::fs::metadata(common::taskset_path(&root, spec)).map_or(0, |m| m.len());
    println!("taskset: {tasks} tasks, {} KiB", size / 1024);

    // Each write claims tasks not claimed before, so every write really changes the file.
    let mut next = 0usize;
    let mut claim_n = |n: usize| {
        registry
            .update(spec, |ts| {
                let mut changed = false;
                for _ in 0..n {
                    let id = next.to_string();
                    next += 1;
                    changed |= claim(ts, &id, &format!("runner-bench-{id}"));
                }
                ((), changed)
            })
            .expect("claim write");
    };
    let one = time_n(runs, || claim_n(1));
    let eight_batched = time_n(runs, || claim_n(8));
    let eight_separate = time_n(runs, || {
        for _ in 0..8 {
            claim_n(1);
        }
    });
    report("w5.claim_1", "claim 1 task: one locked write", &one);
    report(
        "w5.claim_8_batched",
        "claim 8 tasks in one write",
        &eight_batched,
    );
    report(
        "w5.claim_8_separate",
        "claim 8 tasks, one write each",
        &eight_separate,
    );

    // The dispatcher's own claims: the core holds the taskset as it last wrote it, so a write
    // neither reads nor parses the file while it is unchanged, changes the held copy in place
    // and serialises only the claimed task (the other tasks' text is kept from the last write).
    let mut known = Some((
        registry
            .fingerprint(spec)
            .expect("stat")
            .expect("taskset exists"),
        std::sync::Arc::new(registry.load(spec).expect("load")),
    ));
    let mut rendered = RenderedTasks::default();
    let mut held_claim = || {
        let id = next.to_string();
        next += 1;
        let (_, taskset, fingerprint, _) = registry
            .update_known(spec, &mut known, Some(&mut rendered), |ts, touched| {
                touched.push(id.clone());
                ((), claim(ts, &id, &format!("runner-bench-{id}")))
            })
            .expect("claim write");
        known = fingerprint.map(|fp| (fp, std::sync::Arc::new(taskset)));
    };
    held_claim(); // the first write renders every task
    let held = time_n(runs, &mut held_claim);
    report(
        "w5.claim_1_held",
        "claim 1 task as the core does: held copy, kept task texts",
        &held,
    );

    // Where one write goes: read + parse + validate, serialise, write + fsync + rename.
    let path = common::taskset_path(&root, spec);
    let loaded = registry.load(spec).expect("load");
    let bytes = loaded.to_json_bytes();
    let parse = time_n(runs, || {
        registry.load(spec).expect("load");
    });
    let serialise = time_n(runs, || {
        std::hint::black_box(loaded.to_json_bytes());
    });
    let write = time_n(runs, || {
        fsutil::write_atomic(&path, &bytes).expect("write");
    });
    report("w5.part.read_parse", "part: read, parse, validate", &parse);
    report("w5.part.serialise", "part: to_json_bytes", &serialise);
    report(
        "w5.part.write_fsync",
        "part: temp, fsync, rename, dir fsync",
        &write,
    );
}

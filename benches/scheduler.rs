//! W6, the scheduler's decision: `scheduler::plan` over a queue of 100,000 runnable tasks and
//! 50 pools, in the common case (free capacity spread over the pools) and in the worst case
//! (the only pool with room serves only the last tasks of the queue, so the planner walks
//! the whole queue), and with footprints (`metadata.touches`) that hold most of the queue
//! back, so the planner walks all of it checking footprints.
//!
//! `cargo bench --bench scheduler [-- --quick]`

#[path = "common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use dispatcher::config::SchedulingPolicy;
use dispatcher::scheduler::{
    self, Footprint, HeldFootprints, PlanInput, PoolLoad, Queue, QueuedTask, TaskKey,
};

use common::{report, time_n, Stats};

fn main() {
    let quick = common::quick();
    let (tasks, pools, runs) = if quick {
        (1_000, 5, 20)
    } else {
        (100_000, 50, 200)
    };
    let base = chrono::NaiveDate::from_ymd_opt(2026, 11, 29)
        .and_then(|d| d.and_hms_opt(9, 0, 0))
        .expect("valid date");

    // Tasks of 100 specs, each routed to one pool. `spread`: round robin over all pools.
    // `skewed`: round robin over all pools but the last, which serves only the last 10 tasks.
    let routes: Vec<Arc<[usize]>> = (0..pools).map(|p| Arc::from(vec![p])).collect();
    let fill_queue = |pool_of: &dyn Fn(usize) -> usize| {
        let mut queue = Queue::new(SchedulingPolicy::Priority);
        for i in 0..tasks {
            queue.insert(QueuedTask {
                key: TaskKey::new(&format!("spec-{:03}", i % 100), &i.to_string()),
                priority: 0,
                ready_at: base + chrono::Duration::milliseconds(i64::try_from(i).unwrap_or(0)),
                pools: routes[pool_of(i)].clone(),
                repo: None,
                direct: true,
                resources: None,
                footprint: None,
            });
        }
        queue
    };
    let fill = Instant::now();
    let spread_queue = fill_queue(&|i| i % pools);
    let filled = Stats::of(vec![fill.elapsed()]);
    let mut queue = fill_queue(&|i| {
        if i >= tasks - 10 {
            pools - 1
        } else {
            i % (pools - 1)
        }
    });
    println!("queue: {} tasks, {pools} pools", queue.len());

    // Common: every pool has one free place of four, 50 free places overall, and the first
    // tasks of the queue fill them.
    let spread: Vec<PoolLoad> = (0..pools)
        .map(|_| PoolLoad {
            running: 3,
            max: 4,
            enabled: true,
            ..PoolLoad::default()
        })
        .collect();
    let common_case = time_n(runs, || {
        let mut loads = spread.clone();
        let picks = plan(&spread_queue, &mut loads, pools);
        assert_eq!(picks, pools);
    });
    // Worst: every pool full but the last, whose tasks are at the end of the queue: the
    // planner walks all of it.
    let mut full = spread.clone();
    for (i, load) in full.iter_mut().enumerate() {
        load.running = if i == pools - 1 { 3 } else { 4 };
    }
    let worst = time_n(runs, || {
        let mut loads = full.clone();
        let picks = plan(&queue, &mut loads, pools);
        assert_eq!(picks, 1);
    });
    // Footprints: the tasks fall into `classes` footprints (fewer than the free places) over
    // five repositories; the first task of each class is placed, every later task whose
    // pool has room overlaps a placed one, so the planner walks the whole queue.
    let classes = pools * 3 / 4;
    let footprints: Vec<Arc<Footprint>> = (0..classes)
        .map(|k| {
            let (dir, doc) = (format!("src/m{k}/**"), format!("docs/m{k}.md"));
            let footprint = Footprint::new(&format!("repo-{}", k % 5), &[&dir, &doc]);
            Arc::new(footprint.expect("valid footprint"))
        })
        .collect();
    let mut touching = Queue::new(SchedulingPolicy::Priority);
    for i in 0..tasks {
        touching.insert(QueuedTask {
            key: TaskKey::new(&format!("spec-{:03}", i % 100), &i.to_string()),
            priority: 0,
            ready_at: base + chrono::Duration::milliseconds(i64::try_from(i).unwrap_or(0)),
            pools: routes[i % pools].clone(),
            repo: None,
            direct: true,
            resources: None,
            footprint: Some(footprints[i % classes].clone()),
        });
    }
    let with_footprints = time_n(runs, || {
        let mut loads = spread.clone();
        let plan = scheduler::plan(
            &touching,
            PlanInput {
                loads: &mut loads,
                free_slots: &mut HashMap::new(),
                global_free: pools,
                spec_running: &mut HashMap::new(),
                weights: &std::collections::BTreeMap::new(),
                starving_before: None,
                held: &mut HeldFootprints::new(),
            },
        );
        assert_eq!(plan.assignments.len(), classes);
    });
    // Re-queuing one task (what the core does for each claim or finish).
    let key = TaskKey::new("spec-007", "7");
    let requeue = time_n(runs, || {
        queue.remove(&key);
        queue.insert(QueuedTask {
            key: key.clone(),
            priority: 0,
            ready_at: base,
            pools: routes[0].clone(),
            repo: None,
            direct: true,
            resources: None,
            footprint: None,
        });
    });
    report(
        "w6.plan_common",
        "plan: one free place in each pool",
        &common_case,
    );
    report(
        "w6.plan_worst",
        "plan: one pool with room, its tasks last",
        &worst,
    );
    report(
        "w6.plan_footprints",
        "plan: footprints hold back all but the first tasks",
        &with_footprints,
    );
    report("w6.queue_requeue", "remove + insert one task", &requeue);
    report(
        "w6.queue_fill",
        "inserting every task (one sample)",
        &filled,
    );
}

/// One decision under the default policy; returns how many tasks it placed.
fn plan(queue: &Queue, loads: &mut [PoolLoad], global_free: usize) -> usize {
    let plan = scheduler::plan(
        queue,
        PlanInput {
            loads,
            free_slots: &mut HashMap::new(),
            global_free,
            spec_running: &mut HashMap::new(),
            weights: &std::collections::BTreeMap::new(),
            starving_before: None,
            held: &mut HashMap::new(),
        },
    );
    plan.assignments.len()
}

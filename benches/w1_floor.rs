//! W1's floor for the dispatcher's design, side by side with `xargs`: per task, one process
//! forked from a single-threaded parent (the supervisor, as the spawn server forks it) that
//! writes the attempt's state-dir files, starts `true` and waits for it, 8 at a time. No
//! scheduler, no registry, no events: what is left of W1 when everything the dispatcher
//! decides is free.
//!
//! A second variant adds the registry protocol's durable part at its cheapest: before the
//! parent forks the supervisors it can start, it records their claims and the ends it has
//! reaped since its last write, as one batch, the way issue #3's durability rules require —
//! per taskset touched, the events appended and `fdatasync`ed, then `taskset.json` replaced
//! (temp file, fsync, rename, directory fsync). W1's two layouts (one taskset, ten); tasks
//! are taken in taskset order, so a batch touches one or two tasksets. Nothing is rendered or
//! parsed: the written bytes are W1's average taskset size, and each change is one event line
//! (the dispatcher writes two to four per task). It is a reference floor, not a proof for
//! every conceivable design: this loop writes before it forks, as a claim must be durable
//! before its runner starts, and batches whatever has ended by then; a design that held
//! writes back to batch more would sync less, and on a disk where W1 waits on each slot's
//! chain of writes it is slower for it (README, Performance).
//!
//! `cargo bench --bench w1_floor [-- --quick] [-- --dir PATH]` (default: a temp dir; pass a
//! tmpfs path such as /dev/shm to compare).

#[path = "common/mod.rs"]
mod common;

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use dispatcher::sys::{self, Forked};

use common::{quick, report, Stats};

const CONCURRENCY: usize = 8;
/// W1's two layouts: one taskset of 1,000 tasks, ten of 100. A task is about 470 bytes of
/// `taskset.json` ready and 1,320 done, so about 900 on average over a run.
const LAYOUTS: [usize; 2] = [1, 10];
const TASK_BYTES: usize = 900;
/// About the size of a `TaskAssigned` or `RunnerFinished` line.
const EVENT_BYTES: usize = 500;

/// The registry's durable writes, without the work of deciding what to write.
struct Protocol {
    root: PathBuf,
    tasks_per_taskset: usize,
    taskset: Vec<u8>,
    event: Vec<u8>,
}

impl Protocol {
    /// With the registry's directories made, as they are before a dispatcher starts.
    fn new(root: &Path, tasks: usize, tasksets: usize) -> std::io::Result<Protocol> {
        let mut event = vec![b' '; EVENT_BYTES - 1];
        event.push(b'\n');
        let tasks_per_taskset = tasks.div_ceil(tasksets);
        let root = root.join("registry");
        for spec in 0..tasksets {
            let spec = format!("spec-{spec:03}");
            fs::create_dir_all(root.join("events").join(&spec))?;
            fs::create_dir_all(root.join("tasksets").join(&spec))?;
        }
        Ok(Protocol {
            root,
            tasks_per_taskset,
            taskset: vec![b' '; tasks_per_taskset * TASK_BYTES],
            event,
        })
    }

    fn taskset_of(&self, task: usize) -> usize {
        task / self.tasks_per_taskset
    }

    /// Records one batch of changes (task numbers): per taskset, events first, then the file.
    fn record(&self, changes: &[usize]) -> std::io::Result<()> {
        let touched: BTreeSet<usize> = changes.iter().map(|&t| self.taskset_of(t)).collect();
        for &spec in &touched {
            let count = changes
                .iter()
                .filter(|&&t| self.taskset_of(t) == spec)
                .count();
            let spec = format!("spec-{spec:03}");
            let events = self.root.join("events").join(&spec).join("events.jsonl");
            let mut file = OpenOptions::new().create(true).append(true).open(events)?;
            file.write_all(&self.event.repeat(count))?;
            file.sync_data()?;
            let taskset = common::taskset_path(&self.root, &spec);
            dispatcher::fsutil::write_atomic(&taskset, &self.taskset)?;
        }
        Ok(())
    }
}

/// The forked supervisor's part: files, the runner, its end.
fn supervise_one(root: &Path, n: usize) -> std::io::Result<()> {
    let runner = common::attempt_files_before_start(root, n)?;
    let status = Command::new("true").stdin(Stdio::null()).status()?;
    if !status.success() {
        return Err(std::io::Error::other(format!("true: {status}")));
    }
    common::attempt_files_after_end(&runner)
}

/// One sample in a directory of its own, with the registry's writes when `tasksets` is set.
/// Nothing is removed before the last sample: on ext4 without a journal, inodes freed in the
/// last minutes slow every allocation down, so removing files here would tax the next sample
/// (see bench/README.md).
fn design_floor(root: &Path, tasks: usize, tasksets: Option<usize>) {
    fs::create_dir_all(root).expect("bench dir");
    let protocol = tasksets.map(|tasksets| Protocol::new(root, tasks, tasksets).expect("registry"));
    let mut running: HashMap<u32, usize> = HashMap::new();
    let mut started = 0;
    let mut ended = Vec::new();
    while started < tasks || !running.is_empty() {
        // Wait only when nothing can start; then take every end that is already there.
        if started == tasks || running.len() == CONCURRENCY {
            ended.push(reaped(&mut running, sys::wait_any_child().expect("wait")));
        }
        while let Some(end) = sys::try_wait_any_child() {
            ended.push(reaped(&mut running, end));
        }
        let claims: Vec<usize> = (started..tasks).take(CONCURRENCY - running.len()).collect();
        let changes: Vec<usize> = ended.drain(..).chain(claims.iter().copied()).collect();
        if let Some(protocol) = protocol.as_ref().filter(|_| !changes.is_empty()) {
            protocol.record(&changes).expect("registry write");
        }
        for task in claims {
            match sys::fork_single_threaded().expect("fork") {
                Forked::Child => {
                    let code = match supervise_one(root, task) {
                        Ok(()) => 0,
                        Err(err) => {
                            eprintln!("task {task}: {err}");
                            1
                        }
                    };
                    std::process::exit(code);
                }
                Forked::Parent { child_pid } => {
                    running.insert(child_pid, task);
                    started += 1;
                }
            }
        }
    }
}

/// The task of an ended supervisor, which must have succeeded.
fn reaped(running: &mut HashMap<u32, usize>, (pid, ok): (u32, bool)) -> usize {
    assert!(ok, "supervisor {pid} failed");
    running.remove(&pid).expect("a supervisor of this sample")
}

fn xargs(tasks: usize) {
    let status = Command::new("sh")
        .args([
            "-c",
            &format!("seq {tasks} | xargs -P{CONCURRENCY} -n1 true"),
        ])
        .status()
        .expect("sh");
    assert!(status.success());
}

fn main() {
    let tasks = if quick() { 40 } else { 1000 };
    let samples = if quick() { 2 } else { 5 };
    let temp = common::temp_dir();
    let base = common::bench_dir(&temp);
    let root = base.join("dispatcher-w1-floor");
    let (mut design, mut baseline) = (Vec::new(), Vec::new());
    let mut durable: Vec<Vec<_>> = LAYOUTS.iter().map(|_| Vec::new()).collect();
    // One warm-up of each, then interleaved samples; every sample gets fresh directories.
    for sample in 0..=samples {
        let start = Instant::now();
        design_floor(&root.join(format!("sample-{sample}")), tasks, None);
        let design_time = start.elapsed();
        let durable_times: Vec<_> = LAYOUTS
            .iter()
            .map(|&tasksets| {
                let dir = root.join(format!("durable-{tasksets}-{sample}"));
                let start = Instant::now();
                design_floor(&dir, tasks, Some(tasksets));
                start.elapsed()
            })
            .collect();
        let start = Instant::now();
        xargs(tasks);
        let xargs_time = start.elapsed();
        if sample > 0 {
            design.push(design_time);
            for (series, time) in durable.iter_mut().zip(durable_times) {
                series.push(time);
            }
            baseline.push(xargs_time);
        }
    }
    let place = base.display();
    report(
        "w1.floor.design",
        &format!("{tasks} forked supervisors with their files and runner `true`, {CONCURRENCY} at a time, in {place}"),
        &Stats::of(design),
    );
    for (tasksets, series) in LAYOUTS.iter().zip(durable) {
        report(
            &format!("w1.floor.durable.{tasksets}"),
            &format!(
                "the same with the registry's durable writes per batch, {tasksets} taskset(s)"
            ),
            &Stats::of(series),
        );
    }
    report(
        "w1.floor.xargs",
        &format!("seq {tasks} | xargs -P{CONCURRENCY} -n1 true, interleaved"),
        &Stats::of(baseline),
    );
    let _ = fs::remove_dir_all(&root);
}

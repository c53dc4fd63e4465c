//! W1's floor for the dispatcher's design, side by side with `xargs`: per task, one process
//! forked from a single-threaded parent (the supervisor, as the spawn server forks it) that
//! writes the attempt's state-dir files, starts `true` and waits for it, 8 at a time. No
//! scheduler, no registry, no events: what is left of W1 when everything the dispatcher
//! decides is free. A dispatcher cannot beat this figure on the same file system while it
//! keeps a supervisor per runner and the attempt's files.
//!
//! `cargo bench --bench w1_floor [-- --quick] [-- --dir PATH]` (default: a temp dir; pass a
//! tmpfs path such as /dev/shm to compare).

#[path = "common/mod.rs"]
mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use dispatcher::sys::{self, Forked};

use common::{quick, report, Stats};

const CONCURRENCY: usize = 8;

/// The forked supervisor's part: files, the runner, its end.
fn supervise_one(root: &Path, n: usize) -> std::io::Result<()> {
    let runner = common::attempt_files_before_start(root, n)?;
    let status = Command::new("true").stdin(Stdio::null()).status()?;
    if !status.success() {
        return Err(std::io::Error::other(format!("true: {status}")));
    }
    common::attempt_files_after_end(&runner)
}

/// One sample in a directory of its own. Nothing is removed before the last sample: on ext4
/// without a journal, inodes freed in the last minutes slow every allocation down, so
/// removing files here would tax the next sample (see bench/README.md).
fn design_floor(root: &Path, tasks: usize) {
    fs::create_dir_all(root).expect("bench dir");
    let (mut started, mut running) = (0, 0);
    while started < tasks || running > 0 {
        if started < tasks && running < CONCURRENCY {
            match sys::fork_single_threaded().expect("fork") {
                Forked::Child => {
                    let code = match supervise_one(root, started) {
                        Ok(()) => 0,
                        Err(err) => {
                            eprintln!("task {started}: {err}");
                            1
                        }
                    };
                    std::process::exit(code);
                }
                Forked::Parent { .. } => {
                    started += 1;
                    running += 1;
                }
            }
        } else {
            let (pid, ok) = sys::wait_any_child().expect("wait");
            assert!(ok, "supervisor {pid} failed");
            running -= 1;
        }
    }
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
    // One warm-up of each, then interleaved samples; every sample gets a fresh directory.
    for sample in 0..=samples {
        let start = Instant::now();
        design_floor(&root.join(format!("sample-{sample}")), tasks);
        let design_time = start.elapsed();
        let start = Instant::now();
        xargs(tasks);
        let xargs_time = start.elapsed();
        if sample > 0 {
            design.push(design_time);
            baseline.push(xargs_time);
        }
    }
    let place = base.display();
    report(
        "w1.floor.design",
        &format!("{tasks} forked supervisors with their files and runner `true`, {CONCURRENCY} at a time, in {place}"),
        &Stats::of(design),
    );
    report(
        "w1.floor.xargs",
        &format!("seq {tasks} | xargs -P{CONCURRENCY} -n1 true, interleaved"),
        &Stats::of(baseline),
    );
    let _ = fs::remove_dir_all(&root);
}

//! W1's file-system floor: the files one task's attempt creates in the state dir (scratch
//! dir, runner dir, context, heartbeat, log, the runner record, supervisor.json renamed
//! into place, exit.json written atomically and synced) and the later removal of its runner
//! dir, for 1,000 tasks on 8 threads; no process is started and no registry is written. It
//! shows how much of W1 is the state dir on a given file system, whatever the dispatcher
//! does around it.
//!
//! `cargo bench --bench fs_floor [-- --quick] [-- --dir PATH]` (default: a temp dir; pass a
//! tmpfs path such as /dev/shm to compare).

#[path = "common/mod.rs"]
mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{quick, report, time_n};

const THREADS: usize = 8;

/// What the launcher and the supervisor write for one attempt.
fn one_task(root: &Path, n: usize) -> std::io::Result<PathBuf> {
    let runner = common::attempt_files_before_start(root, n)?;
    common::attempt_files_after_end(&runner)?;
    Ok(runner)
}

/// One sample, in a directory of its own (earlier samples are removed after the timing, as
/// the dispatcher never deletes logs or scratch dirs during a run).
fn run(base: &Path, sample: usize, tasks: usize) {
    let root = base.join(format!("sample-{sample}"));
    let root = root.as_path();
    fs::create_dir_all(root).expect("bench dir");
    let next = AtomicUsize::new(0);
    let runners: Vec<PathBuf> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|_| {
                s.spawn(|| {
                    let mut made = Vec::new();
                    loop {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        if n >= tasks {
                            return made;
                        }
                        made.push(one_task(root, n).expect("task files"));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("worker"))
            .collect()
    });
    // The sweep of finished runner directories.
    for dir in runners {
        fs::remove_dir_all(dir).expect("remove runner dir");
    }
}

fn main() {
    let tasks = if quick() { 40 } else { 1000 };
    let samples = if quick() { 2 } else { 5 };
    let temp = common::temp_dir();
    let base = common::bench_dir(&temp);
    let root = base.join("dispatcher-fs-floor");
    let mut sample = 0;
    let stats = time_n(samples, || {
        sample += 1;
        run(&root, sample, tasks);
    });
    report(
        "w1.fs_floor",
        &format!(
            "{tasks} tasks' state-dir files on {THREADS} threads, in {}",
            base.display()
        ),
        &stats,
    );
    let _ = fs::remove_dir_all(&root);
}

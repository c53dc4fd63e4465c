//! W2, the scale of the registry: what one poll of the registry monitor costs when nothing
//! changed and when one taskset changed, and its first full read, driving the real
//! `monitor::Monitor` thread (woken on demand, timed from the wake to its `ScanDone`).
//!
//! `cargo bench --bench registry_scan [-- --quick]`

#[path = "common/mod.rs"]
mod common;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use dispatcher::monitor::{Monitor, RegistryEvent};
use dispatcher::registry::Registry;

use common::{report, Stats};

/// Waits for the end of the current scan; returns how many tasksets it sent.
fn until_scan_done(events: &Receiver<RegistryEvent>) -> usize {
    let mut changed = 0;
    loop {
        match events.recv_timeout(Duration::from_secs(120)) {
            Ok(RegistryEvent::ScanDone { .. }) => return changed,
            Ok(RegistryEvent::Changed { taskset, .. }) => {
                taskset.expect("generated taskset loads");
                changed += 1;
            }
            Ok(_) => {}
            Err(err) => panic!("registry monitor: {err}"),
        }
    }
}

/// Replaces a taskset file by a copy of itself (temp + rename): new inode and mtime, so the
/// monitor must read it again; the content is the same, so the cost is the same every time.
fn touch_by_rename(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, bytes).expect("write taskset copy");
    fs::rename(&tmp, path).expect("rename taskset copy");
}

struct Scans {
    first: Duration,
    unchanged: Stats,
    one_changed: Stats,
}

fn measure(root: &Path, runs: usize) -> Scans {
    let (tx, rx) = crossbeam_channel::unbounded();
    let start = Instant::now();
    let monitor = Monitor::spawn(Registry::new(root), Duration::from_secs(3600), tx);
    let read = until_scan_done(&rx);
    let first = start.elapsed();
    assert!(read > 0, "the first scan sends every taskset");

    let mut samples = Vec::with_capacity(runs);
    for _ in 0..=runs {
        let t = Instant::now();
        monitor.wake();
        assert_eq!(until_scan_done(&rx), 0, "nothing changed");
        samples.push(t.elapsed());
    }
    samples.remove(0); // warm-up
    let unchanged = Stats::of(samples);

    let path = common::taskset_path(root, "spec-000");
    let bytes = fs::read(&path).expect("read taskset");
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..=runs {
        touch_by_rename(&path, &bytes);
        let t = Instant::now();
        monitor.wake();
        assert_eq!(until_scan_done(&rx), 1, "one taskset changed");
        samples.push(t.elapsed());
    }
    samples.remove(0);
    drop(monitor);
    Scans {
        first,
        unchanged,
        one_changed: Stats::of(samples),
    }
}

fn main() {
    let quick = common::quick();
    let (specs, tasks, runs) = if quick { (10, 100, 5) } else { (100, 1000, 30) };
    let dir = common::temp_dir();

    // The big registry, and one with a tenth of its tasksets of the same size: if a changed
    // taskset costs what that taskset costs, both "one changed" figures differ only by the
    // unchanged part of the scan.
    let big = dir.path().join("big");
    let small = dir.path().join("small");
    let (s, t) = (specs.to_string(), tasks.to_string());
    common::generate(&big, &["--specs", &s, "--tasks", &t, "--state", "done"]);
    let small_specs = (specs / 10).max(1).to_string();
    common::generate(
        &small,
        &["--specs", &small_specs, "--tasks", &t, "--state", "done"],
    );

    println!("registry: {specs} tasksets x {tasks} tasks (and {small_specs} x {tasks})");
    let b = measure(&big, runs);
    let sm = measure(&small, runs);
    report(
        "w2.first_read",
        "monitor's first full read of the big registry (one sample)",
        &Stats::of(vec![b.first]),
    );
    report(
        "w2.poll_unchanged",
        "one poll, nothing changed",
        &b.unchanged,
    );
    report(
        "w2.poll_one_changed",
        "one poll, one taskset changed",
        &b.one_changed,
    );
    report(
        "w2.small.poll_unchanged",
        "same, registry of a tenth of the tasksets",
        &sm.unchanged,
    );
    report(
        "w2.small.poll_one_changed",
        "same, registry of a tenth of the tasksets",
        &sm.one_changed,
    );
}

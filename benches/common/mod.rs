//! Shared by the benchmark binaries: timing statistics, the `--quick` switch, registries made
//! by `bench/gen.py`, and the `RESULT` lines that `bench/run.sh` turns into its table.
#![allow(dead_code)] // each bench binary uses a different subset

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// `--quick` on the command line or `BENCH_QUICK=1`: tiny sizes for a smoke run.
pub fn quick() -> bool {
    std::env::args().any(|a| a == "--quick") || std::env::var("BENCH_QUICK").is_ok_and(|v| v == "1")
}

/// Median, minimum and maximum of a set of samples.
pub struct Stats {
    pub median: Duration,
    pub min: Duration,
    pub max: Duration,
    pub n: usize,
}

impl Stats {
    pub fn of(mut samples: Vec<Duration>) -> Stats {
        assert!(!samples.is_empty(), "no samples");
        samples.sort();
        let n = samples.len();
        let median = if n % 2 == 1 {
            samples[n / 2]
        } else {
            (samples[n / 2 - 1] + samples[n / 2]) / 2
        };
        Stats {
            median,
            min: samples[0],
            max: samples[n - 1],
            n,
        }
    }
}

/// Runs `f` `n` times after one warm-up call and returns the statistics of the calls.
pub fn time_n(n: usize, mut f: impl FnMut()) -> Stats {
    f();
    let samples = (0..n)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .collect();
    Stats::of(samples)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Prints one line for people and one `RESULT` line (tab-separated, milliseconds) for
/// `bench/run.sh`.
pub fn report(name: &str, what: &str, stats: &Stats) {
    println!(
        "{name:<28} {:>10.3} ms  ({:.3}–{:.3}, n={})  {what}",
        ms(stats.median),
        ms(stats.min),
        ms(stats.max),
        stats.n
    );
    println!(
        "RESULT\t{name}\t{:.6}\t{:.6}\t{:.6}\t{}",
        ms(stats.median),
        ms(stats.min),
        ms(stats.max),
        stats.n
    );
}

/// Writes a registry with `bench/gen.py` (the same generator `bench/run.sh` uses).
pub fn generate(root: &Path, args: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/gen.py");
    let status = Command::new("python3")
        .arg(&script)
        .arg(root)
        .args(args)
        .status()
        .expect("run python3 bench/gen.py");
    assert!(status.success(), "bench/gen.py {args:?} failed");
}

/// The directory a file-system bench works in: `--dir PATH` from the command line, else
/// `temp` (a fresh temporary directory the caller keeps alive).
pub fn bench_dir(temp: &tempfile::TempDir) -> PathBuf {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--dir")
        .and_then(|i| args.get(i + 1))
        .map_or_else(|| temp.path().to_path_buf(), PathBuf::from)
}

/// A fresh temporary directory, removed when the value is dropped.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

pub fn taskset_path(root: &Path, spec: &str) -> PathBuf {
    root.join("tasksets").join(spec).join("taskset.json")
}

/// The files the launcher writes for attempt `n` before its runner starts (scratch dir,
/// runner dir, context, heartbeat, log, the runner record), as the dispatcher lays them out.
/// Returns the runner dir.
pub fn attempt_files_before_start(root: &Path, n: usize) -> std::io::Result<PathBuf> {
    let (spec, task) = ("bench", format!("t{n}"));
    fs::create_dir_all(root.join("scratch").join(spec).join(&task))?;
    let runner = root.join("runners").join(format!("runner-default-x-{n}"));
    fs::create_dir_all(&runner)?;
    let logs = root.join("logs").join(spec).join(&task);
    fs::create_dir_all(&logs)?;
    fs::write(
        runner.join("context.json"),
        br#"{"task_id":"t","spec_name":"bench"}"#,
    )?;
    File::create(runner.join("heartbeat"))?;
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(logs.join("attempt-1.log"))?;
    writeln!(log, "# dispatcher: runner {n}")?;
    let mut record = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(runner.join("runner.json"))?;
    record.write_all(&[b' '; 700]).map(|()| runner)
}

/// What the supervisor writes around its runner: `supervisor.json` renamed into place, and
/// `exit.json` written atomically and synced.
pub fn attempt_files_after_end(runner: &Path) -> std::io::Result<()> {
    dispatcher::fsutil::replace(&runner.join("supervisor.json"), &[b' '; 90])?;
    dispatcher::fsutil::write_atomic(&runner.join("exit.json"), &[b' '; 200])
}

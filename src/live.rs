//! The live line of `dispatcher run` on a terminal: one compact line (running, queued,
//! retrying, done, failed, and each pool's load) redrawn in place twice a second. With stderr
//! redirected there is no line: the log alone is written, plainly.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::status::StatusReport;

const REFRESH: Duration = Duration::from_millis(500);

/// The line's thread; dropping it stops the thread and clears the line.
pub struct LiveLine {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl LiveLine {
    /// Starts the line if stderr is a terminal; `report` asks the running dispatcher.
    pub fn start(report: impl Fn() -> Option<StatusReport> + Send + 'static) -> Option<LiveLine> {
        if !std::io::stderr().is_terminal() {
            return None;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = thread::Builder::new()
            .name("live-line".into())
            .spawn(move || {
                while !stopped.load(Ordering::Relaxed) {
                    if let Some(report) = report() {
                        // Clear the line and redraw it; a log line in between simply scrolls.
                        let mut err = std::io::stderr().lock();
                        let _ = write!(err, "\r\x1b[2K{}", line(&report));
                        let _ = err.flush();
                    }
                    thread::park_timeout(REFRESH);
                }
            })
            .ok()?;
        Some(LiveLine {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for LiveLine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
        let _ = write!(std::io::stderr(), "\r\x1b[2K");
    }
}

/// `running 3 · queued 12 · retrying 1 · done 40 · failed 2 │ backend 2/2 frontend 1/1`
pub fn line(report: &StatusReport) -> String {
    let count = |state: &str| report.totals.get(state).copied().unwrap_or(0);
    let mut text = format!(
        "running {} · queued {} · retrying {} · done {} · failed {}",
        report.running.len(),
        report.queue_length,
        report.retrying.len(),
        count("done"),
        count("failed")
    );
    if report.dispatcher.draining {
        text.push_str(" · draining");
    }
    if !report.pools.is_empty() {
        text.push_str(" │");
        for pool in &report.pools {
            text.push_str(&format!(
                " {} {}/{}",
                pool.name, pool.running, pool.max_concurrency
            ));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::PoolStatus;

    #[test]
    fn the_line_counts_and_lists_pools() {
        let mut report = StatusReport {
            queue_length: 12,
            ..StatusReport::default()
        };
        report.totals.insert("done".into(), 40);
        report.pools.push(PoolStatus {
            name: "backend".into(),
            kind: "local-process".into(),
            running: 2,
            max_concurrency: 2,
            enabled: true,
            cpu_used: 0.0,
            cpu_quota: None,
            memory_used_mb: 0,
            memory_quota_mb: None,
            quota_blocked: false,
            engine_error: None,
            breaker: None,
        });
        assert_eq!(
            line(&report),
            "running 0 · queued 12 · retrying 0 · done 40 · failed 0 │ backend 2/2"
        );
    }
}

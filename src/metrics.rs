//! Metrics in the Prometheus text exposition format, derived from the status report (gauges)
//! and the core's counters since start-up. Printed by `dispatcher metrics` and written to
//! `[metrics] textfile` for node_exporter's textfile collector.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::status::StatusReport;

/// Counters of a running dispatcher since it started (they reset with it, as Prometheus
/// counters may).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    /// Tasks claimed, by pool.
    #[serde(default)]
    pub tasks_assigned: BTreeMap<String, u64>,
    /// Attempts that ended, by pool and outcome (succeeded, failed, timed_out,
    /// heartbeat_lost, cancelled, interrupted, lost).
    #[serde(default)]
    pub attempts: BTreeMap<String, BTreeMap<String, u64>>,
    #[serde(default)]
    pub retries_scheduled: u64,
    /// Deadlock findings announced (each once).
    #[serde(default)]
    pub deadlocks_detected: u64,
    /// Ready → runner started, in seconds.
    #[serde(default)]
    pub task_wait_seconds: Histogram,
    /// Runner started → ended, in seconds, by pool.
    #[serde(default)]
    pub task_run_seconds: BTreeMap<String, Histogram>,
    /// One registry scan by the monitor, in seconds.
    #[serde(default)]
    pub registry_poll_seconds: Histogram,
    /// Notifications dropped because the sender's queue was full.
    #[serde(default)]
    pub notifications_dropped: u64,
}

/// Upper bounds of the histogram buckets, in seconds: from a fast scan (1 ms) to a long
/// agent run (2 h); `+Inf` is implied.
pub const BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0,
    7200.0,
];

/// A Prometheus histogram: counts per bucket (not cumulative), their sum and count.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    pub buckets: Vec<u64>,
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    pub fn observe(&mut self, seconds: f64) {
        let seconds = seconds.max(0.0);
        if self.buckets.len() != BUCKETS.len() {
            self.buckets = vec![0; BUCKETS.len()];
        }
        if let Some(i) = BUCKETS.iter().position(|&le| seconds <= le) {
            self.buckets[i] += 1;
        }
        self.sum += seconds;
        self.count += 1;
    }
}

/// The exposition text for one report.
pub fn render(report: &StatusReport) -> String {
    let mut out = Metrics::default();
    out.gauge(
        "dispatcher_up",
        "1 while a dispatcher runs on this state dir",
    );
    out.sample(
        "dispatcher_up",
        &[],
        f64::from(u8::from(report.dispatcher.running)),
    );

    out.gauge("dispatcher_queue_size", "runnable tasks waiting for a pool");
    out.sample("dispatcher_queue_size", &[], report.queue_length as f64);
    out.gauge(
        "dispatcher_retry_waiting",
        "tasks waiting for their retry time",
    );
    out.sample(
        "dispatcher_retry_waiting",
        &[],
        report.retrying.len() as f64,
    );
    out.gauge(
        "dispatcher_unroutable_tasks",
        "runnable tasks that no pool serves",
    );
    out.sample(
        "dispatcher_unroutable_tasks",
        &[],
        report.unroutable.len() as f64,
    );
    out.gauge(
        "dispatcher_waiting_for_slot",
        "runnable tasks waiting for a workspace slot",
    );
    out.sample(
        "dispatcher_waiting_for_slot",
        &[],
        report.waiting_for_slot.len() as f64,
    );
    out.gauge(
        "dispatcher_waiting_for_footprint",
        "runnable tasks waiting because their footprint overlaps a running task's",
    );
    out.sample(
        "dispatcher_waiting_for_footprint",
        &[],
        report.waiting_for_footprint.len() as f64,
    );

    let pool_gauges: [(&str, &str); 12] = [
        (
            "dispatcher_running_tasks",
            "tasks running (or starting) in the pool",
        ),
        (
            "dispatcher_pool_max_concurrency",
            "the pool's max_concurrency",
        ),
        ("dispatcher_pool_utilization", "running / max_concurrency"),
        ("dispatcher_pool_enabled", "1 when the pool takes new tasks"),
        (
            "dispatcher_pool_cpu_used",
            "sum of the running tasks' CPU requests",
        ),
        (
            "dispatcher_pool_cpu_quota",
            "the pool's cpu_quota (absent when none)",
        ),
        (
            "dispatcher_pool_memory_used_mb",
            "sum of the running tasks' memory requests, MiB",
        ),
        (
            "dispatcher_pool_memory_quota_mb",
            "the pool's memory_quota in MiB (absent when none)",
        ),
        (
            "dispatcher_pool_quota_blocked",
            "1 while tasks wait for the pool's CPU or memory quota",
        ),
        (
            "dispatcher_pool_breaker_open",
            "1 while the pool's circuit breaker is open (rate limit, expired credentials)",
        ),
        (
            "dispatcher_pool_engine_up",
            "1 when an engine pool's engine answers, 0 while it does not (absent for local pools)",
        ),
        (
            "dispatcher_pool_info",
            "always 1; the pool's type as a label",
        ),
    ];
    for (name, help) in pool_gauges {
        out.gauge(name, help);
        for pool in &report.pools {
            let labels = [("pool", pool.name.as_str())];
            let value = match name {
                "dispatcher_running_tasks" => Some(pool.running as f64),
                "dispatcher_pool_max_concurrency" => Some(pool.max_concurrency as f64),
                "dispatcher_pool_utilization" => {
                    Some(pool.running as f64 / pool.max_concurrency.max(1) as f64)
                }
                "dispatcher_pool_enabled" => Some(f64::from(u8::from(pool.enabled))),
                "dispatcher_pool_cpu_used" => Some(pool.cpu_used),
                "dispatcher_pool_cpu_quota" => pool.cpu_quota,
                "dispatcher_pool_memory_used_mb" => Some(pool.memory_used_mb as f64),
                "dispatcher_pool_memory_quota_mb" => pool.memory_quota_mb.map(|q| q as f64),
                "dispatcher_pool_quota_blocked" => Some(f64::from(u8::from(pool.quota_blocked))),
                "dispatcher_pool_breaker_open" => Some(f64::from(u8::from(pool.breaker.is_some()))),
                "dispatcher_pool_engine_up" if pool.kind != "local-process" => {
                    Some(f64::from(u8::from(pool.engine_error.is_none())))
                }
                _ => None,
            };
            if name == "dispatcher_pool_info" {
                out.sample(name, &[("pool", &pool.name), ("type", &pool.kind)], 1.0);
            } else if let Some(value) = value {
                out.sample(name, &labels, value);
            }
        }
    }

    out.gauge(
        "dispatcher_budget_spent_usd",
        "dollars spent in the budget's period, by scope (pool or spec) and name",
    );
    for b in &report.budgets {
        let labels = [("scope", b.scope.as_str()), ("name", b.name.as_str())];
        out.sample("dispatcher_budget_spent_usd", &labels, b.spent_usd);
    }
    out.gauge(
        "dispatcher_budget_spent_tokens",
        "tokens spent in the budget's period, by scope and name",
    );
    for b in &report.budgets {
        let labels = [("scope", b.scope.as_str()), ("name", b.name.as_str())];
        out.sample(
            "dispatcher_budget_spent_tokens",
            &labels,
            b.spent_tokens as f64,
        );
    }
    out.gauge(
        "dispatcher_budget_cap_usd",
        "the budget's hard cap in dollars (absent when none)",
    );
    for b in &report.budgets {
        if let Some(cap) = b.cap_usd {
            let labels = [("scope", b.scope.as_str()), ("name", b.name.as_str())];
            out.sample("dispatcher_budget_cap_usd", &labels, cap);
        }
    }
    out.gauge(
        "dispatcher_waiting_for_budget",
        "ready tasks a budget keeps from starting",
    );
    out.sample(
        "dispatcher_waiting_for_budget",
        &[],
        report.waiting_for_budget.len() as f64,
    );

    out.gauge("dispatcher_tasks", "tasks by spec and state");
    for taskset in &report.tasksets {
        for (state, count) in &taskset.counts {
            out.sample(
                "dispatcher_tasks",
                &[("spec", &taskset.spec), ("state", state)],
                *count as f64,
            );
        }
    }

    out.gauge("dispatcher_deadlocks", "current deadlock findings by kind");
    let mut by_kind: BTreeMap<&str, usize> = BTreeMap::new();
    for finding in &report.deadlocks {
        *by_kind.entry(finding.kind()).or_default() += 1;
    }
    for (kind, count) in by_kind {
        out.sample("dispatcher_deadlocks", &[("kind", kind)], count as f64);
    }

    let counters = &report.counters;
    out.counter("dispatcher_tasks_assigned_total", "tasks claimed, by pool");
    for (pool, n) in &counters.tasks_assigned {
        out.sample(
            "dispatcher_tasks_assigned_total",
            &[("pool", pool)],
            *n as f64,
        );
    }
    out.counter(
        "dispatcher_attempts_total",
        "attempts that ended, by pool and outcome",
    );
    for (pool, outcomes) in &counters.attempts {
        for (outcome, n) in outcomes {
            out.sample(
                "dispatcher_attempts_total",
                &[("pool", pool), ("outcome", outcome)],
                *n as f64,
            );
        }
    }
    out.counter(
        "dispatcher_retries_scheduled_total",
        "failed attempts given a retry",
    );
    out.sample(
        "dispatcher_retries_scheduled_total",
        &[],
        counters.retries_scheduled as f64,
    );
    out.counter(
        "dispatcher_deadlocks_detected_total",
        "deadlock findings announced",
    );
    out.sample(
        "dispatcher_deadlocks_detected_total",
        &[],
        counters.deadlocks_detected as f64,
    );
    out.counter(
        "dispatcher_notifications_dropped_total",
        "notifications dropped (queue full)",
    );
    out.sample(
        "dispatcher_notifications_dropped_total",
        &[],
        counters.notifications_dropped as f64,
    );

    out.histogram(
        "dispatcher_task_wait_seconds",
        "time from ready to runner started",
    );
    out.histogram_samples(
        "dispatcher_task_wait_seconds",
        &[],
        &counters.task_wait_seconds,
    );
    out.histogram(
        "dispatcher_task_run_seconds",
        "time from runner started to its end, by pool",
    );
    for (pool, histogram) in &counters.task_run_seconds {
        out.histogram_samples("dispatcher_task_run_seconds", &[("pool", pool)], histogram);
    }
    out.histogram(
        "dispatcher_registry_poll_seconds",
        "one scan of the registry by the monitor",
    );
    out.histogram_samples(
        "dispatcher_registry_poll_seconds",
        &[],
        &counters.registry_poll_seconds,
    );
    out.text
}

#[derive(Default)]
struct Metrics {
    text: String,
}

impl Metrics {
    fn gauge(&mut self, name: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} gauge");
    }

    fn counter(&mut self, name: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} counter");
    }

    fn histogram(&mut self, name: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} histogram");
    }

    /// `_bucket` lines (cumulative, with `le`), then `_sum` and `_count`.
    fn histogram_samples(&mut self, name: &str, labels: &[(&str, &str)], h: &Histogram) {
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0;
        for (i, le) in BUCKETS.iter().enumerate() {
            cumulative += h.buckets.get(i).copied().unwrap_or(0);
            let le = le.to_string();
            let mut with_le = labels.to_vec();
            with_le.push(("le", &le));
            self.sample(&bucket, &with_le, cumulative as f64);
        }
        let mut with_le = labels.to_vec();
        with_le.push(("le", "+Inf"));
        self.sample(&bucket, &with_le, h.count as f64);
        self.sample(&format!("{name}_sum"), labels, h.sum);
        self.sample(&format!("{name}_count"), labels, h.count as f64);
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{key}=\"{}\"", escape(value));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }
}

/// Label values escape backslash, double quote and newline.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{PoolStatus, TasksetStatus};

    #[test]
    fn exposition_has_types_labels_and_values() {
        let mut report = StatusReport::default();
        report.dispatcher.running = true;
        report.queue_length = 3;
        report.pools.push(PoolStatus {
            name: "gpu \"a\"".into(),
            kind: "local-process".into(),
            running: 1,
            max_concurrency: 4,
            enabled: true,
            cpu_used: 2.0,
            cpu_quota: Some(8.0),
            memory_used_mb: 0,
            memory_quota_mb: None,
            quota_blocked: false,
            engine_error: None,
            breaker: None,
        });
        report.tasksets.push(TasksetStatus {
            spec: "s".into(),
            version: Some(1),
            tasks: 2,
            counts: [("done".to_string(), 2)].into(),
            error: None,
        });
        report
            .counters
            .attempts
            .insert("gpu".into(), [("failed".to_string(), 2)].into());
        let text = render(&report);
        assert!(
            text.contains("# TYPE dispatcher_up gauge\ndispatcher_up 1\n"),
            "{text}"
        );
        assert!(text.contains("dispatcher_queue_size 3\n"));
        assert!(
            text.contains("dispatcher_pool_utilization{pool=\"gpu \\\"a\\\"\"} 0.25\n"),
            "{text}"
        );
        assert!(text.contains("dispatcher_pool_cpu_quota{pool=\"gpu \\\"a\\\"\"} 8\n"));
        assert!(
            !text.contains("dispatcher_pool_memory_quota_mb{"),
            "no quota, no sample"
        );
        assert!(text.contains("dispatcher_tasks{spec=\"s\",state=\"done\"} 2\n"));
        assert!(text.contains("# TYPE dispatcher_attempts_total counter\n"));
        assert!(text.contains("dispatcher_attempts_total{pool=\"gpu\",outcome=\"failed\"} 2\n"));
    }

    #[test]
    fn histograms_are_cumulative_with_sum_and_count() {
        let mut report = StatusReport::default();
        for seconds in [0.002, 0.2, 0.3, 4000.0] {
            report.counters.task_wait_seconds.observe(seconds);
        }
        let text = render(&report);
        assert!(text.contains("# TYPE dispatcher_task_wait_seconds histogram\n"));
        assert!(
            text.contains("dispatcher_task_wait_seconds_bucket{le=\"0.001\"} 0\n"),
            "{text}"
        );
        assert!(text.contains("dispatcher_task_wait_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(text.contains("dispatcher_task_wait_seconds_bucket{le=\"0.5\"} 3\n"));
        assert!(text.contains("dispatcher_task_wait_seconds_bucket{le=\"3600\"} 3\n"));
        assert!(text.contains("dispatcher_task_wait_seconds_bucket{le=\"+Inf\"} 4\n"));
        assert!(text.contains("dispatcher_task_wait_seconds_sum 4000.502\n"));
        assert!(text.contains("dispatcher_task_wait_seconds_count 4\n"));
    }
}

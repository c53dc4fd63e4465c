//! What `dispatcher status` reports: the report's stable JSON schema, the snapshot the
//! running dispatcher writes, the same report built from the registry alone when no
//! dispatcher runs, and the human rendering.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::deadlock::{self, Finding};
use crate::fsutil;
use crate::registry::{Registry, TaskState};
use crate::statedir::StateDir;
use crate::supervisor::RunnerDir;
use crate::sys::pid_alive;
use crate::timefmt;
use crate::view;

/// Version of the JSON schema below; bumped only on incompatible changes.
pub const SCHEMA_VERSION: u32 = 1;

/// A snapshot older than this is treated as left behind by a dispatcher that is gone,
/// even if its pid was reused. The core refreshes it every second.
const STALE_AFTER: Duration = Duration::from_secs(30);

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct StatusReport {
    pub schema_version: u32,
    pub dispatcher: DispatcherInfo,
    /// Runnable tasks waiting for a pool.
    pub queue_length: usize,
    /// Task counts by state over all readable tasksets.
    pub totals: BTreeMap<String, usize>,
    pub pools: Vec<PoolStatus>,
    pub running: Vec<RunnerStatus>,
    pub retrying: Vec<RetryStatus>,
    pub unroutable: Vec<UnroutableStatus>,
    pub blocked_forever: Vec<StuckStatus>,
    pub tasksets: Vec<TasksetStatus>,
    /// Runnable tasks waiting for a free workspace slot of their repository.
    #[serde(default)]
    pub waiting_for_slot: Vec<SlotWaitStatus>,
    /// Runnable tasks waiting because their footprint (`metadata.touches`) overlaps that of
    /// a running task of the same repository.
    #[serde(default)]
    pub waiting_for_footprint: Vec<FootprintWaitStatus>,
    /// Tasks whose `metadata.touches` is malformed: scheduled as if they had none.
    #[serde(default)]
    pub footprint_errors: Vec<FootprintErrorStatus>,
    /// The last slot failure per repository (the slot is in `error` until `slots sync`).
    #[serde(default)]
    pub slot_errors: Vec<SlotErrorStatus>,
    /// Counters of the running dispatcher since it started (empty when none runs).
    #[serde(default)]
    pub counters: crate::metrics::Counters,
    /// Why tasks can never run: dependency cycles, failed or missing dependencies, skills no
    /// enabled pool serves, unreadable tasksets (root causes), and the tasks behind them.
    #[serde(default)]
    pub deadlocks: Vec<Finding>,
    /// Every configured budget (per pool, per spec) and how much of it is spent.
    #[serde(default)]
    pub budgets: Vec<BudgetStatus>,
    /// Ready tasks a budget keeps from starting, with the reason.
    #[serde(default)]
    pub waiting_for_budget: Vec<StuckStatus>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BudgetStatus {
    /// `pool` or `spec`.
    pub scope: String,
    pub name: String,
    /// `day` or `total`.
    pub period: String,
    pub spent_usd: f64,
    pub spent_tokens: u64,
    pub cap_usd: Option<f64>,
    pub cap_tokens: Option<u64>,
    pub soft: f64,
    /// `ok`, `soft_cap` or `exhausted`.
    pub state: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SlotWaitStatus {
    pub spec: String,
    pub task_id: String,
    pub repo: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FootprintWaitStatus {
    pub spec: String,
    pub task_id: String,
    pub repo: String,
    pub conflicts_with: FootprintHolder,
    /// The waiting task's patterns that overlap the other's.
    pub paths: Vec<String>,
}

/// The running (or starting) task a footprint wait is for.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FootprintHolder {
    pub spec: String,
    pub task_id: String,
    /// Its patterns that overlap the waiting task's.
    #[serde(default)]
    pub paths: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FootprintErrorStatus {
    pub spec: String,
    pub task_id: String,
    pub error: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SlotErrorStatus {
    pub repo: String,
    pub error: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct DispatcherInfo {
    pub running: bool,
    pub pid: Option<u32>,
    pub started_at: Option<String>,
    pub updated_at: Option<String>,
    pub draining: bool,
    pub policy: String,
    pub state_dir: String,
    pub registry_dir: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PoolStatus {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub running: usize,
    pub max_concurrency: usize,
    pub enabled: bool,
    /// Sum of the running tasks' CPU and memory requests, and the pool's quotas.
    #[serde(default)]
    pub cpu_used: f64,
    #[serde(default)]
    pub cpu_quota: Option<f64>,
    #[serde(default)]
    pub memory_used_mb: u64,
    #[serde(default)]
    pub memory_quota_mb: Option<u64>,
    /// Tasks wait because a quota is reached (not the concurrency cap).
    #[serde(default)]
    pub quota_blocked: bool,
    /// Set while an engine pool's engine does not answer: why. The pool takes no tasks
    /// until it answers again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine_error: Option<String>,
    /// Set while the pool's circuit breaker is open (after a rate-limit or expired
    /// credentials): it takes no new tasks until `closes_at`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breaker: Option<BreakerStatus>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BreakerStatus {
    /// `rate_limited` or `auth_expired`.
    pub class: String,
    pub message: String,
    pub opened_at: String,
    pub closes_at: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RunnerStatus {
    pub runner_id: Option<String>,
    pub spec: String,
    pub task_id: String,
    pub title: String,
    pub pool: Option<String>,
    pub pid: Option<u32>,
    pub attempt: u32,
    pub started_at: Option<String>,
    pub runtime_seconds: Option<f64>,
    pub last_heartbeat: Option<String>,
    pub log_file: Option<String>,
    /// Started by an earlier dispatcher and taken over by this one.
    #[serde(default)]
    pub adopted: bool,
    /// Measured resident memory and CPU time of the runner's process group.
    #[serde(default)]
    pub rss_bytes: Option<u64>,
    #[serde(default)]
    pub cpu_seconds: Option<f64>,
    /// The engine's id of an engine runner's job (Slurm job id, container id, Job name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine_id: Option<String>,
    /// What the runner reported spending in this attempt so far (`{tokens, cost_usd}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spend: Option<serde_json::Value>,
    /// Why it needs a person's attention (a budget's soft cap crossed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub needs_attention: Option<String>,
    /// When it was found stalled: no progress for its pool's `stall_timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stalled_since: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RetryStatus {
    pub spec: String,
    pub task_id: String,
    /// Attempts used so far.
    pub attempts: u32,
    pub next_attempt_at: String,
    pub last_error: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct UnroutableStatus {
    pub spec: String,
    pub task_id: String,
    pub required_skill: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StuckStatus {
    pub spec: String,
    pub task_id: String,
    pub reason: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TasksetStatus {
    pub spec: String,
    pub version: Option<u64>,
    pub tasks: usize,
    pub counts: BTreeMap<String, usize>,
    /// Why the taskset cannot be used, when it cannot.
    pub error: Option<String>,
}

/// Counts by state, with every state present so scripts can rely on the keys.
pub fn empty_counts() -> BTreeMap<String, usize> {
    [
        TaskState::Ready,
        TaskState::Running,
        TaskState::Blocked,
        TaskState::Done,
        TaskState::Failed,
    ]
    .iter()
    .map(|s| (s.as_str().to_string(), 0))
    .collect()
}

impl StatusReport {
    pub fn write_snapshot(&self, state: &StateDir) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        fsutil::write_atomic(&state.snapshot_path(), &bytes)
    }

    /// The snapshot of a dispatcher that is running now, if there is one.
    pub fn read_live_snapshot(state: &StateDir) -> Option<StatusReport> {
        let bytes = std::fs::read(state.snapshot_path()).ok()?;
        let report: StatusReport = serde_json::from_slice(&bytes).ok()?;
        let pid = report.dispatcher.pid?;
        let updated = report
            .dispatcher
            .updated_at
            .as_deref()
            .and_then(timefmt::parse)?;
        let age = timefmt::now().signed_duration_since(updated);
        let fresh = age.to_std().map_or(true, |age| age <= STALE_AFTER);
        (report.dispatcher.running && pid_alive(pid) && fresh).then_some(report)
    }

    /// The report when no dispatcher runs: everything the registry alone can tell.
    pub fn from_registry(config: &Config) -> StatusReport {
        let registry = Registry::new(&config.task_registry.dir);
        let now = timefmt::now();
        let mut report = StatusReport {
            schema_version: SCHEMA_VERSION,
            dispatcher: DispatcherInfo {
                running: false,
                policy: config.dispatcher.scheduling_policy.as_str().to_string(),
                state_dir: config.dispatcher.state_dir.display().to_string(),
                registry_dir: config.task_registry.dir.display().to_string(),
                ..DispatcherInfo::default()
            },
            totals: empty_counts(),
            ..StatusReport::default()
        };
        let mut pool_running: BTreeMap<String, usize> = BTreeMap::new();
        let service = deadlock::configured_service(config);
        let state = crate::statedir::StateDir::new(&config.dispatcher.state_dir);
        let specs = registry.list_specs().unwrap_or_default();
        for spec in specs {
            let taskset = match registry.load(&spec) {
                Ok(taskset) => taskset,
                Err(err) => {
                    report.deadlocks.push(Finding::Unreadable {
                        spec: spec.clone(),
                        error: err.to_string(),
                    });
                    report.tasksets.push(TasksetStatus {
                        spec,
                        version: None,
                        tasks: 0,
                        counts: empty_counts(),
                        error: Some(err.to_string()),
                    });
                    continue;
                }
            };
            let mut counts = empty_counts();
            report
                .deadlocks
                .extend(deadlock::analyze(&taskset, &service));
            let doomed = view::never_runnable(&taskset);
            for task in &taskset.tasks {
                *counts.entry(task.state.as_str().to_string()).or_default() += 1;
                let meta = task.dispatcher_meta();
                match task.state {
                    TaskState::Running => {
                        if let Some(pool) = &meta.pool {
                            *pool_running.entry(pool.clone()).or_default() += 1;
                        }
                        let runner_id = task.runner_id.clone().or(meta.runner_id.clone());
                        // An engine job goes on while no dispatcher runs: its id is on disk.
                        let engine_id = runner_id
                            .as_deref()
                            .filter(|id| crate::names::validate("runner id", id).is_ok())
                            .map(|id| RunnerDir::new(state.runner_dir(id)))
                            .and_then(|dir| crate::engine::read_engine_record(&dir))
                            .map(|record| record.job_id);
                        report.running.push(RunnerStatus {
                            runner_id,
                            spec: spec.clone(),
                            task_id: task.id.clone(),
                            title: task.title.clone(),
                            pool: meta.pool.clone(),
                            pid: meta.pid,
                            attempt: meta.attempts,
                            started_at: meta.started_at.clone(),
                            runtime_seconds: None,
                            last_heartbeat: None,
                            log_file: None,
                            adopted: false,
                            rss_bytes: None,
                            cpu_seconds: None,
                            engine_id,
                            spend: None,
                            needs_attention: None,
                            stalled_since: None,
                        });
                    }
                    TaskState::Ready if view::dependencies_done(&taskset, task) => {
                        match view::next_attempt_at(&meta).filter(|at| *at > now) {
                            Some(at) => report.retrying.push(RetryStatus {
                                spec: spec.clone(),
                                task_id: task.id.clone(),
                                attempts: meta.attempts,
                                next_attempt_at: timefmt::format(at),
                                last_error: meta.last_error.clone(),
                            }),
                            None if config
                                .pools_for_skill(task.required_skill.as_deref())
                                .is_empty() =>
                            {
                                report.unroutable.push(UnroutableStatus {
                                    spec: spec.clone(),
                                    task_id: task.id.clone(),
                                    required_skill: task.required_skill.clone(),
                                });
                            }
                            None => report.queue_length += 1,
                        }
                    }
                    _ => {}
                }
                if let Some(reason) = doomed.get(&task.id) {
                    report.blocked_forever.push(StuckStatus {
                        spec: spec.clone(),
                        task_id: task.id.clone(),
                        reason: reason.clone(),
                    });
                }
            }
            for (state, n) in &counts {
                *report.totals.entry(state.clone()).or_default() += n;
            }
            report.tasksets.push(TasksetStatus {
                spec,
                version: Some(taskset.version),
                tasks: taskset.tasks.len(),
                counts,
                error: None,
            });
        }
        report.pools = config
            .agent_pools
            .iter()
            .map(|(name, pool)| PoolStatus {
                name: name.clone(),
                kind: pool.kind.as_str().to_string(),
                running: pool_running.get(name).copied().unwrap_or(0),
                max_concurrency: pool.max_concurrency,
                enabled: pool.enabled,
                cpu_used: 0.0,
                cpu_quota: pool.cpu_quota,
                memory_used_mb: 0,
                memory_quota_mb: pool.memory_quota_mb,
                quota_blocked: false,
                engine_error: None,
                breaker: None,
            })
            .collect();
        report
    }

    /// Aligned, readable text for people.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let d = &self.dispatcher;
        if d.running {
            let _ = writeln!(
                out,
                "dispatcher: running (pid {}, since {}, policy {}){}",
                d.pid.map_or_else(|| "?".into(), |p| p.to_string()),
                d.started_at.as_deref().unwrap_or("?"),
                d.policy,
                if d.draining { ", draining" } else { "" }
            );
        } else {
            let _ = writeln!(out, "dispatcher: not running (policy {})", d.policy);
        }
        let _ = writeln!(out, "registry:   {}", d.registry_dir);
        let t = &self.totals;
        let count = |s: &str| t.get(s).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "tasks:      {} ready, {} running, {} blocked, {} done, {} failed",
            count("ready"),
            count("running"),
            count("blocked"),
            count("done"),
            count("failed")
        );
        let _ = writeln!(
            out,
            "queue:      {} runnable, {} waiting for retry, {} without a pool, {} never runnable",
            self.queue_length,
            self.retrying.len(),
            self.unroutable.len(),
            self.blocked_forever.len()
        );

        if !self.pools.is_empty() {
            let rows = self.pools.iter().map(|p| {
                let quota = |used: String, quota: Option<String>| match quota {
                    Some(quota) => format!("{used}/{quota}"),
                    None => "-".into(),
                };
                vec![
                    p.name.clone(),
                    p.kind.clone(),
                    format!("{}/{}", p.running, p.max_concurrency),
                    quota(
                        format!("{:.1}", p.cpu_used),
                        p.cpu_quota.map(|q| q.to_string()),
                    ),
                    quota(
                        p.memory_used_mb.to_string(),
                        p.memory_quota_mb.map(|q| q.to_string()),
                    ),
                    match (p.enabled, p.quota_blocked, &p.engine_error) {
                        (false, ..) => "no".into(),
                        (true, _, Some(_)) => "no (engine down)".into(),
                        _ if p.breaker.is_some() => "no (breaker open)".into(),
                        (true, true, None) => "yes (at quota)".into(),
                        (true, false, None) => "yes".into(),
                    },
                ]
            });
            let header = ["POOL", "TYPE", "RUNNING", "CPU", "MEMORY MIB", "ENABLED"];
            section(&mut out, "POOLS", &header, rows);
            for p in &self.pools {
                if let Some(error) = &p.engine_error {
                    let _ = writeln!(out, "pool {}: engine does not answer: {error}", p.name);
                }
                if let Some(breaker) = &p.breaker {
                    let _ = writeln!(
                        out,
                        "pool {}: breaker open ({}) until {}: {}",
                        p.name, breaker.class, breaker.closes_at, breaker.message
                    );
                }
            }
        }
        if !self.running.is_empty() {
            let rows = self.running.iter().map(|r| {
                vec![
                    format!("{}/{}", r.spec, r.task_id),
                    r.pool.clone().unwrap_or_else(|| "-".into()),
                    match (&r.engine_id, r.pid) {
                        (Some(id), _) => id.clone(),
                        (None, Some(pid)) => pid.to_string(),
                        (None, None) => "-".into(),
                    },
                    r.attempt.to_string(),
                    r.runtime_seconds.map_or_else(|| "-".into(), format_seconds),
                    r.rss_bytes
                        .map_or_else(|| "-".into(), |b| format!("{} MiB", b >> 20)),
                    r.cpu_seconds.map_or_else(|| "-".into(), format_seconds),
                    r.last_heartbeat.clone().unwrap_or_else(|| "-".into()),
                    r.runner_id.clone().unwrap_or_else(|| "-".into()),
                ]
            });
            let header = [
                "TASK",
                "POOL",
                "PID/JOB",
                "ATTEMPT",
                "RUNTIME",
                "RSS",
                "CPU",
                "LAST HEARTBEAT",
                "RUNNER",
            ];
            section(&mut out, "RUNNING", &header, rows);
        }
        if !self.retrying.is_empty() {
            let rows = self.retrying.iter().map(|r| {
                vec![
                    format!("{}/{}", r.spec, r.task_id),
                    r.attempts.to_string(),
                    r.next_attempt_at.clone(),
                    r.last_error.clone().unwrap_or_default(),
                ]
            });
            let header = ["TASK", "ATTEMPTS", "NEXT ATTEMPT", "LAST ERROR"];
            section(&mut out, "WAITING FOR RETRY", &header, rows);
        }
        if !self.unroutable.is_empty() {
            let rows = self.unroutable.iter().map(|u| {
                vec![
                    format!("{}/{}", u.spec, u.task_id),
                    u.required_skill.clone().unwrap_or_else(|| "(none)".into()),
                ]
            });
            section(&mut out, "NO POOL SERVES", &["TASK", "SKILL"], rows);
        }
        if !self.waiting_for_slot.is_empty() {
            let rows = self
                .waiting_for_slot
                .iter()
                .map(|w| vec![format!("{}/{}", w.spec, w.task_id), w.repo.clone()]);
            section(
                &mut out,
                "WAITING FOR A SLOT",
                &["TASK", "REPOSITORY"],
                rows,
            );
        }
        if !self.budgets.is_empty() {
            let rows = self.budgets.iter().map(|b| {
                let cap = |spent: String, cap: Option<String>| match cap {
                    Some(cap) => format!("{spent}/{cap}"),
                    None => spent,
                };
                vec![
                    format!("{} {}", b.scope, b.name),
                    b.period.clone(),
                    cap(
                        format!("${:.2}", b.spent_usd),
                        b.cap_usd.map(|c| format!("${c:.2}")),
                    ),
                    cap(
                        b.spent_tokens.to_string(),
                        b.cap_tokens.map(|c| c.to_string()),
                    ),
                    b.state.clone(),
                ]
            });
            let header = ["BUDGET", "PERIOD", "USD", "TOKENS", "STATE"];
            section(&mut out, "BUDGETS", &header, rows);
        }
        let attention: Vec<(&RunnerStatus, String)> = self
            .running
            .iter()
            .filter_map(|r| {
                let stalled = r
                    .stalled_since
                    .as_ref()
                    .map(|at| format!("stalled since {at}"));
                Some((r, r.needs_attention.clone().or(stalled)?))
            })
            .collect();
        if !attention.is_empty() {
            let rows = attention
                .iter()
                .map(|(r, why)| vec![format!("{}/{}", r.spec, r.task_id), why.clone()]);
            section(&mut out, "NEEDS ATTENTION", &["TASK", "WHY"], rows);
        }
        if !self.waiting_for_budget.is_empty() {
            let rows = self
                .waiting_for_budget
                .iter()
                .map(|w| vec![format!("{}/{}", w.spec, w.task_id), w.reason.clone()]);
            section(&mut out, "WAITING FOR BUDGET", &["TASK", "WHY"], rows);
        }
        if !self.waiting_for_footprint.is_empty() {
            let rows = self.waiting_for_footprint.iter().map(|w| {
                vec![
                    format!("{}/{}", w.spec, w.task_id),
                    w.repo.clone(),
                    format!("{}/{}", w.conflicts_with.spec, w.conflicts_with.task_id),
                    format!(
                        "{} vs {}",
                        w.paths.join(", "),
                        w.conflicts_with.paths.join(", ")
                    ),
                ]
            });
            section(
                &mut out,
                "WAITING FOR A FOOTPRINT",
                &["TASK", "REPOSITORY", "WAITS FOR", "PATHS"],
                rows,
            );
        }
        if !self.footprint_errors.is_empty() {
            let rows = self
                .footprint_errors
                .iter()
                .map(|e| vec![format!("{}/{}", e.spec, e.task_id), e.error.clone()]);
            section(&mut out, "FOOTPRINTS IGNORED", &["TASK", "ERROR"], rows);
        }
        if !self.slot_errors.is_empty() {
            let rows = self
                .slot_errors
                .iter()
                .map(|e| vec![e.repo.clone(), e.error.clone()]);
            section(&mut out, "SLOT ERRORS", &["REPOSITORY", "ERROR"], rows);
        }
        if !self.deadlocks.is_empty() {
            let rows = self
                .deadlocks
                .iter()
                .map(|f| vec![f.kind().to_owned(), f.describe()]);
            section(
                &mut out,
                "DEADLOCKS AND STUCK TASKS",
                &["KIND", "FINDING"],
                rows,
            );
        }
        if !self.blocked_forever.is_empty() {
            let rows = self
                .blocked_forever
                .iter()
                .map(|s| vec![format!("{}/{}", s.spec, s.task_id), s.reason.clone()]);
            section(&mut out, "NEVER RUNNABLE", &["TASK", "REASON"], rows);
        }
        if !self.tasksets.is_empty() {
            let rows = self.tasksets.iter().map(|ts| {
                let c = |s: &str| ts.counts.get(s).copied().unwrap_or(0).to_string();
                vec![
                    ts.spec.clone(),
                    ts.version.map_or_else(|| "-".into(), |v| v.to_string()),
                    c("ready"),
                    c("running"),
                    c("blocked"),
                    c("done"),
                    c("failed"),
                    ts.error.clone().unwrap_or_default(),
                ]
            });
            let header = [
                "SPEC", "VERSION", "READY", "RUNNING", "BLOCKED", "DONE", "FAILED", "ERROR",
            ];
            section(&mut out, "TASKSETS", &header, rows);
        }
        out
    }
}

pub(crate) fn format_seconds(seconds: f64) -> String {
    // Whole seconds are enough for people; the JSON keeps the fraction.
    let total = seconds.max(0.0).round() as u64;
    let (h, m, s) = (total / 3600, total / 60 % 60, total % 60);
    if h > 0 {
        format!("{h}h{m:02}m{s:02}s")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

pub(crate) fn section(
    out: &mut String,
    title: &str,
    header: &[&str],
    rows: impl Iterator<Item = Vec<String>>,
) {
    let rows: Vec<Vec<String>> = rows.collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let _ = writeln!(out, "\n{title}");
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, (cell, width)) in cells.zip(&widths).enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            let _ = write!(text, "{cell:<width$}");
        }
        let _ = writeln!(out, "  {}", text.trim_end());
    };
    line(&mut header.iter().copied());
    for row in &rows {
        line(&mut row.iter().map(String::as_str));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_are_shown_compactly() {
        assert_eq!(format_seconds(4.4), "4s");
        assert_eq!(format_seconds(75.0), "1m15s");
        assert_eq!(format_seconds(3725.0), "1h02m05s");
    }

    #[test]
    fn columns_are_aligned() {
        let mut out = String::new();
        let rows = vec![
            vec!["a".to_string(), "1".to_string()],
            vec!["long-name".into(), "22".into()],
        ];
        section(&mut out, "T", &["NAME", "N"], rows.into_iter());
        let lines: Vec<&str> = out.lines().skip(2).collect();
        assert_eq!(
            lines,
            ["  NAME       N", "  a          1", "  long-name  22"]
        );
    }

    #[test]
    fn a_report_written_before_deadlocks_existed_still_loads() {
        // What a dispatcher without deadlock detection writes to status.json.
        let old = r#"{"schema_version": 1,
            "dispatcher": {"running": false, "pid": null, "started_at": null, "updated_at": null,
                           "draining": false, "policy": "priority", "state_dir": "s",
                           "registry_dir": "r"},
            "queue_length": 0, "totals": {}, "pools": [], "running": [], "retrying": [],
            "unroutable": [], "blocked_forever": [], "tasksets": []}"#;
        let report: StatusReport = serde_json::from_str(old).unwrap();
        assert!(report.deadlocks.is_empty());
        assert!(report.waiting_for_footprint.is_empty());
        assert!(report.footprint_errors.is_empty());
    }

    #[test]
    fn footprint_waits_are_listed_in_json_and_in_their_own_section() {
        let report = StatusReport {
            waiting_for_footprint: vec![FootprintWaitStatus {
                spec: "s".into(),
                task_id: "B".into(),
                repo: "app".into(),
                conflicts_with: FootprintHolder {
                    spec: "s".into(),
                    task_id: "A".into(),
                    paths: vec!["src/auth/**".into()],
                },
                paths: vec!["src/auth/login.rs".into()],
            }],
            ..StatusReport::default()
        };
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(
            json["waiting_for_footprint"],
            serde_json::json!([{"spec": "s", "task_id": "B", "repo": "app",
                                "conflicts_with": {"spec": "s", "task_id": "A",
                                                   "paths": ["src/auth/**"]},
                                "paths": ["src/auth/login.rs"]}])
        );
        let text = report.render();
        let lines: Vec<&str> = text
            .lines()
            .skip_while(|line| *line != "WAITING FOR A FOOTPRINT")
            .take(3)
            .collect();
        assert_eq!(
            lines,
            [
                "WAITING FOR A FOOTPRINT",
                "  TASK  REPOSITORY  WAITS FOR  PATHS",
                "  s/B   app         s/A        src/auth/login.rs vs src/auth/**",
            ]
        );
    }

    #[test]
    fn deadlocks_are_listed_in_json_and_in_their_own_section() {
        let report = StatusReport {
            deadlocks: vec![Finding::FailedDependency {
                spec: "chat-app".into(),
                task_id: "3".into(),
                dependency: "2".into(),
            }],
            ..StatusReport::default()
        };
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(
            json["deadlocks"],
            serde_json::json!([{"kind": "failed_dependency", "spec": "chat-app",
                                "task_id": "3", "dependency": "2"}])
        );
        let text = report.render();
        let lines: Vec<&str> = text
            .lines()
            .skip_while(|line| *line != "DEADLOCKS AND STUCK TASKS")
            .take(3)
            .collect();
        assert_eq!(
            lines,
            [
                "DEADLOCKS AND STUCK TASKS",
                "  KIND               FINDING",
                "  failed_dependency  chat-app/3 waits on failed dependency 2",
            ]
        );
    }
}

//! The status report as the core sees it, and the snapshot file `dispatcher status` reads.

use std::time::Instant;

use super::{Core, SNAPSHOT_INTERVAL, SNAPSHOT_KEEPALIVE};
use crate::status::{
    self, DispatcherInfo, PoolStatus, RetryStatus, RunnerStatus, SlotErrorStatus, SlotWaitStatus,
    StatusReport, StuckStatus, TasksetStatus, UnroutableStatus,
};
use crate::timefmt;

impl Core {
    pub(super) fn publish(&mut self, last: bool) {
        self.forget_ended_footprint_waits();
        let due = match self.snapshot_written {
            None => true,
            Some(at) => {
                let age = at.elapsed();
                (self.snapshot_dirty && age >= SNAPSHOT_INTERVAL) || age >= SNAPSHOT_KEEPALIVE
            }
        };
        if !due && !last {
            return;
        }
        self.compute_never_runnable();
        let mut report = self.report();
        if last {
            report.dispatcher.running = false;
        }
        if let Err(err) = report.write_snapshot(&self.state) {
            log::warn!(
                "cannot write status snapshot {}: {err}",
                self.state.snapshot_path().display()
            );
        }
        if let Some(path) = &self.config.metrics_textfile {
            let text = crate::metrics::render(&report);
            if let Err(err) = crate::fsutil::write_atomic(path, text.as_bytes()) {
                log::warn!("cannot write metrics textfile {}: {err}", path.display());
            }
        }
        self.snapshot_written = Some(Instant::now());
        self.snapshot_dirty = false;
    }

    pub(super) fn report(&mut self) -> StatusReport {
        let budgets = if self.config.has_budgets() {
            self.budget_report()
        } else {
            Vec::new()
        };
        let mut totals = status::empty_counts();
        let mut tasksets = Vec::with_capacity(self.specs.len());
        let mut blocked_forever = Vec::new();
        for (spec, state) in &self.specs {
            let mut counts = status::empty_counts();
            if let Some(taskset) = &state.taskset {
                for task in &taskset.tasks {
                    *counts.entry(task.state.as_str().to_string()).or_default() += 1;
                }
            }
            for (state_name, n) in &counts {
                *totals.entry(state_name.clone()).or_default() += n;
            }
            blocked_forever.extend(state.never_runnable.iter().flatten().map(|(id, reason)| {
                StuckStatus {
                    spec: spec.clone(),
                    task_id: id.clone(),
                    reason: reason.clone(),
                }
            }));
            tasksets.push(TasksetStatus {
                spec: spec.clone(),
                version: state.taskset.as_ref().map(|t| t.version),
                tasks: state.taskset.as_ref().map_or(0, |t| t.tasks.len()),
                counts,
                error: state.error.clone(),
            });
        }
        let mut running: Vec<RunnerStatus> = self
            .running
            .values()
            .map(|r| RunnerStatus {
                runner_id: Some(r.runner_id.clone()),
                spec: r.key.spec.to_string(),
                task_id: r.key.id.to_string(),
                title: r.title.clone(),
                pool: r.pool.map(|p| self.pools[p].name.clone()),
                adopted: r.adopted,
                rss_bytes: r.usage.map(|u| u.rss_bytes),
                cpu_seconds: r.usage.map(|u| u.cpu_seconds),
                pid: r.pid,
                attempt: r.attempt,
                started_at: Some(r.started_at.clone()),
                runtime_seconds: Some(r.started.elapsed().as_secs_f64()),
                last_heartbeat: r.last_heartbeat.clone(),
                log_file: Some(r.log_path.display().to_string()),
                engine_id: r.engine_id.clone(),
                spend: r.spend.map(crate::runner_report::Spend::to_json),
                needs_attention: r.needs_attention.clone(),
                stalled_since: r.progress.stalled_since.clone(),
            })
            .collect();
        running.sort_by(|a, b| (&a.spec, &a.task_id).cmp(&(&b.spec, &b.task_id)));
        let retrying = self
            .retry
            .iter()
            .map(|(at, key)| {
                let meta = self
                    .specs
                    .get(&*key.spec)
                    .and_then(|s| s.taskset.as_ref())
                    .and_then(|ts| ts.task(&key.id))
                    .map(crate::registry::Task::dispatcher_meta)
                    .unwrap_or_default();
                RetryStatus {
                    spec: key.spec.to_string(),
                    task_id: key.id.to_string(),
                    attempts: meta.attempts,
                    next_attempt_at: timefmt::format(*at),
                    last_error: meta.last_error,
                }
            })
            .collect();
        StatusReport {
            schema_version: status::SCHEMA_VERSION,
            dispatcher: DispatcherInfo {
                running: true,
                pid: Some(std::process::id()),
                started_at: Some(self.started_at.clone()),
                updated_at: Some(timefmt::now_string()),
                draining: self.drain.is_some(),
                policy: self
                    .config
                    .dispatcher
                    .scheduling_policy
                    .as_str()
                    .to_string(),
                state_dir: self.state.root().display().to_string(),
                registry_dir: self.registry.root().display().to_string(),
            },
            queue_length: self.queue.len(),
            totals,
            pools: self
                .pools
                .iter()
                .map(|p| {
                    let pool = &self.config.agent_pools[&p.name];
                    PoolStatus {
                        name: p.name.clone(),
                        kind: pool.kind.as_str().to_string(),
                        running: p.running,
                        max_concurrency: pool.max_concurrency,
                        enabled: pool.enabled && !p.switched_off,
                        cpu_used: p.cpu_used,
                        cpu_quota: pool.cpu_quota,
                        memory_used_mb: p.memory_used_mb,
                        memory_quota_mb: pool.memory_quota_mb,
                        quota_blocked: p.quota_blocked,
                        engine_error: p.engine_error.clone(),
                        breaker: p.breaker.as_ref().map(|b| crate::status::BreakerStatus {
                            class: b.class.as_str().to_string(),
                            message: b.message.clone(),
                            opened_at: b.opened_at.clone(),
                            closes_at: b.until.clone(),
                        }),
                    }
                })
                .collect(),
            running,
            retrying,
            unroutable: self
                .unroutable
                .iter()
                .map(|(key, skill)| UnroutableStatus {
                    spec: key.spec.to_string(),
                    task_id: key.id.to_string(),
                    required_skill: skill.clone(),
                })
                .collect(),
            blocked_forever,
            tasksets,
            waiting_for_slot: self
                .queue
                .waiting_for_slots(&self.free_slots)
                .map(|(key, repo)| SlotWaitStatus {
                    spec: key.spec.to_string(),
                    task_id: key.id.to_string(),
                    repo: repo.to_string(),
                })
                .collect(),
            waiting_for_footprint: self.footprint_wait_report(),
            footprint_errors: self.footprint_error_report(),
            slot_errors: self
                .slot_errors
                .iter()
                .map(|(repo, error)| SlotErrorStatus {
                    repo: repo.clone(),
                    error: error.clone(),
                })
                .collect(),
            // Filled by the core's periodic deadlock check once it is wired in.
            deadlocks: self.deadlocks.clone(),
            counters: self.counters.clone(),
            budgets,
            waiting_for_budget: self
                .budget_waiting
                .iter()
                .map(|(key, reason)| StuckStatus {
                    spec: key.spec.to_string(),
                    task_id: key.id.to_string(),
                    reason: reason.clone(),
                })
                .collect(),
        }
    }
}

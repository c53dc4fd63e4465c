//! Stall detection: a runner that keeps its heartbeat alive but changes nothing. Progress is
//! a change of the runner's working directory (fingerprinted off the core thread by the
//! progress probe) or a new `progress` value in its heartbeat report. No progress for the
//! pool's `stall_timeout` → stalled: reported (status, `RunnerStalled` event, a `stalled`
//! notification) and handled by the pool's `stall_action` (`warn`, `restart`, `fail`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::Core;
use crate::config::StallAction;
use crate::registry::Event;
use crate::supervisor::StopReason;
use crate::timefmt;

/// Bounds on how often a running runner's directory is fingerprinted.
const PROBE_MIN: Duration = Duration::from_secs(1);
const PROBE_MAX: Duration = Duration::from_secs(30);

/// What the core knows of one runner's progress.
pub(super) struct Progress {
    workdir: PathBuf,
    value: Option<Value>,
    fingerprint: Option<u64>,
    last_change: Instant,
    next_probe: Instant,
    /// When the probe in flight was asked for.
    probing: Option<Instant>,
    /// When the last answered probe was asked for: a stall is only called on a fingerprint
    /// taken a whole `stall_timeout` after the last change.
    probed_at: Option<Instant>,
    /// When it was found stalled (cleared when it moves again).
    pub stalled_since: Option<String>,
}

impl Progress {
    pub fn new(workdir: PathBuf) -> Progress {
        let now = Instant::now();
        Progress {
            workdir,
            value: None,
            fingerprint: None,
            last_change: now,
            next_probe: now,
            probing: None,
            probed_at: None,
            stalled_since: None,
        }
    }

    fn moved(&mut self, at: Instant) {
        self.last_change = at;
        self.stalled_since = None;
    }

    /// Whether the evidence says nothing moved for `timeout`.
    fn still_for(&self, timeout: Duration) -> bool {
        let quiet = |at: Instant| at.saturating_duration_since(self.last_change) >= timeout;
        match self.probed_at {
            Some(probed) => quiet(probed),
            // Without a fingerprint only the progress value can tell.
            None => self.value.is_some() && quiet(Instant::now()),
        }
    }
}

fn probe_interval(timeout: Duration) -> Duration {
    (timeout / 4).clamp(PROBE_MIN, PROBE_MAX)
}

impl Core {
    fn stall_settings(&self, runner_id: &str) -> Option<(Duration, StallAction)> {
        let pool = self.running.get(runner_id)?.pool?;
        let agent = &self.config.agent_pools.get(&self.pools[pool].name)?.agent;
        Some((agent.stall_timeout?, agent.stall_action))
    }

    /// A heartbeat report's `progress` value: a new one is progress.
    pub(super) fn note_progress_value(&mut self, runner_id: &str, report: &Value) {
        let Some(value) = report.get("progress") else {
            return;
        };
        if let Some(run) = self.running.get_mut(runner_id) {
            if run.progress.value.as_ref() != Some(value) {
                run.progress.value = Some(value.clone());
                run.progress.moved(Instant::now());
            }
        }
    }

    /// The probe's answer: a changed fingerprint is progress (the first one is the baseline).
    pub(super) fn note_worktree(&mut self, runner_id: &str, fingerprint: Option<u64>) {
        let interval = self
            .stall_settings(runner_id)
            .map_or(PROBE_MAX, |(timeout, _)| probe_interval(timeout));
        let Some(run) = self.running.get_mut(runner_id) else {
            return;
        };
        let progress = &mut run.progress;
        let asked = progress.probing.take().unwrap_or_else(Instant::now);
        progress.next_probe = Instant::now() + interval;
        if let Some(found) = fingerprint {
            if progress.fingerprint.is_some_and(|known| known != found) {
                progress.moved(asked);
            }
            progress.fingerprint = Some(found);
            progress.probed_at = Some(asked);
        }
    }

    /// Probes the runners that are due and acts on those without progress for too long.
    pub(super) fn check_stalls(&mut self) {
        // Every turn of the core passes here: nothing to do unless some pool watches stalls.
        let watched = self
            .config
            .agent_pools
            .values()
            .any(|p| p.agent.stall_timeout.is_some());
        if !watched {
            return;
        }
        let now = Instant::now();
        let ids: Vec<String> = self.running.keys().cloned().collect();
        for runner_id in ids {
            let Some((timeout, action)) = self.stall_settings(&runner_id) else {
                continue;
            };
            let Some(run) = self.running.get_mut(&runner_id) else {
                continue;
            };
            if run.progress.probing.is_none() && now >= run.progress.next_probe {
                if let Some(probe) = &self.probe {
                    run.progress.probing = Some(now);
                    probe.probe(&runner_id, &run.progress.workdir);
                }
            }
            if run.progress.stalled_since.is_some() || !run.progress.still_for(timeout) {
                continue;
            }
            run.progress.stalled_since = Some(timefmt::now_string());
            let key = run.key.clone();
            let why = format!(
                "no change in its working directory and no new progress value for {}s",
                timeout.as_secs()
            );
            log::warn!(
                "task {key}: runner {runner_id} is stalled ({why}); stall_action {}",
                action.as_str()
            );
            self.outbox.push(
                Event::new("RunnerStalled", &key.spec, Some(&key.id))
                    .with("runner_id", runner_id.as_str())
                    .with("stall_timeout_seconds", timeout.as_secs())
                    .with("action", action.as_str()),
            );
            self.notify(
                crate::notify::Notice::new("stalled", format!("{key} is stalled: {why}"))
                    .task(&key.spec, &key.id)
                    .with("action", action.as_str()),
            );
            let reason = match action {
                StallAction::Warn => None,
                StallAction::Restart => Some(StopReason::Stalled),
                StallAction::Fail => Some(StopReason::StallFailed),
            };
            if let Some(reason) = reason {
                if let Some(run) = self.running.get_mut(&runner_id) {
                    run.stop_detail = Some(why);
                }
                self.stop_runner(runner_id, reason);
            }
            self.snapshot_dirty = true;
        }
    }
}

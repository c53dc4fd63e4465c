//! The periodic deadlock check of a running dispatcher: at start-up (after the first full
//! read) and every `[deadlock] check_interval`, every task that can never run, with why.
//! Each new finding is logged, recorded as a `DeadlockDetected` event (once, not at every
//! check) and shown in `status`; with `action = "fail"`, findings make `run` drain and exit 4.

use std::time::Instant;

use super::Core;
use crate::config::DeadlockAction;
use crate::control;
use crate::deadlock::{self, Finding};

impl Core {
    pub(super) fn check_deadlocks(&mut self, force: bool) {
        let settings = self.config.deadlock.clone();
        if !settings.enabled || !self.scanned {
            return;
        }
        let due = force
            || self
                .last_deadlock_check
                .is_none_or(|at| at.elapsed() >= settings.check_interval);
        if !due {
            return;
        }
        self.last_deadlock_check = Some(Instant::now());
        // Claims of other dispatchers are re-examined on the same beat: an owner that died
        // while its taskset stayed quiet is otherwise never noticed.
        let foreign: Vec<String> = self
            .specs
            .iter()
            .filter(|(_, s)| s.error.is_none())
            .filter(|(_, s)| {
                s.taskset.as_ref().is_some_and(|ts| {
                    ts.tasks.iter().any(|t| {
                        t.state == crate::registry::TaskState::Running
                            && t.dispatcher_meta().owner.as_deref() != Some(&self.owner)
                    })
                })
            })
            .map(|(spec, _)| spec.clone())
            .collect();
        for spec in foreign {
            self.requeue_spec(&spec);
        }
        let findings = self.current_findings();
        for finding in self.announced.update(&findings) {
            self.counters.deadlocks_detected += 1;
            self.notify(
                crate::notify::Notice::new("deadlock", format!("deadlock: {}", finding.describe()))
                    .with("kind", finding.kind()),
            );
            log::warn!("deadlock check: {}", finding.describe());
            let event = finding.event();
            if finding.task_id().is_some() || matches!(finding, Finding::Cycle { .. }) {
                self.events.append(&[event]);
            } else {
                control::append_dispatcher_event(&self.state, &event);
            }
        }
        let fail = settings.action == DeadlockAction::Fail
            && findings.iter().any(Finding::is_root_cause)
            && self.drain.is_none();
        self.deadlocks = findings;
        self.snapshot_dirty = true;
        if fail {
            log::error!(
                "deadlock check found tasks that can never run and [deadlock] action is \"fail\": draining, then exit 4"
            );
            self.deadlock_failed = true;
            self.start_drain(self.config.dispatcher.graceful_shutdown_timeout);
        }
    }

    /// Every finding as the registry and the pools stand now.
    fn current_findings(&self) -> Vec<Finding> {
        let pools = &self.pools;
        let config = &self.config;
        let service = deadlock::service_in(config, |name| {
            pools
                .iter()
                .find(|p| p.name == name)
                .is_some_and(|p| config.agent_pools[name].enabled && !p.switched_off)
        });
        let mut findings: Vec<Finding> = Vec::new();
        for (spec, state) in &self.specs {
            if let Some(error) = &state.error {
                findings.push(Finding::Unreadable {
                    spec: spec.clone(),
                    error: error.clone(),
                });
            } else if let Some(taskset) = &state.taskset {
                findings.extend(deadlock::analyze(taskset, &service));
            }
        }
        findings
    }
}

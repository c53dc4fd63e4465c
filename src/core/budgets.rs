//! Spending caps for agent runners: per pool (`[agent_pools.X.budget]`) and per spec
//! (`[spec_budgets.<spec>]`), over a day or in total. Spend comes from the runners' own
//! reports (the heartbeat file's last JSON line while they run, the result file at the end)
//! and is kept per attempt in the registry (`metadata.dispatcher.history[].spend`), so the
//! tally survives restarts and needs no file of its own.
//!
//! A task whose `metadata.estimate` (`{usd, tokens}`) does not fit what is left, or whose
//! budget is spent, waits (`status`: `waiting_for_budget`); a pool whose budget is spent
//! takes no task. A running attempt that crosses the soft share of a cap is flagged for
//! attention (status, event, notification); one that crosses the hard cap is stopped and its
//! task failed.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use chrono::NaiveDate;

use super::Core;
use crate::config::{Budget, BudgetPeriod};
use crate::registry::{Event, Task, Taskset};
use crate::runner_report::Spend;
use crate::scheduler::TaskKey;
use crate::supervisor::StopReason;
use crate::timefmt;

/// Recorded spend of one taskset, by pool and by day.
#[derive(Default)]
pub(super) struct SpecSpend {
    /// The taskset it was counted from (the same allocation means nothing changed). Weak, so
    /// that the core stays the only owner and a write can change its taskset in place; the
    /// weak count keeps the address from being reused by a newer taskset.
    source: Option<Weak<Taskset>>,
    by_day: HashMap<NaiveDate, Spend>,
    by_pool_day: HashMap<(String, NaiveDate), Spend>,
}

impl SpecSpend {
    fn count(taskset: &Arc<Taskset>) -> SpecSpend {
        let mut spend = SpecSpend {
            source: Some(Arc::downgrade(taskset)),
            ..SpecSpend::default()
        };
        for task in &taskset.tasks {
            for attempt in task.dispatcher_meta().history {
                let Some(used) = attempt.spend.as_ref().and_then(Spend::from_json) else {
                    continue;
                };
                let day = timefmt::parse(&attempt.ended_at).map_or(NaiveDate::MIN, |at| at.date());
                let entry = spend.by_day.entry(day).or_default();
                *entry = *entry + used;
                if let Some(pool) = attempt.pool {
                    let entry = spend.by_pool_day.entry((pool, day)).or_default();
                    *entry = *entry + used;
                }
            }
        }
        spend
    }

    fn total(&self, pool: Option<&str>, since: Option<NaiveDate>) -> Spend {
        let in_period = |day: &NaiveDate| since.is_none_or(|since| *day >= since);
        match pool {
            None => self
                .by_day
                .iter()
                .filter(|(day, _)| in_period(day))
                .fold(Spend::default(), |sum, (_, s)| sum + *s),
            Some(pool) => self
                .by_pool_day
                .iter()
                .filter(|((p, day), _)| p == pool && in_period(day))
                .fold(Spend::default(), |sum, (_, s)| sum + *s),
        }
    }
}

/// What a budget covers.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) enum Scope {
    Pool(String),
    Spec(String),
}

impl Scope {
    fn describe(&self) -> String {
        match self {
            Scope::Pool(name) => format!("pool {name}"),
            Scope::Spec(name) => format!("spec {name}"),
        }
    }
}

/// How far a scope is into its budget.
pub(super) struct Standing {
    pub scope: Scope,
    pub budget: Budget,
    pub used: Spend,
}

impl Standing {
    /// Past the hard cap (in dollars or tokens).
    pub fn exhausted(&self) -> bool {
        self.budget.usd.is_some_and(|cap| self.used.cost_usd >= cap)
            || self
                .budget
                .tokens
                .is_some_and(|cap| self.used.tokens >= cap)
    }

    /// Past the soft share of a cap.
    pub fn soft_crossed(&self) -> bool {
        let soft = self.budget.soft;
        self.budget
            .usd
            .is_some_and(|cap| self.used.cost_usd >= cap * soft)
            || self
                .budget
                .tokens
                .is_some_and(|cap| self.used.tokens as f64 >= cap as f64 * soft)
    }

    /// Whether `estimate` still fits under the hard caps.
    fn fits(&self, estimate: Spend) -> bool {
        self.budget
            .usd
            .is_none_or(|cap| self.used.cost_usd + estimate.cost_usd <= cap)
            && self
                .budget
                .tokens
                .is_none_or(|cap| self.used.tokens.saturating_add(estimate.tokens) <= cap)
    }

    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(cap) = self.budget.usd {
            parts.push(format!("${:.2} of ${cap:.2}", self.used.cost_usd));
        }
        if let Some(cap) = self.budget.tokens {
            parts.push(format!("{} of {cap} tokens", self.used.tokens));
        }
        let period = match self.budget.period {
            BudgetPeriod::Day => " today",
            BudgetPeriod::Total => "",
        };
        format!(
            "{} spent {}{period}",
            self.scope.describe(),
            parts.join(", ")
        )
    }
}

/// A task's declared cost, `metadata.estimate = {usd, tokens}`.
fn estimate_of(task: &Task) -> Spend {
    let Some(estimate) = task.metadata.get("estimate") else {
        return Spend::default();
    };
    Spend {
        tokens: estimate
            .get("tokens")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0),
        cost_usd: estimate
            .get("usd")
            .and_then(serde_json::Value::as_f64)
            .filter(|c| c.is_finite() && *c >= 0.0)
            .unwrap_or(0.0),
    }
}

impl Core {
    /// The standing of one scope's budget: recorded spend in its period plus what running
    /// (and just ended, not yet written) attempts reported.
    pub(super) fn standing(&mut self, scope: &Scope) -> Option<Standing> {
        let budget = match scope {
            Scope::Pool(name) => self.config.agent_pools.get(name)?.agent.budget.clone()?,
            Scope::Spec(name) => self.config.spec_budgets.get(name)?.clone(),
        };
        let since = match budget.period {
            BudgetPeriod::Day => Some(timefmt::now().date()),
            BudgetPeriod::Total => None,
        };
        let mut used = Spend::default();
        let specs: Vec<(String, Arc<Taskset>)> = self
            .specs
            .iter()
            .filter(|(spec, _)| match scope {
                Scope::Spec(name) => *spec == name,
                Scope::Pool(_) => true,
            })
            .filter_map(|(spec, state)| Some((spec.clone(), state.taskset.clone()?)))
            .collect();
        for (spec, taskset) in specs {
            let cached = self.spend_cache.get(&spec).is_some_and(|c| {
                c.source
                    .as_ref()
                    .is_some_and(|s| std::ptr::eq(s.as_ptr(), Arc::as_ptr(&taskset)))
            });
            if !cached {
                self.spend_cache
                    .insert(spec.clone(), SpecSpend::count(&taskset));
            }
            let counted = &self.spend_cache[&spec];
            used = used
                + match scope {
                    Scope::Pool(name) => counted.total(Some(name), since),
                    Scope::Spec(_) => counted.total(None, since),
                };
        }
        let live = self
            .running
            .values()
            .map(|r| (r.pool, &r.key, r.spend))
            .chain(self.pending.iter().map(|f| {
                (
                    f.run.pool,
                    &f.run.key,
                    f.result.as_ref().and_then(|r| r.spend).or(f.run.spend),
                )
            }));
        for (pool, key, spend) in live {
            let Some(spend) = spend else { continue };
            let inside = match scope {
                Scope::Pool(name) => pool.is_some_and(|p| &self.pools[p].name == name),
                Scope::Spec(name) => &*key.spec == name,
            };
            if inside {
                used = used + spend;
            }
        }
        Some(Standing {
            scope: scope.clone(),
            budget,
            used,
        })
    }

    /// Why a task of `spec` may not start now because of its spec's budget, if so.
    pub(super) fn spec_budget_refuses(&mut self, spec: &str, task: &Task) -> Option<String> {
        if self.config.spec_budgets.is_empty() {
            return None;
        }
        let standing = self.standing(&Scope::Spec(spec.to_string()))?;
        refusal(&standing, estimate_of(task))
    }

    /// Why a task may not start in `pool` because of the pool's budget, if so.
    pub(super) fn pool_budget_refuses(&mut self, pool: usize, task: &Task) -> Option<String> {
        let name = self.pools[pool].name.clone();
        let standing = self.standing(&Scope::Pool(name))?;
        refusal(&standing, estimate_of(task))
    }

    /// Marks pools whose budget is spent (they take no task until it is whole again).
    pub(super) fn refresh_pool_budgets(&mut self) {
        if !self.config.has_budgets() {
            return;
        }
        for index in 0..self.pools.len() {
            let name = self.pools[index].name.clone();
            let spent = self
                .standing(&Scope::Pool(name.clone()))
                .filter(Standing::exhausted)
                .map(|s| s.describe());
            if spent != self.pools[index].budget_spent {
                match &spent {
                    Some(why) => {
                        log::warn!("pool {name} takes no task: its budget is spent ({why})");
                    }
                    None => log::info!("pool {name} has budget again"),
                }
                self.pools[index].budget_spent = spent;
                self.snapshot_dirty = true;
            }
        }
    }

    /// Keeps a task out of line while a budget refuses it (logged when the reason changes).
    pub(super) fn set_aside_for_budget(&mut self, key: TaskKey, why: String) {
        self.queue.remove(&key);
        if self.budget_waiting.get(&key) != Some(&why) {
            log::warn!("task {key} waits for budget: {why}");
        }
        self.budget_waiting.insert(key, why);
        self.snapshot_dirty = true;
    }

    /// Tasks set aside for their budget whose budget now allows them go back in line.
    pub(super) fn recheck_budget_waiting(&mut self) {
        if self.budget_waiting.is_empty() {
            return;
        }
        let keys: Vec<TaskKey> = self.budget_waiting.keys().cloned().collect();
        let mut by_spec: HashMap<String, Vec<String>> = HashMap::new();
        for key in keys {
            self.budget_waiting.remove(&key);
            by_spec
                .entry(key.spec.to_string())
                .or_default()
                .push(key.id.to_string());
        }
        for (spec, ids) in by_spec {
            if let Some(taskset) = self.specs.get(&spec).and_then(|s| s.taskset.clone()) {
                // Placing them again asks the budgets again; those still refused come back.
                self.refresh_tasks(&spec, &taskset, &ids);
            }
        }
    }

    /// A runner's report of its spend so far: flags the soft cap, stops it at the hard cap.
    pub(super) fn check_runner_budget(&mut self, runner_id: &str) {
        let Some(run) = self.running.get(runner_id) else {
            return;
        };
        let mut scopes = vec![Scope::Spec(run.key.spec.to_string())];
        if let Some(pool) = run.pool {
            scopes.push(Scope::Pool(self.pools[pool].name.clone()));
        }
        for scope in scopes {
            let Some(standing) = self.standing(&scope) else {
                continue;
            };
            let Some(run) = self.running.get_mut(runner_id) else {
                return;
            };
            if standing.exhausted() {
                if run.stop_detail.is_none() {
                    let why = standing.describe();
                    log::warn!(
                        "task {}: {why}, over its hard cap; stopping runner {runner_id}",
                        run.key
                    );
                    run.stop_detail = Some(why);
                    self.stop_runner(runner_id.to_string(), StopReason::BudgetExceeded);
                }
                return;
            }
            if standing.soft_crossed() && run.needs_attention.is_none() {
                let why = format!("{} (soft cap crossed)", standing.describe());
                log::warn!("task {} needs attention: {why}", run.key);
                run.needs_attention = Some(why.clone());
                let key = run.key.clone();
                self.outbox.push(
                    Event::new("BudgetSoftCapReached", &key.spec, Some(&key.id))
                        .with("runner_id", runner_id)
                        .with("reason", why.as_str()),
                );
                self.notify(
                    crate::notify::Notice::new(
                        "needs_attention",
                        format!("{key} needs attention: {why}"),
                    )
                    .task(&key.spec, &key.id)
                    .with("reason", why.as_str()),
                );
                self.snapshot_dirty = true;
            }
        }
    }

    /// Every configured budget with its standing, for `status`.
    pub(super) fn budget_report(&mut self) -> Vec<crate::status::BudgetStatus> {
        let mut scopes: Vec<Scope> = self
            .config
            .agent_pools
            .iter()
            .filter(|(_, p)| p.agent.budget.is_some())
            .map(|(name, _)| Scope::Pool(name.clone()))
            .collect();
        scopes.extend(
            self.config
                .spec_budgets
                .keys()
                .map(|s| Scope::Spec(s.clone())),
        );
        scopes
            .iter()
            .filter_map(|scope| self.standing(scope))
            .map(|s| {
                let (kind, name) = match &s.scope {
                    Scope::Pool(name) => ("pool", name.clone()),
                    Scope::Spec(name) => ("spec", name.clone()),
                };
                crate::status::BudgetStatus {
                    scope: kind.to_string(),
                    name,
                    period: s.budget.period.as_str().to_string(),
                    spent_usd: s.used.cost_usd,
                    spent_tokens: s.used.tokens,
                    cap_usd: s.budget.usd,
                    cap_tokens: s.budget.tokens,
                    soft: s.budget.soft,
                    state: if s.exhausted() {
                        "exhausted"
                    } else if s.soft_crossed() {
                        "soft_cap"
                    } else {
                        "ok"
                    }
                    .to_string(),
                }
            })
            .collect()
    }
}

/// Why `standing` refuses a task with this estimate, if it does.
fn refusal(standing: &Standing, estimate: Spend) -> Option<String> {
    if standing.exhausted() {
        return Some(format!("budget spent: {}", standing.describe()));
    }
    if !standing.fits(estimate) {
        return Some(format!(
            "its estimate (${:.2}, {} tokens) does not fit: {}",
            estimate.cost_usd,
            estimate.tokens,
            standing.describe()
        ));
    }
    None
}

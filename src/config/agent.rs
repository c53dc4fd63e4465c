//! Settings for agent runners in particular: how a pool classifies failures from output,
//! its circuit breaker's cool-down, budgets (per pool and per spec), and stall detection.

use std::time::Duration;

use regex::Regex;

use super::tree::{Item, Problem, Table};
use crate::supervisor::FailureClass;

/// Keys of `[agent_pools.X]` read here.
pub(super) const POOL_AGENT_KEYS: &[&str] = &[
    "classify",
    "breaker_cooldown",
    "budget_usd",
    "budget_tokens",
    "budget_period",
    "budget_soft",
    "stall_timeout",
    "stall_action",
];
/// The keys of a budget, in a pool's table or a `[spec_budgets.<spec>]` table.
pub(super) const BUDGET_KEYS: &[&str] = &[
    "budget_usd",
    "budget_tokens",
    "budget_period",
    "budget_soft",
];

/// Output patterns that give a failed attempt its class: the first class with a pattern
/// found in the end of the attempt's log wins, in the order rate_limited, auth_expired,
/// infra, failed.
#[derive(Debug, Clone, Default)]
pub struct Classify {
    pub rules: Vec<(FailureClass, Vec<Regex>)>,
}

impl Classify {
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The class of the first rule with a pattern found in `text`.
    pub fn class_of(&self, text: &str) -> Option<FailureClass> {
        self.rules
            .iter()
            .find(|(_, patterns)| patterns.iter().any(|p| p.is_match(text)))
            .map(|(class, _)| *class)
    }
}

/// Over which time spend counts against a budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetPeriod {
    /// Spend since midnight (local time); the budget is whole again each day.
    Day,
    /// All spend ever recorded in the registry.
    Total,
}

impl BudgetPeriod {
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetPeriod::Day => "day",
            BudgetPeriod::Total => "total",
        }
    }
}

/// A spending cap: hard limits in dollars and/or tokens, and the soft share of them past
/// which tasks are flagged for attention.
#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    pub usd: Option<f64>,
    pub tokens: Option<u64>,
    pub period: BudgetPeriod,
    /// A fraction of the hard caps (0 < soft ≤ 1).
    pub soft: f64,
}

/// What to do with a runner that keeps its heartbeat but makes no progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StallAction {
    /// Report it (status, event, notification) and let it run.
    Warn,
    /// Stop it; the attempt counts and is retried.
    Restart,
    /// Stop it; the task fails.
    Fail,
}

impl StallAction {
    pub fn as_str(self) -> &'static str {
        match self {
            StallAction::Warn => "warn",
            StallAction::Restart => "restart",
            StallAction::Fail => "fail",
        }
    }
}

/// The agent settings of one pool.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    pub classify: Classify,
    /// How long the pool's breaker stays open when the runner gave no `retry_after`.
    pub breaker_cooldown: Duration,
    pub budget: Option<Budget>,
    /// No worktree change and no new progress value for this long: stalled. `None`: off.
    pub stall_timeout: Option<Duration>,
    pub stall_action: StallAction,
}

impl Default for AgentSettings {
    fn default() -> AgentSettings {
        AgentSettings {
            classify: Classify::default(),
            breaker_cooldown: Duration::from_secs(300),
            budget: None,
            stall_timeout: None,
            stall_action: StallAction::Warn,
        }
    }
}

/// Reads the agent keys of one pool table.
pub(super) fn decode_pool(table: &Table<'_>) -> Result<AgentSettings, Problem> {
    let mut settings = AgentSettings::default();
    if let Some(item) = table.get("classify") {
        settings.classify = decode_classify(&item)?;
    }
    if let Some(item) = table.get("breaker_cooldown") {
        settings.breaker_cooldown = item.duration()?;
    }
    settings.budget = decode_budget(table)?;
    if let Some(item) = table.get("stall_timeout") {
        settings.stall_timeout = Some(item.duration()?).filter(|d| !d.is_zero());
    }
    if let Some(item) = table.get("stall_action") {
        settings.stall_action = match item.str()? {
            "warn" => StallAction::Warn,
            "restart" => StallAction::Restart,
            "fail" => StallAction::Fail,
            other => {
                return Err(item.problem(format!(
                    "unknown stall action {other:?} (supported: warn, restart, fail)"
                )))
            }
        };
    }
    Ok(settings)
}

fn decode_classify(section: &Item<'_>) -> Result<Classify, Problem> {
    let table = section.table()?;
    let names: Vec<&str> = FailureClass::ALL.iter().map(|c| c.as_str()).collect();
    table.deny_unknown(&names)?;
    // A fixed order, so that a log matching two classes always gets the same one.
    let order = [
        FailureClass::RateLimited,
        FailureClass::AuthExpired,
        FailureClass::Infra,
        FailureClass::Failed,
    ];
    let mut rules = Vec::new();
    for class in order {
        let Some(item) = table.get(class.as_str()) else {
            continue;
        };
        let mut patterns = Vec::new();
        for (entry, text) in item.string_list()? {
            if text.is_empty() {
                return Err(entry.problem("an empty pattern would match every log"));
            }
            let regex = Regex::new(text)
                .map_err(|err| entry.problem(format!("invalid pattern {text:?}: {err}")))?;
            patterns.push(regex);
        }
        rules.push((class, patterns));
    }
    Ok(Classify { rules })
}

/// `budget_usd = 50`, `budget_tokens = 2000000`, `budget_period = "day"`, `budget_soft = 0.8`
/// of a table; `None` when it sets no cap.
pub(super) fn decode_budget(table: &Table<'_>) -> Result<Option<Budget>, Problem> {
    let usd = match table.get("budget_usd") {
        Some(item) => Some(super::positive(&item)?),
        None => None,
    };
    let tokens = match table.get("budget_tokens") {
        Some(item) => Some(item.integer(1)?),
        None => None,
    };
    let period = match table.get("budget_period") {
        None => BudgetPeriod::Total,
        Some(item) => match item.str()? {
            "day" => BudgetPeriod::Day,
            "total" => BudgetPeriod::Total,
            other => {
                return Err(item.problem(format!(
                    "unknown budget period {other:?} (supported: day, total)"
                )))
            }
        },
    };
    let soft = match table.get("budget_soft") {
        None => 0.8,
        Some(item) => {
            let soft = item.float()?;
            if !(soft > 0.0 && soft <= 1.0) {
                return Err(item.problem(format!(
                    "must be a fraction of the budget above 0 and at most 1, found {soft}"
                )));
            }
            soft
        }
    };
    if usd.is_none() && tokens.is_none() {
        if let Some(item) = table.get("budget_period").or(table.get("budget_soft")) {
            return Err(item.problem("a budget needs budget_usd or budget_tokens (or both)"));
        }
        return Ok(None);
    }
    Ok(Some(Budget {
        usd,
        tokens,
        period,
        soft,
    }))
}

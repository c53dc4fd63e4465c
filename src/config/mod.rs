//! `dispatcher.toml`: the settings, their defaults, and validation with errors that name the
//! file, the dotted key and the line.

mod agent;
mod duration;
mod engine;
mod tree;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use agent::{AgentSettings, Budget, BudgetPeriod, Classify, StallAction};
pub use duration::parse_duration;
pub use engine::EngineSettings;
use tree::{Item, Lines, Node, Problem};

use crate::slots::{self, RepoConfig};

/// The whole configuration, with every default filled in and every relative path resolved.
#[derive(Debug, Clone)]
pub struct Config {
    pub dispatcher: DispatcherSettings,
    pub retry: RetrySettings,
    pub task_registry: RegistrySettings,
    /// Keyed by pool name.
    pub agent_pools: BTreeMap<String, PoolConfig>,
    /// Skill → pool names, in the order written. The key `default` covers tasks whose skill has
    /// no entry of its own.
    pub skill_mapping: BTreeMap<String, Vec<String>>,
    /// `[repo_pool]`: where task checkouts live and which repositories get them.
    pub repo_pool: RepoPoolSettings,
    /// `[fair_share] weights`: spec → weight for the `fair-share` policy (default 1).
    pub fair_share_weights: BTreeMap<String, f64>,
    /// `[spec_budgets.<spec>]`: spending caps per spec.
    pub spec_budgets: BTreeMap<String, Budget>,
    /// `[deadlock]`: the periodic search for tasks that can never run.
    pub deadlock: DeadlockSettings,
    /// `[metrics] textfile`: where a running dispatcher keeps its metrics for node_exporter.
    pub metrics_textfile: Option<PathBuf>,
    /// `[notifications]`: the webhook and what to send it.
    pub notifications: Option<crate::notify::NotifySettings>,
    /// `[metrics] listen`: where a running dispatcher serves `/metrics`, `/status` and
    /// `/healthz` over HTTP.
    pub metrics_listen: Option<SocketAddr>,
    /// The directory relative paths were resolved against: the config file's directory.
    pub base_dir: PathBuf,
}

/// `[dispatcher]`.
#[derive(Debug, Clone)]
pub struct DispatcherSettings {
    pub poll_interval: Duration,
    pub scheduling_policy: SchedulingPolicy,
    pub max_global_concurrency: usize,
    /// A runner silent for this long is killed; zero disables the check.
    pub heartbeat_timeout: Duration,
    pub graceful_shutdown_timeout: Duration,
    /// Time between TERM and KILL when stopping a runner.
    pub stop_grace_period: Duration,
    pub state_dir: PathBuf,
    /// An attempt's log is cut at this size, with a marker; `None` keeps everything.
    pub max_log_bytes: Option<u64>,
    /// A task ready for longer than this is taken before any other; `None`: off.
    pub starvation_after: Option<Duration>,
    /// A task without `metadata.touches` takes the files its earlier attempts changed (their
    /// patches) as its footprint.
    pub learn_footprints: bool,
}

/// The order in which ready tasks are started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchedulingPolicy {
    Priority,
    Fifo,
    SkillBased,
    FairShare,
}

impl SchedulingPolicy {
    /// The spelling used in `dispatcher.toml`.
    pub fn as_str(self) -> &'static str {
        match self {
            SchedulingPolicy::Priority => "priority",
            SchedulingPolicy::Fifo => "fifo",
            SchedulingPolicy::SkillBased => "skill-based",
            SchedulingPolicy::FairShare => "fair-share",
        }
    }
}

/// `[retry]`.
#[derive(Debug, Clone)]
pub struct RetrySettings {
    pub max_attempts: u32,
    /// Retries after `infra` failures, which do not count against `max_attempts`; past it
    /// the task fails, so a broken machine cannot retry a task forever.
    pub max_infra_retries: u32,
    pub backoff_base: f64,
    pub initial_delay: Duration,
    pub max_delay: Duration,
}

impl RetrySettings {
    /// The delay after failed attempt `attempt` (1-based; 0 counts as 1):
    /// `min(max_delay, initial_delay * backoff_base^(attempt-1))`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exponent = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        if self.initial_delay.is_zero() {
            // Zero times an infinite factor would be NaN; zero times anything is zero.
            return Duration::ZERO;
        }
        let secs = self.initial_delay.as_secs_f64() * self.backoff_base.powi(exponent);
        // A huge attempt number overflows to infinity, which the comparison sends to the cap
        // instead of letting `Duration::from_secs_f64` panic.
        if secs >= self.max_delay.as_secs_f64() {
            return self.max_delay;
        }
        Duration::from_secs_f64(secs).min(self.max_delay)
    }
}

/// `[task_registry]`.
#[derive(Debug, Clone)]
pub struct RegistrySettings {
    pub dir: PathBuf,
}

/// `[repo_pool]`.
#[derive(Debug, Clone)]
pub struct RepoPoolSettings {
    /// The NecroCode workspaces directory: `<dir>/<repo>/pool.json`, `<dir>/<repo>/slot<N>/`.
    pub dir: PathBuf,
    /// `[[repo_pool.repos]]`, in the order written; names are unique.
    pub repos: Vec<RepoConfig>,
}

/// `[deadlock]`.
#[derive(Debug, Clone)]
pub struct DeadlockSettings {
    /// Whether `run` checks at start-up and every `check_interval`.
    pub enabled: bool,
    pub check_interval: Duration,
    pub action: DeadlockAction,
}

/// What `run` does when a check finds tasks that can never run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadlockAction {
    /// Log a warning and keep running.
    Warn,
    /// Stop taking tasks, drain, and exit 4.
    Fail,
}

impl DeadlockAction {
    /// The spelling used in `dispatcher.toml`.
    pub fn as_str(self) -> &'static str {
        match self {
            DeadlockAction::Warn => "warn",
            DeadlockAction::Fail => "fail",
        }
    }
}

/// `[agent_pools.<name>]`.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// TOML key `type`.
    pub kind: PoolKind,
    pub max_concurrency: usize,
    /// Whether the pool takes tasks; a disabled pool still appears in `skill_mapping` results.
    pub enabled: bool,
    /// The runner's argv, never passed through a shell. A relative program path containing
    /// `/` has been resolved against the config file's directory.
    pub command: Vec<String>,
    /// Extra environment for runners.
    pub env: BTreeMap<String, String>,
    /// Exported to runners as `RUNNER_<KEY>`.
    pub config: BTreeMap<String, String>,
    /// Execution timeout; `None` (or zero in the file) means no limit.
    pub timeout: Option<Duration>,
    /// Whether runners get the dispatcher's own environment; when false only `pass_env`
    /// names are passed on.
    pub inherit_env: bool,
    /// Variables of the dispatcher's environment passed on when `inherit_env` is false.
    pub pass_env: Vec<String>,
    /// A file of `KEY=value` lines (secrets) added to the runner's environment, read at
    /// each launch, never logged or written to status, events or TASK_CONTEXT.
    pub env_file: Option<PathBuf>,
    /// Caps on the sum of the running tasks' requests (CPUs, MiB); `None`: no cap.
    pub cpu_quota: Option<f64>,
    pub memory_quota_mb: Option<u64>,
    /// The request of a task that names none in `metadata.resources`.
    pub default_cpu: f64,
    pub default_memory_mb: u64,
    /// Address-space limit of each runner (setrlimit), in MiB; `None`: no limit.
    pub memory_limit_mb: Option<u64>,
    /// How an engine pool (slurm, docker, kubernetes) submits and watches its jobs.
    pub engine: EngineSettings,
    /// Failure classification, circuit breaker, budget and stall detection.
    pub agent: AgentSettings,
}

/// How a pool runs its agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolKind {
    /// A supervised subprocess on this machine.
    LocalProcess,
    /// A batch job of a Slurm cluster (`sbatch`).
    Slurm,
    /// A container of a Docker engine (`docker run -d`).
    Docker,
    /// A `batch/v1` Job of a Kubernetes cluster (`kubectl`).
    Kubernetes,
}

impl PoolConfig {
    /// A local-process pool running `command`, every other setting at its default (one
    /// runner at a time, no timeout, the dispatcher's environment, no quotas).
    pub fn new(command: Vec<String>) -> PoolConfig {
        PoolConfig {
            kind: PoolKind::LocalProcess,
            max_concurrency: 1,
            enabled: true,
            command,
            env: BTreeMap::new(),
            config: BTreeMap::new(),
            timeout: None,
            inherit_env: true,
            pass_env: Vec::new(),
            env_file: None,
            cpu_quota: None,
            memory_quota_mb: None,
            default_cpu: 1.0,
            default_memory_mb: 0,
            memory_limit_mb: None,
            engine: EngineSettings::default(),
            agent: AgentSettings::default(),
        }
    }
}

impl PoolKind {
    const SUPPORTED: &'static [(&'static str, PoolKind)] = &[
        ("local-process", PoolKind::LocalProcess),
        ("slurm", PoolKind::Slurm),
        ("docker", PoolKind::Docker),
        ("kubernetes", PoolKind::Kubernetes),
    ];

    /// The spelling used in `dispatcher.toml`.
    pub fn as_str(self) -> &'static str {
        match self {
            PoolKind::LocalProcess => "local-process",
            PoolKind::Slurm => "slurm",
            PoolKind::Docker => "docker",
            PoolKind::Kubernetes => "kubernetes",
        }
    }

    /// Whether an external engine runs this pool's runners (no local supervisor).
    pub fn is_engine(self) -> bool {
        self != PoolKind::LocalProcess
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", render_invalid(path, *line, key, message))]
    Invalid {
        path: PathBuf,
        line: Option<usize>,
        /// Dotted key, such as `agent_pools.backend.max_concurrency`; empty for syntax errors.
        key: String,
        message: String,
    },
}

/// `file:line: key: message`, leaving out the parts that are not known.
fn render_invalid(path: &Path, line: Option<usize>, key: &str, message: &str) -> String {
    let mut text = path.display().to_string();
    if let Some(line) = line {
        let _ = write!(text, ":{line}");
    }
    if !key.is_empty() {
        let _ = write!(text, ": {key}");
    }
    let _ = write!(text, ": {message}");
    text
}

/// 100 MiB: an agent's whole transcript fits; a runaway loop printing forever does not fill
/// the disk.
pub const DEFAULT_MAX_LOG_BYTES: u64 = 100 << 20;

const SECTIONS: &[&str] = &[
    "dispatcher",
    "retry",
    "task_registry",
    "agent_pools",
    "skill_mapping",
    "repo_pool",
    "fair_share",
    "spec_budgets",
    "deadlock",
    "metrics",
    "notifications",
];
const NOTIFICATION_KEYS: &[&str] = &["webhook_url", "events", "timeout", "max_attempts", "queue"];
const METRICS_KEYS: &[&str] = &["textfile", "listen"];
const DISPATCHER_KEYS: &[&str] = &[
    "poll_interval",
    "scheduling_policy",
    "max_global_concurrency",
    "heartbeat_timeout",
    "graceful_shutdown_timeout",
    "stop_grace_period",
    "state_dir",
    "max_log_bytes",
    "starvation_after",
    "learn_footprints",
];
const RETRY_KEYS: &[&str] = &[
    "max_attempts",
    "max_infra_retries",
    "backoff_base",
    "initial_delay",
    "max_delay",
];
const REGISTRY_KEYS: &[&str] = &["dir"];
const REPO_POOL_KEYS: &[&str] = &["dir", "repos"];
const REPO_KEYS: &[&str] = &[
    "name",
    "url",
    "slots",
    "base_branch",
    "branch_pattern",
    "setup",
    "setup_timeout",
    "copy_files",
    "port_base",
    "ports_per_slot",
];
const DEADLOCK_KEYS: &[&str] = &["enabled", "check_interval", "action"];
const POOL_KEYS: &[&str] = &[
    "type",
    "max_concurrency",
    "enabled",
    "command",
    "env",
    "config",
    "timeout",
    "inherit_env",
    "pass_env",
    "env_file",
    "cpu_quota",
    "memory_quota",
    "default_resources",
    "memory_limit_mb",
];
const RESOURCE_KEYS: &[&str] = &["cpu", "memory_mb"];
const FAIR_SHARE_KEYS: &[&str] = &["weights"];

impl Config {
    /// Whether any pool or spec has a budget: spend is only tallied then.
    pub fn has_budgets(&self) -> bool {
        !self.spec_budgets.is_empty() || self.agent_pools.values().any(|p| p.agent.budget.is_some())
    }

    /// Reads and validates the file at `path`. Relative paths inside are resolved against the
    /// file's directory, made absolute first so that runners started elsewhere still find them.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let io_error = |source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        };
        let text = std::fs::read_to_string(path).map_err(io_error)?;
        let absolute = std::path::absolute(path).map_err(io_error)?;
        parse(&text, path, &base_dir_of(&absolute))
    }

    /// Parses `text` as if read from `origin`: errors name `origin`, and relative paths are
    /// resolved against its parent directory.
    pub fn from_toml_str(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        parse(text, origin, &base_dir_of(origin))
    }

    /// Every default, no pools, paths under `base_dir`.
    pub fn default_in(base_dir: &Path) -> Config {
        Config {
            dispatcher: DispatcherSettings {
                poll_interval: Duration::from_secs(5),
                scheduling_policy: SchedulingPolicy::Priority,
                max_global_concurrency: 10,
                heartbeat_timeout: Duration::from_secs(60),
                graceful_shutdown_timeout: Duration::from_secs(300),
                stop_grace_period: Duration::from_secs(10),
                state_dir: base_dir.join(".dispatcher"),
                max_log_bytes: Some(DEFAULT_MAX_LOG_BYTES),
                starvation_after: None,
                learn_footprints: false,
            },
            retry: RetrySettings {
                max_attempts: 3,
                max_infra_retries: 10,
                backoff_base: 2.0,
                initial_delay: Duration::from_secs(10),
                max_delay: Duration::from_secs(300),
            },
            task_registry: RegistrySettings {
                dir: base_dir.join("registry"),
            },
            agent_pools: BTreeMap::new(),
            skill_mapping: BTreeMap::new(),
            repo_pool: RepoPoolSettings {
                dir: base_dir.join("workspaces"),
                repos: Vec::new(),
            },
            fair_share_weights: BTreeMap::new(),
            spec_budgets: BTreeMap::new(),
            metrics_textfile: None,
            notifications: None,
            metrics_listen: None,
            deadlock: DeadlockSettings {
                enabled: true,
                check_interval: Duration::from_secs(60),
                action: DeadlockAction::Warn,
            },
            base_dir: base_dir.to_path_buf(),
        }
    }

    /// The pools that may run a task needing `skill`, in the order configured:
    /// `skill_mapping[skill]`, else the pool named like the skill, else `skill_mapping.default`,
    /// else the pool named `default`, else none. A task without a skill gets the default rule.
    /// Whether a skill reaches its pools through its own mapping or a pool of its name,
    /// rather than through `default` (the `skill-based` policy serves those tasks first).
    pub fn skill_is_mapped(&self, skill: Option<&str>) -> bool {
        skill
            .is_some_and(|s| self.skill_mapping.contains_key(s) || self.agent_pools.contains_key(s))
    }

    pub fn pools_for_skill(&self, skill: Option<&str>) -> Vec<&str> {
        if let Some(skill) = skill {
            if let Some(found) = self.mapped_or_named(skill) {
                return found;
            }
        }
        self.mapped_or_named("default").unwrap_or_default()
    }

    fn mapped_or_named(&self, name: &str) -> Option<Vec<&str>> {
        if let Some(pools) = self.skill_mapping.get(name) {
            return Some(pools.iter().map(String::as_str).collect());
        }
        let (pool, _) = self.agent_pools.get_key_value(name)?;
        Some(vec![pool.as_str()])
    }
}

fn base_dir_of(origin: &Path) -> PathBuf {
    match origin.parent() {
        // A bare file name has the empty path as its parent; "." says the same thing readably.
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn parse(text: &str, origin: &Path, base_dir: &Path) -> Result<Config, ConfigError> {
    let invalid = |problem: Problem| ConfigError::Invalid {
        path: origin.to_path_buf(),
        line: problem.line,
        key: problem.key,
        message: problem.message,
    };
    let lines = Lines::new(text);
    let root: Node = toml::from_str(text).map_err(|error| {
        invalid(Problem {
            line: error.span().map(|span| lines.line_of(span)),
            key: String::new(),
            message: syntax_message(&error),
        })
    })?;
    decode(&Item::root(&root, &lines), base_dir).map_err(invalid)
}

/// toml's own message, on one line with its first letter lowered to match ours. Dates
/// are never valid in this file, and toml reports them through a private marker that would only
/// confuse a reader, so that case gets a plain message.
fn syntax_message(error: &toml::de::Error) -> String {
    let message = error.message().trim_end();
    if message.contains("$__toml_private_datetime") {
        return "dates and times are not valid in this file".to_owned();
    }
    // toml spreads a parse error over several lines; ours fit on one.
    let message = message.lines().collect::<Vec<_>>().join("; ");
    let mut chars = message.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => "invalid toml".to_owned(),
    }
}

fn decode(root: &Item<'_>, base_dir: &Path) -> Result<Config, Problem> {
    let mut config = Config::default_in(base_dir);
    let root = root.table()?;
    root.deny_unknown(SECTIONS)?;
    if let Some(section) = root.get("notifications") {
        config.notifications = Some(decode_notifications(&section)?);
    }
    if let Some(section) = root.get("metrics") {
        let table = section.table()?;
        table.deny_unknown(METRICS_KEYS)?;
        if let Some(item) = table.get("textfile") {
            config.metrics_textfile = Some(path_value(&item, base_dir)?);
        }
        if let Some(item) = table.get("listen") {
            // A host name would need a resolver and could name several addresses; the
            // endpoint binds exactly one, so the key takes an IP address and a port.
            let addr = item.str()?.parse::<SocketAddr>().map_err(|_| {
                item.problem("must be an IP address and port, like \"127.0.0.1:9464\"")
            })?;
            config.metrics_listen = Some(addr);
        }
    }
    if let Some(section) = root.get("spec_budgets") {
        for item in section.table()?.entries() {
            let table = item.table()?;
            table.deny_unknown(agent::BUDGET_KEYS)?;
            match agent::decode_budget(&table)? {
                Some(budget) => {
                    config.spec_budgets.insert(item.name.to_owned(), budget);
                }
                None => {
                    return Err(item.problem("a budget needs budget_usd or budget_tokens (or both)"))
                }
            }
        }
    }
    if let Some(section) = root.get("fair_share") {
        let table = section.table()?;
        table.deny_unknown(FAIR_SHARE_KEYS)?;
        if let Some(weights) = table.get("weights") {
            for item in weights.table()?.entries() {
                config
                    .fair_share_weights
                    .insert(item.name.to_owned(), positive(&item)?);
            }
        }
    }
    if let Some(section) = root.get("dispatcher") {
        decode_dispatcher(&section, base_dir, &mut config.dispatcher)?;
    }
    if let Some(section) = root.get("retry") {
        decode_retry(&section, &mut config.retry)?;
    }
    if let Some(section) = root.get("task_registry") {
        let table = section.table()?;
        table.deny_unknown(REGISTRY_KEYS)?;
        if let Some(item) = table.get("dir") {
            config.task_registry.dir = path_value(&item, base_dir)?;
        }
    }
    if let Some(section) = root.get("agent_pools") {
        for item in section.table()?.entries() {
            check_safe_name(&item, "pool")?;
            let pool = decode_pool(&item, base_dir)?;
            config.agent_pools.insert(item.name.to_owned(), pool);
        }
    }
    if let Some(section) = root.get("skill_mapping") {
        for item in section.table()?.entries() {
            check_safe_name(&item, "skill")?;
            let pools = decode_skill(&item, &config.agent_pools)?;
            config.skill_mapping.insert(item.name.to_owned(), pools);
        }
    }
    if let Some(section) = root.get("repo_pool") {
        decode_repo_pool(&section, base_dir, &mut config.repo_pool)?;
    }
    if let Some(section) = root.get("deadlock") {
        decode_deadlock(&section, &mut config.deadlock)?;
    }
    Ok(config)
}

fn decode_deadlock(section: &Item<'_>, settings: &mut DeadlockSettings) -> Result<(), Problem> {
    let table = section.table()?;
    table.deny_unknown(DEADLOCK_KEYS)?;
    if let Some(item) = table.get("enabled") {
        settings.enabled = item.bool()?;
    }
    if let Some(item) = table.get("check_interval") {
        settings.check_interval = item.duration()?;
        // A zero interval would check in a busy loop; `enabled = false` is how to turn it off.
        if settings.check_interval.is_zero() {
            return Err(
                item.problem("must be greater than zero (use enabled = false to turn checks off)")
            );
        }
    }
    if let Some(item) = table.get("action") {
        settings.action = match item.str()? {
            "warn" => DeadlockAction::Warn,
            "fail" => DeadlockAction::Fail,
            other => {
                return Err(item.problem(format!(
                    "unknown deadlock action {other:?} (supported: warn, fail)"
                )))
            }
        };
    }
    Ok(())
}

fn decode_repo_pool(
    section: &Item<'_>,
    base_dir: &Path,
    settings: &mut RepoPoolSettings,
) -> Result<(), Problem> {
    let table = section.table()?;
    table.deny_unknown(REPO_POOL_KEYS)?;
    if let Some(item) = table.get("dir") {
        settings.dir = path_value(&item, base_dir)?;
    }
    if let Some(item) = table.get("repos") {
        for entry in item.array()? {
            let repo = decode_repo(&entry, base_dir)?;
            if settings.repos.iter().any(|known| known.name == repo.name) {
                return Err(entry.problem(format!("repository {:?} is listed twice", repo.name)));
            }
            settings.repos.push(repo);
        }
    }
    Ok(())
}

/// One `[[repo_pool.repos]]` table.
fn decode_repo(section: &Item<'_>, base_dir: &Path) -> Result<RepoConfig, Problem> {
    let table = section.table()?;
    table.deny_unknown(REPO_KEYS)?;
    let Some(name_item) = table.get("name") else {
        return Err(section.problem("missing key \"name\" (the repository's name)"));
    };
    let name = name_item.str()?;
    // The name becomes `<dir>/<name>/` and part of every slot id.
    crate::names::validate("repository name", name)
        .map_err(|err| name_item.problem(err.to_string()))?;
    let Some(url_item) = table.get("url") else {
        return Err(section.problem("missing key \"url\" (what to clone)"));
    };
    let url = url_item.str()?;
    if url.is_empty() {
        return Err(url_item.problem("must not be empty"));
    }
    let slots = match table.get("slots") {
        Some(item) => item.integer(1)?,
        None => 2,
    };
    let base_branch = match table.get("base_branch") {
        Some(item) => {
            let branch = item.str()?;
            if slots::branch::sanitize(branch) != branch {
                return Err(item.problem(format!("{branch:?} is not a valid branch name")));
            }
            branch.to_owned()
        }
        None => "main".to_owned(),
    };
    let branch_pattern = match table.get("branch_pattern") {
        Some(item) => {
            let pattern = item.str()?;
            slots::branch::check_pattern(pattern).map_err(|message| item.problem(message))?;
            pattern.to_owned()
        }
        None => slots::DEFAULT_BRANCH_PATTERN.to_owned(),
    };
    let mut config = RepoConfig {
        name: name.to_owned(),
        url: repo_url(url, base_dir),
        slots,
        base_branch,
        branch_pattern,
        bootstrap: slots::BootstrapConfig::default(),
    };
    decode_bootstrap(&table, &mut config)?;
    Ok(config)
}

/// The worktree bootstrap keys of a `[[repo_pool.repos]]` table.
fn decode_bootstrap(table: &tree::Table<'_>, config: &mut RepoConfig) -> Result<(), Problem> {
    let local = config.main_checkout().is_some();
    let bootstrap = &mut config.bootstrap;
    if let Some(item) = table.get("setup") {
        let argv = item
            .array()?
            .iter()
            .map(|item| item.str().map(str::to_owned))
            .collect::<Result<Vec<_>, _>>()?;
        if argv.first().is_some_and(String::is_empty) {
            return Err(item.problem("the program must not be empty"));
        }
        bootstrap.setup = argv;
    }
    if let Some(item) = table.get("setup_timeout") {
        let timeout = item.duration()?;
        if timeout.is_zero() {
            return Err(item.problem("must be above 0"));
        }
        bootstrap.setup_timeout = timeout;
    }
    if let Some(item) = table.get("copy_files") {
        for (entry, path) in item.string_list()? {
            check_copy_path(path).map_err(|message| entry.problem(message))?;
            bootstrap.copy_files.push(path.to_owned());
        }
        if !bootstrap.copy_files.is_empty() && !local {
            return Err(item.problem(format!(
                "needs a local url to copy from (the main checkout), not {:?}",
                config.url
            )));
        }
    }
    if let Some(item) = table.get("ports_per_slot") {
        bootstrap.ports_per_slot = item.integer(1)?;
    }
    if let Some(item) = table.get("port_base") {
        bootstrap.port_base = Some(item.integer(1)?);
        let slots = u32::try_from(config.slots).unwrap_or(u32::MAX);
        let last = u64::from(bootstrap.port_base_of(1).unwrap_or(0))
            + u64::from(slots) * u64::from(bootstrap.ports_per_slot)
            - 1;
        if last > u64::from(u16::MAX) {
            return Err(item.problem(format!(
                "{} slots of {} ports from here end at port {last}, past 65535",
                config.slots, bootstrap.ports_per_slot
            )));
        }
    }
    Ok(())
}

/// A `copy_files` entry must stay inside both checkouts: relative, without `..`.
fn check_copy_path(path: &str) -> Result<(), String> {
    let components: Vec<_> = Path::new(path).components().collect();
    if path.is_empty() {
        Err("must not be empty".to_owned())
    } else if Path::new(path).is_absolute() {
        Err(format!("{path:?} must be relative to the repository"))
    } else if components
        .iter()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        Err(format!("{path:?} must not contain .."))
    } else if !components
        .iter()
        .any(|c| matches!(c, std::path::Component::Normal(_)))
    {
        Err(format!("{path:?} names no file"))
    } else if components
        .iter()
        .find(|c| matches!(c, std::path::Component::Normal(_)))
        .is_some_and(|c| c.as_os_str() == ".git")
    {
        // A slot's `.git` is git's, not the project's: overwriting it breaks the worktree.
        Err(format!("{path:?} must not be inside .git"))
    } else {
        Ok(())
    }
}

/// A local path written relative to the config file is anchored to it, as git would
/// otherwise resolve it against whichever directory it runs in. URLs (`scheme://…`) and
/// scp-like addresses (`host:path`, a colon before any slash) are left as written, which is
/// the same test git itself uses to tell them from paths.
fn repo_url(url: &str, base_dir: &Path) -> String {
    let is_url = url.contains("://");
    let scp_like = match url.find(':') {
        Some(colon) => !url[..colon].contains('/'),
        None => false,
    };
    if is_url || scp_like || Path::new(url).is_absolute() {
        url.to_owned()
    } else {
        resolve(base_dir, url).to_string_lossy().into_owned()
    }
}

fn decode_dispatcher(
    section: &Item<'_>,
    base_dir: &Path,
    settings: &mut DispatcherSettings,
) -> Result<(), Problem> {
    let table = section.table()?;
    table.deny_unknown(DISPATCHER_KEYS)?;
    if let Some(item) = table.get("poll_interval") {
        settings.poll_interval = item.duration()?;
        // The core loop waits this long between registry scans; zero would make it spin.
        if settings.poll_interval.is_zero() {
            return Err(item.problem("must be greater than zero"));
        }
    }
    if let Some(item) = table.get("scheduling_policy") {
        settings.scheduling_policy = match item.str()? {
            "priority" => SchedulingPolicy::Priority,
            "fifo" => SchedulingPolicy::Fifo,
            "skill-based" => SchedulingPolicy::SkillBased,
            "fair-share" => SchedulingPolicy::FairShare,
            other => {
                return Err(item.problem(format!(
                    "unknown scheduling policy {other:?} (supported: priority, fifo, skill-based, fair-share)"
                )))
            }
        };
    }
    if let Some(item) = table.get("max_global_concurrency") {
        settings.max_global_concurrency = item.integer(1)?;
    }
    if let Some(item) = table.get("heartbeat_timeout") {
        settings.heartbeat_timeout = item.duration()?;
    }
    if let Some(item) = table.get("graceful_shutdown_timeout") {
        settings.graceful_shutdown_timeout = item.duration()?;
    }
    if let Some(item) = table.get("stop_grace_period") {
        settings.stop_grace_period = item.duration()?;
    }
    if let Some(item) = table.get("state_dir") {
        settings.state_dir = path_value(&item, base_dir)?;
    }
    if let Some(item) = table.get("max_log_bytes") {
        settings.max_log_bytes = Some(item.byte_size()?).filter(|bytes| *bytes > 0);
    }
    if let Some(item) = table.get("starvation_after") {
        settings.starvation_after = Some(item.duration()?).filter(|d| !d.is_zero());
    }
    if let Some(item) = table.get("learn_footprints") {
        settings.learn_footprints = item.bool()?;
    }
    Ok(())
}

fn decode_retry(section: &Item<'_>, settings: &mut RetrySettings) -> Result<(), Problem> {
    let table = section.table()?;
    table.deny_unknown(RETRY_KEYS)?;
    if let Some(item) = table.get("max_attempts") {
        settings.max_attempts = item.integer(1)?;
    }
    if let Some(item) = table.get("max_infra_retries") {
        settings.max_infra_retries = item.integer(0)?;
    }
    if let Some(item) = table.get("backoff_base") {
        let base = item.float()?;
        // A base below one would shrink the delay; NaN or infinity would poison every backoff.
        if !(base.is_finite() && base >= 1.0) {
            return Err(item.problem(format!("must be a finite number >= 1, found {base}")));
        }
        settings.backoff_base = base;
    }
    let initial = table.get("initial_delay");
    if let Some(item) = &initial {
        settings.initial_delay = item.duration()?;
    }
    let max = table.get("max_delay");
    if let Some(item) = &max {
        settings.max_delay = item.duration()?;
    }
    if settings.initial_delay > settings.max_delay {
        // Point at whichever of the two was written; at least one was, since the defaults agree.
        let item = initial.or(max).unwrap_or_else(|| section.clone());
        return Err(item.problem(format!(
            "initial_delay ({:?}) is longer than max_delay ({:?})",
            settings.initial_delay, settings.max_delay
        )));
    }
    Ok(())
}

fn decode_pool(section: &Item<'_>, base_dir: &Path) -> Result<PoolConfig, Problem> {
    let table = section.table()?;
    let known: Vec<&str> = POOL_KEYS
        .iter()
        .chain(engine::ENGINE_KEYS)
        .chain(agent::POOL_AGENT_KEYS)
        .copied()
        .collect();
    table.deny_unknown(&known)?;
    let kind = match table.get("type") {
        None => PoolKind::LocalProcess,
        Some(item) => {
            let text = item.str()?;
            let found = PoolKind::SUPPORTED.iter().find(|(name, _)| *name == text);
            match found {
                Some((_, kind)) => *kind,
                None => {
                    let supported: Vec<&str> =
                        PoolKind::SUPPORTED.iter().map(|(name, _)| *name).collect();
                    return Err(item.problem(format!(
                        "unknown pool type {text:?} (supported: {})",
                        supported.join(", ")
                    )));
                }
            }
        }
    };
    let max_concurrency = match table.get("max_concurrency") {
        Some(item) => item.integer(1)?,
        None => 1,
    };
    let enabled = match table.get("enabled") {
        Some(item) => item.bool()?,
        None => true,
    };
    // A container pool may leave the program to the image's entrypoint.
    let container = matches!(kind, PoolKind::Docker | PoolKind::Kubernetes);
    let mut command = match table.get("command") {
        Some(item) => item
            .array()?
            .iter()
            .map(|item| item.str().map(str::to_owned))
            .collect::<Result<Vec<_>, _>>()?,
        None if container => Vec::new(),
        None => return Err(section.problem("missing key \"command\" (the runner's argv list)")),
    };
    let command_item = table.get("command");
    let command_item = command_item.as_ref().unwrap_or(section);
    match command.first_mut() {
        None if container => {}
        None => return Err(command_item.problem("must name a program")),
        Some(program) if program.is_empty() => {
            return Err(command_item.problem("the program name must not be empty"))
        }
        // Runners start in their slot, not here, so a path like `./agents/run.sh` has to be
        // anchored to the config file. A bare name such as `python3` is left for PATH lookup.
        Some(program)
            if !container && program.contains('/') && Path::new(program).is_relative() =>
        {
            *program = resolve(base_dir, program).to_string_lossy().into_owned();
        }
        Some(_) => {}
    }
    let env = match table.get("env") {
        Some(item) => string_map(&item, |key| {
            let ok = !key.is_empty() && !key.contains(['=', '\0']);
            (!ok).then(|| format!("invalid environment variable name {key:?}"))
        })?,
        None => BTreeMap::new(),
    };
    let config = match table.get("config") {
        Some(item) => string_map(&item, |key| {
            let ok = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            (!ok).then(|| {
                format!(
                    "invalid key {key:?}: it becomes RUNNER_<KEY>, so use only A-Z, a-z, 0-9 and _"
                )
            })
        })?,
        None => BTreeMap::new(),
    };
    let timeout = match table.get("timeout") {
        Some(item) => Some(item.duration()?).filter(|timeout| !timeout.is_zero()),
        None => None,
    };
    let inherit_env = match table.get("inherit_env") {
        Some(item) => item.bool()?,
        None => true,
    };
    let pass_env = match table.get("pass_env") {
        Some(item) => item
            .string_list()?
            .into_iter()
            .map(|(_, name)| name.to_owned())
            .collect(),
        None => Vec::new(),
    };
    let env_file = match table.get("env_file") {
        Some(item) => Some(path_value(&item, base_dir)?),
        None => None,
    };
    let cpu_quota = match table.get("cpu_quota") {
        Some(item) => Some(positive(&item)?),
        None => None,
    };
    let memory_quota_mb = match table.get("memory_quota") {
        Some(item) => Some(item.mebibytes()?),
        None => None,
    };
    let memory_limit_mb = match table.get("memory_limit_mb") {
        Some(item) if kind.is_engine() => {
            return Err(item.problem(format!(
                "applies to local-process pools only; a {} job's memory limit is the task's memory request",
                kind.as_str()
            )))
        }
        Some(item) => Some(item.integer(1)?),
        None => None,
    };
    let (mut default_cpu, mut default_memory_mb) = (1.0, 0);
    if let Some(section) = table.get("default_resources") {
        let resources = section.table()?;
        resources.deny_unknown(RESOURCE_KEYS)?;
        if let Some(item) = resources.get("cpu") {
            default_cpu = non_negative(&item)?;
        }
        if let Some(item) = resources.get("memory_mb") {
            default_memory_mb = item.integer(0)?;
        }
        // A default that can never fit would hold every task of the pool back for good.
        if cpu_quota.is_some_and(|quota| default_cpu > quota) {
            return Err(section.problem(format!(
                "cpu = {default_cpu} is more than the pool's cpu_quota: no task could ever start"
            )));
        }
        if memory_quota_mb.is_some_and(|quota| default_memory_mb > quota) {
            return Err(section.problem(format!(
                "memory_mb = {default_memory_mb} is more than the pool's memory_quota: no task could ever start"
            )));
        }
    } else if cpu_quota.is_some_and(|quota| default_cpu > quota) {
        return Err(section.problem(format!(
            "cpu_quota is below the default request of {default_cpu} CPU: set default_resources"
        )));
    }
    let engine = engine::decode(&table, section, kind, base_dir)?;
    let agent = agent::decode_pool(&table)?;
    // A container that does not share this machine's files changes nothing the probe can see,
    // and cannot write the heartbeat file's progress values: it would always look stalled.
    let blind =
        matches!(kind, PoolKind::Docker | PoolKind::Kubernetes) && !engine.shared_workspaces;
    if blind && agent.stall_timeout.is_some() {
        let item = table
            .get("stall_timeout")
            .unwrap_or_else(|| section.clone());
        return Err(item.problem(
            "needs shared_workspaces = true: the dispatcher cannot see a remote container's progress",
        ));
    }
    Ok(PoolConfig {
        kind,
        max_concurrency,
        enabled,
        command,
        env,
        config,
        timeout,
        inherit_env,
        pass_env,
        env_file,
        cpu_quota,
        memory_quota_mb,
        default_cpu,
        default_memory_mb,
        memory_limit_mb,
        engine,
        agent,
    })
}

fn decode_notifications(section: &Item<'_>) -> Result<crate::notify::NotifySettings, Problem> {
    let table = section.table()?;
    table.deny_unknown(NOTIFICATION_KEYS)?;
    let Some(url) = table.get("webhook_url") else {
        return Err(section.problem("missing key \"webhook_url\" (where to POST notifications)"));
    };
    let webhook_url = url.str()?.to_owned();
    if !webhook_url.starts_with("http://") && !webhook_url.starts_with("https://") {
        return Err(url.problem(format!("{webhook_url:?} is not an http:// or https:// URL")));
    }
    let mut kinds: Vec<String> = crate::notify::DEFAULT_KINDS
        .iter()
        .map(|k| (*k).to_owned())
        .collect();
    if let Some(item) = table.get("events") {
        kinds = Vec::new();
        for (entry, kind) in item.string_list()? {
            if !crate::notify::KINDS.contains(&kind) {
                return Err(entry.problem(format!(
                    "unknown event {kind:?} (known: {})",
                    crate::notify::KINDS.join(", ")
                )));
            }
            kinds.push(kind.to_owned());
        }
    }
    let timeout = match table.get("timeout") {
        Some(item) => item.duration()?,
        None => Duration::from_secs(5),
    };
    let max_attempts = match table.get("max_attempts") {
        Some(item) => item.integer(1)?,
        None => 3,
    };
    let queue = match table.get("queue") {
        Some(item) => item.integer(1)?,
        None => 64,
    };
    Ok(crate::notify::NotifySettings {
        webhook_url,
        kinds,
        timeout,
        max_attempts,
        queue,
    })
}

fn positive(item: &Item<'_>) -> Result<f64, Problem> {
    let value = item.float()?;
    if value.is_finite() && value > 0.0 {
        Ok(value)
    } else {
        Err(item.problem(format!("must be a number above 0, found {value}")))
    }
}

fn non_negative(item: &Item<'_>) -> Result<f64, Problem> {
    let value = item.float()?;
    if value.is_finite() && value >= 0.0 {
        Ok(value)
    } else {
        Err(item.problem(format!("must be a number of at least 0, found {value}")))
    }
}

/// A table of scalars as strings; `bad_key` says why a key is refused, if it is.
fn string_map(
    section: &Item<'_>,
    bad_key: impl Fn(&str) -> Option<String>,
) -> Result<BTreeMap<String, String>, Problem> {
    let mut map = BTreeMap::new();
    for item in section.table()?.entries() {
        if let Some(message) = bad_key(item.name) {
            return Err(item.problem(message));
        }
        map.insert(item.name.to_owned(), item.scalar_string()?);
    }
    Ok(map)
}

fn decode_skill(
    item: &Item<'_>,
    pools: &BTreeMap<String, PoolConfig>,
) -> Result<Vec<String>, Problem> {
    let names = item.string_list()?;
    if names.is_empty() {
        return Err(item.problem("must name at least one pool"));
    }
    names
        .into_iter()
        .map(|(entry, name)| {
            if pools.contains_key(name) {
                Ok(name.to_owned())
            } else {
                Err(entry.problem(format!(
                    "pool {name:?} is not defined in [agent_pools] (skill {:?})",
                    item.name
                )))
            }
        })
        .collect()
}

fn path_value(item: &Item<'_>, base_dir: &Path) -> Result<PathBuf, Problem> {
    let text = item.str()?;
    if text.is_empty() {
        return Err(item.problem("must not be empty"));
    }
    Ok(resolve(base_dir, text))
}

/// `base_dir/relative`, with `./` segments dropped so that paths read cleanly in logs. `..`
/// stays: removing it textually would be wrong across symlinks.
fn resolve(base_dir: &Path, relative: &str) -> PathBuf {
    base_dir.join(relative).components().collect()
}

/// Pool and skill names end up in file names and log paths, so they must not be able to
/// escape a directory or hide in it.
fn check_safe_name(item: &Item<'_>, what: &str) -> Result<(), Problem> {
    let name = item.name;
    let reason = if name.is_empty() {
        "must not be empty"
    } else if name.len() > 200 {
        "must be at most 200 bytes"
    } else if name.contains(['/', '\\']) {
        "must not contain / or \\"
    } else if name.chars().any(char::is_control) {
        "must not contain control characters"
    } else if name.starts_with('.') {
        "must not start with ."
    } else if name.contains("..") {
        "must not contain .."
    } else {
        return Ok(());
    };
    Err(item.problem(format!("invalid {what} name {name:?}: {reason}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORIGIN: &str = "/etc/necro/dispatcher.toml";

    fn parse_ok(text: &str) -> Config {
        Config::from_toml_str(text, Path::new(ORIGIN)).unwrap_or_else(|err| panic!("{err}"))
    }

    /// The rendered error, after checking it is `Invalid` at `line`.
    fn parse_err(text: &str, line: usize) -> String {
        let err = Config::from_toml_str(text, Path::new(ORIGIN)).unwrap_err();
        let rendered = err.to_string();
        match err {
            ConfigError::Invalid { line: found, .. } => {
                assert_eq!(found, Some(line), "{rendered}");
            }
            ConfigError::Io { .. } => panic!("unexpected io error: {rendered}"),
        }
        assert!(
            rendered.starts_with(&format!("{ORIGIN}:{line}: ")),
            "{rendered}"
        );
        rendered
    }

    #[test]
    fn metrics_listen_takes_an_address_and_port() {
        let config = parse_ok("[metrics]\nlisten = \"127.0.0.1:9464\"\n");
        assert_eq!(
            config.metrics_listen,
            Some("127.0.0.1:9464".parse().unwrap())
        );
        assert_eq!(parse_ok("").metrics_listen, None);
        let err = parse_err("[metrics]\n\nlisten = \"localhost\"\n", 3);
        assert!(err.contains("metrics.listen"), "{err}");
        assert!(err.contains("IP address and port"), "{err}");
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn empty_file_gives_defaults() {
        let config = parse_ok("");
        let base = Path::new("/etc/necro");
        assert_eq!(config.base_dir, base);
        let d = &config.dispatcher;
        assert_eq!(d.poll_interval, secs(5));
        assert_eq!(d.scheduling_policy, SchedulingPolicy::Priority);
        assert_eq!(d.max_global_concurrency, 10);
        assert_eq!(d.heartbeat_timeout, secs(60));
        assert_eq!(d.graceful_shutdown_timeout, secs(300));
        assert_eq!(d.stop_grace_period, secs(10));
        assert_eq!(d.state_dir, base.join(".dispatcher"));
        assert_eq!(config.retry.max_attempts, 3);
        assert_eq!(config.retry.backoff_base, 2.0);
        assert_eq!(config.retry.initial_delay, secs(10));
        assert_eq!(config.retry.max_delay, secs(300));
        assert_eq!(config.task_registry.dir, base.join("registry"));
        assert!(config.agent_pools.is_empty());
        assert!(config.skill_mapping.is_empty());
    }

    #[test]
    fn empty_sections_give_defaults() {
        let config =
            parse_ok("[dispatcher]\n[retry]\n[task_registry]\n[agent_pools]\n[skill_mapping]\n");
        assert_eq!(config.dispatcher.poll_interval, secs(5));
        assert!(config.agent_pools.is_empty());
    }

    #[test]
    fn every_duration_form() {
        let config = parse_ok(
            r#"
            [dispatcher]
            poll_interval = 7
            heartbeat_timeout = 1.5
            graceful_shutdown_timeout = "1h30m"
            stop_grace_period = "500ms"
            [retry]
            initial_delay = "90"
            max_delay = "5m"
            "#,
        );
        assert_eq!(config.dispatcher.poll_interval, secs(7));
        assert_eq!(
            config.dispatcher.heartbeat_timeout,
            Duration::from_millis(1500)
        );
        assert_eq!(config.dispatcher.graceful_shutdown_timeout, secs(5400));
        assert_eq!(
            config.dispatcher.stop_grace_period,
            Duration::from_millis(500)
        );
        assert_eq!(config.retry.initial_delay, secs(90));
        assert_eq!(config.retry.max_delay, secs(300));

        let config = parse_ok("[dispatcher]\nheartbeat_timeout = \"0\"\npoll_interval = \"1h\"\n");
        assert_eq!(config.dispatcher.heartbeat_timeout, Duration::ZERO);
        assert_eq!(config.dispatcher.poll_interval, secs(3600));
    }

    const FULL: &str = r#"# Two pools and a skill mapping.
[dispatcher]
poll_interval = "2s"
scheduling_policy = "fifo"
max_global_concurrency = 4
state_dir = "/var/lib/dispatcher"

[retry]
max_attempts = 5
backoff_base = 3
initial_delay = "5s"
max_delay = "10m"

[task_registry]
dir = "tasks"

[agent_pools.backend]
type = "local-process"
max_concurrency = 2
command = ["./agents/run.sh", "{task_id}", "--spec", "{spec}"]
timeout = "2h"
env = { LOG_LEVEL = "debug" }

[agent_pools.backend.config]
model = "big"
temperature = 0.5
max_turns = 40
verbose = true

[agent_pools.frontend]
enabled = false
command = ["python3", "/opt/agent.py"]
timeout = 0

[skill_mapping]
backend = ["backend"]
web = ["frontend", "backend"]
default = "backend"
"#;

    #[test]
    fn full_example() {
        let config = parse_ok(FULL);
        let d = &config.dispatcher;
        assert_eq!(d.poll_interval, secs(2));
        assert_eq!(d.scheduling_policy, SchedulingPolicy::Fifo);
        assert_eq!(d.scheduling_policy.as_str(), "fifo");
        assert_eq!(d.max_global_concurrency, 4);
        assert_eq!(d.state_dir, Path::new("/var/lib/dispatcher"));
        assert_eq!(config.retry.max_attempts, 5);
        assert_eq!(config.retry.backoff_base, 3.0);
        assert_eq!(config.retry.initial_delay, secs(5));
        assert_eq!(config.retry.max_delay, secs(600));
        assert_eq!(config.task_registry.dir, Path::new("/etc/necro/tasks"));

        let backend = &config.agent_pools["backend"];
        assert_eq!(backend.kind, PoolKind::LocalProcess);
        assert_eq!(backend.max_concurrency, 2);
        assert!(backend.enabled);
        assert_eq!(
            backend.command,
            ["/etc/necro/agents/run.sh", "{task_id}", "--spec", "{spec}"]
        );
        assert_eq!(backend.timeout, Some(secs(7200)));
        assert_eq!(backend.env["LOG_LEVEL"], "debug");
        let settings: Vec<(&str, &str)> = backend
            .config
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            settings,
            [
                ("max_turns", "40"),
                ("model", "big"),
                ("temperature", "0.5"),
                ("verbose", "true")
            ]
        );

        let frontend = &config.agent_pools["frontend"];
        assert!(!frontend.enabled);
        assert_eq!(frontend.max_concurrency, 1);
        assert_eq!(frontend.command, ["python3", "/opt/agent.py"]);
        assert_eq!(frontend.timeout, None);
        assert!(frontend.env.is_empty() && frontend.config.is_empty());

        assert_eq!(config.skill_mapping["web"], ["frontend", "backend"]);
        assert_eq!(config.skill_mapping["default"], ["backend"]);
    }

    #[test]
    fn relative_paths_resolve_against_the_config_directory() {
        let text = r#"
            [dispatcher]
            state_dir = "state"
            [task_registry]
            dir = "../registry"
            [agent_pools.a]
            command = ["bin/agent", "rel/arg"]
            [agent_pools.b]
            command = ["claude", "-p"]
            [agent_pools.c]
            command = ["/usr/bin/env", "sh"]
        "#;
        let config =
            Config::from_toml_str(text, Path::new("/srv/project/dispatcher.toml")).unwrap();
        assert_eq!(config.base_dir, Path::new("/srv/project"));
        assert_eq!(config.dispatcher.state_dir, Path::new("/srv/project/state"));
        assert_eq!(
            config.task_registry.dir,
            Path::new("/srv/project/../registry")
        );
        // Only the program is anchored; arguments are the agent's business.
        assert_eq!(
            config.agent_pools["a"].command,
            ["/srv/project/bin/agent", "rel/arg"]
        );
        assert_eq!(config.agent_pools["b"].command, ["claude", "-p"]);
        assert_eq!(config.agent_pools["c"].command, ["/usr/bin/env", "sh"]);

        let bare = Config::from_toml_str("", Path::new("dispatcher.toml")).unwrap();
        assert_eq!(bare.base_dir, Path::new("."));
    }

    #[test]
    fn load_reads_the_file_and_anchors_paths_absolutely() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dispatcher.toml");
        std::fs::write(&path, "[task_registry]\ndir = \"reg\"\n").unwrap();
        let config = Config::load(&path).unwrap();
        assert!(config.base_dir.is_absolute());
        assert_eq!(config.task_registry.dir, config.base_dir.join("reg"));

        let missing = dir.path().join("missing.toml");
        let err = Config::load(&missing).unwrap_err();
        assert!(matches!(err, ConfigError::Io { .. }));
        let expected = format!("cannot read config {}: ", missing.display());
        assert!(err.to_string().starts_with(&expected), "{err}");
    }

    #[test]
    fn unknown_section_names_key_and_line() {
        let err = parse_err(
            "[dispatcher]\npoll_interval = 5\n\n[deadlocks]\nenabled = true\n",
            4,
        );
        assert!(err.contains("unknown key \"deadlocks\""), "{err}");
    }

    #[test]
    fn unknown_key_in_pool_names_table_key_and_line() {
        let text = "[agent_pools.backend]\ncommand = [\"x\"]\nmax_concurency = 2\n";
        let err = parse_err(text, 3);
        assert!(
            err.starts_with(&format!(
                "{ORIGIN}:3: agent_pools.backend: unknown key \"max_concurency\""
            )),
            "{err}"
        );
        assert!(err.contains("max_concurrency"), "{err}");
    }

    #[test]
    fn unknown_key_in_inline_and_dotted_tables() {
        let err = parse_err("[dispatcher]\nfoo.bar = 1\n", 2);
        assert!(err.contains("dispatcher: unknown key \"foo\""), "{err}");
        let err = parse_err("retry = { max_attempts = 2, jitter = 1 }\n", 1);
        assert!(err.contains("retry: unknown key \"jitter\""), "{err}");
    }

    #[test]
    fn wrong_type_names_key_and_line() {
        let err = parse_err("[dispatcher]\n\nmax_global_concurrency = \"ten\"\n", 3);
        assert!(
            err.contains("dispatcher.max_global_concurrency: expected an integer, found string"),
            "{err}"
        );
        let err = parse_err("[agent_pools.p]\ncommand = [\"x\", 5]\n", 2);
        assert!(
            err.contains("agent_pools.p.command[1]: expected a string"),
            "{err}"
        );
        let err = parse_err("dispatcher = 5\n", 1);
        assert!(err.contains("dispatcher: expected a table"), "{err}");
        let err = parse_err("[agent_pools.p]\ncommand = [\"x\"]\nenabled = \"yes\"\n", 3);
        assert!(
            err.contains("agent_pools.p.enabled: expected true or false"),
            "{err}"
        );
    }

    #[test]
    fn bad_duration_names_key_value_and_line() {
        let err = parse_err("\n[dispatcher]\npoll_interval = \"5 parsecs\"\n", 3);
        assert_eq!(
            err,
            format!(
                "{ORIGIN}:3: dispatcher.poll_interval: invalid duration \"5 parsecs\" \
                 (use 90s, 5m, 1h or seconds)"
            )
        );
        let err = parse_err("[retry]\nmax_delay = -5\n", 2);
        assert!(
            err.contains("retry.max_delay: invalid duration -5"),
            "{err}"
        );
        let err = parse_err("[retry]\nmax_delay = nan\n", 2);
        assert!(
            err.contains("retry.max_delay: invalid duration NaN"),
            "{err}"
        );
        let err = parse_err("[retry]\nmax_delay = true\n", 2);
        assert!(
            err.contains("retry.max_delay: expected a duration"),
            "{err}"
        );
        let err = parse_err("[dispatcher]\npoll_interval = 0\n", 2);
        assert!(
            err.contains("dispatcher.poll_interval: must be greater than zero"),
            "{err}"
        );
    }

    #[test]
    fn bad_policy_names_key_and_line() {
        let err = parse_err("[dispatcher]\nscheduling_policy = \"round-robin\"\n", 2);
        assert!(
            err.contains("dispatcher.scheduling_policy: unknown scheduling policy \"round-robin\""),
            "{err}"
        );
        assert!(
            err.contains("priority, fifo, skill-based, fair-share"),
            "{err}"
        );
    }

    #[test]
    fn unknown_pool_type_lists_supported_types() {
        let err = parse_err("[agent_pools.n]\ntype = \"nomad\"\ncommand = [\"x\"]\n", 2);
        assert!(
            err.contains("agent_pools.n.type: unknown pool type \"nomad\""),
            "{err}"
        );
        assert!(
            err.contains("supported: local-process, slurm, docker, kubernetes"),
            "{err}"
        );
    }

    #[test]
    fn engine_pools_read_their_own_keys() {
        let config = parse_ok(
            "[agent_pools.hpc]\ntype = \"slurm\"\ncommand = [\"./agent.sh\"]\n\
             partition = \"gpu\"\nqos = \"high\"\nextra_args = [\"--gres=gpu:1\"]\n\
             engine_poll_interval = \"250ms\"\n\
             [agent_pools.box]\ntype = \"docker\"\nimage = \"agent:1\"\nshared_workspaces = false\n",
        );
        let hpc = &config.agent_pools["hpc"];
        assert_eq!(hpc.kind, PoolKind::Slurm);
        assert_eq!(hpc.engine.partition.as_deref(), Some("gpu"));
        assert_eq!(hpc.engine.extra_args, ["--gres=gpu:1"]);
        assert_eq!(hpc.engine.poll_interval, Duration::from_millis(250));
        // Slurm nodes share this machine's files: the program is resolved like a local one.
        assert!(hpc.command[0].ends_with("/agent.sh") && hpc.command[0].starts_with('/'));
        let docker = &config.agent_pools["box"];
        assert!(docker.command.is_empty(), "the image's entrypoint runs");
        assert!(!docker.engine.shared_workspaces);
    }

    #[test]
    fn engine_keys_of_another_pool_type_are_rejected() {
        let err = parse_err(
            "[agent_pools.box]\ntype = \"docker\"\nimage = \"a\"\npartition = \"gpu\"\n",
            4,
        );
        assert!(
            err.contains("agent_pools.box.partition: does not apply to a pool of type \"docker\""),
            "{err}"
        );
        let err = parse_err("[agent_pools.l]\ncommand = [\"x\"]\nimage = \"a\"\n", 3);
        assert!(err.contains("local-process"), "{err}");
        let err = parse_err(
            "[agent_pools.h]\ntype = \"slurm\"\ncommand = [\"x\"]\nmemory_limit_mb = 512\n",
            4,
        );
        assert!(err.contains("applies to local-process pools only"), "{err}");
    }

    #[test]
    fn agent_keys_parse_and_bad_ones_name_key_and_line() {
        let config = parse_ok(
            "[agent_pools.a]\ncommand = [\"x\"]\nbreaker_cooldown = \"90s\"\n\
             budget_usd = 5\nbudget_period = \"day\"\nstall_timeout = \"10m\"\n\
             stall_action = \"restart\"\n[agent_pools.a.classify]\nrate_limited = [\"429\"]\n\
             [spec_budgets.chat]\nbudget_tokens = 1000\n",
        );
        let agent = &config.agent_pools["a"].agent;
        assert_eq!(agent.breaker_cooldown, Duration::from_secs(90));
        assert_eq!(agent.budget.as_ref().unwrap().usd, Some(5.0));
        assert_eq!(agent.budget.as_ref().unwrap().period, BudgetPeriod::Day);
        assert_eq!(agent.stall_action, StallAction::Restart);
        assert_eq!(
            agent.classify.class_of("HTTP 429 Too Many Requests"),
            Some(crate::supervisor::FailureClass::RateLimited)
        );
        assert_eq!(config.spec_budgets["chat"].tokens, Some(1000));

        let err = parse_err(
            "[agent_pools.a]\ncommand = [\"x\"]\n[agent_pools.a.classify]\ninfra = [\"(\"]\n",
            4,
        );
        assert!(err.contains("agent_pools.a.classify.infra"), "{err}");
        assert!(err.contains("invalid pattern \"(\""), "{err}");
        let err = parse_err("[agent_pools.a]\ncommand = [\"x\"]\nbudget_soft = 0.5\n", 3);
        assert!(err.contains("needs budget_usd or budget_tokens"), "{err}");
        let err = parse_err(
            "[agent_pools.a]\ncommand = [\"x\"]\nstall_action = \"nap\"\n",
            3,
        );
        assert!(err.contains("unknown stall action \"nap\""), "{err}");
        let err = parse_err("[spec_budgets.s]\nusd = 1\n", 2);
        assert!(err.contains("spec_budgets.s"), "{err}");
    }

    #[test]
    fn container_pools_need_an_image() {
        let err = parse_err("[agent_pools.k]\ntype = \"kubernetes\"\n", 1);
        assert!(err.contains("missing key \"image\""), "{err}");
    }

    #[test]
    fn skill_mapping_to_missing_pool_names_skill_pool_and_line() {
        let text = "[agent_pools.backend]\ncommand = [\"x\"]\n\n[skill_mapping]\n\
                    backend = [\"backend\"]\nfrontend = [\"backend\", \"web\"]\n";
        let err = parse_err(text, 6);
        assert!(err.contains("skill_mapping.frontend[1]"), "{err}");
        assert!(err.contains("pool \"web\" is not defined"), "{err}");
        let err = parse_err("[skill_mapping]\ndefault = \"nowhere\"\n", 2);
        assert!(
            err.contains("skill_mapping.default: pool \"nowhere\""),
            "{err}"
        );
        let err = parse_err(
            "[agent_pools.a]\ncommand = [\"x\"]\n[skill_mapping]\nx = []\n",
            4,
        );
        assert!(
            err.contains("skill_mapping.x: must name at least one pool"),
            "{err}"
        );
    }

    #[test]
    fn validation_errors_name_key_and_line() {
        let pool = "[agent_pools.base]\ncommand = [\"x\"]\n";
        let cases: &[(&str, usize, &str)] = &[
            ("[dispatcher]\nmax_global_concurrency = 0\n", 2, "dispatcher.max_global_concurrency: must be at least 1"),
            ("[retry]\nmax_attempts = 0\n", 2, "retry.max_attempts: must be at least 1"),
            ("[retry]\nmax_attempts = 5000000000\n", 2, "retry.max_attempts: 5000000000 is too large"),
            ("[retry]\nbackoff_base = 0.5\n", 2, "retry.backoff_base: must be a finite number >= 1"),
            ("[retry]\nbackoff_base = inf\n", 2, "retry.backoff_base: must be a finite number >= 1"),
            ("[retry]\n\ninitial_delay = \"10m\"\n", 3, "retry.initial_delay: initial_delay (600s) is longer"),
            ("[retry]\nmax_delay = \"1s\"\n", 2, "retry.max_delay: initial_delay (10s) is longer than max_delay (1s)"),
            ("[dispatcher]\nstate_dir = \"\"\n", 2, "dispatcher.state_dir: must not be empty"),
            ("[agent_pools.p]\nenabled = true\n", 1, "agent_pools.p: missing key \"command\""),
            ("[agent_pools.p]\ncommand = []\n", 2, "agent_pools.p.command: must name a program"),
            ("[agent_pools.p]\ncommand = [\"\"]\n", 2, "agent_pools.p.command: the program name must not be empty"),
            ("[agent_pools.p]\ncommand = \"x\"\n", 2, "agent_pools.p.command: expected an array"),
            ("[agent_pools.p]\ncommand = [\"x\"]\nmax_concurrency = 0\n", 3, "agent_pools.p.max_concurrency: must be at least 1"),
            ("[agent_pools.p]\ncommand = [\"x\"]\n[agent_pools.p.config]\nok_1 = 1\n\"bad key\" = 2\n", 5, "agent_pools.p.config.\"bad key\": invalid key \"bad key\""),
            ("[agent_pools.p]\ncommand = [\"x\"]\nconfig = { list = [1] }\n", 3, "agent_pools.p.config.list: expected a string, number or boolean"),
            ("[agent_pools.p]\ncommand = [\"x\"]\nenv = { \"A=B\" = \"1\" }\n", 3, "invalid environment variable name \"A=B\""),
            ("[agent_pools.\"../up\"]\ncommand = [\"x\"]\n", 1, "invalid pool name \"../up\": must not contain /"),
            ("[agent_pools.\"a/b\"]\ncommand = [\"x\"]\n", 1, "invalid pool name \"a/b\": must not contain /"),
            ("[agent_pools.\"a..b\"]\ncommand = [\"x\"]\n", 1, "must not contain .."),
            ("[agent_pools.\"\"]\ncommand = [\"x\"]\n", 1, "invalid pool name \"\": must not be empty"),
            ("[agent_pools.\"a\\tb\"]\ncommand = [\"x\"]\n", 1, "must not contain control characters"),
            ("[skill_mapping]\n\".hidden\" = \"p\"\n", 2, "invalid skill name \".hidden\""),
            ("[agent_pools.\".hidden\"]\ncommand = [\"x\"]\n", 1, "must not start with ."),
        ];
        for (text, line, expected) in cases {
            let text = format!("{pool}{text}");
            let err = parse_err(&text, line + 2);
            assert!(
                err.contains(expected),
                "{text}\n=> {err}\nwanted {expected}"
            );
        }
        let long = "x".repeat(201);
        let err = parse_err(&format!("[agent_pools.{long}]\ncommand = [\"x\"]\n"), 1);
        assert!(err.contains("at most 200 bytes"), "{err}");
    }

    #[test]
    fn toml_syntax_errors_carry_the_line() {
        let err = parse_err("[dispatcher]\npoll_interval = \n", 2);
        assert!(!err.contains('\n'), "{err}");
        let err = parse_err("[retry]\nmax_attempts = 1\nmax_attempts = 2\n", 3);
        assert!(err.contains("duplicate key"), "{err}");
        let err = parse_err("[dispatcher]\n\npoll_interval = 1979-05-27\n", 3);
        assert!(
            err.ends_with("dates and times are not valid in this file"),
            "{err}"
        );
    }

    #[test]
    fn backoff_doubles_then_caps() {
        let retry = Config::default_in(Path::new("/")).retry;
        let delays: Vec<u64> = (1..=7).map(|n| retry.backoff(n).as_secs()).collect();
        assert_eq!(delays, [10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(retry.backoff(0), secs(10));
        assert_eq!(retry.backoff(1000), secs(300));
        assert_eq!(retry.backoff(u32::MAX), secs(300));

        let zero = RetrySettings {
            initial_delay: Duration::ZERO,
            ..retry.clone()
        };
        assert_eq!(zero.backoff(1000), Duration::ZERO);
        assert_eq!(zero.backoff(u32::MAX), Duration::ZERO);
        let flat = RetrySettings {
            backoff_base: 1.0,
            ..retry
        };
        assert_eq!(flat.backoff(1000), secs(10));
    }

    #[test]
    fn pools_for_skill_rules() {
        let config = parse_ok(FULL);
        // An explicit mapping wins, in the order written.
        assert_eq!(config.pools_for_skill(Some("web")), ["frontend", "backend"]);
        // A skill without a mapping but named like a pool gets that pool.
        assert_eq!(config.pools_for_skill(Some("frontend")), ["frontend"]);
        // Otherwise, and for tasks without a skill, the default mapping.
        assert_eq!(config.pools_for_skill(Some("rust")), ["backend"]);
        assert_eq!(config.pools_for_skill(None), ["backend"]);

        let config = parse_ok(
            "[agent_pools.default]\ncommand = [\"x\"]\n[agent_pools.gpu]\ncommand = [\"y\"]\n",
        );
        assert_eq!(config.pools_for_skill(Some("gpu")), ["gpu"]);
        assert_eq!(config.pools_for_skill(Some("rust")), ["default"]);
        assert_eq!(config.pools_for_skill(None), ["default"]);

        let config = parse_ok("[agent_pools.gpu]\ncommand = [\"y\"]\n");
        assert!(config.pools_for_skill(Some("rust")).is_empty());
        assert!(config.pools_for_skill(None).is_empty());
    }

    #[test]
    fn repo_pool_parses_with_defaults_and_anchored_paths() {
        let config = parse_ok(
            r#"
            [repo_pool]
            dir = "ws"

            [[repo_pool.repos]]
            name = "chat-app"
            url = "../origins/chat-app"

            [[repo_pool.repos]]
            name = "api"
            url = "git@example.com:team/api.git"
            slots = 4
            base_branch = "develop"
            branch_pattern = "agent/{spec}-{task_id}"

            [[repo_pool.repos]]
            name = "web"
            url = "https://example.com/team/web.git"

            [[repo_pool.repos]]
            name = "abs"
            url = "/srv/git/abs"
            "#,
        );
        let pool = &config.repo_pool;
        assert_eq!(pool.dir, Path::new("/etc/necro/ws"));
        let chat = &pool.repos[0];
        assert_eq!(chat.name, "chat-app");
        assert_eq!(chat.url, "/etc/necro/../origins/chat-app");
        assert_eq!(chat.slots, 2);
        assert_eq!(chat.base_branch, "main");
        assert_eq!(chat.branch_pattern, "task/{spec}/{task_id}");
        let api = &pool.repos[1];
        assert_eq!(api.url, "git@example.com:team/api.git");
        assert_eq!(api.slots, 4);
        assert_eq!(api.base_branch, "develop");
        assert_eq!(api.branch_pattern, "agent/{spec}-{task_id}");
        assert_eq!(pool.repos[2].url, "https://example.com/team/web.git");
        assert_eq!(pool.repos[3].url, "/srv/git/abs");

        let default = parse_ok("").repo_pool;
        assert_eq!(default.dir, Path::new("/etc/necro/workspaces"));
        assert!(default.repos.is_empty());
    }

    #[test]
    fn repo_pool_errors_name_key_and_line() {
        let err = parse_err(
            "[repo_pool]\ndir = \"ws\"\n\n[[repo_pool.repos]]\nname = \"a\"\nurl = \"x\"\nslot = 3\n",
            7,
        );
        assert!(
            err.starts_with(&format!(
                "{ORIGIN}:7: repo_pool.repos[0]: unknown key \"slot\""
            )),
            "{err}"
        );
        let err = parse_err("[repo_pool]\nworkspaces = \"ws\"\n", 2);
        assert!(
            err.contains("repo_pool: unknown key \"workspaces\""),
            "{err}"
        );
        let repo = "[[repo_pool.repos]]\nname = \"a\"\nurl = \"x\"\n";
        let cases: &[(&str, usize, &str)] = &[
            (
                "slots = 0\n",
                4,
                "repo_pool.repos[0].slots: must be at least 1",
            ),
            (
                "base_branch = \"a..b\"\n",
                4,
                "repo_pool.repos[0].base_branch: \"a..b\" is not a valid branch name",
            ),
            (
                "branch_pattern = \"t/{task}\"\n",
                4,
                "repo_pool.repos[0].branch_pattern: unknown placeholder {task}",
            ),
            (
                "branch_pattern = \"t/{task_id}\"\n",
                4,
                "must contain {spec}",
            ),
            (
                "[[repo_pool.repos]]\nname = \"a\"\nurl = \"y\"\n",
                5,
                "repository \"a\" is listed twice",
            ),
        ];
        for (extra, line, expected) in cases {
            let err = parse_err(&format!("{repo}{extra}"), *line);
            assert!(
                err.contains(expected),
                "{extra}\n=> {err}\nwanted {expected}"
            );
        }
        let err = parse_err("[[repo_pool.repos]]\nname = \"../a\"\nurl = \"x\"\n", 2);
        assert!(
            err.contains("repo_pool.repos[0].name: invalid repository name \"../a\""),
            "{err}"
        );
        let err = parse_err("[[repo_pool.repos]]\nname = \"a\"\n", 2);
        assert!(
            err.contains("repo_pool.repos[0]: missing key \"url\""),
            "{err}"
        );
    }

    #[test]
    fn repo_bootstrap_keys_parse_with_defaults() {
        let config = parse_ok(
            r#"
            [[repo_pool.repos]]
            name = "web"
            url = "../web"
            slots = 3
            setup = ["npm", "ci"]
            setup_timeout = "2m"
            copy_files = [".env", "config/local.json"]
            port_base = 40000

            [[repo_pool.repos]]
            name = "api"
            url = "file:///srv/api"
            copy_files = ".env"
            port_base = 50000
            ports_per_slot = 3
            "#,
        );
        let web = &config.repo_pool.repos[0].bootstrap;
        assert_eq!(web.setup, ["npm", "ci"]);
        assert_eq!(web.setup_timeout, secs(120));
        assert_eq!(web.copy_files, [".env", "config/local.json"]);
        assert_eq!(web.port_base, Some(40000));
        assert_eq!(web.ports_per_slot, 10);
        assert_eq!(
            (1..=3).map(|n| web.port_base_of(n)).collect::<Vec<_>>(),
            [Some(40000), Some(40010), Some(40020)]
        );
        let api = &config.repo_pool.repos[1];
        assert_eq!(api.main_checkout(), Some(PathBuf::from("/srv/api")));
        assert_eq!(api.bootstrap.copy_files, [".env"]);
        assert_eq!(api.bootstrap.port_base_of(2), Some(50003));

        let plain = &parse_ok("[[repo_pool.repos]]\nname = \"a\"\nurl = \"x\"\n")
            .repo_pool
            .repos[0];
        assert_eq!(plain.bootstrap, slots::BootstrapConfig::default());
        assert_eq!(plain.bootstrap.setup_timeout, secs(600));
        assert_eq!(plain.bootstrap.port_base_of(1), None);
    }

    #[test]
    fn repo_bootstrap_errors_name_key_and_line() {
        let repo = "[[repo_pool.repos]]\nname = \"a\"\nurl = \"x\"\n";
        let cases: &[(&str, usize, &str)] = &[
            ("setup = \"npm ci\"\n", 4, "repo_pool.repos[0].setup: expected an array"),
            ("setup = [\"\", \"x\"]\n", 4, "repo_pool.repos[0].setup: the program must not be empty"),
            ("setup_timeout = \"soon\"\n", 4, "repo_pool.repos[0].setup_timeout: invalid duration"),
            ("setup_timeout = 0\n", 4, "repo_pool.repos[0].setup_timeout: must be above 0"),
            ("copy_files = [\"/etc/passwd\"]\n", 4, "repo_pool.repos[0].copy_files[0]: \"/etc/passwd\" must be relative"),
            ("copy_files = [\".env\", \"../up/.env\"]\n", 4, "repo_pool.repos[0].copy_files[1]: \"../up/.env\" must not contain .."),
            ("copy_files = [\"a/../../b\"]\n", 4, "must not contain .."),
            ("copy_files = [\".\"]\n", 4, "\".\" names no file"),
            ("copy_files = [\"\"]\n", 4, "must not be empty"),
            ("copy_files = [\".git/config\"]\n", 4, "must not be inside .git"),
            ("port_base = 0\n", 4, "repo_pool.repos[0].port_base: must be at least 1"),
            ("port_base = 70000\n", 4, "repo_pool.repos[0].port_base: 70000 is too large"),
            ("port_base = 65530\n", 4, "repo_pool.repos[0].port_base: 2 slots of 10 ports from here end at port 65549, past 65535"),
            ("ports_per_slot = 0\n", 4, "repo_pool.repos[0].ports_per_slot: must be at least 1"),
        ];
        for (extra, line, expected) in cases {
            let err = parse_err(&format!("{repo}{extra}"), *line);
            assert!(
                err.contains(expected),
                "{extra}\n=> {err}\nwanted {expected}"
            );
        }
        let remote = "[[repo_pool.repos]]\nname = \"a\"\nurl = \"git@example.com:a.git\"\ncopy_files = [\".env\"]\n";
        let err = parse_err(remote, 4);
        assert!(
            err.contains("repo_pool.repos[0].copy_files: needs a local url to copy from"),
            "{err}"
        );
    }

    #[test]
    fn default_in_matches_an_empty_file() {
        let config = Config::default_in(Path::new("/base"));
        assert_eq!(config.dispatcher.state_dir, Path::new("/base/.dispatcher"));
        assert_eq!(config.task_registry.dir, Path::new("/base/registry"));
        assert_eq!(config.base_dir, Path::new("/base"));
    }

    #[test]
    fn log_cap_and_environment_hygiene_keys() {
        let config = parse_ok(
            "[dispatcher]\nmax_log_bytes = \"2MiB\"\n\n[agent_pools.a]\ncommand = [\"x\"]\ninherit_env = false\npass_env = [\"LANG\"]\nenv_file = \"secrets.env\"\n",
        );
        assert_eq!(config.dispatcher.max_log_bytes, Some(2 << 20));
        let pool = &config.agent_pools["a"];
        assert!(!pool.inherit_env);
        assert_eq!(pool.pass_env, ["LANG"]);
        assert_eq!(
            pool.env_file.as_deref(),
            Some(config.base_dir.join("secrets.env").as_path())
        );
        assert_eq!(
            parse_ok("").dispatcher.max_log_bytes,
            Some(DEFAULT_MAX_LOG_BYTES)
        );
        assert_eq!(
            parse_ok("[dispatcher]\nmax_log_bytes = 0\n")
                .dispatcher
                .max_log_bytes,
            None
        );
        let err = parse_err("[dispatcher]\n\nmax_log_bytes = \"lots\"\n", 3);
        assert!(
            err.contains("dispatcher.max_log_bytes") && err.contains("lots"),
            "{err}"
        );
    }

    #[test]
    fn byte_sizes_in_every_unit() {
        use super::tree::parse_byte_size;
        assert_eq!(parse_byte_size("2048"), Ok(2048));
        assert_eq!(parse_byte_size("1KB"), Ok(1000));
        assert_eq!(parse_byte_size("1k"), Ok(1000));
        assert_eq!(parse_byte_size("3 MB"), Ok(3_000_000));
        assert_eq!(parse_byte_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_byte_size("5mib"), Ok(5 << 20));
        assert!(parse_byte_size("1TB").is_err());
        assert!(parse_byte_size("-1").is_err());
        assert!(parse_byte_size("99999999999999999999GB").is_err());
    }

    #[test]
    fn learned_footprints_are_off_unless_asked_for() {
        let config = parse_ok("[agent_pools.a]\ncommand = [\"x\"]\n");
        assert!(!config.dispatcher.learn_footprints);
        let config = parse_ok("[dispatcher]\nlearn_footprints = true\n");
        assert!(config.dispatcher.learn_footprints);
    }

    #[test]
    fn policies_fair_share_weights_starvation_and_quotas() {
        let config = parse_ok(
            "[dispatcher]\nscheduling_policy = \"fair-share\"\nstarvation_after = \"10m\"\n\n\
             [fair_share]\nweights = { spec-a = 2, spec-b = 0.5 }\n\n\
             [agent_pools.gpu]\ncommand = [\"x\"]\ncpu_quota = 8\nmemory_quota = \"16GiB\"\n\
             memory_limit_mb = 4096\ndefault_resources = { cpu = 2, memory_mb = 1024 }\n",
        );
        assert_eq!(
            config.dispatcher.scheduling_policy,
            SchedulingPolicy::FairShare
        );
        assert_eq!(
            config.dispatcher.starvation_after,
            Some(Duration::from_secs(600))
        );
        assert_eq!(config.fair_share_weights["spec-a"], 2.0);
        assert_eq!(config.fair_share_weights["spec-b"], 0.5);
        let pool = &config.agent_pools["gpu"];
        assert_eq!(pool.cpu_quota, Some(8.0));
        assert_eq!(pool.memory_quota_mb, Some(16 * 1024));
        assert_eq!(pool.memory_limit_mb, Some(4096));
        assert_eq!((pool.default_cpu, pool.default_memory_mb), (2.0, 1024));
        assert_eq!(
            parse_ok("[dispatcher]\nscheduling_policy = \"skill-based\"\n")
                .dispatcher
                .scheduling_policy,
            SchedulingPolicy::SkillBased
        );
        let err = parse_err("[fair_share]\nweights = { a = 0 }\n", 2);
        assert!(err.contains("fair_share.weights.a"), "{err}");
        let err = parse_err(
            "[agent_pools.p]\ncommand = [\"x\"]\ndefault_resources = { gpu = 1 }\n",
            3,
        );
        assert!(err.contains("gpu"), "{err}");
    }

    #[test]
    fn deadlock_section_defaults_and_values() {
        let default = parse_ok("").deadlock;
        assert!(default.enabled);
        assert_eq!(default.check_interval, secs(60));
        assert_eq!(default.action, DeadlockAction::Warn);
        let config =
            parse_ok("[deadlock]\nenabled = false\ncheck_interval = \"5m\"\naction = \"fail\"\n");
        assert!(!config.deadlock.enabled);
        assert_eq!(config.deadlock.check_interval, secs(300));
        assert_eq!(config.deadlock.action, DeadlockAction::Fail);
        assert_eq!(config.deadlock.action.as_str(), "fail");
    }

    #[test]
    fn deadlock_errors_name_key_and_line() {
        let cases: &[(&str, usize, &str)] = &[
            ("[deadlock]\ninterval = \"1m\"\n", 2, "deadlock: unknown key \"interval\" (expected one of: enabled, check_interval, action)"),
            ("[deadlock]\n\ncheck_interval = \"soon\"\n", 3, "deadlock.check_interval: invalid duration \"soon\""),
            ("[deadlock]\ncheck_interval = 0\n", 2, "deadlock.check_interval: must be greater than zero"),
            ("[deadlock]\naction = \"panic\"\n", 2, "deadlock.action: unknown deadlock action \"panic\" (supported: warn, fail)"),
            ("[deadlock]\naction = 1\n", 2, "deadlock.action: expected a string, found integer"),
            ("[deadlock]\nenabled = \"yes\"\n", 2, "deadlock.enabled: expected true or false"),
            ("deadlock = 1\n", 1, "deadlock: expected a table"),
        ];
        for (text, line, expected) in cases {
            let err = parse_err(text, *line);
            assert!(
                err.contains(expected),
                "{text}\n=> {err}\nwanted {expected}"
            );
        }
    }
}

//! Command-line interface: the clap definitions and one function per subcommand. Data goes
//! to stdout, logs and errors to stderr; exit codes are documented in the README.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

use dispatcher::authoring::{self, Created, NewTask};
use dispatcher::config::Config;
use dispatcher::control::{self, Cancelled};
use dispatcher::deadlock::{self, Finding};
use dispatcher::http::{ReportSource, Server};
use dispatcher::live::LiveLine;
use dispatcher::registry::{EventLog, Registry, TaskState};
use dispatcher::slots::{self, SlotManager};
use dispatcher::statedir::StateDir;
use dispatcher::status::StatusReport;
use dispatcher::sys::SignalSet;
use dispatcher::{ControlHandle, Dispatcher, RunOutcome};

mod attempts_cmd;
mod events_cmd;

/// A configuration, lock or I/O error.
pub const EXIT_ERROR: u8 = 1;

/// `check` found tasks that can never run: the code `run --until-idle` uses for them too.
pub const EXIT_STUCK: u8 = 4;

/// Runs long-running agent programs for a NecroCode task registry.
#[derive(Parser, Debug)]
#[command(name = "dispatcher", version, about)]
pub struct Cli {
    /// Configuration file. When the default is missing, every setting takes its default.
    /// [default: dispatcher.toml]
    #[arg(long, short = 'c', global = true)]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Watch the registry and run every task whose dependencies are done.
    ///
    /// Exit codes: 0 all tasks done (--until-idle), 1 error, 3 some tasks failed,
    /// 4 tasks remain that can never run, 130 stopped by Ctrl-C or SIGTERM.
    Run {
        /// Exit once nothing is ready, running or waiting for a retry.
        #[arg(long)]
        until_idle: bool,
    },
    /// Show the queue, pools, runners and tasksets, whether or not a dispatcher runs.
    Status {
        /// Print the stable JSON document described in the README.
        #[arg(long)]
        json: bool,

        /// Ask the dispatcher serving `[metrics] listen` at this address
        /// (http://HOST:PORT) instead of reading this state dir.
        #[arg(long, value_name = "URL")]
        url: Option<String>,
        /// Redraw the status every --interval until Ctrl-C.
        #[arg(long, conflicts_with = "json")]
        watch: bool,
        /// How often --watch redraws (90s, 500ms, 2s…).
        #[arg(long, default_value = "2s", value_parser = parse_interval, requires = "watch")]
        interval: Duration,
    },
    /// Switch a pool on or off: a disabled pool takes no new tasks; running ones finish.
    ///
    /// Works on a running dispatcher (within one poll interval) and without one; the switch
    /// survives restarts (kept in the state dir's pools.json).
    Pool {
        #[command(subcommand)]
        action: PoolAction,
    },
    /// Set a task's priority (SPEC/TASK_ID N); the next scheduling decision uses it.
    Priority {
        /// The task, as SPEC/TASK_ID.
        task: String,
        /// The new priority (higher runs first under the priority policies).
        #[arg(allow_hyphen_values = true)]
        priority: i64,
    },
    /// Put a failed task back to ready, with its attempts reset.
    Retry {
        /// The task, as SPEC/TASK_ID.
        task: String,
    },
    /// List a task's attempts (SPEC/TASK_ID): outcome, failure class, whether it counted,
    /// exit code, error, and the checkpoint ref of a failed attempt's worktree, marked
    /// "(gone)" when it no longer exists in the repository.
    Attempts {
        /// The task, as SPEC/TASK_ID.
        task: String,
        /// Print a JSON array of the attempt records, each with `checkpoint_exists`.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a task: a waiting one is failed at once; a running one has its runner stopped
    /// (its process group gets SIGTERM, then SIGKILL) and is failed with reason "cancelled".
    Cancel {
        /// The task, as SPEC/TASK_ID.
        task: String,
    },
    /// Report, once, every task that can never run and why (for cron and CI).
    ///
    /// Finds dependency cycles (each as its path), tasks waiting on a dependency that failed
    /// or does not exist, tasks no enabled pool serves, tasks stuck behind those, and
    /// unreadable tasksets.
    ///
    /// Exit codes: 0 nothing found, 4 findings, 1 error.
    Check {
        /// Print {"findings": [...]}, each finding with its `kind` and ids.
        #[arg(long)]
        json: bool,
    },
    /// Print the metrics (Prometheus text format) of the dispatcher running on this state
    /// dir, or the gauges the registry alone gives when none runs.
    Metrics {
        /// Fetch them from the dispatcher serving `[metrics] listen` at this address
        /// (http://HOST:PORT) instead.
        #[arg(long, value_name = "URL")]
        url: Option<String>,
    },
    /// Show the workspace slots of each repository pool: state, task, use and disk size.
    Slots {
        /// Print the pools and slots as JSON.
        #[arg(long)]
        json: bool,

        #[command(subcommand)]
        action: Option<SlotsAction>,
    },
    /// Add one task to a spec, creating the spec's taskset when it has none.
    ///
    /// The task is ready when all its --after tasks are done, else blocked.
    Add(AddArgs),
    /// Add the tasks of a .toml, .json or Kiro-style tasks.md file (see the README).
    ///
    /// Everything is checked first (names, duplicate ids, unknown dependencies, cycles);
    /// when anything is wrong, each problem is reported with its line and nothing is written.
    Import {
        /// The file; its extension picks the format.
        file: PathBuf,
        /// The spec to add to [default: the file's `spec`, or a tasks.md's directory name].
        #[arg(long)]
        spec: Option<String>,
    },
    /// List tasks: SPEC, ID, STATE, PRIORITY, SKILL, DEPENDS, TITLE.
    Tasks {
        /// Only this spec's tasks.
        #[arg(long)]
        spec: Option<String>,
        /// Only tasks in this state.
        #[arg(long, value_parser = parse_state)]
        state: Option<TaskState>,
        /// Print a JSON array of tasks.
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff) generated from this help.
    Man,
    /// Print the events of every spec (NecroCode's and ours) and the dispatcher's own, merged
    /// in time order; malformed lines are reported on stderr and skipped.
    Events {
        /// Only this spec's events.
        #[arg(long)]
        spec: Option<String>,
        /// Only the events of this task id.
        #[arg(long)]
        task: Option<String>,
        /// Keep printing new events as they are appended, until interrupted.
        #[arg(long)]
        follow: bool,
        /// Print each event as its JSON line, unchanged.
        #[arg(long)]
        json: bool,
    },
    /// Print the dependency graph: an edge from each dependency to its dependent, nodes
    /// filled by state, cycles in red, missing dependencies dashed.
    Graph {
        /// Only this spec (default: every spec, one cluster each).
        #[arg(long)]
        spec: Option<String>,
        /// The text format to print.
        #[arg(long, value_enum, default_value_t = GraphFormat::Dot)]
        format: GraphFormat,
        /// Render to FILE.svg or FILE.png with Graphviz's `dot` instead of printing.
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
}

#[derive(clap::Args, Debug)]
struct AddArgs {
    /// The spec to add the task to.
    spec: String,
    /// The new task's id (unique in the spec).
    #[arg(long)]
    id: String,
    #[arg(long)]
    title: String,
    #[arg(long, default_value = "")]
    description: String,
    /// The skill that routes it to a pool (see skill_mapping in the config).
    #[arg(long)]
    skill: Option<String>,
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    priority: i64,
    /// Ids of tasks it waits for.
    #[arg(long, num_args = 1..)]
    after: Vec<String>,
    /// The repository it runs in (metadata.repo_name).
    #[arg(long)]
    repo: Option<String>,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum GraphFormat {
    Dot,
    Mermaid,
}

#[derive(Subcommand, Debug)]
enum PoolAction {
    /// Let the pool take tasks again.
    Enable { name: String },
    /// Stop giving the pool new tasks; its running tasks finish.
    Disable { name: String },
}

#[derive(Subcommand, Debug)]
enum SlotsAction {
    /// Create, grow or shrink the pools to match [repo_pool], and repair slots in error.
    ///
    /// Only free slots are removed; slots in use go on a later sync.
    Sync,
}

pub fn execute(cli: &Cli) -> anyhow::Result<u8> {
    // A remote dispatcher has its own configuration: the local one is not even read, so a
    // broken or absent local file does not stand in the way.
    match &cli.command {
        Command::Status {
            json,
            url: Some(url),
            ..
        } => return remote_status(url, *json),
        Command::Metrics { url: Some(url) } => {
            emit(&fetch(url, "/metrics")?)?;
            return Ok(0);
        }
        _ => {}
    }
    let config_path = cli
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
    // These describe the command line itself: no configuration needed.
    match &cli.command {
        Command::Completions { shell } => return completions(*shell),
        Command::Man => return man_page(),
        _ => {}
    }
    let config = load_config(&config_path, cli.config.is_some())?;
    match &cli.command {
        Command::Run { until_idle } => run(config, &config_path, *until_idle),
        Command::Pool { action } => {
            let (name, enabled) = match action {
                PoolAction::Enable { name } => (name, true),
                PoolAction::Disable { name } => (name, false),
            };
            let state = StateDir::new(&config.dispatcher.state_dir);
            let known = config.agent_pools.contains_key(name);
            let changed = control::set_pool_enabled(&state, name, known, enabled)?;
            let word = if enabled { "enabled" } else { "disabled" };
            let already = if changed { "" } else { "already " };
            emit(&format!("pool {name}: {already}{word}\n"))?;
            Ok(0)
        }
        Command::Priority { task, priority } => {
            let (spec, id) = control::parse_task_ref(task)?;
            let (registry, events) = registry_and_events(&config);
            let old = control::set_priority(&registry, &events, &spec, &id, *priority)?;
            emit(&format!("{spec}/{id}: priority {old} -> {priority}\n"))?;
            Ok(0)
        }
        Command::Retry { task } => {
            let (spec, id) = control::parse_task_ref(task)?;
            let (registry, events) = registry_and_events(&config);
            control::retry(&registry, &events, &spec, &id)?;
            emit(&format!("{spec}/{id}: ready again, attempts reset\n"))?;
            Ok(0)
        }
        Command::Attempts { task, json } => attempts_cmd::attempts(&config, task, *json),
        Command::Cancel { task } => {
            let (spec, id) = control::parse_task_ref(task)?;
            let (registry, events) = registry_and_events(&config);
            let state = StateDir::new(&config.dispatcher.state_dir);
            let text = match control::cancel(&registry, &events, &state, &spec, &id)? {
                Cancelled::Queued => "failed (cancelled before it ran)",
                Cancelled::Requested => "cancel requested: the dispatcher stops its runner",
                Cancelled::Stopped => "runner stopped; failed (cancelled)",
            };
            emit(&format!("{spec}/{id}: {text}\n"))?;
            Ok(0)
        }
        Command::Status {
            watch: true,
            interval,
            ..
        } => status_watch(&config, *interval),
        Command::Status { json, .. } => status(&config, *json),
        Command::Metrics { .. } => {
            emit(&dispatcher::metrics::render(&current_report(&config)))?;
            Ok(0)
        }
        Command::Check { json } => check(&config, *json),
        Command::Slots { json, action } => match action {
            None => slots_list(&config, *json),
            Some(SlotsAction::Sync) => slots_sync(&config),
        },
        Command::Add(args) => add(&config, args),
        Command::Import { file, spec } => import(&config, file, spec.as_deref()),
        Command::Tasks { spec, state, json } => tasks(&config, spec.as_deref(), *state, *json),
        Command::Completions { shell } => completions(*shell),
        Command::Man => man_page(),
        Command::Events {
            spec,
            task,
            follow,
            json,
        } => events_cmd::events(&config, spec, task, *follow, *json),
        Command::Graph {
            spec,
            format,
            output,
        } => events_cmd::graph(&config, spec.as_deref(), *format, output.as_deref()),
    }
}

const DEFAULT_CONFIG: &str = "dispatcher.toml";

/// The configuration file; only the implicit default may be missing (every key then takes its
/// default). A file named with `--config` must exist.
fn load_config(path: &Path, explicit: bool) -> anyhow::Result<Config> {
    if !explicit && !path.exists() {
        let cwd = std::env::current_dir().context("cannot read the current directory")?;
        log::info!("no dispatcher.toml here: using the defaults");
        return Ok(Config::default_in(&cwd));
    }
    Ok(Config::load(path)?)
}

fn registry_and_events(config: &Config) -> (Registry, EventLog) {
    let registry = Registry::new(&config.task_registry.dir);
    let state = StateDir::new(&config.dispatcher.state_dir);
    let events = EventLog::new(&registry, state.event_fallback_path());
    (registry, events)
}

fn run(config: Config, config_path: &Path, until_idle: bool) -> anyhow::Result<u8> {
    // Blocked before any thread starts, so only the signal thread below ever sees them.
    let signals = SignalSet::block(&[libc::SIGINT, libc::SIGTERM, libc::SIGHUP])
        .context("cannot block signals")?;
    // Bound before the dispatcher starts, so that a taken port fails the start-up before any
    // task is claimed.
    let listener = config.metrics_listen.map(Server::bind).transpose()?;
    let mut dispatcher = Dispatcher::new(config).until_idle(until_idle);
    dispatcher.start()?;
    let control = dispatcher.control_handle()?;
    // Kept until the run ends; dropping it stops the endpoint.
    let _server = match listener {
        Some(listener) => {
            let control = control.clone();
            let source: ReportSource = Arc::new(move || {
                control
                    .status(HTTP_STATUS_TIMEOUT)
                    .map_err(|err| err.to_string())
            });
            Some(Server::start(listener, source)?)
        }
        None => None,
    };
    let config_path = config_path.to_path_buf();
    let live_control = control.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || handle_signals(&signals, &control, &config_path))
        .context("cannot start the signal thread")?;
    let live = LiveLine::start(move || live_control.status(Duration::from_millis(400)).ok());
    let outcome = dispatcher.wait()?;
    drop(live);
    let summary = match outcome {
        RunOutcome::AllDone => "idle: every task is done",
        RunOutcome::SomeFailed => "idle: some tasks failed",
        RunOutcome::NeverRunnable => "idle: some tasks can never run (see `dispatcher status`)",
        RunOutcome::Drained => "stopped: drained",
    };
    log::info!("{summary}");
    Ok(outcome.exit_code())
}

/// SIGINT and SIGTERM drain (a second one stops the runners now); SIGHUP reloads the
/// configuration file, keeping the old configuration if the new one is invalid.
fn handle_signals(signals: &SignalSet, control: &ControlHandle, config_path: &Path) {
    loop {
        let signal = match signals.wait() {
            Ok(signal) => signal,
            Err(err) => {
                log::error!("cannot wait for signals: {err}");
                return;
            }
        };
        if signal == libc::SIGHUP {
            match load_config(config_path, true) {
                Ok(config) => {
                    log::info!("SIGHUP: reloading {}", config_path.display());
                    control.reload(config);
                }
                Err(err) => log::error!(
                    "SIGHUP: {}; keeping the running configuration",
                    describe(&err)
                ),
            }
        } else if control.shutdown() > 1 {
            eprintln!("dispatcher: stopping runners now");
        }
    }
}

/// The running dispatcher's snapshot, or the report the registry alone gives.
fn current_report(config: &Config) -> StatusReport {
    let state = StateDir::new(&config.dispatcher.state_dir);
    StatusReport::read_live_snapshot(&state).unwrap_or_else(|| StatusReport::from_registry(config))
}

/// How long an HTTP request waits for the core's report: below Prometheus' default scrape
/// timeout (10 s), so a stuck core shows as a 503 rather than a scrape timeout.
const HTTP_STATUS_TIMEOUT: Duration = Duration::from_secs(5);

/// How long `--url` waits for the whole exchange with a remote dispatcher.
const REMOTE_TIMEOUT: Duration = Duration::from_secs(5);

/// `path` from the dispatcher endpoint at `base` (http://HOST:PORT), as text.
fn fetch(base: &str, path: &str) -> anyhow::Result<String> {
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(REMOTE_TIMEOUT))
        .build()
        .into();
    agent
        .get(&url)
        .call()
        .and_then(|mut response| response.body_mut().read_to_string())
        .with_context(|| format!("cannot reach {url}"))
}

fn remote_status(base: &str, json: bool) -> anyhow::Result<u8> {
    let text = fetch(base, "/status")?;
    let report: StatusReport = serde_json::from_str(&text).with_context(|| {
        format!("cannot reach {base}: /status did not answer a dispatcher status document")
    })?;
    print_status(&report, json)
}

fn status(config: &Config, json: bool) -> anyhow::Result<u8> {
    print_status(&current_report(config), json)
}

fn print_status(report: &StatusReport, json: bool) -> anyhow::Result<u8> {
    if json {
        let text = serde_json::to_string_pretty(report).context("cannot encode status")?;
        emit(&format!("{text}\n"))?;
    } else {
        emit(&report.render())?;
    }
    Ok(0)
}

fn check(config: &Config, json: bool) -> anyhow::Result<u8> {
    let root = &config.task_registry.dir;
    // A mistyped registry path would otherwise look like a registry with nothing wrong in it,
    // and a cron job would never notice.
    if !root.is_dir() {
        anyhow::bail!("registry directory {} does not exist", root.display());
    }
    let registry = Registry::new(root);
    let service = deadlock::configured_service(config);
    let mut findings = Vec::new();
    for spec in registry.list_specs()? {
        match registry.load(&spec) {
            Ok(taskset) => findings.extend(deadlock::analyze(&taskset, &service)),
            Err(err) => findings.push(Finding::Unreadable {
                spec,
                error: err.to_string(),
            }),
        }
    }
    if json {
        let doc = serde_json::json!({ "findings": findings });
        let text = serde_json::to_string_pretty(&doc).context("cannot encode the findings")?;
        emit(&format!("{text}\n"))?;
    } else if findings.is_empty() {
        emit("no deadlocks or stuck tasks\n")?;
    } else {
        let lines: String = findings
            .iter()
            .map(|finding| finding.describe() + "\n")
            .collect();
        emit(&lines)?;
    }
    Ok(if findings.is_empty() { 0 } else { EXIT_STUCK })
}

fn slots_list(config: &Config, json: bool) -> anyhow::Result<u8> {
    let pools = SlotManager::new(&config.repo_pool)
        .list()
        .context("cannot list the workspace slots")?;
    if json {
        let text = serde_json::to_string_pretty(&pools).context("cannot encode the slots")?;
        emit(&format!("{text}\n"))?;
    } else {
        emit(&slots::render(&pools))?;
    }
    Ok(0)
}

fn slots_sync(config: &Config) -> anyhow::Result<u8> {
    let lines = SlotManager::new(&config.repo_pool)
        .sync()
        .context("cannot sync the workspace slots")?;
    let mut text = String::new();
    if lines.is_empty() {
        text.push_str("slots: every pool matches the config\n");
    }
    for line in lines {
        text.push_str(&line);
        text.push('\n');
    }
    emit(&text)?;
    Ok(0)
}

// ----- authoring and shell integration -------------------------------------------------------

fn add(config: &Config, args: &AddArgs) -> anyhow::Result<u8> {
    let (registry, events) = registry_and_events(config);
    let task = NewTask {
        id: args.id.clone(),
        title: args.title.clone(),
        description: args.description.clone(),
        skill: args.skill.clone(),
        priority: args.priority,
        after: args.after.clone(),
        repo: args.repo.clone(),
        ..NewTask::default()
    };
    let created = authoring::create_tasks(&registry, &events, &args.spec, &[task], "add")?;
    emit(&created_text(&created))?;
    Ok(0)
}

fn import(config: &Config, file: &Path, spec: Option<&str>) -> anyhow::Result<u8> {
    let parsed = authoring::read_import(file)?;
    let source = file.display().to_string();
    let spec = match (spec, parsed.spec.as_deref()) {
        (Some(given), Some(named)) if given != named => {
            anyhow::bail!("{source} names spec {named:?} but --spec says {given:?}")
        }
        (Some(spec), _) | (None, Some(spec)) => spec.to_owned(),
        // Kiro keeps a spec's plan in .kiro/specs/<spec>/tasks.md.
        (None, None) => file
            .canonicalize()
            .ok()
            .and_then(|p| p.parent()?.file_name()?.to_str().map(str::to_owned))
            .filter(|_| file.extension().is_some_and(|e| e == "md"))
            .with_context(|| format!("{source} names no spec: pass --spec"))?,
    };
    let (registry, events) = registry_and_events(config);
    let created = authoring::create_tasks(&registry, &events, &spec, &parsed.tasks, &source)?;
    emit(&created_text(&created))?;
    Ok(0)
}

fn created_text(created: &Created) -> String {
    let mut text = String::new();
    if created.new_spec {
        text.push_str(&format!("{}: new spec\n", created.spec));
    }
    for (id, state) in &created.tasks {
        text.push_str(&format!("{}/{id}: added ({state})\n", created.spec));
    }
    text
}

fn tasks(
    config: &Config,
    spec: Option<&str>,
    state: Option<TaskState>,
    json: bool,
) -> anyhow::Result<u8> {
    let registry = Registry::new(&config.task_registry.dir);
    let specs = match spec {
        Some(spec) => vec![spec.to_owned()],
        None => registry.list_specs()?,
    };
    let mut rows = Vec::new();
    for name in &specs {
        match registry.load(name) {
            Ok(taskset) => rows.extend(authoring::rows(&taskset, state)),
            // One broken taskset must not hide the others' tasks; a named one is an error.
            Err(err) if spec.is_none() => log::warn!("skipping spec {name}: {err}"),
            Err(err) => return Err(err.into()),
        }
    }
    if json {
        let text = serde_json::to_string_pretty(&rows).context("cannot encode the tasks")?;
        emit(&format!("{text}\n"))?;
    } else {
        emit(&authoring::render_rows(&rows))?;
    }
    Ok(0)
}

fn parse_state(text: &str) -> Result<TaskState, String> {
    serde_json::from_value(serde_json::Value::String(text.to_owned()))
        .map_err(|_| format!("unknown state {text:?} (ready, running, blocked, done, failed)"))
}

fn parse_interval(text: &str) -> Result<Duration, String> {
    let interval = dispatcher::config::parse_duration(text)?;
    if interval.is_zero() {
        return Err("the interval must be longer than zero".into());
    }
    Ok(interval)
}

/// Redraws the human status until Ctrl-C, whose default action ends the process: there is
/// nothing to clean up, so no handler and a plain sleep suffice. On a terminal the screen is
/// cleared; into a pipe or file each refresh follows a separator line instead.
fn status_watch(config: &Config, interval: Duration) -> anyhow::Result<u8> {
    use std::io::{IsTerminal, Write};
    let terminal = std::io::stdout().is_terminal();
    let mut first = true;
    loop {
        let body = current_report(config).render();
        let frame = if terminal {
            format!("\x1b[H\x1b[2J{body}")
        } else if first {
            body
        } else {
            format!("----\n{body}")
        };
        first = false;
        let mut out = std::io::stdout().lock();
        match out.write_all(frame.as_bytes()).and_then(|()| out.flush()) {
            // The reader went away (`status --watch | head`): that ends the watch.
            Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => return Ok(0),
            Err(err) => return Err(err).context("cannot write to stdout"),
            Ok(()) => {}
        }
        drop(out);
        std::thread::sleep(interval);
    }
}

fn completions(shell: clap_complete::Shell) -> anyhow::Result<u8> {
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "dispatcher", &mut buf);
    emit(&String::from_utf8_lossy(&buf))?;
    Ok(0)
}

fn man_page() -> anyhow::Result<u8> {
    let mut buf = Vec::new();
    clap_mangen::Man::new(Cli::command())
        .render(&mut buf)
        .context("cannot render the man page")?;
    emit(&String::from_utf8_lossy(&buf))?;
    Ok(0)
}

/// Writes data to stdout. A reader that went away (`status --json | head`) is not an error.
fn emit(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(err).context("cannot write to stdout")
        }
        _ => Ok(()),
    }
}

/// The error and its causes on one line, skipping a cause whose text the message before it
/// already ends with (the library's errors include their source in their own message).
pub fn describe(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let part = cause.to_string();
        if text.ends_with(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

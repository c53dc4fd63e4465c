//! Shared test helpers: a temp workspace with a registry, a state dir and a config, the real
//! `dispatcher` binary run in it with a clean environment, and waits with deadlines.
#![allow(dead_code)] // each test binary uses a different subset

pub mod engine_tests;
pub mod standin;

use std::cell::RefCell;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub const BIN: &str = env!("CARGO_BIN_EXE_dispatcher");

/// Generous: CI machines are shared and slow. Tests wait for conditions, never for time.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// The runner scripts shipped under `tests/runners/`.
pub fn runner(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/runners")
        .join(name)
        .display()
        .to_string()
}

pub struct Env {
    pub dir: tempfile::TempDir,
    /// Variables every command of this test gets on top of its clean environment.
    vars: RefCell<Vec<(String, OsString)>>,
}

impl Env {
    pub fn new() -> Env {
        Env {
            dir: tempfile::tempdir().expect("temp dir"),
            vars: RefCell::new(Vec::new()),
        }
    }

    /// Sets `key` in the environment of every dispatcher this test starts from now on
    /// (replacing an earlier value, `PATH` included).
    pub fn set_var(&self, key: &str, value: impl Into<OsString>) {
        let mut vars = self.vars.borrow_mut();
        vars.retain(|(k, _)| k != key);
        vars.push((key.to_string(), value.into()));
    }

    /// Puts `dir` first on the `PATH` of every dispatcher this test starts (test doubles of
    /// external tools).
    pub fn prepend_path(&self, dir: &Path) {
        let current = self
            .vars
            .borrow()
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.clone())
            .or_else(|| std::env::var_os("PATH"))
            .unwrap_or_default();
        let mut paths = vec![dir.to_path_buf()];
        paths.extend(std::env::split_paths(&current));
        self.set_var("PATH", std::env::join_paths(paths).expect("PATH entries"));
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn registry(&self) -> PathBuf {
        self.path().join("registry")
    }

    pub fn state(&self) -> PathBuf {
        self.path().join("state")
    }

    pub fn config_path(&self) -> PathBuf {
        self.path().join("dispatcher.toml")
    }

    /// Writes `dispatcher.toml`: registry and state dir in the temp dir, fast polling and
    /// retries, then `extra` (pools, skill mapping, overrides of other sections).
    pub fn config(&self, dispatcher: &str, extra: &str) -> &Env {
        let text = format!(
            "[dispatcher]\nstate_dir = \"state\"\npoll_interval = \"100ms\"\n{dispatcher}\n\n\
             [task_registry]\ndir = \"registry\"\n\n{extra}\n"
        );
        fs::write(self.config_path(), text).expect("write config");
        self
    }

    /// Writes a taskset the way NecroCode lays it out. `tasks` are partial task objects;
    /// missing fields get NecroCode's values.
    pub fn taskset(&self, spec: &str, tasks: &[Value]) -> &Env {
        let tasks: Vec<Value> = tasks.iter().map(full_task).collect();
        let doc = json!({
            "spec_name": spec, "version": 1,
            "created_at": "2026-11-29T09:00:00.000000", "updated_at": "2026-11-29T09:00:00.000000",
            "tasks": tasks, "metadata": {}
        });
        self.write_taskset_raw(spec, &serde_json::to_string_pretty(&doc).unwrap());
        self
    }

    pub fn write_taskset_raw(&self, spec: &str, text: &str) {
        let dir = self.registry().join("tasksets").join(spec);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("taskset.json"), text).unwrap();
    }

    pub fn taskset_path(&self, spec: &str) -> PathBuf {
        self.registry()
            .join("tasksets")
            .join(spec)
            .join("taskset.json")
    }

    pub fn read_taskset(&self, spec: &str) -> Value {
        let text = fs::read_to_string(self.taskset_path(spec)).expect("read taskset");
        serde_json::from_str(&text).expect("taskset is JSON")
    }

    pub fn task(&self, spec: &str, id: &str) -> Value {
        self.read_taskset(spec)["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("no task {spec}/{id}"))
    }

    pub fn state_of(&self, spec: &str, id: &str) -> String {
        self.task(spec, id)["state"].as_str().unwrap().to_string()
    }

    pub fn events(&self, spec: &str) -> Vec<Value> {
        let path = self
            .registry()
            .join("events")
            .join(spec)
            .join("events.jsonl");
        fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("event line is JSON"))
            .collect()
    }

    pub fn events_of_type(&self, spec: &str, event_type: &str) -> Vec<Value> {
        self.events(spec)
            .into_iter()
            .filter(|e| e["event_type"] == event_type)
            .collect()
    }

    /// The real binary in the temp dir, with a clean environment.
    pub fn command(&self, args: &[&str]) -> Command {
        self.command_of(Path::new(BIN), args)
    }

    /// [`Env::command`] for a copy of the binary at `program`.
    pub fn command_of(&self, program: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .current_dir(self.path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .envs(self.vars.borrow().iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        cmd
    }

    /// How the dispatcher names a path under the temp dir in its messages: it resolves the
    /// config file's directory physically.
    pub fn shown(&self, relative: &str) -> String {
        fs::canonicalize(self.path())
            .unwrap()
            .join(relative)
            .display()
            .to_string()
    }

    pub fn output(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run dispatcher")
    }

    /// Starts `dispatcher run` (plus `args`) in the background; stderr goes to a file.
    pub fn spawn_run(&self, args: &[&str]) -> Run {
        let log = self.path().join(format!("dispatcher-{}.log", unique()));
        let mut full = vec!["run"];
        full.extend_from_slice(args);
        let child = self
            .command(&full)
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn dispatcher");
        Run { child, log }
    }

    /// `dispatcher run --until-idle` to the end (at most `DEADLINE`).
    pub fn run_until_idle(&self) -> (ExitStatus, String) {
        let mut run = self.spawn_run(&["--until-idle"]);
        let status = run.wait(DEADLINE);
        (status, run.stderr())
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}

fn full_task(partial: &Value) -> Value {
    let mut task = json!({
        "id": "", "title": "", "description": "", "state": "ready", "dependencies": [],
        "required_skill": null, "priority": 0, "is_optional": false, "assigned_slot": null,
        "reserved_branch": null, "runner_id": null, "artifacts": [], "metadata": {},
        "created_at": "2026-11-29T09:00:00.000000", "updated_at": "2026-11-29T09:00:00.000000"
    });
    for (k, v) in partial.as_object().expect("task is an object") {
        task[k] = v.clone();
    }
    if task["title"] == "" {
        task["title"] = task["id"].clone();
    }
    task
}

/// A `dispatcher run` in the background.
pub struct Run {
    pub child: Child,
    pub log: PathBuf,
}

impl Run {
    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap()
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.pid(), signal);
        }
    }

    /// Waits for the process to exit; kills it and panics past the deadline.
    pub fn wait(&mut self, deadline: Duration) -> ExitStatus {
        let end = Instant::now() + deadline;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > end {
                let _ = self.child.kill();
                panic!(
                    "dispatcher did not exit in {deadline:?}; log:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Asks the dispatcher to drain (SIGTERM) and waits for it, so that a test that ends a
    /// long-running `run` leaves nothing behind.
    pub fn terminate(&mut self) {
        self.signal(libc::SIGTERM);
        self.wait(DEADLINE);
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Asserts that a dispatcher exited with `code`, showing its `log` when it did not.
pub fn assert_exit(status: ExitStatus, code: i32, log: &str) {
    assert_eq!(status.code(), Some(code), "dispatcher log:\n{log}");
}

/// `<temp>/out`, created: where runner scripts write their records and look for gate files.
pub fn out_dir(env: &Env) -> PathBuf {
    let dir = env.path().join("out");
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// The attempts a task has used, from `metadata.dispatcher.attempts` (0 before the first).
pub fn attempts(task: &Value) -> u64 {
    task["metadata"]["dispatcher"]["attempts"]
        .as_u64()
        .unwrap_or(0)
}

/// Runs git in `dir` with an identity of its own, so that commits work on a fresh machine.
/// Panics with git's stderr unless it succeeds; returns stdout, trimmed.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=Dispatcher Test",
            "-c",
            "user.email=tests@example.com",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?} in {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// An origin repository `<temp>/<name>-origin` with one commit on `main`: a `README.md`
/// holding the name, plus `files` (`(path, content)`), for tests of slots and footprints.
pub fn make_origin(env: &Env, name: &str, files: &[(&str, &str)]) -> PathBuf {
    let origin = env.path().join(format!("{name}-origin"));
    fs::create_dir_all(&origin).unwrap();
    git(&origin, &["init", "--quiet", "--initial-branch=main"]);
    fs::write(origin.join("README.md"), format!("{name}\n")).unwrap();
    for (path, content) in files {
        fs::write(origin.join(path), content).unwrap();
    }
    git(&origin, &["add", "--all"]);
    git(&origin, &["commit", "--quiet", "-m", "initial"]);
    origin
}

/// Polls `condition` until it holds; panics with `what` past `DEADLINE`.
pub fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let end = Instant::now() + DEADLINE;
    while !condition() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether any process of ours still has `marker` in its command line.
pub fn processes_with(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if text.contains(marker) {
            found.push(format!("{}: {text}", entry.file_name().to_string_lossy()));
        }
    }
    found
}

/// The registry NecroCode's own Python tools wrote (see `tests/fixtures/necrocode/README.md`).
pub fn fixture_registry() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/necrocode/registry")
}

/// Copies a directory tree (regular files and directories only, as the fixtures hold).
pub fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Every path below `dir` (files, directories, symlinks, not following links), sorted.
pub fn paths_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        let Ok(entries) = fs::read_dir(&current) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(path.clone());
            }
            found.push(path);
        }
    }
    found.sort();
    found
}

/// `text` as a TOML string literal, for config files that embed paths and arguments.
pub fn toml_str(text: &str) -> String {
    toml::Value::String(text.to_string()).to_string()
}

/// One `[agent_pools.NAME]` section: a local-process pool of `max` runners running
/// `command`, with `env`, and `extra` lines (timeout, …) appended verbatim.
pub fn pool(
    name: &str,
    max: usize,
    command: &[String],
    env: &[(&str, String)],
    extra: &str,
) -> String {
    typed_pool("local-process", name, max, command, env, extra)
}

/// [`pool`] of any `type` (`docker`, `kubernetes` …); engine keys go in `extra`.
pub fn typed_pool(
    kind: &str,
    name: &str,
    max: usize,
    command: &[String],
    env: &[(&str, String)],
    extra: &str,
) -> String {
    let command: Vec<String> = command.iter().map(|a| toml_str(a)).collect();
    let env: Vec<String> = env
        .iter()
        .map(|(k, v)| format!("{k} = {}", toml_str(v)))
        .collect();
    format!(
        "[agent_pools.{name}]\ntype = {}\nmax_concurrency = {max}\n\
         command = [{}]\nenv = {{ {} }}\n{extra}\n",
        toml_str(kind),
        command.join(", "),
        env.join(", ")
    )
}

/// [`pool`] as the only pool, serving every task (`[skill_mapping] default`).
pub fn only_pool(
    name: &str,
    max: usize,
    command: &[String],
    env: &[(&str, String)],
    extra: &str,
) -> String {
    format!(
        "{}{}",
        pool(name, max, command, env, extra),
        default_to(name)
    )
}

/// Routes tasks without a mapped skill (and tasks without a skill) to `pool`.
pub fn default_to(pool: &str) -> String {
    format!("[skill_mapping]\ndefault = [{}]\n", toml_str(pool))
}

/// `runner(script)` followed by `args`, as a pool command.
pub fn cmd(script: &str, args: &[&str]) -> Vec<String> {
    std::iter::once(runner(script))
        .chain(args.iter().map(|a| (*a).to_string()))
        .collect()
}

/// `dispatcher status --json`, parsed; panics unless it exits 0.
pub fn status_json(env: &Env) -> Value {
    let out = env.output(&["status", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "status --json failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("status --json prints JSON")
}

/// Processes whose command line *or environment* contains `marker` (a runner's children
/// inherit its environment, so this also finds what a runner left behind). Zombies have
/// neither and are not listed.
pub fn processes_mentioning(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let read = |file: &str| fs::read(entry.path().join(file)).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&read("cmdline")).replace('\0', " ");
        let environ = String::from_utf8_lossy(&read("environ")).into_owned();
        if cmdline.contains(marker) || environ.contains(marker) {
            found.push(format!("{name}: {cmdline}"));
        }
    }
    found
}

/// Whether `pid` is a live process (not a zombie waiting to be reaped).
pub fn pid_alive(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state letter follows the command name, which is in parentheses and may contain
    // spaces; the last ')' ends it.
    let state = stat
        .rfind(')')
        .and_then(|end| stat[end + 1..].split_whitespace().next());
    !matches!(state, None | Some("Z" | "X"))
}

/// One line of a runner ledger (`tests/runners/*.sh`): `start|end TASK TAG EPOCH_NS`.
#[derive(Debug, Clone)]
pub struct Mark {
    pub start: bool,
    pub task: String,
    pub tag: String,
    pub ns: u128,
}

/// The ledger in time order. A line still being appended (no newline yet) is left out.
pub fn ledger(path: &Path) -> Vec<Mark> {
    let text = fs::read_to_string(path).unwrap_or_default();
    let complete = &text[..text.rfind('\n').map_or(0, |end| end + 1)];
    let mut marks: Vec<Mark> = complete
        .lines()
        .map(|line| {
            let parts: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(parts.len(), 4, "ledger line {line:?}");
            Mark {
                start: parts[0] == "start",
                task: parts[1].to_string(),
                tag: parts[2].to_string(),
                ns: parts[3].parse().expect("ledger timestamp"),
            }
        })
        .collect();
    marks.sort_by_key(|m| m.ns);
    marks
}

/// `(start, end)` of the one run of `task` in a ledger; panics unless it ran exactly once.
pub fn span(marks: &[Mark], task: &str) -> (u128, u128) {
    let of = |start: bool| {
        let found: Vec<u128> = marks
            .iter()
            .filter(|m| m.task == task && m.start == start)
            .map(|m| m.ns)
            .collect();
        assert_eq!(found.len(), 1, "{task} ran exactly once: {marks:?}");
        found[0]
    };
    (of(true), of(false))
}

/// The most runs between their start and end at one moment, from `(ns, is_start)` points. A
/// start and an end at the same nanosecond count as overlapping, so the measure errs on the
/// high side.
pub fn max_concurrent(points: impl IntoIterator<Item = (u128, bool)>) -> usize {
    let mut points: Vec<(u128, bool)> = points.into_iter().collect();
    // Starts (true) sort after ends (false) at equal times; reversing the flag puts them first.
    points.sort_by_key(|&(ns, start)| (ns, !start));
    let (mut now, mut max) = (0usize, 0usize);
    for (_, start) in points {
        if start {
            now += 1;
            max = max.max(now);
        } else {
            now -= 1;
        }
    }
    max
}

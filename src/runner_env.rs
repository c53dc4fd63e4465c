//! What a runner is given besides its argv: the `TASK_CONTEXT` document and the environment
//! (the dispatcher's own or an allowlist of it, `env_file` secrets, pool `config` and `env`,
//! and the contract variables).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::config::PoolConfig;
use crate::registry::Task;

/// Variables always passed on when a pool does not inherit the environment: without them
/// hardly any program starts.
pub const ALWAYS_PASSED: &[&str] = &["PATH", "HOME"];

/// The facts about one attempt that end up in `TASK_CONTEXT` and the environment.
pub struct RunnerFacts<'a> {
    pub runner_id: &'a str,
    pub pool_name: &'a str,
    pub pool: &'a PoolConfig,
    pub spec: &'a str,
    pub task: &'a Task,
    pub attempt: u32,
    pub workdir: &'a Path,
    /// The working directory as the runner sees it (a container's mount point), or `None`
    /// when the runner cannot see it and clones the repository itself.
    pub shown_workdir: Option<&'a Path>,
    pub repo_url: Option<&'a str>,
    /// The first of the slot's ports, when its repository has a port range.
    pub port_base: Option<u16>,
    /// The attempt before this one (see [`crate::attempts::previous_attempt`]).
    pub previous_attempt: Option<Value>,
}

#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error("cannot read env_file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Names the file and line, never the value: it is a secret.
    #[error("{path}:{line}: {message}")]
    Line {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

/// The JSON given to the runner in `TASK_CONTEXT` and `TASK_CONTEXT_FILE`, with NecroCode's
/// field names (plus `runner_id`, `attempt`, `pool`, `previous_attempt`, and `port_base` when
/// the slot has ports).
pub fn task_context(facts: &RunnerFacts<'_>) -> Value {
    let task = facts.task;
    let mut context = json!({
        "task_id": task.id,
        "spec_name": facts.spec,
        "task_title": task.title,
        "task_description": task.description,
        "dependencies": task.dependencies,
        "required_skill": task.required_skill,
        "slot_id": task.assigned_slot,
        "slot_path": facts.shown_workdir.map(Path::to_string_lossy),
        "repo_url": facts.repo_url,
        "branch_name": task.reserved_branch,
        "metadata": task.metadata,
        "runner_id": facts.runner_id,
        "attempt": facts.attempt,
        "pool": facts.pool_name,
        "previous_attempt": facts.previous_attempt,
    });
    if let Some(port_base) = facts.port_base {
        context["port_base"] = json!(port_base);
    }
    context
}

/// Linux refuses to start a program with an environment string (`NAME=value` and its NUL)
/// longer than this (MAX_ARG_STRLEN, 32 pages): the exec fails with E2BIG.
pub const MAX_ENV_STRING: usize = 128 * 1024;

/// The value of `TASK_CONTEXT`: the whole document when it fits in one environment string;
/// otherwise (a huge title, description or metadata) a small document with the task's
/// identity, `"truncated": true` and `context_file`, the file that holds the whole one.
pub fn context_env_value(facts: &RunnerFacts<'_>, full: &str, context_file: &Path) -> String {
    if "TASK_CONTEXT=".len() + full.len() < MAX_ENV_STRING {
        return full.to_string();
    }
    json!({
        "task_id": facts.task.id,
        "spec_name": facts.spec,
        "runner_id": facts.runner_id,
        "attempt": facts.attempt,
        "pool": facts.pool_name,
        "truncated": true,
        "context_file": context_file.to_string_lossy(),
    })
    .to_string()
}

/// Environment variable name for a pool `config` key: `RUNNER_<KEY>` in upper case.
pub fn config_env_name(key: &str) -> String {
    format!("RUNNER_{}", key.to_ascii_uppercase())
}

/// The runner's complete environment: the dispatcher's own (all of it, or only `PATH`,
/// `HOME` and `pass_env` when `inherit_env = false`), the pool's `env_file` secrets, its
/// `config` as `RUNNER_<KEY>`, its `env`, then the contract variables, later ones winning.
/// A runner on another machine (`host_env = false`: a container) gets of the dispatcher's
/// own environment only the `pass_env` names: this machine's PATH or HOME mean nothing there.
pub fn runner_environment(
    facts: &RunnerFacts<'_>,
    contract: &[(&str, OsString)],
    host_env: bool,
) -> Result<BTreeMap<OsString, OsString>, EnvError> {
    let pool = facts.pool;
    let mut env: BTreeMap<OsString, OsString> = std::env::vars_os()
        .filter(|(key, _)| {
            let key = key.to_string_lossy();
            let passed = pool.pass_env.iter().any(|p| *p == key);
            if !host_env {
                return passed;
            }
            pool.inherit_env || passed || ALWAYS_PASSED.contains(&key.as_ref())
        })
        .collect();
    if let Some(path) = &pool.env_file {
        for (key, value) in read_env_file(path)? {
            env.insert(key.into(), value.into());
        }
    }
    for (key, value) in &pool.config {
        env.insert(config_env_name(key).into(), value.into());
    }
    for (key, value) in &pool.env {
        env.insert(key.into(), value.into());
    }
    for (key, value) in contract {
        env.insert((*key).into(), value.clone());
    }
    Ok(env)
}

/// Reads `KEY=value` lines: blank lines and `#` comments are skipped; an `export ` prefix and
/// matching quotes around the value are removed.
pub fn read_env_file(path: &Path) -> Result<Vec<(String, String)>, EnvError> {
    let text = fs::read_to_string(path).map_err(|source| EnvError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut vars = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let problem = |message: String| EnvError::Line {
            path: path.to_path_buf(),
            line: index + 1,
            message,
        };
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            return Err(problem("expected KEY=value".into()));
        };
        let key = key.trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(problem(format!("invalid variable name {key:?}")));
        }
        let value = value.trim();
        let unquoted = ['"', '\'']
            .iter()
            .find_map(|q| value.strip_prefix(*q).and_then(|v| v.strip_suffix(*q)))
            .unwrap_or(value);
        vars.push((key.to_string(), unquoted.to_string()));
    }
    Ok(vars)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_keys_become_runner_variables() {
        assert_eq!(config_env_name("model_name"), "RUNNER_MODEL_NAME");
    }

    #[test]
    fn env_file_lines_are_parsed_and_errors_hide_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.env");
        fs::write(
            &path,
            "# comment\n\nexport API_KEY=\"s3cret\"\nTOKEN='abc def'\nPLAIN=x=y\n",
        )
        .unwrap();
        let vars = read_env_file(&path).unwrap();
        assert_eq!(
            vars,
            [
                ("API_KEY".to_string(), "s3cret".to_string()),
                ("TOKEN".into(), "abc def".into()),
                ("PLAIN".into(), "x=y".into())
            ]
        );
        fs::write(&path, "OK=1\nnot a line with hunter2\n").unwrap();
        let err = read_env_file(&path).unwrap_err().to_string();
        assert!(err.contains("secrets.env:2"), "{err}");
        assert!(!err.contains("hunter2"), "the value must not leak: {err}");
    }
}

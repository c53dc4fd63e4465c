//! The one place that runs an engine's command-line tool (`sbatch`, `squeue`, `docker`,
//! `kubectl` …): argv only (never a shell), an optional document on stdin, output captured,
//! the whole process group killed after a timeout, and errors that name the command.

use std::ffi::OsString;
use std::io::{self, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use crate::subprocess::{drain, wait_with_timeout};

/// A tool invocation that did not give an answer.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("cannot run `{command}`: {source}")]
    Spawn { command: String, source: io::Error },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
        /// What it printed before failing (`docker inspect` lists the jobs it knows even
        /// when another is gone).
        stdout: String,
    },
    #[error("`{command}` did not answer within {after:?} and was killed")]
    TimedOut { command: String, after: Duration },
}

impl ToolError {
    /// What the tool printed on stderr, when it ran and failed.
    pub fn stderr(&self) -> &str {
        match self {
            ToolError::Failed { stderr, .. } => stderr,
            _ => "",
        }
    }
}

/// One command being built.
pub struct Tool {
    program: String,
    args: Vec<String>,
    env: Vec<(OsString, OsString)>,
    stdin: Option<Vec<u8>>,
    timeout: Duration,
}

impl Tool {
    pub fn new(program: &str, timeout: Duration) -> Tool {
        Tool {
            program: program.to_owned(),
            args: Vec::new(),
            env: Vec::new(),
            stdin: None,
            timeout,
        }
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Tool {
        self.args.push(arg.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Tool
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Variables added to the tool's environment: how secrets reach a job without ever
    /// being on a command line (`--export=NAME`, `-e NAME` take the value from here).
    pub fn envs(mut self, env: impl IntoIterator<Item = (OsString, OsString)>) -> Tool {
        self.env.extend(env);
        self
    }

    /// A document fed to the tool's standard input (a manifest for `kubectl create -f -`).
    pub fn stdin(mut self, bytes: Vec<u8>) -> Tool {
        self.stdin = Some(bytes);
        self
    }

    /// The command as a person would type it, for messages. It never holds a secret:
    /// values of the runner's environment travel in the tool's environment, not its argv.
    pub fn describe(&self) -> String {
        let mut text = self.program.clone();
        for arg in &self.args {
            text.push(' ');
            text.push_str(arg);
        }
        text
    }

    /// Runs the command; its stdout on success.
    pub fn output(self) -> Result<String, ToolError> {
        let command = self.describe();
        let spawn_error = |source| ToolError::Spawn {
            command: command.clone(),
            source,
        };
        let mut cmd = Command::new(&self.program);
        // Untranslated messages for the parsing here, unless the runner's environment (which
        // the tool exports to the job) sets its own locale.
        cmd.args(&self.args)
            .env("LC_ALL", "C")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own group, so a timeout also kills what the tool started (auth plugins).
            .process_group(0);
        let mut child = cmd.spawn().map_err(spawn_error)?;
        let feeder = match (child.stdin.take(), self.stdin) {
            (Some(mut pipe), Some(bytes)) => Some(thread::spawn(move || {
                // A tool that stops reading early reports its own error.
                let _ = pipe.write_all(&bytes);
            })),
            _ => None,
        };
        let stdout = drain(child.stdout.take());
        let stderr = drain(child.stderr.take());
        let status = wait_with_timeout(&mut child, self.timeout).map_err(spawn_error)?;
        if let Some(feeder) = feeder {
            let _ = feeder.join();
        }
        let stdout = String::from_utf8_lossy(&stdout.join().unwrap_or_default()).into_owned();
        let stderr = String::from_utf8_lossy(&stderr.join().unwrap_or_default())
            .trim()
            .to_owned();
        match status {
            None => Err(ToolError::TimedOut {
                command,
                after: self.timeout,
            }),
            Some(status) if status.success() => Ok(stdout),
            Some(status) => Err(ToolError::Failed {
                command,
                stdout,
                status: status.to_string(),
                stderr: if stderr.is_empty() {
                    "no error output".into()
                } else {
                    stderr
                },
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_feeds_stdin_and_returns_stdout() {
        let out = Tool::new("cat", Duration::from_secs(10))
            .stdin(b"manifest".to_vec())
            .output()
            .unwrap();
        assert_eq!(out, "manifest");
    }

    #[test]
    fn failure_names_the_command_and_its_stderr() {
        let err = Tool::new("sh", Duration::from_secs(10))
            .args(["-c", "echo nope >&2; exit 3", "probe"])
            .output()
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("`sh -c echo nope"), "{text}");
        assert!(text.contains("exit status: 3"), "{text}");
        assert_eq!(err.stderr(), "nope");
    }

    #[test]
    fn a_hung_tool_is_killed_at_its_timeout() {
        let err = Tool::new("sleep", Duration::from_millis(100))
            .arg("30")
            .output()
            .unwrap_err();
        assert!(matches!(err, ToolError::TimedOut { .. }), "{err}");
    }

    #[test]
    fn environment_reaches_the_tool_but_not_its_description() {
        let tool = Tool::new("sh", Duration::from_secs(10))
            .args(["-c", "printf %s \"$SECRET\""])
            .envs([("SECRET".into(), "hunter2".into())]);
        assert!(!tool.describe().contains("hunter2"));
        assert_eq!(tool.output().unwrap(), "hunter2");
    }
}

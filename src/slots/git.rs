//! The one place that runs `git`: argv only (never a shell), stdin null, output captured, a
//! kill after a timeout, and errors that name the command, the directory and git's stderr.

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use crate::subprocess::{drain, wait_with_timeout};

/// How long an ordinary git command may take before it is killed.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// Variables that would point git at another repository, index or object store than the one
/// in the directory it is run in; the dispatcher may itself run from a git hook that sets them.
const REPOSITORY_ENV: &[&str] = &[
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_COMMON_DIR",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_NAMESPACE",
    "GIT_PREFIX",
];

/// A git command that failed.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("cannot run `{command}` in {}: {source}", dir.display())]
    Spawn {
        command: String,
        dir: PathBuf,
        source: io::Error,
    },
    #[error("`{command}` in {} failed ({status}): {}", dir.display(), stderr_text(stderr))]
    Failed {
        command: String,
        dir: PathBuf,
        status: ExitStatus,
        stderr: String,
    },
    #[error("`{command}` in {} was killed after {after:?}", dir.display())]
    TimedOut {
        command: String,
        dir: PathBuf,
        after: Duration,
    },
}

fn stderr_text(stderr: &str) -> &str {
    match stderr.trim() {
        "" => "no error output",
        text => text,
    }
}

/// A git invocation being built: `git -C <dir> <args…>`.
pub struct Git {
    dir: PathBuf,
    args: Vec<String>,
    env: Vec<(String, OsString)>,
    timeout: Duration,
}

impl Git {
    /// `git -C dir`. Repository discovery stops at `dir`: a slot whose `.git` is gone must
    /// fail, not find an enclosing repository (the project's own, say) and clean that.
    pub fn new(dir: &Path) -> Git {
        Git {
            dir: dir.to_path_buf(),
            args: Vec::new(),
            env: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    pub fn arg(mut self, arg: impl AsRef<str>) -> Git {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Git
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.args
            .extend(args.into_iter().map(|arg| arg.as_ref().to_owned()));
        self
    }

    /// A path argument; git takes paths as bytes, but every path here comes from our own
    /// UTF-8 settings, so the lossy conversion never changes one.
    pub fn path_arg(self, path: &Path) -> Git {
        let text = path.to_string_lossy().into_owned();
        self.arg(text)
    }

    pub fn env_path(mut self, key: &str, value: &Path) -> Git {
        self.env
            .push((key.to_owned(), value.as_os_str().to_owned()));
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Git {
        self.env.push((key.to_owned(), value.into()));
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Git {
        self.timeout = timeout;
        self
    }

    /// The command as a person would type it, for messages.
    fn describe(&self) -> String {
        let mut text = String::from("git");
        for arg in &self.args {
            text.push(' ');
            text.push_str(arg);
        }
        text
    }

    /// Runs the command; stdout on success.
    pub fn output(self) -> Result<Vec<u8>, GitError> {
        let command = self.describe();
        let spawn_error = |source| GitError::Spawn {
            command: command.clone(),
            dir: self.dir.clone(),
            source,
        };
        let mut cmd = Command::new("git");
        cmd.arg("-C")
            .arg(&self.dir)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so that a timeout also kills the ssh or https helper that
            // git started, which would otherwise hold the pipes open.
            .process_group(0)
            // Nobody is there to type a password: fail instead of waiting for one.
            .env("GIT_TERMINAL_PROMPT", "0")
            // Untranslated messages, so that logs and errors read the same everywhere.
            .env("LC_ALL", "C");
        for key in REPOSITORY_ENV {
            cmd.env_remove(key);
        }
        if let Some(parent) = self.dir.parent() {
            cmd.env("GIT_CEILING_DIRECTORIES", ceiling(parent));
        }
        for (key, value) in &self.env {
            cmd.env(key, value);
        }
        let mut child = cmd.spawn().map_err(spawn_error)?;
        let stdout = drain(child.stdout.take());
        let stderr = drain(child.stderr.take());
        let status = wait_with_timeout(&mut child, self.timeout).map_err(spawn_error)?;
        let stdout = stdout.join().unwrap_or_default();
        let stderr = String::from_utf8_lossy(&stderr.join().unwrap_or_default()).into_owned();
        match status {
            None => Err(GitError::TimedOut {
                command,
                dir: self.dir,
                after: self.timeout,
            }),
            Some(status) if status.success() => Ok(stdout),
            Some(status) => Err(GitError::Failed {
                command,
                dir: self.dir,
                status,
                stderr,
            }),
        }
    }

    /// Runs the command; stdout as trimmed text.
    pub fn text(self) -> Result<String, GitError> {
        let bytes = self.output()?;
        Ok(String::from_utf8_lossy(&bytes).trim().to_owned())
    }

    /// Runs the command for its effect.
    pub fn run(self) -> Result<(), GitError> {
        self.output().map(drop)
    }

    /// Runs a query whose failure means "no": `rev-parse --verify --quiet` and the like. Other
    /// failures (no git, a timeout) are still errors.
    pub fn succeeds(self) -> Result<bool, GitError> {
        match self.output() {
            Ok(_) => Ok(true),
            Err(GitError::Failed { .. }) => Ok(false),
            Err(err) => Err(err),
        }
    }
}

/// git compares ceiling directories with the real path of the directory it searches from, so
/// a ceiling spelled through a symlink (`/tmp` on some systems) would not stop it.
fn ceiling(dir: &Path) -> PathBuf {
    dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf())
}

impl fmt::Debug for Git {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (in {})", self.describe(), self.dir.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_names_command_dir_and_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let err = Git::new(dir.path())
            .args(["rev-parse", "HEAD"])
            .run()
            .unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("`git rev-parse HEAD` in "), "{text}");
        assert!(text.contains(&dir.path().display().to_string()), "{text}");
        assert!(text.contains("not a git repository"), "{text}");
    }

    #[test]
    fn discovery_stops_at_the_directory() {
        // A plain directory inside a repository is not treated as part of it.
        let outer = tempfile::tempdir().unwrap();
        Git::new(outer.path()).args(["init", "-q"]).run().unwrap();
        let inner = outer.path().join("slot1");
        std::fs::create_dir(&inner).unwrap();
        let found = Git::new(&inner)
            .args(["rev-parse", "--git-dir"])
            .succeeds()
            .unwrap();
        assert!(!found);
    }

    #[test]
    fn timeout_kills_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        // `git -c alias…` runs a shell alias: the simplest way to make git itself hang.
        let err = Git::new(dir.path())
            .args(["-c", "alias.hang=!sleep 30", "hang"])
            .timeout(Duration::from_millis(200))
            .run()
            .unwrap_err();
        assert!(matches!(err, GitError::TimedOut { .. }), "{err}");
        assert!(err.to_string().contains("was killed after"), "{err}");
    }
}

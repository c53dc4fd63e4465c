//! The stand-in `docker` and `kubectl` of `tests/engines/` (test doubles: no engine runs
//! where these tests run), put first on the dispatcher's PATH: each records its argv in a
//! log and plays its engine from a state directory; programs of their containers and Jobs
//! run as real local processes.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::Env;

pub struct Standin {
    pub state: PathBuf,
    pub log: PathBuf,
}

impl Standin {
    /// Puts the stand-ins first on `env`'s PATH with their log and state under its temp dir.
    pub fn install(env: &Env) -> Standin {
        let root = env.path().join("standin");
        let state = root.join("state");
        fs::create_dir_all(&state).unwrap();
        let log = root.join("argv.jsonl");
        env.prepend_path(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/engines"));
        env.set_var("STANDIN_LOG", &log);
        env.set_var("STANDIN_STATE", &state);
        Standin { state, log }
    }

    /// Every recorded invocation, in order: `["docker", "run", "-d", …]`.
    pub fn calls(&self) -> Vec<Vec<String>> {
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("argv line is a JSON array"))
            .collect()
    }

    /// The invocations whose arguments after the global flags (`--context=`,
    /// `--namespace=`) start with `words`.
    pub fn calls_of(&self, words: &[&str]) -> Vec<Vec<String>> {
        self.calls()
            .into_iter()
            .filter(|argv| {
                let rest: Vec<&str> = argv[1..]
                    .iter()
                    .map(String::as_str)
                    .skip_while(|a| a.starts_with("--context=") || a.starts_with("--namespace="))
                    .collect();
                rest.starts_with(words)
            })
            .collect()
    }

    /// Switches on a behaviour of the stand-in (`down`, `unreachable`, `forbidden`,
    /// `no-deadlines`): a file in its state dir.
    pub fn set(&self, flag: &str) {
        fs::write(self.state.join(flag), "").unwrap();
    }

    /// The directories of every container or Job the stand-in was given (live or removed),
    /// under `kind` (`docker`, `kubernetes/<namespace>`).
    pub fn dirs(&self, kind: &str) -> Vec<PathBuf> {
        let removed = match kind.split_once('/') {
            Some((engine, _)) => format!("{engine}-removed"),
            None => format!("{kind}-removed"),
        };
        [self.state.join(kind), self.state.join(removed)]
            .iter()
            .flat_map(|d| fs::read_dir(d).into_iter().flatten().flatten())
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect()
    }

    /// A JSON file of a container's or Job's directory.
    pub fn read(dir: &Path, file: &str) -> Value {
        let text = fs::read_to_string(dir.join(file)).unwrap_or_else(|e| {
            panic!("{}: {e}", dir.join(file).display());
        });
        serde_json::from_str(&text).unwrap()
    }
}

impl Drop for Standin {
    /// Kills the programs of containers and Jobs still running, so that no test leaves
    /// processes behind (the engine would keep them; here they are ours).
    fn drop(&mut self) {
        for pid_file in super::paths_under(&self.state)
            .into_iter()
            .filter(|p| p.file_name().is_some_and(|n| n == "pid"))
        {
            if pid_file.with_file_name("exit").exists() {
                continue;
            }
            let pid: i32 = fs::read_to_string(&pid_file)
                .ok()
                .and_then(|t| t.trim().parse().ok())
                .unwrap_or(0);
            if pid > 0 {
                // SAFETY: kill(2) of a process group the stand-in started for this test.
                unsafe {
                    libc::kill(-pid, libc::SIGKILL);
                }
            }
        }
    }
}

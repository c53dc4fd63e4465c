//! The quickest end-to-end check: one taskset with a dependency, run until idle.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::json;
use support::*;

#[test]
fn dependent_tasks_run_to_done_and_exit_zero() {
    let env = Env::new();
    let ledger = env.path().join("ledger");
    env.config(
        "",
        &format!(
            "[agent_pools.local]\nmax_concurrency = 2\ncommand = [\"{}\", \"{{task_id}}\", \"local\"]\nenv = {{ LEDGER = \"{}\", SLEEP = \"0\" }}\n\n[skill_mapping]\ndefault = [\"local\"]\n",
            runner("record.sh"),
            ledger.display()
        ),
    );
    env.taskset(
        "s",
        &[
            json!({"id": "a"}),
            json!({"id": "b", "state": "blocked", "dependencies": ["a"]}),
        ],
    );
    let (status, log) = env.run_until_idle();
    assert_eq!(status.code(), Some(0), "log:\n{log}");
    assert_eq!(env.state_of("s", "a"), "done");
    assert_eq!(env.state_of("s", "b"), "done");
    let ledger = std::fs::read_to_string(ledger).unwrap();
    let starts: Vec<&str> = ledger.lines().filter(|l| l.starts_with("start")).collect();
    assert_eq!(starts.len(), 2);
    assert!(
        starts[0].starts_with("start a"),
        "a runs before b: {ledger}"
    );
}

/// `dispatcher` (a hard link, or a copy) in a directory of its own.
fn binary_in(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let program = dir.join("dispatcher");
    if std::fs::hard_link(BIN, &program).is_err() {
        std::fs::copy(BIN, &program).unwrap();
    }
    program
}

/// Runners are supervised by the small `dispatcher-supervisor` program when it sits beside
/// the binary and answers with the same version; otherwise by the binary itself in its
/// hidden mode. Either way the runner's parent is its supervisor, which it names here.
#[test]
fn runners_are_supervised_by_the_program_beside_the_binary_or_by_the_binary_itself() {
    let env = Env::new();
    let parent = env.path().join("parent");
    let pool = r#"
[agent_pools.local]
command = ["sh", "-c", "readlink /proc/$PPID/exe > \"$OUT\""]

[skill_mapping]
default = ["local"]
"#;
    env.config(
        "",
        &format!(
            "{pool}[agent_pools.local.env]\nOUT = {}\n",
            toml_str(&parent.display().to_string())
        ),
    );
    let beside = Path::new(BIN).with_file_name("dispatcher-supervisor");
    let alone = binary_in(&env.path().join("alone"));
    let skewed = binary_in(&env.path().join("skewed"));
    let impostor = skewed.with_file_name("dispatcher-supervisor");
    std::fs::write(
        &impostor,
        "#!/bin/sh\necho dispatcher-supervisor 0.0.0-other\n",
    )
    .unwrap();
    std::fs::set_permissions(&impostor, std::fs::Permissions::from_mode(0o755)).unwrap();

    for (n, (program, supervisor)) in [
        (Path::new(BIN), beside.as_path()),
        (alone.as_path(), alone.as_path()),
        (skewed.as_path(), skewed.as_path()),
    ]
    .into_iter()
    .enumerate()
    {
        env.taskset(&format!("s{n}"), &[json!({"id": "a"})]);
        let out = env
            .command_of(program, &["run", "--until-idle"])
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{}: {log}", program.display());
        let seen = std::fs::read_to_string(&parent).unwrap();
        assert_eq!(
            Path::new(seen.trim()),
            std::fs::canonicalize(supervisor).unwrap(),
            "started by {}",
            program.display()
        );
        if program == skewed {
            assert!(log.contains("is not this build's supervisor"), "{log}");
        }
    }
}

#[test]
fn slots_sync_creates_the_pool_and_slots_lists_it() {
    let env = Env::new();
    make_origin(&env, "demo", &[]);
    env.config(
        "",
        "[repo_pool]\ndir = \"ws\"\n\n[[repo_pool.repos]]\nname = \"demo\"\nurl = \"demo-origin\"\nslots = 2\n",
    );

    let out = env.output(&["slots", "sync"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("workspace-demo-slot2: added"), "{stdout}");

    let out = env.output(&["slots", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pools: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(pools[0]["repo_name"], "demo");
    assert_eq!(pools[0]["slots"].as_array().unwrap().len(), 2);
    assert_eq!(pools[0]["slots"][0]["state"], "available");

    let out = env.output(&["slots"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("workspace-demo-slot1  available"),
        "{stdout}"
    );
}

/// On a terminal `run` redraws a live line; `script(1)` (util-linux) gives it a real pty.
/// Redirected, the same run writes the log alone.
#[test]
fn run_on_a_terminal_shows_the_live_line_and_redirected_output_does_not() {
    let setup = || {
        let env = Env::new();
        let ledger = env.path().join("ledger");
        env.config(
            "",
            &format!(
                "[agent_pools.local]\nmax_concurrency = 1\ncommand = [\"{}\", \"{{task_id}}\", \"local\"]\nenv = {{ LEDGER = \"{}\", SLEEP = \"1.2\" }}\n\n[skill_mapping]\ndefault = [\"local\"]\n",
                runner("record.sh"),
                ledger.display()
            ),
        );
        env.taskset("s", &[json!({"id": "a"}), json!({"id": "b"})]);
        env
    };

    let redirected = setup();
    let (status, log) = redirected.run_until_idle();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(!log.contains("queued") && !log.contains('\u{1b}'), "{log}");

    let Ok(script) = which("script") else {
        eprintln!("script(1) is not installed: skipping the terminal half");
        return;
    };
    let terminal = setup();
    let out = std::process::Command::new(script)
        .args(["-qefc", &format!("{BIN} run --until-idle"), "/dev/null"])
        .current_dir(terminal.path())
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_LOG", "warn")
        .output()
        .expect("run under script");
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{screen}");
    assert!(
        screen.contains("running 1 · queued 1") && screen.contains("│ local 1/1"),
        "the live line with the queue and the pool's load:\n{screen}"
    );
}

fn which(program: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
        .ok_or(())
}

//! The quickest end-to-end check: one taskset with a dependency, run until idle.

mod support;

use std::collections::HashSet;
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

/// The pool command of the spawn server tests: each runner appends `TASK SUPERVISOR SERVER
/// SERVER'S_PARENT SERVER'S_COMMAND_LINE` to `$OUT`, read from /proc. Task `a` then kills its
/// supervisor's parent, when `$KILL_SERVER_OF` names it, and waits until that is dead.
const FAMILY_SCRIPT: &str = r#"
sup=$PPID
server=$(awk '{print $4}' /proc/$sup/stat)
owner=$(awk '{print $4}' /proc/$server/stat)
echo "$1 $sup $server $owner $(tr '\0' ' ' < /proc/$server/cmdline)" >> "$OUT"
if [ "$1" = "$KILL_SERVER_OF" ]; then
    kill -9 "$server"
    while [ -e /proc/$server ] && ! awk '{exit $3 != "Z"}' /proc/$server/stat; do sleep 0.01; done
fi
"#;

/// One line of [`FAMILY_SCRIPT`]'s output.
struct Family {
    task: String,
    supervisor: u32,
    server: u32,
    server_parent: u32,
    server_command: String,
}

fn run_families(
    env: &Env,
    tasks: &[serde_json::Value],
    kill_server_of: &str,
) -> (Vec<Family>, u32, String) {
    let out = env.path().join("families");
    let command = ["sh", "-c", FAMILY_SCRIPT, "sh", "{task_id}"].map(String::from);
    env.config(
        "",
        &only_pool(
            "local",
            1,
            &command,
            &[
                ("OUT", out.display().to_string()),
                ("KILL_SERVER_OF", kill_server_of.to_string()),
            ],
            "",
        ),
    );
    env.taskset("s", tasks);
    let mut run = env.spawn_run(&["--until-idle"]);
    let dispatcher = u32::try_from(run.pid()).unwrap();
    let status = run.wait(DEADLINE);
    let log = run.stderr();
    assert_exit(status, 0, &log);
    let families = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|line| {
            let mut fields = line.splitn(5, ' ');
            let mut next = || fields.next().unwrap().to_string();
            let task = next();
            let mut pid = || next().parse::<u32>().unwrap();
            let (supervisor, server, server_parent) = (pid(), pid(), pid());
            Family {
                task,
                supervisor,
                server,
                server_parent,
                server_command: fields.next().unwrap_or_default().to_string(),
            }
        })
        .collect();
    (families, dispatcher, log)
}

/// Supervisors are forked by one spawn server, the dispatcher's child, which ends when the
/// dispatcher does (supervisors do not: another test kills the dispatcher under a runner).
#[test]
fn supervisors_are_forked_by_one_spawn_server_that_ends_with_the_dispatcher() {
    let env = Env::new();
    let tasks = ["a", "b", "c"].map(|id| json!({ "id": id }));
    let (families, dispatcher, log) = run_families(&env, &tasks, "");
    assert_eq!(families.len(), 3, "{log}");
    let server = families[0].server;
    for family in &families {
        assert_eq!(family.server, server, "task {}: {log}", family.task);
        assert_ne!(family.supervisor, server);
        assert_eq!(family.server_parent, dispatcher);
        assert!(
            family.server_command.contains("__spawn-server"),
            "{}",
            family.server_command
        );
    }
    assert_eq!(
        families
            .iter()
            .map(|f| f.supervisor)
            .collect::<HashSet<_>>()
            .len(),
        3,
        "one supervisor per runner"
    );
    wait_for("the spawn server to end with the dispatcher", || {
        !pid_alive(server)
    });
}

/// A spawn server that dies between two launches is replaced: the next runner is forked by
/// a new one, and nothing fails.
#[test]
fn a_lost_spawn_server_is_replaced_by_a_new_one() {
    let env = Env::new();
    let tasks = [
        json!({"id": "a"}),
        json!({"id": "b", "state": "blocked", "dependencies": ["a"]}),
        json!({"id": "c", "state": "blocked", "dependencies": ["b"]}),
    ];
    let (families, dispatcher, log) = run_families(&env, &tasks, "a");
    let servers: Vec<(&str, u32)> = families
        .iter()
        .map(|f| (f.task.as_str(), f.server))
        .collect();
    assert_eq!(servers.len(), 3, "{log}");
    assert_eq!(servers[0].0, "a");
    assert_ne!(
        servers[1].1, servers[0].1,
        "b was forked by the killed server: {log}"
    );
    assert_eq!(servers[2].1, servers[1].1);
    assert!(families.iter().all(|f| f.server_parent == dispatcher));
    assert!(log.contains("the spawn server is gone"), "{log}");
    for id in ["a", "b", "c"] {
        assert_eq!(env.state_of("s", id), "done");
    }
}

/// A spawn server that takes a request and dies without answering: the launch finds the
/// runner's lock free and no `exit.json` (nothing was forked), so the supervisor is exec'd
/// directly, and the task runs once. The stand-in is a script beside a copy of the binary
/// that answers `--version` as the real supervisor program does, and passes exec'd
/// supervisors on to it.
#[test]
fn a_spawn_server_lost_with_a_request_leaves_the_runner_to_an_execd_supervisor() {
    let env = Env::new();
    let real = Path::new(BIN).with_file_name("dispatcher-supervisor");
    let version = std::process::Command::new(&real)
        .arg("--version")
        .output()
        .unwrap();
    let version = String::from_utf8(version.stdout).unwrap();
    let program = binary_in(&env.path().join("broken"));
    let stand_in = program.with_file_name("dispatcher-supervisor");
    std::fs::write(
        &stand_in,
        format!(
            "#!/bin/sh\ncase \"$1\" in\n--version) echo '{version}';;\n\
             __spawn-server) head -c 1 >/dev/null;;\n*) exec {real} \"$@\";;\nesac\n",
            version = version.trim(),
            real = real.display(),
        ),
    )
    .unwrap();
    std::fs::set_permissions(&stand_in, std::fs::Permissions::from_mode(0o755)).unwrap();
    let parent = env.path().join("parent");
    let ledger = env.path().join("ledger");
    let command = [
        "sh",
        "-c",
        "readlink /proc/$PPID/exe > \"$OUT\"; echo ran >> \"$LEDGER\"",
    ]
    .map(String::from);
    env.config(
        "",
        &only_pool(
            "local",
            1,
            &command,
            &[
                ("OUT", parent.display().to_string()),
                ("LEDGER", ledger.display().to_string()),
            ],
            "",
        ),
    );
    env.taskset("s", &[json!({"id": "a"})]);
    let out = env
        .command_of(&program, &["run", "--until-idle"])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(log.contains("the spawn server did not answer"), "{log}");
    assert!(log.contains("its supervisor is started directly"), "{log}");
    assert_eq!(env.state_of("s", "a"), "done");
    assert_eq!(std::fs::read_to_string(&ledger).unwrap(), "ran\n");
    let seen = std::fs::read_to_string(&parent).unwrap();
    assert_eq!(
        Path::new(seen.trim()),
        std::fs::canonicalize(&real).unwrap(),
        "the runner's parent is the exec'd supervisor"
    );
}

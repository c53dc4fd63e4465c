//! Webhook notifications against real HTTP servers on loopback: one that answers 200, one
//! that answers 500, one that never answers.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use support::*;

#[derive(Clone, Copy)]
enum Mode {
    Ok,
    Error500,
    Hang,
}

/// A loopback HTTP server that records the JSON bodies it receives.
struct Receiver {
    url: String,
    bodies: Arc<Mutex<Vec<Value>>>,
}

impl Receiver {
    fn start(mode: Mode) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let bodies: Arc<Mutex<Vec<Value>>> = Arc::default();
        let seen = bodies.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    let lower = line.to_ascii_lowercase();
                    if let Some(value) = lower.strip_prefix("content-length:") {
                        length = value.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                if let Ok(value) = serde_json::from_slice(&body) {
                    seen.lock().unwrap().push(value);
                }
                let mut stream = stream;
                match mode {
                    Mode::Ok => {
                        let _ = stream.write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                        );
                    }
                    Mode::Error500 => {
                        let _ = stream.write_all(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                    }
                    // Keep the connection open and never answer.
                    Mode::Hang => held.push(stream),
                }
            }
        });
        Receiver { url, bodies }
    }

    fn bodies(&self) -> Vec<Value> {
        self.bodies.lock().unwrap().clone()
    }
}

fn config(env: &Env, url: &str, extra: &str) {
    env.config(
        "",
        &format!(
            "[retry]\nmax_attempts = 1\n\n[notifications]\nwebhook_url = {}\nevents = [\"task_failed\", \"task_done\", \"run_finished\"]\ntimeout = \"1s\"\n{extra}\n\n\
             [agent_pools.p]\nmax_concurrency = 2\ncommand = [\"{}\"]\nenv = {{ EXIT = \"3\" }}\n\n[skill_mapping]\ndefault = [\"p\"]\n",
            toml_str(url),
            runner("fail.sh")
        ),
    );
}

#[test]
fn a_failed_task_and_the_end_of_the_run_reach_the_webhook_with_text_and_fields() {
    let receiver = Receiver::start(Mode::Ok);
    let env = Env::new();
    config(&env, &receiver.url, "");
    env.taskset("s", &[json!({"id": "bad"})]);
    let (status, log) = env.run_until_idle();
    assert_eq!(status.code(), Some(3), "{log}");
    // Delivery finishes before the run ends: the run waits (a bounded time) for its queue.
    let bodies = receiver.bodies();
    let failed = bodies
        .iter()
        .find(|b| b["event"] == "task_failed")
        .unwrap_or_else(|| panic!("no task_failed in {bodies:?}"));
    assert_eq!(failed["spec"], "s");
    assert_eq!(failed["task_id"], "bad");
    let text = failed["text"].as_str().unwrap();
    assert!(text.contains("s/bad failed after 1 attempts"), "{text}");
    assert!(text.contains("exited with code 3"), "{text}");
    let finished = bodies
        .iter()
        .find(|b| b["event"] == "run_finished")
        .expect("run_finished");
    assert!(finished["text"]
        .as_str()
        .unwrap()
        .contains("some tasks failed"));
    assert_eq!(finished["details"]["exit_code"], 3);
    assert!(
        bodies.iter().all(|b| b["event"] != "deadlock"),
        "not asked for"
    );
}

#[test]
fn a_receiver_answering_500_gets_the_notice_again() {
    let receiver = Receiver::start(Mode::Error500);
    let env = Env::new();
    config(&env, &receiver.url, "max_attempts = 3");
    env.taskset("s", &[json!({"id": "bad"})]);
    let mut run = env.spawn_run(&[]);
    wait_for("the failure notice to be posted again after a 500", || {
        receiver
            .bodies()
            .iter()
            .filter(|b| b["event"] == "task_failed")
            .count()
            >= 2
    });
    run.signal(libc::SIGTERM);
    assert_eq!(run.wait(DEADLINE).code(), Some(130));
}

#[test]
fn a_receiver_that_never_answers_does_not_delay_the_work() {
    let receiver = Receiver::start(Mode::Hang);
    let env = Env::new();
    // Twenty tasks whose ends each want a notice; each post waits out its 1 s timeout.
    config(&env, &receiver.url, "queue = 2\nmax_attempts = 5");
    let tasks: Vec<Value> = (0..20).map(|i| json!({"id": format!("t{i}")})).collect();
    env.taskset("s", &tasks);
    // If the core waited for the webhook, twenty notices at five 1 s attempts each would
    // take far longer than run_until_idle's deadline, and this would fail there.
    let (status, log) = env.run_until_idle();
    assert_eq!(status.code(), Some(3), "{log}");
    let states = env.read_taskset("s");
    assert!(states["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t["state"] == "failed"));
    // The queue of 2 overflowed: notices were dropped and said so, not waited for.
    assert!(log.contains("notification queue full"), "{log}");
}

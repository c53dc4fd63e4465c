//! The `[metrics] listen` endpoint and `--url`, against the real binary on loopback sockets:
//! the routes and their errors, `status --url` against the local form, an unreachable URL, a
//! taken port, `promtool check metrics`, and a real Prometheus server scraping the endpoint.
//!
//! The dispatcher needs a fixed port in its config, so each test asks the kernel for a free
//! one (bind port 0, read it, close it) and waits for `/healthz` before going on.

mod support;

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

/// A port nothing listens on right now.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    listener.local_addr().unwrap().port()
}

/// One raw request; returns the status code, the head and the body. Raw rather than through
/// a client library so that the test sees exactly what the server wrote.
fn request(port: u16, method: &str, path: &str) -> std::io::Result<(u16, String, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(DEADLINE))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    // The server closes the connection after one answer, so EOF ends it.
    stream.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    Ok((code, head.to_owned(), body.to_owned()))
}

fn get(port: u16, path: &str) -> (u16, String, String) {
    request(port, "GET", path).unwrap_or_else(|err| panic!("GET {path}: {err}"))
}

/// A workspace with one taskset and a dispatcher serving on a free loopback port, up.
fn serving() -> (Env, Run, u16) {
    let env = Env::new();
    let port = free_port();
    env.config("", &format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"))
        .taskset(
            "s",
            &[
                json!({"id": "1"}),
                json!({"id": "2", "dependencies": ["1"]}),
            ],
        );
    let run = env.spawn_run(&[]);
    wait_for("the endpoint to answer /healthz", || {
        request(port, "GET", "/healthz").is_ok_and(|(code, _, _)| code == 200)
    });
    (env, run, port)
}

/// The keys of a JSON object, recursively for nested objects (values may differ in time).
fn shape(value: &Value) -> Value {
    match value {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| (k.clone(), shape(v)))
            .collect::<serde_json::Map<_, _>>()
            .into(),
        _ => Value::Null,
    }
}

#[test]
fn endpoint_serves_healthz_metrics_and_status() {
    let (env, _run, port) = serving();

    let (code, head, body) = get(port, "/healthz");
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    assert!(head.contains("Connection: close"), "{head}");

    let (code, head, body) = get(port, "/metrics");
    assert_eq!(code, 200);
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    assert!(body.lines().any(|l| l == "dispatcher_up 1"), "{body}");

    let (code, head, body) = get(port, "/status");
    assert_eq!(code, 200);
    assert!(head.contains("Content-Type: application/json"), "{head}");
    let remote: Value = serde_json::from_str(&body).expect("/status is JSON");
    assert_eq!(remote["dispatcher"]["running"], true);
    // Same document as `status --json` (the live values may have moved in between).
    wait_for("status --json to see the running dispatcher", || {
        status_json(&env)["dispatcher"]["running"] == true
    });
    assert_eq!(shape(&remote), shape(&status_json(&env)));

    assert_eq!(get(port, "/nope").0, 404);
    let (code, head, _) = request(port, "POST", "/metrics").unwrap();
    assert_eq!(code, 405);
    assert!(head.contains("Allow: GET"), "{head}");
}

#[test]
fn status_url_prints_what_local_status_prints() {
    let (env, _run, port) = serving();
    let url = format!("http://127.0.0.1:{port}");
    wait_for("status --json to see the running dispatcher", || {
        status_json(&env)["dispatcher"]["running"] == true
    });

    let local = env.output(&["status"]);
    let remote = env.output(&["status", "--url", &url]);
    assert_eq!(remote.status.code(), Some(0), "{remote:?}");
    assert_eq!(
        String::from_utf8_lossy(&remote.stdout),
        String::from_utf8_lossy(&local.stdout)
    );

    let remote = env.output(&["status", "--json", "--url", &url]);
    assert_eq!(remote.status.code(), Some(0), "{remote:?}");
    let remote: Value = serde_json::from_slice(&remote.stdout).expect("--json prints JSON");
    assert_eq!(shape(&remote), shape(&status_json(&env)));
    assert_eq!(
        remote["dispatcher"]["pid"],
        status_json(&env)["dispatcher"]["pid"]
    );

    let metrics = env.output(&["metrics", "--url", &format!("{url}/")]);
    assert_eq!(metrics.status.code(), Some(0), "{metrics:?}");
    let text = String::from_utf8_lossy(&metrics.stdout);
    assert!(text.lines().any(|l| l == "dispatcher_up 1"), "{text}");
}

#[test]
fn unreachable_url_is_a_clear_error_with_exit_1() {
    let env = Env::new();
    let url = format!("http://127.0.0.1:{}", free_port());
    for args in [
        vec!["status", "--url", &url],
        vec!["status", "--json", "--url", &url],
        vec!["metrics", "--url", &url],
    ] {
        let out = env.output(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.starts_with(&format!("dispatcher: error: cannot reach {url}/")),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn a_taken_listen_port_fails_the_start_with_exit_1() {
    let env = Env::new();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    env.config("", &format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"))
        .taskset("s", &[json!({"id": "1"})]);
    let mut run = env.spawn_run(&[]);
    assert_eq!(run.wait(DEADLINE).code(), Some(1));
    let stderr = run.stderr();
    assert!(
        stderr.contains(&format!(
            "cannot listen on 127.0.0.1:{port} ([metrics] listen)"
        )),
        "{stderr}"
    );
    // Nothing was claimed: the dispatcher never started.
    assert_eq!(env.state_of("s", "1"), "ready");
}

/// Whether `tool` is on PATH; prints why a test is skipped when not.
fn installed(tool: &str) -> bool {
    let found = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        eprintln!("note: {tool} is not installed; skipping (.ci/run installs Debian's prometheus)");
    }
    found
}

#[test]
fn promtool_accepts_the_metrics() {
    if !installed("promtool") {
        return;
    }
    let (_env, _run, port) = serving();
    let (code, _, body) = get(port, "/metrics");
    assert_eq!(code, 200);
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start promtool");
    check
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{body}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A child killed and reaped on drop, so a failing assertion leaves no Prometheus behind.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn prometheus_scrapes_the_endpoint() {
    if !installed("prometheus") {
        return;
    }
    let (env, _run, port) = serving();
    let web = free_port();
    let config = env.path().join("prometheus.yml");
    fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: dispatcher\n    static_configs:\n      \
             - targets: ['127.0.0.1:{port}']\n"
        ),
    )
    .unwrap();
    let log = env.path().join("prometheus.log");
    let mut prometheus = Reaped(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                env.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{web}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("start prometheus"),
    );

    let query = format!("http://127.0.0.1:{web}/api/v1/query?query=dispatcher_up");
    let end = Instant::now() + DEADLINE;
    let mut last = String::new();
    loop {
        if let Ok(Some(status)) = prometheus.0.try_wait() {
            panic!(
                "prometheus exited ({status}):\n{}",
                fs::read_to_string(&log).unwrap_or_default()
            );
        }
        if let Ok(mut response) = ureq::get(&query).call() {
            last = response.body_mut().read_to_string().unwrap_or_default();
            let doc: Value = serde_json::from_str(&last).unwrap_or(Value::Null);
            let result = &doc["data"]["result"];
            if result[0]["value"][1] == "1" {
                assert_eq!(result[0]["metric"]["job"], "dispatcher", "{last}");
                break;
            }
        }
        assert!(
            Instant::now() < end,
            "prometheus never saw dispatcher_up 1; last answer: {last}\nlog:\n{}",
            fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

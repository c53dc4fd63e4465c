//! Webhook notifications: a thread that POSTs JSON (Slack-compatible `text` plus structured
//! fields) for the events a user asked for. The core hands notices over through a bounded
//! channel and never waits: when the queue is full the notice is dropped, counted and
//! logged, so a slow or dead receiver never delays scheduling. Failed posts are retried with
//! backoff; shutting down waits a bounded time for what is queued.

use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use serde_json::{json, Map, Value};

/// The notice kinds a user can ask for in `[notifications] events`.
pub const KINDS: &[&str] = &[
    "breaker_opened",
    "breaker_closed",
    "needs_attention",
    "stalled",
    "task_failed",
    "task_done",
    "task_retry",
    "deadlock",
    "drained",
    "run_finished",
];

/// What is sent by default: what needs a person's attention or ends a run.
pub const DEFAULT_KINDS: &[&str] = &[
    "task_failed",
    "deadlock",
    "drained",
    "run_finished",
    "breaker_opened",
    "needs_attention",
    "stalled",
];

/// How long shutting down waits for queued notices to go out.
const FLUSH_DEADLINE: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct NotifySettings {
    pub webhook_url: String,
    pub kinds: Vec<String>,
    /// Per request.
    pub timeout: Duration,
    pub max_attempts: u32,
    pub queue: usize,
}

/// One notification.
#[derive(Clone, Debug)]
pub struct Notice {
    pub kind: &'static str,
    pub text: String,
    pub spec: Option<String>,
    pub task_id: Option<String>,
    pub details: Map<String, Value>,
}

impl Notice {
    pub fn new(kind: &'static str, text: impl Into<String>) -> Notice {
        Notice {
            kind,
            text: text.into(),
            spec: None,
            task_id: None,
            details: Map::new(),
        }
    }

    #[must_use]
    pub fn task(mut self, spec: &str, id: &str) -> Notice {
        self.spec = Some(spec.to_string());
        self.task_id = Some(id.to_string());
        self
    }

    #[must_use]
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Notice {
        self.details.insert(key.to_string(), value.into());
        self
    }

    /// The JSON body: `text` for Slack-compatible receivers, the rest for programs.
    pub fn body(&self) -> Value {
        json!({
            "text": self.text,
            "event": self.kind,
            "spec": self.spec,
            "task_id": self.task_id,
            "details": self.details,
            "host": crate::sys::hostname(),
        })
    }
}

/// The notification thread: a bounded queue in, HTTP posts out.
pub struct Notifier {
    kinds: Vec<String>,
    queue: Option<Sender<Notice>>,
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Notifier {
    pub fn spawn(settings: NotifySettings) -> std::io::Result<Notifier> {
        let (queue, inbox) = crossbeam_channel::bounded(settings.queue.max(1));
        let (stop, stopped) = crossbeam_channel::bounded(1);
        let kinds = settings.kinds.clone();
        let thread = thread::Builder::new()
            .name("notifier".into())
            .spawn(move || run(&settings, &inbox, &stopped))?;
        Ok(Notifier {
            kinds,
            queue: Some(queue),
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Queues a notice if its kind was asked for. Returns false when it had to be dropped
    /// (the queue is full: the receiver is slow or gone).
    pub fn notify(&self, notice: Notice) -> bool {
        if !self.kinds.iter().any(|k| k == notice.kind) {
            return true;
        }
        let Some(queue) = &self.queue else {
            return false;
        };
        match queue.try_send(notice) {
            Ok(()) => true,
            Err(TrySendError::Full(notice)) => {
                log::warn!(
                    "notification queue full (webhook slow or down): dropped {} notice",
                    notice.kind
                );
                false
            }
            Err(TrySendError::Disconnected(_)) => false,
        }
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        // Closing the queue lets the thread send what is queued (within FLUSH_DEADLINE);
        // the stop signal cuts its retry waits short.
        self.queue.take();
        if let Some(stop) = self.stop.take() {
            let _ = stop.try_send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(settings: &NotifySettings, inbox: &Receiver<Notice>, stopped: &Receiver<()>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(settings.timeout))
        .http_status_as_error(false)
        .build()
        .into();
    let mut stopping_since: Option<Instant> = None;
    loop {
        let notice = match inbox.recv_timeout(Duration::from_millis(200)) {
            Ok(notice) => notice,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        if stopped.try_recv().is_ok() {
            stopping_since.get_or_insert_with(Instant::now);
        }
        let past_deadline = stopping_since.is_some_and(|at| at.elapsed() > FLUSH_DEADLINE);
        if past_deadline {
            log::warn!("shutting down: {} notice not sent", notice.kind);
            continue;
        }
        deliver(&agent, settings, &notice, stopped, &mut stopping_since);
    }
}

/// Posts one notice, retrying with exponential backoff (1 s, 2 s, …) up to `max_attempts`;
/// while shutting down, a single attempt.
fn deliver(
    agent: &ureq::Agent,
    settings: &NotifySettings,
    notice: &Notice,
    stopped: &Receiver<()>,
    stopping_since: &mut Option<Instant>,
) {
    let body = notice.body().to_string();
    let mut delay = Duration::from_secs(1);
    for attempt in 1..=settings.max_attempts.max(1) {
        let result = agent
            .post(&settings.webhook_url)
            .content_type("application/json")
            .send(body.as_str());
        let problem = match result {
            Ok(response) if response.status().is_success() => return,
            Ok(response) => format!("answered {}", response.status()),
            Err(err) => err.to_string(),
        };
        let last = attempt == settings.max_attempts.max(1) || stopping_since.is_some();
        if last {
            log::warn!(
                "webhook {}: {} notice not delivered after {attempt} attempts ({problem})",
                settings.webhook_url,
                notice.kind
            );
            return;
        }
        log::debug!(
            "webhook {}: {problem}; retrying in {delay:?}",
            settings.webhook_url
        );
        // Waiting on the stop channel: a shutdown ends the wait at once.
        if stopped.recv_timeout(delay).is_ok() {
            stopping_since.get_or_insert_with(Instant::now);
        }
        delay = (delay * 2).min(Duration::from_secs(60));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_text_for_slack_and_fields_for_programs() {
        let body = Notice::new("task_failed", "chat/1 failed after 3 attempts")
            .task("chat", "1")
            .with("attempts", 3)
            .body();
        assert_eq!(body["text"], "chat/1 failed after 3 attempts");
        assert_eq!(body["event"], "task_failed");
        assert_eq!(body["spec"], "chat");
        assert_eq!(body["task_id"], "1");
        assert_eq!(body["details"]["attempts"], 3);
    }

    #[test]
    fn unasked_kinds_are_not_queued_and_a_full_queue_drops() {
        let notifier = Notifier::spawn(NotifySettings {
            // Nothing listens here: every post fails fast; the queue of 1 fills.
            webhook_url: "http://127.0.0.1:9/".into(),
            kinds: vec!["task_failed".into()],
            timeout: Duration::from_millis(200),
            max_attempts: 3,
            queue: 1,
        })
        .unwrap();
        assert!(notifier.notify(Notice::new("task_done", "ignored")));
        let mut dropped = 0;
        for _ in 0..20 {
            if !notifier.notify(Notice::new("task_failed", "x")) {
                dropped += 1;
            }
        }
        assert!(dropped > 0, "a queue of one cannot take 20 at once");
    }
}

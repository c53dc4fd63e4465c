//! Registry events: one JSON object per line in `<root>/events/<spec>/events.jsonl`, written as
//! Python's `json.dumps` writes them; appends never fail the caller (a fallback file catches them).

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::fsutil;
use crate::names;
use crate::registry::{json, Registry, RegistryError};
use crate::timefmt;

/// One event line. `task_id` is written as `null` when absent, as NecroCode does.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Event {
    pub event_type: String,
    pub spec_name: String,
    pub task_id: Option<String>,
    pub timestamp: String,
    #[serde(default)]
    pub details: Map<String, Value>,
}

impl Event {
    /// An event stamped with the current time and no details.
    pub fn new(event_type: &str, spec: &str, task_id: Option<&str>) -> Event {
        Event {
            event_type: event_type.to_owned(),
            spec_name: spec.to_owned(),
            task_id: task_id.map(str::to_owned),
            timestamp: timefmt::now_string(),
            details: Map::new(),
        }
    }

    /// Adds (or replaces) one detail.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.details.insert(key.to_owned(), value.into());
        self
    }

    /// The line as Python writes it, newline included.
    fn to_line(&self) -> serde_json::Result<Vec<u8>> {
        let mut line = json::to_line_bytes(self)?;
        line.push(b'\n');
        Ok(line)
    }
}

/// Appends events to the registry's per-spec logs, or to a local fallback file when that fails.
#[derive(Clone, Debug)]
pub struct EventLog {
    registry: Registry,
    fallback: PathBuf,
}

impl EventLog {
    /// `fallback` receives the lines that cannot be appended to the registry (for example
    /// `<state_dir>/events-fallback.jsonl`).
    pub fn new(registry: &Registry, fallback: PathBuf) -> Self {
        EventLog {
            registry: registry.clone(),
            fallback,
        }
    }

    /// Appends `events`, each spec's lines in one `write` so that concurrent writers (other
    /// dispatchers, NecroCode) do not interleave within them. Failures are logged, never
    /// returned: losing the audit trail must not stop the work it describes.
    pub fn append(&self, events: &[Event]) {
        let mut batches: Vec<(&str, Vec<u8>)> = Vec::new();
        for event in events {
            let line = match event.to_line() {
                Ok(line) => line,
                Err(e) => {
                    log::error!(
                        "cannot serialize {} event for {}: {e}",
                        event.event_type,
                        event.spec_name
                    );
                    continue;
                }
            };
            match batches
                .iter_mut()
                .find(|(spec, _)| *spec == event.spec_name)
            {
                Some((_, buf)) => buf.extend_from_slice(&line),
                None => batches.push((&event.spec_name, line)),
            }
        }
        for (spec, buf) in batches {
            let target = match names::validate("spec name", spec) {
                Ok(()) => self.registry.events_path(spec),
                Err(e) => {
                    self.append_fallback(&buf, &e.to_string());
                    continue;
                }
            };
            if let Err(e) = append_to(&target, &buf) {
                self.append_fallback(
                    &buf,
                    &format!("cannot append events to {}: {e}", target.display()),
                );
            }
        }
    }

    fn append_fallback(&self, buf: &[u8], why: &str) {
        match append_to(&self.fallback, buf) {
            Ok(()) => log::warn!("{why}; wrote them to {}", self.fallback.display()),
            Err(e) => log::error!(
                "{why}; cannot append them to fallback {} either: {e}",
                self.fallback.display()
            ),
        }
    }

    /// Reads an events file; a missing file has no events. A malformed line is an error naming
    /// its number (1-based), since silently skipping it would hide a damaged log.
    pub fn read(path: &Path) -> Result<Vec<Event>, RegistryError> {
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(RegistryError::Io {
                    action: "read",
                    path: path.to_owned(),
                    source,
                })
            }
        };
        text.lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(i, line)| {
                serde_json::from_str(line).map_err(|source| RegistryError::EventLine {
                    path: path.to_owned(),
                    line: i + 1,
                    source,
                })
            })
            .collect()
    }
}

fn append_to(path: &Path, buf: &[u8]) -> io::Result<()> {
    let mut file = fsutil::create_in_dir(path, |path| {
        OpenOptions::new().append(true).create(true).open(path)
    })?;
    // One write call: with O_APPEND the kernel places the whole buffer at the end atomically
    // with respect to other appenders on local file systems.
    let written = file.write(buf)?;
    if written < buf.len() {
        file.write_all(&buf[written..])?;
    }
    file.sync_data()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::test_support::{copy_fixture_registry, fixture_registry};

    #[test]
    fn fixture_lines_reserialize_identically() {
        for spec in ["chat-app", "tiny"] {
            let path = fixture_registry()
                .join("events")
                .join(spec)
                .join("events.jsonl");
            let text = fs::read_to_string(&path).unwrap();
            for line in text.lines() {
                let event: Event = serde_json::from_str(line).unwrap();
                let out = event.to_line().unwrap();
                assert_eq!(String::from_utf8(out).unwrap(), format!("{line}\n"));
            }
            assert_eq!(EventLog::read(&path).unwrap().len(), text.lines().count());
        }
    }

    #[test]
    fn new_event_line_format() {
        let mut event = Event::new("TaskRetryScheduled", "chat-app", None)
            .with("attempt", 2)
            .with("error", "exit 1: ünïcode")
            .with("ok", false);
        assert!(timefmt::parse(&event.timestamp).is_some());
        event.timestamp = "2026-11-29T09:07:09.878093".into();
        let line = String::from_utf8(event.to_line().unwrap()).unwrap();
        assert_eq!(
            line,
            "{\"event_type\": \"TaskRetryScheduled\", \"spec_name\": \"chat-app\", \"task_id\": null, \
             \"timestamp\": \"2026-11-29T09:07:09.878093\", \"details\": {\"attempt\": 2, \
             \"error\": \"exit 1: \\u00fcn\\u00efcode\", \"ok\": false}}\n"
        );
    }

    #[test]
    fn append_groups_by_spec_and_adds_to_existing_log() {
        let (tmp, root) = copy_fixture_registry();
        let registry = Registry::new(&root);
        let log = EventLog::new(&registry, tmp.path().join("state/events-fallback.jsonl"));
        let before = EventLog::read(&registry.events_path("tiny")).unwrap().len();
        log.append(&[
            Event::new("TaskReady", "tiny", Some("2")),
            Event::new("TaskReady", "fresh", Some("1")),
            Event::new("TaskAssigned", "tiny", Some("2")).with("pool", "default"),
        ]);
        let tiny = EventLog::read(&registry.events_path("tiny")).unwrap();
        assert_eq!(tiny.len(), before + 2);
        assert_eq!(tiny[before + 1].details["pool"], "default");
        assert_eq!(
            EventLog::read(&registry.events_path("fresh"))
                .unwrap()
                .len(),
            1
        );
        assert!(!tmp.path().join("state/events-fallback.jsonl").exists());
    }

    #[test]
    fn append_falls_back_when_events_dir_cannot_be_created() {
        let (tmp, root) = copy_fixture_registry();
        let registry = Registry::new(&root);
        // A regular file where the spec's events directory should be: creating the directory
        // fails even for root, unlike a permission-based setup.
        fs::create_dir_all(root.join("events")).unwrap();
        fs::write(root.join("events/blocked"), "not a dir").unwrap();
        let fallback = tmp.path().join("state/events-fallback.jsonl");
        let log = EventLog::new(&registry, fallback.clone());
        log.append(&[Event::new("TaskFailed", "blocked", Some("1")).with("exit_code", 3)]);
        log.append(&[Event::new("TaskReady", "../evil", Some("1"))]);
        let events = EventLog::read(&fallback).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].event_type, "TaskFailed");
        assert_eq!(events[0].details["exit_code"], 3);
        assert_eq!(events[1].spec_name, "../evil");
        assert_eq!(
            fs::read_to_string(root.join("events/blocked")).unwrap(),
            "not a dir"
        );
    }

    #[test]
    fn append_never_panics_when_fallback_fails_too() {
        let (tmp, root) = copy_fixture_registry();
        fs::write(root.join("events/blocked"), "").unwrap();
        fs::write(tmp.path().join("file"), "").unwrap();
        let log = EventLog::new(
            &Registry::new(&root),
            tmp.path().join("file/fallback.jsonl"),
        );
        log.append(&[Event::new("TaskReady", "blocked", None)]);
    }

    #[test]
    fn read_names_the_malformed_line() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("events.jsonl");
        let good =
            String::from_utf8(Event::new("TaskReady", "s", None).to_line().unwrap()).unwrap();
        fs::write(&path, format!("{good}{{\"event_type\": 1}}\n")).unwrap();
        let err = EventLog::read(&path).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("invalid event in {} line 2: ", path.display())),
            "{err}"
        );
        assert!(EventLog::read(&tmp.path().join("missing"))
            .unwrap()
            .is_empty());
    }
}

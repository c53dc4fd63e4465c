//! `dispatcher events`: reads every event log (each spec's `<registry>/events/<spec>/events.jsonl`,
//! NecroCode's and ours, plus the spec-less `<state_dir>/events.jsonl`), merges them by time and
//! follows them as they grow.
//!
//! Following is a poll of each file's size: a file that grew is read from the last offset and
//! only its complete lines are taken (a writer may be half-way through a line); a file that
//! shrank was replaced, so it is read again from the start. New spec directories are picked up at
//! each poll. Polling, unlike inotify, needs nothing beyond `std` and works on every file system.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::registry::Event;
use crate::timefmt;

/// Which events to show.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Only this spec's events; spec-less dispatcher events are then left out.
    pub spec: Option<String>,
    /// Only events about this task id.
    pub task: Option<String>,
}

impl Filter {
    fn accepts(&self, event: &Event) -> bool {
        self.spec.as_ref().is_none_or(|s| *s == event.spec_name)
            && self
                .task
                .as_ref()
                .is_none_or(|t| event.task_id.as_deref() == Some(t.as_str()))
    }
}

/// One event line, kept verbatim for `--json`.
#[derive(Clone, Debug)]
pub struct Record {
    pub event: Event,
    pub line: String,
}

impl Record {
    /// One line for people: time, `spec/task`, type and the details as compact `key=value`s.
    pub fn render(&self) -> String {
        let e = &self.event;
        let spec = if e.spec_name.is_empty() {
            "-"
        } else {
            &e.spec_name
        };
        let subject = match &e.task_id {
            Some(id) => format!("{spec}/{id}"),
            None => spec.to_owned(),
        };
        let mut text = format!("{}  {subject}  {}", e.timestamp, e.event_type);
        let mut sep = "  ";
        for (key, value) in &e.details {
            text.push_str(sep);
            sep = " ";
            text.push_str(&compact_detail(key, value));
        }
        text
    }
}

/// `duration_seconds: 12.34` reads as `duration=12.3s`; strings go unquoted unless they hold
/// spaces (then JSON-quoted, so that the line still splits on spaces unambiguously).
fn compact_detail(key: &str, value: &Value) -> String {
    if let (Some(name), Some(secs)) = (key.strip_suffix("_seconds"), value.as_f64()) {
        return format!("{name}={secs:.1}s");
    }
    let value = match value {
        Value::String(s) if !s.is_empty() && !s.chars().any(char::is_whitespace) => s.clone(),
        other => other.to_string(),
    };
    format!("{key}={value}")
}

/// The read position in one file.
#[derive(Debug, Default)]
struct Cursor {
    offset: u64,
    /// Lines already read, for the line numbers of malformed lines.
    lines: usize,
    /// The end of the file past its last newline: a line still being written.
    partial: Vec<u8>,
}

/// Every event file of a registry and a state dir, with how far each has been read.
#[derive(Debug)]
pub struct EventFiles {
    events_dir: PathBuf,
    dispatcher_events: PathBuf,
    filter: Filter,
    cursors: BTreeMap<PathBuf, Cursor>,
}

impl EventFiles {
    /// `registry_root` holds `events/<spec>/events.jsonl`; `dispatcher_events` is the state
    /// dir's spec-less log.
    pub fn new(registry_root: &Path, dispatcher_events: PathBuf, filter: Filter) -> EventFiles {
        EventFiles {
            events_dir: registry_root.join("events"),
            dispatcher_events,
            filter,
            cursors: BTreeMap::new(),
        }
    }

    /// The files to read now: the filtered spec's, or every spec directory's plus the
    /// dispatcher's. Missing files are fine; they may appear later.
    fn paths(&self) -> Vec<PathBuf> {
        if let Some(spec) = &self.filter.spec {
            return vec![self.events_dir.join(spec).join("events.jsonl")];
        }
        let mut paths: Vec<PathBuf> = fs::read_dir(&self.events_dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|entry| entry.path().join("events.jsonl"))
                    .collect()
            })
            .unwrap_or_default();
        paths.sort();
        paths.push(self.dispatcher_events.clone());
        paths
    }

    /// Reads what was appended since the last call, oldest first, and describes each line that
    /// is not an event (file and 1-based line number); those are skipped.
    pub fn poll(&mut self) -> (Vec<Record>, Vec<String>) {
        let mut records = Vec::new();
        let mut warnings = Vec::new();
        for path in self.paths() {
            let cursor = self.cursors.entry(path.clone()).or_default();
            match read_new_lines(&path, cursor) {
                Ok(lines) => {
                    for (number, line) in lines {
                        if line.trim().is_empty() {
                            continue;
                        }
                        match serde_json::from_str::<Event>(&line) {
                            Ok(event) if self.filter.accepts(&event) => {
                                records.push(Record { event, line });
                            }
                            Ok(_) => {}
                            Err(err) => warnings.push(format!(
                                "skipping malformed event in {} line {number}: {err}",
                                path.display()
                            )),
                        }
                    }
                }
                Err(err) => warnings.push(format!("cannot read {}: {err}", path.display())),
            }
        }
        // A stable sort: events with the same time keep their order within a file.
        records.sort_by_cached_key(|r| sort_key(&r.event.timestamp));
        (records, warnings)
    }
}

/// Parsed when possible, so that `…:05` and `…:05.123456` compare as times; an unparsable
/// timestamp sorts by its text after every parsable one.
fn sort_key(timestamp: &str) -> (bool, Option<chrono::NaiveDateTime>, String) {
    let parsed = timefmt::parse(timestamp);
    (parsed.is_none(), parsed, timestamp.to_owned())
}

/// The complete lines appended to `path` since `cursor`, with their line numbers.
fn read_new_lines(path: &Path, cursor: &mut Cursor) -> io::Result<Vec<(usize, String)>> {
    let mut file = match fs::File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err),
    };
    let len = file.metadata()?.len();
    if len < cursor.offset {
        // Truncated or replaced: what it holds now is all new.
        *cursor = Cursor::default();
    }
    if len == cursor.offset {
        return Ok(Vec::new());
    }
    file.seek(SeekFrom::Start(cursor.offset))?;
    let mut buf = std::mem::take(&mut cursor.partial);
    let read = file.take(len - cursor.offset).read_to_end(&mut buf)?;
    cursor.offset += read as u64;
    let complete = buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    cursor.partial = buf.split_off(complete);
    let Some(body) = buf.strip_suffix(b"\n") else {
        return Ok(Vec::new());
    };
    let first = cursor.lines + 1;
    let lines: Vec<(usize, String)> = body
        .split(|&b| b == b'\n')
        .enumerate()
        .map(|(i, raw)| (first + i, String::from_utf8_lossy(raw).into_owned()))
        .collect();
    cursor.lines += lines.len();
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(spec: &str, task: Option<&str>, ts: &str) -> String {
        let task = task.map_or("null".to_owned(), |t| format!("\"{t}\""));
        format!(
            "{{\"event_type\": \"TaskReady\", \"spec_name\": \"{spec}\", \"task_id\": {task}, \
             \"timestamp\": \"{ts}\", \"details\": {{}}}}\n"
        )
    }

    #[test]
    fn partial_lines_wait_for_their_newline() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("registry");
        fs::create_dir_all(root.join("events/a")).unwrap();
        let path = root.join("events/a/events.jsonl");
        let full = line("a", Some("1"), "2026-11-29T10:00:00.000000");
        let (head, tail) = full.split_at(20);
        fs::write(&path, head).unwrap();
        let mut files = EventFiles::new(&root, tmp.path().join("none"), Filter::default());
        assert!(files.poll().0.is_empty());
        fs::write(&path, format!("{head}{tail}{{oops\n")).unwrap();
        let (records, warnings) = files.poll();
        assert_eq!(records.len(), 1);
        assert_eq!(format!("{}\n", records[0].line), full);
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].contains("events.jsonl line 2: "),
            "{warnings:?}"
        );
        assert!(files.poll().0.is_empty());
    }

    #[test]
    fn compact_details() {
        assert_eq!(
            compact_detail("duration_seconds", &Value::from(12.34)),
            "duration=12.3s"
        );
        assert_eq!(compact_detail("runner", &Value::from("r-1")), "runner=r-1");
        assert_eq!(
            compact_detail("error", &Value::from("exit 1")),
            "error=\"exit 1\""
        );
        assert_eq!(compact_detail("attempt", &Value::from(2)), "attempt=2");
    }
}

//! A task's attempt history (`metadata.dispatcher.history`) as a runner and a person see it:
//! `previous_attempt` in `TASK_CONTEXT`, so that an agent can continue where the last attempt
//! stopped, and the rows of `dispatcher attempts`.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use serde_json::{json, Value};

use crate::registry::{AttemptRecord, Task};

/// How much of the previous attempt's log end `previous_attempt.log_tail` holds.
pub const LOG_TAIL_BYTES: u64 = 4096;

/// The attempt just before attempt `attempt` of `task`, for `TASK_CONTEXT`; `None` for a
/// first attempt. That is the last record of the history, unless it belongs to an earlier
/// round of the task (before `dispatcher retry` reset its attempts): a record of a lower
/// number, or of the same number that did not count (an infra failure, a rate limit, a
/// drain), which the current attempt repeats.
pub fn previous_attempt(task: &Task, attempt: u32) -> Option<Value> {
    let history = task.dispatcher_meta().history;
    let last = history.last()?;
    let before = last.attempt < attempt || (last.attempt == attempt && !last.counted);
    if !before {
        return None;
    }
    let log_tail = last
        .log_file
        .as_deref()
        .map(|path| log_tail(Path::new(path), LOG_TAIL_BYTES).unwrap_or_default());
    Some(json!({
        "attempt": last.attempt,
        "outcome": last.outcome,
        "class": last.class,
        "error": last.error,
        "exit_code": last.exit_code,
        "checkpoint_ref": last.checkpoint_ref,
        "log_tail": log_tail,
    }))
}

/// The last `max` bytes of a log as text: cut at a character boundary, any invalid byte
/// replaced, so the result is always valid UTF-8.
pub fn log_tail(path: &Path, max: u64) -> io::Result<String> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let start = len.saturating_sub(max);
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.take(max).read_to_end(&mut bytes)?;
    // A cut in the middle of a character leaves continuation bytes (10xxxxxx) in front.
    let skip = if start > 0 {
        bytes
            .iter()
            .take(3)
            .take_while(|b| (**b & 0xC0) == 0x80)
            .count()
    } else {
        0
    };
    Ok(String::from_utf8_lossy(&bytes[skip..]).into_owned())
}

/// One attempt as `dispatcher attempts --json` prints it: the record, plus whether its
/// checkpoint ref still exists (`null`: no checkpoint, or cannot tell).
pub fn listing(record: &AttemptRecord, checkpoint_exists: Option<bool>) -> Value {
    let mut value = serde_json::to_value(record).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut value {
        map.insert("checkpoint_exists".into(), json!(checkpoint_exists));
    }
    value
}

/// The aligned table of `dispatcher attempts`: one line per attempt, oldest first.
pub fn render(records: &[(AttemptRecord, Option<bool>)]) -> String {
    const HEADER: [&str; 8] = [
        "ATTEMPT",
        "OUTCOME",
        "CLASS",
        "COUNTED",
        "ENDED",
        "EXIT",
        "CHECKPOINT",
        "ERROR",
    ];
    let dash = || "-".to_owned();
    let mut table: Vec<[String; 8]> = vec![HEADER.map(str::to_owned)];
    for (record, exists) in records {
        let checkpoint = match (&record.checkpoint_ref, exists) {
            (None, _) => dash(),
            (Some(name), Some(false)) => format!("{name} (gone)"),
            (Some(name), _) => name.clone(),
        };
        table.push([
            record.attempt.to_string(),
            record.outcome.clone(),
            record.class.clone().unwrap_or_else(dash),
            if record.counted { "yes" } else { "no" }.to_owned(),
            record.ended_at.clone(),
            record.exit_code.map_or_else(dash, |code| code.to_string()),
            checkpoint,
            // One line per attempt, whatever the error says.
            record
                .error
                .as_deref()
                .map_or_else(dash, |e| e.replace('\n', " ")),
        ]);
    }
    crate::table::aligned(&table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::DispatcherMeta;

    fn task_with(history: Vec<AttemptRecord>) -> Task {
        let mut task: Task =
            serde_json::from_value(json!({"id": "t", "title": "t", "state": "ready"})).unwrap();
        let meta = DispatcherMeta {
            history,
            ..DispatcherMeta::default()
        };
        task.set_dispatcher_meta(&meta);
        task
    }

    fn record(attempt: u32, counted: bool) -> AttemptRecord {
        AttemptRecord {
            attempt,
            counted,
            outcome: "failed".into(),
            ..AttemptRecord::default()
        }
    }

    #[test]
    fn previous_is_the_last_record_of_this_round() {
        let none = task_with(vec![]);
        assert!(previous_attempt(&none, 1).is_none());
        let task = task_with(vec![record(1, true)]);
        assert_eq!(previous_attempt(&task, 2).unwrap()["attempt"], 1);
        // After `dispatcher retry` the attempts start again at 1: the old round is not it.
        assert!(previous_attempt(&task, 1).is_none());
        let task = task_with(vec![record(1, true), record(2, false)]);
        assert_eq!(previous_attempt(&task, 2).unwrap()["attempt"], 2);
    }

    #[test]
    fn table_is_aligned_and_marks_gone_checkpoints() {
        let mut first = record(1, true);
        first.checkpoint_ref = Some("refs/dispatcher/s/t/attempt-1".into());
        first.error = Some("exited with code 1".into());
        first.exit_code = Some(1);
        let second = AttemptRecord {
            outcome: "succeeded".into(),
            ..record(2, true)
        };
        let text = render(&[(first, Some(false)), (second, None)]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("ATTEMPT  OUTCOME    CLASS"), "{text}");
        assert!(
            lines[1].contains("refs/dispatcher/s/t/attempt-1 (gone)  exited with code 1"),
            "{text}"
        );
        let column = |line: &str| line.find("yes").unwrap();
        assert_eq!(column(lines[1]), column(lines[2]), "{text}");
    }

    #[test]
    fn log_tail_is_the_end_cut_at_a_character() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(&path, "héllo wörld").unwrap();
        assert_eq!(log_tail(&path, 100).unwrap(), "héllo wörld");
        // 4 bytes from the end start inside "ö" (2 bytes): its second byte is dropped.
        assert_eq!(log_tail(&path, 4).unwrap(), "rld");
        assert_eq!(log_tail(&path, 5).unwrap(), "örld");
    }
}

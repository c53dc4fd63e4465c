//! What a runner tells the dispatcher besides its exit code: the result file
//! (`DISPATCHER_RESULT_FILE`: why it failed, when to try again, artifacts, spend) and the last
//! JSON line of its heartbeat file (spend so far, a progress value).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use chrono::NaiveDateTime;
use serde_json::Value;

use crate::supervisor::FailureClass;
use crate::timefmt;

/// The biggest result file read; a runner has no reason to write more.
const MAX_RESULT_BYTES: u64 = 1 << 20;
/// The latest a runner's `retry_after` may close its pool's breaker: one result file must not
/// shut a pool for good.
const MAX_RETRY_AFTER_SECS: i64 = 24 * 3600;
/// How much of the heartbeat file's end is read for its last line.
const BEAT_TAIL_BYTES: u64 = 4096;

/// What the runner reported spending in its attempt so far (cumulative, not a delta).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Spend {
    pub tokens: u64,
    pub cost_usd: f64,
}

impl Spend {
    /// `{"tokens": …, "cost_usd": …}`, at the top level of `value` or under `"spend"`. `None`
    /// when neither is given; negative or non-finite figures are ignored.
    pub fn from_json(value: &Value) -> Option<Spend> {
        let source = match value.get("spend") {
            Some(spend) if spend.is_object() => spend,
            _ => value,
        };
        let tokens = source.get("tokens").and_then(Value::as_u64);
        let cost = source
            .get("cost_usd")
            .and_then(Value::as_f64)
            .filter(|c| c.is_finite() && *c >= 0.0);
        if tokens.is_none() && cost.is_none() {
            return None;
        }
        Some(Spend {
            tokens: tokens.unwrap_or(0),
            cost_usd: cost.unwrap_or(0.0),
        })
    }

    pub fn to_json(self) -> Value {
        serde_json::json!({"tokens": self.tokens, "cost_usd": self.cost_usd})
    }
}

impl std::ops::Add for Spend {
    type Output = Spend;

    fn add(self, other: Spend) -> Spend {
        Spend {
            tokens: self.tokens.saturating_add(other.tokens),
            cost_usd: self.cost_usd + other.cost_usd,
        }
    }
}

/// The runner's own verdict in its result file.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ResultStatus {
    Succeeded,
    Failed(FailureClass),
}

/// `DISPATCHER_RESULT_FILE`, as written by the runner.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunnerResult {
    pub status: Option<ResultStatus>,
    /// When the provider will take requests again (`rate_limited`, `auth_expired`).
    pub retry_after: Option<NaiveDateTime>,
    pub message: Option<String>,
    /// Artifacts for the task, in NecroCode's shape (`{type, uri, …}`).
    pub artifacts: Vec<Value>,
    pub spend: Option<Spend>,
}

/// Reads the result file: `Ok(None)` when the runner wrote none; an error (naming the file
/// and what is wrong) when it is not the documented JSON object.
pub fn read_result(path: &Path) -> Result<Option<RunnerResult>, String> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(format!("cannot read {}: {err}", path.display())),
    };
    let mut bytes = Vec::new();
    file.by_ref()
        .take(MAX_RESULT_BYTES)
        .read_to_end(&mut bytes)
        .map_err(|err| format!("cannot read {}: {err}", path.display()))?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|err| format!("{} is not JSON: {err}", path.display()))?;
    parse_result(&value)
        .map(Some)
        .map_err(|err| format!("{}: {err}", path.display()))
}

fn parse_result(value: &Value) -> Result<RunnerResult, String> {
    if !value.is_object() {
        return Err("expected a JSON object".into());
    }
    let status = match value.get("status") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) if text == "succeeded" => Some(ResultStatus::Succeeded),
        Some(Value::String(text)) => match FailureClass::parse(text) {
            Some(class) => Some(ResultStatus::Failed(class)),
            None => {
                return Err(format!(
                    "status {text:?} is not one of succeeded, failed, rate_limited, auth_expired, infra"
                ))
            }
        },
        Some(other) => return Err(format!("status must be a string, found {other}")),
    };
    let retry_after = match value.get("retry_after") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(
            timefmt::parse(text)
                .ok_or_else(|| format!("retry_after {text:?} is not an ISO 8601 time"))?,
        ),
        // Seconds from now, as HTTP's Retry-After.
        Some(Value::Number(n)) => {
            let secs = n
                .as_f64()
                .filter(|s| s.is_finite() && *s >= 0.0)
                .ok_or_else(|| format!("retry_after {n} is not a number of seconds"))?;
            let delta = chrono::Duration::milliseconds((secs.min(1e9) * 1000.0) as i64);
            Some(timefmt::now() + delta)
        }
        Some(other) => {
            return Err(format!(
                "retry_after must be a time or seconds, found {other}"
            ))
        }
    };
    let latest = timefmt::now() + chrono::Duration::seconds(MAX_RETRY_AFTER_SECS);
    let retry_after = retry_after.map(|at| at.min(latest));
    let message = value
        .get("message")
        .and_then(Value::as_str)
        .map(|m| m.chars().take(2000).collect());
    let artifacts = match value.get("artifacts") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items.iter().map(artifact).collect::<Result<_, _>>()?,
        Some(other) => return Err(format!("artifacts must be a list, found {other}")),
    };
    Ok(RunnerResult {
        status,
        retry_after,
        message,
        artifacts,
        spend: Spend::from_json(value),
    })
}

/// A result artifact as the registry keeps it: an object with at least `type` and `uri`
/// stays as written; a plain string is a file path.
fn artifact(item: &Value) -> Result<Value, String> {
    match item {
        Value::String(path) => Ok(serde_json::json!({
            "type": "file",
            "uri": if path.contains("://") { path.clone() } else { format!("file://{path}") },
            "created_at": timefmt::now_string(),
        })),
        Value::Object(fields) if fields.get("uri").is_some_and(Value::is_string) => {
            let mut fields = fields.clone();
            fields
                .entry("type")
                .or_insert_with(|| Value::String("file".into()));
            fields
                .entry("created_at")
                .or_insert_with(|| Value::String(timefmt::now_string()));
            Ok(Value::Object(fields))
        }
        other => Err(format!(
            "an artifact must be a path or an object with a \"uri\", found {other}"
        )),
    }
}

/// The last line of a heartbeat file that is a JSON object, if any: heartbeats may be plain
/// touches, so anything else is no report.
pub fn read_beat(path: &Path) -> Option<Value> {
    let mut file = File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    if len == 0 {
        return None;
    }
    file.seek(SeekFrom::Start(len.saturating_sub(BEAT_TAIL_BYTES)))
        .ok()?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail).ok()?;
    let text = String::from_utf8_lossy(&tail);
    text.lines()
        .rev()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .find_map(|l| {
            serde_json::from_str::<Value>(l)
                .ok()
                .filter(Value::is_object)
        })
}

/// The end of a log, at most `bytes` of it, cut at a line start when one is near.
pub fn log_tail(path: &Path, bytes: u64) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map_or(0, |m| m.len());
    let start = len.saturating_sub(bytes);
    if file.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut tail = Vec::new();
    let _ = file.read_to_end(&mut tail);
    let text = String::from_utf8_lossy(&tail).into_owned();
    match (start > 0, text.find('\n')) {
        (true, Some(newline)) if newline + 1 < text.len() => text[newline + 1..].to_string(),
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_rate_limit_report_is_read_with_its_time() {
        let result = parse_result(&json!({
            "status": "rate_limited", "retry_after": "2026-11-29T18:30:00",
            "message": "429 Too Many Requests",
            "artifacts": ["out/report.md", {"type": "pr", "uri": "https://x/pr/1"}],
            "spend": {"tokens": 1200, "cost_usd": 0.5}
        }))
        .unwrap();
        assert_eq!(
            result.status,
            Some(ResultStatus::Failed(FailureClass::RateLimited))
        );
        assert_eq!(
            result.retry_after,
            timefmt::parse("2026-11-29T18:30:00.000000")
        );
        assert_eq!(result.artifacts[0]["uri"], "file://out/report.md");
        assert_eq!(result.artifacts[1]["type"], "pr");
        assert_eq!(
            result.spend,
            Some(Spend {
                tokens: 1200,
                cost_usd: 0.5
            })
        );
    }

    #[test]
    fn bad_results_say_what_is_wrong() {
        let err = parse_result(&json!({"status": "exploded"})).unwrap_err();
        assert!(err.contains("\"exploded\""), "{err}");
        let err = parse_result(&json!({"retry_after": "soon"})).unwrap_err();
        assert!(err.contains("retry_after"), "{err}");
        assert!(parse_result(&json!([1])).is_err());
    }

    #[test]
    fn retry_after_in_seconds_counts_from_now() {
        let result = parse_result(&json!({"status": "rate_limited", "retry_after": 60})).unwrap();
        let wait = result.retry_after.unwrap() - timefmt::now();
        assert!((55..=60).contains(&wait.num_seconds()), "{wait}");
    }

    #[test]
    fn the_last_json_line_of_a_heartbeat_file_is_the_report() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("heartbeat");
        std::fs::write(&path, "").unwrap();
        assert_eq!(read_beat(&path), None);
        std::fs::write(
            &path,
            "{\"tokens\": 10}\nnot json\n{\"tokens\": 20, \"progress\": 3}\n\n",
        )
        .unwrap();
        let beat = read_beat(&path).unwrap();
        assert_eq!(beat["progress"], 3);
        assert_eq!(Spend::from_json(&beat).unwrap().tokens, 20);
    }

    #[test]
    fn a_log_tail_starts_at_a_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(&path, "first line\nsecond line\nthird\n").unwrap();
        assert_eq!(log_tail(&path, 14), "third\n");
        assert_eq!(log_tail(&path, 1000), "first line\nsecond line\nthird\n");
    }
}

//! Durations as written in `dispatcher.toml`: `"90s"`, `"5m"`, `"1h30m"`, `"500ms"`, or seconds.

use std::time::Duration;

const HINT: &str = "(use 90s, 5m, 1h or seconds)";

/// Parses a duration such as `"90s"`, `"5m"`, `"1h"`, `"500ms"`, `"1h30m"` or plain seconds
/// (`"90"`, `"2.5"`).
///
/// The error is a message that names the rejected text.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid = || format!("invalid duration {text:?} {HINT}");
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(invalid());
    }
    if is_number(trimmed) {
        return component(trimmed, Unit::Seconds).ok_or_else(invalid);
    }

    // A sequence of `<number><unit>` parts, added up: "1h30m" is 5400 seconds.
    let mut total = Duration::ZERO;
    let mut rest = trimmed;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_len);
        let unit_len = after
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let unit = match unit {
            "ms" => Unit::Millis,
            "s" => Unit::Seconds,
            "m" => Unit::Minutes,
            "h" => Unit::Hours,
            _ => return Err(invalid()),
        };
        if !is_number(number) {
            return Err(invalid());
        }
        let part = component(number, unit).ok_or_else(invalid)?;
        total = total.checked_add(part).ok_or_else(invalid)?;
        rest = after;
    }
    Ok(total)
}

/// Converts a TOML number of seconds; `shown` is how the value appears in the error message.
pub(super) fn duration_from_secs(secs: f64, shown: &str) -> Result<Duration, String> {
    if secs < 0.0 {
        return Err(format!("invalid duration {shown} (must not be negative)"));
    }
    Duration::try_from_secs_f64(secs).map_err(|_| format!("invalid duration {shown} {HINT}"))
}

#[derive(Clone, Copy)]
enum Unit {
    Millis,
    Seconds,
    Minutes,
    Hours,
}

impl Unit {
    fn seconds(self) -> f64 {
        match self {
            Unit::Millis => 0.001,
            Unit::Seconds => 1.0,
            Unit::Minutes => 60.0,
            Unit::Hours => 3600.0,
        }
    }
}

/// Digits with at most one decimal point, starting with a digit. Checked by hand because
/// `f64::from_str` would also take `inf`, `NaN`, `1e9` and `+5`.
fn is_number(text: &str) -> bool {
    text.starts_with(|c: char| c.is_ascii_digit())
        && text.chars().all(|c| c.is_ascii_digit() || c == '.')
        && text.chars().filter(|&c| c == '.').count() <= 1
}

/// One `<number><unit>` part. Whole numbers use integer arithmetic so that `"100ms"` is exactly
/// 100 milliseconds; `None` means the value does not fit in a `Duration`.
fn component(number: &str, unit: Unit) -> Option<Duration> {
    if let Ok(whole) = number.parse::<u64>() {
        return match unit {
            Unit::Millis => Some(Duration::from_millis(whole)),
            Unit::Seconds => Some(Duration::from_secs(whole)),
            Unit::Minutes => whole.checked_mul(60).map(Duration::from_secs),
            Unit::Hours => whole.checked_mul(3600).map(Duration::from_secs),
        };
    }
    let value: f64 = number.parse().ok()?;
    Duration::try_from_secs_f64(value * unit.seconds()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_every_documented_form() {
        let cases = [
            ("90s", 90_000),
            ("5m", 300_000),
            ("1h", 3_600_000),
            ("500ms", 500),
            ("1h30m", 5_400_000),
            ("2m30s", 150_000),
            ("1s500ms", 1_500),
            ("90", 90_000),
            ("2.5", 2_500),
            ("1.5m", 90_000),
            ("0", 0),
            (" 10s ", 10_000),
        ];
        for (text, millis) in cases {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_millis(millis)),
                "{text}"
            );
        }
    }

    #[test]
    fn rejects_bad_text_and_names_it() {
        for text in [
            "",
            "   ",
            "-5",
            "-5s",
            "5 parsecs",
            "5d",
            "s",
            "1.2.3s",
            "nan",
            "inf",
            "1e3",
            "+5",
            "5s-",
            "1h 30m",
        ] {
            let err = parse_duration(text).unwrap_err();
            assert!(err.contains(&format!("{text:?}")), "{text}: {err}");
        }
    }

    #[test]
    fn rejects_values_too_large_for_a_duration() {
        assert!(parse_duration("18446744073709551615h").is_err());
        assert!(parse_duration("99999999999999999999999").is_err());
    }

    #[test]
    fn numbers_of_seconds() {
        assert_eq!(
            duration_from_secs(1.5, "1.5"),
            Ok(Duration::from_millis(1500))
        );
        assert!(duration_from_secs(-1.0, "-1").unwrap_err().contains("-1"));
        assert!(duration_from_secs(f64::NAN, "nan")
            .unwrap_err()
            .contains("nan"));
        assert!(duration_from_secs(f64::INFINITY, "inf").is_err());
    }
}

//! NecroCode timestamps: naive local ISO-8601 with microseconds, as Python's
//! `datetime.isoformat()` writes them, plus a lenient parser for what other tools write.

use std::time::SystemTime;

use chrono::{DateTime, Duration, Local, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Timelike};

/// The current local wall-clock time, truncated to microseconds so that the value in memory
/// equals what `format` writes and `parse` reads back.
pub fn now() -> NaiveDateTime {
    let now = Local::now().naive_local();
    let micros_as_nanos = now.nanosecond() / 1_000 * 1_000;
    now.with_nanosecond(micros_as_nanos).unwrap_or(now)
}

/// Formats like Python's `isoformat()`, except that the six fraction digits are always written
/// (Python drops them when the microsecond is zero; both forms parse everywhere).
pub fn format(ts: NaiveDateTime) -> String {
    ts.format("%Y-%m-%dT%H:%M:%S%.6f").to_string()
}

/// `format(now())`.
pub fn now_string() -> String {
    format(now())
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.f{1,9}]` (a space may replace the `T`), optionally followed by
/// `Z` or a `+HH:MM`/`-HH:MM` offset; times with an offset are converted to local naive time.
pub fn parse(s: &str) -> Option<NaiveDateTime> {
    let (naive_part, offset_secs) = split_offset(s)?;
    let naive = parse_naive(naive_part)?;
    match offset_secs {
        None => Some(naive),
        Some(offset) => {
            let utc = naive.checked_sub_signed(Duration::seconds(i64::from(offset)))?;
            Some(Local.from_utc_datetime(&utc).naive_local())
        }
    }
}

/// Converts a local naive time to a `SystemTime`.
pub fn to_system(ts: NaiveDateTime) -> SystemTime {
    let local = match Local.from_local_datetime(&ts).earliest() {
        Some(local) => local,
        // The wall-clock time falls into a DST gap and never happened; an hour later it exists,
        // so map it to the instant one hour before that.
        None => Local
            .from_local_datetime(&(ts + Duration::hours(1)))
            .earliest()
            .map(|t| t - Duration::hours(1))
            .unwrap_or_else(|| Local.from_utc_datetime(&ts)),
    };
    SystemTime::from(local)
}

/// Converts a `SystemTime` to local naive time.
pub fn from_system(t: SystemTime) -> NaiveDateTime {
    DateTime::<Local>::from(t).naive_local()
}

/// Splits a trailing `Z` or `±HH:MM` off `s`; returns the rest and the offset in seconds east.
fn split_offset(s: &str) -> Option<(&str, Option<i32>)> {
    if let Some(rest) = s.strip_suffix('Z').or_else(|| s.strip_suffix('z')) {
        return Some((rest, Some(0)));
    }
    // The date and time take the first 19 bytes; a sign after them starts an offset.
    let sign_at = s
        .char_indices()
        .skip(19)
        .find(|&(_, c)| c == '+' || c == '-')
        .map(|(i, _)| i);
    let Some(at) = sign_at else {
        return Some((s, None));
    };
    let offset = &s.as_bytes()[at + 1..];
    if offset.len() != 5 || offset[2] != b':' {
        return None;
    }
    let hours = two_digits(&offset[0..2])?;
    let minutes = two_digits(&offset[3..5])?;
    if hours > 23 || minutes > 59 {
        return None;
    }
    let secs = i32::try_from(hours * 3600 + minutes * 60).ok()?;
    let secs = if s.as_bytes()[at] == b'-' {
        -secs
    } else {
        secs
    };
    Some((&s[..at], Some(secs)))
}

fn parse_naive(s: &str) -> Option<NaiveDateTime> {
    let b = s.as_bytes();
    if b.len() < 19
        || b[4] != b'-'
        || b[7] != b'-'
        || (b[10] != b'T' && b[10] != b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let year = i32::try_from(digits(&b[0..4])?).ok()?;
    let date = NaiveDate::from_ymd_opt(year, two_digits(&b[5..7])?, two_digits(&b[8..10])?)?;
    let (hour, min, sec) = (
        two_digits(&b[11..13])?,
        two_digits(&b[14..16])?,
        two_digits(&b[17..19])?,
    );
    let nanos = match &b[19..] {
        [] => 0,
        [b'.', frac @ ..] if (1..=9).contains(&frac.len()) => {
            let value = digits(frac)?;
            let scale = 10u32.pow(9 - u32::try_from(frac.len()).ok()?);
            value * scale
        }
        _ => return None,
    };
    let time = NaiveTime::from_hms_nano_opt(hour, min, sec, nanos)?;
    Some(NaiveDateTime::new(date, time))
}

fn two_digits(b: &[u8]) -> Option<u32> {
    if b.len() == 2 {
        digits(b)
    } else {
        None
    }
}

/// Parses ASCII digits only (no sign, no whitespace); at most nine, so it fits a `u32`.
fn digits(b: &[u8]) -> Option<u32> {
    if b.is_empty() || b.len() > 9 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(b.iter().fold(0, |acc, d| acc * 10 + u32::from(d - b'0')))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f").unwrap()
    }

    #[test]
    fn format_always_writes_six_fraction_digits() {
        assert_eq!(
            format(ts("2026-11-28 10:05:00.123456")),
            "2026-11-28T10:05:00.123456"
        );
        assert_eq!(
            format(ts("2026-11-28 10:00:00")),
            "2026-11-28T10:00:00.000000"
        );
        assert_eq!(
            format(ts("2026-01-02 03:04:05.000007")),
            "2026-01-02T03:04:05.000007"
        );
    }

    #[test]
    fn now_round_trips_through_format_and_parse() {
        let t = now();
        assert_eq!(parse(&format(t)), Some(t));
        assert_eq!(
            parse(&now_string()).map(|t| t.nanosecond() % 1_000),
            Some(0)
        );
    }

    #[test]
    fn parses_fixture_timestamps() {
        for s in ["2026-11-29T09:07:09.878093", "2026-11-29T09:07:09.898360"] {
            let parsed = parse(s).unwrap();
            assert_eq!(format(parsed), s);
        }
    }

    #[test]
    fn parses_fraction_lengths_and_space_separator() {
        assert_eq!(
            parse("2026-11-28T10:05:00"),
            Some(ts("2026-11-28 10:05:00"))
        );
        assert_eq!(
            parse("2026-11-28 10:05:00.5"),
            Some(ts("2026-11-28 10:05:00.5"))
        );
        let nanos = parse("2026-11-28T10:05:00.123456789").unwrap();
        assert_eq!(nanos.nanosecond(), 123_456_789);
        assert_eq!(format(nanos), "2026-11-28T10:05:00.123456");
    }

    #[test]
    fn rejects_malformed_input() {
        for s in [
            "",
            "2026-11-28",
            "2026-11-28T10:05",
            "2026-11-28T10:05:00.",
            "2026-11-28T10:05:00.1234567890",
            "2026-13-28T10:05:00",
            "2026-11-28X10:05:00",
            "2026-11-28T10:05:00+0100",
            "2026-11-28T10:05:00+01:00:00",
            "2026-11-28T10:05:00 junk",
            "+026-11-28T10:05:00",
        ] {
            assert_eq!(parse(s), None, "{s:?}");
        }
    }

    #[test]
    fn converts_z_and_offsets_to_local_time() {
        let instant = Local.from_utc_datetime(&ts("2026-11-28 10:05:00.25"));
        let expected = instant.naive_local();
        assert_eq!(parse("2026-11-28T10:05:00.25Z"), Some(expected));
        assert_eq!(parse("2026-11-28T12:05:00.25+02:00"), Some(expected));
        assert_eq!(parse("2026-11-28T06:35:00.25-03:30"), Some(expected));
        assert_eq!(parse("2026-11-28 10:05:00.250000+00:00"), Some(expected));
    }

    #[test]
    fn system_time_round_trip() {
        let t = now();
        assert_eq!(from_system(to_system(t)), t);
        let sys = SystemTime::now();
        let back = to_system(from_system(sys));
        let diff = back.duration_since(sys).unwrap_or_else(|e| e.duration());
        assert!(diff.as_micros() < 1, "{diff:?}");
    }
}

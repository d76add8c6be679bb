//! Durations, sizes and rate-limit reserves as config.yml writes them, and a value shown in a
//! message. Text in, number out: no knowledge of keys or files.

use std::time::Duration;

use serde_yaml_ng::Value;

use super::RateLimitReserve;

/// Go's `time.Duration` bound: distribution refuses anything longer (about 292 years), and so does
/// regmirror, which keeps `Instant + duration` from overflowing wherever a duration is used.
const MAX_DURATION: Duration = Duration::from_nanos(i64::MAX as u64);

/// The units of Go's `time.ParseDuration`.
const GO_DURATION_UNITS: [&str; 7] = ["ns", "us", "µs", "ms", "s", "m", "h"];

/// Go-style durations as distribution writes them: `168h`, `30m`, `1h30m`, `45s`, `500ms`, `1.5h`,
/// `0`. humantime does the arithmetic (checked: an overflow is an error); only Go's units are
/// accepted, so a file regmirror reads means the same to distribution (no `2d`, no `1M`, no spaces).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let example = format!("{text:?} is not a duration like 168h, 30m or 1h30m");
    let trimmed = text.trim();
    let has_digits = trimmed.chars().any(|c| c.is_ascii_digit());
    if let Some(unit) = trimmed
        .split(|c: char| c.is_ascii_digit() || c == '.')
        .find(|unit| !unit.is_empty() && !GO_DURATION_UNITS.contains(unit))
        .filter(|_| has_digits)
    {
        return Err(format!("{example} (unknown unit {unit:?})"));
    }
    let duration = humantime::parse_duration(trimmed).map_err(|_| example.clone())?;
    if duration > MAX_DURATION {
        return Err(format!(
            "{example} (longer than Go's longest duration, {}h)",
            MAX_DURATION.as_secs() / 3600
        ));
    }
    Ok(duration)
}

/// Sizes as `storage.maxsize` writes them: `50GiB`, `500MB`, `1048576` (bytesize's grammar: units
/// are case-insensitive, `K`/`KB` are powers of ten, `Ki`/`KiB` powers of two). A size beyond
/// `u64::MAX` bytes saturates to it.
pub fn parse_size(text: &str) -> Result<u64, String> {
    text.trim()
        .parse::<bytesize::ByteSize>()
        .map(|size| size.as_u64())
        .map_err(|_| format!("{text:?} is not a size like 50GiB or 500MB"))
}

/// A size written as a number of bytes or as text (`4MiB`); `None` for anything else, a negative
/// number included.
pub(super) fn size_value(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64(),
        Value::String(text) => parse_size(text).ok(),
        _ => None,
    }
}

/// `ratelimit_reserve`: `10%` of the stated limit, or a number of pulls.
pub(super) fn parse_reserve(value: &Value) -> Result<RateLimitReserve, String> {
    let invalid = || format!("{} is not a reserve like 10% or 20 (pulls)", shown(value));
    match value {
        Value::Number(n) => n.as_u64().map(RateLimitReserve::Pulls).ok_or_else(invalid),
        Value::String(text) => match text.trim().strip_suffix('%') {
            Some(percent) => percent
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= 100)
                .map(RateLimitReserve::Percent)
                .ok_or_else(invalid),
            None => text
                .trim()
                .parse()
                .map(RateLimitReserve::Pulls)
                .map_err(|_| invalid()),
        },
        _ => Err(invalid()),
    }
}

/// A value as a message shows it: a scalar as written (a string quoted), a list or mapping by its
/// kind.
pub(super) fn shown(value: &Value) -> String {
    match value {
        Value::Null => "an empty value".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("{s:?}"),
        Value::Sequence(_) => "a list".to_owned(),
        Value::Mapping(_) => "a mapping".to_owned(),
        Value::Tagged(tagged) => format!("a value tagged {}", tagged.tag),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ok = |text: &str, expected: Duration| {
            assert_eq!(parse_duration(text), Ok(expected), "{text:?}");
        };
        ok("168h", super::super::DEFAULT_TTL);
        ok("0", Duration::ZERO);
        ok("1m30s", Duration::from_secs(90));
        ok("1h30m", Duration::from_secs(5400));
        ok("30m", Duration::from_secs(1800));
        ok("45s", Duration::from_secs(45));
        ok("250ms", Duration::from_millis(250));
        ok("500ms", Duration::from_millis(500));
        ok("1.5h", Duration::from_secs(5400));
        ok(" 10m ", Duration::from_secs(600));
        ok("1h0m0.5s", Duration::from_millis(3_600_500));
        ok("1500us", Duration::from_micros(1500));
        ok("2562047h", Duration::from_secs(2_562_047 * 3600));
        let huge_hours = format!("{}h", "9".repeat(400));
        for bad in [
            "10",
            "h",
            "",
            "-1h",
            "1x",
            "5 days",
            "2d",
            "1M",
            "1h 30m",
            "2562048h",
            "18446744073709551615s",
            "forever",
            &huge_hours,
        ] {
            let e = parse_duration(bad).unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
        assert_eq!(
            parse_duration("forever").unwrap_err(),
            "\"forever\" is not a duration like 168h, 30m or 1h30m",
            "no parser's wording"
        );
        assert!(
            parse_duration("2d")
                .unwrap_err()
                .ends_with("(unknown unit \"d\")")
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("50GiB").unwrap(), 50 << 30);
        assert_eq!(parse_size("500MB").unwrap(), 500_000_000);
        assert_eq!(parse_size("6MB").unwrap(), 6_000_000);
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert_eq!(parse_size("1048576").unwrap(), 1 << 20);
        assert_eq!(parse_size(" 2 KiB ").unwrap(), 2048);
        assert_eq!(parse_size("1.5GB").unwrap(), 1_500_000_000);
        assert_eq!(
            parse_size(&format!("{}GiB", "9".repeat(400))).unwrap(),
            u64::MAX
        );
        for bad in ["lots", "5 parsecs", "", "GiB", "-5MB", "1.2.3GB"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_size("lots").unwrap_err(),
            "\"lots\" is not a size like 50GiB or 500MB",
            "no parser's wording"
        );
        assert_eq!(size_value(&Value::from(-1)), None, "a negative size");
    }
}

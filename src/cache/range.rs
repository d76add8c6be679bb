//! Single `Range: bytes=…` requests, as blob clients send them to resume downloads, and the
//! `Content-Range` of a 206 answering one (a fleet replica resuming a download it was following).
//!
//! The grammar and the checks against the blob's size are `http-range-header`'s (RFC 9110
//! §14.1.2); this module only decides which answers regmirror serves as one 206 and which as the
//! whole blob.

use http_range_header::{RangeInvalid, RangeRejected, RangeUnsatisfiableError, parse_range_header};

use crate::registry::{ErrorCode, RegistryError};

/// Bytes `start..end` (end exclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

/// Parses `bytes=a-b`, `bytes=a-` or `bytes=-n` against `size`. `Ok(None)`: serve the whole blob
/// (no usable single range: another unit, several ranges, or a suffix of an empty blob).
/// `Err(())`: a malformed or unsatisfiable `bytes` range. An end past the blob is clamped to it,
/// and `Ok(Some(r))` always has `r.start < r.end <= size`.
#[allow(clippy::result_unit_err)]
pub fn parse_range(header: &str, size: u64) -> Result<Option<ByteRange>, ()> {
    let parsed = match parse_range_header(header.trim()) {
        Ok(parsed) if parsed.len() == 1 => parsed,
        Ok(_) | Err(RangeUnsatisfiableError::Rejected(RangeRejected::TooMany)) => return Ok(None),
        Err(RangeUnsatisfiableError::Invalid(RangeInvalid::DoesNotStartWithToken)) => {
            return Ok(None);
        }
        Err(_) => return Err(()),
    };
    let ranges = parsed.validate(size).map_err(|_| ())?;
    // Validation leaves `start <= end < size`, so `end + 1` cannot overflow.
    Ok(ranges.first().map(|inclusive| ByteRange {
        start: *inclusive.start(),
        end: *inclusive.end() + 1,
    }))
}

/// A `Range` header against a known size: `Ok(None)` serves the whole blob (no header, an
/// unknown size, or no usable single range), an unsatisfiable range is RANGE_INVALID.
pub(crate) fn resolve(
    range: Option<&str>,
    size: Option<u64>,
) -> Result<Option<ByteRange>, RegistryError> {
    let (Some(range), Some(size)) = (range, size) else {
        return Ok(None);
    };
    parse_range(range, size).map_err(|()| {
        RegistryError::new(
            ErrorCode::RangeInvalid,
            format!("range {range:?} is not satisfiable for {size} bytes"),
        )
    })
}

/// The first byte and the total size (`None` for `*`) of a `Content-Range: bytes a-b/total`
/// answer; `None` when the header is not that.
pub fn content_range(header: &str) -> Option<(u64, Option<u64>)> {
    let rest = header.trim().strip_prefix("bytes ")?;
    let (span, total) = rest.split_once('/')?;
    let (start, end) = span.split_once('-')?;
    let (start, end): (u64, u64) = (start.parse().ok()?, end.parse().ok()?);
    let total = match total {
        "*" => None,
        total => {
            let total: u64 = total.parse().ok()?;
            if end >= total {
                return None;
            }
            Some(total)
        }
    };
    (start <= end).then_some((start, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges() {
        assert_eq!(content_range("bytes 100-999/1000"), Some((100, Some(1000))));
        assert_eq!(content_range(" bytes 0-0/* "), Some((0, None)));
        for wrong in [
            "bytes 100-999/999",
            "bytes 5-4/10",
            "bytes */1000",
            "items 0-1/2",
            "bytes 0-1",
            "bytes x-1/2",
            "",
        ] {
            assert_eq!(content_range(wrong), None, "{wrong:?}");
        }
    }

    #[test]
    fn ranges() {
        let r = |start, end| Ok(Some(ByteRange { start, end }));
        let max = u64::MAX;
        let cases: Vec<(String, u64, Result<Option<ByteRange>, ()>)> = vec![
            ("bytes=0-99".into(), 1000, r(0, 100)),
            ("bytes=500-".into(), 1000, r(500, 1000)),
            ("bytes=-100".into(), 1000, r(900, 1000)),
            ("bytes=-5000".into(), 1000, r(0, 1000)),
            ("bytes=900-5000".into(), 1000, r(900, 1000)),
            ("bytes=999-999".into(), 1000, r(999, 1000)),
            ("bytes=0-0".into(), 1000, r(0, 1)),
            ("bytes=0-0".into(), 1, r(0, 1)),
            ("Bytes=0-0".into(), 10, r(0, 1)),
            // An end past the size, up to u64::MAX and beyond, is clamped (RFC 9110 §14.1.2).
            (format!("bytes=0-{max}"), 1000, r(0, 1000)),
            (format!("bytes=5-{max}"), 1000, r(5, 1000)),
            ("bytes=5-99999999999999999999999".into(), 1000, r(5, 1000)),
            (format!("bytes=0-{max}"), max, r(0, max)),
            (format!("bytes={}-{max}", max - 1), max, r(max - 1, max)),
            // A huge suffix selects the whole blob.
            (format!("bytes=-{max}"), 1000, r(0, 1000)),
            ("bytes=-99999999999999999999999".into(), 1000, r(0, 1000)),
            // Whitespace around the header and after `=` is tolerated, not inside a range.
            ("  bytes=0-99  ".into(), 1000, r(0, 100)),
            ("bytes= 0-99".into(), 1000, r(0, 100)),
            ("bytes=0 - 99".into(), 1000, Err(())),
            // Not satisfiable.
            ("bytes=1000-".into(), 1000, Err(())),
            ("bytes=1000-2000".into(), 1000, Err(())),
            (format!("bytes={max}-"), 1000, Err(())),
            (format!("bytes={max}-{max}"), 1000, Err(())),
            (format!("bytes={max}-"), max, Err(())),
            ("bytes=0-0".into(), 0, Err(())),
            ("bytes=-0".into(), 1000, Err(())),
            ("bytes=-0".into(), 0, Err(())),
            // Malformed.
            ("bytes=5-4".into(), 1000, Err(())),
            ("bytes=x-1".into(), 1000, Err(())),
            ("bytes=-".into(), 1000, Err(())),
            ("bytes=".into(), 1000, Err(())),
            ("bytes=+1-2".into(), 1000, Err(())),
            ("bytes=--1".into(), 1000, Err(())),
            (format!("bytes=0-{}", "9".repeat(40)), 1000, Err(())),
            // The whole blob: several ranges, another unit, a suffix of an empty blob.
            ("bytes=0-1,5-6".into(), 1000, Ok(None)),
            ("bytes=0-0,0-0,0-0".into(), 1000, Ok(None)),
            ("items=0-1".into(), 1000, Ok(None)),
            ("".into(), 1000, Ok(None)),
            ("bytes".into(), 1000, Ok(None)),
            ("bytes=-5".into(), 0, Ok(None)),
        ];
        for (header, size, expected) in cases {
            assert_eq!(parse_range(&header, size), expected, "{header:?} of {size}");
        }
    }
}

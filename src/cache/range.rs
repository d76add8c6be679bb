//! Single `Range: bytes=…` requests, as blob clients send them to resume downloads.

/// Bytes `start..end` (end exclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

/// Parses `bytes=a-b`, `bytes=a-` or `bytes=-n` against `size`. `Ok(None)`: serve the whole blob
/// (no usable single range, e.g. several ranges or another unit). `Err(())`: not satisfiable.
#[allow(clippy::result_unit_err)]
pub fn parse_range(header: &str, size: u64) -> Result<Option<ByteRange>, ()> {
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Ok(None);
    };
    let parse = |s: &str| s.trim().parse::<u64>().map_err(|_| ());
    let span = match (first.trim(), last.trim()) {
        ("", "") => return Err(()),
        ("", suffix) => {
            let n = parse(suffix)?;
            if n == 0 {
                return Err(());
            }
            ByteRange {
                start: size.saturating_sub(n),
                end: size,
            }
        }
        (start, "") => ByteRange {
            start: parse(start)?,
            end: size,
        },
        (start, end) => {
            let (start, end) = (parse(start)?, parse(end)?);
            if end < start {
                return Err(());
            }
            ByteRange {
                start,
                end: (end + 1).min(size),
            }
        }
    };
    if span.start >= size {
        return Err(());
    }
    Ok(Some(span))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let r = |start, end| Ok(Some(ByteRange { start, end }));
        assert_eq!(parse_range("bytes=0-99", 1000), r(0, 100));
        assert_eq!(parse_range("bytes=500-", 1000), r(500, 1000));
        assert_eq!(parse_range("bytes=-100", 1000), r(900, 1000));
        assert_eq!(parse_range("bytes=-5000", 1000), r(0, 1000));
        assert_eq!(parse_range("bytes=900-5000", 1000), r(900, 1000));
        assert_eq!(parse_range("bytes=999-999", 1000), r(999, 1000));
        assert_eq!(parse_range("bytes=1000-", 1000), Err(()));
        assert_eq!(parse_range("bytes=5-4", 1000), Err(()));
        assert_eq!(parse_range("bytes=-0", 1000), Err(()));
        assert_eq!(parse_range("bytes=x-1", 1000), Err(()));
        assert_eq!(parse_range("bytes=0-1,5-6", 1000), Ok(None));
        assert_eq!(parse_range("items=0-1", 1000), Ok(None));
    }
}

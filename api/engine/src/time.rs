//! Timestamps as the Docker API writes and reads them: RFC 3339 with nanoseconds in UTC
//! (`2024-05-01T12:34:56.123456789Z`), and Unix seconds with a fraction in query strings.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Days since 1970-01-01 to a civil date (proleptic Gregorian).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// A civil date to days since 1970-01-01.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from(if m > 2 { m - 3 } else { m + 9 });
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// RFC 3339 with nanoseconds, UTC.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (y, mo, day) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

/// Docker's zero time, for "never" (e.g. FinishedAt of a container that never ran).
pub const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// Parses RFC 3339 (`Z` or `±hh:mm` offsets, optional fraction).
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || (b[10] != b'T' && b[10] != b't') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<u32>().ok();
    let (y, mo, d) = (num(0..4)? as i64, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut nanos = 0u32;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let mut n: u64 = frac[..digits.min(9)].parse().ok()?;
        for _ in digits.min(9)..9 {
            n *= 10;
        }
        nanos = n as u32;
        rest = &frac[digits..];
    }
    let offset: i64 = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && (rest.starts_with('+') || rest.starts_with('-')) => {
            let oh: i64 = rest[1..3].parse().ok()?;
            let om: i64 = rest[4..6].parse().ok()?;
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            sign * (oh * 3600 + om * 60)
        }
        _ => return None,
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + i64::from(h * 3600 + mi * 60 + se) - offset;
    if secs < 0 {
        return Some(UNIX_EPOCH);
    }
    Some(UNIX_EPOCH + Duration::new(secs as u64, nanos))
}

/// Parses what the Docker CLI sends for `since`/`until`: Unix seconds with an optional
/// fraction (`1700000000.123456789`), or RFC 3339.
pub fn parse_api_time(s: &str) -> Option<SystemTime> {
    if let Some(t) = parse_rfc3339(s) {
        return Some(t);
    }
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: u64 = whole.parse().ok()?;
    let mut nanos = 0u64;
    if !frac.is_empty() {
        if !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let digits = &frac[..frac.len().min(9)];
        nanos = digits.parse().ok()?;
        for _ in digits.len()..9 {
            nanos *= 10;
        }
    }
    Some(UNIX_EPOCH + Duration::new(secs, nanos as u32))
}

/// Go's `time.ParseDuration` (`24h`, `1h30m`, `1.5s`, `-10m`): seconds, negative for a
/// leading `-`. `None` for anything else, `0` with no unit included.
pub fn parse_go_duration(s: &str) -> Option<f64> {
    let (sign, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (-1.0, &s[1..]),
        Some(b'+') => (1.0, &s[1..]),
        _ => (1.0, s),
    };
    if rest == "0" {
        return Some(0.0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total = 0.0;
    while !rest.is_empty() {
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, tail) = rest.split_at(end);
        if number.is_empty() || number == "." {
            return None;
        }
        let value: f64 = number.parse().ok()?;
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_end);
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += value * scale;
        rest = next;
    }
    total.is_finite().then_some(sign * total)
}

/// A time in a filter (`until`), as dockerd reads it: a Go duration back from `now`
/// (`24h`), RFC 3339, or Unix seconds with an optional fraction.
pub fn parse_filter_time(s: &str, now: SystemTime) -> Option<SystemTime> {
    if s != "0" {
        if let Some(secs) = parse_go_duration(s) {
            let d = Duration::try_from_secs_f64(secs.abs()).ok()?;
            return if secs >= 0.0 {
                Some(now.checked_sub(d).unwrap_or(UNIX_EPOCH))
            } else {
                now.checked_add(d)
            };
        }
    }
    parse_api_time(s)
}

/// Seconds since the epoch, for the API's integer timestamps.
pub fn unix_secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_times_as_dockerd_reads_them() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let back = |s: &str| parse_filter_time(s, now).map(unix_secs);
        assert_eq!(back("24h"), Some(1_700_000_000 - 86_400));
        assert_eq!(back("1h30m"), Some(1_700_000_000 - 5_400));
        assert_eq!(back("1.5s").map(|s| s < 1_700_000_000), Some(true));
        assert_eq!(back("-10m"), Some(1_700_000_600));
        assert_eq!(back("1600000000"), Some(1_600_000_000));
        assert_eq!(back("0"), Some(0));
        assert_eq!(back("2023-11-14T22:13:20Z"), Some(1_700_000_000));
        for bad in ["", "h", "10", "10x", "1h-", "abc"] {
            assert_eq!(
                parse_go_duration(bad),
                None,
                "{bad}: a Go duration needs units"
            );
        }
        assert_eq!(back("abc"), None);
    }

    #[test]
    fn formats_and_parses() {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        let s = rfc3339(t);
        assert_eq!(s, "2023-11-14T22:13:20.123456789Z");
        assert_eq!(parse_rfc3339(&s), Some(t));
        assert_eq!(
            parse_rfc3339("2023-11-14T23:13:20+01:00"),
            Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        );
        assert_eq!(
            parse_api_time("1700000000.5"),
            Some(UNIX_EPOCH + Duration::new(1_700_000_000, 500_000_000))
        );
        assert_eq!(
            parse_api_time("1700000000"),
            Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        );
        assert_eq!(parse_api_time("nonsense"), None);
        assert_eq!(parse_rfc3339("2023-13-01T00:00:00Z"), None);
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        for days in [-1000i64, 0, 59, 60, 365, 11_016, 19_000, 30_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }
}

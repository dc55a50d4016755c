//! What `--at` accepts: an LSN (`0/3A41F10`), a time (`2026-11-21 22:10:05.123+00`, ISO 8601
//! with `T` or a space, a `Z`/`±HH[:MM]` offset, UTC if none — the format Postgres's `now()`
//! prints), `@<unix seconds>`, or the name of a restore point.

use anyhow::{bail, Result};
use walproto::Lsn;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Lsn(Lsn),
    /// Microseconds since the Unix epoch, UTC.
    Time(i64),
    RestorePoint(String),
}

impl Target {
    pub fn parse(s: &str) -> Result<Target> {
        let s = s.trim();
        if s.is_empty() {
            bail!("--at needs an LSN (0/3A41F10), a time (2026-11-21 22:10:05+00) or a restore point name");
        }
        if let Some(secs) = s.strip_prefix('@') {
            let v: f64 = secs
                .parse()
                .map_err(|_| anyhow::anyhow!("{s:?}: after @ comes a Unix time in seconds"))?;
            return Ok(Target::Time((v * 1e6) as i64));
        }
        if looks_like_lsn(s) {
            return match s.parse::<Lsn>() {
                Ok(l) => Ok(Target::Lsn(l)),
                Err(e) => bail!("{s:?} is not a valid LSN: {e}"),
            };
        }
        if s.len() >= 10 && s.as_bytes()[4] == b'-' && s[..4].bytes().all(|b| b.is_ascii_digit()) {
            return parse_time(s).map(Target::Time);
        }
        Ok(Target::RestorePoint(s.to_string()))
    }
}

/// Hex on both sides of a `/`, or a mistyped LSN: a short number, a `/`, then anything
/// (`0/XYZ`, `0/16B37A8Z`), which gets "not a valid LSN" rather than "no restore point named".
/// Restore point names that start like that are not reachable by name through `--at`.
fn looks_like_lsn(s: &str) -> bool {
    match s.split_once('/') {
        Some((a, b)) => {
            let hex = |x: &str| !x.is_empty() && x.bytes().all(|c| c.is_ascii_hexdigit());
            let short_number =
                !a.is_empty() && a.len() <= 8 && a.bytes().all(|c| c.is_ascii_digit());
            (hex(a) && hex(b)) || (short_number && !b.is_empty())
        }
        None => false,
    }
}

/// `YYYY-MM-DD[( |T)HH:MM[:SS[.ffffff]]][Z|±HH[:MM]]` → microseconds since the epoch.
pub fn parse_time(s: &str) -> Result<i64> {
    let bad = || anyhow::anyhow!("{s:?} is not a time like 2026-11-21 22:10:05.123+00");
    let (date, rest) = s.split_at(10.min(s.len()));
    let d: Vec<&str> = date.split('-').collect();
    if d.len() != 3 {
        return Err(bad());
    }
    let (y, m, day): (i64, i64, i64) = (
        d[0].parse().map_err(|_| bad())?,
        d[1].parse().map_err(|_| bad())?,
        d[2].parse().map_err(|_| bad())?,
    );
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) {
        return Err(bad());
    }
    let rest = rest.trim_start_matches([' ', 'T']);
    // Split the offset off the clock part.
    let (clock, offset_secs) = match rest.find(['Z', '+', '-']) {
        Some(i) => (&rest[..i], parse_offset(&rest[i..]).ok_or_else(bad)?),
        None => (rest, 0),
    };
    let mut micros_of_day = 0i64;
    if !clock.trim().is_empty() {
        let parts: Vec<&str> = clock.trim().split(':').collect();
        if parts.len() < 2 || parts.len() > 3 {
            return Err(bad());
        }
        let h: i64 = parts[0].parse().map_err(|_| bad())?;
        let mi: i64 = parts[1].parse().map_err(|_| bad())?;
        let (sec, frac) = match parts.get(2) {
            Some(p) => match p.split_once('.') {
                Some((a, f)) => (
                    a.parse::<i64>().map_err(|_| bad())?,
                    frac_micros(f).ok_or_else(bad)?,
                ),
                None => (p.parse::<i64>().map_err(|_| bad())?, 0),
            },
            None => (0, 0),
        };
        if h > 23 || mi > 59 || sec > 60 {
            return Err(bad());
        }
        micros_of_day = ((h * 60 + mi) * 60 + sec) * 1_000_000 + frac;
    }
    let days = days_from_civil(y, m, day);
    Ok(days * 86_400_000_000 + micros_of_day - offset_secs * 1_000_000)
}

fn frac_micros(f: &str) -> Option<i64> {
    if f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut digits: String = f.chars().take(6).collect();
    while digits.len() < 6 {
        digits.push('0');
    }
    digits.parse().ok()
}

fn parse_offset(s: &str) -> Option<i64> {
    if s == "Z" {
        return Some(0);
    }
    let sign = match s.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let body = s[1..].replace(':', "");
    let (h, m) = match body.len() {
        2 => (body.parse::<i64>().ok()?, 0),
        4 => (
            body[..2].parse::<i64>().ok()?,
            body[2..].parse::<i64>().ok()?,
        ),
        _ => return None,
    };
    Some(sign * (h * 3600 + m * 60))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's civil algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Microseconds since the epoch → `YYYY-MM-DD HH:MM:SS.ffffff+00`.
pub fn format_time(micros: i64) -> String {
    let days = micros.div_euclid(86_400_000_000);
    let rem = micros.rem_euclid(86_400_000_000);
    // Inverse of days_from_civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let secs = rem / 1_000_000;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:06}+00",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        rem % 1_000_000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(
            Target::parse("0/3A41F10").unwrap(),
            Target::Lsn(Lsn(0x3A41F10))
        );
        assert_eq!(Target::parse("@1.5").unwrap(), Target::Time(1_500_000));
        assert_eq!(
            Target::parse("before-drop").unwrap(),
            Target::RestorePoint("before-drop".into())
        );
        assert!(Target::parse("").is_err());
        for bad in ["0/XYZ", "0/16B37A8Z", "1/123456789"] {
            let e = Target::parse(bad).map(|_| ()).unwrap_err().to_string();
            assert!(e.contains("not a valid LSN"), "{bad}: {e}");
        }
        assert!(matches!(Target::parse("12/"), Ok(Target::RestorePoint(_))));
        assert_eq!(
            Target::parse("cafe/v2").unwrap(),
            Target::RestorePoint("cafe/v2".into())
        );
        assert!(Target::parse("2026-13-01 00:00").is_err());
    }

    #[test]
    fn times_in_postgres_format() {
        assert_eq!(parse_time("1970-01-01 00:00:00+00").unwrap(), 0);
        assert_eq!(parse_time("1970-01-02").unwrap(), 86_400_000_000);
        // 2000-01-01 is Postgres's epoch: 946684800 s after Unix's.
        assert_eq!(
            parse_time("2000-01-01T00:00:00Z").unwrap(),
            946_684_800_000_000
        );
        assert_eq!(
            parse_time("2026-11-21 23:10:05.5+01").unwrap(),
            parse_time("2026-11-21 22:10:05.500000").unwrap()
        );
        assert_eq!(
            parse_time("2026-11-21 22:10:05.123456-05:30").unwrap(),
            parse_time("2026-11-22 03:40:05.123456Z").unwrap()
        );
        let t = parse_time("2026-11-21 22:10:05.123456+00").unwrap();
        assert_eq!(format_time(t), "2026-11-21 22:10:05.123456+00");
        assert!(parse_time("2026-11-21 25:00").is_err());
    }
}

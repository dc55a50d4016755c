//! Time travel in the connection string: `strata.at` (or `dbname@branch@<at>`) names a
//! moment the way `strata compute start --at` does — an LSN, a time (`2026-11-21
//! 22:10:05+00`, `@<unix seconds>`) or a restore point — and resolves to the LSN of the
//! state then, by asking `strata lsn-at` / `strata restore-points`. A moment that cannot be
//! read is an error the client sees: in the future, before the first commit, below the GC
//! cutoff (22023), an unknown restore point (42704).

use std::time::Duration;

use serde::Deserialize;

use crate::error::{sqlstate, ClientError};
use crate::names::Branch;
use crate::strata_cli::StrataCli;

const RESOLVE_LIMIT: Duration = Duration::from_secs(60);

/// `X/Y` (hex halves) as a u64.
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.trim().split_once('/')?;
    let hi = u32::from_str_radix(hi, 16).ok()?;
    let lo = u32::from_str_radix(lo, 16).ok()?;
    Some((u64::from(hi) << 32) | u64::from(lo))
}

/// How Postgres prints an LSN.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn as u32)
}

#[derive(Debug, PartialEq, Eq)]
enum Moment<'a> {
    Lsn(u64),
    Time(&'a str),
    RestorePoint(&'a str),
}

/// Which kind of moment `s` is, by the rules of `--at` (`strata/src/target.rs`): hex on
/// both sides of a '/' is an LSN, `@…` or `YYYY-…` a time, anything else a restore point.
fn classify(s: &str) -> Result<Moment<'_>, ClientError> {
    let s = s.trim();
    if let Some((a, b)) = s.split_once('/') {
        let hex = |x: &str| !x.is_empty() && x.bytes().all(|c| c.is_ascii_hexdigit());
        if hex(a) && hex(b) {
            return parse_lsn(s).map(Moment::Lsn).ok_or_else(|| {
                ClientError::bad_value(format!("strata.at \"{s}\" is not a valid LSN"))
            });
        }
    }
    let b = s.as_bytes();
    let dated = b.len() >= 10 && b[4] == b'-' && b[..4].iter().all(u8::is_ascii_digit);
    if s.starts_with('@') || dated {
        return Ok(Moment::Time(s));
    }
    Ok(Moment::RestorePoint(s))
}

#[derive(Deserialize)]
struct LsnAt {
    lsn: String,
    time: String,
    readable: bool,
    gc_cutoff_lsn: String,
}

#[derive(Deserialize)]
struct RestorePoint {
    name: String,
    lsn: String,
}

/// The LSN of `at` on branch `b`.
pub async fn resolve(cli: &StrataCli, b: &Branch, at: &str) -> Result<u64, ClientError> {
    let on = ["--branch", &b.branch, "--tenant", &b.tenant];
    match classify(at)? {
        Moment::Lsn(l) => Ok(l),
        Moment::Time(t) => {
            let mut args = vec!["lsn-at", t];
            args.extend(on);
            let v = cli.json(&args, RESOLVE_LIMIT).await.map_err(|e| {
                ClientError::bad_value(format!("strata.at \"{t}\": {}", e.message()))
            })?;
            let r: LsnAt = serde_json::from_value(v.clone())
                .map_err(|_| ClientError::internal(format!("`strata lsn-at` printed {v}")))?;
            if in_future(&r.time) {
                return Err(ClientError::bad_value(format!(
                    "strata.at \"{t}\" ({}) is in the future",
                    r.time
                ))
                .with_hint("the latest state is the branch itself: connect without strata.at"));
            }
            if !r.readable {
                return Err(ClientError::bad_value(format!(
                    "strata.at \"{t}\" is LSN {} on branch \"{}\", below its GC cutoff {}: \
                     that state is garbage collected",
                    r.lsn, b.branch, r.gc_cutoff_lsn
                ))
                .with_hint(format!(
                    "the oldest readable state is at {}",
                    r.gc_cutoff_lsn
                )));
            }
            parse_lsn(&r.lsn).ok_or_else(|| {
                ClientError::internal(format!("`strata lsn-at` printed LSN {}", r.lsn))
            })
        }
        Moment::RestorePoint(name) => {
            let mut args = vec!["restore-points"];
            args.extend(on);
            let v = cli
                .json(&args, RESOLVE_LIMIT)
                .await
                .map_err(|e| ClientError::cannot_connect(e.message()))?;
            let points: Vec<RestorePoint> = serde_json::from_value(v.clone()).map_err(|_| {
                ClientError::internal(format!("`strata restore-points` printed {v}"))
            })?;
            let Some(p) = points.iter().find(|p| p.name == name) else {
                let known: Vec<&str> = points.iter().map(|p| p.name.as_str()).collect();
                return Err(ClientError::new(
                    sqlstate::UNDEFINED_OBJECT,
                    format!(
                        "restore point \"{name}\" does not exist on branch \"{}\"",
                        b.branch
                    ),
                )
                .with_hint(format!(
                    "restore points: {}; strata.at also takes a time or an LSN",
                    if known.is_empty() {
                        "none".into()
                    } else {
                        known.join(", ")
                    }
                )));
            };
            parse_lsn(&p.lsn).ok_or_else(|| {
                ClientError::internal(format!("`strata restore-points` printed LSN {}", p.lsn))
            })
        }
    }
}

/// Whether `strata lsn-at`'s normalized time (`YYYY-MM-DD HH:MM:SS.ffffff+00`) is later
/// than now.
fn in_future(time: &str) -> bool {
    let Some(naive) = time.strip_suffix("+00") else {
        return false;
    };
    chrono::NaiveDateTime::parse_from_str(naive, "%Y-%m-%d %H:%M:%S%.f")
        .is_ok_and(|t| t.and_utc() > chrono::Utc::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moments_are_classified_like_at() {
        assert_eq!(classify("0/16B37A8").unwrap(), Moment::Lsn(0x16B37A8));
        assert_eq!(classify("1/0").unwrap(), Moment::Lsn(1 << 32));
        assert_eq!(
            classify("2026-11-21 22:10:05+00").unwrap(),
            Moment::Time("2026-11-21 22:10:05+00")
        );
        assert_eq!(
            classify("@1700000000").unwrap(),
            Moment::Time("@1700000000")
        );
        assert_eq!(
            classify("before-drop").unwrap(),
            Moment::RestorePoint("before-drop")
        );
        assert!(classify("0/123456789").is_err());
        assert_eq!(format_lsn(0x1_0000_00AB), "1/AB");
        assert_eq!(parse_lsn("0/016B37A8"), Some(0x16B37A8));
    }

    #[test]
    fn future_times() {
        assert!(in_future("9999-01-01 00:00:00.000000+00"));
        assert!(!in_future("2001-01-01 00:00:00.000000+00"));
        assert!(!in_future("garbage"));
    }
}

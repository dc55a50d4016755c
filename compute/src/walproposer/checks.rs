//! The Postgres settings the walproposer depends on, checked at start with clear messages.

use anyhow::{bail, Context, Result};
use tracing::{info, warn};

use crate::pg::replication::create_physical_slot;
use crate::pg::{ConnConfig, PgConnection};

/// Parses `synchronous_standby_names` into its standby names (`FIRST n (...)`, `ANY n (...)`,
/// `n (...)` or a plain list). Returns (method, number, names); quoted names keep their case,
/// others are lower-cased as Postgres does.
pub fn parse_standby_names(s: &str) -> (String, u32, Vec<String>) {
    let s = s.trim();
    let mut rest = s;
    let mut method = "FIRST".to_string();
    let mut num = 1;
    let upper = s.to_ascii_uppercase();
    for kw in ["FIRST ", "ANY "] {
        if upper.starts_with(kw) {
            method = kw.trim().to_string();
            rest = s[kw.len()..].trim_start();
        }
    }
    if let Some(paren) = rest.find('(') {
        let head = rest[..paren].trim();
        if let Ok(n) = head.parse::<u32>() {
            num = n;
            rest = rest[paren + 1..].trim_end().trim_end_matches(')');
        }
    }
    let mut names = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut was_quoted = false;
    for c in rest.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                was_quoted = true;
            }
            ',' if !quoted => {
                push_name(&mut names, &cur, was_quoted);
                cur.clear();
                was_quoted = false;
            }
            c => cur.push(c),
        }
    }
    push_name(&mut names, &cur, was_quoted);
    (method, num, names)
}

fn push_name(names: &mut Vec<String>, cur: &str, quoted: bool) {
    let name = if quoted {
        cur.trim().to_string()
    } else {
        cur.trim().to_lowercase()
    };
    if !name.is_empty() {
        names.push(name);
    }
}

async fn show(conn: &mut PgConnection, name: &str) -> Result<String> {
    let rows = conn
        .simple_query(&format!("SHOW {name}"))
        .await
        .with_context(|| format!("SHOW {name}"))?;
    Ok(rows
        .first()
        .and_then(|r| r.first().cloned().flatten())
        .unwrap_or_default())
}

/// Checks `synchronous_standby_names`, `synchronous_commit` and `wal_level` over a normal
/// connection, and creates the physical slot (over a replication connection) if missing.
pub async fn check_postgres(pg: &ConnConfig, app: &str, slot: &str) -> Result<()> {
    let mut normal = pg.clone();
    normal.replication = false;
    normal.application_name = Some(format!("{app}_check"));
    let mut conn = PgConnection::connect(&normal)
        .await
        .with_context(|| format!("connecting to Postgres at {}:{}", pg.host, pg.port))?;
    if let Some(v) = conn.parameter("server_version") {
        if !v.starts_with("15") {
            warn!(server_version = v, "Strata is built for PostgreSQL 15");
        }
    }

    let ssn = show(&mut conn, "synchronous_standby_names").await?;
    let (method, num, names) = parse_standby_names(&ssn);
    let named = names.iter().any(|n| n == app || n == "*");
    if !named {
        bail!(
            "synchronous_standby_names = '{ssn}' does not name the walproposer's application \
             name '{app}': commits would not wait for the safekeepers. Set \
             synchronous_standby_names = '{app}' in postgresql.conf and reload"
        );
    }
    if names.len() > 1 {
        warn!(
            synchronous_standby_names = %ssn,
            "other standbys are named too: a commit may be acknowledged by them ({method} {num}) \
             without reaching a safekeeper majority; use synchronous_standby_names = '{app}'"
        );
    }

    let sc = show(&mut conn, "synchronous_commit").await?;
    match sc.as_str() {
        "on" | "remote_write" => {}
        "remote_apply" => warn!(
            "synchronous_commit = remote_apply: the walproposer never reports WAL as applied, so \
             commits would wait forever; use synchronous_commit = on"
        ),
        other => bail!(
            "synchronous_commit = {other}: commits would not wait for the safekeepers; set \
             synchronous_commit = on"
        ),
    }

    let wal_level = show(&mut conn, "wal_level").await?;
    if !matches!(wal_level.as_str(), "replica" | "logical") {
        bail!("wal_level = {wal_level}: streaming replication needs wal_level = replica (or logical); set it and restart Postgres");
    }

    let seg = show(&mut conn, "wal_segment_size").await?;
    if seg != "16MB" {
        bail!("wal_segment_size = {seg}: Strata stores WAL in 16 MB segments; initdb the cluster with the default --wal-segsize=16");
    }

    let rows = conn
        .simple_query(&format!(
            "SELECT slot_type FROM pg_replication_slots WHERE slot_name = '{}'",
            slot.replace('\'', "''")
        ))
        .await
        .context("reading pg_replication_slots")?;
    match rows.first().and_then(|r| r.first().cloned().flatten()) {
        Some(t) if t == "physical" => info!(slot, "replication slot exists"),
        Some(t) => bail!("replication slot '{slot}' exists but is {t}, not physical; drop it or pick another --slot"),
        None => {
            let mut repl = pg.clone();
            repl.replication = true;
            repl.application_name = Some(format!("{app}_check"));
            let mut rconn = PgConnection::connect(&repl)
                .await
                .context("opening a replication connection to create the slot")?;
            let created = create_physical_slot(&mut rconn, slot)
                .await
                .with_context(|| format!("creating physical replication slot '{slot}'"))?;
            info!(slot, created, "physical replication slot ready");
        }
    }
    Ok(())
}

/// Accepts 32 hex characters (a tenant or timeline id); returns them lower-cased.
pub fn parse_id(what: &str, s: &str) -> Result<String> {
    if s.len() != 32 || !s.chars().all(|c| c.is_ascii_hexdigit()) {
        bail!("{what} id {s:?} must be 32 hexadecimal characters");
    }
    Ok(s.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standby_names() {
        let p = |s: &str| parse_standby_names(s);
        assert_eq!(p("strata"), ("FIRST".into(), 1, vec!["strata".into()]));
        assert_eq!(
            p("Strata, b"),
            ("FIRST".into(), 1, vec!["strata".into(), "b".into()])
        );
        assert_eq!(
            p("ANY 2 (a, \"B\", c)"),
            ("ANY".into(), 2, vec!["a".into(), "B".into(), "c".into()])
        );
        assert_eq!(
            p("first 1 (strata)"),
            ("FIRST".into(), 1, vec!["strata".into()])
        );
        assert_eq!(
            p("2 (x, y)"),
            ("FIRST".into(), 2, vec!["x".into(), "y".into()])
        );
        assert_eq!(p("*"), ("FIRST".into(), 1, vec!["*".into()]));
        assert_eq!(p("").2, Vec::<String>::new());
    }

    #[test]
    fn ids() {
        assert_eq!(
            parse_id("tenant", "0123456789ABCDEF0123456789abcdef").unwrap(),
            "0123456789abcdef0123456789abcdef"
        );
        assert!(parse_id("tenant", "xyz").is_err());
        assert!(parse_id("tenant", "0123456789abcdef0123456789abcdeg").is_err());
    }
}

//! `strata query --at TIME "SQL"`: time travel, no durable branch created.
//!
//! With the cluster's proxy running, the query goes through it, as the cluster's own login
//! ([`strata_proxy::roles::CLUSTER_ROLE`], the compute password) with `strata.at` set to the
//! resolved LSN: the proxy's ephemeral compute for that branch and LSN serves it, so a second
//! query at the same moment (or a psql session there) reuses the compute, which stops after
//! the proxy's `ephemeral_idle_secs`. Connecting as a client keeps one registry of computes
//! (the proxy's, in memory, with its idle clocks) instead of sharing it across processes.
//! Without a proxy (or with `--ttl` or `--full-copy`, which ask for a compute of its own) a
//! read-only compute starts for the query and is removed after it (or after `--ttl`).
//!
//! Rows print as a table (`--tuples-only`: values only, `|`-separated, like `psql -At`);
//! `--json` gives each statement's rows as objects, typed from the column types.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use clap::Args;
use serde_json::{json, Value};
use strata_proxy::backend::{self, BackendError};
use strata_proxy::query::{QueryError, ResultSet};

use strata::cluster::daemon::State;
use strata::cluster::ClusterConfig;
use strata::computes::{self, StartRequest};
use strata::mgmt::Pageserver;
use strata::names::Names;
use strata::output::Output;
use strata::target::Target;

/// Longest wait for a session: the proxy may start the compute first (its own start deadline
/// is 180 s).
const LOGIN_LIMIT: Duration = Duration::from_secs(240);

#[derive(Args, Debug)]
pub struct QueryArgs {
    /// The SQL to run (several statements allowed).
    pub sql: String,
    /// The moment: an LSN, a time, or a restore point name.
    #[arg(long)]
    pub at: String,
    #[arg(long, default_value = "main")]
    pub branch: String,
    #[arg(long)]
    pub tenant: Option<String>,
    #[arg(long, default_value = "postgres")]
    pub database: String,
    /// Print only the values: one line per row, columns separated by '|' (like psql -At).
    #[arg(short = 't', long)]
    pub tuples_only: bool,
    /// A compute of its own, kept this many seconds for further queries (default: through
    /// the proxy's shared compute, or removed at once without a proxy). Expired ones are
    /// removed by the next strata command.
    #[arg(long)]
    pub ttl: Option<u64>,
    /// A compute of its own that copies every page before the query instead of fetching
    /// pages on first read.
    #[arg(long)]
    pub full_copy: bool,
}

/// Where the query ran.
struct Ran {
    lsn: String,
    via: String,
    results: Vec<ResultSet>,
}

pub fn run(dir: &Path, a: QueryArgs, out: &Output) -> Result<()> {
    let cfg = ClusterConfig::load(dir)?;
    let target = Target::parse(&a.at)?;
    let password = backend::compute_password(dir).map_err(|e| anyhow!(e.message))?;
    let proxy = match (&cfg.proxy, &password) {
        (Some(p), Some(_)) if a.ttl.is_none() && !a.full_copy => {
            matches!(strata::proxy::daemon(dir).state()?, State::Running(_)).then_some(p)
        }
        _ => None,
    };
    let ran = match proxy {
        Some(p) => through_proxy(dir, &cfg, &a, &target, &p.addr(), password.as_deref(), out)?,
        None => on_own_compute(dir, &cfg, &a, target, password.as_deref(), out)?,
    };
    let text = if a.tuples_only {
        tuples_only(&ran.results)
    } else {
        tables(&ran.results)
    };
    let last = ran.results.iter().rev().find(|r| !r.columns.is_empty());
    out.result(
        &text,
        json!({
            "lsn": ran.lsn, "via": ran.via,
            "rows": last.map(rows_json).unwrap_or_default(),
            "results": ran.results.iter().map(|r| json!({
                "command": r.command,
                "columns": r.columns.iter().map(|c| &c.name).collect::<Vec<_>>(),
                "rows": rows_json(r),
            })).collect::<Vec<_>>(),
            "output": tuples_only(&ran.results),
        }),
    );
    Ok(())
}

/// The LSN `target` means now (as `compute start --at` resolves it), then the query through
/// the proxy at that LSN.
fn through_proxy(
    dir: &Path,
    cfg: &ClusterConfig,
    a: &QueryArgs,
    target: &Target,
    addr: &str,
    password: Option<&str>,
    out: &Output,
) -> Result<Ran> {
    let names = Names::load(dir)?;
    let (tenant, tenant_id) = names.tenant(a.tenant.as_deref())?;
    let timeline = names.timeline(&tenant, &a.branch)?;
    let mut ps = Pageserver::connect(&cfg.pageserver.grpc_addr())?;
    strata::lsn::wait_for_committed_wal(cfg, &mut ps, &tenant_id, &timeline, false, out)?;
    let lsn = strata::lsn::resolve_lsn(&mut ps, &tenant_id, &timeline, target, true)?;
    let addr: SocketAddr = addr
        .parse()
        .with_context(|| format!("the proxy's address {addr:?}"))?;
    let lsn_text = lsn.to_string();
    let params = [
        ("user", strata_proxy::roles::CLUSTER_ROLE.to_string()),
        ("database", a.database.clone()),
        (
            "options",
            strata_proxy::route::strata_options(&tenant, &a.branch, Some(&lsn_text)),
        ),
        ("application_name", "strata query".to_string()),
    ];
    let results = query(addr, &params, password, &a.sql)
        .with_context(|| format!("through the proxy at {addr}"))?;
    Ok(Ran {
        lsn: lsn_text,
        via: format!("proxy {addr}"),
        results,
    })
}

/// A read-only compute of its own at `target`, removed after the query unless `--ttl`.
fn on_own_compute(
    dir: &Path,
    cfg: &ClusterConfig,
    a: &QueryArgs,
    target: Target,
    password: Option<&str>,
    out: &Output,
) -> Result<Ran> {
    let name = time_travel_name(&a.branch);
    let rec = computes::start(
        dir,
        StartRequest {
            branch: &a.branch,
            tenant: a.tenant.as_deref(),
            at: Some(target),
            read_only: true,
            name: Some(name.clone()),
            ttl_secs: a.ttl,
            full_copy: a.full_copy,
            settings: &[],
        },
        out,
    )?;
    let params = [
        ("user", backend::COMPUTE_USER.to_string()),
        ("database", a.database.clone()),
        ("application_name", "strata query".to_string()),
    ];
    let addr = SocketAddr::from(([127, 0, 0, 1], rec.port));
    let results = query(addr, &params, password, &a.sql);
    if a.ttl.is_none() {
        computes::remove(dir, cfg, &name)?;
    }
    Ok(Ran {
        lsn: rec.lsn,
        via: format!("compute {name}"),
        results: results?,
    })
}

/// Logs in at `addr` and runs `sql`; a server's error is the error, with its detail and hint.
fn query(
    addr: SocketAddr,
    params: &[(&str, String)],
    password: Option<&str>,
    sql: &str,
) -> Result<Vec<ResultSet>> {
    let params: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut session = backend::connect(addr, &params, password, LOGIN_LIMIT)
            .await
            .map_err(|e| match e {
                BackendError::Refused(e) => anyhow!(server_text(&e)),
                other => anyhow!(other),
            })?;
        strata_proxy::query::simple_query(&mut session.stream, sql)
            .await
            .map_err(|e| match e {
                QueryError::Server(e) => anyhow!(server_text(&e)),
                other => anyhow!(other),
            })
    })
}

/// A Postgres error as one text: message (SQLSTATE), detail, hint.
fn server_text(e: &strata_proxy::error::ClientError) -> String {
    let mut t = format!("{} (SQLSTATE {})", e.message, e.code);
    if let Some(d) = &e.detail {
        t.push_str(&format!("; {d}"));
    }
    if let Some(h) = &e.hint {
        t.push_str(&format!("; hint: {h}"));
    }
    t
}

/// The ephemeral compute's name: with the branch's name when that makes a valid name (a
/// branch named before the name rule, or a long one, does not).
fn time_travel_name(branch: &str) -> String {
    let pid = std::process::id();
    let with_branch = format!("timetravel-{branch}-{pid}");
    if strata::names::validate(strata::names::Kind::Compute, &with_branch).is_ok() {
        with_branch
    } else {
        format!("timetravel-{pid}")
    }
}

/// What `psql -At` prints: each row's values joined by '|' (NULL as nothing), one per line.
fn tuples_only(results: &[ResultSet]) -> String {
    let mut lines = Vec::new();
    for r in results {
        for row in &r.rows {
            let cells: Vec<&str> = row.iter().map(|v| v.as_deref().unwrap_or("")).collect();
            lines.push(cells.join("|"));
        }
    }
    lines.join("\n")
}

/// Each statement's rows as a table like psql's (numbers right-aligned, then the row
/// count); a statement without rows as its command tag.
fn tables(results: &[ResultSet]) -> String {
    let parts: Vec<String> = results
        .iter()
        .map(|r| {
            if r.columns.is_empty() {
                r.command.clone()
            } else {
                table(r)
            }
        })
        .collect();
    parts.join("\n\n")
}

fn table(r: &ResultSet) -> String {
    let width = |s: &str| s.chars().count();
    let mut widths: Vec<usize> = r.columns.iter().map(|c| width(&c.name)).collect();
    for row in &r.rows {
        for (w, v) in widths.iter_mut().zip(row) {
            *w = (*w).max(width(v.as_deref().unwrap_or("")));
        }
    }
    let numeric: Vec<bool> = r
        .columns
        .iter()
        .map(|c| NUMBER_TYPES.contains(&c.type_oid))
        .collect();
    let line = |cells: Vec<String>| format!(" {} ", cells.join(" | ")).trim_end().to_string();
    let mut out = vec![line(
        r.columns
            .iter()
            .zip(&widths)
            .map(|(c, &w)| format!("{:^w$}", c.name))
            .collect(),
    )];
    out.push(
        widths
            .iter()
            .map(|w| "-".repeat(w + 2))
            .collect::<Vec<_>>()
            .join("+"),
    );
    for row in &r.rows {
        out.push(line(
            row.iter()
                .zip(&widths)
                .zip(&numeric)
                .map(|((v, &w), num)| {
                    let v = v.as_deref().unwrap_or("");
                    if *num {
                        format!("{v:>w$}")
                    } else {
                        format!("{v:<w$}")
                    }
                })
                .collect(),
        ));
    }
    let n = r.rows.len();
    out.push(format!("({n} row{})", if n == 1 { "" } else { "s" }));
    out.join("\n")
}

/// int2, int4, int8, oid, float4, float8, numeric.
const NUMBER_TYPES: [u32; 7] = [21, 23, 20, 26, 700, 701, 1700];

/// A statement's rows as JSON objects by column name.
fn rows_json(r: &ResultSet) -> Vec<Value> {
    r.rows
        .iter()
        .map(|row| {
            let obj: serde_json::Map<String, Value> = r
                .columns
                .iter()
                .zip(row)
                .map(|(c, v)| (c.name.clone(), typed(c.type_oid, v.as_deref())))
                .collect();
            Value::Object(obj)
        })
        .collect()
}

/// A value as the JSON type its column's type gives cheaply: NULL as null, booleans,
/// integers and floats as JSON booleans and numbers, json and jsonb parsed; everything else
/// (numeric included: a JSON number would round it) as the text Postgres sent.
fn typed(type_oid: u32, v: Option<&str>) -> Value {
    let Some(v) = v else {
        return Value::Null;
    };
    let as_text = || Value::String(v.to_string());
    match type_oid {
        16 => match v {
            "t" => Value::Bool(true),
            "f" => Value::Bool(false),
            _ => as_text(),
        },
        20 | 21 | 23 | 26 => v
            .parse::<i64>()
            .map(Value::from)
            .unwrap_or_else(|_| as_text()),
        700 | 701 => v
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .unwrap_or_else(as_text),
        114 | 3802 => serde_json::from_str(v).unwrap_or_else(|_| as_text()),
        _ => as_text(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_proxy::query::Column;

    fn set() -> ResultSet {
        ResultSet {
            columns: vec![
                Column {
                    name: "id".into(),
                    type_oid: 23,
                },
                Column {
                    name: "note".into(),
                    type_oid: 25,
                },
                Column {
                    name: "ok".into(),
                    type_oid: 16,
                },
                Column {
                    name: "doc".into(),
                    type_oid: 3802,
                },
            ],
            rows: vec![
                vec![
                    Some("7".into()),
                    Some("seven".into()),
                    Some("t".into()),
                    Some(r#"{"a": 1}"#.into()),
                ],
                vec![Some("10".into()), None, Some("f".into()), None],
            ],
            command: "SELECT 2".into(),
        }
    }

    #[test]
    fn rows_as_table_values_and_typed_json() {
        let set_cmd = ResultSet {
            command: "SET".into(),
            ..ResultSet::default()
        };
        assert_eq!(
            tables(&[set_cmd.clone(), set()]),
            "SET\n\n \
             id | note  | ok |   doc\n\
             ----+-------+----+----------\n  \
             7 | seven | t  | {\"a\": 1}\n \
             10 |       | f  |\n\
             (2 rows)"
        );
        assert_eq!(
            tuples_only(&[set_cmd, set()]),
            "7|seven|t|{\"a\": 1}\n10||f|"
        );
        assert_eq!(
            Value::Array(rows_json(&set())),
            json!([
                {"id": 7, "note": "seven", "ok": true, "doc": {"a": 1}},
                {"id": 10, "note": null, "ok": false, "doc": null},
            ])
        );
        assert_eq!(typed(1700, Some("1.10")), json!("1.10"));
        assert_eq!(typed(701, Some("NaN")), json!("NaN"));
        assert_eq!(typed(701, Some("2.5")), json!(2.5));
    }
}

//! Where a connection goes, from its startup parameters:
//!
//! - `user`: a role the proxy knows ([`crate::roles`]); its tenant, unless
//!   `options=-c strata.tenant=NAME` names one (needed when several tenants have that role);
//! - `database`: `dbname`, `dbname@branch` or `dbname@branch@<at>`; or
//!   `options=-c strata.branch=NAME` and `-c strata.at=<at>`. The branch defaults to `main`;
//!   `<at>` is a time, an LSN or a restore point name (a time travel connection).
//!
//! The `strata.*` settings are taken out of `options`; everything else goes to the compute.

use crate::error::{sqlstate, ClientError};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub user: String,
    pub tenant: Option<String>,
    pub branch: String,
    pub at: Option<String>,
    pub database: String,
    /// Startup parameters for the compute, `user` and `database` left out.
    pub forward: Vec<(String, String)>,
}

pub const DEFAULT_BRANCH: &str = "main";
const DEFAULT_DATABASE: &str = "postgres";

/// The `strata.*` settings a connection may carry.
#[derive(Default)]
struct Settings {
    tenant: Option<String>,
    branch: Option<String>,
    at: Option<String>,
}

impl Route {
    pub fn from_params(params: &[(String, String)]) -> Result<Route, ClientError> {
        let mut user = None;
        let mut database = None;
        let mut settings = Settings::default();
        let mut forward = Vec::new();
        for (k, v) in params {
            match k.as_str() {
                "user" => user = Some(v.clone()),
                "database" => database = Some(v.clone()),
                "options" => {
                    let rest = take_strata_settings(v, &mut settings)?;
                    if !rest.is_empty() {
                        forward.push((k.clone(), rest));
                    }
                }
                "replication" if !matches!(v.as_str(), "false" | "off" | "no" | "0") => {
                    return Err(ClientError::new(
                        sqlstate::FEATURE_NOT_SUPPORTED,
                        "replication connections are not supported through the proxy",
                    ))
                }
                _ => forward.push((k.clone(), v.clone())),
            }
        }
        let user = user.filter(|u| !u.is_empty()).ok_or_else(|| {
            ClientError::new(
                sqlstate::INVALID_AUTHORIZATION,
                "no PostgreSQL user name specified in startup packet",
            )
        })?;
        let database = database.unwrap_or_default();
        let mut parts = database.splitn(3, '@');
        let dbname = parts.next().unwrap_or_default();
        let db_branch = parts.next().map(str::to_string);
        let db_at = parts.next().map(str::to_string);
        let branch = agree("branch", db_branch, settings.branch)?;
        let at = agree("at", db_at, settings.at)?;
        if branch.as_deref() == Some("") {
            return Err(ClientError::bad_value(format!(
                "database \"{database}\": no branch name after '@'"
            )));
        }
        if at.as_deref().is_some_and(|a| a.trim().is_empty()) {
            return Err(ClientError::bad_value(
                "strata.at is empty: give a time, an LSN or a restore point name",
            ));
        }
        Ok(Route {
            user,
            tenant: settings.tenant,
            branch: branch.unwrap_or_else(|| DEFAULT_BRANCH.into()),
            at,
            database: if dbname.is_empty() {
                DEFAULT_DATABASE.into()
            } else {
                dbname.into()
            },
            forward,
        })
    }
}

/// One value from the database name and one from `options`: they must agree.
fn agree(what: &str, a: Option<String>, b: Option<String>) -> Result<Option<String>, ClientError> {
    match (a, b) {
        (Some(a), Some(b)) if a != b => Err(ClientError::bad_value(format!(
            "the database name says {what} \"{a}\" and strata.{what} says \"{b}\""
        ))),
        (a, b) => Ok(a.or(b)),
    }
}

/// Splits `options` as Postgres does (`pg_split_opts`: whitespace separates, a backslash
/// makes the next character literal).
fn split_options(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_token = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c.is_whitespace() {
            if in_token {
                out.push(std::mem::take(&mut cur));
                in_token = false;
            }
            continue;
        }
        in_token = true;
        if c == '\\' {
            if let Some(n) = chars.next() {
                cur.push(n);
            }
        } else {
            cur.push(c);
        }
    }
    if in_token {
        out.push(cur);
    }
    out
}

/// `options` naming a target the way [`Route::from_params`] reads it (for clients the
/// cluster runs itself, like `strata query`).
pub fn strata_options(tenant: &str, branch: &str, at: Option<&str>) -> String {
    let mut o = format!(
        "-c strata.tenant={} -c strata.branch={}",
        escape_option(tenant),
        escape_option(branch)
    );
    if let Some(at) = at {
        o.push_str(&format!(" -c strata.at={}", escape_option(at)));
    }
    o
}

fn escape_option(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_whitespace() || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Takes the `strata.*` settings out of `options` (`-c name=value`, `-cname=value`,
/// `--name=value`); the rest, as Postgres would split it again.
fn take_strata_settings(options: &str, settings: &mut Settings) -> Result<String, ClientError> {
    let tokens = split_options(options);
    let mut rest: Vec<String> = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let tok = &tokens[i];
        let (setting, used) = if tok == "-c" {
            (tokens.get(i + 1).map(String::as_str), 2)
        } else if let Some(s) = tok.strip_prefix("-c") {
            (Some(s), 1)
        } else if let Some(s) = tok.strip_prefix("--") {
            (Some(s), 1)
        } else {
            (None, 1)
        };
        let strata = setting.and_then(|s| {
            let (name, value) = s.split_once('=')?;
            let name = name.to_ascii_lowercase().replace('-', "_");
            name.strip_prefix("strata.")
                .map(|n| (n.to_string(), value.to_string()))
        });
        match strata {
            Some((name, value)) => {
                let slot = match name.as_str() {
                    "tenant" => &mut settings.tenant,
                    "branch" => &mut settings.branch,
                    "at" => &mut settings.at,
                    other => {
                        return Err(ClientError::bad_value(format!(
                            "unrecognized setting \"strata.{other}\"; the proxy knows \
                             strata.tenant, strata.branch and strata.at"
                        )))
                    }
                };
                *slot = Some(value);
            }
            None => rest.extend(tokens[i..(i + used).min(tokens.len())].iter().cloned()),
        }
        i += used;
    }
    Ok(rest
        .iter()
        .map(|t| escape_option(t))
        .collect::<Vec<_>>()
        .join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(params: &[(&str, &str)]) -> Result<Route, ClientError> {
        let p: Vec<(String, String)> = params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Route::from_params(&p)
    }

    #[test]
    fn the_database_name_carries_branch_and_moment() {
        let r = route(&[("user", "alice"), ("database", "shop@dev")]).unwrap();
        assert_eq!(
            (r.database.as_str(), r.branch.as_str(), r.at),
            ("shop", "dev", None)
        );
        let r = route(&[
            ("user", "alice"),
            ("database", "shop@dev@2026-11-21 22:10:05+00"),
        ])
        .unwrap();
        assert_eq!(r.at.as_deref(), Some("2026-11-21 22:10:05+00"));
        // A Unix time starts with '@' itself.
        let r = route(&[("user", "a"), ("database", "db@main@@1700000000")]).unwrap();
        assert_eq!(r.at.as_deref(), Some("@1700000000"));
        let r = route(&[("user", "a")]).unwrap();
        assert_eq!(
            (r.database.as_str(), r.branch.as_str()),
            ("postgres", "main")
        );
        assert!(route(&[("user", "a"), ("database", "db@")]).is_err());
        assert_eq!(route(&[("database", "db")]).unwrap_err().code, "28000");
    }

    #[test]
    fn options_carry_strata_settings_and_the_rest_goes_on() {
        let r = route(&[
            ("user", "alice"),
            ("application_name", "psql"),
            (
                "options",
                r"-c strata.tenant=shop -cstrata.branch=dev --strata.at=2026-11-21\ 22:10 -c work_mem=4MB -c search_path=a\ b",
            ),
        ])
        .unwrap();
        assert_eq!(r.tenant.as_deref(), Some("shop"));
        assert_eq!(r.branch, "dev");
        assert_eq!(r.at.as_deref(), Some("2026-11-21 22:10"));
        assert_eq!(
            r.forward,
            vec![
                ("application_name".to_string(), "psql".to_string()),
                (
                    "options".to_string(),
                    r"-c work_mem=4MB -c search_path=a\ b".to_string()
                )
            ]
        );
        let built = strata_options("shop", "old name", Some("2026-11-21 22:10:05+00"));
        let r = route(&[("user", "a"), ("options", &built)]).unwrap();
        assert_eq!(
            (r.tenant.as_deref(), r.branch.as_str(), r.at.as_deref()),
            (Some("shop"), "old name", Some("2026-11-21 22:10:05+00"))
        );
        assert!(r.forward.is_empty(), "{:?}", r.forward);
        let e = route(&[("user", "a"), ("options", "-c strata.bogus=1")]).unwrap_err();
        assert_eq!(e.code, "22023");
        let e = route(&[
            ("user", "a"),
            ("database", "db@dev"),
            ("options", "-c strata.branch=main"),
        ])
        .unwrap_err();
        assert!(e.message.contains("strata.branch"), "{e}");
        assert_eq!(
            route(&[("user", "a"), ("replication", "database")])
                .unwrap_err()
                .code,
            "0A000"
        );
    }
}

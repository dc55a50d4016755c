//! `strata token issue`: a token signed with the cluster's private key, for a user or a tool
//! (e.g. a tenant's own page reader, or `STRATA_TOKEN` for the CLI).

use std::path::Path;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::json;
use strata_auth::Scope;

use strata::auth_setup;
use strata::cluster::ClusterConfig;
use strata::names::Names;
use strata::output::Output;

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Print a new token (the service refuses calls its scope does not cover).
    Issue(IssueArgs),
}

#[derive(Args, Debug)]
pub struct IssueArgs {
    /// `admin` (everything), `tenant:<name>` (pages, basebackups, branches, status and leases
    /// of that tenant; a tenant's name or id) or `safekeeper` (WAL traffic).
    #[arg(long, value_name = "SCOPE")]
    pub scope: String,
    /// With `--scope safekeeper`: the timelines of this tenant only.
    #[arg(long, value_name = "NAME")]
    pub tenant: Option<String>,
    /// Lifetime: seconds, or a number with s, m, h or d (e.g. 12h); default: never expires.
    #[arg(long, value_name = "DURATION")]
    pub ttl: Option<String>,
}

pub fn run(dir: &Path, cmd: TokenCommand, out: &Output) -> Result<()> {
    let TokenCommand::Issue(a) = cmd;
    let cfg = ClusterConfig::load(dir)?;
    auth_setup::require_auth(&cfg)?;
    let names = Names::load(dir)?;
    let scope = match a.scope.parse::<Scope>() {
        Ok(Scope::Tenant(t)) => Scope::Tenant(tenant_id(&names, &t)?),
        Ok(s) => s,
        Err(_) => bail!(
            "--scope {:?}: expected admin, safekeeper or tenant:<name>",
            a.scope
        ),
    };
    let limit = match (&scope, &a.tenant) {
        (Scope::Safekeeper, Some(t)) => Some(tenant_id(&names, t)?),
        (_, Some(_)) => bail!("--tenant limits a safekeeper token; a tenant token names its tenant in --scope tenant:<name>"),
        (_, None) => None,
    };
    let ttl = a.ttl.as_deref().map(parse_ttl).transpose()?;
    let claims = auth_setup::claims(scope, limit, ttl)?;
    let token = auth_setup::issue(dir, &claims)?;
    out.result(
        &token,
        json!({
            "token": token,
            "scope": claims.scope.to_string(),
            "tenant_id": claims.tenant_id,
            "issued_at": claims.iat,
            "expires_at": claims.exp,
        }),
    );
    Ok(())
}

/// A tenant's id from its name; a 32-hex id is taken as it is.
fn tenant_id(names: &Names, tenant: &str) -> Result<String> {
    if let Some(id) = names.tenants.get(tenant) {
        return Ok(id.clone());
    }
    if tenant.len() == 32 && tenant.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(tenant.to_ascii_lowercase());
    }
    bail!("no tenant named {tenant:?} (`strata tenant list`)")
}

/// `3600`, `90s`, `30m`, `12h`, `7d` in seconds.
fn parse_ttl(text: &str) -> Result<u64> {
    let t = text.trim();
    let (digits, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => t.split_at(i),
        None => (t, "s"),
    };
    let n: u64 = digits
        .parse()
        .with_context(|| format!("--ttl {text:?}: expected a number, e.g. 3600, 30m, 12h, 7d"))?;
    let per = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => bail!("--ttl {text:?}: the unit must be s, m, h or d"),
    };
    let secs = n
        .checked_mul(per)
        .with_context(|| format!("--ttl {text:?} is too long"))?;
    if secs == 0 {
        bail!("--ttl must be longer than 0 s");
    }
    Ok(secs)
}

#[cfg(test)]
mod tests {
    use super::parse_ttl;

    #[test]
    fn ttl_takes_seconds_and_units_and_refuses_the_rest() {
        assert_eq!(parse_ttl("3600").unwrap(), 3600);
        assert_eq!(parse_ttl("90s").unwrap(), 90);
        assert_eq!(parse_ttl("30m").unwrap(), 1800);
        assert_eq!(parse_ttl("12h").unwrap(), 43_200);
        assert_eq!(parse_ttl("7d").unwrap(), 604_800);
        for bad in ["", "0", "h", "5w", "-1", "1.5h", "99999999999999999999d"] {
            assert!(parse_ttl(bad).is_err(), "{bad:?} accepted");
        }
    }
}

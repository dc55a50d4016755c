//! `strata tenant config get [KEY]` and `strata tenant config set KEY=VALUE…`: a tenant's
//! `tenant.toml` on the pageserver, changed while it runs (no restart): the pageserver checks
//! every value, writes the file durably and puts the new values in effect at once.

use std::path::Path;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use serde_json::json;
use walproto::proto::pageserver as ps;

use strata::cluster::ClusterConfig;
use strata::mgmt::Pageserver;
use strata::names::Names;
use strata::output::Output;

#[derive(Subcommand, Debug)]
pub enum TenantConfigCommand {
    /// Print the tenant's configuration (every key, or one key's value).
    Get(GetArgs),
    /// Change keys, e.g. `pitr_interval=1d freeze_mib=16`: all or none, in effect at once
    /// (GC uses the new PITR window at its next run, ingest the new freeze size at its next
    /// record) and kept in tenant.toml across restarts.
    Set(SetArgs),
}

#[derive(Args, Debug)]
pub struct GetArgs {
    /// One key (pitr_interval, freeze_mib, page_cache_pages, auto_compaction); none: all.
    pub key: Option<String>,
    /// Tenant name (default: the default tenant).
    #[arg(long)]
    pub tenant: Option<String>,
}

#[derive(Args, Debug)]
pub struct SetArgs {
    /// KEY=VALUE pairs.
    #[arg(required = true, value_parser = parse_setting)]
    pub settings: Vec<(String, String)>,
    /// Tenant name (default: the default tenant).
    #[arg(long)]
    pub tenant: Option<String>,
}

/// `KEY=VALUE`, both sides non-empty.
pub fn parse_setting(s: &str) -> std::result::Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() && !v.trim().is_empty() => {
            Ok((k.trim().to_string(), v.trim().to_string()))
        }
        _ => Err(format!("{s:?} is not KEY=VALUE (e.g. pitr_interval=1d)")),
    }
}

pub fn run(dir: &Path, cmd: TenantConfigCommand, out: &Output) -> Result<()> {
    let cfg = ClusterConfig::load(dir)?;
    let names = Names::load(dir)?;
    let tenant_arg = match &cmd {
        TenantConfigCommand::Get(a) => a.tenant.as_deref(),
        TenantConfigCommand::Set(a) => a.tenant.as_deref(),
    };
    let (tenant, tenant_id) = names.tenant(tenant_arg)?;
    let mut ps = Pageserver::connect(&cfg.pageserver.grpc_addr())?;
    match cmd {
        TenantConfigCommand::Get(a) => {
            let conf = ps.get_tenant_config(&tenant_id)?;
            print_entries(&tenant, &conf, a.key.as_deref(), out)
        }
        TenantConfigCommand::Set(a) => {
            let settings = a
                .settings
                .into_iter()
                .map(|(key, value)| ps::TenantConfigSetting { key, value })
                .collect::<Vec<_>>();
            let keys: Vec<String> = settings.iter().map(|s| s.key.clone()).collect();
            let conf = ps.set_tenant_config(&tenant_id, settings)?;
            let changed: Vec<&ps::TenantConfigEntry> = conf
                .entries
                .iter()
                .filter(|e| keys.contains(&e.key))
                .collect();
            let text: Vec<String> = changed
                .iter()
                .map(|e| format!("{} = {}", e.key, e.value))
                .collect();
            out.result(
                &format!("tenant {tenant}: {} (in effect now)", text.join(", ")),
                json!(changed
                    .iter()
                    .map(|e| entry_json(&tenant, e))
                    .collect::<Vec<_>>()),
            );
            Ok(())
        }
    }
}

fn entry_json(tenant: &str, e: &ps::TenantConfigEntry) -> serde_json::Value {
    json!({
        "tenant": tenant, "key": e.key, "value": e.value, "default": e.default_value,
        "form": e.form, "meaning": e.meaning,
    })
}

fn print_entries(
    tenant: &str,
    conf: &ps::TenantConfigResponse,
    key: Option<&str>,
    out: &Output,
) -> Result<()> {
    if let Some(k) = key {
        let Some(e) = conf.entries.iter().find(|e| e.key == k) else {
            let known: Vec<&str> = conf.entries.iter().map(|e| e.key.as_str()).collect();
            bail!(
                "unknown tenant config key {k:?}; the keys are {}",
                known.join(", ")
            );
        };
        out.result(&e.value, entry_json(tenant, e));
        return Ok(());
    }
    let width = conf.entries.iter().map(|e| e.key.len()).max().unwrap_or(0);
    let lines: Vec<String> = conf
        .entries
        .iter()
        .map(|e| {
            let default = if e.value == e.default_value {
                String::new()
            } else {
                format!("  (default {})", e.default_value)
            };
            format!("{:width$}  {}{default}  # {}", e.key, e.value, e.meaning)
        })
        .collect();
    out.result(
        &lines.join("\n"),
        json!(conf
            .entries
            .iter()
            .map(|e| entry_json(tenant, e))
            .collect::<Vec<_>>()),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn settings_are_key_equals_value() {
        assert_eq!(
            super::parse_setting("pitr_interval = 1d").unwrap(),
            ("pitr_interval".to_string(), "1d".to_string())
        );
        assert!(super::parse_setting("pitr_interval").is_err());
        assert!(super::parse_setting("=1d").is_err());
        assert!(super::parse_setting("freeze_mib=").is_err());
    }
}

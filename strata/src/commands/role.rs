//! `strata role create|list|delete`: the roles the proxy authenticates (SCRAM-SHA-256
//! verifiers in `<cluster dir>/proxy/roles.json`; see `strata_proxy::roles`).

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::json;
use strata_proxy::roles::Roles;

use strata::names::Names;
use strata::output::Output;

#[derive(Subcommand, Debug)]
pub enum RoleCommand {
    /// Create a role that can connect through the proxy to the tenant's branches.
    Create(CreateArgs),
    /// List the roles (not their verifiers).
    List,
    /// Delete a role: its next connections are refused (open sessions go on).
    Delete(RoleArgs),
}

#[derive(Args, Debug)]
pub struct RoleArgs {
    /// The role's name: the `user` of a connection string.
    pub name: String,
    /// The tenant (default: the default tenant).
    #[arg(long)]
    pub tenant: Option<String>,
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    #[command(flatten)]
    pub role: RoleArgs,
    /// Read the password from this file (its first line; `-`: standard input) instead of
    /// asking for it.
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
}

pub fn run(dir: &Path, cmd: RoleCommand, out: &Output) -> Result<()> {
    match cmd {
        RoleCommand::Create(a) => create(dir, a, out),
        RoleCommand::List => list(dir, out),
        RoleCommand::Delete(a) => delete(dir, a, out),
    }
}

fn tenant(dir: &Path, given: Option<&str>) -> Result<String> {
    Ok(Names::load(dir)?.tenant(given)?.0)
}

fn create(dir: &Path, a: CreateArgs, out: &Output) -> Result<()> {
    let tenant = tenant(dir, a.role.tenant.as_deref())?;
    let password = match &a.password_file {
        Some(f) => read_password_file(f)?,
        None => prompt_password()?,
    };
    if password.is_empty() {
        bail!("the password is empty");
    }
    let mut roles = Roles::load(dir)?;
    roles.add(&a.role.name, &tenant, &password)?;
    roles.store(dir)?;
    out.result(
        &format!(
            "created role {} of tenant {tenant}: connect with psql \"postgresql://{}@HOST:PORT/postgres\" \
             (the proxy's address: strata status)",
            a.role.name, a.role.name
        ),
        json!({"name": a.role.name, "tenant": tenant}),
    );
    Ok(())
}

fn read_password_file(f: &Path) -> Result<String> {
    let mut text = String::new();
    if f == Path::new("-") {
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading the password from standard input")?;
    } else {
        text = std::fs::read_to_string(f)
            .with_context(|| format!("reading the password from {}", f.display()))?;
    }
    Ok(text.lines().next().unwrap_or_default().to_string())
}

fn prompt_password() -> Result<String> {
    if !std::io::stdin().is_terminal() {
        bail!("no terminal to ask for the password: give --password-file FILE (or - for standard input)");
    }
    let first = rpassword::prompt_password("password: ").context("reading the password")?;
    let again = rpassword::prompt_password("again: ").context("reading the password")?;
    if first != again {
        bail!("the two passwords differ");
    }
    Ok(first)
}

fn list(dir: &Path, out: &Output) -> Result<()> {
    let roles = Roles::load(dir)?;
    let mut lines: Vec<String> = roles
        .roles
        .iter()
        .map(|r| format!("{:<24} tenant {}", r.name, r.tenant))
        .collect();
    if lines.is_empty() {
        lines.push("no roles: strata role create NAME --tenant TENANT".into());
    }
    let rows: Vec<_> = roles
        .roles
        .iter()
        .map(|r| json!({"name": r.name, "tenant": r.tenant}))
        .collect();
    out.result(&lines.join("\n"), json!(rows));
    Ok(())
}

fn delete(dir: &Path, a: RoleArgs, out: &Output) -> Result<()> {
    let tenant = tenant(dir, a.tenant.as_deref())?;
    let mut roles = Roles::load(dir)?;
    roles.remove(&a.name, &tenant)?;
    roles.store(dir)?;
    out.result(
        &format!("deleted role {} of tenant {tenant}", a.name),
        json!({"name": a.name, "tenant": tenant, "deleted": true}),
    );
    Ok(())
}

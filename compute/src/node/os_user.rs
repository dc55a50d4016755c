//! Postgres refuses to run as root. When Strata runs as root (containers, CI), every Postgres
//! program runs as the `postgres` OS user (or `$STRATA_PG_OS_USER`) and owns its directories;
//! as an ordinary user nothing changes.

use std::ffi::CString;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The account Postgres processes run as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

/// `None` when we are not root, else the Postgres OS account.
pub fn postgres_user() -> Result<Option<RunAs>> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let name = std::env::var("STRATA_PG_OS_USER").unwrap_or_else(|_| "postgres".into());
    let cname = CString::new(name.clone())?;
    // SAFETY: getpwnam returns NULL or a pointer to a static record; both ids are copied out
    // before anything else can call it.
    let pw = unsafe { libc::getpwnam(cname.as_ptr()) };
    if pw.is_null() {
        bail!(
            "running as root, Postgres refuses to run as root, and there is no OS user {name:?} \
             to run it as: install postgresql-15 (scripts/setup.sh) or set STRATA_PG_OS_USER"
        );
    }
    // SAFETY: pw is non-null.
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    Ok(Some(RunAs { uid, gid }))
}

/// The name of the OS user `uid` (what Postgres's peer authentication compares).
pub fn user_name(uid: u32) -> Result<String> {
    // SAFETY: getpwuid returns NULL or a pointer to a static record; the name is copied out
    // before anything else can call it.
    let pw = unsafe { libc::getpwuid(uid) };
    if pw.is_null() {
        bail!("OS user id {uid} has no name (no /etc/passwd entry); Postgres's peer authentication needs one");
    }
    // SAFETY: pw is non-null and pw_name a NUL-terminated string.
    let name = unsafe { std::ffi::CStr::from_ptr((*pw).pw_name) };
    Ok(name.to_string_lossy().into_owned())
}

/// A command for a Postgres program, run as the Postgres OS user when we are root.
pub fn command_as(run_as: Option<RunAs>, program: &Path) -> Command {
    let mut cmd = Command::new(program);
    if let Some(u) = run_as {
        cmd.uid(u.uid).gid(u.gid).env("HOME", "/tmp");
    }
    cmd
}

/// Hands `path` (not recursively) to the Postgres OS user; a no-op when not root.
pub fn give_to(run_as: Option<RunAs>, path: &Path) -> Result<()> {
    if let Some(u) = run_as {
        std::os::unix::fs::chown(path, Some(u.uid), Some(u.gid))
            .with_context(|| format!("chown {} to uid {}", path.display(), u.uid))?;
    }
    Ok(())
}

/// Hands a whole tree to the Postgres OS user.
pub fn give_tree_to(run_as: Option<RunAs>, path: &Path) -> Result<()> {
    if run_as.is_none() {
        return Ok(());
    }
    give_to(run_as, path)?;
    if path.is_dir() {
        for e in std::fs::read_dir(path).with_context(|| format!("listing {}", path.display()))? {
            give_tree_to(run_as, &e?.path())?;
        }
    }
    Ok(())
}

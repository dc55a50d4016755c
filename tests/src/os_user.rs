//! Running Postgres programs as an unprivileged user.
//!
//! `postgres`, `initdb` and `pg_ctl` refuse to run as root. Test machines (CI containers, the
//! development VM) often run everything as root, so when our effective uid is 0 the harness
//! runs every Postgres program as the `postgres` OS user and hands it ownership of the
//! scratch directories. As an ordinary user nothing changes: programs run as ourselves.

use std::ffi::CString;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The OS account that Postgres processes run as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

/// Name of the account used when we are root; `STRATA_PG_OS_USER` overrides it.
fn os_user_name() -> String {
    std::env::var("STRATA_PG_OS_USER").unwrap_or_else(|_| "postgres".to_string())
}

/// `None` when we are not root (run programs as ourselves), else the `postgres` account.
pub fn postgres_user() -> Result<Option<RunAs>> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let name = os_user_name();
    let cname = CString::new(name.clone())?;
    // SAFETY: getpwnam returns NULL or a pointer to a static passwd struct; we copy the two
    // integers out immediately, and tests do not call getpwnam concurrently with other users
    // of that static buffer in a way that matters (the fields are read before returning).
    let pw = unsafe { libc::getpwnam(cname.as_ptr()) };
    if pw.is_null() {
        bail!(
            "running as root, and Postgres refuses to run as root, but there is no OS user \
             {name:?} to run it as; install postgresql-15 (scripts/setup.sh) or set STRATA_PG_OS_USER"
        );
    }
    // SAFETY: pw is non-null and points to a valid passwd struct.
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    Ok(Some(RunAs { uid, gid }))
}

/// A `Command` for `program` that runs as the Postgres OS user when we are root.
pub fn command_as(run_as: Option<RunAs>, program: &Path) -> Command {
    let mut cmd = Command::new(program);
    if let Some(u) = run_as {
        cmd.uid(u.uid).gid(u.gid);
        // The user's HOME would be root's; psql reads ~/.psqlrc only without -X, but
        // keep the environment honest anyway.
        cmd.env("HOME", "/tmp");
    }
    cmd
}

/// Gives `path` to the Postgres OS user (no-op when not root).
pub fn give_to(run_as: Option<RunAs>, path: &Path) -> Result<()> {
    if let Some(u) = run_as {
        std::os::unix::fs::chown(path, Some(u.uid), Some(u.gid))
            .with_context(|| format!("chown {} to uid {}", path.display(), u.uid))?;
    }
    Ok(())
}

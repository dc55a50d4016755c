//! The compute's lifecycle: a vanilla Postgres 15 data directory (from `initdb`, or unpacked
//! from a pageserver basebackup), configured for Strata, started and stopped with `pg_ctl`.
//!
//! Nothing the compute holds locally is needed again: a compute is always recreated from a
//! basebackup, so its data directory is scratch space.

pub mod os_user;
pub mod unpack;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Output;

use anyhow::{bail, Context, Result};

use os_user::RunAs;

/// PostgreSQL 15's programs, run as the right OS user.
#[derive(Clone, Debug)]
pub struct PgPrograms {
    pub bin: PathBuf,
    pub run_as: Option<RunAs>,
}

impl PgPrograms {
    pub fn new(bin: &Path) -> Result<PgPrograms> {
        if !bin.join("postgres").exists() {
            bail!(
                "no PostgreSQL 15 in {} (no `postgres` program): install postgresql-15 \
                 (scripts/setup.sh) or point to its bin directory",
                bin.display()
            );
        }
        Ok(PgPrograms {
            bin: absolute(bin)?,
            run_as: os_user::postgres_user()?,
        })
    }

    /// Runs `prog args…`; fails with its output if it exits non-zero.
    pub fn run(&self, prog: &str, args: &[&str]) -> Result<Output> {
        let out = os_user::command_as(self.run_as, &self.bin.join(prog))
            .args(args)
            .current_dir("/")
            .output()
            .with_context(|| format!("running {prog}"))?;
        if !out.status.success() {
            bail!(
                "{prog} {} failed ({}): {}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(out)
    }

    /// A fresh directory (created, or emptied) that the Postgres OS user owns.
    pub fn make_dir(&self, dir: &Path) -> Result<()> {
        if dir.exists() {
            fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        os_user::give_to(self.run_as, dir)
    }

    /// `initdb` with data checksums, for a new tenant: the directory is imported into the
    /// pageserver and then thrown away. With `password`, the `postgres` role has it (SCRAM)
    /// from the tenant's first record on, so every compute of the tenant, at any point of its
    /// history, accepts it.
    pub fn initdb(&self, dir: &Path, password: Option<&str>) -> Result<()> {
        let dir = &absolute(dir)?;
        self.make_dir(dir)?;
        let d = dir.display().to_string();
        let mut args = vec![
            "-D",
            &d,
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--data-checksums",
        ];
        // initdb reads the password from a file (never from its command line, which every
        // local user can see); the file sits next to the data directory and goes with it.
        let pwfile = dir.with_extension("pwfile");
        let pwfile_arg = format!("--pwfile={}", pwfile.display());
        if let Some(pw) = password {
            write_private(&pwfile, pw.as_bytes())?;
            os_user::give_to(self.run_as, &pwfile)?;
            args.push(&pwfile_arg);
        }
        let ran = self.run("initdb", &args);
        if password.is_some() {
            fs::remove_file(&pwfile).with_context(|| format!("removing {}", pwfile.display()))?;
        }
        ran.map(|_| ())
    }
}

/// How a compute runs.
#[derive(Clone, Debug)]
pub struct ComputeSpec {
    pub port: u16,
    /// A hot standby that stays at the basebackup's LSN: no walproposer, no writes.
    pub read_only: bool,
    /// The walproposer's application name, which synchronous_standby_names must name.
    pub standby_name: String,
    /// Clients log in with the `postgres` role's SCRAM password (over TCP, or as anybody but
    /// the OS user running Strata over the Unix socket); false: everybody is trusted (a cluster
    /// made with `strata init --no-auth`).
    pub password_auth: bool,
}

/// One Postgres data directory run as a compute.
#[derive(Clone, Debug)]
pub struct ComputeNode {
    pub pg: PgPrograms,
    pub data_dir: PathBuf,
    pub socket_dir: PathBuf,
    pub log_file: PathBuf,
}

impl ComputeNode {
    /// `dir/data` (the data directory), `dir/sock`, `dir/postgres.log`, as absolute paths.
    pub fn new(pg: PgPrograms, dir: &Path) -> Result<ComputeNode> {
        let dir = absolute(dir)?;
        Ok(ComputeNode {
            pg,
            data_dir: dir.join("data"),
            socket_dir: dir.join("sock"),
            log_file: dir.join("postgres.log"),
        })
    }

    /// Unpacks a basebackup tar as the data directory (mode 0700, owned by the Postgres OS
    /// user). A data directory already there (a removed compute's, see
    /// [`unpack::unpack_over`]) is reused: afterwards it holds exactly the tar's entries.
    /// Entries that would escape the directory are refused.
    pub fn unpack_basebackup(&self, tar: impl std::io::Read) -> Result<unpack::UnpackReport> {
        let rep = unpack::unpack_over(&self.data_dir, tar)?;
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&self.data_dir, fs::Permissions::from_mode(0o700))?;
        os_user::give_tree_to(self.pg.run_as, &self.data_dir)?;
        Ok(rep)
    }

    /// Writes the settings Strata needs into the data directory: an included
    /// `strata.conf` (so a user's postgresql.conf stays theirs), and standby.signal for a
    /// read-only compute.
    pub fn configure(&self, spec: &ComputeSpec) -> Result<()> {
        self.pg.make_dir(&self.socket_dir)?;
        let mut settings: Vec<(&str, String)> = vec![
            ("port", spec.port.to_string()),
            ("listen_addresses", "'127.0.0.1'".into()),
            (
                "unix_socket_directories",
                format!("'{}'", self.socket_dir.display()),
            ),
            // The WAL leaves through the walproposer: physical replication, one slot.
            ("wal_level", "replica".into()),
            ("max_wal_senders", "10".into()),
            ("max_replication_slots", "10".into()),
            ("synchronous_commit", "on".into()),
            (
                "synchronous_standby_names",
                format!("'{}'", spec.standby_name),
            ),
            // Strata keeps the history: the compute needs no archive of its own.
            ("archive_mode", "off".into()),
            ("max_prepared_transactions", "10".into()),
            ("hot_standby", "on".into()),
            ("logging_collector", "off".into()),
            ("log_line_prefix", "'%m [%p] '".into()),
        ];
        if spec.password_auth {
            // Passwords set by ALTER ROLE are stored as SCRAM verifiers, never as MD5.
            settings.push(("password_encryption", "'scram-sha-256'".into()));
            // Only the server's OS user (and root) may even reach the socket.
            settings.push(("unix_socket_permissions", "0700".into()));
        }
        if spec.read_only {
            settings.retain(|(k, _)| *k != "synchronous_standby_names");
        }
        let mut conf = String::from("# Written by Strata: how this compute runs.\n");
        for (k, v) in settings {
            conf.push_str(&format!("{k} = {v}\n"));
        }
        self.write_file("strata.conf", conf.as_bytes())?;
        let main_conf = self.data_dir.join("postgresql.conf");
        let existing = fs::read_to_string(&main_conf).unwrap_or_default();
        if !existing.contains("include_if_exists = 'strata.conf'") {
            let mut f = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&main_conf)
                .with_context(|| format!("opening {}", main_conf.display()))?;
            writeln!(f, "\ninclude_if_exists = 'strata.conf'")?;
            os_user::give_to(self.pg.run_as, &main_conf)?;
        }
        if spec.password_auth {
            self.write_file("pg_hba.conf", PASSWORD_HBA.as_bytes())?;
            self.write_file("pg_ident.conf", self.strata_ident_map()?.as_bytes())?;
        } else {
            // A cluster without auth: trust on the Unix socket and loopback only.
            self.write_file("pg_hba.conf", TRUST_HBA.as_bytes())?;
            if !self.data_dir.join("pg_ident.conf").exists() {
                self.write_file("pg_ident.conf", b"")?;
            }
        }
        if spec.read_only {
            self.write_file("standby.signal", b"")?;
        }
        Ok(())
    }

    /// `pg_ident.conf` mapping the OS users that run Strata's own clients over the Unix socket
    /// to the `postgres` role: the one running Strata (the walproposer, the CLI's psql when not
    /// root) and the Postgres OS user (psql, pgbench run as it when Strata runs as root).
    fn strata_ident_map(&self) -> Result<String> {
        // SAFETY: geteuid has no preconditions.
        let mut users = vec![os_user::user_name(unsafe { libc::geteuid() })?];
        if let Some(run_as) = self.pg.run_as {
            users.push(os_user::user_name(run_as.uid)?);
        }
        users.dedup();
        let mut map =
            String::from("# Written by Strata: who may log in as postgres over the socket.\n");
        for u in users {
            map.push_str(&format!("{IDENT_MAP} {u} postgres\n"));
        }
        Ok(map)
    }

    /// Gives the `postgres` role `password` if it has none (a tenant made before auth, or an
    /// imported database that trusted its clients); a password of its own is left alone.
    /// Needs a writer (a read-only compute cannot change a role). Returns whether it set it.
    pub fn set_password_if_none(&self, port: u16, password: &str) -> Result<bool> {
        let has_none = self.psql(port, "postgres", POSTGRES_HAS_NO_PASSWORD)?;
        if has_none.trim() != "t" {
            return Ok(false);
        }
        self.psql(port, "postgres", &set_password_sql(password))?;
        Ok(true)
    }

    fn write_file(&self, name: &str, content: &[u8]) -> Result<()> {
        let p = self.data_dir.join(name);
        fs::write(&p, content).with_context(|| format!("writing {}", p.display()))?;
        os_user::give_to(self.pg.run_as, &p)
    }

    /// Starts Postgres and waits until it accepts connections.
    ///
    /// `pg_ctl start -w` decides, but looks only every 100 ms; the postmaster's own
    /// `postmaster.pid` status line says "ready" as soon as it is, so that is polled more
    /// often and ends the wait early (pg_ctl then finishes on its own).
    pub fn start(&self) -> Result<()> {
        let d = self.data_dir.display().to_string();
        let l = self.log_file.display().to_string();
        if let Some(parent) = self.log_file.parent() {
            os_user::give_to(self.pg.run_as, parent)?;
        }
        let fail = |what: String| {
            anyhow::anyhow!(
                "starting the compute in {}: {what}; server log tail:\n{}",
                self.data_dir.display(),
                tail(&self.log_file, 30)
            )
        };
        let pid_file = self.data_dir.join("postmaster.pid");
        // A lock file left by an earlier server is not this server's word.
        let stale = fs::read_to_string(&pid_file).ok();
        let mut pg_ctl = os_user::command_as(self.pg.run_as, &self.pg.bin.join("pg_ctl"))
            .args(["start", "-w", "-t", "120", "-D", &d, "-l", &l])
            .current_dir("/")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("running pg_ctl")?;
        loop {
            if let Some(status) = pg_ctl.try_wait().context("waiting for pg_ctl")? {
                if status.success() {
                    return Ok(());
                }
                let mut err = String::new();
                if let Some(mut e) = pg_ctl.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                return Err(fail(format!(
                    "pg_ctl start failed ({status}): {}",
                    err.trim()
                )));
            }
            if postmaster_ready(&pid_file, stale.as_deref()) {
                // pg_ctl sees the same within 100 ms and exits 0; it is not waited for.
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// Stops Postgres; `immediate` skips the shutdown checkpoint (nothing local matters).
    pub fn stop(&self, immediate: bool) -> Result<()> {
        if !self.is_running() {
            return Ok(());
        }
        let d = self.data_dir.display().to_string();
        let mode = if immediate { "immediate" } else { "fast" };
        self.pg
            .run("pg_ctl", &["stop", "-w", "-t", "60", "-m", mode, "-D", &d])?;
        Ok(())
    }

    /// Whether a postmaster runs on this data directory.
    pub fn is_running(&self) -> bool {
        let d = self.data_dir.display().to_string();
        self.pg.run("pg_ctl", &["status", "-D", &d]).is_ok()
    }

    /// A libpq connection string over the Unix socket.
    pub fn connstr(&self, port: u16, db: &str) -> String {
        format!(
            "host={} port={port} user=postgres dbname={db}",
            self.socket_dir.display()
        )
    }

    /// Runs one SQL statement with psql and returns its unaligned output.
    pub fn psql(&self, port: u16, db: &str, sql: &str) -> Result<String> {
        let out = self.pg.run(
            "psql",
            &[
                "-X",
                "-q",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                &self.socket_dir.display().to_string(),
                "-p",
                &port.to_string(),
                "-U",
                "postgres",
                "-d",
                db,
                "-c",
                sql,
            ],
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_string())
    }
}

/// Whether the `postgres` role has no password ("t" or "f").
pub const POSTGRES_HAS_NO_PASSWORD: &str =
    "SELECT rolpassword IS NULL FROM pg_authid WHERE rolname = 'postgres'";

/// `ALTER ROLE postgres` to `password`. The SCRAM verifier, not the password, goes into the
/// statement: nothing that logs statements ever sees the password.
pub fn set_password_sql(password: &str) -> String {
    let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
    format!("ALTER ROLE postgres PASSWORD '{verifier}'")
}

/// The name of the `pg_ident.conf` map of Strata's own OS users.
const IDENT_MAP: &str = "strata";

/// Client authentication of a compute with passwords: the Strata OS user over the socket by
/// its kernel credentials (peer), everything else by SCRAM.
const PASSWORD_HBA: &str = "\
# Written by Strata. The Unix socket admits the OS user running Strata (the walproposer, the
# strata CLI) as postgres by its kernel credentials; every other login needs a password.
local all postgres peer map=strata
local replication postgres peer map=strata
local all all scram-sha-256
local replication all scram-sha-256
host all all 127.0.0.1/32 scram-sha-256
host replication all 127.0.0.1/32 scram-sha-256
";

/// Client authentication of a compute of a cluster without auth.
const TRUST_HBA: &str = "\
local all all trust
host all all 127.0.0.1/32 trust
local replication all trust
host replication all 127.0.0.1/32 trust
";

/// Writes a secret (a password, a token): mode 0600 even if the file existed, fsynced.
pub fn write_private(path: &Path, content: &[u8]) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 600 {}", path.display()))?;
    f.write_all(content)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

/// Whether `postmaster.pid` says the server accepts connections: its 8th line (the status)
/// is "ready", or "standby" (a standby without hot_standby), as `pg_ctl -w` decides. A file
/// identical to `stale` (there before the start) does not count.
fn postmaster_ready(pid_file: &Path, stale: Option<&str>) -> bool {
    let Ok(text) = fs::read_to_string(pid_file) else {
        return false;
    };
    if stale == Some(text.as_str()) {
        return false;
    }
    matches!(
        text.lines().nth(7).map(str::trim),
        Some("ready" | "standby")
    )
}

/// `path` made absolute against the current directory. Postgres programs run with cwd `/`
/// (as another OS user, who may not reach ours), and the server itself runs in its data
/// directory, so every path handed to them must be absolute.
fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("making {} an absolute path", path.display()))
}

fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

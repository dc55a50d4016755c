//! `PgCluster`: a throw-away PostgreSQL 15 cluster for one test.
//!
//! Each cluster lives in its own temporary directory (data directory, unix socket directory,
//! server log, tablespace scratch space), listens on a TCP port picked at runtime on
//! 127.0.0.1, and is stopped with `pg_ctl stop -m immediate` when dropped, so a failing or
//! panicking test never leaks a postmaster. Errors from a failed start include the tail of
//! the server log, which is almost always where the reason is.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{bail, ensure, Context, Result};
use walproto::Lsn;

use crate::os_user::{self, RunAs};

/// Where the Postgres 15 programs are: `STRATA_PG_BIN` or Debian's location.
pub fn pg_bin_dir() -> PathBuf {
    std::env::var_os("STRATA_PG_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"))
}

/// How to create a cluster.
#[derive(Clone, Debug)]
pub struct InitOptions {
    /// `initdb --data-checksums`. On by default: FPI_FOR_HINT records need it.
    pub data_checksums: bool,
    /// Extra `initdb` arguments.
    pub initdb_args: Vec<String>,
    /// `postgresql.conf` settings, appended after the harness's own (so they win).
    pub settings: Vec<(String, String)>,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            data_checksums: true,
            initdb_args: Vec::new(),
            settings: Vec::new(),
        }
    }
}

impl InitOptions {
    /// Adds one `postgresql.conf` setting.
    pub fn set(mut self, name: &str, value: &str) -> Self {
        self.settings.push((name.to_string(), value.to_string()));
        self
    }

    /// For tests that read every byte of WAL the cluster writes: no segment recycled, no
    /// checkpoint or autovacuum in the middle of the workload.
    pub fn keep_all_wal(self) -> Self {
        self.set("wal_keep_size", "10GB")
            .set("max_wal_size", "10GB")
            .set("checkpoint_timeout", "1h")
            .set("autovacuum", "off")
    }
}

/// How to stop the server (`pg_ctl stop -m`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopMode {
    /// Waits for nothing, but writes a shutdown checkpoint: the WAL ends cleanly.
    Fast,
    /// Like a crash: no shutdown checkpoint; the next start runs crash recovery.
    Immediate,
}

impl StopMode {
    fn arg(self) -> &'static str {
        match self {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

/// A PostgreSQL 15 cluster in a temporary directory.
pub struct PgCluster {
    // Declared first: fields drop in order, and the directory must outlive nothing else,
    // but Drop for PgCluster (which stops the server) runs before any field is dropped.
    tmp: tempfile::TempDir,
    bin: PathBuf,
    run_as: Option<RunAs>,
    data: PathBuf,
    sock: PathBuf,
    log: PathBuf,
    port: Cell<u16>,
    running: Cell<bool>,
}

impl PgCluster {
    /// Runs `initdb` into a fresh temporary directory and writes the settings.
    /// The server is not started: tests may still run `pg_resetwal` first.
    pub fn init(opts: &InitOptions) -> Result<PgCluster> {
        let bin = pg_bin_dir();
        ensure!(
            bin.join("postgres").exists(),
            "PostgreSQL 15 not found in {} (run scripts/setup.sh, or set STRATA_PG_BIN)",
            bin.display()
        );
        let run_as = os_user::postgres_user()?;
        let tmp = tempfile::Builder::new()
            .prefix("strata-pg-")
            .tempdir()
            .context("creating the cluster's temporary directory")?;
        os_user::give_to(run_as, tmp.path())?;
        let data = tmp.path().join("data");
        let sock = tmp.path().join("sock");
        std::fs::create_dir(&sock)?;
        os_user::give_to(run_as, &sock)?;
        let cluster = PgCluster {
            log: tmp.path().join("postgres.log"),
            tmp,
            bin,
            run_as,
            data,
            sock,
            port: Cell::new(free_port()?),
            running: Cell::new(false),
        };

        let mut args: Vec<String> = vec![
            "-D".into(),
            cluster.data.display().to_string(),
            "-U".into(),
            "postgres".into(),
            "-A".into(),
            "trust".into(),
            "-E".into(),
            "UTF8".into(),
            "--locale=C".into(),
            "--no-sync".into(),
        ];
        if opts.data_checksums {
            args.push("--data-checksums".into());
        }
        args.extend(opts.initdb_args.iter().cloned());
        cluster.run_ok("initdb", &args)?;

        let base = [
            ("listen_addresses", "127.0.0.1".to_string()),
            (
                "unix_socket_directories",
                cluster.sock.display().to_string(),
            ),
            ("logging_collector", "off".to_string()),
            ("log_line_prefix", "%m [%p] ".to_string()),
        ];
        let mut all: Vec<(String, String)> =
            base.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        all.extend(opts.settings.iter().cloned());
        cluster.set_config(&all)?;
        cluster.write_port()?;
        Ok(cluster)
    }

    /// The postgres-owned temporary directory holding everything of this cluster;
    /// tests may create scratch directories in it (e.g. for tablespaces).
    pub fn base_dir(&self) -> &Path {
        self.tmp.path()
    }

    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    pub fn wal_dir(&self) -> PathBuf {
        self.data.join("pg_wal")
    }

    pub fn socket_dir(&self) -> &Path {
        &self.sock
    }

    pub fn port(&self) -> u16 {
        self.port.get()
    }

    pub fn log_file(&self) -> &Path {
        &self.log
    }

    pub fn is_running(&self) -> bool {
        self.running.get()
    }

    /// A libpq connection string for `db` over the private unix socket.
    pub fn connstr(&self, db: &str) -> String {
        format!(
            "host={} port={} user=postgres dbname={db}",
            self.sock.display(),
            self.port()
        )
    }

    /// Copies the data directory (while stopped: as initdb or a clean shutdown left it) to
    /// `name` inside the cluster's temporary directory, as a base to import WAL onto.
    pub fn copy_data_dir(&self, name: &str) -> Result<PathBuf> {
        ensure!(!self.is_running(), "copy_data_dir: stop the cluster first");
        let dest = self.tmp.path().join(name);
        let status = Command::new("cp")
            .arg("-a")
            .arg(&self.data)
            .arg(&dest)
            .status()
            .context("running cp")?;
        ensure!(
            status.success(),
            "copying {} to {} failed",
            self.data.display(),
            dest.display()
        );
        Ok(dest)
    }

    /// Creates a directory inside the cluster's temporary directory, owned by the Postgres
    /// user (for `CREATE TABLESPACE ... LOCATION`).
    pub fn make_postgres_dir(&self, name: &str) -> Result<PathBuf> {
        let dir = self.tmp.path().join(name);
        std::fs::create_dir_all(&dir)?;
        os_user::give_to(self.run_as, &dir)?;
        Ok(dir)
    }

    /// Appends settings to `postgresql.conf`; later lines win, so this also changes them.
    /// Most take effect at the next (re)start.
    pub fn set_config(&self, settings: &[(String, String)]) -> Result<()> {
        let mut text = String::from("\n# strata-tests\n");
        for (k, v) in settings {
            writeln!(text, "{k} = '{}'", v.replace('\'', "''"))?;
        }
        let path = self.data.join("postgresql.conf");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        f.write_all(text.as_bytes())?;
        Ok(())
    }

    fn write_port(&self) -> Result<()> {
        self.set_config(&[("port".into(), self.port().to_string())])
    }

    /// Starts the server and waits until it accepts connections. Retries with another port
    /// if the one picked was taken in the meantime.
    pub fn start(&self) -> Result<()> {
        ensure!(!self.is_running(), "cluster already running");
        for attempt in 0.. {
            let log_len = std::fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0);
            let out = self.run(
                "pg_ctl",
                &[
                    "start",
                    "-w",
                    "-t",
                    "120",
                    "-D",
                    &self.data.display().to_string(),
                    "-l",
                    &self.log.display().to_string(),
                ],
                None,
            )?;
            if out.status.success() {
                self.running.set(true);
                return Ok(());
            }
            let new_log = std::fs::read(&self.log)
                .map(|b| String::from_utf8_lossy(&b[log_len as usize..]).into_owned())
                .unwrap_or_default();
            if attempt < 3 && new_log.contains("could not bind") {
                self.port.set(free_port()?);
                self.write_port()?;
                continue;
            }
            // pg_ctl may have left a postmaster behind when it timed out.
            self.running.set(true);
            let _ = self.stop(StopMode::Immediate);
            bail!(
                "pg_ctl start failed ({}): {}{}\n--- server log tail ---\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log_tail(40)
            );
        }
        unreachable!()
    }

    /// Stops the server; `Fast` ends the WAL with a shutdown checkpoint.
    pub fn stop(&self, mode: StopMode) -> Result<()> {
        if !self.is_running() {
            return Ok(());
        }
        let out = self.run(
            "pg_ctl",
            &[
                "stop",
                "-w",
                "-t",
                "120",
                "-m",
                mode.arg(),
                "-D",
                &self.data.display().to_string(),
            ],
            None,
        )?;
        self.running.set(false);
        if !out.status.success() {
            bail!(
                "pg_ctl stop -m {} failed: {}\n--- server log tail ---\n{}",
                mode.arg(),
                String::from_utf8_lossy(&out.stderr),
                self.log_tail(40)
            );
        }
        Ok(())
    }

    /// Clean stop and start: writes a shutdown checkpoint and applies changed settings.
    pub fn restart(&self) -> Result<()> {
        self.stop(StopMode::Fast)?;
        self.start()
    }

    /// Runs SQL in database `postgres`; see [`PgCluster::psql_db`].
    pub fn psql(&self, sql: &str) -> Result<String> {
        self.psql_db("postgres", sql)
    }

    /// Runs SQL (a script: one or more statements, each in its own transaction unless
    /// the script says BEGIN, and `COPY ... FROM STDIN` data may follow inline) through
    /// `psql -X -v ON_ERROR_STOP=1 -At -q`, returning its output (rows, `|`-separated).
    pub fn psql_db(&self, db: &str, sql: &str) -> Result<String> {
        ensure!(self.is_running(), "psql: cluster not running");
        let port = self.port().to_string();
        let sock = self.sock.display().to_string();
        let args = [
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            "-At",
            "-q",
            "-h",
            &sock,
            "-p",
            &port,
            "-U",
            "postgres",
            "-d",
            db,
            "-f",
            "-",
        ];
        let out = self.run("psql", &args, Some(sql.as_bytes()))?;
        if !out.status.success() {
            bail!(
                "psql failed ({}): {}\n--- SQL ---\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim_end(),
                truncate(sql, 2000)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A `psql` that stays connected, for queries repeated often (a poll): each query costs a
    /// round trip instead of a process and a backend. The connection is made at the first
    /// query, which fails if the server does not take connections yet.
    pub fn session(&self) -> Result<PsqlSession> {
        let port = self.port().to_string();
        let sock = self.sock.display().to_string();
        let mut child = self
            .command("psql")
            .args(["-X", "-v", "ON_ERROR_STOP=1", "-At", "-q", "-h", &sock])
            .args(["-p", &port, "-U", "postgres", "-d", "postgres"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("spawning psql")?;
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = std::io::BufReader::new(child.stdout.take().expect("piped stdout"));
        Ok(PsqlSession {
            child,
            stdin,
            stdout,
        })
    }

    /// Runs `pgbench <args> postgres` against this cluster and returns its output.
    pub fn pgbench(&self, args: &[&str]) -> Result<String> {
        ensure!(self.is_running(), "pgbench: cluster not running");
        let port = self.port().to_string();
        let sock = self.sock.display().to_string();
        let mut all = vec!["-h", &sock, "-p", &port, "-U", "postgres"];
        all.extend_from_slice(args);
        all.push("postgres");
        let out = self.run("pgbench", &all, None)?;
        if !out.status.success() {
            bail!(
                "pgbench {args:?} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }

    /// `pg_current_wal_lsn()`: the end of WAL written so far.
    pub fn current_wal_lsn(&self) -> Result<Lsn> {
        self.query_lsn("SELECT pg_current_wal_lsn()")
    }

    /// `pg_current_wal_insert_lsn()`: where the next record will go.
    pub fn current_wal_insert_lsn(&self) -> Result<Lsn> {
        self.query_lsn("SELECT pg_current_wal_insert_lsn()")
    }

    fn query_lsn(&self, sql: &str) -> Result<Lsn> {
        let out = self.psql(sql)?;
        out.trim()
            .parse()
            .with_context(|| format!("parsing LSN from {out:?}"))
    }

    /// Runs `pg_resetwal <args> DATADIR` (server must be stopped). With `-x`, `-m`, `-O`
    /// it sets the next xid / multixact / member offset, which the workload uses to put
    /// them on SLRU page boundaries.
    pub fn pg_resetwal(&self, args: &[&str]) -> Result<String> {
        ensure!(!self.is_running(), "pg_resetwal needs a stopped cluster");
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        all.push(self.data.display().to_string());
        self.run_ok("pg_resetwal", &all)
    }

    /// `pg_controldata` as a map from label (without the colon) to value.
    pub fn controldata(&self) -> Result<BTreeMap<String, String>> {
        let out = self.run_ok("pg_controldata", &[self.data.display().to_string()])?;
        Ok(out
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect())
    }

    /// The control file's "Latest checkpoint location". After a clean stop this is the
    /// shutdown checkpoint, the last record in the WAL.
    pub fn latest_checkpoint(&self) -> Result<Lsn> {
        let cd = self.controldata()?;
        let v = cd
            .get("Latest checkpoint location")
            .context("pg_controldata printed no 'Latest checkpoint location'")?;
        Ok(v.parse()?)
    }

    /// Creates `standby.signal` so that the next start runs archive recovery over the
    /// cluster's own WAL and stays a (hot) standby until promoted.
    pub fn make_standby_signal(&self) -> Result<()> {
        let p = self.data.join("standby.signal");
        std::fs::write(&p, b"")?;
        os_user::give_to(self.run_as, &p)
    }

    /// `pg_ctl promote -w`: ends recovery; Postgres 15 writes an END_OF_RECOVERY record
    /// and switches to a new timeline.
    pub fn promote(&self) -> Result<()> {
        ensure!(self.is_running(), "promote: cluster not running");
        self.run_ok(
            "pg_ctl",
            &[
                "promote".to_string(),
                "-w".to_string(),
                "-t".to_string(),
                "120".to_string(),
                "-D".to_string(),
                self.data.display().to_string(),
            ],
        )?;
        Ok(())
    }

    /// The last `n` lines of the server log.
    pub fn log_tail(&self, n: usize) -> String {
        match std::fs::read(&self.log) {
            Ok(b) => {
                let text = String::from_utf8_lossy(&b);
                let lines: Vec<&str> = text.lines().collect();
                lines[lines.len().saturating_sub(n)..].join("\n")
            }
            Err(e) => format!("(cannot read {}: {e})", self.log.display()),
        }
    }

    /// A `Command` for Postgres program `prog`, as the Postgres OS user when we are root.
    pub fn command(&self, prog: &str) -> Command {
        let mut cmd = os_user::command_as(self.run_as, &self.bin.join(prog));
        cmd.current_dir(self.tmp.path());
        cmd
    }

    fn run(&self, prog: &str, args: &[&str], stdin: Option<&[u8]>) -> Result<Output> {
        let mut cmd = self.command(prog);
        cmd.args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", self.bin.join(prog).display()))?;
        if let Some(input) = stdin {
            // Write from a thread: psql may fill its stdout pipe before reading all input.
            let mut pipe = child.stdin.take().expect("piped stdin");
            let input = input.to_vec();
            let writer = std::thread::spawn(move || pipe.write_all(&input));
            let out = child.wait_with_output()?;
            // A broken pipe only means psql stopped early (ON_ERROR_STOP); its stderr says why.
            let _ = writer.join();
            return Ok(out);
        }
        Ok(child.wait_with_output()?)
    }

    fn run_ok(&self, prog: &str, args: &[String]) -> Result<String> {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.run(prog, &refs, None)?;
        if !out.status.success() {
            bail!(
                "{prog} {args:?} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// Clusters from data directories Postgres did not create itself (a Strata basebackup), and
/// the tools that copy and dump a running one.
impl PgCluster {
    /// A cluster whose data directory `fill` writes (into a path that does not exist yet),
    /// given to the Postgres user (mode 0700), with this harness's connection settings and `-A trust`
    /// authentication (replacing its `pg_hba.conf`) and then `settings`. Not started.
    pub fn from_data_dir(
        fill: impl FnOnce(&Path) -> Result<()>,
        settings: &[(String, String)],
    ) -> Result<PgCluster> {
        let bin = pg_bin_dir();
        let run_as = os_user::postgres_user()?;
        let tmp = tempfile::Builder::new()
            .prefix("strata-pg-")
            .tempdir()
            .context("creating the cluster's temporary directory")?;
        os_user::give_to(run_as, tmp.path())?;
        let data = tmp.path().join("data");
        let sock = tmp.path().join("sock");
        std::fs::create_dir(&sock)?;
        os_user::give_to(run_as, &sock)?;
        fill(&data).context("writing the data directory")?;
        give_tree_to(run_as, &data)?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700))?;
        }
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhost all all 127.0.0.1/32 trust\n\
             local replication all trust\nhost replication all 127.0.0.1/32 trust\n",
        )?;
        let cluster = PgCluster {
            log: tmp.path().join("postgres.log"),
            tmp,
            bin,
            run_as,
            data,
            sock,
            port: Cell::new(free_port()?),
            running: Cell::new(false),
        };
        let mut all: Vec<(String, String)> = vec![
            ("listen_addresses".into(), "127.0.0.1".into()),
            (
                "unix_socket_directories".into(),
                cluster.sock.display().to_string(),
            ),
            ("logging_collector".into(), "off".into()),
            ("log_line_prefix".into(), "%m [%p] ".into()),
        ];
        all.extend(settings.iter().cloned());
        cluster.set_config(&all)?;
        cluster.write_port()?;
        Ok(cluster)
    }

    /// `pg_basebackup -Fp -X <wal_method> -c fast` of the running server into `name` inside
    /// the cluster's temporary directory.
    pub fn pg_basebackup(&self, name: &str, wal_method: &str) -> Result<PathBuf> {
        ensure!(self.is_running(), "pg_basebackup: cluster not running");
        let dest = self.tmp.path().join(name);
        self.run_ok(
            "pg_basebackup",
            &[
                "-h".into(),
                self.sock.display().to_string(),
                "-p".into(),
                self.port().to_string(),
                "-U".into(),
                "postgres".into(),
                "-D".into(),
                dest.display().to_string(),
                "-Fp".into(),
                "-X".into(),
                wal_method.into(),
                "-c".into(),
                "fast".into(),
                "--no-sync".into(),
            ],
        )?;
        Ok(dest)
    }

    /// `pg_dump` of database `db` (plain SQL) with extra arguments, without the lines that
    /// carry pg_dump's random `\restrict` key (15.14 and later), so two dumps compare.
    pub fn pg_dump(&self, db: &str, extra: &[&str]) -> Result<String> {
        ensure!(self.is_running(), "pg_dump: cluster not running");
        let mut args: Vec<String> = vec![
            "-h".into(),
            self.sock.display().to_string(),
            "-p".into(),
            self.port().to_string(),
            "-U".into(),
            "postgres".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push(db.into());
        let out = self.run_ok("pg_dump", &args)?;
        Ok(out
            .lines()
            .filter(|l| !l.starts_with("\\restrict ") && !l.starts_with("\\unrestrict "))
            .map(|l| format!("{l}\n"))
            .collect())
    }
}

/// Gives a whole tree to the Postgres OS user (no-op when not root).
fn give_tree_to(run_as: Option<RunAs>, path: &Path) -> Result<()> {
    os_user::give_to(run_as, path)?;
    if path.is_dir() {
        for e in std::fs::read_dir(path)? {
            give_tree_to(run_as, &e?.path())?;
        }
    }
    Ok(())
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.is_running() {
            if let Err(e) = self.stop(StopMode::Immediate) {
                eprintln!("PgCluster drop: {e:#}");
            }
        }
        if std::env::var_os("STRATA_KEEP_TMP").is_some() {
            let dir = std::mem::replace(
                &mut self.tmp,
                tempfile::TempDir::new().expect("placeholder tempdir"),
            );
            eprintln!("STRATA_KEEP_TMP: keeping {}", dir.keep().display());
        }
    }
}

pub use crate::procs::free_port;

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A connected `psql` (see [`PgCluster::session`]); killed when dropped.
pub struct PsqlSession {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl PsqlSession {
    /// Runs one statement that returns one row and returns that row.
    pub fn query_row(&mut self, sql: &str) -> Result<String> {
        use std::io::BufRead;
        writeln!(self.stdin, "{sql};").context("psql session: writing the query")?;
        self.stdin
            .flush()
            .context("psql session: writing the query")?;
        let mut line = String::new();
        let n = self
            .stdout
            .read_line(&mut line)
            .context("psql session: reading the answer")?;
        ensure!(
            n > 0,
            "psql session ended (not connected, or the query failed)"
        );
        Ok(line.trim_end().to_string())
    }
}

impl Drop for PsqlSession {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

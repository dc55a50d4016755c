//! Lazy computes: Postgres runs on a page filesystem (`compute pagefs`, FUSE) mounted at
//! `computes/<name>/data`. Relation files are virtual there, their pages fetched from the
//! pageserver at the compute's start LSN on first read; every other file is passed through to
//! `computes/<name>/local`, a slim basebackup (no relation pages) configured like a full one.
//!
//! The daemon is supervised as `compute-<name>-pagefs`. When it dies, Postgres only gets I/O
//! errors from then on, so the supervisor recreates the whole compute ([`recreate`]).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use compute::node::{ComputeNode, ComputeSpec};
use walproto::Lsn;

use crate::cluster::daemon::{tail, Daemon};
use crate::cluster::process::{alive, signal, wait_until_exited};
use crate::cluster::spec::{self, Launch, ServiceLock, Spec};
use crate::cluster::ClusterConfig;
use crate::computes::{self, ComputeRecord, Streamed};
use crate::mgmt::Pageserver;
use crate::output::Output;

/// The slim basebackup the page filesystem passes non-relation files through to.
const LOCAL_DIR: &str = "local";
/// A compute's lease owner is this and its name.
const LEASE_OWNER_PREFIX: &str = "compute:";
/// Written by the daemon once the mount answers.
const READY_FILE: &str = "pagefs.ready";
/// How long the daemon may take to mount and answer.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the daemon may take to unmount and exit after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long `fusermount3 -uz` or `umount -l` may take (a lazy detach does not wait for users).
const UNMOUNT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a postmaster gets to exit after SIGQUIT (immediate shutdown) before SIGKILL.
const POSTMASTER_QUIT_GRACE: Duration = Duration::from_secs(10);
/// How long a writer's walproposer gets, after its Postgres is gone, to commit what it
/// received and exit on its own.
const WALPROPOSER_DRAIN: Duration = Duration::from_secs(10);

pub fn local_dir(dir: &Path, name: &str) -> PathBuf {
    computes::compute_dir(dir, name).join(LOCAL_DIR)
}

/// The mount point: the compute's data directory, as for a full copy (`ComputeNode::new`).
pub fn mount_dir(dir: &Path, name: &str) -> PathBuf {
    computes::compute_dir(dir, name).join("data")
}

/// The owner of the LSN lease a compute's page filesystem holds.
pub fn lease_owner(name: &str) -> String {
    format!("{LEASE_OWNER_PREFIX}{name}")
}

/// The compute holding a lease of `owner`, if a compute's page filesystem took it.
pub fn lease_holder(owner: &str) -> Option<&str> {
    owner.strip_prefix(LEASE_OWNER_PREFIX)
}

fn ready_file(dir: &Path, name: &str) -> PathBuf {
    computes::compute_dir(dir, name).join(READY_FILE)
}

pub fn pagefs_daemon(dir: &Path, name: &str) -> Daemon {
    Daemon::new(dir, &format!("compute-{name}-pagefs"))
}

/// What bringing up a lazy compute's data directory took.
pub struct LazyUp {
    pub streamed: Streamed,
    /// Streaming and unpacking the slim basebackup.
    pub basebackup: Duration,
    /// Writing the compute's settings into `local/`.
    pub configure: Duration,
    pub pagefs_pid: i32,
}

/// Takes the slim basebackup at the record's LSN into `local/`, configures it for `spec` and
/// mounts the page filesystem over the data directory (not supervised yet: see
/// [`supervise_pagefs`]). A tablespace's relation files are served too: the daemon links
/// `pg_tblspc/<oid>` to a directory in the mount.
pub fn prepare(
    dir: &Path,
    cfg: &ClusterConfig,
    ps: &mut Pageserver,
    rec: &ComputeRecord,
    node: &ComputeNode,
    spec: &ComputeSpec,
) -> Result<LazyUp> {
    let lsn = record_lsn(rec)?;
    let local = local_dir(dir, &rec.name);
    unmount(&node.data_dir)?;
    if local.exists() {
        fs::remove_dir_all(&local).with_context(|| format!("removing {}", local.display()))?;
    }
    let mut local_node = node.clone();
    local_node.data_dir = local.clone();
    let t = Instant::now();
    let streamed = computes::stream_basebackup(
        ps,
        &local_node,
        &rec.tenant_id,
        &rec.timeline_id,
        lsn,
        rec.read_only,
        true,
    )?;
    let basebackup = t.elapsed();
    let t = Instant::now();
    local_node.configure(spec)?;
    crate::computes::settings::apply(dir, &rec.name, &local)?;
    let configure = t.elapsed();
    // An empty directory the Postgres OS user owns: the daemon mounts over it.
    node.pg.make_dir(&node.data_dir)?;
    let pagefs_pid = spawn_pagefs(dir, cfg, rec, lsn)?;
    Ok(LazyUp {
        streamed,
        basebackup,
        configure,
        pagefs_pid,
    })
}

fn record_lsn(rec: &ComputeRecord) -> Result<Lsn> {
    rec.lsn
        .parse()
        .map_err(|e| anyhow::anyhow!("compute {}: its LSN {:?}: {e}", rec.name, rec.lsn))
}

/// Starts `compute pagefs` for the compute and waits until its ready file appears and the
/// mount is in the mount table; on any failure the daemon is killed and nothing stays
/// mounted.
fn spawn_pagefs(dir: &Path, cfg: &ClusterConfig, rec: &ComputeRecord, lsn: Lsn) -> Result<i32> {
    let d = pagefs_daemon(dir, &rec.name);
    let mount = mount_dir(dir, &rec.name);
    let ready = ready_file(dir, &rec.name);
    match fs::remove_file(&ready) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing {}", ready.display()))
        }
        _ => {}
    }
    let mut cmd = Command::new(crate::cluster::sibling_binary("compute")?);
    cmd.arg("pagefs")
        .arg("--local")
        .arg(local_dir(dir, &rec.name))
        .arg("--mount")
        .arg(&mount)
        .args(["--pageserver", &cfg.pageserver.grpc_addr()])
        .args(["--tenant", &rec.tenant_id])
        .args(["--timeline", &rec.timeline_id])
        .args(["--lsn", &lsn.to_string()])
        .args(["--lease-owner", &lease_owner(&rec.name)])
        .arg("--ready-file")
        .arg(&ready)
        .args(crate::auth_setup::pagefs_args(
            dir,
            cfg,
            &computes::compute_dir(dir, &rec.name),
            &rec.tenant_id,
        )?)
        .args(crate::tls_setup::client_args(dir, cfg))
        .current_dir("/");
    if rec.read_only {
        cmd.arg("--read-only");
    }
    let mut child = d.spawn_detached(cmd)?;
    let pid = child.id() as i32;
    let deadline = Instant::now() + READY_TIMEOUT;
    let failure = loop {
        if ready.exists() && is_mounted(&mount)? {
            return Ok(pid);
        }
        if let Some(status) = child.try_wait()? {
            break format!("exited ({status}) before its mount answered");
        }
        if Instant::now() >= deadline {
            signal(pid, libc::SIGKILL);
            let _ = child.wait();
            break format!(
                "did not write its ready file {} within {READY_TIMEOUT:?} (killed)",
                ready.display()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let _ = fs::remove_file(&d.pid_file);
    let unmounted = unmount(&mount);
    bail!(
        "the page filesystem of compute {} ({}) {failure}{}; its log ({}):\n{}",
        rec.name,
        d.name,
        unmounted
            .err()
            .map(|e| format!("; and: {e:#}"))
            .unwrap_or_default(),
        d.log_file.display(),
        tail(&d.log_file, 20)
    )
}

/// Hands the running page filesystem of compute `name` to the supervisor: if it dies, the
/// compute is recreated.
pub fn supervise_pagefs(dir: &Path, name: &str) -> Result<()> {
    let d = pagefs_daemon(dir, name);
    let s = Spec {
        name: d.name.clone(),
        launch: Launch::LazyCompute {
            compute: name.to_string(),
            log_file: d.log_file.clone(),
        },
    };
    let _lock = ServiceLock::acquire(dir, &d.name, spec::LOCK_TIMEOUT)?;
    spec::write_spec(dir, &s)?;
    spec::reset_state(dir, &d.name)
}

/// Stops the compute's page filesystem (SIGTERM: it detaches its mount and exits) and makes
/// sure nothing stays mounted. Returns whether it ran. A no-op for a full copy.
pub fn stop_pagefs(dir: &Path, name: &str) -> Result<bool> {
    let ran = pagefs_daemon(dir, name).stop(STOP_GRACE)?;
    unmount(&mount_dir(dir, name))?;
    Ok(ran)
}

/// Removes the compute's directory, never while something is mounted in it (removing would
/// walk into the mount).
pub fn remove_compute_dir(dir: &Path, name: &str) -> Result<()> {
    let mount = mount_dir(dir, name);
    unmount(&mount)?;
    let d = computes::compute_dir(dir, name);
    match fs::remove_dir_all(&d) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", d.display()))
        }
        _ => Ok(()),
    }
}

/// Whether `path` is a mount point now (`/proc/self/mountinfo`). Works on a mount whose
/// daemon died (where any stat of the path fails).
pub fn is_mounted(path: &Path) -> Result<bool> {
    let path = resolve_parent(path)?;
    let table =
        fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    Ok(table
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| Path::new(&unescape_mountinfo(m)) == path))
}

/// `path` with its parent directory resolved (symbolic links, `..`), as the mount table
/// shows mount points, without touching `path` itself.
fn resolve_parent(path: &Path) -> Result<PathBuf> {
    let (Some(parent), Some(file)) = (path.parent(), path.file_name()) else {
        return Ok(path.to_path_buf());
    };
    match parent.canonicalize() {
        Ok(p) => Ok(p.join(file)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(path.to_path_buf()),
        Err(e) => Err(e).with_context(|| format!("resolving {}", parent.display())),
    }
}

/// The mount table escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape_mountinfo(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                let v = d.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                out.push(u8::try_from(v).unwrap_or(b'?'));
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Detaches whatever is mounted at `mount` (a no-op if nothing is): `fusermount3 -uz`, then
/// `umount -l`. Both detach lazily, so files Postgres (or anyone) holds open do not stop it.
pub fn unmount(mount: &Path) -> Result<()> {
    if !is_mounted(mount)? {
        return Ok(());
    }
    let mut tried = Vec::new();
    for (prog, flags) in [("fusermount3", "-uz"), ("umount", "-l")] {
        let mut cmd = Command::new(prog);
        cmd.arg(flags).arg(mount);
        match run_bounded(cmd, UNMOUNT_TIMEOUT) {
            Ok(()) => {}
            Err(e) => tried.push(format!("{prog} {flags}: {e:#}")),
        }
        if !is_mounted(mount)? {
            return Ok(());
        }
    }
    bail!(
        "{} is still mounted ({})",
        mount.display(),
        if tried.is_empty() {
            "fusermount3 -uz and umount -l succeeded, yet the mount table still lists it".into()
        } else {
            tried.join("; ")
        }
    )
}

/// Runs `cmd` (output discarded) and fails if it fails or does not finish within `timeout`.
fn run_bounded(mut cmd: Command, timeout: Duration) -> Result<()> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            if status.success() {
                return Ok(());
            }
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            bail!("{status}: {}", err.trim());
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("did not finish within {timeout:?} (killed)");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The postmaster running on `data_dir`, found by its command line (`postgres -D <dir>`, as
/// pg_ctl starts it), so also when its `postmaster.pid` cannot be read (a dead mount).
pub fn postmaster_of(data_dir: &Path) -> Option<i32> {
    let want = data_dir.as_os_str().as_encoded_bytes();
    let entries = fs::read_dir("/proc").ok()?;
    entries.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = fs::read(e.path().join("cmdline")).ok()?;
        let mut args = cmdline.split(|b| *b == 0);
        let prog = args.next()?;
        let is_postmaster = prog.ends_with(b"/postgres") || prog == b"postgres";
        (is_postmaster && args.next()? == b"-D" && args.next()? == want && alive(pid))
            .then_some(pid)
    })
}

/// Stops the postmaster on `data_dir` immediately (SIGQUIT, then SIGKILL) if one runs.
/// Returns whether one ran.
pub fn stop_postmaster_of(data_dir: &Path, name: &str) -> Result<bool> {
    let Some(pid) = postmaster_of(data_dir) else {
        return Ok(false);
    };
    signal(pid, libc::SIGQUIT);
    if !wait_until_exited(pid, POSTMASTER_QUIT_GRACE) {
        signal(pid, libc::SIGKILL);
        if !wait_until_exited(pid, Duration::from_secs(10)) {
            bail!("the postmaster of compute {name} (pid {pid}) survived SIGKILL for 10 s");
        }
    }
    Ok(true)
}

/// The supervisor's restart of a lazy compute whose page filesystem died (called with the
/// daemon's service lock held). Postgres has only I/O errors from then on, and the daemon
/// cannot simply come back under it, so the compute is recreated: Postgres stopped
/// immediately, the dead mount detached, a fresh slim basebackup (a read-write compute at
/// the branch's latest committed LSN: its WAL is on the safekeepers; a read-only one at its
/// own LSN), the daemon, Postgres, and a writer's walproposer. `None` if the compute is gone.
pub fn recreate(dir: &Path, name: &str) -> Result<Option<i32>> {
    let Ok(mut rec) = ComputeRecord::load(dir, name) else {
        return Ok(None);
    };
    let cfg = ClusterConfig::load(dir)?;
    let node = computes::node(dir, &cfg, name)?;
    let pg_service = computes::postgres_service(name);
    let wp = computes::walproposer_daemon(dir, name);
    spec::forget(dir, &pg_service)?;
    spec::forget(dir, &wp.name)?;
    stop_postmaster_of(&node.data_dir, name)?;
    // Without Postgres the walproposer commits what it received and exits by itself.
    if let crate::cluster::daemon::State::Running(pid) = wp.state()? {
        wait_until_exited(pid, WALPROPOSER_DRAIN);
    }
    wp.stop(Duration::from_secs(10))?;
    unmount(&node.data_dir)?;
    let _ = fs::remove_file(pagefs_daemon(dir, name).pid_file);
    let mut ps = Pageserver::connect(&cfg.pageserver.grpc_addr())?;
    let lsn = if rec.read_only {
        record_lsn(&rec)?
    } else {
        crate::lsn::wait_for_committed_wal(
            &cfg,
            &mut ps,
            &rec.tenant_id,
            &rec.timeline_id,
            true,
            &Output::new(false),
        )?
    };
    rec.lsn = lsn.to_string();
    let spec = computes::compute_spec(&cfg, &rec);
    let up = prepare(dir, &cfg, &mut ps, &rec, &node, &spec)?;
    let started = (|| -> Result<()> {
        rec.store(dir)?;
        node.start()?;
        crate::cluster::supervisor::watch_postgres(dir, &pg_service, &cfg.pg_bin, &node)?;
        if !rec.read_only {
            computes::start_walproposer(dir, &cfg, &rec, &node, lsn)?;
        }
        Ok(())
    })();
    if let Err(e) = started {
        let _ = spec::forget(dir, &pg_service);
        let _ = stop_postmaster_of(&node.data_dir, name);
        let _ = wp.stop(Duration::from_secs(10));
        signal(up.pagefs_pid, libc::SIGTERM);
        wait_until_exited(up.pagefs_pid, STOP_GRACE);
        let _ = unmount(&node.data_dir);
        return Err(e);
    }
    Ok(Some(up.pagefs_pid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_table_escapes_are_undone() {
        assert_eq!(unescape_mountinfo("/a\\040b/c"), "/a b/c");
        assert_eq!(unescape_mountinfo("/x\\134y"), "/x\\y");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo("/end\\04"), "/end\\04");
    }

    #[test]
    fn the_root_is_mounted_and_a_plain_directory_is_not() {
        assert!(is_mounted(Path::new("/")).unwrap());
        let d = tempfile::tempdir().unwrap();
        assert!(!is_mounted(d.path()).unwrap());
        unmount(d.path()).unwrap();
    }
}

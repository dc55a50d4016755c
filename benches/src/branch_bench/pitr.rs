//! Postgres's own point-in-time recovery, the way an operator does it: copy the base backup
//! into a fresh data directory, set `recovery_target_lsn` with a `restore_command` that copies
//! segments from a WAL directory, start, wait for the promotion at the target, and query.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use strata_tests::PgCluster;
use walproto::Lsn;

/// One recovered server (stopped and removed when dropped) and how long each phase took.
pub struct Recovered {
    pub cluster: PgCluster,
    pub copy_secs: f64,
    pub replay_secs: f64,
}

/// Restores `base_backup` and replays the WAL in `wal_dir` up to `target` (every record that
/// starts before it: `recovery_target_inclusive = off`, which is the state at a record end
/// `target`), then promotes. Gives up after `timeout`.
pub fn recover_to(
    base_backup: &Path,
    wal_dir: &Path,
    target: Lsn,
    timeout: Duration,
) -> Result<Recovered> {
    ensure!(
        base_backup.join("backup_label").exists(),
        "{} is not a base backup (no backup_label)",
        base_backup.display()
    );
    let t0 = Instant::now();
    let restore = format!("cp '{}/%f' '%p'", wal_dir.display());
    let settings: Vec<(String, String)> = [
        ("restore_command", restore.as_str()),
        ("recovery_target_lsn", &target.to_string()),
        ("recovery_target_inclusive", "off"),
        ("recovery_target_action", "promote"),
        ("hot_standby", "on"),
        // The copy came from a Strata compute: no walproposer here, no archive.
        ("synchronous_standby_names", ""),
        ("archive_mode", "off"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let cluster = PgCluster::from_data_dir(
        |data| {
            let st = std::process::Command::new("cp")
                .arg("-a")
                .arg(base_backup)
                .arg(data)
                .status()
                .context("running cp")?;
            ensure!(
                st.success(),
                "copying {} to {} failed",
                base_backup.display(),
                data.display()
            );
            // The compute's own signal files must not come along; recovery.signal asks for
            // targeted archive recovery.
            let _ = std::fs::remove_file(data.join("standby.signal"));
            // The compute kept all its WAL (ALTER SYSTEM SET wal_keep_size); the recovered
            // server must not keep every segment it restores (postgresql.auto.conf wins
            // over postgresql.conf, so the line goes).
            drop_auto_conf_setting(data, "wal_keep_size")?;
            std::fs::write(data.join("recovery.signal"), b"")?;
            Ok(())
        },
        &settings,
    )?;
    let copy_secs = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    cluster.start()?;
    // pg_ctl -w returns once the hot standby accepts connections (at consistency); the target
    // is reached when recovery ends with the promotion.
    loop {
        match cluster.psql("SELECT pg_is_in_recovery()") {
            Ok(s) if s.trim() == "f" => break,
            Ok(_) => {}
            Err(e) if t1.elapsed() > timeout => {
                bail!(
                    "recovery did not finish in {timeout:?}: {e:#}\n{}",
                    cluster.log_tail(20)
                )
            }
            Err(_) => {}
        }
        if t1.elapsed() > timeout {
            bail!(
                "recovery to {target} did not finish in {timeout:?}; server log tail:\n{}",
                cluster.log_tail(20)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = std::fs::read_to_string(cluster.log_file()).unwrap_or_default();
    ensure!(
        log.contains("recovery stopping before WAL location")
            || log.contains("recovery stopping after WAL location"),
        "Postgres promoted without reaching the target {target} (not enough WAL?); server log tail:\n{}",
        cluster.log_tail(20)
    );
    Ok(Recovered {
        cluster,
        copy_secs,
        replay_secs: t1.elapsed().as_secs_f64(),
    })
}

/// Removes `name` from a data directory's postgresql.auto.conf (ALTER SYSTEM's file).
fn drop_auto_conf_setting(data: &Path, name: &str) -> Result<()> {
    let p = data.join("postgresql.auto.conf");
    let text = match std::fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", p.display())),
    };
    let kept: String = text
        .lines()
        .filter(|l| l.split('=').next().map(str::trim) != Some(name))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&p, kept).with_context(|| format!("writing {}", p.display()))
}

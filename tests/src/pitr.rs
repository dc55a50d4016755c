//! Postgres's own point-in-time recovery as the oracle for a past state: a copy of a base
//! backup recovered with the given `recovery_target_*` settings, replaying WAL from a
//! directory, promoted at the target.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};

use crate::PgCluster;

/// How long Postgres's recovery may take to reach its target.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(120);

/// Postgres's PITR of `base` (a `pg_basebackup -Fp` directory) to the target `recovery`
/// names, replaying WAL from `wal_dir`; returns `pg_dump` of its `postgres` database.
/// `label` names the target in errors.
pub fn postgres_pitr(
    base: &Path,
    wal_dir: &Path,
    label: &str,
    recovery: &[(String, String)],
) -> Result<String> {
    let mut settings: Vec<(String, String)> = vec![
        (
            "restore_command".into(),
            format!("cp {}/%f %p", wal_dir.display()),
        ),
        // Promote at the target: a paused standby would still hold the locks of transactions
        // in progress there (a DROP not yet committed), and pg_dump would wait on them.
        ("recovery_target_action".into(), "promote".into()),
        ("wal_keep_size".into(), "0".into()),
    ];
    settings.extend(recovery.iter().cloned());
    let pg = PgCluster::from_data_dir(
        |d| {
            let st = Command::new("cp").arg("-a").arg(base).arg(d).status()?;
            ensure!(st.success(), "copying the base backup");
            // The base backup's own settings file would point at the compute's sockets.
            std::fs::write(d.join("recovery.signal"), "")?;
            let _ = std::fs::remove_file(d.join("standby.signal"));
            Ok(())
        },
        &settings,
    )?;
    pg.start()?;
    let deadline = Instant::now() + RECOVERY_DEADLINE;
    loop {
        // Connections are refused until recovery is consistent: keep asking.
        if let Ok(r) = pg.psql("SELECT pg_is_in_recovery()") {
            if r.trim() == "f" {
                break;
            }
        }
        if Instant::now() > deadline {
            bail!(
                "Postgres's recovery to {label} did not reach its target within {:?}:\n{}",
                RECOVERY_DEADLINE,
                pg.log_tail(30)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    pg.pg_dump("postgres", &[])
}

//! Physical streaming replication from Postgres, as a standby would do it:
//! `IDENTIFY_SYSTEM`, a physical replication slot, `START_REPLICATION`, then XLogData and
//! keepalives in, standby status updates out.

use std::time::Duration;

use crate::replication::{pg_now, ReplicationMessage};
use crate::Lsn;

use super::conn::{PgConnection, PgError};

/// What `IDENTIFY_SYSTEM` says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SystemIdentity {
    pub system_id: u64,
    pub timeline: u32,
    /// The server's current WAL flush position.
    pub xlogpos: Lsn,
}

fn protocol(what: &str) -> PgError {
    PgError::Protocol(what.to_string())
}

/// Runs `IDENTIFY_SYSTEM` on a replication connection.
pub async fn identify_system(conn: &mut PgConnection) -> Result<SystemIdentity, PgError> {
    let rows = conn.simple_query("IDENTIFY_SYSTEM").await?;
    let row = rows
        .first()
        .ok_or_else(|| protocol("IDENTIFY_SYSTEM returned no row"))?;
    let field = |i: usize| -> Result<&str, PgError> {
        row.get(i)
            .and_then(|v| v.as_deref())
            .ok_or_else(|| protocol("IDENTIFY_SYSTEM row is missing a column"))
    };
    Ok(SystemIdentity {
        system_id: field(0)?
            .parse()
            .map_err(|_| protocol("IDENTIFY_SYSTEM: bad system id"))?,
        timeline: field(1)?
            .parse()
            .map_err(|_| protocol("IDENTIFY_SYSTEM: bad timeline"))?,
        xlogpos: field(2)?
            .parse()
            .map_err(|_| protocol("IDENTIFY_SYSTEM: bad xlogpos"))?,
    })
}

/// Creates a physical slot that reserves WAL from now on; `false` if it already existed.
pub async fn create_physical_slot(conn: &mut PgConnection, name: &str) -> Result<bool, PgError> {
    match conn
        .simple_query(&format!(
            "CREATE_REPLICATION_SLOT {name} PHYSICAL RESERVE_WAL"
        ))
        .await
    {
        Ok(_) => Ok(true),
        // duplicate_object
        Err(e) if e.code() == Some("42710") => Ok(false),
        Err(e) => Err(e),
    }
}

/// A running physical replication stream.
pub struct WalStream {
    conn: PgConnection,
}

impl WalStream {
    /// `START_REPLICATION [SLOT slot] PHYSICAL start TIMELINE tli`. `start` is rounded down to
    /// a page boundary by nothing here: Postgres streams from exactly `start`.
    pub async fn start(
        mut conn: PgConnection,
        slot: Option<&str>,
        start: Lsn,
        timeline: u32,
    ) -> Result<WalStream, PgError> {
        let slot = slot.map(|s| format!("SLOT {s} ")).unwrap_or_default();
        conn.start_copy_both(&format!(
            "START_REPLICATION {slot}PHYSICAL {start} TIMELINE {timeline}"
        ))
        .await?;
        Ok(WalStream { conn })
    }

    /// The next XLogData or keepalive; `Ok(None)` if nothing came within `timeout`, so the
    /// caller can send a status update. Errors if the server ends the stream.
    pub async fn next(&mut self, timeout: Duration) -> Result<Option<ReplicationMessage>, PgError> {
        let payload = match tokio::time::timeout(timeout, self.conn.read_copy_data()).await {
            Err(_) => return Ok(None),
            Ok(r) => r?,
        };
        let payload = payload.ok_or_else(|| protocol("the server ended the replication stream"))?;
        ReplicationMessage::parse(payload)
            .map(Some)
            .map_err(|e| PgError::Protocol(e.to_string()))
    }

    /// Reports positions to the server. `flushed` is what the server may treat as durable
    /// (a synchronous commit waits for it); the walproposer never promises apply to Postgres,
    /// so `applied` stays 0.
    pub async fn send_status(
        &mut self,
        written: Lsn,
        flushed: Lsn,
        reply_requested: bool,
    ) -> Result<(), PgError> {
        self.send_positions(written, flushed, Lsn::INVALID, reply_requested)
            .await
    }

    /// Reports all three positions. A safekeeper reads `applied` from a pageserver as the
    /// LSN up to which the pageserver made the WAL durable remotely.
    pub async fn send_positions(
        &mut self,
        written: Lsn,
        flushed: Lsn,
        applied: Lsn,
        reply_requested: bool,
    ) -> Result<(), PgError> {
        let msg = ReplicationMessage::StandbyStatus {
            written,
            flushed,
            applied,
            send_time: pg_now(),
            reply_requested,
        };
        self.conn.send_copy_data(&msg.to_bytes()).await
    }
}

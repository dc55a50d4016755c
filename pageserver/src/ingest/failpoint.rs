//! Test failpoints keyed on logical messages (`pg_logical_emit_message`), read from the
//! environment once. Unset, each costs one check of a cached flag per logical message.
//!
//! - `STRATA_FAILPOINT_REFUSE_MESSAGE=<prefix>`: a message with that prefix is refused like a
//!   record this pageserver cannot ingest, so the timeline stops there (metrics, status and
//!   the walreceiver pause are tested with a real Postgres).
//! - `STRATA_FAILPOINT_PAUSE_MESSAGE=<prefix>` with `STRATA_FAILPOINT_PAUSE_WHILE=<path>`:
//!   once a message with that prefix is ingested, the batch it is in waits while the file
//!   `<path>` exists (at most [`PAUSE_LIMIT`]) before its next record, at the point where it
//!   lets readers in (`driver::ingest_batch_yielding`): a batch held open, for the test that
//!   reads do not wait for it.

use std::path::PathBuf;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use walproto::record::DecodedRecord;
use walproto::rmgr::RM_LOGICALMSG_ID;

/// A message prefix named by the environment variable `var`.
fn prefix_from_env(var: &str) -> Option<Vec<u8>> {
    std::env::var_os(var)
        .map(|p| p.into_encoded_bytes())
        .filter(|p| !p.is_empty())
}

static REFUSED_PREFIX: LazyLock<Option<Vec<u8>>> =
    LazyLock::new(|| prefix_from_env("STRATA_FAILPOINT_REFUSE_MESSAGE"));

static PAUSE: LazyLock<Option<(Vec<u8>, PathBuf)>> = LazyLock::new(|| {
    let prefix = prefix_from_env("STRATA_FAILPOINT_PAUSE_MESSAGE")?;
    let path = std::env::var_os("STRATA_FAILPOINT_PAUSE_WHILE")?;
    Some((prefix, PathBuf::from(path)))
});

/// The longest a pause lasts: a test that forgets to remove its file does not hang ingest.
pub(super) const PAUSE_LIMIT: Duration = Duration::from_secs(60);

/// `xl_logical_message`: dbId (4), transactional (1, padded to 8), prefix_size (8),
/// message_size (8), then the prefix with its NUL and the message.
const PREFIX_SIZE_AT: usize = 8;
const PREFIX_AT: usize = 24;

/// Why the failpoint refuses `rec`, if it does.
pub(super) fn refuses(rec: &DecodedRecord) -> Option<String> {
    let wanted = REFUSED_PREFIX.as_ref()?;
    is_message(rec, wanted).then(|| {
        format!(
            "refused by the failpoint STRATA_FAILPOINT_REFUSE_MESSAGE={}",
            String::from_utf8_lossy(wanted)
        )
    })
}

/// Whether `rec` is a logical message with the prefix `wanted`.
fn is_message(rec: &DecodedRecord, wanted: &[u8]) -> bool {
    rec.rmid() == RM_LOGICALMSG_ID && message_prefix(rec.main_data()) == Some(wanted)
}

/// A pause the failpoint asks for after a record.
pub(super) struct Pause {
    while_exists: &'static std::path::Path,
}

impl Pause {
    /// Waits while the file exists, at most [`PAUSE_LIMIT`].
    pub(super) fn wait(&self) {
        let t0 = Instant::now();
        while self.while_exists.exists() {
            if t0.elapsed() >= PAUSE_LIMIT {
                tracing::warn!(
                    "failpoint STRATA_FAILPOINT_PAUSE_WHILE: {} still exists after {PAUSE_LIMIT:?}; \
                     ingest goes on",
                    self.while_exists.display()
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// The pause the failpoint asks for once `rec` is ingested, if it does.
pub(super) fn pause_after(rec: &DecodedRecord) -> Option<Pause> {
    let (prefix, path) = PAUSE.as_ref()?;
    is_message(rec, prefix).then_some(Pause {
        while_exists: path.as_path(),
    })
}

/// The prefix of a logical message's main data, without its NUL.
fn message_prefix(data: &[u8]) -> Option<&[u8]> {
    let size_bytes = data.get(PREFIX_SIZE_AT..PREFIX_SIZE_AT + 8)?;
    let size = usize::try_from(u64::from_le_bytes(size_bytes.try_into().ok()?)).ok()?;
    let end = PREFIX_AT.checked_add(size)?;
    let prefix = data.get(PREFIX_AT..end)?;
    Some(prefix.strip_suffix(&[0]).unwrap_or(prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_prefix_of_a_logical_message() {
        let mut data = vec![0u8; PREFIX_AT];
        data[PREFIX_SIZE_AT..PREFIX_AT - 8].copy_from_slice(&5u64.to_le_bytes());
        data.extend_from_slice(b"stop\0payload");
        assert_eq!(message_prefix(&data), Some(&b"stop"[..]));
        // Truncated or lying sizes are not a prefix, and never a panic.
        assert_eq!(message_prefix(&data[..10]), None);
        data[PREFIX_SIZE_AT..PREFIX_AT - 8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(message_prefix(&data), None);
    }
}

//! A test failpoint for a record ingest refuses, in a real cluster: with
//! `STRATA_FAILPOINT_REFUSE_MESSAGE=<prefix>` in the pageserver's environment, a logical
//! message (`pg_logical_emit_message`) with that prefix is refused like a record this
//! pageserver cannot ingest, so the timeline stops there (metrics, status and the walreceiver
//! pause are tested with a real Postgres). Unset, it costs one check of a cached flag per
//! logical message.

use std::sync::LazyLock;

use walproto::record::DecodedRecord;
use walproto::rmgr::RM_LOGICALMSG_ID;

static REFUSED_PREFIX: LazyLock<Option<Vec<u8>>> = LazyLock::new(|| {
    std::env::var_os("STRATA_FAILPOINT_REFUSE_MESSAGE")
        .map(|p| p.into_encoded_bytes())
        .filter(|p| !p.is_empty())
});

/// `xl_logical_message`: dbId (4), transactional (1, padded to 8), prefix_size (8),
/// message_size (8), then the prefix with its NUL and the message.
const PREFIX_SIZE_AT: usize = 8;
const PREFIX_AT: usize = 24;

/// Why the failpoint refuses `rec`, if it does.
pub(super) fn refuses(rec: &DecodedRecord) -> Option<String> {
    let wanted = REFUSED_PREFIX.as_ref()?;
    if rec.rmid() != RM_LOGICALMSG_ID {
        return None;
    }
    (message_prefix(rec.main_data())? == wanted.as_slice()).then(|| {
        format!(
            "refused by the failpoint STRATA_FAILPOINT_REFUSE_MESSAGE={}",
            String::from_utf8_lossy(wanted)
        )
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

//! Reading WAL back from a directory of segment files (Postgres's `pg_wal`, a safekeeper's
//! timeline directory), to compare what each side holds.

use std::path::Path;

use anyhow::{ensure, Context, Result};
use walproto::consts::WAL_SEGMENT_SIZE;
use walproto::Lsn;

/// WAL `[from, to)` of Postgres timeline 1 from the segment files in `dir` (`name`, or
/// `name.partial` as a safekeeper keeps its last segment).
pub fn read_wal(dir: &Path, from: Lsn, to: Lsn) -> Result<Vec<u8>> {
    let len =
        to.0.checked_sub(from.0)
            .context("WAL range ends before it starts")?;
    let mut out = Vec::with_capacity(usize::try_from(len)?);
    let mut at = from;
    while at < to {
        let name = at.segment_file_name(1);
        let path = [dir.join(&name), dir.join(format!("{name}.partial"))]
            .into_iter()
            .find(|p| p.exists())
            .with_context(|| format!("no segment {name} in {}", dir.display()))?;
        let bytes = std::fs::read(&path).with_context(|| format!("{}", path.display()))?;
        let off = at.segment_offset() as usize;
        let n = (WAL_SEGMENT_SIZE as usize - off).min((to.0 - at.0) as usize);
        ensure!(bytes.len() >= off + n, "{} is short", path.display());
        out.extend_from_slice(&bytes[off..off + n]);
        at = Lsn(at.0 + n as u64);
    }
    Ok(out)
}

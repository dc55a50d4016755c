//! `backup_label`, the file `pg_basebackup` (and `pg_backup_stop`) leaves in a base backup:
//! where WAL replay must start, and which checkpoint that start belongs to.

use layer_format::Lsn;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupLabel {
    /// `START WAL LOCATION`: the checkpoint's redo LSN, where replay starts.
    pub start: Lsn,
    /// `CHECKPOINT LOCATION`: the checkpoint record the backup started from.
    pub checkpoint: Lsn,
    /// `BACKUP FROM: standby`: the backup's end is the control file's minimum recovery
    /// point, not a `XLOG/BACKUP_END` record.
    pub from_standby: bool,
    /// `START TIMELINE`, 1 if absent.
    pub timeline: u32,
}

/// Parses `%X/%X` (ignoring anything after it, such as ` (file ...)`).
fn lsn_field(v: &str) -> Option<Lsn> {
    v.split_whitespace().next()?.parse().ok()
}

impl BackupLabel {
    pub fn parse(text: &str) -> Result<BackupLabel, String> {
        let mut start = None;
        let mut checkpoint = None;
        let mut from_standby = false;
        let mut timeline = 1;
        for line in text.lines() {
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            let v = v.trim();
            match k.trim() {
                "START WAL LOCATION" => {
                    start = Some(lsn_field(v).ok_or(format!("bad START WAL LOCATION {v:?}"))?)
                }
                "CHECKPOINT LOCATION" => {
                    checkpoint = Some(lsn_field(v).ok_or(format!("bad CHECKPOINT LOCATION {v:?}"))?)
                }
                "BACKUP FROM" => from_standby = v == "standby",
                "START TIMELINE" => {
                    timeline = v.parse().map_err(|_| format!("bad START TIMELINE {v:?}"))?
                }
                _ => {}
            }
        }
        Ok(BackupLabel {
            start: start.ok_or("no START WAL LOCATION line")?,
            checkpoint: checkpoint.ok_or("no CHECKPOINT LOCATION line")?,
            from_standby,
            timeline,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pg_basebackup_label() {
        let text = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)
CHECKPOINT LOCATION: 0/2000060
BACKUP METHOD: streamed
BACKUP FROM: primary
START TIME: 2026-11-21 22:00:00 UTC
LABEL: pg_basebackup base backup
START TIMELINE: 1
";
        let l = BackupLabel::parse(text).unwrap();
        assert_eq!(l.start, Lsn(0x2000028));
        assert_eq!(l.checkpoint, Lsn(0x2000060));
        assert!(!l.from_standby);
        assert_eq!(l.timeline, 1);
        assert!(BackupLabel::parse("LABEL: x\n").is_err());
        assert!(BackupLabel::parse("START WAL LOCATION: zz\n").is_err());
    }
}

//! `strata waldump`: prints WAL records in pg_waldump's layout, so the two can be compared line
//! by line; with `--json`, one JSON array of records (or the statistics as one object).

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use walproto::consts::fork_name;
use walproto::rmgr;
use walproto::walfiles::{first_segment_lsn, WalDirReader, WalReadError};
use walproto::{DecodedRecord, Lsn};

#[derive(clap::Args)]
pub struct WaldumpArgs {
    /// Directory holding the WAL segment files, or one segment file (its directory is used and
    /// the start defaults to that segment).
    #[arg(short = 'p', long = "path")]
    path: PathBuf,
    /// First record to print: the first at or after this LSN (default: the first segment found).
    #[arg(short = 's', long = "start")]
    start: Option<Lsn>,
    /// Stop before any record that does not end by this LSN.
    #[arg(short = 'e', long = "end")]
    end: Option<Lsn>,
    /// Print each block reference on its own line, with full-page image details.
    #[arg(short = 'b', long = "bkp-details")]
    bkp_details: bool,
    /// Timeline of the segment files to read (default: the highest found for the start).
    #[arg(short = 't', long = "timeline")]
    timeline: Option<u32>,
    /// Print at most this many records.
    #[arg(short = 'n', long = "limit")]
    limit: Option<u64>,
    /// Print a summary per resource manager (counts and bytes) instead of the records.
    #[arg(short = 'z', long = "stats")]
    stats: bool,
}

/// Per resource manager: records, bytes of records without images, bytes of images.
#[derive(Default)]
struct Stats {
    per_rmgr: std::collections::BTreeMap<u8, (u64, u64, u64)>,
}

impl Stats {
    fn add(&mut self, rec: &DecodedRecord) {
        let fpi = rec.fpi_len() as u64;
        let e = self.per_rmgr.entry(rec.rmid()).or_default();
        e.0 += 1;
        e.1 += rec.header.tot_len as u64 - fpi;
        e.2 += fpi;
    }

    fn print(&self, out: &mut impl Write, start: Lsn, end: Lsn) -> std::io::Result<()> {
        let (n, r, f) = self
            .per_rmgr
            .values()
            .fold((0, 0, 0), |a, v| (a.0 + v.0, a.1 + v.1, a.2 + v.2));
        let pct = |x: u64, of: u64| {
            if of == 0 {
                0.0
            } else {
                100.0 * x as f64 / of as f64
            }
        };
        writeln!(
            out,
            "WAL {start} .. {end}: {n} records, {} bytes of records, {} bytes of full-page images",
            r, f
        )?;
        writeln!(
            out,
            "{:<18} {:>10} {:>7} {:>14} {:>7} {:>14} {:>7}",
            "rmgr", "records", "(%)", "record bytes", "(%)", "FPI bytes", "(%)"
        )?;
        for (rmid, (cn, cr, cf)) in &self.per_rmgr {
            let name = rmgr_name(*rmid);
            writeln!(
                out,
                "{:<18} {:>10} {:>6.2}% {:>14} {:>6.2}% {:>14} {:>6.2}%",
                name,
                cn,
                pct(*cn, n),
                cr,
                pct(*cr, r),
                cf,
                pct(*cf, f)
            )?;
        }
        Ok(())
    }

    fn json(&self, start: Lsn, end: Lsn) -> serde_json::Value {
        let rmgrs: Vec<serde_json::Value> = self
            .per_rmgr
            .iter()
            .map(|(rmid, (n, r, f))| {
                serde_json::json!({"rmgr": rmgr_name(*rmid), "records": n,
                                   "record_bytes": r, "fpi_bytes": f})
            })
            .collect();
        let (n, r, f) = self
            .per_rmgr
            .values()
            .fold((0u64, 0u64, 0u64), |a, v| (a.0 + v.0, a.1 + v.1, a.2 + v.2));
        serde_json::json!({
            "start": start.to_string(), "end": end.to_string(), "records": n,
            "record_bytes": r, "fpi_bytes": f, "rmgrs": rmgrs,
        })
    }
}

fn rmgr_name(rmid: u8) -> String {
    rmgr::rmgr_name(rmid)
        .map(str::to_string)
        .unwrap_or_else(|| format!("custom{rmid:03}"))
}

/// One record as a JSON row: pg_waldump's fields, each in its own key.
pub fn record_json(rec: &DecodedRecord) -> serde_json::Value {
    let h = &rec.header;
    let fpi_len = rec.fpi_len();
    let kind = rmgr::identify(h.rmid, h.info)
        .map(str::to_string)
        .unwrap_or_else(|| format!("UNKNOWN ({:x})", h.info & !walproto::consts::XLR_INFO_MASK));
    let blocks: Vec<serde_json::Value> = rec
        .blocks
        .iter()
        .map(|b| {
            serde_json::json!({
                "id": b.id, "rel": b.rel.to_string(), "fork": fork_name(b.fork).unwrap_or("?"),
                "blk": b.blkno, "fpw": b.image.is_some(),
                "fpw_applied": b.image.as_ref().is_some_and(|i| i.apply()),
            })
        })
        .collect();
    serde_json::json!({
        "lsn": rec.lsn.to_string(), "end_lsn": rec.end_lsn.to_string(),
        "prev": h.prev.to_string(), "rmgr": rmgr_name(h.rmid), "xid": h.xid,
        "rec_len": h.tot_len - fpi_len, "tot_len": h.tot_len, "desc": kind,
        "detail": rmgr::describe(rec), "blocks": blocks,
    })
}

/// Writes records as the elements of one JSON array, opened at the first and closed by
/// [`JsonRows::close`] (an empty array if there was none).
struct JsonRows {
    written: u64,
}

impl JsonRows {
    fn push(&mut self, out: &mut impl Write, rec: &DecodedRecord) -> std::io::Result<()> {
        let sep = if self.written == 0 { "[" } else { "," };
        self.written += 1;
        writeln!(out, "{sep}{}", record_json(rec))
    }

    fn close(&self, out: &mut impl Write) -> std::io::Result<()> {
        writeln!(out, "{}]", if self.written == 0 { "[" } else { "" })
    }
}

pub fn run(args: WaldumpArgs, json: bool) -> anyhow::Result<ExitCode> {
    let (dir, file_start) = resolve_path(&args.path)?;
    let start = match args.start.or(file_start) {
        Some(s) => s,
        None => first_segment_lsn(&dir)
            .with_context(|| format!("listing {}", dir.display()))?
            .with_context(|| format!("no WAL segment files in {}", dir.display()))?,
    };
    if let Some(end) = args.end {
        if end <= start {
            bail!("end LSN {end} is not after start LSN {start}");
        }
    }
    let mut reader = WalDirReader::open(&dir, start, args.end, args.timeline)?;
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let mut line = String::with_capacity(256);
    let mut printed = 0u64;
    let mut stats = Stats::default();
    let mut last_end = start;
    let mut rows = JsonRows { written: 0 };
    loop {
        if args.limit.is_some_and(|n| printed >= n) {
            break;
        }
        match reader.next_record() {
            Ok(Some(rec)) if args.stats => {
                stats.add(&rec);
                last_end = rec.end_lsn;
                printed += 1;
            }
            Ok(Some(rec)) => {
                let written = if json {
                    rows.push(&mut out, &rec)
                } else {
                    line.clear();
                    format_record(&rec, args.bkp_details, &mut line);
                    out.write_all(line.as_bytes())
                };
                if written.is_err() {
                    return Ok(ExitCode::SUCCESS); // stdout closed, e.g. piped into head
                }
                printed += 1;
            }
            Ok(None) => {
                let end = reader.end().expect("reader ended");
                out.flush().ok();
                if args.end.is_none() && !args.stats {
                    eprintln!("strata waldump: end of WAL at {}: {}", end.lsn, end.reason);
                }
                break;
            }
            Err(e @ WalReadError::Corrupt(_)) => {
                // What was read stays a whole JSON value; the error goes to stderr.
                if json {
                    let _ = finish(&mut out, json, &args, &rows, &stats, (start, last_end));
                } else {
                    out.flush().ok();
                }
                eprintln!("strata waldump: error: {e}");
                return Ok(ExitCode::FAILURE);
            }
            Err(e) => return Err(e.into()),
        }
    }
    finish(&mut out, json, &args, &rows, &stats, (start, last_end))?;
    Ok(ExitCode::SUCCESS)
}

/// Ends the JSON array, or prints the statistics, however reading ended.
fn finish(
    out: &mut impl Write,
    json: bool,
    args: &WaldumpArgs,
    rows: &JsonRows,
    stats: &Stats,
    (start, end): (Lsn, Lsn),
) -> std::io::Result<()> {
    match (json, args.stats) {
        (true, true) => writeln!(out, "{}", stats.json(start, end))?,
        (true, false) => rows.close(out)?,
        (false, true) => stats.print(out, start, end)?,
        (false, false) => {}
    }
    out.flush()
}

/// A directory is used as it is; a segment file means its directory, starting at that segment.
fn resolve_path(path: &Path) -> anyhow::Result<(PathBuf, Option<Lsn>)> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot open {}", path.display()))?;
    if meta.is_dir() {
        return Ok((path.to_path_buf(), None));
    }
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let Some((_, segno)) = walproto::lsn::parse_segment_file_name(name) else {
        bail!(
            "{} is neither a directory nor a WAL segment file",
            path.display()
        );
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    Ok((
        dir.to_path_buf(),
        Some(Lsn(segno * walproto::consts::WAL_SEGMENT_SIZE)),
    ))
}

/// Appends one record in pg_waldump's layout (with the trailing newline).
pub fn format_record(rec: &DecodedRecord, bkp_details: bool, out: &mut String) {
    use std::fmt::Write as _;
    let h = &rec.header;
    let rm_name = rmgr_name(h.rmid);
    let fpi_len = rec.fpi_len();
    let _ = write!(
        out,
        "rmgr: {:<11} len (rec/tot): {:>6}/{:>6}, tx: {:>10}, lsn: {}, prev {}, ",
        rm_name,
        h.tot_len - fpi_len,
        h.tot_len,
        h.xid,
        rec.lsn,
        h.prev
    );
    match rmgr::identify(h.rmid, h.info) {
        Some(id) => {
            let _ = write!(out, "desc: {id} ");
        }
        None => {
            let _ = write!(
                out,
                "desc: UNKNOWN ({:x}) ",
                h.info & !walproto::consts::XLR_INFO_MASK
            );
        }
    }
    out.push_str(&rmgr::describe(rec));
    if bkp_details {
        out.push('\n');
    }
    for b in &rec.blocks {
        let fork = fork_name(b.fork).unwrap_or("?");
        if bkp_details {
            let _ = write!(
                out,
                "\tblkref #{}: rel {} fork {} blk {}",
                b.id, b.rel, fork, b.blkno
            );
            if let Some(img) = &b.image {
                let verification = if img.apply() {
                    ""
                } else {
                    " for WAL verification"
                };
                let _ = write!(
                    out,
                    " (FPW{verification}); hole: offset: {}, length: {}",
                    img.hole_offset, img.hole_length
                );
                match img.compression() {
                    Ok(Some(method)) => {
                        let saved = walproto::consts::BLCKSZ as i64
                            - img.hole_length as i64
                            - img.stored_len() as i64;
                        let _ = write!(
                            out,
                            ", compression saved: {saved}, method: {}",
                            method.name()
                        );
                    }
                    Ok(None) => {}
                    Err(_) => {
                        let saved = walproto::consts::BLCKSZ as i64
                            - img.hole_length as i64
                            - img.stored_len() as i64;
                        let _ = write!(out, ", compression saved: {saved}, method: unknown");
                    }
                }
            }
            out.push('\n');
        } else {
            let _ = write!(out, ", blkref #{}: rel {}", b.id, b.rel);
            if b.fork != walproto::consts::MAIN_FORKNUM {
                let _ = write!(out, " fork {fork}");
            }
            let _ = write!(out, " blk {}", b.blkno);
            if let Some(img) = &b.image {
                out.push_str(if img.apply() {
                    " FPW"
                } else {
                    " FPW for WAL verification"
                });
            }
        }
    }
    if !bkp_details {
        out.push('\n');
    }
}

//! A compute's own Postgres settings (`strata compute start --set key=value`): kept in
//! `computes/<name>/settings.conf`, outside the data directory, so that every recreation of
//! the data directory (a lazy compute's page filesystem dying, a restart) configures them
//! again; they are appended to the data directory's `strata.conf` after Strata's own, each
//! time it is written. The form is checked here; the values are Postgres's to judge (a bad one
//! fails the start with Postgres's message).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::computes::compute_dir;

const SETTINGS_FILE: &str = "settings.conf";

/// Settings Strata itself decides for every compute: how it listens, where its WAL goes, how
/// it logs, which files it reads.
const STRATA_OWNED: &[&str] = &[
    "port",
    "listen_addresses",
    "unix_socket_directories",
    "wal_level",
    "synchronous_standby_names",
    "hot_standby",
    "logging_collector",
    "log_directory",
    "log_filename",
    "data_directory",
    "config_file",
    "hba_file",
    "ident_file",
    "include",
    "include_if_exists",
    "include_dir",
    "primary_conninfo",
    "primary_slot_name",
];

/// `key=value`: a Postgres parameter name (letters, digits, `_`, `.` for an extension's) and a
/// value on one line.
pub fn parse_setting(s: &str) -> std::result::Result<(String, String), String> {
    let Some((k, v)) = s.split_once('=') else {
        return Err(format!("{s:?} is not key=value (e.g. work_mem=64MB)"));
    };
    let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
    let name_ok = k
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
    if !name_ok {
        return Err(format!(
            "{k:?} is not a Postgres parameter name (letters, digits, '_', and '.' for an \
             extension's)"
        ));
    }
    if STRATA_OWNED.contains(&k.as_str()) {
        return Err(format!(
            "{k} is set by Strata for every compute and cannot be changed"
        ));
    }
    if v.is_empty() || v.contains(['\n', '\r', '\0']) {
        return Err(format!("{k}: the value must be one non-empty line"));
    }
    Ok((k, v.to_string()))
}

fn settings_path(dir: &Path, name: &str) -> PathBuf {
    compute_dir(dir, name).join(SETTINGS_FILE)
}

/// A value as a postgresql.conf string literal: every type takes a quoted value.
fn quoted(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "''"))
}

/// Keeps compute `name`'s settings (none: removes them); the last of a repeated key wins.
pub fn store(dir: &Path, name: &str, settings: &[(String, String)]) -> Result<()> {
    let p = settings_path(dir, name);
    if settings.is_empty() {
        return match fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing {}", p.display())),
        };
    }
    let mut text = String::from("# Set with `strata compute start --set`.\n");
    for (k, v) in settings {
        text.push_str(&format!("{k} = {}\n", quoted(v)));
    }
    fs::write(&p, text).with_context(|| format!("writing {}", p.display()))
}

/// Compute `name`'s settings as `key = 'value'` lines (empty if it has none).
pub fn load(dir: &Path, name: &str) -> Result<String> {
    let p = settings_path(dir, name);
    match fs::read_to_string(&p) {
        Ok(t) => Ok(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

/// Appends compute `name`'s settings to `data_dir/strata.conf` (just written by
/// `ComputeNode::configure`, which `postgresql.conf` includes last).
pub fn apply(dir: &Path, name: &str, data_dir: &Path) -> Result<()> {
    let text = load(dir, name)?;
    if text.is_empty() {
        return Ok(());
    }
    let conf = data_dir.join("strata.conf");
    if !conf.exists() {
        bail!(
            "{} is missing: the compute's data directory is not configured",
            conf.display()
        );
    }
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(&conf)
        .with_context(|| format!("opening {}", conf.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", conf.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked_and_quoted() {
        assert_eq!(
            parse_setting("Work_Mem = 64MB").unwrap(),
            ("work_mem".into(), "64MB".into())
        );
        assert_eq!(
            parse_setting("auto_explain.log_min_duration=0").unwrap().0,
            "auto_explain.log_min_duration"
        );
        assert!(parse_setting("work_mem").is_err());
        assert!(parse_setting("1abc=1").is_err());
        assert!(parse_setting("a-b=1").is_err());
        assert!(parse_setting("port=5999").unwrap_err().contains("Strata"));
        assert!(parse_setting("work_mem=").is_err());
        assert!(parse_setting("work_mem=1\nport=1").is_err());
        assert_eq!(quoted(r"it's a\b"), r"'it''s a\\b'");
    }

    #[test]
    fn stored_settings_are_appended_after_stratas() {
        let d = tempfile::tempdir().unwrap();
        let data = d.path().join("computes/c/data");
        fs::create_dir_all(&data).unwrap();
        fs::write(data.join("strata.conf"), "port = 1\n").unwrap();
        let s = vec![("work_mem".to_string(), "64MB".to_string())];
        store(d.path(), "c", &s).unwrap();
        apply(d.path(), "c", &data).unwrap();
        let conf = fs::read_to_string(data.join("strata.conf")).unwrap();
        assert!(
            conf.starts_with("port = 1\n") && conf.ends_with("work_mem = '64MB'\n"),
            "{conf}"
        );
        store(d.path(), "c", &[]).unwrap();
        assert_eq!(load(d.path(), "c").unwrap(), "");
    }
}

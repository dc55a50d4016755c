//! Unpacking a basebackup tar into a data directory, reusing the files already there.
//!
//! A compute's data directory is scratch (everything is in Strata), so a new compute may take
//! over the directory of a removed one: every file of the tar is written over the file of the
//! same path (overwritten in place, then cut to its length), and whatever the tar does not
//! hold is removed afterwards. The result is exactly the tar's content. Creating an inode is by
//! far the most expensive part of writing a data directory on some file systems (a thousand
//! files for an empty cluster), and a basebackup's paths (relfilenodes, SLRU segments, the
//! WAL segment's name aside) are mostly the ones the previous compute of the tenant had.
//!
//! Nothing is fsynced: a compute's files are never needed again after a crash (the compute
//! is recreated from a basebackup), and Postgres does not expect its files synced at start
//! from a clean shutdown.
//!
//! Tablespaces: the tar's symbolic link `pg_tblspc/<oid>` (the only links it may hold)
//! becomes a link to `<root>/../tablespaces/<oid>`, a directory beside the data directory
//! that the compute owns, whatever target the tar names: a compute never writes into another
//! server's tablespace. Entries below the link land there; leftovers there are removed like
//! the data directory's, and so are the directories of tablespaces the tar no longer has.

use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};

/// What [`unpack_over`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnpackReport {
    pub files: u64,
    pub dirs: u64,
    pub bytes: u64,
    /// Files that already existed and were overwritten (no new inode).
    pub reused_files: u64,
    /// Leftover files and directories removed.
    pub removed: u64,
}

/// Unpacks `tar` into `root` (created if missing; made to hold exactly the tar's entries).
/// Entries must be plain files or directories with relative paths inside `root`.
pub fn unpack_over(root: &Path, tar: impl Read) -> Result<UnpackReport> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(root)
        .with_context(|| format!("creating {}", root.display()))?;
    let mut rep = UnpackReport::default();
    let mut kept: HashSet<PathBuf> = HashSet::new();
    // Tablespace OIDs linked from pg_tblspc.
    let mut linked: HashSet<String> = HashSet::new();
    let mut archive = tar::Archive::new(tar);
    let mut buf = vec![0u8; 1 << 20];
    for entry in archive.entries().context("reading the basebackup tar")? {
        let mut entry = entry.context("reading the basebackup tar")?;
        let rel = entry.path().context("a tar entry's path")?.into_owned();
        check_relative(&rel)?;
        let path = root.join(&rel);
        match entry.header().entry_type() {
            tar::EntryType::Directory => {
                match fs::symlink_metadata(&path) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        fs::remove_file(&path)
                            .with_context(|| format!("removing {}", path.display()))?;
                        fs::DirBuilder::new().mode(0o700).create(&path)?;
                    }
                    Err(_) => fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(&path)
                        .with_context(|| format!("creating {}", path.display()))?,
                }
                rep.dirs += 1;
            }
            tar::EntryType::Symlink => {
                let oid = tablespace_oid(&rel)?;
                link_tablespace(root, &path, oid)?;
                linked.insert(oid.to_string());
                rep.dirs += 1;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let reused = write_over(&path, &mut entry, &mut buf, &mut rep.bytes)
                    .with_context(|| format!("writing {}", path.display()))?;
                rep.files += 1;
                rep.reused_files += u64::from(reused);
            }
            other => bail!(
                "the basebackup holds {} of type {other:?}: only files, directories and \
                 pg_tblspc links are expected",
                rel.display()
            ),
        }
        // A file's directories are the tar's too, even if it did not list them.
        let mut p = rel.as_path();
        kept.insert(p.to_path_buf());
        while let Some(parent) = p.parent().filter(|p| !p.as_os_str().is_empty()) {
            if !kept.insert(parent.to_path_buf()) {
                break;
            }
            p = parent;
        }
    }
    rep.removed = remove_others(root, Path::new(""), &kept)?;
    rep.removed += remove_unlinked_tablespaces(root, &linked)?;
    Ok(rep)
}

/// Where the compute keeps the tablespaces of the data directory `root`.
pub fn tablespaces_dir(root: &Path) -> PathBuf {
    root.parent().unwrap_or(root).join("tablespaces")
}

/// The OID of a tablespace link entry: the tar may hold links only at `pg_tblspc/<oid>`.
fn tablespace_oid(rel: &Path) -> Result<u32> {
    let mut parts = rel.components();
    match (parts.next(), parts.next(), parts.next()) {
        (Some(Component::Normal(dir)), Some(Component::Normal(oid)), None)
            if dir == "pg_tblspc" =>
        {
            if let Some(oid) = oid.to_str().and_then(|s| s.parse::<u32>().ok()) {
                return Ok(oid);
            }
        }
        _ => {}
    }
    bail!(
        "the basebackup holds a symbolic link {}: links are expected only at pg_tblspc/<oid>",
        rel.display()
    )
}

/// Makes `link` (`pg_tblspc/<oid>`) a link to the compute's own directory of tablespace `oid`.
fn link_tablespace(root: &Path, link: &Path, oid: u32) -> Result<()> {
    let spcs = tablespaces_dir(root);
    // Traversable by the Postgres OS user; each tablespace inside is its own, mode 0700.
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&spcs)
        .with_context(|| format!("creating {}", spcs.display()))?;
    let target = std::path::absolute(spcs.join(oid.to_string()))
        .with_context(|| format!("the path of tablespace {oid}"))?;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&target)
        .with_context(|| format!("creating {}", target.display()))?;
    match fs::symlink_metadata(link) {
        Ok(m) if m.is_symlink() && fs::read_link(link).is_ok_and(|t| t == target) => return Ok(()),
        Ok(m) if m.is_dir() => fs::remove_dir_all(link),
        Ok(_) => fs::remove_file(link),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
    .with_context(|| format!("replacing {}", link.display()))?;
    std::os::unix::fs::symlink(&target, link)
        .with_context(|| format!("linking {} to {}", link.display(), target.display()))
}

/// Removes the tablespace directories beside `root` that no link of the tar names.
fn remove_unlinked_tablespaces(root: &Path, linked: &HashSet<String>) -> Result<u64> {
    let spcs = tablespaces_dir(root);
    let entries = match fs::read_dir(&spcs) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e).with_context(|| format!("listing {}", spcs.display())),
    };
    let mut removed = 0;
    for e in entries {
        let e = e?;
        if linked.contains(&*e.file_name().to_string_lossy()) {
            continue;
        }
        remove_entry(&e.path(), e.file_type()?)?;
        removed += 1;
    }
    Ok(removed)
}

/// Removes a directory entry of type `t` (a directory with everything below it).
fn remove_entry(p: &Path, t: fs::FileType) -> Result<()> {
    if t.is_dir() {
        fs::remove_dir_all(p)
    } else {
        fs::remove_file(p)
    }
    .with_context(|| format!("removing {}", p.display()))
}

/// Refuses absolute paths and `..`.
fn check_relative(rel: &Path) -> Result<()> {
    if rel.as_os_str().is_empty()
        || rel
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        bail!(
            "the basebackup holds a path outside the data directory: {}",
            rel.display()
        );
    }
    Ok(())
}

/// Writes the entry over `path` (a new file, or an existing one overwritten in place and cut
/// to its new length); says whether the file existed.
fn write_over(path: &Path, src: &mut impl Read, buf: &mut [u8], bytes: &mut u64) -> Result<bool> {
    let existed = match fs::symlink_metadata(path) {
        Ok(m) if m.is_file() => true,
        Ok(m) if m.is_dir() => {
            fs::remove_dir_all(path)?;
            false
        }
        Ok(_) => {
            fs::remove_file(path)?;
            false
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(parent) = path.parent() {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(parent)?;
            }
            false
        }
        Err(e) => return Err(e.into()),
    };
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        // Overwritten in place and cut at the end: no blocks freed and allocated again.
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    let mut len = 0u64;
    loop {
        let n = match src.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        f.write_all(&buf[..n])?;
        len += n as u64;
    }
    if existed && f.metadata()?.len() != len {
        f.set_len(len)?;
    }
    *bytes += len;
    Ok(existed)
}

/// Removes everything under `root/rel` that `kept` does not name; returns how many entries.
fn remove_others(root: &Path, rel: &Path, kept: &HashSet<PathBuf>) -> Result<u64> {
    let dir = root.join(rel);
    let mut removed = 0;
    for e in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
        let e = e?;
        let r = rel.join(e.file_name());
        let t = e.file_type()?;
        if kept.contains(&r) {
            // A kept link is a tablespace's: clean its directory too.
            if t.is_dir() || (t.is_symlink() && e.path().is_dir()) {
                removed += remove_others(root, &r, kept)?;
            }
            continue;
        }
        remove_entry(&e.path(), t)?;
        removed += 1;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(entries: &[(&str, Option<&[u8]>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in entries {
            let mut h = tar::Header::new_ustar();
            match data {
                Some(d) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(d.len() as u64);
                    h.set_mode(0o600);
                    b.append_data(&mut h, path, *d).unwrap();
                }
                None => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    h.set_mode(0o700);
                    b.append_data(&mut h, path, &[][..]).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    fn read(p: &Path) -> Vec<u8> {
        fs::read(p).unwrap()
    }

    #[test]
    fn a_fresh_directory_gets_exactly_the_tar() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("data");
        let t = tar_of(&[
            ("base", None),
            ("base/1", None),
            ("base/1/1259", Some(&[7u8; 8192])),
            ("PG_VERSION", Some(b"15\n")),
            ("pg_wal/archive_status", None),
        ]);
        let rep = unpack_over(&root, &t[..]).unwrap();
        assert_eq!(rep.files, 2);
        assert_eq!(rep.reused_files, 0);
        assert_eq!(rep.removed, 0);
        assert_eq!(read(&root.join("base/1/1259")), vec![7u8; 8192]);
        assert_eq!(read(&root.join("PG_VERSION")), b"15\n");
        assert!(root.join("pg_wal/archive_status").is_dir());
    }

    #[test]
    fn an_old_directory_is_overwritten_cut_and_cleaned() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("data");
        fs::create_dir_all(root.join("base/1")).unwrap();
        fs::create_dir_all(root.join("base/5/sub")).unwrap();
        fs::create_dir_all(root.join("pg_wal")).unwrap();
        // Longer than the new content: must be cut.
        fs::write(root.join("base/1/1259"), vec![1u8; 3 * 8192]).unwrap();
        // Shorter than the new content.
        fs::write(root.join("PG_VERSION"), b"1").unwrap();
        fs::write(root.join("base/1/9999"), b"stale").unwrap();
        fs::write(root.join("base/5/sub/x"), b"stale").unwrap();
        fs::write(root.join("postmaster.pid"), b"42").unwrap();
        fs::write(root.join("pg_wal/000000010000000000000001"), b"old").unwrap();
        // A directory where the tar has a file.
        fs::create_dir_all(root.join("global/pg_control")).unwrap();
        let t = tar_of(&[
            ("base", None),
            ("base/1", None),
            ("base/1/1259", Some(&[7u8; 8192])),
            ("PG_VERSION", Some(b"15\n")),
            ("global/pg_control", Some(b"control")),
            ("pg_wal", None),
        ]);
        let rep = unpack_over(&root, &t[..]).unwrap();
        assert_eq!(rep.files, 3);
        assert_eq!(rep.reused_files, 2);
        assert_eq!(read(&root.join("base/1/1259")), vec![7u8; 8192]);
        assert_eq!(read(&root.join("PG_VERSION")), b"15\n");
        assert_eq!(read(&root.join("global/pg_control")), b"control");
        for gone in [
            "base/1/9999",
            "base/5",
            "postmaster.pid",
            "pg_wal/000000010000000000000001",
        ] {
            assert!(!root.join(gone).exists(), "{gone} should be gone");
        }
        assert_eq!(rep.removed, 4);
        let mut names: Vec<String> = fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["PG_VERSION", "base", "global", "pg_wal"]);
    }

    #[test]
    fn tablespace_links_become_the_computes_own_directories() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("data");
        let mut b = tar::Builder::new(Vec::new());
        let dir = |b: &mut tar::Builder<Vec<u8>>, path: &str| {
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
            h.set_mode(0o700);
            b.append_data(&mut h, path, &[][..]).unwrap();
        };
        dir(&mut b, "pg_tblspc");
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        // Whatever the tar names (here: someone else's directory), the compute's own is used.
        b.append_link(&mut h, "pg_tblspc/16384", "/var/lib/elsewhere")
            .unwrap();
        dir(&mut b, "pg_tblspc/16384/PG_15_202209061");
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(3);
        h.set_mode(0o600);
        b.append_data(&mut h, "pg_tblspc/16384/PG_15_202209061/x", &b"abc"[..])
            .unwrap();
        let t = b.into_inner().unwrap();
        // Leftovers of an earlier compute: a stale file in the tablespace, another tablespace.
        fs::create_dir_all(d.path().join("tablespaces/16384/PG_15_202209061")).unwrap();
        fs::write(d.path().join("tablespaces/16384/PG_15_202209061/old"), b"o").unwrap();
        fs::create_dir_all(d.path().join("tablespaces/99999")).unwrap();
        let rep = unpack_over(&root, &t[..]).unwrap();
        let link = root.join("pg_tblspc/16384");
        assert!(link.is_symlink());
        let target = fs::read_link(&link).unwrap();
        assert!(target.is_absolute(), "{}", target.display());
        assert!(
            target.ends_with("tablespaces/16384"),
            "{}",
            target.display()
        );
        assert_eq!(
            read(&d.path().join("tablespaces/16384/PG_15_202209061/x")),
            b"abc"
        );
        assert!(!d
            .path()
            .join("tablespaces/16384/PG_15_202209061/old")
            .exists());
        assert!(!d.path().join("tablespaces/99999").exists());
        assert_eq!(rep.removed, 2);
        // Unpacking again over it keeps the link and the file.
        unpack_over(&root, &t[..]).unwrap();
        assert_eq!(read(&link.join("PG_15_202209061/x")), b"abc");
    }

    #[test]
    fn links_elsewhere_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        b.append_link(&mut h, "base/1", "/etc").unwrap();
        let t = b.into_inner().unwrap();
        let err = unpack_over(&d.path().join("data"), &t[..]).unwrap_err();
        assert!(format!("{err:#}").contains("only at pg_tblspc"), "{err:#}");
    }

    #[test]
    fn paths_outside_the_directory_are_refused() {
        let d = tempfile::tempdir().unwrap();
        // tar::Builder refuses `..` itself: write the header by hand.
        let mut h = tar::Header::new_ustar();
        h.as_ustar_mut().unwrap().name[..9].copy_from_slice(b"../escape");
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(1);
        h.set_mode(0o600);
        h.set_cksum();
        let mut t = h.as_bytes().to_vec();
        t.extend_from_slice(&[b'x'; 1]);
        t.resize(t.len() + 511 + 1024, 0);
        let err = unpack_over(&d.path().join("data"), &t[..]).unwrap_err();
        assert!(
            format!("{err:#}").contains("outside the data directory"),
            "{err:#}"
        );
        assert!(!d.path().join("escape").exists());
    }
}

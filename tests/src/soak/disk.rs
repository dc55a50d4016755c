//! A small disk for two of the three safekeepers: one tmpfs (`mount -t tmpfs -o size=…`, needs
//! root) bind-mounted over their data directories, and a filler file that fills it for a while.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The tmpfs and its bind mounts; unmounted on drop (after the cluster stopped).
pub struct SmallDisk {
    root: PathBuf,
    binds: Vec<PathBuf>,
}

fn mount(args: &[&str], target: &Path) -> Result<()> {
    let out = Command::new("mount")
        .args(args)
        .arg(target)
        .output()
        .context("running mount")?;
    if !out.status.success() {
        bail!(
            "mount {} {}: {} (the disk-full episode needs root)",
            args.join(" "),
            target.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl SmallDisk {
    /// Mounts a tmpfs of `size` (e.g. "96m") at `root` and binds a directory of it over each of
    /// `dirs` (which must exist and be empty: the cluster is initialized but not started).
    pub fn mount(root: &Path, size: &str, dirs: &[PathBuf]) -> Result<SmallDisk> {
        std::fs::create_dir_all(root)?;
        mount(
            &["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"],
            root,
        )?;
        let mut disk = SmallDisk {
            root: root.to_path_buf(),
            binds: Vec::new(),
        };
        for (i, dir) in dirs.iter().enumerate() {
            let inner = root.join(format!("dir-{i}"));
            std::fs::create_dir(&inner)?;
            mount(&["--bind", &inner.to_string_lossy()], dir)?;
            disk.binds.push(dir.clone());
        }
        Ok(disk)
    }

    fn filler(&self) -> PathBuf {
        self.root.join("filler")
    }

    /// Writes the filler file until the disk is full; its size in bytes.
    pub fn fill(&self) -> Result<u64> {
        let path = self.filler();
        let mut f =
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let chunk = vec![0x5Au8; 1 << 20];
        let mut written = 0u64;
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(n) => written = written.saturating_add(n as u64),
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => return Err(e).with_context(|| format!("filling {}", path.display())),
            }
        }
        Ok(written)
    }

    /// Removes the filler: the space is free again.
    pub fn free(&self) -> Result<()> {
        let path = self.filler();
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        for p in self.binds.iter().chain(std::iter::once(&self.root)) {
            let ok = Command::new("umount")
                .arg(p)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                // Something still holds it (a process the cluster did not stop): detach lazily.
                let _ = Command::new("umount").arg("-l").arg(p).status();
            }
        }
    }
}

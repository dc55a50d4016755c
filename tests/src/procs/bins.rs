//! The one way tests find a built binary of this workspace.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Result};

/// The environment variable that overrides where binary `name` is: `STRATA_BIN` for the
/// `strata` command, `STRATA_<NAME>_BIN` for the others (`-` as `_`).
pub fn bin_env_var(name: &str) -> String {
    if name == "strata" {
        return "STRATA_BIN".into();
    }
    format!("STRATA_{}_BIN", name.to_ascii_uppercase().replace('-', "_"))
}

/// Built binary `name` of this workspace: the path in [`bin_env_var`] if set, else
/// `<target>/<profile>/<name>` beside the running test (`<target>/<profile>/deps/<test>`), else
/// the newest of `<target>/{debug,release}/<name>`. Tests never build it (that would
/// contend for the cargo lock while Postgres runs): `cargo build --workspace --bins` first.
pub fn built_bin(name: &str) -> Result<PathBuf> {
    let var = bin_env_var(name);
    if let Some(p) = std::env::var_os(&var) {
        let p = PathBuf::from(p);
        ensure!(p.is_file(), "{var}={} does not exist", p.display());
        return Ok(p);
    }
    let (target, profile) = target_dir();
    let same_profile = profile.map(|p| target.join(p).join(name));
    if let Some(p) = same_profile.filter(|p| p.is_file()) {
        return Ok(p);
    }
    let newest = ["debug", "release"]
        .iter()
        .map(|profile| target.join(profile).join(name))
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .max();
    match newest {
        Some((_, p)) => Ok(p),
        None => bail!(
            "the {name} binary is not built: no {}/{{debug,release}}/{name}. Build it first \
             (`cargo build --workspace --bins`) or set {var}",
            target.display()
        ),
    }
}

/// The target directory the running program was built in and its profile directory's name,
/// when it runs from `<target>/<profile>/deps/` (a test, a bench) or `<target>/<profile>/`
/// (a tool binary). Else `$CARGO_TARGET_DIR` or the workspace's `target`, without a profile.
fn target_dir() -> (PathBuf, Option<String>) {
    let exe = std::env::current_exe().ok();
    let dir = exe.as_deref().and_then(Path::parent);
    let profile_dir = dir.and_then(|d| {
        if d.ends_with("deps") {
            d.parent()
        } else {
            Some(d)
        }
    });
    // Cargo keeps `.fingerprint` in every profile directory it builds.
    let profile_dir = profile_dir.filter(|d| d.join(".fingerprint").is_dir());
    if let Some(d) = profile_dir {
        if let (Some(target), Some(profile)) = (d.parent(), d.file_name()) {
            return (
                target.to_path_buf(),
                Some(profile.to_string_lossy().into_owned()),
            );
        }
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    (target, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_binary_has_its_override_variable() {
        assert_eq!(bin_env_var("strata"), "STRATA_BIN");
        assert_eq!(bin_env_var("safekeeper"), "STRATA_SAFEKEEPER_BIN");
        assert_eq!(bin_env_var("ingest-wal"), "STRATA_INGEST_WAL_BIN");
    }

    #[test]
    fn the_running_test_is_found_in_its_target_directory() {
        // This test binary is `<target>/<profile>/deps/<name>`: the finder sees that profile.
        let (target, profile) = target_dir();
        let profile = profile.expect("a test runs from <target>/<profile>/deps");
        let exe = std::env::current_exe().unwrap();
        assert!(
            exe.starts_with(target.join(&profile).join("deps")),
            "{exe:?}"
        );
    }
}

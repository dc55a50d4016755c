//! Groups: tenants that are the servers of one sharded Postgres cluster, cut consistently
//! together (`strata group …`). See "Groups and consistent cuts" in `docs/architecture.md`.

pub mod cut;
pub mod restore;
pub mod store;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::cluster::daemon::{Daemon, State};
use crate::names::Names;
use store::{Cut, Group, GroupStore, Member};

/// Takes a cut named `point` of group `name` now (not an automatic cutter's name).
pub fn take_cut(dir: &Path, name: &str, point: &str) -> Result<Cut> {
    crate::names::validate(crate::names::Kind::Branch, point)?;
    if point.starts_with(cut::AUTO_PREFIX) {
        bail!(
            "names starting with {:?} are the automatic cutter's",
            cut::AUTO_PREFIX
        );
    }
    let gs = GroupStore::open(dir)?;
    let g = gs.load(name)?;
    cut::take(&gs, &g, point)
}

/// The cuts of group `name`, oldest first.
pub fn cuts(dir: &Path, name: &str) -> Result<Vec<Cut>> {
    let gs = GroupStore::open(dir)?;
    let g = gs.load(name)?;
    gs.cuts(&g)
}

/// `1s`, `500ms`, `2m`, `0` → a period (`None` for 0).
pub fn parse_every(s: &str) -> Result<Option<Duration>> {
    let s = s.trim();
    let bad = || anyhow::anyhow!("--every {s:?}: give a period like 1s, 500ms or 2m (0: none)");
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, ""), |i| s.split_at(i));
    let n: u64 = num.parse().map_err(|_| bad())?;
    let ms = match unit {
        "ms" => Some(n),
        "s" | "" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        _ => None,
    }
    .ok_or_else(bad)?;
    Ok((ms > 0).then(|| Duration::from_millis(ms)))
}

/// A group to create.
#[derive(Debug)]
pub struct NewGroup<'a> {
    /// Checked by the caller (`names::validate`).
    pub name: &'a str,
    /// The member tenants, each once.
    pub tenants: &'a [String],
    /// The branch of every member.
    pub branch: &'a str,
    /// How often the automatic cutter cuts (see [`parse_every`]).
    pub every: &'a str,
}

/// Creates a group and starts its automatic cutter (if it has a period).
pub fn create(dir: &Path, new: &NewGroup) -> Result<Group> {
    let every = parse_every(new.every)?;
    let names = Names::load(dir)?;
    let mut members = Vec::new();
    for t in new.tenants {
        if members.iter().any(|m: &Member| &m.tenant == t) {
            bail!("tenant {t:?} is listed twice");
        }
        let (tenant, tenant_id) = names.tenant(Some(t))?;
        let timeline_id = names.timeline(&tenant, new.branch)?;
        members.push(Member {
            tenant,
            tenant_id,
            branch: new.branch.to_string(),
            timeline_id,
        });
    }
    let g = Group {
        name: new.name.to_string(),
        members,
        every_ms: every.map(|d| d.as_millis() as u64),
    };
    GroupStore::open(dir)?.create(&g)?;
    if every.is_some() {
        start_cutter(dir, &g)?;
    }
    Ok(g)
}

/// A group as `strata group list` shows it.
#[derive(Debug)]
pub struct Listed {
    pub group: Group,
    pub cuts: Vec<Cut>,
    /// Its cutter's process: "running", "stopped" or "dead".
    pub cutter: &'static str,
}

pub fn list(dir: &Path) -> Result<Vec<Listed>> {
    let gs = GroupStore::open(dir)?;
    let mut listed = Vec::new();
    for g in gs.list()? {
        let cuts = gs.cuts(&g)?;
        let cutter = match cutter_daemon(dir, &g.name).state()? {
            State::Running(_) => "running",
            State::Stopped => "stopped",
            State::Dead(_) => "dead",
        };
        listed.push(Listed {
            group: g,
            cuts,
            cutter,
        });
    }
    Ok(listed)
}

fn cutter_daemon(dir: &Path, name: &str) -> Daemon {
    Daemon::new(dir, &format!("group-{name}-cutter"))
}

const CUTTER_READY: &str = "cutter running";

fn start_cutter(dir: &Path, g: &Group) -> Result<()> {
    let d = cutter_daemon(dir, &g.name);
    if let State::Running(_) = d.state()? {
        return Ok(());
    }
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.arg("--dir")
        .arg(dir)
        .args(["group", "run-cutter", &g.name]);
    d.start(cmd, CUTTER_READY, Duration::from_secs(10))?;
    Ok(())
}

/// `strata start`: the cutter of every group that has one.
pub fn start_cutters(dir: &Path) -> Result<()> {
    for g in GroupStore::open(dir)?.list()? {
        if g.every_ms.is_some() {
            start_cutter(dir, &g).with_context(|| format!("the cutter of group {}", g.name))?;
            println!("started the cutter of group {}", g.name);
        }
    }
    Ok(())
}

/// `strata stop`: every cutter (before the computes, whose fences it would otherwise try).
/// Found by their pid files, so a stop works without the object store.
pub fn stop_cutters(dir: &Path) -> Result<()> {
    let run = dir.join("run");
    let entries = match std::fs::read_dir(&run) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", run.display())),
    };
    for e in entries {
        let file = e?.file_name().to_string_lossy().into_owned();
        let Some(name) = file
            .strip_prefix("group-")
            .and_then(|f| f.strip_suffix("-cutter.pid"))
        else {
            continue;
        };
        if cutter_daemon(dir, name).stop(Duration::from_secs(5))? {
            println!("stopped the cutter of group {name}");
        }
    }
    Ok(())
}

/// The cutter (`strata group run-cutter`, started as a service): a cut every period, named `auto-<unix ms>`; a failed cut is logged and the
/// next one tried on time.
pub fn run_cutter(dir: &Path, name: &str) -> Result<()> {
    let gs = GroupStore::open(dir)?;
    let g = gs.load(name)?;
    let every = Duration::from_millis(g.every_ms.context("the group has no --every")?);
    println!("{CUTTER_READY} for group {name}, a cut every {every:?}");
    let mut next = Instant::now() + every;
    let mut failing = false;
    loop {
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        next += every;
        if next < Instant::now() {
            next = Instant::now() + every;
        }
        let point = format!("{}{}", cut::AUTO_PREFIX, cut::unix_micros_now() / 1000);
        match cut::take(&gs, &g, &point) {
            Ok(c) => {
                if failing {
                    eprintln!(
                        "cuts succeed again: {} (pause {:.1} ms)",
                        c.name, c.pause_ms
                    );
                    failing = false;
                }
            }
            Err(e) => {
                // Said once per run of failures: a stopped member fails every period.
                if !failing {
                    eprintln!("cut {point} failed: {e:#}");
                    failing = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods() {
        assert_eq!(parse_every("1s").unwrap(), Some(Duration::from_secs(1)));
        assert_eq!(
            parse_every("250ms").unwrap(),
            Some(Duration::from_millis(250))
        );
        assert_eq!(parse_every("2m").unwrap(), Some(Duration::from_secs(120)));
        assert_eq!(parse_every("0").unwrap(), None);
        assert!(parse_every("1h").is_err());
        assert!(parse_every("x").is_err());
        assert!(parse_every("99999999999999999999s").is_err());
    }
}

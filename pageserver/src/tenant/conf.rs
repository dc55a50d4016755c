//! A tenant's configuration: `<data dir>/tenants/<tenant>/tenant.toml`, for example
//!
//! ```toml
//! pitr_interval = "7d"      # history kept readable (s, m, h, d); GC honours it (tenant::gc)
//! freeze_mib = 256          # open layer size at which it is written as an L0 layer
//! page_cache_pages = 8192   # materialized pages kept per timeline
//! auto_compaction = true
//! ```
//!
//! Unknown keys are refused (a typo must not silently fall back to a default). A running tenant
//! takes a change at once ([`super::Tenant::set_conf`]): GC reads the PITR window at each
//! run, and the timelines get their new tunables pushed.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::{Result, TenantError};
use crate::timeline::TimelineConf;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantConf {
    pub pitr_interval: String,
    pub freeze_mib: u64,
    pub page_cache_pages: usize,
    pub auto_compaction: bool,
}

impl Default for TenantConf {
    fn default() -> Self {
        TenantConf {
            pitr_interval: "7d".into(),
            freeze_mib: 256,
            page_cache_pages: 8192,
            auto_compaction: true,
        }
    }
}

/// `<n><unit>` with unit s, m, h or d.
pub fn parse_interval(s: &str) -> Result<Duration> {
    let bad = || {
        TenantError::InvalidArgument(format!(
            "pitr_interval {s:?}: expected a number and a unit (s, m, h, d), e.g. \"7d\""
        ))
    };
    let s = s.trim();
    let unit = s.chars().last().ok_or_else(bad)?;
    let secs = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86400,
        _ => return Err(bad()),
    };
    let n: u64 = s[..s.len() - 1].trim().parse().map_err(|_| bad())?;
    n.checked_mul(secs).map(Duration::from_secs).ok_or_else(bad)
}

/// One key of `tenant.toml`: its name, the accepted form and what it does.
pub struct ConfKey {
    pub key: &'static str,
    pub form: &'static str,
    pub meaning: &'static str,
}

/// Every key, in the order `tenant config get` lists them.
pub const KEYS: &[ConfKey] = &[
    ConfKey {
        key: "pitr_interval",
        form: "an interval: a number and a unit (s, m, h, d), e.g. 7d",
        meaning: "history kept readable; GC removes what is older (branch points and leases kept)",
    },
    ConfKey {
        key: "freeze_mib",
        form: "an integer from 1 to 4096",
        meaning: "open layer size (MiB) at which it is written as an L0 layer",
    },
    ConfKey {
        key: "page_cache_pages",
        form: "an integer from 0 to 1048576",
        meaning: "materialized pages (8 KiB) cached per timeline; a change empties the cache",
    },
    ConfKey {
        key: "auto_compaction",
        form: "true or false",
        meaning: "compact L0 layers and write image layers in the background",
    },
];

/// The largest page cache a tenant may ask for per timeline (8 GiB of pages).
const MAX_PAGE_CACHE_PAGES: usize = 1 << 20;

fn conf_key(key: &str) -> Result<&'static ConfKey> {
    KEYS.iter().find(|k| k.key == key).ok_or_else(|| {
        let known: Vec<&str> = KEYS.iter().map(|k| k.key).collect();
        TenantError::InvalidArgument(format!(
            "unknown tenant config key {key:?}; the keys are {}",
            known.join(", ")
        ))
    })
}

impl TenantConf {
    /// `key`'s value as text, the way `set` takes it.
    pub fn get(&self, key: &str) -> Result<String> {
        conf_key(key)?;
        Ok(match key {
            "pitr_interval" => self.pitr_interval.clone(),
            "freeze_mib" => self.freeze_mib.to_string(),
            "page_cache_pages" => self.page_cache_pages.to_string(),
            _ => self.auto_compaction.to_string(),
        })
    }

    /// Sets `key` from its text form; the error names the key and the accepted form. The
    /// whole configuration is checked again (see [`TenantConf::validate`]).
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        let k = conf_key(key)?;
        let bad = || {
            TenantError::InvalidArgument(format!(
                "tenant config {key} = {value:?}: expected {}",
                k.form
            ))
        };
        let v = value.trim();
        // On a copy: a refused value leaves the configuration as it was.
        let mut next = self.clone();
        match key {
            "pitr_interval" => {
                parse_interval(v).map_err(|_| bad())?;
                next.pitr_interval = v.to_string();
            }
            "freeze_mib" => next.freeze_mib = v.parse().map_err(|_| bad())?,
            "page_cache_pages" => next.page_cache_pages = v.parse().map_err(|_| bad())?,
            _ => next.auto_compaction = v.parse().map_err(|_| bad())?,
        }
        next.validate().map_err(|_| bad())?;
        *self = next;
        Ok(())
    }

    /// Checks every value; the error names the bad one.
    pub fn validate(&self) -> Result<()> {
        parse_interval(&self.pitr_interval)?;
        if self.freeze_mib == 0 || self.freeze_mib > 4096 {
            return Err(TenantError::InvalidArgument(format!(
                "freeze_mib {}: must be 1..=4096",
                self.freeze_mib
            )));
        }
        if self.page_cache_pages > MAX_PAGE_CACHE_PAGES {
            return Err(TenantError::InvalidArgument(format!(
                "page_cache_pages {}: must be 0..={MAX_PAGE_CACHE_PAGES}",
                self.page_cache_pages
            )));
        }
        Ok(())
    }

    pub fn parse(text: &str, what: &str) -> Result<TenantConf> {
        let conf: TenantConf = toml::from_str(text)
            .map_err(|e| TenantError::InvalidArgument(format!("tenant config {what}: {e}")))?;
        conf.validate()?;
        Ok(conf)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a flat struct of strings and numbers serializes")
    }

    pub fn pitr_interval(&self) -> Duration {
        parse_interval(&self.pitr_interval).unwrap_or(Duration::from_secs(7 * 86400))
    }

    /// The storage tunables of this tenant's timelines.
    pub fn timeline_conf(&self) -> TimelineConf {
        let mut c = TimelineConf {
            freeze_bytes: self.freeze_mib << 20,
            page_cache_pages: self.page_cache_pages,
            ..TimelineConf::default()
        };
        c.compaction.auto = self.auto_compaction;
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_refuse() {
        let c = TenantConf::parse("pitr_interval = \"2h\"\nfreeze_mib = 8\n", "x").unwrap();
        assert_eq!(c.pitr_interval(), Duration::from_secs(7200));
        assert_eq!(c.timeline_conf().freeze_bytes, 8 << 20);
        assert_eq!(TenantConf::parse(&c.to_toml(), "x").unwrap(), c);
        let e = TenantConf::parse("pitr = \"2h\"", "x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field"), "{e}");
        let e = TenantConf::parse("pitr_interval = \"2 weeks\"", "x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("pitr_interval") && e.contains("unit"), "{e}");
        assert!(TenantConf::parse("freeze_mib = 0", "x").is_err());
    }

    #[test]
    fn set_and_get_by_key() {
        let mut c = TenantConf::default();
        c.set("pitr_interval", "30m").unwrap();
        c.set("freeze_mib", " 4 ").unwrap();
        c.set("auto_compaction", "false").unwrap();
        assert_eq!(c.pitr_interval(), Duration::from_secs(1800));
        assert_eq!(c.get("freeze_mib").unwrap(), "4");
        assert_eq!(c.get("auto_compaction").unwrap(), "false");
        for k in KEYS {
            let v = c.get(k.key).unwrap();
            let mut again = c.clone();
            again.set(k.key, &v).unwrap();
            assert_eq!(again, c, "{}", k.key);
        }
        let before = c.clone();
        let e = c.set("pitr", "1d").unwrap_err().to_string();
        assert!(e.contains("unknown") && e.contains("pitr_interval"), "{e}");
        let e = c.set("freeze_mib", "0").unwrap_err().to_string();
        assert!(e.contains("freeze_mib") && e.contains("1 to 4096"), "{e}");
        let e = c.set("pitr_interval", "1w").unwrap_err().to_string();
        assert!(e.contains("pitr_interval") && e.contains("unit"), "{e}");
        assert!(c.set("auto_compaction", "yes").is_err());
        assert!(c.set("page_cache_pages", "2000000").is_err());
        assert_eq!(c, before, "a refused value changes nothing");
    }
}

//! A tenant's configuration: `<data dir>/tenants/<tenant>/tenant.toml`, for example
//!
//! ```toml
//! pitr_interval = "7d"      # history kept readable (s, m, h, d); GC honours it (tenant::gc)
//! freeze_mib = 32           # open layer size at which it is written as an L0 layer
//! page_cache_pages = 8192   # materialized pages kept per timeline
//! auto_compaction = true
//! ```
//!
//! Unknown keys are refused (a typo must not silently fall back to a default).

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
            freeze_mib: 32,
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

impl TenantConf {
    /// Checks every value; the error names the bad one.
    pub fn validate(&self) -> Result<()> {
        parse_interval(&self.pitr_interval)?;
        if self.freeze_mib == 0 || self.freeze_mib > 4096 {
            return Err(TenantError::InvalidArgument(format!(
                "freeze_mib {}: must be 1..=4096",
                self.freeze_mib
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
}

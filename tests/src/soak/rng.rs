//! A seeded generator (layer-format's SplitMix64): the same `STRATA_SOAK_SEED` chooses the
//! same faults, in the same order, with the same pauses.

use std::time::Duration;

use layer_format::sample_pages::SplitMix;

pub struct SoakRng(SplitMix);

impl SoakRng {
    pub fn new(seed: u64) -> SoakRng {
        SoakRng(SplitMix::new(seed))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64().checked_rem(n).unwrap_or(0)
    }

    /// A duration between `lo` and `hi` (inclusive, millisecond steps).
    pub fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        let lo_ms = lo.as_millis() as u64;
        let span = (hi.as_millis() as u64).saturating_sub(lo_ms);
        Duration::from_millis(lo_ms.saturating_add(self.below(span.saturating_add(1))))
    }

    /// Index chosen with probability proportional to its weight.
    pub fn weighted(&mut self, weights: &[u64]) -> usize {
        let total: u64 = weights.iter().sum();
        let mut pick = self.below(total);
        for (i, w) in weights.iter().enumerate() {
            if pick < *w {
                return i;
            }
            pick -= w;
        }
        weights.len().saturating_sub(1)
    }
}

/// A seed from the clock, for runs that do not name one.
pub fn fresh_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    SoakRng::new(nanos ^ u64::from(std::process::id())).next_u64()
}

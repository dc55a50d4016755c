//! Waiting for a condition, with a deadline and the name of what was awaited in the error.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

/// Waits until `check` gives a value, at most `timeout`, looking every 200 ms; the error
/// names `what` and the last error `check` returned.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    let mut last_err = None;
    loop {
        match check() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if Instant::now() >= deadline {
            bail!(
                "waited {timeout:?} for {what}{}",
                last_err
                    .map(|e| format!(" (last error: {e:#})"))
                    .unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Polls `ready` (async) every 100 ms until it is true; after `timeout`, an error naming
/// `what`.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut ready: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if ready().await {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("waited {timeout:?} for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_that_times_out_names_what_it_waited_for_and_the_last_error() {
        let mut calls = 0;
        let e = wait_for(
            "the moon",
            Duration::from_millis(300),
            || -> Result<Option<()>> {
                calls += 1;
                bail!("still night ({calls})")
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("the moon") && e.contains("still night"), "{e}");
        assert!(calls >= 2, "checked only {calls} times");
    }

    #[test]
    fn a_wait_returns_the_value_once_there() {
        let mut n = 0;
        let v = wait_for("three", Duration::from_secs(10), || {
            n += 1;
            Ok((n == 3).then_some(n))
        });
        assert_eq!(v.unwrap(), 3);
    }
}

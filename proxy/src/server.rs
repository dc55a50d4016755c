//! The listening side: accept connections (each served by its own task), stop idle computes
//! every second, exit on SIGTERM or SIGINT.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::session::{serve, Ctx};

/// How often idle computes are looked for.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// Serves `listener` until a termination signal.
pub async fn run(listener: TcpListener, ctx: Arc<Ctx>) -> std::io::Result<()> {
    let reaper_ctx = ctx.clone();
    let reaper = tokio::spawn(async move {
        let mut tick = tokio::time::interval(IDLE_CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            reaper_ctx.computes.stop_idle().await;
        }
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(serve(stream, ctx.clone()));
                }
                // Out of file descriptors and the like: go on after a breath.
                Err(e) => {
                    eprintln!("strata-proxy: accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    reaper.abort();
    eprintln!("strata-proxy: stopping (computes keep running; `strata stop` stops them)");
    Ok(())
}

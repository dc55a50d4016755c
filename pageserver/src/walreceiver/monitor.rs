//! While streaming from one safekeeper, the others' commit LSNs, polled with
//! `IDENTIFY_SYSTEM` over connections kept open between polls.

use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use walproto::pgclient::PgConnection;
use walproto::Lsn;

use super::probe;
use super::WalReceiverConf;

/// The other safekeepers' latest commit LSNs (`None`: unreachable at the last poll). Stops
/// polling when dropped.
pub(super) struct Monitor {
    positions: watch::Receiver<Vec<Option<Lsn>>>,
    task: JoinHandle<()>,
}

impl Monitor {
    /// Polls every safekeeper but `streaming` every `conf.probe_interval`.
    pub fn spawn(conf: Arc<WalReceiverConf>, streaming: usize) -> Monitor {
        let (tx, positions) = watch::channel(vec![None; conf.safekeepers.len()]);
        let task = tokio::spawn(poll(conf, streaming, tx));
        Monitor { positions, task }
    }

    /// The most advanced other safekeeper: (index, commit LSN).
    pub fn best_other(&self) -> Option<(usize, Lsn)> {
        self.positions
            .borrow()
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.map(|l| (i, l)))
            .max_by_key(|&(_, l)| l)
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn poll(conf: Arc<WalReceiverConf>, streaming: usize, tx: watch::Sender<Vec<Option<Lsn>>>) {
    let mut conns: Vec<Option<PgConnection>> = (0..conf.safekeepers.len()).map(|_| None).collect();
    let mut tick = tokio::time::interval(conf.probe_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for (i, slot) in conns.iter_mut().enumerate() {
            if i == streaming {
                continue;
            }
            let pos = match slot {
                Some(conn) => probe::identify(&conf, conn).await.map(|id| id.commit_lsn),
                None => probe::probe(&conf, i).await.map(|p| {
                    *slot = Some(p.conn);
                    p.identity.commit_lsn
                }),
            };
            if pos.is_err() {
                *slot = None; // reconnect at the next poll
            }
            tx.send_modify(|v| v[i] = pos.ok());
        }
    }
}

//! Cancel requests: a client cancels with the (pid, key) of the compute backend it was
//! given, so the proxy remembers which compute each live session's key belongs to and sends
//! the request there. Unknown keys are ignored, as Postgres does.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const CANCEL_CONNECT_LIMIT: Duration = Duration::from_secs(5);

#[derive(Clone, Default)]
pub struct CancelMap {
    sessions: Arc<Mutex<HashMap<(i32, i32), SocketAddr>>>,
}

/// A session's entry; removed when dropped (the session ended).
pub struct Registration {
    map: CancelMap,
    key: (i32, i32),
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut m = self.map.sessions.lock().unwrap_or_else(|p| p.into_inner());
        m.remove(&self.key);
    }
}

impl CancelMap {
    pub fn register(&self, pid: i32, key: i32, compute: SocketAddr) -> Registration {
        let mut m = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        m.insert((pid, key), compute);
        Registration {
            map: self.clone(),
            key: (pid, key),
        }
    }

    pub fn compute_of(&self, pid: i32, key: i32) -> Option<SocketAddr> {
        let m = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        m.get(&(pid, key)).copied()
    }

    /// Sends the cancel request to the session's compute; whether one was known.
    pub async fn forward(&self, pid: i32, key: i32) -> std::io::Result<bool> {
        let Some(addr) = self.compute_of(pid, key) else {
            return Ok(false);
        };
        let mut s = tokio::time::timeout(CANCEL_CONNECT_LIMIT, TcpStream::connect(addr))
            .await
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("connecting to the compute at {addr} to cancel"),
                )
            })??;
        s.write_all(&crate::wire::cancel_request(pid, key)).await?;
        s.shutdown().await?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn a_cancel_reaches_the_sessions_compute_while_it_lives() {
        let compute = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = compute.local_addr().unwrap();
        let map = CancelMap::default();
        let reg = map.register(7, 99, addr);
        let got = tokio::spawn(async move {
            let (mut s, _) = compute.accept().await.unwrap();
            let mut b = Vec::new();
            s.read_to_end(&mut b).await.unwrap();
            b
        });
        assert!(map.forward(7, 99).await.unwrap());
        assert_eq!(got.await.unwrap(), crate::wire::cancel_request(7, 99));
        assert!(!map.forward(7, 98).await.unwrap());
        drop(reg);
        assert!(!map.forward(7, 99).await.unwrap());
    }
}

//! gRPC connections served each on its own thread (`--runtime per-connection`).
//!
//! Every accepted connection gets a thread with a current-thread tokio runtime that runs the
//! connection's HTTP/2 task, its streams and the proposer session on it. A session's append
//! is then read, written, fsynced (inline, see [`crate::group_commit`]) and answered on one
//! thread, with no wake-up of another worker in between, and an fsync blocks only the
//! connection it belongs to: other timelines' proposers have their own threads. (A proposer
//! holds one connection per session, so one connection is one timeline's append stream.)
//!
//! The thread ends when its connection closes, or soon after `stop` is set (the connection
//! is then shut down gracefully, as the shared server would).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tonic::transport::server::{Connected, Router, TcpConnectInfo};
use tracing::{debug, warn};

/// A served connection; tells its thread when hyper drops it (the connection ended).
struct ConnIo {
    inner: TcpStream,
    _closed: oneshot::Sender<()>,
}

impl Connected for ConnIo {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.inner.connect_info()
    }
}

impl AsyncRead for ConnIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Accepts connections on `listener` until `stop` is set, serving each one on its own
/// thread with the router `make_router` builds (called once per connection). `live` counts
/// the connection threads running.
pub async fn serve(
    listener: TcpListener,
    make_router: impl Fn() -> Router + Send + 'static,
    mut stop: watch::Receiver<bool>,
    live: Arc<AtomicUsize>,
) -> io::Result<()> {
    let mut next_id = 0u64;
    loop {
        let conn = tokio::select! {
            c = listener.accept() => c,
            _ = stop.wait_for(|s| *s) => return Ok(()),
        };
        let (stream, peer) = match conn {
            Ok(c) => c,
            // A connection that failed before it was accepted (or too many open files for a
            // moment): the next accept may succeed.
            Err(e) => {
                warn!(%e, "accepting a gRPC connection failed");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        // Appends are small and latency-bound: no Nagle delay on acknowledgements.
        let _ = stream.set_nodelay(true);
        // The socket moves to the connection thread's own runtime.
        let std_stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                warn!(%e, %peer, "could not hand a gRPC connection to its thread");
                continue;
            }
        };
        next_id += 1;
        let router = make_router();
        let stop = stop.clone();
        let span = tracing::Span::current();
        live.fetch_add(1, Ordering::AcqRel);
        let guard = LiveGuard(live.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("grpc-conn-{next_id}"))
            .spawn(move || {
                let _guard = guard;
                let _enter = span.enter();
                serve_one(std_stream, router, stop);
            });
        if let Err(e) = spawned {
            warn!(%e, %peer, "could not start a thread for a gRPC connection; closing it");
        }
    }
}

/// Counts a connection thread until it ends (or fails to start).
struct LiveGuard(Arc<AtomicUsize>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves one connection on this thread until it closes or `stop` is set.
fn serve_one(stream: std::net::TcpStream, router: Router, mut stop: watch::Receiver<bool>) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            warn!(%e, "could not start a runtime for a gRPC connection; closing it");
            return;
        }
    };
    rt.block_on(async move {
        let inner = match TcpStream::from_std(stream) {
            Ok(s) => s,
            Err(e) => {
                warn!(%e, "could not register a gRPC connection");
                return;
            }
        };
        let (closed_tx, closed_rx) = oneshot::channel::<()>();
        let io = ConnIo {
            inner,
            _closed: closed_tx,
        };
        // One connection, then nothing: ending the stream would shut the server down.
        let incoming = tokio_stream::StreamExt::chain(
            tokio_stream::once(Ok::<_, io::Error>(io)),
            tokio_stream::pending(),
        );
        let done = async move {
            tokio::select! {
                _ = closed_rx => {}
                _ = stop.wait_for(|s| *s) => {}
            }
        };
        if let Err(e) = router.serve_with_incoming_shutdown(incoming, done).await {
            debug!(%e, "gRPC connection ended with an error");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::SafekeeperService;
    use std::time::Duration;
    use walproto::proto::safekeeper as pb;

    /// Each connection is served on its own thread; the threads end with their connections,
    /// and `stop` ends the accept loop.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_get_threads_that_end_with_them() {
        let dir = tempfile::tempdir().unwrap();
        let svc = SafekeeperService::new(1, dir.path().to_path_buf());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = watch::channel(false);
        let live = Arc::new(AtomicUsize::new(0));
        let accept = tokio::spawn(serve(
            listener,
            move || tonic::transport::Server::builder().add_service(svc.clone().into_server()),
            stop_rx,
            live.clone(),
        ));
        let mut clients = Vec::new();
        for _ in 0..3 {
            let mut c = pb::safekeeper_client::SafekeeperClient::connect(format!("http://{addr}"))
                .await
                .unwrap();
            let r = c
                .timeline_status(pb::TimelineStatusRequest {
                    tenant_id: "0123456789abcdef0123456789abcdef".into(),
                    timeline_id: "fedcba9876543210fedcba9876543210".into(),
                })
                .await;
            assert_eq!(r.unwrap_err().code(), tonic::Code::NotFound);
            clients.push(c);
        }
        assert_eq!(live.load(Ordering::Acquire), 3);
        drop(clients);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while live.load(Ordering::Acquire) > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "connection threads still running after their clients left"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop_tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(10), accept)
            .await
            .expect("the accept loop stops")
            .unwrap()
            .unwrap();
    }
}

//! gRPC connections: accepted here, bounded, and each served on its own thread while there are
//! few of them (`--runtime per-connection`), as a task on the shared runtime beyond that.
//!
//! A connection with its own thread runs its HTTP/2 task, its streams and the proposer session
//! on a current-thread tokio runtime. A session's append is then read, written, fsynced
//! (inline, see [`crate::group_commit`]) and answered on one thread, with no wake-up of another
//! worker in between, and an fsync blocks only the connection it belongs to. (A proposer holds
//! one connection per session, so one connection is one timeline's append stream.)
//!
//! Idle or hostile clients must not exhaust threads or file descriptors, so per service:
//! - at most [`ConnLimits::dedicated_threads`] connection threads; further connections are
//!   served as tasks on the shared runtime (no thread each);
//! - at most [`ConnLimits::max_connections`] open connections. At the cap, the connection
//!   that has been quiet longest (nothing read or written for [`EVICT_MIN_IDLE`] at least) is
//!   closed to admit the new one; when every connection is busy, the new one is refused
//!   (closed at once, with a warning in the log);
//! - a connection that exchanged nothing for [`ConnLimits::idle_timeout`] is closed. A
//!   walproposer pings every 5 s, so its connections never are; other clients reconnect on
//!   their next call.
//!
//! A connection ends when its client closes it, when it is closed as above, or soon after
//! `stop` is set (it is then shut down gracefully, as the shared server would).

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tonic::transport::server::{Connected, Router, TcpConnectInfo};
use tracing::{debug, info, warn, Instrument};

/// A connection quiet at least this long may be closed to admit a new one at the cap.
pub const EVICT_MIN_IDLE: Duration = Duration::from_secs(1);

/// Refused connections are reported at most this often.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// The bounds on one service's connections (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnLimits {
    /// Connections served each on its own thread; 0 serves all on the shared runtime.
    pub dedicated_threads: usize,
    /// Connections open at once.
    pub max_connections: usize,
    /// A connection that read and wrote nothing for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            dedicated_threads: 64,
            max_connections: 1024,
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// What the accept loop knows about one open connection.
struct ConnState {
    epoch: Instant,
    /// Milliseconds after `epoch` of the last byte read or written.
    last_active_ms: AtomicU64,
    /// Set to close the connection: its reads and writes fail from then on.
    closing: AtomicBool,
    /// The waker of a pending read, woken to close the connection.
    read_waker: Mutex<Option<Waker>>,
}

fn ms_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl ConnState {
    fn new(epoch: Instant) -> Self {
        ConnState {
            epoch,
            last_active_ms: AtomicU64::new(ms_since(epoch)),
            closing: AtomicBool::new(false),
            read_waker: Mutex::new(None),
        }
    }

    fn waker(&self) -> MutexGuard<'_, Option<Waker>> {
        self.read_waker.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn touch(&self) {
        self.last_active_ms
            .store(ms_since(self.epoch), Ordering::Relaxed);
    }

    fn idle(&self, now_ms: u64) -> Duration {
        Duration::from_millis(now_ms.saturating_sub(self.last_active_ms.load(Ordering::Relaxed)))
    }

    fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Makes the connection's IO fail, so that hyper drops it (and its socket) at once.
    fn close(&self) {
        self.closing.store(true, Ordering::Release);
        if let Some(w) = self.waker().take() {
            w.wake();
        }
    }

    fn closed_error() -> io::Error {
        io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "connection closed by the safekeeper (idle, or evicted for a new one)",
        )
    }
}

/// The open connections of one service.
struct Registry {
    epoch: Instant,
    conns: Mutex<HashMap<u64, Arc<ConnState>>>,
    /// Connection threads running.
    threads: AtomicUsize,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Arc<ConnState>>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers connection `id` if there is room for it (closing the connection quiet the
    /// longest at the cap); why not otherwise.
    fn admit(&self, id: u64, max: usize) -> Result<Arc<ConnState>, String> {
        let mut conns = self.lock();
        // Closed connections leave as soon as hyper drops them; never let them pile up.
        if conns.len() >= max.saturating_mul(2) {
            return Err(format!(
                "{} connections still open or closing (the cap is {max})",
                conns.len()
            ));
        }
        let now = ms_since(self.epoch);
        let open: Vec<&Arc<ConnState>> = conns.values().filter(|c| !c.is_closing()).collect();
        if open.len() >= max {
            match open.iter().max_by_key(|c| c.idle(now)) {
                Some(c) if c.idle(now) >= EVICT_MIN_IDLE => c.close(),
                _ => {
                    return Err(format!(
                        "{} connections open (the cap) and none quiet for {EVICT_MIN_IDLE:?}",
                        open.len()
                    ))
                }
            }
        }
        let state = Arc::new(ConnState::new(self.epoch));
        conns.insert(id, state.clone());
        Ok(state)
    }

    /// Closes the connections quiet for `timeout`; how many.
    fn close_idle(&self, timeout: Duration) -> usize {
        let now = ms_since(self.epoch);
        let conns = self.lock();
        let idle: Vec<_> = conns
            .values()
            .filter(|c| !c.is_closing() && c.idle(now) >= timeout)
            .collect();
        idle.iter().for_each(|c| c.close());
        idle.len()
    }

    /// Takes one of `max` connection threads, if one is free.
    fn take_thread(&self, max: usize) -> bool {
        self.threads
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }
}

/// Counts a connection until it ends (or fails to start) and unregisters it.
struct ConnGuard {
    registry: Arc<Registry>,
    id: u64,
    live: Arc<AtomicUsize>,
    thread: bool,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
        if self.thread {
            self.registry.threads.fetch_sub(1, Ordering::AcqRel);
        }
        self.live.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A served connection: records activity, fails once closed, and tells its server when hyper
/// drops it (the connection ended).
struct ConnIo {
    inner: TcpStream,
    state: Arc<ConnState>,
    _closed: oneshot::Sender<()>,
}

impl Connected for ConnIo {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.inner.connect_info()
    }
}

impl ConnIo {
    /// Counts a write as activity; fails once the connection is closed.
    fn wrote(&self, r: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        if let Poll::Ready(Ok(n)) = &r {
            if *n > 0 {
                self.state.touch();
            }
        }
        r
    }
}

impl AsyncRead for ConnIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.state.is_closing() {
            return Poll::Ready(Err(ConnState::closed_error()));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        match &r {
            Poll::Ready(Ok(())) if buf.filled().len() > before => self.state.touch(),
            Poll::Pending => {
                let mut w = self.state.waker();
                if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    *w = Some(cx.waker().clone());
                }
                drop(w);
                // Closed between the check above and storing the waker: nobody wakes us.
                if self.state.is_closing() {
                    return Poll::Ready(Err(ConnState::closed_error()));
                }
            }
            _ => {}
        }
        r
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.state.is_closing() {
            return Poll::Ready(Err(ConnState::closed_error()));
        }
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.wrote(r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.state.is_closing() {
            return Poll::Ready(Err(ConnState::closed_error()));
        }
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(r)
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

/// How often idle connections are looked for.
fn sweep_period(idle_timeout: Duration) -> Duration {
    (idle_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(5))
}

/// Accepts connections on `listener` until `stop` is set, within `limits`, serving each with
/// the router `make_router` builds (called once per connection). `live` counts the
/// connections being served.
pub async fn serve(
    listener: TcpListener,
    make_router: impl Fn() -> Router + Send + 'static,
    mut stop: watch::Receiver<bool>,
    live: Arc<AtomicUsize>,
    limits: ConnLimits,
) -> io::Result<()> {
    let registry = Arc::new(Registry {
        epoch: Instant::now(),
        conns: Mutex::new(HashMap::new()),
        threads: AtomicUsize::new(0),
    });
    let mut sweep = tokio::time::interval(sweep_period(limits.idle_timeout));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut refused = 0u64;
    let mut last_refusal_log: Option<Instant> = None;
    let mut next_id = 0u64;
    loop {
        let conn = tokio::select! {
            c = listener.accept() => c,
            _ = sweep.tick() => {
                let n = registry.close_idle(limits.idle_timeout);
                if n > 0 {
                    info!(closed = n, idle_timeout = ?limits.idle_timeout, "closed idle gRPC connections");
                }
                continue;
            }
            _ = stop.wait_for(|s| *s) => return Ok(()),
        };
        let (stream, peer) = match conn {
            Ok(c) => c,
            // A connection that failed before it was accepted (or too many open files for a
            // moment): the next accept may succeed.
            Err(e) => {
                warn!(%e, "accepting a gRPC connection failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        next_id += 1;
        let state = match registry.admit(next_id, limits.max_connections) {
            Ok(s) => s,
            Err(why) => {
                refused += 1;
                if last_refusal_log.is_none_or(|t| t.elapsed() >= REFUSAL_LOG_INTERVAL) {
                    warn!(%peer, refused, "refusing gRPC connections: {why}");
                    last_refusal_log = Some(Instant::now());
                }
                continue;
            }
        };
        // Appends are small and latency-bound: no Nagle delay on acknowledgements.
        let _ = stream.set_nodelay(true);
        live.fetch_add(1, Ordering::AcqRel);
        let thread = registry.take_thread(limits.dedicated_threads);
        let guard = ConnGuard {
            registry: registry.clone(),
            id: next_id,
            live: live.clone(),
            thread,
        };
        let router = make_router();
        let stop = stop.clone();
        let span = tracing::Span::current();
        if !thread {
            tokio::spawn(
                async move {
                    let _guard = guard;
                    serve_conn(stream, state, router, stop).await;
                }
                .instrument(span),
            );
            continue;
        }
        // The socket moves to the connection thread's own runtime.
        let std_stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                warn!(%e, %peer, "could not hand a gRPC connection to its thread");
                continue;
            }
        };
        let spawned = std::thread::Builder::new()
            .name(format!("grpc-conn-{next_id}"))
            .spawn(move || {
                let _guard = guard;
                let _enter = span.enter();
                serve_one(std_stream, state, router, stop);
            });
        if let Err(e) = spawned {
            warn!(%e, %peer, "could not start a thread for a gRPC connection; closing it");
        }
    }
}

/// Serves one connection on this thread until it closes or `stop` is set.
fn serve_one(
    stream: std::net::TcpStream,
    state: Arc<ConnState>,
    router: Router,
    stop: watch::Receiver<bool>,
) {
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
        match TcpStream::from_std(stream) {
            Ok(s) => serve_conn(s, state, router, stop).await,
            Err(e) => warn!(%e, "could not register a gRPC connection"),
        }
    });
}

/// Serves one connection on the current runtime until it ends or `stop` is set.
async fn serve_conn(
    inner: TcpStream,
    state: Arc<ConnState>,
    router: Router,
    mut stop: watch::Receiver<bool>,
) {
    let (closed_tx, closed_rx) = oneshot::channel::<()>();
    let io = ConnIo {
        inner,
        state,
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
            ConnLimits::default(),
        ));
        let mut clients = Vec::new();
        for _ in 0..3 {
            clients.push(status_not_found(&addr.to_string()).await);
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

    /// Starts a service with `limits` on a free port; its address and stop switch.
    async fn start(limits: ConnLimits) -> (String, watch::Sender<bool>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let svc = SafekeeperService::new(1, dir.path().to_path_buf());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(serve(
            listener,
            move || tonic::transport::Server::builder().add_service(svc.clone().into_server()),
            stop_rx,
            Arc::new(AtomicUsize::new(0)),
            limits,
        ));
        (addr, stop_tx, dir)
    }

    /// Waits until the server closes `conn` (EOF or an error on read), at most 10 s.
    async fn closed_by_server(conn: &mut TcpStream) -> bool {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 256];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue, // the server's HTTP/2 settings
            }
        }
    }

    /// A new client's status call for an unknown timeline is answered NOT_FOUND; the client.
    async fn status_not_found(
        addr: &str,
    ) -> pb::safekeeper_client::SafekeeperClient<tonic::transport::Channel> {
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
        c
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_quiet_connection_is_closed_after_the_idle_timeout() {
        let limits = ConnLimits {
            idle_timeout: Duration::from_millis(300),
            ..ConnLimits::default()
        };
        let (addr, _stop, _dir) = start(limits).await;
        let mut quiet = TcpStream::connect(&addr).await.unwrap();
        assert!(
            closed_by_server(&mut quiet).await,
            "the idle connection stayed open"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_the_cap_the_quietest_connection_makes_room() {
        let limits = ConnLimits {
            dedicated_threads: 1,
            max_connections: 2,
            idle_timeout: Duration::from_secs(60),
        };
        let (addr, _stop, _dir) = start(limits).await;
        let mut first = TcpStream::connect(&addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _second = TcpStream::connect(&addr).await.unwrap();
        tokio::time::sleep(EVICT_MIN_IDLE + Duration::from_millis(200)).await;
        // A third client is served; the first (quietest) connection made room for it.
        tokio::time::timeout(Duration::from_secs(10), status_not_found(&addr))
            .await
            .expect("a client at the cap was not served within 10 s");
        assert!(
            closed_by_server(&mut first).await,
            "the quietest connection stayed open"
        );
    }
}

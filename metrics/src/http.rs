//! The HTTP endpoint of a service: `GET /metrics`, `/health/live`, `/health/ready` (and
//! `/health`, the same as ready).
//!
//! Live means the process answers. Ready means it does its job: the service's own check
//! ([`ReadyCheck`]) says so, or answers 503 with the reason in the body.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

/// `Ok` when the service is ready, else why not (shown in the 503's body).
pub type ReadyCheck = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// What a service's own route sees of a request (they carry no body).
#[derive(Clone, Copy, Debug)]
pub struct ControlRequest<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    /// The `Authorization` header, for routes that check a token.
    pub authorization: Option<&'a str>,
}

/// A service's own routes: `Some((status, JSON body))` for a route it serves, `None` for the
/// common ones.
pub type Control = Arc<dyn Fn(&ControlRequest) -> Option<(u16, String)> + Send + Sync>;

/// A client has this long to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("binding the metrics address {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Binds `addr` and serves the endpoint on the current runtime; returns the bound address
/// (the real port when asked for port 0).
pub async fn start(addr: SocketAddr, ready: ReadyCheck) -> Result<SocketAddr, Error> {
    start_with_control(addr, ready, None).await
}

/// [`start`], also serving the service's own `control` routes.
pub async fn start_with_control(
    addr: SocketAddr,
    ready: ReadyCheck,
    control: Option<Control>,
) -> Result<SocketAddr, Error> {
    let bind_err = |source| Error::Bind { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(bind_err)?;
    let bound = listener.local_addr().map_err(bind_err)?;
    tokio::spawn(serve(listener, ready, control));
    Ok(bound)
}

/// Accepts connections for as long as the runtime runs.
pub async fn serve(listener: TcpListener, ready: ReadyCheck, control: Option<Control>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::warn!(error = %e, "metrics endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let ready = ready.clone();
        let control = control.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let ready = ready.clone();
                let own = control.as_ref().and_then(|c| {
                    c(&ControlRequest {
                        method: req.method().as_str(),
                        path: req.uri().path(),
                        query: req.uri().query().unwrap_or(""),
                        authorization: req
                            .headers()
                            .get(hyper::header::AUTHORIZATION)
                            .and_then(|v| v.to_str().ok()),
                    })
                });
                async move {
                    Ok::<_, Infallible>(to_response(match own {
                        Some((status, body)) => (
                            StatusCode::from_u16(status)
                                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                            "application/json",
                            body,
                        ),
                        None => answer(req.uri().path(), &ready),
                    }))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// What a request for `path` gets: status, content type and body.
pub fn answer(path: &str, ready: &ReadyCheck) -> (StatusCode, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    match path {
        "/metrics" => (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            crate::render(),
        ),
        "/health/live" => (StatusCode::OK, TEXT, "live\n".into()),
        "/health" | "/health/ready" => match ready() {
            Ok(()) => (StatusCode::OK, TEXT, "ready\n".into()),
            Err(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT,
                format!("not ready: {why}\n"),
            ),
        },
        _ => (
            StatusCode::NOT_FOUND,
            TEXT,
            "not found: try /metrics, /health/live or /health/ready\n".into(),
        ),
    }
}

fn to_response(
    (status, content_type, body): (StatusCode, &'static str, String),
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("send");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
    }

    #[tokio::test]
    async fn serves_a_services_own_routes_next_to_the_common_ones() {
        let control: Control = Arc::new(|r| {
            (r.path == "/fence").then(|| {
                (
                    200,
                    format!(
                        "{{\"method\":\"{}\",\"q\":\"{}\",\"auth\":\"{}\"}}",
                        r.method,
                        r.query,
                        r.authorization.unwrap_or("-")
                    ),
                )
            })
        });
        let ready: ReadyCheck = Arc::new(|| Ok(()));
        let addr = start_with_control("127.0.0.1:0".parse().unwrap(), ready, Some(control))
            .await
            .unwrap();
        let run = async {
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            s.write_all(b"POST /fence?ttl_ms=5 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .await
                .expect("send");
            let mut out = String::new();
            s.read_to_string(&mut out).await.expect("read");
            assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
            assert!(out.contains("content-type: application/json"), "{out}");
            assert!(
                out.ends_with("{\"method\":\"POST\",\"q\":\"ttl_ms=5\",\"auth\":\"Bearer t\"}"),
                "{out}"
            );
            assert!(get(addr, "/health/live")
                .await
                .starts_with("HTTP/1.1 200 OK"));
            assert!(get(addr, "/nope").await.starts_with("HTTP/1.1 404"));
        };
        tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .expect("the endpoint answered within 10 s");
    }

    #[tokio::test]
    async fn serves_metrics_and_health_over_http() {
        let is_ready = Arc::new(AtomicBool::new(false));
        let flag = is_ready.clone();
        let check: ReadyCheck = Arc::new(move || {
            if flag.load(Ordering::Relaxed) {
                Ok(())
            } else {
                Err("tenants still loading".into())
            }
        });
        crate::counter("strata_test_http_requests_total", "a test counter").inc_by(3);
        let addr = start("127.0.0.1:0".parse().unwrap(), check).await.unwrap();
        let deadline = Duration::from_secs(10);
        let run = async {
            let m = get(addr, "/metrics").await;
            assert!(m.starts_with("HTTP/1.1 200 OK"), "{m}");
            assert!(m.contains("content-type: text/plain; version=0.0.4"), "{m}");
            assert!(m.contains("\nstrata_test_http_requests_total 3\n"), "{m}");
            assert!(get(addr, "/health/live")
                .await
                .starts_with("HTTP/1.1 200 OK"));
            let r = get(addr, "/health/ready").await;
            assert!(r.starts_with("HTTP/1.1 503"), "{r}");
            assert!(r.ends_with("not ready: tenants still loading\n"), "{r}");
            is_ready.store(true, Ordering::Relaxed);
            for path in ["/health/ready", "/health"] {
                let r = get(addr, path).await;
                assert!(
                    r.starts_with("HTTP/1.1 200 OK") && r.ends_with("ready\n"),
                    "{r}"
                );
            }
            assert!(get(addr, "/nope").await.starts_with("HTTP/1.1 404"));
        };
        tokio::time::timeout(deadline, run)
            .await
            .expect("the endpoint answered within 10 s");
    }
}

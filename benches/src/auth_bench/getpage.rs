//! Page reads over gRPC straight from a pageserver, each timed on its own: the unary
//! `GetPage` (one call, one token check per page) and the `GetPages` stream a lazy compute's
//! page filesystem uses (the token checked when the stream opens, each request against its
//! tenant), one block per request and each awaited before the next.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use strata_auth::BearerInterceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use walproto::proto::pageserver as pb;
use walproto::proto::pageserver::pageserver_client::PageserverClient;

type Client = PageserverClient<InterceptedService<Channel, BearerInterceptor>>;

/// Longest one page read (or connecting) may take before the round fails.
const READ_DEADLINE: Duration = Duration::from_secs(30);

/// The default tablespace's OID (pg_default).
const DEFAULT_TABLESPACE: u32 = 1663;

/// The blocks of one relation's main fork, read at the timeline's last record end.
#[derive(Clone, Debug)]
pub struct PageTarget {
    pub tenant_id: String,
    pub timeline_id: String,
    pub db: u32,
    pub rel: u32,
}

impl PageTarget {
    fn block(&self, blkno: u32) -> pb::RelBlock {
        pb::RelBlock {
            spc: DEFAULT_TABLESPACE,
            db: self.db,
            rel: self.rel,
            fork: 0,
            blkno,
        }
    }
}

/// Which RPC a round reads with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rpc {
    GetPage,
    GetPagesStream,
}

impl Rpc {
    pub fn label(self) -> &'static str {
        match self {
            Rpc::GetPage => "GetPage",
            Rpc::GetPagesStream => "GetPages stream",
        }
    }
}

async fn within<T, E: std::fmt::Display>(
    what: &str,
    f: impl Future<Output = Result<T, E>>,
) -> Result<T> {
    match tokio::time::timeout(READ_DEADLINE, f).await {
        Ok(r) => r.map_err(|e| anyhow!("{what}: {e}")),
        Err(_) => bail!("{what}: no answer within {READ_DEADLINE:?}"),
    }
}

/// A client of the pageserver at `url` presenting `token` (none: no header, as against a
/// cluster without auth; the interceptor runs either way).
pub async fn connect(url: &str, token: Option<String>) -> Result<Client> {
    let endpoint = Endpoint::from_shared(url.to_string())
        .with_context(|| format!("pageserver address {url}"))?
        .connect_timeout(READ_DEADLINE);
    let channel = within(&format!("connecting to {url}"), endpoint.connect()).await?;
    Ok(PageserverClient::with_interceptor(
        channel,
        strata_auth::client_interceptor(token),
    ))
}

/// `reads` page reads of `blocks`, round-robin, with `rpc`: each read's latency in µs.
pub async fn read_round(
    client: &mut Client,
    target: &PageTarget,
    blocks: &[u32],
    reads: usize,
    rpc: Rpc,
) -> Result<Vec<f64>> {
    ensure!(!blocks.is_empty(), "no blocks to read");
    match rpc {
        Rpc::GetPage => unary(client, target, blocks, reads).await,
        Rpc::GetPagesStream => streamed(client, target, blocks, reads).await,
    }
}

fn check_page(blkno: u32, page: &[u8]) -> Result<()> {
    ensure!(
        page.len() == 8192,
        "block {blkno}: a page of {} bytes, not 8192",
        page.len()
    );
    Ok(())
}

async fn unary(
    client: &mut Client,
    target: &PageTarget,
    blocks: &[u32],
    reads: usize,
) -> Result<Vec<f64>> {
    let mut micros = Vec::with_capacity(reads);
    for &blkno in blocks.iter().cycle().take(reads) {
        let req = pb::GetPageRequest {
            tenant_id: target.tenant_id.clone(),
            timeline_id: target.timeline_id.clone(),
            lsn: 0,
            target: Some(pb::get_page_request::Target::RelBlock(target.block(blkno))),
        };
        let t0 = Instant::now();
        let resp = within(&format!("GetPage of block {blkno}"), client.get_page(req)).await?;
        micros.push(t0.elapsed().as_secs_f64() * 1e6);
        let resp = resp.into_inner();
        ensure!(resp.exists, "block {blkno} does not exist");
        check_page(blkno, &resp.page)?;
    }
    Ok(micros)
}

async fn streamed(
    client: &mut Client,
    target: &PageTarget,
    blocks: &[u32],
    reads: usize,
) -> Result<Vec<f64>> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut responses = within(
        "opening a GetPages stream",
        client.get_pages(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
    .await?
    .into_inner();
    let mut micros = Vec::with_capacity(reads);
    for (request_id, &blkno) in (0u64..).zip(blocks.iter().cycle().take(reads)) {
        let req = pb::GetPagesRequest {
            tenant_id: target.tenant_id.clone(),
            timeline_id: target.timeline_id.clone(),
            request_id,
            lsn: 0,
            blocks: vec![target.block(blkno)],
        };
        let t0 = Instant::now();
        tx.send(req)
            .await
            .map_err(|_| anyhow!("the GetPages stream closed before block {blkno}"))?;
        let resp = within(&format!("GetPages of block {blkno}"), responses.message())
            .await?
            .with_context(|| {
                format!("the pageserver ended the GetPages stream at block {blkno}")
            })?;
        micros.push(t0.elapsed().as_secs_f64() * 1e6);
        if let Some(e) = resp.error {
            bail!("GetPages of block {blkno}: code {}: {}", e.code, e.message);
        }
        ensure!(
            resp.request_id == request_id && resp.pages.len() == 1,
            "GetPages answered request {} with {} pages for request {request_id}",
            resp.request_id,
            resp.pages.len()
        );
        check_page(blkno, &resp.pages[0])?;
    }
    Ok(micros)
}

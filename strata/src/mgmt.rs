//! Clients of the services' gRPC APIs, for the CLI: the pageserver's management service and the
//! safekeepers' timeline status. Every call is blocking (the CLI is synchronous), has a
//! deadline (a stopped or wedged service makes the command fail, naming the call, instead of
//! hanging), and turns a gRPC status into an error that keeps the server's message (it says
//! what is possible).

use std::future::Future;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use strata_auth::BearerInterceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use walproto::proto::pageserver as ps;
use walproto::proto::pageserver::pageserver_client::PageserverClient;
use walproto::proto::safekeeper as sk;
use walproto::proto::safekeeper::safekeeper_client::SafekeeperClient;

/// A blocking client of one pageserver.
pub struct Pageserver {
    rt: tokio::runtime::Runtime,
    client: PageserverClient<InterceptedService<Channel, BearerInterceptor>>,
}

/// Why waiting for the pageserver to ingest further is pointless: its ingest of the timeline
/// is stopped (a record it cannot ingest); `None` if it is not.
pub fn ingest_stopped(st: &ps::TimelineInfo) -> Option<String> {
    let s = st.ingest_stop.as_ref()?;
    let resume = if s.needs_restart {
        "restart the pageserver to resume"
    } else {
        "an upgraded pageserver resumes from there after a restart"
    };
    Some(format!(
        "the pageserver stopped ingesting this branch at {} ({} cannot be ingested: {}); \
         readable up to {}; {resume} (see `strata status`)",
        walproto::Lsn(s.record_lsn),
        s.record,
        s.reason,
        walproto::Lsn(st.last_record_end)
    ))
}

fn status_error(what: &str, s: tonic::Status) -> anyhow::Error {
    anyhow!("{what}: {}", s.message())
}

/// A request the pageserver answers from what it has (status, lookups, a branch).
const QUICK_CALL: Duration = Duration::from_secs(30);
/// Requests whose work grows with the data: importing a data directory, GC.
const LONG_CALL: Duration = Duration::from_secs(30 * 60);
/// Longest pause between two basebackup chunks.
const BASEBACKUP_STALL: Duration = Duration::from_secs(120);

/// Environment variable overriding [`DEFAULT_WAIT`].
pub const WAIT_ENV: &str = "STRATA_WAIT_SECS";
/// How long a command waits for the cluster to make progress it needs (the pageserver
/// ingesting what the safekeepers committed).
pub const DEFAULT_WAIT: Duration = Duration::from_secs(60);

/// The progress deadline: `$STRATA_WAIT_SECS` seconds, else [`DEFAULT_WAIT`].
pub fn wait_limit() -> Result<Duration> {
    match std::env::var(WAIT_ENV) {
        Err(std::env::VarError::NotPresent) => Ok(DEFAULT_WAIT),
        Ok(v) => v
            .trim()
            .parse::<u64>()
            .map(Duration::from_secs)
            .with_context(|| format!("{WAIT_ENV}={v:?} is not a number of seconds")),
        Err(e) => Err(anyhow!("{WAIT_ENV}: {e}")),
    }
}

/// Runs one gRPC call on `rt`, failing after `limit` with an error naming the call.
fn call<T>(
    rt: &tokio::runtime::Runtime,
    what: &str,
    limit: Duration,
    fut: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T> {
    // The timer is made inside the runtime (it needs its clock).
    match rt.block_on(async { tokio::time::timeout(limit, fut).await }) {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(s)) => Err(status_error(what, s)),
        Err(_) => Err(no_answer(what, limit)),
    }
}

fn no_answer(what: &str, limit: Duration) -> anyhow::Error {
    anyhow!(
        "{what}: the pageserver did not answer within {} s (is it stopped or overloaded? \
         `strata status`, logs/pageserver.log)",
        limit.as_secs()
    )
}

impl Pageserver {
    pub fn connect(addr: &str) -> Result<Pageserver> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (endpoint, tls) = crate::tls_setup::cli_endpoint(addr)?;
        let client = rt
            .block_on(async {
                let ch = endpoint
                    .connect_timeout(Duration::from_secs(5))
                    .connect()
                    .await
                    .map_err(|e| anyhow!(strata_auth::connect_error(&e, tls.as_ref())))?;
                Ok::<_, anyhow::Error>(
                    PageserverClient::with_interceptor(ch, crate::auth_setup::cli_interceptor())
                        .max_decoding_message_size(64 << 20)
                        .max_encoding_message_size(64 << 20),
                )
            })
            .with_context(|| {
                format!("connecting to the pageserver at {addr} (is the cluster started? `strata start`)")
            })?;
        Ok(Pageserver { rt, client })
    }

    pub fn create_tenant(&mut self) -> Result<ps::TenantInfo> {
        let req = ps::CreateTenantRequest::default();
        call(
            &self.rt,
            "creating the tenant",
            QUICK_CALL,
            self.client.create_tenant(req),
        )
    }

    pub fn import_timeline(
        &mut self,
        tenant: &str,
        datadir: &str,
        safekeepers: Vec<String>,
    ) -> Result<ps::TimelineInfo> {
        let req = ps::ImportTimelineRequest {
            tenant_id: tenant.into(),
            timeline_id: String::new(),
            datadir: datadir.into(),
            lsn: 0,
            safekeepers,
        };
        call(
            &self.rt,
            "importing the data directory",
            LONG_CALL,
            self.client.import_timeline(req),
        )
    }

    pub fn create_branch(
        &mut self,
        tenant: &str,
        parent: &str,
        target: Option<ps::create_branch_request::Target>,
        inclusive: bool,
        safekeepers: Vec<String>,
    ) -> Result<ps::TimelineInfo> {
        let req = ps::CreateBranchRequest {
            tenant_id: tenant.into(),
            parent_timeline_id: parent.into(),
            timeline_id: String::new(),
            target,
            inclusive,
            safekeepers,
        };
        call(
            &self.rt,
            "creating the branch",
            QUICK_CALL,
            self.client.create_branch(req),
        )
    }

    pub fn list_tenants(&mut self) -> Result<Vec<ps::TenantInfo>> {
        call(
            &self.rt,
            "listing tenants",
            QUICK_CALL,
            self.client.list_tenants(ps::ListTenantsRequest {}),
        )
        .map(|r| r.tenants)
    }

    pub fn list_timelines(&mut self, tenant: &str) -> Result<Vec<ps::TimelineInfo>> {
        let req = ps::ListTimelinesRequest {
            tenant_id: tenant.into(),
        };
        call(
            &self.rt,
            "listing timelines",
            QUICK_CALL,
            self.client.list_timelines(req),
        )
        .map(|r| r.timelines)
    }

    /// GC of one timeline (`None`: every timeline of the tenant).
    pub fn gc(&mut self, tenant: &str, timeline: Option<&str>) -> Result<ps::GcResponse> {
        let req = ps::GcRequest {
            tenant_id: tenant.into(),
            timeline_id: timeline.unwrap_or_default().into(),
        };
        call(
            &self.rt,
            "garbage collection",
            LONG_CALL,
            self.client.gc(req),
        )
    }

    /// A lease keeping `lsn` readable for `ttl_seconds`.
    pub fn create_lease(
        &mut self,
        tenant: &str,
        timeline: &str,
        lsn: u64,
        ttl_seconds: u64,
    ) -> Result<ps::LeaseResponse> {
        let req = ps::CreateLeaseRequest {
            tenant_id: tenant.into(),
            timeline_id: timeline.into(),
            lsn,
            ttl_seconds,
            owner: String::new(),
        };
        call(
            &self.rt,
            "creating the lease",
            QUICK_CALL,
            self.client.create_lease(req),
        )
    }

    /// Deletes a tenant on the pageserver and in the object store.
    pub fn delete_tenant(&mut self, tenant: &str) -> Result<ps::DeleteTenantResponse> {
        let req = ps::DeleteTenantRequest {
            tenant_id: tenant.into(),
        };
        call(
            &self.rt,
            "deleting the tenant",
            LONG_CALL,
            self.client.delete_tenant(req),
        )
    }

    /// Deletes a timeline without branches on the pageserver and in the object store.
    pub fn delete_timeline(&mut self, tenant: &str, timeline: &str) -> Result<()> {
        let req = ps::TimelineRequest {
            tenant_id: tenant.into(),
            timeline_id: timeline.into(),
        };
        call(
            &self.rt,
            "deleting the branch",
            LONG_CALL,
            self.client.delete_timeline(req),
        )
        .map(|_| ())
    }

    pub fn list_leases(&mut self, tenant: &str, timeline: &str) -> Result<Vec<ps::LeaseInfo>> {
        let req = ps::TimelineRequest {
            tenant_id: tenant.into(),
            timeline_id: timeline.into(),
        };
        call(
            &self.rt,
            "listing leases",
            QUICK_CALL,
            self.client.list_leases(req),
        )
        .map(|r| r.leases)
    }

    /// Ends `owner`'s lease on `lsn` (empty: the one without an owner); the leases left.
    pub fn revoke_lease(
        &mut self,
        tenant: &str,
        timeline: &str,
        lsn: u64,
        owner: &str,
    ) -> Result<Vec<ps::LeaseInfo>> {
        let req = ps::RevokeLeaseRequest {
            tenant_id: tenant.into(),
            timeline_id: timeline.into(),
            lsn,
            owner: owner.into(),
        };
        call(
            &self.rt,
            "revoking the lease",
            QUICK_CALL,
            self.client.revoke_lease(req),
        )
        .map(|r| r.leases)
    }

    /// The tenant's configuration: every key with its value, form and meaning.
    pub fn get_tenant_config(&mut self, tenant: &str) -> Result<ps::TenantConfigResponse> {
        let req = ps::GetTenantConfigRequest {
            tenant_id: tenant.into(),
        };
        call(
            &self.rt,
            "reading the tenant configuration",
            QUICK_CALL,
            self.client.get_tenant_config(req),
        )
    }

    /// Changes keys of the tenant's configuration (all or none), in effect at once.
    pub fn set_tenant_config(
        &mut self,
        tenant: &str,
        settings: Vec<ps::TenantConfigSetting>,
    ) -> Result<ps::TenantConfigResponse> {
        let req = ps::SetTenantConfigRequest {
            tenant_id: tenant.into(),
            settings,
        };
        call(
            &self.rt,
            "changing the tenant configuration",
            QUICK_CALL,
            self.client.set_tenant_config(req),
        )
    }

    pub fn timeline_status(&mut self, tenant: &str, timeline: &str) -> Result<ps::TimelineInfo> {
        let req = ps::TimelineRequest {
            tenant_id: tenant.into(),
            timeline_id: timeline.into(),
        };
        call(
            &self.rt,
            "timeline status",
            QUICK_CALL,
            self.client.timeline_status(req),
        )
    }

    pub fn lsn_for_timestamp(
        &mut self,
        tenant: &str,
        timeline: &str,
        micros: i64,
        inclusive: bool,
    ) -> Result<u64> {
        let req = ps::LsnForTimestampRequest {
            tenant_id: tenant.into(),
            timeline_id: timeline.into(),
            timestamp_micros: micros,
            inclusive,
        };
        call(
            &self.rt,
            "finding the LSN for that time",
            QUICK_CALL,
            self.client.lsn_for_timestamp(req),
        )
        .map(|r| r.lsn)
    }

    pub fn restore_points(
        &mut self,
        tenant: &str,
        timeline: &str,
    ) -> Result<Vec<ps::RestorePoint>> {
        let req = ps::TimelineRequest {
            tenant_id: tenant.into(),
            timeline_id: timeline.into(),
        };
        call(
            &self.rt,
            "listing restore points",
            QUICK_CALL,
            self.client.list_restore_points(req),
        )
        .map(|r| r.restore_points)
    }

    /// Streams the basebackup `req` asks for (a full or a slim one) as a tar into `sink`,
    /// calling `progress` with the bytes so far.
    pub fn basebackup(
        &mut self,
        req: ps::BasebackupRequest,
        sink: &mut dyn std::io::Write,
        progress: &mut dyn FnMut(u64),
    ) -> Result<()> {
        let client = &mut self.client;
        self.rt.block_on(async {
            let mut stream = tokio::time::timeout(QUICK_CALL, client.basebackup(req))
                .await
                .map_err(|_| no_answer("basebackup", QUICK_CALL))?
                .map_err(|s| status_error("basebackup", s))?
                .into_inner();
            let mut total = 0u64;
            while let Some(chunk) = tokio::time::timeout(BASEBACKUP_STALL, stream.message())
                .await
                .map_err(|_| no_answer("basebackup (the next chunk)", BASEBACKUP_STALL))?
                .map_err(|s| status_error("basebackup", s))?
            {
                sink.write_all(&chunk.data)?;
                total = total.saturating_add(chunk.data.len() as u64);
                progress(total);
            }
            Ok(())
        })
    }
}

/// How long a safekeeper has to answer a status request.
const SAFEKEEPER_ANSWER: Duration = Duration::from_secs(5);

/// Timeline status from each safekeeper, asked all at once: `Ok(None)` if it answers but has
/// no WAL of the timeline yet, `Err` (saying why) if it does not answer within 5 s.
pub fn safekeeper_statuses(
    addrs: &[String],
    tenant: &str,
    timeline: &str,
) -> Vec<Result<Option<sk::TimelineStatusResponse>>> {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return addrs.iter().map(|_| Err(anyhow!("runtime: {e}"))).collect(),
    };
    let asked: Vec<_> = addrs
        .iter()
        .map(|a| {
            let req = sk::TimelineStatusRequest {
                tenant_id: tenant.into(),
                timeline_id: timeline.into(),
            };
            let a = a.clone();
            rt.spawn(async move {
                let answer = tokio::time::timeout(SAFEKEEPER_ANSWER, safekeeper_status(&a, req));
                match answer.await {
                    Ok(r) => r,
                    Err(_) => Err(anyhow!(
                        "safekeeper {a} did not answer within {} s (stopped or overloaded?)",
                        SAFEKEEPER_ANSWER.as_secs()
                    )),
                }
            })
        })
        .collect();
    asked
        .into_iter()
        .map(|h| {
            rt.block_on(h)
                .unwrap_or_else(|e| Err(anyhow!("safekeeper status task: {e}")))
        })
        .collect()
}

/// A client of the safekeeper whose gRPC service is at `addr` (connected within 5 s): every
/// safekeeper call of the CLI connects here.
pub async fn safekeeper_client(
    addr: &str,
) -> Result<SafekeeperClient<InterceptedService<Channel, BearerInterceptor>>> {
    let (endpoint, tls) = crate::tls_setup::cli_endpoint(addr)?;
    let ch = endpoint
        .connect_timeout(SAFEKEEPER_ANSWER)
        .connect()
        .await
        .map_err(|e| anyhow!(strata_auth::connect_error(&e, tls.as_ref())))
        .with_context(|| format!("connecting to the safekeeper at {addr}"))?;
    Ok(SafekeeperClient::with_interceptor(
        ch,
        crate::auth_setup::cli_interceptor(),
    ))
}

async fn safekeeper_status(
    addr: &str,
    req: sk::TimelineStatusRequest,
) -> Result<Option<sk::TimelineStatusResponse>> {
    match safekeeper_client(addr).await?.timeline_status(req).await {
        Ok(r) => Ok(Some(r.into_inner())),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
        Err(s) => Err(anyhow!("safekeeper {addr}: {}", s.message())),
    }
}

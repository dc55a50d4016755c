//! Clients of the services' gRPC APIs, for the CLI: the pageserver's management service and the
//! safekeepers' timeline status. Every call is blocking (the CLI is synchronous) and turns a
//! gRPC status into an error that keeps the server's message (it says what is possible).

use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use tonic::transport::Channel;
use walproto::proto::pageserver as ps;
use walproto::proto::pageserver::pageserver_client::PageserverClient;
use walproto::proto::safekeeper as sk;
use walproto::proto::safekeeper::safekeeper_client::SafekeeperClient;

/// A blocking client of one pageserver.
pub struct Pageserver {
    rt: tokio::runtime::Runtime,
    client: PageserverClient<Channel>,
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

impl Pageserver {
    pub fn connect(addr: &str) -> Result<Pageserver> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let url = format!("http://{addr}");
        let client = rt
            .block_on(async {
                let ch = Channel::from_shared(url.clone())?
                    .connect_timeout(Duration::from_secs(5))
                    .connect()
                    .await?;
                Ok::<_, anyhow::Error>(
                    PageserverClient::new(ch)
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
        self.rt
            .block_on(self.client.create_tenant(req))
            .map(|r| r.into_inner())
            .map_err(|s| status_error("creating the tenant", s))
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
        self.rt
            .block_on(self.client.import_timeline(req))
            .map(|r| r.into_inner())
            .map_err(|s| status_error("importing the data directory", s))
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
        self.rt
            .block_on(self.client.create_branch(req))
            .map(|r| r.into_inner())
            .map_err(|s| status_error("creating the branch", s))
    }

    pub fn list_timelines(&mut self, tenant: &str) -> Result<Vec<ps::TimelineInfo>> {
        let req = ps::ListTimelinesRequest {
            tenant_id: tenant.into(),
        };
        self.rt
            .block_on(self.client.list_timelines(req))
            .map(|r| r.into_inner().timelines)
            .map_err(|s| status_error("listing timelines", s))
    }

    /// GC of one timeline (`None`: every timeline of the tenant).
    pub fn gc(&mut self, tenant: &str, timeline: Option<&str>) -> Result<ps::GcResponse> {
        let req = ps::GcRequest {
            tenant_id: tenant.into(),
            timeline_id: timeline.unwrap_or_default().into(),
        };
        self.rt
            .block_on(self.client.gc(req))
            .map(|r| r.into_inner())
            .map_err(|s| status_error("garbage collection", s))
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
        };
        self.rt
            .block_on(self.client.create_lease(req))
            .map(|r| r.into_inner())
            .map_err(|s| status_error("creating the lease", s))
    }

    pub fn timeline_status(&mut self, tenant: &str, timeline: &str) -> Result<ps::TimelineInfo> {
        let req = ps::TimelineRequest {
            tenant_id: tenant.into(),
            timeline_id: timeline.into(),
        };
        self.rt
            .block_on(self.client.timeline_status(req))
            .map(|r| r.into_inner())
            .map_err(|s| status_error("timeline status", s))
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
        self.rt
            .block_on(self.client.lsn_for_timestamp(req))
            .map(|r| r.into_inner().lsn)
            .map_err(|s| status_error("finding the LSN for that time", s))
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
        self.rt
            .block_on(self.client.list_restore_points(req))
            .map(|r| r.into_inner().restore_points)
            .map_err(|s| status_error("listing restore points", s))
    }

    /// Streams a basebackup tar into `sink`, calling `progress` with the bytes so far.
    pub fn basebackup(
        &mut self,
        tenant: &str,
        timeline: &str,
        lsn: u64,
        read_only: bool,
        sink: &mut dyn std::io::Write,
        progress: &mut dyn FnMut(u64),
    ) -> Result<()> {
        let req = ps::BasebackupRequest {
            tenant_id: tenant.into(),
            timeline_id: timeline.into(),
            lsn,
            read_only,
            prev_lsn: 0,
        };
        let client = &mut self.client;
        self.rt.block_on(async {
            let mut stream = client
                .basebackup(req)
                .await
                .map_err(|s| status_error("basebackup", s))?
                .into_inner();
            let mut total = 0u64;
            while let Some(chunk) = stream
                .message()
                .await
                .map_err(|s| status_error("basebackup", s))?
            {
                sink.write_all(&chunk.data)?;
                total += chunk.data.len() as u64;
                progress(total);
            }
            Ok(())
        })
    }
}

/// Timeline status from each safekeeper: `Ok(None)` if it answers but has no WAL of the
/// timeline yet, `Err` if it does not answer.
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
    addrs
        .iter()
        .map(|a| {
            rt.block_on(async {
                let ch = Channel::from_shared(format!("http://{a}"))?
                    .connect_timeout(Duration::from_secs(3))
                    .timeout(Duration::from_secs(5))
                    .connect()
                    .await
                    .with_context(|| format!("connecting to the safekeeper at {a}"))?;
                let req = sk::TimelineStatusRequest {
                    tenant_id: tenant.into(),
                    timeline_id: timeline.into(),
                };
                match SafekeeperClient::new(ch).timeline_status(req).await {
                    Ok(r) => Ok(Some(r.into_inner())),
                    Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
                    Err(s) => Err(anyhow!("safekeeper {a}: {}", s.message())),
                }
            })
        })
        .collect()
}

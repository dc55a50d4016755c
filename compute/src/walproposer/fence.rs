//! The acknowledgement fence: while a fence holds, the walproposer reports no new write or
//! flush position to Postgres, so no synchronous commit returns (commits wait; WAL keeps
//! flowing to the safekeepers). A group coordinator fences every member, reads each one's
//! quorum commit LSN and lifts the fences: a consistent cut (see "Groups and consistent cuts"
//! in `docs/architecture.md`).
//!
//! Every fence has a deadline: one not lifted in time lifts itself, so a coordinator that
//! died mid-cut never wedges a member's commits. Fences are counted by token, so concurrent
//! coordinators do not lift each other's; lifting tells whether the fence held throughout
//! (a walproposer that restarted, or a fence that expired, did not hold it: that cut is void).

use std::collections::BTreeMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use strata_auth::{Scope, TokenVerifier};
use strata_metrics::http::ControlRequest;
use tokio::sync::Notify;
use walproto::Lsn;

/// Longest fence a coordinator may ask for.
pub const MAX_FENCE: Duration = Duration::from_secs(60);

#[derive(Default)]
struct State {
    /// Token → when that fence lifts itself.
    fences: BTreeMap<u64, Instant>,
    next_token: u64,
    /// The positions last handed to the main loop to send to Postgres.
    sent_write: Lsn,
    sent_flush: Lsn,
    /// The quorum commit LSN the main loop last saw.
    commit: Lsn,
}

/// What a fence request answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fenced {
    pub token: u64,
    /// The last flush position sent (or being sent) to Postgres: no later one is sent while
    /// the fence holds.
    pub acked: Lsn,
    /// The quorum commit LSN (fsynced by a majority in this term) when the fence took hold.
    pub commit: Lsn,
}

/// The fence of this process's walproposer (one per process, like its metrics).
pub struct Fence {
    state: Mutex<State>,
    /// Woken when a fence is lifted, so the main loop sends the held-back position at once.
    pub lifted: Notify,
}

pub static FENCE: LazyLock<Fence> = LazyLock::new(Fence::new);

impl Default for Fence {
    fn default() -> Self {
        Fence::new()
    }
}

impl Fence {
    pub fn new() -> Fence {
        Fence {
            state: Mutex::new(State {
                // Tokens differ across restarts of the process: a token of a previous
                // walproposer never lifts (or is taken for) a fence of this one.
                next_token: start_token(),
                ..State::default()
            }),
            lifted: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state stays consistent under every panic point (plain assignments).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a fence lifting itself after `ttl` (at most [`MAX_FENCE`]). Once this returns,
    /// no position beyond `acked` reaches Postgres until the fence is lifted or expires: the
    /// main loop picks the position to send under the same lock.
    pub fn fence(&self, ttl: Duration) -> Fenced {
        let mut s = self.lock();
        let token = s.next_token;
        s.next_token = s.next_token.wrapping_add(1);
        s.fences.insert(token, Instant::now() + ttl.min(MAX_FENCE));
        Fenced {
            token,
            acked: s.sent_flush,
            commit: s.commit,
        }
    }

    /// Lifts fence `token`; true if it held until now (it existed and had not expired).
    pub fn unfence(&self, token: u64) -> bool {
        let held = {
            let mut s = self.lock();
            s.fences
                .remove(&token)
                .is_some_and(|until| Instant::now() < until)
        };
        self.lifted.notify_one();
        held
    }

    /// Fences in force now.
    pub fn active(&self) -> usize {
        let mut s = self.lock();
        expire(&mut s);
        s.fences.len()
    }

    /// The main loop: the quorum commit is `commit`, and it would tell Postgres `write` and
    /// `flush`. Returns what it may send: those, or while fenced the last positions sent.
    pub fn positions_to_send(&self, write: Lsn, flush: Lsn, commit: Lsn) -> (Lsn, Lsn) {
        let mut s = self.lock();
        s.commit = s.commit.max(commit);
        if expire(&mut s) {
            tracing::warn!("a fence was not lifted before its deadline: it lifted itself");
        }
        if s.fences.is_empty() {
            s.sent_write = s.sent_write.max(write);
            s.sent_flush = s.sent_flush.max(flush);
        }
        (s.sent_write, s.sent_flush)
    }
}

/// Drops expired fences; true if any was.
fn expire(s: &mut State) -> bool {
    let now = Instant::now();
    let before = s.fences.len();
    s.fences.retain(|_, until| now < *until);
    s.fences.len() != before
}

fn start_token() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 40)
}

/// The scope a token needs to fence or unfence: a fence holds back every commit of the
/// compute, so only the cluster's operator (the group coordinator runs as the `strata` CLI,
/// with the admin token) may take one.
pub const FENCE_SCOPE: Scope = Scope::Admin;

/// The HTTP control routes served next to `/metrics` (`compute walproposer --metrics-listen`):
/// `POST /fence?ttl_ms=N` and `POST /unfence?token=T`. Answers are one line of JSON. With a
/// `verifier` (auth on) both need a token of [`FENCE_SCOPE`]: 401 without a valid one, 403
/// with another scope, the reason in `error`.
pub fn control(req: &ControlRequest, verifier: Option<&TokenVerifier>) -> Option<(u16, String)> {
    let error = |status: u16, why: &str| Some((status, format!("{{\"error\":{why:?}}}\n")));
    if !matches!(req.path, "/fence" | "/unfence") {
        return None;
    }
    if req.method != "POST" {
        return error(405, "use POST");
    }
    if let Err((status, why)) = strata_auth::check_http(verifier, req.authorization, &FENCE_SCOPE) {
        return error(status, &why);
    }
    let param = |name: &str| {
        req.query.split('&').find_map(|kv| {
            kv.split_once('=')
                .filter(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        })
    };
    if req.path == "/fence" {
        let ttl_ms = match param("ttl_ms").map(|v| v.parse::<u64>()) {
            Some(Ok(ms)) if ms > 0 => ms,
            Some(_) => return error(400, "ttl_ms must be a positive number of milliseconds"),
            None => return error(400, "missing ttl_ms (the fence lifts itself after it)"),
        };
        if let Err(why) = super::metrics::ready() {
            return error(503, &why);
        }
        let f = FENCE.fence(Duration::from_millis(ttl_ms));
        return Some((
            200,
            format!(
                "{{\"token\":{},\"acked_lsn\":\"{}\",\"commit_lsn\":\"{}\"}}\n",
                f.token, f.acked, f.commit
            ),
        ));
    }
    match param("token").map(|v| v.parse::<u64>()) {
        Some(Ok(token)) => Some((200, format!("{{\"held\":{}}}\n", FENCE.unfence(token)))),
        _ => error(400, "missing or bad token"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fence_freezes_positions_until_lifted() {
        let f = Fence::new();
        assert_eq!(
            f.positions_to_send(Lsn(100), Lsn(90), Lsn(90)),
            (Lsn(100), Lsn(90))
        );
        let held = f.fence(Duration::from_secs(10));
        assert_eq!((held.acked, held.commit), (Lsn(90), Lsn(90)));
        assert_eq!(
            f.positions_to_send(Lsn(200), Lsn(180), Lsn(180)),
            (Lsn(100), Lsn(90))
        );
        // A second coordinator's fence: lifting the first does not lift it.
        let second = f.fence(Duration::from_secs(10));
        assert_eq!(second.commit, Lsn(180));
        assert!(f.unfence(held.token));
        assert!(!f.unfence(held.token), "a token lifts once");
        assert_eq!(
            f.positions_to_send(Lsn(210), Lsn(190), Lsn(190)),
            (Lsn(100), Lsn(90))
        );
        assert!(f.unfence(second.token));
        assert_eq!(
            f.positions_to_send(Lsn(210), Lsn(190), Lsn(190)),
            (Lsn(210), Lsn(190))
        );
    }

    #[test]
    fn a_fence_lifts_itself_at_its_deadline() {
        let f = Fence::new();
        f.positions_to_send(Lsn(10), Lsn(10), Lsn(10));
        let held = f.fence(Duration::from_millis(30));
        assert_eq!(f.active(), 1);
        assert_eq!(
            f.positions_to_send(Lsn(20), Lsn(20), Lsn(20)),
            (Lsn(10), Lsn(10))
        );
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(
            f.positions_to_send(Lsn(30), Lsn(30), Lsn(30)),
            (Lsn(30), Lsn(30))
        );
        assert!(!f.unfence(held.token), "an expired fence did not hold");
    }

    fn call(method: &str, path: &str, query: &str) -> Option<(u16, String)> {
        let req = ControlRequest {
            method,
            path,
            query,
            authorization: None,
        };
        control(&req, None)
    }

    #[test]
    fn control_routes_check_their_input() {
        assert_eq!(call("GET", "/metrics", ""), None);
        assert_eq!(call("GET", "/fence", "").map(|r| r.0), Some(405));
        assert_eq!(call("POST", "/fence", "").map(|r| r.0), Some(400));
        assert_eq!(call("POST", "/fence", "ttl_ms=0").map(|r| r.0), Some(400));
        assert_eq!(call("POST", "/unfence", "token=x").map(|r| r.0), Some(400));
        assert_eq!(
            call("POST", "/unfence", "token=1"),
            Some((200, "{\"held\":false}\n".into()))
        );
    }

    #[test]
    fn with_auth_on_the_routes_need_an_admin_token() {
        let dir = tempfile::tempdir().unwrap();
        strata_auth::generate_key_pair(dir.path()).unwrap();
        let issuer = strata_auth::TokenIssuer::from_private_key_file(
            &dir.path().join(strata_auth::PRIVATE_KEY_FILE),
        )
        .unwrap();
        let verifier =
            TokenVerifier::from_public_key_file(&dir.path().join(strata_auth::PUBLIC_KEY_FILE))
                .unwrap();
        let bearer = |scope: Scope| {
            let claims = strata_auth::Claims::new(scope);
            format!("Bearer {}", issuer.issue(&claims).unwrap())
        };
        let (admin, tenant) = (bearer(Scope::Admin), bearer(Scope::Tenant("a".into())));
        let with = |authorization: Option<&str>| {
            let req = ControlRequest {
                method: "POST",
                path: "/unfence",
                query: "token=1",
                authorization,
            };
            control(&req, Some(&verifier)).expect("a fence route")
        };
        let (status, body) = with(None);
        assert_eq!(status, 401, "{body}");
        assert!(body.contains("scope admin"), "{body}");
        let (status, body) = with(Some(&tenant));
        assert_eq!(status, 403, "{body}");
        assert!(body.contains("needs scope admin"), "{body}");
        assert_eq!(with(Some(&admin)).0, 200);
    }
}

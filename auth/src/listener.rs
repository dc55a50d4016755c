//! Auth off is for loopback: a listener others can reach needs tokens, or an explicit
//! `--no-auth`.

use std::net::SocketAddr;

use crate::AuthError;

/// Refuses to serve `what` on `addr` beyond loopback with auth off, unless `no_auth` says so.
pub fn check_listener(
    what: &'static str,
    addr: SocketAddr,
    auth_on: bool,
    no_auth: bool,
) -> Result<(), AuthError> {
    if may_serve(addr, auth_on, no_auth) {
        return Ok(());
    }
    Err(AuthError::OpenListener { what, addr })
}

/// The rule of every listener beyond loopback: only with the protection on, or when the
/// operator explicitly went without it.
pub(crate) fn may_serve(addr: SocketAddr, protected: bool, opted_out: bool) -> bool {
    protected || opted_out || addr.ip().is_loopback()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_is_served_without_auth_unless_asked() {
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        for local in ["127.0.0.1:1", "127.3.4.5:1", "[::1]:1"] {
            assert!(
                check_listener("gRPC", addr(local), false, false).is_ok(),
                "{local}"
            );
        }
        for open in ["0.0.0.0:1", "10.1.2.3:1", "[::]:1"] {
            let err = check_listener("gRPC", addr(open), false, false).unwrap_err();
            assert!(err.to_string().contains("--no-auth"), "{err}");
            assert!(check_listener("gRPC", addr(open), true, false).is_ok());
            assert!(check_listener("gRPC", addr(open), false, true).is_ok());
        }
    }
}

//! Tokens on gRPC: the client sends `authorization: Bearer <token>`, the service checks it.

use tonic::metadata::{Ascii, MetadataValue};
use tonic::{Request, Status};

use crate::{AuthError, Claims, Scope, TokenVerifier};

const AUTHORIZATION: &str = "authorization";

/// Adds the bearer token to every request of a client (none: sends nothing).
#[derive(Clone)]
pub struct BearerInterceptor {
    /// The header value, or why the token cannot be one.
    header: Option<Result<MetadataValue<Ascii>, String>>,
}

/// The interceptor for a tonic client: `Client::with_interceptor(channel, client_interceptor(t))`.
pub fn client_interceptor(token: Option<String>) -> BearerInterceptor {
    BearerInterceptor {
        header: token.map(|t| {
            format!("Bearer {}", t.trim())
                .parse()
                .map_err(|_| "the token has characters a gRPC header cannot carry".to_string())
        }),
    }
}

impl tonic::service::Interceptor for BearerInterceptor {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        match &self.header {
            None => {}
            Some(Ok(value)) => {
                req.metadata_mut().insert(AUTHORIZATION, value.clone());
            }
            Some(Err(why)) => return Err(Status::unauthenticated(why.clone())),
        }
        Ok(req)
    }
}

/// The claims of the request's token; `None` when auth is off (no verifier). No token, a
/// garbled, forged or expired one: UNAUTHENTICATED saying which.
pub fn authenticate<T>(
    req: &Request<T>,
    verifier: Option<&TokenVerifier>,
) -> Result<Option<Claims>, Status> {
    let Some(verifier) = verifier else {
        return Ok(None);
    };
    let Some(value) = req.metadata().get(AUTHORIZATION) else {
        return Err(Status::unauthenticated(
            "this service requires a token: send the header `authorization: Bearer <token>`",
        ));
    };
    let token = value
        .to_str()
        .ok()
        .and_then(crate::http::bearer)
        .ok_or_else(|| {
            Status::unauthenticated("the authorization header is not `Bearer <token>`")
        })?;
    verifier
        .verify(token)
        .map(Some)
        .map_err(|e| Status::unauthenticated(e.to_string()))
}

/// Whether `claims` (none: auth off) allow `needed`, for `tenant_id` if given:
/// PERMISSION_DENIED naming the scope needed and the token's.
pub fn authorize(
    claims: Option<&Claims>,
    needed: &Scope,
    tenant_id: Option<&str>,
) -> Result<(), Status> {
    match claims.and_then(|c| c.refusal(needed, tenant_id)) {
        Some(why) => Err(Status::permission_denied(why)),
        None => Ok(()),
    }
}

/// [`authenticate`] then [`authorize`]: the check of a call that needs `needed`.
pub fn check<T>(
    req: &Request<T>,
    verifier: Option<&TokenVerifier>,
    needed: &Scope,
) -> Result<(), Status> {
    authorize(authenticate(req, verifier)?.as_ref(), needed, None)
}

/// [`check`] for a call on the timelines of `tenant_id` (a tenant-limited `safekeeper` token
/// allows only its own tenant).
pub fn check_for<T>(
    req: &Request<T>,
    verifier: Option<&TokenVerifier>,
    needed: &Scope,
    tenant_id: &str,
) -> Result<(), Status> {
    authorize(
        authenticate(req, verifier)?.as_ref(),
        needed,
        Some(tenant_id),
    )
}

impl AuthError {
    /// The gRPC status for this error: PERMISSION_DENIED for a scope, else UNAUTHENTICATED.
    pub fn to_status(&self) -> Status {
        match self {
            AuthError::Forbidden(why) => Status::permission_denied(why.clone()),
            other => Status::unauthenticated(other.to_string()),
        }
    }
}

/// The RPC names a `.proto` file declares (`rpc Name(...)`), sorted: for the tests that check
/// a service's table of scopes covers every RPC.
pub fn rpc_names(proto_text: &str) -> Vec<String> {
    let mut names: Vec<String> = proto_text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("rpc "))
        .filter_map(|l| l.split('(').next())
        .map(|n| n.trim().to_string())
        .collect();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use tonic::service::Interceptor;
    use tonic::Code;

    use super::*;
    use crate::{generate_key_pair, TokenIssuer, PRIVATE_KEY_FILE, PUBLIC_KEY_FILE};

    #[test]
    fn the_interceptor_token_is_checked_as_the_service_would() {
        let dir = tempfile::tempdir().unwrap();
        generate_key_pair(dir.path()).unwrap();
        let issuer =
            TokenIssuer::from_private_key_file(&dir.path().join(PRIVATE_KEY_FILE)).unwrap();
        let verifier =
            TokenVerifier::from_public_key_file(&dir.path().join(PUBLIC_KEY_FILE)).unwrap();
        let token = issuer
            .issue(&Claims::new(Scope::Tenant("a".into())))
            .unwrap();
        let sent = |t: Option<String>| client_interceptor(t).call(Request::new(())).unwrap();
        let v = Some(&verifier);

        let none = sent(None);
        assert!(
            check(&none, None, &Scope::Admin).is_ok(),
            "auth off takes anything"
        );
        let code = check(&none, v, &Scope::Tenant("a".into()))
            .unwrap_err()
            .code();
        assert_eq!(code, Code::Unauthenticated);

        let with = sent(Some(format!("{token}\n")));
        assert!(check(&with, v, &Scope::Tenant("a".into())).is_ok());
        let denied = check(&with, v, &Scope::Admin).unwrap_err();
        assert_eq!(denied.code(), Code::PermissionDenied);
        assert_eq!(
            denied.message(),
            "this call needs scope admin; the token has tenant:a"
        );

        let garbled = sent(Some("not-a-token".into()));
        let code = check(&garbled, v, &Scope::Tenant("a".into()))
            .unwrap_err()
            .code();
        assert_eq!(code, Code::Unauthenticated);

        let mut basic = Request::new(());
        basic
            .metadata_mut()
            .insert(AUTHORIZATION, format!("Basic {token}").parse().unwrap());
        let code = check(&basic, v, &Scope::Tenant("a".into()))
            .unwrap_err()
            .code();
        assert_eq!(code, Code::Unauthenticated);

        let limited = issuer
            .issue(&Claims {
                tenant_id: Some("a".into()),
                ..Claims::new(Scope::Safekeeper)
            })
            .unwrap();
        let sk = sent(Some(limited));
        assert!(check_for(&sk, v, &Scope::Safekeeper, "a").is_ok());
        let code = check_for(&sk, v, &Scope::Safekeeper, "b")
            .unwrap_err()
            .code();
        assert_eq!(code, Code::PermissionDenied);
    }

    #[test]
    fn rpc_names_are_read_from_proto_text() {
        let proto = "service S {\n  // rpc Commented(X)\n  rpc B(stream X) returns (Y);\n  rpc A(X) returns (stream Y);\n}";
        assert_eq!(rpc_names(proto), ["A", "B"]);
    }

    #[test]
    fn a_token_a_header_cannot_carry_fails_the_call_not_the_client() {
        let mut i = client_interceptor(Some("bad\u{7f}token".into()));
        let err = i.call(Request::new(())).unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
    }
}

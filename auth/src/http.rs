//! Tokens on plain HTTP (a walproposer's fence routes): the client sends `Authorization:
//! Bearer <token>`, the service answers 401 or 403 with the reason.

use crate::{Claims, Scope, TokenVerifier};

/// The token of an `Authorization` header value `Bearer <token>` (any case of `bearer`).
pub(crate) fn bearer(value: &str) -> Option<&str> {
    let (kind, token) = value.trim().split_once(' ')?;
    kind.eq_ignore_ascii_case("bearer").then_some(token.trim())
}

/// Checks a request's `Authorization` header against `needed`: the token's claims (`None`
/// when auth is off: no verifier), or the HTTP status and reason to refuse it with: 401
/// without a valid token (none, garbled, forged, expired), 403 with a token whose scope does
/// not allow `needed` (the reason names the scope needed and the token's).
pub fn check_http(
    verifier: Option<&TokenVerifier>,
    authorization: Option<&str>,
    needed: &Scope,
) -> Result<Option<Claims>, (u16, String)> {
    let Some(verifier) = verifier else {
        return Ok(None);
    };
    let Some(value) = authorization else {
        return Err((
            401,
            format!(
                "this endpoint requires a token of scope {needed}: send the header \
                 `Authorization: Bearer <token>`"
            ),
        ));
    };
    let token = bearer(value).ok_or_else(|| {
        (
            401,
            "the Authorization header is not `Bearer <token>`".to_string(),
        )
    })?;
    let claims = verifier.verify(token).map_err(|e| (401, e.to_string()))?;
    match claims.refusal(needed, None) {
        Some(why) => Err((403, why)),
        None => Ok(Some(claims)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_bad_and_unscoped_tokens_are_401_401_403() {
        let k = crate::token::tests::keys();
        let (issuer, v) = (&k.issuer, Some(&k.verifier));
        let admin = issuer.issue(&Claims::new(Scope::Admin)).unwrap();
        let tenant = issuer
            .issue(&Claims::new(Scope::Tenant("a".into())))
            .unwrap();

        assert_eq!(check_http(None, None, &Scope::Admin), Ok(None));
        let (status, why) = check_http(v, None, &Scope::Admin).unwrap_err();
        assert_eq!(status, 401);
        assert!(why.contains("scope admin"), "{why}");
        assert_eq!(
            check_http(v, Some("Bearer garbage"), &Scope::Admin)
                .unwrap_err()
                .0,
            401
        );
        let basic = format!("Basic {admin}");
        assert_eq!(
            check_http(v, Some(&basic), &Scope::Admin).unwrap_err().0,
            401
        );
        let (status, why) =
            check_http(v, Some(&format!("Bearer {tenant}")), &Scope::Admin).unwrap_err();
        assert_eq!(
            (status, why.as_str()),
            (403, "this call needs scope admin; the token has tenant:a")
        );
        let ok = check_http(v, Some(&format!("bearer {admin}\n")), &Scope::Admin).unwrap();
        assert_eq!(ok.map(|c| c.scope), Some(Scope::Admin));
    }
}

//! Signing and verifying tokens.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};

use crate::keys::{io, read_key};
use crate::{AuthError, Claims, Scope};

/// Seconds a token is still taken after its `exp`: clocks of one host's processes agree, but
/// a cluster's hosts may drift a little.
const EXPIRY_LEEWAY_SECS: u64 = 5;

/// Signs tokens with the cluster's private key.
pub struct TokenIssuer {
    key: EncodingKey,
}

impl TokenIssuer {
    pub fn from_private_key_file(path: &Path) -> Result<Self, AuthError> {
        let pem = read_key(path)?;
        let bad = |reason: String| AuthError::BadKey {
            what: "private",
            path: path.to_path_buf(),
            reason,
        };
        let key = EncodingKey::from_ed_pem(&pem).map_err(|e| bad(e.to_string()))?;
        let issuer = TokenIssuer { key };
        // The PEM parser does not look at the key itself: signing once does.
        issuer
            .issue(&Claims::new(Scope::Admin))
            .map_err(|e| bad(e.to_string()))?;
        Ok(issuer)
    }

    pub fn issue(&self, claims: &Claims) -> Result<String, AuthError> {
        jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), claims, &self.key)
            .map_err(|e| AuthError::Signing(e.to_string()))
    }
}

/// Tokens whose signature a verifier remembers as checked, at most (then it forgets them all
/// and starts over): a cluster's services see a handful of distinct tokens.
const VERIFIED_CACHE_ENTRIES: usize = 1024;

/// Checks tokens against the cluster's public key.
pub struct TokenVerifier {
    key: DecodingKey,
    validation: Validation,
    /// Token → its claims, for tokens whose signature verified: checking an Ed25519 signature
    /// costs tens of microseconds, a unary GetPage a few hundred, and a token never changes
    /// (the expiry is still checked on every use).
    verified: Mutex<HashMap<String, Claims>>,
}

impl TokenVerifier {
    pub fn from_public_key_file(path: &Path) -> Result<Self, AuthError> {
        let pem = read_key(path)?;
        let key = DecodingKey::from_ed_pem(&pem).map_err(|e| AuthError::BadKey {
            what: "public",
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        // `exp` is optional and checked below with a clear error.
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_aud = false;
        Ok(TokenVerifier {
            key,
            validation,
            verified: Mutex::new(HashMap::new()),
        })
    }

    /// The token's claims if its signature is the cluster's and it has not expired.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let token = token.trim();
        let known = self.cache().get(token).cloned();
        let claims = match known {
            Some(claims) => claims,
            None => {
                let claims = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
                    .map_err(|e| AuthError::InvalidToken(e.to_string()))?
                    .claims;
                let mut cache = self.cache();
                if cache.len() >= VERIFIED_CACHE_ENTRIES {
                    cache.clear();
                }
                cache.insert(token.to_string(), claims.clone());
                claims
            }
        };
        if let Some(exp) = claims.exp {
            if now_secs() > exp.saturating_add(EXPIRY_LEEWAY_SECS) {
                return Err(AuthError::Expired { exp });
            }
        }
        Ok(claims)
    }

    /// [`TokenVerifier::verify`], then whether the claims allow `needed` (for `tenant_id` if
    /// given): [`AuthError::Forbidden`] names the scope needed.
    pub fn verify_for(
        &self,
        token: &str,
        needed: &Scope,
        tenant_id: Option<&str>,
    ) -> Result<Claims, AuthError> {
        let claims = self.verify(token)?;
        match claims.refusal(needed, tenant_id) {
            Some(why) => Err(AuthError::Forbidden(why)),
            None => Ok(claims),
        }
    }
}

impl TokenVerifier {
    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, Claims>> {
        self.verified.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The token in a file (surrounding white space removed).
pub fn read_token_file(path: &Path) -> Result<String, AuthError> {
    let text =
        std::fs::read_to_string(path).map_err(io("reading the token file", path.to_path_buf()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(AuthError::EmptyTokenFile {
            path: path.to_path_buf(),
        });
    }
    Ok(token.to_string())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{generate_key_pair, PRIVATE_KEY_FILE, PUBLIC_KEY_FILE};

    /// A fresh key pair in a temporary directory (the tests of this crate).
    pub(crate) struct Keys {
        _dir: tempfile::TempDir,
        pub(crate) issuer: TokenIssuer,
        pub(crate) verifier: TokenVerifier,
    }

    pub(crate) fn keys() -> Keys {
        let dir = tempfile::tempdir().unwrap();
        generate_key_pair(dir.path()).unwrap();
        Keys {
            issuer: TokenIssuer::from_private_key_file(&dir.path().join(PRIVATE_KEY_FILE)).unwrap(),
            verifier: TokenVerifier::from_public_key_file(&dir.path().join(PUBLIC_KEY_FILE))
                .unwrap(),
            _dir: dir,
        }
    }

    #[test]
    fn a_token_round_trips_with_every_scope() {
        let k = keys();
        for scope in [
            Scope::Admin,
            Scope::Safekeeper,
            Scope::Tenant("0a1b".into()),
        ] {
            let claims = Claims {
                tenant_id: Some("0a1b".into()),
                exp: Some(now_secs() + 3600),
                ..Claims::new(scope)
            };
            let token = k.issuer.issue(&claims).unwrap();
            assert_eq!(k.verifier.verify(&token).unwrap(), claims);
            // White space around it, as in a token file, does not matter.
            assert_eq!(k.verifier.verify(&format!(" {token}\n")).unwrap(), claims);
        }
    }

    #[test]
    fn an_expired_token_is_refused_naming_its_expiry() {
        let k = keys();
        let exp = now_secs() - 3600;
        let token = k
            .issuer
            .issue(&Claims {
                exp: Some(exp),
                ..Claims::new(Scope::Admin)
            })
            .unwrap();
        match k.verifier.verify(&token) {
            Err(AuthError::Expired { exp: e }) => assert_eq!(e, exp),
            other => panic!("expected Expired, got {other:?}"),
        }
    }

    #[test]
    fn a_remembered_token_is_still_checked_for_expiry_and_the_memory_is_bounded() {
        let k = keys();
        let expired = k
            .issuer
            .issue(&Claims {
                exp: Some(now_secs() - 3600),
                ..Claims::new(Scope::Admin)
            })
            .unwrap();
        for _ in 0..2 {
            assert!(matches!(
                k.verifier.verify(&expired),
                Err(AuthError::Expired { .. })
            ));
        }
        let good = k.issuer.issue(&Claims::new(Scope::Safekeeper)).unwrap();
        let first = k.verifier.verify(&good).unwrap();
        assert_eq!(k.verifier.verify(&good).unwrap(), first);
        for i in 0..=VERIFIED_CACHE_ENTRIES {
            let claims = Claims {
                tenant_id: Some(format!("{i:032x}")),
                ..Claims::new(Scope::Admin)
            };
            let token = k.issuer.issue(&claims).unwrap();
            assert_eq!(k.verifier.verify(&token).unwrap(), claims);
        }
        assert!(k.verifier.cache().len() <= VERIFIED_CACHE_ENTRIES);
    }

    #[test]
    fn a_token_of_another_key_is_refused() {
        let (a, b) = (keys(), keys());
        let token = a.issuer.issue(&Claims::new(Scope::Admin)).unwrap();
        let err = b.verifier.verify(&token).unwrap_err();
        assert!(matches!(err, AuthError::InvalidToken(_)), "{err}");
    }

    #[test]
    fn a_wrong_scope_is_forbidden_with_the_scope_needed() {
        let k = keys();
        let token = k
            .issuer
            .issue(&Claims::new(Scope::Tenant("a".into())))
            .unwrap();
        let needed = Scope::Tenant("b".into());
        match k.verifier.verify_for(&token, &needed, None) {
            Err(AuthError::Forbidden(m)) => {
                assert!(m.contains("needs scope tenant:b or admin"), "{m}")
            }
            other => panic!("expected Forbidden, got {other:?}"),
        }
        assert!(k
            .verifier
            .verify_for(&token, &Scope::Tenant("a".into()), None)
            .is_ok());
    }

    #[test]
    fn garbage_and_tampered_tokens_are_refused_without_panicking() {
        let k = keys();
        let good = k
            .issuer
            .issue(&Claims::new(Scope::Tenant("a".into())))
            .unwrap();
        // The claims of `good` rewritten to admin, with the old signature.
        let mut parts: Vec<&str> = good.split('.').collect();
        use base64::Engine;
        let admin = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"scope":"admin","iat":1}"#);
        parts[1] = &admin;
        let tampered = parts.join(".");
        let unsigned_header = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"alg":"none","typ":"JWT"}"#);
        let none_alg = format!("{unsigned_header}.{admin}.");
        for bad in [
            "",
            "x",
            "a.b.c",
            "...",
            "\u{1F600}.\u{0}.é",
            &tampered,
            &none_alg,
        ] {
            let err = k.verifier.verify(bad).unwrap_err();
            assert!(matches!(err, AuthError::InvalidToken(_)), "{bad:?}: {err}");
        }
    }

    #[test]
    fn bad_key_files_and_token_files_name_their_path() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a key").unwrap();
        let err = TokenVerifier::from_public_key_file(&junk).err().unwrap();
        assert!(err.to_string().contains("junk.pem"), "{err}");
        let err = TokenIssuer::from_private_key_file(&junk).err().unwrap();
        assert!(err.to_string().contains("junk.pem"), "{err}");
        let missing = dir.path().join("missing.token");
        let err = read_token_file(&missing).unwrap_err();
        assert!(err.to_string().contains("missing.token"), "{err}");
        let empty = dir.path().join("empty.token");
        std::fs::write(&empty, " \n").unwrap();
        assert!(matches!(
            read_token_file(&empty),
            Err(AuthError::EmptyTokenFile { .. })
        ));
        std::fs::write(&empty, "abc.def.ghi\n").unwrap();
        assert_eq!(read_token_file(&empty).unwrap(), "abc.def.ghi");
    }
}

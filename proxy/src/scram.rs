//! SCRAM-SHA-256 (RFC 5802, RFC 7677) as a server, the way Postgres does it: no channel
//! binding (the proxy has no TLS yet), the user name in the SCRAM messages ignored (the
//! startup packet names the role), and verifiers in Postgres's own text form
//! `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (base64), so a verifier from
//! `pg_authid.rolpassword` works here too.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Iterations for new verifiers (Postgres's default `scram_iterations`).
pub const ITERATIONS: u32 = 4096;
const SALT_LEN: usize = 16;
/// Random bytes in the server's nonce (Postgres uses 18).
const NONCE_LEN: usize = 18;
pub const MECHANISM: &str = "SCRAM-SHA-256";

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    #[error("malformed SCRAM message: {0}")]
    Malformed(String),
    #[error("channel binding is not supported (the proxy has no TLS yet)")]
    ChannelBinding,
    #[error("the client's proof does not match the verifier")]
    WrongProof,
    #[error("not a SCRAM-SHA-256 verifier: {0}")]
    BadVerifier(String),
    #[error("no randomness from the operating system: {0}")]
    Random(String),
}

/// What the server keeps of a password: never the password itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verifier {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut m =
        <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length");
    m.update(data);
    m.finalize().into_bytes().into()
}

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

fn random_bytes(n: usize) -> Result<Vec<u8>, ScramError> {
    let mut b = vec![0u8; n];
    getrandom::getrandom(&mut b).map_err(|e| ScramError::Random(e.to_string()))?;
    Ok(b)
}

/// The password as SCRAM hashes it: SASLprep'd when that succeeds, the raw bytes otherwise
/// (what Postgres and libpq do, so any password they accept works).
fn normalize(password: &str) -> Vec<u8> {
    match stringprep::saslprep(password) {
        Ok(p) => p.into_owned().into_bytes(),
        Err(_) => password.as_bytes().to_vec(),
    }
}

impl Verifier {
    /// A verifier of `password` with a new random salt and [`ITERATIONS`].
    pub fn new(password: &str) -> Result<Verifier, ScramError> {
        Ok(Verifier::with_salt(
            password,
            &random_bytes(SALT_LEN)?,
            ITERATIONS,
        ))
    }

    pub fn with_salt(password: &str, salt: &[u8], iterations: u32) -> Verifier {
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(&normalize(password), salt, iterations, &mut salted);
        let client_key = hmac(&salted, b"Client Key");
        Verifier {
            iterations,
            salt: salt.to_vec(),
            stored_key: sha256(&client_key),
            server_key: hmac(&salted, b"Server Key"),
        }
    }

    /// A verifier nobody can pass (random keys): an unknown role goes through the same
    /// exchange as a known one and fails at the same step.
    pub fn impossible() -> Result<Verifier, ScramError> {
        let salt = random_bytes(SALT_LEN)?;
        let keys = random_bytes(64)?;
        let mut stored_key = [0u8; 32];
        let mut server_key = [0u8; 32];
        stored_key.copy_from_slice(&keys[..32]);
        server_key.copy_from_slice(&keys[32..]);
        Ok(Verifier {
            iterations: ITERATIONS,
            salt,
            stored_key,
            server_key,
        })
    }

    /// Parses Postgres's text form.
    pub fn parse(s: &str) -> Result<Verifier, ScramError> {
        let bad = |why: &str| ScramError::BadVerifier(why.to_string());
        let rest = s
            .strip_prefix("SCRAM-SHA-256$")
            .ok_or_else(|| bad("it does not start with SCRAM-SHA-256$"))?;
        let (params, keys) = rest
            .split_once('$')
            .ok_or_else(|| bad("no '$' before the keys"))?;
        let (iter, salt) = params
            .split_once(':')
            .ok_or_else(|| bad("no ':' between iterations and salt"))?;
        let (stored, server) = keys
            .split_once(':')
            .ok_or_else(|| bad("no ':' between StoredKey and ServerKey"))?;
        let iterations: u32 = iter
            .parse()
            .map_err(|_| bad("the iterations are not a number"))?;
        if iterations == 0 {
            return Err(bad("zero iterations"));
        }
        let key = |k: &str, what: &str| -> Result<[u8; 32], ScramError> {
            let v = B64
                .decode(k)
                .map_err(|_| bad(&format!("{what} is not base64")))?;
            v.try_into()
                .map_err(|_| bad(&format!("{what} is not 32 bytes")))
        };
        Ok(Verifier {
            iterations,
            salt: B64
                .decode(salt)
                .map_err(|_| bad("the salt is not base64"))?,
            stored_key: key(stored, "StoredKey")?,
            server_key: key(server, "ServerKey")?,
        })
    }
}

impl std::fmt::Display for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(self.stored_key),
            B64.encode(self.server_key)
        )
    }
}

/// The server after its first message, waiting for the client's final message.
#[derive(Debug)]
pub struct ServerExchange {
    verifier: Verifier,
    gs2_header: String,
    client_first_bare: String,
    server_first: String,
    nonce: String,
}

/// `attr=value` pairs of a SCRAM message, in order.
fn attributes(msg: &str) -> Result<Vec<(char, &str)>, ScramError> {
    msg.split(',')
        .map(|part| {
            let mut c = part.chars();
            match (c.next(), c.next()) {
                (Some(a), Some('=')) if a.is_ascii_alphabetic() => Ok((a, &part[2..])),
                _ => Err(ScramError::Malformed(format!(
                    "{part:?} is not an attribute"
                ))),
            }
        })
        .collect()
}

impl ServerExchange {
    /// Reads the client's first message and answers with the server's first message.
    pub fn start(
        verifier: Verifier,
        client_first: &[u8],
    ) -> Result<(ServerExchange, String), ScramError> {
        let msg = std::str::from_utf8(client_first)
            .map_err(|_| ScramError::Malformed("not UTF-8".into()))?;
        // gs2-header: cbind-flag "," [authzid] ","
        let (flag, rest) = msg
            .split_once(',')
            .ok_or_else(|| ScramError::Malformed("no GS2 header".into()))?;
        match flag {
            // "y": the client could bind but thinks the server cannot — true here.
            "n" | "y" => {}
            f if f.starts_with("p=") => return Err(ScramError::ChannelBinding),
            f => return Err(ScramError::Malformed(format!("channel binding flag {f:?}"))),
        }
        let (authzid, bare) = rest
            .split_once(',')
            .ok_or_else(|| ScramError::Malformed("no end of the GS2 header".into()))?;
        if !authzid.is_empty() {
            return Err(ScramError::Malformed(
                "an authorization identity is not supported".into(),
            ));
        }
        let attrs = attributes(bare)?;
        let client_nonce = match attrs.as_slice() {
            [('n', _), ('r', nonce), ..] => *nonce,
            [('m', _), ..] => {
                return Err(ScramError::Malformed(
                    "mandatory extensions are not supported".into(),
                ))
            }
            _ => return Err(ScramError::Malformed("expected n=…,r=…".into())),
        };
        if client_nonce.is_empty() || !client_nonce.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
            return Err(ScramError::Malformed(
                "the client nonce is not printable".into(),
            ));
        }
        let nonce = format!("{client_nonce}{}", B64.encode(random_bytes(NONCE_LEN)?));
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&verifier.salt),
            verifier.iterations
        );
        Ok((
            ServerExchange {
                verifier,
                gs2_header: format!("{flag},{authzid},"),
                client_first_bare: bare.to_string(),
                server_first: server_first.clone(),
                nonce,
            },
            server_first,
        ))
    }

    /// Checks the client's final message; the server's final message if the proof is right.
    pub fn finish(self, client_final: &[u8]) -> Result<String, ScramError> {
        let msg = std::str::from_utf8(client_final)
            .map_err(|_| ScramError::Malformed("not UTF-8".into()))?;
        let (without_proof, proof) = msg
            .rsplit_once(",p=")
            .ok_or_else(|| ScramError::Malformed("no proof".into()))?;
        let attrs = attributes(without_proof)?;
        let (binding, nonce) = match attrs.as_slice() {
            [('c', c), ('r', r), ..] => (*c, *r),
            _ => return Err(ScramError::Malformed("expected c=…,r=…".into())),
        };
        let binding = B64
            .decode(binding)
            .map_err(|_| ScramError::Malformed("channel binding is not base64".into()))?;
        if binding != self.gs2_header.as_bytes() {
            return Err(ScramError::Malformed(
                "the channel binding does not repeat the GS2 header".into(),
            ));
        }
        if nonce != self.nonce {
            return Err(ScramError::Malformed(
                "the nonce is not the server's".into(),
            ));
        }
        let proof = B64
            .decode(proof)
            .map_err(|_| ScramError::Malformed("the proof is not base64".into()))?;
        if proof.len() != 32 {
            return Err(ScramError::Malformed("the proof is not 32 bytes".into()));
        }
        let auth_message = format!(
            "{},{},{without_proof}",
            self.client_first_bare, self.server_first
        );
        let client_signature = hmac(&self.verifier.stored_key, auth_message.as_bytes());
        let client_key: Vec<u8> = proof
            .iter()
            .zip(client_signature)
            .map(|(p, s)| p ^ s)
            .collect();
        if !bool::from(sha256(&client_key).ct_eq(&self.verifier.stored_key)) {
            return Err(ScramError::WrongProof);
        }
        let server_signature = hmac(&self.verifier.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    /// RFC 7677's example: user "user", password "pencil".
    #[test]
    fn the_rfc_7677_example_passes() {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let v = Verifier::with_salt("pencil", &salt, 4096);
        let exchange = ServerExchange {
            verifier: v,
            gs2_header: "n,,".into(),
            client_first_bare: "n=user,r=rOprNGfwEbeRWgbNEkqO".into(),
            server_first: "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                           s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
                .into(),
            nonce: "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0".into(),
        };
        let fin = exchange
            .finish(
                b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                  p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
            )
            .unwrap();
        assert_eq!(fin, "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
    }

    /// Runs the exchange against postgres-protocol's client (what tokio-postgres uses).
    fn exchange(verifier: Verifier, password: &str) -> Result<(), ScramError> {
        let mut client = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
        let (server, first) = ServerExchange::start(verifier, client.message())?;
        client.update(first.as_bytes()).unwrap();
        let fin = server.finish(client.message())?;
        client
            .finish(fin.as_bytes())
            .map_err(|e| ScramError::Malformed(format!("the client refused: {e}")))
    }

    #[test]
    fn a_client_with_the_password_passes_and_others_do_not() {
        let v = Verifier::new("s3cret ünï").unwrap();
        let text = v.to_string();
        assert!(text.starts_with("SCRAM-SHA-256$4096:"), "{text}");
        let v = Verifier::parse(&text).unwrap();
        exchange(v.clone(), "s3cret ünï").unwrap();
        assert_eq!(exchange(v, "s3cret"), Err(ScramError::WrongProof));
        assert_eq!(
            exchange(Verifier::impossible().unwrap(), ""),
            Err(ScramError::WrongProof)
        );
    }

    #[test]
    fn malformed_messages_and_verifiers_are_errors() {
        let v = Verifier::new("x").unwrap();
        for bad in [
            &b""[..],
            b"n,,",
            b"p=tls-server-end-point,,n=,r=abc",
            b"n,a=admin,n=,r=abc",
            b"n,,m=ext,n=,r=abc",
            b"n,,n=,r=",
            b"\xff",
        ] {
            assert!(ServerExchange::start(v.clone(), bad).is_err(), "{bad:?}");
        }
        let (s, first) = ServerExchange::start(v.clone(), b"n,,n=,r=abc").unwrap();
        assert!(first.starts_with("r=abc"));
        assert!(s.finish(b"c=biws,r=other,p=AAAA").is_err());
        for bad in [
            "",
            "SCRAM-SHA-256$0:AA==$AA==:AA==",
            "SCRAM-SHA-256$4096:AA==$AA==:AA==",
            "md5abc",
        ] {
            assert!(Verifier::parse(bad).is_err(), "{bad}");
        }
    }
}

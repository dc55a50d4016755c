//! The Ed25519 key pair, as PEM files `openssl pkey` reads: the private key in PKCS#8, the
//! public key in SubjectPublicKeyInfo.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{Ed25519KeyPair, KeyPair};

use crate::AuthError;

/// The private key's file name in the key directory: only the token issuer reads it.
pub const PRIVATE_KEY_FILE: &str = "private_key.pem";
/// The public key's file name in the key directory: what the services verify with.
pub const PUBLIC_KEY_FILE: &str = "public_key.pem";

/// PKCS#8 v1 (RFC 8410) of an Ed25519 private key: this prefix, then the 32-byte seed.
const PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
/// SubjectPublicKeyInfo of an Ed25519 public key: this prefix, then the 32-byte key.
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// Makes a new key pair in `dir`: `private_key.pem` (mode 0600) and `public_key.pem`, both
/// fsynced, and the directory too. Refuses to replace an existing private key: every token
/// signed with it would stop working.
pub fn generate_key_pair(dir: &Path) -> Result<(), AuthError> {
    let private_path = dir.join(PRIVATE_KEY_FILE);
    if private_path.exists() {
        return Err(AuthError::KeyExists { path: private_path });
    }
    let mut seed = [0u8; 32];
    SystemRandom::new()
        .fill(&mut seed)
        .map_err(|_| AuthError::KeyGeneration("the system's random source failed".into()))?;
    let pair = Ed25519KeyPair::from_seed_unchecked(&seed)
        .map_err(|e| AuthError::KeyGeneration(e.to_string()))?;
    let public_der = [&SPKI_PREFIX[..], pair.public_key().as_ref()].concat();
    let private_der = [&PKCS8_PREFIX[..], &seed[..]].concat();
    write_synced(
        &dir.join(PUBLIC_KEY_FILE),
        &pem("PUBLIC KEY", &public_der),
        false,
    )?;
    write_synced(&private_path, &pem("PRIVATE KEY", &private_der), true)?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("syncing the key directory", dir.to_path_buf()))
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    // Base64 is ASCII: 64-byte chunks are whole characters.
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Writes `text` to a new file (`private`: mode 0600, never replacing one) and fsyncs it.
pub(crate) fn write_synced(path: &Path, text: &str, private: bool) -> Result<(), AuthError> {
    let mut opts = OpenOptions::new();
    opts.write(true);
    if private {
        opts.create_new(true).mode(0o600);
    } else {
        opts.create(true).truncate(true).mode(0o644);
    }
    let mut f = opts
        .open(path)
        .map_err(io("creating", path.to_path_buf()))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io("writing", path.to_path_buf()))
}

pub(crate) fn io(what: &'static str, path: PathBuf) -> impl FnOnce(std::io::Error) -> AuthError {
    move |source| AuthError::Io { what, path, source }
}

/// The file's bytes, for a key loader.
pub(crate) fn read_key(path: &Path) -> Result<Vec<u8>, AuthError> {
    std::fs::read(path).map_err(io("reading the key", path.to_path_buf()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn key_files_are_pem_the_private_one_0600_and_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        generate_key_pair(dir.path()).unwrap();
        let private = dir.path().join(PRIVATE_KEY_FILE);
        let text = std::fs::read_to_string(&private).unwrap();
        assert!(text.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{text}");
        let mode = std::fs::metadata(&private).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let public = std::fs::read_to_string(dir.path().join(PUBLIC_KEY_FILE)).unwrap();
        assert!(
            public.starts_with("-----BEGIN PUBLIC KEY-----\n"),
            "{public}"
        );
        let again = generate_key_pair(dir.path()).unwrap_err();
        assert!(matches!(again, AuthError::KeyExists { .. }), "{again}");
        assert_eq!(std::fs::read_to_string(&private).unwrap(), text);
    }
}

//! The cluster's TLS certificates (`rcgen`): a CA made once, at `strata init`, and one
//! certificate per service signed by it, as PEM files. Private keys are mode 0600, every file
//! is fsynced. The CA's own key is never written: no certificate can be added later, so a
//! stolen cluster directory cannot mint one either (a new CA means `strata init` anew).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::keys::write_synced;
use crate::tls::TlsError;

/// The CA certificate's file name: what every client of the cluster trusts.
pub const CA_CERT_FILE: &str = "ca.pem";

/// A CA that signs the services' certificates while it lives.
pub struct ClusterCa {
    issuer: Issuer<'static, KeyPair>,
}

fn generation(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> TlsError {
    let what = what.into();
    move |e| TlsError::Generation {
        what,
        reason: e.to_string(),
    }
}

impl ClusterCa {
    /// A new CA named `name`; its certificate is written to `dir/ca.pem`.
    pub fn create(dir: &Path, name: &str) -> Result<ClusterCa, TlsError> {
        let key = KeyPair::generate().map_err(generation("the CA's key"))?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params
            .self_signed(&key)
            .map_err(generation("the CA certificate"))?;
        write_synced(&dir.join(CA_CERT_FILE), &cert.pem(), false)?;
        Ok(ClusterCa {
            issuer: Issuer::new(params, key),
        })
    }

    /// A server certificate for `name` valid for `hosts` (IP addresses or DNS names), signed
    /// by this CA: `dir/<name>.pem` and `dir/<name>.key` (0600, never replacing one). Returns
    /// both paths.
    pub fn issue(
        &self,
        dir: &Path,
        name: &str,
        hosts: &[String],
    ) -> Result<(PathBuf, PathBuf), TlsError> {
        let what = format!("the certificate of {name}");
        let key = KeyPair::generate().map_err(generation(what.clone()))?;
        let mut params = CertificateParams::new(hosts.to_vec()).map_err(generation(&what))?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(generation(what))?;
        let cert_path = dir.join(format!("{name}.pem"));
        let key_path = dir.join(format!("{name}.key"));
        write_synced(&key_path, &key.serialize_pem(), true)?;
        write_synced(&cert_path, &cert.pem(), false)?;
        Ok((cert_path, key_path))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::tls::{server_tls, ClientTls};

    #[test]
    fn a_ca_and_a_service_certificate_load_as_server_and_client_tls() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::create(dir.path(), "test CA").unwrap();
        let (cert, key) = ca
            .issue(
                dir.path(),
                "pageserver",
                &["127.0.0.1".into(), "localhost".into()],
            )
            .unwrap();
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the key is private");
        assert!(server_tls(Some(&cert), Some(&key)).unwrap().is_some());
        ClientTls::from_ca_file(&dir.path().join(CA_CERT_FILE)).unwrap();
        let again = ca.issue(dir.path(), "pageserver", &["127.0.0.1".into()]);
        assert!(again.is_err(), "a key was replaced");
    }
}

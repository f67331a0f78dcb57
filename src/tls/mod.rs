//! TLS material: labgate's own HTTPS listener ([`listener`]) and TLS to upstreams
//! ([`upstream`]).
//!
//! Owns reading and checking every PEM file (certificates, keys, CRLs) before pingora sees
//! it: pingora 0.9.1's rustls code panics on a malformed client key or CA certificate,
//! and a problem found at start-up (or by `labgate check`) is one clear line instead of a
//! crashed request. Must never decide who may use the lab (that is [`crate::identity`] and
//! the gate), and never log key material.

pub mod listener;
pub mod upstream;

use std::io::BufReader;
use std::path::Path;

use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use x509_parser::prelude::{FromDer, X509Certificate};

/// Largest PEM file read: certificates, keys and CRLs of a lab are far smaller, and a
/// path pointing at something huge must not exhaust memory.
const MAX_PEM_BYTES: u64 = 4 * 1024 * 1024;

fn read_pem(path: &Path) -> Result<Vec<u8>, String> {
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if meta.len() > MAX_PEM_BYTES {
        return Err(format!(
            "{} is larger than {MAX_PEM_BYTES} bytes: not a PEM file",
            path.display()
        ));
    }
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// Every certificate in a PEM file: at least one, each a parseable X.509 certificate.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = read_pem(path)?;
    let certs = rustls_pemfile::certs(&mut BufReader::new(bytes.as_slice()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in the file", path.display()));
    }
    for (i, cert) in certs.iter().enumerate() {
        X509Certificate::from_der(cert.as_ref()).map_err(|e| {
            format!(
                "{}: certificate {} cannot be parsed: {e}",
                path.display(),
                i + 1
            )
        })?;
    }
    Ok(certs)
}

/// The one private key in a PEM file (PKCS#8, PKCS#1 or SEC1). Refuses a key file that
/// every local user can read: a TLS key is a secret.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o004 != 0 {
        return Err(format!(
            "{} is readable by every user (mode {:o}): a private key must not be; chmod o-rwx",
            path.display(),
            mode & 0o777
        ));
    }
    let bytes = read_pem(path)?;
    rustls_pemfile::private_key(&mut BufReader::new(bytes.as_slice()))
        .map_err(|e| format!("{}: not a PEM key file: {e}", path.display()))?
        .ok_or_else(|| format!("{}: no private key in the file", path.display()))
}

/// Every CRL in a PEM file: at least one.
pub fn read_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    let bytes = read_pem(path)?;
    let crls = rustls_pemfile::crls(&mut BufReader::new(bytes.as_slice()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not a PEM CRL file: {e}", path.display()))?;
    if crls.is_empty() {
        return Err(format!(
            "{}: no certificate revocation list in the file",
            path.display()
        ));
    }
    Ok(crls)
}

/// The process-wide crypto provider (ring, as pingora's rustls backend uses).
fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}

/// Checks that `key` is the private key of the first certificate of `chain`.
fn check_pair(
    chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
    cert_path: &Path,
    key_path: &Path,
) -> Result<std::sync::Arc<rustls::sign::CertifiedKey>, String> {
    rustls::sign::CertifiedKey::from_der(chain.to_vec(), key.clone_key(), &provider())
        .map(std::sync::Arc::new)
        .map_err(|e| {
            format!(
                "{} does not go with {}: {e}",
                key_path.display(),
                cert_path.display()
            )
        })
}

//! TLS to labgate for the client (`https://` in `LAB_URL`/`--url`): whom to trust, for
//! the session API (reqwest) and for tunnels (the WebSocket upgrade) alike.
//!
//! Trust is the system's CA store (as curl and pingora's connector use it), or exactly
//! the CA in `--ca FILE` / `LAB_CA` for a labgate with a certificate from a private CA.
//! Owns building that rustls config. Must never skip verification: a client that
//! cannot check labgate's certificate would hand its session id to whoever answers.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};

/// Whom an `https://` labgate URL must prove itself to.
#[derive(Clone, Debug, Default)]
pub struct Trust {
    /// A PEM CA file; `None`: the system's CA store.
    ca: Option<PathBuf>,
}

impl Trust {
    pub fn new(ca: Option<PathBuf>) -> Trust {
        Trust { ca }
    }

    /// The CA file, when one was given (exported to CMD as `LAB_CA` by `labgate run`).
    pub fn ca(&self) -> Option<&Path> {
        self.ca.as_deref()
    }

    /// The rustls config for an `https://` labgate, HTTP/1.1 by ALPN (a tunnel is an
    /// HTTP/1.1 upgrade; the session API needs nothing more).
    pub fn config(&self) -> Result<Arc<ClientConfig>, String> {
        let mut roots = RootCertStore::empty();
        match &self.ca {
            Some(path) => {
                // Every certificate parsed, and each one usable as a trust anchor.
                let certs = crate::tls::read_certs(path).map_err(|e| format!("--ca: {e}"))?;
                for (i, c) in certs.into_iter().enumerate() {
                    roots.add(c).map_err(|e| {
                        format!(
                            "--ca: {}: certificate {} is not usable as a CA: {e}",
                            path.display(),
                            i + 1
                        )
                    })?;
                }
            }
            None => {
                let native = rustls_native_certs::load_native_certs()
                    .map_err(|e| format!("cannot load the system's CA certificates: {e}"))?;
                roots.add_parsable_certificates(native);
                if roots.is_empty() {
                    return Err("no CA certificates in the system's store: pass --ca FILE \
                                or set LAB_CA"
                        .to_string());
                }
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// The name labgate's certificate must carry: the URL's host (a DNS name or an IP
/// address, checked against the certificate's SANs).
pub fn server_name(url: &reqwest::Url) -> Result<ServerName<'static>, String> {
    let host = url.host_str().ok_or_else(|| format!("{url}: no host"))?;
    // `host_str` keeps an IPv6 address's brackets.
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<std::net::IpAddr>() {
        return Ok(ServerName::IpAddress(ip.into()));
    }
    ServerName::try_from(host.to_string())
        .map_err(|_| format!("{url}: {host:?} is not a valid TLS server name"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_bad_ca_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = Trust::new(Some(dir.path().join("nope.pem")));
        let e = missing.config().unwrap_err();
        assert!(e.contains("--ca") && e.contains("nope.pem"), "{e}");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let e = Trust::new(Some(junk)).config().unwrap_err();
        assert!(e.contains("no certificate"), "{e}");
    }

    #[test]
    fn the_server_name_is_the_url_host() {
        let n = |u: &str| server_name(&reqwest::Url::parse(u).unwrap()).unwrap();
        assert_eq!(
            n("https://gw.lab:8443/x"),
            ServerName::try_from("gw.lab").unwrap()
        );
        assert!(matches!(n("https://127.0.0.1"), ServerName::IpAddress(_)));
        assert!(matches!(n("https://[::1]:8443"), ServerName::IpAddress(_)));
    }
}

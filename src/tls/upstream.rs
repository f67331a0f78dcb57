//! TLS to an upstream (`[upstream.tls]`): the name checked and sent as SNI, the CA that
//! signs the device's certificate, a client certificate for mTLS to a lab manager, an
//! explicit and loud skip-verify for self-signed lab gear, and HTTP/2 offered by ALPN.
//!
//! Owns turning the raw table into checked material and applying it to a pingora
//! `HttpPeer`, and the same settings as a rustls client config for the connections
//! labgate opens itself (WebSocket upgrades, `crate::splice::upstream`). Must never hand
//! pingora unparsed material (its rustls connector panics on a malformed key or CA
//! certificate), and never skip verification unless the operator wrote
//! `insecure_skip_verify = true`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use pingora::protocols::ALPN;
use pingora::upstreams::peer::HttpPeer;
use pingora::utils::tls::{parse_x509, CertKey, WrappedX509};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde::Deserialize;
use toml::Spanned;

/// How many concurrent HTTP/2 streams labgate opens on one upstream connection.
const MAX_H2_STREAMS: usize = 100;

/// `[upstream.tls]` as written.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamTls {
    /// The name sent as SNI and checked against the certificate; default: the host of
    /// `address` (an IP address is checked against the certificate's IP SANs).
    pub sni: Option<Spanned<String>>,
    /// PEM CA file; default: the system's roots.
    pub ca: Option<Spanned<String>>,
    /// PEM client certificate (chain) and key, for an upstream that requires mTLS.
    pub client_cert: Option<Spanned<String>>,
    pub client_key: Option<Spanned<String>>,
    /// Accept any certificate. Only for self-signed lab gear on a trusted network.
    pub insecure_skip_verify: Option<Spanned<bool>>,
    /// Offer HTTP/2 by ALPN (the upstream picks); default true.
    pub http2: Option<bool>,
}

/// A problem in the table, with the span of the offending value when there is one.
pub type Problem = (Option<std::ops::Range<usize>>, String);

/// `[upstream.tls]`, checked.
#[derive(Clone)]
pub struct UpstreamTls {
    pub sni: String,
    pub ca: Option<Arc<[WrappedX509]>>,
    pub ca_path: Option<PathBuf>,
    pub client: Option<Arc<CertKey>>,
    pub client_cert_path: Option<PathBuf>,
    pub verify: bool,
    pub http2: bool,
    /// The same settings for labgate's own connections (HTTP/1.1 only: upgrades).
    pub splice: Arc<ClientConfig>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("sni", &self.sni)
            .field("ca", &self.ca_path)
            .field("client_cert", &self.client_cert_path)
            .field("verify", &self.verify)
            .field("http2", &self.http2)
            .finish()
    }
}

fn span_of<T>(s: &Spanned<T>) -> Option<std::ops::Range<usize>> {
    let span = s.span();
    (!span.is_empty()).then_some(span)
}

/// The host part of `host:port` or `[v6]:port`.
pub fn host_of(authority: &str) -> &str {
    let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

impl RawUpstreamTls {
    /// Checks the table and reads every file it names; `authority` is the upstream's
    /// `address`, whose host is the default SNI.
    pub fn resolve(self, authority: &str) -> Result<UpstreamTls, Problem> {
        let verify = !self
            .insecure_skip_verify
            .as_ref()
            .is_some_and(|s| *s.get_ref());
        let sni = match &self.sni {
            Some(s) => {
                let name = s.get_ref();
                if rustls::pki_types::ServerName::try_from(name.as_str()).is_err() {
                    return Err((
                        span_of(s),
                        format!("tls.sni {name:?} is not a DNS name or IP address"),
                    ));
                }
                name.clone()
            }
            None => host_of(authority).to_string(),
        };
        if sni.is_empty() {
            // pingora's rustls connector silently skips verification without SNI.
            return Err((None, "tls.sni must not be empty".into()));
        }
        let (ca, ca_path) = match &self.ca {
            Some(path) => {
                let p = PathBuf::from(path.get_ref());
                (Some(read_ca(&p).map_err(|m| (span_of(path), m))?), Some(p))
            }
            None => (None, None),
        };
        let ca_der: Option<Vec<CertificateDer<'static>>> =
            ca.as_ref().map(|(_, der)| der.clone()).filter(|_| verify);
        let ca = ca.map(|(wrapped, _)| wrapped);
        if !verify && ca.is_some() {
            return Err((
                self.insecure_skip_verify.as_ref().and_then(span_of),
                "tls.insecure_skip_verify = true makes tls.ca useless: use one or the other".into(),
            ));
        }
        let mut client_der = None;
        let (client, client_cert_path) = match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => {
                let cp = PathBuf::from(cert.get_ref());
                let kp = PathBuf::from(key.get_ref());
                let (ck, der) = read_client(&cp, &kp).map_err(|m| (span_of(cert), m))?;
                client_der = Some(der);
                (Some(Arc::new(ck)), Some(cp))
            }
            (None, None) => (None, None),
            (Some(s), None) | (None, Some(s)) => {
                return Err((
                    span_of(s),
                    "tls.client_cert and tls.client_key go together: give both or neither".into(),
                ))
            }
        };
        let splice = splice_config(verify, ca_der, client_der).map_err(|m| (None, m))?;
        Ok(UpstreamTls {
            sni,
            ca,
            ca_path,
            client,
            client_cert_path,
            verify,
            http2: self.http2.unwrap_or(true),
            splice,
        })
    }
}

/// A client certificate chain and its key, as rustls takes them.
type ClientDer = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// The rustls config of labgate's own upstream connections: the same trust (the CA
/// file, else the system's roots like pingora's connector), the same client
/// certificate, the same skip-verify, and HTTP/1.1 by ALPN.
fn splice_config(
    verify: bool,
    ca: Option<Vec<CertificateDer<'static>>>,
    client: Option<ClientDer>,
) -> Result<Arc<ClientConfig>, String> {
    let builder = ClientConfig::builder_with_provider(super::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?;
    let builder = if verify {
        let mut roots = RootCertStore::empty();
        match ca {
            Some(certs) => {
                // Checked one by one in `read_ca`.
                roots.add_parsable_certificates(certs);
            }
            None => {
                let native = rustls_native_certs::load_native_certs();
                if let Err(e) = &native {
                    tracing::warn!(error = %e, "cannot load the system's CA certificates");
                }
                roots.add_parsable_certificates(native.unwrap_or_default());
            }
        }
        builder.with_root_certificates(roots)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(super::provider())))
    };
    let mut config = match client {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| format!("TLS client certificate: {e}"))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// `insecure_skip_verify = true`: any certificate, any name (what pingora's connector
/// does with `verify_cert = false`). The handshake's signatures are still checked, so
/// the peer holds the key of the certificate it showed. rustls has no such verifier of
/// its own on purpose; this is the whole of it.
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The CA file for pingora (wrapped) and for rustls (DER).
type Ca = (Arc<[WrappedX509]>, Vec<CertificateDer<'static>>);

fn read_ca(path: &Path) -> Result<Ca, String> {
    let certs = super::read_certs(path)?;
    // The same check the connector makes per connection, made once here.
    let mut store = RootCertStore::empty();
    for (i, c) in certs.iter().enumerate() {
        store.add(c.clone()).map_err(|e| {
            format!(
                "{}: certificate {} is not usable as a CA: {e}",
                path.display(),
                i + 1
            )
        })?;
    }
    // parse_x509 cannot panic here: read_certs parsed every certificate.
    let wrapped: Vec<WrappedX509> = certs
        .iter()
        .map(|c| WrappedX509::new(c.to_vec(), parse_x509))
        .collect();
    Ok((Arc::from(wrapped), certs))
}

fn read_client(cert: &Path, key: &Path) -> Result<(CertKey, ClientDer), String> {
    let chain = super::read_certs(cert)?;
    let key_der = super::read_key(key)?;
    super::check_pair(&chain, &key_der, cert, key)?;
    // The connector turns these bytes back into a key with `PrivateKeyDer::try_from` and
    // unwraps: make sure that works now.
    let raw_key = key_der.secret_der().to_vec();
    rustls::pki_types::PrivateKeyDer::try_from(raw_key.clone())
        .map_err(|e| format!("{}: unsupported key encoding: {e}", key.display()))?;
    let pingora_key = CertKey::new(chain.iter().map(|c| c.to_vec()).collect(), raw_key);
    Ok((pingora_key, (chain, key_der)))
}

impl UpstreamTls {
    /// A fresh peer for this upstream at `addr`, TLS set up. `upgrade` requests are held
    /// to HTTP/1.1: an upgrade cannot ride an HTTP/2 stream.
    pub fn peer(&self, addr: std::net::SocketAddr, upgrade: bool) -> HttpPeer {
        let mut peer = HttpPeer::new(addr, true, self.sni.clone());
        peer.options.verify_cert = self.verify;
        peer.options.verify_hostname = self.verify;
        peer.options.ca = self.ca.clone();
        peer.client_cert_key = self.client.clone();
        if self.http2 && !upgrade {
            peer.options.alpn = ALPN::H2H1;
            peer.options.max_h2_streams = MAX_H2_STREAMS;
        } else {
            peer.options.alpn = ALPN::H1;
        }
        peer
    }

    /// The name labgate's own connections send as SNI and check the certificate against.
    pub fn server_name(&self) -> Result<ServerName<'static>, String> {
        ServerName::try_from(self.sni.clone())
            .map_err(|_| format!("tls.sni {:?} is not a DNS name or IP address", self.sni))
    }

    /// Lines `labgate check` and start-up print loudly.
    pub fn warnings(&self, upstream: &str) -> Vec<String> {
        let mut w = Vec::new();
        if !self.verify {
            w.push(format!(
                "WARNING: upstream {upstream:?}: tls.insecure_skip_verify = true: its \
                 certificate is NOT checked; anyone on the path can impersonate it"
            ));
        }
        w
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_is_taken_from_the_address() {
        assert_eq!(host_of("r1.lab:443"), "r1.lab");
        assert_eq!(host_of("10.0.0.1:8443"), "10.0.0.1");
        assert_eq!(host_of("[::1]:443"), "::1");
    }

    #[test]
    fn skip_verify_is_explicit_and_exclusive_with_a_ca() {
        let raw: RawUpstreamTls = toml::from_str("insecure_skip_verify = true").unwrap();
        let tls = raw.resolve("10.0.0.1:443").unwrap();
        assert!(!tls.verify);
        assert_eq!(tls.warnings("r1").len(), 1);
        let raw: RawUpstreamTls = toml::from_str("").unwrap();
        let tls = raw.resolve("10.0.0.1:443").unwrap();
        assert!(tls.verify && tls.http2);
        assert_eq!(tls.sni, "10.0.0.1");
        assert!(tls.warnings("r1").is_empty());
        let raw: RawUpstreamTls =
            toml::from_str("insecure_skip_verify = true\nca = \"/nonexistent\"").unwrap();
        assert!(raw.resolve("h:1").is_err());
    }

    #[test]
    fn client_cert_and_key_go_together() {
        let raw: RawUpstreamTls = toml::from_str("client_cert = \"/x\"").unwrap();
        let (_, msg) = raw.resolve("h:1").unwrap_err();
        assert!(msg.contains("go together"), "{msg}");
    }

    #[test]
    fn bad_sni_is_refused() {
        let raw: RawUpstreamTls = toml::from_str("sni = \"not a name\"").unwrap();
        assert!(raw.resolve("h:1").is_err());
    }

    #[test]
    fn upgrade_requests_stay_on_http1() {
        let raw: RawUpstreamTls = toml::from_str("sni = \"r1.lab\"").unwrap();
        let tls = raw.resolve("h:1").unwrap();
        let addr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(tls.peer(addr, false).options.alpn, ALPN::H2H1);
        assert_eq!(tls.peer(addr, true).options.alpn, ALPN::H1);
        assert_eq!(tls.peer(addr, false).sni, "r1.lab");
    }
}

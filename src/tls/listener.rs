//! labgate's own HTTPS listener: the server certificate and key, and in `mtls` identity
//! mode the client CA (plus an optional CRL) every client certificate must chain to.
//!
//! Owns loading that material, swapping it in on SIGHUP ([`ListenerTls::reload`]: new
//! handshakes use the new files, a reload that fails keeps the old ones), and reading the
//! client's identity once per connection. Must never accept a client certificate it could
//! not name an identity from: the handshake fails instead, so a connection that reaches
//! the HTTP layer in `mtls` mode always carries an [`Identity`].

use std::any::Any;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::TlsAccept;
use pingora::protocols::tls::TlsRef;
use pingora::protocols::Digest;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore};

use crate::identity::{self, CertField, Identity};

/// `[server.tls]`, validated: where the listener's certificate and key are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTlsConfig {
    /// PEM: the server certificate, then its intermediates.
    pub cert: PathBuf,
    /// PEM private key; refused when world-readable.
    pub key: PathBuf,
}

/// `mtls` identity mode: which clients the listener accepts and how they are named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAuthConfig {
    /// PEM: the CA (or CAs) client certificates must chain to.
    pub ca: PathBuf,
    /// PEM CRLs from that CA; a revoked client certificate fails the handshake.
    pub crl: Option<PathBuf>,
    /// Which certificate field is the identity.
    pub field: CertField,
}

/// What one load of the files produced.
struct Material {
    key: Arc<CertifiedKey>,
    verifier: Option<Arc<dyn ClientCertVerifier>>,
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("Material")
            .field("client_auth", &self.verifier.is_some())
            .finish_non_exhaustive()
    }
}

/// The listener's TLS material, shared by the certificate resolver, the client
/// verifier and the SIGHUP handler.
#[derive(Debug)]
pub struct ListenerTls {
    server: ServerTlsConfig,
    client: Option<ClientAuthConfig>,
    current: RwLock<Arc<Material>>,
}

impl ListenerTls {
    /// Reads and checks every file: the certificate chain, the key (and that it is the
    /// certificate's), the client CA and CRL. What `labgate check` and start-up run.
    pub fn load(
        server: ServerTlsConfig,
        client: Option<ClientAuthConfig>,
    ) -> Result<Arc<ListenerTls>, String> {
        let material = load_material(&server, client.as_ref())?;
        Ok(Arc::new(ListenerTls {
            server,
            client,
            current: RwLock::new(Arc::new(material)),
        }))
    }

    /// Re-reads the files; on any problem keeps serving with what it had and says why.
    pub fn reload(&self) -> Result<(), String> {
        let material = load_material(&self.server, self.client.as_ref())?;
        // A poisoned lock only means a panic elsewhere while swapping an Arc; the
        // value inside is still a complete Material.
        let mut slot = self.current.write().unwrap_or_else(|e| e.into_inner());
        *slot = Arc::new(material);
        Ok(())
    }

    fn material(&self) -> Arc<Material> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// pingora listener settings: TLS 1.2 and 1.3 (rustls offers nothing older), HTTP/1.1
    /// only (no ALPN h2: WebSocket upgrades to `/lab` need HTTP/1.1), this certificate,
    /// and in `mtls` mode a client certificate required and verified.
    pub fn settings(self: &Arc<Self>) -> TlsSettings {
        let callbacks: Box<dyn TlsAccept + Send + Sync> = Box::new(IdentityCallback {
            field: self.client.as_ref().map(|c| c.field),
        });
        // `with_callbacks` cannot fail (it returns Result for the other backends' sake).
        let mut settings = match TlsSettings::with_callbacks(callbacks) {
            Ok(s) => s,
            Err(e) => unreachable_settings(e),
        };
        settings.set_cert_resolver(Arc::new(Resolver(self.clone())));
        if let Some(client) = &self.client {
            settings.set_client_cert_verifier(Arc::new(Verifier {
                tls: self.clone(),
                field: client.field,
            }));
        }
        settings
    }
}

#[cold]
fn unreachable_settings(e: Box<pingora::Error>) -> TlsSettings {
    // pingora 0.9.1's rustls `with_callbacks` always returns Ok; if a later version
    // fails here, refusing to start is the only safe answer.
    tracing::error!(error = %e, "cannot create TLS settings");
    std::process::exit(1)
}

fn load_material(
    server: &ServerTlsConfig,
    client: Option<&ClientAuthConfig>,
) -> Result<Material, String> {
    let chain = super::read_certs(&server.cert)?;
    let key = super::read_key(&server.key)?;
    let key = super::check_pair(&chain, &key, &server.cert, &server.key)?;
    let verifier = match client {
        Some(c) => Some(client_verifier(c)?),
        None => None,
    };
    Ok(Material { key, verifier })
}

fn client_verifier(c: &ClientAuthConfig) -> Result<Arc<dyn ClientCertVerifier>, String> {
    let mut roots = RootCertStore::empty();
    for (i, cert) in super::read_certs(&c.ca)?.into_iter().enumerate() {
        roots.add(cert).map_err(|e| {
            format!(
                "{}: certificate {} is not usable as a CA: {e}",
                c.ca.display(),
                i + 1
            )
        })?;
    }
    let mut builder =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), super::provider());
    if let Some(crl) = &c.crl {
        // The CA's CRL speaks for the client certificates it issued; intermediates are
        // not expected in a lab's client PKI.
        builder = builder
            .with_crls(super::read_crls(crl)?)
            .only_check_end_entity_revocation();
    }
    builder
        .build()
        .map_err(|e| format!("{}: cannot verify clients with it: {e}", c.ca.display()))
}

/// Serves the current certificate to every handshake.
#[derive(Debug)]
struct Resolver(Arc<ListenerTls>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.material().key.clone())
    }
}

/// Verifies client certificates with the current CA and CRL, and refuses one that does
/// not name exactly one identity: the HTTP layer never sees an anonymous mTLS client.
#[derive(Debug)]
struct Verifier {
    tls: Arc<ListenerTls>,
    field: CertField,
}

impl Verifier {
    fn inner(&self) -> Option<Arc<dyn ClientCertVerifier>> {
        self.tls.material().verifier.clone()
    }
}

impl ClientCertVerifier for Verifier {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // The hints would have to borrow from material a reload may replace; clients
        // (curl, browsers, requests) send their configured certificate without them.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let Some(inner) = self.inner() else {
            return Err(rustls::Error::General("no client CA loaded".into()));
        };
        let verified = inner.verify_client_cert(end_entity, intermediates, now)?;
        identity::from_certificate(end_entity.as_ref(), self.field).map_err(|_| {
            rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
        })?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        match self.inner() {
            Some(inner) => inner.verify_tls12_signature(message, cert, dss),
            None => Err(rustls::Error::General("no client CA loaded".into())),
        }
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        match self.inner() {
            Some(inner) => inner.verify_tls13_signature(message, cert, dss),
            None => Err(rustls::Error::General("no client CA loaded".into())),
        }
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner()
            .map(|inner| inner.supported_verify_schemes())
            .unwrap_or_default()
    }
}

/// After the handshake, reads the verified client certificate's identity once and pins
/// it to the connection (pingora keeps it in the connection's TLS digest).
struct IdentityCallback {
    field: Option<CertField>,
}

#[async_trait]
impl TlsAccept for IdentityCallback {
    async fn handshake_complete_callback(
        &self,
        tls: &TlsRef,
    ) -> Option<Arc<dyn Any + Send + Sync>> {
        let field = self.field?;
        let der = tls.peer_certificate_der()?;
        let id = identity::from_certificate(der, field).ok()?;
        Some(Arc::new(id))
    }
}

/// The identity the listener pinned to this connection, if any.
pub fn connection_identity(digest: Option<&Digest>) -> Option<&Identity> {
    digest?.ssl_digest.as_ref()?.extension.get::<Identity>()
}

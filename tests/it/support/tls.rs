//! Test PKI and TLS servers: a CA made by the test (rcgen), server and client
//! certificates (valid, expired, revoked), and an in-process HTTPS upstream that answers
//! with what it saw (HTTP version, client certificate CN, the identity header).
//!
//! Everything listens on loopback on a port chosen at run time; servers stop when their
//! handle is dropped.

#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams,
    SanType, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;

/// Paths of a certificate (PEM) and its key (PEM, mode 0600).
#[derive(Clone, Debug)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A certificate authority living in a test's temporary directory.
pub struct TestCa {
    pub name: String,
    cert: rcgen::Certificate,
    key: KeyPair,
    pub cert_path: PathBuf,
    dir: PathBuf,
    next_serial: Mutex<u64>,
}

fn write_private(path: &Path, text: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

/// What a leaf certificate is for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    Server,
    Client,
}

/// Its validity: the usual one, or one that ended years ago.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    Current,
    Expired,
}

impl TestCa {
    pub fn new(dir: &Path, name: &str) -> TestCa {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2100, 1, 1);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let cert_path = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        TestCa {
            name: name.to_string(),
            cert,
            key,
            cert_path,
            dir: dir.to_path_buf(),
            next_serial: Mutex::new(1),
        }
    }

    fn serial(&self) -> u64 {
        let mut n = self.next_serial.lock().unwrap();
        *n += 1;
        *n
    }

    /// Issues a leaf certificate named `cn` (also a DNS or IP SAN for servers, an e-mail
    /// SAN `cn@lab.test` for clients) and writes it to `<file>.pem` / `<file>.key`.
    pub fn issue(
        &self,
        file: &str,
        cn: &str,
        usage: Usage,
        validity: Validity,
    ) -> (CertFiles, u64) {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, cn);
        let serial = self.serial();
        params.serial_number = Some(SerialNumber::from(serial));
        match usage {
            Usage::Server => {
                params.subject_alt_names = match cn.parse() {
                    Ok(ip) => vec![SanType::IpAddress(ip)],
                    Err(_) => vec![SanType::DnsName(cn.try_into().unwrap())],
                };
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            }
            Usage::Client => {
                params.subject_alt_names = vec![SanType::Rfc822Name(
                    format!("{cn}@lab.test").try_into().unwrap(),
                )];
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            }
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        (params.not_before, params.not_after) = match validity {
            Validity::Current => (
                rcgen::date_time_ymd(2020, 1, 1),
                rcgen::date_time_ymd(2099, 1, 1),
            ),
            Validity::Expired => (
                rcgen::date_time_ymd(2020, 1, 1),
                rcgen::date_time_ymd(2021, 1, 1),
            ),
        };
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let files = CertFiles {
            cert: self.dir.join(format!("{file}.pem")),
            key: self.dir.join(format!("{file}.key")),
        };
        std::fs::write(&files.cert, cert.pem()).unwrap();
        write_private(&files.key, &key.serialize_pem());
        (files, serial)
    }

    /// A CRL revoking `serials`, written to `<name>-crl.pem`.
    pub fn crl(&self, serials: &[u64]) -> PathBuf {
        let params = CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2024, 1, 1),
            next_update: rcgen::date_time_ymd(2099, 1, 1),
            crl_number: SerialNumber::from(self.serial()),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from(*s),
                    revocation_time: rcgen::date_time_ymd(2024, 1, 1),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.cert, &self.key).unwrap();
        let path = self.dir.join(format!("{}-crl.pem", self.name));
        std::fs::write(&path, crl.pem().unwrap()).unwrap();
        path
    }
}

/// A self-signed server certificate (no CA), as lab gear ships with.
pub fn self_signed(dir: &Path, file: &str, name: &str) -> CertFiles {
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec![name.to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let files = CertFiles {
        cert: dir.join(format!("{file}.pem")),
        key: dir.join(format!("{file}.key")),
    };
    std::fs::write(&files.cert, cert.pem()).unwrap();
    write_private(&files.key, &key.serialize_pem());
    files
}

fn load_certs(path: &Path) -> Vec<CertificateDer<'static>> {
    let pem = std::fs::read(path).unwrap();
    rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

fn load_key(path: &Path) -> PrivateKeyDer<'static> {
    let pem = std::fs::read(path).unwrap();
    rustls_pemfile::private_key(&mut pem.as_slice())
        .unwrap()
        .unwrap()
}

/// What one request to a [`TlsUpstream`] looked like.
#[derive(Clone, Debug)]
pub struct Seen {
    pub version: String,
    pub path: String,
    /// CN of the client certificate the upstream verified, if it asked for one.
    pub client_cn: Option<String>,
    pub headers: http::HeaderMap,
}

/// How a [`TlsUpstream`] behaves.
pub struct TlsUpstreamOpts {
    pub cert: CertFiles,
    /// Offer h2 by ALPN (else HTTP/1.1 only).
    pub h2: bool,
    /// Require a client certificate from this CA.
    pub client_ca: Option<PathBuf>,
}

/// An HTTPS upstream on loopback answering `200` with a line describing the request.
pub struct TlsUpstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsUpstream {
    pub async fn start(opts: TlsUpstreamOpts) -> TlsUpstream {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let builder = rustls::ServerConfig::builder();
        let builder = match &opts.client_ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in load_certs(ca) {
                    roots.add(c).unwrap();
                }
                builder.with_client_cert_verifier(
                    rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
                        .build()
                        .unwrap(),
                )
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(load_certs(&opts.cert.cert), load_key(&opts.cert.key))
            .unwrap();
        config.alpn_protocols = if opts.h2 {
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        } else {
            vec![b"http/1.1".to_vec()]
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let seen2 = seen.clone();
        let task = tokio::spawn(async move {
            // Bounded by the test's lifetime: the task is aborted on drop.
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let seen = seen2.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let (_, conn) = tls.get_ref();
                    let client_cn =
                        conn.peer_certificates()
                            .and_then(|c| c.first())
                            .and_then(|der| {
                                labgate::identity::from_certificate(
                                    der.as_ref(),
                                    labgate::identity::CertField::Cn,
                                )
                                .ok()
                                .map(|i| i.to_string())
                            });
                    let is_h2 = conn.alpn_protocol() == Some(b"h2");
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let seen = seen.clone();
                        let client_cn = client_cn.clone();
                        async move {
                            let s = Seen {
                                version: format!("{:?}", req.version()),
                                path: req.uri().path().to_string(),
                                client_cn,
                                headers: req.headers().clone(),
                            };
                            let body = format!(
                                "version={} client={}",
                                s.version,
                                s.client_cn.as_deref().unwrap_or("-")
                            );
                            seen.lock().unwrap().push(s);
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
                        }
                    });
                    let io = TokioIo::new(tls);
                    if is_h2 {
                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, svc)
                            .await;
                    } else {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, svc)
                            .await;
                    }
                });
            }
        });
        TlsUpstream { addr, seen, task }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// Runs `curl` (bounded by `--max-time`) and returns (exit code, HTTP status or 0, body).
/// `args` go before the URL: `--cert`, `--key`, `--cacert`, `-H`, `-X`.
pub fn curl(args: &[&str], url: &str) -> (i32, u16, String) {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"])
        .args(args)
        .arg(url)
        .output()
        .expect("curl is installed by .ci/setup --test");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (
        out.status.code().unwrap_or(-1),
        code.trim().parse().unwrap_or(0),
        body.to_string(),
    )
}

/// A WebSocket echo server over TLS that offers h2 and HTTP/1.1 by ALPN: a WebSocket
/// handshake only works if the client (labgate) asked for HTTP/1.1. Counts the ALPN
/// protocols its clients got.
pub struct TlsWsUpstream {
    pub addr: SocketAddr,
    pub alpn: Arc<Mutex<Vec<Option<Vec<u8>>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsWsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsWsUpstream {
    pub async fn start(cert: &CertFiles) -> TlsWsUpstream {
        TlsWsUpstream::start_requiring(cert, None).await
    }

    /// [`TlsWsUpstream::start`] that requires a client certificate from `client_ca`
    /// when given (a handshake without one fails and is not counted).
    pub async fn start_requiring(cert: &CertFiles, client_ca: Option<&Path>) -> TlsWsUpstream {
        use futures_util::{SinkExt, StreamExt};
        let _ = rustls::crypto::ring::default_provider().install_default();
        let builder = rustls::ServerConfig::builder();
        let builder = match client_ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in load_certs(ca) {
                    roots.add(c).unwrap();
                }
                builder.with_client_cert_verifier(
                    rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
                        .build()
                        .unwrap(),
                )
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(load_certs(&cert.cert), load_key(&cert.key))
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let alpn: Arc<Mutex<Vec<Option<Vec<u8>>>>> = Arc::default();
        let seen = alpn.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let seen = seen.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let proto = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
                    seen.lock().unwrap().push(proto);
                    let Ok(mut ws) = tokio_tungstenite::accept_async(tls).await else {
                        return;
                    };
                    while let Some(Ok(msg)) = ws.next().await {
                        if msg.is_text() || msg.is_binary() {
                            if ws.send(msg).await.is_err() {
                                break;
                            }
                        } else if msg.is_close() {
                            break;
                        }
                    }
                });
            }
        });
        TlsWsUpstream { addr, alpn, task }
    }
}

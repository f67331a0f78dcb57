//! One device tunnel as the client sees it (issue 11, docs/tunnel-protocol.md):
//! `GET /lab/tunnel/{host}:{port}` upgraded to a WebSocket with the session's
//! `X-Session-ID`, then raw TCP bytes in binary messages both ways until either side
//! ends. Also the target syntax (`HOST:PORT`) both `--stdio` and `-L` take.
//!
//! Owns: opening a tunnel (connect and handshake timeouts, reading a refusal's JSON
//! detail), pumping bytes between a local byte stream and the tunnel, keepalive pings,
//! and telling "the session ended" (close code 4001) apart from any other end. Must
//! never print, pick exit codes, or resolve a device name (labgate does, never DNS).
//! TLS to an `https://` labgate is rustls with [`super::tls::Trust`].

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::header::{HeaderValue, CONNECTION, HOST, UPGRADE};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// The close code labgate sends when the session stops being ACTIVE.
pub const SESSION_ENDED: u16 = 4001;

/// Connecting to labgate (TCP) must succeed within this.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// labgate answers the upgrade only once its connection to the device is up (or has
/// failed, `502`/`504`), so this covers the device's connect timeout too.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// A refusal's body is read whole (for its `detail`) up to this size and time.
const MAX_REFUSAL_BODY: usize = 16 * 1024;
const REFUSAL_BODY_TIMEOUT: Duration = Duration::from_secs(5);

/// Bytes read from the local side per binary message.
const CHUNK: usize = 64 * 1024;

/// A ping this often keeps idle tunnels through proxies and proves labgate is there...
const PING_EVERY: Duration = Duration::from_secs(20);
/// ...and a tunnel that heard nothing at all (not even a pong) this long is dead.
const DEAD_AFTER: Duration = Duration::from_secs(60);

/// After the local side ended, how long labgate's last bytes and close are awaited.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// The upgraded connection to labgate.
pub type Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// An open tunnel: WebSocket messages (the default), or the device's bytes as they are
/// (`--raw`, `Upgrade: labgate-tcp`: less CPU on labgate for bulk transfers).
pub enum Tunnel {
    Ws(Box<Ws>),
    Raw(TokioIo<hyper::upgrade::Upgraded>),
}

/// The `Upgrade` token of the raw form.
const RAW_UPGRADE: &str = "labgate-tcp";

/// A device endpoint as labgate's `{target}` path segment spells it: `r1:22`,
/// `172.20.20.2:22` or `[fd00::2]:22`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// A device name, an IPv4 literal, or an IPv6 literal without brackets.
    host: String,
    port: u16,
}

impl Target {
    /// Parses `HOST:PORT`. HOST is a device name, an IPv4 literal or an IPv6 literal,
    /// bracketed or not (ssh's `%h:%p` gives `fd00::2:22` for an IPv6 host).
    pub fn parse(s: &str) -> Result<Target, String> {
        let bad = |why: &str| format!("invalid target {s:?}: {why} (expected HOST:PORT)");
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (host, port) = rest
                .split_once("]:")
                .ok_or_else(|| bad("unclosed '[' or no port"))?;
            host.parse::<std::net::Ipv6Addr>()
                .map_err(|_| bad("not an IPv6 address in [...]"))?;
            (host, port)
        } else {
            s.rsplit_once(':').ok_or_else(|| bad("no port"))?
        };
        let port = parse_port(port).ok_or_else(|| bad("port must be 1-65535"))?;
        Target::new(host, port).map_err(|why| bad(&why))
    }

    /// A target from its parts (a device name from `GET /tunnels`, for instance).
    pub fn new(host: &str, port: u16) -> Result<Target, String> {
        if port == 0 {
            return Err("port must be 1-65535".to_string());
        }
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let ok = host.parse::<std::net::IpAddr>().is_ok() || is_name(host);
        if !ok {
            return Err(format!(
                "{host:?} is neither an IP address nor a device name"
            ));
        }
        Ok(Target {
            host: host.to_string(),
            port,
        })
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl std::fmt::Display for Target {
    /// The `{target}` of `/lab/tunnel/{target}`: IPv6 in brackets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// `1`-`65535`, digits only.
fn parse_port(s: &str) -> Option<u16> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u16>().ok().filter(|p| *p != 0)
}

/// What a device name may look like: it goes into a URL path and an ssh config
/// `Host` line, so only letters, digits, `.`, `_` and `-`, not starting with `-`.
pub fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && !s.starts_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// Why a tunnel could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// labgate itself could not be reached (connect failed or timed out).
    #[error("cannot reach labgate at {addr}: {why}")]
    Unreachable { addr: String, why: String },
    /// `404 Session not found`: the session id is unknown (ended, reaped, kicked, typo).
    #[error("session not found (ended, reaped or kicked)")]
    SessionNotFound,
    /// `423`: the session exists but is still waiting for the lab.
    #[error("the session is still waiting for the lab (423: {0})")]
    Waiting(String),
    /// `404` for anything else: the target is not allowed (or malformed).
    #[error("{target} is not an allowed target (404: {detail})")]
    NotAllowed { target: String, detail: String },
    /// `429`: the session has as many tunnels open as labgate allows.
    #[error("too many tunnels open for this session (429: {0})")]
    TooMany(String),
    /// `502`/`504`: the target is allowed but did not accept the connection.
    #[error("{target} cannot be reached from labgate ({status}: {detail})")]
    DeviceUnreachable {
        target: String,
        status: u16,
        detail: String,
    },
    /// Anything the protocol does not allow (another status, a bad 101, a timeout).
    #[error("{0}")]
    Protocol(String),
}

/// How an open tunnel ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// Either side closed it normally (a TCP EOF or a WebSocket close).
    Closed,
    /// labgate closed it with 4001: the session stopped being ACTIVE. The text is
    /// labgate's reason, e.g. `session ended: kicked`.
    SessionEnded(String),
    /// The connection to labgate failed, went silent, or broke the protocol.
    Failed(String),
    /// labgate ended a raw tunnel's connection: the device closed it, or the turn
    /// ended (the raw form has no close code); [`Dialer::why`] asks the session which.
    LabgateClosed,
}

/// TLS to an `https://` labgate: the config and the name its certificate must carry.
#[derive(Clone)]
struct Tls {
    config: std::sync::Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("name", &self.name).finish()
    }
}

/// Opens tunnels for one session on one labgate.
#[derive(Clone)]
pub struct Dialer {
    /// `host:port` to connect to.
    addr: String,
    /// The `Host` header.
    authority: String,
    /// The base URL's path prefix without a trailing slash (labgate behind a proxy).
    prefix: String,
    session: String,
    /// For `https://`/`wss://`.
    tls: Option<Tls>,
    /// The raw form, with the session API to ask why a raw tunnel ended.
    raw: Option<super::http::LabClient>,
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dialer")
            .field("addr", &self.addr)
            .field("prefix", &self.prefix)
            .field("tls", &self.tls)
            .field("raw", &self.raw.is_some())
            .finish_non_exhaustive()
    }
}

impl Dialer {
    /// `base` is labgate's URL (`LAB_URL`); the tunnel's WebSocket URL is the same
    /// with `ws://` for `http://` and `wss://` for `https://` (checked against `trust`).
    pub fn new(base: &str, session: &str, trust: &super::tls::Trust) -> Result<Dialer, String> {
        let url = reqwest::Url::parse(base).map_err(|e| format!("invalid URL {base:?}: {e}"))?;
        let tls = match url.scheme() {
            "http" | "ws" => None,
            "https" | "wss" => Some(Tls {
                config: trust.config()?,
                name: super::tls::server_name(&url)?,
            }),
            other => {
                return Err(format!(
                    "invalid URL {base:?}: unsupported scheme {other:?}"
                ))
            }
        };
        let host = url
            .host_str()
            .ok_or_else(|| format!("invalid URL {base:?}: no host"))?;
        if url.query().is_some() || url.fragment().is_some() {
            return Err(format!(
                "invalid URL {base:?}: expected http://HOST[:PORT][/PREFIX]"
            ));
        }
        // `ws`/`wss` have known defaults too (80/443).
        let port = url
            .port_or_known_default()
            .unwrap_or(if tls.is_some() { 443 } else { 80 });
        // `host_str` keeps IPv6 brackets, which both uses below need.
        let authority = match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_string(),
        };
        if !super::http::plausible_id(session) {
            return Err(format!(
                "invalid session id {:?}",
                session.chars().take(40).collect::<String>()
            ));
        }
        Ok(Dialer {
            addr: format!("{host}:{port}"),
            authority,
            prefix: url.path().trim_end_matches('/').to_string(),
            session: session.to_string(),
            tls,
            raw: None,
        })
    }

    /// Opens raw tunnels (`Upgrade: labgate-tcp`) instead of WebSockets; `base` and
    /// `trust` as for [`Dialer::new`], for asking the session why a tunnel ended.
    pub fn raw(mut self, base: &str, trust: &super::tls::Trust) -> Result<Dialer, String> {
        self.raw = Some(super::http::LabClient::new(base, Duration::ZERO, trust)?);
        Ok(self)
    }

    /// What `ended` means: a raw tunnel that labgate closed was cut by the end of the
    /// turn when the session is gone (its tombstone says why), else the device closed it.
    pub async fn why(&self, ended: Ended) -> Ended {
        let (Ended::LabgateClosed, Some(client)) = (&ended, &self.raw) else {
            return match ended {
                Ended::LabgateClosed => Ended::Closed,
                other => other,
            };
        };
        match client.status(&self.session, None).await {
            Err(super::http::ClientError::NotFound(_, Some(how))) => {
                Ended::SessionEnded(format!("session {how}"))
            }
            Err(super::http::ClientError::NotFound(_, None)) => {
                Ended::SessionEnded("session ended".to_string())
            }
            _ => Ended::Closed,
        }
    }

    /// The request path for `target`.
    pub fn path(&self, target: &Target) -> String {
        format!("{}/lab/tunnel/{target}", self.prefix)
    }

    /// Opens a tunnel to `target`: connected to the device once this returns `Ok`.
    pub async fn open(&self, target: &Target) -> Result<Tunnel, OpenError> {
        let unreachable = |why: String| OpenError::Unreachable {
            addr: self.addr.clone(),
            why,
        };
        let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.addr)).await
        {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => return Err(unreachable(e.to_string())),
            Err(_) => {
                return Err(unreachable(format!(
                    "no connection within {CONNECT_TIMEOUT:?}"
                )))
            }
        };
        // Interactive ssh sends small packets: do not hold them back.
        let _ = tcp.set_nodelay(true);
        let opened = async {
            match &self.tls {
                None => self.handshake(tcp, target).await,
                Some(tls) => {
                    let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
                    let stream = connector
                        .connect(tls.name.clone(), tcp)
                        .await
                        .map_err(|e| {
                            unreachable(format!(
                                "TLS handshake failed: {e} (a private CA: pass --ca FILE or set LAB_CA)"
                            ))
                        })?;
                    self.handshake(stream, target).await
                }
            }
        };
        tokio::time::timeout(HANDSHAKE_TIMEOUT, opened)
            .await
            .unwrap_or_else(|_| {
                Err(OpenError::Protocol(format!(
                    "labgate did not answer the tunnel request within {HANDSHAKE_TIMEOUT:?}"
                )))
            })
    }

    async fn handshake<T>(&self, io: T, target: &Target) -> Result<Tunnel, OpenError>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let proto =
            |what: &str, e: &dyn std::fmt::Display| OpenError::Protocol(format!("{what}: {e}"));
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| proto("HTTP handshake with labgate failed", &e))?;
        // Drives the connection until the upgrade hands it over (or it fails, which
        // `send_request` or `upgrade::on` then report); ends with the connection.
        tokio::spawn(conn.with_upgrades());
        let key = generate_key();
        let raw = self.raw.is_some();
        let mut request = Request::get(self.path(target))
            .header(HOST, &self.authority)
            .header(CONNECTION, "Upgrade")
            .header("X-Session-ID", &self.session);
        request = if raw {
            request.header(UPGRADE, RAW_UPGRADE)
        } else {
            request
                .header(UPGRADE, "websocket")
                .header("Sec-WebSocket-Key", &key)
                .header("Sec-WebSocket-Version", "13")
        };
        let request = request
            .body(Empty::<Bytes>::new())
            .map_err(|e| proto("cannot build the tunnel request", &e))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| proto("labgate did not answer the tunnel request", &e))?;
        let status = response.status();
        if status != StatusCode::SWITCHING_PROTOCOLS {
            let body = tokio::time::timeout(
                REFUSAL_BODY_TIMEOUT,
                Limited::new(response.into_body(), MAX_REFUSAL_BODY).collect(),
            )
            .await;
            let body = match body {
                Ok(Ok(b)) => b.to_bytes(),
                _ => Bytes::new(),
            };
            return Err(refusal(status, &detail(&body), target));
        }
        let headers = response.headers();
        let upgrade_ok = headers
            .get(UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case(if raw { RAW_UPGRADE } else { "websocket" }));
        if raw {
            if !upgrade_ok {
                return Err(OpenError::Protocol(
                    "labgate answered 101 without Upgrade: labgate-tcp (an older labgate, or a proxy that only relays WebSockets: drop --raw)".to_string(),
                ));
            }
            let upgraded = hyper::upgrade::on(response)
                .await
                .map_err(|e| proto("the tunnel upgrade failed", &e))?;
            return Ok(Tunnel::Raw(TokioIo::new(upgraded)));
        }
        let accept_ok = headers.get("Sec-WebSocket-Accept")
            == HeaderValue::from_str(&derive_accept_key(key.as_bytes()))
                .ok()
                .as_ref();
        if !upgrade_ok || !accept_ok {
            return Err(OpenError::Protocol(
                "labgate answered 101 without a valid WebSocket upgrade".to_string(),
            ));
        }
        let upgraded = hyper::upgrade::on(response)
            .await
            .map_err(|e| proto("the tunnel upgrade failed", &e))?;
        Ok(Tunnel::Ws(Box::new(
            WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                Role::Client,
                Some(ws_config()),
            )
            .await,
        )))
    }
}

/// Bounded frames and buffers: labgate sends what it reads from the device in one go
/// (kilobytes); 16 MiB leaves any server's read size room and still bounds memory.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(16 << 20))
        .max_frame_size(Some(16 << 20))
        .max_write_buffer_size(4 << 20)
}

/// A refusal's `detail` (a string, or any other JSON shown as JSON), else the body.
fn detail(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let detail = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| match v.get("detail") {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(other) => Some(other.to_string()),
            None => None,
        })
        .unwrap_or_else(|| text.into_owned());
    // One bounded line: it ends up in a terminal.
    let line: String = detail
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    match line.trim() {
        "" => "(empty body)".to_string(),
        l => l.to_string(),
    }
}

/// The protocol's refusals, by status (and, for `404`, by detail: labgate answers
/// `Session not found` for an unknown session, anything else for a target).
fn refusal(status: StatusCode, detail: &str, target: &Target) -> OpenError {
    match status.as_u16() {
        404 if detail == "Session not found" => OpenError::SessionNotFound,
        404 => OpenError::NotAllowed {
            target: target.to_string(),
            detail: detail.to_string(),
        },
        423 => OpenError::Waiting(detail.to_string()),
        429 => OpenError::TooMany(detail.to_string()),
        s @ (502 | 504) => OpenError::DeviceUnreachable {
            target: target.to_string(),
            status: s,
            detail: detail.to_string(),
        },
        s => OpenError::Protocol(format!(
            "labgate refused the tunnel to {target}: {s} {detail}"
        )),
    }
}

/// Copies bytes between the local side (`reader`/`writer`) and the tunnel until it ends.
pub async fn pump<R, W>(tunnel: Tunnel, reader: R, writer: W) -> Ended
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    match tunnel {
        Tunnel::Ws(ws) => pump_ws(*ws, reader, writer).await,
        Tunnel::Raw(io) => pump_raw(io, reader, writer).await,
    }
}

/// A raw tunnel is TCP: the local side's EOF reaches the device as a FIN and the
/// device's bytes keep coming until labgate ends the connection ([`Ended::LabgateClosed`]).
async fn pump_raw<R, W>(
    io: TokioIo<hyper::upgrade::Upgraded>,
    mut reader: R,
    mut writer: W,
) -> Ended
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (mut rx, mut tx) = tokio::io::split(io);
    let up = async {
        match tokio::io::copy(&mut reader, &mut tx).await {
            // Local EOF: half-close, the device may still answer.
            Ok(_) => tx
                .shutdown()
                .await
                .map_err(|e| format!("sending to labgate failed: {e}")),
            // The local program went away: nothing more to carry.
            Err(_) => Err(String::new()),
        }
    };
    let down = async {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match rx.read(&mut buf).await {
                Ok(0) => return Ended::LabgateClosed,
                Ok(n) => {
                    if writer.write_all(&buf[..n]).await.is_err() || writer.flush().await.is_err() {
                        // The local program stopped reading: the tunnel is of no use.
                        return Ended::Closed;
                    }
                }
                Err(e) => return Ended::Failed(format!("tunnel broken: {e}")),
            }
        }
    };
    tokio::pin!(up, down);
    tokio::select! {
        ended = &mut down => ended,
        sent = &mut up => match sent {
            Ok(()) => down.await,
            Err(why) if why.is_empty() => Ended::Closed,
            Err(why) => Ended::Failed(why),
        },
    }
}

/// Copies bytes between the local side (`reader`/`writer`) and a WebSocket tunnel until
/// either ends: the whole tunnel ends with the first side that does (the protocol has no
/// half-close). After a local EOF, labgate's bytes already on the way are still
/// delivered, for at most [`CLOSE_WAIT`].
async fn pump_ws<R, W>(ws: Ws, mut reader: R, mut writer: W) -> Ended
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (mut tx, mut rx) = ws.split();
    let up = async {
        let mut buf = vec![0u8; CHUNK];
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
        loop {
            let message = tokio::select! {
                n = reader.read(&mut buf) => match n {
                    Ok(0) => {
                        // Best effort: the close only tells labgate a little sooner.
                        let _ = tx.send(Message::Close(Some(CloseFrame {
                            code: CloseCode::Normal,
                            reason: "".into(),
                        }))).await;
                        return Ended::Closed;
                    }
                    Ok(n) => Message::Binary(Bytes::copy_from_slice(&buf[..n])),
                    // The local program went away: nothing more to carry.
                    Err(_) => return Ended::Closed,
                },
                _ = ping.tick() => Message::Ping(Bytes::new()),
            };
            if let Err(e) = tx.send(message).await {
                return Ended::Failed(format!("sending to labgate failed: {e}"));
            }
        }
    };
    let down = async {
        loop {
            let message = match tokio::time::timeout(DEAD_AFTER, rx.next()).await {
                Err(_) => {
                    return Ended::Failed(format!("labgate silent for {}s", DEAD_AFTER.as_secs()))
                }
                Ok(None) => return Ended::Failed("labgate dropped the connection".to_string()),
                Ok(Some(Err(e))) => return Ended::Failed(format!("tunnel broken: {e}")),
                Ok(Some(Ok(m))) => m,
            };
            match message {
                Message::Binary(bytes) => {
                    if writer.write_all(&bytes).await.is_err() || writer.flush().await.is_err() {
                        // The local program stopped reading: the tunnel is of no use.
                        return Ended::Closed;
                    }
                }
                Message::Close(Some(frame)) if u16::from(frame.code) == SESSION_ENDED => {
                    return Ended::SessionEnded(one_line(frame.reason.as_str()));
                }
                Message::Close(_) => return Ended::Closed,
                Message::Text(_) => {
                    return Ended::Failed(
                        "labgate sent a text message (protocol error)".to_string(),
                    )
                }
                // Pongs are answered by tungstenite; any frame proves labgate is there.
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
    };
    tokio::pin!(up, down);
    tokio::select! {
        ended = &mut down => ended,
        ended = &mut up => match ended {
            Ended::Closed => match tokio::time::timeout(CLOSE_WAIT, &mut down).await {
                Ok(e @ Ended::SessionEnded(_)) => e,
                _ => Ended::Closed,
            },
            other => other,
        },
    }
}

/// A close reason as one bounded line (it is printed).
fn one_line(s: &str) -> String {
    let line: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    match line.trim() {
        "" => "session ended".to_string(),
        l => l.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_like_ssh_writes_them() {
        let t = |s: &str| Target::parse(s).map(|t| t.to_string());
        assert_eq!(t("r1:22").unwrap(), "r1:22");
        assert_eq!(t("172.20.20.2:830").unwrap(), "172.20.20.2:830");
        assert_eq!(t("[fd00::2]:22").unwrap(), "[fd00::2]:22");
        // ssh's `%h:%p` for an IPv6 host has no brackets.
        assert_eq!(t("fd00::2:22").unwrap(), "[fd00::2]:22");
        assert_eq!(
            t("clab-lab-r1.mgmt:57400").unwrap(),
            "clab-lab-r1.mgmt:57400"
        );
        for bad in [
            "r1",
            "r1:",
            ":22",
            "r1:0",
            "r1:65536",
            "r1:+22",
            "r1:22x",
            "[fd00::2:22",
            "[r1]:22",
            "a b:22",
            "r1/x:22",
            "-oProxy:22",
            "r1?:22",
            "",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_url_path_keeps_the_prefix_and_brackets() {
        let trust = crate::client::tls::Trust::default();
        let d = Dialer::new("http://gw:8080/labgate/", "abc-123", &trust).unwrap();
        assert_eq!(d.addr, "gw:8080");
        assert_eq!(d.authority, "gw:8080");
        let t = Target::parse("[fd00::2]:22").unwrap();
        assert_eq!(d.path(&t), "/labgate/lab/tunnel/[fd00::2]:22");
        let d = Dialer::new("http://[::1]", "abc", &trust).unwrap();
        assert_eq!(d.addr, "[::1]:80");
        assert_eq!(d.authority, "[::1]");
        assert_eq!(
            d.path(&Target::parse("r1:22").unwrap()),
            "/lab/tunnel/r1:22"
        );
        for bad in ["ftp://gw", "gw:8080", "http://gw/?x=1"] {
            assert!(Dialer::new(bad, "abc", &trust).is_err(), "{bad}");
        }
        assert!(Dialer::new("http://gw", "a/b", &trust).is_err());
        // https: TLS to the URL's host, on 443 unless the URL says otherwise.
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        std::fs::write(&ca, params.self_signed(&key).unwrap().pem()).unwrap();
        let trust = crate::client::tls::Trust::new(Some(ca));
        let d = Dialer::new("https://gw.lab/labgate", "abc", &trust).unwrap();
        assert_eq!(
            (d.addr.as_str(), d.authority.as_str()),
            ("gw.lab:443", "gw.lab")
        );
        assert!(d.tls.is_some());
        let d = Dialer::new("wss://[::1]:8443", "abc", &trust).unwrap();
        assert_eq!(d.addr, "[::1]:8443");
        let bad = crate::client::tls::Trust::new(Some(dir.path().join("missing.pem")));
        assert!(Dialer::new("https://gw", "abc", &bad).is_err());
    }

    #[test]
    fn refusals_are_told_apart_by_status_and_detail() {
        let t = Target::parse("r1:22").unwrap();
        let r = |status: u16, body: &str| {
            refusal(
                StatusCode::from_u16(status).unwrap(),
                &detail(body.as_bytes()),
                &t,
            )
        };
        assert!(matches!(
            r(404, r#"{"detail":"Session not found"}"#),
            OpenError::SessionNotFound
        ));
        assert!(matches!(
            r(404, r#"{"detail":"Target not allowed"}"#),
            OpenError::NotAllowed { .. }
        ));
        assert!(matches!(r(404, ""), OpenError::NotAllowed { .. }));
        assert!(matches!(
            r(423, r#"{"detail":"Session is not active"}"#),
            OpenError::Waiting(_)
        ));
        assert!(matches!(r(429, "{}"), OpenError::TooMany(_)));
        assert!(matches!(
            r(502, "x"),
            OpenError::DeviceUnreachable { status: 502, .. }
        ));
        assert!(matches!(
            r(504, "x"),
            OpenError::DeviceUnreachable { status: 504, .. }
        ));
        assert!(matches!(r(422, "x"), OpenError::Protocol(_)));
        assert_eq!(detail(br#"{"detail":[{"msg":"x"}]}"#), r#"[{"msg":"x"}]"#);
        assert_eq!(detail(b"line\nbreak"), "line break");
        assert_eq!(detail(&[b'x'; 1000]).len(), 200);
    }
}

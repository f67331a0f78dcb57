//! `/lab` upgrade requests (WebSocket or any `Upgrade`) on a connection labgate opens to
//! the upstream itself (TLS with the upstream's `[upstream.tls]` settings when it has
//! them): hyper sends the request and parses the answer head; a `101` is relayed and
//! then spliced raw ([`super::raw`]), anything else is relayed as a response.
//!
//! Owns the upstream leg of forwarded upgrades only. Must never shape the request (the
//! forwarding policy did) nor answer the client before the upstream has answered.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use bytes::Bytes;
use http::header;
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::{client_socket, raw, unless_cut, ConnectError, End, Outcome};
use crate::cut::Ticket;
use crate::forward::{FailureKind, Side};
use crate::tls::upstream::UpstreamTls;

/// What an upstream answered an upgrade request.
pub enum UpstreamAnswer {
    /// `101`: the head to relay, then raw bytes over `io`.
    Switched {
        head: http::response::Parts,
        io: hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>,
    },
    /// Anything else: relayed as an ordinary response.
    Other(http::Response<hyper::body::Incoming>),
}

/// Why an upgrade request did not reach an answer.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("the upstream did not answer in time")]
    Timeout,
    #[error("upstream protocol error: {0}")]
    Http(#[from] hyper::Error),
    /// The TLS handshake failed (certificate not trusted, wrong name, no client
    /// certificate, not TLS at all).
    #[error("TLS to the upstream failed: {0}")]
    Tls(String),
    /// The session ended while connecting.
    #[error("session ended")]
    Cut,
}

impl UpgradeError {
    /// The failure in `forward`'s terms (kind, side, whether the session ended), so that
    /// the client gets the same answer as for any failed `/lab` request.
    pub fn failure(&self) -> (FailureKind, Side, bool) {
        match self {
            UpgradeError::Cut => (FailureKind::Other, Side::Upstream, true),
            UpgradeError::Connect(ConnectError::Timeout) => {
                (FailureKind::ConnectTimedOut, Side::Upstream, false)
            }
            UpgradeError::Connect(ConnectError::Io(_)) => {
                (FailureKind::Connect, Side::Upstream, false)
            }
            UpgradeError::Timeout => (FailureKind::ReadTimedOut, Side::Upstream, false),
            UpgradeError::Tls(_) => (FailureKind::Connect, Side::Upstream, false),
            UpgradeError::Http(_) => (FailureKind::Closed, Side::Upstream, false),
        }
    }
}

/// Sends an upgrade request (already shaped by the forwarding policy) to the upstream at
/// `addr` on a fresh connection of labgate's own (TLS when `tls` is given), and waits
/// for its answer head. `register` gets the socket's fd once connected (the cut registry
/// duplicates it) and returns false when the session already ended. HTTP/1 parsing is
/// hyper's.
pub async fn request_upgrade(
    addr: SocketAddr,
    tls: Option<&UpstreamTls>,
    connect_timeout: Duration,
    read_timeout: Duration,
    request: http::Request<http_body_util::Empty<Bytes>>,
    register: impl FnOnce(RawFd) -> bool,
) -> Result<UpstreamAnswer, UpgradeError> {
    let started = tokio::time::Instant::now();
    let stream = tokio::time::timeout(connect_timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| ConnectError::Timeout)?
        .map_err(ConnectError::Io)?;
    stream.set_nodelay(true).map_err(ConnectError::Io)?;
    if !register(stream.as_raw_fd()) {
        return Err(UpgradeError::Cut);
    }
    let Some(tls) = tls else {
        return send_upgrade(stream, read_timeout, request).await;
    };
    let name = tls.server_name().map_err(UpgradeError::Tls)?;
    let connector = tokio_rustls::TlsConnector::from(tls.splice.clone());
    // The handshake counts against the connect timeout, as in pingora's connector.
    let stream =
        tokio::time::timeout_at(started + connect_timeout, connector.connect(name, stream))
            .await
            .map_err(|_| ConnectError::Timeout)?
            .map_err(|e| UpgradeError::Tls(e.to_string()))?;
    send_upgrade(stream, read_timeout, request).await
}

/// The HTTP/1 exchange of [`request_upgrade`] on a connected (and maybe TLS) stream.
async fn send_upgrade<T>(
    io: T,
    read_timeout: Duration,
    request: http::Request<http_body_util::Empty<Bytes>>,
) -> Result<UpstreamAnswer, UpgradeError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io)).await?;
    // The connection task hands the socket to `upgrade::on` after a 101, or ends with
    // the response body; it never outlives the socket.
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upstream upgrade connection ended");
        }
    });
    let mut response = tokio::time::timeout(read_timeout, sender.send_request(request))
        .await
        .map_err(|_| UpgradeError::Timeout)??;
    if response.status() != http::StatusCode::SWITCHING_PROTOCOLS {
        return Ok(UpstreamAnswer::Other(response));
    }
    let upgraded = tokio::time::timeout(read_timeout, hyper::upgrade::on(&mut response))
        .await
        .map_err(|_| UpgradeError::Timeout)??;
    let (head, _) = response.into_parts();
    Ok(UpstreamAnswer::Switched {
        head,
        io: hyper_util::rt::TokioIo::new(upgraded),
    })
}

/// Whether an upstream's response header is relayed: `forward`'s hop-by-hop removals
/// apply (none on a `101`, whose `Upgrade`/`Connection` are the switch itself); on any
/// other answer pingora writes its own `Connection`, and an `Upgrade` offer is this
/// hop's only.
fn relayed(name: &http::HeaderName, status: u16) -> bool {
    if crate::forward::response_removals(status).contains(&name.as_str()) {
        return false;
    }
    status == 101 || (name != header::CONNECTION && name != header::UPGRADE)
}

fn relay_head(
    parts: &http::response::Parts,
    extra: &[(&'static str, String)],
) -> pingora::Result<ResponseHeader> {
    let status = parts.status.as_u16();
    let mut head = ResponseHeader::build(parts.status, Some(parts.headers.len() + extra.len()))?;
    for (name, value) in parts.headers.iter().filter(|(n, _)| relayed(n, status)) {
        head.append_header(name.clone(), value.clone())?;
    }
    for (name, value) in extra {
        head.insert_header(*name, value.as_str())?;
    }
    Ok(head)
}

/// The upstream request for a (policy-shaped) pingora request head: same method,
/// target, version and headers, no body (an upgrade request has none).
pub fn upstream_request(
    req: &pingora::http::RequestHeader,
) -> http::Request<http_body_util::Empty<Bytes>> {
    http::Request::from_parts(req.as_owned_parts(), http_body_util::Empty::new())
}

/// How forwarding an upgrade request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relayed {
    /// The upstream switched protocols; the splice ended like this.
    Switched(Outcome),
    /// The upstream answered something else (status), relayed as is.
    Answered(u16),
}

/// Forwards an upgrade request on labgate's own upstream connection: relays the
/// upstream's `101` and splices raw bytes until either side or the turn ends; relays any
/// other answer as an ordinary response. `Err` means nothing was written to the client
/// yet, so the caller can still answer 502/504.
#[allow(clippy::too_many_arguments)]
pub async fn forward_upgrade(
    session: &mut ServerSession,
    addr: SocketAddr,
    tls: Option<&UpstreamTls>,
    connect_timeout: Duration,
    read_timeout: Duration,
    request: http::Request<http_body_util::Empty<Bytes>>,
    ticket: &Ticket,
    register: impl FnOnce(RawFd) -> bool,
    extra: &[(&'static str, String)],
) -> Result<Relayed, UpgradeError> {
    let answer =
        request_upgrade(addr, tls, connect_timeout, read_timeout, request, register).await?;
    let client = client_socket(session);
    match answer {
        UpstreamAnswer::Switched { head, io } => {
            let head = relay_head(&head, extra).map_err(|_| UpgradeError::Timeout)?;
            if session.write_response_header(Box::new(head)).await.is_err() {
                return Ok(Relayed::Switched(Outcome {
                    end: End::ClientGone,
                    to_remote: 0,
                    to_client: 0,
                }));
            }
            Ok(Relayed::Switched(
                raw(session, io, ticket, client.as_ref()).await,
            ))
        }
        UpstreamAnswer::Other(response) => {
            use http_body_util::BodyExt;
            let (parts, mut body) = response.into_parts();
            let status = parts.status.as_u16();
            let head = relay_head(&parts, extra).map_err(|_| UpgradeError::Timeout)?;
            session.set_keepalive(None);
            if session.write_response_header(Box::new(head)).await.is_err() {
                return Ok(Relayed::Answered(status));
            }
            loop {
                let frame = match unless_cut(
                    ticket,
                    tokio::time::timeout(read_timeout, body.frame()),
                )
                .await
                {
                    Some(Ok(Some(Ok(frame)))) => frame,
                    // The end, a failure, a timeout or a cut: the connection closes.
                    _ => break,
                };
                if let Ok(data) = frame.into_data() {
                    if session.write_response_body(data, false).await.is_err() {
                        break;
                    }
                }
            }
            let _ = session.finish_body().await;
            Ok(Relayed::Answered(status))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cut::Registry;
    use crate::queue::SessionId;
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;
    use tokio_tungstenite::tungstenite::Message;

    async fn next<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> Message
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a message in time")
            .expect("not the end")
            .expect("no error")
    }

    /// An upstream WebSocket echo server, or a plain 404 for anything but `/ws`.
    async fn ws_upstream() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut peek = [0u8; 16];
                    let n = s.peek(&mut peek).await.unwrap_or(0);
                    if !peek[..n].starts_with(b"GET /ws") {
                        let mut s = s;
                        let _ = s
                            .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 4\r\n\r\nnope")
                            .await;
                        return;
                    }
                    let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                        return;
                    };
                    while let Some(Ok(m)) = ws.next().await {
                        if (m.is_binary() || m.is_text()) && ws.send(m).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    /// labgate's side of one forwarded upgrade on a real pingora session.
    async fn forward_one(
        upstream: SocketAddr,
        ticket: Ticket,
    ) -> (SocketAddr, tokio::task::JoinHandle<Relayed>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (tcp, _) = l.accept().await.unwrap();
            let stream = pingora::protocols::l4::stream::Stream::from(tcp);
            let mut session = ServerSession::new_http1(Box::new(stream));
            assert!(session.read_request().await.unwrap());
            let request = upstream_request(session.req_header());
            forward_upgrade(
                &mut session,
                upstream,
                None,
                Duration::from_secs(5),
                Duration::from_secs(5),
                request,
                &ticket,
                |_| true,
                &[("x-lab-hold-remaining", "42".to_string())],
            )
            .await
            .unwrap()
        });
        (addr, task)
    }

    #[tokio::test]
    async fn forwarded_websocket_relays_the_101_then_raw_bytes() {
        let mut reg = Registry::default();
        let id = SessionId::random();
        let ticket = reg.begin(id);
        let (addr, task) = forward_one(ws_upstream().await, ticket).await;
        let (mut ws, resp) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 101);
        assert_eq!(resp.headers()["x-lab-hold-remaining"], "42");
        for i in 0..20 {
            ws.send(Message::text(format!("m{i}"))).await.unwrap();
            assert_eq!(next(&mut ws).await, Message::text(format!("m{i}")));
        }
        // The turn ends: the connection goes at once.
        reg.cut_because(&id, "deleted");
        let end = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("closed in time");
        assert!(!matches!(end, Some(Ok(Message::Text(_)))), "{end:?}");
        match task.await.unwrap() {
            Relayed::Switched(o) => {
                assert_eq!(o.end, End::SessionEnded("deleted"));
                assert!(o.to_remote > 0 && o.to_client > 0);
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn refused_upgrade_is_relayed_as_a_response() {
        let mut reg = Registry::default();
        let ticket = reg.begin(SessionId::random());
        let (addr, task) = forward_one(ws_upstream().await, ticket).await;
        let err = tokio_tungstenite::connect_async(format!("ws://{addr}/other"))
            .await
            .unwrap_err();
        match err {
            tokio_tungstenite::tungstenite::Error::Http(resp) => {
                assert_eq!(resp.status().as_u16(), 404);
                assert_eq!(resp.body().as_deref(), Some(&b"nope"[..]));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(task.await.unwrap(), Relayed::Answered(404));
    }
}

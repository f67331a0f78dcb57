//! Upgraded connections labgate owns end to end: device tunnels (a WebSocket on the
//! client leg, raw TCP to the device) and WebSocket/`Upgrade` forwarding to `/lab/*`
//! upstreams (raw bytes both ways after the upstream's `101`).
//!
//! Why labgate and not pingora relays these: pingora 0.9.1's proxied-upgrade path tears
//! down about 1 in 20 upgrades right after the `101` (cloudflare/pingora#946). Here
//! labgate answers the client itself and then moves bytes between pingora's downstream
//! session (which keeps TLS, pre-read bytes and timeouts) and a TCP connection labgate
//! opened, in one task, until either side ends or the session's turn ends
//! ([`Ticket::cut_notified`]). On a cut the client gets a WebSocket close 4001 (tunnels)
//! within [`CLOSE_GRACE`], then both legs are dropped.
//!
//! This module sets a splice up (connecting with keepalive, the client's socket, the
//! `101`); [`relay`] moves the bytes; [`device`] decides and records device tunnels;
//! [`upstream`] sends `/lab` upgrade requests on labgate's own connection.
//!
//! Owns sockets and byte moving only. Must never decide who may connect where (the gate
//! and `tunnel::allowlist` do), never read a client or device without a bound on the
//! buffer, and never outlive the session's turn.

use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, RawFd};
use std::time::Duration;

use http::header;
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;

use crate::cut::Ticket;
use crate::tunnel::ws::{Form, RAW_UPGRADE};
use futures_util::FutureExt;
use tokio::io::AsyncWriteExt;

pub mod device;
mod pipe;
mod relay;
pub mod upstream;

pub use relay::{raw, tunnel};

/// How long the client gets to take the close frame once the turn has ended; after it,
/// the connection is dropped regardless (the device leg is already shut down).
pub const CLOSE_GRACE: Duration = Duration::from_millis(50);

/// Keepalive probes after the idle time: interval and count, so a vanished peer is noticed
/// within `idle + 3 x 10 s`.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_RETRIES: u32 = 3;

/// How a spliced connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The client closed the WebSocket (close frame) cleanly.
    ClientClosed,
    /// The client's TCP connection ended without a close frame, or failed.
    ClientGone,
    /// The device (or upstream) closed its side.
    RemoteClosed,
    /// Reading or writing the device (or upstream) failed.
    RemoteError,
    /// The client broke the WebSocket protocol; labgate closed with this code.
    Protocol(u16),
    /// The session stopped being ACTIVE, for this reason.
    SessionEnded(&'static str),
}

impl End {
    /// The `end` field of the audit line.
    pub fn as_str(&self) -> &'static str {
        match self {
            End::ClientClosed => "client_closed",
            End::ClientGone => "client_gone",
            End::RemoteClosed => "remote_closed",
            End::RemoteError => "remote_error",
            End::Protocol(_) => "protocol_error",
            End::SessionEnded(_) => "session_ended",
        }
    }
}

/// What one spliced connection did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub end: End,
    /// Payload bytes from the client to the device (or upstream).
    pub to_remote: u64,
    /// Payload bytes from the device (or upstream) to the client.
    pub to_client: u64,
}

/// Why labgate could not connect to a device or upstream.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connection timed out")]
    Timeout,
    #[error("cannot connect: {0}")]
    Io(#[from] std::io::Error),
}

/// Turns TCP keepalive on for `socket`: first probe after `idle`, so that a vanished
/// peer (laptop lid closed, VPN gone) does not keep a tunnel, and with it the lab, forever.
pub fn set_keepalive(socket: impl AsFd, idle: Duration) -> std::io::Result<()> {
    let keepalive = TcpKeepalive::new()
        .with_time(idle)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    SockRef::from(&socket).set_tcp_keepalive(&keepalive)
}

/// Connects to `addr` within `timeout`, with keepalive and no Nagle delay (interactive
/// sessions: ssh, consoles).
pub async fn connect(
    addr: SocketAddr,
    timeout: Duration,
    keepalive: Duration,
) -> Result<TcpStream, ConnectError> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| ConnectError::Timeout)??;
    set_keepalive(&stream, keepalive)?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Our own duplicate of the client's TCP socket, for socket options and a last-resort
/// shutdown. pingora's stream id is its fd on plain TCP, but that is not a documented
/// promise, so the duplicate is only trusted once its peer is the session's client.
pub fn client_socket(session: &ServerSession) -> Option<std::net::TcpStream> {
    let fd: RawFd = session.stream()?.id();
    let peer = session.client_addr()?.as_inet().copied()?;
    if fd < 0 {
        return None;
    }
    // SAFETY: the session owns an open stream for as long as we borrow it; the borrowed
    // number is only duplicated, and the duplicate checked before it is used.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let owned = borrowed.try_clone_to_owned().ok()?;
    let socket = std::net::TcpStream::from(owned);
    (socket.peer_addr().ok()? == peer).then_some(socket)
}

/// Writes labgate's own `101` for a tunnel of either form.
pub async fn answer_tunnel(
    session: &mut ServerSession,
    form: &Form,
    extra: &[(&'static str, String)],
) -> pingora::Result<()> {
    let mut head = ResponseHeader::build(101, Some(3 + extra.len()))?;
    match form {
        Form::WebSocket { accept } => {
            head.insert_header(header::UPGRADE, "websocket")?;
            head.insert_header(header::CONNECTION, "Upgrade")?;
            head.insert_header(header::SEC_WEBSOCKET_ACCEPT, accept.as_str())?;
        }
        Form::Raw => {
            head.insert_header(header::UPGRADE, RAW_UPGRADE)?;
            head.insert_header(header::CONNECTION, "Upgrade")?;
        }
    }
    for (name, value) in extra {
        head.insert_header(*name, value.as_str())?;
    }
    session.write_response_header(Box::new(head)).await
}

/// How a tunnel's bytes were moved: the `relay` field of its audit line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relay {
    /// WebSocket frames, read and written by labgate.
    WebSocket,
    /// Raw bytes through a pipe with `splice(2)`, never in labgate's memory.
    Splice,
    /// Raw bytes read and written by labgate (a TLS client leg).
    Copy,
}

impl Relay {
    pub fn as_str(&self) -> &'static str {
        match self {
            Relay::WebSocket => "websocket",
            Relay::Splice => "splice",
            Relay::Copy => "copy",
        }
    }
}

/// Relays a raw tunnel (`Upgrade: labgate-tcp`) after its `101`: with `splice(2)`
/// ([`pipe`]) when the client leg is plain TCP and labgate holds its own duplicate of
/// the socket, through memory ([`raw`]) otherwise (TLS: the kernel cannot decrypt).
///
/// Bytes pingora read past the request head (a client that did not wait for the `101`)
/// are still in its session: they go to the device first, then the sockets take over.
pub async fn raw_tunnel(
    session: &mut ServerSession,
    mut device: TcpStream,
    ticket: &Ticket,
    client: Option<std::net::TcpStream>,
) -> (Outcome, Relay) {
    let plain = session.digest().is_some_and(|d| d.ssl_digest.is_none());
    let client = match client {
        Some(c) if plain => c,
        client => {
            let outcome = raw(session, device, ticket, client.as_ref()).await;
            return (outcome, Relay::Copy);
        }
    };
    let mut early = 0u64;
    let ended = |end, early| {
        let outcome = Outcome {
            end,
            to_remote: early,
            to_client: 0,
        };
        (outcome, Relay::Splice)
    };
    let mut client_fin = false;
    // Only what is already there: `now_or_never` never waits, and a read that would
    // wait has taken nothing from the socket.
    while let Some(read) = session.read_request_body().now_or_never() {
        let Ok(Some(bytes)) = read else {
            client_fin = true;
            break;
        };
        let write = tokio::time::timeout(PREREAD_TIMEOUT, device.write_all(&bytes));
        match unless_cut(ticket, write).await {
            Some(Ok(Ok(()))) => early += bytes.len() as u64,
            None => {
                let _ = client.shutdown(std::net::Shutdown::Both);
                let reason = ticket.cut_reason().unwrap_or_default();
                return ended(End::SessionEnded(reason), early);
            }
            Some(_) => {
                let _ = client.shutdown(std::net::Shutdown::Both);
                return ended(End::RemoteError, early);
            }
        }
    }
    let registered = client
        .set_nonblocking(true)
        .and_then(|()| TcpStream::from_std(client));
    let client = match registered {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "cannot register a raw tunnel's client socket");
            return ended(End::ClientGone, early);
        }
    };
    let mut outcome = pipe::relay(client, device, ticket, client_fin).await;
    outcome.to_remote += early;
    (outcome, Relay::Splice)
}

/// How long the bytes a raw tunnel's client sent before the `101` may take to reach the
/// device.
const PREREAD_TIMEOUT: Duration = Duration::from_secs(10);

/// `f`, unless the session's turn ends first (`None`).
async fn unless_cut<T>(ticket: &Ticket, f: impl Future<Output = T>) -> Option<T> {
    tokio::select! {
        biased;
        _ = ticket.cut_notified() => None,
        v = f => Some(v),
    }
}

/// Test devices shared by the relays' tests.
#[cfg(test)]
pub(crate) mod testing {
    use socket2::SockRef;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::task::JoinHandle;

    /// A device with small socket buffers that writes `each_way` bytes of 7 before it
    /// reads `each_way` bytes (which must all be 9): a relay must keep reading it while
    /// its own writes to it wait, or both directions stall for good.
    pub async fn writes_before_it_reads(each_way: usize) -> (SocketAddr, JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let device = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let sock = SockRef::from(&s);
            sock.set_recv_buffer_size(64 * 1024).unwrap();
            sock.set_send_buffer_size(64 * 1024).unwrap();
            s.write_all(&vec![7u8; each_way]).await.unwrap();
            let mut got = vec![0u8; each_way];
            s.read_exact(&mut got).await.unwrap();
            assert!(got.iter().all(|b| *b == 9));
        });
        (addr, device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn keepalive_and_nodelay_are_set_on_the_device_leg() {
        // A listener's backlog completes the connection; nothing needs to accept it.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let s = connect(
            l.local_addr().unwrap(),
            Duration::from_secs(5),
            Duration::from_secs(17),
        )
        .await
        .unwrap();
        let sock = SockRef::from(&s);
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(17));
        assert_eq!(sock.tcp_keepalive_interval().unwrap(), KEEPALIVE_INTERVAL);
        assert_eq!(sock.tcp_keepalive_retries().unwrap(), KEEPALIVE_RETRIES);
        assert!(s.nodelay().unwrap());
    }

    #[tokio::test]
    async fn connect_errors_are_told_apart() {
        // A port nobody listens on: refused.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed = l.local_addr().unwrap();
        drop(l);
        assert!(matches!(
            connect(closed, Duration::from_secs(5), Duration::from_secs(30)).await,
            Err(ConnectError::Io(_))
        ));
        // A blackholed address (TEST-NET-1 has no route or drops): timeout or an error,
        // never success, and never longer than the timeout.
        let started = Instant::now();
        let r = connect(
            "192.0.2.1:22".parse().unwrap(),
            Duration::from_millis(200),
            Duration::from_secs(30),
        )
        .await;
        assert!(r.is_err());
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}

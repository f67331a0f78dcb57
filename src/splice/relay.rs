//! The byte relay of a spliced connection, shared by device tunnels ([`tunnel`]: WebSocket
//! messages on the client leg) and forwarded `/lab` upgrades ([`raw`]: raw bytes both
//! ways): one task reads both legs, queues what the remote has not taken yet (bounded,
//! [`PENDING_LIMIT`]), and ends with either side or the session's turn.
//!
//! Owns moving bytes and how a relay ends. Must never connect, answer a handshake, or
//! decide who may connect where (the parent module and `device`/`upstream` do).

use bytes::{BufMut, Bytes, BytesMut};
use pingora::protocols::http::ServerSession;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{unless_cut, End, Outcome, CLOSE_GRACE};
use crate::cut::{Ticket, SHUTTING_DOWN};
use crate::tunnel::ws::{Event, ServerConn, CLOSE_SESSION_ENDED, HEADER_ROOM};

/// The most one read takes from either leg.
const CHUNK: usize = 64 * 1024;

/// The end of a cut connection: a close frame for a tunnel's client, given
/// [`CLOSE_GRACE`] to go out; a client that does not take it loses its socket instead,
/// so that pingora's final flush cannot hang on it.
async fn finish_cut(
    session: &mut ServerSession,
    ws: Option<&mut ServerConn>,
    reason: &'static str,
    client: Option<&std::net::TcpStream>,
) -> End {
    let mut sent = true;
    if let Some(ws) = ws {
        // Same code either way: the client's tunnel is over and not its fault.
        let text = if reason == SHUTTING_DOWN {
            reason.to_string()
        } else {
            format!("session ended: {reason}")
        };
        ws.close(CLOSE_SESSION_ENDED, &text);
        let out = ws.take_outbound();
        sent = matches!(
            tokio::time::timeout(CLOSE_GRACE, session.write_response_body(out, false)).await,
            Ok(Ok(()))
        );
    }
    if !sent {
        if let Some(c) = client {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }
    End::SessionEnded(reason)
}

/// Writes `bytes` to the client unless the turn ends first; `Err` says how it ended.
async fn to_client(
    session: &mut ServerSession,
    ticket: &Ticket,
    bytes: Bytes,
) -> Result<(), Option<End>> {
    if bytes.is_empty() {
        return Ok(());
    }
    match unless_cut(ticket, session.write_response_body(bytes, false)).await {
        Some(Ok(())) => Ok(()),
        Some(Err(_)) => Err(Some(End::ClientGone)),
        // Cut mid-write: the caller closes.
        None => Err(None),
    }
}

/// Bytes on their way to the device (or upstream), written as fast as it takes them, in
/// the same loop that keeps reading it: a remote busy writing to us (its send buffer full)
/// then never stops us from reading, so both directions can be full at once without a
/// deadlock. Past [`PENDING_LIMIT`] the client is not read (backpressure).
#[derive(Default)]
struct Pending {
    chunks: std::collections::VecDeque<Bytes>,
    len: usize,
}

/// Bytes queued for the remote before the client's side stops being read; at most one
/// client read or WebSocket message ([`crate::tunnel::ws::MAX_MESSAGE`]) more is queued.
const PENDING_LIMIT: usize = 256 * 1024;

impl Pending {
    fn push(&mut self, bytes: Bytes) {
        if !bytes.is_empty() {
            self.len += bytes.len();
            self.chunks.push_back(bytes);
        }
    }

    fn has_room(&self) -> bool {
        self.len < PENDING_LIMIT
    }

    /// The next bytes to write (a cheap reference-counted handle).
    fn front(&self) -> Option<Bytes> {
        self.chunks.front().cloned()
    }

    /// The next chunks to write at once (up to [`GATHER`]), as cheap handles.
    fn gather(&self) -> Vec<Bytes> {
        self.chunks.iter().take(GATHER).cloned().collect()
    }

    /// `n` bytes from the front were written.
    fn written(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.chunks.front_mut() else {
                return;
            };
            let k = n.min(front.len());
            let _ = front.split_to(k);
            self.len -= k;
            n -= k;
            if front.is_empty() {
                self.chunks.pop_front();
            }
        }
    }
}

/// The most queued chunks one write to the remote takes (a vectored write): a client's
/// 64 KiB messages then leave in one system call per [`PENDING_LIMIT`], not one each.
const GATHER: usize = 16;

/// Writes what `w` takes of `chunks`, in order, in one vectored write (cancel-safe).
async fn write_gathered<W: AsyncWrite + Unpin>(
    w: &mut W,
    chunks: &[Bytes],
) -> std::io::Result<usize> {
    let slices: Vec<std::io::IoSlice<'_>> =
        chunks.iter().map(|c| std::io::IoSlice::new(c)).collect();
    w.write_vectored(&slices).await
}

/// How long bytes the client sent before it closed may take to reach the remote.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Writes what is still queued for the remote once the client is done (its close or
/// EOF ends the tunnel, but what it sent before must arrive), unless the turn ends or
/// the remote does not take it within [`DRAIN_TIMEOUT`]. Returns the bytes written.
async fn drain<W: AsyncWrite + Unpin>(
    pending: &mut Pending,
    remote: &mut W,
    ticket: &Ticket,
) -> u64 {
    let mut written = 0u64;
    let drained = async {
        while let Some(next) = pending.front() {
            remote.write_all(&next).await?;
            pending.written(next.len());
            written += next.len() as u64;
        }
        remote.flush().await
    };
    let _ = unless_cut(ticket, tokio::time::timeout(DRAIN_TIMEOUT, drained)).await;
    written
}

/// Splices a device tunnel after labgate wrote its `101`: WebSocket binary messages from
/// the client become bytes to `device`, bytes from `device` become binary messages.
/// Returns when either side ends or the turn ends.
pub async fn tunnel(
    session: &mut ServerSession,
    device: TcpStream,
    ticket: &Ticket,
    client: Option<&std::net::TcpStream>,
) -> Outcome {
    let mut ws = ServerConn::new();
    let mut device = device;
    let (dr, mut dw) = device.split();
    // Allocated when the device has something to read, handed on as the frame right
    // after (its header goes into the room left in front): an idle tunnel holds no read
    // buffer, and device bytes are not copied on their way to the client.
    let mut buf = BytesMut::new();
    let mut pending = Pending::default();
    let mut to_remote = 0u64;
    let mut to_client_n = 0u64;
    let done = |end, to_remote, to_client| Outcome {
        end,
        to_remote,
        to_client,
    };
    loop {
        if let Some(reason) = ticket.cut_reason() {
            let end = finish_cut(session, Some(&mut ws), reason, client).await;
            return done(end, to_remote, to_client_n);
        }
        // What the client sent so far, in order, as far as the queue has room.
        while pending.has_room() {
            match ws.next_data() {
                None => break,
                Some(Event::Data(data)) => pending.push(data),
                Some(Event::Closed { code, by_client }) => {
                    let _ = to_client(session, ticket, ws.take_outbound()).await;
                    if by_client {
                        to_remote += drain(&mut pending, &mut dw, ticket).await;
                    }
                    let end = if by_client {
                        End::ClientClosed
                    } else {
                        End::Protocol(code)
                    };
                    return done(end, to_remote, to_client_n);
                }
            }
        }
        // Pongs and the like.
        match to_client(session, ticket, ws.take_outbound()).await {
            Ok(()) => {}
            Err(Some(end)) => return done(end, to_remote, to_client_n),
            Err(None) => continue,
        }
        let next = pending.gather();
        tokio::select! {
            biased;
            _ = ticket.cut_notified() => continue,
            wrote = write_gathered(&mut dw, &next), if !next.is_empty() => match wrote {
                Ok(n) if n > 0 => {
                    pending.written(n);
                    to_remote += n as u64;
                }
                _ if ticket.is_cut() => continue,
                _ => {
                    ws.close(1011, "device write failed");
                    let _ = to_client(session, ticket, ws.take_outbound()).await;
                    return done(End::RemoteError, to_remote, to_client_n);
                }
            },
            read = session.read_request_body(), if pending.has_room() => match read {
                Ok(Some(bytes)) => ws.feed_bytes(bytes),
                Ok(None) | Err(_) => {
                    to_remote += drain(&mut pending, &mut dw, ticket).await;
                    return done(End::ClientGone, to_remote, to_client_n);
                }
            },
            ready = dr.readable() => match ready.and_then(|()| {
                if buf.is_empty() {
                    buf.reserve(HEADER_ROOM + CHUNK);
                    buf.put_bytes(0, HEADER_ROOM);
                }
                dr.try_read_buf(&mut buf)
            }) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                // The cut shuts the device socket down: its EOF is the cut's.
                Ok(0) | Err(_) if ticket.is_cut() => continue,
                Ok(0) => {
                    ws.close(1000, "device closed the connection");
                    let _ = to_client(session, ticket, ws.take_outbound()).await;
                    return done(End::RemoteClosed, to_remote, to_client_n);
                }
                Ok(n) => {
                    let frame = ws.frame_in_place(std::mem::take(&mut buf)).unwrap_or_default();
                    let sent = match to_client(session, ticket, ws.take_outbound()).await {
                        Ok(()) => to_client(session, ticket, frame).await,
                        Err(e) => Err(e),
                    };
                    match sent {
                        Ok(()) => to_client_n += n as u64,
                        Err(Some(end)) => return done(end, to_remote, to_client_n),
                        Err(None) => continue,
                    }
                }
                Err(_) => {
                    ws.close(1011, "device connection failed");
                    let _ = to_client(session, ticket, ws.take_outbound()).await;
                    return done(End::RemoteError, to_remote, to_client_n);
                }
            },
        }
    }
}

/// Splices raw bytes between the client (after labgate relayed an upstream's `101`) and
/// that upstream, until either side ends or the turn ends.
pub async fn raw<S: AsyncRead + AsyncWrite + Unpin>(
    session: &mut ServerSession,
    upstream: S,
    ticket: &Ticket,
    client: Option<&std::net::TcpStream>,
) -> Outcome {
    let (mut ur, mut uw) = tokio::io::split(upstream);
    let mut buf = BytesMut::with_capacity(CHUNK);
    let mut pending = Pending::default();
    let mut to_remote = 0u64;
    let mut to_client_n = 0u64;
    let done = |end, to_remote, to_client| Outcome {
        end,
        to_remote,
        to_client,
    };
    loop {
        if let Some(reason) = ticket.cut_reason() {
            let end = finish_cut(session, None, reason, client).await;
            return done(end, to_remote, to_client_n);
        }
        buf.reserve(CHUNK);
        let next = pending.front();
        tokio::select! {
            biased;
            _ = ticket.cut_notified() => continue,
            // One write: cancel-safe, so a lost race never writes the same bytes twice.
            wrote = uw.write(next.as_deref().unwrap_or_default()), if next.is_some() => match wrote {
                Ok(n) if n > 0 => {
                    pending.written(n);
                    to_remote += n as u64;
                    // The upgraded stream may buffer: push out what it took.
                    if let Some(Err(_)) = unless_cut(ticket, uw.flush()).await {
                        return done(End::RemoteError, to_remote, to_client_n);
                    }
                }
                _ if ticket.is_cut() => continue,
                _ => return done(End::RemoteError, to_remote, to_client_n),
            },
            read = session.read_request_body(), if pending.has_room() => match read {
                Ok(Some(bytes)) => pending.push(bytes),
                Ok(None) | Err(_) => {
                    to_remote += drain(&mut pending, &mut uw, ticket).await;
                    return done(End::ClientGone, to_remote, to_client_n);
                }
            },
            read = ur.read_buf(&mut buf) => match read {
                Ok(0) | Err(_) if ticket.is_cut() => continue,
                Ok(0) => return done(End::RemoteClosed, to_remote, to_client_n),
                Ok(n) => match to_client(session, ticket, buf.split().freeze()).await {
                    Ok(()) => to_client_n += n as u64,
                    Err(Some(end)) => return done(end, to_remote, to_client_n),
                    Err(None) => continue,
                },
                Err(_) => return done(End::RemoteError, to_remote, to_client_n),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cut::Registry;
    use crate::queue::SessionId;
    use crate::splice::{answer_tunnel, connect};
    use crate::tunnel::ws::accept_key;
    use futures_util::{SinkExt, StreamExt};
    use socket2::SockRef;
    use std::net::SocketAddr;
    use std::time::Instant;
    use tokio::net::TcpListener;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::Message;

    /// A device that echoes every byte, and counts connections.
    async fn echo_device() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    /// One labgate-side tunnel on a real pingora HTTP/1 session: accepts one client,
    /// answers its handshake and splices it to `device` until it ends.
    async fn serve_one(
        device: SocketAddr,
        ticket: Ticket,
    ) -> (SocketAddr, tokio::task::JoinHandle<Outcome>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (tcp, _) = l.accept().await.unwrap();
            let stream = pingora::protocols::l4::stream::Stream::from(tcp);
            let mut session = ServerSession::new_http1(Box::new(stream));
            assert!(session.read_request().await.unwrap());
            let req = session.req_header();
            let accept = accept_key(&req.method, req.version, &req.headers).unwrap();
            let dev = connect(device, Duration::from_secs(5), Duration::from_secs(30))
                .await
                .unwrap();
            let form = crate::tunnel::ws::Form::WebSocket { accept };
            answer_tunnel(&mut session, &form, &[]).await.unwrap();
            tunnel(&mut session, dev, &ticket, None).await
        });
        (addr, task)
    }

    type Client = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

    async fn open(addr: SocketAddr) -> Client {
        let (ws, resp) = tokio_tungstenite::connect_async(format!("ws://{addr}/lab/tunnel/x:1"))
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 101);
        ws
    }

    async fn next(ws: &mut Client) -> Message {
        tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a message in time")
            .expect("not the end")
            .expect("no error")
    }

    #[tokio::test]
    async fn tunnel_round_trips_bytes_and_counts_them() {
        let mut reg = Registry::default();
        let ticket = reg.begin_tunnel(SessionId::random(), 1).unwrap();
        let (addr, task) = serve_one(echo_device().await, ticket).await;
        let mut ws = open(addr).await;
        let mut sent = Vec::new();
        let mut got = Vec::new();
        for i in 0..50u8 {
            let chunk = vec![i; 1000 + i as usize];
            sent.extend_from_slice(&chunk);
            ws.send(Message::binary(chunk)).await.unwrap();
        }
        while got.len() < sent.len() {
            match next(&mut ws).await {
                Message::Binary(b) => got.extend_from_slice(&b),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(got, sent);
        ws.send(Message::Ping(Bytes::from_static(b"hi")))
            .await
            .unwrap();
        assert_eq!(
            next(&mut ws).await,
            Message::Pong(Bytes::from_static(b"hi"))
        );
        ws.close(None).await.unwrap();
        let outcome = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(outcome.end, End::ClientClosed);
        assert_eq!(outcome.to_remote, sent.len() as u64);
        assert_eq!(outcome.to_client, sent.len() as u64);
    }

    /// A device that writes everything before it reads anything, with small socket
    /// buffers: labgate must keep reading it while its own writes to it wait, or both
    /// directions stall for good.
    #[tokio::test]
    async fn both_directions_full_at_once_do_not_deadlock() {
        const EACH_WAY: usize = 16 << 20;
        let (dev_addr, device) = crate::splice::testing::writes_before_it_reads(EACH_WAY).await;
        let mut reg = Registry::default();
        let ticket = reg.begin_tunnel(SessionId::random(), 1).unwrap();
        let (addr, task) = serve_one(dev_addr, ticket).await;
        let ws = open(addr).await;
        let (mut tx, mut rx) = ws.split();
        let sender = tokio::spawn(async move {
            for _ in 0..EACH_WAY / (1 << 20) {
                tx.send(Message::binary(vec![9u8; 1 << 20])).await.unwrap();
            }
            tx
        });
        let mut received = 0;
        while received < EACH_WAY {
            match tokio::time::timeout(Duration::from_secs(20), rx.next())
                .await
                .expect("no stall")
            {
                Some(Ok(Message::Binary(b))) => received += b.len(),
                other => panic!("{other:?}"),
            }
        }
        tokio::time::timeout(Duration::from_secs(20), device)
            .await
            .expect("the device got everything")
            .unwrap();
        let mut tx = sender.await.unwrap();
        tx.close().await.unwrap();
        let outcome = task.await.unwrap();
        assert_eq!(outcome.to_remote, EACH_WAY as u64);
        assert_eq!(outcome.to_client, EACH_WAY as u64);
    }

    /// Everything the client sent before its close reaches the device, even when the
    /// close arrives while earlier messages still wait for the device.
    #[tokio::test]
    async fn bytes_sent_before_the_close_all_reach_the_device() {
        const TOTAL: usize = 8 << 20;
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dev_addr = l.local_addr().unwrap();
        let device = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            SockRef::from(&s).set_recv_buffer_size(64 * 1024).unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            got.len()
        });
        let mut reg = Registry::default();
        let ticket = reg.begin_tunnel(SessionId::random(), 1).unwrap();
        let (addr, task) = serve_one(dev_addr, ticket).await;
        let mut ws = open(addr).await;
        for _ in 0..TOTAL / (64 * 1024) {
            ws.feed(Message::binary(vec![1u8; 64 * 1024]))
                .await
                .unwrap();
        }
        ws.close(None).await.unwrap();
        let outcome = task.await.unwrap();
        assert_eq!(outcome.end, End::ClientClosed);
        assert_eq!(outcome.to_remote, TOTAL as u64);
        let got = tokio::time::timeout(Duration::from_secs(20), device)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, TOTAL);
    }

    #[tokio::test]
    async fn cut_closes_with_4001_and_the_reason_at_once() {
        let mut reg = Registry::default();
        let id = SessionId::random();
        let ticket = reg.begin_tunnel(id, 1).unwrap();
        // The device leg registered like the proxy does it.
        let dev_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dev_addr = dev_listener.local_addr().unwrap();
        let (addr, task) = serve_one(dev_addr, ticket.clone()).await;
        let client = tokio::spawn(async move { open(addr).await });
        let (mut device_side, _) = dev_listener.accept().await.unwrap();
        let mut ws = client.await.unwrap();
        ws.send(Message::binary(b"x".to_vec())).await.unwrap();
        let mut one = [0u8; 1];
        device_side.read_exact(&mut one).await.unwrap();
        let started = Instant::now();
        assert_eq!(reg.cut_because(&id, "kicked"), 1);
        match next(&mut ws).await {
            Message::Close(Some(f)) => {
                assert_eq!(f.code, CloseCode::Library(4001));
                assert_eq!(f.reason.as_str(), "session ended: kicked");
            }
            other => panic!("{other:?}"),
        }
        println!("tunnel closed {:?} after the cut", started.elapsed());
        let outcome = task.await.unwrap();
        assert_eq!(outcome.end, End::SessionEnded("kicked"));
        // The device leg is gone too.
        let n = tokio::time::timeout(Duration::from_secs(5), device_side.read(&mut one))
            .await
            .unwrap();
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    }

    #[tokio::test]
    async fn device_close_ends_the_tunnel_with_1000() {
        let mut reg = Registry::default();
        let ticket = reg.begin_tunnel(SessionId::random(), 1).unwrap();
        let dev_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dev_addr = dev_listener.local_addr().unwrap();
        let (addr, task) = serve_one(dev_addr, ticket).await;
        let client = tokio::spawn(async move { open(addr).await });
        let (mut device_side, _) = dev_listener.accept().await.unwrap();
        let mut ws = client.await.unwrap();
        device_side.write_all(b"bye").await.unwrap();
        drop(device_side);
        assert_eq!(next(&mut ws).await, Message::binary(b"bye".to_vec()));
        match next(&mut ws).await {
            Message::Close(Some(f)) => assert_eq!(f.code, CloseCode::Normal),
            other => panic!("{other:?}"),
        }
        assert_eq!(task.await.unwrap().end, End::RemoteClosed);
    }

    #[tokio::test]
    async fn text_from_the_client_closes_1003() {
        let mut reg = Registry::default();
        let ticket = reg.begin_tunnel(SessionId::random(), 1).unwrap();
        let (addr, task) = serve_one(echo_device().await, ticket).await;
        let mut ws = open(addr).await;
        ws.send(Message::text("ls -l")).await.unwrap();
        match next(&mut ws).await {
            Message::Close(Some(f)) => assert_eq!(f.code, CloseCode::Unsupported),
            other => panic!("{other:?}"),
        }
        assert_eq!(task.await.unwrap().end, End::Protocol(1003));
    }
}

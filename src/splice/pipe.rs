//! The relay of a raw tunnel on plain TCP (`Upgrade: labgate-tcp`, no TLS on the client
//! leg): bytes go from one socket to the other through a pipe with `splice(2)`, so they
//! never enter labgate's memory. The WebSocket form cannot do this (RFC 6455 makes the
//! client mask every byte, so each one must be read and unmasked), which is why the raw
//! form exists: bulk transfers (images, captures) cost the gateway about a third of the CPU.
//!
//! Why hand-written and not a crate: `tokio-splice` (the one maintained-looking crate,
//! ~270 lines, last release 2024) copies until both sides end and returns the byte
//! counts only then; a tunnel has to stop at once on the turn's cut, count what moved
//! either way, and half-close each direction on its own.
//!
//! Each direction holds a pipe only while bytes are on their way (taken when its source
//! has something, dropped when the source has nothing more): an idle tunnel holds none.
//! A direction fills its pipe only when it is empty, so `EAGAIN` from the source means
//! the source is empty, never that the pipe is full, and readiness is never cleared
//! wrongly. Owns byte moving only; who may connect where is decided before this runs.

use std::io::{self, ErrorKind};
use std::os::fd::OwnedFd;

use nix::fcntl::{fcntl, splice, FcntlArg, OFlag, SpliceFFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::{End, Outcome};
use crate::cut::Ticket;

/// The pipe size asked for: a bulk transfer then takes one `splice` in and one out per
/// MiB instead of per 64 KiB (a pipe holds references to the socket's pages, not
/// copies). Best effort: past the per-user pipe budget (`/proc/sys/fs/pipe-user-pages-soft`)
/// the kernel refuses and the pipe keeps its default 64 KiB.
const PIPE_SIZE: usize = 1 << 20;

/// A pipe of its own for one direction, and how much it holds.
fn new_pipe() -> nix::Result<((OwnedFd, OwnedFd), usize)> {
    let (r, w) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
    let _ = fcntl(&w, FcntlArg::F_SETPIPE_SZ(PIPE_SIZE as i32));
    let size = fcntl(&w, FcntlArg::F_GETPIPE_SZ).map_or(64 * 1024, |n| n.max(4096) as usize);
    Ok(((r, w), size))
}

/// One direction: from `src` to `dst` through its own pipe.
#[derive(Default)]
struct Way {
    pipe: Option<(OwnedFd, OwnedFd)>,
    /// What the pipe holds at most.
    size: usize,
    /// Bytes in the pipe, not yet written to `dst`.
    queued: usize,
    /// `src` ended (its FIN was passed on as a shutdown of `dst`'s writing side).
    ended: bool,
    moved: u64,
}

/// What one step of a direction found.
enum Step {
    /// Bytes moved, or nothing to do until the socket is ready again.
    Going,
    /// The source ended: pass the FIN on.
    SourceEnded,
    /// A socket (or the pipe) failed: the tunnel ends so.
    Failed(End),
}

fn flags() -> SpliceFFlags {
    SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == ErrorKind::WouldBlock
}

impl Way {
    /// Moves what `src` has into the (empty) pipe; called when `src` is readable.
    /// `failed` says how the tunnel ends when `src` fails.
    fn fill(&mut self, src: &TcpStream, failed: End) -> Step {
        if self.pipe.is_none() {
            match new_pipe() {
                Ok((p, size)) => (self.pipe, self.size) = (Some(p), size),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot make a pipe for a raw tunnel");
                    return Step::Failed(End::RemoteError);
                }
            }
        }
        let Some((_, w)) = &self.pipe else {
            return Step::Failed(failed);
        };
        match src.try_io(Interest::READABLE, || {
            splice(src, None, w, None, self.size, flags()).map_err(io::Error::from)
        }) {
            Ok(0) => Step::SourceEnded,
            Ok(n) => {
                self.queued = n;
                Step::Going
            }
            Err(e) if would_block(&e) => {
                // Nothing more to move: an idle direction holds no pipe.
                self.pipe = None;
                Step::Going
            }
            Err(_) => Step::Failed(failed),
        }
    }

    /// Moves what the pipe holds into `dst`; called when `dst` is writable. `failed`
    /// says how the tunnel ends when `dst` fails.
    fn drain(&mut self, dst: &TcpStream, failed: End) -> Step {
        let Some((r, _)) = &self.pipe else {
            return Step::Failed(failed);
        };
        match dst.try_io(Interest::WRITABLE, || {
            splice(r, None, dst, None, self.queued, flags()).map_err(io::Error::from)
        }) {
            Ok(n) => {
                self.queued -= n.min(self.queued);
                self.moved += n as u64;
                Step::Going
            }
            Err(e) if would_block(&e) => Step::Going,
            Err(_) => Step::Failed(failed),
        }
    }

    fn wants_source(&self) -> bool {
        !self.ended && self.queued == 0
    }
}

/// Shuts both sockets down: the end of a turn, or of the tunnel.
fn shut(client: &TcpStream, device: &TcpStream) {
    let _ = socket2::SockRef::from(client).shutdown(std::net::Shutdown::Both);
    let _ = socket2::SockRef::from(device).shutdown(std::net::Shutdown::Both);
}

/// Splices `client` (labgate's own duplicate of the client's plain TCP socket, after the
/// `101`) and `device` until both directions ended, one failed, or the turn ended (then
/// both sockets are shut down at once: the client sees its connection end).
/// `client_fin`: the client already sent its FIN (seen before the sockets took over).
pub async fn relay(
    client: TcpStream,
    device: TcpStream,
    ticket: &Ticket,
    client_fin: bool,
) -> Outcome {
    let mut up = Way::default();
    let mut down = Way::default();
    // Who sent the first FIN: the tunnel's end once the other side has sent its own.
    let mut first_fin = None;
    if client_fin {
        up.ended = true;
        first_fin = Some(End::ClientClosed);
        let _ = socket2::SockRef::from(&device).shutdown(std::net::Shutdown::Write);
    }
    let outcome = |end, up: &Way, down: &Way| Outcome {
        end,
        to_remote: up.moved,
        to_client: down.moved,
    };
    let (gone, broke) = (End::ClientGone, End::RemoteError);
    loop {
        if let Some(reason) = ticket.cut_reason() {
            shut(&client, &device);
            return outcome(End::SessionEnded(reason), &up, &down);
        }
        if let (true, true, Some(end)) = (up.ended, down.ended, first_fin) {
            return outcome(end, &up, &down);
        }
        // Writes first: a queued pipe is emptied before its source is read again.
        let (step, from_client) = tokio::select! {
            biased;
            _ = ticket.cut_notified() => continue,
            r = device.writable(), if up.queued > 0 => (r.map_or(Step::Failed(broke), |()| up.drain(&device, broke)), true),
            r = client.writable(), if down.queued > 0 => (r.map_or(Step::Failed(gone), |()| down.drain(&client, gone)), false),
            r = client.readable(), if up.wants_source() => (r.map_or(Step::Failed(gone), |()| up.fill(&client, gone)), true),
            r = device.readable(), if down.wants_source() => (r.map_or(Step::Failed(broke), |()| down.fill(&device, broke)), false),
        };
        match step {
            Step::Going => {}
            // A FIN is passed on as a shutdown of the other socket's sending side; the
            // other direction goes on until its own FIN.
            Step::SourceEnded => {
                let (way, dst, end) = if from_client {
                    (&mut up, &device, End::ClientClosed)
                } else {
                    (&mut down, &client, End::RemoteClosed)
                };
                way.ended = true;
                way.pipe = None;
                first_fin.get_or_insert(end);
                let _ = socket2::SockRef::from(dst).shutdown(std::net::Shutdown::Write);
            }
            // The cut shut a socket down under us: the loop's top says so.
            Step::Failed(_) if ticket.is_cut() => continue,
            Step::Failed(end) => {
                shut(&client, &device);
                return outcome(end, &up, &down);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cut::Registry;
    use crate::queue::SessionId;
    use crate::splice::{answer_tunnel, client_socket, connect, raw_tunnel, Relay};
    use crate::tunnel::ws::{form, Form};
    use pingora::protocols::http::ServerSession;
    use pingora::protocols::{GetSocketDigest, SocketDigest};
    use std::net::SocketAddr;
    use std::os::fd::AsRawFd;
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    const REQUEST: &[u8] = b"GET /lab/tunnel/x:1 HTTP/1.1\r\nHost: t\r\nUpgrade: labgate-tcp\r\nConnection: Upgrade\r\n\r\n";

    /// labgate's side of one raw tunnel on a real pingora HTTP/1 session over plain TCP
    /// (with the socket digest pingora's listener gives it): answers the `101` and
    /// relays to `device` until the end.
    async fn serve_one(
        device: SocketAddr,
        ticket: Ticket,
    ) -> (SocketAddr, tokio::task::JoinHandle<(Outcome, Relay)>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (tcp, _) = l.accept().await.unwrap();
            let fd = tcp.as_raw_fd();
            let mut stream = pingora::protocols::l4::stream::Stream::from(tcp);
            stream.set_socket_digest(SocketDigest::from_raw_fd(fd));
            let mut session = ServerSession::new_http1(Box::new(stream));
            assert!(session.read_request().await.unwrap());
            let req = session.req_header();
            let asked = form(&req.method, req.version, &req.headers).unwrap();
            assert_eq!(asked, Form::Raw);
            let dev = connect(device, Duration::from_secs(5), Duration::from_secs(30))
                .await
                .unwrap();
            let client = client_socket(&session);
            assert!(client.is_some(), "labgate holds its own copy of the socket");
            answer_tunnel(&mut session, &asked, &[]).await.unwrap();
            raw_tunnel(&mut session, dev, &ticket, client).await
        });
        (addr, task)
    }

    /// Opens a raw tunnel: the request (and `early` bytes in the same write, before the
    /// `101`), then reads the `101`'s head whole.
    async fn open(addr: SocketAddr, early: &[u8]) -> TcpStream {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(&[REQUEST, early].concat()).await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            assert_eq!(
                c.read(&mut b).await.unwrap(),
                1,
                "head ended early: {head:?}"
            );
            head.push(b[0]);
        }
        let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 101"), "{head}");
        assert!(head.contains("upgrade: labgate-tcp"), "{head}");
        c
    }

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    fn ticket() -> (Registry, SessionId, Ticket) {
        let mut reg = Registry::default();
        let id = SessionId::random();
        let ticket = reg.begin_tunnel(id, 1).unwrap();
        (reg, id, ticket)
    }

    #[tokio::test]
    async fn bytes_go_both_ways_in_order_and_each_fin_is_passed_on() {
        const TOTAL: usize = 4 << 20;
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dev_addr = l.local_addr().unwrap();
        // The device reads to the client's FIN, then answers and closes.
        let device = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            s.write_all(b"bye").await.unwrap();
            got
        });
        let (_reg, _id, ticket) = ticket();
        let (addr, task) = serve_one(dev_addr, ticket).await;
        // Bytes sent with the request, before the `101`: pingora has read them already.
        let mut c = open(addr, b"early:").await;
        let body = pattern(TOTAL);
        c.write_all(&body).await.unwrap();
        c.shutdown().await.unwrap();
        let mut back = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), c.read_to_end(&mut back))
            .await
            .expect("the device's answer and its FIN")
            .unwrap();
        assert_eq!(back, b"bye");
        let got = device.await.unwrap();
        assert_eq!(got.len(), TOTAL + 6);
        assert!(got.starts_with(b"early:") && got[6..] == body[..]);
        let (outcome, relay) = task.await.unwrap();
        assert_eq!(relay, Relay::Splice);
        assert_eq!(outcome.end, End::ClientClosed);
        assert_eq!(outcome.to_remote, TOTAL as u64 + 6);
        assert_eq!(outcome.to_client, 3);
    }

    #[tokio::test]
    async fn the_device_closing_first_reaches_the_client_as_its_end() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dev_addr = l.local_addr().unwrap();
        let device = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            s.write_all(b"motd\n").await.unwrap();
        });
        let (_reg, _id, ticket) = ticket();
        let (addr, task) = serve_one(dev_addr, ticket).await;
        let mut c = open(addr, b"").await;
        device.await.unwrap();
        let mut back = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut back))
            .await
            .expect("EOF after the device's bytes")
            .unwrap();
        assert_eq!(back, b"motd\n");
        drop(c);
        let (outcome, _) = tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the tunnel ends with the client")
            .unwrap();
        assert_eq!(outcome.end, End::RemoteClosed);
        assert_eq!(outcome.to_client, 5);
    }

    #[tokio::test]
    async fn both_directions_full_at_once_do_not_deadlock() {
        const EACH_WAY: usize = 16 << 20;
        let (dev_addr, device) = crate::splice::testing::writes_before_it_reads(EACH_WAY).await;
        let (_reg, _id, ticket) = ticket();
        let (addr, task) = serve_one(dev_addr, ticket).await;
        let c = open(addr, b"").await;
        let (mut r, mut w) = c.into_split();
        // And so does the client.
        let sender = tokio::spawn(async move {
            w.write_all(&vec![9u8; EACH_WAY]).await.unwrap();
            w
        });
        let mut got = vec![0u8; EACH_WAY];
        tokio::time::timeout(Duration::from_secs(30), r.read_exact(&mut got))
            .await
            .expect("no stall")
            .unwrap();
        assert!(got.iter().all(|b| *b == 7));
        tokio::time::timeout(Duration::from_secs(30), device)
            .await
            .expect("the device got everything")
            .unwrap();
        let w = sender.await.unwrap();
        drop((r, w));
        let (outcome, _) = task.await.unwrap();
        assert_eq!(outcome.to_remote, EACH_WAY as u64);
        assert_eq!(outcome.to_client, EACH_WAY as u64);
    }

    #[tokio::test]
    async fn the_cut_ends_both_sockets_at_once() {
        let dev_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dev_addr = dev_listener.local_addr().unwrap();
        let (mut reg, id, ticket) = ticket();
        let (addr, task) = serve_one(dev_addr, ticket).await;
        let client = tokio::spawn(async move { open(addr, b"").await });
        let (mut device_side, _) = dev_listener.accept().await.unwrap();
        let mut c = client.await.unwrap();
        c.write_all(b"x").await.unwrap();
        let mut one = [0u8; 1];
        device_side.read_exact(&mut one).await.unwrap();
        let started = Instant::now();
        assert_eq!(reg.cut_because(&id, "kicked"), 1);
        let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut one))
            .await
            .expect("the client's connection ends at once");
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
        println!("raw tunnel closed {:?} after the cut", started.elapsed());
        let (outcome, _) = task.await.unwrap();
        assert_eq!(outcome.end, End::SessionEnded("kicked"));
        assert_eq!(outcome.to_remote, 1);
        let n = tokio::time::timeout(Duration::from_secs(5), device_side.read(&mut one))
            .await
            .unwrap();
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    }

    #[tokio::test]
    async fn a_direction_holds_its_pipe_only_while_bytes_are_on_their_way() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut peer = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (src, _) = l.accept().await.unwrap();
        let l2 = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dst = TcpStream::connect(l2.local_addr().unwrap()).await.unwrap();
        let (mut sink, _) = l2.accept().await.unwrap();
        let mut way = Way::default();
        peer.write_all(b"hello").await.unwrap();
        src.readable().await.unwrap();
        assert!(matches!(way.fill(&src, End::ClientGone), Step::Going));
        assert_eq!(way.queued, 5);
        assert!(way.pipe.is_some());
        assert!(
            !way.wants_source(),
            "a pipe with bytes in it is not refilled"
        );
        dst.writable().await.unwrap();
        assert!(matches!(way.drain(&dst, End::RemoteError), Step::Going));
        assert_eq!((way.queued, way.moved), (0, 5));
        let mut got = [0u8; 5];
        sink.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
        // The source has nothing more: the pipe goes.
        assert!(matches!(way.fill(&src, End::ClientGone), Step::Going));
        assert!(way.pipe.is_none());
        // Its FIN is told apart from "nothing yet".
        drop(peer);
        src.readable().await.unwrap();
        assert!(matches!(way.fill(&src, End::ClientGone), Step::SourceEnded));
    }
}

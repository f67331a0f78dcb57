//! Cutting a session's live connections when its turn ends (contract §7, "cut on end").
//!
//! pingora has no API to abort another task's request (its issue #571), so labgate keeps,
//! per session, a [`Ticket`] for every forwarded request in flight and a duplicate of the
//! upstream socket each one is connected to (learned in `connected_to_upstream`). Ending
//! a session calls [`Registry::cut`]: every socket gets `shutdown(2)`, which wakes the
//! proxy task whatever it is waiting on (an idle WebSocket included); the task then
//! fails, pingora does not pool the connection, and the client's connection is closed.
//!
//! Why a duplicate (`dup(2)`) and not the fd number: once the request ends, pingora may
//! close its fd and the number can be reused by an unrelated socket; our duplicate keeps
//! referring to the same socket until we drop it, so a late cut can never hit a stranger.
//! Connections are also pooled per session (`HttpPeer::group_key`), so a socket of a cut
//! session is never reused by another session.
//!
//! Connections labgate splices itself (device tunnels, upgraded `/lab` connections) are
//! registered the same way, and their task is also woken ([`Ticket::cut_notified`]) with
//! the reason, so that it can tell the client why (WebSocket close 4001) before dropping
//! both legs. The shutdown of the registered socket happens under the lock, before the
//! next session can be promoted: the next holder never shares a device with this one.
//! Device tunnels are counted per session ([`Registry::begin_tunnel`]) for their limit.
//!
//! Owns only bookkeeping and the shutdown call; must be used under the same lock as the
//! queue, so that "session ended" and "request registered" cannot interleave.

use std::net::{Shutdown, TcpStream};
use std::os::fd::{BorrowedFd, RawFd};
use std::sync::{Arc, OnceLock};

use tokio::sync::Notify;

use crate::queue::{IdMap, SessionId};

/// The reason given to every connection still open when a shutdown's grace period is
/// over (the session itself goes on: it is in the store, or lost with the process).
pub const SHUTTING_DOWN: &str = "labgate shutting down";

/// Set once, when the session ends: why, and a wake-up for the task serving it.
#[derive(Debug, Default)]
struct CutFlag {
    reason: OnceLock<&'static str>,
    notify: Notify,
}

/// A forwarded request's registration. `is_cut` turns true when its session ends.
#[derive(Debug, Clone)]
pub struct Ticket {
    pub token: u64,
    cut: Arc<CutFlag>,
}

impl Ticket {
    pub fn is_cut(&self) -> bool {
        self.cut.reason.get().is_some()
    }

    /// Why the session ended (`deleted`, `kicked`...), once it has.
    pub fn cut_reason(&self) -> Option<&'static str> {
        self.cut.reason.get().copied()
    }

    /// Completes once the session has ended; cancel-safe.
    pub async fn cut_notified(&self) {
        // `notify_one` keeps a permit when nobody waits, so a cut between the check and
        // the wait is not missed.
        while !self.is_cut() {
            self.cut.notify.notified().await;
        }
    }
}

/// What a registration stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Request,
    Tunnel,
}

struct Entry {
    token: u64,
    kind: Kind,
    cut: Arc<CutFlag>,
    /// Our own duplicate of the upstream socket, once connected.
    socket: Option<TcpStream>,
}

/// The session already holds its maximum of open tunnels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyTunnels;

/// The request was cut before its upstream connection was registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlreadyCut;

#[derive(Default)]
pub struct Registry {
    sessions: IdMap<Vec<Entry>>,
    next_token: u64,
}

impl Registry {
    /// Registers a request of `id` that the gate just allowed.
    pub fn begin(&mut self, id: SessionId) -> Ticket {
        self.register(id, Kind::Request)
    }

    /// Registers a device tunnel of `id`, unless it already has `max` open.
    pub fn begin_tunnel(&mut self, id: SessionId, max: usize) -> Result<Ticket, TooManyTunnels> {
        if self.tunnels(&id) >= max {
            return Err(TooManyTunnels);
        }
        Ok(self.register(id, Kind::Tunnel))
    }

    fn register(&mut self, id: SessionId, kind: Kind) -> Ticket {
        self.next_token += 1;
        let cut = Arc::new(CutFlag::default());
        self.sessions.entry(id).or_default().push(Entry {
            token: self.next_token,
            kind,
            cut: cut.clone(),
            socket: None,
        });
        Ticket {
            token: self.next_token,
            cut,
        }
    }

    /// Records the upstream socket `fd` of a registered request (again on a retry).
    ///
    /// `fd` must be an open socket for the duration of the call; pingora guarantees that
    /// inside `connected_to_upstream`.
    pub fn attach(&mut self, id: &SessionId, token: u64, fd: RawFd) -> Result<(), AlreadyCut> {
        let entry = self
            .sessions
            .get_mut(id)
            .and_then(|v| v.iter_mut().find(|e| e.token == token))
            .ok_or(AlreadyCut)?;
        // SAFETY: the caller passes an fd that is open for the duration of this call; we
        // only borrow it to duplicate it and never use the borrowed number afterwards.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        match borrowed.try_clone_to_owned() {
            Ok(owned) => entry.socket = Some(TcpStream::from(owned)),
            Err(e) => {
                // Out of fds: the request goes on, but could not be cut at the socket;
                // its body filters still see the flag.
                tracing::warn!(error = %e, "cannot duplicate an upstream socket");
            }
        }
        Ok(())
    }

    /// A request is over: forget it and close our duplicate.
    pub fn end(&mut self, id: &SessionId, token: u64) {
        if let Some(entries) = self.sessions.get_mut(id) {
            entries.retain(|e| e.token != token);
            if entries.is_empty() {
                self.sessions.remove(id);
            }
        }
    }

    /// Cuts every request of `id`; returns how many.
    pub fn cut(&mut self, id: &SessionId) -> usize {
        self.cut_because(id, "ended")
    }

    /// Cuts every request and tunnel of `id`, telling their tasks `reason`; returns how
    /// many.
    pub fn cut_because(&mut self, id: &SessionId, reason: &'static str) -> usize {
        let Some(entries) = self.sessions.remove(id) else {
            return 0;
        };
        for e in &entries {
            // Set before the shutdown: a task woken by the dead socket sees why.
            let _ = e.cut.reason.set(reason);
            if let Some(socket) = &e.socket {
                // ENOTCONN (peer already gone) is fine: the connection is dead either way.
                let _ = socket.shutdown(Shutdown::Both);
            }
            e.cut.notify.notify_one();
        }
        entries.len()
    }

    /// Cuts every request and tunnel of every session (a shutdown whose grace period is
    /// over), telling their tasks `reason`; returns how many.
    pub fn cut_all(&mut self, reason: &'static str) -> usize {
        let ids: Vec<SessionId> = self.sessions.keys().copied().collect();
        ids.iter().map(|id| self.cut_because(id, reason)).sum()
    }

    /// Requests (tunnels included) in flight for `id`.
    pub fn count(&self, id: &SessionId) -> usize {
        self.sessions.get(id).map_or(0, Vec::len)
    }

    /// Open device tunnels of `id`.
    pub fn tunnels(&self, id: &SessionId) -> usize {
        self.sessions
            .get(id)
            .map_or(0, |v| v.iter().filter(|e| e.kind == Kind::Tunnel).count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (server, _) = l.accept().unwrap();
        (client, server)
    }

    #[test]
    fn cut_shuts_the_socket_down_for_both_ends() {
        let mut r = Registry::default();
        let id = SessionId::random();
        let t = r.begin(id);
        let (mut ours, mut theirs) = pair();
        r.attach(&id, t.token, ours.as_raw_fd()).unwrap();
        assert!(!t.is_cut());
        assert_eq!(r.cut(&id), 1);
        assert!(t.is_cut());
        theirs
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        ours.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 8];
        // The far end sees EOF; a reader blocked on our end wakes with EOF too.
        assert_eq!(theirs.read(&mut buf).unwrap(), 0);
        assert_eq!(ours.read(&mut buf).unwrap(), 0);
        assert_eq!(r.count(&id), 0);
    }

    #[test]
    fn attach_after_cut_is_refused_and_end_forgets() {
        let mut r = Registry::default();
        let id = SessionId::random();
        let t1 = r.begin(id);
        let t2 = r.begin(id);
        assert_eq!(r.count(&id), 2);
        r.end(&id, t1.token);
        assert_eq!(r.count(&id), 1);
        assert_eq!(r.cut(&id), 1);
        let (ours, _theirs) = pair();
        assert_eq!(r.attach(&id, t2.token, ours.as_raw_fd()), Err(AlreadyCut));
        assert_eq!(r.cut(&id), 0);
    }

    #[test]
    fn tunnels_are_limited_per_session_and_told_why_they_end() {
        let mut r = Registry::default();
        let a = SessionId::random();
        let b = SessionId::random();
        let _req = r.begin(a);
        let t1 = r.begin_tunnel(a, 2).unwrap();
        let t2 = r.begin_tunnel(a, 2).unwrap();
        assert_eq!(r.begin_tunnel(a, 2).unwrap_err(), TooManyTunnels);
        assert!(r.begin_tunnel(b, 2).is_ok(), "the limit is per session");
        assert_eq!((r.tunnels(&a), r.count(&a)), (2, 3));
        r.end(&a, t2.token);
        assert_eq!(r.tunnels(&a), 1);
        assert_eq!(t1.cut_reason(), None);
        assert_eq!(r.cut_because(&a, "kicked"), 2);
        assert_eq!(t1.cut_reason(), Some("kicked"));
        assert_eq!(r.tunnels(&a), 0);
    }

    #[test]
    fn cut_all_reaches_every_session() {
        let mut r = Registry::default();
        let (a, b) = (SessionId::random(), SessionId::random());
        let ta = r.begin_tunnel(a, 1).unwrap();
        let tb = r.begin(b);
        assert_eq!(r.cut_all(SHUTTING_DOWN), 2);
        assert_eq!(ta.cut_reason(), Some(SHUTTING_DOWN));
        assert_eq!(tb.cut_reason(), Some(SHUTTING_DOWN));
        assert_eq!((r.count(&a), r.count(&b)), (0, 0));
        assert_eq!(r.cut_all(SHUTTING_DOWN), 0);
    }

    #[tokio::test]
    async fn cut_wakes_a_waiting_task_and_a_late_one() {
        let mut r = Registry::default();
        let id = SessionId::random();
        let t = r.begin_tunnel(id, 1).unwrap();
        let waiter = {
            let t = t.clone();
            tokio::spawn(async move { t.cut_notified().await })
        };
        tokio::task::yield_now().await;
        r.cut_because(&id, "deleted");
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .unwrap();
        // Already cut: returns at once.
        tokio::time::timeout(Duration::from_secs(5), t.cut_notified())
            .await
            .expect("no wait after the cut");
    }

    #[test]
    fn ended_request_socket_is_untouched_by_a_later_cut() {
        let mut r = Registry::default();
        let id = SessionId::random();
        let t = r.begin(id);
        let (ours, mut theirs) = pair();
        r.attach(&id, t.token, ours.as_raw_fd()).unwrap();
        r.end(&id, t.token);
        assert_eq!(r.cut(&id), 0);
        // Still connected: a write from our side arrives.
        use std::io::Write;
        (&ours).write_all(b"hi").unwrap();
        let mut buf = [0u8; 2];
        theirs.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hi");
    }
}

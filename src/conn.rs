//! Downstream connections: how many may be open, and how long one may sit idle or dribble
//! its request header.
//!
//! pingora 0.9.1 leaves both open: after a request, HTTP/1.1 keep-alive becomes infinite
//! (`respect_keepalive`), and its only read timeouts apply per read, so a client that
//! sends one header byte a minute is never closed. [`Guarded`] wraps the pingora proxy
//! app and serves HTTP/1.x itself (the same loop as the HTTP/1 branch of pingora's
//! blanket `ServerApp` impl; labgate offers no h2c, and its HTTPS listener offers only
//! HTTP/1.1 by ALPN), adding:
//! - a cap on open connections, in total and per client address ([`Slots`]; a trusted
//!   proxy's address counts towards the total only), answered `503`/`429` and closed;
//! - a keep-alive idle timeout: between requests, the first byte of the next request
//!   must come within `keepalive_timeout`;
//! - a request-header timeout: from accept (or from that first byte) to a complete
//!   header, `header_timeout`. The connection's stream is wrapped ([`Clocked`]) to tell
//!   its [`HeaderClock`] when the first byte of a kept-alive request came; the proxy
//!   tells it when the header has been read ([`header_read`], from
//!   `ProxyHttp::early_request_filter`, which pingora calls right after reading it).
//!   While it waits for that byte, pingora is already reading the request; one watch a
//!   connection, not a timer a request, enforces both limits ([`HeaderClock::watch`]).
//!
//! The watch's timers are pingora's (`pingora_timeout`'s shared 10 ms ticks on its own timer
//! thread), not tokio's: a tokio timer armed per request makes tokio wake its own driver
//! through an eventfd whenever the new deadline is the earliest (one `write(2)` and an
//! extra `epoll_wait` return per request or two, seen with `perf record -e
//! syscalls:sys_enter_write`); pingora arms its own read and write timeouts the same way.
//!
//! TCP keepalive on accepted sockets is pingora's own (`TcpSocketOptions`, see `server`).
//! Must never look at a request: policy on requests lives in `proxy` and below.

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use ipnet::IpNet;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora::prelude::fast_timeout::fast_sleep;
use pingora::protocols::http::ServerSession;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;

use crate::limits;

/// How long a refused connection may take to accept its one-line answer.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// The connection limits of `[server]`.
#[derive(Debug, Clone)]
pub struct ConnLimits {
    pub keepalive_timeout: Duration,
    pub header_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_client: usize,
    pub trusted_proxies: Vec<IpNet>,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnRefusal {
    /// `max_connections` reached.
    Total,
    /// `max_connections_per_client` reached for this address.
    PerClient,
}

impl ConnRefusal {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnRefusal::Total => "total",
            ConnRefusal::PerClient => "per_client",
        }
    }

    /// The whole answer, written raw: no request has been read yet.
    fn answer(self) -> &'static [u8] {
        match self {
            ConnRefusal::Total => b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: 34\r\nretry-after: 1\r\nconnection: close\r\n\r\n{\"detail\":\"Too many connections\"}\n",
            ConnRefusal::PerClient => b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\ncontent-length: 52\r\nretry-after: 1\r\nconnection: close\r\n\r\n{\"detail\":\"Too many connections from your address\"}\n",
        }
    }
}

/// Open-connection counts (pure: no I/O).
#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_client: HashMap<IpAddr, usize>,
}

/// The connection caps, shared by every connection of one listener service.
#[derive(Debug)]
pub struct Slots {
    max_total: usize,
    max_per_client: usize,
    trusted: Vec<IpNet>,
    counts: Mutex<Counts>,
}

/// One admitted connection; gives its slot back when dropped.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<Slots>,
    client: Option<IpAddr>,
}

impl Slots {
    pub fn new(limits: &ConnLimits) -> Arc<Slots> {
        Arc::new(Slots {
            max_total: limits.max_connections,
            max_per_client: limits.max_connections_per_client,
            trusted: limits.trusted_proxies.clone(),
            counts: Mutex::default(),
        })
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a connection from `peer` (`None`: not an IP peer), or says why not.
    pub fn admit(self: &Arc<Self>, peer: Option<IpAddr>) -> Result<Slot, ConnRefusal> {
        // A trusted proxy carries many clients: it counts towards the total only.
        let client = peer
            .filter(|p| !limits::is_trusted(*p, &self.trusted))
            .map(limits::client_key);
        let mut counts = self.counts();
        if counts.total >= self.max_total {
            return Err(ConnRefusal::Total);
        }
        if let Some(c) = client {
            let n = counts.per_client.entry(c).or_insert(0);
            if *n >= self.max_per_client {
                return Err(ConnRefusal::PerClient);
            }
            *n += 1;
        }
        counts.total += 1;
        Ok(Slot {
            slots: self.clone(),
            client,
        })
    }

    /// Open connections now.
    pub fn open(&self) -> usize {
        self.counts().total
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.slots.counts();
        counts.total = counts.total.saturating_sub(1);
        if let Some(c) = self.client {
            if let Some(n) = counts.per_client.get_mut(&c) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    counts.per_client.remove(&c);
                }
            }
        }
    }
}

/// One connection's request clock: when the current request began, when its first byte
/// came on a kept-alive connection (seen by the connection's [`Clocked`] stream) and
/// whether its header has been read (said by the proxy, see [`header_read`]). One per
/// connection, reset per request, watched by one long-lived [`HeaderClock::watch`]:
/// nothing is allocated and no timer is armed per request.
#[derive(Debug)]
struct HeaderClock {
    keepalive: Duration,
    header: Duration,
    /// The origin of the times below, which are nanoseconds after it, plus one (0: none).
    born: Instant,
    /// When the current request began: accept, or the end of the one before.
    started: AtomicU64,
    /// The current request is a kept-alive one: its first byte is still to come.
    kept_alive: AtomicBool,
    /// Set while a kept-alive connection waits for its next request: the next byte read
    /// is that request's first.
    armed: AtomicBool,
    /// When that byte came.
    first_byte: AtomicU64,
    /// The current request's header is complete: its timeouts no longer apply.
    read: AtomicBool,
}

/// Which limit a request broke (the `reason` counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expired {
    Keepalive,
    Header,
}

impl Expired {
    fn as_str(self) -> &'static str {
        match self {
            Expired::Keepalive => "keepalive_timeout",
            Expired::Header => "header_timeout",
        }
    }
}

/// What the clock says now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Limit {
    /// A limit is broken.
    Broken(Expired),
    /// Nothing can be broken before this.
    Until(Instant),
    /// The header is read: no limit applies until the next request begins.
    None,
}

impl HeaderClock {
    fn new(keepalive: Duration, header: Duration) -> HeaderClock {
        HeaderClock {
            keepalive,
            header,
            born: Instant::now(),
            started: AtomicU64::new(0),
            kept_alive: AtomicBool::new(false),
            armed: AtomicBool::new(false),
            first_byte: AtomicU64::new(0),
            read: AtomicBool::new(false),
        }
    }

    fn stamp(&self, at: Instant) -> u64 {
        let nanos = at.saturating_duration_since(self.born).as_nanos();
        u64::try_from(nanos).unwrap_or(u64::MAX - 1) + 1
    }

    fn at(&self, stamp: u64) -> Option<Instant> {
        stamp
            .checked_sub(1)
            .map(|n| self.born + Duration::from_nanos(n))
    }

    /// A new request begins now; `kept_alive`: on a connection that served one already,
    /// so its first byte is still to come.
    fn start(&self, kept_alive: bool) {
        self.started
            .store(self.stamp(Instant::now()), Ordering::Release);
        self.first_byte.store(0, Ordering::Release);
        self.kept_alive.store(kept_alive, Ordering::Release);
        self.read.store(false, Ordering::Release);
        self.armed.store(kept_alive, Ordering::Release);
    }

    /// The request header is complete: the header timeout no longer applies.
    fn header_read(&self) {
        self.read.store(true, Ordering::Release);
    }

    /// Some bytes were read from the connection.
    fn bytes_read(&self) {
        if self.armed.load(Ordering::Relaxed) && self.armed.swap(false, Ordering::AcqRel) {
            self.first_byte
                .store(self.stamp(Instant::now()), Ordering::Release);
        }
    }

    /// The current request's limits at `now`: on a kept-alive connection, its first
    /// byte within `keepalive` of its start; then a complete header within `header` of
    /// that byte (of its start on a new connection).
    fn limit(&self, now: Instant) -> Limit {
        if self.read.load(Ordering::Acquire) {
            return Limit::None;
        }
        let Some(started) = self.at(self.started.load(Ordering::Acquire)) else {
            return Limit::None;
        };
        let first_byte = self.at(self.first_byte.load(Ordering::Acquire));
        let (deadline, why) = match (self.kept_alive.load(Ordering::Acquire), first_byte) {
            (false, _) => (started + self.header, Expired::Header),
            (true, Some(at)) => (at + self.header, Expired::Header),
            (true, None) => (started + self.keepalive, Expired::Keepalive),
        };
        if now >= deadline {
            Limit::Broken(why)
        } else {
            Limit::Until(deadline)
        }
    }

    /// Resolves when the connection's current request breaks a limit. Lives as long as
    /// the connection: it looks at the clock at least every `min(keepalive, header)`, and
    /// no request's limit can come sooner after its start, so a timer armed for an
    /// earlier request is never late for a later one (usually the header is read long
    /// before it rings, and one timer serves many requests).
    async fn watch(&self) -> Expired {
        let tick = self.keepalive.min(self.header);
        loop {
            let now = Instant::now();
            let next = match self.limit(now) {
                Limit::Broken(why) => return why,
                Limit::Until(at) => at.min(now + tick),
                Limit::None => now + tick,
            };
            sleep_until(next).await;
        }
    }
}

/// pingora's timer (see the module docs) until `at`.
async fn sleep_until(at: Instant) {
    fast_sleep(at.saturating_duration_since(Instant::now())).await
}

/// The proxy has read a request header from `stream` (the downstream session's): its
/// connection's clock, if it has one, stops the header timeout.
pub fn header_read(stream: Option<&Stream>) {
    if let Some(clocked) = stream.and_then(|s| (**s).as_any().downcast_ref::<Clocked>()) {
        clocked.clock.header_read();
    }
}

/// A connection's stream, telling its [`HeaderClock`] when bytes come; the rest is the
/// wrapped stream's own. It replaces a 1-byte peek (with its own timer, a buffer and a
/// `recv`) before each kept-alive request.
#[derive(Debug)]
struct Clocked {
    inner: Stream,
    clock: Arc<HeaderClock>,
}

impl AsyncRead for Clocked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut *self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.clock.bytes_read();
        }
        polled
    }
}

impl AsyncWrite for Clocked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for Clocked {
    async fn shutdown(&mut self) {
        Shutdown::shutdown(&mut *self.inner).await
    }
}

impl UniqueID for Clocked {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Clocked {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Clocked {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Clocked {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for Clocked {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for Clocked {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

/// The gateway's pingora app wrapped with connection caps and timeouts.
pub struct Guarded<A> {
    inner: Arc<A>,
    slots: Arc<Slots>,
    limits: ConnLimits,
    /// Counts refusals and timeouts (`reason`).
    closed: prometheus::IntCounterVec,
}

impl<A> Guarded<A> {
    pub fn new(inner: A, limits: ConnLimits, closed: prometheus::IntCounterVec) -> Guarded<A> {
        Guarded {
            inner: Arc::new(inner),
            slots: Slots::new(&limits),
            limits,
            closed,
        }
    }

    fn count(&self, reason: &str) {
        self.closed.with_label_values(&[reason]).inc();
    }
}

fn peer_ip(stream: &Stream) -> Option<IpAddr> {
    let digest = stream.get_socket_digest()?;
    digest.peer_addr()?.as_inet().map(|a| a.ip())
}

#[async_trait]
impl<A> ServerApp for Guarded<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let _slot = match self.slots.admit(peer_ip(&stream)) {
            Ok(slot) => slot,
            Err(refusal) => {
                self.count(refusal.as_str());
                let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, async {
                    stream.write_all(refusal.answer()).await?;
                    stream.flush().await
                })
                .await;
                return None;
            }
        };
        if !matches!(stream.selected_alpn_proto(), None | Some(ALPN::H1)) {
            // The HTTPS listener offers HTTP/1.1 only; should it ever negotiate anything
            // else, pingora's own loop serves it (caps apply, these timeouts do not).
            return ServerApp::process_new(&self.inner, stream, shutdown).await;
        }
        let clock = Arc::new(HeaderClock::new(
            self.limits.keepalive_timeout,
            self.limits.header_timeout,
        ));
        let mut stream: Stream = Box::new(Clocked {
            inner: stream,
            clock: clock.clone(),
        });
        // One watch for the whole connection, counting what it finds before the close
        // (select! drops the session, closing the connection, before a branch's handler).
        let watch = async {
            let why = clock.watch().await;
            self.count(why.as_str());
        };
        tokio::pin!(watch);
        let mut settings: Option<HttpPersistentSettings> = None;
        let mut first = true;
        loop {
            // The keep-alive wait runs from here; the header clock from accept, or from
            // the first byte of a later request. pingora reads the request meanwhile
            // (and drops an idle connection itself when the service shuts down).
            clock.start(!first);
            let mut session = ServerSession::new_http1(stream);
            match settings.take() {
                Some(s) => s.apply_to_session(&mut session),
                None => {
                    // As pingora's own loop does for a new connection.
                    session.set_keepalive(if *shutdown.borrow() {
                        None
                    } else {
                        Some(self.limits.keepalive_timeout.as_secs().max(1))
                    });
                    session.set_keepalive_reuses_remaining(
                        self.inner
                            .server_options()
                            .and_then(|o| o.keepalive_request_limit),
                    );
                }
            }
            let reused = tokio::select! {
                reused = self.inner.process_new_http(session, shutdown) => reused,
                () = &mut watch => return None,
            };
            let (next, next_settings) = reused?.consume();
            stream = next;
            settings = next_settings;
            first = false;
        }
    }

    async fn cleanup(&self) {
        self.inner.http_cleanup().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per_client: usize) -> ConnLimits {
        ConnLimits {
            keepalive_timeout: Duration::from_secs(75),
            header_timeout: Duration::from_secs(20),
            max_connections: total,
            max_connections_per_client: per_client,
            trusted_proxies: vec!["10.0.0.1/32".parse().unwrap()],
        }
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn per_client_cap_refuses_only_that_client_and_frees_on_drop() {
        let slots = Slots::new(&limits(10, 2));
        let a1 = slots.admit(ip("192.0.2.1")).unwrap();
        let _a2 = slots.admit(ip("192.0.2.1")).unwrap();
        assert_eq!(
            slots.admit(ip("192.0.2.1")).unwrap_err(),
            ConnRefusal::PerClient
        );
        let _b = slots.admit(ip("192.0.2.2")).unwrap();
        drop(a1);
        let _a3 = slots.admit(ip("192.0.2.1")).unwrap();
        assert_eq!(slots.open(), 3);
    }

    #[test]
    fn total_cap_refuses_everyone() {
        let slots = Slots::new(&limits(2, 5));
        let _a = slots.admit(ip("192.0.2.1")).unwrap();
        let _b = slots.admit(ip("192.0.2.2")).unwrap();
        assert_eq!(
            slots.admit(ip("192.0.2.3")).unwrap_err(),
            ConnRefusal::Total
        );
    }

    #[test]
    fn ipv6_clients_count_per_64_and_trusted_proxies_only_in_the_total() {
        let slots = Slots::new(&limits(10, 1));
        let _a = slots.admit(ip("2001:db8:1:2::1")).unwrap();
        assert_eq!(
            slots.admit(ip("2001:db8:1:2::ffff")).unwrap_err(),
            ConnRefusal::PerClient
        );
        let _b = slots.admit(ip("2001:db8:1:3::1")).unwrap();
        let _p1 = slots.admit(ip("10.0.0.1")).unwrap();
        let _p2 = slots.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(slots.open(), 4);
    }

    #[test]
    fn the_clock_gives_a_kept_alive_request_keepalive_then_header_from_its_first_byte() {
        let ms = Duration::from_millis;
        let clock = HeaderClock::new(Duration::from_secs(75), Duration::from_secs(20));
        let born = |c: &HeaderClock, a: &AtomicU64| c.at(a.load(Ordering::Acquire)).unwrap();

        // A new connection: the header within 20 s of accept; bytes start no other clock.
        clock.start(false);
        let started = born(&clock, &clock.started);
        clock.bytes_read();
        assert_eq!(clock.first_byte.load(Ordering::Acquire), 0);
        let header_by = started + Duration::from_secs(20);
        assert_eq!(clock.limit(header_by - ms(1)), Limit::Until(header_by));
        assert_eq!(clock.limit(header_by), Limit::Broken(Expired::Header));
        clock.header_read();
        assert_eq!(
            clock.limit(header_by + Duration::from_secs(99)),
            Limit::None
        );

        // Kept alive: its first byte within 75 s, then the header within 20 s of it.
        clock.start(true);
        let started = born(&clock, &clock.started);
        let idle_by = started + Duration::from_secs(75);
        assert_eq!(clock.limit(idle_by - ms(1)), Limit::Until(idle_by));
        assert_eq!(clock.limit(idle_by), Limit::Broken(Expired::Keepalive));
        clock.bytes_read();
        let first = born(&clock, &clock.first_byte);
        assert!(first >= started);
        let header_by = first + Duration::from_secs(20);
        assert_eq!(clock.limit(header_by - ms(1)), Limit::Until(header_by));
        assert_eq!(clock.limit(header_by), Limit::Broken(Expired::Header));
        // Only the first byte counts.
        clock.bytes_read();
        assert_eq!(born(&clock, &clock.first_byte), first);
        clock.header_read();
        assert_eq!(clock.limit(header_by), Limit::None);
    }

    #[test]
    fn refusal_answers_carry_their_exact_length() {
        for r in [ConnRefusal::Total, ConnRefusal::PerClient] {
            let text = std::str::from_utf8(r.answer()).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            let len: usize = head
                .lines()
                .find_map(|l| l.trim_end().strip_prefix("content-length: "))
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(body.len(), len, "{text}");
            assert!(serde_json::from_str::<serde_json::Value>(body).is_ok());
        }
    }
}

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
//!   header, `header_timeout`. pingora signals "header read" by handing the per-request
//!   [`HeaderClock`] (put in as the connection's user context) to
//!   `ProxyHttp::on_connection_reuse`, which it calls right after reading the header.
//!
//! Both timers are pingora's (`pingora_timeout`'s shared 10 ms ticks on its own timer
//! thread), not tokio's: a tokio timer armed per request makes tokio wake its own driver
//! through an eventfd whenever the new deadline is the earliest (one `write(2)` and an
//! extra `epoll_wait` return per request or two, seen with `perf record -e
//! syscalls:sys_enter_write`); pingora arms its own read and write timeouts the same way.
//!
//! TCP keepalive on accepted sockets is pingora's own (`TcpSocketOptions`, see `server`).
//! Must never look at a request: policy on requests lives in `proxy` and below.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use ipnet::IpNet;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora::prelude::fast_timeout::{fast_sleep, fast_timeout};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Stream, ALPN};
use pingora::server::ShutdownWatch;
use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;

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

/// Disarms a request's header timeout once pingora has read the header.
#[derive(Debug, Default)]
pub struct HeaderClock {
    read: Notify,
}

impl HeaderClock {
    /// The request header is complete: the header timeout no longer applies.
    pub fn header_read(&self) {
        // `notify_one` keeps a permit, so a call before `expired` polls is not lost.
        self.read.notify_one();
    }

    /// Resolves at `deadline` unless the header was read before it.
    async fn expired(&self, deadline: tokio::time::Instant) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        tokio::select! {
            () = fast_sleep(left) => {}
            () = self.read.notified() => std::future::pending().await,
        }
    }
}

/// Hands a proxy request's user context to the clock it carries, if it is one.
pub fn header_read(user_context: Box<dyn std::any::Any + Send + Sync>) {
    if let Ok(clock) = user_context.downcast::<Arc<HeaderClock>>() {
        clock.header_read();
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
        let mut settings: Option<HttpPersistentSettings> = None;
        let mut first = true;
        loop {
            if !first && !self.wait_for_next_request(&mut stream, shutdown).await {
                return None;
            }
            // The header clock starts at accept, or at the first byte of a later request.
            let deadline = tokio::time::Instant::now() + self.limits.header_timeout;
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
            let clock = Arc::new(HeaderClock::default());
            session.set_connection_user_context(Some(Box::new(clock.clone())));
            let reused = tokio::select! {
                reused = self.inner.process_new_http(session, shutdown) => reused,
                () = clock.expired(deadline) => {
                    // Dropping the session closes the connection.
                    self.count("header_timeout");
                    return None;
                }
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

impl<A> Guarded<A> {
    /// Waits (at most the keep-alive timeout) for the first byte of the next request on a
    /// kept-alive connection; `false` when the connection should close instead.
    async fn wait_for_next_request(&self, stream: &mut Stream, shutdown: &ShutdownWatch) -> bool {
        // pingora's pipelining is off (labgate never enables it), so no part of the next
        // request is buffered in the persistent settings: the socket has it all.
        let mut shutdown = shutdown.clone();
        let mut byte = [0u8; 1];
        tokio::select! {
            peeked = fast_timeout(self.limits.keepalive_timeout, stream.try_peek(&mut byte)) => {
                match peeked {
                    Ok(Ok(_)) => true,
                    // Closed by the client, or an error: nothing to answer.
                    Ok(Err(_)) => false,
                    Err(_) => {
                        self.count("keepalive_timeout");
                        false
                    }
                }
            }
            _ = shutdown.changed() => false,
        }
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

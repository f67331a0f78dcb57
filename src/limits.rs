//! Abuse limits on `POST /session` (contract §4): the per-client token bucket, the queue
//! cap, the per-client cap on live sessions, which address a request counts against
//! (trusted proxies) and which clients are one (an IPv6 /64 is one client).
//!
//! Pure decisions: no I/O, no pingora. The token bucket is `governor`'s GCRA, which is
//! exactly a token bucket with `burst` tokens refilled one per `refill_every`; its clock
//! is a type parameter so tests drive time with `FakeRelativeClock`. Must never keep
//! unbounded per-client state: [`SessionLimiter::forget_idle`] drops full buckets.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use ipnet::IpNet;

use crate::config::{RateLimitConfig, MAX_BURST, MAX_REFILL_EVERY};

/// Why `POST /session` is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateRefusal {
    /// Over the client's rate; retry after this many whole seconds (at least 1).
    RateLimited { retry_after_secs: u64 },
    /// The queue holds `max_sessions`.
    QueueFull { retry_after_secs: u64 },
    /// Identity mode: the caller already holds `identity.max_sessions` live sessions.
    IdentityCap { live: usize, cap: usize },
    /// The client already holds `max_sessions_per_client` live sessions.
    ClientLimit { retry_after_secs: u64 },
}

impl CreateRefusal {
    /// The `reason` label of `labgate_session_create_rejected_total`.
    pub fn label(&self) -> &'static str {
        self.reason().as_str()
    }

    pub fn reason(&self) -> CreateRejection {
        match self {
            CreateRefusal::RateLimited { .. } => CreateRejection::RateLimited,
            CreateRefusal::QueueFull { .. } => CreateRejection::QueueFull,
            CreateRefusal::IdentityCap { .. } => CreateRejection::IdentityCap,
            CreateRefusal::ClientLimit { .. } => CreateRejection::ClientLimit,
        }
    }
}

/// Why `POST /session` was refused, as the `reason` label of
/// `labgate_session_create_rejected_total` (§6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateRejection {
    RateLimited,
    QueueFull,
    /// The client holds as many live sessions as one client may.
    ClientLimit,
    /// An operator is draining the lab.
    Draining,
    /// Identity mode: the per-identity cap on live sessions.
    IdentityCap,
}

impl CreateRejection {
    pub const ALL: [CreateRejection; 5] = [
        CreateRejection::RateLimited,
        CreateRejection::QueueFull,
        CreateRejection::ClientLimit,
        CreateRejection::Draining,
        CreateRejection::IdentityCap,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CreateRejection::RateLimited => "rate_limited",
            CreateRejection::QueueFull => "queue_full",
            CreateRejection::ClientLimit => "client_limit",
            CreateRejection::Draining => "draining",
            CreateRejection::IdentityCap => "identity_cap",
        }
    }
}

/// How long a client told "queue full" should wait: a slot frees when a holder ends,
/// and holds are minutes long, so asking again sooner than this only adds load.
pub const QUEUE_FULL_RETRY_AFTER_SECS: u64 = 30;

/// Unknown session ids one client may name per window before it is warn-logged.
pub const PROBE_THRESHOLD: u32 = 20;
pub const PROBE_WINDOW: Duration = Duration::from_secs(60);

/// Counts, per client, requests naming unknown session ids, so that id guessing is
/// logged once per window instead of once per request (or never).
#[derive(Default)]
pub struct ProbeDetector {
    clients: std::collections::HashMap<IpAddr, Probe>,
}

struct Probe {
    since: std::time::Instant,
    count: u32,
    warned: bool,
}

impl ProbeDetector {
    /// Counts one unknown id from `client`; `Some(count)` exactly once per window, when
    /// the count reaches [`PROBE_THRESHOLD`].
    pub fn record(&mut self, client: IpAddr, now: std::time::Instant) -> Option<u32> {
        let p = self.clients.entry(client).or_insert(Probe {
            since: now,
            count: 0,
            warned: false,
        });
        if now.saturating_duration_since(p.since) >= PROBE_WINDOW {
            *p = Probe {
                since: now,
                count: 0,
                warned: false,
            };
        }
        p.count = p.count.saturating_add(1);
        if p.count >= PROBE_THRESHOLD && !p.warned {
            p.warned = true;
            return Some(p.count);
        }
        None
    }

    /// Drops clients whose window is over; call it periodically.
    pub fn forget_old(&mut self, now: std::time::Instant) {
        self.clients
            .retain(|_, p| now.saturating_duration_since(p.since) < PROBE_WINDOW);
    }

    pub fn tracked(&self) -> usize {
        self.clients.len()
    }
}

/// The key one client's limits are counted under: an IPv4 address, or the /64 of an IPv6
/// address (one host usually holds a whole /64, so counting its addresses one by one
/// would give it 2^64 buckets). An IPv4-mapped IPv6 address is its IPv4 address.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Live sessions per client key ([`client_key`]): the per-client cap (§4). Holds only
/// clients with at least one live session, so it is bounded by the queue's size.
#[derive(Default)]
pub struct LiveSessions {
    counts: HashMap<IpAddr, usize>,
}

impl LiveSessions {
    /// May `client` open one more session?
    pub fn check(&self, client: IpAddr, max: usize) -> Result<(), CreateRefusal> {
        let live = self.counts.get(&client_key(client)).copied().unwrap_or(0);
        if live >= max {
            Err(CreateRefusal::ClientLimit {
                retry_after_secs: QUEUE_FULL_RETRY_AFTER_SECS,
            })
        } else {
            Ok(())
        }
    }

    pub fn opened(&mut self, client: IpAddr) {
        *self.counts.entry(client_key(client)).or_insert(0) += 1;
    }

    pub fn ended(&mut self, client: IpAddr) {
        let key = client_key(client);
        if let Some(n) = self.counts.get_mut(&key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.counts.remove(&key);
            }
        }
    }

    /// Clients with a live session (for tests and diagnostics).
    pub fn clients(&self) -> usize {
        self.counts.len()
    }
}

/// The queue cap, as a pure check.
pub fn check_capacity(len: usize, max_sessions: usize) -> Result<(), CreateRefusal> {
    if len >= max_sessions {
        Err(CreateRefusal::QueueFull {
            retry_after_secs: QUEUE_FULL_RETRY_AFTER_SECS,
        })
    } else {
        Ok(())
    }
}

/// Who a `POST /session` counts against: the client address, or in identity mode the
/// identity (many people behind one proxy address each get their own bucket, and one
/// person gets one bucket from any address).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RateKey {
    Addr(IpAddr),
    Identity(crate::identity::Identity),
}

impl From<IpAddr> for RateKey {
    /// An address counts by its [`client_key`] (an IPv6 client by its /64).
    fn from(ip: IpAddr) -> Self {
        RateKey::Addr(client_key(ip))
    }
}

type Keyed<C> =
    RateLimiter<RateKey, DefaultKeyedStateStore<RateKey>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// Per-client (address or identity) token bucket for `POST /session`.
pub struct SessionLimiter<C: Clock = DefaultClock> {
    limiter: Keyed<C>,
    clock: C,
}

impl SessionLimiter<DefaultClock> {
    pub fn new(config: &RateLimitConfig) -> Self {
        Self::with_clock(config, DefaultClock::default())
    }
}

impl<C: Clock + Clone> SessionLimiter<C> {
    pub fn with_clock(config: &RateLimitConfig, clock: C) -> Self {
        // Config validation keeps both within bounds; clamped again because governor
        // panics on a period beyond 584 years and overflows on burst * period.
        let period = config.refill_every.min(MAX_REFILL_EVERY);
        let quota = Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(nonzero(1)))
            .allow_burst(config.burst.min(MAX_BURST));
        SessionLimiter {
            limiter: RateLimiter::new(quota, DefaultKeyedStateStore::default(), clock.clone()),
            clock,
        }
    }

    /// Takes one token for `client`, or says how long to wait.
    pub fn check(&self, client: impl Into<RateKey>) -> Result<(), CreateRefusal> {
        self.limiter.check_key(&client.into()).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            CreateRefusal::RateLimited {
                retry_after_secs: ceil_secs(wait),
            }
        })
    }

    /// Drops the state of clients whose bucket is full again; call it periodically.
    pub fn forget_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    /// Clients with state (for tests and diagnostics).
    pub fn tracked_clients(&self) -> usize {
        self.limiter.len()
    }
}

fn nonzero(n: u32) -> std::num::NonZeroU32 {
    std::num::NonZeroU32::new(n).unwrap_or(std::num::NonZeroU32::MIN)
}

/// Whole seconds, rounded up, at least 1: `Retry-After: 0` would invite a busy loop.
pub fn ceil_secs(d: Duration) -> u64 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    s.max(1)
}

/// Is `ip` one of the configured trusted proxies?
pub fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|net| net.contains(&ip))
}

/// The address a request is attributed to (§4): the TCP peer, unless the peer is a
/// trusted proxy; then the right-most `X-Forwarded-For` entry that is not a trusted
/// proxy. Unparseable entries stop the walk (everything left of them could be forged),
/// and if every entry is trusted the left-most one is used.
pub fn client_address<'a>(
    peer: IpAddr,
    forwarded_for: impl Iterator<Item = &'a [u8]>,
    trusted: &[IpNet],
) -> IpAddr {
    if !is_trusted(peer, trusted) {
        return peer;
    }
    // Several X-Forwarded-For headers are one comma-separated list, in order.
    let entries: Vec<&[u8]> = forwarded_for
        .flat_map(|v| v.split(|&b| b == b','))
        .collect();
    let mut client = peer;
    for entry in entries.iter().rev() {
        match parse_forwarded_ip(entry) {
            Some(ip) => {
                client = ip;
                if !is_trusted(ip, trusted) {
                    return ip;
                }
            }
            None => return client,
        }
    }
    client
}

fn parse_forwarded_ip(entry: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(entry).ok()?.trim();
    // Accept "1.2.3.4", "::1" and the bracketed "[::1]" / "[::1]:123" / "1.2.3.4:123" forms.
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = text.parse::<std::net::SocketAddr>() {
        return Some(sa.ip());
    }
    text.strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .and_then(|t| t.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn config(burst: u32, every: Duration) -> RateLimitConfig {
        RateLimitConfig {
            burst: nonzero(burst),
            refill_every: every,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn burst_then_refill_per_client() {
        let clock = FakeRelativeClock::default();
        let l = SessionLimiter::with_clock(&config(3, Duration::from_secs(2)), clock.clone());
        let a = ip("10.0.0.1");
        for _ in 0..3 {
            assert_eq!(l.check(a), Ok(()));
        }
        assert_eq!(
            l.check(a),
            Err(CreateRefusal::RateLimited {
                retry_after_secs: 2
            })
        );
        // Another client has its own bucket.
        assert_eq!(l.check(ip("10.0.0.2")), Ok(()));
        clock.advance(Duration::from_millis(1500));
        assert_eq!(
            l.check(a),
            Err(CreateRefusal::RateLimited {
                retry_after_secs: 1
            })
        );
        clock.advance(Duration::from_millis(500));
        assert_eq!(l.check(a), Ok(()));
    }

    #[test]
    fn an_ipv6_64_is_one_client_for_the_rate_limit() {
        let clock = FakeRelativeClock::default();
        let l = SessionLimiter::with_clock(&config(2, Duration::from_secs(10)), clock.clone());
        assert_eq!(l.check(ip("2001:db8:1:2::1")), Ok(()));
        assert_eq!(l.check(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")), Ok(()));
        assert!(l.check(ip("2001:db8:1:2::abcd")).is_err());
        // The next /64 is another client.
        assert_eq!(l.check(ip("2001:db8:1:3::1")), Ok(()));
        clock.advance(Duration::from_secs(10));
        assert_eq!(l.check(ip("2001:db8:1:2::42")), Ok(()));
        assert_eq!(l.tracked_clients(), 2);
    }

    #[test]
    fn client_keys() {
        assert_eq!(client_key(ip("10.1.2.3")), ip("10.1.2.3"));
        assert_eq!(client_key(ip("2001:db8:a:b:c:d:e:f")), ip("2001:db8:a:b::"));
        assert_eq!(client_key(ip("::ffff:10.1.2.3")), ip("10.1.2.3"));
        assert_eq!(client_key(ip("::1")), ip("::"));
    }

    #[test]
    fn live_sessions_are_capped_per_client() {
        let mut live = LiveSessions::default();
        let a = ip("2001:db8::1");
        for _ in 0..3 {
            assert_eq!(live.check(a, 3), Ok(()));
            live.opened(a);
        }
        let refused = live.check(ip("2001:db8::2"), 3);
        assert!(
            matches!(refused, Err(CreateRefusal::ClientLimit { retry_after_secs }) if retry_after_secs > 0)
        );
        assert_eq!(live.check(ip("10.0.0.1"), 3), Ok(()));
        live.ended(ip("2001:db8::ffff"));
        assert_eq!(live.check(a, 3), Ok(()));
        for _ in 0..5 {
            live.ended(a);
        }
        assert_eq!(live.clients(), 0);
    }

    #[test]
    fn extreme_quotas_never_panic() {
        let clock = FakeRelativeClock::default();
        for (burst, every) in [
            (u32::MAX, Duration::MAX),
            (1, Duration::from_secs(600 * 365 * 24 * 3600)),
            (u32::MAX, Duration::from_nanos(1)),
        ] {
            let l = SessionLimiter::with_clock(&config(burst, every), clock.clone());
            assert_eq!(l.check(ip("10.0.0.1")), Ok(()));
            l.forget_idle();
        }
    }

    #[test]
    fn idle_clients_are_forgotten() {
        let clock = FakeRelativeClock::default();
        let l = SessionLimiter::with_clock(&config(2, Duration::from_secs(1)), clock.clone());
        for i in 0..100u8 {
            l.check(IpAddr::from([10, 0, 0, i])).unwrap();
        }
        assert_eq!(l.tracked_clients(), 100);
        clock.advance(Duration::from_secs(10));
        l.forget_idle();
        assert_eq!(l.tracked_clients(), 0);
    }

    #[test]
    fn probing_is_reported_once_per_window_per_client() {
        let t0 = std::time::Instant::now();
        let mut d = ProbeDetector::default();
        let a = ip("10.0.0.1");
        for i in 1..PROBE_THRESHOLD {
            assert_eq!(d.record(a, t0), None, "{i}");
        }
        assert_eq!(d.record(a, t0), Some(PROBE_THRESHOLD));
        assert_eq!(d.record(a, t0 + Duration::from_secs(1)), None);
        assert_eq!(d.record(ip("10.0.0.2"), t0), None);
        // A new window counts from zero again.
        let later = t0 + PROBE_WINDOW;
        for _ in 1..PROBE_THRESHOLD {
            assert_eq!(d.record(a, later), None);
        }
        assert_eq!(d.record(a, later), Some(PROBE_THRESHOLD));
        d.forget_old(later + PROBE_WINDOW);
        assert_eq!(d.tracked(), 0);
    }

    #[test]
    fn capacity() {
        assert_eq!(check_capacity(9, 10), Ok(()));
        assert!(matches!(
            check_capacity(10, 10),
            Err(CreateRefusal::QueueFull { .. })
        ));
    }

    #[test]
    fn retry_after_rounds_up_and_is_never_zero() {
        assert_eq!(ceil_secs(Duration::ZERO), 1);
        assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
        assert_eq!(ceil_secs(Duration::from_millis(1001)), 2);
        assert_eq!(ceil_secs(Duration::from_secs(3)), 3);
    }

    fn client(peer: &str, xff: &[&str], trusted: &[&str]) -> IpAddr {
        let trusted: Vec<IpNet> = trusted
            .iter()
            .map(|t| t.parse().unwrap_or_else(|_| IpNet::from(ip(t))))
            .collect();
        client_address(ip(peer), xff.iter().map(|s| s.as_bytes()), &trusted)
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_it_claims() {
        assert_eq!(client("203.0.113.9", &["1.1.1.1"], &[]), ip("203.0.113.9"));
        assert_eq!(
            client("203.0.113.9", &["1.1.1.1"], &["10.0.0.0/8"]),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn trusted_proxy_yields_rightmost_untrusted_entry() {
        let t = &["10.0.0.0/8", "127.0.0.1"];
        assert_eq!(client("127.0.0.1", &["6.6.6.6, 1.2.3.4"], t), ip("1.2.3.4"));
        assert_eq!(
            client("127.0.0.1", &["6.6.6.6, 1.2.3.4, 10.1.1.1"], t),
            ip("1.2.3.4")
        );
        // Two headers form one list.
        assert_eq!(
            client("10.0.0.5", &["6.6.6.6", "1.2.3.4"], t),
            ip("1.2.3.4")
        );
        assert_eq!(
            client("10.0.0.5", &["[2001:db8::1]:443"], t),
            ip("2001:db8::1")
        );
        assert_eq!(client("10.0.0.5", &["1.2.3.4:5678"], t), ip("1.2.3.4"));
    }

    #[test]
    fn trusted_proxy_without_usable_header() {
        let t = &["10.0.0.0/8"];
        assert_eq!(client("10.0.0.5", &[], t), ip("10.0.0.5"));
        // Garbage stops the walk at the last good hop.
        assert_eq!(client("10.0.0.5", &["1.2.3.4, garbage"], t), ip("10.0.0.5"));
        assert_eq!(
            client("10.0.0.5", &["garbage, 10.0.0.7"], t),
            ip("10.0.0.7")
        );
        // All trusted: the left-most.
        assert_eq!(
            client("10.0.0.5", &["10.0.0.8, 10.0.0.7"], t),
            ip("10.0.0.8")
        );
    }
}

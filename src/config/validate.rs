//! Validation: raw TOML values -> checked settings, every rule on the file's meaning.
//!
//! Owns every check that needs only the file itself: non-zero limits, listeners that do
//! not collide, route prefixes, upstream names, the address's form, which headers may be
//! injected and where their values come from. Pure: must never resolve a name, read the
//! environment or open a file (that is `resolve`, which runs after every check here
//! passed), so a config is judged the same way on any machine.

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use http::HeaderName;
use ipnet::IpNet;
use toml::Spanned;

use super::raw::{Dur, RawConfig, RawQueue, RawSecret, RawServer, RawUpstream, RawUpstreamTls};
use super::{
    problem, span_of, CompatConfig, DemoLabConfig, IdentityConfig, IdentitySource, MetricsConfig,
    Problem, QueueConfig, RateLimitConfig, ServerConfig, Span,
};
use crate::bridge;
use crate::forward;
use crate::path::{self, RouteTable};
use crate::queue::Timeouts;
use crate::tunnel::config::TunnelsConfig;

/// A configuration that passed every check; only its upstreams still need `resolve`.
pub(super) struct Checked {
    pub(super) server: ServerConfig,
    pub(super) metrics: MetricsConfig,
    pub(super) queue: QueueConfig,
    pub(super) rate_limit: RateLimitConfig,
    pub(super) upstreams: Vec<CheckedUpstream>,
    pub(super) routes: RouteTable<usize>,
    pub(super) demo_lab: Option<DemoLabConfig>,
    /// `None`: no `[admin]`; `Some(None)`: `[admin]` without `socket`, the default
    /// (which depends on the environment, so `resolve` picks it).
    pub(super) admin_socket: Option<Option<PathBuf>>,
    pub(super) identity: Option<IdentityConfig>,
    pub(super) compat: CompatConfig,
    pub(super) tunnels: TunnelsConfig,
}

/// One `[[upstream]]` whose address is well-formed but not yet resolved and whose
/// injected headers name their source but have not been read.
pub(super) struct CheckedUpstream {
    pub(super) name: String,
    pub(super) authority: String,
    pub(super) authority_span: Option<Span>,
    pub(super) strip_prefix: bool,
    pub(super) connect_timeout: Duration,
    pub(super) read_timeout: Duration,
    pub(super) write_timeout: Duration,
    pub(super) health_interval: Option<Duration>,
    pub(super) headers: Vec<CheckedHeader>,
    /// `[upstream.tls]`; its files are read in `resolve`.
    pub(super) tls: Option<RawUpstreamTls>,
    /// The bridge options, checked (and hook hosts resolved) by `resolve`.
    pub(super) bridge: bridge::config::RawBridge,
}

/// An injected header: its name (as written, for messages, and parsed), its source, and
/// the span of the source, where a failure to read it is reported.
pub(super) struct CheckedHeader {
    pub(super) written: String,
    pub(super) name: HeaderName,
    pub(super) source: SecretSource,
    pub(super) span: Option<Span>,
}

/// Where an injected header's value comes from; never the TOML itself (§5).
pub(super) enum SecretSource {
    Env(String),
    File(String),
}

/// Upper bounds of every duration and number: beyond any sensible setting, and well
/// within what the code can hold (`Instant` arithmetic, governor's u64 nanoseconds,
/// threads and memory), so a config `labgate check` passes never panics when served.
pub const MAX_SESSION_TIMEOUT: Duration = Duration::from_secs(30 * 24 * 3600);
pub const MAX_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// grace_period, shutdown_timeout, reap_interval.
pub const MAX_SERVER_DURATION: Duration = Duration::from_secs(3600);
pub const MAX_THREADS: usize = 1024;
pub const MAX_SESSIONS: usize = 1_000_000;

/// Live sessions one client may hold unless configured: room for a few CI jobs behind
/// one NAT address, far from the whole queue.
pub const DEFAULT_MAX_SESSIONS_PER_CLIENT: usize = 10;

/// The largest `rate_limit.burst` and `rate_limit.refill_every`: governor keeps
/// `burst * refill_every` in u64 nanoseconds (584 years); these keep it under 30 years.
pub const MAX_BURST: NonZeroU32 = match NonZeroU32::new(10_000) {
    Some(n) => n,
    None => NonZeroU32::MIN,
};
pub const MAX_REFILL_EVERY: Duration = Duration::from_secs(24 * 3600);

/// A duration in `(0, max]`.
fn positive_at_most(d: &Spanned<Dur>, what: &str, max: Duration) -> Result<Duration, Problem> {
    if d.get_ref().0.is_zero() {
        return problem(span_of(d), format!("{what} must be greater than zero"));
    }
    at_most(d, what, max)
}

/// A duration in `[0, max]`.
fn at_most(d: &Spanned<Dur>, what: &str, max: Duration) -> Result<Duration, Problem> {
    let value = d.get_ref().0;
    if value > max {
        return problem(
            span_of(d),
            format!(
                "{what} must be at most {} (got {})",
                humantime::format_duration(max),
                humantime::format_duration(value)
            ),
        );
    }
    Ok(value)
}

/// A number in `[min, max]`.
fn within<T: PartialOrd + std::fmt::Display + Copy>(
    n: &Spanned<T>,
    what: &str,
    min: T,
    max: T,
) -> Result<T, Problem> {
    let value = *n.get_ref();
    if value < min || value > max {
        return problem(
            span_of(n),
            format!("{what} must be between {min} and {max} (got {value})"),
        );
    }
    Ok(value)
}

/// Checks the whole file, section by section.
pub(super) fn validate(raw: RawConfig) -> Result<Checked, Problem> {
    let server = validate_server(raw.server)?;
    let metrics = MetricsConfig {
        listen: *raw.metrics.listen.get_ref(),
    };
    if server.listen.contains(&metrics.listen) {
        return problem(
            span_of(&raw.metrics.listen),
            "metrics.listen must differ from server.listen: metrics have their own listener",
        );
    }
    let queue = validate_queue(raw.queue)?;
    let burst = within(
        &raw.rate_limit.burst,
        "rate_limit.burst",
        1,
        MAX_BURST.get(),
    )?;
    let rate_limit = RateLimitConfig {
        burst: NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN),
        refill_every: positive_at_most(
            &raw.rate_limit.refill_every,
            "rate_limit.refill_every",
            MAX_REFILL_EVERY,
        )?,
    };
    let demo_lab = match raw.demo_lab {
        Some(d) => {
            let listen = *d.listen.get_ref();
            if server.listen.contains(&listen) || listen == metrics.listen {
                return problem(
                    span_of(&d.listen),
                    "demo_lab.listen must differ from the server and metrics listeners",
                );
            }
            Some(DemoLabConfig { listen })
        }
        None => None,
    };

    let identity = raw
        .identity
        .as_ref()
        .map(|i| i.validate(server.tls.is_some(), server.trusted_proxies.len()))
        .transpose()?;
    // Headers identity mode sets or reads: an operator may not inject them.
    let identity_headers: Vec<HeaderName> = identity
        .iter()
        .flat_map(|i| {
            let source = match &i.source {
                IdentitySource::Header(h) => Some(h.clone()),
                IdentitySource::Mtls(_) => None,
            };
            std::iter::once(i.upstream_header.clone()).chain(source)
        })
        .collect();

    if raw.upstream.is_empty() {
        return problem(
            None,
            "no [[upstream]]: at least one lab endpoint is required",
        );
    }
    let mut upstreams: Vec<CheckedUpstream> = Vec::new();
    let mut routes: Vec<(String, usize)> = Vec::new();
    for raw in raw.upstream {
        let span = span_of(&raw);
        let mut raw = raw.into_inner();
        let index = upstreams.len();
        let mut up = validate_upstream(&raw, span, &upstreams, &identity_headers)?;
        up.tls = raw.tls.take();
        up.bridge = bridge::config::RawBridge {
            neops: raw.neops.take(),
            token: raw.token.take(),
            hooks: raw.hooks.take(),
        };
        for route in raw.routes.get_ref() {
            let prefix = validate_route(route)?;
            if let Some(i) = routes.iter().position(|(p, _)| *p == prefix) {
                let other = &upstreams[routes[i].1].name;
                return problem(
                    span_of(route),
                    format!("route {prefix:?} is already routed to upstream {other:?}"),
                );
            }
            routes.push((prefix, index));
        }
        upstreams.push(up);
    }

    let admin_socket = match raw.admin {
        Some(a) => Some(a.socket.map(|s| admin_socket(&s)).transpose()?),
        None => None,
    };
    // labgate's own listeners are never a tunnel target.
    let mut own = server.listen.clone();
    own.push(metrics.listen);
    own.extend(demo_lab.as_ref().map(|d| d.listen));
    let tunnels = raw.tunnels.validate(own)?;
    Ok(Checked {
        tunnels,
        server,
        metrics,
        queue,
        rate_limit,
        upstreams,
        routes: RouteTable::new(routes),
        demo_lab,
        admin_socket,
        identity,
        compat: CompatConfig {
            active_session_id: raw.compat.active_session_id,
        },
    })
}

fn validate_server(raw: RawServer) -> Result<ServerConfig, Problem> {
    if raw.listen.get_ref().is_empty() {
        return problem(
            span_of(&raw.listen),
            "server.listen needs at least one address",
        );
    }
    let threads = within(&raw.threads, "server.threads", 1, MAX_THREADS)?;
    let mut trusted_proxies = Vec::new();
    for p in &raw.trusted_proxies {
        let text = p.get_ref().trim();
        let net = text
            .parse::<IpNet>()
            .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
            .map_err(|_| {
                (
                    span_of(p),
                    format!("invalid trusted proxy {text:?}: write an IP address or a CIDR like \"10.0.0.0/8\""),
                )
            })?;
        trusted_proxies.push(net);
    }
    let tls = raw.tls.as_ref().map(|t| t.validate()).transpose()?;
    for (d, name) in [
        (&raw.keepalive_timeout, "keepalive_timeout"),
        (&raw.header_timeout, "header_timeout"),
        (&raw.tcp_keepalive, "tcp_keepalive"),
    ] {
        let v = d.get_ref().0;
        if v < Duration::from_secs(1) || v > Duration::from_secs(86_400) {
            return problem(
                span_of(d),
                format!("server.{name} must be between 1s and 1 day"),
            );
        }
    }
    let max = *raw.max_connections.get_ref();
    if !(1..=1_000_000).contains(&max) {
        return problem(
            span_of(&raw.max_connections),
            "server.max_connections must be between 1 and 1000000",
        );
    }
    if !(1..=max).contains(raw.max_connections_per_client.get_ref()) {
        return problem(
            span_of(&raw.max_connections_per_client),
            "server.max_connections_per_client must be between 1 and server.max_connections",
        );
    }
    Ok(ServerConfig {
        keepalive_timeout: raw.keepalive_timeout.get_ref().0,
        header_timeout: raw.header_timeout.get_ref().0,
        tcp_keepalive: raw.tcp_keepalive.get_ref().0,
        max_connections: max,
        max_connections_per_client: *raw.max_connections_per_client.get_ref(),
        listen: raw.listen.into_inner(),
        threads,
        grace_period: at_most(
            &raw.grace_period,
            "server.grace_period",
            MAX_SERVER_DURATION,
        )?,
        shutdown_timeout: at_most(
            &raw.shutdown_timeout,
            "server.shutdown_timeout",
            MAX_SERVER_DURATION,
        )?,
        trusted_proxies,
        tls,
    })
}

fn validate_queue(raw: RawQueue) -> Result<QueueConfig, Problem> {
    let max_sessions = within(&raw.max_sessions, "queue.max_sessions", 1, MAX_SESSIONS)?;
    // Written: at most max_sessions. Defaulted: the default, or max_sessions if lower.
    let max_sessions_per_client = match &raw.max_sessions_per_client {
        Some(n) => within(n, "queue.max_sessions_per_client", 1, max_sessions)?,
        None => DEFAULT_MAX_SESSIONS_PER_CLIENT.min(max_sessions),
    };
    let session_timeout =
        |d: &Spanned<Dur>, what: &str| positive_at_most(d, what, MAX_SESSION_TIMEOUT);
    Ok(QueueConfig {
        timeouts: Timeouts {
            active: session_timeout(&raw.active_timeout, "queue.active_timeout")?,
            waiting: session_timeout(&raw.waiting_timeout, "queue.waiting_timeout")?,
        },
        reap_interval: positive_at_most(
            &raw.reap_interval,
            "queue.reap_interval",
            MAX_SERVER_DURATION,
        )?,
        max_hold: raw
            .max_hold
            .as_ref()
            .map(|d| session_timeout(d, "queue.max_hold"))
            .transpose()?,
        max_sessions_per_client,
        state_path: match &raw.state_path {
            Some(p) if p.get_ref().trim().is_empty() => {
                return problem(
                    span_of(p),
                    "queue.state_path is empty: remove it for a memory-only queue",
                );
            }
            Some(p) => Some(PathBuf::from(p.get_ref())),
            None => None,
        },
        max_sessions,
    })
}

fn validate_upstream(
    raw: &RawUpstream,
    span: Option<Span>,
    earlier: &[CheckedUpstream],
    identity_headers: &[HeaderName],
) -> Result<CheckedUpstream, Problem> {
    let name = raw.name.get_ref().trim().to_string();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return problem(
            span_of(&raw.name),
            format!("invalid upstream name {name:?}: use letters, digits, '-', '_' or '.'"),
        );
    }
    if earlier.iter().any(|u| u.name == name) {
        return problem(
            span_of(&raw.name),
            format!("duplicate upstream name {name:?}"),
        );
    }
    let authority = raw.address.get_ref().trim().to_string();
    if authority.contains("://") || authority.contains('/') {
        return problem(
            span_of(&raw.address),
            format!(
                "invalid upstream address {authority:?}: write host:port, without a scheme or path"
            ),
        );
    }
    if raw.routes.get_ref().is_empty() {
        return problem(
            span_of(&raw.routes).or(span),
            format!("upstream {name:?} has no routes: give at least one, like [\"/lab\"]"),
        );
    }
    let mut headers = Vec::new();
    for (key, source) in &raw.headers {
        let header = HeaderName::from_bytes(key.get_ref().as_bytes()).map_err(|_| {
            (
                span_of(key),
                format!("invalid header name {:?}", key.get_ref()),
            )
        })?;
        if forward::is_managed(header.as_str()) {
            return problem(
                span_of(key),
                format!(
                    "header {:?} is managed by labgate and cannot be injected",
                    key.get_ref()
                ),
            );
        }
        if identity_headers.contains(&header) {
            return problem(
                span_of(key),
                format!(
                    "header {:?} carries identities ([identity]) and cannot be injected",
                    key.get_ref()
                ),
            );
        }
        let written = key.get_ref().clone();
        let span = span_of(source);
        let source = secret_source(source.get_ref(), &written).map_err(|m| (span.clone(), m))?;
        headers.push(CheckedHeader {
            written,
            name: header,
            source,
            span,
        });
    }
    Ok(CheckedUpstream {
        name,
        authority,
        authority_span: span_of(&raw.address),
        strip_prefix: raw.strip_prefix,
        connect_timeout: positive_at_most(
            &raw.connect_timeout,
            "connect_timeout",
            MAX_UPSTREAM_TIMEOUT,
        )?,
        read_timeout: positive_at_most(&raw.read_timeout, "read_timeout", MAX_UPSTREAM_TIMEOUT)?,
        write_timeout: positive_at_most(&raw.write_timeout, "write_timeout", MAX_UPSTREAM_TIMEOUT)?,
        health_interval: health_interval(raw.health_interval.as_ref())?,
        headers,
        tls: None,
        bridge: bridge::config::RawBridge::default(),
    })
}

/// The shortest probe interval: a probe is a TCP connect to the lab; more than one a
/// second per upstream is load on the lab for nothing.
const MIN_HEALTH_INTERVAL: Duration = Duration::from_secs(1);

/// `health_interval`: `None` when `"off"`, the default when absent, else a duration in
/// [`MIN_HEALTH_INTERVAL`, `MAX_SERVER_DURATION`].
fn health_interval(raw: Option<&Spanned<String>>) -> Result<Option<Duration>, Problem> {
    let Some(raw) = raw else {
        return Ok(Some(super::raw::DEFAULT_HEALTH_INTERVAL));
    };
    let text = raw.get_ref().trim();
    if text == "off" {
        return Ok(None);
    }
    let bad = |why: String| problem(span_of(raw), format!("health_interval {text:?}: {why}"));
    let d = match humantime::parse_duration(text) {
        Ok(d) => d,
        Err(e) => return bad(format!("{e}; write a duration like \"10s\", or \"off\"")),
    };
    if d < MIN_HEALTH_INTERVAL || d > MAX_SERVER_DURATION {
        return bad(format!(
            "must be from {} to {}, or \"off\"",
            humantime::format_duration(MIN_HEALTH_INTERVAL),
            humantime::format_duration(MAX_SERVER_DURATION)
        ));
    }
    Ok(Some(d))
}

fn secret_source(raw: &RawSecret, header: &str) -> Result<SecretSource, String> {
    match (&raw.env, &raw.file) {
        (Some(var), None) => Ok(SecretSource::Env(var.clone())),
        (None, Some(file)) => Ok(SecretSource::File(file.clone())),
        _ => Err(format!(
            "header {header:?}: give exactly one of {{ env = \"VAR\" }} or {{ file = \"/path\" }}"
        )),
    }
}

fn validate_route(route: &Spanned<String>) -> Result<String, Problem> {
    let text = route.get_ref();
    let invalid = |why: &str| problem(span_of(route), format!("invalid route {text:?}: {why}"));
    let checked = match path::check(text.as_bytes()) {
        Ok(t) => t,
        Err(e) => return invalid(&e.to_string()),
    };
    if checked.query.is_some() || checked.path != text.as_str() {
        return invalid("write a plain path prefix");
    }
    if !path::under(text, "/lab") {
        return invalid("routes must be \"/lab\" or below it");
    }
    if text.len() > 1 && text.ends_with('/') {
        return invalid("drop the trailing '/'");
    }
    Ok(text.clone())
}

/// Longest path a Unix socket address holds (`sun_path` is 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// `[admin] socket`: an absolute path that fits a socket address.
fn admin_socket(s: &Spanned<String>) -> Result<PathBuf, Problem> {
    let text = s.get_ref();
    if text.trim().is_empty() {
        return problem(
            span_of(s),
            "admin.socket is empty: remove the key for the default, or [admin] to disable \
             the admin API",
        );
    }
    let path = PathBuf::from(text);
    if !path.is_absolute() || path.file_name().is_none() || text.ends_with('/') {
        return problem(
            span_of(s),
            format!("admin.socket {text:?} is not an absolute path to a file"),
        );
    }
    if text.len() > MAX_SOCKET_PATH {
        return problem(
            span_of(s),
            format!(
                "admin.socket is {} bytes long; a Unix socket path holds at most \
                 {MAX_SOCKET_PATH}",
                text.len()
            ),
        );
    }
    Ok(path)
}

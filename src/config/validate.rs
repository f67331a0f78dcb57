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

use super::raw::{Dur, RawConfig, RawQueue, RawSecret, RawServer, RawUpstream};
use super::{
    problem, span_of, DemoLabConfig, MetricsConfig, Problem, QueueConfig, RateLimitConfig,
    ServerConfig, Span,
};
use crate::bridge;
use crate::forward;
use crate::path::{self, RouteTable};
use crate::queue::Timeouts;

/// A configuration that passed every check; only its upstreams still need `resolve`.
pub(super) struct Checked {
    pub(super) server: ServerConfig,
    pub(super) metrics: MetricsConfig,
    pub(super) queue: QueueConfig,
    pub(super) rate_limit: RateLimitConfig,
    pub(super) upstreams: Vec<CheckedUpstream>,
    pub(super) routes: RouteTable<usize>,
    pub(super) demo_lab: Option<DemoLabConfig>,
    pub(super) admin_socket: Option<PathBuf>,
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
    pub(super) headers: Vec<CheckedHeader>,
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

fn positive(d: &Spanned<Dur>, what: &str) -> Result<Duration, Problem> {
    if d.get_ref().0.is_zero() {
        return problem(span_of(d), format!("{what} must be greater than zero"));
    }
    Ok(d.get_ref().0)
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
    let burst = NonZeroU32::new(*raw.rate_limit.burst.get_ref()).ok_or_else(|| {
        (
            span_of(&raw.rate_limit.burst),
            "rate_limit.burst must be at least 1".to_string(),
        )
    })?;
    let rate_limit = RateLimitConfig {
        burst,
        refill_every: positive(&raw.rate_limit.refill_every, "rate_limit.refill_every")?,
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
        let mut up = validate_upstream(&raw, span, &upstreams)?;
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
        Some(a) if a.socket.get_ref().trim().is_empty() => {
            return problem(
                span_of(&a.socket),
                "admin.socket is empty: remove [admin] to disable the admin API",
            );
        }
        Some(a) => Some(PathBuf::from(a.socket.get_ref())),
        None => None,
    };
    Ok(Checked {
        server,
        metrics,
        queue,
        rate_limit,
        upstreams,
        routes: RouteTable::new(routes),
        demo_lab,
        admin_socket,
    })
}

fn validate_server(raw: RawServer) -> Result<ServerConfig, Problem> {
    if raw.listen.get_ref().is_empty() {
        return problem(
            span_of(&raw.listen),
            "server.listen needs at least one address",
        );
    }
    if *raw.threads.get_ref() == 0 {
        return problem(span_of(&raw.threads), "server.threads must be at least 1");
    }
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
    Ok(ServerConfig {
        listen: raw.listen.into_inner(),
        threads: raw.threads.into_inner(),
        grace_period: raw.grace_period.get_ref().0,
        shutdown_timeout: raw.shutdown_timeout.get_ref().0,
        trusted_proxies,
    })
}

fn validate_queue(raw: RawQueue) -> Result<QueueConfig, Problem> {
    if *raw.max_sessions.get_ref() == 0 {
        return problem(
            span_of(&raw.max_sessions),
            "queue.max_sessions must be at least 1",
        );
    }
    Ok(QueueConfig {
        timeouts: Timeouts {
            active: positive(&raw.active_timeout, "queue.active_timeout")?,
            waiting: positive(&raw.waiting_timeout, "queue.waiting_timeout")?,
        },
        reap_interval: positive(&raw.reap_interval, "queue.reap_interval")?,
        max_hold: raw
            .max_hold
            .as_ref()
            .map(|d| positive(d, "queue.max_hold"))
            .transpose()?,
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
        max_sessions: raw.max_sessions.into_inner(),
    })
}

fn validate_upstream(
    raw: &RawUpstream,
    span: Option<Span>,
    earlier: &[CheckedUpstream],
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
        connect_timeout: positive(&raw.connect_timeout, "connect_timeout")?,
        read_timeout: positive(&raw.read_timeout, "read_timeout")?,
        write_timeout: positive(&raw.write_timeout, "write_timeout")?,
        headers,
        bridge: bridge::config::RawBridge::default(),
    })
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

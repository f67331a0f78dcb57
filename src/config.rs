//! The configuration file: raw TOML types and the validated [`Config`] built from them.
//!
//! Owns parsing, defaults and every check on the file, in one fallible step
//! ([`Config::parse`]); the rest of labgate only ever sees a valid [`Config`].
//! Must never panic on bad input: every problem becomes a [`ConfigError`] that names the
//! file, line and column. Upstream host names are resolved here, once, at start-up,
//! because pingora's `HttpPeer::new` resolves on the request path, blocking, and panics
//! when resolution fails.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use ipnet::IpNet;
use serde::{Deserialize, Deserializer};
use toml::Spanned;

use crate::path::{self, RouteTable};
use crate::queue::Timeouts;

/// A configuration problem, located in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    /// 1-based; 0 when the problem has no position (the file cannot be read).
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file, self.line, self.column, self.message
            )
        }
    }
}

impl std::error::Error for ConfigError {}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub metrics: MetricsConfig,
    pub queue: QueueConfig,
    pub rate_limit: RateLimitConfig,
    pub upstreams: Vec<Upstream>,
    /// Route prefix -> index into `upstreams`.
    pub routes: RouteTable<usize>,
    pub demo_lab: Option<DemoLabConfig>,
    /// The operator API's Unix socket; `None` disables it.
    pub admin_socket: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: Vec<SocketAddr>,
    pub threads: usize,
    pub grace_period: Duration,
    pub shutdown_timeout: Duration,
    pub trusted_proxies: Vec<IpNet>,
}

#[derive(Debug, Clone)]
pub struct MetricsConfig {
    pub listen: SocketAddr,
}

#[derive(Debug, Clone)]
pub struct QueueConfig {
    pub timeouts: Timeouts,
    pub reap_interval: Duration,
    pub max_sessions: usize,
    /// Hold limit (§7): `None` means holders are never expired.
    pub max_hold: Option<Duration>,
    /// The durable store; `None` keeps the queue in memory only.
    pub state_path: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct RateLimitConfig {
    pub burst: NonZeroU32,
    pub refill_every: Duration,
}

#[derive(Debug, Clone)]
pub struct DemoLabConfig {
    pub listen: SocketAddr,
}

/// One lab endpoint.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub name: String,
    /// The address as written (`host:port`); sent as the `Host` header.
    pub authority: String,
    /// Resolved once at start-up.
    pub addr: SocketAddr,
    pub strip_prefix: bool,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    /// Injected into every forwarded request, replacing any client-sent header of the name.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.addr)
    }
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            line: 0,
            column: 0,
            message: format!("cannot read the file: {e}"),
        })?;
        Config::parse(&text, &file)
    }

    /// Parses and validates TOML text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let at = |span: Option<std::ops::Range<usize>>, message: String| {
            let (line, column) = span.map_or((1, 1), |s| line_col(text, s.start));
            ConfigError {
                file: file.to_string(),
                line,
                column,
                message,
            }
        };
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| at(e.span(), one_line(e.message())))?;
        raw.validate().map_err(|(span, msg)| at(span, msg))
    }
}

/// toml's messages may span lines; an error is one line in a log or a terminal.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(": ")
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text.as_bytes()[..offset.min(text.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |p| p + 1);
    let column = String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count()
        + 1;
    (line, column)
}

type Problem = (Option<std::ops::Range<usize>>, String);

fn problem<T>(
    span: impl Into<Option<std::ops::Range<usize>>>,
    msg: impl Into<String>,
) -> Result<T, Problem> {
    Err((span.into(), msg.into()))
}

// ---------------------------------------------------------------- raw TOML types

/// A duration written as a humantime string: "300s", "10m", "500ms".
#[derive(Debug, Clone, Copy)]
struct Dur(Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map(Dur).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration {s:?} ({e}); write it like \"300s\", \"10m\" or \"500ms\""
            ))
        })
    }
}

fn secs(n: u64) -> Dur {
    Dur(Duration::from_secs(n))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default)]
    queue: RawQueue,
    #[serde(default)]
    rate_limit: RawRateLimit,
    #[serde(default)]
    upstream: Vec<Spanned<RawUpstream>>,
    demo_lab: Option<RawDemoLab>,
    admin: Option<RawAdmin>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    socket: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawServer {
    listen: Spanned<Vec<SocketAddr>>,
    threads: Spanned<usize>,
    grace_period: Spanned<Dur>,
    shutdown_timeout: Spanned<Dur>,
    trusted_proxies: Vec<Spanned<String>>,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            listen: Spanned::new(0..0, vec![SocketAddr::from(([127, 0, 0, 1], 8080))]),
            threads: Spanned::new(0..0, 2),
            grace_period: Spanned::new(0..0, secs(10)),
            shutdown_timeout: Spanned::new(0..0, secs(5)),
            trusted_proxies: Vec::new(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawMetrics {
    listen: Spanned<SocketAddr>,
}

impl Default for RawMetrics {
    fn default() -> Self {
        RawMetrics {
            listen: Spanned::new(0..0, SocketAddr::from(([127, 0, 0, 1], 9464))),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawQueue {
    active_timeout: Spanned<Dur>,
    waiting_timeout: Spanned<Dur>,
    reap_interval: Spanned<Dur>,
    max_sessions: Spanned<usize>,
    max_hold: Option<Spanned<Dur>>,
    state_path: Option<Spanned<String>>,
}

impl Default for RawQueue {
    fn default() -> Self {
        RawQueue {
            active_timeout: Spanned::new(0..0, secs(300)),
            waiting_timeout: Spanned::new(0..0, secs(600)),
            reap_interval: Spanned::new(0..0, secs(1)),
            max_sessions: Spanned::new(0..0, 10_000),
            max_hold: None,
            state_path: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRateLimit {
    burst: Spanned<u32>,
    refill_every: Spanned<Dur>,
}

impl Default for RawRateLimit {
    fn default() -> Self {
        RawRateLimit {
            burst: Spanned::new(0..0, 10),
            refill_every: Spanned::new(0..0, secs(1)),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    name: Spanned<String>,
    address: Spanned<String>,
    routes: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    strip_prefix: bool,
    #[serde(default = "default_connect_timeout")]
    connect_timeout: Spanned<Dur>,
    #[serde(default = "default_io_timeout")]
    read_timeout: Spanned<Dur>,
    #[serde(default = "default_io_timeout")]
    write_timeout: Spanned<Dur>,
    #[serde(default)]
    headers: std::collections::BTreeMap<Spanned<String>, Spanned<RawSecret>>,
}

fn default_connect_timeout() -> Spanned<Dur> {
    Spanned::new(0..0, secs(5))
}

fn default_io_timeout() -> Spanned<Dur> {
    Spanned::new(0..0, secs(60))
}

/// Where an injected header's value comes from; never the TOML itself (§5).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecret {
    env: Option<String>,
    file: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDemoLab {
    listen: Spanned<SocketAddr>,
}

fn span_of<T>(s: &Spanned<T>) -> Option<std::ops::Range<usize>> {
    let span = s.span();
    // Defaults carry an empty span: they are not in the file.
    (!span.is_empty()).then_some(span)
}

fn positive(d: &Spanned<Dur>, what: &str) -> Result<Duration, Problem> {
    if d.get_ref().0.is_zero() {
        return problem(span_of(d), format!("{what} must be greater than zero"));
    }
    Ok(d.get_ref().0)
}

impl RawConfig {
    fn validate(self) -> Result<Config, Problem> {
        let server = self.server.validate()?;
        let metrics = MetricsConfig {
            listen: *self.metrics.listen.get_ref(),
        };
        if server.listen.contains(&metrics.listen) {
            return problem(
                span_of(&self.metrics.listen),
                "metrics.listen must differ from server.listen: metrics have their own listener",
            );
        }
        let queue = self.queue.validate()?;
        let burst = NonZeroU32::new(*self.rate_limit.burst.get_ref()).ok_or_else(|| {
            (
                span_of(&self.rate_limit.burst),
                "rate_limit.burst must be at least 1".to_string(),
            )
        })?;
        let rate_limit = RateLimitConfig {
            burst,
            refill_every: positive(&self.rate_limit.refill_every, "rate_limit.refill_every")?,
        };
        let demo_lab = match self.demo_lab {
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

        if self.upstream.is_empty() {
            return problem(
                None,
                "no [[upstream]]: at least one lab endpoint is required",
            );
        }
        let mut upstreams: Vec<Upstream> = Vec::new();
        let mut routes: Vec<(String, usize)> = Vec::new();
        for raw in self.upstream {
            let span = span_of(&raw);
            let raw = raw.into_inner();
            let index = upstreams.len();
            let up = raw.validate(span, &upstreams)?;
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

        let admin_socket = match self.admin {
            Some(a) if a.socket.get_ref().trim().is_empty() => {
                return problem(
                    span_of(&a.socket),
                    "admin.socket is empty: remove [admin] to disable the admin API",
                );
            }
            Some(a) => Some(PathBuf::from(a.socket.get_ref())),
            None => None,
        };
        Ok(Config {
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
}

impl RawServer {
    fn validate(self) -> Result<ServerConfig, Problem> {
        if self.listen.get_ref().is_empty() {
            return problem(
                span_of(&self.listen),
                "server.listen needs at least one address",
            );
        }
        if *self.threads.get_ref() == 0 {
            return problem(span_of(&self.threads), "server.threads must be at least 1");
        }
        let mut trusted_proxies = Vec::new();
        for p in &self.trusted_proxies {
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
            listen: self.listen.into_inner(),
            threads: self.threads.into_inner(),
            grace_period: self.grace_period.get_ref().0,
            shutdown_timeout: self.shutdown_timeout.get_ref().0,
            trusted_proxies,
        })
    }
}

impl RawQueue {
    fn validate(self) -> Result<QueueConfig, Problem> {
        if *self.max_sessions.get_ref() == 0 {
            return problem(
                span_of(&self.max_sessions),
                "queue.max_sessions must be at least 1",
            );
        }
        Ok(QueueConfig {
            timeouts: Timeouts {
                active: positive(&self.active_timeout, "queue.active_timeout")?,
                waiting: positive(&self.waiting_timeout, "queue.waiting_timeout")?,
            },
            reap_interval: positive(&self.reap_interval, "queue.reap_interval")?,
            max_hold: self
                .max_hold
                .as_ref()
                .map(|d| positive(d, "queue.max_hold"))
                .transpose()?,
            state_path: match &self.state_path {
                Some(p) if p.get_ref().trim().is_empty() => {
                    return problem(
                        span_of(p),
                        "queue.state_path is empty: remove it for a memory-only queue",
                    );
                }
                Some(p) => Some(PathBuf::from(p.get_ref())),
                None => None,
            },
            max_sessions: self.max_sessions.into_inner(),
        })
    }
}

impl RawUpstream {
    fn validate(
        &self,
        span: Option<std::ops::Range<usize>>,
        earlier: &[Upstream],
    ) -> Result<Upstream, Problem> {
        let name = self.name.get_ref().trim().to_string();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return problem(
                span_of(&self.name),
                format!("invalid upstream name {name:?}: use letters, digits, '-', '_' or '.'"),
            );
        }
        if earlier.iter().any(|u| u.name == name) {
            return problem(
                span_of(&self.name),
                format!("duplicate upstream name {name:?}"),
            );
        }
        let authority = self.address.get_ref().trim().to_string();
        let addr = resolve(&authority).map_err(|msg| (span_of(&self.address), msg))?;
        if self.routes.get_ref().is_empty() {
            return problem(
                span_of(&self.routes).or(span),
                format!("upstream {name:?} has no routes: give at least one, like [\"/lab\"]"),
            );
        }
        let mut headers: Vec<(HeaderName, HeaderValue)> = Vec::new();
        for (key, source) in &self.headers {
            let header = HeaderName::from_bytes(key.get_ref().as_bytes()).map_err(|_| {
                (
                    span_of(key),
                    format!("invalid header name {:?}", key.get_ref()),
                )
            })?;
            if crate::forward::is_managed(header.as_str()) {
                return problem(
                    span_of(key),
                    format!(
                        "header {:?} is managed by labgate and cannot be injected",
                        key.get_ref()
                    ),
                );
            }
            let value = source
                .get_ref()
                .read(key.get_ref())
                .map_err(|m| (span_of(source), m))?;
            headers.push((header, value));
        }
        Ok(Upstream {
            name,
            authority,
            addr,
            strip_prefix: self.strip_prefix,
            connect_timeout: positive(&self.connect_timeout, "connect_timeout")?,
            read_timeout: positive(&self.read_timeout, "read_timeout")?,
            write_timeout: positive(&self.write_timeout, "write_timeout")?,
            headers,
        })
    }
}

fn resolve(authority: &str) -> Result<SocketAddr, String> {
    if authority.contains("://") || authority.contains('/') {
        return Err(format!(
            "invalid upstream address {authority:?}: write host:port, without a scheme or path"
        ));
    }
    let mut addrs = authority
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve upstream address {authority:?}: {e}"))?;
    addrs
        .next()
        .ok_or_else(|| format!("upstream address {authority:?} resolves to nothing"))
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

impl RawSecret {
    fn read(&self, header: &str) -> Result<HeaderValue, String> {
        let (raw, from) = match (&self.env, &self.file) {
            (Some(var), None) => (
                std::env::var(var).map_err(|_| {
                    format!("header {header:?}: environment variable {var} is not set (or not UTF-8)")
                })?,
                format!("environment variable {var}"),
            ),
            (None, Some(file)) => (
                std::fs::read_to_string(file)
                    .map_err(|e| format!("header {header:?}: cannot read {file}: {e}"))?,
                format!("file {file}"),
            ),
            _ => {
                return Err(format!(
                    "header {header:?}: give exactly one of {{ env = \"VAR\" }} or {{ file = \"/path\" }}"
                ))
            }
        };
        // Files usually end with a newline that is not part of the secret.
        let value = raw.trim_end_matches(['\r', '\n']);
        if value.is_empty() {
            return Err(format!("header {header:?}: {from} is empty"));
        }
        let mut value = HeaderValue::from_str(value).map_err(|_| {
            format!("header {header:?}: {from} holds characters not allowed in a header")
        })?;
        value.set_sensitive(true);
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[[upstream]]
name = "r1"
address = "127.0.0.1:9000"
routes = ["/lab"]
"#;

    fn err(text: &str) -> ConfigError {
        match Config::parse(text, "t.toml") {
            Ok(_) => panic!("expected an error for:\n{text}"),
            Err(e) => e,
        }
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::parse(MINIMAL, "t.toml").unwrap();
        assert_eq!(c.server.listen, vec!["127.0.0.1:8080".parse().unwrap()]);
        assert_eq!(c.queue.timeouts.active, Duration::from_secs(300));
        assert_eq!(c.queue.timeouts.waiting, Duration::from_secs(600));
        assert_eq!(c.queue.max_sessions, 10_000);
        assert_eq!(c.rate_limit.burst.get(), 10);
        assert_eq!(c.upstreams[0].read_timeout, Duration::from_secs(60));
        assert_eq!(c.routes.lookup("/lab/x").map(|(_, i)| *i), Some(0));
    }

    #[test]
    fn unknown_field_is_located() {
        let e = err("[server]\nlisten = [\"127.0.0.1:1\"]\nthredas = 3\n");
        assert_eq!((e.line, e.column), (3, 1), "{e}");
        assert!(e.message.contains("thredas"), "{e}");
        assert!(e.to_string().starts_with("t.toml:3:1: "), "{e}");
    }

    #[test]
    fn syntax_errors_are_one_line() {
        let e = err("[server\nthreads = 1\n");
        assert_eq!(e.line, 1, "{e}");
        assert!(!e.to_string().contains('\n'), "{e}");
    }

    #[test]
    fn bad_duration_is_located() {
        let e = err(&format!(
            "[queue]\nactive_timeout = \"5 parsecs\"\n{MINIMAL}"
        ));
        assert_eq!(e.line, 2, "{e}");
        assert!(e.message.contains("invalid duration"), "{e}");
    }

    #[test]
    fn durations_accept_humantime() {
        let c = Config::parse(
            &format!("[queue]\nactive_timeout = \"10m\"\nwaiting_timeout = \"1h\"\nreap_interval = \"250ms\"\n{MINIMAL}"),
            "t",
        )
        .unwrap();
        assert_eq!(c.queue.timeouts.active, Duration::from_secs(600));
        assert_eq!(c.queue.reap_interval, Duration::from_millis(250));
    }

    #[test]
    fn optional_queue_settings() {
        let c = Config::parse(MINIMAL, "t").unwrap();
        assert_eq!((c.queue.max_hold, c.queue.state_path), (None, None));
        let c = Config::parse(
            &format!(
                "[queue]\nmax_hold = \"30m\"\nstate_path = \"/var/lib/labgate/q.redb\"\n{MINIMAL}"
            ),
            "t",
        )
        .unwrap();
        assert_eq!(c.queue.max_hold, Some(Duration::from_secs(1800)));
        assert_eq!(
            c.queue.state_path,
            Some(PathBuf::from("/var/lib/labgate/q.redb"))
        );
        assert_eq!(
            err(&format!("[queue]\nmax_hold = \"0s\"\n{MINIMAL}")).line,
            2
        );
        assert_eq!(
            err(&format!("[queue]\nstate_path = \" \"\n{MINIMAL}")).line,
            2
        );
    }

    #[test]
    fn zero_values_are_rejected() {
        assert!(err(&format!("[queue]\nmax_sessions = 0\n{MINIMAL}"))
            .message
            .contains("max_sessions"));
        assert!(err(&format!("[queue]\nreap_interval = \"0s\"\n{MINIMAL}"))
            .message
            .contains("reap_interval"));
        assert!(err(&format!("[rate_limit]\nburst = 0\n{MINIMAL}"))
            .message
            .contains("burst"));
        assert!(err(&format!("[server]\nthreads = 0\n{MINIMAL}"))
            .message
            .contains("threads"));
    }

    #[test]
    fn missing_upstream_is_an_error() {
        assert!(err("").message.contains("[[upstream]]"));
    }

    #[test]
    fn routes_must_be_under_lab_and_plain() {
        for (route, why) in [
            ("/api", "below"),
            ("/labx", "below"),
            ("/lab/", "trailing"),
            ("/lab/../x", "invalid route"),
            ("/lab?x=1", "plain"),
            ("lab", "invalid route"),
        ] {
            let text = format!(
                "[[upstream]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\nroutes = [\"{route}\"]\n"
            );
            let e = err(&text);
            assert_eq!(e.line, 4, "{route}: {e}");
            assert!(e.message.contains(why), "{route}: {e}");
        }
    }

    #[test]
    fn duplicate_routes_and_names_are_rejected() {
        let dup_route = format!("{MINIMAL}\n[[upstream]]\nname = \"r2\"\naddress = \"127.0.0.1:9001\"\nroutes = [\"/lab\"]\n");
        assert!(err(&dup_route).message.contains("already routed"));
        let dup_name = format!("{MINIMAL}\n[[upstream]]\nname = \"r1\"\naddress = \"127.0.0.1:9001\"\nroutes = [\"/lab/x\"]\n");
        assert!(err(&dup_name).message.contains("duplicate upstream name"));
    }

    #[test]
    fn longest_route_wins() {
        let text = format!("{MINIMAL}\n[[upstream]]\nname = \"r2\"\naddress = \"127.0.0.1:9001\"\nroutes = [\"/lab/r2\", \"/lab/r2/deep\"]\nstrip_prefix = true\n");
        let c = Config::parse(&text, "t").unwrap();
        assert_eq!(
            c.routes.lookup("/lab/r2/deep/x").map(|(p, i)| (p, *i)),
            Some(("/lab/r2/deep", 1))
        );
        assert_eq!(c.routes.lookup("/lab/r20").map(|(_, i)| *i), Some(0));
    }

    #[test]
    fn bad_addresses_are_errors_not_panics() {
        for addr in [
            "nonsense",
            "http://127.0.0.1:80",
            "127.0.0.1",
            "no-such-host.invalid:80",
            "127.0.0.1:99999",
        ] {
            let text =
                format!("[[upstream]]\nname = \"a\"\naddress = \"{addr}\"\nroutes = [\"/lab\"]\n");
            let e = err(&text);
            assert_eq!(e.line, 3, "{addr}: {e}");
        }
        let e = err(&format!("[server]\nlisten = [\"localhost\"]\n{MINIMAL}"));
        assert_eq!(e.line, 2, "{e}");
    }

    #[test]
    fn header_values_come_from_env_or_file_only() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("token");
        std::fs::write(&secret, "Bearer s3cret\n").unwrap();
        let text = format!(
            "{MINIMAL}[upstream.headers]\nAuthorization = {{ file = \"{}\" }}\n",
            secret.display()
        );
        let c = Config::parse(&text, "t").unwrap();
        assert_eq!(c.upstreams[0].headers[0].0, "authorization");
        assert_eq!(c.upstreams[0].headers[0].1, "Bearer s3cret");

        let e = err(&format!(
            "{MINIMAL}[upstream.headers]\nX-Key = {{ env = \"LABGATE_TEST_SURELY_UNSET_VAR\" }}\n"
        ));
        assert!(e.message.contains("not set"), "{e}");
        assert_eq!(e.line, 7, "{e}");
        let e = err(&format!(
            "{MINIMAL}[upstream.headers]\nX-Key = \"literal\"\n"
        ));
        assert_eq!(e.line, 7, "{e}");
        let e = err(&format!(
            "{MINIMAL}[upstream.headers]\nX-Key = {{ env = \"A\", file = \"/b\" }}\n"
        ));
        assert!(e.message.contains("exactly one"), "{e}");
        let e = err(&format!(
            "{MINIMAL}[upstream.headers]\nX-Session-ID = {{ env = \"PATH\" }}\n"
        ));
        assert!(e.message.contains("managed by labgate"), "{e}");
    }

    #[test]
    fn trusted_proxies_take_ips_and_cidrs() {
        let c = Config::parse(
            &format!(
                "[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"127.0.0.1\", \"::1\"]\n{MINIMAL}"
            ),
            "t",
        )
        .unwrap();
        assert_eq!(c.server.trusted_proxies.len(), 3);
        let e = err(&format!(
            "[server]\ntrusted_proxies = [\"10.0.0.0/33\"]\n{MINIMAL}"
        ));
        assert_eq!((e.line, e.column), (2, 20), "{e}");
    }

    #[test]
    fn listeners_must_not_collide() {
        let e = err(&format!(
            "[metrics]\nlisten = \"127.0.0.1:8080\"\n{MINIMAL}"
        ));
        assert!(e.message.contains("metrics.listen"), "{e}");
    }

    #[test]
    fn every_shipped_config_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
                seen += 1;
            }
        }
        assert!(seen > 0, "no config files in {}", dir.display());
    }
}

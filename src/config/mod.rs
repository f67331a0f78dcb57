//! The configuration file -> the validated [`Config`] the rest of labgate sees.
//!
//! Owns loading in one fallible step ([`Config::load`], [`Config::parse`]) through three
//! stages, as river goes `config/toml.rs` -> `config/internal.rs`:
//! - `raw`: serde types mirroring the TOML, with the defaults (`deny_unknown_fields`);
//! - `validate`: every rule on the file's meaning, pure;
//! - `resolve`: the only I/O, upstream addresses and secret header values.
//!
//! [`diff`] compares the running config with a reloaded one (pure).
//!
//! This module holds the final types and turns a stage's problem into a [`ConfigError`]
//! naming the file, line and column. Must never panic on bad input, and nothing outside
//! `config` may see a raw or half-checked value.

use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use ipnet::IpNet;
use toml::Spanned;

use crate::path::RouteTable;
use crate::queue::Timeouts;
use crate::tls::listener::{ListenerTls, ServerTlsConfig};
use crate::tls::upstream::UpstreamTls;

pub use diff::{diff, ConfigDiff};
pub use identity::{IdentityConfig, IdentitySource};

mod diff;
mod identity;
mod raw;
mod resolve;
#[cfg(test)]
pub(crate) mod tests;
mod validate;

pub use validate::{
    DEFAULT_MAX_SESSIONS_PER_CLIENT, MAX_BURST, MAX_REFILL_EVERY, MAX_SERVER_DURATION,
    MAX_SESSIONS, MAX_SESSION_TIMEOUT, MAX_THREADS, MAX_UPSTREAM_TIMEOUT,
};

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
    /// Identity mode; `None`: session ids are bearer tokens.
    pub identity: Option<IdentityConfig>,
    /// The listener's TLS material, loaded and checked (`[server.tls]`, and the client
    /// CA in `mtls` mode); `None`: plain HTTP.
    pub listener_tls: Option<std::sync::Arc<ListenerTls>>,
    pub compat: CompatConfig,
    /// Device tunnels: what they may reach, their limit and timeouts.
    pub tunnels: crate::tunnel::config::TunnelsConfig,
    /// Every file holding a secret (header secret files, TLS private keys), with what it
    /// is for: `labgate check` and start-up warn when group or others can read one.
    pub secret_files: Vec<SecretFile>,
}

/// A file whose contents are a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretFile {
    /// What it holds, for the warning: `header "X-Lab-Key" of upstream "lab"`.
    pub what: String,
    pub path: PathBuf,
}

impl SecretFile {
    /// The warning for this file with permission bits `mode`, if group or others may
    /// read (or write) it. Pure: the caller reads the mode.
    pub fn mode_warning(&self, mode: u32) -> Option<String> {
        (mode & 0o077 != 0).then(|| {
            format!(
                "secret file {} ({}) is readable by group/others (mode {:03o}): \
                 chmod 600 it, owned by labgate's user",
                self.path.display(),
                self.what,
                mode & 0o777
            )
        })
    }
}

/// Compatibility switches, each weakening a secure default (`labgate check` warns).
#[derive(Debug, Clone, Default)]
pub struct CompatConfig {
    /// `GET /active-session` answers the holder's full id, as neops-remote-lab's server
    /// does, instead of its public tag. The id is the gate credential.
    pub active_session_id: bool,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: Vec<SocketAddr>,
    pub threads: usize,
    pub grace_period: Duration,
    pub shutdown_timeout: Duration,
    pub trusted_proxies: Vec<IpNet>,
    /// `[server.tls]`: HTTPS on every `listen` address.
    pub tls: Option<ServerTlsConfig>,
    /// Client connection caps and timeouts (see `conn`).
    pub keepalive_timeout: Duration,
    pub header_timeout: Duration,
    pub tcp_keepalive: Duration,
    pub max_connections: usize,
    pub max_connections_per_client: usize,
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
    /// Live sessions one client (an IPv4 address, an IPv6 /64) may hold at once (§4).
    pub max_sessions_per_client: usize,
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
    /// How often the idle upstream is probed for `labgate_upstream_up` (`health`);
    /// `None`: never, the gauge follows forwarded requests only.
    pub health_interval: Option<Duration>,
    /// Injected into every forwarded request, replacing any client-sent header of the name.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// `[upstream.tls]`: HTTPS (and HTTP/2 by ALPN) to this upstream.
    pub tls: Option<UpstreamTls>,
    /// Upstream sessions, per-turn token, handoff hooks (§8).
    pub bridge: crate::bridge::config::BridgeConfig,
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.addr)
    }
}

/// The admin socket of a system labgate: systemd's `RuntimeDirectory=labgate`.
pub const SYSTEM_ADMIN_SOCKET: &str = "/run/labgate/admin.sock";

/// The admin socket when `[admin]` names none, and `labgate admin`'s when given neither
/// `--socket` nor `--config`: the same for the server and the CLI run by the same user.
pub fn default_admin_socket() -> PathBuf {
    default_admin_socket_for(
        nix::unistd::geteuid().as_raw(),
        std::env::var_os("XDG_RUNTIME_DIR").as_deref(),
    )
}

/// [`default_admin_socket`] for a process with effective uid `euid` and this
/// `XDG_RUNTIME_DIR`. Pure.
///
/// Root, and any user without a login session's runtime directory (a system service
/// such as the packaged unit's `labgate` user, or `sudo -u labgate`), share
/// [`SYSTEM_ADMIN_SOCKET`]. A logged-in user (who has `XDG_RUNTIME_DIR`, private to
/// them) gets `$XDG_RUNTIME_DIR/labgate/admin.sock`, so the shipped config starts
/// without root. Root ignores `XDG_RUNTIME_DIR`, so that `sudo labgate admin` finds
/// the system labgate whatever root's login set.
pub fn default_admin_socket_for(euid: u32, runtime_dir: Option<&std::ffi::OsStr>) -> PathBuf {
    match runtime_dir.map(Path::new) {
        Some(dir) if euid != 0 && dir.is_absolute() => dir.join("labgate").join("admin.sock"),
        _ => PathBuf::from(SYSTEM_ADMIN_SOCKET),
    }
}

/// How often a neops-remote-lab client polls its session while it waits.
const NEOPS_POLL: std::time::Duration = std::time::Duration::from_secs(5);

impl Config {
    /// Settings that are allowed but dangerous, one line each, for `labgate check` and
    /// the start-up log. Reads the modes of the secret files (and nothing else).
    pub fn warnings(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .upstreams
            .iter()
            .filter_map(|u| u.tls.as_ref().map(|t| t.warnings(&u.name)))
            .flatten()
            .collect();
        if self.queue.timeouts.waiting < NEOPS_POLL {
            out.push(format!(
                "[queue] waiting_timeout = {:?} is shorter than a neops-remote-lab client's \
                 {:?} poll: every waiting neops client would be reaped as stale",
                self.queue.timeouts.waiting, NEOPS_POLL
            ));
        }
        for file in &self.secret_files {
            use std::os::unix::fs::PermissionsExt;
            // A file that vanished since loading has no mode to judge; reading it failed
            // loudly at load time if it was missing then.
            if let Ok(meta) = std::fs::metadata(&file.path) {
                out.extend(file.mode_warning(meta.permissions().mode()));
            }
        }
        if self.compat.active_session_id {
            out.push(
                "[compat] active_session_id = true: GET /active-session hands the holder's \
                 session id (its credential) to any caller; anyone who can reach labgate can \
                 use or end the holder's session"
                    .to_string(),
            );
        }
        out
    }

    /// Directories labgate needs but must not create (as root, with whatever mode): a
    /// missing one is the operator's to make. `labgate check` and `serve` both refuse
    /// them, one line each. Not part of parsing, which stays about the file (the shipped
    /// configs parse on any machine).
    pub fn missing_dirs(&self) -> Vec<String> {
        let mut out = Vec::new();
        // The admin socket's directory is `admin::socket::plan`'s (labgate creates it
        // in a private parent); `server::start_problems` asks both.
        if let Some(path) = &self.queue.state_path {
            out.extend(need_dir(path, "[queue] state_path"));
        }
        out
    }

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
        let at = |span: Option<Span>, message: String| {
            let (line, column) = span.map_or((1, 1), |s| line_col(text, s.start));
            ConfigError {
                file: file.to_string(),
                line,
                column,
                message,
            }
        };
        let raw: raw::RawConfig = toml::from_str(text).map_err(|e| {
            let value = e.span().and_then(|s| text.get(s)).unwrap_or("");
            at(e.span(), friendly(&one_line(e.message()), value))
        })?;
        validate::validate(raw)
            .and_then(resolve::resolve)
            .map_err(|(span, msg)| at(span, msg))
    }
}

/// serde's messages name Rust types and give no hint: say what the file should hold
/// instead. `value`: the offending text in the file.
fn friendly(message: &str, value: &str) -> String {
    let value = value.trim();
    let shown: String = value.chars().take(60).collect();
    if message.contains("RawSecret") {
        "a header secret is a table naming where the value comes from: \
         { env = \"VAR\" } or { file = \"/path\" }"
            .to_string()
    } else if message.contains("invalid socket address syntax") {
        format!(
            "{shown} is not an IP:port address (hostnames are not accepted here), \
             e.g. \"127.0.0.1:8080\" or \"[::1]:8080\""
        )
    } else if message.contains("expected a string")
        && !value.is_empty()
        && value.bytes().all(|b| b.is_ascii_digit())
    {
        format!("a duration is a string with a unit: write \"{shown}s\", not {shown}")
    } else {
        message.to_string()
    }
}

/// `Some(problem)` unless the directory that will hold `path` exists.
fn need_dir(path: &std::path::Path, key: &str) -> Option<String> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => return None,
    };
    (!dir.is_dir()).then(|| {
        format!(
            "{key} {:?}: directory {} does not exist; create it (owned by labgate's user, \
             mode 0700), e.g. with systemd's RuntimeDirectory= or StateDirectory=",
            path.display(),
            dir.display()
        )
    })
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

/// A byte range in the file.
type Span = std::ops::Range<usize>;

/// A stage's error: where in the file (if anywhere) and what is wrong.
type Problem = (Option<Span>, String);

fn problem<T>(span: impl Into<Option<Span>>, msg: impl Into<String>) -> Result<T, Problem> {
    Err((span.into(), msg.into()))
}

fn span_of<T>(s: &Spanned<T>) -> Option<Span> {
    let span = s.span();
    // Defaults carry an empty span: they are not in the file.
    (!span.is_empty()).then_some(span)
}

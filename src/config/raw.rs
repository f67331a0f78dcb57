//! The raw configuration: serde types that mirror the TOML file, with its defaults.
//!
//! Owns the file's shape (every table and key, `deny_unknown_fields` everywhere, so a typo
//! is an error with a position, never a silently ignored setting) and the default of each
//! optional key. Values keep their spans for error positions. Must never check meaning
//! (that is `validate`) nor touch the network, the environment or files (`resolve`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use toml::Spanned;

pub(super) use super::identity::{RawIdentity, RawServerTls};
use crate::bridge;
pub(super) use crate::tls::upstream::RawUpstreamTls;

/// A duration written as a humantime string: "300s", "10m", "500ms".
#[derive(Debug, Clone, Copy)]
pub(super) struct Dur(pub(super) Duration);

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
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) server: RawServer,
    #[serde(default)]
    pub(super) metrics: RawMetrics,
    #[serde(default)]
    pub(super) queue: RawQueue,
    #[serde(default)]
    pub(super) rate_limit: RawRateLimit,
    #[serde(default)]
    pub(super) upstream: Vec<Spanned<RawUpstream>>,
    pub(super) demo_lab: Option<RawDemoLab>,
    pub(super) admin: Option<RawAdmin>,
    /// Absent: session ids are bearer tokens (the neops model).
    pub(super) identity: Option<RawIdentity>,
    #[serde(default)]
    pub(super) compat: RawCompat,
    /// Device tunnels; its own module mirrors and checks it (`tunnel::config`).
    #[serde(default)]
    pub(super) tunnels: crate::tunnel::config::RawTunnels,
}

/// Compatibility switches that weaken a default; `labgate check` warns about each.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawCompat {
    pub(super) active_session_id: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    /// Absent: [`super::default_admin_socket`].
    pub(super) socket: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawServer {
    pub(super) listen: Spanned<Vec<SocketAddr>>,
    pub(super) threads: Spanned<usize>,
    pub(super) grace_period: Spanned<Dur>,
    pub(super) shutdown_timeout: Spanned<Dur>,
    pub(super) trusted_proxies: Vec<Spanned<String>>,
    /// Absent: plain HTTP.
    pub(super) tls: Option<RawServerTls>,
    pub(super) keepalive_timeout: Spanned<Dur>,
    pub(super) header_timeout: Spanned<Dur>,
    pub(super) tcp_keepalive: Spanned<Dur>,
    pub(super) max_connections: Spanned<usize>,
    pub(super) max_connections_per_client: Spanned<usize>,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            listen: Spanned::new(0..0, vec![SocketAddr::from(([127, 0, 0, 1], 8080))]),
            threads: Spanned::new(0..0, 2),
            grace_period: Spanned::new(0..0, secs(10)),
            shutdown_timeout: Spanned::new(0..0, secs(5)),
            trusted_proxies: Vec::new(),
            tls: None,
            // nginx's keepalive_timeout is 75 s and client_header_timeout 60 s; a real
            // client sends its header in milliseconds, so 20 s is plenty.
            keepalive_timeout: Spanned::new(0..0, secs(75)),
            header_timeout: Spanned::new(0..0, secs(20)),
            tcp_keepalive: Spanned::new(0..0, secs(60)),
            // A forwarded request holds a second descriptor upstream: keep the sum well
            // under the usual limit of 1024 open files.
            max_connections: Spanned::new(0..0, 400),
            // CI runners behind one NAT share an address.
            max_connections_per_client: Spanned::new(0..0, 64),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawMetrics {
    pub(super) listen: Spanned<SocketAddr>,
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
pub(super) struct RawQueue {
    pub(super) active_timeout: Spanned<Dur>,
    pub(super) waiting_timeout: Spanned<Dur>,
    pub(super) reap_interval: Spanned<Dur>,
    pub(super) max_sessions: Spanned<usize>,
    pub(super) max_sessions_per_client: Option<Spanned<usize>>,
    pub(super) max_hold: Option<Spanned<Dur>>,
    pub(super) state_path: Option<Spanned<String>>,
}

impl Default for RawQueue {
    fn default() -> Self {
        RawQueue {
            active_timeout: Spanned::new(0..0, secs(300)),
            waiting_timeout: Spanned::new(0..0, secs(600)),
            reap_interval: Spanned::new(0..0, secs(1)),
            max_sessions: Spanned::new(0..0, 10_000),
            max_sessions_per_client: None,
            max_hold: None,
            state_path: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawRateLimit {
    pub(super) burst: Spanned<u32>,
    pub(super) refill_every: Spanned<Dur>,
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
pub(super) struct RawUpstream {
    pub(super) name: Spanned<String>,
    pub(super) address: Spanned<String>,
    pub(super) routes: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    pub(super) strip_prefix: bool,
    #[serde(default = "default_connect_timeout")]
    pub(super) connect_timeout: Spanned<Dur>,
    #[serde(default = "default_io_timeout")]
    pub(super) read_timeout: Spanned<Dur>,
    #[serde(default = "default_io_timeout")]
    pub(super) write_timeout: Spanned<Dur>,
    #[serde(default)]
    pub(super) headers: BTreeMap<Spanned<String>, Spanned<RawSecret>>,
    /// How often an idle upstream is probed (a TCP connect) for `labgate_upstream_up`:
    /// a duration, or `"off"`. Absent: [`DEFAULT_HEALTH_INTERVAL`].
    pub(super) health_interval: Option<Spanned<String>>,
    /// Absent: plain HTTP to this upstream.
    pub(super) tls: Option<RawUpstreamTls>,
    /// `[upstream.neops]`, `[upstream.token]`, `[upstream.hooks]`: the bridge (§8).
    pub(super) neops: Option<Spanned<bridge::config::RawNeops>>,
    pub(super) token: Option<bridge::config::RawToken>,
    pub(super) hooks: Option<bridge::config::RawHooks>,
}

/// The probe interval of an upstream that does not set `health_interval`.
pub(super) const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(10);

fn default_connect_timeout() -> Spanned<Dur> {
    Spanned::new(0..0, secs(5))
}

fn default_io_timeout() -> Spanned<Dur> {
    Spanned::new(0..0, secs(60))
}

/// Where an injected header's value comes from; never the TOML itself (§5).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSecret {
    pub(super) env: Option<String>,
    pub(super) file: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDemoLab {
    pub(super) listen: Spanned<SocketAddr>,
}

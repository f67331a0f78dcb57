//! The config builder: a labgate config with test-friendly defaults, changed one
//! setting at a time, rendered to TOML through `serde` (so quoting and escaping are the
//! `toml` crate's, never hand-written). Knows the file's shape only, never its meaning:
//! labgate itself validates what a test renders.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// One `[[upstream]]`.
#[derive(Clone, Debug)]
pub struct UpstreamCfg {
    pub name: String,
    pub address: String,
    pub routes: Vec<String>,
    pub strip_prefix: bool,
    pub connect_timeout: String,
    pub read_timeout: String,
    pub write_timeout: String,
    /// `health_interval` (a duration or `"off"`); `None`: labgate's default.
    pub health_interval: Option<String>,
    /// Injected headers: (name, secret value); the value is written to a file.
    pub headers: Vec<(String, String)>,
    /// `[upstream.tls]`, as TOML text.
    pub tls: Option<toml::Table>,
    /// The bridge tables (`[upstream.neops]`, `[upstream.token]`, `[upstream.hooks]`),
    /// given as TOML text relative to the upstream.
    pub bridge: toml::Table,
}

impl UpstreamCfg {
    pub fn new(name: &str, addr: SocketAddr) -> Self {
        UpstreamCfg {
            name: name.to_string(),
            address: addr.to_string(),
            routes: vec!["/lab".to_string()],
            strip_prefix: false,
            connect_timeout: "2s".to_string(),
            read_timeout: "30s".to_string(),
            write_timeout: "30s".to_string(),
            health_interval: None,
            headers: Vec::new(),
            tls: None,
            bridge: toml::Table::new(),
        }
    }

    /// `[upstream.tls]` with these keys (TOML text).
    pub fn tls(mut self, toml_text: &str) -> Self {
        self.tls = Some(toml::from_str(toml_text).expect("upstream.tls is TOML"));
        self
    }
    pub fn routes(mut self, routes: &[&str]) -> Self {
        self.routes = routes.iter().map(|r| r.to_string()).collect();
        self
    }
    pub fn strip_prefix(mut self, strip: bool) -> Self {
        self.strip_prefix = strip;
        self
    }
    pub fn read_timeout(mut self, t: &str) -> Self {
        self.read_timeout = t.to_string();
        self
    }
    pub fn connect_timeout(mut self, t: &str) -> Self {
        self.connect_timeout = t.to_string();
        self
    }
    pub fn health_interval(mut self, t: &str) -> Self {
        self.health_interval = Some(t.to_string());
        self
    }
    /// Bridge tables as TOML text, like `"[neops]\nkeepalive = \"1s\""`.
    pub fn bridge(mut self, toml_text: &str) -> Self {
        self.bridge = toml::from_str(toml_text).expect("bridge tables are TOML");
        self
    }
    pub fn header(mut self, name: &str, secret: &str) -> Self {
        self.headers.push((name.to_string(), secret.to_string()));
        self
    }
}

/// `[tunnels]`: device tunnels' limit, timeouts and what they may reach.
#[derive(Clone, Debug, Serialize)]
pub struct TunnelsCfg {
    pub max_per_session: usize,
    pub connect_timeout: String,
    pub keepalive: String,
    /// `[[tunnels.device]]`.
    #[serde(rename = "device", skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<DeviceCfg>,
    /// `[[tunnels.network]]`.
    #[serde(rename = "network", skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<NetworkCfg>,
}

#[derive(Clone, Debug, Serialize)]
pub struct DeviceCfg {
    pub name: String,
    pub address: String,
    pub ports: Vec<u16>,
}

#[derive(Clone, Debug, Serialize)]
pub struct NetworkCfg {
    pub cidr: String,
    pub ports: Vec<u16>,
}

impl TunnelsCfg {
    /// At most `max` tunnels per session, short timeouts, nothing reachable yet.
    pub fn new(max: usize) -> Self {
        TunnelsCfg {
            max_per_session: max,
            connect_timeout: "2s".to_string(),
            keepalive: "25s".to_string(),
            devices: Vec::new(),
            networks: Vec::new(),
        }
    }

    /// A named device at `addr`'s IP, on `addr`'s port.
    pub fn device(mut self, name: &str, addr: SocketAddr) -> Self {
        self.devices.push(DeviceCfg {
            name: name.to_string(),
            address: addr.ip().to_string(),
            ports: vec![addr.port()],
        });
        self
    }

    pub fn network(mut self, cidr: &str, ports: &[u16]) -> Self {
        self.networks.push(NetworkCfg {
            cidr: cidr.to_string(),
            ports: ports.to_vec(),
        });
        self
    }
}

/// A labgate config with test-friendly defaults: long timeouts, a generous rate limit.
#[derive(Clone, Debug)]
pub struct Cfg {
    pub threads: usize,
    pub grace_period: String,
    pub shutdown_timeout: String,
    pub trusted_proxies: Vec<String>,
    pub active_timeout: String,
    pub waiting_timeout: String,
    pub reap_interval: String,
    pub max_sessions: usize,
    pub burst: u32,
    pub refill_every: String,
    pub upstreams: Vec<UpstreamCfg>,
    /// `[admin] socket`; a relative path is taken inside the gateway's temp dir.
    pub admin_socket: Option<PathBuf>,
    /// `[queue] max_hold`; `None` leaves the key out (no hold limit).
    pub max_hold: Option<String>,
    /// `[queue] state_path`; `None` leaves the key out (memory-only queue).
    pub state_path: Option<PathBuf>,
    /// More TOML merged into the file (`[server.tls]`, `[identity]`, ...).
    pub extra: toml::Table,
    /// The listener speaks HTTPS (`[server.tls]` in `extra`): the start-up health
    /// check then only waits for the port.
    pub https: bool,
    /// `[queue] max_sessions_per_client` (at most `max_sessions` is written); `None`
    /// leaves the key out (labgate's default). The harness lifts it, as it lifts the
    /// rate limit, since every test client is 127.0.0.1.
    pub max_sessions_per_client: Option<usize>,
    /// `[compat] active_session_id`; written only when set.
    pub compat_active_session_id: bool,
    /// `[tunnels]`; `None` leaves the section out (no tunnel target allowed).
    pub tunnels: Option<TunnelsCfg>,
    /// `[server]` connection limits (lifted by default); `None` leaves the keys out.
    pub connections: Option<ConnCfg>,
    /// Runs labgate under this open-file limit (`prlimit --nofile=`: `N` or `SOFT:HARD`).
    pub nofile: Option<String>,
}

/// `[server]` keepalive_timeout, header_timeout, max_connections,
/// max_connections_per_client.
#[derive(Clone, Debug)]
pub struct ConnCfg {
    pub keepalive_timeout: String,
    pub header_timeout: String,
    pub max_connections: usize,
    pub max_connections_per_client: usize,
}

impl Cfg {
    /// Defaults; `upstream` gets route `/lab`.
    pub fn new(upstream: SocketAddr) -> Self {
        Cfg::bare().upstream(UpstreamCfg::new("lab", upstream))
    }

    /// Defaults and no upstream yet (add at least one).
    pub fn bare() -> Self {
        Cfg {
            threads: 2,
            grace_period: "10s".to_string(),
            shutdown_timeout: "2s".to_string(),
            trusted_proxies: Vec::new(),
            active_timeout: "300s".to_string(),
            waiting_timeout: "600s".to_string(),
            reap_interval: "1s".to_string(),
            max_sessions: 10_000,
            burst: 10_000,
            refill_every: "1ms".to_string(),
            upstreams: Vec::new(),
            admin_socket: None,
            max_hold: None,
            state_path: None,
            extra: toml::Table::new(),
            https: false,
            max_sessions_per_client: Some(10_000),
            compat_active_session_id: false,
            tunnels: None,
            // Lifted, as the rate limit is: every test client is 127.0.0.1. Not further:
            // labgate refuses to start when its open-file budget (4 descriptors per
            // connection, src/fdbudget.rs) exceeds the hard limit; 1000 needs 4577.
            connections: Some(ConnCfg {
                keepalive_timeout: "75s".to_string(),
                header_timeout: "20s".to_string(),
                max_connections: 1000,
                max_connections_per_client: 1000,
            }),
            nofile: None,
        }
    }

    /// Merges TOML text into the rendered file (tables merge key by key).
    pub fn extra(mut self, toml_text: &str) -> Self {
        let more: toml::Table = toml::from_str(toml_text).expect("extra config is TOML");
        merge(&mut self.extra, more);
        self
    }

    pub fn max_sessions_per_client(mut self, n: Option<usize>) -> Self {
        self.max_sessions_per_client = n;
        self
    }

    pub fn compat_active_session_id(mut self, on: bool) -> Self {
        self.compat_active_session_id = on;
        self
    }

    /// The listener serves HTTPS (give `[server.tls]` with [`Cfg::extra`]).
    pub fn https(mut self) -> Self {
        self.https = true;
        self
    }

    pub fn upstream(mut self, u: UpstreamCfg) -> Self {
        self.upstreams.push(u);
        self
    }

    /// Short queue timeouts and a fast reaper.
    pub fn timeouts(mut self, active: &str, waiting: &str) -> Self {
        self.active_timeout = active.to_string();
        self.waiting_timeout = waiting.to_string();
        self.reap_interval = "50ms".to_string();
        self
    }

    pub fn rate_limit(mut self, burst: u32, refill_every: &str) -> Self {
        self.burst = burst;
        self.refill_every = refill_every.to_string();
        self
    }

    pub fn max_sessions(mut self, n: usize) -> Self {
        self.max_sessions = n;
        self
    }

    pub fn trusted_proxies(mut self, p: &[&str]) -> Self {
        self.trusted_proxies = p.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn grace_period(mut self, g: &str) -> Self {
        self.grace_period = g.to_string();
        self
    }

    /// Turns the admin API on at `path` (relative: inside the gateway's temp dir; see
    /// [`Gateway::admin_socket`]).
    pub fn admin_socket(mut self, path: impl Into<PathBuf>) -> Self {
        self.admin_socket = Some(path.into());
        self
    }

    pub fn reap_interval(mut self, r: &str) -> Self {
        self.reap_interval = r.to_string();
        self
    }

    /// `[queue] max_hold`: the hold limit (contract §7).
    pub fn max_hold(mut self, m: &str) -> Self {
        self.max_hold = Some(m.to_string());
        self
    }

    /// `[queue] state_path`: the durable queue store (contract §7).
    pub fn state_path(mut self, p: &Path) -> Self {
        // labgate refuses a store directory that others can reach, and tempfile creates
        // directories 0777 & umask (usually 0755): make it private, as an operator would.
        if let Some(dir) = p.parent().filter(|d| d.is_dir()) {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .expect("chmod 700 the store directory");
        }
        self.state_path = Some(p.to_path_buf());
        self
    }

    /// `[tunnels]`: device tunnels (issue 11).
    pub fn tunnels(mut self, t: TunnelsCfg) -> Self {
        self.tunnels = Some(t);
        self
    }

    /// `[server]` connection limits (see [`ConnCfg`]).
    pub fn connections(mut self, c: ConnCfg) -> Self {
        self.connections = Some(c);
        self
    }

    /// Runs labgate with at most `n` open files.
    pub fn nofile(mut self, n: u64) -> Self {
        self.nofile = Some(n.to_string());
        self
    }

    /// Runs labgate with a soft open-file limit of `soft` and a hard one of `hard`.
    pub fn nofile_soft_hard(mut self, soft: u64, hard: u64) -> Self {
        self.nofile = Some(format!("{soft}:{hard}"));
        self
    }

    /// The TOML text; injected header secrets are written as files into `dir`.
    pub fn render(&self, dir: &Path, listen: u16, metrics: u16) -> String {
        let upstream = self
            .upstreams
            .iter()
            .enumerate()
            .map(|(i, u)| {
                let headers = u
                    .headers
                    .iter()
                    .enumerate()
                    .map(|(j, (name, secret))| {
                        let file = dir.join(format!("secret-{i}-{j}"));
                        std::fs::write(&file, format!("{secret}\n")).expect("write secret file");
                        // Private, as an operator keeps it (labgate warns otherwise).
                        use std::os::unix::fs::PermissionsExt;
                        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
                            .expect("chmod the secret file");
                        (name.clone(), SecretFile { file })
                    })
                    .collect();
                UpstreamToml {
                    name: &u.name,
                    address: &u.address,
                    routes: &u.routes,
                    strip_prefix: u.strip_prefix,
                    connect_timeout: &u.connect_timeout,
                    read_timeout: &u.read_timeout,
                    write_timeout: &u.write_timeout,
                    health_interval: u.health_interval.as_deref(),
                    headers,
                    tls: u.tls.clone(),
                    bridge: &u.bridge,
                }
            })
            .collect();
        let file = FileToml {
            server: ServerToml {
                listen: vec![format!("127.0.0.1:{listen}")],
                threads: self.threads,
                grace_period: &self.grace_period,
                shutdown_timeout: &self.shutdown_timeout,
                trusted_proxies: &self.trusted_proxies,
                keepalive_timeout: self
                    .connections
                    .as_ref()
                    .map(|c| c.keepalive_timeout.as_str()),
                header_timeout: self.connections.as_ref().map(|c| c.header_timeout.as_str()),
                max_connections: self.connections.as_ref().map(|c| c.max_connections),
                max_connections_per_client: self
                    .connections
                    .as_ref()
                    .map(|c| c.max_connections_per_client),
            },
            metrics: MetricsToml {
                listen: format!("127.0.0.1:{metrics}"),
            },
            queue: QueueToml {
                active_timeout: &self.active_timeout,
                waiting_timeout: &self.waiting_timeout,
                reap_interval: &self.reap_interval,
                max_sessions: self.max_sessions,
                max_sessions_per_client: self
                    .max_sessions_per_client
                    .map(|n| n.min(self.max_sessions)),
                max_hold: self.max_hold.as_deref(),
                state_path: self.state_path.as_deref(),
            },
            rate_limit: RateLimitToml {
                burst: self.burst,
                refill_every: &self.refill_every,
            },
            admin: self.admin_socket.as_ref().map(|socket| AdminToml {
                socket: dir.join(socket),
            }),
            compat: self.compat_active_session_id.then_some(CompatToml {
                active_session_id: true,
            }),
            tunnels: self.tunnels.as_ref(),
            upstream,
        };
        let text = toml::to_string(&file).expect("a test config renders as TOML");
        if self.extra.is_empty() {
            return text;
        }
        let mut doc: toml::Table = toml::from_str(&text).expect("rendered TOML parses");
        merge(&mut doc, self.extra.clone());
        toml::to_string(&doc).expect("a merged test config renders as TOML")
    }
}

/// Deep-merges `more` into `into`: tables key by key, anything else replaced.
fn merge(into: &mut toml::Table, more: toml::Table) {
    for (k, v) in more {
        match (into.get_mut(&k), v) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

// The file as labgate reads it. Field order is the order in the rendered text; the
// tables (`admin`, `upstream`) must come after every plain value of their parent.

#[derive(Serialize)]
struct FileToml<'a> {
    server: ServerToml<'a>,
    metrics: MetricsToml,
    queue: QueueToml<'a>,
    rate_limit: RateLimitToml<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    admin: Option<AdminToml>,
    #[serde(skip_serializing_if = "Option::is_none")]
    compat: Option<CompatToml>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tunnels: Option<&'a TunnelsCfg>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    upstream: Vec<UpstreamToml<'a>>,
}

#[derive(Serialize)]
struct ServerToml<'a> {
    listen: Vec<String>,
    threads: usize,
    grace_period: &'a str,
    shutdown_timeout: &'a str,
    trusted_proxies: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    keepalive_timeout: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    header_timeout: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_connections: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_connections_per_client: Option<usize>,
}

#[derive(Serialize)]
struct MetricsToml {
    listen: String,
}

#[derive(Serialize)]
struct QueueToml<'a> {
    active_timeout: &'a str,
    waiting_timeout: &'a str,
    reap_interval: &'a str,
    max_sessions: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_sessions_per_client: Option<usize>,
    /// Left out when `None`: no hold limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    max_hold: Option<&'a str>,
    /// Left out when `None`: a memory-only queue.
    #[serde(skip_serializing_if = "Option::is_none")]
    state_path: Option<&'a Path>,
}

#[derive(Serialize)]
struct RateLimitToml<'a> {
    burst: u32,
    refill_every: &'a str,
}

#[derive(Serialize)]
struct CompatToml {
    active_session_id: bool,
}

#[derive(Serialize)]
struct AdminToml {
    socket: PathBuf,
}

#[derive(Serialize)]
struct UpstreamToml<'a> {
    name: &'a str,
    address: &'a str,
    routes: &'a [String],
    strip_prefix: bool,
    connect_timeout: &'a str,
    read_timeout: &'a str,
    write_timeout: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    health_interval: Option<&'a str>,
    /// `[upstream.headers]`: header name -> `{ file = ... }`. Left out when empty.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    headers: BTreeMap<String, SecretFile>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls: Option<toml::Table>,
    /// The bridge tables, after every plain value.
    #[serde(flatten)]
    bridge: &'a toml::Table,
}

#[derive(Serialize)]
struct SecretFile {
    file: PathBuf,
}

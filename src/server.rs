//! Assembles the pingora server from a [`Config`]: the gateway listener (plain HTTP, or
//! HTTPS whose material SIGHUP reloads), the metrics listener, the reloader (SIGHUP:
//! TLS files and the config file), the reaper, the optional
//! demo lab, and a shutdown watch that drains.
//!
//! Owns start-up and shutdown only. On SIGTERM or SIGINT it waits until no forwarded
//! request is in flight (at most `grace_period`), cuts what is left (a device tunnel gets
//! its WebSocket close 4001 `labgate shutting down`), then lets pingora stop its runtimes;
//! pingora's own grace period would sleep the whole period (300 s by default) even when
//! nothing is running. Must never panic on a bad environment: a listener that cannot be
//! bound is reported before pingora starts, because pingora would panic inside a service
//! thread and keep the process running without it.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use pingora::listeners::TcpSocketOptions;
use pingora::protocols::l4::ext::TcpKeepalive;
use pingora::server::configuration::ServerConf;
use pingora::server::ShutdownWatch;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;

use crate::admin::{self, AdminService};
use crate::config::{Config, MAX_SERVER_DURATION};
use crate::conn::{ConnLimits, Guarded};
use crate::cut::SHUTTING_DOWN;
use crate::demo::DemoLab;
use crate::fdbudget;
use crate::proxy::LabGate;
use crate::reaper::{BridgeService, HealthService, Reaper};
use crate::state::{Shared, Trigger};
use crate::tls::listener::ListenerTls;

/// How long a stop waits for the queue store's journal to be checkpointed.
const STORE_SETTLE: Duration = Duration::from_secs(2);
/// How often a draining shutdown looks at the in-flight count.
const DRAIN_POLL: Duration = Duration::from_millis(20);
/// After the grace period, how long cut connections get to close (a tunnel's close
/// frame has `splice::CLOSE_GRACE`) before the runtimes stop.
const CUT_WAIT: Duration = Duration::from_secs(1);
/// TCP keepalive probes: one every 10 s, 6 unanswered ones close the connection.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_PROBES: usize = 6;

/// Checks that every address can be bound now, with a clear error if not.
fn check_listeners(config: &Config) -> anyhow::Result<()> {
    let mut all: Vec<(&str, SocketAddr)> = config
        .server
        .listen
        .iter()
        .map(|a| ("server.listen", *a))
        .collect();
    all.push(("metrics.listen", config.metrics.listen));
    if let Some(demo) = &config.demo_lab {
        all.push(("demo_lab.listen", demo.listen));
    }
    for (what, addr) in all {
        TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr} ({what})"))?;
    }
    Ok(())
}

/// What would stop `serve` before anything starts, one line each, for `labgate check`
/// and start-up: a missing state directory, an admin socket directory that others can
/// write to or that labgate may not create, a file that is not a socket in its place.
pub fn start_problems(config: &Config) -> Vec<String> {
    let mut out = config.missing_dirs();
    if let Some(socket) = &config.admin_socket {
        out.extend(admin::socket::plan(socket).err());
    }
    out
}

/// TCP keepalive on every accepted client socket: a client that vanished (power cut,
/// NAT state lost) behind an upgraded connection, which has no read timeout, is noticed
/// after `idle` plus [`KEEPALIVE_PROBES`] unanswered probes, and its connection closed.
fn socket_options(idle: Duration) -> TcpSocketOptions {
    let mut opts = TcpSocketOptions::default();
    opts.tcp_keepalive = Some(TcpKeepalive {
        idle,
        interval: KEEPALIVE_INTERVAL,
        count: KEEPALIVE_PROBES,
        user_timeout: Duration::ZERO,
    });
    opts
}

/// Builds and runs labgate until SIGTERM or SIGINT; returns after a graceful drain.
/// `config_path`: the file `config` was loaded from, read again on SIGHUP and
/// `labgate admin reload`.
pub fn run(config: Config, config_path: &Path) -> anyhow::Result<()> {
    check_listeners(&config)?;
    if let Some(first) = start_problems(&config).first() {
        anyhow::bail!("{first}");
    }
    // Before anything opens descriptors by the hundred: EMFILE in pingora's accept loop
    // only resets clients and fills the log (issue 11).
    let budget = fdbudget::need(&config);
    let limit = fdbudget::ensure(budget)?;
    tracing::info!(need = budget.total(), limit = %limit, "open-file budget: {budget}");
    let listen = config.server.listen.clone();
    let metrics_listen = config.metrics.listen;
    let demo = config.demo_lab.clone();
    let grace = config.server.grace_period;
    let listener_tls = config.listener_tls.clone();
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    let server_conf = server_conf(&config);
    let tcp_keepalive = config.server.tcp_keepalive;
    let conn_limits = ConnLimits {
        keepalive_timeout: config.server.keepalive_timeout,
        header_timeout: config.server.header_timeout,
        max_connections: config.server.max_connections,
        max_connections_per_client: config.server.max_connections_per_client,
        trusted_proxies: config.server.trusted_proxies.clone(),
    };
    // The store is opened (and the queue restored) before pingora starts, so that a
    // store that cannot be opened is a clean start-up error.
    let admin_path = config.admin_socket.clone();
    let shared = Shared::new(config)?;
    shared.set_config_path(config_path.to_path_buf());
    // `_socket_file` lives until this function returns, by any path: its drop removes
    // the socket (issue 15 #12).
    let (admin, _socket_file) = match admin_path {
        Some(path) => {
            let (listener, file) = admin::bind(&path)?;
            let service = AdminService::new(shared.clone(), file.path().to_path_buf(), listener);
            (Some(service), Some(file))
        }
        None => (None, None),
    };
    let mut server = Server::new_with_opt_and_conf(None, server_conf);
    server.bootstrap();

    let proxy = pingora::proxy::http_proxy(&server.configuration, LabGate::new(shared.clone()));
    let mut gateway = Service::new(
        "labgate".to_string(),
        Guarded::new(
            proxy,
            conn_limits,
            shared.metrics().client_connections_closed.clone(),
        ),
    );
    add_gateway_listeners(
        &mut gateway,
        &listen,
        listener_tls.as_ref(),
        &socket_options(tcp_keepalive),
    );
    let mut metrics = pingora_prometheus::prometheus_http_service();
    metrics.add_tcp(&metrics_listen.to_string());
    server.add_service(gateway);
    server.add_service(metrics);
    server.add_service(background_service("reaper", Reaper::new(shared.clone())));
    server.add_service(background_service(
        "bridge",
        BridgeService::new(shared.clone()),
    ));
    server.add_service(background_service(
        "upstream health",
        HealthService::new(shared.clone()),
    ));
    if let Some(admin) = admin {
        server.add_service(background_service("admin API", admin));
    }
    let reloader = Reloader {
        shared: shared.clone(),
        tls: listener_tls.clone(),
    };
    server.add_service(background_service("reloader", reloader));
    if let Some(demo) = demo {
        let mut lab = Service::new("demo lab".to_string(), DemoLab);
        lab.add_tcp(&demo.listen.to_string());
        server.add_service(lab);
        tracing::info!(listen = %demo.listen, "demo lab serving a fake device API");
    }
    tracing::info!(
        listen = ?listen,
        https = listener_tls.is_some(),
        metrics = %metrics_listen,
        version = env!("CARGO_PKG_VERSION"),
        "labgate starting"
    );
    let store = shared.clone();
    server.run(RunArgs {
        shutdown_signal: Box::new(DrainOnSignal {
            begin: Box::new({
                let shared = shared.clone();
                move || shared.begin_shutdown()
            }),
            in_flight: Box::new({
                let shared = shared.clone();
                move || shared.forwarded_in_flight()
            }),
            cut: Box::new(move |reason| {
                shared.cut_everything(reason);
            }),
            grace,
        }),
    });
    // The journal's last changes into the store file (the committer does it once jobs
    // pause, within milliseconds): a copy of the stopped store is then the whole queue.
    // Nothing is lost either way; the next start replays the journal.
    if !store.settle_store(STORE_SETTLE) {
        tracing::warn!("the queue store's journal still has changes; the next start replays them");
    }
    tracing::info!("labgate stopped");
    Ok(())
}

/// Adds the gateway's listeners: HTTPS when `tls` is given, plain HTTP otherwise.
fn add_gateway_listeners<A: Send + Sync + 'static>(
    service: &mut Service<A>,
    listen: &[SocketAddr],
    tls: Option<&Arc<ListenerTls>>,
    sock: &TcpSocketOptions,
) {
    for addr in listen {
        match tls {
            Some(tls) => {
                service.add_tls_with_settings(&addr.to_string(), Some(sock.clone()), tls.settings())
            }
            None => service.add_tcp_with_settings(&addr.to_string(), sock.clone()),
        }
    }
}

/// On SIGHUP, re-reads the listener's certificate, key, client CA and CRL, then the
/// config file (`Shared::reload`, the same as `labgate admin reload`). New handshakes
/// use the new TLS material; open connections keep what they were accepted with. A
/// reload that fails keeps the old material or config and says why in the log.
struct Reloader {
    shared: Arc<Shared>,
    tls: Option<Arc<ListenerTls>>,
}

impl Reloader {
    async fn reload(&self) {
        if let Some(tls) = &self.tls {
            match tls.reload() {
                Ok(()) => tracing::info!("SIGHUP: TLS certificate, key and client CA reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "SIGHUP: TLS reload failed; keeping the files loaded before")
                }
            }
        }
        // Reading files and resolving addresses blocks. The outcome is logged, counted
        // and audited by `reload` itself.
        let shared = self.shared.clone();
        let _ = tokio::task::spawn_blocking(move || shared.reload(Trigger::Signal)).await;
    }
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::error!("cannot install the SIGHUP handler; nothing will be reloaded");
            return;
        };
        loop {
            tokio::select! {
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        break;
                    }
                }
                _ = hup.recv() => self.reload().await,
            }
        }
    }
}

/// pingora's settings from the config. Pure, so a test can feed it any validated config.
pub fn server_conf(config: &Config) -> ServerConf {
    ServerConf {
        threads: config.server.threads,
        // Our shutdown watch does the draining; pingora must not sleep on top of it.
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(
            config
                .server
                .shutdown_timeout
                .min(MAX_SERVER_DURATION)
                .as_secs()
                .max(1),
        ),
        ..ServerConf::default()
    }
}

/// When a drain that starts at `now` gives up. Validation bounds `grace`; it is clamped
/// again because `Instant + Duration` panics on overflow, and at SIGTERM of all times.
pub fn drain_deadline(now: Instant, grace: Duration) -> Instant {
    now.checked_add(grace.min(MAX_SERVER_DURATION))
        .unwrap_or(now)
}

/// Runs only the demo lab until SIGTERM or SIGINT.
pub fn run_demo_lab(listen: SocketAddr) -> anyhow::Result<()> {
    TcpListener::bind(listen).with_context(|| format!("cannot listen on {listen}"))?;
    let conf = ServerConf {
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut lab = Service::new("demo lab".to_string(), DemoLab);
    lab.add_tcp(&listen.to_string());
    server.add_service(lab);
    tracing::info!(listen = %listen, "demo lab serving a fake device API");
    server.run(RunArgs {
        shutdown_signal: Box::new(DrainOnSignal {
            begin: Box::new(|| ()),
            in_flight: Box::new(|| 0),
            cut: Box::new(|_| ()),
            grace: Duration::ZERO,
        }),
    });
    Ok(())
}

/// SIGTERM and SIGINT both drain: wait for forwarded requests to finish, at most `grace`.
struct DrainOnSignal {
    /// Called once the signal arrives (refuse new sessions).
    begin: Box<dyn Fn() + Send + Sync>,
    in_flight: Box<dyn Fn() -> usize + Send + Sync>,
    /// Cuts every connection still open, with this reason.
    cut: Box<dyn Fn(&'static str) + Send + Sync>,
    grace: Duration,
}

#[async_trait]
impl ShutdownSignalWatch for DrainOnSignal {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let (term, int) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        );
        let (Ok(mut term), Ok(mut int)) = (term, int) else {
            tracing::error!("cannot install signal handlers; shutting down");
            return ShutdownSignal::FastShutdown;
        };
        let which = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        (self.begin)();
        let deadline = drain_deadline(Instant::now(), self.grace);
        tracing::info!(
            signal = which,
            in_flight = (self.in_flight)(),
            grace = ?self.grace,
            "draining before shutdown"
        );
        while (self.in_flight)() > 0 && Instant::now() < deadline {
            tokio::time::sleep(DRAIN_POLL).await;
        }
        let left = (self.in_flight)();
        if left > 0 {
            tracing::warn!(in_flight = left, "grace period over; cutting what is left");
            // Closed, not dropped: a tunnel's client gets its WebSocket close (4001 and
            // the reason) and every connection its shutdown, as when a turn ends.
            (self.cut)(SHUTTING_DOWN);
            let closed = Instant::now() + CUT_WAIT;
            while (self.in_flight)() > 0 && Instant::now() < closed {
                tokio::time::sleep(DRAIN_POLL).await;
            }
        }
        ShutdownSignal::GracefulTerminate
    }
}

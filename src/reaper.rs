//! The background services: the stale reaper, which ends idle sessions on a tick and
//! promotes the next one (contract §3), and the bridge's lanes (§8).
//!
//! Owns only the schedules; what is stale is the queue's decision, what a lane does the
//! bridge's. It stops when pingora
//! signals shutdown. Must never sleep while holding the queue lock.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::time::MissedTickBehavior;

use crate::config::MAX_SERVER_DURATION;
use crate::state::Shared;

pub struct Reaper {
    shared: Arc<Shared>,
    interval: Duration,
}

impl Reaper {
    pub fn new(shared: Arc<Shared>) -> Self {
        Reaper {
            interval: tick(shared.config().queue.reap_interval),
            shared,
        }
    }
}

/// The reaper's tick: validation keeps `reap_interval` in (0, 1 h]; clamped again
/// because tokio's interval panics on a zero period and on an `Instant` overflow.
pub fn tick(reap_interval: Duration) -> Duration {
    reap_interval.clamp(Duration::from_millis(1), MAX_SERVER_DURATION)
}

/// Runs the bridge's lanes (contract §8) until shutdown; nothing when no upstream is
/// bridged.
pub struct BridgeService {
    shared: Arc<Shared>,
}

impl BridgeService {
    pub fn new(shared: Arc<Shared>) -> Self {
        BridgeService { shared }
    }
}

#[async_trait]
impl BackgroundService for BridgeService {
    async fn start(&self, shutdown: ShutdownWatch) {
        if self.shared.bridge.is_empty() {
            return;
        }
        let turns: Arc<dyn crate::bridge::Turns> = self.shared.clone();
        self.shared.bridge.clone().run(turns, shutdown).await;
        tracing::debug!("bridge stopped");
    }
}

#[async_trait]
impl BackgroundService for Reaper {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                // A closed channel means the server is gone: stop too.
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        break;
                    }
                }
                _ = tick.tick() => {
                    let reaped = self.shared.reap(Instant::now()).await;
                    if reaped > 0 {
                        tracing::debug!(reaped, "stale sessions reaped");
                    }
                }
            }
        }
        tracing::debug!("reaper stopped");
    }
}

/// Probes idle upstreams for `labgate_upstream_up` (`health`): on each tick, every
/// upstream whose probe is due gets one TCP connect, all at once (a slow one does not
/// hold the others back), each bounded by the smaller of its `connect_timeout` and its
/// `health_interval`. A TLS upstream is probed at the TCP level only. Nothing runs when
/// every upstream has `health_interval = "off"`.
pub struct HealthService {
    shared: Arc<Shared>,
}

impl HealthService {
    pub fn new(shared: Arc<Shared>) -> Self {
        HealthService { shared }
    }
}

/// How often the health service looks for due probes: twice per shortest interval, so
/// an idle upstream is probed between one and one and a half intervals after the last
/// signal.
pub fn health_tick(shortest_interval: Duration) -> Duration {
    (shortest_interval / 2).clamp(Duration::from_millis(100), MAX_SERVER_DURATION)
}

/// One probe: does `addr` accept a TCP connection within `timeout`?
async fn probe(addr: std::net::SocketAddr, timeout: Duration) -> bool {
    matches!(
        tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

#[async_trait]
impl BackgroundService for HealthService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // The tick follows the config at start-up (a reload that shortens the shortest
        // interval probes at the old pace until a restart); each tick reads the config in
        // force, so reloaded upstreams are probed.
        let Some(shortest) = self
            .shared
            .config()
            .upstreams
            .iter()
            .filter_map(|u| u.health_interval)
            .min()
        else {
            return;
        };
        // The first look comes one tick after start, not at once: the demo lab (and
        // anything started with labgate) gets time to listen before it is judged.
        let period = health_tick(shortest);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        break;
                    }
                    continue;
                }
                _ = tick.tick() => {}
            }
            let now = Instant::now();
            let current = self.shared.config();
            let (upstreams, board) = (&current.upstreams, &current.health);
            let probes = upstreams
                .iter()
                .enumerate()
                .filter(|(i, u)| board.probe_due(*i, now, u.health_interval))
                .map(|(i, u)| async move {
                    let timeout = u.connect_timeout.min(u.health_interval.unwrap_or_default());
                    (i, probe(u.addr, timeout).await)
                });
            let probes = futures_util::future::join_all(probes);
            tokio::select! {
                // Shutting down mid-probe: the answers no longer matter.
                _ = shutdown.changed() => break,
                results = probes => {
                    for (i, reachable) in results {
                        board.record(i, reachable, Instant::now());
                    }
                }
            }
        }
        tracing::debug!("health probes stopped");
    }
}

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

//! The bridge side of [`Shared`] (contract §8): building the lanes, and the
//! [`bridge::Turns`] reports through which a reset ends and the next holder is promoted.

use super::*;

impl Shared {
    /// An operator retries failed handoffs; returns how many lanes run their reset again.
    pub fn retry_handoff(&self) -> usize {
        let n = self.bridge.retry_failed_handoffs();
        if n > 0 {
            self.lock().handoff_failed = false;
        }
        n
    }
}

/// The bridge's lanes for the configured upstreams; owned upstream sessions are kept
/// beside a durable queue store.
pub(super) fn build_bridge(config: &Config) -> anyhow::Result<Bridge> {
    let specs = config
        .upstreams
        .iter()
        .enumerate()
        .map(|(index, u)| bridge::LaneSpec {
            index,
            name: u.name.clone(),
            authority: u.authority.clone(),
            addr: u.addr,
            connect_timeout: u.connect_timeout,
            config: u.bridge.clone(),
        })
        .collect();
    let owned = match &config.queue.state_path {
        Some(path) => bridge::persist::Owned::open(bridge::persist::path_for(path))?,
        None => bridge::persist::Owned::memory(),
    };
    Bridge::new(config.upstreams.len(), specs, owned)
}

impl bridge::Turns for Shared {
    fn wanted(&self) -> Wanted {
        let core = self.lock();
        Wanted {
            active: core.queue.active().map(|v| v.seq),
            resetting: core.queue.resetting(),
        }
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn end_reason(&self, seq: u64) -> Option<&'static str> {
        self.lock()
            .recent_ends
            .iter()
            .rev()
            .find(|(s, _)| *s == seq)
            .map(|(_, r)| r.as_str())
    }

    fn hold_limit(&self) -> Option<Duration> {
        self.lock().queue.max_hold()
    }

    fn handoff_done(&self, lane: usize, turn: u64) {
        let now = Instant::now();
        let outcome = {
            let mut core = self.lock();
            if core.queue.resetting() != Some(turn) {
                return;
            }
            let pending = core
                .handoff
                .get_or_insert_with(|| (turn, self.bridge.barrier_lanes().collect()));
            if pending.0 != turn {
                *pending = (turn, self.bridge.barrier_lanes().collect());
            }
            pending.1.remove(&lane);
            if !pending.1.is_empty() {
                return;
            }
            core.handoff = None;
            core.handoff_failed = false;
            let promoted = core.queue.finish_handoff(now);
            let change = Change {
                ended: Vec::new(),
                promoted,
            };
            core.settle(change, now)
        };
        tracing::info!(target: AUDIT, event = "handoff_done", seq = turn);
        self.record(outcome);
        // Nobody was promoted (an empty queue): the wake-up still tells the lanes.
        self.changes.send_modify(|v| *v = v.wrapping_add(1));
    }

    fn handoff_failed(&self, lane: usize, turn: u64, why: &'static str) {
        self.lock().handoff_failed = true;
        let was = self.set_draining(true);
        tracing::error!(
            target: AUDIT,
            event = "lab_held",
            seq = turn,
            lane,
            why,
            was_draining = was,
            "the lab is held and draining until an operator retries the handoff"
        );
    }
}

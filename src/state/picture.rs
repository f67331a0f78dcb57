//! What [`Shared`] reports about the queue without changing it: the raw [`Picture`]
//! the admin listing and status page render, and the wait estimates.

use super::*;

/// One session with where it came from, as [`Shared::picture`] reports it.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub view: SessionView,
    pub client: Option<IpAddr>,
    /// Creation time, Unix ms; `None` when unknown.
    pub created_ms: Option<u64>,
    /// Identity mode: who opened it (verified).
    pub owner: Option<Identity>,
    /// What the session claims about itself (owner, note): shown, never trusted.
    pub label: Label,
}

/// The queue at one moment, read under one lock. The views built from it (admin rows,
/// the status page) live with their modules.
#[derive(Debug, Clone)]
pub struct Picture {
    /// The first sessions, in order, as many as asked for.
    pub sessions: Vec<SessionInfo>,
    pub len: usize,
    pub waiting: usize,
    pub active_hold: Duration,
    pub typical_wait: Option<Duration>,
    pub typical_hold: Option<Duration>,
    /// The lab is being reset between two holders (nobody holds it).
    pub resetting: bool,
    /// The reset failed: the lab stays held until an operator retries.
    pub handoff_failed: bool,
    /// Device tunnels the ACTIVE session has open.
    pub holder_tunnels: usize,
    /// How many completed holds and real waits the typical figures are over.
    pub samples: (usize, usize),
}

impl Shared {
    /// `Retry-After` for a WAITING session at `position`, from recent holds.
    pub fn retry_after(&self, position: usize, now: Instant) -> u64 {
        let core = self.lock();
        core.history.retry_after(
            position,
            core.queue.active_hold(now),
            core.queue.timeouts().waiting,
        )
    }

    /// When a WAITING session at `position` can expect the lab, from completed holds;
    /// `None` before any hold completed.
    pub fn expected_start(&self, position: usize, now: Instant) -> Option<Duration> {
        let core = self.lock();
        let typical = core.history.typical_hold()?;
        Some(crate::history::expected_start(
            position,
            typical,
            core.queue.active_hold(now),
        ))
    }

    /// With a hold limit, how long the ACTIVE session has left (zero when over).
    pub fn hold_remaining(&self, now: Instant) -> Option<Duration> {
        // The queue's own limit: one lock, and always the one the reaper enforces.
        let core = self.lock();
        let max = core.queue.max_hold()?;
        Some(max.saturating_sub(core.queue.active_hold(now)))
    }

    /// The client address a session was created from, and its creation time (Unix ms).
    pub fn session_origin(&self, id: &SessionId) -> Option<(Option<IpAddr>, u64)> {
        self.lock().meta.get(id).map(|m| (m.client, m.created_ms))
    }

    /// The first `limit` sessions in order, with the queue's figures, under one lock.
    /// O(limit).
    pub fn picture(&self, limit: usize, now: Instant) -> Picture {
        let core = self.lock();
        let sessions = core
            .queue
            .iter()
            .take(limit)
            .map(|view| {
                let meta = core.meta.get(&view.id);
                SessionInfo {
                    client: meta.and_then(|m| m.client),
                    created_ms: meta.map(|m| m.created_ms),
                    label: meta.map(|m| m.label.clone()).unwrap_or_default(),
                    owner: core.owners.owner(&view.id).cloned(),
                    view,
                }
            })
            .collect();
        Picture {
            sessions,
            len: core.queue.len(),
            waiting: core.queue.waiting(),
            active_hold: core.queue.active_hold(now),
            typical_wait: core.history.typical_wait(),
            typical_hold: core.history.typical_hold(),
            resetting: core.queue.resetting().is_some(),
            handoff_failed: core.handoff_failed,
            holder_tunnels: core.queue.active().map_or(0, |v| core.conns.tunnels(&v.id)),
            samples: core.history.samples(),
        }
    }
}

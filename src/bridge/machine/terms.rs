//! What a lane machine talks in: the upstream's session id, the lane's features and
//! timing, what the queue wants of it, and the actions, outcomes and notes it exchanges
//! with its driver.

use std::time::Duration;

/// An upstream's own session id. It is a credential on the upstream: `Debug` shows only
/// its first 8 characters, and it never reaches a client.
#[derive(Clone, PartialEq, Eq)]
pub struct UpstreamId(String);

impl UpstreamId {
    /// An id as the upstream sent it; `None` when empty, over 128 bytes, or not a plain
    /// visible-ASCII token (it is sent back in a header).
    pub fn new(s: &str) -> Option<UpstreamId> {
        let ok =
            !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic() && b != b'/');
        ok.then(|| UpstreamId(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// What logs show: the first 8 characters.
    pub fn short(&self) -> &str {
        self.0.get(..8).unwrap_or(&self.0)
    }
}

impl std::fmt::Debug for UpstreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UpstreamId({}…)", self.short())
    }
}

/// What the lane does, per upstream (from the config).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Features {
    /// The upstream is a neops-remote-lab server: one upstream session per turn.
    pub neops: bool,
    pub start_hook: bool,
    pub end_hook: bool,
    pub reset_hook: bool,
    pub health: bool,
}

impl Features {
    /// Whether the next holder must wait for this lane's end steps (contract §8).
    pub fn barrier(&self) -> bool {
        self.reset_hook || self.health
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Heartbeat period for the upstream session (the server reaps after 300 s).
    pub keepalive: Duration,
    /// Poll period while the upstream session waits.
    pub poll: Duration,
    /// First retry delay after a failed open or delete; doubles up to `retry_max`.
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// How long the upstream session may wait before it is reported (somebody uses the
    /// upstream around labgate).
    pub report_waiting_after: Duration,
    /// Health check period, and how long it may keep failing before the handoff fails.
    pub health_every: Duration,
    pub health_within: Duration,
}

/// What the lane should be doing, read from the queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Wanted {
    /// The ACTIVE session's seq.
    pub active: Option<u64>,
    /// The seq of the turn whose end holds the queue (handoff barrier), if any.
    pub resetting: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    StartHook { turn: u64 },
    Open { turn: u64 },
    Poll { turn: u64, id: UpstreamId },
    Keepalive { turn: u64, id: UpstreamId },
    Delete { turn: u64, id: UpstreamId },
    EndHook { turn: u64 },
    Reset { turn: u64 },
    Health { turn: u64 },
}

/// The result of an [`Action`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A hook or health check passed.
    Ok,
    /// `POST /session` answered.
    Opened { id: UpstreamId, active: bool },
    /// `GET /session/{id}` answered.
    Status { active: bool, position: i64 },
    /// The heartbeat was accepted.
    Alive,
    /// The upstream does not know the session (`404`).
    Gone,
    /// The upstream session was deleted.
    Deleted,
    /// Transport error, timeout, unexpected answer, or a failed hook.
    Failed,
}

/// A decision worth a log line or a metric.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Note {
    /// A turn began on this lane: mint its token.
    Began {
        turn: u64,
    },
    /// The lane is ready to forward the turn's requests.
    Ready {
        turn: u64,
    },
    /// The turn ended on this lane: revoke its token.
    Ended {
        turn: u64,
    },
    /// An upstream session was opened (`reopened` after the upstream lost one).
    Opened {
        turn: u64,
        id: UpstreamId,
        reopened: bool,
    },
    OpenFailed {
        turn: u64,
        attempt: u32,
        retry_in: Duration,
    },
    /// The upstream session has waited longer than `report_waiting_after`: someone holds
    /// the upstream around labgate.
    UpstreamWaiting {
        turn: u64,
        position: i64,
        waited: Duration,
    },
    /// The upstream forgot a live session (restart, its own reaping): it is reopened.
    Lost {
        turn: u64,
        id: UpstreamId,
    },
    Deleted {
        turn: u64,
        id: UpstreamId,
    },
    DeleteFailed {
        turn: u64,
        id: UpstreamId,
        attempt: u32,
        retry_in: Duration,
    },
    HookFailed {
        turn: u64,
        hook: &'static str,
    },
    /// The lane's end steps for `turn` passed: it no longer holds back the next holder.
    HandoffDone {
        turn: u64,
    },
    /// The reset failed or the lab never became healthy: the lab stays held.
    HandoffFailed {
        turn: u64,
        why: &'static str,
    },
}

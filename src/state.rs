//! The state every request and background task shares: one cheap handle, [`Shared`].
//!
//! Owns the queue lock and the bookkeeping around each queue operation: metrics, the
//! audit trail (tracing target `labgate::audit`) and the count of forwarded requests in
//! flight that a graceful shutdown waits for. The lock is a std `Mutex` held only for the
//! pure queue call, never across `.await`, and dropped before anything is logged.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::gate::{self, Decision, SessionHeader};
use crate::limits::{self, CreateRefusal, SessionLimiter};
use crate::metrics::{metrics, Metrics};
use crate::queue::{Change, EndReason, Queue, SessionId, Status};

/// Audit events go to their own target so operators can route them separately.
pub const AUDIT: &str = "labgate::audit";

pub struct Shared {
    pub config: Config,
    queue: Mutex<Queue>,
    limiter: SessionLimiter,
    metrics: &'static Metrics,
    /// Forwarded requests (upgraded connections included) still running.
    forwarded_in_flight: AtomicUsize,
}

/// Queue figures read under the lock, recorded after it is released.
struct Snapshot {
    depth: usize,
    waiting: usize,
    hold: Duration,
}

impl Shared {
    pub fn new(config: Config) -> Arc<Shared> {
        let queue = Queue::new(config.queue.timeouts);
        let limiter = SessionLimiter::new(&config.rate_limit);
        let metrics = metrics();
        for up in &config.upstreams {
            metrics.init_upstream(&up.name);
        }
        metrics.record_queue(0, 0, Duration::ZERO);
        Arc::new(Shared {
            config,
            queue: Mutex::new(queue),
            limiter,
            metrics,
            forwarded_in_flight: AtomicUsize::new(0),
        })
    }

    pub fn metrics(&self) -> &'static Metrics {
        self.metrics
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic while holding the lock cannot leave the queue half-updated in a way
        // that matters more than stopping the gateway would: keep serving.
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn snapshot(q: &Queue, now: Instant) -> Snapshot {
        Snapshot {
            depth: q.len(),
            waiting: q.waiting(),
            hold: q.active_hold(now),
        }
    }

    fn record(&self, change: &Change, snap: Snapshot) {
        self.metrics.record_change(change);
        self.metrics
            .record_queue(snap.depth, snap.waiting, snap.hold);
        for e in &change.ended {
            tracing::info!(
                target: AUDIT,
                event = "session_ended",
                session = %e.id,
                seq = e.seq,
                reason = e.reason.as_str(),
                was_active = e.was_active,
                held_secs = e.held.map(|h| h.as_secs_f64()),
            );
        }
        if let Some(p) = &change.promoted {
            tracing::info!(
                target: AUDIT,
                event = "session_promoted",
                session = %p.id,
                seq = p.seq,
                waited_secs = p.waited.as_secs_f64(),
            );
        }
    }

    /// `POST /session`: rate limit, cap, then append.
    pub fn create_session(
        &self,
        client: IpAddr,
        now: Instant,
    ) -> Result<(SessionId, usize), CreateRefusal> {
        let refused = |r: CreateRefusal| {
            self.metrics
                .create_rejected
                .with_label_values(&[r.label()])
                .inc();
            tracing::info!(target: AUDIT, event = "session_refused", client = %client, reason = r.label());
            r
        };
        self.limiter.check(client).map_err(refused)?;
        let id = SessionId::random();
        let (position, promoted, snap) = {
            let mut q = self.lock();
            limits::check_capacity(q.len(), self.config.queue.max_sessions).map_err(refused)?;
            // A v4 collision is not a realistic event; if it ever happens the caller
            // gets a 503 like a full queue rather than a silently shared session.
            let (position, promoted) = q.create(id, now).map_err(|_| {
                refused(CreateRefusal::QueueFull {
                    retry_after_secs: 1,
                })
            })?;
            (position, promoted, Self::snapshot(&q, now))
        };
        self.metrics.sessions_created.inc();
        tracing::info!(target: AUDIT, event = "session_created", session = %id, client = %client, position);
        self.record(
            &Change {
                ended: Vec::new(),
                promoted,
            },
            snap,
        );
        Ok((id, position))
    }

    /// `GET /session/{id}`: refreshes the session and reports its place.
    pub fn session_status(&self, id: &SessionId, now: Instant) -> Option<(Status, usize)> {
        self.lock().touch(id, now).map(|v| (v.status, v.position))
    }

    pub fn heartbeat(&self, id: &SessionId, now: Instant) -> bool {
        self.lock().heartbeat(id, now)
    }

    /// Ends a session; `false` when it does not exist.
    pub fn end_session(&self, id: &SessionId, reason: EndReason, now: Instant) -> bool {
        let (change, snap) = {
            let mut q = self.lock();
            match q.remove(id, reason, now) {
                Some(change) => (change, Self::snapshot(&q, now)),
                None => return false,
            }
        };
        self.record(&change, snap);
        true
    }

    /// `GET /active-session`: refreshes nothing.
    pub fn active_session(&self) -> Option<SessionId> {
        self.lock().active().map(|v| v.id)
    }

    /// The gate; an `Allow` must be paired with [`Shared::end_request`].
    pub fn gate(&self, header: SessionHeader, now: Instant) -> Decision {
        let decision = gate::decide(header, &mut self.lock(), now);
        self.count_decision(decision.label());
        if matches!(decision, Decision::Allow { .. }) {
            self.forwarded_in_flight.fetch_add(1, Ordering::SeqCst);
        }
        decision
    }

    pub fn count_decision(&self, label: &str) {
        self.metrics
            .gate_decisions
            .with_label_values(&[label])
            .inc();
    }

    /// A forwarded request (or upgraded connection) of `id` is over.
    pub fn end_request(&self, id: &SessionId, now: Instant) {
        self.lock().end_request(id, now);
        self.forwarded_in_flight.fetch_sub(1, Ordering::SeqCst);
    }

    pub fn forwarded_in_flight(&self) -> usize {
        self.forwarded_in_flight.load(Ordering::SeqCst)
    }

    /// Removes stale sessions, promotes, and refreshes the gauges; returns how many ended.
    pub fn reap(&self, now: Instant) -> usize {
        let (change, snap) = {
            let mut q = self.lock();
            let change = q.reap(now);
            (change, Self::snapshot(&q, now))
        };
        self.record(&change, snap);
        self.limiter.forget_idle();
        change.ended.len()
    }
}

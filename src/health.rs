//! Upstream health: whether each lab endpoint answers a TCP connect, exported as
//! `labgate_upstream_up{upstream}` (1 or 0).
//!
//! Two signals feed it, whichever is newer wins: the outcome of forwarding (a connection
//! made or reused to the upstream says up; a refused or timed-out connect says down), and,
//! when no request has said anything for `health_interval`, a probe (one TCP connect,
//! bounded by the upstream's `connect_timeout`) that the health service in `reaper`
//! runs. So a busy upstream costs no probes, and an idle one is known within an interval.
//!
//! The decisions ([`next`], [`probe_due`]) are pure and take `now`. [`Board`] keeps the
//! state per upstream in atomics, because the request path writes it on every forwarded
//! request: no lock, and a store only when the state changes or the last one is stale.
//! Must never connect anywhere itself or decide anything about the queue.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use prometheus::IntGauge;

use crate::forward::FailureKind;

/// What labgate knows of an upstream's reachability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Nothing yet (no request, no probe since start).
    Unknown,
    Up,
    Down,
}

impl Health {
    /// The gauge's value: 0 only when the last signal said down. Before any signal the
    /// gauge reads 1, so a labgate that just started does not page (with probes on, the
    /// first one runs at start and settles it within a connect timeout).
    pub fn gauge(self) -> i64 {
        match self {
            Health::Down => 0,
            Health::Up | Health::Unknown => 1,
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            Health::Unknown => 0,
            Health::Up => 1,
            Health::Down => 2,
        }
    }

    fn from_u8(v: u8) -> Health {
        match v {
            1 => Health::Up,
            2 => Health::Down,
            _ => Health::Unknown,
        }
    }
}

/// A change worth a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// It was up (or unknown) and a connect failed.
    WentDown,
    /// It was down and answers again.
    CameBack,
}

/// The state after a signal (`reachable`) arrives in state `prev`, and whether that is
/// a change to report.
pub fn next(prev: Health, reachable: bool) -> (Health, Option<Transition>) {
    match (prev, reachable) {
        (Health::Down, true) => (Health::Up, Some(Transition::CameBack)),
        (Health::Down, false) => (Health::Down, None),
        (_, false) => (Health::Down, Some(Transition::WentDown)),
        (_, true) => (Health::Up, None),
    }
}

/// Whether an upstream needs a probe at `now`: probing is on (`interval`), and no
/// signal arrived within the interval (or none ever did).
pub fn probe_due(last_signal: Option<Instant>, now: Instant, interval: Option<Duration>) -> bool {
    match (interval, last_signal) {
        (None, _) => false,
        (Some(_), None) => true,
        (Some(interval), Some(last)) => now.saturating_duration_since(last) >= interval,
    }
}

/// Whether a forwarding failure says the upstream is unreachable: only a connect that
/// was refused or timed out does. Any other failure happened on a connection that was
/// made (or on the client's side), and a cut request is the queue's doing.
pub fn connect_failed(kind: FailureKind, cut: bool) -> bool {
    !cut && matches!(kind, FailureKind::Connect | FailureKind::ConnectTimedOut)
}

/// A signal that agrees with the state and is this recent after the last one is not
/// written again: it changes no decision, and the request path stays free of stores to
/// a cache line every worker thread shares.
const REFRESH: Duration = Duration::from_millis(250);

/// Every upstream's health, indexed like `config.upstreams`.
pub struct Board {
    /// Times are kept as nanoseconds since this instant (plus one; 0: never).
    epoch: Instant,
    cells: Vec<Cell>,
}

struct Cell {
    name: String,
    state: AtomicU8,
    last: AtomicU64,
    gauge: IntGauge,
}

impl Board {
    /// One cell per upstream (`(name, its labgate_upstream_up series)`), all unknown.
    pub fn new(upstreams: impl IntoIterator<Item = (String, IntGauge)>, epoch: Instant) -> Board {
        let cells = upstreams
            .into_iter()
            .map(|(name, gauge)| {
                gauge.set(Health::Unknown.gauge());
                Cell {
                    name,
                    state: AtomicU8::new(Health::Unknown.to_u8()),
                    last: AtomicU64::new(0),
                    gauge,
                }
            })
            .collect();
        Board { epoch, cells }
    }

    /// After a config reload: a board for the new upstream list that keeps what `old`
    /// knew of every upstream of the same name (state, last signal, epoch), so a reload
    /// neither forgets a down upstream nor flips its gauge.
    pub fn after(old: &Board, upstreams: impl IntoIterator<Item = (String, IntGauge)>) -> Board {
        let board = Board::new(upstreams, old.epoch);
        for cell in &board.cells {
            if let Some(prev) = old.cells.iter().find(|c| c.name == cell.name) {
                let state = prev.state.load(Ordering::Relaxed);
                cell.state.store(state, Ordering::Relaxed);
                cell.last
                    .store(prev.last.load(Ordering::Relaxed), Ordering::Relaxed);
                cell.gauge.set(Health::from_u8(state).gauge());
            }
        }
        board
    }

    pub fn len(&self) -> usize {
        self.cells.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    /// Upstream `i` was (`reachable`) or was not reachable at `now`.
    pub fn record(&self, i: usize, reachable: bool, now: Instant) {
        let Some(cell) = self.cells.get(i) else {
            return;
        };
        let stamp = self.stamp(now);
        let prev = Health::from_u8(cell.state.load(Ordering::Relaxed));
        let (state, transition) = next(prev, reachable);
        if state == prev {
            let last = cell.last.load(Ordering::Relaxed);
            if stamp.saturating_sub(last) >= REFRESH.as_nanos() as u64 {
                cell.last.store(stamp, Ordering::Relaxed);
            }
            return;
        }
        cell.state.store(state.to_u8(), Ordering::Relaxed);
        cell.last.store(stamp, Ordering::Relaxed);
        cell.gauge.set(state.gauge());
        match transition {
            Some(Transition::WentDown) => {
                tracing::warn!(upstream = %cell.name, "upstream unreachable (connect failed)")
            }
            Some(Transition::CameBack) => {
                tracing::info!(upstream = %cell.name, "upstream reachable again")
            }
            None => {}
        }
    }

    /// What upstream `i` is known as now.
    pub fn health(&self, i: usize) -> Health {
        self.cells.get(i).map_or(Health::Unknown, |c| {
            Health::from_u8(c.state.load(Ordering::Relaxed))
        })
    }

    /// Whether upstream `i` needs a probe at `now` with probe interval `interval`.
    pub fn probe_due(&self, i: usize, now: Instant, interval: Option<Duration>) -> bool {
        let last = self
            .cells
            .get(i)
            .map_or(0, |c| c.last.load(Ordering::Relaxed));
        let last = (last > 0).then(|| self.epoch + Duration::from_nanos(last - 1));
        probe_due(last, now, interval)
    }

    fn stamp(&self, now: Instant) -> u64 {
        let nanos = now.saturating_duration_since(self.epoch).as_nanos();
        u64::try_from(nanos).unwrap_or(u64::MAX - 1) + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reloaded_board_keeps_what_it_knew_by_name() {
        let epoch = Instant::now();
        let (a, b) = (gauge(), gauge());
        let old = Board::new([("a".to_string(), a), ("b".to_string(), b)], epoch);
        old.record(1, false, epoch + Duration::from_secs(1));
        assert_eq!(old.health(1), Health::Down);
        // "b" moved to position 0, "c" is new, "a" is gone.
        let (b2, c2) = (gauge(), gauge());
        let new = Board::after(
            &old,
            [("b".to_string(), b2.clone()), ("c".to_string(), c2.clone())],
        );
        assert_eq!(new.health(0), Health::Down);
        assert_eq!(b2.get(), 0);
        assert_eq!(new.health(1), Health::Unknown);
        assert_eq!(c2.get(), 1);
        let now = epoch + Duration::from_secs(2);
        assert!(
            !new.probe_due(0, now, Some(Duration::from_secs(10))),
            "last signal kept"
        );
    }

    fn gauge() -> IntGauge {
        IntGauge::new("test_up", "test").unwrap()
    }

    #[test]
    fn a_failed_connect_is_down_and_a_good_one_brings_it_back() {
        assert_eq!(next(Health::Unknown, true), (Health::Up, None));
        assert_eq!(
            next(Health::Unknown, false),
            (Health::Down, Some(Transition::WentDown))
        );
        assert_eq!(
            next(Health::Up, false),
            (Health::Down, Some(Transition::WentDown))
        );
        assert_eq!(next(Health::Down, false), (Health::Down, None));
        assert_eq!(
            next(Health::Down, true),
            (Health::Up, Some(Transition::CameBack))
        );
        assert_eq!(next(Health::Up, true), (Health::Up, None));
        assert_eq!(Health::Down.gauge(), 0);
        assert_eq!(Health::Up.gauge(), 1);
        assert_eq!(Health::Unknown.gauge(), 1);
    }

    #[test]
    fn only_a_failed_connect_says_unreachable() {
        assert!(connect_failed(FailureKind::Connect, false));
        assert!(connect_failed(FailureKind::ConnectTimedOut, false));
        assert!(
            !connect_failed(FailureKind::Connect, true),
            "cut: the queue's doing"
        );
        for kind in [
            FailureKind::ReadTimedOut,
            FailureKind::WriteTimedOut,
            FailureKind::Closed,
            FailureKind::Status(400),
            FailureKind::Other,
        ] {
            assert!(!connect_failed(kind, false), "{kind:?}");
        }
    }

    #[test]
    fn a_probe_is_due_only_when_idle_for_an_interval_and_probing_is_on() {
        let t0 = Instant::now();
        let every = Some(Duration::from_secs(10));
        assert!(probe_due(None, t0, every), "never heard of: probe at once");
        assert!(!probe_due(None, t0, None), "off: never");
        assert!(!probe_due(Some(t0), t0 + Duration::from_secs(9), every));
        assert!(probe_due(Some(t0), t0 + Duration::from_secs(10), every));
        assert!(!probe_due(Some(t0), t0 + Duration::from_secs(3600), None));
        // A clock that went backwards (an injected one) is "not yet".
        assert!(!probe_due(Some(t0 + Duration::from_secs(5)), t0, every));
    }

    #[test]
    fn the_board_follows_signals_and_postpones_probes_while_busy() {
        let t0 = Instant::now();
        let g = gauge();
        let board = Board::new([("lab".to_string(), g.clone())], t0);
        let every = Some(Duration::from_secs(10));
        assert_eq!(board.health(0), Health::Unknown);
        assert_eq!(g.get(), 1);
        assert!(board.probe_due(0, t0, every));

        board.record(0, false, t0 + Duration::from_secs(1));
        assert_eq!(board.health(0), Health::Down);
        assert_eq!(g.get(), 0);
        assert!(!board.probe_due(0, t0 + Duration::from_secs(5), every));
        assert!(board.probe_due(0, t0 + Duration::from_secs(11), every));

        // Traffic keeps it fresh: no probe while requests succeed.
        for s in 11..40 {
            board.record(0, true, t0 + Duration::from_secs(s));
        }
        assert_eq!(board.health(0), Health::Up);
        assert_eq!(g.get(), 1);
        assert!(!board.probe_due(0, t0 + Duration::from_secs(45), every));
        assert!(board.probe_due(0, t0 + Duration::from_secs(49), every));
        assert!(!board.probe_due(0, t0 + Duration::from_secs(49), None));

        // Signals closer together than REFRESH still count when they change the state.
        let t = t0 + Duration::from_secs(50);
        board.record(0, false, t);
        board.record(0, true, t + Duration::from_millis(1));
        assert_eq!(board.health(0), Health::Up);
        // Out of range: ignored, never a panic.
        board.record(7, false, t);
        assert_eq!(board.health(7), Health::Unknown);
    }
}

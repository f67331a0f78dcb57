//! The hold and wait history: how long recent sessions held the lab and waited for it,
//! and the `Retry-After` estimate a WAITING session gets from it (§7 queue hints).
//!
//! Pure: durations in, durations out; the caller passes the current hold. Must never
//! grow: it keeps the last [`HOLD_HISTORY`] samples of each.

use std::collections::VecDeque;
use std::time::Duration;

use crate::limits::ceil_secs;

/// How many completed holds (and waits) the estimates look at.
const HOLD_HISTORY: usize = 32;

/// Recent holds and waits, oldest first.
#[derive(Debug, Default)]
pub struct History {
    holds: VecDeque<Duration>,
    waits: VecDeque<Duration>,
}

impl History {
    /// A session held the lab this long and ended.
    pub fn hold_ended(&mut self, held: Duration) {
        remember(&mut self.holds, held);
    }

    /// A session waited this long and was promoted.
    pub fn promoted(&mut self, waited: Duration) {
        remember(&mut self.waits, waited);
    }

    pub fn typical_hold(&self) -> Option<Duration> {
        median(self.holds.iter().copied())
    }

    pub fn typical_wait(&self) -> Option<Duration> {
        median(self.waits.iter().copied())
    }

    /// How many completed holds and real waits the typical figures are over.
    pub fn samples(&self) -> (usize, usize) {
        (self.holds.len(), self.waits.len())
    }

    /// `Retry-After` for a WAITING session at `position`; see [`waiting_retry_after`].
    pub fn retry_after(
        &self,
        position: usize,
        current_hold: Duration,
        waiting_timeout: Duration,
    ) -> u64 {
        waiting_retry_after(
            position,
            self.holds.iter().copied(),
            current_hold,
            waiting_timeout,
        )
    }
}

fn remember(history: &mut VecDeque<Duration>, sample: Duration) {
    if history.len() == HOLD_HISTORY {
        history.pop_front();
    }
    history.push_back(sample);
}

/// What a hold is assumed to last before labgate has seen any.
pub const DEFAULT_HOLD_GUESS: Duration = Duration::from_secs(60);

/// `Retry-After` for a WAITING session at `position` (§7 queue hints): the typical hold
/// (median of `recent_holds`) less what the current holder has used, plus a typical
/// hold for each session in between. At least 1 s; at most half `waiting_timeout`, so a
/// client that obeys it is never reaped for obeying.
pub fn waiting_retry_after(
    position: usize,
    recent_holds: impl IntoIterator<Item = Duration>,
    current_hold: Duration,
    waiting_timeout: Duration,
) -> u64 {
    let typical = median(recent_holds).unwrap_or(DEFAULT_HOLD_GUESS);
    let estimate = expected_start(position, typical, current_hold);
    ceil_secs(estimate.min(waiting_timeout / 2))
}

/// When the session at `position` can expect the lab: what the holder has left of a
/// `typical` hold, plus a typical hold for each session in between (zero for the holder).
pub fn expected_start(position: usize, typical: Duration, current_hold: Duration) -> Duration {
    if position == 0 {
        return Duration::ZERO;
    }
    let ahead = u32::try_from(position.saturating_sub(1)).unwrap_or(u32::MAX);
    typical
        .saturating_sub(current_hold)
        .saturating_add(typical.saturating_mul(ahead))
}

/// The median (the upper one of an even count); `None` without samples.
pub fn median(samples: impl IntoIterator<Item = Duration>) -> Option<Duration> {
    let mut sorted: Vec<Duration> = samples.into_iter().collect();
    sorted.sort_unstable();
    sorted.get(sorted.len() / 2).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_start_counts_the_sessions_ahead() {
        let s = Duration::from_secs;
        assert_eq!(expected_start(0, s(600), s(0)), s(0));
        assert_eq!(expected_start(1, s(600), s(100)), s(500));
        assert_eq!(expected_start(3, s(600), s(100)), s(1700));
        assert_eq!(expected_start(2, s(600), s(900)), s(600));
    }

    #[test]
    fn retry_after_follows_recent_holds_and_position() {
        let s = Duration::from_secs;
        let wt = s(600);
        // No history: the default guess.
        assert_eq!(waiting_retry_after(1, Vec::new(), s(0), wt), 60);
        let holds = [s(100), s(20), s(40)];
        // Median 40 s; the holder has used 10 s.
        assert_eq!(waiting_retry_after(1, holds, s(10), wt), 30);
        assert_eq!(waiting_retry_after(3, holds, s(10), wt), 30 + 80);
        // An overdue holder: never 0.
        assert_eq!(waiting_retry_after(1, holds, s(500), wt), 1);
        // Never beyond half the waiting timeout.
        assert_eq!(waiting_retry_after(100, holds, s(0), wt), 300);
    }

    #[test]
    fn history_keeps_the_last_samples_only() {
        let s = Duration::from_secs;
        let mut h = History::default();
        assert_eq!(h.typical_hold(), None);
        for i in 0..100 {
            h.hold_ended(s(i));
            h.promoted(s(2 * i));
        }
        assert_eq!(h.holds.len(), HOLD_HISTORY);
        // The last 32 holds are 68..=99: the upper median is 84.
        assert_eq!(h.typical_hold(), Some(s(84)));
        assert_eq!(h.typical_wait(), Some(s(168)));
    }
}

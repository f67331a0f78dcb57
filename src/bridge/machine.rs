//! One lane's pure state machine: what labgate does on one upstream around each turn.
//!
//! A *turn* is one labgate session's time as the ACTIVE holder, named by its fencing
//! number (seq). For each turn a lane may run a start hook, open a session on a
//! neops-remote-lab upstream and wait until that upstream says it is active, keep it
//! alive, and at the end of the turn delete it (retrying with backoff), run the end
//! hook, the reset hook and the health check. The machine decides; the driver
//! (`bridge::driver`) performs each [`Action`] and reports its [`Outcome`]; every
//! decision worth a log line or a metric comes back as a [`Note`].
//!
//! Invariants it keeps:
//! - at most one upstream session is owned at any time, and a new turn's session is
//!   opened only after the previous one is deleted (or the upstream said it is gone):
//!   the next holder never gets an upstream session another turn still owns;
//! - an upstream session whose turn ended while it was being opened is deleted;
//! - a turn that ended while a handoff barrier holds the queue (`Wanted::resetting`)
//!   gets its end steps even if the lane never saw it start.
//!
//! Must never do I/O, read the clock or sleep: every method takes `now`.

use std::time::{Duration, Instant};

pub use terms::{Action, Features, Note, Outcome, Timing, UpstreamId, Wanted};

#[derive(Clone, Debug, PartialEq, Eq)]
enum StartStep {
    Hook,
    Open,
    Poll(UpstreamId),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EndStep {
    Delete,
    Hook,
    Reset,
    Health,
}

#[derive(Clone, Debug)]
enum State {
    Idle,
    Starting {
        turn: u64,
        step: StartStep,
        due: Instant,
        attempt: u32,
        /// Restored after a restart: poll it instead of opening a new one.
        adopt: Option<UpstreamId>,
        waiting_since: Option<Instant>,
        reported: bool,
        reopened: bool,
    },
    Held {
        turn: u64,
        id: Option<UpstreamId>,
        due: Instant,
    },
    Ending {
        turn: u64,
        id: Option<UpstreamId>,
        /// The start steps ran (so the end hook is owed).
        started: bool,
        step: EndStep,
        due: Instant,
        attempt: u32,
        health_until: Option<Instant>,
    },
    /// The barrier failed: nothing moves until an operator retries.
    Failed {
        turn: u64,
    },
}

/// One upstream's lane.
#[derive(Debug)]
pub struct Lane {
    features: Features,
    timing: Timing,
    state: State,
    /// The action the driver is performing, if any.
    in_flight: Option<Action>,
    /// The last turn whose end steps completed; never started again.
    last_ended: Option<u64>,
}

impl Lane {
    pub fn new(features: Features, timing: Timing) -> Lane {
        Lane {
            features,
            timing,
            state: State::Idle,
            in_flight: None,
            last_ended: None,
        }
    }

    pub fn features(&self) -> Features {
        self.features
    }

    /// After a restart: `turn` owned upstream session `id`. If the turn is still the
    /// ACTIVE one it is re-established (polled, reopened if gone); otherwise deleted.
    pub fn adopt(&mut self, turn: u64, id: UpstreamId, wanted: Wanted, now: Instant) -> Vec<Note> {
        if wanted.active == Some(turn) {
            self.state = State::Starting {
                turn,
                step: StartStep::Hook,
                due: now,
                attempt: 0,
                adopt: Some(id),
                waiting_since: None,
                reported: false,
                reopened: false,
            };
            let mut notes = vec![Note::Began { turn }];
            self.skip_start_steps(now, &mut notes);
            notes
        } else {
            self.state = State::Ending {
                turn,
                id: Some(id),
                started: true,
                step: EndStep::Delete,
                due: now,
                attempt: 0,
                health_until: None,
            };
            Vec::new()
        }
    }

    /// The turn this lane serves and the upstream session to use, once it is ready.
    pub fn ready(&self) -> Option<(u64, Option<&UpstreamId>)> {
        match &self.state {
            State::Held { turn, id, .. } => Some((*turn, id.as_ref())),
            _ => None,
        }
    }

    /// The turn whose barrier failed, if any.
    pub fn failed(&self) -> Option<u64> {
        match self.state {
            State::Failed { turn } => Some(turn),
            _ => None,
        }
    }

    /// The upstream session this lane owns (for persistence), with its turn.
    pub fn owned(&self) -> Option<(u64, &UpstreamId)> {
        match &self.state {
            State::Held {
                turn, id: Some(id), ..
            }
            | State::Ending {
                turn, id: Some(id), ..
            } => Some((*turn, id)),
            State::Starting {
                turn,
                step: StartStep::Poll(id),
                ..
            } => Some((*turn, id)),
            _ => None,
        }
    }

    /// Whether a delete is pending (a turn ended and its upstream session still exists).
    pub fn undeleted(&self) -> bool {
        matches!(
            &self.state,
            State::Ending {
                id: Some(_),
                step: EndStep::Delete,
                ..
            }
        )
    }

    /// Something suggests the upstream forgot the session (a forwarded request got a
    /// `404`): check it now instead of at the next keepalive.
    pub fn check_now(&mut self, now: Instant) {
        if let State::Held {
            id: Some(_), due, ..
        } = &mut self.state
        {
            *due = (*due).min(now);
        }
    }

    /// An operator retries a failed handoff: the reset and health steps run again.
    pub fn retry(&mut self, now: Instant) -> bool {
        let State::Failed { turn } = self.state else {
            return false;
        };
        let step = if self.features.reset_hook {
            EndStep::Reset
        } else {
            EndStep::Health
        };
        self.state = State::Ending {
            turn,
            id: None,
            started: false,
            step,
            due: now,
            attempt: 0,
            health_until: None,
        };
        true
    }

    /// Aligns the lane with the queue. Ends the current turn if it is no longer ACTIVE;
    /// starts the ACTIVE one when idle.
    pub fn want(&mut self, wanted: Wanted, now: Instant) -> Vec<Note> {
        let mut notes = Vec::new();
        match &self.state {
            State::Starting { turn, .. } | State::Held { turn, .. }
                if wanted.active != Some(*turn) =>
            {
                let turn = *turn;
                let id = match std::mem::replace(&mut self.state, State::Idle) {
                    State::Held { id, .. } => id,
                    State::Starting {
                        step: StartStep::Poll(id),
                        ..
                    } => Some(id),
                    State::Starting { adopt, .. } => adopt,
                    _ => None,
                };
                notes.push(Note::Ended { turn });
                self.begin_end(turn, id, true, now, &mut notes);
            }
            State::Idle => self.start_if_wanted(wanted, now, &mut notes),
            _ => {}
        }
        notes
    }

    fn start_if_wanted(&mut self, wanted: Wanted, now: Instant, notes: &mut Vec<Note>) {
        let fresh = |t: u64| self.last_ended.is_none_or(|e| t > e);
        if let Some(turn) = wanted.resetting.filter(|t| fresh(*t)) {
            // The turn ended before this lane saw it; the lab still gets its reset.
            if self.features.barrier() {
                self.begin_end(turn, None, false, now, notes);
                return;
            }
        }
        if let Some(turn) = wanted.active.filter(|t| fresh(*t)) {
            self.state = State::Starting {
                turn,
                step: StartStep::Hook,
                due: now,
                attempt: 0,
                adopt: None,
                waiting_since: None,
                reported: false,
                reopened: false,
            };
            notes.push(Note::Began { turn });
            self.skip_start_steps(now, notes);
        }
    }

    /// Moves past start steps this lane does not have.
    fn skip_start_steps(&mut self, now: Instant, notes: &mut Vec<Note>) {
        let State::Starting {
            turn, step, adopt, ..
        } = &mut self.state
        else {
            return;
        };
        let turn = *turn;
        if *step == StartStep::Hook && !self.features.start_hook {
            *step = StartStep::Open;
        }
        if *step == StartStep::Open {
            if let Some(id) = adopt.take() {
                *step = StartStep::Poll(id);
            } else if !self.features.neops {
                self.state = State::Held {
                    turn,
                    id: None,
                    due: now,
                };
                notes.push(Note::Ready { turn });
            }
        }
    }

    fn begin_end(
        &mut self,
        turn: u64,
        id: Option<UpstreamId>,
        started: bool,
        now: Instant,
        notes: &mut Vec<Note>,
    ) {
        self.state = State::Ending {
            turn,
            id,
            started,
            step: EndStep::Delete,
            due: now,
            attempt: 0,
            health_until: None,
        };
        self.skip_end_steps(now, notes);
    }

    /// Moves past end steps that do not apply; finishes the turn after the last one.
    fn skip_end_steps(&mut self, now: Instant, notes: &mut Vec<Note>) {
        let State::Ending {
            turn,
            id,
            started,
            step,
            health_until,
            ..
        } = &mut self.state
        else {
            return;
        };
        let f = self.features;
        // The delete waits for an open in flight: it may yet yield an id.
        let open_in_flight = matches!(self.in_flight, Some(Action::Open { .. }));
        if *step == EndStep::Delete && id.is_none() && !open_in_flight {
            *step = EndStep::Hook;
        }
        if *step == EndStep::Hook && !(f.end_hook && *started) {
            *step = EndStep::Reset;
        }
        if *step == EndStep::Reset && !f.reset_hook {
            *step = EndStep::Health;
        }
        if *step == EndStep::Health {
            if !f.health {
                let turn = *turn;
                self.finish(turn, now, notes);
            } else if health_until.is_none() {
                *health_until = now.checked_add(self.timing.health_within);
            }
        }
    }

    fn finish(&mut self, turn: u64, now: Instant, notes: &mut Vec<Note>) {
        if self.features.barrier() {
            notes.push(Note::HandoffDone { turn });
        }
        self.last_ended = Some(self.last_ended.map_or(turn, |e| e.max(turn)));
        self.state = State::Idle;
        let _ = now;
    }

    /// The next action due at `now`, or when to look again (`None`: only when the queue
    /// changes). Marks the action in flight until [`Lane::done`].
    pub fn next(&mut self, now: Instant) -> Result<Action, Option<Instant>> {
        if self.in_flight.is_some() {
            return Err(None);
        }
        let (action, due) = match &self.state {
            State::Idle | State::Failed { .. } => return Err(None),
            State::Held { id: None, .. } => return Err(None),
            State::Held {
                turn,
                id: Some(id),
                due,
            } => (
                Action::Keepalive {
                    turn: *turn,
                    id: id.clone(),
                },
                *due,
            ),
            State::Starting {
                turn, step, due, ..
            } => {
                let turn = *turn;
                let action = match step {
                    StartStep::Hook => Action::StartHook { turn },
                    StartStep::Open => Action::Open { turn },
                    StartStep::Poll(id) => Action::Poll {
                        turn,
                        id: id.clone(),
                    },
                };
                (action, *due)
            }
            State::Ending {
                turn,
                id,
                step,
                due,
                ..
            } => {
                let turn = *turn;
                let action = match (step, id) {
                    (EndStep::Delete, Some(id)) => Action::Delete {
                        turn,
                        id: id.clone(),
                    },
                    // Waiting for the open in flight to report its id.
                    (EndStep::Delete, None) => return Err(None),
                    (EndStep::Hook, _) => Action::EndHook { turn },
                    (EndStep::Reset, _) => Action::Reset { turn },
                    (EndStep::Health, _) => Action::Health { turn },
                };
                (action, *due)
            }
        };
        if due > now {
            return Err(Some(due));
        }
        self.in_flight = Some(action.clone());
        Ok(action)
    }

    /// The driver reports how the action in flight went.
    pub fn done(&mut self, outcome: Outcome, now: Instant) -> Vec<Note> {
        let mut notes = Vec::new();
        let Some(action) = self.in_flight.take() else {
            return notes;
        };
        let t = self.timing;
        match (action, &mut self.state) {
            // ---- start steps
            (Action::StartHook { turn }, State::Starting { step, .. }) => {
                if outcome != Outcome::Ok {
                    notes.push(Note::HookFailed {
                        turn,
                        hook: "start",
                    });
                }
                *step = StartStep::Open;
                self.skip_start_steps(now, &mut notes);
            }
            (
                Action::Open { turn },
                State::Starting {
                    step,
                    due,
                    attempt,
                    waiting_since,
                    reopened,
                    ..
                },
            ) => match outcome {
                Outcome::Opened { id, active } => {
                    notes.push(Note::Opened {
                        turn,
                        id: id.clone(),
                        reopened: *reopened,
                    });
                    if active {
                        self.state = State::Held {
                            turn,
                            id: Some(id),
                            due: now + t.keepalive,
                        };
                        notes.push(Note::Ready { turn });
                    } else {
                        *step = StartStep::Poll(id);
                        *due = now + t.poll;
                        *waiting_since = Some(now);
                    }
                }
                _ => {
                    *attempt = attempt.saturating_add(1);
                    let retry_in = backoff(&t, *attempt);
                    *due = now + retry_in;
                    notes.push(Note::OpenFailed {
                        turn,
                        attempt: *attempt,
                        retry_in,
                    });
                }
            },
            // The turn ended while its session was being opened: delete what was opened.
            (Action::Open { .. }, State::Ending { id, step, .. }) => {
                if let Outcome::Opened { id: opened, .. } = outcome {
                    *id = Some(opened);
                } else {
                    *step = EndStep::Hook;
                }
                self.skip_end_steps(now, &mut notes);
            }
            (
                Action::Poll { turn, id },
                State::Starting {
                    step,
                    due,
                    waiting_since,
                    reported,
                    reopened,
                    ..
                },
            ) => match outcome {
                Outcome::Status { active: true, .. } => {
                    self.state = State::Held {
                        turn,
                        id: Some(id),
                        due: now + t.keepalive,
                    };
                    notes.push(Note::Ready { turn });
                }
                Outcome::Status {
                    active: false,
                    position,
                } => {
                    let since = *waiting_since.get_or_insert(now);
                    let waited = now.saturating_duration_since(since);
                    if !*reported && waited >= t.report_waiting_after {
                        *reported = true;
                        notes.push(Note::UpstreamWaiting {
                            turn,
                            position,
                            waited,
                        });
                    }
                    *due = now + t.poll;
                }
                Outcome::Gone => {
                    notes.push(Note::Lost { turn, id });
                    *step = StartStep::Open;
                    *due = now;
                    *reopened = true;
                    *waiting_since = None;
                }
                _ => *due = now + t.poll,
            },
            (Action::Keepalive { turn, id }, State::Held { due, .. }) => match outcome {
                Outcome::Alive => *due = now + t.keepalive,
                Outcome::Gone => {
                    notes.push(Note::Lost { turn, id });
                    self.state = State::Starting {
                        turn,
                        step: StartStep::Open,
                        due: now,
                        attempt: 0,
                        adopt: None,
                        waiting_since: None,
                        reported: false,
                        reopened: true,
                    };
                }
                // The upstream may be restarting: look again soon; a restarted one
                // answers 404 and the session is reopened.
                _ => *due = now + t.retry_min.min(t.keepalive),
            },
            // ---- end steps
            (
                Action::Delete { turn, id },
                State::Ending {
                    step, due, attempt, ..
                },
            ) => match outcome {
                Outcome::Deleted | Outcome::Gone => {
                    notes.push(Note::Deleted { turn, id });
                    *step = EndStep::Hook;
                    *due = now;
                    *attempt = 0;
                    if let State::Ending { id, .. } = &mut self.state {
                        *id = None;
                    }
                    self.skip_end_steps(now, &mut notes);
                }
                _ => {
                    *attempt = attempt.saturating_add(1);
                    let attempt = *attempt;
                    let retry_in = backoff(&t, attempt);
                    *due = now + retry_in;
                    notes.push(Note::DeleteFailed {
                        turn,
                        id,
                        attempt,
                        retry_in,
                    });
                }
            },
            (Action::EndHook { turn }, State::Ending { step, .. }) => {
                if outcome != Outcome::Ok {
                    notes.push(Note::HookFailed { turn, hook: "end" });
                }
                *step = EndStep::Reset;
                self.skip_end_steps(now, &mut notes);
            }
            (Action::Reset { turn }, State::Ending { step, .. }) => {
                if outcome == Outcome::Ok {
                    *step = EndStep::Health;
                    self.skip_end_steps(now, &mut notes);
                } else {
                    notes.push(Note::HookFailed {
                        turn,
                        hook: "reset",
                    });
                    notes.push(Note::HandoffFailed {
                        turn,
                        why: "reset failed",
                    });
                    self.state = State::Failed { turn };
                }
            }
            (
                Action::Health { turn },
                State::Ending {
                    due, health_until, ..
                },
            ) => {
                if outcome == Outcome::Ok {
                    self.finish(turn, now, &mut notes);
                } else if health_until.is_some_and(|u| now < u) {
                    *due = now + t.health_every;
                } else {
                    notes.push(Note::HandoffFailed {
                        turn,
                        why: "health check failed",
                    });
                    self.state = State::Failed { turn };
                }
            }
            // The state moved on while the action ran (the turn ended mid-poll, say):
            // its result no longer matters, except an id it reveals.
            _ => {}
        }
        notes
    }
}

/// Retry delay after `attempt` failures: `retry_min` doubling up to `retry_max`.
fn backoff(t: &Timing, attempt: u32) -> Duration {
    let factor = 1u32
        .checked_shl(attempt.saturating_sub(1))
        .unwrap_or(u32::MAX);
    t.retry_min.saturating_mul(factor).min(t.retry_max)
}

mod terms;
#[cfg(test)]
mod tests;

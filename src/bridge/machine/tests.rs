use super::*;

const S: Duration = Duration::from_secs(1);

fn timing() -> Timing {
    Timing {
        keepalive: 60 * S,
        poll: S,
        retry_min: S,
        retry_max: 8 * S,
        report_waiting_after: 5 * S,
        health_every: S,
        health_within: 10 * S,
    }
}

fn neops() -> Features {
    Features {
        neops: true,
        ..Features::default()
    }
}

fn id(s: &str) -> UpstreamId {
    UpstreamId::new(s).unwrap()
}

fn active(seq: u64) -> Wanted {
    Wanted {
        active: Some(seq),
        resetting: None,
    }
}

const NONE: Wanted = Wanted {
    active: None,
    resetting: None,
};

#[test]
fn upstream_ids_are_checked_and_never_shown_whole() {
    assert!(UpstreamId::new("").is_none());
    assert!(UpstreamId::new("a b").is_none());
    assert!(UpstreamId::new("a/b").is_none());
    assert!(UpstreamId::new(&"a".repeat(129)).is_none());
    let u = id("0123456789abcdef");
    assert_eq!(u.short(), "01234567");
    assert_eq!(format!("{u:?}"), "UpstreamId(01234567…)");
}

#[test]
fn a_turn_opens_waits_until_active_keeps_alive_and_deletes_at_the_end() {
    let t0 = Instant::now();
    let mut lane = Lane::new(neops(), timing());
    assert_eq!(lane.want(active(7), t0), vec![Note::Began { turn: 7 }]);
    assert_eq!(lane.next(t0), Ok(Action::Open { turn: 7 }));
    assert!(lane.ready().is_none());
    let notes = lane.done(
        Outcome::Opened {
            id: id("up-1"),
            active: false,
        },
        t0,
    );
    assert_eq!(
        notes,
        vec![Note::Opened {
            turn: 7,
            id: id("up-1"),
            reopened: false
        }]
    );
    // Waiting: polled every second, not ready.
    assert_eq!(lane.next(t0), Err(Some(t0 + S)));
    assert_eq!(
        lane.next(t0 + S),
        Ok(Action::Poll {
            turn: 7,
            id: id("up-1")
        })
    );
    let n = lane.done(
        Outcome::Status {
            active: true,
            position: 0,
        },
        t0 + S,
    );
    assert_eq!(n, vec![Note::Ready { turn: 7 }]);
    assert_eq!(lane.ready(), Some((7, Some(&id("up-1")))));
    // Keepalive after 60 s.
    assert_eq!(lane.next(t0 + 2 * S), Err(Some(t0 + 61 * S)));
    assert_eq!(
        lane.next(t0 + 61 * S),
        Ok(Action::Keepalive {
            turn: 7,
            id: id("up-1")
        })
    );
    assert!(lane.done(Outcome::Alive, t0 + 61 * S).is_empty());
    // The turn ends: not ready any more, the session is deleted.
    let n = lane.want(NONE, t0 + 70 * S);
    assert_eq!(n, vec![Note::Ended { turn: 7 }]);
    assert!(lane.ready().is_none());
    assert!(lane.undeleted());
    assert_eq!(
        lane.next(t0 + 70 * S),
        Ok(Action::Delete {
            turn: 7,
            id: id("up-1")
        })
    );
    let n = lane.done(Outcome::Deleted, t0 + 70 * S);
    assert_eq!(
        n,
        vec![Note::Deleted {
            turn: 7,
            id: id("up-1")
        }]
    );
    assert_eq!(lane.next(t0 + 70 * S), Err(None));
    assert!(lane.owned().is_none());
}

#[test]
fn a_failed_delete_is_retried_with_backoff_and_blocks_the_next_turn() {
    let t0 = Instant::now();
    let mut lane = Lane::new(neops(), timing());
    lane.want(active(1), t0);
    lane.next(t0).unwrap();
    lane.done(
        Outcome::Opened {
            id: id("a"),
            active: true,
        },
        t0,
    );
    lane.want(active(2), t0);
    let mut now = t0;
    let mut delays = Vec::new();
    for _ in 0..6 {
        let action = loop {
            match lane.next(now) {
                Ok(a) => break a,
                Err(Some(at)) => now = at,
                Err(None) => panic!("stuck"),
            }
        };
        assert_eq!(
            action,
            Action::Delete {
                turn: 1,
                id: id("a")
            }
        );
        match lane.done(Outcome::Failed, now).as_slice() {
            [Note::DeleteFailed { retry_in, .. }] => delays.push(retry_in.as_secs()),
            other => panic!("{other:?}"),
        }
        // The next turn is not started meanwhile.
        assert_eq!(lane.want(active(2), now), vec![]);
    }
    assert_eq!(delays, vec![1, 2, 4, 8, 8, 8]);
    now += 8 * S;
    assert_eq!(
        lane.next(now),
        Ok(Action::Delete {
            turn: 1,
            id: id("a")
        })
    );
    lane.done(Outcome::Gone, now);
    // Only now does turn 2 open its session.
    assert_eq!(lane.want(active(2), now), vec![Note::Began { turn: 2 }]);
    assert_eq!(lane.next(now), Ok(Action::Open { turn: 2 }));
}

#[test]
fn a_session_opened_for_a_turn_that_already_ended_is_deleted() {
    let t0 = Instant::now();
    let mut lane = Lane::new(neops(), timing());
    lane.want(active(3), t0);
    assert_eq!(lane.next(t0), Ok(Action::Open { turn: 3 }));
    // The holder leaves while the open is in flight.
    assert_eq!(lane.want(NONE, t0), vec![Note::Ended { turn: 3 }]);
    assert_eq!(lane.next(t0), Err(None));
    lane.done(
        Outcome::Opened {
            id: id("late"),
            active: true,
        },
        t0,
    );
    assert_eq!(
        lane.next(t0),
        Ok(Action::Delete {
            turn: 3,
            id: id("late")
        })
    );
}

#[test]
fn a_lost_upstream_session_is_reopened_for_the_same_turn() {
    let t0 = Instant::now();
    let mut lane = Lane::new(neops(), timing());
    lane.want(active(4), t0);
    lane.next(t0).unwrap();
    lane.done(
        Outcome::Opened {
            id: id("first"),
            active: true,
        },
        t0,
    );
    let at = t0 + 60 * S;
    lane.next(at).unwrap();
    let n = lane.done(Outcome::Gone, at);
    assert_eq!(
        n,
        vec![Note::Lost {
            turn: 4,
            id: id("first")
        }]
    );
    assert!(lane.ready().is_none());
    assert_eq!(lane.next(at), Ok(Action::Open { turn: 4 }));
    let n = lane.done(
        Outcome::Opened {
            id: id("second"),
            active: true,
        },
        at,
    );
    assert_eq!(
        n[0],
        Note::Opened {
            turn: 4,
            id: id("second"),
            reopened: true
        }
    );
    assert_eq!(lane.ready(), Some((4, Some(&id("second")))));
}

#[test]
fn an_upstream_held_around_labgate_is_reported_once_and_waited_for() {
    let t0 = Instant::now();
    let mut lane = Lane::new(neops(), timing());
    lane.want(active(5), t0);
    lane.next(t0).unwrap();
    lane.done(
        Outcome::Opened {
            id: id("w"),
            active: false,
        },
        t0,
    );
    let mut reports = 0;
    for s in 1..=20 {
        let now = t0 + s * S;
        assert!(matches!(lane.next(now), Ok(Action::Poll { .. })));
        for n in lane.done(
            Outcome::Status {
                active: false,
                position: 1,
            },
            now,
        ) {
            assert!(matches!(n, Note::UpstreamWaiting { position: 1, .. }));
            assert!(s >= 5);
            reports += 1;
        }
    }
    assert_eq!(reports, 1);
    assert!(lane.ready().is_none());
}

#[test]
fn a_failed_open_is_retried_while_the_turn_lasts() {
    let t0 = Instant::now();
    let mut lane = Lane::new(neops(), timing());
    lane.want(active(6), t0);
    lane.next(t0).unwrap();
    let n = lane.done(Outcome::Failed, t0);
    assert_eq!(
        n,
        vec![Note::OpenFailed {
            turn: 6,
            attempt: 1,
            retry_in: S
        }]
    );
    assert_eq!(lane.next(t0), Err(Some(t0 + S)));
    // The turn ends before the retry: nothing to delete.
    assert_eq!(lane.want(NONE, t0), vec![Note::Ended { turn: 6 }]);
    assert_eq!(lane.next(t0 + S), Err(None));
}

fn hooks() -> Features {
    Features {
        neops: true,
        start_hook: true,
        end_hook: true,
        reset_hook: true,
        health: true,
    }
}

#[test]
fn hooks_run_in_order_around_a_turn_and_release_the_barrier() {
    let t0 = Instant::now();
    let mut lane = Lane::new(hooks(), timing());
    lane.want(active(9), t0);
    assert_eq!(lane.next(t0), Ok(Action::StartHook { turn: 9 }));
    lane.done(Outcome::Ok, t0);
    assert_eq!(lane.next(t0), Ok(Action::Open { turn: 9 }));
    lane.done(
        Outcome::Opened {
            id: id("h"),
            active: true,
        },
        t0,
    );
    let w = Wanted {
        active: None,
        resetting: Some(9),
    };
    lane.want(w, t0);
    let mut order = Vec::new();
    let mut now = t0;
    let mut done = false;
    for _ in 0..20 {
        match lane.next(now) {
            Ok(a) => {
                order.push(a.clone());
                let outcome = match a {
                    Action::Delete { .. } => Outcome::Deleted,
                    // The lab needs two health checks to come back.
                    Action::Health { .. } if order.len() < 5 => Outcome::Failed,
                    _ => Outcome::Ok,
                };
                let notes = lane.done(outcome, now);
                if notes.contains(&Note::HandoffDone { turn: 9 }) {
                    done = true;
                    break;
                }
            }
            Err(Some(at)) => now = at,
            Err(None) => break,
        }
    }
    assert!(done, "{order:?}");
    assert_eq!(
        order,
        vec![
            Action::Delete {
                turn: 9,
                id: id("h")
            },
            Action::EndHook { turn: 9 },
            Action::Reset { turn: 9 },
            Action::Health { turn: 9 },
            Action::Health { turn: 9 },
        ]
    );
    // Never started again.
    assert_eq!(lane.want(w, now), vec![]);
}

#[test]
fn a_failed_reset_holds_the_lab_until_retried() {
    let t0 = Instant::now();
    let f = Features {
        reset_hook: true,
        ..Features::default()
    };
    let mut lane = Lane::new(f, timing());
    lane.want(active(1), t0);
    assert_eq!(lane.ready(), Some((1, None)));
    let w = Wanted {
        active: None,
        resetting: Some(1),
    };
    lane.want(w, t0);
    assert_eq!(lane.next(t0), Ok(Action::Reset { turn: 1 }));
    let n = lane.done(Outcome::Failed, t0);
    assert!(n.contains(&Note::HandoffFailed {
        turn: 1,
        why: "reset failed"
    }));
    assert_eq!(lane.failed(), Some(1));
    assert_eq!(lane.next(t0 + 100 * S), Err(None));
    assert_eq!(lane.want(w, t0), vec![]);
    assert!(lane.retry(t0));
    assert_eq!(lane.next(t0), Ok(Action::Reset { turn: 1 }));
    assert_eq!(
        lane.done(Outcome::Ok, t0),
        vec![Note::HandoffDone { turn: 1 }]
    );
}

#[test]
fn health_that_never_passes_fails_the_handoff_after_its_window() {
    let t0 = Instant::now();
    let f = Features {
        health: true,
        ..Features::default()
    };
    let mut lane = Lane::new(f, timing());
    // Never saw the turn start: the barrier still gets its health check.
    let w = Wanted {
        active: None,
        resetting: Some(3),
    };
    lane.want(w, t0);
    let mut now = t0;
    let mut checks = 0;
    let failed = loop {
        match lane.next(now) {
            Ok(Action::Health { .. }) => {
                checks += 1;
                let n = lane.done(Outcome::Failed, now);
                if !n.is_empty() {
                    break n;
                }
            }
            Err(Some(at)) => now = at,
            other => panic!("{other:?}"),
        }
        assert!(checks < 100);
    };
    assert_eq!(
        failed,
        vec![Note::HandoffFailed {
            turn: 3,
            why: "health check failed"
        }]
    );
    assert_eq!(checks, 11);
}

#[test]
fn without_a_barrier_an_unseen_turn_costs_nothing() {
    let t0 = Instant::now();
    let mut lane = Lane::new(neops(), timing());
    let w = Wanted {
        active: Some(4),
        resetting: Some(3),
    };
    assert_eq!(lane.want(w, t0), vec![Note::Began { turn: 4 }]);
}

#[test]
fn a_restored_holder_re_establishes_its_upstream_session() {
    let t0 = Instant::now();
    let mut lane = Lane::new(neops(), timing());
    lane.adopt(8, id("kept"), active(8), t0);
    assert_eq!(
        lane.next(t0),
        Ok(Action::Poll {
            turn: 8,
            id: id("kept")
        })
    );
    lane.done(
        Outcome::Status {
            active: true,
            position: 0,
        },
        t0,
    );
    assert_eq!(lane.ready(), Some((8, Some(&id("kept")))));
    // A restored session of a turn that is over is deleted.
    let mut lane = Lane::new(neops(), timing());
    lane.adopt(8, id("old"), active(9), t0);
    assert_eq!(
        lane.next(t0),
        Ok(Action::Delete {
            turn: 8,
            id: id("old")
        })
    );
    lane.done(Outcome::Deleted, t0);
    assert_eq!(lane.want(active(9), t0), vec![Note::Began { turn: 9 }]);
}

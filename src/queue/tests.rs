//! Example-based tests of the queue state machine, each naming the behaviour it checks.

use uuid::Uuid;

use super::*;

const ACTIVE_SECS: u64 = 300;
const WAITING_SECS: u64 = 600;

pub(super) fn timeouts() -> Timeouts {
    Timeouts {
        active: Duration::from_secs(ACTIVE_SECS),
        waiting: Duration::from_secs(WAITING_SECS),
    }
}

fn queue() -> Queue {
    Queue::new(timeouts())
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

pub(super) fn sid(n: u128) -> SessionId {
    SessionId::from_uuid(Uuid::from_u128(n))
}

fn positions(q: &Queue) -> Vec<(SessionId, Status, usize)> {
    q.iter().map(|v| (v.id, v.status, v.position)).collect()
}

#[test]
fn create_appends_and_first_session_is_active_at_once() {
    let mut q = queue();
    let t0 = Instant::now();
    let (a, b, c) = (sid(1), sid(2), sid(3));
    assert_eq!(
        q.create(a, t0),
        Ok((
            0,
            Some(Promoted {
                id: a,
                seq: 1,
                waited: Duration::ZERO
            })
        ))
    );
    assert_eq!(q.create(b, t0 + secs(1)), Ok((1, None)));
    assert_eq!(q.create(c, t0 + secs(2)), Ok((2, None)));
    assert_eq!(
        positions(&q),
        vec![
            (a, Status::Active, 0),
            (b, Status::Waiting, 1),
            (c, Status::Waiting, 2)
        ]
    );
    assert_eq!((q.len(), q.waiting(), q.is_empty()), (3, 2, false));
    let vb = q.view(&b).unwrap();
    assert_eq!(
        vb,
        SessionView {
            id: b,
            seq: 2,
            status: Status::Waiting,
            position: 1,
            created: t0 + secs(1),
            last_seen: t0 + secs(1),
            promoted_at: None,
            inflight: 0,
        }
    );
    let va = q.active().unwrap();
    assert_eq!((va.id, va.promoted_at, va.position), (a, Some(t0), 0));
    q.check_invariants();
}

#[test]
fn duplicate_id_is_refused_without_using_a_seq() {
    let mut q = queue();
    let t0 = Instant::now();
    q.create(sid(1), t0).unwrap();
    assert_eq!(q.create(sid(1), t0), Err(QueueError::DuplicateId));
    assert_eq!(q.next_seq(), 2);
    assert_eq!(q.len(), 1);
    q.check_invariants();
}

#[test]
fn get_refreshes_last_seen_but_peeking_does_not() {
    let mut q = queue();
    let t0 = Instant::now();
    q.create(sid(1), t0).unwrap();
    q.create(sid(2), t0).unwrap();
    let v = q.touch(&sid(2), t0 + secs(10)).unwrap();
    assert_eq!(
        (v.status, v.position, v.last_seen),
        (Status::Waiting, 1, t0 + secs(10))
    );
    assert_eq!(q.view(&sid(1)).unwrap().last_seen, t0);
    assert_eq!(q.active().unwrap().last_seen, t0);
    assert_eq!(q.touch(&sid(9), t0), None);
    // The refresh moved the deadline too: stale only after 10 + 600 s.
    assert!(q
        .reap(t0 + secs(WAITING_SECS + 1))
        .ended
        .iter()
        .all(|e| e.id != sid(2)));
    q.check_invariants();
}

#[test]
fn heartbeat_refreshes_known_sessions_only() {
    let mut q = queue();
    let t0 = Instant::now();
    q.create(sid(1), t0).unwrap();
    assert!(q.heartbeat(&sid(1), t0 + secs(200)));
    assert!(!q.heartbeat(&sid(2), t0 + secs(200)));
    assert_eq!(q.view(&sid(1)).unwrap().last_seen, t0 + secs(200));
    assert!(q.reap(t0 + secs(ACTIVE_SECS + 1)).is_empty());
    assert_eq!(q.next_deadline(), Some(t0 + secs(200 + ACTIVE_SECS)));
    q.check_invariants();
}

#[test]
fn an_older_now_never_moves_last_seen_back() {
    let mut q = queue();
    let t0 = Instant::now();
    q.create(sid(1), t0 + secs(5)).unwrap();
    q.heartbeat(&sid(1), t0);
    assert_eq!(q.view(&sid(1)).unwrap().last_seen, t0 + secs(5));
    q.check_invariants();
}

#[test]
fn deleting_the_head_promotes_the_next_with_a_fresh_last_seen() {
    let mut q = queue();
    let t0 = Instant::now();
    q.create(sid(1), t0).unwrap();
    q.create(sid(2), t0 + secs(1)).unwrap();
    q.create(sid(3), t0 + secs(2)).unwrap();
    let change = q
        .remove(&sid(1), EndReason::Deleted, t0 + secs(100))
        .unwrap();
    assert_eq!(
        change,
        Change {
            ended: vec![Ended {
                id: sid(1),
                seq: 1,
                reason: EndReason::Deleted,
                was_active: true,
                held: Some(secs(100)),
                inflight: 0,
            }],
            promoted: Some(Promoted {
                id: sid(2),
                seq: 2,
                waited: secs(99),
            }),
        }
    );
    let v = q.active().unwrap();
    assert_eq!(v.id, sid(2));
    assert_eq!(v.last_seen, t0 + secs(100));
    assert_eq!(v.promoted_at, Some(t0 + secs(100)));
    assert_eq!(q.active_hold(t0 + secs(130)), secs(30));
    // A full active timeout from the promotion, not from its last heartbeat.
    assert_eq!(q.next_deadline(), Some(t0 + secs(100 + ACTIVE_SECS)));
    assert_eq!(q.view(&sid(3)).unwrap().position, 1);
    assert_eq!(q.remove(&sid(1), EndReason::Deleted, t0 + secs(100)), None);
    q.check_invariants();
}

#[test]
fn deleting_from_the_middle_shifts_later_positions_only() {
    let mut q = queue();
    let t0 = Instant::now();
    for n in 1..=5 {
        q.create(sid(n), t0).unwrap();
    }
    let change = q.remove(&sid(3), EndReason::Kicked, t0 + secs(1)).unwrap();
    assert_eq!(change.promoted, None);
    assert_eq!(
        change.ended,
        vec![Ended {
            id: sid(3),
            seq: 3,
            reason: EndReason::Kicked,
            was_active: false,
            held: None,
            inflight: 0,
        }]
    );
    let order: Vec<_> = positions(&q)
        .into_iter()
        .map(|(id, _, p)| (id, p))
        .collect();
    assert_eq!(
        order,
        vec![(sid(1), 0), (sid(2), 1), (sid(4), 2), (sid(5), 3)]
    );
    assert_eq!(
        q.active().unwrap().last_seen,
        t0,
        "no promotion, no refresh"
    );
    q.check_invariants();
}

#[test]
fn active_session_is_stale_only_strictly_after_active_timeout() {
    let mut q = queue();
    let t0 = Instant::now();
    q.create(sid(1), t0).unwrap();
    q.create(sid(2), t0).unwrap();
    q.heartbeat(&sid(2), t0 + secs(250));
    assert!(q.reap(t0 + secs(ACTIVE_SECS)).is_empty(), "idle == timeout");
    let at = t0 + secs(ACTIVE_SECS) + ms(1);
    let change = q.reap(at);
    assert_eq!(
        change,
        Change {
            ended: vec![Ended {
                id: sid(1),
                seq: 1,
                reason: EndReason::Stale,
                was_active: true,
                held: Some(secs(ACTIVE_SECS) + ms(1)),
                inflight: 0,
            }],
            promoted: Some(Promoted {
                id: sid(2),
                seq: 2,
                waited: secs(ACTIVE_SECS) + ms(1),
            }),
        }
    );
    assert_eq!(q.active().unwrap().last_seen, at);
    q.check_invariants();
}

#[test]
fn waiting_session_is_stale_only_strictly_after_waiting_timeout() {
    let mut q = queue();
    let t0 = Instant::now();
    q.create(sid(1), t0).unwrap();
    q.create(sid(2), t0).unwrap();
    // Keep the head alive so only the waiting timeout is in play.
    q.heartbeat(&sid(1), t0 + secs(590));
    assert!(
        q.reap(t0 + secs(WAITING_SECS)).is_empty(),
        "idle == timeout"
    );
    let change = q.reap(t0 + secs(WAITING_SECS) + ms(1));
    assert_eq!(change.promoted, None);
    assert_eq!(change.ended.len(), 1);
    assert_eq!(
        (
            change.ended[0].id,
            change.ended[0].was_active,
            change.ended[0].held
        ),
        (sid(2), false, None)
    );
    assert_eq!(q.len(), 1);
    q.check_invariants();
}

#[test]
fn a_stale_waiting_session_is_reaped_rather_than_promoted() {
    let mut q = queue();
    let t0 = Instant::now();
    q.create(sid(1), t0).unwrap();
    q.create(sid(2), t0).unwrap();
    q.create(sid(3), t0).unwrap();
    q.heartbeat(&sid(1), t0 + secs(400));
    q.heartbeat(&sid(3), t0 + secs(650));
    // At 701 s: 1 idle 301 s (> active), 2 idle 701 s (> waiting), 3 idle 51 s.
    let change = q.reap(t0 + secs(701));
    let ended: Vec<_> = change.ended.iter().map(|e| e.id).collect();
    assert_eq!(ended, vec![sid(1), sid(2)], "in queue order");
    assert_eq!(change.promoted.map(|p| p.id), Some(sid(3)));
    q.check_invariants();
}

#[test]
fn a_session_with_a_request_in_flight_is_never_reaped() {
    let mut q = queue();
    let t0 = Instant::now();
    q.create(sid(1), t0).unwrap();
    assert_eq!(q.begin_request(&sid(1), t0 + secs(1)), Ok(1));
    assert_eq!(q.begin_request(&sid(1), t0 + secs(2)), Ok(1));
    assert_eq!(q.next_deadline(), None);
    assert!(q.reap(t0 + secs(100_000)).is_empty());
    q.end_request(&sid(1), t0 + secs(5000));
    assert_eq!(q.view(&sid(1)).unwrap().inflight, 1);
    assert!(q.reap(t0 + secs(100_000)).is_empty());
    q.end_request(&sid(1), t0 + secs(6000));
    let v = q.view(&sid(1)).unwrap();
    assert_eq!((v.inflight, v.last_seen), (0, t0 + secs(6000)));
    assert_eq!(q.next_deadline(), Some(t0 + secs(6000 + ACTIVE_SECS)));
    assert!(q.reap(t0 + secs(6000 + ACTIVE_SECS)).is_empty());
    assert_eq!(q.reap(t0 + secs(6000 + ACTIVE_SECS + 1)).ended.len(), 1);
    q.check_invariants();
}

#[test]
fn removing_a_session_with_requests_in_flight_reports_them() {
    let mut q = queue();
    let t0 = Instant::now();
    q.create(sid(1), t0).unwrap();
    q.begin_request(&sid(1), t0).unwrap();
    let change = q.remove(&sid(1), EndReason::Expired, t0 + secs(3)).unwrap();
    assert_eq!(change.ended[0].inflight, 1);
    assert_eq!(change.ended[0].reason, EndReason::Expired);
    assert!(q.is_empty());
    q.check_invariants();
}

#[test]
fn end_request_for_a_removed_session_is_a_no_op() {
    let mut q = queue();
    let t0 = Instant::now();
    q.create(sid(1), t0).unwrap();
    q.create(sid(2), t0).unwrap();
    q.begin_request(&sid(1), t0).unwrap();
    q.remove(&sid(1), EndReason::Kicked, t0 + secs(1)).unwrap();
    q.end_request(&sid(1), t0 + secs(2));
    q.end_request(&sid(7), t0 + secs(2));
    assert_eq!(q.len(), 1);
    let v = q.active().unwrap();
    assert_eq!((v.id, v.inflight, v.last_seen), (sid(2), 0, t0 + secs(1)));
    q.check_invariants();
}

#[test]
fn begin_request_refuses_waiting_and_unknown_sessions() {
    let mut q = queue();
    let t0 = Instant::now();
    q.create(sid(1), t0).unwrap();
    q.create(sid(2), t0).unwrap();
    q.create(sid(3), t0).unwrap();
    assert_eq!(
        q.begin_request(&sid(3), t0 + secs(1)),
        Err(Refusal::Waiting { position: 2 })
    );
    assert_eq!(q.begin_request(&sid(9), t0), Err(Refusal::Unknown));
    // A refused request refreshes nothing.
    assert_eq!(q.view(&sid(3)).unwrap().last_seen, t0);
    assert_eq!(q.view(&sid(3)).unwrap().inflight, 0);
    q.check_invariants();
}

#[test]
fn seq_only_grows_across_removals_and_restarts() {
    let mut q = queue();
    let t0 = Instant::now();
    assert_eq!(q.next_seq(), 1);
    q.create(sid(1), t0).unwrap();
    q.create(sid(2), t0).unwrap();
    q.remove(&sid(2), EndReason::Deleted, t0).unwrap();
    q.remove(&sid(1), EndReason::Deleted, t0).unwrap();
    q.create(sid(2), t0).unwrap();
    assert_eq!(q.view(&sid(2)).unwrap().seq, 3);
    assert_eq!(q.next_seq(), 4);

    let mut restarted = Queue::with_next_seq(timeouts(), q.next_seq());
    restarted.create(sid(1), t0).unwrap();
    assert_eq!(restarted.begin_request(&sid(1), t0), Ok(4));
    assert_eq!(restarted.next_seq(), 5);

    assert_eq!(Queue::with_next_seq(timeouts(), 0).next_seq(), 1);
    assert_eq!(restarted.timeouts().active, secs(ACTIVE_SECS));
    assert_eq!(restarted.timeouts().waiting, secs(WAITING_SECS));

    let mut last = Queue::with_next_seq(timeouts(), u64::MAX - 1);
    assert_eq!(
        last.create(sid(1), t0),
        Ok((
            0,
            Some(Promoted {
                id: sid(1),
                seq: u64::MAX - 1,
                waited: Duration::ZERO
            })
        ))
    );
    assert_eq!(last.create(sid(2), t0), Err(QueueError::SeqExhausted));
    assert_eq!((last.len(), last.next_seq()), (1, u64::MAX));
    last.check_invariants();
}

#[test]
fn an_unrepresentable_deadline_means_never_stale() {
    let mut q = Queue::new(Timeouts {
        active: Duration::MAX,
        waiting: Duration::MAX,
    });
    let t0 = Instant::now();
    q.create(sid(1), t0).unwrap();
    q.create(sid(2), t0).unwrap();
    assert_eq!(q.next_deadline(), None);
    assert!(q.reap(t0 + secs(1_000_000)).is_empty());
    q.check_invariants();
}

#[test]
fn empty_queue_answers() {
    let mut q = queue();
    let t0 = Instant::now();
    assert_eq!((q.len(), q.waiting(), q.is_empty()), (0, 0, true));
    assert_eq!(q.active(), None);
    assert_eq!(q.active_hold(t0), Duration::ZERO);
    assert_eq!(q.next_deadline(), None);
    assert!(q.reap(t0).is_empty());
    assert_eq!(q.iter().count(), 0);
    assert!(!q.heartbeat(&sid(1), t0));
    q.check_invariants();
}

#[test]
fn labels_match_the_contract() {
    assert_eq!(Status::Active.as_str(), "active");
    assert_eq!(Status::Waiting.as_str(), "waiting");
    let labels: Vec<_> = EndReason::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(labels, ["deleted", "stale", "expired", "kicked"]);
    assert!(Change::default().is_empty());
    assert_eq!(
        QueueError::DuplicateId.to_string(),
        "session id already in the queue"
    );
}

#[test]
fn a_hundred_thousand_sessions() {
    const N: u128 = 100_000;
    let mut q = queue();
    let t0 = Instant::now();
    for n in 0..N {
        let (pos, _) = q.create(sid(n), t0).unwrap();
        assert_eq!(pos as u128, n);
    }
    assert_eq!(q.view(&sid(N - 1)).unwrap().position, 99_999);
    assert_eq!(q.view(&sid(N - 2)).unwrap().position, 99_998);
    // Remove 10,000 from the middle; each is a handful of O(log n) steps.
    for n in 40_000..50_000 {
        q.remove(&sid(n), EndReason::Deleted, t0).unwrap();
    }
    assert_eq!(q.view(&sid(39_999)).unwrap().position, 39_999);
    assert_eq!(q.view(&sid(50_000)).unwrap().position, 40_000);
    assert_eq!(q.view(&sid(N - 1)).unwrap().position, 89_999);
    assert_eq!(
        q.begin_request(&sid(N - 1), t0),
        Err(Refusal::Waiting { position: 89_999 })
    );
    let change = q
        .remove(&sid(0), EndReason::Deleted, t0 + secs(400))
        .unwrap();
    assert_eq!(change.promoted.map(|p| p.id), Some(sid(1)));
    assert_eq!(q.view(&sid(N - 1)).unwrap().position, 89_998);
    assert_eq!(q.len(), 89_999);
    q.check_invariants();
    // Everyone but the fresh head goes stale in one reap.
    let change = q.reap(t0 + secs(WAITING_SECS + 1));
    assert_eq!(change.ended.len(), 89_998);
    assert_eq!(q.len(), 1);
    q.check_invariants();
}

#[test]
fn a_holder_over_max_hold_is_expired_only_while_others_wait() {
    let t0 = Instant::now();
    let mut q = queue();
    q.set_max_hold(Some(secs(60)));
    let (a, b) = (sid(1), sid(2));
    q.create(a, t0).unwrap();
    // Alone: no limit, however long.
    assert!(q.reap(t0 + secs(200)).is_empty());
    q.heartbeat(&a, t0 + secs(200));
    q.create(b, t0 + secs(200)).unwrap();
    // Requests in flight do not protect against the hold limit.
    q.begin_request(&a, t0 + secs(200)).unwrap();
    let change = q.reap(t0 + secs(201));
    assert_eq!(change.ended.len(), 1);
    assert_eq!(change.ended[0].reason, EndReason::Expired);
    assert_eq!(change.ended[0].held, Some(secs(201)));
    assert_eq!(change.ended[0].inflight, 1);
    assert_eq!(change.promoted.map(|p| p.id), Some(b));
    // The new holder is judged from its own promotion.
    let c = sid(3);
    q.create(c, t0 + secs(202)).unwrap();
    q.heartbeat(&b, t0 + secs(250));
    assert!(q.reap(t0 + secs(261)).is_empty());
    q.heartbeat(&b, t0 + secs(261));
    q.heartbeat(&c, t0 + secs(261));
    let change = q.reap(t0 + secs(261) + ms(1));
    assert_eq!(change.ended[0].id, b);
    assert_eq!(change.ended[0].reason, EndReason::Expired);
}

#[test]
fn restore_keeps_order_seqs_and_restarts_idle_clocks() {
    let t0 = Instant::now();
    let now = t0 + secs(1000);
    let (a, b, c) = (sid(1), sid(2), sid(3));
    let q = Queue::restore(
        timeouts(),
        20,
        vec![(c, 17, t0 + secs(30)), (a, 5, t0), (b, 9, t0 + secs(10))],
        now,
    )
    .unwrap();
    let order: Vec<(SessionId, u64, usize)> = q.iter().map(|v| (v.id, v.seq, v.position)).collect();
    assert_eq!(order, vec![(a, 5, 0), (b, 9, 1), (c, 17, 2)]);
    assert_eq!(
        q.active().map(|v| (v.id, v.promoted_at)),
        Some((a, Some(now)))
    );
    assert!(q.iter().all(|v| v.last_seen == now));
    assert_eq!(q.view(&b).unwrap().created, t0 + secs(10));
    assert_eq!(q.next_seq(), 20);
    // The counter never goes back below what was restored.
    let q = Queue::restore(timeouts(), 3, vec![(a, 5, t0)], now).unwrap();
    assert_eq!(q.next_seq(), 6);
    // Corrupt input is refused, not half-loaded.
    assert_eq!(
        Queue::restore(timeouts(), 9, vec![(a, 5, t0), (a, 6, t0)], now).err(),
        Some(QueueError::Corrupt)
    );
    assert_eq!(
        Queue::restore(timeouts(), 9, vec![(a, 5, t0), (b, 5, t0)], now).err(),
        Some(QueueError::Corrupt)
    );
    assert_eq!(
        Queue::restore(timeouts(), 9, vec![(a, 0, t0)], now).err(),
        Some(QueueError::Corrupt)
    );
    let mut q = Queue::restore(timeouts(), 9, vec![(a, 5, t0), (b, 6, t0)], now).unwrap();
    q.check_invariants();
    assert!(q.reap(now + secs(300)).is_empty());
    assert_eq!(q.reap(now + secs(300) + ms(1)).ended.len(), 1);
}

#[test]
fn with_the_handoff_barrier_nobody_is_promoted_until_the_reset_is_over() {
    let mut q = queue();
    q.set_handoff(true);
    let t0 = Instant::now();
    let (a, b, c) = (sid(1), sid(2), sid(3));
    q.create(a, t0).unwrap();
    q.create(b, t0).unwrap();
    let change = q.remove(&a, EndReason::Deleted, t0 + secs(5)).unwrap();
    assert_eq!(change.promoted, None);
    assert_eq!(q.resetting(), Some(1));
    assert_eq!(q.active(), None);
    assert_eq!(q.active_hold(t0 + secs(6)), Duration::ZERO);
    // The reset counts as one ahead of everybody, newcomers included.
    assert_eq!(q.create(c, t0 + secs(6)), Ok((2, None)));
    assert_eq!(
        positions(&q),
        vec![(b, Status::Waiting, 1), (c, Status::Waiting, 2)]
    );
    assert_eq!(q.waiting(), 2);
    assert_eq!(
        q.begin_request(&b, t0 + secs(6)),
        Err(Refusal::Waiting { position: 1 })
    );
    // Over: b is promoted then, not before.
    let p = q.finish_handoff(t0 + secs(8)).unwrap();
    assert_eq!((p.id, p.waited), (b, secs(8)));
    assert_eq!(q.resetting(), None);
    assert_eq!(q.finish_handoff(t0 + secs(9)), None);
    assert_eq!(q.active().map(|v| v.id), Some(b));
    q.check_invariants();
}

#[test]
fn a_reset_after_the_last_holder_leaves_the_next_newcomer_waiting_until_it_is_over() {
    let mut q = queue();
    q.set_handoff(true);
    let t0 = Instant::now();
    q.create(sid(1), t0).unwrap();
    // Reaped, not deleted: the reset is owed all the same.
    let change = q.reap(t0 + secs(ACTIVE_SECS + 1));
    assert_eq!(change.ended.len(), 1);
    assert_eq!(q.resetting(), Some(1));
    assert_eq!(q.create(sid(2), t0 + secs(ACTIVE_SECS + 2)), Ok((1, None)));
    assert!(q.finish_handoff(t0 + secs(ACTIVE_SECS + 3)).is_some());
    q.check_invariants();
}

#[test]
fn a_restart_during_a_reset_resumes_it_instead_of_promoting() {
    let t0 = Instant::now();
    let restored = vec![(sid(2), 2, t0), (sid(3), 3, t0)];
    let mut q = Queue::restore(timeouts(), 4, restored, t0).unwrap();
    q.set_handoff(true);
    // The reset of turn 1 was under way: sid(2) waits again.
    assert!(q.resume_reset(1, t0));
    assert_eq!(q.active(), None);
    assert_eq!(
        positions(&q),
        vec![(sid(2), Status::Waiting, 1), (sid(3), Status::Waiting, 2)]
    );
    q.check_invariants();
    assert_eq!(q.finish_handoff(t0 + secs(1)).map(|p| p.id), Some(sid(2)));
    // A persisted turn that is not older than the head is stale: nothing changes.
    let mut q = Queue::restore(timeouts(), 4, vec![(sid(2), 2, t0)], t0).unwrap();
    q.set_handoff(true);
    assert!(!q.resume_reset(2, t0));
    assert_eq!(q.active().map(|v| v.id), Some(sid(2)));
}

#[test]
fn new_timeouts_move_every_deadline_but_keep_order_and_seqs() {
    let mut q = queue();
    let t0 = Instant::now();
    q.create(sid(1), t0).unwrap();
    q.create(sid(2), t0).unwrap();
    q.create(sid(3), t0 + secs(30)).unwrap();
    let before = positions(&q);
    // Longer: nobody is stale at the old deadline any more.
    q.set_timeouts(Timeouts {
        active: secs(ACTIVE_SECS * 2),
        waiting: secs(WAITING_SECS * 2),
    });
    assert!(q.reap(t0 + secs(ACTIVE_SECS) + ms(1)).is_empty());
    assert_eq!(positions(&q), before);
    q.check_invariants();
    // Shorter: the next reap ends whoever is idle longer than the new timeouts.
    q.set_timeouts(Timeouts {
        active: secs(10),
        waiting: secs(50),
    });
    q.check_invariants();
    let change = q.reap(t0 + secs(60));
    let ended: Vec<u64> = change.ended.iter().map(|e| e.seq).collect();
    assert_eq!(ended, [1, 2], "session 3 was seen 30 s before: not stale");
    assert_eq!(q.active().map(|v| v.seq), Some(3));
    q.check_invariants();
}

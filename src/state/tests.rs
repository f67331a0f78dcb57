use super::*;

const UPSTREAM: &str =
    "[[upstream]]\nname = \"r1\"\naddress = \"127.0.0.1:9\"\nroutes = [\"/lab\"]\n";

fn shared(extra: &str) -> Arc<Shared> {
    let config = Config::parse(
        &format!("{extra}\n[rate_limit]\nburst = 1000\n{UPSTREAM}"),
        "t.toml",
    )
    .unwrap();
    Shared::new(config).unwrap()
}

fn client() -> IpAddr {
    IpAddr::from([192, 0, 2, 1])
}

#[tokio::test(start_paused = true)]
async fn a_long_poll_is_woken_only_when_its_own_answer_changes() {
    let s = shared("");
    let now = Instant::now();
    let (a, _) = s.create_session(client(), None, now).await.unwrap();
    let (b, _) = s.create_session(client(), None, now).await.unwrap();
    let (c, _) = s.create_session(client(), None, now).await.unwrap();
    let poll = {
        let s = s.clone();
        tokio::spawn(async move { s.wait_for_turn(&c, Duration::from_secs(50)).await })
    };
    tokio::task::yield_now().await;
    // Changes that do not end C's wait: creates behind it, B (ahead of it) leaving.
    for i in 0..20u8 {
        // Other clients: one client's live sessions are capped.
        let other = IpAddr::from([198, 51, 100, i]);
        s.create_session(other, None, now).await.unwrap();
    }
    assert!(s.end_session(&b, EndReason::Deleted, now).await.unwrap());
    tokio::task::yield_now().await;
    assert_eq!(s.poll_wakeups.load(Ordering::SeqCst), 0);
    // A leaves: C is promoted, and its poll (only) wakes and answers.
    assert!(s.end_session(&a, EndReason::Deleted, now).await.unwrap());
    let answer = poll.await.unwrap();
    assert_eq!(answer, Some((Status::Active, 0)));
    assert_eq!(s.poll_wakeups.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_holders_watch_is_no_sign_of_life_and_wakes_when_its_session_ends() {
    let s = shared("");
    let now = Instant::now();
    let (a, position) = s.create_session(client(), None, now).await.unwrap();
    assert_eq!(position, 0);
    let watch = {
        let s = s.clone();
        tokio::spawn(async move { s.wait_while_active(&a, Duration::from_secs(50)).await })
    };
    tokio::task::yield_now().await;
    assert!(!watch.is_finished());
    // The parked watch did not refresh the session: a holder whose heartbeats stop
    // is still reaped however long its watch runs.
    assert_eq!(s.lock().queue.view(&a).map(|v| v.last_seen), Some(now));
    assert_eq!(s.kick(&a, 0, "bench needed", now).await.unwrap(), Some(0));
    assert_eq!(watch.await.unwrap(), None);
    assert_eq!(s.poll_wakeups.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_long_poll_on_an_ended_session_answers_gone_at_once() {
    let s = shared("");
    let now = Instant::now();
    s.create_session(client(), None, now).await.unwrap();
    let (b, _) = s.create_session(client(), None, now).await.unwrap();
    let poll = {
        let s = s.clone();
        tokio::spawn(async move { s.wait_for_turn(&b, Duration::from_secs(50)).await })
    };
    tokio::task::yield_now().await;
    assert!(s.end_session(&b, EndReason::Deleted, now).await.unwrap());
    assert_eq!(poll.await.unwrap(), None);
}

#[tokio::test]
async fn a_create_the_queue_refuses_leaves_no_record_in_the_store() {
    let dir = tempfile::tempdir().unwrap();
    // The store refuses a directory others can enter.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let path = dir.path().join("q.redb");
    {
        // A store whose counter is exhausted: the queue refuses the next create.
        let (store, _) = Store::open(&path).unwrap();
        let last = StoredSession {
            id: SessionId::random(),
            seq: 7,
            created_ms: 1,
        };
        store.insert(&last, u64::MAX).unwrap();
        store.remove(&[7]).unwrap();
    }
    let s = shared(&format!(
        "[queue]\nstate_path = {:?}",
        path.display().to_string()
    ));
    let refused = s.create_session(client(), None, Instant::now()).await;
    assert!(
        matches!(refused, Err(CreateFailure::Store(StoreFailed::Queue(_)))),
        "{refused:?}"
    );
    assert_eq!(s.picture(10, Instant::now()).len, 0);
    drop(s);
    // The writer thread lets go of the file once the last handle is gone.
    let mut restored = None;
    for _ in 0..500 {
        if let Ok((_, r)) = Store::open(&path) {
            restored = Some(r);
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let restored = restored.expect("store released");
    assert!(restored.sessions.is_empty(), "{:?}", restored.sessions);
}

fn config(extra: &str, rate: &str) -> Config {
    Config::parse(
        &format!("{extra}\n[rate_limit]\n{rate}\n{UPSTREAM}"),
        "t.toml",
    )
    .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_reload_keeps_the_queue_and_applies_timeouts_caps_and_the_rate() {
    let s = shared("");
    let now = Instant::now();
    let (a, _) = s.create_session(client(), None, now).await.unwrap();
    let (b, _) = s.create_session(client(), None, now).await.unwrap();
    let before: Vec<(SessionId, u64)> = s
        .picture(10, now)
        .sessions
        .iter()
        .map(|i| (i.view.id, i.view.seq))
        .collect();
    let r = s
        .apply_config(config(
            "[queue]\nactive_timeout = \"10s\"\nmax_sessions = 2\nmax_hold = \"1h\"",
            "burst = 1\nrefill_every = \"1h\"",
        ))
        .unwrap();
    assert!(r.changed.contains(&"rate_limit".to_string()), "{r:?}");
    let after: Vec<(SessionId, u64)> = s
        .picture(10, now)
        .sessions
        .iter()
        .map(|i| (i.view.id, i.view.seq))
        .collect();
    assert_eq!(before, after);
    assert_eq!(s.config().queue.max_sessions, 2);
    assert_eq!(s.hold_remaining(now), Some(Duration::from_secs(3600)));
    // The new cap: the queue holds two already.
    let other = IpAddr::from([198, 51, 100, 7]);
    assert!(matches!(
        s.create_session(other, None, now).await,
        Err(CreateFailure::Refused(CreateRefusal::QueueFull { .. }))
    ));
    // The new active timeout: A is reaped 10 s after it was last seen, B promoted.
    assert_eq!(s.reap(now + Duration::from_secs(11)).await, 1);
    assert_eq!(s.active_session(), Some(b));
    assert!(s.lock().queue.view(&a).is_none());
}

#[tokio::test(start_paused = true)]
async fn a_reload_that_needs_a_restart_changes_nothing() {
    let s = shared("");
    let refused = s
        .apply_config(config(
            "[server]\nthreads = 3\n[queue]\nmax_sessions = 2",
            "burst = 1000",
        ))
        .unwrap_err();
    assert_eq!(refused.messages(), ["needs a restart: server.threads"]);
    // All or nothing: the live change in the same file was not applied either.
    assert_eq!(s.config().queue.max_sessions, 10_000);
    assert_eq!(
        s.reload(Trigger::Signal).unwrap_err(),
        ReloadRefused::NoFile
    );
}

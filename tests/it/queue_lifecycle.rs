//! Contract §3: promotion, stale reaping, what refreshes a session and what does not.

use std::time::{Duration, Instant};

use crate::support::*;

fn status_body(status: &str, position: u64) -> (u16, String) {
    (
        200,
        format!(r#"{{"status":"{status}","position":{position}}}"#) + "\n",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_promotes_the_next_waiter_at_once_and_positions_shift() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&Cfg::new(up.addr)).await;
    let mut ids = Vec::new();
    for want in 0..4 {
        let (id, pos) = create_session(&gw).await;
        assert_eq!(pos, want);
        ids.push(id);
    }
    let [a, b, c, d] = [&ids[0], &ids[1], &ids[2], &ids[3]];
    assert_eq!(lab_get(&gw, "/lab/x", b).await.0, 423);

    // Deleting a waiter in the middle shifts those behind it.
    assert_eq!(delete_session(&gw, c).await, 204);
    assert_eq!(get_session(&gw, d).await, status_body("waiting", 2));

    // Deleting the holder promotes the next one in the same operation.
    assert_eq!(delete_session(&gw, a).await, 204);
    assert_eq!(active_session(&gw).await.as_deref(), Some(tag(b).as_str()));
    assert_eq!(get_session(&gw, b).await, status_body("active", 0));
    assert_eq!(get_session(&gw, d).await, status_body("waiting", 1));
    assert_eq!(lab_get(&gw, "/lab/x", b).await.0, 200);
    assert_eq!(lab_get(&gw, "/lab/x", a).await.0, 404);

    // A newcomer queues behind everyone.
    let (e, pos) = create_session(&gw).await;
    assert_eq!(pos, 2);
    assert_eq!(delete_session(&gw, b).await, 204);
    assert_eq!(get_session(&gw, d).await, status_body("active", 0));
    assert_eq!(get_session(&gw, &e).await, status_body("waiting", 1));
    assert_eq!(up.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reaping_a_stale_holder_promotes_the_next_waiter() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&Cfg::new(up.addr).timeouts("1s", "60s")).await;
    let created = Instant::now();
    let (a, _) = create_session(&gw).await;
    let (b, _) = create_session(&gw).await;
    let (c, _) = create_session(&gw).await;
    // The waiters keep beating (so their own idle time is out of the picture).
    eventually(
        Duration::from_secs(6),
        "the idle holder to be reaped",
        || async {
            assert_eq!(heartbeat(&gw, &b).await, 204);
            assert_eq!(heartbeat(&gw, &c).await, 204);
            (active_session(&gw).await.as_deref() == Some(tag(&b).as_str())).then_some(())
        },
    )
    .await;
    assert!(
        created.elapsed() >= Duration::from_millis(900),
        "reaped before active_timeout: {:?}",
        created.elapsed()
    );
    assert_eq!(get_session(&gw, &a).await.0, 404);
    assert_eq!(get_session(&gw, &b).await, status_body("active", 0));
    assert_eq!(get_session(&gw, &c).await, status_body("waiting", 1));
    assert_eq!(
        gw.metric(r#"labgate_sessions_ended_total{reason="stale"}"#)
            .await,
        Some(1.0)
    );
    assert_eq!(lab_get(&gw, "/lab/x", &b).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_with_a_request_in_flight_is_not_reaped() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&Cfg::new(up.addr).timeouts("1s", "60s")).await;
    let (a, _) = create_session(&gw).await;
    let (b, _) = create_session(&gw).await;
    let url = gw.url("/lab/slow/2500");
    let a2 = a.clone();
    let slow = tokio::spawn(async move {
        let r = client()
            .get(url)
            .header("X-Session-ID", a2)
            .send()
            .await
            .expect("slow request");
        let status = r.status().as_u16();
        (status, Instant::now())
    });
    eventually(
        Duration::from_secs(5),
        "the slow request upstream",
        || async { (up.count() == 1).then_some(()) },
    )
    .await;
    let started = Instant::now();
    // Well past active_timeout while the request runs: still the holder.
    let mut checks = 0;
    while !slow.is_finished() {
        assert_eq!(heartbeat(&gw, &b).await, 204);
        assert_eq!(
            active_session(&gw).await.as_deref(),
            Some(tag(&a).as_str()),
            "reaped with a request in flight, {:?} into it",
            started.elapsed()
        );
        checks += 1;
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "slow request hangs"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, ended) = slow.await.expect("join");
    assert_eq!(status, 200);
    assert!(checks >= 10, "only {checks} checks during the request");
    // After it ends, the idle timeout counts again (from the end of the request).
    eventually(
        Duration::from_secs(6),
        "the now idle holder to be reaped",
        || async {
            assert_eq!(heartbeat(&gw, &b).await, 204);
            (active_session(&gw).await.as_deref() == Some(tag(&b).as_str())).then_some(())
        },
    )
    .await;
    assert!(
        ended.elapsed() >= Duration::from_millis(900),
        "reaped {:?} after its request ended",
        ended.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_active_and_waiting_sessions_alive() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&Cfg::new(up.addr).timeouts("1s", "1s")).await;
    let (a, _) = create_session(&gw).await;
    let (b, _) = create_session(&gw).await;
    let until = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < until {
        assert_eq!(heartbeat(&gw, &a).await, 204);
        assert_eq!(heartbeat(&gw, &b).await, 204);
        assert_eq!(active_session(&gw).await.as_deref(), Some(tag(&a).as_str()));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        gw.metric(r#"labgate_sessions_ended_total{reason="stale"}"#)
            .await,
        Some(0.0)
    );
    // Only b keeps beating now: a goes stale and b is promoted.
    let deadline = Instant::now() + Duration::from_secs(6);
    loop {
        assert_eq!(
            heartbeat(&gw, &b).await,
            204,
            "the beating waiter was reaped"
        );
        if active_session(&gw).await.as_deref() == Some(tag(&b).as_str()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the silent holder was never reaped"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(heartbeat(&gw, &a).await, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_session_lookups_do_not_refresh_the_holder() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&Cfg::new(up.addr).timeouts("1s", "60s")).await;
    let created = Instant::now();
    let (a, _) = create_session(&gw).await;
    let mut seen_active = 0;
    let deadline = Instant::now() + Duration::from_secs(6);
    while let Some(active) = active_session(&gw).await {
        assert_eq!(active, tag(&a));
        seen_active += 1;
        assert!(Instant::now() < deadline, "the holder never went stale");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(seen_active > 5, "polled only {seen_active} times");
    assert!(created.elapsed() >= Duration::from_millis(900));
    assert_eq!(get_session(&gw, &a).await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_session_and_forwarded_requests_refresh_the_holder() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&Cfg::new(up.addr).timeouts("1s", "60s")).await;
    let (a, _) = create_session(&gw).await;
    let until = Instant::now() + Duration::from_millis(2500);
    let mut i = 0;
    while Instant::now() < until {
        if i % 2 == 0 {
            assert_eq!(get_session(&gw, &a).await.0, 200);
        } else {
            assert_eq!(lab_get(&gw, "/lab/x", &a).await.0, 200);
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(active_session(&gw).await.as_deref(), Some(tag(&a).as_str()));
}

fn ws_cfg(http: &Upstream, ws: &WsUpstream) -> Cfg {
    Cfg::bare()
        .upstream(UpstreamCfg::new("lab", http.addr).routes(&["/lab"]))
        .upstream(UpstreamCfg::new("console", ws.addr).routes(&["/lab/ws"]))
}

async fn open_ws(gw: &Gateway, id: &str) -> ClientWs {
    open_echo_ws(gw, "/lab/ws", id).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_websocket_keeps_its_session_from_being_reaped() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let http = Upstream::start().await;
    let ws = WsUpstream::start().await;
    let gw = Gateway::start(&ws_cfg(&http, &ws).timeouts("1s", "60s")).await;
    let (a, _) = create_session(&gw).await;
    let mut socket = open_ws(&gw, &a).await;
    let until = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < until {
        assert_eq!(active_session(&gw).await.as_deref(), Some(tag(&a).as_str()));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    socket
        .send(Message::text("still here"))
        .await
        .expect("send");
    let echo = tokio::time::timeout(Duration::from_secs(5), socket.next())
        .await
        .expect("echo in time")
        .expect("open")
        .expect("message");
    assert_eq!(echo, Message::text("still here"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ending_the_holder_cuts_its_open_websocket() {
    use futures_util::StreamExt;
    let http = Upstream::start().await;
    let ws = WsUpstream::start().await;
    let gw = Gateway::start(&ws_cfg(&http, &ws)).await;
    let (a, _) = create_session(&gw).await;
    let (b, _) = create_session(&gw).await;
    let mut socket = open_ws(&gw, &a).await;
    assert_eq!(delete_session(&gw, &a).await, 204);
    assert_eq!(active_session(&gw).await.as_deref(), Some(tag(&b).as_str()));
    // The contract promises 100 ms (§7); allow 2 s for a loaded test machine.
    let next = tokio::time::timeout(Duration::from_secs(2), socket.next()).await;
    match next {
        Ok(None) | Ok(Some(Err(_))) => {}
        Ok(Some(Ok(m))) if m.is_close() => {}
        Ok(Some(Ok(m))) => panic!("unexpected message {m:?}"),
        Err(_) => panic!("the ended session's WebSocket is still open 2 s later"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ending_the_holder_cuts_its_request_in_flight() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&Cfg::new(up.addr)).await;
    let (a, _) = create_session(&gw).await;
    let url = gw.url("/lab/slow/6000");
    let a2 = a.clone();
    let slow = tokio::spawn(async move {
        let started = Instant::now();
        // Cut or finished, only the time it took matters here.
        if let Ok(r) = client().get(url).header("X-Session-ID", a2).send().await {
            let _ = r.bytes().await;
        }
        started.elapsed()
    });
    eventually(
        Duration::from_secs(5),
        "the slow request upstream",
        || async { (up.count() == 1).then_some(()) },
    )
    .await;
    assert_eq!(delete_session(&gw, &a).await, 204);
    let took = tokio::time::timeout(Duration::from_secs(10), slow)
        .await
        .expect("request ended")
        .expect("join");
    // The contract promises 100 ms (§7); the upstream would take 6 s.
    assert!(
        took < Duration::from_secs(3),
        "the ended session's request ran on for {took:?}"
    );
}

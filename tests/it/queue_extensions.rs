//! Contract §7 queue extensions against the real binary: long-poll
//! (`GET /session/{id}?wait=N`), `X-Lab-Active-Timeout`, the `423` hints
//! (`X-Queue-Position`, `Retry-After`), the hold limit (`max_hold`, reason `expired`,
//! `X-Lab-Hold-Remaining`), the fencing header `X-Lab-Session-Seq`, and the
//! `labgate_hold_seconds` and `labgate_state_write_seconds` histograms.

use std::time::{Duration, Instant};

use crate::support::*;

/// `GET /session/{id}{query}`: (status, headers, JSON body or Null).
async fn get_with(
    gw: &Gateway,
    id: &str,
    query: &str,
) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
    let r = client()
        .get(gw.url(&format!("/session/{id}{query}")))
        .timeout(Duration::from_secs(90))
        .send()
        .await
        .expect("GET /session/{id}");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap_or_default();
    (
        status,
        headers,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
}

fn header<'a>(h: &'a reqwest::header::HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn header_u64(h: &reqwest::header::HeaderMap, name: &str) -> Option<u64> {
    header(h, name).map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name} is not a whole number: {v:?}"))
    })
}

/// `GET {path}` under the gate with `id`, with extra headers: (status, headers).
async fn lab_get_with(
    gw: &Gateway,
    path: &str,
    id: &str,
    extra: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap) {
    let mut req = client().get(gw.url(path)).header("X-Session-ID", id);
    for (n, v) in extra {
        req = req.header(*n, *v);
    }
    let r = req.send().await.expect("lab request");
    (r.status().as_u16(), r.headers().clone())
}

async fn heartbeat_with(gw: &Gateway, id: &str) -> (u16, reqwest::header::HeaderMap) {
    let r = client()
        .post(gw.url("/session/heartbeat"))
        .header("X-Session-ID", id)
        .send()
        .await
        .expect("heartbeat");
    (r.status().as_u16(), r.headers().clone())
}

async fn metric_or_zero(gw: &Gateway, sample: &str) -> f64 {
    gw.metric(sample).await.unwrap_or(0.0)
}

// ------------------------------------------------------------------ long-poll

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_answers_at_promotion_when_the_holder_deletes() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&Cfg::new(up.addr)).await;
    let (a, _) = create_session(&gw).await;
    let (b, _) = create_session(&gw).await;
    let poll = {
        let url = gw.url(&format!("/session/{b}?wait=20"));
        tokio::spawn(async move {
            let r = client()
                .get(url)
                .timeout(Duration::from_secs(60))
                .send()
                .await
                .expect("long-poll");
            let at = Instant::now();
            let status = r.status().as_u16();
            let body: serde_json::Value = r.json().await.expect("json");
            (status, body, at)
        })
    };
    // Let the long-poll get under way, then hand the lab over.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !poll.is_finished(),
        "the long-poll answered before anything changed"
    );
    assert_eq!(delete_session(&gw, &a).await, 204);
    let deleted_at = Instant::now();
    let (status, body, answered_at) = tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .expect("long-poll answered in time")
        .expect("task");
    assert_eq!(status, 200);
    assert_eq!(body, serde_json::json!({"status": "active", "position": 0}));
    let after = answered_at.saturating_duration_since(deleted_at);
    println!("long-poll answered {after:?} after the holder's DELETE was acknowledged");
    assert!(after < Duration::from_secs(1), "long-poll took {after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_times_out_with_the_current_status() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&Cfg::new(up.addr)).await;
    let (_a, _) = create_session(&gw).await;
    let (b, _) = create_session(&gw).await;
    let t = Instant::now();
    let (status, headers, body) = get_with(&gw, &b, "?wait=1").await;
    let took = t.elapsed();
    assert_eq!(status, 200);
    assert_eq!(
        body,
        serde_json::json!({"status": "waiting", "position": 1})
    );
    assert!(header(&headers, "x-lab-active-timeout").is_some());
    // It waited (the whole second, give or take the clock) and then answered.
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "wait=1 answered after {took:?}"
    );
    // wait=0 is a plain GET.
    let t = Instant::now();
    let (status, _, body) = get_with(&gw, &b, "?wait=0").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("waiting")));
    assert!(t.elapsed() < Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_answers_at_once_for_unknown_and_active_sessions() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&Cfg::new(up.addr)).await;
    let (a, _) = create_session(&gw).await;
    // An unknown (well-formed) id and a malformed one: 404 at once, not after 30 s.
    for id in ["0b9f7a0e-6f0b-4f7c-9a55-2f7d8b1c0e11", "not-a-uuid"] {
        let t = Instant::now();
        let (status, _, body) = get_with(&gw, id, "?wait=30").await;
        assert_eq!(status, 404, "{id}");
        assert_eq!(body, serde_json::json!({"detail": "Session not found"}));
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "{id}: {:?}",
            t.elapsed()
        );
    }
    // The ACTIVE one answers at once, also with a wait above the 60 s cap (clamped, not
    // refused; the clamp itself is the unit test `wait_is_whole_seconds_clamped_to_a_minute`).
    for query in ["?wait=30", "?wait=999"] {
        let t = Instant::now();
        let (status, _, body) = get_with(&gw, &a, query).await;
        assert_eq!(status, 200, "{query}");
        assert_eq!(body, serde_json::json!({"status": "active", "position": 0}));
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "{query}: {:?}",
            t.elapsed()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_answers_404_when_the_waiting_session_disappears() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&Cfg::new(up.addr)).await;
    let (_a, _) = create_session(&gw).await;
    let (b, _) = create_session(&gw).await;
    let poll = {
        let url = gw.url(&format!("/session/{b}?wait=999"));
        tokio::spawn(async move {
            let r = client()
                .get(url)
                .timeout(Duration::from_secs(90))
                .send()
                .await
                .expect("long-poll");
            (r.status().as_u16(), Instant::now())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!poll.is_finished());
    assert_eq!(delete_session(&gw, &b).await, 204);
    let deleted_at = Instant::now();
    let (status, at) = tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .expect("in time")
        .expect("task");
    assert_eq!(status, 404);
    let after = at.saturating_duration_since(deleted_at);
    assert!(after < Duration::from_secs(1), "{after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_with_a_non_integer_wait_is_a_fastapi_422() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&Cfg::new(up.addr)).await;
    let (a, _) = create_session(&gw).await;
    for (query, input) in [
        ("?wait=abc", "abc"),
        ("?wait=-1", "-1"),
        ("?wait=1.5", "1.5"),
    ] {
        let (status, _, body) = get_with(&gw, &a, query).await;
        assert_eq!(status, 422, "{query}");
        assert_eq!(
            body,
            serde_json::json!({"detail": [{
                "type": "int_parsing",
                "loc": ["query", "wait"],
                "msg": "Input should be a valid integer, unable to parse string as an integer",
                "input": input,
            }]}),
            "{query}"
        );
    }
    // Other query parameters are ignored, as FastAPI does.
    let (status, _, body) = get_with(&gw, &a, "?x=1").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("active")));
}

// ------------------------------------------------------------------ hints

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_timeout_header_on_create_and_status() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&Cfg::new(up.addr).timeouts("7s", "11s")).await;
    for _ in 0..2 {
        let r = client()
            .post(gw.url("/session"))
            .send()
            .await
            .expect("POST /session");
        assert_eq!(r.status().as_u16(), 201);
        assert_eq!(header_u64(r.headers(), "x-lab-active-timeout"), Some(7));
        let v: serde_json::Value = r.json().await.expect("json");
        let id = v["session_id"].as_str().expect("id").to_string();
        // ACTIVE (first) and WAITING (second) alike.
        let (status, headers, _) = get_with(&gw, &id, "").await;
        assert_eq!(status, 200);
        assert_eq!(header_u64(&headers, "x-lab-active-timeout"), Some(7));
    }
    // The default config's 300 s.
    let gw2 = Gateway::start(&Cfg::new(up.addr)).await;
    let r = client()
        .post(gw2.url("/session"))
        .send()
        .await
        .expect("POST");
    assert_eq!(header_u64(r.headers(), "x-lab-active-timeout"), Some(300));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_423_carries_its_position_and_a_retry_after() {
    let up = Upstream::start().await;
    // waiting_timeout 20 s: Retry-After is at most half of it.
    let gw = Gateway::start(&Cfg::new(up.addr).timeouts("30s", "20s")).await;
    let (a, _) = create_session(&gw).await;
    let mut waiting = Vec::new();
    for _ in 0..3 {
        waiting.push(create_session(&gw).await);
    }
    // Complete one hold so the estimate has something to go on, then refill the queue.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(delete_session(&gw, &a).await, 204);
    waiting.remove(0);
    waiting.push(create_session(&gw).await);
    for (id, _) in &waiting {
        let (status, body) = get_session(&gw, id).await;
        assert_eq!(status, 200);
        let position = serde_json::from_str::<serde_json::Value>(&body).expect("json")["position"]
            .as_u64()
            .expect("position");
        assert!(position >= 1);
        let (status, headers) = lab_get_with(&gw, "/lab/x", id, &[]).await;
        assert_eq!(status, 423);
        assert_eq!(header_u64(&headers, "x-queue-position"), Some(position));
        let retry = header_u64(&headers, "retry-after").expect("Retry-After");
        assert!((1..=10).contains(&retry), "Retry-After {retry}");
    }
    assert_eq!(up.count(), 0);
}

// ------------------------------------------------------------------ hold limit

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_limit_expires_the_holder_only_while_another_waits() {
    let up = Upstream::start().await;
    let gw = Gateway::start(
        &Cfg::new(up.addr)
            .timeouts("30s", "30s")
            .max_hold("1s")
            .reap_interval("50ms"),
    )
    .await;
    let (a, _) = create_session(&gw).await;
    // Alone, it may hold as long as it likes (it keeps itself alive).
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(lab_get(&gw, "/lab/x", &a).await.0, 200);
    }
    let (status, headers, body) = get_with(&gw, &a, "").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("active")));
    assert_eq!(header_u64(&headers, "x-lab-hold-remaining"), Some(0));
    assert_eq!(
        metric_or_zero(&gw, r#"labgate_sessions_ended_total{reason="expired"}"#).await,
        0.0
    );
    let holds_before = metric_or_zero(&gw, "labgate_hold_seconds_count").await;

    // A second session arrives: the holder is over its limit and is expired.
    let (b, _) = create_session(&gw).await;
    let arrived = Instant::now();
    eventually(Duration::from_secs(5), "holder expired", || async {
        (get_session(&gw, &a).await.0 == 404).then_some(())
    })
    .await;
    println!(
        "holder over max_hold expired within {:?} of a second session arriving (reap interval 50 ms)",
        arrived.elapsed()
    );
    let (status, _, body) = get_with(&gw, &b, "").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("active")));
    assert_eq!(lab_get(&gw, "/lab/y", &b).await.0, 200);
    assert_eq!(lab_get(&gw, "/lab/y", &a).await.0, 404);
    assert_eq!(
        gw.metric(r#"labgate_sessions_ended_total{reason="expired"}"#)
            .await,
        Some(1.0)
    );
    assert_eq!(
        metric_or_zero(&gw, "labgate_hold_seconds_count").await,
        holds_before + 1.0
    );
    // b is alone now: it is not expired, however long it holds.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(get_with(&gw, &b, "").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_remaining_is_on_every_answer_to_the_active_session_only() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&Cfg::new(up.addr).max_hold("10s")).await;
    let (a, _) = create_session(&gw).await;
    let (b, _) = create_session(&gw).await;

    let (status, headers, _) = get_with(&gw, &a, "").await;
    assert_eq!(status, 200);
    let first = header_u64(&headers, "x-lab-hold-remaining").expect("on GET");
    assert!((9..=10).contains(&first), "{first}");
    let (status, headers) = heartbeat_with(&gw, &a).await;
    assert_eq!(status, 204);
    let hb = header_u64(&headers, "x-lab-hold-remaining").expect("on heartbeat");
    assert!(hb <= first, "{hb} > {first}");
    let (status, headers) = lab_get_with(&gw, "/lab/x", &a, &[]).await;
    assert_eq!(status, 200);
    let fwd = header_u64(&headers, "x-lab-hold-remaining").expect("on forwarded answers");
    assert!(fwd <= hb, "{fwd} > {hb}");
    // It counts down.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (_, headers, _) = get_with(&gw, &a, "").await;
    let later = header_u64(&headers, "x-lab-hold-remaining").expect("on GET");
    assert!(later < first, "{later} !< {first}");

    // Never on the WAITING session's answers.
    let (status, headers, _) = get_with(&gw, &b, "").await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "x-lab-hold-remaining"), None);
    let (status, headers) = heartbeat_with(&gw, &b).await;
    assert_eq!(status, 204);
    assert_eq!(header(&headers, "x-lab-hold-remaining"), None);
    let (status, headers) = lab_get_with(&gw, "/lab/x", &b, &[]).await;
    assert_eq!(status, 423);
    assert_eq!(header(&headers, "x-lab-hold-remaining"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_hold_remaining_without_max_hold() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&Cfg::new(up.addr)).await;
    let (a, _) = create_session(&gw).await;
    let (status, headers, _) = get_with(&gw, &a, "").await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "x-lab-hold-remaining"), None);
    let (status, headers) = heartbeat_with(&gw, &a).await;
    assert_eq!(status, 204);
    assert_eq!(header(&headers, "x-lab-hold-remaining"), None);
    let (status, headers) = lab_get_with(&gw, "/lab/x", &a, &[]).await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "x-lab-hold-remaining"), None);
}

// ------------------------------------------------------------------ fencing

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_session_seq_is_replaced() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&Cfg::new(up.addr)).await;
    let (a, _) = create_session(&gw).await;
    assert_eq!(lab_get(&gw, "/lab/plain", &a).await.0, 200);
    let real = up
        .only()
        .header("x-lab-session-seq")
        .expect("seq")
        .to_string();
    up.clear();
    // One forged header, and two (through the raw client, which does not merge them).
    let (status, _) =
        lab_get_with(&gw, "/lab/forged", &a, &[("X-Lab-Session-Seq", "999999")]).await;
    assert_eq!(status, 200);
    let r = raw(
        gw.addr(),
        &format!(
            "GET /lab/forged2 HTTP/1.1\r\nHost: x\r\nX-Session-ID: {a}\r\n\
             x-lab-session-seq: 1\r\nX-LAB-SESSION-SEQ: 424242\r\nConnection: close\r\n\r\n"
        ),
    )
    .await
    .expect("raw");
    assert_eq!(r.status, 200);
    let reqs = up.requests();
    assert_eq!(reqs.len(), 2);
    for rec in reqs {
        assert_eq!(
            rec.all("x-lab-session-seq"),
            vec![real.as_str()],
            "{rec:#?}"
        );
    }
}

// ------------------------------------------------------------------ histograms

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_seconds_counts_completed_holds_only() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&Cfg::new(up.addr)).await;
    let count = || async { metric_or_zero(&gw, "labgate_hold_seconds_count").await };
    let start = count().await;
    let (a, _) = create_session(&gw).await;
    let (b, _) = create_session(&gw).await;
    let (c, _) = create_session(&gw).await;
    assert_eq!(count().await, start, "no hold completed yet");
    // A WAITING session that leaves never held.
    assert_eq!(delete_session(&gw, &c).await, 204);
    assert_eq!(count().await, start);
    assert_eq!(delete_session(&gw, &a).await, 204);
    assert_eq!(count().await, start + 1.0);
    assert_eq!(delete_session(&gw, &b).await, 204);
    assert_eq!(count().await, start + 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_write_seconds_counts_durable_writes_only_with_a_state_path() {
    let up = Upstream::start().await;
    let store = tempfile::tempdir().expect("tempdir");
    let durable = Gateway::start(&Cfg::new(up.addr).state_path(&store.path().join("q.redb"))).await;
    let memory = Gateway::start(&Cfg::new(up.addr)).await;
    for gw in [&durable, &memory] {
        let writes = || async { metric_or_zero(gw, "labgate_state_write_seconds_count").await };
        let start = writes().await;
        let (a, _) = create_session(gw).await;
        let (b, _) = create_session(gw).await;
        assert_eq!(delete_session(gw, &b).await, 204);
        assert_eq!(delete_session(gw, &a).await, 204);
        let grew = writes().await - start;
        if std::ptr::eq(gw, &durable) {
            // Two creates and two deletes, each written before it was answered.
            assert_eq!(grew, 4.0, "durable");
        } else {
            assert_eq!(grew, 0.0, "memory-only");
        }
    }
}

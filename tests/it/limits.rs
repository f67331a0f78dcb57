//! Contract §4: the rate limit and the queue cap on `POST /session`, trusted proxies.

use crate::support::*;

async fn create_from(gw: &Gateway, forwarded_for: Option<&str>) -> RawResponse {
    let xff = forwarded_for
        .map(|f| format!("X-Forwarded-For: {f}\r\n"))
        .unwrap_or_default();
    raw(
        gw.addr(),
        &format!("POST /session HTTP/1.1\r\nHost: x\r\n{xff}Content-Length: 0\r\n\r\n"),
    )
    .await
    .expect("POST /session")
}

fn retry_after(r: &RawResponse) -> u64 {
    let v = r.header("retry-after").expect("Retry-After header");
    v.parse::<u64>()
        .unwrap_or_else(|_| panic!("Retry-After is not whole seconds: {v:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_beyond_the_burst_get_429_with_retry_after() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&Cfg::new(up.addr).rate_limit(3, "60s")).await;
    let name = r#"labgate_session_create_rejected_total{reason="rate_limited"}"#;
    assert_eq!(gw.metric(name).await, Some(0.0));
    for _ in 0..3 {
        assert_eq!(create_from(&gw, None).await.status, 201);
    }
    for n in 1..=2 {
        let r = create_from(&gw, None).await;
        assert_eq!(r.status, 429);
        assert_eq!(
            r.text(),
            concat!(r#"{"detail":"Too many session requests"}"#, "\n")
        );
        assert_eq!(r.header("content-type"), Some("application/json"));
        let secs = retry_after(&r);
        assert!((1..=60).contains(&secs), "Retry-After {secs}");
        assert_eq!(gw.metric(name).await, Some(n as f64));
    }
    assert_eq!(gw.metric("labgate_queue_depth").await, Some(3.0));
    // Only creation is limited: the rest of the API still answers.
    let r = raw(gw.addr(), "GET /active-session HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("raw");
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_beyond_max_sessions_get_503_with_retry_after() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&Cfg::new(up.addr).max_sessions(2)).await;
    let name = r#"labgate_session_create_rejected_total{reason="queue_full"}"#;
    assert_eq!(gw.metric(name).await, Some(0.0));
    let a = create_from(&gw, None).await;
    assert_eq!(a.status, 201);
    assert_eq!(create_from(&gw, None).await.status, 201);
    let r = create_from(&gw, None).await;
    assert_eq!(r.status, 503);
    assert_eq!(
        r.text(),
        concat!(r#"{"detail":"Session queue is full"}"#, "\n")
    );
    assert!(retry_after(&r) >= 1);
    assert_eq!(gw.metric(name).await, Some(1.0));
    assert_eq!(
        gw.metric(r#"labgate_session_create_rejected_total{reason="rate_limited"}"#)
            .await,
        Some(0.0)
    );
    // A slot frees when a session ends.
    let v: serde_json::Value = serde_json::from_slice(&a.body).expect("json");
    let id = v["session_id"].as_str().expect("id");
    assert_eq!(delete_session(&gw, id).await, 204);
    let r = create_from(&gw, None).await;
    assert_eq!(r.status, 201);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&r.body).expect("json")["position"],
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_bucket() {
    let up = Upstream::start().await;
    let gw = Gateway::start(
        &Cfg::new(up.addr)
            .rate_limit(2, "60s")
            .trusted_proxies(&["127.0.0.1"]),
    )
    .await;
    for client in ["10.0.0.1", "10.0.0.2"] {
        for _ in 0..2 {
            assert_eq!(create_from(&gw, Some(client)).await.status, 201, "{client}");
        }
        assert_eq!(create_from(&gw, Some(client)).await.status, 429, "{client}");
    }
    // The right-most untrusted entry is the client: a forged left part does not help.
    assert_eq!(
        create_from(&gw, Some("10.9.9.9, 10.0.0.1")).await.status,
        429
    );
    // The proxy itself (no header) has a bucket of its own too.
    assert_eq!(create_from(&gw, None).await.status, 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_trusted_proxies_x_forwarded_for_is_ignored() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&Cfg::new(up.addr).rate_limit(2, "60s")).await;
    assert_eq!(create_from(&gw, Some("10.0.0.1")).await.status, 201);
    assert_eq!(create_from(&gw, Some("10.0.0.2")).await.status, 201);
    // Same TCP peer: same bucket, whatever the header claims.
    assert_eq!(create_from(&gw, Some("10.0.0.3")).await.status, 429);
    assert_eq!(create_from(&gw, None).await.status, 429);
}

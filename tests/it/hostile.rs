//! Hostile clients (issue 10): each test replays one attack from the adversarial review
//! and checks the gate no longer leaks, through the real binary.

use crate::support::*;

/// A `/lab` request from `id` with extra raw header lines; the upstream's one record.
async fn forwarded_with(gw: &Gateway, up: &Upstream, id: &str, extra: &str) -> Recorded {
    up.clear();
    let r = raw(
        gw.addr(),
        &format!(
            "GET /lab/x HTTP/1.1\r\nHost: x\r\nX-Session-ID: {id}\r\n{extra}Connection: close\r\n\r\n"
        ),
    )
    .await
    .expect("raw");
    assert_eq!(r.status, 200, "{}", r.text());
    up.only()
}

/// Defect 5: CGI/WSGI/Rack/PHP upstreams fold `_` into `-`, so an underscore twin of a
/// managed or injected header would override labgate's value there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn underscore_twins_and_proxy_claims_never_reach_the_upstream() {
    let up = Upstream::start().await;
    let cfg = Cfg::bare().upstream(UpstreamCfg::new("lab", up.addr).header("X-Lab-Key", "s3cret"));
    let gw = Gateway::start(&cfg).await;
    let (a, _) = create_session(&gw).await;
    let seen = forwarded_with(
        &gw,
        &up,
        &a,
        "X_Lab_Session_Seq: 999999\r\nX_Forwarded_For: 6.6.6.6\r\nx_session_id: forged\r\n\
         X_LAB_KEY: forged\r\nX_Forwarded_Proto: https\r\nForwarded: for=6.6.6.6\r\n\
         X-Real-IP: 6.6.6.6\r\nX-Forwarded-Host: evil.example\r\nX_Custom_Thing: kept\r\n",
    )
    .await;
    for (name, _) in &seen.headers {
        let folded = name.replace('_', "-");
        assert!(
            !name.contains('_') || name == "x_custom_thing",
            "{name} reached the upstream: {seen:#?}"
        );
        assert!(
            !["forwarded", "x-real-ip", "x-forwarded-host"].contains(&folded.as_str()),
            "{name} reached the upstream from an untrusted peer: {seen:#?}"
        );
    }
    assert_eq!(seen.all("x_custom_thing"), vec!["kept"]);
    assert_eq!(seen.all("x-lab-key"), vec!["s3cret"]);
    assert_eq!(seen.all("x-forwarded-for"), vec!["127.0.0.1"]);
    let seq = seen.all("x-lab-session-seq");
    assert_eq!(seq.len(), 1, "{seen:#?}");
    assert_ne!(seq[0], "999999");

    // A trusted proxy's own claims pass; its underscore twins still do not.
    let up = Upstream::start().await;
    let gw = Gateway::start(&Cfg::new(up.addr).trusted_proxies(&["127.0.0.1"])).await;
    let (a, _) = create_session(&gw).await;
    let seen = forwarded_with(
        &gw,
        &up,
        &a,
        "Forwarded: for=10.0.0.1\r\nX-Real-IP: 10.0.0.1\r\nX-Forwarded-Host: lab.example\r\n\
         X_Lab_Session_Seq: 999999\r\nX_Forwarded_For: 6.6.6.6\r\n",
    )
    .await;
    assert_eq!(seen.all("forwarded"), vec!["for=10.0.0.1"]);
    assert_eq!(seen.all("x-real-ip"), vec!["10.0.0.1"]);
    assert_eq!(seen.all("x-forwarded-host"), vec!["lab.example"]);
    assert!(seen.header("x_lab_session_seq").is_none(), "{seen:#?}");
    assert!(seen.header("x_forwarded_for").is_none(), "{seen:#?}");
}

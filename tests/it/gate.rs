//! Contract §2: the gate on `/lab` and `/lab/*`, and the path check before it.

use std::time::Duration;

use crate::support::*;

const MISSING_HEADER: &str = concat!(
    r#"{"detail":[{"type":"missing","loc":["header","X-Session-ID"],"msg":"Field required","input":null}]}"#,
    "\n"
);
const NOT_FOUND_SESSION: &str = concat!(r#"{"detail":"Session not found"}"#, "\n");
const INVALID_PATH: &str = concat!(r#"{"detail":"Invalid path"}"#, "\n");
const NOT_FOUND: &str = concat!(r#"{"detail":"Not Found"}"#, "\n");

fn lab_request(target: &str, headers: &str) -> String {
    format!("GET {target} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gate_answers_each_kind_of_caller_as_the_contract_says() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&Cfg::new(up.addr)).await;
    let (a, _) = create_session(&gw).await;
    let (b, _) = create_session(&gw).await;
    let addr = gw.addr();

    // No header: 422, FastAPI's body verbatim.
    let r = raw(addr, &lab_request("/lab/x", "")).await.expect("raw");
    assert_eq!((r.status, r.text().as_str()), (422, MISSING_HEADER));
    assert_eq!(r.header("content-type"), Some("application/json"));

    // Two headers, same or different values: 400 with a JSON detail.
    for headers in [
        format!("X-Session-ID: {a}\r\nX-Session-ID: {a}\r\n"),
        format!("X-Session-ID: {a}\r\nX-Session-ID: {b}\r\n"),
        format!("X-Session-ID: {a}\r\nx-session-id: {a}\r\n"),
        format!("X-Session-ID: \r\nX-Session-ID: {a}\r\n"),
    ] {
        let r = raw(addr, &lab_request("/lab/x", &headers))
            .await
            .expect("raw");
        assert_eq!(r.status, 400, "{headers:?}: {}", r.text());
        let v: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON body");
        assert!(v["detail"].is_string(), "{}", r.text());
    }

    // Empty, malformed, unknown: 404 Session not found.
    let upper = a.to_uppercase();
    let joined = format!("{a}, {a}");
    for id in [
        "",
        "garbage",
        "0b9f7a0e-6f0b-4f7c-9a55-2f7d8b1c0e11",
        upper.as_str(),
        joined.as_str(),
    ] {
        let r = raw(
            addr,
            &lab_request("/lab/x", &format!("X-Session-ID: {id}\r\n")),
        )
        .await
        .expect("raw");
        assert_eq!(
            (r.status, r.text().as_str()),
            (404, NOT_FOUND_SESSION),
            "{id:?}"
        );
    }

    // WAITING: 423.
    let r = raw(
        addr,
        &lab_request("/lab/x", &format!("X-Session-ID: {b}\r\n")),
    )
    .await
    .expect("raw");
    assert_eq!(
        (r.status, r.text().as_str()),
        (423, concat!(r#"{"detail":"Session is not active"}"#, "\n"))
    );
    assert_eq!(up.count(), 0, "nothing refused may reach the upstream");

    // ACTIVE: forwarded, and the upstream's answer comes back as is.
    for (target, status) in [("/lab", 200), ("/lab/x", 200), ("/lab/status/418", 418)] {
        let r = raw(
            addr,
            &lab_request(target, &format!("X-Session-ID: {a}\r\n")),
        )
        .await
        .expect("raw");
        assert_eq!(r.status, status, "{target}: {}", r.text());
        let v: serde_json::Value = serde_json::from_slice(&r.body).expect("upstream JSON");
        assert_eq!(v["upstream"], true);
    }
    let seen: Vec<String> = up.requests().into_iter().map(|r| r.target).collect();
    assert_eq!(seen, vec!["/lab", "/lab/x", "/lab/status/418"]);
}

/// What a hostile request must get: a status and, when labgate answers itself, a body.
#[derive(Clone, Copy, Debug)]
enum Want {
    Invalid,
    NotFound,
    /// Any 400 (the HTTP parser may refuse before labgate sees the request) or a
    /// closed connection without an answer; never a forward.
    Rejected400,
    /// 400 or 404 (either refusal honours the contract).
    Refused,
    Duplicate,
    UnknownSession,
    Missing,
    /// Any 4xx (pingora refuses CONNECT itself with 405).
    Any4xx,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_targets_and_header_tricks_never_reach_the_upstream() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&Cfg::new(up.addr)).await;
    let (a, _) = create_session(&gw).await;
    let addr = gw.addr();

    // Sanity: the session is ACTIVE and a clean request does get through.
    let r = raw(
        addr,
        &lab_request("/lab/ok", &format!("X-Session-ID: {a}\r\n")),
    )
    .await
    .expect("raw");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.count(), 1);
    up.clear();

    let id = format!("X-Session-ID: {a}\r\n");
    let targets: Vec<(&str, Want)> = vec![
        ("/lab/../x", Want::Invalid),
        ("/lab/..", Want::Invalid),
        ("/lab/.", Want::Invalid),
        ("/lab/./x", Want::Invalid),
        ("/lab/x/..", Want::Invalid),
        ("/lab/x/../../session", Want::Invalid),
        ("/lab/%2e%2e/x", Want::Invalid),
        ("/lab/%2E%2E/x", Want::Invalid),
        ("/lab/.%2e/x", Want::Invalid),
        ("/lab/%2e./x", Want::Invalid),
        ("/lab/%2e/x", Want::Invalid),
        ("/lab/%2e%2e", Want::Invalid),
        ("/%2e%2e/lab", Want::Invalid),
        ("/lab/..%2fx", Want::Invalid),
        ("/lab%2fx", Want::Invalid),
        ("/lab%2Fx", Want::Invalid),
        ("/lab/x%2f..%2fy", Want::Invalid),
        ("/lab%5cx", Want::Invalid),
        ("/lab/%5C..%5Cx", Want::Invalid),
        ("/lab/%00", Want::Invalid),
        ("/lab/x%00y", Want::Invalid),
        ("/lab/..;/x", Want::Refused),
        ("/lab/;/../x", Want::Invalid),
        ("/lab/%252e%252e/", Want::Refused),
        ("/lab/%252e%252e/x?q=1", Want::Refused),
        ("/lab\\..\\x", Want::Rejected400),
        ("/lab/x\\y", Want::Rejected400),
        ("//lab/x", Want::Refused),
        ("http://127.0.0.1/lab/x", Want::Rejected400),
        ("HTTP://127.0.0.1/lab/x", Want::Rejected400),
        ("http://127.0.0.1:1/lab/../lab/x", Want::Rejected400),
        ("lab/x", Want::Rejected400),
        ("*", Want::Rejected400),
        ("/lab/x/%2e%2e/%2e%2e/session", Want::Invalid),
        // Issue 10 #13: invalid UTF-8 once decoded (overlong '.' and '/'), Unicode
        // lookalikes of '.' and '/' (fullwidth, encoded or raw), ';' path parameters.
        ("/lab/%c0%ae%c0%ae/x", Want::Invalid),
        ("/lab/%C0%AE%C0%AE/session", Want::Invalid),
        ("/lab/x%c0%af..%c0%afsession", Want::Invalid),
        ("/lab/%ef%bc%8e%ef%bc%8e/x", Want::Invalid),
        ("/lab/r1%ef%bc%8f..%ef%bc%8fsession", Want::Invalid),
        ("/lab/%e2%80%a4%e2%80%a4/x", Want::Invalid),
        ("/lab/\u{ff0e}\u{ff0e}/x", Want::Rejected400),
        ("/lab/r1\u{ff0f}x", Want::Rejected400),
        ("/lab/r2;x/y", Want::Invalid),
        ("/lab/r2%3bx/y", Want::Invalid),
        ("/lab;x/y", Want::Invalid),
        ("/LAB/x", Want::NotFound),
        ("/Lab", Want::NotFound),
        ("/labx", Want::NotFound),
        ("/lab-x/y", Want::NotFound),
        ("/lab.json", Want::NotFound),
        ("/x/lab/y", Want::NotFound),
    ];
    let mut requests: Vec<(String, Vec<u8>, Want)> = targets
        .iter()
        .map(|(t, w)| (t.to_string(), lab_request(t, &id).into_bytes(), *w))
        .collect();
    // Other request forms and header tricks.
    let upper = a.to_uppercase();
    let extra: Vec<(&str, String, Want)> = vec![
        (
            "CONNECT authority-form",
            format!(
                "CONNECT 127.0.0.1:{} HTTP/1.1\r\nHost: 127.0.0.1\r\n{id}\r\n",
                up.addr.port()
            ),
            Want::Any4xx,
        ),
        (
            "duplicate X-Session-ID",
            lab_request("/lab/x", &format!("{id}{id}")),
            Want::Duplicate,
        ),
        (
            "duplicate X-Session-ID, other case",
            lab_request("/lab/x", &format!("{id}x-session-id: {a}\r\n")),
            Want::Duplicate,
        ),
        (
            "comma-joined ids",
            lab_request("/lab/x", &format!("X-Session-ID: {a},{a}\r\n")),
            Want::UnknownSession,
        ),
        (
            "upper-case id",
            lab_request("/lab/x", &format!("X-Session-ID: {upper}\r\n")),
            Want::UnknownSession,
        ),
        (
            "braced id",
            lab_request("/lab/x", &format!("X-Session-ID: {{{a}}}\r\n")),
            Want::UnknownSession,
        ),
        (
            "obs-fold id",
            lab_request("/lab/x", &format!("X-Session-ID:\r\n {a}\r\n")),
            Want::Rejected400,
        ),
        (
            "space before the colon",
            lab_request("/lab/x", &format!("X-Session-ID : {a}\r\n")),
            Want::Rejected400,
        ),
        (
            "id in the query, not the header",
            lab_request(&format!("/lab/x?X-Session-ID={a}"), ""),
            Want::Missing,
        ),
    ];
    for (name, req, want) in extra {
        requests.push((name.to_string(), req.into_bytes(), want));
    }
    assert!(requests.len() >= 30);

    let mut failures = Vec::new();
    for (name, bytes, want) in &requests {
        let got = raw_to(addr, bytes).await;
        let check = |r: &RawResponse| -> bool {
            let text = r.text();
            match want {
                Want::Invalid => r.status == 400 && text == INVALID_PATH,
                Want::NotFound => r.status == 404 && text == NOT_FOUND,
                Want::Rejected400 => r.status == 400,
                Want::Missing => r.status == 422 && text == MISSING_HEADER,
                Want::Any4xx => (400..500).contains(&r.status),
                Want::Refused => {
                    (r.status == 400 && text == INVALID_PATH)
                        || (r.status == 404 && text == NOT_FOUND)
                }
                Want::Duplicate => r.status == 400 && text.starts_with(r#"{"detail":""#),
                Want::UnknownSession => r.status == 404 && text == NOT_FOUND_SESSION,
            }
        };
        match &got {
            Ok(r) if !check(r) => failures.push(format!(
                "{name:?}: wanted {want:?}, got {} {}",
                r.status,
                r.text()
            )),
            // Only a request the HTTP parser refuses may end without an answer.
            Err(e) if !matches!(want, Want::Rejected400 | Want::Any4xx) => {
                failures.push(format!("{name:?}: wanted {want:?}, got no answer ({e})"))
            }
            _ => {}
        }
    }
    let leaked: Vec<String> = up.requests().into_iter().map(|r| r.target).collect();
    assert!(
        failures.is_empty() && leaked.is_empty(),
        "wrong answers:\n{}\nreached the upstream: {leaked:?}",
        failures.join("\n")
    );

    // And the session still works afterwards.
    let r = raw(addr, &lab_request("/lab/ok", &id)).await.expect("raw");
    assert_eq!(r.status, 200);
    assert_eq!(up.only().target, "/lab/ok");
}

/// Issue 10 #13: `/lab/r2;x/y` used to be routed to the `/lab` catch-all (with its
/// upstream's secret) while a Tomcat-style upstream serves it as `/lab/r2/y`. Refused
/// now: neither upstream sees it, and the plain path still routes to `/lab/r2`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_parameter_cannot_steer_a_request_to_another_route() {
    let catch_all = Upstream::start().await;
    let r2 = Upstream::start().await;
    let cfg = Cfg::bare()
        .upstream(
            UpstreamCfg::new("lab", catch_all.addr)
                .routes(&["/lab"])
                .header("X-Lab-Key", "catch-all-secret"),
        )
        .upstream(UpstreamCfg::new("r2", r2.addr).routes(&["/lab/r2"]));
    let gw = Gateway::start(&cfg).await;
    let (a, _) = create_session(&gw).await;
    let id = format!("X-Session-ID: {a}\r\n");
    for target in [
        "/lab/r2;x/y",
        "/lab/r2;/y",
        "/lab/r2%3Bx/y",
        "/lab/r2;jsessionid=1",
    ] {
        let r = raw(gw.addr(), &lab_request(target, &id))
            .await
            .expect("raw");
        assert_eq!(
            (r.status, r.text()),
            (400, INVALID_PATH.to_string()),
            "{target}"
        );
    }
    assert_eq!(
        catch_all.count() + r2.count(),
        0,
        "a path parameter reached an upstream"
    );
    let r = raw(gw.addr(), &lab_request("/lab/r2/y", &id))
        .await
        .expect("raw");
    assert_eq!(r.status, 200);
    assert_eq!(r2.only().target, "/lab/r2/y");
    assert_eq!(catch_all.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_from_a_non_active_session_reaches_the_upstream() {
    let up = Upstream::start().await;
    // Waiting sessions go stale after 1 s; the ACTIVE one keeps its place for long.
    let gw = Gateway::start(&Cfg::new(up.addr).timeouts("60s", "1s")).await;
    let (active, _) = create_session(&gw).await;
    let (reaped, _) = create_session(&gw).await;
    let (deleted, _) = create_session(&gw).await;
    assert_eq!(delete_session(&gw, &deleted).await, 204);
    // Wait (without touching it) until `reaped` is gone.
    eventually(
        Duration::from_secs(10),
        "the waiting session to be reaped",
        || async {
            (gw.metric("labgate_sessions_ended_total{reason=\"stale\"}")
                .await?
                >= 1.0)
                .then_some(())
        },
    )
    .await;
    assert_eq!(get_session(&gw, &reaped).await.0, 404);
    assert_eq!(
        active_session(&gw).await.as_deref(),
        Some(tag(&active).as_str())
    );
    let (waiting, _) = create_session(&gw).await;

    let client = client();
    let methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];
    let paths = [
        "/lab",
        "/lab/",
        "/lab/x",
        "/lab/devices/r1?q=1",
        "/lab/slow/1",
    ];
    let ids = [
        waiting.as_str(),
        reaped.as_str(),
        deleted.as_str(),
        "0b9f7a0e-6f0b-4f7c-9a55-2f7d8b1c0e11",
        "",
        "not-a-session",
    ];
    let mut sent_by_active = 0;
    for (i, method) in methods.iter().enumerate() {
        for path in paths {
            for id in ids {
                // Keep the waiting session fresh so it stays WAITING, not unknown.
                let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
                let r = client
                    .request(m, gw.url(path))
                    .header("X-Session-ID", id)
                    .body("payload")
                    .send()
                    .await
                    .expect("request");
                let status = r.status().as_u16();
                let want = if id == waiting { 423 } else { 404 };
                assert_eq!(status, want, "{method} {path} as {id:?}");
            }
            assert_eq!(heartbeat(&gw, &waiting).await, 204);
            // Interleave the ACTIVE session's own requests.
            let (s, _) = lab_get(&gw, &format!("/lab/mine/{i}"), &active).await;
            assert_eq!(s, 200);
            sent_by_active += 1;
        }
    }
    let seen = up.requests();
    assert_eq!(seen.len(), sent_by_active, "{seen:#?}");
    for r in &seen {
        assert_eq!(r.all("x-session-id"), vec![active.as_str()], "{r:#?}");
        assert!(r.target.starts_with("/lab/mine/"), "{r:#?}");
    }
}

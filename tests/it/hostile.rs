//! Hostile clients (issue 10): each test replays one attack from the adversarial review
//! and checks the gate no longer leaks, through the real binary.

use std::time::Duration;

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

/// Every line of the log that holds `id` whole, in any case, with or without hyphens.
fn lines_with_id(gw: &Gateway, ids: &[&str]) -> Vec<String> {
    gw.log()
        .lines()
        .filter(|line| {
            let lower = line.to_lowercase();
            ids.iter()
                .any(|id| lower.contains(*id) || lower.contains(&id.replace('-', "")))
        })
        .map(str::to_string)
        .collect()
}

/// Defect 8: non-canonical spellings of `/session/{id}` carried the whole id into the
/// access and audit lines (the router decodes `%73`; the log did not).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_canonical_spellings_never_log_a_whole_session_id() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&Cfg::new(up.addr)).await;
    let (a, _) = create_session(&gw).await;
    let (b, _) = create_session(&gw).await;
    let escaped: String = a.chars().map(|c| format!("%{:02x}", c as u32)).collect();
    let requests = [
        (format!("GET //session/{a}"), 400),
        (format!("GET /%73ession/{a}"), 200),
        (format!("GET /session/{escaped}?wait=0"), 200),
        (format!("GET /%73ession/{}", a.to_uppercase()), 404),
        (format!("GET /lab/x?sid={a}"), 200),
        (format!("GET /lab//session/{b}"), 200),
        (format!("GET /%73ession/{b}/x"), 404),
        (format!("DELETE /%73ession/{b}"), 204),
    ];
    for (line, status) in &requests {
        let r = raw(
            gw.addr(),
            &format!(
                "{line} HTTP/1.1\r\nHost: x\r\nX-Session-ID: {a}\r\nConnection: close\r\n\r\n"
            ),
        )
        .await
        .expect("raw");
        assert_eq!(r.status, *status, "{line}: {}", r.text());
    }
    // Every request has its access line before the log is read.
    eventually(Duration::from_secs(5), "the access lines", || async {
        (gw.log_target("labgate::access").len() >= requests.len() + 2).then_some(())
    })
    .await;
    let leaks = lines_with_id(&gw, &[&a, &b]);
    assert!(
        leaks.is_empty(),
        "{} log line(s) hold a whole session id:\n{}",
        leaks.len(),
        leaks.join("\n")
    );
}

/// Defect 9: a refused `/lab` request logged its whole path (up to ~64 KB), so log
/// volume grew one to one with an attacker's traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_refused_request_logs_under_a_kilobyte() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&Cfg::new(up.addr)).await;
    let (a, _) = create_session(&gw).await;
    let (b, _) = create_session(&gw).await;
    let long = format!("/lab/{}", "x".repeat(60 * 1024));
    for (who, header) in [
        ("waiting", format!("X-Session-ID: {b}\r\n")),
        ("missing", String::new()),
    ] {
        let before = gw.log().len();
        let r = raw(
            gw.addr(),
            &format!("GET {long} HTTP/1.1\r\nHost: x\r\n{header}Connection: close\r\n\r\n"),
        )
        .await
        .expect("raw");
        assert!(matches!(r.status, 422 | 423), "{who}: {}", r.status);
        // The lines about this request: its audit and access lines, once both are whole.
        let lines = eventually(
            Duration::from_secs(5),
            "the audit and access lines",
            || async {
                let log = gw.log();
                let lines: Vec<String> = log
                    .get(before..)
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| l.contains("/lab/xxxx"))
                    .filter(|l| serde_json::from_str::<serde_json::Value>(l).is_ok())
                    .map(str::to_string)
                    .collect();
                (lines.len() >= 2).then_some(lines)
            },
        )
        .await;
        let logged: usize = lines.iter().map(|l| l.len() + 1).sum();
        assert!(
            lines.iter().any(|l| l.contains("gate_denied")),
            "{who}: {lines:?}"
        );
        assert!(
            lines.iter().any(|l| l.contains("labgate::access")),
            "{who}: {lines:?}"
        );
        assert!(
            logged < 1024,
            "{who}: a 60 KB refused request logged {logged} bytes:\n{}",
            lines.join("\n")
        );
    }
    drop(a);
}

/// `GET /active-session`: (status, body).
async fn get_active(gw: &Gateway) -> (u16, String) {
    let r = raw(
        gw.addr(),
        "GET /active-session HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await
    .expect("GET /active-session");
    (r.status, r.text())
}

/// Defect 1: `GET /active-session` handed the holder's id (its credential) to anybody;
/// a waiting client used it to get through the gate or to delete the holder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_client_cannot_learn_the_holders_id() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&Cfg::new(up.addr)).await;
    let (a, _) = create_session(&gw).await;
    let (b, _) = create_session(&gw).await;
    let (status, body) = get_active(&gw).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        format!(
            concat!(
                r#"{{"status":"active","position":0,"session_tag":"{}"}}"#,
                "\n"
            ),
            tag(&a)
        )
    );
    assert!(
        !body.contains(&a) && !body.contains(&a.replace('-', "")),
        "{body}"
    );
    // What the waiting client learnt is no credential.
    let (status, _) = lab_get(&gw, "/lab/x", &tag(&a)).await;
    assert_eq!(status, 404);
    assert_eq!(delete_session(&gw, &tag(&a)).await, 404);
    assert_eq!(up.count(), 0);
    assert_eq!(get_session(&gw, &a).await.0, 200);

    // Every DELETE is audited with the caller's address, whatever came of it.
    assert_eq!(delete_session(&gw, &b).await, 204);
    let deletes = eventually(Duration::from_secs(5), "two delete audits", || async {
        let e = gw.audit_events("session_delete");
        (e.len() >= 2).then_some(e)
    })
    .await;
    let outcomes: Vec<&str> = deletes
        .iter()
        .filter_map(|e| e["outcome"].as_str())
        .collect();
    assert_eq!(outcomes, vec!["unknown", "ended"], "{deletes:#?}");
    for e in &deletes {
        assert_eq!(e["client"], "127.0.0.1", "{e}");
    }
    assert_eq!(deletes[1]["session"], tag(&b));

    // `labgate check` passes the default without a word.
    let out = run_bounded(
        std::process::Command::new(env!("CARGO_BIN_EXE_labgate"))
            .arg("check")
            .arg("--config")
            .arg(&gw.config_path),
        Duration::from_secs(20),
    );
    assert!(out.status.success());
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The compatibility option gives neops-remote-lab's exact answer, and `labgate check`
/// warns about it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_full_id_only_behind_the_compat_option_which_check_warns_about() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&Cfg::new(up.addr).compat_active_session_id(true)).await;
    let (a, _) = create_session(&gw).await;
    assert_eq!(
        get_active(&gw).await,
        (
            200,
            format!(r#"{{"status":"active","position":0,"session_id":"{a}"}}"#) + "\n"
        )
    );
    let out = run_bounded(
        std::process::Command::new(env!("CARGO_BIN_EXE_labgate"))
            .arg("check")
            .arg("--config")
            .arg(&gw.config_path),
        Duration::from_secs(20),
    );
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning") && stderr.contains("active_session_id"),
        "{stderr}"
    );
}

/// `POST /session` from `client` through a trusted proxy (labgate at 127.0.0.1 trusts
/// 127.0.0.1, so `X-Forwarded-For` names the client): the status.
async fn create_as(gw: &Gateway, client: &str) -> (u16, String) {
    let r = raw(
        gw.addr(),
        &format!(
            "POST /session HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {client}\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n"
        ),
    )
    .await
    .expect("POST /session");
    (r.status, r.text())
}

/// Defect 4: one address filled the whole queue (the cap was global only), and every
/// IPv6 address of one host counted as another client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_cannot_fill_the_queue() {
    let up = Upstream::start().await;
    let cfg = Cfg::new(up.addr)
        .trusted_proxies(&["127.0.0.1"])
        .max_sessions(50)
        // labgate's own default (10).
        .max_sessions_per_client(None);
    let gw = Gateway::start(&cfg).await;
    let mut first = None;
    for i in 1..=10 {
        let (status, body) = create_as(&gw, &format!("2001:db8:1:2::{i:x}")).await;
        assert_eq!(status, 201, "{i}: {body}");
        first.get_or_insert(body);
    }
    // Any address of the same /64 is the same client.
    let (status, body) = create_as(&gw, "2001:db8:1:2:ffff:ffff:ffff:ffff").await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(
        body,
        concat!(
            r#"{"detail":"Too many live sessions from this client: end one (DELETE /session/{id}) first"}"#,
            "\n"
        )
    );
    // Everybody else still gets in.
    assert_eq!(create_as(&gw, "2001:db8:1:3::1").await.0, 201);
    assert_eq!(create_as(&gw, "203.0.113.7").await.0, 201);
    assert_eq!(
        gw.metric(r#"labgate_session_create_rejected_total{reason="client_limit"}"#)
            .await,
        Some(1.0)
    );
    // Ending one of its sessions makes room for one more.
    let v: serde_json::Value = serde_json::from_str(&first.unwrap()).expect("json");
    let id = v["session_id"].as_str().expect("id");
    assert_eq!(delete_session(&gw, id).await, 204);
    assert_eq!(create_as(&gw, "2001:db8:1:2::99").await.0, 201);
    assert_eq!(create_as(&gw, "2001:db8:1:2::9a").await.0, 429);
}

/// Defect 4, the rate limit: a /64 is one bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv6_64_shares_one_rate_limit() {
    let up = Upstream::start().await;
    let cfg = Cfg::new(up.addr)
        .trusted_proxies(&["127.0.0.1"])
        .rate_limit(3, "60s");
    let gw = Gateway::start(&cfg).await;
    for i in 1..=3 {
        assert_eq!(create_as(&gw, &format!("2001:db8:7::{i}")).await.0, 201);
    }
    let (status, body) = create_as(&gw, "2001:db8:7::ffff").await;
    assert_eq!(
        (status, body.as_str()),
        (
            429,
            concat!(r#"{"detail":"Too many session requests"}"#, "\n")
        )
    );
    assert_eq!(create_as(&gw, "2001:db8:8::1").await.0, 201);
}

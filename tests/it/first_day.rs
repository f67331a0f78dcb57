//! Issue 15's server side against the real binary: the holder's long-poll
//! (`?wait=N&while=active`), tombstones (`X-Lab-Session-Ended`, `X-Lab-End-Note`) on
//! every endpoint that names an ended session, `X-Lab-Session-Tag` on `GET`, `503`
//! during the SIGTERM drain, a short drain `Retry-After`, and `X-Lab-Gate`.

use std::time::{Duration, Instant};

use crate::support::*;

fn h<'a>(r: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kicked_holder_learns_at_once_and_why_on_every_endpoint() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&Cfg::new(up.addr).admin_socket("admin.sock")).await;
    let (a, _) = create_session(&gw).await;
    let (b, _) = create_session(&gw).await;

    // A live session's GET carries its public tag; labgate marks its own answers.
    let r = client()
        .get(gw.url(&format!("/session/{a}")))
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(h(&r, "x-lab-session-tag"), Some(tag(&a).as_str()));
    assert_eq!(h(&r, "x-lab-gate"), Some("local"));

    // A WAITING session's while=active poll answers at once: it is not ACTIVE.
    let started = Instant::now();
    let r = client()
        .get(gw.url(&format!("/session/{b}?wait=30&while=active")))
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status().as_u16(), 200);
    assert!(started.elapsed() < Duration::from_secs(10));
    let body: serde_json::Value = r.json().await.expect("json");
    assert_eq!(body["status"], "waiting");

    // The holder watches itself; an operator kicks it meanwhile.
    let url = gw.url(&format!("/session/{a}?wait=60&while=active"));
    let watch = tokio::spawn(async move {
        let r = client()
            .get(url)
            .timeout(Duration::from_secs(90))
            .send()
            .await
            .expect("long-poll");
        let ended = h(&r, "x-lab-session-ended").map(str::to_string);
        let note = h(&r, "x-lab-end-note").map(str::to_string);
        (
            r.status().as_u16(),
            ended,
            note,
            r.text().await.unwrap_or_default(),
            Instant::now(),
        )
    });
    // Let the poll start waiting before the kick (it answers either way: gone is 404).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let out = gw.admin(&["kick", &a, "--reason", "firmware\nupdate"]);
    assert!(out.status.success(), "{out:?}");
    let kicked = Instant::now();
    let (status, ended, note, body, answered) =
        tokio::time::timeout(Duration::from_secs(10), watch)
            .await
            .expect("the long-poll answered after the kick")
            .expect("join");
    assert_eq!(status, 404);
    assert_eq!(
        body,
        concat!(r#"{"detail":"Session not found"}"#, "\n"),
        "neops body unchanged"
    );
    assert_eq!(ended.as_deref(), Some("kicked"));
    assert_eq!(note.as_deref(), Some("firmware update"));
    assert!(
        answered.saturating_duration_since(kicked) < Duration::from_secs(5),
        "the holder heard of the kick late"
    );

    // The same story on GET, heartbeat, DELETE and /lab.
    let get = client()
        .get(gw.url(&format!("/session/{a}")))
        .send()
        .await
        .expect("GET");
    let hb = client()
        .post(gw.url("/session/heartbeat"))
        .header("X-Session-ID", &a)
        .send()
        .await
        .expect("heartbeat");
    let lab = client()
        .get(gw.url("/lab/x"))
        .header("X-Session-ID", &a)
        .send()
        .await
        .expect("lab");
    let del = client()
        .delete(gw.url(&format!("/session/{a}")))
        .send()
        .await
        .expect("DELETE");
    for (what, r) in [
        ("get", &get),
        ("heartbeat", &hb),
        ("lab", &lab),
        ("delete", &del),
    ] {
        assert_eq!(r.status().as_u16(), 404, "{what}");
        assert_eq!(h(r, "x-lab-session-ended"), Some("kicked"), "{what}");
        assert_eq!(h(r, "x-lab-end-note"), Some("firmware update"), "{what}");
    }
    assert_eq!(h(&lab, "x-lab-gate"), Some("unknown"));
    assert_eq!(up.count(), 0, "nothing reached the lab");

    // b took over; its own DELETE leaves a `deleted` tombstone. Unknown ids have none.
    assert_eq!(delete_session(&gw, &b).await, 204);
    let r = client()
        .get(gw.url(&format!("/session/{b}")))
        .send()
        .await
        .expect("GET");
    assert_eq!(h(&r, "x-lab-session-ended"), Some("deleted"));
    let never = "0b9f7a0e-6f0b-4f7c-9a55-2f7d8b1c0e11";
    let r = client()
        .get(gw.url(&format!("/session/{never}")))
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status().as_u16(), 404);
    assert_eq!(h(&r, "x-lab-session-ended"), None);
    // A 404 from the lab itself is not marked as the gate's.
    let (c, _) = create_session(&gw).await;
    let r = client()
        .get(gw.url("/lab/status/404"))
        .header("X-Session-ID", &c)
        .send()
        .await
        .expect("lab");
    assert_eq!(h(&r, "x-lab-gate"), None, "{:?}", r.status());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_active_keeps_plain_wait_semantics_for_a_holder_that_stays() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&Cfg::new(up.addr)).await;
    let (a, _) = create_session(&gw).await;
    let started = Instant::now();
    let r = client()
        .get(gw.url(&format!("/session/{a}?wait=1&while=active")))
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status().as_u16(), 200);
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "answered before wait"
    );
    // A holder's plain wait answers at once (§7 unchanged).
    let started = Instant::now();
    let r = client()
        .get(gw.url(&format!("/session/{a}?wait=30")))
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status().as_u16(), 200);
    assert!(started.elapsed() < Duration::from_secs(10));
    let r = client()
        .get(gw.url(&format!("/session/{a}?wait=1&while=soon")))
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status().as_u16(), 422);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_session_during_the_sigterm_drain_is_503_with_retry_after() {
    let up = Upstream::start().await;
    let mut gw = Gateway::start(&Cfg::new(up.addr).grace_period("10s")).await;
    let (a, _) = create_session(&gw).await;
    let url = gw.url("/lab/slow/3000");
    let slow = tokio::spawn(async move {
        client()
            .get(url)
            .header("X-Session-ID", a)
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    eventually(
        Duration::from_secs(5),
        "the slow request upstream",
        || async { (up.count() == 1).then_some(()) },
    )
    .await;
    gw.signal(Signal::SIGTERM);
    let r = eventually(Duration::from_secs(3), "a 503 while draining", || async {
        let r = client().post(gw.url("/session")).send().await.ok()?;
        (r.status().as_u16() == 503).then_some(r)
    })
    .await;
    let retry: u64 = h(&r, "retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!((1..=10).contains(&retry), "{retry}");
    assert_eq!(
        r.text().await.unwrap_or_default(),
        concat!(r#"{"detail":"Lab gate is shutting down"}"#, "\n")
    );
    gw.wait_exit(Duration::from_secs(15)).await.expect("exit");
    let _ = slow.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_asks_clients_back_within_seconds() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&Cfg::new(up.addr).admin_socket("admin.sock")).await;
    assert!(gw.admin(&["drain"]).status.success());
    let r = client()
        .post(gw.url("/session"))
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status().as_u16(), 503);
    let retry: u64 = h(&r, "retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!(retry <= 5, "a resume would go unnoticed for {retry} s");
    assert!(gw.admin(&["resume"]).status.success());
    let r = client()
        .post(gw.url("/session"))
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status().as_u16(), 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_public_name_logs_admin_kick_and_status_page() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&Cfg::new(up.addr).admin_socket("admin.sock")).await;
    let (a, _) = create_session(&gw).await;
    let (b, _) = create_session(&gw).await;
    let (ta, tb) = (tag(&a), tag(&b));
    // The admin queue names each session by the same tag.
    let out = gw.admin(&["--json", "queue"]);
    assert!(out.status.success(), "{out:?}");
    let listing: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(listing["sessions"][0]["tag"], ta.as_str());
    assert_eq!(listing["sessions"][1]["tag"], tb.as_str());
    // The status page marks the viewer's row.
    let page = client()
        .get(gw.url(&format!("/status?tag={tb}")))
        .send()
        .await
        .expect("status")
        .text()
        .await
        .unwrap_or_default();
    assert!(
        page.contains(&format!("<code>{tb}</code> <strong>&larr; you</strong>")),
        "{page}"
    );
    assert_eq!(page.matches("&larr; you").count(), 1);
    // Kick by a 4-digit prefix of the tag (unambiguous with two sessions, unless the
    // tags happen to share it: then by the whole tag).
    let name = if ta[..4] == tb[..4] {
        ta.clone()
    } else {
        ta[..4].to_string()
    };
    let out = gw.admin(&["--json", "kick", &name, "--reason", "test"]);
    assert!(out.status.success(), "{out:?}");
    let kicked: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(kicked["tag"], ta.as_str());
    // Logs and audit name it by the tag, never by the id.
    let ended = gw.audit_events("session_ended");
    assert!(
        ended.iter().any(|e| e["session"] == ta.as_str()),
        "{ended:#?}"
    );
    assert!(!gw.log().contains(&a[..8]), "the id prefix was logged");
    // Too short, or unknown: 404, nothing kicked.
    let out = gw.admin(&["kick", &tb[..3], "--reason", "test"]);
    assert!(!out.status.success());
    let out = gw.admin(&["kick", "ffffffff", "--reason", "test"]);
    assert!(!out.status.success() || tb == "ffffffff");
    assert_eq!(get_session(&gw, &b).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn estimates_come_from_completed_holds_and_each_waiter_gets_an_eta() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&Cfg::new(up.addr).admin_socket("admin.sock")).await;
    let (a, _) = create_session(&gw).await;
    let (b, _) = create_session(&gw).await;
    let (c, _) = create_session(&gw).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(delete_session(&gw, &a).await, 204); // a completed hold of ~1 s
    assert!(gw.admin(&["kick", &b, "--reason", "x"]).status.success()); // not a sample
    let (d, _) = create_session(&gw).await;
    let (e, _) = create_session(&gw).await;
    let status: serde_json::Value = client()
        .get(gw.url("/status.json"))
        .send()
        .await
        .expect("status.json")
        .json()
        .await
        .expect("json");
    // One completed hold; two real waits (b after a, c after b); a's instant
    // promotion at creation is not a wait.
    assert_eq!(status["hold_samples"], 1, "{status}");
    assert_eq!(status["wait_samples"], 2, "{status}");
    let hold = status["typical_hold_secs"].as_f64().expect("typical hold");
    assert!(hold >= 1.0, "{status}");
    let queue = status["queue"].as_array().expect("queue");
    assert!(queue[0].get("expected_start_secs").is_none(), "{status}");
    let eta_d = queue[1]["expected_start_secs"].as_f64().expect("d's eta");
    let eta_e = queue[2]["expected_start_secs"].as_f64().expect("e's eta");
    assert!(eta_e >= eta_d + hold - 0.01, "{status}");
    let page = client()
        .get(gw.url("/status"))
        .send()
        .await
        .expect("status")
        .text()
        .await
        .unwrap_or_default();
    assert!(page.contains(", position 2</td>"), "{page}");
    assert!(page.contains("(from the last completed hold)"), "{page}");
    // A 423 says when to expect the lab.
    let r = client()
        .get(gw.url("/lab/x"))
        .header("X-Session-ID", &e)
        .send()
        .await
        .expect("lab");
    assert_eq!(r.status().as_u16(), 423);
    assert_eq!(h(&r, "x-queue-position"), Some("2"));
    let eta: u64 = h(&r, "x-lab-expected-start")
        .and_then(|v| v.parse().ok())
        .expect("X-Lab-Expected-Start");
    assert!(eta >= 1, "{eta}");
    let _ = (c, d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_state_directory_stops_start_up_and_is_not_created() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("not-there");
    let cfg = Cfg::new(up.addr).state_path(&missing.join("q.redb"));
    let (status, stderr) = Gateway::start_expecting_exit(&cfg, Duration::from_secs(20)).await;
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("does not exist"), "{stderr}");
    assert!(!missing.exists(), "serve created the state directory");
    // `labgate check` says the same before anything runs.
    let file = dir.path().join("labgate.toml");
    std::fs::write(&file, cfg.render(dir.path(), free_port(), free_port())).expect("write");
    let out = run_bounded(
        std::process::Command::new(env!("CARGO_BIN_EXE_labgate"))
            .arg("check")
            .arg("--config")
            .arg(&file),
        Duration::from_secs(20),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("state_path") && err.contains("does not exist"),
        "{err}"
    );
}

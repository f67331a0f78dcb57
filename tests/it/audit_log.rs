//! The audit trail and the access log (issue 4, item 4), read back from labgate's JSON
//! log: one `labgate::audit` event per session change, admin action and gate denial,
//! with the fields an auditor needs; the id-probing warning, once per window; and access
//! lines that carry the request's facts but never a whole session id.

use std::time::Duration;

use crate::support::*;
use serde_json::Value;

const AUDIT: &str = "labgate::audit";
const ACCESS: &str = "labgate::access";

/// The one event named `event` about `session` (which logs name by the id's first 8
/// characters only), with everything else about it printed on failure.
fn one_about(gw: &Gateway, event: &str, session: &str) -> Value {
    let all = gw.audit_events(event);
    let mine: Vec<&Value> = all
        .iter()
        .filter(|e| e["session"] == tag(session))
        .collect();
    assert_eq!(mine.len(), 1, "{event} for {session}: {all:#?}");
    mine[0].clone()
}

fn uid() -> u32 {
    euid()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_session_change_admin_action_and_gate_denial_is_audited() {
    let up = Upstream::start().await;
    let gw = Gateway::start(
        &Cfg::new(up.addr)
            .admin_socket("admin.sock")
            .timeouts("2s", "60s"),
    )
    .await;
    let (a, _) = create_session(&gw).await;
    let (b, _) = create_session(&gw).await;
    let (c, _) = create_session(&gw).await;

    for (i, id) in [&a, &b, &c].into_iter().enumerate() {
        let e = one_about(&gw, "session_created", id);
        assert_eq!(e["target"], AUDIT);
        assert_eq!(e["level"], "INFO");
        assert_eq!(e["client"], "127.0.0.1", "{e}");
        assert_eq!(e["position"], i, "{e}");
    }
    let e = one_about(&gw, "session_promoted", &a);
    assert_eq!(e["waited_secs"], 0.0, "{e}");
    // The fencing counter starts at the wall clock in ms (issue 10 #12), not at 1.
    assert!(
        e["seq"].as_u64().is_some_and(|s| s > 1_700_000_000_000),
        "{e}"
    );

    // Gate denials: (decision, raw request, status).
    let unknown = "0b9f7a0e-6f0b-4f7c-9a55-2f7d8b1c0e11";
    let denials: Vec<(&str, String, &str, u16)> = vec![
        (
            "missing",
            "GET /lab/m HTTP/1.1\r\nHost: x\r\n".into(),
            "/lab/m",
            422,
        ),
        (
            "unknown",
            format!("GET /lab/u HTTP/1.1\r\nHost: x\r\nX-Session-ID: {unknown}\r\n"),
            "/lab/u",
            404,
        ),
        (
            "waiting",
            format!("GET /lab/w?q=1 HTTP/1.1\r\nHost: x\r\nX-Session-ID: {b}\r\n"),
            "/lab/w",
            423,
        ),
        (
            "invalid",
            format!("GET /lab/d HTTP/1.1\r\nHost: x\r\nX-Session-ID: {a}\r\nX-Session-ID: {a}\r\n"),
            "/lab/d",
            400,
        ),
        (
            "invalid",
            "GET /lab/%2e%2e/secret HTTP/1.1\r\nHost: x\r\n".into(),
            "/lab/%2e%2e/secret",
            400,
        ),
        (
            "invalid",
            "GET /session/x%2Fy HTTP/1.1\r\nHost: x\r\n".into(),
            "/session/x%2Fy",
            400,
        ),
    ];
    for (decision, head, _, status) in &denials {
        let r = raw(gw.addr(), &format!("{head}Connection: close\r\n\r\n"))
            .await
            .expect("request");
        assert_eq!(r.status, *status, "{decision}: {}", r.text());
    }
    assert_eq!(up.count(), 0, "a denied request was forwarded");
    let denied = gw.audit_events("gate_denied");
    assert_eq!(denied.len(), denials.len(), "{denied:#?}");
    for (e, (decision, _, path, _)) in denied.iter().zip(&denials) {
        assert_eq!(e["decision"], *decision, "{e}");
        assert_eq!(e["client"], "127.0.0.1", "{e}");
        assert_eq!(e["path"], *path, "{e}");
        assert_eq!(e["target"], AUDIT);
    }

    // Deleted: the holder ends, the next is promoted.
    assert_eq!(delete_session(&gw, &a).await, 204);
    let e = one_about(&gw, "session_ended", &a);
    assert_eq!(e["reason"], "deleted", "{e}");
    assert_eq!(e["was_active"], true, "{e}");
    assert!(e["held_secs"].as_f64().is_some_and(|h| h >= 0.0), "{e}");
    let e = one_about(&gw, "session_promoted", &b);
    assert!(e["waited_secs"].as_f64().is_some_and(|w| w > 0.0), "{e}");

    // Kicked: by whom and why.
    let out = gw.admin(&["kick", &b, "--reason", "maintenance window"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let e = one_about(&gw, "session_kicked", &b);
    assert_eq!(e["uid"], uid(), "{e}");
    assert_eq!(e["reason"], "maintenance window", "{e}");
    assert_eq!(e["level"], "WARN", "{e}");
    assert_eq!(one_about(&gw, "session_ended", &b)["reason"], "kicked");
    one_about(&gw, "session_promoted", &c);

    // Drain and resume: who, and what it was before.
    for action in ["drain", "resume"] {
        let out = gw.admin(&[action]);
        assert!(out.status.success(), "{action}");
    }
    let drains = gw.audit_events("admin_drain");
    assert_eq!(drains.len(), 2, "{drains:#?}");
    for (e, (draining, was)) in drains.iter().zip([(true, false), (false, true)]) {
        assert_eq!(e["uid"], uid(), "{e}");
        assert_eq!(e["draining"], draining, "{e}");
        assert_eq!(e["was_draining"], was, "{e}");
    }

    // Stale: c, now holding, stays silent past active_timeout (2 s).
    let e = eventually(Duration::from_secs(10), "c reaped as stale", || async {
        gw.audit_events("session_ended")
            .into_iter()
            .find(|e| e["session"] == tag(&c))
    })
    .await;
    assert_eq!(e["reason"], "stale", "{e}");
    assert_eq!(e["was_active"], true, "{e}");

    // One event per change, nothing twice.
    assert_eq!(gw.audit_events("session_created").len(), 3);
    assert_eq!(gw.audit_events("session_promoted").len(), 3);
    assert_eq!(gw.audit_events("session_ended").len(), 3);
    assert_eq!(gw.audit_events("session_kicked").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_probing_unknown_ids_is_warned_about_once_per_window() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&Cfg::new(up.addr)).await;
    let probes = |gw: &Gateway| gw.audit_events("unknown_id_probing");
    // Every way of naming a session counts: the gate, status, delete, heartbeat.
    let mut sent = 0;
    for round in 0..25 {
        let id = format!("0b9f7a0e-6f0b-4f7c-9a55-{:012x}", round);
        let code = match round % 4 {
            0 => lab_get(&gw, "/lab/x", &id).await.0,
            1 => get_session(&gw, &id).await.0,
            2 => delete_session(&gw, &id).await,
            _ => heartbeat(&gw, &id).await,
        };
        assert_eq!(code, 404, "round {round}");
        sent += 1;
        if sent < 20 {
            assert!(
                probes(&gw).is_empty(),
                "warned after only {sent} unknown ids"
            );
        }
    }
    let warned = probes(&gw);
    assert_eq!(warned.len(), 1, "{warned:#?}");
    let e = &warned[0];
    assert_eq!(e["target"], AUDIT);
    assert_eq!(e["level"], "WARN");
    assert_eq!(e["client"], "127.0.0.1", "{e}");
    assert_eq!(e["unknown_ids"], 20, "{e}");
    assert_eq!(e["window_secs"], 60, "{e}");

    // Another client address has its own count.
    let other = reqwest::Client::builder()
        .no_proxy()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    for round in 0..5 {
        let r = other
            .get(gw.url(&format!("/session/1b9f7a0e-6f0b-4f7c-9a55-{round:012x}")))
            .send()
            .await
            .expect("request from 127.0.0.2");
        assert_eq!(r.status().as_u16(), 404);
    }
    assert_eq!(probes(&gw).len(), 1);
}

/// Creates a (holder) and b (waiting), and sends one request of each kind a client
/// makes, naming them; returns the two ids once every access line is written.
async fn client_traffic(gw: &Gateway) -> (String, String, Vec<Value>) {
    let (a, _) = create_session(gw).await;
    let (b, _) = create_session(gw).await;
    assert_eq!(lab_get(gw, "/lab/forwarded?x=1", &a).await.0, 200);
    assert_eq!(lab_get(gw, "/lab/refused", &b).await.0, 423);
    assert_eq!(get_session(gw, &a).await.0, 200);
    assert_eq!(heartbeat(gw, &b).await, 204);
    assert_eq!(delete_session(gw, &b).await, 204);
    assert_eq!(delete_session(gw, &a).await, 204);
    // The access line is written once the answer is out: wait for all eight.
    let lines = eventually(Duration::from_secs(5), "the access lines", || async {
        let lines: Vec<Value> = gw
            .log_target(ACCESS)
            .into_iter()
            .filter(|l| l["path"] != "/healthz")
            .collect();
        (lines.len() >= 8).then_some(lines)
    })
    .await;
    assert_eq!(lines.len(), 8, "{lines:#?}");
    (a, b, lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_lines_carry_method_path_client_session_decision_status_upstream_and_duration() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&Cfg::new(up.addr)).await;
    let (a, b, lines) = client_traffic(&gw).await;
    let find = |method: &str, path: &str| -> Value {
        lines
            .iter()
            .find(|l| l["method"] == method && l["path"] == path)
            .unwrap_or_else(|| panic!("no access line for {method} {path}: {lines:#?}"))
            .clone()
    };
    for l in &lines {
        for key in [
            "method",
            "path",
            "client",
            "session",
            "decision",
            "status",
            "upstream",
            "duration_ms",
        ] {
            assert!(l.get(key).is_some(), "no {key} in {l}");
        }
        assert!(l["duration_ms"].is_u64(), "{l}");
        assert_eq!(l["client"], "127.0.0.1", "{l}");
        assert_eq!(l["level"], "INFO", "{l}");
    }
    let fwd = find("GET", "/lab/forwarded?x=1");
    assert_eq!(fwd["session"], tag(&a), "{fwd}");
    assert_eq!(fwd["decision"], "allowed", "{fwd}");
    assert_eq!(fwd["status"], 200, "{fwd}");
    assert_eq!(fwd["upstream"], "lab", "{fwd}");
    let refused = find("GET", "/lab/refused");
    assert_eq!(refused["session"], tag(&b), "{refused}");
    assert_eq!(refused["decision"], "waiting", "{refused}");
    assert_eq!(refused["status"], 423, "{refused}");
    assert_eq!(refused["upstream"], "-", "{refused}");
    let created: Vec<&Value> = lines.iter().filter(|l| l["path"] == "/session").collect();
    assert_eq!(created.len(), 2, "{lines:#?}");
    for c in created {
        assert_eq!(c["method"], "POST");
        assert_eq!(c["status"], 201, "{c}");
        assert_eq!(c["session"], "-", "{c}");
    }
    let heartbeat = find("POST", "/session/heartbeat");
    assert_eq!(heartbeat["status"], 204, "{heartbeat}");
}

/// The id is the gate credential: no log line (access or audit) may hold it whole, in
/// any spelling, whichever way the request carried it (the `X-Session-ID` header, the
/// path of `GET`/`DELETE /session/{id}`, a refused path) or whatever was done to it
/// (kicked). At most the 8-character prefix, as in the `session` fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_log_line_holds_a_whole_session_id() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&Cfg::new(up.addr).admin_socket("admin.sock")).await;
    let (a, b, _) = client_traffic(&gw).await;
    let (c, _) = create_session(&gw).await;
    let r = raw(
        gw.addr(),
        &format!("GET /session/{c}/%2e%2e HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    )
    .await
    .expect("request");
    assert_eq!(r.status, 400);
    let out = gw.admin(&["kick", &c, "--reason", "test"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events = eventually(
        Duration::from_secs(5),
        "the kick and its access line",
        || async {
            let kicked = !gw.audit_events("session_kicked").is_empty();
            let logged = gw.log_target(ACCESS).iter().any(|l| l["status"] == 400);
            (kicked && logged).then(|| gw.log())
        },
    )
    .await;
    let leaks: Vec<&str> = events
        .lines()
        .filter(|line| {
            let lower = line.to_lowercase();
            [&a, &b, &c]
                .iter()
                .any(|id| lower.contains(id.as_str()) || lower.contains(&id.replace('-', "")))
        })
        .collect();
    assert!(
        leaks.is_empty(),
        "{} log line(s) hold a whole session id:\n{}",
        leaks.len(),
        leaks.join("\n")
    );
}

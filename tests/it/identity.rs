//! Identity mode (issue 14): labgate's TLS listener, `mtls` and `header` identity
//! sources, sessions bound to the identity that opened them, the per-identity cap and
//! rate limit, and what the upstream, the audit log and the status page are told.
//!
//! Certificates are made by the test (rcgen); clients are the real `curl`.

use std::net::SocketAddr;
use std::path::Path;

use crate::support::tls::*;
use crate::support::*;

/// A lab PKI: the server certificate labgate serves (for 127.0.0.1) and the users' CA
/// with alice and bob, an expired carol, a revoked dave, and mallory from another CA.
struct Pki {
    server_ca: TestCa,
    server: CertFiles,
    users: TestCa,
    crl: std::path::PathBuf,
    alice: CertFiles,
    bob: CertFiles,
    carol_expired: CertFiles,
    dave_revoked: CertFiles,
    mallory_other_ca: CertFiles,
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        let server_ca = TestCa::new(dir, "server");
        let (server, _) = server_ca.issue("labgate", "127.0.0.1", Usage::Server, Validity::Current);
        let users = TestCa::new(dir, "users");
        let (alice, _) = users.issue("alice", "alice", Usage::Client, Validity::Current);
        let (bob, _) = users.issue("bob", "bob", Usage::Client, Validity::Current);
        let (carol_expired, _) = users.issue("carol", "carol", Usage::Client, Validity::Expired);
        let (dave_revoked, dave_serial) =
            users.issue("dave", "dave", Usage::Client, Validity::Current);
        let crl = users.crl(&[dave_serial]);
        let other = TestCa::new(dir, "other");
        let (mallory_other_ca, _) =
            other.issue("mallory", "mallory", Usage::Client, Validity::Current);
        Pki {
            server_ca,
            server,
            users,
            crl,
            alice,
            bob,
            carol_expired,
            dave_revoked,
            mallory_other_ca,
        }
    }

    fn mtls_toml(&self) -> String {
        format!(
            "[server.tls]\ncert = {:?}\nkey = {:?}\n\n[identity]\nsource = \"mtls\"\n\
             client_ca = {:?}\ncrl = {:?}\n",
            self.server.cert.display().to_string(),
            self.server.key.display().to_string(),
            self.users.cert_path.display().to_string(),
            self.crl.display().to_string(),
        )
    }
}

/// curl as `who` (None: no client certificate), trusting the server CA.
async fn curl_as(
    pki_ca: &Path,
    who: Option<&CertFiles>,
    args: &[&str],
    url: String,
) -> (i32, u16, String) {
    let mut all: Vec<String> = vec!["--cacert".into(), pki_ca.display().to_string()];
    if let Some(c) = who {
        all.extend(["--cert".into(), c.cert.display().to_string()]);
        all.extend(["--key".into(), c.key.display().to_string()]);
    }
    all.extend(args.iter().map(|s| s.to_string()));
    tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        curl(&refs, &url)
    })
    .await
    .expect("curl task")
}

fn session_id_of(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    v["session_id"].as_str().expect("session_id").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_sessions_belong_to_the_certificate_that_opened_them() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let gw = Gateway::start(&Cfg::new(up.addr).https().extra(&pki.mtls_toml())).await;
    let ca = pki.server_ca.cert_path.clone();
    let url = |p: &str| format!("https://127.0.0.1:{}{p}", gw.port);

    // alice opens a session and uses the lab; the upstream is told it is alice, whatever
    // alice's client claims.
    let (code, status, body) =
        curl_as(&ca, Some(&pki.alice), &["-X", "POST"], url("/session")).await;
    assert_eq!((code, status), (0, 201), "{body}\n{}", gw.log_tail());
    let id = session_id_of(&body);
    let hdr = format!("X-Session-ID: {id}");
    let (_, status, body) = curl_as(
        &ca,
        Some(&pki.alice),
        &["-H", &hdr, "-H", "X-Lab-User: mallory"],
        url("/lab/x"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let seen = up.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].all("x-lab-user"), vec!["alice"], "{:?}", seen[0]);

    // bob presenting alice's id: 404 as if unknown, everywhere, and nothing forwarded.
    let get = url(&format!("/session/{id}"));
    for (args, target) in [
        (vec![], get.clone()),
        (vec!["-X", "DELETE"], get.clone()),
        (
            vec!["-X", "POST", "-H", hdr.as_str()],
            url("/session/heartbeat"),
        ),
        (vec!["-H", hdr.as_str()], url("/lab/x")),
    ] {
        let (_, status, body) = curl_as(&ca, Some(&pki.bob), &args, target.clone()).await;
        assert_eq!(status, 404, "{args:?} {target}: {body}");
        assert_eq!(
            body,
            concat!(r#"{"detail":"Session not found"}"#, "\n"),
            "{args:?} {target}"
        );
    }
    assert_eq!(up.count(), 1, "bob's /lab request reached the upstream");
    let cross = gw.audit_events("cross_identity");
    assert_eq!(cross.len(), 4, "{cross:?}");
    for e in &cross {
        assert_eq!(e["identity"], "bob", "{e}");
        assert_eq!(e["owner"], "alice", "{e}");
    }
    // alice's session is untouched.
    let (_, status, body) = curl_as(&ca, Some(&pki.alice), &[], get.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"active\""), "{body}");

    // One live session per identity by default.
    let (_, status, body) = curl_as(&ca, Some(&pki.alice), &["-X", "POST"], url("/session")).await;
    assert_eq!(status, 429, "{body}");
    // bob may open his own, and waits behind alice.
    let (_, status, body) = curl_as(&ca, Some(&pki.bob), &["-X", "POST"], url("/session")).await;
    assert_eq!(status, 201, "{body}");
    assert!(body.contains("\"position\":1"), "{body}");

    // The status page names people, never ids.
    let (_, status, page) = curl_as(&ca, Some(&pki.bob), &[], url("/status.json")).await;
    assert_eq!(status, 200);
    assert!(
        page.contains("\"alice\"") && page.contains("\"bob\""),
        "{page}"
    );
    assert!(!page.contains(&id), "{page}");

    // No certificate, an expired one, a revoked one, another CA's: the handshake fails.
    for (who, what) in [
        (None, "no certificate"),
        (Some(&pki.carol_expired), "expired"),
        (Some(&pki.dave_revoked), "revoked"),
        (Some(&pki.mallory_other_ca), "other CA"),
    ] {
        let (code, status, body) = curl_as(&ca, who, &[], url("/healthz")).await;
        assert!(
            code != 0 && status == 0,
            "{what}: curl {code}, HTTP {status}: {body}"
        );
    }
    assert_eq!(up.count(), 1);

    // alice ends her session; bob is promoted.
    let (_, status, _) = curl_as(&ca, Some(&pki.alice), &["-X", "DELETE"], get).await;
    assert_eq!(status, 204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_rate_limit_is_per_identity() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    // Named by the e-mail SAN this time.
    let cfg = Cfg::new(up.addr)
        .https()
        .rate_limit(2, "1h")
        .extra(&format!(
            "{}max_sessions = 5\nfrom = \"san-email\"\n",
            pki.mtls_toml()
        ));
    let gw = Gateway::start(&cfg).await;
    let ca = pki.server_ca.cert_path.clone();
    let url = format!("https://127.0.0.1:{}/session", gw.port);
    for _ in 0..2 {
        let (_, status, body) = curl_as(&ca, Some(&pki.alice), &["-X", "POST"], url.clone()).await;
        assert_eq!(status, 201, "{body}");
    }
    let (_, status, body) = curl_as(&ca, Some(&pki.alice), &["-X", "POST"], url.clone()).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(
        body,
        concat!(r#"{"detail":"Too many session requests"}"#, "\n")
    );
    // Same address, another person: their own bucket.
    let (_, status, body) = curl_as(&ca, Some(&pki.bob), &["-X", "POST"], url.clone()).await;
    assert_eq!(status, 201, "{body}");
    let who: Vec<String> = gw
        .audit_events("session_created")
        .iter()
        .map(|e| e["identity"].as_str().unwrap_or("?").to_string())
        .collect();
    assert_eq!(who, ["alice@lab.test", "alice@lab.test", "bob@lab.test"]);
    let refused = gw.audit_events("session_refused");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0]["reason"], "rate_limited");
}

/// Sends `request` to `to` from the loopback address `from`.
async fn raw_from(from: &str, to: SocketAddr, request: &str) -> RawResponse {
    raw_from_addr(from.parse().unwrap(), to, request.as_bytes())
        .await
        .expect("raw request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_mode_believes_only_the_trusted_proxy() {
    let up = Upstream::start().await;
    let cfg = Cfg::new(up.addr)
        .trusted_proxies(&["127.0.0.1/32"])
        .extra("[identity]\nsource = \"header\"\nheader = \"X-Forwarded-User\"\n");
    let gw = Gateway::start(&cfg).await;
    let create =
        "POST /session HTTP/1.1\r\nHost: x\r\nX-Forwarded-User: alice\r\nContent-Length: 0\r\n\r\n";
    let r = raw_from("127.0.0.1", gw.addr(), create).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let id = session_id_of(&r.text());
    let lab = |user: &str| {
        format!(
            "GET /lab/x HTTP/1.1\r\nHost: x\r\nX-Session-ID: {id}\r\nX-Forwarded-User: {user}\r\n\
             X-Lab-User: mallory\r\n\r\n"
        )
    };
    // Through the proxy: forwarded, as alice; neither identity header is passed on as is.
    let r = raw_from("127.0.0.1", gw.addr(), &lab("alice")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.requests();
    assert_eq!(seen[0].all("x-lab-user"), vec!["alice"]);
    assert!(
        seen[0].header("x-forwarded-user").is_none(),
        "{:?}",
        seen[0]
    );
    // Through the proxy as bob: 404, as if unknown.
    let r = raw_from("127.0.0.1", gw.addr(), &lab("bob")).await;
    assert_eq!(r.status, 404, "{}", r.text());
    // Around the proxy (another address), even naming alice: 401 for everything, and
    // nothing reaches the upstream.
    for req in [
        lab("alice"),
        create.to_string(),
        "GET /status HTTP/1.1\r\nHost: x\r\n\r\n".into(),
    ] {
        let r = raw_from("127.0.0.2", gw.addr(), &req).await;
        assert_eq!(r.status, 401, "{req}: {}", r.text());
        assert!(r.text().contains("detail"), "{}", r.text());
    }
    // From the proxy without a name, or with two: 401.
    let none = format!("GET /lab/x HTTP/1.1\r\nHost: x\r\nX-Session-ID: {id}\r\n\r\n");
    assert_eq!(raw_from("127.0.0.1", gw.addr(), &none).await.status, 401);
    let two = format!("GET /lab/x HTTP/1.1\r\nHost: x\r\nX-Session-ID: {id}\r\nX-Forwarded-User: alice\r\nX-Forwarded-User: bob\r\n\r\n");
    assert_eq!(raw_from("127.0.0.1", gw.addr(), &two).await.status, 401);
    assert_eq!(up.count(), 1);
    assert!(!gw.audit_events("identity_refused").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_https_listener_reloads_its_certificate_on_sighup() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ca1 = TestCa::new(dir.path(), "one");
    let (served, _) = ca1.issue("labgate", "127.0.0.1", Usage::Server, Validity::Current);
    let toml = format!(
        "[server.tls]\ncert = {:?}\nkey = {:?}\n",
        served.cert.display().to_string(),
        served.key.display().to_string()
    );
    let gw = Gateway::start(&Cfg::new(up.addr).https().extra(&toml)).await;
    let health = format!("https://127.0.0.1:{}/healthz", gw.port);
    // Plain HTTPS, no identity mode: nothing else changes.
    assert_eq!(
        curl_as(&ca1.cert_path, None, &[], health.clone()).await.1,
        204
    );

    // Replace the files with a certificate from another CA, then SIGHUP.
    let ca2 = TestCa::new(dir.path(), "two");
    let (next, _) = ca2.issue("labgate2", "127.0.0.1", Usage::Server, Validity::Current);
    std::fs::copy(&next.cert, &served.cert).unwrap();
    std::fs::copy(&next.key, &served.key).unwrap();
    gw.signal(Signal::SIGHUP);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if curl_as(&ca2.cert_path, None, &[], health.clone()).await.1 == 204 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "new certificate not served:\n{}",
            gw.log_tail()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_ne!(
        curl_as(&ca1.cert_path, None, &[], health.clone()).await.0,
        0
    );

    // A broken file on reload: the old material stays, and the log says why.
    std::fs::write(&served.cert, "garbage").unwrap();
    gw.signal(Signal::SIGHUP);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !gw.log().contains("TLS reload failed") {
        assert!(std::time::Instant::now() < deadline, "{}", gw.log_tail());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(curl_as(&ca2.cert_path, None, &[], health).await.1, 204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_survive_a_restart_and_the_admin_queue_names_them() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = Cfg::new(up.addr)
        .trusted_proxies(&["127.0.0.1/32"])
        .state_path(&dir.path().join("queue.redb"))
        .admin_socket("admin.sock")
        .extra("[identity]\nsource = \"header\"\nheader = \"X-Forwarded-User\"\n");
    let as_user = |who: &str, line: String| {
        format!("{line}\r\nHost: x\r\nX-Forwarded-User: {who}\r\nContent-Length: 0\r\n\r\n")
    };
    let mut gw = Gateway::start(&cfg).await;
    let r = raw_from(
        "127.0.0.1",
        gw.addr(),
        &as_user("alice", "POST /session HTTP/1.1".into()),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let id = session_id_of(&r.text());
    let out = gw.admin(&["queue"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("WHO") && table.contains("alice"), "{table}");
    let created = gw.audit_events("session_created");
    assert_eq!(created[0]["identity"], "alice", "{created:?}");
    assert!(gw.terminate().await.is_some_and(|s| s.success()));

    let gw = Gateway::start(&cfg).await;
    let get = format!("GET /session/{id} HTTP/1.1");
    let r = raw_from("127.0.0.1", gw.addr(), &as_user("bob", get.clone())).await;
    assert_eq!(r.status, 404, "{}", r.text());
    let r = raw_from("127.0.0.1", gw.addr(), &as_user("alice", get)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // And alice is still at her cap of one.
    let r = raw_from(
        "127.0.0.1",
        gw.addr(),
        &as_user("alice", "POST /session HTTP/1.1".into()),
    )
    .await;
    assert_eq!(r.status, 429, "{}", r.text());
}

//! HTTPS and HTTP/2 upstreams (issue 11): a lab device with its own CA, self-signed lab
//! gear with the explicit skip option, and a lab manager that requires a client
//! certificate; HTTP/2 when the upstream offers it by ALPN.

use std::process::Command;

use crate::support::tls::*;
use crate::support::*;

/// Opens a session on `gw` and sends `GET /lab/x` with it; returns (status, body).
async fn through(gw: &Gateway) -> (u16, String) {
    let r = raw(
        gw.addr(),
        "POST /session HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    )
    .await
    .expect("create");
    assert_eq!(r.status, 201, "{}", r.text());
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
    let id = v["session_id"].as_str().expect("id").to_string();
    let r = raw(
        gw.addr(),
        &format!("GET /lab/x HTTP/1.1\r\nHost: x\r\nX-Session-ID: {id}\r\n\r\n"),
    )
    .await
    .expect("lab request");
    let _ = raw(
        gw.addr(),
        &format!("DELETE /session/{id} HTTP/1.1\r\nHost: x\r\n\r\n"),
    )
    .await;
    (r.status, r.text())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_with_its_own_ca_is_verified_and_spoken_to_in_h2() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "device");
    let (cert, _) = ca.issue("r1", "r1.lab.test", Usage::Server, Validity::Current);
    let up = TlsUpstream::start(TlsUpstreamOpts {
        cert,
        h2: true,
        client_ca: None,
    })
    .await;
    let tls = format!(
        "sni = \"r1.lab.test\"\nca = {:?}\n",
        ca.cert_path.display().to_string()
    );
    let gw = Gateway::start(&Cfg::bare().upstream(UpstreamCfg::new("r1", up.addr).tls(&tls))).await;
    let (status, body) = through(&gw).await;
    assert_eq!(status, 200, "{body}\n{}", gw.log_tail());
    assert_eq!(body, "version=HTTP/2.0 client=-");
    assert_eq!(up.seen()[0].path, "/lab/x");

    // The same upstream checked against the wrong name, or without its CA: 502, and
    // no request reaches it.
    let other = TestCa::new(dir.path(), "other");
    for tls in [
        format!(
            "sni = \"r2.lab.test\"\nca = {:?}\n",
            ca.cert_path.display().to_string()
        ),
        format!(
            "sni = \"r1.lab.test\"\nca = {:?}\n",
            other.cert_path.display().to_string()
        ),
        "sni = \"r1.lab.test\"\n".to_string(),
    ] {
        let gw =
            Gateway::start(&Cfg::bare().upstream(UpstreamCfg::new("r1", up.addr).tls(&tls))).await;
        let (status, body) = through(&gw).await;
        assert_eq!(status, 502, "{tls}: {body}");
    }
    assert_eq!(up.seen().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_only_upstream_gets_http1() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "device");
    let (cert, _) = ca.issue("r1", "127.0.0.1", Usage::Server, Validity::Current);
    let up = TlsUpstream::start(TlsUpstreamOpts {
        cert,
        h2: false,
        client_ca: None,
    })
    .await;
    // No sni: the address's IP is checked against the certificate's IP SAN.
    let tls = format!("ca = {:?}\n", ca.cert_path.display().to_string());
    let gw = Gateway::start(&Cfg::bare().upstream(UpstreamCfg::new("r1", up.addr).tls(&tls))).await;
    let (status, body) = through(&gw).await;
    assert_eq!((status, body.as_str()), (200, "version=HTTP/1.1 client=-"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_signed_gear_needs_the_loud_skip_option() {
    let dir = tempfile::tempdir().unwrap();
    let cert = self_signed(dir.path(), "switch", "switch.lab.test");
    let up = TlsUpstream::start(TlsUpstreamOpts {
        cert,
        h2: true,
        client_ca: None,
    })
    .await;
    let strict = Gateway::start(
        &Cfg::bare().upstream(UpstreamCfg::new("sw", up.addr).tls("sni = \"switch.lab.test\"\n")),
    )
    .await;
    assert_eq!(through(&strict).await.0, 502);
    assert!(up.seen().is_empty());

    let cfg =
        Cfg::bare().upstream(UpstreamCfg::new("sw", up.addr).tls("insecure_skip_verify = true\n"));
    let gw = Gateway::start(&cfg).await;
    let (status, body) = through(&gw).await;
    assert_eq!((status, body.as_str()), (200, "version=HTTP/2.0 client=-"));
    // Loud: `labgate check` and start-up say so.
    let out = Command::new(env!("CARGO_BIN_EXE_labgate"))
        .args(["check", "--config"])
        .arg(&gw.config_path)
        .output()
        .expect("labgate check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("WARNING") && text.contains("insecure_skip_verify"),
        "{text}"
    );
    assert!(
        gw.log().contains("insecure_skip_verify"),
        "{}",
        gw.log_tail()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lab_manager_requiring_a_client_certificate_gets_labgates() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "manager");
    let (cert, _) = ca.issue("mgr", "mgr.lab.test", Usage::Server, Validity::Current);
    let clients = TestCa::new(dir.path(), "clients");
    let (labgate_cert, _) = clients.issue(
        "labgate-client",
        "labgate",
        Usage::Client,
        Validity::Current,
    );
    let up = TlsUpstream::start(TlsUpstreamOpts {
        cert,
        h2: true,
        client_ca: Some(clients.cert_path.clone()),
    })
    .await;
    let base = format!(
        "sni = \"mgr.lab.test\"\nca = {:?}\n",
        ca.cert_path.display().to_string()
    );
    let without =
        Gateway::start(&Cfg::bare().upstream(UpstreamCfg::new("mgr", up.addr).tls(&base))).await;
    assert_eq!(through(&without).await.0, 502);
    let with = format!(
        "{base}client_cert = {:?}\nclient_key = {:?}\n",
        labgate_cert.cert.display().to_string(),
        labgate_cert.key.display().to_string()
    );
    let gw =
        Gateway::start(&Cfg::bare().upstream(UpstreamCfg::new("mgr", up.addr).tls(&with))).await;
    let (status, body) = through(&gw).await;
    assert_eq!(
        (status, body.as_str()),
        (200, "version=HTTP/2.0 client=labgate")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labgate_check_rejects_bad_tls_files_with_their_location() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    let up = Upstream::start().await;
    let cfg = Cfg::bare().upstream(
        UpstreamCfg::new("r1", up.addr).tls(&format!("ca = {:?}\n", junk.display().to_string())),
    );
    let (status, log) =
        Gateway::start_expecting_exit(&cfg, std::time::Duration::from_secs(10)).await;
    assert!(!status.success());
    assert!(
        log.contains("junk.pem") && log.contains("no certificate"),
        "{log}"
    );
}

/// Opens a session on `gw`; returns its id.
async fn session_on(gw: &Gateway) -> String {
    let r = raw(
        gw.addr(),
        "POST /session HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    )
    .await
    .expect("create");
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
    v["session_id"].as_str().expect("id").to_string()
}

/// A WebSocket to a TLS upstream is labgate's own splice (cloudflare/pingora#946 no
/// longer applies): one attempt must work, on HTTP/1.1 even though requests to the same
/// upstream may use h2, and ending the session closes it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_to_a_tls_upstream_is_spliced_by_labgate_on_http1() {
    use futures_util::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "device");
    let (cert, _) = ca.issue("r1", "r1.lab.test", Usage::Server, Validity::Current);
    let up = TlsWsUpstream::start(&cert).await;
    let tls = format!(
        "sni = \"r1.lab.test\"\nca = {:?}\n",
        ca.cert_path.display().to_string()
    );
    let gw = Gateway::start(&Cfg::bare().upstream(UpstreamCfg::new("r1", up.addr).tls(&tls))).await;
    let id = session_on(&gw).await;
    let mut ws = open_echo_ws(&gw, "/lab/ws", &id).await;
    let alpn = up.alpn.lock().unwrap().clone();
    assert_eq!(alpn, vec![Some(b"http/1.1".to_vec())]);
    let _ = raw(
        gw.addr(),
        &format!("DELETE /session/{id} HTTP/1.1\r\nHost: x\r\n\r\n"),
    )
    .await;
    let end = tokio::time::timeout(std::time::Duration::from_secs(5), ws.next())
        .await
        .expect("closed at once when the session ends");
    assert!(!matches!(&end, Some(Ok(m)) if m.is_text()), "{end:?}");
}

/// The upgrade's TLS is the upstream's `[upstream.tls]`: the wrong name or CA is a 502
/// before any 101 (the upstream never completes a handshake); the loud skip option
/// accepts self-signed gear; a client certificate reaches a manager that requires one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrades_use_the_upstreams_tls_settings() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "device");
    let (cert, _) = ca.issue("r1", "r1.lab.test", Usage::Server, Validity::Current);
    let up = TlsWsUpstream::start(&cert).await;
    let ca_path = ca.cert_path.display().to_string();
    for tls in [
        format!("sni = \"r2.lab.test\"\nca = {ca_path:?}\n"),
        "sni = \"r1.lab.test\"\n".to_string(),
    ] {
        let gw =
            Gateway::start(&Cfg::bare().upstream(UpstreamCfg::new("r1", up.addr).tls(&tls))).await;
        let id = session_on(&gw).await;
        let r = raw(
            gw.addr(),
            &format!(
                "GET /lab/ws HTTP/1.1\r\nHost: x\r\nX-Session-ID: {id}\r\nConnection: Upgrade\r\n\
                 Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            ),
        )
        .await
        .expect("an answer");
        assert_eq!(r.status, 502, "{tls}: {}", r.text());
    }
    assert!(up.alpn.lock().unwrap().is_empty());

    let switch = self_signed(dir.path(), "switch", "switch.lab.test");
    let up = TlsWsUpstream::start(&switch).await;
    let cfg =
        Cfg::bare().upstream(UpstreamCfg::new("sw", up.addr).tls("insecure_skip_verify = true\n"));
    let gw = Gateway::start(&cfg).await;
    let id = session_on(&gw).await;
    let _ws = open_echo_ws(&gw, "/lab/ws", &id).await;

    let clients = TestCa::new(dir.path(), "clients");
    let (labgate_cert, _) = clients.issue(
        "labgate-client",
        "labgate",
        Usage::Client,
        Validity::Current,
    );
    let up = TlsWsUpstream::start_requiring(&cert, Some(&clients.cert_path)).await;
    let with = format!(
        "sni = \"r1.lab.test\"\nca = {ca_path:?}\nclient_cert = {:?}\nclient_key = {:?}\n",
        labgate_cert.cert.display().to_string(),
        labgate_cert.key.display().to_string()
    );
    let gw =
        Gateway::start(&Cfg::bare().upstream(UpstreamCfg::new("mgr", up.addr).tls(&with))).await;
    let id = session_on(&gw).await;
    let _ws = open_echo_ws(&gw, "/lab/ws", &id).await;
}

#[path = "it/tls_util.rs"]
mod tls_util;
use tls_util::*;

#[tokio::test(flavor = "multi_thread")]
async fn helper_upstream_speaks_h2_and_checks_client_certs() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "lab");
    let (server, _) = ca.issue("server", "127.0.0.1", Usage::Server, Validity::Current);
    let (client, _) = ca.issue("alice", "alice", Usage::Client, Validity::Current);
    let up = TlsUpstream::start(TlsUpstreamOpts { cert: server, h2: true, client_ca: Some(ca.cert_path.clone()) }).await;
    let url = format!("https://127.0.0.1:{}/x", up.addr.port());
    let ca_s = ca.cert_path.to_str().unwrap().to_string();
    let (c, s, body) = tokio::task::spawn_blocking({ let url = url.clone(); let client = client.clone(); let ca_s = ca_s.clone(); move || curl(&["--cacert", &ca_s, "--cert", client.cert.to_str().unwrap(), "--key", client.key.to_str().unwrap()], &url) }).await.unwrap();
    assert_eq!((c, s), (0, 200), "{body}");
    assert_eq!(body, "version=HTTP/2.0 client=alice");
    let (c, _, _) = tokio::task::spawn_blocking(move || curl(&["--cacert", &ca_s], &url)).await.unwrap();
    assert_ne!(c, 0);
}

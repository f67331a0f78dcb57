#[path = "it/tls_util.rs"]
pub mod tls_util;
use tls_util::*;

#[tokio::test(flavor = "multi_thread")]
async fn helper_upstream_speaks_h2_and_checks_client_certs() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "lab");
    let (server, _) = ca.issue("server", "127.0.0.1", Usage::Server, Validity::Current);
    let (client, _) = ca.issue("alice", "alice", Usage::Client, Validity::Current);
    let up = TlsUpstream::start(TlsUpstreamOpts {
        cert: server,
        h2: true,
        client_ca: Some(ca.cert_path.clone()),
    })
    .await;
    let url = format!("https://127.0.0.1:{}/x", up.addr.port());
    let ca_s = ca.cert_path.to_str().unwrap().to_string();
    let (c, s, body) = tokio::task::spawn_blocking({
        let url = url.clone();
        let client = client.clone();
        let ca_s = ca_s.clone();
        move || {
            curl(
                &[
                    "--cacert",
                    &ca_s,
                    "--cert",
                    client.cert.to_str().unwrap(),
                    "--key",
                    client.key.to_str().unwrap(),
                ],
                &url,
            )
        }
    })
    .await
    .unwrap();
    assert_eq!((c, s), (0, 200), "{body}");
    assert_eq!(body, "version=HTTP/2.0 client=alice");
    let (c, _, _) = tokio::task::spawn_blocking(move || curl(&["--cacert", &ca_s], &url))
        .await
        .unwrap();
    assert_ne!(c, 0);
}

#[path = "it/nginx_util.rs"]
mod nginx_util;

mod it {
    pub(crate) use super::tls_util;
}

#[tokio::test(flavor = "multi_thread")]
async fn nginx_names_users_by_cert_and_basic_auth() {
    use std::convert::Infallible;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "users");
    let (server, _) = ca.issue("nginx", "127.0.0.1", Usage::Server, Validity::Current);
    let (alice, _) = ca.issue("alice", "alice", Usage::Client, Validity::Current);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        let u = req
                            .headers()
                            .get("x-forwarded-user")
                            .map(|v| v.to_str().unwrap().to_string())
                            .unwrap_or_default();
                        Ok::<_, Infallible>(hyper::Response::new(http_body_util::Full::new(
                            bytes::Bytes::from(u),
                        )))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    let p1 = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let p2 = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ng = nginx_util::Nginx::start(
        dir.path(),
        addr,
        &server,
        &ca.cert_path,
        &[("bob", "pw")],
        p1,
        p2,
    );
    let ca_s = ca.cert_path.to_str().unwrap().to_string();
    let r = tokio::task::spawn_blocking(move || {
        let a = curl(
            &[
                "--cacert",
                &ca_s,
                "--cert",
                alice.cert.to_str().unwrap(),
                "--key",
                alice.key.to_str().unwrap(),
                "-H",
                "X-Forwarded-User: mallory",
            ],
            &format!("https://127.0.0.1:{p1}/"),
        );
        let b = curl(
            &["-H", "X-Forwarded-User: mallory"],
            &format!("http://bob:pw@127.0.0.1:{p2}/"),
        );
        let c = curl(&[], &format!("http://127.0.0.1:{p2}/"));
        (a, b, c)
    })
    .await
    .unwrap();
    assert_eq!((r.0 .1, r.0 .2.as_str()), (200, "alice"), "{}", ng.errors());
    assert_eq!((r.1 .1, r.1 .2.as_str()), (200, "bob"));
    assert_eq!(r.2 .1, 401);
}

//! Raw device tunnels (`Upgrade: labgate-tcp`, `docs/tunnel-protocol.md`): the same gate
//! and allowlist refusals as the WebSocket form before anything connects, bytes both ways
//! through the real binary with labgate's `splice(2)` relay (the audit line says so),
//! each FIN passed on, and the cut at the end of a turn before the next holder gets in.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;
use crate::tunnels::{assert_tunnel_bytes, echo_device, RefusalLab, STRANGER};

/// Opens a raw tunnel: `Ok` with the socket after the `101`, or the refusal's status
/// (its body checked to be JSON with a `detail`).
async fn raw(gw: &Gateway, target: &str, id: Option<&str>) -> Result<TcpStream, u16> {
    let mut c = TcpStream::connect(("127.0.0.1", gw.port))
        .await
        .expect("connect");
    let session = id
        .map(|id| format!("X-Session-ID: {id}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "GET /lab/tunnel/{target} HTTP/1.1\r\nHost: lab\r\nUpgrade: labgate-tcp\r\n\
         Connection: Upgrade\r\n{session}\r\n"
    );
    c.write_all(req.as_bytes()).await.expect("request");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        assert!(head.len() < 16 * 1024, "answer head too long");
        let mut b = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut b))
            .await
            .expect("answer in time")
            .expect("read");
        assert_eq!(n, 1, "connection ended in the answer's head: {head:?}");
        head.push(b[0]);
    }
    let head = String::from_utf8(head)
        .expect("ascii head")
        .to_ascii_lowercase();
    let status: u16 = head[9..12].parse().expect("status");
    if status == 101 {
        assert!(head.contains("upgrade: labgate-tcp"), "{head}");
        return Ok(c);
    }
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("a refusal has a length");
    let mut body = vec![0u8; len];
    c.read_exact(&mut body).await.expect("refusal body");
    let text = String::from_utf8_lossy(&body);
    assert!(text.starts_with("{\"detail\":"), "refusal body {text:?}");
    Err(status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_tunnels_are_refused_like_websocket_ones_and_nothing_connects() {
    let lab = RefusalLab::start().await;
    let (gw, device, a, b) = (&lab.gw, &lab.device, &lab.active, &lab.waiting);
    let target = lab.target();
    assert_eq!(raw(gw, &target, Some(b)).await.err(), Some(423));
    assert_eq!(raw(gw, &target, None).await.err(), Some(422));
    assert_eq!(raw(gw, &target, Some(STRANGER)).await.err(), Some(404));
    // Not in the allowlist, for the ACTIVE session too: 404, and nothing connects.
    assert_eq!(
        raw(gw, &format!("127.0.0.1:{}", gw.port), Some(a))
            .await
            .err(),
        Some(404)
    );
    assert_eq!(
        device.connections(),
        0,
        "a refused tunnel reached the device"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_tunnel_round_trips_bytes_spliced_and_is_audited() {
    let http = Upstream::start().await;
    let device = echo_device().await;
    let gw =
        Gateway::start(&Cfg::new(http.addr).tunnels(TunnelsCfg::new(4).device("r1", device))).await;
    let (a, _) = create_session(&gw).await;
    let c = raw(&gw, &format!("r1:{}", device.port()), Some(&a))
        .await
        .expect("open");
    // The gauge rises right after the `101` is written.
    eventually(Duration::from_secs(5), "one tunnel open", || async {
        (gw.metric("labgate_tunnels_open").await == Some(1.0)).then_some(())
    })
    .await;
    let big: Vec<u8> = (0..4_000_000u32).map(|i| (i % 251) as u8).collect();
    let (mut r, mut w) = c.into_split();
    let sending = big.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&sending).await.expect("send");
        // The client's FIN reaches the echo device, which ends its side in turn.
        w.shutdown().await.expect("fin");
        w
    });
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), r.read_to_end(&mut got))
        .await
        .expect("the echo and the device's FIN in time")
        .expect("read");
    assert!(
        got == big,
        "echo differs ({} of {} bytes)",
        got.len(),
        big.len()
    );
    drop(writer.await.expect("writer"));
    eventually(Duration::from_secs(5), "tunnel closed", || async {
        (gw.metric("labgate_tunnels_open").await == Some(0.0)).then_some(())
    })
    .await;
    let n = big.len() as f64;
    assert_tunnel_bytes(&gw, n, n).await;
    let closed = gw.audit_events("tunnel_closed");
    assert_eq!(closed.len(), 1, "{closed:?}");
    let line = &closed[0];
    assert_eq!(line["relay"], "splice", "{line}");
    assert_eq!(line["end"], "client_closed", "{line}");
    assert_eq!(line["bytes_to_device"], big.len());
    assert_eq!(line["bytes_to_client"], big.len());
    assert_eq!(line["session"], tag(&a));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_session_cuts_its_raw_tunnel_and_the_next_holder_gets_through() {
    let http = Upstream::start().await;
    let device = TcpListener::bind("127.0.0.1:0").await.expect("bind device");
    let dev_addr: SocketAddr = device.local_addr().expect("addr");
    let gw =
        Gateway::start(&Cfg::new(http.addr).tunnels(TunnelsCfg::new(4).device("r1", dev_addr)))
            .await;
    let (a, _) = create_session(&gw).await;
    let (b, _) = create_session(&gw).await;
    let target = format!("r1:{}", dev_addr.port());
    let (accepted, opened) = tokio::join!(device.accept(), raw(&gw, &target, Some(&a)));
    let (mut dev_side, _) = accepted.expect("device accepts");
    let mut c = opened.expect("a's tunnel opens");
    c.write_all(b"show version\n").await.expect("send");
    let mut buf = [0u8; 13];
    dev_side.read_exact(&mut buf).await.expect("device reads");
    dev_side.write_all(b"v1\n").await.expect("device writes");
    let mut three = [0u8; 3];
    c.read_exact(&mut three).await.expect("client reads");
    assert_eq!(&three, b"v1\n");

    let started = Instant::now();
    assert_eq!(delete_session(&gw, &a).await, 204);
    // Both legs end: the device's at once (under the queue lock), the client's with it.
    assert_closed(&mut dev_side, "device leg").await;
    assert_closed(&mut c, "client leg").await;
    println!(
        "raw tunnel closed {:?} after DELETE was sent",
        started.elapsed()
    );
    eventually(Duration::from_secs(5), "b is ACTIVE", || async {
        (get_session(&gw, &b).await.1.contains("active")).then_some(())
    })
    .await;
    let (accepted, opened) = tokio::join!(device.accept(), raw(&gw, &target, Some(&b)));
    let (mut dev_b, _) = accepted.expect("device accepts b");
    let mut c_b = opened.expect("b's tunnel opens");
    c_b.write_all(b"hi").await.expect("send");
    let mut two = [0u8; 2];
    dev_b.read_exact(&mut two).await.expect("device reads b");
    assert_eq!(&two, b"hi");
    eventually(
        Duration::from_secs(5),
        "the cut tunnel's audit line",
        || async {
            gw.audit_events("tunnel_closed")
                .iter()
                .any(|e| {
                    e["end"] == "session_ended"
                        && e["reason"] == "deleted"
                        && e["relay"] == "splice"
                })
                .then_some(())
        },
    )
    .await;
}

//! Hostile client connections (issue 10 #2): idle keep-alive floods, slowloris headers,
//! one address hogging connections, and clients that vanish. Each test runs labgate with
//! short `[server]` timeouts so it takes seconds.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::support::*;

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";

/// A connection to `to` from the loopback address `from` (Linux answers on all of
/// 127.0.0.0/8), so one test can play many clients.
async fn connect_from(from: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(from), 0))?;
    tokio::time::timeout(Duration::from_secs(5), socket.connect(to))
        .await
        .map_err(|_| std::io::Error::other("connect timed out"))?
}

/// Reads until the head of one response has arrived; its status, or `None` when the
/// connection closed or stayed silent for `within`.
async fn read_status(s: &mut TcpStream, within: Duration) -> Option<u16> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 64 * 1024 {
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    }
    let head = String::from_utf8_lossy(&buf);
    head.split(' ').nth(1)?.parse().ok()
}

/// Whether the server closes `s` (EOF or reset) within `within`; bytes read meanwhile
/// are ignored.
async fn closed_by_server(s: &mut TcpStream, within: Duration) -> bool {
    let mut chunk = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

fn gateway_cfg(conn: ConnCfg) -> Cfg {
    // The upstream is never contacted: these tests only talk to labgate itself.
    Cfg::new(SocketAddr::from(([127, 0, 0, 1], free_port()))).connections(conn)
}

#[tokio::test]
async fn idle_and_slowloris_flood_under_a_low_fd_limit_does_not_lock_out_a_new_client() {
    require_tool("prlimit");
    let cfg = gateway_cfg(ConnCfg {
        keepalive_timeout: "2s".into(),
        header_timeout: "2s".into(),
        max_connections: 200,
        max_connections_per_client: 10,
    })
    // Just above the open-file budget of 200 connections (2177, src/fdbudget.rs):
    // labgate refuses to start under less.
    .nofile(2200);
    let gw = Gateway::start(&cfg).await;

    // 290 connections from 29 addresses: more than labgate's cap. Even
    // addresses idle after one request; odd ones send a header one line at a time, a
    // line every 300 ms, forever (a per-read timeout never fires on them).
    let mut idle = Vec::new();
    let mut drips = Vec::new();
    for a in 0..29u8 {
        let from = Ipv4Addr::new(127, 0, 1, 10 + a);
        for _ in 0..10 {
            let Ok(mut s) = connect_from(from, gw.addr()).await else {
                continue;
            };
            if a % 2 == 0 {
                if s.write_all(HEALTHZ).await.is_ok() {
                    // 204, or 503 once the cap is reached: either way it stays open or
                    // is closed by labgate, and the next client must not care.
                    let _ = read_status(&mut s, Duration::from_secs(5)).await;
                }
                idle.push(s);
            } else {
                drips.push(tokio::spawn(async move {
                    if s.write_all(b"GET /healthz HTTP/1.1\r\n").await.is_err() {
                        return true;
                    }
                    for _ in 0..100 {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        if s.write_all(b"X-Drip: 1\r\n").await.is_err() {
                            return true;
                        }
                        let mut b = [0u8; 512];
                        if let Ok(r) = tokio::time::timeout(Duration::ZERO, s.read(&mut b)).await {
                            // EOF, an error or an answer (a refusal): labgate let go.
                            let _ = r;
                            return true;
                        }
                    }
                    false
                }));
            }
        }
    }
    assert!(
        idle.len() + drips.len() > 250,
        "the flood must exceed labgate's cap ({} connected)",
        idle.len() + drips.len()
    );

    // A new client gets its answer: refused (503) at most while the flood holds every
    // slot, then served once the timeouts have closed the flood. Bounded: 40 tries.
    let mut answered = None;
    for _ in 0..40 {
        if let Ok(mut s) = connect_from(Ipv4Addr::new(127, 0, 0, 1), gw.addr()).await {
            if s.write_all(HEALTHZ).await.is_ok() {
                match read_status(&mut s, Duration::from_secs(2)).await {
                    Some(204) => {
                        answered = Some(204);
                        break;
                    }
                    other => answered = other,
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(answered, Some(204), "a new client was locked out");

    // labgate closed every idle and every dribbling connection.
    for s in &mut idle {
        assert!(
            closed_by_server(s, Duration::from_secs(10)).await,
            "an idle keep-alive connection was never closed"
        );
    }
    for d in drips {
        assert!(
            d.await.expect("drip task"),
            "a slowloris connection was never closed"
        );
    }
    let metrics = gw.metrics_text().await;
    for reason in ["keepalive_timeout", "header_timeout", "total"] {
        let v = metric_value(
            &metrics,
            &format!("labgate_client_connections_closed_total{{reason=\"{reason}\"}}"),
        )
        .unwrap_or(0.0);
        assert!(v > 0.0, "no connection closed for {reason}:\n{metrics}");
    }
}

#[tokio::test]
async fn one_address_cannot_take_every_connection() {
    let cfg = gateway_cfg(ConnCfg {
        keepalive_timeout: "60s".into(),
        header_timeout: "60s".into(),
        max_connections: 100,
        max_connections_per_client: 3,
    });
    let gw = Gateway::start(&cfg).await;
    let hog = Ipv4Addr::new(127, 0, 2, 7);
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = connect_from(hog, gw.addr()).await.expect("connect");
        s.write_all(HEALTHZ).await.expect("send");
        assert_eq!(read_status(&mut s, Duration::from_secs(5)).await, Some(204));
        held.push(s);
    }
    let mut fourth = connect_from(hog, gw.addr()).await.expect("connect");
    let mut answer = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), fourth.read_to_string(&mut answer)).await;
    assert!(
        answer.starts_with("HTTP/1.1 429") && answer.contains("Too many connections"),
        "{answer:?}"
    );

    let mut other = connect_from(Ipv4Addr::new(127, 0, 2, 8), gw.addr())
        .await
        .expect("connect");
    other.write_all(HEALTHZ).await.expect("send");
    assert_eq!(
        read_status(&mut other, Duration::from_secs(5)).await,
        Some(204)
    );

    // A connection closed gives its slot back (bounded retries: the close is async).
    drop(held.pop());
    let mut admitted = false;
    for _ in 0..50 {
        let mut s = connect_from(hog, gw.addr()).await.expect("connect");
        s.write_all(HEALTHZ).await.expect("send");
        if read_status(&mut s, Duration::from_secs(5)).await == Some(204) {
            admitted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(admitted, "a freed slot was never given back");
}

#[tokio::test]
async fn the_header_timeout_ends_with_the_header_not_with_a_long_answer() {
    // A long-poll outlasts the header timeout by far; it must still get its answer, and
    // the connection must serve the next request.
    let gw = Gateway::start(&gateway_cfg(ConnCfg {
        keepalive_timeout: "10s".into(),
        header_timeout: "1s".into(),
        max_connections: 100,
        max_connections_per_client: 10,
    }))
    .await;
    create_session(&gw).await;
    let (waiting, _) = create_session(&gw).await;
    let mut c = RawConn::connect(gw.addr()).await.expect("connect");
    let poll = format!("GET /session/{waiting}?wait=3 HTTP/1.1\r\nHost: x\r\n\r\n");
    c.send(poll.as_bytes()).await.expect("send");
    let answer = c
        .read_response(false)
        .await
        .expect("the long-poll's answer");
    assert_eq!(answer.status, 200, "{}", answer.text());
    c.send(HEALTHZ).await.expect("send");
    assert_eq!(
        c.read_response(false).await.expect("next answer").status,
        204
    );
}

/// The `reason`'s count of closed connections.
async fn closed_for(gw: &Gateway, reason: &str) -> f64 {
    metric_value(
        &gw.metrics_text().await,
        &format!("labgate_client_connections_closed_total{{reason=\"{reason}\"}}"),
    )
    .unwrap_or(0.0)
}

#[tokio::test]
async fn a_kept_alive_connection_may_idle_past_the_header_timeout_but_not_past_keepalive() {
    // The header clock of a kept-alive request starts at its first byte: idling longer
    // than `header_timeout` (but within `keepalive_timeout`) between requests is fine.
    // Margins of seconds either way, so a loaded machine's stalls do not decide it.
    let gw = Gateway::start(&gateway_cfg(ConnCfg {
        keepalive_timeout: "7s".into(),
        header_timeout: "2s".into(),
        max_connections: 100,
        max_connections_per_client: 10,
    }))
    .await;
    let mut c = RawConn::connect(gw.addr()).await.expect("connect");
    c.send(HEALTHZ).await.expect("send");
    assert_eq!(c.read_response(false).await.expect("answer").status, 204);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    // Half a header now, the rest later: still within the header timeout of its first byte.
    c.send(b"GET /healthz HTTP/1.1\r\n").await.expect("send");
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.send(b"Host: x\r\n\r\n").await.expect("send");
    assert_eq!(
        c.read_response(false)
            .await
            .expect("answer after idling")
            .status,
        204
    );
    // Then idle past the keep-alive timeout: closed, and counted as such.
    assert!(
        c.closed_within(Duration::from_secs(15)).await,
        "an idle kept-alive connection stayed open"
    );
    assert_eq!(
        closed_for(&gw, "keepalive_timeout").await,
        1.0,
        "{}",
        gw.metrics_text().await
    );
    assert_eq!(closed_for(&gw, "header_timeout").await, 0.0);
}

#[tokio::test]
async fn a_kept_alive_request_dribbling_its_header_is_closed_by_the_header_timeout() {
    // The first byte comes in time; the header never completes: the header timeout
    // (from that byte) closes it, although the keep-alive timeout is far away.
    let gw = Gateway::start(&gateway_cfg(ConnCfg {
        keepalive_timeout: "60s".into(),
        header_timeout: "1s".into(),
        max_connections: 100,
        max_connections_per_client: 10,
    }))
    .await;
    let mut c = connect_from(Ipv4Addr::new(127, 0, 0, 1), gw.addr())
        .await
        .expect("connect");
    c.write_all(HEALTHZ).await.expect("send");
    assert_eq!(read_status(&mut c, Duration::from_secs(5)).await, Some(204));
    c.write_all(b"GET /healthz HTTP/1.1\r\n")
        .await
        .expect("send");
    let mut closed = false;
    // Bounded: a line every 300 ms for at most 30 s, far below the keep-alive timeout.
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if c.write_all(b"X-Drip: 1\r\n").await.is_err() {
            closed = true;
            break;
        }
        let mut b = [0u8; 512];
        if let Ok(r) = tokio::time::timeout(Duration::ZERO, c.read(&mut b)).await {
            // EOF or an error: labgate let go.
            assert!(matches!(r, Ok(0) | Err(_)), "answered a partial header");
            closed = true;
            break;
        }
    }
    assert!(closed, "a dribbled kept-alive header was never closed");
    assert_eq!(closed_for(&gw, "header_timeout").await, 1.0);
    assert_eq!(closed_for(&gw, "keepalive_timeout").await, 0.0);
}

#[tokio::test]
async fn client_sockets_have_tcp_keepalive() {
    let ss = require_tool("ss");
    let gw = Gateway::start(&gateway_cfg(ConnCfg {
        keepalive_timeout: "60s".into(),
        header_timeout: "60s".into(),
        max_connections: 100,
        max_connections_per_client: 10,
    }))
    .await;
    let mut s = TcpStream::connect(gw.addr()).await.expect("connect");
    s.write_all(HEALTHZ).await.expect("send");
    assert_eq!(read_status(&mut s, Duration::from_secs(5)).await, Some(204));
    let local = s.local_addr().expect("local addr");
    let out = run_bounded(
        std::process::Command::new(ss).args([
            "-tnoH",
            "state",
            "established",
            &format!("( sport = :{} and dport = :{} )", gw.port, local.port()),
        ]),
        Duration::from_secs(10),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("timer:(keepalive"),
        "labgate's side of a client connection has no TCP keepalive: {text:?}"
    );
}

//! Contract §7 "cut on end" against the real binary: when a session stops being ACTIVE,
//! its in-flight requests and upgraded connections end on both sides (client and
//! upstream), the next session works normally on fresh upstream connections, and
//! `labgate_connections_cut_total` counts what was cut.
//!
//! Cases: an idle WebSocket, a slow streamed upload, a slow streamed download and a
//! long-running request, each ended by `DELETE`; a WebSocket and a long request ended by
//! the reaper (hold limit, short timeouts); a stale session reaped with only a pooled
//! upstream connection. Each case prints its measured cut latency; the only assertion on
//! time is a generous bound (the contract's target is 100 ms).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// The one bound on time asserted here; the figures are printed.
const GENEROUS: Duration = Duration::from_secs(2);
/// How long any single wait in this file may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(10);

// ------------------------------------------------------------------ upstream that logs connections

/// One request as the upstream saw it, with the connection it came on.
#[derive(Debug, Clone)]
struct Seen {
    conn: u64,
    target: String,
    seq: Option<u64>,
}

#[derive(Default)]
struct UpLog {
    /// Connection id -> when the upstream saw it end (EOF, error), if it did.
    closed: HashMap<u64, Option<Instant>>,
    requests: Vec<Seen>,
    /// WebSocket connection id -> when it ended, if it did.
    ws_closed: HashMap<u64, Option<Instant>>,
}

/// An upstream on raw sockets, so it can tell which connection each request came on and
/// when each connection ended, which hyper does not expose. Paths (under `/lab`):
/// `hold` never answers (waits for the connection to end); `upload` reads a body for
/// as long as it comes; `drip` streams a chunk every 50 ms; anything else answers 200
/// `{"conn": N}` and keeps the connection alive. A second listener is a WebSocket echo.
struct ConnUpstream {
    addr: SocketAddr,
    ws_addr: SocketAddr,
    log: Arc<Mutex<UpLog>>,
    upload_bytes: Arc<AtomicU64>,
    ws_handshakes: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl ConnUpstream {
    async fn start() -> ConnUpstream {
        let http = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let ws = TcpListener::bind("127.0.0.1:0").await.expect("bind ws");
        let addr = http.local_addr().expect("addr");
        let ws_addr = ws.local_addr().expect("ws addr");
        let log: Arc<Mutex<UpLog>> = Arc::default();
        let upload_bytes = Arc::new(AtomicU64::new(0));
        let ws_handshakes = Arc::new(AtomicUsize::new(0));
        let next_conn = Arc::new(AtomicU64::new(1));
        let http_task = {
            let (log, upload_bytes, next_conn) =
                (log.clone(), upload_bytes.clone(), next_conn.clone());
            tokio::spawn(async move {
                while let Ok((stream, _)) = http.accept().await {
                    let conn = next_conn.fetch_add(1, Ordering::SeqCst);
                    log.lock().expect("log").closed.insert(conn, None);
                    let (log, upload_bytes) = (log.clone(), upload_bytes.clone());
                    tokio::spawn(async move {
                        serve_http(stream, conn, &log, &upload_bytes).await;
                        log.lock()
                            .expect("log")
                            .closed
                            .insert(conn, Some(Instant::now()));
                    });
                }
            })
        };
        let ws_task = {
            let (log, handshakes) = (log.clone(), ws_handshakes.clone());
            tokio::spawn(async move {
                while let Ok((stream, _)) = ws.accept().await {
                    let conn = next_conn.fetch_add(1, Ordering::SeqCst);
                    log.lock().expect("log").ws_closed.insert(conn, None);
                    let (log, handshakes) = (log.clone(), handshakes.clone());
                    tokio::spawn(async move {
                        if let Ok(mut socket) = tokio_tungstenite::accept_async(stream).await {
                            handshakes.fetch_add(1, Ordering::SeqCst);
                            while let Some(Ok(msg)) = socket.next().await {
                                if (msg.is_text() || msg.is_binary())
                                    && socket.send(msg).await.is_err()
                                {
                                    break;
                                }
                            }
                        }
                        log.lock()
                            .expect("log")
                            .ws_closed
                            .insert(conn, Some(Instant::now()));
                    });
                }
            })
        };
        ConnUpstream {
            addr,
            ws_addr,
            log,
            upload_bytes,
            ws_handshakes,
            tasks: vec![http_task, ws_task],
        }
    }

    fn requests(&self) -> Vec<Seen> {
        self.log.lock().expect("log").requests.clone()
    }

    /// The connection the (last) request for `target` came on.
    fn conn_of(&self, target: &str) -> Option<u64> {
        self.requests()
            .iter()
            .rev()
            .find(|r| r.target == target)
            .map(|r| r.conn)
    }

    /// Connections that carried a request with this seq.
    fn conns_of_seq(&self, seq: u64) -> Vec<u64> {
        self.requests()
            .iter()
            .filter(|r| r.seq == Some(seq))
            .map(|r| r.conn)
            .collect()
    }

    fn closed_at(&self, conn: u64) -> Option<Instant> {
        self.log
            .lock()
            .expect("log")
            .closed
            .get(&conn)
            .copied()
            .flatten()
    }

    /// The WebSocket connections accepted so far, oldest first, and when each ended.
    fn ws_conns(&self) -> Vec<(u64, Option<Instant>)> {
        let mut v: Vec<_> = self
            .log
            .lock()
            .expect("log")
            .ws_closed
            .iter()
            .map(|(c, t)| (*c, *t))
            .collect();
        v.sort_by_key(|(c, _)| *c);
        v
    }

    fn cfg(&self) -> Cfg {
        Cfg::bare()
            .upstream(UpstreamCfg::new("lab", self.addr).routes(&["/lab"]))
            .upstream(UpstreamCfg::new("console", self.ws_addr).routes(&["/lab/ws"]))
    }
}

impl Drop for ConnUpstream {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reads until `buf` holds a request head; `None` when the connection ends first.
async fn read_head(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 4);
            return Some(head);
        }
        let mut chunk = [0u8; 8192];
        match tokio::time::timeout(Duration::from_secs(60), s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    }
}

/// Reads (and counts into `count`) until the connection ends, at most a minute.
async fn read_to_end(s: &mut TcpStream, count: Option<&AtomicU64>) {
    let mut chunk = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
        if n == 0 {
            break;
        }
        if let Some(c) = count {
            c.fetch_add(n as u64, Ordering::SeqCst);
        }
    }
}

async fn serve_http(mut s: TcpStream, conn: u64, log: &Mutex<UpLog>, upload_bytes: &AtomicU64) {
    let mut buf = Vec::new();
    while let Some(head) = read_head(&mut s, &mut buf).await {
        let mut lines = head.split("\r\n");
        let target = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .unwrap_or_default()
            .to_string();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let get = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        let seq = get("x-lab-session-seq").and_then(|v| v.parse().ok());
        log.lock().expect("log").requests.push(Seen {
            conn,
            target: target.clone(),
            seq,
        });
        if target.starts_with("/lab/hold") {
            read_to_end(&mut s, None).await;
            return;
        }
        if target.starts_with("/lab/upload") {
            upload_bytes.fetch_add(buf.len() as u64, Ordering::SeqCst);
            read_to_end(&mut s, Some(upload_bytes)).await;
            return;
        }
        if target.starts_with("/lab/drip") {
            drip(&mut s).await;
            return;
        }
        // A plain request: skip a Content-Length body, answer, keep the connection.
        let len: usize = get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < len {
            let mut chunk = [0u8; 8192];
            match s.read(&mut chunk).await {
                Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                _ => return,
            }
        }
        buf.drain(..len);
        let body = format!("{{\"conn\":{conn}}}");
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        if s.write_all(resp.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// A chunked response, 1 KiB every 50 ms, until the connection ends (at most a minute).
async fn drip(s: &mut TcpStream) {
    let head = "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n\
                transfer-encoding: chunked\r\n\r\n";
    if s.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    let chunk = format!("400\r\n{}\r\n", "x".repeat(1024));
    let (mut rd, mut wr) = s.split();
    let mut scratch = [0u8; 1024];
    for _ in 0..1200 {
        tokio::select! {
            r = rd.read(&mut scratch) => match r {
                Ok(n) if n > 0 => {}
                _ => return,
            },
            _ = tokio::time::sleep(Duration::from_millis(50)) => {
                if wr.write_all(chunk.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    }
}

// ------------------------------------------------------------------ client side

/// How a client connection ended.
#[derive(Debug)]
struct Ended {
    at: Instant,
    how: String,
    /// Everything received (raw HTTP cases).
    bytes: Vec<u8>,
}

/// A raw client connection whose read side is watched by a task until it ends.
struct Watched {
    received: Arc<Mutex<Vec<u8>>>,
    reader: tokio::task::JoinHandle<Ended>,
    /// Kept open: dropping it would half-close the connection from the client's side.
    writer: Option<OwnedWriteHalf>,
}

async fn open_watched(gw: &Gateway, head: &str) -> Watched {
    let stream = TcpStream::connect(gw.addr()).await.expect("connect");
    let (mut rd, mut wr) = stream.into_split();
    wr.write_all(head.as_bytes()).await.expect("send head");
    let received: Arc<Mutex<Vec<u8>>> = Arc::default();
    let r2 = received.clone();
    let reader = tokio::spawn(async move {
        let mut chunk = [0u8; 16 * 1024];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let how = match tokio::time::timeout_at(deadline, rd.read(&mut chunk)).await {
                Ok(Ok(0)) => "EOF".to_string(),
                Ok(Ok(n)) => {
                    r2.lock().expect("buf").extend_from_slice(&chunk[..n]);
                    continue;
                }
                Ok(Err(e)) => format!("error: {e}"),
                Err(_) => "still open after 30 s".to_string(),
            };
            let bytes = r2.lock().expect("buf").clone();
            return Ended {
                at: Instant::now(),
                how,
                bytes,
            };
        }
    });
    Watched {
        received,
        reader,
        writer: Some(wr),
    }
}

impl Watched {
    fn received_len(&self) -> usize {
        self.received.lock().expect("buf").len()
    }

    /// Waits for the end of the connection (bounded).
    async fn ended(&mut self) -> Ended {
        let ended = tokio::time::timeout(PATIENCE, &mut self.reader)
            .await
            .expect("connection ended in time")
            .expect("reader task");
        self.writer.take();
        ended
    }
}

fn ws_request(
    gw: &Gateway,
    id: &str,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut req = format!("ws://127.0.0.1:{}/lab/ws", gw.port)
        .into_client_request()
        .expect("ws request");
    req.headers_mut()
        .insert("X-Session-ID", id.parse().expect("header value"));
    req
}

/// How often a WebSocket is opened again when pingora tore it down right after its `101`.
const UPGRADE_ATTEMPTS: usize = 5;

/// pingora 0.9.1 sometimes ends an upgraded connection right after the `101`, when it
/// reads the upstream's `101` before the upgrade request's (empty) body end
/// (cloudflare/pingora#946; fix proposed in #947). That is not the cut under test, so
/// such an attempt is reported and made again, at most [`UPGRADE_ATTEMPTS`] times.
fn torn_down_at_upgrade(id: &str, attempt: usize, how: &str) {
    println!(
        "pingora#946: WebSocket of {} torn down right after its 101 ({how}); attempt {} of {UPGRADE_ATTEMPTS}",
        &id[..8],
        attempt + 1
    );
}

/// Opens a WebSocket for `id` and watches it (sending nothing) until it ends; it is
/// known to be open 100 ms after the handshake.
async fn open_idle_ws(gw: &Gateway, id: &str) -> tokio::task::JoinHandle<Ended> {
    for attempt in 0..UPGRADE_ATTEMPTS {
        let (mut socket, resp) = tokio::time::timeout(
            PATIENCE,
            tokio_tungstenite::connect_async(ws_request(gw, id)),
        )
        .await
        .expect("handshake in time")
        .expect("handshake");
        assert_eq!(resp.status().as_u16(), 101);
        let watcher = tokio::spawn(async move {
            let how = match tokio::time::timeout(Duration::from_secs(30), socket.next()).await {
                Ok(None) => "stream ended".to_string(),
                Ok(Some(Ok(Message::Close(frame)))) => format!("close frame {frame:?}"),
                Ok(Some(Ok(other))) => format!("unexpected message {other:?}"),
                Ok(Some(Err(e))) => format!("error: {e}"),
                Err(_) => "still open after 30 s".to_string(),
            };
            Ended {
                at: Instant::now(),
                how,
                bytes: Vec::new(),
            }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        if !watcher.is_finished() {
            return watcher;
        }
        let ended = watcher.await.expect("watcher");
        torn_down_at_upgrade(id, attempt, &ended.how);
    }
    panic!("no WebSocket of {id} stayed open for 100 ms in {UPGRADE_ATTEMPTS} attempts");
}

/// A WebSocket of `id` that echoes, then closes cleanly.
async fn ws_echo_works(gw: &Gateway, id: &str) {
    for attempt in 0..UPGRADE_ATTEMPTS {
        let (mut socket, resp) = tokio::time::timeout(
            PATIENCE,
            tokio_tungstenite::connect_async(ws_request(gw, id)),
        )
        .await
        .expect("handshake in time")
        .expect("handshake");
        assert_eq!(resp.status().as_u16(), 101);
        // A send may still succeed into a connection that is already closing.
        let _ = socket.send(Message::text("ping")).await;
        let echo = tokio::time::timeout(PATIENCE, socket.next())
            .await
            .expect("echo in time");
        match echo {
            Some(Ok(m)) => {
                assert_eq!(m, Message::text("ping"));
                let _ = socket.close(None).await;
                return;
            }
            None => torn_down_at_upgrade(id, attempt, "stream ended"),
            Some(Err(e)) => torn_down_at_upgrade(id, attempt, &e.to_string()),
        }
    }
    panic!("no WebSocket of {id} echoed in {UPGRADE_ATTEMPTS} attempts");
}

fn signed_ms(at: Instant, since: Instant) -> f64 {
    if at >= since {
        (at - since).as_secs_f64() * 1e3
    } else {
        -((since - at).as_secs_f64() * 1e3)
    }
}

// ------------------------------------------------------------------ the cases

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    WebSocket,
    Upload,
    Download,
    LongRequest,
}

impl Case {
    fn name(self) -> &'static str {
        match self {
            Case::WebSocket => "idle websocket",
            Case::Upload => "slow upload",
            Case::Download => "slow download",
            Case::LongRequest => "long request",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The holder DELETEs its session; the next one waits already.
    Delete,
    /// The reaper expires the holder (max_hold 1 s, active_timeout 2 s) once a second
    /// session arrives, after the holder sat past its idle timeout with the connection
    /// open (which keeps it from being reaped as stale).
    MaxHold,
}

/// What is in flight for the holder when its session ends.
enum Live {
    Ws(tokio::task::JoinHandle<Ended>),
    Raw(Watched, Option<tokio::task::JoinHandle<()>>),
}

async fn start_live(case: Case, gw: &Gateway, up: &ConnUpstream, a: &str) -> Live {
    match case {
        Case::WebSocket => {
            let live = open_idle_ws(gw, a).await;
            eventually(PATIENCE, "upstream WebSocket handshake", || async {
                (up.ws_handshakes.load(Ordering::SeqCst) >= 1).then_some(())
            })
            .await;
            Live::Ws(live)
        }
        Case::Upload => {
            let mut w = open_watched(
                gw,
                &format!(
                    "PUT /lab/upload HTTP/1.1\r\nHost: x\r\nX-Session-ID: {a}\r\n\
                     Transfer-Encoding: chunked\r\n\r\n"
                ),
            )
            .await;
            let mut wr = w.writer.take().expect("writer");
            // 1 KiB every 50 ms, until the connection breaks (at most a minute).
            let sender = tokio::spawn(async move {
                let chunk = format!("400\r\n{}\r\n", "u".repeat(1024));
                for _ in 0..1200 {
                    if wr.write_all(chunk.as_bytes()).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            });
            eventually(PATIENCE, "upload bytes reach the upstream", || async {
                (up.upload_bytes.load(Ordering::SeqCst) >= 2048).then_some(())
            })
            .await;
            Live::Raw(w, Some(sender))
        }
        Case::Download => {
            let w = open_watched(
                gw,
                &format!("GET /lab/drip HTTP/1.1\r\nHost: x\r\nX-Session-ID: {a}\r\n\r\n"),
            )
            .await;
            // The head and a few chunks arrived.
            eventually(PATIENCE, "download under way", || async {
                (w.received_len() > 3000).then_some(())
            })
            .await;
            Live::Raw(w, None)
        }
        Case::LongRequest => {
            let w = open_watched(
                gw,
                &format!("GET /lab/hold HTTP/1.1\r\nHost: x\r\nX-Session-ID: {a}\r\n\r\n"),
            )
            .await;
            eventually(PATIENCE, "long request reaches the upstream", || async {
                up.conn_of("/lab/hold").map(|_| ())
            })
            .await;
            Live::Raw(w, None)
        }
    }
}

/// The upstream connection the live request is on (`None` for the WebSocket).
fn live_conn(case: Case, up: &ConnUpstream) -> Option<u64> {
    match case {
        Case::WebSocket => None,
        Case::Upload => up.conn_of("/lab/upload"),
        Case::Download => up.conn_of("/lab/drip"),
        Case::LongRequest => up.conn_of("/lab/hold"),
    }
}

async fn metric0(gw: &Gateway, sample: &str) -> f64 {
    gw.metric(sample).await.unwrap_or(0.0)
}

/// `GET /lab/hello` of `id`: the upstream connection it came on.
async fn hello(gw: &Gateway, id: &str) -> u64 {
    let (status, body) = lab_get(gw, "/lab/hello", id).await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    v["conn"].as_u64().expect("conn")
}

async fn cut_case(case: Case, end: End) {
    let up = ConnUpstream::start().await;
    let cfg = match end {
        End::Delete => up.cfg(),
        End::MaxHold => up.cfg().timeouts("2s", "30s").max_hold("1s"),
    };
    let gw = Gateway::start(&cfg).await;
    let (a, _) = create_session(&gw).await;
    // A finished request first: its connection goes to the pool, and must stay unused
    // by the next session.
    hello(&gw, &a).await;
    let seq_a = up.requests()[0].seq.expect("seq");
    let waiting = match end {
        End::Delete => Some(create_session(&gw).await.0),
        End::MaxHold => None,
    };
    let mut live = start_live(case, &gw, &up, &a).await;
    let cut_before = metric0(&gw, "labgate_connections_cut_total").await;

    let (b, sent, acked) = match end {
        End::Delete => {
            let sent = Instant::now();
            assert_eq!(delete_session(&gw, &a).await, 204);
            (waiting.expect("waiting session"), sent, Instant::now())
        }
        End::MaxHold => {
            // Past the 2 s idle timeout with nothing but the open connection: an open
            // connection keeps the session from being reaped as stale.
            tokio::time::sleep(Duration::from_millis(2500)).await;
            assert_eq!(active_session(&gw).await.as_deref(), Some(tag(&a).as_str()));
            let sent = Instant::now();
            let (b, _) = create_session(&gw).await;
            (b, sent, Instant::now())
        }
    };

    // The client's side.
    let ended = match &mut live {
        Live::Ws(task) => tokio::time::timeout(PATIENCE, task)
            .await
            .expect("websocket ended in time")
            .expect("task"),
        Live::Raw(w, sender) => {
            let e = w.ended().await;
            if let Some(s) = sender.take() {
                tokio::time::timeout(PATIENCE, s)
                    .await
                    .expect("upload sender stopped")
                    .expect("task");
            }
            e
        }
    };
    let event = match end {
        End::Delete => "delete",
        End::MaxHold => "max_hold expiry",
    };
    let since = match end {
        End::Delete => "the DELETE answer",
        End::MaxHold => "the waiting session's 201 (reap interval 50 ms)",
    };
    assert!(
        ended.at >= sent,
        "{}: the client's connection ended before its session did ({})",
        case.name(),
        ended.how
    );
    assert!(
        ended.at.saturating_duration_since(sent) < GENEROUS,
        "{}: the client's connection ended {:?} after the end began ({})",
        case.name(),
        ended.at - sent,
        ended.how
    );

    // The upstream's side.
    let up_closed = match case {
        Case::WebSocket => {
            // The last one is the live one (earlier ones were torn down at the upgrade).
            eventually(PATIENCE, "upstream WebSocket closed", || async {
                up.ws_conns().last().expect("a WebSocket connection").1
            })
            .await
        }
        _ => {
            let conn = live_conn(case, &up).expect("live connection");
            eventually(PATIENCE, "upstream connection closed", || async {
                up.closed_at(conn)
            })
            .await
        }
    };
    assert!(up_closed.saturating_duration_since(sent) < GENEROUS);
    let text = String::from_utf8_lossy(&ended.bytes).into_owned();
    println!(
        "cut latency ({}, {event}): client {:.1} ms, upstream {:.1} ms after {since}; \
         {:.1} ms / {:.1} ms after the request ending it was sent (client saw: {:?} then {})",
        case.name(),
        signed_ms(ended.at, acked),
        signed_ms(up_closed, acked),
        signed_ms(ended.at, sent),
        signed_ms(up_closed, sent),
        text.lines().next().unwrap_or("no response"),
        ended.how,
    );

    // What the client got before the end.
    match case {
        Case::WebSocket => {}
        Case::LongRequest => {
            assert!(
                text.starts_with("HTTP/1.1 423 "),
                "long request got {text:?}"
            );
            assert!(
                text.ends_with(concat!(r#"{"detail":"Session is not active"}"#, "\n")),
                "{text:?}"
            );
        }
        // The client may see a reset before it reads the 423 (its body was unread).
        Case::Upload => assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 423 "),
            "upload got {text:?}"
        ),
        // The head went out long ago: a truncated body is the only signal.
        Case::Download => {
            assert!(text.starts_with("HTTP/1.1 200 "), "{text:?}");
            assert!(!text.ends_with("0\r\n\r\n"), "the download was completed");
        }
    }

    // Counted once; the ended session is gone.
    eventually(PATIENCE, "cut counted", || async {
        (metric0(&gw, "labgate_connections_cut_total").await > cut_before).then_some(())
    })
    .await;
    assert_eq!(
        metric0(&gw, "labgate_connections_cut_total").await,
        cut_before + 1.0
    );
    let reason = match end {
        End::Delete => "deleted",
        End::MaxHold => "expired",
    };
    assert_eq!(
        gw.metric(&format!(
            r#"labgate_sessions_ended_total{{reason="{reason}"}}"#
        ))
        .await,
        Some(1.0)
    );
    assert_eq!(get_session(&gw, &a).await.0, 404);
    assert_eq!(lab_get(&gw, "/lab/hello", &a).await.0, 404);

    // The next session works normally, on upstream connections the cut one never used.
    assert_eq!(active_session(&gw).await.as_deref(), Some(tag(&b).as_str()));
    let used_by_a = up.conns_of_seq(seq_a);
    assert!(!used_by_a.is_empty());
    let before_b = up.requests().len();
    let conn_b = hello(&gw, &b).await;
    assert!(
        !used_by_a.contains(&conn_b),
        "the next session's first request came on connection {conn_b}, used by the cut session: {used_by_a:?}"
    );
    let seen_b = &up.requests()[before_b];
    assert!(seen_b.seq.expect("seq") > seq_a);
    assert_eq!(hello(&gw, &b).await, conn_b, "keep-alive to the upstream");
    ws_echo_works(&gw, &b).await;
    // Nothing of b's was cut.
    assert_eq!(
        metric0(&gw, "labgate_connections_cut_total").await,
        cut_before + 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_cuts_an_idle_websocket() {
    cut_case(Case::WebSocket, End::Delete).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_cuts_a_slow_upload() {
    cut_case(Case::Upload, End::Delete).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_cuts_a_slow_download() {
    cut_case(Case::Download, End::Delete).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_cuts_a_long_running_request() {
    cut_case(Case::LongRequest, End::Delete).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_hold_expiry_cuts_an_idle_websocket() {
    cut_case(Case::WebSocket, End::MaxHold).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_hold_expiry_cuts_a_long_running_request() {
    cut_case(Case::LongRequest, End::MaxHold).await;
}

/// A session reaped as stale has nothing in flight (an open request would have kept it),
/// so nothing is cut; its pooled upstream connection is never handed to the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_session_cuts_nothing_and_its_pooled_connection_is_not_reused() {
    let up = ConnUpstream::start().await;
    let gw = Gateway::start(&up.cfg().timeouts("1s", "30s")).await;
    let (a, _) = create_session(&gw).await;
    let conn_a = hello(&gw, &a).await;
    let (b, _) = create_session(&gw).await;
    eventually(PATIENCE, "stale holder reaped", || async {
        (active_session(&gw).await.as_deref() == Some(tag(&b).as_str())).then_some(())
    })
    .await;
    assert_eq!(
        gw.metric(r#"labgate_sessions_ended_total{reason="stale"}"#)
            .await,
        Some(1.0)
    );
    assert_eq!(metric0(&gw, "labgate_connections_cut_total").await, 0.0);
    let conn_b = hello(&gw, &b).await;
    assert_ne!(
        conn_b, conn_a,
        "the reaped session's pooled connection was reused"
    );
    ws_echo_works(&gw, &b).await;
}

/// Everything a session has in flight is cut at once, and counted once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_cuts_everything_in_flight_at_once() {
    let up = ConnUpstream::start().await;
    let gw = Gateway::start(&up.cfg()).await;
    let (a, _) = create_session(&gw).await;
    let (b, _) = create_session(&gw).await;
    let ws = open_idle_ws(&gw, &a).await;
    let mut raws = Vec::new();
    for path in ["/lab/hold/1", "/lab/hold/2", "/lab/drip"] {
        raws.push(
            open_watched(
                &gw,
                &format!("GET {path} HTTP/1.1\r\nHost: x\r\nX-Session-ID: {a}\r\n\r\n"),
            )
            .await,
        );
    }
    eventually(PATIENCE, "everything reached the upstream", || async {
        let targets: Vec<String> = up.requests().into_iter().map(|r| r.target).collect();
        (up.ws_handshakes.load(Ordering::SeqCst) >= 1
            && ["/lab/hold/1", "/lab/hold/2", "/lab/drip"]
                .iter()
                .all(|t| targets.iter().any(|s| s == t)))
        .then_some(())
    })
    .await;
    let conns: Vec<u64> = up.requests().iter().map(|r| r.conn).collect();
    let cut_before = metric0(&gw, "labgate_connections_cut_total").await;
    let sent = Instant::now();
    assert_eq!(delete_session(&gw, &a).await, 204);
    let acked = Instant::now();
    let mut ends = vec![
        tokio::time::timeout(PATIENCE, ws)
            .await
            .expect("websocket ended")
            .expect("task")
            .at,
    ];
    for w in &mut raws {
        ends.push(w.ended().await.at);
    }
    assert!(
        ends.iter().all(|e| *e >= sent),
        "a connection ended before its session did"
    );
    let last = ends.iter().max().copied().expect("ends");
    assert!(last.saturating_duration_since(sent) < GENEROUS);
    for conn in &conns {
        eventually(PATIENCE, "upstream connection closed", || async {
            up.closed_at(*conn)
        })
        .await;
    }
    println!(
        "cut latency (4 connections at once, delete): last client end {:.1} ms after the DELETE answer ({:.1} ms after it was sent)",
        signed_ms(last, acked),
        signed_ms(last, sent)
    );
    let cut = metric0(&gw, "labgate_connections_cut_total").await - cut_before;
    if cut != 4.0 {
        for l in gw.log().lines().filter(|l| l.contains("labgate::")) {
            eprintln!("{l}");
        }
    }
    assert_eq!(cut, 4.0, "connections cut");
    let conn_b = hello(&gw, &b).await;
    assert!(!conns.contains(&conn_b));
    ws_echo_works(&gw, &b).await;
}

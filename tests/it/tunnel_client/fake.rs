//! An in-process fake of labgate's tunnel side, written from
//! docs/tunnel-protocol.md alone, to test the `labgate` client without the
//! server: the session API (a FIFO of ids, enough for `labgate run`), `GET /tunnels`,
//! and `GET /lab/tunnel/{target}` upgraded to a WebSocket spliced to a device on
//! loopback. Ending a session closes its tunnels with 4001 `session ended: <reason>`.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// What the fake saw and holds.
#[derive(Default)]
pub struct State {
    /// Sessions in FIFO order; the front one is ACTIVE.
    pub queue: VecDeque<String>,
    pub created: u64,
    /// Allowed targets as the client spells them (`r1:22`) -> the device's address.
    pub targets: HashMap<String, SocketAddr>,
    /// Every tunnel request: (path, X-Session-ID).
    pub tunnel_requests: Vec<(String, Option<String>)>,
    /// Tunnels spliced to a device so far, and open now.
    pub opened: usize,
    pub open_now: usize,
    /// When each 4001 close was sent.
    pub ends_sent: Vec<Instant>,
}

pub struct FakeGate {
    pub url: String,
    state: Arc<Mutex<State>>,
    ended: broadcast::Sender<(String, String)>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeGate {
    /// A fake gate allowing `targets` (`("r1:22", device address)`).
    pub async fn start(targets: &[(&str, SocketAddr)]) -> FakeGate {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake gate");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let state = Arc::new(Mutex::new(State {
            targets: targets.iter().map(|(t, a)| (t.to_string(), *a)).collect(),
            ..State::default()
        }));
        let (ended, _) = broadcast::channel(16);
        let (st, tx) = (state.clone(), ended.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (st, tx) = (st.clone(), tx.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let (st, tx) = (st.clone(), tx.clone());
                        async move { Ok::<_, Infallible>(answer(req, st, tx).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        FakeGate {
            url,
            state,
            ended,
            task,
        }
    }

    pub fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().expect("fake state"))
    }

    /// Queues a new session; returns its id (ACTIVE if the queue was empty).
    pub fn add_session(&self) -> String {
        self.with(|s| {
            s.created += 1;
            let id = format!("fake-{}", s.created);
            s.queue.push_back(id.clone());
            id
        })
    }

    /// Ends `id` as labgate would: removed from the queue, its tunnels closed with 4001
    /// `session ended: <reason>`.
    pub fn end(&self, id: &str, reason: &str) {
        self.with(|s| s.queue.retain(|q| q != id));
        let _ = self
            .ended
            .send((id.to_string(), format!("session ended: {reason}")));
    }

    /// Waits (bounded) until `n` tunnels are open at once.
    pub async fn wait_open(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.with(|s| s.open_now) != n {
            assert!(Instant::now() < deadline, "never {n} tunnels open");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for FakeGate {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn json(status: u16, body: serde_json::Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("fake response")
}

fn detail(status: u16, d: &str) -> Response<Full<Bytes>> {
    json(status, serde_json::json!({ "detail": d }))
}

async fn answer(
    mut req: Request<hyper::body::Incoming>,
    state: Arc<Mutex<State>>,
    ended: broadcast::Sender<(String, String)>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let session = req
        .headers()
        .get("x-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let known = |id: &str| {
        state
            .lock()
            .expect("fake state")
            .queue
            .iter()
            .any(|q| q == id)
    };
    match (req.method().as_str(), path.as_str()) {
        ("POST", "/session") => {
            let mut s = state.lock().expect("fake state");
            s.created += 1;
            let id = format!("fake-{}", s.created);
            s.queue.push_back(id.clone());
            let position = s.queue.len() - 1;
            json(
                201,
                serde_json::json!({"session_id": id, "position": position}),
            )
        }
        ("POST", "/session/heartbeat") => match session {
            Some(id) if known(&id) => json(200, serde_json::json!({"status": "alive"})),
            _ => detail(404, "Session not found"),
        },
        ("GET", p) if p.starts_with("/session/") => {
            let id = &p["/session/".len()..];
            let s = state.lock().expect("fake state");
            match s.queue.iter().position(|q| q == id) {
                Some(n) => json(
                    200,
                    serde_json::json!({"status": if n == 0 {"active"} else {"waiting"}, "position": n}),
                ),
                None => detail(404, "Session not found"),
            }
        }
        ("DELETE", p) if p.starts_with("/session/") => {
            let id = p["/session/".len()..].to_string();
            if !known(&id) {
                return detail(404, "Session not found");
            }
            state.lock().expect("fake state").queue.retain(|q| *q != id);
            let _ = ended.send((id, "session ended: deleted".to_string()));
            Response::builder()
                .status(204)
                .body(Full::new(Bytes::new()))
                .expect("204")
        }
        ("GET", "/tunnels") => match session {
            None => detail(422, "Field required"),
            Some(id) if known(&id) => json(
                200,
                serde_json::json!({
                    "devices": [
                        {"name": "r1", "address": "172.20.20.2", "ports": [22, 830]},
                        {"name": "r2", "address": "172.20.20.3", "ports": [22]}
                    ],
                    "networks": [{"cidr": "172.20.20.0/24", "ports": [22, 830, 57400, 5000, 443]}]
                }),
            ),
            Some(_) => detail(404, "Session not found"),
        },
        ("GET", p) if p.starts_with("/lab/tunnel/") => {
            let target = p["/lab/tunnel/".len()..].to_string();
            state
                .lock()
                .expect("fake state")
                .tunnel_requests
                .push((path.clone(), session.clone()));
            let Some(id) = session else {
                return detail(422, "Field required");
            };
            let (front, device) = {
                let s = state.lock().expect("fake state");
                if !s.queue.iter().any(|q| *q == id) {
                    return detail(404, "Session not found");
                }
                (
                    s.queue.front() == Some(&id),
                    s.targets.get(&target).copied(),
                )
            };
            if !front {
                return detail(423, "Session is not active");
            }
            let Some(device) = device else {
                return detail(404, "Target not allowed");
            };
            let key = req
                .headers()
                .get("sec-websocket-key")
                .map(|k| derive_accept_key(k.as_bytes()));
            let upgrade_ok = req
                .headers()
                .get("upgrade")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
                && req
                    .headers()
                    .get("sec-websocket-version")
                    .map(|v| v.as_bytes())
                    == Some(b"13");
            let Some(accept) = key.filter(|_| upgrade_ok) else {
                return detail(400, "not a WebSocket upgrade");
            };
            // The device first: 101 only once it is connected.
            let tcp = match tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(device))
                .await
            {
                Ok(Ok(t)) => t,
                Ok(Err(_)) => return detail(502, "Target unreachable"),
                Err(_) => return detail(504, "Target timed out"),
            };
            let _ = tcp.set_nodelay(true);
            let ends = ended.subscribe();
            let on_upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let Ok(upgraded) = on_upgrade.await else {
                    return;
                };
                let ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                        .await;
                {
                    let mut s = state.lock().expect("fake state");
                    s.opened += 1;
                    s.open_now += 1;
                }
                splice(ws, tcp, ends, &id, &state).await;
                state.lock().expect("fake state").open_now -= 1;
            });
            Response::builder()
                .status(101)
                .header("upgrade", "websocket")
                .header("connection", "Upgrade")
                .header("sec-websocket-accept", accept)
                .body(Full::new(Bytes::new()))
                .expect("101")
        }
        _ => detail(404, "Not Found"),
    }
}

async fn splice(
    mut ws: WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>,
    mut tcp: TcpStream,
    mut ends: broadcast::Receiver<(String, String)>,
    id: &str,
    state: &Mutex<State>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        tokio::select! {
            m = ws.next() => match m {
                Some(Ok(Message::Binary(b))) => {
                    if tcp.write_all(&b).await.is_err() { return; }
                }
                Some(Ok(Message::Text(_))) => {
                    let _ = ws.close(Some(CloseFrame { code: CloseCode::Unsupported, reason: "text".into() })).await;
                    return;
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
            n = tcp.read(&mut buf) => match n {
                Ok(0) | Err(_) => { let _ = ws.close(None).await; return; }
                Ok(n) => {
                    if ws.send(Message::Binary(Bytes::copy_from_slice(&buf[..n]))).await.is_err() { return; }
                }
            },
            e = ends.recv() => match e {
                Ok((ended, reason)) if ended == id => {
                    state.lock().expect("fake state").ends_sent.push(Instant::now());
                    let _ = ws.send(Message::Close(Some(CloseFrame {
                        code: CloseCode::from(4001),
                        reason: reason.into(),
                    }))).await;
                    // Both legs dropped here, as labgate does.
                    return;
                }
                Ok(_) => {}
                Err(_) => return,
            },
        }
    }
}

/// A device that echoes what it reads; counts the connections it accepted.
pub struct Echo {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Echo {
    pub async fn start() -> Echo {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        Echo {
            addr,
            accepted,
            task,
        }
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A loopback address where nothing listens (bound, then released).
pub fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

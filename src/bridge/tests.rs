//! The lane driver against an in-process stand-in for the neops-remote-lab session API
//! and a hand-driven queue ([`Turns`]): real tasks, real HTTP, no labgate around it.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::sync::watch;

use super::config::RawBridge;
use super::machine::Wanted;
use super::*;

/// The session API of the neops server, in memory: a FIFO whose head is active.
#[derive(Default)]
struct FakeNeops {
    queue: VecDeque<String>,
    next: u32,
    calls: Vec<String>,
    /// Answer every DELETE with 500 while set.
    fail_deletes: bool,
}

async fn serve(state: Arc<Mutex<FakeNeops>>) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let state = state.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(answer(&state, &req)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

fn answer(state: &Mutex<FakeNeops>, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let mut s = state.lock().unwrap();
    let path = req.uri().path().to_string();
    let header = req
        .headers()
        .get("x-session-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    s.calls.push(format!("{} {path}", req.method()));
    let reply = |status: u16, body: String| {
        Response::builder()
            .status(status)
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    };
    let position = |s: &FakeNeops, id: &str| s.queue.iter().position(|q| q == id);
    match (req.method().as_str(), path.as_str()) {
        ("POST", "/session") => {
            s.next += 1;
            let id = format!("up-{}", s.next);
            s.queue.push_back(id.clone());
            let p = s.queue.len() - 1;
            reply(201, format!(r#"{{"session_id":"{id}","position":{p}}}"#))
        }
        ("POST", "/session/heartbeat") => match position(&s, &header) {
            Some(_) => reply(204, String::new()),
            None => reply(404, r#"{"detail":"Session not found"}"#.into()),
        },
        ("GET", p) => {
            let id = p.trim_start_matches("/session/");
            match position(&s, id) {
                Some(0) => reply(200, r#"{"status":"active","position":0}"#.into()),
                Some(n) => reply(200, format!(r#"{{"status":"waiting","position":{n}}}"#)),
                None => reply(404, r#"{"detail":"Session not found"}"#.into()),
            }
        }
        ("DELETE", p) if s.fail_deletes => {
            let _ = p;
            reply(500, "boom".into())
        }
        ("DELETE", p) => {
            let id = p.trim_start_matches("/session/").to_string();
            match position(&s, &id) {
                Some(n) => {
                    s.queue.remove(n);
                    reply(204, String::new())
                }
                None => reply(404, r#"{"detail":"Session not found"}"#.into()),
            }
        }
        _ => reply(404, r#"{"detail":"Not Found"}"#.into()),
    }
}

struct FakeTurns {
    wanted: Mutex<Wanted>,
    changes: watch::Sender<u64>,
    done: Mutex<Vec<(usize, u64)>>,
}

impl FakeTurns {
    fn new() -> Arc<FakeTurns> {
        Arc::new(FakeTurns {
            wanted: Mutex::default(),
            changes: watch::channel(0).0,
            done: Mutex::default(),
        })
    }
    fn set(&self, w: Wanted) {
        *self.wanted.lock().unwrap() = w;
        self.changes.send_modify(|v| *v += 1);
    }
}

impl Turns for FakeTurns {
    fn wanted(&self) -> Wanted {
        *self.wanted.lock().unwrap()
    }
    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
    fn end_reason(&self, _seq: u64) -> Option<&'static str> {
        Some("deleted")
    }
    fn hold_limit(&self) -> Option<Duration> {
        None
    }
    fn handoff_done(&self, lane: usize, turn: u64) {
        self.done.lock().unwrap().push((lane, turn));
    }
    fn handoff_failed(&self, _lane: usize, _turn: u64, _why: &'static str) {}
}

fn active(seq: u64) -> Wanted {
    Wanted {
        active: Some(seq),
        resetting: None,
    }
}

async fn start(
    neops: Arc<Mutex<FakeNeops>>,
    name: &str,
) -> (Arc<Bridge>, Arc<FakeTurns>, watch::Sender<bool>) {
    let addr = serve(neops).await;
    let raw: RawBridge = toml::from_str(
        "[neops]\nkeepalive = \"100ms\"\npoll = \"50ms\"\nretry_max = \"200ms\"\nready_wait = \"3s\"\n[token]\nheader = \"x-lab-token\"\n",
    )
    .unwrap();
    let config = raw.validate(name, &[]).unwrap();
    let spec = LaneSpec {
        index: 0,
        name: name.into(),
        authority: addr.to_string(),
        addr,
        connect_timeout: Duration::from_secs(1),
        config,
    };
    let bridge = Arc::new(Bridge::new(1, vec![spec], persist::Owned::memory()).unwrap());
    let turns = FakeTurns::new();
    let (stop, stop_rx) = watch::channel(false);
    tokio::spawn(bridge.clone().run(turns.clone(), stop_rx));
    (bridge, turns, stop)
}

#[tokio::test]
async fn each_turn_gets_its_own_upstream_session_and_token_after_the_last_is_deleted() {
    let neops = Arc::new(Mutex::new(FakeNeops::default()));
    let (bridge, turns, stop) = start(neops.clone(), "lane-a").await;
    turns.set(active(1));
    let first = bridge.ready(0, 1).await.unwrap().unwrap();
    assert_eq!(first.upstream_id.as_ref().unwrap().as_str(), "up-1");
    turns.set(active(2));
    let second = bridge.ready(0, 2).await.unwrap().unwrap();
    assert_eq!(second.upstream_id.as_ref().unwrap().as_str(), "up-2");
    assert_ne!(first.token, second.token, "tokens rotate per turn");
    // A request of a turn that is over is never served.
    assert!(bridge.ready(0, 1).await.is_err());
    {
        let calls = neops.lock().unwrap().calls.clone();
        let deleted = calls
            .iter()
            .position(|c| c == "DELETE /session/up-1")
            .unwrap();
        let opened_again = calls.iter().rposition(|c| c == "POST /session").unwrap();
        assert!(deleted < opened_again, "{calls:?}");
    }
    // Kept alive while the turn lasts (keepalive 100 ms).
    let mut beats = 0;
    for _ in 0..100 {
        let calls = neops.lock().unwrap().calls.clone();
        beats = calls
            .iter()
            .filter(|c| *c == "POST /session/heartbeat")
            .count();
        if beats >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(beats >= 2, "no heartbeats");
    turns.set(Wanted::default());
    for _ in 0..100 {
        if neops.lock().unwrap().queue.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        neops.lock().unwrap().queue.is_empty(),
        "the last session leaked"
    );
    let _ = stop.send(true);
}

#[tokio::test]
async fn an_undeletable_session_holds_back_the_next_turn_until_it_is_gone() {
    let neops = Arc::new(Mutex::new(FakeNeops::default()));
    let (bridge, turns, stop) = start(neops.clone(), "lane-b").await;
    turns.set(active(1));
    bridge.ready(0, 1).await.unwrap();
    neops.lock().unwrap().fail_deletes = true;
    turns.set(active(2));
    // The server refuses deletes: turn 2 is not served, the gauge says why.
    assert!(bridge.ready(0, 2).await.is_err());
    let m = metrics::metrics();
    assert_eq!(m.undeleted.with_label_values(&["lane-b"]).get(), 1);
    assert!(m.delete_failures.with_label_values(&["lane-b"]).get() >= 2);
    assert_eq!(
        neops.lock().unwrap().queue.len(),
        1,
        "no second upstream session"
    );
    neops.lock().unwrap().fail_deletes = false;
    let r = bridge.ready(0, 2).await.unwrap().unwrap();
    assert_eq!(r.upstream_id.as_ref().unwrap().as_str(), "up-2");
    assert_eq!(m.undeleted.with_label_values(&["lane-b"]).get(), 0);
    let _ = stop.send(true);
}

#[tokio::test]
async fn a_session_the_upstream_forgot_is_reopened_for_the_same_turn() {
    let neops = Arc::new(Mutex::new(FakeNeops::default()));
    let (bridge, turns, stop) = start(neops.clone(), "lane-c").await;
    turns.set(active(5));
    bridge.ready(0, 5).await.unwrap();
    // The upstream restarts: it knows no session any more.
    neops.lock().unwrap().queue.clear();
    let mut reopened = None;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let r = bridge.ready(0, 5).await.unwrap().unwrap();
        if r.upstream_id.as_ref().unwrap().as_str() != "up-1" {
            reopened = Some(r);
            break;
        }
    }
    let r = reopened.expect("never reopened");
    assert_eq!(r.upstream_id.as_ref().unwrap().as_str(), "up-2");
    assert_eq!(
        metrics::metrics()
            .sessions_lost
            .with_label_values(&["lane-c"])
            .get(),
        1
    );
    let _ = stop.send(true);
}

#[tokio::test]
async fn stopping_with_a_memory_only_queue_deletes_the_upstream_session() {
    let neops = Arc::new(Mutex::new(FakeNeops::default()));
    let (bridge, turns, stop) = start(neops.clone(), "lane-d").await;
    turns.set(active(1));
    bridge.ready(0, 1).await.unwrap();
    assert_eq!(neops.lock().unwrap().queue.len(), 1);
    let _ = stop.send(true);
    for _ in 0..100 {
        if neops.lock().unwrap().queue.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(neops.lock().unwrap().queue.is_empty(), "leaked at shutdown");
}

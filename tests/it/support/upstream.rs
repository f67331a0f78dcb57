//! In-process HTTP/1.1 upstreams: the recording upstream (every request's method, target
//! and headers; the body only counted) and the generic test server other tests build
//! their own upstreams on. Loopback only; the accept task is aborted in `Drop`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// The request target as received (path and query).
    pub target: String,
    /// Every header line, names lower-case, repeated ones repeated.
    pub headers: Vec<(String, String)>,
    body_bytes: Arc<AtomicU64>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
    pub fn body_bytes(&self) -> u64 {
        self.body_bytes.load(Ordering::SeqCst)
    }
}

type RespBody = BoxBody<Bytes, Infallible>;

/// An in-process HTTP/1.1 upstream that records every request it receives.
pub struct Upstream {
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<Recorded>>>,
    task: tokio::task::JoinHandle<()>,
}

/// Serves HTTP/1.1 on a fresh loopback port with `handler`, which gets every request
/// and the shared `log` to record it in. Returns the address and the accept task.
pub async fn serve_recording<T, B, F, Fut>(
    log: Arc<Mutex<Vec<T>>>,
    handler: F,
) -> (SocketAddr, tokio::task::JoinHandle<()>)
where
    T: Send + 'static,
    F: Fn(Request<Incoming>, Arc<Mutex<Vec<T>>>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind test server");
    let addr = listener.local_addr().expect("test server addr");
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let log = log.clone();
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let fut = handler(req, log.clone());
                    async move { Ok::<_, Infallible>(fut.await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, task)
}

impl Upstream {
    pub async fn start() -> Upstream {
        let log: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let (addr, task) = serve_recording(log.clone(), handle).await;
        Upstream { addr, log, task }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.log.lock().expect("upstream log").clone()
    }
    pub fn count(&self) -> usize {
        self.log.lock().expect("upstream log").len()
    }
    pub fn clear(&self) {
        self.log.lock().expect("upstream log").clear();
    }
    /// The single request received (panics unless exactly one).
    pub fn only(&self) -> Recorded {
        let r = self.requests();
        assert_eq!(r.len(), 1, "expected exactly one upstream request: {r:#?}");
        r[0].clone()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The number after `key` among the path segments, e.g. `slow/250` anywhere in the path.
fn after(path: &str, key: &str) -> Option<u64> {
    let segs: Vec<&str> = path.split('/').collect();
    segs.windows(2)
        .find(|w| w[0] == key)
        .and_then(|w| w[1].parse().ok())
}

async fn handle(req: Request<Incoming>, log: Arc<Mutex<Vec<Recorded>>>) -> Response<RespBody> {
    let counter = Arc::new(AtomicU64::new(0));
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| req.uri().to_string());
    let rec = Recorded {
        method: req.method().to_string(),
        target: target.clone(),
        headers: req
            .headers()
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body_bytes: counter.clone(),
    };
    log.lock().expect("upstream log").push(rec);
    let path = req.uri().path().to_string();
    // Count the body while it streams; never keep it.
    let mut body = req.into_body();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Some(d) = f.data_ref() {
                    counter.fetch_add(d.len() as u64, Ordering::SeqCst);
                }
            }
            Err(_) => break,
        }
    }
    if let Some(ms) = after(&path, "slow") {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if let Some(n) = after(&path, "download") {
        const CHUNK: u64 = 64 * 1024;
        let chunk = Bytes::from(vec![b'x'; CHUNK as usize]);
        let stream = futures_util::stream::unfold(n, move |left| {
            let chunk = chunk.clone();
            async move {
                if left == 0 {
                    return None;
                }
                let take = left.min(CHUNK);
                Some((
                    Ok::<_, Infallible>(Frame::data(chunk.slice(..take as usize))),
                    left - take,
                ))
            }
        });
        return Response::builder()
            .status(200)
            .header("content-type", "application/octet-stream")
            .body(BodyExt::boxed(StreamBody::new(stream)))
            .expect("download response");
    }
    let status = after(&path, "status").unwrap_or(200) as u16;
    let json = serde_json::json!({
        "upstream": true,
        "target": target,
        "body_bytes": counter.load(Ordering::SeqCst),
    });
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(json.to_string())).boxed())
        .expect("response")
}

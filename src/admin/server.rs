//! The server half of the admin API: a small JSON-over-HTTP API on a Unix domain socket.
//!
//! Access control is the filesystem alone: the socket is created with mode 0600 (owner
//! only) in a private directory (`admin::socket`), so only labgate's user and root can
//! connect. It is never served on a TCP
//! listener, because behind a reverse proxy a loopback peer can be anybody. Every action
//! is audit-logged with the caller's uid, read from the socket (SO_PEERCRED).
//!
//! The server is a pingora background service (it stops on shutdown; `server::run` holds
//! the socket file and removes it); it uses hyper directly because pingora cannot tell who is on the other end of
//! a Unix socket. Must never hold policy: kicking, draining and listing are `Shared`'s.

use std::os::unix::net::UnixListener as StdUnixListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::Serialize;
use serde_json::json;

use super::{Drained, KickRequest, Kicked, QueueListing, ReloadAnswer, Retried, SessionRow};
use crate::state::{FindError, Shared, Trigger, AUDIT};

/// Largest request body the admin API reads.
const MAX_BODY: usize = 16 * 1024;

/// The admin API as a pingora background service.
pub struct AdminService {
    shared: Arc<Shared>,
    path: PathBuf,
    listener: Mutex<Option<StdUnixListener>>,
}

impl AdminService {
    pub fn new(shared: Arc<Shared>, path: PathBuf, listener: StdUnixListener) -> Self {
        AdminService {
            shared,
            path,
            listener: Mutex::new(Some(listener)),
        }
    }
}

#[async_trait]
impl BackgroundService for AdminService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let taken = self.listener.lock().ok().and_then(|mut l| l.take());
        let Some(listener) = taken.and_then(|l| tokio::net::UnixListener::from_std(l).ok()) else {
            tracing::error!("admin socket unavailable; the admin API is off");
            return;
        };
        tracing::info!(socket = %self.path.display(), "admin API listening");
        loop {
            tokio::select! {
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        break;
                    }
                }
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let shared = self.shared.clone();
                        tokio::spawn(serve_connection(shared, stream));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "admin accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                },
            }
        }
        // The socket file is removed by `socket::SocketFile`, which outlives this task.
    }
}

async fn serve_connection(shared: Arc<Shared>, stream: tokio::net::UnixStream) {
    let uid = match stream.peer_cred() {
        Ok(cred) => cred.uid(),
        Err(e) => {
            tracing::warn!(error = %e, "admin peer credentials unavailable; closing");
            return;
        }
    };
    let service = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, std::convert::Infallible>(handle(&shared, uid, req).await) }
    });
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        tracing::debug!(error = %e, "admin connection ended with an error");
    }
}

impl SessionRow {
    /// Every session, in order. O(n) by nature.
    pub fn all(shared: &Shared, now: Instant) -> Vec<SessionRow> {
        let picture = shared.picture(usize::MAX, now);
        picture
            .sessions
            .into_iter()
            .map(|s| SessionRow {
                id: s.view.id.to_string(),
                tag: s.view.id.tag(),
                state: s.view.status.as_str().to_string(),
                position: s.view.position,
                seq: s.view.seq,
                created: s.created_ms.map_or(0.0, |ms| ms as f64 / 1000.0),
                last_seen_secs_ago: now
                    .saturating_duration_since(s.view.last_seen)
                    .as_secs_f64(),
                client: s.client.map(|c| c.to_string()),
                identity: s.owner.map(|o| o.as_str().to_string()),
                owner: s.label.owner,
                note: s.label.note,
                requests_in_flight: s.view.inflight,
                hold_secs: s
                    .view
                    .promoted_at
                    .map(|p| now.saturating_duration_since(p).as_secs_f64()),
            })
            .collect()
    }
}

fn reply(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

fn answer(status: StatusCode, body: &impl Serialize) -> Response<Full<Bytes>> {
    reply(status, serde_json::to_value(body).unwrap_or_default())
}

fn detail(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    reply(status, json!({ "detail": message }))
}

async fn handle(shared: &Arc<Shared>, uid: u32, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match (method, segments.as_slice()) {
        (Method::GET, ["v1", "queue"]) => {
            tracing::info!(target: AUDIT, event = "admin_queue", uid);
            let listing = QueueListing {
                draining: shared.is_draining(),
                sessions: SessionRow::all(shared, Instant::now()),
            };
            answer(StatusCode::OK, &listing)
        }
        (Method::POST, ["v1", "sessions", id, "kick"]) => {
            let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => return detail(StatusCode::PAYLOAD_TOO_LARGE, "Request body too large"),
            };
            let reason = match serde_json::from_slice::<KickRequest>(&body) {
                Ok(k) if !k.reason.trim().is_empty() => k.reason,
                _ => {
                    return detail(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "Give a reason: {\"reason\": \"...\"}",
                    )
                }
            };
            // The full id, the tag (the name logs and the status page show) or an
            // unambiguous prefix of it.
            let session = match shared.find_session(id) {
                Ok(session) => session,
                Err(FindError::NotFound) => {
                    return detail(StatusCode::NOT_FOUND, "Session not found")
                }
                Err(FindError::Ambiguous) => {
                    return detail(
                        StatusCode::CONFLICT,
                        "More than one session's tag starts so: give more digits",
                    )
                }
            };
            match shared.kick(&session, uid, &reason, Instant::now()).await {
                Ok(Some(cut)) => answer(
                    StatusCode::OK,
                    &Kicked {
                        connections_cut: cut,
                        kicked: session.to_string(),
                        tag: session.tag(),
                        reason,
                    },
                ),
                Ok(None) => detail(StatusCode::NOT_FOUND, "Session not found"),
                Err(_) => detail(StatusCode::SERVICE_UNAVAILABLE, "Session store unavailable"),
            }
        }
        (Method::POST, ["v1", action @ ("drain" | "resume")]) => {
            let draining = *action == "drain";
            let was = shared.set_draining(draining);
            tracing::warn!(target: AUDIT, event = "admin_drain", uid, draining, was_draining = was);
            answer(
                StatusCode::OK,
                &Drained {
                    draining,
                    was_draining: was,
                },
            )
        }
        (Method::POST, ["v1", "handoff", "retry"]) => {
            let retried = shared.retry_handoff();
            tracing::warn!(target: AUDIT, event = "admin_handoff_retry", uid, retried);
            answer(StatusCode::OK, &Retried { retried })
        }
        (Method::POST, ["v1", "reload"]) => reload(shared, uid).await,
        (
            _,
            ["v1", "queue"]
            | ["v1", "reload"]
            | ["v1", "drain"]
            | ["v1", "resume"]
            | ["v1", "handoff", "retry"]
            | ["v1", "sessions", _, "kick"],
        ) => detail(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed"),
        _ => detail(StatusCode::NOT_FOUND, "Not Found"),
    }
}

/// `POST /v1/reload`: `Shared::reload` logs, counts and audits it.
async fn reload(shared: &Arc<Shared>, uid: u32) -> Response<Full<Bytes>> {
    let shared = shared.clone();
    // Reading files and resolving addresses blocks.
    let done = tokio::task::spawn_blocking(move || shared.reload(Trigger::Admin { uid })).await;
    match done {
        Ok(Ok(r)) => answer(
            StatusCode::OK,
            &ReloadAnswer {
                reloaded: true,
                changed: r.changed,
                warnings: r.warnings,
                errors: Vec::new(),
                detail: None,
            },
        ),
        Ok(Err(refused)) => answer(
            StatusCode::UNPROCESSABLE_ENTITY,
            &ReloadAnswer {
                reloaded: false,
                changed: Vec::new(),
                warnings: Vec::new(),
                errors: refused.messages(),
                detail: Some("Reload refused; the running config stays".to_string()),
            },
        ),
        Err(_) => detail(StatusCode::INTERNAL_SERVER_ERROR, "Reload failed"),
    }
}

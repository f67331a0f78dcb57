//! The session API (contract §1) and the local answers of the gate (§2): which endpoint a
//! request is for, and the exact status, headers and JSON body of each answer.
//!
//! Byte-compatible with the neops-remote-lab server (FastAPI): same paths, status codes,
//! field names and order, `detail` messages, compact JSON; two deliberate exceptions:
//! `GET /active-session` names the holder by its public tag unless
//! `[compat] active_session_id` is set (the neops client never calls it), and every JSON
//! body ends with a newline (JSON whitespace: a client's `.json()` reads the same value;
//! `curl` output no longer runs into the next prompt). Must never touch sockets: it
//! produces a [`Reply`] that the pingora adapter writes.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use serde::Serialize;

use crate::forward::Answer;
use crate::gate::{Denied, SessionHeader};
use crate::identity::{self, Identity};
use crate::label;
use crate::limits::CreateRefusal;
use crate::logfield;
use crate::queue::{EndReason, SessionId, Status};
use crate::state::{CreateFailure, Shared, AUDIT};
use crate::status;

/// An answer labgate gives itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    /// The body, or `None` for an empty one.
    pub body: Option<Bytes>,
    pub content_type: &'static str,
}

impl Reply {
    pub fn empty(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: None,
            content_type: JSON,
        }
    }

    pub fn html(status: u16, page: String) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Some(Bytes::from(page)),
            content_type: "text/html; charset=utf-8",
        }
    }

    pub fn json(status: u16, value: &impl Serialize) -> Reply {
        // Serialising these plain structs cannot fail; an empty object is a safe fallback.
        let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
        Reply::json_bytes(status, body)
    }

    /// Already serialised JSON; the newline every JSON body ends with is added here.
    fn json_bytes(status: u16, mut body: Vec<u8>) -> Reply {
        body.push(b'\n');
        Reply {
            status,
            headers: Vec::new(),
            body: Some(Bytes::from(body)),
            content_type: JSON,
        }
    }

    /// `{"detail": "<message>"}`.
    pub fn detail(status: u16, message: &str) -> Reply {
        Reply::json(status, &Detail { detail: message })
    }

    /// A constant JSON body, served without serialising it again (the refusal paths);
    /// write it with [`json_line!`], which adds the closing newline.
    pub fn fixed(status: u16, body: &'static [u8]) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Some(Bytes::from_static(body)),
            content_type: JSON,
        }
    }

    pub fn with_header(mut self, name: &'static str, value: impl ToString) -> Reply {
        self.headers.push((name, value.to_string()));
        self
    }
}

const JSON: &str = "application/json";

/// A constant JSON body as [`Reply::fixed`] takes it: the literal and its newline.
macro_rules! json_line {
    ($json:literal) => {
        concat!($json, "\n").as_bytes()
    };
}

#[derive(Serialize)]
struct Detail<'a> {
    detail: &'a str,
}

#[derive(Serialize)]
struct Created {
    session_id: String,
    position: usize,
}

#[derive(Serialize)]
struct SessionStatus {
    status: &'static str,
    position: usize,
}

/// `GET /active-session` by default: who holds the lab, by public tag only. The id is
/// the gate credential; handing it to any caller would let a waiting client act as
/// the holder or end its session.
#[derive(Serialize)]
struct ActiveSession {
    status: &'static str,
    position: usize,
    session_tag: String,
}

/// `GET /active-session` with `[compat] active_session_id = true`: neops-remote-lab's
/// answer, byte for byte, full id included.
#[derive(Serialize)]
struct ActiveSessionCompat {
    status: &'static str,
    position: usize,
    session_id: String,
}

/// What a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint<'a> {
    CreateSession,
    GetSession(&'a str),
    DeleteSession(&'a str),
    Heartbeat,
    ActiveSession,
    /// Liveness: the process answers.
    Healthz,
    /// Readiness: sessions can be created and ended (the durable store is writable).
    Readyz,
    /// The public status page, HTML and JSON.
    Status,
    StatusJson,
    /// `/favicon.svg` and `/favicon.ico`: the status page's icon.
    Favicon,
    /// `/lab` or below: the gate decides.
    Lab,
    /// `/lab/tunnel/{target}`: a device tunnel (`splice::device`).
    Tunnel(&'a str),
    /// `GET /tunnels`: what tunnels may reach.
    Tunnels,
    NotFound,
    MethodNotAllowed {
        allow: &'static str,
    },
}

/// Routes a checked path. `/session/heartbeat` is a session id for `GET` and `DELETE`,
/// as in FastAPI, where `/session/{session_id}` matches it.
pub fn route<'a>(method: &Method, path: &'a str) -> Endpoint<'a> {
    if let Some(target) = crate::tunnel::target_of(path) {
        return Endpoint::Tunnel(target);
    }
    if crate::path::under(path, "/lab") {
        return Endpoint::Lab;
    }
    let not_allowed = |allow| Endpoint::MethodNotAllowed { allow };
    match path {
        "/session" => match *method {
            Method::POST => Endpoint::CreateSession,
            _ => not_allowed("POST"),
        },
        "/active-session" => match *method {
            Method::GET => Endpoint::ActiveSession,
            _ => not_allowed("GET"),
        },
        "/healthz" => match *method {
            Method::GET => Endpoint::Healthz,
            _ => not_allowed("GET"),
        },
        "/readyz" => match *method {
            Method::GET => Endpoint::Readyz,
            _ => not_allowed("GET"),
        },
        "/status" => match *method {
            Method::GET => Endpoint::Status,
            _ => not_allowed("GET"),
        },
        "/status.json" => match *method {
            Method::GET => Endpoint::StatusJson,
            _ => not_allowed("GET"),
        },
        "/favicon.svg" | "/favicon.ico" => match *method {
            Method::GET => Endpoint::Favicon,
            _ => not_allowed("GET"),
        },
        "/tunnels" => match *method {
            Method::GET => Endpoint::Tunnels,
            _ => not_allowed("GET"),
        },
        _ => match path.strip_prefix("/session/") {
            Some(id) if !id.is_empty() && !id.contains('/') => match *method {
                Method::GET => Endpoint::GetSession(id),
                Method::DELETE => Endpoint::DeleteSession(id),
                Method::POST if id == "heartbeat" => Endpoint::Heartbeat,
                _ if id == "heartbeat" => not_allowed("GET, POST, DELETE"),
                _ => not_allowed("GET, DELETE"),
            },
            _ => Endpoint::NotFound,
        },
    }
}

/// The longest long-poll (§7); larger `wait` values are clamped to it.
pub const MAX_WAIT_SECS: u64 = 60;

/// What came with a `POST /session` (its optional label body, contract §7 "owner and
/// note"); empty for every other request, whose bodies are never read.
#[derive(Debug, Clone, Default)]
pub struct Sent {
    /// `Content-Type` as sent.
    pub content_type: Option<Bytes>,
    /// The body, at most [`label::MAX_BODY`] bytes.
    pub body: Bytes,
    /// More than [`label::MAX_BODY`] bytes were announced or sent (not read).
    pub too_large: bool,
}

/// Who is asking: the client address a request counts against, and in identity mode
/// the identity it proved.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    pub client: IpAddr,
    pub identity: Option<&'a Identity>,
}

/// Answers a local endpoint (everything but [`Endpoint::Lab`]). `query` is the checked
/// query string; only `GET /session/{id}` reads it (`wait`). `sent`: `POST /session`'s
/// body. In identity mode a session the caller does not own is answered exactly as an
/// unknown one.
pub async fn handle(
    shared: &Shared,
    endpoint: Endpoint<'_>,
    query: Option<&str>,
    session_header: SessionHeader,
    caller: Caller<'_>,
    sent: &Sent,
    now: Instant,
) -> Reply {
    let client = caller.client;
    let owned =
        |id: SessionId, what: &str| shared.may_use(&id, caller.identity, what).then_some(id);
    let active_timeout = shared.config().queue.timeouts.active.as_secs();
    match endpoint {
        Endpoint::CreateSession => {
            // The body is a claim for display only; an unusable one is refused before
            // any limit counts the request.
            let label = match label::parse(sent.content_type.as_deref(), &sent.body, sent.too_large)
            {
                Ok(label) => label,
                Err(invalid) => return Reply::json(422, &invalid),
            };
            match shared
                .create_labelled(client, caller.identity, label, now)
                .await
            {
                Ok((id, position)) => Reply::json(
                    201,
                    &Created {
                        session_id: id.to_string(),
                        position,
                    },
                )
                .with_header(ACTIVE_TIMEOUT_HEADER, active_timeout)
                .with_header(TAG_HEADER, id.tag()),
                Err(CreateFailure::Refused(refusal)) => create_refused(refusal),
                Err(CreateFailure::Draining) => Reply::detail(503, "Lab is draining")
                    .with_header("Retry-After", DRAINING_RETRY_AFTER_SECS),
                Err(CreateFailure::ShuttingDown) => Reply::detail(503, "Lab gate is shutting down")
                    .with_header("Retry-After", SHUTDOWN_RETRY_AFTER_SECS),
                Err(CreateFailure::Store(_)) => store_unavailable(),
            }
        }
        Endpoint::GetSession(raw) => {
            let wait = match wait_param(query) {
                Ok(wait) => wait,
                Err(reply) => return reply,
            };
            let while_active = match while_param(query) {
                Ok(w) => w,
                Err(reply) => return reply,
            };
            let parsed = SessionId::parse_exact(raw);
            let id = parsed.and_then(|id| owned(id, "get_session"));
            let status = match (id, wait) {
                (None, _) => None,
                (Some(id), None) => shared.session_status(&id, now),
                (Some(id), Some(wait)) if while_active => shared.wait_while_active(&id, wait).await,
                (Some(id), Some(wait)) => shared.wait_for_turn(&id, wait).await,
            };
            if status.is_none() {
                shared.note_unknown_id(client, now);
            }
            match (status, id) {
                (Some((status, position)), Some(id)) => with_hold_remaining(
                    Reply::json(
                        200,
                        &SessionStatus {
                            status: status.as_str(),
                            position,
                        },
                    )
                    .with_header(ACTIVE_TIMEOUT_HEADER, active_timeout)
                    .with_header(TAG_HEADER, id.tag()),
                    shared,
                    status,
                ),
                _ => gone(shared, parsed, caller.identity, Instant::now()),
            }
        }
        Endpoint::DeleteSession(id) => {
            let parsed = SessionId::parse_exact(id);
            let ended = match parsed.and_then(|id| owned(id, "delete_session")) {
                Some(id) => shared.end_session(&id, EndReason::Deleted, now).await,
                None => Ok(false),
            };
            // Whoever holds an id may end its session: record who asked, whatever came
            // of it, so a queue jump or a stolen id can be traced to an address.
            tracing::info!(
                target: AUDIT,
                event = "session_delete",
                session = %parsed.map_or_else(|| logfield::text(id), |id| id.tag()),
                client = %client,
                outcome = match &ended {
                    Ok(true) => "ended",
                    Ok(false) => "unknown",
                    Err(_) => "store_unavailable",
                },
            );
            match ended {
                Ok(true) => Reply::empty(204),
                Ok(false) => {
                    shared.note_unknown_id(client, now);
                    gone(shared, SessionId::parse_exact(id), caller.identity, now)
                }
                Err(_) => store_unavailable(),
            }
        }
        Endpoint::Heartbeat => match session_header {
            SessionHeader::Missing => missing_header(),
            SessionHeader::Duplicate => duplicate_header(),
            SessionHeader::One(Some(id)) => {
                match owned(id, "heartbeat").and_then(|id| shared.session_status(&id, now)) {
                    Some((status, _)) => with_hold_remaining(Reply::empty(204), shared, status),
                    None => {
                        shared.note_unknown_id(client, now);
                        gone(shared, Some(id), caller.identity, now)
                    }
                }
            }
            SessionHeader::One(None) => {
                shared.note_unknown_id(client, now);
                session_not_found()
            }
        },
        Endpoint::ActiveSession => match shared.active_session() {
            Some(id) if shared.config().compat.active_session_id => Reply::json(
                200,
                &ActiveSessionCompat {
                    status: Status::Active.as_str(),
                    position: 0,
                    session_id: id.to_string(),
                },
            ),
            Some(id) => Reply::json(
                200,
                &ActiveSession {
                    status: Status::Active.as_str(),
                    position: 0,
                    session_tag: id.tag(),
                },
            ),
            None => Reply::detail(404, "No active session"),
        },
        Endpoint::Healthz => Reply::empty(204),
        Endpoint::Readyz if shared.store_writable() => Reply::empty(204),
        Endpoint::Readyz => store_unavailable(),
        Endpoint::Status => Reply::html(
            200,
            status::html(&status::lab_status(shared, now), status::you_param(query)),
        )
        .with_header("Cache-Control", "no-store"),
        Endpoint::StatusJson => {
            Reply::json_bytes(200, status::json(&status::lab_status(shared, now)))
                .with_header("Cache-Control", "no-store")
        }
        Endpoint::Favicon => favicon(),
        Endpoint::Tunnels => {
            let id = match session_header {
                SessionHeader::Missing => return missing_header(),
                SessionHeader::Duplicate => return duplicate_header(),
                SessionHeader::One(id) => id,
            };
            match id {
                Some(id) if shared.is_known(&id) && owned(id, "tunnels").is_some() => {
                    Reply::json(200, &shared.config().tunnels.allowlist.listing())
                }
                _ => {
                    shared.note_unknown_id(client, now);
                    session_not_found()
                }
            }
        }
        Endpoint::NotFound | Endpoint::Lab | Endpoint::Tunnel(_) => not_found(),
        Endpoint::MethodNotAllowed { allow } => {
            Reply::detail(405, "Method Not Allowed").with_header("Allow", allow)
        }
    }
}

/// The status page's icon, built in. Browsers ask for `/favicon.ico` on every page
/// view; without it each view logged a 404. The same SVG answers both names (browsers
/// take an SVG icon by its content type, whatever the name).
const FAVICON: &[u8] = include_bytes!("favicon.svg");
/// A day: the icon only changes with a new labgate.
const FAVICON_MAX_AGE_SECS: u32 = 86_400;

fn favicon() -> Reply {
    Reply {
        status: 200,
        headers: Vec::new(),
        body: Some(Bytes::from_static(FAVICON)),
        content_type: "image/svg+xml",
    }
    .with_header(
        "Cache-Control",
        format!("public, max-age={FAVICON_MAX_AGE_SECS}"),
    )
    .with_header("X-Content-Type-Options", "nosniff")
}

/// A drain may end any moment (`admin resume`): a client asking again every few
/// seconds learns of the resume promptly, and a `POST /session` is cheap to refuse.
pub const DRAINING_RETRY_AFTER_SECS: u64 = 5;
/// A restarting gate is usually back within seconds.
pub const SHUTDOWN_RETRY_AFTER_SECS: u64 = 5;

/// Why a session the caller named recently ended (its tombstone).
pub const SESSION_ENDED_HEADER: &str = "X-Lab-Session-Ended";
/// The operator's reason for a kick, sanitised and bounded.
pub const END_NOTE_HEADER: &str = "X-Lab-End-Note";
/// Seconds until a WAITING session can expect the lab, from completed holds (`423`).
pub const EXPECTED_START_HEADER: &str = "X-Lab-Expected-Start";
/// Which gate decision (or `local`) produced one of labgate's own answers (§2).
pub const GATE_HEADER: &str = "X-Lab-Gate";

/// `404 Session not found`, with how the session ended when it ended recently (the
/// body stays the reference server's, for neops clients).
pub fn gone(
    shared: &Shared,
    id: Option<SessionId>,
    caller: Option<&Identity>,
    now: Instant,
) -> Reply {
    let mut reply = session_not_found();
    if let Some(t) = id.and_then(|id| shared.tombstone(&id, caller, now)) {
        reply = reply.with_header(SESSION_ENDED_HEADER, t.reason.as_str());
        if let Some(note) = t.note {
            reply = reply.with_header(END_NOTE_HEADER, note);
        }
    }
    reply
}

/// The server's active timeout, for clients that heartbeat (labgate run).
pub const ACTIVE_TIMEOUT_HEADER: &str = "X-Lab-Active-Timeout";
/// The session's public tag, as the status page shows it.
pub const TAG_HEADER: &str = "X-Lab-Session-Tag";
/// Seconds the ACTIVE session has left under the hold limit (§7).
pub const HOLD_REMAINING_HEADER: &str = "X-Lab-Hold-Remaining";

fn with_hold_remaining(reply: Reply, shared: &Shared, status: Status) -> Reply {
    match (status, shared.hold_remaining(Instant::now())) {
        (Status::Active, Some(left)) => reply.with_header(HOLD_REMAINING_HEADER, left.as_secs()),
        _ => reply,
    }
}

/// Reads `wait` from a query string: whole seconds, clamped to [`MAX_WAIT_SECS`];
/// anything else is FastAPI's 422 for a bad integer.
pub fn wait_param(query: Option<&str>) -> Result<Option<Duration>, Reply> {
    let Some(value) = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| pair.strip_prefix("wait="))
    else {
        return Ok(None);
    };
    match value.parse::<u64>() {
        Ok(secs) => Ok(Some(Duration::from_secs(secs.min(MAX_WAIT_SECS)))),
        Err(_) => Err(Reply::json(
            422,
            &BadQuery {
                detail: [BadQueryItem {
                    kind: "int_parsing",
                    loc: ["query", "wait"],
                    msg: "Input should be a valid integer, unable to parse string as an integer",
                    input: value,
                }],
            },
        )),
    }
}

/// Reads `while`: only `while=active` (with `wait`, answer as soon as the session is
/// no longer ACTIVE) is known; anything else is a 422.
pub fn while_param(query: Option<&str>) -> Result<bool, Reply> {
    match query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| pair.strip_prefix("while="))
    {
        None => Ok(false),
        Some("active") => Ok(true),
        Some(_) => Err(Reply::detail(422, "while must be 'active'")),
    }
}

#[derive(Serialize)]
struct BadQuery<'a> {
    detail: [BadQueryItem<'a>; 1],
}

#[derive(Serialize)]
struct BadQueryItem<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    loc: [&'static str; 2],
    msg: &'static str,
    input: &'a str,
}

/// The answer to a request the gate refused. A WAITING session learns its place and
/// when to ask again (§7 queue hints).
/// `id` and `caller`: the named session and who asks, to say how an ended one ended.
pub fn refused(
    denied: Denied,
    id: Option<SessionId>,
    caller: Option<&Identity>,
    shared: &Shared,
    now: Instant,
) -> Reply {
    match denied {
        Denied::Missing => missing_header(),
        Denied::Duplicate => duplicate_header(),
        Denied::Unknown => gone(shared, id, caller, now),
        Denied::Waiting { position } => {
            let reply = not_active()
                .with_header("X-Queue-Position", position)
                .with_header("Retry-After", shared.retry_after(position, now));
            match shared.expected_start(position, now) {
                Some(eta) => {
                    reply.with_header(EXPECTED_START_HEADER, crate::limits::ceil_secs(eta))
                }
                None => reply,
            }
        }
    }
}

/// `404` for every refused tunnel target alike, so the allowlist cannot be probed.
pub fn tunnel_not_allowed() -> Reply {
    Reply::fixed(404, json_line!(r#"{"detail":"Tunnel target not allowed"}"#))
}

/// `426`: a tunnel request that is not a WebSocket opening handshake.
pub fn not_websocket(why: &str) -> Reply {
    Reply::detail(426, why).with_header("Upgrade", "websocket")
}

/// `429`: the session holds `tunnels.max_per_session` tunnels.
pub fn too_many_tunnels() -> Reply {
    Reply::fixed(
        429,
        json_line!(r#"{"detail":"Too many tunnels for this session"}"#),
    )
}

/// `502`: an allowed device refused the connection or cannot be reached.
pub fn tunnel_unreachable() -> Reply {
    Reply::fixed(502, json_line!(r#"{"detail":"Tunnel target unreachable"}"#))
}

/// `504`: an allowed device did not answer within `tunnels.connect_timeout`.
pub fn tunnel_timed_out() -> Reply {
    Reply::fixed(504, json_line!(r#"{"detail":"Tunnel target timed out"}"#))
}

/// `423`: the session is not (or no longer) the holder.
pub fn not_active() -> Reply {
    Reply::fixed(423, json_line!(r#"{"detail":"Session is not active"}"#))
}

/// `423` for an ACTIVE session whose turn the bridge is not ready to serve yet (its
/// upstream session is still being opened, or waits behind somebody else's): what the
/// neops server itself answers when its lab is busy, which its client retries.
pub fn lab_busy() -> Reply {
    Reply::detail(423, "Lab currently busy").with_header("Retry-After", LAB_BUSY_RETRY_AFTER_SECS)
}

/// The neops client retries a busy lab every 5 s whatever it is told; others may listen.
const LAB_BUSY_RETRY_AFTER_SECS: u64 = 5;

pub fn session_not_found() -> Reply {
    Reply::fixed(404, json_line!(r#"{"detail":"Session not found"}"#))
}

fn store_unavailable() -> Reply {
    Reply::detail(503, "Session store unavailable").with_header("Retry-After", 5)
}

pub fn not_found() -> Reply {
    Reply::fixed(404, json_line!(r#"{"detail":"Not Found"}"#))
}

pub fn invalid_path() -> Reply {
    Reply::fixed(400, json_line!(r#"{"detail":"Invalid path"}"#))
}

/// The exact answer to a request whose forwarding failed (§5).
pub fn failed(answer: Answer) -> Reply {
    match answer {
        Answer::NotActive => not_active(),
        Answer::UpstreamUnavailable => upstream_unavailable(),
        Answer::UpstreamTimedOut => upstream_timed_out(),
        Answer::Status(code) => Reply::detail(code, "Request failed"),
        Answer::BadRequest => Reply::detail(400, "Bad request"),
        Answer::Internal => Reply::detail(500, "Internal error"),
    }
}

pub fn upstream_unavailable() -> Reply {
    Reply::detail(502, "Upstream unavailable")
}

pub fn upstream_timed_out() -> Reply {
    Reply::detail(504, "Upstream timed out")
}

/// FastAPI's answer to a missing required header, verbatim.
fn missing_header() -> Reply {
    Reply::fixed(
        422,
        json_line!(
            r#"{"detail":[{"type":"missing","loc":["header","X-Session-ID"],"msg":"Field required","input":null}]}"#
        ),
    )
}

fn duplicate_header() -> Reply {
    Reply::detail(400, "More than one X-Session-ID header")
}

fn create_refused(refusal: CreateRefusal) -> Reply {
    match refusal {
        CreateRefusal::RateLimited { retry_after_secs } => {
            Reply::detail(429, "Too many session requests")
                .with_header("Retry-After", retry_after_secs)
        }
        CreateRefusal::QueueFull { retry_after_secs } => {
            Reply::detail(503, "Session queue is full").with_header("Retry-After", retry_after_secs)
        }
        CreateRefusal::IdentityCap { cap, .. } => Reply::detail(
            429,
            &format!("Too many live sessions for this identity (at most {cap}); end one first"),
        ),
        CreateRefusal::ClientLimit { retry_after_secs } => Reply::detail(
            429,
            "Too many live sessions from this client: end one (DELETE /session/{id}) first",
        )
        .with_header("Retry-After", retry_after_secs),
    }
}

/// `401`: identity mode could not establish who is asking; nothing is forwarded.
pub fn unauthenticated(why: identity::Refusal) -> Reply {
    Reply::detail(401, &format!("Not authenticated: {why}"))
}

#[cfg(test)]
mod tests;

//! The thin pingora adapter: `impl ProxyHttp` for [`LabGate`].
//!
//! `request_filter` checks the target, answers the session API and the gate's refusals
//! itself, and lets only what the gate allowed go on; the upstream filters shape what the
//! upstream sees (§5); `fail_to_proxy` maps upstream failures to JSON; `logging` records
//! metrics and the access line. Per-request facts live in [`RequestCtx`]. Must never make
//! a policy decision itself: those belong to `gate`, `api`, `limits` and `path`.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use http::header::{self, HeaderName};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType};

use crate::api::{self, Endpoint, Reply};
use crate::config::Upstream;
use crate::cut::Ticket;
use crate::gate::{self, Decision};
use crate::limits;
use crate::metrics::{status_class, UPSTREAM_ERROR_KINDS};
use crate::path;
use crate::queue::SessionId;
use crate::state::{Shared, AUDIT};

/// Access log lines go to their own target.
pub const ACCESS: &str = "labgate::access";

/// The fencing number forwarded with every request (§7).
pub const SESSION_SEQ_HEADER: &str = "x-lab-session-seq";

pub struct LabGate {
    shared: Arc<Shared>,
}

impl LabGate {
    pub fn new(shared: Arc<Shared>) -> Self {
        LabGate { shared }
    }
}

/// A forwarded request counted in flight in the queue; ends it when dropped, whatever
/// path the request took out of pingora.
pub struct InFlight {
    shared: Arc<Shared>,
    id: SessionId,
    ticket: Ticket,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.shared
            .end_request(&self.id, &self.ticket, Instant::now());
    }
}

impl InFlight {
    fn is_cut(&self) -> bool {
        self.ticket.is_cut()
    }
}

/// How long an idle pooled upstream connection is kept.
const POOL_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// The error a request gets when its session ended under it.
const SESSION_ENDED: ErrorType = ErrorType::Custom("session ended");

/// What one request learned on its way through the filters.
#[derive(Default)]
pub struct RequestCtx {
    started: Option<Instant>,
    /// The TCP peer, and whether it is a trusted proxy.
    peer: Option<IpAddr>,
    peer_trusted: bool,
    /// The address the request counts against (§4).
    client: Option<IpAddr>,
    decision: Option<&'static str>,
    session: Option<SessionId>,
    seq: Option<u64>,
    in_flight: Option<InFlight>,
    upstream: Option<usize>,
    /// The checked (and maybe prefix-stripped) target to send upstream.
    forward_target: Option<String>,
    upstream_started: Option<Instant>,
    upstream_error: Option<&'static str>,
    /// Status of an answer labgate wrote itself.
    local_status: Option<u16>,
}

fn peer_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

const X_SESSION_ID: HeaderName = HeaderName::from_static("x-session-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

fn header_values<'a>(req: &'a RequestHeader, name: &HeaderName) -> impl Iterator<Item = &'a [u8]> {
    req.headers.get_all(name).iter().map(|v| v.as_bytes())
}

async fn write_reply(session: &mut Session, reply: Reply) -> Result<()> {
    let mut head = ResponseHeader::build(reply.status, Some(reply.headers.len() + 2))?;
    if let Some(body) = &reply.body {
        head.insert_header(header::CONTENT_TYPE, reply.content_type)?;
        head.insert_header(header::CONTENT_LENGTH, body.len())?;
    } else if reply.status != 204 {
        head.insert_header(header::CONTENT_LENGTH, 0)?;
    }
    for (name, value) in reply.headers {
        head.insert_header(name, value)?;
    }
    let has_body = reply.body.is_some();
    session
        .write_response_header(Box::new(head), !has_body)
        .await?;
    if let Some(body) = reply.body {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

/// Reads and drops a request body that labgate answers itself, so the connection can
/// be kept alive; gives up (false) past a small size instead of reading an upload.
async fn discard_small_body(session: &mut Session) -> bool {
    const LIMIT: usize = 64 * 1024;
    let mut seen = 0;
    while !session.is_body_done() {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                seen += chunk.len();
                if seen > LIMIT {
                    return false;
                }
            }
            Ok(None) => break,
            Err(_) => return false,
        }
    }
    true
}

impl LabGate {
    fn upstream(&self, ctx: &RequestCtx) -> Option<&Upstream> {
        ctx.upstream.map(|i| &self.shared.config.upstreams[i])
    }

    async fn answer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        reply: Reply,
    ) -> Result<bool> {
        ctx.local_status = Some(reply.status);
        if !discard_small_body(session).await {
            // Unread body left: the connection cannot carry another request.
            session.set_keepalive(None);
        }
        write_reply(session, reply).await?;
        Ok(true)
    }
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) never forwarded; `Upgrade` and `Connection` are
/// rebuilt for a WebSocket handshake. Framing headers are pingora's to manage.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
];

/// The hop-by-hop headers a message carries, including those its `Connection` header
/// names: one pass over the headers, so a request without any costs no removal.
fn hop_by_hop(headers: &http::HeaderMap) -> Vec<HeaderName> {
    let named: Vec<&str> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| {
            !t.eq_ignore_ascii_case("content-length")
                && !t.eq_ignore_ascii_case("transfer-encoding")
        })
        .collect();
    let mut found: Vec<HeaderName> = Vec::new();
    for name in headers.keys() {
        let hop = HOP_BY_HOP.contains(&name.as_str())
            || named.iter().any(|n| n.eq_ignore_ascii_case(name.as_str()));
        if hop && !found.contains(name) {
            found.push(name.clone());
        }
    }
    found
}

#[async_trait]
impl ProxyHttp for LabGate {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::default()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let now = Instant::now();
        ctx.started = Some(now);
        let shared = &self.shared;
        let req = session.req_header();
        let trusted_proxies = &shared.config.server.trusted_proxies;
        let peer = peer_ip(session);
        ctx.peer_trusted = peer.is_some_and(|p| limits::is_trusted(p, trusted_proxies));
        ctx.peer = peer;
        let client = peer.map(|p| {
            limits::client_address(p, header_values(req, &X_FORWARDED_FOR), trusted_proxies)
        });
        ctx.client = client;

        let target = match path::check(req.raw_path()) {
            Ok(t) => t,
            Err(why) => {
                tracing::info!(
                    target: AUDIT,
                    event = "gate_denied",
                    decision = "invalid",
                    client = %client.map(|c| c.to_string()).unwrap_or_default(),
                    path = %loggable_path(req.raw_path()),
                    why = %why,
                );
                ctx.decision = Some("invalid");
                shared.count_decision("invalid");
                return self.answer(session, ctx, api::invalid_path()).await;
            }
        };
        let header = gate::session_header(header_values(req, &X_SESSION_ID));
        let endpoint = api::route(&req.method, &target.path);
        if endpoint != Endpoint::Lab {
            let Some(client) = client else {
                // Only Unix-socket peers lack an IP, and labgate listens on TCP only.
                return self.answer(session, ctx, api::not_found()).await;
            };
            let query = target.query.map(str::to_owned);
            let path = target.path.to_string();
            let endpoint = api::route(&req.method, &path);
            let reply = api::handle(shared, endpoint, query.as_deref(), header, client, now).await;
            return self.answer(session, ctx, reply).await;
        }

        let (decision, ticket) = shared.gate(header, now);
        ctx.decision = Some(decision.label());
        let (Decision::Allow { id, seq }, Some(ticket)) = (decision, ticket) else {
            if let gate::SessionHeader::One(Some(id)) = header {
                ctx.session = Some(id);
            }
            let client_text = client.map(|c| c.to_string()).unwrap_or_default();
            tracing::info!(
                target: AUDIT,
                event = "gate_denied",
                decision = decision.label(),
                client = %client_text,
                path = %target.path,
            );
            if let (Decision::Unknown, Some(client)) = (decision, client) {
                shared.note_unknown_id(client, now);
            }
            let reply = api::refused(decision, shared, now).unwrap_or_else(api::not_found);
            return self.answer(session, ctx, reply).await;
        };
        ctx.session = Some(id);
        ctx.seq = Some(seq);
        ctx.in_flight = Some(InFlight {
            shared: shared.clone(),
            id,
            ticket,
        });
        let Some((prefix, &index)) = shared.config.routes.lookup(&target.path) else {
            return self.answer(session, ctx, api::not_found()).await;
        };
        let upstream = &shared.config.upstreams[index];
        ctx.forward_target = Some(if upstream.strip_prefix {
            target.with_path(path::strip(&target.path, prefix))
        } else {
            target.to_request_target()
        });
        ctx.upstream = Some(index);
        if session.is_upgrade_req() {
            // An upgraded connection may idle for as long as its user likes; pingora's
            // default 60 s downstream read timeout would close an idle WebSocket.
            session.set_read_timeout(None);
        }
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let Some(up) = self.upstream(ctx) else {
            return Error::e_explain(ErrorType::InternalError, "no upstream chosen");
        };
        if ctx.in_flight.as_ref().is_some_and(InFlight::is_cut) {
            return Error::e_explain(SESSION_ENDED, "before connecting");
        }
        // A resolved SocketAddr: no DNS on the request path.
        let mut peer = HttpPeer::new(up.addr, false, String::new());
        // Pool connections per session: a socket of an ended (cut) session must never
        // serve another session's request.
        peer.group_key = ctx.seq.unwrap_or_default();
        peer.options.idle_timeout = Some(POOL_IDLE_TIMEOUT);
        peer.options.connection_timeout = Some(up.connect_timeout);
        peer.options.write_timeout = Some(up.write_timeout);
        peer.options.read_timeout = if session.is_upgrade_req() {
            None
        } else {
            Some(up.read_timeout)
        };
        ctx.upstream_started.get_or_insert_with(Instant::now);
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let Some(up) = self.upstream(ctx) else {
            return Error::e_explain(ErrorType::InternalError, "no upstream chosen");
        };
        if let Some(target) = &ctx.forward_target {
            req.set_raw_path(target.as_bytes())?;
        }
        let upgrade = session.is_upgrade_req();
        let upgrade_value = req.headers.get(header::UPGRADE).cloned();
        for name in hop_by_hop(&req.headers) {
            req.remove_header(&name);
        }
        if let (true, Some(value)) = (upgrade, upgrade_value) {
            req.insert_header(header::UPGRADE, value)?;
            req.insert_header(header::CONNECTION, "upgrade")?;
        }

        // X-Forwarded-*: a trusted proxy's chain is extended, anybody else's is replaced,
        // so the upstream never sees a hop the client made up.
        let trusted = ctx.peer_trusted;
        let peer_text = ctx.peer.map(|p| p.to_string()).unwrap_or_default();
        let chain: Vec<String> = if trusted {
            req.headers
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .map(str::to_string)
                .collect()
        } else {
            Vec::new()
        };
        let xff = if chain.is_empty() {
            peer_text
        } else {
            format!("{}, {peer_text}", chain.join(", "))
        };
        req.insert_header("x-forwarded-for", xff)?;
        if !(trusted && req.headers.contains_key("x-forwarded-proto")) {
            req.insert_header("x-forwarded-proto", "http")?;
        }
        req.insert_header(header::HOST, up.authority.as_str())?;
        req.remove_header(SESSION_SEQ_HEADER);
        if let Some(seq) = ctx.seq {
            req.insert_header(SESSION_SEQ_HEADER, seq)?;
        }
        for (name, value) in &up.headers {
            req.remove_header(name);
            req.insert_header(name.clone(), value.clone())?;
        }
        Ok(())
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        fd: std::os::unix::io::RawFd,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let (Some(f), Some(id)) = (&ctx.in_flight, ctx.session) {
            if self.shared.attach_upstream(&id, &f.ticket, fd).is_err() {
                return Error::e_explain(SESSION_ENDED, "while connecting");
            }
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if ctx.in_flight.is_some() {
            if let Some(left) = self.shared.hold_remaining(Instant::now()) {
                resp.insert_header(api::HOLD_REMAINING_HEADER, left.as_secs())?;
            }
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        _ctx: &mut RequestCtx,
    ) -> Result<()> {
        if resp.status != http::StatusCode::SWITCHING_PROTOCOLS {
            for name in ["keep-alive", "proxy-connection", "proxy-authenticate"] {
                resp.remove_header(name);
            }
        }
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let cut = ctx.in_flight.as_ref().is_some_and(InFlight::is_cut);
        let (reply, kind) = match (e.etype(), e.esource()) {
            // Its session ended: not an upstream failure. Say so if we still can; the
            // connection is closed either way.
            _ if cut => (Some(api::not_active()), None),
            (ErrorType::ConnectTimedout, _) => (Some(api::upstream_timed_out()), Some("timeout")),
            (ErrorType::ReadTimedout | ErrorType::WriteTimedout, ErrorSource::Upstream) => {
                (Some(api::upstream_timed_out()), Some("timeout"))
            }
            (
                ErrorType::ConnectRefused
                | ErrorType::ConnectNoRoute
                | ErrorType::ConnectError
                | ErrorType::SocketError
                | ErrorType::BindError,
                _,
            ) => (Some(api::upstream_unavailable()), Some("connect")),
            (_, ErrorSource::Upstream) => (Some(api::upstream_unavailable()), Some("io")),
            (ErrorType::HTTPStatus(code), _) => {
                (Some(Reply::detail(*code, "Request failed")), None)
            }
            // The client went away or sent garbage: nobody to answer, or a plain 400.
            (
                ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed,
                ErrorSource::Downstream,
            ) => (None, None),
            (ErrorType::ReadTimedout, ErrorSource::Downstream) => (None, None),
            (_, ErrorSource::Downstream) => (Some(Reply::detail(400, "Bad request")), None),
            _ => (Some(Reply::detail(500, "Internal error")), None),
        };
        if let (Some(kind), Some(up)) = (kind, self.upstream(ctx)) {
            debug_assert!(UPSTREAM_ERROR_KINDS.contains(&kind));
            ctx.upstream_error = Some(kind);
            self.shared
                .metrics()
                .upstream_errors
                .with_label_values(&[up.name.as_str(), kind])
                .inc();
        }
        let mut code = 0;
        if let Some(reply) = reply {
            // Once the response head went out, the only honest signal left is closing.
            if session.response_written().is_none() {
                code = reply.status;
                ctx.local_status = Some(code);
                if let Err(err) = write_reply(session, reply).await {
                    tracing::debug!(%err, "could not write the error answer");
                }
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        // The request is over: let the session be reaped again from now on.
        drop(ctx.in_flight.take());
        let status = session
            .response_written()
            .map(|h| h.status.as_u16())
            .or(ctx.local_status)
            .unwrap_or(0);
        let upstream = self.upstream(ctx).map(|u| u.name.as_str());
        let elapsed = ctx.upstream_started.map(|t| t.elapsed());
        if let (Some(name), Some(elapsed)) = (upstream, elapsed) {
            let m = self.shared.metrics();
            m.upstream_requests
                .with_label_values(&[name, status_class(status)])
                .inc();
            m.upstream_duration
                .with_label_values(&[name])
                .observe(elapsed.as_secs_f64());
        }
        // The fields cost a few allocations: build them only when the line is wanted.
        if !tracing::enabled!(target: ACCESS, tracing::Level::INFO) {
            return;
        }
        let req = session.req_header();
        let path = loggable_path(req.raw_path());
        let session_tag = ctx.session.map(|id| id.short());
        tracing::info!(
            target: ACCESS,
            method = %req.method,
            path = %path,
            client = %ctx.client.map(|c| c.to_string()).unwrap_or_default(),
            session = session_tag.as_deref().unwrap_or("-"),
            decision = ctx.decision.unwrap_or("-"),
            status,
            upstream = upstream.unwrap_or("-"),
            upstream_error = ctx.upstream_error.unwrap_or("-"),
            error = e.map(|e| e.etype().as_str()).unwrap_or("-"),
            duration_ms = ctx.started.map_or(0, |t| t.elapsed().as_millis() as u64),
        );
    }
}

/// The request path as logged: at most 256 characters, and a session id in
/// `/session/{id}` cut to 8 characters, because the id is the gate credential.
fn loggable_path(raw: &[u8]) -> String {
    let path = String::from_utf8_lossy(raw);
    let path: String = match path.strip_prefix("/session/") {
        Some(rest) if rest.len() > 8 && rest != "heartbeat" => {
            let cut: String = rest.chars().take(8).collect();
            format!("/session/{cut}…")
        }
        _ => path.into_owned(),
    };
    path.chars().take(256).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logged_paths_never_carry_a_whole_session_id() {
        let id = "0b9f7a0e-6f0b-4f7c-9a55-2f7d8b1c0e11";
        assert_eq!(
            loggable_path(format!("/session/{id}").as_bytes()),
            "/session/0b9f7a0e…"
        );
        assert_eq!(
            loggable_path(format!("/session/{id}?wait=5").as_bytes()),
            "/session/0b9f7a0e…"
        );
        assert_eq!(loggable_path(b"/session/heartbeat"), "/session/heartbeat");
        assert_eq!(loggable_path(b"/session"), "/session");
        assert_eq!(loggable_path(b"/lab/devices"), "/lab/devices");
        assert_eq!(loggable_path(&[b'a'; 300]).len(), 256);
    }
    use http::HeaderValue;

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = http::HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("x-session-id", HeaderValue::from_static("abc"));
        h.insert("content-length", HeaderValue::from_static("3"));
        for name in hop_by_hop(&h) {
            h.remove(name);
        }
        let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, vec!["content-length", "x-session-id"]);
    }
}

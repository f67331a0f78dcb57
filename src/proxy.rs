//! The thin pingora adapter: `impl ProxyHttp` for [`LabGate`].
//!
//! Each phase is a few calls: `request_filter` checks the target (`path`), answers the
//! session API (`api`) and the gate's refusals (`state::Shared::gate`), and lets only
//! what the gate allowed go on; `upstream_request_filter` applies `forward`'s header
//! edits; `fail_to_proxy` classifies pingora's error and writes `forward`'s answer;
//! `logging` records metrics and the access line. Per-request facts live in
//! [`RequestCtx`]. Must never make a policy decision itself: those belong to `gate`,
//! `api`, `forward`, `limits` and `path`.

mod ctx;
mod wire;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorType};

use crate::api::{self, Caller, Endpoint, Reply};
use crate::bridge::NotReady;
use crate::config::{IdentitySource, Upstream};
use crate::forward::{self, Edit};
use crate::gate::{self, Denied, Verdict};
use crate::identity::{self, Identity};
use crate::limits;
use crate::logfield;
use crate::metrics::status_class;
use crate::path;
use crate::splice::device::Opened;
use crate::splice::upstream::Relayed;
use crate::splice::{self};
use crate::state::{Shared, AUDIT};

use ctx::{Forwarded, Routed};
pub use ctx::{InFlight, RequestCtx};
use wire::{classify, discard_small_body, header_values, peer_ip, write_reply};

/// Access log lines go to their own target.
pub const ACCESS: &str = "labgate::access";

/// How long an idle pooled upstream connection is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The error a request gets when its session ended under it.
const SESSION_ENDED: ErrorType = ErrorType::Custom("session ended");

pub struct LabGate {
    shared: Arc<Shared>,
}

impl LabGate {
    pub fn new(shared: Arc<Shared>) -> Self {
        LabGate { shared }
    }
}

impl LabGate {
    fn upstream(&self, routed: &Routed) -> &Upstream {
        // The index comes from the route table built with this very list.
        &self.shared.config.upstreams[routed.upstream]
    }

    async fn answer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        reply: Reply,
    ) -> Result<bool> {
        ctx.local_status = Some(reply.status);
        // Tell labgate's own answers from the lab's (a 404 from the gate is not one
        // from the lab): the gate decision, or `local` for the session API.
        let decision = match ctx.verdict {
            Some(v) if v != Verdict::Allowed => v.as_str(),
            _ => "local",
        };
        let reply = reply.with_header(api::GATE_HEADER, decision);
        if !discard_small_body(session).await {
            // Unread body left: the connection cannot carry another request.
            session.set_keepalive(None);
        }
        write_reply(session, reply).await?;
        Ok(true)
    }

    /// Identity mode: who is asking, from the connection's certificate or the trusted
    /// proxy's header; `Ok(None)` when identity mode is off.
    fn identify(
        &self,
        session: &Session,
        ctx: &RequestCtx,
    ) -> std::result::Result<Option<Identity>, identity::Refusal> {
        let config = &self.shared.config;
        let Some(id_config) = &config.identity else {
            return Ok(None);
        };
        let connection = crate::tls::listener::connection_identity(session.digest());
        let trusted = &config.server.trusted_proxies;
        match &id_config.source {
            IdentitySource::Mtls(_) => identity::of_request(
                identity::Mode::Mtls,
                connection,
                ctx.peer,
                trusted,
                std::iter::empty(),
            ),
            IdentitySource::Header(name) => identity::of_request(
                identity::Mode::Header(name),
                connection,
                ctx.peer,
                trusted,
                header_values(session.req_header(), name),
            ),
        }
    }

    /// Applies `forward`'s policy to the request head sent upstream: the checked target,
    /// managed headers, `X-Forwarded-*`, fencing, identity, injected headers.
    fn shape_request(
        &self,
        req: &mut RequestHeader,
        ctx: &RequestCtx,
        routed: &Routed,
        upgrade: bool,
    ) -> Result<()> {
        let up = self.upstream(routed);
        req.set_raw_path(routed.target.as_bytes())?;
        let config = &self.shared.config;
        let identity = match (&config.identity, &ctx.identity) {
            (Some(c), Some(holder)) => Some(forward::IdentityHop {
                upstream: &c.upstream_header,
                source: match &c.source {
                    IdentitySource::Header(h) => Some(h),
                    IdentitySource::Mtls(_) => None,
                },
                // The gate let it through: the caller owns the ACTIVE session.
                holder: holder.as_str(),
            }),
            _ => None,
        };
        let hop = forward::Hop {
            peer: ctx.peer,
            peer_trusted: ctx.peer_trusted,
            upgrade,
            https: config.listener_tls.is_some(),
            authority: &up.authority,
            seq: routed.in_flight.allowed.seq,
            configured: &up.headers,
            identity,
            upstream_session: routed
                .bridged
                .as_ref()
                .and_then(|b| b.upstream_id.as_ref())
                .map(|id| id.as_str()),
            token: self
                .shared
                .bridge
                .lane(routed.upstream)
                .and_then(|l| l.config.token_header.as_ref())
                .map(|name| {
                    let token = routed.bridged.as_ref().and_then(|b| b.token.as_ref());
                    (name, token.map(|t| t.expose()))
                }),
        };
        for edit in forward::request_edits(&req.headers, &hop) {
            match edit {
                Edit::Remove(name) => {
                    req.remove_header(&name);
                }
                Edit::Insert(name, value) => req.insert_header(name, value)?,
            }
        }
        Ok(())
    }

    /// `GET /lab/tunnel/{target}`: a device tunnel, refused or run to its end here.
    async fn tunnel(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        header: gate::SessionHeader,
        target: &str,
    ) -> Result<bool> {
        let opened = splice::device::open(
            &self.shared,
            &session.downstream_session,
            header,
            ctx.identity.as_ref(),
            target,
            ctx.client,
            ctx.started,
        )
        .await;
        match opened {
            Opened::Refused {
                reply,
                verdict,
                session: id,
            } => {
                ctx.verdict = Some(verdict);
                ctx.session = id;
                self.answer(session, ctx, reply).await
            }
            Opened::Ready(tunnel) => {
                ctx.verdict = Some(Verdict::Allowed);
                ctx.session = Some(tunnel.session());
                ctx.local_status = Some(101);
                tunnel.run(&mut session.downstream_session).await;
                Ok(true)
            }
        }
    }

    /// An allowed upgrade request to a `/lab` upstream: sent on labgate's own connection,
    /// the `101` relayed and the bytes spliced until either side or the turn ends.
    async fn forward_upgrade(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let Some(routed) = &ctx.routed else {
            return Error::e_explain(ErrorType::InternalError, "no upstream chosen");
        };
        let up = self.upstream(routed);
        let allowed = &routed.in_flight.allowed;
        let mut req = session.req_header().clone();
        self.shape_request(&mut req, ctx, routed, true)?;
        let mut extra = Vec::new();
        if let Some(left) = self.shared.hold_remaining(Instant::now()) {
            extra.push((api::HOLD_REMAINING_HEADER, left.as_secs().to_string()));
        }
        // An upgraded connection may idle for as long as its user likes.
        session.set_read_timeout(None);
        ctx.forwarded = Some(Forwarded {
            started: Instant::now(),
            error: None,
        });
        let shared = &self.shared;
        let relayed = splice::upstream::forward_upgrade(
            &mut session.downstream_session,
            up.addr,
            up.connect_timeout,
            up.read_timeout,
            splice::upstream::upstream_request(&req),
            &allowed.ticket,
            |fd| shared.attach_upstream(allowed, fd).is_ok(),
            &extra,
        )
        .await;
        match relayed {
            Ok(Relayed::Switched(_) | Relayed::Answered(_)) => Ok(true),
            Err(e) => {
                let (kind, side, cut) = e.failure();
                let failure = forward::on_failure(kind, side, cut);
                if let Some(kind) = failure.upstream {
                    self.shared.metrics().count_upstream_error(&up.name, kind);
                    if let Some(f) = ctx.forwarded.as_mut() {
                        f.error = Some(kind);
                    }
                }
                tracing::debug!(error = %e, upstream = %up.name, "upgrade not forwarded");
                let reply = failure
                    .answer
                    .map(api::failed)
                    .unwrap_or_else(|| api::failed(forward::Answer::UpstreamUnavailable));
                self.answer(session, ctx, reply).await
            }
        }
    }

    /// The gate said no: audit it and answer.
    async fn deny(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        denied: Denied,
        header: gate::SessionHeader,
        path: &str,
    ) -> Result<bool> {
        let now = ctx.started;
        ctx.verdict = Some(denied.verdict());
        if let gate::SessionHeader::One(Some(id)) = header {
            ctx.session = Some(id);
        }
        tracing::info!(
            target: AUDIT,
            event = "gate_denied",
            decision = denied.verdict().as_str(),
            client = %ctx.client.map(|c| c.to_string()).unwrap_or_default(),
            path = %logfield::path(path.as_bytes()),
        );
        if let (Denied::Unknown, Some(client)) = (denied, ctx.client) {
            self.shared.note_unknown_id(client, now);
        }
        let id = match header {
            gate::SessionHeader::One(id) => id,
            _ => None,
        };
        let reply = api::refused(denied, id, ctx.identity.as_ref(), &self.shared, now);
        self.answer(session, ctx, reply).await
    }
}

#[async_trait]
impl ProxyHttp for LabGate {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new()
    }

    /// pingora calls this right after reading a request header when the connection has
    /// a user context; `conn` puts its header clock there, so the header timeout stops.
    fn on_connection_reuse(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
        prev_ctx: Box<dyn std::any::Any + Send + Sync>,
    ) {
        crate::conn::header_read(prev_ctx);
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let now = Instant::now();
        ctx.started = now;
        let shared = &self.shared;
        let trusted_proxies = &shared.config.server.trusted_proxies;
        let peer = peer_ip(session);
        ctx.peer_trusted = peer.is_some_and(|p| limits::is_trusted(p, trusted_proxies));
        ctx.peer = peer;
        let req = session.req_header();
        ctx.client = peer.map(|p| {
            let forwarded_for = header_values(req, &forward::X_FORWARDED_FOR);
            limits::client_address(p, forwarded_for, trusted_proxies)
        });

        match self.identify(session, ctx) {
            Ok(caller) => ctx.identity = caller,
            Err(why) => {
                tracing::info!(
                    target: AUDIT,
                    event = "identity_refused",
                    reason = why.label(),
                    peer = %ctx.peer.map(|p| p.to_string()).unwrap_or_default(),
                    path = %logfield::path(req.raw_path()),
                );
                shared.metrics().count_identity_refused(why.label());
                return self.answer(session, ctx, api::unauthenticated(why)).await;
            }
        }
        let req = session.req_header();

        let target = match path::check(req.raw_path()) {
            Ok(t) => t,
            Err(why) => {
                tracing::info!(
                    target: AUDIT,
                    event = "gate_denied",
                    decision = Verdict::Invalid.as_str(),
                    client = %ctx.client.map(|c| c.to_string()).unwrap_or_default(),
                    path = %logfield::path(req.raw_path()),
                    why = %why,
                );
                ctx.verdict = Some(Verdict::Invalid);
                shared.count_decision(Verdict::Invalid);
                return self.answer(session, ctx, api::invalid_path()).await;
            }
        };
        let header = gate::session_header(header_values(req, &forward::X_SESSION_ID));
        let endpoint = api::route(&req.method, &target.path);
        if let Endpoint::Tunnel(tunnel_target) = endpoint {
            let tunnel_target = tunnel_target.to_string();
            return self.tunnel(session, ctx, header, &tunnel_target).await;
        }
        if endpoint != Endpoint::Lab {
            let Some(client) = ctx.client else {
                // Only Unix-socket peers lack an IP, and labgate listens on TCP only.
                return self.answer(session, ctx, api::not_found()).await;
            };
            let caller = Caller {
                client,
                identity: ctx.identity.as_ref(),
            };
            let reply = api::handle(shared, endpoint, target.query, header, caller, now).await;
            return self.answer(session, ctx, reply).await;
        }

        let allowed = match shared.gate(header, ctx.identity.as_ref(), now) {
            Ok(allowed) => allowed,
            Err(denied) => {
                let path = target.path.to_string();
                return self.deny(session, ctx, denied, header, &path).await;
            }
        };
        ctx.verdict = Some(Verdict::Allowed);
        ctx.session = Some(allowed.id);
        let in_flight = InFlight {
            shared: shared.clone(),
            allowed,
        };
        let Some((prefix, &upstream)) = shared.config.routes.lookup(&target.path) else {
            let answered = self.answer(session, ctx, api::not_found()).await;
            drop(in_flight);
            return answered;
        };
        let target = if shared.config.upstreams[upstream].strip_prefix {
            target.with_path(path::strip(&target.path, prefix))
        } else {
            target.to_request_target()
        };
        // A bridged upstream serves the turn once its upstream session (and token) is
        // ready; the wait is bounded by the lane's ready_wait.
        let bridged = match shared.bridge.ready(upstream, in_flight.allowed.seq).await {
            Ok(bridged) => bridged,
            Err(NotReady) => {
                let answered = self.answer(session, ctx, api::lab_busy()).await;
                drop(in_flight);
                return answered;
            }
        };
        ctx.routed = Some(Routed {
            in_flight,
            upstream,
            target,
            bridged,
        });
        if session.is_upgrade_req() {
            if shared.config.upstreams[upstream].tls.is_none() {
                // On labgate's own upstream connection, not pingora's upgrade path, which
                // tears some upgrades down right after the 101 (cloudflare/pingora#946).
                return self.forward_upgrade(session, ctx).await;
            }
            // A TLS upstream's upgrade still takes pingora's path (labgate's splice
            // speaks plain TCP upstream); an idle WebSocket must outlive pingora's 60 s
            // downstream read timeout.
            session.set_read_timeout(None);
        }
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let Some(routed) = &ctx.routed else {
            return Error::e_explain(ErrorType::InternalError, "no upstream chosen");
        };
        if routed.in_flight.is_cut() {
            return Error::e_explain(SESSION_ENDED, "before connecting");
        }
        let up = self.upstream(routed);
        // A resolved SocketAddr: no DNS on the request path.
        let mut peer = match &up.tls {
            Some(tls) => tls.peer(up.addr, session.is_upgrade_req()),
            None => HttpPeer::new(up.addr, false, String::new()),
        };
        // Pool connections per session: a socket of an ended (cut) session must never
        // serve another session's request.
        peer.group_key = routed.in_flight.allowed.seq;
        peer.options.idle_timeout = Some(POOL_IDLE_TIMEOUT);
        peer.options.connection_timeout = Some(up.connect_timeout);
        peer.options.write_timeout = Some(up.write_timeout);
        peer.options.read_timeout = if session.is_upgrade_req() {
            None
        } else {
            Some(up.read_timeout)
        };
        ctx.forwarded.get_or_insert_with(|| Forwarded {
            started: Instant::now(),
            error: None,
        });
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let Some(routed) = &ctx.routed else {
            return Error::e_explain(ErrorType::InternalError, "no upstream chosen");
        };
        self.shape_request(req, ctx, routed, session.is_upgrade_req())?;
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
        if let Some(routed) = &ctx.routed {
            if self
                .shared
                .attach_upstream(&routed.in_flight.allowed, fd)
                .is_err()
            {
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
        if ctx.routed.is_some() {
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
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        for name in forward::response_removals(resp.status.as_u16()) {
            resp.remove_header(*name);
        }
        let neops_lane = ctx.routed.as_ref().and_then(|r| {
            let lane = self.shared.bridge.lane(r.upstream)?;
            lane.config.neops.is_some().then_some(r.upstream)
        });
        if let Some(upstream) = neops_lane {
            for name in forward::BRIDGED_RESPONSE_REMOVALS {
                resp.remove_header(*name);
            }
            // Maybe the server forgot the turn's session (a restart): check it now
            // rather than at the next keepalive.
            if resp.status == http::StatusCode::NOT_FOUND {
                self.shared.bridge.nudge(upstream);
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
        let cut = ctx.routed.as_ref().is_some_and(|r| r.in_flight.is_cut());
        let (kind, side) = classify(e);
        let failure = forward::on_failure(kind, side, cut);
        if let (Some(kind), Some(routed)) = (failure.upstream, &ctx.routed) {
            let name = &self.upstream(routed).name;
            self.shared.metrics().count_upstream_error(name, kind);
            if let Some(f) = ctx.forwarded.as_mut() {
                f.error = Some(kind);
            }
        }
        let mut code = 0;
        if let Some(reply) = failure.answer.map(api::failed) {
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

    /// pingora's error lines describe the request with this; its default holds the
    /// whole path and `Host` as sent, unbounded and with any session id in it.
    fn request_summary(&self, session: &Session, ctx: &RequestCtx) -> String {
        let req = session.req_header();
        format!(
            "{} {}, client: {}",
            req.method,
            logfield::path(req.raw_path()),
            ctx.client.map(|c| c.to_string()).unwrap_or_default()
        )
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        // The request is over: let the session be reaped again from now on.
        let routed = ctx.routed.take();
        let upstream = routed.as_ref().map(|r| self.upstream(r).name.as_str());
        drop(routed);
        let status = session
            .response_written()
            .map(|h| h.status.as_u16())
            .or(ctx.local_status)
            .unwrap_or(0);
        if let (Some(name), Some(forwarded)) = (upstream, &ctx.forwarded) {
            let m = self.shared.metrics();
            m.upstream_requests
                .with_label_values(&[name, status_class(status)])
                .inc();
            m.upstream_duration
                .with_label_values(&[name])
                .observe(forwarded.started.elapsed().as_secs_f64());
        }
        ctx.log_access(session.req_header(), status, upstream, e);
    }
}

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
mod steps;
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
use crate::forward;
use crate::gate::{self, Denied, Verdict};
use crate::health;
use crate::identity::{self, Identity};
use crate::splice;
use crate::splice::device::Opened;
use crate::splice::upstream::Relayed;
use crate::state::{Shared, AUDIT};
use crate::{limits, logfield, path};

use ctx::{Forwarded, Routed};
pub use ctx::{InFlight, RequestCtx};
use wire::{
    apply_edits, classify, discard_small_body, header_values, peer_ip, read_sent, sent_as_is,
    write_reply,
};

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

#[async_trait]
impl ProxyHttp for LabGate {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        // The request's one load of the config: every phase reads this copy.
        RequestCtx::new(self.shared.config())
    }

    /// pingora calls this first, right after reading a request header: the header
    /// timeout (`conn`) stops.
    async fn early_request_filter(
        &self,
        session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> Result<()> {
        crate::conn::header_read(session.downstream_session.stream());
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let now = Instant::now();
        ctx.started = now;
        let shared = &self.shared;
        let config = ctx.config.clone();
        let trusted_proxies = &config.server.trusted_proxies;
        let peer = peer_ip(session);
        ctx.peer_trusted = peer.is_some_and(|p| limits::is_trusted(p, trusted_proxies));
        ctx.peer = peer;
        let req = session.req_header();
        ctx.client = peer.map(|p| {
            if !ctx.peer_trusted {
                // Only a trusted proxy's X-Forwarded-For counts: no lookup for the rest.
                return p;
            }
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
            let reply = if endpoint == Endpoint::CreateSession {
                // Only `POST /session` reads its body (an optional label); no query.
                let sent = read_sent(session).await;
                api::handle(
                    shared,
                    Endpoint::CreateSession,
                    None,
                    header,
                    caller,
                    &sent,
                    now,
                )
                .await
            } else {
                let sent = api::Sent::default();
                api::handle(shared, endpoint, target.query, header, caller, &sent, now).await
            };
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
        let Some((prefix, &upstream)) = config.routes.lookup(&target.path) else {
            let answered = self.answer(session, ctx, api::not_found()).await;
            drop(in_flight);
            return answered;
        };
        let target = if config.upstreams[upstream].strip_prefix {
            Some(target.with_path(path::strip(&target.path, prefix)))
        } else if sent_as_is(req.raw_path(), &target) {
            // Usually: no copy to make.
            None
        } else {
            Some(target.to_request_target())
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
        let upgrade = session.is_upgrade_req();
        ctx.routed = Some(Routed {
            in_flight,
            upstream,
            target,
            bridged,
            upgrade,
        });
        if upgrade {
            // On labgate's own upstream connection (TLS or not), not pingora's upgrade
            // path, which tears some upgrades down right after the 101
            // (cloudflare/pingora#946).
            return self.forward_upgrade(session, ctx).await;
        }
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let Some(routed) = &ctx.routed else {
            return Error::e_explain(ErrorType::InternalError, "no upstream chosen");
        };
        if routed.in_flight.is_cut() {
            return Error::e_explain(SESSION_ENDED, "before connecting");
        }
        let up = self.upstream(ctx, routed);
        // A resolved SocketAddr: no DNS on the request path.
        let mut peer = match &up.tls {
            Some(tls) => tls.peer(up.addr, routed.upgrade),
            None => HttpPeer::new(up.addr, false, String::new()),
        };
        // Pool connections per session: a socket of an ended (cut) session must never
        // serve another session's request.
        peer.group_key = routed.in_flight.allowed.seq;
        peer.options.idle_timeout = Some(POOL_IDLE_TIMEOUT);
        peer.options.connection_timeout = Some(up.connect_timeout);
        peer.options.write_timeout = Some(up.write_timeout);
        peer.options.read_timeout = if routed.upgrade {
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
        _session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let Some(routed) = &ctx.routed else {
            return Error::e_explain(ErrorType::InternalError, "no upstream chosen");
        };
        self.shape_request(req, ctx, routed, routed.upgrade)?;
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
            // A connection made (or reused): the upstream is reachable (`health`).
            ctx.config
                .health
                .record(routed.upstream, true, Instant::now());
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
        let removals = forward::response_removals(resp.status.as_u16());
        // One pass over the (few) names the upstream sent: usually none of them is
        // there, and a removal by name parses and hashes it in both of pingora's maps.
        if resp.headers.keys().any(|k| removals.contains(&k.as_str())) {
            for name in removals {
                resp.remove_header(*name);
            }
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
        if let Some(routed) = ctx
            .routed
            .as_ref()
            .filter(|_| health::connect_failed(kind, cut))
        {
            ctx.config
                .health
                .record(routed.upstream, false, Instant::now());
        }
        if let (Some(kind), Some(routed)) = (failure.upstream, &ctx.routed) {
            if let Some(series) = ctx.config.series(routed.upstream) {
                series.count_error(kind);
            }
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
        let index = ctx.routed.take().map(|r| r.upstream);
        let status = session
            .response_written()
            .map(|h| h.status.as_u16())
            .or(ctx.local_status)
            .unwrap_or(0);
        if let (Some(series), Some(forwarded)) =
            (index.and_then(|i| ctx.config.series(i)), &ctx.forwarded)
        {
            series.record(status, forwarded.started.elapsed());
        }
        let upstream = index.and_then(|i| ctx.config.upstreams.get(i).map(|u| u.name.as_str()));
        ctx.log_access(session.req_header(), status, upstream, e);
    }
}

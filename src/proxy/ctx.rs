//! What one request carries through pingora's phases: [`RequestCtx`], grouped by when
//! each fact becomes known, and the in-flight guard of an allowed request.
//!
//! Must never decide anything: the phases in `proxy` fill it in, `logging` reads it.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use pingora::http::RequestHeader;
use pingora::Error;

use crate::forward::UpstreamError;
use crate::gate::Verdict;
use crate::identity::Identity;
use crate::queue::SessionId;
use crate::state::{Allowed, Current, Shared};

use super::ACCESS;

/// A request the gate allowed, counted in flight in the queue; ends it when dropped,
/// whatever path the request took out of pingora.
pub struct InFlight {
    pub(super) shared: Arc<Shared>,
    pub(super) allowed: Allowed,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.shared.end_request(&self.allowed, Instant::now());
    }
}

impl InFlight {
    pub(super) fn is_cut(&self) -> bool {
        self.allowed.ticket.is_cut()
    }
}

/// What one request learned on its way through the filters.
pub struct RequestCtx {
    /// The config in force when the request began, loaded once: it keeps it to the end,
    /// whatever a reload does meanwhile.
    pub(super) config: Arc<Current>,
    pub(super) started: Instant,
    /// The TCP peer, and whether it is a trusted proxy.
    pub(super) peer: Option<IpAddr>,
    pub(super) peer_trusted: bool,
    /// The address the request counts against (§4).
    pub(super) client: Option<IpAddr>,
    /// Identity mode: who is asking, as proven by certificate or trusted proxy.
    pub(super) identity: Option<Identity>,
    pub(super) verdict: Option<Verdict>,
    /// The session the request named, allowed or not.
    pub(super) session: Option<SessionId>,
    /// Status of an answer labgate wrote itself.
    pub(super) local_status: Option<u16>,
    /// Known after routing: an allowed `/lab` request and where it goes.
    pub(super) routed: Option<Routed>,
    /// Known once forwarding began.
    pub(super) forwarded: Option<Forwarded>,
}

pub(super) struct Routed {
    pub(super) in_flight: InFlight,
    /// Index into the request's `config.upstreams`.
    pub(super) upstream: usize,
    /// The checked (and maybe prefix-stripped) target to send upstream; `None`: the
    /// target as the client sent it.
    pub(super) target: Option<String>,
    /// On a bridged upstream: the turn's upstream session id and token (§8).
    pub(super) bridged: Option<Arc<crate::bridge::Ready>>,
    /// An upgrade handshake (`Upgrade` sent), asked of pingora once.
    pub(super) upgrade: bool,
}

pub(super) struct Forwarded {
    pub(super) started: Instant,
    pub(super) error: Option<UpstreamError>,
}

impl RequestCtx {
    pub(super) fn new(config: Arc<Current>) -> Self {
        RequestCtx {
            config,
            started: Instant::now(),
            peer: None,
            peer_trusted: false,
            client: None,
            identity: None,
            verdict: None,
            session: None,
            local_status: None,
            routed: None,
            forwarded: None,
        }
    }

    /// The access line; the fields cost a few allocations, so they are built only when
    /// the line is wanted.
    pub(super) fn log_access(
        &self,
        req: &RequestHeader,
        status: u16,
        upstream: Option<&str>,
        e: Option<&Error>,
    ) {
        if !tracing::enabled!(target: ACCESS, tracing::Level::INFO) {
            return;
        }
        let session_tag = self.session.map(|id| id.tag());
        let upstream_error = self.forwarded.as_ref().and_then(|f| f.error);
        tracing::info!(
            target: ACCESS,
            method = %req.method,
            path = %crate::logfield::path(req.raw_path()),
            client = %self.client.map(|c| c.to_string()).unwrap_or_default(),
            identity = self.identity.as_ref().map_or("-", Identity::as_str),
            session = session_tag.as_deref().unwrap_or("-"),
            decision = self.verdict.map_or("-", Verdict::as_str),
            status,
            upstream = upstream.unwrap_or("-"),
            upstream_error = upstream_error.map_or("-", UpstreamError::as_str),
            error = e.map(|e| e.etype().as_str()).unwrap_or("-"),
            duration_ms = self.started.elapsed().as_millis() as u64,
        );
    }
}

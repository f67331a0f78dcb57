//! The steps `request_filter` takes that need pingora's session: identifying the caller,
//! answering locally, opening a device tunnel, splicing a WebSocket upgrade, refusing at
//! the gate, and shaping the forwarded request. Each calls into the pure modules for
//! its decision; like the rest of the adapter it never makes one itself.

use super::*;

impl LabGate {
    /// The upstream a request was routed to, from the request's own config.
    pub(super) fn upstream<'c>(&self, ctx: &'c RequestCtx, routed: &Routed) -> &'c Upstream {
        // The index comes from the route table built with this very list.
        &ctx.config.upstreams[routed.upstream]
    }

    pub(super) async fn answer(
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
    pub(super) fn identify(
        &self,
        session: &Session,
        ctx: &RequestCtx,
    ) -> std::result::Result<Option<Identity>, identity::Refusal> {
        let config = &ctx.config;
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
    pub(super) fn shape_request(
        &self,
        req: &mut RequestHeader,
        ctx: &RequestCtx,
        routed: &Routed,
        upgrade: bool,
    ) -> Result<()> {
        let up = self.upstream(ctx, routed);
        // Usually the path is sent as it came: re-parsing it into a URI costs ~1,800
        // instructions a request (benches/profile.sh forward).
        if let Some(target) = &routed.target {
            if req.raw_path() != target.as_bytes() {
                req.set_raw_path(target.as_bytes())?;
            }
        }
        let config = &ctx.config;
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
        let edits = forward::request_edits(&req.headers, &hop);
        apply_edits(req, edits)
    }

    /// `GET /lab/tunnel/{target}`: a device tunnel, refused or run to its end here.
    pub(super) async fn tunnel(
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
    pub(super) async fn forward_upgrade(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<bool> {
        let Some(routed) = &ctx.routed else {
            return Error::e_explain(ErrorType::InternalError, "no upstream chosen");
        };
        let config = ctx.config.clone();
        let up = &config.upstreams[routed.upstream];
        let upstream = routed.upstream;
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
            up.tls.as_ref(),
            up.connect_timeout,
            up.read_timeout,
            splice::upstream::upstream_request(&req),
            &allowed.ticket,
            |fd| shared.attach_upstream(allowed, fd).is_ok(),
            &extra,
        )
        .await;
        match relayed {
            Ok(Relayed::Switched(_) | Relayed::Answered(_)) => {
                ctx.config.health.record(upstream, true, Instant::now());
                Ok(true)
            }
            Err(e) => {
                let (kind, side, cut) = e.failure();
                if health::connect_failed(kind, cut) {
                    ctx.config.health.record(upstream, false, Instant::now());
                }
                let failure = forward::on_failure(kind, side, cut);
                if let Some(kind) = failure.upstream {
                    if let Some(series) = config.series(upstream) {
                        series.count_error(kind);
                    }
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
    pub(super) async fn deny(
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

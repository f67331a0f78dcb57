//! The gate side of [`Shared`]: `/lab` requests and device tunnels let through, the
//! connections they register to be cut, and the forwarded requests still in flight.

use super::*;

impl Shared {
    /// The gate, counted. What it allows must be handed back to
    /// [`Shared::end_request`].
    /// `caller`: the request's identity in identity mode (a session it does not own is
    /// unknown to it).
    pub fn gate(
        &self,
        header: SessionHeader,
        caller: Option<&Identity>,
        now: Instant,
    ) -> Result<Allowed, Denied> {
        let (decided, cross) = {
            let mut core = self.lock();
            let core = &mut *core;
            let (decision, cross) =
                gate::decide_as(header, caller, &core.owners, &mut core.queue, now);
            let decided = decision.allowed().map(|(id, seq)| Allowed {
                id,
                seq,
                ticket: core.conns.begin(id),
            });
            (decided, cross)
        };
        if let (Some(owner), Some(caller), SessionHeader::One(Some(id))) = (cross, caller, header) {
            self.audit_cross_identity(&id, caller, &owner, "lab");
        }
        match &decided {
            Ok(_) => {
                self.count_decision(Verdict::Allowed);
                self.forwarded_in_flight.fetch_add(1, Ordering::SeqCst);
            }
            Err(denied) => self.count_decision(denied.verdict()),
        }
        decided
    }

    pub fn count_decision(&self, verdict: Verdict) {
        self.metrics.count_decision(verdict);
    }

    /// The gate for a device tunnel, and its per-session limit, under one lock: what it
    /// allows is in flight (never reaped as stale) and registered to be cut, and must be
    /// handed back to [`Shared::end_request`].
    pub fn open_tunnel(
        &self,
        header: SessionHeader,
        caller: Option<&Identity>,
        now: Instant,
    ) -> Result<Allowed, TunnelDenied> {
        let max = self.config().tunnels.max_per_session;
        let (decided, cross) = {
            let mut core = self.lock();
            let core = &mut *core;
            let (decision, cross) =
                gate::decide_as(header, caller, &core.owners, &mut core.queue, now);
            let decided = match decision.allowed() {
                Err(denied) => Err(TunnelDenied::Gate(denied)),
                Ok((id, seq)) => match core.conns.begin_tunnel(id, max) {
                    Ok(ticket) => Ok(Allowed { id, seq, ticket }),
                    Err(cut::TooManyTunnels) => {
                        core.queue.end_request(&id, now);
                        Err(TunnelDenied::Limit(id))
                    }
                },
            };
            (decided, cross)
        };
        if let (Some(owner), Some(caller), SessionHeader::One(Some(id))) = (cross, caller, header) {
            self.audit_cross_identity(&id, caller, &owner, "tunnel");
        }
        match &decided {
            Ok(_) => {
                self.count_decision(Verdict::Allowed);
                self.forwarded_in_flight.fetch_add(1, Ordering::SeqCst);
            }
            Err(TunnelDenied::Limit(_)) => self.count_decision(Verdict::Allowed),
            Err(TunnelDenied::Gate(denied)) => self.count_decision(denied.verdict()),
        }
        decided
    }

    /// Whether `id` names a session in the queue (WAITING or ACTIVE); refreshes nothing.
    pub fn is_known(&self, id: &SessionId) -> bool {
        self.lock().queue.view(id).is_some()
    }

    /// Records the upstream socket of an allowed request, so it can be cut.
    pub fn attach_upstream(
        &self,
        allowed: &Allowed,
        fd: std::os::fd::RawFd,
    ) -> Result<(), cut::AlreadyCut> {
        self.lock()
            .conns
            .attach(&allowed.id, allowed.ticket.token, fd)
    }

    /// A forwarded request (or upgraded connection) the gate allowed is over.
    pub fn end_request(&self, allowed: &Allowed, now: Instant) {
        {
            let mut core = self.lock();
            core.queue.end_request(&allowed.id, now);
            core.conns.end(&allowed.id, allowed.ticket.token);
        }
        self.forwarded_in_flight.fetch_sub(1, Ordering::SeqCst);
    }

    /// A shutdown's grace period is over: cuts every request, upgrade and tunnel still
    /// open (tunnels get their WebSocket close, like at the end of a turn); returns how
    /// many. The queue is untouched.
    pub fn cut_everything(&self, reason: &'static str) -> usize {
        self.lock().conns.cut_all(reason)
    }

    pub fn forwarded_in_flight(&self) -> usize {
        self.forwarded_in_flight.load(Ordering::SeqCst)
    }
}

//! One device tunnel request (`GET /lab/tunnel/{host}:{port}`), from the gate to the
//! audit line: [`open`] decides every refusal and connects to the device without writing
//! anything to the client; [`Prepared::run`] answers `101`, splices until the end and
//! records the tunnel (metrics, audit line).
//!
//! Refusal order follows the protocol: the gate (422, 400, 404, 423), then the target
//! (404, nothing connects), the handshake (426), the limit (429), then the connection
//! (502, 504). Must never connect before the gate, the allowlist and the limit agreed,
//! and never keep a tunnel registered past its end (the guard ends it on every path).

use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Instant;

use pingora::protocols::http::ServerSession;
use tokio::net::TcpStream;

use super::{answer_tunnel, client_socket, connect, set_keepalive, unless_cut, ConnectError};
use crate::api::{self, Reply};
use crate::gate::{Denied, SessionHeader, Verdict};
use crate::identity::Identity;
use crate::queue::SessionId;
use crate::state::{Allowed, Shared, TunnelDenied, AUDIT};
use crate::tunnel::ws::{self, Form};
use crate::tunnel::{Direction, Refused};

/// A registered tunnel: counted in flight (no stale reaping) and in the cut registry
/// until dropped, whatever path the request takes.
struct Registered {
    shared: Arc<Shared>,
    allowed: Allowed,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.shared.end_request(&self.allowed, Instant::now());
    }
}

/// A tunnel that passed every check and whose device connection is up.
pub struct Prepared {
    reg: Registered,
    target: String,
    addr: SocketAddr,
    device: TcpStream,
    form: Form,
    client: Option<IpAddr>,
}

/// What [`open`] decided.
pub enum Opened {
    /// Answer `reply` and stop. `verdict` is the gate's (for the access line), `session`
    /// the id the request named, when it named a valid one.
    Refused {
        reply: Reply,
        verdict: Verdict,
        session: Option<SessionId>,
    },
    Ready(Box<Prepared>),
}

fn refused_by_gate(denied: Denied) -> Refused {
    match denied {
        Denied::Missing => Refused::Missing,
        Denied::Duplicate => Refused::Invalid,
        Denied::Unknown => Refused::Unknown,
        Denied::Waiting { .. } => Refused::Waiting,
    }
}

/// The request being decided, for refusals.
struct Asked<'a> {
    shared: &'a Shared,
    client: Option<IpAddr>,
    target: &'a str,
}

impl Asked<'_> {
    /// Counts and audits a refusal, and hands back what to answer.
    fn refuse(
        &self,
        why: Refused,
        detail: &str,
        reply: Reply,
        verdict: Verdict,
        session: Option<SessionId>,
    ) -> Opened {
        self.shared.metrics().count_tunnel_refused(why);
        let target: String = self.target.chars().take(128).collect();
        let tag = session.map(|id| id.tag());
        tracing::info!(
            target: AUDIT,
            event = "tunnel_refused",
            client = %self.client.map(|c| c.to_string()).unwrap_or_default(),
            session = tag.as_deref().unwrap_or("-"),
            destination = %target,
            reason = why.as_str(),
            detail,
        );
        Opened::Refused {
            reply,
            verdict,
            session,
        }
    }
}

/// Checks a tunnel request and connects to its device; writes nothing to the client.
pub async fn open(
    shared: &Arc<Shared>,
    session: &ServerSession,
    header: SessionHeader,
    caller: Option<&Identity>,
    target: &str,
    client: Option<IpAddr>,
    now: Instant,
) -> Opened {
    let config = shared.config();
    let tunnels = &config.tunnels;
    // Pure checks first; their answers wait for the gate's.
    let resolved = tunnels.allowlist.resolve(target);
    let req = session.req_header();
    let form = ws::form(&req.method, req.version, &req.headers);
    let asked = Asked {
        shared,
        client,
        target,
    };
    let named = match header {
        SessionHeader::One(Some(id)) => Some(id),
        _ => None,
    };

    let allowed = match shared.open_tunnel(header, caller, now) {
        Ok(allowed) => allowed,
        Err(TunnelDenied::Limit(id)) => {
            let reply = api::too_many_tunnels();
            return asked.refuse(Refused::Limit, "limit", reply, Verdict::Allowed, Some(id));
        }
        Err(TunnelDenied::Gate(denied)) => {
            if let (Denied::Unknown, Some(client)) = (denied, client) {
                shared.note_unknown_id(client, now);
            }
            let reply = api::refused(denied, named, caller, shared, now);
            let why = refused_by_gate(denied);
            return asked.refuse(why, why.as_str(), reply, denied.verdict(), named);
        }
    };
    let id = allowed.id;
    let reg = Registered {
        shared: shared.clone(),
        allowed,
    };
    let no = |why: Refused, detail: &str, reply: Reply| {
        asked.refuse(why, detail, reply, Verdict::Allowed, Some(id))
    };
    let addr = match resolved {
        Ok(addr) => addr,
        Err(why) => {
            return no(
                Refused::NotAllowed,
                &why.to_string(),
                api::tunnel_not_allowed(),
            )
        }
    };
    let form = match form {
        Ok(f) => f,
        Err(why) => {
            let text = why.to_string();
            return no(Refused::Handshake, &text, api::not_websocket(&text));
        }
    };
    let connected = unless_cut(
        &reg.allowed.ticket,
        connect(addr, tunnels.connect_timeout, tunnels.keepalive),
    )
    .await;
    let device = match connected {
        // The turn ended while connecting.
        None => return no(Refused::Unknown, "session ended", api::not_active()),
        Some(Err(ConnectError::Timeout)) => {
            return no(Refused::Timeout, "connect timeout", api::tunnel_timed_out())
        }
        Some(Err(ConnectError::Io(e))) => {
            return no(
                Refused::Unreachable,
                &e.to_string(),
                api::tunnel_unreachable(),
            )
        }
        Some(Ok(device)) => device,
    };
    // From here the cut shuts the device socket down under the queue lock.
    if shared
        .attach_upstream(&reg.allowed, device.as_raw_fd())
        .is_err()
    {
        return no(Refused::Unknown, "session ended", api::not_active());
    }
    Opened::Ready(Box::new(Prepared {
        reg,
        target: target.chars().take(128).collect(),
        addr,
        device,
        form,
        client,
    }))
}

impl Prepared {
    pub fn session(&self) -> SessionId {
        self.reg.allowed.id
    }

    /// Answers `101` and splices until the tunnel ends; records it.
    pub async fn run(self, session: &mut ServerSession) {
        let Prepared {
            reg,
            target,
            addr,
            device,
            form,
            client,
        } = self;
        let shared = reg.shared.clone();
        let config = shared.config();
        let tunnels = &config.tunnels;
        // A tunnel idles as long as its user likes; keepalive watches the client instead.
        session.set_read_timeout(None);
        let client_sock = client_socket(session);
        if let Some(c) = &client_sock {
            if let Err(e) = set_keepalive(c, tunnels.keepalive) {
                tracing::warn!(error = %e, "cannot set keepalive on a tunnel's client socket");
            }
            let _ = c.set_nodelay(true);
        }
        let mut extra = Vec::new();
        if let Some(left) = shared.hold_remaining(Instant::now()) {
            extra.push((api::HOLD_REMAINING_HEADER, left.as_secs().to_string()));
        }
        let started = Instant::now();
        if answer_tunnel(session, &form, &extra).await.is_err() {
            return;
        }
        let m = shared.metrics();
        m.tunnels_opened.inc();
        m.tunnels_open.inc();
        let ticket = &reg.allowed.ticket;
        let (outcome, relay) = match form {
            Form::WebSocket { .. } => {
                let outcome = super::tunnel(session, device, ticket, client_sock.as_ref()).await;
                (outcome, super::Relay::WebSocket)
            }
            Form::Raw => super::raw_tunnel(session, device, ticket, client_sock).await,
        };
        // The slot is free (and the session reapable) first; the gauge drops last, so
        // whoever sees it drop sees the audit line and byte counts too.
        let (id, seq) = (reg.allowed.id, reg.allowed.seq);
        drop(reg);
        let reason = match outcome.end {
            super::End::SessionEnded(r) => r.to_string(),
            super::End::Protocol(code) => format!("close {code}"),
            _ => String::new(),
        };
        tracing::info!(
            target: AUDIT,
            event = "tunnel_closed",
            session = %id.tag(),
            seq,
            client = %client.map(|c| c.to_string()).unwrap_or_default(),
            destination = %target,
            addr = %addr,
            bytes_to_device = outcome.to_remote,
            bytes_to_client = outcome.to_client,
            duration_secs = started.elapsed().as_secs_f64(),
            end = outcome.end.as_str(),
            reason = %reason,
            relay = relay.as_str(),
        );
        m.count_tunnel_bytes(Direction::ToDevice, outcome.to_remote);
        m.count_tunnel_bytes(Direction::ToClient, outcome.to_client);
        m.tunnels_open.dec();
    }
}

//! Forwarding policy (contract §5): what the upstream sees of a request, and what the
//! client is told when forwarding fails.
//!
//! Owns the one list of headers labgate manages ([`MANAGED`]), hop-by-hop removal, the
//! `X-Forwarded-*` chain, the fencing number, configured header injection, and the
//! failure-to-answer table. Pure: it works on `http` types and returns the edits to make
//! and the answer to give; the pingora adapter applies them. Must never trust a header a
//! client sent more than its peer proves (only a trusted proxy extends a chain), and
//! must never let a configured header replace one of labgate's own.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// The gate credential (§2); forwarded as the client sent it (§5).
pub const X_SESSION_ID: HeaderName = HeaderName::from_static("x-session-id");
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// The fencing number forwarded with every request (§7).
pub const X_LAB_SESSION_SEQ: HeaderName = HeaderName::from_static("x-lab-session-seq");
/// Identity mode: the holder's identity, as the upstream receives it (the default name
/// of `identity.upstream_header`).
pub const X_LAB_USER: &str = "x-lab-user";

/// Identity mode's headers for one hop.
pub struct IdentityHop<'a> {
    /// Where the upstream gets the holder's identity (`identity.upstream_header`).
    pub upstream: &'a HeaderName,
    /// `header` mode: where the trusted proxy named the user. Dropped, never forwarded:
    /// the upstream hears the identity from labgate only.
    pub source: Option<&'a HeaderName>,
    /// The holder, as established for this request.
    pub holder: &'a str,
}

/// What labgate knows about one forwarded request's hop, for the headers it sets.
pub struct Hop<'a> {
    /// The TCP peer (`None` only for non-IP peers, which labgate does not listen for).
    pub peer: Option<IpAddr>,
    /// Whether the peer is a configured trusted proxy.
    pub peer_trusted: bool,
    /// A WebSocket (or other) upgrade handshake: `Upgrade` survives.
    pub upgrade: bool,
    /// The client reached labgate over its TLS listener.
    pub https: bool,
    /// The upstream's `host:port`, sent as `Host`.
    pub authority: &'a str,
    /// The session's sequence number, the fencing token.
    pub seq: u64,
    /// The operator's `[upstream.headers]`, never a managed name (config checks it).
    pub configured: &'a [(HeaderName, HeaderValue)],
    /// Identity mode only.
    pub identity: Option<IdentityHop<'a>>,
    /// A bridged upstream's own session id for this turn (§8): replaces the client's
    /// `X-Session-ID`, which never reaches such an upstream.
    pub upstream_session: Option<&'a str>,
    /// The upstream's per-turn token header (`[upstream.token]`) and the turn's token:
    /// the one managed header whose name the config picks. A client's copy is always
    /// dropped; the token is sent when there is one.
    pub token: Option<(&'a HeaderName, Option<&'a str>)>,
}

/// What labgate does with one managed header.
#[derive(Clone, Copy)]
pub enum Role {
    /// Message framing: pingora's to manage; never configurable.
    Framing,
    /// Connection-level (RFC 9110 §7.6.1): never forwarded; `Upgrade` and `Connection`
    /// are rebuilt for an upgrade handshake.
    HopByHop,
    /// The client's own, forwarded as sent, unless the hop has labgate's replacement:
    /// then the client's copy is dropped and the replacement sent.
    Swapped(fn(&Hop) -> Option<HeaderValue>),
    /// labgate's value from the hop; any client copy is dropped first. `None`: sent
    /// without one.
    Own(fn(&Hop) -> Option<HeaderValue>),
    /// A proxy chain: given the values a trusted proxy sent (empty from anybody else),
    /// the value to send; `None` keeps the trusted proxy's values as they are.
    Chain(fn(&Hop, &[&HeaderValue]) -> Option<HeaderValue>),
    /// Identity mode's headers: the holder's identity under the configured name (this
    /// entry is its default name), client copies of it and of the proxy's identity header
    /// dropped. Without identity mode, a client copy of the default name is dropped too.
    Identity,
    /// What a proxy in front says about the client (`Forwarded`, `X-Real-IP`, ...):
    /// forwarded as sent from a trusted proxy, dropped from anybody else, who could
    /// claim any address or host. labgate never sets it.
    FromTrustedProxy,
}

/// One header labgate manages.
pub struct Managed {
    /// Lower case, as `HeaderName::from_static` wants it (a test checks).
    pub name: &'static str,
    pub role: Role,
}

impl Managed {
    pub fn name(&self) -> HeaderName {
        // Static names: no allocation, no parsing.
        HeaderName::from_static(self.name)
    }

    /// The name as pingora writes it upstream when labgate sets the header: title case
    /// for the few names pingora knows, the lower-case name otherwise (a test in
    /// `proxy::wire` checks it against pingora's own conversion).
    pub fn wire(&self) -> &'static str {
        match self.name {
            "content-length" => "Content-Length",
            "transfer-encoding" => "Transfer-Encoding",
            "connection" => "Connection",
            "host" => "Host",
            name => name,
        }
    }
}

const fn managed(name: &'static str, role: Role) -> Managed {
    Managed { name, role }
}

/// Every header labgate manages, one line each: a client's copy never reaches the
/// upstream unchecked, and an operator cannot configure one (`[upstream.headers]`).
pub const MANAGED: &[Managed] = &[
    managed("content-length", Role::Framing),
    managed("transfer-encoding", Role::Framing),
    managed("trailer", Role::Framing),
    managed("connection", Role::HopByHop),
    managed("keep-alive", Role::HopByHop),
    managed("proxy-connection", Role::HopByHop),
    managed("te", Role::HopByHop),
    managed("upgrade", Role::HopByHop),
    managed("proxy-authenticate", Role::HopByHop),
    managed("proxy-authorization", Role::HopByHop),
    managed("x-session-id", Role::Swapped(upstream_session)),
    managed("x-forwarded-for", Role::Chain(forwarded_for)),
    managed("x-forwarded-proto", Role::Chain(forwarded_proto)),
    managed("forwarded", Role::FromTrustedProxy),
    managed("x-real-ip", Role::FromTrustedProxy),
    managed("x-forwarded-host", Role::FromTrustedProxy),
    managed("host", Role::Own(host)),
    managed("x-lab-session-seq", Role::Own(session_seq)),
    managed(X_LAB_USER, Role::Identity),
];

// `request_edits` keeps one bit per managed name in a `u32`.
const _: () = assert!(MANAGED.len() <= 32);

/// Is `name` (any case, `_` read as `-`) a header labgate manages? Config validation
/// refuses these.
pub fn is_managed(name: &str) -> bool {
    MANAGED.iter().any(|m| same_folded(m.name, name))
}

/// Are `a` and `b` one name to an upstream that folds `_` into `-` and ignores case?
/// CGI, WSGI, Rack and PHP all read `X_Lab_Session_Seq` as `X-Lab-Session-Seq`.
pub fn same_folded(a: &str, b: &str) -> bool {
    let fold = |c: u8| {
        if c == b'_' {
            b'-'
        } else {
            c.to_ascii_lowercase()
        }
    };
    a.len() == b.len() && a.bytes().zip(b.bytes()).all(|(x, y)| fold(x) == fold(y))
}

/// Client headers with an `_` that an upstream would read as a header labgate manages
/// or injects (`X_Lab_Session_Seq`, `X_Forwarded_For`, a configured `X_Api_Key`): they
/// are dropped, as nginx drops every underscore header by default for this reason.
fn underscore_twins(
    headers: &HeaderMap,
    configured: &[(HeaderName, HeaderValue)],
) -> Vec<HeaderName> {
    let mut found: Vec<HeaderName> = Vec::new();
    for name in headers.keys() {
        let n = name.as_str();
        if !n.contains('_') || found.contains(name) {
            continue;
        }
        let twin = MANAGED.iter().any(|m| same_folded(m.name, n))
            || configured.iter().any(|(c, _)| same_folded(c.as_str(), n));
        if twin {
            found.push(name.clone());
        }
    }
    found
}

fn upstream_session(hop: &Hop) -> Option<HeaderValue> {
    // The bridge checked the id (visible ASCII): it always makes a header value.
    hop.upstream_session
        .and_then(|id| HeaderValue::from_str(id).ok())
}

fn host(hop: &Hop) -> Option<HeaderValue> {
    // The authority is a validated host:port; it always makes a header value.
    HeaderValue::from_str(hop.authority).ok()
}

fn session_seq(hop: &Hop) -> Option<HeaderValue> {
    // Not `HeaderValue::from(u64)`: its buffer is sized for any u64, so turning it into
    // the value allocates twice.
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut n = hop.seq;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    HeaderValue::from_bytes(&digits[at..]).ok()
}

/// A trusted proxy's chain is extended, anybody else's replaced, so the upstream never
/// sees a hop the client made up.
fn forwarded_for(hop: &Hop, trusted: &[&HeaderValue]) -> Option<HeaderValue> {
    let chain: Vec<&str> = trusted.iter().filter_map(|v| v.to_str().ok()).collect();
    if chain.is_empty() {
        return Some(ip_value(hop.peer));
    }
    let peer = hop.peer.map(|p| p.to_string()).unwrap_or_default();
    // By value: the String's buffer becomes the header's, no second copy.
    HeaderValue::try_from(format!("{}, {peer}", chain.join(", "))).ok()
}

/// An address as a header value (empty for none). IPv4, the usual peer, is written
/// by hand: `to_string` goes through `fmt` octet by octet and a `String` (~1,000
/// instructions a request, benches/profile.sh forward).
fn ip_value(ip: Option<IpAddr>) -> HeaderValue {
    match ip {
        Some(IpAddr::V4(v4)) => {
            let mut buf = [0u8; 15];
            let mut len = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[len] = b'.';
                    len += 1;
                }
                if octet >= 100 {
                    buf[len] = b'0' + octet / 100;
                    len += 1;
                }
                if octet >= 10 {
                    buf[len] = b'0' + octet / 10 % 10;
                    len += 1;
                }
                buf[len] = b'0' + octet % 10;
                len += 1;
            }
            // Digits and dots: always a valid value.
            HeaderValue::from_bytes(&buf[..len]).unwrap_or(HeaderValue::from_static(""))
        }
        Some(ip) => HeaderValue::try_from(ip.to_string()).unwrap_or(HeaderValue::from_static("")),
        None => HeaderValue::from_static(""),
    }
}

/// How the client reached labgate; a trusted proxy in front knows better.
fn forwarded_proto(hop: &Hop, trusted: &[&HeaderValue]) -> Option<HeaderValue> {
    let proto = if hop.https { "https" } else { "http" };
    trusted
        .is_empty()
        .then_some(HeaderValue::from_static(proto))
}

/// One change to a request's headers, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    Remove(HeaderName),
    /// Replaces every value of the name.
    Insert(HeaderName, HeaderValue),
    /// As `Insert`, for a header labgate manages, by its [`Managed::wire`] name: a
    /// static name pingora need not copy.
    Set(&'static str, HeaderValue),
}

/// The hop-by-hop headers a message carries, including those its `Connection` header
/// names: one pass over the headers, so a request without any costs no removal.
pub fn hop_by_hop(headers: &HeaderMap) -> Vec<HeaderName> {
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
        let hop = MANAGED
            .iter()
            .any(|m| matches!(m.role, Role::HopByHop) && m.name == name.as_str())
            || named.iter().any(|n| n.eq_ignore_ascii_case(name.as_str()));
        if hop && !found.contains(name) {
            found.push(name.clone());
        }
    }
    found
}

/// The edits that turn the client's request headers into what the upstream sees (§5):
/// hop-by-hop headers out (the upgrade handshake rebuilt), configured headers in (a
/// client's copy dropped first), then labgate's own values, last so nothing overrides
/// them. A managed header the client did not send gets no removal: each costs pingora
/// a lookup in two maps.
pub fn request_edits(headers: &HeaderMap, hop: &Hop) -> Vec<Edit> {
    // A plain request makes 4 edits: one allocation, no regrowth.
    let mut edits = Vec::with_capacity(8);
    // One pass over the client's (few) names: which managed ones it sent (bit i for
    // MANAGED[i]), and whether any has an `_`.
    let mut sent: u32 = 0;
    let mut underscore = false;
    for name in headers.keys() {
        let n = name.as_str();
        if let Some(i) = MANAGED.iter().position(|m| m.name == n) {
            sent |= 1 << i;
        }
        underscore |= n.as_bytes().contains(&b'_');
    }
    let was_sent = |i: usize| sent & (1 << i) != 0;
    // `Connection` is hop-by-hop itself: without any, nothing names another.
    let removed = if MANAGED
        .iter()
        .enumerate()
        .any(|(i, m)| matches!(m.role, Role::HopByHop) && was_sent(i))
    {
        hop_by_hop(headers)
    } else {
        Vec::new()
    };
    let twins = if underscore {
        underscore_twins(headers, hop.configured)
    } else {
        Vec::new()
    };
    for name in removed.iter().chain(&twins) {
        edits.push(Edit::Remove(name.clone()));
    }
    if let (true, Some(value)) = (hop.upgrade, headers.get(header::UPGRADE)) {
        edits.push(Edit::Insert(header::UPGRADE, value.clone()));
        edits.push(Edit::Insert(
            header::CONNECTION,
            HeaderValue::from_static("upgrade"),
        ));
    }
    for (name, value) in hop.configured {
        edits.push(Edit::Remove(name.clone()));
        edits.push(Edit::Insert(name.clone(), value.clone()));
    }
    if let Some((name, token)) = hop.token {
        edits.push(Edit::Remove(name.clone()));
        if let Some(v) = token.and_then(|t| HeaderValue::from_str(t).ok()) {
            edits.push(Edit::Insert(name.clone(), v));
        }
    }
    for (i, m) in MANAGED.iter().enumerate() {
        match m.role {
            // An insert replaces every value of its name: a removal first only when
            // there is nothing to insert.
            Role::Own(value) => match value(hop) {
                Some(v) => edits.push(Edit::Set(m.wire(), v)),
                None if was_sent(i) => edits.push(Edit::Remove(m.name())),
                None => {}
            },
            Role::Chain(value) => {
                let trusted: Vec<&HeaderValue> = if hop.peer_trusted && was_sent(i) {
                    let name = m.name();
                    if removed.contains(&name) {
                        Vec::new()
                    } else {
                        headers.get_all(&name).iter().collect()
                    }
                } else {
                    Vec::new()
                };
                if let Some(v) = value(hop, &trusted) {
                    edits.push(Edit::Set(m.wire(), v));
                }
            }
            Role::Identity => {
                if was_sent(i) {
                    edits.push(Edit::Remove(m.name()));
                }
                if let Some(id) = &hop.identity {
                    edits.push(Edit::Remove(id.upstream.clone()));
                    if let Some(source) = id.source {
                        edits.push(Edit::Remove(source.clone()));
                    }
                    // An identity is printable ASCII (identity::Identity): always a value.
                    if let Ok(v) = HeaderValue::from_str(id.holder) {
                        edits.push(Edit::Insert(id.upstream.clone(), v));
                    }
                }
            }
            Role::FromTrustedProxy if !hop.peer_trusted && was_sent(i) => {
                edits.push(Edit::Remove(m.name()));
            }
            Role::Swapped(value) => {
                if let Some(v) = value(hop) {
                    // Removed first, so the replacement goes last, as before.
                    if was_sent(i) {
                        edits.push(Edit::Remove(m.name()));
                    }
                    edits.push(Edit::Set(m.wire(), v));
                }
            }
            Role::FromTrustedProxy | Role::Framing | Role::HopByHop => {}
        }
    }
    edits
}

/// Hop-by-hop headers dropped from an upstream's response, except a `101`'s, whose
/// `Upgrade`/`Connection` complete the handshake. pingora manages the rest.
pub fn response_removals(status: u16) -> &'static [&'static str] {
    const DROPPED: &[&str] = &["keep-alive", "proxy-connection", "proxy-authenticate"];
    if status == 101 {
        &[]
    } else {
        DROPPED
    }
}

/// Headers dropped from a bridged upstream's response: its own session id must never
/// reach the client (§8), should a server echo it.
pub const BRIDGED_RESPONSE_REMOVALS: &[&str] = &["x-session-id"];

/// Why forwarding failed, as labgate classifies pingora's error types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    ConnectTimedOut,
    ReadTimedOut,
    WriteTimedOut,
    /// Refused, no route, a socket or bind error: nothing to talk to.
    Connect,
    /// A read or write failed, or the peer closed.
    Closed,
    /// A status pingora decided to answer with (a bad request head, say).
    Status(u16),
    Other,
}

/// Which side of the proxy failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Upstream,
    Downstream,
    Unknown,
}

/// Upstream failure kinds, the `kind` label of `labgate_upstream_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamError {
    Connect,
    Timeout,
    Io,
}

impl UpstreamError {
    pub const ALL: [UpstreamError; 3] = [
        UpstreamError::Connect,
        UpstreamError::Timeout,
        UpstreamError::Io,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamError::Connect => "connect",
            UpstreamError::Timeout => "timeout",
            UpstreamError::Io => "io",
        }
    }
}

/// The answer a failed request gets; `api` has the exact bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// `423`: its session ended under it.
    NotActive,
    /// `502`.
    UpstreamUnavailable,
    /// `504`.
    UpstreamTimedOut,
    /// The status pingora chose, `{"detail":"Request failed"}`.
    Status(u16),
    /// `400`: the client sent something pingora could not read.
    BadRequest,
    /// `500`.
    Internal,
}

/// What to do about a failed request: the answer (`None`: nobody to answer, or a
/// close says it all) and, for an upstream failure, its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    pub answer: Option<Answer>,
    pub upstream: Option<UpstreamError>,
}

/// The failure-to-answer table (§5). `cut`: the request's session ended under it,
/// which is not an upstream failure.
pub fn on_failure(kind: FailureKind, side: Side, cut: bool) -> Failure {
    use FailureKind as K;
    let (answer, upstream) = match (kind, side) {
        // Say so if we still can; the connection is closed either way.
        _ if cut => (Some(Answer::NotActive), None),
        (K::ConnectTimedOut, _) | (K::ReadTimedOut | K::WriteTimedOut, Side::Upstream) => {
            (Some(Answer::UpstreamTimedOut), Some(UpstreamError::Timeout))
        }
        (K::Connect, _) => (
            Some(Answer::UpstreamUnavailable),
            Some(UpstreamError::Connect),
        ),
        (_, Side::Upstream) => (Some(Answer::UpstreamUnavailable), Some(UpstreamError::Io)),
        (K::Status(code), _) => (Some(Answer::Status(code)), None),
        // The client went away or sent garbage: nobody to answer, or a plain 400.
        (K::Closed | K::ReadTimedOut, Side::Downstream) => (None, None),
        (_, Side::Downstream) => (Some(Answer::BadRequest), None),
        _ => (Some(Answer::Internal), None),
    };
    Failure { answer, upstream }
}

#[cfg(test)]
mod tests;

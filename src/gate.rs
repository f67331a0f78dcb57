//! The gate on `/lab` and `/lab/*` (contract §2): `X-Session-ID` header values and the
//! queue in, a [`Decision`] out.
//!
//! Pure: no I/O, no pingora. An allowed decision has already counted the request as in
//! flight in the queue (so the session cannot be reaped while it runs); the caller must
//! end it with `Queue::end_request`. Must never allow anything but the ACTIVE session.

use std::time::Instant;

use crate::identity::Identity;
use crate::ownership::{Access, Owners};
use crate::queue::{Queue, Refusal, SessionId};

/// What the gate decided for one `/lab` request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The ACTIVE session: forward. `seq` is its sequence number.
    Allow { id: SessionId, seq: u64 },
    /// No `X-Session-ID` header: 422.
    Missing,
    /// More than one `X-Session-ID` header: 400.
    Duplicate,
    /// Empty, malformed or unknown id: 404.
    Unknown,
    /// A WAITING session: 423.
    Waiting { position: usize },
}

impl Decision {
    /// The `decision` label of `labgate_gate_decisions_total`.
    pub fn label(&self) -> &'static str {
        self.verdict().as_str()
    }

    pub fn verdict(&self) -> Verdict {
        match self.allowed() {
            Ok(_) => Verdict::Allowed,
            Err(denied) => denied.verdict(),
        }
    }

    /// The one allowed outcome, or why not: callers match once.
    pub fn allowed(self) -> Result<(SessionId, u64), Denied> {
        match self {
            Decision::Allow { id, seq } => Ok((id, seq)),
            Decision::Missing => Err(Denied::Missing),
            Decision::Duplicate => Err(Denied::Duplicate),
            Decision::Unknown => Err(Denied::Unknown),
            Decision::Waiting { position } => Err(Denied::Waiting { position }),
        }
    }
}

/// Why the gate refused a `/lab` request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No `X-Session-ID` header: 422.
    Missing,
    /// More than one `X-Session-ID` header: 400.
    Duplicate,
    /// Empty, malformed or unknown id: 404.
    Unknown,
    /// A WAITING session: 423.
    Waiting { position: usize },
}

impl Denied {
    pub fn verdict(&self) -> Verdict {
        match self {
            Denied::Missing => Verdict::Missing,
            Denied::Duplicate => Verdict::Invalid,
            Denied::Unknown => Verdict::Unknown,
            Denied::Waiting { .. } => Verdict::Waiting,
        }
    }
}

/// The `decision` label of `labgate_gate_decisions_total` (§6); `Invalid` also counts
/// request targets that fail the path check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    Missing,
    Unknown,
    Waiting,
    Invalid,
}

impl Verdict {
    pub const ALL: [Verdict; 5] = [
        Verdict::Allowed,
        Verdict::Missing,
        Verdict::Unknown,
        Verdict::Waiting,
        Verdict::Invalid,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allowed => "allowed",
            Verdict::Missing => "missing",
            Verdict::Unknown => "unknown",
            Verdict::Waiting => "waiting",
            Verdict::Invalid => "invalid",
        }
    }
}

/// The session id named by the `X-Session-ID` header values of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionHeader {
    Missing,
    Duplicate,
    /// Present once; `None` when empty or malformed (it is then simply unknown).
    One(Option<SessionId>),
}

/// Reads the `X-Session-ID` header values (in any number) of a request.
pub fn session_header<'a>(mut values: impl Iterator<Item = &'a [u8]>) -> SessionHeader {
    let Some(first) = values.next() else {
        return SessionHeader::Missing;
    };
    if values.next().is_some() {
        return SessionHeader::Duplicate;
    }
    SessionHeader::One(
        std::str::from_utf8(first)
            .ok()
            .and_then(SessionId::parse_exact),
    )
}

/// Decides a `/lab` request; on `Allow` the request is now in flight in `queue`.
pub fn decide(header: SessionHeader, queue: &mut Queue, now: Instant) -> Decision {
    let id = match header {
        SessionHeader::Missing => return Decision::Missing,
        SessionHeader::Duplicate => return Decision::Duplicate,
        SessionHeader::One(None) => return Decision::Unknown,
        SessionHeader::One(Some(id)) => id,
    };
    match queue.begin_request(&id, now) {
        Ok(seq) => Decision::Allow { id, seq },
        Err(Refusal::Unknown) => Decision::Unknown,
        Err(Refusal::Waiting { position }) => Decision::Waiting { position },
    }
}

/// The gate in identity mode: as [`decide`], but a session `caller` does not own is
/// unknown to them (`404`, unprobeable) and is not counted in flight. With a
/// cross-identity attempt, also returns the session's owner (for the audit line).
/// `caller` is `None` when identity mode is off: the id alone decides.
pub fn decide_as(
    header: SessionHeader,
    caller: Option<&Identity>,
    owners: &Owners,
    queue: &mut Queue,
    now: Instant,
) -> (Decision, Option<Identity>) {
    if let SessionHeader::One(Some(id)) = header {
        match owners.check(&id, caller) {
            Access::Bearer | Access::Owner => {}
            Access::CrossIdentity { owner } => return (Decision::Unknown, Some(owner)),
            Access::Unowned => return (Decision::Unknown, None),
        }
    }
    (decide(header, queue, now), None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::Timeouts;
    use std::time::Duration;

    fn queue() -> Queue {
        Queue::new(Timeouts {
            active: Duration::from_secs(300),
            waiting: Duration::from_secs(600),
        })
    }

    fn one(s: &str) -> SessionHeader {
        session_header(std::iter::once(s.as_bytes()))
    }

    #[test]
    fn header_forms() {
        assert_eq!(session_header(std::iter::empty()), SessionHeader::Missing);
        assert_eq!(
            session_header([b"a".as_slice(), b"b".as_slice()].into_iter()),
            SessionHeader::Duplicate
        );
        assert_eq!(one(""), SessionHeader::One(None));
        assert_eq!(one("not-a-uuid"), SessionHeader::One(None));
        let id = SessionId::random();
        assert_eq!(one(&id.to_string()), SessionHeader::One(Some(id)));
        assert_eq!(
            one(&id.to_string().to_uppercase()),
            SessionHeader::One(None)
        );
        assert_eq!(one(&format!(" {id}")), SessionHeader::One(None));
        assert_eq!(one(&format!("{id}, {id}")), SessionHeader::One(None));
        assert_eq!(
            session_header(std::iter::once(&[0xff, 0xfe][..])),
            SessionHeader::One(None)
        );
    }

    #[test]
    fn only_the_active_session_is_allowed() {
        let mut q = queue();
        let t0 = Instant::now();
        let a = SessionId::random();
        let b = SessionId::random();
        q.create(a, t0).unwrap();
        q.create(b, t0).unwrap();
        assert!(matches!(
            decide(SessionHeader::One(Some(a)), &mut q, t0),
            Decision::Allow { id, .. } if id == a
        ));
        assert_eq!(
            decide(SessionHeader::One(Some(b)), &mut q, t0),
            Decision::Waiting { position: 1 }
        );
        assert_eq!(
            decide(SessionHeader::One(Some(SessionId::random())), &mut q, t0),
            Decision::Unknown
        );
        assert_eq!(
            decide(SessionHeader::Missing, &mut q, t0),
            Decision::Missing
        );
        assert_eq!(
            decide(SessionHeader::Duplicate, &mut q, t0),
            Decision::Duplicate
        );
        assert_eq!(
            decide(SessionHeader::One(None), &mut q, t0),
            Decision::Unknown
        );
    }

    #[test]
    fn in_identity_mode_only_the_owner_passes_and_others_see_unknown() {
        let mut q = queue();
        let t0 = Instant::now();
        let (a, b) = (SessionId::random(), SessionId::random());
        q.create(a, t0).unwrap();
        q.create(b, t0).unwrap();
        let mut owners = Owners::default();
        let alice = Identity::parse(b"alice").unwrap();
        let bob = Identity::parse(b"bob").unwrap();
        owners.bind(a, alice.clone());
        owners.bind(b, bob.clone());
        let (d, cross) = decide_as(one(&a.to_string()), Some(&alice), &owners, &mut q, t0);
        assert!(matches!(d, Decision::Allow { id, .. } if id == a) && cross.is_none());
        q.end_request(&a, t0);
        // bob naming alice's (ACTIVE) id: unknown, the owner reported, not in flight.
        let (d, cross) = decide_as(one(&a.to_string()), Some(&bob), &owners, &mut q, t0);
        assert_eq!((d, cross), (Decision::Unknown, Some(alice.clone())));
        assert_eq!(q.view(&a).unwrap().inflight, 0);
        // bob's own waiting session is still 423 to him.
        let (d, _) = decide_as(one(&b.to_string()), Some(&bob), &owners, &mut q, t0);
        assert_eq!(d, Decision::Waiting { position: 1 });
        // A session with no owner (restored without one) belongs to nobody.
        let c = SessionId::random();
        q.create(c, t0).unwrap();
        let (d, cross) = decide_as(one(&c.to_string()), Some(&alice), &owners, &mut q, t0);
        assert_eq!((d, cross), (Decision::Unknown, None));
        // Identity mode off: the id alone decides.
        let (d, _) = decide_as(one(&a.to_string()), None, &owners, &mut q, t0);
        assert!(matches!(d, Decision::Allow { .. }));
    }

    #[test]
    fn allowed_request_blocks_reaping_until_it_ends() {
        let mut q = queue();
        let t0 = Instant::now();
        let a = SessionId::random();
        q.create(a, t0).unwrap();
        assert!(matches!(
            decide(SessionHeader::One(Some(a)), &mut q, t0),
            Decision::Allow { .. }
        ));
        let later = t0 + Duration::from_secs(3600);
        assert!(q.reap(later).ended.is_empty());
        q.end_request(&a, later);
        assert!(q.reap(later + Duration::from_secs(301)).ended.len() == 1);
    }

    #[test]
    fn labels_match_the_contract() {
        assert_eq!(Decision::Missing.label(), "missing");
        assert_eq!(Decision::Duplicate.label(), "invalid");
        assert_eq!(Decision::Unknown.label(), "unknown");
        assert_eq!(Decision::Waiting { position: 1 }.label(), "waiting");
    }
}

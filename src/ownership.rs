//! Which identity owns which session, in identity mode (`[identity]`): the per-identity
//! cap on live sessions and the owner check every session-bound request goes through.
//!
//! Pure: no I/O, no clock, no locking (the caller holds the queue lock). Owns only the
//! binding; the queue decides what a session may do, the gate and the API answer. Must
//! never let a caller through on a session that has no owner while identity mode is on
//! (a session restored from a store written without identities belongs to nobody).

use std::collections::HashMap;

use crate::identity::Identity;
use crate::queue::SessionId;

/// What the owner check found for one request naming a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Identity mode is off (no caller identity): the id alone is the key, as in neops.
    Bearer,
    /// The caller owns the session.
    Owner,
    /// Someone else owns it: answer exactly as for an unknown id, and audit-log it.
    CrossIdentity { owner: Identity },
    /// Nobody owns it (restored from a store without owners, or not a session at all):
    /// answer as for an unknown id.
    Unowned,
}

impl Access {
    /// Whether the request may act on the session.
    pub fn allowed(&self) -> bool {
        matches!(self, Access::Bearer | Access::Owner)
    }
}

/// The per-identity cap was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapReached {
    pub live: usize,
    pub cap: usize,
}

/// Owners of live sessions, and how many each identity holds.
#[derive(Debug, Default)]
pub struct Owners {
    by_session: HashMap<SessionId, Identity>,
    live: HashMap<Identity, usize>,
}

impl Owners {
    /// May `who` open one more session under `cap`?
    pub fn admit(&self, who: &Identity, cap: usize) -> Result<(), CapReached> {
        let live = self.live_of(who);
        if live >= cap {
            return Err(CapReached { live, cap });
        }
        Ok(())
    }

    /// Records that `who` owns the new session `id`.
    pub fn bind(&mut self, id: SessionId, who: Identity) {
        if let Some(old) = self.by_session.insert(id, who.clone()) {
            // An id is bound once; if it ever were again, keep the counts right.
            self.decrement(&old);
        }
        *self.live.entry(who).or_insert(0) += 1;
    }

    /// Forgets the owner of a session that ended; no-op for an unowned one.
    pub fn release(&mut self, id: &SessionId) {
        if let Some(who) = self.by_session.remove(id) {
            self.decrement(&who);
        }
    }

    fn decrement(&mut self, who: &Identity) {
        if let Some(n) = self.live.get_mut(who) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.live.remove(who);
            }
        }
    }

    /// The owner check for a request from `caller` (None: identity mode off) on `id`.
    pub fn check(&self, id: &SessionId, caller: Option<&Identity>) -> Access {
        let Some(caller) = caller else {
            return Access::Bearer;
        };
        match self.by_session.get(id) {
            Some(owner) if owner == caller => Access::Owner,
            Some(owner) => Access::CrossIdentity {
                owner: owner.clone(),
            },
            None => Access::Unowned,
        }
    }

    /// The owner of `id`, if it has one.
    pub fn owner(&self, id: &SessionId) -> Option<&Identity> {
        self.by_session.get(id)
    }

    /// Live sessions `who` owns.
    pub fn live_of(&self, who: &Identity) -> usize {
        self.live.get(who).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> Identity {
        Identity::parse(s.as_bytes()).unwrap()
    }

    #[test]
    fn only_the_owner_gets_access_and_others_look_unknown() {
        let mut o = Owners::default();
        let s = SessionId::random();
        o.bind(s, id("alice"));
        assert_eq!(o.check(&s, Some(&id("alice"))), Access::Owner);
        assert_eq!(
            o.check(&s, Some(&id("bob"))),
            Access::CrossIdentity { owner: id("alice") }
        );
        assert!(!o.check(&s, Some(&id("bob"))).allowed());
        assert_eq!(
            o.check(&SessionId::random(), Some(&id("alice"))),
            Access::Unowned
        );
        // Identity mode off: the id is the key.
        assert_eq!(o.check(&s, None), Access::Bearer);
        assert!(o.check(&SessionId::random(), None).allowed());
    }

    #[test]
    fn the_cap_counts_live_sessions_per_identity() {
        let mut o = Owners::default();
        let (a1, a2) = (SessionId::random(), SessionId::random());
        assert!(o.admit(&id("alice"), 1).is_ok());
        o.bind(a1, id("alice"));
        assert_eq!(
            o.admit(&id("alice"), 1),
            Err(CapReached { live: 1, cap: 1 })
        );
        assert!(o.admit(&id("bob"), 1).is_ok());
        assert!(o.admit(&id("alice"), 2).is_ok());
        o.bind(a2, id("alice"));
        assert_eq!(o.live_of(&id("alice")), 2);
        o.release(&a1);
        o.release(&a1);
        assert_eq!(o.live_of(&id("alice")), 1);
        o.release(&a2);
        assert_eq!(o.live_of(&id("alice")), 0);
        assert!(o.live.is_empty() && o.by_session.is_empty());
    }
}

//! Tombstones: why a recently ended session ended (issue 15 #2), so a `404` for it can
//! say "kicked: <operator's reason>" instead of looking like an id that never existed.
//!
//! Owns a bounded (count) and expiring (age) map from ended session id to its end.
//! Pure: every call takes `now`. Must never hold more than [`MAX_TOMBSTONES`] entries nor
//! keep one past [`TOMBSTONE_TTL`], and never store a note that was not bounded and
//! sanitised by [`sanitise_note`] (it goes out in a response header).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::identity::Identity;
use crate::queue::{EndReason, SessionId};

/// At most this many tombstones; the oldest goes first.
pub const MAX_TOMBSTONES: usize = 10_000;
/// A tombstone is forgotten after this long.
pub const TOMBSTONE_TTL: Duration = Duration::from_secs(3600);
/// The longest operator note kept, in characters.
pub const MAX_NOTE_CHARS: usize = 200;

/// How one session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tombstone {
    pub reason: EndReason,
    /// The operator's reason for a kick, sanitised.
    pub note: Option<String>,
    /// Identity mode: who owned it (only they may learn how it ended).
    pub owner: Option<Identity>,
    at: Instant,
}

#[derive(Debug, Default)]
pub struct Tombstones {
    by_id: HashMap<SessionId, Tombstone>,
    /// Insertion order, oldest first; an id may appear once only.
    order: VecDeque<SessionId>,
}

impl Tombstones {
    /// Records how `id` ended; evicts expired and, beyond the cap, the oldest.
    pub fn insert(
        &mut self,
        id: SessionId,
        reason: EndReason,
        owner: Option<Identity>,
        now: Instant,
    ) {
        self.expire(now);
        if self.by_id.contains_key(&id) {
            // Ids are not reused; keep the first end.
            return;
        }
        while self.order.len() >= MAX_TOMBSTONES {
            if let Some(old) = self.order.pop_front() {
                self.by_id.remove(&old);
            }
        }
        self.by_id.insert(
            id,
            Tombstone {
                reason,
                note: None,
                owner,
                at: now,
            },
        );
        self.order.push_back(id);
    }

    /// Attaches the operator's reason to a recorded end.
    pub fn set_note(&mut self, id: &SessionId, note: &str) {
        if let Some(t) = self.by_id.get_mut(id) {
            t.note = sanitise_note(note);
        }
    }

    /// How `id` ended, if it ended less than [`TOMBSTONE_TTL`] ago.
    pub fn get(&self, id: &SessionId, now: Instant) -> Option<&Tombstone> {
        self.by_id
            .get(id)
            .filter(|t| now.saturating_duration_since(t.at) <= TOMBSTONE_TTL)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    fn expire(&mut self, now: Instant) {
        while let Some(old) = self.order.front() {
            let expired = self
                .by_id
                .get(old)
                .is_none_or(|t| now.saturating_duration_since(t.at) > TOMBSTONE_TTL);
            if !expired {
                break;
            }
            if let Some(old) = self.order.pop_front() {
                self.by_id.remove(&old);
            }
        }
    }
}

/// A note fit for a response header: printable ASCII only (others become `?`), spaces
/// collapsed, at most [`MAX_NOTE_CHARS`]; `None` when nothing is left.
pub fn sanitise_note(note: &str) -> Option<String> {
    let mut out = String::new();
    for c in note.chars() {
        if out.len() >= MAX_NOTE_CHARS {
            break;
        }
        let c = match c {
            ' '..='~' => c,
            c if c.is_whitespace() => ' ',
            _ => '?',
        };
        if c == ' ' && (out.is_empty() || out.ends_with(' ')) {
            continue;
        }
        out.push(c);
    }
    let out = out.trim_end().to_string();
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_bounded_and_expiring() {
        let t0 = Instant::now();
        let mut t = Tombstones::default();
        let a = SessionId::random();
        t.insert(a, EndReason::Kicked, None, t0);
        t.set_note(&a, "firmware\nupdate \x1b[31m now");
        let got = t.get(&a, t0).unwrap();
        assert_eq!(got.reason, EndReason::Kicked);
        assert_eq!(got.note.as_deref(), Some("firmware update ?[31m now"));
        assert!(t.get(&SessionId::random(), t0).is_none());
        // Expired after the TTL, and dropped on the next insert.
        let later = t0 + TOMBSTONE_TTL + Duration::from_secs(1);
        assert!(t.get(&a, later).is_none());
        t.insert(SessionId::random(), EndReason::Stale, None, later);
        assert_eq!(t.len(), 1);
        // Bounded: the oldest goes first.
        let first = SessionId::random();
        t.insert(first, EndReason::Deleted, None, later);
        for _ in 0..MAX_TOMBSTONES {
            t.insert(SessionId::random(), EndReason::Stale, None, later);
        }
        assert_eq!(t.len(), MAX_TOMBSTONES);
        assert!(t.get(&first, later).is_none());
    }

    #[test]
    fn notes_are_bounded_printable_ascii() {
        assert_eq!(sanitise_note("  \t "), None);
        assert_eq!(sanitise_note("café"), Some("caf?".into()));
        let long = "x".repeat(1000);
        assert_eq!(sanitise_note(&long).map(|s| s.len()), Some(MAX_NOTE_CHARS));
    }
}

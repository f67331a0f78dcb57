//! The session id: a UUID compared exactly, its canonical spelling and its public tag
//! (its one public name, logs included).
//!
//! Owns how an id is made, parsed and shown: in full, and as the public tag. Must never accept a second spelling of the same id (contract §1: a differently
//! spelled id is a different, unknown id) and never allocate while parsing, since every
//! gated request parses one.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;

use uuid::Uuid;

/// A map keyed by session id, hashed with FxHash rather than std's SipHash (~160
/// instructions a lookup, five lookups a forwarded request: benches/profile.sh forward).
/// An unkeyed hash is safe here: only labgate makes the ids a map holds (random v4 UUIDs,
/// or ones it stored itself), so no client can fill a map with colliding keys; a client's
/// id is only ever looked up.
pub type IdMap<V> = HashMap<SessionId, V, rustc_hash::FxBuildHasher>;

/// How many tags [`SessionId::tag`] remembers.
const TAG_SLOTS: usize = 64;

/// Tags already computed, one slot per value of the id's last byte (random in a v4 UUID)
/// modulo [`TAG_SLOTS`]: a session polled every second (`GET /session/{id}` answers with
/// its tag) costs one SHA-256, not one a poll (~3,500 instructions, benches/profile.sh
/// poll). Bounded; a clash only costs the hash again.
static TAGS: Mutex<TagSlots> = Mutex::new([None; TAG_SLOTS]);

/// A tag's digits, by the id they are of.
type TagSlots = [Option<(SessionId, [u8; 8])>; TAG_SLOTS];

/// A session id: a UUID, compared exactly.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct SessionId(Uuid);

impl SessionId {
    /// A fresh random (version 4) id.
    pub fn random() -> Self {
        SessionId(Uuid::new_v4())
    }

    /// The session's one public name (status page, `X-Lab-Session-Tag`, logs, the audit
    /// trail, `admin queue` and `admin kick`): the first 8 hex digits of a SHA-256 of the
    /// id's 16 bytes, so it never reveals the id, which is the gate credential.
    pub fn tag(&self) -> String {
        let slot = usize::from(self.0.as_bytes()[15]) % TAG_SLOTS;
        let known = Self::tags()[slot].filter(|(id, _)| id == self);
        let hex = match known {
            Some((_, hex)) => hex,
            None => {
                let hex = self.tag_hex();
                Self::tags()[slot] = Some((*self, hex));
                hex
            }
        };
        // Lower-case hex digits: always UTF-8.
        String::from_utf8_lossy(&hex).into_owned()
    }

    fn tags() -> std::sync::MutexGuard<'static, TagSlots> {
        TAGS.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The tag's digits, computed.
    fn tag_hex(&self) -> [u8; 8] {
        use sha2::Digest;
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let digest = sha2::Sha256::digest(self.0.as_bytes());
        let mut hex = [0u8; 8];
        for (i, b) in digest[..4].iter().enumerate() {
            hex[2 * i] = HEX[usize::from(b >> 4)];
            hex[2 * i + 1] = HEX[usize::from(b & 0x0f)];
        }
        hex
    }

    pub fn from_uuid(u: Uuid) -> Self {
        SessionId(u)
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }

    /// Only the canonical lowercase hyphenated 36-char form is accepted (ids are compared exactly:
    /// uppercase, braces, urn: or simple forms are unknown). No allocation.
    pub fn parse_exact(s: &str) -> Option<Self> {
        // Hand-rolled rather than `Uuid::try_parse`, which accepts the other forms too:
        // the contract says a differently spelled id is a different (unknown) id. Table
        // lookups without a branch a digit: every gated request parses one.
        let b: &[u8; 36] = s.as_bytes().try_into().ok()?;
        if [b[8], b[13], b[18], b[23]] != [b'-'; 4] {
            return None;
        }
        let mut out = [0u8; 16];
        let mut bad = 0u8;
        for (i, byte) in out.iter_mut().enumerate() {
            let hi = NIBBLE[usize::from(b[DIGITS[2 * i]])];
            let lo = NIBBLE[usize::from(b[DIGITS[2 * i + 1]])];
            bad |= hi | lo;
            *byte = (hi << 4) | (lo & 0x0f);
        }
        (bad < 0x10).then_some(SessionId(Uuid::from_bytes(out)))
    }
}

/// Where the 32 hex digits of the canonical form are (the hyphens are at 8, 13, 18, 23).
const DIGITS: [usize; 32] = {
    let mut at = [0usize; 32];
    let (mut i, mut pos) = (0, 0);
    while i < 32 {
        if matches!(pos, 8 | 13 | 18 | 23) {
            pos += 1;
        }
        at[i] = pos;
        i += 1;
        pos += 1;
    }
    at
};

/// A byte's value as a lower-case hex digit; `0xff` for any other byte.
const NIBBLE: [u8; 256] = {
    let mut t = [0xffu8; 256];
    let mut c = 0;
    while c < 10 {
        t[b'0' as usize + c] = c as u8;
        c += 1;
    }
    let mut c = 0;
    while c < 6 {
        t[b'a' as usize + c] = 10 + c as u8;
        c += 1;
    }
    t
};

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_is_the_first_four_bytes_of_the_ids_sha256_in_lower_hex() {
        use sha2::Digest;
        for _ in 0..64 {
            let id = SessionId::random();
            let digest = sha2::Sha256::digest(id.as_uuid().as_bytes());
            let want: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(id.tag(), want);
            // The second time from the cache: the same tag.
            assert_eq!(id.tag(), want);
        }
    }

    #[test]
    fn ids_that_share_a_tag_slot_keep_their_own_tags() {
        // The same last byte: the same slot, taken in turn.
        let a = SessionId::from_uuid(Uuid::from_u128(0x1111_0000_0000_4000_8000_0000_0000_0007));
        let b = SessionId::from_uuid(Uuid::from_u128(0x2222_0000_0000_4000_8000_0000_0000_0007));
        let (ta, tb) = (a.tag_hex(), b.tag_hex());
        assert_ne!(ta, tb);
        for _ in 0..3 {
            assert_eq!(a.tag().as_bytes(), ta);
            assert_eq!(b.tag().as_bytes(), tb);
        }
    }

    #[test]
    fn parse_exact_accepts_only_the_canonical_form() {
        let s = "67e55044-10b1-426f-9247-bb680e5fe0c8";
        let id = SessionId::parse_exact(s).unwrap();
        assert_eq!(id.to_string(), s);
        assert_eq!(id.as_uuid(), Uuid::parse_str(s).unwrap());
        assert_eq!(SessionId::from_uuid(id.as_uuid()), id);
        let rejected = [
            "67E55044-10B1-426F-9247-BB680E5FE0C8",
            "67e55044-10b1-426f-9247-BB680e5fe0c8",
            "{67e55044-10b1-426f-9247-bb680e5fe0c8}",
            "urn:uuid:67e55044-10b1-426f-9247-bb680e5fe0c8",
            "67e5504410b1426f9247bb680e5fe0c8",
            " 67e55044-10b1-426f-9247-bb680e5fe0c8",
            "67e55044-10b1-426f-9247-bb680e5fe0c8 ",
            "67e55044-10b1-426f-9247-bb680e5fe0c8\n",
            "67e55044-10b1-426f-9247-bb680e5fe0c",
            "67e55044-10b1-426f-9247-bb680e5fe0c80",
            "67e5504-410b1-426f-9247-bb680e5fe0c8",
            "67e55044-10b1-426f-9247_bb680e5fe0c8",
            "67e55044-10b1-426f-9247-bb680e5fe0cg",
            "67e55044+10b1-426f-9247-bb680e5fe0c8",
            "67e55044-10b1-426f-9247-bb680e5fé0c",
            "",
        ];
        for r in rejected {
            assert_eq!(SessionId::parse_exact(r), None, "{r:?}");
        }
        // Any one byte changed: accepted exactly when the result is still canonical.
        let mut rng = fastrand::Rng::with_seed(13);
        for _ in 0..5000 {
            let mut bytes = SessionId::random().to_string().into_bytes();
            let at = rng.usize(..bytes.len());
            bytes[at] = rng.u8(..0x80);
            let text = String::from_utf8(bytes).unwrap();
            let canonical = Uuid::try_parse(&text)
                .ok()
                .filter(|u| u.hyphenated().to_string() == text);
            assert_eq!(
                SessionId::parse_exact(&text).map(|id| id.as_uuid()),
                canonical,
                "{text:?}"
            );
        }
        for _ in 0..100 {
            let id = SessionId::random();
            assert_eq!(id.as_uuid().get_version_num(), 4);
            assert_eq!(SessionId::parse_exact(&id.to_string()), Some(id));
        }
    }
}

//! The session id: a UUID compared exactly, its canonical spelling and its public tag
//! (its one public name, logs included).
//!
//! Owns how an id is made, parsed and shown: in full, and as the public tag. Must never accept a second spelling of the same id (contract §1: a differently
//! spelled id is a different, unknown id) and never allocate while parsing, since every
//! gated request parses one.

use std::fmt;

use uuid::Uuid;

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
        use sha2::Digest;
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let digest = sha2::Sha256::digest(self.0.as_bytes());
        // By hand rather than a `format!` a byte: every session poll answers with it.
        let mut tag = String::with_capacity(8);
        for b in &digest[..4] {
            tag.push(char::from(HEX[usize::from(b >> 4)]));
            tag.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
        tag
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
        // the contract says a differently spelled id is a different (unknown) id.
        let b = s.as_bytes();
        if b.len() != 36 {
            return None;
        }
        let mut out = [0u8; 16];
        let mut nibbles = 0usize;
        for (i, &c) in b.iter().enumerate() {
            if matches!(i, 8 | 13 | 18 | 23) {
                if c != b'-' {
                    return None;
                }
                continue;
            }
            let v = match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                _ => return None,
            };
            let byte = out.get_mut(nibbles / 2)?;
            *byte = (*byte << 4) | v;
            nibbles += 1;
        }
        Some(SessionId(Uuid::from_bytes(out)))
    }
}

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
        for _ in 0..100 {
            let id = SessionId::random();
            assert_eq!(id.as_uuid().get_version_num(), 4);
            assert_eq!(SessionId::parse_exact(&id.to_string()), Some(id));
        }
    }
}

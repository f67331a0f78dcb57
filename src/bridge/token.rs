//! Per-turn tokens: a fresh random secret for each turn on each upstream that asks for
//! one, injected into the turn's forwarded requests and revoked (no longer injected; the
//! end hook says so) when the turn ends. The fencing number orders holders; the token
//! proves a request came through labgate for this turn.
//!
//! Owns minting and the secret's handling. Must never put a token in a log line, a
//! `Debug` output or an error: only its [`Token::tag`] (a hash prefix) may be shown.

use base64::Engine;
use sha2::{Digest, Sha256};

/// 256 bits from the OS: as strong as any credential the lab manager might hold.
const BYTES: usize = 32;

/// A per-turn token. Comparing or printing it never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

#[derive(Debug, thiserror::Error)]
#[error("no randomness from the operating system: {0}")]
pub struct NoRandomness(String);

impl Token {
    /// A fresh token: 32 random bytes, base64url without padding (43 characters, valid
    /// in a header value as is).
    pub fn mint() -> Result<Token, NoRandomness> {
        let mut raw = [0u8; BYTES];
        getrandom::fill(&mut raw).map_err(|e| NoRandomness(e.to_string()))?;
        Ok(Token(
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw),
        ))
    }

    /// The secret, for the header and the start hook only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// What logs and audit lines show: 8 hex digits of the token's SHA-256, enough to
    /// match a lab manager's record, useless to forge one.
    pub fn tag(&self) -> String {
        let digest = Sha256::digest(self.0.as_bytes());
        digest.iter().take(4).map(|b| format!("{b:02x}")).collect()
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token(tag {})", self.tag())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_fresh_header_safe_and_never_shown() {
        let a = Token::mint().unwrap();
        let b = Token::mint().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.expose().len(), 43);
        assert!(http::HeaderValue::from_str(a.expose()).is_ok());
        assert!(a
            .expose()
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        let shown = format!("{a:?}");
        assert!(!shown.contains(a.expose()));
        assert_eq!(a.tag().len(), 8);
        assert!(shown.contains(&a.tag()));
        assert_ne!(a.tag(), b.tag());
    }
}

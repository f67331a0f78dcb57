//! Device tunnels (issue 11, wire protocol in `docs/tunnel-protocol.md`): a WebSocket on
//! `GET /lab/tunnel/{host}:{port}` that labgate splices to a TCP connection it opens to
//! an allowed device, for the ACTIVE session only, until its turn ends.
//!
//! Pure parts live here: what may be reached ([`allowlist`]), its configuration
//! ([`config`]), the WebSocket handshake and framing without I/O ([`ws`]), and the label
//! enums of the tunnel metrics. The sockets are `crate::splice`'s; the gate, the limit
//! and the cut are the shared state's. Must never decide a refusal anywhere but here and
//! in the gate, and never connect before every refusal has been decided.

pub mod allowlist;
pub mod config;
pub mod ws;

/// The path prefix of tunnel requests; what follows is the `{host}:{port}` target.
pub const PATH_PREFIX: &str = "/lab/tunnel/";

/// The target of a tunnel request path, or `None` when the path is not a tunnel's.
pub fn target_of(path: &str) -> Option<&str> {
    path.strip_prefix(PATH_PREFIX)
}

/// Why a tunnel was not opened: the `reason` label of `labgate_tunnels_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// No `X-Session-ID` (422).
    Missing,
    /// Two `X-Session-ID` headers (400).
    Invalid,
    /// Unknown session (404).
    Unknown,
    /// A WAITING session (423).
    Waiting,
    /// Target malformed or not in the allowlist (404).
    NotAllowed,
    /// Not a WebSocket opening handshake (400 or 426).
    Handshake,
    /// The session holds its maximum of tunnels (429).
    Limit,
    /// The device refused or could not be reached (502).
    Unreachable,
    /// The device did not answer within the connect timeout (504).
    Timeout,
}

impl Refused {
    pub const ALL: [Refused; 9] = [
        Refused::Missing,
        Refused::Invalid,
        Refused::Unknown,
        Refused::Waiting,
        Refused::NotAllowed,
        Refused::Handshake,
        Refused::Limit,
        Refused::Unreachable,
        Refused::Timeout,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            Refused::Missing => "missing",
            Refused::Invalid => "invalid",
            Refused::Unknown => "unknown",
            Refused::Waiting => "waiting",
            Refused::NotAllowed => "not_allowed",
            Refused::Handshake => "handshake",
            Refused::Limit => "limit",
            Refused::Unreachable => "unreachable",
            Refused::Timeout => "timeout",
        }
    }
}

/// Which way tunnel bytes went: the `direction` label of `labgate_tunnel_bytes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    ToDevice,
    ToClient,
}

impl Direction {
    pub const ALL: [Direction; 2] = [Direction::ToDevice, Direction::ToClient];

    pub fn as_str(&self) -> &'static str {
        match self {
            Direction::ToDevice => "to_device",
            Direction::ToClient => "to_client",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_distinct_snake_case() {
        let mut seen: Vec<&str> = Refused::ALL.iter().map(Refused::as_str).collect();
        seen.extend(Direction::ALL.iter().map(Direction::as_str));
        for l in &seen {
            assert!(l.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{l}");
        }
        let n = seen.len();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), n);
    }

    #[test]
    fn tunnel_paths() {
        assert_eq!(target_of("/lab/tunnel/r1:22"), Some("r1:22"));
        assert_eq!(target_of("/lab/tunnel/"), Some(""));
        assert_eq!(target_of("/lab/tunnels"), None);
        assert_eq!(target_of("/lab/x"), None);
    }
}

//! What a log line may hold of what a client (or an operator) sent: every field bounded,
//! session ids cut to their 8-character log form.
//!
//! Owns [`path`] (a request target as logged, in access, audit and error lines) and
//! [`text`] (any other client- or operator-supplied string: reasons, error texts). Log
//! volume must not grow with a request's size, and a log reader must never learn a
//! whole session id (the gate credential) however the client spelled it: `//session/ID`,
//! `/%73ession/ID`, `%30` for a digit, upper case, no hyphens. Pure; must never panic
//! or allocate more than a few times [`MAX_FIELD`] bytes whatever the input's length.

/// The most characters a logged field holds (plus the `…` marking a cut).
pub const MAX_FIELD: usize = 256;

/// How much of a raw target is looked at: decoding shrinks `%XX` three to one and
/// redaction shrinks an id to 9 characters, so this always yields more than
/// [`MAX_FIELD`] characters when the target is longer.
const SCAN: usize = 16 * MAX_FIELD;

/// A run of this many hex digits (with `-` or `_` between them) may be a session id
/// (32 hex digits) or half of one: it is cut to its first 8 characters.
const ID_LIKE_HEX_DIGITS: usize = 16;

/// The request target as logged: escapes of letters, digits, `-` and `_` decoded (the
/// router decodes them too, so `/%73ession/ID` is seen as the `/session/ID` it is;
/// `%2e` and the like stay as sent, for whoever investigates), every id-like run cut
/// to 8 characters, at most [`MAX_FIELD`] characters.
pub fn path(raw: &[u8]) -> String {
    let head = raw.get(..SCAN).unwrap_or(raw);
    let mut decoded = Vec::with_capacity(head.len());
    let mut i = 0;
    while let Some(&byte) = head.get(i) {
        if byte == b'%' {
            let hi = head.get(i + 1).copied().and_then(hex_value);
            let lo = head.get(i + 2).copied().and_then(hex_value);
            if let (Some(hi), Some(lo)) = (hi, lo) {
                let value = (hi << 4) | lo;
                if value.is_ascii_alphanumeric() || matches!(value, b'-' | b'_') {
                    decoded.push(value);
                    i += 3;
                    continue;
                }
            }
        }
        decoded.push(byte);
        i += 1;
    }
    let mut out = bounded(&String::from_utf8_lossy(&decoded));
    if raw.len() > head.len() && !out.ends_with(CUT) {
        out.push(CUT);
    }
    out
}

/// Any other client- or operator-supplied string as logged: id-like runs cut, at most
/// [`MAX_FIELD`] characters.
pub fn text(s: &str) -> String {
    bounded(s.get(..SCAN).unwrap_or_else(|| floor(s, SCAN)))
}

const CUT: char = '…';

/// `s` up to a char boundary at or below `at`.
fn floor(s: &str, mut at: usize) -> &str {
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    &s[..at]
}

/// Redacts id-like runs and control characters and stops at [`MAX_FIELD`] characters.
fn bounded(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(MAX_FIELD + 4));
    let mut chars = 0;
    let mut rest = s;
    while let Some(c) = rest.chars().next() {
        if chars >= MAX_FIELD {
            out.push(CUT);
            break;
        }
        let run_len = rest
            .find(|c: char| !(c.is_ascii_hexdigit() || c == '-' || c == '_'))
            .unwrap_or(rest.len());
        if run_len > 0 {
            let run = &rest[..run_len];
            let digits = run.bytes().filter(u8::is_ascii_hexdigit).count();
            let exact = crate::queue::SessionId::parse_exact(run);
            if let Some(id) = exact.filter(|_| chars + 12 <= MAX_FIELD) {
                // A real session id: logged by its one public name (issue 15 #5), the
                // tag the status page, the admin queue and `admin kick` use.
                out.push_str("tag:");
                out.push_str(&id.tag());
                chars += 12;
            } else if digits >= ID_LIKE_HEX_DIGITS {
                if chars + 9 > MAX_FIELD {
                    out.push(CUT);
                    break;
                }
                out.push_str(&run[..8]);
                out.push(CUT);
                chars += 9;
            } else {
                let room = MAX_FIELD - chars;
                out.push_str(&run[..run_len.min(room)]);
                chars += run_len.min(room);
            }
            rest = &rest[run_len..];
            continue;
        }
        // A decoded path may hold any byte; a log line must stay one line.
        out.push(if c.is_control() { '\u{fffd}' } else { c });
        chars += 1;
        rest = &rest[c.len_utf8()..];
    }
    out
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0b9f7a0e-6f0b-4f7c-9a55-2f7d8b1c0e11";

    fn leaks(logged: &str) -> bool {
        let l = logged.to_lowercase();
        l.contains(ID) || l.contains(&ID.replace('-', "")) || l.contains("2f7d8b1c0e11")
    }

    #[test]
    fn session_ids_are_cut_in_every_spelling() {
        let upper = ID.to_uppercase();
        let simple = ID.replace('-', "");
        let underscored = ID.replace('-', "_");
        let escaped: String = ID.chars().map(|c| format!("%{:02X}", c as u32)).collect();
        for p in [
            format!("/session/{ID}"),
            format!("//session/{ID}"),
            format!("/%73ession/{ID}"),
            format!("/session/{escaped}"),
            format!("/session/{upper}"),
            format!("/session/{simple}"),
            format!("/session/{underscored}"),
            format!("/lab/x?sid={ID}&y=1"),
            format!("/session/{{{ID}}}"),
            format!("/session/urn:uuid:{ID}"),
        ] {
            let logged = path(p.as_bytes());
            assert!(!leaks(&logged), "{p} logged as {logged}");
            assert!(
                logged.contains("…") || logged.contains("tag:"),
                "{p} logged as {logged}"
            );
        }
        let tag = crate::queue::SessionId::parse_exact(ID).map(|id| id.tag());
        let tag = tag.unwrap_or_default();
        assert_eq!(
            path(format!("/session/{ID}").as_bytes()),
            format!("/session/tag:{tag}")
        );
        assert_eq!(
            path(format!("/%73ession/{ID}?wait=5").as_bytes()),
            format!("/session/tag:{tag}?wait=5")
        );
        assert!(!leaks(&text(&format!("kicked {ID} for hogging"))));
    }

    #[test]
    fn ordinary_paths_are_logged_as_sent() {
        for p in [
            "/session/heartbeat",
            "/session",
            "/lab/devices",
            "/session/x%2Fy",
            "/lab/a%20b?q=1",
            "/lab/2026-01-01/deadbeef",
            "/lab/%2e%2e/secret",
        ] {
            assert_eq!(path(p.as_bytes()), p);
        }
    }

    #[test]
    fn every_field_is_bounded_whatever_the_input() {
        let huge = vec![b'x'; 60_000];
        assert_eq!(path(&huge).chars().count(), MAX_FIELD + 1);
        let escaped = "%78".repeat(20_000);
        assert!(path(escaped.as_bytes()).len() <= MAX_FIELD * 4 + 3);
        let ids = format!("/{ID}").repeat(2_000);
        let logged = path(ids.as_bytes());
        assert!(logged.chars().count() <= MAX_FIELD + 1, "{logged}");
        assert!(!leaks(&logged));
        let wide = "é".repeat(10_000);
        assert!(text(&wide).chars().count() <= MAX_FIELD + 1);
        assert_eq!(text("disk full"), "disk full");
        assert_eq!(path(b"/a\x1bb\n"), "/a\u{fffd}b\u{fffd}");
        assert_eq!(path(b""), "");
        assert_eq!(path(b"%"), "%");
        assert_eq!(path(b"%4"), "%4");
    }
}

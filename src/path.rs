//! Request-target check and normalisation, and the longest-prefix route table.
//!
//! Owns the decision whether a raw request target may be acted on at all (contract
//! §2: anything else is `400 {"detail": "Invalid path"}`), and the exact text that is
//! then routed and forwarded: the path that was checked is the path that is forwarded,
//! so callers must route and forward [`Target::path`], never the raw target.
//!
//! Must never: do I/O, log, panic on any input, allocate when nothing needs decoding,
//! or let a target through that an upstream could resolve outside the checked path
//! (dot segments, encoded separators, network-path references, double encoding,
//! invalid UTF-8 such as overlong `%c0%ae`, Unicode lookalikes such as fullwidth `．`)
//! or route differently from the route chosen here (`;` path parameters, fullwidth
//! letters that a normalising upstream folds to ASCII).

use std::borrow::Cow;
use std::cmp::Reverse;

/// Why a request target was refused. Every kind gets the same HTTP answer
/// (`400 {"detail": "Invalid path"}`); the kinds exist for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidPath {
    #[error("request target is not origin-form (must start with '/')")]
    NotOriginForm,
    #[error("request target starts with '//' (network-path reference)")]
    NetworkPath,
    #[error("request target holds a byte outside visible ASCII")]
    ForbiddenByte,
    #[error("request target holds a fragment ('#')")]
    Fragment,
    #[error("path holds a backslash")]
    Backslash,
    #[error("malformed percent-escape")]
    BadEscape,
    #[error("path holds an encoded '/' or '\\'")]
    EncodedSeparator,
    #[error("request target holds an encoded NUL (%00)")]
    EncodedNul,
    #[error("path holds a double-encoded '.', '/', '\\' or NUL")]
    DoubleEncoded,
    #[error("path holds a '.' or '..' segment")]
    DotSegment,
    #[error("path is not valid UTF-8 once percent-decoded")]
    InvalidUtf8,
    #[error("path holds an encoded character an upstream may read as ASCII")]
    Lookalike,
    #[error("path holds a ';' parameter")]
    PathParameter,
}

/// A request target that passed [`check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target<'a> {
    /// The normalised path: percent-encoded unreserved characters decoded, everything
    /// else exactly as sent. Borrowed from the raw target unless something was decoded.
    pub path: Cow<'a, str>,
    /// Everything after the first `?`, as sent (`Some("")` for a bare trailing `?`).
    pub query: Option<&'a str>,
}

impl Target<'_> {
    /// The request target to forward: the checked path, then `?` and the query if
    /// there was one.
    pub fn to_request_target(&self) -> String {
        self.with_path(&self.path)
    }

    /// The same query behind another path (used when a route prefix is stripped).
    /// `path` should come from this target's path, e.g. via [`strip`], so that it
    /// stays a checked path.
    pub fn with_path(&self, path: &str) -> String {
        let extra = self.query.map_or(0, |q| q.len() + 1);
        let mut out = String::with_capacity(path.len() + extra);
        out.push_str(path);
        if let Some(query) = self.query {
            out.push('?');
            out.push_str(query);
        }
        out
    }
}

/// Checks a raw request target (the bytes of the request line, as sent) and returns
/// its normalised form, or why it must be refused.
pub fn check(raw: &[u8]) -> Result<Target<'_>, InvalidPath> {
    match raw {
        // Some upstreams (and URL parsers) read `//host/...` as an authority.
        [b'/', b'/', ..] => return Err(InvalidPath::NetworkPath),
        [b'/', ..] => {}
        // `*`, absolute-form and authority-form: labgate serves and forwards paths only.
        _ => return Err(InvalidPath::NotOriginForm),
    }
    // Does the path (before the first `?`) hold a byte that the checks below look for?
    // Without one, there is nothing to decode and nothing for them to find (every
    // gated request and poll is checked: most paths are plain names and ids).
    let mut plain = true;
    let mut in_query = false;
    for &byte in raw {
        match byte {
            b'#' => return Err(InvalidPath::Fragment),
            b'?' => in_query = true,
            b'%' | b'.' | b';' | b'\\' => plain &= in_query,
            0x21..=0x7e => {}
            _ => return Err(InvalidPath::ForbiddenByte),
        }
    }
    // Visible ASCII only by now, so this cannot fail; mapped rather than unwrapped.
    let text = std::str::from_utf8(raw).map_err(|_| InvalidPath::ForbiddenByte)?;
    let (path, query) = match text.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (text, None),
    };
    let path = if plain {
        Cow::Borrowed(path)
    } else {
        checked_path(path)?
    };
    // The query is opaque to labgate, but a NUL in it still reaches C-string code upstream.
    if query.is_some_and(|q| q.contains("%00")) {
        return Err(InvalidPath::EncodedNul);
    }
    Ok(Target { path, query })
}

/// The checks of a path that holds `%`, `.`, `;` or `\` (a path without any is
/// accepted as it is: each check below looks for one of them).
fn checked_path(path: &str) -> Result<Cow<'_, str>, InvalidPath> {
    let path = normalise(path)?;
    // Checked on the normalised text: decoding `%32%65` after a `%25` makes `%252e`.
    reject_double_encoding(&path)?;
    if path.split('/').any(is_dot_segment) {
        return Err(InvalidPath::DotSegment);
    }
    reject_non_ascii_tricks(&path)?;
    reject_parameters(&path)?;
    Ok(path)
}

/// Validates every escape and decodes those of unreserved characters (RFC 3986
/// §6.2.2.2), so that `%2e%2e` is seen, and forwarded, as the `..` it means.
fn normalise(path: &str) -> Result<Cow<'_, str>, InvalidPath> {
    let bytes = path.as_bytes();
    // Allocated at the first decoded escape only; `copied` is how much of `path` it holds.
    let mut decoded: Option<String> = None;
    let mut copied = 0;
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        match byte {
            b'\\' => return Err(InvalidPath::Backslash),
            b'%' => {
                let hi = bytes.get(i + 1).copied().and_then(hex_value);
                let lo = bytes.get(i + 2).copied().and_then(hex_value);
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return Err(InvalidPath::BadEscape);
                };
                match (hi << 4) | lo {
                    0 => return Err(InvalidPath::EncodedNul),
                    b'/' | b'\\' => return Err(InvalidPath::EncodedSeparator),
                    value if is_unreserved(value) => {
                        let out = decoded.get_or_insert_with(|| String::with_capacity(path.len()));
                        out.push_str(&path[copied..i]);
                        out.push(char::from(value));
                        copied = i + 3;
                    }
                    // Reserved or other characters keep their meaning only while encoded.
                    _ => {}
                }
                i += 3;
            }
            _ => i += 1,
        }
    }
    Ok(match decoded {
        Some(mut out) => {
            out.push_str(&path[copied..]);
            Cow::Owned(out)
        }
        None => Cow::Borrowed(path),
    })
}

/// Rejects `%25` (an encoded `%`) followed by the hex of `.`, `/`, `\` or NUL: an
/// upstream that decodes twice would see the character itself. Further `25`s in
/// between (`%25252e`) are more layers of the same trick.
fn reject_double_encoding(path: &str) -> Result<(), InvalidPath> {
    let bytes = path.as_bytes();
    for (at, _) in path.match_indices("%25") {
        let mut rest = bytes.get(at + 3..).unwrap_or_default();
        while let [b'2', b'5', tail @ ..] = rest {
            rest = tail;
        }
        if let [hi, lo, ..] = rest {
            let pair = [hi.to_ascii_lowercase(), lo.to_ascii_lowercase()];
            if matches!(&pair, b"2e" | b"2f" | b"5c" | b"00") {
                return Err(InvalidPath::DoubleEncoded);
            }
        }
    }
    Ok(())
}

/// Is this segment `.` or `..` once its parameters are cut off? Parameters start at
/// `;` (Tomcat and others drop them: `..;` acts as `..`). A dot segment followed by
/// any escape is refused too, as no real name looks like that and an upstream may
/// decode it into a parameter (`..%3b`) or trim it (`..%20` on Windows).
fn is_dot_segment(segment: &str) -> bool {
    let name = segment
        .find([';', '%'])
        .map_or(segment, |end| &segment[..end]);
    name == "." || name == ".."
}

/// Refuses a path whose percent-decoded bytes are not UTF-8 (overlong `%c0%ae` is a
/// `.` to some decoders) or hold a character that an upstream may turn into ASCII:
/// anything whose compatibility form (NFKC) holds ASCII (fullwidth `%ef%bc%8e` is `．`,
/// NFKC `.`; fullwidth letters fold to the route names they imitate), and the few
/// lookalikes of `.`, `/` and `\` that NFKC keeps but URL parsers (IDNA maps `。` to
/// `.`) or Windows "best fit" code pages (`¥` and `₩` become `\`) do not.
///
/// Raw non-ASCII bytes never get here ([`check`] refuses them), so this only looks at
/// escapes of bytes >= 0x80 and allocates only when there are some.
fn reject_non_ascii_tricks(path: &str) -> Result<(), InvalidPath> {
    let has_high_escape = path
        .as_bytes()
        .windows(3)
        .any(|w| w[0] == b'%' && matches!(w[1], b'8'..=b'9' | b'a'..=b'f' | b'A'..=b'F'));
    if !has_high_escape {
        return Ok(());
    }
    let decoded = percent_encoding::percent_decode_str(path)
        .decode_utf8()
        .map_err(|_| InvalidPath::InvalidUtf8)?;
    let nfkc = icu_normalizer::ComposingNormalizerBorrowed::new_nfkc();
    for c in decoded.chars().filter(|c| !c.is_ascii()) {
        let folds_to_ascii = nfkc
            .normalize_iter(std::iter::once(c))
            .any(|n| n.is_ascii());
        if folds_to_ascii || LOOKALIKES.contains(&c) {
            return Err(InvalidPath::Lookalike);
        }
    }
    Ok(())
}

/// Lookalikes of `.`, `/` and `\` whose NFKC form is not ASCII.
const LOOKALIKES: &[char] = &[
    '\u{2215}', // DIVISION SLASH
    '\u{2044}', // FRACTION SLASH
    '\u{29F8}', // BIG SOLIDUS
    '\u{29F5}', // REVERSE SOLIDUS OPERATOR
    '\u{29F9}', // BIG REVERSE SOLIDUS
    '\u{2216}', // SET MINUS
    '\u{3002}', // IDEOGRAPHIC FULL STOP (IDNA: '.')
    '\u{FF61}', // HALFWIDTH IDEOGRAPHIC FULL STOP (IDNA: '.')
    '\u{00A5}', // YEN SIGN (best fit to '\\' in code page 932)
    '\u{20A9}', // WON SIGN (best fit to '\\' in code page 949)
];

/// Refuses `;` in the path, raw or encoded (the query may hold it).
///
/// Why refuse rather than route around them: Tomcat, Jetty and Spring cut `;...` off
/// every segment before routing, so `/lab/r2;x/y` is `/lab/r2/y` to them, while labgate
/// (like RFC 3986) sees a segment named `r2;x` and picks the `/lab` catch-all route with
/// its upstream's secret. Routing on the parameter-free path instead would send the
/// parameters to upstreams that keep them (nginx, Go, Python), which then see a path
/// labgate did not route. No lab API needs them (neops-remote-lab never sends one), so
/// the only path that routes the same everywhere is one without them. The encoded `%3b`
/// goes too: an upstream that decodes before it cuts parameters makes it a `;`
/// (Spring Security's strict firewall refuses both for the same reason).
fn reject_parameters(path: &str) -> Result<(), InvalidPath> {
    let bytes = path.as_bytes();
    let encoded = bytes
        .windows(3)
        .any(|w| w[0] == b'%' && w[1] == b'3' && w[2].eq_ignore_ascii_case(&b'b'));
    if bytes.contains(&b';') || encoded {
        return Err(InvalidPath::PathParameter);
    }
    Ok(())
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

/// Is `path` equal to `prefix` or below it (`prefix` + `/` ...)? Case-sensitive and
/// segment-aligned: `/lab` matches `/lab` and `/lab/x`, not `/labx` or `/LAB/x`.
/// A trailing `/` on `prefix` is ignored, so `/` matches every path.
pub fn under(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix.trim_end_matches('/'))
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// `path` with `prefix` removed, never empty: `/lab/r1/x` minus `/lab/r1` is `/x`,
/// `/lab/r1` minus `/lab/r1` is `/`. Leading empty segments left behind collapse to
/// one `/` (`/lab/r1//host/x` gives `/host/x`), so the result is never a `//`
/// network-path reference. A `path` not [`under`] `prefix` is returned unchanged.
pub fn strip<'a>(path: &'a str, prefix: &str) -> &'a str {
    const ROOT: &str = "/";
    if !under(path, prefix) {
        return path;
    }
    let rest = path
        .get(prefix.trim_end_matches('/').len()..)
        .unwrap_or_default();
    let without_slashes = rest.trim_start_matches('/');
    if without_slashes.is_empty() {
        return ROOT;
    }
    // Keep exactly one of the slashes that were trimmed.
    &rest[rest.len() - without_slashes.len() - 1..]
}

/// Longest-prefix route table: `lookup` returns the route with the longest prefix
/// that the path is [`under`].
///
/// Routes are kept sorted longest first and scanned linearly: a labgate has a handful
/// of routes, where a trie would cost more than it saves.
#[derive(Debug, Clone)]
pub struct RouteTable<T> {
    routes: Vec<(String, T)>,
}

impl<T> RouteTable<T> {
    /// Builds the table. Duplicate prefixes are the caller's to refuse; if any slip
    /// through, the first one given wins (the sort is stable).
    pub fn new(mut routes: Vec<(String, T)>) -> Self {
        routes.sort_by_key(|(prefix, _)| Reverse(prefix.trim_end_matches('/').len()));
        Self { routes }
    }

    /// The prefix and value of the longest route `path` is under.
    pub fn lookup(&self, path: &str) -> Option<(&str, &T)> {
        self.routes
            .iter()
            .find(|(prefix, _)| under(path, prefix))
            .map(|(prefix, value)| (prefix.as_str(), value))
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// All routes, in lookup order (longest prefix first).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &T)> {
        self.routes
            .iter()
            .map(|(prefix, value)| (prefix.as_str(), value))
    }
}

#[cfg(test)]
mod tests;

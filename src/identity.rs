//! Who is asking: the identity of the person behind a request, when an identity mode is
//! configured (`[identity] source = "mtls"` or `"header"`).
//!
//! Owns the pure rules: what a well-formed identity is, how it is read from a verified
//! client certificate (CN or one SAN), and when an identity header is believed (only
//! from a trusted proxy peer, exactly one well-formed value; anything else is refused,
//! fail closed). Must never do I/O, never verify a certificate chain (the TLS listener
//! does that before this module sees the certificate), and never decide what an identity
//! may do with a session (that is the gate's and the queue's).

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Longest identity accepted, in bytes: it is carried in audit lines, a header and the
/// status page, so it stays short.
pub const MAX_IDENTITY_LEN: usize = 128;

/// A person (or robot) as named by the identity source: a certificate subject or the
/// user name a trusted proxy authenticated. Always 1..=[`MAX_IDENTITY_LEN`] printable
/// ASCII characters without leading or trailing space, so it can be written into a
/// header, a log line or HTML (escaped) without surprises.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity(String);

impl Identity {
    /// Checks `raw` and wraps it; `None` when it is not a well-formed identity.
    pub fn parse(raw: &[u8]) -> Option<Identity> {
        let ok_len = !raw.is_empty() && raw.len() <= MAX_IDENTITY_LEN;
        let printable = raw.iter().all(|b| (0x20..0x7f).contains(b));
        let trimmed = raw.first() != Some(&b' ') && raw.last() != Some(&b' ');
        if !(ok_len && printable && trimmed) {
            return None;
        }
        // Printable ASCII is valid UTF-8.
        std::str::from_utf8(raw)
            .ok()
            .map(|s| Identity(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({:?})", self.0)
    }
}

/// Which part of a client certificate names the person.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertField {
    /// The subject's common name.
    Cn,
    /// The rfc822Name (e-mail) subject alternative name.
    SanEmail,
    /// The dNSName subject alternative name.
    SanDns,
    /// The uniformResourceIdentifier subject alternative name (SPIFFE ids, for example).
    SanUri,
}

impl CertField {
    /// The spelling in the configuration file.
    pub fn parse(s: &str) -> Option<CertField> {
        match s {
            "cn" => Some(CertField::Cn),
            "san-email" => Some(CertField::SanEmail),
            "san-dns" => Some(CertField::SanDns),
            "san-uri" => Some(CertField::SanUri),
            _ => None,
        }
    }

    pub const SPELLINGS: &'static str = "\"cn\", \"san-email\", \"san-dns\" or \"san-uri\"";
}

impl fmt::Display for CertField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CertField::Cn => "cn",
            CertField::SanEmail => "san-email",
            CertField::SanDns => "san-dns",
            CertField::SanUri => "san-uri",
        })
    }
}

/// Why no identity could be read from a certificate; the handshake is then refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertIdentityError {
    #[error("the certificate cannot be parsed")]
    Unparseable,
    #[error("the certificate has no {0}")]
    Missing(CertField),
    /// Two values would make the identity a matter of which one is read first.
    #[error("the certificate has more than one {0}")]
    Ambiguous(CertField),
    #[error("the certificate's {0} is not a well-formed identity")]
    Malformed(CertField),
}

/// Reads the identity from a client certificate (DER) that the TLS layer has already
/// verified. Exactly one value of `field` must be present: none or several refuse.
pub fn from_certificate(der: &[u8], field: CertField) -> Result<Identity, CertIdentityError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|_| CertIdentityError::Unparseable)?;
    let mut values: Vec<Option<&str>> = Vec::new();
    match field {
        CertField::Cn => {
            for cn in cert.subject().iter_common_name() {
                values.push(cn.as_str().ok());
            }
        }
        _ => {
            let san = cert
                .subject_alternative_name()
                .map_err(|_| CertIdentityError::Unparseable)?;
            for name in san.iter().flat_map(|ext| ext.value.general_names.iter()) {
                match (field, name) {
                    (CertField::SanEmail, GeneralName::RFC822Name(v))
                    | (CertField::SanDns, GeneralName::DNSName(v))
                    | (CertField::SanUri, GeneralName::URI(v)) => values.push(Some(v)),
                    _ => {}
                }
            }
        }
    }
    match values.as_slice() {
        [] => Err(CertIdentityError::Missing(field)),
        [Some(v)] => Identity::parse(v.as_bytes()).ok_or(CertIdentityError::Malformed(field)),
        [None] => Err(CertIdentityError::Malformed(field)),
        _ => Err(CertIdentityError::Ambiguous(field)),
    }
}

/// Why a request in `header` mode is refused (always `401`, and nothing is forwarded).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderRefusal {
    /// The TCP peer is not a trusted proxy: it may have gone around the proxy.
    #[error("requests must come through the authenticating proxy")]
    UntrustedPeer,
    #[error("no identity: the authenticating proxy did not name the user")]
    Missing,
    #[error("more than one identity header")]
    Ambiguous,
    #[error("the identity header is not a well-formed identity")]
    Malformed,
}

/// `header` mode: the identity of a request whose TCP peer is `peer`, given every value
/// of the configured identity header. Believed only from a `trusted` peer, and only as
/// exactly one well-formed value.
pub fn from_header<'a>(
    peer: Option<IpAddr>,
    trusted: &[IpNet],
    mut values: impl Iterator<Item = &'a [u8]>,
) -> Result<Identity, HeaderRefusal> {
    let is_trusted = peer.is_some_and(|ip| trusted.iter().any(|net| net.contains(&ip)));
    if !is_trusted {
        return Err(HeaderRefusal::UntrustedPeer);
    }
    let first = values.next().ok_or(HeaderRefusal::Missing)?;
    if values.next().is_some() {
        return Err(HeaderRefusal::Ambiguous);
    }
    Identity::parse(first).ok_or(HeaderRefusal::Malformed)
}

/// How the identity of a request is established (the `[identity] source`).
#[derive(Debug, Clone, Copy)]
pub enum Mode<'a> {
    /// No identity mode: session ids are bearer tokens.
    Off,
    /// The TLS listener verified a client certificate and pinned its identity to the
    /// connection.
    Mtls,
    /// A trusted proxy names the user in this header.
    Header(&'a http::HeaderName),
}

/// Why a request gets `401` in identity mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// mtls mode, yet the connection carries no identity (cannot happen when the
    /// listener requires client certificates; refused anyway, fail closed).
    #[error("no client certificate identity")]
    NoCertificate,
    #[error(transparent)]
    Header(#[from] HeaderRefusal),
}

impl Refusal {
    /// Every [`Refusal::label`], for the metric's series.
    pub const LABELS: [&'static str; 5] = [
        "no_certificate",
        "untrusted_peer",
        "missing",
        "ambiguous",
        "malformed",
    ];

    /// The `reason` of the audit line and metric.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::NoCertificate => "no_certificate",
            Refusal::Header(HeaderRefusal::UntrustedPeer) => "untrusted_peer",
            Refusal::Header(HeaderRefusal::Missing) => "missing",
            Refusal::Header(HeaderRefusal::Ambiguous) => "ambiguous",
            Refusal::Header(HeaderRefusal::Malformed) => "malformed",
        }
    }
}

/// The identity of one request: `None` when identity mode is off, the identity when it
/// is established, a refusal (`401`, nothing forwarded) otherwise. `connection` is what
/// the TLS listener pinned to the connection; `headers` every value of the mode's header.
pub fn of_request<'a>(
    mode: Mode<'_>,
    connection: Option<&Identity>,
    peer: Option<IpAddr>,
    trusted: &[IpNet],
    headers: impl Iterator<Item = &'a [u8]>,
) -> Result<Option<Identity>, Refusal> {
    match mode {
        Mode::Off => Ok(None),
        Mode::Mtls => connection.cloned().map(Some).ok_or(Refusal::NoCertificate),
        Mode::Header(_) => Ok(Some(from_header(peer, trusted, headers)?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(cn: Option<&str>, sans: Vec<rcgen::SanType>) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, cn);
        }
        params.subject_alt_names = sans;
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    fn email(s: &str) -> rcgen::SanType {
        rcgen::SanType::Rfc822Name(s.try_into().unwrap())
    }

    #[test]
    fn identity_is_short_printable_ascii_without_outer_spaces() {
        assert_eq!(Identity::parse(b"alice").unwrap().as_str(), "alice");
        assert_eq!(
            Identity::parse(b"Alice Smith").unwrap().as_str(),
            "Alice Smith"
        );
        for bad in [
            &b""[..],
            b" alice",
            b"alice ",
            b"al\nice",
            b"al\x00ice",
            "ålice".as_bytes(),
            &[b'a'; MAX_IDENTITY_LEN + 1],
        ] {
            assert_eq!(Identity::parse(bad), None, "{bad:?}");
        }
        assert!(Identity::parse(&[b'a'; MAX_IDENTITY_LEN]).is_some());
    }

    #[test]
    fn common_name_is_read_and_must_be_unique() {
        let c = cert(Some("alice"), vec![email("alice@lab.example")]);
        assert_eq!(
            from_certificate(&c, CertField::Cn).unwrap().as_str(),
            "alice"
        );
        let none = cert(None, vec![email("alice@lab.example")]);
        assert_eq!(
            from_certificate(&none, CertField::Cn),
            Err(CertIdentityError::Missing(CertField::Cn))
        );
    }

    #[test]
    fn san_of_the_configured_kind_is_read_and_must_be_unique() {
        let c = cert(
            Some("ignored"),
            vec![
                email("alice@lab.example"),
                rcgen::SanType::DnsName("alice.lab.example".try_into().unwrap()),
            ],
        );
        assert_eq!(
            from_certificate(&c, CertField::SanEmail).unwrap().as_str(),
            "alice@lab.example"
        );
        assert_eq!(
            from_certificate(&c, CertField::SanDns).unwrap().as_str(),
            "alice.lab.example"
        );
        assert_eq!(
            from_certificate(&c, CertField::SanUri),
            Err(CertIdentityError::Missing(CertField::SanUri))
        );
        let two = cert(None, vec![email("a@x"), email("b@x")]);
        assert_eq!(
            from_certificate(&two, CertField::SanEmail),
            Err(CertIdentityError::Ambiguous(CertField::SanEmail))
        );
        assert_eq!(
            from_certificate(b"not a certificate", CertField::Cn),
            Err(CertIdentityError::Unparseable)
        );
    }

    #[test]
    fn each_mode_takes_the_identity_from_its_own_source() {
        let alice = Identity::parse(b"alice").unwrap();
        let trusted: Vec<IpNet> = vec!["127.0.0.1/32".parse().unwrap()];
        let peer = Some("127.0.0.1".parse().unwrap());
        let name = http::HeaderName::from_static("x-forwarded-user");
        let bob = || [&b"bob"[..]].into_iter();
        assert_eq!(
            of_request(Mode::Off, Some(&alice), peer, &trusted, bob()),
            Ok(None)
        );
        // mtls ignores any header; no pinned identity is refused.
        assert_eq!(
            of_request(Mode::Mtls, Some(&alice), peer, &trusted, bob()),
            Ok(Some(alice.clone()))
        );
        assert_eq!(
            of_request(Mode::Mtls, None, peer, &trusted, bob()),
            Err(Refusal::NoCertificate)
        );
        // header mode ignores the connection.
        assert_eq!(
            of_request(Mode::Header(&name), Some(&alice), peer, &trusted, bob())
                .unwrap()
                .unwrap()
                .as_str(),
            "bob"
        );
        let r = of_request(Mode::Header(&name), None, None, &trusted, bob()).unwrap_err();
        assert_eq!(r.label(), "untrusted_peer");
    }

    #[test]
    fn header_is_believed_only_from_trusted_peers() {
        let trusted: Vec<IpNet> = vec!["127.0.0.2/32".parse().unwrap()];
        let proxy = Some("127.0.0.2".parse().unwrap());
        let other = Some("127.0.0.3".parse().unwrap());
        let one = || [&b"alice"[..]].into_iter();
        assert_eq!(
            from_header(proxy, &trusted, one()).unwrap().as_str(),
            "alice"
        );
        assert_eq!(
            from_header(other, &trusted, one()),
            Err(HeaderRefusal::UntrustedPeer)
        );
        assert_eq!(
            from_header(None, &trusted, one()),
            Err(HeaderRefusal::UntrustedPeer)
        );
        assert_eq!(
            from_header(proxy, &[], one()),
            Err(HeaderRefusal::UntrustedPeer)
        );
        assert_eq!(
            from_header(proxy, &trusted, std::iter::empty()),
            Err(HeaderRefusal::Missing)
        );
        assert_eq!(
            from_header(proxy, &trusted, [&b"alice"[..], b"bob"].into_iter()),
            Err(HeaderRefusal::Ambiguous)
        );
        assert_eq!(
            from_header(proxy, &trusted, [&b"al\rice"[..]].into_iter()),
            Err(HeaderRefusal::Malformed)
        );
    }
}

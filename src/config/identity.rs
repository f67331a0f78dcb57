//! `[server.tls]` and `[identity]` in the configuration file: their raw TOML mirrors and
//! the pure rules that check them.
//!
//! Owns the rules between them (mtls needs the TLS listener; header mode needs trusted
//! proxies; identity headers must not be ones labgate already manages). Must never read a
//! certificate file itself: `config::resolve` has [`crate::tls`] do it, so `labgate check`
//! and start-up share one loader.

use std::path::PathBuf;

use http::HeaderName;
use serde::Deserialize;
use toml::Spanned;

use crate::identity::CertField;
use crate::tls::listener::{ClientAuthConfig, ServerTlsConfig};

use super::{span_of, Problem};

/// `[server.tls]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServerTls {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
}

impl RawServerTls {
    pub fn validate(&self) -> Result<ServerTlsConfig, Problem> {
        for p in [&self.cert, &self.key] {
            if p.get_ref().is_empty() {
                return Err((span_of(p), "server.tls paths must not be empty".into()));
            }
        }
        Ok(ServerTlsConfig {
            cert: PathBuf::from(self.cert.get_ref()),
            key: PathBuf::from(self.key.get_ref()),
        })
    }
}

/// `[identity]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIdentity {
    /// "mtls" or "header".
    pub source: Spanned<String>,
    /// mtls: the CA client certificates must chain to, an optional CRL, and which field
    /// names the person (default "cn").
    pub client_ca: Option<Spanned<String>>,
    pub crl: Option<Spanned<String>>,
    pub from: Option<Spanned<String>>,
    /// header: the header the trusted proxy names the user in.
    pub header: Option<Spanned<String>>,
    /// Live sessions one identity may have (default 1).
    pub max_sessions: Option<Spanned<usize>>,
    /// The header the upstream receives the holder's identity in (default "X-Lab-User").
    pub upstream_header: Option<Spanned<String>>,
    /// Whether the status page names the holder and the waiting (default true).
    pub status_page_names: Option<bool>,
}

/// How identities are established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentitySource {
    /// A client certificate verified by the TLS listener.
    Mtls(ClientAuthConfig),
    /// A header set by a trusted front proxy.
    Header(HeaderName),
}

/// `[identity]`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityConfig {
    pub source: IdentitySource,
    pub max_sessions: usize,
    pub upstream_header: HeaderName,
    pub status_page_names: bool,
}

fn header_name(s: &Spanned<String>, what: &str) -> Result<HeaderName, Problem> {
    let name = HeaderName::from_bytes(s.get_ref().as_bytes()).map_err(|_| {
        (
            span_of(s),
            format!("{what}: {:?} is not a header name", s.get_ref()),
        )
    })?;
    if crate::forward::is_managed(name.as_str()) {
        return Err((
            span_of(s),
            format!("{what}: {name} is managed by labgate; choose another header"),
        ));
    }
    Ok(name)
}

/// The setting spelled `key` is only for `mode`.
fn only_for(key: &str, mode: &str, present: Option<std::ops::Range<usize>>) -> Result<(), Problem> {
    match present {
        Some(span) => Err((
            Some(span),
            format!("identity.{key} is only for source = \"{mode}\""),
        )),
        None => Ok(()),
    }
}

impl RawIdentity {
    /// `tls`: whether `[server.tls]` is configured; `trusted_proxies`: how many networks
    /// `server.trusted_proxies` lists.
    pub fn validate(&self, tls: bool, trusted_proxies: usize) -> Result<IdentityConfig, Problem> {
        let source = match self.source.get_ref().as_str() {
            "mtls" => {
                only_for("header", "header", self.header.as_ref().map(|h| h.span()))?;
                if !tls {
                    return Err((
                        span_of(&self.source),
                        "identity.source = \"mtls\" needs the TLS listener: add [server.tls]"
                            .into(),
                    ));
                }
                let Some(ca) = &self.client_ca else {
                    return Err((
                        span_of(&self.source),
                        "identity.source = \"mtls\" needs identity.client_ca (the CA client certificates must chain to)".into(),
                    ));
                };
                let field = match &self.from {
                    Some(f) => CertField::parse(f.get_ref()).ok_or_else(|| {
                        (
                            span_of(f),
                            format!("identity.from must be {}", CertField::SPELLINGS),
                        )
                    })?,
                    None => CertField::Cn,
                };
                IdentitySource::Mtls(ClientAuthConfig {
                    ca: PathBuf::from(ca.get_ref()),
                    crl: self.crl.as_ref().map(|c| PathBuf::from(c.get_ref())),
                    field,
                })
            }
            "header" => {
                for (key, span) in [
                    ("client_ca", self.client_ca.as_ref().map(|v| v.span())),
                    ("crl", self.crl.as_ref().map(|v| v.span())),
                    ("from", self.from.as_ref().map(|v| v.span())),
                ] {
                    only_for(key, "mtls", span)?;
                }
                let Some(h) = &self.header else {
                    return Err((
                        span_of(&self.source),
                        "identity.source = \"header\" needs identity.header (where the proxy names the user, like \"X-Forwarded-User\")".into(),
                    ));
                };
                if trusted_proxies == 0 {
                    return Err((
                        span_of(&self.source),
                        "identity.source = \"header\" needs server.trusted_proxies: the header is believed only from them".into(),
                    ));
                }
                IdentitySource::Header(header_name(h, "identity.header")?)
            }
            other => {
                return Err((
                    span_of(&self.source),
                    format!("identity.source must be \"mtls\" or \"header\", not {other:?}"),
                ))
            }
        };
        let max_sessions = match &self.max_sessions {
            Some(n) if *n.get_ref() == 0 => {
                return Err((
                    span_of(n),
                    "identity.max_sessions must be at least 1".into(),
                ))
            }
            Some(n) => *n.get_ref(),
            None => 1,
        };
        let upstream_header = match &self.upstream_header {
            Some(h) => header_name(h, "identity.upstream_header")?,
            None => HeaderName::from_static(crate::forward::X_LAB_USER),
        };
        if let IdentitySource::Header(h) = &source {
            if *h == upstream_header {
                return Err((
                    self.upstream_header.as_ref().and_then(span_of),
                    "identity.upstream_header must differ from identity.header".into(),
                ));
            }
        }
        Ok(IdentityConfig {
            source,
            max_sessions,
            upstream_header,
            status_page_names: self.status_page_names.unwrap_or(true),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> RawIdentity {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn mtls_needs_tls_and_a_ca() {
        let r = raw("source = \"mtls\"\nclient_ca = \"/ca.pem\"\nfrom = \"san-email\"");
        let c = r.validate(true, 0).unwrap();
        assert_eq!(c.max_sessions, 1);
        assert_eq!(c.upstream_header, "x-lab-user");
        assert!(matches!(c.source, IdentitySource::Mtls(ref m) if m.field == CertField::SanEmail));
        assert!(r.validate(false, 0).unwrap_err().1.contains("[server.tls]"));
        assert!(raw("source = \"mtls\"")
            .validate(true, 0)
            .unwrap_err()
            .1
            .contains("client_ca"));
        let bad = raw("source = \"mtls\"\nclient_ca = \"/ca\"\nfrom = \"ou\"");
        assert!(bad
            .validate(true, 0)
            .unwrap_err()
            .1
            .contains("identity.from"));
        let mixed = raw("source = \"mtls\"\nclient_ca = \"/ca\"\nheader = \"X-User\"");
        assert!(mixed.validate(true, 0).is_err());
    }

    #[test]
    fn header_mode_needs_trusted_proxies_and_a_free_header() {
        let r = raw("source = \"header\"\nheader = \"X-Forwarded-User\"\nmax_sessions = 2");
        let c = r.validate(false, 1).unwrap();
        assert_eq!(
            c.source,
            IdentitySource::Header(HeaderName::from_static("x-forwarded-user"))
        );
        assert_eq!(c.max_sessions, 2);
        assert!(r
            .validate(false, 0)
            .unwrap_err()
            .1
            .contains("trusted_proxies"));
        for h in ["X-Session-ID", "X-Forwarded-For", "bad header"] {
            let r = raw(&format!("source = \"header\"\nheader = \"{h}\""));
            assert!(r.validate(false, 1).is_err(), "{h}");
        }
        let same = raw("source = \"header\"\nheader = \"X-U\"\nupstream_header = \"x-u\"");
        assert!(same.validate(false, 1).is_err());
        assert!(
            raw("source = \"header\"\nheader = \"X-U\"\nmax_sessions = 0")
                .validate(false, 1)
                .is_err()
        );
        assert!(raw("source = \"ldap\"").validate(true, 1).is_err());
    }
}

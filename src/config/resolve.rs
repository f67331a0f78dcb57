//! Resolution: the only part of loading a config that looks outside the file.
//!
//! Owns turning checked settings into the final [`Config`]: upstream host names become
//! socket addresses (once, at start-up, because pingora's `HttpPeer::new` resolves on the
//! request path, blocking, and panics when resolution fails), injected header values
//! are read from the environment or a secret file, and TLS files (listener and upstream
//! certificates, keys, CAs, CRLs) are read and checked by [`crate::tls`]. Runs only after `validate` passed.
//! Must never add a rule on the file's meaning (that is `validate`) and never echo a
//! secret in an error.

use std::net::{SocketAddr, ToSocketAddrs};

use http::{HeaderName, HeaderValue};

use super::validate::{Checked, CheckedHeader, CheckedUpstream, SecretSource};
use super::{Config, IdentitySource, Problem, SecretFile, Upstream};
use crate::tls::listener::ListenerTls;

/// Resolves every upstream of a checked configuration, in file order.
pub(super) fn resolve(c: Checked) -> Result<Config, Problem> {
    let secret_files = secret_files(&c);
    let upstreams = c
        .upstreams
        .into_iter()
        .map(resolve_upstream)
        .collect::<Result<Vec<_>, _>>()?;
    let client_auth = c.identity.as_ref().and_then(|i| match &i.source {
        IdentitySource::Mtls(m) => Some(m.clone()),
        IdentitySource::Header(_) => None,
    });
    // The listener's files are read and checked now, so a bad one stops `labgate check`
    // and start-up with its name, never a handshake later.
    let listener_tls = c
        .server
        .tls
        .clone()
        .map(|t| ListenerTls::load(t, client_auth))
        .transpose()
        .map_err(|msg| (None, format!("[server.tls]: {msg}")))?;
    Ok(Config {
        tunnels: c.tunnels,
        server: c.server,
        metrics: c.metrics,
        queue: c.queue,
        rate_limit: c.rate_limit,
        upstreams,
        routes: c.routes,
        demo_lab: c.demo_lab,
        admin_socket: c
            .admin_socket
            .map(|s| s.unwrap_or_else(super::default_admin_socket)),
        identity: c.identity,
        listener_tls,
        compat: c.compat,
        secret_files,
    })
}

/// Every file of `c` that holds a secret: header secret files, the listener's TLS key,
/// upstream client keys.
fn secret_files(c: &Checked) -> Vec<SecretFile> {
    let mut out = Vec::new();
    if let Some(tls) = &c.server.tls {
        out.push(SecretFile {
            what: "[server.tls] key".to_string(),
            path: tls.key.clone(),
        });
    }
    for u in &c.upstreams {
        for h in &u.headers {
            if let SecretSource::File(file) = &h.source {
                out.push(SecretFile {
                    what: format!("header {:?} of upstream {:?}", h.written, u.name),
                    path: file.into(),
                });
            }
        }
        if let Some(key) = u.tls.as_ref().and_then(|t| t.client_key.as_ref()) {
            out.push(SecretFile {
                what: format!("tls.client_key of upstream {:?}", u.name),
                path: key.get_ref().into(),
            });
        }
    }
    out
}

fn resolve_upstream(u: CheckedUpstream) -> Result<Upstream, Problem> {
    let addr = resolve_addr(&u.authority).map_err(|msg| (u.authority_span.clone(), msg))?;
    let tls = u
        .tls
        .map(|t| t.resolve(&u.authority))
        .transpose()
        .map_err(|(span, msg)| (span, format!("upstream {:?}: {msg}", u.name)))?;
    let injected: Vec<HeaderName> = u.headers.iter().map(|h| h.name.clone()).collect();
    // Checked here rather than in `validate` because hook URLs resolve their host now.
    let bridge = u.bridge.validate(&u.name, &injected)?;
    let headers = u
        .headers
        .into_iter()
        .map(|h| {
            let value = read_secret(&h).map_err(|msg| (h.span.clone(), msg))?;
            Ok((h.name, value))
        })
        .collect::<Result<Vec<_>, Problem>>()?;
    Ok(Upstream {
        name: u.name,
        authority: u.authority,
        addr,
        strip_prefix: u.strip_prefix,
        connect_timeout: u.connect_timeout,
        read_timeout: u.read_timeout,
        write_timeout: u.write_timeout,
        health_interval: u.health_interval,
        headers,
        tls,
        bridge,
    })
}

fn resolve_addr(authority: &str) -> Result<SocketAddr, String> {
    let mut addrs = authority
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve upstream address {authority:?}: {e}"))?;
    addrs
        .next()
        .ok_or_else(|| format!("upstream address {authority:?} resolves to nothing"))
}

fn read_secret(h: &CheckedHeader) -> Result<HeaderValue, String> {
    let header = &h.written;
    let (raw, from) = match &h.source {
        SecretSource::Env(var) => (
            std::env::var(var).map_err(|_| {
                format!("header {header:?}: environment variable {var} is not set (or not UTF-8)")
            })?,
            format!("environment variable {var}"),
        ),
        SecretSource::File(file) => (
            std::fs::read_to_string(file)
                .map_err(|e| format!("header {header:?}: cannot read {file}: {e}"))?,
            format!("file {file}"),
        ),
    };
    // Files usually end with a newline that is not part of the secret.
    let value = raw.trim_end_matches(['\r', '\n']);
    if value.is_empty() {
        return Err(format!("header {header:?}: {from} is empty"));
    }
    let mut value = HeaderValue::from_str(value).map_err(|_| {
        format!("header {header:?}: {from} holds characters not allowed in a header")
    })?;
    value.set_sensitive(true);
    Ok(value)
}

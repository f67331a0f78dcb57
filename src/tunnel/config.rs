//! The `[tunnels]` section of the TOML: its raw serde mirror and the validated
//! [`TunnelsConfig`] built from it in one fallible step.
//!
//! Owns every check on the section (names, IP literals, CIDRs, ports, bounds); the
//! configuration loader locates the problems in the file. Must never resolve a name or
//! touch the network: tunnel targets are IP literals by design (issue 11).
//!
//! ```toml
//! [tunnels]
//! max_per_session = 8          # 429 past this many open tunnels of one session
//! connect_timeout = "5s"       # 504 when the device does not answer in time
//! keepalive = "30s"            # TCP keepalive idle time on both legs
//!
//! [[tunnels.device]]
//! name = "r1"
//! address = "172.20.20.2"
//! ports = [22, 830]
//!
//! [[tunnels.network]]
//! cidr = "172.20.20.0/24"
//! ports = [22, 830, 57400, 5000, 443]
//! ```

use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use super::allowlist::{canonical, is_device_name, Allowlist, Device, Network};

/// A problem in the section: where (a byte range of the file, when known) and what.
pub type Problem = (Option<Range<usize>>, String);

/// Open tunnels one session may hold by default.
pub const DEFAULT_MAX_PER_SESSION: usize = 8;
/// Upper bound on `max_per_session`: every tunnel holds up to eight descriptors (`fdbudget`).
pub const MAX_MAX_PER_SESSION: usize = 1024;

/// The validated `[tunnels]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelsConfig {
    pub allowlist: Allowlist,
    pub max_per_session: usize,
    pub connect_timeout: Duration,
    /// Idle time before the first TCP keepalive probe, on both legs of a tunnel.
    pub keepalive: Duration,
}

impl Default for TunnelsConfig {
    /// No `[tunnels]` section: nothing may be reached.
    fn default() -> Self {
        TunnelsConfig {
            allowlist: Allowlist::default(),
            max_per_session: DEFAULT_MAX_PER_SESSION,
            connect_timeout: Duration::from_secs(5),
            keepalive: Duration::from_secs(30),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawTunnels {
    max_per_session: Option<Spanned<usize>>,
    connect_timeout: Option<Spanned<String>>,
    keepalive: Option<Spanned<String>>,
    #[serde(default)]
    device: Vec<Spanned<RawDevice>>,
    #[serde(default)]
    network: Vec<Spanned<RawNetwork>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDevice {
    name: Spanned<String>,
    address: Spanned<String>,
    ports: Spanned<Vec<Spanned<u16>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    cidr: Spanned<String>,
    ports: Spanned<Vec<Spanned<u16>>>,
}

fn span_of<T>(s: &Spanned<T>) -> Option<Range<usize>> {
    let span = s.span();
    (!span.is_empty()).then_some(span)
}

fn problem<T>(span: Option<Range<usize>>, msg: impl Into<String>) -> Result<T, Problem> {
    Err((span, msg.into()))
}

fn duration(
    d: &Option<Spanned<String>>,
    what: &str,
    default: Duration,
) -> Result<Duration, Problem> {
    let Some(d) = d else {
        return Ok(default);
    };
    match humantime::parse_duration(d.get_ref()) {
        Ok(v) if !v.is_zero() => Ok(v),
        Ok(_) => problem(
            span_of(d),
            format!("tunnels.{what} must be greater than zero"),
        ),
        Err(e) => problem(
            span_of(d),
            format!(
                "invalid duration {:?} for tunnels.{what} ({e}); write it like \"5s\" or \"500ms\"",
                d.get_ref()
            ),
        ),
    }
}

fn ports(raw: &Spanned<Vec<Spanned<u16>>>, owner: &str) -> Result<Vec<u16>, Problem> {
    if raw.get_ref().is_empty() {
        return problem(
            span_of(raw),
            format!("{owner} has no ports: list at least one"),
        );
    }
    let mut out: Vec<u16> = Vec::new();
    for p in raw.get_ref() {
        let port = *p.get_ref();
        if port == 0 {
            return problem(span_of(p), format!("{owner}: port 0 is not a port"));
        }
        if out.contains(&port) {
            return problem(span_of(p), format!("{owner}: port {port} is listed twice"));
        }
        out.push(port);
    }
    Ok(out)
}

fn ip_literal(raw: &Spanned<String>, owner: &str) -> Result<IpAddr, Problem> {
    let text = raw.get_ref().trim();
    let ip: IpAddr = text.parse().map_err(|_| {
        (
            span_of(raw),
            format!("{owner}: address {text:?} is not an IP address (tunnels never resolve names)"),
        )
    })?;
    let ip = canonical(ip);
    let unroutable = match ip {
        IpAddr::V4(v4) => v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast(),
        IpAddr::V6(v6) => v6.is_unspecified() || v6.is_multicast(),
    };
    if unroutable {
        return problem(
            span_of(raw),
            format!("{owner}: {ip} is an unspecified, multicast or broadcast address"),
        );
    }
    Ok(ip)
}

impl RawTunnels {
    /// Validates the section; `own` are labgate's own listeners, which no tunnel reaches.
    pub fn validate(self, own: Vec<SocketAddr>) -> Result<TunnelsConfig, Problem> {
        let max_per_session = match &self.max_per_session {
            None => DEFAULT_MAX_PER_SESSION,
            Some(m) if (1..=MAX_MAX_PER_SESSION).contains(m.get_ref()) => *m.get_ref(),
            Some(m) => {
                return problem(
                    span_of(m),
                    format!("tunnels.max_per_session must be between 1 and {MAX_MAX_PER_SESSION}"),
                )
            }
        };
        let defaults = TunnelsConfig::default();
        let connect_timeout = duration(
            &self.connect_timeout,
            "connect_timeout",
            defaults.connect_timeout,
        )?;
        let keepalive = duration(&self.keepalive, "keepalive", defaults.keepalive)?;

        let mut devices: Vec<Device> = Vec::new();
        for raw in &self.device {
            let raw = raw.get_ref();
            let name = raw.name.get_ref().trim().to_string();
            if !is_device_name(&name) {
                return problem(
                    span_of(&raw.name),
                    format!(
                        "invalid device name {name:?}: letters, digits, '-', '_' or '.', \
                         at most 63, with at least one letter"
                    ),
                );
            }
            if devices.iter().any(|d| d.name == name) {
                return problem(
                    span_of(&raw.name),
                    format!("duplicate device name {name:?}"),
                );
            }
            let owner = format!("device {name:?}");
            let address = ip_literal(&raw.address, &owner)?;
            let ports = ports(&raw.ports, &owner)?;
            // Reachable through the allowlist but refused at run time would only confuse.
            for (p, port) in raw.ports.get_ref().iter().zip(&ports) {
                let addr = SocketAddr::new(address, *port);
                let own_listener = own.iter().any(|l| {
                    l.port() == *port && (l.ip().is_unspecified() || canonical(l.ip()) == address)
                });
                if own_listener {
                    return problem(
                        span_of(p),
                        format!("{owner}: {addr} is one of labgate's own listeners"),
                    );
                }
            }
            devices.push(Device {
                name,
                address,
                ports,
            });
        }

        let mut networks: Vec<Network> = Vec::new();
        for raw in &self.network {
            let raw = raw.get_ref();
            let text = raw.cidr.get_ref().trim();
            let cidr: IpNet = text.parse().map_err(|_| {
                (
                    span_of(&raw.cidr),
                    format!("invalid network {text:?}: write a CIDR like \"172.20.20.0/24\""),
                )
            })?;
            if cidr.trunc() != cidr {
                return problem(
                    span_of(&raw.cidr),
                    format!("network {text:?} has host bits set: write {}", cidr.trunc()),
                );
            }
            let ports = ports(&raw.ports, &format!("network {text}"))?;
            networks.push(Network { cidr, ports });
        }
        Ok(TunnelsConfig {
            allowlist: Allowlist::new(devices, networks, own),
            max_per_session,
            connect_timeout,
            keepalive,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        #[serde(default)]
        tunnels: RawTunnels,
    }

    fn own() -> Vec<SocketAddr> {
        vec![
            "0.0.0.0:8080".parse().unwrap(),
            "127.0.0.1:9464".parse().unwrap(),
        ]
    }

    fn parse(text: &str) -> Result<TunnelsConfig, (Option<(usize, usize)>, String)> {
        let doc: Doc = toml::from_str(text).map_err(|e| (None, e.message().to_string()))?;
        doc.tunnels.validate(own()).map_err(|(span, msg)| {
            let at = span.map(|s| {
                let line = text[..s.start].matches('\n').count() + 1;
                let col = s.start - text[..s.start].rfind('\n').map_or(0, |p| p + 1) + 1;
                (line, col)
            });
            (at, msg)
        })
    }

    #[test]
    fn a_full_section_validates() {
        let c = parse(
            r#"
[tunnels]
max_per_session = 3
connect_timeout = "2s"
keepalive = "15s"

[[tunnels.device]]
name = "r1"
address = "172.20.20.2"
ports = [22, 830]

[[tunnels.network]]
cidr = "172.20.20.0/24"
ports = [22, 830, 57400, 5000, 443]
"#,
        )
        .unwrap();
        assert_eq!(c.max_per_session, 3);
        assert_eq!(c.connect_timeout, Duration::from_secs(2));
        assert_eq!(c.keepalive, Duration::from_secs(15));
        assert_eq!(
            c.allowlist.resolve("r1:830").unwrap(),
            "172.20.20.2:830".parse().unwrap()
        );
        assert!(c.allowlist.resolve("172.20.20.9:5000").is_ok());
    }

    #[test]
    fn no_section_allows_nothing() {
        let c = parse("").unwrap();
        assert!(c.allowlist.is_empty());
        assert_eq!(c.max_per_session, DEFAULT_MAX_PER_SESSION);
        assert!(c.allowlist.resolve("127.0.0.1:22").is_err());
    }

    #[test]
    fn problems_are_located() {
        let cases: &[(&str, (usize, usize), &str)] = &[
            (
                "[[tunnels.device]]\nname = \"r1\"\naddress = \"router1.lab\"\nports = [22]\n",
                (3, 11),
                "not an IP address",
            ),
            (
                "[[tunnels.device]]\nname = \"12\"\naddress = \"10.0.0.1\"\nports = [22]\n",
                (2, 8),
                "invalid device name",
            ),
            (
                "[[tunnels.device]]\nname = \"r1\"\naddress = \"10.0.0.1\"\nports = []\n",
                (4, 9),
                "no ports",
            ),
            (
                "[[tunnels.device]]\nname = \"r1\"\naddress = \"10.0.0.1\"\nports = [22, 22]\n",
                (4, 14),
                "twice",
            ),
            (
                "[[tunnels.device]]\nname = \"r1\"\naddress = \"10.0.0.1\"\nports = [8080]\n",
                (4, 10),
                "own listeners",
            ),
            (
                "[[tunnels.device]]\nname = \"m\"\naddress = \"127.0.0.1\"\nports = [9464]\n",
                (4, 10),
                "own listeners",
            ),
            (
                "[[tunnels.device]]\nname = \"r1\"\naddress = \"0.0.0.0\"\nports = [22]\n",
                (3, 11),
                "unspecified",
            ),
            (
                "[[tunnels.network]]\ncidr = \"172.20.20.1/24\"\nports = [22]\n",
                (2, 8),
                "172.20.20.0/24",
            ),
            (
                "[[tunnels.network]]\ncidr = \"lab\"\nports = [22]\n",
                (2, 8),
                "CIDR",
            ),
            ("[tunnels]\nmax_per_session = 0\n", (2, 19), "between"),
            (
                "[tunnels]\nconnect_timeout = \"0s\"\n",
                (2, 19),
                "greater than zero",
            ),
            (
                "[tunnels]\nkeepalive = \"soon\"\n",
                (2, 13),
                "invalid duration",
            ),
            (
                "[[tunnels.device]]\nname = \"r1\"\naddress = \"10.0.0.1\"\nports = [22]\n\
                 [[tunnels.device]]\nname = \"r1\"\naddress = \"10.0.0.2\"\nports = [22]\n",
                (6, 8),
                "duplicate",
            ),
        ];
        for (text, at, what) in cases {
            let (got_at, msg) = parse(text).expect_err(text);
            assert_eq!(got_at, Some(*at), "{text}: {msg}");
            assert!(msg.contains(what), "{text}: {msg}");
        }
    }

    #[test]
    fn unknown_keys_and_bad_ports_are_parse_errors() {
        assert!(parse("[tunnels]\nmax_tunnels = 3\n").is_err());
        assert!(parse(
            "[[tunnels.device]]\nname = \"r1\"\naddress = \"10.0.0.1\"\nports = [70000]\n"
        )
        .is_err());
        assert!(parse("[[tunnels.device]]\nname = \"r1\"\naddress = \"10.0.0.1\"\n").is_err());
    }
}

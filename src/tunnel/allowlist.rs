//! What a device tunnel may reach: the validated allowlist and the pure matcher that turns
//! a requested `{host}:{port}` into the one address labgate will connect to, or a refusal.
//!
//! Owns the rules of issue 11 "only allowed targets": a host is an IPv4 literal, a
//! bracketed IPv6 literal or the name of a configured device, never a DNS name; an IP
//! literal is allowed when it is a named device's address (on one of its ports) or lies in
//! a management network (on one of its ports); labgate's own listeners are never allowed;
//! loopback only when a device or network names it explicitly; unspecified, multicast and
//! broadcast addresses never. Must never do I/O (no DNS, no connect): every refusal is
//! decided here, before anything connects.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;
use serde::Serialize;

/// A named device: `r1 = 172.20.20.2` on ports 22 and 830.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Device {
    pub name: String,
    pub address: IpAddr,
    pub ports: Vec<u16>,
}

/// A management network: every address in `cidr`, on `ports`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    pub cidr: IpNet,
    pub ports: Vec<u16>,
}

/// Why a target is refused. Every kind is answered the same (`404`, nothing connects), so
/// that the allowlist cannot be probed; the kinds exist for the audit log and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotAllowed {
    #[error("target is not {{host}}:{{port}}")]
    Malformed,
    #[error("host is neither an IP literal nor a configured device name")]
    UnknownName,
    #[error("port is not allowed for this device")]
    DevicePort,
    #[error("address is in no allowed network, or the port is not allowed there")]
    NotListed,
    #[error("address is one of labgate's own listeners")]
    OwnListener,
    #[error("loopback is not listed explicitly")]
    Loopback,
    #[error("unspecified, multicast or broadcast address")]
    Unroutable,
}

/// The validated allowlist.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowlist {
    devices: Vec<Device>,
    networks: Vec<Network>,
    /// labgate's own listeners (public, metrics, demo lab): never a tunnel target.
    own: Vec<SocketAddr>,
}

/// One allowed target, as `GET /tunnels` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetworkListing {
    pub cidr: String,
    pub ports: Vec<u16>,
}

/// The body of `GET /tunnels` (see `docs/tunnel-protocol.md`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Listing {
    pub devices: Vec<Device>,
    pub networks: Vec<NetworkListing>,
}

/// The host part of a target as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Host<'a> {
    Ip(IpAddr),
    Name(&'a str),
}

/// Maps an IPv4-mapped IPv6 address (`::ffff:127.0.0.1`) to the IPv4 address it is, so
/// that no rule can be dodged by writing the same address another way.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

fn is_loopback(ip: IpAddr) -> bool {
    canonical(ip).is_loopback()
}

fn is_unroutable(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => v4.is_unspecified() || v4.is_multicast() || v4 == Ipv4Addr::BROADCAST,
        IpAddr::V6(v6) => v6.is_unspecified() || v6.is_multicast(),
    }
}

/// Whether a network was written to cover loopback on purpose: it lies inside
/// `127.0.0.0/8` or is `::1/128`, rather than merely containing loopback (`0.0.0.0/0`).
fn names_loopback(net: &IpNet) -> bool {
    match net {
        IpNet::V4(n) => n.prefix_len() >= 8 && n.network().is_loopback(),
        IpNet::V6(n) => n.prefix_len() == 128 && n.network() == Ipv6Addr::LOCALHOST,
    }
}

/// Decodes the few escapes a client may use for an IPv6 target in a path.
fn unescape(target: &str) -> Option<String> {
    let mut out = String::with_capacity(target.len());
    let mut rest = target;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 3)?;
        out.push(match code.to_ascii_uppercase().as_str() {
            "5B" => '[',
            "5D" => ']',
            "3A" => ':',
            _ => return None,
        });
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Some(out)
}

/// Splits `{host}:{port}` into its host and a non-zero port.
fn parse(target: &str) -> Result<(Host<'_>, u16), NotAllowed> {
    let (host, port) = if let Some(rest) = target.strip_prefix('[') {
        let (inside, after) = rest.split_once(']').ok_or(NotAllowed::Malformed)?;
        let port = after.strip_prefix(':').ok_or(NotAllowed::Malformed)?;
        let ip: Ipv6Addr = inside.parse().map_err(|_| NotAllowed::Malformed)?;
        (Host::Ip(IpAddr::V6(ip)), port)
    } else {
        let (host, port) = target.rsplit_once(':').ok_or(NotAllowed::Malformed)?;
        // An unbracketed IPv6 literal is ambiguous (`::1:22`): refuse it.
        if host.contains(':') || host.is_empty() {
            return Err(NotAllowed::Malformed);
        }
        let host = match host.parse::<Ipv4Addr>() {
            Ok(ip) => Host::Ip(IpAddr::V4(ip)),
            Err(_) if is_device_name(host) => Host::Name(host),
            Err(_) => return Err(NotAllowed::Malformed),
        };
        (host, port)
    };
    // Digits only: `u16::from_str` also takes a leading `+`.
    if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(NotAllowed::Malformed);
    }
    match port.parse::<u16>() {
        Ok(p) if p != 0 => Ok((host, p)),
        _ => Err(NotAllowed::Malformed),
    }
}

/// A device name: letters, digits, `-`, `_`, `.`, at most 63 characters, and not
/// something that reads as a number (so it can never be mistaken for an address).
pub fn is_device_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && name.chars().any(|c| c.is_ascii_alphabetic())
}

impl Allowlist {
    /// Builds an allowlist; callers (the config) have validated names, ports and overlaps.
    pub fn new(devices: Vec<Device>, networks: Vec<Network>, own: Vec<SocketAddr>) -> Self {
        let devices = devices
            .into_iter()
            .map(|d| Device {
                address: canonical(d.address),
                ..d
            })
            .collect();
        Allowlist {
            devices,
            networks,
            own,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty() && self.networks.is_empty()
    }

    pub fn devices(&self) -> &[Device] {
        &self.devices
    }

    pub fn networks(&self) -> &[Network] {
        &self.networks
    }

    /// Whether `addr` is (or would reach) one of labgate's own listeners. A listener on
    /// the unspecified address answers on every local address, which a pure function
    /// cannot enumerate, so its port is refused on every host.
    pub fn is_own_listener(&self, addr: SocketAddr) -> bool {
        let ip = canonical(addr.ip());
        self.own.iter().any(|l| {
            l.port() == addr.port() && (l.ip().is_unspecified() || canonical(l.ip()) == ip)
        })
    }

    /// The address a tunnel to `target` (`{host}:{port}`, as in the request path) may
    /// connect to, or why not.
    pub fn resolve(&self, target: &str) -> Result<SocketAddr, NotAllowed> {
        let target = unescape(target).ok_or(NotAllowed::Malformed)?;
        let (host, port) = parse(&target)?;
        let ip = match host {
            Host::Name(name) => {
                let device = self
                    .devices
                    .iter()
                    .find(|d| d.name == name)
                    .ok_or(NotAllowed::UnknownName)?;
                if !device.ports.contains(&port) {
                    return Err(NotAllowed::DevicePort);
                }
                device.address
            }
            Host::Ip(ip) => canonical(ip),
        };
        let addr = SocketAddr::new(ip, port);
        if is_unroutable(ip) {
            return Err(NotAllowed::Unroutable);
        }
        if self.is_own_listener(addr) {
            return Err(NotAllowed::OwnListener);
        }
        let by_device = self
            .devices
            .iter()
            .any(|d| d.address == ip && d.ports.contains(&port));
        let by_network = || {
            self.networks
                .iter()
                .any(|n| n.cidr.contains(&ip) && n.ports.contains(&port))
        };
        if by_device {
            // A device's own address is explicit, loopback included.
            return Ok(addr);
        }
        if !by_network() {
            return Err(NotAllowed::NotListed);
        }
        if is_loopback(ip)
            && !self
                .networks
                .iter()
                .any(|n| n.cidr.contains(&ip) && n.ports.contains(&port) && names_loopback(&n.cidr))
        {
            return Err(NotAllowed::Loopback);
        }
        Ok(addr)
    }

    /// What `GET /tunnels` answers.
    pub fn listing(&self) -> Listing {
        Listing {
            devices: self.devices.clone(),
            networks: self
                .networks
                .iter()
                .map(|n| NetworkListing {
                    cidr: n.cidr.to_string(),
                    ports: n.ports.clone(),
                })
                .collect(),
        }
    }
}

fn ports(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// What `labgate check` prints: one line per allowed device and network.
impl fmt::Display for Allowlist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return writeln!(
                f,
                "tunnels: none allowed (no [[tunnels.device]] or [[tunnels.network]])"
            );
        }
        writeln!(f, "tunnels may reach:")?;
        for d in &self.devices {
            writeln!(
                f,
                "  device  {:<16} {:<24} ports {}",
                d.name,
                d.address,
                ports(&d.ports)
            )?;
        }
        for n in &self.networks {
            let lo = if n.cidr.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST))
                || n.cidr.contains(&IpAddr::V6(Ipv6Addr::LOCALHOST))
            {
                if names_loopback(&n.cidr) {
                    ""
                } else {
                    " (loopback excluded)"
                }
            } else {
                ""
            };
            writeln!(
                f,
                "  network {:<41} ports {}{lo}",
                n.cidr.to_string(),
                ports(&n.ports)
            )?;
        }
        if !self.own.is_empty() {
            let own: Vec<String> = self.own.iter().map(SocketAddr::to_string).collect();
            writeln!(f, "  never labgate's own listeners: {}", own.join(", "))?;
        }
        writeln!(
            f,
            "  never a DNS name, loopback unless listed, unspecified or multicast"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lab() -> Allowlist {
        Allowlist::new(
            vec![
                Device {
                    name: "r1".into(),
                    address: "172.20.20.2".parse().unwrap(),
                    ports: vec![22, 830],
                },
                Device {
                    name: "local-sshd".into(),
                    address: "127.0.0.1".parse().unwrap(),
                    ports: vec![2222],
                },
                Device {
                    name: "v6".into(),
                    address: "fd00::2".parse().unwrap(),
                    ports: vec![22],
                },
            ],
            vec![
                Network {
                    cidr: "172.20.20.0/24".parse().unwrap(),
                    ports: vec![22, 830, 57400, 5000, 443, 8080],
                },
                Network {
                    cidr: "fd00:1::/64".parse().unwrap(),
                    ports: vec![830],
                },
            ],
            vec![
                "0.0.0.0:8080".parse().unwrap(),
                "127.0.0.1:9464".parse().unwrap(),
            ],
        )
    }

    fn ok(target: &str) -> String {
        lab()
            .resolve(target)
            .unwrap_or_else(|e| panic!("{target}: {e}"))
            .to_string()
    }

    fn no(target: &str) -> NotAllowed {
        match lab().resolve(target) {
            Ok(a) => panic!("{target} was allowed as {a}"),
            Err(e) => e,
        }
    }

    #[test]
    fn names_and_literals_of_allowed_targets() {
        assert_eq!(ok("r1:22"), "172.20.20.2:22");
        assert_eq!(ok("r1:830"), "172.20.20.2:830");
        assert_eq!(ok("172.20.20.2:22"), "172.20.20.2:22");
        assert_eq!(ok("172.20.20.77:57400"), "172.20.20.77:57400");
        assert_eq!(ok("[fd00::2]:22"), "[fd00::2]:22");
        assert_eq!(ok("%5Bfd00::2%5D:22"), "[fd00::2]:22");
        assert_eq!(ok("%5bfd00%3a%3a2%5d%3A22"), "[fd00::2]:22");
        assert_eq!(ok("[fd00:1::9]:830"), "[fd00:1::9]:830");
        // Explicitly listed loopback device.
        assert_eq!(ok("local-sshd:2222"), "127.0.0.1:2222");
        assert_eq!(ok("127.0.0.1:2222"), "127.0.0.1:2222");
    }

    #[test]
    fn everything_else_is_refused() {
        assert_eq!(no("r1:23"), NotAllowed::DevicePort);
        assert_eq!(no("r2:22"), NotAllowed::UnknownName);
        assert_eq!(no("example.com:22"), NotAllowed::UnknownName);
        assert_eq!(no("10.0.0.1:22"), NotAllowed::NotListed);
        assert_eq!(no("172.20.20.2:23"), NotAllowed::NotListed);
        assert_eq!(no("172.20.21.2:22"), NotAllowed::NotListed);
        assert_eq!(no("[fd00:1::9]:22"), NotAllowed::NotListed);
        assert_eq!(no("127.0.0.1:22"), NotAllowed::NotListed);
        assert_eq!(no("127.0.0.2:2222"), NotAllowed::NotListed);
    }

    #[test]
    fn malformed_targets() {
        for t in [
            "",
            ":22",
            "r1",
            "r1:",
            "r1:0",
            "r1:65536",
            "r1:+22",
            "r1:22 ",
            "r1: 22",
            "r1:0x16",
            "::1:22",
            "[::1]22",
            "[::1",
            "[nonsense]:22",
            "a/b:22",
            "r1:22:22",
            "%41:22",
            "%5B::1:22",
            "172.20.20.2:00000022",
            "1.2.3:22",
            "123:22",
            "r1%:22",
        ] {
            assert_eq!(lab().resolve(t), Err(NotAllowed::Malformed), "{t:?}");
        }
    }

    #[test]
    fn own_listeners_are_never_targets() {
        // 0.0.0.0:8080 answers on every local address, the bridge gateway included.
        assert_eq!(no("172.20.20.1:8080"), NotAllowed::OwnListener);
        assert_eq!(ok("172.20.20.1:443"), "172.20.20.1:443");
        let l = Allowlist::new(
            vec![Device {
                name: "lo".into(),
                address: "127.0.0.1".parse().unwrap(),
                ports: vec![9464, 9465],
            }],
            vec![],
            vec!["127.0.0.1:9464".parse().unwrap()],
        );
        assert_eq!(l.resolve("lo:9464"), Err(NotAllowed::OwnListener));
        assert_eq!(
            l.resolve("[::ffff:127.0.0.1]:9464"),
            Err(NotAllowed::OwnListener)
        );
        assert!(l.resolve("lo:9465").is_ok());
    }

    #[test]
    fn loopback_needs_an_explicit_listing() {
        let wide = Allowlist::new(
            vec![],
            vec![
                Network {
                    cidr: "0.0.0.0/0".parse().unwrap(),
                    ports: vec![22],
                },
                Network {
                    cidr: "::/0".parse().unwrap(),
                    ports: vec![22],
                },
            ],
            vec![],
        );
        assert!(wide.resolve("10.1.2.3:22").is_ok());
        assert_eq!(wide.resolve("127.0.0.1:22"), Err(NotAllowed::Loopback));
        assert_eq!(wide.resolve("[::1]:22"), Err(NotAllowed::Loopback));
        assert_eq!(
            wide.resolve("[::ffff:127.0.0.1]:22"),
            Err(NotAllowed::Loopback)
        );
        let explicit = Allowlist::new(
            vec![],
            vec![Network {
                cidr: "127.0.0.0/8".parse().unwrap(),
                ports: vec![22],
            }],
            vec![],
        );
        assert!(explicit.resolve("127.0.0.5:22").is_ok());
    }

    #[test]
    fn unroutable_addresses_are_refused_even_when_listed() {
        let wide = Allowlist::new(
            vec![],
            vec![Network {
                cidr: "0.0.0.0/0".parse().unwrap(),
                ports: vec![22],
            }],
            vec![],
        );
        for t in [
            "0.0.0.0:22",
            "255.255.255.255:22",
            "224.0.0.1:22",
            "[::]:22",
            "[ff02::1]:22",
        ] {
            assert_eq!(wide.resolve(t), Err(NotAllowed::Unroutable), "{t}");
        }
    }

    #[test]
    fn device_names_never_read_as_numbers() {
        assert!(is_device_name("r1"));
        assert!(is_device_name("spine-1.lab_a"));
        assert!(!is_device_name("123"));
        assert!(!is_device_name("1.2.3"));
        assert!(!is_device_name(""));
        assert!(!is_device_name("r 1"));
        assert!(!is_device_name(&"a".repeat(64)));
    }

    #[test]
    fn listing_and_check_output() {
        let l = lab();
        let json = serde_json::to_string(&l.listing()).unwrap();
        assert!(
            json.starts_with(
                r#"{"devices":[{"name":"r1","address":"172.20.20.2","ports":[22,830]}"#
            ),
            "{json}"
        );
        assert!(
            json.contains(r#"{"cidr":"172.20.20.0/24","ports":[22,830,57400,5000,443,8080]}"#),
            "{json}"
        );
        let text = l.to_string();
        assert!(text.contains("device  r1"), "{text}");
        assert!(text.contains("network 172.20.20.0/24"), "{text}");
        assert!(text.contains("0.0.0.0:8080"), "{text}");
        assert!(Allowlist::default().to_string().contains("none allowed"));
    }
}

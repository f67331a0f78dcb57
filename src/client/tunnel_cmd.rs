//! The `labgate tunnel` and `labgate ssh-config` commands: `--stdio` (one tunnel on
//! stdin/stdout, for ssh's `ProxyCommand`), `-L` (held forwards), and the ssh config
//! printed from `GET /tunnels`.
//!
//! Owns what these commands print and their exit codes (the same meanings as
//! `labgate run`'s: 75 when the session is lost). Must never write to stdout in
//! `--stdio` mode other than the tunnel's bytes (ssh reads them as the connection).

use std::net::IpAddr;

use ipnet::IpNet;

use super::exit;
use super::forward::{Event, ForwardSpec, Forwards};
use super::http::{ClientError, LabClient, Tunnels};
use super::progress::Progress;
use super::ssh_config;
use super::tunnel::{pump, Dialer, Ended, OpenError, Target};
use super::watch::Signals;

/// The exit code for a tunnel that could not be opened.
pub fn open_exit_code(e: &OpenError) -> u8 {
    match e {
        OpenError::SessionNotFound | OpenError::Waiting(_) | OpenError::TooMany(_) => {
            exit::TEMPFAIL
        }
        OpenError::NotAllowed { .. } => exit::NOPERM,
        OpenError::Unreachable { .. } | OpenError::DeviceUnreachable { .. } => exit::UNAVAILABLE,
        OpenError::Protocol(_) => exit::PROTOCOL,
    }
}

/// `labgate tunnel --stdio HOST:PORT`: the process exit code.
pub async fn stdio(dialer: &Dialer, target: &Target, progress: &Progress) -> u8 {
    let ws = match dialer.open(target).await {
        Ok(ws) => ws,
        Err(e) => {
            progress.error(&format!("tunnel to {target}: {e}"));
            return open_exit_code(&e);
        }
    };
    let ended = pump(ws, tokio::io::stdin(), tokio::io::stdout()).await;
    match dialer.why(ended).await {
        Ended::Closed | Ended::LabgateClosed => exit::OK,
        Ended::SessionEnded(reason) => {
            progress.error(&format!("tunnel to {target} closed: {reason}"));
            exit::TEMPFAIL
        }
        Ended::Failed(why) => {
            progress.error(&format!("tunnel to {target} lost: {why}"));
            exit::UNAVAILABLE
        }
    }
}

/// `labgate tunnel -L ...`: holds the forwards until the session ends (75) or a
/// signal (128 + its number).
pub async fn forward(
    client: &LabClient,
    dialer: Dialer,
    specs: &[ForwardSpec],
    max_connections: usize,
    progress: &Progress,
    session: &str,
) -> u8 {
    let mut signals = match Signals::new() {
        Ok(s) => s,
        Err(e) => {
            progress.error(&format!("cannot watch signals: {e}"));
            return exit::SOFTWARE;
        }
    };
    // Fail at once on a session that is gone, rather than on the first connection.
    match client.tunnels(session).await {
        Ok(allowed) => {
            for spec in specs {
                if !listed(&allowed, &spec.target) {
                    progress.error(&format!(
                        "warning: {} is not among the targets labgate lists for this session; its connections will likely be refused",
                        spec.target
                    ));
                }
            }
        }
        Err(ClientError::NotFound(..)) => {
            progress.error(&format!(
                "{}; no forwards started",
                OpenError::SessionNotFound
            ));
            return exit::TEMPFAIL;
        }
        Err(e) => {
            progress.error(&e.to_string());
            return e.exit_code();
        }
    }
    let forwards = match Forwards::bind(specs).await {
        Ok(f) => f,
        Err(e) => {
            progress.error(&e);
            return exit::OSERR;
        }
    };
    let shown = describe(&forwards);
    for (local, target) in forwards.list() {
        if local.ip().is_unspecified() {
            progress.error(&format!(
                "warning: {local} listens on every interface: anyone who reaches this host uses your session"
            ));
        }
        progress.say(&format!("forwarding {local} -> {target}"));
    }
    let mut running = forwards.start(dialer, max_connections);
    loop {
        tokio::select! {
            event = running.next() => match event {
                Event::Problem(line) => progress.error(&line),
                Event::SessionEnded(reason) => {
                    progress.error(&format!(
                        "{reason}: forwards closed ({shown}), new connections are refused"
                    ));
                    return exit::TEMPFAIL;
                }
            },
            sig = signals.recv() => return 128 + sig as i32 as u8,
        }
    }
}

/// `127.0.0.1:2201 -> r1:22, ...` for a one-line message.
pub fn describe(forwards: &Forwards) -> String {
    forwards
        .list()
        .iter()
        .map(|(local, target)| format!("{local} -> {target}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether labgate's list has `target` (a named device, a device's address, or an
/// address in a network, with the port). Advisory only: labgate decides.
fn listed(allowed: &Tunnels, target: &Target) -> bool {
    let port_ok = |ports: &[u16]| ports.is_empty() || ports.contains(&target.port());
    let ip = target.host().parse::<IpAddr>().ok();
    allowed.devices.iter().any(|d| {
        let named = d.name == target.host()
            || d.address.as_deref().and_then(|a| a.parse::<IpAddr>().ok()) == ip && ip.is_some();
        named && port_ok(&d.ports)
    }) || allowed.networks.iter().any(|n| {
        let inside = match (n.cidr.parse::<IpNet>(), ip) {
            (Ok(net), Some(ip)) => net.contains(&ip),
            _ => false,
        };
        inside && port_ok(&n.ports)
    })
}

/// `labgate ssh-config`: the text to print. `pin` writes `--url` and `--session` (and
/// `--ca`, when given) into the ProxyCommand (for a config used only during this session); otherwise
/// ssh must run with `LAB_URL` and `LAB_SESSION_ID` set.
pub async fn ssh_config(
    client: &LabClient,
    session: &str,
    pin: bool,
) -> Result<String, ClientError> {
    let allowed = client.tunnels(session).await?;
    // The absolute path: ssh runs ProxyCommand with the user's shell and PATH.
    let program = std::env::current_exe()
        .ok()
        .and_then(|p| p.to_str().map(str::to_string))
        .unwrap_or_else(|| "labgate".to_string());
    let mut proxy = vec![program, "tunnel".to_string()];
    if pin {
        proxy.extend([
            "--url".to_string(),
            client.base().to_string(),
            "--session".to_string(),
            session.to_string(),
        ]);
        // An https labgate with a private CA: the same trust, wherever ssh runs from.
        if let Some(ca) = client.trust().ca() {
            let ca = std::fs::canonicalize(ca).unwrap_or_else(|_| ca.to_path_buf());
            proxy.extend(["--ca".to_string(), ca.display().to_string()]);
        }
    }
    Ok(ssh_config::render(&allowed, &proxy))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::http::{Device, Network};

    #[test]
    fn listed_targets_match_names_addresses_and_networks() {
        let allowed = Tunnels {
            devices: vec![Device {
                name: "r1".into(),
                address: Some("192.0.2.7".into()),
                ports: vec![22, 830],
            }],
            networks: vec![Network {
                cidr: "172.20.20.0/24".into(),
                ports: vec![22],
            }],
        };
        let t = |s: &str| listed(&allowed, &Target::parse(s).unwrap());
        assert!(t("r1:22") && t("r1:830") && t("192.0.2.7:22") && t("172.20.20.9:22"));
        assert!(!t("r1:23") && !t("r2:22") && !t("172.20.21.9:22") && !t("172.20.20.9:830"));
    }
}

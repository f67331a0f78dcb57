//! Local port forwards, `-L [BIND:]LPORT:HOST:PORT` as ssh spells them: listeners
//! held by `labgate tunnel -L` and `labgate run -L`, each accepted connection carried
//! by one tunnel. Also the environment variables that tell CMD where the forwards are.
//!
//! Owns the listeners, the bound on concurrent forwarded connections, and stopping
//! everything the moment the session is found to have ended. Must never print (it
//! reports [`Event`]s; the command prints them) and never open a tunnel once the
//! session has ended.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::tunnel::{pump, Dialer, Ended, OpenError, Target};

/// Default bound on forwarded connections open at once, over all forwards.
pub const DEFAULT_MAX_CONNECTIONS: u16 = 64;

/// After a failed `accept` (out of file descriptors, say), pause this long.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// At most this many lines wait to be printed; more are dropped (a flood of refused
/// connections must not grow memory).
const EVENT_QUEUE: usize = 64;

/// One `-L` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardSpec {
    pub bind: IpAddr,
    /// 0 = a port the system picks (CMD finds it in the environment).
    pub port: u16,
    pub target: Target,
}

impl std::str::FromStr for ForwardSpec {
    type Err = String;

    /// `[BIND:]LPORT:HOST:PORT`. BIND is an IP address (IPv6 in brackets),
    /// `localhost`, or `*` for every interface; the default is 127.0.0.1. HOST is a
    /// device name or an IP address (IPv6 in brackets).
    fn from_str(s: &str) -> Result<ForwardSpec, String> {
        let bad =
            |why: &str| format!("invalid forward {s:?}: {why} (expected [BIND:]LPORT:HOST:PORT)");
        let parts = split_colons(s).ok_or_else(|| bad("unbalanced [ ]"))?;
        let (bind, lport, host, port) = match parts.as_slice() {
            [lport, host, port] => ("127.0.0.1", *lport, *host, *port),
            [bind, lport, host, port] => (*bind, *lport, *host, *port),
            _ => return Err(bad("wrong number of ':' (put IPv6 addresses in brackets)")),
        };
        let bind = match bind {
            "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
            "*" => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            b => b
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse()
                .map_err(|_| bad("BIND must be an IP address, localhost or *"))?,
        };
        let lport = if lport.bytes().all(|b| b.is_ascii_digit()) && !lport.is_empty() {
            lport
                .parse::<u16>()
                .map_err(|_| bad("LPORT must be 0-65535"))?
        } else {
            return Err(bad("LPORT must be 0-65535"));
        };
        let target = Target::parse(&format!("{host}:{port}")).map_err(|e| bad(&e))?;
        Ok(ForwardSpec {
            bind,
            port: lport,
            target,
        })
    }
}

/// Splits on ':' outside `[...]`; None if brackets do not balance.
fn split_colons(s: &str) -> Option<Vec<&str>> {
    let mut parts = Vec::new();
    let mut depth = 0u8;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '[' if depth == 0 => depth = 1,
            ']' if depth == 1 => depth = 0,
            '[' | ']' => return None,
            ':' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return None;
    }
    parts.push(&s[start..]);
    Some(parts)
}

/// The environment variable that tells CMD where the forward to `target` listens:
/// `LAB_FORWARD_<HOST>_<PORT>`, HOST upper-cased with every other character than
/// A-Z and 0-9 turned into `_` (`r1:22` -> `LAB_FORWARD_R1_22`,
/// `172.20.20.2:830` -> `LAB_FORWARD_172_20_20_2_830`).
pub fn env_name(target: &Target) -> String {
    let host: String = target
        .host()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("LAB_FORWARD_{host}_{}", target.port())
}

/// A forward with its listener.
struct Bound {
    listener: TcpListener,
    local: SocketAddr,
    target: Target,
}

/// What the forwards report to the command that holds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A connection was not forwarded, or its tunnel failed: one line saying why.
    Problem(String),
    /// The session has ended (labgate's reason); every listener is closed already,
    /// so new connections are refused. Always the last event.
    SessionEnded(String),
}

/// Bound listeners, not yet accepting (connections wait in the backlog).
pub struct Forwards {
    bound: Vec<Bound>,
}

impl Forwards {
    /// Binds every forward; fails on the first address that cannot be had.
    pub async fn bind(specs: &[ForwardSpec]) -> Result<Forwards, String> {
        let mut bound = Vec::with_capacity(specs.len());
        for spec in specs {
            let addr = SocketAddr::new(spec.bind, spec.port);
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen on {addr} (for {}): {e}", spec.target))?;
            let local = listener
                .local_addr()
                .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
            bound.push(Bound {
                listener,
                local,
                target: spec.target.clone(),
            });
        }
        Ok(Forwards { bound })
    }

    /// `(local address, target)` of every forward, in `-L` order.
    pub fn list(&self) -> Vec<(SocketAddr, Target)> {
        self.bound
            .iter()
            .map(|b| (b.local, b.target.clone()))
            .collect()
    }

    /// The variables CMD gets: one `LAB_FORWARD_<HOST>_<PORT>=ADDR:PORT` per target
    /// (the first forward wins when two go to the same target), and
    /// `LAB_FORWARDS="HOST:PORT=ADDR:PORT ..."` listing every forward.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = Vec::new();
        for (local, target) in self.list() {
            let name = env_name(&target);
            if !env.iter().any(|(n, _)| *n == name) {
                env.push((name, local.to_string()));
            }
        }
        let all: Vec<String> = self
            .list()
            .iter()
            .map(|(local, target)| format!("{target}={local}"))
            .collect();
        env.push(("LAB_FORWARDS".to_string(), all.join(" ")));
        env
    }

    /// Starts accepting: each connection opens one tunnel with `dialer`; at most
    /// `max` forwarded connections at once (more are closed at once, and reported).
    /// Dropping the returned handle stops everything.
    pub fn start(self, dialer: Dialer, max: usize) -> Running {
        let (events_tx, events) = mpsc::channel(EVENT_QUEUE);
        let task = tokio::spawn(serve(self.bound, dialer, max.max(1), events_tx));
        Running { events, task }
    }
}

/// Forwards that are accepting.
pub struct Running {
    events: mpsc::Receiver<Event>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// The next event; after [`Event::SessionEnded`], pending forever (cancel-safe).
    pub async fn next(&mut self) -> Event {
        match self.events.recv().await {
            Some(e) => e,
            None => std::future::pending().await,
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Why a forwarded connection's task stopped, when it matters to the others.
enum Stop {
    SessionEnded(String),
}

async fn serve(bound: Vec<Bound>, dialer: Dialer, max: usize, events: mpsc::Sender<Event>) {
    let (accepted_tx, mut accepted) = mpsc::channel::<(TcpStream, SocketAddr, usize)>(1);
    let mut acceptors = JoinSet::new();
    let forwards: Vec<(SocketAddr, Target)> =
        bound.iter().map(|b| (b.local, b.target.clone())).collect();
    for (i, b) in bound.into_iter().enumerate() {
        acceptors.spawn(accept_loop(b.listener, i, accepted_tx.clone()));
    }
    drop(accepted_tx);
    let (stop_tx, mut stops) = mpsc::channel::<Stop>(1);
    let mut connections = JoinSet::new();
    let reason = loop {
        tokio::select! {
            // A session end wins over a connection accepted at the same moment.
            biased;
            Some(Stop::SessionEnded(reason)) = stops.recv() => break reason,
            Some((stream, peer, i)) = accepted.recv() => {
                while connections.try_join_next().is_some() {}
                let Some((local, target)) = forwards.get(i).cloned() else { continue };
                if connections.len() >= max {
                    drop(stream);
                    let _ = events.try_send(Event::Problem(format!(
                        "{local} -> {target}: refused a connection from {peer}: {max} forwarded connections already open (--max-connections)"
                    )));
                    continue;
                }
                connections.spawn(forward_one(
                    stream,
                    peer,
                    local,
                    target,
                    dialer.clone(),
                    stop_tx.clone(),
                    events.clone(),
                ));
            }
            else => break "every listener failed".to_string(),
        }
    };
    // Listeners first, so that when the line is printed new connections are refused.
    acceptors.shutdown().await;
    connections.shutdown().await;
    let _ = events.send(Event::SessionEnded(reason)).await;
}

async fn accept_loop(
    listener: TcpListener,
    index: usize,
    accepted: mpsc::Sender<(TcpStream, SocketAddr, usize)>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                if accepted.send((stream, peer, index)).await.is_err() {
                    return;
                }
            }
            // Out of descriptors and the like: transient; do not spin.
            Err(_) => tokio::time::sleep(ACCEPT_BACKOFF).await,
        }
    }
}

async fn forward_one(
    stream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    target: Target,
    dialer: Dialer,
    stop: mpsc::Sender<Stop>,
    events: mpsc::Sender<Event>,
) {
    let _ = stream.set_nodelay(true);
    let problem = |why: String| {
        let _ = events.try_send(Event::Problem(format!("{local} -> {target}: {why}")));
    };
    match dialer.open(&target).await {
        Ok(ws) => {
            let (r, w) = stream.into_split();
            let ended = pump(ws, r, w).await;
            match dialer.why(ended).await {
                Ended::Closed | Ended::LabgateClosed => {}
                Ended::SessionEnded(reason) => {
                    let _ = stop.send(Stop::SessionEnded(reason)).await;
                }
                Ended::Failed(why) => problem(format!("tunnel for {peer} failed: {why}")),
            }
        }
        Err(OpenError::SessionNotFound) => {
            let _ = stop
                .send(Stop::SessionEnded(OpenError::SessionNotFound.to_string()))
                .await;
        }
        Err(e) => problem(format!("connection from {peer} not forwarded: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(s: &str) -> Result<ForwardSpec, String> {
        s.parse()
    }

    #[test]
    fn forwards_parse_like_ssh_dash_l() {
        let f = spec("2201:r1:22").unwrap();
        assert_eq!(f.bind, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!((f.port, f.target.to_string()), (2201, "r1:22".to_string()));
        let f = spec("0.0.0.0:2201:172.20.20.2:22").unwrap();
        assert_eq!(f.bind, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let f = spec("[::1]:0:[fd00::2]:830").unwrap();
        assert_eq!(f.bind, "::1".parse::<IpAddr>().unwrap());
        assert_eq!(
            (f.port, f.target.to_string()),
            (0, "[fd00::2]:830".to_string())
        );
        assert_eq!(
            spec("localhost:1:r1:22").unwrap().bind,
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        );
        assert_eq!(
            spec("*:1:r1:22").unwrap().bind,
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        );
        for bad in [
            "r1:22",
            "2201:fd00::2:22",
            "x:2201:r1:22",
            "65536:r1:22",
            "-1:r1:22",
            "2201:r1:0",
            "2201:[fd00::2:22",
            "2201:r1]:22",
            "a:b:c:d:e",
            "",
        ] {
            assert!(spec(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn env_names_are_shell_safe() {
        let t = |s: &str| env_name(&Target::parse(s).unwrap());
        assert_eq!(t("r1:22"), "LAB_FORWARD_R1_22");
        assert_eq!(t("172.20.20.2:830"), "LAB_FORWARD_172_20_20_2_830");
        assert_eq!(t("[fd00::2]:22"), "LAB_FORWARD_FD00__2_22");
        assert_eq!(t("clab-x.r1:57400"), "LAB_FORWARD_CLAB_X_R1_57400");
    }

    #[tokio::test]
    async fn env_lists_every_forward_and_the_first_per_target() {
        let specs: Vec<ForwardSpec> = ["0:r1:22", "0:r1:22", "0:r2:830"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let f = Forwards::bind(&specs).await.unwrap();
        let l = f.list();
        let env = f.env();
        assert_eq!(env.len(), 3, "{env:?}");
        assert_eq!(
            env[0],
            ("LAB_FORWARD_R1_22".to_string(), l[0].0.to_string())
        );
        assert_eq!(
            env[1],
            ("LAB_FORWARD_R2_830".to_string(), l[2].0.to_string())
        );
        assert_eq!(
            env[2].1,
            format!("r1:22={} r1:22={} r2:830={}", l[0].0, l[1].0, l[2].0)
        );
        assert!(l.iter().all(|(a, _)| a.ip().is_loopback() && a.port() != 0));
    }
}

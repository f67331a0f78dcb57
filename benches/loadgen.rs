//! A small load client for `benches/side_by_side.sh`, `benches/resources.sh` and
//! `benches/tunnels.sh`: the session API loop (create, poll, delete) that wrk cannot
//! express, helpers that hold sessions, idle keep-alive connections or idle device
//! tunnels open while resident memory is read, and a bulk transfer to a sink device,
//! direct and through a labgate tunnel.
//!
//! Owns only client-side load: it must never judge the figures (it prints them) and
//! never talk to anything but the loopback address it is given. Every run is bounded:
//! the loop by `--seconds`, the holders by `--seconds` as well.
//!
//! Why not wrk: a wrk Lua script sees responses without knowing which connection or
//! request they answer, so with many connections it cannot keep "poll the id this
//! connection just created, then delete it" straight. Here each connection is a task
//! running the loop in order. It speaks plain HTTP/1.1 by hand over tokio (a few dozen
//! lines) rather than through reqwest, so the client costs as little CPU as possible
//! and the server, not the client, is what is measured.
//!
//! `cargo bench` runs every bench target with `--bench`; this one then prints a note and
//! exits, since it only makes sense driven by the scripts.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[derive(Parser)]
#[command(about = "load client for benches/side_by_side.sh and benches/resources.sh")]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Each connection loops POST /session, GET /session/{id}, DELETE /session/{id}.
    /// Prints one line: `requests=N seconds=S rps=R p50_us=A p99_us=B errors=E`.
    SessionLoop {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        connections: usize,
        #[arg(long)]
        seconds: f64,
    },
    /// Creates `count` sessions (one connection, in order), prints `created=N`, and
    /// leaves them in the queue.
    CreateSessions {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        count: usize,
    },
    /// Opens `count` connections, sends GET /healthz on each (so each is an
    /// established keep-alive connection the server has served), prints `open=N`,
    /// then holds them for `seconds` and exits.
    HoldConnections {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        count: usize,
        #[arg(long)]
        seconds: f64,
    },
    /// Serves a sink device on 127.0.0.1:`sink_port` and sends it `mib` MiB twice: over
    /// a direct TCP connection, then through a labgate tunnel (`/lab/tunnel/sink:PORT`,
    /// 64 KiB binary messages) of a fresh session. Prints one line:
    /// `direct_mib_s=A tunnel_mib_s=B ratio=R`; with `--leg direct`, `--leg tunnel` or
    /// `--leg raw` (the raw form, `Upgrade: labgate-tcp`: bytes as they are, no frames)
    /// it sends only that leg and prints `mib_s=A client_cpu_s=C` (C: this process's CPU
    /// time, sender and sink together; a script reads labgate's around each leg).
    TunnelThroughput {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        sink_port: u16,
        #[arg(long)]
        mib: usize,
        #[arg(long, value_enum, default_value_t = Leg::Both)]
        leg: Leg,
    },
    /// Serves a sink device on `sink_port`, opens `count` idle tunnels to it for one
    /// session, prints `open=N`, holds them for `seconds` and exits.
    HoldTunnels {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        sink_port: u16,
        #[arg(long)]
        count: usize,
        #[arg(long)]
        seconds: f64,
    },
}

/// Which transfers `tunnel-throughput` makes.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Leg {
    Direct,
    Tunnel,
    Raw,
    Both,
}

/// One keep-alive HTTP/1.1 connection.
struct Conn {
    io: BufReader<TcpStream>,
    host: String,
    line: String,
}

/// What the loop needs from a response.
struct Answer {
    status: u16,
    body: Vec<u8>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> anyhow::Result<Conn> {
        if !addr.ip().is_loopback() {
            bail!("{addr} is not a loopback address; this client only loads loopback");
        }
        let s = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect {addr}"))?;
        s.set_nodelay(true)?;
        Ok(Conn {
            io: BufReader::new(s),
            host: addr.to_string(),
            line: String::new(),
        })
    }

    async fn call(&mut self, method: &str, path: &str) -> anyhow::Result<Answer> {
        let req = format!(
            "{method} {path} HTTP/1.1\r\nhost: {}\r\ncontent-length: 0\r\n\r\n",
            self.host
        );
        self.io.get_mut().write_all(req.as_bytes()).await?;
        self.line.clear();
        if self.io.read_line(&mut self.line).await? == 0 {
            bail!("connection closed before the status line");
        }
        let status: u16 = self
            .line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad status line {:?}", self.line))?;
        let mut len = 0usize;
        loop {
            self.line.clear();
            if self.io.read_line(&mut self.line).await? == 0 {
                bail!("connection closed in the headers");
            }
            let h = self.line.trim_end();
            if h.is_empty() {
                break;
            }
            let Some((name, value)) = h.split_once(':') else {
                continue;
            };
            if name.eq_ignore_ascii_case("content-length") {
                len = value.trim().parse().context("bad content-length")?;
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                bail!("chunked responses are not supported by this client");
            }
        }
        let mut body = vec![0u8; len];
        self.io.read_exact(&mut body).await?;
        Ok(Answer { status, body })
    }
}

/// The `session_id` value of a `201` body, found without a JSON parser: both servers
/// answer `{"session_id":"<uuid>",...}` (uvicorn with or without a space after `:`).
fn session_id(body: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(body).ok()?;
    let rest = &s[s.find("\"session_id\"")? + "\"session_id\"".len()..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let rest = rest.strip_prefix('"')?;
    Some(rest[..rest.find('"')?].to_string())
}

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    errors: u64,
}

fn timed(t: &mut Tally, start: Instant) {
    let us = start.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
    t.latencies_us.push(us);
}

async fn session_loop(addr: SocketAddr, deadline: Instant) -> anyhow::Result<Tally> {
    let mut t = Tally::default();
    let mut c = Conn::open(addr).await?;
    while Instant::now() < deadline {
        let start = Instant::now();
        let created = c.call("POST", "/session").await?;
        timed(&mut t, start);
        let Some(id) = (created.status == 201)
            .then(|| session_id(&created.body))
            .flatten()
        else {
            t.errors += 1;
            continue;
        };
        let start = Instant::now();
        let polled = c.call("GET", &format!("/session/{id}")).await?;
        timed(&mut t, start);
        t.errors += u64::from(polled.status != 200);
        let start = Instant::now();
        let deleted = c.call("DELETE", &format!("/session/{id}")).await?;
        timed(&mut t, start);
        t.errors += u64::from(deleted.status != 204);
    }
    Ok(t)
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn run_loop(addr: SocketAddr, connections: usize, seconds: f64) -> anyhow::Result<()> {
    if connections == 0 || !(seconds > 0.0 && seconds <= 600.0) {
        bail!("--connections must be at least 1 and --seconds in (0, 600]");
    }
    // A session held for the whole run, so every looped session is WAITING behind it
    // on either server (the same work for both) and no delete frees the lab.
    let mut admin = Conn::open(addr).await?;
    let holder = admin.call("POST", "/session").await?;
    let holder = session_id(&holder.body).context("holder session not created")?;

    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(seconds);
    let tasks: Vec<_> = (0..connections)
        .map(|_| tokio::spawn(session_loop(addr, deadline)))
        .collect();
    let mut all = Tally::default();
    for task in tasks {
        let t = task.await.context("loop task panicked")??;
        all.latencies_us.extend(t.latencies_us);
        all.errors += t.errors;
    }
    let took = start.elapsed().as_secs_f64();
    // A fresh connection: the first one sat idle for the whole run, longer than
    // uvicorn's 5 s keep-alive timeout.
    drop(admin);
    let mut admin = Conn::open(addr).await?;
    admin.call("DELETE", &format!("/session/{holder}")).await?;

    all.latencies_us.sort_unstable();
    let n = all.latencies_us.len();
    println!(
        "requests={n} seconds={took:.2} rps={:.1} p50_us={} p99_us={} errors={}",
        n as f64 / took,
        percentile(&all.latencies_us, 0.50),
        percentile(&all.latencies_us, 0.99),
        all.errors
    );
    Ok(())
}

async fn create_sessions(addr: SocketAddr, count: usize) -> anyhow::Result<()> {
    let mut c = Conn::open(addr).await?;
    for i in 0..count {
        let a = c.call("POST", "/session").await?;
        if a.status != 201 {
            bail!(
                "session {i}: status {} {}",
                a.status,
                String::from_utf8_lossy(&a.body)
            );
        }
    }
    println!("created={count}");
    Ok(())
}

async fn hold_connections(addr: SocketAddr, count: usize, seconds: f64) -> anyhow::Result<()> {
    if !(seconds > 0.0 && seconds <= 600.0) {
        bail!("--seconds must be in (0, 600]");
    }
    let mut conns = Vec::with_capacity(count);
    for i in 0..count {
        let mut c = Conn::open(addr)
            .await
            .with_context(|| format!("connection {i}"))?;
        let a = c.call("GET", "/healthz").await?;
        if a.status != 204 {
            bail!("connection {i}: /healthz answered {}", a.status);
        }
        conns.push(c);
    }
    println!("open={count}");
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    drop(conns);
    Ok(())
}

/// A sink device on its own thread (so it does not share the client's core): reads every
/// connection to its end and reports the bytes and when the last one arrived.
fn sink(port: u16) -> anyhow::Result<tokio::sync::mpsc::UnboundedReceiver<(u64, Instant)>> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", port))
        .with_context(|| format!("bind the sink on 127.0.0.1:{port}"))?;
    listener.set_nonblocking(true)?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async move {
            let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                return;
            };
            while let Ok((mut s, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 256 * 1024];
                    let mut n = 0u64;
                    while let Ok(k) = s.read(&mut buf).await {
                        if k == 0 {
                            break;
                        }
                        n += k as u64;
                    }
                    let _ = tx.send((n, Instant::now()));
                });
            }
        });
    });
    Ok(rx)
}

async fn open_tunnel(
    addr: SocketAddr,
    target: &str,
    id: &str,
) -> anyhow::Result<tokio_tungstenite::WebSocketStream<TcpStream>> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{addr}/lab/tunnel/{target}").into_client_request()?;
    req.headers_mut().insert("X-Session-ID", id.parse()?);
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let (ws, resp) = tokio_tungstenite::client_async(req, tcp)
        .await
        .context("tunnel handshake")?;
    if resp.status() != 101 {
        bail!("tunnel answered {}", resp.status());
    }
    Ok(ws)
}

async fn new_session(addr: SocketAddr) -> anyhow::Result<String> {
    let mut c = Conn::open(addr).await?;
    let a = c.call("POST", "/session").await?;
    session_id(&a.body).context("session not created")
}

/// One masked binary WebSocket frame carrying `payload` (RFC 6455 §5.2), built once.
///
/// The load client sends the same frame again and again: a client is required to pick a
/// fresh mask per frame, but this one only has to cost what the direct writer costs, so
/// that the figure is labgate's. labgate still unmasks every byte it relays.
fn masked_binary_frame(payload: &[u8]) -> Vec<u8> {
    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    let mut frame = Vec::with_capacity(payload.len() + 14);
    frame.push(0x82); // FIN, binary
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n <= 0xffff => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&KEY);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ KEY[i % 4]));
    frame
}

/// Opens a tunnel by hand (the opening handshake, then the bare socket), so the bulk
/// transfer writes frames (or, `raw`, the bytes themselves) straight to the socket.
async fn open_raw_tunnel(
    addr: SocketAddr,
    target: &str,
    id: &str,
    raw: bool,
) -> anyhow::Result<TcpStream> {
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let upgrade = if raw {
        "Upgrade: labgate-tcp\r\n"
    } else {
        "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    };
    let req = format!(
        "GET /lab/tunnel/{target} HTTP/1.1\r\nHost: {addr}\r\n{upgrade}\
         Connection: Upgrade\r\nX-Session-ID: {id}\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await?;
    // The answer's head, byte by byte (small, once): nothing after it is read here.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 16 * 1024 {
            bail!("tunnel answer head too long");
        }
        let mut b = [0u8; 1];
        if tcp.read(&mut b).await? == 0 {
            bail!("tunnel closed during the handshake");
        }
        head.push(b[0]);
    }
    if !head.starts_with(b"HTTP/1.1 101") {
        bail!(
            "tunnel answered {}",
            String::from_utf8_lossy(&head).lines().next().unwrap_or("")
        );
    }
    Ok(tcp)
}

async fn tunnel_throughput(
    addr: SocketAddr,
    sink_port: u16,
    mib: usize,
    leg: Leg,
) -> anyhow::Result<()> {
    if !(1..=16384).contains(&mib) {
        bail!("--mib must be 1..16384");
    }
    let mut done = sink(sink_port)?;
    let total = (mib as u64) << 20;
    let chunk = vec![0x5au8; 64 * 1024];
    let rate = |start: Instant, (n, end): (u64, Instant)| -> anyhow::Result<f64> {
        if n != total {
            bail!("the sink got {n} of {total} bytes");
        }
        Ok(n as f64 / (1 << 20) as f64 / end.duration_since(start).as_secs_f64())
    };

    // This process's CPU time (the sender and the sink both live here).
    let cpu = || {
        nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF).map_or(0.0, |u| {
            let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
            t(u.user_time()) + t(u.system_time())
        })
    };
    let cpu_start = cpu();
    let mut direct = 0.0;
    if leg == Leg::Direct || leg == Leg::Both {
        let start = Instant::now();
        let mut tcp = TcpStream::connect(("127.0.0.1", sink_port)).await?;
        for _ in 0..total / chunk.len() as u64 {
            tcp.write_all(&chunk).await?;
        }
        tcp.shutdown().await?;
        direct = rate(start, done.recv().await.context("sink gone")?)?;
        drop(tcp);
        if leg == Leg::Direct {
            println!("mib_s={direct:.0} client_cpu_s={:.3}", cpu() - cpu_start);
            return Ok(());
        }
    }

    let id = new_session(addr).await?;
    let raw = leg == Leg::Raw;
    let mut tcp = open_raw_tunnel(addr, &format!("sink:{sink_port}"), &id, raw).await?;
    let start = Instant::now();
    if raw {
        // The bytes themselves; the FIN reaches the sink through labgate.
        for _ in 0..total / chunk.len() as u64 {
            tcp.write_all(&chunk).await?;
        }
        tcp.shutdown().await?;
    } else {
        let frame = masked_binary_frame(&chunk);
        // A close frame, code 1000, masked with a zero key (RFC 6455 allows any key).
        let close = [0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8];
        for _ in 0..total / chunk.len() as u64 {
            tcp.write_all(&frame).await?;
        }
        tcp.write_all(&close).await?;
    }
    let tunnel = rate(start, done.recv().await.context("sink gone")?)?;
    drop(tcp);
    let mut c = Conn::open(addr).await?;
    c.call("DELETE", &format!("/session/{id}")).await?;
    if leg != Leg::Both {
        println!("mib_s={tunnel:.0} client_cpu_s={:.3}", cpu() - cpu_start);
    } else {
        println!(
            "direct_mib_s={direct:.0} tunnel_mib_s={tunnel:.0} ratio={:.2}",
            tunnel / direct
        );
    }
    Ok(())
}

async fn hold_tunnels(
    addr: SocketAddr,
    sink_port: u16,
    count: usize,
    seconds: f64,
) -> anyhow::Result<()> {
    if !(seconds > 0.0 && seconds <= 600.0) {
        bail!("--seconds must be in (0, 600]");
    }
    let _sink = sink(sink_port)?;
    let id = new_session(addr).await?;
    let mut tunnels = Vec::with_capacity(count);
    for i in 0..count {
        let ws = open_tunnel(addr, &format!("sink:{sink_port}"), &id)
            .await
            .with_context(|| format!("tunnel {i}"))?;
        tunnels.push(ws);
    }
    println!("open={count}");
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    drop(tunnels);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let Some(cmd) = cli.cmd else {
        println!("loadgen: a load client driven by benches/side_by_side.sh; nothing to run here");
        return Ok(());
    };
    // One thread: the scripts pin the client to one core, like wrk -t1.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cmd {
            Cmd::SessionLoop {
                addr,
                connections,
                seconds,
            } => run_loop(addr, connections, seconds).await,
            Cmd::CreateSessions { addr, count } => create_sessions(addr, count).await,
            Cmd::HoldConnections {
                addr,
                count,
                seconds,
            } => hold_connections(addr, count, seconds).await,
            Cmd::TunnelThroughput {
                addr,
                sink_port,
                mib,
                leg,
            } => tunnel_throughput(addr, sink_port, mib, leg).await,
            Cmd::HoldTunnels {
                addr,
                sink_port,
                count,
                seconds,
            } => hold_tunnels(addr, sink_port, count, seconds).await,
        }
    })
}

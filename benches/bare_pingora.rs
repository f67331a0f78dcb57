//! The floor for `benches/side_by_side.sh` and `benches/profile.sh`: the smallest
//! possible pingora 0.9 reverse proxy, one `ProxyHttp` whose only phase is
//! `upstream_peer` returning `HttpPeer::new(addr, false, "")`, on one thread.
//!
//! Owns nothing of labgate: it links no labgate code, so whatever it costs per request is
//! pingora's own cost, the floor labgate's forwarding is measured against. It must never
//! bind anything but the loopback address it is given, and it runs until SIGTERM/SIGINT
//! (the scripts stop it).
//!
//!   bare_pingora --listen 127.0.0.1:PORT --upstream 127.0.0.1:PORT [--threads 1]
//!
//! `cargo bench` runs every bench target with `--bench`; this one then prints a note and
//! exits, since it only makes sense driven by the scripts.

use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;
use clap::Parser;
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::configuration::ServerConf;

// `--features jemalloc`: the same allocator as that labgate build, so the floor and
// labgate are compared allocator for allocator (benches/issue13.sh).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(about = "bare pingora reverse proxy: the floor for benches/side_by_side.sh")]
struct Cli {
    /// Where to listen (loopback).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// The upstream every request goes to.
    #[arg(long)]
    upstream: Option<SocketAddr>,
    /// pingora worker threads, as labgate's `server.threads`.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Give the peer the options labgate gives it (connect, read and write timeouts, a
    /// pool idle timeout, a pool group per session), to tell what those cost inside
    /// pingora from what labgate's own code costs.
    #[arg(long)]
    peer_options: bool,
    /// pingora's `work_stealing = false`: one current-thread runtime per thread.
    #[arg(long)]
    no_work_stealing: bool,
    /// Answer every request here with a small JSON `423` (what labgate answers a WAITING
    /// session), never forwarding: pingora's own floor for a local answer.
    #[arg(long)]
    answer: bool,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

struct Bare {
    upstream: SocketAddr,
    peer_options: bool,
    answer: bool,
}

/// The body of the local answer: as long as labgate's 423.
const ANSWER: &[u8] = b"{\"detail\":\"Session is waiting; another session holds the lab\"}\n";

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn request_filter(&self, session: &mut Session, _ctx: &mut ()) -> Result<bool> {
        if !self.answer {
            return Ok(false);
        }
        // The smallest local answer pingora allows: a header without case map, one body.
        let mut head = pingora::http::ResponseHeader::build_no_case(423, Some(2))?;
        head.insert_header(http::header::CONTENT_TYPE, "application/json")?;
        head.insert_header(http::header::CONTENT_LENGTH, ANSWER.len())?;
        session.write_response_header(Box::new(head), false).await?;
        session
            .write_response_body(Some(bytes::Bytes::from_static(ANSWER)), true)
            .await?;
        Ok(true)
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        let mut peer = HttpPeer::new(self.upstream, false, String::new());
        if self.peer_options {
            // labgate's defaults (config `[[upstream]]`, src/proxy.rs `upstream_peer`).
            peer.group_key = 1;
            peer.options.idle_timeout = Some(Duration::from_secs(60));
            peer.options.connection_timeout = Some(Duration::from_secs(5));
            peer.options.write_timeout = Some(Duration::from_secs(60));
            peer.options.read_timeout = Some(Duration::from_secs(60));
        }
        Ok(Box::new(peer))
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let (Some(listen), Some(upstream)) = (cli.listen, cli.upstream) else {
        println!(
            "bare_pingora is a tool for benches/side_by_side.sh (needs --listen and --upstream)"
        );
        return Ok(());
    };
    anyhow::ensure!(
        listen.ip().is_loopback() && upstream.ip().is_loopback(),
        "loopback addresses only"
    );
    anyhow::ensure!((1..=64).contains(&cli.threads), "--threads must be 1..64");
    let conf = ServerConf {
        threads: cli.threads,
        work_stealing: !cli.no_work_stealing,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let bare = Bare {
        upstream,
        peer_options: cli.peer_options,
        answer: cli.answer,
    };
    let mut proxy = http_proxy_service(&server.configuration, bare);
    proxy.add_tcp(&listen.to_string());
    server.add_service(proxy);
    server.run_forever();
}

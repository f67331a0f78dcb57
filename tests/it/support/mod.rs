//! Shared harness for the integration tests: starts the real `labgate` binary on ports
//! chosen at run time, recording upstreams (HTTP and WebSocket) in-process, and a raw
//! HTTP/1.1 client for requests a normal client would normalise. Test modules take it
//! all with `use crate::support::*;`.
//!
//! Everything listens on loopback; every loop is bounded in count and time; every
//! process started here is stopped in `Drop`. Nothing here may touch process-global
//! state (environment variables, the current directory, signal dispositions): every
//! test of the binary shares this process and runs in parallel with the others.
//!
//! - `config`: the config builder (`Cfg`, `UpstreamCfg`), rendered with `toml`.
//! - `gateway`: the `labgate serve` process (`Gateway`), its log and its metrics.
//! - `neops_server`: the real neops-remote-lab server with a recording netlab stand-in.
//! - `process`: bounded child processes, signals, free ports, external tools.
//! - `raw_http`: a raw HTTP/1.1 client for exact bytes on the wire.
//! - `session`: the session API as one-line calls (create, heartbeat, delete, …).
//! - `sshd`: a real OpenSSH server on loopback with throwaway keys, and `ssh` set up for it.
//! - `upstream`: the recording HTTP upstream and the generic test HTTP server.
//! - `websocket`: the WebSocket echo upstream and a client through labgate.
//! - `tls`: a test PKI (rcgen), an HTTPS/h2 recording upstream, `curl`.
//! - `nginx`: a real nginx in front of labgate, authenticating users.

#![allow(dead_code)]

mod config;
mod gateway;
mod neops_server;
pub mod nginx;
mod process;
mod raw_http;
mod session;
mod sshd;
pub mod tls;
mod upstream;
mod websocket;

pub use config::*;
pub use gateway::*;
pub use neops_server::*;
pub use process::*;
pub use raw_http::*;
pub use session::*;
pub use sshd::*;
pub use upstream::*;
pub use websocket::*;

pub use nix::sys::signal::Signal;

use std::time::{Duration, Instant};

/// Polls `f` until it returns `Some`, at most `timeout`; panics with `what` otherwise.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

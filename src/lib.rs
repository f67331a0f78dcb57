//! labgate: a FIFO session gate for shared lab hardware, built on pingora.
//!
//! Clients open a session and wait in a queue; only the oldest (ACTIVE) session's
//! requests to `/lab/*` reach the lab's upstream endpoints. The HTTP contract is
//! `shared/contract.md`; the README is the user's guide.
//!
//! # Layout
//! Pure core (no I/O, every time-dependent call takes `now`):
//! - [`queue`]: the FIFO session state machine.
//! - [`path`]: request-target check and normalisation, route table.
//! - [`gate`]: `X-Session-ID` + queue -> gate decision.
//! - [`limits`]: rate limit, queue cap, client address behind trusted proxies.
//! - [`api`]: endpoint routing and the exact answers of the session API.
//! - [`config`]: TOML -> validated [`config::Config`].
//!
//! Adapters:
//! - [`state`]: the shared handle (queue lock, metrics and audit around each operation).
//! - [`proxy`]: `impl ProxyHttp`, the thin pingora adapter.
//! - [`reaper`]: background service reaping stale sessions.
//! - [`metrics`]: every Prometheus metric.
//! - [`demo`]: a fake lab API for trying labgate without hardware.
//! - [`server`]: assembles and runs the pingora server.
//!
//! Client (`labgate run`, `labgate session`):
//! - [`client`]: holds the lab for one command over the session API.

pub mod admin;
pub mod api;
pub mod client;
pub mod config;
pub mod cut;
pub mod demo;
pub mod forward;
pub mod gate;
pub mod history;
pub mod limits;
pub mod metrics;
pub mod path;
pub mod proxy;
pub mod queue;
pub mod reaper;
pub mod server;
pub mod state;
pub mod status;
pub mod store;

//! labgate: a FIFO session gate for shared lab hardware, built on pingora.
//!
//! Clients open a session and wait in a queue; only the oldest (ACTIVE) session's
//! requests to `/lab/*` reach the lab's upstream endpoints. What labgate promises is
//! `docs/contract.md` (the code cites it as `§N`); the README is the user's guide.
//!
//! # Layout
//! Pure core (no I/O, no clock, no pingora: every time-dependent call takes `now`):
//! - [`queue`]: the FIFO session state machine; `queue::id` the session id, its exact
//!   spelling, log form and public tag; `queue::treap` the order index; its example
//!   tests and model test.
//! - [`path`]: request-target check and normalisation, the longest-prefix route table.
//! - [`gate`]: `X-Session-ID` values + queue -> the gate's decision.
//! - [`limits`]: the `POST /session` token bucket, the queue cap, the per-client cap on
//!   live sessions, which client address counts behind trusted proxies (an IPv6 /64 is
//!   one client).
//! - [`forward`]: forwarding policy: the one list of headers labgate manages, hop-by-hop
//!   removal, `X-Forwarded-*`, fencing, injected headers, upstream failure -> answer.
//! - [`history`]: recent hold and wait times and the `Retry-After` estimate from them.
//! - [`identity`]: identity mode's "who is asking": a well-formed identity, reading it
//!   from a verified client certificate (CN or a SAN), believing a header only from a
//!   trusted proxy.
//! - [`ownership`]: which identity owns which session; the owner check and the
//!   per-identity cap.
//! - [`tombstone`]: why a recently ended session ended (bounded, expiring).
//! - [`label`]: a session's claimed owner and note (the optional `POST /session`
//!   body): bounds, printable text, FastAPI-shaped refusals; shown, never trusted.
//! - [`logfield`]: what a log line may hold of a request: bounded fields, ids redacted
//!   in every spelling.
//! - `bridge::machine`: one upstream lane around each turn (upstream session, hooks,
//!   the handoff barrier's end steps), decisions as values.
//! - [`tunnel`]: device tunnels: the allowlist, its `[tunnels]` config, the WebSocket
//!   handshake and framing without I/O, the tunnel metric labels.
//!
//! Edges around the core (I/O or shared state, no pingora types where avoidable):
//! - [`config`]: TOML -> [`config::Config`]: `raw` (serde mirror, defaults) -> `validate`
//!   (pure rules; `config::identity` for `[server.tls]` and `[identity]`) -> `resolve`
//!   (the only I/O: addresses, secret header values, TLS files).
//! - [`tls`]: TLS material, every PEM file parsed before pingora sees it:
//!   `tls::listener` (the HTTPS listener, client verification, SIGHUP reload, the
//!   connection's identity) and `tls::upstream` (CA, SNI, client certificate,
//!   skip-verify, h2 by ALPN on an `HttpPeer`).
//! - [`api`]: the session API: which endpoint, and each answer's exact status, headers
//!   and body, computed against [`state::Shared`].
//! - [`state`]: the shared handle: one lock around the queue, and around each operation
//!   the store write, cutting, metrics and the audit trail (`state/mod.rs`); building it
//!   and restoring the queue (`open`), the gate side and tunnels (`lab`), status and
//!   long-polls (`polls`), the raw picture and wait estimates (`picture`), the bridge's
//!   reports (`turns`), the config in force and reloading it all or nothing (`reload`,
//!   with `config::diff` sorting live from restart-only changes).
//! - [`store`]: the durable queue in redb (sessions and the seq counter), its file kept
//!   private, and the wall-clock floor of the seq counter.
//! - [`commit`]: group commit: one thread owns the store, writes every waiting change in
//!   one transaction, and reopens the store after an I/O error.
//! - [`cut`]: the registry of in-flight requests and upgrades, and cutting them when a
//!   session's turn ends.
//! - [`metrics`]: every Prometheus metric, its name, help, labels and buckets (the
//!   `process_*` series come from the prometheus crate's process collector).
//! - [`health`]: each upstream's reachability (`labgate_upstream_up`) from forwarding
//!   outcomes and idle probes: pure decisions (when a probe is due, what a signal
//!   changes) over a lock-free board the request path writes.
//! - [`status`]: the public view of the lab and its page (HTML and JSON), sessions by
//!   tag only.
//! - [`bridge`]: §8 around each turn: upstream sessions on a neops-remote-lab server
//!   (`bridge::neops`), per-turn tokens (`bridge::token`), handoff hooks
//!   (`bridge::hooks`), their options (`bridge::config`), metrics, and the file of owned
//!   upstream sessions beside a durable queue (`bridge::persist`); one task per lane,
//!   following the queue through [`bridge::Turns`] (which [`state::Shared`] implements).
//!
//! Adapters and processes:
//! - [`proxy`]: `impl ProxyHttp`, the thin pingora adapter calling the modules above;
//!   `proxy::ctx` the per-request context, `proxy::steps` the steps of `request_filter`
//!   that need the session (identify, answer, tunnel, upgrade, deny, shape),
//!   `proxy::wire` pingora <-> `http` translation.
//! - [`reaper`]: the background services: reaping stale and expired sessions on a tick,
//!   running the bridge's lanes, and probing idle upstreams for [`health`].
//! - [`admin`]: the operator plane: `admin::server` on a Unix socket, `admin::socket`
//!   that socket's file and private directory, `admin::cli` for `labgate admin`, one
//!   command model ([`admin::Action`]) for both.
//! - [`conn`]: client connections: caps in total and per address, keep-alive idle and
//!   request-header timeouts (around pingora's HTTP/1 loop).
//! - [`server`]: assembles and runs the pingora server; start-up and shutdown.
//! - [`fdbudget`]: the descriptors a config may need at worst, against `RLIMIT_NOFILE`
//!   (raised at start when the hard limit allows; `serve` and `check` refuse otherwise).
//! - [`splice`]: upgraded connections labgate owns end to end: device tunnels
//!   (`splice::device`) and `/lab` upgrades on its own upstream connection, TLS or not
//!   (`splice::upstream`), the byte relay both share (`splice::relay`), cut when the
//!   turn ends.
//! - [`logging`]: the process's log: format, filter, colour only on a terminal.
//! - [`demo`]: a fake lab (the lab half of the neops-remote-lab API) for trying labgate
//!   without hardware.
//!
//! Client (`labgate run`, `labgate session`, `labgate tunnel`, `labgate ssh-config`):
//! - [`client`]: holds the lab for one command, or scripts a session, over the HTTP API;
//!   `client::tunnel` one device tunnel (a WebSocket), `client::forward` the `-L`
//!   listeners, `client::tunnel_cmd` and `client::ssh_config` the tunnel commands,
//!   `client::tls` the trust for an `https://` labgate,
//!   `client::status` the `labgate status` table.
//!
//! # Where to add...
//! - **An upstream option**: the key and its default in `config::raw::RawUpstream`, its
//!   rule in `config::validate` (errors carry the key's span), the typed field on
//!   [`config::Upstream`] (filled in `config::resolve`), its use in [`proxy`]; a test in
//!   `src/config/tests.rs`, the key in `config/labgate.toml` and the README.
//! - **A metric**: a field of [`metrics::Metrics`] registered in `Metrics::register` (label
//!   values as an enum with `ALL` and `as_str`, so every series exists from the start),
//!   recorded where the fact happens ([`state`] for queue events, [`proxy`]'s `logging`
//!   for requests); a row in `docs/contract.md` §6; `tests/it/metrics_lint.rs` runs
//!   promtool over it.
//! - **An admin command**: a variant of [`admin::Action`] (its doc comment is the CLI
//!   help), its route in `admin::server`, its request and output in `admin::cli`, any
//!   body type in `admin`, the operation itself on [`state::Shared`]; a test in
//!   `tests/it/admin.rs`.
//! - **A test**: a unit test beside the code (`#[cfg(test)] mod tests`, time passed as
//!   `now`, never slept); an end-to-end test in `tests/it/<area>.rs` (one test binary,
//!   `tests/it/main.rs`, with shared helpers in `tests/it/support/`).

pub mod admin;
pub mod api;
pub mod bridge;
pub mod client;
pub mod commit;
pub mod config;
pub mod conn;
pub mod cut;
pub mod demo;
pub mod fdbudget;
pub mod forward;
pub mod gate;
pub mod health;
pub mod history;
pub mod identity;
pub mod label;
pub mod limits;
pub mod logfield;
pub mod logging;
pub mod metrics;
pub mod ownership;
pub mod path;
pub mod proxy;
pub mod queue;
pub mod reaper;
pub mod server;
pub mod splice;
pub mod state;
pub mod status;
pub mod store;
pub mod tls;
pub mod tombstone;
pub mod tunnel;

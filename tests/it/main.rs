//! labgate's integration tests: ONE test binary (it links once, not once per file), one
//! module per area, each test named `<module>::<test>` (e.g. `gate::...`). Every test runs
//! the real `labgate` binary (`CARGO_BIN_EXE_labgate`) on loopback ports chosen at run
//! time; `support` is the shared harness.
//!
//! Run one area: `cargo test --test it gate::`; one test: `cargo test --test it NAME`.
//!
//! Adding a test module:
//! 1. Create `tests/it/<area>.rs`, starting with a `//!` line that says what it covers,
//!    then `use crate::support::*;`.
//! 2. Declare it below with `mod <area>;` (keep the list sorted). Nothing in Cargo.toml:
//!    `autotests = false` there means a new file directly under `tests/` is NOT built.
//! 3. All tests share this one process and run in parallel (one thread per core): never
//!    touch process-global state (environment variables, the current directory, umask,
//!    signal dispositions); pass such things to the child process instead
//!    (`Command::env`, `Command::current_dir`). A `static` is shared by every module.
//! 4. Shared helpers go into `support/` (the module doc there lists which file owns what);
//!    helpers for one area stay in that area's module.
//!
//! Files the tests read (`tests/compat/` for `neops_compat`, `config/`, `deploy/`,
//! `README.md` for `readme`) are found through `CARGO_MANIFEST_DIR`, so they stay where
//! they are.

mod support;

mod admin;
mod audit_log;
mod bridge;
mod cli_and_shutdown;
mod connections;
mod deploy;
mod durability;
mod fdlimit;
mod first_day;
mod forwarding;
mod gate;
mod hostile;
mod identity;
mod layout;
mod limits;
mod metrics_lint;
mod neops_compat;
mod operator;
mod owner;
mod queue_extensions;
mod queue_lifecycle;
mod raw_tunnels;
mod readme;
mod reload;
mod run_cli;
mod session_api;
mod session_end;
mod status_page;
mod store_recovery;
mod tunnel_client;
mod tunnels;
mod upstream_tls;

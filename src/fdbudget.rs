//! The open-file budget: how many descriptors a config may need at worst, compared with
//! `RLIMIT_NOFILE` before `serve` starts (issue 11: at ~600 tunnels pingora's accept loop
//! hit `EMFILE`, clients saw resets and the log filled, because nothing compared the two).
//!
//! What the budget counts, from the code as it is (not from hopes about traffic):
//! - **Client connections**: at most `server.max_connections`, whatever they carry (`conn`
//!   holds a slot for a connection's whole life, a device tunnel's or an upgrade's
//!   included). The costliest kind sets the price of each, [`PER_CONNECTION`]:
//!   - a device tunnel: the client socket, labgate's duplicate of it (keepalive and the
//!     last-resort shutdown, `splice::client_socket`), the device socket and the cut
//!     registry's duplicate of it (`cut::Registry::attach`) = 4, measured: 8 tunnels
//!     added 32 entries to `/proc/PID/fd`; a raw tunnel on plain TCP (`splice::pipe`)
//!     holds a pipe (two descriptors) per direction while bytes are on their way = 8;
//!   - an upgraded `/lab` connection (`splice::upstream`): the same four;
//!   - a forwarded request: client, upstream and the registry's duplicate = 3.
//!
//!   `tunnels.max_per_session` does not bound the total: a turn's end shuts the old
//!   holder's tunnels down at once, but their descriptors go only when their tasks end
//!   (after `splice::CLOSE_GRACE`), and the next holder may open its own in the meantime,
//!   turn after turn. Only the connection cap bounds them all, so only it is counted.
//! - **Idle pooled upstream connections**: pingora keeps an HTTP/1 pool and an HTTP/2 pool,
//!   each of `upstream_keepalive_pool_size` x `server.threads` connections (pingora's
//!   `ConnectorOptions::from_server_conf`), whatever the client count.
//! - **A fixed base** ([`BASE`]): an idle `labgate serve` with the shipped config holds 49
//!   (runtimes' epoll and eventfds, listeners, the store file, the admin socket, the
//!   log), the same with `threads = 2` and `threads = 8`; rounded up to 64 for metrics
//!   scrapes, admin connections and a hook's pipes. Plus one per upstream (its health
//!   probe: every due probe connects at once), [`PER_BRIDGED_UPSTREAM`] more for one
//!   with a bridge lane (the neops-remote-lab and hook HTTP clients' connections), and
//!   one per extra `server.listen` address.
//!
//! `server.max_connections`, `server.threads`, the listeners and the bridge lanes are
//! restart-only (`config::diff`); `tunnels.max_per_session` is live but not counted
//! (above). Only an upstream added by a reload raises the budget, by one each;
//! [`reload_refusal`] checks a new config as `serve` does, for the reload to refuse it
//! with the same line (`state::reload` calls it).
//!
//! [`need`] and [`plan`] are pure; [`ensure`] is the one I/O step (get and set the limit),
//! for `serve`'s start. Must never lower a limit.

use std::fmt;

use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};
use pingora::server::configuration::ServerConf;

use crate::config::Config;

/// Descriptors of an idle labgate with the shipped config (measured: 49), rounded up.
pub const BASE: u64 = 64;
/// Descriptors one client connection may hold at worst (a raw device tunnel moving
/// bytes both ways, see above).
pub const PER_CONNECTION: u64 = 8;
/// Descriptors per upstream beyond the pools: its health probe.
pub const PER_UPSTREAM: u64 = 1;
/// More for an upstream with a bridge lane: the neops-remote-lab and hook clients.
pub const PER_BRIDGED_UPSTREAM: u64 = 3;
/// pingora keeps two idle pools (HTTP/1 and HTTP/2), each of the same size.
const POOLS: u64 = 2;

/// What a config may need at worst, by part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// `server.max_connections`.
    pub connections: u64,
    /// Idle pooled upstream connections, both pools.
    pub pool: u64,
    /// [`BASE`], the upstreams and the extra listeners.
    pub base: u64,
}

impl Budget {
    pub fn total(&self) -> u64 {
        self.connections
            .saturating_mul(PER_CONNECTION)
            .saturating_add(self.pool)
            .saturating_add(self.base)
    }
}

impl fmt::Display for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "up to {} open files (server.max_connections {} x {PER_CONNECTION}, \
             {} idle upstream connections, {} base)",
            self.total(),
            self.connections,
            self.pool,
            self.base
        )
    }
}

/// The worst case `config` may need.
pub fn need(config: &Config) -> Budget {
    // `server::server_conf` keeps pingora's default pool size (a test checks it).
    let pool_per_thread = ServerConf::default().upstream_keepalive_pool_size as u64;
    let threads = config.server.threads.max(1) as u64;
    let extra_listeners = config.server.listen.len().saturating_sub(1) as u64;
    let upstreams = config.upstreams.iter().map(|u| {
        if u.bridge.is_active() {
            PER_UPSTREAM + PER_BRIDGED_UPSTREAM
        } else {
            PER_UPSTREAM
        }
    });
    Budget {
        connections: config.server.max_connections as u64,
        pool: POOLS
            .saturating_mul(pool_per_thread)
            .saturating_mul(threads),
        base: BASE
            .saturating_add(upstreams.fold(0, u64::saturating_add))
            .saturating_add(extra_listeners),
    }
}

/// `RLIMIT_NOFILE`: soft and hard, `u64::MAX` for unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub soft: u64,
    pub hard: u64,
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |n: u64| {
            if n == u64::MAX {
                "unlimited".to_string()
            } else {
                n.to_string()
            }
        };
        write!(f, "soft {}, hard {}", show(self.soft), show(self.hard))
    }
}

/// What to do about the limit before starting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// The soft limit covers the need already.
    Fits,
    /// Raise the soft limit to this (never above the hard limit), as nginx's
    /// `worker_rlimit_nofile` and Go's runtime do.
    Raise(u64),
    /// Even the hard limit is below the need: refuse to start.
    Short,
}

/// What to do when `need` descriptors may be used under `limit`.
pub fn plan(need: u64, limit: Limit) -> Plan {
    if limit.soft >= need {
        Plan::Fits
    } else if limit.hard >= need {
        Plan::Raise(need)
    } else {
        Plan::Short
    }
}

/// The limit cannot cover the budget: the one line `serve` and `check` refuse with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Shortfall {
    #[error(
        "this config needs {budget} but the open-file limit is {limit}: raise it \
         (LimitNOFILE= in the systemd unit, `ulimit -n` before starting labgate) or lower \
         server.max_connections"
    )]
    Limit { budget: Budget, limit: Limit },
    #[error("cannot read the open-file limit (RLIMIT_NOFILE): {0}")]
    Read(String),
    #[error(
        "this config needs {budget}; the open-file limit is {limit} and raising the soft \
         limit failed ({why}): set LimitNOFILE= in the systemd unit or `ulimit -n` before \
         starting labgate"
    )]
    Raise {
        budget: Budget,
        limit: Limit,
        why: String,
    },
}

fn from_rlim(n: nix::libc::rlim_t) -> u64 {
    if n == RLIM_INFINITY {
        u64::MAX
    } else {
        n
    }
}

/// This process's open-file limit.
pub fn current() -> Result<Limit, Shortfall> {
    let (soft, hard) =
        getrlimit(Resource::RLIMIT_NOFILE).map_err(|e| Shortfall::Read(e.to_string()))?;
    Ok(Limit {
        soft: from_rlim(soft),
        hard: from_rlim(hard),
    })
}

/// Checks `budget` against the limit `check` would see, without changing anything: the
/// limit, or why even its hard limit cannot cover the budget.
pub fn check(budget: Budget) -> Result<Limit, Shortfall> {
    let limit = current()?;
    match plan(budget.total(), limit) {
        Plan::Short => Err(Shortfall::Limit { budget, limit }),
        Plan::Fits | Plan::Raise(_) => Ok(limit),
    }
}

/// For `serve`'s start: raises the soft limit if the budget needs it and the hard limit
/// allows; returns the limit in force, or why labgate must not start.
pub fn ensure(budget: Budget) -> Result<Limit, Shortfall> {
    let limit = current()?;
    match plan(budget.total(), limit) {
        Plan::Fits => Ok(limit),
        Plan::Short => Err(Shortfall::Limit { budget, limit }),
        Plan::Raise(to) => {
            // The hard limit stays as it is: an unprivileged process could never raise
            // it again.
            let hard = if limit.hard == u64::MAX {
                RLIM_INFINITY
            } else {
                limit.hard
            };
            setrlimit(Resource::RLIMIT_NOFILE, to, hard).map_err(|e| Shortfall::Raise {
                budget,
                limit,
                why: e.to_string(),
            })?;
            current()
        }
    }
}

/// For a reload: whether the process's limit (raised if it must and can be) covers
/// `new`'s budget; the same line as `serve`'s refusal when it does not.
pub fn reload_refusal(new: &Config) -> Option<Shortfall> {
    ensure(need(new)).err()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::diff;
    use crate::config::tests::MINIMAL;

    fn config(extra_server: &str, extra: &str) -> Config {
        let text = format!("[server]\n{extra_server}\n{MINIMAL}\n{extra}");
        Config::parse(&text, "t.toml").unwrap()
    }

    #[test]
    fn budget_counts_connections_pools_and_base() {
        let c = config("max_connections = 100\nthreads = 3", "");
        let b = need(&c);
        assert_eq!(b.connections, 100);
        assert_eq!(b.pool, 2 * 128 * 3);
        assert_eq!(b.base, BASE + PER_UPSTREAM);
        assert_eq!(b.total(), 100 * 8 + 768 + 65);
    }

    #[test]
    fn more_listeners_and_upstreams_raise_the_base() {
        let c = config(
            "listen = [\"127.0.0.1:1\", \"127.0.0.1:2\"]",
            "[[upstream]]\nname = \"r2\"\naddress = \"127.0.0.1:9001\"\nroutes = [\"/lab/x\"]\n",
        );
        assert_eq!(need(&c).base, BASE + 2 * PER_UPSTREAM + 1);
    }

    #[test]
    fn the_shipped_config_fits_the_shipped_unit() {
        // deploy/labgate.prod.toml: `deploy::prod_config_fits_the_units_open_file_limit`.
        let dir = env!("CARGO_MANIFEST_DIR");
        let unit = std::fs::read_to_string(format!("{dir}/deploy/labgate.service")).unwrap();
        let limit: u64 = unit
            .lines()
            .find_map(|l| l.strip_prefix("LimitNOFILE="))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let text = std::fs::read_to_string(format!("{dir}/config/labgate.toml")).unwrap();
        let need = need(&Config::parse(&text, "labgate.toml").unwrap()).total();
        // The figure docs/operations.md gives.
        assert_eq!(need, 3777);
        let unit_limit = Limit {
            soft: limit,
            hard: limit,
        };
        assert_eq!(plan(need, unit_limit), Plan::Fits);
    }

    #[test]
    fn plan_raises_the_soft_limit_only_up_to_the_need_and_only_under_the_hard_limit() {
        let l = |soft, hard| Limit { soft, hard };
        assert_eq!(plan(1000, l(1024, 4096)), Plan::Fits);
        assert_eq!(plan(1024, l(1024, 1024)), Plan::Fits);
        assert_eq!(plan(2000, l(1024, 4096)), Plan::Raise(2000));
        assert_eq!(plan(4096, l(1024, 4096)), Plan::Raise(4096));
        assert_eq!(plan(2000, l(1024, u64::MAX)), Plan::Raise(2000));
        assert_eq!(plan(5000, l(1024, 4096)), Plan::Short);
        assert_eq!(plan(5000, l(u64::MAX, u64::MAX)), Plan::Fits);
    }

    #[test]
    fn the_refusal_is_one_line_naming_the_need_the_limit_and_the_fixes() {
        let c = config("max_connections = 1000", "");
        let e = Shortfall::Limit {
            budget: need(&c),
            limit: Limit { soft: 64, hard: 64 },
        }
        .to_string();
        assert!(!e.contains('\n'), "{e}");
        for part in [
            "8577 open files",
            "server.max_connections 1000 x 8",
            "soft 64, hard 64",
            "LimitNOFILE=",
            "ulimit -n",
            "lower server.max_connections",
        ] {
            assert!(e.contains(part), "{part:?} missing from {e}");
        }
        let unlimited = Limit {
            soft: u64::MAX,
            hard: u64::MAX,
        };
        assert_eq!(unlimited.to_string(), "soft unlimited, hard unlimited");
    }

    #[test]
    fn the_pool_size_counted_is_the_one_labgate_gives_pingora() {
        let c = config("threads = 4", "");
        let conf = crate::server::server_conf(&c);
        assert_eq!(
            conf.upstream_keepalive_pool_size,
            ServerConf::default().upstream_keepalive_pool_size
        );
        assert_eq!(conf.threads, 4);
    }

    #[test]
    fn only_restart_only_options_and_added_upstreams_change_the_budget() {
        // The tunnel limit is live, and not counted (its tunnels are client connections).
        let old = config("max_connections = 100", "[tunnels]\nmax_per_session = 2\n");
        let live = config(
            "max_connections = 100",
            "[tunnels]\nmax_per_session = 1024\n",
        );
        let d = diff(&old, &live);
        assert!(d.restart.is_empty(), "{d:?}");
        assert_eq!(need(&old), need(&live));
        // An upstream added live costs its probe.
        let added = config(
            "max_connections = 100",
            "[tunnels]\nmax_per_session = 2\n[[upstream]]\nname = \"r2\"\naddress = \"127.0.0.1:9001\"\nroutes = [\"/lab/x\"]\n",
        );
        assert!(diff(&old, &added).restart.is_empty());
        assert_eq!(need(&added).total(), need(&old).total() + PER_UPSTREAM);
        for server in [
            "max_connections = 5000",
            "threads = 16",
            "listen = [\"127.0.0.1:1\", \"127.0.0.1:2\"]",
        ] {
            let new = config(server, "[tunnels]\nmax_per_session = 2\n");
            assert_ne!(need(&old), need(&new), "{server}");
            assert!(!diff(&old, &new).restart.is_empty(), "{server}");
        }
    }

    #[test]
    fn a_reload_within_the_limit_is_not_refused() {
        // The test process's limit covers a small config (the harness runs under the
        // shell's limit; 100 connections need 733).
        let c = config("max_connections = 100\nthreads = 1", "");
        assert!(need(&c).total() <= current().unwrap().hard);
        assert_eq!(reload_refusal(&c), None);
    }

    #[test]
    fn check_reads_this_process_limit() {
        let limit = current().unwrap();
        assert!(limit.soft <= limit.hard);
        let tiny = Budget {
            connections: 0,
            pool: 0,
            base: 1,
        };
        assert_eq!(check(tiny), Ok(limit));
        let huge = Budget {
            connections: u64::MAX,
            pool: 0,
            base: 0,
        };
        if limit.hard != u64::MAX {
            assert!(matches!(check(huge), Err(Shortfall::Limit { .. })));
        }
    }
}

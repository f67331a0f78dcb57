//! The config in force ([`Current`]) and replacing it without a restart (SIGHUP,
//! `labgate admin reload`).
//!
//! A reload is all or nothing: the file is loaded and validated exactly as `labgate
//! check` does (the same messages, file:line:column), compared with the running config
//! (`config::diff`), and refused whole if it is invalid or changes an option that only
//! a restart applies. Otherwise the new config is swapped in with one atomic store:
//! requests that already loaded the old one (one load per request, kept in its context)
//! finish with it; new ones see the new one. The queue, its sessions and seqs, live
//! connections, the per-client counts and the rate limiter's buckets (unless
//! `[rate_limit]` itself changed) are untouched; the queue gets the new idle timeouts and
//! hold limit. Must never leave a half-applied config behind.

use std::ops::Deref;
use std::path::{Path, PathBuf};

use crate::config::{diff, ConfigDiff};
use crate::health::Board;
use crate::metrics::{ReloadResult, UpstreamSeries};

use super::*;

/// The validated config in force, with what is derived from it per upstream. Derefs to
/// the [`Config`], so `shared.config().upstreams` reads as before.
pub struct Current {
    pub config: Config,
    /// Each upstream's metric series, indexed like `config.upstreams`.
    series: Vec<UpstreamSeries>,
    /// Each upstream's reachability (`labgate_upstream_up`), indexed like
    /// `config.upstreams`; a reload keeps what was known by upstream name.
    pub health: Board,
}

impl Current {
    /// `previous`: the config this one replaces (a reload), whose health it inherits.
    pub(super) fn new(config: Config, metrics: &Metrics, previous: Option<&Current>) -> Current {
        let series = config
            .upstreams
            .iter()
            .map(|up| metrics.init_upstream(&up.name))
            .collect();
        let gauges = config.upstreams.iter().map(|u| {
            let up = metrics.upstream_up.with_label_values(&[u.name.as_str()]);
            (u.name.clone(), up)
        });
        let health = match previous {
            Some(p) => Board::after(&p.health, gauges),
            None => Board::new(gauges, Instant::now()),
        };
        Current {
            config,
            series,
            health,
        }
    }

    /// The metric series of upstream `index` (an index into this config's upstreams).
    pub fn series(&self, index: usize) -> Option<&UpstreamSeries> {
        self.series.get(index)
    }
}

impl Deref for Current {
    type Target = Config;

    fn deref(&self) -> &Config {
        &self.config
    }
}

/// What asked for a reload, for the audit line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Signal,
    Admin { uid: u32 },
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Signal => "sighup",
            Trigger::Admin { .. } => "admin",
        }
    }

    fn uid(self) -> Option<u32> {
        match self {
            Trigger::Signal => None,
            Trigger::Admin { uid } => Some(uid),
        }
    }
}

/// A reload that took effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// What changed, one line each (empty: the file says what runs already).
    pub changed: Vec<String>,
    /// The new config's warnings, as `labgate check` prints them.
    pub warnings: Vec<String>,
}

/// Why a reload was refused; the running config stays.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReloadRefused {
    /// The file is invalid: `labgate check`'s messages.
    #[error("{}", .0.join("; "))]
    Invalid(Vec<String>),
    /// Valid, but it changes options that only a restart applies.
    #[error("{}", needs_restart(.0).join("; "))]
    NeedsRestart(Vec<String>),
    /// labgate was started without a config file to read again.
    #[error("labgate was not started from a config file; nothing to reload")]
    NoFile,
}

fn needs_restart(options: &[String]) -> Vec<String> {
    options
        .iter()
        .map(|o| format!("needs a restart: {o}"))
        .collect()
}

impl ReloadRefused {
    /// One line per problem.
    pub fn messages(&self) -> Vec<String> {
        match self {
            ReloadRefused::Invalid(m) => m.clone(),
            ReloadRefused::NeedsRestart(o) => needs_restart(o),
            ReloadRefused::NoFile => vec![self.to_string()],
        }
    }
}

impl Shared {
    /// The config in force: one atomic load. A request loads it once and keeps it.
    pub fn config(&self) -> Arc<Current> {
        self.config.load_full()
    }

    /// The file [`Shared::reload`] reads again; set once at start-up.
    pub fn set_config_path(&self, path: PathBuf) {
        let _ = self.config_path.set(path);
    }

    /// Reads the config file again and applies it (see the module docs); logs and
    /// counts the outcome either way.
    pub fn reload(&self, trigger: Trigger) -> Result<Reloaded, ReloadRefused> {
        let outcome = match self.config_path.get() {
            None => Err(ReloadRefused::NoFile),
            Some(path) => load(path).and_then(|c| self.apply_config(c)),
        };
        match &outcome {
            Ok(r) => {
                self.metrics.count_reload(ReloadResult::Ok);
                for w in &r.warnings {
                    tracing::warn!("{w}");
                }
                tracing::info!(
                    target: AUDIT,
                    event = "config_reloaded",
                    trigger = trigger.as_str(),
                    uid = trigger.uid(),
                    changed = %r.changed.join("; "),
                );
            }
            Err(e) => {
                self.metrics.count_reload(ReloadResult::Refused);
                tracing::error!(
                    target: AUDIT,
                    event = "config_reload_refused",
                    trigger = trigger.as_str(),
                    uid = trigger.uid(),
                    why = %e,
                    "config reload refused; the running config stays"
                );
            }
        }
        outcome
    }

    /// Applies a validated config if nothing in it needs a restart. A shorter idle
    /// timeout or hold limit ends sessions at the next reap.
    pub fn apply_config(&self, mut new: Config) -> Result<Reloaded, ReloadRefused> {
        // One reload at a time: SIGHUP and the admin API may race.
        let _one = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.config();
        let ConfigDiff { changed, restart } = diff(&old.config, &new);
        if !restart.is_empty() {
            return Err(ReloadRefused::NeedsRestart(restart));
        }
        // `[server.tls]` is unchanged (diff): keep the listener's live material, which
        // SIGHUP reloads from the files itself.
        new.listener_tls = old.listener_tls.clone();
        let warnings = new.warnings();
        if (old.rate_limit.burst, old.rate_limit.refill_every)
            != (new.rate_limit.burst, new.rate_limit.refill_every)
        {
            self.limiter
                .store(Arc::new(SessionLimiter::new(&new.rate_limit)));
        }
        let (timeouts, max_hold) = (new.queue.timeouts, new.queue.max_hold);
        let current = Arc::new(Current::new(new, self.metrics, Some(&self.config())));
        {
            let mut core = self.lock();
            core.queue.set_timeouts(timeouts);
            core.queue.set_max_hold(max_hold);
            // The queue's settings and the config change together, under the queue's
            // lock; an operation that loaded the config before keeps what it loaded.
            self.config.store(current);
        }
        Ok(Reloaded { changed, warnings })
    }
}

/// Loads `path` and refuses it with exactly what `labgate check` says.
fn load(path: &Path) -> Result<Config, ReloadRefused> {
    let config = Config::load(path).map_err(|e| ReloadRefused::Invalid(vec![e.to_string()]))?;
    let missing = config.missing_dirs();
    if !missing.is_empty() {
        let file = path.display();
        return Err(ReloadRefused::Invalid(
            missing.iter().map(|m| format!("{file}: {m}")).collect(),
        ));
    }
    // An added upstream raises the open-file budget (its health probe): refused, as
    // `serve` would refuse to start with it, when the limit cannot cover it.
    if let Some(short) = crate::fdbudget::reload_refusal(&config) {
        return Err(ReloadRefused::Invalid(vec![format!(
            "{}: {short}",
            path.display()
        )]));
    }
    Ok(config)
}

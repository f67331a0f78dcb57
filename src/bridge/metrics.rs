//! The bridge's Prometheus metrics: upstream sessions, hooks, tokens and the handoff
//! barrier, registered once in the default registry (the one `/metrics` serves).
//!
//! Owns names, help texts and labels. Must never hold bridge logic, and never a token or
//! an upstream id as a label value.

use std::sync::OnceLock;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts};

pub struct BridgeMetrics {
    pub sessions_opened: IntCounterVec,
    pub sessions_lost: IntCounterVec,
    pub sessions_deleted: IntCounterVec,
    pub delete_failures: IntCounterVec,
    pub open_failures: IntCounterVec,
    pub undeleted: IntGaugeVec,
    pub waiting: IntGaugeVec,
    pub hook_calls: IntCounterVec,
    pub hook_duration: HistogramVec,
    pub handoff_failed: IntGaugeVec,
    pub tokens_minted: IntCounterVec,
    pub tokens_revoked: IntCounterVec,
    pub not_ready: IntCounterVec,
}

/// Hook names, as the `hook` label.
pub const HOOKS: [&str; 4] = ["start", "end", "reset", "health"];
/// Hook results, as the `result` label.
pub const HOOK_RESULTS: [&str; 4] = ["ok", "timeout", "unreachable", "refused"];

/// Hooks run from milliseconds (a notification) to many minutes (a snapshot restore).
const HOOK_BUCKETS: &[f64] = &[
    0.005, 0.025, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0,
];

static METRICS: OnceLock<BridgeMetrics> = OnceLock::new();

pub fn metrics() -> &'static BridgeMetrics {
    METRICS.get_or_init(|| BridgeMetrics::register(prometheus::default_registry()))
}

impl BridgeMetrics {
    fn register(r: &prometheus::Registry) -> BridgeMetrics {
        // Definitions are constants: a failure is a programming error every test catches.
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let m = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            r.register(Box::new(m.clone())).expect("registered once");
            m
        };
        let gauge = |name: &str, help: &str| {
            let m = IntGaugeVec::new(Opts::new(name, help), &["upstream"]).expect("valid metric");
            r.register(Box::new(m.clone())).expect("registered once");
            m
        };
        let hook_duration = HistogramVec::new(
            HistogramOpts::new(
                "labgate_hook_duration_seconds",
                "Duration of handoff hook calls and health checks.",
            )
            .buckets(HOOK_BUCKETS.to_vec()),
            &["upstream", "hook"],
        )
        .expect("valid metric");
        r.register(Box::new(hook_duration.clone()))
            .expect("registered once");
        BridgeMetrics {
            sessions_opened: counter(
                "labgate_upstream_sessions_opened_total",
                "Upstream (neops-remote-lab) sessions opened, by kind: new or reopened after the upstream lost one.",
                &["upstream", "kind"],
            ),
            sessions_lost: counter(
                "labgate_upstream_sessions_lost_total",
                "Upstream sessions the upstream forgot during a turn (restart, its own reaping).",
                &["upstream"],
            ),
            sessions_deleted: counter(
                "labgate_upstream_sessions_deleted_total",
                "Upstream sessions deleted at the end of a turn.",
                &["upstream"],
            ),
            delete_failures: counter(
                "labgate_upstream_session_delete_failures_total",
                "Failed attempts to delete an upstream session (retried with backoff).",
                &["upstream"],
            ),
            open_failures: counter(
                "labgate_upstream_session_open_failures_total",
                "Failed attempts to open an upstream session (retried with backoff).",
                &["upstream"],
            ),
            undeleted: gauge(
                "labgate_upstream_session_undeleted",
                "1 while the upstream session of an ended turn could not be deleted yet.",
            ),
            waiting: gauge(
                "labgate_upstream_session_waiting",
                "1 while the turn's upstream session waits behind a session labgate did not open.",
            ),
            hook_calls: counter(
                "labgate_hook_calls_total",
                "Handoff hook calls and health checks, by hook and result.",
                &["upstream", "hook", "result"],
            ),
            hook_duration,
            handoff_failed: gauge(
                "labgate_handoff_failed",
                "1 while a failed reset or health check holds the lab (draining) until an operator acts.",
            ),
            tokens_minted: counter(
                "labgate_turn_tokens_minted_total",
                "Per-turn tokens minted.",
                &["upstream"],
            ),
            tokens_revoked: counter(
                "labgate_turn_tokens_revoked_total",
                "Per-turn tokens revoked at the end of their turn.",
                &["upstream"],
            ),
            not_ready: counter(
                "labgate_bridge_not_ready_total",
                "Forwarded requests answered 423 because the turn's upstream session was not ready in time.",
                &["upstream"],
            ),
        }
    }

    /// Makes every series of `upstream` visible from the start (alerts need a 0).
    pub fn init(&self, upstream: &str) {
        for kind in ["new", "reopened"] {
            self.sessions_opened.with_label_values(&[upstream, kind]);
        }
        for c in [
            &self.sessions_lost,
            &self.sessions_deleted,
            &self.delete_failures,
            &self.open_failures,
            &self.tokens_minted,
            &self.tokens_revoked,
            &self.not_ready,
        ] {
            c.with_label_values(&[upstream]);
        }
        for g in [&self.undeleted, &self.waiting, &self.handoff_failed] {
            g.with_label_values(&[upstream]).set(0);
        }
        for hook in HOOKS {
            self.hook_duration.with_label_values(&[upstream, hook]);
            for result in HOOK_RESULTS {
                self.hook_calls.with_label_values(&[upstream, hook, result]);
            }
        }
    }
}

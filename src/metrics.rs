//! Every Prometheus metric labgate exports (contract §6), registered once.
//!
//! Owns metric names, help texts, labels and buckets. The metrics live in the
//! process-wide default registry, the one `pingora-prometheus` serves, so there is one
//! registry and one `/metrics` listener. The standard `process_*` series (memory, open
//! and max fds, CPU seconds, start time) come from the prometheus crate's process
//! collector, which its `process` feature registers in that same default registry. Must never hold request or queue logic: callers
//! record facts, this module only counts them.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus::core::Collector;
use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

use crate::forward::UpstreamError;
use crate::gate::Verdict;
use crate::limits::CreateRejection;
use crate::queue::{Change, EndReason};
use crate::tunnel::{Direction, Refused};

pub struct Metrics {
    pub queue_depth: IntGauge,
    pub queue_waiting: IntGauge,
    pub active_hold_seconds: Gauge,
    pub sessions_created: IntCounter,
    pub sessions_ended: IntCounterVec,
    pub create_rejected: IntCounterVec,
    pub gate_decisions: IntCounterVec,
    pub wait_seconds: Histogram,
    pub upstream_requests: IntCounterVec,
    pub upstream_duration: HistogramVec,
    pub upstream_errors: IntCounterVec,
    pub build_info: IntGaugeVec,
    pub connections_cut: IntCounter,
    pub hold_seconds: Histogram,
    pub state_write_seconds: Histogram,
    pub state_checkpoint_seconds: Histogram,
    pub identity_refused: IntCounterVec,
    pub tunnels_open: IntGauge,
    pub tunnels_opened: IntCounter,
    pub tunnels_refused: IntCounterVec,
    pub tunnel_bytes: IntCounterVec,
    pub client_connections_closed: IntCounterVec,
    pub state_write_failures: IntCounter,
    pub state_store_writable: IntGauge,
    /// `labgate_upstream_up`: written by `health::Board` only.
    pub upstream_up: IntGaugeVec,
    pub config_reloads: IntCounterVec,
    pub config_last_reload_success: Gauge,
    /// `gate_decisions`' series, one per [`Verdict`] in `Verdict::ALL` order, looked up
    /// once: `with_label_values` hashes the labels and locks the vector on every call.
    decisions: [IntCounter; Verdict::ALL.len()],
}

/// How a config reload ended: the `result` label of `labgate_config_reloads_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadResult {
    Ok,
    /// Invalid, or a change that needs a restart: the running config stays.
    Refused,
}

impl ReloadResult {
    pub const ALL: [ReloadResult; 2] = [ReloadResult::Ok, ReloadResult::Refused];

    pub fn as_str(self) -> &'static str {
        match self {
            ReloadResult::Ok => "ok",
            ReloadResult::Refused => "refused",
        }
    }
}

/// One upstream's series, looked up once when the gateway starts instead of by label
/// on every forwarded request.
pub struct UpstreamSeries {
    name: String,
    /// `2xx` to `5xx`; a `1xx` (an upgrade's 101) is rare and looked up by label.
    requests: [IntCounter; 4],
    duration: Histogram,
    errors: [IntCounter; UpstreamError::ALL.len()],
}

impl UpstreamSeries {
    /// A forwarded request ended with `status` after `elapsed`.
    pub fn record(&self, status: u16, elapsed: Duration) {
        match status {
            200..=299 => self.requests[0].inc(),
            300..=399 => self.requests[1].inc(),
            400..=499 => self.requests[2].inc(),
            100..=199 => metrics()
                .upstream_requests
                .with_label_values(&[self.name.as_str(), status_class(status)])
                .inc(),
            _ => self.requests[3].inc(),
        }
        self.duration.observe(elapsed.as_secs_f64());
    }

    pub fn count_error(&self, kind: UpstreamError) {
        self.errors[kind as usize].inc();
    }
}

/// Queue waits and holds run from seconds to hours.
const WAIT_BUCKETS: &[f64] = &[
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0, 14400.0,
];
/// A durable write is one fsync: sub-millisecond on SSDs, tens of ms on slow disks.
const WRITE_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];
/// Lab API calls run from milliseconds to minutes (a topology deploy).
const UPSTREAM_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// The metrics, registered in the default registry on first use.
pub fn metrics() -> &'static Metrics {
    METRICS.get_or_init(|| Metrics::register(prometheus::default_registry()))
}

/// Registers one metric and hands it back. Definitions are constants: a failure here is
/// a programming error that every test run catches.
fn reg<M: Collector + Clone + 'static>(r: &Registry, made: prometheus::Result<M>) -> M {
    let m = made.expect("valid metric definition");
    r.register(Box::new(m.clone()))
        .expect("metric registered once");
    m
}

fn histogram_opts(name: &str, help: &str, buckets: &[f64]) -> HistogramOpts {
    HistogramOpts::new(name, help).buckets(buckets.to_vec())
}

impl Metrics {
    fn register(r: &Registry) -> Metrics {
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            reg(r, IntCounterVec::new(Opts::new(name, help), labels))
        };
        let histogram = |name: &str, help: &str, buckets: &[f64]| {
            reg(r, Histogram::with_opts(histogram_opts(name, help, buckets)))
        };
        let queue_depth = reg(
            r,
            IntGauge::new(
                "labgate_queue_depth",
                "Sessions in the queue, ACTIVE included.",
            ),
        );
        let queue_waiting = reg(
            r,
            IntGauge::new("labgate_queue_waiting", "Sessions waiting for their turn."),
        );
        let active_hold_seconds = reg(
            r,
            Gauge::new(
                "labgate_active_hold_seconds",
                "How long the current holder has held the lab; 0 when nobody does.",
            ),
        );
        let sessions_created = reg(
            r,
            IntCounter::new("labgate_sessions_created_total", "Sessions created."),
        );
        let sessions_ended = counter_vec(
            "labgate_sessions_ended_total",
            "Sessions ended, by reason.",
            &["reason"],
        );
        let create_rejected = counter_vec(
            "labgate_session_create_rejected_total",
            "POST /session refused, by reason.",
            &["reason"],
        );
        let gate_decisions = counter_vec(
            "labgate_gate_decisions_total",
            "Gate decisions on /lab requests (invalid includes bad request targets).",
            &["decision"],
        );
        let wait_seconds = histogram(
            "labgate_wait_seconds",
            "Time from session creation to ACTIVE.",
            WAIT_BUCKETS,
        );
        let upstream_requests = counter_vec(
            "labgate_upstream_requests_total",
            "Requests forwarded to an upstream, by upstream and response status class.",
            &["upstream", "status"],
        );
        let upstream_duration = reg(
            r,
            HistogramVec::new(
                histogram_opts(
                    "labgate_upstream_request_duration_seconds",
                    "Duration of forwarded requests, from routing to the end of the response.",
                    UPSTREAM_BUCKETS,
                ),
                &["upstream"],
            ),
        );
        let upstream_errors = counter_vec(
            "labgate_upstream_errors_total",
            "Forwarded requests that failed at the upstream, by kind.",
            &["upstream", "kind"],
        );
        let build_info = reg(
            r,
            IntGaugeVec::new(
                Opts::new(
                    "labgate_build_info",
                    "labgate build; the value is always 1.",
                ),
                &["version"],
            ),
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let connections_cut = reg(
            r,
            IntCounter::new(
                "labgate_connections_cut_total",
                "Forwarded requests and upgraded connections cut because their session ended.",
            ),
        );
        let hold_seconds = histogram(
            "labgate_hold_seconds",
            "How long completed holds lasted (promotion to end).",
            WAIT_BUCKETS,
        );
        let state_write_seconds = histogram(
            "labgate_state_write_seconds",
            "Duration of durable queue store writes (journal appends, one per group of \
             waiting changes).",
            WRITE_BUCKETS,
        );
        let state_checkpoint_seconds = histogram(
            "labgate_state_checkpoint_seconds",
            "Duration of checkpoints: the journal's changes moved into the queue store file.",
            WRITE_BUCKETS,
        );
        let client_connections_closed = counter_vec(
            "labgate_client_connections_closed_total",
            "Client connections refused (total, per_client cap) or closed for idling \
             (keepalive_timeout) or a slow request header (header_timeout).",
            &["reason"],
        );

        let state_write_failures = reg(
            r,
            IntCounter::new(
                "labgate_state_write_failures_total",
                "Durable queue store commits that failed even after reopening the store.",
            ),
        );
        let state_store_writable = reg(
            r,
            IntGauge::new(
                "labgate_state_store_writable",
                "1 when the last durable queue store commit succeeded (always 1 without \
                 state_path), 0 while the store cannot be written.",
            ),
        );
        state_store_writable.set(1);

        let upstream_up = reg(
            r,
            IntGaugeVec::new(
                Opts::new(
                    "labgate_upstream_up",
                    "1 when the upstream's last connect (a forwarded request's, or an idle \
                     probe's every health_interval) succeeded, 0 when it failed; 1 before \
                     the first.",
                ),
                &["upstream"],
            ),
        );
        let config_reloads = counter_vec(
            "labgate_config_reloads_total",
            "Config reloads (SIGHUP or labgate admin reload), by result.",
            &["result"],
        );
        let config_last_reload_success = reg(
            r,
            Gauge::new(
                "labgate_config_last_reload_success_timestamp_seconds",
                "Unix time the config in force was loaded (start-up or the last good reload).",
            ),
        );

        let identity_refused = counter_vec(
            "labgate_identity_refused_total",
            "Requests refused with 401 in identity mode, by reason.",
            &["reason"],
        );
        let tunnels_open = reg(
            r,
            IntGauge::new("labgate_tunnels_open", "Device tunnels open now."),
        );
        let tunnels_opened = reg(
            r,
            IntCounter::new(
                "labgate_tunnels_opened_total",
                "Device tunnels opened (101 answered).",
            ),
        );
        let tunnels_refused = counter_vec(
            "labgate_tunnels_refused_total",
            "Device tunnel requests refused, by reason.",
            &["reason"],
        );
        let tunnel_bytes = counter_vec(
            "labgate_tunnel_bytes_total",
            "Payload bytes carried by device tunnels, by direction.",
            &["direction"],
        );

        // Create every fixed label combination now, so dashboards and alerts see zeros
        // instead of missing series.
        for reason in EndReason::ALL {
            sessions_ended.with_label_values(&[reason.as_str()]);
        }
        for reason in CreateRejection::ALL {
            create_rejected.with_label_values(&[reason.as_str()]);
        }
        let decisions = Verdict::ALL.map(|v| gate_decisions.with_label_values(&[v.as_str()]));
        for reason in crate::identity::Refusal::LABELS {
            identity_refused.with_label_values(&[reason]);
        }
        for reason in Refused::ALL {
            tunnels_refused.with_label_values(&[reason.as_str()]);
        }
        for direction in Direction::ALL {
            tunnel_bytes.with_label_values(&[direction.as_str()]);
        }
        for result in ReloadResult::ALL {
            config_reloads.with_label_values(&[result.as_str()]);
        }
        for reason in ["total", "per_client", "keepalive_timeout", "header_timeout"] {
            client_connections_closed.with_label_values(&[reason]);
        }

        Metrics {
            queue_depth,
            queue_waiting,
            active_hold_seconds,
            sessions_created,
            sessions_ended,
            create_rejected,
            gate_decisions,
            wait_seconds,
            upstream_requests,
            upstream_duration,
            upstream_errors,
            build_info,
            connections_cut,
            identity_refused,
            hold_seconds,
            state_write_seconds,
            state_checkpoint_seconds,
            tunnels_open,
            tunnels_opened,
            tunnels_refused,
            tunnel_bytes,
            client_connections_closed,
            state_write_failures,
            state_store_writable,
            upstream_up,
            config_reloads,
            config_last_reload_success,
            decisions,
        }
    }

    /// A reload ended with `result`; a good one also stamps the success time.
    pub fn count_reload(&self, result: ReloadResult) {
        self.config_reloads
            .with_label_values(&[result.as_str()])
            .inc();
        if result == ReloadResult::Ok {
            self.config_loaded();
        }
    }

    /// The config in force was loaded now.
    pub fn config_loaded(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.config_last_reload_success.set(now);
    }

    pub fn count_tunnel_refused(&self, reason: Refused) {
        self.tunnels_refused
            .with_label_values(&[reason.as_str()])
            .inc();
    }

    pub fn count_tunnel_bytes(&self, direction: Direction, bytes: u64) {
        self.tunnel_bytes
            .with_label_values(&[direction.as_str()])
            .inc_by(bytes);
    }

    /// Creates the series of one configured upstream (so they read zero before its
    /// first request) and hands them back for the request path.
    pub fn init_upstream(&self, name: &str) -> UpstreamSeries {
        self.upstream_up.with_label_values(&[name]);
        UpstreamSeries {
            name: name.to_string(),
            requests: ["2xx", "3xx", "4xx", "5xx"]
                .map(|class| self.upstream_requests.with_label_values(&[name, class])),
            duration: self.upstream_duration.with_label_values(&[name]),
            errors: UpstreamError::ALL.map(|kind| {
                self.upstream_errors
                    .with_label_values(&[name, kind.as_str()])
            }),
        }
    }

    pub fn count_decision(&self, verdict: Verdict) {
        self.decisions[verdict as usize].inc();
    }

    pub fn count_identity_refused(&self, reason: &str) {
        self.identity_refused.with_label_values(&[reason]).inc();
    }

    pub fn count_create_rejected(&self, reason: CreateRejection) {
        self.create_rejected
            .with_label_values(&[reason.as_str()])
            .inc();
    }

    /// Records what a queue operation did.
    pub fn record_change(&self, change: &Change) {
        for ended in &change.ended {
            self.sessions_ended
                .with_label_values(&[ended.reason.as_str()])
                .inc();
            if let Some(held) = ended.held {
                self.hold_seconds.observe(held.as_secs_f64());
            }
        }
        if let Some(p) = &change.promoted {
            self.wait_seconds.observe(p.waited.as_secs_f64());
        }
    }

    /// Records the queue's size and the current holder's hold time.
    pub fn record_queue(&self, depth: usize, waiting: usize, hold: Duration) {
        self.queue_depth.set(depth as i64);
        self.queue_waiting.set(waiting as i64);
        self.active_hold_seconds.set(hold.as_secs_f64());
    }
}

/// `2xx`, `4xx`, ...: the `status` label of upstream requests.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cached series are indexed by discriminant: `ALL` must list them in order.
    #[test]
    fn label_enums_list_every_value_in_declaration_order() {
        for (i, v) in Verdict::ALL.into_iter().enumerate() {
            assert_eq!(v as usize, i, "{v:?}");
        }
        for (i, k) in UpstreamError::ALL.into_iter().enumerate() {
            assert_eq!(k as usize, i, "{k:?}");
        }
    }

    #[test]
    fn registers_every_contract_metric() {
        let m = metrics();
        m.init_upstream("u");
        let names: Vec<String> = prometheus::gather()
            .iter()
            .map(|f| f.name().to_string())
            .collect();
        for want in [
            "labgate_queue_depth",
            "labgate_queue_waiting",
            "labgate_active_hold_seconds",
            "labgate_sessions_created_total",
            "labgate_sessions_ended_total",
            "labgate_session_create_rejected_total",
            "labgate_gate_decisions_total",
            "labgate_wait_seconds",
            "labgate_upstream_request_duration_seconds",
            "labgate_upstream_errors_total",
            "labgate_build_info",
            "labgate_connections_cut_total",
            "labgate_hold_seconds",
            "labgate_state_write_seconds",
            "labgate_state_checkpoint_seconds",
            "labgate_identity_refused_total",
            "labgate_tunnels_open",
            "labgate_tunnels_opened_total",
            "labgate_tunnels_refused_total",
            "labgate_tunnel_bytes_total",
            "labgate_upstream_up",
            // The prometheus crate's process collector, in the same default registry.
            "process_resident_memory_bytes",
            "process_virtual_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_cpu_seconds_total",
            "process_start_time_seconds",
            "labgate_config_reloads_total",
            "labgate_config_last_reload_success_timestamp_seconds",
        ] {
            assert!(
                names.iter().any(|n| n == want),
                "{want} missing from {names:?}"
            );
        }
    }

    #[test]
    fn status_classes() {
        assert_eq!(status_class(101), "1xx");
        assert_eq!(status_class(204), "2xx");
        assert_eq!(status_class(423), "4xx");
        assert_eq!(status_class(504), "5xx");
    }
}

//! The deployment files in `deploy/` are checked by the tools that will consume them:
//! the systemd unit by `systemd-analyze verify` and `security`, the Prometheus config and
//! alert rules by `promtool` (including the rules' unit tests), the production config by
//! `labgate check`, and the Grafana dashboard against the metric names a live labgate
//! exports.
//!
//! Never edits the files it checks: temporary copies go into a temp dir. The tools are
//! required, not optional (`.ci/setup` installs them); a missing one fails the test.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::*;

/// The exposure score `systemd-analyze security --offline=yes` gives the unit with
/// systemd 252; docs/operations.md states it. A change that raises it fails here.
const MAX_EXPOSURE: f64 = 1.1;

/// Metrics the dashboard and alerts may use before labgate exports them: they come with
/// later work (hold histogram, cut-on-end, durable store). `name -> is a histogram`.
const COMING_METRICS: &[(&str, bool)] = &[
    ("labgate_hold_seconds", true),
    ("labgate_connections_cut_total", false),
    ("labgate_state_write_seconds", true),
];

fn deploy_file(rel: &str) -> PathBuf {
    repo_root().join("deploy").join(rel)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"))
}

fn text(out: &Output) -> String {
    format!(
        "exit: {}\n--- stdout ---\n{}--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A copy of the unit whose `ExecStart` runs the binary cargo just built, because
/// `systemd-analyze verify` rejects an `ExecStart` whose binary does not exist.
fn unit_copy(dir: &Path) -> PathBuf {
    let unit = read(&deploy_file("labgate.service"));
    let shipped = "ExecStart=/usr/local/bin/labgate ";
    assert_eq!(
        unit.matches(shipped).count(),
        1,
        "the unit must have exactly one `{shipped}...` line"
    );
    let copy = unit.replace(
        shipped,
        &format!("ExecStart={} ", env!("CARGO_BIN_EXE_labgate")),
    );
    // The file name is the unit name systemd-analyze reports.
    let path = dir.join("labgate.service");
    std::fs::write(&path, copy).expect("write unit copy");
    path
}

#[test]
fn unit_file_passes_systemd_analyze_verify() {
    let tool = require_tool("systemd-analyze");
    let dir = tempfile::tempdir().expect("tempdir");
    let unit = unit_copy(dir.path());
    let out = run(Command::new(tool).arg("verify").arg(&unit));
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{}",
        text(&out)
    );
    // verify prints warnings (unknown directives, bad values) but may still exit 0.
    assert!(
        out.stdout.is_empty() && out.stderr.is_empty(),
        "systemd-analyze verify complained:\n{}",
        text(&out)
    );
}

#[test]
fn unit_file_has_the_documented_exposure_score() {
    let tool = require_tool("systemd-analyze");
    let dir = tempfile::tempdir().expect("tempdir");
    let unit = unit_copy(dir.path());
    let out = run(Command::new(tool)
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&unit));
    assert!(
        out.status.success(),
        "systemd-analyze security failed:\n{}",
        text(&out)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    // "→ Overall exposure level for labgate.service: 1.1 OK 🙂"
    let line = stdout
        .lines()
        .find(|l| l.contains("Overall exposure level for labgate.service:"))
        .unwrap_or_else(|| panic!("no overall exposure line:\n{}", text(&out)));
    let score: f64 = line
        .rsplit_once(':')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the score from {line:?}"));
    println!("systemd exposure score: {score}");
    assert!(
        score <= MAX_EXPOSURE,
        "exposure score {score} is above {MAX_EXPOSURE}:\n{stdout}"
    );
    // The documents state the score; keep them honest.
    let documented = format!("{MAX_EXPOSURE:.1} OK");
    assert!(
        read(&repo_root().join("docs/operations.md")).contains(&format!("**{documented}**")),
        "docs/operations.md must state the exposure score **{documented}**"
    );
    assert!(
        read(&deploy_file("labgate.service")).contains(&format!("# {documented}")),
        "deploy/labgate.service must state the exposure score {documented}"
    );
}

#[test]
fn unit_file_grants_no_capabilities_and_uses_the_shipped_paths() {
    let unit = read(&deploy_file("labgate.service"));
    let lines: BTreeSet<&str> = unit.lines().map(str::trim).collect();
    for want in [
        "ExecStart=/usr/local/bin/labgate serve --config /etc/labgate/labgate.toml --log-format json",
        "StateDirectory=labgate",
        "RuntimeDirectory=labgate",
        "CapabilityBoundingSet=",
        "AmbientCapabilities=",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "SystemCallFilter=@system-service",
        "MemoryDenyWriteExecute=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "UMask=0077",
        "Restart=on-failure",
        "KillSignal=SIGTERM",
    ] {
        assert!(lines.contains(want), "the unit lacks the line {want:?}");
    }
}

#[test]
fn unit_stop_timeout_exceeds_the_production_drain() {
    let unit = read(&deploy_file("labgate.service"));
    let stop = unit
        .lines()
        .find_map(|l| l.trim().strip_prefix("TimeoutStopSec="))
        .and_then(|v| humantime::parse_duration(v).ok())
        .expect("TimeoutStopSec= with a duration");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = prod_config_copy(dir.path());
    let c = labgate::config::Config::parse(&config, "labgate.prod.toml").expect("parses");
    assert!(
        stop > c.server.grace_period + c.server.shutdown_timeout,
        "TimeoutStopSec ({stop:?}) must exceed grace_period + shutdown_timeout \
         ({:?} + {:?}), or systemd kills a clean drain",
        c.server.grace_period,
        c.server.shutdown_timeout
    );
}

#[test]
fn alert_rules_pass_promtool_check() {
    let out = run(Command::new(require_tool("promtool"))
        .args(["check", "rules"])
        .arg(deploy_file("prometheus/labgate.rules.yml")));
    assert!(
        out.status.success(),
        "promtool check rules:\n{}",
        text(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("SUCCESS: 12 rules found"),
        "{}",
        text(&out)
    );
}

#[test]
fn alert_rule_unit_tests_pass() {
    let out = run(Command::new(require_tool("promtool"))
        .args(["test", "rules", "labgate.rules.test.yml"])
        .current_dir(deploy_file("prometheus")));
    assert!(out.status.success(), "promtool test rules:\n{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("SUCCESS"),
        "{}",
        text(&out)
    );
}

/// The alert names in the rules file.
fn alert_names(rules: &str) -> Vec<String> {
    rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(|n| n.trim().to_string())
        .collect()
}

#[test]
fn every_alert_is_annotated_and_has_firing_and_quiet_test_cases() {
    let rules = read(&deploy_file("prometheus/labgate.rules.yml"));
    let alerts = alert_names(&rules);
    assert_eq!(
        alerts,
        [
            "LabgateDown",
            "LabgateQueueBackingUp",
            "LabgateHoldFarLongerThanUsual",
            "LabgateUpstreamErrors",
            "LabgateSessionsReapedStale",
            "LabgateHandoffFailed",
            "LabgateUpstreamSessionUndeleted",
            "LabgateUpstreamUsedAroundLabgate",
            "LabgateStoreUnwritable",
            "LabgateStoreWriteFailures",
            "LabgateUpstreamDown",
            "LabgateFileDescriptorsNearLimit"
        ]
    );
    let count = |needle: &str| {
        rules
            .lines()
            .filter(|l| l.trim().starts_with(needle))
            .count()
    };
    assert_eq!(count("summary:"), alerts.len(), "one summary per alert");
    assert_eq!(
        count("description:"),
        alerts.len(),
        "one description per alert"
    );

    // In the test file each case is `alertname: X` followed by `exp_alerts: []` (must
    // stay quiet) or `exp_alerts:` and a list (must fire).
    let tests = read(&deploy_file("prometheus/labgate.rules.test.yml"));
    let mut firing = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    let mut current: Option<String> = None;
    for line in tests.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("alertname:") {
            current = Some(name.trim().to_string());
        } else if let Some(rest) = line.strip_prefix("exp_alerts:") {
            let name = current.take().expect("exp_alerts after an alertname");
            if rest.trim() == "[]" {
                quiet.insert(name);
            } else {
                firing.insert(name);
            }
        }
    }
    for alert in &alerts {
        assert!(firing.contains(alert), "no firing test case for {alert}");
        assert!(quiet.contains(alert), "no quiet test case for {alert}");
    }
}

#[test]
fn prometheus_config_passes_promtool_check() {
    let out = run(Command::new(require_tool("promtool"))
        .args(["check", "config"])
        .arg(deploy_file("prometheus/prometheus.yml")));
    assert!(
        out.status.success(),
        "promtool check config:\n{}",
        text(&out)
    );
    // The rule file it names is found and checked too.
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("SUCCESS: 1 rule files found"),
        "{}",
        text(&out)
    );
}

/// The production example with its header secret file replaced by a temp file, because
/// `check` reads secrets and /etc/labgate/lab-api-token does not exist here. The example
/// keeps the real path (a file under /etc/labgate is what operators should use; an
/// environment variable leaks into `systemctl show`).
#[test]
fn prod_config_fits_the_units_open_file_limit() {
    let unit = read(&deploy_file("labgate.service"));
    let limit: u64 = unit
        .lines()
        .find_map(|l| l.trim().strip_prefix("LimitNOFILE="))
        .and_then(|v| v.parse().ok())
        .expect("LimitNOFILE= with a number");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = prod_config_copy(dir.path());
    let c = labgate::config::Config::parse(&config, "labgate.prod.toml").expect("parses");
    let need = labgate::fdbudget::need(&c).total();
    assert!(
        need <= limit,
        "needs {need} open files, the unit allows {limit}"
    );
}

fn prod_config_copy(dir: &Path) -> String {
    let text = read(&deploy_file("labgate.prod.toml"));
    let shipped = "file = \"/etc/labgate/lab-api-token\"";
    assert_eq!(
        text.matches(shipped).count(),
        1,
        "the example must read its Authorization header from /etc/labgate/lab-api-token"
    );
    let secret = dir.join("lab-api-token");
    std::fs::write(&secret, "Bearer example-token\n").expect("write secret");
    // Private, as an operator keeps it (`check` warns otherwise).
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600))
        .expect("chmod the secret");
    // `check` refuses directories that do not exist (systemd makes these at start);
    // here they are the temp dir's.
    let under = |name: &str| format!("{:?}", dir.join(name).display().to_string());
    text.replace(
        shipped,
        &format!("file = {:?}", secret.display().to_string()),
    )
    .replace("\"/var/lib/labgate/queue.redb\"", &under("queue.redb"))
    .replace("\"/run/labgate/admin.sock\"", &under("admin.sock"))
}

#[test]
fn production_config_passes_labgate_check() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("labgate.toml");
    std::fs::write(&path, prod_config_copy(dir.path())).expect("write config");
    let out = run(Command::new(env!("CARGO_BIN_EXE_labgate"))
        .arg("check")
        .arg("--config")
        .arg(&path));
    assert!(out.status.success(), "labgate check:\n{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(": ok (2 upstream(s), 2 route(s)"),
        "{}",
        text(&out)
    );
}

#[test]
fn production_config_is_enclosed_and_has_no_demo_lab() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = labgate::config::Config::parse(&prod_config_copy(dir.path()), "labgate.prod.toml")
        .expect("the production example parses");
    assert!(c.demo_lab.is_none(), "the demo lab is not for production");
    let private = |ip: std::net::IpAddr| match ip {
        std::net::IpAddr::V4(v4) => v4.is_private() || v4.is_loopback(),
        std::net::IpAddr::V6(v6) => v6.is_loopback(),
    };
    for addr in c.server.listen.iter().chain([&c.metrics.listen]) {
        assert!(
            private(addr.ip()),
            "{addr} is not a private or loopback address"
        );
    }
    let loopback: ipnet::IpNet = "127.0.0.1/32".parse().expect("net");
    assert_eq!(c.server.trusted_proxies, vec![loopback]);
    let auth = c
        .upstreams
        .iter()
        .flat_map(|u| &u.headers)
        .find(|(name, _)| name == "authorization")
        .expect("an injected Authorization header");
    assert_eq!(auth.1.to_str().ok(), Some("Bearer example-token"));
}

// ------------------------------------------------------------------ metric names

/// Every `labgate_*` identifier in `text`.
fn labgate_names(text: &str) -> BTreeSet<String> {
    names_with_prefix(text, "labgate_")
}

/// The metric names the dashboard and alerts may use: labgate's own and the standard
/// `process_*` series it exports.
fn exported_family_names(text: &str) -> BTreeSet<String> {
    let mut names = labgate_names(text);
    names.extend(names_with_prefix(text, "process_"));
    names
}

/// Every identifier starting with `prefix` in `text`.
fn names_with_prefix(text: &str, prefix: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find(prefix) {
        // Only whole identifiers: `xlabgate_` is not a labgate metric.
        let boundary = rest[..at]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'));
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(tail.len());
        if boundary {
            names.insert(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    names
}

/// Sample names a labgate exports: each `# TYPE` family, with a histogram's series.
fn exported_names(metrics_text: &str) -> BTreeSet<String> {
    let mut families: Vec<(String, bool)> = metrics_text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, kind)| (name.to_string(), kind.trim() == "histogram"))
        .collect();
    families.extend(COMING_METRICS.iter().map(|(n, h)| (n.to_string(), *h)));
    let mut names = BTreeSet::new();
    for (name, histogram) in families {
        if histogram {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        }
        names.insert(name);
    }
    names
}

async fn live_metric_names() -> BTreeSet<String> {
    let upstream = Upstream::start().await;
    // A bridged upstream (token and a reset hook), so the bridge's metrics exist too.
    let bridged = UpstreamCfg::new("lab", upstream.addr).bridge(
        "[token]\nheader = \"X-Lab-Token\"\n[hooks]\nreset = { command = [\"/bin/true\"] }\n",
    );
    let gw = Gateway::start(&Cfg::bare().upstream(bridged)).await;
    let names = exported_names(&gw.metrics_text().await);
    assert!(
        names.contains("labgate_queue_depth") && names.contains("labgate_wait_seconds_bucket"),
        "the scrape lacks labgate's metrics: {names:?}"
    );
    names
}

/// Every string under an `expr`, `query` or `definition` key of the dashboard.
fn dashboard_queries(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr" | "query" | "definition", serde_json::Value::String(s)) => {
                        out.push(s.clone())
                    }
                    _ => dashboard_queries(value, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|i| dashboard_queries(i, out)),
        _ => {}
    }
}

fn dashboard() -> serde_json::Value {
    serde_json::from_str(&read(&deploy_file("grafana/labgate.json")))
        .expect("deploy/grafana/labgate.json is valid JSON")
}

/// The PromQL of every panel target.
fn panel_exprs(dash: &serde_json::Value) -> Vec<String> {
    let panels = dash["panels"].as_array().expect("panels");
    panels
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| {
            t["expr"]
                .as_str()
                .expect("every target has an expr")
                .to_string()
        })
        .collect()
}

#[tokio::test]
async fn dashboard_and_alerts_use_only_metrics_labgate_exports() {
    let known = live_metric_names().await;

    let dash = dashboard();
    let mut queries = Vec::new();
    dashboard_queries(&dash, &mut queries);
    let used: BTreeSet<String> = queries
        .iter()
        .flat_map(|q| exported_family_names(q))
        .collect();
    let unknown: Vec<&String> = used.difference(&known).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard uses unknown metrics {unknown:?}"
    );
    // The panels the dashboard promises.
    for want in [
        "labgate_queue_depth",
        "labgate_queue_waiting",
        "labgate_wait_seconds_bucket",
        "labgate_active_hold_seconds",
        "labgate_hold_seconds_bucket",
        "labgate_gate_decisions_total",
        "labgate_session_create_rejected_total",
        "labgate_upstream_request_duration_seconds_bucket",
        "labgate_upstream_errors_total",
        "labgate_sessions_ended_total",
        "labgate_build_info",
        "labgate_upstream_up",
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_cpu_seconds_total",
        "process_start_time_seconds",
    ] {
        assert!(used.contains(want), "the dashboard has no panel on {want}");
    }

    let rules = read(&deploy_file("prometheus/labgate.rules.yml"));
    let used = exported_family_names(&rules);
    let unknown: Vec<&String> = used.difference(&known).collect();
    assert!(
        unknown.is_empty(),
        "the alert rules use unknown metrics {unknown:?}"
    );
    for want in [
        "labgate_queue_waiting",
        "labgate_upstream_errors_total",
        "labgate_upstream_up",
        "process_open_fds",
        "process_max_fds",
    ] {
        assert!(used.contains(want), "no alert on {want}");
    }
}

#[test]
fn dashboard_takes_its_datasource_as_a_variable() {
    let dash = dashboard();
    let vars = dash["templating"]["list"]
        .as_array()
        .expect("templating.list");
    assert!(
        vars.iter().any(|v| v["type"] == "datasource"
            && v["name"] == "datasource"
            && v["query"] == "prometheus"),
        "no Prometheus datasource variable named `datasource`"
    );
    let panels = dash["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    for p in panels {
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "duplicate panel id {}",
            p["id"]
        );
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(
            p["datasource"]["uid"], "${datasource}",
            "panel {}",
            p["title"]
        );
        for t in p["targets"].as_array().expect("targets") {
            assert_eq!(
                t["datasource"]["uid"], "${datasource}",
                "panel {}",
                p["title"]
            );
        }
    }
}

#[test]
fn dashboard_queries_are_valid_promql() {
    // promtool parses PromQL without a server when it checks rules: wrap every panel
    // query in a recording rule. Grafana's variables become what Grafana would send.
    let exprs = panel_exprs(&dashboard());
    assert!(exprs.len() >= 15, "only {} panel queries", exprs.len());
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        let e = e
            .replace("$instance", ".*")
            .replace("$__rate_interval", "1m");
        assert!(!e.contains('$'), "an unknown Grafana variable in {e}");
        let quoted = serde_json::to_string(&e).expect("json string");
        rules.push_str(&format!(
            "      - record: dashboard:q{i}\n        expr: {quoted}\n"
        ));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("dashboard.rules.yml");
    std::fs::write(&path, rules).expect("write rules");
    let out = run(Command::new(require_tool("promtool"))
        .args(["check", "rules"])
        .arg(&path));
    assert!(
        out.status.success(),
        "a dashboard query is not valid PromQL:\n{}",
        text(&out)
    );
}

#[test]
fn labgate_names_finds_whole_identifiers_only() {
    let names = labgate_names(
        "rate(labgate_wait_seconds_bucket{x=\"y\"}[5m]) + xlabgate_no + labgate:rule + labgate_up",
    );
    let want: BTreeSet<String> = ["labgate_wait_seconds_bucket", "labgate_up"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(names, want);
}

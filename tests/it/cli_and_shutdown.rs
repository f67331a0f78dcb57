//! The CLI (`check`, `--version`, `--help`), graceful shutdown on SIGTERM and SIGINT,
//! and the metrics listener (contract §6).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::*;

fn labgate(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_labgate"))
        .args(args)
        .env_remove("LABGATE_CONFIG")
        .output()
        .expect("run labgate")
}

#[test]
fn check_accepts_the_shipped_config() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/labgate.toml");
    let out = labgate(&["check", "--config", path.to_str().expect("utf-8 path")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The one stderr line of a failed check, which must be `FILE:LINE:COL: message`
/// (optionally after the program name, GNU style).
fn check_error(text: &str) -> (String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("broken.toml");
    std::fs::write(&file, text).expect("write");
    let file = file.display().to_string();
    let out = labgate(&["check", "--config", &file]);
    assert!(!out.status.success(), "a broken config passed the check");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "want one line, got {stderr:?}");
    let line = lines[0].strip_prefix("labgate: ").unwrap_or(lines[0]);
    let rest = line
        .strip_prefix(&format!("{file}:"))
        .unwrap_or_else(|| panic!("line does not start with the file: {line:?}"));
    let (pos, message) = rest.split_once(": ").expect("LINE:COL: message");
    (pos.to_string(), message.to_string())
}

const UPSTREAM: &str =
    "[[upstream]]\nname = \"r1\"\naddress = \"127.0.0.1:9000\"\nroutes = [\"/lab\"]\n";

#[test]
fn check_reports_an_unknown_key_as_one_file_line_col_message() {
    let (pos, msg) = check_error(&format!("[server]\nthreads = 2\nthredas = 3\n{UPSTREAM}"));
    assert_eq!(pos, "3:1");
    assert!(msg.contains("thredas"), "{msg}");
}

#[test]
fn check_reports_a_bad_value_as_one_file_line_col_message() {
    let (pos, msg) = check_error(&format!(
        "{UPSTREAM}\n[queue]\nactive_timeout = \"5 parsecs\"\n"
    ));
    assert!(pos.starts_with("7:"), "{pos}");
    assert!(msg.contains("duration"), "{msg}");
    // Routes must stay under /lab.
    let (pos, msg) = check_error(
        "[[upstream]]\nname = \"r1\"\naddress = \"127.0.0.1:9000\"\nroutes = [\"/admin\"]\n",
    );
    assert!(pos.starts_with("4:"), "{pos}");
    assert!(msg.contains("route"), "{msg}");
}

#[test]
fn check_reports_a_toml_syntax_error_as_one_file_line_col_message() {
    let (pos, msg) = check_error(&format!("[server\nthreads = 2\n{UPSTREAM}"));
    assert!(pos.starts_with("1:"), "{pos}");
    assert!(!msg.is_empty());
}

#[test]
fn check_on_a_missing_file_fails() {
    let out = labgate(&["check", "--config", "/nonexistent/labgate.toml"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/labgate.toml"));
}

#[test]
fn version_and_help_work() {
    let out = labgate(&["--version"]);
    assert!(out.status.success());
    let v = String::from_utf8_lossy(&out.stdout);
    assert!(v.contains(env!("CARGO_PKG_VERSION")), "{v}");
    let out = labgate(&["--help"]);
    assert!(out.status.success());
    let h = String::from_utf8_lossy(&out.stdout);
    for word in ["serve", "check", "demo-lab", "--config"] {
        assert!(h.contains(word), "--help lacks {word}: {h}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_in_flight_request_finish_then_exits_0() {
    let up = Upstream::start().await;
    let mut gw = Gateway::start(&Cfg::new(up.addr).grace_period("10s")).await;
    let (a, _) = create_session(&gw).await;
    let url = gw.url("/lab/slow/2000");
    let slow = tokio::spawn(async move {
        let r = client()
            .get(url)
            .header("X-Session-ID", a)
            .send()
            .await
            .expect("slow request");
        let status = r.status().as_u16();
        (status, r.text().await.unwrap_or_default())
    });
    eventually(
        Duration::from_secs(5),
        "the slow request upstream",
        || async { (up.count() == 1).then_some(()) },
    )
    .await;
    let signalled = Instant::now();
    gw.signal(Signal::SIGTERM);
    let status = gw
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("labgate did not exit within 10 s of SIGTERM");
    let (code, body) = tokio::time::timeout(Duration::from_secs(5), slow)
        .await
        .expect("request finished")
        .expect("join");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"upstream\":true"), "{body}");
    assert!(status.success(), "exit status {status}");
    assert!(
        signalled.elapsed() < Duration::from_secs(8),
        "took {:?} to exit",
        signalled.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_exits_0() {
    let up = Upstream::start().await;
    let mut gw = Gateway::start(&Cfg::new(up.addr)).await;
    let _ = create_session(&gw).await;
    gw.signal(Signal::SIGINT);
    let status = gw
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("labgate did not exit within 10 s of SIGINT");
    assert!(status.success(), "exit status {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sigterm_exits_0_quickly() {
    let up = Upstream::start().await;
    let mut gw = Gateway::start(&Cfg::new(up.addr)).await;
    let t = Instant::now();
    let status = gw.terminate().await.expect("exit after SIGTERM");
    assert!(status.success(), "exit status {status}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

const CONTRACT_METRICS: [(&str, &str); 12] = [
    ("labgate_queue_depth", "gauge"),
    ("labgate_queue_waiting", "gauge"),
    ("labgate_active_hold_seconds", "gauge"),
    ("labgate_sessions_created_total", "counter"),
    ("labgate_sessions_ended_total", "counter"),
    ("labgate_session_create_rejected_total", "counter"),
    ("labgate_gate_decisions_total", "counter"),
    ("labgate_wait_seconds", "histogram"),
    ("labgate_upstream_requests_total", "counter"),
    ("labgate_upstream_request_duration_seconds", "histogram"),
    ("labgate_upstream_errors_total", "counter"),
    ("labgate_build_info", "gauge"),
];

fn missing_metrics(text: &str) -> Vec<&'static str> {
    CONTRACT_METRICS
        .iter()
        .filter(|(name, kind)| !text.contains(&format!("# TYPE {name} {kind}\n")))
        .map(|(name, _)| *name)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_listener_serves_every_contract_metric_from_the_start() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&Cfg::new(up.addr)).await;
    let text = gw.metrics_text().await;
    let missing = missing_metrics(&text);
    assert!(
        missing.is_empty(),
        "not exported before any traffic: {missing:?}"
    );
    let version = format!(
        "labgate_build_info{{version=\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(metric_value(&text, &version), Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_reflect_the_queue_and_the_gate() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&Cfg::new(up.addr)).await;
    assert_eq!(gw.metric("labgate_queue_depth").await, Some(0.0));
    assert_eq!(gw.metric("labgate_active_hold_seconds").await, Some(0.0));
    let (a, _) = create_session(&gw).await;
    let (b, _) = create_session(&gw).await;
    let (_c, _) = create_session(&gw).await;
    let text = gw.metrics_text().await;
    assert_eq!(metric_value(&text, "labgate_queue_depth"), Some(3.0));
    assert_eq!(metric_value(&text, "labgate_queue_waiting"), Some(2.0));
    assert_eq!(
        metric_value(&text, "labgate_sessions_created_total"),
        Some(3.0)
    );
    assert_eq!(lab_get(&gw, "/lab/x", &a).await.0, 200);
    assert_eq!(lab_get(&gw, "/lab/x", &b).await.0, 423);
    assert_eq!(delete_session(&gw, &a).await, 204);
    let text = gw.metrics_text().await;
    let missing = missing_metrics(&text);
    assert!(missing.is_empty(), "not exported: {missing:?}");
    assert_eq!(metric_value(&text, "labgate_queue_depth"), Some(2.0));
    assert_eq!(metric_value(&text, "labgate_queue_waiting"), Some(1.0));
    for (sample, want) in [
        (r#"labgate_sessions_ended_total{reason="deleted"}"#, 1.0),
        (r#"labgate_gate_decisions_total{decision="allowed"}"#, 1.0),
        (r#"labgate_gate_decisions_total{decision="waiting"}"#, 1.0),
        (
            r#"labgate_upstream_requests_total{status="2xx",upstream="lab"}"#,
            1.0,
        ),
        (
            r#"labgate_upstream_request_duration_seconds_count{upstream="lab"}"#,
            1.0,
        ),
    ] {
        assert_eq!(metric_value(&text, sample), Some(want), "{sample}\n{text}");
    }
    // b's wait (and maybe a's zero wait) was observed.
    let waits = metric_value(&text, "labgate_wait_seconds_count").unwrap_or(0.0);
    assert!(waits >= 1.0, "{text}");
}

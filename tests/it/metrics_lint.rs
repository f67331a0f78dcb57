//! labgate's live `/metrics` as Prometheus itself sees it: `promtool check metrics` on a
//! scrape taken after real traffic, and a real Prometheus server (loopback only, temp
//! storage, a port chosen at run time) that scrapes labgate and answers
//! `labgate_queue_depth` through its HTTP API.
//!
//! Never leaves a process behind: the Prometheus server is stopped in `Drop`, like the
//! gateway. Every wait is bounded by a deadline.

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

#[tokio::test]
async fn live_metrics_pass_promtool_check_metrics() {
    let upstream = Upstream::start().await;
    // A second upstream on a port nobody listens on: its requests fail to connect, so
    // the error counters carry a non-zero sample too. It has a per-turn token and an end
    // hook, so the bridge's metrics are in the scrape as well.
    let dead = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let cfg = Cfg::new(upstream.addr).upstream(
        UpstreamCfg::new("dead", dead)
            .routes(&["/lab/dead"])
            .connect_timeout("1s")
            .bridge(
                "[token]\nheader = \"X-Lab-Token\"\n[hooks]\nend = { command = [\"/bin/true\"] }\n",
            ),
    );
    let gw = Gateway::start(&cfg).await;

    let (holder, _) = create_session(&gw).await;
    let (waiter, position) = create_session(&gw).await;
    assert_eq!(position, 1);
    assert_eq!(lab_get(&gw, "/lab/devices", &holder).await.0, 200);
    assert_eq!(lab_get(&gw, "/lab/devices", &waiter).await.0, 423);
    assert_eq!(lab_get(&gw, "/lab/devices", "not-a-session").await.0, 404);
    assert_eq!(lab_get(&gw, "/lab/dead/x", &holder).await.0, 502);
    let missing = raw(
        gw.addr(),
        "GET /lab/devices HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await
    .expect("request without a session header");
    assert_eq!(missing.status, 422);
    assert_eq!(delete_session(&gw, &holder).await, 204);

    let text = gw.metrics_text().await;
    // The scrape reflects the traffic, so the lint below checks real samples.
    for (sample, at_least) in [
        ("labgate_gate_decisions_total{decision=\"allowed\"}", 2.0),
        ("labgate_gate_decisions_total{decision=\"waiting\"}", 1.0),
        ("labgate_gate_decisions_total{decision=\"unknown\"}", 1.0),
        ("labgate_gate_decisions_total{decision=\"missing\"}", 1.0),
        (
            "labgate_upstream_errors_total{upstream=\"dead\",kind=\"connect\"}",
            1.0,
        ),
        (
            "labgate_upstream_requests_total{upstream=\"lab\",status=\"2xx\"}",
            1.0,
        ),
        ("labgate_sessions_ended_total{reason=\"deleted\"}", 1.0),
        ("labgate_turn_tokens_minted_total{upstream=\"dead\"}", 1.0),
        ("labgate_wait_seconds_count", 2.0),
        ("labgate_upstream_up{upstream=\"lab\"}", 1.0),
        ("process_resident_memory_bytes", 1.0),
        ("process_open_fds", 1.0),
    ] {
        let v = metric_value(&text, sample).unwrap_or_else(|| panic!("{sample} missing:\n{text}"));
        assert!(
            v >= at_least,
            "{sample} = {v}, expected at least {at_least}"
        );
    }

    // The dead upstream's failed connect says it is down.
    assert_eq!(
        metric_value(&text, "labgate_upstream_up{upstream=\"dead\"}"),
        Some(0.0),
        "{text}"
    );

    let mut child = Command::new(require_tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn promtool");
    child
        .stdin
        .take()
        .expect("promtool stdin")
        .write_all(text.as_bytes())
        .expect("write the scrape to promtool");
    let out = child.wait_with_output().expect("promtool output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.trim().is_empty() && stderr.trim().is_empty(),
        "promtool check metrics is not clean ({}):\n{stdout}{stderr}\n--- scrape ---\n{text}",
        out.status
    );
}

/// The standard process series (the prometheus crate's process collector), on the same
/// `/metrics` as labgate's own, with values that describe the labgate process.
#[tokio::test]
async fn metrics_carry_the_standard_process_series() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&Cfg::new(upstream.addr)).await;
    let text = gw.metrics_text().await;
    let value =
        |name: &str| metric_value(&text, name).unwrap_or_else(|| panic!("{name} missing:\n{text}"));
    for (name, kind) in [
        ("process_resident_memory_bytes", "gauge"),
        ("process_virtual_memory_bytes", "gauge"),
        ("process_open_fds", "gauge"),
        ("process_max_fds", "gauge"),
        ("process_cpu_seconds_total", "counter"),
        ("process_start_time_seconds", "gauge"),
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} {kind}")),
            "{name} is not a {kind}:\n{text}"
        );
    }
    let (rss_kib, _) = gw.rss_kib();
    let rss = value("process_resident_memory_bytes");
    // The same process: within a factor of two of what /proc says a moment later.
    assert!(
        rss > 0.0 && rss / 1024.0 < 2.0 * rss_kib as f64 && rss / 1024.0 > rss_kib as f64 / 2.0,
        "resident {rss} B vs /proc {rss_kib} KiB"
    );
    assert!(value("process_virtual_memory_bytes") >= rss);
    let open = value("process_open_fds");
    assert!(open >= 3.0 && open < value("process_max_fds"), "{open}");
    assert!(value("process_cpu_seconds_total") >= 0.0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64();
    let started = value("process_start_time_seconds");
    assert!(
        started <= now + 1.0 && started > now - 600.0,
        "started at {started}, now {now}"
    );
}

/// A Prometheus server on loopback with its storage in a temp dir; stopped on drop.
struct Prometheus {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
}

const PROMETHEUS_START: Duration = Duration::from_secs(30);

impl Prometheus {
    /// Starts Prometheus scraping `target` every second; retries with a fresh port if the
    /// chosen one was taken meanwhile.
    async fn start(target: SocketAddr) -> Prometheus {
        let binary = require_tool("prometheus");
        let mut last = String::new();
        for _attempt in 0..3 {
            match Prometheus::try_start(&binary, target).await {
                Ok(p) => return p,
                Err(e) => last = e,
            }
        }
        panic!("prometheus did not start:\n{last}");
    }

    async fn try_start(binary: &std::path::Path, target: SocketAddr) -> Result<Prometheus, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: labgate\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .map_err(|e| e.to_string())?;
        let port = free_port();
        let log =
            std::fs::File::create(dir.path().join("prometheus.log")).map_err(|e| e.to_string())?;
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawn prometheus: {e}"))?;
        let mut p = Prometheus {
            child: Some(child),
            dir,
            port,
        };
        let deadline = Instant::now() + PROMETHEUS_START;
        loop {
            if let Some(Some(status)) = p.child.as_mut().map(|c| c.try_wait().ok().flatten()) {
                p.child = None;
                return Err(format!("prometheus exited with {status}\n{}", p.log()));
            }
            if let Ok(r) = client().get(p.url("/-/ready")).send().await {
                if r.status().is_success() {
                    return Ok(p);
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "prometheus not ready within {PROMETHEUS_START:?}\n{}",
                    p.log()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// The instant vector of `query` (a bare metric name: no URL escaping needed).
    async fn query(&self, query: &str) -> Vec<serde_json::Value> {
        let r = client()
            .get(self.url(&format!("/api/v1/query?query={query}")))
            .send()
            .await
            .expect("prometheus query");
        assert!(r.status().is_success(), "query {query}: {}", r.status());
        let v: serde_json::Value = r.json().await.expect("query json");
        assert_eq!(v["status"], "success", "query {query}: {v}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if std::thread::panicking() {
            eprintln!("--- prometheus log ---\n{}", self.log());
        }
        send_signal(&child, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Polls Prometheus until `labgate_queue_depth` for `instance` reads `want`.
async fn prometheus_reads_depth(prom: &Prometheus, instance: &str, want: f64) {
    let what = format!("Prometheus to read labgate_queue_depth = {want}");
    eventually(Duration::from_secs(30), &what, move || async move {
        let result = prom.query("labgate_queue_depth").await;
        let sample = result
            .iter()
            .find(|s| s["metric"]["instance"] == instance && s["metric"]["job"] == "labgate")?;
        let value: f64 = sample["value"][1].as_str()?.parse().ok()?;
        (value == want).then_some(())
    })
    .await;
}

#[tokio::test]
async fn prometheus_server_scrapes_the_real_queue_depth() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&Cfg::new(upstream.addr)).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(create_session(&gw).await.0);
    }
    let real = gw.metric("labgate_queue_depth").await.expect("queue depth");
    assert_eq!(real, 3.0, "labgate's own queue depth");

    let target = SocketAddr::from(([127, 0, 0, 1], gw.metrics_port));
    let prom = Prometheus::start(target).await;
    let instance = target.to_string();
    prometheus_reads_depth(&prom, &instance, real).await;

    // A change in the queue shows up too: the value is scraped, not a coincidence.
    assert_eq!(delete_session(&gw, &ids[0]).await, 204);
    let real = gw.metric("labgate_queue_depth").await.expect("queue depth");
    assert_eq!(real, 2.0);
    prometheus_reads_depth(&prom, &instance, real).await;

    // Prometheus scraped labgate successfully the whole time.
    let up = prom.query("up").await;
    let up = up
        .iter()
        .find(|s| s["metric"]["instance"] == instance.as_str())
        .expect("an up series for labgate");
    assert_eq!(up["value"][1], "1");
}

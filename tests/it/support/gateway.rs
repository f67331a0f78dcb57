//! The `labgate serve` process under test: starts it on fresh loopback ports with a
//! rendered [`Cfg`], waits (bounded) until it is healthy, reads its JSON log and its
//! metrics, signals it, and stops it in `Drop`. Never leaves a labgate running.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio::net::TcpStream;

use super::{free_port, raw, raw_to, run_bounded, send_signal, Cfg};

/// How long a labgate start may take before the test gives up.
pub const START_TIMEOUT: Duration = Duration::from_secs(15);

pub struct Gateway {
    child: Option<Child>,
    dir: tempfile::TempDir,
    pub port: u16,
    pub metrics_port: u16,
    pub config_path: PathBuf,
    log_path: PathBuf,
    admin_socket: Option<PathBuf>,
}

impl Gateway {
    /// Starts labgate with `cfg`; retries with fresh ports if a port was taken meanwhile.
    pub async fn start(cfg: &Cfg) -> Gateway {
        let mut last = String::new();
        for _attempt in 0..3 {
            match Gateway::try_start(cfg).await {
                Ok(g) => return g,
                Err(e) => last = e,
            }
        }
        panic!("labgate did not start:\n{last}");
    }

    async fn try_start(cfg: &Cfg) -> Result<Gateway, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let port = free_port();
        let mut metrics_port = free_port();
        while metrics_port == port {
            metrics_port = free_port();
        }
        let config_path = dir.path().join("labgate.toml");
        std::fs::write(&config_path, cfg.render(dir.path(), port, metrics_port))
            .map_err(|e| e.to_string())?;
        let log_path = dir.path().join("labgate.log");
        let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
        let mut cmd = match &cfg.nofile {
            // prlimit execs labgate: the child's pid stays labgate's.
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}"))
                    .arg("--")
                    .arg(env!("CARGO_BIN_EXE_labgate"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_labgate")),
        };
        let child = cmd
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .arg("--log-format")
            .arg("json")
            .env("LABGATE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawn labgate: {e}"))?;
        let admin_socket = cfg.admin_socket.as_ref().map(|s| dir.path().join(s));
        let mut g = Gateway {
            child: Some(child),
            dir,
            port,
            metrics_port,
            config_path,
            log_path,
            admin_socket,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(Some(status)) = g.child.as_mut().map(|c| c.try_wait().ok().flatten()) {
                let msg = format!("labgate exited at start-up with {status}\n{}", g.log_tail());
                g.child = None;
                return Err(msg);
            }
            let metrics_up = TcpStream::connect(("127.0.0.1", g.metrics_port))
                .await
                .is_ok();
            if metrics_up && cfg.https {
                // HTTPS: the raw client cannot speak it; the port listening will do.
                if TcpStream::connect(g.addr()).await.is_ok() {
                    return Ok(g);
                }
            } else if metrics_up {
                if let Ok(r) = raw(g.addr(), "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await {
                    // 401: identity mode refuses a health check without an identity.
                    if r.status == 204 || r.status == 401 {
                        return Ok(g);
                    }
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "labgate not healthy within {START_TIMEOUT:?}\n{}",
                    g.log_tail()
                ));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url())
    }
    pub fn metrics_url(&self) -> String {
        format!("http://127.0.0.1:{}/metrics", self.metrics_port)
    }
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    /// (VmRSS, VmHWM) in KiB.
    pub fn rss_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/PID/status");
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(40);
        format!(
            "--- labgate log (last {} lines) ---\n{}",
            lines.len() - from,
            lines[from..].join("\n")
        )
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Every JSON line of the log (the harness runs labgate with `--log-format json`).
    pub fn log_json(&self) -> Vec<serde_json::Value> {
        self.log()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(serde_json::Value::is_object)
            .collect()
    }

    /// The log lines of one tracing target, e.g. `labgate::access`.
    pub fn log_target(&self, target: &str) -> Vec<serde_json::Value> {
        self.log_json()
            .into_iter()
            .filter(|v| v["target"] == target)
            .collect()
    }

    /// The audit events (target `labgate::audit`) named `event`.
    pub fn audit_events(&self, event: &str) -> Vec<serde_json::Value> {
        self.log_target("labgate::audit")
            .into_iter()
            .filter(|v| v["event"] == event)
            .collect()
    }

    /// The admin socket of a gateway started with [`Cfg::admin_socket`].
    pub fn admin_socket(&self) -> &Path {
        self.admin_socket
            .as_deref()
            .expect("the gateway was started without [admin] socket")
    }

    /// Runs `labgate admin --socket <this gateway's socket> ARGS` (bounded in time).
    pub fn admin(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_labgate"));
        cmd.arg("admin").arg("--socket").arg(self.admin_socket());
        cmd.args(args).env_remove("LABGATE_ADMIN_SOCKET");
        run_bounded(&mut cmd, Duration::from_secs(20))
    }

    /// Sends a signal to the process.
    pub fn signal(&self, sig: Signal) {
        if let Some(child) = &self.child {
            send_signal(child, sig);
        }
    }

    /// Waits (bounded) for the process to exit; `None` if it is still running.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, then waits up to 10 s for the exit status.
    pub async fn terminate(&mut self) -> Option<ExitStatus> {
        self.signal(Signal::SIGTERM);
        self.wait_exit(Duration::from_secs(10)).await
    }

    /// SIGKILL (a crash: no shutdown code runs), then waits up to 10 s for the exit.
    pub async fn kill9(&mut self) -> Option<ExitStatus> {
        self.signal(Signal::SIGKILL);
        self.wait_exit(Duration::from_secs(10)).await
    }

    /// Runs `labgate serve` with `cfg`, expecting it to fail at start-up: waits up to
    /// `timeout` for it to exit by itself and returns its status and its stderr. Panics
    /// (after killing it) if it is still running then.
    pub async fn start_expecting_exit(cfg: &Cfg, timeout: Duration) -> (ExitStatus, String) {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("labgate.toml");
        std::fs::write(
            &config_path,
            cfg.render(dir.path(), free_port(), free_port()),
        )
        .expect("write config");
        let stderr_path = dir.path().join("stderr");
        let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_labgate"))
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .env("LABGATE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn labgate");
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Ok(Some(status)) = child.try_wait() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "labgate kept running for {timeout:?}; stderr:\n{}",
                    std::fs::read_to_string(&stderr_path).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        (
            status,
            std::fs::read_to_string(&stderr_path).unwrap_or_default(),
        )
    }

    /// GET the metrics page.
    pub async fn metrics_text(&self) -> String {
        let r = raw_to(
            SocketAddr::from(([127, 0, 0, 1], self.metrics_port)),
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await
        .expect("metrics request");
        assert_eq!(r.status, 200, "metrics status");
        r.text()
    }

    /// The value of one sample, e.g. `labgate_queue_depth` or
    /// `labgate_session_create_rejected_total{reason="queue_full"}`.
    pub async fn metric(&self, sample: &str) -> Option<f64> {
        metric_value(&self.metrics_text().await, sample)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail());
        }
        send_signal(&child, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Splits `name{a="1",b="2"}` into the name and its sorted label pairs.
fn sample_key(sample: &str) -> (String, Vec<String>) {
    match sample.split_once('{') {
        Some((name, rest)) => {
            let inner = rest.trim_end_matches('}');
            let mut labels: Vec<String> = inner
                .split("\",")
                .filter(|l| !l.is_empty())
                .map(|l| l.trim_end_matches('"').to_string())
                .collect();
            labels.sort();
            (name.to_string(), labels)
        }
        None => (sample.to_string(), Vec::new()),
    }
}

/// Finds `sample` (name plus label set, in any order) in Prometheus text.
pub fn metric_value(text: &str, sample: &str) -> Option<f64> {
    let want = sample_key(sample);
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (sample_key(name) == want)
            .then(|| value.parse().ok())
            .flatten()
    })
}

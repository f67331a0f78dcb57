//! The real neops-remote-lab 1.4.0 server (`python -m neops_remote_lab`, uvicorn) as a
//! test upstream, started from the compat venv on a loopback port chosen at run time,
//! with a stand-in `netlab` first on its `PATH` that records every call (`up`, `down`,
//! `inspect`) and answers what the server asks (two nodes, `r1` and `r2`).
//!
//! Each server gets its own directory and `TMPDIR`: the server keeps its single-instance
//! lock and netlab's lock there, so servers of parallel tests never meet. Stopped
//! (`SIGKILL`) in `Drop`; `restart` keeps the port.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, send_signal, Signal};

/// The stand-in for netlab. Only what neops-remote-lab 1.4.0 runs: `version` at start,
/// `up <topology>`, `inspect` (node list, then each node), `down ... --cleanup`.
const FAKE_NETLAB: &str = r#"#!/bin/sh
printf '%s\n' "$*" >> "$NETLAB_LOG"
case "$1" in
  version) echo "netlab version 1.9.0 (labgate test stand-in)" ;;
  inspect)
    case "$*" in
      *"list(nodes.keys())"*) echo "['r1', 'r2']" ;;
      *"--node r1"*) printf 'box: frr\nmgmt:\n  ipv4: 192.0.2.1\n' ;;
      *"--node r2"*) printf 'box: frr\nmgmt:\n  ipv4: 192.0.2.2\n' ;;
    esac ;;
esac
exit 0
"#;

/// How long the server may take to answer `/healthz` after it is started.
const START_TIMEOUT: Duration = Duration::from_secs(30);

pub struct NeopsServer {
    child: Option<Child>,
    dir: tempfile::TempDir,
    python: PathBuf,
    pub port: u16,
}

impl NeopsServer {
    /// Starts the server with the venv's `python`.
    pub async fn start(python: PathBuf) -> NeopsServer {
        let dir = tempfile::tempdir().expect("neops server dir");
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).expect("bin dir");
        std::fs::create_dir_all(dir.path().join("tmp")).expect("tmp dir");
        let netlab = bin.join("netlab");
        std::fs::write(&netlab, FAKE_NETLAB).expect("write fake netlab");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&netlab, std::fs::Permissions::from_mode(0o755))
            .expect("chmod fake netlab");
        let mut server = NeopsServer {
            child: None,
            dir,
            python,
            port: free_port(),
        };
        server.spawn().await;
        server
    }

    async fn spawn(&mut self) {
        let d = self.dir.path();
        let path = format!(
            "{}:{}",
            d.join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("server.log"))
            .expect("server log");
        let child = Command::new(&self.python)
            .args(["-m", "neops_remote_lab", "--host", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .current_dir(d)
            .env("PATH", path)
            .env("TMPDIR", d.join("tmp"))
            .env("NETLAB_LOG", d.join("netlab.log"))
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("PYTHONUNBUFFERED", "1")
            .env_remove("PYTHONPATH")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("start neops-remote-lab");
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        let client = reqwest::Client::new();
        loop {
            if let Some(Some(status)) = self.child.as_mut().map(|c| c.try_wait().ok().flatten()) {
                panic!(
                    "neops-remote-lab exited at start-up with {status}\n{}",
                    self.log_tail()
                );
            }
            let up = client
                .get(format!("http://{}/healthz", self.addr()))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|r| r.status() == 204);
            if up {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "neops-remote-lab not healthy within {START_TIMEOUT:?}\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills the server (`SIGKILL`: it forgets every session) and starts a new one on
    /// the same port.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            send_signal(&child, Signal::SIGKILL);
            let _ = child.wait();
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr())
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Every netlab call so far, one line each (`up topo.yml`, `down --cleanup`, ...).
    pub fn netlab_calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("netlab.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// The `up` and `down --cleanup` calls in order (the start-up clean-ups of the
    /// default instance left out).
    pub fn ups_and_downs(&self) -> Vec<String> {
        self.netlab_calls()
            .into_iter()
            .filter(|c| c.starts_with("up ") || c == "down --cleanup")
            .collect()
    }

    /// The server's own `GET /active-session`: `Some(json)` while any session is ACTIVE.
    pub async fn active_session(&self) -> Option<serde_json::Value> {
        let r = reqwest::Client::new()
            .get(self.url("/active-session"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .expect("GET /active-session on the neops server");
        if r.status() == 404 {
            return None;
        }
        assert_eq!(r.status(), 200, "neops /active-session");
        Some(r.json().await.expect("active-session json"))
    }

    /// The id of the upstream's ACTIVE session, if any.
    pub async fn active_id(&self) -> Option<String> {
        self.active_session()
            .await
            .and_then(|v| v["session_id"].as_str().map(str::to_string))
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for NeopsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

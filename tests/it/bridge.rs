//! labgate in front of an unmodified neops-remote-lab server (the bridge), per-turn
//! tokens and handoff hooks (contract §8, issue 12), against the real things: the
//! neops-remote-lab 1.4.0 server from PyPI (uvicorn, loopback) with a recording `netlab`
//! stand-in, and its real `RemoteLabClient` driven by `tests/compat/bridge_client.py`.
//! Hooks and tokens are checked with in-process recording servers and shell commands.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};

use crate::support::*;

/// Bounds every wait on something labgate or the server does by itself.
const WITHIN: Duration = Duration::from_secs(20);

fn compat_dir() -> PathBuf {
    repo_root().join("tests/compat")
}

async fn venv() -> PathBuf {
    tokio::task::spawn_blocking(crate::neops_compat::venv_python)
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// A labgate config with one upstream `netlab` in front of `addr`, with `bridge` (TOML
/// of the upstream's bridge tables) and short timers.
fn bridged(addr: SocketAddr, bridge: &str) -> Cfg {
    Cfg::bare()
        .upstream(
            UpstreamCfg::new("netlab", addr)
                .read_timeout("60s")
                .bridge(bridge),
        )
        .reap_interval("200ms")
}

const NEOPS: &str = "[neops]\nkeepalive = \"1s\"\npoll = \"200ms\"\nretry_max = \"1s\"\nready_wait = \"10s\"\nreport_waiting_after = \"1s\"\n";

/// Runs `bridge_client.py SCENARIO` against `gw`; returns its RESULT object.
async fn client_turn(gw: &Gateway, python: PathBuf, hold_secs: u32) -> serde_json::Value {
    let base = gw.base_url();
    let out = tokio::task::spawn_blocking(move || {
        run_bounded(
            Command::new(python)
                .args(["bridge_client.py", "turn"])
                .current_dir(compat_dir())
                .env("REMOTE_LAB_URL", base)
                .env("HOLD_SECS", hold_secs.to_string())
                .env("PYTHONDONTWRITEBYTECODE", "1")
                .env("NO_PROXY", "127.0.0.1,localhost")
                .env_remove("HTTP_PROXY")
                .env_remove("http_proxy"),
            Duration::from_secs(120),
        )
    })
    .await
    .expect("client runner");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "bridge_client.py turn failed\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or_else(|| panic!("no RESULT line:\n{stdout}"));
    serde_json::from_str(line).expect("RESULT json")
}

/// `POST /lab` with the topology, as the neops client sends it (multipart).
async fn acquire(gw: &Gateway, id: &str) -> (u16, String) {
    let topology =
        std::fs::read(compat_dir().join("fixture_suite/topology.yml")).expect("topology");
    let boundary = "labgate-test-boundary";
    let mut body = Vec::new();
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"reuse\"\r\n\r\ntrue\r\n\
             --{boundary}\r\nContent-Disposition: form-data; name=\"topology\"; filename=\"topology.yml\"\r\n\
             Content-Type: application/x-yaml\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(&topology);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let r = client()
        .post(gw.url("/lab"))
        .header("X-Session-ID", id)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(body)
        .send()
        .await
        .expect("POST /lab");
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

async fn upstream_metric(gw: &Gateway, name: &str, labels: &str) -> f64 {
    gw.metric(&format!("{name}{{{labels}}}"))
        .await
        .unwrap_or_else(|| panic!("no metric {name}{{{labels}}}"))
}

#[tokio::test]
async fn real_client_turn_runs_netlab_up_and_down_through_labgate() {
    let python = venv().await;
    let neops = NeopsServer::start(python.clone()).await;
    let gw = Gateway::start(&bridged(neops.addr(), NEOPS)).await;
    let result = client_turn(&gw, python, 0).await;
    assert_eq!(
        result["devices"],
        serde_json::json!(["r1", "r2"]),
        "{result}"
    );
    assert_eq!(
        result["listed"],
        serde_json::json!(["r1", "r2"]),
        "{result}"
    );
    assert_eq!(
        result["mgmt"],
        serde_json::json!(["192.0.2.1", "192.0.2.2"])
    );
    // The upstream's session id never reaches the client.
    assert!(
        result["listed_headers"].get("x-session-id").is_none(),
        "{result}"
    );
    // Closing the labgate session deleted the upstream one: netlab down ran.
    eventually(WITHIN, "netlab down after close", || async {
        (neops.ups_and_downs() == ["up topology.yml", "down --cleanup"]).then_some(())
    })
    .await;
    assert_eq!(neops.active_session().await, None);
    // The upstream saw its own id, never the client's labgate id.
    let labgate_id = result["session_id"].as_str().expect("session id");
    let opened = gw.audit_events("upstream_session_opened");
    assert_eq!(opened.len(), 1, "{opened:?}");
    let short = opened[0]["upstream_session"].as_str().expect("short id");
    assert_eq!(short.len(), 8);
    assert!(!labgate_id.starts_with(short));
    assert!(
        !gw.log().contains(labgate_id),
        "a full labgate id in the log"
    );
    assert_eq!(
        upstream_metric(
            &gw,
            "labgate_upstream_sessions_opened_total",
            "kind=\"new\",upstream=\"netlab\""
        )
        .await,
        1.0
    );
    assert_eq!(
        upstream_metric(
            &gw,
            "labgate_upstream_sessions_deleted_total",
            "upstream=\"netlab\""
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn two_real_clients_are_serialized_with_one_upstream_session_each() {
    let python = venv().await;
    let neops = NeopsServer::start(python.clone()).await;
    let gw = Gateway::start(&bridged(neops.addr(), NEOPS)).await;
    let (a, b) = tokio::join!(
        client_turn(&gw, python.clone(), 2),
        client_turn(&gw, python, 2)
    );
    // (became ACTIVE, released the lab) as each client saw it.
    let span = |r: &serde_json::Value| {
        (
            r["active_at"].as_f64().unwrap(),
            r["released_at"].as_f64().unwrap(),
        )
    };
    let (first, second) = if span(&a).0 < span(&b).0 {
        (span(&a), span(&b))
    } else {
        (span(&b), span(&a))
    };
    // The second client got the lab only after the first had released it (and closed:
    // its close is what promoted the second).
    assert!(first.1 <= second.0, "the turns overlap: {a} {b}");
    assert_ne!(a["session_id"], b["session_id"]);
    eventually(WITHIN, "both labs torn down", || async {
        (neops.ups_and_downs().len() == 4).then_some(())
    })
    .await;
    // Never two labs at once: each up is followed by its down.
    assert_eq!(
        neops.ups_and_downs(),
        [
            "up topology.yml",
            "down --cleanup",
            "up topology.yml",
            "down --cleanup"
        ]
    );
    assert_eq!(
        upstream_metric(
            &gw,
            "labgate_upstream_sessions_opened_total",
            "kind=\"new\",upstream=\"netlab\""
        )
        .await,
        2.0
    );
    assert_eq!(neops.active_session().await, None);
}

#[tokio::test]
async fn a_client_killed_mid_turn_is_reaped_and_its_lab_torn_down() {
    let python = venv().await;
    let neops = NeopsServer::start(python.clone()).await;
    let cfg = bridged(neops.addr(), NEOPS).timeouts("3s", "600s");
    let gw = Gateway::start(&cfg).await;
    let mut child = Command::new(python)
        .args(["bridge_client.py", "hold"])
        .current_dir(compat_dir())
        .env("REMOTE_LAB_URL", gw.base_url())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start bridge_client.py hold");
    let stdout = child.stdout.take().expect("stdout");
    let held = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout)
            .lines()
            .take(50)
            .map_while(Result::ok)
            .find(|l| l.starts_with("HELD "))
    });
    let held = tokio::time::timeout(Duration::from_secs(60), held).await;
    send_signal(&child, Signal::SIGKILL);
    let _ = child.wait();
    assert!(
        matches!(held, Ok(Ok(Some(_)))),
        "the client never held the lab"
    );
    let killed = Instant::now();
    assert_eq!(neops.ups_and_downs(), ["up topology.yml"]);
    eventually(WITHIN, "netlab down after the reap", || async {
        neops
            .ups_and_downs()
            .contains(&"down --cleanup".to_string())
            .then_some(())
    })
    .await;
    let took = killed.elapsed();
    println!("netlab down {took:?} after the client was killed (active_timeout 3 s)");
    // active_timeout 3 s, reaped within a reap interval, deleted at once.
    assert!(
        took < Duration::from_secs(3 + 5),
        "netlab down {took:?} after the kill"
    );
    assert_eq!(neops.active_session().await, None);
    let ended = gw.audit_events("session_ended");
    assert_eq!(ended[0]["reason"], "stale");
}

#[tokio::test]
async fn a_restarted_upstream_gets_a_new_session_for_the_same_turn() {
    let python = venv().await;
    let mut neops = NeopsServer::start(python).await;
    let gw = Gateway::start(&bridged(neops.addr(), NEOPS)).await;
    let (id, _) = create_session(&gw).await;
    let (status, body) = acquire(&gw, &id).await;
    assert_eq!(status, 200, "{body}");
    let first = neops.active_id().await.expect("an upstream session");
    neops.restart().await;
    // The restarted server knows no session: labgate notices and opens a new one.
    let second = eventually(WITHIN, "a new upstream session", || async {
        neops.active_id().await.filter(|s| *s != first)
    })
    .await;
    assert_eq!(gw.audit_events("upstream_session_lost").len(), 1);
    assert_eq!(
        upstream_metric(
            &gw,
            "labgate_upstream_sessions_opened_total",
            "kind=\"reopened\",upstream=\"netlab\""
        )
        .await,
        1.0
    );
    // Same labgate turn: the client uploads its topology again and carries on.
    // Until labgate's lane has switched to the new upstream session, a request may still
    // carry the old id (404 from the server) or wait (423).
    let (status, body) = eventually(WITHIN, "acquire after the restart", || async {
        let r = acquire(&gw, &id).await;
        (r.0 != 423 && r.0 != 404).then_some(r)
    })
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(neops.active_id().await.as_deref(), Some(second.as_str()));
    assert_eq!(delete_session(&gw, &id).await, 204);
    // The server forgets the session first, then runs netlab down: wait for both.
    eventually(WITHIN, "the lab torn down", || async {
        (neops.ups_and_downs() == ["up topology.yml", "up topology.yml", "down --cleanup"])
            .then_some(())
    })
    .await;
    assert_eq!(neops.active_session().await, None);
}

#[tokio::test]
async fn a_labgate_killed_mid_turn_leaks_no_upstream_session() {
    let python = venv().await;
    let neops = NeopsServer::start(python).await;
    let store = tempfile::tempdir().expect("store dir");
    let cfg = bridged(neops.addr(), NEOPS).state_path(&store.path().join("queue.redb"));
    let mut gw = Gateway::start(&cfg).await;
    let (id, _) = create_session(&gw).await;
    assert_eq!(acquire(&gw, &id).await.0, 200);
    let upstream = neops.active_id().await.expect("an upstream session");
    assert!(gw.kill9().await.is_some());
    let gw = Gateway::start(&cfg).await;
    // The restored holder keeps its upstream session: no second one, no leak.
    eventually(WITHIN, "the upstream session re-established", || async {
        (!gw.audit_events("bridge_ready").is_empty()).then_some(())
    })
    .await;
    assert_eq!(gw.audit_events("upstream_session_restored").len(), 1);
    assert_eq!(neops.active_id().await, Some(upstream));
    let (status, _) = lab_get(&gw, "/lab/devices", &id).await;
    assert_eq!(status, 200, "the lab survived labgate's restart");
    assert_eq!(delete_session(&gw, &id).await, 204);
    // The server forgets the session first, then runs netlab down: wait for both.
    eventually(WITHIN, "the lab torn down", || async {
        (neops.ups_and_downs() == ["up topology.yml", "down --cleanup"]).then_some(())
    })
    .await;
    assert_eq!(neops.active_session().await, None);
}

/// Hooks are shell commands; `dir` holds their files.
fn hook_cfg(up: SocketAddr, hooks: &str) -> Cfg {
    bridged(up, &format!("[hooks]\n{hooks}\n"))
}

#[tokio::test]
async fn a_two_second_reset_hook_delays_the_next_holder() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&hook_cfg(
        up.addr,
        r#"reset = { command = ["/bin/sh", "-c", "sleep 2"], timeout = "20s" }"#,
    ))
    .await;
    let (a, _) = create_session(&gw).await;
    let (b, position) = create_session(&gw).await;
    assert_eq!(position, 1);
    let ended = Instant::now();
    assert_eq!(delete_session(&gw, &a).await, 204);
    // While the lab resets nobody holds it, the page says so, and b still waits.
    let status = client()
        .get(gw.url("/status"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(status.contains("resetting the lab"), "{status}");
    let (code, body) = get_session(&gw, &b).await;
    assert_eq!(code, 200);
    assert!(body.contains("\"waiting\""), "{body}");
    let r = client()
        .get(gw.url(&format!("/session/{b}?wait=20")))
        .send()
        .await
        .unwrap();
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["status"], "active");
    let delay = ended.elapsed();
    println!("the next holder was promoted {delay:?} after the holder left (reset hook: sleep 2)");
    assert!(
        delay >= Duration::from_millis(1900),
        "promoted after {delay:?}"
    );
    assert!(delay < Duration::from_secs(10), "promoted after {delay:?}");
    let hooks = gw.audit_events("hook");
    assert!(
        hooks
            .iter()
            .any(|h| h["hook"] == "reset" && h["result"] == "ok"),
        "{hooks:?}"
    );
}

#[tokio::test]
async fn a_failing_reset_hook_leaves_the_lab_draining_with_an_alert() {
    let up = Upstream::start().await;
    let flag = tempfile::tempdir().expect("flag dir");
    let fixed = flag.path().join("fixed");
    let cfg = hook_cfg(
        up.addr,
        &format!(
            r#"reset = {{ command = ["/usr/bin/test", "-e", {:?}], timeout = "5s" }}"#,
            fixed.display().to_string()
        ),
    )
    .admin_socket("admin.sock");
    let gw = Gateway::start(&cfg).await;
    let (a, _) = create_session(&gw).await;
    let (b, _) = create_session(&gw).await;
    assert_eq!(delete_session(&gw, &a).await, 204);
    eventually(WITHIN, "the handoff failed", || async {
        (gw.metric("labgate_handoff_failed{upstream=\"netlab\"}")
            .await
            == Some(1.0))
        .then_some(())
    })
    .await;
    // Held: b is not promoted, and new sessions are refused.
    let (_, body) = get_session(&gw, &b).await;
    assert!(body.contains("\"waiting\""), "{body}");
    let r = client().post(gw.url("/session")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert_eq!(
        r.text().await.unwrap(),
        concat!(r#"{"detail":"Lab is draining"}"#, "\n")
    );
    assert_eq!(gw.audit_events("handoff_failed").len(), 1);
    // The operator fixes the lab and retries: b gets it.
    std::fs::write(&fixed, b"").unwrap();
    let out = gw.admin(&["retry-handoff"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = client()
        .get(gw.url(&format!("/session/{b}?wait=20")))
        .send()
        .await
        .unwrap();
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["status"], "active");
    assert_eq!(
        gw.metric("labgate_handoff_failed{upstream=\"netlab\"}")
            .await,
        Some(0.0)
    );
}

// ------------------------------------------------------------------ tokens

/// A lab manager that learns each turn's token from the start hook, forgets it at the
/// end hook, and refuses every `/lab` request without the current one (`403`).
struct TokenLab {
    addr: SocketAddr,
    current: Arc<Mutex<Option<String>>>,
    seen: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl TokenLab {
    async fn start() -> TokenLab {
        let current: Arc<Mutex<Option<String>>> = Arc::default();
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let state = (current.clone(), seen.clone());
        let log: Arc<Mutex<Vec<()>>> = Arc::default();
        let (addr, task) = serve_recording(log, move |req: Request<Incoming>, _| {
            let (current, seen) = state.clone();
            async move {
                use http_body_util::BodyExt;
                let path = req.uri().path().to_string();
                let token = req
                    .headers()
                    .get("x-lab-token")
                    .map(|v| v.to_str().unwrap_or_default().to_string());
                let body = req
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let status = match path.as_str() {
                    "/hooks/start" => {
                        let v: serde_json::Value =
                            serde_json::from_slice(&body).unwrap_or_default();
                        let t = v["token"].as_str().unwrap_or_default().to_string();
                        seen.lock().unwrap().push(t.clone());
                        *current.lock().unwrap() = Some(t);
                        204
                    }
                    "/hooks/end" => {
                        *current.lock().unwrap() = None;
                        204
                    }
                    _ if token.is_some() && token == *current.lock().unwrap() => 200,
                    _ => 403,
                };
                Response::builder()
                    .status(status)
                    .body(Full::new(Bytes::new()))
                    .unwrap()
            }
        })
        .await;
        TokenLab {
            addr,
            current,
            seen,
            task,
        }
    }

    async fn direct(&self, token: &str) -> u16 {
        client()
            .get(format!("http://{}/lab/thing", self.addr))
            .header("x-lab-token", token)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }
}

impl Drop for TokenLab {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn tokens_rotate_per_turn_and_a_revoked_token_is_refused() {
    let lab = TokenLab::start().await;
    let bridge = format!(
        "[token]\nheader = \"X-Lab-Token\"\n[hooks]\nstart = {{ url = \"http://{0}/hooks/start\" }}\nend = {{ url = \"http://{0}/hooks/end\" }}\n",
        lab.addr
    );
    let gw = Gateway::start(&bridged(lab.addr, &bridge)).await;
    let through = |id: String, forged: Option<&'static str>| {
        let url = gw.url("/lab/thing");
        async move {
            let mut r = client().get(url).header("X-Session-ID", id);
            if let Some(f) = forged {
                r = r.header("X-Lab-Token", f);
            }
            r.send().await.unwrap().status().as_u16()
        }
    };
    let (a, _) = create_session(&gw).await;
    // A forged token from the client is dropped; labgate's is sent.
    assert_eq!(through(a.clone(), Some("forged")).await, 200);
    let t1 = lab.seen.lock().unwrap()[0].clone();
    assert_eq!(t1.len(), 43);
    assert_eq!(lab.direct(&t1).await, 200, "the holder's token works");
    let (b, _) = create_session(&gw).await;
    assert_eq!(delete_session(&gw, &a).await, 204);
    assert_eq!(through(b.clone(), None).await, 200);
    let seen = lab.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    assert_ne!(seen[0], seen[1], "a token was reused");
    // The ended turn's token is refused even when sent straight to the lab.
    assert_eq!(lab.direct(&t1).await, 403);
    assert_eq!(lab.direct(&seen[1]).await, 200);
    assert_eq!(delete_session(&gw, &b).await, 204);
    eventually(WITHIN, "the last token revoked", || async {
        lab.current.lock().unwrap().is_none().then_some(())
    })
    .await;
    assert_eq!(lab.direct(&seen[1]).await, 403);
    // Never a token in the log.
    let log = gw.log();
    assert!(!log.contains(&t1) && !log.contains(&seen[1]));
    assert_eq!(gw.audit_events("token_minted").len(), 2);
    assert_eq!(gw.audit_events("token_revoked").len(), 2);
}

#[tokio::test]
async fn a_client_around_labgate_shows_up_as_a_reported_wait() {
    let python = venv().await;
    let neops = NeopsServer::start(python).await;
    // Somebody holds the server directly, around labgate.
    let direct: serde_json::Value = client()
        .post(neops.url("/session"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let direct_id = direct["session_id"]
        .as_str()
        .expect("direct id")
        .to_string();
    let bridge = "[neops]\nkeepalive = \"1s\"\npoll = \"200ms\"\nready_wait = \"1s\"\nreport_waiting_after = \"1s\"\n";
    let gw = Gateway::start(&bridged(neops.addr(), bridge)).await;
    let (id, position) = create_session(&gw).await;
    assert_eq!(position, 0);
    // labgate's holder is told the lab is busy, not left hanging.
    let (status, body) = lab_get(&gw, "/lab/devices", &id).await;
    assert_eq!(
        (status, body.as_str()),
        (423, concat!(r#"{"detail":"Lab currently busy"}"#, "\n"))
    );
    eventually(WITHIN, "the wait reported", || async {
        (!gw.audit_events("upstream_session_waiting").is_empty()).then_some(())
    })
    .await;
    assert_eq!(
        gw.metric("labgate_upstream_session_waiting{upstream=\"netlab\"}")
            .await,
        Some(1.0)
    );
    // The direct user leaves: labgate's upstream session gets the server.
    let r = client()
        .delete(neops.url(&format!("/session/{direct_id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let (status, body) = eventually(WITHIN, "served after the direct user left", || async {
        let r = lab_get(&gw, "/lab/devices", &id).await;
        (r.0 != 423).then_some(r)
    })
    .await;
    // The server's own answer under labgate's upstream session: no lab uploaded yet.
    assert_eq!(
        (status, body.as_str()),
        (404, r#"{"detail":"No lab running"}"#)
    );
    assert_eq!(
        gw.metric("labgate_upstream_session_waiting{upstream=\"netlab\"}")
            .await,
        Some(0.0)
    );
    let not_ready = gw
        .metric("labgate_bridge_not_ready_total{upstream=\"netlab\"}")
        .await;
    assert!(not_ready >= Some(1.0), "{not_ready:?}");
}

#[tokio::test]
async fn a_labgate_killed_during_a_reset_resets_again_before_promoting() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let count = dir.path().join("resets");
    // The first reset is slow (labgate is killed during it), the next one quick.
    let script = format!(
        "echo reset >> {0}; [ $(wc -l < {0}) -ge 2 ] || sleep 3",
        count.display()
    );
    let cfg = hook_cfg(
        up.addr,
        &format!(r#"reset = {{ command = ["/bin/sh", "-c", {script:?}], timeout = "20s" }}"#),
    )
    .state_path(&dir.path().join("queue.redb"));
    let mut gw = Gateway::start(&cfg).await;
    let (a, _) = create_session(&gw).await;
    let (b, _) = create_session(&gw).await;
    assert_eq!(delete_session(&gw, &a).await, 204);
    eventually(WITHIN, "the first reset running", || async {
        count.exists().then_some(())
    })
    .await;
    assert!(gw.kill9().await.is_some());
    let gw = Gateway::start(&cfg).await;
    let r = client()
        .get(gw.url(&format!("/session/{b}?wait=20")))
        .send()
        .await
        .unwrap();
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["status"], "active");
    let resets = std::fs::read_to_string(&count).unwrap_or_default();
    assert_eq!(resets.lines().count(), 2, "{resets}");
    // Restored, but not handed a lab whose reset never finished: the reset ran again
    // first, then b was promoted.
    let events: Vec<String> = gw
        .log_target("labgate::audit")
        .iter()
        .filter_map(|e| e["event"].as_str().map(str::to_string))
        .filter(|e| ["handoff_resumed", "hook", "session_promoted"].contains(&e.as_str()))
        .collect();
    assert_eq!(events, ["handoff_resumed", "hook", "session_promoted"]);
}

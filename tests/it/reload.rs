//! Config reload without a restart (issue 15): SIGHUP and `labgate admin reload` apply a
//! new file all or nothing. An in-flight request finishes with the config it started
//! with, the next one sees the new one; the queue (sessions, seqs) is untouched; a
//! broken file is refused with `labgate check`'s message and a restart-only change is
//! refused naming the option, the old config serving on.

use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::Value;

use crate::support::*;

const SOCKET: &str = "admin.sock";
const WAIT: Duration = Duration::from_secs(15);

/// An upstream answering its own name; a request to `.../hold` is answered only once
/// the test releases it (no timing involved).
struct Named {
    addr: std::net::SocketAddr,
    paths: Arc<Mutex<Vec<String>>>,
    release: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Named {
    async fn start(name: &'static str) -> Named {
        let paths: Arc<Mutex<Vec<String>>> = Arc::default();
        let (release, released) = tokio::sync::watch::channel(false);
        let (addr, task) = serve_recording(paths.clone(), move |req: Request<Incoming>, log| {
            let mut released = released.clone();
            async move {
                let path = req.uri().path().to_string();
                log.lock().expect("log").push(path.clone());
                if path.ends_with("/hold") {
                    // Bounded by the test: it releases, or drops the sender.
                    let _ = released.wait_for(|r| *r).await;
                }
                Response::new(Full::new(Bytes::from(name)))
            }
        })
        .await;
        Named {
            addr,
            paths,
            release,
            task,
        }
    }

    fn saw(&self, path: &str) -> bool {
        self.paths.lock().expect("log").iter().any(|p| p == path)
    }
}

impl Drop for Named {
    fn drop(&mut self) {
        let _ = self.release.send(true);
        self.task.abort();
    }
}

/// Replaces the running gateway's config file with `cfg`, on the same ports.
fn rewrite(gw: &Gateway, cfg: &Cfg) {
    let text = cfg.render(gw.dir(), gw.port, gw.metrics_port);
    std::fs::write(&gw.config_path, text).expect("write the new config");
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `labgate check` on the gateway's current file: its error lines, without the prefix.
fn check_errors(gw: &Gateway) -> Vec<String> {
    let out = run_bounded(
        Command::new(env!("CARGO_BIN_EXE_labgate"))
            .arg("check")
            .arg("--config")
            .arg(&gw.config_path),
        Duration::from_secs(20),
    );
    assert!(!out.status.success(), "check accepted the broken file");
    stderr(&out)
        .lines()
        .map(|l| l.trim_start_matches("labgate: ").to_string())
        .collect()
}

/// (id, seq) of every session, in queue order, as `admin queue` lists them.
fn queue(gw: &Gateway) -> Vec<(String, u64)> {
    let out = gw.admin(&["--json", "queue"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("queue JSON");
    v["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .map(|s| {
            (
                s["id"].as_str().expect("id").to_string(),
                s["seq"].as_u64().expect("seq"),
            )
        })
        .collect()
}

async fn reloads(gw: &Gateway, result: &str) -> f64 {
    gw.metric(&format!(
        r#"labgate_config_reloads_total{{result="{result}"}}"#
    ))
    .await
    .unwrap_or(-1.0)
}

async fn wait_reloads(gw: &Gateway, result: &str, n: f64) {
    eventually(WAIT, &format!("{n} {result} reload(s)"), || async {
        (reloads(gw, result).await == n).then_some(())
    })
    .await;
}

async fn post_session(gw: &Gateway) -> u16 {
    client()
        .post(gw.url("/session"))
        .send()
        .await
        .expect("POST /session")
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_flight_request_finishes_on_the_old_upstream_and_the_next_goes_to_the_new() {
    let (old, new) = (Named::start("old").await, Named::start("new").await);
    let cfg = |addr| Cfg::new(addr).admin_socket(SOCKET);
    let gw = Gateway::start(&cfg(old.addr)).await;
    let (holder, _) = create_session(&gw).await;
    let (_waiter, _) = create_session(&gw).await;
    let before = queue(&gw);
    assert_eq!(before.len(), 2);

    let held = {
        let url = gw.url("/lab/hold");
        let id = holder.clone();
        tokio::spawn(async move {
            let r = client()
                .get(url)
                .header("X-Session-ID", id)
                .send()
                .await
                .expect("held request");
            (r.status().as_u16(), r.text().await.unwrap_or_default())
        })
    };
    eventually(
        WAIT,
        "the held request reaches the old upstream",
        || async { old.saw("/lab/hold").then_some(()) },
    )
    .await;

    rewrite(&gw, &cfg(new.addr));
    let out = gw.admin(&["--json", "reload"]);
    assert!(out.status.success(), "reload refused: {}", stderr(&out));
    let answer: Value = serde_json::from_slice(&out.stdout).expect("reload JSON");
    assert_eq!(answer["reloaded"], true);
    let changed = answer["changed"].to_string();
    assert!(
        changed.contains(&format!(
            "upstream \\\"lab\\\": address {} -> {}",
            old.addr, new.addr
        )),
        "{answer}"
    );

    // The next request goes to the new address; the held one is still on the old.
    let (status, body) = lab_get(&gw, "/lab/next", &holder).await;
    assert_eq!((status, body.as_str()), (200, "new"));
    assert!(!old.saw("/lab/next"));
    assert!(!held.is_finished());
    let _ = old.release.send(true);
    let (status, body) = tokio::time::timeout(WAIT, held)
        .await
        .expect("the held request ends once released")
        .expect("task");
    assert_eq!((status, body.as_str()), (200, "old"));

    // Nothing happened to the queue.
    assert_eq!(queue(&gw), before);
    assert_eq!(reloads(&gw, "ok").await, 1.0);
    let audit = gw.audit_events("config_reloaded");
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0]["trigger"], "admin");
    assert!(gw
        .metric("labgate_config_last_reload_success_timestamp_seconds")
        .await
        .is_some_and(|t| t > 1.0e9));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_lowers_the_rate_limit_and_refuses_a_broken_file_with_checks_message() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&Cfg::new(up.addr).admin_socket(SOCKET)).await;
    for _ in 0..3 {
        assert_eq!(post_session(&gw).await, 201);
    }
    let before = queue(&gw);

    let strict = Cfg::new(up.addr).admin_socket(SOCKET).rate_limit(1, "1h");
    rewrite(&gw, &strict);
    gw.signal(Signal::SIGHUP);
    wait_reloads(&gw, "ok", 1.0).await;
    // One token at most under the new rate, then 429 for an hour.
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(post_session(&gw).await);
    }
    assert!(statuses.ends_with(&[429, 429]), "{statuses:?}");
    assert_eq!(queue(&gw)[..before.len()], before[..]);

    // A broken file: refused with exactly what `labgate check` says; the old serves on.
    let text = strict.render(gw.dir(), gw.port, gw.metrics_port);
    std::fs::write(
        &gw.config_path,
        format!("{text}\n[queue_typo]\nactive_timeout = \"1s\"\n"),
    )
    .expect("write");
    let expected = check_errors(&gw);
    assert_eq!(expected.len(), 1, "{expected:?}");
    assert!(expected[0].contains("labgate.toml:"), "{expected:?}");
    gw.signal(Signal::SIGHUP);
    wait_reloads(&gw, "refused", 1.0).await;
    let refused = gw.audit_events("config_reload_refused");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0]["why"], expected[0].as_str());
    assert_eq!(refused[0]["trigger"], "sighup");
    assert_eq!(post_session(&gw).await, 429, "the strict rate still holds");
    let holder = before[0].0.clone();
    assert_eq!(lab_get(&gw, "/lab/x", &holder).await.0, 200);

    // The admin command says the same, on stderr, and fails.
    let out = gw.admin(&["reload"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!("labgate: {}\n", expected[0])),
        "{}",
        stderr(&out)
    );
    assert_eq!(reloads(&gw, "refused").await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_only_change_is_refused_whole_naming_the_option() {
    let up = Upstream::start().await;
    let cfg = Cfg::new(up.addr).admin_socket(SOCKET);
    let gw = Gateway::start(&cfg).await;
    let (holder, _) = create_session(&gw).await;
    // A live change (the rate) and a restart-only one (threads) in one file.
    rewrite(
        &gw,
        &cfg.clone()
            .rate_limit(1, "1h")
            .extra("[server]\nthreads = 3"),
    );
    let out = gw.admin(&["reload"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("labgate: needs a restart: server.threads\n"),
        "{}",
        stderr(&out)
    );
    // All or nothing: the rate did not change either.
    for _ in 0..3 {
        assert_eq!(post_session(&gw).await, 201);
    }
    assert_eq!(lab_get(&gw, "/lab/x", &holder).await.0, 200);
    assert_eq!(reloads(&gw, "refused").await, 1.0);
    assert_eq!(reloads(&gw, "ok").await, 0.0);

    // The same file without the restart-only change goes through.
    rewrite(&gw, &cfg.clone().rate_limit(1, "1h"));
    let out = gw.admin(&["reload"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("rate_limit"),
        "{out:?}"
    );
}

//! `labgate run` and `labgate session` against a real labgate on loopback.
//!
//! The long-poll and its fallback are also tested against [`FakeLab`], a minimal
//! session server that can answer `?wait=` or ignore it (as neops-remote-lab does),
//! and that may or may not send `X-Lab-Active-Timeout`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

use crate::support::*;

/// Upper bound for anything a test waits for (never reached when things work).
const LONG: Duration = Duration::from_secs(30);

/// A `labgate run` (or `labgate session`) process with its stderr in a file.
struct Client {
    child: Option<Child>,
    stderr: PathBuf,
    stdout: PathBuf,
}

impl Client {
    /// `labgate ARGS...` with `envs` added; stdout and stderr go to files in `dir`.
    fn start(dir: &Path, name: &str, args: &[&str], envs: &[(&str, &str)]) -> Client {
        let stderr = dir.join(format!("{name}.stderr"));
        let stdout = dir.join(format!("{name}.stdout"));
        let child = Command::new(env!("CARGO_BIN_EXE_labgate"))
            .args(args)
            .env_remove("LAB_URL")
            .envs(envs.iter().copied())
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).expect("stdout file"))
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("spawn labgate client");
        Client {
            child: Some(child),
            stderr,
            stdout,
        }
    }

    /// `labgate run --url URL EXTRA... -- sh -c SCRIPT` in `dir`.
    fn run(dir: &Path, name: &str, gw: &Gateway, extra: &[&str], script: &str) -> Client {
        let url = gw.base_url();
        let mut args = vec!["run", "--url", url.as_str()];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--", "sh", "-c", script]);
        Client::start(dir, name, &args, &[])
    }

    fn signal(&self, sig: Signal) {
        if let Some(child) = &self.child {
            send_signal(child, sig);
        }
    }

    /// Waits (bounded by [`LONG`]) for the exit status; panics with stderr otherwise.
    async fn exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + LONG;
        loop {
            let child = self.child.as_mut().expect("client already reaped");
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "labgate client still running after {LONG:?}; stderr:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The exit code (panics if killed by a signal).
    async fn code(&mut self) -> i32 {
        let status = self.exit().await;
        status
            .code()
            .unwrap_or_else(|| panic!("client killed: {status}; stderr:\n{}", self.stderr()))
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits (bounded) until `path` exists and is non-empty; returns its trimmed text.
async fn file_text(path: &Path) -> String {
    eventually(
        LONG,
        &format!("{} to be written", path.display()),
        || async {
            std::fs::read_to_string(path)
                .ok()
                .filter(|t| t.ends_with('\n'))
                .map(|t| t.trim().to_string())
        },
    )
    .await
}

/// A shell snippet that waits (at most 30 s) for the file `name` to appear.
fn await_file(name: &str) -> String {
    format!("i=0; while [ ! -e {name} ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done")
}

async fn queue_depth(gw: &Gateway) -> f64 {
    gw.metric("labgate_queue_depth").await.expect("queue depth")
}

/// Nanoseconds since the epoch as written by `date +%s%N`.
fn nanos(text: &str) -> u128 {
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("not a timestamp: {text:?}"))
}

#[tokio::test]
async fn two_concurrent_runs_are_serialized() {
    let gw = gateway().await;
    let dir = tempfile::tempdir().expect("tempdir");
    // Each CMD records when it started and ended, holding the lab for 1.5 s.
    let script = |n: &str| {
        format!(
            "date +%s%N > {n}.start; echo $LAB_SESSION_ID > {n}.id; sleep 1.5; date +%s%N > {n}.end"
        )
    };
    let mut a = Client::run(dir.path(), "a", &gw, &[], &script("a"));
    let mut b = Client::run(dir.path(), "b", &gw, &[], &script("b"));
    assert_eq!(a.code().await, 0, "a: {}", a.stderr());
    assert_eq!(b.code().await, 0, "b: {}", b.stderr());

    let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).expect(f);
    let (a0, a1) = (nanos(&read("a.start")), nanos(&read("a.end")));
    let (b0, b1) = (nanos(&read("b.start")), nanos(&read("b.end")));
    assert!(
        a1 <= b0 || b1 <= a0,
        "CMDs overlapped: a {a0}..{a1}, b {b0}..{b1}"
    );
    assert_ne!(read("a.id"), read("b.id"));
    // The second one waited, and said so.
    let (first, second) = if a1 <= b0 { (&a, &b) } else { (&b, &a) };
    assert!(
        second
            .stderr()
            .contains("waiting for the lab: 1 session ahead"),
        "second:\n{}",
        second.stderr()
    );
    assert!(
        !first.stderr().contains("waiting"),
        "first:\n{}",
        first.stderr()
    );
    assert_eq!(queue_depth(&gw).await, 0.0, "both sessions ended");
    println!(
        "--- first ---\n{}--- second ---\n{}",
        first.stderr(),
        second.stderr()
    );
}

/// An address nothing listens on: the upstream is never used by these tests.
fn free_port_addr() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], free_port()))
}

async fn gateway() -> Gateway {
    Gateway::start(&Cfg::bare().upstream(UpstreamCfg::new("lab", free_port_addr()))).await
}

#[tokio::test]
async fn cmd_exit_status_is_passed_through_and_the_session_ended() {
    let gw = gateway().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = Client::run(dir.path(), "seven", &gw, &[], "exit 7");
    assert_eq!(c.code().await, 7, "{}", c.stderr());
    assert_eq!(queue_depth(&gw).await, 0.0);
    // Killed by a signal: 128 + signal, as a shell reports it.
    let mut c = Client::run(dir.path(), "killed", &gw, &[], "kill -TERM $$");
    assert_eq!(
        c.code().await,
        128 + Signal::SIGTERM as i32,
        "{}",
        c.stderr()
    );
    let mut c = Client::run(dir.path(), "ok", &gw, &["--quiet"], "true");
    assert_eq!(c.code().await, 0);
    assert_eq!(c.stderr(), "", "--quiet prints nothing on success");
    assert_eq!(queue_depth(&gw).await, 0.0);
}

#[tokio::test]
async fn a_missing_cmd_exits_127_and_ends_the_session() {
    let gw = gateway().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let url = gw.base_url();
    let args = ["run", "--url", url.as_str(), "--", "/nonexistent/cmd"];
    let mut c = Client::start(dir.path(), "missing", &args, &[]);
    assert_eq!(c.code().await, 127);
    assert!(
        c.stderr().contains("cannot run /nonexistent/cmd"),
        "{}",
        c.stderr()
    );
    assert_eq!(queue_depth(&gw).await, 0.0);
}

#[tokio::test]
async fn cmd_gets_the_session_and_url_and_holds_the_lab_while_it_runs() {
    let gw = gateway().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let script = format!(
        "echo \"$LAB_SESSION_ID $LAB_URL\" > env.txt; {}; echo out",
        await_file("go")
    );
    // A trailing slash in the URL is not passed on.
    let url = format!("{}/", gw.base_url());
    let args = [
        "run",
        "--url",
        url.as_str(),
        "--",
        "sh",
        "-c",
        script.as_str(),
    ];
    let mut c = Client::start(dir.path(), "env", &args, &[]);
    let env = file_text(&dir.path().join("env.txt")).await;
    let (id, url) = env.split_once(' ').expect("two words");
    assert!(is_uuid_v4(id), "{env}");
    assert_eq!(url, gw.base_url());
    assert_eq!(active_session(&gw).await.as_deref(), Some(tag(id).as_str()));
    std::fs::write(dir.path().join("go"), "").expect("go");
    assert_eq!(c.code().await, 0, "{}", c.stderr());
    assert_eq!(c.stdout(), "out\n", "CMD's stdout is labgate's");
    assert_eq!(active_session(&gw).await, None);
}

#[tokio::test]
async fn lab_url_is_taken_from_the_environment() {
    let gw = gateway().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let url = gw.base_url();
    let args = ["run", "--", "sh", "-c", "echo $LAB_URL > url.txt"];
    let mut c = Client::start(dir.path(), "env", &args, &[("LAB_URL", url.as_str())]);
    assert_eq!(c.code().await, 0, "{}", c.stderr());
    assert_eq!(file_text(&dir.path().join("url.txt")).await, url);
    // Neither flag nor variable: a usage error, nothing created.
    let mut c = Client::start(dir.path(), "nourl", &["run", "--", "true"], &[]);
    assert_eq!(c.code().await, 64);
    assert_eq!(
        c.stderr(),
        "labgate: no server URL: pass --url or set LAB_URL\n"
    );
}

#[tokio::test]
async fn sigterm_passes_to_cmd_and_promotes_the_next_waiter_at_once() {
    // active_timeout stays at 300 s: only an explicit end can promote the waiter soon.
    let gw = gateway().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = Client::run(
        dir.path(),
        "held",
        &gw,
        &[],
        "echo $LAB_SESSION_ID > id.txt; exec sleep 60",
    );
    let held = file_text(&dir.path().join("id.txt")).await;
    let (next, position) = create_session(&gw).await;
    assert_eq!(position, 1);
    let t0 = Instant::now();
    c.signal(Signal::SIGTERM);
    // CMD (sleep) got the SIGTERM: its status is labgate's.
    assert_eq!(
        c.code().await,
        128 + Signal::SIGTERM as i32,
        "{}",
        c.stderr()
    );
    let promoted = eventually(Duration::from_secs(5), "next waiter promoted", || async {
        (active_session(&gw).await.as_deref() == Some(tag(&next).as_str())).then(|| t0.elapsed())
    })
    .await;
    assert_eq!(get_session(&gw, &held).await.0, 404, "held session ended");
    assert!(
        c.stderr().contains("SIGTERM: passed on to CMD"),
        "{}",
        c.stderr()
    );
    println!("next waiter promoted {promoted:?} after SIGTERM (active_timeout 300s)");
}

#[tokio::test]
async fn sigint_is_passed_on_and_cmd_decides_the_exit_status() {
    let gw = gateway().await;
    let dir = tempfile::tempdir().expect("tempdir");
    // `wait` (unlike a foreground child) lets the shell run its trap at once.
    let script = "trap 'kill $!; exit 5' INT; sleep 60 & echo up > up.txt; wait";
    let mut c = Client::run(dir.path(), "int", &gw, &[], script);
    file_text(&dir.path().join("up.txt")).await;
    c.signal(Signal::SIGINT);
    assert_eq!(c.code().await, 5, "{}", c.stderr());
    assert_eq!(queue_depth(&gw).await, 0.0);
}

#[tokio::test]
async fn sigterm_while_waiting_ends_the_session_without_running_cmd() {
    let gw = gateway().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (holder, _) = create_session(&gw).await;
    let mut c = Client::run(dir.path(), "waiter", &gw, &[], "touch ran");
    eventually(LONG, "waiter queued", || async {
        (queue_depth(&gw).await == 2.0).then_some(())
    })
    .await;
    c.signal(Signal::SIGTERM);
    assert_eq!(
        c.code().await,
        128 + Signal::SIGTERM as i32,
        "{}",
        c.stderr()
    );
    assert!(!dir.path().join("ran").exists(), "CMD must not run");
    assert_eq!(queue_depth(&gw).await, 1.0, "waiter's session ended");
    assert_eq!(
        active_session(&gw).await.as_deref(),
        Some(tag(&holder).as_str())
    );
}

#[tokio::test]
async fn a_kicked_session_stops_cmd_and_exits_75_whatever_the_heartbeat() {
    let gw = gateway().await;
    let dir = tempfile::tempdir().expect("tempdir");
    // The default heartbeat (a third of 300 s): only the holder's watch can see the kick.
    let mut c = Client::run(
        dir.path(),
        "kicked",
        &gw,
        &[],
        "echo $LAB_SESSION_ID > id.txt; exec sleep 60",
    );
    let id = file_text(&dir.path().join("id.txt")).await;
    // The kick, from outside (the admin API will do the same).
    assert_eq!(delete_session(&gw, &id).await, 204);
    // Within LONG (30 s), far below the 100 s heartbeat.
    assert_eq!(c.code().await, 75, "{}", c.stderr());
    let err = c.stderr();
    assert!(
        err.contains("was ended by the server while CMD ran (") && err.contains("stopping CMD"),
        "{err}"
    );
    assert!(held_seconds(&err) < 30, "true hold time reported: {err}");
}

/// The seconds in "... after holding the lab Ns; ..." of a `labgate run` stderr.
fn held_seconds(stderr: &str) -> u64 {
    let rest = stderr
        .split("after holding the lab ")
        .nth(1)
        .unwrap_or_else(|| panic!("no hold time in {stderr}"));
    let d = rest.split(';').next().unwrap_or("");
    if d.trim() == "0s" {
        return 0;
    }
    humantime::parse_duration(d.trim())
        .unwrap_or_else(|e| panic!("hold time {d:?}: {e}"))
        .as_secs()
}

#[tokio::test]
async fn a_cmd_that_ignores_sigterm_is_killed_after_the_grace_period() {
    let gw = gateway().await;
    let dir = tempfile::tempdir().expect("tempdir");
    // An ignored SIGTERM survives exec, so sleep ignores it too.
    let mut c = Client::run(
        dir.path(),
        "stubborn",
        &gw,
        &["--heartbeat", "200ms", "--kill-after", "300ms"],
        "trap '' TERM; echo $LAB_SESSION_ID > id.txt; exec sleep 60",
    );
    let id = file_text(&dir.path().join("id.txt")).await;
    assert_eq!(delete_session(&gw, &id).await, 204);
    assert_eq!(c.code().await, 75, "{}", c.stderr());
    assert!(c.stderr().contains("killing it"), "{}", c.stderr());
}

#[tokio::test]
async fn an_expired_session_stops_cmd_within_seconds_and_reports_the_true_hold() {
    // max_hold 1 s with a waiter behind: expired after about 1 s; heartbeat every 100 s.
    let gw = Gateway::start(
        &Cfg::bare()
            .upstream(UpstreamCfg::new("lab", free_port_addr()))
            .max_hold("1s"),
    )
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = Client::run(
        dir.path(),
        "expired",
        &gw,
        &[],
        "echo $LAB_SESSION_ID > id.txt; exec sleep 60",
    );
    file_text(&dir.path().join("id.txt")).await;
    let waiter = create_session(&gw).await;
    assert_eq!(c.code().await, 75, "{}", c.stderr());
    let err = c.stderr();
    assert!(err.contains("stopping CMD"), "{err}");
    // Seen within a second or two of the expiry, not at CMD's end (60 s) or the
    // next heartbeat (100 s).
    assert!(held_seconds(&err) <= 5, "{err}");
    assert_eq!(
        gw.metric("labgate_sessions_ended_total{reason=\"expired\"}")
            .await,
        Some(1.0),
        "{err}"
    );
    drop(waiter);
}

#[tokio::test]
async fn heartbeats_keep_a_command_longer_than_the_active_timeout() {
    let gw = Gateway::start(
        &Cfg::bare()
            .upstream(UpstreamCfg::new("lab", free_port_addr()))
            .timeouts("1s", "600s"),
    )
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = Client::run(
        dir.path(),
        "long",
        &gw,
        &["--heartbeat", "200ms"],
        "sleep 2.5",
    );
    assert_eq!(c.code().await, 0, "{}", c.stderr());
    assert_eq!(
        gw.metric("labgate_sessions_ended_total{reason=\"stale\"}")
            .await
            .unwrap_or(0.0),
        0.0
    );
}

#[tokio::test]
async fn a_wait_timeout_exits_75_without_running_cmd() {
    let gw = gateway().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (holder, _) = create_session(&gw).await;
    let mut c = Client::run(
        dir.path(),
        "impatient",
        &gw,
        &["--wait-timeout", "1s"],
        "touch ran",
    );
    assert_eq!(c.code().await, 75, "{}", c.stderr());
    assert!(!dir.path().join("ran").exists(), "CMD must not run");
    assert!(
        c.stderr()
            .contains("gave up waiting for the lab after 1s (--wait-timeout); CMD not run"),
        "{}",
        c.stderr()
    );
    assert_eq!(queue_depth(&gw).await, 1.0, "the waiting session was ended");
    assert_eq!(
        active_session(&gw).await.as_deref(),
        Some(tag(&holder).as_str())
    );
}

#[tokio::test]
async fn a_waiter_learns_of_its_turn_without_busy_polling() {
    let gw = gateway().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (holder, _) = create_session(&gw).await;
    let t0 = Instant::now();
    let mut c = Client::run(
        dir.path(),
        "poller",
        &gw,
        &[],
        "echo $LAB_SESSION_ID > id.txt",
    );
    eventually(LONG, "waiter queued", || async {
        (queue_depth(&gw).await == 2.0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(delete_session(&gw, &holder).await, 204);
    assert_eq!(c.code().await, 0, "{}", c.stderr());
    let waited = t0.elapsed();
    let id = file_text(&dir.path().join("id.txt")).await;
    // Without long-poll every `GET /session/{id}?wait=20` is answered at once and the
    // client pauses between them; with it, one request is held until the promotion.
    let polls = gw
        .log()
        .lines()
        // Logged paths name the session by its tag (the id is a credential).
        .filter(|l| l.contains("\"GET\"") && l.contains(&format!("/session/tag:{}", tag(&id))))
        .count();
    let at_most = waited.as_secs() as usize / 2 + 2;
    assert!(
        (1..=at_most).contains(&polls),
        "{polls} status requests in {waited:?} (at most {at_most} expected)"
    );
}

#[tokio::test]
async fn connection_refused_is_one_clear_line_and_exit_69() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("http://127.0.0.1:{}", free_port());
    let args = [
        "run",
        "--url",
        url.as_str(),
        "--connect-retry",
        "500ms",
        "--",
        "touch",
        "ran",
    ];
    let mut c = Client::start(dir.path(), "refused", &args, &[]);
    assert_eq!(c.code().await, 69);
    let err = c.stderr();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!("cannot reach {url}/session: Connection refused")),
        "{err}"
    );
    assert!(!dir.path().join("ran").exists());
}

#[tokio::test]
async fn session_subcommands_print_plain_or_json_and_fail_clearly() {
    let gw = gateway().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let url = gw.base_url();
    let env = [("LAB_URL", url.as_str())];
    let session = |name: &str, args: &[&str]| {
        let mut all = vec!["session"];
        all.extend_from_slice(args);
        Client::start(dir.path(), name, &all, &env)
    };

    let mut c = session("new", &["new"]);
    assert_eq!(c.code().await, 0, "{}", c.stderr());
    let first = c.stdout().trim().to_string();
    assert!(is_uuid_v4(&first), "{first}");

    let mut c = session("new-json", &["new", "--json"]);
    assert_eq!(c.code().await, 0, "{}", c.stderr());
    let v: serde_json::Value = serde_json::from_str(&c.stdout()).expect("json");
    let second = v["session_id"].as_str().expect("session_id").to_string();
    assert_eq!(v["position"], 1);

    let mut c = session("status", &["status", &first]);
    assert_eq!(c.code().await, 0);
    assert_eq!(c.stdout(), "active 0\n");
    let mut c = session("status2", &["status", &second]);
    assert_eq!(c.code().await, 0);
    assert_eq!(c.stdout(), "waiting 1\n");
    let mut c = session("status-json", &["--json", "status", &second]);
    assert_eq!(c.code().await, 0);
    let v: serde_json::Value = serde_json::from_str(&c.stdout()).expect("json");
    assert_eq!(v, serde_json::json!({"status": "waiting", "position": 1}));

    let mut c = session("beat", &["heartbeat", &second]);
    assert_eq!(c.code().await, 0);
    assert_eq!(c.stdout(), "");
    let mut c = session("beat-json", &["heartbeat", "--json", &second]);
    assert_eq!(c.code().await, 0);
    let v: serde_json::Value = serde_json::from_str(&c.stdout()).expect("json");
    assert_eq!(
        v,
        serde_json::json!({"session_id": second, "result": "alive"})
    );

    let mut c = session("end", &["end", &first]);
    assert_eq!(c.code().await, 0, "{}", c.stderr());
    assert_eq!(c.stdout(), "");
    assert_eq!(
        active_session(&gw).await.as_deref(),
        Some(tag(&second).as_str())
    );

    // Unknown sessions: one line on stderr, exit 66, nothing on stdout.
    for (name, args) in [
        ("end-again", vec!["end", first.as_str()]),
        ("status-gone", vec!["status", first.as_str()]),
        ("beat-gone", vec!["heartbeat", "--json", first.as_str()]),
        ("status-bad", vec!["status", "../../etc"]),
    ] {
        let mut c = session(name, &args);
        assert_eq!(c.code().await, 66, "{name}: {}", c.stderr());
        assert_eq!(c.stdout(), "", "{name}");
        assert_eq!(c.stderr().lines().count(), 1, "{name}: {}", c.stderr());
        assert!(c.stderr().contains("not found"), "{name}: {}", c.stderr());
    }

    // A server that is not there: exit 69.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let args = [
        "session",
        "--url",
        dead.as_str(),
        "--connect-retry",
        "0s",
        "new",
    ];
    let mut c = Client::start(dir.path(), "dead", &args, &[]);
    assert_eq!(c.code().await, 69);
    assert_eq!(c.stderr().lines().count(), 1, "{}", c.stderr());
}

// ------------------------------------------------------------------ fake session server

/// What the fake server saw.
#[derive(Default)]
struct FakeState {
    queue: VecDeque<String>,
    created: u64,
    /// The query of every `GET /session/{id}`.
    status_queries: Vec<String>,
    heartbeats: u64,
    /// Tombstones: id -> (X-Lab-Session-Ended, X-Lab-End-Note).
    ended: std::collections::HashMap<String, (String, Option<String>)>,
}

/// A minimal contract-§1 session server: a FIFO of ids, `?wait=` honoured only when
/// `long_poll`, `X-Lab-Active-Timeout` sent only when `active_timeout` is set.
struct FakeLab {
    url: String,
    state: Arc<Mutex<FakeState>>,
    changed: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone, Copy)]
struct FakeOpts {
    long_poll: bool,
    active_timeout: Option<u64>,
}

impl FakeLab {
    async fn start(opts: FakeOpts) -> FakeLab {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let state: Arc<Mutex<FakeState>> = Arc::default();
        let changed = Arc::new(tokio::sync::Notify::new());
        let (st, ch) = (state.clone(), changed.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (st, changed) = (st.clone(), ch.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let (st, changed) = (st.clone(), changed.clone());
                        async move { Ok::<_, Infallible>(fake_answer(req, opts, st, changed).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FakeLab {
            url,
            state,
            changed,
            task,
        }
    }

    /// Ends `id` as the server would on its own (kick, expiry, reap), leaving a
    /// tombstone that says why.
    fn end(&self, id: &str, reason: &str, note: Option<&str>) {
        self.with(|s| {
            s.queue.retain(|q| q != id);
            s.ended
                .insert(id.to_string(), (reason.to_string(), note.map(String::from)));
        });
        self.changed.notify_waiters();
    }

    fn with<T>(&self, f: impl FnOnce(&mut FakeState) -> T) -> T {
        f(&mut self.state.lock().expect("fake state"))
    }
}

impl Drop for FakeLab {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn fake_answer(
    req: Request<hyper::body::Incoming>,
    opts: FakeOpts,
    state: Arc<Mutex<FakeState>>,
    changed: Arc<tokio::sync::Notify>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let position = |s: &FakeState, id: &str| s.queue.iter().position(|q| q == id);
    let (status, body) = match (req.method().as_str(), path.as_str()) {
        ("POST", "/session") => {
            let mut s = state.lock().expect("fake state");
            s.created += 1;
            let id = format!("fake-{}", s.created);
            s.queue.push_back(id.clone());
            let pos = s.queue.len() - 1;
            (
                201,
                serde_json::json!({"session_id": id, "position": pos}).to_string(),
            )
        }
        ("POST", "/session/heartbeat") => {
            let id = req
                .headers()
                .get("x-session-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let mut s = state.lock().expect("fake state");
            s.heartbeats += 1;
            match position(&s, id) {
                Some(_) => (204, String::new()),
                None => (404, r#"{"detail":"Session not found"}"#.to_string()),
            }
        }
        ("GET", p) if p.starts_with("/session/") => {
            let id = &p["/session/".len()..];
            state
                .lock()
                .expect("fake state")
                .status_queries
                .push(query.clone());
            let wait: u64 = query
                .split('&')
                .find_map(|p| p.strip_prefix("wait="))
                .and_then(|n| n.parse().ok())
                .filter(|_| opts.long_poll)
                .unwrap_or(0);
            let while_active = opts.long_poll && query.split('&').any(|p| p == "while=active");
            let until = tokio::time::Instant::now() + Duration::from_secs(wait.min(60));
            loop {
                let notified = changed.notified();
                let pos = position(&state.lock().expect("fake state"), id);
                match pos {
                    Some(n) if (n > 0 || while_active) && tokio::time::Instant::now() < until => {
                        let _ = tokio::time::timeout_at(until, notified).await;
                    }
                    Some(n) => {
                        let status = if n == 0 { "active" } else { "waiting" };
                        break (
                            200,
                            serde_json::json!({"status": status, "position": n}).to_string(),
                        );
                    }
                    None => break (404, r#"{"detail":"Session not found"}"#.to_string()),
                }
            }
        }
        ("DELETE", p) if p.starts_with("/session/") => {
            let id = &p["/session/".len()..];
            let mut s = state.lock().expect("fake state");
            match position(&s, id) {
                Some(n) => {
                    s.queue.remove(n);
                    drop(s);
                    changed.notify_waiters();
                    (204, String::new())
                }
                None => (404, r#"{"detail":"Session not found"}"#.to_string()),
            }
        }
        _ => (404, r#"{"detail":"Not Found"}"#.to_string()),
    };
    let mut r = Response::builder()
        .status(status)
        .header("content-type", "application/json");
    if let Some(t) = opts.active_timeout {
        r = r.header("x-lab-active-timeout", t.to_string());
    }
    let tombstone = path
        .strip_prefix("/session/")
        .and_then(|id| state.lock().expect("fake state").ended.get(id).cloned());
    if let (404, Some((reason, note))) = (status, tombstone) {
        r = r.header("x-lab-session-ended", reason);
        if let Some(note) = note {
            r = r.header("x-lab-end-note", note);
        }
    }
    r.body(Full::new(Bytes::from(body))).expect("fake response")
}

/// `labgate run` waits behind a session held on the fake for `hold`; returns the
/// queries of its status requests and its stderr.
async fn wait_behind_a_holder(opts: FakeOpts, hold: Duration) -> (Vec<String>, String) {
    let fake = FakeLab::start(opts).await;
    let holder: serde_json::Value = client()
        .post(format!("{}/session", fake.url))
        .send()
        .await
        .expect("fake POST")
        .json()
        .await
        .expect("json");
    let holder = holder["session_id"].as_str().expect("id").to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let args = ["run", "--url", fake.url.as_str(), "--", "touch", "ran"];
    let mut c = Client::start(dir.path(), "waiter", &args, &[]);
    eventually(LONG, "waiter queued", || async {
        (fake.with(|s| s.queue.len()) == 2).then_some(())
    })
    .await;
    tokio::time::sleep(hold).await;
    assert_eq!(delete(&format!("{}/session/{holder}", fake.url)).await, 204);
    assert_eq!(c.code().await, 0, "{}", c.stderr());
    assert!(dir.path().join("ran").exists());
    assert_eq!(fake.with(|s| s.queue.len()), 0, "waiter's session ended");
    // The waiter's own watch while CMD ran is not part of the wait.
    let queries = fake.with(|s| s.status_queries.clone());
    let waiting = queries
        .into_iter()
        .filter(|q| !q.contains("while=active"))
        .collect();
    (waiting, c.stderr())
}

async fn delete(url: &str) -> u16 {
    client()
        .delete(url)
        .send()
        .await
        .expect("DELETE")
        .status()
        .as_u16()
}

#[tokio::test]
async fn long_poll_is_used_when_the_server_holds_the_request() {
    let opts = FakeOpts {
        long_poll: true,
        active_timeout: None,
    };
    let (queries, stderr) = wait_behind_a_holder(opts, Duration::from_secs(3)).await;
    // One `wait=20` request, held for the 3 s wait and answered at the promotion.
    assert_eq!(queries, vec!["wait=20".to_string()], "{stderr}");
}

#[tokio::test]
async fn a_server_that_ignores_wait_is_polled_every_few_seconds() {
    let opts = FakeOpts {
        long_poll: false,
        active_timeout: None,
    };
    let t0 = Instant::now();
    let (queries, stderr) = wait_behind_a_holder(opts, Duration::from_secs(3)).await;
    let waited = t0.elapsed();
    // Answered at once every time, so the client paused ~2 s between requests.
    let at_most = waited.as_secs() as usize / 2 + 2;
    assert!(
        (2..=at_most).contains(&queries.len()),
        "{} status requests in {waited:?} (2..={at_most} expected): {queries:?}\n{stderr}",
        queries.len()
    );
    assert!(
        queries.iter().all(|q| q.starts_with("wait=")),
        "{queries:?}"
    );
}

#[tokio::test]
async fn the_heartbeat_follows_the_servers_active_timeout_header() {
    // X-Lab-Active-Timeout: 1 -> a heartbeat every 333 ms during a 2 s CMD.
    let fake = FakeLab::start(FakeOpts {
        long_poll: false,
        active_timeout: Some(1),
    })
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let args = ["run", "--url", fake.url.as_str(), "--", "sleep", "2"];
    let mut c = Client::start(dir.path(), "header", &args, &[]);
    assert_eq!(c.code().await, 0, "{}", c.stderr());
    let beats = fake.with(|s| s.heartbeats);
    assert!(
        beats >= 3,
        "{beats} heartbeats in 2 s with a 1 s active timeout"
    );

    // No header (neops-remote-lab): the 100 s default, so none during 2 s.
    let fake = FakeLab::start(FakeOpts {
        long_poll: false,
        active_timeout: None,
    })
    .await;
    let args = ["run", "--url", fake.url.as_str(), "--", "sleep", "2"];
    let mut c = Client::start(dir.path(), "noheader", &args, &[]);
    assert_eq!(c.code().await, 0, "{}", c.stderr());
    assert_eq!(fake.with(|s| s.heartbeats), 0);
}

#[tokio::test]
async fn a_server_gone_while_cmd_runs_is_reported_and_cmd_decides_the_status() {
    let mut gw = gateway().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let script = format!("echo up > up.txt; {}; exit 4", await_file("go"));
    let mut c = Client::run(
        dir.path(),
        "orphan",
        &gw,
        &["--heartbeat", "100ms", "--connect-retry", "300ms"],
        &script,
    );
    file_text(&dir.path().join("up.txt")).await;
    assert!(gw.terminate().await.is_some(), "labgate stopped");
    eventually(LONG, "a failed heartbeat reported", || async {
        c.stderr()
            .contains("heartbeat failed: cannot reach")
            .then_some(())
    })
    .await;
    std::fs::write(dir.path().join("go"), "").expect("go");
    assert_eq!(c.code().await, 4, "{}", c.stderr());
    let err = c.stderr();
    assert!(
        err.contains("could not end session") && err.contains("the server will reap it"),
        "{err}"
    );
    assert!(!err.contains("ended after holding"), "{err}");
}

/// `labgate run` holding the lab on `fake` with the default heartbeat; returns it, its
/// session id and its directory.
async fn hold_on_fake(fake: &FakeLab, name: &str) -> (Client, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let args = [
        "run",
        "--url",
        fake.url.as_str(),
        "--",
        "sh",
        "-c",
        "echo $LAB_SESSION_ID > id.txt; exec sleep 60",
    ];
    let c = Client::start(dir.path(), name, &args, &[]);
    let id = file_text(&dir.path().join("id.txt")).await;
    (c, id, dir)
}

#[tokio::test]
async fn the_holder_long_polls_while_active_and_prints_the_kick_reason() {
    let fake = FakeLab::start(FakeOpts {
        long_poll: true,
        active_timeout: None,
    })
    .await;
    let (mut c, id, _dir) = hold_on_fake(&fake, "kicked").await;
    eventually(LONG, "the holder's watch", || async {
        fake.with(|s| s.status_queries.iter().any(|q| q == "wait=20&while=active"))
            .then_some(())
    })
    .await;
    fake.end(&id, "kicked", Some("firmware update, back at 3pm"));
    assert_eq!(c.code().await, 75, "{}", c.stderr());
    let err = c.stderr();
    assert!(
        err.contains("(kicked by an operator: firmware update, back at 3pm); stopping CMD"),
        "{err}"
    );
    // One held request, answered at the kick: no polling while held.
    let watches = fake.with(|s| {
        s.status_queries
            .iter()
            .filter(|q| q.contains("while=active"))
            .count()
    });
    assert_eq!(watches, 1, "{err}");
    assert!(held_seconds(&err) < 30, "{err}");
}

#[tokio::test]
async fn a_reap_is_seen_without_long_poll_and_its_reason_printed() {
    // neops-style server: answers at once, no tombstone unless set; the holder polls.
    let fake = FakeLab::start(FakeOpts {
        long_poll: false,
        active_timeout: None,
    })
    .await;
    let (mut c, id, _dir) = hold_on_fake(&fake, "reaped").await;
    fake.end(&id, "stale", None);
    assert_eq!(c.code().await, 75, "{}", c.stderr());
    let err = c.stderr();
    assert!(err.contains("(reaped: no sign of life"), "{err}");
    assert_eq!(fake.with(|s| s.heartbeats), 0, "seen by the watch: {err}");

    // A session that ended without a tombstone still says what it can.
    let (mut c, id, _dir) = hold_on_fake(&fake, "unknown").await;
    fake.with(|s| s.queue.retain(|q| *q != id));
    assert_eq!(c.code().await, 75, "{}", c.stderr());
    assert!(c.stderr().contains("(reaped or kicked)"), "{}", c.stderr());
}

#[tokio::test]
async fn session_status_prints_how_the_session_ended() {
    let fake = FakeLab::start(FakeOpts {
        long_poll: false,
        active_timeout: None,
    })
    .await;
    let id = {
        let v: serde_json::Value = client()
            .post(format!("{}/session", fake.url))
            .send()
            .await
            .expect("fake POST")
            .json()
            .await
            .expect("json");
        v["session_id"].as_str().expect("id").to_string()
    };
    fake.end(&id, "expired", None);
    let dir = tempfile::tempdir().expect("tempdir");
    let args = ["session", "--url", fake.url.as_str(), "status", id.as_str()];
    let mut c = Client::start(dir.path(), "status", &args, &[]);
    assert_eq!(c.code().await, 66, "{}", c.stderr());
    assert!(
        c.stderr()
            .contains("not found (expired: held longer than max_hold"),
        "{}",
        c.stderr()
    );
}

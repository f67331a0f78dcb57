//! What an operator meets around the gate (issue 15): the pretty log coloured only on a
//! terminal and never with `NO_COLOR`, warnings about secret files others can read,
//! shell completions and the man page generated from the CLI, the favicon, and
//! `labgate_upstream_up` following an upstream that is down and then up.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

const ESC: u8 = 0x1b;

/// Runs `labgate demo-lab` with its stderr on `stderr` (and `NO_COLOR` as given) until
/// it listens, then stops it with SIGTERM. Bounded; never leaves it running.
fn demo_lab_until_listening(stderr: Stdio, no_color: Option<&str>) {
    let port = free_port();
    let mut child = {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_labgate"));
        cmd.args(["demo-lab", "--listen", &format!("127.0.0.1:{port}")])
            .env_remove("NO_COLOR")
            .env_remove("LABGATE_LOG_FORMAT")
            .env("LABGATE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        if let Some(v) = no_color {
            cmd.env("NO_COLOR", v);
        }
        // `cmd` (and with it the parent's copy of `stderr`) is dropped here: a pty's
        // reader sees its end once the child exits.
        cmd.spawn().expect("spawn labgate demo-lab")
    };
    let deadline = Instant::now() + START_TIMEOUT;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        let exited = child.try_wait().ok().flatten();
        if exited.is_some() || Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("labgate demo-lab did not listen on {port} ({exited:?})");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    send_signal(&child, Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("labgate demo-lab did not stop on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What the demo lab logs on a pseudo-terminal (its stderr is a tty).
fn log_on_a_terminal(no_color: Option<&str>) -> Vec<u8> {
    use std::io::Read;
    let pty = nix::pty::openpty(None, None).expect("openpty");
    let (master, slave): (OwnedFd, OwnedFd) = (pty.master, pty.slave);
    demo_lab_until_listening(Stdio::from(slave), no_color);
    // The child exited and every copy of the slave is closed: the master reads what is
    // buffered, then EIO.
    let mut out = Vec::new();
    let _ = std::fs::File::from(master).read_to_end(&mut out);
    out
}

#[test]
fn pretty_log_to_a_file_has_no_colour_escapes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("stderr.log");
    let file = std::fs::File::create(&path).expect("create the log file");
    demo_lab_until_listening(Stdio::from(file), None);
    let log = std::fs::read(&path).expect("read the log");
    let text = String::from_utf8_lossy(&log);
    assert!(text.contains("demo lab serving"), "{text}");
    assert!(!log.contains(&ESC), "escape codes in a file:\n{text:?}");
}

#[test]
fn pretty_log_on_a_terminal_is_coloured_unless_no_color_is_set() {
    let coloured = log_on_a_terminal(None);
    let text = String::from_utf8_lossy(&coloured);
    assert!(text.contains("demo lab serving"), "{text}");
    assert!(coloured.contains(&ESC), "a terminal gets colour:\n{text:?}");

    for value in ["1", "no"] {
        let plain = log_on_a_terminal(Some(value));
        let text = String::from_utf8_lossy(&plain);
        assert!(text.contains("demo lab serving"), "{text}");
        assert!(
            !plain.contains(&ESC),
            "NO_COLOR={value} on a terminal:\n{text:?}"
        );
    }
}

// ------------------------------------------------------------------ secret files

fn check(config: &std::path::Path) -> std::process::Output {
    run_bounded(
        Command::new(env!("CARGO_BIN_EXE_labgate"))
            .arg("check")
            .arg("--config")
            .arg(config),
        Duration::from_secs(30),
    )
}

#[test]
fn check_warns_about_a_secret_file_others_can_read() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = dir.path().join("lab-key");
    std::fs::write(&secret, "k3y-value\n").expect("write secret");
    let config = dir.path().join("labgate.toml");
    std::fs::write(
        &config,
        format!(
            "[[upstream]]\nname = \"lab\"\naddress = \"127.0.0.1:9\"\nroutes = [\"/lab\"]\n\
             [upstream.headers]\nX-Lab-Key = {{ file = {:?} }}\n",
            secret.display().to_string()
        ),
    )
    .expect("write config");

    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = check(&config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "a warning, not a refusal:\n{stderr}");
    let warning = stderr
        .lines()
        .find(|l| l.contains("secret file"))
        .unwrap_or_else(|| panic!("no warning:\n{stderr}"));
    assert!(
        warning.starts_with("labgate: warning: ")
            && warning.contains(&secret.display().to_string())
            && warning.contains("mode 644")
            && warning.contains("chmod 600"),
        "{warning}"
    );
    assert!(
        !stderr.contains("k3y-value"),
        "the secret itself is never printed"
    );

    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let out = check(&config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("secret file"), "{stderr}");
}

#[tokio::test]
async fn serve_logs_a_warning_for_a_secret_file_others_can_read() {
    use std::os::unix::fs::PermissionsExt;
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = dir.path().join("lab-key");
    std::fs::write(&secret, "k3y-value\n").expect("write secret");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let upstream = format!(
        "[[upstream]]\nname = \"lab\"\naddress = \"{}\"\nroutes = [\"/lab\"]\n\
         [upstream.headers]\nX-Lab-Key = {{ file = {:?} }}\n",
        up.addr,
        secret.display().to_string()
    );
    let gw = Gateway::start(&Cfg::bare().extra(&upstream)).await;
    let warnings: Vec<serde_json::Value> = gw
        .log_json()
        .into_iter()
        .filter(|l| l["level"] == "WARN")
        .filter(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.contains("secret file"))
        })
        .collect();
    assert_eq!(warnings.len(), 1, "{}", gw.log());
    let message = warnings[0]["message"].as_str().unwrap_or_default();
    assert!(message.contains("mode 640"), "{message}");
    assert!(!gw.log().contains("k3y-value"));
}

// ------------------------------------------------------------------ completions, man

fn labgate(args: &[&str]) -> std::process::Output {
    run_bounded(
        Command::new(env!("CARGO_BIN_EXE_labgate")).args(args),
        Duration::from_secs(30),
    )
}

/// Every subcommand of `labgate --help`.
const SUBCOMMANDS: &[&str] = &[
    "serve",
    "check",
    "admin",
    "run",
    "session",
    "tunnel",
    "ssh-config",
    "demo-lab",
    "completions",
    "man",
];

#[test]
fn bash_completion_is_valid_bash_and_completes_subcommands() {
    let out = labgate(&["completions", "bash"]);
    assert!(out.status.success(), "{out:?}");
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("labgate.bash");
    std::fs::write(&script, &out.stdout).expect("write script");
    let syntax = run_bounded(
        Command::new("bash").arg("-n").arg(&script),
        Duration::from_secs(30),
    );
    assert!(syntax.status.success(), "bash -n: {syntax:?}");

    // Loaded, it completes `labgate ad` to `admin` and `labgate ss` to `ssh-config`.
    let complete = |words: &str| {
        let probe = format!(
            "source {:?}\nCOMP_WORDS=({words})\nCOMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))\n\
             COMP_LINE=\"${{COMP_WORDS[*]}}\"\nCOMP_POINT=${{#COMP_LINE}}\n\
             _labgate labgate \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"\n\
             printf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
            script.display().to_string()
        );
        let out = run_bounded(
            Command::new("bash").arg("-c").arg(probe),
            Duration::from_secs(30),
        );
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert!(complete("labgate ad").lines().any(|l| l == "admin"));
    assert!(complete("labgate ss").lines().any(|l| l == "ssh-config"));
}

#[test]
fn zsh_and_fish_completions_name_every_subcommand() {
    for shell in ["zsh", "fish"] {
        let out = labgate(&["completions", shell]);
        assert!(out.status.success(), "{shell}: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        for sub in SUBCOMMANDS {
            assert!(text.contains(sub), "{shell} completion lacks {sub}");
        }
    }
    let out = labgate(&["completions", "tcsh"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("invalid value 'tcsh'"),
        "{out:?}"
    );
}

#[test]
fn man_page_is_clean_roff_and_lists_every_subcommand() {
    let out = labgate(&["man"]);
    assert!(out.status.success(), "{out:?}");
    let page = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        page.starts_with(".ie ") || page.contains(".TH labgate 1"),
        "{page}"
    );
    for sub in SUBCOMMANDS {
        assert!(
            page.contains(&format!("labgate\\-{}", sub.replace('-', "\\-")))
                || page.contains(&format!("labgate-{sub}")),
            "the man page lacks {sub}:\n{page}"
        );
    }
    // groff renders it without a warning.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("labgate.1");
    std::fs::write(&file, &out.stdout).expect("write page");
    let rendered = run_bounded(
        Command::new(require_tool("groff"))
            .args(["-man", "-Tutf8", "-ww"])
            .arg(&file),
        Duration::from_secs(30),
    );
    let warnings = String::from_utf8_lossy(&rendered.stderr);
    assert!(
        rendered.status.success() && warnings.trim().is_empty(),
        "groff: {warnings}"
    );
    let text = String::from_utf8_lossy(&rendered.stdout);
    assert!(text.contains("FIFO session gate"), "{text}");
}

// ------------------------------------------------------------------ favicon

#[tokio::test]
async fn favicon_is_served_with_cache_headers_and_linked_from_the_status_page() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&Cfg::new(up.addr)).await;
    let mut bodies = Vec::new();
    for path in ["/favicon.ico", "/favicon.svg"] {
        let r = client().get(gw.url(path)).send().await.expect("GET");
        assert_eq!(r.status().as_u16(), 200, "{path}");
        let header = |name: &str| {
            r.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        assert_eq!(header("content-type").as_deref(), Some("image/svg+xml"));
        assert_eq!(
            header("cache-control").as_deref(),
            Some("public, max-age=86400")
        );
        let body = r.bytes().await.expect("body");
        assert!(body.starts_with(b"<svg "), "{path}");
        bodies.push(body);
    }
    assert_eq!(bodies[0], bodies[1], "one icon under both names");
    let page = client()
        .get(gw.url("/status"))
        .send()
        .await
        .expect("GET /status")
        .text()
        .await
        .expect("page");
    assert!(
        page.contains("<link rel=\"icon\" href=\"/favicon.svg\" type=\"image/svg+xml\">"),
        "{page}"
    );
    // Nothing reached the lab.
    assert_eq!(up.count(), 0);
}

// ------------------------------------------------------------------ upstream health

async fn upstream_up(gw: &Gateway, name: &str) -> Option<f64> {
    gw.metric(&format!("labgate_upstream_up{{upstream=\"{name}\"}}"))
        .await
}

/// An upstream that is down at start reads 0 (from the idle probe); once it listens, the
/// next probe reads 1; a forwarded request that cannot connect reads 0 again at once,
/// with no probe (probes are off on the second upstream).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_up_follows_an_upstream_that_is_down_then_up() {
    let live = Upstream::start().await;
    let port = free_port();
    let dead: SocketAddr = ([127, 0, 0, 1], port).into();
    let cfg = Cfg::new(live.addr)
        .upstream(
            UpstreamCfg::new("flaky", dead)
                .routes(&["/lab/flaky"])
                .connect_timeout("1s")
                .health_interval("1s"),
        )
        .upstream(
            UpstreamCfg::new("quiet", dead)
                .routes(&["/lab/quiet"])
                .connect_timeout("1s")
                .health_interval("off"),
        );
    let gw = Gateway::start(&cfg).await;

    eventually(Duration::from_secs(20), "flaky to read down", || async {
        (upstream_up(&gw, "flaky").await? == 0.0).then_some(())
    })
    .await;
    // Probes off and no request yet: nothing known, the gauge reads 1.
    assert_eq!(upstream_up(&gw, "quiet").await, Some(1.0));
    let log = gw.log();
    assert!(
        log.contains("upstream unreachable") && log.contains("flaky"),
        "{log}"
    );

    // The upstream comes up: the next idle probe sees it.
    let listener = std::net::TcpListener::bind(dead).expect("bind the flaky upstream's port");
    eventually(Duration::from_secs(20), "flaky to read up", || async {
        (upstream_up(&gw, "flaky").await? == 1.0).then_some(())
    })
    .await;
    assert!(gw.log().contains("upstream reachable again"));
    drop(listener);

    // "quiet" is never probed: only a forwarded request's failed connect says down.
    let (holder, _) = create_session(&gw).await;
    assert_eq!(upstream_up(&gw, "quiet").await, Some(1.0));
    assert_eq!(lab_get(&gw, "/lab/quiet/x", &holder).await.0, 502);
    assert_eq!(upstream_up(&gw, "quiet").await, Some(0.0));
    // And a request that gets through says up.
    assert_eq!(lab_get(&gw, "/lab/devices", &holder).await.0, 200);
    assert_eq!(upstream_up(&gw, "lab").await, Some(1.0));
}

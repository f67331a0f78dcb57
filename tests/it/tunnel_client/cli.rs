//! `labgate tunnel --stdio`, `labgate tunnel -L`, `labgate ssh-config` and
//! `labgate run -L` against an in-process fake of labgate's tunnel side
//! ([`super::fake`], written from the protocol file), echoing to a loopback device.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use super::fake::{closed_port, Echo, FakeGate};

/// Upper bound for anything a test waits for (never reached when things work).
const LONG: Duration = Duration::from_secs(30);

/// A `labgate` client process: stdin/stdout piped, stderr in a file.
struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: ChildStdout,
    stderr: PathBuf,
}

impl Proc {
    fn start(dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> Proc {
        let stderr = dir.join(format!("stderr-{}", fastrand::u64(..)));
        let mut child = Command::new(env!("CARGO_BIN_EXE_labgate"))
            .args(args)
            .env_remove("LAB_URL")
            .env_remove("LAB_SESSION_ID")
            .envs(envs.iter().copied())
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .kill_on_drop(true)
            .spawn()
            .expect("spawn labgate");
        Proc {
            stdin: child.stdin.take(),
            stdout: child.stdout.take().expect("stdout"),
            child,
            stderr,
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    async fn exit(&mut self) -> ExitStatus {
        match tokio::time::timeout(LONG, self.child.wait()).await {
            Ok(Ok(s)) => s,
            _ => panic!(
                "labgate still running after {LONG:?}; stderr:\n{}",
                self.stderr()
            ),
        }
    }

    async fn code(&mut self) -> i32 {
        let s = self.exit().await;
        s.code()
            .unwrap_or_else(|| panic!("killed: {s}; stderr:\n{}", self.stderr()))
    }

    /// Reads exactly `n` bytes of stdout (bounded).
    async fn read(&mut self, n: usize) -> Vec<u8> {
        let mut buf = vec![0; n];
        match tokio::time::timeout(LONG, self.stdout.read_exact(&mut buf)).await {
            Ok(Ok(_)) => buf,
            other => panic!("stdout: {other:?}; stderr:\n{}", self.stderr()),
        }
    }

    async fn write(&mut self, data: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(data).await.expect("write stdin");
        stdin.flush().await.expect("flush stdin");
    }

    /// Waits (bounded) for a line of stderr containing `what`; returns it.
    async fn stderr_line(&self, what: &str) -> String {
        let deadline = Instant::now() + LONG;
        loop {
            if let Some(l) = self.stderr().lines().find(|l| l.contains(what)) {
                return l.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "no stderr line with {what:?}; stderr:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The local address of the forward to `target`, from its "forwarding" line.
    async fn forward_addr(&self, target: &str) -> String {
        let line = self.stderr_line(&format!(" -> {target}")).await;
        let after = line.split("forwarding ").nth(1).expect("forwarding line");
        after
            .split(&[' ', ','][..])
            .next()
            .expect("address")
            .to_string()
    }
}

/// Writes `msg` to a connection and expects it back (the echo device).
async fn echo_through(conn: &mut TcpStream, msg: &[u8]) {
    conn.write_all(msg).await.expect("write");
    let mut back = vec![0; msg.len()];
    tokio::time::timeout(LONG, conn.read_exact(&mut back))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(back, msg);
}

/// Whether the peer closed `conn` (EOF or reset) within [`LONG`].
async fn closed_by_peer(conn: &mut TcpStream) -> bool {
    let mut buf = [0u8; 16];
    matches!(
        tokio::time::timeout(LONG, conn.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

async fn gate_with_echo() -> (FakeGate, Echo) {
    let echo = Echo::start().await;
    let gate = FakeGate::start(&[
        ("r1:22", echo.addr),
        ("172.20.20.2:22", echo.addr),
        ("[fd00::2]:830", echo.addr),
        ("r9:22", closed_port()),
    ])
    .await;
    (gate, echo)
}

#[tokio::test]
async fn stdio_carries_bytes_both_ways_and_exits_0_on_eof() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (gate, echo) = gate_with_echo().await;
    let id = gate.add_session();
    // From the environment, as `labgate run` exports it.
    let mut p = Proc::start(
        dir.path(),
        &["tunnel", "--stdio", "r1:22"],
        &[("LAB_URL", &gate.url), ("LAB_SESSION_ID", &id)],
    );
    p.write(b"hello through the gate\n").await;
    assert_eq!(p.read(23).await, b"hello through the gate\n");
    // A bigger transfer, in order.
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    p.write(&big).await;
    assert_eq!(p.read(big.len()).await, big);
    drop(p.stdin.take());
    assert_eq!(p.code().await, 0, "{}", p.stderr());
    assert_eq!(p.stderr(), "");
    assert_eq!(echo.accepted(), 1);
    let requests = gate.with(|s| s.tunnel_requests.clone());
    assert_eq!(requests, vec![("/lab/tunnel/r1:22".to_string(), Some(id))]);
}

#[tokio::test]
async fn stdio_takes_ssh_style_ipv6_and_flags() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (gate, _echo) = gate_with_echo().await;
    let id = gate.add_session();
    // ssh's %h:%p for an IPv6 host has no brackets; labgate gets them.
    let mut p = Proc::start(
        dir.path(),
        &[
            "tunnel",
            "--url",
            &gate.url,
            "--session",
            &id,
            "--stdio",
            "fd00::2:830",
        ],
        &[],
    );
    p.write(b"x").await;
    assert_eq!(p.read(1).await, b"x");
    drop(p.stdin.take());
    assert_eq!(p.code().await, 0, "{}", p.stderr());
    let requests = gate.with(|s| s.tunnel_requests.clone());
    assert_eq!(requests[0].0, "/lab/tunnel/[fd00::2]:830");
}

#[tokio::test]
async fn stdio_refusals_say_why_with_their_exit_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (gate, echo) = gate_with_echo().await;
    let active = gate.add_session();
    let waiting = gate.add_session();
    let down = format!("http://{}", closed_port());
    let cases: [(&str, &str, &str, i32, &str); 6] = [
        (&gate.url, "nope", "r1:22", 75, "session not found"),
        (
            &gate.url,
            &waiting,
            "r1:22",
            75,
            "still waiting for the lab",
        ),
        (
            &gate.url,
            &active,
            "r2:22",
            77,
            "r2:22 is not an allowed target (404: Target not allowed)",
        ),
        (
            &gate.url,
            &active,
            "r9:22",
            69,
            "r9:22 cannot be reached from labgate (502",
        ),
        (&down, &active, "r1:22", 69, "cannot reach labgate"),
        (&gate.url, &active, "r1:x", 2, "invalid target"),
    ];
    for (url, session, target, code, says) in cases {
        let mut p = Proc::start(
            dir.path(),
            &[
                "tunnel",
                "--url",
                url,
                "--session",
                session,
                "--stdio",
                target,
            ],
            &[],
        );
        assert_eq!(p.code().await, code, "{target} {session}: {}", p.stderr());
        let stderr = p.stderr();
        assert!(stderr.contains(says), "{target} {session}: {stderr}");
        assert_eq!(
            stderr.lines().count(),
            if code == 2 { stderr.lines().count() } else { 1 },
            "{stderr}"
        );
    }
    // Missing session: a usage error before anything is sent.
    let mut p = Proc::start(
        dir.path(),
        &["tunnel", "--url", &gate.url, "--stdio", "r1:22"],
        &[],
    );
    assert_eq!(p.code().await, 64);
    assert!(
        p.stderr()
            .contains("no session: pass --session or set LAB_SESSION_ID"),
        "{}",
        p.stderr()
    );
    assert_eq!(
        echo.accepted(),
        0,
        "a refused tunnel never reaches the device"
    );
}

#[tokio::test]
async fn stdio_ends_with_75_and_the_reason_when_the_session_ends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (gate, _echo) = gate_with_echo().await;
    let id = gate.add_session();
    let mut p = Proc::start(
        dir.path(),
        &[
            "tunnel",
            "--url",
            &gate.url,
            "--session",
            &id,
            "--stdio",
            "r1:22",
        ],
        &[],
    );
    p.write(b"ping").await;
    assert_eq!(p.read(4).await, b"ping");
    gate.end(&id, "kicked");
    assert_eq!(p.code().await, 75, "{}", p.stderr());
    let stderr = p.stderr();
    // One line (timestamped when stderr is not a terminal).
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr
            .trim_end()
            .ends_with("labgate: tunnel to r1:22 closed: session ended: kicked"),
        "{stderr}"
    );
}

#[tokio::test]
async fn forwards_carry_each_connection_in_its_own_tunnel() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (gate, echo) = gate_with_echo().await;
    let id = gate.add_session();
    let mut p = Proc::start(
        dir.path(),
        &[
            "tunnel",
            "-L",
            "0:r1:22",
            "-L",
            "127.0.0.1:0:172.20.20.2:22",
        ],
        &[("LAB_URL", &gate.url), ("LAB_SESSION_ID", &id)],
    );
    let a = p.forward_addr("r1:22").await;
    let b = p.forward_addr("172.20.20.2:22").await;
    assert!(
        a.starts_with("127.0.0.1:") && b.starts_with("127.0.0.1:"),
        "{a} {b}"
    );
    let mut conns = Vec::new();
    for addr in [&a, &a, &b] {
        let mut c = TcpStream::connect(addr.as_str())
            .await
            .expect("connect forward");
        echo_through(&mut c, format!("via {addr}").as_bytes()).await;
        conns.push(c);
    }
    gate.wait_open(3).await;
    assert_eq!(echo.accepted(), 3);
    // A connection that ends closes its tunnel, and only its own.
    drop(conns.pop());
    gate.wait_open(2).await;
    echo_through(&mut conns[0], b"still here").await;
    // Stopped by a signal: 128 + SIGTERM.
    let pid = p.child.id().expect("not reaped yet");
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid fits an i32")),
        nix::sys::signal::Signal::SIGTERM,
    );
    assert_eq!(p.code().await, 143, "{}", p.stderr());
}

#[tokio::test]
async fn forwards_close_with_one_line_and_75_when_the_session_ends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (gate, _echo) = gate_with_echo().await;
    let id = gate.add_session();
    let mut p = Proc::start(
        dir.path(),
        &[
            "tunnel",
            "--url",
            &gate.url,
            "--session",
            &id,
            "-L",
            "0:r1:22",
        ],
        &[],
    );
    let addr = p.forward_addr("r1:22").await;
    let mut c = TcpStream::connect(addr.as_str()).await.expect("connect");
    echo_through(&mut c, b"before").await;
    gate.end(&id, "max_hold");
    assert!(
        closed_by_peer(&mut c).await,
        "the forwarded connection is closed"
    );
    assert_eq!(p.code().await, 75, "{}", p.stderr());
    let stderr = p.stderr();
    let ended: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("session ended"))
        .collect();
    assert_eq!(ended.len(), 1, "{stderr}");
    assert!(
        ended[0].ends_with(&format!(
            "labgate: session ended: max_hold: forwards closed ({addr} -> r1:22), new connections are refused"
        )),
        "{stderr}"
    );
    assert!(
        TcpStream::connect(addr.as_str()).await.is_err(),
        "new connections are refused"
    );
}

#[tokio::test]
async fn forwards_stop_at_the_first_connection_after_the_session_is_gone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (gate, echo) = gate_with_echo().await;
    let id = gate.add_session();
    let mut p = Proc::start(
        dir.path(),
        &[
            "tunnel",
            "--url",
            &gate.url,
            "--session",
            &id,
            "-L",
            "0:r1:22",
        ],
        &[],
    );
    let addr = p.forward_addr("r1:22").await;
    // Ended while no tunnel was open: learnt from the next tunnel's 404.
    gate.end(&id, "deleted");
    let mut c = TcpStream::connect(addr.as_str()).await.expect("connect");
    assert!(closed_by_peer(&mut c).await);
    assert_eq!(p.code().await, 75, "{}", p.stderr());
    assert!(
        p.stderr()
            .contains("session not found (ended, reaped or kicked): forwards closed"),
        "{}",
        p.stderr()
    );
    assert_eq!(echo.accepted(), 0);
    // Unknown from the start: refused before listening.
    let mut p = Proc::start(
        dir.path(),
        &[
            "tunnel",
            "--url",
            &gate.url,
            "--session",
            &id,
            "-L",
            "0:r1:22",
        ],
        &[],
    );
    assert_eq!(p.code().await, 75);
    assert!(p.stderr().contains("no forwards started"), "{}", p.stderr());
}

#[tokio::test]
async fn forwarded_connections_are_bounded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (gate, _echo) = gate_with_echo().await;
    let id = gate.add_session();
    let mut p = Proc::start(
        dir.path(),
        &[
            "tunnel",
            "--url",
            &gate.url,
            "--session",
            &id,
            "-L",
            "0:r1:22",
            "--max-connections",
            "1",
        ],
        &[],
    );
    let addr = p.forward_addr("r1:22").await;
    let mut first = TcpStream::connect(addr.as_str()).await.expect("connect");
    echo_through(&mut first, b"one").await;
    let mut second = TcpStream::connect(addr.as_str()).await.expect("connect");
    assert!(
        closed_by_peer(&mut second).await,
        "over the limit: closed at once"
    );
    p.stderr_line("1 forwarded connections already open (--max-connections)")
        .await;
    assert_eq!(gate.with(|s| s.opened), 1);
    // The first is untouched, and a slot frees when it ends.
    echo_through(&mut first, b"two").await;
    drop(first);
    gate.wait_open(0).await;
    let mut third = TcpStream::connect(addr.as_str()).await.expect("connect");
    echo_through(&mut third, b"three").await;
    drop(p.stdin.take());
    let _ = p.child.start_kill();
    let _ = p.exit().await;
}

#[tokio::test]
async fn forward_to_a_refused_target_reports_and_keeps_listening() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (gate, echo) = gate_with_echo().await;
    let id = gate.add_session();
    let p = Proc::start(
        dir.path(),
        &[
            "tunnel",
            "--url",
            &gate.url,
            "--session",
            &id,
            "-L",
            "0:r2:22",
            "-L",
            "0:r1:22",
        ],
        &[],
    );
    // r2:22 is listed by GET /tunnels in the fake but not allowed when opened.
    let bad = p.forward_addr("r2:22").await;
    let good = p.forward_addr("r1:22").await;
    let mut c = TcpStream::connect(bad.as_str()).await.expect("connect");
    assert!(closed_by_peer(&mut c).await);
    p.stderr_line("r2:22 is not an allowed target").await;
    let mut c = TcpStream::connect(good.as_str()).await.expect("connect");
    echo_through(&mut c, b"ok").await;
    assert_eq!(echo.accepted(), 1);
}

#[tokio::test]
async fn ssh_config_has_a_host_block_per_device() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (gate, _echo) = gate_with_echo().await;
    let id = gate.add_session();
    let mut p = Proc::start(
        dir.path(),
        &["ssh-config"],
        &[("LAB_URL", &gate.url), ("LAB_SESSION_ID", &id)],
    );
    assert_eq!(p.code().await, 0, "{}", p.stderr());
    let mut out = String::new();
    p.stdout.read_to_string(&mut out).await.expect("stdout");
    let exe = env!("CARGO_BIN_EXE_labgate");
    for (host, port) in [("r1", 22), ("r2", 22)] {
        let block = format!(
            "\nHost {host}\n    # 172.20.20.{}, ports {}\n    HostName {host}\n    Port {port}\n    ProxyCommand {exe} tunnel --stdio %h:%p\n",
            if host == "r1" { 2 } else { 3 },
            if host == "r1" { "22 830" } else { "22" },
        );
        assert!(out.contains(&block), "{out}");
    }
    assert!(out.contains(&format!("\nHost 172.20.20.*\n    # 172.20.20.0/24, ports 22 830 57400 5000 443\n    ProxyCommand {exe} tunnel --stdio %h:%p\n")), "{out}");

    let mut p = Proc::start(
        dir.path(),
        &["ssh-config", "--pin", "--url", &gate.url, "--session", &id],
        &[],
    );
    assert_eq!(p.code().await, 0, "{}", p.stderr());
    let mut out = String::new();
    p.stdout.read_to_string(&mut out).await.expect("stdout");
    assert!(
        out.contains(&format!(
            "ProxyCommand {exe} tunnel --url {} --session {id} --stdio %h:%p\n",
            gate.url
        )),
        "{out}"
    );
    let mut p = Proc::start(
        dir.path(),
        &["ssh-config", "--url", &gate.url, "--session", "gone"],
        &[],
    );
    assert_eq!(p.code().await, 66);
    assert!(
        p.stderr().contains("session gone not found"),
        "{}",
        p.stderr()
    );
}

/// `labgate run -L 0:r1:22 -- sh -c SCRIPT` on the fake, in `dir`.
fn run_with_forward(dir: &Path, gate: &FakeGate, script: &str) -> Proc {
    Proc::start(
        dir,
        &[
            "run",
            "--url",
            &gate.url,
            "-L",
            "0:r1:22",
            "-L",
            "0:[fd00::2]:830",
            "--",
            "sh",
            "-c",
            script,
        ],
        &[],
    )
}

/// Waits (bounded) for a file CMD writes; returns its text.
async fn file_text(path: &Path) -> String {
    let deadline = Instant::now() + LONG;
    loop {
        if let Ok(t) = std::fs::read_to_string(path) {
            if t.ends_with('\n') {
                return t;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} never written",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A shell snippet that waits (at most 30 s) for the file `name` to appear.
fn await_file(name: &str) -> &'static str {
    assert_eq!(name, "done");
    "i=0; while [ ! -e done ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done"
}

#[tokio::test]
async fn run_holds_forwards_for_the_command_and_exports_where_they_are() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (gate, echo) = gate_with_echo().await;
    let script = format!(
        "env | grep '^LAB_' | sort > env.tmp && mv env.tmp env.txt; {}",
        await_file("done")
    );
    let mut p = run_with_forward(dir.path(), &gate, &script);
    let env = file_text(&dir.path().join("env.txt")).await;
    let var = |name: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("{name} not in {env}"))
            .to_string()
    };
    let r1 = var("LAB_FORWARD_R1_22");
    let v6 = var("LAB_FORWARD_FD00__2_830");
    assert!(r1.starts_with("127.0.0.1:"), "{env}");
    assert_eq!(
        var("LAB_FORWARDS"),
        format!("r1:22={r1} [fd00::2]:830={v6}")
    );
    assert_eq!(var("LAB_SESSION_ID"), "fake-1");
    let mut c = TcpStream::connect(r1.as_str()).await.expect("connect");
    echo_through(&mut c, b"from the test").await;
    let mut c6 = TcpStream::connect(v6.as_str()).await.expect("connect");
    echo_through(&mut c6, b"v6").await;
    assert_eq!(echo.accepted(), 2);
    std::fs::write(dir.path().join("done"), "").expect("done");
    assert_eq!(p.code().await, 0, "{}", p.stderr());
    // The session is ended (so its tunnels are closed by labgate) and the forwards
    // are gone with labgate run.
    assert!(gate.with(|s| s.queue.is_empty()));
    assert!(closed_by_peer(&mut c).await);
    assert!(TcpStream::connect(r1.as_str()).await.is_err());
}

#[tokio::test]
async fn run_stops_the_command_with_75_when_a_tunnel_says_the_session_ended() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (gate, _echo) = gate_with_echo().await;
    let script = format!(
        "echo $LAB_FORWARD_R1_22 > addr.tmp && mv addr.tmp addr; trap 'echo TERM > term; exit 9' TERM; {}",
        await_file("done")
    );
    let mut p = run_with_forward(dir.path(), &gate, &script);
    let addr = file_text(&dir.path().join("addr")).await.trim().to_string();
    let mut c = TcpStream::connect(addr.as_str()).await.expect("connect");
    echo_through(&mut c, b"x").await;
    gate.end("fake-1", "kicked");
    assert!(closed_by_peer(&mut c).await);
    assert_eq!(p.code().await, 75, "{}", p.stderr());
    assert_eq!(
        file_text(&dir.path().join("term")).await,
        "TERM\n",
        "CMD got SIGTERM"
    );
    let stderr = p.stderr();
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("session ended: kicked"))
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains("forwards closed") && lines[0].contains("new connections are refused"),
        "{stderr}"
    );
    assert!(
        TcpStream::connect(addr.as_str()).await.is_err(),
        "new connections are refused"
    );
}

#[tokio::test]
async fn run_refuses_a_taken_port_before_asking_for_the_lab() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (gate, _echo) = gate_with_echo().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let spec = format!("{port}:r1:22");
    let mut p = Proc::start(
        dir.path(),
        &["run", "--url", &gate.url, "-L", &spec, "--", "true"],
        &[],
    );
    assert_eq!(p.code().await, 71, "{}", p.stderr());
    assert!(
        p.stderr()
            .contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{}",
        p.stderr()
    );
    assert_eq!(gate.with(|s| s.created), 0, "no session was asked for");
}

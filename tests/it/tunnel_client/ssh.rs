//! The real OpenSSH client and server through `labgate tunnel` (--stdio as
//! ProxyCommand, and -L), with the tunnel side played by the in-process fake of the
//! protocol ([`super::fake`]). The same with a real labgate is in tunnel_e2e.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::fake::FakeGate;
use crate::support::{Sshd, NETCONF_HELLO};

const LONG: Duration = Duration::from_secs(30);

fn proxy_command() -> String {
    format!(
        "ProxyCommand={} tunnel --stdio %h:%p",
        env!("CARGO_BIN_EXE_labgate")
    )
}

async fn output(mut cmd: tokio::process::Command) -> std::process::Output {
    cmd.stdin(Stdio::null());
    match tokio::time::timeout(LONG, cmd.output()).await {
        Ok(Ok(o)) => o,
        other => panic!("{cmd:?}: {other:?}"),
    }
}

#[tokio::test]
async fn real_ssh_runs_a_command_through_stdio_proxy_command() {
    let sshd = Sshd::start().await;
    let gate = FakeGate::start(&[("r1:22", sshd.addr)]).await;
    let id = gate.add_session();
    let mut ssh = sshd.ssh(&[
        "-o",
        &proxy_command(),
        &sshd.dest("r1"),
        "echo tunnel-ok $((6*7))",
    ]);
    ssh.env("LAB_URL", &gate.url).env("LAB_SESSION_ID", &id);
    let out = output(ssh).await;
    assert!(out.status.success(), "{out:?}\nsshd:\n{}", sshd.log());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "tunnel-ok 42\n");
    assert_eq!(gate.with(|s| s.tunnel_requests.len()), 1);
}

#[tokio::test]
async fn real_ssh_through_a_forward() {
    let sshd = Sshd::start().await;
    let gate = FakeGate::start(&[("r1:22", sshd.addr)]).await;
    let id = gate.add_session();
    let dir = tempfile::tempdir().expect("tempdir");
    let stderr = dir.path().join("stderr");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let spec = format!("{port}:r1:22");
    let mut fwd = tokio::process::Command::new(env!("CARGO_BIN_EXE_labgate"))
        .args(["tunnel", "--url", &gate.url, "--session", &id, "-L", &spec])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).expect("stderr"))
        .kill_on_drop(true)
        .spawn()
        .expect("labgate tunnel -L");
    let deadline = Instant::now() + LONG;
    while !std::fs::read_to_string(&stderr)
        .unwrap_or_default()
        .contains("forwarding")
    {
        assert!(Instant::now() < deadline, "no forward");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Twice: each ssh connection is its own tunnel.
    for n in 0..2 {
        let port = port.to_string();
        let ssh = sshd.ssh(&[
            "-p",
            &port,
            &sshd.dest("127.0.0.1"),
            &format!("echo forward-{n}"),
        ]);
        let out = output(ssh).await;
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("forward-{n}\n")
        );
    }
    assert_eq!(gate.with(|s| s.opened), 2);
    let _ = fwd.start_kill();
    let _ = fwd.wait().await;
}

#[tokio::test]
async fn ending_the_session_ends_a_live_interactive_ssh() {
    let sshd = Sshd::start().await;
    let gate = FakeGate::start(&[("r1:22", sshd.addr)]).await;
    let id = gate.add_session();
    // A live session: `cat` echoes our lines until the connection goes.
    let mut ssh = sshd.ssh(&["-o", &proxy_command(), &sshd.dest("r1"), "cat"]);
    ssh.env("LAB_URL", &gate.url)
        .env("LAB_SESSION_ID", &id)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = ssh.spawn().expect("ssh");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    stdin.write_all(b"still there?\n").await.expect("write");
    let echoed = tokio::time::timeout(LONG, lines.next_line()).await;
    assert!(
        matches!(&echoed, Ok(Ok(Some(l))) if l == "still there?"),
        "{echoed:?}"
    );
    let ended = Instant::now();
    gate.end(&id, "kicked");
    let status = tokio::time::timeout(LONG, child.wait())
        .await
        .expect("ssh ends")
        .expect("status");
    let took = ended.elapsed();
    println!(
        "interactive ssh ended {took:?} after the session's end (fake gate: client side only)"
    );
    assert_eq!(status.code(), Some(255), "ssh reports the lost connection");
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        use tokio::io::AsyncReadExt;
        let _ = e.read_to_string(&mut err).await;
    }
    assert!(
        err.contains("labgate: tunnel to r1:22 closed: session ended: kicked"),
        "{err}"
    );
}

#[tokio::test]
async fn netconf_over_ssh_with_the_config_labgate_ssh_config_prints() {
    let sshd = Sshd::start().await;
    let gate = FakeGate::start(&[("r1:830", sshd.addr)]).await;
    let id = gate.add_session();
    let env = [
        ("LAB_URL", gate.url.as_str()),
        ("LAB_SESSION_ID", id.as_str()),
    ];
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_labgate"));
    cmd.arg("ssh-config").envs(env);
    let config = output(cmd).await;
    assert!(config.status.success(), "{config:?}");
    let path = sshd.dir().join("labgate.conf");
    std::fs::write(&path, &config.stdout).expect("write config");
    // What ncclient and scrapli do: the `netconf` subsystem on port 830 of `r1`,
    // reached through the config's ProxyCommand (%h:%p = r1:830).
    let mut ssh = sshd.ssh_with_config(&path, &["-p", "830", "-s", &sshd.dest("r1"), "netconf"]);
    ssh.envs(env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = ssh.spawn().expect("ssh");
    let client_hello = "<hello xmlns=\"urn:ietf:params:xml:ns:netconf:base:1.0\"><capabilities><capability>urn:ietf:params:netconf:base:1.0</capability></capabilities></hello>]]>]]>";
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(client_hello.as_bytes())
        .await
        .expect("hello");
    drop(stdin);
    let out = tokio::time::timeout(LONG, child.wait_with_output())
        .await
        .expect("ssh ends")
        .expect("output");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{NETCONF_HELLO}{client_hello}")
    );
    let requests = gate.with(|s| s.tunnel_requests.clone());
    assert_eq!(requests, vec![("/lab/tunnel/r1:830".to_string(), Some(id))]);
}

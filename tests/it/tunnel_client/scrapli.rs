//! scrapli through a device tunnel, the docs/operations.md recipe as tested
//! (`tests/compat/scrapli_recipe.py`): scrapli's GenericDriver with the `system`
//! transport runs the real OpenSSH client, whose ssh config's `ProxyCommand labgate
//! tunnel --stdio %h:%p` reaches the test's real sshd (`netconf::NetconfLab`) through a
//! real labgate. The device is the sshd's login shell.

use std::process::{Output, Stdio};
use std::time::Duration;

use super::netconf::{compat, NetconfLab};
use crate::support::*;

const LONG: Duration = Duration::from_secs(90);

/// The recipe against `r1` as session `id`, sending `command`.
async fn scrapli(lab: &NetconfLab, id: &str, command: &str) -> Output {
    let python = tokio::task::spawn_blocking(crate::neops_compat::venv_python)
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    let mut py = tokio::process::Command::new(python);
    py.arg(compat("scrapli_recipe.py"))
        .arg("r1")
        .arg(lab.sshd.addr.port().to_string())
        .arg(lab.ssh_config())
        .arg(command)
        .env("LAB_URL", lab.gw.base_url())
        .env("LAB_SESSION_ID", id)
        .env("HOME", lab.dir.path())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("PYTHONPATH")
        .env_remove("SSH_AUTH_SOCK")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    tokio::time::timeout(LONG, py.output())
        .await
        .expect("scrapli ends")
        .expect("run python")
}

/// What sshd logs (LogLevel VERBOSE) for every TCP connection it accepts.
const SSHD_CONNECTION: &str = "Connection from 127.0.0.1";

/// TCP connections sshd has accepted so far, once it has logged the one `Sshd::start`
/// made to see it listening (so later counts compare like with like).
async fn sshd_connections(lab: &NetconfLab) -> usize {
    eventually(
        Duration::from_secs(10),
        "sshd logs the start-up probe's connection",
        || async {
            let n = lab.sshd.log().matches(SSHD_CONNECTION).count();
            (n >= 1).then_some(n)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrapli_generic_driver_runs_a_command_through_the_ssh_config_proxy_command() {
    let lab = NetconfLab::start().await;
    let (id, _) = create_session(&lab.gw).await;
    let before = sshd_connections(&lab).await;
    // The shell expands the arithmetic: its answer, not the echoed command line.
    let out = scrapli(&lab, &id, "echo reached-through-labgate-$((6*7))").await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    lab.assert_succeeded(&out);
    assert_eq!(stdout.trim(), "reached-through-labgate-42", "{out:?}");
    assert_eq!(
        sshd_connections(&lab).await,
        before + 1,
        "{}",
        lab.sshd.log()
    );
    lab.one_tunnel_closed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrapli_of_a_waiting_session_fails_with_labgates_reason_and_never_reaches_the_device() {
    let lab = NetconfLab::start().await;
    let (_holder, _) = create_session(&lab.gw).await;
    let (waiting, position) = create_session(&lab.gw).await;
    assert_eq!(position, 1);
    let before = sshd_connections(&lab).await;
    let out = scrapli(&lab, &waiting, "echo never").await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    // scrapli's own error, then labgate's reason (read from scrapli's channel log).
    assert!(stderr.starts_with("ScrapliConnectionError: "), "{stderr}");
    assert!(
        stderr.contains("labgate: tunnel to r1:")
            && stderr.contains("the session is still waiting for the lab (423"),
        "{stderr}"
    );
    // Refused before anything connected: no tunnel, and sshd never saw a connection.
    assert!(lab.gw.audit_events("tunnel_closed").is_empty());
    let refused = lab.gw.audit_events("tunnel_refused");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0]["reason"], "waiting");
    assert_eq!(sshd_connections(&lab).await, before, "{}", lab.sshd.log());
}

//! NETCONF through a device tunnel, the docs/operations.md recipe as tested: a real
//! sshd whose `netconf` subsystem is a tiny NETCONF 1.0 server
//! (`tests/compat/fake_netconf.py`), reached through a real labgate by the real
//! `ssh -s ... netconf` and by ncclient (from the compat venv), both with the ssh
//! config's `ProxyCommand labgate tunnel --stdio %h:%p`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::support::*;

const LONG: Duration = Duration::from_secs(60);

pub(super) fn compat(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/compat")
        .join(file)
}

/// sshd with the fake NETCONF server as its subsystem, a labgate whose device `r1`
/// is that sshd, and an ssh config for `r1` with the ProxyCommand (and a known_hosts
/// naming the host key as `[r1]:PORT`, as ncclient looks it up). The scrapli tests
/// (`super::scrapli`) use it too: its sshd's shell is their device.
pub(super) struct NetconfLab {
    pub(super) sshd: Sshd,
    pub(super) gw: Gateway,
    _http: Upstream,
    pub(super) dir: tempfile::TempDir,
}

impl NetconfLab {
    /// A client command through the lab succeeded; both servers' logs if not.
    pub(super) fn assert_succeeded(&self, out: &std::process::Output) {
        assert!(
            out.status.success(),
            "{out:?}\nsshd:\n{}\nlabgate:\n{}",
            self.sshd.log(),
            self.gw.log_tail()
        );
    }

    /// The client used one tunnel, closed once it was done (its audit line).
    pub(super) async fn one_tunnel_closed(&self) {
        eventually(
            Duration::from_secs(10),
            "the tunnel's audit line",
            || async { (self.gw.audit_events("tunnel_closed").len() == 1).then_some(()) },
        )
        .await;
    }

    pub(super) async fn start() -> NetconfLab {
        let python = require_tool("python3");
        let subsystem = format!(
            "{} {}",
            python.display(),
            compat("fake_netconf.py").display()
        );
        let sshd = Sshd::start_with_netconf(Some(&subsystem)).await;
        let http = Upstream::start().await;
        let gw = Gateway::start(
            &Cfg::new(http.addr).tunnels(TunnelsCfg::new(4).device("r1", sshd.addr)),
        )
        .await;
        let dir = tempfile::tempdir().expect("tempdir");
        let port = sshd.addr.port();
        std::fs::write(
            dir.path().join("known_hosts"),
            format!("[r1]:{port} {}\n", sshd.host_key()),
        )
        .expect("known_hosts");
        std::fs::write(
            dir.path().join("ssh_config"),
            format!(
                "Host r1\n  User {user}\n  IdentityFile {key}\n  IdentitiesOnly yes\n  \
                 UserKnownHostsFile {kh}\n  StrictHostKeyChecking yes\n  \
                 ProxyCommand {labgate} tunnel --stdio %h:%p\n",
                user = sshd.user,
                key = sshd.user_key().display(),
                kh = dir.path().join("known_hosts").display(),
                labgate = env!("CARGO_BIN_EXE_labgate"),
            ),
        )
        .expect("ssh_config");
        NetconfLab {
            sshd,
            gw,
            _http: http,
            dir,
        }
    }

    pub(super) fn ssh_config(&self) -> PathBuf {
        self.dir.path().join("ssh_config")
    }
}

const HELLO: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><hello xmlns=\"urn:ietf:params:xml:ns:netconf:base:1.0\"><capabilities><capability>urn:ietf:params:netconf:base:1.0</capability></capabilities></hello>]]>]]>";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_ssh_netconf_subsystem_through_proxy_command() {
    let lab = NetconfLab::start().await;
    let (id, _) = create_session(&lab.gw).await;
    let port = lab.sshd.addr.port().to_string();
    let mut ssh = lab
        .sshd
        .ssh_with_config(&lab.ssh_config(), &["-p", &port, "-s", "r1", "netconf"]);
    ssh.env("LAB_URL", lab.gw.base_url())
        .env("LAB_SESSION_ID", &id)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = ssh.spawn().expect("ssh");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(
            format!(
                "{HELLO}<rpc message-id=\"101\" xmlns=\"urn:ietf:params:xml:ns:netconf:base:1.0\">\
                 <get-config><source><running/></source></get-config></rpc>]]>]]>\
                 <rpc message-id=\"102\" xmlns=\"urn:ietf:params:xml:ns:netconf:base:1.0\">\
                 <close-session/></rpc>]]>]]>"
            )
            .as_bytes(),
        )
        .await
        .expect("write rpcs");
    let out = tokio::time::timeout(LONG, child.wait_with_output())
        .await
        .expect("ssh ends after close-session")
        .expect("output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    lab.assert_succeeded(&out);
    assert!(stdout.contains("<session-id>7</session-id>"), "{stdout}");
    assert!(
        stdout.contains("message-id=\"101\"") && stdout.contains("reached through labgate"),
        "{stdout}"
    );
    assert!(stdout.contains("message-id=\"102\""), "{stdout}");
    lab.one_tunnel_closed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ncclient_gets_the_config_through_the_ssh_config_proxy_command() {
    let lab = NetconfLab::start().await;
    let (id, _) = create_session(&lab.gw).await;
    let python = tokio::task::spawn_blocking(crate::neops_compat::venv_python)
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    let mut py = tokio::process::Command::new(python);
    py.arg(compat("ncclient_recipe.py"))
        .arg("r1")
        .arg(lab.sshd.addr.port().to_string())
        .arg(lab.ssh_config())
        .env("LAB_URL", lab.gw.base_url())
        .env("LAB_SESSION_ID", &id)
        .env("HOME", lab.dir.path())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("PYTHONPATH")
        .env_remove("SSH_AUTH_SOCK")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(LONG, py.output())
        .await
        .expect("ncclient ends")
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    lab.assert_succeeded(&out);
    assert!(
        stdout.contains("<description>reached through labgate</description>"),
        "{stdout}"
    );
    lab.one_tunnel_closed().await;
}

//! A real OpenSSH server for the tunnel tests: Debian's `/usr/sbin/sshd` on a loopback
//! port, with a throwaway host key and user key made by `ssh-keygen` in a temp dir,
//! and the real `ssh` client set up to trust exactly that host key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SSHD: &str = "/usr/sbin/sshd";

/// What the `netconf` subsystem says first (NETCONF 1.0 end-of-message framing).
pub const NETCONF_HELLO: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><hello xmlns=\"urn:ietf:params:xml:ns:netconf:base:1.0\"><capabilities><capability>urn:ietf:params:netconf:base:1.0</capability></capabilities><session-id>7</session-id></hello>]]>]]>";

/// The name the host key is known under, whatever name ssh is given.
const HOST_KEY_ALIAS: &str = "labgate-test-sshd";

pub struct Sshd {
    pub addr: SocketAddr,
    pub user: String,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

fn keygen(path: &Path) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "labgate-test", "-f"])
        .arg(path)
        .output()
        .expect("ssh-keygen (install openssh-client: .ci/setup --test)");
    assert!(out.status.success(), "ssh-keygen: {out:?}");
}

fn current_user() -> String {
    let out = Command::new("id").arg("-un").output().expect("id -un");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl Sshd {
    /// Starts sshd on a free loopback port (a few tries if the port is taken in
    /// between); waits until it accepts connections.
    pub async fn start() -> Sshd {
        Sshd::start_with_netconf(None).await
    }

    /// [`Sshd::start`] with `netconf` as the `netconf` subsystem's command line instead
    /// of the stand-in that echoes after its hello.
    pub async fn start_with_netconf(netconf: Option<&str>) -> Sshd {
        assert!(
            Path::new(SSHD).exists(),
            "{SSHD} missing: install openssh-server (.ci/setup --test)"
        );
        // sshd refuses to start without its privilege separation directory.
        let _ = std::fs::create_dir_all("/run/sshd");
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        keygen(&d.join("host_key"));
        keygen(&d.join("user_key"));
        std::fs::copy(d.join("user_key.pub"), d.join("authorized_keys")).expect("authorized_keys");
        let host_pub = std::fs::read_to_string(d.join("host_key.pub")).expect("host key");
        let mut fields = host_pub.split_whitespace();
        let (kind, key) = (fields.next().expect("kind"), fields.next().expect("key"));
        std::fs::write(
            d.join("known_hosts"),
            format!("{HOST_KEY_ALIAS} {kind} {key}\n"),
        )
        .expect("known_hosts");
        // A stand-in NETCONF server for the `netconf` subsystem: its hello, then it
        // echoes what the client sends until the client closes the channel.
        std::fs::write(
            d.join("netconf.sh"),
            format!("printf '%s' '{NETCONF_HELLO}'\nexec cat\n"),
        )
        .expect("netconf.sh");
        let user = current_user();
        for _ in 0..5 {
            let port = {
                let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
                l.local_addr().expect("addr").port()
            };
            let config = d.join("sshd_config");
            std::fs::write(
                &config,
                format!(
                    "Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nPidFile none\n\
                     AuthorizedKeysFile {ak}\nAuthenticationMethods publickey\n\
                     PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                     PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n\
                     AllowUsers {user}\nMaxStartups 20\nLoginGraceTime 30\nLogLevel VERBOSE\n\
                     Subsystem netconf {nc}\n",
                    hk = d.join("host_key").display(),
                    ak = d.join("authorized_keys").display(),
                    nc = netconf
                        .map(str::to_string)
                        .unwrap_or_else(|| format!("/bin/sh {}", d.join("netconf.sh").display())),
                ),
            )
            .expect("sshd_config");
            let log = std::fs::File::create(d.join("sshd.log")).expect("log");
            let mut child = Command::new(SSHD)
                .args(["-D", "-e", "-f"])
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start sshd");
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // exited: port taken in between, try another
                }
                if tokio::net::TcpStream::connect(addr).await.is_ok() {
                    return Sshd {
                        addr,
                        user,
                        dir,
                        child: Some(child),
                    };
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        panic!(
            "sshd did not start; log:\n{}",
            std::fs::read_to_string(d.join("sshd.log")).unwrap_or_default()
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    /// `ssh` with the throwaway user key and exactly the test host key trusted; no
    /// user config, no agent, no prompts. `args` follow (options, destination, command).
    pub fn ssh(&self, args: &[&str]) -> tokio::process::Command {
        self.ssh_with_config(Path::new("/dev/null"), args)
    }

    /// [`Sshd::ssh`] reading `config` (`-F`) instead of no config at all.
    pub fn ssh_with_config(&self, config: &Path, args: &[&str]) -> tokio::process::Command {
        let mut c = tokio::process::Command::new("ssh");
        c.args(self.ssh_options(config))
            .args(args)
            .env_remove("SSH_AUTH_SOCK")
            .kill_on_drop(true);
        c
    }

    /// The options [`Sshd::ssh_with_config`] gives `ssh` (for a command line built by
    /// hand, e.g. in a shell script): the throwaway key, exactly the test host key
    /// trusted (under an alias, whatever name ssh is given), no agent, no prompts.
    pub fn ssh_options(&self, config: &Path) -> Vec<String> {
        let d = self.dir.path();
        let o = |s: String| ["-o".to_string(), s];
        let mut v = vec![
            "-F".to_string(),
            config.display().to_string(),
            "-i".to_string(),
            d.join("user_key").display().to_string(),
        ];
        for opt in [
            "IdentitiesOnly=yes".to_string(),
            "BatchMode=yes".to_string(),
            format!("UserKnownHostsFile={}", d.join("known_hosts").display()),
            "StrictHostKeyChecking=yes".to_string(),
            "GlobalKnownHostsFile=/dev/null".to_string(),
            format!("HostKeyAlias={HOST_KEY_ALIAS}"),
            "ConnectTimeout=20".to_string(),
            "LogLevel=ERROR".to_string(),
        ] {
            v.extend(o(opt));
        }
        v
    }

    /// `user@host` for ssh.
    pub fn dest(&self, host: &str) -> String {
        format!("{}@{host}", self.user)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn known_hosts(&self) -> PathBuf {
        self.dir.path().join("known_hosts")
    }

    /// The throwaway user key (its private half).
    pub fn user_key(&self) -> PathBuf {
        self.dir.path().join("user_key")
    }

    /// The host key's `TYPE BASE64` (for a known_hosts line under another name).
    pub fn host_key(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("host_key.pub")).expect("host key");
        text.split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

//! Child processes and the machine around the tests: a bounded run of a command in its
//! own process group, signals to children we started (through `nix`, no `unsafe`), free
//! loopback ports, and the external tools the deployment tests need. Never signals a
//! process it did not start.

use std::net::TcpListener as StdTcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

/// Runs `cmd` to completion in its own process group, capturing stdout and stderr; after
/// `timeout` the whole group is killed and the test fails. Whatever the command left
/// running in its group (browser helpers, say) is killed when it exits.
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> std::process::Output {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            let _ = tx.send(buf);
        });
        rx
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => break None,
        }
    };
    // The child leads its own group (`process_group(0)`), so its pid is the group id.
    // ESRCH when nothing is left in it.
    let _ = killpg(child_pid(&child), Signal::SIGKILL);
    let status = match status {
        Some(s) => s,
        None => {
            let _ = child.wait();
            let stderr = err.recv_timeout(Duration::from_secs(5)).unwrap_or_default();
            panic!(
                "{what} did not finish within {timeout:?}; killed. stderr:\n{}",
                String::from_utf8_lossy(&stderr)
            );
        }
    };
    let collect = |rx: std::sync::mpsc::Receiver<Vec<u8>>| {
        rx.recv_timeout(Duration::from_secs(5)).unwrap_or_default()
    };
    std::process::Output {
        status,
        stdout: collect(out),
        stderr: collect(err),
    }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    let l = StdTcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// The path of an external tool the deployment tests run (`promtool`, `prometheus`,
/// `systemd-analyze`). A missing tool is a failure, not a skip: `.ci/setup` installs them.
pub fn require_tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("{name} is not installed: run .ci/setup (Debian packages prometheus, systemd)")
        })
}

/// The repository root (where Cargo.toml is).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The pid of a child we started, as `nix` takes it.
pub fn child_pid(child: &Child) -> Pid {
    // Linux pids are at most 2^22 (`pid_max`), so they always fit an i32.
    Pid::from_raw(i32::try_from(child.id()).expect("pid fits an i32"))
}

/// Sends `sig` to a child we started. Only for a child not yet reaped (its `Child` still
/// owned, `try_wait` not yet `Some`), so the pid cannot belong to anyone else; ESRCH
/// (it exited meanwhile, a zombie) is ignored.
pub fn send_signal(child: &Child, sig: Signal) {
    let _ = kill(child_pid(child), sig);
}

/// The effective uid of the test process (the uid labgate's admin plane sees).
pub fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

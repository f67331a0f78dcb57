//! Handoff hooks: an HTTP call or a command at a turn's start, end, reset, and the health
//! check that gates the next holder (contract §8).
//!
//! An HTTP hook gets a `POST` of the event as JSON (a health check: a `GET`), and passes
//! on any `2xx`. A command hook gets the event as JSON on its standard input, and passes
//! on exit status 0; it runs in its own process group, killed whole on timeout. Every
//! call is bounded by its timeout and its answer is read to at most 64 KiB.
//!
//! Owns running a hook and nothing else: which hook runs when is the lane machine's
//! decision. Must never put the token anywhere but the request body or the command's
//! standard input (never in argv, the environment, a URL or a log line).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

/// Where a hook goes.
#[derive(Clone, Debug)]
pub enum Target {
    /// `url` as written (`http://host:port/path`); `addr` is its host resolved at start-up.
    Http { url: String, addr: SocketAddr },
    /// argv; `argv[0]` is an absolute path.
    Command { argv: Vec<String> },
}

#[derive(Clone, Debug)]
pub struct Hook {
    pub target: Target,
    pub timeout: Duration,
}

/// Answers are not used beyond pass or fail; reading them keeps connections reusable.
const MAX_ANSWER: usize = 64 * 1024;

/// Why a hook did not pass (a label for metrics and logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookError {
    Timeout,
    /// Could not connect or start the command.
    Unreachable,
    /// A non-2xx answer or a non-zero exit.
    Refused,
}

impl HookError {
    pub fn as_str(&self) -> &'static str {
        match self {
            HookError::Timeout => "timeout",
            HookError::Unreachable => "unreachable",
            HookError::Refused => "refused",
        }
    }
}

/// Runs hooks; one per lane, sharing its HTTP connection pool.
pub struct Runner {
    client: reqwest::Client,
}

impl Runner {
    pub fn new() -> Result<Runner, reqwest::Error> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()?;
        Ok(Runner { client })
    }

    /// Runs `hook` with `event` (a JSON object); `get` makes an HTTP hook a `GET` without
    /// a body (health checks).
    pub async fn run(
        &self,
        hook: &Hook,
        event: &serde_json::Value,
        get: bool,
    ) -> Result<(), HookError> {
        match tokio::time::timeout(hook.timeout, self.call(&hook.target, event, get)).await {
            Ok(r) => r,
            Err(_) => Err(HookError::Timeout),
        }
    }

    async fn call(
        &self,
        target: &Target,
        event: &serde_json::Value,
        get: bool,
    ) -> Result<(), HookError> {
        match target {
            Target::Http { url, addr } => self.http(url, *addr, event, get).await,
            Target::Command { argv } => command(argv, event).await,
        }
    }

    async fn http(
        &self,
        url: &str,
        addr: SocketAddr,
        event: &serde_json::Value,
        get: bool,
    ) -> Result<(), HookError> {
        // The host was resolved at start-up; connect there, keep the URL's Host header.
        let mut parsed = reqwest::Url::parse(url).map_err(|_| HookError::Unreachable)?;
        let host = parsed
            .host_str()
            .map(str::to_string)
            .ok_or(HookError::Unreachable)?;
        let authority = match parsed.port() {
            Some(p) => format!("{host}:{p}"),
            None => host,
        };
        parsed
            .set_ip_host(addr.ip())
            .map_err(|_| HookError::Unreachable)?;
        parsed
            .set_port(Some(addr.port()))
            .map_err(|_| HookError::Unreachable)?;
        let req = if get {
            self.client.get(parsed)
        } else {
            self.client.post(parsed).json(event)
        };
        let mut resp = req
            .header(http::header::HOST, authority)
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    HookError::Timeout
                } else {
                    HookError::Unreachable
                }
            })?;
        let ok = resp.status().is_success();
        let mut seen = 0;
        while let Ok(Some(chunk)) = resp.chunk().await {
            seen += chunk.len();
            if seen > MAX_ANSWER {
                break;
            }
        }
        if ok {
            Ok(())
        } else {
            Err(HookError::Refused)
        }
    }
}

/// Kills a command's whole process group when dropped (timeout or cancellation).
struct Group(Option<u32>);

impl Drop for Group {
    fn drop(&mut self) {
        if let Some(pid) = self.0.and_then(|p| i32::try_from(p).ok()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

async fn command(argv: &[String], event: &serde_json::Value) -> Result<(), HookError> {
    let Some((program, args)) = argv.split_first() else {
        return Err(HookError::Unreachable);
    };
    let mut child = tokio::process::Command::new(PathBuf::from(program))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|_| HookError::Unreachable)?;
    let mut group = Group(child.id());
    if let Some(mut stdin) = child.stdin.take() {
        let mut line = serde_json::to_vec(event).unwrap_or_default();
        line.push(b'\n');
        // A hook that does not read its input is not an error.
        let _ = stdin.write_all(&line).await;
    }
    let status = child.wait().await.map_err(|_| HookError::Unreachable)?;
    // Exited: its group may still hold children, which the hook owns; leave them be.
    group.0 = None;
    if status.success() {
        Ok(())
    } else {
        Err(HookError::Refused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(script: &str, timeout: Duration) -> Hook {
        Hook {
            target: Target::Command {
                argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
            },
            timeout,
        }
    }

    #[tokio::test]
    async fn a_command_hook_gets_the_event_on_stdin_and_passes_on_exit_zero() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("event");
        let hook = cmd(&format!("cat > {}", out.display()), Duration::from_secs(10));
        let runner = Runner::new().unwrap();
        let event = serde_json::json!({"event": "start", "seq": 3});
        runner.run(&hook, &event, false).await.unwrap();
        let got: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap();
        assert_eq!(got, event);
        let fail = cmd("exit 3", Duration::from_secs(10));
        assert_eq!(
            runner.run(&fail, &event, false).await,
            Err(HookError::Refused)
        );
    }

    #[tokio::test]
    async fn a_command_hook_past_its_timeout_is_killed_with_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("late");
        let hook = cmd(
            &format!("(sleep 1; touch {}) & sleep 30", marker.display()),
            Duration::from_millis(200),
        );
        let started = std::time::Instant::now();
        let r = Runner::new()
            .unwrap()
            .run(&hook, &serde_json::json!({}), false)
            .await;
        assert_eq!(r, Err(HookError::Timeout));
        assert!(started.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(!marker.exists(), "the hook's child outlived the timeout");
    }

    #[tokio::test]
    async fn a_missing_program_is_unreachable() {
        let hook = Hook {
            target: Target::Command {
                argv: vec!["/nonexistent/hook".into()],
            },
            timeout: Duration::from_secs(1),
        };
        let r = Runner::new()
            .unwrap()
            .run(&hook, &serde_json::json!({}), false)
            .await;
        assert_eq!(r, Err(HookError::Unreachable));
    }
}

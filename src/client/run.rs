//! `labgate run`: hold the lab for exactly the length of one command. Creates a
//! session, waits for ACTIVE (long-poll when the server has it, polling otherwise),
//! runs CMD with the session (and its `-L` forwards) in its environment while
//! heartbeating, and ends the session on every way out.
//!
//! Owns the order of those steps and what each failure means for the exit code. Must
//! never leave a session behind on a path it controls (only SIGKILL of labgate itself
//! can), and never run CMD without an ACTIVE session.

use std::ffi::OsString;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio::sync::mpsc;

use super::child::{self, Cmd};
use super::exit;
use super::forward::{Event, ForwardSpec, Forwards, Running};
use super::http::{ClientError, Ended, LabClient};
use super::progress::{seconds, Progress};
use super::tls::Trust;
use super::tunnel::Dialer;
use super::tunnel_cmd::describe;
use super::watch::{sleep_until_opt, Interrupt, Signals, Watch};
use crate::label::{self, Label};

/// Long-poll length asked of the server (contract §7 allows up to 60 s).
const LONG_POLL: Duration = Duration::from_secs(20);

/// Without long-poll, at most one status request this often.
const POLL_EVERY: Duration = Duration::from_secs(2);

/// Long-poll length of the holder's watch on its own session (`while=active`).
const WATCH_POLL: u64 = 20;

/// Without `while=active`, the holder asks about its session this often, so a kick,
/// expiry or reap is seen within about this long whatever the heartbeat.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// Heartbeat interval when the server does not say its active timeout
/// (neops-remote-lab's default active timeout is 300 s).
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(100);

/// Pause before asking again after `429`/`503` without `Retry-After`.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(5);

pub struct RunOptions {
    pub url: String,
    pub wait_timeout: Option<Duration>,
    pub heartbeat: Option<Duration>,
    pub kill_after: Duration,
    pub connect_retry: Duration,
    /// For an `https://` URL (`--ca`, `LAB_CA`).
    pub trust: Trust,
    pub quiet: bool,
    pub command: Vec<OsString>,
    /// `-L`: bound before the session is asked for, accepting once it is ACTIVE.
    pub forwards: Vec<ForwardSpec>,
    pub max_connections: usize,
    /// Sent with `POST /session`, for the status page and the operators (see
    /// [`label_for`]).
    pub label: Label,
}

/// What `labgate run` tells the server about its session: `--owner` and `--note` as
/// given (checked by the server's own rules: one-line error), else the defaults, cut to
/// the limits: the owner `user@host`, the note the CI job's URL when it runs in CI
/// ([`ci_job_url`]). An empty flag sends no value. `env` reads an environment variable;
/// `host`: this machine's name.
pub fn label_for(
    owner: Option<&str>,
    note: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
    host: Option<&str>,
) -> Result<Label, String> {
    let var = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    let given = serde_json::json!({ "owner": owner, "note": note });
    let mut label = label::parse(
        Some(b"application/json"),
        given.to_string().as_bytes(),
        false,
    )
    .map_err(|e| {
        let item = &e.detail[0];
        format!(
            "--{}: {}",
            item["loc"][1].as_str().unwrap_or("owner"),
            item["msg"].as_str().unwrap_or("not accepted")
        )
    })?;
    let fit = |v: String, max: usize| {
        Some(label::truncate(&label::printable(&v), max)).filter(|v| !v.is_empty())
    };
    if owner.is_none() {
        let user = var("USER").or_else(|| var("LOGNAME"));
        let host = host.map(str::trim).filter(|h| !h.is_empty());
        let who = match (user, host) {
            (Some(u), Some(h)) => Some(format!("{u}@{h}")),
            (u, h) => u.or(h.map(str::to_string)),
        };
        label.owner = who.and_then(|w| fit(w, label::MAX_OWNER));
    }
    if note.is_none() {
        label.note = ci_job_url(&var).and_then(|u| fit(u, label::MAX_NOTE));
    }
    Ok(label)
}

/// The URL of the CI job this runs in, from the usual variables: GitHub Actions
/// (`$GITHUB_SERVER_URL/$GITHUB_REPOSITORY/actions/runs/$GITHUB_RUN_ID`), GitLab
/// (`CI_JOB_URL`), Buildkite (`BUILDKITE_BUILD_URL`), Jenkins (`BUILD_URL`, last: the
/// most generic name).
pub fn ci_job_url(env: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    let var = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    if let (Some(server), Some(repo), Some(run)) = (
        var("GITHUB_SERVER_URL"),
        var("GITHUB_REPOSITORY"),
        var("GITHUB_RUN_ID"),
    ) {
        return Some(format!(
            "{}/{repo}/actions/runs/{run}",
            server.trim_end_matches('/')
        ));
    }
    ["CI_JOB_URL", "BUILDKITE_BUILD_URL", "BUILD_URL"]
        .into_iter()
        .find_map(var)
}

/// This machine's name, for the default owner (Linux: the kernel's; else `HOSTNAME`).
pub fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

/// The user's name, for the default owner when neither `USER` nor `LOGNAME` is set.
pub fn user_name() -> Option<String> {
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.name)
}

/// Runs `labgate run`; returns the process exit code.
pub async fn run(opts: RunOptions) -> u8 {
    let progress = Progress::new(opts.quiet);
    let client = match LabClient::new(&opts.url, opts.connect_retry, &opts.trust) {
        Ok(c) => c,
        Err(e) => {
            progress.error(&e);
            return exit::USAGE;
        }
    };
    // Before asking for the lab: a port already taken is an error at once, not
    // after the wait. Connections wait in the backlog until the session is ACTIVE.
    let forwards = match Forwards::bind(&opts.forwards).await {
        Ok(f) => f,
        Err(e) => {
            progress.error(&e);
            return exit::OSERR;
        }
    };
    // Before the first request, so a cancel during it is seen right after.
    let signals = match Signals::new() {
        Ok(s) => s,
        Err(e) => {
            progress.error(&format!("cannot watch signals: {e}"));
            return exit::SOFTWARE;
        }
    };
    let started = Instant::now();
    let mut watch = Watch {
        signals,
        deadline: opts.wait_timeout.map(|t| started + t),
        started,
        position: 0,
        progress,
    };

    let (id, active_timeout) = match acquire(&client, &mut watch, &opts).await {
        Ok(acquired) => acquired,
        Err(code) => return code,
    };
    // A cancel that came during the last request must not start CMD.
    if let Err(i) = watch.guard(std::future::ready(()), false).await {
        return interrupted(&client, Some(&id), &mut watch, &opts, i).await;
    }
    watch.progress.stop_waiting();
    let heartbeat = heartbeat_interval(opts.heartbeat, active_timeout);
    watch.progress.say(&format!(
        "lab acquired after {} (session {}), running: {}",
        seconds(started.elapsed()),
        tag(&id),
        shown(&opts.command)
    ));
    let held = Instant::now();
    let (code, lost_at) = hold(&client, &id, heartbeat, &mut watch, &opts, forwards).await;
    // A lost session held the lab until the loss was seen, not until CMD exited.
    let held_for = lost_at
        .unwrap_or_else(Instant::now)
        .saturating_duration_since(held);
    if end(&client, &id, &watch.progress).await {
        watch.progress.say(&format!(
            "session {} ended after holding the lab {}; exit status {code}",
            tag(&id),
            seconds(held_for)
        ));
    }
    code
}

/// `--heartbeat`, else a third of the server's active timeout (so two heartbeats may
/// be lost before the session is reaped), else [`DEFAULT_HEARTBEAT`].
fn heartbeat_interval(flag: Option<Duration>, active_timeout: Option<Duration>) -> Duration {
    flag.unwrap_or_else(|| {
        active_timeout
            .map(|t| (t / 3).max(Duration::from_millis(100)))
            .unwrap_or(DEFAULT_HEARTBEAT)
    })
}

/// Creates a session and waits until it is ACTIVE: (id, the server's active timeout).
/// On failure the session (if any) has been ended and the exit code is returned.
async fn acquire(
    client: &LabClient,
    watch: &mut Watch,
    opts: &RunOptions,
) -> Result<(String, Option<Duration>), u8> {
    let created = loop {
        // Not interruptible: a `POST /session` dropped mid-flight could create a
        // session nobody ends. It is bounded (request timeout, --connect-retry), and a
        // signal that arrives meanwhile stays pending for the next `guard`.
        match client.create(&opts.label).await {
            Ok(c) => break c,
            Err(ClientError::Refused {
                detail,
                retry_after,
                ..
            }) => {
                let pause = retry_after
                    .unwrap_or(DEFAULT_RETRY_AFTER)
                    .max(Duration::from_secs(1));
                watch.progress.say(&format!(
                    "no session yet ({detail}), asking again in {}",
                    seconds(pause)
                ));
                match watch.guard(tokio::time::sleep(pause), false).await {
                    Ok(()) => continue,
                    Err(i) => return Err(interrupted(client, None, watch, opts, i).await),
                }
            }
            Err(e) => {
                watch.progress.error(&e.to_string());
                return Err(e.exit_code());
            }
        }
    };
    let id = created.id;
    let mut active_timeout = created.active_timeout;
    watch.position = created.position;
    if created.position == 0 {
        return Ok((id, active_timeout));
    }
    loop {
        watch
            .progress
            .waiting(watch.position, watch.started.elapsed());
        let ask = long_poll_seconds(
            watch
                .deadline
                .map(|d| d.saturating_duration_since(Instant::now())),
        );
        let asked_at = Instant::now();
        let answer = match watch.guard(client.status(&id, Some(ask)), true).await {
            Ok(answer) => answer,
            Err(i) => return Err(interrupted(client, Some(&id), watch, opts, i).await),
        };
        match answer {
            Ok(status) => {
                active_timeout = status.active_timeout.or(active_timeout);
                watch.position = status.position;
                if status.active {
                    return Ok((id, active_timeout));
                }
            }
            Err(ClientError::NotFound(_, ended)) => {
                watch.progress.stop_waiting();
                watch.progress.error(&format!(
                    "session {} was removed by the server while waiting ({}); CMD not run",
                    tag(&id),
                    why_ended(ended.as_ref())
                ));
                return Err(exit::TEMPFAIL);
            }
            Err(e) => {
                watch.progress.stop_waiting();
                watch.progress.error(&e.to_string());
                end(client, &id, &watch.progress).await;
                return Err(e.exit_code());
            }
        }
        let pause = poll_pause(Duration::from_secs(ask), asked_at.elapsed());
        if let Err(i) = watch.guard(tokio::time::sleep(pause), true).await {
            return Err(interrupted(client, Some(&id), watch, opts, i).await);
        }
    }
}

/// The `wait=` to ask for: [`LONG_POLL`], shortened to the time left to wait.
fn long_poll_seconds(left: Option<Duration>) -> u64 {
    let n = left.map_or(LONG_POLL, |l| l.min(LONG_POLL));
    // Round up: `wait=0` would turn the last long-poll into a busy poll.
    (n.as_secs() + u64::from(n.subsec_nanos() > 0)).max(1)
}

/// How long to pause after a waiting answer to a `wait=asked` request that took
/// `took`. A server with long-poll held it about `asked`: ask again at once. One
/// without (neops-remote-lab ignores the query) answered at once: fall back to
/// polling every [`POLL_EVERY`].
fn poll_pause(asked: Duration, took: Duration) -> Duration {
    if took >= asked / 2 {
        Duration::ZERO
    } else {
        POLL_EVERY.saturating_sub(took)
    }
}

/// The exit code after a signal or the wait deadline interrupted the wait, once the
/// session (if any) is ended.
async fn interrupted(
    client: &LabClient,
    id: Option<&str>,
    watch: &mut Watch,
    opts: &RunOptions,
    why: Interrupt,
) -> u8 {
    watch.progress.stop_waiting();
    let code = match why {
        Interrupt::Signal(sig) => {
            watch
                .progress
                .error(&format!("{sig} while waiting for the lab; CMD not run"));
            128 + sig as i32 as u8
        }
        Interrupt::Deadline => {
            watch.progress.error(&format!(
                "gave up waiting for the lab after {} (--wait-timeout); CMD not run",
                humantime::format_duration(opts.wait_timeout.unwrap_or_default())
            ));
            exit::TEMPFAIL
        }
    };
    if let Some(id) = id {
        end(client, id, &watch.progress).await;
    }
    code
}

/// What the heartbeat and watch tasks report.
enum Beat {
    /// The server no longer knows the session (and how it ended, when it says).
    Lost(Option<Ended>),
    /// A heartbeat failed otherwise; the next one may succeed.
    Failed(String),
}

/// Runs CMD while heartbeating and watching the session; returns the exit code once
/// CMD has exited, and when the session was seen lost (if it was).
async fn hold(
    client: &LabClient,
    id: &str,
    every: Duration,
    watch: &mut Watch,
    opts: &RunOptions,
    forwards: Forwards,
) -> (u8, Option<Instant>) {
    let mut env = vec![
        ("LAB_SESSION_ID".to_string(), id.to_string()),
        ("LAB_URL".to_string(), client.base().to_string()),
    ];
    // CMD's own `labgate tunnel` then trusts the same CA.
    if let Some(ca) = client.trust().ca() {
        env.push(("LAB_CA".to_string(), ca.display().to_string()));
    }
    let mut running: Option<Running> = None;
    let mut shown = String::new();
    if !opts.forwards.is_empty() {
        let dialer = match Dialer::new(client.base(), id, client.trust()) {
            Ok(d) => d,
            Err(e) => {
                watch.progress.error(&e);
                return (exit::USAGE, None);
            }
        };
        env.extend(forwards.env());
        shown = describe(&forwards);
        watch.progress.say(&format!("forwarding {shown}"));
        running = Some(forwards.start(dialer, opts.max_connections));
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut cmd: Cmd = match child::spawn(&opts.command, &env) {
        Ok(c) => c,
        Err((code, why)) => {
            watch.progress.error(&why);
            return (code, None);
        }
    };
    let (beats_tx, mut beats) = mpsc::unbounded_channel();
    let beater = tokio::spawn(heartbeat_loop(
        client.clone(),
        id.to_string(),
        every,
        beats_tx.clone(),
    ));
    let watcher = tokio::spawn(watch_loop(client.clone(), id.to_string(), beats_tx));
    let mut kill_at: Option<tokio::time::Instant> = None;
    let mut lost: Option<Instant> = None;
    let status = loop {
        tokio::select! {
            status = cmd.wait() => break status,
            sig = watch.signals.recv() => {
                if child::terminal_sent_it(sig) {
                    watch.progress.say(&format!("{sig}: waiting for CMD to exit"));
                } else {
                    watch.progress.say(&format!("{sig}: passed on to CMD, waiting for it to exit"));
                    cmd.signal(sig);
                }
                kill_at.get_or_insert(tokio::time::Instant::now() + opts.kill_after);
            }
            Some(beat) = beats.recv() => match beat {
                // Both tasks may see the loss: act on the first.
                Beat::Lost(ended) if lost.is_none() => {
                    lost = Some(Instant::now());
                    // Closes the listeners: new connections are refused.
                    let closed = running.take().map(|_| format!("; forwards closed ({shown})")).unwrap_or_default();
                    watch.progress.error(&format!(
                        "session {} was ended by the server while CMD ran ({}){closed}; stopping CMD",
                        tag(id),
                        why_ended(ended.as_ref())
                    ));
                    cmd.signal(Signal::SIGTERM);
                    kill_at.get_or_insert(tokio::time::Instant::now() + opts.kill_after);
                }
                Beat::Lost(_) => {}
                Beat::Failed(why) => watch.progress.error(&format!("heartbeat failed: {why}")),
            },
            event = forward_event(&mut running) => match event {
                Event::Problem(line) => watch.progress.error(&line),
                Event::SessionEnded(reason) => {
                    running = None;
                    if lost.is_none() {
                        lost = Some(Instant::now());
                        watch.progress.error(&format!(
                            "session {}: {reason}; forwards closed ({shown}), new connections are refused; stopping CMD",
                            tag(id)
                        ));
                        cmd.signal(Signal::SIGTERM);
                        kill_at.get_or_insert(tokio::time::Instant::now() + opts.kill_after);
                    }
                }
            },
            _ = sleep_until_opt(kill_at) => {
                watch.progress.error(&format!(
                    "CMD still running {} after being told to stop; killing it",
                    humantime::format_duration(opts.kill_after)
                ));
                cmd.kill();
                kill_at = None;
            }
        }
    };
    beater.abort();
    watcher.abort();
    // CMD is done with them: no connection may open once the session is ended.
    drop(running);
    let code = match (status, lost) {
        (_, Some(_)) => exit::TEMPFAIL,
        (Ok(status), None) => child::exit_code(status),
        (Err(e), None) => {
            watch.progress.error(&format!("lost track of CMD: {e}"));
            exit::SOFTWARE
        }
    };
    (code, lost)
}

/// How an ended session ended, for a message; a server without tombstones (or one
/// that forgot) cannot say.
fn why_ended(ended: Option<&Ended>) -> String {
    ended.map_or_else(|| "reaped or kicked".to_string(), Ended::to_string)
}

/// Watches the held session so its loss is seen promptly, independent of the
/// heartbeat: a long-poll `while=active` where the server has it, else a status
/// request every [`WATCH_EVERY`]. Reports only the loss; other failures are the
/// heartbeat's to report (and the next look may succeed).
async fn watch_loop(client: LabClient, id: String, beats: mpsc::UnboundedSender<Beat>) {
    loop {
        let asked_at = Instant::now();
        let pause = match client.watch_active(&id, WATCH_POLL).await {
            Err(ClientError::NotFound(_, ended)) => {
                let _ = beats.send(Beat::Lost(ended));
                return;
            }
            Ok(_) => watch_pause(Duration::from_secs(WATCH_POLL), asked_at.elapsed()),
            Err(_) => WATCH_EVERY.saturating_sub(asked_at.elapsed()),
        };
        tokio::time::sleep(pause).await;
    }
}

/// After an ACTIVE answer to a `while=active` long-poll of `asked` that took `took`:
/// a server that held it (its wait ran out) is asked again at once; one that
/// answered at once (no `while=active`) is asked again [`WATCH_EVERY`] after the last.
fn watch_pause(asked: Duration, took: Duration) -> Duration {
    if took >= asked / 2 {
        Duration::ZERO
    } else {
        WATCH_EVERY.saturating_sub(took)
    }
}

/// The next event of the forwards, if there are any (pending forever otherwise).
async fn forward_event(running: &mut Option<Running>) -> Event {
    match running {
        Some(r) => r.next().await,
        None => std::future::pending().await,
    }
}

async fn heartbeat_loop(
    client: LabClient,
    id: String,
    every: Duration,
    beats: mpsc::UnboundedSender<Beat>,
) {
    let mut next = tokio::time::Instant::now() + every;
    loop {
        tokio::time::sleep_until(next).await;
        next += every;
        let beat = match client.heartbeat(&id).await {
            Ok(()) => continue,
            Err(ClientError::NotFound(_, ended)) => Beat::Lost(ended),
            Err(e) => Beat::Failed(e.to_string()),
        };
        let lost = matches!(beat, Beat::Lost(_));
        if beats.send(beat).is_err() || lost {
            return;
        }
        // After a slow failure, do not fire a burst of catch-up heartbeats.
        next = next.max(tokio::time::Instant::now());
    }
}

/// Ends the session; a failure is reported, not fatal (the server reaps it later).
/// Returns whether the session is gone.
async fn end(client: &LabClient, id: &str, progress: &Progress) -> bool {
    match client.end(id).await {
        Ok(()) | Err(ClientError::NotFound(..)) => true,
        Err(e) => {
            progress.error(&format!(
                "could not end session {}: {e}; the server will reap it after its idle timeout",
                tag(id)
            ));
            false
        }
    }
}

/// The first 8 characters of a session id, as labgate's own logs show it.
fn tag(id: &str) -> String {
    id.chars().take(8).collect()
}

/// CMD as a shell would need it typed: arguments with spaces or specials in '...'.
fn shown(command: &[OsString]) -> String {
    command
        .iter()
        .map(|a| {
            let a = a.to_string_lossy();
            let plain = !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_./:=@%+-,".contains(c));
            if plain {
                a.into_owned()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: std::collections::HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn the_owner_defaults_to_user_at_host_and_the_note_to_the_ci_job() {
        let local = label_for(None, None, &env(&[("USER", "alice")]), Some("lab-pc")).unwrap();
        assert_eq!(local.owner.as_deref(), Some("alice@lab-pc"));
        assert_eq!(local.note, None);
        let logname = label_for(None, None, &env(&[("LOGNAME", "bob")]), None).unwrap();
        assert_eq!(logname.owner.as_deref(), Some("bob"));
        let github = env(&[
            ("USER", "runner"),
            ("GITHUB_SERVER_URL", "https://github.com/"),
            ("GITHUB_REPOSITORY", "acme/rig"),
            ("GITHUB_RUN_ID", "42"),
            ("BUILD_URL", "https://jenkins/ignored"),
        ]);
        let l = label_for(None, None, &github, Some("gh-7")).unwrap();
        assert_eq!(l.owner.as_deref(), Some("runner@gh-7"));
        assert_eq!(
            l.note.as_deref(),
            Some("https://github.com/acme/rig/actions/runs/42")
        );
        for (var, url) in [
            ("CI_JOB_URL", "https://gitlab.example/acme/rig/-/jobs/9"),
            (
                "BUILDKITE_BUILD_URL",
                "https://buildkite.com/acme/rig/builds/3",
            ),
            ("BUILD_URL", "https://jenkins.example/job/rig/17/"),
        ] {
            let l = label_for(None, None, &env(&[(var, url)]), None).unwrap();
            assert_eq!(l.note.as_deref(), Some(url), "{var}");
            assert_eq!(l.owner, None);
        }
        // Half a GitHub set is no URL; empty variables count as unset.
        let partial = env(&[("GITHUB_RUN_ID", "1"), ("CI_JOB_URL", " ")]);
        assert_eq!(ci_job_url(&|k| partial(k)), None);
    }

    #[test]
    fn defaults_are_cut_to_the_limits_and_flags_are_checked() {
        let long_user = "u".repeat(100);
        let long_url = format!("https://ci/{}", "x".repeat(300));
        let e = env(&[
            ("USER", long_user.as_str()),
            ("CI_JOB_URL", long_url.as_str()),
        ]);
        let l = label_for(None, None, &e, Some("h")).unwrap();
        assert_eq!(l.owner.map(|o| o.chars().count()), Some(label::MAX_OWNER));
        assert_eq!(l.note.map(|n| n.chars().count()), Some(label::MAX_NOTE));
        // Flags win over the defaults; an empty flag sends nothing.
        let l = label_for(Some("carol"), Some(""), &e, Some("h")).unwrap();
        assert_eq!(l.owner.as_deref(), Some("carol"));
        assert_eq!(l.note, None);
        let err = label_for(Some(&"o".repeat(65)), None, &e, None).unwrap_err();
        assert_eq!(err, "--owner: String should have at most 64 characters");
        let err = label_for(None, Some("a\u{1b}b"), &e, None).unwrap_err();
        assert!(
            err.starts_with("--note: String should hold printable"),
            "{err}"
        );
        // A control character in a default is dropped, not sent.
        let l = label_for(None, None, &env(&[("USER", "ev\til")]), None).unwrap();
        assert_eq!(l.owner.as_deref(), Some("evil"));
    }

    #[test]
    fn the_command_is_shown_as_typed() {
        let cmd: Vec<OsString> = ["sh", "-c", "echo 'hi' $X", ""]
            .iter()
            .map(OsString::from)
            .collect();
        assert_eq!(shown(&cmd), r"sh -c 'echo '\''hi'\'' $X' ''");
    }

    #[test]
    fn heartbeat_defaults_to_a_third_of_the_active_timeout() {
        let s = Duration::from_secs;
        assert_eq!(heartbeat_interval(Some(s(7)), Some(s(300))), s(7));
        assert_eq!(heartbeat_interval(None, Some(s(300))), s(100));
        assert_eq!(heartbeat_interval(None, Some(s(3))), s(1));
        assert_eq!(
            heartbeat_interval(None, Some(Duration::from_millis(30))),
            Duration::from_millis(100)
        );
        assert_eq!(heartbeat_interval(None, None), DEFAULT_HEARTBEAT);
    }

    #[test]
    fn long_poll_is_bounded_by_the_time_left() {
        assert_eq!(long_poll_seconds(None), 20);
        assert_eq!(long_poll_seconds(Some(Duration::from_secs(90))), 20);
        assert_eq!(long_poll_seconds(Some(Duration::from_millis(4_200))), 5);
        assert_eq!(long_poll_seconds(Some(Duration::ZERO)), 1);
    }

    #[test]
    fn a_server_that_ignores_wait_is_polled_every_few_seconds() {
        let asked = Duration::from_secs(20);
        // Answered at once: no long-poll, pause until POLL_EVERY since the request.
        assert_eq!(
            poll_pause(asked, Duration::from_millis(5)),
            POLL_EVERY - Duration::from_millis(5)
        );
        // Held for the whole wait: long-poll works, ask again at once.
        assert_eq!(poll_pause(asked, Duration::from_secs(20)), Duration::ZERO);
        // A slow answer without long-poll never pauses longer than POLL_EVERY.
        assert_eq!(poll_pause(asked, Duration::from_secs(5)), Duration::ZERO);
    }
}

//! `labgate status`: the public queue view for everyone, from `GET /status.json`, as a
//! table (position, tag, state, claimed owner, note, time held or waited, expected start),
//! with the caller's own row marked when `LAB_SESSION_ID` is set (its tag is computed
//! here: the id never leaves this process).
//!
//! Owns where the server is when nobody says (`--url`, `LAB_URL`, the config's listen
//! address, the shipped config's) and the rendering. Must never change anything on the
//! server, and never print a client-sent text without cleaning it for a terminal.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use serde::Deserialize;

use super::exit;
use super::http::{ClientError, LabClient};
use crate::label;
use crate::queue::SessionId;
use crate::status::human;

/// The shipped config: its listen address is the last default for `--url`.
const SHIPPED_CONFIG: &str = include_str!("../../config/labgate.toml");
/// Where a packaged labgate's config lives (`LABGATE_CONFIG` overrides it).
const SYSTEM_CONFIG: &str = "/etc/labgate/labgate.toml";

/// `labgate status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The labgate URL [default: LAB_URL, else the listen address of the config at
    /// LABGATE_CONFIG or /etc/labgate/labgate.toml, else the shipped config's].
    #[arg(long)]
    url: Option<String>,
    /// Print the server's JSON (`/status.json`) instead of a table.
    #[arg(long)]
    json: bool,
    /// For an `https://` URL: trust exactly this CA instead of the system's CA store.
    #[arg(long, env = "LAB_CA", value_name = "FILE")]
    ca: Option<std::path::PathBuf>,
}

/// `/status.json`, as much of it as the table shows; every field optional, so a newer
/// or older labgate still reads.
#[derive(Debug, Deserialize)]
struct Board {
    held: bool,
    #[serde(default)]
    hold_secs: f64,
    #[serde(default)]
    waiting: usize,
    #[serde(default)]
    draining: bool,
    #[serde(default)]
    resetting: bool,
    #[serde(default)]
    typical_hold_secs: Option<f64>,
    #[serde(default)]
    hold_samples: usize,
    queue: Vec<Row>,
}

#[derive(Debug, Deserialize)]
struct Row {
    position: usize,
    tag: String,
    state: String,
    #[serde(default)]
    secs: f64,
    #[serde(default)]
    expected_start_secs: Option<f64>,
    #[serde(default)]
    identity: Option<String>,
    #[serde(default)]
    owner: Option<String>,
    #[serde(default)]
    note: Option<String>,
}

/// `labgate status`: the process exit code.
pub fn status_command(args: StatusArgs) -> ExitCode {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let url = match &args.url {
        Some(u) => u.clone(),
        None => env("LAB_URL").unwrap_or_else(|| {
            let path = env("LABGATE_CONFIG").unwrap_or_else(|| SYSTEM_CONFIG.to_string());
            let text = std::fs::read_to_string(path).ok();
            default_url(text.as_deref())
        }),
    };
    // The user is at a terminal: one try, no retries.
    let client = match LabClient::new(
        &url,
        Duration::ZERO,
        &super::tls::Trust::new(args.ca.clone()),
    ) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("labgate: {e}");
            return ExitCode::from(exit::USAGE);
        }
    };
    let rt = match super::runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let body = match rt.block_on(client.lab_status()) {
        Ok(body) => body,
        Err(e @ ClientError::Unreachable { .. }) => {
            eprintln!("labgate: {e}");
            return ExitCode::from(exit::UNAVAILABLE);
        }
        Err(e) => {
            eprintln!("labgate: {}: not a labgate status ({e})", client.base());
            return ExitCode::from(exit::PROTOCOL);
        }
    };
    let board: Board = match serde_json::from_str(&body) {
        Ok(b) => b,
        Err(e) => {
            eprintln!(
                "labgate: {}: not a labgate status (GET /status.json answered something else: {e})",
                client.base()
            );
            return ExitCode::from(exit::PROTOCOL);
        }
    };
    if args.json {
        println!("{}", body.trim_end());
        return ExitCode::SUCCESS;
    }
    let mine = env("LAB_SESSION_ID").and_then(|id| SessionId::parse_exact(&id).map(|i| i.tag()));
    print!("{}", render(&board, mine.as_deref()));
    ExitCode::SUCCESS
}

/// The URL of the listener a config names (its first `[server] listen` address; a
/// wildcard address is reached on loopback), else the shipped config's.
fn default_url(config: Option<&str>) -> String {
    let listen = |text: &str| -> Option<String> {
        let value: toml::Value = toml::from_str(text).ok()?;
        let listen = value.get("server")?.get("listen")?;
        let first = match listen {
            toml::Value::Array(a) => a.first()?.as_str()?,
            other => other.as_str()?,
        };
        let addr: std::net::SocketAddr = first.parse().ok()?;
        let ip = match addr.ip() {
            ip if !ip.is_unspecified() => ip,
            std::net::IpAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        };
        Some(format!(
            "http://{}",
            std::net::SocketAddr::new(ip, addr.port())
        ))
    };
    config
        .and_then(listen)
        .or_else(|| listen(SHIPPED_CONFIG))
        .unwrap_or_else(|| "http://127.0.0.1:8080".to_string())
}

/// The board as text: one summary line, then the table; `mine`: the caller's tag.
fn render(board: &Board, mine: Option<&str>) -> String {
    let clean = |v: Option<&str>, max: usize| match v {
        Some(v) if v.chars().count() > max => {
            format!("{}…", label::truncate(&label::printable(v), max - 1))
        }
        Some(v) => label::printable(v),
        None => "-".to_string(),
    };
    let mut out = String::new();
    let holder = board.queue.first().filter(|r| r.position == 0);
    let state = if board.resetting {
        "The lab is being reset for the next holder".to_string()
    } else if !board.held {
        "The lab is free".to_string()
    } else {
        let by = match holder.map(|h| (h.identity.as_deref(), h.owner.as_deref())) {
            Some((Some(who), _)) => format!(" by {}", clean(Some(who), 128)),
            Some((None, Some(claim))) => format!(
                " by a session that says it is \"{}\"",
                clean(Some(claim), label::MAX_OWNER)
            ),
            _ => String::new(),
        };
        format!("The lab is held{by}, for {}", human(board.hold_secs))
    };
    let waiting = match board.waiting {
        0 => "nobody is waiting".to_string(),
        1 => "1 session is waiting".to_string(),
        n => format!("{n} sessions are waiting"),
    };
    out.push_str(&format!("{state}; {waiting}."));
    if let Some(t) = board.typical_hold_secs {
        out.push_str(&format!(
            " Typical hold: {} (over {} completed hold(s)).",
            human(t),
            board.hold_samples
        ));
    }
    out.push('\n');
    if board.draining {
        out.push_str("labgate is draining: no new sessions are accepted; the queue goes on.\n");
    }
    if board.queue.is_empty() {
        return out;
    }
    let width = |values: &mut dyn Iterator<Item = Option<&str>>, head: &str, max: usize| {
        values
            .flatten()
            .map(|v| v.chars().count().min(max))
            .max()
            .unwrap_or(1)
            .max(head.len())
    };
    let rows = &board.queue;
    let names = rows.iter().any(|r| r.identity.is_some());
    let who_w = width(&mut rows.iter().map(|r| r.identity.as_deref()), "WHO", 64);
    let owner_w = width(
        &mut rows.iter().map(|r| r.owner.as_deref()),
        "CLAIMED BY",
        label::MAX_OWNER,
    );
    let line = |you: &str,
                pos: &str,
                tag: &str,
                st: &str,
                who: &str,
                owner: &str,
                time: &str,
                eta: &str,
                note: &str| {
        let who = if names {
            format!("  {who:<who_w$}")
        } else {
            String::new()
        };
        let text = format!(
            "{you:<2}{pos:>3}  {tag:<8}  {st:<7}{who}  {owner:<owner_w$}  {time:>12}  {eta:<14}  {note}"
        );
        text.trim_end().to_string() + "\n"
    };
    out.push_str(&line(
        "",
        "POS",
        "TAG",
        "STATE",
        "WHO",
        "CLAIMED BY",
        "HELD/WAITED",
        "EXPECTED",
        "NOTE",
    ));
    for r in rows {
        let you = if mine == Some(r.tag.as_str()) {
            ">"
        } else {
            ""
        };
        let eta = match (r.position, r.expected_start_secs) {
            (0, _) => "holds the lab".to_string(),
            (_, Some(secs)) => format!("~{}", human(secs)),
            (_, None) => "not known yet".to_string(),
        };
        out.push_str(&line(
            you,
            &r.position.to_string(),
            &clean(Some(&r.tag), 8),
            &clean(Some(&r.state), 7),
            &clean(r.identity.as_deref(), 64),
            &clean(r.owner.as_deref(), label::MAX_OWNER),
            &human(r.secs),
            &eta,
            &clean(r.note.as_deref(), NOTE_CHARS),
        ));
    }
    match mine {
        Some(tag) if rows.iter().any(|r| r.tag == tag) => {
            out.push_str("> marks your session (LAB_SESSION_ID)\n")
        }
        Some(tag) => out.push_str(&format!(
            "your session (tag {tag}) is not among the {} listed\n",
            rows.len()
        )),
        None => {}
    }
    out
}

/// The most of a note the table shows (`--json` has it whole).
const NOTE_CHARS: usize = 60;

#[cfg(test)]
mod tests {
    use super::*;

    fn board() -> Board {
        serde_json::from_value(serde_json::json!({
            "held": true, "hold_secs": 250.0, "waiting": 2, "draining": false,
            "typical_hold_secs": 600.0, "hold_samples": 4,
            "queue": [
                {"position": 0, "tag": "0a1b2c3d", "state": "active", "secs": 250.0,
                 "owner": "alice@pc", "note": "nightly"},
                {"position": 1, "tag": "99887766", "state": "waiting", "secs": 30.0,
                 "expected_start_secs": 350.0, "owner": "bob\u{1b}[31m@ci"},
                {"position": 2, "tag": "55667788", "state": "waiting", "secs": 3.0,
                 "expected_start_secs": 950.0, "note": "x".repeat(80)}
            ]
        }))
        .unwrap()
    }

    #[test]
    fn the_table_marks_my_row_and_shows_claims_cleaned() {
        let t = render(&board(), Some("99887766"));
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "The lab is held by a session that says it is \"alice@pc\", for 4 min 10 s; \
             2 sessions are waiting. Typical hold: 10 min 0 s (over 4 completed hold(s))."
        );
        assert!(
            lines[1].contains("POS") && lines[1].contains("CLAIMED BY"),
            "{t}"
        );
        assert!(!lines[1].contains("WHO"), "{t}");
        assert!(
            lines[2].starts_with("    0  0a1b2c3d  active   alice@pc"),
            "{t}"
        );
        assert!(
            lines[2].contains("holds the lab") && lines[2].ends_with("nightly"),
            "{t}"
        );
        assert!(
            lines[3].starts_with(">   1  99887766  waiting  bob[31m@ci"),
            "{t}"
        );
        assert!(lines[3].contains("~5 min 50 s"), "{t}");
        assert!(!t.contains('\u{1b}'));
        assert!(lines[4].ends_with(&format!("{}…", "x".repeat(59))), "{t}");
        assert_eq!(lines[5], "> marks your session (LAB_SESSION_ID)");
        let t = render(&board(), Some("ffffffff"));
        assert!(
            t.contains("your session (tag ffffffff) is not among the 3 listed"),
            "{t}"
        );
        assert!(!render(&board(), None).contains('>'));
    }

    #[test]
    fn a_free_lab_is_one_line() {
        let free: Board = serde_json::from_str(r#"{"held":false,"waiting":0,"queue":[]}"#).unwrap();
        assert_eq!(render(&free, None), "The lab is free; nobody is waiting.\n");
    }

    #[test]
    fn the_default_url_is_the_configs_listen_address_on_loopback() {
        assert_eq!(default_url(None), "http://127.0.0.1:8080");
        let cfg = "[server]\nlisten = [\"0.0.0.0:9000\", \"[::]:9001\"]\n";
        assert_eq!(default_url(Some(cfg)), "http://127.0.0.1:9000");
        assert_eq!(
            default_url(Some("[server]\nlisten = [\"[::]:9001\"]\n")),
            "http://[::1]:9001"
        );
        assert_eq!(
            default_url(Some("[server]\nlisten = [\"10.1.2.3:80\"]\n")),
            "http://10.1.2.3:80"
        );
        // Unreadable or odd: the shipped config's.
        assert_eq!(default_url(Some("not toml [")), "http://127.0.0.1:8080");
    }
}

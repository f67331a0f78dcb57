//! The CLI half of the admin API: what `labgate admin` sends and how it shows the answer.
//!
//! Owns connecting to the admin socket, one request per command, and the human output
//! (a table, one line per action, or the API's JSON). Errors are one line naming the
//! socket and what to do. Must never decide anything itself: the server does.

use std::path::{Path, PathBuf};

use anyhow::Context;
use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;

use super::{Action, KickRequest, Kicked, QueueListing, ReloadAnswer, Retried};
use crate::config::{default_admin_socket, Config};

/// One admin call from the CLI: `(status, JSON body)`. Errors name the socket and say
/// what to do in one line.
pub async fn call(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<(u16, serde_json::Value)> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| connect_error(socket, e))?;
    // Who answers, before a byte is sent: a socket in a directory someone else could
    // write to may be theirs, and a kick's reason or a fake queue is not for them.
    let server_uid = stream
        .peer_cred()
        .with_context(|| format!("cannot tell who serves {}", socket.display()))?
        .uid();
    trust_server(server_uid, nix::unistd::geteuid().as_raw())
        .map_err(|why| anyhow::anyhow!("refusing to use {}: {why}", socket.display()))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("admin handshake failed")?;
    tokio::spawn(conn);
    let payload = body.map(|b| b.to_string()).unwrap_or_default();
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, "labgate-admin")
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(payload)))
        .context("building the admin request")?;
    let resp = sender
        .send_request(req)
        .await
        .context("the admin API did not answer")?;
    let status = resp.status().as_u16();
    let bytes = Limited::new(resp.into_body(), 64 * 1024 * 1024)
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("reading the admin answer: {e}"))?
        .to_bytes();
    let value = serde_json::from_slice(&bytes)
        .context("the admin API answered something that is not JSON")?;
    Ok((status, value))
}

/// `Ok` when the process serving the admin socket, running as `server`, may be told
/// what the CLI, running as `me`, asks: it runs as the same user, or as root (who could
/// read anything the CLI has anyway). Anyone else may be squatting the path. Pure.
pub fn trust_server(server: u32, me: u32) -> Result<(), String> {
    if server == me || server == 0 {
        return Ok(());
    }
    let name = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(server))
        .ok()
        .flatten()
        .map_or(String::new(), |u| format!(" ({})", u.name));
    Err(format!(
        "it is served by uid {server}{name}, not by you (uid {me}) or root; if that is \
         labgate's user, run the command as that user (sudo -u '#{server}' labgate admin ...)"
    ))
}

fn connect_error(socket: &Path, e: std::io::Error) -> anyhow::Error {
    let path = socket.display();
    match e.kind() {
        std::io::ErrorKind::NotFound => anyhow::anyhow!(
            "no admin socket at {path}: is labgate running? (if its [admin] socket is elsewhere, \
             give --config FILE or --socket PATH)"
        ),
        std::io::ErrorKind::PermissionDenied => {
            anyhow::anyhow!("permission denied on {path}: run as labgate's user or root")
        }
        std::io::ErrorKind::ConnectionRefused => {
            anyhow::anyhow!("nothing listens on {path}: labgate is not running (stale socket)")
        }
        _ => anyhow::anyhow!("cannot connect to {path}: {e}"),
    }
}

/// The socket `labgate admin` talks to: `--socket` (or `LABGATE_ADMIN_SOCKET`), else
/// `[admin] socket` of the `--config` file (read and validated as `labgate check` does),
/// else the default the server uses too ([`default_admin_socket`]). Errors are one line.
pub fn socket_path(socket: Option<PathBuf>, config: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(socket) = socket {
        return Ok(socket);
    }
    let Some(file) = config else {
        return Ok(default_admin_socket());
    };
    let config = Config::load(file).map_err(anyhow::Error::msg)?;
    config.admin_socket.ok_or_else(|| {
        anyhow::anyhow!(
            "{}: the admin API is off (no [admin] section)",
            file.display()
        )
    })
}

/// Runs one `labgate admin` command; prints a table (or JSON) on success, returns a
/// one-line error otherwise.
pub fn run_cli(socket: &Path, json_out: bool, action: Action) -> anyhow::Result<()> {
    let (method, path, body) = match &action {
        Action::Queue => (Method::GET, "/v1/queue".to_string(), None),
        Action::Kick { id, reason } => {
            if reason.trim().is_empty() {
                anyhow::bail!("give a reason: --reason TEXT");
            }
            let body = KickRequest {
                reason: reason.clone(),
            };
            (
                Method::POST,
                format!("/v1/sessions/{id}/kick"),
                Some(serde_json::to_value(body).context("encoding the kick request")?),
            )
        }
        Action::Drain => (Method::POST, "/v1/drain".to_string(), None),
        Action::Resume => (Method::POST, "/v1/resume".to_string(), None),
        Action::RetryHandoff => (Method::POST, "/v1/handoff/retry".to_string(), None),
        Action::Reload => (Method::POST, "/v1/reload".to_string(), None),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a runtime")?;
    let (status, value) = runtime.block_on(call(socket, method, &path, body))?;
    if !(200..300).contains(&status) {
        // A refused reload: every reason on its own line, as `labgate check` prints them.
        if let Some(errors) = value.get("errors").and_then(|e| e.as_array()) {
            for line in errors.iter().filter_map(|e| e.as_str()) {
                eprintln!("labgate: {line}");
            }
        }
        let why = value
            .get("detail")
            .and_then(|d| d.as_str())
            .unwrap_or("the admin API refused");
        anyhow::bail!("{why} (HTTP {status})");
    }
    if json_out {
        println!("{value}");
        return Ok(());
    }
    match action {
        Action::Queue => {
            let listing: QueueListing =
                serde_json::from_value(value).context("unexpected queue listing")?;
            print!("{}", render_table(&listing));
        }
        Action::Kick { id, .. } => {
            let kicked: Kicked = serde_json::from_value(value).context("unexpected kick answer")?;
            println!("kicked {id} ({} connection(s) cut)", kicked.connections_cut);
        }
        Action::Drain => println!("draining: new sessions are refused; the queue goes on"),
        Action::Resume => println!("resumed: new sessions are accepted"),
        Action::Reload => {
            let r: ReloadAnswer =
                serde_json::from_value(value).context("unexpected reload answer")?;
            for w in &r.warnings {
                eprintln!("labgate: warning: {w}");
            }
            if r.changed.is_empty() {
                println!("reloaded: nothing changed");
            } else {
                println!("reloaded:");
                for c in &r.changed {
                    println!("  {c}");
                }
            }
        }
        Action::RetryHandoff => {
            let r: Retried = serde_json::from_value(value).context("unexpected retry answer")?;
            if r.retried == 0 {
                println!("no failed handoff to retry");
            } else {
                println!("retrying the reset of {} upstream(s)", r.retried);
            }
        }
    }
    Ok(())
}

/// The queue as a readable table: the tag (every session's one public name), the
/// verified identity (WHO, identity mode) and the client's claims (CLAIMED BY, NOTE)
/// when any session has them. Claims are cleaned of control characters again here: a
/// terminal must not run what a client sent.
pub fn render_table(listing: &QueueListing) -> String {
    let mut out = String::new();
    if listing.draining {
        out.push_str("labgate is DRAINING: new sessions are refused.\n");
    }
    if listing.sessions.is_empty() {
        out.push_str("The queue is empty.\n");
        return out;
    }
    let clean = |v: Option<&str>, max: usize| match v {
        Some(v) if v.chars().count() > max => {
            format!(
                "{}…",
                crate::label::truncate(&crate::label::printable(v), max - 1)
            )
        }
        Some(v) => crate::label::printable(v),
        None => "-".to_string(),
    };
    // A column as wide as its longest value, when any session has one.
    let width = |values: &mut dyn Iterator<Item = Option<&str>>, head: &str, max: usize| {
        values
            .flatten()
            .map(|v| v.chars().count().min(max))
            .max()
            .map(|w| w.max(head.len()))
    };
    let rows = &listing.sessions;
    let who_width = width(&mut rows.iter().map(|s| s.identity.as_deref()), "WHO", 128);
    let owner_width = width(
        &mut rows.iter().map(|s| s.owner.as_deref()),
        "CLAIMED BY",
        crate::label::MAX_OWNER,
    );
    let notes = rows.iter().any(|s| s.note.is_some());
    let column = |w: Option<usize>, v: &str| match w {
        Some(w) => format!("  {v:<w$}"),
        None => String::new(),
    };
    let line = |cells: [String; 12]| {
        let [pos, state, tag, who, owner, session, seq, client, inflight, held, idle, note] = cells;
        let note = if notes {
            format!("  {note}")
        } else {
            String::new()
        };
        format!(
            "{pos:>4}  {state:<7}  {tag:<8}{who}{owner}  {session:<36}  {seq:>13}  {client:<15}  {inflight:>9}  {held:>9}  {idle:>9}{note}",
        )
        .trim_end()
        .to_string()
            + "\n"
    };
    out.push_str(&line([
        "POS".into(),
        "STATE".into(),
        "TAG".into(),
        column(who_width, "WHO"),
        column(owner_width, "CLAIMED BY"),
        "SESSION".into(),
        "SEQ".into(),
        "CLIENT".into(),
        "IN FLIGHT".into(),
        "HELD".into(),
        "IDLE".into(),
        "NOTE".into(),
    ]));
    for s in rows {
        out.push_str(&line([
            s.position.to_string(),
            s.state.clone(),
            s.tag.clone(),
            column(who_width, &clean(s.identity.as_deref(), 128)),
            column(
                owner_width,
                &clean(s.owner.as_deref(), crate::label::MAX_OWNER),
            ),
            s.id.clone(),
            s.seq.to_string(),
            s.client.clone().unwrap_or_else(|| "-".to_string()),
            s.requests_in_flight.to_string(),
            s.hold_secs.map_or("-".to_string(), crate::status::human),
            crate::status::human(s.last_seen_secs_ago),
            clean(s.note.as_deref(), NOTE_CHARS),
        ]));
    }
    out
}

/// The most of a note the table shows (the JSON has it whole).
const NOTE_CHARS: usize = 60;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::SessionRow;

    #[test]
    fn the_cli_trusts_only_its_own_uid_or_root_behind_the_socket() {
        assert!(trust_server(1000, 1000).is_ok());
        assert!(trust_server(0, 1000).is_ok());
        assert!(trust_server(0, 0).is_ok());
        let e = trust_server(1001, 1000).unwrap_err();
        assert!(e.contains("uid 1001") && e.contains("uid 1000"), "{e}");
        // Root too refuses any other uid: the socket may sit where anybody could have
        // bound it.
        let e = trust_server(65534, 0).unwrap_err();
        assert!(e.contains("uid 65534") && !e.contains('\n'), "{e}");
    }

    #[test]
    fn table_lists_sessions_in_order() {
        let listing = QueueListing {
            draining: true,
            sessions: vec![SessionRow {
                id: "0b9f7a0e-6f0b-4f7c-9a55-2f7d8b1c0e11".into(),
                tag: "1a2b3c4d".into(),
                state: "active".into(),
                position: 0,
                seq: 7,
                created: 0.0,
                last_seen_secs_ago: 3.0,
                client: Some("127.0.0.1".into()),
                requests_in_flight: 2,
                hold_secs: Some(125.0),
                identity: None,
                owner: None,
                note: None,
            }],
        };
        let t = render_table(&listing);
        assert!(!t.contains("WHO"));
        let mut named = QueueListing {
            draining: false,
            sessions: listing.sessions.clone(),
        };
        named.sessions[0].identity = Some("alice".into());
        let n = render_table(&named);
        assert!(n.contains("WHO") && n.contains("alice"), "{n}");
        assert!(t.starts_with("labgate is DRAINING"));
        assert!(t.contains("0b9f7a0e-6f0b-4f7c-9a55-2f7d8b1c0e11"));
        assert!(t.contains("2 min 5 s"));
        assert!(t.contains("TAG") && t.contains("1a2b3c4d"), "{t}");
        assert!(!t.contains("CLAIMED BY") && !t.contains("NOTE"), "{t}");
        named.sessions[0].owner = Some("carol@ci\u{1b}[2J".into());
        named.sessions[0].note = Some("x".repeat(100));
        let c = render_table(&named);
        assert!(c.contains("CLAIMED BY") && c.contains("carol@ci[2J"), "{c}");
        assert!(!c.contains('\u{1b}'), "{c}");
        assert!(c.contains(&format!("{}…", "x".repeat(59))), "{c}");
        assert!(!c.contains(&"x".repeat(61)), "{c}");
        assert!(render_table(&QueueListing {
            draining: false,
            sessions: vec![]
        })
        .contains("empty"));
    }
}

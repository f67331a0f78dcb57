//! The public status page: `GET /status` (HTML) and `GET /status.json`.
//!
//! Owns the public view of the lab ([`LabStatus`], built from `Shared::picture`) and its
//! rendering. It must never show a session id, which is the gate credential: sessions
//! appear as their public tag (`SessionId::tag`), which cannot be turned back into the
//! id. The page is server-rendered, has no script, and refreshes itself. A session's
//! `owner` and `note` are what its client claims (`POST /session`'s body): shown as
//! claims, escaped, and never in a place where identity mode's verified identity goes.

use std::time::Instant;

use crate::state::Shared;

/// How often the page reloads itself.
const REFRESH_SECS: u32 = 5;

/// How many queue entries the status page lists.
const STATUS_ROWS: usize = 20;

/// The public picture of the lab (status page): never a session id.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LabStatus {
    pub held: bool,
    pub hold_secs: f64,
    pub waiting: usize,
    pub typical_wait_secs: Option<f64>,
    pub typical_hold_secs: Option<f64>,
    pub draining: bool,
    /// Between two holders the lab is being reset (contract §8): nobody holds it yet.
    pub resetting: bool,
    /// The reset failed: the lab stays held until an operator has fixed it.
    pub reset_failed: bool,
    pub max_hold_secs: Option<f64>,
    /// Device tunnels the holder has open (a count, never whose).
    pub tunnels: usize,
    /// How many completed holds `typical_hold_secs` (and expected starts) are over, and
    /// how many real waits `typical_wait_secs` is over.
    pub hold_samples: usize,
    pub wait_samples: usize,
    /// The first sessions in order: (position, tag, state, seconds in state).
    pub queue: Vec<QueueEntry>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct QueueEntry {
    pub position: usize,
    pub tag: String,
    pub state: &'static str,
    pub secs: f64,
    /// WAITING: seconds until it can expect the lab (from completed holds; `None` before
    /// any hold completed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_start_secs: Option<f64>,
    /// Identity mode with `status_page_names`: who opened the session (verified).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// Who the session's client says it is (`POST /session`'s `owner`): a claim,
    /// never verified.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// What it says it is for (`POST /session`'s `note`): a claim.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// What the public status page shows.
pub fn lab_status(shared: &Shared, now: Instant) -> LabStatus {
    let picture = shared.picture(STATUS_ROWS, now);
    let names = shared
        .config()
        .identity
        .as_ref()
        .is_some_and(|i| i.status_page_names);
    // An operator who hides identities hides claimed names with them.
    let labels = shared
        .config()
        .identity
        .as_ref()
        .is_none_or(|i| i.status_page_names);
    let queue = picture
        .sessions
        .iter()
        .map(|s| QueueEntry {
            position: s.view.position,
            tag: s.view.id.tag(),
            state: s.view.status.as_str(),
            secs: now
                .saturating_duration_since(s.view.promoted_at.unwrap_or(s.view.created))
                .as_secs_f64(),
            expected_start_secs: picture
                .typical_hold
                .filter(|_| s.view.position > 0)
                .map(|t| {
                    crate::history::expected_start(s.view.position, t, picture.active_hold)
                        .as_secs_f64()
                }),
            identity: s
                .owner
                .as_ref()
                .filter(|_| names)
                .map(|o| o.as_str().to_string()),
            owner: s.label.owner.clone().filter(|_| labels),
            note: s.label.note.clone().filter(|_| labels),
        })
        .collect();
    LabStatus {
        held: picture.len > 0 || picture.resetting,
        resetting: picture.resetting,
        reset_failed: picture.handoff_failed,
        hold_secs: picture.active_hold.as_secs_f64(),
        waiting: picture.waiting,
        typical_wait_secs: picture.typical_wait.map(|d| d.as_secs_f64()),
        typical_hold_secs: picture.typical_hold.map(|d| d.as_secs_f64()),
        draining: shared.is_draining(),
        max_hold_secs: shared.config().queue.max_hold.map(|d| d.as_secs_f64()),
        tunnels: picture.holder_tunnels,
        hold_samples: picture.samples.0,
        wait_samples: picture.samples.1,
        queue,
    }
}

/// "3 s", "4 min 10 s", "2 h 5 min".
pub fn human(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

/// "median of the last 12 completed holds": what a typical figure is over.
fn window(n: usize, what: &str) -> String {
    match n {
        0 => format!("no {what}s yet"),
        1 => format!("from the last {what}"),
        n => format!("median of the last {n} {what}s"),
    }
}

pub fn json(status: &LabStatus) -> Vec<u8> {
    serde_json::to_vec(status).unwrap_or_else(|_| b"{}".to_vec())
}

/// Escapes text for HTML (identities are printable ASCII, which includes `<` and `&`).
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The `tag` a status page viewer asks to see marked as "you": exactly 8 lowercase hex
/// digits (anything else is ignored, so nothing a client sends reaches the page raw).
pub fn you_param(query: Option<&str>) -> Option<&str> {
    query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| pair.strip_prefix("tag="))
        .filter(|t| t.len() == 8 && t.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// The page; `you`: a tag to mark as the viewer's own row (`/status?tag=...`).
pub fn html(status: &LabStatus, you: Option<&str>) -> String {
    let first = status.queue.first().filter(|e| e.position == 0);
    let holder = first.and_then(|e| e.identity.as_deref());
    let claimed = first.and_then(|e| e.owner.as_deref());
    let tunnels = match status.tunnels {
        0 => String::new(),
        1 => " The holder has 1 tunnel open.".to_string(),
        n => format!(" The holder has {n} tunnels open."),
    };
    let headline = if status.reset_failed {
        "Resetting the lab failed: it is held until an operator has fixed it.".to_string()
    } else if status.resetting {
        "labgate is resetting the lab for the next holder.".to_string()
    } else {
        match (status.held, holder) {
            (true, Some(who)) => format!(
                "{} holds the lab, for {} so far.{tunnels}",
                escape(who),
                human(status.hold_secs)
            ),
            // A claim is quoted and said to be one; only a verified identity is
            // written as the subject.
            (true, None) if claimed.is_some() => format!(
                "The lab is held by a session that says it is \u{201c}{}\u{201d}, for {} so far.{tunnels}",
                escape(claimed.unwrap_or_default()),
                human(status.hold_secs)
            ),
            (true, None) => format!(
                "The lab is held, for {} so far.{tunnels}",
                human(status.hold_secs)
            ),
            (false, _) => "The lab is free.".to_string(),
        }
    };
    let named = status.queue.iter().any(|e| e.identity.is_some());
    let owners = status.queue.iter().any(|e| e.owner.is_some());
    let notes = status.queue.iter().any(|e| e.note.is_some());
    let waiting = match status.waiting {
        0 => "Nobody is waiting.".to_string(),
        1 => "1 session is waiting.".to_string(),
        n => format!("{n} sessions are waiting."),
    };
    let typical = |v: Option<f64>| v.map_or_else(|| "not known yet".to_string(), human);
    let draining = if status.draining {
        "<p class=\"drain\">labgate is draining: no new sessions are accepted; the queue goes on.</p>"
    } else {
        ""
    };
    let max_hold = status
        .max_hold_secs
        .map(|m| format!("<li>Hold limit: {} while others wait</li>", human(m)))
        .unwrap_or_default();
    let rows: String = status
        .queue
        .iter()
        .map(|e| {
            let who = if named {
                format!("<td>{}</td>", escape(e.identity.as_deref().unwrap_or("-")))
            } else {
                String::new()
            };
            let cell = |shown: bool, v: Option<&str>, class: &str| match (shown, v) {
                (false, _) => String::new(),
                (true, Some(v)) => format!("<td class=\"{class}\">{}</td>", escape(v)),
                (true, None) => "<td>-</td>".to_string(),
            };
            let owner = cell(owners, e.owner.as_deref(), "claim");
            let note = cell(notes, e.note.as_deref(), "note");
            let mine = you == Some(e.tag.as_str());
            let (class, marker) = if mine {
                (" class=\"you\"", " <strong>&larr; you</strong>")
            } else {
                ("", "")
            };
            let eta = match (e.position, e.expected_start_secs) {
                (0, _) => "holds the lab".to_string(),
                (p, Some(secs)) => format!("~{}, position {p}", human(secs)),
                (p, None) => format!("not known yet, position {p}"),
            };
            format!(
                "<tr{class}><td>{}</td>{who}{owner}{note}<td><code>{}</code>{marker}</td><td>{}</td><td>{}</td><td>{eta}</td></tr>",
                e.position,
                e.tag,
                e.state,
                human(e.secs)
            )
        })
        .collect();
    let who_head = if named { "<th>who</th>" } else { "" };
    let owner_head = if owners {
        "<th title=\"what the session's client says; not verified\">owner (as claimed)</th>"
    } else {
        ""
    };
    let note_head = if notes { "<th>note</th>" } else { "" };
    let table = if rows.is_empty() {
        String::new()
    } else {
        format!(
            "<table><thead><tr><th>#</th>{who_head}{owner_head}{note_head}<th>session tag</th><th>state</th><th>for</th><th>expected start</th></tr></thead><tbody>{rows}</tbody></table>\
             <p class=\"hint\">Your tag: the first 8 hex digits of SHA-256 over your session id's 16 bytes  (also sent as <code>X-Lab-Session-Tag</code>); open <code>/status?tag=YOURTAG</code> to have your row marked.</p>"
        )
    };
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<link rel=\"icon\" href=\"/favicon.svg\" type=\"image/svg+xml\">\
<title>labgate: lab status</title><style>\
body{{font-family:system-ui,sans-serif;max-width:56rem;margin:2rem auto;padding:0 1rem;color:#1a1a1a}}\
h1{{font-size:1.4rem}} .state{{font-size:1.25rem;font-weight:600}}\
.drain{{background:#fff3cd;border:1px solid #e0c060;padding:.5rem .75rem}}\
table{{border-collapse:collapse;width:100%}} td,th{{text-align:left;padding:.25rem .5rem;border-bottom:1px solid #ddd}}\
.hint{{color:#555;font-size:.85rem}} tr.you{{background:#e6f0ff}}\
td.claim{{font-style:italic}} td.note{{color:#444;font-size:.9rem;overflow-wrap:anywhere}}</style></head><body>\
<h1>labgate: lab status</h1>\
<p class=\"state\" id=\"held\">{headline}</p><p id=\"waiting\">{waiting}</p>{draining}\
<ul><li>Typical wait: {} ({})</li><li>Typical hold: {} ({})</li>{max_hold}</ul>{table}\
<p class=\"hint\">Refreshes every {REFRESH_SECS} s.</p></body></html>",
        typical(status.typical_wait_secs),
        window(status.wait_samples, "wait"),
        typical(status.typical_hold_secs),
        window(status.hold_samples, "completed hold"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::SessionId;

    fn status() -> LabStatus {
        LabStatus {
            held: true,
            hold_secs: 250.0,
            waiting: 2,
            typical_wait_secs: Some(30.0),
            typical_hold_secs: None,
            draining: true,
            resetting: false,
            reset_failed: false,
            max_hold_secs: Some(1800.0),
            tunnels: 2,
            hold_samples: 0,
            wait_samples: 12,
            queue: vec![QueueEntry {
                position: 0,
                tag: "0a1b2c3d".into(),
                state: "active",
                secs: 250.0,
                expected_start_secs: None,
                identity: None,
                owner: None,
                note: None,
            }],
        }
    }

    #[test]
    fn with_names_the_page_says_who_holds_the_lab_escaped() {
        let mut s = status();
        s.queue[0].identity = Some("alice".into());
        s.queue.push(QueueEntry {
            position: 1,
            tag: "99887766".into(),
            state: "waiting",
            secs: 3.0,
            expected_start_secs: Some(720.0),
            identity: Some("<bob>".into()),
            owner: None,
            note: None,
        });
        let page = html(&s, Some("99887766"));
        assert!(
            page.contains("<tr class=\"you\"><td>1</td><td>&lt;bob&gt;</td><td><code>99887766</code> <strong>&larr; you</strong>"),
            "{page}"
        );
        assert_eq!(page.matches("&larr; you").count(), 1);
        assert!(page.contains("<td>~12 min 0 s, position 1</td>"), "{page}");
        assert!(
            page.contains("alice holds the lab, for 4 min 10 s so far."),
            "{page}"
        );
        assert!(
            page.contains("<th>who</th>") && page.contains("&lt;bob&gt;"),
            "{page}"
        );
        assert!(!page.contains("<bob>"));
        let text = String::from_utf8(json(&s)).unwrap();
        assert!(text.contains(r#""identity":"alice""#), "{text}");
        // Without names, no identity field at all.
        assert!(!String::from_utf8(json(&status()))
            .unwrap()
            .contains("identity"));
    }

    #[test]
    fn claimed_owners_and_notes_are_shown_as_claims_escaped() {
        let mut s = status();
        s.queue[0].owner = Some("<i>root</i> & co".into());
        s.queue.push(QueueEntry {
            position: 1,
            tag: "99887766".into(),
            state: "waiting",
            secs: 3.0,
            expected_start_secs: Some(90.0),
            identity: None,
            owner: None,
            note: Some("https://ci.example/jobs/1?a=1&b=\"2\"".into()),
        });
        let page = html(&s, Some("99887766"));
        assert!(!page.contains("<i>root"), "{page}");
        assert!(
            page.contains("held by a session that says it is \u{201c}&lt;i&gt;root&lt;/i&gt; &amp; co\u{201d}"),
            "{page}"
        );
        assert!(page.contains("<th title=\"what the session's client says; not verified\">owner (as claimed)</th><th>note</th>"), "{page}");
        assert!(
            page.contains("<td class=\"claim\">&lt;i&gt;root&lt;/i&gt; &amp; co</td><td>-</td>"),
            "{page}"
        );
        assert!(
            page.contains("<td>-</td><td class=\"note\">https://ci.example/jobs/1?a=1&amp;b=&quot;2&quot;</td>"),
            "{page}"
        );
        // A verified identity is the holder; the claim stays a column of its own.
        s.queue[0].identity = Some("alice".into());
        let page = html(&s, None);
        assert!(page.contains("alice holds the lab"), "{page}");
        assert!(
            page.contains("<td>alice</td><td class=\"claim\">"),
            "{page}"
        );
        let text = String::from_utf8(json(&s)).unwrap();
        assert!(text.contains(r#""owner":"<i>root</i> & co""#), "{text}");
        assert!(text.contains(r#""note":"https://ci.example"#), "{text}");
        // Without any, no columns.
        assert!(!html(&status(), None).contains("as claimed"));
    }

    #[test]
    fn tags_are_short_stable_and_not_the_id() {
        let id = SessionId::random();
        let t = id.tag();
        assert_eq!(t.len(), 8);
        assert_eq!(t, id.tag());
        assert!(!id.to_string().contains(&t));
        assert_ne!(t, SessionId::random().tag());
    }

    #[test]
    fn page_says_what_matters() {
        assert_eq!(you_param(Some("tag=0a1b2c3d")), Some("0a1b2c3d"));
        for bad in ["tag=0A1B2C3D", "tag=<script>", "tag=0a1b2c3", "x=1"] {
            assert_eq!(you_param(Some(bad)), None, "{bad}");
        }
        let page = html(&status(), None);
        assert!(!page.contains("&larr; you"));
        assert!(page.contains("The lab is held, for 4 min 10 s so far."));
        assert!(page.contains("2 sessions are waiting."));
        assert!(page.contains("The holder has 2 tunnels open."));
        assert!(page.contains("draining"));
        assert!(page.contains("Typical wait: 30 s (median of the last 12 waits)"));
        assert!(page.contains("Typical hold: not known yet (no completed holds yet)"));
        assert!(page.contains("Hold limit: 30 min 0 s"));
        assert!(page.contains("<code>0a1b2c3d</code>"));
        assert!(page.contains("http-equiv=\"refresh\""));
        let free = LabStatus {
            held: false,
            waiting: 0,
            draining: false,
            queue: vec![],
            ..status()
        };
        let page = html(&free, None);
        assert!(page.contains("The lab is free."));
        assert!(page.contains("Nobody is waiting."));
        assert!(!page.contains("class=\"drain\""));
        let resetting = LabStatus {
            resetting: true,
            ..status()
        };
        assert!(html(&resetting, None).contains("resetting the lab"));
        let failed = LabStatus {
            reset_failed: true,
            ..status()
        };
        assert!(html(&failed, None).contains("Resetting the lab failed"));
    }

    #[test]
    fn human_durations() {
        assert_eq!(human(0.4), "0 s");
        assert_eq!(human(59.0), "59 s");
        assert_eq!(human(61.0), "1 min 1 s");
        assert_eq!(human(7300.0), "2 h 1 min");
    }
}

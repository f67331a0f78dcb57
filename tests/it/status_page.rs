//! The public status page (issue 4, item 3): `GET /status.json` figures for an empty, a
//! held and a draining lab; that neither page ever shows a session id, only the tag that
//! `POST /session` hands out; and the HTML page as headless Chromium renders it (text and
//! a screenshot).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::*;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// The tag the status page promises: 8 hex digits of SHA-256 over the id's 16 bytes.
/// Computed here from the definition, not with labgate's own function.
fn expected_tag(id: &str) -> String {
    let uuid = uuid::Uuid::parse_str(id).expect("a UUID");
    let digest = Sha256::digest(uuid.as_bytes());
    digest[..4].iter().map(|b| format!("{b:02x}")).collect()
}

/// `POST /session` that also returns the `X-Lab-Session-Tag` header.
async fn create_tagged(gw: &Gateway) -> (String, String) {
    let r = client()
        .post(gw.url("/session"))
        .send()
        .await
        .expect("POST /session");
    assert_eq!(r.status().as_u16(), 201);
    let tag = r
        .headers()
        .get("x-lab-session-tag")
        .and_then(|v| v.to_str().ok())
        .expect("X-Lab-Session-Tag")
        .to_string();
    let v: Value = r.json().await.expect("json");
    let id = v["session_id"].as_str().expect("session_id").to_string();
    assert_eq!(tag, expected_tag(&id), "the tag of {id}");
    (id, tag)
}

async fn status_json(gw: &Gateway) -> Value {
    let r = client()
        .get(gw.url("/status.json"))
        .send()
        .await
        .expect("GET /status.json");
    assert_eq!(r.status().as_u16(), 200);
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(ct.starts_with("application/json"), "content-type {ct}");
    r.json().await.expect("status.json is JSON")
}

/// The body of `GET /status`, checking status and content type.
async fn status_html(gw: &Gateway) -> String {
    let r = client()
        .get(gw.url("/status"))
        .send()
        .await
        .expect("GET /status");
    assert_eq!(r.status().as_u16(), 200);
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(ct.starts_with("text/html"), "content-type {ct}");
    r.text().await.expect("body")
}

/// Every string in a JSON document (keys and values), space-separated: numbers are
/// left out, since the digits of a float are no id.
fn json_strings(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(json_strings).collect::<Vec<_>>().join(" "),
        Value::Object(o) => o
            .iter()
            .map(|(k, v)| format!("{k} {}", json_strings(v)))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// Fails if `page` shows any of `ids` in any spelling, or anything id-like: a run of
/// 12 or more hex digits (a tag has 8; a UUID's last group alone has 12).
fn assert_no_session_id(page: &str, ids: &[String], what: &str) {
    for id in ids {
        let simple = id.replace('-', "");
        for form in [
            id.clone(),
            id.to_uppercase(),
            simple.clone(),
            simple.to_uppercase(),
        ] {
            assert!(
                !page.contains(&form),
                "{what} reveals a session id ({form})"
            );
        }
    }
    let mut run = 0;
    for c in page.chars() {
        run = if c.is_ascii_hexdigit() { run + 1 } else { 0 };
        assert!(run < 12, "{what} holds a long hex run: {page}");
    }
}

const STATUS_KEYS: [&str; 13] = [
    "draining",
    "held",
    "hold_samples",
    "hold_secs",
    "max_hold_secs",
    "queue",
    "reset_failed",
    "resetting",
    "tunnels",
    "typical_hold_secs",
    "typical_wait_secs",
    "wait_samples",
    "waiting",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_lab_is_free_with_nothing_known_yet() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&Cfg::new(up.addr)).await;
    let s = status_json(&gw).await;
    assert_eq!(
        s,
        json!({
            "held": false,
            "hold_secs": 0.0,
            "waiting": 0,
            "typical_wait_secs": null,
            "typical_hold_secs": null,
            "draining": false,
            "resetting": false,
            "reset_failed": false,
            "max_hold_secs": null,
            "tunnels": 0,
            "hold_samples": 0,
            "wait_samples": 0,
            "queue": [],
        })
    );
    let page = status_html(&gw).await;
    assert!(page.contains("The lab is free."), "{page}");
    assert!(page.contains("Nobody is waiting."), "{page}");
    assert!(page.contains("Typical wait: not known yet"), "{page}");
    assert!(page.contains("Typical hold: not known yet"), "{page}");
    assert!(!page.contains("class=\"drain\""), "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_lab_shows_holder_waiters_and_tags_but_never_an_id() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&Cfg::new(up.addr)).await;
    let mut sessions = Vec::new();
    let before = Instant::now();
    for _ in 0..3 {
        sessions.push(create_tagged(&gw).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = status_json(&gw).await;
    let elapsed = before.elapsed().as_secs_f64();
    let mut keys: Vec<&str> = s
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, STATUS_KEYS, "{s:#}");
    assert_eq!(s["held"], true);
    assert_eq!(s["waiting"], 2);
    assert_eq!(s["draining"], false);
    let hold = s["hold_secs"].as_f64().expect("hold_secs");
    assert!((0.3..=elapsed).contains(&hold), "hold {hold} of {elapsed}");
    // The holder walked in without waiting (not a wait: issue 15 #9); nobody has
    // finished a hold yet.
    assert_eq!(s["typical_wait_secs"], Value::Null);
    assert_eq!(s["typical_hold_secs"], Value::Null);
    let queue = s["queue"].as_array().expect("queue");
    assert_eq!(queue.len(), 3, "{s:#}");
    for (i, (entry, (_, tag))) in queue.iter().zip(&sessions).enumerate() {
        assert_eq!(entry["position"], i);
        assert_eq!(entry["tag"], tag.as_str());
        assert_eq!(entry["state"], if i == 0 { "active" } else { "waiting" });
        let secs = entry["secs"].as_f64().expect("secs");
        assert!((0.0..=elapsed).contains(&secs), "{entry}");
        assert_eq!(
            entry.as_object().map(|o| o.len()),
            Some(4),
            "only position, tag, state and secs: {entry}"
        );
    }

    let page = status_html(&gw).await;
    assert!(page.contains("The lab is held, for "), "{page}");
    assert!(page.contains("2 sessions are waiting."), "{page}");
    assert!(page.contains("http-equiv=\"refresh\""), "{page}");
    assert!(!page.to_lowercase().contains("<script"), "{page}");
    for (_, tag) in &sessions {
        assert!(
            page.contains(&format!("<code>{tag}</code>")),
            "{tag}: {page}"
        );
    }
    let ids: Vec<String> = sessions.iter().map(|(id, _)| id.clone()).collect();
    assert_no_session_id(&page, &ids, "/status");
    let raw_json = client()
        .get(gw.url("/status.json"))
        .send()
        .await
        .expect("GET /status.json")
        .text()
        .await
        .expect("body");
    // Every spelling of every id, case-insensitively, in the raw bytes too.
    let lower = raw_json.to_lowercase();
    for id in &ids {
        assert!(!lower.contains(id.as_str()), "/status.json reveals {id}");
        assert!(
            !lower.contains(&id.replace('-', "")),
            "/status.json reveals {id}"
        );
    }
    assert_no_session_id(&json_strings(&s), &ids, "the strings of /status.json");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typical_wait_and_hold_are_medians_of_recent_sessions() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&Cfg::new(up.addr)).await;
    // x walks in (waits 0); y and z queue behind it; each holder stays ≥ 400 ms.
    let t0 = Instant::now();
    let (x, _) = create_session(&gw).await;
    let (y, _) = create_session(&gw).await;
    let (_z, _) = create_session(&gw).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(delete_session(&gw, &x).await, 204);
    let y_waited_at_most = t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(delete_session(&gw, &y).await, 204);
    let at_most = t0.elapsed().as_secs_f64();
    let s = status_json(&gw).await;
    // Waits {y's ≈ 0.4, z's ≈ 0.8} (x walked in: not a wait): the (upper) median is
    // z's.
    let wait = s["typical_wait_secs"].as_f64().expect("typical wait");
    assert!(
        (0.8..=at_most).contains(&wait) && wait > y_waited_at_most - 0.4,
        "typical wait {wait}, y waited ≤ {y_waited_at_most}: {s:#}"
    );
    assert_eq!(s["wait_samples"], 2, "{s:#}");
    assert_eq!(s["hold_samples"], 2, "{s:#}");
    // Holds {x's ≈ 0.4, y's ≈ 0.4}.
    let hold = s["typical_hold_secs"].as_f64().expect("typical hold");
    assert!(
        (0.4..=at_most).contains(&hold),
        "typical hold {hold}: {s:#}"
    );
    assert_eq!(s["waiting"], 0);
    assert_eq!(s["held"], true);
    let page = status_html(&gw).await;
    assert!(!page.contains("not known yet"), "{page}");
    assert!(page.contains("1 session") || page.contains("Nobody is waiting."));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_lists_only_the_first_twenty_sessions() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&Cfg::new(up.addr)).await;
    let mut tags = Vec::new();
    for _ in 0..23 {
        tags.push(create_tagged(&gw).await.1);
    }
    let s = status_json(&gw).await;
    assert_eq!(s["waiting"], 22);
    let listed: Vec<&str> = s["queue"]
        .as_array()
        .expect("queue")
        .iter()
        .map(|e| e["tag"].as_str().expect("tag"))
        .collect();
    assert_eq!(
        listed,
        tags[..20].iter().map(String::as_str).collect::<Vec<_>>()
    );
    let page = status_html(&gw).await;
    assert!(page.contains("22 sessions are waiting."), "{page}");
    assert!(
        page.contains(&tags[19]) && !page.contains(&tags[20]),
        "{page}"
    );
}

// ------------------------------------------------------------------ headless Chromium

fn chromium() -> PathBuf {
    let debian = Path::new("/usr/bin/chromium");
    if debian.exists() {
        return debian.to_path_buf();
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("chromium"))
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!(
                "chromium not found (/usr/bin/chromium or on PATH): the status page test needs \
                 headless Chromium; install Debian's `chromium` (.ci/setup does)"
            )
        })
}

/// Runs headless Chromium on `url` with `args` and a fresh profile; bounded in time,
/// and everything it started is killed when it returns.
async fn run_chromium(url: String, args: Vec<String>) -> std::process::Output {
    let exe = chromium();
    tokio::task::spawn_blocking(move || {
        let profile = tempfile::tempdir().expect("profile dir");
        let mut cmd = Command::new(exe);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-proxy-server",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(&args)
        .arg(&url);
        let out = run_bounded(&mut cmd, Duration::from_secs(60));
        assert!(
            out.status.success(),
            "chromium failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    })
    .await
    .expect("chromium task")
}

/// The text of an HTML document: tags dropped, whitespace collapsed.
fn text_of(html: &str) -> String {
    let body = html.split_once("<body").map_or(html, |(_, b)| b);
    let mut text = String::new();
    let mut in_tag = false;
    for c in body.chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                text.push(' ');
            }
            _ if !in_tag => text.push(c),
            _ => {}
        }
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_renders_a_held_draining_lab_and_takes_a_screenshot() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&Cfg::new(up.addr).admin_socket("admin.sock")).await;
    let mut sessions = Vec::new();
    for _ in 0..3 {
        sessions.push(create_tagged(&gw).await);
    }
    let out = gw.admin(&["drain"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = status_json(&gw).await;
    assert_eq!(s["draining"], true, "{s:#}");
    assert_eq!(s["held"], true);
    assert_eq!(s["waiting"], 2);
    let ids: Vec<String> = sessions.iter().map(|(id, _)| id.clone()).collect();

    let dom = run_chromium(gw.url("/status"), vec!["--dump-dom".into()]).await;
    let dom = String::from_utf8_lossy(&dom.stdout).into_owned();
    let text = text_of(&dom);
    assert!(text.contains("labgate: lab status"), "{text}");
    assert!(text.contains("The lab is held, for "), "{text}");
    assert!(text.contains("2 sessions are waiting."), "{text}");
    assert!(
        text.contains("labgate is draining: no new sessions are accepted"),
        "{text}"
    );
    assert!(text.contains("Typical wait:"), "{text}");
    for (i, (_, tag)) in sessions.iter().enumerate() {
        let state = if i == 0 { "active" } else { "waiting" };
        assert!(
            text.contains(&format!("{i} {tag} {state}")),
            "{tag}: {text}"
        );
    }
    assert_no_session_id(&dom, &ids, "the rendered /status");

    let shots = tempfile::tempdir().expect("screenshot dir");
    let png = shots.path().join("status.png");
    run_chromium(
        gw.url("/status"),
        vec![
            format!("--screenshot={}", png.display()),
            "--window-size=1000,800".into(),
        ],
    )
    .await;
    let bytes = std::fs::read(&png).expect("the screenshot was written");
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "not a PNG: {:?}",
        &bytes[..bytes.len().min(8)]
    );
    assert!(bytes.len() > 5 * 1024, "a {}-byte screenshot", bytes.len());
    // IHDR: width and height, big-endian, right after the signature and chunk header.
    let dim = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    assert_eq!(&bytes[12..16], b"IHDR");
    assert_eq!((dim(16), dim(20)), (1000, 800));
    // Issue 15: a page view no longer logs a 404 for the browser's icon request.
    let access = gw.log_target("labgate::access");
    let not_found: Vec<&serde_json::Value> = access.iter().filter(|l| l["status"] == 404).collect();
    assert!(not_found.is_empty(), "{not_found:#?}");
    assert!(
        access
            .iter()
            .any(|l| l["path"] == "/favicon.svg" && l["status"] == 200),
        "the browser fetched the page's icon: {access:#?}"
    );
    println!(
        "status page screenshot: {} ({} bytes)",
        png.display(),
        bytes.len()
    );
    // To look at it after the run: LABGATE_KEEP_SCREENSHOT=/some/dir cargo test ...
    if let Some(keep) = std::env::var_os("LABGATE_KEEP_SCREENSHOT") {
        let kept = Path::new(&keep).join("status.png");
        std::fs::copy(&png, &kept).expect("copy the screenshot");
        println!("kept a copy at {}", kept.display());
    }
}

/// Identity mode behind a real nginx: the status board (an nginx server that passes
/// only `/status`, as the identity `status-board`) shows who holds the lab and who
/// waits, rendered by headless Chromium; with `status_page_names = false`, nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_shows_who_holds_the_lab_in_identity_mode() {
    use crate::support::nginx::{Nginx, USER_HEADER};
    use crate::support::tls::*;
    let up = Upstream::start().await;
    let identity = format!("[identity]\nsource = \"header\"\nheader = \"{USER_HEADER}\"\n");
    let gw = Gateway::start(
        &Cfg::new(up.addr)
            .trusted_proxies(&["127.0.0.1/32"])
            .extra(&identity),
    )
    .await;
    let mut ids = Vec::new();
    for who in ["alice", "bob"] {
        let r = raw(
            gw.addr(),
            &format!(
                "POST /session HTTP/1.1\r\nHost: x\r\n{USER_HEADER}: {who}\r\nContent-Length: 0\r\n\r\n"
            ),
        )
        .await
        .expect("create");
        assert_eq!(r.status, 201, "{}", r.text());
        let v: Value = serde_json::from_slice(&r.body).expect("json");
        ids.push(v["session_id"].as_str().expect("id").to_string());
    }
    let dir = tempfile::tempdir().expect("nginx dir");
    let pki = TestCa::new(dir.path(), "users");
    let (server, _) = pki.issue("nginx", "127.0.0.1", Usage::Server, Validity::Current);
    let nginx = Nginx::start(dir.path(), gw.addr(), &server, &pki.cert_path, &[]);
    let board = format!("http://127.0.0.1:{}/status", nginx.status_port);

    let dom = run_chromium(board.clone(), vec!["--dump-dom".into()]).await;
    let dom = String::from_utf8_lossy(&dom.stdout).into_owned();
    let text = text_of(&dom);
    assert!(text.contains("alice holds the lab, for "), "{text}");
    assert!(text.contains("1 session is waiting."), "{text}");
    assert!(text.contains("1 bob "), "{text}");
    assert_no_session_id(&dom, &ids, "the rendered identity-mode /status");

    let shots = tempfile::tempdir().expect("screenshot dir");
    let png = shots.path().join("status-identity.png");
    run_chromium(
        board,
        vec![
            format!("--screenshot={}", png.display()),
            "--window-size=1000,800".into(),
        ],
    )
    .await;
    let bytes = std::fs::read(&png).expect("the screenshot was written");
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 5 * 1024);
    if let Some(keep) = std::env::var_os("LABGATE_KEEP_SCREENSHOT") {
        let kept = Path::new(&keep).join("status-identity.png");
        std::fs::copy(&png, &kept).expect("copy the screenshot");
        println!("kept a copy at {}", kept.display());
    }

    // The same lab with names hidden: a tag, no person.
    let hidden = Gateway::start(
        &Cfg::new(up.addr)
            .trusted_proxies(&["127.0.0.1/32"])
            .extra(&format!("{identity}status_page_names = false\n")),
    )
    .await;
    let create = format!(
        "POST /session HTTP/1.1\r\nHost: x\r\n{USER_HEADER}: alice\r\nContent-Length: 0\r\n\r\n"
    );
    assert_eq!(
        raw(hidden.addr(), &create).await.expect("create").status,
        201
    );
    let page = raw(
        hidden.addr(),
        &format!("GET /status HTTP/1.1\r\nHost: x\r\n{USER_HEADER}: bob\r\n\r\n"),
    )
    .await
    .expect("status");
    assert_eq!(page.status, 200);
    let text = text_of(&page.text());
    assert!(text.contains("The lab is held, for "), "{text}");
    assert!(!text.contains("alice"), "{text}");
}

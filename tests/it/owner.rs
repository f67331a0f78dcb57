//! Who holds the lab (issue 15): the optional `POST /session` body (`owner`, `note`),
//! refused with a FastAPI-shaped `422` naming the field when it is bad; shown on
//! `/status`, `/status.json`, `labgate admin queue` and the `session_created` audit
//! line; kept across a restart; sent by `labgate run --owner/--note` (and its defaults);
//! and `labgate status`, the queue as a table with the caller's row marked.

use std::process::Command;
use std::time::Duration;

use crate::support::*;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_labgate");

/// `POST /session` with `body` as `application/json`: (status, JSON answer).
async fn create_with(gw: &Gateway, body: &str) -> (u16, Value) {
    let r = raw(
        gw.addr(),
        &format!(
            "POST /session HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
    .await
    .expect("POST /session");
    let v = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    (r.status, v)
}

async fn status_json(gw: &Gateway) -> Value {
    client()
        .get(gw.url("/status.json"))
        .send()
        .await
        .expect("GET /status.json")
        .json()
        .await
        .expect("JSON")
}

fn labgate(args: &[&str], envs: &[(&str, &str)]) -> std::process::Output {
    run_bounded(
        Command::new(BIN)
            .args(args)
            .env_remove("LAB_URL")
            .env_remove("LAB_SESSION_ID")
            .envs(envs.iter().copied()),
        Duration::from_secs(30),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_and_note_are_shown_everywhere_escaped_and_survive_a_restart() {
    let up = Upstream::start().await;
    let store = tempfile::tempdir().expect("tempdir");
    let cfg = Cfg::new(up.addr)
        .admin_socket("admin.sock")
        .state_path(&store.path().join("queue.redb"));
    let mut gw = Gateway::start(&cfg).await;
    let (status, a) = create_with(
        &gw,
        r#"{"owner":"alice@lab-pc","note":"<script>alert(1)</script> & co"}"#,
    )
    .await;
    assert_eq!(status, 201, "{a}");
    assert_eq!(a["position"], 0);
    // neops clients: no body at all (the helper sends Content-Length: 0).
    let (b, _) = create_session(&gw).await;
    let (status, c) = create_with(&gw, r#"{"owner":"carol"}"#).await;
    assert_eq!(status, 201, "{c}");
    let a_id = a["session_id"].as_str().expect("id").to_string();

    let board = status_json(&gw).await;
    let q = &board["queue"];
    assert_eq!(q[0]["owner"], "alice@lab-pc", "{board}");
    assert_eq!(q[0]["note"], "<script>alert(1)</script> & co");
    assert!(
        q[1].get("owner").is_none() && q[1].get("note").is_none(),
        "{board}"
    );
    assert_eq!(q[2]["owner"], "carol");

    let page = client()
        .get(gw.url("/status"))
        .send()
        .await
        .expect("GET /status")
        .text()
        .await
        .expect("page");
    assert!(!page.contains("<script>"), "{page}");
    assert!(
        page.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; co"),
        "{page}"
    );
    assert!(page.contains("owner (as claimed)"), "{page}");
    assert!(
        page.contains("says it is \u{201c}alice@lab-pc\u{201d}"),
        "{page}"
    );

    let out = gw.admin(&["queue"]);
    assert!(out.status.success(), "{out:?}");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("TAG") && table.contains(&tag(&a_id)),
        "{table}"
    );
    assert!(
        table.contains("CLAIMED BY") && table.contains("alice@lab-pc"),
        "{table}"
    );
    let out = gw.admin(&["queue", "--json"]);
    let listing: Value = serde_json::from_slice(&out.stdout).expect("admin JSON");
    assert_eq!(listing["sessions"][0]["owner"], "alice@lab-pc");
    assert_eq!(listing["sessions"][2]["owner"], "carol");
    assert!(listing["sessions"][1].get("owner").is_none());

    let created = gw.audit_events("session_created");
    let line = created
        .iter()
        .find(|e| e["session"] == tag(&a_id))
        .expect("the audit line of alice's session");
    assert_eq!(line["owner"], "alice@lab-pc", "{line}");
    assert_eq!(line["note"], "<script>alert(1)</script> & co");
    let plain = created
        .iter()
        .find(|e| e["session"] == tag(&b))
        .expect("b's line");
    assert!(plain.get("owner").is_none(), "{plain}");

    assert!(gw.terminate().await.is_some_and(|s| s.success()));
    let gw = Gateway::start(&cfg).await;
    let board = status_json(&gw).await;
    assert_eq!(board["queue"][0]["owner"], "alice@lab-pc", "{board}");
    assert_eq!(board["queue"][0]["tag"], tag(&a_id));
    assert!(board["queue"][1].get("owner").is_none());
    assert_eq!(board["queue"][2]["owner"], "carol");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_body_is_a_422_naming_the_field_and_creates_nothing() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&Cfg::new(up.addr)).await;
    let cases = [
        (
            json!({"owner": "x".repeat(65)}).to_string(),
            json!(["body", "owner"]),
        ),
        (
            json!({"note": "x".repeat(201)}).to_string(),
            json!(["body", "note"]),
        ),
        (
            r#"{"owner":"a","admin":true}"#.to_string(),
            json!(["body", "admin"]),
        ),
        (
            r#"{"owner":"a\u001b[2Jb"}"#.to_string(),
            json!(["body", "owner"]),
        ),
        (
            r#"{"note":"a\u202eb"}"#.to_string(),
            json!(["body", "note"]),
        ),
        (r#"{"owner":7}"#.to_string(), json!(["body", "owner"])),
        (r#"["owner"]"#.to_string(), json!(["body"])),
        (
            format!(r#"{{"note":"{}"}}"#, "é".repeat(1100)),
            json!(["body"]),
        ),
    ];
    for (body, loc) in &cases {
        let (status, v) = create_with(&gw, body).await;
        assert_eq!(status, 422, "{body}: {v}");
        let locs: Vec<&Value> = v["detail"]
            .as_array()
            .expect("a list")
            .iter()
            .map(|i| &i["loc"])
            .collect();
        assert!(locs.contains(&loc), "{body}: {v}");
    }
    let (status, v) = create_with(&gw, r#"{"owner": "a",}"#).await;
    assert_eq!(
        (status, &v["detail"][0]["type"]),
        (422, &json!("json_invalid"))
    );

    // A body needs a JSON Content-Type.
    let r = raw(
        gw.addr(),
        "POST /session HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 14\r\n\r\n{\"owner\":\"ab\"}",
    )
    .await
    .expect("POST");
    assert_eq!(r.status, 422, "{}", r.text());
    let v: Value = serde_json::from_slice(&r.body).expect("JSON");
    assert_eq!(v["detail"][0]["loc"], json!(["header", "Content-Type"]));

    // Larger than 2 KiB, announced or chunked: refused without reading it all.
    let big = format!("{{\"note\":\"{}\"}}", "x".repeat(5000));
    let (status, v) = create_with(&gw, &big).await;
    assert_eq!(status, 422, "{v}");
    assert_eq!(v["detail"][0]["ctx"]["max_length"], 2048);
    let chunk = "x".repeat(3000);
    let r = raw(
        gw.addr(),
        &format!(
            "POST /session HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
            chunk.len()
        ),
    )
    .await
    .expect("POST chunked");
    assert_eq!(r.status, 422, "{}", r.text());

    let board = status_json(&gw).await;
    assert_eq!(board["queue"], json!([]), "nothing was created: {board}");

    // What neops-style clients send is fine: nothing, an empty body with a JSON
    // Content-Type, or an empty object.
    let (status, _) = create_with(&gw, "").await;
    assert_eq!(status, 201);
    let (status, _) = create_with(&gw, "{}").await;
    assert_eq!(status, 201);
    let r = raw(
        gw.addr(),
        "POST /session HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 0\r\n\r\n",
    )
    .await
    .expect("POST");
    assert_eq!(r.status, 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labgate_run_sends_owner_and_note_and_labgate_status_marks_its_row() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&Cfg::new(up.addr)).await;
    let (status, alice) = create_with(&gw, r#"{"owner":"alice@lab-pc","note":"firmware"}"#).await;
    assert_eq!(status, 201);
    let alice = alice["session_id"].as_str().expect("id").to_string();
    let url = gw.base_url();

    // While alice holds the lab, a waiter with the CI defaults: its row is there.
    let waiter_dir = tempfile::tempdir().expect("tempdir");
    let script = format!(
        "\"{BIN}\" status > \"{}/board.txt\"",
        waiter_dir.path().display()
    );
    let gw_url = url.clone();
    let waiter = tokio::task::spawn_blocking(move || {
        labgate(
            &["run", "--url", &gw_url, "--", "sh", "-c", &script],
            &[
                ("USER", "runner"),
                ("GITHUB_SERVER_URL", "https://github.example"),
                ("GITHUB_REPOSITORY", "acme/rig"),
                ("GITHUB_RUN_ID", "42"),
            ],
        )
    });
    let board = eventually(Duration::from_secs(20), "the waiter queues", || async {
        let b = status_json(&gw).await;
        (b["waiting"] == 1).then_some(b)
    })
    .await;
    let row = &board["queue"][1];
    assert!(
        row["owner"]
            .as_str()
            .is_some_and(|o| o.starts_with("runner@")),
        "{board}"
    );
    assert_eq!(
        row["note"],
        "https://github.example/acme/rig/actions/runs/42"
    );

    // The table, from outside any session: nobody marked.
    let out = labgate(&["status", "--url", &url], &[]);
    assert!(out.status.success(), "{out:?}");
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        table.starts_with("The lab is held by a session that says it is \"alice@lab-pc\""),
        "{table}"
    );
    assert!(
        table.contains("CLAIMED BY") && table.contains("firmware"),
        "{table}"
    );
    assert!(table.contains("actions/runs/42"), "{table}");
    assert!(!table.contains("> marks"), "{table}");
    let out = labgate(&["status", "--json"], &[("LAB_URL", &url)]);
    let v: Value = serde_json::from_slice(&out.stdout).expect("--json is the JSON");
    assert_eq!(v["queue"][0]["owner"], "alice@lab-pc");

    // Alice leaves; the waiter's CMD runs `labgate status` inside its session.
    assert_eq!(delete_session(&gw, &alice).await, 204);
    let done = tokio::time::timeout(Duration::from_secs(40), waiter)
        .await
        .expect("labgate run finished")
        .expect("join");
    assert!(done.status.success(), "{done:?}");
    let inside = std::fs::read_to_string(waiter_dir.path().join("board.txt")).expect("board");
    let mine = inside
        .lines()
        .find(|l| l.starts_with('>'))
        .unwrap_or_else(|| panic!("no marked row: {inside}"));
    assert!(
        mine.contains("active") && mine.contains("runner@"),
        "{inside}"
    );
    assert!(
        inside.contains("> marks your session (LAB_SESSION_ID)"),
        "{inside}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labgate_status_says_in_one_line_what_is_wrong() {
    // Nothing listens there.
    let port = free_port();
    let out = labgate(
        &["status", "--url", &format!("http://127.0.0.1:{port}")],
        &[],
    );
    assert_eq!(out.status.code(), Some(69), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("cannot reach"), "{err}");

    // Something that is not labgate.
    let up = Upstream::start().await;
    let out = labgate(&["status", "--url", &format!("http://{}", up.addr)], &[]);
    assert_eq!(out.status.code(), Some(76), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("not a labgate status"), "{err}");
}

/// Identity mode: the claimed owner is shown beside the verified identity, never as it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_identity_mode_a_claim_stands_beside_the_verified_identity() {
    use crate::support::nginx::USER_HEADER;
    let up = Upstream::start().await;
    let identity = format!("[identity]\nsource = \"header\"\nheader = \"{USER_HEADER}\"\n");
    let gw = Gateway::start(
        &Cfg::new(up.addr)
            .trusted_proxies(&["127.0.0.1/32"])
            .extra(&identity),
    )
    .await;
    let body = r#"{"owner":"root","note":"trust me"}"#;
    let r = raw(
        gw.addr(),
        &format!(
            "POST /session HTTP/1.1\r\nHost: x\r\n{USER_HEADER}: alice\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
    .await
    .expect("create");
    assert_eq!(r.status, 201, "{}", r.text());
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\n{USER_HEADER}: bob\r\n\r\n");
    let board = raw(gw.addr(), &get("/status.json"))
        .await
        .expect("status.json");
    let board: Value = serde_json::from_slice(&board.body).expect("JSON");
    assert_eq!(board["queue"][0]["identity"], "alice", "{board}");
    assert_eq!(board["queue"][0]["owner"], "root", "{board}");
    let page = raw(gw.addr(), &get("/status"))
        .await
        .expect("status")
        .text();
    assert!(page.contains("alice holds the lab"), "{page}");
    assert!(!page.contains("root holds"), "{page}");
    assert!(
        page.contains("<td>alice</td><td class=\"claim\">root</td>"),
        "{page}"
    );
    let created = gw.audit_events("session_created");
    assert_eq!(created[0]["identity"], "alice", "{created:?}");
    assert_eq!(created[0]["owner"], "root", "{created:?}");
}

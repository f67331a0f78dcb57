//! The open-file budget (src/fdbudget.rs, issue 11): `serve` under a limit that cannot
//! cover its config refuses to start with one line; under a low soft limit and a hard
//! limit that covers it, it raises the soft limit and starts; `check` prints the budget
//! and fails the same way. The limits are set with `prlimit` on the child only.

use std::process::Command;
use std::time::Duration;

use crate::support::*;

/// The harness's default config: `max_connections = 1000`, threads 2, one upstream.
const NEED: u64 = 1000 * 8 + 2 * 128 * 2 + 64 + 1;

fn cfg() -> Cfg {
    // The upstream is never contacted.
    Cfg::new(std::net::SocketAddr::from(([127, 0, 0, 1], free_port())))
}

/// `labgate ARGS... --config <cfg rendered into dir>` under `prlimit --nofile=LIMIT`.
fn under_limit(limit: &str, dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    require_tool("prlimit");
    let path = dir.join("labgate.toml");
    std::fs::write(&path, cfg().render(dir, free_port(), free_port())).expect("write config");
    run_bounded(
        Command::new("prlimit")
            .arg(format!("--nofile={limit}"))
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_labgate"))
            .args(args)
            .arg("--config")
            .arg(&path)
            .env("LABGATE_LOG", "warn"),
        Duration::from_secs(20),
    )
}

/// The lines labgate itself printed (not log lines).
fn own_lines(stderr: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(stderr)
        .lines()
        .filter(|l| l.starts_with("labgate:"))
        .map(str::to_string)
        .collect()
}

fn assert_names_need_limit_and_fixes(line: &str, limit: &str) {
    for part in [
        format!("needs up to {NEED} open files"),
        "server.max_connections 1000 x 8".to_string(),
        format!("the open-file limit is {limit}"),
        "LimitNOFILE=".to_string(),
        "ulimit -n".to_string(),
        "lower server.max_connections".to_string(),
    ] {
        assert!(line.contains(&part), "{part:?} missing from: {line}");
    }
}

#[test]
fn serve_refuses_to_start_when_the_hard_open_file_limit_is_below_the_budget() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Before the budget check, labgate started here and failed later with EMFILE in
    // pingora's accept loop.
    let out = under_limit("256", dir.path(), &["serve"]);
    assert!(
        !out.status.success(),
        "labgate started under 256 open files"
    );
    let lines = own_lines(&out.stderr);
    assert_eq!(lines.len(), 1, "one line: {lines:?}");
    assert_names_need_limit_and_fixes(&lines[0], "soft 256, hard 256");
}

#[tokio::test]
async fn serve_raises_a_low_soft_limit_when_the_hard_limit_covers_the_budget() {
    require_tool("prlimit");
    let gw = Gateway::start(&cfg().nofile_soft_hard(256, 16_384)).await;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", gw.pid())).expect("limits");
    let open_files: Vec<&str> = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .expect("a Max open files line")
        .split_whitespace()
        .collect();
    assert_eq!(
        open_files[..2],
        [NEED.to_string(), "16384".to_string()],
        "soft raised to the budget, hard untouched: {limits}"
    );
    // The budget is logged once, at info.
    let budget: Vec<_> = gw
        .log_json()
        .into_iter()
        .filter(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("open-file budget"))
        })
        .collect();
    assert_eq!(budget.len(), 1, "{}", gw.log_tail());
    assert_eq!(budget[0]["need"], NEED);
    // And it serves.
    let r = raw(gw.addr(), "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("healthz");
    assert_eq!(r.status, 204);
}

#[test]
fn check_prints_the_budget_and_fails_when_the_hard_limit_cannot_cover_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ok = under_limit("256:16384", dir.path(), &["check"]);
    assert!(ok.status.success(), "{ok:?}");
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(
        stdout.contains(&format!(
            "needs up to {NEED} open files (server.max_connections 1000 x 8"
        )) && stdout.contains(&format!(
            "open-file limit here: soft 256, hard 16384 (serve raises the soft limit to {NEED})"
        )),
        "{stdout}"
    );

    let short = under_limit("256", dir.path(), &["check"]);
    assert!(!short.status.success(), "check passed under 256 open files");
    let lines = own_lines(&short.stderr);
    assert_eq!(lines.len(), 1, "one line: {lines:?}");
    assert_names_need_limit_and_fixes(&lines[0], "soft 256, hard 256");
}

#[tokio::test]
async fn a_reload_adding_an_upstream_beyond_the_hard_limit_is_refused_and_the_old_config_stays() {
    require_tool("prlimit");
    // Exactly the budget: one more upstream (its health probe) needs one more descriptor.
    let up = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let base = Cfg::new(up).admin_socket("admin.sock");
    let gw = Gateway::start(&base.clone().nofile_soft_hard(NEED, NEED)).await;
    let more = base.upstream(UpstreamCfg::new("r2", up).routes(&["/lab/two"]));
    std::fs::write(
        &gw.config_path,
        more.render(gw.dir(), gw.port, gw.metrics_port),
    )
    .expect("rewrite the config");
    let out = gw.admin(&["reload"]);
    assert!(!out.status.success(), "the reload was applied: {out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains(&format!("needs up to {} open files", NEED + 1))
            && said.contains(&format!("the open-file limit is soft {NEED}, hard {NEED}")),
        "{said}"
    );
    // Still serving, on the old config.
    let r = raw(gw.addr(), "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("healthz");
    assert_eq!(r.status, 204);
}

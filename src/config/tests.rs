//! Loading configs: defaults, every error located, every shipped file parsing.

use super::*;

/// The smallest valid config: one upstream (other modules' tests build on it).
pub(crate) const MINIMAL: &str = r#"
[[upstream]]
name = "r1"
address = "127.0.0.1:9000"
routes = ["/lab"]
"#;

fn err(text: &str) -> ConfigError {
    match Config::parse(text, "t.toml") {
        Ok(_) => panic!("expected an error for:\n{text}"),
        Err(e) => e,
    }
}

#[test]
fn minimal_config_gets_defaults() {
    let c = Config::parse(MINIMAL, "t.toml").unwrap();
    assert_eq!(c.server.listen, vec!["127.0.0.1:8080".parse().unwrap()]);
    assert_eq!(c.queue.timeouts.active, Duration::from_secs(300));
    assert_eq!(c.queue.timeouts.waiting, Duration::from_secs(600));
    assert_eq!(c.queue.max_sessions, 10_000);
    assert_eq!(c.rate_limit.burst.get(), 10);
    assert_eq!(c.upstreams[0].read_timeout, Duration::from_secs(60));
    assert_eq!(c.routes.lookup("/lab/x").map(|(_, i)| *i), Some(0));
}

#[test]
fn unknown_field_is_located() {
    let e = err("[server]\nlisten = [\"127.0.0.1:1\"]\nthredas = 3\n");
    assert_eq!((e.line, e.column), (3, 1), "{e}");
    assert!(e.message.contains("thredas"), "{e}");
    assert!(e.to_string().starts_with("t.toml:3:1: "), "{e}");
}

#[test]
fn syntax_errors_are_one_line() {
    let e = err("[server\nthreads = 1\n");
    assert_eq!(e.line, 1, "{e}");
    assert!(!e.to_string().contains('\n'), "{e}");
}

#[test]
fn bad_duration_is_located() {
    let e = err(&format!(
        "[queue]\nactive_timeout = \"5 parsecs\"\n{MINIMAL}"
    ));
    assert_eq!(e.line, 2, "{e}");
    assert!(e.message.contains("invalid duration"), "{e}");
}

#[test]
fn durations_accept_humantime() {
    let c = Config::parse(
        &format!("[queue]\nactive_timeout = \"10m\"\nwaiting_timeout = \"1h\"\nreap_interval = \"250ms\"\n{MINIMAL}"),
        "t",
    )
    .unwrap();
    assert_eq!(c.queue.timeouts.active, Duration::from_secs(600));
    assert_eq!(c.queue.reap_interval, Duration::from_millis(250));
}

#[test]
fn optional_queue_settings() {
    let c = Config::parse(MINIMAL, "t").unwrap();
    assert_eq!((c.queue.max_hold, c.queue.state_path), (None, None));
    let c = Config::parse(
        &format!(
            "[queue]\nmax_hold = \"30m\"\nstate_path = \"/var/lib/labgate/q.redb\"\n{MINIMAL}"
        ),
        "t",
    )
    .unwrap();
    assert_eq!(c.queue.max_hold, Some(Duration::from_secs(1800)));
    assert_eq!(
        c.queue.state_path,
        Some(PathBuf::from("/var/lib/labgate/q.redb"))
    );
    assert_eq!(
        err(&format!("[queue]\nmax_hold = \"0s\"\n{MINIMAL}")).line,
        2
    );
    assert_eq!(
        err(&format!("[queue]\nstate_path = \" \"\n{MINIMAL}")).line,
        2
    );
}

#[test]
fn zero_values_are_rejected() {
    assert!(err(&format!("[queue]\nmax_sessions = 0\n{MINIMAL}"))
        .message
        .contains("max_sessions"));
    assert!(err(&format!("[queue]\nreap_interval = \"0s\"\n{MINIMAL}"))
        .message
        .contains("reap_interval"));
    assert!(err(&format!("[rate_limit]\nburst = 0\n{MINIMAL}"))
        .message
        .contains("burst"));
    assert!(err(&format!("[server]\nthreads = 0\n{MINIMAL}"))
        .message
        .contains("threads"));
}

#[test]
fn missing_upstream_is_an_error() {
    assert!(err("").message.contains("[[upstream]]"));
}

#[test]
fn routes_must_be_under_lab_and_plain() {
    for (route, why) in [
        ("/api", "below"),
        ("/labx", "below"),
        ("/lab/", "trailing"),
        ("/lab/../x", "invalid route"),
        ("/lab?x=1", "plain"),
        ("lab", "invalid route"),
    ] {
        let text = format!(
            "[[upstream]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\nroutes = [\"{route}\"]\n"
        );
        let e = err(&text);
        assert_eq!(e.line, 4, "{route}: {e}");
        assert!(e.message.contains(why), "{route}: {e}");
    }
}

#[test]
fn duplicate_routes_and_names_are_rejected() {
    let dup_route = format!("{MINIMAL}\n[[upstream]]\nname = \"r2\"\naddress = \"127.0.0.1:9001\"\nroutes = [\"/lab\"]\n");
    assert!(err(&dup_route).message.contains("already routed"));
    let dup_name = format!("{MINIMAL}\n[[upstream]]\nname = \"r1\"\naddress = \"127.0.0.1:9001\"\nroutes = [\"/lab/x\"]\n");
    assert!(err(&dup_name).message.contains("duplicate upstream name"));
}

#[test]
fn longest_route_wins() {
    let text = format!("{MINIMAL}\n[[upstream]]\nname = \"r2\"\naddress = \"127.0.0.1:9001\"\nroutes = [\"/lab/r2\", \"/lab/r2/deep\"]\nstrip_prefix = true\n");
    let c = Config::parse(&text, "t").unwrap();
    assert_eq!(
        c.routes.lookup("/lab/r2/deep/x").map(|(p, i)| (p, *i)),
        Some(("/lab/r2/deep", 1))
    );
    assert_eq!(c.routes.lookup("/lab/r20").map(|(_, i)| *i), Some(0));
}

#[test]
fn bad_addresses_are_errors_not_panics() {
    for addr in [
        "nonsense",
        "http://127.0.0.1:80",
        "127.0.0.1",
        "no-such-host.invalid:80",
        "127.0.0.1:99999",
    ] {
        let text =
            format!("[[upstream]]\nname = \"a\"\naddress = \"{addr}\"\nroutes = [\"/lab\"]\n");
        let e = err(&text);
        assert_eq!(e.line, 3, "{addr}: {e}");
    }
    let e = err(&format!("[server]\nlisten = [\"localhost\"]\n{MINIMAL}"));
    assert_eq!(e.line, 2, "{e}");
}

#[test]
fn header_values_come_from_env_or_file_only() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("token");
    std::fs::write(&secret, "Bearer s3cret\n").unwrap();
    let text = format!(
        "{MINIMAL}[upstream.headers]\nAuthorization = {{ file = \"{}\" }}\n",
        secret.display()
    );
    let c = Config::parse(&text, "t").unwrap();
    assert_eq!(c.upstreams[0].headers[0].0, "authorization");
    assert_eq!(c.upstreams[0].headers[0].1, "Bearer s3cret");

    let e = err(&format!(
        "{MINIMAL}[upstream.headers]\nX-Key = {{ env = \"LABGATE_TEST_SURELY_UNSET_VAR\" }}\n"
    ));
    assert!(e.message.contains("not set"), "{e}");
    assert_eq!(e.line, 7, "{e}");
    let e = err(&format!(
        "{MINIMAL}[upstream.headers]\nX-Key = \"literal\"\n"
    ));
    assert_eq!(e.line, 7, "{e}");
    let e = err(&format!(
        "{MINIMAL}[upstream.headers]\nX-Key = {{ env = \"A\", file = \"/b\" }}\n"
    ));
    assert!(e.message.contains("exactly one"), "{e}");
    let e = err(&format!(
        "{MINIMAL}[upstream.headers]\nX-Session-ID = {{ env = \"PATH\" }}\n"
    ));
    assert!(e.message.contains("managed by labgate"), "{e}");
}

#[test]
fn trusted_proxies_take_ips_and_cidrs() {
    let c = Config::parse(
        &format!("[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"127.0.0.1\", \"::1\"]\n{MINIMAL}"),
        "t",
    )
    .unwrap();
    assert_eq!(c.server.trusted_proxies.len(), 3);
    let e = err(&format!(
        "[server]\ntrusted_proxies = [\"10.0.0.0/33\"]\n{MINIMAL}"
    ));
    assert_eq!((e.line, e.column), (2, 20), "{e}");
}

#[test]
fn listeners_must_not_collide() {
    let e = err(&format!(
        "[metrics]\nlisten = \"127.0.0.1:8080\"\n{MINIMAL}"
    ));
    assert!(e.message.contains("metrics.listen"), "{e}");
}

#[test]
fn every_shipped_config_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
            seen += 1;
        }
    }
    assert!(seen > 0, "no config files in {}", dir.display());
}

#[test]
fn the_fencing_header_cannot_be_configured() {
    // Configured headers are set last: accepting this would let an operator overwrite
    // the fencing number every forwarded request carries (§7).
    for name in ["X-Lab-Session-Seq", "x-lab-session-seq"] {
        let e = err(&format!(
            "{MINIMAL}[upstream.headers]\n{name} = {{ env = \"PATH\" }}\n"
        ));
        assert!(e.message.contains("managed by labgate"), "{e}");
        assert_eq!((e.line, e.column), (7, 1), "{e}");
    }
}

#[test]
fn identity_and_tls_problems_are_located() {
    // Header mode believes only trusted proxies: none configured is an error.
    let e = err(&format!(
        "{MINIMAL}[identity]\nsource = \"header\"\nheader = \"X-Forwarded-User\"\n"
    ));
    assert!(e.message.contains("trusted_proxies"), "{e}");
    assert_eq!(e.line, 7, "{e}");
    let e = err(&format!("{MINIMAL}[identity]\nsource = \"ldap\"\n"));
    assert!(e.message.contains("\"mtls\" or \"header\""), "{e}");
    assert_eq!((e.line, e.column), (7, 10), "{e}");
    // mtls needs the TLS listener.
    let e = err(&format!(
        "{MINIMAL}[identity]\nsource = \"mtls\"\nclient_ca = \"/ca.pem\"\n"
    ));
    assert!(e.message.contains("[server.tls]"), "{e}");
    // The listener's files are read by `labgate check`: a missing one is named.
    let e = err(&format!(
        "[server.tls]\ncert = \"/nonexistent/cert.pem\"\nkey = \"/nonexistent/key.pem\"\n{MINIMAL}"
    ));
    assert!(e.message.contains("/nonexistent/cert.pem"), "{e}");
    // An identity header cannot be injected by the operator.
    let text = format!(
        "[server]\ntrusted_proxies = [\"127.0.0.1\"]\n{MINIMAL}[upstream.headers]\n\
         X-Forwarded-User = {{ env = \"PATH\" }}\n\n[identity]\nsource = \"header\"\n\
         header = \"X-Forwarded-User\"\n"
    );
    let e = err(&text);
    assert!(e.message.contains("carries identities"), "{e}");
    assert_eq!(e.line, 9, "{e}");
    // Nor the holder header, whatever identity mode.
    let e = err(&format!(
        "{MINIMAL}[upstream.headers]\nX-Lab-User = {{ env = \"PATH\" }}\n"
    ));
    assert!(e.message.contains("managed by labgate"), "{e}");
}

#[test]
fn upstream_tls_is_parsed_and_checked() {
    let c = Config::parse(
        &format!("{MINIMAL}[upstream.tls]\nsni = \"r1.lab\"\nhttp2 = false\n"),
        "t.toml",
    )
    .unwrap();
    let tls = c.upstreams[0].tls.as_ref().unwrap();
    assert_eq!(tls.sni, "r1.lab");
    assert!(tls.verify && !tls.http2);
    assert!(c.warnings().is_empty());
    let c = Config::parse(
        &format!("{MINIMAL}[upstream.tls]\ninsecure_skip_verify = true\n"),
        "t.toml",
    )
    .unwrap();
    assert!(
        c.warnings()[0].contains("insecure_skip_verify"),
        "{:?}",
        c.warnings()
    );
    let e = err(&format!(
        "{MINIMAL}[upstream.tls]\nca = \"/nonexistent/ca.pem\"\n"
    ));
    assert!(
        e.message.contains("upstream \"r1\"") && e.message.contains("/nonexistent/ca.pem"),
        "{e}"
    );
    assert_eq!((e.line, e.column), (7, 6), "{e}");
    let e = err(&format!("{MINIMAL}[upstream.tls]\nverify = false\n"));
    assert!(e.message.contains("verify"), "{e}");
}

/// Issue 10 #10: `labgate check` passed configs that panicked when served.
#[test]
fn out_of_bounds_values_are_refused_with_their_location() {
    for (section, key, value, want) in [
        ("rate_limit", "refill_every", "\"600y\"", "at most 1day"),
        ("rate_limit", "burst", "4294967295", "between 1 and 10000"),
        ("server", "grace_period", "\"100000y\"", "at most 1h"),
        ("server", "shutdown_timeout", "\"2h\"", "at most 1h"),
        ("server", "threads", "100000", "between 1 and 1024"),
        ("queue", "active_timeout", "\"31days\"", "at most 30days"),
        ("queue", "reap_interval", "\"1day\"", "at most 1h"),
        (
            "queue",
            "max_sessions",
            "9223372036854775807",
            "between 1 and 1000000",
        ),
        (
            "queue",
            "max_sessions_per_client",
            "0",
            "between 1 and 10000",
        ),
    ] {
        let text = format!("[{section}]\n{key} = {value}\n{MINIMAL}");
        let e = err(&text);
        assert_eq!((e.line, e.column), (2, key.len() + 4), "{e}");
        assert!(e.message.contains(key), "{e}");
        assert!(e.message.contains(want), "{key}: {e}");
    }
    let e = err(&format!("{MINIMAL}read_timeout = \"2days\"\n"));
    assert!(e.message.contains("at most 1day"), "{e}");
    // The per-client cap defaults to 10, or to max_sessions when that is lower.
    let c = Config::parse(MINIMAL, "t.toml").unwrap();
    assert_eq!(c.queue.max_sessions_per_client, 10);
    let c = Config::parse(&format!("[queue]\nmax_sessions = 3\n{MINIMAL}"), "t.toml").unwrap();
    assert_eq!(c.queue.max_sessions_per_client, 3);
}

mod extreme {
    use std::net::IpAddr;
    use std::time::Instant;

    use proptest::prelude::*;

    use super::*;
    use crate::gate::SessionHeader;
    use crate::limits::SessionLimiter;
    use crate::queue::EndReason;
    use crate::state::Shared;

    /// Mostly in range (so most cases get served), with every extreme now and then.
    fn duration() -> impl Strategy<Value = String> {
        prop_oneof![
            200 => (1u64..=3600).prop_map(|n| format!("{n}s")),
            1 => Just("0s".to_string()),
            1 => Just("1ns".to_string()),
            1 => Just("1h".to_string()),
            1 => Just("1h 1ns".to_string()),
            1 => Just("1day".to_string()),
            1 => Just("30days".to_string()),
            1 => Just("31days".to_string()),
            1 => Just("584y".to_string()),
            1 => Just("600y".to_string()),
            1 => Just("100000000y".to_string()),
            1 => Just("18446744073709551615s".to_string()),
            1 => Just("18446744073709551615ns".to_string()),
            1 => any::<u64>().prop_map(|n| format!("{n}s")),
            1 => any::<u64>().prop_map(|n| format!("{n}ms")),
            1 => (0u64..100_000).prop_map(|n| format!("{n}s")),
        ]
    }

    /// Mostly `low..=high`, with every extreme now and then.
    fn number(low: i64, high: i64) -> impl Strategy<Value = i64> {
        prop_oneof![
            100 => low..=high,
            1 => Just(0i64),
            1 => Just(-1),
            1 => Just(1024),
            1 => Just(1025),
            1 => Just(10_000),
            1 => Just(10_001),
            1 => Just(1_000_000),
            1 => Just(1_000_001),
            1 => Just(i64::from(u32::MAX)),
            1 => Just(i64::from(u32::MAX) + 1),
            1 => Just(i64::MAX),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever extreme values a config holds, either it is refused with a
        /// location or nothing panics building the state and the limiter, serving a
        /// few operations, or computing the shutdown deadlines.
        #[test]
        fn a_validated_config_never_panics_when_served(
            server in (number(1, 64), duration(), duration()),
            queue in (
                duration(), duration(), duration(), duration(),
                number(10, 100_000), number(1, 10),
            ),
            rate in (number(1, 10_000), duration()),
            upstream in (duration(), duration(), duration()),
        ) {
            let text = format!(
                "[server]\nthreads = {}\ngrace_period = \"{}\"\nshutdown_timeout = \"{}\"\n\
                 [queue]\nactive_timeout = \"{}\"\nwaiting_timeout = \"{}\"\n\
                 reap_interval = \"{}\"\nmax_hold = \"{}\"\nmax_sessions = {}\n\
                 max_sessions_per_client = {}\n\
                 [rate_limit]\nburst = {}\nrefill_every = \"{}\"\n{MINIMAL}\
                 connect_timeout = \"{}\"\nread_timeout = \"{}\"\nwrite_timeout = \"{}\"\n",
                server.0, server.1, server.2,
                queue.0, queue.1, queue.2, queue.3, queue.4, queue.5,
                rate.0, rate.1,
                upstream.0, upstream.1, upstream.2,
            );
            let config = match Config::parse(&text, "t.toml") {
                Err(e) => {
                    prop_assert!(e.line >= 1, "{e}");
                    prop_assert!(!e.message.contains('\n'), "{e}");
                    return Ok(());
                }
                Ok(c) => c,
            };
            let now = Instant::now();
            crate::server::drain_deadline(now, config.server.grace_period);
            let conf = crate::server::server_conf(&config);
            prop_assert!(conf.threads >= 1);
            let tick = crate::reaper::tick(config.queue.reap_interval);
            prop_assert!(now.checked_add(tick.saturating_mul(2)).is_some());
            for up in &config.upstreams {
                for t in [up.connect_timeout, up.read_timeout, up.write_timeout] {
                    prop_assert!(now.checked_add(t).is_some());
                }
            }
            let limiter = SessionLimiter::new(&config.rate_limit);
            let client: IpAddr = [10, 0, 0, 1].into();
            let _ = limiter.check(client);
            let shared = Shared::new(config).map_err(|e| TestCaseError::fail(e.to_string()))?;
            // Creates, ends and reaps await their (here: no) durable commit.
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            rt.block_on(async {
                let created = shared.create_session(client, None, now).await;
                let _ = shared
                    .create_session("2001:db8::1".parse().unwrap(), None, now)
                    .await;
                if let Ok((id, _)) = created {
                    let _ = shared.gate(SessionHeader::One(Some(id)), None, now);
                    shared.hold_remaining(now);
                    shared.retry_after(2, now);
                    let _ = shared.end_session(&id, EndReason::Deleted, now).await;
                }
                shared.reap(now + Duration::from_secs(3600)).await;
            });
        }
    }
}

#[test]
fn bridge_tables_reach_the_upstream_and_their_errors_are_located() {
    let text = format!(
        "{MINIMAL}[upstream.neops]\nkeepalive = \"30s\"\n[upstream.token]\nheader = \"X-Lab-Token\"\n[upstream.hooks]\nreset = {{ command = [\"/bin/true\"] }}\n"
    );
    let c = Config::parse(&text, "t.toml").unwrap();
    let b = &c.upstreams[0].bridge;
    assert!(b.neops.is_some());
    assert_eq!(b.timing.keepalive, Duration::from_secs(30));
    assert_eq!(
        b.token_header.as_ref().map(|h| h.as_str()),
        Some("x-lab-token")
    );
    assert!(b.features().barrier());
    // Without the tables, no lane.
    assert!(!Config::parse(MINIMAL, "t.toml").unwrap().upstreams[0]
        .bridge
        .is_active());
    let e = err(&format!("{MINIMAL}[upstream.neops]\nkeepalive = \"5m\"\n"));
    assert_eq!((e.line, e.column), (7, 13), "{e}");
    assert!(e.message.contains("under 300s"), "{e}");
    let e = err(&format!(
        "{MINIMAL}[upstream.token]\nheader = \"X-Lab-Session-Seq\"\n"
    ));
    assert_eq!(e.line, 7, "{e}");
    let e = err(&format!(
        "{MINIMAL}[upstream.hooks]\nrest = {{ command = [\"/bin/true\"] }}\n"
    ));
    assert!(e.message.contains("rest"), "{e}");
}

#[test]
fn serde_type_errors_become_hints() {
    let e = err(&format!("[queue]\nactive_timeout = 300\n{MINIMAL}"));
    assert_eq!(e.line, 2, "{e}");
    assert!(e.message.contains(r#"write "300s""#), "{e}");
    let e = err("[server]\nlisten = [\"lab.example:8080\"]\n");
    assert!(
        e.message.contains("\"lab.example:8080\" is not an IP:port")
            && e.message.contains("hostnames"),
        "{e}"
    );
    let e = err(&format!(
        "{MINIMAL}[upstream.headers]\nX-Token = \"s3cret\"\n"
    ));
    assert!(
        e.message.contains(r#"{ env = "VAR" }"#) && !e.message.contains("RawSecret"),
        "{e}"
    );
}

#[test]
fn missing_directories_and_a_short_waiting_timeout_are_caught() {
    let c = Config::parse(
        &format!(
            "[admin]\nsocket = \"/nonexistent-labgate-dir/admin.sock\"\n\
             [queue]\nstate_path = \"/nonexistent-labgate-dir/q.redb\"\n{MINIMAL}"
        ),
        "t.toml",
    )
    .unwrap();
    // The admin socket's directory is `admin::socket::plan`'s: labgate creates it when
    // its parent is private.
    let missing = c.missing_dirs();
    assert_eq!(missing.len(), 1, "{missing:?}");
    assert!(
        missing[0].contains("[queue] state_path")
            && missing[0].contains("/nonexistent-labgate-dir does not exist"),
        "{missing:?}"
    );
    assert!(Config::parse(MINIMAL, "t.toml")
        .unwrap()
        .missing_dirs()
        .is_empty());
    let c = Config::parse(
        &format!("[queue]\nwaiting_timeout = \"3s\"\n{MINIMAL}"),
        "t.toml",
    )
    .unwrap();
    assert!(
        c.warnings().iter().any(|w| w.contains("waiting_timeout")),
        "{:?}",
        c.warnings()
    );
    assert!(Config::parse(MINIMAL, "t.toml")
        .unwrap()
        .warnings()
        .is_empty());
}

/// Issue 15 #10: a secret file that group or others can read is allowed (the operator
/// may have reasons) but warned about by `labgate check` and at start-up.
#[test]
fn a_secret_file_readable_by_group_or_others_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("token");
    std::fs::write(&secret, "Bearer s3cret\n").unwrap();
    let text = format!(
        "{MINIMAL}[upstream.headers]\nAuthorization = {{ file = \"{}\" }}\n",
        secret.display()
    );
    let c = Config::parse(&text, "t").unwrap();
    let warned = |mode: u32| {
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(mode)).unwrap();
        c.warnings()
            .into_iter()
            .filter(|w| w.contains("secret file"))
            .collect::<Vec<_>>()
    };
    assert!(warned(0o600).is_empty());
    assert!(warned(0o400).is_empty());
    for mode in [0o640, 0o604, 0o644, 0o660] {
        let w = warned(mode);
        assert_eq!(w.len(), 1, "mode {mode:o}: {w:?}");
        assert!(
            w[0].contains(&secret.display().to_string())
                && w[0].contains(&format!("mode {mode:o}"))
                && w[0].contains("header \"Authorization\" of upstream")
                && w[0].contains("chmod 600"),
            "{}",
            w[0]
        );
        assert!(!w[0].contains("s3cret"), "never the secret itself");
    }
}

#[test]
fn secret_file_mode_rule() {
    let f = SecretFile {
        what: "x".into(),
        path: "/etc/labgate/k".into(),
    };
    assert_eq!(f.mode_warning(0o100600), None);
    assert_eq!(f.mode_warning(0o100400), None);
    assert_eq!(f.mode_warning(0o100700), None);
    assert!(f.mode_warning(0o100640).is_some());
    assert!(f.mode_warning(0o100602).is_some());
    assert!(f.mode_warning(0o100610).is_some());
}

#[test]
fn health_interval_is_a_duration_or_off() {
    let with =
        |value: &str| Config::parse(&format!("{MINIMAL}health_interval = {value}\n"), "t.toml");
    let c = Config::parse(MINIMAL, "t.toml").unwrap();
    assert_eq!(
        c.upstreams[0].health_interval,
        Some(Duration::from_secs(10)),
        "on by default"
    );
    let c = with("\"3s\"").unwrap();
    assert_eq!(c.upstreams[0].health_interval, Some(Duration::from_secs(3)));
    let c = with("\"off\"").unwrap();
    assert_eq!(c.upstreams[0].health_interval, None);
    for bad in ["\"500ms\"", "\"2h\"", "\"soon\"", "\"0s\""] {
        let e = with(bad).unwrap_err();
        assert_eq!(e.line, 6, "{bad}: {e}");
        assert!(
            e.message.contains("health_interval") && e.message.contains("\"off\""),
            "{bad}: {e}"
        );
    }
}

#[test]
fn the_admin_socket_defaults_by_user_and_must_be_an_absolute_socket_path() {
    use std::ffi::OsStr;
    use std::path::PathBuf;
    let c = Config::parse(&format!("[admin]\n{MINIMAL}"), "t.toml").unwrap();
    assert_eq!(c.admin_socket, Some(super::default_admin_socket()));
    let run = Some(OsStr::new("/run/user/1000"));
    assert_eq!(
        super::default_admin_socket_for(1000, run),
        PathBuf::from("/run/user/1000/labgate/admin.sock")
    );
    // Root, a service user, `sudo -u`: the system socket, as the packaged unit has it.
    for (uid, dir) in [
        (0, run),
        (0, None),
        (998, None),
        (998, Some(OsStr::new("rel"))),
    ] {
        assert_eq!(
            super::default_admin_socket_for(uid, dir),
            PathBuf::from(super::SYSTEM_ADMIN_SOCKET),
            "{uid} {dir:?}"
        );
    }
    for (value, want) in [
        ("\"\"", "is empty"),
        ("\"admin.sock\"", "not an absolute path"),
        ("\"/run/labgate/\"", "not an absolute path"),
        (&format!("\"/{}\"", "x".repeat(120)), "at most 107"),
    ] {
        let e = err(&format!("[admin]\nsocket = {value}\n{MINIMAL}"));
        assert!(e.message.contains(want), "{value}: {e}");
        assert_eq!(e.line, 2, "{e}");
    }
}

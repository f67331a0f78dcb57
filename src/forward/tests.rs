use super::*;

#[test]
fn hop_by_hop_headers_are_removed() {
    let mut h = http::HeaderMap::new();
    h.insert(
        "connection",
        HeaderValue::from_static("keep-alive, x-secret"),
    );
    h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
    h.insert("x-secret", HeaderValue::from_static("1"));
    h.insert("te", HeaderValue::from_static("trailers"));
    h.insert("x-session-id", HeaderValue::from_static("abc"));
    h.insert("content-length", HeaderValue::from_static("3"));
    for name in hop_by_hop(&h) {
        h.remove(name);
    }
    let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, vec!["content-length", "x-session-id"]);
}

/// Applies edits the way the adapter does.
fn apply(mut h: HeaderMap, hop: &Hop) -> HeaderMap {
    for e in request_edits(&h.clone(), hop) {
        match e {
            Edit::Remove(n) => {
                h.remove(n);
            }
            Edit::Insert(n, v) => {
                h.insert(n, v);
            }
            Edit::Set(n, v) => {
                h.insert(HeaderName::from_bytes(n.as_bytes()).unwrap(), v);
            }
        }
    }
    h
}

fn hop(trusted: bool, configured: &[(HeaderName, HeaderValue)]) -> Hop<'_> {
    Hop {
        peer: Some([10, 0, 0, 1].into()),
        peer_trusted: trusted,
        upgrade: false,
        https: false,
        authority: "lab:9000",
        seq: 7,
        configured,
        identity: None,
        upstream_session: None,
        token: None,
    }
}

#[test]
fn a_bridged_upstream_gets_its_own_session_id_and_the_turns_token_never_the_clients() {
    let token_header = HeaderName::from_static("x-lab-token");
    let mut client = client_headers();
    client.append(X_SESSION_ID, HeaderValue::from_static("second"));
    client.insert(token_header.clone(), HeaderValue::from_static("forged"));
    let bridged = Hop {
        upstream_session: Some("up-1234"),
        token: Some((&token_header, Some("turn-token"))),
        ..hop(false, &[])
    };
    let h = apply(client.clone(), &bridged);
    assert_eq!(
        h.get_all(X_SESSION_ID).iter().collect::<Vec<_>>(),
        ["up-1234"]
    );
    assert_eq!(
        h.get_all(&token_header).iter().collect::<Vec<_>>(),
        ["turn-token"]
    );
    // No token (yet): the client's copy is still dropped.
    let tokenless = Hop {
        token: Some((&token_header, None)),
        ..hop(false, &[])
    };
    let h = apply(client, &tokenless);
    assert!(h.get(&token_header).is_none());
    assert_eq!(h[X_SESSION_ID], "abc");
}

fn client_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(X_FORWARDED_FOR, HeaderValue::from_static("6.6.6.6"));
    h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
    h.insert(X_LAB_SESSION_SEQ, HeaderValue::from_static("999"));
    h.insert(header::HOST, HeaderValue::from_static("evil"));
    h.insert(X_SESSION_ID, HeaderValue::from_static("abc"));
    h
}

#[test]
fn labgate_sets_its_own_headers_and_keeps_the_credential() {
    let h = apply(client_headers(), &hop(false, &[]));
    assert_eq!(h[X_FORWARDED_FOR], "10.0.0.1");
    assert_eq!(h[X_FORWARDED_PROTO], "http");
    assert_eq!(h[X_LAB_SESSION_SEQ], "7");
    assert_eq!(h[header::HOST], "lab:9000");
    assert_eq!(h[X_SESSION_ID], "abc");
    let h = apply(client_headers(), &hop(true, &[]));
    assert_eq!(h[X_FORWARDED_FOR], "6.6.6.6, 10.0.0.1");
    assert_eq!(h[X_FORWARDED_PROTO], "https");
    assert_eq!(h[X_LAB_SESSION_SEQ], "7");
}

#[test]
fn the_holders_identity_replaces_every_client_copy() {
    let upstream = HeaderName::from_static("x-holder");
    let source = HeaderName::from_static("x-forwarded-user");
    let mut client = client_headers();
    client.insert(&upstream, HeaderValue::from_static("mallory"));
    client.insert(&source, HeaderValue::from_static("alice"));
    client.insert(X_LAB_USER, HeaderValue::from_static("mallory"));
    let mut hop = hop(false, &[]);
    // Identity mode off: the default name is still never passed on.
    let h = apply(client.clone(), &hop);
    assert!(h.get(X_LAB_USER).is_none());
    hop.identity = Some(IdentityHop {
        upstream: &upstream,
        source: Some(&source),
        holder: "alice",
    });
    hop.https = true;
    let h = apply(client, &hop);
    assert_eq!(h.get_all(&upstream).iter().collect::<Vec<_>>(), ["alice"]);
    assert!(h.get(&source).is_none() && h.get(X_LAB_USER).is_none());
    assert_eq!(h[X_FORWARDED_PROTO], "https");
}

#[test]
fn underscore_twins_of_managed_and_injected_headers_are_dropped() {
    let configured = [(
        HeaderName::from_static("x-api-key"),
        HeaderValue::from_static("s"),
    )];
    let mut client = client_headers();
    for name in [
        "x_lab_session_seq",
        "x_forwarded_for",
        "x_session_id",
        "content_length",
        "x_api_key",
        "x_real_ip",
    ] {
        client.insert(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_static("999999"),
        );
    }
    client.insert("x_custom_thing", HeaderValue::from_static("kept"));
    for trusted in [false, true] {
        let h = apply(client.clone(), &hop(trusted, &configured));
        let underscored: Vec<&str> = h
            .keys()
            .map(|k| k.as_str())
            .filter(|k| k.contains('_'))
            .collect();
        assert_eq!(underscored, vec!["x_custom_thing"], "trusted: {trusted}");
        assert_eq!(h[X_LAB_SESSION_SEQ], "7");
    }
    assert!(same_folded("X_Lab_Session_Seq", "x-lab-session-seq"));
    assert!(!same_folded("x-lab-session-se", "x-lab-session-seq"));
}

#[test]
fn proxy_claims_pass_only_from_a_trusted_proxy() {
    let mut client = client_headers();
    client.insert("forwarded", HeaderValue::from_static("for=6.6.6.6"));
    client.insert("x-real-ip", HeaderValue::from_static("6.6.6.6"));
    client.insert("x-forwarded-host", HeaderValue::from_static("evil"));
    let h = apply(client.clone(), &hop(false, &[]));
    for name in ["forwarded", "x-real-ip", "x-forwarded-host"] {
        assert!(
            !h.contains_key(name),
            "{name} passed from an untrusted peer"
        );
    }
    let h = apply(client, &hop(true, &[]));
    assert_eq!(h["forwarded"], "for=6.6.6.6");
    assert_eq!(h["x-real-ip"], "6.6.6.6");
    assert_eq!(h["x-forwarded-host"], "evil");
}

#[test]
fn configured_headers_replace_the_clients_but_never_labgates() {
    let configured = [
        (header::AUTHORIZATION, HeaderValue::from_static("Bearer s")),
        // Config refuses this; even so, labgate's value is set last.
        (X_LAB_SESSION_SEQ, HeaderValue::from_static("1")),
    ];
    let mut client = client_headers();
    client.insert(header::AUTHORIZATION, HeaderValue::from_static("forged"));
    let h = apply(client, &hop(false, &configured));
    assert_eq!(h[header::AUTHORIZATION], "Bearer s");
    assert_eq!(h[X_LAB_SESSION_SEQ], "7");
}

#[test]
fn managed_names_are_valid_static_names() {
    for m in MANAGED {
        assert_eq!(m.name(), m.name, "{}", m.name);
    }
    for name in [
        X_SESSION_ID,
        X_FORWARDED_FOR,
        X_FORWARDED_PROTO,
        X_LAB_SESSION_SEQ,
    ] {
        assert!(is_managed(name.as_str()), "{name}");
    }
}

#[test]
fn managed_names_match_in_any_case() {
    assert!(is_managed("X-Lab-Session-Seq"));
    assert!(is_managed("host"));
    assert!(is_managed("X_Lab_Session_Seq"));
    assert!(!is_managed("Authorization"));
}

#[test]
fn config_refuses_managed_headers_with_their_location() {
    let minimal =
        "[[upstream]]\nname = \"r1\"\naddress = \"127.0.0.1:9000\"\nroutes = [\"/lab\"]\n";
    for name in [
        "X-Lab-Session-Seq",
        "x-forwarded-for",
        "Host",
        "Proxy-Connection",
    ] {
        let text = format!("{minimal}[upstream.headers]\n{name} = {{ env = \"PATH\" }}\n");
        let e = match crate::config::Config::parse(&text, "t.toml") {
            Ok(_) => panic!("{name} accepted as a configured header"),
            Err(e) => e,
        };
        assert!(e.message.contains("managed by labgate"), "{e}");
        assert_eq!((e.line, e.column), (6, 1), "{e}");
        assert!(e.to_string().starts_with("t.toml:6:1: "), "{e}");
    }
}

#[test]
fn failures_map_to_answers() {
    use Answer as A;
    use FailureKind as K;
    let f = |kind, side, cut| {
        let f = on_failure(kind, side, cut);
        (f.answer, f.upstream)
    };
    let (timeout, connect, io) = (
        Some(UpstreamError::Timeout),
        Some(UpstreamError::Connect),
        Some(UpstreamError::Io),
    );
    assert_eq!(
        f(K::ConnectTimedOut, Side::Unknown, false),
        (Some(A::UpstreamTimedOut), timeout)
    );
    assert_eq!(
        f(K::ReadTimedOut, Side::Upstream, false),
        (Some(A::UpstreamTimedOut), timeout)
    );
    assert_eq!(
        f(K::Connect, Side::Unknown, false),
        (Some(A::UpstreamUnavailable), connect)
    );
    assert_eq!(
        f(K::Closed, Side::Upstream, false),
        (Some(A::UpstreamUnavailable), io)
    );
    assert_eq!(
        f(K::Connect, Side::Upstream, true),
        (Some(A::NotActive), None)
    );
    assert_eq!(f(K::Closed, Side::Downstream, false), (None, None));
    assert_eq!(f(K::ReadTimedOut, Side::Downstream, false), (None, None));
    assert_eq!(
        f(K::WriteTimedOut, Side::Downstream, false),
        (Some(A::BadRequest), None)
    );
    assert_eq!(
        f(K::Status(413), Side::Downstream, false),
        (Some(A::Status(413)), None)
    );
    assert_eq!(f(K::Other, Side::Unknown, false), (Some(A::Internal), None));
}

#[test]
fn session_seq_and_peer_address_are_written_as_their_decimal_text() {
    for seq in [0, 7, 10, 4_294_967_296, u64::MAX] {
        let h = Hop {
            seq,
            ..hop(false, &[])
        };
        assert_eq!(session_seq(&h).unwrap(), seq.to_string().as_str());
    }
    for ip in [
        "0.0.0.0",
        "10.0.0.1",
        "192.168.100.255",
        "255.255.255.255",
        "::1",
        "2001:db8::1",
    ] {
        let ip: IpAddr = ip.parse().unwrap();
        assert_eq!(ip_value(Some(ip)), ip.to_string().as_str());
    }
    assert_eq!(ip_value(None), "");
}

use super::*;

/// The body less the newline every JSON body ends with (checked here): the bytes
/// the reference server sends.
fn body(r: &Reply) -> &str {
    let text = std::str::from_utf8(r.body.as_deref().unwrap_or_default()).unwrap();
    text.strip_suffix('\n')
        .filter(|json| !json.ends_with('\n'))
        .unwrap_or_else(|| panic!("a JSON body ends with exactly one newline: {text:?}"))
}

#[test]
fn favicon_is_a_cacheable_svg() {
    let r = favicon();
    let svg = std::str::from_utf8(r.body.as_deref().unwrap_or_default()).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.content_type, "image/svg+xml");
    assert!(svg.starts_with("<svg ") && svg.trim_end().ends_with("</svg>"));
    assert!(!svg.contains("<script"), "an icon runs nothing");
    let header = |name: &str| {
        r.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(header("Cache-Control"), Some("public, max-age=86400"));
    assert_eq!(header("X-Content-Type-Options"), Some("nosniff"));
}

#[test]
fn routes() {
    let id = "0b9f7a0e-6f0b-4f7c-9a55-2f7d8b1c0e11";
    let get = Method::GET;
    let post = Method::POST;
    let delete = Method::DELETE;
    assert_eq!(route(&post, "/session"), Endpoint::CreateSession);
    assert_eq!(
        route(&get, "/session"),
        Endpoint::MethodNotAllowed { allow: "POST" }
    );
    assert_eq!(
        route(&get, &format!("/session/{id}")),
        Endpoint::GetSession(id)
    );
    assert_eq!(
        route(&delete, &format!("/session/{id}")),
        Endpoint::DeleteSession(id)
    );
    assert_eq!(
        route(&post, &format!("/session/{id}")),
        Endpoint::MethodNotAllowed {
            allow: "GET, DELETE"
        }
    );
    assert_eq!(route(&post, "/session/heartbeat"), Endpoint::Heartbeat);
    assert_eq!(
        route(&get, "/session/heartbeat"),
        Endpoint::GetSession("heartbeat")
    );
    assert_eq!(route(&get, "/active-session"), Endpoint::ActiveSession);
    assert_eq!(route(&get, "/healthz"), Endpoint::Healthz);
    assert_eq!(route(&get, "/readyz"), Endpoint::Readyz);
    assert_eq!(route(&get, "/favicon.ico"), Endpoint::Favicon);
    assert_eq!(route(&get, "/favicon.svg"), Endpoint::Favicon);
    assert_eq!(
        route(&post, "/favicon.ico"),
        Endpoint::MethodNotAllowed { allow: "GET" }
    );
    assert_eq!(route(&get, "/lab"), Endpoint::Lab);
    assert_eq!(route(&Method::PUT, "/lab/x/y"), Endpoint::Lab);
    for p in [
        "/labx",
        "/LAB/x",
        "/",
        "/session/",
        "/session/a/b",
        "/healthz/x",
        "/sessions",
    ] {
        assert_eq!(route(&get, p), Endpoint::NotFound, "{p}");
    }
}

#[test]
fn wait_is_whole_seconds_clamped_to_a_minute() {
    assert_eq!(wait_param(None), Ok(None));
    assert_eq!(wait_param(Some("x=1")), Ok(None));
    assert_eq!(wait_param(Some("wait=5")), Ok(Some(Duration::from_secs(5))));
    assert_eq!(wait_param(Some("a=b&wait=0")), Ok(Some(Duration::ZERO)));
    assert_eq!(
        wait_param(Some("wait=3600")),
        Ok(Some(Duration::from_secs(60)))
    );
    let bad = wait_param(Some("wait=soon")).unwrap_err();
    assert_eq!(bad.status, 422);
    assert_eq!(
        body(&bad),
        r#"{"detail":[{"type":"int_parsing","loc":["query","wait"],"msg":"Input should be a valid integer, unable to parse string as an integer","input":"soon"}]}"#
    );
    assert_eq!(wait_param(Some("wait=-1")).unwrap_err().status, 422);
}

#[test]
fn bodies_match_the_reference_server() {
    assert_eq!(body(&not_found()), r#"{"detail":"Not Found"}"#);
    assert_eq!(
        body(&missing_header()),
        r#"{"detail":[{"type":"missing","loc":["header","X-Session-ID"],"msg":"Field required","input":null}]}"#
    );
    assert_eq!(body(&not_active()), r#"{"detail":"Session is not active"}"#);
    let r = create_refused(CreateRefusal::RateLimited {
        retry_after_secs: 3,
    });
    assert_eq!(r.status, 429);
    assert_eq!(r.headers, vec![("Retry-After", "3".to_string())]);
    assert_eq!(body(&r), r#"{"detail":"Too many session requests"}"#);
    let r = create_refused(CreateRefusal::QueueFull {
        retry_after_secs: 30,
    });
    assert_eq!(
        (r.status, body(&r)),
        (503, r#"{"detail":"Session queue is full"}"#)
    );
    assert_eq!(
        body(&Reply::json(
            200,
            &ActiveSessionCompat {
                status: "active",
                position: 0,
                session_id: "x".into()
            }
        )),
        r#"{"status":"active","position":0,"session_id":"x"}"#
    );
    assert_eq!(
        body(&Reply::json(
            200,
            &ActiveSession {
                status: "active",
                position: 0,
                session_tag: "1a2b3c4d".into()
            }
        )),
        r#"{"status":"active","position":0,"session_tag":"1a2b3c4d"}"#
    );
}

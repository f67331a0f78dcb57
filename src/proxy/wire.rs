//! The pingora side of a request that the pure modules need translated: the peer's
//! address, header values, pingora's error as `forward`'s failure terms, and writing
//! an answer labgate gives itself.
//!
//! Must never decide what to answer: it writes what `api` or `forward` chose.

use std::net::IpAddr;

use http::header;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use pingora::{Error, ErrorSource, ErrorType, Result};

use crate::api::Reply;
use crate::forward::{Edit, FailureKind, Side};

pub(super) fn peer_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

pub(super) fn header_values<'a>(
    req: &'a RequestHeader,
    name: &http::HeaderName,
) -> impl Iterator<Item = &'a [u8]> {
    req.headers.get_all(name).iter().map(|v| v.as_bytes())
}

/// Is the checked target exactly the request target as sent (nothing decoded, no
/// prefix to strip)? Then it is forwarded as it came, without a copy.
pub(super) fn sent_as_is(raw: &[u8], target: &crate::path::Target) -> bool {
    let path = target.path.as_bytes();
    match target.query {
        None => raw == path,
        Some(query) => {
            raw.len() == path.len() + 1 + query.len()
                && raw.starts_with(path)
                && raw.get(path.len()) == Some(&b'?')
                && raw.ends_with(query.as_bytes())
        }
    }
}

/// Makes `forward`'s edits to the request head sent upstream, in order.
pub(super) fn apply_edits(req: &mut RequestHeader, edits: Vec<Edit>) -> Result<()> {
    for edit in edits {
        match edit {
            Edit::Remove(name) => {
                req.remove_header(&name);
            }
            Edit::Insert(name, value) => req.insert_header(name, value)?,
            // A `&'static str` name: pingora keeps it as the case to send without
            // copying it (a `HeaderName` it would copy into a new buffer).
            Edit::Set(name, value) => req.insert_header(name, value)?,
        }
    }
    Ok(())
}

/// pingora's error, in the terms of `forward`'s failure table.
pub(super) fn classify(e: &Error) -> (FailureKind, Side) {
    let kind = match e.etype() {
        ErrorType::ConnectTimedout => FailureKind::ConnectTimedOut,
        ErrorType::ReadTimedout => FailureKind::ReadTimedOut,
        ErrorType::WriteTimedout => FailureKind::WriteTimedOut,
        ErrorType::ConnectRefused
        | ErrorType::ConnectNoRoute
        | ErrorType::ConnectError
        | ErrorType::SocketError
        | ErrorType::BindError => FailureKind::Connect,
        ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed => {
            FailureKind::Closed
        }
        ErrorType::HTTPStatus(code) => FailureKind::Status(*code),
        _ => FailureKind::Other,
    };
    let side = match e.esource() {
        ErrorSource::Upstream => Side::Upstream,
        ErrorSource::Downstream => Side::Downstream,
        _ => Side::Unknown,
    };
    (kind, side)
}

pub(super) async fn write_reply(session: &mut Session, reply: Reply) -> Result<()> {
    // No case map: labgate's own names need no preserving, and each insert (pingora's
    // `Date` and `Connection` too) then updates one map instead of two.
    let mut head = ResponseHeader::build_no_case(reply.status, Some(reply.headers.len() + 4))?;
    if let Some(body) = &reply.body {
        head.insert_header(header::CONTENT_TYPE, reply.content_type)?;
        // As text: `HeaderValue::from(usize)` sizes its buffer for any number, so the
        // value allocates twice; the `String` becomes the value as it is.
        head.insert_header(header::CONTENT_LENGTH, body.len().to_string())?;
    } else if reply.status != 204 {
        head.insert_header(header::CONTENT_LENGTH, http::HeaderValue::from_static("0"))?;
    }
    for (name, value) in reply.headers {
        head.insert_header(name, value)?;
    }
    let has_body = reply.body.is_some();
    session
        .write_response_header(Box::new(head), !has_body)
        .await?;
    if let Some(body) = reply.body {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

/// Reads and drops a request body that labgate answers itself, so the connection can
/// be kept alive; gives up (false) past a small size instead of reading an upload.
pub(super) async fn discard_small_body(session: &mut Session) -> bool {
    const LIMIT: usize = 64 * 1024;
    let mut seen = 0;
    while !session.is_body_done() {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                seen += chunk.len();
                if seen > LIMIT {
                    return false;
                }
            }
            Ok(None) => break,
            Err(_) => return false,
        }
    }
    true
}

/// How long a `POST /session` body may take to arrive.
const SENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Reads `POST /session`'s optional body (contract §7 "owner and note"): at most
/// [`crate::label::MAX_BODY`] bytes; one announced or sent larger is not read (marked
/// too large; the answer then discards it or closes the connection). A body that does
/// not arrive in time, or fails, closes the connection after the answer and counts as
/// too large, so it is refused and never half-read.
pub(super) async fn read_sent(session: &mut Session) -> crate::api::Sent {
    use crate::label::MAX_BODY;
    let req = session.req_header();
    let content_type = req
        .headers
        .get(header::CONTENT_TYPE)
        .map(|v| bytes::Bytes::copy_from_slice(v.as_bytes()));
    let announced = req
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let too_large = |content_type| crate::api::Sent {
        content_type,
        body: bytes::Bytes::new(),
        too_large: true,
    };
    if announced.is_some_and(|n| n > MAX_BODY as u64) {
        return too_large(content_type);
    }
    // Each read too: a silent client cannot hold the request (or, after it, the
    // discarding of its body) open.
    session.set_read_timeout(Some(SENT_TIMEOUT));
    let read = async {
        let mut body = Vec::new();
        while !session.is_body_done() {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > MAX_BODY {
                        return None;
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(_) => return None,
            }
        }
        Some(body)
    };
    match tokio::time::timeout(SENT_TIMEOUT, read).await {
        Ok(Some(body)) => crate::api::Sent {
            content_type,
            body: body.into(),
            too_large: false,
        },
        _ => {
            session.set_keepalive(None);
            too_large(content_type)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::{request_edits, Hop};
    use http::{HeaderName, HeaderValue};

    /// A request head as pingora's parser builds it: names in the case the client sent.
    fn parsed(headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/lab/ping", Some(headers.len())).unwrap();
        for (name, value) in headers {
            req.append_header(name.to_string(), *value).unwrap();
        }
        req
    }

    fn wire(req: &RequestHeader) -> String {
        let mut buf = Vec::new();
        req.header_to_h1_wire(&mut buf);
        String::from_utf8(buf).unwrap()
    }

    fn hop<'a>(trusted: bool, configured: &'a [(HeaderName, HeaderValue)]) -> Hop<'a> {
        Hop {
            peer: Some([192, 0, 2, 10].into()),
            peer_trusted: trusted,
            upgrade: false,
            https: false,
            authority: "127.0.0.1:9000",
            seq: 42,
            configured,
            identity: None,
            upstream_session: None,
            token: None,
        }
    }

    fn shaped(headers: &[(&str, &str)], hop: &Hop) -> String {
        let mut req = parsed(headers);
        let edits = request_edits(&req.headers, hop);
        apply_edits(&mut req, edits).unwrap();
        wire(&req)
    }

    #[test]
    fn a_target_is_sent_as_is_only_when_it_is_the_raw_target() {
        for raw in ["/lab/x", "/lab/x?a=1", "/lab/x?", "/lab/%78", "/lab//x?q"] {
            let target = crate::path::check(raw.as_bytes()).unwrap();
            let same = target.to_request_target() == raw;
            assert_eq!(sent_as_is(raw.as_bytes(), &target), same, "{raw}");
        }
        let target = crate::path::check(b"/lab/x?a=1").unwrap();
        assert!(!sent_as_is(b"/lab/x?a=2", &target));
        assert!(!sent_as_is(b"/lab/x", &target));
    }

    /// labgate's own names go out as pingora writes an `http` name it sets.
    #[test]
    fn managed_wire_names_are_pingoras_case() {
        use pingora::http::IntoCaseHeaderName;
        for m in crate::forward::MANAGED {
            let pingoras = m.name().into_case_header_name();
            assert_eq!(pingoras.as_slice(), m.wire().as_bytes(), "{}", m.name);
        }
    }

    /// The bytes (names' case and order included) an upstream receives, pinned: a
    /// cheaper way of making the edits must not change them.
    #[test]
    fn the_upstream_head_is_pinned_byte_for_byte() {
        let plain = [("Host", "lab.example"), ("X-Session-ID", "abc")];
        assert_eq!(
            shaped(&plain, &hop(false, &[])),
            "Host: 127.0.0.1:9000\r\nX-Session-ID: abc\r\nx-forwarded-for: 192.0.2.10\r\n\
             x-forwarded-proto: http\r\nx-lab-session-seq: 42\r\n"
        );
        let busy = [
            ("host", "lab.example"),
            ("User-Agent", "t/1"),
            ("Connection", "keep-alive, X-Secret"),
            ("X-Secret", "1"),
            ("Keep-Alive", "timeout=5"),
            ("X-Forwarded-For", "6.6.6.6"),
            ("X-Real-IP", "6.6.6.6"),
            ("Forwarded", "for=6.6.6.6"),
            ("X-Forwarded-Host", "evil"),
            ("X-Lab-User", "mallory"),
            ("X_Lab_Session_Seq", "1"),
            ("X-Lab-Session-Seq", "999"),
            ("x-session-id", "abc"),
            ("Accept", "*/*"),
        ];
        // Removals move the map's last entry into the hole: the order shows each one.
        assert_eq!(
            shaped(&busy, &hop(false, &[])),
            "Host: 127.0.0.1:9000\r\nUser-Agent: t/1\r\nAccept: */*\r\nx-session-id: abc\r\n\
             x-lab-session-seq: 42\r\nx-forwarded-for: 192.0.2.10\r\nx-forwarded-proto: http\r\n"
        );
        assert_eq!(
            shaped(&busy, &hop(true, &[])),
            "Host: 127.0.0.1:9000\r\nUser-Agent: t/1\r\nAccept: */*\r\nx-session-id: abc\r\n\
             x-lab-session-seq: 42\r\nx-forwarded-for: 6.6.6.6, 192.0.2.10\r\n\
             X-Real-IP: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\nX-Forwarded-Host: evil\r\n\
             x-forwarded-proto: http\r\n"
        );
        let configured = [(
            HeaderName::from_static("authorization"),
            HeaderValue::from_static("Bearer s"),
        )];
        let with_auth = [
            ("Host", "x"),
            ("Authorization", "forged"),
            ("X-Session-ID", "abc"),
        ];
        assert_eq!(
            shaped(&with_auth, &hop(false, &configured)),
            "Host: 127.0.0.1:9000\r\nX-Session-ID: abc\r\nauthorization: Bearer s\r\n\
             x-forwarded-for: 192.0.2.10\r\nx-forwarded-proto: http\r\nx-lab-session-seq: 42\r\n"
        );
        let v6 = Hop {
            peer: Some("2001:db8::1".parse().unwrap()),
            https: true,
            ..hop(false, &[])
        };
        assert_eq!(
            shaped(&plain, &v6),
            "Host: 127.0.0.1:9000\r\nX-Session-ID: abc\r\nx-forwarded-for: 2001:db8::1\r\n\
             x-forwarded-proto: https\r\nx-lab-session-seq: 42\r\n"
        );
    }
}

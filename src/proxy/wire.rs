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
use crate::forward::{FailureKind, Side};

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
        head.insert_header(header::CONTENT_LENGTH, body.len())?;
    } else if reply.status != 204 {
        head.insert_header(header::CONTENT_LENGTH, 0)?;
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

//! The WebSocket (RFC 6455) side of a device tunnel, without any I/O: the opening
//! handshake check and a server connection that turns bytes from the client into
//! [`Event`]s and TCP bytes from the device into frames for the client.
//!
//! Framing, masking, fragmentation, control frames, ping/pong and the close handshake
//! are tungstenite's (a well-kept crate), driven over in-memory buffers ([`Buffers`]) so
//! that labgate's splice can move the bytes through pingora's downstream session (TLS,
//! pre-read bytes and timeouts stay pingora's). Must never block, allocate without bound
//! (frame and message sizes are capped) or accept a text message as tunnel data.

use std::io::{self, Read, Write};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, Method, Version};
use tungstenite::error::{CapacityError, Error as WsError};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::frame::CloseFrame;
use tungstenite::protocol::{Role, WebSocket, WebSocketConfig};
use tungstenite::Message;

/// Close code labgate sends when the session's turn ends (see `docs/tunnel-protocol.md`).
pub const CLOSE_SESSION_ENDED: u16 = 4001;

/// The largest message (and frame) a client may send: a tunnel moves a byte stream, so
/// clients send what they read (websocat: 64 KiB); anything bigger is refused with 1009.
pub const MAX_MESSAGE: usize = 1 << 20;

/// The frame decoder's initial buffer (tungstenite's default is 128 KiB per connection).
const READ_BUFFER: usize = 16 * 1024;

/// Why an upgrade request is not a WebSocket opening handshake labgate accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("a tunnel is a WebSocket: send GET with Upgrade: websocket and Connection: Upgrade")]
    NotWebSocket,
    #[error("Sec-WebSocket-Version must be 13")]
    Version,
    #[error("Sec-WebSocket-Key is missing or not 16 base64-encoded bytes")]
    Key,
}

fn has_token(headers: &HeaderMap, name: http::header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Checks an opening handshake (RFC 6455 §4.2.1) and returns the `Sec-WebSocket-Accept`
/// value to answer with.
pub fn accept_key(
    method: &Method,
    version: Version,
    headers: &HeaderMap,
) -> Result<String, HandshakeError> {
    use http::header::{CONNECTION, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, UPGRADE};
    if method != Method::GET
        || version != Version::HTTP_11
        || !has_token(headers, UPGRADE, "websocket")
        || !has_token(headers, CONNECTION, "upgrade")
    {
        return Err(HandshakeError::NotWebSocket);
    }
    let mut versions = headers.get_all(SEC_WEBSOCKET_VERSION).iter();
    match (versions.next(), versions.next()) {
        (Some(v), None) if v.as_bytes() == b"13" => {}
        _ => return Err(HandshakeError::Version),
    }
    let mut keys = headers.get_all(SEC_WEBSOCKET_KEY).iter();
    let key = match (keys.next(), keys.next()) {
        (Some(k), None) => k.as_bytes().trim_ascii(),
        _ => return Err(HandshakeError::Key),
    };
    // 16 bytes in base64 are 24 characters ending in "==".
    let well_formed = key.len() == 24
        && key.ends_with(b"==")
        && key[..22]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/');
    if !well_formed {
        return Err(HandshakeError::Key);
    }
    Ok(tungstenite::handshake::derive_accept_key(key))
}

/// The in-memory "socket" tungstenite reads from and writes to: bytes received from the
/// client wait in `inbound` (a read with nothing there would block), frames for the
/// client collect in `outbound` until the splice writes them out.
#[derive(Debug, Default)]
pub struct Buffers {
    inbound: BytesMut,
    outbound: Vec<u8>,
}

impl Read for Buffers {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.inbound.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.inbound.len());
        buf[..n].copy_from_slice(&self.inbound[..n]);
        self.inbound.advance(n);
        Ok(n)
    }
}

impl Write for Buffers {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.outbound.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What the client's bytes amounted to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A binary message: raw TCP bytes for the device.
    Data(Bytes),
    /// The client closed the WebSocket (our close reply is queued) or broke the
    /// protocol (our close frame, with the code given, is queued). The tunnel is over.
    Closed { code: u16, by_client: bool },
}

/// The server end of one tunnel's WebSocket.
pub struct ServerConn {
    ws: WebSocket<Buffers>,
    closed: bool,
}

impl Default for ServerConn {
    fn default() -> Self {
        Self::new()
    }
}

impl ServerConn {
    pub fn new() -> Self {
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_MESSAGE))
            .max_frame_size(Some(MAX_MESSAGE))
            // Grows for a big frame; an idle tunnel keeps only this much.
            .read_buffer_size(READ_BUFFER)
            // Frames go out at once: the splice drains `outbound` after every call.
            .write_buffer_size(0);
        ServerConn {
            ws: WebSocket::from_raw_socket(Buffers::default(), Role::Server, Some(config)),
            closed: false,
        }
    }

    /// Bytes the client sent, in order.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.ws.get_mut().inbound.extend_from_slice(bytes);
    }

    /// The next event from what was fed, or `None` until more bytes arrive. Pongs and
    /// close replies are queued for the client as a side effect.
    pub fn next_event(&mut self) -> Option<Event> {
        if self.closed {
            return None;
        }
        loop {
            match self.ws.read() {
                Ok(Message::Binary(data)) => return Some(Event::Data(data)),
                Ok(Message::Text(_)) => return Some(self.fail(CloseCode::Unsupported)),
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => continue,
                Ok(Message::Close(frame)) => {
                    // tungstenite queued the reply; put it in `outbound`.
                    let _ = self.ws.flush();
                    self.closed = true;
                    let code = frame.map_or(1005, |f| u16::from(f.code));
                    return Some(Event::Closed {
                        code,
                        by_client: true,
                    });
                }
                Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(WsError::Capacity(CapacityError::MessageTooLong { .. })) => {
                    return Some(self.fail(CloseCode::Size))
                }
                Err(WsError::Utf8) => return Some(self.fail(CloseCode::Invalid)),
                Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => {
                    self.closed = true;
                    return Some(Event::Closed {
                        code: 1000,
                        by_client: true,
                    });
                }
                Err(_) => return Some(self.fail(CloseCode::Protocol)),
            }
        }
    }

    /// Closes with `code` after a protocol problem.
    fn fail(&mut self, code: CloseCode) -> Event {
        self.close(code.into(), "");
        Event::Closed {
            code: code.into(),
            by_client: false,
        }
    }

    /// Frames `data` (device bytes) as one binary message for the client.
    pub fn send(&mut self, data: Bytes) {
        if self.closed {
            return;
        }
        if self.ws.send(Message::Binary(data)).is_err() {
            self.closed = true;
        }
    }

    /// Queues a close frame (once); no data is sent after it.
    pub fn close(&mut self, code: u16, reason: &str) {
        if self.closed {
            return;
        }
        self.closed = true;
        // A close reason is at most 123 bytes (RFC 6455 §5.5); cut at a char boundary.
        let mut end = reason.len().min(123);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason[..end].to_string().into(),
        };
        // Err(ConnectionClosed) is how tungstenite says "close queued, now terminated".
        let _ = self.ws.close(Some(frame));
        let _ = self.ws.flush();
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// The bytes to write to the client now (frames, pongs, close).
    pub fn take_outbound(&mut self) -> Bytes {
        Bytes::from(std::mem::take(&mut self.ws.get_mut().outbound))
    }

    /// Bytes fed but not decoded yet (an incomplete frame).
    pub fn pending_inbound(&self) -> usize {
        self.ws.get_ref().inbound.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    /// The client side of the same protocol, over the same kind of buffers.
    fn client() -> WebSocket<Buffers> {
        WebSocket::from_raw_socket(Buffers::default(), Role::Client, None)
    }

    fn client_send(c: &mut WebSocket<Buffers>, m: Message) -> Bytes {
        c.send(m).unwrap();
        Bytes::from(std::mem::take(&mut c.get_mut().outbound))
    }

    fn client_read(c: &mut WebSocket<Buffers>, bytes: &[u8]) -> Vec<Message> {
        c.get_mut().inbound.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Ok(m) = c.read() {
            out.push(m);
        }
        out
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    const GOOD: &[(&str, &str)] = &[
        ("upgrade", "websocket"),
        ("connection", "keep-alive, Upgrade"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];

    #[test]
    fn handshake_answers_the_rfc_example() {
        let h = headers(GOOD);
        assert_eq!(
            accept_key(&Method::GET, Version::HTTP_11, &h).unwrap(),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn handshake_refusals() {
        let h = headers(GOOD);
        assert_eq!(
            accept_key(&Method::POST, Version::HTTP_11, &h),
            Err(HandshakeError::NotWebSocket)
        );
        assert_eq!(
            accept_key(&Method::GET, Version::HTTP_10, &h),
            Err(HandshakeError::NotWebSocket)
        );
        let without = |name: &str| {
            headers(
                &GOOD
                    .iter()
                    .copied()
                    .filter(|(k, _)| *k != name)
                    .collect::<Vec<_>>(),
            )
        };
        let get = |h: &HeaderMap| accept_key(&Method::GET, Version::HTTP_11, h);
        assert_eq!(get(&without("upgrade")), Err(HandshakeError::NotWebSocket));
        assert_eq!(
            get(&without("connection")),
            Err(HandshakeError::NotWebSocket)
        );
        assert_eq!(
            get(&without("sec-websocket-version")),
            Err(HandshakeError::Version)
        );
        assert_eq!(get(&without("sec-websocket-key")), Err(HandshakeError::Key));
        let mut bad = without("sec-websocket-key");
        bad.insert("sec-websocket-key", HeaderValue::from_static("short=="));
        assert_eq!(get(&bad), Err(HandshakeError::Key));
        let mut two = headers(GOOD);
        two.append("sec-websocket-version", HeaderValue::from_static("13"));
        assert_eq!(get(&two), Err(HandshakeError::Version));
        let mut v8 = without("sec-websocket-version");
        v8.insert("sec-websocket-version", HeaderValue::from_static("8"));
        assert_eq!(get(&v8), Err(HandshakeError::Version));
    }

    #[test]
    fn binary_messages_round_trip_in_any_split() {
        let mut c = client();
        let mut s = ServerConn::new();
        let wire = client_send(&mut c, Message::binary(b"SSH-2.0-OpenSSH\r\n".to_vec()));
        // Byte by byte: a partial frame yields nothing until it is complete.
        for (i, b) in wire.iter().enumerate() {
            s.feed(&[*b]);
            let ev = s.next_event();
            if i + 1 < wire.len() {
                assert_eq!(ev, None);
            } else {
                assert_eq!(
                    ev,
                    Some(Event::Data(Bytes::from_static(b"SSH-2.0-OpenSSH\r\n")))
                );
            }
        }
        s.send(Bytes::from_static(b"banner"));
        let got = client_read(&mut c, &s.take_outbound());
        assert_eq!(got, vec![Message::binary(b"banner".to_vec())]);
    }

    #[test]
    fn fragmented_binary_is_one_event() {
        use tungstenite::protocol::frame::coding::{Data, OpCode};
        use tungstenite::protocol::frame::Frame;
        let mut c = client();
        let mut s = ServerConn::new();
        let mut wire = client_send(
            &mut c,
            Message::Frame(Frame::message(
                b"ab".to_vec(),
                OpCode::Data(Data::Binary),
                false,
            )),
        )
        .to_vec();
        wire.extend_from_slice(&client_send(
            &mut c,
            Message::Frame(Frame::message(
                b"cd".to_vec(),
                OpCode::Data(Data::Continue),
                true,
            )),
        ));
        s.feed(&wire);
        assert_eq!(
            s.next_event(),
            Some(Event::Data(Bytes::from_static(b"abcd")))
        );
    }

    #[test]
    fn ping_is_answered_with_pong() {
        let mut c = client();
        let mut s = ServerConn::new();
        s.feed(&client_send(
            &mut c,
            Message::Ping(Bytes::from_static(b"p")),
        ));
        assert_eq!(s.next_event(), None);
        let got = client_read(&mut c, &s.take_outbound());
        assert_eq!(got, vec![Message::Pong(Bytes::from_static(b"p"))]);
    }

    #[test]
    fn text_is_a_protocol_error_1003() {
        let mut c = client();
        let mut s = ServerConn::new();
        s.feed(&client_send(&mut c, Message::text("ls")));
        assert_eq!(
            s.next_event(),
            Some(Event::Closed {
                code: 1003,
                by_client: false
            })
        );
        let got = client_read(&mut c, &s.take_outbound());
        match &got[..] {
            [Message::Close(Some(f))] => assert_eq!(u16::from(f.code), 1003),
            other => panic!("{other:?}"),
        }
        assert_eq!(s.next_event(), None);
    }

    #[test]
    fn client_close_is_answered_and_ends() {
        let mut c = client();
        let mut s = ServerConn::new();
        s.feed(&client_send(&mut c, Message::Close(None)));
        assert_eq!(
            s.next_event(),
            Some(Event::Closed {
                code: 1005,
                by_client: true
            })
        );
        let reply = s.take_outbound();
        assert!(!reply.is_empty(), "close reply queued");
    }

    #[test]
    fn session_end_close_carries_code_and_reason() {
        let mut c = client();
        let mut s = ServerConn::new();
        s.close(CLOSE_SESSION_ENDED, "session ended: kicked");
        s.send(Bytes::from_static(b"late"));
        let got = client_read(&mut c, &s.take_outbound());
        match &got[..] {
            [Message::Close(Some(f))] => {
                assert_eq!(u16::from(f.code), 4001);
                assert_eq!(f.reason.as_str(), "session ended: kicked");
            }
            other => panic!("{other:?}"),
        }
        // A long reason is cut to what a control frame can carry.
        let mut s = ServerConn::new();
        s.close(4001, &"é".repeat(100));
        assert!(s.take_outbound().len() <= 2 + 2 + 123);
    }

    #[test]
    fn unmasked_client_frames_and_huge_messages_are_refused() {
        // An unmasked binary frame (a server-style frame) from the client: 1002.
        let mut s = ServerConn::new();
        s.feed(&[0x82, 0x02, b'h', b'i']);
        assert_eq!(
            s.next_event(),
            Some(Event::Closed {
                code: 1002,
                by_client: false
            })
        );
        // A frame header announcing more than MAX_MESSAGE: refused before buffering it.
        let mut s = ServerConn::new();
        let mut header = vec![0x82, 0xff];
        header.extend_from_slice(&((MAX_MESSAGE as u64) + 1).to_be_bytes());
        header.extend_from_slice(&[1, 2, 3, 4]);
        s.feed(&header);
        match s.next_event() {
            Some(Event::Closed {
                code,
                by_client: false,
            }) => {
                assert!(code == 1009 || code == 1002, "{code}")
            }
            other => panic!("{other:?}"),
        }
    }
}

//! The WebSocket (RFC 6455) side of a device tunnel, without any I/O: the opening
//! handshake check and a server connection that turns bytes from the client into
//! [`Event`]s and TCP bytes from the device into frames for the client.
//!
//! Must never block, allocate without bound (frame and message sizes are capped) or
//! accept a text message as tunnel data.
//!
//! Why the frames are hand-written and not tungstenite's `WebSocket` (which the tests
//! use as the independent peer, and whose accept-key derivation the handshake uses): a
//! tunnel relays bulk bytes, and tungstenite's socket-shaped API cost every client byte
//! three copies and a zero fill before the unmasking pass (our in-memory buffer, its
//! 16 KiB read chunks, the message payload) and every device byte one more copy into its
//! write buffer: labgate spent 1 s of CPU per GiB relayed. Here the `Bytes` pingora hands
//! over are queued as they are, each payload byte is copied once into its message while
//! it is unmasked, device bytes are framed in place ([`ServerConn::frame_in_place`]), and
//! an idle tunnel holds no buffer at all. The protocol surface is small and pinned by the
//! tests below: masking, fragmentation, control frames between fragments, ping/pong, the
//! close handshake and its codes, size caps.

use std::collections::VecDeque;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, Method, Version};
#[cfg(test)]
use std::io::{self, Read, Write};

/// Close code labgate sends when the session's turn ends (see `docs/tunnel-protocol.md`).
pub const CLOSE_SESSION_ENDED: u16 = 4001;

/// The largest message (and frame) a client may send: a tunnel moves a byte stream, so
/// clients send what they read (websocat: 64 KiB); anything bigger is refused with 1009.
pub const MAX_MESSAGE: usize = 1 << 20;

/// Room a data frame's header takes in front of its payload, at most (64-bit length):
/// see [`ServerConn::frame_in_place`].
pub const HEADER_ROOM: usize = 10;

/// Close codes (RFC 6455 §7.4.1).
const PROTOCOL: u16 = 1002;
const UNSUPPORTED: u16 = 1003;
const NO_STATUS: u16 = 1005;
const INVALID: u16 = 1007;
const TOO_BIG: u16 = 1009;

/// Opcodes (RFC 6455 §5.2).
const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xa;

const FIN: u8 = 0x80;
const MASKED: u8 = 0x80;
/// A control frame's payload, at most (RFC 6455 §5.5).
const MAX_CONTROL: usize = 125;

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

/// What the client's bytes amounted to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A binary message: raw TCP bytes for the device.
    Data(Bytes),
    /// The client closed the WebSocket (our close reply is queued) or broke the
    /// protocol (our close frame, with the code given, is queued). The tunnel is over.
    Closed { code: u16, by_client: bool },
}

/// One step of decoding.
enum Decoded {
    /// Payload bytes of the binary message being received, unmasked.
    Piece(Bytes),
    /// That message is complete.
    End,
    /// The connection is over.
    Closed(Event),
}

/// The header of the frame being received.
#[derive(Debug, Clone, Copy)]
struct Head {
    fin: bool,
    opcode: u8,
    key: [u8; 4],
    /// Payload bytes still to come.
    remaining: usize,
    /// Payload bytes already taken (the mask's phase).
    taken: usize,
}

/// A frame header's first bytes, parsed: `Ok(None)` until all of it is there, `Err`
/// with the close code for a header labgate refuses.
fn parse_head(b: &[u8]) -> Result<Option<(Head, usize)>, u16> {
    let [b0, b1, ..] = *b else {
        return Ok(None);
    };
    // RSV1-3: no extension was negotiated.
    if b0 & 0x70 != 0 || b1 & MASKED == 0 {
        return Err(PROTOCOL);
    }
    let (len, at) = match b1 & 0x7f {
        126 => match b.get(2..4) {
            Some(n) => (u64::from(u16::from_be_bytes([n[0], n[1]])), 4),
            None => return Ok(None),
        },
        127 => match b.get(2..10).and_then(|n| <[u8; 8]>::try_from(n).ok()) {
            Some(n) => (u64::from_be_bytes(n), 10),
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    let Some(key) = b.get(at..at + 4).and_then(|k| <[u8; 4]>::try_from(k).ok()) else {
        return Ok(None);
    };
    let fin = b0 & FIN != 0;
    let opcode = b0 & 0x0f;
    match opcode {
        CONTINUATION | TEXT | BINARY => {}
        CLOSE | PING | PONG if fin && len <= MAX_CONTROL as u64 => {}
        _ => return Err(PROTOCOL),
    }
    // Refused before a byte of it is buffered.
    let remaining = usize::try_from(len)
        .ok()
        .filter(|n| *n <= MAX_MESSAGE)
        .ok_or(TOO_BIG)?;
    let head = Head {
        fin,
        opcode,
        key,
        remaining,
        taken: 0,
    };
    Ok(Some((head, at + 4)))
}

/// XORs `data` with the mask `key`, the first byte being payload byte `phase`.
fn unmask(data: &mut [u8], key: [u8; 4], phase: usize) {
    let mut key = key;
    key.rotate_left(phase % 4);
    let wide = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut words = data.chunks_exact_mut(8);
    for w in &mut words {
        let x = u64::from_ne_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]) ^ wide;
        w.copy_from_slice(&x.to_ne_bytes());
    }
    for (i, b) in words.into_remainder().iter_mut().enumerate() {
        *b ^= key[i % 4];
    }
}

/// A frame header for a payload of `len` bytes: its bytes and how many are used.
fn server_head(opcode: u8, len: usize) -> ([u8; HEADER_ROOM], usize) {
    let mut h = [0u8; HEADER_ROOM];
    h[0] = FIN | opcode;
    let used = match len {
        n if n < 126 => {
            h[1] = n as u8;
            2
        }
        n if n <= 0xffff => {
            h[1] = 126;
            h[2..4].copy_from_slice(&(n as u16).to_be_bytes());
            4
        }
        n => {
            h[1] = 127;
            h[2..10].copy_from_slice(&(n as u64).to_be_bytes());
            10
        }
    };
    (h, used)
}

/// Whether a client may send `code` in its close frame (RFC 6455 §7.4).
fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// The server end of one tunnel's WebSocket.
#[derive(Debug, Default)]
pub struct ServerConn {
    /// Bytes received and not decoded yet, as they arrived (payloads are unmasked
    /// where they lie, so they are held mutable).
    inbound: VecDeque<BytesMut>,
    inbound_len: usize,
    /// The frame being received, once its header is complete.
    head: Option<Head>,
    /// The size of the binary message being received, so far.
    message_len: usize,
    /// Pieces of it, for [`ServerConn::next_event`] (whole messages).
    parts: Vec<Bytes>,
    /// Whether a fragmented binary message is open (continuation frames expected).
    fragmented: bool,
    /// A control frame's payload being received (at most [`MAX_CONTROL`] bytes).
    control: BytesMut,
    /// Frames for the client that the splice has not taken yet.
    outbound: Vec<u8>,
    closed: bool,
}

impl ServerConn {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes the client sent, in order (copied; see [`ServerConn::feed_bytes`]).
    pub fn feed(&mut self, bytes: &[u8]) {
        self.feed_bytes(Bytes::copy_from_slice(bytes));
    }

    /// Bytes the client sent, in order, kept as they are until decoded (no copy when
    /// nothing else holds them, as with pingora's body reads).
    pub fn feed_bytes(&mut self, bytes: Bytes) {
        if !bytes.is_empty() {
            self.inbound_len += bytes.len();
            let owned = bytes
                .try_into_mut()
                .unwrap_or_else(|shared| BytesMut::from(&shared[..]));
            self.inbound.push_back(owned);
        }
    }

    /// The first bytes fed (up to a frame header's worth), without taking them.
    fn peek_head(&self) -> ([u8; 14], usize) {
        let mut out = [0u8; 14];
        let mut n = 0;
        for chunk in &self.inbound {
            let k = chunk.len().min(out.len() - n);
            out[n..n + k].copy_from_slice(&chunk[..k]);
            n += k;
            if n == out.len() {
                break;
            }
        }
        (out, n)
    }

    /// Drops `n` bytes fed (at most what there is).
    fn consume(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.inbound.front_mut() else {
                return;
            };
            let k = n.min(front.len());
            front.advance(k);
            self.inbound_len -= k;
            n -= k;
            if front.is_empty() {
                self.inbound.pop_front();
            }
        }
    }

    /// Moves as much of the current control frame's payload as has arrived into
    /// `control`, unmasked; `true` once the whole payload is there.
    fn take_control(&mut self, head: &mut Head) -> bool {
        while head.remaining > 0 {
            let Some(front) = self.inbound.front_mut() else {
                return false;
            };
            let k = head.remaining.min(front.len());
            let start = self.control.len();
            self.control.extend_from_slice(&front[..k]);
            unmask(&mut self.control[start..], head.key, head.taken);
            front.advance(k);
            if front.is_empty() {
                self.inbound.pop_front();
            }
            self.inbound_len -= k;
            head.remaining -= k;
            head.taken += k;
        }
        true
    }

    /// The next step of decoding what was fed, or `None` until more bytes arrive.
    fn decode(&mut self) -> Option<Decoded> {
        // Bounded: every turn takes a frame header, or ends a frame, or returns.
        loop {
            if self.closed {
                return None;
            }
            let mut head = match self.head.take() {
                Some(head) => head,
                None => {
                    let (bytes, n) = self.peek_head();
                    match parse_head(&bytes[..n]) {
                        Ok(None) => return None,
                        Err(code) => return Some(Decoded::Closed(self.fail(code))),
                        Ok(Some((head, used))) => {
                            if let Err(code) = self.start_frame(&head) {
                                return Some(Decoded::Closed(self.fail(code)));
                            }
                            self.consume(used);
                            head
                        }
                    }
                }
            };
            if head.remaining > 0 && head.opcode & 0x08 == 0 {
                // Data: what has arrived of it, unmasked where it lies and handed on
                // as a slice of the same memory.
                let Some(front) = self.inbound.front_mut() else {
                    self.head = Some(head);
                    return None;
                };
                let k = head.remaining.min(front.len());
                unmask(&mut front[..k], head.key, head.taken);
                let piece = front.split_to(k).freeze();
                if front.is_empty() {
                    self.inbound.pop_front();
                }
                self.inbound_len -= k;
                head.remaining -= k;
                head.taken += k;
                self.head = Some(head);
                return Some(Decoded::Piece(piece));
            }
            if !self.take_control(&mut head) {
                self.head = Some(head);
                return None;
            }
            if let Some(step) = self.end_frame(&head) {
                return Some(step);
            }
        }
    }

    /// The next bytes for the device as soon as they are unmasked (a binary message may
    /// come in several pieces, each a slice of what was fed: no copy), or the end of
    /// the connection; `None` until more bytes arrive. Pongs and close replies are
    /// queued for the client as a side effect. A tunnel is a byte stream, so the relay
    /// takes this; [`ServerConn::next_event`] gives whole messages.
    pub fn next_data(&mut self) -> Option<Event> {
        loop {
            match self.decode()? {
                Decoded::Piece(piece) => return Some(Event::Data(piece)),
                Decoded::End => continue,
                Decoded::Closed(event) => return Some(event),
            }
        }
    }

    /// The next whole binary message (empty ones skipped) or the end of the connection,
    /// or `None` until more bytes arrive. Pongs and close replies are queued for the
    /// client as a side effect.
    pub fn next_event(&mut self) -> Option<Event> {
        loop {
            match self.decode()? {
                Decoded::Piece(piece) => self.parts.push(piece),
                Decoded::End => {
                    let parts = std::mem::take(&mut self.parts);
                    match &parts[..] {
                        [] => continue,
                        [one] => return Some(Event::Data(one.clone())),
                        _ => return Some(Event::Data(Bytes::from(parts.concat()))),
                    }
                }
                Decoded::Closed(event) => return Some(event),
            }
        }
    }

    /// Checks a data frame's place in its message (and the message's size).
    fn start_frame(&mut self, head: &Head) -> Result<(), u16> {
        match head.opcode {
            // Refused at its first frame, before any of it is taken.
            TEXT if !self.fragmented => Err(UNSUPPORTED),
            BINARY if !self.fragmented => {
                self.message_len = head.remaining;
                Ok(())
            }
            CONTINUATION if self.fragmented => {
                self.message_len += head.remaining;
                if self.message_len > MAX_MESSAGE {
                    return Err(TOO_BIG);
                }
                Ok(())
            }
            // A new message inside a fragmented one, or a continuation of nothing.
            TEXT | BINARY | CONTINUATION => Err(PROTOCOL),
            _ => {
                self.control.clear();
                Ok(())
            }
        }
    }

    /// A frame is complete: what it means.
    fn end_frame(&mut self, head: &Head) -> Option<Decoded> {
        match head.opcode {
            BINARY | CONTINUATION => {
                self.fragmented = !head.fin;
                head.fin.then_some(Decoded::End)
            }
            PING => {
                let payload = std::mem::take(&mut self.control);
                self.queue(PONG, &payload);
                None
            }
            CLOSE => Some(Decoded::Closed(self.closed_by_client())),
            // PONG: nothing to do.
            _ => None,
        }
    }

    /// The client's close frame (in `control`): answered with the same code.
    fn closed_by_client(&mut self) -> Event {
        let payload = std::mem::take(&mut self.control);
        let code = match payload[..] {
            [] => NO_STATUS,
            [a, b, ..] if valid_close_code(u16::from_be_bytes([a, b])) => {
                if std::str::from_utf8(&payload[2..]).is_err() {
                    return self.fail(INVALID);
                }
                u16::from_be_bytes([a, b])
            }
            _ => return self.fail(PROTOCOL),
        };
        let reply = if code == NO_STATUS {
            Vec::new()
        } else {
            code.to_be_bytes().to_vec()
        };
        self.queue(CLOSE, &reply);
        self.closed = true;
        Event::Closed {
            code,
            by_client: true,
        }
    }

    /// Closes with `code` after a protocol problem.
    fn fail(&mut self, code: u16) -> Event {
        self.close(code, "");
        Event::Closed {
            code,
            by_client: false,
        }
    }

    /// Queues one unfragmented frame for the client (servers do not mask).
    fn queue(&mut self, opcode: u8, payload: &[u8]) {
        let (head, used) = server_head(opcode, payload.len());
        self.outbound.extend_from_slice(&head[..used]);
        self.outbound.extend_from_slice(payload);
    }

    /// Frames `data` (device bytes) as one binary message for the client, copied into
    /// the outbound queue; the relay frames in place instead ([`ServerConn::frame_in_place`]).
    pub fn send(&mut self, data: Bytes) {
        if !self.closed && !data.is_empty() {
            self.queue(BINARY, &data);
        }
    }

    /// Frames `buf[HEADER_ROOM..]` (device bytes read after [`HEADER_ROOM`] bytes left
    /// free) as one binary message, writing its header into that room: the returned
    /// frame shares `buf`'s memory. `None` once closed (no data after a close) or if
    /// `buf` has no payload. Queued frames ([`ServerConn::take_outbound`]) go first.
    pub fn frame_in_place(&self, mut buf: BytesMut) -> Option<Bytes> {
        if self.closed || buf.len() <= HEADER_ROOM {
            return None;
        }
        let (head, used) = server_head(BINARY, buf.len() - HEADER_ROOM);
        buf.advance(HEADER_ROOM - used);
        buf[..used].copy_from_slice(&head[..used]);
        Some(buf.freeze())
    }

    /// Queues a close frame (once); no data is sent after it.
    pub fn close(&mut self, code: u16, reason: &str) {
        if self.closed {
            return;
        }
        self.closed = true;
        // A close reason is at most 123 bytes (RFC 6455 §5.5); cut at a char boundary.
        let mut end = reason.len().min(MAX_CONTROL - 2);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        let mut payload = Vec::with_capacity(2 + end);
        payload.put_u16(code);
        payload.extend_from_slice(&reason.as_bytes()[..end]);
        self.queue(CLOSE, &payload);
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// The bytes to write to the client now (pongs, a close, frames from `send`).
    pub fn take_outbound(&mut self) -> Bytes {
        Bytes::from(std::mem::take(&mut self.outbound))
    }

    /// Bytes fed but not decoded yet (an incomplete frame).
    pub fn pending_inbound(&self) -> usize {
        self.inbound_len
    }
}

/// The in-memory "socket" the tests' tungstenite client reads from and writes to: bytes
/// for it wait in `inbound` (a read with nothing there would block), its frames collect
/// in `outbound`.
#[cfg(test)]
#[derive(Debug, Default)]
pub struct Buffers {
    inbound: BytesMut,
    outbound: Vec<u8>,
}

#[cfg(test)]
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

#[cfg(test)]
impl Write for Buffers {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.outbound.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use tungstenite::protocol::{Role, WebSocket};
    use tungstenite::Message;

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

    /// A client frame built by hand: first byte `b0`, masked with `key`.
    fn frame(b0: u8, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
        let mut f = vec![b0];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n <= 0xffff => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        f
    }

    const KEY: [u8; 4] = [0x12, 0xa5, 0x7f, 0xc3];

    fn closed(code: u16, by_client: bool) -> Option<Event> {
        Some(Event::Closed { code, by_client })
    }

    /// The close code of the one close frame in `wire` (as the tungstenite client reads it).
    fn close_code(wire: &[u8]) -> Option<u16> {
        match &client_read(&mut client(), wire)[..] {
            [Message::Close(Some(f))] => Some(u16::from(f.code)),
            [Message::Close(None)] => None,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unmasking_matches_the_rfc_at_every_phase_and_length() {
        let data: Vec<u8> = (0..77u8).collect();
        for phase in 0..8 {
            for len in 0..data.len() {
                let mut got = data[..len].to_vec();
                unmask(&mut got, KEY, phase);
                let want: Vec<u8> = (0..len).map(|i| data[i] ^ KEY[(phase + i) % 4]).collect();
                assert_eq!(got, want, "phase {phase} len {len}");
            }
        }
    }

    #[test]
    fn a_frame_split_at_every_point_and_in_every_length_class_decodes() {
        for len in [0usize, 1, 125, 126, 65535, 65536, 200_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let wire = frame(0x82, &payload, KEY);
            let cuts: Vec<usize> = if len < 200 {
                (0..=wire.len()).collect()
            } else {
                vec![1, 2, 5, 9, 13, 14, 15, 4097, wire.len() / 2, wire.len() - 1]
            };
            for cut in cuts {
                let mut s = ServerConn::new();
                s.feed(&wire[..cut]);
                let first = s.next_event();
                s.feed(&wire[cut..]);
                let mut got = Vec::new();
                for ev in [first, s.next_event()].into_iter().flatten() {
                    match ev {
                        Event::Data(d) => got.extend_from_slice(&d),
                        other => panic!("{other:?}"),
                    }
                }
                assert_eq!(got, payload, "len {len} cut {cut}");
                assert_eq!(s.pending_inbound(), 0);
            }
        }
    }

    #[test]
    fn control_frames_between_fragments_are_answered_and_the_message_stays_whole() {
        let mut wire = frame(0x02, b"ab", KEY);
        wire.extend(frame(0x89, b"ping", [1, 2, 3, 4]));
        wire.extend(frame(0x8a, b"unsolicited pong", [5, 6, 7, 8]));
        wire.extend(frame(0x00, b"cd", [9, 9, 9, 9]));
        wire.extend(frame(0x80, b"ef", [0, 0, 0, 0]));
        wire.extend(frame(0x82, b"next", KEY));
        let mut s = ServerConn::new();
        s.feed(&wire);
        assert_eq!(
            s.next_event(),
            Some(Event::Data(Bytes::from_static(b"abcdef")))
        );
        assert_eq!(
            s.next_event(),
            Some(Event::Data(Bytes::from_static(b"next")))
        );
        assert_eq!(s.next_event(), None);
        let got = client_read(&mut client(), &s.take_outbound());
        assert_eq!(got, vec![Message::Pong(Bytes::from_static(b"ping"))]);
    }

    #[test]
    fn protocol_violations_close_1002() {
        let cases: &[(&str, Vec<u8>)] = &[
            ("RSV bit set", frame(0xc2, b"x", KEY)),
            ("unknown data opcode", frame(0x83, b"x", KEY)),
            ("unknown control opcode", frame(0x8b, b"", KEY)),
            ("fragmented ping", frame(0x09, b"p", KEY)),
            ("control frame over 125 bytes", frame(0x89, &[0; 126], KEY)),
            ("continuation of nothing", frame(0x80, b"x", KEY)),
            ("new message inside a fragmented one", {
                let mut w = frame(0x02, b"a", KEY);
                w.extend(frame(0x82, b"b", KEY));
                w
            }),
            ("text inside a fragmented binary", {
                let mut w = frame(0x02, b"a", KEY);
                w.extend(frame(0x81, b"b", KEY));
                w
            }),
            ("close with a one-byte payload", frame(0x88, &[3], KEY)),
            (
                "close with code 1005",
                frame(0x88, &1005u16.to_be_bytes(), KEY),
            ),
            (
                "close with code 999",
                frame(0x88, &999u16.to_be_bytes(), KEY),
            ),
            (
                "close with code 2000",
                frame(0x88, &2000u16.to_be_bytes(), KEY),
            ),
        ];
        for (what, wire) in cases {
            let mut s = ServerConn::new();
            s.feed(wire);
            let mut ev = s.next_event();
            if matches!(ev, Some(Event::Data(_))) {
                ev = s.next_event();
            }
            assert_eq!(ev, closed(1002, false), "{what}");
            assert_eq!(close_code(&s.take_outbound()), Some(1002), "{what}");
            s.feed(&frame(0x82, b"after", KEY));
            assert_eq!(s.next_event(), None, "{what}: nothing after the close");
        }
    }

    #[test]
    fn close_codes_are_echoed_and_bad_reasons_close_1007() {
        for code in [1000u16, 1001, 1011, 3000, 4001, 4999] {
            let mut payload = code.to_be_bytes().to_vec();
            payload.extend_from_slice("bye ✓".as_bytes());
            let mut s = ServerConn::new();
            s.feed(&frame(0x88, &payload, KEY));
            assert_eq!(s.next_event(), closed(code, true));
            assert_eq!(close_code(&s.take_outbound()), Some(code));
        }
        let mut s = ServerConn::new();
        s.feed(&frame(0x88, b"", KEY));
        assert_eq!(s.next_event(), closed(1005, true));
        assert_eq!(close_code(&s.take_outbound()), None);
        let mut s = ServerConn::new();
        s.feed(&frame(0x88, &[0x03, 0xe8, 0xff, 0xfe], KEY));
        assert_eq!(s.next_event(), closed(1007, false));
        assert_eq!(close_code(&s.take_outbound()), Some(1007));
    }

    #[test]
    fn size_caps_refuse_before_buffering() {
        // One frame at the cap passes; one byte more is refused at its header.
        let mut s = ServerConn::new();
        s.feed(&frame(0x82, &vec![1; MAX_MESSAGE], KEY));
        assert!(matches!(s.next_event(), Some(Event::Data(d)) if d.len() == MAX_MESSAGE));
        let mut s = ServerConn::new();
        let big = frame(0x82, &vec![1; MAX_MESSAGE + 1], KEY);
        s.feed(&big[..14]);
        assert_eq!(s.next_event(), closed(1009, false));
        // Fragments adding up to more than the cap: refused at the one that crosses it.
        let mut s = ServerConn::new();
        s.feed(&frame(0x02, &vec![1; MAX_MESSAGE / 2], KEY));
        s.feed(&frame(0x00, &vec![1; MAX_MESSAGE / 2], KEY));
        s.feed(&frame(0x80, &[1], KEY)[..6]);
        assert_eq!(s.next_event(), closed(1009, false));
        assert_eq!(close_code(&s.take_outbound()), Some(1009));
        // A text message is refused at its first frame header, before its payload.
        let mut s = ServerConn::new();
        s.feed(&frame(0x01, &vec![b'a'; 1000], KEY)[..8]);
        assert_eq!(s.next_event(), closed(1003, false));
    }

    #[test]
    fn frames_in_place_read_back_in_every_length_class() {
        let s = ServerConn::new();
        let mut c = client();
        for len in [1usize, 125, 126, 65535, 65536, 100_000] {
            let mut buf = BytesMut::new();
            buf.put_bytes(0, HEADER_ROOM);
            buf.extend((0..len).map(|i| (i % 253) as u8));
            let wire = s.frame_in_place(buf).unwrap();
            let want: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
            assert_eq!(client_read(&mut c, &wire), vec![Message::binary(want)]);
        }
        let mut buf = BytesMut::new();
        buf.put_bytes(0, HEADER_ROOM);
        assert_eq!(s.frame_in_place(buf.clone()), None, "no payload");
        let mut s = ServerConn::new();
        s.close(1000, "");
        buf.put_u8(1);
        assert_eq!(s.frame_in_place(buf), None, "nothing after a close");
    }

    #[test]
    fn an_idle_connection_keeps_no_buffer() {
        let mut s = ServerConn::new();
        s.feed(&frame(0x82, &[7; 64 * 1024], KEY));
        assert!(matches!(s.next_event(), Some(Event::Data(_))));
        assert_eq!(s.next_event(), None);
        assert_eq!(s.parts.capacity(), 0);
        assert!(s.inbound.is_empty());
    }

    #[test]
    fn data_is_handed_on_as_it_arrives_without_a_copy() {
        let payload: Vec<u8> = (0..1000u32).map(|i| (i % 199) as u8).collect();
        let wire = frame(0x82, &payload, KEY);
        let mut s = ServerConn::new();
        // Header and half the payload in one read, as pingora hands it over.
        let first = Bytes::from(wire[..8 + 500].to_vec());
        let at = first.as_ptr() as usize;
        s.feed_bytes(first);
        match s.next_data() {
            Some(Event::Data(d)) => {
                assert_eq!(&d[..], &payload[..500]);
                assert_eq!(d.as_ptr() as usize, at + 8, "unmasked where it lay");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(s.next_data(), None);
        s.feed_bytes(Bytes::from(wire[8 + 500..].to_vec()));
        assert_eq!(
            s.next_data(),
            Some(Event::Data(Bytes::copy_from_slice(&payload[500..])))
        );
        // Fragments with control frames between them: pieces in order, pong queued.
        let mut wire = frame(0x02, b"ab", KEY);
        wire.extend(frame(0x89, b"p", [1, 2, 3, 4]));
        wire.extend(frame(0x80, b"cd", [4, 3, 2, 1]));
        s.feed(&wire);
        let mut got = Vec::new();
        while let Some(Event::Data(d)) = s.next_data() {
            got.extend_from_slice(&d);
        }
        assert_eq!(got, b"abcd");
        let pong = client_read(&mut client(), &s.take_outbound());
        assert_eq!(pong, vec![Message::Pong(Bytes::from_static(b"p"))]);
        assert!(s.inbound.is_empty());
    }
}

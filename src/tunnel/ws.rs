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
    #[error(
        "a tunnel is an upgrade: send GET with Upgrade: websocket (or labgate-tcp) and \
         Connection: Upgrade"
    )]
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

/// The `Upgrade` token of a raw tunnel (`docs/tunnel-protocol.md`): after the `101` the
/// connection carries the device's TCP bytes as they are, without frames.
pub const RAW_UPGRADE: &str = "labgate-tcp";

/// How a tunnel's client speaks after the `101`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Form {
    /// WebSocket binary messages; answer with this `Sec-WebSocket-Accept`.
    WebSocket { accept: String },
    /// Raw bytes (`Upgrade: labgate-tcp`).
    Raw,
}

/// Which form a tunnel request asks for: `Upgrade: labgate-tcp` (with `Connection:
/// Upgrade`, `GET`, HTTP/1.1) is raw; anything else must be a WebSocket handshake.
pub fn form(
    method: &Method,
    version: Version,
    headers: &HeaderMap,
) -> Result<Form, HandshakeError> {
    use http::header::{CONNECTION, UPGRADE};
    if method == Method::GET
        && version == Version::HTTP_11
        && has_token(headers, UPGRADE, RAW_UPGRADE)
        && has_token(headers, CONNECTION, "upgrade")
    {
        return Ok(Form::Raw);
    }
    accept_key(method, version, headers).map(|accept| Form::WebSocket { accept })
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
mod tests;

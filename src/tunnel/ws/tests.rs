//! The tests of the tunnel's WebSocket side (a tungstenite client is the peer).
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
fn the_raw_form_is_asked_for_by_its_upgrade_token_alone() {
    let raw = headers(&[("upgrade", "labgate-tcp"), ("connection", "Upgrade")]);
    assert_eq!(form(&Method::GET, Version::HTTP_11, &raw), Ok(Form::Raw));
    // Token matching is case-insensitive and list-aware, as for websocket.
    let listed = headers(&[
        ("upgrade", "h2c, LABGATE-TCP"),
        ("connection", "keep-alive, upgrade"),
    ]);
    assert_eq!(form(&Method::GET, Version::HTTP_11, &listed), Ok(Form::Raw));
    // A WebSocket handshake is still one.
    assert_eq!(
        form(&Method::GET, Version::HTTP_11, &headers(GOOD)),
        Ok(Form::WebSocket {
            accept: "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".into()
        })
    );
    // Raw needs the same method, version and Connection: Upgrade as a WebSocket.
    let no_connection = headers(&[("upgrade", "labgate-tcp")]);
    for (method, version, h) in [
        (Method::POST, Version::HTTP_11, &raw),
        (Method::GET, Version::HTTP_10, &raw),
        (Method::GET, Version::HTTP_11, &no_connection),
    ] {
        assert_eq!(form(&method, version, h), Err(HandshakeError::NotWebSocket));
    }
    let other = headers(&[("upgrade", "labgate-tcpx"), ("connection", "Upgrade")]);
    assert_eq!(
        form(&Method::GET, Version::HTTP_11, &other),
        Err(HandshakeError::NotWebSocket)
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

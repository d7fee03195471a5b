//! The server side of the opening handshake: `UpgradeRequest::parse` on arbitrary bytes.
//!
//! The first input byte picks the shape: raw bytes, or the header lines of an otherwise valid
//! upgrade request (so the fuzzer spends its time in validation, not in being valid HTTP). The
//! rest of the input is used as is. Checked, beside never panicking:
//! - an error is the peer's handshake fault, with an HTTP status, and its ready-made
//!   `Rejection` is a well-formed HTTP response with that status;
//! - a complete head is no longer than the input; every strict prefix of it is incomplete or
//!   fails with the same error; bytes after it do not change the result;
//! - a smaller head limit refuses exactly the heads longer than it;
//! - the same request given as `http` parts validates the same way (when the target is a valid
//!   URI);
//! - accepting it gives a 101 head that a client with the same key and offer validates, with the
//!   same subprotocol picked.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rallymq_websocket::http::{self, Method, Version};
use rallymq_websocket::{ClientRequest, Error, Fault, Rejection, UpgradeRequest};

const VALID_START: &[u8] = b"GET /mqtt?x=1 HTTP/1.1\r\nHost: broker\r\nUpgrade: websocket\r\n\
    Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Sec-WebSocket-Version: 13\r\n";

fn check_error(error: &Error) {
    assert_eq!(error.fault(), Fault::PeerHandshake, "{error}");
    let status = error.http_status().expect("a handshake error has a status");
    let bytes = Rejection::for_error(error).to_bytes();
    let status_line = format!("HTTP/1.1 {} ", status.as_u16());
    assert!(bytes.starts_with(status_line.as_bytes()));
    let head_end = bytes.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let body_len = bytes.len() - head_end;
    let length = format!("Content-Length: {body_len}\r\n");
    assert!(
        bytes[..head_end]
            .windows(length.len())
            .any(|w| w == length.as_bytes())
    );
}

/// Standard base64 with padding, as `Sec-WebSocket-Key` is sent (the fuzz crate has no base64).
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let text = text.trim_end_matches('=');
    let mut bits = 0u32;
    let mut count = 0;
    let mut out = Vec::new();
    for b in text.bytes() {
        bits = bits << 6 | ALPHABET.iter().position(|&a| a == b)? as u32;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
        }
    }
    Some(out)
}

fuzz_target!(|data: &[u8]| {
    let Some((&shape, rest)) = data.split_first() else {
        return;
    };
    let input = if shape & 1 == 0 {
        rest.to_vec()
    } else {
        [VALID_START, rest].concat()
    };
    let result = UpgradeRequest::parse(&input);
    let (request, head_len) = match result {
        Err(error) => {
            check_error(&error);
            return;
        }
        Ok(None) => return,
        Ok(Some(parsed)) => parsed,
    };
    assert!(head_len <= input.len());
    let head = &input[..head_len];

    // Prefixes and suffixes.
    for cut in [0, 1, head_len / 2, head_len - 1] {
        match UpgradeRequest::parse(&head[..cut]) {
            Ok(None) => {}
            Ok(Some(_)) => panic!("a strict prefix of {cut} bytes is a whole head"),
            Err(error) => check_error(&error),
        }
    }
    let mut longer = head.to_vec();
    longer.extend_from_slice(b"\x81\x85garbage after the head");
    let (again, len) = UpgradeRequest::parse(&longer).unwrap().unwrap();
    assert_eq!((again.target(), len), (request.target(), head_len));

    // The head limit.
    let limit = head_len.saturating_sub(usize::from(shape >> 1));
    match UpgradeRequest::parse_with_limit(head, limit) {
        Ok(Some((_, len))) => assert!(len <= limit && len == head_len),
        Err(Error::HeadTooLarge { limit: l }) => assert!(l == limit && head_len > limit),
        other => panic!("limit {limit} for a head of {head_len}: {other:?}"),
    }

    // The same request through `http` types.
    if let Ok(uri) = request.target().parse::<http::Uri>() {
        let via_http = UpgradeRequest::from_http_parts(
            &Method::GET,
            &uri,
            Version::HTTP_11,
            request.headers(),
        )
        .expect("the same request from http parts");
        assert_eq!(via_http.key(), request.key());
        assert_eq!(via_http.subprotocols(), request.subprotocols());
        assert_eq!(via_http.path(), request.path());
    }

    // Accept it, and let a client with the same key validate the answer.
    let picked = request.subprotocols().first().map(String::as_str);
    let accept = request.accept(picked).unwrap();
    let key: [u8; 16] = decode_base64(request.key().trim())
        .expect("a validated key is base64")
        .try_into()
        .expect("a validated key is 16 bytes");
    let offered: Vec<&str> = request.subprotocols().iter().map(String::as_str).collect();
    // A client can only offer RFC 7230 tokens; the server accepts any comma-separated value.
    if let Ok(client) =
        ClientRequest::with_key("broker", "/", key).and_then(|c| c.with_subprotocols(&offered))
    {
        let (response, len) = client.parse_response(&accept.to_bytes()).unwrap().unwrap();
        assert_eq!(len, accept.to_bytes().len());
        assert_eq!(response.subprotocol(), picked);
        let via_http = client
            .check_http_response(&accept.to_http_response())
            .unwrap();
        assert_eq!(via_http.subprotocol(), picked);
    }
});

//! The client side of the opening handshake: `ClientRequest::parse_response` on arbitrary bytes.
//!
//! The client offers `mqtt` and `chat` with a fixed key. The first input byte picks the shape:
//! raw bytes, or the header lines of an otherwise valid `101` answer with the right
//! `Sec-WebSocket-Accept` (so the fuzzer reaches subprotocol and extension checks). Checked,
//! beside never panicking:
//! - an error is the peer's handshake fault;
//! - an accepted answer is a complete head no longer than the input, selected at most one
//!   offered subprotocol, and every strict prefix of it is incomplete or refused;
//! - bytes after the head (the first frames) do not change the result;
//! - the same answer as an `http::Response` validates the same way.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rallymq_websocket::http::{self, HeaderName, HeaderValue};
use rallymq_websocket::{ClientRequest, Fault, accept_key};

const KEY: [u8; 16] = *b"the sample nonce";

fuzz_target!(|data: &[u8]| {
    let Some((&shape, rest)) = data.split_first() else {
        return;
    };
    let client = ClientRequest::with_key("broker", "/mqtt", KEY)
        .unwrap()
        .with_subprotocols(&["mqtt", "chat"])
        .unwrap();
    let input = if shape & 1 == 0 {
        rest.to_vec()
    } else {
        let start = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n",
            accept_key(client.key().as_bytes())
        );
        [start.as_bytes(), rest].concat()
    };
    let (response, head_len) = match client.parse_response(&input) {
        Err(error) => {
            assert_eq!(error.fault(), Fault::PeerHandshake, "{error}");
            return;
        }
        Ok(None) => return,
        Ok(Some(parsed)) => parsed,
    };
    assert!(head_len <= input.len());
    let head = &input[..head_len];
    if let Some(protocol) = response.subprotocol() {
        assert!(protocol == "mqtt" || protocol == "chat");
    }
    let expected_accept = accept_key(client.key().as_bytes());
    let accept_values: Vec<_> = response
        .headers()
        .get_all("sec-websocket-accept")
        .iter()
        .collect();
    assert_eq!(accept_values.len(), 1);
    assert_eq!(
        accept_values[0].as_bytes().trim_ascii(),
        expected_accept.as_bytes()
    );

    for cut in [0, 1, head_len / 2, head_len - 1] {
        match client.parse_response(&head[..cut]) {
            Ok(Some(_)) => panic!("a strict prefix of {cut} bytes is a whole head"),
            Ok(None) => {}
            Err(error) => assert_eq!(error.fault(), Fault::PeerHandshake),
        }
    }
    let mut longer = head.to_vec();
    longer.extend_from_slice(b"\x81\x05Hello\x88\x00");
    let (again, len) = client.parse_response(&longer).unwrap().unwrap();
    assert_eq!(
        (again.subprotocol(), len),
        (response.subprotocol(), head_len)
    );

    // The same answer through `http` types.
    let mut http_response = http::Response::new(());
    *http_response.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
    for (name, value) in response.headers() {
        let name: HeaderName = name.clone();
        let value: HeaderValue = value.clone();
        http_response.headers_mut().append(name, value);
    }
    let via_http = client.check_http_response(&http_response).unwrap();
    assert_eq!(via_http.subprotocol(), response.subprotocol());
});

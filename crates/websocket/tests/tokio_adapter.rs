//! The tokio driver over in-memory pipes: handshakes and refusals, the close handshake, protocol
//! errors, and the byte-stream view used for MQTT.

use rallymq_websocket::tokio::{ByteStream, accept, accept_with, connect, protocol_error};
use rallymq_websocket::{
    ClientRequest, CloseCode, Config, Error, Event, FrameDecoder, OpCode, Rejection, Role,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};

fn request(path: &str) -> ClientRequest {
    ClientRequest::new("broker.example", path)
        .unwrap()
        .with_subprotocols(&["mqtt"])
        .unwrap()
}

#[tokio::test]
async fn messages_both_ways_and_a_close_handshake_started_by_the_client() {
    let (client_io, server_io) = duplex(4096);
    let server = tokio::spawn(async move {
        let mut ws = accept(server_io, Config::default()).await.unwrap();
        let mut events = Vec::new();
        while let Some(event) = ws.recv().await {
            let event = event.unwrap();
            if let Event::Text(text) = &event {
                ws.send_text(&text.to_uppercase()).await.unwrap();
            }
            events.push(event);
        }
        events
    });
    let (mut ws, response) = connect(client_io, &request("/"), Config::default())
        .await
        .unwrap();
    // `accept` selects no subprotocol.
    assert_eq!(response.subprotocol(), None);
    ws.send_text("hello").await.unwrap();
    assert_eq!(
        ws.recv().await.unwrap().unwrap(),
        Event::Text("HELLO".into())
    );
    // A message larger than the pipe's buffer goes through while the peer reads.
    let big = "x".repeat(100_000);
    ws.send_text(&big).await.unwrap();
    assert_eq!(
        ws.recv().await.unwrap().unwrap(),
        Event::Text(big.to_uppercase().into())
    );
    ws.close(Some(CloseCode::GOING_AWAY), "later")
        .await
        .unwrap();
    let Event::Close(Some(answer)) = ws.recv().await.unwrap().unwrap() else {
        panic!("expected the server's Close");
    };
    assert_eq!(answer.code, CloseCode::GOING_AWAY);
    assert!(ws.recv().await.is_none());
    // Nothing may be sent after the close handshake began.
    let error = ws.send_text("late").await.unwrap_err();
    assert_eq!(protocol_error(&error), Some(&Error::SendAfterClose));

    let events = server.await.unwrap();
    assert_eq!(events.len(), 3);
    let Event::Close(Some(close)) = &events[2] else {
        panic!("expected the client's Close, got {:?}", events[2]);
    };
    assert_eq!(
        (close.code, &*close.reason),
        (CloseCode::GOING_AWAY, "later")
    );
}

#[tokio::test]
async fn the_policy_picks_a_subprotocol_or_refuses() {
    for (path, expected) in [("/mqtt", Ok(Some("mqtt"))), ("/other", Err(404))] {
        let (client_io, server_io) = duplex(4096);
        let server = tokio::spawn(async move {
            accept_with(server_io, Config::default(), |request| {
                if request.path() == "/mqtt" {
                    Ok(request.pick_subprotocol(&["mqtt"]).map(str::to_owned))
                } else {
                    Err(Rejection::not_found())
                }
            })
            .await
            .map(|(_, request)| request.target().to_owned())
        });
        let client = connect(client_io, &request(path), Config::default()).await;
        match expected {
            Ok(subprotocol) => {
                assert_eq!(client.unwrap().1.subprotocol(), subprotocol);
                assert_eq!(server.await.unwrap().unwrap(), path);
            }
            Err(status) => {
                let error = client.unwrap_err();
                assert_eq!(
                    protocol_error(&error),
                    Some(&Error::NotSwitchingProtocols(status))
                );
                let error = server.await.unwrap().unwrap_err();
                assert_eq!(error.kind(), std::io::ErrorKind::PermissionDenied);
            }
        }
    }
}

#[tokio::test]
async fn an_unsupported_version_is_answered_426_with_the_supported_version() {
    let (mut client_io, server_io) = duplex(4096);
    let server = tokio::spawn(accept(server_io, Config::default()));
    client_io
        .write_all(
            b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n",
        )
        .await
        .unwrap();
    let mut answer = String::new();
    client_io.read_to_string(&mut answer).await.unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 426 Upgrade Required\r\n"),
        "{answer}"
    );
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("\r\nsec-websocket-version: 13\r\n")
    );
    let error = server.await.unwrap().unwrap_err();
    assert_eq!(protocol_error(&error), Some(&Error::UnsupportedVersion));
}

/// A raw client: the handshake done by hand, then bytes that break the protocol.
#[tokio::test]
async fn a_protocol_error_is_reported_once_answered_with_a_close_and_the_server_hangs_up() {
    let (mut client_io, server_io) = duplex(4096);
    let server = tokio::spawn(async move {
        let mut ws = accept(server_io, Config::default()).await.unwrap();
        let mut results = Vec::new();
        while let Some(result) = ws.recv().await {
            results.push(result.map_err(|e| protocol_error(&e).cloned()));
        }
        results
    });
    let request = ClientRequest::with_key("h", "/", [7; 16]).unwrap();
    client_io.write_all(&request.to_bytes()).await.unwrap();
    // The head and, in the same write, an unmasked text frame (clients must mask).
    let mut received = Vec::new();
    let mut buf = [0; 1024];
    let head_len = loop {
        let n = client_io.read(&mut buf).await.unwrap();
        received.extend_from_slice(&buf[..n]);
        if let Some((_, len)) = request.parse_response(&received).unwrap() {
            break len;
        }
    };
    client_io.write_all(b"\x81\x02hi").await.unwrap();
    // The server answers with Close 1002 and then closes the transport.
    client_io.read_to_end(&mut received).await.unwrap();
    let mut frames = bytes::BytesMut::from(&received[head_len..]);
    let close = FrameDecoder::new(Role::Client, 1 << 10)
        .decode(&mut frames)
        .unwrap()
        .unwrap();
    assert_eq!(close.opcode, OpCode::Close);
    assert_eq!(close.payload[..2], 1002u16.to_be_bytes());
    assert!(frames.is_empty(), "nothing after the Close");
    assert_eq!(server.await.unwrap(), [Err(Some(Error::UnmaskedFrame))]);
}

#[tokio::test]
async fn a_transport_closed_without_a_close_handshake_is_an_unexpected_eof() {
    let (client_io, server_io) = duplex(4096);
    let server = tokio::spawn(async move {
        let mut ws = accept(server_io, Config::default()).await.unwrap();
        let first = ws.recv().await.unwrap().unwrap();
        let second = ws.recv().await.unwrap().unwrap_err();
        (first, second.kind(), ws.recv().await.is_none())
    });
    let (mut ws, _) = connect(client_io, &request("/"), Config::default())
        .await
        .unwrap();
    ws.send_binary(b"last words").await.unwrap();
    drop(ws);
    let (first, kind, ended) = server.await.unwrap();
    assert_eq!(first, Event::Binary("last words".into()));
    assert_eq!(kind, std::io::ErrorKind::UnexpectedEof);
    assert!(ended);
}

/// MQTT over WebSockets: packets spanning messages and several packets in one message come
/// out of the byte stream as the same bytes, in order.
#[tokio::test]
async fn the_byte_stream_carries_bytes_across_message_boundaries() {
    const LEN: usize = 200_000;
    let (client_io, server_io) = duplex(1024);
    let server = tokio::spawn(async move {
        let ws = accept(server_io, Config::default()).await.unwrap();
        let mut stream: ByteStream<DuplexStream> = ws.into_byte_stream();
        let mut received = vec![0; LEN];
        stream.read_exact(&mut received).await.unwrap();
        // Echo it back as one write (sent in messages of at most 64 KiB).
        stream.write_all(&received).await.unwrap();
        stream.flush().await.unwrap();
        // The client's Close ends the stream: end of file, no error.
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        received
    });
    let (ws, _) = connect(client_io, &request("/"), Config::default())
        .await
        .unwrap();
    let mut stream = ws.into_byte_stream();
    let payload: Vec<u8> = (0..LEN as u32).map(|i| (i % 253) as u8).collect();
    // Uneven writes: each becomes one binary message. The server reads all before it answers.
    let mut sent = 0;
    for size in [1, 2, 1000, 70_000, 3, 65_536].iter().cycle() {
        if sent == payload.len() {
            break;
        }
        let end = (sent + size).min(payload.len());
        stream.write_all(&payload[sent..end]).await.unwrap();
        sent = end;
    }
    stream.flush().await.unwrap();
    let mut echoed = vec![0; LEN];
    stream.read_exact(&mut echoed).await.unwrap();
    assert!(echoed == payload, "the echo differs");
    // Shutting down sends a Close; the server's stream then ends.
    stream.shutdown().await.unwrap();
    assert!(
        server.await.unwrap() == payload,
        "the server received other bytes"
    );
}

#[tokio::test]
async fn the_byte_stream_refuses_text_with_1003() {
    let (client_io, server_io) = duplex(4096);
    let server = tokio::spawn(async move {
        let mut stream = accept(server_io, Config::default())
            .await
            .unwrap()
            .into_byte_stream();
        let mut buf = Vec::new();
        let error = stream.read_to_end(&mut buf).await.unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::InvalidData);
        // The next read sends the Close and finishes.
        let _ = stream.read_to_end(&mut buf).await;
    });
    let (mut ws, _) = connect(client_io, &request("/"), Config::default())
        .await
        .unwrap();
    ws.send_text("not MQTT").await.unwrap();
    let Event::Close(Some(close)) = ws.recv().await.unwrap().unwrap() else {
        panic!("expected a Close");
    };
    assert_eq!(close.code, CloseCode::UNSUPPORTED_DATA);
    // Receiving again sends our answer to the Close and ends the connection.
    assert!(ws.recv().await.is_none());
    server.await.unwrap();
}

/// A reader of the byte stream that stops at its first error, as most do (the MQTT broker
/// does), still sends the Close the error calls for: 1003 for text, 1002 for an unmasked frame,
/// 1007 for a close reason that is not UTF-8 (RFC 6455 §7.1.7: "SHOULD send a Close frame with
/// an appropriate status code"). Before, the Close was queued for a next read that never came.
#[tokio::test]
async fn the_byte_stream_sends_the_close_before_it_reports_the_error() {
    for (frame, code) in [
        (&b"\x81\x82\x00\x00\x00\x00hi"[..], 1003u16),
        (&b"\x82\x02hi"[..], 1002),
        (&b"\x88\x84\x00\x00\x00\x00\x03\xe8\xff\xfe"[..], 1007),
    ] {
        let (mut client_io, server_io) = duplex(4096);
        let server = tokio::spawn(async move {
            let mut stream = accept(server_io, Config::default())
                .await
                .unwrap()
                .into_byte_stream();
            let mut buf = [0u8; 64];
            let error = stream.read(&mut buf).await.unwrap_err();
            // Dropped at once, without another read.
            error.kind()
        });
        let request = ClientRequest::with_key("h", "/", [7; 16]).unwrap();
        client_io.write_all(&request.to_bytes()).await.unwrap();
        let mut received = Vec::new();
        let mut buf = [0; 1024];
        let head_len = loop {
            let n = client_io.read(&mut buf).await.unwrap();
            received.extend_from_slice(&buf[..n]);
            if let Some((_, len)) = request.parse_response(&received).unwrap() {
                break len;
            }
        };
        client_io.write_all(frame).await.unwrap();
        assert_eq!(server.await.unwrap(), std::io::ErrorKind::InvalidData);
        client_io.read_to_end(&mut received).await.unwrap();
        let mut frames = bytes::BytesMut::from(&received[head_len..]);
        let close = FrameDecoder::new(Role::Client, 1 << 10)
            .decode(&mut frames)
            .unwrap()
            .unwrap_or_else(|| panic!("no Close for {frame:02x?}"));
        assert_eq!(close.opcode, OpCode::Close);
        assert_eq!(close.payload[..2], code.to_be_bytes(), "for {frame:02x?}");
    }
}

/// A peer that sends without reading: the echo server stops reading once 1 MiB of answers is
/// unsent, so the peer's sends block instead of the server buffering everything.
#[tokio::test]
async fn an_echo_loop_pushes_back_on_a_peer_that_does_not_read() {
    let (client_io, server_io) = duplex(64 * 1024);
    let server = tokio::spawn(async move {
        let mut ws = accept(server_io, Config::default()).await.unwrap();
        while let Some(Ok(event)) = ws.recv().await {
            if let Event::Binary(data) = event {
                ws.queue_binary(&data).unwrap();
            }
        }
    });
    let (mut ws, _) = connect(client_io, &request("/"), Config::default())
        .await
        .unwrap();
    let message = vec![7; 64 * 1024];
    let mut sent = 0;
    let sending = async {
        loop {
            ws.send_binary(&message).await.unwrap();
            sent += 1;
        }
    };
    let result = tokio::time::timeout(std::time::Duration::from_millis(500), sending).await;
    assert!(result.is_err(), "the sends never blocked");
    // 1 MiB unsent at the server, plus what the two pipe buffers and the two read buffers hold.
    assert!(
        sent < 48,
        "{sent} messages of 64 KiB went in before the sends blocked"
    );
    // Reading the echoes lets everything flow again, in order.
    for _ in 0..sent {
        assert_eq!(
            ws.recv().await.unwrap().unwrap(),
            Event::Binary(message.clone().into())
        );
    }
    drop(ws);
    server.await.unwrap();
}

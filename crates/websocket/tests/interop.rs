//! Interop with real peers over loopback TCP, both ways: `tungstenite` (through
//! `tokio-tungstenite`) and the Python `websockets` library.
//!
//! A missing peer fails these tests; they are never skipped. The Python peer needs `python3`
//! (or `RALLYMQ_PYTHON`) with `websockets` installed: `scripts/setup.sh` installs the pinned
//! version from `scripts/requirements.txt`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use rallymq_websocket::tokio::{WebSocketStream, accept_with, connect};
use rallymq_websocket::{ClientRequest, CloseCode, CloseFrame, Config, Event, OpCode, Rejection};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame as TCloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::Frame as TFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{
    CloseCode as TCloseCode, Data, OpCode as TOpCode,
};
use tokio_tungstenite::tungstenite::{Bytes, Message};

const LIMIT: Duration = Duration::from_secs(60);

fn large_binary() -> Vec<u8> {
    (0..1 << 20).map(|i| (i % 251) as u8).collect()
}

/// What our echo server saw of one connection.
#[derive(Debug)]
struct ServerReport {
    target: String,
    subprotocol: Option<String>,
    messages: usize,
    close: Option<Option<CloseFrame>>,
}

/// Accepts one connection with our tokio adapter (picking `mqtt` when offered, refusing any
/// path but `/mqtt` with 404) and echoes it until the close handshake is done.
async fn our_echo_server(listener: TcpListener) -> ServerReport {
    let (tcp, _) = listener.accept().await.unwrap();
    let (mut ws, request) = accept_with(tcp, Config::default(), |request| {
        if request.path() != "/mqtt" {
            return Err(Rejection::not_found());
        }
        Ok(request.pick_subprotocol(&["mqtt"]).map(str::to_owned))
    })
    .await
    .unwrap();
    let mut report = ServerReport {
        target: request.target().to_owned(),
        subprotocol: request.pick_subprotocol(&["mqtt"]).map(str::to_owned),
        messages: 0,
        close: None,
    };
    while let Some(event) = ws.recv().await {
        match event.unwrap() {
            Event::Text(text) => ws.send_text(&text).await.unwrap(),
            Event::Binary(data) => ws.send_binary(&data).await.unwrap(),
            Event::Close(frame) => report.close = Some(frame),
            _ => continue,
        }
        report.messages += 1;
    }
    // Closed properly: the peer's Close was received and ours went out.
    assert!(
        report.close.is_some(),
        "the connection ended without a close handshake"
    );
    report
}

/// Exchanges messages with an echo server through our client and closes with 1000 "bye".
async fn our_client_session(mut ws: WebSocketStream<TcpStream>) {
    async fn next(ws: &mut WebSocketStream<TcpStream>) -> Event {
        ws.recv().await.expect("connection open").unwrap()
    }
    for text in ["", "hello", &"κόσμε \u{1f310} ".repeat(50)] {
        ws.send_text(text).await.unwrap();
        assert_eq!(next(&mut ws).await, Event::Text(text.into()));
    }
    for data in [Vec::new(), (0..=255).collect(), large_binary()] {
        ws.send_binary(&data).await.unwrap();
        assert_eq!(next(&mut ws).await, Event::Binary(data.into()));
    }
    // A fragmented text message whose fragments split a code point, with a ping between them.
    let text = "fragmented \u{1f310}".as_bytes();
    ws.connection_mut()
        .send_frame(false, OpCode::Text, &text[..13])
        .unwrap();
    ws.connection_mut().send_ping(b"between").unwrap();
    ws.connection_mut()
        .send_frame(true, OpCode::Continuation, &text[13..])
        .unwrap();
    ws.flush().await.unwrap();
    assert_eq!(next(&mut ws).await, Event::Pong("between".into()));
    assert_eq!(
        next(&mut ws).await,
        Event::Text("fragmented \u{1f310}".into())
    );
    ws.send_ping(b"are you there").await.unwrap();
    assert_eq!(next(&mut ws).await, Event::Pong("are you there".into()));

    ws.close(Some(CloseCode::NORMAL), "bye").await.unwrap();
    let mut closed = None;
    while let Some(event) = ws.recv().await {
        if let Event::Close(frame) = event.unwrap() {
            closed = Some(frame);
        }
    }
    let frame = closed
        .expect("the peer answered the Close")
        .expect("with a code");
    assert_eq!(frame.code, CloseCode::NORMAL);
}

// ---- tungstenite ----------------------------------------------------------------------------

#[tokio::test]
async fn tungstenite_client_to_our_server() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(our_echo_server(listener));

    let client = async {
        let mut request = format!("ws://127.0.0.1:{port}/mqtt?client=7")
            .into_client_request()
            .unwrap();
        request.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_static("chat, mqtt"),
        );
        let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let (mut ws, response) = tokio_tungstenite::client_async(request, tcp).await.unwrap();
        assert_eq!(response.headers()["sec-websocket-protocol"], "mqtt");

        let messages = [
            Message::text(""),
            Message::text("hello \u{1f310}"),
            Message::binary(large_binary()),
            Message::binary(Vec::new()),
        ];
        for message in messages {
            ws.send(message.clone()).await.unwrap();
            assert_eq!(ws.next().await.unwrap().unwrap(), message);
        }
        // Fragments sent as raw frames, splitting a code point, with a ping in between.
        let text = "split \u{e9}".as_bytes();
        ws.feed(Message::Frame(TFrame::message(
            text[..7].to_vec(),
            TOpCode::Data(Data::Text),
            false,
        )))
        .await
        .unwrap();
        ws.feed(Message::Ping(Bytes::from_static(b"p")))
            .await
            .unwrap();
        ws.send(Message::Frame(TFrame::message(
            text[7..].to_vec(),
            TOpCode::Data(Data::Continue),
            true,
        )))
        .await
        .unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::Pong(Bytes::from_static(b"p"))
        );
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::text("split \u{e9}")
        );

        ws.close(Some(TCloseFrame {
            code: TCloseCode::Normal,
            reason: "bye".into(),
        }))
        .await
        .unwrap();
        let mut answer = None;
        while let Some(message) = ws.next().await {
            if let Message::Close(frame) = message.unwrap() {
                answer = frame;
            }
        }
        assert_eq!(answer.map(|f| f.code), Some(TCloseCode::Normal));
    };
    timeout(LIMIT, client).await.unwrap();
    let report = timeout(LIMIT, server).await.unwrap().unwrap();
    assert_eq!(report.target, "/mqtt?client=7");
    assert_eq!(report.subprotocol.as_deref(), Some("mqtt"));
    // 4 whole messages, the fragmented one, and the Close.
    assert_eq!(report.messages, 6);
    let close = report.close.unwrap().unwrap();
    assert_eq!((close.code, &*close.reason), (CloseCode::NORMAL, "bye"));
}

#[tokio::test]
async fn our_client_to_tungstenite_server() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        // tungstenite's callback signature fixes the (large) error type.
        #[allow(clippy::result_large_err)]
        let pick_mqtt = |request: &Request, mut response: Response| {
            let offered = request.headers()["sec-websocket-protocol"]
                .to_str()
                .unwrap();
            assert_eq!(offered, "mqtt, chat");
            response
                .headers_mut()
                .insert("sec-websocket-protocol", HeaderValue::from_static("mqtt"));
            Ok(response)
        };
        let mut ws = tokio_tungstenite::accept_hdr_async(tcp, pick_mqtt)
            .await
            .unwrap();
        let mut close = None;
        while let Some(message) = ws.next().await {
            match message.unwrap() {
                message @ (Message::Text(_) | Message::Binary(_)) => {
                    ws.send(message).await.unwrap()
                }
                Message::Close(frame) => close = frame,
                _ => {}
            }
        }
        close
    });

    let host = format!("127.0.0.1:{port}");
    let request = ClientRequest::new(&host, "/mqtt")
        .unwrap()
        .with_subprotocols(&["mqtt", "chat"])
        .unwrap();
    let tcp = TcpStream::connect(&host).await.unwrap();
    let (ws, response) = connect(tcp, &request, Config::default()).await.unwrap();
    assert_eq!(response.subprotocol(), Some("mqtt"));
    timeout(LIMIT, our_client_session(ws)).await.unwrap();

    let close = timeout(LIMIT, server).await.unwrap().unwrap().unwrap();
    assert_eq!(
        (close.code, close.reason.as_str()),
        (TCloseCode::Normal, "bye")
    );
}

// ---- Python `websockets` --------------------------------------------------------------------

const PYTHON_PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/python_peer.py");

fn python() -> Command {
    let python = std::env::var("RALLYMQ_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let mut command = Command::new(python);
    command.arg(PYTHON_PEER);
    command
}

fn python_missing(error: impl std::fmt::Display) -> ! {
    panic!(
        "the Python interop peer could not run ({error}): it needs python3 with the `websockets` \
         package; run scripts/setup.sh"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_websockets_client_to_our_server() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(our_echo_server(listener));

    let client = tokio::task::spawn_blocking(move || {
        python()
            .args(["client", &format!("ws://127.0.0.1:{port}/mqtt")])
            .output()
            .unwrap_or_else(|e| python_missing(e))
    });
    let output = timeout(LIMIT, client).await.unwrap().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stderr.contains("No module named") {
        python_missing(stderr.trim());
    }
    assert!(
        output.status.success() && stdout.trim() == "OK",
        "python client failed:\n{stdout}\n{stderr}"
    );
    let report = timeout(LIMIT, server).await.unwrap().unwrap();
    assert_eq!(report.subprotocol.as_deref(), Some("mqtt"));
    // 3 text, 3 binary, 2 fragmented messages, and the Close.
    assert_eq!(report.messages, 9);
    let close = report.close.unwrap().unwrap();
    assert_eq!((close.code, &*close.reason), (CloseCode::NORMAL, "bye"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_to_python_websockets_server() {
    let mut child = python()
        .arg("server")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| python_missing(e));
    let stdout = child.stdout.take().unwrap();
    let (port_tx, port_rx) = tokio::sync::oneshot::channel();
    let lines = std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
        let first = lines.next().unwrap_or_default();
        let _ = port_tx.send(first);
        lines.collect::<Vec<_>>()
    });
    let first = timeout(LIMIT, port_rx).await.unwrap().unwrap();
    let Some(port) = first.strip_prefix("PORT ") else {
        let _ = child.kill();
        let output = child.wait_with_output().unwrap();
        python_missing(String::from_utf8_lossy(&output.stderr).trim());
    };

    let host = format!("127.0.0.1:{port}");
    let request = ClientRequest::new(&host, "/")
        .unwrap()
        .with_subprotocols(&["mqtt"])
        .unwrap();
    let tcp = TcpStream::connect(&host).await.unwrap();
    let (ws, response) = connect(tcp, &request, Config::default()).await.unwrap();
    assert_eq!(response.subprotocol(), Some("mqtt"));
    timeout(LIMIT, our_client_session(ws)).await.unwrap();

    let rest = tokio::task::spawn_blocking(move || lines.join().unwrap());
    let rest = timeout(LIMIT, rest).await.unwrap().unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "python server failed: {rest:?}");
    assert_eq!(rest, ["CLOSED 1000 bye"]);
}

//! A WebSocket client for `ws_echo`: sends text and binary messages, checks that each comes back
//! unchanged, then closes the connection properly.
//!
//! ```text
//! cargo run --release -p rallymq-examples --example ws_client [ADDRESS] [COUNT]
//! ```
//!
//! ADDRESS defaults to 127.0.0.1:9001 and COUNT to 10 round trips of each kind.
//!
//! ```text
//! cargo run --release -p rallymq-examples --example ws_client -- --autobahn [ADDRESS]
//! ```
//!
//! runs the client side of the Autobahn|Testsuite instead: against `wstest -m fuzzingserver`,
//! it fetches the case count, echoes every case's messages, then asks for the report
//! (`crates/websocket/autobahn/run.sh client` does all of it).

use std::io::{Error, ErrorKind};
use std::time::Instant;

use rallymq_websocket::tokio::{WebSocketStream, connect, protocol_error};
use rallymq_websocket::{ClientRequest, CloseCode, Config, Event};
use tokio::net::TcpStream;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("--autobahn") {
        let address = args.nth(1).unwrap_or_else(|| "127.0.0.1:9001".to_owned());
        return autobahn(&address).await;
    }
    let address = args.next().unwrap_or_else(|| "127.0.0.1:9001".to_owned());
    let count: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(10);

    let mut ws = open(&address, "/").await?;
    println!("connected to ws://{address}/");

    let started = Instant::now();
    for i in 0..count {
        let text = format!("hello {i} \u{1f310}");
        ws.send_text(&text).await?;
        expect(ws.recv().await, &Event::Text(text.as_str().into()))?;
        let data: Vec<u8> = (0..=255u8).cycle().skip(i).take(1000 + i).collect();
        ws.send_binary(&data).await?;
        expect(ws.recv().await, &Event::Binary(data.into()))?;
    }
    let elapsed = started.elapsed();
    println!(
        "{} round trips in {elapsed:?} ({:?} each)",
        2 * count,
        elapsed / (2 * count.max(1)) as u32
    );

    ws.close(Some(CloseCode::NORMAL), "done").await?;
    while let Some(event) = ws.recv().await {
        if let Event::Close(frame) = event? {
            println!("closed: {frame:?}");
        }
    }
    Ok(())
}

fn expect(received: Option<std::io::Result<Event>>, wanted: &Event) -> std::io::Result<()> {
    match received {
        Some(Ok(event)) if &event == wanted => Ok(()),
        other => Err(Error::other(format!("expected {wanted:?}, got {other:?}"))),
    }
}

async fn open(address: &str, target: &str) -> std::io::Result<WebSocketStream<TcpStream>> {
    let tcp = TcpStream::connect(address).await?;
    tcp.set_nodelay(true)?;
    let request =
        ClientRequest::new(address, target).map_err(|e| Error::new(ErrorKind::InvalidInput, e))?;
    let (ws, _response) = connect(tcp, &request, Config::default()).await?;
    Ok(ws)
}

/// The Autobahn|Testsuite client protocol: `getCaseCount`, then `runCase` for each case (echo
/// everything until the server closes), then `updateReports`.
async fn autobahn(address: &str) -> std::io::Result<()> {
    const AGENT: &str = "rallymq-websocket";
    let mut ws = open(address, "/getCaseCount").await?;
    let count: usize = match ws.recv().await {
        Some(Ok(Event::Text(text))) => text
            .parse()
            .map_err(|_| Error::other(format!("bad case count {text:?}")))?,
        other => return Err(Error::other(format!("no case count: {other:?}"))),
    };
    while ws.recv().await.is_some() {}
    for case in 1..=count {
        let mut ws = open(address, &format!("/runCase?case={case}&agent={AGENT}")).await?;
        while let Some(event) = ws.recv().await {
            let queued = match event {
                Ok(Event::Text(text)) => ws.queue_text(&text),
                Ok(Event::Binary(data)) => ws.queue_binary(&data),
                Ok(_) => Ok(()),
                // The peer broke the protocol on purpose: the Close goes out with the next recv.
                Err(error) if protocol_error(&error).is_some() => Ok(()),
                // The transport failed: nothing more to do on this connection.
                Err(_) => break,
            };
            // Sending after the close handshake began is refused; the case is over anyway.
            if queued.is_err() {
                break;
            }
        }
    }
    let mut ws = open(address, &format!("/updateReports?agent={AGENT}")).await?;
    while ws.recv().await.is_some() {}
    println!("ran {count} Autobahn cases as {AGENT}");
    Ok(())
}

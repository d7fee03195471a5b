//! A WebSocket client for `ws_echo`: sends text and binary messages, checks that each comes back
//! unchanged, then closes the connection properly.
//!
//! ```text
//! cargo run --release -p rallymq-examples --example ws_client [ADDRESS] [COUNT]
//! ```
//!
//! ADDRESS defaults to 127.0.0.1:9001 and COUNT to 10 round trips of each kind.

use std::io::{Error, ErrorKind};
use std::time::Instant;

use rallymq_websocket::tokio::connect;
use rallymq_websocket::{ClientRequest, CloseCode, Config, Event};
use tokio::net::TcpStream;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let address = args.next().unwrap_or_else(|| "127.0.0.1:9001".to_owned());
    let count: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(10);

    let tcp = TcpStream::connect(&address).await?;
    tcp.set_nodelay(true)?;
    let request =
        ClientRequest::new(&address, "/").map_err(|e| Error::new(ErrorKind::InvalidInput, e))?;
    let (mut ws, _response) = connect(tcp, &request, Config::default()).await?;
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

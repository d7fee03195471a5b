//! A WebSocket echo server: every text and binary message comes back as it arrived.
//!
//! ```text
//! cargo run --release -p rallymq-examples --example ws_echo [ADDRESS]
//! ```
//!
//! ADDRESS defaults to 127.0.0.1:9001, the address the Autobahn|Testsuite's fuzzing client
//! expects. Each connection runs on its own task; answers are queued and written in as few
//! writes as the reads allow.

use rallymq_websocket::Event;
use rallymq_websocket::tokio::{WebSocketStream, accept};
use tokio::net::{TcpListener, TcpStream};

async fn echo(mut ws: WebSocketStream<TcpStream>) -> std::io::Result<()> {
    while let Some(event) = ws.recv().await {
        match event {
            Ok(Event::Text(text)) => ws.queue_text(&text)?,
            Ok(Event::Binary(data)) => ws.queue_binary(&data)?,
            // Pings and closes are answered by the connection.
            Ok(_) => {}
            // The peer broke the protocol: the close frame is sent by the next `recv`.
            Err(error) => eprintln!("connection failed: {error}"),
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9001".to_owned());
    let listener = TcpListener::bind(&address).await?;
    eprintln!(
        "echoing WebSocket messages on ws://{}",
        listener.local_addr()?
    );
    loop {
        let (tcp, peer) = listener.accept().await?;
        tcp.set_nodelay(true)?;
        tokio::spawn(async move {
            match accept(tcp, Default::default()).await {
                Ok(ws) => {
                    if let Err(error) = echo(ws).await {
                        eprintln!("{peer}: {error}");
                    }
                }
                Err(error) => eprintln!("{peer}: handshake refused: {error}"),
            }
        });
    }
}

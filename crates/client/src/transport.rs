//! Opening the byte stream a URL names.

use std::pin::Pin;
use std::task::{Context, Poll};

use rallymq_websocket::tokio::{ByteStream, connect};
use rallymq_websocket::{ClientRequest, Config};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::Error;
use crate::url::{BrokerUrl, Scheme};

/// WebSocket subprotocol offered to the broker (MQTT-6.0.0-3).
const SUBPROTOCOL: &str = "mqtt";

/// A connected transport: MQTT bytes in, MQTT bytes out.
pub(crate) enum Transport {
    Tcp(TcpStream),
    WebSocket(Box<ByteStream<TcpStream>>),
}

pub(crate) async fn open(url: &BrokerUrl) -> Result<Transport, Error> {
    if url.scheme.is_tls() {
        return Err(Error::Transport(format!(
            "{:?} (TLS) is not supported by this build yet",
            url.scheme
        )));
    }
    let tcp = TcpStream::connect(url.authority())
        .await
        .map_err(|e| Error::Transport(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    match url.scheme {
        Scheme::Ws | Scheme::Wss => {
            let request = ClientRequest::new(&url.authority(), &url.path)
                .and_then(|request| request.with_subprotocols(&[SUBPROTOCOL]))
                .map_err(|e| Error::InvalidUrl(e.to_string()))?;
            let (ws, response) = connect(tcp, &request, Config::default())
                .await
                .map_err(|e| Error::Transport(e.to_string()))?;
            if response.subprotocol() != Some(SUBPROTOCOL) {
                return Err(Error::Transport(
                    "the server did not accept the mqtt subprotocol".into(),
                ));
            }
            Ok(Transport::WebSocket(Box::new(ws.into_byte_stream())))
        }
        Scheme::Mqtt | Scheme::Mqtts => Ok(Transport::Tcp(tcp)),
    }
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Self::WebSocket(ws) => Pin::new(ws.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Self::WebSocket(ws) => Pin::new(ws.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(tcp) => Pin::new(tcp).poll_flush(cx),
            Self::WebSocket(ws) => Pin::new(ws.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Self::WebSocket(ws) => Pin::new(ws.as_mut()).poll_shutdown(cx),
        }
    }
}

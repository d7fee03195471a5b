//! The tokio driver: a [`Connection`] over any `AsyncRead + AsyncWrite`, with accept and connect
//! helpers and a byte-stream view for protocols like MQTT.
//!
//! The driver holds no protocol logic: it reads into the connection's receive buffer, drains
//! events, and writes out the transmit buffer. Protocol errors surface as `io::Error`s of kind
//! `InvalidData` (the peer's fault) or `InvalidInput` (the caller's) wrapping the crate's
//! [`Error`]; [`protocol_error`] gets it back.
//!
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! use rallymq_websocket::{Config, Event};
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:9001").await?;
//! let (tcp, _) = listener.accept().await?;
//! let mut ws = rallymq_websocket::tokio::accept(tcp, Config::default()).await?;
//! while let Some(event) = ws.recv().await {
//!     match event? {
//!         Event::Text(text) => ws.send_text(&text).await?,
//!         Event::Binary(data) => ws.send_binary(&data).await?,
//!         _ => {} // pings and closes are answered by the connection
//!     }
//! }
//! # Ok(())
//! # }
//! ```

use std::future::{Future, poll_fn};
use std::io;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::{
    ClientRequest, CloseCode, Config, Connection, Error, Event, Fault, Rejection, Role, State,
    UpgradeRequest, UpgradeResponse,
};

/// How much room is made in the receive buffer when it runs low.
const READ_CHUNK: usize = 16 * 1024;

/// Below this much spare capacity, the receive buffer is grown before a read.
const MIN_READ_ROOM: usize = 2 * 1024;

/// With this much queued for a transport that takes none of it, receiving stops reading.
const MAX_UNSENT: usize = 1 << 20;

/// The most one `poll_write` of a [`ByteStream`] puts in a single binary message.
const MAX_WRITE_MESSAGE: usize = 64 * 1024;

/// The crate's error inside an `io::Error` made by this module, if there is one.
pub fn protocol_error(error: &io::Error) -> Option<&Error> {
    error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<Error>())
}

fn to_io(error: Error) -> io::Error {
    let kind = match error.fault() {
        Fault::Caller => io::ErrorKind::InvalidInput,
        _ => io::ErrorKind::InvalidData,
    };
    io::Error::new(kind, error)
}

/// A WebSocket over a tokio transport, message by message.
///
/// Receiving ([`recv`](Self::recv)) is cancel-safe: every byte read is kept in the connection.
/// Sending queues the frame in the connection first, so a cancelled send is completed by the
/// next send, flush or receive.
///
/// Receiving also writes what is queued (answers to pings, queued messages). While more than
/// 1 MiB is queued and the transport takes none of it, receiving stops reading: a peer that
/// sends without reading cannot make an echo loop buffer without bound.
#[derive(Debug)]
pub struct WebSocketStream<S> {
    io: S,
    connection: Connection,
    /// The transport reached end of file.
    eof: bool,
    /// The transport's write side was shut down after the close handshake.
    shut_down: bool,
    /// Bytes were written since the transport was last flushed.
    unflushed: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> WebSocketStream<S> {
    /// Drives `connection` over `io`, whose opening handshake is done. Bytes read past the
    /// handshake must already be in the connection ([`Connection::handle_bytes`]).
    pub fn new(io: S, connection: Connection) -> Self {
        Self {
            io,
            connection,
            eof: false,
            shut_down: false,
            unflushed: false,
        }
    }

    /// The sans-IO connection, e.g. for its [`State`].
    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    /// The sans-IO connection, to queue several frames before one [`flush`](Self::flush).
    pub fn connection_mut(&mut self) -> &mut Connection {
        &mut self.connection
    }

    /// The transport.
    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// The transport and the connection.
    pub fn into_parts(self) -> (S, Connection) {
        (self.io, self.connection)
    }

    /// The next event from the peer; `None` once the connection is closed and the transport
    /// shut down.
    ///
    /// Pings and Close frames are answered before the next read. A protocol error from the
    /// peer is returned once (kind `InvalidData`), after which the Close frame it caused is sent
    /// and `None` follows. A transport that ends without a close handshake gives an
    /// `UnexpectedEof` error.
    pub async fn recv(&mut self) -> Option<io::Result<Event>> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// [`recv`](Self::recv) as a poll function.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Event>>> {
        loop {
            // Queued frames (answers to pings and closes, queued messages) go out as soon as
            // the transport takes them; a transport that is not writable does not stop reading.
            if let Poll::Ready(Err(e)) = self.poll_write_pending(cx) {
                return Poll::Ready(Some(Err(e)));
            }
            if self.unflushed && self.connection.pending_transmit().is_empty() {
                match Pin::new(&mut self.io).poll_flush(cx) {
                    Poll::Ready(Ok(())) => self.unflushed = false,
                    Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e))),
                    Poll::Pending => {}
                }
            }
            match self.connection.poll_event() {
                Ok(Some(event)) => return Poll::Ready(Some(Ok(event))),
                Ok(None) => {}
                Err(error) => return Poll::Ready(Some(Err(to_io(error)))),
            }
            if self.connection.state() == State::Closed {
                if let Err(e) = ready!(self.poll_finish(cx)) {
                    return Poll::Ready(Some(Err(e)));
                }
                return Poll::Ready(None);
            }
            if self.eof {
                return Poll::Ready(None);
            }
            if self.connection.pending_transmit().len() >= MAX_UNSENT {
                // Back-pressure: the write above is pending (it would have emptied the buffer
                // otherwise) and will wake us; read no more until the peer takes some.
                return Poll::Pending;
            }
            let buf = self.connection.receive_buffer();
            if ready!(poll_read_into(&mut self.io, cx, buf))? == 0 {
                self.eof = true;
                if !self.connection.receive_buffer().is_empty()
                    || self.connection.state() != State::Closed
                {
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the transport closed without a close handshake",
                    ))));
                }
            }
        }
    }

    /// After the close handshake, or once the connection has failed: sends what is queued
    /// (the Close frame), and a server shuts its write side
    /// (RFC 6455 §7.1.1: the server closes the TCP connection first).
    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_write_pending(cx))?;
        ready!(Pin::new(&mut self.io).poll_flush(cx))?;
        if self.connection.role() == Role::Server && !self.shut_down {
            // A peer that already left makes shutting down fail; the connection is over anyway.
            let _ = ready!(Pin::new(&mut self.io).poll_shutdown(cx));
            self.shut_down = true;
        }
        Poll::Ready(Ok(()))
    }

    /// Writes out the connection's transmit buffer.
    fn poll_write_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.connection.pending_transmit().is_empty() {
            let n =
                ready!(Pin::new(&mut self.io).poll_write(cx, self.connection.pending_transmit()))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.connection.advance_transmit(n);
            self.unflushed = true;
        }
        Poll::Ready(Ok(()))
    }

    /// Writes out everything queued and flushes the transport.
    pub async fn flush(&mut self) -> io::Result<()> {
        poll_fn(|cx| self.poll_flush_all(cx)).await
    }

    fn poll_flush_all(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_write_pending(cx))?;
        ready!(Pin::new(&mut self.io).poll_flush(cx))?;
        self.unflushed = false;
        Poll::Ready(Ok(()))
    }

    /// Queues a text message without writing it: the next `recv`, send or `flush` writes it.
    /// An echo loop that queues each answer sends them in as few writes as the reads allow.
    pub fn queue_text(&mut self, text: &str) -> io::Result<()> {
        self.connection.send_text(text).map_err(to_io)
    }

    /// Queues a binary message without writing it (see [`queue_text`](Self::queue_text)).
    pub fn queue_binary(&mut self, data: &[u8]) -> io::Result<()> {
        self.connection.send_binary(data).map_err(to_io)
    }

    /// Sends a text message.
    pub async fn send_text(&mut self, text: &str) -> io::Result<()> {
        self.connection.send_text(text).map_err(to_io)?;
        self.flush().await
    }

    /// Sends a binary message.
    pub async fn send_binary(&mut self, data: &[u8]) -> io::Result<()> {
        self.connection.send_binary(data).map_err(to_io)?;
        self.flush().await
    }

    /// Sends a ping (at most 125 bytes).
    pub async fn send_ping(&mut self, data: &[u8]) -> io::Result<()> {
        self.connection.send_ping(data).map_err(to_io)?;
        self.flush().await
    }

    /// Begins the close handshake; keep calling [`recv`](Self::recv) until `None` to finish it.
    pub async fn close(&mut self, code: Option<CloseCode>, reason: &str) -> io::Result<()> {
        self.connection.close(code, reason).map_err(to_io)?;
        self.flush().await
    }

    /// A byte-stream view over binary messages, for MQTT and the like (see [`ByteStream`]).
    pub fn into_byte_stream(mut self) -> ByteStream<S> {
        self.connection.set_stream_binary(true);
        ByteStream {
            ws: self,
            readable: Bytes::new(),
            failure: None,
        }
    }
}

/// Reads once from `io` into the spare capacity of `buf`, growing it first if little is left.
///
/// tokio's `read_buf` reads into uninitialized capacity (so nothing is zeroed first, which
/// matters for small messages) and reads a whole reserved frame at once when it has arrived. Its
/// future holds no state of its own: made afresh on every poll and dropped when pending, it
/// loses nothing.
fn poll_read_into<S: AsyncRead + Unpin>(
    io: &mut S,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < MIN_READ_ROOM {
        buf.reserve(READ_CHUNK);
    }
    pin!(io.read_buf(buf)).poll(cx)
}

/// A byte stream carried in binary messages: `AsyncRead` yields the payload bytes of every
/// binary message in order, and each `poll_write` sends its bytes as one binary message.
///
/// This is how MQTT runs over WebSockets: hand a `ByteStream` to code that speaks MQTT over a
/// plain stream. Pings are answered while reading. A text message is refused: the connection is
/// closed with 1003 and the read fails with `InvalidData`. A frame that breaks the protocol
/// fails the read the same way, after its Close frame (1002, 1007, 1009) has been sent: a reader
/// that stops at the error loses nothing. Shutting down sends a Close frame.
#[derive(Debug)]
pub struct ByteStream<S> {
    ws: WebSocketStream<S>,
    /// Received payload bytes not yet read.
    readable: Bytes,
    /// A read error held back until the Close frame it caused is written: most readers stop
    /// at the first error, and the Close would stay unsent.
    failure: Option<io::Error>,
}

impl<S> ByteStream<S> {
    /// The message-level stream underneath.
    pub fn get_ref(&self) -> &WebSocketStream<S> {
        &self.ws
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for ByteStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.failure.is_some() {
                // The Close goes out (and the transport is shut) first; whether the transport
                // takes it or not, the error is reported.
                let _ = ready!(this.ws.poll_finish(cx));
                if let Some(failure) = this.failure.take() {
                    return Poll::Ready(Err(failure));
                }
            }
            if !this.readable.is_empty() {
                let n = this.readable.len().min(buf.remaining());
                buf.put_slice(&this.readable[..n]);
                this.readable.advance(n);
                return Poll::Ready(Ok(()));
            }
            match ready!(this.ws.poll_recv(cx)) {
                None => return Poll::Ready(Ok(())),
                // A protocol error queued its Close frame.
                Some(Err(e)) if !this.ws.connection.pending_transmit().is_empty() => {
                    this.failure = Some(e);
                }
                Some(Err(e)) => return Poll::Ready(Err(e)),
                Some(Ok(Event::BinaryChunk { data, .. } | Event::Binary(data))) => {
                    this.readable = data;
                }
                Some(Ok(Event::Text(_))) => {
                    let _ = this.ws.connection.close(
                        Some(CloseCode::UNSUPPORTED_DATA),
                        "text messages are not accepted",
                    );
                    this.failure = Some(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "text message on a binary byte stream",
                    ));
                }
                Some(Ok(Event::Ping(_) | Event::Pong(_) | Event::Close(_))) => {}
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for ByteStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // Back-pressure: do not queue more while a whole message's worth is unsent.
        if this.ws.connection.pending_transmit().len() >= MAX_WRITE_MESSAGE {
            ready!(this.ws.poll_write_pending(cx))?;
        }
        let n = buf.len().min(MAX_WRITE_MESSAGE);
        match this.ws.connection.send_binary(&buf[..n]) {
            Ok(()) => {}
            Err(Error::SendAfterClose) => {
                return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
            }
            Err(e) => return Poll::Ready(Err(to_io(e))),
        }
        // Start sending now; what the transport does not take yet goes with the next call.
        if let Poll::Ready(Err(e)) = this.ws.poll_write_pending(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().ws.poll_flush_all(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Does nothing if the close handshake already began.
        this.ws
            .connection
            .close(Some(CloseCode::NORMAL), "")
            .map_err(to_io)?;
        ready!(this.ws.poll_flush_all(cx))?;
        Pin::new(&mut this.ws.io).poll_shutdown(cx)
    }
}

/// Accepts a WebSocket on a server-side transport, with no subprotocol: reads the request,
/// validates it, and answers 101 (or the matching [`Rejection`], then fails).
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    io: S,
    config: Config,
) -> io::Result<WebSocketStream<S>> {
    accept_with(io, config, |_| Ok(None))
        .await
        .map(|(ws, _)| ws)
}

/// Accepts a WebSocket after `policy` looked at the request: it returns the subprotocol to
/// select (one the client offered, or `None`) or a [`Rejection`] to answer with (e.g. 403 for
/// an Origin not allowed, 404 for an unknown path).
///
/// Returns the stream and the request, whose path, query and headers the caller may still need.
pub async fn accept_with<S, F>(
    mut io: S,
    config: Config,
    policy: F,
) -> io::Result<(WebSocketStream<S>, UpgradeRequest)>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnOnce(&UpgradeRequest) -> Result<Option<String>, Rejection>,
{
    let mut buf = BytesMut::with_capacity(1024);
    let (request, head_len) = loop {
        match UpgradeRequest::parse(&buf) {
            Ok(Some(parsed)) => break parsed,
            Ok(None) => {}
            Err(error) => {
                reject(&mut io, &Rejection::for_error(&error)).await;
                return Err(to_io(error));
            }
        }
        if io.read_buf(&mut buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    };
    let accept = match policy(&request) {
        Ok(subprotocol) => request.accept(subprotocol.as_deref()).map_err(to_io)?,
        Err(rejection) => {
            reject(&mut io, &rejection).await;
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("upgrade rejected with {}", rejection.status()),
            ));
        }
    };
    io.write_all(&accept.to_bytes()).await?;
    io.flush().await?;
    let mut connection = Connection::server(config);
    connection.handle_bytes(&buf[head_len..]);
    Ok((WebSocketStream::new(io, connection), request))
}

/// Sends a rejection and shuts the transport; errors do not matter, the connection is refused.
async fn reject<S: AsyncWrite + Unpin>(io: &mut S, rejection: &Rejection) {
    let _ = io.write_all(&rejection.to_bytes()).await;
    let _ = io.shutdown().await;
}

/// Opens a WebSocket on a client-side transport (already connected, TLS done), masking with the
/// operating system's randomness.
#[cfg(feature = "getrandom")]
pub async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
    io: S,
    request: &ClientRequest,
    config: Config,
) -> io::Result<(WebSocketStream<S>, UpgradeResponse)> {
    connect_with(io, request, Connection::client(config)).await
}

/// Opens a WebSocket on a client-side transport with a client `connection` of the caller's
/// making (e.g. with its own [`crate::RandomSource`]).
pub async fn connect_with<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    request: &ClientRequest,
    mut connection: Connection,
) -> io::Result<(WebSocketStream<S>, UpgradeResponse)> {
    if connection.role() != Role::Client {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "connect needs a client-side connection",
        ));
    }
    io.write_all(&request.to_bytes()).await?;
    io.flush().await?;
    let mut buf = BytesMut::with_capacity(1024);
    let (response, head_len) = loop {
        if let Some(parsed) = request.parse_response(&buf).map_err(to_io)? {
            break parsed;
        }
        if io.read_buf(&mut buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    };
    connection.handle_bytes(&buf[head_len..]);
    Ok((WebSocketStream::new(io, connection), response))
}

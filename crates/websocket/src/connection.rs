//! The sans-IO connection: bytes in, events and bytes out, after the opening handshake.

use bytes::{Buf, Bytes, BytesMut};
use bytestring::ByteString;

use crate::Error;
use crate::close::{CloseCode, CloseFrame};
use crate::frame::{FrameHeader, MAX_CONTROL_PAYLOAD, OpCode, encode_frame};
use crate::mask::apply_mask_at;
use crate::random::RandomSource;
use crate::utf8::Utf8Validator;

/// Which end of the connection this is: it decides who masks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Accepted the connection: receives masked frames, sends unmasked ones.
    Server,
    /// Opened the connection: sends masked frames, receives unmasked ones.
    Client,
}

/// Limits and modes of a [`Connection`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    max_frame_len: usize,
    max_message_len: usize,
    stream_binary: bool,
}

impl Default for Config {
    /// 16 MiB frames, 64 MiB messages, binary messages delivered whole.
    fn default() -> Self {
        Self {
            max_frame_len: 16 << 20,
            max_message_len: 64 << 20,
            stream_binary: false,
        }
    }
}

impl Config {
    /// The largest frame payload accepted; a larger one fails the connection with 1009.
    pub fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }

    /// The largest text or binary message accepted; a larger one fails the connection with
    /// 1009. It does not apply to binary messages when [`Config::stream_binary`] is on.
    pub fn max_message_len(&self) -> usize {
        self.max_message_len
    }

    /// Whether binary messages are delivered as [`Event::BinaryChunk`]s as bytes arrive.
    pub fn stream_binary(&self) -> bool {
        self.stream_binary
    }

    /// Sets [`Config::max_frame_len`].
    pub fn with_max_frame_len(mut self, len: usize) -> Self {
        self.max_frame_len = len;
        self
    }

    /// Sets [`Config::max_message_len`].
    pub fn with_max_message_len(mut self, len: usize) -> Self {
        self.max_message_len = len;
        self
    }

    /// Sets [`Config::stream_binary`]: binary payloads are handed out in pieces as they arrive,
    /// for protocols like MQTT that treat binary messages as one byte stream.
    pub fn with_stream_binary(mut self, on: bool) -> Self {
        self.stream_binary = on;
        self
    }
}

/// What the peer sent, as decoded by [`Connection::poll_event`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A whole text message, validated as UTF-8.
    Text(ByteString),
    /// A whole binary message. A single-frame message shares the receive buffer's memory.
    Binary(Bytes),
    /// A piece of a binary message, in [`Config::stream_binary`] mode. Every message ends with
    /// exactly one piece whose `last` is true (which may be empty).
    BinaryChunk {
        /// The unmasked bytes.
        data: Bytes,
        /// This piece ends its message.
        last: bool,
    },
    /// A ping; the pong with the same payload is already queued.
    Ping(Bytes),
    /// A pong.
    Pong(Bytes),
    /// The peer's Close frame (`None` if it carried no status). The reply, if one was due, is
    /// already queued: drain it, then close the transport.
    Close(Option<CloseFrame>),
}

/// Where the close handshake stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Messages flow both ways.
    Open,
    /// We sent a Close frame and wait for the peer's; received messages are still delivered.
    Closing,
    /// The close handshake is done, or the connection failed: nothing more is read or sent
    /// beyond what is already queued. Drain the transmit buffer, then close the transport
    /// (a server closes it first, RFC 6455 §7.1.1).
    Closed,
}

/// The frame whose payload is being received.
#[derive(Debug, Clone, Copy)]
struct IncomingFrame {
    header: FrameHeader,
    /// Payload bytes not yet taken from the receive buffer.
    remaining: u64,
    /// Payload bytes already taken, for unmasking the rest at the right key offset.
    offset: usize,
}

/// A fragmented (or partly received) text or binary message.
#[derive(Debug, Default)]
struct IncomingMessage {
    text: bool,
    /// A binary message handed out in pieces ([`Config::stream_binary`] when it began).
    streamed: bool,
    /// The message so far; unused for a streamed binary message.
    data: BytesMut,
    /// Bytes of the message so far, streamed or not.
    len: u64,
    utf8: Utf8Validator,
}

/// A WebSocket connection after the opening handshake, with no IO.
///
/// Inputs are [`handle_bytes`](Self::handle_bytes) (or reading straight into
/// [`receive_buffer`](Self::receive_buffer)) and the `send_*` commands; outputs are
/// [`poll_event`](Self::poll_event) and the transmit buffer
/// ([`poll_transmit`](Self::poll_transmit), or [`pending_transmit`](Self::pending_transmit) with
/// [`advance_transmit`](Self::advance_transmit)). After every input, drain the outputs: call
/// `poll_event` until it returns `Ok(None)`, then write out the transmit buffer.
///
/// The connection answers pings and Close frames by itself. When the peer breaks the protocol,
/// `poll_event` returns the error once, a Close frame with [`Error::close_code`] is queued, and
/// the connection is [`State::Closed`].
///
/// ```
/// use rallymq_websocket::{Config, Connection, Event};
///
/// let mut client = Connection::client_with_random(
///     Config::default(),
///     rallymq_websocket::RandomSource::from_fn(|buf| Ok(buf.fill(7))),
/// );
/// let mut server = Connection::server(Config::default());
/// client.send_text("hi").unwrap();
/// server.handle_bytes(&client.poll_transmit().unwrap());
/// assert_eq!(server.poll_event(), Ok(Some(Event::Text("hi".into()))));
/// assert_eq!(server.poll_event(), Ok(None));
/// ```
#[derive(Debug)]
pub struct Connection {
    role: Role,
    config: Config,
    random: Option<RandomSource>,
    rx: BytesMut,
    tx: BytesMut,
    frame: Option<IncomingFrame>,
    message: Option<IncomingMessage>,
    /// A message we are sending in fragments is unfinished.
    sending_fragments: bool,
    state: State,
}

impl Connection {
    /// A server-side connection.
    pub fn server(config: Config) -> Self {
        Self::new(Role::Server, config, None)
    }

    /// A client-side connection masking with the operating system's randomness.
    #[cfg(feature = "getrandom")]
    pub fn client(config: Config) -> Self {
        Self::new(Role::Client, config, Some(RandomSource::os()))
    }

    /// A client-side connection masking with keys drawn from `random`.
    pub fn client_with_random(config: Config, random: RandomSource) -> Self {
        Self::new(Role::Client, config, Some(random))
    }

    fn new(role: Role, config: Config, random: Option<RandomSource>) -> Self {
        Self {
            role,
            config,
            random,
            rx: BytesMut::new(),
            tx: BytesMut::new(),
            frame: None,
            message: None,
            sending_fragments: false,
            state: State::Open,
        }
    }

    /// This end's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Where the close handshake stands.
    pub fn state(&self) -> State {
        self.state
    }

    /// Turns [`Config::stream_binary`] on or off; it takes effect from the next message.
    pub fn set_stream_binary(&mut self, on: bool) {
        self.config.stream_binary = on;
    }

    // ---- input ----

    /// Appends bytes received from the transport.
    ///
    /// Bytes arriving after the connection is [`State::Closed`] are discarded.
    pub fn handle_bytes(&mut self, bytes: &[u8]) {
        if self.state != State::Closed {
            self.rx.extend_from_slice(bytes);
        }
    }

    /// The receive buffer, to read from the transport straight into it (e.g. with tokio's
    /// `read_buf`), which saves the copy `handle_bytes` makes. Only append to it.
    pub fn receive_buffer(&mut self) -> &mut BytesMut {
        &mut self.rx
    }

    /// Decodes the next event from the bytes received so far.
    ///
    /// `Ok(None)` means more bytes are needed (or the connection is closed). Errors are the
    /// peer's ([`crate::Fault::PeerFrame`]); the Close frame that answers one is already queued
    /// and the connection is [`State::Closed`].
    pub fn poll_event(&mut self) -> Result<Option<Event>, Error> {
        if self.state == State::Closed {
            return Ok(None);
        }
        match self.decode_event() {
            Ok(event) => Ok(event),
            Err(error) => {
                self.fail(&error);
                Err(error)
            }
        }
    }

    fn decode_event(&mut self) -> Result<Option<Event>, Error> {
        loop {
            let frame = match self.frame {
                Some(frame) => frame,
                None => {
                    let Some((header, header_len)) = FrameHeader::parse(&self.rx)? else {
                        return Ok(None);
                    };
                    self.check_sequence(&header)?;
                    self.rx.advance(header_len);
                    let frame = IncomingFrame {
                        header,
                        remaining: header.payload_len,
                        offset: 0,
                    };
                    self.frame = Some(frame);
                    frame
                }
            };
            let event = match frame.header.opcode {
                OpCode::Close | OpCode::Ping | OpCode::Pong => self.take_control(frame)?,
                OpCode::Text => self.take_text(frame)?,
                OpCode::Binary => self.take_binary(frame)?,
                OpCode::Continuation => match self.message.as_ref().map(|m| m.text) {
                    Some(true) => self.take_text(frame)?,
                    _ => self.take_binary(frame)?,
                },
            };
            match event {
                Progress::Event(event) => return Ok(Some(event)),
                Progress::NeedMore => return Ok(None),
                Progress::Continue => {}
            }
        }
    }

    /// Checks a new frame's header against the role, the limits and the message in progress.
    fn check_sequence(&mut self, header: &FrameHeader) -> Result<(), Error> {
        header.check(self.role, self.config.max_frame_len)?;
        match (header.opcode, &self.message) {
            (OpCode::Continuation, None) => Err(Error::UnexpectedContinuation),
            (OpCode::Text | OpCode::Binary, Some(_)) => Err(Error::ExpectedContinuation),
            (OpCode::Continuation, Some(message)) => {
                let len = message.len + header.payload_len;
                if !message.streamed && len > self.config.max_message_len as u64 {
                    return Err(Error::MessageTooLarge {
                        len,
                        limit: self.config.max_message_len,
                    });
                }
                Ok(())
            }
            (OpCode::Text | OpCode::Binary, None) => {
                let streamed = header.opcode == OpCode::Binary && self.config.stream_binary;
                if !streamed && header.payload_len > self.config.max_message_len as u64 {
                    return Err(Error::MessageTooLarge {
                        len: header.payload_len,
                        limit: self.config.max_message_len,
                    });
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Takes the whole payload of the current frame if it has arrived, unmasked.
    fn take_whole_payload(&mut self, frame: IncomingFrame) -> Option<BytesMut> {
        // `check` bounded the remaining length by a `usize` limit.
        let remaining = frame.remaining as usize;
        if self.rx.len() < remaining {
            // Room for the rest of the frame, so that one read can complete it.
            self.rx.reserve(remaining - self.rx.len());
            return None;
        }
        let mut payload = self.rx.split_to(remaining);
        if let Some(key) = frame.header.mask {
            apply_mask_at(&mut payload, key, frame.offset);
        }
        self.frame = None;
        Some(payload)
    }

    /// Takes whatever part of the current frame's payload has arrived, unmasked.
    fn take_partial_payload(&mut self, frame: &mut IncomingFrame) -> BytesMut {
        let available = (self.rx.len() as u64).min(frame.remaining) as usize;
        let mut piece = self.rx.split_to(available);
        if let Some(key) = frame.header.mask {
            apply_mask_at(&mut piece, key, frame.offset);
        }
        frame.offset += available;
        frame.remaining -= available as u64;
        self.frame = (frame.remaining > 0).then_some(*frame);
        piece
    }

    fn take_control(&mut self, frame: IncomingFrame) -> Result<Progress, Error> {
        let Some(payload) = self.take_whole_payload(frame) else {
            return Ok(Progress::NeedMore);
        };
        let payload = payload.freeze();
        match frame.header.opcode {
            OpCode::Ping => {
                if self.state == State::Open {
                    self.queue_frame(true, OpCode::Pong, &payload)?;
                }
                Ok(Progress::Event(Event::Ping(payload)))
            }
            OpCode::Pong => Ok(Progress::Event(Event::Pong(payload))),
            _ => {
                let close = CloseFrame::parse(payload)?;
                if self.state == State::Open {
                    let mut reply = BytesMut::new();
                    if let Some(close) = &close {
                        reply.extend_from_slice(&close.code.0.to_be_bytes());
                    }
                    self.queue_frame(true, OpCode::Close, &reply)?;
                }
                self.enter_closed();
                Ok(Progress::Event(Event::Close(close)))
            }
        }
    }

    fn take_text(&mut self, mut frame: IncomingFrame) -> Result<Progress, Error> {
        let single_frame = frame.header.fin && frame.header.opcode == OpCode::Text;
        let untouched = frame.offset == 0 && self.message.is_none();
        if single_frame && untouched && self.rx.len() as u64 >= frame.remaining {
            // The whole message is here: validate it in place and hand it out without a copy.
            let Some(payload) = self.take_whole_payload(frame) else {
                return Ok(Progress::NeedMore);
            };
            let text = ByteString::try_from(payload.freeze()).map_err(|_| Error::InvalidUtf8)?;
            return Ok(Progress::Event(Event::Text(text)));
        }
        let piece = self.take_partial_payload(&mut frame);
        let message = self.message.get_or_insert_with(|| IncomingMessage {
            text: true,
            ..IncomingMessage::default()
        });
        message.utf8.feed(&piece).map_err(|_| Error::InvalidUtf8)?;
        message.len += piece.len() as u64;
        message.data.unsplit(piece);
        if frame.remaining > 0 {
            return Ok(Progress::NeedMore);
        }
        if !frame.header.fin {
            return Ok(Progress::Continue);
        }
        let message = self.message.take().expect("the message was inserted above");
        message.utf8.finish().map_err(|_| Error::InvalidUtf8)?;
        let text = ByteString::try_from(message.data.freeze()).map_err(|_| Error::InvalidUtf8)?;
        Ok(Progress::Event(Event::Text(text)))
    }

    fn take_binary(&mut self, mut frame: IncomingFrame) -> Result<Progress, Error> {
        let streamed = match &self.message {
            Some(message) => message.streamed,
            None => self.config.stream_binary,
        };
        if streamed {
            if frame.remaining > 0 && self.rx.is_empty() {
                return Ok(Progress::NeedMore);
            }
            let piece = self.take_partial_payload(&mut frame);
            let message = self.message.get_or_insert_with(|| IncomingMessage {
                streamed: true,
                ..IncomingMessage::default()
            });
            message.len += piece.len() as u64;
            let last = frame.remaining == 0 && frame.header.fin;
            if last {
                self.message = None;
            } else if piece.is_empty() {
                // An empty non-final frame: nothing to report.
                return Ok(Progress::Continue);
            }
            return Ok(Progress::Event(Event::BinaryChunk {
                data: piece.freeze(),
                last,
            }));
        }
        let Some(payload) = self.take_whole_payload(frame) else {
            return Ok(Progress::NeedMore);
        };
        match (frame.header.fin, self.message.take()) {
            (true, None) => Ok(Progress::Event(Event::Binary(payload.freeze()))),
            (true, Some(mut message)) => {
                message.data.unsplit(payload);
                Ok(Progress::Event(Event::Binary(message.data.freeze())))
            }
            (false, message) => {
                let mut message = message.unwrap_or_default();
                message.len += payload.len() as u64;
                message.data.unsplit(payload);
                self.message = Some(message);
                Ok(Progress::Continue)
            }
        }
    }

    /// Fails the connection after a protocol error from the peer.
    fn fail(&mut self, error: &Error) {
        if let (Some(code), State::Open) = (error.close_code(), self.state) {
            let mut payload = BytesMut::with_capacity(MAX_CONTROL_PAYLOAD);
            payload.extend_from_slice(&code.0.to_be_bytes());
            let reason = error.to_string();
            let mut cut = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            payload.extend_from_slice(&reason.as_bytes()[..cut]);
            // A failing randomness source leaves the close unsent; the transport closes anyway.
            let _ = self.queue_frame(true, OpCode::Close, &payload);
        }
        self.enter_closed();
    }

    fn enter_closed(&mut self) {
        self.state = State::Closed;
        self.rx = BytesMut::new();
        self.frame = None;
        self.message = None;
    }

    // ---- commands ----

    /// Queues a text message in one frame.
    pub fn send_text(&mut self, text: &str) -> Result<(), Error> {
        self.send_frame(true, OpCode::Text, text.as_bytes())
    }

    /// Queues a binary message in one frame.
    pub fn send_binary(&mut self, data: &[u8]) -> Result<(), Error> {
        self.send_frame(true, OpCode::Binary, data)
    }

    /// Queues a ping (at most 125 bytes).
    pub fn send_ping(&mut self, data: &[u8]) -> Result<(), Error> {
        self.send_frame(true, OpCode::Ping, data)
    }

    /// Queues an unsolicited pong (at most 125 bytes), e.g. as a heartbeat.
    pub fn send_pong(&mut self, data: &[u8]) -> Result<(), Error> {
        self.send_frame(true, OpCode::Pong, data)
    }

    /// Begins the close handshake: queues a Close frame, after which no message can be sent.
    ///
    /// `code` `None` sends an empty Close frame (then `reason` must be empty). Calling it again,
    /// or after the peer's Close arrived, does nothing.
    pub fn close(&mut self, code: Option<CloseCode>, reason: &str) -> Result<(), Error> {
        let mut payload = BytesMut::new();
        CloseFrame::encode_payload(code, reason, &mut payload)?;
        if self.state != State::Open {
            return Ok(());
        }
        self.queue_frame(true, OpCode::Close, &payload)?;
        self.state = State::Closing;
        Ok(())
    }

    /// Queues one frame, for sending a message in fragments: a `Text` or `Binary` frame with
    /// `fin` false, then `Continuation` frames, the last with `fin` true. Control frames may be
    /// sent between fragments; use [`close`](Self::close) for a Close frame.
    pub fn send_frame(&mut self, fin: bool, opcode: OpCode, payload: &[u8]) -> Result<(), Error> {
        if self.state != State::Open {
            return Err(Error::SendAfterClose);
        }
        match opcode {
            OpCode::Close => return Err(Error::FrameOrder("use close() to send a Close frame")),
            OpCode::Ping | OpCode::Pong => {
                if payload.len() > MAX_CONTROL_PAYLOAD {
                    return Err(Error::ControlPayloadTooLong(payload.len()));
                }
                if !fin {
                    return Err(Error::FrameOrder("a control frame cannot be fragmented"));
                }
            }
            OpCode::Text | OpCode::Binary if self.sending_fragments => {
                return Err(Error::FrameOrder("the previous message is unfinished"));
            }
            OpCode::Continuation if !self.sending_fragments => {
                return Err(Error::FrameOrder("no fragmented message to continue"));
            }
            OpCode::Text | OpCode::Binary | OpCode::Continuation => self.sending_fragments = !fin,
        }
        self.queue_frame(fin, opcode, payload)
    }

    fn queue_frame(&mut self, fin: bool, opcode: OpCode, payload: &[u8]) -> Result<(), Error> {
        let mask = match (&mut self.random, self.role) {
            (Some(random), Role::Client) => Some(random.mask_key()?),
            _ => None,
        };
        encode_frame(fin, opcode, mask, payload, &mut self.tx);
        Ok(())
    }

    // ---- output ----

    /// Takes all bytes queued for the transport, if any.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        (!self.tx.is_empty()).then(|| self.tx.split().freeze())
    }

    /// The bytes queued for the transport, to write without taking them out.
    pub fn pending_transmit(&self) -> &[u8] {
        &self.tx
    }

    /// Marks the first `n` bytes of [`pending_transmit`](Self::pending_transmit) as written.
    pub fn advance_transmit(&mut self, n: usize) {
        self.tx.advance(n.min(self.tx.len()));
    }
}

/// What decoding the current frame led to.
enum Progress {
    Event(Event),
    NeedMore,
    /// A frame was consumed without an event (a non-final fragment): go on with the next.
    Continue,
}

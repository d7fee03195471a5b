//! The frame-decoding fuzz check shared by `ws_frame_client` and `ws_frame_server`: arbitrary
//! bytes received by a `Connection` of the given role (and the stateless `FrameDecoder`), fed in
//! chunks of arbitrary sizes. Nothing panics, and the chunked run gives the same events, the
//! same error and the same bytes to send as the input fed whole.
//!
//! `arbitrary` chooses, from the front of the input, the limits, the binary streaming mode and
//! the chunk sizes; the rest is the byte stream, raw. Also checked: after a protocol error the
//! connection is closed, and its last frame sent is a Close with the error's code; everything
//! it sends decodes as valid frames in the other role; every frame the `FrameDecoder` accepts
//! re-encodes to a frame that decodes to itself.

use arbitrary::Unstructured;
use bytes::BytesMut;
use rallymq_websocket::{
    Config, Connection, Error, Event, FrameDecoder, OpCode, RandomSource, Role, State,
};

#[derive(Debug)]
struct Setup {
    config: Config,
    /// Sizes of the chunks (1..=256 bytes each); what is left after them comes as one chunk.
    chunks: Vec<u16>,
}

impl Setup {
    fn read(u: &mut Unstructured<'_>) -> arbitrary::Result<Self> {
        let max_frame_len = [16, 125, 1024, 1 << 20][usize::from(u.arbitrary::<u8>()? % 4)];
        let max_message_len = [32, 300, 4096, 1 << 20][usize::from(u.arbitrary::<u8>()? % 4)];
        let config = Config::default()
            .with_max_frame_len(max_frame_len)
            .with_max_message_len(max_message_len)
            .with_stream_binary(u.arbitrary()?);
        let count = u.int_in_range(0..=16)?;
        let chunks = (0..count)
            .map(|_| Ok(u16::from(u.arbitrary::<u8>()?) + 1))
            .collect::<arbitrary::Result<_>>()?;
        Ok(Self { config, chunks })
    }
}

/// Everything a run produced.
#[derive(Debug, PartialEq)]
struct Run {
    /// Events, with the `BinaryChunk`s of one message merged into one.
    events: Vec<Event>,
    /// A streamed binary message still unfinished at the end: its bytes so far.
    unfinished_binary: Vec<u8>,
    error: Option<Error>,
    sent: Vec<u8>,
    state: State,
}

fn connection(role: Role, config: Config) -> Connection {
    match role {
        Role::Server => Connection::server(config),
        // The same masking keys in every run, so that runs can be compared byte for byte.
        Role::Client => {
            let mut counter = 0u8;
            Connection::client_with_random(
                config,
                RandomSource::from_fn(move |buf| {
                    for b in buf.iter_mut() {
                        counter = counter.wrapping_mul(13).wrapping_add(101);
                        *b = counter;
                    }
                    Ok(())
                }),
            )
        }
    }
}

fn run<'a>(role: Role, config: &Config, chunks: impl IntoIterator<Item = &'a [u8]>) -> Run {
    let mut ws = connection(role, config.clone());
    let mut run = Run {
        events: Vec::new(),
        unfinished_binary: Vec::new(),
        error: None,
        sent: Vec::new(),
        state: State::Open,
    };
    for chunk in chunks {
        ws.handle_bytes(chunk);
        loop {
            match ws.poll_event() {
                Ok(Some(Event::BinaryChunk { data, last })) => {
                    run.unfinished_binary.extend_from_slice(&data);
                    if last {
                        let data = std::mem::take(&mut run.unfinished_binary);
                        run.events.push(Event::BinaryChunk {
                            data: data.into(),
                            last,
                        });
                    }
                }
                Ok(Some(event)) => {
                    if let Event::Ping(payload) = &event {
                        assert!(payload.len() <= 125);
                    }
                    run.events.push(event);
                }
                Ok(None) => break,
                Err(error) => {
                    assert!(run.error.is_none(), "a second error: {error}");
                    assert!(error.close_code().is_some(), "not a peer error: {error}");
                    assert_eq!(ws.state(), State::Closed);
                    run.error = Some(error);
                }
            }
        }
        if let Some(bytes) = ws.poll_transmit() {
            run.sent.extend_from_slice(&bytes);
        }
    }
    run.state = ws.state();
    // Once closed, nothing more comes out.
    if run.state == State::Closed {
        ws.handle_bytes(&[0x81, 0x00]);
        assert_eq!(ws.poll_event(), Ok(None));
        assert_eq!(ws.poll_transmit(), None);
    }
    run
}

/// What was sent decodes, in the other role, as valid frames; after an error the last is the
/// Close with the error's code.
fn check_sent(role: Role, run: &Run) {
    let peer = match role {
        Role::Server => Role::Client,
        Role::Client => Role::Server,
    };
    let mut sent = BytesMut::from(&run.sent[..]);
    let mut decoder = FrameDecoder::new(peer, usize::MAX);
    let mut frames = Vec::new();
    while let Some(frame) = decoder.decode(&mut sent).expect("we sent an invalid frame") {
        frames.push(frame);
    }
    assert!(sent.is_empty(), "a partial frame was sent");
    let closes = frames.iter().filter(|f| f.opcode == OpCode::Close).count();
    assert!(closes <= 1, "more than one Close sent");
    if let Some(error) = &run.error {
        let last = frames.last().expect("a Close after the error");
        assert_eq!(last.opcode, OpCode::Close);
        // An error can only happen while open: this Close is the only one.
        let code = error.close_code().unwrap().0.to_be_bytes();
        assert_eq!(last.payload[..2], code);
        assert!(std::str::from_utf8(&last.payload[2..]).is_ok());
    }
    for frame in &frames {
        match frame.opcode {
            OpCode::Pong => assert!(run.events.contains(&Event::Ping(frame.payload.clone()))),
            OpCode::Text | OpCode::Binary | OpCode::Continuation | OpCode::Ping => {
                panic!("the connection sent a {:?} of its own", frame.opcode)
            }
            OpCode::Close => {}
        }
    }
}

/// The stateless decoder over the same bytes: each accepted frame re-encodes to one that
/// decodes to itself, and a frame it refuses stopped the connection too (which checks more:
/// message rules), unless the connection had already stopped at a Close.
fn check_frame_decoder(role: Role, config: &Config, data: &[u8], whole: &Run) {
    let mut input = BytesMut::from(data);
    let mut decoder = FrameDecoder::new(role, config.max_frame_len());
    loop {
        match decoder.decode(&mut input) {
            Ok(Some(frame)) => {
                let mask = (role == Role::Server).then_some([1, 2, 3, 4]);
                let mut encoded = BytesMut::new();
                frame.encode(mask, &mut encoded);
                let again = decoder.decode(&mut encoded).unwrap().unwrap();
                assert_eq!(again, frame);
                assert!(encoded.is_empty());
            }
            Ok(None) => break,
            Err(error) => {
                let closed = whole.events.iter().any(|e| matches!(e, Event::Close(_)));
                assert!(
                    whole.error.is_some() || closed,
                    "the frame decoder refused ({error}) what the connection accepted"
                );
                break;
            }
        }
    }
}

/// Feeds `data` to a connection of `role`, whole and in chunks, and checks the runs agree.
pub fn check(role: Role, data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(setup) = Setup::read(&mut u) else {
        return;
    };
    let stream = u.take_rest();
    let whole = run(role, &setup.config, [stream]);
    check_sent(role, &whole);

    let mut pieces = Vec::new();
    let mut rest = stream;
    for &size in &setup.chunks {
        let (piece, tail) = rest.split_at(usize::from(size).min(rest.len()));
        pieces.push(piece);
        rest = tail;
    }
    pieces.push(rest);
    let chunked = run(role, &setup.config, pieces);
    assert_eq!(chunked, whole);

    check_frame_decoder(role, &setup.config, stream, &whole);
}

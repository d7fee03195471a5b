//! Hostile input (issue 14): a table of cases sent to a running broker, each on its own
//! connection, each with the reaction the specs require: malformed MQTT packets of every kind and
//! protocol violations over TCP and over WebSockets, slow and oversized packets, invalid
//! WebSocket frames and handshakes, and abuse of the HTTP side (path traversal, encoded
//! slashes, methods other than GET and HEAD, malformed heads). Case names carry the normative
//! statement they check where there is one: MQTT 5.0 ids (`mqtt_..`), MQTT 3.1.1 ids
//! (`v311_mqtt_..`), RFC 6455 sections (`rfc6455_..`), RFC 9110 and 9112 sections.
//!
//! Each section runs against one broker, with two bystanders (one over TCP, one over
//! WebSockets) publishing to themselves throughout: every one of their messages must arrive,
//! and once the attackers are done, new clients must still be served. A last test counts the
//! bytes the broker (in-process) has allocated and not freed before and after a whole run of
//! the attackers: they must return to their baseline.
//!
//! What the broker sends back is written as a list of readable entries, compared whole:
//! `CONNACK 0x00`, `DISCONNECT 0x81`, `PUBREC 0x10 x8` (eight in a row), `ws close 1002`,
//! `HTTP 405`, `allow: GET, HEAD`, and last `closed` (the broker closed the connection) or
//! `open` (it was still open when the case ended).

// The counting allocator below needs `unsafe impl GlobalAlloc`; nothing else here is unsafe.
#![allow(unsafe_code)]

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::SocketAddr;
use std::num::{NonZeroU16, NonZeroU32};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures::StreamExt;
use rallymq_broker::{BrokerHandle, ListenerKind};
use rallymq_codec::{
    Ack, Connect, Decoder, Disconnect, Limits, Packet, PacketId, ProtocolVersion, Publish, QoS,
    ReasonCode, Subscribe, TopicFilter, TopicName, Unsubscribe, Will,
};
use rallymq_websocket::tokio::connect as ws_connect;
use rallymq_websocket::{ClientRequest, Config, Connection, Event, RandomSource};
use support::{TestClient, connect_packet, message, payload_str, start_broker, subscription};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// ---------------------------------------------------------------------------------------------
// The counting allocator.

/// Bytes allocated and not yet freed by the whole test binary (the broker runs in-process).
static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

/// The system allocator, counting what is allocated and not freed in `LIVE_BYTES`.
struct CountingAllocator;

// SAFETY: every method hands its arguments unchanged to the system allocator and returns what
// it returns; the counting only touches an atomic, and counts a block only once it exists.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as the caller promised for `layout`.
        let block = unsafe { System.alloc(layout) };
        if !block.is_null() {
            LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        block
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as the caller promised for `layout`.
        let block = unsafe { System.alloc_zeroed(layout) };
        if !block.is_null() {
            LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        block
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        // SAFETY: `block` came from this allocator (so from `System`) with `layout`.
        unsafe { System.dealloc(block, layout) };
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `block` came from this allocator (so from `System`) with `layout`.
        let moved = unsafe { System.realloc(block, layout, new_size) };
        if !moved.is_null() {
            LIVE_BYTES.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        moved
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

fn live_bytes() -> isize {
    LIVE_BYTES.load(Ordering::Relaxed)
}

// ---------------------------------------------------------------------------------------------
// The broker under attack.

const V311: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;

/// The broker's CONNECT, packet and send timeouts: short, so that the slow cases end quickly.
const TIMEOUT: Duration = Duration::from_secs(1);
/// The broker's Maximum Packet Size.
const MAX_PACKET: u32 = 64 * 1024;
/// The broker's Receive Maximum.
const RECEIVE_MAXIMUM: u16 = 8;
/// The broker's Topic Alias Maximum.
const TOPIC_ALIAS_MAXIMUM: u16 = 16;
/// How long a case may take in all before it is cut short.
const CASE_DEADLINE: Duration = Duration::from_secs(6);
/// How long a connection expected to stay open must stay quiet, once everything is sent, for
/// the case to end.
const SETTLE: Duration = Duration::from_millis(400);
/// Cases run at once.
const CONCURRENCY: usize = 24;
/// How long a connected case waits for its CONNACK before it goes on.
const CONNACK_WAIT: Duration = Duration::from_millis(100);
/// The pause between the bytes of a trickled packet.
const TRICKLE: Duration = Duration::from_millis(150);

async fn hostile_broker() -> BrokerHandle {
    start_broker(|config| {
        config.limits.connect_timeout = TIMEOUT;
        config.limits.packet_timeout = TIMEOUT;
        config.limits.send_timeout = TIMEOUT;
        config.limits.max_packet_size = MAX_PACKET;
        config.limits.receive_maximum = RECEIVE_MAXIMUM;
        config.limits.topic_alias_maximum = TOPIC_ALIAS_MAXIMUM;
    })
    .await
}

#[derive(Clone, Copy)]
struct Addrs {
    tcp: SocketAddr,
    ws: SocketAddr,
}

impl Addrs {
    fn of(broker: &BrokerHandle) -> Self {
        Self {
            tcp: broker
                .local_addr(ListenerKind::Tcp)
                .expect("a TCP listener"),
            ws: broker
                .local_addr(ListenerKind::WebSocket)
                .expect("a WebSocket listener"),
        }
    }
}

/// The sections run one at a time, so that the memory test counts only its own broker.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------------------------------------
// Cases.

/// How a case reaches the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    /// MQTT over TCP.
    Tcp,
    /// MQTT over WebSockets: a valid upgrade of `/mqtt` first; `Send` steps go in masked
    /// binary frames, `Raw` steps as they are.
    Ws,
    /// HTTP on the WebSocket port: `Raw` steps as they are.
    Http,
}

/// What a case sends, in order.
#[derive(Debug, Clone)]
enum Step {
    /// A CONNECT, under a client id unique to the case and transport (the one it has is
    /// replaced): cases run at once must not take each other's sessions over.
    Connect(Box<Connect>),
    /// MQTT bytes at once (over WebSockets, in one binary frame).
    Send(Vec<u8>),
    /// MQTT bytes one at a time, `TRICKLE` apart (over WebSockets, a frame each).
    Trickle(Vec<u8>),
    /// Bytes written to the socket as they are (HTTP, or WebSocket frames of the case's making).
    Raw(Vec<u8>),
    Pause(Duration),
}

#[derive(Debug, Clone)]
struct Case {
    name: String,
    /// The MQTT version the broker's packets are read with.
    version: ProtocolVersion,
    steps: Vec<Step>,
    /// Each transport the case runs over, with the reaction expected there.
    runs: Vec<(Transport, Vec<String>)>,
    /// HTTP response headers to report (lower case), for HTTP cases.
    headers: &'static [&'static str],
    /// Whether the reaction ends with `closed` or `open`: always for MQTT, where closing is
    /// part of the reaction; for HTTP only where a spec says the connection must close.
    watch_close: bool,
}

fn list(entries: &[&str]) -> Vec<String> {
    entries.iter().map(|entry| (*entry).to_owned()).collect()
}

/// The reaction to an MQTT case over WebSockets: as over TCP, and when the broker closes the
/// MQTT connection it ends the WebSocket with a Close frame first (RFC 6455 §7.1.2; 1000, as
/// the MQTT connection ended as MQTT says, with its reason code in a DISCONNECT where there is
/// one).
fn over_websocket(expected: &[String]) -> Vec<String> {
    let mut ws = expected.to_vec();
    if ws.last().map(String::as_str) == Some("closed") {
        ws.insert(ws.len() - 1, "ws close 1000".to_owned());
    }
    ws
}

/// An MQTT case run over TCP and over WebSockets.
fn mqtt(name: &str, version: ProtocolVersion, steps: Vec<Step>, expected: &[&str]) -> Case {
    let expected = list(expected);
    Case {
        name: name.to_owned(),
        version,
        steps,
        runs: vec![
            (Transport::Tcp, expected.clone()),
            (Transport::Ws, over_websocket(&expected)),
        ],
        headers: &[],
        watch_close: true,
    }
}

/// An MQTT case whose client first connects properly (CONNACK 0x00 expected first), and waits
/// for the CONNACK: what follows comes from a connected client. (Sent at once, an AUTH behind
/// the CONNECT would be read while the broker decides on the CONNECT, before any CONNACK.)
fn connected(name: &str, version: ProtocolVersion, steps: Vec<Step>, expected: &[&str]) -> Case {
    let mut all = vec![
        Step::Connect(Box::new(connect_packet(version, "c"))),
        Step::Pause(CONNACK_WAIT),
    ];
    all.extend(steps);
    let mut with_connack = vec!["CONNACK 0x00"];
    with_connack.extend_from_slice(expected);
    mqtt(name, version, all, &with_connack)
}

/// A protocol violation by a connected client, in MQTT 3.1.1 and in MQTT 5: a 3.1.1 broker
/// closes the connection (MQTT-4.8.0-1); an MQTT 5 broker sends DISCONNECT with the reason code
/// first (MQTT 5 §4.13.1: "the Server MUST ... send a DISCONNECT packet containing the reason
/// code" where one is given before closing, MQTT-4.13.1-1).
fn violation(
    cases: &mut Vec<Case>,
    name_v311: &str,
    name_v5: &str,
    packet: impl Fn(ProtocolVersion) -> Vec<u8>,
    v5_code: u8,
) {
    cases.push(connected(
        name_v311,
        V311,
        vec![Step::Send(packet(V311))],
        &["closed"],
    ));
    let disconnect = format!("DISCONNECT 0x{v5_code:02x}");
    cases.push(connected(
        name_v5,
        V5,
        vec![Step::Send(packet(V5))],
        &[&disconnect, "closed"],
    ));
}

/// A case of WebSocket frames, after a valid upgrade (and a valid CONNECT first if
/// `connect`).
fn ws_frames(name: &str, connect: bool, frames: Vec<Step>, expected: &[&str]) -> Case {
    let mut steps = Vec::new();
    let mut all = Vec::new();
    if connect {
        steps.push(Step::Connect(Box::new(connect_packet(V311, "c"))));
        all.push("CONNACK 0x00");
    }
    steps.extend(frames);
    all.extend_from_slice(expected);
    Case {
        name: name.to_owned(),
        version: V311,
        steps,
        runs: vec![(Transport::Ws, list(&all))],
        headers: &[],
        watch_close: true,
    }
}

/// An HTTP request (bytes as they are) to the WebSocket port.
fn http(name: &str, request: impl Into<Vec<u8>>, headers: &'static [&'static str]) -> HttpCase {
    HttpCase(Case {
        name: name.to_owned(),
        version: V311,
        steps: vec![Step::Raw(request.into())],
        runs: Vec::new(),
        headers,
        watch_close: false,
    })
}

struct HttpCase(Case);

impl Case {
    /// The case over `transport` only.
    fn only(mut self, transport: Transport) -> Self {
        self.runs.retain(|(t, _)| *t == transport);
        self
    }
}

impl HttpCase {
    /// The connection must close after the response.
    fn closing(mut self) -> Self {
        self.0.watch_close = true;
        self
    }

    fn expect(mut self, expected: &[&str]) -> Case {
        self.0.runs = vec![(Transport::Http, list(expected))];
        self.0
    }
}

// ---------------------------------------------------------------------------------------------
// Building packets: valid ones from the codec, then corrupted.

fn encode(version: ProtocolVersion, packet: impl Into<Packet>) -> Vec<u8> {
    packet
        .into()
        .to_bytes(version)
        .expect("a valid packet encodes")
        .to_vec()
}

fn id(n: u16) -> PacketId {
    PacketId::new(n).expect("non-zero")
}

fn publish(topic: &str, qos: QoS) -> Publish {
    let mut publish = message(topic, "x", qos);
    if qos != QoS::AtMostOnce {
        publish.packet_id = Some(id(1));
    }
    publish
}

fn publish_bytes(version: ProtocolVersion, topic: &str, qos: QoS) -> Vec<u8> {
    encode(version, publish(topic, qos))
}

fn subscribe_bytes(version: ProtocolVersion, filter: &str) -> Vec<u8> {
    encode(
        version,
        Subscribe {
            packet_id: id(1),
            properties: Default::default(),
            subscriptions: vec![subscription(filter, QoS::AtLeastOnce)],
        },
    )
}

fn unsubscribe_bytes(version: ProtocolVersion, filter: &str) -> Vec<u8> {
    encode(
        version,
        Unsubscribe {
            packet_id: id(1),
            properties: Default::default(),
            filters: vec![TopicFilter::new(filter).expect("a valid filter")],
        },
    )
}

/// A Variable Byte Integer (MQTT 5 §1.5.5).
fn var_int(mut value: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let mut byte = (value % 128) as u8;
        value /= 128;
        if value > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if value == 0 {
            return out;
        }
    }
}

/// A packet from its first byte and its body.
fn frame_packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut packet = vec![first];
    packet.extend(var_int(body.len()));
    packet.extend_from_slice(body);
    packet
}

/// An encoded packet's first byte and body.
fn split_packet(packet: &[u8]) -> (u8, Vec<u8>) {
    let mut at = 1;
    while packet[at] & 0x80 != 0 {
        at += 1;
    }
    (packet[0], packet[at + 1..].to_vec())
}

/// `packet` with the first occurrence of `from` in its body replaced by `to` (its remaining
/// length recomputed).
fn patched(packet: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let (first, body) = split_packet(packet);
    let at = body
        .windows(from.len())
        .position(|window| window == from)
        .unwrap_or_else(|| panic!("{from:02x?} not in {body:02x?}"));
    let mut new_body = body[..at].to_vec();
    new_body.extend_from_slice(to);
    new_body.extend_from_slice(&body[at + from.len()..]);
    frame_packet(first, &new_body)
}

/// `packet` with its first byte changed.
fn first_byte(packet: &[u8], first: u8) -> Vec<u8> {
    let mut packet = packet.to_vec();
    packet[0] = first;
    packet
}

/// An MQTT 5 packet with `properties` (raw) in its empty property section at `at` in its body.
fn with_properties(packet: &[u8], at: usize, properties: &[u8]) -> Vec<u8> {
    let (first, body) = split_packet(packet);
    assert_eq!(body[at], 0, "an empty property section at {at}");
    let mut new_body = body[..at].to_vec();
    new_body.extend(var_int(properties.len()));
    new_body.extend_from_slice(properties);
    new_body.extend_from_slice(&body[at + 1..]);
    frame_packet(first, &new_body)
}

/// A QoS 0 MQTT 5 PUBLISH to "t" with `properties`.
fn publish_v5_with(properties: &[u8]) -> Vec<u8> {
    with_properties(&publish_bytes(V5, "t", QoS::AtMostOnce), 3, properties)
}

/// An MQTT 5 SUBSCRIBE to "t" with `properties`.
fn subscribe_v5_with(properties: &[u8]) -> Vec<u8> {
    with_properties(&subscribe_bytes(V5, "t"), 2, properties)
}

/// A CONNECT's bytes (client id "c").
fn connect_bytes(version: ProtocolVersion, tune: impl FnOnce(&mut Connect)) -> Vec<u8> {
    let mut connect = connect_packet(version, "c");
    tune(&mut connect);
    encode(version, connect)
}

/// The index of the Connect Flags byte in a CONNECT with the name "MQTT" and a one-byte
/// remaining length.
const CONNECT_FLAGS: usize = 9;

fn connect_flags(version: ProtocolVersion, tune: impl FnOnce(&mut Connect), flags: u8) -> Vec<u8> {
    let mut packet = connect_bytes(version, tune);
    packet[CONNECT_FLAGS] |= flags;
    packet
}

/// A CONNECT of MQTT 3.x put together by hand: protocol name, level, flags, client id "c",
/// then `tail` (will, user name, password fields).
fn connect_raw(name: &[u8], level: u8, flags: u8, client_id: &[u8], tail: &[u8]) -> Vec<u8> {
    let mut body = vec![0, name.len() as u8];
    body.extend_from_slice(name);
    body.extend_from_slice(&[level, flags, 0, 30]);
    body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id);
    body.extend_from_slice(tail);
    frame_packet(0x10, &body)
}

fn with_will(connect: &mut Connect) {
    connect.will = Some(Will::new(
        TopicName::new("will/topic").expect("valid"),
        &b"gone"[..],
    ));
}

fn repeat(packet: &[u8], times: usize) -> Vec<u8> {
    packet.repeat(times)
}

// ---------------------------------------------------------------------------------------------
// The MQTT cases.

fn mqtt_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    let mut before_connect = |name: &str, version, bytes: Vec<u8>, expected: &[&str]| {
        cases.push(mqtt(name, version, vec![Step::Send(bytes)], expected));
    };

    // ---- before CONNECT: the first packet must be a valid CONNECT (MQTT-3.1.0-1,
    // MQTT-3.1.4-1); anything else is closed, after a CONNACK with the reason (0x81, 0x82,
    // 0x95) when the CONNECT names MQTT 5 (§4.13), without a word otherwise.
    before_connect(
        "mqtt_3_1_0_1_publish_before_connect",
        V311,
        publish_bytes(V311, "a/b", QoS::AtLeastOnce),
        &["closed"],
    );
    before_connect(
        "mqtt_3_1_0_1_subscribe_before_connect",
        V311,
        subscribe_bytes(V311, "#"),
        &["closed"],
    );
    before_connect(
        "mqtt_3_1_0_1_pingreq_before_connect",
        V311,
        vec![0xC0, 0x00],
        &["closed"],
    );
    before_connect(
        "mqtt_3_1_0_1_disconnect_before_connect",
        V5,
        vec![0xE0, 0x00],
        &["closed"],
    );
    before_connect(
        "mqtt_3_1_0_1_auth_before_connect",
        V5,
        vec![0xF0, 0x00],
        &["closed"],
    );
    before_connect(
        "mqtt_3_1_0_1_connack_from_a_client",
        V311,
        vec![0x20, 0x02, 0x00, 0x00],
        &["closed"],
    );
    before_connect(
        "mqtt_3_1_0_1_an_http_request_on_the_mqtt_port",
        V311,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        &["closed"],
    );
    before_connect(
        "mqtt_3_1_0_1_a_tls_client_hello_on_the_plain_port",
        V311,
        vec![
            0x16, 0x03, 0x01, 0x00, 0x2F, 0x01, 0x00, 0x00, 0x2B, 0x03, 0x03, 0, 0, 0, 0,
        ],
        &["closed"],
    );
    before_connect(
        "packet_type_0_before_connect_is_malformed",
        V311,
        vec![0x00, 0x00],
        &["closed"],
    );
    before_connect(
        "mqtt_1_5_5_1_connect_remaining_length_of_five_bytes",
        V5,
        vec![0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
        &["closed"],
    );
    let connect = connect_bytes(V5, |_| {});
    let mut not_minimal = vec![0x10, 0x80 | connect[1], 0x00];
    not_minimal.extend_from_slice(&connect[2..]);
    before_connect(
        "mqtt_1_5_5_1_connect_remaining_length_not_in_its_shortest_form",
        V5,
        not_minimal,
        &["CONNACK 0x81", "closed"],
    );
    // A wrong protocol name: the broker may close, or refuse the version (MQTT-3.1.2-1); it
    // answers as for an unknown level.
    before_connect(
        "v311_mqtt_3_1_2_1_protocol_name_mqisdp_at_level_4",
        V311,
        connect_raw(b"MQIsdp", 4, 0x02, b"c", &[]),
        &["CONNACK 0x01", "closed"],
    );
    // MQTT-3.1.2-2 (3.1.1): CONNACK 0x01 and close, for a level the broker does not support.
    before_connect(
        "v311_mqtt_3_1_2_2_protocol_level_6_gets_connack_0x01",
        V311,
        connect_raw(b"MQTT", 6, 0x02, b"c", &[]),
        &["CONNACK 0x01", "closed"],
    );
    before_connect(
        "v311_mqtt_3_1_2_3_reserved_connect_flag",
        V311,
        connect_flags(V311, |_| {}, 0x01),
        &["closed"],
    );
    before_connect(
        "mqtt_3_1_2_3_reserved_connect_flag",
        V5,
        connect_flags(V5, |_| {}, 0x01),
        &["CONNACK 0x81", "closed"],
    );
    before_connect(
        "v311_mqtt_3_1_2_13_will_qos_without_will_flag",
        V311,
        connect_flags(V311, |_| {}, 0x08),
        &["closed"],
    );
    before_connect(
        "mqtt_3_1_2_11_will_qos_without_will_flag",
        V5,
        connect_flags(V5, |_| {}, 0x10),
        &["CONNACK 0x81", "closed"],
    );
    before_connect(
        "v311_mqtt_3_1_2_14_will_qos_3",
        V311,
        connect_flags(V311, with_will, 0x18),
        &["closed"],
    );
    before_connect(
        "mqtt_3_1_2_12_will_qos_3",
        V5,
        connect_flags(V5, with_will, 0x18),
        &["CONNACK 0x81", "closed"],
    );
    before_connect(
        "v311_mqtt_3_1_2_15_will_retain_without_will_flag",
        V311,
        connect_flags(V311, |_| {}, 0x20),
        &["closed"],
    );
    before_connect(
        "mqtt_3_1_2_13_will_retain_without_will_flag",
        V5,
        connect_flags(V5, |_| {}, 0x20),
        &["CONNACK 0x81", "closed"],
    );
    before_connect(
        "v311_mqtt_3_1_2_22_password_without_user_name",
        V311,
        connect_raw(b"MQTT", 4, 0x42, b"c", &[0, 2, b'p', b'w']),
        &["closed"],
    );
    before_connect(
        "v311_mqtt_1_5_3_1_ill_formed_utf8_in_the_client_id",
        V311,
        connect_raw(b"MQTT", 4, 0x02, &[b'c', 0xFF], &[]),
        &["closed"],
    );
    before_connect(
        "mqtt_1_5_4_1_ill_formed_utf8_in_the_client_id",
        V5,
        patched(
            &connect_bytes(V5, |_| {}),
            &[0, 1, b'c'],
            &[0, 2, 0xC3, 0x28],
        ),
        &["CONNACK 0x81", "closed"],
    );
    before_connect(
        "mqtt_1_5_4_1_utf16_surrogate_in_the_client_id",
        V5,
        patched(
            &connect_bytes(V5, |_| {}),
            &[0, 1, b'c'],
            &[0, 3, 0xED, 0xA0, 0x80],
        ),
        &["CONNACK 0x81", "closed"],
    );
    before_connect(
        "v311_mqtt_1_5_3_2_nul_in_the_client_id",
        V311,
        connect_raw(b"MQTT", 4, 0x02, &[b'c', 0x00], &[]),
        &["closed"],
    );
    before_connect(
        "mqtt_1_5_4_2_nul_in_the_client_id",
        V5,
        patched(&connect_bytes(V5, |_| {}), &[0, 1, b'c'], &[0, 2, b'c', 0]),
        &["CONNACK 0x81", "closed"],
    );
    before_connect(
        "mqtt_3_1_4_1_connect_with_bytes_after_its_payload",
        V311,
        connect_raw(b"MQTT", 4, 0x02, b"c", &[0xAA, 0xBB]),
        &["closed"],
    );
    before_connect(
        "v311_will_topic_with_a_wildcard",
        V311,
        patched(
            &connect_bytes(V311, with_will),
            b"will/topic",
            b"will/+/pic",
        ),
        &["closed"],
    );
    // MQTT 5 §3.1.2.11: Receive Maximum and Maximum Packet Size 0 are Protocol Errors.
    before_connect(
        "v5_connect_with_receive_maximum_0",
        V5,
        patched(
            &connect_bytes(V5, |c| c.properties.receive_maximum = NonZeroU16::new(7)),
            &[0x21, 0x00, 0x07],
            &[0x21, 0x00, 0x00],
        ),
        &["CONNACK 0x82", "closed"],
    );
    before_connect(
        "v5_connect_with_maximum_packet_size_0",
        V5,
        patched(
            &connect_bytes(V5, |c| {
                c.properties.maximum_packet_size = NonZeroU32::new(0x0A0B_0C0D)
            }),
            &[0x27, 0x0A, 0x0B, 0x0C, 0x0D],
            &[0x27, 0, 0, 0, 0],
        ),
        &["CONNACK 0x82", "closed"],
    );
    // Properties in the wrong packet (MQTT 5 §2.2.2.2: a Malformed Packet).
    let problem_info = |c: &mut Connect| {
        c.properties.request_problem_information = Some(true);
        c.properties.request_response_information = Some(true);
    };
    before_connect(
        "v5_connect_with_a_topic_alias_property",
        V5,
        patched(
            &connect_bytes(V5, |c| c.properties.topic_alias_maximum = Some(0x0A0B)),
            &[0x22, 0x0A, 0x0B],
            &[0x23, 0x0A, 0x0B],
        ),
        &["CONNACK 0x81", "closed"],
    );
    before_connect(
        "v5_connect_with_a_subscription_identifier_property",
        V5,
        patched(
            &connect_bytes(V5, problem_info),
            &[0x17, 0x01],
            &[0x0B, 0x01],
        ),
        &["CONNACK 0x81", "closed"],
    );
    // MQTT 5 §2.2.2.2: a property more than once where that is not allowed is a Protocol Error.
    before_connect(
        "v5_connect_with_request_problem_information_twice",
        V5,
        patched(
            &connect_bytes(V5, problem_info),
            &[0x19, 0x01],
            &[0x17, 0x01],
        ),
        &["CONNACK 0x82", "closed"],
    );
    before_connect(
        "v5_connect_with_an_unknown_property",
        V5,
        patched(
            &connect_bytes(V5, problem_info),
            &[0x19, 0x01],
            &[0x7F, 0x01],
        ),
        &["CONNACK 0x81", "closed"],
    );
    before_connect(
        "v5_connect_with_request_problem_information_2",
        V5,
        patched(
            &connect_bytes(V5, problem_info),
            &[0x17, 0x01],
            &[0x17, 0x02],
        ),
        &["CONNACK 0x82", "closed"],
    );
    // MQTT 5 §3.1.2.11.10: Authentication Data without a method is a Protocol Error.
    before_connect(
        "v5_connect_with_authentication_data_without_a_method",
        V5,
        patched(
            &connect_bytes(V5, |c| {
                c.properties.session_expiry_interval = Some(0x0A0B_0C0D)
            }),
            &[0x11, 0x0A, 0x0B, 0x0C, 0x0D],
            &[0x16, 0x00, 0x02, b'x', b'y'],
        ),
        &["CONNACK 0x82", "closed"],
    );
    let mut beyond = connect_bytes(V5, problem_info);
    beyond[12] = 0x7F;
    before_connect(
        "v5_connect_property_length_beyond_the_packet",
        V5,
        beyond,
        &["CONNACK 0x81", "closed"],
    );
    before_connect(
        "v5_will_properties_with_a_session_expiry_property",
        V5,
        patched(
            &connect_bytes(V5, |c| {
                with_will(c);
                if let Some(will) = &mut c.will {
                    will.properties.will_delay_interval = Some(0x0A0B_0C0D);
                }
            }),
            &[0x18, 0x0A, 0x0B, 0x0C, 0x0D],
            &[0x11, 0x0A, 0x0B, 0x0C, 0x0D],
        ),
        &["CONNACK 0x81", "closed"],
    );
    // MQTT 3.1: a client id of 1 to 23 characters, else CONNACK 0x02.
    before_connect(
        "v31_empty_client_id_gets_connack_0x02",
        V311,
        connect_raw(b"MQIsdp", 3, 0x02, b"", &[]),
        &["CONNACK 0x02", "closed"],
    );
    before_connect(
        "v311_mqtt_3_1_3_8_empty_client_id_without_clean_session_gets_connack_0x02",
        V311,
        connect_raw(b"MQTT", 4, 0x00, b"", &[]),
        &["CONNACK 0x02", "closed"],
    );
    // MQTT 5 §3.1.2.11.4 / §4.13: over the server's limit before the CONNACK announced it,
    // the connection is closed (a CONNACK 0x95 first is allowed, not required).
    before_connect(
        "connect_over_the_maximum_packet_size",
        V5,
        {
            let mut packet = vec![0x10];
            packet.extend(var_int(2 * MAX_PACKET as usize));
            packet.extend_from_slice(&connect_bytes(V5, |_| {})[2..]);
            packet
        },
        &["CONNACK 0x95", "closed"],
    );

    // ---- slow: nothing in time is closed (MQTT 5 §3.1.4 "a reasonable amount of time").
    cases.push(mqtt(
        "connect_never_sent_is_closed_after_the_connect_timeout",
        V311,
        Vec::new(),
        &["closed"],
    ));
    let connect = connect_bytes(V311, |_| {});
    cases.push(mqtt(
        "half_a_connect_is_closed_after_the_connect_timeout",
        V311,
        vec![Step::Send(connect[..connect.len() / 2].to_vec())],
        &["closed"],
    ));
    cases.push(mqtt(
        "a_connect_trickled_a_byte_at_a_time_is_closed_after_the_connect_timeout",
        V311,
        vec![Step::Trickle(connect)],
        &["closed"],
    ));
    // MQTT 5 allows a password without a user name.
    let mut password_only = connect_packet(V5, "c");
    password_only.password = Some(bytes::Bytes::from_static(b"secret"));
    cases.push(mqtt(
        "v5_password_without_user_name_is_accepted",
        V5,
        vec![Step::Connect(Box::new(password_only))],
        &["CONNACK 0x00", "open"],
    ));

    // ---- after CONNECT: protocol violations.
    violation(
        &mut cases,
        "v311_mqtt_3_1_0_2_second_connect",
        "mqtt_3_1_0_2_second_connect",
        |v| connect_bytes(v, |_| {}),
        0x82,
    );
    violation(
        &mut cases,
        "v311_mqtt_3_3_1_4_publish_with_qos_3",
        "mqtt_3_3_1_4_publish_with_qos_3",
        |v| first_byte(&publish_bytes(v, "a", QoS::AtLeastOnce), 0x36),
        0x81,
    );
    violation(
        &mut cases,
        "v311_mqtt_3_3_1_2_dup_on_qos_0",
        "mqtt_3_3_1_2_dup_on_qos_0",
        |v| first_byte(&publish_bytes(v, "a", QoS::AtMostOnce), 0x38),
        0x81,
    );
    violation(
        &mut cases,
        "v311_mqtt_3_3_2_2_plus_in_a_publish_topic",
        "mqtt_3_3_2_2_plus_in_a_publish_topic",
        |v| patched(&publish_bytes(v, "a/b", QoS::AtMostOnce), b"a/b", b"a/+"),
        0x90,
    );
    violation(
        &mut cases,
        "v311_mqtt_3_3_2_2_hash_in_a_publish_topic",
        "mqtt_3_3_2_2_hash_in_a_publish_topic",
        |v| patched(&publish_bytes(v, "a/b", QoS::AtLeastOnce), b"a/b", b"a/#"),
        0x90,
    );
    // An empty topic: MQTT-4.7.3-1; in MQTT 5 without a Topic Alias a Protocol Error
    // (MQTT 5 §3.3.2.3.4).
    violation(
        &mut cases,
        "v311_mqtt_4_7_3_1_empty_publish_topic",
        "mqtt_4_7_3_1_empty_publish_topic_without_an_alias",
        |v| {
            patched(
                &publish_bytes(v, "a", QoS::AtMostOnce),
                &[0, 1, b'a'],
                &[0, 0],
            )
        },
        0x82,
    );
    violation(
        &mut cases,
        "v311_mqtt_1_5_3_1_ill_formed_utf8_in_a_topic",
        "mqtt_1_5_4_1_ill_formed_utf8_in_a_topic",
        |v| {
            patched(
                &publish_bytes(v, "a/b", QoS::AtMostOnce),
                b"a/b",
                &[b'a', 0xC0, 0xAF],
            )
        },
        0x81,
    );
    violation(
        &mut cases,
        "v311_mqtt_1_5_3_2_nul_in_a_topic",
        "mqtt_1_5_4_2_nul_in_a_topic",
        |v| {
            patched(
                &publish_bytes(v, "a/b", QoS::AtMostOnce),
                b"a/b",
                &[b'a', 0, b'b'],
            )
        },
        0x81,
    );
    cases.push(connected(
        "mqtt_1_5_4_1_utf16_surrogate_in_a_topic",
        V5,
        vec![Step::Send(patched(
            &publish_bytes(V5, "abc", QoS::AtMostOnce),
            b"abc",
            &[0xED, 0xBF, 0xBF],
        ))],
        &["DISCONNECT 0x81", "closed"],
    ));
    // MQTT-1.5.4-3: a BOM is not stripped: the topic with it is a topic of its own. (A
    // topic for each transport, as the runs go at once.)
    for (name, transport) in [
        ("mqtt_1_5_4_3_a_bom_in_a_topic_is_kept", Transport::Tcp),
        (
            "mqtt_1_5_4_3_a_bom_in_a_topic_is_kept_over_websockets",
            Transport::Ws,
        ),
    ] {
        let plain = format!("bom/{transport:?}");
        let bom = format!("\u{FEFF}{plain}");
        let delivered = format!("PUBLISH {bom}");
        cases.push(
            connected(
                name,
                V5,
                vec![
                    Step::Send(subscribe_bytes(V5, &bom)),
                    Step::Pause(Duration::from_millis(100)),
                    Step::Send(encode(V5, message(&plain, "plain", QoS::AtMostOnce))),
                    Step::Send(encode(V5, message(&bom, "with bom", QoS::AtMostOnce))),
                ],
                &["SUBACK [0x01]", &delivered, "open"],
            )
            .only(transport),
        );
    }
    violation(
        &mut cases,
        "v311_mqtt_2_3_1_1_publish_qos_1_with_packet_identifier_0",
        "mqtt_2_2_1_3_publish_qos_1_with_packet_identifier_0",
        |v| {
            patched(
                &publish_bytes(v, "t", QoS::AtLeastOnce),
                &[b't', 0, 1],
                &[b't', 0, 0],
            )
        },
        0x81,
    );
    violation(
        &mut cases,
        "v311_mqtt_2_3_1_1_subscribe_with_packet_identifier_0",
        "mqtt_2_2_1_3_subscribe_with_packet_identifier_0",
        |v| {
            let mut packet = subscribe_bytes(v, "t");
            packet[3] = 0;
            packet
        },
        0x81,
    );
    violation(
        &mut cases,
        "v311_mqtt_3_8_1_1_subscribe_reserved_flags_0000",
        "mqtt_3_8_1_1_subscribe_reserved_flags_0000",
        |v| first_byte(&subscribe_bytes(v, "t"), 0x80),
        0x81,
    );
    violation(
        &mut cases,
        "v311_mqtt_3_8_3_3_subscribe_without_a_filter",
        "mqtt_3_8_3_2_subscribe_without_a_filter",
        |v| {
            let (first, body) = split_packet(&subscribe_bytes(v, "t"));
            let header = if v.is_v5() { 3 } else { 2 };
            frame_packet(first, &body[..header])
        },
        0x82,
    );
    violation(
        &mut cases,
        "v311_mqtt_3_8_3_4_subscribe_options_reserved_bits",
        "mqtt_3_8_3_5_subscription_options_reserved_bits",
        |v| patched(&subscribe_bytes(v, "t"), &[b't', 0x01], &[b't', 0xC1]),
        0x81,
    );
    violation(
        &mut cases,
        "v311_mqtt_3_8_3_4_subscribe_qos_3",
        "subscribe_qos_3_is_malformed",
        |v| patched(&subscribe_bytes(v, "t"), &[b't', 0x01], &[b't', 0x03]),
        0x81,
    );
    // MQTT 5 §3.8.3.1: Retain Handling 3 is a Protocol Error.
    cases.push(connected(
        "v5_subscribe_retain_handling_3",
        V5,
        vec![Step::Send(patched(
            &subscribe_bytes(V5, "t"),
            &[b't', 0x01],
            &[b't', 0x31],
        ))],
        &["DISCONNECT 0x82", "closed"],
    ));
    cases.push(connected(
        "mqtt_3_8_3_4_no_local_on_a_shared_subscription",
        V5,
        vec![Step::Send(patched(
            &subscribe_bytes(V5, "$share/g/t"),
            &[b't', 0x01],
            &[b't', 0x05],
        ))],
        &["DISCONNECT 0x82", "closed"],
    ));
    // Filters against MQTT-4.7.1-1, -2 and MQTT-4.7.3-1: not a Topic Filter; we tell MQTT 5
    // clients 0x8F (Topic Filter invalid), as the interop tests expect.
    violation(
        &mut cases,
        "v311_mqtt_4_7_1_2_hash_not_last_in_a_filter",
        "mqtt_4_7_1_1_hash_not_last_in_a_filter",
        |v| patched(&subscribe_bytes(v, "a/b/c"), b"a/b/c", b"a/#/c"),
        0x8F,
    );
    cases.push(connected(
        "mqtt_4_7_1_2_plus_not_a_whole_level",
        V5,
        vec![Step::Send(patched(
            &subscribe_bytes(V5, "a/bc"),
            b"a/bc",
            b"a/b+",
        ))],
        &["DISCONNECT 0x8f", "closed"],
    ));
    cases.push(connected(
        "mqtt_4_7_3_1_empty_filter",
        V5,
        vec![Step::Send(patched(
            &subscribe_bytes(V5, "t"),
            &[0, 1, b't'],
            &[0, 0],
        ))],
        &["DISCONNECT 0x8f", "closed"],
    ));
    cases.push(connected(
        "mqtt_4_8_2_1_shared_subscription_without_a_share_name",
        V5,
        vec![Step::Send(patched(
            &subscribe_bytes(V5, "$share/g/t"),
            b"$share/g/t",
            b"$share//tt",
        ))],
        &["DISCONNECT 0x8f", "closed"],
    ));
    cases.push(connected(
        "mqtt_4_8_2_2_share_name_with_a_wildcard",
        V5,
        vec![Step::Send(patched(
            &subscribe_bytes(V5, "$share/gg/t"),
            b"$share/gg/t",
            b"$share/g+/t",
        ))],
        &["DISCONNECT 0x8f", "closed"],
    ));
    violation(
        &mut cases,
        "v311_mqtt_3_10_1_1_unsubscribe_reserved_flags_0000",
        "mqtt_3_10_1_1_unsubscribe_reserved_flags_0000",
        |v| first_byte(&unsubscribe_bytes(v, "t"), 0xA0),
        0x81,
    );
    violation(
        &mut cases,
        "v311_mqtt_3_10_3_2_unsubscribe_without_a_filter",
        "mqtt_3_10_3_2_unsubscribe_without_a_filter",
        |v| {
            let (first, body) = split_packet(&unsubscribe_bytes(v, "t"));
            let header = if v.is_v5() { 3 } else { 2 };
            frame_packet(first, &body[..header])
        },
        0x82,
    );
    violation(
        &mut cases,
        "v311_mqtt_3_6_1_1_pubrel_reserved_flags_0000",
        "mqtt_3_6_1_1_pubrel_reserved_flags_0000",
        |_| vec![0x60, 0x02, 0x00, 0x01],
        0x81,
    );
    violation(
        &mut cases,
        "v311_mqtt_2_2_2_2_pingreq_reserved_flags",
        "mqtt_2_1_3_1_pingreq_reserved_flags",
        |_| vec![0xC1, 0x00],
        0x81,
    );
    violation(
        &mut cases,
        "v311_mqtt_3_14_1_1_disconnect_reserved_flags",
        "mqtt_3_14_1_1_disconnect_reserved_flags",
        |_| vec![0xE8, 0x00],
        0x81,
    );
    violation(
        &mut cases,
        "v311_mqtt_2_2_2_2_puback_reserved_flags",
        "mqtt_2_1_3_1_puback_reserved_flags",
        |_| vec![0x42, 0x02, 0x00, 0x01],
        0x81,
    );
    violation(
        &mut cases,
        "v311_mqtt_2_2_2_2_pubrec_reserved_flags",
        "mqtt_2_1_3_1_pubrec_reserved_flags",
        |_| vec![0x51, 0x02, 0x00, 0x01],
        0x81,
    );
    violation(
        &mut cases,
        "v311_mqtt_2_2_2_2_pubcomp_reserved_flags",
        "mqtt_2_1_3_1_pubcomp_reserved_flags",
        |_| vec![0x74, 0x02, 0x00, 0x01],
        0x81,
    );
    cases.push(connected(
        "mqtt_2_1_3_1_auth_reserved_flags",
        V5,
        vec![Step::Send(vec![0xF1, 0x00])],
        &["DISCONNECT 0x81", "closed"],
    ));
    violation(
        &mut cases,
        "v311_puback_shorter_than_its_packet_identifier",
        "v5_puback_shorter_than_its_packet_identifier",
        |_| vec![0x40, 0x01, 0x00],
        0x81,
    );
    violation(
        &mut cases,
        "v311_pingreq_with_a_body",
        "v5_pingreq_with_a_body",
        |_| vec![0xC0, 0x01, 0x00],
        0x81,
    );
    cases.push(connected(
        "v311_disconnect_with_a_body",
        V311,
        vec![Step::Send(vec![0xE0, 0x01, 0x00])],
        &["closed"],
    ));
    // MQTT 5 §3.4.2.1: a reason code PUBACK does not have is a Malformed Packet.
    cases.push(connected(
        "v5_puback_with_a_reason_code_not_for_puback",
        V5,
        vec![Step::Send(vec![0x40, 0x03, 0x00, 0x01, 0x8F])],
        &["DISCONNECT 0x81", "closed"],
    ));
    cases.push(connected(
        "mqtt_1_5_4_1_unsubscribe_filter_with_ill_formed_utf8",
        V5,
        vec![Step::Send(patched(
            &unsubscribe_bytes(V5, "ab"),
            b"ab",
            &[0xC3, 0x28],
        ))],
        &["DISCONNECT 0x81", "closed"],
    ));
    cases.push(connected(
        "v5_subscribe_cut_before_its_options",
        V5,
        vec![Step::Send({
            let (first, body) = split_packet(&subscribe_bytes(V5, "t"));
            frame_packet(first, &body[..body.len() - 1])
        })],
        &["DISCONNECT 0x81", "closed"],
    ));
    violation(
        &mut cases,
        "v311_packet_type_0_after_connect",
        "packet_type_0_after_connect_is_malformed",
        |_| vec![0x00, 0x00],
        0x81,
    );
    violation(
        &mut cases,
        "v311_auth_is_no_mqtt_3_packet",
        "v5_auth_without_an_authentication_method",
        |_| vec![0xF0, 0x00],
        0x82,
    );
    // Packets only a server sends (MQTT 5 §4.13: a Protocol Error).
    violation(
        &mut cases,
        "v311_connack_from_a_client",
        "v5_connack_from_a_client",
        |v| {
            if v.is_v5() {
                vec![0x20, 0x03, 0x00, 0x00, 0x00]
            } else {
                vec![0x20, 0x02, 0x00, 0x00]
            }
        },
        0x82,
    );
    cases.push(connected(
        "v5_suback_from_a_client",
        V5,
        vec![Step::Send(vec![0x90, 0x04, 0x00, 0x01, 0x00, 0x00])],
        &["DISCONNECT 0x82", "closed"],
    ));
    cases.push(connected(
        "v5_unsuback_from_a_client",
        V5,
        vec![Step::Send(vec![0xB0, 0x04, 0x00, 0x01, 0x00, 0x00])],
        &["DISCONNECT 0x82", "closed"],
    ));
    cases.push(connected(
        "v5_pingresp_from_a_client",
        V5,
        vec![Step::Send(vec![0xD0, 0x00])],
        &["DISCONNECT 0x82", "closed"],
    ));
    // PUBLISH properties the client may not send.
    cases.push(connected(
        "mqtt_3_3_4_6_publish_with_a_subscription_identifier",
        V5,
        vec![Step::Send(publish_v5_with(&[0x0B, 0x01]))],
        &["DISCONNECT 0x82", "closed"],
    ));
    cases.push(connected(
        "mqtt_3_3_2_8_topic_alias_0",
        V5,
        vec![Step::Send(publish_v5_with(&[0x23, 0x00, 0x00]))],
        &["DISCONNECT 0x94", "closed"],
    ));
    let above = (TOPIC_ALIAS_MAXIMUM + 1).to_be_bytes();
    cases.push(connected(
        "mqtt_3_3_2_10_topic_alias_above_the_maximum",
        V5,
        vec![Step::Send(publish_v5_with(&[0x23, above[0], above[1]]))],
        &["DISCONNECT 0x94", "closed"],
    ));
    cases.push(connected(
        "v5_empty_topic_with_an_unknown_topic_alias",
        V5,
        vec![Step::Send(with_properties(
            &patched(
                &publish_bytes(V5, "t", QoS::AtMostOnce),
                &[0, 1, b't'],
                &[0, 0],
            ),
            2,
            &[0x23, 0x00, 0x03],
        ))],
        &["DISCONNECT 0x82", "closed"],
    ));
    cases.push(connected(
        "v5_publish_with_a_session_expiry_property",
        V5,
        vec![Step::Send(publish_v5_with(&[0x11, 0, 0, 0, 1]))],
        &["DISCONNECT 0x81", "closed"],
    ));
    cases.push(connected(
        "v5_publish_with_payload_format_indicator_twice",
        V5,
        vec![Step::Send(publish_v5_with(&[0x01, 0x01, 0x01, 0x00]))],
        &["DISCONNECT 0x82", "closed"],
    ));
    cases.push(connected(
        "v5_publish_with_payload_format_indicator_2",
        V5,
        vec![Step::Send(publish_v5_with(&[0x01, 0x02]))],
        &["DISCONNECT 0x82", "closed"],
    ));
    cases.push(connected(
        "mqtt_1_5_7_1_user_property_with_ill_formed_utf8",
        V5,
        vec![Step::Send(publish_v5_with(&[
            0x26, 0x00, 0x01, b'k', 0x00, 0x01, 0xFF,
        ]))],
        &["DISCONNECT 0x81", "closed"],
    ));
    cases.push(connected(
        "mqtt_1_5_4_1_content_type_with_ill_formed_utf8",
        V5,
        vec![Step::Send(publish_v5_with(&[0x03, 0x00, 0x02, 0xC3, 0x28]))],
        &["DISCONNECT 0x81", "closed"],
    ));
    // MQTT-3.3.2-14: the Response Topic is a topic name, without wildcards; the reason code
    // is ours to choose: 0x90, Topic Name invalid.
    cases.push(connected(
        "mqtt_3_3_2_14_response_topic_with_a_wildcard",
        V5,
        vec![Step::Send(publish_v5_with(&[
            0x08, 0x00, 0x03, b'r', b'/', b'#',
        ]))],
        &["DISCONNECT 0x90", "closed"],
    ));
    cases.push(connected(
        "v5_publish_property_length_beyond_the_packet",
        V5,
        vec![Step::Send({
            let mut packet = publish_bytes(V5, "t", QoS::AtMostOnce);
            packet[5] = 0x40;
            packet
        })],
        &["DISCONNECT 0x81", "closed"],
    ));
    // SUBSCRIBE, UNSUBSCRIBE and DISCONNECT properties.
    cases.push(connected(
        "v5_subscribe_with_a_connect_property",
        V5,
        vec![Step::Send(subscribe_v5_with(&[0x17, 0x01]))],
        &["DISCONNECT 0x81", "closed"],
    ));
    cases.push(connected(
        "v5_subscribe_with_subscription_identifier_0",
        V5,
        vec![Step::Send(subscribe_v5_with(&[0x0B, 0x00]))],
        &["DISCONNECT 0x82", "closed"],
    ));
    cases.push(connected(
        "v5_subscribe_with_two_subscription_identifiers",
        V5,
        vec![Step::Send(subscribe_v5_with(&[0x0B, 0x01, 0x0B, 0x02]))],
        &["DISCONNECT 0x82", "closed"],
    ));
    cases.push(connected(
        "v5_unsubscribe_with_a_subscription_identifier",
        V5,
        vec![Step::Send(with_properties(
            &unsubscribe_bytes(V5, "t"),
            2,
            &[0x0B, 0x01],
        ))],
        &["DISCONNECT 0x81", "closed"],
    ));
    cases.push(connected(
        "mqtt_3_14_2_2_session_expiry_set_at_disconnect_after_0_at_connect",
        V5,
        vec![Step::Send({
            let mut disconnect = Disconnect::new(ReasonCode::Success);
            disconnect.properties.session_expiry_interval = Some(60);
            encode(V5, disconnect)
        })],
        &["DISCONNECT 0x82", "closed"],
    ));
    cases.push(connected(
        "v5_disconnect_with_a_reason_code_not_for_disconnect",
        V5,
        vec![Step::Send(vec![0xE0, 0x01, 0x01])],
        &["DISCONNECT 0x81", "closed"],
    ));
    cases.push(connected(
        "v5_disconnect_with_a_topic_alias_property",
        V5,
        vec![Step::Send(vec![0xE0, 0x05, 0x00, 0x03, 0x23, 0x00, 0x01])],
        &["DISCONNECT 0x81", "closed"],
    ));
    // Lengths that lie.
    violation(
        &mut cases,
        "v311_topic_length_beyond_the_packet",
        "v5_topic_length_beyond_the_packet",
        |v| {
            patched(
                &publish_bytes(v, "t", QoS::AtMostOnce),
                &[0, 1, b't'],
                &[0, 9, b't'],
            )
        },
        0x81,
    );
    violation(
        &mut cases,
        "v311_mqtt_1_5_5_1_remaining_length_of_five_bytes_after_connect",
        "mqtt_1_5_5_1_remaining_length_of_five_bytes_after_connect",
        |_| vec![0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
        0x81,
    );

    // ---- oversized: refused from the fixed header (MQTT 5 §3.2.2.3.6: DISCONNECT 0x95).
    violation(
        &mut cases,
        "v311_publish_over_the_maximum_packet_size",
        "v5_publish_over_the_maximum_packet_size",
        |v| {
            let mut packet = message("big", "", QoS::AtMostOnce);
            packet.payload = vec![b'x'; MAX_PACKET as usize].into();
            encode(v, packet)
        },
        0x95,
    );
    cases.push(connected(
        "v5_remaining_length_of_the_protocol_maximum",
        V5,
        vec![Step::Send(vec![0x30, 0xFF, 0xFF, 0xFF, 0x7F])],
        &["DISCONNECT 0x95", "closed"],
    ));
    let mut below = message("big", "", QoS::AtLeastOnce);
    below.packet_id = Some(id(1));
    below.payload = vec![b'x'; MAX_PACKET as usize - 64].into();
    cases.push(connected(
        "v5_publish_just_under_the_maximum_packet_size_is_accepted",
        V5,
        vec![Step::Send(encode(V5, below))],
        &["PUBACK 0x10", "open"],
    ));
    // MQTT-3.3.4-7: no more QoS 2 messages without PUBCOMP than Receive Maximum; MQTT 5
    // §3.3.4: past it, DISCONNECT 0x93. PUBREC 0x10: no subscriber matched.
    let qos_2 = |n: u16| {
        let mut packet = publish("rm", QoS::ExactlyOnce);
        packet.packet_id = Some(id(n));
        encode(V5, packet)
    };
    cases.push(connected(
        "mqtt_3_3_4_7_more_qos_2_messages_than_receive_maximum",
        V5,
        vec![
            Step::Send((1..=RECEIVE_MAXIMUM).flat_map(qos_2).collect()),
            Step::Pause(Duration::from_millis(200)),
            Step::Send(qos_2(RECEIVE_MAXIMUM + 1)),
        ],
        &[
            &format!("PUBREC 0x10 x{RECEIVE_MAXIMUM}"),
            "DISCONNECT 0x93",
            "closed",
        ],
    ));
    cases.push(connected(
        "v5_subscribe_with_500_filters_gets_500_codes",
        V5,
        vec![Step::Send(encode(
            V5,
            Subscribe {
                packet_id: id(1),
                properties: Default::default(),
                subscriptions: (0..500)
                    .map(|n| subscription(&format!("many/{n}"), QoS::AtMostOnce))
                    .collect(),
            },
        ))],
        &["SUBACK [0x00 x500]", "open"],
    ));

    // ---- slow: the keep alive and the packet timeout.
    for (name, version, expected) in [
        (
            "v311_mqtt_3_1_2_24_silent_past_one_and_a_half_keep_alives",
            V311,
            &["CONNACK 0x00", "closed"][..],
        ),
        (
            "mqtt_3_1_2_22_silent_past_one_and_a_half_keep_alives",
            V5,
            &["CONNACK 0x00", "DISCONNECT 0x8d", "closed"][..],
        ),
    ] {
        let mut connect = connect_packet(version, "c");
        connect.keep_alive = 1;
        cases.push(mqtt(
            name,
            version,
            vec![Step::Connect(Box::new(connect))],
            expected,
        ));
    }
    let trickled = encode(V5, message("trickle", "0123456789", QoS::AtMostOnce));
    cases.push(connected(
        "v5_a_publish_trickled_a_byte_at_a_time_gets_0x8d",
        V5,
        vec![Step::Trickle(trickled)],
        &["DISCONNECT 0x8d", "closed"],
    ));
    let trickled = encode(V311, message("trickle", "0123456789", QoS::AtMostOnce));
    cases.push(connected(
        "v311_a_publish_trickled_a_byte_at_a_time_is_closed",
        V311,
        vec![Step::Trickle(trickled)],
        &["closed"],
    ));
    cases.push(connected(
        "v5_half_a_publish_then_silence_gets_0x8d",
        V5,
        vec![Step::Send(
            publish_bytes(V5, "half/a/packet", QoS::AtMostOnce)[..6].to_vec(),
        )],
        &["DISCONNECT 0x8d", "closed"],
    ));

    // ---- floods and oddities the broker must take in its stride.
    cases.push(connected(
        "mqtt_3_12_4_1_a_thousand_pingreqs_in_one_write",
        V311,
        vec![Step::Send(repeat(&[0xC0, 0x00], 1000))],
        &["PINGRESP x1000", "open"],
    ));
    // MQTT 5 §3.7.2.1: PUBREL for an identifier not in use gets PUBCOMP 0x92; MQTT-3.6.4-1
    // (3.1.1): PUBCOMP with the same identifier.
    cases.push(connected(
        "v5_pubrel_for_an_unknown_packet_identifier_gets_pubcomp_0x92",
        V5,
        vec![Step::Send(encode(V5, Packet::PubRel(Ack::new(id(7)))))],
        &["PUBCOMP 0x92", "open"],
    ));
    cases.push(connected(
        "v311_mqtt_3_6_4_1_pubrel_for_an_unknown_packet_identifier_gets_pubcomp",
        V311,
        vec![Step::Send(encode(V311, Packet::PubRel(Ack::new(id(7)))))],
        &["PUBCOMP 0x00", "open"],
    ));
    cases.push(connected(
        "puback_for_a_message_never_sent_is_ignored",
        V5,
        vec![Step::Send(encode(V5, Packet::PubAck(Ack::new(id(9)))))],
        &["open"],
    ));
    cases.push(connected(
        "v5_unsubscribe_from_a_filter_never_subscribed_gets_0x11",
        V5,
        vec![Step::Send(unsubscribe_bytes(V5, "never/subscribed"))],
        &["UNSUBACK [0x11]", "open"],
    ));
    cases.push(connected(
        "a_packet_split_at_every_byte_across_writes_is_read_whole",
        V311,
        publish_bytes(V311, "split/topic", QoS::AtLeastOnce)
            .into_iter()
            .map(|byte| Step::Send(vec![byte]))
            .collect(),
        &["PUBACK 0x00", "open"],
    ));
    cases
}

// ---------------------------------------------------------------------------------------------
// The WebSocket cases: frames after a valid upgrade, and upgrades that are not valid.

/// The masking key of the frames the cases send.
const MASK: [u8; 4] = [0x37, 0xFA, 0x21, 0x3D];

/// A masked frame with `first` as its first byte (FIN, RSV and opcode as given).
fn ws_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    ws_frame_with_mask(first, payload, MASK)
}

fn ws_frame_with_mask(first: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut frame = vec![first];
    match payload.len() {
        len @ 0..=125 => frame.push(0x80 | len as u8),
        len @ 126..=0xFFFF => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    let start = frame.len();
    frame.extend_from_slice(payload);
    rallymq_websocket::apply_mask(&mut frame[start..], mask);
    frame
}

/// A frame header announcing `len` bytes in the 64-bit form, masked, with no payload yet.
fn ws_header_64(first: u8, len: u64) -> Vec<u8> {
    let mut frame = vec![first, 0x80 | 127];
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&MASK);
    frame
}

const PINGREQ: [u8; 2] = [0xC0, 0x00];

/// The upgrade request for MQTT over WebSockets on `/mqtt`, with `extra` header lines.
fn upgrade_request(extra: &str) -> String {
    format!(
        "GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: mqtt\r\n{extra}\r\n"
    )
}

fn websocket_cases() -> Vec<Case> {
    let raw = |frames: &[Vec<u8>]| frames.iter().cloned().map(Step::Raw).collect::<Vec<_>>();
    let pingreq = ws_frame(0x82, &PINGREQ);
    // Client ids of their own: cases run at once.
    let connect = |id: &str| encode(V311, connect_packet(V311, id));
    let mut cases = vec![
        // RFC 6455 §5.1: a server MUST close on an unmasked frame (1002, §7.4.1).
        ws_frames(
            "rfc6455_5_1_an_unmasked_frame_fails_with_1002",
            true,
            raw(&[vec![0x82, 0x02, 0xC0, 0x00]]),
            &["ws close 1002", "closed"],
        ),
        ws_frames(
            "rfc6455_5_1_an_unmasked_first_frame_fails_with_1002",
            false,
            raw(&[vec![0x82, 0x02, 0xC0, 0x00]]),
            &["ws close 1002", "closed"],
        ),
        // §5.2: RSV bits without a negotiated extension fail the connection.
        ws_frames(
            "rfc6455_5_2_rsv1_without_an_extension_fails_with_1002",
            true,
            raw(&[ws_frame(0xC2, &PINGREQ)]),
            &["ws close 1002", "closed"],
        ),
        ws_frames(
            "rfc6455_5_2_rsv2_without_an_extension_fails_with_1002",
            true,
            raw(&[ws_frame(0xA2, &PINGREQ)]),
            &["ws close 1002", "closed"],
        ),
        ws_frames(
            "rfc6455_5_2_rsv3_without_an_extension_fails_with_1002",
            true,
            raw(&[ws_frame(0x92, &PINGREQ)]),
            &["ws close 1002", "closed"],
        ),
        ws_frames(
            "rfc6455_5_2_reserved_data_opcode_fails_with_1002",
            true,
            raw(&[ws_frame(0x83, &PINGREQ)]),
            &["ws close 1002", "closed"],
        ),
        ws_frames(
            "rfc6455_5_2_reserved_control_opcode_fails_with_1002",
            true,
            raw(&[ws_frame(0x8B, &PINGREQ)]),
            &["ws close 1002", "closed"],
        ),
        // §5.2: the length in its shortest form, and a 64-bit one with its top bit clear.
        ws_frames(
            "rfc6455_5_2_a_length_not_in_its_shortest_form_fails_with_1002",
            true,
            raw(&[{
                let mut frame = vec![0x82, 0x80 | 126, 0x00, 0x02];
                frame.extend_from_slice(&MASK);
                let mut payload = PINGREQ;
                rallymq_websocket::apply_mask(&mut payload, MASK);
                frame.extend_from_slice(&payload);
                frame
            }]),
            &["ws close 1002", "closed"],
        ),
        ws_frames(
            "rfc6455_5_2_a_64_bit_length_with_its_top_bit_set_fails_with_1002",
            true,
            raw(&[ws_header_64(0x82, 1 << 63)]),
            &["ws close 1002", "closed"],
        ),
        // §5.5: control frames carry at most 125 bytes and are not fragmented.
        ws_frames(
            "rfc6455_5_5_a_ping_of_126_bytes_fails_with_1002",
            true,
            raw(&[ws_frame(0x89, &[b'p'; 126])]),
            &["ws close 1002", "closed"],
        ),
        ws_frames(
            "rfc6455_5_5_a_fragmented_ping_fails_with_1002",
            true,
            raw(&[ws_frame(0x09, b"ping")]),
            &["ws close 1002", "closed"],
        ),
        // §5.4: a continuation needs a message to continue, a new message waits for the end of
        // the one in progress.
        ws_frames(
            "rfc6455_5_4_a_continuation_without_a_start_fails_with_1002",
            true,
            raw(&[ws_frame(0x80, &PINGREQ)]),
            &["ws close 1002", "closed"],
        ),
        ws_frames(
            "rfc6455_5_4_a_binary_frame_inside_a_fragmented_message_fails_with_1002",
            true,
            raw(&[ws_frame(0x02, &PINGREQ[..1]), ws_frame(0x82, &PINGREQ[1..])]),
            &["ws close 1002", "closed"],
        ),
        // §5.5.1 and §7.4: a Close body is empty or a valid code and a UTF-8 reason.
        ws_frames(
            "rfc6455_5_5_1_a_close_frame_of_one_byte_fails_with_1002",
            true,
            raw(&[ws_frame(0x88, &[0x03])]),
            &["ws close 1002", "closed"],
        ),
        ws_frames(
            "rfc6455_7_4_1_close_code_1005_is_not_for_the_wire",
            true,
            raw(&[ws_frame(0x88, &1005u16.to_be_bytes())]),
            &["ws close 1002", "closed"],
        ),
        ws_frames(
            "rfc6455_7_4_1_close_code_1004_is_reserved",
            true,
            raw(&[ws_frame(0x88, &1004u16.to_be_bytes())]),
            &["ws close 1002", "closed"],
        ),
        ws_frames(
            "rfc6455_7_4_2_close_code_999_is_invalid",
            true,
            raw(&[ws_frame(0x88, &999u16.to_be_bytes())]),
            &["ws close 1002", "closed"],
        ),
        ws_frames(
            "rfc6455_7_4_2_close_code_5000_is_invalid",
            true,
            raw(&[ws_frame(0x88, &5000u16.to_be_bytes())]),
            &["ws close 1002", "closed"],
        ),
        ws_frames(
            "rfc6455_8_1_a_close_reason_not_utf8_fails_with_1007",
            true,
            raw(&[ws_frame(0x88, &[0x03, 0xE8, 0xFF, 0xFE])]),
            &["ws close 1007", "closed"],
        ),
        // §5.5.1: a Close is answered with a Close (echoing its code), then the server closes
        // the TCP connection (§7.1.1); nothing is sent after it, not even an answer to a
        // packet that came behind the Close.
        ws_frames(
            "rfc6455_5_5_1_a_close_is_answered_with_a_close",
            true,
            raw(&[ws_frame(0x88, &1000u16.to_be_bytes())]),
            &["ws close 1000", "closed"],
        ),
        ws_frames(
            "rfc6455_5_5_1_an_empty_close_is_answered_with_a_close",
            false,
            raw(&[ws_frame(0x88, &[])]),
            &["ws close", "closed"],
        ),
        ws_frames(
            "rfc6455_7_4_2_a_private_close_code_is_echoed",
            true,
            raw(&[ws_frame(0x88, &4000u16.to_be_bytes())]),
            &["ws close 4000", "closed"],
        ),
        ws_frames(
            "rfc6455_5_5_1_nothing_after_a_close_is_answered",
            true,
            raw(&[ws_frame(0x88, &1000u16.to_be_bytes()), pingreq.clone()]),
            &["ws close 1000", "closed"],
        ),
        // MQTT-6.0.0-1: MQTT goes in binary frames; other data frames close the connection.
        // RFC 6455 §7.4.1: 1003 for data of a type the endpoint cannot accept; invalid UTF-8
        // in a text message is 1007 first (§8.1).
        ws_frames(
            "mqtt_6_0_0_1_a_text_frame_closes_with_1003",
            true,
            raw(&[ws_frame(0x81, b"hello")]),
            &["ws close 1003", "closed"],
        ),
        ws_frames(
            "mqtt_6_0_0_1_a_connect_in_a_text_frame_closes_with_1003",
            false,
            raw(&[ws_frame(0x81, &connect("in-text"))]),
            &["ws close 1003", "closed"],
        ),
        ws_frames(
            "mqtt_6_0_0_1_a_fragmented_text_message_closes_with_1003",
            true,
            raw(&[ws_frame(0x01, b"hel"), ws_frame(0x80, b"lo")]),
            &["ws close 1003", "closed"],
        ),
        ws_frames(
            "rfc6455_8_1_a_text_frame_not_utf8_fails_with_1007",
            true,
            raw(&[ws_frame(0x81, &[0xC3, 0x28])]),
            &["ws close 1007", "closed"],
        ),
        // §7.4.1: 1009 for a message too big to process (the frame limit is 16 MiB).
        ws_frames(
            "rfc6455_7_4_1_a_frame_of_a_terabyte_fails_with_1009",
            true,
            raw(&[ws_header_64(0x82, 1 << 40)]),
            &["ws close 1009", "closed"],
        ),
        ws_frames(
            "rfc6455_7_4_1_a_frame_just_over_16_mib_fails_with_1009",
            false,
            raw(&[ws_header_64(0x82, (16 << 20) + 1)]),
            &["ws close 1009", "closed"],
        ),
        // §5.5.2: a Ping is answered with a Pong carrying its payload; §5.4: control frames
        // may come between the fragments of a message.
        ws_frames(
            "rfc6455_5_5_2_a_ping_is_answered_with_its_payload",
            true,
            raw(&[ws_frame(0x89, b"hello")]),
            &["ws pong hello", "open"],
        ),
        ws_frames(
            "rfc6455_5_4_a_ping_between_the_fragments_of_a_connect",
            false,
            raw(&[
                ws_frame(0x02, &connect("ping-between")[..5]),
                ws_frame(0x89, b"mid"),
                ws_frame(0x80, &connect("ping-between")[5..]),
            ]),
            &["ws pong mid", "CONNACK 0x00", "open"],
        ),
        ws_frames(
            "rfc6455_5_4_a_connect_in_three_fragments",
            false,
            raw(&[
                ws_frame(0x02, &connect("fragments")[..3]),
                ws_frame(0x00, &connect("fragments")[3..9]),
                ws_frame(0x80, &connect("fragments")[9..]),
            ]),
            &["CONNACK 0x00", "open"],
        ),
        ws_frames(
            "rfc6455_5_5_3_an_unsolicited_pong_is_ignored",
            true,
            raw(&[ws_frame(0x8A, b"unasked"), pingreq.clone()]),
            &["PINGRESP", "open"],
        ),
        ws_frames(
            "rfc6455_5_6_empty_binary_frames_between_packets",
            true,
            raw(&[ws_frame(0x82, &[]), ws_frame(0x82, &[]), pingreq.clone()]),
            &["PINGRESP", "open"],
        ),
        ws_frames(
            "rfc6455_5_3_a_masking_key_of_zeros_is_a_key",
            false,
            raw(&[ws_frame_with_mask(0x82, &connect("zero-mask"), [0; 4])]),
            &["CONNACK 0x00", "open"],
        ),
        // A frame header and nothing more: the MQTT CONNECT timeout closes it.
        ws_frames(
            "half_a_frame_header_is_closed_after_the_connect_timeout",
            false,
            raw(&[vec![0x82]]),
            &["ws close 1000", "closed"],
        ),
    ];

    // Upgrades that are not valid (RFC 6455 §4.2.1: "an appropriate error code (such as
    // 400 Bad Request)"; §4.4 for the version).
    let without = |header: &str| {
        upgrade_request("")
            .split("\r\n")
            .filter(|line| !line.starts_with(header))
            .collect::<Vec<_>>()
            .join("\r\n")
    };
    let replacing = |header: &str, line: &str| {
        upgrade_request("")
            .split("\r\n")
            .map(|l| if l.starts_with(header) { line } else { l })
            .collect::<Vec<_>>()
            .join("\r\n")
    };
    cases.extend([
        http(
            "rfc6455_4_2_1_an_upgrade_without_a_key_gets_400",
            without("Sec-WebSocket-Key"),
            &[],
        )
        .expect(&["HTTP 400"]),
        http(
            "rfc6455_4_2_1_a_key_not_of_16_bytes_gets_400",
            replacing("Sec-WebSocket-Key", "Sec-WebSocket-Key: AAAAAAAAAAA="),
            &[],
        )
        .expect(&["HTTP 400"]),
        http(
            "rfc6455_4_2_1_a_key_not_in_base64_gets_400",
            replacing(
                "Sec-WebSocket-Key",
                "Sec-WebSocket-Key: !!!!!!!!!!!!!!!!!!!!!!!!",
            ),
            &[],
        )
        .expect(&["HTTP 400"]),
        http(
            "rfc6455_4_4_an_upgrade_without_a_version_gets_426",
            without("Sec-WebSocket-Version"),
            &["sec-websocket-version"],
        )
        .expect(&["HTTP 426", "sec-websocket-version: 13"]),
        http(
            "rfc6455_4_2_1_an_upgrade_without_connection_upgrade_gets_400",
            without("Connection"),
            &[],
        )
        .expect(&["HTTP 400"]),
        http(
            "rfc6455_4_2_1_an_upgrade_to_another_protocol_gets_400",
            replacing("Upgrade", "Upgrade: h2c"),
            &[],
        )
        .expect(&["HTTP 400"]),
        http(
            "rfc6455_4_2_1_an_upgrade_over_http_1_0_gets_400",
            upgrade_request("").replacen("HTTP/1.1", "HTTP/1.0", 1),
            &[],
        )
        .expect(&["HTTP 400"]),
        // RFC 6455 §4.2.1: only GET upgrades; RFC 9110 §15.5.6: a 405 lists what is allowed.
        http(
            "rfc6455_4_2_1_an_upgrade_by_post_gets_405_with_allow",
            upgrade_request("Content-Length: 0\r\n").replacen("GET", "POST", 1),
            &["allow"],
        )
        .expect(&["HTTP 405", "allow: GET"]),
        http(
            "rfc9112_3_2_an_upgrade_without_host_gets_400",
            without("Host"),
            &[],
        )
        .expect(&["HTTP 400"]),
        http(
            "rfc6455_4_2_1_two_keys_get_400",
            upgrade_request("Sec-WebSocket-Key: AQIDBAUGBwgJCgsMDQ4PEA==\r\n"),
            &[],
        )
        .expect(&["HTTP 400"]),
        http(
            "an_upgrade_of_an_unknown_path_gets_404",
            upgrade_request("").replacen("/mqtt", "/nothing", 1),
            &[],
        )
        .expect(&["HTTP 404"]),
        // §9.1: an extension the server does not support is not accepted; the upgrade goes on.
        http(
            "rfc6455_9_1_an_extension_offered_is_not_accepted",
            upgrade_request("Sec-WebSocket-Extensions: permessage-deflate\r\n"),
            &["sec-websocket-extensions", "sec-websocket-protocol"],
        )
        .expect(&[
            "HTTP 101",
            "sec-websocket-extensions: none",
            "sec-websocket-protocol: mqtt",
        ]),
        http(
            "rfc6585_5_an_upgrade_head_over_the_limit_gets_431",
            upgrade_request(&format!("X-Padding: {}\r\n", "p".repeat(20 * 1024))),
            &[],
        )
        .expect(&["HTTP 431"]),
    ]);
    cases
}

// ---------------------------------------------------------------------------------------------
// The HTTP cases: the static files.

fn http_cases() -> Vec<Case> {
    let get =
        |target: &str| format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let request = |method: &str, target: &str| {
        format!(
            "{method} {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        )
    };
    let with_header = |line: &str| {
        format!("GET /rallymq.js HTTP/1.1\r\nHost: x\r\n{line}\r\nConnection: close\r\n\r\n")
    };
    let mut cases = vec![
        http("a_static_file_is_served", get("/rallymq.js"), &[]).expect(&["HTTP 200"]),
        http(
            "a_directory_without_its_slash_is_redirected",
            get("/tennis"),
            &["location"],
        )
        .expect(&["HTTP 301", "location: /tennis/"]),
    ];
    // Path traversal, raw and encoded (RFC 3986 §5.2.4 removes dot segments; an encoded
    // slash is data, not a separator, §2.2): nothing outside the embedded files exists.
    for (name, target) in [
        ("path_traversal_with_dot_segments", "/../../etc/passwd"),
        (
            "path_traversal_below_a_directory",
            "/tennis/../../../etc/passwd",
        ),
        (
            "path_traversal_with_encoded_dots",
            "/%2e%2e/%2e%2e/etc/passwd",
        ),
        (
            "path_traversal_with_encoded_dots_and_slashes",
            "/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        ),
        (
            "path_traversal_with_encoded_slashes",
            "/..%2f..%2fetc%2fpasswd",
        ),
        (
            "path_traversal_with_overlong_utf8_dots",
            "/%c0%ae%c0%ae/%c0%ae%c0%ae/etc/passwd",
        ),
        ("a_double_slash", "//etc/passwd"),
        ("an_encoded_slash_is_no_separator", "/tennis%2ftennis.js"),
        (
            "an_encoded_upper_case_slash_is_no_separator",
            "/tennis%2Ftennis.js",
        ),
        ("an_encoded_nul_after_a_file_name", "/rallymq.js%00.html"),
        ("a_dot_segment_before_a_file", "/./rallymq.js"),
        (
            "an_encoded_crlf_does_not_inject_a_header",
            "/tennis%0d%0aSet-Cookie:%20a=b",
        ),
    ] {
        cases.push(
            http(name, get(target), &["set-cookie"]).expect(&["HTTP 404", "set-cookie: none"]),
        );
    }
    cases.extend([
        // RFC 9112 §3: an invalid request-line gets 400.
        http(
            "rfc9112_3_a_raw_nul_in_the_target_gets_400",
            b"GET /rallymq.js\0 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
            &[],
        )
        .expect(&["HTTP 400"]),
        http(
            "rfc9112_3_a_raw_byte_0xff_in_the_target_gets_400",
            b"GET /\xFF HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
            &[],
        )
        .expect(&["HTTP 400"]),
        // RFC 9112 §3 says an invalid request-line SHOULD get 400; a backslash is no URI
        // character (RFC 3986 §2), but hyper takes it in a path: no such file, 404.
        http(
            "rfc9112_3_backslashes_in_the_target",
            get("/..\\..\\etc\\passwd"),
            &[],
        )
        .expect(&["HTTP 404"]),
        http(
            "rfc9112_3_a_request_line_without_a_version_gets_400",
            "GET\r\n\r\n",
            &[],
        )
        .expect(&["HTTP 400"]),
        http(
            "rfc9112_2_3_an_http_0_9_request_gets_400",
            "GET /\r\n\r\n",
            &[],
        )
        .expect(&["HTTP 400"]),
        // RFC 9112 §2.3: "A server can send a 505": an HTTP/2 preface on an HTTP/1.1 port
        // is not answered in HTTP/1.1 (RFC 9113 §3.3 says why it is made to fail there).
        http(
            "rfc9113_3_4_an_http_2_preface_is_not_served",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            &[],
        )
        .closing()
        .expect(&["closed"]),
        // RFC 9112 §3.2.2: a server MUST accept the absolute form.
        http(
            "rfc9112_3_2_2_the_absolute_form_is_accepted",
            get("http://x/rallymq.js"),
            &[],
        )
        .expect(&["HTTP 200"]),
        http(
            "rfc9112_3_2_2_the_absolute_form_with_traversal",
            get("http://x/../../etc/passwd"),
            &[],
        )
        .expect(&["HTTP 404"]),
        // RFC 9112 §2.2: an empty line before the request line SHOULD be ignored.
        http(
            "rfc9112_2_2_an_empty_line_before_the_request_is_ignored",
            format!("\r\n{}", get("/rallymq.js")),
            &[],
        )
        .expect(&["HTTP 200"]),
        // RFC 9112 §3.2: exactly one Host in an HTTP/1.1 request.
        http(
            "rfc9112_3_2_a_request_without_host_gets_400",
            "GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
            &[],
        )
        .expect(&["HTTP 400"]),
        http(
            "rfc9112_3_2_a_request_with_two_hosts_gets_400",
            with_header("Host: y"),
            &[],
        )
        .expect(&["HTTP 400"]),
        // RFC 9112 §5.1: whitespace between a field name and its colon MUST get 400; §5.2:
        // obsolete line folding is refused (or replaced); §2.2: a bare CR is invalid.
        http(
            "rfc9112_5_1_whitespace_before_the_colon_gets_400",
            with_header("X-Name : value"),
            &[],
        )
        .expect(&["HTTP 400"]),
        http(
            "rfc9112_5_2_obsolete_line_folding_gets_400",
            with_header("X-Folded: one\r\n two"),
            &[],
        )
        .expect(&["HTTP 400"]),
        http(
            "rfc9112_2_2_a_bare_cr_in_a_field_gets_400",
            with_header("X-Injected: a\rSet-Cookie: b=c"),
            &[],
        )
        .expect(&["HTTP 400"]),
        // RFC 6585 §5: 431 for header fields too large, in number or in size.
        http(
            "rfc6585_5_a_hundred_and_twenty_headers_get_431",
            with_header(
                &(0..120)
                    .map(|n| format!("X-H{n}: v"))
                    .collect::<Vec<_>>()
                    .join("\r\n"),
            ),
            &[],
        )
        .expect(&["HTTP 431"]),
        http(
            "rfc6585_5_one_header_over_the_limit_gets_431",
            with_header(&format!("X-Big: {}", "b".repeat(20 * 1024))),
            &[],
        )
        .expect(&["HTTP 431"]),
        // RFC 9112 §3: a target longer than the server parses MUST get 414. hyper answers any
        // head over its limit with 431 before the request reaches the broker: not the status
        // the RFC asks for (reported in issue 14), but the request is refused all the same.
        http(
            "rfc9112_3_a_target_over_the_limit_gets_431_not_414",
            get(&format!("/{}", "a".repeat(20 * 1024))),
            &[],
        )
        .expect(&["HTTP 431"]),
        // RFC 9112 §6.3: two different Content-Lengths, or a Transfer-Encoding that does not
        // end in chunked, MUST get 400 and a close.
        http(
            "rfc9112_6_3_two_content_lengths_get_400_and_a_close",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            &[],
        )
        .closing()
        .expect(&["HTTP 400", "closed"]),
        http(
            "rfc9112_6_3_a_transfer_encoding_not_ending_in_chunked_gets_400_and_a_close",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nab",
            &[],
        )
        .closing()
        .expect(&["HTTP 400", "closed"]),
        // RFC 9112 §6.1: with both Transfer-Encoding and Content-Length, the server MUST close
        // after responding: what follows is never read as a second request (smuggling).
        http(
            "rfc9112_6_1_content_length_with_transfer_encoding_closes_after_the_response",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n\
             0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
            &["allow"],
        )
        .closing()
        .expect(&["HTTP 405", "allow: GET, HEAD", "closed"]),
        // Two requests in one write get two answers, in order.
        http(
            "rfc9112_9_3_2_pipelined_requests_are_answered_in_order",
            format!(
                "GET /rallymq.js HTTP/1.1\r\nHost: x\r\n\r\n{}",
                get("/nothing")
            ),
            &[],
        )
        .expect(&["HTTP 200", "HTTP 404"]),
        // RFC 9110 §9.1: method names are case-sensitive, and an unknown one SHOULD get 501.
        http(
            "rfc9110_9_1_an_unknown_method_gets_501",
            request("BREW", "/"),
            &[],
        )
        .expect(&["HTTP 501"]),
        http(
            "rfc9110_9_1_a_lower_case_get_is_another_method",
            request("get", "/"),
            &[],
        )
        .expect(&["HTTP 501"]),
    ]);
    // RFC 9110 §15.5.6: methods the files do not support get 405, with an Allow header.
    for (name, method, target) in [
        ("rfc9110_15_5_6_post_gets_405_with_allow", "POST", "/"),
        (
            "rfc9110_15_5_6_post_to_a_missing_file_gets_405_with_allow",
            "POST",
            "/nothing",
        ),
        (
            "rfc9110_15_5_6_put_gets_405_with_allow",
            "PUT",
            "/rallymq.js",
        ),
        (
            "rfc9110_15_5_6_delete_gets_405_with_allow",
            "DELETE",
            "/rallymq.js",
        ),
        (
            "rfc9110_15_5_6_patch_gets_405_with_allow",
            "PATCH",
            "/rallymq.js",
        ),
        ("rfc9110_15_5_6_options_gets_405_with_allow", "OPTIONS", "/"),
        (
            "rfc9110_15_5_6_options_of_the_server_gets_405_with_allow",
            "OPTIONS",
            "*",
        ),
        ("rfc9110_15_5_6_trace_gets_405_with_allow", "TRACE", "/"),
        (
            "rfc9110_15_5_6_connect_gets_405_with_allow",
            "CONNECT",
            "127.0.0.1:1883",
        ),
        (
            "rfc9110_15_5_6_post_to_a_directory_gets_405_with_allow",
            "POST",
            "/tennis",
        ),
    ] {
        cases.push(
            http(name, request(method, target), &["allow"])
                .expect(&["HTTP 405", "allow: GET, HEAD"]),
        );
    }
    cases
}

fn all_cases() -> Vec<Case> {
    let mut cases = mqtt_cases();
    cases.extend(websocket_cases());
    cases.extend(http_cases());
    cases
}

// ---------------------------------------------------------------------------------------------
// Running a case.

/// What goes on the wire, in order.
enum Write {
    Bytes(Vec<u8>),
    Pause(Duration),
}

fn writes(case: &Case, transport: Transport, client_id: &str) -> Vec<Write> {
    let framed = |bytes: &[u8]| match transport {
        Transport::Ws => ws_frame(0x82, bytes),
        _ => bytes.to_vec(),
    };
    let mut writes = Vec::new();
    for step in &case.steps {
        match step {
            Step::Connect(connect) => {
                let mut connect = (**connect).clone();
                connect.client_id = rallymq_codec::MqttString::new(client_id).expect("valid id");
                writes.push(Write::Bytes(framed(&encode(connect.protocol, connect))));
            }
            Step::Send(bytes) => writes.push(Write::Bytes(framed(bytes))),
            Step::Trickle(bytes) => {
                for byte in bytes {
                    writes.push(Write::Bytes(framed(&[*byte])));
                    writes.push(Write::Pause(TRICKLE));
                }
            }
            Step::Raw(bytes) => writes.push(Write::Bytes(bytes.clone())),
            Step::Pause(pause) => writes.push(Write::Pause(*pause)),
        }
    }
    writes
}

/// Sends `writes` while reading what the broker sends; returns what it sent and whether it
/// closed the connection. With `settle`, stops once everything is written and the broker has
/// been quiet for `SETTLE`; else reads until the broker closes. Either way, within
/// `CASE_DEADLINE`.
async fn exchange(stream: TcpStream, writes: Vec<Write>, settle: bool) -> (Vec<u8>, bool) {
    let (mut reader, mut writer) = stream.into_split();
    let written_at = std::cell::Cell::new(None::<Instant>);
    let write = async {
        for write in writes {
            match write {
                Write::Bytes(bytes) => {
                    if writer.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
                Write::Pause(pause) => tokio::time::sleep(pause).await,
            }
        }
        written_at.set(Some(Instant::now()));
        // Returned, not dropped: dropping the write half would shut the socket's write side,
        // which the broker would read as the client leaving.
        writer
    };
    let read = async {
        let started = Instant::now();
        let mut received = Vec::new();
        let mut last_data = started;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let now = Instant::now();
            if now >= started + CASE_DEADLINE {
                return (received, false);
            }
            if settle
                && written_at
                    .get()
                    .is_some_and(|at| now >= at.max(last_data) + SETTLE)
            {
                return (received, false);
            }
            match tokio::time::timeout(Duration::from_millis(50), reader.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return (received, true),
                Ok(Ok(n)) => {
                    received.extend_from_slice(&buf[..n]);
                    last_data = Instant::now();
                }
                Err(_) => {}
            }
        }
    };
    let ((received, closed), _writer) = tokio::join!(read, write);
    (received, closed)
}

/// Upgrades `stream` to a WebSocket for MQTT; returns what came after the 101's head.
async fn upgrade(stream: &mut TcpStream) -> Result<Vec<u8>, String> {
    stream
        .write_all(upgrade_request("").as_bytes())
        .await
        .map_err(|e| format!("upgrade request: {e}"))?;
    let mut received = Vec::new();
    let mut buf = [0u8; 1024];
    let head_end = loop {
        if let Some(at) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        match tokio::time::timeout(support::WAIT, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => received.extend_from_slice(&buf[..n]),
            other => return Err(format!("no 101 to the upgrade: {other:?}")),
        }
    };
    if !received.starts_with(b"HTTP/1.1 101") {
        return Err(format!(
            "upgrade refused: {}",
            String::from_utf8_lossy(&received[..head_end])
        ));
    }
    Ok(received[head_end..].to_vec())
}

/// Runs one case over one transport; returns the reaction as entries.
async fn run_case(
    addrs: Addrs,
    index: usize,
    case: &Case,
    transport: Transport,
    expected: &[String],
) -> Vec<String> {
    let target = match transport {
        Transport::Tcp => addrs.tcp,
        Transport::Ws | Transport::Http => addrs.ws,
    };
    let mut stream = match TcpStream::connect(target).await {
        Ok(stream) => stream,
        Err(error) => return vec![format!("TCP connect failed: {error}")],
    };
    let _ = stream.set_nodelay(true);
    let mut received = Vec::new();
    if transport == Transport::Ws {
        match upgrade(&mut stream).await {
            Ok(rest) => received = rest,
            Err(error) => return vec![error],
        }
    }
    let client_id = format!("hostile-{index}-{transport:?}");
    let settle = !case.watch_close || expected.last().map(String::as_str) == Some("open");
    let (rest, closed) = exchange(stream, writes(case, transport, &client_id), settle).await;
    received.extend(rest);
    let mut reaction = match transport {
        Transport::Tcp => describe_mqtt(&mut MqttReader::new(case.version), &received),
        Transport::Ws => describe_websocket(case.version, &received),
        Transport::Http => describe_http(&received, case.headers),
    };
    reaction = runs(reaction);
    if case.watch_close {
        reaction.push(if closed { "closed" } else { "open" }.to_owned());
    }
    reaction
}

/// Every case over each of its transports, `CONCURRENCY` at a time; the failures.
async fn run_cases(addrs: Addrs, cases: &[Case]) -> Vec<String> {
    let runs = cases.iter().enumerate().flat_map(|(index, case)| {
        case.runs
            .iter()
            .map(move |(transport, expected)| (index, case, *transport, expected))
    });
    futures::stream::iter(runs)
        .map(|(index, case, transport, expected)| async move {
            let reaction = run_case(addrs, index, case, transport, expected).await;
            (reaction != *expected).then(|| {
                format!(
                    "{} over {transport:?}:\n    expected {expected:?}\n    got      {reaction:?}",
                    case.name
                )
            })
        })
        .buffer_unordered(CONCURRENCY)
        .filter_map(|failure| async move { failure })
        .collect()
        .await
}

// ---------------------------------------------------------------------------------------------
// Reading the broker's reactions.

/// `entries` with runs of three or more equal entries written once, as `entry xN`.
fn runs(entries: Vec<String>) -> Vec<String> {
    let mut out: Vec<(String, usize)> = Vec::new();
    for entry in entries {
        match out.last_mut() {
            Some((last, count)) if *last == entry => *count += 1,
            _ => out.push((entry, 1)),
        }
    }
    out.into_iter()
        .flat_map(|(entry, count)| {
            if count >= 3 {
                vec![format!("{entry} x{count}")]
            } else {
                vec![entry; count]
            }
        })
        .collect()
}

/// Reads MQTT packets from the broker's bytes.
struct MqttReader {
    version: ProtocolVersion,
    decoder: Decoder,
    buffer: BytesMut,
}

impl MqttReader {
    fn new(version: ProtocolVersion) -> Self {
        Self {
            version,
            decoder: Decoder::with_version(
                version,
                Limits {
                    max_packet_size: Limits::PROTOCOL_MAX_PACKET_SIZE,
                },
            ),
            buffer: BytesMut::new(),
        }
    }

    fn feed(&mut self, bytes: &[u8], out: &mut Vec<String>) {
        self.buffer.extend_from_slice(bytes);
        loop {
            match self.decoder.decode(&mut self.buffer) {
                Ok(Some(packet)) => out.push(describe_packet(&packet, self.version)),
                Ok(None) => return,
                Err(error) => {
                    out.push(format!("undecodable ({error}): {:02x?}", &self.buffer[..]));
                    self.buffer.clear();
                    return;
                }
            }
        }
    }

    fn finish(&self, out: &mut Vec<String>) {
        if !self.buffer.is_empty() {
            out.push(format!("incomplete: {:02x?}", &self.buffer[..]));
        }
    }
}

fn codes(codes: &[ReasonCode]) -> String {
    runs(
        codes
            .iter()
            .map(|code| format!("0x{:02x}", code.as_u8()))
            .collect(),
    )
    .join(", ")
}

fn describe_packet(packet: &Packet, version: ProtocolVersion) -> String {
    match packet {
        Packet::ConnAck(connack) => {
            let code = if version.is_v5() {
                connack.reason_code.as_u8()
            } else {
                connack.return_code()
            };
            format!("CONNACK 0x{code:02x}")
        }
        Packet::Disconnect(disconnect) => {
            format!("DISCONNECT 0x{:02x}", disconnect.reason_code.as_u8())
        }
        Packet::SubAck(suback) => format!("SUBACK [{}]", codes(&suback.reason_codes)),
        Packet::UnsubAck(unsuback) if version.is_v5() => {
            format!("UNSUBACK [{}]", codes(&unsuback.reason_codes))
        }
        Packet::UnsubAck(_) => "UNSUBACK".to_owned(),
        Packet::PubAck(ack) => format!("PUBACK 0x{:02x}", ack.reason_code.as_u8()),
        Packet::PubRec(ack) => format!("PUBREC 0x{:02x}", ack.reason_code.as_u8()),
        Packet::PubRel(ack) => format!("PUBREL 0x{:02x}", ack.reason_code.as_u8()),
        Packet::PubComp(ack) => format!("PUBCOMP 0x{:02x}", ack.reason_code.as_u8()),
        Packet::Publish(publish) => format!("PUBLISH {}", support::topic_str(publish)),
        Packet::PingResp => "PINGRESP".to_owned(),
        other => format!("{:?}", other.packet_type()),
    }
}

fn describe_mqtt(reader: &mut MqttReader, bytes: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    reader.feed(bytes, &mut out);
    reader.finish(&mut out);
    out
}

/// The broker's frames, read as a client reads them (unmasked, valid), with the MQTT packets
/// in its binary messages.
fn describe_websocket(version: ProtocolVersion, bytes: &[u8]) -> Vec<String> {
    let mut ws = Connection::client_with_random(
        Config::default(),
        RandomSource::from_fn(|buf| {
            buf.fill(1);
            Ok(())
        }),
    );
    ws.handle_bytes(bytes);
    let mut mqtt = MqttReader::new(version);
    let mut out = Vec::new();
    loop {
        match ws.poll_event() {
            Ok(Some(Event::Binary(data))) => mqtt.feed(&data, &mut out),
            Ok(Some(Event::Close(Some(close)))) => out.push(format!("ws close {}", close.code)),
            Ok(Some(Event::Close(None))) => out.push("ws close".to_owned()),
            Ok(Some(Event::Pong(data))) => {
                out.push(format!("ws pong {}", String::from_utf8_lossy(&data)))
            }
            Ok(Some(other)) => out.push(format!("ws {other:?}")),
            Ok(None) => break,
            Err(error) => {
                out.push(format!("ws frame refused: {error}"));
                break;
            }
        }
    }
    mqtt.finish(&mut out);
    out
}

/// The HTTP responses: each status, the asked headers (lower-case names) and, if a body holds
/// a password file, that.
fn describe_http(mut bytes: &[u8], headers: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let Some(head_end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
            out.push(format!("incomplete: {:?}", String::from_utf8_lossy(bytes)));
            break;
        };
        let head = String::from_utf8_lossy(&bytes[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        // "HTTP/1.1 200 OK", or "HTTP/1.0 .." to an HTTP/1.0 request.
        let status = lines
            .next()
            .and_then(|line| line.strip_prefix("HTTP/1."))
            .and_then(|rest| rest.get(2..5))
            .unwrap_or("?");
        out.push(format!("HTTP {status}"));
        let fields: Vec<(String, String)> = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
            .collect();
        for wanted in headers {
            let values: Vec<&str> = fields
                .iter()
                .filter(|(name, _)| name == wanted)
                .map(|(_, value)| value.as_str())
                .collect();
            let shown = if values.is_empty() {
                "none".to_owned()
            } else {
                values.join(" | ")
            };
            out.push(format!("{wanted}: {shown}"));
        }
        let length = fields
            .iter()
            .find(|(name, _)| name == "content-length")
            .and_then(|(_, value)| value.parse::<usize>().ok());
        let body_start = head_end + 4;
        let body_end = match (status, length) {
            ("101", _) => bytes.len(),
            (_, Some(length)) => (body_start + length).min(bytes.len()),
            _ => bytes.len(),
        };
        if String::from_utf8_lossy(&bytes[body_start..body_end]).contains("root:") {
            out.push("a password file in the body".to_owned());
        }
        bytes = &bytes[body_end..];
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Bystanders: clients minding their own business while the attackers attack.

/// A client that subscribes to its own topic and publishes to it, one QoS 1 message after
/// another, each of which must come back, until told to stop.
struct Bystander {
    name: &'static str,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Result<u32, String>>,
}

impl Bystander {
    async fn start<IO>(name: &'static str, mut client: TestClient<IO>) -> Self
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let topic = format!("bystander/{name}");
        let granted = client
            .subscribe(vec![subscription(&topic, QoS::AtLeastOnce)])
            .await;
        assert_eq!(granted, [ReasonCode::GrantedQoS1], "{name} subscribes");
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let mut sent = 0u32;
            while !stopped.load(Ordering::Relaxed) {
                sent += 1;
                let payload = sent.to_string();
                let code = client
                    .publish(message(&topic, &payload, QoS::AtLeastOnce))
                    .await;
                if code != ReasonCode::Success {
                    return Err(format!("message {sent} acknowledged with {code:?}"));
                }
                match client.recv().await {
                    Some(got) if payload_str(&got) == payload => {}
                    other => return Err(format!("message {sent} came back as {other:?}")),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            client.disconnect(ReasonCode::Success).await;
            Ok(sent)
        });
        Self { name, stop, task }
    }

    /// Stops it; how many messages went round, or what went wrong.
    async fn finish(self) -> Result<u32, String> {
        self.stop.store(true, Ordering::Relaxed);
        match tokio::time::timeout(Duration::from_secs(10), self.task).await {
            Ok(Ok(Ok(sent))) if sent > 0 => Ok(sent),
            Ok(Ok(Ok(_))) => Err(format!("{}: sent nothing", self.name)),
            Ok(Ok(Err(error))) => Err(format!("{}: {error}", self.name)),
            Ok(Err(panic)) => Err(format!("{}: {panic}", self.name)),
            Err(_) => Err(format!("{}: did not stop in time", self.name)),
        }
    }
}

/// A TestClient over MQTT over WebSockets.
async fn ws_client(
    addr: SocketAddr,
    connect: Connect,
) -> TestClient<rallymq_websocket::tokio::ByteStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await.expect("TCP connect");
    let request = ClientRequest::new(&addr.to_string(), "/mqtt")
        .expect("a valid request")
        .with_subprotocols(&["mqtt"])
        .expect("a valid subprotocol");
    let (ws, _) = ws_connect(tcp, &request, Config::default())
        .await
        .expect("upgrade");
    let (client, connected) = TestClient::over(ws.into_byte_stream(), connect).await;
    assert!(
        matches!(connected, rallymq_session::ClientEvent::Connected { .. }),
        "{connected:?}"
    );
    client
}

struct Bystanders(Vec<Bystander>);

impl Bystanders {
    async fn start(addrs: Addrs) -> Self {
        let (tcp, connected) =
            TestClient::tcp(addrs.tcp, connect_packet(V5, "bystander-tcp")).await;
        assert!(
            matches!(connected, rallymq_session::ClientEvent::Connected { .. }),
            "{connected:?}"
        );
        let ws = ws_client(addrs.ws, connect_packet(V311, "bystander-ws")).await;
        Self(vec![
            Bystander::start("tcp", tcp).await,
            Bystander::start("ws", ws).await,
        ])
    }

    /// Stops them; a failure for each that did not get every message back.
    async fn finish(self) -> Vec<String> {
        let mut failures = Vec::new();
        for bystander in self.0 {
            match bystander.finish().await {
                Ok(sent) => eprintln!("bystander: {sent} messages went round"),
                Err(error) => failures.push(format!("bystander {error}")),
            }
        }
        failures
    }
}

/// After the attack: new clients, over TCP and WebSockets, connect and exchange a message.
async fn new_clients_are_served(addrs: Addrs) -> Vec<String> {
    let (mut tcp, connected) = TestClient::tcp(addrs.tcp, connect_packet(V5, "after-tcp")).await;
    if !matches!(connected, rallymq_session::ClientEvent::Connected { .. }) {
        return vec![format!("a new TCP client: {connected:?}")];
    }
    let mut ws = ws_client(addrs.ws, connect_packet(V311, "after-ws")).await;
    for client_subscribes in [
        tcp.subscribe(vec![subscription("after/#", QoS::AtLeastOnce)])
            .await,
        ws.subscribe(vec![subscription("after/#", QoS::AtLeastOnce)])
            .await,
    ] {
        assert_eq!(client_subscribes, [ReasonCode::GrantedQoS1]);
    }
    tcp.publish(message("after/attack", "still here", QoS::AtLeastOnce))
        .await;
    let mut failures = Vec::new();
    for (name, got) in [("TCP", tcp.recv().await), ("WebSocket", ws.recv().await)] {
        if got.as_ref().map(payload_str).as_deref() != Some("still here") {
            failures.push(format!("a new {name} client got {got:?}"));
        }
    }
    tcp.disconnect(ReasonCode::Success).await;
    ws.disconnect(ReasonCode::Success).await;
    failures
}

// ---------------------------------------------------------------------------------------------
// The tests.

/// Runs `cases` against a broker of their own, with the bystanders, and checks everything.
async fn attack(section: &str, cases: Vec<Case>) {
    let _serial = SERIAL.lock().await;
    let broker = hostile_broker().await;
    let addrs = Addrs::of(&broker);
    let bystanders = Bystanders::start(addrs).await;
    let started = Instant::now();
    let mut failures = run_cases(addrs, &cases).await;
    let runs: usize = cases.iter().map(|case| case.runs.len()).sum();
    eprintln!(
        "{section}: {} cases, {runs} connections, in {:?}",
        cases.len(),
        started.elapsed()
    );
    failures.extend(bystanders.finish().await);
    failures.extend(new_clients_are_served(addrs).await);
    broker.shutdown(Duration::from_millis(300)).await;
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_mqtt_over_tcp_and_websockets() {
    attack("MQTT", mqtt_cases()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_websocket_frames_and_upgrades() {
    attack("WebSocket", websocket_cases()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_http_requests() {
    attack("HTTP", http_cases()).await;
}

/// A client that stops reading while the broker has more for it than the socket buffers hold
/// is closed once the broker's write has made no progress for `send_timeout` (1 s here). It
/// was not: the connection's task waited in its write, where no timer ran and nothing was
/// read (so its keep alive of 1 s could not end it either), for as long as the client's TCP
/// stack kept the connection up, holding its slot and its queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_after_the_send_timeout() {
    let _serial = SERIAL.lock().await;
    let broker = hostile_broker().await;
    let addrs = Addrs::of(&broker);
    let mut stream = TcpStream::connect(addrs.tcp).await.expect("TCP connect");
    let mut connect = connect_packet(V5, "stops-reading");
    connect.keep_alive = 1;
    stream
        .write_all(&encode(V5, connect))
        .await
        .expect("CONNECT sent");
    stream
        .write_all(&subscribe_bytes(V5, "to/itself"))
        .await
        .expect("SUBSCRIBE sent");
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Messages to itself, far more than the socket buffers hold, and never a byte read.
    let big = encode(
        V5,
        message("to/itself", &"x".repeat(60_000), QoS::AtMostOnce),
    );
    let (_unread, mut writer) = stream.into_split();
    for _ in 0..300 {
        let write = tokio::time::timeout(Duration::from_millis(500), writer.write_all(&big));
        if !matches!(write.await, Ok(Ok(()))) {
            break;
        }
    }
    let silent_since = Instant::now();
    let deadline = silent_since + Duration::from_secs(8);
    while broker.clients_connected() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let connected = broker.clients_connected();
    broker.shutdown(Duration::from_millis(300)).await;
    assert_eq!(
        connected,
        0,
        "still connected {:?} after its last packet (keep alive and send timeout 1 s)",
        silent_since.elapsed()
    );
}

/// Issue 14 asks for at least 100 cases; names are unique, so that a failure says which.
#[test]
fn the_suite_has_over_100_cases_with_unique_names() {
    let cases = all_cases();
    assert!(cases.len() >= 100, "{} cases", cases.len());
    let mut names: Vec<&str> = cases.iter().map(|case| case.name.as_str()).collect();
    names.sort_unstable();
    let before = names.len();
    names.dedup();
    assert_eq!(names.len(), before, "duplicate case names");
}

/// How far above its baseline the memory held may be once the attackers have left (see
/// `memory_returns_to_its_baseline_after_the_attackers_leave`).
const MEMORY_BOUND: isize = 64 * 1024;

/// Waits until the runtime has no more tasks than `tasks` (every connection the attackers
/// opened has ended); false if that takes over 10 s.
async fn connections_ended(tasks: usize) -> bool {
    let metrics = tokio::runtime::Handle::current().metrics();
    let deadline = Instant::now() + Duration::from_secs(10);
    while metrics.num_alive_tasks() > tasks {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// The memory the broker holds returns to its baseline once the attackers have left.
///
/// Counted in-process: bytes allocated and not freed, in this whole test binary, with the
/// broker and two bystanders running, between two full runs of every case (the first warms up
/// what grows once and stays: tables sized to a peak, the runtime's timer wheel, the slab of
/// task cells). After the second run, once every connection's task has ended, what is held
/// must be within `MEMORY_BOUND` of the baseline.
///
/// Why 64 KiB, and not also 20% of the baseline: the baseline (about 1.5 MB) is mostly this
/// test's own table of cases (payloads of 64 KiB, heads of 20 KiB, a SUBSCRIBE of 500
/// filters), so 20% of it would be 300 KB, room enough to hide a leak of 512 bytes on each of
/// the run's 350 connections (checked: such a leak, put in by hand into the broker's
/// connection, fails this test at 64 KiB and passes at 20%). What moves between two quiet
/// moments is the bystanders' traffic, a few KiB at most; the runs measured so far came back
/// within a few hundred bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_returns_to_its_baseline_after_the_attackers_leave() {
    let _serial = SERIAL.lock().await;
    let broker = hostile_broker().await;
    let addrs = Addrs::of(&broker);
    let bystanders = Bystanders::start(addrs).await;
    let tasks = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    let cases = all_cases();

    let failures = run_cases(addrs, &cases).await;
    assert!(failures.is_empty(), "warming up:\n{}", failures.join("\n"));
    assert!(
        connections_ended(tasks).await,
        "connections still open after the warm-up"
    );
    let baseline = live_bytes();

    let failures = run_cases(addrs, &cases).await;
    assert!(failures.is_empty(), "second run:\n{}", failures.join("\n"));
    drop(failures);
    assert!(
        connections_ended(tasks).await,
        "connections still open after the attack"
    );
    let bound = MEMORY_BOUND;
    // Settling: what a connection frees as it ends may be freed on another thread a little
    // later than its task ends.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut after = live_bytes();
    while after - baseline > bound && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        after = live_bytes();
    }
    eprintln!(
        "memory: {baseline} bytes held before the attack, {after} after ({:+}), bound {bound}",
        after - baseline
    );
    let bystanders = bystanders.finish().await;
    assert!(bystanders.is_empty(), "{bystanders:?}");
    broker.shutdown(Duration::from_millis(300)).await;
    assert!(
        after - baseline <= bound,
        "{after} bytes held after the attack, {baseline} before: {} more than the bound of {bound}",
        after - baseline - bound
    );
}

//! `rallymq-codec` beside `mqttbytes` 0.6 (the codec of rumqtt), in the same run.
//!
//! Each criterion group is one packet shape and holds two functions, `rallymq` and
//! `mqttbytes`, so the ratio between them survives a noisy machine.
//!
//! * **decode**: from a `BytesMut` holding exactly one encoded packet to a decoded packet. The
//!   buffer is cloned from a prepared one in `iter_batched`'s setup, outside the timed part,
//!   and the decoded packet and what is left of the buffer are dropped outside it too, so both
//!   sides are timed for the same work. Both decode the same bytes (encoded by us; the
//!   cross-check in `crates/codec/tests/mqttbytes_interop.rs` shows `mqttbytes` reads them).
//! * **encode**: from a built packet into a `BytesMut` allocated, with room for the packet, in
//!   the setup.
//!
//! Decode batches are a fixed [`BATCH`] iterations. Criterion collects a batch's outputs into
//! a `Vec` allocated before the timer starts and first written inside it; with
//! `BatchSize::SmallInput` a batch is a tenth of a sample, megabytes of fresh pages, so the
//! timing can include page faults in proportion to the size of each crate's packet type (432
//! bytes for ours when this was written, 80 since properties sit behind a pointer; 144 for
//! `mqttbytes`' 3.1.1 packet), which a decoder in use does not pay. A
//! small batch reuses warm heap memory. Encode keeps `SmallInput`: its outputs are small, and
//! with 64-iteration batches the 64 KiB cases measured 20 to 40 times slower for both crates
//! (the setup's fresh buffers, it seems, being faulted in by the timed writes).
//!
//! Shapes: PUBLISH QoS 1 with a 20-byte topic and 16 B, 1 KiB and 64 KiB payloads, for MQTT
//! 3.1.1 and 5.0; an MQTT 5 CONNECT with properties, will and credentials; SUBSCRIBE with ten
//! filters for MQTT 3.1.1 and 5.0.

use std::hint::black_box;
use std::num::{NonZeroU16, NonZeroU32};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use criterion::{
    BatchSize, BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main,
    measurement::WallTime,
};
use mqttbytes::{v4, v5};
use rallymq_codec::{
    Connect, ConnectProperties, Limits, MqttString, Packet, PacketId, ProtocolVersion, Publish,
    QoS, RetainHandling, Subscribe, SubscribeProperties, Subscription, SubscriptionOptions,
    TopicFilter, TopicName, UserProperty, Will, WillProperties, decode,
};

const V4: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;

/// Iterations per timed batch (see the module docs).
const BATCH: u64 = 64;

/// Exactly 20 bytes.
const TOPIC: &str = "sensors/hall-3/temp1";

fn configure(group: &mut BenchmarkGroup<'_, WallTime>) {
    // Short runs: the whole file must finish in a few minutes on a shared 2-core machine.
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(2));
}

// ------------------------------------------------------------------------------------------
// The packets, built for each crate with the same fields

fn publish_ours(payload: &Bytes) -> Packet {
    let mut publish = Publish::new(TopicName::new(TOPIC).expect("valid topic"), payload.clone());
    publish.qos = QoS::AtLeastOnce;
    publish.packet_id = PacketId::new(42);
    Packet::Publish(publish)
}

fn publish_mb4(payload: &Bytes) -> v4::Publish {
    let mut publish = v4::Publish::from_bytes(TOPIC, mqttbytes::QoS::AtLeastOnce, payload.clone());
    publish.pkid = 42;
    publish
}

fn publish_mb5(payload: &Bytes) -> v5::Publish {
    let mut publish = v5::Publish::from_bytes(TOPIC, mqttbytes::QoS::AtLeastOnce, payload.clone());
    publish.pkid = 42;
    publish
}

fn text(s: &str) -> MqttString {
    MqttString::new(s).expect("valid string")
}

fn connect_ours() -> Packet {
    let mut connect = Connect::new(V5, text("bench-client-0001"));
    connect.keep_alive = 30;
    connect.properties = ConnectProperties {
        session_expiry_interval: Some(3600),
        receive_maximum: NonZeroU16::new(100),
        maximum_packet_size: NonZeroU32::new(1 << 20),
        topic_alias_maximum: Some(16),
        request_problem_information: Some(true),
        user_properties: vec![
            UserProperty::new("region", "eu-west").expect("valid"),
            UserProperty::new("build", "2026.11").expect("valid"),
        ],
        ..ConnectProperties::default()
    }
    .into();
    connect.will = Some(Will {
        topic: TopicName::new("clients/bench-client-0001/status").expect("valid topic"),
        payload: Bytes::from_static(b"offline"),
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: WillProperties {
            will_delay_interval: Some(5),
            content_type: Some(text("text/plain")),
            ..WillProperties::default()
        }
        .into(),
    });
    connect.username = Some(text("bench-user"));
    connect.password = Some(Bytes::from_static(b"bench-password"));
    Packet::from(connect)
}

fn connect_mb5() -> v5::Connect {
    let mut connect = v5::Connect::new("bench-client-0001");
    connect.keep_alive = 30;
    connect.properties = Some(v5::ConnectProperties {
        session_expiry_interval: Some(3600),
        receive_maximum: Some(100),
        max_packet_size: Some(1 << 20),
        topic_alias_max: Some(16),
        request_response_info: None,
        request_problem_info: Some(1),
        user_properties: vec![
            ("region".into(), "eu-west".into()),
            ("build".into(), "2026.11".into()),
        ],
        authentication_method: None,
        authentication_data: None,
    });
    connect.last_will = Some(v5::LastWill {
        topic: "clients/bench-client-0001/status".into(),
        message: Bytes::from_static(b"offline"),
        qos: mqttbytes::QoS::AtLeastOnce,
        retain: true,
        properties: Some(v5::WillProperties {
            delay_interval: Some(5),
            payload_format_indicator: None,
            message_expiry_interval: None,
            content_type: Some("text/plain".into()),
            response_topic: None,
            correlation_data: None,
            user_properties: Vec::new(),
        }),
    });
    connect.set_login("bench-user", "bench-password");
    connect
}

/// Ten filters of mixed shapes: exact, `+`, `#`, and a shared subscription.
fn filters() -> Vec<String> {
    (0..10)
        .map(|i| match i % 4 {
            0 => format!("site/{i}/device/+/temperature"),
            1 => format!("site/{i}/device/7/#"),
            2 => format!("$share/workers/jobs/{i}/+"),
            _ => format!("site/{i}/alerts"),
        })
        .collect()
}

fn subscribe_ours(version: ProtocolVersion) -> Packet {
    let subscriptions = filters()
        .into_iter()
        .map(|f| {
            let mut subscription =
                Subscription::new(TopicFilter::new(f).expect("valid filter"), QoS::AtLeastOnce);
            if version.is_v5() {
                subscription.options = SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    no_local: false,
                    retain_as_published: true,
                    retain_handling: RetainHandling::SendAtSubscribeIfNew,
                };
            }
            subscription
        })
        .collect();
    Packet::Subscribe(Subscribe {
        packet_id: PacketId::new(7).expect("not 0"),
        properties: SubscribeProperties::default().into(),
        subscriptions,
    })
}

fn subscribe_mb4() -> v4::Subscribe {
    let mut subscribe = v4::Subscribe::new_many(
        filters()
            .into_iter()
            .map(|f| v4::SubscribeFilter::new(f, mqttbytes::QoS::AtLeastOnce)),
    );
    subscribe.pkid = 7;
    subscribe
}

fn subscribe_mb5() -> v5::Subscribe {
    let mut subscribe = v5::Subscribe::new_many(filters().into_iter().map(|f| {
        let mut filter = v5::SubscribeFilter::new(f, mqttbytes::QoS::AtLeastOnce);
        filter
            .set_preserve_retain(true)
            .set_retain_forward_rule(v5::RetainForwardRule::OnNewSubscribe);
        filter
    }));
    subscribe.pkid = 7;
    subscribe
}

// ------------------------------------------------------------------------------------------
// The two measurements, shared by every shape

/// Decodes `wire` (one packet) with both crates. Each routine returns its decoded packet, so
/// that both are dropped outside the timed part.
fn bench_decode<R>(
    c: &mut Criterion,
    name: &str,
    wire: &[u8],
    version: ProtocolVersion,
    mqttbytes_read: fn(&mut BytesMut) -> Result<R, mqttbytes::Error>,
) {
    let prepared = BytesMut::from(wire);
    // Both decoders must accept these bytes, or the comparison is meaningless.
    assert!(
        mqttbytes_read(&mut prepared.clone()).is_ok(),
        "mqttbytes reads {name}"
    );
    assert!(matches!(
        decode(&mut prepared.clone(), version, &Limits::default()),
        Ok(Some(_))
    ));

    interleaved_decode(name, &prepared, version, mqttbytes_read);

    let mut group = c.benchmark_group(format!("decode/{name}"));
    configure(&mut group);
    group.throughput(Throughput::Bytes(wire.len() as u64));
    let limits = Limits::default();
    group.bench_function("rallymq", |b| {
        b.iter_batched(
            || prepared.clone(),
            |mut buf| {
                let packet = decode(&mut buf, version, &limits);
                (packet, buf)
            },
            BatchSize::NumIterations(BATCH),
        )
    });
    group.bench_function("mqttbytes", |b| {
        b.iter_batched(
            || prepared.clone(),
            |mut buf| {
                let packet = mqttbytes_read(&mut buf);
                (packet, buf)
            },
            BatchSize::NumIterations(BATCH),
        )
    });
    group.finish();
}

/// Decodes `prepared` with both crates in alternating batches of [`BATCH`] for two seconds and
/// prints the fastest batch of each, per packet, and their ratio. On a machine shared with
/// other work the fastest batch is the figure least disturbed by it, and alternating exposes
/// both crates to the same load; criterion's figures that follow are averages, which carry
/// whatever else the machine was doing.
fn interleaved_decode<R>(
    name: &str,
    prepared: &BytesMut,
    version: ProtocolVersion,
    mqttbytes_read: fn(&mut BytesMut) -> Result<R, mqttbytes::Error>,
) {
    let limits = Limits::default();
    let batch = BATCH as usize;
    let mut inputs: Vec<BytesMut> = Vec::with_capacity(batch);
    let mut ours = Vec::with_capacity(batch);
    let mut theirs = Vec::with_capacity(batch);
    let (mut best_ours, mut best_theirs) = (Duration::MAX, Duration::MAX);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        best_ours = best_ours.min(time_batch(prepared, &mut inputs, &mut ours, |buf| {
            decode(buf, version, &limits)
        }));
        best_theirs = best_theirs.min(time_batch(
            prepared,
            &mut inputs,
            &mut theirs,
            mqttbytes_read,
        ));
    }
    let per_packet = |best: Duration| best.as_secs_f64() * 1e9 / batch as f64;
    println!(
        "interleaved decode/{name}: fastest {BATCH}-packet batch: rallymq {:.1} ns/packet, \
         mqttbytes {:.1} ns/packet, mqttbytes/rallymq = {:.2}x",
        per_packet(best_ours),
        per_packet(best_theirs),
        best_theirs.as_secs_f64() / best_ours.as_secs_f64()
    );
}

/// Fills `inputs` with [`BATCH`] copies of `prepared`, then times only the decoding of them all
/// with `decode_one` into `outputs` (results kept, not dropped inside the timer), and empties
/// both afterwards. Returns the time the decoding took.
fn time_batch<T>(
    prepared: &BytesMut,
    inputs: &mut Vec<BytesMut>,
    outputs: &mut Vec<T>,
    mut decode_one: impl FnMut(&mut BytesMut) -> T,
) -> Duration {
    inputs.extend((0..BATCH as usize).map(|_| prepared.clone()));
    let timer = Instant::now();
    outputs.extend(inputs.iter_mut().map(|buf| black_box(decode_one(buf))));
    let elapsed = timer.elapsed();
    outputs.clear();
    inputs.clear();
    elapsed
}

/// Encodes `ours` and the mqttbytes equivalent (`theirs`) into buffers of `len` bytes.
fn bench_encode<T>(
    c: &mut Criterion,
    name: &str,
    ours: &Packet,
    version: ProtocolVersion,
    theirs: &T,
    mqttbytes_write: fn(&T, &mut BytesMut),
) {
    let len = ours.encoded_len(version);
    let mut check = BytesMut::new();
    mqttbytes_write(theirs, &mut check);
    // Same packet on both sides: same size on the wire.
    assert_eq!(
        check.len(),
        len,
        "{name}: both crates encode the same packet"
    );

    let mut group = c.benchmark_group(format!("encode/{name}"));
    configure(&mut group);
    group.throughput(Throughput::Bytes(len as u64));
    group.bench_function("rallymq", |b| {
        b.iter_batched(
            || BytesMut::with_capacity(len),
            |mut buf| {
                let result = black_box(ours).encode(version, &mut buf);
                (result, buf)
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("mqttbytes", |b| {
        b.iter_batched(
            || BytesMut::with_capacity(len),
            |mut buf| {
                mqttbytes_write(black_box(theirs), &mut buf);
                buf
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn read_mb4(buf: &mut BytesMut) -> Result<v4::Packet, mqttbytes::Error> {
    v4::read(buf, usize::MAX)
}

fn read_mb5(buf: &mut BytesMut) -> Result<v5::Packet, mqttbytes::Error> {
    v5::read(buf, usize::MAX)
}

fn ours_wire(packet: &Packet, version: ProtocolVersion) -> Bytes {
    packet.to_bytes(version).expect("encodable")
}

fn publish(c: &mut Criterion) {
    for (label, size) in [("16B", 16), ("1KiB", 1024), ("64KiB", 64 * 1024)] {
        let payload = Bytes::from((0..size).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
        let ours = publish_ours(&payload);
        for version in [V4, V5] {
            let name = format!("publish_{}/{label}", tag(version));
            let wire = ours_wire(&ours, version);
            if version.is_v5() {
                bench_decode(c, &name, &wire, version, read_mb5);
                bench_encode(
                    c,
                    &name,
                    &ours,
                    version,
                    &publish_mb5(&payload),
                    |p, buf| {
                        p.write(buf).expect("mqttbytes encodes");
                    },
                );
            } else {
                bench_decode(c, &name, &wire, version, read_mb4);
                bench_encode(
                    c,
                    &name,
                    &ours,
                    version,
                    &publish_mb4(&payload),
                    |p, buf| {
                        p.write(buf).expect("mqttbytes encodes");
                    },
                );
            }
        }
    }
}

fn connect(c: &mut Criterion) {
    let ours = connect_ours();
    bench_decode(c, "connect_v5", &ours_wire(&ours, V5), V5, read_mb5);
    bench_encode(c, "connect_v5", &ours, V5, &connect_mb5(), |p, buf| {
        p.write(buf).expect("mqttbytes encodes");
    });
}

fn subscribe(c: &mut Criterion) {
    for version in [V4, V5] {
        let ours = subscribe_ours(version);
        let name = format!("subscribe_{}/10_filters", tag(version));
        let wire = ours_wire(&ours, version);
        if version.is_v5() {
            bench_decode(c, &name, &wire, version, read_mb5);
            bench_encode(c, &name, &ours, version, &subscribe_mb5(), |p, buf| {
                p.write(buf).expect("mqttbytes encodes");
            });
        } else {
            bench_decode(c, &name, &wire, version, read_mb4);
            bench_encode(c, &name, &ours, version, &subscribe_mb4(), |p, buf| {
                p.write(buf).expect("mqttbytes encodes");
            });
        }
    }
}

fn tag(version: ProtocolVersion) -> &'static str {
    if version.is_v5() { "v5" } else { "v311" }
}

criterion_group!(benches, publish, connect, subscribe);
criterion_main!(benches);

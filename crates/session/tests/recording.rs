//! `ClientConfig::record_packets`: the client engine keeps a copy of each packet it encodes and
//! decodes, for packet traces (`rallymq sub -d`), in the order it handled them.

mod support;

use rallymq_codec::{Packet, PacketType, ProtocolVersion, QoS};
use rallymq_session::{ClientConfig, PacketDirection, ServerConfig};
use support::{Pair, connect_packet, publish};

fn recorded(pair: &mut Pair) -> Vec<(PacketDirection, Packet)> {
    std::iter::from_fn(|| pair.client.poll_recorded_packet()).collect()
}

fn only(records: &[(PacketDirection, Packet)], direction: PacketDirection) -> Vec<Packet> {
    records
        .iter()
        .filter(|(d, _)| *d == direction)
        .map(|(_, packet)| packet.clone())
        .collect()
}

#[test]
fn recorded_packets_are_the_packets_on_the_wire_in_the_order_handled() {
    for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let mut config = ClientConfig::new(connect_packet(version, "tracer"));
        config.record_packets = true;
        let mut pair = Pair::new(config, ServerConfig::default());
        pair.connect();
        pair.client
            .publish(pair.now, publish("a/b", QoS::ExactlyOnce, b"up"))
            .expect("room in the window");
        pair.server
            .deliver(pair.now, publish("c/d", QoS::ExactlyOnce, b"down"))
            .expect("connected");
        pair.drive();

        let records = recorded(&mut pair);
        assert_eq!(
            only(&records, PacketDirection::Sent),
            pair.packets_to_server(version),
            "{version:?}: every packet sent, once, in order"
        );
        assert_eq!(
            only(&records, PacketDirection::Received),
            pair.packets_to_client(version),
            "{version:?}: every packet received, once, in order"
        );
        // Interleaved as handled: the PUBREC answering the broker's PUBLISH comes right after it.
        let received_publish = records
            .iter()
            .position(|(d, p)| {
                *d == PacketDirection::Received && p.packet_type() == PacketType::Publish
            })
            .expect("the delivery was received");
        assert_eq!(
            records[received_publish + 1].0,
            PacketDirection::Sent,
            "{version:?}: {records:?}"
        );
        assert_eq!(
            records[received_publish + 1].1.packet_type(),
            PacketType::PubRec
        );
        assert_eq!(records[0].1.packet_type(), PacketType::Connect);
        assert!(pair.client.poll_recorded_packet().is_none(), "taken once");
    }
}

#[test]
fn nothing_is_recorded_unless_asked() {
    let mut pair = Pair::connected(ProtocolVersion::V5);
    pair.client
        .publish(pair.now, publish("a/b", QoS::AtLeastOnce, b"x"))
        .expect("room in the window");
    pair.drive();
    assert!(pair.client.poll_recorded_packet().is_none());
}

//! `-d`: the packet trace `mosquitto_pub -d` and `mosquitto_sub -d` print on stdout, one line
//! per packet sent and received, worded as libmosquitto's debug log words them.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Write;
use std::sync::Mutex;

use rallymq_client::{Packet, PacketDirection, ProtocolVersion};

/// The trace of one client.
#[derive(Debug)]
pub(crate) struct Trace {
    /// The client id the lines name: the one sent, or the one the broker assigned (MQTT 5);
    /// `(null)` while there is none, as in C.
    client_id: Mutex<String>,
    /// Topic aliases in use each way (sent: false, true), so that a PUBLISH that carries only
    /// its alias is printed with its topic, as libmosquitto prints it.
    aliases: Mutex<HashMap<(bool, u16), String>>,
    version: ProtocolVersion,
    /// `sub -d` also prints `Subscribed (mid: N): QOS, ...` when SUBACK comes.
    subscriber: bool,
}

impl Trace {
    pub(crate) fn new(client_id: &str, version: ProtocolVersion, subscriber: bool) -> Self {
        let client_id = if client_id.is_empty() {
            "(null)".to_owned()
        } else {
            client_id.to_owned()
        };
        Self {
            client_id: Mutex::new(client_id),
            aliases: Mutex::default(),
            version,
            subscriber,
        }
    }

    /// Prints the lines for one packet. A stdout that cannot be written to loses the trace,
    /// not the connection.
    pub(crate) fn print(&self, direction: PacketDirection, packet: &Packet) {
        let lines = self.lines(direction, packet);
        let mut stdout = std::io::stdout().lock();
        for line in lines {
            let _ = writeln!(stdout, "{line}");
        }
        let _ = stdout.flush();
    }

    /// The lines for one packet.
    pub(crate) fn lines(&self, direction: PacketDirection, packet: &Packet) -> Vec<String> {
        let mut client_id = self
            .client_id
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let (PacketDirection::Received, Packet::ConnAck(connack)) = (direction, packet)
            && let Some(assigned) = &connack.properties.assigned_client_identifier
        {
            *client_id = assigned.as_str().to_owned();
        }
        let id = client_id.as_str();
        let sent = direction == PacketDirection::Sent;
        let verb = if sent { "sending" } else { "received" };
        let mut lines = Vec::new();
        match packet {
            Packet::Connect(_) => lines.push(format!("Client {id} {verb} CONNECT")),
            Packet::ConnAck(connack) => lines.push(format!(
                "Client {id} {verb} CONNACK ({})",
                // As it travelled: a reason code in MQTT 5, a return code before.
                if self.version.is_v5() {
                    connack.reason_code.as_u8()
                } else {
                    connack.return_code()
                }
            )),
            Packet::Publish(publish) => {
                let mut aliases = self.aliases.lock().unwrap_or_else(|p| p.into_inner());
                let alias = publish.properties.topic_alias.map(|a| (sent, a.get()));
                let topic = match (&publish.topic, alias) {
                    (Some(topic), Some(alias)) => {
                        aliases.insert(alias, topic.as_str().to_owned());
                        topic.as_str()
                    }
                    (Some(topic), None) => topic.as_str(),
                    (None, Some(alias)) => aliases.get(&alias).map_or("", String::as_str),
                    (None, None) => "",
                };
                lines.push(format!(
                    "Client {id} {verb} PUBLISH (d{}, q{}, r{}, m{}, '{topic}', ... ({} bytes))",
                    u8::from(publish.dup),
                    publish.qos as u8,
                    u8::from(publish.retain),
                    publish.packet_id.map_or(0, |id| id.get()),
                    publish.payload.len()
                ));
            }
            Packet::PubAck(ack)
            | Packet::PubRec(ack)
            | Packet::PubRel(ack)
            | Packet::PubComp(ack) => {
                let name = match packet {
                    Packet::PubAck(_) => "PUBACK",
                    Packet::PubRec(_) => "PUBREC",
                    Packet::PubRel(_) => "PUBREL",
                    _ => "PUBCOMP",
                };
                let mid = ack.packet_id.get();
                let code = ack.reason_code.as_u8();
                lines.push(match (sent, name) {
                    (true, "PUBACK" | "PUBREC") => {
                        format!("Client {id} sending {name} (m{mid}, rc{code})")
                    }
                    (true, _) => format!("Client {id} sending {name} (m{mid})"),
                    (false, "PUBACK" | "PUBCOMP") => {
                        format!("Client {id} received {name} (Mid: {mid}, RC:{code})")
                    }
                    (false, _) => format!("Client {id} received {name} (Mid: {mid})"),
                });
            }
            Packet::Subscribe(subscribe) => {
                for subscription in &subscribe.subscriptions {
                    let options = subscription.options;
                    let flags = (u8::from(options.no_local) << 2)
                        | (u8::from(options.retain_as_published) << 3)
                        | ((options.retain_handling as u8) << 4);
                    lines.push(format!(
                        "Client {id} {verb} SUBSCRIBE (Mid: {}, Topic: {}, QoS: {}, Options: 0x{flags:02x})",
                        subscribe.packet_id.get(),
                        subscription.filter.as_str(),
                        options.qos as u8
                    ));
                }
            }
            Packet::SubAck(suback) => {
                lines.push(format!("Client {id} {verb} SUBACK"));
                if self.subscriber && !sent {
                    let granted: Vec<String> = suback
                        .reason_codes
                        .iter()
                        .map(|code| code.as_u8().to_string())
                        .collect();
                    lines.push(format!(
                        "Subscribed (mid: {}): {}",
                        suback.packet_id.get(),
                        granted.join(", ")
                    ));
                }
            }
            Packet::Unsubscribe(unsubscribe) => {
                for filter in &unsubscribe.filters {
                    lines.push(format!(
                        "Client {id} {verb} UNSUBSCRIBE (Mid: {}, Topic: {})",
                        unsubscribe.packet_id.get(),
                        filter.as_str()
                    ));
                }
            }
            Packet::UnsubAck(_) => lines.push(format!("Client {id} {verb} UNSUBACK")),
            Packet::PingReq => lines.push(format!("Client {id} {verb} PINGREQ")),
            Packet::PingResp => lines.push(format!("Client {id} {verb} PINGRESP")),
            Packet::Disconnect(disconnect) if !sent => lines.push(format!(
                "Received DISCONNECT ({})",
                disconnect.reason_code.as_u8()
            )),
            Packet::Disconnect(_) => lines.push(format!("Client {id} sending DISCONNECT")),
            Packet::Auth(auth) => lines.push(format!(
                "Client {id} {verb} AUTH ({})",
                auth.reason_code.as_u8()
            )),
        }
        lines
    }
}

/// The packet identifiers of the messages the client hands on, in order, for `%m` and `%j`:
/// the decoded message does not keep its identifier, so it is taken from the packet trace.
/// A QoS 2 PUBLISH whose identifier awaits PUBREL is a resend the engine does not hand on
/// again (MQTT-4.3.3-9), so it is not counted either.
#[derive(Debug, Default)]
pub(crate) struct PacketIds {
    inner: Mutex<PacketIdsInner>,
}

#[derive(Debug, Default)]
struct PacketIdsInner {
    delivered: VecDeque<u16>,
    awaiting_release: HashSet<u16>,
}

impl PacketIds {
    /// Notes a packet received.
    pub(crate) fn observe(&self, direction: PacketDirection, packet: &Packet) {
        if direction != PacketDirection::Received {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match packet {
            Packet::Publish(publish) => {
                let id = publish.packet_id.map_or(0, |id| id.get());
                if publish.qos == rallymq_client::QoS::ExactlyOnce
                    && !inner.awaiting_release.insert(id)
                {
                    return;
                }
                inner.delivered.push_back(id);
            }
            Packet::PubRel(ack) => {
                inner.awaiting_release.remove(&ack.packet_id.get());
            }
            _ => {}
        }
    }

    /// The identifier of the next message handed on (0 if unknown).
    pub(crate) fn next(&self) -> u16 {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.delivered.pop_front().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rallymq_client::{QoS, TopicName};
    use rallymq_codec::{Ack, PacketId, Publish};

    fn publish(qos: QoS, id: u16) -> Packet {
        let mut publish = Publish::new(TopicName::new("s/2").unwrap(), "two");
        publish.qos = qos;
        publish.packet_id = PacketId::new(id);
        Packet::Publish(publish)
    }

    #[test]
    fn lines_as_libmosquitto_words_them() {
        let trace = Trace::new("d1", ProtocolVersion::V5, true);
        let id = PacketId::new(2).unwrap();
        let line = |direction, packet: &Packet| trace.lines(direction, packet).join("\n");
        use PacketDirection::{Received, Sent};
        assert_eq!(
            line(Received, &publish(QoS::ExactlyOnce, 2)),
            "Client d1 received PUBLISH (d0, q2, r0, m2, 's/2', ... (3 bytes))"
        );
        assert_eq!(
            line(Sent, &Packet::PubRec(Ack::new(id))),
            "Client d1 sending PUBREC (m2, rc0)"
        );
        assert_eq!(
            line(Received, &Packet::PubRel(Ack::new(id))),
            "Client d1 received PUBREL (Mid: 2)"
        );
        assert_eq!(
            line(Sent, &Packet::PubComp(Ack::new(id))),
            "Client d1 sending PUBCOMP (m2)"
        );
        assert_eq!(
            line(Received, &Packet::PubAck(Ack::new(id))),
            "Client d1 received PUBACK (Mid: 2, RC:0)"
        );
        assert_eq!(
            line(Received, &Packet::PubRec(Ack::new(id))),
            "Client d1 received PUBREC (Mid: 2)"
        );
        assert_eq!(line(Sent, &Packet::PingReq), "Client d1 sending PINGREQ");
    }

    #[test]
    fn connack_shows_the_code_that_travelled() {
        let packet = Packet::ConnAck(rallymq_codec::ConnAck {
            session_present: false,
            reason_code: rallymq_client::ReasonCode::NotAuthorized,
            properties: Default::default(),
        });
        for (version, code) in [(ProtocolVersion::V3_1_1, 5), (ProtocolVersion::V5, 0x87)] {
            assert_eq!(
                Trace::new("c", version, false).lines(PacketDirection::Received, &packet),
                [format!("Client c received CONNACK ({code})")]
            );
        }
    }

    #[test]
    fn a_publish_sent_with_its_topic_alias_only_is_printed_with_its_topic() {
        let trace = Trace::new("", ProtocolVersion::V5, false);
        let alias = std::num::NonZeroU16::new(1);
        let Packet::Publish(mut first) = publish(QoS::AtMostOnce, 0) else {
            unreachable!()
        };
        first.properties.topic_alias = alias;
        let mut second = first.clone();
        second.topic = None;
        for packet in [first, second] {
            assert_eq!(
                trace.lines(PacketDirection::Sent, &Packet::Publish(packet)),
                ["Client (null) sending PUBLISH (d0, q0, r0, m0, 's/2', ... (3 bytes))"]
            );
        }
    }

    #[test]
    fn a_qos_2_resend_awaiting_pubrel_has_no_identifier_of_its_own() {
        let ids = PacketIds::default();
        let received = PacketDirection::Received;
        ids.observe(received, &publish(QoS::ExactlyOnce, 5));
        ids.observe(received, &publish(QoS::ExactlyOnce, 5)); // resent before PUBREL
        ids.observe(received, &publish(QoS::AtMostOnce, 0));
        ids.observe(
            received,
            &Packet::PubRel(Ack::new(PacketId::new(5).unwrap())),
        );
        ids.observe(received, &publish(QoS::ExactlyOnce, 5)); // a new message, same id
        ids.observe(PacketDirection::Sent, &publish(QoS::AtLeastOnce, 9));
        assert_eq!(
            [ids.next(), ids.next(), ids.next(), ids.next()],
            [5, 0, 5, 0]
        );
    }
}

//! Packet vectors shared with the JavaScript client (`web/rallymq.js`): every packet type for
//! MQTT 3.1.1 and 5.0, encoded by this crate, written to `web/test/vectors.json` with the packet
//! in the client's object shape. The JS unit tests decode and encode each one.
//!
//! This test fails when the file is stale; `UPDATE_VECTORS=1 cargo test -p rallymq-codec
//! --test js_vectors` rewrites it.

use std::fmt::Write as _;
use std::path::PathBuf;

use bytes::{Bytes, BytesMut};
use rallymq_codec::{
    Ack, AckProperties, Auth, AuthProperties, ConnAck, ConnAckProperties, Connect,
    ConnectProperties, Disconnect, DisconnectProperties, Limits, MqttString, Packet, PacketId,
    PayloadFormat, ProtocolVersion, Publish, PublishProperties, QoS, ReasonCode, RetainHandling,
    SubAck, SubAckProperties, Subscribe, SubscribeProperties, Subscription, SubscriptionId,
    SubscriptionOptions, TopicFilter, TopicName, UnsubAck, Unsubscribe, UnsubscribeProperties,
    UserProperty, Will, WillProperties, decode,
};

const V4: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;

/// A JSON value, written by hand (the codec has no serde dependency).
enum J {
    Bool(bool),
    Num(u64),
    Str(String),
    /// Binary data: `{"hex": "…"}` in the file.
    Bin(Vec<u8>),
    Arr(Vec<Self>),
    Obj(Vec<(&'static str, Self)>),
}

impl J {
    fn write(&self, out: &mut String) {
        match self {
            Self::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Self::Num(n) => write!(out, "{n}").expect("writing to a String cannot fail"),
            Self::Str(s) => write_str(out, s),
            Self::Bin(b) => {
                out.push_str("{\"hex\": ");
                write_str(out, &hex(b));
                out.push('}');
            }
            Self::Arr(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    item.write(out);
                }
                out.push(']');
            }
            Self::Obj(fields) => {
                out.push('{');
                for (i, (key, value)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    write_str(out, key);
                    out.push_str(": ");
                    value.write(out);
                }
                out.push('}');
            }
        }
    }
}

fn write_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7E => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    write!(out, "\\u{unit:04x}").expect("writing to a String cannot fail");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        write!(s, "{b:02x}").expect("writing to a String cannot fail");
        s
    })
}

fn s(text: &str) -> J {
    J::Str(text.to_owned())
}

fn num(n: impl Into<u64>) -> J {
    J::Num(n.into())
}

/// Collects the properties present, in the order the codec writes them.
#[derive(Default)]
struct Props(Vec<(&'static str, J)>);

impl Props {
    fn opt(mut self, name: &'static str, value: Option<J>) -> Self {
        if let Some(value) = value {
            self.0.push((name, value));
        }
        self
    }
    fn users(mut self, users: &[UserProperty]) -> Self {
        if !users.is_empty() {
            let pairs = users
                .iter()
                .map(|u| J::Arr(vec![s(&u.name), s(&u.value)]))
                .collect();
            self.0.push(("userProperties", J::Arr(pairs)));
        }
        self
    }
    fn done(self) -> J {
        J::Obj(self.0)
    }
}

fn text(value: &Option<MqttString>) -> Option<J> {
    value.as_ref().map(|v| s(v))
}
fn bin(value: &Option<Bytes>) -> Option<J> {
    value.as_ref().map(|v| J::Bin(v.to_vec()))
}
fn flag(value: Option<bool>) -> Option<J> {
    value.map(|v| num(u8::from(v)))
}

fn connect_props(p: &ConnectProperties) -> J {
    Props::default()
        .opt("sessionExpiryInterval", p.session_expiry_interval.map(num))
        .opt("receiveMaximum", p.receive_maximum.map(|v| num(v.get())))
        .opt(
            "maximumPacketSize",
            p.maximum_packet_size.map(|v| num(v.get())),
        )
        .opt("topicAliasMaximum", p.topic_alias_maximum.map(num))
        .opt(
            "requestResponseInformation",
            flag(p.request_response_information),
        )
        .opt(
            "requestProblemInformation",
            flag(p.request_problem_information),
        )
        .opt("authenticationMethod", text(&p.authentication_method))
        .opt("authenticationData", bin(&p.authentication_data))
        .users(&p.user_properties)
        .done()
}

fn will_props(p: &WillProperties) -> J {
    Props::default()
        .opt("willDelayInterval", p.will_delay_interval.map(num))
        .opt(
            "payloadFormatIndicator",
            p.payload_format_indicator.map(|v| num(v as u8)),
        )
        .opt("messageExpiryInterval", p.message_expiry_interval.map(num))
        .opt("contentType", text(&p.content_type))
        .opt("responseTopic", p.response_topic.as_ref().map(|t| s(t)))
        .opt("correlationData", bin(&p.correlation_data))
        .users(&p.user_properties)
        .done()
}

fn connack_props(p: &ConnAckProperties) -> J {
    Props::default()
        .opt("sessionExpiryInterval", p.session_expiry_interval.map(num))
        .opt("receiveMaximum", p.receive_maximum.map(|v| num(v.get())))
        .opt("maximumQoS", p.maximum_qos.map(|v| num(v.bits())))
        .opt("retainAvailable", flag(p.retain_available))
        .opt(
            "maximumPacketSize",
            p.maximum_packet_size.map(|v| num(v.get())),
        )
        .opt(
            "assignedClientIdentifier",
            text(&p.assigned_client_identifier),
        )
        .opt("topicAliasMaximum", p.topic_alias_maximum.map(num))
        .opt("reasonString", text(&p.reason_string))
        .opt(
            "wildcardSubscriptionAvailable",
            flag(p.wildcard_subscription_available),
        )
        .opt(
            "subscriptionIdentifiersAvailable",
            flag(p.subscription_identifiers_available),
        )
        .opt(
            "sharedSubscriptionAvailable",
            flag(p.shared_subscription_available),
        )
        .opt("serverKeepAlive", p.server_keep_alive.map(num))
        .opt("responseInformation", text(&p.response_information))
        .opt("serverReference", text(&p.server_reference))
        .opt("authenticationMethod", text(&p.authentication_method))
        .opt("authenticationData", bin(&p.authentication_data))
        .users(&p.user_properties)
        .done()
}

fn publish_props(p: &PublishProperties) -> J {
    let ids = (!p.subscription_identifiers.is_empty()).then(|| {
        J::Arr(
            p.subscription_identifiers
                .iter()
                .map(|id| num(id.get()))
                .collect(),
        )
    });
    Props::default()
        .opt(
            "payloadFormatIndicator",
            p.payload_format_indicator.map(|v| num(v as u8)),
        )
        .opt("messageExpiryInterval", p.message_expiry_interval.map(num))
        .opt("topicAlias", p.topic_alias.map(|v| num(v.get())))
        .opt("responseTopic", p.response_topic.as_ref().map(|t| s(t)))
        .opt("correlationData", bin(&p.correlation_data))
        .opt("contentType", text(&p.content_type))
        .users(&p.user_properties)
        .opt("subscriptionIdentifier", ids)
        .done()
}

/// ReasonString and user properties: PUBACK…PUBCOMP, SUBACK and UNSUBACK.
fn reason_props(reason: &Option<MqttString>, users: &[UserProperty]) -> J {
    Props::default()
        .opt("reasonString", text(reason))
        .users(users)
        .done()
}

fn ack_props(p: &AckProperties) -> J {
    reason_props(&p.reason_string, &p.user_properties)
}

fn suback_props(p: &SubAckProperties) -> J {
    reason_props(&p.reason_string, &p.user_properties)
}

fn subscribe_props(p: &SubscribeProperties) -> J {
    Props::default()
        .opt(
            "subscriptionIdentifier",
            p.subscription_identifier.map(|v| num(v.get())),
        )
        .users(&p.user_properties)
        .done()
}

fn unsubscribe_props(p: &UnsubscribeProperties) -> J {
    Props::default().users(&p.user_properties).done()
}

fn disconnect_props(p: &DisconnectProperties) -> J {
    Props::default()
        .opt("sessionExpiryInterval", p.session_expiry_interval.map(num))
        .opt("reasonString", text(&p.reason_string))
        .opt("serverReference", text(&p.server_reference))
        .users(&p.user_properties)
        .done()
}

fn auth_props(p: &AuthProperties) -> J {
    Props::default()
        .opt("authenticationMethod", text(&p.authentication_method))
        .opt("authenticationData", bin(&p.authentication_data))
        .opt("reasonString", text(&p.reason_string))
        .users(&p.user_properties)
        .done()
}

/// The MQTT 3.1.1 CONNACK return code the codec writes for a reason code.
fn v4_connack_code(code: ReasonCode) -> u8 {
    match code {
        ReasonCode::Success => 0,
        ReasonCode::UnsupportedProtocolVersion => 1,
        ReasonCode::ClientIdentifierNotValid => 2,
        ReasonCode::ServerUnavailable => 3,
        ReasonCode::BadUserNameOrPassword => 4,
        ReasonCode::NotAuthorized => 5,
        other => panic!("no 3.1.1 return code chosen for {other:?} in these vectors"),
    }
}

/// The packet in the JS client's shape (see `web/rallymq.d.ts`), as decoded for `version`.
fn to_json(packet: &Packet, version: ProtocolVersion) -> J {
    let v5 = version.is_v5();
    let mut o: Vec<(&'static str, J)> = Vec::new();
    let ty = format!("{:?}", packet.packet_type()).to_lowercase();
    o.push(("type", J::Str(ty)));
    let empty = || J::Obj(Vec::new());
    let codes = |codes: &[ReasonCode], map: fn(u8) -> u8| {
        J::Arr(codes.iter().map(|c| num(map(c.as_u8()))).collect())
    };
    match packet {
        Packet::Connect(c) => {
            o.push(("version", num(c.protocol.level())));
            o.push(("clean", J::Bool(c.clean_start)));
            o.push(("keepalive", num(c.keep_alive)));
            o.push(("properties", connect_props(&c.properties)));
            o.push(("clientId", s(&c.client_id)));
            if let Some(w) = &c.will {
                o.push((
                    "will",
                    J::Obj(vec![
                        ("topic", s(&w.topic)),
                        ("payload", J::Bin(w.payload.to_vec())),
                        ("qos", num(w.qos.bits())),
                        ("retain", J::Bool(w.retain)),
                        ("properties", will_props(&w.properties)),
                    ]),
                ));
            }
            if let Some(u) = &c.username {
                o.push(("username", s(u)));
            }
            if let Some(p) = &c.password {
                o.push(("password", J::Bin(p.to_vec())));
            }
        }
        Packet::ConnAck(c) => {
            o.push(("sessionPresent", J::Bool(c.session_present)));
            let code = if v5 {
                c.reason_code.as_u8()
            } else {
                v4_connack_code(c.reason_code)
            };
            o.push(("code", num(code)));
            o.push(("properties", connack_props(&c.properties)));
        }
        Packet::Publish(p) => {
            o.push(("topic", s(p.topic.as_ref().map_or("", |t| t.as_str()))));
            if let Some(id) = p.packet_id {
                o.push(("id", num(id.get())));
            }
            o.push(("properties", publish_props(&p.properties)));
            o.push(("qos", num(p.qos.bits())));
            o.push(("retain", J::Bool(p.retain)));
            o.push(("dup", J::Bool(p.dup)));
            o.push(("payload", J::Bin(p.payload.to_vec())));
        }
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            o.push(("id", num(a.packet_id.get())));
            o.push(("code", num(a.reason_code.as_u8())));
            o.push(("properties", ack_props(&a.properties)));
        }
        Packet::Subscribe(sub) => {
            o.push(("id", num(sub.packet_id.get())));
            o.push(("properties", subscribe_props(&sub.properties)));
            let list = sub
                .subscriptions
                .iter()
                .map(|x| {
                    let opts = x.options;
                    J::Obj(vec![
                        ("filter", s(x.filter.as_str())),
                        ("qos", num(opts.qos.bits())),
                        ("nl", J::Bool(opts.no_local)),
                        ("rap", J::Bool(opts.retain_as_published)),
                        ("rh", num(opts.retain_handling as u8)),
                    ])
                })
                .collect();
            o.push(("subscriptions", J::Arr(list)));
        }
        Packet::SubAck(a) => {
            o.push(("id", num(a.packet_id.get())));
            o.push(("properties", suback_props(&a.properties)));
            let map = if v5 {
                |c| c
            } else {
                |c| if c <= 2 { c } else { 0x80 }
            };
            o.push(("codes", codes(&a.reason_codes, map)));
        }
        Packet::Unsubscribe(u) => {
            o.push(("id", num(u.packet_id.get())));
            o.push(("properties", unsubscribe_props(&u.properties)));
            let list = u.filters.iter().map(|f| s(f.as_str())).collect();
            o.push(("filters", J::Arr(list)));
        }
        Packet::UnsubAck(a) => {
            o.push(("id", num(a.packet_id.get())));
            o.push(("properties", suback_props(&a.properties)));
            o.push(("codes", codes(&a.reason_codes, |c| c)));
        }
        Packet::PingReq | Packet::PingResp => {}
        Packet::Disconnect(d) => {
            o.push(("code", num(d.reason_code.as_u8())));
            o.push(("properties", disconnect_props(&d.properties)));
        }
        Packet::Auth(a) => {
            o.push(("code", num(a.reason_code.as_u8())));
            o.push(("properties", auth_props(&a.properties)));
        }
    }
    if !v5 {
        // 3.1.1 has no properties: the JS decoder gives an empty object.
        for (key, value) in &mut o {
            if *key == "properties" {
                *value = empty();
            }
        }
    }
    J::Obj(o)
}

fn id(n: u16) -> PacketId {
    PacketId::new(n).expect("test ids are non-zero")
}
fn ms(text: &str) -> MqttString {
    MqttString::new(text).expect("test strings are valid")
}
fn topic(text: &str) -> TopicName {
    TopicName::new(text).expect("test topics are valid")
}
fn filter(text: &str) -> TopicFilter {
    TopicFilter::new(text).expect("test filters are valid")
}
fn user(name: &str, value: &str) -> UserProperty {
    UserProperty {
        name: ms(name),
        value: ms(value),
    }
}
fn publish(t: &str, payload: &'static [u8], qos: QoS, packet_id: u16) -> Publish {
    let mut p = Publish::new(topic(t), Bytes::from_static(payload));
    p.qos = qos;
    p.packet_id = PacketId::new(packet_id);
    p
}
fn ack(packet_id: u16, code: ReasonCode, reason: Option<&str>, users: &[(&str, &str)]) -> Ack {
    let mut a = Ack::new(id(packet_id));
    a.reason_code = code;
    a.properties.reason_string = reason.map(ms);
    a.properties.user_properties = users.iter().map(|(n, v)| user(n, v)).collect();
    a
}
fn subscription(f: &str, qos: QoS, nl: bool, rap: bool, rh: RetainHandling) -> Subscription {
    Subscription {
        filter: filter(f),
        options: SubscriptionOptions {
            qos,
            no_local: nl,
            retain_as_published: rap,
            retain_handling: rh,
        },
    }
}

/// Packets valid in both versions, without properties.
fn common() -> Vec<(&'static str, Packet)> {
    use QoS::*;
    use ReasonCode as R;
    let mut retained = publish(
        "sport/tennis/score",
        b"{\"points\":[\"15\",\"30\"]}",
        ExactlyOnce,
        2,
    );
    retained.retain = true;
    retained.dup = true;
    vec![
        (
            "connack-session-present",
            ConnAck {
                session_present: true,
                ..ConnAck::default()
            }
            .into(),
        ),
        (
            "connack-not-authorized",
            ConnAck {
                reason_code: R::NotAuthorized,
                ..ConnAck::default()
            }
            .into(),
        ),
        (
            "publish-qos0",
            publish("a/b", b"hello", AtMostOnce, 0).into(),
        ),
        (
            "publish-qos0-empty",
            publish("empty", b"", AtMostOnce, 0).into(),
        ),
        (
            "publish-qos1-binary-utf8-topic",
            publish(
                "caf\u{e9}/\u{1F3BE}",
                &[0, 1, 2, 0xFF, 0xFE],
                AtLeastOnce,
                65535,
            )
            .into(),
        ),
        ("publish-qos2-retain-dup", retained.into()),
        ("puback", Packet::PubAck(Ack::new(id(1)))),
        ("pubrec", Packet::PubRec(Ack::new(id(258)))),
        ("pubrel", Packet::PubRel(Ack::new(id(3)))),
        ("pubcomp", Packet::PubComp(Ack::new(id(4)))),
        (
            "subscribe-three",
            Subscribe {
                packet_id: id(10),
                properties: SubscribeProperties::default().into(),
                subscriptions: vec![
                    Subscription::new(filter("tennis/+/score"), AtMostOnce),
                    Subscription::new(filter("$SYS/#"), AtLeastOnce),
                    Subscription::new(filter("a/b"), ExactlyOnce),
                ],
            }
            .into(),
        ),
        (
            "suback",
            SubAck {
                packet_id: id(10),
                properties: SubAckProperties::default().into(),
                reason_codes: vec![
                    R::Success,
                    R::GrantedQoS1,
                    R::GrantedQoS2,
                    R::UnspecifiedError,
                ],
            }
            .into(),
        ),
        (
            "unsubscribe-two",
            Unsubscribe {
                packet_id: id(11),
                properties: UnsubscribeProperties::default().into(),
                filters: vec![filter("tennis/+/score"), filter("#")],
            }
            .into(),
        ),
        ("pingreq", Packet::PingReq),
        ("pingresp", Packet::PingResp),
        ("disconnect", Disconnect::default().into()),
    ]
}

fn v4_only() -> Vec<(&'static str, Packet)> {
    let mut full = Connect::new(V4, ms("client-4"));
    full.clean_start = false;
    full.keep_alive = 30;
    full.will = Some(Will {
        topic: topic("clients/client-4/status"),
        payload: Bytes::from_static(b"offline"),
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: WillProperties::default().into(),
    });
    full.username = Some(ms("user"));
    full.password = Some(Bytes::from_static(b"secret\x00\xff"));
    vec![
        ("connect-minimal", Connect::new(V4, ms("c1")).into()),
        ("connect-empty-client-id", Connect::new(V4, ms("")).into()),
        ("connect-will-username-password", full.into()),
        ("connack", ConnAck::default().into()),
        (
            "connack-bad-credentials",
            ConnAck {
                reason_code: ReasonCode::BadUserNameOrPassword,
                ..ConnAck::default()
            }
            .into(),
        ),
        (
            "unsuback",
            UnsubAck {
                packet_id: id(11),
                properties: SubAckProperties::default().into(),
                reason_codes: Vec::new(),
            }
            .into(),
        ),
    ]
}

fn v5_only() -> Vec<(&'static str, Packet)> {
    use QoS::*;
    use ReasonCode as R;
    let mut full = Connect::new(V5, ms("client-5"));
    full.clean_start = false;
    full.keep_alive = 0;
    full.properties = ConnectProperties {
        session_expiry_interval: Some(3600),
        receive_maximum: std::num::NonZeroU16::new(100),
        maximum_packet_size: std::num::NonZeroU32::new(1 << 20),
        topic_alias_maximum: Some(10),
        request_response_information: Some(true),
        request_problem_information: Some(false),
        authentication_method: None,
        authentication_data: None,
        user_properties: vec![user("app", "scoreboard"), user("app", "twice")],
    }
    .into();
    full.will = Some(Will {
        topic: topic("clients/client-5/status"),
        payload: Bytes::from_static(b"gone"),
        qos: ExactlyOnce,
        retain: false,
        properties: WillProperties {
            will_delay_interval: Some(5),
            payload_format_indicator: Some(PayloadFormat::Utf8),
            message_expiry_interval: Some(60),
            content_type: Some(ms("text/plain")),
            response_topic: Some(topic("clients/replies")),
            correlation_data: Some(Bytes::from_static(&[1, 2, 3])),
            user_properties: vec![user("k", "v")],
        }
        .into(),
    });
    full.username = Some(ms("user"));
    full.password = Some(Bytes::from_static(b"pw"));

    let mut auth_connect = Connect::new(V5, ms("auth"));
    auth_connect.properties.authentication_method = Some(ms("SCRAM-SHA-1"));
    auth_connect.properties.authentication_data = Some(Bytes::from_static(b"client-first"));
    // MQTT 5 allows a password without a user name.
    auth_connect.password = Some(Bytes::from_static(b"token"));

    let mut with_props = publish("sport/tennis/request", b"{}", AtLeastOnce, 77);
    with_props.properties = PublishProperties {
        payload_format_indicator: Some(PayloadFormat::Utf8),
        message_expiry_interval: Some(120),
        topic_alias: None,
        response_topic: Some(topic("sport/tennis/reply")),
        correlation_data: Some(Bytes::from_static(&[0xCA, 0xFE])),
        content_type: Some(ms("application/json")),
        user_properties: vec![user("a", "1"), user("b", "2")],
        subscription_identifiers: vec![
            SubscriptionId::new(1).expect("valid id"),
            SubscriptionId::new(268_435_455).expect("valid id"),
        ],
    }
    .into();
    let mut alias_only = Publish::new(topic("x"), Bytes::from_static(b"aliased"));
    alias_only.topic = None;
    alias_only.properties.topic_alias = std::num::NonZeroU16::new(3);
    let mut alias_set = publish("long/topic/name", b"first", AtMostOnce, 0);
    alias_set.properties.topic_alias = std::num::NonZeroU16::new(3);
    alias_set.properties.payload_format_indicator = Some(PayloadFormat::Bytes);

    vec![
        ("connect-minimal", Connect::new(V5, ms("c1")).into()),
        ("connect-all-properties-will", full.into()),
        ("connect-auth-password-only", auth_connect.into()),
        ("connack", ConnAck::default().into()),
        (
            "connack-all-properties",
            ConnAck {
                session_present: false,
                reason_code: R::Success,
                properties: ConnAckProperties {
                    session_expiry_interval: Some(0),
                    receive_maximum: std::num::NonZeroU16::new(20),
                    maximum_qos: Some(AtLeastOnce),
                    retain_available: Some(true),
                    maximum_packet_size: std::num::NonZeroU32::new(65536),
                    assigned_client_identifier: Some(ms("auto-1a2b")),
                    topic_alias_maximum: Some(0),
                    reason_string: Some(ms("welcome")),
                    wildcard_subscription_available: Some(true),
                    subscription_identifiers_available: Some(false),
                    shared_subscription_available: Some(true),
                    server_keep_alive: Some(30),
                    response_information: Some(ms("resp/")),
                    server_reference: Some(ms("other:1883")),
                    authentication_method: Some(ms("m")),
                    authentication_data: Some(Bytes::from_static(b"d")),
                    user_properties: vec![user("node", "1")],
                }
                .into(),
            }
            .into(),
        ),
        (
            "connack-banned-reason",
            ConnAck {
                session_present: false,
                reason_code: R::Banned,
                properties: ConnAckProperties {
                    reason_string: Some(ms("go away")),
                    ..ConnAckProperties::default()
                }
                .into(),
            }
            .into(),
        ),
        ("publish-qos1-all-properties", with_props.into()),
        ("publish-topic-alias-only", alias_only.into()),
        ("publish-topic-alias-set", alias_set.into()),
        (
            "puback-no-subscribers",
            Packet::PubAck(ack(5, R::NoMatchingSubscribers, None, &[])),
        ),
        (
            "puback-success-with-user-property",
            Packet::PubAck(ack(5, R::Success, None, &[("x", "y")])),
        ),
        (
            "pubrec-quota-reason",
            Packet::PubRec(ack(6, R::QuotaExceeded, Some("slow down"), &[])),
        ),
        (
            "pubrel-id-not-found",
            Packet::PubRel(ack(7, R::PacketIdentifierNotFound, None, &[])),
        ),
        (
            "pubcomp-reason-string",
            Packet::PubComp(ack(8, R::Success, Some("ok"), &[])),
        ),
        (
            "subscribe-options-identifier",
            Subscribe {
                packet_id: id(12),
                properties: SubscribeProperties {
                    subscription_identifier: SubscriptionId::new(42),
                    user_properties: vec![user("s", "t")],
                }
                .into(),
                subscriptions: vec![
                    subscription("a/#", AtLeastOnce, true, true, RetainHandling::DoNotSend),
                    subscription(
                        "$share/g/b/+",
                        ExactlyOnce,
                        false,
                        false,
                        RetainHandling::SendAtSubscribeIfNew,
                    ),
                ],
            }
            .into(),
        ),
        (
            "suback-failures-reason",
            SubAck {
                packet_id: id(12),
                properties: SubAckProperties {
                    reason_string: Some(ms("partly")),
                    user_properties: Vec::new(),
                }
                .into(),
                reason_codes: vec![
                    R::GrantedQoS1,
                    R::NotAuthorized,
                    R::TopicFilterInvalid,
                    R::SharedSubscriptionsNotSupported,
                    R::WildcardSubscriptionsNotSupported,
                ],
            }
            .into(),
        ),
        (
            "unsubscribe-user-property",
            Unsubscribe {
                packet_id: id(13),
                properties: UnsubscribeProperties {
                    user_properties: vec![user("u", "v")],
                }
                .into(),
                filters: vec![filter("a/#")],
            }
            .into(),
        ),
        (
            "unsuback",
            UnsubAck {
                packet_id: id(13),
                properties: SubAckProperties::default().into(),
                reason_codes: vec![R::Success, R::NoSubscriptionExisted],
            }
            .into(),
        ),
        (
            "disconnect-with-will",
            Disconnect::new(R::DisconnectWithWillMessage).into(),
        ),
        (
            "disconnect-taken-over-properties",
            Disconnect {
                reason_code: R::SessionTakenOver,
                properties: DisconnectProperties {
                    session_expiry_interval: Some(10),
                    reason_string: Some(ms("another connection")),
                    server_reference: Some(ms("b:1883")),
                    user_properties: vec![user("why", "takeover")],
                }
                .into(),
            }
            .into(),
        ),
        ("auth-success", Auth::default().into()),
        (
            "auth-continue",
            Auth {
                reason_code: R::ContinueAuthentication,
                properties: AuthProperties {
                    authentication_method: Some(ms("SCRAM-SHA-1")),
                    authentication_data: Some(Bytes::from_static(b"server-first")),
                    reason_string: None,
                    user_properties: Vec::new(),
                }
                .into(),
            }
            .into(),
        ),
    ]
}

/// The whole file, as the codec encodes it today.
fn render() -> String {
    let mut out = String::from(
        "{\n  \"generator\": \"crates/codec/tests/js_vectors.rs (UPDATE_VECTORS=1 cargo test -p rallymq-codec --test js_vectors)\",\n  \"vectors\": [\n",
    );
    let sets: [(ProtocolVersion, Vec<(&str, Packet)>); 2] = [
        (V4, [v4_only(), common()].concat()),
        (V5, [v5_only(), common()].concat()),
    ];
    let mut first = true;
    for (version, packets) in sets {
        for (name, packet) in packets {
            let bytes = packet.to_bytes(version).expect("vector packets encode");
            // The bytes decode back to the same packet with this crate.
            let mut buf = BytesMut::from(&bytes[..]);
            let decoded = decode(&mut buf, version, &Limits::default())
                .expect("vector bytes decode")
                .expect("vector bytes are complete");
            assert!(buf.is_empty(), "{name}: bytes left over");
            assert_eq!(decoded, packet, "{name}: decodes to another packet");

            if !first {
                out.push_str(",\n");
            }
            first = false;
            let vector = J::Obj(vec![
                ("name", s(name)),
                ("version", num(version.level())),
                ("hex", J::Str(hex(&bytes))),
                ("packet", to_json(&packet, version)),
            ]);
            out.push_str("    ");
            vector.write(&mut out);
        }
    }
    out.push_str("\n  ]\n}\n");
    out
}

#[test]
fn js_vectors_are_up_to_date() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../web/test/vectors.json");
    let fresh = render();
    if std::env::var_os("UPDATE_VECTORS").is_some() {
        std::fs::write(&path, &fresh).expect("write web/test/vectors.json");
        return;
    }
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        current == fresh,
        "web/test/vectors.json is stale: run `UPDATE_VECTORS=1 cargo test -p rallymq-codec --test js_vectors`"
    );
}

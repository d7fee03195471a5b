//! Property tests, for every packet type and every protocol level: `decode(encode(p)) == p`
//! with the whole buffer consumed, every strict prefix gives `Ok(None)` and consumes nothing,
//! any split of a packet stream into chunks decodes to the same packets, and arbitrary bytes
//! never panic.

use std::num::{NonZeroU16, NonZeroU32};

use bytes::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::option::of;
use proptest::prelude::*;
use rallymq_codec::*;

fn mqtt_string() -> impl Strategy<Value = MqttString> {
    "[a-zA-Z0-9 /_é😀-]{0,10}".prop_map(|text| MqttString::new(text).unwrap())
}

fn binary() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..40).prop_map(Bytes::from)
}

fn topic_name() -> impl Strategy<Value = TopicName> {
    vec(
        prop_oneof![
            "[a-z0-9]{0,4}",
            Just("$SYS".to_string()),
            Just("é".to_string())
        ],
        1..5,
    )
    .prop_map(|levels| {
        let text = levels.join("/");
        TopicName::new(if text.is_empty() {
            "x".to_string()
        } else {
            text
        })
        .unwrap()
    })
}

fn topic_filter() -> impl Strategy<Value = TopicFilter> {
    (
        of("[a-z]{1,3}"),
        vec(prop_oneof!["[a-z0-9]{0,3}", Just("+".to_string())], 1..4),
        any::<bool>(),
    )
        .prop_map(|(share, levels, multi)| {
            let mut text = levels.join("/");
            if text.is_empty() {
                text.push('x');
            }
            if multi {
                text.push_str("/#");
            }
            if let Some(group) = share {
                text = format!("$share/{group}/{text}");
            }
            TopicFilter::new(text).unwrap()
        })
}

fn packet_id() -> impl Strategy<Value = PacketId> {
    (1..=u16::MAX).prop_map(|id| PacketId::new(id).unwrap())
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn user_properties() -> impl Strategy<Value = Vec<UserProperty>> {
    vec(
        (mqtt_string(), mqtt_string()).prop_map(|(name, value)| UserProperty { name, value }),
        0..3,
    )
}

fn nz16() -> impl Strategy<Value = NonZeroU16> {
    (1..=u16::MAX).prop_map(|v| NonZeroU16::new(v).unwrap())
}

fn nz32() -> impl Strategy<Value = NonZeroU32> {
    (1..=u32::MAX).prop_map(|v| NonZeroU32::new(v).unwrap())
}

fn subscription_id() -> impl Strategy<Value = SubscriptionId> {
    (1..=SubscriptionId::MAX).prop_map(|v| SubscriptionId::new(v).unwrap())
}

fn payload_format() -> impl Strategy<Value = PayloadFormat> {
    prop_oneof![Just(PayloadFormat::Bytes), Just(PayloadFormat::Utf8)]
}

/// A reason code valid in `packet`.
fn reason_code(packet: PacketType) -> impl Strategy<Value = ReasonCode> {
    let codes: Vec<ReasonCode> = ALL_REASON_CODES
        .iter()
        .copied()
        .filter(|rc| rc.is_valid_for(packet))
        .collect();
    proptest::sample::select(codes)
}

fn connect_properties() -> impl Strategy<Value = ConnectProperties> {
    (
        (of(any::<u32>()), of(nz16()), of(nz32()), of(any::<u16>())),
        (
            of(any::<bool>()),
            of(any::<bool>()),
            of(mqtt_string()),
            of(binary()),
        ),
        user_properties(),
    )
        .prop_map(
            |((sei, rm, mps, tam), (rri, rpi, am, ad), user)| ConnectProperties {
                session_expiry_interval: sei,
                receive_maximum: rm,
                maximum_packet_size: mps,
                topic_alias_maximum: tam,
                request_response_information: rri,
                request_problem_information: rpi,
                // Authentication Data needs a method (MQTT 5 §3.1.2.11.10).
                authentication_data: ad.filter(|_| am.is_some()),
                authentication_method: am,
                user_properties: user,
            },
        )
}

fn will_properties() -> impl Strategy<Value = WillProperties> {
    (
        (of(any::<u32>()), of(payload_format()), of(any::<u32>())),
        (of(mqtt_string()), of(topic_name()), of(binary())),
        user_properties(),
    )
        .prop_map(
            |((delay, pfi, expiry), (ct, rt, cd), user)| WillProperties {
                will_delay_interval: delay,
                payload_format_indicator: pfi,
                message_expiry_interval: expiry,
                content_type: ct,
                response_topic: rt,
                correlation_data: cd,
                user_properties: user,
            },
        )
}

fn connack_properties() -> impl Strategy<Value = ConnAckProperties> {
    (
        (
            of(any::<u32>()),
            of(nz16()),
            of(prop_oneof![Just(QoS::AtMostOnce), Just(QoS::AtLeastOnce)]),
            of(any::<bool>()),
        ),
        (
            of(nz32()),
            of(mqtt_string()),
            of(any::<u16>()),
            of(mqtt_string()),
        ),
        (
            of(any::<bool>()),
            of(any::<bool>()),
            of(any::<bool>()),
            of(any::<u16>()),
        ),
        (
            of(mqtt_string()),
            of(mqtt_string()),
            of(mqtt_string()),
            of(binary()),
        ),
        user_properties(),
    )
        .prop_map(
            |(
                (sei, rm, mq, ra),
                (mps, aci, tam, rs),
                (wsa, sia, ssa, ska),
                (ri, sr, am, ad),
                user,
            )| {
                ConnAckProperties {
                    session_expiry_interval: sei,
                    receive_maximum: rm,
                    maximum_qos: mq,
                    retain_available: ra,
                    maximum_packet_size: mps,
                    assigned_client_identifier: aci,
                    topic_alias_maximum: tam,
                    reason_string: rs,
                    wildcard_subscription_available: wsa,
                    subscription_identifiers_available: sia,
                    shared_subscription_available: ssa,
                    server_keep_alive: ska,
                    response_information: ri,
                    server_reference: sr,
                    authentication_method: am,
                    authentication_data: ad,
                    user_properties: user,
                }
            },
        )
}

fn publish_properties() -> impl Strategy<Value = PublishProperties> {
    (
        (of(payload_format()), of(any::<u32>()), of(nz16())),
        (of(topic_name()), of(binary()), of(mqtt_string())),
        user_properties(),
        vec(subscription_id(), 0..3),
    )
        .prop_map(
            |((pfi, mei, ta), (rt, cd, ct), user, ids)| PublishProperties {
                payload_format_indicator: pfi,
                message_expiry_interval: mei,
                topic_alias: ta,
                response_topic: rt,
                correlation_data: cd,
                content_type: ct,
                user_properties: user,
                subscription_identifiers: ids,
            },
        )
}

fn ack_properties() -> impl Strategy<Value = AckProperties> {
    (of(mqtt_string()), user_properties()).prop_map(|(reason_string, user_properties)| {
        AckProperties {
            reason_string,
            user_properties,
        }
    })
}

fn suback_properties() -> impl Strategy<Value = SubAckProperties> {
    (of(mqtt_string()), user_properties()).prop_map(|(reason_string, user_properties)| {
        SubAckProperties {
            reason_string,
            user_properties,
        }
    })
}

fn disconnect_properties() -> impl Strategy<Value = DisconnectProperties> {
    (
        of(any::<u32>()),
        of(mqtt_string()),
        of(mqtt_string()),
        user_properties(),
    )
        .prop_map(|(sei, rs, sr, user)| DisconnectProperties {
            session_expiry_interval: sei,
            reason_string: rs,
            server_reference: sr,
            user_properties: user,
        })
}

fn auth_properties() -> impl Strategy<Value = AuthProperties> {
    (
        of(mqtt_string()),
        of(binary()),
        of(mqtt_string()),
        user_properties(),
    )
        .prop_map(|(am, ad, rs, user)| AuthProperties {
            authentication_method: am,
            authentication_data: ad,
            reason_string: rs,
            user_properties: user,
        })
}

/// `strategy` in MQTT 5, the default (no properties) before it.
fn v5_only<T: Default + Clone + std::fmt::Debug + 'static>(
    version: ProtocolVersion,
    strategy: impl Strategy<Value = T> + 'static,
) -> BoxedStrategy<T> {
    if version.is_v5() {
        strategy.boxed()
    } else {
        Just(T::default()).boxed()
    }
}

fn connect(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let will = (
        topic_name(),
        binary(),
        qos(),
        any::<bool>(),
        v5_only(version, will_properties()),
    )
        .prop_map(|(topic, payload, qos, retain, properties)| Will {
            topic,
            payload,
            qos,
            retain,
            properties: properties.into(),
        });
    (
        any::<bool>(),
        any::<u16>(),
        v5_only(version, connect_properties()),
        mqtt_string(),
        of(will),
        of(mqtt_string()),
        of(binary()),
        any::<bool>(),
    )
        .prop_map(
            move |(
                clean_start,
                keep_alive,
                properties,
                client_id,
                will,
                username,
                password,
                bridge,
            )| {
                // Before MQTT 5 a password needs a user name (MQTT-3.1.2-22).
                let password = if version.is_v5() || username.is_some() {
                    password
                } else {
                    None
                };
                Packet::from(Connect {
                    protocol: version,
                    clean_start,
                    keep_alive,
                    properties: properties.into(),
                    client_id,
                    will,
                    username,
                    password,
                    bridge,
                })
            },
        )
}

fn connack(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    let code = if version.is_v5() {
        reason_code(PacketType::ConnAck).boxed()
    } else {
        proptest::sample::select(vec![
            ReasonCode::Success,
            ReasonCode::UnsupportedProtocolVersion,
            ReasonCode::ClientIdentifierNotValid,
            ReasonCode::ServerUnavailable,
            ReasonCode::BadUserNameOrPassword,
            ReasonCode::NotAuthorized,
        ])
        .boxed()
    };
    (any::<bool>(), code, v5_only(version, connack_properties()))
        .prop_map(|(present, reason_code, properties)| {
            Packet::ConnAck(ConnAck {
                session_present: present && reason_code == ReasonCode::Success,
                reason_code,
                properties: properties.into(),
            })
        })
        .boxed()
}

fn publish(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    (
        any::<bool>(),
        qos(),
        any::<bool>(),
        topic_name(),
        any::<bool>(),
        packet_id(),
        v5_only(version, publish_properties()),
        binary(),
    )
        .prop_map(
            move |(dup, qos, retain, topic, drop_topic, id, properties, payload)| {
                let acknowledged = qos != QoS::AtMostOnce;
                // Only MQTT 5 can leave the topic out, and only when an alias stands for it.
                let topic = if drop_topic && properties.topic_alias.is_some() {
                    None
                } else {
                    Some(topic)
                };
                Packet::Publish(Publish {
                    dup: dup && acknowledged,
                    qos,
                    retain,
                    topic,
                    packet_id: acknowledged.then_some(id),
                    properties: properties.into(),
                    payload,
                })
            },
        )
}

fn ack(version: ProtocolVersion, packet: PacketType) -> impl Strategy<Value = Packet> {
    let code = if version.is_v5() {
        reason_code(packet).boxed()
    } else {
        Just(ReasonCode::Success).boxed()
    };
    (packet_id(), code, v5_only(version, ack_properties())).prop_map(
        move |(packet_id, reason_code, properties)| {
            let ack = Ack {
                packet_id,
                reason_code,
                properties: properties.into(),
            };
            match packet {
                PacketType::PubAck => Packet::PubAck(ack),
                PacketType::PubRec => Packet::PubRec(ack),
                PacketType::PubRel => Packet::PubRel(ack),
                _ => Packet::PubComp(ack),
            }
        },
    )
}

fn subscribe(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let subscription = (topic_filter(), qos(), any::<bool>(), any::<bool>(), 0u8..3).prop_map(
        move |(filter, qos, nl, rap, rh)| {
            let options = if version.is_v5() {
                SubscriptionOptions {
                    qos,
                    // No Local is not allowed on a shared subscription (MQTT-3.8.3-4).
                    no_local: nl && !filter.is_shared(),
                    retain_as_published: rap,
                    retain_handling: [
                        RetainHandling::SendAtSubscribe,
                        RetainHandling::SendAtSubscribeIfNew,
                        RetainHandling::DoNotSend,
                    ][usize::from(rh)],
                }
            } else {
                SubscriptionOptions {
                    qos,
                    ..Default::default()
                }
            };
            Subscription { filter, options }
        },
    );
    let properties = v5_only(
        version,
        (of(subscription_id()), user_properties()).prop_map(
            |(subscription_identifier, user_properties)| SubscribeProperties {
                subscription_identifier,
                user_properties,
            },
        ),
    );
    (packet_id(), properties, vec(subscription, 1..5)).prop_map(
        |(packet_id, properties, subscriptions)| {
            Packet::Subscribe(Subscribe {
                packet_id,
                properties: properties.into(),
                subscriptions,
            })
        },
    )
}

fn suback(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let code = if version.is_v5() {
        reason_code(PacketType::SubAck).boxed()
    } else {
        proptest::sample::select(vec![
            ReasonCode::Success,
            ReasonCode::GrantedQoS1,
            ReasonCode::GrantedQoS2,
            ReasonCode::UnspecifiedError,
        ])
        .boxed()
    };
    (
        packet_id(),
        v5_only(version, suback_properties()),
        vec(code, 0..5),
    )
        .prop_map(|(packet_id, properties, reason_codes)| {
            Packet::SubAck(SubAck {
                packet_id,
                properties: properties.into(),
                reason_codes,
            })
        })
}

fn unsubscribe(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let properties = v5_only(
        version,
        user_properties().prop_map(|user_properties| UnsubscribeProperties { user_properties }),
    );
    (packet_id(), properties, vec(topic_filter(), 1..5)).prop_map(
        |(packet_id, properties, filters)| {
            Packet::Unsubscribe(Unsubscribe {
                packet_id,
                properties: properties.into(),
                filters,
            })
        },
    )
}

fn unsuback(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let codes = if version.is_v5() {
        vec(reason_code(PacketType::UnsubAck), 0..5).boxed()
    } else {
        Just(Vec::new()).boxed()
    };
    (packet_id(), v5_only(version, suback_properties()), codes).prop_map(
        |(packet_id, properties, reason_codes)| {
            Packet::UnsubAck(UnsubAck {
                packet_id,
                properties: properties.into(),
                reason_codes,
            })
        },
    )
}

fn disconnect(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let code = if version.is_v5() {
        reason_code(PacketType::Disconnect).boxed()
    } else {
        Just(ReasonCode::Success).boxed()
    };
    (code, v5_only(version, disconnect_properties())).prop_map(|(reason_code, properties)| {
        Packet::Disconnect(Disconnect {
            reason_code,
            properties: properties.into(),
        })
    })
}

fn auth() -> impl Strategy<Value = Packet> {
    (reason_code(PacketType::Auth), auth_properties()).prop_map(|(reason_code, properties)| {
        Packet::Auth(Auth {
            reason_code,
            properties: properties.into(),
        })
    })
}

/// Any packet valid in `version`.
fn packet(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    let mut choices: Vec<BoxedStrategy<Packet>> = vec![
        connect(version).boxed(),
        connack(version),
        publish(version).boxed(),
        ack(version, PacketType::PubAck).boxed(),
        ack(version, PacketType::PubRec).boxed(),
        ack(version, PacketType::PubRel).boxed(),
        ack(version, PacketType::PubComp).boxed(),
        subscribe(version).boxed(),
        suback(version).boxed(),
        unsubscribe(version).boxed(),
        unsuback(version).boxed(),
        Just(Packet::PingReq).boxed(),
        Just(Packet::PingResp).boxed(),
        disconnect(version).boxed(),
    ];
    if version.is_v5() {
        choices.push(auth().boxed());
    }
    proptest::strategy::Union::new(choices).boxed()
}

fn version() -> impl Strategy<Value = ProtocolVersion> {
    prop_oneof![
        Just(ProtocolVersion::V3_1),
        Just(ProtocolVersion::V3_1_1),
        Just(ProtocolVersion::V5)
    ]
}

fn versioned_packet() -> impl Strategy<Value = (ProtocolVersion, Packet)> {
    version().prop_flat_map(|version| packet(version).prop_map(move |packet| (version, packet)))
}

fn versioned_stream() -> impl Strategy<Value = (ProtocolVersion, Vec<Packet>)> {
    version().prop_flat_map(|version| {
        vec(packet(version), 1..6).prop_map(move |packets| (version, packets))
    })
}

fn encode(packet: &Packet, version: ProtocolVersion) -> BytesMut {
    let mut buf = BytesMut::new();
    packet
        .encode(version, &mut buf)
        .expect("a generated packet is valid");
    buf
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn decode_of_encode_is_identity((version, packet) in versioned_packet()) {
        let mut buf = encode(&packet, version);
        prop_assert_eq!(buf.len(), packet.encoded_len(version));
        let decoded = decode(&mut buf, version, &Limits::default());
        prop_assert_eq!(decoded, Ok(Some(packet)));
        prop_assert!(buf.is_empty(), "{} bytes not consumed", buf.len());
    }

    #[test]
    fn every_strict_prefix_is_incomplete_and_consumes_nothing((version, packet) in versioned_packet()) {
        let whole = encode(&packet, version);
        for cut in 0..whole.len() {
            let mut buf = BytesMut::from(&whole[..cut]);
            prop_assert_eq!(decode(&mut buf, version, &Limits::default()), Ok(None), "prefix {}", cut);
            prop_assert_eq!(&buf[..], &whole[..cut]);
        }
    }

    #[test]
    fn any_split_into_chunks_decodes_to_the_same_packets(
        (version, packets) in versioned_stream(),
        cuts in vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let mut stream = BytesMut::new();
        for packet in &packets {
            packet.encode(version, &mut stream).unwrap();
        }
        let mut cuts: Vec<usize> = cuts.iter().map(|cut| cut.index(stream.len() + 1)).collect();
        cuts.push(stream.len());
        cuts.sort_unstable();
        let mut decoder = Decoder::with_version(version, Limits::default());
        let mut received = BytesMut::new();
        let mut decoded = Vec::new();
        let mut start = 0;
        for cut in cuts {
            received.extend_from_slice(&stream[start..cut]);
            start = cut;
            while let Some(packet) = decoder.decode(&mut received).unwrap() {
                decoded.push(packet);
            }
        }
        prop_assert_eq!(decoded, packets);
        prop_assert!(received.is_empty());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..256), level in 3u8..=5, limit in 0u32..512) {
        let version = ProtocolVersion::from_level(level).unwrap();
        let mut buf = BytesMut::from(&bytes[..]);
        let limits = Limits { max_packet_size: limit };
        while let Ok(Some(_)) = decode(&mut buf, version, &limits) {}
        let mut server = Decoder::new(Limits::default());
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(_)) = server.decode(&mut buf) {}
    }

    #[test]
    fn a_decoded_packet_re_encodes_to_the_same_packet(bytes in vec(any::<u8>(), 0..128), level in 3u8..=5) {
        // Whatever arbitrary bytes decode to must survive a round trip (our encoder writes the
        // canonical form, which may differ from a peer's non-canonical bytes).
        let version = ProtocolVersion::from_level(level).unwrap();
        let mut buf = BytesMut::from(&bytes[..]);
        if let Ok(Some(packet)) = decode(&mut buf, version, &Limits::default()) {
            let version = match &packet { Packet::Connect(connect) => connect.protocol, _ => version };
            let mut again = encode(&packet, version);
            prop_assert_eq!(decode(&mut again, version, &Limits::default()), Ok(Some(packet)));
        }
    }
}

//! What the engines report, in protocol terms.

use rallymq_codec::{
    AckProperties, Auth, ConnAck, Connect, DisconnectProperties, PacketId, Publish, QoS,
    ReasonCode, SubAckProperties, Subscribe, Unsubscribe, Will,
};

use crate::PublishToken;

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The peer sent DISCONNECT.
    PeerDisconnected {
        /// Its reason code (always success before MQTT 5).
        reason_code: ReasonCode,
        /// Its properties (MQTT 5).
        properties: DisconnectProperties,
    },
    /// This side closed on the caller's request, sending DISCONNECT where the version allows.
    LocalDisconnect(ReasonCode),
    /// The peer broke the protocol; this side sent DISCONNECT with this reason code (MQTT 5)
    /// and closed.
    ProtocolViolation {
        /// The reason code sent.
        reason_code: ReasonCode,
        /// What was wrong, for logs.
        detail: String,
    },
    /// Nothing was received for 1.5 times the keep-alive (server), or no PINGRESP came back
    /// in time (client).
    KeepAliveTimeout,
    /// No CONNECT arrived in time (server side).
    ConnectTimeout,
    /// A packet begun did not arrive whole in time (server side: trickled a byte at a time).
    PacketTimeout,
    /// The connection attempt was refused (CONNACK with a failure, sent or received).
    Refused(ReasonCode),
    /// The transport ended without DISCONNECT.
    TransportClosed,
}

impl CloseReason {
    /// Whether the will message must be published (MQTT-3.1.2-8/-10, MQTT 5 §3.14.4): any end
    /// but a DISCONNECT with reason 0x00 from the client.
    pub fn publishes_will(&self) -> bool {
        !matches!(
            self,
            Self::PeerDisconnected {
                reason_code: ReasonCode::Success,
                ..
            } | Self::Refused(_)
        )
    }
}

/// Which way a recorded packet went (see [`ClientConfig::record_packets`](crate::ClientConfig::record_packets)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PacketDirection {
    /// Encoded for sending: it is in the bytes `poll_transmit` gives (or has given).
    Sent,
    /// Decoded from the bytes given to `handle_bytes`.
    Received,
}

/// An application message received from the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundMessage {
    /// The PUBLISH with its topic resolved (a topic alias is replaced by its topic) and its
    /// Topic Alias property removed.
    pub publish: Publish,
    /// Present for QoS 1 and 2 when acknowledgements are manual: pass it to `acknowledge`
    /// once the message is safe. With automatic acknowledgements this is `None` and the
    /// engine has already acknowledged.
    pub ack: Option<AckHandle>,
}

/// Permission to acknowledge one inbound QoS 1 or 2 message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AckHandle {
    pub(crate) packet_id: PacketId,
    pub(crate) qos: QoS,
}

impl AckHandle {
    /// The message's packet identifier.
    pub fn packet_id(&self) -> PacketId {
        self.packet_id
    }

    /// The message's QoS.
    pub fn qos(&self) -> QoS {
        self.qos
    }
}

/// The outcome of one outgoing QoS 1 or 2 message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishOutcome {
    /// The token `publish` returned.
    pub token: PublishToken,
    /// The QoS it was sent with.
    pub qos: QoS,
    /// The peer's reason code (PUBACK for QoS 1; PUBREC's failure or PUBCOMP's for QoS 2).
    pub reason_code: ReasonCode,
    /// The acknowledgement's properties (MQTT 5).
    pub properties: AckProperties,
}

/// Identifies one SUBSCRIBE or UNSUBSCRIBE sent by a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestToken(pub PacketId);

/// What happened on a client connection.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// CONNACK accepted the connection.
    Connected {
        /// Whether the server resumed a session.
        session_present: bool,
        /// The CONNACK, with the server's negotiated properties.
        connack: ConnAck,
    },
    /// A message arrived. An inbound QoS 2 message surfaces exactly once.
    Message(InboundMessage),
    /// A QoS 1 message was acknowledged by PUBACK.
    PublishAcknowledged(PublishOutcome),
    /// A QoS 2 message completed (PUBCOMP), or failed at PUBREC.
    PublishCompleted(PublishOutcome),
    /// SUBACK arrived.
    Subscribed {
        /// The token `subscribe` returned.
        token: RequestToken,
        /// One per subscription, in order: the granted QoS or a failure.
        reason_codes: Vec<ReasonCode>,
        /// SUBACK properties (MQTT 5).
        properties: SubAckProperties,
    },
    /// UNSUBACK arrived.
    Unsubscribed {
        /// The token `unsubscribe` returned.
        token: RequestToken,
        /// One per filter (MQTT 5; empty before).
        reason_codes: Vec<ReasonCode>,
        /// UNSUBACK properties (MQTT 5).
        properties: SubAckProperties,
    },
    /// An AUTH packet arrived (MQTT 5 extended authentication): answer with `send_auth`.
    Auth(Auth),
    /// The connection ended; nothing more happens on it. Take the session state to resume.
    ///
    /// The last bytes of the connection may still be waiting in `poll_transmit`: the
    /// DISCONNECT of `disconnect`, or the one telling the server why this side closed. Write
    /// them before closing the transport, or a clean disconnect looks like a lost connection
    /// to the server, which then publishes the will.
    Closed(CloseReason),
}

/// What happened on a server connection.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerEvent {
    /// A valid CONNECT arrived: decide with `accept` or `refuse` (or answer AUTH first).
    /// `needs_client_id` is set when the client sent an empty identifier that the server must
    /// assign (pass one to `accept`).
    ConnectReceived {
        /// The CONNECT (version, client id, credentials, will, properties).
        connect: Box<Connect>,
        /// The client id is empty and the server must assign one.
        needs_client_id: bool,
    },
    /// A message arrived from the client, its topic resolved. QoS 2 surfaces exactly once.
    Message(InboundMessage),
    /// A message delivered at QoS 1 was acknowledged.
    DeliveryAcknowledged(PublishOutcome),
    /// A message delivered at QoS 2 completed (or failed at PUBREC).
    DeliveryCompleted(PublishOutcome),
    /// PUBREC came for a message delivered at QoS 2: it moved to the Released stage, and its
    /// PUBREL waits in `poll_transmit`. A driver that keeps deliveries durable records the
    /// stage before it writes the PUBREL, so that after a crash the message is released, not
    /// delivered again.
    DeliveryReleased(PublishToken),
    /// PUBREL came for a QoS 2 message from the client: its packet identifier is free again
    /// (PUBCOMP waits in `poll_transmit`). A driver that keeps the identifiers awaiting release
    /// durable forgets this one.
    MessageReleased(PacketId),
    /// A SUBSCRIBE arrived: answer it with `answer_subscribe`.
    Subscribe(Subscribe),
    /// An UNSUBSCRIBE arrived: answer it with `answer_unsubscribe`.
    Unsubscribe(Unsubscribe),
    /// An AUTH packet arrived (MQTT 5 extended authentication).
    Auth(Auth),
    /// The will is due now (its Will Delay has passed since the connection closed
    /// abnormally): publish it.
    WillDue(Will),
    /// The connection ended. If it left a will with a delay, a `WillDue` follows when the
    /// delay passes, unless the driver drops the connection first (session resumed).
    ///
    /// As with [`ClientEvent::Closed`], the last bytes (a DISCONNECT, a refusing CONNACK) may
    /// still be waiting in `poll_transmit`: write them before closing the transport.
    Closed(CloseReason),
}

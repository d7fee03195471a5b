//! The broker's counters, the one set that `$SYS` (sys.rs) and `/metrics` (metrics.rs) both
//! read: plain atomics, bumped on the hot path without locks.
//!
//! What is bumped for every message or every read and write lives in shards, one per worker
//! thread (up to [`SHARDS`]), each on cache lines of its own: two cores counting the same
//! message rate would otherwise pass one cache line back and forth on every bump. A reader sums
//! the shards. What changes once per connection (connects, disconnects, refusals) is counted in
//! one place.

use std::array;
use std::cell::Cell;
use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};

use rallymq_codec::{ProtocolVersion, QoS, ReasonCode};
use rallymq_session::CloseReason;

use crate::ListenerKind;

/// Shards of the hot counters. Threads beyond this many share shards (round robin).
const SHARDS: usize = 16;

/// A reason code as the specification writes it (`0x87`), for labels and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hex(pub(crate) ReasonCode);

impl fmt::Display for Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{:02X}", self.0.as_u8())
    }
}

/// Why a message was dropped, the `cause` label of `rallymq_messages_dropped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dropped {
    /// A session's queue was at `max_queued_messages` or `max_queued_bytes` (the message, or
    /// with `DropOldest` the oldest waiting one).
    QueueFull,
    /// QoS 0 for a session whose client is offline: not kept.
    OfflineQos0,
    /// Its Message Expiry Interval passed while it waited.
    Expired,
    /// Larger than the client's Maximum Packet Size (MQTT-3.1.2-25).
    PacketTooLarge,
    /// Published where no one subscribes. Not a loss: not in `$SYS`'s dropped count.
    NoSubscribers,
    /// Not routed: its topic is over the limits of levels or length.
    TopicInvalid,
    /// Not routed: the client may not publish there; or not delivered: the subscriber may
    /// not read there (its ACL, checked on delivery).
    NotAuthorized,
    /// Not routed for another reason.
    Refused,
    /// Waiting for a session that ended (a clean session's connection closed, an offline
    /// session expired, a clean start replaced it).
    SessionEnded,
    /// Bridged, and refused by the remote broker (a PUBACK or PUBREC with an error code).
    BridgeRefused,
}

impl Dropped {
    /// Every cause, in the order of the counters.
    pub(crate) const ALL: [Self; 10] = [
        Self::QueueFull,
        Self::OfflineQos0,
        Self::Expired,
        Self::PacketTooLarge,
        Self::NoSubscribers,
        Self::TopicInvalid,
        Self::NotAuthorized,
        Self::Refused,
        Self::SessionEnded,
        Self::BridgeRefused,
    ];

    /// The label value.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::QueueFull => "queue_full",
            Self::OfflineQos0 => "offline_qos0",
            Self::Expired => "expired",
            Self::PacketTooLarge => "packet_too_large",
            Self::NoSubscribers => "no_subscribers",
            Self::TopicInvalid => "topic_invalid",
            Self::NotAuthorized => "not_authorized",
            Self::Refused => "refused",
            Self::SessionEnded => "session_ended",
            Self::BridgeRefused => "bridge_refused",
        }
    }

    /// The cause of a PUBLISH refused with `code`.
    pub(crate) fn refused_with(code: ReasonCode) -> Self {
        match code {
            ReasonCode::TopicNameInvalid => Self::TopicInvalid,
            ReasonCode::NotAuthorized => Self::NotAuthorized,
            _ => Self::Refused,
        }
    }

    /// Whether `$SYS/broker/publish/messages/dropped` counts it: a message some subscriber
    /// was to receive and did not.
    fn is_loss(self) -> bool {
        !matches!(
            self,
            Self::NoSubscribers | Self::TopicInvalid | Self::NotAuthorized | Self::Refused
        )
    }
}

/// How a connection that had been accepted ended, the `cause` label of
/// `rallymq_disconnects_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Disconnect {
    /// The client sent DISCONNECT (with the reason code it gave).
    Client,
    /// The broker sent DISCONNECT (session taken over, shutting down... with its code).
    Server,
    /// The client broke the protocol (with the reason code of the broker's DISCONNECT).
    ProtocolError,
    /// Nothing from the client for 1.5 times its keep alive.
    KeepAliveTimeout,
    /// A packet begun did not arrive whole in time.
    PacketTimeout,
    /// The connection ended without DISCONNECT.
    ConnectionLost,
}

impl Disconnect {
    /// Every cause, in the order of the counters.
    pub(crate) const ALL: [Self; 6] = [
        Self::Client,
        Self::Server,
        Self::ProtocolError,
        Self::KeepAliveTimeout,
        Self::PacketTimeout,
        Self::ConnectionLost,
    ];

    /// The label value.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Server => "server",
            Self::ProtocolError => "protocol_error",
            Self::KeepAliveTimeout => "keep_alive_timeout",
            Self::PacketTimeout => "packet_timeout",
            Self::ConnectionLost => "connection_lost",
        }
    }

    /// The cause of a close, and the reason code of the DISCONNECT that went with it, if any.
    pub(crate) fn of(reason: &CloseReason) -> (Self, Option<ReasonCode>) {
        match reason {
            CloseReason::PeerDisconnected { reason_code, .. } => (Self::Client, Some(*reason_code)),
            CloseReason::LocalDisconnect(code) => (Self::Server, Some(*code)),
            CloseReason::ProtocolViolation { reason_code, .. } => {
                (Self::ProtocolError, Some(*reason_code))
            }
            CloseReason::KeepAliveTimeout => (Self::KeepAliveTimeout, None),
            CloseReason::PacketTimeout => (Self::PacketTimeout, None),
            // The transport ended. (A connect timeout or a refusal does not follow an accepted
            // CONNECT.)
            _ => (Self::ConnectionLost, None),
        }
    }
}

/// Why a socket was closed on accept, before any MQTT: the `cause` label of
/// `rallymq_sockets_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SocketRefusal {
    /// `max_connections` open already.
    MaxConnections,
    /// `max_connections_per_ip` open already from its address.
    PerAddress,
    /// Its address opened `max_connection_rate_per_ip` connections in the last second.
    Rate,
}

impl SocketRefusal {
    /// Every cause, in the order of the counters.
    pub(crate) const ALL: [Self; 3] = [Self::MaxConnections, Self::PerAddress, Self::Rate];

    /// The label value.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::MaxConnections => "max_connections",
            Self::PerAddress => "max_connections_per_ip",
            Self::Rate => "max_connection_rate_per_ip",
        }
    }
}

/// Where a connection came in, the `listener` label: a listener's kind, or (`None`) a stream
/// an embedder handed to `BrokerHandle::serve_connection`.
pub(crate) type Via = Option<ListenerKind>;

/// Every `listener` label, in the order of the counters.
pub(crate) const VIAS: [Via; 5] = [
    Some(ListenerKind::Tcp),
    Some(ListenerKind::Tls),
    Some(ListenerKind::WebSocket),
    Some(ListenerKind::WebSocketTls),
    None,
];

/// The `listener` label of a connection.
pub(crate) fn via_label(via: Via) -> &'static str {
    match via {
        Some(ListenerKind::Tcp) => "tcp",
        Some(ListenerKind::Tls) => "tls",
        Some(ListenerKind::WebSocket) => "ws",
        Some(ListenerKind::WebSocketTls) => "wss",
        None => "stream",
    }
}

fn via_index(via: Via) -> usize {
    match via {
        Some(ListenerKind::Tcp) => 0,
        Some(ListenerKind::Tls) => 1,
        Some(ListenerKind::WebSocket) => 2,
        Some(ListenerKind::WebSocketTls) => 3,
        None => 4,
    }
}

/// Every protocol version, in the order of the counters.
pub(crate) const VERSIONS: [ProtocolVersion; 3] = [
    ProtocolVersion::V3_1,
    ProtocolVersion::V3_1_1,
    ProtocolVersion::V5,
];

/// The `protocol` label of a version, as MQTT names it.
pub(crate) fn version_label(version: ProtocolVersion) -> &'static str {
    match version {
        ProtocolVersion::V3_1 => "3.1",
        ProtocolVersion::V3_1_1 => "3.1.1",
        ProtocolVersion::V5 => "5.0",
    }
}

fn version_index(version: ProtocolVersion) -> usize {
    match version {
        ProtocolVersion::V3_1 => 0,
        ProtocolVersion::V3_1_1 => 1,
        ProtocolVersion::V5 => 2,
    }
}

fn zeros<const N: usize>() -> [AtomicU64; N] {
    array::from_fn(|_| AtomicU64::new(0))
}

/// The counters bumped per message, or per read and write: one shard per worker thread, on
/// cache lines of its own.
#[derive(Debug)]
#[repr(align(128))]
struct Shard {
    bytes_received: AtomicU64,
    bytes_sent: AtomicU64,
    /// Messages published into the broker: by clients, wills, in-process.
    routed: AtomicU64,
    /// Copies of them queued for subscribers.
    queued: AtomicU64,
    /// PUBLISH packets from clients, by QoS, and their payload bytes.
    publish_received: [AtomicU64; 3],
    publish_received_bytes: [AtomicU64; 3],
    /// PUBLISH packets to clients, by QoS, and their payload bytes.
    publish_sent: [AtomicU64; 3],
    publish_sent_bytes: [AtomicU64; 3],
    dropped: [AtomicU64; Dropped::ALL.len()],
}

impl Default for Shard {
    fn default() -> Self {
        Self {
            bytes_received: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            routed: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            publish_received: zeros(),
            publish_received_bytes: zeros(),
            publish_sent: zeros(),
            publish_sent_bytes: zeros(),
            dropped: zeros(),
        }
    }
}

/// The shard of the current thread: each thread takes the next one the first time it counts.
fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: Cell<Option<usize>> = const { Cell::new(None) };
    }
    INDEX.with(|index| match index.get() {
        Some(i) => i,
        None => {
            let i = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
            index.set(Some(i));
            i
        }
    })
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// The broker's counters.
#[derive(Debug)]
pub(crate) struct Stats {
    shards: Box<[Shard; SHARDS]>,
    pub(crate) clients_connected: AtomicUsize,
    pub(crate) clients_maximum: AtomicUsize,
    connections_total: AtomicU64,
    /// Clients connected now, by listener and protocol version.
    connected: [[AtomicI64; VERSIONS.len()]; VIAS.len()],
    /// CONNACKs sent, by reason code (success and refusals).
    connacks: [AtomicU64; 256],
    /// Accepted connections that ended, by cause and the reason code of their DISCONNECT
    /// (index 256: none).
    disconnects: [[AtomicU64; 257]; Disconnect::ALL.len()],
    sockets_refused: [AtomicU64; SocketRefusal::ALL.len()],
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            shards: Box::new(array::from_fn(|_| Shard::default())),
            clients_connected: AtomicUsize::new(0),
            clients_maximum: AtomicUsize::new(0),
            connections_total: AtomicU64::new(0),
            connected: array::from_fn(|_| array::from_fn(|_| AtomicI64::new(0))),
            connacks: zeros(),
            disconnects: array::from_fn(|_| zeros()),
            sockets_refused: zeros(),
        }
    }
}

/// A snapshot of the sharded counters, summed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Totals {
    pub(crate) bytes_received: u64,
    pub(crate) bytes_sent: u64,
    pub(crate) routed: u64,
    pub(crate) queued: u64,
    pub(crate) publish_received: [u64; 3],
    pub(crate) publish_received_bytes: [u64; 3],
    pub(crate) publish_sent: [u64; 3],
    pub(crate) publish_sent_bytes: [u64; 3],
    pub(crate) dropped: [u64; Dropped::ALL.len()],
}

impl Totals {
    /// Messages lost to subscribers (what `$SYS/broker/publish/messages/dropped` counts).
    pub(crate) fn lost(&self) -> u64 {
        Dropped::ALL
            .iter()
            .zip(self.dropped)
            .filter(|(cause, _)| cause.is_loss())
            .map(|(_, n)| n)
            .sum()
    }
}

fn qos_index(qos: QoS) -> usize {
    match qos {
        QoS::AtMostOnce => 0,
        QoS::AtLeastOnce => 1,
        QoS::ExactlyOnce => 2,
    }
}

impl Stats {
    fn shard(&self) -> &Shard {
        &self.shards[shard_index()]
    }

    /// Bytes read from a client's transport.
    pub(crate) fn bytes_received(&self, n: usize) {
        add(&self.shard().bytes_received, n as u64);
    }

    /// Bytes written to a client's transport.
    pub(crate) fn bytes_sent(&self, n: usize) {
        add(&self.shard().bytes_sent, n as u64);
    }

    /// A PUBLISH from a client, with `payload` bytes.
    pub(crate) fn publish_received(&self, qos: QoS, payload: usize) {
        let shard = self.shard();
        add(&shard.publish_received[qos_index(qos)], 1);
        add(
            &shard.publish_received_bytes[qos_index(qos)],
            payload as u64,
        );
    }

    /// A PUBLISH to a client, with `payload` bytes.
    pub(crate) fn publish_sent(&self, qos: QoS, payload: usize) {
        let shard = self.shard();
        add(&shard.publish_sent[qos_index(qos)], 1);
        add(&shard.publish_sent_bytes[qos_index(qos)], payload as u64);
    }

    /// A message published into the broker, queued for `queued` subscribers.
    pub(crate) fn routed(&self, queued: usize) {
        let shard = self.shard();
        add(&shard.routed, 1);
        add(&shard.queued, queued as u64);
    }

    /// `n` messages dropped for `cause`.
    pub(crate) fn dropped(&self, cause: Dropped, n: u64) {
        if n > 0 {
            add(&self.shard().dropped[cause as usize], n);
        }
    }

    /// The sharded counters, summed.
    pub(crate) fn totals(&self) -> Totals {
        let mut totals = Totals::default();
        for shard in self.shards.iter() {
            totals.bytes_received += get(&shard.bytes_received);
            totals.bytes_sent += get(&shard.bytes_sent);
            totals.routed += get(&shard.routed);
            totals.queued += get(&shard.queued);
            let sums = [
                (&mut totals.publish_received, &shard.publish_received),
                (
                    &mut totals.publish_received_bytes,
                    &shard.publish_received_bytes,
                ),
                (&mut totals.publish_sent, &shard.publish_sent),
                (&mut totals.publish_sent_bytes, &shard.publish_sent_bytes),
            ];
            for (total, counters) in sums {
                for (total, counter) in total.iter_mut().zip(counters) {
                    *total += get(counter);
                }
            }
            for (total, counter) in totals.dropped.iter_mut().zip(&shard.dropped) {
                *total += get(counter);
            }
        }
        totals
    }

    /// A CONNECT was accepted on `via` with `version`.
    pub(crate) fn client_connected(&self, via: Via, version: ProtocolVersion) {
        let now = self.clients_connected.fetch_add(1, Ordering::Relaxed) + 1;
        self.clients_maximum.fetch_max(now, Ordering::Relaxed);
        self.connections_total.fetch_add(1, Ordering::Relaxed);
        self.connected[via_index(via)][version_index(version)].fetch_add(1, Ordering::Relaxed);
        add(&self.connacks[usize::from(ReasonCode::Success.as_u8())], 1);
    }

    /// A connection counted by [`Stats::client_connected`] ended.
    pub(crate) fn client_disconnected(&self, via: Via, version: Option<ProtocolVersion>) {
        self.clients_connected.fetch_sub(1, Ordering::Relaxed);
        if let Some(version) = version {
            self.connected[via_index(via)][version_index(version)].fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// How a connection counted by [`Stats::client_connected`] ended.
    pub(crate) fn disconnect(&self, cause: Disconnect, code: Option<ReasonCode>) {
        let code = code.map_or(256, |code| usize::from(code.as_u8()));
        add(&self.disconnects[cause as usize][code], 1);
    }

    /// A CONNECT refused with `code`.
    pub(crate) fn connect_refused(&self, code: ReasonCode) {
        add(&self.connacks[usize::from(code.as_u8())], 1);
    }

    /// A socket closed on accept.
    pub(crate) fn socket_refused(&self, cause: SocketRefusal) {
        add(&self.sockets_refused[cause as usize], 1);
    }

    /// Connections accepted since the start.
    pub(crate) fn connections_total(&self) -> u64 {
        get(&self.connections_total)
    }

    /// Clients connected now on `via` with `version`.
    pub(crate) fn connected(&self, via: Via, version: ProtocolVersion) -> i64 {
        self.connected[via_index(via)][version_index(version)].load(Ordering::Relaxed)
    }

    /// CONNACKs sent with each reason code that has been sent (success always).
    pub(crate) fn connacks(&self) -> Vec<(ReasonCode, u64)> {
        rallymq_codec::ALL_REASON_CODES
            .iter()
            .map(|code| (*code, get(&self.connacks[usize::from(code.as_u8())])))
            .filter(|(code, n)| *n > 0 || *code == ReasonCode::Success)
            .collect()
    }

    /// Disconnects by cause and code, those that happened.
    pub(crate) fn disconnects(&self) -> Vec<(Disconnect, Option<ReasonCode>, u64)> {
        let mut all = Vec::new();
        for cause in Disconnect::ALL {
            let counters = &self.disconnects[cause as usize];
            for (index, counter) in counters.iter().enumerate() {
                let n = get(counter);
                if n == 0 {
                    continue;
                }
                let code = u8::try_from(index).ok().and_then(ReasonCode::from_u8);
                all.push((cause, code, n));
            }
        }
        all
    }

    /// Sockets closed on accept, by cause.
    pub(crate) fn sockets_refused(&self) -> [(SocketRefusal, u64); SocketRefusal::ALL.len()] {
        SocketRefusal::ALL.map(|cause| (cause, get(&self.sockets_refused[cause as usize])))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts from several threads land in several shards and sum to what was counted.
    #[test]
    fn sharded_counts_sum_across_threads() {
        let stats = std::sync::Arc::new(Stats::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let stats = stats.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        stats.publish_received(QoS::AtLeastOnce, 10);
                        stats.dropped(Dropped::QueueFull, 1);
                        stats.dropped(Dropped::NoSubscribers, 2);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("no panic");
        }
        let totals = stats.totals();
        assert_eq!(totals.publish_received, [0, 4000, 0]);
        assert_eq!(totals.publish_received_bytes, [0, 40_000, 0]);
        assert_eq!(totals.dropped[Dropped::QueueFull as usize], 4000);
        assert_eq!(totals.dropped[Dropped::NoSubscribers as usize], 8000);
        assert_eq!(totals.lost(), 4000, "no subscribers is not a loss");
    }

    #[test]
    fn disconnect_codes_and_none_are_kept_apart() {
        let stats = Stats::default();
        stats.disconnect(Disconnect::Client, Some(ReasonCode::Success));
        stats.disconnect(Disconnect::Client, Some(ReasonCode::Success));
        stats.disconnect(Disconnect::ConnectionLost, None);
        assert_eq!(
            stats.disconnects(),
            vec![
                (Disconnect::Client, Some(ReasonCode::Success), 2),
                (Disconnect::ConnectionLost, None, 1),
            ]
        );
    }
}

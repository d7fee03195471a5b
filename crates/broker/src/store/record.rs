//! How the durable store's records are laid out as bytes: keys that sort as the broker reads
//! them (a session's queue in order), and values in a small versioned binary form. Messages
//! are kept as MQTT 5 PUBLISH packets, encoded and decoded by `rallymq-codec`, so that every
//! property survives without a second encoding of its own.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use rallymq_codec::{
    Limits, Packet, PacketId, ProtocolVersion, Publish, QoS, RetainHandling, SubscriptionId,
    SubscriptionOptions, TopicFilter,
};
use rallymq_session::OutgoingStage;

use super::{MessageId, QueueEntry, SessionRecord, StoreError, StoredMessage, StoredWill};

/// The layout version of every value below; a store written by a later layout is refused, one
/// written by an earlier one is brought up to this one when it is opened. Version 1 kept one
/// B-tree entry per queue entry; version 2 keeps a session's queue in chunks
/// ([`ENTRIES_PER_CHUNK`]); version 3 adds the queue's head to its counts (entries numbered
/// below it are gone, though a chunk may still hold them, which version 2 would read as
/// entries still queued) and keeps messages' reference counts in a table of their own.
pub(crate) const FORMAT_VERSION: u32 = 3;

/// How many consecutive sequence numbers of a session's queue share one B-tree value (a chunk).
/// A draining session reads, marks in flight and deletes its entries in order: one value per
/// 64 entries costs the store one B-tree lookup and one write where an entry of its own cost one
/// each per entry, which took most of the store's time in a drain (benches/README.md,
/// "Durability"). 64, so that a chunk's entries are one `u64` bitmap.
pub(crate) const ENTRIES_PER_CHUNK: u64 = 64;

/// The number of the chunk that holds sequence number `seq`, and the entry's place in it.
pub(crate) fn chunk_of(seq: u64) -> (u64, u8) {
    // The remainder is below 64.
    (seq / ENTRIES_PER_CHUNK, (seq % ENTRIES_PER_CHUNK) as u8)
}

/// The key of a queue chunk (in format 1: of a queue entry), or the start of a session's range
/// of them: the client id, a NUL (which no client id holds, MQTT-1.5.4-2), then the chunk's
/// number (format 1: the entry's sequence number) big-endian, so that a session's chunks sort
/// together and in order.
pub(crate) fn queue_key(client_id: &str, number: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(client_id.len() + 9);
    key.extend_from_slice(client_id.as_bytes());
    key.push(0);
    key.extend_from_slice(&number.to_be_bytes());
    key
}

/// The key of an inbound QoS 2 identifier awaiting PUBREL.
pub(crate) fn inbound_key(client_id: &str, packet_id: PacketId) -> Vec<u8> {
    let mut key = Vec::with_capacity(client_id.len() + 3);
    key.extend_from_slice(client_id.as_bytes());
    key.push(0);
    key.extend_from_slice(&packet_id.get().to_be_bytes());
    key
}

/// The first key of a session's entries or identifiers, and the first key past them.
pub(crate) fn session_range(client_id: &str) -> (Vec<u8>, Vec<u8>) {
    let mut start = Vec::with_capacity(client_id.len() + 1);
    start.extend_from_slice(client_id.as_bytes());
    start.push(0);
    let mut end = start.clone();
    // The NUL becomes 1: every key of this client sorts before it, and no other's in between.
    if let Some(last) = end.last_mut() {
        *last = 1;
    }
    (start, end)
}

/// The number at the end of a queue key.
pub(crate) fn number_of(key: &[u8]) -> Result<u64, StoreError> {
    let tail = key
        .len()
        .checked_sub(8)
        .map(|at| &key[at..])
        .ok_or_else(|| corrupt("queue key too short"))?;
    Ok(u64::from_be_bytes(
        tail.try_into().map_err(|_| corrupt("queue key"))?,
    ))
}

/// The packet identifier at the end of an inbound key.
pub(crate) fn packet_id_of(key: &[u8]) -> Result<PacketId, StoreError> {
    let tail = key
        .len()
        .checked_sub(2)
        .map(|at| &key[at..])
        .ok_or_else(|| corrupt("inbound key too short"))?;
    PacketId::new(u16::from_be_bytes([tail[0], tail[1]])).ok_or_else(|| corrupt("packet id 0"))
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(what.to_owned())
}

/// Milliseconds since the Unix epoch (0 for a time before it).
pub(crate) fn millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |since| {
        u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
    })
}

pub(crate) fn from_millis(millis: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(millis)
}

/// A reader that fails with `Corrupt` instead of panicking on short input.
pub(crate) struct Reader<'a>(pub(crate) &'a [u8]);

impl Reader<'_> {
    fn need(&self, n: usize) -> Result<(), StoreError> {
        if self.0.len() < n {
            return Err(corrupt("record too short"));
        }
        Ok(())
    }

    pub(crate) fn u8(&mut self) -> Result<u8, StoreError> {
        self.need(1)?;
        Ok(self.0.get_u8())
    }

    pub(crate) fn u16(&mut self) -> Result<u16, StoreError> {
        self.need(2)?;
        Ok(self.0.get_u16())
    }

    pub(crate) fn u32(&mut self) -> Result<u32, StoreError> {
        self.need(4)?;
        Ok(self.0.get_u32())
    }

    pub(crate) fn u64(&mut self) -> Result<u64, StoreError> {
        self.need(8)?;
        Ok(self.0.get_u64())
    }

    pub(crate) fn bytes(&mut self) -> Result<&[u8], StoreError> {
        let len = self.u32()? as usize;
        self.need(len)?;
        let (head, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(head)
    }
}

pub(crate) fn put_bytes(buf: &mut Vec<u8>, bytes: &[u8]) {
    // Records hold packets and strings below MQTT's 256 MB limit.
    buf.put_u32(u32::try_from(bytes.len()).unwrap_or(u32::MAX));
    buf.put_slice(bytes);
}

/// A PUBLISH as stored: MQTT 5, QoS 0 (the QoS is kept apart), no packet identifier.
pub(crate) fn put_publish(buf: &mut Vec<u8>, publish: &Publish) {
    let mut stored = publish.clone();
    buf.put_u8(publish.qos.bits());
    stored.qos = QoS::AtMostOnce;
    stored.packet_id = None;
    stored.dup = false;
    let mut bytes = BytesMut::new();
    // A message the broker accepted encodes: it was decoded, or built through the codec.
    if Packet::Publish(stored)
        .encode(ProtocolVersion::V5, &mut bytes)
        .is_err()
    {
        bytes.clear();
    }
    put_bytes(buf, &bytes);
}

pub(crate) fn read_publish(reader: &mut Reader<'_>) -> Result<Publish, StoreError> {
    let qos = QoS::from_bits(reader.u8()?).map_err(|_| corrupt("QoS"))?;
    let mut bytes = BytesMut::from(reader.bytes()?);
    let limits = Limits {
        max_packet_size: Limits::PROTOCOL_MAX_PACKET_SIZE,
    };
    match rallymq_codec::decode(&mut bytes, ProtocolVersion::V5, &limits) {
        Ok(Some(Packet::Publish(mut publish))) => {
            publish.qos = qos;
            Ok(publish)
        }
        _ => Err(corrupt("stored PUBLISH")),
    }
}

/// A stored message, with a reference count (queue entries pointing at it) in front: format 3
/// counts in a table of its own and writes 0 here.
pub(crate) fn encode_message(references: u32, message: &StoredMessage) -> Vec<u8> {
    let mut buf = Vec::with_capacity(message.publish.payload.len() + 64);
    buf.put_u32(references);
    buf.put_u64(millis(message.received_at));
    put_publish(&mut buf, &message.publish);
    buf
}

/// The reference count in front of an encoded message (read to upgrade a format 1 or 2 store).
pub(crate) fn message_references(value: &[u8]) -> Result<u32, StoreError> {
    Reader(value).u32()
}

pub(crate) fn decode_message(value: &[u8]) -> Result<StoredMessage, StoreError> {
    let mut reader = Reader(value);
    let _references = reader.u32()?;
    let received_at = from_millis(reader.u64()?);
    let publish = read_publish(&mut reader)?;
    Ok(StoredMessage {
        publish,
        received_at,
    })
}

/// An entry alone, as format 1 stored it.
#[cfg(test)]
pub(crate) fn encode_entry(entry: &QueueEntry) -> Vec<u8> {
    let mut buf = Vec::new();
    write_entry(&mut buf, entry);
    buf
}

fn write_entry(buf: &mut Vec<u8>, entry: &QueueEntry) {
    buf.put_u64(entry.message);
    buf.put_u8(entry.qos.bits());
    let (packet_id, stage) = match entry.in_flight {
        None => (0, 0),
        Some((id, OutgoingStage::Published)) => (id.get(), 1),
        Some((id, OutgoingStage::Released)) => (id.get(), 2),
    };
    buf.put_u8(u8::from(entry.retain) | (stage << 1));
    buf.put_u16(packet_id);
    buf.put_u32(entry.size);
    buf.put_u8(u8::try_from(entry.subscription_ids.len()).unwrap_or(u8::MAX));
    for id in entry.subscription_ids.iter().take(usize::from(u8::MAX)) {
        buf.put_u32(id.get());
    }
}

pub(crate) fn decode_entry(value: &[u8]) -> Result<QueueEntry, StoreError> {
    read_entry(&mut Reader(value))
}

fn read_entry(reader: &mut Reader<'_>) -> Result<QueueEntry, StoreError> {
    let message = reader.u64()?;
    let qos = QoS::from_bits(reader.u8()?).map_err(|_| corrupt("QoS"))?;
    let flags = reader.u8()?;
    let packet_id = reader.u16()?;
    let size = reader.u32()?;
    let in_flight = match (flags >> 1, PacketId::new(packet_id)) {
        (0, _) => None,
        (1, Some(id)) => Some((id, OutgoingStage::Published)),
        (2, Some(id)) => Some((id, OutgoingStage::Released)),
        _ => return Err(corrupt("entry stage")),
    };
    let count = reader.u8()?;
    let mut subscription_ids = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        subscription_ids
            .push(SubscriptionId::new(reader.u32()?).ok_or_else(|| corrupt("subscription id"))?);
    }
    Ok(QueueEntry {
        message,
        qos,
        retain: flags & 1 != 0,
        subscription_ids,
        in_flight,
        size,
    })
}

/// A chunk's value: a bitmap of the places that hold an entry (bit `i`: place `i`), then those
/// entries in order, each laid out as format 1 stored an entry alone. `entries` come in
/// ascending places, each below [`ENTRIES_PER_CHUNK`].
pub(crate) fn encode_chunk<'e>(entries: impl Iterator<Item = (u8, &'e QueueEntry)>) -> Vec<u8> {
    let mut present = 0u64;
    // The bitmap's place, filled in once the entries are written.
    let mut buf = vec![0; 8];
    for (place, entry) in entries {
        present |= 1 << place;
        write_entry(&mut buf, entry);
    }
    buf[..8].copy_from_slice(&present.to_be_bytes());
    buf
}

/// The entries of a chunk's value, with their places, in ascending order.
pub(crate) fn decode_chunk(
    value: &[u8],
) -> Result<impl Iterator<Item = Result<(u8, QueueEntry), StoreError>> + '_, StoreError> {
    let mut reader = Reader(value);
    let mut present = reader.u64()?;
    Ok(std::iter::from_fn(move || {
        if present == 0 {
            return None;
        }
        // Below 64.
        let place = present.trailing_zeros() as u8;
        present &= present - 1;
        Some(read_entry(&mut reader).map(|entry| (place, entry)))
    }))
}

/// A chunk's value edited in place: an entry is found by walking the lengths of the ones
/// before it, and added, replaced or removed by moving the bytes after it. The store changes a
/// chunk a few entries at a time (a draining session deletes from its front) and writes it
/// back once per commit: decoding all of its entries for each change and encoding them again
/// cost the store's writer more than the changes.
pub(crate) struct ChunkValue(Vec<u8>);

/// What an entry removed from a chunk referred to: its message and its size.
pub(crate) type RemovedEntry = (MessageId, u32);

/// An entry's length in a chunk from its fixed part: 17 bytes, then 4 per subscription id.
const ENTRY_FIXED: usize = 17;

impl ChunkValue {
    /// A chunk with no entry.
    pub(crate) fn empty() -> Self {
        Self(vec![0; 8])
    }

    /// The value read from the store. A value too short for its bitmap is corrupt; the
    /// entries are checked as they are walked.
    pub(crate) fn read(value: &[u8]) -> Result<Self, StoreError> {
        Reader(value).u64()?;
        Ok(Self(value.to_vec()))
    }

    fn present(&self) -> u64 {
        u64::from_be_bytes(self.0[..8].try_into().unwrap_or_default())
    }

    fn set_present(&mut self, present: u64) {
        self.0[..8].copy_from_slice(&present.to_be_bytes());
    }

    /// No entry is left.
    pub(crate) fn is_empty(&self) -> bool {
        self.present() == 0
    }

    /// The bytes to store.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The length of the entry at byte `at`.
    fn entry_len(&self, at: usize) -> Result<usize, StoreError> {
        let count = *self
            .0
            .get(at + ENTRY_FIXED - 1)
            .ok_or_else(|| corrupt("queue chunk entry"))?;
        let len = ENTRY_FIXED + 4 * usize::from(count);
        if at + len > self.0.len() {
            return Err(corrupt("queue chunk entry"));
        }
        Ok(len)
    }

    /// Where the entry at `place` starts (or would start), past the entries before it.
    fn offset_of(&self, place: u8) -> Result<usize, StoreError> {
        let present = self.present();
        // Past every entry, as a queue's tail is: the value's end, without walking the entries
        // (which made a chunk's 64 appends walk 2,016 lengths).
        if present >> place == 0 {
            return Ok(self.0.len());
        }
        let mut before = present & ((1u64 << place) - 1);
        let mut at = 8;
        while before != 0 {
            at += self.entry_len(at)?;
            before &= before - 1;
        }
        Ok(at)
    }

    /// The message and size of the entry at byte `at`.
    fn removed_at(&self, at: usize) -> Result<RemovedEntry, StoreError> {
        let mut reader = Reader(self.0.get(at..).unwrap_or_default());
        let message = reader.u64()?;
        // Its QoS, flags and packet identifier.
        reader.u32()?;
        Ok((message, reader.u32()?))
    }

    /// Puts `entry` at `place`; returns the entry it replaced, if there was one.
    pub(crate) fn insert(
        &mut self,
        place: u8,
        entry: &QueueEntry,
    ) -> Result<Option<RemovedEntry>, StoreError> {
        let at = self.offset_of(place)?;
        let bit = 1u64 << place;
        let present = self.present();
        if at == self.0.len() && present & bit == 0 {
            write_entry(&mut self.0, entry);
            self.set_present(present | bit);
            return Ok(None);
        }
        let mut bytes = Vec::with_capacity(ENTRY_FIXED + 4 * entry.subscription_ids.len());
        write_entry(&mut bytes, entry);
        if present & bit != 0 {
            let len = self.entry_len(at)?;
            let old = self.removed_at(at)?;
            self.0.splice(at..at + len, bytes);
            Ok(Some(old))
        } else {
            self.0.splice(at..at, bytes);
            self.set_present(present | bit);
            Ok(None)
        }
    }

    /// Replaces the entry at `place` if there is one; says whether there was.
    pub(crate) fn update(&mut self, place: u8, entry: &QueueEntry) -> Result<bool, StoreError> {
        if self.present() & (1u64 << place) == 0 {
            return Ok(false);
        }
        self.insert(place, entry)?;
        Ok(true)
    }

    /// The lowest place that holds an entry, if one does.
    pub(crate) fn first_place(&self) -> Option<u8> {
        let present = self.present();
        // Below 64.
        (present != 0).then(|| present.trailing_zeros() as u8)
    }

    /// Drops the entries at places below `place` (gone already: below the queue's head),
    /// without saying what they referred to.
    pub(crate) fn forget_below(&mut self, place: u8) -> Result<(), StoreError> {
        let at = self.offset_of(place)?;
        self.0.drain(8..at);
        let kept = self.present() & !((1u64 << place) - 1);
        self.set_present(kept);
        Ok(())
    }

    /// Removes the entry at `place`; returns what it referred to, if there was one.
    pub(crate) fn remove(&mut self, place: u8) -> Result<Option<RemovedEntry>, StoreError> {
        let bit = 1u64 << place;
        let present = self.present();
        if present & bit == 0 {
            return Ok(None);
        }
        let at = self.offset_of(place)?;
        let len = self.entry_len(at)?;
        let old = self.removed_at(at)?;
        self.0.drain(at..at + len);
        self.set_present(present & !bit);
        Ok(Some(old))
    }
}

/// The highest place of a chunk's value that holds an entry (`None`: an empty chunk, which the
/// store never keeps).
pub(crate) fn last_place(value: &[u8]) -> Result<Option<u8>, StoreError> {
    let present = Reader(value).u64()?;
    Ok((present != 0).then(|| 63 - present.leading_zeros() as u8))
}

/// A subscription's options in MQTT 5's byte layout (the SUBSCRIBE options byte).
fn options_byte(options: &SubscriptionOptions) -> u8 {
    options.qos.bits()
        | (u8::from(options.no_local) << 2)
        | (u8::from(options.retain_as_published) << 3)
        | ((options.retain_handling as u8) << 4)
}

fn read_options(byte: u8) -> Result<SubscriptionOptions, StoreError> {
    Ok(SubscriptionOptions {
        qos: QoS::from_bits(byte & 0b11).map_err(|_| corrupt("QoS"))?,
        no_local: byte & 0b100 != 0,
        retain_as_published: byte & 0b1000 != 0,
        retain_handling: match (byte >> 4) & 0b11 {
            0 => RetainHandling::SendAtSubscribe,
            1 => RetainHandling::SendAtSubscribeIfNew,
            2 => RetainHandling::DoNotSend,
            _ => return Err(corrupt("retain handling")),
        },
    })
}

pub(crate) fn encode_session(record: &SessionRecord) -> Vec<u8> {
    let mut buf = Vec::with_capacity(64);
    buf.put_u32(record.expiry_interval);
    buf.put_u64(record.disconnected_at.map_or(0, millis));
    buf.put_u32(u32::try_from(record.subscriptions.len()).unwrap_or(u32::MAX));
    for (filter, options, identifier) in &record.subscriptions {
        put_bytes(&mut buf, filter.as_str().as_bytes());
        buf.put_u8(options_byte(options));
        buf.put_u32(identifier.map_or(0, SubscriptionId::get));
    }
    match &record.will {
        None => buf.put_u8(0),
        Some(will) => {
            buf.put_u8(1);
            buf.put_u32(will.delay);
            buf.put_u64(will.due_at.map_or(0, millis));
            put_publish(&mut buf, &will.publish);
        }
    }
    buf
}

pub(crate) fn decode_session(client_id: &str, value: &[u8]) -> Result<SessionRecord, StoreError> {
    let mut reader = Reader(value);
    let expiry_interval = reader.u32()?;
    let disconnected_at = match reader.u64()? {
        0 => None,
        at => Some(from_millis(at)),
    };
    let count = reader.u32()?;
    let mut subscriptions = Vec::with_capacity(count.min(1024) as usize);
    for _ in 0..count {
        let filter = TopicFilter::from_bytes(Bytes::copy_from_slice(reader.bytes()?))
            .map_err(|_| corrupt("topic filter"))?;
        let options = read_options(reader.u8()?)?;
        let identifier = SubscriptionId::new(reader.u32()?);
        subscriptions.push((filter, options, identifier));
    }
    let will = match reader.u8()? {
        0 => None,
        _ => {
            let delay = reader.u32()?;
            let due_at = match reader.u64()? {
                0 => None,
                at => Some(from_millis(at)),
            };
            let publish = read_publish(&mut reader)?;
            Some(StoredWill {
                publish,
                delay,
                due_at,
            })
        }
    };
    Ok(SessionRecord {
        client_id: client_id.to_owned(),
        expiry_interval,
        disconnected_at,
        subscriptions,
        will,
    })
}

/// A session's queue counts, kept by the store as entries come and go: its entries, their
/// bytes, and its head (every entry numbered below it is gone).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) len: u64,
    pub(crate) bytes: u64,
    pub(crate) head: u64,
}

/// Counts as format 3 stores them: length, bytes and head, big-endian.
pub(crate) fn encode_counts(counts: Counts) -> [u8; 24] {
    let mut buf = [0u8; 24];
    buf[..8].copy_from_slice(&counts.len.to_be_bytes());
    buf[8..16].copy_from_slice(&counts.bytes.to_be_bytes());
    buf[16..].copy_from_slice(&counts.head.to_be_bytes());
    buf
}

/// Reads counts as [`encode_counts`] writes them, or as format 2 did (without a head).
pub(crate) fn decode_counts(value: &[u8]) -> Result<Counts, StoreError> {
    let mut reader = Reader(value);
    let (len, bytes) = (reader.u64()?, reader.u64()?);
    let head = if reader.0.is_empty() {
        0
    } else {
        reader.u64()?
    };
    Ok(Counts { len, bytes, head })
}

#[cfg(test)]
mod tests {
    use rallymq_codec::TopicName;

    use super::*;

    fn message() -> StoredMessage {
        let mut publish = Publish::new(TopicName::new("a/b").unwrap(), "payload");
        publish.qos = QoS::ExactlyOnce;
        publish.retain = true;
        publish.properties.message_expiry_interval = Some(30);
        publish.properties.content_type = Some("text/plain".try_into().unwrap());
        StoredMessage {
            publish,
            received_at: from_millis(1_700_000_000_123),
        }
    }

    #[test]
    fn a_message_round_trips_with_its_references() {
        let stored = message();
        let value = encode_message(3, &stored);
        assert_eq!(message_references(&value).unwrap(), 3);
        assert_eq!(decode_message(&value).unwrap(), stored);
    }

    #[test]
    fn a_chunk_round_trips_its_entries_in_every_stage_and_place() {
        let entries: Vec<(u8, QueueEntry)> = [
            (0, None),
            (
                5,
                Some((PacketId::new(7).unwrap(), OutgoingStage::Published)),
            ),
            (
                63,
                Some((PacketId::new(65535).unwrap(), OutgoingStage::Released)),
            ),
        ]
        .into_iter()
        .map(|(place, in_flight)| {
            let entry = QueueEntry {
                message: 42 + u64::from(place),
                qos: QoS::AtLeastOnce,
                retain: place == 5,
                subscription_ids: vec![SubscriptionId::new(5).unwrap(); usize::from(place % 3)],
                in_flight,
                size: 123,
            };
            (place, entry)
        })
        .collect();
        let value = encode_chunk(entries.iter().map(|(place, entry)| (*place, entry)));
        let decoded: Vec<(u8, QueueEntry)> = decode_chunk(&value)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(decoded, entries);
        assert_eq!(last_place(&value).unwrap(), Some(63));
        assert_eq!(last_place(&encode_chunk(std::iter::empty())).unwrap(), None);
        // One entry decodes as format 1 stored it, for the upgrade of such a store.
        assert_eq!(
            decode_entry(&encode_entry(&entries[1].1)).unwrap(),
            entries[1].1
        );
        for cut in 0..value.len() {
            let read: Result<Vec<_>, _> = decode_chunk(&value[..cut]).and_then(|e| e.collect());
            assert!(read.is_err(), "cut at {cut}");
        }
    }

    proptest::proptest! {
        /// A chunk edited in place holds what a map of its entries edited the same way holds,
        /// byte for byte as encoding that map lays it out, says what each change removed, and
        /// which place is its first; the entries below a place can be dropped at once (a
        /// queue's head passed them).
        #[test]
        fn a_chunk_edited_in_place_is_the_chunk_of_its_entries(
            changes in proptest::collection::vec((0u8..7, 0u8..64, 0u64..1000, 0usize..3), 0..200)
        ) {
            let mut chunk = ChunkValue::empty();
            let mut model: std::collections::BTreeMap<u8, QueueEntry> = Default::default();
            for (kind, place, message, ids) in changes {
                let entry = QueueEntry {
                    message,
                    qos: QoS::AtLeastOnce,
                    retain: false,
                    subscription_ids: vec![SubscriptionId::new(3).unwrap(); ids],
                    in_flight: None,
                    size: u32::try_from(message).unwrap() + 1,
                };
                let summary = |old: Option<QueueEntry>| old.map(|old| (old.message, old.size));
                match kind {
                    0..=2 => {
                        let replaced = chunk.insert(place, &entry).unwrap();
                        proptest::prop_assert_eq!(replaced, summary(model.insert(place, entry)));
                    }
                    3 => {
                        let queued = model.contains_key(&place);
                        proptest::prop_assert_eq!(chunk.update(place, &entry).unwrap(), queued);
                        if queued {
                            model.insert(place, entry);
                        }
                    }
                    // Rarer than the others, so that chunks fill up between.
                    6 => {
                        chunk.forget_below(place).unwrap();
                        model.retain(|kept, _| *kept >= place);
                    }
                    _ => {
                        let removed = chunk.remove(place).unwrap();
                        proptest::prop_assert_eq!(removed, summary(model.remove(&place)));
                    }
                }
                proptest::prop_assert_eq!(chunk.first_place(), model.keys().next().copied());
            }
            let encoded = encode_chunk(model.iter().map(|(place, entry)| (*place, entry)));
            proptest::prop_assert_eq!(chunk.as_bytes(), encoded.as_slice());
            proptest::prop_assert_eq!(chunk.is_empty(), model.is_empty());
            let read = ChunkValue::read(&encoded).unwrap();
            proptest::prop_assert_eq!(read.as_bytes(), encoded.as_slice());
        }
    }

    #[test]
    fn a_corrupt_chunk_is_an_error_when_edited_not_a_panic() {
        let entry = QueueEntry {
            message: 1,
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: vec![SubscriptionId::new(3).unwrap(); 2],
            in_flight: None,
            size: 1,
        };
        let value = encode_chunk([(0, &entry), (1, &entry)].into_iter());
        assert!(ChunkValue::read(&value[..7]).is_err());
        for cut in 8..value.len() {
            // The bitmap promises two entries; the bytes end before them.
            let mut chunk = ChunkValue::read(&value[..cut]).unwrap();
            assert!(chunk.remove(1).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn a_sequence_number_falls_in_its_chunk() {
        assert_eq!(chunk_of(0), (0, 0));
        assert_eq!(chunk_of(63), (0, 63));
        assert_eq!(chunk_of(64), (1, 0));
        assert_eq!(chunk_of(u64::MAX), (u64::MAX / 64, 63));
    }

    #[test]
    fn counts_round_trip_and_format_2_counts_read_with_the_head_at_0() {
        let counts = Counts {
            len: 70,
            bytes: 7_000,
            head: 129,
        };
        assert_eq!(decode_counts(&encode_counts(counts)).unwrap(), counts);
        let format_2 = [70u64.to_be_bytes(), 7_000u64.to_be_bytes()].concat();
        assert_eq!(
            decode_counts(&format_2).unwrap(),
            Counts { head: 0, ..counts }
        );
        for cut in [0, 7, 15, 17, 23] {
            assert!(
                decode_counts(&encode_counts(counts)[..cut]).is_err(),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn a_session_round_trips_with_subscriptions_and_will() {
        let record = SessionRecord {
            client_id: "c".into(),
            expiry_interval: 600,
            disconnected_at: Some(from_millis(1_700_000_000_000)),
            subscriptions: vec![(
                TopicFilter::new("x/#").unwrap(),
                SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    no_local: true,
                    retain_as_published: true,
                    retain_handling: RetainHandling::DoNotSend,
                },
                SubscriptionId::new(9),
            )],
            will: Some(StoredWill {
                publish: message().publish,
                delay: 5,
                due_at: Some(from_millis(1_700_000_005_000)),
            }),
        };
        assert_eq!(
            decode_session("c", &encode_session(&record)).unwrap(),
            record
        );
    }

    #[test]
    fn keys_sort_a_session_together_and_in_order() {
        let (start, end) = session_range("ab");
        let keys = [
            queue_key("ab", 1),
            queue_key("ab", 256),
            queue_key("ab", u64::MAX),
        ];
        assert!(keys.windows(2).all(|pair| pair[0] < pair[1]));
        assert!(keys.iter().all(|key| *key >= start && *key < end));
        // Another client whose id extends this one sorts outside the range.
        assert!(queue_key("abc", 0) >= end);
        assert_eq!(number_of(&keys[1]).unwrap(), 256);
    }

    #[test]
    fn truncated_records_are_corrupt_not_a_panic() {
        let value = encode_message(1, &message());
        for cut in 0..value.len() {
            assert!(decode_message(&value[..cut]).is_err(), "cut at {cut}");
        }
    }
}

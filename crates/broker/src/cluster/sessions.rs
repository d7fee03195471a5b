//! Sessions shared by the nodes: who owns each client id's session, and cross-node takeover.
//!
//! - The JetStream KV bucket [`SESSIONS_BUCKET`] holds, per client id ([`subject::token`]),
//!   the node that owns its session and the session's durable parts: the record the store
//!   keeps (subscriptions with their options and identifiers, expiry, will, when it went
//!   offline). A node writes it when one of its sessions is created, changes or ends (an ended
//!   session leaves a record with no session in it: keys are never deleted, so that every
//!   write is a compare-and-set on the key's revision).
//! - A CONNECT on node B *claims* the client id: it reads the key and writes it back with B as
//!   the owner, expecting the revision it read ([`Sessions::claim`]). When two connects race,
//!   one write fails and its node reads again; the bucket orders all claims of a client id by
//!   their revisions.
//! - If another node A owned the session, B asks A on `rmq.node.<A>.takeover` (a NATS request
//!   carrying B's revision). A disconnects its connection (MQTT 5: DISCONNECT 0x8E), drops the
//!   session and answers with its state: subscriptions, the deliveries in flight and the queued
//!   messages. B installs it, and the client gets Session Present 1 and what was queued on A.
//!   With Clean Start, A ends the session instead (its will goes as for a local takeover).
//! - A node gives a session up only to a claim later than its own: a request whose revision is
//!   below the revision this node last wrote is stale and refused, and a local connection
//!   whose claim is older than one this node gave the session up to (or than its own latest) is
//!   refused before it attaches. So of many simultaneous connects, the one with the highest
//!   revision stays, and every other is closed or refused.
//! - If A does not answer (down, or too slow), or answers that it has no such session (it
//!   restarted without its store), B resumes from the record: the subscriptions, and the
//!   record's *stream cursor*, the place in the stream of QoS 1 and 2 messages up to which
//!   everything routed to the session had been delivered and acknowledged. B replays the
//!   stream from there to the session ([`super::replay`]): what A had queued or in flight
//!   comes again (QoS 1 at least once).
//! - A node moves a session's cursor to its routed place in the stream whenever the session
//!   has nothing waiting (its connection is quiet; an offline one, at the broker's sweep
//!   every second), and writes it to the record when it moved and the session got a
//!   message since the last write, or every [`CURSOR_REFRESH`] otherwise.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream::{
    self,
    kv::{self, Operation},
};
use bytes::{BufMut, Bytes};
use futures::StreamExt;
use rallymq_codec::{PacketId, Publish};
use rallymq_session::{OutgoingStage, SessionState};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use super::bucket::{self, NotWritten};
use super::{subject, valid_node_id};
use crate::Error;
use crate::broker::Shared;
use crate::session::{
    Control, InFlightRecord, Queued, Registry, Session, UNKNOWN_SEQUENCE, delivered_copy,
};
use crate::stats::Dropped;
use crate::store::record::{self, Reader};
use crate::store::{SessionRecord, Ticket, session_expired};

/// The JetStream KV bucket of sessions: key [`subject::token`], value the owner and the
/// record (see [`encode_value`]), one revision kept.
pub(crate) const SESSIONS_BUCKET: &str = "rallymq_sessions";

/// The format version of takeover requests, and of the bucket's first values (without a
/// stream cursor).
const FORMAT_V1: u8 = 1;

/// The format version of the bucket's values with a stream cursor, and of takeover replies
/// (with the stream sequences of what is handed over; a node of the first format's reply is
/// not read, and the session resumes as from a node that did not answer).
const FORMAT_V2: u8 = 2;

/// How often a session's cursor that moved is written when the session got nothing since.
const CURSOR_REFRESH: Duration = Duration::from_secs(60);

/// How many times a claim reads the key again after losing a race for it.
const CLAIM_ATTEMPTS: u32 = 50;

/// How long a claim waits before trying again after the bucket failed to answer.
const CLAIM_RETRY_DELAY: Duration = Duration::from_millis(100);

/// How long a claim may take in all before the CONNECT is refused.
const CLAIM_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the new owner waits for the old one's answer before resuming from the record.
const ASK_TIMEOUT: Duration = Duration::from_secs(4);

/// How many times a node that still beats is asked for a session before it is taken as gone.
const ASK_ATTEMPTS: u32 = 5;

/// How long the new owner waits before asking a node that beats again.
const ASK_RETRY_DELAY: Duration = Duration::from_millis(500);

/// How long the old owner waits for its connection to close and hand over its state.
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(2);

/// How long one write of a record may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Entries read from the store per page when an offline session's queue is handed over.
const PAGE: usize = 256;

/// How long a node whose write of a record found the key claimed elsewhere waits for the
/// claimer's takeover request before it gives the session up itself: longer than a claimer
/// asks ([`ASK_ATTEMPTS`] asks of up to [`ASK_TIMEOUT`], [`ASK_RETRY_DELAY`] apart).
const UNASKED_GRACE: Duration = Duration::from_secs(25);

/// A claim with no session here ([`Loose`]) is forgotten this long after its last use: by then
/// no connection of the client id is between its claim and its attach.
const FORGET_AFTER: Duration = Duration::from_secs(60);

/// The revision of the claim `session` holds: `None` when it is not this node's to write.
fn held_revision(session: &Session) -> Option<u64> {
    session
        .lock()
        .claim
        .as_ref()
        .map(|claimed| claimed.revision)
}

/// The subject a node answers takeover requests on.
fn takeover_subject(node_id: &str) -> String {
    format!("rmq.node.{node_id}.takeover")
}

/// This node's claim of the client id of a session in its registry, kept in the session
/// (`SessionInner::claim`) for as long as the session is here: one per connected client, so
/// kept small (24 bytes, an `Option` of it too), inline in the session, whose block stays in
/// jemalloc's 160-byte class with it: a claim allocates nothing (a map of their own took
/// 114 KiB per 1,000 connections, and a box in the session 32). A session with a claim is
/// this node's: when it goes (ended, or given up to another node), its claim becomes
/// [`Loose`] under the claims' lock.
#[derive(Debug)]
pub(crate) struct Claimed {
    /// The key's revision as this node last wrote it: its claim, then its updates.
    revision: u64,
    /// The stream cursor this node last wrote to the record.
    cursor: u64,
    /// Which of this node's claims it is ([`Claims::generation`]): a write queued under
    /// another is dropped. Never 0, so that an `Option<Claimed>` takes no more than a claim.
    generation: NonZeroU32,
    /// When `cursor` was written ([`Sessions::seconds`]).
    cursor_at: u32,
}

/// What this node knows of a client id it claimed or gave up that has no session here: its
/// session ended, or went to another node, or another node asked for one this node did not
/// have. Kept for [`FORGET_AFTER`] after its last use, so that a claim older than the last
/// one is still refused (see [`Sessions::attach`]).
#[derive(Debug)]
struct Loose {
    /// The key's revision as this node last wrote it.
    revision: u64,
    /// The highest revision of another node's claim this node gave the session up to.
    released: u64,
    /// [`Claimed::generation`] of the claim it was.
    generation: u32,
    /// When this entry last changed ([`Sessions::seconds`]).
    touched: u32,
}

impl Loose {
    /// The claim of a session that has just left the registry.
    fn from_claimed(claimed: &Claimed, now: u32) -> Self {
        Self {
            revision: claimed.revision,
            released: 0,
            generation: claimed.generation.get(),
            touched: now,
        }
    }

    /// Whether this node owns the key (as far as it knows): an ended session's last write is
    /// still its own.
    fn owned(&self) -> bool {
        self.revision > self.released
    }
}

/// The claims of client ids with no session here, and the count that tells this node's
/// claims apart.
#[derive(Debug, Default)]
struct Claims {
    loose: HashMap<Arc<str>, Loose>,
    /// The generation of the latest claim attached here (wrapping): unique per claim on this
    /// node, so that a write of a session that went cannot pass for one of a session that
    /// came after it under the same client id.
    generation: u32,
}

/// A write of a session's record, made in order by [`write_records`].
#[derive(Debug)]
struct Write {
    client_id: Arc<str>,
    /// [`Claimed::generation`] of the claim it was queued under.
    generation: u32,
    /// `None`: the session ended.
    record: Option<SessionRecord>,
    /// The session's stream cursor.
    cursor: u64,
    /// Its QoS 2 deliveries in flight.
    in_flight: InFlightRecord,
    /// Told when the bucket has the write (or refused it).
    done: Option<oneshot::Sender<Result<Recorded, String>>>,
}

/// What became of a write of a session's record that the bucket did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Recorded {
    /// The bucket has it.
    Stored,
    /// Not written, and not to be: the session is no longer this node's claim (a later claim,
    /// here or on another node, or none), so the record the cluster goes by is another's and
    /// has none of what this write held.
    Superseded,
}

/// A write of a session's record: resolves once the bucket has it, or it is known not to be
/// written ([`Recorded`]), or failed.
pub(crate) type RecordWritten = oneshot::Receiver<Result<Recorded, String>>;

/// The previous owner of a claimed key, and the session it recorded.
#[derive(Debug)]
struct Previous {
    owner: String,
    /// `None`: the session had ended.
    record: Option<SessionRecord>,
    /// The session's stream cursor (`None`: a value of the first format, without one).
    cursor: Option<u64>,
    /// Its QoS 2 deliveries in flight, when the record was written.
    in_flight: InFlightRecord,
}

/// A CONNECT's claim of its client id: the key's revision it wrote, the stream cursor it
/// wrote, and what was there before.
#[derive(Debug)]
pub(crate) struct Claim {
    revision: u64,
    cursor: u64,
    previous: Option<Previous>,
}

/// The session state an old owner hands over.
#[derive(Debug, Default, PartialEq)]
struct Handover {
    /// Subscriptions, expiry and will.
    record: Option<SessionRecord>,
    /// Deliveries in flight, oldest first, with their identifiers and stage.
    in_flight: Vec<(PacketId, OutgoingStage, Publish)>,
    /// Queued messages, oldest first, with how long each has waited (Message Expiry) and
    /// their stream sequence (`UNKNOWN_SEQUENCE` when not known).
    queued: Vec<(Publish, Duration, u64)>,
    /// The old owner's routed place in the stream just before it took the session out of its
    /// router: everything up to it that the session matched is in this handover.
    routed: u64,
    /// Inbound QoS 2 identifiers awaiting PUBREL.
    inbound: Vec<PacketId>,
    next_packet_id: Option<PacketId>,
}

/// An old owner's answer to a takeover request.
#[derive(Debug, PartialEq)]
enum Reply {
    /// The session, taken off this node.
    Handover(Box<Handover>),
    /// The session ended here (the request asked for a clean start).
    Ended,
    /// No session of that client id here.
    NoSession,
    /// This node claimed the client id after the requester: the request lost.
    Stale,
}

/// A node's side of the sessions bucket.
#[derive(Debug)]
pub(crate) struct Sessions {
    node_id: String,
    client: async_nats::Client,
    bucket: kv::Store,
    /// The JetStream context the bucket's conditional writes go through ([`bucket::write_at`]).
    context: jetstream::Context,
    /// Taken before the registry's lock and the sessions' (whose [`Claimed`] it guards
    /// too): a claim is checked and attached, or given up, in one step.
    claims: Mutex<Claims>,
    /// The origin of [`Sessions::seconds`].
    started: Instant,
    writes: mpsc::UnboundedSender<Write>,
    /// The node's routed place in the stream ([`super::stream::Parts::routed`]).
    routed: Arc<AtomicU64>,
    /// Held while the node routes a stream message ([`super::stream::Parts::routing`]).
    routing: Arc<Mutex<()>>,
}

/// What the session tasks start from.
#[derive(Debug)]
pub(super) struct Parts {
    writes: mpsc::UnboundedReceiver<Write>,
    requests: async_nats::Subscriber,
}

impl Sessions {
    /// Opens the bucket and subscribes to this node's takeover requests, so that a node that
    /// has joined answers them from the start.
    pub(super) async fn open(
        client: &async_nats::Client,
        node_id: &str,
        replicas: usize,
        routed: Arc<AtomicU64>,
        routing: Arc<Mutex<()>>,
    ) -> Result<(Arc<Self>, Parts), Error> {
        let bucket = super::kv_bucket_with(
            client,
            SESSIONS_BUCKET,
            "rallymq: the owner and record of each client id's session",
            Duration::ZERO,
            replicas,
        )
        .await?;
        let requests = client
            .subscribe(takeover_subject(node_id))
            .await
            .map_err(|e| Error::Cluster(format!("cannot subscribe to takeover requests: {e}")))?;
        let (writes_tx, writes) = mpsc::unbounded_channel();
        Ok((
            Arc::new(Self {
                node_id: node_id.to_owned(),
                client: client.clone(),
                bucket,
                context: jetstream::new(client.clone()),
                claims: Mutex::default(),
                started: Instant::now(),
                writes: writes_tx,
                routed,
                routing,
            }),
            Parts { writes, requests },
        ))
    }

    fn claims(&self) -> MutexGuard<'_, Claims> {
        crate::lock(&self.claims)
    }

    /// Whole seconds since this node opened the bucket: the claims' clock, fine enough for
    /// [`FORGET_AFTER`] and [`CURSOR_REFRESH`], and 4 bytes where an `Instant` takes 16.
    fn seconds(&self) -> u32 {
        u32::try_from(self.started.elapsed().as_secs()).unwrap_or(u32::MAX)
    }

    /// Claims `fresh.client_id` for this node: writes `fresh` (with the previous record's
    /// subscriptions when the CONNECT resumes and that session is live) as this node's,
    /// compare-and-set on the revision read, reading again when another claim came first.
    pub(crate) async fn claim(
        &self,
        mut fresh: SessionRecord,
        resume: bool,
    ) -> Result<Claim, Error> {
        let key = subject::token(&fresh.client_id);
        let attempts = async {
            let mut failure = None;
            for _ in 0..CLAIM_ATTEMPTS {
                if failure.is_some() {
                    // The bucket may be electing a leader: tried again until the timeout.
                    tokio::time::sleep(CLAIM_RETRY_DELAY).await;
                }
                let entry = match self.bucket.entry(key.clone()).await {
                    Ok(entry) => entry,
                    Err(error) => {
                        failure = Some(error.to_string());
                        continue;
                    }
                };
                let previous = entry
                    .as_ref()
                    .filter(|entry| entry.operation == Operation::Put)
                    .and_then(|entry| decode_value(&fresh.client_id, &entry.value));
                // A new session has had nothing routed to it: everything up to here is
                // behind it. A resumed one keeps its cursor, and what its record says of its
                // deliveries past it, until it has caught up.
                let mut cursor = self.routed.load(Ordering::Acquire);
                let mut in_flight = InFlightRecord::default();
                if let Some(Previous {
                    record: Some(old),
                    cursor: old_cursor,
                    in_flight: old_in_flight,
                    ..
                }) = &previous
                    && resume
                    && live(old)
                {
                    fresh.subscriptions.clone_from(&old.subscriptions);
                    cursor = old_cursor.unwrap_or(cursor);
                    in_flight.clone_from(old_in_flight);
                }
                let value = encode_value(&self.node_id, Some(&fresh), cursor, &in_flight);
                // Keys are never deleted: no value yet is revision 0.
                let expected = entry.as_ref().map_or(0, |entry| entry.revision);
                let written = bucket::write_at(&self.context, &self.bucket, &key, value, expected)
                    .await
                    .map_err(|e| (e == NotWritten::Moved, e.to_string()));
                match written {
                    Ok(revision) => {
                        return Ok(Claim {
                            revision,
                            cursor,
                            previous,
                        });
                    }
                    // Another claim came first: read what it wrote.
                    Err((true, _)) => continue,
                    Err((false, error)) => failure = Some(error),
                }
            }
            Err(failure.unwrap_or_else(|| format!("lost {CLAIM_ATTEMPTS} races for it in a row")))
        };
        let result = tokio::time::timeout(CLAIM_TIMEOUT, attempts)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {CLAIM_TIMEOUT:?}")));
        result.map_err(|error| {
            Error::Cluster(format!(
                "cannot claim the session of {:?} in the cluster: {error}",
                fresh.client_id
            ))
        })
    }

    /// Runs `attach` (the local registry's attach) unless `claim` has lost already: to a later
    /// claim this node made, or to another node's this node gave the session up to. Under the
    /// claims' lock, so that a takeover request cannot come between the check and the attach.
    /// The claim is kept in the session of what `attach` returned (`session`), and a loose one
    /// of the client id is dropped.
    pub(crate) fn attach<T>(
        &self,
        registry: &Registry,
        client_id: &str,
        claim: &Claim,
        attach: impl FnOnce() -> T,
        session: impl FnOnce(&T) -> Arc<Session>,
    ) -> Option<T> {
        let now = self.seconds();
        let mut claims = self.claims();
        // The latest claim here: the session's, else a loose one's (or what it went to).
        let held = registry
            .get(client_id)
            .and_then(|session| held_revision(&session));
        let latest = held.or_else(|| {
            let loose = claims.loose.get(client_id)?;
            Some(loose.revision.max(loose.released))
        });
        if latest.is_some_and(|latest| claim.revision < latest) {
            return None;
        }
        let attached = attach();
        claims.loose.remove(client_id);
        // Past 0, which a loose entry of a client id this node gave up unclaimed carries.
        let generation =
            NonZeroU32::new(claims.generation.wrapping_add(1)).unwrap_or(NonZeroU32::MIN);
        claims.generation = generation.get();
        let claimed = Claimed {
            revision: claim.revision,
            cursor: claim.cursor,
            generation,
            cursor_at: now,
        };
        session(&attached).lock().claim = Some(claimed);
        Some(attached)
    }

    /// Takes the session over from its previous owner, once `claim` is attached to `session`:
    /// asks that node for the session's state (or, without `resume`, to end it) and installs
    /// what it hands over. Returns whether the connection resumes a session found elsewhere
    /// (Session Present 1); `existed`: the session was in this node's registry.
    pub(crate) async fn take_over(
        &self,
        shared: &Arc<Shared>,
        session: &Arc<Session>,
        claim: &Claim,
        resume: bool,
        existed: bool,
    ) -> bool {
        let ours = claim
            .previous
            .as_ref()
            .is_some_and(|previous| previous.owner == self.node_id);
        if !(ours && existed) {
            session.stream_cursor.store(claim.cursor, Ordering::Release);
        }
        let Some(previous) = &claim.previous else {
            return false;
        };
        let record = previous
            .record
            .as_ref()
            .filter(|record| resume && live(record));
        // The stream may hold what the session was routed and never got: replayed from the
        // record's cursor when the node that held it lost it.
        let replay_from = previous.cursor.filter(|_| record.is_some());
        if record.is_some() {
            // Its deliveries past the cursor, and the inbound QoS 2 messages answered.
            session.set_in_flight_record(previous.in_flight.clone());
        }
        if previous.owner == self.node_id {
            // Its state is here, unless this node lost it (a restart without a store).
            if existed {
                return false;
            }
            if let Some(record) = record {
                if replay_from.is_some() {
                    session.hold_stream();
                }
                install_record(shared, session, record);
                if let Some(cursor) = replay_from {
                    self.replay(shared, session, cursor, &previous.in_flight)
                        .await;
                }
            }
            return record.is_some();
        }
        if let Some(record) = record {
            if replay_from.is_some() {
                // Until the old owner answers: what is routed here meanwhile may come in its
                // handover or the replay too.
                session.hold_stream();
            }
            // Before asking: what is routed meanwhile is queued here rather than lost.
            install_record(shared, session, record);
        }
        let mut reply = self
            .ask(&previous.owner, &session.client_id, claim.revision, !resume)
            .await;
        // No answer from a node that still beats: its takeover subscription may not have
        // reached this node's server yet (it has just started, or a server came back). Asked
        // again: resuming without it would leave its connection open beside this one.
        let mut asked = 1;
        while reply.is_none()
            && asked < ASK_ATTEMPTS
            && shared
                .cluster
                .get()
                .is_some_and(|link| link.node_is_live(&previous.owner))
        {
            tokio::time::sleep(ASK_RETRY_DELAY).await;
            reply = self
                .ask(&previous.owner, &session.client_id, claim.revision, !resume)
                .await;
            asked += 1;
        }
        let lost = matches!(reply, None | Some(Reply::NoSession));
        if let Some(cursor) = replay_from {
            if lost {
                self.replay(shared, session, cursor, &previous.in_flight)
                    .await;
            } else if let Some(Reply::Handover(handover)) = &reply {
                // What the old owner routed before it let the session go is in its handover.
                // What it had not routed yet, this node may have routed before the session
                // was here (the nodes' consumers go at their own pace): the stream is read
                // again after the old owner's place, but for what the handover has.
                let handed: HashSet<u64> = handover
                    .queued
                    .iter()
                    .map(|(_, _, sequence)| *sequence)
                    .collect();
                super::replay::replay(
                    shared,
                    &super::stream::context(&self.client),
                    session,
                    handover.routed,
                    &handed,
                )
                .await;
            } else {
                shared.end_replay(session, 0, &HashSet::new());
            }
        }
        match reply {
            Some(Reply::Handover(handover)) if resume => {
                let present = record.is_some()
                    || handover
                        .record
                        .as_ref()
                        .is_some_and(|record| record.expiry_interval > 0);
                if present {
                    if record.is_none()
                        && let Some(handed) = &handover.record
                    {
                        install_record(shared, session, handed);
                    }
                    install_handover(shared, session, *handover);
                }
                present
            }
            Some(_) => record.is_some(),
            None => {
                if record.is_some() {
                    warn!(
                        client_id = %session.client_id,
                        owner = %previous.owner,
                        replayed_from = ?previous.cursor,
                        "cluster: the session's node did not answer; resumed from its record, the stream replayed from its cursor"
                    );
                }
                record.is_some()
            }
        }
    }

    /// Replays the stream to `session` from `cursor` (the session holds back what routing
    /// brings until it ends), with the QoS 2 deliveries its record lists past the cursor put
    /// back in flight under their identifiers (released ones at the PUBREL stage, not sent
    /// again; completed ones not sent again).
    async fn replay(
        &self,
        shared: &Arc<Shared>,
        session: &Arc<Session>,
        cursor: u64,
        in_flight: &InFlightRecord,
    ) {
        install_released(session, &in_flight.released);
        let skip: HashSet<u64> = in_flight
            .released
            .iter()
            .map(|(sequence, _)| *sequence)
            .chain(in_flight.done.iter().copied())
            .collect();
        super::replay::replay(
            shared,
            &super::stream::context(&self.client),
            session,
            cursor,
            &skip,
        )
        .await;
        resend_published(shared, session, &in_flight.published);
    }

    /// Sends a takeover request to `owner`; `None` when it does not answer.
    async fn ask(
        &self,
        owner: &str,
        client_id: &str,
        revision: u64,
        discard: bool,
    ) -> Option<Reply> {
        if !valid_node_id(owner) {
            return None;
        }
        let request = encode_request(client_id, revision, discard);
        let answer = tokio::time::timeout(
            ASK_TIMEOUT,
            self.client.request(takeover_subject(owner), request),
        )
        .await;
        match answer {
            Ok(Ok(message)) => decode_reply(client_id, &message.payload),
            Ok(Err(error)) => {
                debug!(%error, %owner, %client_id, "cluster: takeover request not answered");
                None
            }
            Err(_) => None,
        }
    }

    /// Whether `client_id`'s session lives on in another node than `left`: a client whose node
    /// died came back elsewhere (its claim made that node the owner) and its session was kept.
    /// `false` when the bucket does not answer.
    pub(crate) async fn resumed_elsewhere(&self, client_id: &str, left: &str) -> bool {
        match self.bucket.entry(subject::token(client_id)).await {
            Ok(Some(entry)) if entry.operation == Operation::Put => {
                decode_value(client_id, &entry.value)
                    .is_some_and(|previous| previous.owner != left && previous.record.is_some())
            }
            Ok(_) => false,
            Err(error) => {
                debug!(%error, "cluster: reading a session's owner");
                false
            }
        }
    }

    /// Writes the record of a session this node owns, with its stream cursor (in order,
    /// after the writes before it). The returned [`RecordWritten`] resolves once the bucket
    /// has it: at once with [`Recorded::Superseded`] when the session is not this node's to
    /// write, with an error when the bucket failed it.
    pub(crate) fn save(
        &self,
        session: &Session,
        record: &SessionRecord,
        cursor: u64,
        in_flight: InFlightRecord,
    ) -> RecordWritten {
        let (done, written) = oneshot::channel();
        let now = self.seconds();
        let generation = match session.lock().claim.as_mut() {
            Some(claimed) => {
                claimed.cursor = cursor;
                claimed.cursor_at = now;
                claimed.generation.get()
            }
            // Not this node's to write (restored from the store, or taken by another node).
            None => {
                let _ = done.send(Ok(Recorded::Superseded));
                return written;
            }
        };
        let _ = self.writes.send(Write {
            client_id: session.client_id.clone(),
            generation,
            record: Some(record.clone()),
            cursor,
            in_flight,
            done: Some(done),
        });
        written
    }

    /// Records that `session`, which has just left the registry, has ended, if it was this
    /// node's. Its claim stays, loose, for a claim older than it that is still on its way to
    /// attach; unless a session of the same client id has come meanwhile, whose claim then is
    /// the one that counts (and whose record this write would end).
    pub(crate) fn end(&self, registry: &Registry, session: &Session) {
        let now = self.seconds();
        let mut claims = self.claims();
        let Some(claimed) = session.lock().claim.take() else {
            return;
        };
        let replaced = registry.get(&session.client_id).is_some_and(|current| {
            !std::ptr::eq(Arc::as_ptr(&current), session) && current.lock().claim.is_some()
        });
        if replaced {
            return;
        }
        claims.loose.insert(
            session.client_id.clone(),
            Loose::from_claimed(&claimed, now),
        );
        drop(claims);
        let _ = self.writes.send(Write {
            client_id: session.client_id.clone(),
            generation: claimed.generation.get(),
            record: None,
            cursor: 0,
            in_flight: InFlightRecord::default(),
            done: None,
        });
    }

    /// The revision a write queued under claim `generation` of `client_id` expects: `None`
    /// when that claim is no longer this node's latest, or no longer owns the key.
    fn revision_of(&self, registry: &Registry, client_id: &str, generation: u32) -> Option<u64> {
        let claims = self.claims();
        if let Some(session) = registry.get(client_id)
            && let Some(claimed) = session.lock().claim.as_ref()
        {
            return (claimed.generation.get() == generation).then_some(claimed.revision);
        }
        claims
            .loose
            .get(client_id)
            .filter(|loose| loose.generation == generation && loose.owned())
            .map(|loose| loose.revision)
    }

    /// Records that this node wrote `client_id`'s key at revision `new`, over `known`.
    fn wrote(&self, registry: &Registry, client_id: &str, known: u64, new: u64) {
        let now = self.seconds();
        let mut claims = self.claims();
        if let Some(session) = registry.get(client_id)
            && let Some(claimed) = session.lock().claim.as_mut()
        {
            if claimed.revision == known {
                claimed.revision = new;
            }
            return;
        }
        if let Some(loose) = claims.loose.get_mut(client_id)
            && loose.revision == known
        {
            loose.revision = new;
            loose.touched = now;
        }
    }

    /// Moves the stream cursors of the offline sessions this node owns, and writes the
    /// records whose cursor moved (see the module's documentation).
    pub(crate) fn refresh_cursors(&self, shared: &Shared) {
        let position = self.routed.load(Ordering::Acquire);
        let now = self.seconds();
        for session in shared.registry.all() {
            let Some((written, at)) = session
                .lock()
                .claim
                .as_ref()
                .map(|claimed| (claimed.cursor, claimed.cursor_at))
            else {
                continue;
            };
            let touched = {
                let mut inner = session.lock();
                if inner.attachment.is_none() {
                    drop(inner);
                    session.advance_cursor(position, 0);
                    inner = session.lock();
                }
                std::mem::take(&mut inner.stream_touched)
            };
            let cursor = session.stream_cursor.load(Ordering::Acquire);
            if cursor != written
                && (touched || u64::from(now.saturating_sub(at)) >= CURSOR_REFRESH.as_secs())
                && let Some(record) = session.record()
            {
                drop(self.save(&session, &record, cursor, session.in_flight_record()));
            } else if touched {
                // Not written yet: looked at again next time.
                session.lock().stream_touched = true;
            }
        }
    }

    /// Forgets loose claims no connection can still be attaching under, of client ids with no
    /// session here. One with a session (restored from the store, and not claimed since) is
    /// looked at again [`FORGET_AFTER`] later, so that a call costs a registry lookup for few
    /// of them.
    pub(crate) fn forget_idle(&self, shared: &Shared) {
        let now = self.seconds();
        self.claims().loose.retain(|client_id, claimed| {
            if u64::from(now.saturating_sub(claimed.touched)) < FORGET_AFTER.as_secs() {
                return true;
            }
            let kept = shared.registry.contains(client_id);
            if kept {
                claimed.touched = now;
            }
            kept
        });
    }
}

/// Whether a recorded session can be resumed: persistent and not expired.
fn live(record: &SessionRecord) -> bool {
    record.expiry_interval > 0 && !session_expired(record, SystemTime::now())
}

/// Replaces whatever `session` held here with `record`'s subscriptions, as a persistent
/// session.
fn install_record(shared: &Shared, session: &Arc<Session>, record: &SessionRecord) {
    shared.router.remove_session(session);
    {
        let mut inner = session.lock();
        let waiting = inner.queue_size().0;
        shared.stats.dropped(Dropped::SessionEnded, waiting);
        inner.clear_pending();
        inner.subscriptions.clear();
        inner.saved = None;
        inner.durable = None;
        inner.persistent = true;
    }
    shared.install_subscriptions(session, &record.subscriptions);
}

/// Puts the QoS 2 deliveries a session's record says were released back in flight, at the
/// PUBREL stage: the client gets PUBREL for each when it connects, and no new message goes
/// out under an identifier it still holds.
fn install_released(session: &Session, released: &[(u64, PacketId)]) {
    if released.is_empty() {
        return;
    }
    let mut inner = session.lock();
    let state = inner.saved.get_or_insert_default();
    for (_, packet_id) in released {
        let mut publish = Publish::new(RELEASED_TOPIC.clone(), Bytes::new());
        publish.qos = rallymq_codec::QoS::ExactlyOnce;
        state.push_in_flight(*packet_id, OutgoingStage::Released, publish);
    }
    if let Some(last) = released.iter().map(|(_, packet_id)| *packet_id).max() {
        state.next_packet_id = last.next();
    }
}

/// Sends the replayed messages a session's record lists as in flight (`published`: stream
/// sequence, identifier) under their identifiers with DUP, ahead of the rest: a client that
/// had one answers PUBREC and does not take it as new.
fn resend_published(shared: &Shared, session: &Session, published: &[(u64, PacketId)]) {
    if published.is_empty() {
        return;
    }
    let mut published = published.to_vec();
    published.sort_unstable();
    let mut forgotten = Vec::new();
    let mut inner = session.lock();
    let mut taken = Vec::new();
    for (sequence, packet_id) in published {
        let Some(at) = inner
            .pending
            .iter()
            .position(|queued| queued.sequence == sequence)
        else {
            continue;
        };
        if let Some(queued) = inner.take_pending_at(at) {
            taken.push((queued, packet_id));
        }
    }
    let state = inner.saved.get_or_insert_default();
    let mut highest = None;
    for (queued, packet_id) in taken {
        let mut publish = queued.publish;
        publish.dup = true;
        state.push_in_flight(packet_id, OutgoingStage::Published, publish);
        highest = highest.max(Some(packet_id));
        if let Some(stored) = queued.stored {
            // In flight from the session's state now, not from the store's queue.
            forgotten.push(crate::store::Change::DeleteEntry {
                client_id: session.client_id.clone(),
                seq: stored.seq,
            });
        }
    }
    if let Some(highest) = highest
        && state.next_packet_id <= highest
    {
        state.next_packet_id = highest.next();
    }
    drop(inner);
    shared.write(forgotten);
}

/// The topic of the placeholder messages [`install_released`] puts in flight: only their
/// identifiers are ever sent (PUBREL).
static RELEASED_TOPIC: std::sync::LazyLock<rallymq_codec::TopicName> =
    std::sync::LazyLock::new(|| {
        rallymq_codec::TopicName::new("$rallymq/released").expect("a valid topic name")
    });

/// Adds what the old owner handed over to `session`: its engine state to resume, and its
/// queued messages ahead of any routed here meanwhile.
fn install_handover(shared: &Shared, session: &Arc<Session>, handover: Handover) {
    if let Some(record) = &handover.record {
        shared.install_subscriptions(session, &record.subscriptions);
    }
    let mut state = SessionState {
        inbound_awaiting_release: handover.inbound,
        session_expiry_interval: handover
            .record
            .as_ref()
            .map_or(0, |record| record.expiry_interval),
        ..SessionState::default()
    };
    if let Some(next) = handover.next_packet_id {
        state.next_packet_id = next;
    }
    for (packet_id, stage, publish) in handover.in_flight {
        state.push_in_flight(packet_id, stage, publish);
    }
    debug!(
        client_id = %session.client_id,
        in_flight = state.in_flight.len(),
        inbound = state.inbound_awaiting_release.len(),
        queued = ?handover.queued.iter().map(|(_, _, sequence)| *sequence).collect::<Vec<_>>(),
        "cluster: handover installed"
    );
    let now = Instant::now();
    let queued = handover
        .queued
        .into_iter()
        .map(|(publish, waited, sequence)| Queued {
            publish,
            since: now.checked_sub(waited).unwrap_or(now),
            stored: None,
            sequence,
            early: None,
        })
        .collect();
    let mut inner = session.lock();
    inner.prepend_pending(queued);
    inner.saved = Some(Box::new(state));
    inner.persistent = true;
}

/// The tasks of the sessions bucket: the ordered writer of records, and the server of
/// takeover requests.
pub(super) fn run(
    sessions: Arc<Sessions>,
    parts: Parts,
    shared: std::sync::Weak<Shared>,
) -> (
    impl Future<Output = ()> + Send + 'static,
    impl Future<Output = ()> + Send + 'static,
) {
    (
        write_records(sessions.clone(), parts.writes, shared.clone()),
        serve_takeovers(sessions, parts.requests, shared),
    )
}

/// Writes records in the order they were queued, each a compare-and-set on the revision this
/// node last wrote: a write after another node's claim fails, and is dropped.
async fn write_records(
    sessions: Arc<Sessions>,
    mut writes: mpsc::UnboundedReceiver<Write>,
    shared: std::sync::Weak<Shared>,
) {
    while let Some(mut write) = writes.recv().await {
        let done = write.done.take();
        let answer = |result: Result<Recorded, String>| {
            if let Some(done) = done {
                let _ = done.send(result);
            }
        };
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let registry = &shared.registry;
        let Some(revision) = sessions.revision_of(registry, &write.client_id, write.generation)
        else {
            // A later claim's (here or on another node): this one's connection is closed.
            answer(Ok(Recorded::Superseded));
            continue;
        };
        let key = subject::token(&write.client_id);
        let value = encode_value(
            &sessions.node_id,
            write.record.as_ref(),
            write.cursor,
            &write.in_flight,
        );
        let mut written = tokio::time::timeout(
            WRITE_TIMEOUT,
            bucket::write_at(
                &sessions.context,
                &sessions.bucket,
                &key,
                value.clone(),
                revision,
            ),
        )
        .await;
        // What the claim holds, which the new revision replaces.
        let known = revision;
        let mut revision = revision;
        if let Ok(Err(NotWritten::Moved)) = &written
            && let Some(late) = own_late_write(&sessions, &key, &write.client_id, revision).await
        {
            // A write of ours that timed out was applied after all: the key is still ours.
            revision = late;
            written = tokio::time::timeout(
                WRITE_TIMEOUT,
                bucket::write_at(&sessions.context, &sessions.bucket, &key, value, revision),
            )
            .await;
        }
        match written {
            Ok(Ok(new)) => {
                sessions.wrote(registry, &write.client_id, known, new);
                answer(Ok(Recorded::Stored));
            }
            Ok(Err(NotWritten::Moved)) => {
                debug!(client_id = %write.client_id, "cluster: session claimed elsewhere meanwhile; record not written");
                answer(Ok(Recorded::Superseded));
                tokio::spawn(give_up_unasked(
                    Arc::downgrade(&shared),
                    sessions.clone(),
                    write.client_id.clone(),
                    write.generation,
                    known,
                ));
            }
            Ok(Err(error)) => {
                warn!(%error, client_id = %write.client_id, "cluster: a session's record could not be written");
                answer(Err(error.to_string()));
            }
            Err(_) => {
                warn!(client_id = %write.client_id, "cluster: writing a session's record timed out");
                answer(Err(format!("no answer within {WRITE_TIMEOUT:?}")));
            }
        }
    }
}

/// The key's revision if its value is one this node wrote after `known` (a write that timed
/// out here but was applied): `None` if another node wrote it, or it cannot be read.
async fn own_late_write(
    sessions: &Sessions,
    key: &str,
    client_id: &str,
    known: u64,
) -> Option<u64> {
    let entry = tokio::time::timeout(WRITE_TIMEOUT, sessions.bucket.entry(key.to_owned()))
        .await
        .ok()?
        .ok()??;
    let previous = decode_value(client_id, &entry.value)?;
    (entry.revision > known && previous.owner == sessions.node_id).then_some(entry.revision)
}

/// Answers takeover requests, each in a task of its own (one waits for its connection to
/// close).
async fn serve_takeovers(
    sessions: Arc<Sessions>,
    mut requests: async_nats::Subscriber,
    shared: std::sync::Weak<Shared>,
) {
    while let Some(message) = requests.next().await {
        let Some(reply) = message.reply else {
            continue;
        };
        let Some((client_id, revision, discard)) = decode_request(&message.payload) else {
            debug!("cluster: not a takeover request; ignored");
            continue;
        };
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let sessions = sessions.clone();
        tokio::spawn(async move {
            let answer = hand_over(&shared, &sessions, &client_id, revision, discard).await;
            let answer = encode_reply(&answer);
            if let Err(error) = sessions.client.publish(reply, answer).await {
                debug!(%error, "cluster: takeover answer not sent");
            }
        });
    }
}

/// A write of `client_id`'s record under this node's claim `generation` (at revision `known`)
/// found the key claimed by another node. That node's takeover request closes the connection
/// here; if the session is still here under the same claim once the claimer has stopped asking
/// ([`UNASKED_GRACE`]), the request was lost (with a NATS server, or not sent to a node that
/// looked dead) and the connection would stay open beside the claimer's for as long as its
/// client kept it (MQTT-3.1.4-3). The session is then given up as a request would have it
/// (DISCONNECT 0x8E, no will) and what it held dropped: the claimer resumed without an answer,
/// from the record and the stream.
async fn give_up_unasked(
    shared: std::sync::Weak<Shared>,
    sessions: Arc<Sessions>,
    client_id: Arc<str>,
    generation: u32,
    known: u64,
) {
    tokio::time::sleep(UNASKED_GRACE).await;
    let Some(shared) = shared.upgrade() else {
        return;
    };
    if sessions.revision_of(&shared.registry, &client_id, generation) != Some(known) {
        // Handed over, ended, or claimed here again meanwhile.
        return;
    }
    let key = subject::token(&client_id);
    let current = match tokio::time::timeout(WRITE_TIMEOUT, sessions.bucket.entry(key)).await {
        Ok(Ok(entry)) => entry.map_or(0, |entry| entry.revision),
        _ => return,
    };
    warn!(%client_id, "cluster: the session was claimed by another node that did not ask for it; its connection here is closed");
    let given_up_to = current.max(known + 1);
    let _dropped = hand_over(&shared, &sessions, &client_id, given_up_to, false).await;
}

/// Gives the session of `client_id` up to a claim with `revision`: closes its connection
/// (0x8E), removes it, and returns its state (or ends it, for a clean start).
async fn hand_over(
    shared: &Arc<Shared>,
    sessions: &Sessions,
    client_id: &str,
    revision: u64,
    discard: bool,
) -> Reply {
    let routed;
    let claimed_here;
    let taken = {
        let now = sessions.seconds();
        let mut claims = sessions.claims();
        // Every session this node claimed or took over since it started has a claim: in it
        // while it is here, loose for a while after (`forget_idle`).
        let here = shared.registry.get(client_id);
        let held = here.as_deref().and_then(held_revision);
        claimed_here = held.is_some() || claims.loose.contains_key(client_id);
        let latest = held.or_else(|| claims.loose.get(client_id).map(|loose| loose.revision));
        if latest.unwrap_or(0) >= revision {
            return Reply::Stale;
        }
        // The claim leaves with the session, loose, saying whom the session went to.
        if let Some(session) = &here
            && let Some(claimed) = session.lock().claim.take()
        {
            claims.loose.insert(
                session.client_id.clone(),
                Loose::from_claimed(&claimed, now),
            );
        }
        match claims.loose.get_mut(client_id) {
            Some(loose) => {
                loose.released = loose.released.max(revision);
                loose.touched = now;
            }
            None => {
                claims.loose.insert(
                    client_id.into(),
                    Loose {
                        revision: 0,
                        released: revision,
                        generation: 0,
                        touched: now,
                    },
                );
            }
        }
        // No message is routed between the read of the routed place and the session's leaving
        // the router: everything up to it that the session matched is in the handover, and
        // nothing past it.
        let _routing = crate::lock(&sessions.routing);
        routed = sessions.routed.load(Ordering::Acquire);
        shared
            .registry
            .take(client_id, |session| shared.router.remove_session(session))
            .map(|session| {
                let mut inner = session.lock();
                let control = inner.attachment.take().map(|attachment| attachment.control);
                let waiter = inner.will_waiter.take();
                let (reply, state) = oneshot::channel();
                // As in a local takeover: a session that ends with its connection publishes its
                // will, one that goes on does not.
                let resume = !discard && inner.persistent;
                let asked = control.and_then(|control| {
                    control
                        .send(Control::TakeOver { reply, resume })
                        .ok()
                        .map(|()| state)
                });
                drop(inner);
                (session, asked, waiter)
            })
    };
    let Some((session, asked, waiter)) = taken else {
        return Reply::NoSession;
    };
    let state = match asked {
        Some(state) => tokio::time::timeout(HANDOVER_TIMEOUT, state)
            .await
            .ok()
            .and_then(Result::ok),
        None => None,
    };
    if let Some(waiter) = waiter {
        // A will waiting on its delay: dropped when the session goes on, due now if it ends.
        let _ = waiter.send(Control::EndWill { publish: discard });
    }
    // A SUBSCRIBE the connection handled before it saw the request.
    shared.router.remove_session(&session);
    if !claimed_here && !discard {
        // Restored from this node's store at its start and not claimed since: the cluster may
        // have moved the session elsewhere meanwhile, and this copy queued what the stream
        // brought since (the proof: asked after a claim of its own that timed out but was
        // stored, a restarted node handed over 81 messages its client had had from another
        // node, under identifiers the client still held). The asker resumes from the record.
        let waiting = session.lock().queue_size().0;
        shared.stats.dropped(Dropped::SessionEnded, waiting);
        shared.write(vec![crate::store::Change::DeleteSession(
            session.client_id.clone(),
        )]);
        return Reply::NoSession;
    }
    if discard {
        let waiting = session.lock().queue_size().0;
        shared.stats.dropped(Dropped::SessionEnded, waiting);
        shared.end_record(&session);
        return Reply::Ended;
    }
    if session
        .lock()
        .replay
        .as_ref()
        .is_some_and(|replay| replay.holding)
    {
        // Still resuming here from a node that died (replaying the stream): what it has is
        // partial. The asker resumes from the record, whose cursor has not moved since.
        return Reply::NoSession;
    }
    // A session resumed here from a dead node's record had the stream replayed to it up to
    // `through`, past this node's routed place when the node's consumer lagged behind (its
    // server died): what it has up to there is in this handover or delivered. The asker reading
    // the stream after the node's place alone sent those again (the proof: 58 QoS 2 messages a
    // second time).
    let replayed = session
        .lock()
        .replay
        .as_ref()
        .map_or(0, |replay| replay.through);
    let mut handover = Handover {
        routed: routed.max(replayed),
        ..Handover::default()
    };
    let mut state = state
        .or_else(|| session.lock().saved.take().map(|saved| *saved))
        .unwrap_or_default();
    let now = Instant::now();
    for message in state.in_flight.drain(..) {
        if let Some(packet_id) = message.publish.packet_id {
            handover
                .in_flight
                .push((packet_id, message.stage, message.publish));
        }
    }
    handover.queued.extend(
        state
            .queued
            .drain(..)
            .map(|queued| (queued.publish, Duration::ZERO, UNKNOWN_SEQUENCE)),
    );
    let will = {
        let mut inner = session.lock();
        while let Some(queued) = inner.pop_pending() {
            handover.queued.push((
                queued.publish,
                now.duration_since(queued.since),
                queued.sequence,
            ));
        }
        inner
            .durable
            .as_ref()
            .and_then(|durable| durable.will.clone())
    };
    // With a store, the rest of the queue is there; after a restart, the deliveries in flight
    // are at its head.
    while let Some(entries) = shared
        .read_stored_tail(&session, Ticket::default(), PAGE)
        .await
    {
        for loaded in entries {
            let (publish, since) = delivered_copy(&loaded);
            match loaded.entry.in_flight {
                Some((packet_id, stage)) if handover.queued.is_empty() => {
                    handover.in_flight.push((packet_id, stage, publish));
                }
                _ => handover
                    .queued
                    .push((publish, now.duration_since(since), UNKNOWN_SEQUENCE)),
            }
        }
    }
    handover.record = Some(SessionRecord {
        client_id: client_id.to_owned(),
        expiry_interval: state.session_expiry_interval,
        disconnected_at: None,
        subscriptions: session.lock().subscriptions.to_record(),
        will,
    });
    handover.inbound = state.inbound_awaiting_release;
    handover.next_packet_id = Some(state.next_packet_id);
    // Not `end_record`: the bucket's key is the new owner's now.
    shared.write(vec![crate::store::Change::DeleteSession(
        session.client_id.clone(),
    )]);
    Reply::Handover(Box::new(handover))
}

/// A value of the bucket: the format version, the owner's node id (length-prefixed), the
/// stream cursor, the QoS 2 deliveries past it (published and released: a count, then
/// sequence and identifier each; completed: a count, then each sequence), then `0` for an
/// ended session or `1` and its record in the store's layout.
fn encode_value(
    owner: &str,
    record: Option<&SessionRecord>,
    cursor: u64,
    in_flight: &InFlightRecord,
) -> Bytes {
    let mut buf = Vec::with_capacity(64);
    buf.put_u8(FORMAT_V2);
    record::put_bytes(&mut buf, owner.as_bytes());
    buf.put_u64(cursor);
    // At most 65,535 identifiers exist.
    // At most 65,535 identifiers are in flight at once.
    for deliveries in [&in_flight.published, &in_flight.released] {
        buf.put_u16(u16::try_from(deliveries.len()).unwrap_or(u16::MAX));
        for (sequence, packet_id) in deliveries.iter().take(usize::from(u16::MAX)) {
            buf.put_u64(*sequence);
            buf.put_u16(packet_id.get());
        }
    }
    buf.put_u32(u32::try_from(in_flight.done.len()).unwrap_or(u32::MAX));
    for sequence in in_flight.done.iter().take(u32::MAX as usize) {
        buf.put_u64(*sequence);
    }
    buf.put_u16(u16::try_from(in_flight.inbound.len()).unwrap_or(u16::MAX));
    for (packet_id, id) in in_flight.inbound.iter().take(usize::from(u16::MAX)) {
        buf.put_u16(packet_id.get());
        record::put_bytes(&mut buf, id.as_bytes());
    }
    match record {
        None => buf.put_u8(0),
        Some(record) => {
            buf.put_u8(1);
            buf.extend_from_slice(&record::encode_session(record));
        }
    }
    Bytes::from(buf)
}

/// The owner, cursor and record of a value made by [`encode_value`] (or by a node of the
/// first format, without a cursor); `None` for anything else.
fn decode_value(client_id: &str, value: &[u8]) -> Option<Previous> {
    let mut reader = Reader(value);
    let version = reader.u8().ok()?;
    if version != FORMAT_V1 && version != FORMAT_V2 {
        return None;
    }
    let owner = std::str::from_utf8(reader.bytes().ok()?).ok()?.to_owned();
    let mut in_flight = InFlightRecord::default();
    let cursor = if version == FORMAT_V2 {
        let cursor = reader.u64().ok()?;
        // Counts come from the network: capacity is not reserved from them.
        for deliveries in [&mut in_flight.published, &mut in_flight.released] {
            for _ in 0..reader.u16().ok()? {
                let sequence = reader.u64().ok()?;
                deliveries.push((sequence, PacketId::new(reader.u16().ok()?)?));
            }
        }
        for _ in 0..reader.u32().ok()? {
            in_flight.done.push(reader.u64().ok()?);
        }
        for _ in 0..reader.u16().ok()? {
            let packet_id = PacketId::new(reader.u16().ok()?)?;
            let id = std::str::from_utf8(reader.bytes().ok()?).ok()?.to_owned();
            in_flight.inbound.push((packet_id, id));
        }
        Some(cursor)
    } else {
        None
    };
    let record = match reader.u8().ok()? {
        0 => None,
        _ => Some(record::decode_session(client_id, reader.0).ok()?),
    };
    Some(Previous {
        owner,
        record,
        cursor,
        in_flight,
    })
}

/// A takeover request: the format version, the claim's revision, whether the session ends
/// (clean start), and the client id.
fn encode_request(client_id: &str, revision: u64, discard: bool) -> Bytes {
    let mut buf = Vec::with_capacity(client_id.len() + 10);
    buf.put_u8(FORMAT_V1);
    buf.put_u64(revision);
    buf.put_u8(u8::from(discard));
    buf.extend_from_slice(client_id.as_bytes());
    Bytes::from(buf)
}

fn decode_request(request: &[u8]) -> Option<(String, u64, bool)> {
    let mut reader = Reader(request);
    if reader.u8().ok()? != FORMAT_V1 {
        return None;
    }
    let revision = reader.u64().ok()?;
    let discard = reader.u8().ok()? != 0;
    let client_id = std::str::from_utf8(reader.0).ok()?;
    (!client_id.is_empty()).then(|| (client_id.to_owned(), revision, discard))
}

/// A reply: the format version, a kind byte, and for a handover the record (store layout),
/// the deliveries in flight, the queued messages (each with its stream sequence), the
/// inbound identifiers, the next packet identifier and the old owner's routed place.
fn encode_reply(reply: &Reply) -> Bytes {
    let mut buf = Vec::new();
    buf.put_u8(FORMAT_V2);
    let handover = match reply {
        Reply::Handover(handover) => handover,
        Reply::Ended => {
            buf.put_u8(1);
            return Bytes::from(buf);
        }
        Reply::NoSession => {
            buf.put_u8(2);
            return Bytes::from(buf);
        }
        Reply::Stale => {
            buf.put_u8(3);
            return Bytes::from(buf);
        }
    };
    buf.put_u8(0);
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    match &handover.record {
        Some(record) => {
            buf.put_u8(1);
            record::put_bytes(&mut buf, &record::encode_session(record));
        }
        None => buf.put_u8(0),
    }
    buf.put_u32(count(handover.in_flight.len()));
    for (packet_id, stage, publish) in &handover.in_flight {
        buf.put_u16(packet_id.get());
        buf.put_u8(match stage {
            OutgoingStage::Published => 0,
            OutgoingStage::Released => 1,
        });
        record::put_publish(&mut buf, publish);
    }
    buf.put_u32(count(handover.queued.len()));
    for (publish, waited, sequence) in &handover.queued {
        buf.put_u64(u64::try_from(waited.as_millis()).unwrap_or(u64::MAX));
        buf.put_u64(*sequence);
        record::put_publish(&mut buf, publish);
    }
    buf.put_u32(count(handover.inbound.len()));
    for packet_id in &handover.inbound {
        buf.put_u16(packet_id.get());
    }
    buf.put_u16(handover.next_packet_id.map_or(0, PacketId::get));
    buf.put_u64(handover.routed);
    Bytes::from(buf)
}

fn decode_reply(client_id: &str, reply: &[u8]) -> Option<Reply> {
    let mut reader = Reader(reply);
    if reader.u8().ok()? != FORMAT_V2 {
        return None;
    }
    match reader.u8().ok()? {
        0 => {}
        1 => return Some(Reply::Ended),
        2 => return Some(Reply::NoSession),
        3 => return Some(Reply::Stale),
        _ => return None,
    }
    let mut handover = Handover::default();
    if reader.u8().ok()? != 0 {
        handover.record = Some(record::decode_session(client_id, reader.bytes().ok()?).ok()?);
    }
    // Counts come from the network: capacity is not reserved from them.
    for _ in 0..reader.u32().ok()? {
        let packet_id = PacketId::new(reader.u16().ok()?)?;
        let stage = match reader.u8().ok()? {
            0 => OutgoingStage::Published,
            1 => OutgoingStage::Released,
            _ => return None,
        };
        let publish = record::read_publish(&mut reader).ok()?;
        handover.in_flight.push((packet_id, stage, publish));
    }
    for _ in 0..reader.u32().ok()? {
        let waited = Duration::from_millis(reader.u64().ok()?);
        let sequence = reader.u64().ok()?;
        let publish = record::read_publish(&mut reader).ok()?;
        handover.queued.push((publish, waited, sequence));
    }
    for _ in 0..reader.u32().ok()? {
        handover.inbound.push(PacketId::new(reader.u16().ok()?)?);
    }
    handover.next_packet_id = PacketId::new(reader.u16().ok()?);
    handover.routed = reader.u64().ok()?;
    reader
        .0
        .is_empty()
        .then(|| Reply::Handover(Box::new(handover)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rallymq_codec::{QoS, SubscriptionId, SubscriptionOptions, TopicFilter, TopicName};

    /// A node keeps a claim per connected client id, inline in its session: CLUSTER.md's idle
    /// figures count on the session's block staying in jemalloc's 160-byte class with it
    /// (the `Arc`'s counts take 16), so that a clustered session costs what a single node's
    /// does.
    #[test]
    fn a_claim_takes_24_bytes_and_leaves_the_session_in_its_size_class() {
        assert_eq!(size_of::<Option<Claimed>>(), 24);
        assert!(16 + size_of::<Session>() <= 160, "{}", size_of::<Session>());
    }

    fn record() -> SessionRecord {
        SessionRecord {
            client_id: "a/b c".to_owned(),
            expiry_interval: 600,
            disconnected_at: None,
            subscriptions: vec![(
                TopicFilter::new("s/+").unwrap(),
                SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    no_local: true,
                    ..SubscriptionOptions::default()
                },
                SubscriptionId::new(7),
            )],
            will: None,
        }
    }

    #[test]
    fn a_bucket_value_carries_the_owner_and_the_record() {
        let in_flight = InFlightRecord {
            published: vec![(80, PacketId::new(9).unwrap())],
            released: vec![
                (78, PacketId::new(3).unwrap()),
                (79, PacketId::new(65535).unwrap()),
            ],
            done: vec![81, 90],
            inbound: vec![(PacketId::new(4).unwrap(), "node-a-17f-9".to_owned())],
        };
        let value = encode_value("node-a", Some(&record()), 77, &in_flight);
        let previous = decode_value("a/b c", &value).unwrap();
        assert_eq!(previous.owner, "node-a");
        assert_eq!(previous.record, Some(record()));
        assert_eq!(previous.cursor, Some(77));
        assert_eq!(previous.in_flight, in_flight);
        let ended = decode_value(
            "a/b c",
            &encode_value("node-b", None, 0, &InFlightRecord::default()),
        )
        .unwrap();
        assert_eq!((ended.owner.as_str(), ended.record), ("node-b", None));
        assert!(decode_value("x", b"").is_none());
        assert!(decode_value("x", &value[..value.len() - 1]).is_none());
    }

    #[test]
    fn a_takeover_request_and_its_replies_survive_the_wire() {
        let request = encode_request("c/1", 42, true);
        assert_eq!(decode_request(&request), Some(("c/1".to_owned(), 42, true)));
        assert_eq!(decode_request(&request[..5]), None);

        let mut publish = Publish::new(TopicName::new("s/x").unwrap(), "payload");
        publish.qos = QoS::AtLeastOnce;
        let handover = Handover {
            record: Some(record()),
            in_flight: vec![(
                PacketId::new(9).unwrap(),
                OutgoingStage::Released,
                publish.clone(),
            )],
            queued: vec![(publish, Duration::from_millis(1500), 41)],
            inbound: vec![PacketId::new(3).unwrap()],
            next_packet_id: PacketId::new(10),
            routed: 40,
        };
        for reply in [
            Reply::Handover(Box::new(handover)),
            Reply::Ended,
            Reply::NoSession,
            Reply::Stale,
        ] {
            let bytes = encode_reply(&reply);
            assert_eq!(decode_reply("a/b c", &bytes), Some(reply));
            assert_eq!(decode_reply("a/b c", &bytes[..bytes.len() - 1]), None);
        }
    }
}

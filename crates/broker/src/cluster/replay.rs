//! A session resumed from its record after the node that held it died (or lost it): the
//! stream of QoS 1 and 2 messages is read again from the record's stream cursor, and what
//! matches the session's subscriptions is queued for it.
//!
//! - The session holds back what routing brings from the stream while the replay runs
//!   ([`Session::hold_stream`]): a message can be both routed here and read again.
//! - The replay reads an ephemeral consumer of the stream, from the cursor to the stream's
//!   last message as it was when the replay began, and routes each message to this session
//!   only (the local matcher decides, as for any message: QoS, No Local, identifiers).
//! - When it has read that far, the held messages it did not bring are queued after it
//!   ([`Shared::end_replay`]), and routing skips what it brought.
//!
//! The record lists the QoS 2 deliveries past the cursor by their sequence: completed and
//! released ones are skipped, the one sent and not acknowledged goes again under its
//! identifier with DUP (`sessions.rs`). A QoS 1 message acknowledged after the record was last
//! written comes again (at least once).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use tracing::{debug, info, warn};

use super::stream::{STREAM, pull_messages};
use super::{received, subject};
use crate::broker::Shared;
use crate::session::Session;

/// How long the replay waits for the stream's next message before it gives up.
const NEXT_MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a replay goes on reading with new consumers without getting anywhere before it
/// gives up. After a majority of the servers came back, the streams took writes again while
/// JetStream's API still answered 503 ("temporarily unavailable") for more than 5 s: a replay
/// that gave up after 5 tries a second apart left a session resumed then without the
/// messages only it could bring (the proof: a QoS 2 subscriber missed 2).
const PATIENCE: Duration = Duration::from_secs(30);

/// How long a replay waits before it reads on with a new consumer.
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// How long the server keeps the replay's consumer once nobody reads it.
const CONSUMER_INACTIVE: Duration = Duration::from_secs(60);

/// Replays the stream after `cursor` to `session`, then ends its holding back.
pub(super) async fn replay(
    shared: &Shared,
    context: &jetstream::Context,
    session: &Arc<Session>,
    cursor: u64,
    skip: &HashSet<u64>,
) {
    let through = match read_after(shared, context, session, cursor, skip).await {
        Ok(through) => through,
        Err((through, error)) => {
            warn!(
                client_id = %session.client_id,
                cursor,
                through,
                %error,
                "cluster: replaying the stream to a resumed session stopped early; what it did not read is not delivered"
            );
            through
        }
    };
    shared.end_replay(session, through, &HashSet::new());
}

/// Routes the stream's messages after `cursor` to `session`, but those at the sequences in
/// `skip` (delivered already), up to the stream's last message when it began; returns how
/// far it read (with the last error, when it stopped early). A read that fails (a server or
/// its route lost) goes on with a new consumer from where it got, until [`PATIENCE`] has
/// passed without a message read.
async fn read_after(
    shared: &Shared,
    context: &jetstream::Context,
    session: &Arc<Session>,
    cursor: u64,
    skip: &HashSet<u64>,
) -> Result<u64, (u64, String)> {
    let mut through = cursor;
    let mut last = None;
    let mut count = 0u64;
    let mut progress = Instant::now();
    loop {
        let before = through;
        match read_once(shared, context, session, &mut through, &mut last, skip).await {
            Ok(read) => {
                count += read;
                info!(
                    client_id = %session.client_id,
                    from = cursor,
                    through,
                    messages = count,
                    "cluster: the stream replayed to a session resumed after its node was lost"
                );
                return Ok(through);
            }
            Err((read, error)) => {
                count += read;
                debug!(client_id = %session.client_id, through, %error, "cluster: replaying the stream; reading on");
                if through > before {
                    progress = Instant::now();
                }
                if progress.elapsed() >= PATIENCE {
                    return Err((through, error));
                }
                tokio::time::sleep(RETRY_DELAY).await;
            }
        }
    }
}

/// One consumer's part of [`read_after`]: from `through` (moved along) to `last` (read from
/// the stream the first time); how many messages it routed.
async fn read_once(
    shared: &Shared,
    context: &jetstream::Context,
    session: &Arc<Session>,
    through: &mut u64,
    last: &mut Option<u64>,
    skip: &HashSet<u64>,
) -> Result<u64, (u64, String)> {
    let mut stream = context
        .get_stream(STREAM)
        .await
        .map_err(|e| (0, e.to_string()))?;
    let end = match *last {
        Some(end) => end,
        None => {
            let end = stream
                .info()
                .await
                .map_err(|e| (0, e.to_string()))?
                .state
                .last_sequence;
            *last = Some(end);
            end
        }
    };
    if end <= *through {
        return Ok(0);
    }
    let reader = stream
        .create_consumer(consumer::pull::Config {
            description: Some(format!("rallymq replay of {:?}", session.client_id)),
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: *through + 1,
            },
            ack_policy: consumer::AckPolicy::Explicit,
            inactive_threshold: CONSUMER_INACTIVE,
            filter_subject: format!("{}.>", subject::STREAM_PREFIX),
            ..consumer::pull::Config::default()
        })
        .await
        .map_err(|e| (0, e.to_string()))?;
    let name = reader.cached_info().name.clone();
    let mut count = 0u64;
    let result = async {
        let mut messages = pull_messages(&reader).await.map_err(|e| e.to_string())?;
        while *through < end {
            let message = match tokio::time::timeout(NEXT_MESSAGE_TIMEOUT, messages.next()).await {
                Ok(Some(Ok(message))) => message,
                Ok(Some(Err(error))) => return Err(error.to_string()),
                Ok(None) => return Err("the stream's consumer ended".to_owned()),
                Err(_) => return Err(format!("no message within {NEXT_MESSAGE_TIMEOUT:?}")),
            };
            let sequence = message.info().map_or(0, |info| info.stream_sequence);
            if sequence <= *through {
                // Delivered again: read already.
                continue;
            }
            let topic = subject::stream_subject_topic(message.subject.as_str());
            if skip.contains(&sequence) {
                // Delivered before its node died, as its record says.
            } else if let Some((sender, publish)) = received(topic, message.payload.clone()) {
                if publish.qos == rallymq_codec::QoS::ExactlyOnce {
                    debug!(
                        client_id = %session.client_id,
                        sequence,
                        id = super::stream::message_id(&message),
                        "cluster: replaying a QoS 2 message"
                    );
                }
                shared.publish_replayed(session, sender.as_deref(), &publish, sequence);
                count += 1;
            }
            *through = sequence;
            // Acknowledged, or the server stops delivering at its limit of unacknowledged
            // messages.
            let _ = message.ack().await;
        }
        Ok(())
    }
    .await;
    let _ = stream.delete_consumer(&name).await;
    result.map(|()| count).map_err(|error| (count, error))
}

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
//! What the session had been delivered and acknowledged after its record's cursor was last
//! written comes again: QoS 1 at least once; a QoS 2 message completed in that window is
//! delivered again, as a new message.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use tracing::{info, warn};

use super::stream::STREAM;
use super::{received, subject};
use crate::broker::Shared;
use crate::session::Session;

/// How long the replay waits for the stream's next message before it gives up.
const NEXT_MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the server keeps the replay's consumer once nobody reads it.
const CONSUMER_INACTIVE: Duration = Duration::from_secs(60);

/// Replays the stream after `cursor` to `session`, then ends its holding back.
pub(super) async fn replay(
    shared: &Shared,
    context: &jetstream::Context,
    session: &Arc<Session>,
    cursor: u64,
) {
    let through = match read_after(shared, context, session, cursor).await {
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
    shared.end_replay(session, through);
}

/// Routes the stream's messages after `cursor` to `session`, up to the stream's last message
/// when it began; returns how far it read (with the error, when it stopped early).
async fn read_after(
    shared: &Shared,
    context: &jetstream::Context,
    session: &Arc<Session>,
    cursor: u64,
) -> Result<u64, (u64, String)> {
    let mut stream = context
        .get_stream(STREAM)
        .await
        .map_err(|e| (cursor, e.to_string()))?;
    let last = stream
        .info()
        .await
        .map_err(|e| (cursor, e.to_string()))?
        .state
        .last_sequence;
    if last <= cursor {
        return Ok(cursor);
    }
    let reader = stream
        .create_consumer(consumer::pull::Config {
            description: Some(format!("rallymq replay of {:?}", session.client_id)),
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: cursor + 1,
            },
            ack_policy: consumer::AckPolicy::Explicit,
            inactive_threshold: CONSUMER_INACTIVE,
            filter_subject: format!("{}.>", subject::STREAM_PREFIX),
            ..consumer::pull::Config::default()
        })
        .await
        .map_err(|e| (cursor, e.to_string()))?;
    let name = reader.cached_info().name.clone();
    let mut through = cursor;
    let mut count = 0u64;
    let result = async {
        let mut messages = reader.messages().await.map_err(|e| e.to_string())?;
        while through < last {
            let message = match tokio::time::timeout(NEXT_MESSAGE_TIMEOUT, messages.next()).await {
                Ok(Some(Ok(message))) => message,
                Ok(Some(Err(error))) => return Err(error.to_string()),
                Ok(None) => return Err("the stream's consumer ended".to_owned()),
                Err(_) => return Err(format!("no message within {NEXT_MESSAGE_TIMEOUT:?}")),
            };
            let sequence = message.info().map_or(0, |info| info.stream_sequence);
            if sequence <= through {
                // Delivered again: read already.
                continue;
            }
            let topic = subject::stream_subject_topic(message.subject.as_str());
            if let Some((sender, publish)) = received(topic, message.payload.clone()) {
                shared.publish_replayed(session, sender.as_deref(), &publish, sequence);
                count += 1;
            }
            through = sequence;
            // Acknowledged, or the server stops delivering at its limit of unacknowledged
            // messages.
            let _ = message.ack().await;
        }
        Ok(())
    }
    .await;
    let _ = stream.delete_consumer(&name).await;
    info!(
        client_id = %session.client_id,
        from = cursor,
        through,
        messages = count,
        "cluster: the stream replayed to a session resumed after its node was lost"
    );
    result.map(|()| through).map_err(|error| (through, error))
}

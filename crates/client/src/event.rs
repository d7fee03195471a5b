//! What happens to the client's connection, for applications that show it or act on it.

use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use rallymq_codec::ConnAck;
use tokio::sync::mpsc;

use crate::Error;

/// A change in the client's connection, from [`Client::connection_events`](crate::Client::connection_events).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionEvent {
    /// CONNACK accepted a connection (after a reconnect: the first connection's CONNACK is what
    /// [`Client::connect`](crate::Client::connect) returns).
    Connected {
        /// Whether the broker resumed the session.
        session_present: bool,
        /// The CONNACK, with the broker's MQTT 5 properties.
        connack: ConnAck,
    },
    /// The connection ended, and why: [`Error::Closed`] after
    /// [`Client::disconnect`](crate::Client::disconnect); otherwise the transport's error, the
    /// broker's DISCONNECT, a refusal or a timeout.
    Disconnected(Error),
    /// A new connection will be attempted after `delay` (the backoff's `attempt`th retry, from
    /// 0, in a row without a successful connection).
    Reconnecting {
        /// Failed attempts since the last successful connection.
        attempt: u32,
        /// How long the client waits before the attempt.
        delay: Duration,
    },
    /// The client will not reconnect (reconnecting is off): it has ended, and every operation
    /// fails with this error from now on.
    GaveUp(Error),
}

/// Most events waiting for a reader; past it, newer events are not kept for that reader (one
/// that never reads does not make the client grow).
const EVENTS_BUFFER: usize = 64;

/// The readers of connection events, each with a bounded channel.
#[derive(Debug, Default)]
pub(crate) struct Listeners(Mutex<Vec<mpsc::Sender<ConnectionEvent>>>);

impl Listeners {
    pub(crate) fn subscribe(&self) -> ConnectionEvents {
        let (sender, receiver) = mpsc::channel(EVENTS_BUFFER);
        crate::lock(&self.0).push(sender);
        ConnectionEvents { receiver }
    }

    /// Sends `event` to every reader with room; forgets readers that are gone.
    pub(crate) fn send(&self, event: &ConnectionEvent) {
        crate::lock(&self.0).retain(|sender| {
            !matches!(
                sender.try_send(event.clone()),
                Err(mpsc::error::TrySendError::Closed(_))
            )
        });
    }

    /// Ends every reader's stream.
    pub(crate) fn close(&self) {
        crate::lock(&self.0).clear();
    }
}

/// The connection events of a client, as a [`Stream`]; it ends once the client has ended. Each
/// call to [`Client::connection_events`](crate::Client::connection_events) gives a stream of
/// its own, which sees the events from then on.
#[derive(Debug)]
pub struct ConnectionEvents {
    receiver: mpsc::Receiver<ConnectionEvent>,
}

impl ConnectionEvents {
    /// The next event, or `None` once the client has ended.
    pub async fn recv(&mut self) -> Option<ConnectionEvent> {
        self.receiver.recv().await
    }
}

impl Stream for ConnectionEvents {
    type Item = ConnectionEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ConnectionEvent>> {
        self.receiver.poll_recv(cx)
    }
}

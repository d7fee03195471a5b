//! The handle applications use.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use rallymq_codec::{
    AckProperties, ConnAck, Publish, QoS, ReasonCode, SubscribeProperties, Subscription,
    TopicFilter, TopicName, UnsubscribeProperties,
};
use tokio::sync::{mpsc, oneshot};

use crate::driver::{Command, Driver, Status};
use crate::{ClientOptions, Error};

/// How the broker acknowledged a message (QoS 0: success as soon as it is written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// PUBACK's reason code (QoS 1), or PUBREC's failure / PUBCOMP's (QoS 2). MQTT 5 brokers
    /// say 0x10 "No matching subscribers" when nobody got it.
    pub reason_code: ReasonCode,
    /// MQTT 5 acknowledgement properties (reason string, user properties).
    pub properties: AckProperties,
}

/// A connected MQTT client. Cheap to clone; every clone drives the same connection, from any
/// task. The connection closes when [`Client::disconnect`] is called or the last clone is
/// dropped.
#[derive(Debug, Clone)]
pub struct Client {
    commands: mpsc::Sender<Command>,
    status: Arc<Status>,
}

/// The messages the client receives, as a [`Stream`]. Up to `message_buffer` messages wait
/// here; when it is full the client pauses reading from the network until the stream is read
/// again (nothing is dropped, the broker holds the rest). Dropping the stream discards
/// further messages.
#[derive(Debug)]
pub struct Messages {
    receiver: mpsc::Receiver<Publish>,
}

impl Messages {
    /// The next message, or `None` once the client has ended.
    pub async fn recv(&mut self) -> Option<Publish> {
        self.receiver.recv().await
    }
}

impl Stream for Messages {
    type Item = Publish;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Publish>> {
        self.receiver.poll_recv(cx)
    }
}

impl Client {
    /// Connects to the broker and returns the client and its message stream once CONNACK has
    /// accepted the connection. The connection runs on a task of the current tokio runtime.
    pub async fn connect(options: ClientOptions) -> Result<(Self, Messages, ConnAck), Error> {
        let (commands, command_receiver) = mpsc::channel(options.max_queued.max(16));
        let (message_sender, receiver) = mpsc::channel(options.message_buffer.max(1));
        let (first, first_result) = oneshot::channel();
        let status = Arc::new(Status::default());
        let driver = Driver::new(
            options,
            command_receiver,
            message_sender,
            status.clone(),
            first,
        );
        tokio::spawn(driver.run());
        let connack = first_result.await.map_err(|_| Error::Closed)??;
        Ok((Self { commands, status }, Messages { receiver }, connack))
    }

    /// Publishes `payload` to `topic`. Resolves when the QoS flow completes: at once for
    /// QoS 0, on PUBACK for QoS 1, on PUBCOMP for QoS 2. Across reconnects the future stays
    /// pending and the message is resent.
    pub async fn publish(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
        qos: QoS,
        retain: bool,
    ) -> Result<Ack, Error> {
        let mut publish = Publish::new(
            TopicName::new(topic).map_err(|e| Error::InvalidArgument(e.to_string()))?,
            payload.into(),
        );
        publish.qos = qos;
        publish.retain = retain;
        self.publish_message(publish).await
    }

    /// Publishes a prepared message (MQTT 5 properties: response topic, correlation data,
    /// user properties, message expiry...). Resolves as [`Client::publish`] does.
    pub async fn publish_message(&self, publish: Publish) -> Result<Ack, Error> {
        let (reply, result) = oneshot::channel();
        self.commands
            .send(Command::Publish { publish, reply })
            .await
            .map_err(|_| Error::Closed)?;
        result.await.map_err(|_| Error::Closed)?
    }

    /// Publishes without waiting for room: fails at once with [`Error::Full`] when the window,
    /// the queue or the command buffer is full. On success, the returned future resolves when
    /// the QoS flow completes (it need not be awaited for the message to go).
    pub fn try_publish(
        &self,
        publish: Publish,
    ) -> Result<impl Future<Output = Result<Ack, Error>> + use<>, Error> {
        if self.status.saturated.load(Ordering::Relaxed) {
            return Err(Error::Full);
        }
        let (reply, result) = oneshot::channel();
        self.commands
            .try_send(Command::Publish { publish, reply })
            .map_err(|error| match error {
                mpsc::error::TrySendError::Full(_) => Error::Full,
                mpsc::error::TrySendError::Closed(_) => Error::Closed,
            })?;
        Ok(async move { result.await.map_err(|_| Error::Closed)? })
    }

    /// Subscribes to `filter` at `qos`; returns the broker's answer (the granted QoS as a
    /// reason code, or a failure).
    pub async fn subscribe(&self, filter: &str, qos: QoS) -> Result<ReasonCode, Error> {
        let filter = TopicFilter::new(filter).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let codes = self
            .subscribe_many(
                vec![Subscription::new(filter, qos)],
                SubscribeProperties::default(),
            )
            .await?;
        codes
            .first()
            .copied()
            .ok_or_else(|| Error::NotAllowed("empty SUBACK".into()))
    }

    /// Subscribes to several filters with full options and MQTT 5 properties (subscription
    /// identifier, user properties); returns one reason code per subscription.
    pub async fn subscribe_many(
        &self,
        subscriptions: Vec<Subscription>,
        properties: SubscribeProperties,
    ) -> Result<Vec<ReasonCode>, Error> {
        let (reply, result) = oneshot::channel();
        self.commands
            .send(Command::Subscribe {
                subscriptions,
                properties,
                reply,
            })
            .await
            .map_err(|_| Error::Closed)?;
        result.await.map_err(|_| Error::Closed)?
    }

    /// Unsubscribes from `filter`; returns the broker's reason codes (MQTT 5; empty before).
    pub async fn unsubscribe(&self, filter: &str) -> Result<Vec<ReasonCode>, Error> {
        let filter = TopicFilter::new(filter).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let (reply, result) = oneshot::channel();
        let command = Command::Unsubscribe {
            filters: vec![filter],
            properties: UnsubscribeProperties::default(),
            reply,
        };
        self.commands
            .send(command)
            .await
            .map_err(|_| Error::Closed)?;
        result.await.map_err(|_| Error::Closed)?
    }

    /// Sends DISCONNECT and ends the client; pending publishes fail with [`Error::Closed`]
    /// (their state is saved in the session store first).
    pub async fn disconnect(&self) -> Result<(), Error> {
        let (reply, result) = oneshot::channel();
        self.commands
            .send(Command::Disconnect { reply })
            .await
            .map_err(|_| Error::Closed)?;
        result.await.map_err(|_| Error::Closed)?
    }

    /// Whether the client is connected right now (it may be reconnecting).
    pub fn is_connected(&self) -> bool {
        self.status.connected.load(Ordering::Relaxed)
    }
}

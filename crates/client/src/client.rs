//! The handle applications use.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use rallymq_codec::{
    AckProperties, ConnAck, Message, Publish, QoS, ReasonCode, SubscribeProperties, Subscription,
    TopicFilter, TopicName, UnsubscribeProperties,
};
use tokio::sync::{mpsc, oneshot};

use crate::driver::{Command, Driver, Status};
use crate::{ClientOptions, ConnectionEvents, Error};

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
/// task. The connection ends when [`Client::disconnect`] is called or the last clone is
/// dropped; either way DISCONNECT is sent first, so the broker does not publish the will.
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
    receiver: mpsc::Receiver<Message>,
}

impl Messages {
    /// The next message, or `None` once the client has ended.
    pub async fn recv(&mut self) -> Option<Message> {
        self.receiver.recv().await
    }
}

impl Stream for Messages {
    type Item = Message;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        self.receiver.poll_recv(cx)
    }
}

/// The acknowledgement of a message [`Client::try_publish`] took: resolves as
/// [`Client::publish`] does.
#[derive(Debug)]
#[must_use = "the message is sent either way; await this for its acknowledgement"]
pub struct AckFuture {
    result: oneshot::Receiver<Result<Ack, Error>>,
    status: Arc<Status>,
}

impl Future for AckFuture {
    type Output = Result<Ack, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match Pin::new(&mut self.result).poll(cx) {
            Poll::Ready(Ok(result)) => Poll::Ready(result),
            Poll::Ready(Err(_)) => Poll::Ready(Err(self.status.end_error())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Client {
    /// Connects to the broker and returns the client, its message stream and the CONNACK
    /// once the broker has accepted the connection. The connection runs on a task of the
    /// current tokio runtime.
    ///
    /// Fails at once if the options are invalid, or if this first connection fails (the
    /// transport, a refusal, a timeout): reconnecting, when on, starts only after a first
    /// successful connection, so that a wrong address or login is reported rather than
    /// retried forever.
    pub async fn connect(options: ClientOptions) -> Result<(Self, Messages, ConnAck), Error> {
        let urls = options.validated_urls()?;
        let (commands, command_receiver) = mpsc::channel(options.max_queued.max(16));
        let (message_sender, receiver) = mpsc::channel(options.message_buffer.max(1));
        let (first, first_result) = oneshot::channel();
        let status = Arc::new(Status::default());
        let driver = Driver::new(
            options,
            urls,
            command_receiver,
            message_sender,
            status.clone(),
            first,
        );
        tokio::spawn(driver.run());
        let connack = first_result.await.map_err(|_| Error::Closed)??;
        Ok((Self { commands, status }, Messages { receiver }, connack))
    }

    /// Publishes `payload` to `topic`. Resolves when the QoS flow completes: once written for
    /// QoS 0, on PUBACK for QoS 1, on PUBCOMP for QoS 2. While the client reconnects, the
    /// message waits (in the bounded queue, whatever its QoS) and goes on the next connection;
    /// in-flight QoS 1 and 2 messages are resent there.
    pub async fn publish(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
        qos: QoS,
        retain: bool,
    ) -> Result<Ack, Error> {
        self.publish_message(message(topic, payload, qos, retain)?)
            .await
    }

    /// Publishes a prepared message (MQTT 5 properties: response topic, correlation data,
    /// user properties, message expiry...). Resolves as [`Client::publish`] does.
    pub async fn publish_message(&self, message: Message) -> Result<Ack, Error> {
        let (reply, result) = oneshot::channel();
        self.send(Command::Publish {
            publish: Publish::from(message),
            reply,
        })
        .await?;
        self.answer(result).await
    }

    /// Publishes without waiting for room: fails at once with [`Error::Full`] when the window,
    /// the queue or the command buffer is full. On success, the returned future resolves when
    /// the QoS flow completes, as [`Client::publish`]'s does (it need not be awaited for the
    /// message to go).
    pub fn try_publish(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
        qos: QoS,
        retain: bool,
    ) -> Result<AckFuture, Error> {
        self.try_publish_message(message(topic, payload, qos, retain)?)
    }

    /// [`Client::try_publish`] for a prepared message.
    pub fn try_publish_message(&self, message: Message) -> Result<AckFuture, Error> {
        if self.status.saturated.load(Ordering::Relaxed) {
            return Err(Error::Full);
        }
        let (reply, result) = oneshot::channel();
        let command = Command::Publish {
            publish: Publish::from(message),
            reply,
        };
        match self.commands.try_send(command) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => return Err(Error::Full),
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(self.status.end_error()),
        }
        Ok(AckFuture {
            result,
            status: self.status.clone(),
        })
    }

    /// Subscribes to `filter` at `qos`; returns the broker's answer (the granted QoS as a
    /// reason code, or a failure).
    pub async fn subscribe(&self, filter: &str, qos: QoS) -> Result<ReasonCode, Error> {
        let filter = TopicFilter::new(filter).map_err(invalid)?;
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
        self.send(Command::Subscribe {
            subscriptions,
            properties,
            reply,
        })
        .await?;
        self.answer(result).await
    }

    /// Unsubscribes from `filter`; returns the broker's reason codes (MQTT 5; empty before).
    pub async fn unsubscribe(&self, filter: &str) -> Result<Vec<ReasonCode>, Error> {
        let filter = TopicFilter::new(filter).map_err(invalid)?;
        let (reply, result) = oneshot::channel();
        self.send(Command::Unsubscribe {
            filters: vec![filter],
            properties: UnsubscribeProperties::default(),
            reply,
        })
        .await?;
        self.answer(result).await
    }

    /// Sends DISCONNECT (reason 0x00, so the broker discards the will) and ends the client,
    /// resolving once DISCONNECT is written and the transport closed. Pending publishes fail
    /// with [`Error::Closed`] (their state is saved in the session store first). Dropping the
    /// last handle does the same, without waiting.
    pub async fn disconnect(&self) -> Result<(), Error> {
        let (reply, result) = oneshot::channel();
        self.send(Command::Disconnect { reply }).await?;
        self.answer(result).await
    }

    /// Whether the client is connected right now (it may be reconnecting).
    pub fn is_connected(&self) -> bool {
        self.status.connected.load(Ordering::Relaxed)
    }

    /// A stream of the connection's changes from now on: reconnects, disconnections and why,
    /// the end of the client. See [`ConnectionEvent`](crate::ConnectionEvent).
    pub fn connection_events(&self) -> ConnectionEvents {
        self.status.listeners.subscribe()
    }

    async fn send(&self, command: Command) -> Result<(), Error> {
        self.commands
            .send(command)
            .await
            .map_err(|_| self.status.end_error())
    }

    /// The driver's answer to a command, or why the client ended before giving one.
    async fn answer<T>(&self, result: oneshot::Receiver<Result<T, Error>>) -> Result<T, Error> {
        result.await.map_err(|_| self.status.end_error())?
    }
}

fn message(
    topic: &str,
    payload: impl Into<Bytes>,
    qos: QoS,
    retain: bool,
) -> Result<Message, Error> {
    let mut message = Message::new(TopicName::new(topic).map_err(invalid)?, payload);
    message.qos = qos;
    message.retain = retain;
    Ok(message)
}

fn invalid(error: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(error.to_string())
}

//! What each route does.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use rallymq_codec::{
    MqttString, PayloadFormat, Publish, PublishProperties, QoS, TopicFilter, TopicName,
    UserProperty,
};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::routes::{Operation, Page, Query, Route};
use super::{ApiError, json_response, no_content, openapi, rfc3339};
use crate::broker::Shared;
use crate::config::QueueFullPolicy;
use crate::session::{Control, ControlBox, EngineCounts, Session, SessionSnapshot};
use crate::{BoundListener, ListenerKind};

/// How long a listing waits for connections to say what they have in flight; one that has
/// not answered by then is listed without (`inflight_cnt` null).
const INSPECT_TIMEOUT: Duration = Duration::from_millis(500);

/// How long a disconnect waits for the connection to let go of its session.
const DETACH_TIMEOUT: Duration = Duration::from_secs(3);

/// Runs `route`.
pub(crate) async fn dispatch(
    route: &'static Route,
    params: Vec<String>,
    query: Query,
    request: Request<Incoming>,
    shared: Arc<Shared>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    // The route table gives each of these operations exactly one path parameter.
    let param = params.into_iter().next().unwrap_or_default();
    match route.operation {
        Operation::GetBroker => Ok(json_response(StatusCode::OK, &broker_info(&shared))),
        Operation::ListClients => list_clients(&shared, &query).await,
        Operation::GetClient => get_client(&shared, &param).await,
        Operation::DisconnectClient => {
            disconnect_client(&shared, &param, query.flag("discard_session")).await
        }
        Operation::ListSubscriptions => list_subscriptions(&shared, &query),
        Operation::ListRetained => list_retained(&shared, &query),
        Operation::GetRetained => get_retained(&shared, &param),
        Operation::DeleteRetained => delete_retained(&shared, &param),
        Operation::Publish => publish(&shared, request).await,
        Operation::GetCluster => Ok(json_response(StatusCode::OK, &cluster_info(&shared))),
        Operation::OpenApi => Ok(openapi::response()),
    }
}

/// A page of a list, as EMQX gives one.
#[derive(Serialize)]
struct Paged<T> {
    data: Vec<T>,
    meta: Meta,
}

#[derive(Serialize)]
struct Meta {
    page: u64,
    limit: u64,
    /// Items in the whole list.
    count: usize,
    hasnext: bool,
}

/// The page `page` of `items`, converted by `convert` (only the page's items are).
fn paged<I, T>(items: Vec<I>, page: Page, convert: impl FnMut(I) -> T) -> Paged<T> {
    let count = items.len();
    let range = page.range(count);
    let hasnext = range.end < count;
    Paged {
        data: items
            .into_iter()
            .skip(range.start)
            .take(range.len())
            .map(convert)
            .collect(),
        meta: Meta {
            page: page.page,
            limit: page.limit,
            count,
            hasnext,
        },
    }
}

// ---------------------------------------------------------------------------------- broker

#[derive(Serialize)]
struct BrokerInfo {
    version: &'static str,
    /// Seconds since the broker started.
    uptime: u64,
    started_at: String,
    /// `memory` or `disk`.
    storage: &'static str,
    listeners: Vec<ListenerInfo>,
    limits: LimitsInfo,
    counts: Counts,
}

#[derive(Serialize)]
struct ListenerInfo {
    /// `tcp`, `ws`, `tls` or `wss`.
    r#type: &'static str,
    bind: String,
    url: String,
}

/// The limits, named as the config file's keys.
#[derive(Serialize)]
struct LimitsInfo {
    max_connections: usize,
    max_connections_per_ip: usize,
    max_connection_rate_per_ip: u32,
    connect_timeout_secs: f64,
    packet_timeout_secs: f64,
    max_http_header_size: usize,
    max_subscriptions: usize,
    max_topic_levels: usize,
    max_topic_length: usize,
    max_packet_size: u32,
    receive_maximum: u16,
    topic_alias_maximum: u16,
    outgoing_topic_alias_maximum: u16,
    max_in_flight: u16,
    max_queued_messages: usize,
    max_queued_bytes: u64,
    /// `drop_newest` or `drop_oldest`.
    queue_full: &'static str,
    max_session_expiry: u32,
    /// `null`: any keep alive is accepted.
    max_keepalive: Option<u16>,
}

#[derive(Serialize)]
struct Counts {
    /// Open sockets: MQTT, WebSocket and plain HTTP.
    connections: usize,
    clients_connected: usize,
    sessions: usize,
    subscriptions: usize,
    retained: usize,
    queued_messages: u64,
    queued_bytes: u64,
    messages_received: u64,
    messages_sent: u64,
    messages_dropped: u64,
    bytes_received: u64,
    bytes_sent: u64,
}

fn listener_type(kind: ListenerKind) -> &'static str {
    match kind {
        ListenerKind::Tcp => "tcp",
        ListenerKind::WebSocket => "ws",
        ListenerKind::Tls => "tls",
        ListenerKind::WebSocketTls => "wss",
    }
}

/// A listener as `tcp://127.0.0.1:1883` (its log line), `null` for none.
fn listener_url(shared: &Shared, index: u16) -> Option<String> {
    shared
        .listeners
        .get(usize::from(index))
        .map(BoundListener::to_string)
}

fn broker_info(shared: &Shared) -> BrokerInfo {
    let limits = &shared.config.limits;
    let stats = &shared.stats;
    let totals = stats.totals();
    let (queued_messages, queued_bytes) =
        shared
            .registry
            .all()
            .iter()
            .fold((0, 0), |(messages, bytes), session| {
                let (m, b) = session.lock().queue_size();
                (messages + m, bytes + b)
            });
    let uptime = shared.started.elapsed();
    BrokerInfo {
        version: env!("CARGO_PKG_VERSION"),
        uptime: uptime.as_secs(),
        started_at: rfc3339(SystemTime::now() - uptime),
        storage: if shared.store.is_some() {
            "disk"
        } else {
            "memory"
        },
        listeners: shared
            .listeners
            .iter()
            .map(|listener| ListenerInfo {
                r#type: listener_type(listener.kind),
                bind: listener.addr.to_string(),
                url: listener.to_string(),
            })
            .collect(),
        limits: LimitsInfo {
            max_connections: limits.max_connections,
            max_connections_per_ip: limits.max_connections_per_ip,
            max_connection_rate_per_ip: limits.max_connection_rate_per_ip,
            connect_timeout_secs: limits.connect_timeout.as_secs_f64(),
            packet_timeout_secs: limits.packet_timeout.as_secs_f64(),
            max_http_header_size: limits.max_http_header_size,
            max_subscriptions: limits.max_subscriptions,
            max_topic_levels: limits.max_topic_levels,
            max_topic_length: limits.max_topic_length,
            max_packet_size: limits.max_packet_size,
            receive_maximum: limits.receive_maximum,
            topic_alias_maximum: limits.topic_alias_maximum,
            outgoing_topic_alias_maximum: limits.outgoing_topic_alias_maximum,
            max_in_flight: limits.max_in_flight,
            max_queued_messages: limits.max_queued_messages,
            max_queued_bytes: limits.max_queued_bytes,
            queue_full: match limits.queue_full {
                QueueFullPolicy::DropOldest => "drop_oldest",
                _ => "drop_newest",
            },
            max_session_expiry: limits.max_session_expiry,
            max_keepalive: limits.max_keep_alive,
        },
        counts: Counts {
            connections: shared.open_connections.load(Ordering::Relaxed),
            clients_connected: stats.clients_connected.load(Ordering::Relaxed),
            sessions: shared.registry.len(),
            subscriptions: shared.router.subscription_count(),
            retained: shared.router.retained_count(),
            queued_messages,
            queued_bytes,
            messages_received: totals.routed,
            messages_sent: totals.queued,
            messages_dropped: totals.lost(),
            bytes_received: totals.bytes_received,
            bytes_sent: totals.bytes_sent,
        },
    }
}

#[derive(Serialize)]
struct ClusterInfo {
    node_id: Option<String>,
    live_nodes: usize,
    nodes: Vec<ClusterNode>,
}

#[derive(Serialize)]
struct ClusterNode {
    id: String,
    this_node: bool,
    live: bool,
    silent_secs: f64,
    incarnation: String,
    started_at: String,
    beat_at: String,
    address: Option<String>,
    clients: u64,
    messages_received_per_min: f64,
    messages_sent_per_min: f64,
}

fn cluster_info(shared: &Shared) -> ClusterInfo {
    let Some(cluster) = shared.cluster.get() else {
        return ClusterInfo {
            node_id: None,
            live_nodes: 0,
            nodes: Vec::new(),
        };
    };
    let at = |millis: u64| rfc3339(SystemTime::UNIX_EPOCH + Duration::from_millis(millis));
    let nodes: Vec<ClusterNode> = cluster
        .nodes()
        .into_iter()
        .map(|node| ClusterNode {
            this_node: node.this_node,
            live: node.live,
            silent_secs: node.silent_for.as_secs_f64(),
            started_at: at(node.beat.started_at),
            beat_at: at(node.beat.beat_at),
            incarnation: node.beat.incarnation,
            address: node.beat.address,
            clients: node.beat.clients,
            messages_received_per_min: node.beat.messages_received_per_min,
            messages_sent_per_min: node.beat.messages_sent_per_min,
            id: node.id,
        })
        .collect();
    ClusterInfo {
        node_id: Some(cluster.node_id().to_owned()),
        live_nodes: nodes.iter().filter(|node| node.live).count(),
        nodes,
    }
}

// --------------------------------------------------------------------------------- clients

/// A client as listed, with EMQX's names. A session restored from the store that has not
/// connected since the broker started has no connection details (nulls).
#[derive(Serialize)]
struct ClientItem {
    clientid: String,
    username: Option<String>,
    ip_address: Option<String>,
    port: Option<u16>,
    /// The listener it came through, as `tcp://127.0.0.1:1883`.
    listener: Option<String>,
    /// `MQTT`, or `MQIsdp` for MQTT 3.1.
    proto_name: Option<&'static str>,
    /// 3 (MQTT 3.1), 4 (3.1.1) or 5.
    proto_ver: Option<u8>,
    connected: bool,
    connected_at: Option<String>,
    disconnected_at: Option<String>,
    keepalive: Option<u16>,
    clean_start: Option<bool>,
    /// Session Expiry Interval in seconds (4294967295: never).
    expiry_interval: Option<u32>,
    /// When an offline session expires.
    expires_at: Option<String>,
    subscriptions_cnt: usize,
    /// QoS 1 and 2 messages sent and not yet acknowledged; for an offline session, those to
    /// send again when its client returns. `null` when unknown (a connection too busy to
    /// answer in time).
    inflight_cnt: Option<usize>,
    /// Messages waiting for the client.
    mqueue_len: u64,
    /// Topic and payload bytes of those messages.
    mqueue_bytes: u64,
}

#[derive(Serialize)]
struct ClientDetails {
    #[serde(flatten)]
    client: ClientItem,
    subscriptions: Vec<SubscriptionItem>,
}

#[derive(Serialize)]
struct SubscriptionItem {
    clientid: String,
    /// The topic filter (`$share/group/...` for a shared subscription).
    topic: String,
    qos: u8,
    /// No Local, 0 or 1.
    nl: u8,
    /// Retain As Published, 0 or 1.
    rap: u8,
    /// Retain Handling, 0 to 2.
    rh: u8,
    /// The MQTT 5 Subscription Identifier.
    identifier: Option<u32>,
}

/// `at`, an instant of this process, as a wall-clock time.
fn wall_time(at: Instant) -> SystemTime {
    let now = Instant::now();
    let wall = SystemTime::now();
    if at >= now {
        wall + (at - now)
    } else {
        wall - (now - at)
    }
}

/// What the engine has: a connection's, from [`Control::Inspect`]; an offline session's, as
/// saved.
type Inspected = Option<EngineCounts>;

fn client_item(shared: &Shared, snapshot: &SessionSnapshot, inspected: Inspected) -> ClientItem {
    let connection = snapshot.connection.as_ref();
    let connected = snapshot.connected();
    let engine = inspected.or(snapshot.saved);
    let counts = engine.unwrap_or_default();
    ClientItem {
        clientid: snapshot.client_id.to_string(),
        username: connection.and_then(|c| c.user.as_deref().map(str::to_owned)),
        ip_address: connection.map(|c| c.peer.ip().to_canonical().to_string()),
        port: connection.map(|c| c.peer.port()),
        listener: connection.and_then(|c| listener_url(shared, c.listener)),
        proto_name: connection.map(|c| c.version.protocol_name()),
        proto_ver: connection.map(|c| c.version.level()),
        connected,
        connected_at: connection.map(|c| rfc3339(c.connected_at)),
        disconnected_at: connection
            .and_then(|c| c.disconnected_at)
            .filter(|_| !connected)
            .map(rfc3339),
        keepalive: connection.map(|c| c.keep_alive),
        clean_start: connection.map(|c| c.clean_start),
        expiry_interval: snapshot.expiry_interval,
        expires_at: snapshot
            .expires_at
            .filter(|_| !connected)
            .map(|at| rfc3339(wall_time(at))),
        subscriptions_cnt: snapshot.subscription_count,
        inflight_cnt: engine.map(|engine| engine.in_flight),
        mqueue_len: snapshot.queued.0 + counts.queued as u64,
        mqueue_bytes: snapshot.queued.1 + counts.queued_bytes,
    }
}

/// Asks each connected client's connection what its engine holds, all at once, waiting at
/// most [`INSPECT_TIMEOUT`] in all.
async fn inspect(snapshots: &[SessionSnapshot]) -> Vec<Inspected> {
    let deadline = tokio::time::Instant::now() + INSPECT_TIMEOUT;
    let asks = snapshots.iter().map(|snapshot| async move {
        let control = snapshot.control.as_ref()?;
        let (reply, answer) = oneshot::channel();
        control.send(Control::Inspect(reply)).ok()?;
        tokio::time::timeout_at(deadline, answer).await.ok()?.ok()
    });
    futures::future::join_all(asks).await
}

fn client_not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "CLIENTID_NOT_FOUND",
        format!("no client {id:?}"),
    )
}

async fn list_clients(shared: &Shared, query: &Query) -> Result<Response<Full<Bytes>>, ApiError> {
    let prefix = query.text(&["prefix"]);
    let like = query.text(&["like_clientid"]);
    let user = query.text(&["username", "user"]);
    let address = query
        .text(&["ip_address", "address"])
        .map(|text| {
            text.parse::<IpAddr>()
                .map(|ip| ip.to_canonical())
                .map_err(|_| ApiError::bad_request(format!("{text:?} is not an IP address")))
        })
        .transpose()?;
    let state = query.text(&["conn_state"]);
    let sessions = shared.registry.matching(|id| {
        prefix.is_none_or(|prefix| id.starts_with(prefix))
            && like.is_none_or(|like| id.contains(like))
    });
    let mut snapshots: Vec<SessionSnapshot> = sessions
        .iter()
        .map(|session| session.snapshot())
        .filter(|snapshot| {
            let connection = snapshot.connection.as_ref();
            user.is_none_or(|user| connection.and_then(|c| c.user.as_deref()) == Some(user))
                && address
                    .is_none_or(|ip| connection.is_some_and(|c| c.peer.ip().to_canonical() == ip))
                && state.is_none_or(|state| (state == "connected") == snapshot.connected())
        })
        .collect();
    drop(sessions);
    snapshots.sort_by(|a, b| a.client_id.cmp(&b.client_id));
    let page = query.page();
    let range = page.range(snapshots.len());
    let inspected = inspect(&snapshots[range.clone()]).await;
    let mut inspected = inspected.into_iter();
    let body = paged(snapshots, page, |snapshot| {
        client_item(shared, &snapshot, inspected.next().flatten())
    });
    Ok(json_response(StatusCode::OK, &body))
}

fn subscription_item(
    client_id: &str,
    filter: &TopicFilter,
    data: &crate::router::SubscriptionData,
) -> SubscriptionItem {
    SubscriptionItem {
        clientid: client_id.to_owned(),
        topic: filter.as_str().to_owned(),
        qos: data.qos.bits(),
        nl: u8::from(data.no_local),
        rap: u8::from(data.retain_as_published),
        rh: data.retain_handling as u8,
        identifier: data.identifier.map(|id| id.get()),
    }
}

async fn get_client(shared: &Shared, id: &str) -> Result<Response<Full<Bytes>>, ApiError> {
    let session = shared
        .registry
        .get(id)
        .ok_or_else(|| client_not_found(id))?;
    let snapshot = session.snapshot_with_subscriptions();
    drop(session);
    let inspected = inspect(std::slice::from_ref(&snapshot))
        .await
        .into_iter()
        .next()
        .flatten();
    let details = ClientDetails {
        client: client_item(shared, &snapshot, inspected),
        subscriptions: snapshot
            .subscriptions
            .iter()
            .map(|(filter, data)| subscription_item(id, filter, data))
            .collect(),
    };
    Ok(json_response(StatusCode::OK, &details))
}

/// Whether `control`'s connection is still attached to `session`.
fn attached(session: &Session, control: &Arc<ControlBox>) -> bool {
    session
        .lock()
        .attachment
        .as_ref()
        .is_some_and(|attachment| Arc::ptr_eq(&attachment.control, control))
}

async fn disconnect_client(
    shared: &Shared,
    id: &str,
    discard: bool,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let session = shared
        .registry
        .get(id)
        .ok_or_else(|| client_not_found(id))?;
    let control = session
        .lock()
        .attachment
        .as_ref()
        .map(|attachment| attachment.control.clone());
    match control {
        Some(control) if control.send(Control::Disconnect).is_ok() => {
            // The connection detaches as its close is handled, promptly; bounded anyway.
            let deadline = Instant::now() + DETACH_TIMEOUT;
            while attached(&session, &control) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        // Its driver has ended: it is detaching by itself.
        Some(_) => {}
        None if !discard => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "CLIENT_NOT_CONNECTED",
                format!("client {id:?} is not connected; discard_session=true removes its session"),
            ));
        }
        None => {}
    }
    if discard {
        discard_session(shared, &session, id)?;
    }
    Ok(no_content())
}

/// Removes an offline session; a will waiting on its delay is published now, as its session
/// has ended (MQTT-3.1.3-9).
fn discard_session(shared: &Shared, session: &Arc<Session>, id: &str) -> Result<(), ApiError> {
    let mut will_waiter = None;
    let removed = shared.remove_offline_session(session, |inner| {
        will_waiter = inner.will_waiter.take();
        true
    });
    if let Some(waiter) = will_waiter {
        // Gone already if its wait has ended: then the will was settled without us.
        let _ = waiter.send(Control::EndWill { publish: true });
    }
    let still_there = shared
        .registry
        .get(id)
        .is_some_and(|current| Arc::ptr_eq(&current, session));
    if removed || !still_there {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::CONFLICT,
        "CLIENT_RECONNECTED",
        format!("client {id:?} reconnected before its session could be discarded"),
    ))
}

// --------------------------------------------------------------------------- subscriptions

fn list_subscriptions(shared: &Shared, query: &Query) -> Result<Response<Full<Bytes>>, ApiError> {
    let filter = query.text(&["filter", "topic"]);
    let match_topic = query
        .text(&["match_topic"])
        .map(|topic| {
            TopicName::new(topic)
                .map_err(|error| ApiError::bad_request(format!("match_topic {topic:?}: {error}")))
        })
        .transpose()?;
    let mut sessions = match query.text(&["clientid", "client"]) {
        Some(id) => shared.registry.get(id).into_iter().collect(),
        None => shared.registry.all(),
    };
    sessions.sort_by(|a, b| a.client_id.cmp(&b.client_id));
    let mut rows = Vec::new();
    for session in sessions {
        let snapshot = session.snapshot_with_subscriptions();
        for (topic_filter, data) in snapshot.subscriptions {
            let wanted = filter.is_none_or(|filter| topic_filter.as_str() == filter)
                && match_topic
                    .as_ref()
                    .is_none_or(|topic| topic_filter.matches(topic));
            if wanted {
                rows.push((snapshot.client_id.clone(), topic_filter, data));
            }
        }
    }
    let body = paged(rows, query.page(), |(client_id, filter, data)| {
        subscription_item(&client_id, &filter, &data)
    });
    Ok(json_response(StatusCode::OK, &body))
}

// -------------------------------------------------------------------------------- retained

#[derive(Serialize)]
struct RetainedItem {
    topic: String,
    /// The payload as text when it is UTF-8, otherwise in base64.
    payload: String,
    /// `plain` or `base64`.
    payload_encoding: &'static str,
    /// Payload bytes.
    size: usize,
    qos: u8,
    /// When the broker stored it.
    publish_at: String,
    properties: MessageProperties,
}

/// A message's MQTT 5 properties; absent ones are left out.
#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct MessageProperties {
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_format_indicator: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message_expiry_interval: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_topic: Option<String>,
    /// Correlation data that is UTF-8 text.
    #[serde(skip_serializing_if = "Option::is_none")]
    correlation_data: Option<String>,
    /// Correlation data that is not (or, in a request, any), in base64.
    #[serde(skip_serializing_if = "Option::is_none")]
    correlation_data_base64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_properties: Option<UserProperties>,
}

/// User properties: a list of `{"name", "value"}` (in order, names may repeat); a request may
/// also give an object of names to values (EMQX's form).
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum UserProperties {
    List(Vec<NameValue>),
    Map(BTreeMap<String, String>),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct NameValue {
    name: String,
    value: String,
}

fn properties_of(publish: &Publish) -> MessageProperties {
    let properties = &publish.properties;
    let (correlation_data, correlation_data_base64) = match &properties.correlation_data {
        None => (None, None),
        Some(data) => match std::str::from_utf8(data) {
            Ok(text) => (Some(text.to_owned()), None),
            Err(_) => (None, Some(BASE64.encode(data))),
        },
    };
    MessageProperties {
        payload_format_indicator: properties.payload_format_indicator.map(|f| f as u8),
        message_expiry_interval: properties.message_expiry_interval,
        content_type: properties.content_type.as_ref().map(|t| t.to_string()),
        response_topic: properties.response_topic.as_ref().map(|t| t.to_string()),
        correlation_data,
        correlation_data_base64,
        user_properties: (!properties.user_properties.is_empty()).then(|| {
            UserProperties::List(
                properties
                    .user_properties
                    .iter()
                    .map(|p| NameValue {
                        name: p.name.to_string(),
                        value: p.value.to_string(),
                    })
                    .collect(),
            )
        }),
    }
}

fn retained_item(publish: &Publish, stored_at: Instant) -> RetainedItem {
    let (payload, payload_encoding) = match std::str::from_utf8(&publish.payload) {
        Ok(text) => (text.to_owned(), "plain"),
        Err(_) => (BASE64.encode(&publish.payload), "base64"),
    };
    RetainedItem {
        topic: publish
            .topic
            .as_ref()
            .map(|t| t.as_str().to_owned())
            .unwrap_or_default(),
        payload,
        payload_encoding,
        size: publish.payload.len(),
        qos: publish.qos.bits(),
        publish_at: rfc3339(wall_time(stored_at)),
        properties: properties_of(publish),
    }
}

/// Whether a retained message's Message Expiry has passed (it is not delivered then).
fn expired(publish: &Publish, stored_at: Instant) -> bool {
    publish
        .properties
        .message_expiry_interval
        .is_some_and(|interval| stored_at.elapsed().as_secs() >= u64::from(interval))
}

/// The retained messages matching `filter`, unexpired, by topic.
fn retained(shared: &Shared, filter: &TopicFilter) -> Vec<(Publish, Instant)> {
    let mut messages = shared.router.retained_matching(filter);
    messages.retain(|(publish, stored_at)| !expired(publish, *stored_at));
    messages.sort_by(|a, b| {
        let topic = |publish: &Publish| publish.topic.as_ref().map(|t| t.as_str().to_owned());
        topic(&a.0).cmp(&topic(&b.0))
    });
    messages
}

fn list_retained(shared: &Shared, query: &Query) -> Result<Response<Full<Bytes>>, ApiError> {
    let text = query.text(&["filter"]).unwrap_or("#");
    let filter = TopicFilter::new(text)
        .map_err(|error| ApiError::bad_request(format!("filter {text:?}: {error}")))?;
    if filter.is_shared() {
        return Err(ApiError::bad_request(
            "a shared subscription's filter gets no retained messages",
        ));
    }
    let messages = retained(shared, &filter);
    let body = paged(messages, query.page(), |(publish, stored_at)| {
        retained_item(&publish, stored_at)
    });
    Ok(json_response(StatusCode::OK, &body))
}

/// The topic of a retained-message route, validated.
fn topic_param(topic: &str) -> Result<TopicName, ApiError> {
    TopicName::new(topic)
        .map_err(|error| ApiError::bad_request(format!("topic {topic:?}: {error}")))
}

fn topic_not_found(topic: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "TOPIC_NOT_FOUND",
        format!("no retained message on {topic:?}"),
    )
}

fn get_retained(shared: &Shared, topic: &str) -> Result<Response<Full<Bytes>>, ApiError> {
    let name = topic_param(topic)?;
    // A topic name holds no wildcard, so as a filter it matches itself only.
    let filter = TopicFilter::new(name.as_str())
        .map_err(|error| ApiError::bad_request(format!("topic {topic:?}: {error}")))?;
    let (publish, stored_at) = retained(shared, &filter)
        .into_iter()
        .next()
        .ok_or_else(|| topic_not_found(topic))?;
    Ok(json_response(
        StatusCode::OK,
        &retained_item(&publish, stored_at),
    ))
}

fn delete_retained(shared: &Shared, topic: &str) -> Result<Response<Full<Bytes>>, ApiError> {
    let name = topic_param(topic)?;
    if shared.clear_retained(&name) {
        Ok(no_content())
    } else {
        Err(topic_not_found(topic))
    }
}

// --------------------------------------------------------------------------------- publish

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishRequest {
    topic: String,
    #[serde(default)]
    payload: String,
    /// `plain` (default) or `base64`.
    #[serde(default, alias = "encoding")]
    payload_encoding: Option<String>,
    #[serde(default)]
    qos: u8,
    #[serde(default)]
    retain: bool,
    #[serde(default)]
    properties: Option<MessageProperties>,
}

#[derive(Serialize)]
struct PublishResult {
    /// Copies queued for subscribers.
    queued: usize,
    /// Copies dropped (a full queue, or QoS 0 for an offline session).
    dropped: usize,
}

/// The most a request body may hold: twice the maximum packet size, for JSON's escapes and
/// base64; at least 64 KiB.
fn body_limit(shared: &Shared) -> usize {
    (shared.config.limits.max_packet_size as usize)
        .saturating_mul(2)
        .max(64 * 1024)
}

fn too_large(what: &str, limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "PAYLOAD_TOO_LARGE",
        format!("{what} is over the limit of {limit} bytes"),
    )
}

/// Reads a JSON request body of at most `limit` bytes.
async fn json_body(request: Request<Incoming>, limit: usize) -> Result<Bytes, ApiError> {
    let headers = request.headers();
    if let Some(content_type) = headers.get(header::CONTENT_TYPE) {
        let json = content_type.to_str().is_ok_and(|value| {
            value
                .split(';')
                .next()
                .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
        });
        if !json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UNSUPPORTED_MEDIA_TYPE",
                "the body must be application/json",
            ));
        }
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(too_large("the request body", limit));
    }
    match Limited::new(request.into_body(), limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => {
            Err(too_large("the request body", limit))
        }
        Err(error) => Err(ApiError::bad_request(format!(
            "the request body could not be read: {error}"
        ))),
    }
}

fn mqtt_string(what: &str, text: String) -> Result<MqttString, ApiError> {
    MqttString::new(text).map_err(|error| ApiError::bad_request(format!("{what}: {error}")))
}

/// The message a publish request describes.
fn message_of(request: PublishRequest, shared: &Shared) -> Result<Publish, ApiError> {
    let topic = topic_param(&request.topic)?;
    if !shared.config.limits.allows_topic(topic.as_str()) {
        return Err(ApiError::bad_request(format!(
            "topic {:?} is over the broker's limits of levels or length",
            request.topic
        )));
    }
    let payload = match request.payload_encoding.as_deref() {
        None | Some("plain") => Bytes::from(request.payload),
        Some("base64") => {
            Bytes::from(BASE64.decode(request.payload.as_bytes()).map_err(|error| {
                ApiError::bad_request(format!("payload is not base64: {error}"))
            })?)
        }
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "payload_encoding {other:?}: plain or base64"
            )));
        }
    };
    let qos = QoS::from_bits(request.qos)
        .map_err(|_| ApiError::bad_request(format!("qos {}: 0, 1 or 2", request.qos)))?;
    let mut publish = Publish::new(topic, payload);
    publish.qos = qos;
    publish.retain = request.retain;
    let limit = shared.config.limits.max_packet_size as usize;
    if topic_and_payload(&publish) > limit {
        return Err(too_large("the message's topic and payload", limit));
    }
    if let Some(properties) = request.properties {
        publish.properties = publish_properties(properties, &publish.payload)?.into();
    }
    Ok(publish)
}

fn topic_and_payload(publish: &Publish) -> usize {
    publish.topic.as_ref().map_or(0, |t| t.len()) + publish.payload.len()
}

fn publish_properties(
    given: MessageProperties,
    payload: &[u8],
) -> Result<PublishProperties, ApiError> {
    let payload_format_indicator = match given.payload_format_indicator {
        None => None,
        Some(0) => Some(PayloadFormat::Bytes),
        Some(1) => {
            // MQTT-3.3.2-4: a payload said to be UTF-8 must be.
            if std::str::from_utf8(payload).is_err() {
                return Err(ApiError::bad_request(
                    "payload_format_indicator is 1 but the payload is not UTF-8",
                ));
            }
            Some(PayloadFormat::Utf8)
        }
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "payload_format_indicator {other}: 0 or 1"
            )));
        }
    };
    let correlation_data = match (given.correlation_data, given.correlation_data_base64) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "correlation_data and correlation_data_base64 are both given",
            ));
        }
        (Some(text), None) => Some(Bytes::from(text)),
        (None, Some(base64)) => Some(Bytes::from(BASE64.decode(base64.as_bytes()).map_err(
            |error| ApiError::bad_request(format!("correlation_data_base64: {error}")),
        )?)),
        (None, None) => None,
    };
    let response_topic = given
        .response_topic
        .map(|topic| {
            TopicName::new(&topic)
                .map_err(|error| ApiError::bad_request(format!("response_topic: {error}")))
        })
        .transpose()?;
    let pairs: Vec<(String, String)> = match given.user_properties {
        None => Vec::new(),
        Some(UserProperties::List(list)) => list.into_iter().map(|p| (p.name, p.value)).collect(),
        Some(UserProperties::Map(map)) => map.into_iter().collect(),
    };
    let user_properties = pairs
        .into_iter()
        .map(|(name, value)| {
            Ok(UserProperty {
                name: mqtt_string("a user property's name", name)?,
                value: mqtt_string("a user property's value", value)?,
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    Ok(PublishProperties {
        payload_format_indicator,
        message_expiry_interval: given.message_expiry_interval,
        content_type: given
            .content_type
            .map(|text| mqtt_string("content_type", text))
            .transpose()?,
        response_topic,
        correlation_data,
        user_properties,
        ..PublishProperties::default()
    })
}

async fn publish(
    shared: &Shared,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let body = json_body(request, body_limit(shared)).await?;
    let request: PublishRequest = serde_json::from_slice(&body)
        .map_err(|error| ApiError::bad_request(format!("the body: {error}")))?;
    let publish = message_of(request, shared)?;
    let outcome = shared.publish(None, &publish);
    let unavailable = |error: &dyn std::fmt::Display| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "STORE_FAILED",
            format!("the message could not be stored: {error}"),
        )
    };
    shared
        .durable(outcome.ticket)
        .await
        .map_err(|error| unavailable(&error))?;
    if let Some(stream) = outcome.stream {
        stream.stored().await.map_err(|error| unavailable(&error))?;
    }
    Ok(json_response(
        StatusCode::OK,
        &PublishResult {
            queued: outcome.queued,
            dropped: outcome.dropped,
        },
    ))
}

//! Listeners: MQTT over TCP, and HTTP with MQTT over WebSockets (hyper for HTTP/1.1; after
//! the upgrade, `rallymq-websocket` validates the handshake and carries the MQTT byte stream).

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use flate2::Compression;
use flate2::write::GzEncoder;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use rallymq_websocket::tokio::WebSocketStream;
use rallymq_websocket::{
    Config as WsConfig, Connection as WsConnection, Rejection, UpgradeRequest,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::server::TlsStream;
use tracing::{debug, warn};

use crate::admission::{IpSlot, Refusal};
use crate::broker::Shared;
use crate::connection::{self, Peer};
use crate::stats::SocketRefusal;
use crate::tls::Tls;
use crate::{Listener, admin};

/// How long the listener waits before accepting again when the process has no file descriptor
/// left.
const DESCRIPTOR_BACKOFF: Duration = Duration::from_millis(100);

/// WebSocket subprotocols accepted for MQTT, in order of preference.
pub(crate) const MQTT_SUBPROTOCOLS: [&str; 6] = [
    "mqtt",
    "mqttv5",
    "mqttv5.0",
    "mqttv3.1",
    "mqtt-v3.1.1",
    "mqttv3.1.1",
];

/// A file served from the binary. The files under `static/` are symbolic links to `web/` at the
/// workspace root, the one source (`cargo package` stores their contents in the crate);
/// `tests/static_files.rs` checks that every served file of `web/` has one.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($path:literal, $file:literal, $content_type:expr) => {
        Asset {
            path: $path,
            content_type: $content_type,
            body: include_bytes!(concat!("../static/", $file)),
        }
    };
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// Every static file, by URL path. A directory's `index.html` is served at `dir/`.
static ASSETS: &[Asset] = &[
    asset!("/", "index.html", HTML),
    asset!("/rallymq.js", "rallymq.js", JS),
    asset!("/tennis/", "tennis/index.html", HTML),
    asset!("/tennis/tennis.js", "tennis/tennis.js", JS),
    asset!("/tennis/tennis.css", "tennis/tennis.css", CSS),
    asset!("/dashboard/", "dashboard/index.html", HTML),
    asset!("/dashboard/dashboard.js", "dashboard/dashboard.js", JS),
    asset!("/dashboard/dashboard.css", "dashboard/dashboard.css", CSS),
    asset!("/dashboard/api.js", "dashboard/api.js", JS),
    asset!("/dashboard/format.js", "dashboard/format.js", JS),
    asset!("/dashboard/tables.js", "dashboard/tables.js", JS),
    asset!("/dashboard/topics.js", "dashboard/topics.js", JS),
];

/// The gzip encoding of each asset, compressed once, on first use.
fn gzipped(index: usize) -> Option<&'static Bytes> {
    static GZIPPED: OnceLock<Vec<Bytes>> = OnceLock::new();
    GZIPPED
        .get_or_init(|| {
            ASSETS
                .iter()
                .map(|asset| {
                    let mut encoder = GzEncoder::new(Vec::new(), Compression::best());
                    // Writing into a Vec cannot fail.
                    let _ = encoder.write_all(asset.body);
                    Bytes::from(encoder.finish().unwrap_or_default())
                })
                .collect()
        })
        .get(index)
        .filter(|gzip| !gzip.is_empty())
}

/// The items an `Accept` or `Accept-Encoding` header value lists without refusing them (a q
/// of 0), parameters left off.
pub(crate) fn accepted(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').filter_map(|item| {
        let mut parts = item.split(';').map(str::trim);
        let accepted = parts.next().unwrap_or_default();
        let refused = parts.any(|param| {
            param
                .strip_prefix("q=")
                .and_then(|q| q.trim().parse::<f32>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        (!refused).then_some(accepted)
    })
}

/// Whether an `Accept-Encoding` header value accepts gzip (`gzip` or `*`, with a non-zero q).
fn accepts_gzip(accept_encoding: &str) -> bool {
    accepted(accept_encoding).any(|coding| coding.eq_ignore_ascii_case("gzip") || coding == "*")
}

/// For a read-only resource (the static files, `/metrics`): `None` for GET and HEAD; 405 with
/// the `Allow` header RFC 9110 §15.5.6 requires for the other methods, 501 for methods RFC
/// 9110 does not define (§9.1).
pub(crate) fn refuse_unless_get_or_head(method: &Method) -> Option<Response<Full<Bytes>>> {
    if method != Method::GET && method != Method::HEAD {
        let known = [
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::CONNECT,
            Method::OPTIONS,
            Method::TRACE,
            Method::PATCH,
        ];
        if !known.contains(method) {
            return Some(response(
                StatusCode::NOT_IMPLEMENTED,
                "text/plain; charset=utf-8",
                "not implemented\n",
            ));
        }
        let mut refused = response(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "method not allowed\n",
        );
        refused
            .headers_mut()
            .insert(header::ALLOW, http::HeaderValue::from_static("GET, HEAD"));
        return Some(refused);
    }
    None
}

/// Serves a static file (GET and HEAD), a redirect from `/dir` to `/dir/`, or 404. Other
/// methods get 405 with the `Allow` header RFC 9110 §15.5.6 requires, whatever the path (the
/// files are read-only); methods RFC 9110 does not define get 501 (§9.1).
fn serve_static(request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if let Some(refused) = refuse_unless_get_or_head(request.method()) {
        return refused;
    }
    let path = request.uri().path();
    // `dir/index.html` is `dir/`.
    let path = path
        .strip_suffix("index.html")
        .filter(|dir| dir.ends_with('/'))
        .unwrap_or(path);
    let Some(index) = ASSETS.iter().position(|asset| asset.path == path) else {
        let with_slash = format!("{path}/");
        if ASSETS.iter().any(|asset| asset.path == with_slash) {
            return Response::builder()
                .status(StatusCode::MOVED_PERMANENTLY)
                .header(header::LOCATION, with_slash)
                .body(Full::new(Bytes::new()))
                .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())));
        }
        return response(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found\n",
        );
    };
    let head = request.method() == Method::HEAD;
    let asset = &ASSETS[index];
    let gzip = request
        .headers()
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(accepts_gzip)
        .then(|| gzipped(index))
        .flatten();
    let body = gzip
        .cloned()
        .unwrap_or_else(|| Bytes::from_static(asset.body));
    let mut builder = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, asset.content_type)
        .header(header::CONTENT_LENGTH, body.len())
        .header(header::VARY, "accept-encoding")
        .header(header::CACHE_CONTROL, "no-cache");
    if gzip.is_some() {
        builder = builder.header(header::CONTENT_ENCODING, "gzip");
    }
    let body = if head { Bytes::new() } else { body };
    builder
        .body(Full::new(body))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

/// An admitted socket: its place in its address's count (when limits per address are set)
/// goes with it, and is given back when the connection ends.
type Admitted = (TcpStream, SocketAddr, Option<Arc<IpSlot>>);

/// Accepts a socket if the connection limits allow (in all, and per client address); counts it
/// open.
fn admit(shared: &Shared, stream: &TcpStream, peer: SocketAddr) -> Option<Option<Arc<IpSlot>>> {
    let limits = &shared.config.limits;
    let slot = match shared.per_ip.admit(peer.ip(), limits, Instant::now()) {
        Ok(slot) => slot,
        Err(refusal) => {
            shared.stats.socket_refused(match refusal {
                Refusal::TooManyOpen => SocketRefusal::PerAddress,
                Refusal::TooFast => SocketRefusal::Rate,
            });
            // Debug, not warn: a flood would flood the log too.
            debug!(%peer, ?refusal, "connection refused: limit per client address");
            return None;
        }
    };
    let open = shared.open_connections.fetch_add(1, Ordering::Relaxed);
    if open >= limits.max_connections {
        shared.open_connections.fetch_sub(1, Ordering::Relaxed);
        shared.stats.socket_refused(SocketRefusal::MaxConnections);
        warn!(%peer, "connection refused: max_connections reached");
        return None;
    }
    // Small MQTT packets must not wait for Nagle's algorithm.
    let _ = stream.set_nodelay(true);
    Some(slot)
}

/// The next connection the limits admit, or `None` once the broker shuts down.
async fn next_connection(
    listener: &TcpListener,
    shared: &Shared,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<Admitted> {
    // One warning per episode: until a connection is accepted again.
    let mut out_of_descriptors = false;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => return None,
        };
        match accepted {
            Ok((stream, peer)) => {
                if let Some(slot) = admit(shared, &stream, peer) {
                    return Some((stream, peer, slot));
                }
            }
            // EMFILE or ENFILE: the socket stays in the backlog and the next accept fails at
            // once, so retrying at once would spin a core and serve no one. Back off until a
            // descriptor is free.
            Err(error) if matches!(error.raw_os_error(), Some(23 | 24)) => {
                if !out_of_descriptors {
                    warn!(%error, "out of file descriptors: accepting again every {DESCRIPTOR_BACKOFF:?}");
                    out_of_descriptors = true;
                }
                tokio::select! {
                    _ = tokio::time::sleep(DESCRIPTOR_BACKOFF) => {}
                    _ = shutdown.changed() => return None,
                }
            }
            Err(error) => debug!(%error, "accept failed"),
        }
    }
}

/// What a listener's connections need of its configuration.
#[derive(Debug)]
pub(crate) struct ListenerContext {
    pub(crate) listener: Listener,
    /// The TLS configuration in force, for the TLS kinds.
    pub(crate) tls: Option<Arc<Tls>>,
    /// Its place among the broker's listeners (see [`Peer::listener`]).
    pub(crate) index: u16,
    /// Its security policy: an index into `Shared::policies`.
    pub(crate) policy: u8,
}

impl ListenerContext {
    /// Completes the TLS handshake of a TLS listener's socket within the CONNECT timeout;
    /// `None` (logged) if it fails or takes too long.
    async fn handshake(
        &self,
        stream: TcpStream,
        shared: &Shared,
        peer: SocketAddr,
    ) -> Option<(TlsStream<TcpStream>, Option<Arc<str>>)> {
        let tls = self.tls.as_ref()?;
        let acceptor = tls.acceptor(self.listener.client_certificates);
        let accepted = tokio::time::timeout(
            shared.config.limits.connect_timeout,
            acceptor.accept(stream),
        )
        .await;
        match accepted {
            Ok(Ok(stream)) => {
                let user = tls.certificate_user(stream.get_ref().1).map(Arc::from);
                Some((stream, user))
            }
            Ok(Err(error)) => {
                debug!(%peer, %error, "TLS handshake failed");
                None
            }
            Err(_) => {
                debug!(%peer, "TLS handshake timed out");
                None
            }
        }
    }
}

/// Serves MQTT over TCP, or over TLS.
pub(crate) async fn serve_mqtt(
    listener: TcpListener,
    shared: Arc<Shared>,
    context: Arc<ListenerContext>,
) {
    let mut shutdown = shared.shutdown.clone();
    while let Some((stream, addr, slot)) = next_connection(&listener, &shared, &mut shutdown).await
    {
        let peer = Peer {
            addr,
            via: Some(context.listener.kind),
            listener: context.index,
            policy: context.policy,
        };
        if !context.listener.kind.is_tls() && slot.is_none() {
            // The common case spawns the connection itself: nothing else in its task.
            tokio::spawn(connection::serve(stream, shared.clone(), peer, None));
            continue;
        }
        let (shared, context) = (shared.clone(), context.clone());
        tokio::spawn(async move {
            let _slot = slot;
            if !context.listener.kind.is_tls() {
                connection::serve(stream, shared, peer, None).await;
                return;
            }
            match context.handshake(stream, &shared, addr).await {
                Some((stream, user)) => connection::serve(stream, shared, peer, user).await,
                None => {
                    shared.open_connections.fetch_sub(1, Ordering::Relaxed);
                }
            }
        });
    }
}

/// Serves HTTP and MQTT over WebSockets, over TCP or TLS.
pub(crate) async fn serve_websocket(
    listener: TcpListener,
    shared: Arc<Shared>,
    context: Arc<ListenerContext>,
) {
    let mut shutdown = shared.shutdown.clone();
    while let Some((stream, peer, slot)) = next_connection(&listener, &shared, &mut shutdown).await
    {
        let (shared, context) = (shared.clone(), context.clone());
        tokio::spawn(async move {
            if context.listener.kind.is_tls() {
                match context.handshake(stream, &shared, peer).await {
                    Some((stream, user)) => {
                        serve_http(stream, shared, context, peer, user, slot).await;
                    }
                    None => {
                        shared.open_connections.fetch_sub(1, Ordering::Relaxed);
                    }
                }
            } else {
                serve_http(stream, shared, context, peer, None, slot).await;
            }
        });
    }
}

/// One HTTP connection, until it ends or is upgraded to MQTT over WebSockets.
async fn serve_http<IO>(
    stream: IO,
    shared: Arc<Shared>,
    context: Arc<ListenerContext>,
    peer: SocketAddr,
    certificate_user: Option<Arc<str>>,
    slot: Option<Arc<IpSlot>>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service_shared = shared.clone();
    let service = service_fn(move |request| {
        let shared = service_shared.clone();
        let context = context.clone();
        let user = certificate_user.clone();
        let slot = slot.clone();
        async move {
            let response = handle_http(request, shared, &context, peer, user, slot).await;
            Ok::<_, Infallible>(response)
        }
    });
    // A socket that sends no complete request in time (nothing, half a request line, a
    // handshake trickled a byte at a time, an idle keep-alive) is closed, as an MQTT
    // connection that sends no CONNECT is: otherwise such sockets hold connection slots
    // (and file descriptors) for ever.
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(shared.config.limits.connect_timeout)
        .max_header_size(shared.config.limits.max_http_header_size)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(connection);
    // On shutdown, an idle keep-alive connection (a browser's) closes at once instead of
    // holding the shutdown for its whole grace period; a request in progress ends.
    let mut shutdown = shared.shutdown.clone();
    let served = tokio::select! {
        served = connection.as_mut() => served,
        _ = shutdown.changed() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = served {
        debug!(%peer, %error, "HTTP connection ended with an error");
    }
    // The upgraded MQTT connection counts itself; this socket's HTTP life is over.
    shared.open_connections.fetch_sub(1, Ordering::Relaxed);
}

pub(crate) fn response(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(body.into()))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

fn rejection(rejection: Rejection) -> Response<Full<Bytes>> {
    rejection.to_http_response().map(Full::new)
}

/// Whether the request's `Origin` (a browser's page) is allowed on this listener: any when
/// the allow-list is empty; a request without the header (not from a browser) always.
fn origin_allowed(request: &Request<Incoming>, allowed: &[String]) -> bool {
    if allowed.is_empty() {
        return true;
    }
    match request.headers().get(header::ORIGIN) {
        None => true,
        Some(origin) => origin.to_str().is_ok_and(|origin| {
            allowed
                .iter()
                .any(|allowed| allowed.eq_ignore_ascii_case(origin))
        }),
    }
}

async fn handle_http(
    mut request: Request<Incoming>,
    shared: Arc<Shared>,
    context: &ListenerContext,
    peer: SocketAddr,
    certificate_user: Option<Arc<str>>,
    slot: Option<Arc<IpSlot>>,
) -> Response<Full<Bytes>> {
    // RFC 9112 §3.2: 400 for an HTTP/1.1 request without Host, and for any with more than one.
    let hosts = request.headers().get_all(header::HOST).iter().count();
    if hosts > 1 || (hosts == 0 && request.version() == http::Version::HTTP_11) {
        return rejection(Rejection::bad_request().with_body("exactly one Host header is needed"));
    }
    let path = request.uri().path().to_owned();
    let wants_upgrade = request.headers().contains_key(header::UPGRADE);
    if wants_upgrade && !origin_allowed(&request, &context.listener.allowed_origins) {
        return response(
            StatusCode::FORBIDDEN,
            "text/plain; charset=utf-8",
            "origin not allowed\n",
        );
    }
    if wants_upgrade && shared.config.ws_paths.contains(&path) {
        let upgrade = match UpgradeRequest::from_http(&request) {
            Ok(upgrade) => upgrade,
            Err(error) => return rejection(Rejection::for_error(&error)),
        };
        // Our order of preference decides, not the client's: a client offering "mqtt" among
        // others gets "mqtt" (MQTT-6.0.0-4, in 3.1.1 and 5.0).
        let picked = MQTT_SUBPROTOCOLS
            .iter()
            .find_map(|name| upgrade.pick_subprotocol(&[name]));
        let Some(subprotocol) = picked else {
            return rejection(
                Rejection::bad_request().with_body("the WebSocket subprotocol must be mqtt"),
            );
        };
        let accept = match upgrade.accept(Some(subprotocol)) {
            Ok(accept) => accept,
            Err(error) => return rejection(Rejection::for_error(&error)),
        };
        let on_upgrade = hyper::upgrade::on(&mut request);
        let via = Some(context.listener.kind);
        let listener = context.index;
        // The upgraded connection is counted like a TCP one.
        shared.open_connections.fetch_add(1, Ordering::Relaxed);
        let policy = context.policy;
        tokio::spawn(async move {
            // The address's count holds while the MQTT connection lives.
            let _slot = slot;
            match on_upgrade.await {
                Ok(upgraded) => {
                    let connection =
                        WsConnection::server(WsConfig::default().with_stream_binary(true));
                    let stream =
                        WebSocketStream::new(TokioIo::new(upgraded), connection).into_byte_stream();
                    let peer = Peer {
                        addr: peer,
                        via,
                        listener,
                        policy,
                    };
                    connection::serve(stream, shared, peer, certificate_user).await;
                }
                Err(error) => {
                    debug!(%peer, %error, "WebSocket upgrade failed");
                    shared.open_connections.fetch_sub(1, Ordering::Relaxed);
                }
            }
        });
        return accept.to_http_response().map(|()| Full::new(Bytes::new()));
    }
    if wants_upgrade {
        return rejection(Rejection::not_found());
    }
    if path == crate::metrics::PATH && shared.config.metrics {
        return crate::metrics::respond(&request, &shared);
    }
    if admin::serves(&path) {
        return admin::handle(request, shared, peer, context.policy).await;
    }
    serve_static(&request)
}

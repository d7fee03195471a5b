//! Listeners: MQTT over TCP, and HTTP with MQTT over WebSockets (hyper for HTTP/1.1; after
//! the upgrade, `rallymq-websocket` validates the handshake and carries the MQTT byte stream).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rallymq_websocket::tokio::WebSocketStream;
use rallymq_websocket::{
    Config as WsConfig, Connection as WsConnection, Rejection, UpgradeRequest,
};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use crate::broker::Shared;
use crate::connection;

/// WebSocket subprotocols accepted for MQTT, in order of preference.
pub(crate) const MQTT_SUBPROTOCOLS: [&str; 6] = [
    "mqtt",
    "mqttv5",
    "mqttv5.0",
    "mqttv3.1",
    "mqtt-v3.1.1",
    "mqttv3.1.1",
];

const INDEX_HTML: &str = include_str!("../static/index.html");
const CLIENT_JS: &str = include_str!("../static/rallymq.js");

/// Accepts a socket if the connection limit allows; counts it open.
fn admit(shared: &Shared, stream: &TcpStream) -> bool {
    let open = shared.open_connections.fetch_add(1, Ordering::Relaxed);
    if open >= shared.config.limits.max_connections {
        shared.open_connections.fetch_sub(1, Ordering::Relaxed);
        warn!(peer = ?stream.peer_addr().ok(), "connection refused: max_connections reached");
        return false;
    }
    // Small MQTT packets must not wait for Nagle's algorithm.
    let _ = stream.set_nodelay(true);
    true
}

pub(crate) async fn serve_tcp(listener: TcpListener, shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                debug!(%error, "accept failed");
                continue;
            }
        };
        if !admit(&shared, &stream) {
            continue;
        }
        tokio::spawn(connection::serve(stream, shared.clone(), peer.to_string()));
    }
}

pub(crate) async fn serve_websocket(listener: TcpListener, shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                debug!(%error, "accept failed");
                continue;
            }
        };
        if !admit(&shared, &stream) {
            continue;
        }
        let shared = shared.clone();
        tokio::spawn(async move {
            let service_shared = shared.clone();
            let service = service_fn(move |request| {
                let shared = service_shared.clone();
                async move { Ok::<_, Infallible>(handle_http(request, shared, peer.to_string())) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::pin!(connection);
            // On shutdown, an idle keep-alive connection (a browser's) closes at once instead
            // of holding the shutdown for its whole grace period; a request in progress ends.
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
        });
    }
}

fn response(
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

fn handle_http(
    mut request: Request<Incoming>,
    shared: Arc<Shared>,
    peer: String,
) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_owned();
    let wants_upgrade = request.headers().contains_key(header::UPGRADE);
    if wants_upgrade && shared.config.ws_paths.contains(&path) {
        let upgrade = match UpgradeRequest::from_http(&request) {
            Ok(upgrade) => upgrade,
            Err(error) => return rejection(Rejection::for_error(&error)),
        };
        let Some(subprotocol) = upgrade.pick_subprotocol(&MQTT_SUBPROTOCOLS) else {
            return rejection(
                Rejection::bad_request().with_body("the WebSocket subprotocol must be mqtt"),
            );
        };
        let accept = match upgrade.accept(Some(subprotocol)) {
            Ok(accept) => accept,
            Err(error) => return rejection(Rejection::for_error(&error)),
        };
        let on_upgrade = hyper::upgrade::on(&mut request);
        // The upgraded connection is counted like a TCP one.
        shared.open_connections.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => {
                    let connection =
                        WsConnection::server(WsConfig::default().with_stream_binary(true));
                    let stream =
                        WebSocketStream::new(TokioIo::new(upgraded), connection).into_byte_stream();
                    connection::serve(stream, shared, format!("ws:{peer}")).await;
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
    match path.as_str() {
        "/" | "/index.html" => response(StatusCode::OK, "text/html; charset=utf-8", INDEX_HTML),
        "/rallymq.js" => response(StatusCode::OK, "text/javascript; charset=utf-8", CLIENT_JS),
        _ => response(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found\n",
        ),
    }
}

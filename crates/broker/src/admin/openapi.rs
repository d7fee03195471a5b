//! The OpenAPI 3.1 description at `/api/v1/openapi.json`: paths, parameters and responses
//! from the route table, schemas written here (the integration tests check every response
//! against them).

use std::sync::OnceLock;

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::Full;
use serde_json::{Map, Value, json};

use super::routes::{Kind, Param, ROUTES, Route};

/// The document, served as is.
pub(crate) fn response() -> Response<Full<Bytes>> {
    static BODY: OnceLock<Bytes> = OnceLock::new();
    let body = BODY.get_or_init(|| {
        // A `Value` of our own serialises without fail.
        Bytes::from(serde_json::to_vec_pretty(&document()).unwrap_or_default())
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Full::new(body.clone()))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

/// The whole document.
pub(crate) fn document() -> Value {
    let mut paths = Map::new();
    for route in ROUTES {
        let operations = paths
            .entry(route.path)
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(operations) = operations {
            operations.insert(route.method.as_str().to_ascii_lowercase(), operation(route));
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "rallymq admin API",
            "version": "1",
            "description": "JSON over the broker's HTTP (ws and wss) listeners. Requests from \
                loopback addresses need no credentials (by default, --admin-open-to); from \
                elsewhere, HTTP Basic with a user of the listener's password file (or a token as \
                the password), or a bearer JSON Web Token its JWT key verifies, of a user listed \
                with --admin-user or whose `role` claim holds \"admin\": 401 without valid \
                credentials, 403 with someone else's. Errors are {\"code\", \"message\"}; a method a path does not \
                have gets 405 with Allow; an unknown query parameter gets 400.",
            "license": {"name": "MIT OR Apache-2.0", "identifier": "MIT OR Apache-2.0"}
        },
        "paths": paths,
        "components": {
            "schemas": schemas(),
            "securitySchemes": {
                "basic": {"type": "http", "scheme": "basic"},
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            }
        }
    })
}

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn param_schema(kind: Kind) -> Value {
    match kind {
        Kind::String => json!({"type": "string"}),
        Kind::Integer { min, max } => json!({"type": "integer", "minimum": min, "maximum": max}),
        Kind::Boolean => json!({"type": "boolean"}),
        Kind::Enum(values) => json!({"type": "string", "enum": values}),
    }
}

fn parameter(param: &Param, place: &str) -> Value {
    json!({
        "name": param.name,
        "in": place,
        "required": place == "path",
        "description": param.description,
        "schema": param_schema(param.kind),
    })
}

fn error_response(status: StatusCode) -> Value {
    json!({
        "description": status.canonical_reason().unwrap_or("error"),
        "content": {"application/json": {"schema": schema_ref("Error")}}
    })
}

fn operation(route: &Route) -> Value {
    let mut parameters: Vec<Value> = route
        .path_params
        .iter()
        .map(|param| parameter(param, "path"))
        .collect();
    parameters.extend(route.query.iter().map(|param| parameter(param, "query")));
    let mut responses = Map::new();
    let (status, schema) = route.ok;
    let ok = match (status, schema) {
        (StatusCode::NO_CONTENT, _) => json!({"description": "Done"}),
        (_, Some(name)) => json!({
            "description": "OK",
            "content": {"application/json": {"schema": schema_ref(name)}}
        }),
        (_, None) => json!({
            "description": "OK",
            "content": {"application/json": {"schema": {"type": "object"}}}
        }),
    };
    responses.insert(status.as_str().to_owned(), ok);
    let mut errors = route.errors.to_vec();
    if !route.open {
        errors.extend([StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN]);
    }
    for status in errors {
        responses.insert(status.as_str().to_owned(), error_response(status));
    }
    let mut operation = json!({
        "operationId": route.id,
        "tags": [route.tag],
        "summary": route.summary,
        "parameters": parameters,
        "responses": responses,
        // `{}`: no credentials, from a trusted address.
        "security": if route.open { json!([]) } else { json!([{}, {"basic": []}, {"bearer": []}]) },
    });
    if !route.description.is_empty() {
        operation["description"] = json!(route.description);
    }
    if let Some(body) = route.body {
        operation["requestBody"] = json!({
            "required": true,
            "content": {"application/json": {"schema": schema_ref(body)}}
        });
    }
    operation
}

/// An object schema whose listed properties are all required (the API always sends each,
/// `null` where there is none).
fn object(properties: Value) -> Value {
    let required: Vec<String> = properties
        .as_object()
        .map(|properties| properties.keys().cloned().collect())
        .unwrap_or_default();
    json!({"type": "object", "properties": properties, "required": required})
}

fn nullable(kind: &str) -> Value {
    json!({"type": [kind, "null"]})
}

fn page_of(item: &str) -> Value {
    object(json!({
        "data": {"type": "array", "items": schema_ref(item)},
        "meta": schema_ref("Meta"),
    }))
}

fn client_properties() -> Value {
    json!({
        "clientid": {"type": "string"},
        "username": nullable("string"),
        "ip_address": nullable("string"),
        "port": nullable("integer"),
        "listener": {"type": ["string", "null"], "description": "As the broker logs it: tcp://127.0.0.1:1883, ws://.../mqtt"},
        "proto_name": {"type": ["string", "null"], "enum": ["MQTT", "MQIsdp", null]},
        "proto_ver": {"type": ["integer", "null"], "enum": [3, 4, 5, null]},
        "connected": {"type": "boolean"},
        "connected_at": {"type": ["string", "null"], "format": "date-time"},
        "disconnected_at": {"type": ["string", "null"], "format": "date-time"},
        "keepalive": nullable("integer"),
        "clean_start": nullable("boolean"),
        "expiry_interval": {"type": ["integer", "null"], "description": "Session Expiry Interval, seconds; 4294967295 never expires"},
        "expires_at": {"type": ["string", "null"], "format": "date-time", "description": "When an offline session expires"},
        "subscriptions_cnt": {"type": "integer"},
        "inflight_cnt": {"type": ["integer", "null"], "description": "QoS 1 and 2 deliveries awaiting acknowledgement; for an offline session, those to resend when it returns; null when unknown"},
        "mqueue_len": {"type": "integer", "description": "Messages waiting for the client"},
        "mqueue_bytes": {"type": "integer", "description": "Topic and payload bytes of those"},
    })
}

fn schemas() -> Value {
    let mut details = client_properties();
    details["subscriptions"] = json!({"type": "array", "items": schema_ref("Subscription")});
    let mut message_properties = object(json!({
        "payload_format_indicator": {"type": "integer", "enum": [0, 1]},
        "message_expiry_interval": {"type": "integer", "minimum": 0, "maximum": u32::MAX},
        "content_type": {"type": "string"},
        "response_topic": {"type": "string"},
        "correlation_data": {"type": "string", "description": "Correlation data that is UTF-8 text"},
        "correlation_data_base64": {"type": "string", "description": "Correlation data in base64 (in answers: when it is not UTF-8)"},
        "user_properties": {
            "description": "In order, names may repeat; a request may also give an object of names to values",
            "oneOf": [
                {"type": "array", "items": object(json!({"name": {"type": "string"}, "value": {"type": "string"}}))},
                {"type": "object", "additionalProperties": {"type": "string"}}
            ]
        },
    }));
    // Each is present only when the message has it.
    message_properties["required"] = json!([]);
    message_properties["additionalProperties"] = json!(false);
    let integer = json!({"type": "integer", "minimum": 0});
    let mut limits = Map::new();
    for name in [
        "max_connections",
        "max_connections_per_ip",
        "max_connection_rate_per_ip",
        "max_http_header_size",
        "max_subscriptions",
        "max_topic_levels",
        "max_topic_length",
        "max_packet_size",
        "receive_maximum",
        "topic_alias_maximum",
        "outgoing_topic_alias_maximum",
        "max_in_flight",
        "max_queued_messages",
        "max_queued_bytes",
        "max_session_expiry",
    ] {
        limits.insert(name.to_owned(), integer.clone());
    }
    limits.insert("connect_timeout_secs".into(), json!({"type": "number"}));
    limits.insert("packet_timeout_secs".into(), json!({"type": "number"}));
    limits.insert(
        "queue_full".into(),
        json!({"type": "string", "enum": ["drop_newest", "drop_oldest"]}),
    );
    limits.insert(
        "max_keepalive".into(),
        json!({"type": ["integer", "null"], "description": "null: any keep alive is accepted"}),
    );
    let mut counts = Map::new();
    for name in [
        "connections",
        "clients_connected",
        "sessions",
        "subscriptions",
        "retained",
        "queued_messages",
        "queued_bytes",
        "messages_received",
        "messages_sent",
        "messages_dropped",
        "bytes_received",
        "bytes_sent",
    ] {
        counts.insert(name.to_owned(), integer.clone());
    }
    let mut publish_request = object(json!({
        "topic": {"type": "string"},
        "payload": {"type": "string", "default": ""},
        "payload_encoding": {"type": "string", "enum": ["plain", "base64"], "default": "plain", "description": "`encoding` is accepted too"},
        "qos": {"type": "integer", "enum": [0, 1, 2], "default": 0},
        "retain": {"type": "boolean", "default": false},
        "properties": schema_ref("MessageProperties"),
    }));
    publish_request["required"] = json!(["topic"]);
    json!({
        "Error": object(json!({
            "code": {"type": "string", "description": "BAD_REQUEST, NOT_FOUND, CLIENTID_NOT_FOUND, TOPIC_NOT_FOUND, METHOD_NOT_ALLOWED, CLIENT_NOT_CONNECTED, CLIENT_RECONNECTED, PAYLOAD_TOO_LARGE, UNSUPPORTED_MEDIA_TYPE, UNAUTHORIZED, FORBIDDEN, STORE_FAILED"},
            "message": {"type": "string"},
        })),
        "Meta": object(json!({
            "page": {"type": "integer", "minimum": 1},
            "limit": {"type": "integer", "minimum": 1},
            "count": {"type": "integer", "minimum": 0, "description": "Items in the whole list"},
            "hasnext": {"type": "boolean"},
        })),
        "Broker": object(json!({
            "version": {"type": "string"},
            "uptime": {"type": "integer", "description": "Seconds since the broker started"},
            "started_at": {"type": "string", "format": "date-time"},
            "storage": {"type": "string", "enum": ["memory", "disk"]},
            "listeners": {"type": "array", "items": schema_ref("Listener")},
            "limits": object(Value::Object(limits)),
            "counts": object(Value::Object(counts)),
        })),
        "Cluster": object(json!({
            "node_id": {"type": ["string", "null"], "description": "This node's id; null without cluster mode"},
            "live_nodes": {"type": "integer", "minimum": 0},
            "nodes": {"type": "array", "items": schema_ref("ClusterNode")},
        })),
        "ClusterNode": object(json!({
            "id": {"type": "string"},
            "this_node": {"type": "boolean", "description": "The node that answered"},
            "live": {"type": "boolean"},
            "silent_secs": {"type": "number", "description": "Seconds since this node last saw the node's heartbeat change"},
            "incarnation": {"type": "string", "description": "The node's run: its start in nanoseconds, hex"},
            "started_at": {"type": "string", "format": "date-time"},
            "beat_at": {"type": "string", "format": "date-time", "description": "When its last heartbeat was written, by its clock"},
            "address": {"type": ["string", "null"], "description": "Its first listener"},
            "clients": {"type": "integer", "minimum": 0, "description": "Clients connected to it"},
            "messages_received_per_min": {"type": "number", "description": "One-minute average"},
            "messages_sent_per_min": {"type": "number", "description": "One-minute average"},
        })),
        "Listener": object(json!({
            "type": {"type": "string", "enum": ["tcp", "ws", "tls", "wss"]},
            "bind": {"type": "string"},
            "url": {"type": "string"},
        })),
        "Client": object(client_properties()),
        "ClientDetails": object(details),
        "ClientPage": page_of("Client"),
        "Subscription": object(json!({
            "clientid": {"type": "string"},
            "topic": {"type": "string", "description": "The topic filter"},
            "qos": {"type": "integer", "enum": [0, 1, 2]},
            "nl": {"type": "integer", "enum": [0, 1], "description": "No Local"},
            "rap": {"type": "integer", "enum": [0, 1], "description": "Retain As Published"},
            "rh": {"type": "integer", "enum": [0, 1, 2], "description": "Retain Handling"},
            "identifier": {"type": ["integer", "null"], "description": "Subscription Identifier"},
        })),
        "SubscriptionPage": page_of("Subscription"),
        "RetainedMessage": object(json!({
            "topic": {"type": "string"},
            "payload": {"type": "string"},
            "payload_encoding": {"type": "string", "enum": ["plain", "base64"], "description": "plain when the payload is UTF-8"},
            "size": {"type": "integer", "description": "Payload bytes"},
            "qos": {"type": "integer", "enum": [0, 1, 2]},
            "publish_at": {"type": "string", "format": "date-time"},
            "properties": schema_ref("MessageProperties"),
        })),
        "RetainedPage": page_of("RetainedMessage"),
        "MessageProperties": message_properties,
        "PublishRequest": publish_request,
        "PublishResult": object(json!({
            "queued": {"type": "integer", "description": "Copies queued for subscribers"},
            "dropped": {"type": "integer", "description": "Copies dropped (full queues, QoS 0 for offline sessions)"},
        })),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every path and method of the route table is in the document, and nothing else; every
    /// schema it refers to exists.
    #[test]
    fn the_document_describes_exactly_the_route_table() {
        let document = document();
        let paths = document["paths"].as_object().expect("paths");
        let mut described: Vec<(String, String)> = paths
            .iter()
            .flat_map(|(path, operations)| {
                operations
                    .as_object()
                    .expect("operations")
                    .keys()
                    .map(move |method| (method.to_uppercase(), path.clone()))
            })
            .collect();
        let mut served: Vec<(String, String)> = ROUTES
            .iter()
            .map(|route| (route.method.to_string(), route.path.to_owned()))
            .collect();
        described.sort();
        served.sort();
        assert_eq!(described, served);
        let text = document.to_string();
        let schemas = document["components"]["schemas"]
            .as_object()
            .expect("schemas");
        for reference in text.split("#/components/schemas/").skip(1) {
            let name = reference.split('"').next().unwrap_or_default();
            assert!(schemas.contains_key(name), "no schema {name}");
        }
    }
}

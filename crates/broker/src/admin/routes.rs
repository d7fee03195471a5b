//! Every route of the admin API, in one table: what the router serves, the query parameters
//! it takes, and what the OpenAPI document says of it.

use http::{Method, StatusCode, header};

use super::{ApiError, allow_header};

/// What a route does; [`super::handlers::dispatch`] runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Operation {
    GetBroker,
    ListClients,
    GetClient,
    DisconnectClient,
    ListSubscriptions,
    ListRetained,
    GetRetained,
    DeleteRetained,
    Publish,
    GetCluster,
    OpenApi,
}

/// The type of a parameter's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    String,
    /// An integer in `min..=max`.
    Integer {
        min: u64,
        max: u64,
    },
    Boolean,
    /// One of these strings.
    Enum(&'static [&'static str]),
}

/// A query or path parameter.
#[derive(Debug)]
pub(crate) struct Param {
    pub(crate) name: &'static str,
    pub(crate) kind: Kind,
    pub(crate) description: &'static str,
}

/// One route: a method on a path template whose `{name}` segments are path parameters.
#[derive(Debug)]
pub(crate) struct Route {
    pub(crate) method: Method,
    pub(crate) path: &'static str,
    pub(crate) operation: Operation,
    /// The OpenAPI `operationId`.
    pub(crate) id: &'static str,
    pub(crate) tag: &'static str,
    pub(crate) summary: &'static str,
    pub(crate) description: &'static str,
    pub(crate) path_params: &'static [Param],
    /// The last path parameter takes the rest of the path, slashes included (a topic).
    pub(crate) greedy_tail: bool,
    pub(crate) query: &'static [Param],
    /// The request body's schema (in `components.schemas`), if it takes one.
    pub(crate) body: Option<&'static str>,
    /// The success status and its body's schema (`None`: no body).
    pub(crate) ok: (StatusCode, Option<&'static str>),
    /// The error statuses it can answer with besides 401 and 403 (which every route that is
    /// not `open` has).
    pub(crate) errors: &'static [StatusCode],
    /// Served without the access check (the API's own description).
    pub(crate) open: bool,
}

const PAGE: Param = Param {
    name: "page",
    kind: Kind::Integer {
        min: 1,
        max: u32::MAX as u64,
    },
    description: "Page number, from 1 (default 1).",
};

/// Most items a page can hold.
pub(crate) const MAX_LIMIT: u64 = 1000;

/// Items a page holds unless `limit` says otherwise.
pub(crate) const DEFAULT_LIMIT: u64 = 100;

const LIMIT: Param = Param {
    name: "limit",
    kind: Kind::Integer {
        min: 1,
        max: MAX_LIMIT,
    },
    description: "Items per page, 1 to 1000 (default 100).",
};

const CLIENTID: Param = Param {
    name: "clientid",
    kind: Kind::String,
    description: "The client identifier, any UTF-8 (percent-encoded in the path).",
};

const TOPIC: Param = Param {
    name: "topic",
    kind: Kind::String,
    description: "The topic name, percent-encoded; its slashes may be left as they are \
                  (`/api/v1/retained/a/b` is topic `a/b`).",
};

const BAD: StatusCode = StatusCode::BAD_REQUEST;
const NOT_FOUND: StatusCode = StatusCode::NOT_FOUND;

/// Every route of the API.
pub(crate) static ROUTES: &[Route] = &[
    Route {
        method: Method::GET,
        path: "/api/v1/broker",
        operation: Operation::GetBroker,
        id: "getBroker",
        tag: "broker",
        summary: "The broker: version, uptime, listeners, limits and counts",
        description: "Counts are read when asked: `queued_messages` and `queued_bytes` sum \
                      every session's queue.",
        path_params: &[],
        greedy_tail: false,
        query: &[],
        body: None,
        ok: (StatusCode::OK, Some("Broker")),
        errors: &[BAD],
        open: false,
    },
    Route {
        method: Method::GET,
        path: "/api/v1/clients",
        operation: Operation::ListClients,
        id: "listClients",
        tag: "clients",
        summary: "Clients: connected ones and offline persistent sessions, by client id",
        description: "Sorted by client id. Filters combine (all must hold).",
        path_params: &[],
        greedy_tail: false,
        query: &[
            Param {
                name: "prefix",
                kind: Kind::String,
                description: "Client ids starting with this.",
            },
            Param {
                name: "like_clientid",
                kind: Kind::String,
                description: "Client ids containing this (EMQX's name).",
            },
            Param {
                name: "username",
                kind: Kind::String,
                description: "Clients of this user name.",
            },
            Param {
                name: "user",
                kind: Kind::String,
                description: "The same as `username`.",
            },
            Param {
                name: "ip_address",
                kind: Kind::String,
                description: "Clients connected (last) from this IP address.",
            },
            Param {
                name: "address",
                kind: Kind::String,
                description: "The same as `ip_address`.",
            },
            Param {
                name: "conn_state",
                kind: Kind::Enum(&["connected", "disconnected"]),
                description: "Only connected clients, or only offline sessions.",
            },
            PAGE,
            LIMIT,
        ],
        body: None,
        ok: (StatusCode::OK, Some("ClientPage")),
        errors: &[BAD],
        open: false,
    },
    Route {
        method: Method::GET,
        path: "/api/v1/clients/{clientid}",
        operation: Operation::GetClient,
        id: "getClient",
        tag: "clients",
        summary: "One client, with its subscriptions",
        description: "",
        path_params: &[CLIENTID],
        greedy_tail: false,
        query: &[],
        body: None,
        ok: (StatusCode::OK, Some("ClientDetails")),
        errors: &[BAD, NOT_FOUND],
        open: false,
    },
    Route {
        method: Method::DELETE,
        path: "/api/v1/clients/{clientid}",
        operation: Operation::DisconnectClient,
        id: "disconnectClient",
        tag: "clients",
        summary: "Disconnects a client (MQTT 5: DISCONNECT 0x98 Administrative action)",
        description: "An MQTT 3.1 or 3.1.1 client's connection is closed. Its session stays \
                      (a persistent one) unless `discard_session` is true. 409 when the \
                      client is offline and `discard_session` is not true, or when it \
                      reconnected before its session could be discarded.",
        path_params: &[CLIENTID],
        greedy_tail: false,
        query: &[Param {
            name: "discard_session",
            kind: Kind::Boolean,
            description: "Also remove the client's session: its subscriptions and queued \
                          messages (a will waiting on its delay is published now).",
        }],
        body: None,
        ok: (StatusCode::NO_CONTENT, None),
        errors: &[BAD, NOT_FOUND, StatusCode::CONFLICT],
        open: false,
    },
    Route {
        method: Method::GET,
        path: "/api/v1/subscriptions",
        operation: Operation::ListSubscriptions,
        id: "listSubscriptions",
        tag: "subscriptions",
        summary: "Subscriptions of every session, by client id then filter",
        description: "",
        path_params: &[],
        greedy_tail: false,
        query: &[
            Param {
                name: "filter",
                kind: Kind::String,
                description: "Subscriptions to exactly this topic filter \
                              (`$share/group/...` for a shared one).",
            },
            Param {
                name: "topic",
                kind: Kind::String,
                description: "The same as `filter` (EMQX's name).",
            },
            Param {
                name: "match_topic",
                kind: Kind::String,
                description: "Subscriptions whose filter matches this topic name.",
            },
            Param {
                name: "clientid",
                kind: Kind::String,
                description: "The subscriptions of this client.",
            },
            Param {
                name: "client",
                kind: Kind::String,
                description: "The same as `clientid`.",
            },
            PAGE,
            LIMIT,
        ],
        body: None,
        ok: (StatusCode::OK, Some("SubscriptionPage")),
        errors: &[BAD],
        open: false,
    },
    Route {
        method: Method::GET,
        path: "/api/v1/retained",
        operation: Operation::ListRetained,
        id: "listRetained",
        tag: "retained",
        summary: "Retained messages matching a topic filter, by topic",
        description: "As a subscriber to `filter` would get them: `#` does not match topics \
                      starting with `$`. Expired messages are left out.",
        path_params: &[],
        greedy_tail: false,
        query: &[
            Param {
                name: "filter",
                kind: Kind::String,
                description: "A topic filter (default `#`).",
            },
            PAGE,
            LIMIT,
        ],
        body: None,
        ok: (StatusCode::OK, Some("RetainedPage")),
        errors: &[BAD],
        open: false,
    },
    Route {
        method: Method::GET,
        path: "/api/v1/retained/{topic}",
        operation: Operation::GetRetained,
        id: "getRetained",
        tag: "retained",
        summary: "The retained message of one topic",
        description: "",
        path_params: &[TOPIC],
        greedy_tail: true,
        query: &[],
        body: None,
        ok: (StatusCode::OK, Some("RetainedMessage")),
        errors: &[BAD, NOT_FOUND],
        open: false,
    },
    Route {
        method: Method::DELETE,
        path: "/api/v1/retained/{topic}",
        operation: Operation::DeleteRetained,
        id: "deleteRetained",
        tag: "retained",
        summary: "Clears the retained message of one topic",
        description: "Nothing is published: subscribers are not told.",
        path_params: &[TOPIC],
        greedy_tail: true,
        query: &[],
        body: None,
        ok: (StatusCode::NO_CONTENT, None),
        errors: &[BAD, NOT_FOUND],
        open: false,
    },
    Route {
        method: Method::POST,
        path: "/api/v1/publish",
        operation: Operation::Publish,
        id: "publish",
        tag: "messages",
        summary: "Publishes a message, as a client would (no client id: No Local never \
                  applies)",
        description: "Answered once the message is routed and, with a durable store, once \
                      it is on disk. The body may be at most twice the broker's maximum \
                      packet size (413 past it), and the message's topic and payload at \
                      most the maximum packet size.",
        path_params: &[],
        greedy_tail: false,
        query: &[],
        body: Some("PublishRequest"),
        ok: (StatusCode::OK, Some("PublishResult")),
        errors: &[
            BAD,
            StatusCode::PAYLOAD_TOO_LARGE,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            StatusCode::SERVICE_UNAVAILABLE,
        ],
        open: false,
    },
    Route {
        method: Method::GET,
        path: "/api/v1/cluster",
        operation: Operation::GetCluster,
        id: "getCluster",
        tag: "broker",
        summary: "The cluster's nodes as this node sees them: liveness, clients and rates",
        description: "From the heartbeats each node writes in the NATS KV bucket \
                      `rallymq_nodes`. A node is `live` while its heartbeat changed within \
                      the last `missed_beats` intervals; a dead node stays listed, not live, \
                      until its key is deleted by the node that publishes its clients' wills. \
                      Without cluster mode, `node_id` is null and `nodes` empty.",
        path_params: &[],
        greedy_tail: false,
        query: &[],
        body: None,
        ok: (StatusCode::OK, Some("Cluster")),
        errors: &[BAD],
        open: false,
    },
    Route {
        method: Method::GET,
        path: "/api/v1/openapi.json",
        operation: Operation::OpenApi,
        id: "getOpenApi",
        tag: "broker",
        summary: "This description of the API (OpenAPI 3.1)",
        description: "Served to anyone: it holds no data of the broker's.",
        path_params: &[],
        greedy_tail: false,
        query: &[],
        body: None,
        ok: (StatusCode::OK, None),
        errors: &[BAD],
        open: true,
    },
];

/// A route found for a request, with its path parameters (percent-decoded).
#[derive(Debug)]
pub(crate) struct Matched {
    pub(crate) route: &'static Route,
    pub(crate) params: Vec<String>,
}

/// The path parameters `template` finds in `path`, raw; `None` if it does not match.
fn match_template(template: &str, greedy_tail: bool, path: &str) -> Option<Vec<String>> {
    let mut params = Vec::new();
    let mut rest = path;
    let mut segments = template.split('/').peekable();
    let mut first = true;
    while let Some(segment) = segments.next() {
        if !first {
            rest = rest.strip_prefix('/')?;
        }
        first = false;
        if segment.starts_with('{') {
            if greedy_tail && segments.peek().is_none() {
                if rest.is_empty() {
                    return None;
                }
                params.push(rest.to_owned());
                return Some(params);
            }
            let end = rest.find('/').unwrap_or(rest.len());
            if end == 0 {
                return None;
            }
            params.push(rest[..end].to_owned());
            rest = &rest[end..];
        } else {
            rest = rest.strip_prefix(segment)?;
            if !(rest.is_empty() || rest.starts_with('/')) {
                return None;
            }
        }
    }
    rest.is_empty().then_some(params)
}

/// The route for `method` and `path`: 404 when no route has the path, 405 (with `Allow`) when
/// routes have it but not the method.
pub(crate) fn find(method: &Method, path: &str) -> Result<Matched, ApiError> {
    let mut allowed = Vec::new();
    for route in ROUTES {
        let Some(raw) = match_template(route.path, route.greedy_tail, path) else {
            continue;
        };
        if route.method != *method {
            allowed.push(route.method.clone());
            continue;
        }
        let params = raw
            .iter()
            .map(|raw| percent_decode(raw, false))
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(Matched { route, params });
    }
    if allowed.is_empty() {
        return Err(ApiError::not_found(format!("no route {path}")));
    }
    let allow = allow_header(&allowed);
    Err(ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "METHOD_NOT_ALLOWED",
        format!("{method} is not allowed on {path}; allowed: {allow}"),
    )
    .with_header(header::ALLOW, allow))
}

/// Decodes `%XX` escapes (and, in a query string, `+` as a space); the result must be UTF-8.
pub(crate) fn percent_decode(text: &str, plus_is_space: bool) -> Result<String, ApiError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|hex| std::str::from_utf8(hex).ok())
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                    .ok_or_else(|| {
                        ApiError::bad_request(format!("a bad percent escape in {text:?}"))
                    })?;
                out.push(hex);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out)
        .map_err(|_| ApiError::bad_request(format!("{text:?} does not decode to UTF-8")))
}

/// A request's query parameters, checked against its route's list.
#[derive(Debug, Default)]
pub(crate) struct Query {
    pairs: Vec<(&'static Param, String)>,
}

impl Query {
    /// Parses `query`: every name must be one of the route's parameters, given once, with a
    /// value of its kind.
    pub(crate) fn parse(query: Option<&str>, route: &Route) -> Result<Self, ApiError> {
        let mut pairs: Vec<(&'static Param, String)> = Vec::new();
        for pair in query
            .unwrap_or("")
            .split('&')
            .filter(|pair| !pair.is_empty())
        {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let name = percent_decode(name, true)?;
            let value = percent_decode(value, true)?;
            let Some(param) = route.query.iter().find(|param| param.name == name) else {
                let known: Vec<_> = route.query.iter().map(|param| param.name).collect();
                return Err(ApiError::bad_request(if known.is_empty() {
                    format!("unknown query parameter {name:?}: this route takes none")
                } else {
                    format!(
                        "unknown query parameter {name:?}; this route takes: {}",
                        known.join(", ")
                    )
                }));
            };
            if pairs.iter().any(|(seen, _)| seen.name == param.name) {
                return Err(ApiError::bad_request(format!(
                    "query parameter {name:?} given twice"
                )));
            }
            check_kind(param, &value)?;
            pairs.push((param, value));
        }
        Ok(Self { pairs })
    }

    /// The value of `name`, or of its alias (`user` for `username`...): the first given.
    pub(crate) fn text(&self, names: &[&str]) -> Option<&str> {
        names.iter().find_map(|name| {
            self.pairs
                .iter()
                .find(|(param, _)| param.name == *name)
                .map(|(_, value)| value.as_str())
        })
    }

    /// An integer parameter (its range checked on parsing).
    pub(crate) fn integer(&self, name: &str) -> Option<u64> {
        self.text(&[name]).and_then(|value| value.parse().ok())
    }

    /// A boolean parameter.
    pub(crate) fn flag(&self, name: &str) -> bool {
        self.text(&[name]) == Some("true")
    }

    /// `page` and `limit`, with their defaults.
    pub(crate) fn page(&self) -> Page {
        Page {
            page: self.integer("page").unwrap_or(1),
            limit: self.integer("limit").unwrap_or(DEFAULT_LIMIT),
        }
    }
}

/// Checks that `value` is of `param`'s kind.
fn check_kind(param: &Param, value: &str) -> Result<(), ApiError> {
    let fits = match param.kind {
        Kind::String => true,
        Kind::Integer { min, max } => value.parse::<u64>().is_ok_and(|n| (min..=max).contains(&n)),
        Kind::Boolean => matches!(value, "true" | "false"),
        Kind::Enum(values) => values.contains(&value),
    };
    if fits {
        return Ok(());
    }
    let expected = match param.kind {
        Kind::String => String::new(),
        Kind::Integer { min, max } => format!("an integer from {min} to {max}"),
        Kind::Boolean => "true or false".to_owned(),
        Kind::Enum(values) => format!("one of {}", values.join(", ")),
    };
    Err(ApiError::bad_request(format!(
        "query parameter {}={value:?}: {expected}",
        param.name
    )))
}

/// Which page of a list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Page {
    /// From 1.
    pub(crate) page: u64,
    pub(crate) limit: u64,
}

impl Page {
    /// The range of `count` items this page holds (empty past the end).
    pub(crate) fn range(self, count: usize) -> std::ops::Range<usize> {
        let start = (self.page - 1).saturating_mul(self.limit).min(count as u64) as usize;
        let end = (start as u64).saturating_add(self.limit).min(count as u64) as usize;
        start..end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_match_whole_segments() {
        let m = |template, greedy, path| match_template(template, greedy, path);
        assert_eq!(m("/api/v1/clients", false, "/api/v1/clients"), Some(vec![]));
        assert_eq!(m("/api/v1/clients", false, "/api/v1/clientsx"), None);
        assert_eq!(m("/api/v1/clients", false, "/api/v1/clients/"), None);
        assert_eq!(
            m("/api/v1/clients/{clientid}", false, "/api/v1/clients/a%2Fb"),
            Some(vec!["a%2Fb".to_owned()])
        );
        assert_eq!(
            m("/api/v1/clients/{clientid}", false, "/api/v1/clients/a/b"),
            None
        );
        assert_eq!(
            m("/api/v1/clients/{clientid}", false, "/api/v1/clients/"),
            None
        );
        assert_eq!(
            m("/api/v1/retained/{topic}", true, "/api/v1/retained/a/b//c"),
            Some(vec!["a/b//c".to_owned()])
        );
        assert_eq!(
            m("/api/v1/retained/{topic}", true, "/api/v1/retained//a"),
            Some(vec!["/a".to_owned()])
        );
        assert_eq!(
            m("/api/v1/retained/{topic}", true, "/api/v1/retained/"),
            None
        );
    }

    #[test]
    fn percent_decoding_needs_utf8_and_whole_escapes() {
        assert_eq!(percent_decode("caf%C3%A9%2F1", false).unwrap(), "café/1");
        assert_eq!(percent_decode("a+b", true).unwrap(), "a b");
        assert_eq!(percent_decode("a+b", false).unwrap(), "a+b");
        assert!(percent_decode("%zz", false).is_err());
        assert!(percent_decode("%4", false).is_err());
        assert!(percent_decode("%FF", false).is_err());
    }

    #[test]
    fn pages_past_the_end_are_empty() {
        let page = |page, limit| Page { page, limit };
        assert_eq!(page(1, 10).range(25), 0..10);
        assert_eq!(page(3, 10).range(25), 20..25);
        assert_eq!(page(4, 10).range(25), 25..25);
        assert_eq!(page(u64::from(u32::MAX), 1000).range(25), 25..25);
    }

    #[test]
    fn every_route_has_a_unique_method_and_path_and_operation_id() {
        for (i, a) in ROUTES.iter().enumerate() {
            for b in &ROUTES[i + 1..] {
                assert!(
                    a.path != b.path || a.method != b.method,
                    "{} {}",
                    a.method,
                    a.path
                );
                assert_ne!(a.id, b.id);
            }
            let named = a.path.matches('{').count();
            assert_eq!(named, a.path_params.len(), "{}", a.path);
        }
    }
}

//! The opening handshake (RFC 6455 §4): the server validates a request and answers it, the
//! client builds a request and validates the answer.
//!
//! Requests are parsed from bytes with `httparse`, or taken from `http` types so a hyper-based
//! server can use the same validation. Nothing here does IO.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::{BufMut, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};
use sha1::{Digest, Sha1};

use crate::Error;

/// The GUID RFC 6455 appends to the key before hashing it into `Sec-WebSocket-Accept`.
pub const WEBSOCKET_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The default limit on the size of a handshake head (request or response line and headers).
pub const DEFAULT_MAX_HEAD_LEN: usize = 16 * 1024;

/// The most header lines a handshake head may have.
pub const MAX_HEADERS: usize = 64;

/// The `Sec-WebSocket-Accept` value for a `Sec-WebSocket-Key` value (as sent, base64).
///
/// ```
/// // RFC 6455 §1.3
/// assert_eq!(
///     rallymq_websocket::accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
///     "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
/// );
/// ```
pub fn accept_key(key: &[u8]) -> String {
    let mut sha1 = Sha1::new();
    sha1.update(key);
    sha1.update(WEBSOCKET_GUID.as_bytes());
    BASE64.encode(sha1.finalize())
}

// ---------------------------------------------------------------------------------------------
// Server role
// ---------------------------------------------------------------------------------------------

/// A validated WebSocket upgrade request, as a server receives it.
///
/// Everything a server's policy needs is exposed: the path and query for routing, the Origin for
/// an allow-list, the offered subprotocols, and every header. Answer it with
/// [`accept`](Self::accept) or a [`Rejection`].
#[derive(Debug, Clone)]
pub struct UpgradeRequest {
    target: String,
    headers: HeaderMap,
    key: HeaderValue,
    subprotocols: Vec<String>,
}

impl UpgradeRequest {
    /// Parses and validates a request head at the start of `buf`, refusing heads over
    /// [`DEFAULT_MAX_HEAD_LEN`].
    ///
    /// Returns the request and the head's length: bytes after it already belong to the
    /// WebSocket stream. `Ok(None)` means the head is not complete yet.
    pub fn parse(buf: &[u8]) -> Result<Option<(Self, usize)>, Error> {
        Self::parse_with_limit(buf, DEFAULT_MAX_HEAD_LEN)
    }

    /// [`parse`](Self::parse) with a limit of `max_head_len` bytes on the head.
    pub fn parse_with_limit(
        buf: &[u8],
        max_head_len: usize,
    ) -> Result<Option<(Self, usize)>, Error> {
        let mut lines = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut lines);
        let head_len = match request.parse(buf) {
            Ok(httparse::Status::Complete(len)) if len <= max_head_len => len,
            Ok(httparse::Status::Partial) if buf.len() < max_head_len => return Ok(None),
            Ok(_) | Err(httparse::Error::TooManyHeaders) => {
                return Err(Error::HeadTooLarge {
                    limit: max_head_len,
                });
            }
            Err(e) => return Err(Error::MalformedHttp(http_error_text(e))),
        };
        // A complete head has a method, a target and a version.
        let method = request.method.unwrap_or_default();
        let target = request.path.unwrap_or_default();
        let version = match request.version {
            Some(1) => Version::HTTP_11,
            _ => Version::HTTP_10,
        };
        if method != "GET" {
            return Err(Error::MethodNotGet);
        }
        let headers = header_map(request.headers)?;
        Self::validate(target, version, headers).map(|req| Some((req, head_len)))
    }

    /// Validates a request received by an `http`-based server such as hyper.
    pub fn from_http<B>(request: &http::Request<B>) -> Result<Self, Error> {
        Self::from_http_parts(
            request.method(),
            request.uri(),
            request.version(),
            request.headers(),
        )
    }

    /// Validates a request given as its `http` parts.
    pub fn from_http_parts(
        method: &Method,
        uri: &http::Uri,
        version: Version,
        headers: &HeaderMap,
    ) -> Result<Self, Error> {
        if method != Method::GET {
            return Err(Error::MethodNotGet);
        }
        let target = uri.path_and_query().map_or("/", |pq| pq.as_str());
        Self::validate(target, version, headers.clone())
    }

    fn validate(target: &str, version: Version, headers: HeaderMap) -> Result<Self, Error> {
        if version < Version::HTTP_11 {
            return Err(Error::HttpVersionTooOld);
        }
        if headers.get_all(header::HOST).iter().count() != 1 {
            return Err(Error::MissingHost);
        }
        if !has_token(&headers, &header::UPGRADE, "websocket") {
            return Err(Error::MissingUpgrade);
        }
        if !has_token(&headers, &header::CONNECTION, "upgrade") {
            return Err(Error::MissingConnectionUpgrade);
        }
        match single(&headers, &header::SEC_WEBSOCKET_VERSION) {
            Some(v) if v.as_bytes().trim_ascii() == b"13" => {}
            _ => return Err(Error::UnsupportedVersion),
        }
        let key = single(&headers, &header::SEC_WEBSOCKET_KEY).ok_or(Error::InvalidKey)?;
        match BASE64.decode(key.as_bytes().trim_ascii()) {
            Ok(raw) if raw.len() == 16 => {}
            _ => return Err(Error::InvalidKey),
        }
        let key = key.clone();
        let subprotocols = tokens(&headers, &header::SEC_WEBSOCKET_PROTOCOL)
            .map(str::to_owned)
            .collect();
        Ok(Self {
            target: target.to_owned(),
            headers,
            key,
            subprotocols,
        })
    }

    /// The request target as sent, path and query: `/mqtt?client=1`.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The path part of the target: `/mqtt`.
    pub fn path(&self) -> &str {
        self.target.split_once('?').map_or(&self.target, |(p, _)| p)
    }

    /// The query part of the target, without the `?`, if any: `client=1`.
    pub fn query(&self) -> Option<&str> {
        self.target.split_once('?').map(|(_, q)| q)
    }

    /// The Host header (present, as validation requires).
    pub fn host(&self) -> &str {
        self.header_str(&header::HOST).unwrap_or_default()
    }

    /// The Origin header, sent by browsers: check it against an allow-list.
    pub fn origin(&self) -> Option<&str> {
        self.header_str(&header::ORIGIN)
    }

    /// The `Sec-WebSocket-Key` value as sent.
    pub fn key(&self) -> &str {
        self.key.to_str().unwrap_or_default()
    }

    /// The subprotocols the client offered, in its order of preference.
    pub fn subprotocols(&self) -> &[String] {
        &self.subprotocols
    }

    /// The client's most preferred subprotocol among those the server `supports`.
    pub fn pick_subprotocol<'a>(&'a self, supports: &[&str]) -> Option<&'a str> {
        self.subprotocols
            .iter()
            .map(String::as_str)
            .find(|offered| supports.contains(offered))
    }

    /// All request headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    fn header_str(&self, name: &HeaderName) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Accepts the upgrade, with `subprotocol` (which must be one the client offered) or none.
    pub fn accept(&self, subprotocol: Option<&str>) -> Result<Accept, Error> {
        if let Some(chosen) = subprotocol {
            if !self.subprotocols.iter().any(|offered| offered == chosen) {
                return Err(Error::SubprotocolNotOffered(chosen.to_owned()));
            }
        }
        Ok(Accept {
            accept: accept_key(self.key.as_bytes().trim_ascii()),
            subprotocol: subprotocol.map(str::to_owned),
            headers: HeaderMap::new(),
        })
    }
}

/// A server's `101 Switching Protocols` answer to an [`UpgradeRequest`].
#[derive(Debug, Clone)]
pub struct Accept {
    accept: String,
    subprotocol: Option<String>,
    headers: HeaderMap,
}

impl Accept {
    /// The subprotocol selected, echoed in `Sec-WebSocket-Protocol`.
    pub fn subprotocol(&self) -> Option<&str> {
        self.subprotocol.as_deref()
    }

    /// The `Sec-WebSocket-Accept` value.
    pub fn accept_key(&self) -> &str {
        &self.accept
    }

    /// Adds a header to the response (e.g. `Set-Cookie`).
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.append(name, value);
        self
    }

    /// Appends the response head to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        dst.put_slice(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ");
        dst.put_slice(self.accept.as_bytes());
        dst.put_slice(b"\r\n");
        if let Some(protocol) = &self.subprotocol {
            dst.put_slice(b"Sec-WebSocket-Protocol: ");
            dst.put_slice(protocol.as_bytes());
            dst.put_slice(b"\r\n");
        }
        encode_headers(&self.headers, dst);
        dst.put_slice(b"\r\n");
    }

    /// The response head as bytes.
    pub fn to_bytes(&self) -> Bytes {
        let mut dst = BytesMut::with_capacity(160);
        self.encode(&mut dst);
        dst.freeze()
    }

    /// The response as an `http` response, for a hyper-based server.
    pub fn to_http_response(&self) -> http::Response<()> {
        let mut response = http::Response::new(());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        // Base64 is always a valid header value.
        let accept = HeaderValue::from_str(&self.accept).expect("base64 is a valid header value");
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        if let Some(protocol) = &self.subprotocol {
            // The subprotocol was offered in a header value, so it is a valid one.
            let value = HeaderValue::from_str(protocol).expect("offered in a header value");
            headers.insert(header::SEC_WEBSOCKET_PROTOCOL, value);
        }
        for (name, value) in &self.headers {
            headers.append(name, value.clone());
        }
        response
    }
}

/// A ready-made refusal of an upgrade request: an HTTP response that closes the connection.
///
/// ```
/// use rallymq_websocket::{Error, Rejection};
///
/// let rejection = Rejection::for_error(&Error::UnsupportedVersion);
/// assert_eq!(rejection.status(), 426);
/// let head = rejection.to_bytes();
/// assert!(head.starts_with(b"HTTP/1.1 426 Upgrade Required\r\n"));
/// // Header names are case-insensitive; `http` writes them in lower case.
/// assert!(head.windows(25).any(|w| w == b"sec-websocket-version: 13"));
/// ```
#[derive(Debug, Clone)]
pub struct Rejection {
    status: StatusCode,
    /// Extra headers, few: a list keeps the value small enough to travel in a `Result`.
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Bytes,
}

impl Rejection {
    /// A response with `status` and its reason phrase as a plain-text body.
    pub fn new(status: StatusCode) -> Self {
        let reason = status.canonical_reason().unwrap_or("Error");
        let mut headers = Vec::new();
        if status == StatusCode::UPGRADE_REQUIRED {
            headers.push((
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            ));
        }
        if status == StatusCode::METHOD_NOT_ALLOWED {
            // RFC 9110 §15.5.6: a 405 MUST list the methods the resource supports; a WebSocket
            // endpoint's is the upgrade, a GET (RFC 6455 §4.1).
            headers.push((header::ALLOW, HeaderValue::from_static("GET")));
        }
        Self {
            status,
            headers,
            body: Bytes::from(format!("{reason}\n")),
        }
    }

    /// 400 Bad Request: a malformed upgrade request.
    pub fn bad_request() -> Self {
        Self::new(StatusCode::BAD_REQUEST)
    }

    /// 403 Forbidden: e.g. an Origin not on the allow-list.
    pub fn forbidden() -> Self {
        Self::new(StatusCode::FORBIDDEN)
    }

    /// 404 Not Found: no WebSocket endpoint at this path.
    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND)
    }

    /// 426 Upgrade Required, with `Sec-WebSocket-Version: 13`: an unsupported version.
    pub fn upgrade_required() -> Self {
        Self::new(StatusCode::UPGRADE_REQUIRED)
    }

    /// The answer to a request that failed validation with `error` (400 for anything that is
    /// not a handshake error).
    pub fn for_error(error: &Error) -> Self {
        Self::new(error.http_status().unwrap_or(StatusCode::BAD_REQUEST))
    }

    /// Replaces the body (sent as `text/plain`).
    pub fn with_body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// Adds a header.
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// The status code.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// Appends the whole response, head and body, to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        let reason = self.status.canonical_reason().unwrap_or("Error");
        dst.put_slice(
            format!(
                "HTTP/1.1 {} {reason}\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n",
                self.status.as_u16(),
                self.body.len()
            )
            .as_bytes(),
        );
        encode_headers(self.headers.iter().map(|(name, value)| (name, value)), dst);
        dst.put_slice(b"\r\n");
        dst.put_slice(&self.body);
    }

    /// The whole response as bytes.
    pub fn to_bytes(&self) -> Bytes {
        let mut dst = BytesMut::new();
        self.encode(&mut dst);
        dst.freeze()
    }

    /// The response as an `http` response, for a hyper-based server.
    pub fn to_http_response(&self) -> http::Response<Bytes> {
        let mut response = http::Response::new(self.body.clone());
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        for (name, value) in &self.headers {
            headers.append(name, value.clone());
        }
        response
    }
}

// ---------------------------------------------------------------------------------------------
// Client role
// ---------------------------------------------------------------------------------------------

/// A client's upgrade request, which then validates the server's answer.
///
/// ```
/// use rallymq_websocket::{ClientRequest, UpgradeRequest};
///
/// let request = ClientRequest::with_key("broker.example", "/mqtt", *b"0123456789abcdef")
///     .unwrap()
///     .with_subprotocols(&["mqtt"])
///     .unwrap();
/// // The server side of the same handshake:
/// let (upgrade, _) = UpgradeRequest::parse(&request.to_bytes()).unwrap().unwrap();
/// let accept = upgrade.accept(upgrade.pick_subprotocol(&["mqtt"])).unwrap();
/// let (response, _) = request.parse_response(&accept.to_bytes()).unwrap().unwrap();
/// assert_eq!(response.subprotocol(), Some("mqtt"));
/// ```
#[derive(Debug, Clone)]
pub struct ClientRequest {
    host: HeaderValue,
    target: String,
    key: String,
    subprotocols: Vec<String>,
    headers: HeaderMap,
}

impl ClientRequest {
    /// A request for `target` (path and query, starting with `/`) on `host` (with its port if
    /// not the default), with a random key from the operating system.
    #[cfg(feature = "getrandom")]
    pub fn new(host: &str, target: &str) -> Result<Self, Error> {
        let mut key = [0; 16];
        getrandom::fill(&mut key).map_err(|_| Error::Randomness)?;
        Self::with_key(host, target, key)
    }

    /// A request with the caller's 16 random bytes as the key (they must be random: RFC 6455
    /// §4.1 asks for a fresh nonce per connection).
    pub fn with_key(host: &str, target: &str, key: [u8; 16]) -> Result<Self, Error> {
        let host = HeaderValue::from_str(host).map_err(|_| Error::InvalidHeadValue("host"))?;
        let valid_target = target.starts_with('/')
            && target.parse::<http::uri::PathAndQuery>().is_ok()
            && !target
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control());
        if !valid_target {
            return Err(Error::InvalidHeadValue("target"));
        }
        Ok(Self {
            host,
            target: target.to_owned(),
            key: BASE64.encode(key),
            subprotocols: Vec::new(),
            headers: HeaderMap::new(),
        })
    }

    /// Offers `subprotocols`, most preferred first.
    pub fn with_subprotocols(mut self, subprotocols: &[&str]) -> Result<Self, Error> {
        for protocol in subprotocols {
            if protocol.is_empty() || !protocol.bytes().all(is_token_byte) {
                return Err(Error::InvalidHeadValue("subprotocol"));
            }
            self.subprotocols.push((*protocol).to_owned());
        }
        Ok(self)
    }

    /// Adds a header (e.g. `Origin`, `Authorization`, `Cookie`).
    pub fn with_header(mut self, name: &str, value: &str) -> Result<Self, Error> {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| Error::InvalidHeadValue("header name"))?;
        let value =
            HeaderValue::from_str(value).map_err(|_| Error::InvalidHeadValue("header value"))?;
        self.headers.append(name, value);
        Ok(self)
    }

    /// The `Sec-WebSocket-Key` sent.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The subprotocols offered.
    pub fn subprotocols(&self) -> &[String] {
        &self.subprotocols
    }

    /// Appends the request head to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        dst.put_slice(b"GET ");
        dst.put_slice(self.target.as_bytes());
        dst.put_slice(b" HTTP/1.1\r\nHost: ");
        dst.put_slice(self.host.as_bytes());
        dst.put_slice(b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ");
        dst.put_slice(self.key.as_bytes());
        dst.put_slice(b"\r\nSec-WebSocket-Version: 13\r\n");
        if !self.subprotocols.is_empty() {
            dst.put_slice(b"Sec-WebSocket-Protocol: ");
            dst.put_slice(self.subprotocols.join(", ").as_bytes());
            dst.put_slice(b"\r\n");
        }
        encode_headers(&self.headers, dst);
        dst.put_slice(b"\r\n");
    }

    /// The request head as bytes.
    pub fn to_bytes(&self) -> Bytes {
        let mut dst = BytesMut::with_capacity(256);
        self.encode(&mut dst);
        dst.freeze()
    }

    /// Parses and validates the server's answer at the start of `buf`, refusing heads over
    /// [`DEFAULT_MAX_HEAD_LEN`].
    ///
    /// Returns the response and the head's length: bytes after it are already WebSocket
    /// frames. `Ok(None)` means the head is not complete yet.
    pub fn parse_response(&self, buf: &[u8]) -> Result<Option<(UpgradeResponse, usize)>, Error> {
        let mut lines = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut lines);
        let head_len = match response.parse(buf) {
            Ok(httparse::Status::Complete(len)) if len <= DEFAULT_MAX_HEAD_LEN => len,
            Ok(httparse::Status::Partial) if buf.len() < DEFAULT_MAX_HEAD_LEN => return Ok(None),
            Ok(_) | Err(httparse::Error::TooManyHeaders) => {
                return Err(Error::HeadTooLarge {
                    limit: DEFAULT_MAX_HEAD_LEN,
                });
            }
            Err(e) => return Err(Error::MalformedHttp(http_error_text(e))),
        };
        if response.version != Some(1) {
            return Err(Error::HttpVersionTooOld);
        }
        let status = response.code.unwrap_or_default();
        let headers = header_map(response.headers)?;
        self.validate_response(status, headers)
            .map(|r| Some((r, head_len)))
    }

    /// Validates the server's answer given as an `http` response (e.g. from hyper).
    pub fn check_http_response<B>(
        &self,
        response: &http::Response<B>,
    ) -> Result<UpgradeResponse, Error> {
        self.validate_response(response.status().as_u16(), response.headers().clone())
    }

    fn validate_response(&self, status: u16, headers: HeaderMap) -> Result<UpgradeResponse, Error> {
        if status != 101 {
            return Err(Error::NotSwitchingProtocols(status));
        }
        if !has_token(&headers, &header::UPGRADE, "websocket") {
            return Err(Error::MissingUpgrade);
        }
        if !has_token(&headers, &header::CONNECTION, "upgrade") {
            return Err(Error::MissingConnectionUpgrade);
        }
        let expected = accept_key(self.key.as_bytes());
        match single(&headers, &header::SEC_WEBSOCKET_ACCEPT) {
            Some(accept) if accept.as_bytes().trim_ascii() == expected.as_bytes() => {}
            _ => return Err(Error::AcceptMismatch),
        }
        if tokens(&headers, &header::SEC_WEBSOCKET_EXTENSIONS)
            .next()
            .is_some()
        {
            return Err(Error::UnofferedExtension);
        }
        let mut selected = tokens(&headers, &header::SEC_WEBSOCKET_PROTOCOL);
        let subprotocol = match (selected.next(), selected.next()) {
            (None, _) => None,
            (Some(one), None) if self.subprotocols.iter().any(|p| p == one) => Some(one.to_owned()),
            _ => return Err(Error::UnofferedSubprotocol),
        };
        drop(selected);
        Ok(UpgradeResponse {
            subprotocol,
            headers,
        })
    }
}

/// A validated `101 Switching Protocols` answer, as a client receives it.
#[derive(Debug, Clone)]
pub struct UpgradeResponse {
    subprotocol: Option<String>,
    headers: HeaderMap,
}

impl UpgradeResponse {
    /// The subprotocol the server selected, one of those offered; `None` if it selected none.
    pub fn subprotocol(&self) -> Option<&str> {
        self.subprotocol.as_deref()
    }

    /// All response headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }
}

// ---------------------------------------------------------------------------------------------
// Header helpers
// ---------------------------------------------------------------------------------------------

fn header_map(lines: &[httparse::Header<'_>]) -> Result<HeaderMap, Error> {
    let mut headers = HeaderMap::with_capacity(lines.len());
    for line in lines {
        let name = HeaderName::from_bytes(line.name.as_bytes())
            .map_err(|_| Error::MalformedHttp("invalid header name"))?;
        let value = HeaderValue::from_bytes(line.value)
            .map_err(|_| Error::MalformedHttp("invalid header value"))?;
        headers.append(name, value);
    }
    Ok(headers)
}

/// The header's value if it appears exactly once.
fn single<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (Some(value), None) => Some(value),
        _ => None,
    }
}

/// The comma-separated tokens of every occurrence of a header, trimmed, empty ones skipped.
fn tokens<'a>(headers: &'a HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|token| !token.is_empty())
}

/// Whether the header's token list contains `token`, compared ASCII case-insensitively.
fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    tokens(headers, name).any(|t| t.eq_ignore_ascii_case(token))
}

fn encode_headers<'a>(
    headers: impl IntoIterator<Item = (&'a HeaderName, &'a HeaderValue)>,
    dst: &mut BytesMut,
) {
    for (name, value) in headers {
        dst.put_slice(name.as_str().as_bytes());
        dst.put_slice(b": ");
        dst.put_slice(value.as_bytes());
        dst.put_slice(b"\r\n");
    }
}

/// RFC 7230 `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn http_error_text(error: httparse::Error) -> &'static str {
    match error {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid new line",
        httparse::Error::Status => "invalid status",
        httparse::Error::Token => "invalid token",
        httparse::Error::TooManyHeaders => "too many headers",
        httparse::Error::Version => "invalid HTTP version",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RFC_1_3_REQUEST: &[u8] = b"GET /chat HTTP/1.1\r\n\
        Host: server.example.com\r\n\
        Upgrade: websocket\r\n\
        Connection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Origin: http://example.com\r\n\
        Sec-WebSocket-Protocol: chat, superchat\r\n\
        Sec-WebSocket-Version: 13\r\n\r\n";

    const RFC_1_3_RESPONSE: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\n\
        Upgrade: websocket\r\n\
        Connection: Upgrade\r\n\
        Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
        Sec-WebSocket-Protocol: chat\r\n\r\n";

    fn request_with(replace: &str, with: &str) -> Vec<u8> {
        String::from_utf8(RFC_1_3_REQUEST.to_vec())
            .unwrap()
            .replace(replace, with)
            .into_bytes()
    }

    #[test]
    fn rfc_1_3_handshake_server_side() {
        let (request, len) = UpgradeRequest::parse(RFC_1_3_REQUEST).unwrap().unwrap();
        assert_eq!(len, RFC_1_3_REQUEST.len());
        assert_eq!(request.path(), "/chat");
        assert_eq!(request.query(), None);
        assert_eq!(request.host(), "server.example.com");
        assert_eq!(request.origin(), Some("http://example.com"));
        assert_eq!(request.subprotocols(), ["chat", "superchat"]);
        assert_eq!(
            request.pick_subprotocol(&["superchat", "chat"]),
            Some("chat")
        );
        let accept = request.accept(Some("chat")).unwrap();
        assert_eq!(&accept.to_bytes()[..], RFC_1_3_RESPONSE);
        assert_eq!(
            request.accept(Some("mqtt")).unwrap_err(),
            Error::SubprotocolNotOffered("mqtt".into())
        );
    }

    #[test]
    fn rfc_1_3_handshake_client_side() {
        // The RFC's key is the base64 of "the sample nonce".
        let request = ClientRequest::with_key("server.example.com", "/chat", *b"the sample nonce")
            .unwrap()
            .with_subprotocols(&["chat", "superchat"])
            .unwrap()
            .with_header("Origin", "http://example.com")
            .unwrap();
        assert_eq!(request.key(), "dGhlIHNhbXBsZSBub25jZQ==");
        let (response, len) = request.parse_response(RFC_1_3_RESPONSE).unwrap().unwrap();
        assert_eq!(len, RFC_1_3_RESPONSE.len());
        assert_eq!(response.subprotocol(), Some("chat"));
        let (parsed, _) = UpgradeRequest::parse(&request.to_bytes()).unwrap().unwrap();
        assert_eq!(parsed.origin(), Some("http://example.com"));
    }

    #[test]
    fn request_validation_errors() {
        let cases = [
            ("GET /chat", "POST /chat", Error::MethodNotGet),
            (
                "HTTP/1.1\r\nHost",
                "HTTP/1.0\r\nHost",
                Error::HttpVersionTooOld,
            ),
            ("Host: server.example.com\r\n", "", Error::MissingHost),
            ("Upgrade: websocket", "Upgrade: h2c", Error::MissingUpgrade),
            (
                "Connection: Upgrade",
                "Connection: keep-alive",
                Error::MissingConnectionUpgrade,
            ),
            (
                "dGhlIHNhbXBsZSBub25jZQ==",
                "dGhlIHNhbXBsZQ==",
                Error::InvalidKey,
            ),
            ("dGhlIHNhbXBsZSBub25jZQ==", "not base64!", Error::InvalidKey),
            ("Version: 13", "Version: 8", Error::UnsupportedVersion),
            (
                "Sec-WebSocket-Version: 13\r\n",
                "",
                Error::UnsupportedVersion,
            ),
        ];
        for (from, to, error) in cases {
            let bytes = request_with(from, to);
            assert_eq!(
                UpgradeRequest::parse(&bytes).unwrap_err(),
                error,
                "{from} -> {to}"
            );
        }
    }

    #[test]
    fn request_tokens_are_case_insensitive_lists() {
        let bytes = request_with("Upgrade: websocket", "upgrade: WebSocket")
            .into_iter()
            .collect::<Vec<_>>();
        let bytes = String::from_utf8(bytes)
            .unwrap()
            .replace("Connection: Upgrade", "Connection: keep-alive, UPGRADE");
        assert!(UpgradeRequest::parse(bytes.as_bytes()).unwrap().is_some());
    }

    #[test]
    fn head_limit_and_partial_heads() {
        for cut in 0..RFC_1_3_REQUEST.len() {
            assert!(
                UpgradeRequest::parse(&RFC_1_3_REQUEST[..cut])
                    .unwrap()
                    .is_none()
            );
        }
        assert_eq!(
            UpgradeRequest::parse_with_limit(RFC_1_3_REQUEST, 100).unwrap_err(),
            Error::HeadTooLarge { limit: 100 }
        );
        assert_eq!(
            UpgradeRequest::parse_with_limit(&RFC_1_3_REQUEST[..150], 100).unwrap_err(),
            Error::HeadTooLarge { limit: 100 }
        );
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert!(matches!(
            UpgradeRequest::parse(&many),
            Err(Error::HeadTooLarge { .. })
        ));
    }

    #[test]
    fn request_from_http_types() {
        let request = http::Request::get("/mqtt?id=7")
            .header("host", "broker")
            .header("upgrade", "websocket")
            .header("connection", "upgrade")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-protocol", "mqtt")
            .body(())
            .unwrap();
        let upgrade = UpgradeRequest::from_http(&request).unwrap();
        assert_eq!((upgrade.path(), upgrade.query()), ("/mqtt", Some("id=7")));
        let response = upgrade.accept(Some("mqtt")).unwrap().to_http_response();
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(
            response.headers()["sec-websocket-accept"],
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert_eq!(response.headers()["sec-websocket-protocol"], "mqtt");
    }

    #[test]
    fn response_validation_errors() {
        let request = ClientRequest::with_key("h", "/", *b"the sample nonce")
            .unwrap()
            .with_subprotocols(&["chat"])
            .unwrap();
        let response = |extra: &str, accept: &str| {
            format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n{extra}\r\n"
            )
        };
        let good = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
        let check = |text: String| {
            request
                .parse_response(text.as_bytes())
                .map(|r| r.unwrap().0)
        };
        assert!(check(response("", good)).unwrap().subprotocol().is_none());
        assert_eq!(
            check(response("", "AAAAAAAAAAAAAAAAAAAAAAAAAAA=")).unwrap_err(),
            Error::AcceptMismatch
        );
        assert_eq!(
            check(response("Sec-WebSocket-Protocol: mqtt\r\n", good)).unwrap_err(),
            Error::UnofferedSubprotocol
        );
        assert_eq!(
            check(response(
                "Sec-WebSocket-Extensions: permessage-deflate\r\n",
                good
            ))
            .unwrap_err(),
            Error::UnofferedExtension
        );
        assert_eq!(
            check("HTTP/1.1 403 Forbidden\r\n\r\n".into()).unwrap_err(),
            Error::NotSwitchingProtocols(403)
        );
    }

    #[test]
    fn rejections() {
        for (rejection, status) in [
            (Rejection::bad_request(), 400),
            (Rejection::forbidden(), 403),
            (Rejection::not_found(), 404),
            (Rejection::upgrade_required(), 426),
        ] {
            assert_eq!(rejection.status(), status);
            let bytes = rejection.to_bytes();
            let mut lines = [httparse::EMPTY_HEADER; 8];
            let mut parsed = httparse::Response::new(&mut lines);
            let head = parsed.parse(&bytes).unwrap().unwrap();
            assert_eq!(parsed.code, Some(status));
            let length: usize = parsed
                .headers
                .iter()
                .find(|h| h.name == "Content-Length")
                .map(|h| std::str::from_utf8(h.value).unwrap().parse().unwrap())
                .unwrap();
            assert_eq!(head + length, bytes.len());
            assert_eq!(
                rejection
                    .to_http_response()
                    .headers()
                    .contains_key("sec-websocket-version"),
                status == 426
            );
        }
        assert_eq!(Rejection::for_error(&Error::MissingHost).status(), 400);
        assert_eq!(Rejection::for_error(&Error::MethodNotGet).status(), 405);
    }

    /// RFC 9110 §15.5.6: "The origin server MUST generate an Allow header field in a 405
    /// (Method Not Allowed) response".
    #[test]
    fn a_405_lists_get_as_the_allowed_method() {
        let rejection = Rejection::for_error(&Error::MethodNotGet);
        assert_eq!(
            rejection.to_http_response().headers().get(header::ALLOW),
            Some(&HeaderValue::from_static("GET"))
        );
        let head = rejection.to_bytes();
        assert!(
            head.windows(12)
                .any(|w| w.eq_ignore_ascii_case(b"allow: GET\r\n")),
            "{head:?}"
        );
    }
}

//! The admin HTTP API: JSON under `/api/v1/` on the WebSocket listeners, beside the pages and
//! the MQTT upgrade. One table ([`routes::ROUTES`]) lists every route: the router dispatches
//! from it, validates query parameters against it, and the OpenAPI document at
//! `/api/v1/openapi.json` is written from it, so that what is served and what is described
//! cannot drift apart.
//!
//! Names follow EMQX's v5 API where it has one (`clientid`, `ip_address`, `proto_ver`,
//! `subscriptions_cnt`, `mqueue_len`, `nl`/`rap`/`rh`, `payload_encoding`, pages as
//! `{"data": [...], "meta": {"page", "limit", "count", "hasnext"}}`, errors as
//! `{"code": "...", "message": "..."}`), so that tools written for it need little change.
//!
//! Reads copy what they need under brief locks (the registry's while listing ids, each
//! session's while copying it) and serialise after every lock is released.

mod access;
mod handlers;
mod openapi;
mod routes;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use serde::Serialize;

use crate::broker::Shared;
use routes::{Matched, Query};

/// Whether `path` is the admin API's (every path under `/api/`, so that an unknown one gets a
/// JSON 404 rather than the static files' text one).
pub(crate) fn serves(path: &str) -> bool {
    path == "/api" || path.starts_with("/api/")
}

/// Answers one request to the admin API. `policy`: the security policy of the listener it
/// came through, which checks its credentials.
pub(crate) async fn handle(
    request: Request<Incoming>,
    shared: Arc<Shared>,
    peer: SocketAddr,
    policy: u8,
) -> Response<Full<Bytes>> {
    match serve(request, shared, peer, policy).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn serve(
    request: Request<Incoming>,
    shared: Arc<Shared>,
    peer: SocketAddr,
    policy: u8,
) -> Result<Response<Full<Bytes>>, ApiError> {
    if !shared.config.admin.enabled {
        return Err(ApiError::not_found("the admin API is turned off"));
    }
    let Matched { route, params } = routes::find(request.method(), request.uri().path())?;
    if !route.open {
        access::check(&shared, policy, peer, request.headers()).await?;
    }
    let query = Query::parse(request.uri().query(), route)?;
    handlers::dispatch(route, params, query, request, shared).await
}

/// A failed request, answered as `{"code": "...", "message": "..."}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// Extra headers: `Allow` for 405, `WWW-Authenticate` for 401.
    headers: Vec<(header::HeaderName, String)>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'a str,
    message: &'a str,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            headers: Vec::new(),
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BAD_REQUEST", message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NOT_FOUND", message)
    }

    fn with_header(mut self, name: header::HeaderName, value: String) -> Self {
        self.headers.push((name, value));
        self
    }

    fn into_response(self) -> Response<Full<Bytes>> {
        let body = ErrorBody {
            code: self.code,
            message: &self.message,
        };
        let mut response = json_response(self.status, &body);
        for (name, value) in self.headers {
            if let Ok(value) = HeaderValue::from_str(&value) {
                response.headers_mut().append(name, value);
            }
        }
        response
    }
}

/// `value` as a JSON response.
fn json_response(status: StatusCode, value: &impl Serialize) -> Response<Full<Bytes>> {
    // Serialising our own types to a Vec cannot fail: every map key is a string.
    let body = serde_json::to_vec(value).unwrap_or_default();
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-store")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

/// An empty 204 No Content.
fn no_content() -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::NO_CONTENT;
    response
}

/// A time as RFC 3339 in UTC with milliseconds (`2025-01-31T12:00:00.000Z`).
pub(crate) fn rfc3339(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let seconds = since.as_secs();
    let (days, rest) = (seconds / 86_400, seconds % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60,
        since.subsec_millis()
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's `civil_from_days`,
/// for days on or after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// The methods a path allows, for `Allow`.
fn allow_header(methods: &[Method]) -> String {
    methods
        .iter()
        .map(Method::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_utc_with_milliseconds() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        // 2000-02-29 (a leap day of a century year divisible by 400) 23:59:59.5.
        let leap = UNIX_EPOCH + Duration::from_millis(951_868_799_500);
        assert_eq!(rfc3339(leap), "2000-02-29T23:59:59.500Z");
        let later = UNIX_EPOCH + Duration::from_secs(1_767_225_600);
        assert_eq!(rfc3339(later), "2026-01-01T00:00:00.000Z");
    }
}

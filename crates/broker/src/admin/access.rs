//! Who may use the admin API: requests from where [`AdminOpenTo`] trusts, and admins with
//! credentials. Credentials are checked by the authenticator of the listener the request came
//! through (its password file, its JWT key), as an MQTT client's would be:
//!
//! - `Authorization: Basic` with a user and password of the password file (or a token as the
//!   password, the user empty or the token's);
//! - `Authorization: Bearer` with a token.
//!
//! An admin is a user named in [`AdminApi::admin_users`](crate::AdminApi), or a token whose
//! `role` claim holds `admin`. Without credentials the answer is 401 with a challenge; with valid
//! credentials of someone else, 403.

use std::net::SocketAddr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};

use super::ApiError;
use crate::auth::{Credentials, Refusal};
use crate::broker::Shared;
use crate::config::AdminOpenTo;

/// The role a token's `role` claim names to make its user an admin.
const ADMIN_ROLE: &str = "admin";

/// The protection space named in challenges (RFC 9110 §11.5).
const REALM: &str = "rallymq admin API";

/// A header the console sends so that its 401s carry no Basic challenge: a browser answers one
/// with its own login dialog, over the console's.
const REQUESTED_WITH: &str = "x-requested-with";

/// Lets the request in, or says why not (401 without valid credentials, 403 with another's).
/// `policy` is the security policy of the listener the request came through.
pub(crate) async fn check(
    shared: &Shared,
    policy: u8,
    peer: SocketAddr,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    let admin = &shared.config.admin;
    let trusted = match admin.open_to {
        AdminOpenTo::Loopback => peer.ip().to_canonical().is_loopback(),
        AdminOpenTo::Anywhere => true,
        AdminOpenTo::Nowhere => false,
    };
    if trusted {
        return Ok(());
    }
    let from_script = headers.contains_key(REQUESTED_WITH);
    let Some(authorization) = headers.get(header::AUTHORIZATION) else {
        let reason = match admin.open_to {
            AdminOpenTo::Loopback => {
                "credentials needed: without them, the admin API answers loopback addresses only"
            }
            _ => "credentials needed",
        };
        return Err(unauthorized(reason, from_script));
    };
    let Some(credentials) = parse_authorization(authorization) else {
        return Err(unauthorized(
            "the Authorization header holds neither Basic nor Bearer credentials",
            from_script,
        ));
    };
    // Every listener's policy index is one of the broker's (Broker::start builds both); the
    // broker's own policy stands in should that ever not hold.
    let Some(policy) = shared
        .policies
        .get(usize::from(policy))
        .or(shared.policies.first())
    else {
        return Err(forbidden("no security policy to check credentials with"));
    };
    let authenticator = &policy.authenticator;
    if !authenticator.checks_credentials() {
        return Err(forbidden(
            "this listener checks no credentials (no password file, no JWT key): the admin API \
             answers only where it is open to",
        ));
    }
    let identity = match authenticator
        .authenticate_off_thread(peer, credentials)
        .await
    {
        Ok(identity) => identity,
        Err(Refusal::Unavailable) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "SERVICE_UNAVAILABLE",
                "credentials cannot be checked now",
            ));
        }
        // The same words for an unknown user and a wrong password, as MQTT's 0x86.
        Err(Refusal::UnknownUser | Refusal::WrongPassword | Refusal::NoPassword) => {
            return Err(unauthorized("bad user name or password", from_script));
        }
        Err(refusal) => return Err(unauthorized(&refusal.to_string(), from_script)),
    };
    let user = identity.user.as_deref();
    let listed = user.is_some_and(|user| admin.admin_users.iter().any(|a| a == user));
    if listed || identity.has_role(ADMIN_ROLE) {
        return Ok(());
    }
    Err(forbidden(&format!(
        "{} is not an admin (not in admin_users, no \"{ADMIN_ROLE}\" role)",
        user.map_or_else(
            || "an anonymous client".to_owned(),
            |u| format!("user {u:?}")
        ),
    )))
}

/// The credentials of `Authorization: Basic` (RFC 7617) or `Authorization: Bearer` (RFC 6750),
/// or `None` when the header is neither, or malformed.
fn parse_authorization(value: &HeaderValue) -> Option<Credentials> {
    let value = value.to_str().ok()?.trim();
    let (scheme, rest) = value.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = BASE64.decode(rest).ok()?;
        let colon = decoded.iter().position(|b| *b == b':')?;
        let user = std::str::from_utf8(&decoded[..colon]).ok()?;
        Some(Credentials {
            username: Some(user.to_owned()),
            password: Some(Bytes::copy_from_slice(&decoded[colon + 1..])),
            ..Credentials::default()
        })
    } else if scheme.eq_ignore_ascii_case("bearer") && !rest.is_empty() {
        Some(Credentials {
            password: Some(Bytes::copy_from_slice(rest.as_bytes())),
            ..Credentials::default()
        })
    } else {
        None
    }
}

/// 401 with the challenges the API accepts; no Basic one for the console's scripts (see
/// [`REQUESTED_WITH`]).
fn unauthorized(message: &str, from_script: bool) -> ApiError {
    let mut error = ApiError::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", message);
    if !from_script {
        error = error.with_header(
            header::WWW_AUTHENTICATE,
            format!("Basic realm=\"{REALM}\", charset=\"UTF-8\""),
        );
    }
    error.with_header(
        header::WWW_AUTHENTICATE,
        format!("Bearer realm=\"{REALM}\""),
    )
}

fn forbidden(message: &str) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "FORBIDDEN", message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(value: &str) -> Option<(Option<String>, Option<Vec<u8>>)> {
        parse_authorization(&HeaderValue::from_str(value).ok()?)
            .map(|c| (c.username, c.password.map(|p| p.to_vec())))
    }

    #[test]
    fn basic_and_bearer_credentials_are_read_and_anything_else_refused() {
        // RFC 7617 §2's example: Aladdin / open sesame; a password may hold ':'.
        assert_eq!(
            parsed("Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="),
            Some((Some("Aladdin".into()), Some(b"open sesame".to_vec())))
        );
        let encoded = BASE64.encode("u:p:q");
        assert_eq!(
            parsed(&format!("basic  {encoded}")),
            Some((Some("u".into()), Some(b"p:q".to_vec())))
        );
        assert_eq!(
            parsed("Bearer a.b.c"),
            Some((None, Some(b"a.b.c".to_vec())))
        );
        for bad in [
            "Basic",
            "Basic !!!",
            "Basic dXNlcg==", // "user", no colon
            "Bearer ",
            "Digest username=\"u\"",
            "QWxhZGRpbjpvcGVuIHNlc2FtZQ==",
        ] {
            assert_eq!(parsed(bad), None, "{bad}");
        }
        let not_utf8_user = BASE64.encode([0xff, b':', b'p']);
        assert_eq!(parsed(&format!("Basic {not_utf8_user}")), None);
    }
}

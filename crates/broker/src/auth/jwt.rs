//! JSON Web Tokens (RFC 7519) as MQTT passwords, so that a web page need not embed one.
//!
//! The key file holds either an HMAC secret (HS256, HS384, HS512) or a PEM public key: RSA
//! (RS256/384/512, PS256/384/512), EC (ES256, ES384) or Ed25519 (EdDSA). A token signed with
//! any other algorithm, or with an HMAC algorithm while the key is a public key, is refused.
//!
//! Claims: `exp` and `nbf` (RFC 7519 §4.1.4-5) are checked against the broker's clock, `iss` and
//! `aud` when configured; the user name is the string in a configurable claim (default `sub`);
//! an optional claim (default `acl`, EMQX's name) carries publish and subscribe rules in EMQX's
//! two shapes, see [`TokenRules`]; an optional `role` claim (a string or a list of strings)
//! names roles, of which the broker knows one: `admin`, for its admin HTTP API.

use std::collections::HashSet;
use std::fs;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rallymq_codec::{QoS, TopicFilter};
use serde_json::{Map, Value};

use super::Refusal;
use crate::Error;
pub(crate) use crate::acl::{Action, Permission};

/// The shortest HMAC secret accepted: RFC 7518 §3.2 requires a key at least as long as the
/// hash output, 32 bytes for HS256 (48 for HS384, 64 for HS512).
const MIN_HMAC_SECRET: usize = 32;

/// How tokens are checked (`--jwt-key FILE` and its companions).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct JwtConfig {
    /// An HMAC secret (the file's bytes, less a final line break such as `echo` writes), or an
    /// RSA, EC or Ed25519 public key in PEM. A private key is refused: the broker only verifies.
    pub key_file: PathBuf,
    /// The claim that holds the user name (default `sub`, RFC 7519's subject). EMQX users may
    /// set `username`, the claim EMQX's examples use.
    pub user_claim: String,
    /// The claim that holds publish and subscribe rules (default `acl`, as in EMQX).
    pub acl_claim: String,
    /// When set, the token's `iss` must be this.
    pub issuer: Option<String>,
    /// When set, the token's `aud` must be, or contain, this.
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf` (default none).
    pub leeway: Duration,
    /// Whether a token without `exp` is refused (default true: a token that never expires is
    /// a password written into a page).
    pub require_expiry: bool,
}

impl JwtConfig {
    /// Tokens verified with the key in `key_file`, the other settings at their defaults.
    pub fn new(key_file: impl Into<PathBuf>) -> Self {
        Self {
            key_file: key_file.into(),
            user_claim: "sub".into(),
            acl_claim: "acl".into(),
            issuer: None,
            audience: None,
            leeway: Duration::ZERO,
            require_expiry: true,
        }
    }
}

/// Publish and subscribe rules carried by a token, for the ACL to enforce on top of (EMQX:
/// before) its own rules. Rules are checked in order; the first whose action and topic match
/// a request decides it. Placeholders are already replaced by the client's values.
///
/// EMQX's two shapes of the `acl` claim are accepted:
///
/// - the list of rules (EMQX 5.5 and later, recommended): `[{"permission": "allow" | "deny",
///   "action": "publish" | "subscribe" | "all", "topic": "t/${clientid}", "qos": [0, 1],
///   "retain": true}, ...]` (`qos` and `retain` optional; `pub`/`sub` accepted for the
///   actions, `topics: [...]` for several topics). A request no rule matches is decided by the
///   ACL, as if the token carried no rules ([`NoMatch::Continue`]).
/// - the older object of allow-lists: `{"pub": [...], "sub": [...], "all": [...]}`. A request
///   none of them allows is denied ([`NoMatch::Deny`]).
///
/// Placeholders `${username}` and `${clientid}` (EMQX 5), and `%u` and `%c` (EMQX 4,
/// Mosquitto), become the user name and client identifier. A topic written `eq FILTER` matches
/// only that very filter, literally: a SUBSCRIBE to exactly `FILTER`, never a topic it would
/// match as a wildcard. Anything else in a rule (EMQX enterprise's `clientid_re`, `ipaddr`, ...)
/// makes the token invalid rather than ignored: ignoring a condition would widen an allow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TokenRules {
    /// In order: the first rule that matches decides.
    pub(crate) rules: Vec<TokenRule>,
    /// What applies to a request no rule matches.
    pub(crate) no_match: NoMatch,
}

/// What applies to a request that none of a token's rules match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoMatch {
    /// Denied (EMQX's older `{"pub", "sub", "all"}` allow-lists).
    Deny,
    /// Decided by the broker's ACL as if the token had no rules (EMQX's list of rules).
    Continue,
}

/// One rule of a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TokenRule {
    /// Whether a matching request is allowed or denied.
    pub(crate) permission: Permission,
    /// Which requests the rule is about.
    pub(crate) action: Action,
    /// The topic filter, placeholders replaced. For a PUBLISH, the rule matches a topic name
    /// the filter matches; for a SUBSCRIBE, a filter that asks for no more than this one.
    pub(crate) topic: TopicFilter,
    /// EMQX's `eq ` prefix: the rule matches only a SUBSCRIBE (or PUBLISH) of exactly `topic`,
    /// compared as text, its wildcards taken literally.
    pub(crate) exact: bool,
    /// The QoS levels the rule is about; `None`: all.
    pub(crate) qos: Option<Vec<QoS>>,
    /// For a PUBLISH: `Some(true)` matches only retained messages, `Some(false)` only
    /// non-retained ones; `None`: both. Ignored for a SUBSCRIBE.
    pub(crate) retain: Option<bool>,
}

/// What a valid token says about its client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VerifiedToken {
    pub(crate) user: String,
    /// `exp` (plus the leeway): when the connection must close.
    pub(crate) expires_at: Option<SystemTime>,
    pub(crate) rules: Option<TokenRules>,
    /// The `role` claim's roles.
    pub(crate) roles: Vec<String>,
}

/// The claim that names a token's roles.
const ROLE_CLAIM: &str = "role";

/// Checks tokens against one key and one set of claim settings.
pub(crate) struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
    config: JwtConfig,
}

impl std::fmt::Debug for JwtVerifier {
    /// The settings and algorithms; never the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("algorithms", &self.validation.algorithms)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl JwtVerifier {
    /// Reads the key file named by `config`.
    pub(crate) fn load(config: &JwtConfig) -> Result<Self, Error> {
        let bytes = fs::read(&config.key_file).map_err(|source| Error::ReadFile {
            path: config.key_file.clone(),
            source,
        })?;
        Self::from_key(&bytes, config.clone()).map_err(|reason| Error::JwtKey {
            path: config.key_file.clone(),
            reason,
        })
    }

    /// A verifier for the key in `bytes` (a key file's contents).
    pub(crate) fn from_key(bytes: &[u8], config: JwtConfig) -> Result<Self, String> {
        let (key, algorithms) = decoding_key(bytes)?;
        let mut validation = Validation::new(algorithms[0]);
        validation.algorithms = algorithms;
        // The claims are checked below, against the caller's clock and with our messages.
        validation.required_spec_claims = HashSet::new();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.leeway = 0;
        Ok(Self {
            key,
            validation,
            config,
        })
    }

    /// Checks `token` at time `now` for the client `client_id`.
    pub(crate) fn verify(
        &self,
        token: &str,
        client_id: &str,
        now: SystemTime,
    ) -> Result<VerifiedToken, Refusal> {
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &self.key, &self.validation)
            .map_err(|e| Refusal::BadToken(describe(e.kind())))?
            .claims;
        let now = seconds_since_epoch(now);
        let leeway = self.config.leeway.as_secs_f64();
        let expiry = numeric_date(&claims, "exp")?;
        match expiry {
            // RFC 7519 §4.1.4: the current time MUST be before the expiration time.
            Some(exp) if now >= exp + leeway => return Err(Refusal::TokenExpired),
            None if self.config.require_expiry => {
                return Err(Refusal::BadToken("no exp claim".into()));
            }
            _ => {}
        }
        // §4.1.5: the current time MUST be after or equal to the not-before time.
        if numeric_date(&claims, "nbf")?.is_some_and(|nbf| now + leeway < nbf) {
            return Err(Refusal::TokenNotYetValid);
        }
        if let Some(issuer) = &self.config.issuer
            && claims.get("iss").and_then(Value::as_str) != Some(issuer)
        {
            return Err(Refusal::BadToken("wrong or missing iss".into()));
        }
        if let Some(audience) = &self.config.audience {
            let listed = match claims.get("aud") {
                Some(Value::String(one)) => one == audience,
                Some(Value::Array(many)) => many.iter().any(|a| a.as_str() == Some(audience)),
                _ => false,
            };
            if !listed {
                return Err(Refusal::BadToken("wrong or missing aud".into()));
            }
        }
        let user = match claims.get(&self.config.user_claim) {
            Some(Value::String(user)) if !user.is_empty() => user.clone(),
            _ => {
                return Err(Refusal::BadToken(format!(
                    "no user name in a string {} claim",
                    self.config.user_claim
                )));
            }
        };
        let rules = match claims.get(&self.config.acl_claim) {
            None => None,
            Some(claim) => Some(parse_rules(claim, &user, client_id).map_err(|reason| {
                Refusal::BadToken(format!("{}: {reason}", self.config.acl_claim))
            })?),
        };
        let expires_at = match expiry {
            None => None,
            Some(exp) => Some(
                Duration::try_from_secs_f64(exp + leeway)
                    .ok()
                    .and_then(|d| UNIX_EPOCH.checked_add(d))
                    .ok_or_else(|| Refusal::BadToken("exp out of range".into()))?,
            ),
        };
        let roles = match claims.get(ROLE_CLAIM) {
            None => Vec::new(),
            Some(Value::String(role)) => vec![role.clone()],
            Some(Value::Array(roles)) => roles
                .iter()
                .map(|role| role.as_str().map(str::to_owned))
                .collect::<Option<_>>()
                .ok_or_else(|| Refusal::BadToken("role: a list of strings expected".into()))?,
            Some(_) => {
                return Err(Refusal::BadToken(
                    "role: a string or a list of strings expected".into(),
                ));
            }
        };
        Ok(VerifiedToken {
            user,
            expires_at,
            rules,
            roles,
        })
    }
}

/// Whether a password is shaped as a JWT (three base64url parts, a JSON header with `alg`),
/// so that it goes to the token verifier rather than the password file.
pub(crate) fn looks_like_token(password: &str) -> bool {
    password.bytes().filter(|b| *b == b'.').count() == 2
        && jsonwebtoken::decode_header(password).is_ok()
}

/// The key and the algorithms it may verify.
fn decoding_key(bytes: &[u8]) -> Result<(DecodingKey, Vec<Algorithm>), String> {
    use Algorithm::*;
    let pem = std::str::from_utf8(bytes)
        .ok()
        .filter(|text| text.trim_start().starts_with("-----BEGIN"));
    if let Some(pem) = pem {
        if pem.contains("PRIVATE KEY-----") {
            return Err("a private key; give the broker the public key only \
                        (`openssl pkey -in KEY -pubout`)"
                .into());
        }
        if let Ok(key) = DecodingKey::from_rsa_pem(bytes) {
            return Ok((key, vec![RS256, RS384, RS512, PS256, PS384, PS512]));
        }
        if let Ok(key) = DecodingKey::from_ec_pem(bytes) {
            return Ok((key, vec![ES256, ES384]));
        }
        if let Ok(key) = DecodingKey::from_ed_pem(bytes) {
            return Ok((key, vec![EdDSA]));
        }
        return Err("a PEM file, but not an RSA, EC or Ed25519 public key".into());
    }
    let secret = bytes
        .strip_suffix(b"\n")
        .map(|rest| rest.strip_suffix(b"\r").unwrap_or(rest))
        .unwrap_or(bytes);
    if secret.len() < MIN_HMAC_SECRET {
        return Err(format!(
            "an HMAC secret of {} bytes; RFC 7518 (3.2) requires at least {MIN_HMAC_SECRET} \
             for HS256 (e.g. `openssl rand -base64 48`)",
            secret.len()
        ));
    }
    let key = DecodingKey::from_secret(secret).map_err(|e| describe(e.kind()))?;
    let mut algorithms = vec![HS256];
    if secret.len() >= 48 {
        algorithms.push(HS384);
    }
    if secret.len() >= 64 {
        algorithms.push(HS512);
    }
    Ok((key, algorithms))
}

/// A fixed description of a decoding failure: never the token's text or claims.
fn describe(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::InvalidSignature => "bad signature",
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => {
            "signed with an algorithm this key does not verify"
        }
        ErrorKind::InvalidToken | ErrorKind::Base64(_) | ErrorKind::Utf8(_) => "malformed token",
        ErrorKind::Json(_) => "the header or claims are not a JSON object",
        ErrorKind::InvalidKeyFormat
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidRsaKey(_) => "the key does not fit the token's algorithm",
        _ => "invalid token",
    }
    .into()
}

fn seconds_since_epoch(time: SystemTime) -> f64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(since) => since.as_secs_f64(),
        Err(before) => -before.duration().as_secs_f64(),
    }
}

/// A NumericDate claim (RFC 7519 §2: seconds since the epoch, possibly fractional).
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<f64>, Refusal> {
    match claims.get(name) {
        None => Ok(None),
        Some(value) => value
            .as_f64()
            .filter(|n| n.is_finite())
            .map(Some)
            .ok_or_else(|| Refusal::BadToken(format!("{name} is not a number"))),
    }
}

/// Reads the `acl` claim in either of EMQX's shapes.
fn parse_rules(claim: &Value, user: &str, client_id: &str) -> Result<TokenRules, String> {
    let expand = Placeholders { user, client_id };
    match claim {
        Value::Array(items) => {
            let mut rules = Vec::new();
            for (index, item) in items.iter().enumerate() {
                parse_rule(item, &expand, &mut rules).map_err(|e| format!("rule {index}: {e}"))?;
            }
            Ok(TokenRules {
                rules,
                no_match: NoMatch::Continue,
            })
        }
        Value::Object(lists) => {
            let mut rules = Vec::new();
            for (key, topics) in lists {
                let action = match key.as_str() {
                    "pub" => Action::Publish,
                    "sub" => Action::Subscribe,
                    "all" => Action::All,
                    other => return Err(format!("unknown key {other:?} (known: pub, sub, all)")),
                };
                for topic in string_list(topics).map_err(|e| format!("{key}: {e}"))? {
                    push_rule(
                        &mut rules,
                        Permission::Allow,
                        action,
                        topic,
                        &expand,
                        None,
                        None,
                    )?;
                }
            }
            Ok(TokenRules {
                rules,
                no_match: NoMatch::Deny,
            })
        }
        _ => Err("neither a list of rules nor an object of pub/sub/all lists".into()),
    }
}

fn parse_rule(
    item: &Value,
    expand: &Placeholders<'_>,
    rules: &mut Vec<TokenRule>,
) -> Result<(), String> {
    let Value::Object(fields) = item else {
        return Err("not an object".into());
    };
    if let Some(unknown) = fields.keys().find(|key| {
        !matches!(
            key.as_str(),
            "permission" | "action" | "topic" | "topics" | "qos" | "retain"
        )
    }) {
        return Err(format!("unsupported field {unknown:?}"));
    }
    let permission = match fields.get("permission").and_then(Value::as_str) {
        Some("allow") => Permission::Allow,
        Some("deny") => Permission::Deny,
        _ => return Err("permission must be \"allow\" or \"deny\"".into()),
    };
    let action = match fields.get("action").and_then(Value::as_str) {
        Some("publish" | "pub") => Action::Publish,
        Some("subscribe" | "sub") => Action::Subscribe,
        Some("all") => Action::All,
        _ => return Err("action must be \"publish\", \"subscribe\" or \"all\"".into()),
    };
    let topics = match (fields.get("topic"), fields.get("topics")) {
        (Some(Value::String(topic)), None) => vec![topic.as_str()],
        (None, Some(topics)) => string_list(topics).map_err(|e| format!("topics: {e}"))?,
        _ => return Err("needs a string topic or a list of topics (not both)".into()),
    };
    let qos = match fields.get("qos") {
        None => None,
        Some(Value::Array(levels)) => Some(
            levels
                .iter()
                .map(|level| match level.as_u64() {
                    Some(0) => Ok(QoS::AtMostOnce),
                    Some(1) => Ok(QoS::AtLeastOnce),
                    Some(2) => Ok(QoS::ExactlyOnce),
                    _ => Err("qos must list 0, 1 or 2".to_owned()),
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
        Some(_) => return Err("qos must be a list".into()),
    };
    let retain = match fields.get("retain") {
        None => None,
        Some(Value::Bool(retain)) => Some(*retain),
        Some(_) => return Err("retain must be true or false".into()),
    };
    for topic in topics {
        push_rule(
            rules,
            permission,
            action,
            topic,
            expand,
            qos.clone(),
            retain,
        )?;
    }
    Ok(())
}

fn string_list(value: &Value) -> Result<Vec<&str>, String> {
    match value {
        Value::Array(items) => items
            .iter()
            .map(|item| {
                item.as_str()
                    .ok_or_else(|| "not a list of strings".to_owned())
            })
            .collect(),
        _ => Err("not a list of strings".into()),
    }
}

/// The client's values for a rule's placeholders.
struct Placeholders<'a> {
    user: &'a str,
    client_id: &'a str,
}

impl Placeholders<'_> {
    /// `topic` with its placeholders replaced in one pass (a value is never expanded again),
    /// and whether any value put in holds a wildcard.
    fn expand(&self, topic: &str) -> (String, bool) {
        let placeholders = [
            ("${username}", self.user),
            ("${clientid}", self.client_id),
            ("%u", self.user),
            ("%c", self.client_id),
        ];
        let mut expanded = String::with_capacity(topic.len());
        let mut wildcard = false;
        let mut rest = topic;
        'scan: while let Some(next) = rest.chars().next() {
            for (placeholder, value) in placeholders {
                if let Some(after) = rest.strip_prefix(placeholder) {
                    expanded.push_str(value);
                    wildcard |= value.contains(['+', '#']);
                    rest = after;
                    continue 'scan;
                }
            }
            expanded.push(next);
            rest = &rest[next.len_utf8()..];
        }
        (expanded, wildcard)
    }
}

fn push_rule(
    rules: &mut Vec<TokenRule>,
    permission: Permission,
    action: Action,
    topic: &str,
    placeholders: &Placeholders<'_>,
    qos: Option<Vec<QoS>>,
    retain: Option<bool>,
) -> Result<(), String> {
    let (topic, exact) = match topic.strip_prefix("eq ") {
        Some(literal) => (literal, true),
        None => (topic, false),
    };
    let (expanded, wildcard) = placeholders.expand(topic);
    // A user name or client identifier holding `+` or `#` would widen an allow rule into a
    // wildcard (Mosquitto refuses such patterns too): that allow is dropped. A deny rule so
    // widened only denies more, and is kept.
    if wildcard && permission == Permission::Allow {
        return Ok(());
    }
    let topic = TopicFilter::new(expanded).map_err(|e| format!("topic filter: {e}"))?;
    rules.push(TokenRule {
        permission,
        action,
        topic,
        exact,
        qos,
        retain,
    });
    Ok(())
}

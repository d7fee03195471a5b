//! Authentication: who a client is, decided once, at CONNECT.
//!
//! Three sources, any of them configured ([`AuthConfig`]):
//!
//! - a TLS client certificate, whose name the TLS listener passes in: the certificate is the
//!   credential, no password is checked (Mosquitto's `use_identity_as_username`);
//! - a JSON Web Token sent as the password, when a JWT key is configured (see [`JwtConfig`]);
//! - a password file in Mosquitto's format (see [`PasswordFile`]).
//!
//! A client that sends neither user name nor password is anonymous: allowed when no
//! authentication is configured, refused once any is, unless `allow_anonymous` says otherwise.
//! With nothing configured, a user name is taken as given (as Mosquitto does), for the ACL.
//!
//! Hashing is slow by design (argon2id takes tens of milliseconds), so
//! [`Authenticator::authenticate_off_thread`] runs it on tokio's blocking pool, at most one
//! hash per core at a time; the IO threads never wait for it. Nothing is cached: each CONNECT
//! is checked against the files as last loaded, so a changed or removed password stops working
//! at the next reload.

mod jwt;
mod password;

use std::fmt;
use std::net::SocketAddr;
use std::num::NonZero;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use bytes::Bytes;
use rallymq_codec::ReasonCode;
use tokio::sync::Semaphore;
use tracing::warn;

pub use jwt::JwtConfig;
#[allow(unused_imports)] // the ACL takes these; it is written beside this module (issue 14)
pub(crate) use jwt::{Action, NoMatch, Permission, TokenRule, TokenRules};
pub use password::{HashScheme, PasswordFile};

use crate::Error;
use jwt::JwtVerifier;

/// Where the broker learns who its clients are.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct AuthConfig {
    /// A password file in Mosquitto's format (`--password-file`).
    pub password_file: Option<PathBuf>,
    /// JSON Web Tokens as passwords (`--jwt-key`).
    pub jwt: Option<JwtConfig>,
    /// Whether clients without user name and password are let in. `None`: only when neither
    /// a password file nor a JWT key is configured.
    pub allow_anonymous: Option<bool>,
}

impl AuthConfig {
    fn allows_anonymous(&self) -> bool {
        self.allow_anonymous
            .unwrap_or(self.password_file.is_none() && self.jwt.is_none())
    }
}

/// Why a client was refused. Both "unknown user" and "wrong password" give the client the
/// same code; they differ for the broker's log. No variant carries a password or a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// Neither user name nor password, and anonymous clients are not allowed.
    #[error("anonymous clients are not allowed")]
    Anonymous,
    /// The user is not in the password file.
    #[error("unknown user")]
    UnknownUser,
    /// The password does not match the user's hash.
    #[error("wrong password")]
    WrongPassword,
    /// A user name came without a password.
    #[error("no password")]
    NoPassword,
    /// A password that is not a token, where only tokens are accepted (JWT key, no password
    /// file).
    #[error("the password is not a JSON Web Token")]
    NotAToken,
    /// The token's signature, algorithm or claims are wrong.
    #[error("token refused: {0}")]
    BadToken(String),
    /// The token's `exp` has passed.
    #[error("token expired")]
    TokenExpired,
    /// The token's `nbf` has not come yet.
    #[error("token not valid yet")]
    TokenNotYetValid,
    /// The CONNECT's user name is not the token's.
    #[error("the user name is not the token's")]
    UserMismatch,
    /// The check could not run (the runtime is shutting down).
    #[error("authentication unavailable")]
    Unavailable,
}

impl Refusal {
    /// The CONNACK reason code: 0x87 Not authorized for an anonymous client, 0x88 Server
    /// unavailable when the check could not run, 0x86 Bad user name or password otherwise.
    /// Before MQTT 5 the codec sends these as return codes 5, 3 and 4.
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            Self::Anonymous => ReasonCode::NotAuthorized,
            Self::Unavailable => ReasonCode::ServerUnavailable,
            _ => ReasonCode::BadUserNameOrPassword,
        }
    }
}

/// Who a client is, once let in.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Identity {
    /// The user name the ACL knows the client by; `None` for an anonymous client.
    pub(crate) user: Option<String>,
    /// When the credential stops being valid (a token's `exp`): the broker closes the
    /// connection then (MQTT 5: DISCONNECT 0xA0 Maximum connect time is the closest code).
    pub(crate) expires_at: Option<SystemTime>,
    /// Publish and subscribe rules the token carried.
    pub(crate) rules: Option<TokenRules>,
    /// The roles the token's `role` claim names.
    pub(crate) roles: Vec<String>,
}

impl Identity {
    /// Whether the credential names this role (only a token's `role` claim does).
    pub(crate) fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    fn user(user: &str) -> Self {
        Self {
            user: Some(user.to_owned()),
            ..Self::default()
        }
    }
}

/// What a CONNECT says about who sends it, and what the TLS layer saw.
#[derive(Clone, Default)]
pub(crate) struct Credentials {
    pub(crate) username: Option<String>,
    pub(crate) password: Option<Bytes>,
    pub(crate) client_id: String,
    /// The name from a verified client certificate, when the listener uses it as user name.
    pub(crate) certificate_user: Option<String>,
}

impl fmt::Debug for Credentials {
    /// Everything but the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .field("client_id", &self.client_id)
            .field("certificate_user", &self.certificate_user)
            .finish()
    }
}

/// The files as last loaded.
#[derive(Debug)]
struct Loaded {
    passwords: Option<PasswordFile>,
    tokens: Option<JwtVerifier>,
    allow_anonymous: bool,
}

impl Loaded {
    fn load(config: &AuthConfig) -> Result<Self, Error> {
        Ok(Self {
            passwords: config
                .password_file
                .as_deref()
                .map(PasswordFile::load)
                .transpose()?,
            tokens: config.jwt.as_ref().map(JwtVerifier::load).transpose()?,
            allow_anonymous: config.allows_anonymous(),
        })
    }
}

/// Files read by [`Authenticator::read_files`], waiting to be installed.
#[derive(Debug)]
pub(crate) struct ReadFiles(Loaded);

/// Decides who a client is, from the configured files; reloadable while clients connect.
#[derive(Debug)]
pub(crate) struct Authenticator {
    config: AuthConfig,
    loaded: RwLock<Arc<Loaded>>,
    /// One permit per core: hashes wait here rather than pile up on the blocking pool (each
    /// argon2id check holds 19 MiB while it runs).
    hashing: Arc<Semaphore>,
}

impl Authenticator {
    /// Loads the files `config` names.
    pub(crate) fn new(config: AuthConfig) -> Result<Self, Error> {
        let loaded = Loaded::load(&config)?;
        let cores = std::thread::available_parallelism().map_or(1, NonZero::get);
        Ok(Self {
            config,
            loaded: RwLock::new(Arc::new(loaded)),
            hashing: Arc::new(Semaphore::new(cores)),
        })
    }

    /// Reads the files again (on SIGHUP). All or nothing: when one is missing or broken, the
    /// files loaded before stay in force and the error says which file and line is wrong.
    #[cfg(test)]
    pub(crate) fn reload(&self) -> Result<(), Error> {
        let files = self.read_files()?;
        self.install(files);
        Ok(())
    }

    /// The files read again, not in force yet: [`Self::install`] puts them in force, so that
    /// several files can be reloaded all or nothing.
    pub(crate) fn read_files(&self) -> Result<ReadFiles, Error> {
        Loaded::load(&self.config).map(ReadFiles)
    }

    /// Puts files from [`Self::read_files`] in force.
    pub(crate) fn install(&self, files: ReadFiles) {
        *self.loaded.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(files.0);
    }

    /// Whether a password file or a JWT key is loaded: without either, a user name is taken
    /// as given and no password is checked, so that a user name proves nothing.
    pub(crate) fn checks_credentials(&self) -> bool {
        let loaded = self.snapshot();
        loaded.passwords.is_some() || loaded.tokens.is_some()
    }

    fn snapshot(&self) -> Arc<Loaded> {
        Arc::clone(&self.loaded.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Decides who the client is, now. May hash for tens of milliseconds: from async code, use
    /// [`Self::authenticate_off_thread`].
    pub(crate) fn authenticate(
        &self,
        username: Option<&str>,
        password: Option<&[u8]>,
        client_id: &str,
        certificate_user: Option<&str>,
    ) -> Result<Identity, Refusal> {
        self.authenticate_at(
            username,
            password,
            client_id,
            certificate_user,
            SystemTime::now(),
        )
    }

    fn authenticate_at(
        &self,
        username: Option<&str>,
        password: Option<&[u8]>,
        client_id: &str,
        certificate_user: Option<&str>,
        now: SystemTime,
    ) -> Result<Identity, Refusal> {
        let loaded = self.snapshot();
        if let Some(user) = certificate_user {
            return Ok(Identity::user(user));
        }
        if let (Some(tokens), Some(password)) = (&loaded.tokens, password)
            && let Ok(token) = std::str::from_utf8(password)
            && jwt::looks_like_token(token)
        {
            let verified = tokens.verify(token, client_id, now)?;
            // A 3.1.1 client must send a user name with a password: an empty one, or the
            // token's own, is fine; another would leave two names for one client.
            if username.is_some_and(|name| !name.is_empty() && name != verified.user) {
                return Err(Refusal::UserMismatch);
            }
            return Ok(Identity {
                user: Some(verified.user),
                expires_at: verified.expires_at,
                rules: verified.rules,
                roles: verified.roles,
            });
        }
        let configured = loaded.passwords.is_some() || loaded.tokens.is_some();
        match (username, password) {
            (None, None) if loaded.allow_anonymous => Ok(Identity::default()),
            (None, None) => Err(Refusal::Anonymous),
            // MQTT 5 allows a password without a user name; with nothing configured it names
            // no one, so the client is anonymous.
            (None, Some(_)) if !configured && loaded.allow_anonymous => Ok(Identity::default()),
            (None, Some(_)) if loaded.tokens.is_some() => Err(Refusal::NotAToken),
            (None, Some(_)) => Err(Refusal::UnknownUser),
            (Some(user), password) => match &loaded.passwords {
                Some(file) => match password {
                    Some(password) => file.verify(user, password).map(|()| Identity::user(user)),
                    None => Err(Refusal::NoPassword),
                },
                None if loaded.tokens.is_some() => Err(Refusal::NotAToken),
                None => Ok(Identity::user(user)),
            },
        }
    }

    /// [`Self::authenticate`] on tokio's blocking pool when it has to hash, at most one hash
    /// per core at once; a refusal is logged with the peer's address (never the password).
    pub(crate) async fn authenticate_off_thread(
        self: &Arc<Self>,
        peer: SocketAddr,
        credentials: Credentials,
    ) -> Result<Identity, Refusal> {
        let hashes = credentials.password.is_some() && credentials.certificate_user.is_none() && {
            let loaded = self.snapshot();
            loaded.passwords.is_some() || loaded.tokens.is_some()
        };
        let result = if hashes {
            match Arc::clone(&self.hashing).acquire_owned().await {
                Ok(permit) => {
                    let authenticator = Arc::clone(self);
                    let credentials = credentials.clone();
                    tokio::task::spawn_blocking(move || {
                        let _permit = permit;
                        authenticator.check(&credentials)
                    })
                    .await
                    .unwrap_or(Err(Refusal::Unavailable))
                }
                Err(_closed) => Err(Refusal::Unavailable),
            }
        } else {
            self.check(&credentials)
        };
        if let Err(refusal) = &result {
            warn!(
                %peer,
                client_id = credentials.client_id,
                user = credentials.username.as_deref().unwrap_or(""),
                reason = %refusal,
                "login refused"
            );
        }
        result
    }

    fn check(&self, credentials: &Credentials) -> Result<Identity, Refusal> {
        self.authenticate(
            credentials.username.as_deref(),
            credentials.password.as_deref(),
            &credentials.client_id,
            credentials.certificate_user.as_deref(),
        )
    }
}

#[cfg(test)]
mod tests;

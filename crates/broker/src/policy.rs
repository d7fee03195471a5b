//! A security policy as the broker runs it: who may connect (the authenticator) and what they
//! may do (the ACL), one for the broker and one for each listener with a [`Security`] of its
//! own.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::Error;
use crate::acl::{Acl, ClientAcl, ClientRules};
use crate::auth::{AuthConfig, Authenticator, Identity, ReadFiles};

/// Who may connect and what they may do: the settings of the broker, or of one listener
/// ([`Listener::security`](crate::Listener::security)).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Security {
    /// Who may connect: a password file, JSON Web Tokens, anonymous clients or not. With
    /// nothing set, anyone may, under the user name they give.
    pub auth: AuthConfig,
    /// Mosquitto's `acl_file` (`--acl-file`): what each user may publish and receive. Without
    /// one, everything is allowed but publishing to `$SYS` and to or from `$share` topics.
    pub acl_file: Option<PathBuf>,
}

/// A policy's files, read again and waiting to be put in force.
#[derive(Debug)]
pub(crate) struct PreparedReload {
    acl: Option<Acl>,
    auth: ReadFiles,
}

/// A [`Security`], loaded.
#[derive(Debug)]
pub(crate) struct Policy {
    pub(crate) authenticator: Arc<Authenticator>,
    acl: RwLock<Acl>,
    /// Counts the ACL's reloads: a connection whose checks are of an older one takes the
    /// new rules before its next check (a revoked permission holds at once, as in Mosquitto).
    acl_generation: AtomicU64,
    acl_file: Option<PathBuf>,
    /// Whether the settings name any file, so that a reload has something to do.
    has_files: bool,
}

impl Policy {
    /// Reads the files `security` names.
    pub(crate) fn load(security: &Security) -> Result<Self, Error> {
        let acl = match &security.acl_file {
            Some(path) => Acl::from_file(path)?,
            None => Acl::allow_all(),
        };
        let auth = &security.auth;
        Ok(Self {
            authenticator: Arc::new(Authenticator::new(auth.clone())?),
            acl: RwLock::new(acl),
            acl_generation: AtomicU64::new(0),
            acl_file: security.acl_file.clone(),
            has_files: auth.password_file.is_some()
                || auth.jwt.is_some()
                || security.acl_file.is_some(),
        })
    }

    /// Reads the files again, without putting them in force: a broken file is an error that
    /// names it, and [`Self::commit_reload`] of what every policy read makes the reload all or
    /// nothing.
    pub(crate) fn reload_prepared(&self) -> Result<Option<PreparedReload>, Error> {
        if !self.has_files {
            return Ok(None);
        }
        Ok(Some(PreparedReload {
            acl: self.acl_file.as_deref().map(Acl::from_file).transpose()?,
            auth: self.authenticator.read_files()?,
        }))
    }

    /// Puts what [`Self::reload_prepared`] read in force; returns whether there was any.
    /// Connected clients are checked against the new ACL from their next message on (see
    /// [`Self::current_acl`]); a new password file or key applies to the next CONNECT.
    pub(crate) fn commit_reload(&self, prepared: Option<PreparedReload>) -> bool {
        let Some(prepared) = prepared else {
            return false;
        };
        self.authenticator.install(prepared.auth);
        if let Some(acl) = prepared.acl {
            *self.acl.write().unwrap_or_else(|p| p.into_inner()) = acl;
            self.acl_generation.fetch_add(1, Ordering::Release);
        }
        true
    }

    /// The checks for a client that authenticated as `identity`, or `None` when nothing
    /// restricts it beyond what every client is refused (no ACL file, no token rules).
    pub(crate) fn client_acl(&self, identity: &Identity, client_id: &str) -> Option<ClientAcl> {
        if self.acl_file.is_none() && identity.rules.is_none() {
            return None;
        }
        let acl = self.acl.read().unwrap_or_else(|p| p.into_inner()).clone();
        let rules = identity.rules.as_ref().map(ClientRules::from_token);
        Some(acl.for_client(identity.user.as_deref(), client_id, rules))
    }

    /// Which reload of the ACL file [`Self::client_acl`] and [`Self::current_acl`] give.
    pub(crate) fn acl_generation(&self) -> u64 {
        self.acl_generation.load(Ordering::Acquire)
    }

    /// `client`'s checks against the ACL in force now (after a reload).
    pub(crate) fn current_acl(
        &self,
        client: &ClientAcl,
        user: Option<&str>,
        client_id: &str,
    ) -> ClientAcl {
        self.acl
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .rebind(client, user, client_id)
    }
}

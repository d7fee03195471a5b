//! A security policy as the broker runs it: who may connect (the authenticator) and what they
//! may do (the ACL), one for the broker and one for each listener with a [`Security`] of its
//! own.

use std::path::PathBuf;
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
    /// Connections keep the rules they were given at CONNECT.
    pub(crate) fn commit_reload(&self, prepared: Option<PreparedReload>) -> bool {
        let Some(prepared) = prepared else {
            return false;
        };
        self.authenticator.install(prepared.auth);
        if let Some(acl) = prepared.acl {
            *self.acl.write().unwrap_or_else(|p| p.into_inner()) = acl;
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
}

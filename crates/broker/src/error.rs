//! The one error type of this crate.

use std::net::SocketAddr;
use std::path::PathBuf;

/// What can go wrong starting or using a broker.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A listener could not bind its address.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A bridge's configuration is not usable.
    #[error("bridge {name:?}: {reason}")]
    Bridge {
        /// The bridge's name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The broker has shut down.
    #[error("the broker has shut down")]
    Shutdown,
    /// A topic or filter given to the in-process handle is not valid.
    #[error(transparent)]
    Topic(#[from] rallymq_topic::Error),
    /// The TLS certificate, key or CA file could not be used.
    #[error("TLS: {0}")]
    Tls(String),
    /// More than 255 listeners have a security policy of their own.
    #[error("at most 255 listeners may have security settings of their own")]
    TooManyPolicies,
    /// A TLS listener is configured without certificate and key files.
    #[error("a TLS listener needs a certificate and a key (--cert, --key)")]
    TlsNotConfigured,
    /// The ACL file cannot be read.
    #[error("cannot read the ACL file {}: {source}", path.display())]
    AclFileRead {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line of the ACL file is not valid in Mosquitto's `acl_file` syntax.
    #[error("{}:{line}: {problem}", path.display())]
    AclFileSyntax {
        /// The file.
        path: PathBuf,
        /// The line, counted from 1.
        line: usize,
        /// What is wrong with it.
        problem: crate::acl::AclProblem,
    },
    /// The cluster's NATS servers cannot be reached, or its settings are not valid.
    #[error("cluster: {0}")]
    Cluster(String),
    /// The store could not be opened or read.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// A password or key file could not be read.
    #[error("cannot read {path}: {source}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A password file could not be written.
    #[error("cannot write {path}: {source}")]
    WriteFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line of a password file is not `user:hash` in a known format. The line itself is
    /// never quoted: it might hold a plain-text password.
    #[error("{path}, line {line}: {reason}")]
    PasswordFile {
        /// The file.
        path: PathBuf,
        /// The line number, from 1.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A password could not be hashed (no randomness for its salt).
    #[error("cannot hash the password: {reason}")]
    PasswordHash {
        /// Why.
        reason: String,
    },
    /// A user name cannot be written to a password file.
    #[error("{reason}")]
    UserName {
        /// Why.
        reason: String,
    },
    /// The JSON Web Token key file holds no usable key.
    #[error("JWT key {path}: {reason}")]
    JwtKey {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

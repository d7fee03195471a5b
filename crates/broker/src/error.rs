//! The one error type of this crate.

use std::net::SocketAddr;

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
    /// The broker has shut down.
    #[error("the broker has shut down")]
    Shutdown,
    /// A topic or filter given to the in-process handle is not valid.
    #[error(transparent)]
    Topic(#[from] rallymq_topic::Error),
    /// The TLS certificate, key or CA file could not be used.
    #[error("TLS: {0}")]
    Tls(String),
    /// A TLS listener is configured without certificate and key files.
    #[error("a TLS listener needs a certificate and a key (--cert, --key)")]
    TlsNotConfigured,
    /// The store could not be opened or read.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

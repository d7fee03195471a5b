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
    /// The broker has shut down.
    #[error("the broker has shut down")]
    Shutdown,
    /// A topic or filter given to the in-process handle is not valid.
    #[error(transparent)]
    Topic(#[from] rallymq_topic::Error),
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
    /// The store could not be opened or read.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

//! The data mover: the operator's own binary (`residency-operator mover ...`), run from its own
//! image as Pods on the source and destination members of a Storage workload's move. The
//! source serves its volume, each destination pulls it directly, over mutual TLS with keys made
//! for that move ([`tls`]); the data passes through no third location. [`manifest`] is the
//! independent check: every entry's path, type, size, mode and SHA-256, and one digest over
//! them, computed on each side.

pub mod manifest;
pub mod tls;
pub mod transfer;

/// Errors of the mover.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The network failed.
    #[error("network: {0}")]
    Net(#[source] std::io::Error),
    /// Keys or the TLS handshake failed.
    #[error("tls: {0}")]
    Tls(String),
    /// The other side said something unexpected.
    #[error("protocol: {0}")]
    Protocol(String),
}

impl Error {
    /// Stable category.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Io { .. } => "io",
            Error::Net(_) => "network",
            Error::Tls(_) => "tls",
            Error::Protocol(_) => "protocol",
        }
    }

    /// An I/O error about `path`.
    pub fn io(path: &std::path::Path, source: std::io::Error) -> Error {
        Error::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

#[cfg(test)]
mod tests;

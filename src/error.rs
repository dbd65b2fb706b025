//! The nftpol crate's error enum: what ends a command. Invalid objects are
//! not errors here: they are skipped and reported one by one.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Compiler(#[from] policy_compiler::Error),
    #[error(transparent)]
    Eval(#[from] policy_compiler::eval::EvalError),
    #[error(transparent)]
    Netlink(#[from] crate::netlink::NetlinkError),
}

impl Error {
    /// A short, stable label for metrics and logs.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Io { .. } => "io",
            Error::Usage(_) => "usage",
            Error::Compiler(e) => e.metric_label(),
            Error::Eval(_) => "eval",
            Error::Netlink(_) => "netlink",
        }
    }
}

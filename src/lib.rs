//! The nftpol agent and CLI as a library, so the binary, the e2e tests and
//! the benchmarks share one implementation. The pure compiler lives in the
//! `policy-compiler` crate; this crate holds everything that does I/O.

pub mod agent;
pub mod cli;
pub mod error;
pub mod ifmap;
pub mod manifests;
pub mod netlink;
pub mod report;
pub mod revoke;

pub use error::Error;

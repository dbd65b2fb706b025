//! nftpol's policy compiler: Kubernetes objects -> per-node ruleset IR ->
//! nft text, plus the semantic evaluator that says what upstream
//! NetworkPolicy semantics allow. Pure: no I/O, no async, no clocks.

#![forbid(unsafe_code)]

pub mod admin;
pub mod apisyntax;
pub mod audit;
pub mod compile;
pub mod convert;
pub mod counters;
pub mod diff;
pub mod error;
pub mod eval;
pub mod fake;
#[cfg(any(test, feature = "fixtures"))]
pub mod fixture;
pub mod flowaudit;
pub mod incr;
pub mod index;
pub mod interp;
pub mod ipblock;
pub mod ir;
pub mod l2fast;
pub mod manifest;
pub mod matrix;
pub mod model;
pub mod names;
pub mod related;
pub mod render;
pub mod selector;
pub mod srcval;

pub use compile::{compile, compile_node, compile_node_with};
pub use error::{Error, ObjectError};
pub use eval::{allowed, Decision, Endpoint};
pub use index::Cluster;
pub use ir::Ruleset;
pub use manifest::{parse, Loaded, Object};
pub use model::Direction;
pub use srcval::NodeNet;

#[cfg(test)]
mod incr_tests;
#[cfg(test)]
mod prop_tests;
#[cfg(test)]
mod related_prop_tests;
#[cfg(test)]
mod upstream_tests;

//! nftpol's policy compiler: Kubernetes objects -> per-node ruleset IR ->
//! nft text, plus the semantic evaluator that says what upstream
//! NetworkPolicy semantics allow. Pure: no I/O, no async, no clocks.

pub mod diff;
pub mod ipblock;
pub mod ir;
pub mod render;

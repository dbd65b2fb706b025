//! Test scaffolding shared by nftpol's unit tests, integration tests and
//! benches. It is only ever a dev-dependency, so nothing here reaches the
//! release binary; test-only helpers of any kind (scratch namespaces,
//! privilege checks, fakes of external services) belong in this crate
//! rather than in the product crates.
//!
//! - [`netns`]: scratch network namespaces (`nftpol-t-…`) removed on drop.
//! - [`privilege`]: the one place a test decides to skip for want of root
//!   or tools, and where CI (`CI=true`) turns that skip into a failure.
//! - [`run_by_cargo_bench`]: lets a heavy bench do nothing under `cargo test`.
//! - [`fakeapi`]: a fake Kubernetes API server (HTTP list/watch) for the
//!   agent's kube code.
//! - [`synth`]: synthetic clusters of any size for benchmarks.
//!
//! A test in the nftpol crate (tests/shipped_binary.rs) checks that none of
//! this is linked into the `nftpol` binary.

#![forbid(unsafe_code)]

pub mod fakeapi;
pub mod netns;
pub mod privilege;
pub mod synth;

pub use netns::Netns;
pub use privilege::{in_ci, require_root, skip};

/// Whether this bench binary was started by `cargo bench`, which passes
/// `--bench`. `cargo test --all-targets` runs bench targets too (without
/// it, whatever `test = false` says), so a bench that needs root and
/// minutes returns at once unless this holds.
pub fn run_by_cargo_bench() -> bool {
    std::env::args().any(|a| a == "--bench")
}

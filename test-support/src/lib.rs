//! Test scaffolding shared by nftpol's unit tests, integration tests and
//! benches. It is only ever a dev-dependency, so nothing here reaches the
//! release binary; test-only helpers of any kind (scratch namespaces,
//! privilege checks, fakes of external services) belong in this crate
//! rather than in the product crates.
//!
//! - [`netns`]: scratch network namespaces (`nftpol-t-…`) removed on drop.
//! - [`privilege`]: the one place a test decides to skip for want of root
//!   or tools, and where CI (`CI=true`) turns that skip into a failure.

pub mod netns;
pub mod privilege;

pub use netns::Netns;
pub use privilege::{in_ci, require_root, skip};

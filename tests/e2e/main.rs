//! nftpol end-to-end tests on a simulated cluster built from network
//! namespaces (root only; every test skips with a message otherwise).
//!
//! Layout: `netns` builds the topology, `probe` runs servers and clients
//! in pod namespaces, `cluster` ties both to the Kubernetes manifests and
//! programs the nodes with the nftpol binary, `oracle` is the compiler's
//! semantic evaluator, and the remaining modules are the test cases.

/// Returns early (passing) when the environment cannot build namespaces.
/// Defined before the modules so every test module can use it.
macro_rules! require_root {
    () => {
        if !crate::netns::can_run() {
            return;
        }
    };
}

mod agent;
mod cluster;
mod deploy;
mod generated;
mod netns;
mod oracle;
mod probe;
mod restart;
mod scenarios;
mod sctp;
mod selftest;

use cluster::SimCluster;

#[test]
fn smoke_no_policies_all_reachable() {
    require_root!();
    let mut c = SimCluster::upstream_model();
    c.check("no policies");
}

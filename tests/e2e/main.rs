//! nftpol end-to-end tests on a simulated cluster built from network
//! namespaces (root only; every test skips with a message otherwise, and
//! fails instead under CI, `CI=true`).
//!
//! Harness: `netns` builds the topology (two nodes joined by a veth
//! fabric, pods on routed veths or on a bridge) and removes it on drop,
//! `probe` runs servers and clients inside pod namespaces, `cluster` ties
//! both to the Kubernetes manifests, programs the nodes with the nftpol
//! binary and compares the probed matrix with `oracle` (the compiler's
//! semantic evaluator).
//!
//! Cases: `scenarios` (the upstream netpol e2e, as one table of steps),
//! `admin` (the network-policy-api conformance scenarios for both admin
//! policy API generations, and how the tiers meet NetworkPolicy),
//! `host` (bridged nodes, node/pod-to-node, Service DNAT, hostNetwork),
//! `sctp` (SCTP by raw packets), `attacker` and `l2` (hostile pods: forged
//! sources, ND shapes, hand-built frames on a bridge), `icmp_related`
//! (ICMP errors conntrack relates to other pods' connections), `tunnel`
//! (forged sources inside packets for the node's VXLAN device), `v4only`
//! (no IPv6 exemption for an IPv4-only pod), `live_explain` (`explain --live` against
//! each node's kernel, and a tampered rule), `hits` (rule counters raised
//! by real connections, per policy and in `explain --live`),
//! `generated` (random policies), `restart` (re-applies and agent restarts
//! under continuous probes), `revoke` (the agent cutting open connections
//! a policy change denies), `agent` (the long-running agent),
//! `verdict_log` (the agents' nflog reader under real denied, flooded and
//! staged probes), `selftest`
//! (the harness catches what it must), `deploy` (what deploy/ gives a
//! cluster: types, RBAC, DaemonSet fields; no root needed but for the
//! listen test), `kind_script` (the kind e2e script against stub tools;
//! no root needed).

/// Returns early (passing, or failing under CI) when the environment
/// cannot build namespaces. Defined before the modules so every test
/// module can use it.
macro_rules! require_root {
    () => {
        if !crate::netns::can_run(module_path!()) {
            return;
        }
    };
}

/// Returns early, saying SKIP, when bridged traffic cannot reach
/// nftables' inet hooks (br_netfilter not loaded): the bridged variants.
/// Under CI a skip is a failure, as for every privileged test.
macro_rules! require_br_netfilter {
    () => {
        if !crate::netns::br_netfilter_available() {
            nftpol_test_support::skip(
                module_path!(),
                "br_netfilter is not loaded; the bridged variant needs it",
            );
            return;
        }
    };
}

mod admin;
mod agent;
mod attacker;
mod cluster;
mod deploy;
mod evasion;
mod generated;
mod hits;
mod host;
mod icmp_related;
mod kind_script;
mod l2;
mod live_explain;
mod netns;
mod oracle;
mod probe;

mod restart;
mod revoke;
mod scenarios;
mod sctp;
mod selftest;
mod tunnel;
mod v4only;
mod verdict_log;

use cluster::SimCluster;

#[test]
fn smoke_no_policies_all_reachable() {
    require_root!();
    let mut c = SimCluster::upstream_model();
    c.check("no policies");
}

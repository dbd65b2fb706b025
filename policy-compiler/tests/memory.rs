//! The cluster index's heap per pod, counted by an instrumented allocator.
//! The agent keeps every pod of the cluster, so the bytes per pod set its
//! memory at the Kubernetes scalability limits (150,000 pods). The bound
//! catches a structure that copies or over-allocates per pod again: a set
//! per address and a B-tree node per label map held 1,781 bytes a pod
//! here, against 772 now.

use nftpol_test_support::synth::{self, Shape};
use policy_compiler::Cluster;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use std::alloc::System;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const PODS: usize = 20_000;

#[test]
fn the_index_holds_a_pod_in_under_1000_heap_bytes() {
    let region = Region::new(GLOBAL);
    let mut c = Cluster::new();
    for k in 0..PODS {
        c.apply_pod(synth::pod(Shape::LIMITS, k));
    }
    let stats = region.change();
    let live = stats.bytes_allocated as isize - stats.bytes_deallocated as isize;
    let per_pod = live / PODS as isize;
    eprintln!("{live} live heap bytes for {PODS} pods: {per_pod} a pod");
    assert_eq!(c.pod_count(), PODS);
    assert_eq!(
        c.claimants(synth::pod_ipv4(PODS - 1)).len(),
        1,
        "every address leads to its pod"
    );
    assert!(per_pod < 1000, "{per_pod} heap bytes a pod");
}

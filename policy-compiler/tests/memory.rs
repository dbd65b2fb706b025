//! The cluster index's heap per pod and per policy, counted by an
//! instrumented allocator. The agent keeps every pod and policy of the
//! cluster, so these set its memory at the Kubernetes scalability limits
//! (150,000 pods, 20,000 policies). The bounds catch a structure that
//! copies or over-allocates per object again: a set per address and a
//! B-tree node per label map held 1,781 bytes a pod here, a copy of each
//! pod's key per address 743, against 619 now; a B-tree map per selector
//! held 1,371 bytes a policy, against 647 now.

use nftpol_test_support::synth::{self, Shape};
use policy_compiler::Cluster;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use std::alloc::System;
use std::sync::Mutex;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// The allocator's counts are the whole process's: the tests here take
/// turns, or each would count the other's objects.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

const PODS: usize = 20_000;

#[test]
fn the_index_holds_a_pod_in_under_680_heap_bytes() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
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
    assert!(per_pod < 680, "{per_pod} heap bytes a pod");
}

const POLICIES: usize = 20_000;

#[test]
fn the_index_holds_a_policy_in_under_700_heap_bytes() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let region = Region::new(GLOBAL);
    let mut c = Cluster::new();
    for i in 0..POLICIES {
        c.apply_policy(synth::policy(Shape::LIMITS, i));
    }
    let stats = region.change();
    let live = stats.bytes_allocated as isize - stats.bytes_deallocated as isize;
    let per_policy = live / POLICIES as isize;
    eprintln!("{live} live heap bytes for {POLICIES} policies: {per_policy} a policy");
    assert_eq!(c.policy_count(), POLICIES);
    assert!(per_policy < 700, "{per_policy} heap bytes a policy");
}

//! Compile-time benchmark on a synthetic cluster of 20k pods, 2k
//! namespaces and 5k policies (100 nodes): build the index, compile one
//! node, render it; then the same cluster with 100 Node objects and 500
//! admin policies (both API generations, both tiers) on top, compiled
//! again; then the incremental update (`policy_compiler::incr`) of that
//! node after one event of each kind, against the full compile.
//! Run: `cargo bench -p policy-compiler --bench compile`.
//! `NFTPOL_BENCH_PROFILE=admin` compiles the admin cluster's node alone,
//! over and over (a second's worth of runs, at least 20), so that a
//! profiler attached to the bench sees nothing else.
//! Prints medians over repeated runs; results go to docs/BENCHMARKS.md.

use nftpol_test_support::synth::{self, Shape};
use policy_compiler::incr::{Incremental, ObjectKey};
use policy_compiler::model::Pod;
use policy_compiler::{Cluster, NodeNet};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time<T>(runs: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut times = Vec::with_capacity(runs);
    let mut last = None;
    for _ in 0..runs {
        let t = Instant::now();
        let out = f();
        times.push(t.elapsed());
        last = Some(out);
    }
    (median(times), last.expect("at least one run"))
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this
    // without it, as a smoke test: keep that quick.
    let quick = !std::env::args().any(|a| a == "--bench");
    let (shape, runs) = if quick {
        (
            Shape {
                namespaces: 20,
                pods: 200,
                policies: 50,
                nodes: 4,
            },
            1,
        )
    } else {
        (Shape::LARGE, 11)
    };
    if std::env::var("NFTPOL_BENCH_PROFILE").as_deref() == Ok("admin") {
        profile_admin(shape, quick);
        return;
    }
    let (t_index, cluster) = time(runs.min(3), || synth::cluster(shape));
    // node-007 of the large shape; the smoke test's few nodes wrap round
    // so that its node has pods to change.
    let node = synth::node_name(7 % shape.nodes);
    let (t_compile, rs) = time(runs, || policy_compiler::compile(&cluster, &node));
    let (t_render, text) = time(runs, || policy_compiler::render::render_script(&rs));
    let all_nodes = if quick { 1 } else { 3 };
    let (t_all, n) = time(all_nodes, || {
        (0..shape.nodes)
            .map(|i| policy_compiler::compile(&cluster, &synth::node_name(i)).rule_count())
            .sum::<usize>()
    });
    println!(
        "shape: {} pods, {} namespaces, {} policies, {} nodes",
        shape.pods, shape.namespaces, shape.policies, shape.nodes
    );
    println!(
        "node {node}: {} chains, {} rules, {} sets, {} elements, {} bytes of nft text",
        rs.chains.len(),
        rs.rule_count(),
        rs.sets.len(),
        rs.element_count(),
        text.len()
    );
    println!("build index (median):        {:>10.2?}", t_index);
    println!("compile one node (median):   {:>10.2?}", t_compile);
    println!("render nft text (median):    {:>10.2?}", t_render);
    println!(
        "compile all {} nodes (median): {:>10.2?} ({} rules in all)",
        shape.nodes, t_all, n
    );

    let admin = if quick { 20 } else { ADMIN_POLICIES };
    let cluster = synth::cluster_with_admin(shape, admin);
    let (t_admin, rs) = time(runs, || policy_compiler::compile(&cluster, &node));
    let (t_admin_render, text) = time(runs, || policy_compiler::render::render_script(&rs));
    println!(
        "with {admin} admin policies and {} Nodes: {} chains, {} rules, {} sets, {} elements, {} bytes",
        shape.nodes,
        rs.chains.len(),
        rs.rule_count(),
        rs.sets.len(),
        rs.element_count(),
        text.len()
    );
    println!("compile one node, admin (median): {:>10.2?}", t_admin);
    println!(
        "render nft text, admin (median):  {:>10.2?}",
        t_admin_render
    );

    let events = if quick { 6 } else { 60 };
    incremental(shape, &node, synth::cluster(shape), events, "");
    incremental(shape, &node, cluster, events, ", admin");
}

/// The admin compile alone, repeated for a profiler (see the module
/// comment).
fn profile_admin(shape: Shape, quick: bool) {
    let admin = if quick { 20 } else { ADMIN_POLICIES };
    let cluster = synth::cluster_with_admin(shape, admin);
    let node = synth::node_name(7 % shape.nodes);
    let start = Instant::now();
    let mut times = Vec::new();
    while times.len() < 20 || start.elapsed() < Duration::from_secs(1) {
        let t = Instant::now();
        std::hint::black_box(policy_compiler::compile(&cluster, &node));
        times.push(t.elapsed());
    }
    let runs = times.len();
    println!(
        "compile one node, admin (median of {runs}): {:>10.2?}",
        median(times)
    );
}

/// One change to the cluster, as the agent applies it: the incremental
/// engine is told what the object fed before and feeds after.
fn change(
    eng: &mut Incremental,
    c: &mut Cluster,
    key: ObjectKey,
    f: impl FnOnce(&mut Cluster) -> bool,
) {
    let before = eng.mark(c, &key);
    if f(c) {
        eng.note(before);
        let after = eng.mark(c, &key);
        eng.note(after);
    }
}

fn pod_key(p: &Pod) -> ObjectKey {
    ObjectKey::Pod {
        namespace: p.namespace.clone(),
        name: p.name.clone(),
    }
}

/// Median and largest time of `mark` + change + `update` on `node` per
/// event kind (`events` of each, round robin), and a full compile of the
/// same node in the same run for scale.
fn incremental(shape: Shape, node: &str, mut c: Cluster, events: usize, what: &str) {
    let net = NodeNet::default();
    let mut eng = Incremental::new(node);
    eng.update(&c, &net);
    let locals: Vec<Pod> = c
        .pods()
        .filter(|p| p.node_name.as_deref() == Some(node) && p.is_policy_pod())
        .cloned()
        .collect();
    assert!(!locals.is_empty(), "node {node} has no pods to change");
    let admin = c.admin_policies().count();
    let mut times: BTreeMap<&str, Vec<Duration>> = BTreeMap::new();
    for i in 0..events * 5 {
        let t = Instant::now();
        let kind = match i % 5 {
            0 => {
                let mut p = locals[i / 5 % locals.len()].clone();
                p.labels
                    .insert("bench-flip".into(), format!("{}", i / 5 % 2));
                change(&mut eng, &mut c, pod_key(&p), |c| c.apply_pod(p.clone()));
                "local pod relabelled"
            }
            1 => {
                let target = &locals[i / 5 % locals.len()];
                let mut p = synth::policy(shape, i);
                p.namespace = target.namespace.clone();
                p.name = format!("bench-{i}");
                let key = ObjectKey::Policy {
                    namespace: p.namespace.clone(),
                    name: p.name.clone(),
                };
                change(&mut eng, &mut c, key, |c| c.apply_policy(p));
                "new policy"
            }
            2 => {
                let mut p = synth::pod(shape, shape.pods + i);
                p.node_name = Some(synth::node_name(0));
                change(&mut eng, &mut c, pod_key(&p), |c| c.apply_pod(p.clone()));
                "peer pod added"
            }
            3 if admin > 0 => {
                let p = synth::admin_policy(shape, admin + i);
                let key = ObjectKey::Admin {
                    kind: p.kind,
                    name: p.name.clone(),
                };
                change(&mut eng, &mut c, key, |c| c.apply_admin_policy(p));
                "admin policy added"
            }
            4 if admin > 0 => {
                let mut n = synth::node(i / 5 % shape.nodes);
                n.labels.insert("bench-flip".into(), format!("{}", i % 2));
                change(&mut eng, &mut c, ObjectKey::Node(n.name.clone()), |c| {
                    c.apply_node(n)
                });
                "Node relabelled"
            }
            _ => continue,
        };
        eng.update(&c, &net);
        times.entry(kind).or_default().push(t.elapsed());
    }
    let (t_full, _) = time(5, || policy_compiler::compile(&c, node));
    for (kind, mut v) in times {
        v.sort();
        println!(
            "incremental update{what}, {kind} (median, max of {}): {:>10.2?} {:>10.2?}",
            v.len(),
            v[v.len() / 2],
            v[v.len() - 1]
        );
    }
    println!("full compile{what} of the same node (median): {t_full:>10.2?}");
}

/// Admin policies on top of the NetworkPolicies.
const ADMIN_POLICIES: usize = 500;

//! Compile-time benchmark on a synthetic cluster of 20k pods, 2k
//! namespaces and 5k policies (100 nodes): build the index, compile one
//! node, render it; then the same cluster with 100 Node objects and 500
//! admin policies (both API generations, both tiers) on top, compiled
//! again. Run: `cargo bench -p policy-compiler --bench compile`.
//! Prints medians over repeated runs; results go to docs/BENCHMARKS.md.

use nftpol_test_support::synth::{self, Shape};
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
    let (t_index, cluster) = time(runs.min(3), || synth::cluster(shape));
    let node = synth::node_name(7);
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
}

/// Admin policies on top of the NetworkPolicies.
const ADMIN_POLICIES: usize = 500;

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
//! `NFTPOL_BENCH_PROFILE=events` runs the agent bench's three events
//! (benches/agent.rs: a local pod's label flipping a policy's selection,
//! a new policy, a peer pod added) through the incremental update alone,
//! `NFTPOL_BENCH_EVENTS` of them (default 300), and prints p50/p99/max
//! per kind: the compile's share of an event at the cluster of
//! `NFTPOL_BENCH_SHAPE` (`limits`: 150k pods, 110 on the node; else the
//! 20k-pod shape), without the minutes the agent bench's fake API server
//! takes to load it.
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
    match std::env::var("NFTPOL_BENCH_PROFILE").as_deref() {
        Ok("admin") => return profile_admin(shape, quick),
        Ok("events") => return profile_events(quick),
        _ => {}
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

/// The agent bench's events through the incremental update alone (see
/// the module comment).
fn profile_events(quick: bool) {
    use policy_compiler::model::*;
    use policy_compiler::selector::Selector;
    const NODE: &str = "node-007";
    let limits = std::env::var("NFTPOL_BENCH_SHAPE").as_deref() == Ok("limits");
    let shape = match (quick, limits) {
        (true, _) => Shape {
            namespaces: 20,
            pods: 200,
            policies: 50,
            nodes: 8,
        },
        (false, true) => Shape::LIMITS,
        (false, false) => Shape::LARGE,
    };
    let events: usize = std::env::var("NFTPOL_BENCH_EVENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if quick { 9 } else { 300 });
    let mut c = synth::cluster(shape);
    if limits && !quick {
        // As benches/agent.rs: the kubelet's default maximum on the node.
        let on = c
            .pods()
            .filter(|p| p.node_name.as_deref() == Some(NODE))
            .count();
        let moved: Vec<Pod> = c
            .pods()
            .filter(|p| p.node_name.as_deref() != Some(NODE))
            .step_by(997)
            .take(110usize.saturating_sub(on))
            .cloned()
            .collect();
        for mut p in moved {
            p.node_name = Some(NODE.into());
            c.apply_pod(p);
        }
    }
    let sel = |k: &str, v: &str| Selector {
        match_labels: [(k.to_string(), v.to_string())].into(),
        match_expressions: vec![],
    };
    let policy = |ns: &str, name: String, target: Selector, from: Selector, port: u16| Policy {
        namespace: ns.into(),
        name,
        pod_selector: target,
        ingress: Some(vec![PolicyRule {
            peers: Some(vec![Peer::Pods {
                pod_selector: Some(from),
                namespace_selector: None,
            }]),
            ports: Some(vec![PortSpec {
                protocol: Protocol::Tcp,
                port: PortRef::Range(port, port),
            }]),
        }]),
        egress: None,
        audit: Default::default(),
    };
    let locals: Vec<Pod> = c
        .pods()
        .filter(|p| p.node_name.as_deref() == Some(NODE) && p.is_policy_pod())
        .cloned()
        .collect();
    assert!(!locals.is_empty(), "{NODE} has pods");
    let net = NodeNet::default();
    let mut eng = Incremental::new(NODE);
    eng.update(&c, &net);
    let mut t = locals[0].clone();
    t.labels.insert("bench".into(), "p".into());
    t.labels.insert("flip".into(), "off".into());
    let ns = t.namespace.clone();
    change(&mut eng, &mut c, pod_key(&t), |c| c.apply_pod(t.clone()));
    for p in [
        policy(
            &ns,
            "bench-peers".into(),
            sel("bench", "p"),
            sel("role", "bench-peer"),
            9999,
        ),
        policy(
            &ns,
            "bench-flip".into(),
            sel("flip", "on"),
            sel("app", "app-0"),
            7777,
        ),
    ] {
        let key = ObjectKey::Policy {
            namespace: p.namespace.clone(),
            name: p.name.clone(),
        };
        change(&mut eng, &mut c, key, |c| c.apply_policy(p));
    }
    eng.update(&c, &net);
    let mut times: BTreeMap<&str, Vec<Duration>> = BTreeMap::new();
    for i in 0..events {
        let start = Instant::now();
        let kind = match i % 3 {
            0 => {
                let mut p = t.clone();
                let flip = if (i / 3) % 2 == 0 { "on" } else { "off" };
                p.labels.insert("flip".into(), flip.into());
                change(&mut eng, &mut c, pod_key(&p), |c| c.apply_pod(p.clone()));
                "pod label change"
            }
            1 => {
                let target = &locals[(i / 3) % locals.len()];
                let pol = policy(
                    &target.namespace,
                    format!("bn-{i}"),
                    Selector {
                        match_labels: target
                            .labels
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .collect(),
                        match_expressions: vec![],
                    },
                    sel("app", &format!("app-{}", i % 5)),
                    10_000 + (i % 50_000) as u16,
                );
                let key = ObjectKey::Policy {
                    namespace: pol.namespace.clone(),
                    name: pol.name.clone(),
                };
                change(&mut eng, &mut c, key, |c| c.apply_policy(pol));
                "new policy"
            }
            _ => {
                let p = Pod {
                    namespace: ns.clone(),
                    name: format!("bench-peer-{i}"),
                    labels: [("role".to_string(), "bench-peer".to_string())].into(),
                    node_name: Some("node-b".into()),
                    host_network: false,
                    ips: vec![std::net::IpAddr::V4(std::net::Ipv4Addr::new(
                        10,
                        200,
                        ((i / 250) % 250) as u8,
                        (i % 250 + 1) as u8,
                    ))],
                    named_ports: vec![],
                    terminal: false,
                };
                change(&mut eng, &mut c, pod_key(&p), |c| c.apply_pod(p.clone()));
                "peer pod added"
            }
        };
        eng.update(&c, &net);
        times.entry(kind).or_default().push(start.elapsed());
    }
    println!(
        "incremental update at {NODE} of {} pods, {} policies ({} local pods), {events} events:",
        shape.pods,
        shape.policies,
        locals.len()
    );
    println!("| event | n | p50 | p99 | max |");
    println!("| --- | --- | --- | --- | --- |");
    for (kind, mut v) in times {
        v.sort();
        let at = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
        println!(
            "| {kind} | {} | {:.2?} | {:.2?} | {:.2?} |",
            v.len(),
            at(0.5),
            at(0.99),
            v[v.len() - 1]
        );
    }
}

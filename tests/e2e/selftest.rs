//! Tests of the harness itself: a comparison that cannot fail proves
//! nothing, so these break the data plane (or the expectation) on purpose
//! and assert that exactly the broken cells are reported.

use crate::cluster::SimCluster;
use crate::probe::{Probe, Proto};
use crate::scenarios::np;
use std::time::Instant;

/// A policy with exactly one allow rule: x/a accepts only x/b.
fn x_a_from_x_b() -> String {
    np(
        "x",
        "x-a-allows-x-b",
        "podSelector: {matchLabels: {pod: a}}\ningress:\n- from:\n  - podSelector: {matchLabels: {pod: b}}",
    )
}

#[test]
fn harness_catches_a_removed_allow_rule() {
    require_root!();
    let mut c = SimCluster::upstream_model();
    c.late_retries = false;
    c.put_policy(&x_a_from_x_b());
    let dir = c.program();
    // x/a's node gets the compiled ruleset minus its one allow rule.
    let xa = c.pod_index("x", "a");
    let xb = c.pod_index("x", "b");
    let node = c.topo.pods[xa].node.clone();
    let script = c.compile(&node, &dir);
    let broken: Vec<&str> = script
        .lines()
        .filter(|l| !l.contains("x/x-a-allows-x-b ingress[0]") || l.contains("drop"))
        .collect();
    assert!(
        broken.len() < script.lines().count(),
        "no rule commented x/x-a-allows-x-b ingress[0] in:\n{script}"
    );
    c.load_nft(&node, &(broken.join("\n") + "\n"));

    let r = c.verify_programmed("allow rule removed on purpose", Instant::now(), |_| {});
    eprintln!("{}", r.text);
    // Exactly the x/b -> x/a cells (2 families x 2 protocols x 2 ports)
    // must show up, each as wrongly dropped.
    assert_eq!(r.mismatches.len(), 8, "{}", r.text);
    for (p, expected, observed) in &r.mismatches {
        assert_eq!((p.src, p.dst), (xb, xa), "{}", r.text);
        assert!(*expected && !*observed, "{}", r.text);
    }
    assert!(
        r.text.contains("table inet nftpol"),
        "report lacks the ruleset"
    );
    assert!(r.text.contains("expected"), "report lacks the matrices");

    // And the intact ruleset passes again.
    c.late_retries = true;
    c.check("ruleset restored");
}

#[test]
fn harness_catches_flipped_expectations() {
    require_root!();
    let mut c = SimCluster::upstream_model();
    c.late_retries = false;
    c.put_policy(&x_a_from_x_b());
    let (xa, xb, ya) = (
        c.pod_index("x", "a"),
        c.pod_index("x", "b"),
        c.pod_index("y", "a"),
    );
    let probes = crate::probe::all_probes(c.pods.len(), &[false, true]);
    let find = |src, dst, v6, proto| {
        probes
            .iter()
            .position(|p: &Probe| {
                (p.src, p.dst, p.v6, p.proto, p.port) == (src, dst, v6, proto, 80)
            })
            .expect("probe in matrix")
    };
    // y/a -> x/a is denied: pretend it should be allowed (the harness must
    // then see a "wrongly dropped" cell). x/b -> x/a is allowed: pretend
    // it should be denied (a "wrongly allowed" cell).
    let denied = find(ya, xa, true, Proto::Udp);
    let allowed = find(xb, xa, false, Proto::Tcp);
    let r = c.verify_with("expectations flipped on purpose", |e| {
        assert!(
            !e[denied] && e[allowed],
            "evaluator disagrees with the premise"
        );
        e[denied] = true;
        e[allowed] = false;
    });
    eprintln!("{}", r.text);
    let mut cells: Vec<_> = r.mismatches.iter().map(|(p, e, o)| (*p, *e, *o)).collect();
    cells.sort();
    let mut want = vec![
        (probes[denied], true, false),
        (probes[allowed], false, true),
    ];
    want.sort();
    assert_eq!(cells, want, "{}", r.text);
    assert_eq!(r.probes, probes.len());
    assert!(r.allowed > 0);
}

//! `nftpol explain --live` on the simulated cluster: after the nodes are
//! programmed, every node's kernel decides every flow it sees as the
//! compiler intends (every ordered pair of pods, through the node each
//! end sits on), and a rule inserted by hand into one node's table is
//! reported as a mismatch on that node only.

use crate::cluster::{SimCluster, X_A_FROM_Y};
use std::process::Command;

#[test]
fn live_explain_agrees_on_every_pair_and_reports_a_tampered_rule() {
    require_root!();
    let mut c = SimCluster::upstream_model();
    c.put_policy(X_A_FROM_Y);
    c.put_policy(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-egress-z, namespace: y}
spec:
  podSelector: {matchLabels: {pod: b}}
  policyTypes: [Egress]
  egress:
  - to: [{namespaceSelector: {matchLabels: {ns: z}}}]
"#,
    );
    let dir = c.program();
    let dir = dir.to_str().expect("utf-8 dir").to_string();
    let n = c.pods.len();
    let mut checked = 0;
    for s in 0..n {
        for d in 0..n {
            let (from, to) = (c.label(s), c.label(d));
            let mut nodes = vec![c.topo.pods[s].node.clone(), c.topo.pods[d].node.clone()];
            nodes.dedup();
            for node in nodes {
                let out = c.explain_live(&node, &dir, &from, &to);
                let t = String::from_utf8_lossy(&out.stdout);
                assert_eq!(
                    out.status.code(),
                    Some(0),
                    "{from} -> {to} on {node}: {t}{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                assert!(t.contains("the kernel agrees with the compiler"), "{t}");
                checked += 1;
            }
        }
    }
    assert!(checked >= n * n, "{checked} checks");

    // x/a sits on node1: a hand-inserted accept at the top of its ingress
    // chain admits z/c, which the policy does not.
    let a = c.pod_index("x", "a");
    let node = c.topo.pods[a].node.clone();
    let ins = Command::new("ip")
        .args(["netns", "exec", &c.topo.node(&node).netns, "nft"])
        .args(["insert", "rule", "inet", "nftpol", "ing_x_a", "accept"])
        .output()
        .expect("run nft");
    assert!(
        ins.status.success(),
        "{}",
        String::from_utf8_lossy(&ins.stderr)
    );
    let out = c.explain_live(&node, &dir, "z/c", "x/a");
    let t = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{t}");
    assert!(
        t.starts_with(&format!("MISMATCH on node {node}: the kernel ACCEPTS z/c")),
        "{t}"
    );
    // The other node's kernel is untouched and still agrees.
    let other = c
        .topo
        .nodes
        .iter()
        .map(|n| n.name.clone())
        .find(|n| *n != node)
        .expect("two nodes");
    let out = c.explain_live(&other, &dir, "z/c", "x/a");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

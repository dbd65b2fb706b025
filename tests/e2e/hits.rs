//! Per-rule counters on the simulated cluster: real connections raise the
//! counters of the policy rule that allowed them and of the default drop
//! that refused them, on the node that decided, read back per policy by
//! `nftpol hits`; `explain --live` shows the deciding rule's count.

use crate::cluster::{SimCluster, X_A_FROM_Y};
use crate::probe::{Probe, Proto};
use serde_json::Value;
use std::process::Output;

/// The standard output of a run that must succeed.
fn success(out: Output, what: &str) -> String {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// (matched, isolation drops) of one policy direction on `node`.
fn hits(c: &SimCluster, node: &str, policy: &str, direction: &str) -> (u64, u64) {
    let out = c.nftpol(node, &["hits", "--format", "json"]);
    let v: Value = serde_json::from_str(&success(out, "nftpol hits")).expect("hits JSON");
    v.as_array()
        .and_then(|rows| {
            rows.iter()
                .find(|r| r["policy"] == policy && r["direction"] == direction)
        })
        .map(|r| {
            (
                r["matched"].as_u64().unwrap_or(u64::MAX),
                r["isolation_drops"].as_u64().unwrap_or(u64::MAX),
            )
        })
        .unwrap_or_else(|| panic!("{policy} {direction} not on {node}: {v}"))
}

#[test]
fn allowed_probes_raise_their_policy_counters() {
    require_root!();
    let mut c = SimCluster::upstream_model();
    c.put_policy(X_A_FROM_Y);
    let dir = c.program();
    let dir = dir.to_str().expect("utf-8 dir").to_string();
    let xa = c.pod_index("x", "a");
    let ya = c.pod_index("y", "a");
    let zb = c.pod_index("z", "b");
    let node = c.topo.pods[xa].node.clone();
    assert_eq!(hits(&c, &node, "x/a-from-y", "ingress"), (0, 0));

    // Three allowed connections y/a -> x/a:80 and two refused from z/b.
    let probe = |src| Probe {
        src,
        dst: xa,
        v6: false,
        proto: Proto::Tcp,
        port: 80,
    };
    let probes = [probe(ya), probe(ya), probe(ya), probe(zb), probe(zb)];
    let expected = c.expected(&probes);
    assert_eq!(expected, [true, true, true, false, false]);
    assert_eq!(c.observe(&probes, &expected), expected);

    // Only a connection's first packet meets the pod chain (replies and
    // the rest pass as established): exactly one count per connection.
    // A refused SYN is retransmitted, so the drops count at least one
    // per connection.
    let (matched, drops) = hits(&c, &node, "x/a-from-y", "ingress");
    assert_eq!(matched, 3, "allowed connections on {node}");
    assert!(drops >= 2, "refused connections on {node}: {drops}");

    // explain --live names the deciding rule with its count.
    let t = success(c.explain_live(&node, &dir, "y/a", "x/a"), "explain y/a");
    assert!(t.contains(r#"comment "x/a-from-y ingress[0]""#), "{t}");
    assert!(t.contains("hits: 3 packets"), "{t}");
    let t = success(c.explain_live(&node, &dir, "z/b", "x/a"), "explain z/b");
    assert!(t.contains("ingress isolated by x/a-from-y"), "{t}");
    assert!(t.contains(&format!("hits: {drops} packets")), "{t}");
}

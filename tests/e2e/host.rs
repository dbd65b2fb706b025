//! Host traffic: what crosses a node's own stack or a bridge rather than
//! going pod to pod on routed veths. Bridged nodes (same-node traffic seen
//! through br_netfilter), node-to-pod and pod-to-node traffic, and Service
//! DNAT (judged on the backend pod). Each compares probes with the
//! compiler's evaluator, like the pod matrix of `scenarios.rs`.

use crate::cluster::SimCluster;
use crate::probe::{Probe, Proto, PORTS};
use crate::scenarios::{run_steps, Step::*};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Every (v6, protocol, port) probe from each of `sources` to each of
/// `destinations` (indices).
fn all_probes(sources: usize, destinations: usize) -> Vec<Probe> {
    let mut probes = Vec::new();
    for src in 0..sources {
        for dst in 0..destinations {
            for v6 in [false, true] {
                for proto in Proto::ALL {
                    for port in PORTS {
                        probes.push(Probe {
                            src,
                            dst,
                            v6,
                            proto,
                            port,
                        });
                    }
                }
            }
        }
    }
    probes
}

/// Runs `probes` from `netns[p.src]` to `targets[p.dst]` and fails the
/// step with every cell that differs from `expected`, named by `route`
/// (its source and destination) and the cell.
fn assert_probes(
    c: &SimCluster,
    step: &str,
    probes: &[Probe],
    (netns, targets): (&[String], &[(Ipv4Addr, Ipv6Addr)]),
    expected: &[bool],
    route: impl Fn(&Probe) -> String,
) {
    let observed = crate::cluster::observe_between(probes, netns, targets, expected);
    let wrong: Vec<String> = (0..probes.len())
        .filter(|&i| expected[i] != observed[i])
        .map(|i| {
            let p = &probes[i];
            format!(
                "{} {} {}/{}: expected {}, observed {}",
                route(p),
                if p.v6 { "IPv6" } else { "IPv4" },
                p.proto.name(),
                p.port,
                expected[i],
                observed[i]
            )
        })
        .collect();
    eprintln!(
        "step {step:?}: {} probes, {} wrong",
        probes.len(),
        wrong.len()
    );
    assert!(
        wrong.is_empty(),
        "{step}:\n{}\n{}\n{}",
        wrong.join("\n"),
        c.ruleset("node1"),
        c.ruleset("node2")
    );
}

/// The bridged node variant (pods of a node on one Linux bridge, as
/// bridge-based CNIs do; same-node traffic reaches nftables only through
/// br_netfilter): a handful of the upstream scenarios, one step each.
#[test]
fn bridged_nodes() {
    require_root!();
    require_br_netfilter!();
    let mut c = SimCluster::upstream_model_on(true);
    run_steps(
        &mut c,
        &[
            Check("bridged: no policies"),
            Put(
                "x",
                "deny-all",
                "podSelector: {}\npolicyTypes: [Ingress, Egress]",
            ),
            Check("bridged: x denied both ways"),
            ClearPolicies,
            Put(
                "x",
                "allow-ns-y-podselector-and-nsselector",
                r#"
podSelector: {matchLabels: {pod: a}}
ingress:
- from:
  - namespaceSelector:
      matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [x]}]
    podSelector: {matchLabels: {pod: b}}
  ports:
  - port: serve-80-tcp
  - {port: 81, protocol: UDP}
"#,
            ),
            Put(
                "y",
                "egress-cidr-except",
                r#"podSelector: {}
egress:
- to:
  - ipBlock: {cidr: 10.244.0.0/16, except: [@v4:x/c/32]}
  - ipBlock: {cidr: "fd00:10:244::/48", except: ["@v6:x/c/128"]}"#,
            ),
            Check("bridged: selectors, named ports, ipBlock except"),
        ],
    );
}

/// Traffic from a node: its own pods always accept it (upstream requires
/// kubelet probes to work), other nodes' isolated pods judge it as any
/// other source address (here the node's fabric address), so an ipBlock
/// can let it in.
#[test]
fn node_to_pod_traffic() {
    require_root!();
    let mut c = SimCluster::upstream_model();
    for ns in ["x", "y", "z"] {
        run_steps(
            &mut c,
            &[Put(
                ns,
                "deny-ingress",
                "podSelector: {}\npolicyTypes: [Ingress]",
            )],
        );
    }
    let check = |c: &mut SimCluster, step: &str| {
        c.program();
        let model = crate::oracle::Model::load(&c.manifests());
        let nodes = c.topo.nodes.clone();
        let probes = all_probes(nodes.len(), c.pods.len());
        let expected: Vec<bool> = probes
            .iter()
            .map(|p| {
                let node = &nodes[p.src];
                let from: IpAddr = if p.v6 {
                    node.fabric_v6.into()
                } else {
                    node.fabric_v4.into()
                };
                c.topo.pods[p.dst].node == node.name
                    || model.allowed_from_ip(from, &c.pods[p.dst], p.proto, p.port)
            })
            .collect();
        let netns: Vec<String> = nodes.iter().map(|n| n.netns.clone()).collect();
        let ips: Vec<_> = c.topo.pods.iter().map(|p| (p.v4, p.v6)).collect();
        assert_probes(c, step, &probes, (&netns, &ips), &expected, |p| {
            format!("{} -> {}", nodes[p.src].name, c.label(p.dst))
        });
    };
    check(
        &mut c,
        "every namespace denies ingress: only own node gets in",
    );
    run_steps(
        &mut c,
        &[Put(
            "x",
            "allow-from-nodes",
            r#"
podSelector: {}
ingress:
- from:
  - ipBlock: {cidr: 172.31.255.0/30}
  - ipBlock: {cidr: "fd00:ffff::/64"}
"#,
        )],
    );
    check(&mut c, "x also admits the nodes' fabric addresses");
    // A hostNetwork pod shares its node's addresses; policies never select
    // it nor match it as a peer, so labelling it like y/a must not let
    // node2 into x/a.
    let n2 = c.topo.node("node2").clone();
    c.extra_objects.push(format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: hostnet, namespace: y, labels: {{pod: a}}}}
spec:
  nodeName: node2
  hostNetwork: true
  containers: [{{name: c, image: registry.k8s.io/pause:3.10}}]
status:
  phase: Running
  podIP: {v4}
  podIPs: [{{ip: {v4}}}, {{ip: "{v6}"}}]
"#,
        v4 = n2.fabric_v4,
        v6 = n2.fabric_v6
    ));
    run_steps(
        &mut c,
        &[
            Delete("x", "allow-from-nodes"),
            Put(
                "x",
                "a-from-y-a",
                r#"
podSelector: {matchLabels: {pod: a}}
ingress:
- from:
  - namespaceSelector: {matchLabels: {ns: y}}
    podSelector: {matchLabels: {pod: a}}
"#,
            ),
        ],
    );
    check(&mut c, "a hostNetwork pod labelled like y/a is not a peer");
}

/// Traffic from pods to nodes: the source pod's egress rules judge it like
/// any other destination address, on its own node through the `input`
/// hook and on the other node through `forward`.
#[test]
fn pod_to_node_traffic() {
    require_root!();
    let mut c = SimCluster::upstream_model();
    c.serve_on_nodes();
    let check = |c: &mut SimCluster, step: &str| {
        c.program();
        let model = crate::oracle::Model::load(&c.manifests());
        let nodes = c.topo.nodes.clone();
        let probes = all_probes(c.pods.len(), nodes.len());
        let ips: Vec<_> = nodes.iter().map(|n| (n.fabric_v4, n.fabric_v6)).collect();
        let expected: Vec<bool> = probes
            .iter()
            .map(|p| {
                let (v4, v6) = ips[p.dst];
                let to = if p.v6 { v6.into() } else { v4.into() };
                model.allowed_to_ip(&c.pods[p.src], to, p.proto, p.port)
            })
            .collect();
        let (netns, _) = c.netns_and_ips();
        assert_probes(c, step, &probes, (&netns, &ips), &expected, |p| {
            format!("{} -> {}", c.label(p.src), nodes[p.dst].name)
        });
    };
    check(&mut c, "no policies: every node reachable");
    run_steps(
        &mut c,
        &[
            Put("z", "deny-egress", "podSelector: {}\npolicyTypes: [Egress]"),
            Put(
                "x",
                "egress-to-node1-tcp",
                r#"
podSelector: {}
egress:
- to:
  - ipBlock: {cidr: 172.31.255.1/32}
  - ipBlock: {cidr: "fd00:ffff::1/128"}
  ports:
  - {port: 80, protocol: TCP}
  - {port: 81, protocol: UDP}
"#,
            ),
        ],
    );
    check(
        &mut c,
        "z sends nothing, x reaches node1 on TCP 80 and UDP 81 only",
    );
}

/// Service traffic: a kube-proxy-like DNAT (its own table, on every node)
/// turns a ClusterIP into pod x/a; policy must judge the backend pod, and
/// nftpol must leave the other table alone across re-applies.
#[test]
fn service_traffic_is_judged_on_the_backend_pod() {
    require_root!();
    let mut c = SimCluster::upstream_model();
    let vip4 = Ipv4Addr::new(10, 96, 0, 10);
    let vip6: Ipv6Addr = "fd00:10:96::10".parse().expect("VIP literal");
    let backend = c.pod_index("x", "a");
    let (b4, b6) = (c.topo.pods[backend].v4, c.topo.pods[backend].v6);
    let kproxy = format!(
        r#"table inet e2e_kproxy {{
    chain pre {{
        type nat hook prerouting priority dstnat; policy accept;
        ip daddr {vip4} meta l4proto {{ tcp, udp }} dnat ip to {b4}
        ip6 daddr {vip6} meta l4proto {{ tcp, udp }} dnat ip6 to {b6}
    }}
}}
"#
    );
    for node in ["node1", "node2"] {
        c.load_nft(node, &kproxy);
        // The VIP is routed like any other address: towards the node.
    }
    let check = |c: &mut SimCluster, step: &str| {
        c.program();
        let model = crate::oracle::Model::load(&c.manifests());
        // The backend reaching itself through its own Service (hairpin)
        // needs masquerading, which is not modelled here.
        let probes: Vec<Probe> = all_probes(c.pods.len(), 1)
            .into_iter()
            .filter(|p| p.src != backend)
            .collect();
        let expected: Vec<bool> = probes
            .iter()
            .map(|p| model.allowed(&c.pods[p.src], &c.pods[backend], p.v6, p.proto, p.port))
            .collect();
        let (netns, _) = c.netns_and_ips();
        assert_probes(
            c,
            step,
            &probes,
            (&netns, &[(vip4, vip6)]),
            &expected,
            |p| format!("{} -> service (x/a)", c.label(p.src)),
        );
        for node in ["node1", "node2"] {
            let other = crate::cluster::netns_exec(
                &c.topo.node(node).netns,
                &["nft", "list", "table", "inet", "e2e_kproxy"],
            );
            assert!(
                other.contains("dnat"),
                "{node}: nftpol touched another table:\n{other}"
            );
        }
    };
    check(&mut c, "no policies: the service answers everyone");
    // Judged on the VIP instead, these would go wrong both ways: the
    // VIP is in no egress set (z/c would be dropped) and selects no
    // ingress chain (x/a would be open to all).
    run_steps(
        &mut c,
        &[
            Put(
                "x",
                "a-from-y-and-z-c-tcp80",
                r#"
podSelector: {matchLabels: {pod: a}}
ingress:
- from:
  - namespaceSelector: {matchLabels: {ns: y}}
  - namespaceSelector: {matchLabels: {ns: z}}
    podSelector: {matchLabels: {pod: c}}
  ports:
  - {port: 80, protocol: TCP}
"#,
            ),
            Put(
                "z",
                "c-egress-only-to-x-a",
                "podSelector: {matchLabels: {pod: c}}\negress:\n- to:\n  - namespaceSelector: {matchLabels: {ns: x}}\n    podSelector: {matchLabels: {pod: a}}",
            ),
        ],
    );
    check(
        &mut c,
        "backend admits y and z/c on TCP 80; z/c may only reach x/a",
    );
}

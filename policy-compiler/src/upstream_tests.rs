//! The upstream netpol e2e scenarios (kubernetes test/e2e/network/netpol),
//! transcribed as truth tables in our own words. The model is upstream's:
//! namespaces x, y, z (labelled `ns=<name>`), pods a, b, c in each
//! (labelled `pod=<name>`), serving ports 80 and 81 on TCP, UDP and SCTP
//! under the names `serve-<port>-<proto>`. Pods alternate between two
//! nodes so cross-node and same-node pairs both occur.
//!
//! Each expected table is written from the scenario's intent, never from
//! our evaluator, and both the evaluator and the compiled rulesets (run
//! through the IR interpreter) must reproduce it. Loopback (a pod to
//! itself) is ignored, as upstream does.

use crate::compile::compile;
use crate::eval::{allowed, Endpoint};
use crate::index::Cluster;
use crate::interp::{cluster_accepts, Packet};
use crate::ir::{CtState, Family, Ruleset};
use crate::manifest::{parse, Object};
use crate::model::Protocol;
use std::collections::BTreeMap;

const NS: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];
const NODES: [&str; 2] = ["node-1", "node-2"];

fn pod_index(ns: &str, pod: &str) -> usize {
    let n = NS.iter().position(|x| *x == ns).expect("model namespace");
    let p = PODS.iter().position(|x| *x == pod).expect("model pod");
    n * 3 + p
}

/// The model cluster as manifest text; `ns_labels` adds labels to a
/// namespace and `pod_labels` to a pod, for the scenarios that update them.
fn model_yaml(ns_extra: &[(&str, &str, &str)], pod_extra: &[(&str, &str, &str, &str)]) -> String {
    let mut s = String::new();
    for ns in NS {
        let mut labels = format!("ns: {ns}");
        for (n, k, v) in ns_extra {
            if *n == ns {
                labels.push_str(&format!(", {k}: {v}"));
            }
        }
        s.push_str(&format!(
            "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, labels: {{{labels}}}}}\n"
        ));
        for pod in PODS {
            let i = pod_index(ns, pod);
            let mut labels = format!("pod: {pod}");
            for (n, p, k, v) in pod_extra {
                if *n == ns && *p == pod {
                    labels.push_str(&format!(", {k}: {v}"));
                }
            }
            let mut ports = String::new();
            for port in [80, 81] {
                for proto in ["TCP", "UDP", "SCTP"] {
                    ports.push_str(&format!(
                        "{{name: serve-{port}-{}, containerPort: {port}, protocol: {proto}}}, ",
                        proto.to_lowercase()
                    ));
                }
            }
            s.push_str(&format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}, namespace: {ns}, labels: {{{labels}}}}}\n\
                 spec: {{nodeName: {}, containers: [{{name: c, image: agnhost, ports: [{ports}]}}]}}\n\
                 status: {{phase: Running, podIPs: [{{ip: 10.244.{}.{}}}, {{ip: \"fd00:10:244::{:x}\"}}]}}\n",
                NODES[i % 2],
                i % 2,
                10 + i,
                0x10 + i,
            ));
        }
    }
    s
}

fn ipv4(ns: &str, pod: &str) -> String {
    let i = pod_index(ns, pod);
    format!("10.244.{}.{}", i % 2, 10 + i)
}

fn cluster(model: &str, policies: &str) -> Cluster {
    let mut loaded = parse("model.yaml", model);
    loaded.extend(parse("policies.yaml", policies));
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    Cluster::from_objects(loaded.objects)
}

/// Expected connectivity, from rows to columns, over the 9 model pods.
#[derive(Clone)]
struct Reach([[bool; 9]; 9]);

type Sel<'a> = (Option<&'a str>, Option<&'a str>);

fn hits(sel: Sel, i: usize) -> bool {
    let (ns, pod) = sel;
    ns.is_none_or(|n| NS[i / 3] == n) && pod.is_none_or(|p| PODS[i % 3] == p)
}

impl Reach {
    fn all(v: bool) -> Reach {
        Reach([[v; 9]; 9])
    }
    /// Sets every (from, to) pair the two selectors pick.
    fn expect(mut self, from: Sel, to: Sel, v: bool) -> Reach {
        for i in 0..9 {
            for j in 0..9 {
                if hits(from, i) && hits(to, j) {
                    self.0[i][j] = v;
                }
            }
        }
        self
    }
}

const ANY: Sel = (None, None);
fn ns(n: &str) -> Sel<'_> {
    (Some(n), None)
}
fn pod<'a>(n: &'a str, p: &'a str) -> Sel<'a> {
    (Some(n), Some(p))
}

/// Checks the evaluator and the compiled rulesets against `want` for one
/// port/protocol, IPv4 and IPv6.
fn check(name: &str, c: &Cluster, port: u16, proto: Protocol, want: &Reach) {
    check_families(name, c, &[Family::Ipv4, Family::Ipv6], port, proto, want);
}

fn check_families(
    name: &str,
    c: &Cluster,
    families: &[Family],
    port: u16,
    proto: Protocol,
    want: &Reach,
) {
    let rulesets: BTreeMap<String, Ruleset> = NODES
        .iter()
        .map(|n| (n.to_string(), compile(c, n)))
        .collect();
    let mut diffs = Vec::new();
    for i in 0..9 {
        for j in 0..9 {
            if i == j {
                continue; // loopback is ignored, as upstream
            }
            let src = Endpoint::pod(NS[i / 3], PODS[i % 3]);
            let dst = Endpoint::pod(NS[j / 3], PODS[j % 3]);
            for &family in families {
                let d = allowed(c, &src, &dst, family, proto, port).expect("evaluates");
                let pkt = Packet {
                    saddr: d.src_ip,
                    daddr: d.dst_ip,
                    proto: proto.number(),
                    dport: port,
                    ct: CtState::New,
                    hoplimit: 64,
                    ct_saddrs: None,
                };
                let kernel = cluster_accepts(c, &rulesets, &pkt);
                if d.allowed != want.0[i][j] || kernel != want.0[i][j] {
                    diffs.push(format!(
                        "{src} -> {dst} {port}/{proto:?} {family:?}: want {}, evaluator {}, ruleset {kernel}",
                        want.0[i][j], d.allowed
                    ));
                }
            }
        }
    }
    assert!(diffs.is_empty(), "scenario {name}:\n{}", diffs.join("\n"));
}

fn np(namespace: &str, name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{spec}\n"
    )
}

fn run(name: &str, policies: &str, port: u16, proto: Protocol, want: Reach) {
    let c = cluster(&model_yaml(&[], &[]), policies);
    check(name, &c, port, proto, &want);
}

const TCP: Protocol = Protocol::Tcp;

#[test]
fn default_deny_ingress() {
    let p = np(
        "x",
        "deny-ingress",
        "  podSelector: {}\n  policyTypes: [Ingress]",
    );
    let want = Reach::all(true).expect(ANY, ns("x"), false);
    run("default-deny-ingress", &p, 80, TCP, want.clone());
    run("default-deny-ingress udp", &p, 81, Protocol::Udp, want);
}

#[test]
fn default_deny_all() {
    let p = np(
        "x",
        "deny-all",
        "  podSelector: {}\n  policyTypes: [Ingress, Egress]",
    );
    let want = Reach::all(true)
        .expect(ANY, ns("x"), false)
        .expect(ns("x"), ANY, false);
    run("default-deny-all", &p, 80, TCP, want);
}

#[test]
fn allow_from_pods_in_same_namespace_by_pod_selector() {
    let p = np(
        "x",
        "allow-b",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {pod: b}}}]",
    );
    let want = Reach::all(true).expect(ANY, pod("x", "a"), false).expect(
        pod("x", "b"),
        pod("x", "a"),
        true,
    );
    run("pod-selector", &p, 80, TCP, want);
}

#[test]
fn allow_all_ingress_with_empty_rule() {
    let p = np("x", "allow-all", "  podSelector: {}\n  ingress:\n  - {}");
    run("allow-all", &p, 80, TCP, Reach::all(true));
}

#[test]
fn allow_from_other_namespace_by_namespace_selector_expression() {
    let p = np(
        "x",
        "allow-y",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - namespaceSelector:\n        matchExpressions: [{key: ns, operator: In, values: [y]}]",
    );
    let want =
        Reach::all(true)
            .expect(ANY, pod("x", "a"), false)
            .expect(ns("y"), pod("x", "a"), true);
    run("namespace-selector-expressions", &p, 80, TCP, want);
}

#[test]
fn pod_selector_with_match_expressions() {
    let p = np(
        "x",
        "allow-b-expr",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - podSelector:\n        matchExpressions: [{key: pod, operator: In, values: [b]}]",
    );
    let want = Reach::all(true).expect(ANY, pod("x", "a"), false).expect(
        pod("x", "b"),
        pod("x", "a"),
        true,
    );
    run("pod-selector-expressions", &p, 80, TCP, want);
}

#[test]
fn pod_selector_or_namespace_selector() {
    let p = np(
        "x",
        "or",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - podSelector: {matchLabels: {pod: b}}\n    - namespaceSelector: {matchLabels: {ns: y}}",
    );
    let want = Reach::all(true)
        .expect(ANY, pod("x", "a"), false)
        .expect(pod("x", "b"), pod("x", "a"), true)
        .expect(ns("y"), pod("x", "a"), true);
    run("or", &p, 80, TCP, want);
}

#[test]
fn pod_selector_and_namespace_selector() {
    let p = np(
        "x",
        "and",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - podSelector: {matchLabels: {pod: b}}\n      namespaceSelector:\n        matchExpressions: [{key: ns, operator: In, values: [y, z]}]",
    );
    let want = Reach::all(true)
        .expect(ANY, pod("x", "a"), false)
        .expect(pod("y", "b"), pod("x", "a"), true)
        .expect(pod("z", "b"), pod("x", "a"), true);
    run("and", &p, 80, TCP, want);
}

#[test]
fn multiple_pod_and_namespace_selectors() {
    let p = np(
        "x",
        "multi",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - podSelector:\n        matchExpressions: [{key: pod, operator: In, values: [b, c]}]\n      namespaceSelector:\n        matchExpressions: [{key: ns, operator: NotIn, values: [x]}]",
    );
    let want = Reach::all(true)
        .expect(ANY, pod("x", "a"), false)
        .expect(pod("y", "b"), pod("x", "a"), true)
        .expect(pod("y", "c"), pod("x", "a"), true)
        .expect(pod("z", "b"), pod("x", "a"), true)
        .expect(pod("z", "c"), pod("x", "a"), true);
    run("multi-selectors", &p, 80, TCP, want);
}

#[test]
fn any_pod_in_other_namespaces() {
    // An empty podSelector with a namespaceSelector: every pod there.
    let p = np(
        "x",
        "any",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - podSelector: {}\n      namespaceSelector: {matchLabels: {ns: z}}",
    );
    let want =
        Reach::all(true)
            .expect(ANY, pod("x", "a"), false)
            .expect(ns("z"), pod("x", "a"), true);
    run("any-pod", &p, 80, TCP, want);
}

#[test]
fn ingress_on_one_port_number() {
    let p = np(
        "x",
        "port-81",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]\n    ports: [{port: 81, protocol: TCP}]",
    );
    let closed = Reach::all(true).expect(ANY, pod("x", "a"), false);
    run("port-81 on 80", &p, 80, TCP, closed.clone());
    run(
        "port-81 on 81",
        &p,
        81,
        TCP,
        closed.expect(ns("y"), pod("x", "a"), true),
    );
}

#[test]
fn ingress_on_named_port() {
    let p = np(
        "x",
        "named",
        "  podSelector: {}\n  ingress:\n  - ports: [{port: serve-80-tcp, protocol: TCP}]",
    );
    run("named on 80", &p, 80, TCP, Reach::all(true));
    run(
        "named on 81",
        &p,
        81,
        TCP,
        Reach::all(true).expect(ANY, ns("x"), false),
    );
    // The name is for TCP: UDP 80 is not admitted.
    run(
        "named on 80/udp",
        &p,
        80,
        Protocol::Udp,
        Reach::all(true).expect(ANY, ns("x"), false),
    );
}

#[test]
fn egress_on_named_port() {
    let p = np(
        "x",
        "egress-named",
        "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress:\n  - ports: [{port: serve-80-tcp}]",
    );
    run("egress named 80", &p, 80, TCP, Reach::all(true));
    run(
        "egress named 81",
        &p,
        81,
        TCP,
        Reach::all(true).expect(pod("x", "a"), ANY, false),
    );
}

#[test]
fn deny_all_egress() {
    let p = np(
        "x",
        "deny-egress",
        "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]",
    );
    run(
        "deny-egress",
        &p,
        80,
        TCP,
        Reach::all(true).expect(pod("x", "a"), ANY, false),
    );
}

#[test]
fn egress_to_cidr_block() {
    let target = ipv4("y", "b");
    let p = np(
        "x",
        "egress-cidr",
        &format!(
            "  podSelector: {{matchLabels: {{pod: a}}}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{{ipBlock: {{cidr: {target}/32}}}}]"
        ),
    );
    let c = cluster(&model_yaml(&[], &[]), &p);
    let want = Reach::all(true).expect(pod("x", "a"), ANY, false).expect(
        pod("x", "a"),
        pod("y", "b"),
        true,
    );
    // IPv4 only: the block holds no IPv6 address.
    check_family(&c, Family::Ipv4, 80, TCP, &want);
}

#[test]
fn egress_to_cidr_with_except() {
    let target = ipv4("y", "b");
    let p = np(
        "x",
        "egress-except",
        &format!(
            "  podSelector: {{matchLabels: {{pod: a}}}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{{ipBlock: {{cidr: 10.244.0.0/16, except: [{target}/32]}}}}]"
        ),
    );
    let c = cluster(&model_yaml(&[], &[]), &p);
    let want = Reach::all(true).expect(pod("x", "a"), pod("y", "b"), false);
    check_family(&c, Family::Ipv4, 80, TCP, &want);
}

#[test]
fn except_does_not_block_what_another_rule_allows() {
    let target = ipv4("y", "b");
    let p = np(
        "x",
        "except-and-allow",
        &format!(
            "  podSelector: {{matchLabels: {{pod: a}}}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{{ipBlock: {{cidr: 10.244.0.0/16, except: [{target}/32]}}}}]\n  - to: [{{ipBlock: {{cidr: {target}/32}}}}]"
        ),
    );
    let c = cluster(&model_yaml(&[], &[]), &p);
    check_family(&c, Family::Ipv4, 80, TCP, &Reach::all(true));
}

/// For ipBlock scenarios: only `family` is judged (an IPv4 block says
/// nothing about IPv6 reachability).
fn check_family(c: &Cluster, family: Family, port: u16, proto: Protocol, want: &Reach) {
    check_families("ipBlock", c, &[family], port, proto, want);
}

#[test]
fn stacked_policies_are_a_union() {
    let p = np(
        "x",
        "from-b",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {pod: b}}}]",
    ) + &np(
        "x",
        "from-y",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]",
    );
    let want = Reach::all(true)
        .expect(ANY, pod("x", "a"), false)
        .expect(pod("x", "b"), pod("x", "a"), true)
        .expect(ns("y"), pod("x", "a"), true);
    run("stacked", &p, 80, TCP, want);
}

#[test]
fn allow_all_takes_precedence_over_deny() {
    let p = np(
        "x",
        "deny",
        "  podSelector: {}\n  policyTypes: [Ingress, Egress]",
    ) + &np("x", "allow-in", "  podSelector: {}\n  ingress: [{}]")
        + &np("x", "allow-out", "  podSelector: {}\n  egress: [{}]");
    run("allow-all precedence", &p, 80, TCP, Reach::all(true));
}

#[test]
fn egress_and_ingress_must_both_allow() {
    // x/a may only talk to y; y/b only accepts from z.
    let p = np(
        "x",
        "a-to-y",
        "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{namespaceSelector: {matchLabels: {ns: y}}}]",
    ) + &np(
        "y",
        "b-from-z",
        "  podSelector: {matchLabels: {pod: b}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: z}}}]",
    );
    let want = Reach::all(true)
        .expect(pod("x", "a"), ANY, false)
        .expect(pod("x", "a"), ns("y"), true)
        .expect(ANY, pod("y", "b"), false)
        .expect(ns("z"), pod("y", "b"), true);
    run("both sides", &p, 80, TCP, want);
}

#[test]
fn udp_only_policy() {
    let p = np(
        "x",
        "udp-81",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - ports: [{protocol: UDP, port: 81}]",
    );
    let closed = Reach::all(true).expect(ANY, pod("x", "a"), false);
    run("udp-81 tcp/81", &p, 81, TCP, closed.clone());
    run("udp-81 udp/80", &p, 80, Protocol::Udp, closed);
    run("udp-81 udp/81", &p, 81, Protocol::Udp, Reach::all(true));
}

#[test]
fn sctp_policy() {
    let p = np(
        "x",
        "sctp-80",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - ports: [{protocol: SCTP, port: 80}]",
    );
    let closed = Reach::all(true).expect(ANY, pod("x", "a"), false);
    run("sctp tcp/80", &p, 80, TCP, closed);
    run("sctp sctp/80", &p, 80, Protocol::Sctp, Reach::all(true));
}

#[test]
fn end_port_range() {
    let p = np(
        "x",
        "range",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]\n    ports: [{port: 80, endPort: 81}]",
    );
    let want =
        Reach::all(true)
            .expect(ANY, pod("x", "a"), false)
            .expect(ns("y"), pod("x", "a"), true);
    run("endPort 80", &p, 80, TCP, want.clone());
    run("endPort 81", &p, 81, TCP, want);
}

#[test]
fn egress_to_pod_in_other_namespace() {
    let p = np(
        "x",
        "to-y-a",
        "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress:\n  - to:\n    - podSelector: {matchLabels: {pod: a}}\n      namespaceSelector: {matchLabels: {ns: y}}",
    );
    let want = Reach::all(true).expect(pod("x", "a"), ANY, false).expect(
        pod("x", "a"),
        pod("y", "a"),
        true,
    );
    run("egress other ns", &p, 80, TCP, want);
}

#[test]
fn updated_namespace_labels_are_followed() {
    let p = np(
        "x",
        "from-updated",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns2: updated}}}]",
    );
    let before = Reach::all(true).expect(ANY, pod("x", "a"), false);
    let c = cluster(&model_yaml(&[], &[]), &p);
    check("ns before update", &c, 80, TCP, &before);
    let c = cluster(&model_yaml(&[("y", "ns2", "updated")], &[]), &p);
    check(
        "ns after update",
        &c,
        80,
        TCP,
        &before.expect(ns("y"), pod("x", "a"), true),
    );
}

#[test]
fn updated_pod_labels_are_followed() {
    let p = np(
        "x",
        "from-updated-pod",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {pod2: updated}}}]",
    );
    let before = Reach::all(true).expect(ANY, pod("x", "a"), false);
    let c = cluster(&model_yaml(&[], &[]), &p);
    check("pod before update", &c, 80, TCP, &before);
    let c = cluster(&model_yaml(&[], &[("x", "b", "pod2", "updated")]), &p);
    check(
        "pod after update",
        &c,
        80,
        TCP,
        &before.expect(pod("x", "b"), pod("x", "a"), true),
    );
    // The target pod itself relabelled out of the selector: no longer isolated.
    let p2 = np(
        "x",
        "deny-target",
        "  podSelector: {matchLabels: {target: yes}}\n  policyTypes: [Ingress]",
    );
    let c = cluster(&model_yaml(&[], &[("x", "c", "target", "yes")]), &p2);
    check(
        "target selected",
        &c,
        80,
        TCP,
        &Reach::all(true).expect(ANY, pod("x", "c"), false),
    );
    let c = cluster(&model_yaml(&[], &[]), &p2);
    check("target relabelled", &c, 80, TCP, &Reach::all(true));
}

#[test]
fn deleted_policy_stops_being_enforced() {
    let p = np("x", "deny", "  podSelector: {}\n  policyTypes: [Ingress]");
    let mut c = cluster(&model_yaml(&[], &[]), &p);
    check(
        "before delete",
        &c,
        80,
        TCP,
        &Reach::all(true).expect(ANY, ns("x"), false),
    );
    assert!(c.delete_policy("x", "deny"));
    check("after delete", &c, 80, TCP, &Reach::all(true));
}

#[test]
fn policy_in_other_namespace_does_not_apply() {
    // A policy only selects pods of its own namespace.
    let p = np(
        "y",
        "deny",
        "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Ingress]",
    );
    run(
        "namespaced",
        &p,
        80,
        TCP,
        Reach::all(true).expect(ANY, pod("y", "a"), false),
    );
}

#[test]
fn model_objects_are_complete() {
    let l = parse("model.yaml", &model_yaml(&[], &[]));
    assert!(l.errors.is_empty());
    let pods = l
        .objects
        .iter()
        .filter(|o| matches!(o, Object::Pod(_)))
        .count();
    assert_eq!(pods, 9);
}

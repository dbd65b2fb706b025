//! The upstream netpol e2e scenarios (kubernetes test/e2e/network/netpol),
//! transcribed in our own words onto the 3 namespaces x 3 pods model, as
//! one table (`UPSTREAM`) of steps run by one driver.
//!
//! Upstream writes each expected truth table by hand and probes one port
//! and protocol per case; here every `Check` step probes the whole matrix
//! (all 9 pods, ports 80 and 81, TCP and UDP, IPv4 and IPv6, pods spread
//! over two nodes) and the expected table comes from the compiler's
//! evaluator, so each case checks more cells than upstream does. Steps
//! that update a pod, a namespace or a policy are kept as steps.
//!
//! Each scenario is still its own `#[test]` (so they run in parallel and
//! fail by name); `every_scenario_is_a_test` keeps the table and the test
//! list in step. Host traffic (nodes, Services, bridged nodes) is in
//! `host.rs`.

use crate::cluster::{labels, SimCluster};

/// A NetworkPolicy document from its namespace, name and `spec` body
/// (YAML indented by two spaces relative to `spec:`).
pub fn np(namespace: &str, name: &str, spec: &str) -> String {
    let body: String = spec
        .trim_matches('\n')
        .lines()
        .map(|l| format!("  {l}\n"))
        .collect();
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n{body}"
    )
}

type Pairs = &'static [(&'static str, &'static str)];

/// One step of a scenario.
#[derive(Clone, Copy, Debug)]
pub enum Step {
    /// Creates or replaces policy (namespace, name) with this `spec`
    /// (see `np`). `@v4:ns/pod` and `@v6:ns/pod` in the spec become that
    /// model pod's addresses, for ipBlock cases.
    Put(&'static str, &'static str, &'static str),
    Delete(&'static str, &'static str),
    ClearPolicies,
    /// Replaces a namespace's labels.
    NamespaceLabels(&'static str, Pairs),
    /// Replaces a pod's labels.
    PodLabels(&'static str, &'static str, Pairs),
    /// Programs the nodes and compares the whole probed matrix with the
    /// evaluator; the text names the step in the log and on failure.
    Check(&'static str),
    /// `Check`, then the SCTP cells by raw INIT packets.
    CheckSctp(&'static str),
}

use Step::*;

pub struct Scenario {
    /// The test function's name.
    pub test: &'static str,
    /// The upstream case it transcribes.
    pub upstream: &'static str,
    pub steps: &'static [Step],
}

/// `spec` with every `@v4:ns/pod` / `@v6:ns/pod` replaced by the address
/// `address(ns, pod, v6)` gives.
fn with_addresses(spec: &str, address: impl Fn(&str, &str, bool) -> String) -> String {
    fn name_len(s: &str) -> usize {
        s.find(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '-'))
            .unwrap_or(s.len())
    }
    let mut out = String::new();
    let mut rest = spec;
    while let Some(at) = rest.find('@') {
        out.push_str(&rest[..at]);
        let token = &rest[at + 1..];
        let (v6, after) = match token.get(..3) {
            Some("v4:") => (false, &token[3..]),
            Some("v6:") => (true, &token[3..]),
            _ => panic!("bad address placeholder in {spec:?}"),
        };
        let ns = &after[..name_len(after)];
        let Some(after) = after[ns.len()..].strip_prefix('/') else {
            panic!("bad address placeholder in {spec:?}")
        };
        let pod = &after[..name_len(after)];
        out.push_str(&address(ns, pod, v6));
        rest = &after[pod.len()..];
    }
    out.push_str(rest);
    out
}

/// Runs `steps` on `c`.
pub fn run_steps(c: &mut SimCluster, steps: &[Step]) {
    for step in steps {
        match *step {
            Put(ns, name, spec) => {
                let spec = with_addresses(spec, |ns, pod, v6| {
                    let p = &c.topo.pods[c.pod_index(ns, pod)];
                    if v6 {
                        p.v6.to_string()
                    } else {
                        p.v4.to_string()
                    }
                });
                c.put_policy(&np(ns, name, &spec));
            }
            Delete(ns, name) => c.delete_policy(ns, name),
            ClearPolicies => c.clear_policies(),
            NamespaceLabels(ns, pairs) => c.set_namespace_labels(ns, labels(pairs)),
            PodLabels(ns, pod, pairs) => c.set_pod_labels(ns, pod, labels(pairs)),
            Check(what) => c.check(what),
            CheckSctp(what) => {
                c.check(what);
                crate::sctp::check_sctp(c, &format!("{what} (SCTP packets)"));
            }
        }
    }
}

/// Builds the model and runs the scenario named `test` of `UPSTREAM`.
fn scenario(test: &str) {
    require_root!();
    let s = UPSTREAM
        .iter()
        .find(|s| s.test == test)
        .unwrap_or_else(|| panic!("no scenario {test} in UPSTREAM"));
    eprintln!("scenario: {}", s.upstream);
    let mut c = SimCluster::upstream_model();
    run_steps(&mut c, s.steps);
}

/// One `#[test]` per scenario, and the list of their names.
macro_rules! scenario_tests {
    ($($test:ident),* $(,)?) => {
        $(
            #[test]
            fn $test() {
                scenario(stringify!($test));
            }
        )*
        const TESTS: &[&str] = &[$(stringify!($test)),*];
    };
}

scenario_tests!(
    default_deny_ingress,
    default_deny_all,
    allow_from_pods_in_server_namespace_by_pod_selector,
    allow_ingress_for_a_target,
    allow_ingress_from_all_namespaces,
    allow_only_from_other_namespace_by_namespace_selector,
    pod_selector_match_expressions,
    namespace_selector_match_expressions,
    pod_selector_or_namespace_selector,
    pod_selector_and_namespace_selector,
    multiple_pod_selectors_and_namespace_selectors,
    any_pod_selectors,
    only_from_pod_in_other_namespace,
    policy_based_on_ports,
    stacked_policies_with_overlapping_pod_selectors,
    allow_all_policy,
    ingress_on_one_named_port,
    ingress_from_namespace_on_one_named_port,
    egress_on_one_named_port,
    enforce_updated_policy,
    ingress_from_updated_namespace,
    ingress_from_updated_pod,
    deny_ingress_from_other_namespaces,
    deny_ingress_to_updated_pod,
    deny_egress_by_pod_selector,
    deny_egress_from_namespace,
    ingress_and_egress_together,
    client_side_egress_deny_wins,
    egress_to_pod_in_other_namespace,
    ingress_any_port_on_one_protocol,
    ingress_allow_all_takes_precedence,
    egress_allow_all_takes_precedence,
    stop_enforcing_deleted_policies,
    egress_to_cidr_block,
    egress_cidr_except,
    ip_in_both_cidr_and_except_is_allowed_by_another_rule,
    ingress_and_egress_controlled_independently,
    sctp_is_not_tcp,
    sctp_only_policy_isolates,
    udp_only_policy_does_not_allow_tcp,
    namespace_selector_default_label_match_labels,
    namespace_selector_default_label_match_expressions_egress,
    port_range_end_port,
);

#[test]
fn address_placeholders() {
    let address =
        |ns: &str, pod: &str, v6: bool| format!("{}{ns}-{pod}", if v6 { "6:" } else { "4:" });
    assert_eq!(
        with_addresses("except: [@v4:x/b/32, \"@v6:y/c-1/128\"]", address),
        "except: [4:x-b/32, \"6:y-c-1/128\"]"
    );
    assert_eq!(
        with_addresses("podSelector: {}", address),
        "podSelector: {}"
    );
    assert!(std::panic::catch_unwind(|| with_addresses("@v5:x/b", address)).is_err());
    assert!(std::panic::catch_unwind(|| with_addresses("@v4:x", address)).is_err());
}

/// Needs no root: a table entry without a test would never run, and a
/// test without an entry fails only as root.
#[test]
fn every_scenario_is_a_test() {
    let mut table: Vec<&str> = UPSTREAM.iter().map(|s| s.test).collect();
    let mut tests = TESTS.to_vec();
    table.sort_unstable();
    tests.sort_unstable();
    assert_eq!(table, tests);
    let n = table.len();
    table.dedup();
    assert_eq!(table.len(), n, "duplicate scenario names");
    for s in UPSTREAM {
        assert!(
            s.steps
                .iter()
                .any(|st| matches!(st, Check(_) | CheckSctp(_))),
            "{} checks nothing",
            s.test
        );
    }
}

const DENY_INGRESS: &str = "podSelector: {}\npolicyTypes: [Ingress]";
const DENY_ALL: &str = "podSelector: {}\npolicyTypes: [Ingress, Egress]";

/// `x/a` from namespace y, on one port.
const A_FROM_Y_ON_TCP_81: &str = r#"
podSelector: {matchLabels: {pod: a}}
ingress:
- from:
  - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
  ports:
  - {port: 81, protocol: TCP}
"#;

/// x/a may send only to y/a.
const A_EGRESS_TO_Y_A: &str = r#"
podSelector: {matchLabels: {pod: a}}
egress:
- to:
  - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
    podSelector: {matchLabels: {pod: a}}
"#;

/// x/a may send anywhere in the pod networks but to x/b.
const A_EGRESS_BUT_TO_X_B: &str = r#"podSelector: {matchLabels: {pod: a}}
egress:
- to:
  - ipBlock: {cidr: 10.0.0.0/8, except: [@v4:x/b/32]}
  - ipBlock: {cidr: "fd00::/16", except: ["@v6:x/b/128"]}"#;

pub const UPSTREAM: &[Scenario] = &[
    Scenario {
        test: "default_deny_ingress",
        upstream: "should support a 'default-deny-ingress' policy",
        steps: &[
            Put("x", "deny-ingress", DENY_INGRESS),
            Check("deny all ingress in x"),
        ],
    },
    Scenario {
        test: "default_deny_all",
        upstream: "should support a 'default-deny-all' policy",
        steps: &[
            Put("x", "deny-all", DENY_ALL),
            Check("deny all in and out of x"),
        ],
    },
    Scenario {
        test: "allow_from_pods_in_server_namespace_by_pod_selector",
        upstream: "allow traffic from pods within server namespace based on PodSelector",
        steps: &[
            Put(
                "x",
                "x-a-allows-x-b",
                r#"
podSelector: {matchLabels: {pod: a}}
ingress:
- from:
  - podSelector: {matchLabels: {pod: b}}
"#,
            ),
            Check("x/a only from x/b"),
        ],
    },
    Scenario {
        test: "allow_ingress_for_a_target",
        upstream: "allow ingress traffic for a target",
        steps: &[
            Put("x", "deny-all", DENY_INGRESS),
            Put(
                "x",
                "allow-all-to-a",
                r#"
podSelector: {matchLabels: {pod: a}}
ingress:
- from:
  - podSelector: {}
    namespaceSelector: {}
"#,
            ),
            Check("x default deny, x/a open to all"),
        ],
    },
    Scenario {
        test: "allow_ingress_from_all_namespaces",
        upstream: "allow ingress traffic from pods in all namespaces",
        steps: &[
            Put(
                "x",
                "allow-from-another-ns",
                r#"
podSelector: {matchLabels: {pod: a}}
ingress:
- from:
  - namespaceSelector: {matchLabels: {}}
"#,
            ),
            Check("x/a from every namespace"),
        ],
    },
    Scenario {
        test: "allow_only_from_other_namespace_by_namespace_selector",
        upstream: "allow traffic only from a different namespace, based on NamespaceSelector",
        steps: &[
            Put(
                "x",
                "allow-client-a-via-ns-selector",
                r#"
podSelector: {matchLabels: {pod: a}}
ingress:
- from:
  - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
"#,
            ),
            Check("x/a only from namespace y"),
        ],
    },
    Scenario {
        test: "pod_selector_match_expressions",
        upstream: "policy based on PodSelector with MatchExpressions",
        steps: &[
            Put(
                "x",
                "x-a-allows-x-b",
                r#"
podSelector: {matchLabels: {pod: a}}
ingress:
- from:
  - podSelector:
      matchExpressions: [{key: pod, operator: In, values: [b]}]
"#,
            ),
            Check("x/a from pod In [b]"),
        ],
    },
    Scenario {
        test: "namespace_selector_match_expressions",
        upstream: "policy based on NamespaceSelector with MatchExpressions",
        steps: &[
            Put(
                "x",
                "allow-ns-y-match-selector",
                r#"
podSelector: {matchLabels: {pod: a}}
ingress:
- from:
  - namespaceSelector:
      matchExpressions: [{key: kubernetes.io/metadata.name, operator: In, values: [y]}]
"#,
            ),
            Check("x/a from namespace In [y]"),
        ],
    },
    Scenario {
        test: "pod_selector_or_namespace_selector",
        upstream: "policy based on PodSelector or NamespaceSelector",
        steps: &[
            Put(
                "x",
                "allow-ns-y-match-selector",
                r#"
podSelector: {matchLabels: {pod: a}}
ingress:
- from:
  - namespaceSelector:
      matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [x]}]
  - podSelector: {matchLabels: {pod: b}}
"#,
            ),
            Check("x/a from other namespaces or x/b"),
        ],
    },
    Scenario {
        test: "pod_selector_and_namespace_selector",
        upstream: "policy based on PodSelector and NamespaceSelector",
        steps: &[
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
"#,
            ),
            Check("x/a from pod b in other namespaces"),
        ],
    },
    Scenario {
        test: "multiple_pod_selectors_and_namespace_selectors",
        upstream: "policy based on Multiple PodSelectors and NamespaceSelectors",
        steps: &[
            Put(
                "x",
                "allow-ns-y-z-pod-b-c",
                r#"
podSelector: {matchLabels: {pod: a}}
ingress:
- from:
  - namespaceSelector:
      matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [x]}]
    podSelector:
      matchExpressions: [{key: pod, operator: In, values: [b, c]}]
"#,
            ),
            Check("x/a from pods b,c outside x"),
        ],
    },
    Scenario {
        test: "any_pod_selectors",
        upstream: "policy based on any PodSelectors",
        steps: &[
            Put(
                "x",
                "allow-ns-x-pod-b-c",
                r#"
podSelector: {matchLabels: {pod: a}}
ingress:
- from:
  - podSelector: {matchLabels: {pod: b}}
  - podSelector: {matchLabels: {pod: c}}
"#,
            ),
            Check("x/a from x/b or x/c"),
        ],
    },
    Scenario {
        test: "only_from_pod_in_other_namespace",
        upstream: "allow traffic only from a pod in a different namespace (PodSelector and NamespaceSelector)",
        steps: &[
            Put(
                "x",
                "allow-ns-y-pod-a-via-namespace-pod-selector",
                r#"
podSelector: {matchLabels: {pod: a}}
ingress:
- from:
  - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
    podSelector: {matchLabels: {pod: a}}
"#,
            ),
            Check("x/a only from y/a"),
        ],
    },
    Scenario {
        test: "policy_based_on_ports",
        upstream: "policy based on Ports (TCP and the UDP variant)",
        steps: &[
            Put("x", "allow-client-a-via-ns-selector", A_FROM_Y_ON_TCP_81),
            Check("x/a from y on TCP 81"),
            Put(
                "x",
                "allow-client-a-via-ns-selector",
                r#"
podSelector: {matchLabels: {pod: a}}
ingress:
- from:
  - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
  ports:
  - {port: 81, protocol: UDP}
"#,
            ),
            Check("x/a from y on UDP 81"),
        ],
    },
    Scenario {
        test: "stacked_policies_with_overlapping_pod_selectors",
        upstream: "multiple, stacked policies with overlapping podSelectors",
        steps: &[
            Put("x", "allow-client-a-via-ns-selector", A_FROM_Y_ON_TCP_81),
            Check("port 81 from y only"),
            Put(
                "x",
                "allow-client-a-via-ns-selector-80",
                r#"
podSelector: {matchLabels: {pod: a}}
ingress:
- from:
  - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
  ports:
  - {port: 80, protocol: TCP}
"#,
            ),
            Check("second policy opens port 80 too"),
        ],
    },
    Scenario {
        test: "allow_all_policy",
        upstream: "should support allow-all policy",
        steps: &[
            Put("x", "allow-all", "podSelector: {}\ningress:\n- {}"),
            Check("allow all ingress in x"),
        ],
    },
    Scenario {
        test: "ingress_on_one_named_port",
        upstream: "allow ingress access on one named port",
        steps: &[
            Put(
                "x",
                "allow-all",
                "podSelector: {}\ningress:\n- ports:\n  - port: serve-81-tcp",
            ),
            Check("x only on named port serve-81-tcp"),
        ],
    },
    Scenario {
        test: "ingress_from_namespace_on_one_named_port",
        upstream: "allow ingress access from namespace on one named port",
        steps: &[
            Put(
                "x",
                "allow-client-a-via-ns-selector-80",
                r#"
podSelector: {matchLabels: {pod: a}}
ingress:
- from:
  - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
  ports:
  - {port: serve-80-tcp, protocol: TCP}
"#,
            ),
            Check("x/a from y on serve-80-tcp"),
        ],
    },
    Scenario {
        test: "egress_on_one_named_port",
        upstream: "allow egress access on one named port",
        steps: &[
            Put(
                "x",
                "allow-egress",
                "podSelector: {}\negress:\n- ports:\n  - port: serve-80-tcp",
            ),
            Check("x egress only to named port serve-80-tcp"),
            // The UDP twin: a named UDP port resolves per destination pod too.
            Put(
                "x",
                "allow-egress",
                "podSelector: {}\negress:\n- ports:\n  - {port: serve-81-udp, protocol: UDP}",
            ),
            Check("x egress only to named port serve-81-udp"),
        ],
    },
    Scenario {
        test: "enforce_updated_policy",
        upstream: "should enforce updated policy",
        steps: &[
            Put(
                "x",
                "allow-all-mutate-to-deny-all",
                "podSelector: {}\ningress:\n- {}",
            ),
            Check("allow all"),
            Put(
                "x",
                "allow-all-mutate-to-deny-all",
                "podSelector: {}\ningress: []",
            ),
            Check("same policy updated to deny all"),
        ],
    },
    Scenario {
        test: "ingress_from_updated_namespace",
        upstream: "allow ingress access from updated namespace",
        steps: &[
            Put(
                "x",
                "allow-client-a-via-ns-selector",
                r#"
podSelector: {matchLabels: {pod: a}}
ingress:
- from:
  - namespaceSelector: {matchLabels: {ns2: updated}}
"#,
            ),
            Check("no namespace has ns2=updated yet"),
            NamespaceLabels("y", &[("ns", "y"), ("ns2", "updated")]),
            Check("namespace y labelled ns2=updated"),
            NamespaceLabels("y", &[("ns", "y")]),
            Check("label removed again"),
        ],
    },
    Scenario {
        test: "ingress_from_updated_pod",
        upstream: "allow ingress access from updated pod",
        steps: &[
            Put(
                "x",
                "allow-client-a-via-pod-selector",
                r#"
podSelector: {matchLabels: {pod: a}}
ingress:
- from:
  - podSelector: {matchLabels: {pod: b, pod2: updated}}
"#,
            ),
            Check("x/b not yet labelled"),
            PodLabels("x", "b", &[("pod", "b"), ("pod2", "updated")]),
            Check("x/b labelled pod2=updated"),
        ],
    },
    Scenario {
        test: "deny_ingress_from_other_namespaces",
        upstream: "should deny ingress from pods on other namespaces",
        steps: &[
            Put(
                "x",
                "deny-empty-policy",
                "podSelector: {}\ningress:\n- from:\n  - podSelector: {matchLabels: {}}",
            ),
            Check("x accepts only x"),
        ],
    },
    Scenario {
        test: "deny_ingress_to_updated_pod",
        upstream: "should deny ingress access to updated pod",
        steps: &[
            Put(
                "x",
                "deny-ingress-via-label-selector",
                "podSelector: {matchLabels: {target: isolated}}\npolicyTypes: [Ingress]",
            ),
            Check("nothing selected yet"),
            PodLabels("x", "a", &[("pod", "a"), ("target", "isolated")]),
            Check("x/a now isolated"),
        ],
    },
    Scenario {
        test: "deny_egress_by_pod_selector",
        upstream: "should deny egress from pods based on PodSelector",
        steps: &[
            Put(
                "x",
                "deny-egress-pod-a",
                "podSelector: {matchLabels: {pod: a}}\npolicyTypes: [Egress]",
            ),
            Check("x/a sends nothing"),
        ],
    },
    Scenario {
        test: "deny_egress_from_namespace",
        upstream: "should deny egress from all pods in a namespace",
        steps: &[
            Put(
                "x",
                "deny-egress-ns-x",
                "podSelector: {}\npolicyTypes: [Egress]",
            ),
            Check("x sends nothing"),
        ],
    },
    Scenario {
        test: "ingress_and_egress_together",
        upstream: "should work with Ingress, Egress specified together",
        steps: &[
            Put(
                "x",
                "allow-client-a-via-pod-selector",
                r#"
podSelector: {matchLabels: {pod: a}}
policyTypes: [Egress, Ingress]
ingress:
- from:
  - podSelector: {matchLabels: {pod: b}}
egress:
- ports:
  - port: 80
"#,
            ),
            Check("x/a in from x/b, out to port 80"),
        ],
    },
    Scenario {
        test: "client_side_egress_deny_wins",
        upstream: "deny egress on the client side even if the server allows it",
        steps: &[
            Put("x", "allow-to-ns-y-pod-a", A_EGRESS_TO_Y_A),
            Put(
                "y",
                "allow-from-xa-on-ya-match-selector",
                r#"
podSelector: {matchLabels: {pod: a}}
ingress:
- from:
  - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: x}}
    podSelector: {matchLabels: {pod: a}}
"#,
            ),
            Put(
                "y",
                "allow-from-xa-on-yb-match-selector",
                r#"
podSelector: {matchLabels: {pod: b}}
ingress:
- from:
  - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: x}}
    podSelector: {matchLabels: {pod: a}}
"#,
            ),
            Check("x/a reaches y/a only"),
        ],
    },
    Scenario {
        test: "egress_to_pod_in_other_namespace",
        upstream: "egress policy allowing traffic to a server in a different namespace (PodSelector and NamespaceSelector)",
        steps: &[
            Put("x", "allow-to-ns-y-pod-a", A_EGRESS_TO_Y_A),
            Check("x/a egress only to y/a"),
        ],
    },
    Scenario {
        test: "ingress_any_port_on_one_protocol",
        upstream: "ingress allowing any port on a specific protocol",
        steps: &[
            Put(
                "x",
                "allow-ingress-by-proto",
                "podSelector: {matchLabels: {pod: a}}\ningress:\n- ports:\n  - protocol: TCP",
            ),
            Check("x/a: TCP any port, no UDP"),
        ],
    },
    Scenario {
        test: "ingress_allow_all_takes_precedence",
        upstream: "multiple ingress policies with allow-all taking precedence",
        steps: &[
            Put(
                "x",
                "allow-ingress-port-80",
                "podSelector: {}\ningress:\n- ports:\n  - port: 80",
            ),
            Check("x only on TCP 80"),
            Put("x", "allow-ingress", "podSelector: {}\ningress:\n- {}"),
            Check("allow-all added"),
        ],
    },
    Scenario {
        test: "egress_allow_all_takes_precedence",
        upstream: "multiple egress policies with allow-all taking precedence",
        steps: &[
            Put(
                "x",
                "allow-egress-port-80",
                "podSelector: {}\negress:\n- ports:\n  - port: 80",
            ),
            Check("x egress only on TCP 80"),
            Put("x", "allow-egress", "podSelector: {}\negress:\n- {}"),
            Check("egress allow-all added"),
        ],
    },
    Scenario {
        test: "stop_enforcing_deleted_policies",
        upstream: "should stop enforcing policies after they are deleted",
        steps: &[
            Put("x", "deny-all", DENY_ALL),
            Check("x denied both ways"),
            Delete("x", "deny-all"),
            Check("policy deleted"),
        ],
    },
    Scenario {
        test: "egress_to_cidr_block",
        upstream: "allow egress access to server in CIDR block",
        steps: &[
            Put(
                "x",
                "allow-client-a-via-cidr-egress-rule",
                "podSelector: {matchLabels: {pod: a}}\negress:\n- to:\n  - ipBlock: {cidr: @v4:y/b/32}\n  - ipBlock: {cidr: @v6:y/b/128}",
            ),
            Check("x/a egress only to y/b's addresses"),
        ],
    },
    Scenario {
        test: "egress_cidr_except",
        upstream: "except clause while egress access to server in CIDR block",
        steps: &[
            Put("x", "allow-client-a-via-cidr-egress-rule", A_EGRESS_BUT_TO_X_B),
            Check("x/a egress everywhere but x/b"),
        ],
    },
    Scenario {
        test: "ip_in_both_cidr_and_except_is_allowed_by_another_rule",
        upstream: "an IP overlapping both IPBlock.CIDR and IPBlock.Except is allowed",
        steps: &[
            Put("x", "allow-client-a-via-cidr-egress-rule", A_EGRESS_BUT_TO_X_B),
            Check("x/b excepted"),
            // Upstream replaces the policy with one allowing only x/b.
            Put(
                "x",
                "allow-client-a-via-cidr-egress-rule",
                r#"podSelector: {matchLabels: {pod: a}}
egress:
- to:
  - ipBlock: {cidr: @v4:x/b/32}
  - ipBlock: {cidr: "@v6:x/b/128"}"#,
            ),
            Check("x/a egress only to x/b"),
        ],
    },
    Scenario {
        test: "ingress_and_egress_controlled_independently",
        upstream: "ingress and egress policies controlled independently",
        steps: &[
            Check("no policies"),
            Put(
                "x",
                "allow-egress-for-target",
                "podSelector: {matchLabels: {pod: a}}\negress:\n- {}",
            ),
            Check("x/a egress allow-all"),
            Put(
                "x",
                "deny-ingress-via-label-selector",
                "podSelector: {matchLabels: {pod: a}}\npolicyTypes: [Ingress]",
            ),
            Check("x/a ingress denied"),
        ],
    },
    Scenario {
        test: "sctp_is_not_tcp",
        upstream: "'protocol: SCTP' is not treated as TCP",
        steps: &[
            Put("x", "deny-ingress", DENY_INGRESS),
            Put(
                "x",
                "allow-only-sctp-ingress-on-port-81",
                "podSelector: {matchLabels: {pod: a}}\ningress:\n- ports:\n  - {port: 81, protocol: SCTP}",
            ),
            CheckSctp("x denied; SCTP 81 open to x/a"),
        ],
    },
    Scenario {
        test: "sctp_only_policy_isolates",
        upstream: "a policy allowing only SCTP still isolates for TCP and UDP",
        steps: &[
            Put(
                "x",
                "allow-only-sctp-ingress-on-port-80",
                "podSelector: {matchLabels: {pod: a}}\ningress:\n- ports:\n  - {port: 80, protocol: SCTP}",
            ),
            CheckSctp("x/a isolated but for SCTP 80"),
        ],
    },
    Scenario {
        test: "udp_only_policy_does_not_allow_tcp",
        upstream: "no access by TCP when a policy specifies only UDP",
        steps: &[
            Put(
                "x",
                "allow-only-udp-ingress-on-port-81",
                "podSelector: {matchLabels: {pod: a}}\ningress:\n- ports:\n  - {port: 81, protocol: UDP}",
            ),
            Check("x/a: only UDP 81"),
        ],
    },
    Scenario {
        test: "namespace_selector_default_label_match_labels",
        upstream: "NamespaceSelector with MatchLabels using the default ns label",
        steps: &[
            Put(
                "x",
                "allow-client-a-via-ns-selector-for-immutable-ns-label",
                r#"
podSelector: {matchLabels: {pod: a}}
ingress:
- from:
  - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
"#,
            ),
            Check("x/a from y by name label"),
        ],
    },
    Scenario {
        test: "namespace_selector_default_label_match_expressions_egress",
        upstream: "NamespaceSelector with MatchExpressions using the default ns label (egress)",
        steps: &[
            Put(
                "x",
                "allow-ns-y-match-selector-for-immutable-ns-label",
                r#"
podSelector: {matchLabels: {pod: a}}
egress:
- to:
  - namespaceSelector:
      matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [y]}]
"#,
            ),
            Check("x/a egress anywhere but y"),
        ],
    },
    Scenario {
        // Upstream's endPort case (present in earlier releases of the suite).
        test: "port_range_end_port",
        upstream: "ingress on a port range with endPort",
        steps: &[
            Put(
                "x",
                "allow-port-range",
                r#"
podSelector: {matchLabels: {pod: a}}
ingress:
- ports:
  - {port: 81, endPort: 90, protocol: TCP}
  - {port: 70, endPort: 80, protocol: UDP}
"#,
            ),
            Check("x/a: TCP 81-90, UDP 70-80"),
        ],
    },
];

//! The upstream netpol e2e scenarios (kubernetes test/e2e/network/netpol),
//! transcribed in our own words onto the 3 namespaces x 3 pods model.
//!
//! Upstream writes each expected truth table by hand and probes one port
//! and protocol per case; here every step probes the whole matrix (all 9
//! pods, ports 80 and 81, TCP and UDP, IPv4 and IPv6, pods spread over two
//! nodes) and the expected table comes from the compiler's evaluator, so
//! each case checks more cells than upstream does. Steps that update a
//! pod, a namespace or a policy are kept as steps.

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

/// Builds the model, runs `steps`, and names the scenario in the log.
fn scenario(name: &str, steps: impl FnOnce(&mut SimCluster)) {
    require_root!();
    eprintln!("scenario: {name}");
    let mut c = SimCluster::upstream_model();
    steps(&mut c);
}

#[test]
fn default_deny_ingress() {
    scenario("should support a 'default-deny-ingress' policy", |c| {
        c.put_policy(&np(
            "x",
            "deny-ingress",
            "podSelector: {}\npolicyTypes: [Ingress]",
        ));
        c.check("deny all ingress in x");
    });
}

#[test]
fn default_deny_all() {
    scenario("should support a 'default-deny-all' policy", |c| {
        c.put_policy(&np(
            "x",
            "deny-all",
            "podSelector: {}\npolicyTypes: [Ingress, Egress]",
        ));
        c.check("deny all in and out of x");
    });
}

#[test]
fn allow_from_pods_in_server_namespace_by_pod_selector() {
    scenario(
        "allow traffic from pods within server namespace based on PodSelector",
        |c| {
            c.put_policy(&np(
                "x",
                "x-a-allows-x-b",
                r#"
podSelector: {matchLabels: {pod: a}}
ingress:
- from:
  - podSelector: {matchLabels: {pod: b}}
"#,
            ));
            c.check("x/a only from x/b");
        },
    );
}

#[test]
fn allow_ingress_for_a_target() {
    scenario("allow ingress traffic for a target", |c| {
        c.put_policy(&np(
            "x",
            "deny-all",
            "podSelector: {}\npolicyTypes: [Ingress]",
        ));
        c.put_policy(&np(
            "x",
            "allow-all-to-a",
            r#"
podSelector: {matchLabels: {pod: a}}
ingress:
- from:
  - podSelector: {}
    namespaceSelector: {}
"#,
        ));
        c.check("x default deny, x/a open to all");
    });
}

#[test]
fn allow_ingress_from_all_namespaces() {
    scenario("allow ingress traffic from pods in all namespaces", |c| {
        c.put_policy(&np(
            "x",
            "allow-from-another-ns",
            r#"
podSelector: {matchLabels: {pod: a}}
ingress:
- from:
  - namespaceSelector: {matchLabels: {}}
"#,
        ));
        c.check("x/a from every namespace");
    });
}

#[test]
fn allow_only_from_other_namespace_by_namespace_selector() {
    scenario(
        "allow traffic only from a different namespace, based on NamespaceSelector",
        |c| {
            c.put_policy(&np(
                "x",
                "allow-client-a-via-ns-selector",
                r#"
podSelector: {matchLabels: {pod: a}}
ingress:
- from:
  - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
"#,
            ));
            c.check("x/a only from namespace y");
        },
    );
}

#[test]
fn pod_selector_match_expressions() {
    scenario("policy based on PodSelector with MatchExpressions", |c| {
        c.put_policy(&np(
            "x",
            "x-a-allows-x-b",
            r#"
podSelector: {matchLabels: {pod: a}}
ingress:
- from:
  - podSelector:
      matchExpressions: [{key: pod, operator: In, values: [b]}]
"#,
        ));
        c.check("x/a from pod In [b]");
    });
}

#[test]
fn namespace_selector_match_expressions() {
    scenario(
        "policy based on NamespaceSelector with MatchExpressions",
        |c| {
            c.put_policy(&np(
                "x",
                "allow-ns-y-match-selector",
                r#"
podSelector: {matchLabels: {pod: a}}
ingress:
- from:
  - namespaceSelector:
      matchExpressions: [{key: kubernetes.io/metadata.name, operator: In, values: [y]}]
"#,
            ));
            c.check("x/a from namespace In [y]");
        },
    );
}

#[test]
fn pod_selector_or_namespace_selector() {
    scenario("policy based on PodSelector or NamespaceSelector", |c| {
        c.put_policy(&np(
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
        ));
        c.check("x/a from other namespaces or x/b");
    });
}

#[test]
fn pod_selector_and_namespace_selector() {
    scenario("policy based on PodSelector and NamespaceSelector", |c| {
        c.put_policy(&np(
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
        ));
        c.check("x/a from pod b in other namespaces");
    });
}

#[test]
fn multiple_pod_selectors_and_namespace_selectors() {
    scenario(
        "policy based on Multiple PodSelectors and NamespaceSelectors",
        |c| {
            c.put_policy(&np(
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
            ));
            c.check("x/a from pods b,c outside x");
        },
    );
}

#[test]
fn any_pod_selectors() {
    scenario("policy based on any PodSelectors", |c| {
        c.put_policy(&np(
            "x",
            "allow-ns-x-pod-b-c",
            r#"
podSelector: {matchLabels: {pod: a}}
ingress:
- from:
  - podSelector: {matchLabels: {pod: b}}
  - podSelector: {matchLabels: {pod: c}}
"#,
        ));
        c.check("x/a from x/b or x/c");
    });
}

#[test]
fn only_from_pod_in_other_namespace() {
    scenario(
        "allow traffic only from a pod in a different namespace (PodSelector and NamespaceSelector)",
        |c| {
            c.put_policy(&np(
                "x",
                "allow-ns-y-pod-a-via-namespace-pod-selector",
                r#"
podSelector: {matchLabels: {pod: a}}
ingress:
- from:
  - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
    podSelector: {matchLabels: {pod: a}}
"#,
            ));
            c.check("x/a only from y/a");
        },
    );
}

#[test]
fn policy_based_on_ports() {
    scenario("policy based on Ports (TCP and the UDP variant)", |c| {
        c.put_policy(&np(
            "x",
            "allow-client-a-via-ns-selector",
            r#"
podSelector: {matchLabels: {pod: a}}
ingress:
- from:
  - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
  ports:
  - {port: 81, protocol: TCP}
"#,
        ));
        c.check("x/a from y on TCP 81");
        c.put_policy(&np(
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
        ));
        c.check("x/a from y on UDP 81");
    });
}

#[test]
fn stacked_policies_with_overlapping_pod_selectors() {
    scenario(
        "multiple, stacked policies with overlapping podSelectors",
        |c| {
            c.put_policy(&np(
                "x",
                "allow-client-a-via-ns-selector",
                r#"
podSelector: {matchLabels: {pod: a}}
ingress:
- from:
  - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
  ports:
  - {port: 81, protocol: TCP}
"#,
            ));
            c.check("port 81 from y only");
            c.put_policy(&np(
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
            ));
            c.check("second policy opens port 80 too");
        },
    );
}

#[test]
fn allow_all_policy() {
    scenario("should support allow-all policy", |c| {
        c.put_policy(&np("x", "allow-all", "podSelector: {}\ningress:\n- {}"));
        c.check("allow all ingress in x");
    });
}

#[test]
fn ingress_on_one_named_port() {
    scenario("allow ingress access on one named port", |c| {
        c.put_policy(&np(
            "x",
            "allow-all",
            "podSelector: {}\ningress:\n- ports:\n  - port: serve-81-tcp",
        ));
        c.check("x only on named port serve-81-tcp");
    });
}

#[test]
fn ingress_from_namespace_on_one_named_port() {
    scenario(
        "allow ingress access from namespace on one named port",
        |c| {
            c.put_policy(&np(
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
            ));
            c.check("x/a from y on serve-80-tcp");
        },
    );
}

#[test]
fn egress_on_one_named_port() {
    scenario("allow egress access on one named port", |c| {
        c.put_policy(&np(
            "x",
            "allow-egress",
            "podSelector: {}\negress:\n- ports:\n  - port: serve-80-tcp",
        ));
        c.check("x egress only to named port serve-80-tcp");
        // The UDP twin: a named UDP port resolves per destination pod too.
        c.put_policy(&np(
            "x",
            "allow-egress",
            "podSelector: {}\negress:\n- ports:\n  - {port: serve-81-udp, protocol: UDP}",
        ));
        c.check("x egress only to named port serve-81-udp");
    });
}

#[test]
fn enforce_updated_policy() {
    scenario("should enforce updated policy", |c| {
        c.put_policy(&np(
            "x",
            "allow-all-mutate-to-deny-all",
            "podSelector: {}\ningress:\n- {}",
        ));
        c.check("allow all");
        c.put_policy(&np(
            "x",
            "allow-all-mutate-to-deny-all",
            "podSelector: {}\ningress: []",
        ));
        c.check("same policy updated to deny all");
    });
}

#[test]
fn ingress_from_updated_namespace() {
    scenario("allow ingress access from updated namespace", |c| {
        c.put_policy(&np(
            "x",
            "allow-client-a-via-ns-selector",
            r#"
podSelector: {matchLabels: {pod: a}}
ingress:
- from:
  - namespaceSelector: {matchLabels: {ns2: updated}}
"#,
        ));
        c.check("no namespace has ns2=updated yet");
        c.set_namespace_labels("y", labels(&[("ns", "y"), ("ns2", "updated")]));
        c.check("namespace y labelled ns2=updated");
        c.set_namespace_labels("y", labels(&[("ns", "y")]));
        c.check("label removed again");
    });
}

#[test]
fn ingress_from_updated_pod() {
    scenario("allow ingress access from updated pod", |c| {
        c.put_policy(&np(
            "x",
            "allow-client-a-via-pod-selector",
            r#"
podSelector: {matchLabels: {pod: a}}
ingress:
- from:
  - podSelector: {matchLabels: {pod: b, pod2: updated}}
"#,
        ));
        c.check("x/b not yet labelled");
        c.set_pod_labels("x", "b", labels(&[("pod", "b"), ("pod2", "updated")]));
        c.check("x/b labelled pod2=updated");
    });
}

#[test]
fn deny_ingress_from_other_namespaces() {
    scenario("should deny ingress from pods on other namespaces", |c| {
        c.put_policy(&np(
            "x",
            "deny-empty-policy",
            "podSelector: {}\ningress:\n- from:\n  - podSelector: {matchLabels: {}}",
        ));
        c.check("x accepts only x");
    });
}

#[test]
fn deny_ingress_to_updated_pod() {
    scenario("should deny ingress access to updated pod", |c| {
        c.put_policy(&np(
            "x",
            "deny-ingress-via-label-selector",
            "podSelector: {matchLabels: {target: isolated}}\npolicyTypes: [Ingress]",
        ));
        c.check("nothing selected yet");
        c.set_pod_labels("x", "a", labels(&[("pod", "a"), ("target", "isolated")]));
        c.check("x/a now isolated");
    });
}

#[test]
fn deny_egress_by_pod_selector() {
    scenario("should deny egress from pods based on PodSelector", |c| {
        c.put_policy(&np(
            "x",
            "deny-egress-pod-a",
            "podSelector: {matchLabels: {pod: a}}\npolicyTypes: [Egress]",
        ));
        c.check("x/a sends nothing");
    });
}

#[test]
fn deny_egress_from_namespace() {
    scenario("should deny egress from all pods in a namespace", |c| {
        c.put_policy(&np(
            "x",
            "deny-egress-ns-x",
            "podSelector: {}\npolicyTypes: [Egress]",
        ));
        c.check("x sends nothing");
    });
}

#[test]
fn ingress_and_egress_together() {
    scenario("should work with Ingress, Egress specified together", |c| {
        c.put_policy(&np(
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
        ));
        c.check("x/a in from x/b, out to port 80");
    });
}

#[test]
fn client_side_egress_deny_wins() {
    scenario(
        "deny egress on the client side even if the server allows it",
        |c| {
            c.put_policy(&np(
                "x",
                "allow-to-ns-y-pod-a",
                r#"
podSelector: {matchLabels: {pod: a}}
egress:
- to:
  - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
    podSelector: {matchLabels: {pod: a}}
"#,
            ));
            let from_xa = r#"
ingress:
- from:
  - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: x}}
    podSelector: {matchLabels: {pod: a}}
"#;
            c.put_policy(&np(
                "y",
                "allow-from-xa-on-ya-match-selector",
                &format!("podSelector: {{matchLabels: {{pod: a}}}}{from_xa}"),
            ));
            c.put_policy(&np(
                "y",
                "allow-from-xa-on-yb-match-selector",
                &format!("podSelector: {{matchLabels: {{pod: b}}}}{from_xa}"),
            ));
            c.check("x/a reaches y/a only");
        },
    );
}

#[test]
fn egress_to_pod_in_other_namespace() {
    scenario(
        "egress policy allowing traffic to a server in a different namespace (PodSelector and NamespaceSelector)",
        |c| {
            c.put_policy(&np(
                "x",
                "allow-to-ns-y-pod-a",
                r#"
podSelector: {matchLabels: {pod: a}}
egress:
- to:
  - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
    podSelector: {matchLabels: {pod: a}}
"#,
            ));
            c.check("x/a egress only to y/a");
        },
    );
}

#[test]
fn ingress_any_port_on_one_protocol() {
    scenario("ingress allowing any port on a specific protocol", |c| {
        c.put_policy(&np(
            "x",
            "allow-ingress-by-proto",
            "podSelector: {matchLabels: {pod: a}}\ningress:\n- ports:\n  - protocol: TCP",
        ));
        c.check("x/a: TCP any port, no UDP");
    });
}

#[test]
fn ingress_allow_all_takes_precedence() {
    scenario(
        "multiple ingress policies with allow-all taking precedence",
        |c| {
            c.put_policy(&np(
                "x",
                "allow-ingress-port-80",
                "podSelector: {}\ningress:\n- ports:\n  - port: 80",
            ));
            c.check("x only on TCP 80");
            c.put_policy(&np("x", "allow-ingress", "podSelector: {}\ningress:\n- {}"));
            c.check("allow-all added");
        },
    );
}

#[test]
fn egress_allow_all_takes_precedence() {
    scenario(
        "multiple egress policies with allow-all taking precedence",
        |c| {
            c.put_policy(&np(
                "x",
                "allow-egress-port-80",
                "podSelector: {}\negress:\n- ports:\n  - port: 80",
            ));
            c.check("x egress only on TCP 80");
            c.put_policy(&np("x", "allow-egress", "podSelector: {}\negress:\n- {}"));
            c.check("egress allow-all added");
        },
    );
}

#[test]
fn stop_enforcing_deleted_policies() {
    scenario(
        "should stop enforcing policies after they are deleted",
        |c| {
            c.put_policy(&np(
                "x",
                "deny-all",
                "podSelector: {}\npolicyTypes: [Ingress, Egress]",
            ));
            c.check("x denied both ways");
            c.delete_policy("x", "deny-all");
            c.check("policy deleted");
        },
    );
}

/// The address of pod `ns/name` in the model, for ipBlock scenarios.
fn ips(c: &SimCluster, ns: &str, name: &str) -> (String, String) {
    let p = &c.topo.pods[c.pod_index(ns, name)];
    (p.v4.to_string(), p.v6.to_string())
}

#[test]
fn egress_to_cidr_block() {
    scenario("allow egress access to server in CIDR block", |c| {
        let (v4, v6) = ips(c, "y", "b");
        c.put_policy(&np(
            "x",
            "allow-client-a-via-cidr-egress-rule",
            &format!(
                "podSelector: {{matchLabels: {{pod: a}}}}\negress:\n- to:\n  - ipBlock: {{cidr: {v4}/32}}\n  - ipBlock: {{cidr: {v6}/128}}"
            ),
        ));
        c.check("x/a egress only to y/b's addresses");
    });
}

#[test]
fn egress_cidr_except() {
    scenario(
        "except clause while egress access to server in CIDR block",
        |c| {
            let (v4, v6) = ips(c, "x", "b");
            c.put_policy(&np(
                "x",
                "allow-client-a-via-cidr-egress-rule",
                &format!(
                    r#"podSelector: {{matchLabels: {{pod: a}}}}
egress:
- to:
  - ipBlock: {{cidr: 10.0.0.0/8, except: [{v4}/32]}}
  - ipBlock: {{cidr: "fd00::/16", except: ["{v6}/128"]}}"#
                ),
            ));
            c.check("x/a egress everywhere but x/b");
        },
    );
}

#[test]
fn ip_in_both_cidr_and_except_is_allowed_by_another_rule() {
    scenario(
        "an IP overlapping both IPBlock.CIDR and IPBlock.Except is allowed",
        |c| {
            let (v4, v6) = ips(c, "x", "b");
            c.put_policy(&np(
                "x",
                "allow-client-a-via-cidr-egress-rule",
                &format!(
                    r#"podSelector: {{matchLabels: {{pod: a}}}}
egress:
- to:
  - ipBlock: {{cidr: 10.0.0.0/8, except: [{v4}/32]}}
  - ipBlock: {{cidr: "fd00::/16", except: ["{v6}/128"]}}"#
                ),
            ));
            c.check("x/b excepted");
            // Upstream replaces the policy with one allowing only x/b.
            c.put_policy(&np(
                "x",
                "allow-client-a-via-cidr-egress-rule",
                &format!(
                    r#"podSelector: {{matchLabels: {{pod: a}}}}
egress:
- to:
  - ipBlock: {{cidr: {v4}/32}}
  - ipBlock: {{cidr: "{v6}/128"}}"#
                ),
            ));
            c.check("x/a egress only to x/b");
        },
    );
}

#[test]
fn ingress_and_egress_controlled_independently() {
    scenario(
        "ingress and egress policies controlled independently",
        |c| {
            c.check("no policies");
            c.put_policy(&np(
                "x",
                "allow-egress-for-target",
                "podSelector: {matchLabels: {pod: a}}\negress:\n- {}",
            ));
            c.check("x/a egress allow-all");
            c.put_policy(&np(
                "x",
                "deny-ingress-via-label-selector",
                "podSelector: {matchLabels: {pod: a}}\npolicyTypes: [Ingress]",
            ));
            c.check("x/a ingress denied");
        },
    );
}

#[test]
fn sctp_is_not_tcp() {
    scenario("'protocol: SCTP' is not treated as TCP", |c| {
        c.put_policy(&np(
            "x",
            "deny-ingress",
            "podSelector: {}\npolicyTypes: [Ingress]",
        ));
        c.put_policy(&np(
            "x",
            "allow-only-sctp-ingress-on-port-81",
            "podSelector: {matchLabels: {pod: a}}\ningress:\n- ports:\n  - {port: 81, protocol: SCTP}",
        ));
        c.check("x denied; SCTP 81 open to x/a");
        crate::sctp::check_sctp(c, "x denied; SCTP 81 open to x/a (SCTP packets)");
    });
}

#[test]
fn sctp_only_policy_isolates() {
    scenario(
        "a policy allowing only SCTP still isolates for TCP and UDP",
        |c| {
            c.put_policy(&np(
            "x",
            "allow-only-sctp-ingress-on-port-80",
            "podSelector: {matchLabels: {pod: a}}\ningress:\n- ports:\n  - {port: 80, protocol: SCTP}",
        ));
            c.check("x/a isolated but for SCTP 80");
            crate::sctp::check_sctp(c, "x/a isolated but for SCTP 80 (SCTP packets)");
        },
    );
}

#[test]
fn udp_only_policy_does_not_allow_tcp() {
    scenario("no access by TCP when a policy specifies only UDP", |c| {
        c.put_policy(&np(
            "x",
            "allow-only-udp-ingress-on-port-81",
            "podSelector: {matchLabels: {pod: a}}\ningress:\n- ports:\n  - {port: 81, protocol: UDP}",
        ));
        c.check("x/a: only UDP 81");
    });
}

#[test]
fn namespace_selector_default_label_match_labels() {
    scenario(
        "NamespaceSelector with MatchLabels using the default ns label",
        |c| {
            c.put_policy(&np(
                "x",
                "allow-client-a-via-ns-selector-for-immutable-ns-label",
                r#"
podSelector: {matchLabels: {pod: a}}
ingress:
- from:
  - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
"#,
            ));
            c.check("x/a from y by name label");
        },
    );
}

#[test]
fn namespace_selector_default_label_match_expressions_egress() {
    scenario(
        "NamespaceSelector with MatchExpressions using the default ns label (egress)",
        |c| {
            c.put_policy(&np(
                "x",
                "allow-ns-y-match-selector-for-immutable-ns-label",
                r#"
podSelector: {matchLabels: {pod: a}}
egress:
- to:
  - namespaceSelector:
      matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [y]}]
"#,
            ));
            c.check("x/a egress anywhere but y");
        },
    );
}

#[test]
fn port_range_end_port() {
    // Upstream's endPort case (present in earlier releases of the suite).
    scenario("ingress on a port range with endPort", |c| {
        c.put_policy(&np(
            "x",
            "allow-port-range",
            r#"
podSelector: {matchLabels: {pod: a}}
ingress:
- ports:
  - {port: 81, endPort: 90, protocol: TCP}
  - {port: 70, endPort: 80, protocol: UDP}
"#,
        ));
        c.check("x/a: TCP 81-90, UDP 70-80");
    });
}

/// The bridged node variant (pods of a node on one Linux bridge, as
/// bridge-based CNIs do; same-node traffic reaches nftables only through
/// br_netfilter): a handful of the scenarios above, one step each.
#[test]
fn bridged_nodes() {
    require_root!();
    if !crate::netns::br_netfilter_available() {
        nftpol_test_support::skip(
            "bridged_nodes",
            "br_netfilter is not loaded; the bridged variant needs it",
        );
        return;
    }
    let mut c = SimCluster::upstream_model_on(true);
    c.check("bridged: no policies");
    c.put_policy(&np(
        "x",
        "deny-all",
        "podSelector: {}\npolicyTypes: [Ingress, Egress]",
    ));
    c.check("bridged: x denied both ways");
    c.clear_policies();
    c.put_policy(&np(
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
    ));
    let (v4, v6) = ips(&c, "x", "c");
    c.put_policy(&np(
        "y",
        "egress-cidr-except",
        &format!(
            r#"podSelector: {{}}
egress:
- to:
  - ipBlock: {{cidr: 10.244.0.0/16, except: [{v4}/32]}}
  - ipBlock: {{cidr: "fd00:10:244::/48", except: ["{v6}/128"]}}"#
        ),
    ));
    c.check("bridged: selectors, named ports, ipBlock except");
}

/// Traffic from a node: its own pods always accept it (upstream requires
/// kubelet probes to work), other nodes' isolated pods judge it as any
/// other source address (here the node's fabric address), so an ipBlock
/// can let it in.
#[test]
fn node_to_pod_traffic() {
    use crate::probe::{Probe, Proto, PORTS};
    use std::net::IpAddr;
    require_root!();
    let mut c = SimCluster::upstream_model();
    for ns in ["x", "y", "z"] {
        c.put_policy(&np(
            ns,
            "deny-ingress",
            "podSelector: {}\npolicyTypes: [Ingress]",
        ));
    }
    let check = |c: &mut SimCluster, step: &str| {
        c.program();
        let model = crate::oracle::Model::load(&c.manifests());
        let nodes = c.topo.nodes.clone();
        let mut probes = Vec::new();
        for src in 0..nodes.len() {
            for dst in 0..c.pods.len() {
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
        let observed = crate::cluster::observe_between(&probes, &netns, &ips, &expected);
        let wrong: Vec<String> = (0..probes.len())
            .filter(|&i| expected[i] != observed[i])
            .map(|i| {
                let p = probes[i];
                format!(
                    "{} -> {} {} {}/{}: expected {}, observed {}",
                    nodes[p.src].name,
                    c.label(p.dst),
                    if p.v6 { "IPv6" } else { "IPv4" },
                    p.proto.name(),
                    p.port,
                    expected[i],
                    observed[i]
                )
            })
            .collect();
        eprintln!(
            "step {step:?}: {} node probes, {} wrong",
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
    };
    check(
        &mut c,
        "every namespace denies ingress: only own node gets in",
    );
    c.put_policy(&np(
        "x",
        "allow-from-nodes",
        r#"
podSelector: {}
ingress:
- from:
  - ipBlock: {cidr: 172.31.255.0/30}
  - ipBlock: {cidr: "fd00:ffff::/64"}
"#,
    ));
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
    c.delete_policy("x", "allow-from-nodes");
    c.put_policy(&np(
        "x",
        "a-from-y-a",
        r#"
podSelector: {matchLabels: {pod: a}}
ingress:
- from:
  - namespaceSelector: {matchLabels: {ns: y}}
    podSelector: {matchLabels: {pod: a}}
"#,
    ));
    check(&mut c, "a hostNetwork pod labelled like y/a is not a peer");
}

/// Traffic from pods to nodes: the source pod's egress rules judge it like
/// any other destination address, on its own node through the `input`
/// hook and on the other node through `forward`.
#[test]
fn pod_to_node_traffic() {
    use crate::probe::{Probe, Proto, PORTS};
    require_root!();
    let mut c = SimCluster::upstream_model();
    c.serve_on_nodes();
    let check = |c: &mut SimCluster, step: &str| {
        c.program();
        let model = crate::oracle::Model::load(&c.manifests());
        let nodes = c.topo.nodes.clone();
        let mut probes = Vec::new();
        for src in 0..c.pods.len() {
            for dst in 0..nodes.len() {
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
        let observed = crate::cluster::observe_between(&probes, &netns, &ips, &expected);
        let wrong: Vec<String> = (0..probes.len())
            .filter(|&i| expected[i] != observed[i])
            .map(|i| {
                let p = probes[i];
                format!(
                    "{} -> {} {} {}/{}: expected {}, observed {}",
                    c.label(p.src),
                    nodes[p.dst].name,
                    if p.v6 { "IPv6" } else { "IPv4" },
                    p.proto.name(),
                    p.port,
                    expected[i],
                    observed[i]
                )
            })
            .collect();
        eprintln!(
            "step {step:?}: {} pod-to-node probes, {} wrong",
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
    };
    check(&mut c, "no policies: every node reachable");
    c.put_policy(&np(
        "z",
        "deny-egress",
        "podSelector: {}\npolicyTypes: [Egress]",
    ));
    c.put_policy(&np(
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
    ));
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
    use crate::probe::{Probe, Proto, PORTS};
    use std::net::{Ipv4Addr, Ipv6Addr};
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
        let mut probes = Vec::new();
        for src in 0..c.pods.len() {
            // The backend reaching itself through its own Service
            // (hairpin) needs masquerading, which is not modelled here.
            if src == backend {
                continue;
            }
            for v6 in [false, true] {
                for proto in Proto::ALL {
                    for port in PORTS {
                        probes.push(Probe {
                            src,
                            dst: 0,
                            v6,
                            proto,
                            port,
                        });
                    }
                }
            }
        }
        let expected: Vec<bool> = probes
            .iter()
            .map(|p| model.allowed(&c.pods[p.src], &c.pods[backend], p.v6, p.proto, p.port))
            .collect();
        let (netns, _) = c.netns_and_ips();
        let observed = crate::cluster::observe_between(&probes, &netns, &[(vip4, vip6)], &expected);
        let wrong: Vec<String> = (0..probes.len())
            .filter(|&i| expected[i] != observed[i])
            .map(|i| {
                let p = probes[i];
                format!(
                    "{} -> service (x/a) {} {}/{}: expected {}, observed {}",
                    c.label(p.src),
                    if p.v6 { "IPv6" } else { "IPv4" },
                    p.proto.name(),
                    p.port,
                    expected[i],
                    observed[i]
                )
            })
            .collect();
        eprintln!(
            "step {step:?}: {} service probes, {} wrong",
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
    c.put_policy(&np(
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
    ));
    c.put_policy(&np(
        "z",
        "c-egress-only-to-x-a",
        "podSelector: {matchLabels: {pod: c}}\negress:\n- to:\n  - namespaceSelector: {matchLabels: {ns: x}}\n    podSelector: {matchLabels: {pod: a}}",
    ));
    check(
        &mut c,
        "backend admits y and z/c on TCP 80; z/c may only reach x/a",
    );
}

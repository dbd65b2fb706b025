//! The evaluator's own statement of the predicates NetworkPolicy semantics
//! rest on: label selector matching, ipBlock membership, named-port
//! resolution and which pods policies can select. The compiler has its own
//! versions (`Selector::matches`, the ranges of `ipblock`, `Pod::resolve_port`,
//! `Pod::is_policy_pod`); these are written apart from them on purpose, so a
//! bug on one side shows as a disagreement in the property tests. The tests
//! below hold both sides to the same tables.

use crate::index::Cluster;
use crate::model::{Labels, Pod, Protocol, NAMESPACE_NAME_LABEL};
use crate::selector::{Operator, Selector};
use ipnet::IpNet;
use std::borrow::Cow;
use std::net::IpAddr;

/// Whether `selector` selects an object with `labels`: every matchLabels
/// pair is present, and every expression holds (`NotIn` and
/// `DoesNotExist` hold for an absent key). The empty selector selects all.
pub fn selects(selector: &Selector, labels: &Labels) -> bool {
    for (key, want) in &selector.match_labels {
        if labels.get(key) != Some(want) {
            return false;
        }
    }
    for req in &selector.match_expressions {
        let value = labels.get(&req.key);
        let holds = match (req.operator, value) {
            (Operator::Exists, v) => v.is_some(),
            (Operator::DoesNotExist, v) => v.is_none(),
            (Operator::In, None) => false,
            (Operator::In, Some(v)) => req.values.contains(v),
            (Operator::NotIn, None) => true,
            (Operator::NotIn, Some(v)) => !req.values.contains(v),
        };
        if !holds {
            return false;
        }
    }
    true
}

/// Whether `ip` lies in `cidr` and in none of `except`, tested on the
/// address itself (no range arithmetic). A block of one family never
/// holds an address of the other.
pub fn in_ip_block(cidr: &IpNet, except: &[IpNet], ip: IpAddr) -> bool {
    cidr.contains(&ip) && !except.iter().any(|e| e.contains(&ip))
}

/// Whether the container port `name` of `pod` for `protocol` is `port`.
/// The first declaration of a (name, protocol) pair is the one that
/// counts; a name the pod does not declare admits nothing.
pub fn named_port(pod: &Pod, name: &str, protocol: Protocol, port: u16) -> bool {
    pod.named_ports
        .iter()
        .find(|np| np.protocol == protocol && np.name == name)
        .is_some_and(|np| np.port == port)
}

/// Whether policies can select `pod` or match it as a peer: not on the
/// host network, not finished (its address may be reused), and addressed.
pub fn is_policy_pod(pod: &Pod) -> bool {
    !(pod.host_network || pod.terminal || pod.ips.is_empty())
}

/// The pod policies can select that owns `ip`; with duplicate addresses the
/// first in namespace/name order.
pub fn policy_pod_by_ip(cluster: &Cluster, ip: IpAddr) -> Option<&Pod> {
    cluster
        .pods()
        .filter(|p| is_policy_pod(p))
        .find(|p| p.ips.contains(&ip))
}

/// Every pod policies can select that lists `ip`: more than one when an
/// address was reused while its old pod is still listed as running.
pub fn claimants(cluster: &Cluster, ip: IpAddr) -> Vec<&Pod> {
    cluster
        .pods()
        .filter(|p| is_policy_pod(p) && p.ips.contains(&ip))
        .collect()
}

/// The labels namespace selectors see on namespace `name`: the object's,
/// or only the name label the apiserver sets when the object is unknown.
pub fn namespace_labels<'c>(cluster: &'c Cluster, name: &str) -> Cow<'c, Labels> {
    match cluster.namespace(name) {
        Some(ns) => Cow::Borrowed(&ns.labels),
        None => {
            let mut implicit = Labels::new();
            implicit.insert(NAMESPACE_NAME_LABEL.to_string(), name.to_string());
            Cow::Owned(implicit)
        }
    }
}

/// Each table row is checked against the evaluator's predicate and the
/// compiler's, so the two can only agree with each other by agreeing with
/// the table.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipblock::{cidr_minus, merge};
    use crate::model::{NamedPort, Namespace};
    use crate::selector::Requirement;

    fn labels(kv: &[(&str, &str)]) -> Labels {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// `"k=v"` is a matchLabels pair; `"k in a|b"`, `"k notin a|b"`,
    /// `"k exists"`, `"k !exists"` are expressions.
    fn selector(terms: &[&str]) -> Selector {
        let mut s = Selector::default();
        for t in terms {
            if let Some((k, v)) = t.split_once('=') {
                s.match_labels.insert(k.into(), v.into());
                continue;
            }
            let mut words = t.split(' ');
            let key = words.next().expect("key").to_string();
            let operator = match words.next().expect("operator") {
                "in" => Operator::In,
                "notin" => Operator::NotIn,
                "exists" => Operator::Exists,
                "!exists" => Operator::DoesNotExist,
                other => panic!("unknown operator {other}"),
            };
            let values = words
                .next()
                .map(|v| v.split('|').map(str::to_string).collect())
                .unwrap_or_default();
            s.match_expressions.push(Requirement {
                key,
                operator,
                values,
            });
        }
        s
    }

    /// (selector terms, labels, whether it selects).
    type SelectorRow<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], bool);

    #[test]
    fn selector_matching_table() {
        let web_fe = [("app", "web"), ("tier", "fe")];
        #[rustfmt::skip]
        let table: &[SelectorRow] = &[
            (&[], &[], true),
            (&[], &web_fe, true),
            (&["app=web"], &web_fe, true),
            (&["app=web"], &[("app", "db")], false),
            (&["app=web"], &[], false),
            (&["app=web", "tier=fe"], &web_fe, true),
            (&["app=web", "tier=be"], &web_fe, false),
            (&["app in web|db"], &web_fe, true),
            (&["app in db"], &web_fe, false),
            (&["x in db"], &web_fe, false),
            (&["app notin db"], &web_fe, true),
            (&["app notin web|db"], &web_fe, false),
            // NotIn holds when the key is absent, as upstream.
            (&["x notin db"], &web_fe, true),
            (&["x notin db"], &[], true),
            (&["tier exists"], &web_fe, true),
            (&["x exists"], &web_fe, false),
            (&["x !exists"], &web_fe, true),
            (&["app !exists"], &web_fe, false),
            // Expressions and labels are ANDed.
            (&["app=web", "tier exists"], &web_fe, true),
            (&["app=web", "tier exists"], &[("app", "web")], false),
            (&["app=db", "tier exists"], &web_fe, false),
            (&["app in web", "app notin web"], &web_fe, false),
            (&["app in web", "tier notin be"], &web_fe, true),
            // Values compare whole and case-sensitively.
            (&["app=Web"], &web_fe, false),
            (&["app in we"], &web_fe, false),
        ];
        for (terms, l, want) in table {
            let (s, l) = (selector(terms), labels(l));
            assert_eq!(selects(&s, &l), *want, "evaluator: {terms:?} on {l:?}");
            assert_eq!(s.matches(&l), *want, "compiler: {terms:?} on {l:?}");
        }
    }

    /// The compiler's view of an ipBlock: cidr minus except as ranges,
    /// merged as interval sets hold them.
    fn compiler_in_block(cidr: &IpNet, except: &[IpNet], ip: IpAddr) -> bool {
        merge(cidr_minus(cidr, except))
            .iter()
            .any(|r| r.contains(ip))
    }

    #[test]
    fn ip_block_membership_table() {
        #[rustfmt::skip]
        let table: &[(&str, &[&str], &str, bool)] = &[
            ("10.0.0.0/24", &[], "10.0.0.0", true),
            ("10.0.0.0/24", &[], "10.0.0.255", true),
            ("10.0.0.0/24", &[], "10.0.1.0", false),
            ("10.0.0.0/24", &[], "9.255.255.255", false),
            // A cidr with host bits set means its network.
            ("10.0.0.7/24", &[], "10.0.0.200", true),
            ("10.0.0.0/24", &["10.0.0.128/25"], "10.0.0.127", true),
            ("10.0.0.0/24", &["10.0.0.128/25"], "10.0.0.128", false),
            ("10.0.0.0/24", &["10.0.0.128/25"], "10.0.0.255", false),
            ("10.0.0.0/24", &["10.0.0.16/28", "10.0.0.20/32"], "10.0.0.15", true),
            ("10.0.0.0/24", &["10.0.0.16/28", "10.0.0.20/32"], "10.0.0.20", false),
            ("10.0.0.0/24", &["10.0.0.16/28", "10.0.0.20/32"], "10.0.0.31", false),
            ("10.0.0.0/24", &["10.0.0.16/28", "10.0.0.20/32"], "10.0.0.32", true),
            ("10.0.0.0/24", &["10.0.0.0/24"], "10.0.0.1", false),
            ("10.0.0.5/32", &[], "10.0.0.5", true),
            ("10.0.0.5/32", &[], "10.0.0.6", false),
            ("0.0.0.0/0", &["10.0.0.0/8"], "11.0.0.1", true),
            ("0.0.0.0/0", &["10.0.0.0/8"], "10.200.0.1", false),
            ("0.0.0.0/0", &[], "255.255.255.255", true),
            // Families never mix, neither in cidr nor in except.
            ("0.0.0.0/0", &[], "::1", false),
            ("::/0", &[], "10.0.0.1", false),
            ("10.0.0.0/8", &["::/0"], "10.1.1.1", true),
            ("::/0", &["fd00::/8"], "fd12::1", false),
            ("::/0", &["fd00::/8"], "fe80::1", true),
            ("::/0", &[], "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", true),
            ("fd00::/64", &["fd00::200/120"], "fd00::1ff", true),
            ("fd00::/64", &["fd00::200/120"], "fd00::2ff", false),
            ("fd00::/64", &["fd00::200/120"], "fd00::300", true),
            ("fd00::/64", &[], "fd00:0:0:1::", false),
        ];
        for (cidr, except, ip, want) in table {
            let cidr: IpNet = cidr.parse().expect("table cidr");
            let except: Vec<IpNet> = except
                .iter()
                .map(|e| e.parse().expect("table except"))
                .collect();
            let ip: IpAddr = ip.parse().expect("table ip");
            assert_eq!(
                in_ip_block(&cidr, &except, ip),
                *want,
                "evaluator: {cidr} except {except:?} holds {ip}"
            );
            assert_eq!(
                compiler_in_block(&cidr, &except, ip),
                *want,
                "compiler: {cidr} except {except:?} holds {ip}"
            );
        }
    }

    fn pod_with_ports(ports: &[(&str, Protocol, u16)]) -> Pod {
        Pod {
            namespace: "ns".into(),
            name: "p".into(),
            labels: Labels::new(),
            node_name: Some("n".into()),
            host_network: false,
            ips: vec!["10.0.0.1".parse().expect("ip")],
            named_ports: ports
                .iter()
                .map(|(name, protocol, port)| NamedPort {
                    name: name.to_string(),
                    protocol: *protocol,
                    port: *port,
                })
                .collect(),
            terminal: false,
        }
    }

    #[test]
    fn named_port_resolution_table() {
        use Protocol::*;
        let ports: &[(&str, Protocol, u16)] = &[
            ("http", Tcp, 8080),
            ("dns", Udp, 53),
            ("dns", Tcp, 5353),
            ("sig", Sctp, 3868),
        ];
        // (name, protocol, resolves to)
        #[rustfmt::skip]
        let table: &[(&str, Protocol, Option<u16>)] = &[
            ("http", Tcp, Some(8080)),
            // The name is bound to its protocol.
            ("http", Udp, None),
            ("dns", Udp, Some(53)),
            ("dns", Tcp, Some(5353)),
            ("sig", Sctp, Some(3868)),
            ("sig", Tcp, None),
            ("missing", Tcp, None),
            // Names compare whole and case-sensitively.
            ("HTTP", Tcp, None),
            ("htt", Tcp, None),
        ];
        let pod = pod_with_ports(ports);
        for (name, protocol, want) in table {
            assert_eq!(
                pod.resolve_port(name, *protocol),
                *want,
                "compiler: {name}/{protocol:?}"
            );
            for port in [53, 3868, 5353, 8080, 80] {
                assert_eq!(
                    named_port(&pod, name, *protocol, port),
                    *want == Some(port),
                    "evaluator: {name}/{protocol:?} is {port}"
                );
            }
        }
        // A pod without named ports resolves nothing.
        let bare = pod_with_ports(&[]);
        assert_eq!(bare.resolve_port("http", Tcp), None);
        assert!(!named_port(&bare, "http", Tcp, 8080));
    }

    #[test]
    fn policy_pod_table() {
        let base = pod_with_ports(&[]);
        let host = Pod {
            host_network: true,
            ..base.clone()
        };
        let done = Pod {
            terminal: true,
            ..base.clone()
        };
        let no_ip = Pod {
            ips: vec![],
            ..base.clone()
        };
        for (pod, want) in [
            (&base, true),
            (&host, false),
            (&done, false),
            (&no_ip, false),
        ] {
            assert_eq!(is_policy_pod(pod), want, "evaluator: {pod:?}");
            assert_eq!(pod.is_policy_pod(), want, "compiler: {pod:?}");
        }
    }

    #[test]
    fn pod_by_ip_skips_pods_policies_cannot_select() {
        let ip: IpAddr = "10.0.0.1".parse().expect("ip");
        let mut c = Cluster::new();
        c.apply_pod(Pod {
            name: "a-host".into(),
            host_network: true,
            ..pod_with_ports(&[])
        });
        assert_eq!(policy_pod_by_ip(&c, ip), None);
        assert_eq!(c.policy_pod_by_ip(ip), None);
        c.apply_pod(Pod {
            name: "b".into(),
            ..pod_with_ports(&[])
        });
        c.apply_pod(Pod {
            name: "c".into(),
            ..pod_with_ports(&[])
        });
        assert_eq!(policy_pod_by_ip(&c, ip).map(|p| p.name.as_str()), Some("b"));
        assert_eq!(c.policy_pod_by_ip(ip).map(|p| p.name.as_str()), Some("b"));
    }

    #[test]
    fn unknown_namespaces_carry_only_their_name_label() {
        let mut c = Cluster::new();
        c.apply_namespace(Namespace {
            name: "x".into(),
            labels: labels(&[("team", "a")]),
        });
        for (ns, want) in [
            ("x", labels(&[("team", "a")])),
            ("y", labels(&[(NAMESPACE_NAME_LABEL, "y")])),
        ] {
            assert_eq!(*namespace_labels(&c, ns), want, "evaluator: {ns}");
            assert_eq!(*c.namespace_labels(ns), want, "compiler: {ns}");
        }
    }
}

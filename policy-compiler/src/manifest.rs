//! Parsing manifest text: multi-document YAML (or JSON) with Namespace,
//! Pod, NetworkPolicy, Node and admin policy objects (ClusterNetworkPolicy,
//! AdminNetworkPolicy, BaselineAdminNetworkPolicy), and `kind: List`
//! documents exactly as `kubectl get ... -o yaml` prints them. Each
//! object is converted on its own: an invalid one becomes an error naming
//! the file, the object and the field, and the rest still load.
//!
//! The YAML layer (serde-saphyr) runs under a budget: input size, nesting
//! depth, node count and alias expansion are bounded, so a hostile or
//! broken file is answered with an error in time linear in its size
//! instead of exhausting the stack, memory or CPU.

use crate::admin::convert as admin;
use crate::convert;
use crate::error::{Error, ObjectError};
use crate::model::{Namespace, Pod, Policy};
use serde_json::Value;

/// Largest manifest text read, in bytes. A `kubectl get -o yaml` dump of
/// 20,000 pods is about 50 MiB.
pub const MAX_INPUT_BYTES: usize = 256 << 20;
/// Deepest nesting of mappings and sequences. A pod in a `kubectl get -o
/// yaml` list nests 13 levels (managedFields is the deepest). Parsing and
/// building values recurse once per level: 64 levels fit in the 2 MiB
/// stack of a tokio worker even in a debug build, where 100 do not.
pub const MAX_DEPTH: usize = 64;
/// Alias uses per text: manifests seldom use anchors, and each alias can
/// multiply the work of deserialising.
pub const MAX_ALIASES: usize = 1000;
/// Events copied for anchors: bounds alias expansion ("billion laughs").
const MAX_ANCHOR_EVENTS: usize = 100_000;

const ADMIN_V1ALPHA1: &str = "policy.networking.k8s.io/v1alpha1";
const ADMIN_V1ALPHA2: &str = "policy.networking.k8s.io/v1alpha2";

/// One object nftpol enforces on.
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    Namespace(Namespace),
    Pod(Pod),
    Policy(Policy),
    /// ClusterNetworkPolicy, AdminNetworkPolicy or BaselineAdminNetworkPolicy.
    AdminPolicy(crate::admin::AdminPolicy),
    Node(crate::admin::Node),
}

/// What one source held: the good objects and one error per bad one.
#[derive(Debug, Default)]
pub struct Loaded {
    pub objects: Vec<Object>,
    pub errors: Vec<Error>,
    /// Objects of kinds nftpol does not read (logged at debug level).
    pub ignored: usize,
}

impl Loaded {
    pub fn extend(&mut self, other: Loaded) {
        self.objects.extend(other.objects);
        self.errors.extend(other.errors);
        self.ignored += other.ignored;
    }
}

fn options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_depth = MAX_DEPTH;
    budget.max_aliases = MAX_ALIASES;
    budget.max_recorded_anchor_events = MAX_ANCHOR_EVENTS;
    // Size, not node count, bounds a dump: `MAX_INPUT_BYTES` is checked
    // before parsing and the parser is linear in its input.
    budget.max_nodes = usize::MAX;
    budget.max_events = usize::MAX;
    budget.max_documents = usize::MAX;
    budget.max_total_scalar_bytes = MAX_INPUT_BYTES;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options.with_snippet = false;
    // YAML 1.2 booleans, as serde_yaml read them: `n`, `no`, `off` and the
    // like stay strings, so `namespace: n` names a namespace.
    options.strict_booleans = true;
    options
}

/// Every YAML document of `text` as a generic value (empty documents are
/// null). Fails as a whole on a syntax error or an exceeded limit: a file
/// that is not entirely readable is not half-used.
pub fn documents(text: &str) -> Result<Vec<Value>, String> {
    if text.len() > MAX_INPUT_BYTES {
        return Err(format!(
            "{} bytes is more than the {MAX_INPUT_BYTES} bytes read from one source",
            text.len()
        ));
    }
    serde_saphyr::from_multiple_with_options::<Value>(text, options()).map_err(|e| {
        e.to_string()
            .trim_start_matches("error: ")
            .trim_end()
            .to_string()
    })
}

/// Parses every YAML document of `text`; `source` names it in errors.
pub fn parse(source: &str, text: &str) -> Loaded {
    let mut out = Loaded::default();
    match documents(text) {
        Ok(docs) => {
            for (i, value) in docs.iter().enumerate() {
                if !value.is_null() {
                    object(source, i + 1, value, &mut out);
                }
            }
        }
        Err(message) => out.errors.push(Error::Yaml {
            file: source.to_string(),
            message,
        }),
    }
    out
}

fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn object(source: &str, document: usize, value: &Value, out: &mut Loaded) {
    let kind = str_field(value, "kind").unwrap_or_default();
    let api_version = str_field(value, "apiVersion").unwrap_or_default();
    // An object cut short (a file caught mid-write) must not pass as a
    // document of no interest: one of the two type fields alone is an
    // error. A document with neither is no object (e.g. Helm values).
    if api_version.is_empty() != kind.is_empty() {
        let field = if kind.is_empty() {
            "kind"
        } else {
            "apiVersion"
        };
        out.errors.push(
            ObjectError {
                file: Some(source.to_string()),
                kind: if kind.is_empty() { "<no kind>" } else { kind }.to_string(),
                object: raw_object_name(value),
                field: field.to_string(),
                message: "missing".to_string(),
            }
            .into(),
        );
        return;
    }
    match (api_version, kind) {
        ("v1", "List")
        | (_, "NamespaceList")
        | (_, "PodList")
        | (_, "NetworkPolicyList")
        | (_, "NodeList")
        | (ADMIN_V1ALPHA2, "ClusterNetworkPolicyList")
        | (ADMIN_V1ALPHA1, "AdminNetworkPolicyList")
        | (ADMIN_V1ALPHA1, "BaselineAdminNetworkPolicyList") => {
            if let Some(Value::Array(items)) = value.get("items") {
                for item in items {
                    object(source, document, item, out);
                }
            }
        }
        ("v1", "Namespace") => {
            push(source, value, kind, out, |ns| {
                convert::namespace(ns, Some(source)).map(Object::Namespace)
            });
        }
        ("v1", "Pod") => {
            push(source, value, kind, out, |p| {
                convert::pod(p, Some(source)).map(Object::Pod)
            });
        }
        ("networking.k8s.io/v1", "NetworkPolicy") => {
            push(source, value, kind, out, |np| {
                convert::policy(np, Some(source)).map(Object::Policy)
            });
        }
        ("v1", "Node") => {
            push(source, value, kind, out, |n| {
                admin::node(n, Some(source)).map(Object::Node)
            });
        }
        (ADMIN_V1ALPHA2, "ClusterNetworkPolicy") => {
            push(source, value, kind, out, |p| {
                admin::cluster_network_policy(p, Some(source)).map(Object::AdminPolicy)
            });
        }
        (ADMIN_V1ALPHA1, "AdminNetworkPolicy") => {
            push(source, value, kind, out, |p| {
                admin::admin_network_policy(p, Some(source)).map(Object::AdminPolicy)
            });
        }
        (ADMIN_V1ALPHA1, "BaselineAdminNetworkPolicy") => {
            push(source, value, kind, out, |p| {
                admin::baseline_admin_network_policy(p, Some(source)).map(Object::AdminPolicy)
            });
        }
        (_, "NetworkPolicy") => {
            // A policy left out silently would let an audit of a dump
            // miss it: report it as skipped.
            out.errors.push(
                ObjectError {
                    file: Some(source.to_string()),
                    kind: kind.to_string(),
                    object: raw_object_name(value),
                    field: "apiVersion".to_string(),
                    message: format!("{api_version:?} is not read (want networking.k8s.io/v1)"),
                }
                .into(),
            );
        }
        _ => {
            tracing::debug!(source, document, %api_version, %kind, "ignoring object of a kind nftpol does not read");
            out.ignored += 1;
        }
    }
}

/// `namespace/name` (or `name`) of a raw object, for error messages.
fn raw_object_name(value: &Value) -> String {
    let meta = value.get("metadata");
    let name = meta
        .and_then(|m| str_field(m, "name"))
        .unwrap_or("<unnamed>");
    match meta.and_then(|m| str_field(m, "namespace")) {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    }
}

fn push<T: serde::de::DeserializeOwned>(
    source: &str,
    value: &Value,
    kind: &str,
    out: &mut Loaded,
    convert: impl FnOnce(&T) -> Result<Object, ObjectError>,
) {
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(obj) => match convert(&obj) {
            Ok(o) => out.objects.push(o),
            Err(e) => out.errors.push(e.into()),
        },
        Err(e) => {
            let field = e.path().to_string();
            out.errors.push(
                ObjectError {
                    file: Some(source.to_string()),
                    kind: kind.to_string(),
                    object: raw_object_name(value),
                    field,
                    message: e.into_inner().to_string(),
                }
                .into(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Namespace
  metadata: {name: x, labels: {team: a}}
- apiVersion: v1
  kind: Pod
  metadata: {name: a, namespace: x, labels: {pod: a}}
  spec:
    nodeName: n1
    containers:
    - name: c
      ports: [{name: http, containerPort: 8080}]
  status: {podIP: 10.0.0.1, podIPs: [{ip: 10.0.0.1}, {ip: "fd00::1"}]}
- apiVersion: apps/v1
  kind: Deployment
  metadata: {name: d, namespace: x}
"#;

    #[test]
    fn list_documents_load() {
        let l = parse("dump.yaml", LIST);
        assert!(l.errors.is_empty(), "{:?}", l.errors);
        assert_eq!(l.objects.len(), 2);
        assert_eq!(l.ignored, 1);
        let Object::Pod(p) = &l.objects[1] else {
            panic!("want a pod")
        };
        assert_eq!(p.ips.len(), 2);
        assert_eq!(p.named_ports[0].port, 8080);
        let Object::Namespace(ns) = &l.objects[0] else {
            panic!("want a namespace")
        };
        assert_eq!(ns.labels.get("kubernetes.io/metadata.name"), Some("x"));
    }

    #[test]
    fn bad_object_is_reported_with_file_object_and_field_and_rest_loads() {
        let text = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: default}
spec:
  podSelector: {}
  ingress:
  - from:
    - podSelector: {}
    - ipBlock: {cidr: 10.0.0/33}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: ok, namespace: default}
spec:
  podSelector: {}
"#;
        let l = parse("bad.yaml", text);
        assert_eq!(l.objects.len(), 1);
        assert_eq!(l.errors.len(), 1);
        assert_eq!(
            l.errors[0].to_string(),
            r#"bad.yaml: NetworkPolicy default/web: spec.ingress[0].from[1].ipBlock.cidr: invalid CIDR "10.0.0/33": want an address and a prefix length, e.g. 10.9.8.0/24 or 2001:db8::/64"#
        );
    }

    #[test]
    fn bad_operator_and_endport_are_rejected() {
        let text = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a, namespace: default}
spec:
  podSelector:
    matchExpressions: [{key: app, operator: Is, values: [x]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b, namespace: default}
spec:
  podSelector: {}
  egress:
  - ports: [{port: 90, endPort: 80}]
"#;
        let l = parse("f.yaml", text);
        let msgs: Vec<String> = l.errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(msgs.len(), 2, "{msgs:?}");
        assert!(
            msgs[0].contains("spec.podSelector.matchExpressions[0].operator"),
            "{}",
            msgs[0]
        );
        assert!(
            msgs[1].contains("spec.egress[0].ports[0].endPort"),
            "{}",
            msgs[1]
        );
    }

    #[test]
    fn type_errors_name_the_object() {
        let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: n}\nspec: {hostNetwork: maybe}\n";
        let l = parse("t.yaml", text);
        assert_eq!(l.errors.len(), 1);
        let m = l.errors[0].to_string();
        assert!(m.starts_with("t.yaml: Pod n/p: "), "{m}");
    }

    #[test]
    fn type_errors_name_the_field_path() {
        let text = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {}
  ingress:
  - ports:
    - port: 99999999999
"#;
        let l = parse("t.yaml", text);
        assert_eq!(l.errors.len(), 1);
        let m = l.errors[0].to_string();
        assert!(
            m.starts_with("t.yaml: NetworkPolicy x/p: spec.ingress[0].ports[0].port: "),
            "{m}"
        );
        assert!(m.contains("99999999999"), "{m}");
    }

    #[test]
    fn type_errors_inside_a_list_name_the_item_and_field() {
        let text = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Namespace\n  metadata: {name: n, labels: {a: [1]}}\n";
        let l = parse("l.yaml", text);
        assert_eq!(l.errors.len(), 1);
        let m = l.errors[0].to_string();
        assert!(
            m.starts_with("l.yaml: Namespace n: metadata.labels.a: "),
            "{m}"
        );
    }

    #[test]
    fn hostile_nesting_is_an_error_naming_the_limit() {
        for text in [
            format!("x: {}{}\n", "[".repeat(40_000), "]".repeat(40_000)),
            format!("{}x\n", "- ".repeat(40_000)),
            (1..=300).fold(String::new(), |s, d| s + &"  ".repeat(d) + "a:\n"),
        ] {
            let l = parse("deep.yaml", &text);
            assert!(l.objects.is_empty());
            assert_eq!(l.errors.len(), 1, "{:?}", l.errors);
            let m = l.errors[0].to_string();
            assert!(m.starts_with("deep.yaml: "), "{m}");
            assert!(m.contains("line 1") || m.contains("line "), "{m}");
        }
    }

    #[test]
    fn alias_expansion_is_bounded() {
        let mut text = String::from("a0: &a0 [l, l, l, l, l, l, l, l, l]\n");
        for i in 1..10 {
            let refs = vec![format!("*a{}", i - 1); 9].join(", ");
            text.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
        }
        let l = parse("bomb.yaml", &text);
        assert_eq!(l.errors.len(), 1, "{:?}", l.errors);
    }

    #[test]
    fn oversized_input_is_refused_before_parsing() {
        let text = " ".repeat(MAX_INPUT_BYTES + 1);
        let l = parse("big.yaml", &text);
        assert_eq!(l.errors.len(), 1);
        assert!(l.errors[0].to_string().contains("bytes"), "{}", l.errors[0]);
    }

    #[test]
    fn network_policies_of_other_api_versions_are_reported_and_other_kinds_ignored() {
        let text = "apiVersion: extensions/v1beta1\nkind: NetworkPolicy\nmetadata: {name: old, namespace: x}\nspec: {podSelector: {}}\n---\napiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\n";
        let l = parse("v.yaml", text);
        assert_eq!(l.ignored, 1);
        assert_eq!(l.errors.len(), 1);
        assert_eq!(
            l.errors[0].to_string(),
            r#"v.yaml: NetworkPolicy x/old: apiVersion: "extensions/v1beta1" is not read (want networking.k8s.io/v1)"#
        );
    }

    #[test]
    fn an_object_with_only_one_type_field_is_an_error() {
        let l = parse("c.yaml", "apiVersion: networking.k8s.io/v1\n---\nkind: Pod\nmetadata: {name: p}\n---\nreplicas: 3\n");
        let msgs: Vec<String> = l.errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            msgs,
            [
                "c.yaml: <no kind> <unnamed>: kind: missing",
                "c.yaml: Pod p: apiVersion: missing"
            ]
        );
        assert_eq!(l.ignored, 1);
    }

    #[test]
    fn yaml_1_1_booleans_are_strings() {
        let text =
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: n, labels: {a: yes, b: off}}\n";
        let l = parse("b.yaml", text);
        assert!(l.errors.is_empty(), "{:?}", l.errors);
        let Object::Namespace(ns) = &l.objects[0] else {
            panic!("want a namespace")
        };
        assert_eq!(ns.name, "n");
        assert_eq!(ns.labels.get("a"), Some("yes"));
    }

    #[test]
    fn json_and_empty_documents_load() {
        let text = "---\n---\n{\"apiVersion\": \"v1\", \"kind\": \"Namespace\", \"metadata\": {\"name\": \"j\"}}\n---\n";
        let l = parse("j.json", text);
        assert!(l.errors.is_empty(), "{:?}", l.errors);
        assert_eq!(l.objects.len(), 1);
    }

    #[test]
    fn yaml_syntax_error_names_the_line() {
        let l = parse("s.yaml", "a: b\n---\nc: [\n");
        assert_eq!(l.errors.len(), 1);
        let m = l.errors[0].to_string();
        assert!(m.starts_with("s.yaml: "), "{m}");
        assert!(m.contains("line 3"), "{m}");
    }

    #[test]
    fn admin_policies_and_nodes_load_from_lists_and_errors_name_the_field() {
        let text = r#"
apiVersion: v1
kind: List
items:
- apiVersion: policy.networking.k8s.io/v1alpha2
  kind: ClusterNetworkPolicy
  metadata: {name: a}
  spec:
    tier: Baseline
    priority: 3
    subject: {namespaces: {}}
    egress:
    - action: Accept
      to: [{networks: [10.0.0.0/8]}, {nodes: {}}]
      protocols: [{udp: {destinationPort: {range: {start: 53, end: 54}}}}]
- apiVersion: policy.networking.k8s.io/v1alpha1
  kind: AdminNetworkPolicy
  metadata: {name: b}
  spec:
    priority: 1
    subject: {pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: x}}}}
    ingress: [{action: Pass, from: [{namespaces: {}}], ports: [{namedPort: http}]}]
- apiVersion: v1
  kind: Node
  metadata: {name: n1, labels: {zone: a}}
  status: {addresses: [{type: InternalIP, address: 172.18.0.2}, {type: Hostname, address: n1}]}
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: dns}
spec:
  tier: Admin
  priority: 3
  subject: {namespaces: {}}
  egress:
  - action: Accept
    to: [{domainNames: [example.com]}]
---
apiVersion: policy.networking.k8s.io/v1alpha1
kind: BaselineAdminNetworkPolicy
metadata: {name: other}
spec: {subject: {namespaces: {}}}
---
apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata: {name: far}
spec: {priority: 1001, subject: {namespaces: {}}}
"#;
        let l = parse("admin.yaml", text);
        let msgs: Vec<String> = l.errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            msgs,
            vec![
                "admin.yaml: ClusterNetworkPolicy dns: spec.egress[0].to[0].domainNames: domainNames peers are not supported by nftpol",
                "admin.yaml: BaselineAdminNetworkPolicy other: metadata.name: the only BaselineAdminNetworkPolicy allowed is named \"default\"",
                "admin.yaml: AdminNetworkPolicy far: spec.priority: 1001 is not in 0..1000",
            ]
        );
        assert_eq!(l.objects.len(), 3);
        let Object::AdminPolicy(a) = &l.objects[0] else {
            panic!("want an admin policy")
        };
        assert_eq!(a.tier, crate::admin::Tier::Baseline);
        assert_eq!(
            a.egress[0].ports,
            Some(vec![crate::admin::AdminPort::Range {
                protocol: crate::model::Protocol::Udp,
                lo: 53,
                hi: 54
            }])
        );
        let Object::AdminPolicy(b) = &l.objects[1] else {
            panic!("want an admin policy")
        };
        assert_eq!(b.ingress[0].action, crate::admin::Action::Pass);
        let Object::Node(n) = &l.objects[2] else {
            panic!("want a node")
        };
        assert_eq!(
            n.ips,
            vec!["172.18.0.2".parse::<std::net::IpAddr>().unwrap()]
        );
    }
}

//! Parsing manifest text: multi-document YAML (or JSON) with Namespace, Pod
//! and NetworkPolicy objects, and `kind: List` documents exactly as
//! `kubectl get ns,pods,networkpolicies -A -o yaml` prints them. Each
//! object is converted on its own: an invalid one becomes an error naming
//! the file, the object and the field, and the rest still load.

use crate::convert;
use crate::error::{Error, ObjectError};
use crate::model::{Namespace, Pod, Policy};
use serde::Deserialize;
use serde_yaml::Value;

/// One object nftpol enforces on.
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    Namespace(Namespace),
    Pod(Pod),
    Policy(Policy),
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

/// Parses every YAML document of `text`; `source` names it in errors.
pub fn parse(source: &str, text: &str) -> Loaded {
    let mut out = Loaded::default();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let document = i + 1;
        let value = match Value::deserialize(doc) {
            Ok(v) => v,
            Err(e) => {
                out.errors.push(Error::Yaml {
                    file: source.to_string(),
                    document,
                    message: e.to_string(),
                });
                // The YAML stream cannot be resynchronised after a syntax error.
                break;
            }
        };
        if value.is_null() {
            continue;
        }
        object(source, document, value, &mut out);
    }
    out
}

fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn object(source: &str, document: usize, value: Value, out: &mut Loaded) {
    let kind = str_field(&value, "kind").unwrap_or_default().to_string();
    let api_version = str_field(&value, "apiVersion")
        .unwrap_or_default()
        .to_string();
    match (api_version.as_str(), kind.as_str()) {
        ("v1", "List") | (_, "NamespaceList") | (_, "PodList") | (_, "NetworkPolicyList") => {
            if let Some(Value::Sequence(items)) = value.get("items") {
                for item in items.clone() {
                    object(source, document, item, out);
                }
            }
        }
        ("v1", "Namespace") => {
            push(source, document, &value, &kind, out, |ns| {
                convert::namespace(ns, Some(source)).map(Object::Namespace)
            });
        }
        ("v1", "Pod") => {
            push(source, document, &value, &kind, out, |p| {
                convert::pod(p, Some(source)).map(Object::Pod)
            });
        }
        ("networking.k8s.io/v1", "NetworkPolicy") => {
            push(source, document, &value, &kind, out, |np| {
                convert::policy(np, Some(source)).map(Object::Policy)
            });
        }
        _ => {
            tracing::debug!(source, document, %api_version, %kind, "ignoring object of a kind nftpol does not read");
            out.ignored += 1;
        }
    }
}

fn push<T: serde::de::DeserializeOwned>(
    source: &str,
    document: usize,
    value: &Value,
    kind: &str,
    out: &mut Loaded,
    convert: impl FnOnce(&T) -> Result<Object, ObjectError>,
) {
    match serde_yaml::from_value::<T>(value.clone()) {
        Ok(obj) => match convert(&obj) {
            Ok(o) => out.objects.push(o),
            Err(e) => out.errors.push(e.into()),
        },
        Err(e) => {
            let meta = value.get("metadata");
            let name = meta
                .and_then(|m| str_field(m, "name"))
                .unwrap_or("<unnamed>");
            let object = match meta.and_then(|m| str_field(m, "namespace")) {
                Some(ns) => format!("{ns}/{name}"),
                None => name.to_string(),
            };
            // serde_yaml reports the path of the failing field in its message.
            let message = e.to_string();
            let (field, message) = match message.split_once(": ") {
                Some((f, m)) if !f.contains(' ') => (f.to_string(), m.to_string()),
                _ => (format!("document {document}"), message),
            };
            out.errors.push(
                ObjectError {
                    file: Some(source.to_string()),
                    kind: kind.to_string(),
                    object,
                    field,
                    message,
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
        assert_eq!(
            ns.labels
                .get("kubernetes.io/metadata.name")
                .map(String::as_str),
            Some("x")
        );
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
            r#"bad.yaml: NetworkPolicy default/web: spec.ingress[0].from[1].ipBlock.cidr: invalid CIDR "10.0.0/33""#
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
    fn yaml_syntax_error_names_the_document() {
        let l = parse("s.yaml", "a: b\n---\n: : [\n");
        assert_eq!(l.errors.len(), 1);
        assert!(
            l.errors[0].to_string().starts_with("s.yaml: document 2:"),
            "{}",
            l.errors[0]
        );
    }
}

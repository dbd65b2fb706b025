//! Reading API objects without their bulk: [`Slim`] deserializes only the
//! fields the compiler's model is built from and skips the rest of the
//! JSON while it is parsed, so an agent listing 10,000 namespaces or
//! 20,000 policies never builds their managedFields. (Pods, the bulk of a
//! cluster, skip even the typed object: `wire_pod`.)
//!
//! Each watched kind names what it keeps ([`Pruned::KEEP`]); what is kept
//! is then read into the ordinary `k8s_openapi` type, so the converters
//! (and their errors, which name the field) are the same as for a whole
//! object. An object whose kept fields do not fit the type is an
//! [`InvalidObject`] carrying its metadata, as kube's `DeserializeGuard`
//! reports it, so one bad object is skipped without failing its list or
//! watch. A field outside the kept ones is never read, so it cannot make
//! an object undecodable either.

use k8s_openapi::api::core::v1::{Namespace, Node};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::core::error_boundary::InvalidObject;
use kube::core::{ObjectMeta, PartialObjectMeta};
use kube::Resource;
use nftpol_crds::v1alpha1::{AdminNetworkPolicy, BaselineAdminNetworkPolicy};
use nftpol_crds::v1alpha2::ClusterNetworkPolicy;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Number, Value};
use std::borrow::Cow;
use std::fmt;

/// Which parts of a JSON value are kept. A rule for a map applies to
/// every element when the value is a list (`containers`, `podIPs`), and
/// a scalar where a map was expected is kept as it is, so the typed read
/// afterwards reports it.
#[derive(Debug)]
pub enum Keep {
    /// The whole value.
    All,
    /// Only these keys of a map, each pruned by its own rule.
    Only(&'static [(&'static str, Keep)]),
    /// Every key of a map but the listed ones, which are pruned by their
    /// rule ([`Keep::Drop`] leaves them out).
    AllBut(&'static [(&'static str, Keep)]),
    /// Nothing: the key is left out.
    Drop,
}

/// The metadata of a watched object: what the converters read (name,
/// namespace, labels), what the watcher resumes from (resourceVersion)
/// and what an Event about an invalid object names (uid).
const META: Keep = Keep::Only(&[
    ("name", Keep::All),
    ("namespace", Keep::All),
    ("labels", Keep::All),
    ("resourceVersion", Keep::All),
    ("uid", Keep::All),
]);

/// A policy's metadata is validated whole (annotations, owner
/// references, generateName), so only the field-manager bookkeeping,
/// often the largest part of an object, is left out.
const META_BUT_MANAGED: Keep = Keep::AllBut(&[("managedFields", Keep::Drop)]);

/// A whole policy object but its managedFields.
const POLICY: Keep = Keep::AllBut(&[("metadata", META_BUT_MANAGED)]);

/// What an object kind keeps of its JSON.
pub trait Pruned {
    const KEEP: Keep;
}

impl Pruned for Namespace {
    const KEEP: Keep = Keep::Only(&[
        ("apiVersion", Keep::All),
        ("kind", Keep::All),
        ("metadata", META),
    ]);
}

impl Pruned for Node {
    const KEEP: Keep = Keep::Only(&[
        ("apiVersion", Keep::All),
        ("kind", Keep::All),
        ("metadata", META),
        ("status", Keep::Only(&[("addresses", Keep::All)])),
    ]);
}

impl Pruned for NetworkPolicy {
    const KEEP: Keep = POLICY;
}

impl Pruned for ClusterNetworkPolicy {
    const KEEP: Keep = POLICY;
}

impl Pruned for AdminNetworkPolicy {
    const KEEP: Keep = POLICY;
}

impl Pruned for BaselineAdminNetworkPolicy {
    const KEEP: Keep = POLICY;
}

/// An object read through its kind's [`Keep`] rule: the typed object, or
/// why its kept fields do not fit the type, with its metadata.
#[derive(Debug, Clone)]
pub struct Slim<K>(pub Result<K, InvalidObject>);

impl<'de, K> Deserialize<'de> for Slim<K>
where
    K: Pruned + Resource + serde::de::DeserializeOwned,
{
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let kept = Prune(&K::KEEP).deserialize(d)?;
        match K::deserialize(&kept) {
            Ok(k) => Ok(Slim(Ok(k))),
            Err(err) => {
                let PartialObjectMeta { metadata, .. } =
                    PartialObjectMeta::<K>::deserialize(kept).map_err(de::Error::custom)?;
                Ok(Slim(Err(InvalidObject {
                    error: err.to_string(),
                    metadata,
                })))
            }
        }
    }
}

impl<K: Resource> Resource for Slim<K> {
    type DynamicType = K::DynamicType;
    type Scope = K::Scope;

    fn kind(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::kind(dt)
    }

    fn group(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::group(dt)
    }

    fn version(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::version(dt)
    }

    fn plural(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        self.0.as_ref().map_or_else(|bad| &bad.metadata, K::meta)
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        self.0
            .as_mut()
            .map_or_else(|bad| &mut bad.metadata, K::meta_mut)
    }
}

/// Reads one JSON value keeping what a [`Keep`] rule says; everything
/// else is parsed past (as it must be, to find the next field) but never
/// allocated.
struct Prune<'k>(&'k Keep);

impl<'de> DeserializeSeed<'de> for Prune<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        match self.0 {
            Keep::All => Value::deserialize(d),
            Keep::Drop => {
                IgnoredAny::deserialize(d)?;
                Ok(Value::Null)
            }
            keep => d.deserialize_any(PruneVisitor(keep)),
        }
    }
}

struct PruneVisitor<'k>(&'k Keep);

impl<'de> Visitor<'de> for PruneVisitor<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Prune(self.0).deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(Prune(self.0))? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let (fields, others) = match self.0 {
            Keep::Only(f) => (*f, false),
            Keep::AllBut(f) => (*f, true),
            // `Prune` reads these without a visitor.
            Keep::All | Keep::Drop => (&[][..], true),
        };
        let mut out = Map::new();
        while let Some(key) = map.next_key_seed(KeySeed { fields, others })? {
            match key {
                Key::Listed(i) => {
                    let (name, rule) = &fields[i];
                    let v = map.next_value_seed(Prune(rule))?;
                    if !matches!(rule, Keep::Drop) {
                        out.insert((*name).to_owned(), v);
                    }
                }
                Key::Other(name) => {
                    out.insert(name, map.next_value()?);
                }
                Key::Skipped => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Value::Object(out))
    }
}

/// A map key: one of the rule's fields, another key that is kept whole,
/// or one that is skipped (matched without allocating it).
enum Key {
    Listed(usize),
    Other(String),
    Skipped,
}

struct KeySeed {
    fields: &'static [(&'static str, Keep)],
    others: bool,
}

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Key;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Key, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E>(self, v: &str) -> Result<Key, E> {
        Ok(match self.fields.iter().position(|(name, _)| *name == v) {
            Some(i) => Key::Listed(i),
            None if self.others => Key::Other(v.to_owned()),
            None => Key::Skipped,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn slim<K: Pruned + Resource + serde::de::DeserializeOwned>(v: &Value) -> Slim<K> {
        serde_json::from_slice(&serde_json::to_vec(v).expect("json")).expect("read")
    }

    /// Reads `v` whole and through [`Slim`], converts both, and requires
    /// the same model object: a field the conversion reads but the kind's
    /// rule drops shows up here as a difference.
    fn same_reduction<K, M>(v: &Value, convert: impl Fn(&K) -> M) -> M
    where
        K: Pruned + Resource + serde::de::DeserializeOwned,
        M: PartialEq + fmt::Debug,
    {
        let whole: K = serde_json::from_value(v.clone()).expect("whole object");
        let Slim(Ok(kept)) = slim::<K>(v) else {
            panic!("slim object: {v}")
        };
        let (a, b) = (convert(&whole), convert(&kept));
        assert_eq!(a, b, "{v}");
        b
    }

    #[test]
    fn every_kind_reduces_the_same_as_the_whole_object() {
        use nftpol_test_support::fakeapi::to_api;
        use nftpol_test_support::synth::{self, Shape};
        use policy_compiler::admin::convert as admin;
        use policy_compiler::{convert, Object};
        let model = synth::cluster(Shape {
            namespaces: 6,
            pods: 60,
            policies: 24,
            nodes: 3,
        });
        // Pods are read by `wire_pod`, whose tests compare it the same way.
        for o in model
            .namespaces()
            .cloned()
            .map(Object::Namespace)
            .chain(model.policies().cloned().map(Object::Policy))
            .chain(model.node_objects().cloned().map(Object::Node))
        {
            let v = to_api(&o);
            match o {
                Object::Namespace(_) => {
                    same_reduction(&v, |n: &Namespace| convert::namespace(n, None)).expect("valid");
                }
                Object::Policy(_) => {
                    same_reduction(&v, |p: &NetworkPolicy| convert::policy(p, None))
                        .expect("valid");
                }
                Object::Node(_) => {
                    same_reduction(&v, |n: &Node| admin::node(n, None)).expect("valid");
                }
                Object::Pod(_) | Object::AdminPolicy(_) => unreachable!("none listed"),
            }
        }
    }

    /// A namespace whose labels the selectors read.
    #[test]
    fn namespace_labels_survive_the_slim_read() {
        use policy_compiler::convert;
        let ns = same_reduction(
            &json!({"metadata": {"name": "n", "labels": {"team": "t"},
                "managedFields": [{"manager": "m"}]}}),
            |n: &Namespace| convert::namespace(n, None),
        )
        .expect("valid");
        assert_eq!(ns.labels.get("team"), Some("t"));
    }

    #[test]
    fn a_policy_loses_only_its_managed_fields() {
        let text = json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "p", "namespace": "n", "annotations": {"x": "y"},
                "generateName": "p-", "managedFields": [{"manager": "kubectl"}]},
            "spec": {"podSelector": {"matchLabels": {"a": "b"}}, "policyTypes": ["Ingress"]}
        });
        let Slim(Ok(p)) = slim::<NetworkPolicy>(&text) else {
            panic!("valid policy")
        };
        let mut want = text.clone();
        want["metadata"]
            .as_object_mut()
            .expect("map")
            .remove("managedFields");
        assert_eq!(serde_json::to_value(&p).expect("json"), want);
    }

    #[test]
    fn a_kept_field_of_the_wrong_type_makes_the_object_invalid_with_its_metadata() {
        let text = json!({
            "metadata": {"name": "n", "uid": "u-1", "resourceVersion": "3"},
            "status": {"addresses": [{"type": "InternalIP", "address": 7}]},
        });
        let Slim(Err(bad)) = slim::<Node>(&text) else {
            panic!("invalid node")
        };
        assert!(bad.error.contains("expected a string"), "{}", bad.error);
        assert_eq!(bad.metadata.name.as_deref(), Some("n"));
        assert_eq!(bad.metadata.uid.as_deref(), Some("u-1"));
        // A string where a list is expected is kept, so the typed read sees it.
        let text = json!({"metadata": {"name": "a"}, "status": {"addresses": "not a list"}});
        assert!(slim::<Node>(&text).0.is_err());
        // A field that is never read cannot spoil the object.
        let text = json!({"metadata": {"name": "a"}, "spec": {"podCIDR": 7},
            "status": {"addresses": [], "capacity": "x"}});
        assert!(slim::<Node>(&text).0.is_ok());
    }
}

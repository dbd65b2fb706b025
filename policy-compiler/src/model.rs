//! The reduced cluster objects the compiler works on: only what policy
//! enforcement needs from a Namespace, a Pod and a NetworkPolicy. The agent
//! stores these (not whole API objects) to keep memory small, and every
//! field here has already been validated (see `convert`).

use crate::ipblock::AddrRange;
use crate::selector::Selector;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

/// A label key or value, a namespace name: one string the index shares
/// between every object that carries it ([`Interner`]).
pub type Str = Arc<str>;

/// An object's labels, sorted by key: a map with the lookups selectors
/// need, kept as one exactly sized slice. A pod has a handful of labels,
/// and a `BTreeMap` would allocate a node of eleven entries for them:
/// 150,000 pods held 80 MB more that way. Keys and values are shared
/// strings: in the index, most pods' keys and many values are the same
/// few (`app`, `tier`, `web`), held once.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Labels(Box<[(Str, Str)]>);

impl Labels {
    pub fn new() -> Labels {
        Labels::default()
    }

    fn find(&self, key: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| (**k).cmp(key))
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        // Selectors ask this of every pod they look at. Objects carry a
        // few labels: a pass that compares lengths first skips most keys
        // without comparing their bytes, where the search compares
        // bytes at every step.
        if self.0.len() <= 8 {
            return self.0.iter().find(|(k, _)| **k == *key).map(|(_, v)| &**v);
        }
        self.find(key).ok().map(|i| &*self.0[i].1)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.find(key).is_ok()
    }

    /// Sets `key` to `value`; returns the value it replaced.
    pub fn insert(&mut self, key: String, value: String) -> Option<Str> {
        match self.find(&key) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, value.into())),
            Err(i) => {
                let mut v = std::mem::take(&mut self.0).into_vec();
                v.insert(i, (key.into(), value.into()));
                self.0 = v.into_boxed_slice();
                None
            }
        }
    }

    pub fn remove(&mut self, key: &str) -> Option<Str> {
        let i = self.find(key).ok()?;
        let mut v = std::mem::take(&mut self.0).into_vec();
        let (_, value) = v.remove(i);
        self.0 = v.into_boxed_slice();
        Some(value)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// In key order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&str, &str)> + Clone {
        self.0.iter().map(|(k, v)| (&**k, &**v))
    }

    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &str> + Clone {
        self.0.iter().map(|(k, _)| &**k)
    }

    /// The shared strings themselves, for tests that check the sharing.
    #[cfg(test)]
    pub(crate) fn pairs(&self) -> &[(Str, Str)] {
        &self.0
    }

    /// The same labels holding `strings`' copy of each key and value.
    pub fn interned(&self, strings: &mut Interner) -> Labels {
        Labels(
            self.0
                .iter()
                .map(|(k, v)| (strings.intern(k), strings.intern(v)))
                .collect(),
        )
    }
}

/// One shared copy of each string the index holds (label keys and
/// values, namespace names). Objects arrive from the converter with
/// strings of their own; the index swaps them for these, and a string
/// no object holds any more is dropped at the next sweep.
#[derive(Clone, Default)]
pub struct Interner {
    strings: std::collections::HashSet<Str>,
    /// How many strings the last sweep kept: the next one runs when the
    /// set has doubled since, so sweeping costs O(1) a string.
    kept: usize,
}

impl Interner {
    pub fn intern(&mut self, s: &str) -> Str {
        if let Some(shared) = self.strings.get(s) {
            return shared.clone();
        }
        if self.strings.len() >= 2 * self.kept.max(1024) {
            self.strings.retain(|s| Arc::strong_count(s) > 1);
            self.kept = self.strings.len();
        }
        let shared: Str = s.into();
        self.strings.insert(shared.clone());
        shared
    }

    /// The shared copy of `s`, if the index holds one.
    pub fn get(&self, s: &str) -> Option<&Str> {
        self.strings.get(s)
    }

    pub fn len(&self) -> usize {
        self.strings.len()
    }

    pub fn is_empty(&self) -> bool {
        self.strings.is_empty()
    }
}

/// A cache: two indexes holding the same objects are equal whatever
/// strings each happens to keep.
impl PartialEq for Interner {
    fn eq(&self, _: &Interner) -> bool {
        true
    }
}

impl std::fmt::Debug for Interner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Interner({} strings)", self.strings.len())
    }
}

/// From borrowed pairs in any order, each string allocated once; the
/// last value of a repeated key wins, as in a map.
impl<'a> FromIterator<(&'a str, &'a str)> for Labels {
    fn from_iter<I: IntoIterator<Item = (&'a str, &'a str)>>(iter: I) -> Labels {
        let mut pairs: Vec<(&str, &str)> = iter.into_iter().collect();
        // Stable, so of a repeated key the last pair stays last.
        pairs.sort_by(|a, b| a.0.cmp(b.0));
        let mut out: Vec<(Str, Str)> = Vec::with_capacity(pairs.len());
        for (i, (k, v)) in pairs.iter().enumerate() {
            if pairs.get(i + 1).is_some_and(|next| next.0 == *k) {
                continue;
            }
            out.push(((*k).into(), (*v).into()));
        }
        Labels(out.into_boxed_slice())
    }
}

/// The last value of a repeated key wins, as in a map.
impl FromIterator<(String, String)> for Labels {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Labels {
        Labels::from(iter.into_iter().collect::<BTreeMap<_, _>>())
    }
}

impl From<BTreeMap<String, String>> for Labels {
    fn from(m: BTreeMap<String, String>) -> Labels {
        Labels(m.into_iter().map(|(k, v)| (k.into(), v.into())).collect())
    }
}

impl<const N: usize> From<[(String, String); N]> for Labels {
    fn from(pairs: [(String, String); N]) -> Labels {
        pairs.into_iter().collect()
    }
}

impl<'a> IntoIterator for &'a Labels {
    type Item = (&'a str, &'a str);
    type IntoIter =
        std::iter::Map<std::slice::Iter<'a, (Str, Str)>, fn(&'a (Str, Str)) -> (&'a str, &'a str)>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (&**k, &**v))
    }
}

/// Owned copies: for building selectors and maps from labels.
impl IntoIterator for Labels {
    type Item = (String, String);
    type IntoIter = std::vec::IntoIter<(String, String)>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Vec<_>>()
            .into_iter()
    }
}

impl std::fmt::Debug for Labels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl Serialize for Labels {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Labels {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Labels, D::Error> {
        BTreeMap::<String, String>::deserialize(d).map(Labels::from)
    }
}

/// The label the apiserver sets on every namespace.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespace {
    pub name: String,
    pub labels: Labels,
}

/// L4 protocols a NetworkPolicy port can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Protocol {
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
    #[serde(rename = "SCTP")]
    Sctp,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => crate::ir::l4::TCP,
            Protocol::Udp => crate::ir::l4::UDP,
            Protocol::Sctp => crate::ir::l4::SCTP,
        }
    }
    pub fn from_number(n: u8) -> Option<Protocol> {
        Protocol::ALL.into_iter().find(|p| p.number() == n)
    }
    /// Lowercase name, as nft and generated names use it.
    pub fn lower(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
    /// The API spelling (`TCP`), also accepted case-insensitively by the CLI.
    pub fn api(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }
    pub fn parse(s: &str) -> Option<Protocol> {
        Protocol::ALL
            .into_iter()
            .find(|p| p.api().eq_ignore_ascii_case(s))
    }
}

/// A named container port (`containers[].ports[]` with a name).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NamedPort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    pub node_name: Option<String>,
    pub host_network: bool,
    /// Every IP of `status.podIPs` (or `status.podIP`), deduplicated, sorted.
    pub ips: Vec<IpAddr>,
    pub named_ports: Vec<NamedPort>,
    /// Succeeded or Failed: the pod's IP may already belong to another pod.
    pub terminal: bool,
}

impl Pod {
    /// Whether policies can select this pod or match it as a peer:
    /// hostNetwork pods never are, and a pod without an IP has nothing to
    /// enforce on.
    pub fn is_policy_pod(&self) -> bool {
        !self.host_network && !self.terminal && !self.ips.is_empty()
    }
    pub fn key(&self) -> (String, String) {
        (self.namespace.clone(), self.name.clone())
    }
    /// The port number a named port resolves to on this pod.
    pub fn resolve_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.named_ports
            .iter()
            .find(|p| p.name == name && p.protocol == protocol)
            .map(|p| p.port)
    }
}

/// The direction of traffic a policy rule governs, seen from the pod the
/// policy selects: `Ingress` towards it, `Egress` away from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub const ALL: [Direction; 2] = [Direction::Ingress, Direction::Egress];

    /// The API word (`ingress`), as comments and audit output use it.
    pub fn word(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub namespace: String,
    pub name: String,
    pub pod_selector: Selector,
    /// `Some` when the policy isolates its pods for ingress (policyTypes
    /// after defaulting), with the rules that then apply.
    pub ingress: Option<Vec<PolicyRule>>,
    pub egress: Option<Vec<PolicyRule>>,
    /// Verdict logging and staging, from the policy's annotations.
    #[serde(default)]
    pub audit: Audit,
}

/// What the verdict log records for a policy (`nftpol.io/log`), or for
/// every policy (the agent's and `compile`'s `--log`). Ordered: a policy
/// logs the most of its own mode and the global one.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum LogMode {
    #[default]
    Off,
    /// The default drop of the pods the policy isolates.
    Deny,
    /// That, and every packet one of its rules allows.
    All,
}

impl LogMode {
    pub fn parse(s: &str) -> Option<LogMode> {
        match s {
            "off" => Some(LogMode::Off),
            "deny" => Some(LogMode::Deny),
            "all" => Some(LogMode::All),
            _ => None,
        }
    }
}

/// How a policy is audited (its `nftpol.io/*` annotations).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Audit {
    /// `nftpol.io/log: deny|all`.
    #[serde(default)]
    pub log: LogMode,
    /// `nftpol.io/enforcement: audit`: evaluated and logged as
    /// `would-deny`, never enforced.
    #[serde(default)]
    pub staged: bool,
}

/// One entry of `spec.ingress` or `spec.egress`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRule {
    /// `None` when `from`/`to` is absent or empty: every peer.
    pub peers: Option<Vec<Peer>>,
    /// `None` when `ports` is absent or empty: every port and protocol.
    pub ports: Option<Vec<PortSpec>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Peer {
    /// podSelector and/or namespaceSelector. `namespace_selector: None`
    /// means the policy's own namespace.
    Pods {
        pod_selector: Option<Selector>,
        namespace_selector: Option<Selector>,
    },
    IpBlock {
        cidr: IpNet,
        except: Vec<IpNet>,
        /// cidr minus except, disjoint and sorted.
        ranges: Vec<AddrRange>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSpec {
    pub protocol: Protocol,
    pub port: PortRef,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PortRef {
    /// No port: every port of the protocol.
    Any,
    /// `port` .. `endPort` inclusive (lo == hi without endPort).
    Range(u16, u16),
    /// A container port name, resolved on the destination pod.
    Named(String),
}

#[cfg(test)]
mod labels_tests {
    use super::Labels;

    fn l(kv: &[(&str, &str)]) -> Labels {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn labels_behave_as_a_sorted_map() {
        let mut a = l(&[("tier", "web"), ("app", "x"), ("app", "y")]);
        assert_eq!(a.len(), 2, "the last value of a repeated key wins");
        assert_eq!(a.get("app"), Some("y"));
        assert_eq!(a.keys().collect::<Vec<_>>(), ["app", "tier"]);
        assert_eq!(a.insert("b".into(), "1".into()), None);
        assert_eq!(a.insert("b".into(), "2".into()), Some("1".into()));
        assert_eq!(a.keys().collect::<Vec<_>>(), ["app", "b", "tier"]);
        assert_eq!(a.remove("app"), Some("y".into()));
        assert_eq!(a.remove("app"), None);
        assert!(!a.contains_key("app") && a.contains_key("tier"));
        assert_eq!(a, l(&[("tier", "web"), ("b", "2")]));
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(json, r#"{"b":"2","tier":"web"}"#);
        assert_eq!(serde_json::from_str::<Labels>(&json).unwrap(), a);
        assert_eq!(format!("{a:?}"), r#"{"b": "2", "tier": "web"}"#);
        assert!(Labels::new().is_empty());
    }

    #[test]
    fn borrowed_pairs_make_the_same_labels_as_owned_ones() {
        let pairs = [("tier", "web"), ("app", "x"), ("b", "1"), ("app", "y")];
        let borrowed: Labels = pairs.iter().copied().collect();
        assert_eq!(borrowed, l(&pairs));
        assert_eq!(borrowed.get("app"), Some("y"), "the last value wins");
        assert_eq!(borrowed.keys().collect::<Vec<_>>(), ["app", "b", "tier"]);
    }
}

//! The cluster index: every Namespace, Pod, NetworkPolicy, admin policy
//! (ClusterNetworkPolicy, AdminNetworkPolicy, BaselineAdminNetworkPolicy)
//! and Node the compiler knows, with apply/delete per kind (what a watch event does) and the
//! lookups the compiler and evaluator need. A namespace that pods or
//! policies name but that was never given as an object still exists here,
//! with the implicit `kubernetes.io/metadata.name` label the apiserver
//! would have set.

use crate::admin::{AdminKind, AdminPolicy, Node, Tier};
use crate::manifest::Object;
use crate::model::*;
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

type Key = (String, String);

/// A pod's (namespace, name) as the index holds it: the namespace is the
/// index's one copy of that string, and the by-address index shares the
/// name with the map of pods instead of copying both strings again.
type PodKey = (Str, Str);

/// The pods at one address: almost always one, held inline (a vector
/// of one would be a heap block per address), in namespace/name order.
#[derive(Clone, Debug, PartialEq)]
enum Claim {
    One(Arc<Pod>),
    Many(Vec<Arc<Pod>>),
}

impl Claim {
    fn pods(&self) -> &[Arc<Pod>] {
        match self {
            Claim::One(p) => std::slice::from_ref(p),
            Claim::Many(v) => v,
        }
    }
}

fn by_key(p: &Pod) -> (&str, &str) {
    (&p.namespace, &p.name)
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Cluster {
    namespaces: BTreeMap<String, Namespace>,
    /// Each pod behind one pointer, which `by_ip` (and the agent's
    /// verdict-log directory) share instead of copying its key: the map's
    /// nodes stay a key and a pointer wide, where a node of whole pods
    /// was half empty after the listing's in-order inserts.
    pods: BTreeMap<PodKey, Arc<Pod>>,
    policies: BTreeMap<Key, Policy>,
    /// How many pods each namespace holds, so namespace selectors only
    /// look at namespaces that can contribute peers.
    pod_namespaces: BTreeMap<String, usize>,
    /// Pods by address (any pod listing it, policy pod or not), sorted.
    /// Almost always one (see [`Claim`]): a set would allocate a node of
    /// eleven keys per address, the largest part of a pod's memory at
    /// 150,000 pods.
    by_ip: BTreeMap<IpAddr, Claim>,
    /// The addresses of `by_ip` that several pods list: every reconcile
    /// asks for the shared addresses, and walking all of `by_ip` for the
    /// few there are cost a pass over the cluster per event.
    multi_ip: BTreeSet<IpAddr>,
    /// Cluster-scoped admin policies by (kind, name).
    admin: BTreeMap<(AdminKind, String), AdminPolicy>,
    /// Node objects (for node peers) by name.
    node_objects: BTreeMap<String, Node>,
    /// Per node, the first address of each pod with an address scheduled
    /// there, sorted (an address twice when two such pods list it first):
    /// a node's compile starts from its own pods, which a scan of the
    /// whole cluster found at the cost of touching every pod, several
    /// times per compile. An address, not a key: `by_ip` leads from it to
    /// the pod, and a key would be the largest part of the index's cost
    /// per pod.
    by_node: BTreeMap<String, Vec<IpAddr>>,
    /// The one copy of each label key and value and namespace name the
    /// objects here hold.
    strings: Interner,
    /// Namespace objects whose name label is another name (offline input
    /// may say so; the API server never does): a selector naming
    /// namespaces is answered by looking those names up, and these.
    misnamed: BTreeSet<String>,
}

impl Cluster {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn from_objects(objects: impl IntoIterator<Item = Object>) -> Self {
        let mut c = Cluster::new();
        for o in objects {
            c.apply(o);
        }
        c
    }

    /// Adds or replaces one object; returns whether anything changed.
    pub fn apply(&mut self, o: Object) -> bool {
        match o {
            Object::Namespace(ns) => self.apply_namespace(ns),
            Object::Pod(p) => self.apply_pod(p),
            Object::Policy(p) => self.apply_policy(p),
            Object::AdminPolicy(p) => self.apply_admin_policy(p),
            Object::Node(n) => self.apply_node(n),
        }
    }

    pub fn apply_admin_policy(&mut self, p: AdminPolicy) -> bool {
        let key = (p.kind, p.name.clone());
        if self.admin.get(&key) == Some(&p) {
            return false;
        }
        self.admin.insert(key, p);
        true
    }

    pub fn delete_admin_policy(&mut self, kind: AdminKind, name: &str) -> bool {
        self.admin.remove(&(kind, name.to_string())).is_some()
    }

    pub fn apply_node(&mut self, mut n: Node) -> bool {
        if self.node_objects.get(&n.name) == Some(&n) {
            return false;
        }
        n.labels = n.labels.interned(&mut self.strings);
        self.node_objects.insert(n.name.clone(), n);
        true
    }

    pub fn delete_node(&mut self, name: &str) -> bool {
        self.node_objects.remove(name).is_some()
    }

    /// Every admin and baseline policy, in (kind, name) order.
    pub fn admin_policies(&self) -> impl DoubleEndedIterator<Item = &AdminPolicy> {
        self.admin.values()
    }

    /// The policies of one tier in the order they are checked.
    pub fn tier_policies(&self, tier: Tier) -> Vec<&AdminPolicy> {
        let mut v: Vec<&AdminPolicy> = self.admin.values().filter(|p| p.tier == tier).collect();
        v.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
        v
    }

    /// Node objects, in name order.
    pub fn node_objects(&self) -> impl DoubleEndedIterator<Item = &Node> {
        self.node_objects.values()
    }

    pub fn apply_namespace(&mut self, mut ns: Namespace) -> bool {
        if self.namespaces.get(&ns.name) == Some(&ns) {
            return false;
        }
        ns.labels = ns.labels.interned(&mut self.strings);
        if ns
            .labels
            .get(NAMESPACE_NAME_LABEL)
            .is_some_and(|v| v != ns.name)
        {
            self.misnamed.insert(ns.name.clone());
        } else {
            self.misnamed.remove(&ns.name);
        }
        self.namespaces.insert(ns.name.clone(), ns);
        true
    }

    pub fn delete_namespace(&mut self, name: &str) -> bool {
        self.misnamed.remove(name);
        self.namespaces.remove(name).is_some()
    }

    /// The namespaces whose name label is not their name (see
    /// `misnamed`), in name order.
    pub fn misnamed_namespaces(&self) -> impl Iterator<Item = &str> {
        self.misnamed.iter().map(String::as_str)
    }

    pub fn apply_pod(&mut self, mut p: Pod) -> bool {
        let key = (
            self.strings.intern(&p.namespace),
            Str::from(p.name.as_str()),
        );
        match self.pods.get(&key) {
            Some(old) if **old == p => return false,
            Some(old) => {
                let old = old.clone();
                if (old.node_name.as_deref(), old.ips.first())
                    != (p.node_name.as_deref(), p.ips.first())
                {
                    self.index_node(old.node_name.as_deref(), &old.ips, false);
                    self.index_node(p.node_name.as_deref(), &p.ips, true);
                }
                self.index_ips(&old, false);
            }
            None => {
                *self.pod_namespaces.entry(p.namespace.clone()).or_default() += 1;
                self.index_node(p.node_name.as_deref(), &p.ips, true);
            }
        }
        p.labels = p.labels.interned(&mut self.strings);
        let p = Arc::new(p);
        self.index_ips(&p, true);
        self.pods.insert(key, p);
        true
    }

    pub fn delete_pod(&mut self, namespace: &str, name: &str) -> bool {
        let Some(key) = self.pod_key(namespace, name) else {
            return false;
        };
        let removed = match self.pods.remove(&key) {
            Some(old) => {
                self.index_ips(&old, false);
                self.index_node(old.node_name.as_deref(), &old.ips, false);
                true
            }
            None => false,
        };
        if removed {
            if let Some(n) = self.pod_namespaces.get_mut(namespace) {
                *n -= 1;
                if *n == 0 {
                    self.pod_namespaces.remove(namespace);
                }
            }
        }
        removed
    }

    pub fn apply_policy(&mut self, mut p: Policy) -> bool {
        let key = (p.namespace.clone(), p.name.clone());
        if self.policies.get(&key) == Some(&p) {
            return false;
        }
        let strings = &mut self.strings;
        let mut intern = |s: &mut crate::selector::Selector| {
            s.match_labels = s.match_labels.interned(strings);
        };
        intern(&mut p.pod_selector);
        for rule in p.ingress.iter_mut().chain(p.egress.iter_mut()).flatten() {
            for peer in rule.peers.iter_mut().flatten() {
                if let Peer::Pods {
                    pod_selector,
                    namespace_selector,
                } = peer
                {
                    pod_selector.iter_mut().for_each(&mut intern);
                    namespace_selector.iter_mut().for_each(&mut intern);
                }
            }
        }
        self.policies.insert(key, p);
        true
    }

    /// The cluster as it would be with every staged policy
    /// (`nftpol.io/enforcement: audit`) enforced: what `explain` and
    /// `matrix` judge the staged verdict on. `None` when nothing is staged.
    pub fn with_staged_enforced(&self) -> Option<Cluster> {
        if !self.policies.values().any(|p| p.audit.staged) {
            return None;
        }
        let mut c = self.clone();
        for p in c.policies.values_mut() {
            p.audit.staged = false;
        }
        Some(c)
    }

    pub fn delete_policy(&mut self, namespace: &str, name: &str) -> bool {
        self.policies
            .remove(&(namespace.to_string(), name.to_string()))
            .is_some()
    }

    pub fn pod(&self, namespace: &str, name: &str) -> Option<&Pod> {
        self.pods.get(&self.pod_key(namespace, name)?).map(|p| &**p)
    }

    /// The key of pod `namespace/name`; `None` when no object here is in
    /// that namespace (then no pod is).
    fn pod_key(&self, namespace: &str, name: &str) -> Option<PodKey> {
        Some((self.strings.get(namespace)?.clone(), name.into()))
    }

    /// The Namespace object `name`, if it was given.
    pub fn namespace(&self, name: &str) -> Option<&Namespace> {
        self.namespaces.get(name)
    }

    pub fn pods(&self) -> impl DoubleEndedIterator<Item = &Pod> {
        self.pods.values().map(|p| &**p)
    }

    pub fn policies(&self) -> impl DoubleEndedIterator<Item = &Policy> {
        self.policies.values()
    }

    pub fn namespaces(&self) -> impl DoubleEndedIterator<Item = &Namespace> {
        self.namespaces.values()
    }

    pub fn pod_count(&self) -> usize {
        self.pods.len()
    }

    pub fn policy_count(&self) -> usize {
        self.policies.len()
    }

    /// Pods of one namespace, in name order.
    pub fn pods_in<'a>(&'a self, namespace: &'a str) -> impl Iterator<Item = &'a Pod> + 'a {
        let from = self
            .strings
            .get(namespace)
            .map(|ns| (ns.clone(), Str::from("")));
        from.into_iter()
            .flat_map(|from| self.pods.range(from..))
            .take_while(move |((ns, _), _)| **ns == *namespace)
            .map(|(_, p)| &**p)
    }

    /// Policies of one namespace, in name order.
    pub fn policies_in<'a>(&'a self, namespace: &'a str) -> impl Iterator<Item = &'a Policy> + 'a {
        self.policies
            .range((namespace.to_string(), String::new())..)
            .take_while(move |((ns, _), _)| ns == namespace)
            .map(|(_, p)| p)
    }

    /// A namespace's labels, or the implicit name label when the namespace
    /// object is unknown.
    pub fn namespace_labels(&self, name: &str) -> Cow<'_, Labels> {
        match self.namespaces.get(name) {
            Some(ns) => Cow::Borrowed(&ns.labels),
            None => Cow::Owned([(NAMESPACE_NAME_LABEL.to_string(), name.to_string())].into()),
        }
    }

    /// `name` as the index holds it, when that namespace holds pods.
    pub fn namespace_with_pods(&self, name: &str) -> Option<&str> {
        self.pod_namespaces
            .get_key_value(name)
            .map(|(k, _)| k.as_str())
    }

    /// Namespaces that hold at least one pod.
    pub fn namespaces_with_pods(&self) -> impl Iterator<Item = &str> {
        self.pod_namespaces.keys().map(String::as_str)
    }

    /// Namespaces that hold at least one pod, in name order, each with its
    /// labels (as [`Cluster::namespace_labels`] gives them) and how many
    /// pods it holds: the pods of [`Cluster::pods`] come in this order,
    /// that many each. One walk of the index, no lookup by name.
    pub fn pod_namespaces(&self) -> impl Iterator<Item = (&str, Cow<'_, Labels>, usize)> {
        let mut objects = self.namespaces.iter().peekable();
        self.pod_namespaces.iter().map(move |(name, &count)| {
            while objects.next_if(|(n, _)| *n < name).is_some() {}
            let labels = match objects.peek() {
                Some((n, ns)) if *n == name => Cow::Borrowed(&ns.labels),
                _ => self.namespace_labels(name),
            };
            (name.as_str(), labels, count)
        })
    }

    /// Every node name a pod is scheduled on.
    pub fn nodes(&self) -> BTreeSet<String> {
        self.pods
            .values()
            .filter_map(|p| p.node_name.clone())
            .collect()
    }

    /// The pods with an address scheduled on `node` (policy pods or not),
    /// in namespace/name order: each is found through its first address.
    pub fn pods_on(&self, node: &str) -> Vec<&Pod> {
        let mut out: Vec<&Pod> = Vec::new();
        let mut firsts = self.by_node.get(node).into_iter().flatten().peekable();
        while let Some(ip) = firsts.next() {
            // Duplicates are adjacent: the pods listing `ip` first were
            // all found at its first occurrence.
            while firsts.peek() == Some(&ip) {
                firsts.next();
            }
            out.extend(
                self.at(*ip)
                    .map(|p| &**p)
                    .filter(|p| p.node_name.as_deref() == Some(node) && p.ips.first() == Some(ip)),
            );
        }
        out.sort_unstable_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        out
    }

    /// The policy pod (see `Pod::is_policy_pod`) that owns `ip`, if any.
    /// With duplicates (see [`Cluster::claimants`]) the first in
    /// namespace/name order, deterministically; callers that judge a flow
    /// must look at every claimant instead.
    pub fn policy_pod_by_ip(&self, ip: IpAddr) -> Option<&Pod> {
        self.claimants(ip).into_iter().next()
    }

    /// Every policy pod that lists `ip`, in namespace/name order. More than
    /// one happens when an address is reused while the pod that had it is
    /// still listed as running.
    pub fn claimants(&self, ip: IpAddr) -> Vec<&Pod> {
        self.at(ip)
            .map(|p| &**p)
            .filter(|p| p.is_policy_pod())
            .collect()
    }

    /// The first claimant of `ip` (see [`Cluster::claimants`]) as the
    /// index shares it: for a holder of pods by address outside the
    /// index, which then keeps a pointer and not a copy.
    pub fn claimant_shared(&self, ip: IpAddr) -> Option<&Arc<Pod>> {
        self.at(ip).find(|p| p.is_policy_pod())
    }

    /// Every pod listing `ip`, policy pod or not, in namespace/name order.
    fn at(&self, ip: IpAddr) -> impl Iterator<Item = &Arc<Pod>> {
        self.by_ip
            .get(&ip)
            .map(Claim::pods)
            .unwrap_or_default()
            .iter()
    }

    /// Addresses that several policy pods claim, with their claimants.
    pub fn shared_addresses(&self) -> BTreeMap<IpAddr, Vec<&Pod>> {
        self.multi_ip
            .iter()
            .map(|ip| (*ip, self.claimants(*ip)))
            .filter(|(_, pods)| pods.len() > 1)
            .collect()
    }

    /// Adds or removes the `by_node` entry of a pod on `node` with `ips`.
    fn index_node(&mut self, node: Option<&str>, ips: &[IpAddr], add: bool) {
        let (Some(node), Some(ip)) = (node, ips.first()) else {
            return;
        };
        if add {
            let firsts = self.by_node.entry(node.to_string()).or_default();
            let at = firsts.partition_point(|x| x < ip);
            firsts.insert(at, *ip);
        } else if let Some(firsts) = self.by_node.get_mut(node) {
            if let Ok(at) = firsts.binary_search(ip) {
                firsts.remove(at);
            }
            if firsts.is_empty() {
                self.by_node.remove(node);
            }
        }
    }

    /// Adds `p` at each of its addresses, or removes the pod of its key.
    fn index_ips(&mut self, p: &Arc<Pod>, add: bool) {
        let key = by_key(p);
        for ip in &p.ips {
            if add {
                let claim = match self.by_ip.remove(ip) {
                    None => Claim::One(p.clone()),
                    Some(Claim::One(q)) if by_key(&q) == key => Claim::One(p.clone()),
                    Some(Claim::One(q)) => {
                        let mut v = vec![q, p.clone()];
                        v.sort_by(|a, b| by_key(a).cmp(&by_key(b)));
                        Claim::Many(v)
                    }
                    Some(Claim::Many(mut v)) => {
                        match v.binary_search_by(|q| by_key(q).cmp(&key)) {
                            Ok(at) => v[at] = p.clone(),
                            Err(at) => v.insert(at, p.clone()),
                        }
                        Claim::Many(v)
                    }
                };
                if matches!(claim, Claim::Many(_)) {
                    self.multi_ip.insert(*ip);
                }
                self.by_ip.insert(*ip, claim);
            } else if let Some(claim) = self.by_ip.remove(ip) {
                let rest = match claim {
                    Claim::One(q) if by_key(&q) == key => None,
                    Claim::One(q) => Some(Claim::One(q)),
                    Claim::Many(mut v) => {
                        if let Ok(at) = v.binary_search_by(|q| by_key(q).cmp(&key)) {
                            v.remove(at);
                        }
                        match v.len() {
                            0 => None,
                            1 => v.pop().map(Claim::One),
                            _ => Some(Claim::Many(v)),
                        }
                    }
                };
                if !matches!(rest, Some(Claim::Many(_))) {
                    self.multi_ip.remove(ip);
                }
                if let Some(rest) = rest {
                    self.by_ip.insert(*ip, rest);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Cluster;
    use crate::model::{Labels, Pod};
    use proptest::prelude::*;

    /// Pod `name` of few: their addresses come from a pool of three, so
    /// pods share first addresses, on one node or several.
    fn pod(name: usize, node: Option<usize>, ips: &[usize]) -> Pod {
        let mut ips: Vec<std::net::IpAddr> = ips
            .iter()
            .map(|i| format!("10.0.0.{i}").parse().expect("generated address"))
            .collect();
        ips.sort();
        ips.dedup();
        Pod {
            namespace: format!("ns-{}", name % 3),
            name: format!("pod-{name}"),
            labels: Labels::new(),
            node_name: node.map(|n| format!("node-{n}")),
            host_network: false,
            ips,
            named_ports: vec![],
            terminal: false,
        }
    }

    #[test]
    fn pods_share_one_copy_of_each_label_key_and_value() {
        let mut c = Cluster::new();
        let mut labelled = |name: usize, app: &str| {
            let mut p = pod(name, Some(0), &[name]);
            p.labels = [("app".to_string(), app.to_string())].into();
            c.apply_pod(p);
        };
        labelled(0, "web");
        labelled(1, "web");
        labelled(2, "db");
        let pairs = |c: &Cluster, name: usize| {
            let ns = format!("ns-{}", name % 3);
            c.pod(&ns, &format!("pod-{name}"))
                .expect("pod")
                .labels
                .pairs()[0]
                .clone()
        };
        let (a, b, d) = (pairs(&c, 0), pairs(&c, 1), pairs(&c, 2));
        assert!(std::sync::Arc::ptr_eq(&a.0, &b.0), "one `app` key");
        assert!(std::sync::Arc::ptr_eq(&a.1, &b.1), "one `web` value");
        assert!(std::sync::Arc::ptr_eq(&a.0, &d.0));
        assert_eq!(&*d.1, "db");
        drop((a, b, d));
        // A value no pod holds any more is dropped by a later sweep.
        c.delete_pod("ns-2", "pod-2");
        for name in 3..3000 {
            let mut p = pod(name, Some(0), &[]);
            p.labels = [("n".to_string(), name.to_string())].into();
            c.apply_pod(p);
            c.delete_pod(&format!("ns-{}", name % 3), &format!("pod-{name}"));
        }
        assert!(c.strings.get("db").is_none(), "swept");
        assert!(c.strings.len() < 2100, "{} strings kept", c.strings.len());
        assert!(c.strings.get("web").is_some(), "still held");
    }

    /// What `pods_on` replaces: a scan of every pod.
    fn scan(c: &Cluster, node: &str) -> Vec<(String, String)> {
        c.pods()
            .filter(|p| p.node_name.as_deref() == Some(node) && !p.ips.is_empty())
            .map(Pod::key)
            .collect()
    }

    proptest! {
        /// After any sequence of pods added, moved between nodes (or
        /// unscheduled), readdressed and deleted, the pods of each node
        /// are those a scan of every pod finds, each once, in order.
        #[test]
        fn pods_by_node_equal_the_scan(
            ops in proptest::collection::vec(
                (
                    0..8usize,
                    proptest::option::of(0..3usize),
                    proptest::collection::vec(0..3usize, 0..3),
                    any::<bool>(),
                ),
                1..40,
            ),
        ) {
            let mut c = Cluster::new();
            for (name, node, ips, delete) in ops {
                let p = pod(name, node, &ips);
                if delete {
                    c.delete_pod(&p.namespace, &p.name);
                } else {
                    c.apply_pod(p);
                }
            }
            for n in 0..3 {
                let node = format!("node-{n}");
                let indexed: Vec<_> = c.pods_on(&node).into_iter().map(Pod::key).collect();
                prop_assert_eq!(indexed, scan(&c, &node), "{}", node);
            }
        }
    }
}

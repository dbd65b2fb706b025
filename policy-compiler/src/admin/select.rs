//! What the admin part of one compile selects, each worked out once: the
//! namespaces (holding pods) a namespace selector selects, the pods the
//! pod and namespace peers of an admin rule (or of a NetworkPolicy rule)
//! select, and the admin policies whose subject may be a pod of a given
//! namespace.
//!
//! With hundreds of admin policies, most peers name one namespace or a
//! few (by name, team, environment): scanning every namespace of the
//! cluster for each peer definition, and matching every subject again
//! for each pod, was most of a node's admin compile. Namespaces are found
//! through an index of their labels, built on first use, and every answer
//! is kept for the rest of the compile. Answers are in the order the plain
//! scans give (namespace, then pod name), so sets and chains come out the
//! same either way.

use super::{AdminPeer, AdminPolicy, AdminRule, Subject};
use crate::compile::selector_key;
use crate::index::Cluster;
use crate::model::{Labels, Peer, Pod, NAMESPACE_NAME_LABEL};
use crate::selector::{Operator, Selector};
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;

/// A namespace holding pods: its position in [`NamespaceTable::names`].
type NsId = u32;

/// When a peer definition needs the pods of more namespaces than this
/// that were not looked up yet, every namespace's pods are listed in one
/// walk of the cluster's pods instead of a lookup each. A compile of a
/// few pods (as `incr` makes) stays clear of the walk.
const WALK_AFTER: usize = 64;

/// The namespaces holding pods, with their labels and an index of them,
/// built on first use (see the module comment).
struct NamespaceTable<'c> {
    /// In name order.
    names: Vec<&'c str>,
    labels: Vec<Cow<'c, Labels>>,
    /// Label key -> value -> the namespaces that carry it, ascending.
    index: HashMap<&'c str, HashMap<&'c str, Vec<NsId>>>,
}

impl<'c> NamespaceTable<'c> {
    fn new(cluster: &'c Cluster) -> NamespaceTable<'c> {
        let mut t = NamespaceTable {
            names: Vec::new(),
            labels: Vec::new(),
            index: HashMap::new(),
        };
        for (id, (name, labels, _)) in cluster.pod_namespaces().enumerate() {
            let id = id as NsId;
            let mut add = |k: &'c str, v: &'c str| {
                t.index.entry(k).or_default().entry(v).or_default().push(id);
            };
            match &labels {
                Cow::Borrowed(l) => l.iter().for_each(|(k, v)| add(k, v)),
                // Only the implicit name label (`Cluster::namespace_labels`).
                Cow::Owned(_) => add(NAMESPACE_NAME_LABEL, name),
            }
            t.names.push(name);
            t.labels.push(labels);
        }
        t
    }

    /// The fewest namespaces, ascending, that a requirement of `sel`
    /// every selected namespace meets (a label, or one of an `In` list's
    /// values) allows; `None` when no requirement narrows it down.
    fn candidates(&self, sel: &Selector) -> Option<Vec<NsId>> {
        let with = |k: &str, v: &str| -> &[NsId] {
            self.index
                .get(k)
                .and_then(|vs| vs.get(v))
                .map_or(&[], Vec::as_slice)
        };
        let mut best: Option<Vec<NsId>> = None;
        let mut keep = |c: Vec<NsId>| {
            if best.as_ref().is_none_or(|b| c.len() < b.len()) {
                best = Some(c);
            }
        };
        for (k, v) in &sel.match_labels {
            keep(with(k, v).to_vec());
        }
        for r in &sel.match_expressions {
            if r.operator == Operator::In {
                let mut c: Vec<NsId> = r
                    .values
                    .iter()
                    .flat_map(|v| with(&r.key, v))
                    .copied()
                    .collect();
                c.sort_unstable();
                c.dedup();
                keep(c);
            }
        }
        best
    }
}

/// The memo of one compile of `cluster` (see the module comment).
pub(crate) struct Selections<'c> {
    cluster: &'c Cluster,
    table: Option<NamespaceTable<'c>>,
    /// By [`selector_key`].
    namespaces: HashMap<String, Rc<[NsId]>>,
    /// By [`super::compile::pod_peers_key`].
    pods: HashMap<String, Rc<[&'c Pod]>>,
    /// NetworkPolicy pod peers, by `compile::pod_peers_key`.
    netpol_pods: HashMap<String, Rc<[&'c Pod]>>,
    /// The policy pods of each namespace, once looked up: by name, so a
    /// NetworkPolicy peer of its own namespace (the common kind) needs no
    /// table, whose every namespace an incremental compile of one pod
    /// would otherwise pay for.
    pods_in: BTreeMap<&'c str, Rc<[&'c Pod]>>,
    /// Whether `pods_in` holds every namespace's pods.
    walked: bool,
    /// How many pods `pods_in` was filled from (see
    /// [`Selections::pods_listed`]).
    listed: usize,
    /// [`WALK_AFTER`] (tests lower it to take both paths).
    walk_after: usize,
    /// The admin policy list the subjects were computed for, and per
    /// namespace the policies of it whose subject's namespace part
    /// selects that namespace.
    subjects_for: Vec<&'c AdminPolicy>,
    subjects: HashMap<String, Rc<[&'c AdminPolicy]>>,
}

impl<'c> Selections<'c> {
    pub(crate) fn new(cluster: &'c Cluster) -> Selections<'c> {
        Selections {
            cluster,
            table: None,
            namespaces: HashMap::new(),
            pods: HashMap::new(),
            netpol_pods: HashMap::new(),
            pods_in: BTreeMap::new(),
            walked: false,
            listed: 0,
            walk_after: WALK_AFTER,
            subjects_for: Vec::new(),
            subjects: HashMap::new(),
        }
    }

    /// The cluster these answers are about.
    pub(crate) fn cluster(&self) -> &'c Cluster {
        self.cluster
    }

    /// How many namespaces this compile indexed by label: none, or every
    /// namespace holding pods (the table is built whole).
    pub(crate) fn namespaces_indexed(&self) -> usize {
        self.table.as_ref().map_or(0, |t| t.names.len())
    }

    /// How many pods this compile listed to find the pods peers select:
    /// those of the namespaces looked up, or every pod after a walk.
    pub(crate) fn pods_listed(&self) -> usize {
        self.listed
    }

    fn table(&mut self) -> &NamespaceTable<'c> {
        let cluster = self.cluster;
        self.table
            .get_or_insert_with(|| NamespaceTable::new(cluster))
    }

    /// The names of the namespaces `sel` selects, in name order.
    fn namespace_names(&mut self, sel: &Selector) -> Vec<&'c str> {
        if self.table.is_none() {
            if let Some(found) = self.by_name(sel) {
                return found;
            }
        }
        let ids = self.namespace_ids(sel);
        let table = self.table();
        ids.iter().map(|id| table.names[*id as usize]).collect()
    }

    /// The namespaces holding pods that `sel` selects, ascending.
    fn namespace_ids(&mut self, sel: &Selector) -> Rc<[NsId]> {
        let key = selector_key(sel);
        if let Some(known) = self.namespaces.get(&key) {
            return known.clone();
        }
        let table = self.table();
        let selected = |id: &NsId| sel.matches(&table.labels[*id as usize]);
        let found: Rc<[NsId]> = match table.candidates(sel) {
            Some(candidates) => candidates.into_iter().filter(selected).collect(),
            None => (0..table.names.len() as NsId).filter(selected).collect(),
        };
        self.namespaces.insert(key, found.clone());
        found
    }

    /// The namespaces holding pods that `sel` selects, when it names them
    /// (`kubernetes.io/metadata.name`, in `matchLabels` or an `In` list):
    /// those names are looked up, with the few namespaces labelled with
    /// another name, so a compile of one pod (as `incr` makes) builds no
    /// table of every namespace for the most common namespace selector.
    /// `None` when `sel` names no namespace.
    fn by_name(&self, sel: &Selector) -> Option<Vec<&'c str>> {
        let cluster = self.cluster;
        let mut named: Option<Vec<&str>> =
            sel.match_labels.get(NAMESPACE_NAME_LABEL).map(|v| vec![v]);
        for r in &sel.match_expressions {
            if r.key == NAMESPACE_NAME_LABEL && r.operator == Operator::In {
                let values: Vec<&str> = r.values.iter().map(String::as_str).collect();
                if named.as_ref().is_none_or(|n| values.len() < n.len()) {
                    named = Some(values);
                }
            }
        }
        let candidates: BTreeSet<&'c str> = named?
            .into_iter()
            .filter_map(|name| cluster.namespace_with_pods(name))
            .chain(
                cluster
                    .misnamed_namespaces()
                    .filter_map(|name| cluster.namespace_with_pods(name)),
            )
            .collect();
        Some(
            candidates
                .into_iter()
                .filter(|name| sel.matches(&cluster.namespace_labels(name)))
                .collect(),
        )
    }

    /// [`Selections::namespace_names`], for tests.
    #[cfg(test)]
    pub(crate) fn namespaces(&mut self, sel: &Selector) -> Vec<&'c str> {
        self.namespace_names(sel)
    }

    /// Looks up the policy pods of the namespaces `names` (see
    /// [`WALK_AFTER`]).
    fn load_pods(&mut self, names: impl Iterator<Item = &'c str> + Clone) {
        if self.walked {
            return;
        }
        let missing = names
            .clone()
            .filter(|name| !self.pods_in.contains_key(name))
            .count();
        if missing > self.walk_after {
            self.listed += self.cluster.pod_count();
            let mut pods = self.cluster.pods();
            for (name, _, count) in self.cluster.pod_namespaces() {
                let policy_pods: Rc<[&'c Pod]> = pods
                    .by_ref()
                    .take(count)
                    .filter(|p| p.is_policy_pod())
                    .collect();
                self.pods_in.entry(name).or_insert(policy_pods);
            }
            self.walked = true;
            return;
        }
        for name in names {
            if !self.pods_in.contains_key(name) {
                let mut listed = 0;
                let pods = self
                    .cluster
                    .pods_in(name)
                    .inspect(|_| listed += 1)
                    .filter(|p| p.is_policy_pod())
                    .collect();
                self.listed += listed;
                self.pods_in.insert(name, pods);
            }
        }
    }

    /// The pods of `by_ns` (namespaces, each with the pod selectors of the
    /// peers selecting it; `None`: every pod), in namespace/name order.
    fn select_pods(&mut self, by_ns: BTreeMap<&'c str, Vec<Option<&Selector>>>) -> Rc<[&'c Pod]> {
        self.load_pods(by_ns.keys().copied());
        let mut out = Vec::new();
        for (name, sels) in by_ns {
            let pods = self.pods_in.get(name).map_or(&[][..], |p| &p[..]);
            if sels.iter().any(Option::is_none) {
                out.extend_from_slice(pods);
            } else {
                out.extend(
                    pods.iter()
                        .copied()
                        .filter(|p| sels.iter().flatten().any(|s| s.matches(&p.labels))),
                );
            }
        }
        out.into()
    }

    /// The policy pods any pod or namespace peer of `r` selects (every
    /// policy pod when a peer is `All`), in namespace/name order.
    pub(crate) fn peer_pods(&mut self, r: &AdminRule) -> Rc<[&'c Pod]> {
        let key = super::compile::pod_peers_key(r);
        if let Some(known) = self.pods.get(&key) {
            return known.clone();
        }
        let cluster = self.cluster;
        let found: Rc<[&'c Pod]> = if r.peers.iter().any(|p| matches!(p, AdminPeer::All)) {
            cluster.pods().filter(|p| p.is_policy_pod()).collect()
        } else {
            let mut by_ns: BTreeMap<&'c str, Vec<Option<&Selector>>> = BTreeMap::new();
            for peer in &r.peers {
                let (ns_sel, pods) = match peer {
                    AdminPeer::Namespaces(s) => (s, None),
                    AdminPeer::Pods { namespaces, pods } => (namespaces, Some(pods)),
                    AdminPeer::Nodes(_) | AdminPeer::Networks(_) | AdminPeer::All => continue,
                };
                for name in self.namespace_names(ns_sel) {
                    by_ns.entry(name).or_default().push(pods);
                }
            }
            self.select_pods(by_ns)
        };
        self.pods.insert(key, found.clone());
        found
    }

    /// The policy pods the pod peers of a NetworkPolicy rule in
    /// `policy_ns` select, in namespace/name order (`compile::peer_pods`
    /// is the plain scan); `key` is their `compile::pod_peers_key`.
    pub(crate) fn netpol_peer_pods(
        &mut self,
        key: &str,
        policy_ns: &str,
        peers: &[Peer],
    ) -> Rc<[&'c Pod]> {
        if let Some(known) = self.netpol_pods.get(key) {
            return known.clone();
        }
        let mut by_ns: BTreeMap<&'c str, Vec<Option<&Selector>>> = BTreeMap::new();
        for peer in peers {
            let Peer::Pods {
                pod_selector,
                namespace_selector,
            } = peer
            else {
                continue;
            };
            match namespace_selector {
                // The policy's own namespace: found by name.
                None => {
                    if let Some(own) = self.cluster.namespace_with_pods(policy_ns) {
                        by_ns.entry(own).or_default().push(pod_selector.as_ref());
                    }
                }
                Some(sel) => {
                    for name in self.namespace_names(sel) {
                        by_ns.entry(name).or_default().push(pod_selector.as_ref());
                    }
                }
            }
        }
        let found = self.select_pods(by_ns);
        self.netpol_pods.insert(key.to_string(), found.clone());
        found
    }

    /// The policies of `policies` (kept in order) whose subject is `pod`:
    /// their namespace part is matched once per namespace, their pod part
    /// per pod.
    pub(crate) fn subject_of(
        &mut self,
        policies: &[&'c AdminPolicy],
        pod: &Pod,
    ) -> Vec<&'c AdminPolicy> {
        if policies.is_empty() {
            return Vec::new();
        }
        let same = self.subjects_for.len() == policies.len()
            && self
                .subjects_for
                .iter()
                .zip(policies)
                .all(|(a, b)| std::ptr::eq(*a, *b));
        if !same {
            self.subjects_for = policies.to_vec();
            self.subjects.clear();
        }
        let in_ns = match self.subjects.get(&pod.namespace) {
            Some(known) => known.clone(),
            None => {
                let labels = self.cluster.namespace_labels(&pod.namespace);
                let found: Rc<[&'c AdminPolicy]> = policies
                    .iter()
                    .copied()
                    .filter(|pol| match &pol.subject {
                        Subject::Namespaces(s) => s.matches(&labels),
                        Subject::Pods { namespaces, .. } => namespaces.matches(&labels),
                    })
                    .collect();
                self.subjects.insert(pod.namespace.clone(), found.clone());
                found
            }
        };
        in_ns
            .iter()
            .copied()
            .filter(|pol| match &pol.subject {
                Subject::Namespaces(_) => true,
                Subject::Pods { pods, .. } => pods.matches(&pod.labels),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::Selections;
    use crate::admin::compile::{peer_pods, subject_of};
    use crate::index::Cluster;
    use crate::model::{Namespace, NAMESPACE_NAME_LABEL};
    use crate::prop_tests::{cluster_strategy, selector_strategy, NAMESPACES};
    use crate::selector::{Operator, Requirement, Selector};
    use proptest::prelude::*;

    /// `c` with namespace x's object gone (its pods keep the implicit
    /// name label) and y's name label claiming z's name, as offline input
    /// may: the index must not assume a namespace's name label is its name.
    fn odd_namespaces(c: &Cluster) -> Cluster {
        let mut c = c.clone();
        c.delete_namespace(NAMESPACES[0]);
        if let Some(y) = c.namespace(NAMESPACES[1]) {
            let mut labels = y.labels.clone();
            labels.insert(NAMESPACE_NAME_LABEL.into(), NAMESPACES[2].into());
            c.apply_namespace(Namespace {
                name: NAMESPACES[1].into(),
                labels,
            });
        }
        c
    }

    fn by_name(sel: &Selector) -> Selector {
        let mut by_name = sel.clone();
        by_name
            .match_labels
            .insert(NAMESPACE_NAME_LABEL.into(), NAMESPACES[2].into());
        by_name
    }

    /// `sel` also requiring one of two names (`In`), one of them the name
    /// another namespace's label claims in `odd_namespaces`.
    fn in_names(sel: &Selector) -> Selector {
        let mut in_names = sel.clone();
        in_names.match_expressions.push(Requirement {
            key: NAMESPACE_NAME_LABEL.into(),
            operator: Operator::In,
            values: [NAMESPACES[0].to_string(), NAMESPACES[2].to_string()].into(),
        });
        in_names
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        /// Every answer equals the plain scan of the cluster it replaces:
        /// selected namespaces, the pods of each admin rule's peers and of
        /// each NetworkPolicy rule's pod peers (asked twice, so a
        /// remembered answer is checked too), each pod's admin subjects;
        /// with namespaces' pods looked up one by one or listed in one walk.
        #[test]
        fn selections_equal_the_plain_scans(
            c in cluster_strategy(),
            sels in proptest::collection::vec(selector_strategy(), 1..4),
            odd in any::<bool>(),
            walk in any::<bool>(),
        ) {
            let c = if odd { odd_namespaces(&c) } else { c };
            let mut s = Selections::new(&c);
            if walk {
                s.walk_after = 0;
            }
            for sel in sels.iter().flat_map(|s| [s.clone(), by_name(s), in_names(s)]) {
                let scan: Vec<&str> = c
                    .namespaces_with_pods()
                    .filter(|ns| sel.matches(&c.namespace_labels(ns)))
                    .collect();
                // Fresh, a selector naming namespaces is answered by name;
                // once the table is built, from it.
                let fresh = Selections::new(&c).namespaces(&sel);
                prop_assert_eq!(&fresh[..], &scan[..], "{:?}", sel);
                prop_assert_eq!(&s.namespaces(&sel)[..], &scan[..], "{:?}", sel);
            }
            let admin = crate::compile::admin_policies(&c);
            for _ in 0..2 {
                for pol in &admin {
                    for r in pol.ingress.iter().chain(&pol.egress) {
                        prop_assert_eq!(&s.peer_pods(r)[..], &peer_pods(&c, r)[..], "{:?}", r);
                    }
                }
                for pod in c.pods() {
                    prop_assert_eq!(s.subject_of(&admin, pod), subject_of(&c, &admin, pod));
                }
                for pol in c.policies() {
                    let rules = pol.ingress.iter().chain(&pol.egress).flatten();
                    for peers in rules.filter_map(|r| r.peers.as_deref()) {
                        let key = crate::compile::pod_peers_key(&pol.namespace, peers);
                        prop_assert_eq!(
                            &s.netpol_peer_pods(&key, &pol.namespace, peers)[..],
                            &crate::compile::peer_pods(&c, &pol.namespace, peers)[..],
                            "{:?}",
                            peers
                        );
                    }
                }
            }
        }
    }
}

//! Incremental compile of one node's ruleset: after a change to the
//! cluster, recompute only the chains, sets and elements the change can
//! affect, and say which ones (a [`Touched`]) so the transaction to the
//! kernel is built from those alone. The full compile
//! ([`crate::compile_node`]) stays the reference: the ruleset here is the
//! union of the same units it builds, made by the same functions, and the
//! property test in `incr_tests.rs` requires equality after every event.
//!
//! Units and what feeds them:
//! - a local policy pod's chains (both directions, the admin tiers and the
//!   NetworkPolicy part) and its dispatch elements: the pod itself, the
//!   policies of its namespace that select it, the admin policies whose
//!   subject it is (the only part its namespace's labels feed: peers
//!   selected by namespace labels are set elements), and whether its
//!   addresses are shared. Its labels feed them only through which
//!   policies select it and whose admin subject it is, so a relabel that
//!   changes neither keeps its chains (at 150,000 pods most relabels);
//! - a set's elements: a function of the set's name and the cluster (its
//!   name is a hash of its definition). An element that holds one address
//!   depends only on the objects holding that address (see
//!   `Builder::shared_set`), so a pod, a namespace's pods or a Node
//!   changing recomputes each set only at their addresses, from a cluster
//!   cut down to the objects holding them. A policy changing never changes
//!   the elements of a set that exists: what it changes are the chains of
//!   the pods it selects (before or after), and a definition it brings is
//!   a new set, computed whole;
//! - the shared-address chains: recomputed whenever any address is shared;
//! - the `rel_` and source validation chains: the local pods' names and
//!   addresses and the interface map, so they are redone only when one of
//!   those changes, from the local pods alone.
//!
//! So a NetworkPolicy recompiles the local pods it selects or selected, an
//! admin policy the local pods that are or were its subjects, and a Node
//! the set elements at its addresses. A complete relisting is marked
//! object by object (see [`Incremental::mark`]). Only a change of the
//! local pods' address families rebuilds the node.

use crate::admin::compile as admin_compile;
use crate::admin::AdminKind;
use crate::audit::AuditOptions;
use crate::compile::{self, Builder, Recipe};
use crate::diff::Touched;
use crate::index::Cluster;
use crate::ir::*;
use crate::model::Pod;
use crate::srcval::NodeNet;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::mem;
use std::net::IpAddr;

type Key = (String, String);

/// The object a change is about, as far as the dependency index needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ObjectKey {
    Namespace(String),
    Pod { namespace: String, name: String },
    Policy { namespace: String, name: String },
    Admin { kind: AdminKind, name: String },
    Node(String),
}

/// What must be recomputed at the next update.
#[derive(Clone, Debug, Default)]
pub struct Dirty {
    all: bool,
    /// Local pods whose units are recompiled.
    pods: BTreeSet<Key>,
    /// Pods of this node whose own object changed: their units are
    /// recompiled unless only labels changed that no selector of theirs
    /// notices (see [`Incremental::update`]).
    changed: BTreeSet<Key>,
    /// Addresses whose set elements are recomputed.
    ips: BTreeSet<IpAddr>,
    /// Namespaces whose labels changed.
    namespaces: BTreeSet<String>,
}

impl Dirty {
    fn merge(&mut self, o: Dirty) {
        self.all |= o.all;
        if self.all {
            // A rebuild recomputes everything anyway.
            *self = Dirty {
                all: true,
                ..Dirty::default()
            };
            return;
        }
        self.pods.extend(o.pods);
        self.changed.extend(o.changed);
        self.ips.extend(o.ips);
        self.namespaces.extend(o.namespaces);
    }
}

/// What one unit put into the ruleset.
#[derive(Clone, Debug, Default)]
struct UnitOut {
    chains: Vec<String>,
    /// Dispatch map elements, by map.
    vmap: Vec<(String, Element)>,
    /// Sets its rules name (those of the shared tier chains it goes to
    /// included).
    sets: BTreeSet<String>,
    /// The shared tier chains its chains go to.
    tier_chains: BTreeSet<String>,
    /// The admin policies whose subject the pod was, in tier order: the
    /// one thing its chains take from its namespace's labels, so a
    /// namespace relabel recompiles only the pods where this changes.
    subjects: Vec<String>,
    /// The pod as compiled, and the names of the NetworkPolicies of its
    /// namespace selecting it: a relabel that changes neither these nor
    /// `subjects` leaves the chains as they are.
    pod: Option<Pod>,
    selecting: Vec<String>,
}

/// How each set's elements are computed (see [`Recipe`]), by set name.
#[derive(Clone, Default)]
struct Recipes(BTreeMap<String, Recipe>);

impl std::fmt::Debug for Recipes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// What the last [`Incremental::update`] recomputed: an event's cost in
/// units of work, for the agent's debug log, and for tests holding each
/// kind of event to its narrow path (the outputs alone cannot tell a
/// narrow update from a wide one that found nothing changed).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Work {
    /// The whole node was compiled.
    pub rebuilt: bool,
    /// Local pods whose chains were compiled.
    pub units: usize,
    /// Local pods whose own change left their chains as they were.
    pub units_kept: usize,
    /// Addresses at which every address-keyed set was recomputed.
    pub addresses: usize,
    /// The `rel_` and source validation chains were redone.
    pub local_chains: bool,
    /// Namespaces the units' compiles indexed by label to find what a
    /// namespace selector of a new set selects (every namespace holding
    /// pods, each time).
    pub namespaces_indexed: usize,
    /// Pods the units' compiles listed to find the pods a new set's peers
    /// select.
    pub pods_listed: usize,
}

/// One node's ruleset, kept up to date change by change.
#[derive(Clone, Debug)]
pub struct Incremental {
    node: String,
    net: NodeNet,
    /// Node-wide verdict logging, as the full compile is given it.
    audit: AuditOptions,
    rs: Ruleset,
    units: BTreeMap<Key, UnitOut>,
    /// Which units name each set; a set nobody names goes.
    set_users: BTreeMap<String, BTreeSet<Key>>,
    /// The recipe of every set of `rs` but the dispatch maps.
    recipes: Recipes,
    /// Which units go to each shared tier chain; a chain nobody uses goes.
    chain_users: BTreeMap<String, BTreeSet<Key>>,
    /// Claimants of every shared address at the last update.
    shared: BTreeMap<IpAddr, Vec<Key>>,
    /// The local policy pods and their addresses: all the `rel_` and
    /// source validation chains take from pods, so a local pod's
    /// relabel (the common event) leaves them be, and redoing them looks
    /// at these pods alone, not at every pod of the cluster.
    local: BTreeMap<Key, Vec<IpAddr>>,
    shared_out: UnitOut,
    src_chains: Vec<String>,
    /// The `rel_` chains of the local pods' addresses (`related.rs`).
    rel_chains: Vec<String>,
    /// The address families of the local pods: they shape the dispatch
    /// maps and base chains, so a change rebuilds the node.
    families: BTreeSet<Family>,
    /// Whether the cluster has admin-tier policies: the pass chains and
    /// maps exist then, so a change rebuilds the node.
    admin_tier: bool,
    dirty: Dirty,
    work: Work,
}

impl Incremental {
    /// An engine for `node` that has compiled nothing yet: the first
    /// update compiles the whole node.
    pub fn new(node: &str) -> Incremental {
        Incremental::with_audit(node, AuditOptions::default())
    }

    /// [`Incremental::new`] whose ruleset equals
    /// [`crate::compile_node_with`] under `audit`.
    pub fn with_audit(node: &str, audit: AuditOptions) -> Incremental {
        Incremental {
            node: node.to_string(),
            net: NodeNet::default(),
            audit,
            rs: Ruleset::default(),
            units: BTreeMap::new(),
            set_users: BTreeMap::new(),
            recipes: Recipes::default(),
            chain_users: BTreeMap::new(),
            shared: BTreeMap::new(),
            local: BTreeMap::new(),
            shared_out: UnitOut::default(),
            src_chains: Vec::new(),
            rel_chains: Vec::new(),
            families: BTreeSet::new(),
            admin_tier: false,
            dirty: Dirty {
                all: true,
                ..Dirty::default()
            },
            work: Work::default(),
        }
    }

    /// The ruleset as of the last update.
    pub fn ruleset(&self) -> &Ruleset {
        &self.rs
    }

    /// What the last update recomputed.
    pub fn work(&self) -> &Work {
        &self.work
    }

    /// The next update recompiles the whole node.
    pub fn invalidate(&mut self) {
        self.dirty.merge(Dirty {
            all: true,
            ..Dirty::default()
        });
    }

    /// Whether the next update recompiles the whole node anyway, so
    /// marking changes is wasted work (the first listing).
    pub fn rebuilding(&self) -> bool {
        self.dirty.all
    }

    /// What `obj` feeds in `cluster` as it is now. Take it before a change
    /// and after it, and [`Incremental::note`] both when the change
    /// changed something: the old state says what the object fed, the new
    /// one what it feeds.
    pub fn mark(&self, cluster: &Cluster, obj: &ObjectKey) -> Dirty {
        let mut d = Dirty::default();
        match obj {
            ObjectKey::Namespace(name) => {
                d.namespaces.insert(name.clone());
            }
            ObjectKey::Pod { namespace, name } => {
                if let Some(p) = cluster.pod(namespace, name) {
                    d.ips.extend(p.ips.iter().copied());
                    if p.node_name.as_deref() == Some(self.node.as_str()) {
                        d.changed.insert(p.key());
                    }
                }
            }
            ObjectKey::Policy { namespace, name } => {
                if let Some(pol) = cluster.policies_in(namespace).find(|p| &p.name == name) {
                    d.pods.extend(
                        cluster
                            .pods_in(namespace)
                            .filter(|p| self.is_local(p) && pol.pod_selector.matches(&p.labels))
                            .map(Pod::key),
                    );
                }
            }
            ObjectKey::Admin { kind, name } => {
                let found = cluster
                    .admin_policies()
                    .find(|p| p.kind == *kind && &p.name == name);
                if let Some(pol) = found {
                    // Every local policy pod is a unit, or was marked by
                    // its own change since the last update.
                    d.pods.extend(
                        self.units
                            .keys()
                            .filter_map(|(ns, name)| cluster.pod(ns, name))
                            .filter(|p| crate::admin::compile::selects(cluster, pol, p))
                            .map(Pod::key),
                    );
                }
            }
            ObjectKey::Node(name) => {
                if let Some(n) = cluster.node_objects().find(|n| &n.name == name) {
                    d.ips.extend(n.ips.iter().copied());
                }
            }
        }
        d
    }

    fn is_local(&self, p: &Pod) -> bool {
        p.is_policy_pod() && p.node_name.as_deref() == Some(self.node.as_str())
    }

    pub fn note(&mut self, d: Dirty) {
        self.dirty.merge(d);
    }

    /// Brings the ruleset up to date with `cluster` and `net`; returns the
    /// chains and sets that may have changed.
    pub fn update(&mut self, cluster: &Cluster, net: &NodeNet) -> Touched {
        let mut dirty = mem::take(&mut self.dirty);
        // The interface map or a local pod's name or addresses changed:
        // the `rel_` and source validation chains are redone.
        let mut redo_local = false;
        if *net != self.net {
            self.net = net.clone();
            redo_local = true;
        }
        let node = self.node.clone();
        let is_local = |p: &Pod| p.is_policy_pod() && p.node_name.as_deref() == Some(&node);
        self.work = Work::default();
        let admin = compile::admin_policies(cluster);
        // A local pod's chains read its labels only through the policies
        // selecting it and the admin policies whose subject it is.
        for key in mem::take(&mut dirty.changed) {
            let now = cluster.pod(&key.0, &key.1).filter(|p| is_local(p));
            let kept = match (now, self.units.get_mut(&key)) {
                (Some(p), Some(u))
                    if !dirty.pods.contains(&key)
                        && u.pod.as_ref().is_some_and(|old| same_but_labels(old, p))
                        && u.selecting == selecting(cluster, p)
                        && u.subjects == subject_ids(cluster, &admin, p) =>
                {
                    u.pod = Some(p.clone());
                    true
                }
                _ => false,
            };
            if kept {
                self.work.units_kept += 1;
            } else {
                dirty.pods.insert(key);
            }
        }
        // Every local pod is a unit or was just marked; a unit not marked
        // has the addresses `local` holds (its own change marks it), so
        // only the marked pods are looked up among the cluster's.
        let families: BTreeSet<Family> = self
            .local
            .iter()
            .filter(|(k, _)| !dirty.pods.contains(*k))
            .flat_map(|(_, ips)| ips)
            .copied()
            .chain(
                dirty
                    .pods
                    .iter()
                    .filter_map(|(ns, name)| cluster.pod(ns, name))
                    .filter(|p| is_local(p))
                    .flat_map(|p| p.ips.iter().copied()),
            )
            .map(|ip| Family::of(&ip))
            .collect();
        if dirty.all
            || families != self.families
            || compile::has_admin_tier(cluster) != self.admin_tier
        {
            self.rebuild(cluster);
            self.work = Work {
                rebuilt: true,
                ..Work::default()
            };
            return Touched::everything();
        }
        let fams = self.families.clone();
        let shared_now = cluster.shared_addresses();
        let shared_keys: BTreeMap<IpAddr, Vec<Key>> = shared_now
            .iter()
            .map(|(ip, pods)| (*ip, pods.iter().map(|p| p.key()).collect()))
            .collect();
        // An address becoming shared or unshared moves its claimants'
        // dispatch elements and changes the sets at it.
        for ip in self.shared.keys().chain(shared_keys.keys()) {
            let (old, new) = (self.shared.get(ip), shared_keys.get(ip));
            if old != new {
                dirty.ips.insert(*ip);
                for k in old.into_iter().chain(new).flatten() {
                    dirty.pods.insert(k.clone());
                }
            }
        }
        let shared_dirty = !shared_keys.is_empty() || shared_keys != self.shared;
        self.shared = shared_keys;

        // A namespace's labels reach its pods' chains through the admin
        // subjects alone: only pods whose subjects changed are recompiled.
        // Its pods' elements in every set (peers selected by namespace
        // labels) are recomputed at their addresses.
        for ns in &dirty.namespaces {
            for p in cluster.pods_in(ns) {
                dirty.ips.extend(p.ips.iter().copied());
                let unchanged = self
                    .units
                    .get(&p.key())
                    .is_some_and(|u| u.subjects == subject_ids(cluster, &admin, p));
                if is_local(p) && !unchanged {
                    dirty.pods.insert(p.key());
                }
            }
            // Units of pods gone from the namespace or from the node.
            dirty.pods.extend(
                self.unit_keys_in(ns)
                    .into_iter()
                    .filter(|(ns, name)| !cluster.pod(ns, name).is_some_and(&is_local)),
            );
        }

        for key in &dirty.pods {
            let now = cluster.pod(&key.0, &key.1).filter(|p| is_local(p));
            if self.local.get(key) != now.map(|p| &p.ips) {
                redo_local = true;
                match now {
                    Some(p) => self.local.insert(key.clone(), p.ips.clone()),
                    None => self.local.remove(key),
                };
            }
        }

        let mut touched = Touched::default();
        // Sets computed from the whole cluster in this update.
        let mut whole: BTreeSet<String> = BTreeSet::new();
        let mut released: BTreeSet<String> = BTreeSet::new();
        for key in &dirty.pods {
            let old = self.units.remove(key).unwrap_or_default();
            released.extend(old.sets.iter().cloned());
            self.remove_out(&old, key, &mut touched);
            let Some(pod) = cluster.pod(&key.0, &key.1).filter(|p| is_local(p)) else {
                continue;
            };
            let computed = RefCell::new(BTreeSet::new());
            let frag = {
                let rs = &self.rs;
                // A set is computed whole only when it is new: the
                // elements of one already there are kept current at every
                // address a change touches (`recompute_at`).
                let done = &whole;
                let fill = |name: &str| -> Option<&Cluster> {
                    if done.contains(name) {
                        return None;
                    }
                    if !rs.sets.contains_key(name) {
                        computed.borrow_mut().insert(name.to_string());
                        Some(cluster)
                    } else {
                        None
                    }
                };
                let mut b = Builder::new(cluster, &shared_now, &fill, &fams, &self.audit);
                b.recipes = Some(BTreeMap::new());
                b.pod_unit(pod, &admin);
                self.recipes.0.extend(b.recipes.take().unwrap_or_default());
                self.work.namespaces_indexed += b.selections.namespaces_indexed();
                self.work.pods_listed += b.selections.pods_listed();
                b.rs
            };
            let computed = computed.into_inner();
            let mut out = self.add_out(key, frag, &computed, &mut touched);
            out.subjects = subject_ids(cluster, &admin, pod);
            out.pod = Some(pod.clone());
            out.selecting = selecting(cluster, pod);
            whole.extend(computed);
            self.units.insert(key.clone(), out);
            self.work.units += 1;
        }
        for name in released {
            if self.set_users.get(&name).is_none_or(BTreeSet::is_empty) {
                self.set_users.remove(&name);
                self.recipes.0.remove(&name);
                if self.rs.sets.remove(&name).is_some() {
                    touched.sets.insert(name);
                }
            }
        }

        self.work.addresses = dirty.ips.len();
        if !dirty.ips.is_empty() {
            self.recompute_at(cluster, &shared_now, &dirty.ips, &whole, &mut touched);
        }

        if shared_dirty {
            let old = mem::take(&mut self.shared_out);
            self.remove_out(&old, &(String::new(), String::new()), &mut touched);
            let fill = |_: &str| -> Option<&Cluster> { None };
            let mut b = Builder::new(cluster, &shared_now, &fill, &fams, &self.audit);
            b.shared_address_elements(&self.node);
            self.shared_out = self.add_out(
                &(String::new(), String::new()),
                b.rs,
                &BTreeSet::new(),
                &mut touched,
            );
        }

        if !redo_local {
            return touched;
        }
        self.work.local_chains = true;
        let locals = self.local_cluster(cluster);
        self.redo_related(&locals, &mut touched);
        // Without interfaces there are no validation chains to redo.
        if !self.src_chains.is_empty()
            || !self.net.pod_interfaces.is_empty()
            || !self.net.bridge_ports.is_empty()
        {
            for name in mem::take(&mut self.src_chains) {
                self.rs.chains.remove(&name);
                touched.chains.insert(name);
            }
            let mut src = Ruleset::default();
            crate::srcval::add_chains(&mut src, &locals, &self.node, &self.net);
            for (name, chain) in src.chains {
                touched.chains.insert(name.clone());
                self.src_chains.push(name.clone());
                self.rs.chains.insert(name, chain);
            }
            self.rs.guard = crate::srcval::guard(&locals, &self.node, &self.net);
            touched.guard = true;
        }
        touched
    }

    /// The local policy pods of `cluster` and nothing else: what the
    /// `rel_` and source validation chains are computed from.
    fn local_cluster(&self, cluster: &Cluster) -> Cluster {
        let mut sub = Cluster::new();
        for (ns, name) in self.local.keys() {
            if let Some(p) = cluster.pod(ns, name) {
                sub.apply_pod(p.clone());
            }
        }
        sub
    }

    /// Keys of the units of namespace `ns`.
    fn unit_keys_in(&self, ns: &str) -> Vec<Key> {
        self.units
            .range((ns.to_string(), String::new())..)
            .take_while(|((n, _), _)| n == ns)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Takes a unit's chains and dispatch elements out of the ruleset and
    /// lets go of its sets (an unused set is removed by the caller).
    fn remove_out(&mut self, old: &UnitOut, key: &Key, touched: &mut Touched) {
        for name in &old.chains {
            self.rs.chains.remove(name);
            touched.chains.insert(name.clone());
        }
        for (map, e) in &old.vmap {
            if let Some(m) = self.rs.sets.get_mut(map) {
                m.elements.remove(e);
            }
            touched.sets.insert(map.clone());
        }
        for name in &old.sets {
            if let Some(u) = self.set_users.get_mut(name) {
                u.remove(key);
            }
        }
        for name in &old.tier_chains {
            let Some(u) = self.chain_users.get_mut(name) else {
                continue;
            };
            u.remove(key);
            if u.is_empty() {
                self.chain_users.remove(name);
                self.rs.chains.remove(name);
                touched.chains.insert(name.clone());
            }
        }
    }

    /// Puts a unit's fragment into the ruleset: its chains, its dispatch
    /// elements, and the sets it names (`computed` ones with the elements
    /// the fragment holds; the others are already in the ruleset).
    fn add_out(
        &mut self,
        key: &Key,
        frag: Ruleset,
        computed: &BTreeSet<String>,
        touched: &mut Touched,
    ) -> UnitOut {
        let mut out = UnitOut::default();
        let mut frag = frag;
        // The full compile's last pass, rule by rule: the unit's own rules
        // are all it looks at.
        crate::counters::add(&mut frag);
        // The shared tier chains the unit goes to: built in `frag` when
        // new, else already here (then their sets are used through them).
        let tier_chains: BTreeSet<String> = frag
            .chains
            .values()
            .flat_map(|c| &c.rules)
            .filter_map(crate::diff::rule_chain_ref)
            .filter(|c| admin_compile::is_tier_chain(c))
            .map(str::to_string)
            .collect();
        for name in &tier_chains {
            self.chain_users
                .entry(name.clone())
                .or_default()
                .insert(key.clone());
            if frag.chains.contains_key(name) {
                continue;
            }
            if let Some(chain) = self.rs.chains.get(name) {
                for set in chain.rules.iter().flat_map(crate::diff::rule_set_refs) {
                    self.set_users
                        .entry(set.to_string())
                        .or_default()
                        .insert(key.clone());
                    out.sets.insert(set.to_string());
                }
            }
        }
        for (name, chain) in frag.chains {
            if tier_chains.contains(&name) {
                if let std::collections::btree_map::Entry::Vacant(e) =
                    self.rs.chains.entry(name.clone())
                {
                    touched.chains.insert(name);
                    e.insert(chain);
                }
                continue;
            }
            touched.chains.insert(name.clone());
            out.chains.push(name.clone());
            self.rs.chains.insert(name, chain);
        }
        out.tier_chains = tier_chains;
        for (name, set) in frag.sets {
            if let SetKind::Vmap { .. } = set.kind {
                let Some(map) = self.rs.sets.get_mut(&name) else {
                    continue;
                };
                for e in set.elements {
                    touched.sets.insert(name.clone());
                    map.elements.insert(e.clone());
                    out.vmap.push((name.clone(), e));
                }
                continue;
            }
            self.set_users
                .entry(name.clone())
                .or_default()
                .insert(key.clone());
            if computed.contains(&name) && self.rs.sets.get(&name) != Some(&set) {
                touched.sets.insert(name.clone());
                self.rs.sets.insert(name.clone(), set);
            }
            out.sets.insert(name);
        }
        out
    }

    /// Recomputes every address-keyed set at `ips` (except those just
    /// computed whole) by its recipe, from a cluster holding only the
    /// pods and nodes at those addresses: a few small calls per set, no
    /// chain compiled.
    fn recompute_at(
        &mut self,
        cluster: &Cluster,
        shared_now: &compile::SharedAddrs<'_>,
        ips: &BTreeSet<IpAddr>,
        whole: &BTreeSet<String>,
        touched: &mut Touched,
    ) {
        let sub = cut_down(cluster, ips);
        let at = |e: &Element| match e {
            Element::Addr(ip) | Element::AddrProtoPort(ip, _, _) => ips.contains(ip),
            Element::VmapJump(..) | Element::AddrRange(..) | Element::PortRange(..) => false,
        };
        for (name, cur) in self.rs.sets.iter_mut() {
            let keyed_by_address = matches!(
                cur.kind,
                SetKind::Addr {
                    interval: false,
                    ..
                } | SetKind::AddrProtoPort { .. }
            );
            if !keyed_by_address || whole.contains(name) {
                continue;
            }
            let Some(recipe) = self.recipes.0.get(name) else {
                continue;
            };
            let new: BTreeSet<Element> = recipe(&sub, shared_now).into_iter().filter(at).collect();
            let old = elements_at(&cur.elements, ips);
            if old != new {
                for e in &old {
                    cur.elements.remove(e);
                }
                cur.elements.extend(new);
                touched.sets.insert(name.clone());
            }
        }
    }

    /// Compiles the whole node, unit by unit.
    fn rebuild(&mut self, cluster: &Cluster) {
        let node = mem::take(&mut self.node);
        let net = mem::take(&mut self.net);
        let audit = mem::take(&mut self.audit);
        *self = Incremental::with_audit(&node, audit);
        self.dirty = Dirty::default();
        self.net = net;
        let fams = compile::node_families(cluster, &node);
        let shared_now = cluster.shared_addresses();
        {
            let fill = |_: &str| -> Option<&Cluster> { None };
            let b = Builder::new(cluster, &shared_now, &fill, &fams, &self.audit);
            self.rs = b.rs;
        }
        compile::add_base_chains(&mut self.rs, &fams);
        compile::add_pass_chains(&mut self.rs, cluster, &fams);
        let admin = compile::admin_policies(cluster);
        let mut touched = Touched::default();
        for pod in compile::local_pods(cluster, &node) {
            let computed = RefCell::new(BTreeSet::new());
            let frag = {
                let rs = &self.rs;
                let fill = |name: &str| -> Option<&Cluster> {
                    (!rs.sets.contains_key(name)).then(|| {
                        computed.borrow_mut().insert(name.to_string());
                        cluster
                    })
                };
                let mut b = Builder::new(cluster, &shared_now, &fill, &fams, &self.audit);
                b.recipes = Some(BTreeMap::new());
                b.pod_unit(pod, &admin);
                self.recipes.0.extend(b.recipes.take().unwrap_or_default());
                b.rs
            };
            let mut out = self.add_out(&pod.key(), frag, &computed.into_inner(), &mut touched);
            out.subjects = subject_ids(cluster, &admin, pod);
            out.pod = Some(pod.clone());
            out.selecting = selecting(cluster, pod);
            self.units.insert(pod.key(), out);
        }
        self.shared = shared_now
            .iter()
            .map(|(ip, pods)| (*ip, pods.iter().map(|p| p.key()).collect()))
            .collect();
        self.local = compile::local_pods(cluster, &node)
            .map(|p| (p.key(), p.ips.clone()))
            .collect();
        let fill = |_: &str| -> Option<&Cluster> { None };
        let mut b = Builder::new(cluster, &shared_now, &fill, &fams, &self.audit);
        b.shared_address_elements(&node);
        self.shared_out = self.add_out(
            &(String::new(), String::new()),
            b.rs,
            &BTreeSet::new(),
            &mut touched,
        );
        let mut src = Ruleset::default();
        crate::srcval::add_chains(&mut src, cluster, &node, &self.net);
        for (name, chain) in src.chains {
            self.src_chains.push(name.clone());
            self.rs.chains.insert(name, chain);
        }
        self.rs.guard = crate::srcval::guard(cluster, &node, &self.net);
        self.redo_related(cluster, &mut touched);
        self.families = fams;
        self.admin_tier = compile::has_admin_tier(cluster);
    }

    /// The `rel_` chains and their map elements, from the local pods as
    /// they are now (a local pod came, went or changed addresses). A
    /// chain depends on its address alone, so only the addresses that
    /// came or went are touched.
    fn redo_related(&mut self, cluster: &Cluster, touched: &mut Touched) {
        let mut rel = Ruleset::default();
        for (name, set) in &self.rs.sets {
            if name.starts_with("related_") && matches!(set.kind, SetKind::Vmap { .. }) {
                rel.sets.insert(
                    name.clone(),
                    Set {
                        kind: set.kind,
                        elements: BTreeSet::new(),
                    },
                );
            }
        }
        crate::related::add_chains(&mut rel, cluster, &self.node);
        for name in mem::take(&mut self.rel_chains) {
            if !rel.chains.contains_key(&name) {
                self.rs.chains.remove(&name);
                touched.chains.insert(name);
            }
        }
        for (name, chain) in rel.chains {
            self.rel_chains.push(name.clone());
            if self.rs.chains.get(&name) != Some(&chain) {
                touched.chains.insert(name.clone());
                self.rs.chains.insert(name, chain);
            }
        }
        for (name, set) in rel.sets {
            if let Some(map) = self.rs.sets.get_mut(&name) {
                if map.elements != set.elements {
                    touched.sets.insert(name);
                    map.elements = set.elements;
                }
            }
        }
    }
}

/// The admin policies whose subject `pod` is, as [`UnitOut::subjects`]
/// keeps them.
fn subject_ids(cluster: &Cluster, admin: &[&crate::admin::AdminPolicy], pod: &Pod) -> Vec<String> {
    admin_compile::subject_of(cluster, admin, pod)
        .iter()
        .map(|p| p.id())
        .collect()
}

/// The NetworkPolicies of `pod`'s namespace selecting it, by name.
fn selecting(cluster: &Cluster, pod: &Pod) -> Vec<String> {
    cluster
        .policies_in(&pod.namespace)
        .filter(|pol| pol.pod_selector.matches(&pod.labels))
        .map(|pol| pol.name.clone())
        .collect()
}

/// Whether `a` and `b` differ at most in their labels. Spelled out field
/// by field so that a field added to [`Pod`] must be decided on here.
fn same_but_labels(a: &Pod, b: &Pod) -> bool {
    let Pod {
        namespace,
        name,
        labels: _,
        node_name,
        host_network,
        ips,
        named_ports,
        terminal,
    } = a;
    (
        namespace,
        name,
        node_name,
        host_network,
        ips,
        named_ports,
        terminal,
    ) == (
        &b.namespace,
        &b.name,
        &b.node_name,
        &b.host_network,
        &b.ips,
        &b.named_ports,
        &b.terminal,
    )
}

/// The pods claiming `ips` (with their namespaces) and the nodes holding
/// them: everything an element at those addresses depends on.
fn cut_down(cluster: &Cluster, ips: &BTreeSet<IpAddr>) -> Cluster {
    let mut sub = Cluster::new();
    for ip in ips {
        for p in cluster.claimants(*ip) {
            if let Some(ns) = cluster.namespace(&p.namespace) {
                sub.apply_namespace(ns.clone());
            }
            sub.apply_pod(p.clone());
        }
    }
    for n in cluster.node_objects() {
        if n.ips.iter().any(|ip| ips.contains(ip)) {
            sub.apply_node(n.clone());
        }
    }
    sub
}

/// The elements of an address-keyed set at `ips`, looked up by address
/// rather than by walking the set.
fn elements_at(elements: &BTreeSet<Element>, ips: &BTreeSet<IpAddr>) -> BTreeSet<Element> {
    let mut out = BTreeSet::new();
    for ip in ips {
        if let Some(e) = elements.get(&Element::Addr(*ip)) {
            out.insert(e.clone());
        }
        let lo = Element::AddrProtoPort(*ip, 0, 0);
        let hi = Element::AddrProtoPort(*ip, u8::MAX, u16::MAX);
        out.extend(elements.range(lo..=hi).cloned());
    }
    out
}

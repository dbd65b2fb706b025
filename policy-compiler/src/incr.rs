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
//!   policies of its namespace, its namespace's labels (admin subjects),
//!   the admin policies, and whether its addresses are shared;
//! - a set's elements: a function of the set's name and the cluster. An
//!   element that holds one address depends only on the objects holding
//!   that address (see `Builder::shared_set`), so a pod, or a namespace's
//!   pods, changing recomputes each set only at their addresses, from a
//!   cluster cut down to the objects holding them; a policy changing
//!   recomputes whole the sets of the pods in its namespace;
//! - the shared-address chains: recomputed whenever any address is shared;
//! - source validation chains: local pods and the interface map.
//!
//! Admin policies and Node objects are rare events that feed every unit,
//! so they rebuild the whole node; so does a complete relisting.

use crate::audit::AuditOptions;
use crate::compile::{self, Builder};
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
    Pod {
        namespace: String,
        name: String,
    },
    /// A NetworkPolicy of this namespace.
    Policy {
        namespace: String,
    },
    /// A Node object or an admin policy: everything is recomputed.
    Other,
}

/// What must be recomputed at the next update.
#[derive(Clone, Debug, Default)]
pub struct Dirty {
    all: bool,
    /// Local pods whose units are recompiled.
    pods: BTreeSet<Key>,
    /// Addresses whose set elements are recomputed.
    ips: BTreeSet<IpAddr>,
    /// Namespaces whose labels changed.
    namespaces: BTreeSet<String>,
    /// Namespaces where a NetworkPolicy changed.
    policy_namespaces: BTreeSet<String>,
    /// A local pod changed: source validation chains are recomputed.
    srcval: bool,
}

impl Dirty {
    fn merge(&mut self, o: Dirty) {
        self.all |= o.all;
        self.pods.extend(o.pods);
        self.ips.extend(o.ips);
        self.namespaces.extend(o.namespaces);
        self.policy_namespaces.extend(o.policy_namespaces);
        self.srcval |= o.srcval;
    }
}

/// What one unit put into the ruleset.
#[derive(Clone, Debug, Default)]
struct UnitOut {
    chains: Vec<String>,
    /// Dispatch map elements, by map.
    vmap: Vec<(String, Element)>,
    /// Sets its rules name.
    sets: BTreeSet<String>,
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
    /// Claimants of every shared address at the last update.
    shared: BTreeMap<IpAddr, Vec<Key>>,
    shared_out: UnitOut,
    src_chains: Vec<String>,
    /// The address families of the local pods: they shape the dispatch
    /// maps and base chains, so a change rebuilds the node.
    families: BTreeSet<Family>,
    dirty: Dirty,
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
            shared: BTreeMap::new(),
            shared_out: UnitOut::default(),
            src_chains: Vec::new(),
            families: BTreeSet::new(),
            dirty: Dirty {
                all: true,
                ..Dirty::default()
            },
        }
    }

    /// The ruleset as of the last update.
    pub fn ruleset(&self) -> &Ruleset {
        &self.rs
    }

    /// The next update recompiles the whole node.
    pub fn invalidate(&mut self) {
        self.dirty.all = true;
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
                        d.pods.insert(p.key());
                        d.srcval = true;
                    }
                }
            }
            ObjectKey::Policy { namespace } => {
                d.policy_namespaces.insert(namespace.clone());
            }
            ObjectKey::Other => d.all = true,
        }
        d
    }

    pub fn note(&mut self, d: Dirty) {
        self.dirty.merge(d);
    }

    /// Brings the ruleset up to date with `cluster` and `net`; returns the
    /// chains and sets that may have changed.
    pub fn update(&mut self, cluster: &Cluster, net: &NodeNet) -> Touched {
        let mut dirty = mem::take(&mut self.dirty);
        if *net != self.net {
            self.net = net.clone();
            dirty.srcval = true;
        }
        let node = self.node.clone();
        let is_local = |p: &Pod| p.is_policy_pod() && p.node_name.as_deref() == Some(&node);
        // Every local pod is a unit or was just marked.
        let families: BTreeSet<Family> = self
            .units
            .keys()
            .chain(&dirty.pods)
            .filter_map(|(ns, name)| cluster.pod(ns, name))
            .filter(|p| is_local(p))
            .flat_map(|p| p.ips.iter().map(Family::of))
            .collect();
        if dirty.all || families != self.families {
            self.rebuild(cluster);
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

        let mut full_pods: BTreeSet<Key> = BTreeSet::new();
        for ns in &dirty.namespaces {
            for p in cluster.pods_in(ns) {
                dirty.ips.extend(p.ips.iter().copied());
                if is_local(p) {
                    dirty.pods.insert(p.key());
                }
            }
            dirty.pods.extend(self.unit_keys_in(ns));
        }
        for ns in &dirty.policy_namespaces {
            full_pods.extend(cluster.pods_in(ns).filter(|p| is_local(p)).map(Pod::key));
            full_pods.extend(self.unit_keys_in(ns));
        }

        let mut touched = Touched::default();
        let admin = compile::admin_policies(cluster);
        // Sets computed from the whole cluster in this update.
        let mut whole: BTreeSet<String> = BTreeSet::new();
        let mut released: BTreeSet<String> = BTreeSet::new();
        let unit_keys: BTreeSet<Key> = dirty.pods.iter().chain(&full_pods).cloned().collect();
        for key in &unit_keys {
            let old = self.units.remove(key).unwrap_or_default();
            released.extend(old.sets.iter().cloned());
            self.remove_out(&old, key, &mut touched);
            let Some(pod) = cluster.pod(&key.0, &key.1).filter(|p| is_local(p)) else {
                continue;
            };
            let full = full_pods.contains(key);
            let computed = RefCell::new(BTreeSet::new());
            let frag = {
                let rs = &self.rs;
                let users = &self.set_users;
                // A set is computed whole when it is new, when the policies
                // of this pod's namespace changed, or when only this pod
                // names it (its elements may come from the pod itself:
                // ports named on it).
                let done = &whole;
                let fill = |name: &str| -> Option<&Cluster> {
                    if done.contains(name) {
                        return None;
                    }
                    let alone = users.get(name).is_none_or(BTreeSet::is_empty);
                    if full || alone || !rs.sets.contains_key(name) {
                        computed.borrow_mut().insert(name.to_string());
                        Some(cluster)
                    } else {
                        None
                    }
                };
                let mut b = Builder::new(cluster, &shared_now, &fill, &fams, &self.audit);
                b.pod_unit(pod, &admin);
                b.rs
            };
            let computed = computed.into_inner();
            let out = self.add_out(key, frag, &computed, &mut touched);
            whole.extend(computed);
            self.units.insert(key.clone(), out);
        }
        for name in released {
            if self.set_users.get(&name).is_none_or(BTreeSet::is_empty) {
                self.set_users.remove(&name);
                if self.rs.sets.remove(&name).is_some() {
                    touched.sets.insert(name);
                }
            }
        }

        if !dirty.ips.is_empty() {
            self.recompute_at(
                cluster,
                &shared_now,
                &admin,
                &dirty.ips,
                &whole,
                &mut touched,
            );
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

        // Without interfaces there are no validation chains to redo.
        if dirty.srcval && (!self.src_chains.is_empty() || !self.net.pod_interfaces.is_empty()) {
            for name in mem::take(&mut self.src_chains) {
                self.rs.chains.remove(&name);
                touched.chains.insert(name);
            }
            let mut src = Ruleset::default();
            crate::srcval::add_chains(&mut src, cluster, &self.node, &self.net);
            for (name, chain) in src.chains {
                touched.chains.insert(name.clone());
                self.src_chains.push(name.clone());
                self.rs.chains.insert(name, chain);
            }
        }
        touched
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
        for (name, chain) in frag.chains {
            touched.chains.insert(name.clone());
            out.chains.push(name.clone());
            self.rs.chains.insert(name, chain);
        }
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
    /// computed whole), from a cluster holding only the pods and nodes at
    /// those addresses.
    fn recompute_at(
        &mut self,
        cluster: &Cluster,
        shared_now: &compile::SharedAddrs<'_>,
        admin: &[&crate::admin::AdminPolicy],
        ips: &BTreeSet<IpAddr>,
        whole: &BTreeSet<String>,
        touched: &mut Touched,
    ) {
        let sub = cut_down(cluster, ips);
        let wanted: BTreeSet<String> = self
            .rs
            .sets
            .iter()
            .filter(|(name, s)| {
                matches!(
                    s.kind,
                    SetKind::Addr {
                        interval: false,
                        ..
                    } | SetKind::AddrProtoPort { .. }
                ) && !whole.contains(*name)
            })
            .map(|(name, _)| name.clone())
            .collect();
        // A set's elements are computed while compiling a unit that names
        // it; a few units cover every set.
        let mut left = wanted.clone();
        let mut plan: Vec<Key> = Vec::new();
        for name in &wanted {
            if !left.contains(name) {
                continue;
            }
            let Some(user) = self.set_users.get(name).and_then(|u| u.first()) else {
                continue;
            };
            if let Some(u) = self.units.get(user) {
                for s in &u.sets {
                    left.remove(s);
                }
            }
            plan.push(user.clone());
        }
        let mut fresh: BTreeMap<String, Set> = BTreeMap::new();
        for key in plan {
            let Some(pod) = cluster.pod(&key.0, &key.1) else {
                continue;
            };
            let frag = {
                let done = &fresh;
                let fill = |name: &str| -> Option<&Cluster> {
                    (wanted.contains(name) && !done.contains_key(name)).then_some(&sub)
                };
                let mut b = Builder::new(cluster, shared_now, &fill, &self.families, &self.audit);
                b.pod_unit(pod, admin);
                b.rs
            };
            for (name, set) in frag.sets {
                if wanted.contains(&name) && !fresh.contains_key(&name) {
                    fresh.insert(name, set);
                }
            }
        }
        let at = |e: &Element| match e {
            Element::Addr(ip) | Element::AddrProtoPort(ip, _, _) | Element::VmapJump(ip, _) => {
                ips.contains(ip)
            }
            Element::AddrRange(..) | Element::PortRange(..) => false,
        };
        for (name, set) in fresh {
            let Some(cur) = self.rs.sets.get_mut(&name) else {
                continue;
            };
            let old: Vec<Element> = cur.elements.iter().filter(|e| at(e)).cloned().collect();
            let new: Vec<Element> = set.elements.into_iter().filter(|e| at(e)).collect();
            if old != new {
                for e in &old {
                    cur.elements.remove(e);
                }
                cur.elements.extend(new);
                touched.sets.insert(name);
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
                b.pod_unit(pod, &admin);
                b.rs
            };
            let out = self.add_out(&pod.key(), frag, &computed.into_inner(), &mut touched);
            self.units.insert(pod.key(), out);
        }
        self.shared = shared_now
            .iter()
            .map(|(ip, pods)| (*ip, pods.iter().map(|p| p.key()).collect()))
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
        self.families = fams;
        self.node = node;
    }
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

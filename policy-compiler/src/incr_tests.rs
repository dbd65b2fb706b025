//! The incremental compile against the full one: on generated clusters,
//! random sequences of events (pods added, deleted, relabelled whole or
//! one label of a pod of the node at a time, moved,
//! readdressed onto shared addresses, their named ports changed;
//! namespaces relabelled and deleted; NetworkPolicies, admin policies and
//! Nodes put and deleted, Nodes readdressed onto pod addresses; the
//! interface map changed), applied one to three
//! at a time, must leave the incremental ruleset equal to a full compile
//! under the same node-wide logging options after every update, and the transaction built from the touched objects
//! alone must turn the previous ruleset into the new one in the fake
//! kernel.

use crate::admin::{AdminKind, AdminPolicy, Node};
use crate::audit::AuditOptions;
use crate::compile::{compile_node, compile_node_with};
use crate::diff::{diff_touched, FakeKernel};
use crate::incr::{Incremental, ObjectKey, Work};
use crate::index::Cluster;
use crate::model::*;
use crate::prop_tests::*;
use crate::srcval::NodeNet;
use proptest::prelude::*;
use std::net::IpAddr;

const NODE: &str = "node-1";

#[derive(Clone, Debug)]
enum Event {
    PodLabels(usize, Labels),
    /// One label of a pod of the node set or dropped (`None`), the others
    /// kept: the relabel whose chains are often left as they are.
    LocalPodLabel(usize, String, Option<String>),
    /// A new IPv4 address from a pool of four, so addresses get shared.
    PodAddress(usize, u8),
    PodNode(usize, usize),
    PodPorts(usize, Vec<(usize, Protocol, u16)>),
    PodHostNetwork(usize),
    PodDelete(usize),
    PodAdd {
        namespace: usize,
        labels: Labels,
        node: usize,
        address: u8,
    },
    NamespaceLabels(usize, Labels),
    NamespaceDelete(usize),
    PolicyPut(usize, Policy),
    PolicyDelete(usize),
    AdminPut(usize, AdminPolicy),
    AdminDelete(usize),
    NodeLabels(usize, Labels),
    /// The node's IPv4 address becomes one of the pool pods use.
    NodeAddress(usize, u8),
    NodeDelete(usize),
    /// Interfaces known for every pod, or for none.
    Interfaces(bool),
}

fn event_strategy() -> impl Strategy<Value = Event> {
    let idx = || 0usize..16;
    prop_oneof![
        3 => (idx(), labels_strategy()).prop_map(|(i, l)| Event::PodLabels(i, l)),
        3 => (
            idx(),
            prop::sample::select(LABEL_KEYS.to_vec()),
            proptest::option::of(prop::sample::select(LABEL_VALUES.to_vec()))
        )
            .prop_map(|(i, k, v)| Event::LocalPodLabel(i, k.to_string(), v.map(str::to_string))),
        2 => (idx(), 0u8..4).prop_map(|(i, a)| Event::PodAddress(i, a)),
        1 => (idx(), 0..NODES.len()).prop_map(|(i, n)| Event::PodNode(i, n)),
        1 => (
            idx(),
            proptest::collection::vec(
                (
                    0..PORT_NAMES.len(),
                    prop::sample::select(Protocol::ALL.to_vec()),
                    prop::sample::select(PORTS.to_vec()),
                ),
                0..3,
            )
        )
            .prop_map(|(i, p)| Event::PodPorts(i, p)),
        1 => idx().prop_map(Event::PodHostNetwork),
        1 => idx().prop_map(Event::PodDelete),
        2 => (0..NAMESPACES.len(), labels_strategy(), 0..NODES.len(), 0u8..8).prop_map(
            |(namespace, labels, node, address)| Event::PodAdd {
                namespace,
                labels,
                node,
                address
            }
        ),
        2 => (0..NAMESPACES.len() + 1, labels_strategy())
            .prop_map(|(i, l)| Event::NamespaceLabels(i, l)),
        1 => (0..NAMESPACES.len() + 1).prop_map(Event::NamespaceDelete),
        3 => (0usize..6, policy_strategy()).prop_map(|(i, p)| Event::PolicyPut(i, p)),
        1 => (0usize..6).prop_map(Event::PolicyDelete),
        1 => (0usize..3, admin_policy_strategy()).prop_map(|(i, p)| Event::AdminPut(i, p)),
        1 => (0usize..3).prop_map(Event::AdminDelete),
        1 => (0..NODES.len(), labels_strategy()).prop_map(|(i, l)| Event::NodeLabels(i, l)),
        1 => (0..NODES.len(), 0u8..4).prop_map(|(i, a)| Event::NodeAddress(i, a)),
        1 => (0..NODES.len()).prop_map(Event::NodeDelete),
        1 => any::<bool>().prop_map(Event::Interfaces),
    ]
}

/// The namespaces events name: the generated ones and one no object
/// describes until an event gives it labels.
fn namespace(i: usize) -> String {
    NAMESPACES.get(i).map_or("w".to_string(), |n| n.to_string())
}

struct World {
    c: Cluster,
    eng: Incremental,
    net: NodeNet,
    interfaces: bool,
    added: usize,
}

impl World {
    fn nth_pod(&self, i: usize) -> Option<Pod> {
        let n = self.c.pod_count();
        (n > 0).then(|| self.c.pods().nth(i % n).cloned()).flatten()
    }

    /// Applies a change the way the agent does: what the object fed
    /// before, the change, what it feeds after.
    fn change(&mut self, key: ObjectKey, f: impl FnOnce(&mut Cluster) -> bool) {
        let before = self.eng.mark(&self.c, &key);
        if f(&mut self.c) {
            self.eng.note(before);
            let after = self.eng.mark(&self.c, &key);
            self.eng.note(after);
        }
    }

    fn put_pod(&mut self, p: Pod) {
        let key = ObjectKey::Pod {
            namespace: p.namespace.clone(),
            name: p.name.clone(),
        };
        self.change(key, |c| c.apply_pod(p));
    }

    fn apply(&mut self, e: Event) {
        match e {
            Event::PodLabels(i, labels) => {
                if let Some(mut p) = self.nth_pod(i) {
                    p.labels = labels;
                    self.put_pod(p);
                }
            }
            Event::LocalPodLabel(i, key, value) => {
                let local: Vec<Pod> = self
                    .c
                    .pods()
                    .filter(|p| p.node_name.as_deref() == Some(NODE))
                    .cloned()
                    .collect();
                if let Some(mut p) = (!local.is_empty()).then(|| local[i % local.len()].clone()) {
                    match value {
                        Some(v) => p.labels.insert(key, v),
                        None => p.labels.remove(&key),
                    };
                    self.put_pod(p);
                }
            }
            Event::PodAddress(i, a) => {
                if let Some(mut p) = self.nth_pod(i) {
                    p.ips.retain(|ip| ip.is_ipv6());
                    p.ips
                        .insert(0, format!("10.0.1.{}", 200 + a).parse().expect("ip"));
                    self.put_pod(p);
                }
            }
            Event::PodNode(i, n) => {
                if let Some(mut p) = self.nth_pod(i) {
                    p.node_name = Some(NODES[n].to_string());
                    self.put_pod(p);
                }
            }
            Event::PodPorts(i, ports) => {
                if let Some(mut p) = self.nth_pod(i) {
                    p.named_ports = named_ports(&ports);
                    self.put_pod(p);
                }
            }
            Event::PodHostNetwork(i) => {
                if let Some(mut p) = self.nth_pod(i) {
                    p.host_network = !p.host_network;
                    self.put_pod(p);
                }
            }
            Event::PodDelete(i) => {
                if let Some(p) = self.nth_pod(i) {
                    let key = ObjectKey::Pod {
                        namespace: p.namespace.clone(),
                        name: p.name.clone(),
                    };
                    self.change(key, |c| c.delete_pod(&p.namespace, &p.name));
                }
            }
            Event::PodAdd {
                namespace: ns,
                labels,
                node,
                address,
            } => {
                self.added += 1;
                let ip: IpAddr = format!("10.0.1.{}", 200 + address).parse().expect("ip");
                let v6: IpAddr = format!("fd00::1{:02x}", 0x80 + self.added)
                    .parse()
                    .expect("ip");
                self.put_pod(Pod {
                    namespace: namespace(ns),
                    name: format!("q{}", self.added),
                    labels,
                    node_name: Some(NODES[node].to_string()),
                    host_network: false,
                    ips: vec![ip, v6],
                    named_ports: vec![NamedPort {
                        name: PORT_NAMES[0].to_string(),
                        protocol: Protocol::Tcp,
                        port: PORTS[self.added % PORTS.len()],
                    }],
                    terminal: false,
                });
            }
            Event::NamespaceLabels(i, mut labels) => {
                let name = namespace(i);
                labels.insert(NAMESPACE_NAME_LABEL.into(), name.clone());
                self.change(ObjectKey::Namespace(name.clone()), |c| {
                    c.apply_namespace(Namespace { name, labels })
                });
            }
            Event::NamespaceDelete(i) => {
                let name = namespace(i);
                self.change(ObjectKey::Namespace(name.clone()), |c| {
                    c.delete_namespace(&name)
                });
            }
            Event::PolicyPut(i, mut p) => {
                p.name = format!("pol{i}");
                let key = ObjectKey::Policy {
                    namespace: p.namespace.clone(),
                    name: p.name.clone(),
                };
                self.change(key, |c| c.apply_policy(p));
            }
            Event::PolicyDelete(i) => {
                let name = format!("pol{i}");
                let nss: Vec<String> = self
                    .c
                    .policies()
                    .filter(|q| q.name == name)
                    .map(|q| q.namespace.clone())
                    .collect();
                for ns in nss {
                    let key = ObjectKey::Policy {
                        namespace: ns.clone(),
                        name: name.clone(),
                    };
                    self.change(key, |c| c.delete_policy(&ns, &name));
                }
            }
            Event::AdminPut(i, mut p) => {
                p.name = if p.kind == AdminKind::BaselineAdminNetworkPolicy {
                    "default".into()
                } else {
                    format!("adm{i}")
                };
                let key = ObjectKey::Admin {
                    kind: p.kind,
                    name: p.name.clone(),
                };
                self.change(key, |c| c.apply_admin_policy(p));
            }
            Event::AdminDelete(i) => {
                let victim = self
                    .c
                    .admin_policies()
                    .nth(i)
                    .map(|p| (p.kind, p.name.clone()));
                if let Some((kind, name)) = victim {
                    let key = ObjectKey::Admin {
                        kind,
                        name: name.clone(),
                    };
                    self.change(key, |c| c.delete_admin_policy(kind, &name));
                }
            }
            Event::NodeLabels(i, labels) => {
                let (v4, v6) = NODE_IPS[i];
                let n = Node {
                    name: NODES[i].to_string(),
                    labels,
                    ips: vec![v4.parse().expect("ip"), v6.parse().expect("ip")],
                };
                self.change(ObjectKey::Node(n.name.clone()), |c| c.apply_node(n));
            }
            Event::NodeAddress(i, a) => {
                let labels = self
                    .c
                    .node_objects()
                    .find(|n| n.name == NODES[i])
                    .map(|n| n.labels.clone())
                    .unwrap_or_default();
                let n = Node {
                    name: NODES[i].to_string(),
                    labels,
                    ips: vec![
                        format!("10.0.1.{}", 200 + a).parse().expect("ip"),
                        NODE_IPS[i].1.parse().expect("ip"),
                    ],
                };
                self.change(ObjectKey::Node(n.name.clone()), |c| c.apply_node(n));
            }
            Event::NodeDelete(i) => {
                let name = NODES[i].to_string();
                self.change(ObjectKey::Node(name.clone()), |c| c.delete_node(&name));
            }
            Event::Interfaces(on) => {
                self.interfaces = on;
                self.net = net_for(&self.c, on);
            }
        }
    }
}

/// An interface per pod name (pods of one name in several namespaces
/// share it, as bridged pods share a port).
fn net_for(c: &Cluster, on: bool) -> NodeNet {
    let mut net = NodeNet::default();
    if on {
        for p in c.pods() {
            net.pod_interfaces.insert(
                format!("{}/{}", p.namespace, p.name),
                format!("v{}", p.name),
            );
        }
        // Pods added later have no interface until the map is relearnt;
        // meanwhile the bridge ports nobody is bound to name their
        // addresses.
        net.bridge_ports = ["vfree0", "vfree1"].map(String::from).into();
        if let Some(p) = c.pods().next() {
            net.bridge_ports.insert(format!("v{}", p.name));
        }
    }
    net
}

/// Node-wide logging as the agent's `--log`, `--log-group` and
/// `--log-rate` give it (policies carry their own annotations too).
fn audit_strategy() -> impl Strategy<Value = AuditOptions> {
    (
        prop::sample::select(vec![LogMode::Off, LogMode::Deny, LogMode::All]),
        prop::sample::select(vec![crate::audit::DEFAULT_GROUP, 7, u16::MAX]),
        prop::sample::select(vec![crate::audit::DEFAULT_RATE, 1, 1000]),
    )
        .prop_map(|(log, group, rate)| AuditOptions {
            log,
            group,
            rate,
            ..AuditOptions::default()
        })
}

fn check_sequence(
    c: Cluster,
    batches: Vec<Vec<Event>>,
    audit: AuditOptions,
) -> Result<(), TestCaseError> {
    let compile_node =
        |c: &Cluster, node: &str, net: &NodeNet| compile_node_with(c, node, net, &audit);
    let mut w = World {
        net: net_for(&c, true),
        c,
        eng: Incremental::with_audit(NODE, audit.clone()),
        interfaces: true,
        added: 0,
    };
    let t = w.eng.update(&w.c, &w.net);
    prop_assert!(t.all, "the first update compiles everything");
    prop_assert_eq!(w.eng.ruleset(), &compile_node(&w.c, NODE, &w.net));
    let mut kernel = FakeKernel::with(w.eng.ruleset().clone());
    for (step, batch) in batches.into_iter().enumerate() {
        let what = format!("{batch:?}");
        for e in batch {
            w.apply(e);
        }
        let touched = w.eng.update(&w.c, &w.net);
        let full = compile_node(&w.c, NODE, &w.net);
        if w.eng.ruleset() != &full {
            let tx = crate::diff::diff(&full, w.eng.ruleset());
            return Err(TestCaseError::fail(format!(
                "step {step} ({what}): incremental != full; to fix it: {tx:#?}"
            )));
        }
        let before = kernel.table.clone().unwrap_or_default();
        let tx = diff_touched(w.eng.ruleset(), &before, &touched);
        kernel
            .apply(&tx)
            .map_err(|e| TestCaseError::fail(format!("step {step} ({what}): {e}\n{tx:#?}")))?;
        prop_assert_eq!(
            kernel.table.as_ref(),
            Some(&full),
            "step {} ({})",
            step,
            what
        );
        prop_assert_eq!(
            tx,
            crate::diff::diff(&full, &before),
            "step {} ({}): touched diff != whole diff",
            step,
            what
        );
    }
    Ok(())
}

proptest! {
    // A few seconds in a debug build: each case is up to 25 updates of a
    // cluster of up to 8 pods, each checked against a full compile.
    #![proptest_config(ProptestConfig::with_cases(150))]
    #[test]
    fn incremental_equals_full_compile_after_every_update(
        c in cluster_strategy(),
        batches in proptest::collection::vec(
            proptest::collection::vec(event_strategy(), 1..4),
            1..25,
        ),
        audit in audit_strategy(),
    ) {
        check_sequence(c, batches, audit)?;
    }
}

/// The touched objects of a local pod's relabel are its own chains and
/// the sets at its address, not the table.
#[test]
fn a_peer_pod_touches_only_the_sets_at_its_address() {
    let text = r#"
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: x, labels: {app: web}}
spec: {nodeName: node-1}
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: other, namespace: x, labels: {app: other}}
spec: {nodeName: node-1}
status: {podIP: 10.0.0.3}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: x}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{podSelector: {matchLabels: {app: client}}}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: other, namespace: x}
spec:
  podSelector: {matchLabels: {app: other}}
  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}]}]
"#;
    let loaded = crate::manifest::parse("t.yaml", text);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let mut c = Cluster::from_objects(loaded.objects);
    let net = NodeNet::default();
    let mut eng = Incremental::new(NODE);
    eng.update(&c, &net);
    let key = ObjectKey::Pod {
        namespace: "x".into(),
        name: "client".into(),
    };
    let before = eng.mark(&c, &key);
    c.apply_pod(Pod {
        namespace: "x".into(),
        name: "client".into(),
        labels: [("app".to_string(), "client".to_string())].into(),
        node_name: Some("node-2".into()),
        host_network: false,
        ips: vec!["10.0.0.2".parse().expect("ip")],
        named_ports: vec![],
        terminal: false,
    });
    eng.note(before);
    let after = eng.mark(&c, &key);
    eng.note(after);
    let t = eng.update(&c, &net);
    assert!(!t.all);
    assert!(t.chains.is_empty(), "{t:?}");
    assert_eq!(t.sets.len(), 1, "only the set selecting the client: {t:?}");
    let set = t.sets.first().expect("one set");
    assert_eq!(eng.ruleset(), &compile_node(&c, NODE, &net));
    assert!(eng.ruleset().sets[set]
        .elements
        .contains(&crate::ir::Element::Addr("10.0.0.2".parse().expect("ip"))));
}

/// Ports named on a pod resolve into a set of that pod's own; the pod
/// renumbering them changes the set, although its name stays.
#[test]
fn renumbered_named_ports_recompute_the_pods_own_port_set() {
    let text = r#"
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: x, labels: {app: web}}
spec:
  nodeName: node-1
  containers: [{name: c, ports: [{name: http, containerPort: 80}, {name: metrics, containerPort: 9000}]}]
status: {podIP: 10.0.0.1}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: x}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{ports: [{port: http}, {port: metrics}]}]
"#;
    let loaded = crate::manifest::parse("t.yaml", text);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let mut c = Cluster::from_objects(loaded.objects);
    let net = NodeNet::default();
    let mut eng = Incremental::new(NODE);
    eng.update(&c, &net);
    let own_sets = |rs: &crate::ir::Ruleset| -> Vec<String> {
        rs.sets
            .keys()
            .filter(|n| n.starts_with("tcp_"))
            .cloned()
            .collect()
    };
    assert_eq!(own_sets(eng.ruleset()).len(), 1, "{:?}", eng.ruleset().sets);
    let key = ObjectKey::Pod {
        namespace: "x".into(),
        name: "web".into(),
    };
    let mut p = c.pod("x", "web").expect("pod").clone();
    for np in &mut p.named_ports {
        np.port += 1;
    }
    let before = eng.mark(&c, &key);
    assert!(c.apply_pod(p));
    eng.note(before);
    let after = eng.mark(&c, &key);
    eng.note(after);
    eng.update(&c, &net);
    assert_eq!(eng.ruleset(), &compile_node(&c, NODE, &net));
}

/// Four local pods in two namespaces, NetworkPolicies selecting two of
/// them, an admin policy whose subject is one namespace, one whose
/// subject is the namespaces labelled `team: blue` (none yet), and two
/// Nodes (one an admin peer).
const NARROW: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: cache, namespace: x, labels: {app: cache}}
spec: {nodeName: node-1}
status: {podIP: 10.0.0.4}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: cache, namespace: x}
spec:
  podSelector: {matchLabels: {app: cache}}
  ingress: [{from: [{podSelector: {}}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: x, labels: {app: web}}
spec: {nodeName: node-1}
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: x, labels: {app: db}}
spec: {nodeName: node-1}
status: {podIP: 10.0.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: api, namespace: y, labels: {app: api}}
spec: {nodeName: node-1}
status: {podIP: 10.0.0.3}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db, namespace: x}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}]}]
---
apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata: {name: y-to-nodes}
spec:
  priority: 5
  subject: {namespaces: {matchLabels: {kubernetes.io/metadata.name: y}}}
  egress:
  - {action: Allow, to: [{nodes: {matchLabels: {zone: a}}}]}
---
apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata: {name: blue-from-red}
spec:
  priority: 7
  subject: {namespaces: {matchLabels: {team: blue}}}
  ingress:
  - {action: Deny, from: [{namespaces: {matchLabels: {team: red}}}]}
---
apiVersion: v1
kind: Node
metadata: {name: n1, labels: {zone: a}}
status: {addresses: [{type: InternalIP, address: 172.18.0.2}]}
---
apiVersion: v1
kind: Node
metadata: {name: n2, labels: {zone: b}}
status: {addresses: [{type: InternalIP, address: 172.18.0.3}]}
"#;

/// Applies `change` as the agent does and returns what the update
/// touched, after checking the result against the full compile.
fn narrow_step(
    c: &mut Cluster,
    eng: &mut Incremental,
    key: ObjectKey,
    change: impl FnOnce(&mut Cluster) -> bool,
) -> crate::diff::Touched {
    let before = eng.mark(c, &key);
    assert!(change(c), "the step changes the cluster");
    eng.note(before);
    let after = eng.mark(c, &key);
    eng.note(after);
    let net = NodeNet::default();
    let t = eng.update(c, &net);
    assert_eq!(eng.ruleset(), &compile_node(c, NODE, &net));
    assert!(!t.all, "{t:?}");
    t
}

fn narrow_cluster() -> (Cluster, Incremental) {
    let loaded = crate::manifest::parse("t.yaml", NARROW);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let c = Cluster::from_objects(loaded.objects);
    let mut eng = Incremental::new(NODE);
    eng.update(&c, &NodeNet::default());
    (c, eng)
}

/// A NetworkPolicy recompiles the pods it selects, before and after the
/// change, and not the other pods of its namespace.
#[test]
fn a_policy_touches_only_the_chains_of_the_pods_it_selects() {
    let (mut c, mut eng) = narrow_cluster();
    let mut pol = c
        .policies_in("x")
        .find(|p| p.name == "db")
        .expect("policy")
        .clone();
    pol.pod_selector = crate::selector::Selector {
        match_labels: [("app".to_string(), "web".to_string())].into(),
        match_expressions: vec![],
    };
    let key = ObjectKey::Policy {
        namespace: "x".into(),
        name: "db".into(),
    };
    let t = narrow_step(&mut c, &mut eng, key.clone(), |c| c.apply_policy(pol));
    assert!(
        t.chains.contains("ing_x_db") && t.chains.contains("ing_x_web"),
        "{t:?}"
    );
    assert!(
        t.chains
            .iter()
            .all(|n| n.ends_with("_x_db") || n.ends_with("_x_web")),
        "{t:?}"
    );
    let t = narrow_step(&mut c, &mut eng, key, |c| c.delete_policy("x", "db"));
    assert!(t.chains.iter().all(|n| n.ends_with("_x_web")), "{t:?}");
}

/// An admin policy recompiles its subjects' chains only; a Node changes
/// the elements at its addresses and no chain.
#[test]
fn admin_policies_and_nodes_touch_only_what_depends_on_them() {
    let (mut c, mut eng) = narrow_cluster();
    let mut adm = c
        .admin_policies()
        .find(|p| p.name == "y-to-nodes")
        .expect("admin policy")
        .clone();
    adm.priority = Some(6);
    let key = ObjectKey::Admin {
        kind: adm.kind,
        name: adm.name.clone(),
    };
    let t = narrow_step(&mut c, &mut eng, key, |c| c.apply_admin_policy(adm));
    assert!(t.chains.contains("egr_y_api"), "{t:?}");
    // The subject's chains, and the shared tier chain only it goes to.
    assert!(
        t.chains
            .iter()
            .all(|n| n.ends_with("_y_api") || crate::admin::compile::is_tier_chain(n)),
        "{t:?}"
    );

    let node = |zone: &str| Node {
        name: "n2".into(),
        labels: [("zone".to_string(), zone.to_string())].into(),
        ips: vec!["172.18.0.3".parse().expect("ip")],
    };
    let t = narrow_step(&mut c, &mut eng, ObjectKey::Node("n2".into()), |c| {
        c.apply_node(node("a"))
    });
    assert!(t.chains.is_empty(), "{t:?}");
    assert_eq!(t.sets.len(), 1, "the node peer set: {t:?}");
    let set = t.sets.first().expect("set");
    assert!(eng.ruleset().sets[set]
        .elements
        .contains(&crate::ir::Element::Addr("172.18.0.3".parse().expect("ip"))));
    let t = narrow_step(&mut c, &mut eng, ObjectKey::Node("n2".into()), |c| {
        c.delete_node("n2")
    });
    assert!(t.chains.is_empty() && t.sets.len() == 1, "{t:?}");
}

/// A namespace relabel recompiles only the local pods whose admin
/// subjects change; as a peer it changes set elements, not chains.
#[test]
fn a_namespace_relabel_touches_only_the_chains_whose_admin_subjects_change() {
    let (mut c, mut eng) = narrow_cluster();
    let relabel = |name: &str, team: &str| {
        let ns = Namespace {
            name: name.to_string(),
            labels: [
                ("kubernetes.io/metadata.name".to_string(), name.to_string()),
                ("team".to_string(), team.to_string()),
            ]
            .into(),
        };
        move |c: &mut Cluster| c.apply_namespace(ns)
    };
    let key = |name: &str| ObjectKey::Namespace(name.to_string());
    // No admin subject selects x either way: no chain is recompiled.
    let t = narrow_step(&mut c, &mut eng, key("x"), relabel("x", "green"));
    assert!(t.chains.is_empty(), "{t:?}");
    // x's pods become subjects of blue-from-red; y's pod is untouched.
    let t = narrow_step(&mut c, &mut eng, key("x"), relabel("x", "blue"));
    for pod in ["web", "db", "cache"] {
        assert!(t.chains.contains(&format!("ing_x_{pod}")), "{pod}: {t:?}");
    }
    assert!(
        t.chains
            .iter()
            .all(|n| n.contains("_x_") || crate::admin::compile::is_tier_chain(n)),
        "{t:?}"
    );
    // y as a peer of blue-from-red: its pod's address enters the peer set;
    // y's own subject (by name) is unchanged, so no chain is recompiled.
    let t = narrow_step(&mut c, &mut eng, key("y"), relabel("y", "red"));
    assert!(t.chains.is_empty(), "{t:?}");
    assert!(
        t.sets.iter().any(|s| eng.ruleset().sets[s]
            .elements
            .contains(&crate::ir::Element::Addr("10.0.0.3".parse().expect("ip")))),
        "{t:?}"
    );
}

/// A local pod's relabel that no selector of its own notices keeps its
/// chains and only recomputes the sets at its address; one that enters a
/// policy's selector recompiles its chains alone. Neither redoes the
/// `rel_` and source validation chains: only a local pod's name and
/// addresses feed those, and redoing them looked at every pod.
#[test]
fn a_local_relabel_recompiles_the_pods_chains_only_when_its_selections_change() {
    let (mut c, mut eng) = narrow_cluster();
    let key = ObjectKey::Pod {
        namespace: "x".into(),
        name: "web".into(),
    };
    let relabel = |c: &Cluster, labels: &[(&str, &str)]| {
        let mut p = c.pod("x", "web").expect("pod").clone();
        p.labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |c: &mut Cluster| c.apply_pod(p)
    };
    let change = relabel(&c, &[("app", "web"), ("version", "2")]);
    let t = narrow_step(&mut c, &mut eng, key.clone(), change);
    assert_eq!(
        eng.work(),
        &Work {
            units_kept: 1,
            addresses: 1,
            ..Work::default()
        }
    );
    assert!(t.chains.is_empty(), "{t:?}");

    // Now `cache` selects it, and `db`'s peer set loses it.
    let change = relabel(&c, &[("app", "cache")]);
    let t = narrow_step(&mut c, &mut eng, key.clone(), change);
    assert_eq!(
        eng.work(),
        &Work {
            units: 1,
            addresses: 1,
            ..Work::default()
        }
    );
    assert!(t.chains.contains("ing_x_web"), "{t:?}");
    assert!(
        t.chains.iter().all(|n| n.ends_with("_x_web")),
        "its own chains only: {t:?}"
    );
    assert!(!t.sets.is_empty(), "{t:?}");

    // A new address is what the `rel_` chains follow.
    let mut p = c.pod("x", "web").expect("pod").clone();
    p.ips = vec!["10.0.0.9".parse().expect("ip")];
    let t = narrow_step(&mut c, &mut eng, key, |c| c.apply_pod(p));
    assert!(eng.work().local_chains, "{:?}", eng.work());
    let rel = crate::related::chain_name(&"10.0.0.9".parse().expect("ip"));
    assert!(t.chains.contains(&rel), "{t:?}");
}

/// A policy whose peers are pods of its own namespace, new on the node,
/// makes a new set: finding its pods lists that namespace's pods alone,
/// and no namespace is indexed by label (which, at 10,000 namespaces, was
/// most of a local pod's relabel). A namespace selector by name needs no
/// index either; one by another label does.
#[test]
fn a_new_set_of_own_namespace_peers_lists_that_namespace_alone() {
    let (mut c, mut eng) = narrow_cluster();
    // Each on its own port: rules with the same ports share one set.
    let policy = |name: &str, peer: &str, port: u16| {
        let yaml = format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
             metadata: {{name: {name}, namespace: x}}\n\
             spec:\n  podSelector: {{matchLabels: {{app: web}}}}\n  \
             ingress: [{{from: [{peer}], ports: [{{port: {port}}}]}}]\n"
        );
        let loaded = crate::manifest::parse("t.yaml", &yaml);
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        match loaded.objects.into_iter().next() {
            Some(crate::Object::Policy(p)) => p,
            other => panic!("not a policy: {other:?}"),
        }
    };
    let key = |name: &str| ObjectKey::Policy {
        namespace: "x".into(),
        name: name.into(),
    };
    let own = policy("web-from-db", "{podSelector: {matchLabels: {app: db}}}", 81);
    let t = narrow_step(&mut c, &mut eng, key("web-from-db"), |c| {
        c.apply_policy(own)
    });
    assert!(t.chains.contains("ing_x_web"), "{t:?}");
    assert_eq!(
        eng.work(),
        &Work {
            units: 1,
            pods_listed: c.pods_in("x").count(),
            ..Work::default()
        }
    );
    let other = policy(
        "web-from-red",
        "{namespaceSelector: {matchLabels: {team: red}}}",
        82,
    );
    narrow_step(&mut c, &mut eng, key("web-from-red"), |c| {
        c.apply_policy(other)
    });
    assert_eq!(
        eng.work().namespaces_indexed,
        c.namespaces_with_pods().count()
    );
    // A namespace selector by name is answered by looking the name up.
    let named = policy(
        "web-from-y",
        "{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}}",
        83,
    );
    narrow_step(&mut c, &mut eng, key("web-from-y"), |c| {
        c.apply_policy(named)
    });
    assert_eq!(
        eng.work(),
        &Work {
            units: 1,
            pods_listed: c.pods_in("y").count(),
            ..Work::default()
        }
    );
}

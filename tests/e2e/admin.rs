//! Admin network policies through the kernel: the network-policy-api
//! conformance scenarios, transcribed in our own words, for both API
//! generations (ClusterNetworkPolicy v1alpha2 with tiers Admin and
//! Baseline; AdminNetworkPolicy and BaselineAdminNetworkPolicy v1alpha1),
//! plus four cases showing how the tiers meet NetworkPolicy.
//!
//! The model is upstream's: four house namespaces with two pods each,
//! spread over both nodes, serving TCP 80 (named `web`) and 8080, UDP 53
//! (named `dns`) and 5353, SCTP 9003 and 9005; one more namespace with a
//! hostNetwork pod on each node, whose servers are the node's own.
//!
//! Every scenario is one table entry of steps. Policies are written once,
//! in the v1alpha2 shape, and rendered for the API generation under test
//! (`render`); the steps that change a policy in place (swap two rules,
//! change a priority or an action, replace ports, insert a rule, delete a
//! policy, relabel a namespace) edit that one document. A `Check`:
//!
//! 1. holds upstream's expected verdicts (`Poke`s, each in IPv4 and
//!    IPv6) against the compiler's evaluator, which works from the model
//!    alone;
//! 2. programs both nodes while a sample of flows whose verdict the change
//!    does not touch is probed continuously (none may flip, see
//!    `LiveProbes`);
//! 3. probes the whole matrix of the scenario's protocols (pod to pod,
//!    and pod to node where nodes serve) in both families, SCTP by raw
//!    INIT packets, and compares it with the evaluator cell by cell, which
//!    covers every poke too.

use crate::cluster::{labels, observe_between_within, ServedPort, SimCluster};
use crate::oracle;
use crate::probe::{self, spawn_in, Probe, Proto};
use crate::sctp::{send_inits_tagged, InitCell};
use policy_compiler::model::Protocol;
use policy_compiler::Endpoint;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use Protocol::{Sctp, Tcp, Udp};

/// The API generation a scenario's policies are written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    /// ClusterNetworkPolicy, tiers Admin and Baseline.
    V1alpha2,
    /// AdminNetworkPolicy and BaselineAdminNetworkPolicy.
    V1alpha1,
}

/// House namespaces and the name stem of their two pods.
const HOUSES: [(&str, &str); 4] = [
    ("gryffindor", "harry-potter"),
    ("slytherin", "draco-malfoy"),
    ("hufflepuff", "cedric-diggory"),
    ("ravenclaw", "luna-lovegood"),
];
/// The namespace of the hostNetwork pods, one per node.
const HOST_NS: &str = "forbidden-forrest";
const TCP_PORTS: [u16; 2] = [80, 8080];
const UDP_PORTS: [u16; 2] = [53, 5353];
const SCTP_PORTS: [u16; 2] = [9003, 9005];
/// What the hostNetwork pods (the nodes) serve.
const NODE_TCP: [u16; 2] = [36363, 36364];
const NODE_UDP: [u16; 2] = [34345, 34346];

const G0: &str = "gryffindor/harry-potter-0";
const G1: &str = "gryffindor/harry-potter-1";
const S0: &str = "slytherin/draco-malfoy-0";
const S1: &str = "slytherin/draco-malfoy-1";
const H0: &str = "hufflepuff/cedric-diggory-0";
const H1: &str = "hufflepuff/cedric-diggory-1";
const R0: &str = "ravenclaw/luna-lovegood-0";
const R1: &str = "ravenclaw/luna-lovegood-1";
/// The hostNetwork pod on node2.
const C1: &str = "forbidden-forrest/centaur-1";

/// One expected verdict: from, to, protocol, port, allowed.
type Poke = (&'static str, &'static str, Protocol, u16, bool);

/// What a scenario probes, beyond what its pokes name.
#[derive(Clone, Copy, Debug)]
pub struct Probes {
    pub tcp: bool,
    pub udp: bool,
    pub sctp: bool,
    /// Nodes serve (TCP, UDP, SCTP) and every pod probes them too.
    pub nodes: bool,
}

const TCP_ONLY: Probes = Probes {
    tcp: true,
    udp: false,
    sctp: false,
    nodes: false,
};
const UDP_ONLY: Probes = Probes {
    tcp: false,
    udp: true,
    sctp: false,
    nodes: false,
};
const SCTP_ONLY: Probes = Probes {
    tcp: false,
    udp: false,
    sctp: true,
    nodes: false,
};
const ALL_PODS: Probes = Probes {
    tcp: true,
    udp: true,
    sctp: true,
    nodes: false,
};
const ALL_AND_NODES: Probes = Probes {
    tcp: true,
    udp: true,
    sctp: true,
    nodes: true,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    Admin,
    Baseline,
}

#[derive(Clone, Copy, Debug)]
pub enum Dir {
    In,
    Out,
}

impl Dir {
    fn field(self) -> &'static str {
        match self {
            Dir::In => "ingress",
            Dir::Out => "egress",
        }
    }
}

/// The rule ladder the per-protocol scenarios share, toward (or from)
/// three namespaces: `all` gets Accept, Deny and (admin tier) Pass with no
/// ports, in that order; `closed` gets Deny then (admin tier) Pass on
/// `closed_ports`; `open` gets Accept on `open_ports`, then Deny on
/// everything. The order is what the rule-swap steps exercise.
#[derive(Clone, Copy, Debug)]
pub struct Rungs {
    pub all: &'static str,
    pub closed: &'static str,
    pub closed_ports: &'static [(Protocol, u16)],
    pub open: &'static str,
    pub open_ports: &'static [(Protocol, u16)],
}

/// A policy document, in the v1alpha2 shape (or a NetworkPolicy).
#[derive(Clone, Copy, Debug)]
pub enum Doc {
    /// A policy of rule ladders whose subject is one namespace.
    Ladder {
        tier: Tier,
        name: &'static str,
        priority: u32,
        subject: &'static str,
        ingress: Option<Rungs>,
        egress: Option<Rungs>,
    },
    /// Any document, as YAML.
    Yaml(&'static str),
}

type Pairs = &'static [(&'static str, &'static str)];

/// One step of a scenario. Policies are named by `metadata.name`
/// (NetworkPolicies by `namespace/name`).
#[derive(Clone, Copy, Debug)]
pub enum Step {
    Put(Doc),
    Delete(&'static str),
    /// Swaps two rules of one direction.
    Swap(&'static str, Dir, usize, usize),
    /// Swaps two rules in both directions.
    SwapBoth(&'static str, usize, usize),
    Priority(&'static str, u32),
    /// Sets the action of one rule (v1alpha2 spelling).
    Action(&'static str, Dir, usize, &'static str),
    /// Replaces the ports of one rule by one named port.
    NamedPort(&'static str, Dir, usize, &'static str),
    /// Inserts, as rule 0 of the egress rules, an Accept toward the
    /// addresses (both families) of these pods, as `networks` CIDRs.
    AcceptAddressesFirst(&'static str, &'static [&'static str]),
    NamespaceLabels(&'static str, Pairs),
    /// Programs both nodes (under live probes when they were programmed
    /// before), checks the pokes against the evaluator, probes the whole
    /// matrix against the evaluator.
    Check(&'static str, &'static [Poke]),
}

use Step::*;

pub struct Scenario {
    /// The test function's name (the same in both API modules).
    pub test: &'static str,
    pub probes: Probes,
    pub steps: Vec<Step>,
}

/// A namespace peer or subject by its name label.
fn ns_selector(ns: &str) -> Value {
    json!({"matchLabels": {"kubernetes.io/metadata.name": ns}})
}

fn protocol_entry(proto: Protocol, port: u16) -> Value {
    let key = match proto {
        Tcp => "tcp",
        Udp => "udp",
        Sctp => "sctp",
    };
    json!({ key: {"destinationPort": {"number": port}} })
}

/// The rules of one ladder (see [`Rungs`]).
fn ladder_rules(tier: Tier, dir: Dir, r: &Rungs) -> Vec<Value> {
    let peers = match dir {
        Dir::In => "from",
        Dir::Out => "to",
    };
    let rule = |action: &str, ns: &str, what: &str, ports: &[(Protocol, u16)]| {
        let mut v = json!({
            "name": format!("{}-{peers}-{ns}-{what}", action.to_lowercase()),
            "action": action,
            peers: [{"namespaces": ns_selector(ns)}],
        });
        if !ports.is_empty() {
            v["protocols"] = ports.iter().map(|&(p, n)| protocol_entry(p, n)).collect();
        }
        v
    };
    let admin = tier == Tier::Admin;
    let mut v = vec![
        rule("Accept", r.all, "all", &[]),
        rule("Deny", r.all, "all", &[]),
    ];
    if admin {
        v.push(rule("Pass", r.all, "all", &[]));
    }
    v.push(rule("Deny", r.closed, "ports", r.closed_ports));
    if admin {
        v.push(rule("Pass", r.closed, "ports", r.closed_ports));
    }
    v.push(rule("Accept", r.open, "ports", r.open_ports));
    v.push(rule("Deny", r.open, "rest", &[]));
    v
}

impl Doc {
    fn to_value(self) -> Value {
        match self {
            Doc::Ladder {
                tier,
                name,
                priority,
                subject,
                ingress,
                egress,
            } => {
                let mut spec = json!({
                    "tier": match tier { Tier::Admin => "Admin", Tier::Baseline => "Baseline" },
                    "priority": priority,
                    "subject": {"namespaces": ns_selector(subject)},
                });
                if let Some(r) = ingress {
                    spec["ingress"] = ladder_rules(tier, Dir::In, &r).into();
                }
                if let Some(r) = egress {
                    spec["egress"] = ladder_rules(tier, Dir::Out, &r).into();
                }
                json!({
                    "apiVersion": "policy.networking.k8s.io/v1alpha2",
                    "kind": "ClusterNetworkPolicy",
                    "metadata": {"name": name},
                    "spec": spec,
                })
            }
            Doc::Yaml(text) => policy_compiler::manifest::documents(text)
                .expect("scenario YAML parses")
                .into_iter()
                .next()
                .expect("one document"),
        }
    }
}

/// The key a document is stored and named by in steps.
fn key_of(doc: &Value) -> String {
    let name = doc["metadata"]["name"].as_str().expect("metadata.name");
    match doc["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    }
}

/// A v1alpha2 document as the API generation under test writes it:
/// v1alpha1 splits the tiers into two kinds (the baseline one a
/// singleton without priority), spells Accept as Allow, and lists ports
/// as `portNumber` / `portRange` / `namedPort` with the protocol inside.
pub fn render(doc: &Value, api: Api) -> Value {
    if api == Api::V1alpha2 || doc["kind"] != "ClusterNetworkPolicy" {
        return doc.clone();
    }
    let mut out = doc.clone();
    let spec = out["spec"].as_object_mut().expect("spec");
    let baseline = spec.remove("tier") == Some(json!("Baseline"));
    if baseline {
        spec.remove("priority");
    }
    for dir in ["ingress", "egress"] {
        let Some(rules) = spec.get_mut(dir).and_then(Value::as_array_mut) else {
            continue;
        };
        for rule in rules {
            let rule = rule.as_object_mut().expect("rule");
            if rule["action"] == "Accept" {
                rule.insert("action".into(), json!("Allow"));
            }
            if let Some(protocols) = rule.remove("protocols") {
                let ports: Vec<Value> = protocols
                    .as_array()
                    .expect("protocols")
                    .iter()
                    .map(v1alpha1_port)
                    .collect();
                rule.insert("ports".into(), ports.into());
            }
        }
    }
    out["apiVersion"] = json!("policy.networking.k8s.io/v1alpha1");
    out["kind"] = json!(if baseline {
        "BaselineAdminNetworkPolicy"
    } else {
        "AdminNetworkPolicy"
    });
    out
}

/// One v1alpha2 protocol entry as a v1alpha1 port.
fn v1alpha1_port(entry: &Value) -> Value {
    if let Some(name) = entry.get("destinationNamedPort") {
        return json!({"namedPort": name});
    }
    let (key, body) = entry
        .as_object()
        .and_then(|o| o.iter().next())
        .expect("one protocol");
    let protocol = key.to_uppercase();
    let port = &body["destinationPort"];
    if let Some(range) = port.get("range") {
        json!({"portRange": {"protocol": protocol, "start": range["start"], "end": range["end"]}})
    } else {
        json!({"portNumber": {"protocol": protocol, "port": port["number"]}})
    }
}

/// The house model: pods `<stem>-0` and `-1` of each house, labelled
/// with their house (and their pod name, as a StatefulSet does), placed
/// so that every house has a pod on each node and pods of one index are
/// not all on one node.
fn house_cluster(nodes_serve: bool) -> SimCluster {
    let mut served = Vec::new();
    let mut serve = |port: u16, protocol: &'static str, name: Option<&str>| {
        served.push(ServedPort {
            container: format!("serve-{}-{port}", protocol.to_lowercase()),
            name: name.map(str::to_string),
            port,
            protocol,
        })
    };
    serve(TCP_PORTS[0], "TCP", Some("web"));
    serve(TCP_PORTS[1], "TCP", None);
    serve(UDP_PORTS[0], "UDP", Some("dns"));
    serve(UDP_PORTS[1], "UDP", None);
    for p in SCTP_PORTS {
        serve(p, "SCTP", None);
    }
    let mut c = SimCluster::with_ports(false, served);
    let mut i = 0usize;
    for (house, stem) in HOUSES {
        c.add_namespace(house, labels(&[("conformance-house", house)]));
        for k in 0..2 {
            let node = if (i + i / 2) % 2 == 0 {
                "node1"
            } else {
                "node2"
            };
            let name = format!("{stem}-{k}");
            c.add_pod(
                house,
                &name,
                node,
                labels(&[
                    ("conformance-house", house),
                    ("statefulset.kubernetes.io/pod-name", &name),
                ]),
            );
            i += 1;
        }
    }
    c.add_namespace(HOST_NS, labels(&[("conformance-house", HOST_NS)]));
    for (k, n) in c.topo.nodes.clone().iter().enumerate() {
        c.extra_objects.push(format!(
            r#"apiVersion: v1
kind: Node
metadata: {{name: {name}, labels: {{kubernetes.io/os: linux, kubernetes.io/hostname: {name}}}}}
status:
  addresses: [{{type: InternalIP, address: {v4}}}, {{type: InternalIP, address: "{v6}"}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: centaur-{k}, namespace: {HOST_NS}, labels: {{conformance-house: {HOST_NS}}}}}
spec:
  nodeName: {name}
  hostNetwork: true
  containers: [{{name: c, image: registry.k8s.io/e2e-test-images/agnhost:2.53}}]
status:
  phase: Running
  podIP: {v4}
  podIPs: [{{ip: {v4}}}, {{ip: "{v6}"}}]
"#,
            name = n.name,
            v4 = n.fabric_v4,
            v6 = n.fabric_v6
        ));
    }
    if nodes_serve {
        c.serve_ports_on_nodes(&NODE_TCP, &NODE_UDP);
    }
    c
}

/// Observations by (source, target, v6, protocol, port).
type Seen = BTreeMap<(Target, Target, bool, Protocol, u16), bool>;
/// Observations and the cells that differ from the evaluator.
type Part = (Seen, Vec<String>);

/// First-pass wait of a TCP/UDP probe, so what a denied cell costs: an
/// answer between pods of two namespaces on this host comes within
/// milliseconds, and a cell expected open that looks closed is probed
/// again with the full retry timeout.
const FIRST_PASS: Duration = Duration::from_millis(250);
/// How long INITs are watched for after the burst is sent.
const SCTP_WINDOW: Duration = Duration::from_millis(350);

/// Where a probe goes: a pod (index) or a node (index).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Target {
    Pod(usize),
    Node(usize),
}

/// A scenario being run: the cluster and the policy documents (v1alpha2
/// shape) by key.
struct Run<'s> {
    c: SimCluster,
    api: Api,
    scenario: &'s Scenario,
    docs: BTreeMap<String, Value>,
    /// The manifests the nodes hold, once programmed.
    programmed: Option<Vec<(String, String)>>,
}

impl Run<'_> {
    fn doc(&mut self, key: &str) -> &mut Value {
        self.docs
            .get_mut(key)
            .unwrap_or_else(|| panic!("no policy {key} in scenario {}", self.scenario.test))
    }

    fn rules(&mut self, key: &str, dir: Dir) -> &mut Vec<Value> {
        self.doc(key)["spec"][dir.field()]
            .as_array_mut()
            .unwrap_or_else(|| panic!("{key} has no {} rules", dir.field()))
    }

    /// Writes the documents into the cluster's policy set, rendered for
    /// the API under test.
    fn sync_policies(&mut self) {
        self.c.clear_policies();
        for (key, doc) in &self.docs {
            let text = serde_json::to_string(&render(doc, self.api)).expect("serialize policy");
            self.c.policies.insert(key.clone(), text);
        }
    }

    fn target(&self, label: &str) -> Target {
        if let Some(k) = label
            .strip_prefix(HOST_NS)
            .and_then(|r| r.strip_prefix("/centaur-"))
        {
            return Target::Node(k.parse().expect("centaur index"));
        }
        let (ns, name) = label.split_once('/').expect("namespace/name");
        Target::Pod(self.c.pod_index(ns, name))
    }

    fn address(&self, t: Target, v6: bool) -> IpAddr {
        match t {
            Target::Pod(i) => {
                let p = &self.c.topo.pods[i];
                if v6 {
                    p.v6.into()
                } else {
                    p.v4.into()
                }
            }
            Target::Node(i) => {
                let n = &self.c.topo.nodes[i];
                if v6 {
                    n.fabric_v6.into()
                } else {
                    n.fabric_v4.into()
                }
            }
        }
    }

    fn endpoint(&self, t: Target, v6: bool) -> Endpoint {
        match t {
            Target::Pod(i) => Endpoint::pod(&self.c.pods[i].namespace, &self.c.pods[i].name),
            Target::Node(_) => Endpoint::Ip(self.address(t, v6)),
        }
    }

    fn step(&mut self, step: &Step) {
        match *step {
            Put(doc) => {
                let v = doc.to_value();
                self.docs.insert(key_of(&v), v);
            }
            Delete(key) => {
                self.docs
                    .remove(key)
                    .unwrap_or_else(|| panic!("no policy {key} to delete"));
            }
            Swap(key, dir, a, b) => self.rules(key, dir).swap(a, b),
            SwapBoth(key, a, b) => {
                self.rules(key, Dir::In).swap(a, b);
                self.rules(key, Dir::Out).swap(a, b);
            }
            Priority(key, p) => self.doc(key)["spec"]["priority"] = json!(p),
            Action(key, dir, i, action) => self.rules(key, dir)[i]["action"] = json!(action),
            NamedPort(key, dir, i, name) => {
                self.rules(key, dir)[i]["protocols"] = json!([{ "destinationNamedPort": name }])
            }
            AcceptAddressesFirst(key, pods) => {
                let mut cidrs = Vec::new();
                for pod in pods {
                    let t = self.target(pod);
                    cidrs.push(format!("{}/32", self.address(t, false)));
                    cidrs.push(format!("{}/128", self.address(t, true)));
                }
                let rule = json!({
                    "name": "accept-to-chosen-addresses",
                    "action": "Accept",
                    "to": [{"networks": cidrs}],
                });
                self.rules(key, Dir::Out).insert(0, rule);
            }
            NamespaceLabels(ns, pairs) => self.c.set_namespace_labels(ns, labels(pairs)),
            Check(what, pokes) => self.check(what, pokes),
        }
    }

    fn check(&mut self, what: &str, pokes: &[Poke]) {
        let t0 = Instant::now();
        let what = format!("{} ({:?}): {what}", self.scenario.test, self.api);
        self.sync_policies();
        let manifests = self.c.manifests();
        let model = oracle::Model::load(&manifests);
        self.check_pokes_against_evaluator(&model, &what, pokes);
        match self.programmed.take() {
            Some(before) => {
                let wrong = self.program_probed(&before, &model);
                assert!(
                    wrong.is_empty(),
                    "{what}: flows whose verdict the change keeps flipped while the nodes were reprogrammed:\n{}",
                    wrong.join("\n")
                );
            }
            None => {
                self.c.program();
            }
        }
        self.programmed = Some(manifests);
        let observed = self.probe_matrix(&model, &what, t0);
        // The matrix covered every poke; say so by name if one differs.
        for &(from, to, proto, port, allowed) in pokes {
            for v6 in [false, true] {
                let key = (self.target(from), self.target(to), v6, proto, port);
                let got = observed.get(&key).unwrap_or_else(|| {
                    panic!("{what}: the matrix does not probe {from} -> {to} {proto:?}/{port}")
                });
                assert_eq!(
                    *got, allowed,
                    "{what}: {from} -> {to} {proto:?}/{port} v6={v6}"
                );
            }
        }
    }

    /// Programs both nodes while [`LiveProbes`] probe the flows that the
    /// change from `before` (manifests) to `after` keeps; returns the flows
    /// that had a wrong sample.
    fn program_probed(
        &mut self,
        before: &[(String, String)],
        after: &oracle::Model,
    ) -> Vec<String> {
        let before = oracle::Model::load(before);
        let live = LiveProbes::start(self, &before, after);
        self.c.program();
        live.finish()
    }

    /// Upstream's verdicts against the evaluator: the independent check
    /// of the expected side.
    fn check_pokes_against_evaluator(&self, model: &oracle::Model, what: &str, pokes: &[Poke]) {
        let mut wrong = Vec::new();
        for &(from, to, proto, port, allowed) in pokes {
            let Target::Pod(src) = self.target(from) else {
                panic!("pokes start at pods")
            };
            for v6 in [false, true] {
                let dst = self.endpoint(self.target(to), v6);
                let d = model.decide(&self.c.pods[src], &dst, v6, proto, port);
                if d.allowed != allowed {
                    wrong.push(format!(
                        "{from} -> {to} {proto:?}/{port} {}: upstream expects {}, the evaluator says {} (egress {:?}, ingress {:?})",
                        if v6 { "IPv6" } else { "IPv4" },
                        verdict(allowed),
                        verdict(d.allowed),
                        d.egress,
                        d.ingress
                    ));
                }
            }
        }
        assert!(wrong.is_empty(), "{what}:\n{}", wrong.join("\n"));
    }

    /// Probes the scenario's matrix and compares it with the evaluator;
    /// returns every observation by (source, target, v6, protocol, port).
    /// Pod to pod, pod to node and SCTP run at the same time: each spends
    /// most of its time waiting out denied cells.
    fn probe_matrix(&self, model: &oracle::Model, what: &str, t0: Instant) -> Seen {
        let probes = self.scenario.probes;
        let parts: Vec<Part> = std::thread::scope(|s| {
            let nodes = probes.nodes.then(|| s.spawn(|| self.probe_nodes(model)));
            let sctp = probes
                .sctp
                .then(|| s.spawn(|| self.probe_sctp(model, what)));
            let mut parts = vec![self.probe_pods(what, t0)];
            for h in [nodes, sctp].into_iter().flatten() {
                parts.push(h.join().expect("probe thread"));
            }
            parts
        });
        let mut seen = Seen::new();
        let mut failures = Vec::new();
        for (s, f) in parts {
            seen.extend(s);
            failures.extend(f);
        }
        if !failures.is_empty() {
            panic!(
                "{what}:\n{}\n--- node1 ---\n{}\n--- node2 ---\n{}",
                failures.join("\n"),
                self.c.ruleset("node1"),
                self.c.ruleset("node2")
            );
        }
        seen
    }

    /// Pod to pod, TCP and UDP, through the cluster's own report.
    fn probe_pods(&self, what: &str, t0: Instant) -> Part {
        let probes = self.scenario.probes;
        let n = self.c.pods.len();
        let mut seen = Seen::new();
        let mut failures = Vec::new();
        let mut pp = Vec::new();
        for v6 in [false, true] {
            for (on, proto, ports) in [
                (probes.tcp, Proto::Tcp, TCP_PORTS),
                (probes.udp, Proto::Udp, UDP_PORTS),
            ] {
                if !on {
                    continue;
                }
                for port in ports {
                    for src in 0..n {
                        for dst in 0..n {
                            pp.push(Probe {
                                src,
                                dst,
                                v6,
                                proto,
                                port,
                            });
                        }
                    }
                }
            }
        }
        if !pp.is_empty() {
            let expected = self.c.expected(&pp);
            let (netns, ips) = self.c.netns_and_ips();
            let observed = observe_between_within(&pp, &netns, &ips, &expected, FIRST_PASS);
            let report = self.c.compare(what, &pp, &expected, &observed, t0);
            eprint!("{}", report.text.lines().next().unwrap_or_default());
            eprintln!();
            if !report.mismatches.is_empty() {
                failures.push(report.text);
            }
            for (p, got) in pp.iter().zip(observed) {
                seen.insert(
                    (
                        Target::Pod(p.src),
                        Target::Pod(p.dst),
                        p.v6,
                        oracle::protocol(p.proto),
                        p.port,
                    ),
                    got,
                );
            }
        }
        (seen, failures)
    }

    /// Pod to node, TCP and UDP.
    fn probe_nodes(&self, model: &oracle::Model) -> Part {
        let n = self.c.pods.len();
        let mut seen = Seen::new();
        let mut failures = Vec::new();
        let nodes = self.c.topo.nodes.len();
        let mut np = Vec::new();
        for v6 in [false, true] {
            for (proto, ports) in [(Proto::Tcp, NODE_TCP), (Proto::Udp, NODE_UDP)] {
                for port in ports {
                    for src in 0..n {
                        for dst in 0..nodes {
                            np.push(Probe {
                                src,
                                dst,
                                v6,
                                proto,
                                port,
                            });
                        }
                    }
                }
            }
        }
        let expected: Vec<bool> = np
            .iter()
            .map(|p| {
                let dst = self.endpoint(Target::Node(p.dst), p.v6);
                model
                    .decide(
                        &self.c.pods[p.src],
                        &dst,
                        p.v6,
                        oracle::protocol(p.proto),
                        p.port,
                    )
                    .allowed
            })
            .collect();
        let (netns, _) = self.c.netns_and_ips();
        let ips: Vec<_> = self
            .c
            .topo
            .nodes
            .iter()
            .map(|n| (n.fabric_v4, n.fabric_v6))
            .collect();
        let observed = crate::cluster::observe_between(&np, &netns, &ips, &expected);
        for (i, p) in np.iter().enumerate() {
            let key = (
                Target::Pod(p.src),
                Target::Node(p.dst),
                p.v6,
                oracle::protocol(p.proto),
                p.port,
            );
            seen.insert(key, observed[i]);
            if observed[i] != expected[i] {
                failures.push(format!(
                    "{} -> {} {}/{} {}: expected {}, observed {}",
                    self.c.label(p.src),
                    self.c.topo.nodes[p.dst].name,
                    p.proto.name(),
                    p.port,
                    if p.v6 { "IPv6" } else { "IPv4" },
                    verdict(expected[i]),
                    verdict(observed[i])
                ));
            }
        }
        (seen, failures)
    }

    /// SCTP, by raw INIT packets, to pods and (when they serve) nodes.
    fn probe_sctp(&self, model: &oracle::Model, what: &str) -> Part {
        let probes = self.scenario.probes;
        let n = self.c.pods.len();
        let mut seen = Seen::new();
        let mut failures = Vec::new();
        let mut cells = Vec::new();
        let mut targets: Vec<Target> = (0..n).map(Target::Pod).collect();
        if probes.nodes {
            targets.extend((0..self.c.topo.nodes.len()).map(Target::Node));
        }
        for v6 in [false, true] {
            for port in SCTP_PORTS {
                for src in 0..n {
                    for &t in &targets {
                        if t != Target::Pod(src) {
                            cells.push((src, t, v6, port));
                        }
                    }
                }
            }
        }
        let expected: Vec<bool> = cells
            .iter()
            .map(|&(src, t, v6, port)| {
                let dst = self.endpoint(t, v6);
                model
                    .decide(&self.c.pods[src], &dst, v6, Sctp, port)
                    .allowed
            })
            .collect();
        let inits: Vec<InitCell> = cells
            .iter()
            .map(|&(src, t, v6, port)| InitCell {
                from: self.c.topo.pods[src].netns.clone(),
                to_netns: match t {
                    Target::Pod(i) => self.c.topo.pods[i].netns.clone(),
                    Target::Node(i) => self.c.topo.nodes[i].netns.clone(),
                },
                to: self.address(t, v6),
                port,
            })
            .collect();
        let mut observed = send_inits_tagged(&inits, SCTP_WINDOW, 1, Some(&expected));
        // A lost INIT on a loaded machine is not a drop: cells expected
        // to arrive that did not get one more round.
        let again: Vec<usize> = (0..cells.len())
            .filter(|&i| expected[i] && !observed[i])
            .collect();
        if !again.is_empty() {
            let retry: Vec<InitCell> = again.iter().map(|&i| inits[i].clone()).collect();
            let all = vec![true; retry.len()];
            let got = send_inits_tagged(&retry, SCTP_WINDOW, 1, Some(&all));
            for (k, got) in got.into_iter().enumerate() {
                observed[again[k]] = got;
            }
        }
        let mut arrived = 0;
        for (i, &(src, t, v6, port)) in cells.iter().enumerate() {
            arrived += observed[i] as usize;
            seen.insert((Target::Pod(src), t, v6, Sctp, port), observed[i]);
            if observed[i] != expected[i] {
                failures.push(format!(
                    "{} -> {} SCTP/{port} {}: expected {}, observed {}",
                    self.c.label(src),
                    self.label(t),
                    if v6 { "IPv6" } else { "IPv4" },
                    verdict(expected[i]),
                    verdict(observed[i])
                ));
            }
        }
        eprintln!(
            "step {what:?}: SCTP, {} INITs, {arrived} arrived",
            cells.len()
        );
        (seen, failures)
    }

    fn label(&self, t: Target) -> String {
        match t {
            Target::Pod(i) => self.c.label(i),
            Target::Node(i) => self.c.topo.nodes[i].name.clone(),
        }
    }
}

fn verdict(allowed: bool) -> &'static str {
    if allowed {
        "allowed"
    } else {
        "denied"
    }
}

/// Flows probed continuously while the nodes are reprogrammed: pod to
/// pod, on the scenario's TCP/UDP ports, whose egress and ingress verdicts
/// are both the same before and after the change (so neither node's
/// order of programming can flip them), one per (verdict, family,
/// protocol, same or cross node), those an admin or baseline rule decides
/// first. Probes are strict (one SYN or datagram, never retried), so a
/// moment without the right rules shows.
struct LiveProbes {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    tallies: Vec<(String, Arc<AtomicUsize>, Arc<AtomicUsize>)>,
}

/// Under TCP's 1 s SYN retransmit, so a dropped SYN is not hidden.
const LIVE_ALLOWED_TIMEOUT: Duration = Duration::from_millis(900);
/// What a denied sample waits for an answer that must not come.
const LIVE_DENIED_TIMEOUT: Duration = Duration::from_millis(200);
/// Pause between two samples of one flow.
const LIVE_PACE: Duration = Duration::from_millis(5);
/// How long a round of live SCTP INITs is watched for after its last
/// send (INITs expected to arrive are waited for longer).
const LIVE_SCTP_WINDOW: Duration = Duration::from_millis(30);
/// Probing goes on this long after the last node is programmed.
const LIVE_AFTER: Duration = Duration::from_millis(50);

impl LiveProbes {
    fn start(run: &Run, before: &oracle::Model, after: &oracle::Model) -> LiveProbes {
        let c = &run.c;
        let n = c.pods.len();
        let p = run.scenario.probes;
        let mut candidates = Vec::new();
        for v6 in [false, true] {
            for (on, proto, ports) in [
                (p.tcp, Proto::Tcp, TCP_PORTS),
                (p.udp, Proto::Udp, UDP_PORTS),
            ] {
                if !on {
                    continue;
                }
                for port in ports {
                    for src in 0..n {
                        for dst in (0..n).filter(|&d| d != src) {
                            let ep = run.endpoint(Target::Pod(dst), v6);
                            let proto_ = oracle::protocol(proto);
                            let a = before.decide(&c.pods[src], &ep, v6, proto_, port);
                            let b = after.decide(&c.pods[src], &ep, v6, proto_, port);
                            if a.egress.allows() != b.egress.allows()
                                || a.ingress.allows() != b.ingress.allows()
                            {
                                continue;
                            }
                            let tiered =
                                matches!(b.egress, policy_compiler::eval::SideVerdict::Tier { .. })
                                    || matches!(
                                        b.ingress,
                                        policy_compiler::eval::SideVerdict::Tier { .. }
                                    );
                            let cross = c.topo.pods[src].node != c.topo.pods[dst].node;
                            candidates.push((
                                (b.allowed, v6, proto, cross),
                                !tiered,
                                Probe {
                                    src,
                                    dst,
                                    v6,
                                    proto,
                                    port,
                                },
                            ));
                        }
                    }
                }
            }
        }
        candidates.sort_by_key(|(class, untiered, p)| (*class, *untiered, *p));
        candidates.dedup_by_key(|(class, _, _)| *class);
        let stop = Arc::new(AtomicBool::new(false));
        let (netns, ips) = c.netns_and_ips();
        let mut threads = Vec::new();
        let mut tallies = Vec::new();
        if p.sctp {
            let (thread, mut sctp) = Self::start_sctp(run, before, after, stop.clone());
            threads.push(thread);
            tallies.append(&mut sctp);
        }
        for ((allowed, ..), _, p) in candidates {
            let samples = Arc::new(AtomicUsize::new(0));
            let wrong = Arc::new(AtomicUsize::new(0));
            tallies.push((
                format!(
                    "{} -> {} {}/{} {} (stays {})",
                    c.label(p.src),
                    c.label(p.dst),
                    p.proto.name(),
                    p.port,
                    if p.v6 { "IPv6" } else { "IPv4" },
                    verdict(allowed)
                ),
                samples.clone(),
                wrong.clone(),
            ));
            let (v4, v6) = ips[p.dst];
            let dst: IpAddr = if p.v6 { v6.into() } else { v4.into() };
            let timeout = if allowed && p.proto == Proto::Udp {
                // No resend to hide a gap, and the answer needs a server
                // thread a loaded machine may delay (see
                // restart::strict_timeout); the wait ends at the answer.
                probe::ANSWER_LIMIT
            } else if allowed {
                LIVE_ALLOWED_TIMEOUT
            } else {
                LIVE_DENIED_TIMEOUT
            };
            let stop = stop.clone();
            threads.push(spawn_in(&netns[p.src], move || {
                // Bounded in count as well as by the stop flag.
                for _ in 0..10_000 {
                    let got = probe::probe_strict(dst, p.proto, p.port, timeout);
                    samples.fetch_add(1, Ordering::Relaxed);
                    if got != allowed {
                        wrong.fetch_add(1, Ordering::Relaxed);
                    }
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    // Paced: servers accept every 20 ms at worst, and a
                    // full listen backlog drops SYNs like a filter would.
                    std::thread::sleep(LIVE_PACE);
                }
            }));
        }
        LiveProbes {
            stop,
            threads,
            tallies,
        }
    }

    /// SCTP the same way, by raw INITs: one flow per (verdict, family,
    /// same or cross node), sent round after round by one thread. An
    /// INIT gets no answer, so conntrack never calls the flow established
    /// and every round is judged by the rules as a new association.
    #[allow(clippy::type_complexity)]
    fn start_sctp(
        run: &Run,
        before: &oracle::Model,
        after: &oracle::Model,
        stop: Arc<AtomicBool>,
    ) -> (
        std::thread::JoinHandle<()>,
        Vec<(String, Arc<AtomicUsize>, Arc<AtomicUsize>)>,
    ) {
        let c = &run.c;
        let n = c.pods.len();
        let mut candidates = Vec::new();
        for v6 in [false, true] {
            for port in SCTP_PORTS {
                for src in 0..n {
                    for dst in (0..n).filter(|&d| d != src) {
                        let ep = run.endpoint(Target::Pod(dst), v6);
                        let a = before.decide(&c.pods[src], &ep, v6, Sctp, port);
                        let b = after.decide(&c.pods[src], &ep, v6, Sctp, port);
                        if a.egress.allows() != b.egress.allows()
                            || a.ingress.allows() != b.ingress.allows()
                        {
                            continue;
                        }
                        let tiered =
                            matches!(b.egress, policy_compiler::eval::SideVerdict::Tier { .. })
                                || matches!(
                                    b.ingress,
                                    policy_compiler::eval::SideVerdict::Tier { .. }
                                );
                        let cross = c.topo.pods[src].node != c.topo.pods[dst].node;
                        candidates.push(((b.allowed, v6, cross), !tiered, (src, dst, port)));
                    }
                }
            }
        }
        candidates.sort();
        candidates.dedup_by_key(|(class, _, _)| *class);
        let mut tallies = Vec::new();
        let mut cells = Vec::new();
        let mut expected = Vec::new();
        for ((allowed, v6, _), _, (src, dst, port)) in candidates {
            tallies.push((
                format!(
                    "{} -> {} SCTP/{port} {} (stays {})",
                    c.label(src),
                    c.label(dst),
                    if v6 { "IPv6" } else { "IPv4" },
                    verdict(allowed)
                ),
                Arc::new(AtomicUsize::new(0)),
                Arc::new(AtomicUsize::new(0)),
            ));
            cells.push(InitCell {
                from: c.topo.pods[src].netns.clone(),
                to_netns: c.topo.pods[dst].netns.clone(),
                to: run.address(Target::Pod(dst), v6),
                port,
            });
            expected.push(allowed);
        }
        let counts: Vec<(Arc<AtomicUsize>, Arc<AtomicUsize>)> = tallies
            .iter()
            .map(|(_, samples, wrong)| (samples.clone(), wrong.clone()))
            .collect();
        let thread = std::thread::spawn(move || {
            // Bounded in count as well as by the stop flag; each round has
            // tags of its own, so a late INIT is never taken for a newer one.
            for round in 0..2_000u32 {
                let first_tag = 1 + round * cells.len() as u32;
                let got = send_inits_tagged(&cells, LIVE_SCTP_WINDOW, first_tag, Some(&expected));
                for (i, (samples, wrong)) in counts.iter().enumerate() {
                    samples.fetch_add(1, Ordering::Relaxed);
                    if got[i] != expected[i] {
                        wrong.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if stop.load(Ordering::Relaxed) {
                    break;
                }
            }
        });
        (thread, tallies)
    }

    /// Stops the probes (after [`LIVE_AFTER`]) and lists flows that had a
    /// wrong sample.
    fn finish(self) -> Vec<String> {
        std::thread::sleep(LIVE_AFTER);
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().expect("live probe thread");
        }
        self.tallies
            .iter()
            .filter(|(_, _, wrong)| wrong.load(Ordering::Relaxed) > 0)
            .map(|(flow, samples, wrong)| {
                format!(
                    "{flow}: {} of {} samples wrong",
                    wrong.load(Ordering::Relaxed),
                    samples.load(Ordering::Relaxed)
                )
            })
            .collect()
    }
}

/// Builds the house model and runs scenario `test` in `api`.
fn run(api: Api, test: &str) {
    require_root!();
    run_then(api, test, |_| ());
}

/// [`run`], then `then` on the run as the scenario left it.
fn run_then(api: Api, test: &str, then: impl FnOnce(&mut Run)) {
    let scenario = scenarios()
        .into_iter()
        .find(|s| s.test == test)
        .unwrap_or_else(|| panic!("no scenario {test} in scenarios()"));
    let t0 = Instant::now();
    let c = house_cluster(scenario.probes.nodes);
    eprintln!("{test} ({api:?}): cluster built in {:.1?}", t0.elapsed());
    let mut run = Run {
        c,
        api,
        scenario: &scenario,
        docs: BTreeMap::new(),
        programmed: None,
    };
    for step in &scenario.steps {
        run.step(step);
    }
    then(&mut run);
}

/// The live probes themselves, for SCTP: re-programming the nodes of an
/// SCTP scenario with the same policies, by a programmer that deletes the
/// table and loads it again 200 ms later (not atomic), must show SCTP
/// INITs that stay denied getting through.
#[test]
fn live_sctp_probes_catch_a_gap() {
    require_root!();
    run_then(Api::V1alpha2, "admin_ingress_sctp", |run| {
        run.c.programmer = crate::cluster::Programmer::GappyForSelfTest;
        let manifests = run.c.manifests();
        let model = oracle::Model::load(&manifests);
        let wrong = run.program_probed(&manifests, &model);
        assert!(
            wrong
                .iter()
                .any(|w| w.contains(" SCTP/") && w.contains("stays denied")),
            "a 200 ms unfiltered window per node went unnoticed by the live SCTP probes: {wrong:?}"
        );
    });
}

// ---------------------------------------------------------------------
// The scenarios.

const fn ladder(
    tier: Tier,
    name: &'static str,
    priority: u32,
    subject: &'static str,
    ingress: Option<Rungs>,
    egress: Option<Rungs>,
) -> Doc {
    Doc::Ladder {
        tier,
        name,
        priority,
        subject,
        ingress,
        egress,
    }
}

const fn rungs(
    all: &'static str,
    closed: &'static str,
    closed_ports: &'static [(Protocol, u16)],
    open: &'static str,
    open_ports: &'static [(Protocol, u16)],
) -> Option<Rungs> {
    Some(Rungs {
        all,
        closed,
        closed_ports,
        open,
        open_ports,
    })
}

const GR: &str = "gryffindor";
const SL: &str = "slytherin";
const HU: &str = "hufflepuff";
const RA: &str = "ravenclaw";

// Ladders: into gryffindor over TCP, into hufflepuff over UDP, into
// ravenclaw over SCTP; out of the same namespaces likewise.
const IN_TCP: Option<Rungs> = rungs(RA, SL, &[(Tcp, 80)], HU, &[(Tcp, 80)]);
const IN_UDP: Option<Rungs> = rungs(RA, SL, &[(Udp, 5353)], GR, &[(Udp, 53)]);
const IN_SCTP: Option<Rungs> = rungs(GR, SL, &[(Sctp, 9003)], HU, &[(Sctp, 9003)]);
const OUT_TCP: Option<Rungs> = rungs(RA, SL, &[(Tcp, 80)], HU, &[(Tcp, 8080)]);
const OUT_UDP: Option<Rungs> = rungs(RA, SL, &[(Udp, 5353)], GR, &[(Udp, 53)]);
const OUT_SCTP: Option<Rungs> = rungs(GR, SL, &[(Sctp, 9003)], HU, &[(Sctp, 9003)]);
const MIXED_CLOSED: &[(Protocol, u16)] = &[(Tcp, 80), (Udp, 53), (Sctp, 9003)];
const IN_MIXED: Option<Rungs> = rungs(
    RA,
    SL,
    MIXED_CLOSED,
    HU,
    &[(Tcp, 80), (Udp, 5353), (Sctp, 9003)],
);
const OUT_MIXED: Option<Rungs> = rungs(
    RA,
    SL,
    MIXED_CLOSED,
    HU,
    &[(Tcp, 8080), (Udp, 5353), (Sctp, 9003)],
);

use Tier::{Admin as A, Baseline as B};

// Expected verdicts shared by the admin and baseline ladders: first the
// order of rules (Accept before Deny) and a port rule with the rest of
// the namespace denied after it; after swapping rules 0 and 1, Deny first
// and a denied port with other ports untouched.
const IN_TCP_ORDERED: &[Poke] = &[
    (R0, G0, Tcp, 80, true),
    (R1, G0, Tcp, 8080, true),
    (H0, G1, Tcp, 80, true),
    (H1, G1, Tcp, 8080, false),
];
const IN_TCP_SWAPPED: &[Poke] = &[
    (R0, G1, Tcp, 80, false),
    (R1, G1, Tcp, 8080, false),
    (S0, G0, Tcp, 80, false),
    (S1, G0, Tcp, 8080, true),
];
const IN_UDP_ORDERED: &[Poke] = &[
    (R0, H0, Udp, 53, true),
    (R1, H0, Udp, 5353, true),
    (G0, H1, Udp, 53, true),
    (G1, H1, Udp, 5353, false),
];
const IN_UDP_SWAPPED: &[Poke] = &[
    (R0, H1, Udp, 53, false),
    (R1, H1, Udp, 5353, false),
    (S0, H0, Udp, 5353, false),
    (S1, H0, Udp, 53, true),
];
const IN_SCTP_ORDERED: &[Poke] = &[
    (G0, R0, Sctp, 9003, true),
    (G1, R0, Sctp, 9005, true),
    (H0, R1, Sctp, 9003, true),
    (H1, R1, Sctp, 9005, false),
];
const IN_SCTP_SWAPPED: &[Poke] = &[
    (G0, R1, Sctp, 9003, false),
    (G1, R1, Sctp, 9005, false),
    (S0, R0, Sctp, 9003, false),
    (S1, R0, Sctp, 9005, true),
];
const OUT_TCP_ORDERED: &[Poke] = &[
    (G0, R0, Tcp, 80, true),
    (G1, R0, Tcp, 8080, true),
    (G0, H1, Tcp, 8080, true),
    (G1, H1, Tcp, 80, false),
];
const OUT_TCP_SWAPPED: &[Poke] = &[
    (G0, R1, Tcp, 80, false),
    (G1, R1, Tcp, 8080, false),
    (G0, S0, Tcp, 80, false),
    (G1, S0, Tcp, 8080, true),
];
const OUT_UDP_ORDERED: &[Poke] = &[
    (H0, R0, Udp, 53, true),
    (H1, R0, Udp, 5353, true),
    (H0, G1, Udp, 53, true),
    (H1, G1, Udp, 5353, false),
];
const OUT_UDP_SWAPPED: &[Poke] = &[
    (H0, R1, Udp, 53, false),
    (H1, R1, Udp, 5353, false),
    (H0, S0, Udp, 5353, false),
    (H1, S0, Udp, 53, true),
];
const OUT_SCTP_ORDERED: &[Poke] = &[
    (R0, G0, Sctp, 9003, true),
    (R1, G0, Sctp, 9005, true),
    (R0, H1, Sctp, 9003, true),
    (R1, H1, Sctp, 9005, false),
];
const OUT_SCTP_SWAPPED: &[Poke] = &[
    (R0, G1, Sctp, 9003, false),
    (R1, G1, Sctp, 9005, false),
    (R0, S0, Sctp, 9003, false),
    (R1, S0, Sctp, 9005, true),
];
const MIXED_ORDERED: &[Poke] = &[
    (G0, R0, Tcp, 80, true),
    (G1, R0, Udp, 53, true),
    (G0, R0, Sctp, 9003, true),
    (R0, G0, Tcp, 80, true),
    (R1, G0, Udp, 53, true),
    (R1, G0, Sctp, 9003, true),
    (G0, H1, Tcp, 8080, true),
    (G1, H1, Tcp, 80, false),
    (G0, H1, Udp, 5353, true),
    (G1, H1, Udp, 53, false),
    (G0, H1, Sctp, 9003, true),
    (G1, H1, Sctp, 9005, false),
    (H0, G1, Tcp, 80, true),
    (H1, G1, Tcp, 8080, false),
    (H0, G1, Udp, 5353, true),
    (H1, G1, Udp, 53, false),
    (H0, G1, Sctp, 9003, true),
    (H1, G1, Sctp, 9005, false),
];
const MIXED_SWAPPED: &[Poke] = &[
    (G0, R1, Tcp, 80, false),
    (G1, R1, Udp, 53, false),
    (G0, R1, Sctp, 9003, false),
    (R0, G1, Tcp, 80, false),
    (R1, G1, Udp, 53, false),
    (R1, G1, Sctp, 9003, false),
    (G0, S0, Tcp, 80, false),
    (G1, S0, Tcp, 8080, true),
    (G0, S0, Udp, 53, false),
    (G1, S0, Udp, 5353, true),
    (G0, S0, Sctp, 9003, false),
    (G1, S0, Sctp, 9005, true),
    (S0, G0, Tcp, 80, false),
    (S1, G0, Tcp, 8080, true),
    (S0, G0, Udp, 53, false),
    (S1, G0, Udp, 5353, true),
    (S0, G0, Sctp, 9003, false),
    (S1, G0, Sctp, 9005, true),
];

// Egress toward networks: gryffindor may reach slytherin's pods and
// nothing else; slytherin relabelled away is lost; an Accept of two pods'
// addresses put first opens exactly those.
const CIDR_START: &[Poke] = &[
    (G1, R0, Tcp, 80, false),
    (G1, R0, Udp, 53, false),
    (G1, R0, Sctp, 9003, false),
    (G1, H0, Tcp, 80, false),
    (G1, H0, Udp, 53, false),
    (G1, H0, Sctp, 9003, false),
    (G1, S0, Tcp, 80, true),
    (G1, S0, Udp, 53, true),
    (G1, S0, Sctp, 9003, true),
];
const CIDR_RELABELLED: &[Poke] = &[
    (G1, S0, Tcp, 80, false),
    (G1, S0, Udp, 53, false),
    (G1, S0, Sctp, 9003, false),
];
const CIDR_LABEL_BACK: &[Poke] = &[
    (G1, S0, Tcp, 80, true),
    (G1, S0, Udp, 53, true),
    (G1, S0, Sctp, 9003, true),
];
const CIDR_ADDRESSES: &[Poke] = &[
    (G1, R0, Tcp, 80, true),
    (G1, R0, Udp, 53, true),
    (G1, R0, Sctp, 9003, true),
    (G1, H0, Tcp, 80, true),
    (G1, H0, Udp, 53, true),
    (G1, H0, Sctp, 9003, true),
    (G1, R1, Tcp, 80, false),
    (G1, R1, Udp, 53, false),
    (G1, R1, Sctp, 9003, false),
    (G1, H1, Tcp, 80, false),
    (G1, H1, Udp, 53, false),
    (G1, H1, Sctp, 9003, false),
];
const CIDR_ADMIN: &str = r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: networks-as-peers}
spec:
  tier: Admin
  priority: 85
  subject:
    pods:
      namespaceSelector: {matchLabels: {conformance-house: gryffindor}}
      podSelector: {matchLabels: {conformance-house: gryffindor}}
  egress:
  - name: accept-to-slytherin-pods
    action: Accept
    to:
    - pods:
        namespaceSelector: {matchLabels: {conformance-house: slytherin}}
        podSelector: {matchLabels: {conformance-house: slytherin}}
  - name: deny-to-every-address
    action: Deny
    to:
    - networks: [0.0.0.0/0, "::/0"]
"#;
const CIDR_BASELINE: &str = r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: default}
spec:
  tier: Baseline
  priority: 10
  subject:
    namespaces: {matchLabels: {kubernetes.io/metadata.name: gryffindor}}
  egress:
  - name: accept-to-slytherin-pods
    action: Accept
    to:
    - pods:
        namespaceSelector: {matchLabels: {conformance-house: slytherin}}
        podSelector: {matchLabels: {conformance-house: slytherin}}
  - name: deny-to-every-address
    action: Deny
    to:
    - networks: [0.0.0.0/0, "::/0"]
"#;

// Node peers: the admin tier accepts one TCP port on the nodes, passes
// one UDP port (nothing below decides, so allowed), denies the rest of
// the nodes, slytherin's pods and every address; the baseline tier
// accepts a TCP port range on the nodes and denies the rest.
const NODES_ADMIN: &str = r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: nodes-and-networks}
spec:
  tier: Admin
  priority: 75
  subject:
    pods:
      namespaceSelector: {matchLabels: {conformance-house: gryffindor}}
      podSelector: {matchLabels: {conformance-house: gryffindor}}
  egress:
  - name: accept-to-nodes-tcp
    action: Accept
    to: [{nodes: {matchLabels: {kubernetes.io/os: linux}}}]
    protocols: [{tcp: {destinationPort: {number: 36363}}}]
  - name: pass-to-nodes-udp
    action: Pass
    to: [{nodes: {matchLabels: {kubernetes.io/os: linux}}}]
    protocols: [{udp: {destinationPort: {number: 34345}}}]
  - name: deny-to-slytherin-nodes-and-addresses
    action: Deny
    to:
    - pods:
        namespaceSelector: {matchLabels: {conformance-house: slytherin}}
        podSelector: {matchLabels: {conformance-house: slytherin}}
    - nodes: {matchLabels: {kubernetes.io/os: linux}}
    - networks: [0.0.0.0/0, "::/0"]
"#;
const NODES_BASELINE: &str = r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: default}
spec:
  tier: Baseline
  priority: 10
  subject:
    namespaces: {matchLabels: {kubernetes.io/metadata.name: gryffindor}}
  egress:
  - name: accept-to-nodes-tcp-range
    action: Accept
    to: [{nodes: {matchLabels: {kubernetes.io/os: linux}}}]
    protocols: [{tcp: {destinationPort: {range: {start: 36363, end: 36364}}}}]
  - name: deny-to-nodes-and-addresses
    action: Deny
    to:
    - nodes: {matchLabels: {kubernetes.io/os: linux}}
    - networks: [0.0.0.0/0, "::/0"]
"#;

// Priority: a Deny at 50 beats a Pass at 60; moved to 40, the Pass wins
// and the baseline Accept below decides.
const PRIORITY_DENY: &str = r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: deny-at-50}
spec:
  tier: Admin
  priority: 50
  subject:
    pods:
      namespaceSelector: {matchLabels: {conformance-house: gryffindor}}
      podSelector: {matchLabels: {conformance-house: gryffindor}}
  ingress:
  - name: deny-from-slytherin
    action: Deny
    from:
    - pods:
        namespaceSelector: {matchLabels: {conformance-house: slytherin}}
        podSelector: {matchLabels: {conformance-house: slytherin}}
  egress:
  - name: deny-to-slytherin
    action: Deny
    to:
    - pods:
        namespaceSelector: {matchLabels: {conformance-house: slytherin}}
        podSelector: {matchLabels: {conformance-house: slytherin}}
"#;
const PRIORITY_PASS: &str = r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: pass-at-60-then-40}
spec:
  tier: Admin
  priority: 60
  subject:
    pods:
      namespaceSelector: {matchLabels: {conformance-house: gryffindor}}
      podSelector: {matchLabels: {conformance-house: gryffindor}}
  ingress:
  - name: pass-from-slytherin
    action: Pass
    from:
    - pods:
        namespaceSelector: {matchLabels: {conformance-house: slytherin}}
        podSelector: {matchLabels: {conformance-house: slytherin}}
  egress:
  - name: pass-to-slytherin
    action: Pass
    to:
    - pods:
        namespaceSelector: {matchLabels: {conformance-house: slytherin}}
        podSelector: {matchLabels: {conformance-house: slytherin}}
"#;
const PRIORITY_BASELINE: &str = r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: default}
spec:
  tier: Baseline
  priority: 10
  subject:
    pods:
      namespaceSelector: {matchLabels: {conformance-house: gryffindor}}
      podSelector: {matchLabels: {conformance-house: gryffindor}}
  ingress:
  - name: accept-from-slytherin
    action: Accept
    from:
    - pods:
        namespaceSelector: {matchLabels: {conformance-house: slytherin}}
        podSelector: {matchLabels: {conformance-house: slytherin}}
  egress:
  - name: accept-to-slytherin
    action: Accept
    to:
    - pods:
        namespaceSelector: {matchLabels: {conformance-house: slytherin}}
        podSelector: {matchLabels: {conformance-house: slytherin}}
"#;
const SLYTHERIN_GRYFFINDOR_DENIED: &[Poke] = &[
    (S0, G0, Tcp, 80, false),
    (S1, G0, Tcp, 8080, false),
    (G0, S0, Tcp, 80, false),
    (G1, S0, Tcp, 8080, false),
];
const SLYTHERIN_GRYFFINDOR_ALLOWED: &[Poke] = &[
    (S0, G0, Tcp, 80, true),
    (S1, G0, Tcp, 8080, true),
    (G0, S0, Tcp, 80, true),
    (G1, S0, Tcp, 8080, true),
];

// The three tiers together: an admin Deny over a NetworkPolicy that
// allows; turned into Pass (ingress, then egress) the NetworkPolicy
// decides; with the NetworkPolicy deleted, the baseline Deny does.
const TIERS_ADMIN: &str = r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: deny-then-pass}
spec:
  tier: Admin
  priority: 10
  subject:
    namespaces: {matchLabels: {conformance-house: gryffindor}}
  ingress:
  - name: from-slytherin
    action: Deny
    from: [{namespaces: {matchLabels: {conformance-house: slytherin}}}]
  egress:
  - name: to-slytherin
    action: Deny
    to: [{namespaces: {matchLabels: {conformance-house: slytherin}}}]
"#;
const TIERS_NETPOL: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: with-slytherin, namespace: gryffindor}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{namespaceSelector: {matchLabels: {conformance-house: slytherin}}}]
  egress:
  - to: [{namespaceSelector: {matchLabels: {conformance-house: slytherin}}}]
"#;
const TIERS_BASELINE: &str = r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: default}
spec:
  tier: Baseline
  priority: 10
  subject:
    namespaces: {matchLabels: {conformance-house: gryffindor}}
  ingress:
  - name: from-slytherin
    action: Deny
    from: [{namespaces: {matchLabels: {conformance-house: slytherin}}}]
  egress:
  - name: to-slytherin
    action: Deny
    to: [{namespaces: {matchLabels: {conformance-house: slytherin}}}]
"#;

// The four cases of how the tiers meet NetworkPolicy (our own, not
// upstream's), ravenclaw being the protected namespace.
const NP_RAVENCLAW_FROM_GR_HU: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-gryffindor-and-hufflepuff, namespace: ravenclaw}
spec:
  podSelector: {}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {conformance-house: gryffindor}}
    - namespaceSelector: {matchLabels: {conformance-house: hufflepuff}}
"#;
const DENY_GR_TO_RA: &str = r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: no-gryffindor-into-ravenclaw}
spec:
  tier: Admin
  priority: 1
  subject:
    namespaces: {matchLabels: {conformance-house: ravenclaw}}
  ingress:
  - name: from-gryffindor
    action: Deny
    from: [{namespaces: {matchLabels: {conformance-house: gryffindor}}}]
"#;
const PASS_GR_DENY_REST: &str = r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: gryffindor-left-to-ravenclaw}
spec:
  tier: Admin
  priority: 1
  subject:
    namespaces: {matchLabels: {conformance-house: ravenclaw}}
  ingress:
  - name: from-gryffindor
    action: Pass
    from: [{namespaces: {matchLabels: {conformance-house: gryffindor}}}]
  - name: from-anyone-else
    action: Deny
    from: [{namespaces: {}}]
"#;
const NP_RAVENCLAW_GR_WEB: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: gryffindor-on-web, namespace: ravenclaw}
spec:
  podSelector: {}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {conformance-house: gryffindor}}}]
    ports: [{port: web}]
"#;
const BASELINE_DENY_INTO_RA: &str = r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: default}
spec:
  tier: Baseline
  priority: 10
  subject:
    namespaces: {matchLabels: {conformance-house: ravenclaw}}
  ingress:
  - name: from-anyone
    action: Deny
    from: [{namespaces: {}}]
"#;
const NP_R0_FROM_GR: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: luna-0-from-gryffindor, namespace: ravenclaw}
spec:
  podSelector: {matchLabels: {statefulset.kubernetes.io/pod-name: luna-lovegood-0}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {conformance-house: gryffindor}}}]
"#;
const NP_RAVENCLAW_DENY_INGRESS: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-ingress, namespace: ravenclaw}
spec:
  podSelector: {}
  policyTypes: [Ingress]
"#;
const ACCEPT_GR_INTO_RA: &str = r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: gryffindor-into-ravenclaw}
spec:
  tier: Admin
  priority: 1
  subject:
    namespaces: {matchLabels: {conformance-house: ravenclaw}}
  ingress:
  - name: from-gryffindor
    action: Accept
    from: [{namespaces: {matchLabels: {conformance-house: gryffindor}}}]
"#;

/// A per-protocol ladder scenario (see [`Rungs`]): the verdicts with the
/// rules in order, then with rules 0 and 1 swapped (Deny first); in the
/// admin tier also after swapping 0 and 2 (Pass first: nothing below
/// decides, so allowed) and then 3 and 4 (a Pass before the Deny of the
/// same port); last, optionally, after one rule's ports are replaced by a
/// named port.
struct Ladder {
    test: &'static str,
    probes: Probes,
    /// A [`Doc::Ladder`]; a ladder in both directions swaps both.
    policy: Doc,
    ordered: &'static [Poke],
    swapped: &'static [Poke],
    /// Admin tier: the verdicts after the 0/2 swap and the 3/4 swap.
    passes: Option<(&'static [Poke], &'static [Poke])>,
    /// Rule, port name, and the verdicts after (one direction only).
    named_port: Option<(usize, &'static str, &'static [Poke])>,
}

impl Ladder {
    fn scenario(self) -> Scenario {
        let Doc::Ladder {
            name,
            ingress,
            egress,
            ..
        } = self.policy
        else {
            panic!("{}: the policy of a Ladder is a Doc::Ladder", self.test)
        };
        let dir = match (ingress, egress) {
            (Some(_), None) => Some(Dir::In),
            (None, Some(_)) => Some(Dir::Out),
            _ => None,
        };
        let swap = |a, b| match dir {
            Some(dir) => Swap(name, dir, a, b),
            None => SwapBoth(name, a, b),
        };
        let mut steps = vec![
            Put(self.policy),
            Check("rules in order", self.ordered),
            swap(0, 1),
            Check("deny first", self.swapped),
        ];
        if let Some((pass_first, pass_on_ports_first)) = self.passes {
            steps.extend([
                swap(0, 2),
                Check("pass first", pass_first),
                swap(3, 4),
                Check("pass on the ports first", pass_on_ports_first),
            ]);
        }
        if let Some((rule, port, pokes)) = self.named_port {
            let dir = dir.unwrap_or_else(|| panic!("{}: a named port in one direction", self.test));
            steps.extend([
                NamedPort(name, dir, rule, port),
                Check("accept on the named port", pokes),
            ]);
        }
        Scenario {
            test: self.test,
            probes: self.probes,
            steps,
        }
    }
}

/// The networks scenario after its policy (named `name`): slytherin's
/// pods accepted, every address denied; slytherin relabelled and back;
/// then two pods' addresses accepted first.
fn networks_steps(policy: &'static str, name: &'static str) -> Vec<Step> {
    vec![
        Put(Doc::Yaml(policy)),
        Check("slytherin's pods only", CIDR_START),
        NamespaceLabels(SL, &[("conformance-house", "denied-namespace-label")]),
        Check("slytherin relabelled: no longer a peer", CIDR_RELABELLED),
        NamespaceLabels(SL, &[("conformance-house", SL)]),
        Check("slytherin labelled back", CIDR_LABEL_BACK),
        AcceptAddressesFirst(name, &[R0, H0]),
        Check("two pods' addresses accepted first", CIDR_ADDRESSES),
    ]
}

/// Every scenario; each is a test in both API modules (`admin_tests!`).
pub fn scenarios() -> Vec<Scenario> {
    // --- The admin tier, one protocol at a time, ingress then egress,
    // and both directions with all three protocols in one policy.
    let admin = [
        Ladder {
            test: "admin_ingress_tcp",
            probes: TCP_ONLY,
            policy: ladder(A, "ingress-tcp", 3, GR, IN_TCP, None),
            ordered: IN_TCP_ORDERED,
            swapped: IN_TCP_SWAPPED,
            passes: Some((
                &[(R0, G0, Tcp, 80, true), (R1, G0, Tcp, 8080, true)],
                &[(S0, G0, Tcp, 80, true), (S1, G0, Tcp, 8080, true)],
            )),
            named_port: None,
        },
        Ladder {
            test: "admin_ingress_udp",
            probes: UDP_ONLY,
            policy: ladder(A, "ingress-udp", 4, HU, IN_UDP, None),
            ordered: IN_UDP_ORDERED,
            swapped: IN_UDP_SWAPPED,
            passes: Some((
                &[(R0, H1, Udp, 5353, true), (R1, H1, Udp, 53, true)],
                &[(S0, H0, Udp, 5353, true), (S1, H0, Udp, 53, true)],
            )),
            named_port: Some((
                5,
                "dns",
                &[(G0, H1, Udp, 53, true), (G1, H1, Udp, 5353, false)],
            )),
        },
        Ladder {
            test: "admin_ingress_sctp",
            probes: SCTP_ONLY,
            policy: ladder(A, "ingress-sctp", 5, RA, IN_SCTP, None),
            ordered: IN_SCTP_ORDERED,
            swapped: IN_SCTP_SWAPPED,
            passes: Some((
                &[(G0, R1, Sctp, 9003, true), (G1, R1, Sctp, 9005, true)],
                &[(S0, R0, Sctp, 9003, true), (S1, R0, Sctp, 9005, true)],
            )),
            named_port: None,
        },
        Ladder {
            test: "admin_egress_tcp",
            probes: TCP_ONLY,
            policy: ladder(A, "egress-tcp", 6, GR, None, OUT_TCP),
            ordered: OUT_TCP_ORDERED,
            swapped: OUT_TCP_SWAPPED,
            passes: Some((
                &[(G0, R0, Tcp, 80, true), (G1, R0, Tcp, 8080, true)],
                &[(G0, S0, Tcp, 80, true), (G1, S0, Tcp, 8080, true)],
            )),
            named_port: Some((
                5,
                "web",
                &[(G0, H1, Tcp, 80, true), (G1, H1, Tcp, 8080, false)],
            )),
        },
        Ladder {
            test: "admin_egress_udp",
            probes: UDP_ONLY,
            policy: ladder(A, "egress-udp", 7, HU, None, OUT_UDP),
            ordered: OUT_UDP_ORDERED,
            swapped: OUT_UDP_SWAPPED,
            passes: Some((
                &[(H0, R1, Udp, 5353, true), (H1, R1, Udp, 53, true)],
                &[(H0, S0, Udp, 5353, true), (H1, S0, Udp, 53, true)],
            )),
            named_port: None,
        },
        Ladder {
            test: "admin_egress_sctp",
            probes: SCTP_ONLY,
            policy: ladder(A, "egress-sctp", 8, RA, None, OUT_SCTP),
            ordered: OUT_SCTP_ORDERED,
            swapped: OUT_SCTP_SWAPPED,
            passes: Some((
                &[(R0, G1, Sctp, 9003, true), (R1, G1, Sctp, 9005, true)],
                &[(R0, S0, Sctp, 9003, true), (R1, S0, Sctp, 9005, true)],
            )),
            named_port: None,
        },
        Ladder {
            test: "admin_both_directions",
            probes: ALL_PODS,
            policy: ladder(A, "gress-rules", 15, GR, IN_MIXED, OUT_MIXED),
            ordered: MIXED_ORDERED,
            swapped: MIXED_SWAPPED,
            passes: Some((
                &[
                    (G0, R0, Tcp, 80, true),
                    (G0, R0, Udp, 5353, true),
                    (G0, R0, Sctp, 9003, true),
                    (R0, G0, Tcp, 80, true),
                    (R1, G0, Udp, 53, true),
                    (R1, G0, Sctp, 9003, true),
                ],
                &[
                    (G0, S0, Tcp, 80, true),
                    (G1, S0, Tcp, 8080, true),
                    (G0, S0, Udp, 53, true),
                    (G1, S0, Udp, 5353, true),
                    (G0, S0, Sctp, 9003, true),
                    (G1, S0, Sctp, 9005, true),
                    (S0, G0, Tcp, 80, true),
                    (S1, G0, Tcp, 8080, true),
                    (S0, G0, Udp, 53, true),
                    (S1, G0, Udp, 5353, true),
                    (S0, G0, Sctp, 9003, true),
                    (S1, G0, Sctp, 9005, true),
                ],
            )),
            named_port: None,
        },
    ];
    // --- The baseline tier: the same ladders without Pass.
    let baseline =
        |test, probes, subject, ingress, egress, verdicts: [&'static [Poke]; 2]| Ladder {
            test,
            probes,
            policy: ladder(B, "default", 10, subject, ingress, egress),
            ordered: verdicts[0],
            swapped: verdicts[1],
            passes: None,
            named_port: None,
        };
    let baseline = [
        Ladder {
            named_port: Some((
                3,
                "web",
                &[(H0, G1, Tcp, 80, true), (H1, G1, Tcp, 8080, false)],
            )),
            ..baseline(
                "baseline_ingress_tcp",
                TCP_ONLY,
                GR,
                IN_TCP,
                None,
                [IN_TCP_ORDERED, IN_TCP_SWAPPED],
            )
        },
        baseline(
            "baseline_ingress_udp",
            UDP_ONLY,
            HU,
            IN_UDP,
            None,
            [IN_UDP_ORDERED, IN_UDP_SWAPPED],
        ),
        baseline(
            "baseline_ingress_sctp",
            SCTP_ONLY,
            RA,
            IN_SCTP,
            None,
            [IN_SCTP_ORDERED, IN_SCTP_SWAPPED],
        ),
        baseline(
            "baseline_egress_tcp",
            TCP_ONLY,
            GR,
            None,
            OUT_TCP,
            [OUT_TCP_ORDERED, OUT_TCP_SWAPPED],
        ),
        Ladder {
            named_port: Some((
                3,
                "dns",
                &[(H0, G1, Udp, 53, true), (H1, G1, Udp, 5353, false)],
            )),
            ..baseline(
                "baseline_egress_udp",
                UDP_ONLY,
                HU,
                None,
                OUT_UDP,
                [OUT_UDP_ORDERED, OUT_UDP_SWAPPED],
            )
        },
        baseline(
            "baseline_egress_sctp",
            SCTP_ONLY,
            RA,
            None,
            OUT_SCTP,
            [OUT_SCTP_ORDERED, OUT_SCTP_SWAPPED],
        ),
        baseline(
            "baseline_both_directions",
            ALL_PODS,
            GR,
            IN_MIXED,
            OUT_MIXED,
            [MIXED_ORDERED, MIXED_SWAPPED],
        ),
    ];
    let mut all: Vec<Scenario> = admin
        .into_iter()
        .chain(baseline)
        .map(Ladder::scenario)
        .collect();
    all.extend([
        Scenario {
            test: "admin_egress_networks",
            probes: ALL_AND_NODES,
            steps: networks_steps(CIDR_ADMIN, "networks-as-peers"),
        },
        Scenario {
            test: "admin_priority",
            probes: TCP_ONLY,
            steps: vec![
                Put(Doc::Yaml(PRIORITY_DENY)),
                Put(Doc::Yaml(PRIORITY_PASS)),
                Put(Doc::Yaml(PRIORITY_BASELINE)),
                Check("deny at 50 before pass at 60", SLYTHERIN_GRYFFINDOR_DENIED),
                Priority("pass-at-60-then-40", 40),
                Check(
                    "pass at 40 first: baseline accepts",
                    SLYTHERIN_GRYFFINDOR_ALLOWED,
                ),
            ],
        },
        Scenario {
            test: "admin_networkpolicy_baseline",
            probes: TCP_ONLY,
            steps: vec![
                Put(Doc::Yaml(TIERS_ADMIN)),
                Put(Doc::Yaml(TIERS_NETPOL)),
                Put(Doc::Yaml(TIERS_BASELINE)),
                Check(
                    "admin deny over the NetworkPolicy",
                    SLYTHERIN_GRYFFINDOR_DENIED,
                ),
                Action("deny-then-pass", Dir::In, 0, "Pass"),
                Check(
                    "ingress passed: the NetworkPolicy allows",
                    &[
                        (S0, G0, Tcp, 80, true),
                        (S1, G0, Tcp, 8080, true),
                        (G0, S0, Tcp, 80, false),
                    ],
                ),
                Action("deny-then-pass", Dir::Out, 0, "Pass"),
                Check(
                    "egress passed: the NetworkPolicy allows",
                    &[(G0, S0, Tcp, 80, true), (G1, S0, Tcp, 8080, true)],
                ),
                Delete("gryffindor/with-slytherin"),
                Check(
                    "NetworkPolicy deleted: the baseline denies",
                    SLYTHERIN_GRYFFINDOR_DENIED,
                ),
            ],
        },
        Scenario {
            test: "admin_egress_nodes",
            probes: ALL_AND_NODES,
            steps: vec![
                Put(Doc::Yaml(NODES_ADMIN)),
                Check(
                    "accept, pass and deny toward nodes",
                    &[
                        (G1, C1, Tcp, 36363, true),
                        (G1, C1, Udp, 34345, true),
                        (G1, C1, Tcp, 36364, false),
                        (G1, C1, Udp, 34346, false),
                        (G1, C1, Sctp, 9003, false),
                    ],
                ),
            ],
        },
        Scenario {
            test: "baseline_egress_networks",
            probes: ALL_AND_NODES,
            steps: networks_steps(CIDR_BASELINE, "default"),
        },
        Scenario {
            test: "baseline_egress_nodes",
            probes: ALL_AND_NODES,
            steps: vec![
                Put(Doc::Yaml(NODES_BASELINE)),
                Check(
                    "a port range toward nodes, the rest denied",
                    &[
                        (G0, C1, Tcp, 36363, true),
                        (G1, C1, Tcp, 36364, true),
                        (G1, C1, Udp, 34346, false),
                        (G1, C1, Sctp, 9003, false),
                    ],
                ),
            ],
        },
        // --- How the tiers meet NetworkPolicy.
        Scenario {
            test: "tiers_admin_deny_beats_networkpolicy_allow",
            probes: TCP_ONLY,
            steps: vec![
                Put(Doc::Yaml(NP_RAVENCLAW_FROM_GR_HU)),
                Check(
                    "the NetworkPolicy alone",
                    &[
                        (G0, R0, Tcp, 80, true),
                        (H0, R1, Tcp, 80, true),
                        (S0, R0, Tcp, 80, false),
                    ],
                ),
                Put(Doc::Yaml(DENY_GR_TO_RA)),
                Check(
                    "the admin Deny wins over the allow",
                    &[
                        (G0, R0, Tcp, 80, false),
                        (G1, R1, Tcp, 8080, false),
                        (H0, R1, Tcp, 80, true),
                        (S0, R0, Tcp, 80, false),
                    ],
                ),
            ],
        },
        Scenario {
            test: "tiers_admin_pass_hands_over_to_networkpolicy",
            probes: TCP_ONLY,
            steps: vec![
                Put(Doc::Yaml(PASS_GR_DENY_REST)),
                Check(
                    "passed with no NetworkPolicy: allowed; the rest denied",
                    &[(G0, R0, Tcp, 8080, true), (H0, R0, Tcp, 80, false)],
                ),
                Put(Doc::Yaml(NP_RAVENCLAW_GR_WEB)),
                Check(
                    "passed: the NetworkPolicy decides",
                    &[
                        (G0, R0, Tcp, 80, true),
                        (G1, R1, Tcp, 8080, false),
                        (H0, R0, Tcp, 80, false),
                    ],
                ),
            ],
        },
        Scenario {
            test: "tiers_baseline_deny_only_where_no_networkpolicy",
            probes: TCP_ONLY,
            steps: vec![
                Put(Doc::Yaml(BASELINE_DENY_INTO_RA)),
                Put(Doc::Yaml(NP_R0_FROM_GR)),
                Check(
                    "luna-0 by its NetworkPolicy, luna-1 by the baseline",
                    &[
                        (G0, R0, Tcp, 80, true),
                        (H0, R0, Tcp, 80, false),
                        (G0, R1, Tcp, 80, false),
                        (H1, R1, Tcp, 8080, false),
                    ],
                ),
                Delete("ravenclaw/luna-0-from-gryffindor"),
                Check(
                    "NetworkPolicy deleted: the baseline denies both",
                    &[(G0, R0, Tcp, 80, false), (G0, R1, Tcp, 80, false)],
                ),
            ],
        },
        Scenario {
            test: "tiers_admin_accept_opens_isolated_pod",
            probes: TCP_ONLY,
            steps: vec![
                Put(Doc::Yaml(NP_RAVENCLAW_DENY_INGRESS)),
                Check(
                    "isolated",
                    &[(G0, R0, Tcp, 80, false), (S0, R1, Tcp, 8080, false)],
                ),
                Put(Doc::Yaml(ACCEPT_GR_INTO_RA)),
                Check(
                    "the admin Accept opens it to gryffindor alone",
                    &[
                        (G0, R0, Tcp, 80, true),
                        (G1, R1, Tcp, 8080, true),
                        (S0, R1, Tcp, 8080, false),
                    ],
                ),
            ],
        },
    ]);
    all
}

/// One `#[test]` per scenario: the conformance ones in both API modules,
/// the tier cases (whose admin side the conformance scenarios already
/// run in both generations) in v1alpha2 only; and the list of names.
macro_rules! admin_tests {
    (both: [$($test:ident),* $(,)?], v1alpha2_only: [$($only:ident),* $(,)?] $(,)?) => {
        /// ClusterNetworkPolicy (v1alpha2).
        mod v1alpha2 {
            $(
                #[test]
                fn $test() {
                    super::run(super::Api::V1alpha2, stringify!($test));
                }
            )*
            $(
                #[test]
                fn $only() {
                    super::run(super::Api::V1alpha2, stringify!($only));
                }
            )*
        }
        /// AdminNetworkPolicy and BaselineAdminNetworkPolicy (v1alpha1).
        mod v1alpha1 {
            $(
                #[test]
                fn $test() {
                    super::run(super::Api::V1alpha1, stringify!($test));
                }
            )*
        }
        const TESTS: &[&str] = &[$(stringify!($test),)* $(stringify!($only)),*];
    };
}

admin_tests!(
    both: [
        admin_ingress_tcp,
        admin_ingress_udp,
        admin_ingress_sctp,
        admin_egress_tcp,
        admin_egress_udp,
        admin_egress_sctp,
        admin_both_directions,
        admin_egress_networks,
        admin_priority,
        admin_networkpolicy_baseline,
        admin_egress_nodes,
        baseline_ingress_tcp,
        baseline_ingress_udp,
        baseline_ingress_sctp,
        baseline_egress_tcp,
        baseline_egress_udp,
        baseline_egress_sctp,
        baseline_both_directions,
        baseline_egress_networks,
        baseline_egress_nodes,
    ],
    v1alpha2_only: [
        tiers_admin_deny_beats_networkpolicy_allow,
        tiers_admin_pass_hands_over_to_networkpolicy,
        tiers_baseline_deny_only_where_no_networkpolicy,
        tiers_admin_accept_opens_isolated_pod,
    ],
);

#[test]
fn every_scenario_is_a_test() {
    let mut table: Vec<&str> = scenarios().iter().map(|s| s.test).collect();
    let mut tests = TESTS.to_vec();
    table.sort();
    tests.sort();
    assert_eq!(table, tests);
}

/// Both renderings load as the compiler's model, every document of every
/// scenario; the v1alpha1 one in the kinds, actions and port forms of
/// that generation.
#[test]
fn every_document_renders_in_both_generations() {
    let mut n = 0;
    for s in scenarios() {
        for step in &s.steps {
            let Put(doc) = step else { continue };
            let v = doc.to_value();
            for api in [Api::V1alpha2, Api::V1alpha1] {
                let r = render(&v, api);
                let text = serde_json::to_string(&r).expect("serialize");
                let loaded = policy_compiler::parse("scenario.yaml", &text);
                assert!(
                    loaded.errors.is_empty() && loaded.objects.len() == 1,
                    "{} {api:?}: {:?}\n{text}",
                    s.test,
                    loaded.errors
                );
                n += 1;
            }
        }
    }
    assert!(n > 40);
    let v = Doc::Yaml(NODES_BASELINE).to_value();
    let r = render(&v, Api::V1alpha1);
    assert_eq!(r["kind"], "BaselineAdminNetworkPolicy");
    assert!(r["spec"].get("priority").is_none() && r["spec"].get("tier").is_none());
    assert_eq!(r["spec"]["egress"][0]["action"], "Allow");
    assert_eq!(
        r["spec"]["egress"][0]["ports"][0],
        json!({"portRange": {"protocol": "TCP", "start": 36363, "end": 36364}})
    );
    let v = ladder(A, "x", 3, GR, IN_TCP, None).to_value();
    let r = render(&v, Api::V1alpha1);
    assert_eq!(r["kind"], "AdminNetworkPolicy");
    assert_eq!(r["spec"]["priority"], 3);
    assert_eq!(r["spec"]["ingress"][2]["action"], "Pass");
    assert_eq!(
        r["spec"]["ingress"][3]["ports"][0],
        json!({"portNumber": {"protocol": "TCP", "port": 80}})
    );
}

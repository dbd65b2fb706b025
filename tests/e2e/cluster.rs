//! A simulated cluster: the network topology (`netns`), the servers in
//! every pod (`probe`), and the Kubernetes view of the same cluster written
//! as manifests, so nftpol compiles exactly what the packets traverse.
//!
//! A scenario mutates labels and policies step by step; every
//! [`SimCluster::step`] rewrites the manifests, programs every node with
//! the nftpol binary, probes the full matrix and compares it with the
//! compiler's semantic evaluator (see `oracle`).

use crate::netns::{run, Topology, PREFIX};
use crate::oracle;
use crate::probe::{self, Probe, Servers, PORTS};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

pub type Labels = BTreeMap<String, String>;

/// First-pass probe timeout: a drop shows as a timeout, so this bounds the
/// cost of every denied cell.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(400);
/// Second look at cells that were expected open but looked closed, so a
/// SYN or datagram lost on a loaded machine is not reported as a wrongly
/// dropped packet (TCP retransmits its SYN after 1 s).
pub const RETRY_TIMEOUT: Duration = Duration::from_millis(1500);
/// Later looks at the cells still closed after [`RETRY_TIMEOUT`]. A UDP
/// echo needs the server thread to run, and on a loaded 2-core CI machine
/// a thread can wait seconds for a CPU; each round costs nothing unless a
/// cell expected open still looks closed, and a cell wrongly dropped stays
/// closed through all of them.
const LATE_RETRY_TIMEOUTS: [Duration; 2] = [Duration::from_secs(4), Duration::from_secs(10)];

/// x/a open to namespace y on TCP 80: what the counter and live explain
/// tests enforce.
pub const X_A_FROM_Y: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-from-y, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]
    ports: [{port: 80}]
"#;

pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Kubernetes-side description of one pod (its network side is in
/// `topo.pods` at the same index).
#[derive(Clone, Debug)]
pub struct PodModel {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
}

/// A port every pod serves (TCP and UDP by real servers; SCTP is only
/// declared, and probed by raw packets) and declares on a container of
/// its own, so named ports resolve.
#[derive(Clone, Debug)]
pub struct ServedPort {
    pub container: String,
    pub name: Option<String>,
    pub port: u16,
    /// "TCP", "UDP" or "SCTP".
    pub protocol: &'static str,
}

/// The upstream netpol model's ports: 80 and 81 on every protocol, named
/// `serve-<port>-<protocol>` as upstream names them.
pub fn netpol_ports() -> Vec<ServedPort> {
    let mut v = Vec::new();
    for port in PORTS {
        for proto in ["TCP", "UDP", "SCTP"] {
            let lower = proto.to_lowercase();
            v.push(ServedPort {
                container: format!("cont-{port}-{lower}"),
                name: Some(format!("serve-{port}-{lower}")),
                port,
                protocol: proto,
            });
        }
    }
    v
}

/// How nodes are programmed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Programmer {
    /// `nftpol apply` (netlink, incremental).
    Apply,
    /// `nftpol compile | nft -f -`, to compare the nft path with netlink
    /// (`NFTPOL_E2E_PROGRAMMER=compile`).
    CompileNft,
    /// Deliberately broken, for the harness's self-test only: deletes the
    /// table, waits, then loads it, leaving a window with no filtering.
    GappyForSelfTest,
}

impl Programmer {
    /// `apply`, unless NFTPOL_E2E_PROGRAMMER=compile asks for the nft path.
    pub fn detect() -> Programmer {
        match std::env::var("NFTPOL_E2E_PROGRAMMER").as_deref() {
            Ok("compile") => Programmer::CompileNft,
            _ => Programmer::Apply,
        }
    }
}

/// The nftpol binary under test: a private copy made once per process,
/// so a `cargo build` running alongside in the same tree (several people
/// share one here) cannot swap the binary halfway through the suite.
pub fn nftpol_bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let built = env!("CARGO_BIN_EXE_nftpol");
        let dir = std::env::temp_dir().join(format!("{PREFIX}{}-bin", std::process::id()));
        let copy = dir.join("nftpol");
        // Copied by a `cp` process, not by this one: a child another test
        // thread forks while this process held the copy open for writing
        // would inherit that descriptor until its own exec, and executing
        // the copy meanwhile fails with ETXTBSY ("text file busy").
        let ok = std::fs::create_dir_all(&dir).is_ok()
            && Command::new("cp")
                .arg(built)
                .arg(&copy)
                .stdin(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
        match (ok, copy.to_str()) {
            (true, Some(p)) => p.to_string(),
            // Falling back to the build output is still correct.
            _ => built.to_string(),
        }
    })
}

/// The outcome of one step.
pub struct StepReport {
    pub probes: usize,
    pub allowed: usize,
    pub mismatches: Vec<(Probe, bool, bool)>,
    pub text: String,
}

pub struct SimCluster {
    // Field order is drop order: servers close their sockets before the
    // namespaces go away.
    servers: Vec<Servers>,
    pub topo: Topology,
    pub namespaces: BTreeMap<String, Labels>,
    pub pods: Vec<PodModel>,
    /// Policies by "namespace/name", as YAML documents.
    pub policies: BTreeMap<String, String>,
    /// More objects for cluster.yaml (e.g. hostNetwork pods), as YAML.
    pub extra_objects: Vec<String>,
    pub dir: PathBuf,
    pub programmer: Programmer,
    /// What every pod serves and declares.
    pub served: Vec<ServedPort>,
    step_no: usize,
    /// Whether every link was seen up (checked once, before the first
    /// programming, so pods can still be added until then).
    links_up: bool,
    /// Whether [`SimCluster::observe`] gives cells expected open the late
    /// retry rounds ([`LATE_RETRY_TIMEOUTS`]). Only the harness's
    /// self-tests turn them off: their cells are dropped on purpose, and
    /// every late round would only add its wait.
    pub late_retries: bool,
}

impl SimCluster {
    /// An empty two-node cluster, pods routed (or bridged) on their node.
    pub fn new(bridged: bool) -> SimCluster {
        SimCluster::with_ports(bridged, netpol_ports())
    }

    /// An empty two-node cluster whose pods serve `served`.
    pub fn with_ports(bridged: bool, served: Vec<ServedPort>) -> SimCluster {
        let topo = Topology::new(2, bridged);
        let dir = std::env::temp_dir().join(format!("{PREFIX}{}", topo.tag));
        std::fs::create_dir_all(&dir).expect("create manifest dir");
        SimCluster {
            servers: Vec::new(),
            topo,
            namespaces: BTreeMap::new(),
            pods: Vec::new(),
            policies: BTreeMap::new(),
            extra_objects: Vec::new(),
            dir,
            programmer: Programmer::detect(),
            served,
            step_no: 0,
            links_up: false,
            late_retries: true,
        }
    }

    /// The upstream netpol e2e model: namespaces x, y, z (label ns=<name>),
    /// pods a, b, c in each (label pod=<name>), all serving 80 and 81 on
    /// TCP and UDP. Pods alternate between the two nodes so both same-node
    /// and cross-node pairs are probed.
    pub fn upstream_model() -> SimCluster {
        Self::upstream_model_on(false)
    }

    /// [`SimCluster::upstream_model`] with routed or bridged pod links.
    pub fn upstream_model_on(bridged: bool) -> SimCluster {
        let mut c = SimCluster::new(bridged);
        let mut i = 0;
        for ns in ["x", "y", "z"] {
            c.add_namespace(ns, labels(&[("ns", ns)]));
            for pod in ["a", "b", "c"] {
                let node = if i % 2 == 0 { "node1" } else { "node2" };
                c.add_pod(ns, pod, node, labels(&[("pod", pod)]));
                i += 1;
            }
        }
        c
    }

    pub fn add_namespace(&mut self, name: &str, labels: Labels) {
        self.namespaces.insert(name.to_string(), labels);
    }

    pub fn add_pod(&mut self, namespace: &str, name: &str, node: &str, labels: Labels) {
        let net = self.topo.add_pod(node);
        let (tcp, udp) = self.served_ports();
        let any = [std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)];
        self.servers
            .push(Servers::start_ports(&net.netns, &any, &tcp, &udp));
        self.pods.push(PodModel {
            namespace: namespace.to_string(),
            name: name.to_string(),
            labels,
        });
    }

    /// The TCP and the UDP ports of `served`.
    fn served_ports(&self) -> (Vec<u16>, Vec<u16>) {
        let of = |proto: &str| -> Vec<u16> {
            self.served
                .iter()
                .filter(|s| s.protocol == proto)
                .map(|s| s.port)
                .collect()
        };
        (of("TCP"), of("UDP"))
    }

    /// Starts TCP and UDP servers on the given ports of every node's
    /// fabric addresses (what a hostNetwork pod serves).
    pub fn serve_ports_on_nodes(&mut self, tcp: &[u16], udp: &[u16]) {
        for n in &self.topo.nodes {
            let addrs = [n.fabric_v4.into(), n.fabric_v6.into()];
            self.servers
                .push(Servers::start_ports(&n.netns, &addrs, tcp, udp));
        }
    }

    /// Starts the TCP and UDP servers inside a node namespace too, for
    /// tests of pod-to-node traffic (the `input` hook).
    pub fn serve_on_nodes(&mut self) {
        for n in &self.topo.nodes {
            let addrs = [n.fabric_v4.into(), n.fabric_v6.into()];
            self.servers.push(Servers::start_on(&n.netns, &addrs));
        }
    }

    pub fn pod_index(&self, namespace: &str, name: &str) -> usize {
        self.pods
            .iter()
            .position(|p| p.namespace == namespace && p.name == name)
            .unwrap_or_else(|| panic!("no pod {namespace}/{name}"))
    }

    pub fn set_pod_labels(&mut self, namespace: &str, name: &str, labels: Labels) {
        let i = self.pod_index(namespace, name);
        self.pods[i].labels = labels;
    }

    pub fn set_namespace_labels(&mut self, name: &str, labels: Labels) {
        *self
            .namespaces
            .get_mut(name)
            .unwrap_or_else(|| panic!("no namespace {name}")) = labels;
    }

    /// Adds or replaces a NetworkPolicy given as YAML (must name its
    /// namespace in metadata).
    pub fn put_policy(&mut self, yaml: &str) {
        let v = policy_compiler::manifest::documents(yaml)
            .expect("policy YAML parses")
            .into_iter()
            .next()
            .expect("one document");
        let ns = v["metadata"]["namespace"]
            .as_str()
            .expect("policy has metadata.namespace");
        let name = v["metadata"]["name"]
            .as_str()
            .expect("policy has metadata.name");
        self.policies
            .insert(format!("{ns}/{name}"), yaml.to_string());
    }

    pub fn delete_policy(&mut self, namespace: &str, name: &str) {
        self.policies
            .remove(&format!("{namespace}/{name}"))
            .unwrap_or_else(|| panic!("no policy {namespace}/{name}"));
    }

    pub fn clear_policies(&mut self) {
        self.policies.clear();
    }

    fn pod_manifest(&self, i: usize) -> Value {
        let p = &self.pods[i];
        let net = &self.topo.pods[i];
        // One container per served (port, protocol), so named-port
        // policies resolve as in the upstream suites.
        let containers: Vec<Value> = self
            .served
            .iter()
            .map(|s| {
                let mut port = json!({"containerPort": s.port, "protocol": s.protocol});
                if let Some(name) = &s.name {
                    port["name"] = json!(name);
                }
                json!({
                    "name": s.container,
                    "image": "registry.k8s.io/e2e-test-images/agnhost:2.53",
                    "ports": [port],
                })
            })
            .collect();
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": p.name, "namespace": p.namespace, "labels": p.labels},
            "spec": {"nodeName": net.node, "containers": containers},
            "status": {
                "phase": "Running",
                "podIP": net.v4.to_string(),
                "podIPs": [{"ip": net.v4.to_string()}, {"ip": net.v6.to_string()}],
            },
        })
    }

    /// The cluster's manifests as (file name, YAML text).
    pub fn manifests(&self) -> Vec<(String, String)> {
        let mut cluster = String::new();
        for (name, l) in &self.namespaces {
            let mut l = l.clone();
            l.insert("kubernetes.io/metadata.name".into(), name.clone());
            let doc = json!({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": name, "labels": l}});
            cluster.push_str("---\n");
            cluster.push_str(&serde_json::to_string(&doc).expect("serialize namespace"));
            cluster.push('\n');
        }
        for i in 0..self.pods.len() {
            cluster.push_str("---\n");
            cluster.push_str(&serde_json::to_string(&self.pod_manifest(i)).expect("serialize pod"));
            cluster.push('\n');
        }
        for doc in &self.extra_objects {
            cluster.push_str("---\n");
            cluster.push_str(doc.trim_start_matches("---\n"));
            if !doc.ends_with('\n') {
                cluster.push('\n');
            }
        }
        let mut policies = String::new();
        for yaml in self.policies.values() {
            policies.push_str("---\n");
            policies.push_str(yaml.trim_start_matches("---\n"));
            if !yaml.ends_with('\n') {
                policies.push('\n');
            }
        }
        vec![
            ("cluster.yaml".to_string(), cluster),
            ("policies.yaml".to_string(), policies),
        ]
    }

    /// `<node>.interfaces`: each pod's host-side interface (`vp<index>`,
    /// its veth end or bridge port), the map `--pod-interfaces` reads, so
    /// every node is compiled with source validation deterministically
    /// (learning the map from the kernel is tested in `attacker`).
    pub fn interface_maps(&self) -> Vec<(String, String)> {
        self.topo
            .nodes
            .iter()
            .map(|n| {
                let mut map = String::new();
                for (i, pod) in self.pods.iter().enumerate() {
                    if self.topo.pods[i].node == n.name {
                        map.push_str(&format!("{}/{}: vp{i}\n", pod.namespace, pod.name));
                    }
                }
                (format!("{}.interfaces", n.name), map)
            })
            .collect()
    }

    /// Writes the manifests into `dir`, each file atomically (a watcher
    /// never sees half a file).
    pub fn write_manifests_to(&self, dir: &std::path::Path) {
        std::fs::create_dir_all(dir).expect("create manifest dir");
        for (name, text) in self.manifests().into_iter().chain(self.interface_maps()) {
            let tmp = dir.join(format!(".{name}.tmp"));
            std::fs::write(&tmp, text).expect("write manifest");
            std::fs::rename(&tmp, dir.join(name)).expect("rename manifest");
        }
    }

    /// Writes the manifests into a fresh directory for this step.
    pub fn write_manifests(&mut self) -> PathBuf {
        self.step_no += 1;
        let dir = self.dir.join(format!("step{}", self.step_no));
        std::fs::create_dir_all(&dir).expect("create step dir");
        for (name, text) in self.manifests().into_iter().chain(self.interface_maps()) {
            std::fs::write(dir.join(name), text).expect("write manifest");
        }
        dir
    }

    /// Programs one node from `dir`; returns the tool's output.
    pub fn program_node(&self, node: &str, dir: &std::path::Path) -> Result<String, String> {
        let netns = &self.topo.node(node).netns;
        let dir = dir.to_str().expect("utf-8 temp dir");
        let out = match self.programmer {
            Programmer::Apply => Command::new("ip")
                .args(["netns", "exec", netns, nftpol_bin(), "apply"])
                .args(["--manifests", dir, "--node-name", node])
                .args(["--pod-interfaces", &format!("{dir}/{node}.interfaces")])
                .output(),
            Programmer::CompileNft => {
                let script = format!(
                    "{} compile --manifests {dir} --node-name {node} --pod-interfaces {dir}/{node}.interfaces | ip netns exec {netns} nft -f -",
                    nftpol_bin()
                );
                Command::new("bash")
                    .args(["-o", "pipefail", "-c", &script])
                    .output()
            }
            Programmer::GappyForSelfTest => {
                let script = format!(
                    "ip netns exec {netns} nft delete table inet nftpol 2>/dev/null; sleep 0.2; \
                     {} compile --manifests {dir} --node-name {node} --pod-interfaces {dir}/{node}.interfaces | ip netns exec {netns} nft -f -",
                    nftpol_bin()
                );
                Command::new("bash")
                    .args(["-o", "pipefail", "-c", &script])
                    .output()
            }
        }
        .map_err(|e| format!("cannot run nftpol: {e}"))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() {
            Ok(text)
        } else {
            Err(format!(
                "programming {node} failed ({}): {text}",
                out.status
            ))
        }
    }

    /// Loads an nft script into one node (`nft -f` inside its namespace);
    /// used to install a deliberately broken ruleset.
    pub fn load_nft(&self, node: &str, script: &str) {
        use std::io::Write as _;
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.topo.node(node).netns,
                "nft",
                "-f",
                "-",
            ])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("spawn nft");
        child
            .stdin
            .take()
            .expect("nft stdin")
            .write_all(script.as_bytes())
            .expect("write nft script");
        assert!(child.wait().expect("wait nft").success(), "nft -f failed");
    }

    /// `nftpol compile` output for one node from a manifest directory.
    pub fn compile(&self, node: &str, dir: &std::path::Path) -> String {
        let dir = dir.to_str().expect("utf-8 temp dir");
        let map = format!("{dir}/{node}.interfaces");
        run(Command::new(nftpol_bin()).args([
            "compile",
            "--manifests",
            dir,
            "--node-name",
            node,
            "--pod-interfaces",
            &map,
        ]))
    }

    /// Writes manifests and programs every node.
    pub fn program(&mut self) -> PathBuf {
        if !self.links_up {
            self.topo.wait_links_up();
            self.links_up = true;
        }
        let dir = self.write_manifests();
        let nodes: Vec<String> = self.topo.nodes.iter().map(|n| n.name.clone()).collect();
        for node in nodes {
            if let Err(e) = self.program_node(&node, &dir) {
                panic!("{e}");
            }
        }
        dir
    }

    /// `nftpol ARGS` run in `node`'s namespace.
    pub fn nftpol(&self, node: &str, args: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", &self.topo.node(node).netns, nftpol_bin()])
            .args(args)
            .output()
            .expect("run nftpol")
    }

    /// `nftpol explain --live` of TCP 80 from `from` to `to` (pods as
    /// `namespace/name`) in `node`'s namespace, against the manifests in
    /// `dir`.
    pub fn explain_live(
        &self,
        node: &str,
        dir: &str,
        from: &str,
        to: &str,
    ) -> std::process::Output {
        self.nftpol(
            node,
            &[
                "explain",
                "--live",
                "--manifests",
                dir,
                "--node-name",
                node,
                "--from",
                from,
                "--to",
                to,
                "--port",
                "80/TCP",
            ],
        )
    }

    /// `nft list table inet nftpol` of one node (for failure reports).
    pub fn ruleset(&self, node: &str) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.topo.node(node).netns])
            .args(["nft", "list", "table", "inet", "nftpol"])
            .output();
        match out {
            Ok(o) => format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => format!("cannot list ruleset: {e}"),
        }
    }

    pub fn label(&self, i: usize) -> String {
        format!("{}/{}", self.pods[i].namespace, self.pods[i].name)
    }

    pub fn netns_and_ips(&self) -> (Vec<String>, Vec<(std::net::Ipv4Addr, std::net::Ipv6Addr)>) {
        (
            self.topo.pods.iter().map(|p| p.netns.clone()).collect(),
            self.topo.pods.iter().map(|p| (p.v4, p.v6)).collect(),
        )
    }

    /// Probes `probes` with the retry policy described at
    /// [`RETRY_TIMEOUT`] given the expected verdicts.
    pub fn observe(&self, probes: &[Probe], expected: &[bool]) -> Vec<bool> {
        let (netns, ips) = self.netns_and_ips();
        let late: &[Duration] = if self.late_retries {
            &LATE_RETRY_TIMEOUTS
        } else {
            &[]
        };
        observe_rounds(probes, &netns, &ips, expected, PROBE_TIMEOUT, late)
    }

    /// What the evaluator says for every probe of the current manifests.
    pub fn expected(&self, probes: &[Probe]) -> Vec<bool> {
        let model = oracle::Model::load(&self.manifests());
        probes
            .iter()
            .map(|p| {
                // A pod reaching its own IP never leaves its namespace
                // (loopback), so no node sees it: always allowed, as the
                // upstream suite also expects.
                p.src == p.dst
                    || model.allowed(&self.pods[p.src], &self.pods[p.dst], p.v6, p.proto, p.port)
            })
            .collect()
    }

    /// Programs every node, probes the full matrix (IPv4 and IPv6, TCP and
    /// UDP, ports 80 and 81) and compares it with the evaluator.
    pub fn verify(&mut self, step: &str) -> StepReport {
        self.verify_with(step, |_| {})
    }

    /// Like [`SimCluster::verify`], with a hook that may alter the expected
    /// matrix (used by the harness's self-test).
    pub fn verify_with(&mut self, step: &str, tweak: impl FnOnce(&mut [bool])) -> StepReport {
        let t0 = Instant::now();
        self.program();
        self.verify_programmed(step, t0, tweak)
    }

    /// Probes and compares against whatever the nodes hold now (the
    /// caller programmed them), with the expected side from the current
    /// manifests.
    pub fn verify_programmed(
        &mut self,
        step: &str,
        t0: Instant,
        tweak: impl FnOnce(&mut [bool]),
    ) -> StepReport {
        let probes = probe::all_probes(self.pods.len(), &[false, true]);
        let mut expected = self.expected(&probes);
        tweak(&mut expected);
        let observed = self.observe(&probes, &expected);
        self.compare(step, &probes, &expected, &observed, t0)
    }

    pub fn compare(
        &self,
        step: &str,
        probes: &[Probe],
        expected: &[bool],
        observed: &[bool],
        t0: Instant,
    ) -> StepReport {
        let mismatches: Vec<(Probe, bool, bool)> = (0..probes.len())
            .filter(|&i| expected[i] != observed[i])
            .map(|i| (probes[i], expected[i], observed[i]))
            .collect();
        let mut text = String::new();
        let _ = writeln!(
            text,
            "step {step:?}: {} probes, {} allowed, {} mismatches, {:.1?}",
            probes.len(),
            observed.iter().filter(|&&b| b).count(),
            mismatches.len(),
            t0.elapsed()
        );
        if !mismatches.is_empty() {
            text.push_str(&self.render_mismatch(probes, expected, observed, &mismatches));
        }
        StepReport {
            probes: probes.len(),
            allowed: observed.iter().filter(|&&b| b).count(),
            mismatches,
            text,
        }
    }

    /// Both matrices of every (family, protocol, port) that has a
    /// difference, then the rulesets of the nodes involved.
    fn render_mismatch(
        &self,
        probes: &[Probe],
        expected: &[bool],
        observed: &[bool],
        mismatches: &[(Probe, bool, bool)],
    ) -> String {
        let mut text = String::new();
        let mut groups: Vec<(bool, probe::Proto, u16)> = mismatches
            .iter()
            .map(|(p, _, _)| (p.v6, p.proto, p.port))
            .collect();
        groups.sort();
        groups.dedup();
        let n = self.pods.len();
        for (v6, proto, port) in groups {
            let fam = if v6 { "IPv6" } else { "IPv4" };
            let _ = writeln!(
                text,
                "\n{fam} {}/{port}: rows = from, columns = to; '.' allowed, 'X' denied; \
                 in the observed table '!' marks a wrongly allowed and '#' a wrongly dropped cell",
                proto.name()
            );
            let mut exp = vec![vec![false; n]; n];
            let mut obs = vec![vec![false; n]; n];
            for (i, p) in probes.iter().enumerate() {
                if p.v6 == v6 && p.proto == proto && p.port == port {
                    exp[p.src][p.dst] = expected[i];
                    obs[p.src][p.dst] = observed[i];
                }
            }
            let header: String = (0..n).map(|j| format!("{:>5}", self.label(j))).collect();
            let _ = writeln!(text, "expected{:>9}{header}   | observed{header}", "");
            for s in 0..n {
                let e: String = (0..n)
                    .map(|d| format!("{:>5}", if exp[s][d] { "." } else { "X" }))
                    .collect();
                let o: String = (0..n)
                    .map(|d| {
                        let c = match (exp[s][d], obs[s][d]) {
                            (false, true) => "!",
                            (true, false) => "#",
                            (_, true) => ".",
                            (_, false) => "X",
                        };
                        format!("{c:>5}")
                    })
                    .collect();
                let _ = writeln!(text, "{:<17}{e}   | {:<8}{o}", self.label(s), "");
            }
        }
        let mut nodes: Vec<&str> = mismatches
            .iter()
            .flat_map(|(p, _, _)| [p.src, p.dst])
            .map(|i| self.topo.pods[i].node.as_str())
            .collect();
        nodes.sort();
        nodes.dedup();
        for node in nodes {
            let _ = writeln!(
                text,
                "\n--- {node}: nft list table inet nftpol ---\n{}",
                self.ruleset(node)
            );
        }
        let _ = writeln!(text, "\n--- manifests ---");
        for (name, body) in self.manifests() {
            if name == "policies.yaml" {
                let _ = writeln!(text, "{body}");
            }
        }
        text
    }

    /// [`SimCluster::verify`], panicking with the full report on a mismatch.
    pub fn check(&mut self, step: &str) {
        let r = self.verify(step);
        eprint!(
            "{}",
            r.text
                .lines()
                .next()
                .map(|l| format!("{l}\n"))
                .unwrap_or_default()
        );
        assert!(r.mismatches.is_empty(), "{}", r.text);
    }
}

/// Probes with the retry policy of [`RETRY_TIMEOUT`]: `netns[p.src]` is
/// where probe `p` starts, `ips[p.dst]` where it goes.
pub fn observe_between(
    probes: &[Probe],
    netns: &[String],
    ips: &[(std::net::Ipv4Addr, std::net::Ipv6Addr)],
    expected: &[bool],
) -> Vec<bool> {
    observe_between_within(probes, netns, ips, expected, PROBE_TIMEOUT)
}

/// [`observe_between`] with another first-pass timeout: what a denied
/// cell costs. Cells expected open still get the full retry.
pub fn observe_between_within(
    probes: &[Probe],
    netns: &[String],
    ips: &[(std::net::Ipv4Addr, std::net::Ipv6Addr)],
    expected: &[bool],
    first: Duration,
) -> Vec<bool> {
    observe_rounds(probes, netns, ips, expected, first, &LATE_RETRY_TIMEOUTS)
}

/// [`observe_between_within`] with the given late retry rounds.
fn observe_rounds(
    probes: &[Probe],
    netns: &[String],
    ips: &[(std::net::Ipv4Addr, std::net::Ipv6Addr)],
    expected: &[bool],
    first: Duration,
    late: &[Duration],
) -> Vec<bool> {
    let mut observed = probe::run_probes(probes, netns, ips, first);
    for &timeout in std::iter::once(&RETRY_TIMEOUT).chain(late) {
        let retry: Vec<usize> = (0..probes.len())
            .filter(|&i| expected[i] && !observed[i])
            .collect();
        if retry.is_empty() {
            break;
        }
        let again: Vec<Probe> = retry.iter().map(|&i| probes[i]).collect();
        let res = probe::run_probes(&again, netns, ips, timeout);
        for (k, &i) in retry.iter().enumerate() {
            observed[i] = res[k];
        }
    }
    observed
}

impl Drop for SimCluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs a command inside a namespace and returns its stdout.
pub fn netns_exec(netns: &str, args: &[&str]) -> String {
    run(Command::new("ip").args(["netns", "exec", netns]).args(args))
}

//! The simulated cluster's network: node and pod network namespaces, veth
//! links, addresses and routes, all created with `ip -n <ns>` so nothing is
//! ever configured in the host's own namespace.
//!
//! Shape (per test): two node namespaces joined by one veth pair (the
//! "fabric"); every pod namespace hangs off its node by a veth pair, with
//! the pod's /32 and /128 routed on the node side and a link-local default
//! gateway on the pod side (as routed CNIs such as Calico do). Nodes route
//! the other node's pod CIDR over the fabric, so cross-node traffic crosses
//! both nodes' `forward` hooks, exactly where nftpol filters.
//!
//! [`Topology`] owns every namespace it creates and deletes them in `Drop`,
//! so a failing assertion or a panic still cleans up.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Prefix of every namespace the e2e suite creates; a leftover one is
/// recognisable (and safe to delete) by it.
pub const PREFIX: &str = "nftpol-t-";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A name unique to this process and call, so tests running in parallel
/// (and concurrent `cargo test` runs) never collide.
pub fn unique_tag() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs a command, panicking with its stderr on failure: a topology that
/// cannot be built is a broken test environment, not a test result.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ip -n <ns> <args...>`.
pub fn ip(ns: &str, args: &[&str]) {
    run(Command::new("ip").arg("-n").arg(ns).args(args));
}

/// Sets sysctls inside a namespace (`ip netns exec` gives the command a
/// private /proc/sys view of that namespace).
fn sysctl(ns: &str, settings: &[&str]) {
    run(Command::new("ip")
        .args(["netns", "exec", ns, "sysctl", "-q", "-w"])
        .args(settings));
}

/// Whether the suite can build namespaces at all (root with CAP_SYS_ADMIN
/// and CAP_NET_ADMIN, iproute2 and nft installed). When not, reports the
/// skip of `test` (a failure under CI, see `nftpol_test_support::skip`).
pub fn can_run(test: &str) -> bool {
    if let Some(why) = nftpol_test_support::privilege::missing_privilege() {
        nftpol_test_support::skip(test, &format!("the netns e2e suite {why}"));
        return false;
    }
    static SWEEP: std::sync::Once = std::sync::Once::new();
    SWEEP.call_once(sweep_stale);
    true
}

/// Deletes namespaces an earlier run left behind when it was killed
/// (SIGKILL skips `Drop`): only names of this suite's exact shape,
/// `nftpol-t-<pid>-<n>-...`, whose process no longer exists.
fn sweep_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let mut parts = rest.split('-');
        let (Some(pid), Some(n)) = (parts.next(), parts.next()) else {
            continue;
        };
        let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !numeric(pid) || !numeric(n) || std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        eprintln!("removing stale test namespace {name} (process {pid} is gone)");
        let _ = Command::new("ip")
            .args(["netns", "del", name])
            .stdin(Stdio::null())
            .status();
    }
    // Same for the per-process temp directories (manifests, the private
    // copy of the binary): `nftpol-t-<pid>-<n or "bin">`.
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let mut parts = rest.split('-');
        let (Some(pid), Some(n), None) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if numeric(pid)
            && (numeric(n) || n == "bin")
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
            && e.path().is_dir()
        {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// One simulated node.
#[derive(Clone, Debug)]
pub struct Node {
    /// Kubernetes node name (spec.nodeName).
    pub name: String,
    /// Network namespace name.
    pub netns: String,
    /// 1-based index; the pod CIDRs are 10.244.<index>.0/24 and
    /// fd00:10:244:<index>::/64.
    pub index: u8,
    /// Fabric address of this node.
    pub fabric_v4: Ipv4Addr,
    pub fabric_v6: Ipv6Addr,
}

/// One simulated pod's network side.
#[derive(Clone, Debug)]
pub struct PodNet {
    pub node: String,
    pub netns: String,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
}

/// Every namespace of one simulated cluster; deleting them all in `Drop`.
pub struct Topology {
    pub tag: String,
    /// Pods of a node share a Linux bridge (L2 between same-node pods,
    /// seen by nftables through br_netfilter) instead of routed veths.
    pub bridged: bool,
    pub nodes: Vec<Node>,
    pub pods: Vec<PodNet>,
    /// Every netns created, in creation order (deleted in reverse).
    created: Vec<String>,
}

/// The bridge of a bridged node.
pub const BRIDGE: &str = "cbr0";

/// A node's bridge with the first address of its pod CIDRs, and
/// br_netfilter's hooks on (per namespace), so bridged same-node traffic
/// crosses the inet `forward` hook as it does on bridge-based CNIs.
fn bridge_setup(netns: &str, index: u8) {
    ip(netns, &["link", "add", BRIDGE, "type", "bridge"]);
    ip(
        netns,
        &[
            "addr",
            "add",
            &format!("10.244.{index}.1/24"),
            "dev",
            BRIDGE,
        ],
    );
    ip(
        netns,
        &[
            "addr",
            "add",
            &format!("fd00:10:244:{index}::1/64"),
            "dev",
            BRIDGE,
            "nodad",
        ],
    );
    ip(netns, &["link", "set", BRIDGE, "up"]);
    sysctl(
        netns,
        &[
            "net.bridge.bridge-nf-call-iptables=1",
            "net.bridge.bridge-nf-call-ip6tables=1",
        ],
    );
}

/// Whether bridged traffic can be made visible to nftables' inet hooks
/// (br_netfilter loaded; the suite never loads kernel modules itself).
pub fn br_netfilter_available() -> bool {
    std::path::Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables").exists()
}

/// How long [`Topology::wait_links_up`] waits at most.
const LINKS_UP_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

/// The pod side's default gateways: fixed link-local addresses configured
/// on every node-side veth, so no per-pod gateway bookkeeping is needed.
const GW_V4: &str = "169.254.1.1";
const GW_V6: &str = "fe80::1";

/// Sysctls of a fresh namespace: no DAD (addresses usable at once, so no
/// sleeping for IPv6 to settle) and forwarding where needed.
const NO_DAD: [&str; 2] = [
    "net.ipv6.conf.all.accept_dad=0",
    "net.ipv6.conf.default.accept_dad=0",
];

impl Topology {
    /// Creates `node_count` nodes (1..=9) joined by a fabric; pods are
    /// added with [`Topology::add_pod`].
    pub fn new(node_count: u8, bridged: bool) -> Topology {
        assert!((1..=2).contains(&node_count), "1 or 2 nodes supported");
        let tag = unique_tag();
        let mut topo = Topology {
            tag,
            bridged,
            nodes: Vec::new(),
            pods: Vec::new(),
            created: Vec::new(),
        };
        for index in 1..=node_count {
            let netns = format!("{PREFIX}{}-n{index}", topo.tag);
            topo.add_netns(&netns);
            sysctl(
                &netns,
                &[
                    NO_DAD[0],
                    NO_DAD[1],
                    "net.ipv4.ip_forward=1",
                    "net.ipv6.conf.all.forwarding=1",
                    "net.ipv6.conf.default.forwarding=1",
                ],
            );
            ip(&netns, &["link", "set", "lo", "up"]);
            if bridged {
                bridge_setup(&netns, index);
            }
            topo.nodes.push(Node {
                name: format!("node{index}"),
                netns,
                index,
                fabric_v4: Ipv4Addr::new(172, 31, 255, index),
                fabric_v6: format!("fd00:ffff::{index}")
                    .parse()
                    .expect("static IPv6 literal"),
            });
        }
        if node_count == 2 {
            topo.connect_fabric();
        }
        topo
    }

    fn add_netns(&mut self, name: &str) {
        // Names are unique in this process, so one that exists already was
        // left by a killed earlier process with the same pid (pids are
        // reused, often within 32768), which the sweep cannot tell from
        // this one: stale.
        if std::path::Path::new("/run/netns").join(name).exists() {
            let _ = Command::new("ip")
                .args(["netns", "del", name])
                .stdin(Stdio::null())
                .status();
        }
        run(Command::new("ip").args(["netns", "add", name]));
        // Recorded right away so a later failure still deletes it.
        self.created.push(name.to_string());
    }

    /// One veth pair between the two node namespaces, plus routes to the
    /// other node's pod CIDRs through it.
    fn connect_fabric(&mut self) {
        let (a, b) = (self.nodes[0].clone(), self.nodes[1].clone());
        ip(
            &a.netns,
            &[
                "link", "add", "fabric", "type", "veth", "peer", "name", "fabric", "netns",
                &b.netns,
            ],
        );
        for (me, other) in [(&a, &b), (&b, &a)] {
            let v4 = format!("{}/30", me.fabric_v4);
            let v6 = format!("{}/64", me.fabric_v6);
            ip(&me.netns, &["addr", "add", &v4, "dev", "fabric"]);
            ip(&me.netns, &["addr", "add", &v6, "dev", "fabric", "nodad"]);
            ip(&me.netns, &["link", "set", "fabric", "up"]);
            let cidr4 = format!("10.244.{}.0/24", other.index);
            let cidr6 = format!("fd00:10:244:{}::/64", other.index);
            ip(
                &me.netns,
                &["route", "add", &cidr4, "via", &other.fabric_v4.to_string()],
            );
            ip(
                &me.netns,
                &[
                    "-6",
                    "route",
                    "add",
                    &cidr6,
                    "via",
                    &other.fabric_v6.to_string(),
                ],
            );
        }
    }

    /// Adds a pod namespace on `node` (by node name) with the next free
    /// addresses of that node's CIDRs.
    pub fn add_pod(&mut self, node: &str) -> PodNet {
        let n = self
            .nodes
            .iter()
            .find(|n| n.name == node)
            .unwrap_or_else(|| panic!("no node {node}"))
            .clone();
        let host_n = 10 + self.pods.iter().filter(|p| p.node == node).count();
        assert!(host_n < 250, "too many pods on {node}");
        let idx = self.pods.len();
        let netns = format!("{PREFIX}{}-p{idx}", self.tag);
        self.add_netns(&netns);
        sysctl(&netns, &NO_DAD);
        let v4 = Ipv4Addr::new(10, 244, n.index, host_n as u8);
        let v6: Ipv6Addr = format!("fd00:10:244:{}::{:x}", n.index, host_n)
            .parse()
            .expect("generated IPv6 literal");
        // Node side "vp<idx>", pod side "eth0"; names only need to be
        // unique within their own namespace.
        let host_if = format!("vp{idx}");
        ip(
            &n.netns,
            &[
                "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &netns,
            ],
        );
        if self.bridged {
            self.attach_bridged(&n, &host_if, &netns, v4, v6);
        } else {
            self.attach_routed(&n, &host_if, &netns, v4, v6);
        }
        let pod = PodNet {
            node: node.to_string(),
            netns,
            v4,
            v6,
        };
        self.pods.push(pod.clone());
        pod
    }

    /// Routed attachment: /32 and /128 routes on the node, link-local
    /// gateways in the pod.
    fn attach_routed(&self, n: &Node, host_if: &str, netns: &str, v4: Ipv4Addr, v6: Ipv6Addr) {
        ip(
            &n.netns,
            &["addr", "add", &format!("{GW_V4}/32"), "dev", host_if],
        );
        ip(
            &n.netns,
            &[
                "addr",
                "add",
                &format!("{GW_V6}/64"),
                "dev",
                host_if,
                "nodad",
            ],
        );
        ip(&n.netns, &["link", "set", host_if, "up"]);
        ip(
            &n.netns,
            &["route", "add", &format!("{v4}/32"), "dev", host_if],
        );
        ip(
            &n.netns,
            &["-6", "route", "add", &format!("{v6}/128"), "dev", host_if],
        );

        ip(netns, &["link", "set", "lo", "up"]);
        ip(netns, &["addr", "add", &format!("{v4}/32"), "dev", "eth0"]);
        ip(
            netns,
            &["addr", "add", &format!("{v6}/128"), "dev", "eth0", "nodad"],
        );
        ip(netns, &["link", "set", "eth0", "up"]);
        ip(
            netns,
            &["route", "add", GW_V4, "dev", "eth0", "scope", "link"],
        );
        ip(
            netns,
            &["route", "add", "default", "via", GW_V4, "dev", "eth0"],
        );
        ip(
            netns,
            &["-6", "route", "add", "default", "via", GW_V6, "dev", "eth0"],
        );
    }

    /// Bridged attachment: the node side joins the node's bridge, the pod
    /// lives in the node's /24 and /64 with the bridge as its gateway.
    fn attach_bridged(&self, n: &Node, host_if: &str, netns: &str, v4: Ipv4Addr, v6: Ipv6Addr) {
        ip(&n.netns, &["link", "set", host_if, "master", BRIDGE]);
        ip(&n.netns, &["link", "set", host_if, "up"]);
        ip(netns, &["link", "set", "lo", "up"]);
        ip(netns, &["addr", "add", &format!("{v4}/24"), "dev", "eth0"]);
        ip(
            netns,
            &["addr", "add", &format!("{v6}/64"), "dev", "eth0", "nodad"],
        );
        ip(netns, &["link", "set", "eth0", "up"]);
        let gw4 = format!("10.244.{}.1", n.index);
        let gw6 = format!("fd00:10:244:{}::1", n.index);
        ip(netns, &["route", "add", "default", "via", &gw4]);
        ip(netns, &["-6", "route", "add", "default", "via", &gw6]);
    }

    /// An extra, unconnected namespace (for loading a reference ruleset
    /// next to the nodes'); deleted with the rest.
    pub fn add_scratch(&mut self) -> String {
        let name = format!("{PREFIX}{}-s{}", self.tag, self.created.len());
        self.add_netns(&name);
        name
    }

    /// Waits (bounded) until every veth and bridge of every namespace is
    /// operationally up. The kernel turns a fresh link's carrier on
    /// through linkwatch, up to a second later, and drops what is sent
    /// before: without this wait the first neighbour solicitation on a new
    /// link is lost and the first probe across it times out. The bound is
    /// generous (it returns as soon as the links are up): linkwatch runs
    /// from a workqueue, and on a loaded CI machine that can lag seconds.
    pub fn wait_links_up(&self) {
        let deadline = std::time::Instant::now() + LINKS_UP_LIMIT;
        for ns in &self.created {
            loop {
                let out = run(Command::new("ip").args(["-n", ns, "-o", "link", "show"]));
                let down: Vec<&str> = out
                    .lines()
                    .filter(|l| !l.contains(": lo:") && !l.contains("state UP"))
                    .collect();
                if down.is_empty() {
                    break;
                }
                if std::time::Instant::now() > deadline {
                    panic!("links still down in {ns} after {LINKS_UP_LIMIT:?}: {down:?}");
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }

    pub fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Pods first, then nodes; errors are reported, not raised, since
        // Drop may run during a panic.
        for ns in self.created.iter().rev() {
            let status = Command::new("ip")
                .args(["netns", "del", ns])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if !matches!(status, Ok(s) if s.success()) {
                eprintln!("warning: could not delete netns {ns}");
            }
        }
    }
}

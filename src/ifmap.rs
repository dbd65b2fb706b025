//! Learns which host-side interface each local pod sends through, from the
//! node's own kernel state, for source validation:
//!
//! - routed layouts (a veth per pod: Calico, kindnet, ptp): the host route
//!   to the pod's /32 or /128 names the interface;
//! - bridged layouts (pods on a Linux bridge: the `bridge` CNI plugin,
//!   flannel's cni0): the route to the pod address leads to a bridge, and
//!   the port is the one whose other end, inside its pod's namespace,
//!   carries the pod's address: what the CNI plugin configured there
//!   before the pod's containers ran, read from the node over rtnetlink.
//!   A pod's own ARP cannot move that. Only on a kernel that cannot list
//!   another namespace's addresses (before 4.20) does learning fall back
//!   to the node's ARP entry (IPv4) or neighbour entry (IPv6) for the
//!   pod's MAC and the bridge's forwarding database for the port that MAC
//!   was learned on; a pod's gratuitous ARP can steer that fallback.
//!
//! Every pod-facing port of such a bridge (a veth whose other end is in
//! another namespace) is listed too, so that the ports no pod is bound to
//! yet get fail-closed chains. In the ARP fallback, a pod not yet
//! resolved is nudged: the node sends one empty UDP datagram to its
//! discard port, so the node resolves the address and the pod's ARP reply
//! or neighbour advertisement (which a fail-closed port lets through)
//! teaches the node its MAC.
//!
//! Learning trusts what it learned first. A pod with CAP_NET_ADMIN can
//! put any address on its own interface, and any pod can send ARP
//! claiming a neighbour's address, so a later, conflicting claim never
//! moves a binding: a pod stays on the interface it was learned on while
//! that interface exists (the agent's last map, or for `apply` the devices
//! of the `src_` chains in the kernel), and the addresses behind a port
//! already bound are not looked at. An address found behind two unbound
//! ports binds neither, an interface already bound to one pod is refused
//! to any other, and one that two newly learned pods claim goes to
//! neither (each is reported as unvalidated rather than one validated on
//! another's port).
//!
//! Read over rtnetlink (links, routes, ARP and IPv6 neighbour entries,
//! bridge forwarding databases, the addresses of the pods'
//! namespaces by their ids) of the caller's network namespace. Parsing
//! is pure and tested on captured kernel answers; only [`discover`]
//! reads the node. A pod found nowhere (a bridged pod that
//! has not yet talked to the node, an IPv6-only bridged pod, a layout not
//! listed above) is reported by the caller and left unvalidated.

use policy_compiler::model::Pod;
use policy_compiler::{Cluster, NodeNet};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

/// One route of the main table: destination prefix and output interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub dst: ipnet::IpNet,
    pub dev: String,
}

/// The most specific route holding `ip`.
fn route_for<'r>(routes: &'r [Route], ip: &IpAddr) -> Option<&'r Route> {
    routes
        .iter()
        .filter(|r| r.dst.contains(ip))
        .max_by_key(|r| r.dst.prefix_len())
}

/// What [`discover`] reads, so the mapping logic is testable on text.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub routes: Vec<Route>,
    pub arp: BTreeMap<(Ipv4Addr, String), [u8; 6]>,
    /// Resolved IPv6 neighbour entries: (address, interface) -> MAC.
    pub neigh6: BTreeMap<(Ipv6Addr, String), [u8; 6]>,
    /// Bridge name -> (MAC -> port interface name).
    pub bridges: BTreeMap<String, BTreeMap<[u8; 6], String>>,
    /// Bridge name -> its pod-facing ports (veths with their other end in
    /// another namespace).
    pub ports: BTreeMap<String, BTreeSet<String>>,
    /// Every interface of the namespace, by name.
    pub interfaces: BTreeSet<String>,
    /// Pod-facing port -> the addresses on its other end, in the pod's
    /// namespace. `None` where the kernel cannot list them: bridged pods
    /// are then learned from the ARP and forwarding tables.
    pub peer_addrs: Option<BTreeMap<String, BTreeSet<IpAddr>>>,
}

impl Snapshot {
    /// The interface `pod` sends through, if the node's state shows one.
    /// Every address of the pod must point at the same interface.
    pub fn interface_of(&self, pod: &Pod) -> Option<String> {
        self.interface_among(pod, &BTreeMap::new())
    }

    /// The bridge port whose other end carries `ip`, among the ports of
    /// `bridge` not in `taken`: `Err` when several do (someone configured
    /// another pod's address in its own namespace; neither is believed).
    fn port_carrying(
        &self,
        peers: &BTreeMap<String, BTreeSet<IpAddr>>,
        bridge: &str,
        ip: &IpAddr,
        taken: &BTreeMap<String, String>,
    ) -> Result<Option<String>, Vec<String>> {
        let on: Vec<String> = self
            .ports
            .get(bridge)
            .into_iter()
            .flatten()
            .filter(|p| !taken.contains_key(*p))
            .filter(|p| peers.get(*p).is_some_and(|a| a.contains(ip)))
            .cloned()
            .collect();
        match &on[..] {
            [] => Ok(None),
            [p] => Ok(Some(p.clone())),
            _ => Err(on),
        }
    }

    /// [`Snapshot::interface_of`], never placing the pod on a port of
    /// `taken` (interface -> the pod bound to it).
    fn interface_among(&self, pod: &Pod, taken: &BTreeMap<String, String>) -> Option<String> {
        let mut found: Option<String> = None;
        for ip in &pod.ips {
            let Some(route) = route_for(&self.routes, ip) else {
                continue;
            };
            let dev = match self.bridges.get(&route.dev) {
                None if route.dst.prefix_len() == route.dst.max_prefix_len() => {
                    Some(route.dev.clone())
                }
                None => None,
                Some(_) if self.peer_addrs.is_some() => {
                    let peers = self.peer_addrs.as_ref()?;
                    match self.port_carrying(peers, &route.dev, ip, taken) {
                        Ok(port) => port,
                        Err(ports) => {
                            tracing::warn!(pod = %format!("{}/{}", pod.namespace, pod.name), address = %ip, ports = %ports.join(", "), "this pod's address is configured behind several bridge ports no pod is bound to; none is bound to it (a pod put another pod's address in its own namespace)");
                            return None;
                        }
                    }
                }
                Some(ports) => match ip {
                    IpAddr::V4(v4) => self
                        .arp
                        .get(&(*v4, route.dev.clone()))
                        .and_then(|mac| ports.get(mac))
                        .cloned(),
                    IpAddr::V6(v6) => self
                        .neigh6
                        .get(&(*v6, route.dev.clone()))
                        .and_then(|mac| ports.get(mac))
                        .cloned(),
                },
            };
            match (&found, dev) {
                (_, None) => {}
                (None, Some(d)) => found = Some(d),
                (Some(f), Some(d)) if *f == d => {}
                (Some(_), Some(_)) => return None,
            }
        }
        found
    }

    /// The map for every local policy pod the snapshot places, keeping
    /// each binding of `previous` (`namespace/name` -> interface) whose
    /// interface still exists, and refusing conflicting claims (module
    /// comment).
    pub fn node_net(
        &self,
        cluster: &Cluster,
        node: &str,
        source_validation: bool,
        previous: &BTreeMap<String, String>,
    ) -> NodeNet {
        // Through the index's pods by node: this runs every reconcile,
        // and a walk of every pod cost milliseconds per event at 150,000.
        let local: Vec<&Pod> = cluster
            .pods_on(node)
            .into_iter()
            .filter(|p| p.is_policy_pod())
            .collect();
        let key = |p: &Pod| format!("{}/{}", p.namespace, p.name);
        let mut pod_interfaces: BTreeMap<String, String> = BTreeMap::new();
        let mut owner: BTreeMap<String, String> = BTreeMap::new();
        for p in &local {
            let k = key(p);
            let kept = previous.get(&k).filter(|d| self.interfaces.contains(*d));
            if let Some(dev) = kept.filter(|d| !owner.contains_key(*d)) {
                owner.insert(dev.clone(), k.clone());
                pod_interfaces.insert(k, dev.clone());
            }
        }
        let mut fresh: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for p in &local {
            let k = key(p);
            if pod_interfaces.contains_key(&k) {
                continue;
            }
            let Some(dev) = self.interface_among(p, &owner) else {
                continue;
            };
            match owner.get(&dev) {
                Some(other) => {
                    tracing::warn!(pod = %k, interface = %dev, owner = %other, "the node's ARP and bridge tables place this pod on an interface already bound to another pod; not validated (a spoofed ARP claim, or a reused address)")
                }
                None => fresh.entry(dev).or_default().push(k),
            }
        }
        for (dev, pods) in fresh {
            match &pods[..] {
                [k] => {
                    pod_interfaces.insert(k.clone(), dev);
                }
                _ => {
                    tracing::warn!(interface = %dev, pods = %pods.join(", "), "several pods claim one interface; none is validated")
                }
            }
        }
        let bridge_ports = self.pod_bridge_ports(&local);
        NodeNet {
            pod_interfaces,
            source_validation,
            bridge_ports,
            ..NodeNet::default()
        }
    }

    /// The bridge a pod address is routed to, if any.
    fn bridge_of(&self, ip: &IpAddr) -> Option<&str> {
        let route = route_for(&self.routes, ip)?;
        self.bridges
            .contains_key(&route.dev)
            .then_some(route.dev.as_str())
    }

    /// The pod-facing ports of the bridges that routes to `pods` lead to
    /// (never of other bridges of the node, never the bridge itself).
    fn pod_bridge_ports(&self, pods: &[&Pod]) -> BTreeSet<String> {
        let bridges: BTreeSet<&str> = pods
            .iter()
            .flat_map(|p| &p.ips)
            .filter_map(|ip| self.bridge_of(ip))
            .collect();
        bridges
            .into_iter()
            .filter_map(|b| self.ports.get(b))
            .flatten()
            .cloned()
            .collect()
    }

    /// Addresses of local pods, routed to a bridge, that no interface is
    /// found for and that `previous` does not keep: what to nudge. None
    /// when the pods' namespaces are read: the node's resolution of a pod
    /// then plays no part in learning it.
    pub fn unresolved(
        &self,
        cluster: &Cluster,
        node: &str,
        previous: &BTreeMap<String, String>,
    ) -> Vec<IpAddr> {
        if self.peer_addrs.is_some() {
            return Vec::new();
        }
        cluster
            .pods()
            .filter(|p| p.is_policy_pod() && p.node_name.as_deref() == Some(node))
            .filter(|p| {
                let k = format!("{}/{}", p.namespace, p.name);
                !previous
                    .get(&k)
                    .is_some_and(|d| self.interfaces.contains(d))
                    && self.interface_of(p).is_none()
            })
            .flat_map(|p| p.ips.iter().copied())
            .filter(|ip| self.bridge_of(ip).is_some())
            .collect()
    }
}

/// Reads the node's routes, ARP table and bridge forwarding databases.
pub fn snapshot() -> std::io::Result<Snapshot> {
    use crate::netlink::route;
    let links = route::links().map_err(std::io::Error::other)?;
    let name: BTreeMap<u32, &str> = links.iter().map(|l| (l.index, l.name.as_str())).collect();
    let named = |i: &u32| name.get(i).map(|n| n.to_string());
    let arp = route::neighbours4()
        .map_err(std::io::Error::other)?
        .into_iter()
        .filter_map(|(ip, index, mac)| Some(((ip, named(&index)?), mac)))
        .collect();
    let mut routes = Vec::new();
    for r in route::routes().map_err(std::io::Error::other)? {
        if !r.looked_up() {
            continue;
        }
        // A route that leaves by no interface (blackhole, unreachable)
        // still shadows wider ones: it leads to no pod.
        let devs: Vec<String> = if r.oifs.is_empty() {
            vec![String::new()]
        } else {
            r.oifs.iter().filter_map(named).collect()
        };
        for dev in devs {
            // The node's own addresses (IPv6's local table).
            if dev != "lo" || r.dst.addr().is_ipv4() {
                routes.push(Route { dst: r.dst, dev });
            }
        }
    }
    let mut bridges: BTreeMap<String, BTreeMap<[u8; 6], String>> = links
        .iter()
        .filter(|l| l.kind.as_deref() == Some("bridge"))
        .map(|l| (l.name.clone(), BTreeMap::new()))
        .collect();
    for e in route::fdb().map_err(std::io::Error::other)? {
        let (Some(bridge), Some(port)) = (name.get(&e.bridge), named(&e.port)) else {
            continue;
        };
        if let Some(fdb) = bridges.get_mut(*bridge) {
            fdb.insert(e.mac, port);
        }
    }
    let interfaces = links.iter().map(|l| l.name.clone()).collect();
    let mut ports: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for l in links.iter().filter(|l| l.is_pod_facing()) {
        if let Some(b) = l.master.and_then(|m| name.get(&m)) {
            ports
                .entry(b.to_string())
                .or_default()
                .insert(l.name.clone());
        }
    }
    let peer_addrs = peer_addresses(&links);
    let neigh6 = crate::netlink::route::neighbours6()
        .map_err(std::io::Error::other)?
        .into_iter()
        .filter_map(|(ip, index, mac)| match ip {
            IpAddr::V6(a) => Some(((a, name.get(&index)?.to_string()), mac)),
            IpAddr::V4(_) => None,
        })
        .collect();
    Ok(Snapshot {
        routes,
        arp,
        neigh6,
        bridges,
        ports,
        interfaces,
        peer_addrs,
    })
}

/// Each pod-facing bridge port's peer addresses (one address dump per pod
/// namespace); `None` on a kernel without the target-namespace filter. A
/// namespace that cannot be read (gone since the link dump, or not ours
/// to read) leaves its ports with no addresses: they stay closed.
fn peer_addresses(
    links: &[crate::netlink::route::Link],
) -> Option<BTreeMap<String, BTreeSet<IpAddr>>> {
    let ports: Vec<_> = links
        .iter()
        .filter(|l| l.is_pod_facing() && l.master.is_some())
        .collect();
    let mut by_ns: BTreeMap<i32, BTreeMap<u32, BTreeSet<IpAddr>>> = BTreeMap::new();
    for id in ports.iter().filter_map(|l| l.netnsid) {
        if by_ns.contains_key(&id) {
            continue;
        }
        let mut addrs: BTreeMap<u32, BTreeSet<IpAddr>> = BTreeMap::new();
        match crate::netlink::route::addresses_in(id) {
            Ok(None) => {
                tracing::warn!("this kernel cannot list the addresses of a pod's network namespace (before 4.20); bridged pods are learned from the node's ARP and forwarding tables, which a pod's gratuitous ARP can steer");
                return None;
            }
            Ok(Some(found)) => {
                for (index, ip) in found {
                    addrs.entry(index).or_default().insert(ip);
                }
            }
            Err(e) => {
                tracing::warn!(netnsid = id, error = %e, "cannot list the addresses of a pod's network namespace; its bridge ports stay closed");
            }
        }
        by_ns.insert(id, addrs);
    }
    Some(
        ports
            .iter()
            .map(|l| {
                let addrs = l
                    .netnsid
                    .zip(l.peer)
                    .and_then(|(id, peer)| by_ns.get(&id)?.get(&peer).cloned())
                    .unwrap_or_default();
                (l.name.clone(), addrs)
            })
            .collect(),
    )
}

/// Nudges bridged pods the node has not resolved yet, each address at
/// most once per [`Prober::AGAIN`], so a pod that never answers (or an
/// attacker port) costs one datagram per interval, not one per check.
#[derive(Debug, Default)]
pub struct Prober {
    last: BTreeMap<IpAddr, Instant>,
}

impl Prober {
    const AGAIN: Duration = Duration::from_secs(2);
    /// Address resolution between namespaces of one node takes well under
    /// a millisecond; this bounds the wait for the answers.
    const POLLS: u32 = 5;
    const POLL: Duration = Duration::from_millis(10);

    /// Sends one empty datagram to UDP port 9 (discard) of each address
    /// not nudged within [`Prober::AGAIN`]; returns how many were sent.
    fn nudge(&mut self, addrs: &[IpAddr]) -> usize {
        let now = Instant::now();
        self.last
            .retain(|_, t| now.duration_since(*t) < Self::AGAIN);
        let mut sent = 0;
        for ip in addrs {
            if self.last.contains_key(ip) {
                continue;
            }
            self.last.insert(*ip, now);
            let bind: std::net::SocketAddr = match ip {
                IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
                IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
            };
            let r = std::net::UdpSocket::bind(bind).and_then(|s| s.send_to(&[], (*ip, 9)));
            match r {
                Ok(_) => sent += 1,
                Err(e) => tracing::debug!(addr = %ip, error = %e, "cannot nudge a pod address"),
            }
        }
        sent
    }
}

/// The interface map of `node` from the kernel state of this namespace,
/// keeping the bindings of `previous` (see the module comment).
pub fn discover(
    cluster: &Cluster,
    node: &str,
    source_validation: bool,
    previous: &BTreeMap<String, String>,
    prober: &mut Prober,
) -> std::io::Result<NodeNet> {
    if !source_validation {
        return Ok(NodeNet {
            source_validation,
            ..NodeNet::default()
        });
    }
    let mut snap = snapshot()?;
    if prober.nudge(&snap.unresolved(cluster, node, previous)) > 0 {
        for _ in 0..Prober::POLLS {
            std::thread::sleep(Prober::POLL);
            snap = snapshot()?;
            if snap.unresolved(cluster, node, previous).is_empty() {
                break;
            }
        }
    }
    Ok(snap.node_net(cluster, node, source_validation, previous))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn via(list: &[(&str, &str)]) -> Vec<Route> {
        list.iter()
            .map(|(dst, dev)| Route {
                dst: dst.parse().expect("prefix"),
                dev: dev.to_string(),
            })
            .collect()
    }

    /// A node with a routed pod (vp0), a bridge (cbr0) and the fabric.
    fn routes4() -> Vec<Route> {
        via(&[
            ("10.244.2.0/24", "fabric"),
            ("10.244.1.10/32", "vp0"),
            ("10.244.1.0/24", "cbr0"),
        ])
    }

    /// The node's one complete ARP entry (10.244.1.12 is unresolved).
    fn arp() -> BTreeMap<(Ipv4Addr, String), [u8; 6]> {
        let ip = "10.244.1.11".parse().expect("ip");
        [((ip, "cbr0".to_string()), [2, 0xaa, 0xbb, 0xcc, 0xdd, 1])].into()
    }

    fn pod(ips: &[&str]) -> Pod {
        Pod {
            namespace: "x".into(),
            name: "a".into(),
            labels: Default::default(),
            node_name: Some("n".into()),
            host_network: false,
            ips: ips.iter().map(|s| s.parse().expect("ip")).collect(),
            named_ports: vec![],
            terminal: false,
        }
    }

    #[test]
    fn routed_pod_maps_by_host_route_and_bridged_pod_by_arp_and_fdb() {
        let mut routes = routes4();
        routes.extend(via(&[
            ("fd00:10:244:1::a/128", "vp0"),
            ("fd00:10:244:2::/64", "fabric"),
        ]));
        let snap = Snapshot {
            routes,
            arp: arp(),
            bridges: [(
                "cbr0".to_string(),
                [([2, 0xaa, 0xbb, 0xcc, 0xdd, 1], "vp7".to_string())].into(),
            )]
            .into(),
            ..Snapshot::default()
        };
        assert_eq!(
            snap.interface_of(&pod(&["10.244.1.10", "fd00:10:244:1::a"]))
                .as_deref(),
            Some("vp0")
        );
        assert_eq!(
            snap.interface_of(&pod(&["10.244.1.11"])).as_deref(),
            Some("vp7")
        );
        // Not yet in the ARP table: unknown, not guessed.
        assert_eq!(snap.interface_of(&pod(&["10.244.1.12"])), None);
        // A remote pod is routed over the fabric, not a host route.
        assert_eq!(snap.interface_of(&pod(&["10.244.2.10"])), None);
        // Addresses disagreeing on the interface: unknown.
        assert_eq!(
            snap.interface_of(&pod(&["10.244.1.10", "10.244.1.11"])),
            None
        );
    }

    /// Node state after `attacker` sent ARP claiming `victim`'s address
    /// with its own MAC (what a port without a guard chain lets through).
    fn poisoned() -> (Snapshot, Cluster) {
        let (m_att, m_vic) = ([2, 0, 0, 0, 0, 0xa], [2, 0, 0, 0, 0, 0xb]);
        let ip = |s: &str| -> Ipv4Addr { s.parse().expect("ip") };
        let snap = Snapshot {
            routes: routes4(),
            arp: [
                ((ip("10.244.1.11"), "cbr0".to_string()), m_att),
                ((ip("10.244.1.12"), "cbr0".to_string()), m_att),
            ]
            .into(),
            bridges: [(
                "cbr0".to_string(),
                [(m_att, "vpatt".to_string()), (m_vic, "vpvic".to_string())].into(),
            )]
            .into(),
            interfaces: ["cbr0", "vpatt", "vpvic"].map(String::from).into(),
            ..Snapshot::default()
        };
        let named = |name: &str, ip: &str| Pod {
            name: name.into(),
            ..pod(&[ip])
        };
        let cluster = Cluster::from_objects([
            policy_compiler::Object::Pod(named("victim", "10.244.1.11")),
            policy_compiler::Object::Pod(named("attacker", "10.244.1.12")),
        ]);
        (snap, cluster)
    }

    fn learned(previous: &[(&str, &str)]) -> BTreeMap<String, String> {
        let (snap, cluster) = poisoned();
        let previous = previous
            .iter()
            .map(|(p, d)| (format!("x/{p}"), d.to_string()))
            .collect();
        snap.node_net(&cluster, "n", true, &previous).pod_interfaces
    }

    #[test]
    fn a_later_arp_claim_never_moves_a_binding_and_conflicts_fail_closed() {
        let map = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(p, d)| (format!("x/{p}"), d.to_string()))
                .collect()
        };
        // Victim learned first: it stays on its port; the attacker is
        // learned on its own.
        assert_eq!(
            learned(&[("victim", "vpvic")]),
            map(&[("victim", "vpvic"), ("attacker", "vpatt")])
        );
        // Attacker learned first: the victim is not placed on the
        // attacker's port (so the attacker's chain never admits it).
        assert_eq!(
            learned(&[("attacker", "vpatt")]),
            map(&[("attacker", "vpatt")])
        );
        // Neither learned yet: both claim one port, neither gets it.
        assert_eq!(learned(&[]), map(&[]));
        // A binding to an interface that is gone (a restarted pod, an
        // address reused) is learned afresh.
        assert_eq!(
            learned(&[("victim", "vpgone"), ("attacker", "vpatt")]),
            map(&[("attacker", "vpatt")])
        );
    }

    #[test]
    fn ipv6_only_pods_learn_by_neighbour_entry_and_only_pod_bridges_list_ports() {
        let mac = [2, 0, 0, 0, 0, 0x6];
        let v6: Ipv6Addr = "fd00:10:244:1::6".parse().expect("v6");
        let mut routes = routes4();
        routes.extend(via(&[("fd00:10:244:1::/64", "cbr0")]));
        let snap = Snapshot {
            routes,
            neigh6: [((v6, "cbr0".to_string()), mac)].into(),
            bridges: [
                ("cbr0".to_string(), [(mac, "vp6".to_string())].into()),
                ("docker0".to_string(), BTreeMap::new()),
            ]
            .into(),
            ports: [
                ("cbr0".to_string(), ["vp6", "vp9"].map(String::from).into()),
                ("docker0".to_string(), ["vethd"].map(String::from).into()),
            ]
            .into(),
            interfaces: ["cbr0", "vp6", "vp9", "docker0", "vethd"]
                .map(String::from)
                .into(),
            ..Snapshot::default()
        };
        let six = Pod {
            name: "six".into(),
            ..pod(&["fd00:10:244:1::6"])
        };
        let quiet = Pod {
            name: "quiet".into(),
            ..pod(&["10.244.1.20", "fd00:10:244:1::20"])
        };
        assert_eq!(snap.interface_of(&six).as_deref(), Some("vp6"));
        let cluster = Cluster::from_objects([
            policy_compiler::Object::Pod(six),
            policy_compiler::Object::Pod(quiet),
        ]);
        let net = snap.node_net(&cluster, "n", true, &BTreeMap::new());
        assert_eq!(
            net.pod_interfaces,
            [("x/six".to_string(), "vp6".to_string())].into()
        );
        // The pods' bridge's ports, not docker0's, not the bridge itself.
        assert_eq!(net.bridge_ports, ["vp6", "vp9"].map(String::from).into());
        // What to nudge: the unresolved pod's addresses on the bridge.
        let ips =
            |v: &[&str]| -> Vec<IpAddr> { v.iter().map(|s| s.parse().expect("ip")).collect() };
        assert_eq!(
            snap.unresolved(&cluster, "n", &BTreeMap::new()),
            ips(&["10.244.1.20", "fd00:10:244:1::20"])
        );
        // A routed-only node has no bridge ports.
        let routed = Snapshot {
            routes: routes4(),
            ..Snapshot::default()
        };
        assert!(routed
            .node_net(&cluster, "n", true, &BTreeMap::new())
            .bridge_ports
            .is_empty());
    }

    /// The binding rule against a pod that can configure any address in
    /// its own namespace (CAP_NET_ADMIN): every order of the attacker
    /// becoming known, dropping its own address, adding the victim's, and
    /// the victim appearing, with a discovery after any subset of the
    /// steps. The victim is only ever bound to its own port, the attacker
    /// only to its own; whenever the attacker was bound before the victim
    /// appeared, the victim ends on its own port.
    #[test]
    fn peer_addresses_bind_a_port_to_its_own_pod_in_every_order() {
        #[derive(Clone, Copy, Debug, PartialEq)]
        enum Step {
            AttackerKnown,
            AttackerDropsOwn,
            AttackerAddsVictims,
            VictimUp,
        }
        use Step::*;
        let (att, vic): (IpAddr, IpAddr) = (
            "10.244.1.12".parse().expect("ip"),
            "10.244.1.11".parse().expect("ip"),
        );
        let named = |name: &str, ip: IpAddr| Pod {
            name: name.into(),
            ips: vec![ip],
            ..pod(&[])
        };
        let steps = [
            AttackerKnown,
            AttackerDropsOwn,
            AttackerAddsVictims,
            VictimUp,
        ];
        let mut orders: Vec<Vec<Step>> = vec![vec![]];
        for _ in 0..steps.len() {
            orders = orders
                .into_iter()
                .flat_map(|o| {
                    steps
                        .iter()
                        .filter(|s| !o.contains(s))
                        .map(|s| [o.clone(), vec![*s]].concat())
                        .collect::<Vec<_>>()
                })
                .collect();
        }
        assert_eq!(orders.len(), 24);
        let (mut runs, mut neither) = (0, 0);
        for order in &orders {
            for looks in 0u32..16 {
                let (mut known, mut att_addrs, mut vic_up) = (false, BTreeSet::from([att]), false);
                let mut learned: BTreeMap<String, String> = BTreeMap::new();
                let mut attacker_bound_before_victim = false;
                for (i, step) in order.iter().enumerate() {
                    match step {
                        AttackerKnown => known = true,
                        AttackerDropsOwn => {
                            att_addrs.remove(&att);
                        }
                        AttackerAddsVictims => {
                            att_addrs.insert(vic);
                        }
                        VictimUp => {
                            attacker_bound_before_victim = learned.contains_key("x/attacker");
                            vic_up = true;
                        }
                    }
                    // A discovery after this step, or always after the last.
                    if looks & (1 << i) == 0 && i + 1 < order.len() {
                        continue;
                    }
                    let mut ports = vec!["vpatt"];
                    let mut peers = BTreeMap::from([("vpatt".to_string(), att_addrs.clone())]);
                    let mut pods = vec![];
                    if known {
                        pods.push(policy_compiler::Object::Pod(named("attacker", att)));
                    }
                    if vic_up {
                        ports.push("vpvic");
                        peers.insert("vpvic".to_string(), BTreeSet::from([vic]));
                        pods.push(policy_compiler::Object::Pod(named("victim", vic)));
                    }
                    let snap = Snapshot {
                        routes: routes4(),
                        bridges: [("cbr0".to_string(), BTreeMap::new())].into(),
                        ports: [(
                            "cbr0".to_string(),
                            ports.iter().map(|p| p.to_string()).collect(),
                        )]
                        .into(),
                        interfaces: ports
                            .iter()
                            .chain(&["cbr0"])
                            .map(|p| p.to_string())
                            .collect(),
                        peer_addrs: Some(peers),
                        ..Snapshot::default()
                    };
                    let cluster = Cluster::from_objects(pods);
                    learned = snap.node_net(&cluster, "n", true, &learned).pod_interfaces;
                    let ctx = format!("{order:?}, looks {looks:#06b}: {learned:?}");
                    assert!(
                        matches!(
                            learned.get("x/victim").map(String::as_str),
                            None | Some("vpvic")
                        ),
                        "{ctx}"
                    );
                    assert!(
                        matches!(
                            learned.get("x/attacker").map(String::as_str),
                            None | Some("vpatt")
                        ),
                        "{ctx}"
                    );
                    assert!(
                        learned.values().filter(|d| *d == "vpatt").count() <= 1,
                        "{ctx}"
                    );
                }
                let ctx = format!("{order:?}, looks {looks:#06b}: {learned:?}");
                if attacker_bound_before_victim {
                    assert_eq!(
                        learned.get("x/victim").map(String::as_str),
                        Some("vpvic"),
                        "{ctx}"
                    );
                }
                // The victim is denied its port only while the attacker,
                // never bound, carries the victim's address.
                if !learned.contains_key("x/victim") {
                    assert!(
                        att_addrs.contains(&vic) && !learned.contains_key("x/attacker"),
                        "{ctx}"
                    );
                    neither += 1;
                }
                runs += 1;
            }
        }
        assert_eq!(runs, 24 * 16);
        assert!(neither > 0, "the conflict case was never reached");
    }
}

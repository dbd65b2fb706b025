//! Tests of the rtnetlink reads (`route`) on what the kernel really sends:
//! messages captured from a 6.18 kernel (a pod-facing veth enslaved to a
//! bridge, the bridge, a veth joining two devices of the node, pod
//! addresses with the echoed target namespace, neighbour entries), parsed
//! without privilege; and, as root, the same layout built in scratch
//! namespaces and listed live.

use super::route::{self, Link};
use super::socket::Msg;
use super::wire;
use netlink_packet_core::Parseable;
use netlink_packet_route::link::LinkMessage;
use nftpol_test_support::{require_root, Netns};
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::process::Command;
use std::time::Instant;

/// The messages of one captured file: one message a line, in hex.
fn captured(text: &str) -> Vec<Msg> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let bytes: Vec<u8> = (0..l.trim().len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&l.trim()[i..i + 2], 16).expect("hex"))
                .collect();
            Msg::from_bytes(&bytes).expect("one whole message")
        })
        .collect()
}

const LINKS: &str = include_str!("../../tests/data/rtnl/links.hex");
const NEIGH6: &str = include_str!("../../tests/data/rtnl/neigh6.hex");
const ADDRS: &str = include_str!("../../tests/data/rtnl/addrs.hex");
const NLMSG_HDR: usize = 16;
/// `struct ifinfomsg` and `struct ifaddrmsg`.
const IFINFO_LEN: usize = 16;
const IFADDR_LEN: usize = 8;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_PORT_KIND: u16 = 4;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_TARGET_NETNSID: u16 = 10;

/// `m` with each attribute after its `fixed` header bytes passed through
/// `edit` (`None` drops it).
fn rewrite(m: &Msg, fixed: usize, edit: impl Fn(u16, &[u8]) -> Option<(u16, Vec<u8>)>) -> Msg {
    let head = &m.bytes()[..NLMSG_HDR + fixed];
    let mut b = head.to_vec();
    for (ty, v) in wire::attrs(&m.payload()[fixed..]) {
        if let Some((ty, v)) = edit(ty, v) {
            wire::put_attr(&mut b, ty, &v);
        }
    }
    let len = b.len() as u32;
    b[..4].copy_from_slice(&len.to_ne_bytes());
    Msg::from_bytes(&b).expect("one message")
}

fn link(index: u32, name: &str, master: Option<u32>, kind: Option<&str>) -> Link {
    Link {
        index,
        name: name.into(),
        master,
        kind: kind.map(String::from),
        netnsid: None,
        peer: None,
    }
}

#[test]
fn reads_captured_kernel_answers() {
    let msgs = captured(LINKS);
    let links: Vec<Link> = msgs
        .iter()
        .filter_map(|m| route::parse_link(m.payload()))
        .collect();
    let vp0 = Link {
        netnsid: Some(0),
        peer: Some(2),
        ..link(3, "vp0", Some(2), Some("veth"))
    };
    assert_eq!(
        links,
        [
            link(1, "lo", None, None),
            link(2, "br0", None, Some("bridge")),
            vp0.clone(),
            Link {
                peer: Some(5),
                ..link(4, "vh1", None, Some("veth"))
            },
            Link {
                peer: Some(4),
                ..link(5, "vh0", Some(2), Some("veth"))
            },
        ]
    );
    assert!(vp0.is_pod_facing());
    assert_eq!(links.iter().filter(|l| l.is_pod_facing()).count(), 1);

    let neigh: Vec<_> = captured(NEIGH6)
        .iter()
        .map(|m| route::parse_neigh6(m.payload()))
        .collect();
    let fd00_9 = "fd00::9".parse().expect("ip");
    assert_eq!(
        neigh,
        [Some((fd00_9, 2, [2, 0, 0, 0, 0, 9])), None, None, None],
        "only the permanent entry is resolved"
    );

    let answer = captured(ADDRS);
    let want: Vec<(u32, IpAddr)> = [
        (1, "127.0.0.1"),
        (2, "10.244.1.5"),
        (1, "::1"),
        (2, "fd00::5"),
        (2, "fe80::e0a7:5dff:fe42:239b"),
    ]
    .map(|(i, a)| (i, a.parse().expect("ip")))
    .into();
    assert_eq!(route::addresses_of(0, &answer).expect("the pod's"), want);
    // Asked for another namespace, the same answer is refused whole.
    assert!(route::addresses_of(1, &answer).is_err());
}

#[test]
fn an_address_answer_without_the_echoed_namespace_is_refused() {
    let mut answer = captured(ADDRS);
    answer[1] = rewrite(&answer[1], IFADDR_LEN, |ty, v| {
        (ty != IFA_TARGET_NETNSID).then(|| (ty, v.to_vec()))
    });
    assert_eq!(
        route::parse_addr(answer[1].payload()),
        Some((2, "10.244.1.5".parse().expect("ip"), None))
    );
    let err = route::addresses_of(0, &answer).expect_err("no echo");
    assert!(err.to_string().contains("network namespace id 0"), "{err}");
    // An IPv4 message whose addresses are IPv6-sized carries no address
    // of its own family: skipped, not misread.
    let v4 = rewrite(&captured(ADDRS)[1], IFADDR_LEN, |ty, v| match ty {
        IFA_LOCAL | IFA_ADDRESS => Some((ty, [0xfd; 16].to_vec())),
        _ => Some((ty, v.to_vec())),
    });
    assert_eq!(route::parse_addr(v4.payload()), None);
}

#[test]
fn a_link_keeps_its_kind_and_name_when_the_crate_cannot_read_them() {
    let vp0 = &captured(LINKS)[2];
    let want = route::parse_link(vp0.payload()).expect("vp0");
    // The bridge-port data no longer follows its port kind: the crate
    // refuses the whole IFLA_LINKINFO (and the whole message), the kind
    // is still read.
    let odd_port = rewrite(vp0, IFINFO_LEN, |ty, v| match ty {
        IFLA_LINKINFO => {
            let mut nest = Vec::new();
            for (t, w) in wire::attrs(v) {
                let t = if t == IFLA_INFO_PORT_KIND { 99 } else { t };
                wire::put_attr(&mut nest, t, w);
            }
            Some((ty, nest))
        }
        _ => Some((ty, v.to_vec())),
    });
    assert!(LinkMessage::parse(odd_port.payload()).is_err());
    assert_eq!(route::parse_link(odd_port.payload()).as_ref(), Some(&want));
    assert!(want.is_pod_facing());
    // A name that is not UTF-8 (Linux allows it) keeps its link.
    let odd_name = rewrite(vp0, IFINFO_LEN, |ty, v| match ty {
        IFLA_IFNAME => Some((ty, b"vp\xff\0".to_vec())),
        _ => Some((ty, v.to_vec())),
    });
    assert_eq!(
        route::parse_link(odd_name.payload()).map(|l| l.name),
        Some("vp\u{fffd}".to_string())
    );
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ip(ns: &Netns, args: &str) -> String {
    run(Command::new("ip")
        .args(["-n", ns.name()])
        .args(args.split_whitespace()))
}

fn ifindex(ns: &Netns, dev: &str) -> u32 {
    run(ns.cmd("cat").arg(format!("/sys/class/net/{dev}/ifindex")))
        .trim()
        .parse()
        .expect("ifindex")
}

/// A node namespace with bridge `br0`, a pod's veth `vp0` on it (its
/// other end `eth0` in the pod namespace, with one address of each
/// family), and a veth `vh0`/`vh1` joining two devices of the node, also
/// on the bridge; IPv6 neighbour entries on `br0`: one permanent, one
/// NOARP.
fn node_with_a_bridged_pod() -> (Netns, Netns) {
    let node = Netns::create("rtnl-node");
    let pod = Netns::create("rtnl-pod");
    ip(&node, "link add br0 type bridge");
    ip(
        &node,
        &format!("link add vp0 type veth peer name eth0 netns {}", pod.name()),
    );
    ip(&node, "link add vh0 type veth peer name vh1");
    for dev in ["vp0", "vh0"] {
        ip(&node, &format!("link set {dev} master br0"));
        ip(&node, &format!("link set {dev} up"));
    }
    ip(&node, "link set br0 up");
    ip(&pod, "addr add 10.244.1.5/24 dev eth0");
    ip(&pod, "addr add fd00::5/64 dev eth0 nodad");
    ip(&pod, "link set eth0 up");
    ip(
        &node,
        "-6 neigh add fd00::9 lladdr 02:00:00:00:00:09 dev br0 nud permanent",
    );
    ip(
        &node,
        "-6 neigh add fd00::a lladdr 02:00:00:00:00:0a dev br0 nud noarp",
    );
    (node, pod)
}

#[test]
fn lists_a_bridged_pod_and_the_addresses_in_its_namespace() {
    require_root!();
    let (node, pod) = node_with_a_bridged_pod();
    let eth0 = ifindex(&pod, "eth0");
    let pod_lo = ifindex(&pod, "lo");
    let br0 = ifindex(&node, "br0");
    let (links, addrs, unknown, neigh) = node.run(|| {
        let links = route::links().expect("link dump");
        let id = links
            .iter()
            .find(|l| l.name == "vp0")
            .and_then(|l| l.netnsid)
            .expect("vp0 names its peer's namespace");
        let addrs = route::addresses_in(id).expect("address dump");
        // An id the node never gave out: the kernel refuses the filter.
        let unknown = route::addresses_in(id + 1000);
        (
            links,
            addrs,
            unknown,
            route::neighbours6().expect("neigh dump"),
        )
    });
    let by_name = |n: &str| -> &Link {
        links
            .iter()
            .find(|l| l.name == n)
            .unwrap_or_else(|| panic!("{n} in {links:?}"))
    };
    let vp0 = by_name("vp0");
    assert!(vp0.is_pod_facing(), "{vp0:?}");
    assert_eq!(
        (vp0.kind.as_deref(), vp0.master, vp0.peer),
        (Some("veth"), Some(br0), Some(eth0))
    );
    let vh0 = by_name("vh0");
    assert!(!vh0.is_pod_facing(), "{vh0:?}");
    assert_eq!((vh0.kind.as_deref(), vh0.master), (Some("veth"), Some(br0)));
    assert_eq!(by_name("br0").kind.as_deref(), Some("bridge"));
    assert_eq!(
        (by_name("br0").master, by_name("lo").kind.as_deref()),
        (None, None)
    );
    assert_eq!(
        links.iter().filter(|l| l.is_pod_facing()).count(),
        1,
        "{links:?}"
    );

    let addrs = addrs.expect("this kernel filters address dumps by namespace");
    let set: BTreeSet<(u32, IpAddr)> = addrs.iter().copied().collect();
    for want in [
        (eth0, "10.244.1.5"),
        (eth0, "fd00::5"),
        (pod_lo, "127.0.0.1"),
        (pod_lo, "::1"),
    ] {
        let want = (want.0, want.1.parse().expect("ip"));
        assert!(set.contains(&want), "{want:?} in {set:?}");
    }
    // Only the pod's interfaces: none of the node's addresses leaked in.
    assert!(
        set.iter().all(|(i, _)| [eth0, pod_lo].contains(i)),
        "{set:?}"
    );
    assert!(unknown.is_err(), "{unknown:?}");

    let fd00_9: IpAddr = "fd00::9".parse().expect("ip");
    let fd00_a: IpAddr = "fd00::a".parse().expect("ip");
    assert!(
        neigh.contains(&(fd00_9, br0, [2, 0, 0, 0, 0, 9])),
        "{neigh:?}"
    );
    assert!(!neigh.iter().any(|n| n.0 == fd00_a), "{neigh:?}");
}

/// Not a benchmark: one before/after figure for the log, never asserted.
#[test]
fn times_the_link_and_address_dumps() {
    require_root!();
    let (node, _pod) = node_with_a_bridged_pod();
    node.run(|| {
        const N: u32 = 200;
        let id = route::links()
            .expect("links")
            .iter()
            .find_map(|l| l.netnsid)
            .expect("a pod");
        let t = Instant::now();
        for _ in 0..N {
            route::links().expect("links");
        }
        let links = t.elapsed() / N;
        let t = Instant::now();
        for _ in 0..N {
            route::addresses_in(id).expect("addresses");
        }
        let addrs = t.elapsed() / N;
        let t = Instant::now();
        for _ in 0..N {
            route::neighbours6().expect("neighbours");
        }
        eprintln!(
            "rtnetlink dumps, mean of {N}: links {links:?}, addresses of a pod {addrs:?}, IPv6 neighbours {:?}",
            t.elapsed() / N
        );
    });
}

/// The node of [`node_with_a_bridged_pod`], plus a routed pod's veth
/// `vr0` with a host route of each family, an address of each family on
/// `br0` (its subnet routes, and the node's own in the local tables), a
/// blackhole route, two forwarding entries on `vp0` (one static, one as
/// if learned) and ARP entries on `br0` (permanent, NOARP, stale).
fn node_with_routes_and_fdb() -> (Netns, Netns) {
    let (node, pod) = node_with_a_bridged_pod();
    ip(
        &node,
        &format!("link add vr0 type veth peer name eth1 netns {}", pod.name()),
    );
    ip(&node, "link set vr0 up");
    ip(&pod, "link set eth1 up");
    ip(&node, "route add 10.244.1.10/32 dev vr0");
    ip(&node, "-6 route add fd00:10::a/128 dev vr0");
    ip(&node, "addr add 10.244.2.1/24 dev br0");
    ip(&node, "-6 addr add fd00:2::1/64 dev br0 nodad");
    ip(&node, "route add blackhole 10.244.3.0/24");
    for (ip4, nud) in [
        ("10.244.2.7", "permanent"),
        ("10.244.2.8", "noarp"),
        ("10.244.2.9", "stale"),
    ] {
        let mac = format!("02:00:00:00:00:0{}", &ip4[ip4.len() - 1..]);
        ip(
            &node,
            &format!("neigh add {ip4} lladdr {mac} dev br0 nud {nud}"),
        );
    }
    for (mac, how) in [
        ("02:00:00:00:00:aa", "static"),
        ("02:00:00:00:00:bb", "dynamic"),
    ] {
        run(Command::new("bridge").args([
            "-n",
            node.name(),
            "fdb",
            "add",
            mac,
            "dev",
            "vp0",
            "master",
            how,
        ]));
    }
    (node, pod)
}

const ROUTES4: &str = include_str!("../../tests/data/rtnl/routes4.hex");
const ROUTES6: &str = include_str!("../../tests/data/rtnl/routes6.hex");
const FDB: &str = include_str!("../../tests/data/rtnl/fdb.hex");
const NEIGH4: &str = include_str!("../../tests/data/rtnl/neigh4.hex");

const RTMSG_LEN: usize = 12;
const NDMSG_LEN: usize = 12;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_MULTIPATH: u16 = 9;
const NDA_MASTER: u16 = 9;

/// `(destination, output interfaces)` of the routes a pod is looked up in.
fn looked_up(text: &str) -> Vec<(String, Vec<u32>)> {
    captured(text)
        .iter()
        .filter_map(|m| route::parse_route(m.payload()))
        .filter(|r| r.looked_up())
        .map(|r| (r.dst.to_string(), r.oifs))
        .collect()
}

#[test]
fn reads_captured_routes_and_forwarding_entries() {
    // br0 is 2, vp0 3, vr0 6. IPv4: the main table only, so neither the
    // node's own addresses nor broadcasts; a blackhole leaves by nothing.
    assert_eq!(
        looked_up(ROUTES4),
        [
            ("10.244.1.10/32".to_string(), vec![6]),
            ("10.244.2.0/24".to_string(), vec![2]),
            ("10.244.3.0/24".to_string(), vec![]),
        ]
    );
    // IPv6: every table, as /proc/net/ipv6_route lists them.
    let v6 = looked_up(ROUTES6);
    assert_eq!(v6.len(), captured(ROUTES6).len());
    assert!(
        v6.contains(&("fd00:10::a/128".to_string(), vec![6])),
        "{v6:?}"
    );
    assert!(v6.contains(&("fd00:2::/64".to_string(), vec![2])), "{v6:?}");

    // Only what br0 forwards by, on its port vp0: not the ports' and the
    // bridge's own addresses, nor the devices' address lists.
    let fdb: Vec<route::FdbEntry> = captured(FDB)
        .iter()
        .filter_map(|m| route::parse_fdb(m.payload()))
        .collect();
    let macs: Vec<[u8; 6]> = fdb.iter().map(|e| e.mac).collect();
    assert_eq!(fdb.len(), 3, "{fdb:?}");
    assert!(fdb.iter().all(|e| (e.bridge, e.port) == (2, 3)), "{fdb:?}");
    assert!(macs.contains(&[2, 0, 0, 0, 0, 0xaa]) && macs.contains(&[2, 0, 0, 0, 0, 0xbb]));

    // ARP: resolved entries only, as /proc/net/arp lists them (NOARP
    // ones, the kernel's multicast entry among them, are left out).
    let arp: Vec<_> = captured(NEIGH4)
        .iter()
        .filter_map(|m| route::parse_neigh4(m.payload()))
        .collect();
    let at = |ip: &str, last: u8| (ip.parse().expect("ip"), 2, [2, 0, 0, 0, 0, last]);
    assert_eq!(captured(NEIGH4).len(), 4);
    assert_eq!(arp, [at("10.244.2.7", 7), at("10.244.2.9", 9)]);
    assert!(captured(NEIGH4)
        .iter()
        .all(|m| route::parse_neigh6(m.payload()).is_none()));
}

#[test]
fn odd_routes_and_forwarding_entries() {
    let msgs = captured(ROUTES4);
    let host = msgs
        .iter()
        .find(|m| {
            route::parse_route(m.payload())
                .is_some_and(|r| r.dst.prefix_len() == 32 && r.looked_up())
        })
        .expect("the host route");
    // A multipath route leaves by each of its hops.
    let hop = |ifindex: u32| {
        let mut h = vec![8, 0, 0, 0];
        h.extend(ifindex.to_ne_bytes());
        h
    };
    let multipath = rewrite(host, RTMSG_LEN, |ty, v| match ty {
        RTA_OIF => Some((RTA_MULTIPATH, [hop(6), hop(7)].concat())),
        _ => Some((ty, v.to_vec())),
    });
    let r = route::parse_route(multipath.payload()).expect("route");
    assert_eq!(
        (r.dst.to_string(), r.oifs),
        ("10.244.1.10/32".into(), vec![6, 7])
    );
    // An IPv4 route with an IPv6-sized destination is not misread.
    let odd = rewrite(host, RTMSG_LEN, |ty, v| match ty {
        RTA_DST => Some((ty, [0xfd; 16].to_vec())),
        _ => Some((ty, v.to_vec())),
    });
    assert_eq!(route::parse_route(odd.payload()), None);

    let fdb = captured(FDB);
    let static_aa = fdb
        .iter()
        .find(|m| route::parse_fdb(m.payload()).is_some_and(|e| e.mac[5] == 0xaa))
        .expect("the static entry");
    let with_state = |state: u16| {
        let mut b = static_aa.bytes().to_vec();
        b[NLMSG_HDR + 8..NLMSG_HDR + 10].copy_from_slice(&state.to_ne_bytes());
        route::parse_fdb(Msg::from_bytes(&b).expect("msg").payload())
    };
    assert!(with_state(0x40).is_some(), "NUD_NOARP: static");
    assert!(with_state(0x02).is_some(), "NUD_REACHABLE: learned");
    assert_eq!(with_state(0x80), None, "NUD_PERMANENT: the bridge's own");
    assert_eq!(with_state(0x04), None, "NUD_STALE: expired");
    let no_master = rewrite(static_aa, NDMSG_LEN, |ty, v| {
        (ty != NDA_MASTER).then(|| (ty, v.to_vec()))
    });
    assert_eq!(route::parse_fdb(no_master.payload()), None, "no bridge");
}

/// The layout built live: the routes, forwarding entries and ARP entries
/// a pod is looked up in are what `/proc/net/{route,ipv6_route,arp}` and
/// `/sys/class/net/br0/brforward` listed for it (compared side by side on
/// this layout before those readers went), and the routed pod maps to
/// its veth.
#[test]
fn lists_routes_and_forwarding_entries() {
    require_root!();
    let (node, _pod) = node_with_routes_and_fdb();
    let snap = node.run(|| crate::ifmap::snapshot().expect("snapshot"));
    let routes: BTreeSet<(String, String)> = snap
        .routes
        .iter()
        .map(|r| (r.dst.to_string(), r.dev.clone()))
        .collect();
    let v4: Vec<&(String, String)> = routes.iter().filter(|r| !r.0.contains(':')).collect();
    let want = |a: &str, b: &str| (a.to_string(), b.to_string());
    assert_eq!(
        v4,
        [
            &want("10.244.1.10/32", "vr0"),
            &want("10.244.2.0/24", "br0"),
            &want("10.244.3.0/24", ""),
        ]
    );
    for r in [want("fd00:10::a/128", "vr0"), want("fd00:2::/64", "br0")] {
        assert!(routes.contains(&r), "{r:?} in {routes:?}");
    }
    assert!(routes.iter().all(|r| r.1 != "lo"), "{routes:?}");
    let br0 = snap.bridges.get("br0").expect("br0's table");
    for mac in [[2, 0, 0, 0, 0, 0xaa], [2, 0, 0, 0, 0, 0xbb]] {
        assert_eq!(br0.get(&mac).map(String::as_str), Some("vp0"), "{br0:?}");
    }
    assert!(br0.values().all(|p| p == "vp0"), "{br0:?}");
    let arp: Vec<String> = snap
        .arp
        .keys()
        .map(|(ip, dev)| format!("{ip} {dev}"))
        .collect();
    for want in ["10.244.2.7 br0", "10.244.2.9 br0"] {
        assert!(arp.iter().any(|a| a == want), "{want} in {arp:?}");
    }
    assert!(
        !arp.iter()
            .any(|a| a.starts_with("10.244.2.8 ") || a.starts_with("224.")),
        "NOARP: {arp:?}"
    );
    let pod = policy_compiler::model::Pod {
        namespace: "x".into(),
        name: "a".into(),
        labels: Default::default(),
        node_name: None,
        host_network: false,
        ips: vec![
            "10.244.1.10".parse().expect("ip"),
            "fd00:10::a".parse().expect("ip"),
        ],
        named_ports: vec![],
        terminal: false,
    };
    assert_eq!(snap.interface_of(&pod).as_deref(), Some("vr0"));
}

//! Kernel test of revocation (root): in a scratch network namespace, real
//! TCP, UDP and ICMP traffic of both families between addresses on `lo`
//! creates conntrack entries under a compiled ruleset; a revocation pass
//! must delete exactly the entries that ruleset denies, and none while the
//! pods concerned are not local.

use super::{revoke_with, Scope};
use crate::netlink::conntrack::{Conntrack, Tuple};
use crate::netlink::Session;
use nftpol_test_support::{require_root, Netns};
use policy_compiler::{manifest, Cluster};
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

/// `b` admits only `a`, on TCP 80, in both families; `a` and `c` are not
/// isolated.
pub(super) const CLUSTER: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {app: a}}
spec: {nodeName: n1}
status: {podIPs: [{ip: 10.77.0.1}, {ip: "fd77::1"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {app: b}}
spec: {nodeName: n1}
status: {podIPs: [{ip: 10.77.0.2}, {ip: "fd77::2"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: x, labels: {app: c}}
spec: {nodeName: n1}
status: {podIPs: [{ip: 10.77.0.3}, {ip: "fd77::3"}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-from-a, namespace: x}
spec:
  podSelector: {matchLabels: {app: b}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: a}}}]
    ports: [{port: 80}]
"#;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

/// An ICMP/ICMPv6 echo request from `src` to `dst` (ident 0x4242).
fn ping(src: IpAddr, dst: IpAddr) {
    use socket2::{Domain, Protocol, Socket, Type};
    let (domain, proto, ty) = match src {
        IpAddr::V4(_) => (Domain::IPV4, Protocol::ICMPV4, 8u8),
        IpAddr::V6(_) => (Domain::IPV6, Protocol::ICMPV6, 128u8),
    };
    let s = Socket::new(domain, Type::RAW, Some(proto)).expect("raw ICMP socket");
    s.bind(&SocketAddr::new(src, 0).into()).expect("bind ICMP");
    let mut msg = vec![ty, 0, 0, 0, 0x42, 0x42, 0, 1, b'n', b'f'];
    if src.is_ipv4() {
        // ICMPv4 carries its own checksum; for ICMPv6 the kernel fills it.
        let sum: u32 = msg
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
            .sum();
        let folded = !(((sum & 0xffff) + (sum >> 16)) as u16);
        msg[2..4].copy_from_slice(&folded.to_be_bytes());
    }
    s.send_to(&msg, &SocketAddr::new(dst, 0).into())
        .expect("send echo");
}

/// A TCP connection from `src` to `dst:port` that carried one byte each
/// way (so its entry is established); kept open by the caller.
fn tcp(listeners: &mut Vec<TcpListener>, src: IpAddr, dst: IpAddr, port: u16) -> TcpStream {
    let at = SocketAddr::new(dst, port);
    if !listeners.iter().any(|l| l.local_addr().ok() == Some(at)) {
        listeners.push(TcpListener::bind(at).expect("listen"));
    }
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(at),
        socket2::Type::STREAM,
        None,
    )
    .expect("tcp socket");
    sock.bind(&SocketAddr::new(src, 0).into())
        .expect("bind tcp");
    sock.connect_timeout(&at.into(), Duration::from_secs(5))
        .expect("connect");
    let mut c: TcpStream = sock.into();
    c.write_all(b"x").expect("write");
    let l = listeners
        .iter()
        .find(|l| l.local_addr().ok() == Some(at))
        .expect("listener");
    let (mut server, _) = l.accept().expect("accept");
    let mut b = [0u8; 1];
    server.read_exact(&mut b).expect("read");
    server.write_all(b"y").expect("echo");
    c.read_exact(&mut b).expect("read echo");
    std::mem::forget(server); // stays open with the client until the namespace goes
    c
}

fn udp(src: IpAddr, dst: IpAddr, port: u16) -> UdpSocket {
    let s = UdpSocket::bind(SocketAddr::new(src, 0)).expect("bind udp");
    s.send_to(b"x", SocketAddr::new(dst, port))
        .expect("udp send");
    s
}

/// The original tuples of every entry between test addresses.
fn entries(ct: &mut Conntrack) -> BTreeSet<Tuple> {
    let mut out = BTreeSet::new();
    ct.dump(|e| {
        let ours =
            |a: IpAddr| a.to_string().starts_with("10.77.") || a.to_string().starts_with("fd77:");
        if ours(e.orig.src) && ours(e.orig.dst) {
            out.insert(e.orig);
        }
    })
    .expect("dump conntrack");
    out
}

#[test]
fn revocation_deletes_exactly_the_entries_the_ruleset_denies() {
    if !require_root("revocation_deletes_exactly_the_entries_the_ruleset_denies") {
        return;
    }
    let loaded = manifest::parse("revoke.yaml", CLUSTER);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let cluster = Cluster::from_objects(loaded.objects);
    let rs = policy_compiler::compile(&cluster, "n1");
    let ns = Netns::create("revoke");
    for a in [
        "10.77.0.1/32",
        "10.77.0.2/32",
        "10.77.0.3/32",
        "fd77::1/128",
        "fd77::2/128",
        "fd77::3/128",
    ] {
        let mut cmd = ns.cmd("ip");
        cmd.args(["addr", "add", a, "dev", "lo"]);
        if a.contains(':') {
            cmd.arg("nodad");
        }
        let st = cmd.status().expect("ip addr add");
        assert!(st.success(), "ip addr add {a}");
    }
    ns.run(|| {
        // The table's ct expressions switch conntrack on in the namespace;
        // on `lo` traffic meets `input`, which filters nothing here (no
        // egress isolation), so every flow below gets its entry.
        Session::open().expect("netlink").apply(&rs).expect("apply");
        let mut listeners = Vec::new();
        let mut keep = Vec::new();
        let mut udps = Vec::new();
        let (a4, b4, c4) = (ip("10.77.0.1"), ip("10.77.0.2"), ip("10.77.0.3"));
        let (a6, b6, c6) = (ip("fd77::1"), ip("fd77::2"), ip("fd77::3"));
        for (a, b, c) in [(a4, b4, c4), (a6, b6, c6)] {
            keep.push(tcp(&mut listeners, a, b, 80)); // allowed
            keep.push(tcp(&mut listeners, c, b, 80)); // denied: not from a
            keep.push(tcp(&mut listeners, a, b, 81)); // denied: port
            keep.push(tcp(&mut listeners, b, a, 81)); // allowed: a is open
            udps.push(udp(a, b, 5353)); // denied: UDP
            udps.push(udp(b, c, 5353)); // allowed: c is open
            ping(c, b); // denied
            ping(b, a); // allowed
        }
        let mut ct = Conntrack::open().expect("conntrack netlink");
        let before = entries(&mut ct);
        let denied: BTreeSet<Tuple> = before
            .iter()
            .filter(|t| t.dst == b4 || t.dst == b6)
            .filter(|t| !((t.src == a4 || t.src == a6) && t.proto == 6 && t.dport == 80))
            .copied()
            .collect();
        assert_eq!(denied.len(), 8, "every flow made its entry: {before:#?}");

        // Not local to this node: nothing is touched, whatever the
        // ruleset says about it.
        let others = Scope {
            local_pods: [ip("10.77.0.9")].into_iter().collect(),
            node_local: Vec::new(),
        };
        let r = revoke_with(&mut ct, &rs, &others).expect("revoke");
        assert_eq!((r.judged, r.deleted), (0, 0), "{r:?}");
        assert_eq!(entries(&mut ct), before);

        // The same addresses as the node's own: its own connections are
        // never filtered, so never cut.
        let node = Scope {
            local_pods: [a4, b4, c4, a6, b6, c6].into_iter().collect(),
            node_local: vec![
                "10.77.0.0/24".parse().unwrap(),
                "fd77::/64".parse().unwrap(),
            ],
        };
        let r = revoke_with(&mut ct, &rs, &node).expect("revoke");
        assert_eq!(r.deleted, 0, "{r:?}");

        let local = Scope {
            local_pods: node.local_pods.clone(),
            node_local: Vec::new(),
        };
        let r = revoke_with(&mut ct, &rs, &local).expect("revoke");
        let cut: BTreeSet<Tuple> = r.denied.iter().copied().collect();
        assert_eq!(cut, denied, "{r:?}");
        assert_eq!((r.deleted, r.gone, r.failed), (8, 0, 0), "{r:?}");
        let after = entries(&mut ct);
        assert_eq!(
            after,
            before.difference(&denied).copied().collect(),
            "exactly the denied entries are gone"
        );
        // A second pass finds nothing more to cut.
        let again = revoke_with(&mut ct, &rs, &local).expect("revoke");
        assert!(again.denied.is_empty(), "{again:?}");
        drop((keep, udps, listeners));
    });
}

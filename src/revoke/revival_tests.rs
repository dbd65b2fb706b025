//! Kernel test (root): a connection cut by revocation stays cut when its
//! server keeps talking. Client, node and server are three scratch
//! namespaces, the node routing between them with the compiled ruleset
//! applied; traffic crosses its `forward` hook as pod traffic does.
//!
//! After the cut, with conntrack's loose TCP pick-up (on by default, and
//! set here explicitly inside the node's namespace only), the server's
//! next segment would open a new entry in the server -> client direction,
//! which no policy isolates, and the client's packets would then pass as
//! its replies: the connection would come back to life. A new TCP
//! connection must start with a SYN, so that segment is dropped.

use super::{revoke_with, Scope};
use crate::netlink::conntrack::Conntrack;
use crate::netlink::Session;
use nftpol_test_support::{require_root, Netns};
use policy_compiler::{manifest, Cluster};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

const PORT: u16 = 7070;
/// How long a revived connection is given to show it (a cut one stays
/// silent whatever the wait; a revived segment takes milliseconds).
const SILENCE: Duration = Duration::from_secs(2);

/// x/a (client) and x/b (server) on node n1; `b_admits` is the pod
/// selector value b's ingress admits on TCP 7070.
fn cluster(b_admits: &str) -> Cluster {
    let yaml = format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: a, namespace: x, labels: {{app: a}}}}
spec: {{nodeName: n1}}
status: {{podIPs: [{{ip: 10.78.0.1}}, {{ip: "fd78::1"}}]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: b, namespace: x, labels: {{app: b}}}}
spec: {{nodeName: n1}}
status: {{podIPs: [{{ip: 10.78.1.1}}, {{ip: "fd78:1::1"}}]}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: b-ingress, namespace: x}}
spec:
  podSelector: {{matchLabels: {{app: b}}}}
  ingress:
  - from: [{{podSelector: {{matchLabels: {{app: {b_admits}}}}}}}]
    ports: [{{port: {PORT}}}]
"#
    );
    let loaded = manifest::parse("revival.yaml", &yaml);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    Cluster::from_objects(loaded.objects)
}

fn ip_cmd(ns: &Netns, args: &[&str]) {
    let st = ns.cmd("ip").args(args).status().expect("run ip");
    assert!(st.success(), "ip {args:?} in {}", ns.name());
}

fn sysctl(ns: &Netns, setting: &str) {
    let st = ns
        .cmd("sysctl")
        .args(["-qw", setting])
        .status()
        .expect("run sysctl");
    assert!(st.success(), "sysctl {setting} in {}", ns.name());
}

/// One end of a routed link: `dev` in `ns` with `addrs`, up.
fn end(ns: &Netns, dev: &str, addrs: &[&str]) {
    for a in addrs {
        let mut args = vec!["addr", "add", a, "dev", dev];
        if a.contains(':') {
            args.push("nodad");
        }
        ip_cmd(ns, &args);
    }
    ip_cmd(ns, &["link", "set", dev, "up"]);
}

/// client (c0) -- (r0) node (r1) -- (s0) server, routed both families.
struct Topo {
    client: Netns,
    node: Netns,
    server: Netns,
}

fn topology() -> Topo {
    let t = Topo {
        client: Netns::create("rv-client"),
        node: Netns::create("rv-node"),
        server: Netns::create("rv-server"),
    };
    for (dev, peer, ns) in [("r0", "c0", &t.client), ("r1", "s0", &t.server)] {
        ip_cmd(
            &t.node,
            &[
                "link",
                "add",
                dev,
                "type",
                "veth",
                "peer",
                "name",
                peer,
                "netns",
                ns.name(),
            ],
        );
    }
    end(&t.node, "r0", &["10.78.0.254/24", "fd78::fe/64"]);
    end(&t.node, "r1", &["10.78.1.254/24", "fd78:1::fe/64"]);
    end(&t.client, "c0", &["10.78.0.1/24", "fd78::1/64"]);
    end(&t.server, "s0", &["10.78.1.1/24", "fd78:1::1/64"]);
    for (ns, v4, v6) in [
        (&t.client, "10.78.0.254", "fd78::fe"),
        (&t.server, "10.78.1.254", "fd78:1::fe"),
    ] {
        ip_cmd(ns, &["route", "add", "default", "via", v4]);
        ip_cmd(ns, &["-6", "route", "add", "default", "via", v6]);
    }
    sysctl(&t.node, "net.ipv4.ip_forward=1");
    sysctl(&t.node, "net.ipv6.conf.all.forwarding=1");
    t
}

/// Client and server ends of one established connection.
struct Conn {
    client: TcpStream,
    server: TcpStream,
}

fn connect(t: &Topo, listener: &TcpListener, to: IpAddr) -> Conn {
    let mut client = t.client.run(|| {
        TcpStream::connect_timeout(&SocketAddr::new(to, PORT), Duration::from_secs(10))
            .expect("connect while admitted")
    });
    let (mut server, _) = listener.accept().expect("accept");
    for s in [&client, &server] {
        s.set_read_timeout(Some(SILENCE)).expect("read timeout");
    }
    client.write_all(b"c").expect("client write");
    let mut b = [0u8; 1];
    server.read_exact(&mut b).expect("server read");
    server.write_all(b"s").expect("server write");
    client.read_exact(&mut b).expect("client read");
    Conn { client, server }
}

/// Whether one byte written on `from` arrives on `to` within [`SILENCE`].
fn arrives(from: &mut TcpStream, to: &mut TcpStream) -> bool {
    from.write_all(b"!").expect("write on the open socket");
    let mut b = [0u8; 1];
    to.read_exact(&mut b).is_ok()
}

#[test]
fn a_revoked_connection_is_not_revived_by_its_server() {
    if !require_root("a_revoked_connection_is_not_revived_by_its_server") {
        return;
    }
    let t = topology();
    let admitted = policy_compiler::compile(&cluster("a"), "n1");
    let tightened = policy_compiler::compile(&cluster("c"), "n1");
    t.node.run(|| {
        Session::open()
            .expect("netlink")
            .apply(&admitted)
            .expect("apply")
    });
    // The table's ct expressions load conntrack; its loose pick-up is a
    // per-namespace setting, set in the node's namespace only.
    sysctl(&t.node, "net.netfilter.nf_conntrack_tcp_loose=1");
    let listener = t.server.run(|| {
        TcpListener::bind(SocketAddr::new(
            IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
            PORT,
        ))
        .expect("listen")
    });
    let to: [IpAddr; 2] = ["10.78.1.1".parse().unwrap(), "fd78:1::1".parse().unwrap()];
    let mut conns: Vec<Conn> = to.iter().map(|d| connect(&t, &listener, *d)).collect();

    let scope = Scope {
        local_pods: ["10.78.0.1", "fd78::1", "10.78.1.1", "fd78:1::1"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect(),
        node_local: Vec::new(),
    };
    let report = t.node.run(|| {
        let mut s = Session::open().expect("netlink");
        s.apply(&tightened).expect("apply");
        let mut ct = Conntrack::open().expect("conntrack netlink");
        revoke_with(&mut ct, &tightened, &scope).expect("revoke")
    });
    assert_eq!((report.deleted, report.failed), (2, 0), "{report:?}");

    // Both directions at once per family, so the waits overlap.
    let outcomes: Vec<(bool, bool)> = std::thread::scope(|sc| {
        let handles: Vec<_> = conns
            .iter_mut()
            .map(|c| {
                sc.spawn(move || {
                    let revived = arrives(&mut c.server, &mut c.client);
                    let reached = arrives(&mut c.client, &mut c.server);
                    (revived, reached)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("probe"))
            .collect()
    });
    for (dst, (revived, reached)) in to.iter().zip(outcomes) {
        assert!(
            !revived && !reached,
            "connection to {dst}: server's segment delivered {revived}, client's {reached} \
             after the cut"
        );
    }
}

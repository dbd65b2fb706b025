//! Kernel tests of the applier. They need root; each runs in a scratch
//! network namespace of its own (`nftpol_test_support::Netns`, removed by a
//! guard even on panic), on a thread that `setns`-es into it, so the host's
//! ruleset is never touched. Without root they print why and pass, except
//! under CI (`CI=true`), where that is a failure.

use super::{NetlinkError, Session};
use nftpol_test_support::{require_root, Netns};
use policy_compiler::diff::{self, Op, Transaction};
use policy_compiler::fixture::{allow_tcp_from, base, ip, pod_chain, rule, set};
use policy_compiler::ir::*;
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::process::Command;

pub(crate) fn nft(args: &[&str], stdin: Option<&str>) -> String {
    use std::io::Write;
    let mut cmd = Command::new("nft");
    cmd.args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("spawn nft");
    if let Some(s) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(s.as_bytes())
            .expect("write nft stdin");
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().expect("nft output");
    assert!(
        out.status.success(),
        "nft {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Deletes one element of `every_feature`'s `pod4_a` and adds one it
/// already holds: the kernel refuses the add (EEXIST), so the batch
/// changes nothing.
fn existing_element_tx() -> Transaction {
    Transaction {
        ops: vec![
            Op::DelElements {
                set: "pod4_a".into(),
                elements: vec![Element::Addr(ip("10.1.0.6"))],
            },
            Op::AddElements {
                set: "pod4_a".into(),
                elements: vec![Element::Addr(ip("10.1.0.5"))],
            },
        ],
    }
}

/// A ruleset with every IR feature, in the shapes the compiler emits,
/// with one pod per family; `pods` extra v4 pods get chains and vmap
/// elements (for incremental tests).
pub(crate) fn every_feature(pods: &[u8]) -> Ruleset {
    let mut rs = Ruleset::default();
    rs.sets.insert(
        "pod4_a".into(),
        set(
            SetKind::Addr {
                family: Family::Ipv4,
                interval: false,
            },
            vec![Element::Addr(ip("10.1.0.5")), Element::Addr(ip("10.1.0.6"))],
        ),
    );
    rs.sets.insert(
        "pod6_a".into(),
        set(
            SetKind::Addr {
                family: Family::Ipv6,
                interval: false,
            },
            vec![Element::Addr(ip("fd00::5"))],
        ),
    );
    rs.sets.insert(
        "cidr4_a".into(),
        set(
            SetKind::Addr {
                family: Family::Ipv4,
                interval: true,
            },
            vec![
                Element::AddrRange(ip("0.0.0.0"), ip("9.255.255.255")),
                Element::AddrRange(ip("11.0.0.0"), ip("172.15.255.255")),
                Element::AddrRange(ip("192.168.1.5"), ip("192.168.1.9")),
                Element::AddrRange(ip("200.0.0.0"), ip("255.255.255.255")),
            ],
        ),
    );
    rs.sets.insert(
        "cidr6_a".into(),
        set(
            SetKind::Addr {
                family: Family::Ipv6,
                interval: true,
            },
            vec![
                Element::AddrRange(ip("2001:db8::"), ip("2001:db8::ffff")),
                Element::AddrRange(ip("fd00::1:0"), ip("fd00::1:0")),
            ],
        ),
    );
    rs.sets.insert(
        "tcp_a".into(),
        set(
            SetKind::Ports,
            vec![
                Element::PortRange(80, 80),
                Element::PortRange(8000, 8080),
                Element::PortRange(60000, 65535),
            ],
        ),
    );
    rs.sets.insert(
        "nam4_a".into(),
        set(
            SetKind::AddrProtoPort {
                family: Family::Ipv4,
            },
            vec![
                Element::AddrProtoPort(ip("10.1.0.7"), l4::TCP, 8080),
                Element::AddrProtoPort(ip("10.1.0.7"), l4::SCTP, 9000),
            ],
        ),
    );
    rs.sets.insert(
        "nam6_a".into(),
        set(
            SetKind::AddrProtoPort {
                family: Family::Ipv6,
            },
            vec![Element::AddrProtoPort(ip("fd00::7"), l4::UDP, 53)],
        ),
    );
    let mut ing4 = vec![Element::VmapJump(ip("10.1.0.7"), "ing_default_a".into())];
    for p in pods {
        let chain = format!("ing_default_p{p}");
        ing4.push(Element::VmapJump(ip(&format!("10.1.1.{p}")), chain.clone()));
        let allow = allow_tcp_from("pod4_a", "tcp_a", Some("default/p ingress[0]"));
        rs.chains
            .insert(chain, pod_chain(vec![allow], Some("default/p ingress")));
    }
    rs.sets.insert(
        "ingress_v4".into(),
        set(
            SetKind::Vmap {
                family: Family::Ipv4,
            },
            ing4,
        ),
    );
    rs.sets.insert(
        "ingress_v6".into(),
        set(
            SetKind::Vmap {
                family: Family::Ipv6,
            },
            vec![Element::VmapJump(ip("fd00::7"), "ing_default_a".into())],
        ),
    );
    rs.sets.insert(
        "egress_v4".into(),
        set(
            SetKind::Vmap {
                family: Family::Ipv4,
            },
            vec![Element::VmapJump(ip("10.1.0.7"), "egr_default_a".into())],
        ),
    );
    rs.sets.insert(
        "egress_v6".into(),
        set(
            SetKind::Vmap {
                family: Family::Ipv6,
            },
            vec![],
        ),
    );
    rs.chains.insert(
        "ing_default_a".into(),
        Chain {
            base: None,
            rules: vec![
                // A verdict log: the rule's matches, rate limit, nflog,
                // no verdict.
                rule(
                    vec![
                        Match::AddrInSet {
                            family: Family::Ipv4,
                            dir: Dir::Src,
                            set: "pod4_a".into(),
                        },
                        Match::L4Proto(l4::TCP),
                        Match::DPortInSet {
                            set: "tcp_a".into(),
                        },
                        Match::Limit {
                            per_second: 10,
                            burst: 5,
                        },
                        Match::Log {
                            group: 2,
                            prefix: "default/allow ingress[0] allow".into(),
                        },
                    ],
                    Verdict::Continue,
                    None,
                ),
                allow_tcp_from("pod4_a", "tcp_a", Some("default/allow ingress[0]")),
                rule(
                    vec![
                        Match::AddrInSet {
                            family: Family::Ipv6,
                            dir: Dir::Src,
                            set: "pod6_a".into(),
                        },
                        Match::L4Proto(l4::UDP),
                        Match::DPort { lo: 53, hi: 53 },
                    ],
                    Verdict::Accept,
                    Some("default/allow ingress[1]"),
                ),
                rule(
                    vec![
                        Match::AddrInSet {
                            family: Family::Ipv4,
                            dir: Dir::Src,
                            set: "cidr4_a".into(),
                        },
                        Match::L4Proto(l4::SCTP),
                        Match::DPort { lo: 80, hi: 90 },
                    ],
                    Verdict::Accept,
                    None,
                ),
                rule(
                    vec![Match::AddrInSet {
                        family: Family::Ipv6,
                        dir: Dir::Src,
                        set: "cidr6_a".into(),
                    }],
                    Verdict::Accept,
                    None,
                ),
                rule(
                    vec![Match::DAddrProtoPortInSet {
                        family: Family::Ipv4,
                        set: "nam4_a".into(),
                    }],
                    Verdict::Accept,
                    Some("default/named ingress[0]"),
                ),
                rule(
                    vec![Match::DAddrProtoPortInSet {
                        family: Family::Ipv6,
                        set: "nam6_a".into(),
                    }],
                    Verdict::Accept,
                    Some("default/named ingress[0]"),
                ),
                rule(vec![], Verdict::Drop, Some("default/a ingress")),
            ],
        },
    );
    rs.chains.insert(
        "egr_default_a".into(),
        Chain {
            base: None,
            rules: vec![
                rule(
                    vec![Match::AddrInSet {
                        family: Family::Ipv4,
                        dir: Dir::Dst,
                        set: "cidr4_a".into(),
                    }],
                    Verdict::Return,
                    Some("default/egress egress[0]"),
                ),
                rule(vec![], Verdict::Jump("ing_default_a".into()), None),
                rule(vec![], Verdict::Drop, Some("default/a egress")),
            ],
        },
    );
    for (name, hook) in [("forward", Hook::Forward), ("input", Hook::Input)] {
        rs.chains.insert(
            name.into(),
            Chain {
                base: base(hook),
                rules: vec![
                    rule(
                        vec![Match::CtState(
                            [CtState::Established, CtState::Related].into(),
                        )],
                        Verdict::Accept,
                        None,
                    ),
                    rule(
                        vec![Match::CtState([CtState::Invalid].into())],
                        Verdict::Drop,
                        None,
                    ),
                    rule(
                        vec![Match::Icmpv6Type { lo: 133, hi: 137 }],
                        Verdict::Accept,
                        None,
                    ),
                    rule(
                        vec![],
                        Verdict::AddrVmap {
                            family: Family::Ipv4,
                            dir: Dir::Src,
                            map: "egress_v4".into(),
                        },
                        None,
                    ),
                    rule(
                        vec![],
                        Verdict::AddrVmap {
                            family: Family::Ipv6,
                            dir: Dir::Src,
                            map: "egress_v6".into(),
                        },
                        None,
                    ),
                    rule(
                        vec![],
                        Verdict::AddrVmap {
                            family: Family::Ipv4,
                            dir: Dir::Dst,
                            map: "ingress_v4".into(),
                        },
                        None,
                    ),
                    rule(
                        vec![],
                        Verdict::AddrVmap {
                            family: Family::Ipv6,
                            dir: Dir::Dst,
                            map: "ingress_v6".into(),
                        },
                        None,
                    ),
                ],
            },
        );
    }
    rs.guard = Some(guard_of(&[
        ("vp0", &["10.1.0.7", "fd00::7"]),
        ("vp1", &["10.1.0.8"]),
    ]));
    rs
}

/// Pod `default/p<i>` on node `n` with the given addresses: the pods
/// behind the interfaces of [`add_src_chains`] and [`guard_of`].
fn pod_on_n(i: usize, ips: &[&str]) -> policy_compiler::model::Pod {
    policy_compiler::model::Pod {
        namespace: "default".into(),
        name: format!("p{i}"),
        labels: Default::default(),
        node_name: Some("n".into()),
        host_network: false,
        ips: ips.iter().map(|a| ip(a)).collect(),
        named_ports: vec![],
        terminal: false,
    }
}

/// The `inet` source validation chains the compiler writes for pods
/// `p0`, `p1`, ... behind the given interfaces (which need not exist):
/// address checks, the neighbour discovery exemptions and the drops of
/// source-routed packets.
pub(crate) fn add_src_chains(rs: &mut Ruleset, ports: &[(&str, &[&str])]) {
    let mut c = policy_compiler::Cluster::new();
    let mut pod_interfaces = std::collections::BTreeMap::new();
    for (i, (dev, ips)) in ports.iter().enumerate() {
        c.apply_pod(pod_on_n(i, ips));
        pod_interfaces.insert(format!("default/p{i}"), dev.to_string());
    }
    let net = policy_compiler::NodeNet {
        pod_interfaces,
        ..Default::default()
    };
    policy_compiler::srcval::add_chains(rs, &c, "n", &net);
}

/// A guard table as the compiler writes it: one chain per (interface,
/// pod addresses). The interfaces need not exist.
pub(crate) fn guard_of(ports: &[(&str, &[&str])]) -> Guard {
    let chains = ports
        .iter()
        .enumerate()
        .map(|(i, (dev, ips))| {
            let pod = pod_on_n(i, ips);
            (
                policy_compiler::srcval::guard_chain_name(&pod),
                policy_compiler::srcval::guard_chain(dev, &[&pod]),
            )
        })
        .collect();
    Guard { flags: 0, chains }
}

pub(crate) fn session() -> Session {
    Session::open().expect("open netlink session")
}

/// A pod isolated by many long-named policies gets the longest comment
/// the compiler emits; the compiled ruleset must apply and read back.
#[test]
fn longest_compiled_comments_fit_netlink() {
    require_root!();
    use policy_compiler::model::{Namespace, Pod, Policy};
    let mut c = policy_compiler::Cluster::new();
    c.apply_namespace(Namespace {
        name: "team-with-a-long-namespace-name".into(),
        labels: Default::default(),
    });
    c.apply_pod(Pod {
        namespace: "team-with-a-long-namespace-name".into(),
        name: "p".into(),
        labels: Default::default(),
        node_name: Some("n".into()),
        host_network: false,
        ips: vec![ip("10.1.0.1")],
        named_ports: vec![],
        terminal: false,
    });
    for i in 0..8 {
        c.apply_policy(Policy {
            namespace: "team-with-a-long-namespace-name".into(),
            name: format!("allow-something-long-name-{i:02}"),
            pod_selector: Default::default(),
            ingress: Some(vec![]),
            egress: None,
            audit: Default::default(),
        });
    }
    let want = policy_compiler::compile(&c, "n");
    let longest = want
        .chains
        .values()
        .flat_map(|ch| ch.rules.iter())
        .filter_map(|r| r.comment.as_ref())
        .map(String::len)
        .max()
        .unwrap_or(0);
    assert_eq!(longest, policy_compiler::names::MAX_COMMENT);
    let ns = Netns::create("kernel");
    ns.run(|| {
        let mut s = session();
        s.apply(&want).expect("apply with the longest comments");
        let got = s.read_table().expect("read back").expect("table exists");
        assert_eq!(got, want);
    });
}

#[test]
fn every_feature_round_trips_and_second_apply_sends_nothing() {
    require_root!();
    let ns = Netns::create("kernel");
    ns.run(|| {
        let want = every_feature(&[1, 2]);
        let mut s = session();
        assert_eq!(s.read_table().expect("read"), None);
        let r = s.apply(&want).expect("first apply");
        assert!(r.batch_sent);
        let got = s.read_table().expect("read back").expect("table exists");
        assert_eq!(got, want);
        assert!(diff::diff(&want, &got).is_empty());
        let r = s.apply(&want).expect("second apply");
        assert_eq!(r.summary, "no changes");
        assert!(!r.batch_sent);
    });
}

#[test]
fn netlink_apply_equals_nft_f_of_the_rendered_script() {
    require_root!();
    let mut validated = every_feature(&[3]);
    add_src_chains(
        &mut validated,
        &[("vp0", &["10.1.0.7", "fd00::7"]), ("vp1", &["10.1.0.8"])],
    );
    let mut cases = vec![
        ("every_feature".to_string(), every_feature(&[3])),
        (
            "every_feature with source validation".to_string(),
            validated,
        ),
    ];
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/policies"))
        .expect("examples")
    {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read example");
        let loaded = policy_compiler::parse(&path.display().to_string(), &text);
        let cluster = policy_compiler::Cluster::from_objects(loaded.objects);
        // Source validation chains (ingress hook, device, address and
        // hop limit compares, counters) come from the interface maps.
        let net = match std::fs::read_to_string(path.with_extension("interfaces")) {
            Ok(map) => policy_compiler::NodeNet {
                pod_interfaces: policy_compiler::srcval::parse_interface_map(&map)
                    .expect("interface map"),
                ..Default::default()
            },
            Err(_) => policy_compiler::NodeNet::default(),
        };
        for node in cluster.nodes() {
            let rs = policy_compiler::compile_node(&cluster, &node, &net);
            cases.push((format!("{} node {node}", path.display()), rs));
        }
    }
    assert!(cases.len() > 10, "examples were found");
    let a = Netns::create("kernel");
    let b = Netns::create("kernel");
    for (name, want) in cases {
        let (via_netlink, text_a) = a.run(|| {
            let mut s = session();
            // Incrementally from the previous case first...
            s.apply(&want).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(
                s.read_table().expect("read").as_ref(),
                Some(&want),
                "{name}: incremental"
            );
            // ...then from scratch, for `nft list` to print objects in
            // the same (creation) order as after `nft -f`.
            s.cleanup().expect("cleanup");
            s.apply(&want).unwrap_or_else(|e| panic!("{name}: {e}"));
            let got = s.read_table().expect("read");
            (got, nft(&["list", "ruleset"], None))
        });
        let (via_nft, text_b) = b.run(|| {
            nft(
                &["-f", "-"],
                Some(&policy_compiler::render::render_script(&want)),
            );
            let got = session().read_table().expect("read");
            (got, nft(&["list", "ruleset"], None))
        });
        assert_eq!(
            via_netlink.as_ref(),
            Some(&want),
            "{name}: netlink read-back"
        );
        assert_eq!(via_nft.as_ref(), Some(&want), "{name}: read-back of nft -f");
        assert_eq!(text_a, text_b, "{name}: nft list table differs");
    }
}

#[test]
fn a_batch_with_one_bad_message_changes_nothing() {
    require_root!();
    let ns = Netns::create("kernel");
    ns.run(|| {
        let want = every_feature(&[1]);
        let mut s = session();
        s.apply(&want).expect("apply");
        // Good messages first, then a rule naming a set that does not exist.
        let tx = Transaction {
            ops: vec![
                Op::AddElements {
                    set: "pod4_a".into(),
                    elements: vec![Element::Addr(ip("10.9.9.9"))],
                },
                Op::AddChain {
                    name: "ing_new".into(),
                    base: None,
                },
                Op::AddRules {
                    chain: "ing_new".into(),
                    rules: vec![rule(
                        vec![Match::DPortInSet {
                            set: "missing".into(),
                        }],
                        Verdict::Accept,
                        None,
                    )],
                },
                Op::DelElements {
                    set: "tcp_a".into(),
                    elements: vec![Element::PortRange(80, 80)],
                },
            ],
        };
        match s.send(&tx) {
            Err(NetlinkError::Rejected { object, errno, .. }) => {
                assert!(object.contains("add rule 0 of chain ing_new"), "{object}");
                assert_eq!(errno, libc::ENOENT);
            }
            other => panic!("expected a rejection, got {other:?}"),
        }
        assert_eq!(s.read_table().expect("read").as_ref(), Some(&want));
        // An element that already exists: EEXIST, still nothing applied.
        let tx = existing_element_tx();
        match s.send(&tx) {
            Err(e @ NetlinkError::Rejected { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains("add element 10.1.0.5 of set pod4_a"), "{msg}");
                assert!(msg.contains("nothing was changed"), "{msg}");
            }
            other => panic!("expected a rejection, got {other:?}"),
        }
        assert_eq!(s.read_table().expect("read").as_ref(), Some(&want));
    });
}

/// A batch of `before` good element messages, one that fails with
/// EEXIST (`10.1.0.5` is already in `pod4_a`), `after` good ones, and
/// `extra_bad` further failing ones at the end.
fn batch_failing_in_the_middle(before: u8, after: u8, extra_bad: bool) -> Transaction {
    let add = |set: &str, addr: String| Op::AddElements {
        set: set.into(),
        elements: vec![Element::Addr(ip(&addr))],
    };
    let mut ops: Vec<Op> = (0..before)
        .map(|i| add("pod4_a", format!("10.7.0.{i}")))
        .collect();
    ops.push(add("pod4_a", "10.1.0.5".into()));
    ops.extend((0..after).map(|i| add("pod4_a", format!("10.8.0.{i}"))));
    if extra_bad {
        ops.push(add("pod4_a", "10.1.0.6".into()));
    }
    Transaction { ops }
}

#[test]
fn errors_in_the_middle_of_a_batch_name_their_message_in_both_ack_modes() {
    require_root!();
    let ns = Netns::create("kernel");
    ns.run(|| {
        let want = every_feature(&[1]);
        for ack_each in [false, true] {
            let mut s = session();
            s.set_ack_each(ack_each);
            s.apply(&want).expect("apply");
            for (before, after, extra_bad) in [(200, 200, false), (0, 250, false), (120, 3, true)] {
                let tx = batch_failing_in_the_middle(before, after, extra_bad);
                let case = format!(
                    "ack_each {ack_each}, failing message {before} of {}",
                    tx.ops.len()
                );
                match s.send(&tx) {
                    Err(NetlinkError::Rejected {
                        object,
                        errno,
                        more,
                        ..
                    }) => {
                        assert_eq!(object, "add element 10.1.0.5 of set pod4_a", "{case}");
                        assert_eq!(errno, libc::EEXIST, "{case}");
                        assert_eq!(more, usize::from(extra_bad), "{case}");
                    }
                    other => panic!("{case}: expected a rejection, got {other:?}"),
                }
                assert_eq!(
                    s.read_table().expect("read").as_ref(),
                    Some(&want),
                    "{case}"
                );
            }
            // The same session then commits a good batch: no answer of the
            // failed one is left behind to be mistaken for this one's.
            let good = Transaction {
                ops: vec![Op::AddElements {
                    set: "pod4_a".into(),
                    elements: (0..10)
                        .map(|i| Element::Addr(ip(&format!("10.6.0.{i}"))))
                        .collect(),
                }],
            };
            s.send(&good).expect("good batch after a rejected one");
            let got = s.read_table().expect("read").expect("table");
            assert_eq!(
                got.sets["pod4_a"].elements.len(),
                want.sets["pod4_a"].elements.len() + 10
            );
            s.cleanup().expect("cleanup");
        }
    });
}

#[test]
fn incremental_changes_send_only_what_changed() {
    require_root!();
    let ns = Netns::create("kernel");
    ns.run(|| {
        let mut s = session();
        let one = every_feature(&[1]);
        s.apply(&one).expect("apply");
        // A pod appears: one chain (+ its 2 rules) and one map element.
        let two = every_feature(&[1, 2]);
        let r = s.apply(&two).expect("add pod");
        assert_eq!(r.summary, "+1 chain, +1 element");
        assert_eq!(r.messages, 4, "chain, 2 rules, 1 element message");
        assert_eq!(s.read_table().expect("read").as_ref(), Some(&two));
        // A peer appears: one element message.
        let mut peer = two.clone();
        if let Some(set) = peer.sets.get_mut("pod4_a") {
            set.elements.insert(Element::Addr(ip("10.1.0.99")));
        }
        let r = s.apply(&peer).expect("add peer");
        assert_eq!((r.summary.as_str(), r.messages), ("+1 element", 1));
        // A rule changes: flush plus the chain's rules, nothing else.
        let mut changed = peer.clone();
        if let Some(c) = changed.chains.get_mut("ing_default_p2") {
            c.rules.insert(
                0,
                rule(vec![Match::L4Proto(l4::UDP)], Verdict::Accept, None),
            );
        }
        let r = s.apply(&changed).expect("change rule");
        assert_eq!((r.summary.as_str(), r.messages), ("~1 chain", 4));
        assert_eq!(s.read_table().expect("read").as_ref(), Some(&changed));
        // The pod goes away again.
        let r = s.apply(&one).expect("remove pod");
        assert_eq!(r.summary, "-1 chain, -2 elements");
        assert_eq!(s.read_table().expect("read").as_ref(), Some(&one));
        // Many elements span several messages and still round-trip.
        let mut big = one.clone();
        let mut elements = BTreeSet::new();
        for i in 0..5000u32 {
            let o = i.to_be_bytes();
            elements.insert(Element::AddrRange(
                IpAddr::from([20, o[2], o[3], 0]),
                IpAddr::from([20, o[2], o[3], 127]),
            ));
        }
        big.sets.insert(
            "big4".into(),
            Set {
                kind: SetKind::Addr {
                    family: Family::Ipv4,
                    interval: true,
                },
                elements,
            },
        );
        let r = s.apply(&big).expect("big set");
        assert!(r.messages > 2, "{r:?}");
        assert_eq!(s.read_table().expect("read").as_ref(), Some(&big));
        assert!(!s.apply(&big).expect("again").batch_sent);
    });
}

#[test]
fn other_tables_survive_apply_and_cleanup() {
    require_root!();
    let ns = Netns::create("kernel");
    ns.run(|| {
        nft(
            &["-f", "-"],
            Some("table ip keepme { set s { type ipv4_addr; elements = { 1.2.3.4 } }\n chain c { type filter hook input priority 0; policy accept; ip saddr @s counter\n }\n}\ntable inet other {\n chain x {\n }\n}\n"),
        );
        let before_keep = nft(&["list", "table", "ip", "keepme"], None);
        let before_other = nft(&["list", "table", "inet", "other"], None);
        let mut s = session();
        s.apply(&every_feature(&[1])).expect("apply");
        s.apply(&every_feature(&[2])).expect("apply again");
        assert!(s.cleanup().expect("cleanup"));
        assert!(!s.cleanup().expect("second cleanup"));
        assert_eq!(s.read_table().expect("read"), None);
        assert_eq!(nft(&["list", "table", "ip", "keepme"], None), before_keep);
        assert_eq!(nft(&["list", "table", "inet", "other"], None), before_other);
    });
}

#[test]
fn foreign_rules_in_our_table_are_replaced_atomically() {
    require_root!();
    let ns = Netns::create("kernel");
    ns.run(|| {
        let want = every_feature(&[1]);
        let mut s = session();
        s.apply(&want).expect("apply");
        nft(
            &["add", "rule", "inet", "nftpol", "ing_default_a", "counter"],
            None,
        );
        assert!(matches!(s.read_table(), Err(NetlinkError::Decode { .. })));
        let r = s.apply(&want).expect("apply over foreign rule");
        assert!(r.replaced_foreign, "{r:?}");
        assert_eq!(s.read_table().expect("read").as_ref(), Some(&want));
    });
}

#[test]
fn applier_uses_its_cache_and_recovers_from_drift() {
    require_root!();
    let ns = Netns::create("kernel");
    ns.run(|| {
        let mut a = super::Applier::new().expect("applier");
        let one = every_feature(&[1]);
        let two = every_feature(&[1, 2]);
        assert!(a.apply(&one).expect("first").batch_sent);
        let r = a.apply(&two).expect("second");
        assert_eq!(r.summary, "+1 chain, +1 element");
        assert!(!a.apply(&two).expect("steady").batch_sent);
        // Someone removes an element the next diff deletes: the cached
        // diff is rejected (ENOENT), the retry from a read-back repairs.
        nft(
            &[
                "delete",
                "element",
                "inet",
                "nftpol",
                "ingress_v4",
                "{ 10.1.1.2 }",
            ],
            None,
        );
        let r = a.apply(&one).expect("after drift");
        assert!(r.batch_sent);
        assert_eq!(a.session().read_table().expect("read").as_ref(), Some(&one));
        // Drift the next diff does not touch stays until forget() (the
        // agent's periodic drift check), then one read-back repairs it.
        nft(
            &[
                "delete",
                "element",
                "inet",
                "nftpol",
                "pod4_a",
                "{ 10.1.0.5 }",
            ],
            None,
        );
        assert!(!a.apply(&one).expect("cached").batch_sent);
        a.forget();
        assert_eq!(a.apply(&one).expect("repair").summary, "+1 element");
        assert_eq!(a.session().read_table().expect("read").as_ref(), Some(&one));
    });
}

/// Drops CAP_NET_ADMIN from the calling thread's effective set
/// (capabilities are per thread), as an unprivileged agent would run.
fn drop_net_admin_on_this_thread() {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const V3: u32 = 0x2008_0522;
    const CAP_NET_ADMIN: u32 = 12;
    let mut h = Header {
        version: V3,
        pid: 0,
    };
    let mut d = [Data::default(); 2];
    // SAFETY: capget/capset with a v3 header and two data structs, as the
    // kernel ABI requires; pid 0 is this thread.
    unsafe {
        assert_eq!(
            libc::syscall(libc::SYS_capget, &mut h as *mut Header, d.as_mut_ptr()),
            0
        );
        d[0].effective &= !(1 << CAP_NET_ADMIN);
        assert_eq!(
            libc::syscall(libc::SYS_capset, &mut h as *mut Header, d.as_ptr()),
            0
        );
    }
}

#[test]
fn without_cap_net_admin_the_error_says_so() {
    require_root!();
    let ns = Netns::create("kernel");
    ns.run(|| {
        drop_net_admin_on_this_thread();
        let err = match Session::open().and_then(|mut s| s.apply(&every_feature(&[]))) {
            Err(e) => e,
            Ok(r) => panic!("applied without CAP_NET_ADMIN: {r:?}"),
        };
        assert!(
            matches!(err, NetlinkError::PermissionDenied { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("CAP_NET_ADMIN"), "{err}");
    });
}

#[test]
fn sessions_and_appliers_can_move_between_threads() {
    fn is_send<T: Send>() {}
    is_send::<Session>();
    is_send::<super::Applier>();
}

/// The nflog reader against the kernel: packets an unlimited log rule
/// reports decode with their prefix, addresses and ports; a second reader
/// cannot take the group; a flood left unread overflows the socket, which
/// the reader reports as an overrun and then goes on decoding.
#[test]
fn nflog_reader_decodes_logged_packets_and_survives_an_overrun() {
    use super::nflog::{Reader, Received};
    use std::time::{Duration, Instant};
    require_root!();
    let ns = Netns::create("kernel");
    ns.run(|| {
        let up = Command::new("ip").args(["link", "set", "lo", "up"]).status();
        assert!(up.expect("ip").success());
        nft(
            &["-f", "-"],
            Some(
                "table inet t {\n chain out {\n  type filter hook output priority 0; policy accept;\n  udp dport 9 log prefix \"t/p egress[0] allow\" group 7\n }\n}\n",
            ),
        );
        let mut r = Reader::open(7, Duration::from_millis(100)).expect("bind group 7");
        let second = Reader::open(7, Duration::from_millis(100));
        assert!(second.is_err(), "a second reader took the group");
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
        let port = sock.local_addr().expect("addr").port();
        let send = |n: usize| {
            for _ in 0..n {
                let _ = sock.send_to(b"x", "127.0.0.1:9");
            }
        };
        // Reads until `want` packets decoded or an overrun (bounded).
        let read = |r: &mut Reader, want: usize| -> (usize, bool) {
            let (mut got, mut overrun) = (0, false);
            let t0 = Instant::now();
            while got < want && t0.elapsed() < Duration::from_secs(10) {
                match r.recv().expect("recv") {
                    Received::Messages(ms) => {
                        for m in ms {
                            let l = m.expect("the kernel's messages decode");
                            assert_eq!(l.prefix, "t/p egress[0] allow");
                            assert_eq!((l.proto, l.ports), (17, Some((port, 9))));
                            assert_eq!(l.dst, "127.0.0.1".parse::<IpAddr>().unwrap());
                            got += 1;
                        }
                    }
                    Received::Overrun => overrun = true,
                    // Drained: what the overrun left is read.
                    Received::Idle if overrun => break,
                    Received::Idle => {}
                }
            }
            (got, overrun)
        };
        send(3);
        assert_eq!(read(&mut r, 3), (3, false));
        // Far more than the receive buffer holds, none read meanwhile.
        send(50_000);
        let (got, overrun) = read(&mut r, 50_000);
        assert!(overrun, "no overrun reported ({got} of 50000 read)");
        assert!(got < 50_000, "{got}");
        eprintln!("nflog: overrun reported; {got} of 50000 logged packets read");
        // The reader goes on after the overrun.
        while !matches!(r.recv().expect("recv"), Received::Idle) {}
        send(2);
        assert_eq!(read(&mut r, 2), (2, false));
    });
}

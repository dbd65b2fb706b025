//! Packets conntrack calls RELATED, judged by who sends them.
//!
//! The kernel relates an ICMP error to whatever connection the header
//! embedded in it names, whoever sends the error: a pod with a raw socket
//! can name the connection of two other pods and so reach one of them
//! past every policy, with any payload after the embedded header, and
//! act on its stack (lower its path MTU, abort a connection still
//! opening). Pods are not routers: an error a pod rightly sends is about
//! a connection it is an end of. So the base chains accept `established`
//! first, as before, and send a `related` packet whose source is a local
//! pod's address (`related_v4/v6`, one element per address) to the chain
//! `rel_<addr>`, which returns only when that address is the source of
//! the original or the reply direction of the connection (the reply
//! side names the backend of a Service, the original side its virtual
//! address) and otherwise drops it. Everything else related (errors from
//! routers, the node, hosts outside the cluster) is accepted as before.
//!
//! Pods of other nodes are judged by their own node, where they are
//! local: an error needs the named connection's conntrack entry to be
//! RELATED at all, and a node without the entry finds it `invalid`.
//! Connections a conntrack helper expects (FTP data and the like) are
//! related too, but their first packet belongs to the new connection,
//! whose original source is its sender: they pass as before, and only
//! exist where the node's own rules attach a helper.

use crate::index::Cluster;
use crate::ir::*;
use crate::names::{comment, ident};
use std::collections::BTreeSet;
use std::net::IpAddr;

/// The verdict map from a local pod's address to its `rel_` chain.
pub fn map_name(family: Family) -> String {
    format!("related_{}", family.suffix())
}

/// The chain judging related packets from `addr`.
pub fn chain_name(addr: &IpAddr) -> String {
    ident("rel", &[&addr.to_string().replace(':', "-")])
}

/// The empty maps of the node's families (their elements come from
/// [`add_chains`]).
pub(crate) fn add_maps(rs: &mut Ruleset, families: &BTreeSet<Family>) {
    for &family in families {
        rs.sets.insert(
            map_name(family),
            Set {
                kind: SetKind::Vmap { family },
                elements: BTreeSet::new(),
            },
        );
    }
}

/// The base-chain rules after `ct state established accept`: related
/// packets from local pods' addresses to their `rel_` chain, then the
/// rest of related accepted.
pub(crate) fn base_rules(families: &BTreeSet<Family>) -> Vec<Rule> {
    let related = || Match::CtState([CtState::Related].into());
    let mut rules: Vec<Rule> = families
        .iter()
        .map(|&family| Rule {
            matches: vec![related()],
            verdict: Verdict::AddrVmap {
                family,
                dir: Dir::Src,
                map: map_name(family),
            },
            comment: None,
        })
        .collect();
    rules.push(Rule {
        matches: vec![related()],
        verdict: Verdict::Accept,
        comment: None,
    });
    rules
}

/// The addresses of the local policy pods.
pub(crate) fn local_addresses(cluster: &Cluster, node: &str) -> BTreeSet<IpAddr> {
    crate::compile::local_pods(cluster, node)
        .flat_map(|p| p.ips.iter().copied())
        .collect()
}

/// The `rel_` chain of every local pod address and its map element.
/// The chain depends on the address alone, so pods sharing an address
/// share it.
pub(crate) fn add_chains(rs: &mut Ruleset, cluster: &Cluster, node: &str) {
    for addr in local_addresses(cluster, node) {
        let name = chain_name(&addr);
        let end = |dir| Rule {
            matches: vec![Match::CtSaddr { dir, addr }],
            verdict: Verdict::Return,
            comment: None,
        };
        let rules = vec![
            end(CtDir::Original),
            end(CtDir::Reply),
            Rule {
                matches: vec![Match::Counter],
                verdict: Verdict::Drop,
                comment: Some(comment(format!(
                    "related packet from {addr}, not an end of its connection"
                ))),
            },
        ];
        if let Some(map) = rs.sets.get_mut(&map_name(Family::of(&addr))) {
            map.elements.insert(Element::VmapJump(addr, name.clone()));
        }
        rs.chains.insert(name, Chain { base: None, rules });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interp::{hook_accepts, Packet};

    fn cluster() -> Cluster {
        let loaded =
            crate::manifest::parse("b-from-a.yaml", include_str!("testdata/b-from-a.yaml"));
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        Cluster::from_objects(loaded.objects)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    /// An ICMP error from `src` to `dst` about the connection whose
    /// directions have the sources `ends`.
    fn error(src: &str, dst: &str, ends: (&str, &str)) -> Packet {
        Packet {
            saddr: ip(src),
            daddr: ip(dst),
            proto: 1,
            dport: 3,
            ct: CtState::Related,
            hoplimit: 64,
            ct_saddrs: Some((ip(ends.0), ip(ends.1))),
        }
    }

    #[test]
    fn a_local_pod_relates_only_to_its_own_connections() {
        let c = cluster();
        let rs = crate::compile(&c, "n1");
        let pods: Vec<(String, IpAddr)> = crate::compile::local_pods(&c, "n1")
            .flat_map(|p| p.ips.iter().map(move |a| (p.name.clone(), *a)))
            .collect();
        assert!(pods.len() >= 2, "{pods:?}");
        let (a, b) = (pods[0].1.to_string(), pods[1].1.to_string());
        let other = "192.0.2.9";
        for hook in ["forward", "input"] {
            // An end of the connection, in either direction.
            assert!(hook_accepts(&rs, hook, &error(&a, &b, (&b, &a))));
            assert!(hook_accepts(&rs, hook, &error(&a, &b, (&a, &b))));
            // A local pod naming a connection of others.
            assert!(!hook_accepts(&rs, hook, &error(&a, &b, (&b, other))));
            // A router or a host outside the cluster.
            assert!(hook_accepts(
                &rs,
                hook,
                &error(other, &b, (&b, "192.0.2.10"))
            ));
            // Established traffic never meets the check.
            let mut est = error(&a, &b, (&b, other));
            est.ct = CtState::Established;
            assert!(hook_accepts(&rs, hook, &est));
        }
    }

    #[test]
    fn every_local_address_gets_a_chain_and_nothing_else_does() {
        let c = cluster();
        let rs = crate::compile(&c, "n1");
        let want = local_addresses(&c, "n1");
        assert!(!want.is_empty());
        let got: BTreeSet<IpAddr> = rs
            .sets
            .iter()
            .filter(|(n, _)| n.starts_with("related_"))
            .flat_map(|(_, s)| &s.elements)
            .map(|e| match e {
                Element::VmapJump(a, chain) => {
                    assert_eq!(*chain, chain_name(a));
                    assert!(rs.chains.contains_key(chain), "{chain}");
                    *a
                }
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(got, want);
    }
}

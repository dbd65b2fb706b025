//! An interpreter of the ruleset IR: runs a packet through a base chain the
//! way the kernel would (rule order, jump/return, verdict maps, set
//! lookups). Property tests use it to check compiled rulesets against the
//! semantic evaluator without a kernel.

use crate::index::Cluster;
use crate::ir::*;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// The fields of a packet nftpol's rules look at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    pub saddr: IpAddr,
    pub daddr: IpAddr,
    pub proto: u8,
    /// Destination port (TCP/UDP/SCTP) or ICMPv6 type.
    pub dport: u16,
    pub ct: CtState,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Accept,
    Drop,
    /// Fell off the end of a chain, or `return`.
    Continue,
}

/// Jumps deeper than this are a compiler bug; the kernel limit is 16.
const MAX_DEPTH: usize = 16;

/// Whether the base chain `chain` accepts the packet (its policy applies
/// when no rule decides).
pub fn hook_accepts(rs: &Ruleset, chain: &str, pkt: &Packet) -> bool {
    let Some(c) = rs.chains.get(chain) else {
        return true;
    };
    match run(rs, c, pkt, 0) {
        Outcome::Accept => true,
        Outcome::Drop => false,
        Outcome::Continue => !matches!(c.base.map(|b| b.policy), Some(ChainPolicy::Drop)),
    }
}

fn run(rs: &Ruleset, chain: &Chain, pkt: &Packet, depth: usize) -> Outcome {
    if depth > MAX_DEPTH {
        return Outcome::Drop;
    }
    for rule in &chain.rules {
        if !rule.matches.iter().all(|m| matches(rs, m, pkt)) {
            continue;
        }
        let target = match &rule.verdict {
            Verdict::Accept => return Outcome::Accept,
            Verdict::Drop => return Outcome::Drop,
            Verdict::Return => return Outcome::Continue,
            Verdict::Jump(c) => Some(c.clone()),
            Verdict::AddrVmap { family, dir, map } => {
                let addr = pick(pkt, *dir);
                if Family::of(&addr) != *family {
                    None
                } else {
                    rs.sets.get(map).and_then(|s| {
                        s.elements.iter().find_map(|e| match e {
                            Element::VmapJump(a, c) if *a == addr => Some(c.clone()),
                            _ => None,
                        })
                    })
                }
            }
        };
        if let Some(name) = target {
            let Some(next) = rs.chains.get(&name) else {
                return Outcome::Drop;
            };
            match run(rs, next, pkt, depth + 1) {
                Outcome::Continue => {}
                decided => return decided,
            }
        }
    }
    Outcome::Continue
}

fn pick(pkt: &Packet, dir: Dir) -> IpAddr {
    match dir {
        Dir::Src => pkt.saddr,
        Dir::Dst => pkt.daddr,
    }
}

fn matches(rs: &Ruleset, m: &Match, pkt: &Packet) -> bool {
    match m {
        Match::CtState(states) => states.contains(&pkt.ct),
        Match::L4Proto(p) => pkt.proto == *p,
        Match::AddrInSet { family, dir, set } => {
            let a = pick(pkt, *dir);
            Family::of(&a) == *family
                && rs.sets.get(set).is_some_and(|s| {
                    s.elements.iter().any(|e| match e {
                        Element::Addr(x) => *x == a,
                        Element::AddrRange(lo, hi) => {
                            crate::ipblock::AddrRange { lo: *lo, hi: *hi }.contains(a)
                        }
                        _ => false,
                    })
                })
        }
        Match::DPort { lo, hi } => *lo <= pkt.dport && pkt.dport <= *hi,
        Match::DPortInSet { set } => rs.sets.get(set).is_some_and(|s| {
            s.elements.iter().any(
                |e| matches!(e, Element::PortRange(lo, hi) if *lo <= pkt.dport && pkt.dport <= *hi),
            )
        }),
        Match::DAddrProtoPortInSet { family, set } => {
            Family::of(&pkt.daddr) == *family
                && rs.sets.get(set).is_some_and(|s| {
                    s.elements
                        .contains(&Element::AddrProtoPort(pkt.daddr, pkt.proto, pkt.dport))
                })
        }
        Match::Icmpv6Type { lo, hi } => {
            pkt.proto == l4::ICMPV6
                && pkt.saddr.is_ipv6()
                && u16::from(*lo) <= pkt.dport
                && pkt.dport <= u16::from(*hi)
        }
    }
}

/// Whether a new connection passes every node it crosses: the source pod's
/// node and the destination pod's node (once if they are the same), each
/// through its `forward` hook. Nodes without a ruleset enforce nothing.
pub fn cluster_accepts(
    cluster: &Cluster,
    rulesets: &BTreeMap<String, Ruleset>,
    pkt: &Packet,
) -> bool {
    let mut nodes: Vec<&str> = [pkt.saddr, pkt.daddr]
        .iter()
        .filter_map(|ip| cluster.policy_pod_by_ip(*ip))
        .filter_map(|p| p.node_name.as_deref())
        .collect();
    nodes.dedup();
    nodes.iter().all(|n| {
        rulesets
            .get(*n)
            .is_none_or(|rs| hook_accepts(rs, crate::compile::CHAIN_FORWARD, pkt))
    })
}

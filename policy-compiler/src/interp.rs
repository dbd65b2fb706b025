//! An interpreter of the ruleset IR: runs a packet through a base chain the
//! way the kernel would (rule order, jump/return, verdict maps, set
//! lookups). Property tests use it to check compiled rulesets against the
//! semantic evaluator without a kernel, and `explain --live` runs it on the
//! table read back from the kernel, with the trace of the rules that acted.

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
    /// IPv6 hop limit as the hook sees it (255 only when not routed).
    pub hoplimit: u8,
    /// The sources of the original and the reply direction of the
    /// packet's conntrack entry: for a related ICMP error, the connection
    /// it names. `None` for a packet that opens its own connection.
    pub ct_saddrs: Option<(IpAddr, IpAddr)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Accept,
    Drop,
    /// Fell off the end of a chain, or `return`.
    Continue,
}

/// A rule that matched the packet and acted (its verdict was taken, or
/// its verdict map had an element for the packet), in the order met.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub chain: String,
    /// Position of the rule in its chain (0-based).
    pub index: usize,
    pub rule: Rule,
}

/// The path of one packet through a base chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trace {
    pub accepted: bool,
    /// Every rule that acted, outermost first; the last one decided when
    /// its verdict is accept or drop, else the base chain's policy did.
    pub steps: Vec<Step>,
    /// The log rules the packet met, in order (their rate limit taken as
    /// not reached). They have no verdict and are not in `steps`.
    pub logged: Vec<Step>,
}

impl Trace {
    /// The prefixes the packet is logged with.
    pub fn log_prefixes(&self) -> Vec<&str> {
        self.logged
            .iter()
            .flat_map(|s| {
                s.rule.matches.iter().filter_map(|m| match m {
                    Match::Log { prefix, .. } => Some(prefix.as_str()),
                    _ => None,
                })
            })
            .collect()
    }
}

impl Trace {
    /// The rule whose accept or drop ended the packet's path (`None` when
    /// the base chain's policy decided).
    pub fn deciding(&self) -> Option<&Step> {
        self.steps
            .last()
            .filter(|s| matches!(s.rule.verdict, Verdict::Accept | Verdict::Drop))
    }
}

/// Jumps deeper than this are a compiler bug; the kernel limit is 16.
const MAX_DEPTH: usize = 16;

/// Whether the base chain `chain` accepts the packet (its policy applies
/// when no rule decides).
pub fn hook_accepts(rs: &Ruleset, chain: &str, pkt: &Packet) -> bool {
    trace(rs, chain, pkt).accepted
}

/// Runs the packet through base chain `chain` and records the rules that
/// acted. A missing chain accepts (nothing filters), and so does a dormant
/// table (its base chains are unhooked).
pub fn trace(rs: &Ruleset, chain: &str, pkt: &Packet) -> Trace {
    let mut steps = Vec::new();
    let mut logged = Vec::new();
    let hooked = rs.table_flags & TABLE_F_DORMANT == 0;
    let Some(c) = rs.chains.get(chain).filter(|_| hooked) else {
        return Trace {
            accepted: true,
            steps,
            logged,
        };
    };
    let accepted = match run(rs, chain, c, pkt, 0, &mut steps, &mut logged) {
        Outcome::Accept => true,
        Outcome::Drop => false,
        Outcome::Continue => !matches!(c.base.as_ref().map(|b| b.policy), Some(ChainPolicy::Drop)),
    };
    Trace {
        accepted,
        steps,
        logged,
    }
}

/// Whether the `ingress` chains bound to interface `dev` let a packet the
/// pod behind it sent through (source validation); no chain: yes.
pub fn ingress_accepts(rs: &Ruleset, dev: &str, pkt: &Packet) -> bool {
    rs.chains
        .iter()
        .filter(|(_, c)| {
            c.base
                .as_ref()
                .is_some_and(|b| b.hook == Hook::Ingress && b.device.as_deref() == Some(dev))
        })
        .all(
            |(name, c)| match run(rs, name, c, pkt, 0, &mut Vec::new(), &mut Vec::new()) {
                Outcome::Accept => true,
                Outcome::Drop => false,
                Outcome::Continue => {
                    !matches!(c.base.as_ref().map(|b| b.policy), Some(ChainPolicy::Drop))
                }
            },
        )
}

fn run(
    rs: &Ruleset,
    name: &str,
    chain: &Chain,
    pkt: &Packet,
    depth: usize,
    steps: &mut Vec<Step>,
    logged: &mut Vec<Step>,
) -> Outcome {
    if depth > MAX_DEPTH {
        return Outcome::Drop;
    }
    for (index, rule) in chain.rules.iter().enumerate() {
        if !rule.matches.iter().all(|m| matches(rs, m, pkt)) {
            continue;
        }
        let step = || Step {
            chain: name.to_string(),
            index,
            rule: rule.clone(),
        };
        let target = match &rule.verdict {
            Verdict::Accept => {
                steps.push(step());
                return Outcome::Accept;
            }
            Verdict::Drop => {
                steps.push(step());
                return Outcome::Drop;
            }
            Verdict::Return => {
                steps.push(step());
                return Outcome::Continue;
            }
            Verdict::Jump(c) => Some(c.clone()),
            Verdict::Continue => {
                if rule.matches.iter().any(|m| matches!(m, Match::Log { .. })) {
                    logged.push(step());
                }
                None
            }
            // No return address: whatever the target decides, or its
            // falling off the end, is this chain's outcome.
            Verdict::Goto(c) => {
                steps.push(step());
                return match rs.chains.get(c) {
                    Some(next) => run(rs, c, next, pkt, depth + 1, steps, logged),
                    None => Outcome::Drop,
                };
            }
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
        if let Some(next_name) = target {
            steps.push(step());
            let Some(next) = rs.chains.get(&next_name) else {
                return Outcome::Drop;
            };
            match run(rs, &next_name, next, pkt, depth + 1, steps, logged) {
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
        Match::EtherType { ty, negate } => {
            let own = match Family::of(&pkt.saddr) {
                Family::Ipv4 => crate::srcval::ETH_P_IP,
                Family::Ipv6 => crate::srcval::ETH_P_IPV6,
            };
            (own == *ty) != *negate
        }
        // The packets modelled here are IP packets without an ND target:
        // never ARP, and no advertisement to judge.
        Match::ArpNotEthIpv4 | Match::ArpSenderIpNot(_) | Match::NdTargetNot(_) => false,
        // Nor do they carry IPv4 options or IPv6 routing headers.
        Match::Ip4HdrLenAbove(_) | Match::Ip4OptionWordNot(_) | Match::Ip6RoutingHeader => false,
        // Their IPv4 header is the bare one, and their IPv6 header is
        // followed by the transport header.
        Match::Ip4HdrLen(n) => pkt.saddr.is_ipv4() && *n == crate::srcval::IP4_WORDS,
        Match::Ip6NextHeader(p) => pkt.saddr.is_ipv6() && pkt.proto == *p,
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
        Match::AddrPrefix { family, dir, net } => {
            let a = pick(pkt, *dir);
            Family::of(&a) == *family && net.contains(&a)
        }
        Match::Ip6HopLimit(n) => pkt.saddr.is_ipv6() && pkt.hoplimit == *n,
        Match::CtSaddr { dir, addr } => pkt.ct_saddrs.is_some_and(|(orig, reply)| {
            *addr
                == match dir {
                    CtDir::Original => orig,
                    CtDir::Reply => reply,
                }
        }),
        // The limited broadcast; a subnet-directed one depends on the
        // node's addresses, which no ruleset holds, and is never a pod's.
        Match::DaddrBroadcast => pkt.daddr == std::net::IpAddr::V4(std::net::Ipv4Addr::BROADCAST),
        // A packet here opens its connection: for TCP, a SYN. Segments
        // from the middle of a stream are the kernel's business only.
        Match::TcpNotSyn => false,
        // Statements, always true; a limit is taken as under its rate
        // (it can only matter to a rule without a verdict).
        Match::Counter | Match::Limit { .. } | Match::Log { .. } => true,
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
    // A shared address (several claimants) may be routed to any of them:
    // every claimant's node must accept.
    let mut nodes: Vec<&str> = [pkt.saddr, pkt.daddr]
        .iter()
        .flat_map(|ip| cluster.claimants(*ip))
        .filter_map(|p| p.node_name.as_deref())
        .collect();
    nodes.sort();
    nodes.dedup();
    nodes.iter().all(|n| {
        rulesets
            .get(*n)
            .is_none_or(|rs| hook_accepts(rs, crate::compile::CHAIN_FORWARD, pkt))
    })
}

impl Packet {
    /// The first packet of a new connection to `port` over `protocol`.
    pub fn new_connection(
        saddr: IpAddr,
        daddr: IpAddr,
        protocol: crate::model::Protocol,
        port: u16,
    ) -> Packet {
        Packet {
            saddr,
            daddr,
            proto: protocol.number(),
            dport: port,
            ct: CtState::New,
            hoplimit: 64,
            ct_saddrs: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::parse;
    use crate::model::Protocol;

    fn ruleset() -> Ruleset {
        let loaded = parse("b-from-a.yaml", include_str!("testdata/b-from-a.yaml"));
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        crate::compile(&Cluster::from_objects(loaded.objects), "n1")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn trace_names_the_rule_that_accepts() {
        let rs = ruleset();
        let pkt = Packet::new_connection(ip("10.0.0.1"), ip("10.0.0.2"), Protocol::Tcp, 80);
        let t = trace(&rs, crate::compile::CHAIN_FORWARD, &pkt);
        assert!(t.accepted);
        let d = t.deciding().expect("a rule decided");
        assert_eq!(d.chain, "ing_x_b");
        assert_eq!(d.rule.verdict, Verdict::Accept);
        assert_eq!(d.rule.comment.as_deref(), Some("x/b-from-a ingress[0]"));
        // The dispatch through the verdict map is on the path too.
        assert!(t.steps[0].chain == "forward" && t.steps.len() == 2, "{t:?}");
    }

    #[test]
    fn trace_names_the_isolation_drop_and_the_policy_when_nothing_decides() {
        let rs = ruleset();
        let pkt = Packet::new_connection(ip("10.0.0.1"), ip("10.0.0.2"), Protocol::Tcp, 81);
        let t = trace(&rs, crate::compile::CHAIN_FORWARD, &pkt);
        assert!(!t.accepted);
        let d = t.deciding().expect("the drop decided");
        assert_eq!(d.rule.verdict, Verdict::Drop);
        assert_eq!(d.index, rs.chains["ing_x_b"].rules.len() - 1);
        assert!(d
            .rule
            .comment
            .as_deref()
            .is_some_and(|c| c.contains("isolated by x/b-from-a")));
        // b -> a: a is not isolated; the forward chain's policy accepts.
        let back = Packet::new_connection(ip("10.0.0.2"), ip("10.0.0.1"), Protocol::Tcp, 80);
        let t = trace(&rs, crate::compile::CHAIN_FORWARD, &back);
        assert!(t.accepted && t.deciding().is_none(), "{t:?}");
    }

    #[test]
    fn packets_here_carry_no_ip_options_and_no_extension_headers() {
        let rs = Ruleset::default();
        let v4 = Packet::new_connection(ip("10.0.0.1"), ip("10.0.0.2"), Protocol::Tcp, 80);
        let v6 = Packet::new_connection(ip("fd00::1"), ip("fd00::2"), Protocol::Tcp, 80);
        let udp6 = Packet::new_connection(ip("fd00::1"), ip("fd00::2"), Protocol::Udp, 80);
        let tcp = Match::Ip6NextHeader(l4::TCP);
        assert!(matches(&rs, &Match::Ip4HdrLen(5), &v4));
        assert!(!matches(&rs, &Match::Ip4HdrLen(6), &v4));
        assert!(!matches(&rs, &Match::Ip4HdrLen(5), &v6));
        assert!(matches(&rs, &tcp, &v6));
        assert!(!matches(&rs, &tcp, &udp6));
        assert!(!matches(&rs, &tcp, &v4));
    }

    #[test]
    fn a_dormant_table_filters_nothing() {
        let mut rs = ruleset();
        rs.table_flags = TABLE_F_DORMANT;
        let pkt = Packet::new_connection(ip("10.0.0.1"), ip("10.0.0.2"), Protocol::Tcp, 81);
        let t = trace(&rs, crate::compile::CHAIN_FORWARD, &pkt);
        assert!(t.accepted && t.steps.is_empty(), "{t:?}");
    }
}

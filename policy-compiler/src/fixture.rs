//! Ruleset fixtures in the shapes the compiler emits, shared by the diff
//! tests here and by nftpol's netlink kernel tests, fuzzers and
//! benchmarks (through the `fixtures` feature, which only dev builds
//! turn on): one place that knows how a pod chain, a base chain or a set
//! is put together, instead of a copy per test file.

use crate::ir::*;
use std::net::IpAddr;

/// Every kind of set the compiler emits, in both families where the kind
/// has one.
pub const SET_KINDS: [SetKind; 8] = [
    SetKind::Addr {
        family: Family::Ipv4,
        interval: false,
    },
    SetKind::Addr {
        family: Family::Ipv6,
        interval: true,
    },
    SetKind::Addr {
        family: Family::Ipv4,
        interval: true,
    },
    SetKind::Ports,
    SetKind::AddrProtoPort {
        family: Family::Ipv4,
    },
    SetKind::AddrProtoPort {
        family: Family::Ipv6,
    },
    SetKind::Vmap {
        family: Family::Ipv4,
    },
    SetKind::Vmap {
        family: Family::Ipv6,
    },
];

/// An address written in a fixture.
pub fn ip(s: &str) -> IpAddr {
    s.parse().expect("fixture address")
}

pub fn rule(matches: Vec<Match>, verdict: Verdict, comment: Option<&str>) -> Rule {
    Rule {
        matches,
        verdict,
        comment: comment.map(str::to_string),
    }
}

pub fn set(kind: SetKind, elements: impl IntoIterator<Item = Element>) -> Set {
    Set {
        kind,
        elements: elements.into_iter().collect(),
    }
}

/// A base chain on `hook` at priority 0 with policy accept.
pub fn base(hook: Hook) -> Option<BaseChain> {
    Some(BaseChain {
        hook,
        priority: 0,
        policy: ChainPolicy::Accept,
        device: None,
    })
}

/// The rule a NetworkPolicy ingress rule with pod peers and a port list
/// compiles to: TCP from the IPv4 addresses of set `addrs` to the ports
/// of set `ports`, accepted.
pub fn allow_tcp_from(addrs: &str, ports: &str, comment: Option<&str>) -> Rule {
    rule(
        vec![
            Match::AddrInSet {
                family: Family::Ipv4,
                dir: Dir::Src,
                set: addrs.into(),
            },
            Match::L4Proto(l4::TCP),
            Match::DPortInSet { set: ports.into() },
        ],
        Verdict::Accept,
        comment,
    )
}

/// An isolated pod's regular chain: its allow rules, then drop.
pub fn pod_chain(mut allow: Vec<Rule>, drop_comment: Option<&str>) -> Chain {
    allow.push(rule(vec![], Verdict::Drop, drop_comment));
    Chain {
        base: None,
        rules: allow,
    }
}

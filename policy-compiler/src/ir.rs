//! The ruleset IR: the one `inet nftpol` table that nftpol owns, as plain
//! sorted data. The compiler produces it, `render` turns it into nft text,
//! the netlink layer turns it into messages and reads the kernel back into
//! it, and `diff` compares two of them. Everything here is ordered
//! (`BTreeMap`/`BTreeSet`) so equal rulesets are equal values and render to
//! byte-identical text.
//!
//! The IR is deliberately narrower than nftables: it holds exactly the
//! shapes nftpol emits, so the netlink encoder and decoder stay small and a
//! read-back that contains anything else is reported as foreign instead of
//! being silently mis-decoded.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// Address family of the only table nftpol owns.
pub const TABLE_FAMILY: &str = "inet";
/// Name of the only table nftpol owns.
pub const TABLE_NAME: &str = "nftpol";
/// Address family of the L2 guard table nftpol owns beside it.
pub const GUARD_FAMILY: &str = "netdev";
/// `NFT_TABLE_F_DORMANT`: the table stays but none of its chains sees a packet.
pub const TABLE_F_DORMANT: u32 = 1;

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The whole `inet nftpol` table.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ruleset {
    /// The table's flags (`NFT_TABLE_F_*`). nftpol's table has none; the
    /// field exists so that a read-back shows a table someone made
    /// dormant ([`TABLE_F_DORMANT`]: every base chain unhooked, nothing
    /// enforced) and the diff turns it back on.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub table_flags: u32,
    /// Chains by name (base chains and per-pod chains).
    pub chains: BTreeMap<String, Chain>,
    /// Named sets and verdict maps by name.
    pub sets: BTreeMap<String, Set>,
    /// The `netdev nftpol` table (per pod interface: what no `inet` chain
    /// sees, such as VLAN-tagged frames and ARP); `None` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<Guard>,
}

/// The `netdev nftpol` table: one `ingress` base chain per local pod
/// interface, no sets. It lives and is diffed beside `inet nftpol` and
/// goes to the kernel in the same batch.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Guard {
    /// The table's flags; never compiled, read back when someone made
    /// it dormant.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub flags: u32,
    pub chains: BTreeMap<String, Chain>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chain {
    /// `Some` for a base chain attached to a netfilter hook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<BaseChain>,
    pub rules: Vec<Rule>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BaseChain {
    pub hook: Hook,
    /// Numeric priority (`filter` = 0).
    pub priority: i32,
    pub policy: ChainPolicy,
    /// The interface an `ingress` chain is bound to (by name: the kernel
    /// binds it when an interface of that name exists).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Hook {
    /// Per-interface, before bridging, routing and conntrack.
    Ingress,
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
}

impl Hook {
    pub fn as_str(self) -> &'static str {
        match self {
            Hook::Ingress => "ingress",
            Hook::Prerouting => "prerouting",
            Hook::Input => "input",
            Hook::Forward => "forward",
            Hook::Output => "output",
            Hook::Postrouting => "postrouting",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChainPolicy {
    Accept,
    Drop,
}

/// One rule: all `matches` must hold, then `verdict` applies.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Rule {
    pub matches: Vec<Match>,
    pub verdict: Verdict,
    /// Rule comment (nft userdata); names the policy and rule index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    pub fn of(addr: &IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::Ipv4,
            IpAddr::V6(_) => Family::Ipv6,
        }
    }
    /// The nft payload keyword (`ip` / `ip6`).
    pub fn payload_keyword(self) -> &'static str {
        match self {
            Family::Ipv4 => "ip",
            Family::Ipv6 => "ip6",
        }
    }
    /// The nft set key type (`ipv4_addr` / `ipv6_addr`).
    pub fn addr_type(self) -> &'static str {
        match self {
            Family::Ipv4 => "ipv4_addr",
            Family::Ipv6 => "ipv6_addr",
        }
    }
    /// Short suffix used in generated names.
    pub fn suffix(self) -> &'static str {
        match self {
            Family::Ipv4 => "v4",
            Family::Ipv6 => "v6",
        }
    }
}

/// Which address of the packet a match or vmap looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dir {
    Src,
    Dst,
}

impl Dir {
    pub fn addr_keyword(self) -> &'static str {
        match self {
            Dir::Src => "saddr",
            Dir::Dst => "daddr",
        }
    }
}

/// Conntrack states used by nftpol's base chains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CtState {
    Invalid,
    Established,
    Related,
    New,
}

impl CtState {
    /// Kernel bit (NF_CT_STATE_* as nft uses them).
    pub fn bit(self) -> u32 {
        match self {
            CtState::Invalid => 1,
            CtState::Established => 1 << 1,
            CtState::Related => 1 << 2,
            CtState::New => 1 << 3,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            CtState::Invalid => "invalid",
            CtState::Established => "established",
            CtState::Related => "related",
            CtState::New => "new",
        }
    }
    pub const ALL: [CtState; 4] = [
        CtState::Invalid,
        CtState::Established,
        CtState::Related,
        CtState::New,
    ];
}

/// A direction of a conntrack entry (`ct original`, `ct reply`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CtDir {
    Original,
    Reply,
}

impl CtDir {
    pub fn as_str(self) -> &'static str {
        match self {
            CtDir::Original => "original",
            CtDir::Reply => "reply",
        }
    }
}

/// IP protocol numbers nftpol matches on.
pub mod l4 {
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMPV6: u8 = 58;
    pub const SCTP: u8 = 132;

    /// nft's name for a protocol number, as `inet_proto` prints it.
    pub fn name(proto: u8) -> Option<&'static str> {
        match proto {
            TCP => Some("tcp"),
            UDP => Some("udp"),
            ICMPV6 => Some("ipv6-icmp"),
            SCTP => Some("sctp"),
            _ => None,
        }
    }
}

/// One match expression. Each variant is a complete nft statement prefix;
/// the netlink encoder adds the `meta nfproto` dependency that an `inet`
/// table needs before any `ip`/`ip6` payload (the nft tool adds it
/// silently), and the decoder folds it back in.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Match {
    /// `ct state a,b` (any of the listed states).
    CtState(BTreeSet<CtState>),
    /// `meta l4proto N`.
    L4Proto(u8),
    /// `ip saddr @set` / `ip6 daddr @set`.
    AddrInSet {
        family: Family,
        dir: Dir,
        set: String,
    },
    /// `th dport N` (lo == hi) or `th dport lo-hi`. Requires an `L4Proto`
    /// match earlier in the same rule.
    DPort { lo: u16, hi: u16 },
    /// `th dport @set` (an interval `inet_service` set).
    DPortInSet { set: String },
    /// `ip daddr . meta l4proto . th dport @set` (named ports resolved per
    /// destination pod).
    DAddrProtoPortInSet { family: Family, set: String },
    /// `icmpv6 type lo-hi` (neighbour discovery and MLD shapes).
    Icmpv6Type { lo: u8, hi: u8 },
    /// `ip saddr 10.0.0.1` / `ip6 saddr fe80::/10`: one address or prefix.
    AddrPrefix {
        family: Family,
        dir: Dir,
        net: ipnet::IpNet,
    },
    /// `fib daddr type broadcast`: the node's routes call the destination
    /// a broadcast address (limited, or directed to a subnet the node is
    /// on). Never true for IPv6.
    DaddrBroadcast,
    /// `ct original ip saddr A` / `ct reply ip6 saddr A`: the source of
    /// one direction of the packet's connection is `addr` (for an ICMP
    /// error conntrack relates, the connection the error names). False
    /// for a connection of the other family.
    CtSaddr { dir: CtDir, addr: IpAddr },
    /// `ip6 hoplimit N`: 255 proves a packet was not routed (a router
    /// decrements it before the forward hook).
    Ip6HopLimit(u8),
    /// `tcp flags & (fin | syn | rst | ack) != syn`: a TCP segment that
    /// cannot open a connection (implies `meta l4proto tcp`).
    TcpNotSyn,
    /// The `counter` statement (always true); it counts the packets that
    /// reached it, so it goes after the matches it should count.
    Counter,
    /// `limit rate N/second burst B packets`: true while the rule's own
    /// token bucket has a token. A match, so a rule holding it must carry
    /// no verdict that matters ([`Verdict::Continue`]): above the rate it
    /// stops matching.
    Limit { per_second: u32, burst: u32 },
    /// `log prefix "..." group G`: hands the packet to the nflog group
    /// (always true).
    Log { group: u16, prefix: String },
    /// `ether type 8021q` / `ether type != arp` (netdev table only). The
    /// kernel moves a frame's outer VLAN tag out of the data before the
    /// hook; the kernel's payload load puts it back, so this sees the
    /// tag as sent.
    EtherType { ty: u16, negate: bool },
    /// `arp htype . arp ptype . arp hlen . arp plen != 1 . ip . 6 . 4`:
    /// an ARP packet whose fields sit elsewhere than Ethernet/IPv4
    /// ARP's (netdev table, after `ether type arp`).
    ArpNotEthIpv4,
    /// `arp saddr ip != A` (netdev table, after `ether type arp` and
    /// [`Match::ArpNotEthIpv4`] has dropped other layouts).
    ArpSenderIpNot(std::net::Ipv4Addr),
    /// `icmpv6 type nd-neighbor-advert` target `!= A` / `!= fe80::/10`
    /// (`@th,64,128`): the address a neighbour advertisement claims
    /// (netdev table, after `ether type ip6`; implies `meta l4proto
    /// ipv6-icmp`).
    NdTargetNot(ipnet::Ipv6Net),
    /// `ip hdrlength > N`: an IPv4 header longer than N 32-bit words
    /// (more than N - 5 words of options).
    Ip4HdrLenAbove(u8),
    /// `ip hdrlength 6 @nh,160,32 != W`: exactly one word of IPv4
    /// options, and not the word `W`.
    Ip4OptionWordNot(u32),
    /// `exthdr rt exists`: an IPv6 routing header of any type (implies
    /// `meta nfproto ipv6`).
    Ip6RoutingHeader,
    /// `ip hdrlength N`: an IPv4 header of exactly N 32-bit words (5:
    /// no options at all).
    Ip4HdrLen(u8),
    /// `ip6 nexthdr N`: the fixed IPv6 header's next header is N. When N
    /// is an upper-layer protocol, the packet has no extension header.
    Ip6NextHeader(u8),
}

/// The verdict of a rule.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Accept,
    Drop,
    Return,
    Jump(String),
    /// `goto chain`: like a jump, but a `return` (or the end) of that
    /// chain returns to the caller of this one. An admin Pass uses it to
    /// leave the rest of the admin tier behind.
    Goto(String),
    /// `ip saddr vmap @map`: look the address up in a verdict map; no
    /// element means no verdict (continue with the next rule).
    AddrVmap {
        family: Family,
        dir: Dir,
        map: String,
    },
    /// No verdict: the packet goes on to the next rule whether or not the
    /// rule matched. Log rules have it, which is what makes logging unable
    /// to change a verdict.
    Continue,
}

/// A named set or verdict map.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Set {
    pub kind: SetKind,
    pub elements: BTreeSet<Element>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SetKind {
    /// `type ipv4_addr` / `ipv6_addr`; `flags interval` when `interval`.
    /// Plain sets hold `Element::Addr`, interval sets `Element::AddrRange`.
    Addr { family: Family, interval: bool },
    /// `type inet_service; flags interval`; holds `Element::PortRange`.
    Ports,
    /// `type ipv4_addr . inet_proto . inet_service`; holds
    /// `Element::AddrProtoPort`.
    AddrProtoPort { family: Family },
    /// `type ipv4_addr : verdict`; holds `Element::VmapJump`.
    Vmap { family: Family },
}

/// A set element. Ranges are inclusive and, in an interval set, never
/// overlap or touch (the compiler merges them; the kernel rejects
/// overlapping intervals).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Element {
    Addr(IpAddr),
    AddrRange(IpAddr, IpAddr),
    PortRange(u16, u16),
    AddrProtoPort(IpAddr, u8, u16),
    /// `addr : jump chain`.
    VmapJump(IpAddr, String),
}

impl Ruleset {
    /// Number of rules across all chains (the guard table's too).
    pub fn rule_count(&self) -> usize {
        let guard: usize = self
            .guard
            .iter()
            .flat_map(|g| g.chains.values())
            .map(|c| c.rules.len())
            .sum();
        self.chains.values().map(|c| c.rules.len()).sum::<usize>() + guard
    }
    /// Number of set and map elements across all sets.
    pub fn element_count(&self) -> usize {
        self.sets.values().map(|s| s.elements.len()).sum()
    }
}

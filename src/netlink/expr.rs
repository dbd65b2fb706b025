//! Rule expressions: IR rules <-> the list of kernel expressions nft
//! itself would generate for them (checked against `nft --debug=netlink`
//! output of the same text), in a plain-data form ([`RawExpr`]) that the
//! FFI layer (`raw.rs`) turns into and out of `nftnl_expr` objects.
//!
//! Keeping this step pure means the decoder is tested against the encoder
//! and against hand-written copies of nft's own output without a kernel.
//! Both directions go through this one representation, which is why the
//! expressions are built raw rather than with nftnl's safe expression
//! types: those hard-code register 1 (concatenations need consecutive
//! 32-bit registers) and cannot express a vmap lookup (dreg 0).

use policy_compiler::ir::{CtDir, CtState, Dir, Family, Match, Rule, Verdict};
use std::collections::BTreeSet;

pub const META_NFPROTO: u32 = libc::NFT_META_NFPROTO as u32;
pub const META_L4PROTO: u32 = libc::NFT_META_L4PROTO as u32;
/// `meta protocol` (the frame's ethertype, network order): the family
/// guard of the netdev table, where `meta nfproto` is always netdev.
pub const META_PROTOCOL: u32 = libc::NFT_META_PROTOCOL as u32;
/// `meta iiftype`: nft's dependency of an `ether` match.
pub const META_IIFTYPE: u32 = libc::NFT_META_IIFTYPE as u32;
pub const BASE_LINK: u32 = libc::NFT_PAYLOAD_LL_HEADER as u32;
/// `ARPHRD_ETHER`, as `meta iiftype` loads it (two bytes, host order).
const ARPHRD_ETHER: u16 = libc::ARPHRD_ETHER;
/// Offset of the ethertype in the Ethernet header.
const ETHER_TYPE_OFFSET: u32 = 12;
/// ARP's hardware type, protocol type, and their lengths for Ethernet/IPv4.
const ARP_ETH_IPV4: [u8; 6] = [0, 1, 8, 0, 6, 4];
/// Offset of the sender protocol address in Ethernet/IPv4 ARP.
const ARP_SPA_OFFSET: u32 = 14;
/// Offset of the target address in a neighbour solicitation/advertisement.
const ND_TARGET_OFFSET: u32 = 8;
pub const CT_STATE: u32 = libc::NFT_CT_STATE as u32;
pub const CT_SRC_IP: u32 = libc::NFT_CT_SRC_IP as u32;
pub const CT_SRC_IP6: u32 = libc::NFT_CT_SRC_IP6 as u32;
/// `IP_CT_DIR_ORIGINAL` / `IP_CT_DIR_REPLY` (libc has neither).
pub const CT_DIR_ORIGINAL: u8 = 0;
pub const CT_DIR_REPLY: u8 = 1;
pub const BASE_NETWORK: u32 = libc::NFT_PAYLOAD_NETWORK_HEADER as u32;
pub const BASE_TRANSPORT: u32 = libc::NFT_PAYLOAD_TRANSPORT_HEADER as u32;
pub const CMP_EQ: u32 = libc::NFT_CMP_EQ as u32;
pub const CMP_NEQ: u32 = libc::NFT_CMP_NEQ as u32;
pub const CMP_LTE: u32 = libc::NFT_CMP_LTE as u32;
pub const CMP_GTE: u32 = libc::NFT_CMP_GTE as u32;
pub const CMP_GT: u32 = libc::NFT_CMP_GT as u32;
/// `NFT_EXTHDR_OP_IPV6` and `NFT_EXTHDR_F_PRESENT` (libc has neither):
/// an exthdr expression over IPv6 extension headers that only says
/// whether the header is there.
pub const EXTHDR_OP_IPV6: u32 = 0;
pub const EXTHDR_F_PRESENT: u32 = 1;
/// `NEXTHDR_ROUTING`: the IPv6 routing header.
pub const NEXTHDR_ROUTING: u8 = 43;
/// The IPv4 header's first byte holds the header length in its low
/// nibble; options start at byte 20.
const IP4_HDRLEN_MASK: u8 = 0x0f;
const IP4_OPTIONS_OFFSET: u32 = 20;
pub const REG_VERDICT: u32 = libc::NFT_REG_VERDICT as u32;
pub const REG_1: u32 = libc::NFT_REG_1 as u32;
/// `fib daddr type`: look the destination up, return its route type
/// (`NFTA_FIB_F_DADDR`, `NFT_FIB_RESULT_ADDRTYPE`; libc has neither).
pub const FIB_F_DADDR: u32 = 1 << 1;
pub const FIB_RESULT_ADDRTYPE: u32 = 3;
pub const RTN_BROADCAST: u32 = libc::RTN_BROADCAST as u32;
const REG32_00: u32 = libc::NFT_REG32_00 as u32;
const NFPROTO_IPV4: u8 = libc::NFPROTO_IPV4 as u8;
const NFPROTO_IPV6: u8 = libc::NFPROTO_IPV6 as u8;
const ICMPV6: u8 = policy_compiler::ir::l4::ICMPV6;
const TCP: u8 = policy_compiler::ir::l4::TCP;
/// The flags byte of the TCP header, and the flags that decide whether a
/// segment can open a connection (fin, syn, rst, ack).
const TCP_FLAGS_OFFSET: u32 = 13;
const TCP_OPENING_FLAGS: u8 = 0x17;
const TCP_SYN: u8 = 0x02;

/// Verdict codes of an `immediate` to the verdict register.
pub const V_ACCEPT: i32 = libc::NF_ACCEPT;
pub const V_DROP: i32 = libc::NF_DROP;
pub const V_RETURN: i32 = libc::NFT_RETURN;
pub const V_JUMP: i32 = libc::NFT_JUMP;
pub const V_GOTO: i32 = libc::NFT_GOTO;
/// `NFT_LIMIT_PKTS`: a limit counting packets, not bytes.
pub const LIMIT_PKTS: u32 = 0;

/// One kernel expression, reduced to the attributes nftpol uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RawExpr {
    Meta {
        key: u32,
        dreg: u32,
    },
    Ct {
        key: u32,
        dreg: u32,
    },
    /// A conntrack key of one direction (`ct original ip saddr`).
    CtDir {
        key: u32,
        dir: u8,
        dreg: u32,
    },
    Payload {
        base: u32,
        offset: u32,
        len: u32,
        dreg: u32,
    },
    Cmp {
        sreg: u32,
        op: u32,
        data: Vec<u8>,
    },
    Bitwise {
        sreg: u32,
        dreg: u32,
        len: u32,
        mask: Vec<u8>,
        xor: Vec<u8>,
    },
    /// `dreg: Some(0)` is a verdict-map lookup.
    Lookup {
        sreg: u32,
        dreg: Option<u32>,
        set: String,
    },
    /// The `counter` statement (its values are not compared).
    Counter,
    /// `limit rate N/<unit seconds> burst B`; `kind` 0 counts packets.
    Limit {
        rate: u64,
        unit: u64,
        burst: u32,
        kind: u32,
        flags: u32,
    },
    /// `log prefix ... group G` (nflog); snaplen 0 leaves the copy range
    /// to the listener.
    Log {
        prefix: String,
        group: Option<u16>,
        snaplen: u32,
        qthreshold: u16,
        /// A syslog level or flags: a log nftpol never writes.
        other: bool,
    },
    /// `exthdr`: with `EXTHDR_F_PRESENT`, 1 or 0 in `dreg` as the header
    /// (`ty`) is there or not.
    Exthdr {
        op: u32,
        ty: u8,
        offset: u32,
        len: u32,
        flags: u32,
        dreg: u32,
    },
    /// `fib <flags> <result>` into `dreg`.
    Fib {
        flags: u32,
        result: u32,
        dreg: u32,
    },
    /// An `immediate` to the verdict register.
    Verdict {
        code: i32,
        chain: Option<String>,
    },
    /// Anything nftpol never generates (kept by name for the error).
    Other(String),
}

/// The register holding 32-bit slot `slot` counted from register 1, as
/// nft names it (a 128-bit register when the slot starts one).
pub fn reg_for_slot(slot: u32) -> u32 {
    if slot % 4 == 0 {
        REG_1 + slot / 4
    } else {
        REG32_00 + slot
    }
}

/// Inverse of [`reg_for_slot`]; accepts both namings, as the kernel dumps
/// whichever form it normalises to.
pub fn slot_of_reg(reg: u32) -> Option<u32> {
    match reg {
        1..=4 => Some((reg - REG_1) * 4),
        8..=23 => Some(reg - REG32_00),
        _ => None,
    }
}

fn nfproto(f: Family) -> u8 {
    match f {
        Family::Ipv4 => NFPROTO_IPV4,
        Family::Ipv6 => NFPROTO_IPV6,
    }
}

/// Offset of the hop limit in the IPv6 header.
const IP6_HOPLIMIT_OFFSET: u32 = 7;
/// Offset of the next header field in the IPv6 header.
const IP6_NEXTHDR_OFFSET: u32 = 6;

fn addr_bytes(a: &std::net::IpAddr) -> Vec<u8> {
    match a {
        std::net::IpAddr::V4(a) => a.octets().to_vec(),
        std::net::IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// The prefix a compare (after an optional mask) of an address field
/// selects, if it is one.
fn prefix_of(family: Family, mask: Option<&[u8]>, data: &[u8]) -> Option<ipnet::IpNet> {
    let addr = match family {
        Family::Ipv4 => std::net::IpAddr::from(<[u8; 4]>::try_from(data).ok()?),
        Family::Ipv6 => std::net::IpAddr::from(<[u8; 16]>::try_from(data).ok()?),
    };
    let len = match mask {
        None => data.len() as u8 * 8,
        Some(m) if m.len() == data.len() => {
            // Only a contiguous mask (ones, then zeros) is a prefix.
            let ones: u32 = m.iter().map(|b| b.count_ones()).sum();
            let leading = m
                .iter()
                .try_fold(0u32, |acc, b| match b {
                    0xff => Ok(acc + 8),
                    _ => Err(acc + b.leading_ones()),
                })
                .unwrap_or_else(|n| n);
            if ones != leading {
                return None;
            }
            leading as u8
        }
        Some(_) => return None,
    };
    let net = ipnet::IpNet::new(addr, len).ok()?;
    (net.network() == addr).then_some(net)
}

/// A load of the first `len` bytes (fewer than all) of an address field:
/// its family, direction and whole length.
fn truncated_addr_load(offset: u32, len: u32) -> Option<(Family, Dir, usize)> {
    [Family::Ipv4, Family::Ipv6]
        .into_iter()
        .flat_map(|f| [(f, Dir::Src), (f, Dir::Dst)])
        .find_map(|(f, d)| {
            let (at, full) = addr_field(f, d);
            (at == offset && 0 < len && len < full).then_some((f, d, full as usize))
        })
}

/// (offset, len) of an address in the network header.
fn addr_field(f: Family, d: Dir) -> (u32, u32) {
    match (f, d) {
        (Family::Ipv4, Dir::Src) => (12, 4),
        (Family::Ipv4, Dir::Dst) => (16, 4),
        (Family::Ipv6, Dir::Src) => (8, 16),
        (Family::Ipv6, Dir::Dst) => (24, 16),
    }
}

fn addr_from_field(offset: u32, len: u32) -> Option<(Family, Dir)> {
    match (offset, len) {
        (12, 4) => Some((Family::Ipv4, Dir::Src)),
        (16, 4) => Some((Family::Ipv4, Dir::Dst)),
        (8, 16) => Some((Family::Ipv6, Dir::Src)),
        (24, 16) => Some((Family::Ipv6, Dir::Dst)),
        _ => None,
    }
}

/// Emits expressions in nft's order, adding the `meta nfproto` guard an
/// inet table needs before the first ip/ip6 payload of a family.
struct Lowering {
    out: Vec<RawExpr>,
    family: Option<Family>,
    /// In the netdev guard table: the family guard is `meta protocol`.
    netdev: bool,
    /// `meta iiftype ether` emitted already.
    iiftype: bool,
}

impl Lowering {
    fn guard(&mut self, f: Family) {
        if self.family != Some(f) {
            let (key, data) = if self.netdev {
                let ty = match f {
                    Family::Ipv4 => policy_compiler::srcval::ETH_P_IP,
                    Family::Ipv6 => policy_compiler::srcval::ETH_P_IPV6,
                };
                (META_PROTOCOL, ty.to_be_bytes().to_vec())
            } else {
                (META_NFPROTO, vec![nfproto(f)])
            };
            self.meta_eq(key, data);
            self.family = Some(f);
        }
    }

    /// A load of meta `key`, then an equality compare with `data`.
    fn meta_eq(&mut self, key: u32, data: Vec<u8>) {
        self.out.push(RawExpr::Meta { key, dreg: REG_1 });
        self.cmp(CMP_EQ, data);
    }

    /// A load of `len` bytes at `offset` from `base`, then one compare.
    fn load_cmp(&mut self, base: u32, offset: u32, op: u32, data: Vec<u8>) {
        self.load(base, offset, data.len() as u32);
        self.cmp(op, data);
    }

    /// A load of `len` bytes at `offset` from `base` into register 1.
    fn load(&mut self, base: u32, offset: u32, len: u32) {
        self.out.push(RawExpr::Payload {
            base,
            offset,
            len,
            dreg: REG_1,
        });
    }

    /// Register 1 AND `mask` (nft writes a zero XOR beside it).
    fn and_mask(&mut self, mask: Vec<u8>) {
        self.out.push(RawExpr::Bitwise {
            sreg: REG_1,
            dreg: REG_1,
            len: mask.len() as u32,
            xor: vec![0; mask.len()],
            mask,
        });
    }

    /// Register 1 compared with `data`.
    fn cmp(&mut self, op: u32, data: Vec<u8>) {
        self.out.push(RawExpr::Cmp {
            sreg: REG_1,
            op,
            data,
        });
    }

    fn addr(&mut self, f: Family, d: Dir, slot: u32) {
        self.guard(f);
        let (offset, len) = addr_field(f, d);
        self.out.push(RawExpr::Payload {
            base: BASE_NETWORK,
            offset,
            len,
            dreg: reg_for_slot(slot),
        });
    }

    fn l4proto(&mut self, p: u8) {
        self.meta_eq(META_L4PROTO, vec![p]);
    }

    fn range(&mut self, lo: Vec<u8>, hi: Vec<u8>) {
        if lo == hi {
            self.cmp(CMP_EQ, lo);
        } else {
            self.cmp(CMP_GTE, lo);
            self.cmp(CMP_LTE, hi);
        }
    }

    fn lookup(&mut self, set: &str, dreg: Option<u32>) {
        self.out.push(RawExpr::Lookup {
            sreg: REG_1,
            dreg,
            set: set.to_string(),
        });
    }

    /// `ip hdrlength <op> words`: the low nibble of the first byte.
    fn ip4_hdrlen(&mut self, op: u32, words: u8) {
        self.load(BASE_NETWORK, 0, 1);
        self.and_mask(vec![IP4_HDRLEN_MASK]);
        self.cmp(op, vec![words]);
    }

    fn dport(&mut self) {
        self.load(BASE_TRANSPORT, 2, 2);
    }
}

/// The kernel expressions of a rule (its comment travels separately, as
/// rule userdata).
pub fn lower_rule(rule: &Rule) -> Vec<RawExpr> {
    lower(rule, false)
}

/// [`lower_rule`] for a rule of the `netdev nftpol` guard table.
pub fn lower_guard_rule(rule: &Rule) -> Vec<RawExpr> {
    lower(rule, true)
}

fn lower(rule: &Rule, netdev: bool) -> Vec<RawExpr> {
    let mut l = Lowering {
        out: Vec::new(),
        family: None,
        netdev,
        iiftype: false,
    };
    for m in &rule.matches {
        match m {
            Match::EtherType { ty, negate } => {
                if !l.iiftype {
                    l.meta_eq(META_IIFTYPE, ARPHRD_ETHER.to_ne_bytes().to_vec());
                    l.iiftype = true;
                }
                let op = if *negate { CMP_NEQ } else { CMP_EQ };
                l.load_cmp(BASE_LINK, ETHER_TYPE_OFFSET, op, ty.to_be_bytes().to_vec());
            }
            Match::ArpNotEthIpv4 => l.load_cmp(BASE_NETWORK, 0, CMP_NEQ, ARP_ETH_IPV4.to_vec()),
            Match::ArpSenderIpNot(a) => {
                l.load_cmp(BASE_NETWORK, ARP_SPA_OFFSET, CMP_NEQ, a.octets().to_vec())
            }
            Match::NdTargetNot(net) => {
                // The bytes the prefix covers, masked when it ends mid-byte
                // (nft's own encoding of a raw `@th,64,LEN` compare).
                let n = usize::from(net.prefix_len()).div_ceil(8);
                let mask = net.netmask().octets()[..n].to_vec();
                let data = net.network().octets()[..n].to_vec();
                l.load(BASE_TRANSPORT, ND_TARGET_OFFSET, n as u32);
                if mask.iter().any(|b| *b != 0xff) {
                    l.and_mask(mask);
                }
                l.cmp(CMP_NEQ, data);
            }
            Match::CtState(states) => {
                let mask: u32 = states.iter().map(|s| s.bit()).fold(0, |a, b| a | b);
                l.out.push(RawExpr::Ct {
                    key: CT_STATE,
                    dreg: REG_1,
                });
                // ct state is host order (docs/NETLINK.md, kernel fact 4).
                l.and_mask(mask.to_ne_bytes().to_vec());
                l.cmp(CMP_NEQ, vec![0; 4]);
            }
            Match::L4Proto(p) => l.l4proto(*p),
            Match::AddrInSet { family, dir, set } => {
                l.addr(*family, *dir, 0);
                l.lookup(set, None);
            }
            Match::DPort { lo, hi } => {
                l.dport();
                l.range(lo.to_be_bytes().to_vec(), hi.to_be_bytes().to_vec());
            }
            Match::DPortInSet { set } => {
                l.dport();
                l.lookup(set, None);
            }
            Match::DAddrProtoPortInSet { family, set } => {
                // Each part of the key starts in the next free 32-bit
                // register, exactly as nft lays out a concatenation.
                l.addr(*family, Dir::Dst, 0);
                let after_addr = addr_field(*family, Dir::Dst).1 / 4;
                l.out.push(RawExpr::Meta {
                    key: META_L4PROTO,
                    dreg: reg_for_slot(after_addr),
                });
                l.out.push(RawExpr::Payload {
                    base: BASE_TRANSPORT,
                    offset: 2,
                    len: 2,
                    dreg: reg_for_slot(after_addr + 1),
                });
                l.lookup(set, None);
            }
            Match::AddrPrefix { family, dir, net } => {
                l.addr(*family, *dir, 0);
                let network = addr_bytes(&net.network());
                if net.prefix_len() < net.max_prefix_len() {
                    l.and_mask(addr_bytes(&net.netmask()));
                }
                l.cmp(CMP_EQ, network);
            }
            Match::CtSaddr { dir, addr } => {
                // nft adds no `meta nfproto` here: the kernel's ct
                // expression breaks on an entry of the other family.
                l.out.push(RawExpr::CtDir {
                    key: match addr {
                        std::net::IpAddr::V4(_) => CT_SRC_IP,
                        std::net::IpAddr::V6(_) => CT_SRC_IP6,
                    },
                    dir: match dir {
                        CtDir::Original => CT_DIR_ORIGINAL,
                        CtDir::Reply => CT_DIR_REPLY,
                    },
                    dreg: REG_1,
                });
                l.cmp(CMP_EQ, addr_bytes(addr));
            }
            Match::Ip6HopLimit(n) => {
                l.guard(Family::Ipv6);
                l.load_cmp(BASE_NETWORK, IP6_HOPLIMIT_OFFSET, CMP_EQ, vec![*n]);
            }
            Match::Ip4HdrLenAbove(n) => {
                l.guard(Family::Ipv4);
                l.ip4_hdrlen(CMP_GT, *n);
            }
            Match::Ip4OptionWordNot(w) => {
                l.guard(Family::Ipv4);
                l.ip4_hdrlen(CMP_EQ, policy_compiler::srcval::IP4_WORDS + 1);
                l.load_cmp(
                    BASE_NETWORK,
                    IP4_OPTIONS_OFFSET,
                    CMP_NEQ,
                    w.to_be_bytes().to_vec(),
                );
            }
            Match::Ip4HdrLen(n) => {
                l.guard(Family::Ipv4);
                l.ip4_hdrlen(CMP_EQ, *n);
            }
            Match::Ip6NextHeader(p) => {
                l.guard(Family::Ipv6);
                l.load_cmp(BASE_NETWORK, IP6_NEXTHDR_OFFSET, CMP_EQ, vec![*p]);
            }
            Match::Ip6RoutingHeader => {
                l.guard(Family::Ipv6);
                l.out.push(RawExpr::Exthdr {
                    op: EXTHDR_OP_IPV6,
                    ty: NEXTHDR_ROUTING,
                    offset: 0,
                    len: 1,
                    flags: EXTHDR_F_PRESENT,
                    dreg: REG_1,
                });
                l.cmp(CMP_EQ, vec![1]);
            }
            Match::DaddrBroadcast => {
                l.out.push(RawExpr::Fib {
                    flags: FIB_F_DADDR,
                    result: FIB_RESULT_ADDRTYPE,
                    dreg: REG_1,
                });
                l.cmp(CMP_EQ, RTN_BROADCAST.to_ne_bytes().to_vec());
            }
            Match::Counter => l.out.push(RawExpr::Counter),
            Match::Limit { per_second, burst } => l.out.push(RawExpr::Limit {
                rate: u64::from(*per_second),
                unit: 1,
                burst: *burst,
                kind: LIMIT_PKTS,
                flags: 0,
            }),
            Match::Log { group, prefix } => l.out.push(RawExpr::Log {
                prefix: prefix.clone(),
                group: Some(*group),
                snaplen: 0,
                qthreshold: 0,
                other: false,
            }),
            Match::TcpNotSyn => {
                l.l4proto(TCP);
                l.load(BASE_TRANSPORT, TCP_FLAGS_OFFSET, 1);
                l.and_mask(vec![TCP_OPENING_FLAGS]);
                l.cmp(CMP_NEQ, vec![TCP_SYN]);
            }
            Match::Icmpv6Type { lo, hi } => {
                l.guard(Family::Ipv6);
                l.l4proto(ICMPV6);
                l.load(BASE_TRANSPORT, 0, 1);
                l.range(vec![*lo], vec![*hi]);
            }
        }
    }
    match &rule.verdict {
        Verdict::Accept => l.out.push(RawExpr::Verdict {
            code: V_ACCEPT,
            chain: None,
        }),
        Verdict::Drop => l.out.push(RawExpr::Verdict {
            code: V_DROP,
            chain: None,
        }),
        Verdict::Return => l.out.push(RawExpr::Verdict {
            code: V_RETURN,
            chain: None,
        }),
        Verdict::Jump(c) => l.out.push(RawExpr::Verdict {
            code: V_JUMP,
            chain: Some(c.clone()),
        }),
        Verdict::Goto(c) => l.out.push(RawExpr::Verdict {
            code: V_GOTO,
            chain: Some(c.clone()),
        }),
        Verdict::AddrVmap { family, dir, map } => {
            l.addr(*family, *dir, 0);
            l.lookup(map, Some(REG_VERDICT));
        }
        Verdict::Continue => {}
    }
    l.out
}

/// The family a guard's compare names (`meta nfproto` in an inet table,
/// `meta protocol` in the netdev guard).
fn family_of_guard(key: u32, data: &[u8]) -> Option<Family> {
    match (key, data) {
        (META_NFPROTO, [p]) if *p == NFPROTO_IPV4 => Some(Family::Ipv4),
        (META_NFPROTO, [p]) if *p == NFPROTO_IPV6 => Some(Family::Ipv6),
        (META_PROTOCOL, [a, b]) => match u16::from_be_bytes([*a, *b]) {
            policy_compiler::srcval::ETH_P_IP => Some(Family::Ipv4),
            policy_compiler::srcval::ETH_P_IPV6 => Some(Family::Ipv6),
            _ => None,
        },
        _ => None,
    }
}

/// Reads a rule back from its kernel expressions. Anything that is not a
/// shape [`lower_rule`] or nft produces for the IR is an error naming the
/// expression, so a foreign rule is reported instead of mis-decoded.
pub fn raise_rule(exprs: &[RawExpr], comment: Option<String>) -> Result<Rule, String> {
    use RawExpr as E;
    let mut matches = Vec::new();
    let mut verdict = None;
    // The family the last guard named: a header field read under the
    // other family's guard is another rule.
    let mut guarded: Option<Family> = None;
    let need = |guarded: Option<Family>, f: Family, what: &str| {
        if guarded == Some(f) {
            Ok(())
        } else {
            Err(format!("{what} without a {f:?} family guard"))
        }
    };
    let mut i = 0;
    let cmp1 = |e: Option<&RawExpr>, op: u32| -> Option<Vec<u8>> {
        match e {
            Some(E::Cmp { sreg, op: o, data }) if *sreg == REG_1 && *o == op => Some(data.clone()),
            _ => None,
        }
    };
    // A compare or a gte/lte pair after a load into register 1.
    let range_at = |i: usize| -> Option<(Vec<u8>, Vec<u8>, usize)> {
        if let Some(v) = cmp1(exprs.get(i), CMP_EQ) {
            return Some((v.clone(), v, 1));
        }
        let lo = cmp1(exprs.get(i), CMP_GTE)?;
        let hi = cmp1(exprs.get(i + 1), CMP_LTE)?;
        Some((lo, hi, 2))
    };
    let u16_of = |b: &[u8]| <[u8; 2]>::try_from(b).ok().map(u16::from_be_bytes);
    while i < exprs.len() {
        if verdict.is_some() {
            return Err(format!("expression after the verdict: {:?}", exprs[i]));
        }
        let e = &exprs[i];
        // A compare of either sense right after `e`.
        let cmp_any = || {
            cmp1(exprs.get(i + 1), CMP_EQ)
                .map(|d| (d, false))
                .or_else(|| cmp1(exprs.get(i + 1), CMP_NEQ).map(|d| (d, true)))
        };
        match e {
            E::Meta {
                key: META_IIFTYPE,
                dreg: REG_1,
            } if cmp1(exprs.get(i + 1), CMP_EQ) == Some(ARPHRD_ETHER.to_ne_bytes().to_vec()) => {
                // nft's dependency of the `ether type` match after it.
                i += 2;
            }
            E::Meta {
                key: key @ (META_PROTOCOL | META_NFPROTO),
                dreg: REG_1,
            } if cmp1(exprs.get(i + 1), CMP_EQ).is_some() => {
                // The family guard (netdev: ethertype, inet: nfproto):
                // implied by the match after it, which the header-field
                // matches below check it names.
                guarded = cmp1(exprs.get(i + 1), CMP_EQ).and_then(|d| family_of_guard(*key, &d));
                i += 2;
            }
            E::Payload {
                base: BASE_LINK,
                offset: ETHER_TYPE_OFFSET,
                len: 2,
                dreg: REG_1,
            } => {
                let Some((Some(ty), negate)) = cmp_any().map(|(d, n)| (u16_of(&d), n)) else {
                    return Err("ether type without a two-byte compare".into());
                };
                matches.push(Match::EtherType { ty, negate });
                i += 2;
            }
            E::Payload {
                base: BASE_NETWORK,
                offset: 0,
                len: 6,
                dreg: REG_1,
            } if cmp1(exprs.get(i + 1), CMP_NEQ).as_deref() == Some(&ARP_ETH_IPV4[..]) => {
                matches.push(Match::ArpNotEthIpv4);
                i += 2;
            }
            E::Payload {
                base: BASE_NETWORK,
                offset: ARP_SPA_OFFSET,
                len: 4,
                dreg: REG_1,
            } => {
                let Some(Ok(a)) = cmp1(exprs.get(i + 1), CMP_NEQ).map(<[u8; 4]>::try_from) else {
                    return Err("arp saddr ip without a != compare".into());
                };
                matches.push(Match::ArpSenderIpNot(a.into()));
                i += 2;
            }
            E::Payload {
                base: BASE_TRANSPORT,
                offset: ND_TARGET_OFFSET,
                len,
                dreg: REG_1,
            } if (1..=16).contains(len) => {
                let n = *len as usize;
                let (mask, data, used) = match (exprs.get(i + 1), exprs.get(i + 2)) {
                    (
                        Some(E::Bitwise { mask, xor, .. }),
                        Some(E::Cmp {
                            sreg: REG_1,
                            op: CMP_NEQ,
                            data,
                        }),
                    ) if xor.iter().all(|b| *b == 0) => (mask.clone(), data.clone(), 3),
                    (
                        Some(E::Cmp {
                            sreg: REG_1,
                            op: CMP_NEQ,
                            data,
                        }),
                        _,
                    ) => (vec![0xff; data.len()], data.clone(), 2),
                    _ => return Err("nd target without a != compare".into()),
                };
                let pad = |b: &[u8]| {
                    let mut v = b.to_vec();
                    v.resize(16, 0);
                    v
                };
                if mask.len() != n || data.len() != n {
                    return Err(format!("nd target compare of {} bytes", data.len()));
                }
                let Some(ipnet::IpNet::V6(net)) =
                    prefix_of(Family::Ipv6, Some(&pad(&mask)), &pad(&data))
                else {
                    return Err(format!("nd target mask {mask:?} compare {data:?}"));
                };
                matches.push(Match::NdTargetNot(net));
                i += used;
            }
            E::Meta {
                key: META_L4PROTO,
                dreg: REG_1,
            } => {
                let Some(p) = cmp1(exprs.get(i + 1), CMP_EQ) else {
                    return Err("meta l4proto without a compare".into());
                };
                let [p] = p[..] else {
                    return Err(format!("meta l4proto compare of {} bytes", p.len()));
                };
                let icmp_type = matches!(
                    exprs.get(i + 2),
                    Some(E::Payload {
                        base: BASE_TRANSPORT,
                        offset: 0,
                        len: 1,
                        dreg: REG_1
                    })
                );
                if p == ICMPV6 && icmp_type {
                    let Some((lo, hi, n)) = range_at(i + 3) else {
                        return Err("icmpv6 type without a compare".into());
                    };
                    match (&lo[..], &hi[..]) {
                        ([lo], [hi]) => matches.push(Match::Icmpv6Type { lo: *lo, hi: *hi }),
                        _ => return Err("icmpv6 type compare width".into()),
                    }
                    i += 3 + n;
                } else if p == TCP
                    && matches!(
                        exprs.get(i + 2),
                        Some(E::Payload {
                            base: BASE_TRANSPORT,
                            offset: TCP_FLAGS_OFFSET,
                            len: 1,
                            dreg: REG_1
                        })
                    )
                {
                    let opening = matches!(
                        exprs.get(i + 3),
                        Some(E::Bitwise { sreg: REG_1, dreg: REG_1, len: 1, mask, xor })
                            if mask[..] == [TCP_OPENING_FLAGS] && xor[..] == [0]
                    );
                    if !opening || cmp1(exprs.get(i + 4), CMP_NEQ).as_deref() != Some(&[TCP_SYN]) {
                        return Err("tcp flags other than `& (fin|syn|rst|ack) != syn`".into());
                    }
                    matches.push(Match::TcpNotSyn);
                    i += 5;
                } else {
                    matches.push(Match::L4Proto(p));
                    i += 2;
                }
            }
            E::Ct {
                key: CT_STATE,
                dreg: REG_1,
            } => {
                let (
                    Some(E::Bitwise {
                        mask, xor, len: 4, ..
                    }),
                    Some(zero),
                ) = (exprs.get(i + 1), cmp1(exprs.get(i + 2), CMP_NEQ))
                else {
                    return Err("ct state without bitwise + compare".into());
                };
                let mask = <[u8; 4]>::try_from(&mask[..])
                    .map(u32::from_ne_bytes)
                    .map_err(|_| "ct state mask width")?;
                if xor.iter().any(|b| *b != 0) || zero.iter().any(|b| *b != 0) {
                    return Err("ct state with xor or non-zero compare".into());
                }
                let states: BTreeSet<CtState> = CtState::ALL
                    .iter()
                    .copied()
                    .filter(|s| mask & s.bit() != 0)
                    .collect();
                if states.iter().map(|s| s.bit()).fold(0, |a, b| a | b) != mask {
                    return Err(format!("ct state mask {mask:#x} has unknown bits"));
                }
                matches.push(Match::CtState(states));
                i += 3;
            }
            E::CtDir {
                key,
                dir,
                dreg: REG_1,
            } => {
                let dir = match *dir {
                    CT_DIR_ORIGINAL => CtDir::Original,
                    CT_DIR_REPLY => CtDir::Reply,
                    d => return Err(format!("ct direction {d}")),
                };
                let data =
                    cmp1(exprs.get(i + 1), CMP_EQ).ok_or("ct saddr without an address compare")?;
                let addr = match (*key, data.len()) {
                    (CT_SRC_IP, 4) => prefix_of(Family::Ipv4, None, &data),
                    (CT_SRC_IP6, 16) => prefix_of(Family::Ipv6, None, &data),
                    _ => None,
                }
                .ok_or_else(|| format!("ct key {key} compared with {data:?}"))?
                .addr();
                matches.push(Match::CtSaddr { dir, addr });
                i += 2;
            }
            E::Fib {
                flags: FIB_F_DADDR,
                result: FIB_RESULT_ADDRTYPE,
                dreg: REG_1,
            } => {
                if cmp1(exprs.get(i + 1), CMP_EQ) != Some(RTN_BROADCAST.to_ne_bytes().to_vec()) {
                    return Err("fib daddr type without a broadcast compare".into());
                }
                matches.push(Match::DaddrBroadcast);
                i += 2;
            }
            E::Payload {
                base: BASE_NETWORK,
                offset: 0,
                len: 1,
                dreg: REG_1,
            } => {
                let nibble = matches!(
                    exprs.get(i + 1),
                    Some(E::Bitwise { sreg: REG_1, dreg: REG_1, len: 1, mask, xor })
                        if mask[..] == [IP4_HDRLEN_MASK] && xor[..] == [0]
                );
                if !nibble {
                    return Err("ip hdrlength without its nibble mask".into());
                }
                need(guarded, Family::Ipv4, "ip hdrlength")?;
                let one_word = policy_compiler::srcval::IP4_WORDS + 1;
                if let Some([n]) = cmp1(exprs.get(i + 2), CMP_GT).as_deref() {
                    matches.push(Match::Ip4HdrLenAbove(*n));
                    i += 3;
                } else if cmp1(exprs.get(i + 2), CMP_EQ).as_deref() == Some(&[one_word])
                    && matches!(
                        exprs.get(i + 3),
                        Some(E::Payload {
                            base: BASE_NETWORK,
                            offset: IP4_OPTIONS_OFFSET,
                            len: 4,
                            dreg: REG_1
                        })
                    )
                {
                    let Some(Ok(w)) = cmp1(exprs.get(i + 4), CMP_NEQ).map(<[u8; 4]>::try_from)
                    else {
                        return Err("ip option word without a four-byte != compare".into());
                    };
                    matches.push(Match::Ip4OptionWordNot(u32::from_be_bytes(w)));
                    i += 5;
                } else if let Some([n]) = cmp1(exprs.get(i + 2), CMP_EQ).as_deref() {
                    matches.push(Match::Ip4HdrLen(*n));
                    i += 3;
                } else {
                    return Err(
                        "ip hdrlength other than `> N`, `N`, or `6` and an option word".into(),
                    );
                }
            }
            E::Exthdr {
                op: EXTHDR_OP_IPV6,
                ty: NEXTHDR_ROUTING,
                offset: 0,
                len: 1,
                flags: EXTHDR_F_PRESENT,
                dreg: REG_1,
            } => {
                if cmp1(exprs.get(i + 1), CMP_EQ).as_deref() != Some(&[1]) {
                    return Err("exthdr rt without an `exists` compare".into());
                }
                need(guarded, Family::Ipv6, "exthdr rt")?;
                matches.push(Match::Ip6RoutingHeader);
                i += 2;
            }
            E::Payload {
                base: BASE_NETWORK,
                offset: offset @ (IP6_NEXTHDR_OFFSET | IP6_HOPLIMIT_OFFSET),
                len: 1,
                dreg: REG_1,
            } => {
                let (what, each): (_, fn(u8) -> Match) = if *offset == IP6_NEXTHDR_OFFSET {
                    ("ip6 nexthdr", Match::Ip6NextHeader)
                } else {
                    ("ip6 hoplimit", Match::Ip6HopLimit)
                };
                let Some([v]) =
                    cmp1(exprs.get(i + 1), CMP_EQ).and_then(|d| <[u8; 1]>::try_from(d).ok())
                else {
                    return Err(format!("{what} without a one-byte compare"));
                };
                need(guarded, Family::Ipv6, what)?;
                matches.push(each(v));
                i += 2;
            }
            E::Payload {
                base: BASE_NETWORK,
                offset,
                len,
                dreg: REG_1,
            } if truncated_addr_load(*offset, *len).is_some() => {
                // nft loads only the bytes a byte-aligned prefix covers
                // (`ip6 daddr ff00::/8` reads one byte): the same prefix.
                let Some((family, dir, full)) = truncated_addr_load(*offset, *len) else {
                    return Err(format!("payload at network header +{offset} len {len}"));
                };
                let pad = |b: &[u8]| {
                    let mut v = b.to_vec();
                    v.resize(full, 0);
                    v
                };
                let (mask, data, used) = match (exprs.get(i + 1), exprs.get(i + 2)) {
                    (
                        Some(E::Bitwise { mask, xor, .. }),
                        Some(E::Cmp {
                            sreg: REG_1,
                            op: CMP_EQ,
                            data,
                        }),
                    ) if xor.iter().all(|b| *b == 0) => (pad(mask), pad(data), 3),
                    (
                        Some(E::Cmp {
                            sreg: REG_1,
                            op: CMP_EQ,
                            data,
                        }),
                        _,
                    ) => (pad(&vec![0xff; data.len()]), pad(data), 2),
                    _ => return Err(format!("unsupported use of {e:?}")),
                };
                let net = prefix_of(family, Some(&mask), &data)
                    .ok_or_else(|| format!("address mask {mask:?} compare {data:?}"))?;
                matches.push(Match::AddrPrefix { family, dir, net });
                i += used;
            }
            E::Payload {
                base: BASE_NETWORK,
                offset,
                len,
                dreg: REG_1,
            } => {
                let Some((family, dir)) = addr_from_field(*offset, *len) else {
                    return Err(format!("payload at network header +{offset} len {len}"));
                };
                let after_addr = len / 4;
                match (exprs.get(i + 1), exprs.get(i + 2), exprs.get(i + 3)) {
                    (
                        Some(E::Lookup {
                            sreg: REG_1,
                            dreg: None,
                            set,
                        }),
                        _,
                        _,
                    ) => {
                        matches.push(Match::AddrInSet {
                            family,
                            dir,
                            set: set.clone(),
                        });
                        i += 2;
                    }
                    (
                        Some(E::Lookup {
                            sreg: REG_1,
                            dreg: Some(REG_VERDICT),
                            set,
                        }),
                        _,
                        _,
                    ) => {
                        verdict = Some(Verdict::AddrVmap {
                            family,
                            dir,
                            map: set.clone(),
                        });
                        i += 2;
                    }
                    (
                        Some(E::Meta {
                            key: META_L4PROTO,
                            dreg: r1,
                        }),
                        Some(E::Payload {
                            base: BASE_TRANSPORT,
                            offset: 2,
                            len: 2,
                            dreg: r2,
                        }),
                        Some(E::Lookup {
                            sreg: REG_1,
                            dreg: None,
                            set,
                        }),
                    ) if dir == Dir::Dst
                        && slot_of_reg(*r1) == Some(after_addr)
                        && slot_of_reg(*r2) == Some(after_addr + 1) =>
                    {
                        matches.push(Match::DAddrProtoPortInSet {
                            family,
                            set: set.clone(),
                        });
                        i += 4;
                    }
                    (
                        Some(E::Cmp {
                            sreg: REG_1,
                            op: CMP_EQ,
                            data,
                        }),
                        _,
                        _,
                    ) => {
                        let net = prefix_of(family, None, data)
                            .ok_or_else(|| format!("address compare {data:?}"))?;
                        matches.push(Match::AddrPrefix { family, dir, net });
                        i += 2;
                    }
                    (
                        Some(E::Bitwise {
                            sreg: REG_1,
                            dreg: REG_1,
                            mask,
                            xor,
                            ..
                        }),
                        Some(E::Cmp {
                            sreg: REG_1,
                            op: CMP_EQ,
                            data,
                        }),
                        _,
                    ) if xor.iter().all(|b| *b == 0) => {
                        let net = prefix_of(family, Some(mask), data)
                            .ok_or_else(|| format!("address mask {mask:?} compare {data:?}"))?;
                        matches.push(Match::AddrPrefix { family, dir, net });
                        i += 3;
                    }
                    _ => return Err(format!("unsupported use of {e:?}")),
                }
            }
            E::Counter => {
                matches.push(Match::Counter);
                i += 1;
            }
            E::Limit {
                rate,
                unit: 1,
                burst,
                kind: LIMIT_PKTS,
                flags: 0,
            } => {
                let per_second = u32::try_from(*rate).map_err(|_| format!("limit rate {rate}"))?;
                matches.push(Match::Limit {
                    per_second,
                    burst: *burst,
                });
                i += 1;
            }
            E::Log {
                prefix,
                group: Some(group),
                snaplen: 0,
                qthreshold: 0,
                other: false,
            } => {
                matches.push(Match::Log {
                    group: *group,
                    prefix: prefix.clone(),
                });
                i += 1;
            }
            E::Payload {
                base: BASE_TRANSPORT,
                offset: 2,
                len: 2,
                dreg: REG_1,
            } => {
                if let Some(E::Lookup {
                    sreg: REG_1,
                    dreg: None,
                    set,
                }) = exprs.get(i + 1)
                {
                    matches.push(Match::DPortInSet { set: set.clone() });
                    i += 2;
                } else {
                    let Some((lo, hi, n)) = range_at(i + 1) else {
                        return Err("th dport without a compare or lookup".into());
                    };
                    let (Some(lo), Some(hi)) = (u16_of(&lo), u16_of(&hi)) else {
                        return Err("th dport compare width".into());
                    };
                    matches.push(Match::DPort { lo, hi });
                    i += 1 + n;
                }
            }
            E::Verdict { code, chain } => {
                verdict = Some(match (*code, chain) {
                    (V_ACCEPT, None) => Verdict::Accept,
                    (V_DROP, None) => Verdict::Drop,
                    (V_RETURN, None) => Verdict::Return,
                    (V_JUMP, Some(c)) => Verdict::Jump(c.clone()),
                    (V_GOTO, Some(c)) => Verdict::Goto(c.clone()),
                    _ => return Err(format!("unsupported verdict {code} {chain:?}")),
                });
                i += 1;
            }
            other => return Err(format!("unsupported expression {other:?}")),
        }
    }
    // Only a log rule goes without a verdict; a rule that merely matches
    // would be a foreign no-op.
    let verdict = match verdict {
        Some(v) => v,
        None if matches.iter().any(|m| matches!(m, Match::Log { .. })) => Verdict::Continue,
        None => return Err("rule without a verdict".into()),
    };
    Ok(Rule {
        matches,
        verdict,
        comment,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use policy_compiler::ir::l4;

    fn r(matches: Vec<Match>, verdict: Verdict) -> Rule {
        Rule {
            matches,
            verdict,
            comment: None,
        }
    }

    /// Every match and verdict the IR has, in the combinations the
    /// compiler emits.
    pub(crate) fn every_shape() -> Vec<Rule> {
        vec![
            r(
                vec![Match::CtState(
                    [CtState::Established, CtState::Related].into(),
                )],
                Verdict::Accept,
            ),
            r(
                vec![Match::CtState([CtState::Invalid].into())],
                Verdict::Drop,
            ),
            r(
                vec![Match::Icmpv6Type { lo: 133, hi: 137 }],
                Verdict::Accept,
            ),
            r(
                vec![Match::Icmpv6Type { lo: 128, hi: 128 }],
                Verdict::Accept,
            ),
            r(vec![Match::DaddrBroadcast, Match::Counter], Verdict::Drop),
            r(
                vec![Match::Ip4HdrLenAbove(6), Match::Counter],
                Verdict::Drop,
            ),
            r(
                vec![Match::Ip4OptionWordNot(0x9404_0000), Match::Counter],
                Verdict::Drop,
            ),
            r(vec![Match::Ip6RoutingHeader, Match::Counter], Verdict::Drop),
            r(
                vec![
                    Match::Ip4HdrLen(5),
                    Match::AddrPrefix {
                        family: Family::Ipv4,
                        dir: Dir::Src,
                        net: "10.0.0.2/32".parse().unwrap(),
                    },
                    Match::L4Proto(l4::TCP),
                ],
                Verdict::Accept,
            ),
            r(
                vec![
                    Match::Ip6NextHeader(l4::TCP),
                    Match::AddrPrefix {
                        family: Family::Ipv6,
                        dir: Dir::Src,
                        net: "fd00::2/128".parse().unwrap(),
                    },
                ],
                Verdict::Accept,
            ),
            Rule {
                matches: vec![
                    Match::CtState([CtState::New].into()),
                    Match::TcpNotSyn,
                    Match::Counter,
                ],
                verdict: Verdict::Drop,
                comment: Some("new TCP without SYN".into()),
            },
            r(
                vec![],
                Verdict::AddrVmap {
                    family: Family::Ipv4,
                    dir: Dir::Src,
                    map: "egress_v4".into(),
                },
            ),
            r(
                vec![],
                Verdict::AddrVmap {
                    family: Family::Ipv6,
                    dir: Dir::Dst,
                    map: "ingress_v6".into(),
                },
            ),
            Rule {
                matches: vec![
                    Match::AddrInSet {
                        family: Family::Ipv4,
                        dir: Dir::Src,
                        set: "pod4_x".into(),
                    },
                    Match::L4Proto(l4::TCP),
                    Match::DPortInSet {
                        set: "tcp_x".into(),
                    },
                ],
                verdict: Verdict::Accept,
                comment: Some("ns/policy ingress[0]".into()),
            },
            r(
                vec![
                    Match::AddrInSet {
                        family: Family::Ipv6,
                        dir: Dir::Dst,
                        set: "pod6_x".into(),
                    },
                    Match::L4Proto(l4::SCTP),
                    Match::DPort { lo: 80, hi: 90 },
                ],
                Verdict::Accept,
            ),
            r(
                vec![Match::L4Proto(l4::UDP), Match::DPort { lo: 53, hi: 53 }],
                Verdict::Return,
            ),
            r(
                vec![Match::DAddrProtoPortInSet {
                    family: Family::Ipv4,
                    set: "nam4_x".into(),
                }],
                Verdict::Accept,
            ),
            r(
                vec![Match::DAddrProtoPortInSet {
                    family: Family::Ipv6,
                    set: "nam6_x".into(),
                }],
                Verdict::Accept,
            ),
            // A log rule: the matches of the rule it reports, then the
            // rate limit and the nflog statement, and no verdict.
            r(
                vec![
                    Match::AddrInSet {
                        family: Family::Ipv4,
                        dir: Dir::Src,
                        set: "pod4_x".into(),
                    },
                    Match::Limit {
                        per_second: 10,
                        burst: 5,
                    },
                    Match::Log {
                        group: 2,
                        prefix: "ns/policy ingress[0] allow".into(),
                    },
                ],
                Verdict::Continue,
            ),
            r(
                vec![
                    Match::Limit {
                        per_second: 3,
                        burst: 1,
                    },
                    Match::Log {
                        group: 65535,
                        prefix: "ns/pod default-deny".into(),
                    },
                ],
                Verdict::Continue,
            ),
            r(
                vec![Match::CtState([CtState::Established].into())],
                Verdict::Accept,
            ),
            r(
                vec![Match::CtState([CtState::Related].into())],
                Verdict::AddrVmap {
                    family: Family::Ipv6,
                    dir: Dir::Src,
                    map: "related_v6".into(),
                },
            ),
            r(
                vec![Match::CtSaddr {
                    dir: CtDir::Original,
                    addr: "10.0.0.1".parse().unwrap(),
                }],
                Verdict::Return,
            ),
            r(
                vec![Match::CtSaddr {
                    dir: CtDir::Reply,
                    addr: "fd00::1".parse().unwrap(),
                }],
                Verdict::Return,
            ),
            r(vec![], Verdict::Jump("ing_default_a".into())),
            r(vec![], Verdict::Goto("ing_default_a".into())),
            r(vec![], Verdict::Return),
            Rule {
                matches: vec![],
                verdict: Verdict::Drop,
                comment: Some("ns/policy ingress".into()),
            },
        ]
    }

    #[test]
    fn truncated_address_loads_read_back_as_prefixes() {
        // What nft -f loads for `ip6 daddr ff00::/8` and `ip daddr 224.0.0.0/4`.
        let v6 = [nh_load(24, 1), cmp(CMP_EQ, &[0xff])];
        let v4 = [nh_load(16, 1), byte_mask(0xf0), cmp(CMP_EQ, &[0xe0])];
        for (raw, family, net) in [
            (&v6[..], Family::Ipv6, "ff00::/8"),
            (&v4[..], Family::Ipv4, "224.0.0.0/4"),
        ] {
            let mut raw = raw.to_vec();
            raw.push(RawExpr::Verdict {
                code: V_DROP,
                chain: None,
            });
            let rule = raise_rule(&raw, None).expect("raises");
            assert_eq!(
                rule.matches,
                [Match::AddrPrefix {
                    family,
                    dir: Dir::Dst,
                    net: net.parse().unwrap()
                }]
            );
        }
    }

    #[test]
    fn every_shape_round_trips() {
        for rule in every_shape() {
            let raw = lower_rule(&rule);
            assert_eq!(
                raise_rule(&raw, rule.comment.clone()).as_ref(),
                Ok(&rule),
                "{raw:#?}"
            );
        }
    }

    #[test]
    fn matches_nft_debug_output() {
        // `ipX daddr . meta l4proto . th dport @namX_x accept` per
        // nft --debug=netlink: the nfproto check and the address use reg 1;
        // after a 16-byte IPv6 address proto and port go to regs 2 and 13,
        // after a 4-byte IPv4 address (32-bit reg 8) to regs 9 and 10.
        for (family, set, want) in [
            (Family::Ipv6, "nam6_x", vec![1, 1, 2, 13]),
            (Family::Ipv4, "nam4_x", vec![1, 1, 9, 10]),
        ] {
            let raw = lower_rule(&r(
                vec![Match::DAddrProtoPortInSet {
                    family,
                    set: set.into(),
                }],
                Verdict::Accept,
            ));
            let regs: Vec<u32> = raw
                .iter()
                .filter_map(|e| match e {
                    RawExpr::Payload { dreg, .. } | RawExpr::Meta { dreg, .. } => Some(*dreg),
                    _ => None,
                })
                .collect();
            assert_eq!(regs, want, "{family:?}");
        }
        // The kernel may dump the 32-bit naming of a 128-bit register.
        assert_eq!(slot_of_reg(12), slot_of_reg(2));
        // `ct original ip saddr 10.0.0.1` per nft --debug=netlink:
        // [ ct load src_ip => reg 1 , dir original ] [ cmp eq reg 1 0x0100000a ]
        // (no nfproto check), and `ct reply ip6 saddr fd00::1` the same
        // with src_ip6 and dir reply.
        for (dir, addr, key, d) in [
            (CtDir::Original, "10.0.0.1", CT_SRC_IP, CT_DIR_ORIGINAL),
            (CtDir::Reply, "fd00::1", CT_SRC_IP6, CT_DIR_REPLY),
        ] {
            let addr: std::net::IpAddr = addr.parse().unwrap();
            let raw = lower_rule(&r(vec![Match::CtSaddr { dir, addr }], Verdict::Return));
            assert_eq!(
                raw[..2],
                [
                    RawExpr::CtDir {
                        key,
                        dir: d,
                        dreg: REG_1
                    },
                    RawExpr::Cmp {
                        sreg: REG_1,
                        op: CMP_EQ,
                        data: addr_bytes(&addr)
                    }
                ]
            );
        }
        assert_eq!((CT_SRC_IP, CT_SRC_IP6), (19, 21));
    }

    /// `nft --debug=netlink` shapes the two header-match tests below
    /// spell out: a compare in register 1, a load of the network header,
    /// the `meta nfproto` guard, `ip hdrlength` (the nibble-masked first
    /// byte) and an IPv6 extension-header presence test.
    fn cmp(op: u32, data: &[u8]) -> RawExpr {
        RawExpr::Cmp {
            sreg: REG_1,
            op,
            data: data.to_vec(),
        }
    }

    fn nh_load(offset: u32, len: u32) -> RawExpr {
        RawExpr::Payload {
            base: BASE_NETWORK,
            offset,
            len,
            dreg: REG_1,
        }
    }

    fn nfproto_is(p: u8) -> [RawExpr; 2] {
        [
            RawExpr::Meta {
                key: META_NFPROTO,
                dreg: REG_1,
            },
            cmp(CMP_EQ, &[p]),
        ]
    }

    /// Register 1's one byte ANDed with `mask`.
    fn byte_mask(mask: u8) -> RawExpr {
        RawExpr::Bitwise {
            sreg: REG_1,
            dreg: REG_1,
            len: 1,
            mask: vec![mask],
            xor: vec![0],
        }
    }

    fn hdrlength(op: u32, n: u8) -> [RawExpr; 3] {
        [nh_load(0, 1), byte_mask(0x0f), cmp(op, &[n])]
    }

    /// `exthdr <ty> exists` (`present` 1) or `missing` (0).
    fn exthdr_present(ty: u8, present: u8) -> [RawExpr; 2] {
        [
            RawExpr::Exthdr {
                op: 0,
                ty,
                offset: 0,
                len: 1,
                flags: 1,
                dreg: REG_1,
            },
            cmp(CMP_EQ, &[present]),
        ]
    }

    #[test]
    fn source_route_drops_match_nft_debug_output() {
        // nft --debug=netlink of `ip hdrlength > 6 counter drop`,
        // `ip hdrlength 6 @nh,160,32 != 0x94040000 counter drop` and
        // `exthdr rt exists counter drop` in an inet table (nft 1.0.6).
        let tail = [
            RawExpr::Counter,
            RawExpr::Verdict {
                code: V_DROP,
                chain: None,
            },
        ];
        let above: Vec<RawExpr> = [&nfproto_is(2)[..], &hdrlength(CMP_GT, 6), &tail].concat();
        let word: Vec<RawExpr> = [
            &nfproto_is(2)[..],
            &hdrlength(CMP_EQ, 6),
            &[nh_load(20, 4), cmp(CMP_NEQ, &[0x94, 0x04, 0, 0])],
            &tail,
        ]
        .concat();
        let rt: Vec<RawExpr> = [&nfproto_is(10)[..], &exthdr_present(43, 1), &tail].concat();
        for (m, want) in [
            (Match::Ip4HdrLenAbove(6), above),
            (Match::Ip4OptionWordNot(0x9404_0000), word),
            (Match::Ip6RoutingHeader, rt),
        ] {
            let rule = r(vec![m, Match::Counter], Verdict::Drop);
            assert_eq!(lower_rule(&rule), want);
            assert_eq!(raise_rule(&want, None), Ok(rule));
        }
        // Other shapes of the same loads are foreign.
        let foreign = [
            // `exthdr hbh exists`: another header.
            exthdr_present(0, 1).to_vec(),
            // `exthdr rt missing`.
            exthdr_present(43, 0).to_vec(),
            // `ip hdrlength < 6`, and `ip version` (no nibble mask).
            hdrlength(CMP_LTE, 6).to_vec(),
            vec![nh_load(0, 1)],
        ];
        for mut raw in foreign {
            raw.extend(tail.iter().cloned());
            assert!(raise_rule(&raw, None).is_err(), "{raw:?}");
        }
    }

    #[test]
    fn own_tcp_fast_path_matches_nft_debug_output() {
        // nft --debug=netlink (nft 1.0.6) of `ip hdrlength 5 ip saddr
        // 10.0.0.2 meta l4proto tcp accept` and `ip6 nexthdr tcp ip6 saddr
        // fd00::2 accept` in an inet table.
        let accept = RawExpr::Verdict {
            code: V_ACCEPT,
            chain: None,
        };
        let v4: Vec<RawExpr> = [
            &nfproto_is(2)[..],
            &hdrlength(CMP_EQ, 5),
            &[
                nh_load(12, 4),
                cmp(CMP_EQ, &[10, 0, 0, 2]),
                RawExpr::Meta {
                    key: META_L4PROTO,
                    dreg: REG_1,
                },
                cmp(CMP_EQ, &[6]),
                accept.clone(),
            ],
        ]
        .concat();
        let mut fd00_2 = [0u8; 16];
        (fd00_2[0], fd00_2[1], fd00_2[15]) = (0xfd, 0, 2);
        let v6: Vec<RawExpr> = [
            &nfproto_is(10)[..],
            &[
                nh_load(6, 1),
                cmp(CMP_EQ, &[6]),
                nh_load(8, 16),
                cmp(CMP_EQ, &fd00_2),
                accept,
            ],
        ]
        .concat();
        let rules = every_shape();
        let fast: Vec<&Rule> = rules
            .iter()
            .filter(|r| {
                r.matches
                    .iter()
                    .any(|m| matches!(m, Match::Ip4HdrLen(_) | Match::Ip6NextHeader(_)))
            })
            .collect();
        assert_eq!(fast.len(), 2);
        for (rule, want) in fast.into_iter().zip([&v4, &v6]) {
            assert_eq!(&lower_rule(rule), want);
            assert_eq!(raise_rule(want, None).as_ref(), Ok(rule));
        }
        // Under the other family's guard the same loads read other
        // fields (the IPv6 traffic class, the IPv4 fragment flags): a
        // rule nftpol never wrote.
        for (raw, from, to) in [(&v4, 2u8, 10u8), (&v6, 10, 2)] {
            let mut raw = raw.clone();
            raw[1] = cmp(CMP_EQ, &[to]);
            assert_ne!(from, to);
            assert!(raise_rule(&raw, None).is_err(), "{raw:?}");
        }
        // Only `ip hdrlength N` with the nibble mask, and a one-byte
        // next header compare.
        let mut wide = v6.clone();
        wide[3] = cmp(CMP_EQ, &[6, 0]);
        assert!(raise_rule(&wide, None).is_err());
    }

    #[test]
    fn foreign_rules_are_rejected() {
        assert!(raise_rule(&[RawExpr::Other("counter".into())], None).is_err());
        assert!(raise_rule(&[], None).is_err());
        // A limit alone (no log) is no rule nftpol writes, nor is a log
        // to syslog, a byte limit or a limit per minute.
        let limit = RawExpr::Limit {
            rate: 10,
            unit: 1,
            burst: 5,
            kind: LIMIT_PKTS,
            flags: 0,
        };
        assert!(raise_rule(std::slice::from_ref(&limit), None).is_err());
        let log = |group, other| RawExpr::Log {
            prefix: "x".into(),
            group,
            snaplen: 0,
            qthreshold: 0,
            other,
        };
        assert!(raise_rule(&[limit.clone(), log(None, false)], None).is_err());
        assert!(raise_rule(&[limit.clone(), log(Some(2), true)], None).is_err());
        assert!(raise_rule(&[limit.clone(), log(Some(2), false)], None).is_ok());
        for bad in [
            RawExpr::Limit {
                rate: 10,
                unit: 60,
                burst: 5,
                kind: LIMIT_PKTS,
                flags: 0,
            },
            RawExpr::Limit {
                rate: 10,
                unit: 1,
                burst: 5,
                kind: 1,
                flags: 0,
            },
            RawExpr::Limit {
                rate: 10,
                unit: 1,
                burst: 5,
                kind: LIMIT_PKTS,
                flags: 1, // inverted: matches above the rate
            },
        ] {
            assert!(raise_rule(&[bad, log(Some(2), false)], None).is_err());
        }
        let mut raw = lower_rule(&r(vec![], Verdict::Accept));
        raw.push(RawExpr::Verdict {
            code: V_DROP,
            chain: None,
        });
        assert!(raise_rule(&raw, None).is_err());
    }
}

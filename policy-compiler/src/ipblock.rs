//! Address ranges: ipBlock `cidr` minus `except` as disjoint inclusive
//! ranges, the merge that interval sets need (the kernel rejects
//! overlapping intervals), and the prefix test the renderer uses.

use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An inclusive address range within one family.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct AddrRange {
    pub lo: IpAddr,
    pub hi: IpAddr,
}

fn to_u128(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(v) => u32::from(v) as u128,
        IpAddr::V6(v) => u128::from(v),
    }
}

fn from_u128(like: IpAddr, v: u128) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(v as u32)),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(v)),
    }
}

impl AddrRange {
    pub fn single(a: IpAddr) -> Self {
        AddrRange { lo: a, hi: a }
    }
    pub fn of_net(net: &IpNet) -> Self {
        let net = net.trunc();
        AddrRange {
            lo: net.network(),
            hi: net.broadcast(),
        }
    }
    pub fn contains(&self, a: IpAddr) -> bool {
        a.is_ipv4() == self.lo.is_ipv4()
            && to_u128(self.lo) <= to_u128(a)
            && to_u128(a) <= to_u128(self.hi)
    }
}

/// `cidr` minus every `except` (excepts of the other family are ignored;
/// validation rejects excepts outside the cidr before this runs).
pub fn cidr_minus(cidr: &IpNet, excepts: &[IpNet]) -> Vec<AddrRange> {
    let base = AddrRange::of_net(cidr);
    let mut cuts: Vec<(u128, u128)> = excepts
        .iter()
        .filter(|e| e.addr().is_ipv4() == base.lo.is_ipv4())
        .map(|e| {
            let r = AddrRange::of_net(e);
            (to_u128(r.lo), to_u128(r.hi))
        })
        .collect();
    cuts.sort();
    let (lo, hi) = (to_u128(base.lo), to_u128(base.hi));
    let mut out = Vec::new();
    let mut cur = lo;
    let mut done = false;
    for (clo, chi) in cuts {
        if chi < cur || clo > hi {
            continue;
        }
        if clo > cur {
            out.push((cur, clo - 1));
        }
        if chi >= hi {
            done = true;
            break;
        }
        cur = cur.max(chi + 1);
    }
    if !done && cur <= hi {
        out.push((cur, hi));
    }
    out.into_iter()
        .map(|(l, h)| AddrRange {
            lo: from_u128(base.lo, l),
            hi: from_u128(base.lo, h),
        })
        .collect()
}

/// Sorts and merges overlapping or adjacent ranges of one family.
pub fn merge(mut ranges: Vec<AddrRange>) -> Vec<AddrRange> {
    ranges.sort_by_key(|r| (to_u128(r.lo), to_u128(r.hi)));
    let mut out: Vec<AddrRange> = Vec::with_capacity(ranges.len());
    for r in ranges {
        if let Some(last) = out.last_mut() {
            let last_hi = to_u128(last.hi);
            if to_u128(r.lo) <= last_hi.saturating_add(1) {
                if to_u128(r.hi) > last_hi {
                    last.hi = r.hi;
                }
                continue;
            }
        }
        out.push(r);
    }
    out
}

/// The prefix length when `lo..=hi` is exactly one CIDR prefix.
pub fn range_as_prefix(lo: IpAddr, hi: IpAddr) -> Option<u8> {
    if lo.is_ipv4() != hi.is_ipv4() {
        return None;
    }
    let bits: u32 = if lo.is_ipv4() { 32 } else { 128 };
    let (l, h) = (to_u128(lo), to_u128(hi));
    if h < l {
        return None;
    }
    let span = h - l;
    // span + 1 must be a power of two and lo aligned to it.
    let size = span.checked_add(1);
    let host_bits = match size {
        None => 128,
        Some(s) if s.is_power_of_two() => s.trailing_zeros(),
        Some(_) => return None,
    };
    if host_bits > bits {
        return None;
    }
    let mask = if host_bits == 128 {
        u128::MAX
    } else {
        (1u128 << host_bits) - 1
    };
    if l & mask != 0 {
        return None;
    }
    Some((bits - host_bits) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn except_splits_cidr() {
        let r = cidr_minus(&net("10.0.0.0/24"), &[net("10.0.0.128/25")]);
        assert_eq!(
            r,
            vec![AddrRange {
                lo: ip("10.0.0.0"),
                hi: ip("10.0.0.127")
            }]
        );
        let r = cidr_minus(
            &net("10.0.0.0/24"),
            &[net("10.0.0.16/28"), net("10.0.0.20/32")],
        );
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].hi, ip("10.0.0.15"));
        assert_eq!(r[1].lo, ip("10.0.0.32"));
        assert_eq!(r[1].hi, ip("10.0.0.255"));
    }

    #[test]
    fn except_whole_cidr_leaves_nothing() {
        assert!(cidr_minus(&net("10.0.0.0/24"), &[net("10.0.0.0/16")]).is_empty());
        assert!(cidr_minus(&net("0.0.0.0/0"), &[net("0.0.0.0/0")]).is_empty());
    }

    #[test]
    fn full_v6_space() {
        let r = cidr_minus(&net("::/0"), &[net("fd00::/8")]);
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].hi, ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"));
        assert_eq!(range_as_prefix(ip("::"), r[1].hi), Some(0));
    }

    #[test]
    fn merge_overlapping_and_adjacent() {
        let m = merge(vec![
            AddrRange::single(ip("10.0.0.5")),
            AddrRange::of_net(&net("10.0.0.0/30")),
            AddrRange::single(ip("10.0.0.4")),
            AddrRange::single(ip("10.0.0.9")),
        ]);
        assert_eq!(
            m,
            vec![
                AddrRange {
                    lo: ip("10.0.0.0"),
                    hi: ip("10.0.0.5")
                },
                AddrRange::single(ip("10.0.0.9"))
            ]
        );
    }

    #[test]
    fn prefixes() {
        assert_eq!(range_as_prefix(ip("10.0.0.0"), ip("10.0.0.255")), Some(24));
        assert_eq!(range_as_prefix(ip("10.0.0.1"), ip("10.0.0.1")), Some(32));
        assert_eq!(range_as_prefix(ip("10.0.0.1"), ip("10.0.0.2")), None);
        assert_eq!(
            range_as_prefix(ip("0.0.0.0"), ip("255.255.255.255")),
            Some(0)
        );
        assert_eq!(range_as_prefix(ip("10.0.0.0"), ip("10.0.0.2")), None);
    }
}

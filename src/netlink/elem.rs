//! Set and element encoding: IR set kinds <-> the kernel's set attributes
//! (flags, key type and length, data type), and IR elements <-> the raw
//! keys the kernel stores. Pure byte layout, no FFI, so every quirk is
//! unit-tested here:
//!
//! - addresses and ports are big-endian (network order) in keys;
//! - interval sets store a range as a start key plus an end key flagged
//!   `NFT_SET_ELEM_INTERVAL_END` whose value is one past the range (a
//!   range that reaches the top of the key space has no end key);
//! - concatenated keys pad every part to 4 bytes;
//! - verdict maps carry `jump <chain>` as element data.

use policy_compiler::ir::{Element, Family, SetKind};
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// nft's datatype ids, as the nft tool stores them in NFTA_SET_KEY_TYPE
/// (so `nft list` prints our sets exactly as its own).
pub const TYPE_IPV4_ADDR: u32 = 7;
pub const TYPE_IPV6_ADDR: u32 = 8;
pub const TYPE_INET_PROTO: u32 = 12;
pub const TYPE_INET_SERVICE: u32 = 13;
/// nft combines concatenated datatypes 6 bits per part.
const CONCAT_BITS: u32 = 6;

pub const SET_F_INTERVAL: u32 = libc::NFT_SET_INTERVAL as u32;
pub const SET_F_MAP: u32 = libc::NFT_SET_MAP as u32;
pub const ELEM_F_INTERVAL_END: u32 = libc::NFT_SET_ELEM_INTERVAL_END as u32;

/// The attributes that define a set's type in the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetAttrs {
    pub flags: u32,
    pub key_type: u32,
    pub key_len: u32,
    /// `Some(NFT_DATA_VERDICT)` for verdict maps.
    pub data_type: Option<u32>,
}

fn addr_type(f: Family) -> u32 {
    match f {
        Family::Ipv4 => TYPE_IPV4_ADDR,
        Family::Ipv6 => TYPE_IPV6_ADDR,
    }
}

fn addr_len(f: Family) -> u32 {
    match f {
        Family::Ipv4 => 4,
        Family::Ipv6 => 16,
    }
}

fn concat_type(f: Family) -> u32 {
    (((addr_type(f) << CONCAT_BITS) | TYPE_INET_PROTO) << CONCAT_BITS) | TYPE_INET_SERVICE
}

/// The kernel attributes of an IR set kind.
pub fn set_attrs(kind: SetKind) -> SetAttrs {
    match kind {
        SetKind::Addr { family, interval } => SetAttrs {
            flags: if interval { SET_F_INTERVAL } else { 0 },
            key_type: addr_type(family),
            key_len: addr_len(family),
            data_type: None,
        },
        SetKind::Ports => SetAttrs {
            flags: SET_F_INTERVAL,
            key_type: TYPE_INET_SERVICE,
            key_len: 2,
            data_type: None,
        },
        SetKind::AddrProtoPort { family } => SetAttrs {
            flags: 0,
            key_type: concat_type(family),
            key_len: addr_len(family) + 8,
            data_type: None,
        },
        SetKind::Vmap { family } => SetAttrs {
            flags: SET_F_MAP,
            key_type: addr_type(family),
            key_len: addr_len(family),
            data_type: Some(libc::NFT_DATA_VERDICT),
        },
    }
}

/// The IR kind of a set read back from the kernel, or why it is not one
/// nftpol creates.
pub fn set_kind(a: SetAttrs) -> Result<SetKind, String> {
    let fam = |t: u32| match t {
        TYPE_IPV4_ADDR => Some(Family::Ipv4),
        TYPE_IPV6_ADDR => Some(Family::Ipv6),
        _ => None,
    };
    // Flags nft or the kernel may add that do not change the type.
    let flags = a.flags & (SET_F_INTERVAL | SET_F_MAP | 0x80/* NFT_SET_CONCAT */);
    let kind = if flags & SET_F_MAP != 0 {
        match (fam(a.key_type), a.data_type) {
            (Some(family), Some(libc::NFT_DATA_VERDICT)) => SetKind::Vmap { family },
            _ => return Err(format!("unsupported map type {a:?}")),
        }
    } else if a.key_type == TYPE_INET_SERVICE {
        SetKind::Ports
    } else if let Some(family) = fam(a.key_type) {
        SetKind::Addr {
            family,
            interval: flags & SET_F_INTERVAL != 0,
        }
    } else if a.key_type == concat_type(Family::Ipv4) {
        SetKind::AddrProtoPort {
            family: Family::Ipv4,
        }
    } else if a.key_type == concat_type(Family::Ipv6) {
        SetKind::AddrProtoPort {
            family: Family::Ipv6,
        }
    } else {
        return Err(format!("unsupported set key type {}", a.key_type));
    };
    let want = set_attrs(kind);
    if want.key_len != a.key_len || (want.flags & SET_F_INTERVAL) != (flags & SET_F_INTERVAL) {
        return Err(format!("set attributes {a:?} do not match {kind:?}"));
    }
    Ok(kind)
}

/// One element as the kernel holds it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RawElem {
    pub key: Vec<u8>,
    /// `NFT_SET_ELEM_INTERVAL_END`.
    pub end: bool,
    /// Verdict-map data: `jump <chain>`.
    pub jump: Option<String>,
}

fn addr_bytes(a: &IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    }
}

/// Big-endian `bytes + 1`; `None` when it overflows (all ones).
fn increment(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut out = bytes.to_vec();
    for b in out.iter_mut().rev() {
        if *b == 0xff {
            *b = 0;
        } else {
            *b += 1;
            return Some(out);
        }
    }
    None
}

/// Big-endian `bytes - 1` (the caller never passes zero: an end key is
/// always one past a start key).
fn decrement(bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for b in out.iter_mut().rev() {
        if *b == 0 {
            *b = 0xff;
        } else {
            *b -= 1;
            break;
        }
    }
    out
}

fn interval(lo: Vec<u8>, hi: &[u8]) -> Vec<RawElem> {
    let mut out = vec![RawElem {
        key: lo,
        end: false,
        jump: None,
    }];
    if let Some(end) = increment(hi) {
        out.push(RawElem {
            key: end,
            end: true,
            jump: None,
        });
    }
    out
}

/// The kernel elements of one IR element (two for an interval).
pub fn encode_element(kind: SetKind, e: &Element) -> Result<Vec<RawElem>, String> {
    if !policy_compiler::diff::element_fits(kind, e) {
        return Err(format!("element {e:?} does not fit a {kind:?} set"));
    }
    Ok(match e {
        Element::Addr(a) => vec![RawElem {
            key: addr_bytes(a),
            end: false,
            jump: None,
        }],
        Element::AddrRange(lo, hi) => interval(addr_bytes(lo), &addr_bytes(hi)),
        Element::PortRange(lo, hi) => interval(lo.to_be_bytes().to_vec(), &hi.to_be_bytes()),
        Element::AddrProtoPort(a, proto, port) => {
            let mut key = addr_bytes(a);
            key.extend_from_slice(&[*proto, 0, 0, 0]);
            key.extend_from_slice(&port.to_be_bytes());
            key.extend_from_slice(&[0, 0]);
            vec![RawElem {
                key,
                end: false,
                jump: None,
            }]
        }
        Element::VmapJump(a, chain) => vec![RawElem {
            key: addr_bytes(a),
            end: false,
            jump: Some(chain.clone()),
        }],
    })
}

fn addr_from(family: Family, b: &[u8]) -> Result<IpAddr, String> {
    match family {
        Family::Ipv4 => <[u8; 4]>::try_from(b)
            .map(|o| IpAddr::V4(Ipv4Addr::from(o)))
            .map_err(|_| format!("address key of {} bytes, want 4", b.len())),
        Family::Ipv6 => <[u8; 16]>::try_from(b)
            .map(|o| IpAddr::V6(Ipv6Addr::from(o)))
            .map_err(|_| format!("address key of {} bytes, want 16", b.len())),
    }
}

fn port_from(b: &[u8]) -> Result<u16, String> {
    <[u8; 2]>::try_from(b)
        .map(u16::from_be_bytes)
        .map_err(|_| format!("port key of {} bytes, want 2", b.len()))
}

/// Folds interval start/end keys back into inclusive ranges. Unmatched
/// end keys (nft adds one at zero in front of the first range) are
/// dropped; a start without an end runs to the top of the key space.
/// An inclusive range of big-endian keys.
type KeyRange = (Vec<u8>, Vec<u8>);

fn ranges(raw: &[RawElem], width: usize) -> Result<Vec<KeyRange>, String> {
    let mut keys: Vec<(&[u8], bool)> = Vec::with_capacity(raw.len());
    for r in raw {
        if r.key.len() != width {
            return Err(format!(
                "interval key of {} bytes, want {width}",
                r.key.len()
            ));
        }
        keys.push((&r.key, r.end));
    }
    // At equal keys an end sorts first: it closes the range before.
    keys.sort_by(|a, b| a.0.cmp(b.0).then(b.1.cmp(&a.1)));
    let mut out = Vec::new();
    let mut open: Option<&[u8]> = None;
    for (key, end) in keys {
        match (end, open) {
            (true, Some(lo)) => {
                out.push((lo.to_vec(), decrement(key)));
                open = None;
            }
            (true, None) => {}
            (false, Some(lo)) => {
                return Err(format!(
                    "interval start {key:02x?} inside range from {lo:02x?}"
                ))
            }
            (false, None) => open = Some(key),
        }
    }
    if let Some(lo) = open {
        out.push((lo.to_vec(), vec![0xff; width]));
    }
    Ok(out)
}

/// The IR elements of a set read back from the kernel.
pub fn decode_elements(kind: SetKind, raw: &[RawElem]) -> Result<BTreeSet<Element>, String> {
    let mut out = BTreeSet::new();
    match kind {
        SetKind::Addr {
            family,
            interval: true,
        } => {
            let width = addr_len(family) as usize;
            for (lo, hi) in ranges(raw, width)? {
                out.insert(Element::AddrRange(
                    addr_from(family, &lo)?,
                    addr_from(family, &hi)?,
                ));
            }
        }
        SetKind::Ports => {
            for (lo, hi) in ranges(raw, 2)? {
                out.insert(Element::PortRange(port_from(&lo)?, port_from(&hi)?));
            }
        }
        SetKind::Addr {
            family,
            interval: false,
        } => {
            for r in raw {
                out.insert(Element::Addr(addr_from(family, &r.key)?));
            }
        }
        SetKind::AddrProtoPort { family } => {
            let alen = addr_len(family) as usize;
            for r in raw {
                if r.key.len() != alen + 8 {
                    return Err(format!("concat key of {} bytes", r.key.len()));
                }
                out.insert(Element::AddrProtoPort(
                    addr_from(family, &r.key[..alen])?,
                    r.key[alen],
                    port_from(&r.key[alen + 4..alen + 6])?,
                ));
            }
        }
        SetKind::Vmap { family } => {
            for r in raw {
                let chain = r
                    .jump
                    .clone()
                    .ok_or_else(|| format!("map element {:02x?} without jump", r.key))?;
                out.insert(Element::VmapJump(addr_from(family, &r.key)?, chain));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    use policy_compiler::fixture::SET_KINDS as ALL_KINDS;

    #[test]
    fn set_attrs_round_trip_and_match_nft() {
        for k in ALL_KINDS {
            assert_eq!(set_kind(set_attrs(k)), Ok(k));
        }
        // As nft 1.0.6 creates `type ipv4_addr . inet_proto . inet_service`.
        let a = set_attrs(SetKind::AddrProtoPort {
            family: Family::Ipv4,
        });
        assert_eq!((a.key_type, a.key_len), ((7 << 12) | (12 << 6) | 13, 12));
        assert_eq!(set_attrs(SetKind::Ports).flags, 4);
        assert!(set_kind(SetAttrs {
            flags: 0,
            key_type: 42,
            key_len: 4,
            data_type: None
        })
        .is_err());
    }

    #[test]
    fn keys_have_nft_layout() {
        let e = Element::AddrProtoPort("10.1.1.1".parse().unwrap(), 6, 8080);
        let raw = encode_element(
            SetKind::AddrProtoPort {
                family: Family::Ipv4,
            },
            &e,
        )
        .unwrap();
        // nft --debug=netlink: element 0101010a 00000006 0000901f
        assert_eq!(raw[0].key, vec![10, 1, 1, 1, 6, 0, 0, 0, 0x1f, 0x90, 0, 0]);
        let raw = encode_element(SetKind::Ports, &Element::PortRange(80, 80)).unwrap();
        assert_eq!(
            raw,
            vec![
                RawElem {
                    key: vec![0, 80],
                    end: false,
                    jump: None
                },
                RawElem {
                    key: vec![0, 81],
                    end: true,
                    jump: None
                }
            ]
        );
        // A range that reaches the top has no end key.
        let raw = encode_element(SetKind::Ports, &Element::PortRange(1000, 65535)).unwrap();
        assert_eq!(raw.len(), 1);
        let raw = encode_element(
            SetKind::Addr {
                family: Family::Ipv4,
                interval: true,
            },
            &Element::AddrRange(
                "10.0.0.0".parse().unwrap(),
                "10.255.255.255".parse().unwrap(),
            ),
        )
        .unwrap();
        assert_eq!(raw[1].key, vec![11, 0, 0, 0]);
        assert!(
            encode_element(SetKind::Ports, &Element::Addr("1.2.3.4".parse().unwrap())).is_err()
        );
    }

    #[test]
    fn decode_drops_nfts_leading_end_key() {
        // What the kernel holds after `nft -f` of `{ 10.0.0.0/8 }`.
        let raw = vec![
            RawElem {
                key: vec![0, 0, 0, 0],
                end: true,
                jump: None,
            },
            RawElem {
                key: vec![10, 0, 0, 0],
                end: false,
                jump: None,
            },
            RawElem {
                key: vec![11, 0, 0, 0],
                end: true,
                jump: None,
            },
        ];
        let kind = SetKind::Addr {
            family: Family::Ipv4,
            interval: true,
        };
        let got = decode_elements(kind, &raw).unwrap();
        assert_eq!(
            got,
            [Element::AddrRange(
                "10.0.0.0".parse().unwrap(),
                "10.255.255.255".parse().unwrap()
            )]
            .into()
        );
    }

    fn arb_ranges() -> impl Strategy<Value = Vec<(u16, u16)>> {
        // Disjoint, non-touching ranges, as the compiler emits them.
        proptest::collection::btree_set(any::<u16>(), 0..12).prop_map(|s| {
            let v: Vec<u16> = s.into_iter().collect();
            v.chunks(2)
                .filter_map(|c| match c {
                    [a, b] => Some((*a, *b)),
                    _ => None,
                })
                .filter(|(a, b)| a <= b)
                .collect::<Vec<_>>()
        })
    }

    proptest! {
        #[test]
        fn port_intervals_round_trip(rs in arb_ranges()) {
            // Drop touching neighbours (b + 1 == next a).
            let mut set = BTreeSet::new();
            let mut last: Option<u16> = None;
            for (a, b) in rs {
                if last.is_some_and(|l| u32::from(l) + 1 >= u32::from(a)) { continue; }
                set.insert(Element::PortRange(a, b));
                last = Some(b);
            }
            let mut raw = Vec::new();
            for e in &set {
                raw.extend(encode_element(SetKind::Ports, e).unwrap());
            }
            raw.reverse(); // the kernel dumps in its own order
            prop_assert_eq!(decode_elements(SetKind::Ports, &raw).unwrap(), set);
        }

        #[test]
        fn v6_and_concat_round_trip(a in any::<u128>(), b in any::<u128>(), p in any::<u8>(), port in any::<u16>()) {
            let (lo, hi) = (a.min(b), a.max(b));
            let e = Element::AddrRange(IpAddr::V6(lo.into()), IpAddr::V6(hi.into()));
            let k = SetKind::Addr { family: Family::Ipv6, interval: true };
            let raw = encode_element(k, &e).unwrap();
            prop_assert_eq!(decode_elements(k, &raw).unwrap(), [e].into());
            let e = Element::AddrProtoPort(IpAddr::V6(a.into()), p, port);
            let k = SetKind::AddrProtoPort { family: Family::Ipv6 };
            let raw = encode_element(k, &e).unwrap();
            prop_assert_eq!(raw[0].key.len(), 24);
            prop_assert_eq!(decode_elements(k, &raw).unwrap(), [e].into());
        }
    }
}

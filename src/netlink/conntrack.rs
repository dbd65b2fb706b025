//! Conntrack over netlink (ctnetlink, the conntrack subsystem of the
//! netfilter netlink bus): dumping the connection table of the caller's
//! network namespace and deleting entries. Messages are built and parsed
//! here in safe Rust and travel on the same [`Socket`] as the nftables
//! messages.
//!
//! An entry is deleted by its original tuple exactly as the dump gave it
//! (the nested attribute is sent back byte for byte, so ICMP ids and zones
//! survive), together with its zone and its conntrack id: the kernel
//! refuses (ENOENT) when the id no longer matches, so a connection that
//! ended and was replaced by a new one with the same tuple between the
//! dump and the deletion is left alone.

use super::socket::Socket;
use super::wire;
use super::NetlinkError;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

/// Message types of the conntrack subsystem (linux/netfilter/nfnetlink_conntrack.h).
const SUBSYS: u16 = (libc::NFNL_SUBSYS_CTNETLINK as u16) << 8;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
/// Top-level attributes.
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_ID: u16 = 12;
const CTA_ZONE: u16 = 18;
/// Inside a tuple.
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const CTA_PROTO_ICMP_ID: u16 = 4;
const CTA_PROTO_ICMP_TYPE: u16 = 5;
const CTA_PROTO_ICMPV6_ID: u16 = 7;
const CTA_PROTO_ICMPV6_TYPE: u16 = 8;

/// Deletions sent per `send`: their acks must fit the receive buffer.
const DELETE_CHUNK: usize = 256;
/// How long one `recv` may wait for the kernel before the whole operation
/// is given up (the kernel answers a dump or a deletion in microseconds).
const RECV_TIMEOUT: Duration = Duration::from_secs(5);

/// One direction of a connection as conntrack keys it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    /// Source port (TCP, UDP, SCTP, ...) or ICMP/ICMPv6 id; 0 otherwise.
    pub sport: u16,
    /// Destination port, or the ICMP/ICMPv6 type; 0 otherwise.
    pub dport: u16,
}

impl std::fmt::Display for Tuple {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sock = |a: &IpAddr, p: u16| match a {
            IpAddr::V4(a) => format!("{a}:{p}"),
            IpAddr::V6(a) => format!("[{a}]:{p}"),
        };
        write!(
            f,
            "{} -> {} proto {}",
            sock(&self.src, self.sport),
            sock(&self.dst, self.dport),
            self.proto
        )
    }
}

/// One conntrack entry, as much of it as revocation needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// `AF_INET` or `AF_INET6`.
    pub family: u8,
    /// The direction of the packet that created the entry, as it arrived
    /// (before any NAT).
    pub orig: Tuple,
    /// The reply direction: after destination NAT its source is where the
    /// connection really goes.
    pub reply: Tuple,
    pub zone: Option<u16>,
    pub id: Option<u32>,
    /// The value of the original-tuple attribute, to delete by.
    orig_attr: Vec<u8>,
}

/// Why an entry of a dump could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("conntrack entry: {0}")]
pub struct ParseError(String);

fn bad(s: impl Into<String>) -> ParseError {
    ParseError(s.into())
}

fn be16(v: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(v.get(..2)?.try_into().ok()?))
}

fn addr(family: u8, v: &[u8]) -> Result<IpAddr, ParseError> {
    match (i32::from(family), v.len()) {
        (libc::AF_INET, 4) => Ok(IpAddr::V4(Ipv4Addr::new(v[0], v[1], v[2], v[3]))),
        (libc::AF_INET6, 16) => {
            let mut b = [0u8; 16];
            b.copy_from_slice(v);
            Ok(IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => Err(bad(format!(
            "address of {} bytes in family {family}",
            v.len()
        ))),
    }
}

/// Decodes a `CTA_TUPLE_*` value.
pub fn parse_tuple(family: u8, v: &[u8]) -> Result<Tuple, ParseError> {
    let (mut src, mut dst, mut proto) = (None, None, None);
    let (mut sport, mut dport) = (0, 0);
    for (ty, val) in wire::attrs(v) {
        match ty {
            CTA_TUPLE_IP => {
                for (ty, val) in wire::attrs(val) {
                    match ty {
                        CTA_IP_V4_SRC | CTA_IP_V6_SRC => src = Some(addr(family, val)?),
                        CTA_IP_V4_DST | CTA_IP_V6_DST => dst = Some(addr(family, val)?),
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for (ty, val) in wire::attrs(val) {
                    match ty {
                        CTA_PROTO_NUM => proto = val.first().copied(),
                        CTA_PROTO_SRC_PORT | CTA_PROTO_ICMP_ID | CTA_PROTO_ICMPV6_ID => {
                            sport = be16(val).ok_or_else(|| bad("short port or ICMP id"))?;
                        }
                        CTA_PROTO_DST_PORT => {
                            dport = be16(val).ok_or_else(|| bad("short port"))?;
                        }
                        CTA_PROTO_ICMP_TYPE | CTA_PROTO_ICMPV6_TYPE => {
                            dport = u16::from(*val.first().ok_or_else(|| bad("empty ICMP type"))?);
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Ok(Tuple {
        src: src.ok_or_else(|| bad("tuple without a source address"))?,
        dst: dst.ok_or_else(|| bad("tuple without a destination address"))?,
        proto: proto.ok_or_else(|| bad("tuple without a protocol"))?,
        sport,
        dport,
    })
}

/// Encodes a tuple as the value of a `CTA_TUPLE_*` attribute.
pub fn encode_tuple(family: u8, t: &Tuple) -> Vec<u8> {
    let mut b = Vec::new();
    let ip = wire::nest_start(&mut b, CTA_TUPLE_IP);
    let (s, d, so, dso) = match (t.src, t.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => (
            s.octets().to_vec(),
            d.octets().to_vec(),
            CTA_IP_V4_SRC,
            CTA_IP_V4_DST,
        ),
        (IpAddr::V6(s), IpAddr::V6(d)) => (
            s.octets().to_vec(),
            d.octets().to_vec(),
            CTA_IP_V6_SRC,
            CTA_IP_V6_DST,
        ),
        (s, d) => {
            // Mixed families never come out of the kernel; encode the
            // source's family so the kernel refuses it rather than us
            // guessing.
            let o = |a: IpAddr| match a {
                IpAddr::V4(a) => a.octets().to_vec(),
                IpAddr::V6(a) => a.octets().to_vec(),
            };
            (o(s), o(d), CTA_IP_V4_SRC, CTA_IP_V4_DST)
        }
    };
    wire::put_attr(&mut b, so, &s);
    wire::put_attr(&mut b, dso, &d);
    let _ = wire::nest_end(&mut b, ip);
    let p = wire::nest_start(&mut b, CTA_TUPLE_PROTO);
    wire::put_attr(&mut b, CTA_PROTO_NUM, &[t.proto]);
    if t.proto == 1 || t.proto == 58 {
        let (id, ty) = if family == libc::AF_INET as u8 {
            (CTA_PROTO_ICMP_ID, CTA_PROTO_ICMP_TYPE)
        } else {
            (CTA_PROTO_ICMPV6_ID, CTA_PROTO_ICMPV6_TYPE)
        };
        wire::put_attr(&mut b, id, &t.sport.to_be_bytes());
        wire::put_attr(&mut b, ty, &[t.dport as u8]);
    } else {
        wire::put_attr(&mut b, CTA_PROTO_SRC_PORT, &t.sport.to_be_bytes());
        wire::put_attr(&mut b, CTA_PROTO_DST_PORT, &t.dport.to_be_bytes());
    }
    let _ = wire::nest_end(&mut b, p);
    b
}

impl Entry {
    /// An entry from its two tuples (tests, and requests built by hand).
    pub fn new(orig: Tuple, reply: Tuple) -> Entry {
        let family = if orig.src.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        } as u8;
        Entry {
            family,
            orig_attr: encode_tuple(family, &orig),
            orig,
            reply,
            zone: None,
            id: None,
        }
    }
}

/// Decodes one message of a dump: `ty` its netlink type, `family` its
/// `nfgenmsg` family, `body` the attributes after the `nfgenmsg`.
pub fn parse_entry(ty: u16, family: u8, body: &[u8]) -> Result<Entry, ParseError> {
    if ty != SUBSYS | IPCTNL_MSG_CT_NEW {
        return Err(bad(format!(
            "message type {ty:#x} is not a conntrack entry"
        )));
    }
    if !matches!(i32::from(family), libc::AF_INET | libc::AF_INET6) {
        return Err(bad(format!("address family {family}")));
    }
    let (mut orig, mut reply, mut zone, mut id) = (None, None, None, None);
    for (ty, val) in wire::attrs(body) {
        match ty {
            CTA_TUPLE_ORIG => orig = Some((parse_tuple(family, val)?, val.to_vec())),
            CTA_TUPLE_REPLY => reply = Some(parse_tuple(family, val)?),
            CTA_ZONE => zone = be16(val),
            CTA_ID => id = wire::be32_of(val),
            _ => {}
        }
    }
    let (orig, orig_attr) = orig.ok_or_else(|| bad("no original tuple"))?;
    Ok(Entry {
        family,
        orig,
        reply: reply.ok_or_else(|| bad(format!("{orig}: no reply tuple")))?,
        zone,
        id,
        orig_attr,
    })
}

/// The dump request for every entry of both families.
pub fn dump_request(seq: u32) -> Vec<u8> {
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    wire::nfnl_message(
        SUBSYS | IPCTNL_MSG_CT_GET,
        flags,
        seq,
        libc::AF_UNSPEC as u8,
        &[],
    )
}

/// The request deleting `e` (and only it: its id must still match).
pub fn delete_request(e: &Entry, seq: u32) -> Vec<u8> {
    let mut attrs = Vec::with_capacity(e.orig_attr.len() + 24);
    let at = wire::nest_start(&mut attrs, CTA_TUPLE_ORIG);
    attrs.extend_from_slice(&e.orig_attr);
    // The value came out of a 16-bit attribute length, so it fits again.
    let _ = wire::nest_end(&mut attrs, at);
    if let Some(z) = e.zone {
        wire::put_attr(&mut attrs, CTA_ZONE, &z.to_be_bytes());
    }
    if let Some(id) = e.id {
        wire::put_attr(&mut attrs, CTA_ID, &id.to_be_bytes());
    }
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
    wire::nfnl_message(SUBSYS | IPCTNL_MSG_CT_DELETE, flags, seq, e.family, &attrs)
}

/// A connection to the conntrack table of the caller's network namespace.
pub struct Conntrack {
    sock: Socket,
    seq: u32,
}

/// What a deletion pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Deleted {
    pub deleted: usize,
    /// Gone before we got to it (the connection ended, or was replaced).
    pub gone: usize,
    /// Refused for another reason.
    pub failed: usize,
    /// The errno of the first refusal, for the log.
    pub first_errno: Option<i32>,
}

impl Conntrack {
    pub fn open() -> Result<Conntrack, NetlinkError> {
        let sock = Socket::open()?;
        sock.set_recv_timeout(RECV_TIMEOUT)?;
        Ok(Conntrack { sock, seq: 0 })
    }

    fn next_seq(&mut self, n: usize) -> u32 {
        let first = self.seq.wrapping_add(1);
        self.seq = self.seq.wrapping_add(n as u32);
        first
    }

    /// Hands every entry of both families to `each`. Returns how many
    /// messages could not be decoded (skipped: they are never deleted).
    pub fn dump(&mut self, mut each: impl FnMut(Entry)) -> Result<usize, NetlinkError> {
        let seq = self.next_seq(1);
        let mut undecoded = 0;
        let answer = self.sock.request_each(&dump_request(seq), seq, |m| {
            let family = m.family().unwrap_or(0);
            match parse_entry(m.ty, family, m.body()) {
                Ok(e) => each(e),
                Err(e) => {
                    undecoded += 1;
                    tracing::debug!(error = %e, "skipping an undecodable conntrack message");
                }
            }
        })?;
        match answer {
            Ok(()) => Ok(undecoded),
            Err((libc::EPERM, _)) => Err(NetlinkError::PermissionDenied {
                during: "dumping the conntrack table".into(),
            }),
            Err((errno, _)) => Err(NetlinkError::Dump {
                what: "the conntrack table".into(),
                errno,
            }),
        }
    }

    /// Deletes these entries, a chunk of requests per `send`.
    pub fn delete(&mut self, entries: &[Entry]) -> Result<Deleted, NetlinkError> {
        let mut out = Deleted::default();
        for chunk in entries.chunks(DELETE_CHUNK) {
            let first = self.next_seq(chunk.len());
            let reqs: Vec<Vec<u8>> = chunk
                .iter()
                .enumerate()
                .map(|(i, e)| delete_request(e, first.wrapping_add(i as u32)))
                .collect();
            for errno in self.sock.send_acked(&reqs, first)? {
                match errno {
                    0 => out.deleted += 1,
                    libc::ENOENT => out.gone += 1,
                    libc::EPERM => {
                        return Err(NetlinkError::PermissionDenied {
                            during: "deleting conntrack entries".into(),
                        })
                    }
                    e => {
                        out.failed += 1;
                        out.first_errno.get_or_insert(e);
                    }
                }
            }
        }
        Ok(out)
    }
}

/// A tuple from addresses as text, for tests.
#[cfg(test)]
pub(crate) fn tuple(src: &str, dst: &str, proto: u8, sport: u16, dport: u16) -> Tuple {
    Tuple {
        src: src.parse().expect("test address"),
        dst: dst.parse().expect("test address"),
        proto,
        sport,
        dport,
    }
}

#[cfg(test)]
mod tests {
    use super::tuple as t;
    use super::*;
    use proptest::prelude::*;

    /// A dump message body as the kernel writes one.
    fn entry_body(family: u8, orig: &Tuple, reply: &Tuple) -> Vec<u8> {
        let mut b = Vec::new();
        let o = wire::nest_start(&mut b, CTA_TUPLE_ORIG);
        b.extend(encode_tuple(family, orig));
        wire::nest_end(&mut b, o).unwrap();
        let r = wire::nest_start(&mut b, CTA_TUPLE_REPLY);
        b.extend(encode_tuple(family, reply));
        wire::nest_end(&mut b, r).unwrap();
        wire::put_attr(&mut b, 3, &0x0eu32.to_be_bytes()); // CTA_STATUS
        wire::put_attr(&mut b, CTA_ID, &77u32.to_be_bytes());
        b
    }

    #[test]
    fn entries_of_both_families_and_icmp_parse() {
        let v4 = libc::AF_INET as u8;
        let v6 = libc::AF_INET6 as u8;
        let o = t("10.0.0.1", "10.96.0.10", 6, 40000, 80);
        let r = t("10.0.1.5", "10.0.0.1", 6, 8080, 40000);
        let e = parse_entry(SUBSYS, v4, &entry_body(v4, &o, &r)).unwrap();
        assert_eq!((e.orig, e.reply, e.id, e.zone), (o, r, Some(77), None));
        let o = t("fd00::1", "fd00::2", 58, 9, 128);
        let r = t("fd00::2", "fd00::1", 58, 9, 129);
        let e = parse_entry(SUBSYS, v6, &entry_body(v6, &o, &r)).unwrap();
        assert_eq!((e.orig, e.reply), (o, r));
        let o = t("10.0.0.1", "10.0.0.2", 1, 3, 8);
        let r = t("10.0.0.2", "10.0.0.1", 1, 3, 0);
        assert_eq!(
            parse_entry(SUBSYS, v4, &entry_body(v4, &o, &r))
                .unwrap()
                .orig,
            o
        );
    }

    #[test]
    fn the_delete_request_carries_the_original_tuple_as_dumped_and_the_id() {
        let v4 = libc::AF_INET as u8;
        let o = t("10.0.0.1", "10.0.0.2", 17, 5353, 53);
        let e = parse_entry(SUBSYS, v4, &entry_body(v4, &o, &o)).unwrap();
        let req = delete_request(&e, 42);
        assert_eq!(
            u32::from_ne_bytes(req[..4].try_into().unwrap()) as usize,
            req.len()
        );
        assert_eq!(
            u16::from_ne_bytes([req[4], req[5]]),
            SUBSYS | IPCTNL_MSG_CT_DELETE
        );
        assert_eq!(req[16], v4, "the entry's own family, never AF_UNSPEC");
        let body = &req[wire::NLMSG_HDR + wire::NFGEN_HDR..];
        let attrs: Vec<(u16, Vec<u8>)> = wire::attrs(body).map(|(t, v)| (t, v.to_vec())).collect();
        assert_eq!(attrs[0].0, CTA_TUPLE_ORIG);
        assert_eq!(parse_tuple(v4, &attrs[0].1).unwrap(), o);
        assert_eq!(attrs[1], (CTA_ID, 77u32.to_be_bytes().to_vec()));
        let dump = dump_request(7);
        assert_eq!(dump[16], libc::AF_UNSPEC as u8);
        assert_ne!(
            u16::from_ne_bytes([dump[6], dump[7]]) & libc::NLM_F_DUMP as u16,
            0
        );
    }

    #[test]
    fn malformed_entries_are_errors_not_panics() {
        let v4 = libc::AF_INET as u8;
        let v6 = libc::AF_INET6 as u8;
        let o = t("10.0.0.1", "10.0.0.2", 6, 1, 2);
        let good = entry_body(v4, &o, &o);
        // Wrong type, wrong family, an IPv4 body read as IPv6.
        assert!(parse_entry(SUBSYS | IPCTNL_MSG_CT_DELETE, v4, &good).is_err());
        assert!(parse_entry(SUBSYS, 7, &good).is_err());
        assert!(parse_entry(SUBSYS, v6, &good).is_err());
        // Empty body; only a reply tuple; every truncation.
        assert!(parse_entry(SUBSYS, v4, &[]).is_err());
        for cut in 0..good.len() {
            let _ = parse_entry(SUBSYS, v4, &good[..cut]);
        }
        // A tuple without addresses or protocol, and a short port.
        let mut b = Vec::new();
        let n = wire::nest_start(&mut b, CTA_TUPLE_ORIG);
        let p = wire::nest_start(&mut b, CTA_TUPLE_PROTO);
        wire::put_attr(&mut b, CTA_PROTO_SRC_PORT, &[1]);
        wire::nest_end(&mut b, p).unwrap();
        wire::nest_end(&mut b, n).unwrap();
        assert!(parse_entry(SUBSYS, v4, &b).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(ty in 0u16..0x200, family in any::<u8>(), body in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_entry(SUBSYS | (ty & 3), family, &body);
            let _ = parse_entry(ty, family, &body);
        }

        #[test]
        fn flipped_bytes_of_a_valid_entry_never_panic(at in 0usize..200, byte in any::<u8>(), v6 in any::<bool>()) {
            let (f, o) = if v6 {
                (libc::AF_INET6 as u8, t("fd00::1", "fd00::2", 6, 1, 2))
            } else {
                (libc::AF_INET as u8, t("10.0.0.1", "10.0.0.2", 6, 1, 2))
            };
            let mut b = entry_body(f, &o, &o);
            let i = at % b.len();
            b[i] = byte;
            if let Ok(e) = parse_entry(SUBSYS, f, &b) {
                let _ = delete_request(&e, 1);
            }
        }
    }
}

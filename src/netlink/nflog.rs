//! The nflog group the verdict-log rules send to, read over netlink in
//! safe Rust: binding the group (NFNL_SUBSYS_ULOG config messages), and
//! decoding each logged packet (prefix, timestamp, interfaces, and the
//! addresses, protocol and ports of the IP packet the kernel copied).
//!
//! Decoding never trusts the kernel's bytes: a datagram or message that
//! is truncated, mis-sized or not a logged IP packet yields a
//! [`DecodeError`] for that message and the rest of the datagram is
//! still read. A receive-queue overflow (ENOBUFS: the kernel dropped
//! messages because the reader fell behind) is reported as
//! [`Received::Overrun`], never as an error, so a reader counts it and
//! goes on.

use super::socket::{Msg, Socket};
use super::wire;
use super::NetlinkError;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

const SUBSYS: u16 = (libc::NFNL_SUBSYS_ULOG as u16) << 8;
const MSG_PACKET: u16 = SUBSYS | libc::NFULNL_MSG_PACKET as u16;
const MSG_CONFIG: u16 = SUBSYS | libc::NFULNL_MSG_CONFIG as u16;
/// Bytes of each logged packet the kernel copies: the IP header with
/// room for IPv6 extension headers, and the ports after it.
pub const COPY_RANGE: u32 = 128;

/// One packet a log rule reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Logged {
    /// The log rule's prefix.
    pub prefix: String,
    /// When the kernel saw the packet (its receive timestamp when it has
    /// one), else when it was read.
    pub time: SystemTime,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IP protocol number (6 TCP, 17 UDP, 132 SCTP, 1/58 ICMP).
    pub proto: u8,
    /// Source and destination ports (TCP, UDP, UDP-Lite, SCTP, and only
    /// when the packet is not a later fragment).
    pub ports: Option<(u16, u16)>,
    /// Input and output interface indexes.
    pub indev: Option<u32>,
    pub outdev: Option<u32>,
}

/// Why one message was skipped.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("undecodable nflog message: {0}")]
pub struct DecodeError(pub String);

/// What one receive gave.
#[derive(Debug)]
pub enum Received {
    /// The messages of one datagram, decoded one by one.
    Messages(Vec<Result<Logged, DecodeError>>),
    /// The kernel dropped log messages: the socket's queue overflowed.
    Overrun,
    /// Nothing arrived within the receive timeout.
    Idle,
}

/// The request binding (or unbinding) `group` to the sending socket,
/// with the copy mode and the flush threshold the reader wants.
pub fn config_request(group: u16, bind: bool, seq: u32) -> Vec<u8> {
    let mut attrs = Vec::new();
    let cmd = if bind {
        libc::NFULNL_CFG_CMD_BIND
    } else {
        libc::NFULNL_CFG_CMD_UNBIND
    };
    wire::put_attr(&mut attrs, libc::NFULA_CFG_CMD as u16, &[cmd as u8]);
    if bind {
        // struct nfulnl_msg_config_mode: __be32 copy_range, u8 mode, pad.
        let mut mode = COPY_RANGE.to_be_bytes().to_vec();
        mode.extend_from_slice(&[libc::NFULNL_COPY_PACKET as u8, 0]);
        wire::put_attr(&mut attrs, libc::NFULA_CFG_MODE as u16, &mode);
        // Send each packet at once instead of batching up to a second:
        // the rules' rate limit bounds the message rate already.
        wire::put_attr(
            &mut attrs,
            libc::NFULA_CFG_QTHRESH as u16,
            &1u32.to_be_bytes(),
        );
    }
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
    let mut m = wire::nfnl_message(MSG_CONFIG, flags, seq, libc::AF_UNSPEC as u8, &attrs);
    // nfgenmsg.res_id carries the group, big-endian.
    m[wire::NLMSG_HDR + 2..wire::NLMSG_HDR + 4].copy_from_slice(&group.to_be_bytes());
    m
}

/// Decodes every message of one received datagram. Messages that are not
/// logged packets (acks, NLMSG_DONE of a multi-part batch) are left out;
/// each malformed one is one error.
pub fn decode_datagram(bytes: &[u8]) -> Vec<Result<Logged, DecodeError>> {
    let msgs = match Msg::split(bytes) {
        Ok(m) => m,
        Err(e) => return vec![Err(DecodeError(e))],
    };
    msgs.iter()
        .filter(|m| m.ty == MSG_PACKET)
        .map(decode_packet)
        .collect()
}

/// Decodes one NFULNL_MSG_PACKET.
pub fn decode_packet(m: &Msg) -> Result<Logged, DecodeError> {
    let bad = |what: &str| DecodeError(what.to_string());
    if m.bytes().len() < wire::NLMSG_HDR + wire::NFGEN_HDR {
        return Err(bad("shorter than its headers"));
    }
    let mut prefix = None;
    let mut payload = None;
    let mut time = None;
    let mut indev = None;
    let mut outdev = None;
    for (ty, v) in wire::attrs(m.body()) {
        match i32::from(ty) {
            libc::NFULA_PREFIX => {
                let s = v.split(|b| *b == 0).next().unwrap_or_default();
                let s = std::str::from_utf8(s).map_err(|_| bad("prefix is not UTF-8"))?;
                prefix = Some(s.to_string());
            }
            libc::NFULA_PAYLOAD => payload = Some(v),
            libc::NFULA_TIMESTAMP => {
                // struct nfulnl_msg_packet_timestamp: __be64 sec, usec.
                let sec = v.get(..8).and_then(|b| b.try_into().ok());
                let usec = v.get(8..16).and_then(|b| b.try_into().ok());
                let (Some(sec), Some(usec)) = (sec, usec) else {
                    return Err(bad("timestamp shorter than 16 bytes"));
                };
                let d = Duration::from_secs(u64::from_be_bytes(sec))
                    .checked_add(Duration::from_micros(u64::from_be_bytes(usec)));
                time = d.and_then(|d| SystemTime::UNIX_EPOCH.checked_add(d));
            }
            libc::NFULA_IFINDEX_INDEV => indev = wire::be32_of(v),
            libc::NFULA_IFINDEX_OUTDEV => outdev = wire::be32_of(v),
            _ => {}
        }
    }
    let prefix = prefix.ok_or_else(|| bad("no prefix"))?;
    let payload = payload.ok_or_else(|| bad("no packet payload"))?;
    let ip = decode_ip(payload)?;
    Ok(Logged {
        prefix,
        time: time.unwrap_or_else(SystemTime::now),
        src: ip.0,
        dst: ip.1,
        proto: ip.2,
        ports: ip.3,
        indev,
        outdev,
    })
}

type IpSummary = (IpAddr, IpAddr, u8, Option<(u16, u16)>);

/// Addresses, protocol and ports of the (possibly cut) IP packet.
fn decode_ip(p: &[u8]) -> Result<IpSummary, DecodeError> {
    use etherparse::{LaxNetSlice, LaxSlicedPacket};
    let sliced = LaxSlicedPacket::from_ip(p).map_err(|e| DecodeError(format!("IP header: {e}")))?;
    let net = sliced
        .net
        .ok_or_else(|| DecodeError("no IP header".into()))?;
    let (src, dst): (IpAddr, IpAddr) = match &net {
        LaxNetSlice::Ipv4(s) => (
            s.header().source_addr().into(),
            s.header().destination_addr().into(),
        ),
        LaxNetSlice::Ipv6(s) => (
            s.header().source_addr().into(),
            s.header().destination_addr().into(),
        ),
        LaxNetSlice::Arp(_) => return Err(DecodeError("an ARP packet".into())),
    };
    let Some(pl) = net.ip_payload_ref() else {
        return Err(DecodeError("no IP payload".into()));
    };
    let proto = pl.ip_number.0;
    // TCP, UDP, SCTP and UDP-Lite all start with the two ports.
    let ported = matches!(proto, 6 | 17 | 132 | 136);
    let ports = match pl.payload.get(..4) {
        Some(b) if ported && !pl.fragmented => Some((
            u16::from_be_bytes([b[0], b[1]]),
            u16::from_be_bytes([b[2], b[3]]),
        )),
        _ => None,
    };
    Ok((src, dst, proto, ports))
}

/// A socket bound to one nflog group.
pub struct Reader {
    sock: Socket,
    group: u16,
}

impl Reader {
    /// Binds `group` (CAP_NET_ADMIN; one socket per group in a network
    /// namespace: a second bind is refused). Each receive waits at most
    /// `tick`.
    pub fn open(group: u16, tick: Duration) -> Result<Reader, NetlinkError> {
        let mut sock = Socket::open()?;
        sock.set_recv_timeout(Duration::from_secs(2))?;
        let during = || format!("binding nflog group {group}");
        // A reader that died without unbinding leaves nothing behind (the
        // kernel unbinds a closed socket), so no unbind first.
        match sock.request(&config_request(group, true, 1), 1)? {
            Ok(_) => {}
            Err((errno, text)) => {
                return Err(NetlinkError::Rejected {
                    seq: 1,
                    object: during(),
                    errno,
                    // The kernel answers EPERM both without CAP_NET_ADMIN
                    // and when another socket has bound the group.
                    detail: text.or_else(|| {
                        (errno == libc::EPERM).then(|| {
                            "another process reads this group (one socket per group), \
                             or CAP_NET_ADMIN is missing"
                                .into()
                        })
                    }),
                    more: 0,
                });
            }
        }
        // Room for bursts: each message is a few hundred bytes.
        sock.size_buffers(0, 1024);
        sock.set_recv_timeout(tick)?;
        Ok(Reader { sock, group })
    }

    pub fn group(&self) -> u16 {
        self.group
    }

    /// Waits for the next datagram (at most the tick).
    pub fn recv(&mut self) -> Result<Received, NetlinkError> {
        match self.sock.recv_datagram() {
            Ok(Some(bytes)) => Ok(Received::Messages(decode_datagram(bytes))),
            Ok(None) => Ok(Received::Idle),
            Err(NetlinkError::Receive(e)) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                Ok(Received::Overrun)
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An NFULNL_MSG_PACKET as the kernel writes one.
    pub(crate) fn packet_msg(prefix: &str, payload: &[u8], ts: Option<(u64, u64)>) -> Vec<u8> {
        let mut a = Vec::new();
        // struct nfulnl_msg_packet_hdr: hw_protocol, hook, pad.
        wire::put_attr(&mut a, libc::NFULA_PACKET_HDR as u16, &[0x08, 0, 2, 0]);
        if let Some((s, us)) = ts {
            let mut t = s.to_be_bytes().to_vec();
            t.extend_from_slice(&us.to_be_bytes());
            wire::put_attr(&mut a, libc::NFULA_TIMESTAMP as u16, &t);
        }
        wire::put_attr(
            &mut a,
            libc::NFULA_IFINDEX_INDEV as u16,
            &7u32.to_be_bytes(),
        );
        wire::put_attr(&mut a, libc::NFULA_PAYLOAD as u16, payload);
        wire::put_str(&mut a, libc::NFULA_PREFIX as u16, prefix);
        wire::nfnl_message(MSG_PACKET, 0, 0, libc::AF_INET as u8, &a)
    }

    fn tcp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let mut out = Vec::new();
        etherparse::PacketBuilder::ipv4(src, dst, 64)
            .tcp(sport, dport, 1, 1024)
            .syn()
            .write(&mut out, &[])
            .expect("build");
        out
    }

    fn udp6(sport: u16, dport: u16) -> Vec<u8> {
        let mut out = Vec::new();
        let src: std::net::Ipv6Addr = "fd00::1".parse().unwrap();
        let dst: std::net::Ipv6Addr = "fd00::2".parse().unwrap();
        etherparse::PacketBuilder::ipv6(src.octets(), dst.octets(), 64)
            .udp(sport, dport)
            .write(&mut out, b"hello")
            .expect("build");
        out
    }

    #[test]
    fn logged_packets_of_both_families_decode() {
        let ip = tcp4([10, 0, 0, 1], [10, 0, 0, 2], 40000, 80);
        let m = packet_msg("prod/web ingress[0] allow", &ip, Some((1_700_000_000, 5)));
        let got = decode_datagram(&m);
        assert_eq!(got.len(), 1);
        let l = got[0].clone().expect("decodes");
        assert_eq!(l.prefix, "prod/web ingress[0] allow");
        assert_eq!(l.src, "10.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(l.dst, "10.0.0.2".parse::<IpAddr>().unwrap());
        assert_eq!((l.proto, l.ports), (6, Some((40000, 80))));
        assert_eq!(l.indev, Some(7));
        assert_eq!(
            l.time,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000) + Duration::from_micros(5)
        );

        // Two messages in one datagram (the kernel batches), the second
        // IPv6, cut to the copy range as the kernel cuts it.
        let mut v6 = udp6(5353, 53);
        v6.truncate(48);
        let two = [m.clone(), packet_msg("x/p egress would-deny", &v6, None)].concat();
        let got = decode_datagram(&two);
        assert_eq!(got.len(), 2);
        let l = got[1].clone().expect("decodes");
        assert_eq!(l.dst, "fd00::2".parse::<IpAddr>().unwrap());
        assert_eq!((l.proto, l.ports), (17, Some((5353, 53))));
    }

    #[test]
    fn malformed_messages_are_errors_and_the_rest_still_decodes() {
        let ip = tcp4([10, 0, 0, 1], [10, 0, 0, 2], 1, 2);
        let good = packet_msg("a/b default-deny", &ip, None);
        let no_prefix = {
            let mut a = Vec::new();
            wire::put_attr(&mut a, libc::NFULA_PAYLOAD as u16, &ip);
            wire::nfnl_message(MSG_PACKET, 0, 0, 2, &a)
        };
        let not_ip = packet_msg("a/b default-deny", &[0x55; 30], None);
        let short_ts = {
            let mut a = Vec::new();
            wire::put_attr(&mut a, libc::NFULA_TIMESTAMP as u16, &[0; 8]);
            wire::put_str(&mut a, libc::NFULA_PREFIX as u16, "a/b default-deny");
            wire::put_attr(&mut a, libc::NFULA_PAYLOAD as u16, &ip);
            wire::nfnl_message(MSG_PACKET, 0, 0, 2, &a)
        };
        let d = [good.clone(), no_prefix, not_ip, short_ts, good].concat();
        let got = decode_datagram(&d);
        let oks = got.iter().filter(|r| r.is_ok()).count();
        assert_eq!((got.len(), oks), (5, 2), "{got:?}");
        // A datagram whose framing is broken is one error, not a panic.
        assert_eq!(decode_datagram(&d[..d.len() - 1]).len(), 1);
        assert!(decode_datagram(&d[..d.len() - 1])[0].is_err());
    }

    #[test]
    fn the_bind_request_names_the_group_and_asks_for_packets() {
        let r = config_request(0x1234, true, 9);
        let m = Msg::from_bytes(&r).expect("one whole message");
        assert_eq!(m.ty, MSG_CONFIG);
        assert_eq!(&r[wire::NLMSG_HDR + 2..wire::NLMSG_HDR + 4], &[0x12, 0x34]);
        let attrs: Vec<(u16, Vec<u8>)> = wire::attrs(m.body())
            .map(|(t, v)| (t, v.to_vec()))
            .collect();
        assert_eq!(attrs[0], (libc::NFULA_CFG_CMD as u16, vec![1]));
        assert_eq!(attrs[1].1[4], libc::NFULNL_COPY_PACKET as u8);
        assert_eq!(
            attrs[1].1[..4],
            COPY_RANGE.to_be_bytes(),
            "copy range, big-endian"
        );
    }

    fn datagram() -> Vec<u8> {
        let mut v6 = udp6(1000, 53);
        v6.truncate(60);
        [
            packet_msg(
                "ns/pol ingress[3] allow",
                &tcp4([10, 1, 2, 3], [10, 4, 5, 6], 9, 80),
                Some((1, 2)),
            ),
            packet_msg("ns/pod default-deny", &v6, None),
        ]
        .concat()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// Random bytes never panic the decoder.
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = decode_datagram(&bytes);
        }

        /// A real datagram with bits flipped, bytes cut off, or a length
        /// field rewritten decodes to results or errors, never a panic,
        /// and a change past the first message leaves it intact.
        #[test]
        fn bit_flipped_and_cut_datagrams_never_panic(
            flips in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..8), 1..8),
            cut in any::<prop::sample::Index>(),
            len_at in any::<prop::sample::Index>(),
            len in any::<u16>(),
        ) {
            let good = datagram();
            let first_len = packet_msg(
                "ns/pol ingress[3] allow",
                &tcp4([10, 1, 2, 3], [10, 4, 5, 6], 9, 80),
                Some((1, 2)),
            ).len();
            let mut b = good.clone();
            for (i, bit) in &flips {
                let i = i.index(b.len());
                b[i] ^= 1 << bit;
            }
            let _ = decode_datagram(&b);
            let _ = decode_datagram(&b[..cut.index(b.len())]);
            let mut c = good.clone();
            let at = len_at.index(c.len() - 1);
            c[at..at + 2].copy_from_slice(&len.to_ne_bytes());
            let _ = decode_datagram(&c);
            // Flips inside the second message only touch that one.
            let mut d = good.clone();
            for (i, bit) in &flips {
                let i = first_len + 16 + i.index(d.len() - first_len - 16);
                d[i] ^= 1 << bit;
            }
            let got = decode_datagram(&d);
            prop_assert!(got.len() <= 2);
            if got.len() == 2 {
                prop_assert_eq!(&got[0], &decode_datagram(&good)[0]);
            }
        }
    }
}

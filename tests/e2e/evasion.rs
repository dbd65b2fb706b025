//! A hostile pod with CAP_NET_RAW trying to slip past policy by packet
//! shape rather than by address: IP fragments (tiny, overlapping, ports
//! in a later fragment, IPv6 atomic fragments), IPv6 extension headers
//! and routing headers, IPv4 source routing, IPv4-mapped and other odd
//! source addresses, protocols no policy names, and a second program on
//! the node (an earlier `accept`, `notrack` before defragmentation,
//! marks, an iptables rule). Each layout runs every probe in one batch.
//!
//! Cluster (namespace `x`): `attacker`, `friend`, `victim` and `guarded`
//! on node1, `remote` and `victim2` on node2. `victim` and `victim2`
//! admit `friend` (no ports: every protocol), `guarded` admits `friend`
//! on TCP 47000 only, `attacker` may send only to `remote`. `friend`
//! plays the hostile pod where a peer must be admitted on some port.
//!
//! Every packet is hand-built with valid checksums (nothing is lost as
//! conntrack-invalid by accident) and caught by raw sockets in the
//! receiving pods, keyed by (protocol, source, id, destination port):
//! the id is the source port, or bytes 4-5 of port-less protocols. Probes
//! that must arrive are the controls: a silent receiver cannot pass.

use crate::attacker::{attack_pods, fold, raw_receiver, send_raw, sum16, ARRIVAL_LIMIT, SETTLE};
use crate::cluster::{netns_exec, SimCluster};
use crate::netns::run;
use crate::probe::{flow_socket, spawn_in};
use crate::scenarios::np;
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ICMP: u8 = 1;
const TCP: u8 = 6;
const UDP: u8 = 17;
const DCCP: u8 = 33;
const GRE: u8 = 47;
const ESP: u8 = 50;
const ICMPV6: u8 = 58;
const UDPLITE: u8 = 136;
const HOPOPTS: u8 = 0;
const ROUTING: u8 = 43;
const FRAGMENT: u8 = 44;
const DSTOPTS: u8 = 60;
/// Protocols whose first four bytes are source and destination port.
const PORTED: [u8; 4] = [TCP, UDP, DCCP, UDPLITE];
/// Bytes 6-7 of port-less probes (GRE, ESP), so stray packets are ignored.
const MAGIC: u16 = 0x4e50;
/// The port `guarded` admits `friend` on; `DENIED_PORT` it does not.
const PORT: u16 = 47_000;
const DENIED_PORT: u16 = 47_001;
/// Fixed source ports of the UDP flows the node and `victim` open to the
/// attacker, below the kernel's ephemeral range (32768-60999) and the
/// probes' source ports, so no other socket picks them; each is bound
/// again for every flow, by [`flow_socket`].
const NODE_FLOW_PORT: u16 = 27_005;
const VICTIM_FLOW_PORT: u16 = 27_006;
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

/// An IPv6 extension header: its type and its bytes.
type Ext = (u8, Vec<u8>);

/// What one receiving pod saw: (protocol, source, id, destination port).
type Key = (u8, IpAddr, u16, u16);

/// An L4 message of `proto` (with checksum over the pseudo-header of
/// `src`, `ck_dst`), `pad` bytes of payload after its header.
fn l4(
    proto: u8,
    src: IpAddr,
    ck_dst: IpAddr,
    id: u16,
    dport: u16,
    flags: u8,
    pad: usize,
) -> Vec<u8> {
    let (mut m, at) = match proto {
        TCP => {
            let mut t = vec![0u8; 20];
            t[4..8].copy_from_slice(&u32::from(id).to_be_bytes());
            t[12] = 5 << 4;
            t[13] = flags;
            t[14..16].copy_from_slice(&1024u16.to_be_bytes());
            (t, Some(16))
        }
        UDP | UDPLITE => (vec![0u8; 8], Some(6)),
        DCCP => {
            // A DCCP-Request: 16-byte generic header (X=1), service code.
            let mut d = vec![0u8; 20];
            d[4] = 5;
            d[8] = 1; // type 0 (Request), X = 1
            d[15] = 1;
            (d, Some(6))
        }
        ICMP | ICMPV6 => {
            let mut i = vec![0u8; 8];
            i[0] = if proto == ICMP { 8 } else { flags };
            i[4..6].copy_from_slice(&id.to_be_bytes());
            if proto == ICMP {
                i[6..8].copy_from_slice(&MAGIC.to_be_bytes());
            }
            (i, Some(2))
        }
        GRE => {
            let mut g = vec![0u8; 8];
            g[2..4].copy_from_slice(&0x6558u16.to_be_bytes());
            g[4..6].copy_from_slice(&id.to_be_bytes());
            g[6..8].copy_from_slice(&MAGIC.to_be_bytes());
            (g, None)
        }
        ESP => {
            let mut e = vec![0u8; 8];
            e[0..4].copy_from_slice(&0x100u32.to_be_bytes());
            e[4..6].copy_from_slice(&id.to_be_bytes());
            e[6..8].copy_from_slice(&MAGIC.to_be_bytes());
            (e, None)
        }
        other => panic!("no builder for protocol {other}"),
    };
    if PORTED.contains(&proto) {
        m[0..2].copy_from_slice(&id.to_be_bytes());
        m[2..4].copy_from_slice(&dport.to_be_bytes());
    }
    m.extend(std::iter::repeat_n(0xa5, pad));
    if proto == UDP {
        let len = m.len() as u16;
        m[4..6].copy_from_slice(&len.to_be_bytes());
    }
    if let Some(at) = at {
        let mut sum = sum16(&m);
        if proto != ICMP {
            // The node's conntrack checks a UDP-Lite checksum over a
            // pseudo-header naming UDP, and calls any other invalid.
            sum += pseudo(
                src,
                ck_dst,
                if proto == UDPLITE { UDP } else { proto },
                m.len(),
            );
        }
        let ck = fold(sum);
        m[at..at + 2].copy_from_slice(&ck.to_be_bytes());
    }
    m
}

fn pseudo(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> u32 {
    let mut p = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(&[0, proto]);
            p.extend_from_slice(&(len as u16).to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(&(len as u32).to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, proto]);
        }
        _ => panic!("mixed families"),
    }
    sum16(&p)
}

/// An IPv4 header (with `options`, padded to 32 bits) and `payload`.
/// `frag` is (offset in bytes, more fragments).
fn ip4(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    ident: u16,
    frag: (usize, bool),
    options: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    let mut opts = options.to_vec();
    while opts.len() % 4 != 0 {
        opts.push(0);
    }
    let hl = 20 + opts.len();
    let mut p = vec![0x40 | (hl / 4) as u8, 0];
    p.extend_from_slice(&((hl + payload.len()) as u16).to_be_bytes());
    p.extend_from_slice(&ident.to_be_bytes());
    let fo = (frag.0 / 8) as u16 | if frag.1 { 0x2000 } else { 0 };
    p.extend_from_slice(&fo.to_be_bytes());
    p.extend_from_slice(&[64, proto, 0, 0]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&opts);
    let ck = fold(sum16(&p));
    p[10..12].copy_from_slice(&ck.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// An IPv6 packet: fixed header, then `exts` (each a header type and its
/// bytes, whose first byte is overwritten with the next header), then
/// `payload` of protocol `proto`.
fn ip6(src: Ipv6Addr, dst: Ipv6Addr, hops: u8, exts: &[Ext], proto: u8, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    for (i, (_, bytes)) in exts.iter().enumerate() {
        let mut b = bytes.clone();
        b[0] = exts.get(i + 1).map_or(proto, |e| e.0);
        body.extend_from_slice(&b);
    }
    body.extend_from_slice(payload);
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&(body.len() as u16).to_be_bytes());
    p.push(exts.first().map_or(proto, |e| e.0));
    p.push(hops);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&body);
    p
}

/// A hop-by-hop or destination options header of `len` bytes (a
/// multiple of 8), filled with options of an unknown type the receiver
/// must skip (Linux refuses more than 7 bytes of padding).
fn opts(kind: u8, len: usize) -> Ext {
    assert!(len % 8 == 0 && (8..=2048).contains(&len));
    let mut h = vec![0u8; len];
    h[1] = (len / 8 - 1) as u8;
    let mut at = 2;
    while at < len {
        match len - at {
            1 => break, // Pad1 (zero)
            left => {
                let n = (left - 2).min(255);
                h[at] = 0x1e; // unknown, "skip over this option"
                h[at + 1] = n as u8;
                at += 2 + n;
            }
        }
    }
    (kind, h)
}

/// A routing header of `rtype` (0, 3 = RPL, 4 = segment routing) listing
/// `segments`, `left` of them still to visit.
fn routing(rtype: u8, left: u8, segments: &[Ipv6Addr]) -> Ext {
    let mut h = vec![0u8, (segments.len() * 2) as u8, rtype, left, 0, 0, 0, 0];
    if rtype == 4 {
        h[4] = segments.len() as u8 - 1; // last entry
    }
    for s in segments {
        h.extend_from_slice(&s.octets());
    }
    (ROUTING, h)
}

/// IPv6 fragments of `unfrag` (extension headers and payload after the
/// fragment header, first protocol `first`), cut at the byte offsets
/// given by `pieces` as (offset, length, more).
fn frags6(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    first: u8,
    unfrag: &[u8],
    pieces: &[(usize, usize, bool)],
    ident: u32,
) -> Vec<Vec<u8>> {
    pieces
        .iter()
        .map(|&(off, len, more)| {
            let mut fh = vec![0u8, 0];
            let fo = (off as u16) | u16::from(more);
            fh.extend_from_slice(&fo.to_be_bytes());
            fh.extend_from_slice(&ident.to_be_bytes());
            ip6(
                src,
                dst,
                64,
                &[(FRAGMENT, fh)],
                first,
                &unfrag[off..off + len],
            )
        })
        .collect()
}

/// One probe: the packets one pod sends and the key that shows it.
struct Probe {
    name: String,
    from: &'static str,
    packets: Vec<(IpAddr, Vec<u8>)>,
    key: Key,
    expect: Expect,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// A control: it must reach its destination.
    Arrive,
    /// An attack: nobody may see it.
    Never,
}

/// Raw sockets for every probed protocol of both families in `netns`,
/// recording until `stop` is set.
fn receiver(
    netns: &str,
    stop: Arc<AtomicBool>,
) -> (Arc<Mutex<BTreeSet<Key>>>, std::thread::JoinHandle<()>) {
    let mut socks = Vec::new();
    for (family, protos) in [
        (libc::AF_INET, [TCP, UDP, DCCP, UDPLITE, GRE, ESP, ICMP]),
        (libc::AF_INET6, [TCP, UDP, DCCP, UDPLITE, GRE, ESP, ICMPV6]),
    ] {
        socks.extend(protos.map(|proto| (family, proto)));
    }
    raw_receiver(netns, &socks, stop, |proto, src, m| {
        if m.len() < 8 {
            return None;
        }
        let word = |at: usize| u16::from_be_bytes([m[at], m[at + 1]]);
        if PORTED.contains(&proto) {
            if !(PORT..PORT + 10).contains(&word(2))
                && ![NODE_FLOW_PORT, VICTIM_FLOW_PORT].contains(&word(2))
            {
                return None;
            }
            Some((proto, src, word(0), word(2)))
        } else if proto == ICMPV6 || (proto == ICMP && word(6) == MAGIC) || word(6) == MAGIC {
            Some((proto, src, word(4), 0))
        } else {
            None
        }
    })
}

const RECEIVERS: [&str; 5] = ["victim", "victim2", "remote", "friend", "guarded"];

fn pod<'a>(c: &'a SimCluster, name: &str) -> &'a crate::netns::PodNet {
    &c.topo.pods[c.pod_index("x", name)]
}

/// Sends every probe (each pod's packets in order), waits for the
/// controls (bounded) and returns every probe whose outcome is wrong.
fn run_probes(c: &SimCluster, probes: &[Probe]) -> Vec<String> {
    let stop = Arc::new(AtomicBool::new(false));
    let recv: Vec<_> = RECEIVERS
        .iter()
        .map(|p| receiver(&pod(c, p).netns, stop.clone()))
        .collect();
    let senders: BTreeSet<&str> = probes.iter().map(|p| p.from).collect();
    for s in senders {
        let packets: Vec<(IpAddr, Vec<u8>)> = probes
            .iter()
            .filter(|p| p.from == s)
            .flat_map(|p| p.packets.clone())
            .collect();
        spawn_in(&pod(c, s).netns, move || send_raw(&packets))
            .join()
            .expect("sender");
    }
    let seen = |k: &Key| {
        recv.iter()
            .any(|(s, _)| s.lock().expect("lock").contains(k))
    };
    let sent = Instant::now();
    while sent.elapsed() < SETTLE
        || (probes
            .iter()
            .any(|p| p.expect == Expect::Arrive && !seen(&p.key))
            && sent.elapsed() < ARRIVAL_LIMIT)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let mut all = BTreeSet::new();
    for (s, h) in recv {
        h.join().expect("receiver");
        all.extend(s.lock().expect("lock").iter().copied());
    }
    probes
        .iter()
        .filter(|p| all.contains(&p.key) != (p.expect == Expect::Arrive))
        .map(|p| {
            format!(
                "{}: {}",
                p.name,
                if all.contains(&p.key) {
                    "arrived (must not)"
                } else {
                    "lost (must arrive)"
                }
            )
        })
        .collect()
}

/// The six pods, their policies, both nodes programmed.
fn cluster(bridged: bool) -> SimCluster {
    let mut c = attack_pods(bridged, &["guarded"]);
    c.put_policy(&np(
        "x",
        "guarded-admits-friend-on-tcp",
        &format!(
            "podSelector: {{matchLabels: {{pod: guarded}}}}\n\
             ingress:\n- from: [{{podSelector: {{matchLabels: {{pod: friend}}}}}}]\n  ports: [{{protocol: TCP, port: {PORT}}}]"
        ),
    ));
    c.program();
    c
}

/// Builds probes with unique ids.
struct Probes<'a> {
    c: &'a SimCluster,
    next: u16,
    ident: u32,
    list: Vec<Probe>,
}

impl Probes<'_> {
    fn id(&mut self) -> u16 {
        self.next += 1;
        self.next
    }

    fn addr(&self, name: &str, v6: bool) -> IpAddr {
        let p = pod(self.c, name);
        if v6 {
            IpAddr::V6(p.v6)
        } else {
            IpAddr::V4(p.v4)
        }
    }

    /// One whole packet of `proto` to `dport`, sent by `from` with source
    /// `src` to `to`.
    fn whole(
        &mut self,
        name: &str,
        from: &'static str,
        (src, to): (IpAddr, IpAddr),
        (proto, dport): (u8, u16),
        expect: Expect,
    ) {
        let id = self.id();
        let flags = if proto == ICMPV6 { 128 } else { SYN };
        let m = l4(proto, src, to, id, dport, flags, 8);
        let p = match (src, to) {
            (IpAddr::V4(s), IpAddr::V4(d)) => ip4(s, d, proto, id, (0, false), &[], &m),
            (IpAddr::V6(s), IpAddr::V6(d)) => ip6(s, d, 64, &[], proto, &m),
            _ => panic!("mixed families"),
        };
        let dport = if PORTED.contains(&proto) { dport } else { 0 };
        self.push(name, from, vec![(to, p)], (proto, src, id, dport), expect);
    }

    fn push(
        &mut self,
        name: &str,
        from: &'static str,
        packets: Vec<(IpAddr, Vec<u8>)>,
        key: Key,
        expect: Expect,
    ) {
        let fam = if key.1.is_ipv6() { "IPv6" } else { "IPv4" };
        self.list.push(Probe {
            name: format!("{fam} {name} ({from})"),
            from,
            packets,
            key,
            expect,
        });
    }

    fn fresh_ident(&mut self) -> u32 {
        self.ident += 1;
        self.ident
    }
}

/// Fragment probes from `friend` to `guarded` (TCP `PORT` admitted).
fn fragments(p: &mut Probes, v6: bool) {
    let src = p.addr("friend", v6);
    let dst = p.addr("guarded", v6);
    // (name, protocol, port, flags, pieces as (offset, length, more) of
    // an L4 message of `len` bytes, expectation)
    type Shape = (&'static str, u8, u16, u8, Vec<(usize, usize, bool)>, Expect);
    let (small, big) = if v6 {
        // Non-last IPv6 fragments shorter than the minimum MTU are
        // refused by the node's reassembly, so the split ones are big.
        (1256, 1400)
    } else {
        (16, 40)
    };
    let shapes: Vec<Shape> = vec![
        (
            "TCP SYN to the admitted port, two fragments (control)",
            TCP,
            PORT,
            SYN,
            vec![(0, small, true), (small, big - small, false)],
            Expect::Arrive,
        ),
        (
            "TCP SYN to a denied port, two fragments",
            TCP,
            DENIED_PORT,
            SYN,
            vec![(0, small, true), (small, big - small, false)],
            Expect::Never,
        ),
        (
            "UDP to the admitted port number, two fragments",
            UDP,
            PORT,
            0,
            vec![(0, small, true), (small, big - small, false)],
            Expect::Never,
        ),
        (
            "TCP SYN to a denied port, fragments sent last first",
            TCP,
            DENIED_PORT,
            SYN,
            vec![(small, big - small, false), (0, small, true)],
            Expect::Never,
        ),
    ];
    for (name, proto, dport, flags, pieces, expect) in shapes {
        let id = p.id();
        let m = l4(
            proto,
            src,
            dst,
            id,
            dport,
            flags,
            big - if proto == TCP { 20 } else { 8 },
        );
        let ident = p.fresh_ident();
        let packets = cut(src, dst, proto, &m, &pieces, ident);
        p.push(name, "friend", packets, (proto, src, id, dport), expect);
    }
    if !v6 {
        // Tiny first fragment: 8 bytes, the ports but not the flags.
        for (dport, expect) in [(PORT, Expect::Arrive), (DENIED_PORT, Expect::Never)] {
            let id = p.id();
            let m = l4(TCP, src, dst, id, dport, SYN, 20);
            let ident = p.fresh_ident();
            let packets = cut(src, dst, TCP, &m, &[(0, 8, true), (8, 32, false)], ident);
            let what = if expect == Expect::Arrive {
                "the admitted port (control)"
            } else {
                "a denied port"
            };
            p.push(
                &format!("tiny first fragment (8 bytes) TCP SYN to {what}"),
                "friend",
                packets,
                (TCP, src, id, dport),
                expect,
            );
        }
        // Overlap: a second first fragment rewrites the port.
        let id = p.id();
        let ok = l4(TCP, src, dst, id, PORT, SYN, 20);
        let bad = l4(TCP, src, dst, id, DENIED_PORT, SYN, 20);
        let ident = p.fresh_ident();
        let mut packets = cut(src, dst, TCP, &ok, &[(0, 16, true)], ident);
        packets.extend(cut(
            src,
            dst,
            TCP,
            &bad,
            &[(0, 16, true), (16, 24, false)],
            ident,
        ));
        p.push(
            "overlapping first fragment rewriting the port to a denied one",
            "friend",
            packets,
            (TCP, src, id, DENIED_PORT),
            Expect::Never,
        );
        // Overlap: a later fragment rewrites the flags (ACK, then SYN).
        let id = p.id();
        let ack = l4(TCP, src, dst, id, DENIED_PORT, ACK, 20);
        let syn = l4(TCP, src, dst, id, DENIED_PORT, SYN, 20);
        let ident = p.fresh_ident();
        let mut packets = cut(src, dst, TCP, &ack, &[(0, 16, true)], ident);
        packets.extend(cut(src, dst, TCP, &syn, &[(8, 32, false)], ident));
        p.push(
            "overlapping fragment rewriting the TCP flags",
            "friend",
            packets,
            (TCP, src, id, DENIED_PORT),
            Expect::Never,
        );
    } else {
        let (IpAddr::V6(s), IpAddr::V6(d)) = (src, dst) else {
            unreachable!()
        };
        // First fragment without ports: a long destination options header
        // fills it, TCP starts in the second.
        for (dport, what) in [(PORT, "the admitted port"), (DENIED_PORT, "a denied port")] {
            let id = p.id();
            let m = l4(TCP, src, dst, id, dport, SYN, 20);
            let (_, mut body) = opts(DSTOPTS, 1264);
            body[0] = TCP;
            body.extend_from_slice(&m);
            let ident = p.fresh_ident();
            let packets = frags6(
                s,
                d,
                DSTOPTS,
                &body,
                &[(0, 1256, true), (1256, body.len() - 1256, false)],
                ident,
            )
            .into_iter()
            .map(|x| (dst, x))
            .collect();
            p.push(
                &format!("first fragment without ports (TCP in the second) to {what}"),
                "friend",
                packets,
                (TCP, src, id, dport),
                // The kernel discards a first fragment without the whole
                // header chain (RFC 8200), whatever the port.
                Expect::Never,
            );
        }
        // Atomic fragments (offset 0, M = 0).
        for (proto, dport, expect) in [
            (TCP, PORT, Expect::Arrive),
            (TCP, DENIED_PORT, Expect::Never),
            (UDP, PORT, Expect::Never),
        ] {
            let id = p.id();
            let m = l4(proto, src, dst, id, dport, SYN, 8);
            let ident = p.fresh_ident();
            let packets = frags6(s, d, proto, &m, &[(0, m.len(), false)], ident)
                .into_iter()
                .map(|x| (dst, x))
                .collect();
            let what = if expect == Expect::Arrive {
                " (control)"
            } else {
                ""
            };
            p.push(
                &format!("atomic fragment, protocol {proto} port {dport}{what}"),
                "friend",
                packets,
                (proto, src, id, dport),
                expect,
            );
        }
        // Overlap: a second first fragment rewrites the port.
        let id = p.id();
        let ok = l4(TCP, src, dst, id, PORT, SYN, 1380);
        let bad = l4(TCP, src, dst, id, DENIED_PORT, SYN, 1380);
        let ident = p.fresh_ident();
        let mut packets: Vec<(IpAddr, Vec<u8>)> = frags6(s, d, TCP, &ok, &[(0, 1248, true)], ident)
            .into_iter()
            .map(|x| (dst, x))
            .collect();
        packets.extend(
            frags6(
                s,
                d,
                TCP,
                &bad,
                &[(0, 1248, true), (1248, 1400 - 1248, false)],
                ident,
            )
            .into_iter()
            .map(|x| (dst, x)),
        );
        p.push(
            "overlapping first fragment rewriting the port to a denied one",
            "friend",
            packets,
            (TCP, src, id, DENIED_PORT),
            Expect::Never,
        );
    }
}

/// Cuts an L4 message into IP fragments (both families).
fn cut(
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    m: &[u8],
    pieces: &[(usize, usize, bool)],
    ident: u32,
) -> Vec<(IpAddr, Vec<u8>)> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => pieces
            .iter()
            .map(|&(off, len, more)| {
                (
                    dst,
                    ip4(
                        s,
                        d,
                        proto,
                        ident as u16,
                        (off, more),
                        &[],
                        &m[off..off + len],
                    ),
                )
            })
            .collect(),
        (IpAddr::V6(s), IpAddr::V6(d)) => frags6(s, d, proto, m, pieces, ident)
            .into_iter()
            .map(|x| (dst, x))
            .collect(),
        _ => panic!("mixed families"),
    }
}

/// IPv6 extension headers in front of TCP, UDP and ICMPv6.
fn extension_headers(p: &mut Probes) {
    let src = p.addr("friend", true);
    let dst = p.addr("guarded", true);
    let (IpAddr::V6(s), IpAddr::V6(d)) = (src, dst) else {
        unreachable!()
    };
    let chains: Vec<(&str, Vec<Ext>)> = vec![
        ("hop-by-hop", vec![opts(HOPOPTS, 8)]),
        ("destination options", vec![opts(DSTOPTS, 16)]),
        ("routing type 0, no segment left", vec![routing(0, 0, &[s])]),
        (
            "a chain of 8 headers",
            vec![
                opts(HOPOPTS, 8),
                opts(DSTOPTS, 8),
                opts(DSTOPTS, 8),
                opts(DSTOPTS, 16),
                opts(DSTOPTS, 8),
                opts(DSTOPTS, 24),
                opts(DSTOPTS, 8),
                opts(DSTOPTS, 8),
            ],
        ),
        (
            "a chain of 9 headers",
            vec![
                opts(HOPOPTS, 8),
                opts(DSTOPTS, 8),
                routing(0, 0, &[s]),
                opts(DSTOPTS, 8),
                opts(DSTOPTS, 16),
                opts(DSTOPTS, 8),
                opts(DSTOPTS, 24),
                opts(DSTOPTS, 8),
                opts(DSTOPTS, 8),
            ],
        ),
    ];
    for (what, exts) in chains {
        // No routing header leaves a pod (its `src_` chain drops them).
        let routed = exts.iter().any(|e| e.0 == ROUTING);
        for (proto, dport, expect) in [
            (TCP, PORT, Expect::Arrive),
            (TCP, DENIED_PORT, Expect::Never),
            (UDP, PORT, Expect::Never),
        ] {
            let expect = if routed { Expect::Never } else { expect };
            let id = p.id();
            let m = l4(proto, src, dst, id, dport, SYN, 8);
            let pk = ip6(s, d, 64, &exts, proto, &m);
            let ctl = if expect == Expect::Arrive {
                " (control)"
            } else {
                ""
            };
            p.push(
                &format!("{what} before protocol {proto} port {dport}{ctl}"),
                "friend",
                vec![(dst, pk)],
                (proto, src, id, dport),
                expect,
            );
        }
    }
    // Routing headers naming a pod the destination address does not: the
    // attacker may send only to `remote`.
    let (IpAddr::V6(a), IpAddr::V6(r), IpAddr::V6(v2), IpAddr::V6(v)) = (
        p.addr("attacker", true),
        p.addr("remote", true),
        p.addr("victim2", true),
        p.addr("victim", true),
    ) else {
        unreachable!()
    };
    for (rtype, target, tname) in [(0, v2, "victim2"), (4, v2, "victim2"), (4, v, "victim")] {
        let id = p.id();
        // Over the address in the header, as the nodes' conntrack checks
        // it (over the final destination it would be invalid on the way).
        let m = l4(UDP, IpAddr::V6(a), IpAddr::V6(r), id, PORT, 0, 8);
        // Type 0 lists the hops after the first; segment routing lists
        // every segment, the last first, the current one at `left`.
        let segments = if rtype == 0 {
            vec![target]
        } else {
            vec![target, r]
        };
        let pk = ip6(a, r, 64, &[routing(rtype, 1, &segments)], UDP, &m);
        p.push(
            &format!("routing type {rtype} to remote (allowed) naming {tname} as the next segment"),
            "attacker",
            vec![(IpAddr::V6(r), pk)],
            (UDP, IpAddr::V6(a), id, PORT),
            Expect::Never,
        );
    }
}

/// Link-local and unspecified sources in packets that are not
/// neighbour solicitations or advertisements, from the egress-isolated
/// attacker to `friend` (isolated for nothing), behind extension headers
/// too: they must meet the attacker's egress policy like any packet.
fn link_local_sources(p: &mut Probes) {
    let dst = p.addr("friend", true);
    let IpAddr::V6(d) = dst else { unreachable!() };
    let ll: Ipv6Addr = "fe80::a77a:c4e2".parse().expect("literal");
    for (src, sname) in [(ll, "link-local"), (Ipv6Addr::UNSPECIFIED, "unspecified")] {
        for (icmp, hops, what) in [
            (133u8, 255u8, "router solicitation"),
            (134, 255, "router advertisement"),
            (143, 1, "MLD report"),
        ] {
            for behind in [false, true] {
                let id = p.id();
                let m = l4(ICMPV6, IpAddr::V6(src), dst, id, 0, icmp, 16);
                let exts = if behind {
                    vec![opts(DSTOPTS, 8)]
                } else {
                    vec![]
                };
                let pk = ip6(src, d, hops, &exts, ICMPV6, &m);
                let how = if behind {
                    " behind destination options"
                } else {
                    ""
                };
                p.push(
                    &format!("{what} from the {sname} address{how} to friend's global address"),
                    "attacker",
                    vec![(dst, pk)],
                    (ICMPV6, IpAddr::V6(src), id, 0),
                    Expect::Never,
                );
            }
        }
        // UDP is not ND at all.
        let id = p.id();
        let m = l4(UDP, IpAddr::V6(src), dst, id, PORT, 0, 8);
        p.push(
            &format!("UDP from the {sname} address to friend"),
            "attacker",
            vec![(dst, ip6(src, d, 255, &[], UDP, &m))],
            (UDP, IpAddr::V6(src), id, PORT),
            Expect::Never,
        );
    }
}

/// Sources no pod may use, to an allowed and a denied destination.
fn odd_sources(p: &mut Probes, node: &crate::netns::Node, bridged: bool) {
    let friend4 = pod(p.c, "friend").v4;
    let o = friend4.octets();
    let mapped = |prefix: [u16; 6]| {
        IpAddr::V6(Ipv6Addr::new(
            prefix[0],
            prefix[1],
            prefix[2],
            prefix[3],
            prefix[4],
            prefix[5],
            u16::from_be_bytes([o[0], o[1]]),
            u16::from_be_bytes([o[2], o[3]]),
        ))
    };
    let node_local: (IpAddr, IpAddr) = if bridged {
        (
            IpAddr::V4(Ipv4Addr::new(10, 244, 1, 1)),
            IpAddr::V6("fd00:10:244:1::1".parse().expect("literal")),
        )
    } else {
        (
            IpAddr::V4(Ipv4Addr::new(169, 254, 1, 1)),
            IpAddr::V6("fe80::1".parse().expect("literal")),
        )
    };
    let sources: Vec<(&str, IpAddr)> = vec![
        (
            "IPv4-mapped address of friend",
            mapped([0, 0, 0, 0, 0, 0xffff]),
        ),
        (
            "IPv4-compatible address of friend",
            mapped([0, 0, 0, 0, 0, 0]),
        ),
        (
            "NAT64 address of friend",
            mapped([0x64, 0xff9b, 0, 0, 0, 0]),
        ),
        ("the node's fabric address", IpAddr::V4(node.fabric_v4)),
        ("the node's fabric address", IpAddr::V6(node.fabric_v6)),
        ("the node's pod-side address", node_local.0),
        ("the node's pod-side address", node_local.1),
        ("loopback", IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1))),
        ("loopback", IpAddr::V6(Ipv6Addr::LOCALHOST)),
        ("multicast", IpAddr::V4(Ipv4Addr::new(224, 0, 0, 1))),
        ("multicast", IpAddr::V6("ff02::1".parse().expect("literal"))),
        (
            "another node's pod CIDR",
            IpAddr::V4(Ipv4Addr::new(10, 244, 2, 99)),
        ),
        (
            "another node's pod CIDR",
            IpAddr::V6("fd00:10:244:2::99".parse().expect("literal")),
        ),
    ];
    for (what, src) in sources {
        for to in ["remote", "friend", "victim"] {
            let dst = p.addr(to, src.is_ipv6());
            p.whole(
                &format!("UDP from {what} ({src}) to {to}"),
                "attacker",
                (src, dst),
                (UDP, PORT),
                Expect::Never,
            );
        }
    }
    // IPv4-mapped and NAT64 destinations: judged as the IPv6 they are.
    let remote4 = pod(p.c, "remote").v4.octets();
    let a6 = p.addr("attacker", true);
    for (what, hi) in [
        ("IPv4-mapped", [0, 0, 0, 0, 0, 0xffff]),
        ("NAT64", [0x64, 0xff9b, 0, 0, 0, 0]),
    ] {
        let dst = IpAddr::V6(Ipv6Addr::new(
            hi[0],
            hi[1],
            hi[2],
            hi[3],
            hi[4],
            hi[5],
            u16::from_be_bytes([remote4[0], remote4[1]]),
            u16::from_be_bytes([remote4[2], remote4[3]]),
        ));
        p.whole(
            &format!("UDP to the {what} address of remote ({dst})"),
            "attacker",
            (a6, dst),
            (UDP, PORT),
            Expect::Never,
        );
    }
}

/// Protocols no policy names: every protocol passes a rule without
/// ports, none passes a rule with TCP ports only. GRE is the exception:
/// source validation drops tunnel protocols from pods (a decapsulating
/// node would take the inner source unchecked), so it never arrives.
fn unnamed_protocols(p: &mut Probes) {
    for v6 in [false, true] {
        let icmp = if v6 { ICMPV6 } else { ICMP };
        for proto in [icmp, GRE, ESP, UDPLITE, DCCP] {
            let allowed = if proto == GRE {
                Expect::Never
            } else {
                Expect::Arrive
            };
            for (from, to, expect) in [
                ("friend", "victim", allowed),
                ("attacker", "remote", allowed),
                ("friend", "guarded", Expect::Never),
                ("attacker", "victim", Expect::Never),
                ("attacker", "victim2", Expect::Never),
            ] {
                let (src, dst) = (p.addr(from, v6), p.addr(to, v6));
                let ctl = if expect == Expect::Arrive {
                    " (control)"
                } else {
                    ""
                };
                p.whole(
                    &format!("protocol {proto} {from} -> {to}{ctl}"),
                    from,
                    (src, dst),
                    (proto, PORT),
                    expect,
                );
            }
        }
    }
}

/// Source-routed packets from `attacker` through node1 to `victim`, sent
/// on UDP flows the node itself opened to the attacker (so conntrack
/// calls them established): IPv4 LSRR and SSRR with the pointer at the
/// first address and past it (an address already visited, which the
/// kernel's `ip option lsrr exists` parser does not recognise), an IPv6
/// segment routing header (type 4) and an RPL header (type 3).
fn source_routes(p: &mut Probes, expect: Expect, when: &str) {
    let node = p.c.topo.node("node1");
    for v6 in [false, true] {
        let a = p.addr("attacker", v6);
        let target = p.addr("victim", v6);
        let hop: IpAddr = if v6 {
            node.fabric_v6.into()
        } else {
            node.fabric_v4.into()
        };
        let kinds: &[(u8, bool)] = if v6 {
            &[(4, false), (3, false)]
        } else {
            &[(131, false), (137, false), (131, true), (137, true)]
        };
        for &(kind, moved) in kinds {
            let id = p.id();
            // The node opens the flow: hop:NODE_FLOW_PORT -> attacker:id.
            let ns = node.netns.clone();
            spawn_in(&ns, move || {
                let s = flow_socket(SocketAddr::new(hop, NODE_FLOW_PORT));
                let _ = s.send_to(b"open", (a, id));
            })
            .join()
            .expect("node sends");
            // Checksummed over the node's address, as conntrack checks
            // it on the way in (the receivers are raw sockets).
            let m = l4(UDP, a, hop, id, NODE_FLOW_PORT, 0, 8);
            let pk = match (a, hop, target) {
                (IpAddr::V4(s), IpAddr::V4(h), IpAddr::V4(t)) => {
                    let o = if moved {
                        let mut o = vec![kind, 11, 8];
                        o.extend_from_slice(&h.octets());
                        o.extend_from_slice(&t.octets());
                        o
                    } else {
                        let mut o = vec![kind, 7, 4];
                        o.extend_from_slice(&t.octets());
                        o
                    };
                    ip4(s, h, UDP, id, (0, false), &o, &m)
                }
                (IpAddr::V6(s), IpAddr::V6(h), IpAddr::V6(t)) => {
                    let segments = if kind == 4 { vec![t, h] } else { vec![t] };
                    ip6(s, h, 64, &[routing(kind, 1, &segments)], UDP, &m)
                }
                _ => unreachable!(),
            };
            let what = match (kind, moved) {
                (131, false) => "LSRR",
                (137, false) => "SSRR",
                (131, true) => "LSRR (pointer past the first address)",
                (137, true) => "SSRR (pointer past the first address)",
                (4, _) => "segment routing header",
                _ => "RPL routing header",
            };
            p.push(
                &format!("{what} via the node to victim, on a flow the node opened{when}"),
                "attacker",
                vec![(hop, pk)],
                (UDP, a, id, NODE_FLOW_PORT),
                expect,
            );
        }
    }
}

/// IPv4 options on datagrams and TCP SYNs `attacker` sends its allowed
/// peer `remote`: a lone router alert (IGMP's) always passes; record
/// route and a four-byte stream identifier are `others`. TCP is what the
/// `src_` chain's own-TCP fast path accepts ahead of the option drops,
/// only when the header has no options.
fn ip4_options(p: &mut Probes, others: Expect, when: &str) {
    let (IpAddr::V4(a), IpAddr::V4(r)) = (p.addr("attacker", false), p.addr("remote", false))
    else {
        unreachable!()
    };
    for (what, opts, expect) in [
        ("router alert", vec![0x94, 4, 0, 0], Expect::Arrive),
        ("record route", vec![7, 7, 4, 0, 0, 0, 0], others),
        ("stream identifier", vec![136, 4, 0x12, 0x34], others),
    ] {
        for (proto, flags, name) in [(UDP, 0, "UDP"), (TCP, SYN, "TCP SYN")] {
            let id = p.id();
            let m = l4(proto, a.into(), r.into(), id, PORT, flags, 8);
            let pk = ip4(a, r, proto, id, (0, false), &opts, &m);
            p.push(
                &format!("{what} option on {name} to remote (allowed){when}"),
                "attacker",
                vec![(r.into(), pk)],
                (proto, a.into(), id, PORT),
                expect,
            );
        }
    }
}

/// Makes `netns` honour source routes on every interface (IPv4 needs
/// `all` and the interface, IPv6 takes the lesser of the two).
fn honour_source_routes(netns: &str) {
    run(Command::new("ip")
        .args(["netns", "exec", netns, "sh", "-c"])
        .arg(
            "for f in /proc/sys/net/ipv4/conf/*/accept_source_route \
                  /proc/sys/net/ipv6/conf/*/seg6_enabled \
                  /proc/sys/net/ipv6/conf/*/rpl_seg_enabled; do \
           [ -e \"$f\" ] && echo 1 > \"$f\"; done; true",
        ));
}

/// The rules of node1's `src_` chain of `attacker` whose comment has
/// `marker`: (handle, packets counted).
fn src_rules(c: &SimCluster, marker: &str) -> Vec<(String, u64)> {
    let node = c.topo.node("node1");
    let listing = netns_exec(
        &node.netns,
        &[
            "nft",
            "-a",
            "list",
            "chain",
            "inet",
            "nftpol",
            "src_x_attacker",
        ],
    );
    listing
        .lines()
        .filter(|l| l.contains(marker))
        .map(|l| {
            let handle = l
                .rsplit("# handle ")
                .next()
                .unwrap_or("")
                .trim()
                .to_string();
            let packets = l
                .split("counter packets ")
                .nth(1)
                .and_then(|t| t.split(' ').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            (handle, packets)
        })
        .collect()
}

/// With node1 (and the receiving pods) honouring source routes: without
/// the `src_` chain's drops every source route arrives at `victim`
/// (forwarded as established, policy never asked); with them, as
/// `nftpol apply` writes them, none does, and the drops count them.
fn honoured_source_routes(c: &mut SimCluster) -> (Vec<String>, usize) {
    const MARK: &str = "no source routes";
    for ns in [
        c.topo.node("node1").netns.clone(),
        pod(c, "victim").netns.clone(),
        pod(c, "remote").netns.clone(),
    ] {
        honour_source_routes(&ns);
    }
    let node = c.topo.node("node1").netns.clone();
    let drops = src_rules(c, MARK);
    assert_eq!(drops.len(), 3, "{}", c.ruleset("node1"));
    for (handle, _) in &drops {
        netns_exec(
            &node,
            &[
                "nft",
                "delete",
                "rule",
                "inet",
                "nftpol",
                "src_x_attacker",
                "handle",
                handle,
            ],
        );
    }
    let mut p = probes(c);
    p.next = 12_000;
    source_routes(&mut p, Expect::Arrive, " (sysctls on, drops removed)");
    ip4_options(&mut p, Expect::Arrive, " (drops removed)");
    p.whole(
        "UDP to remote (allowed, control)",
        "attacker",
        (p.addr("attacker", false), p.addr("remote", false)),
        (UDP, PORT),
        Expect::Arrive,
    );
    let mut wrong = run_probes(c, &p.list);
    let sent = p.list.len();
    c.program();
    let mut q = probes(c);
    q.next = 13_000;
    source_routes(&mut q, Expect::Never, " (sysctls on)");
    ip4_options(&mut q, Expect::Never, "");
    for v6 in [false, true] {
        q.whole(
            "UDP to remote after apply (allowed, control)",
            "attacker",
            (q.addr("attacker", v6), q.addr("remote", v6)),
            (UDP, PORT),
            Expect::Arrive,
        );
    }
    wrong.extend(run_probes(c, &q.list));
    let counted = src_rules(c, MARK);
    if counted.len() != 3 || counted.iter().any(|(_, n)| *n == 0) {
        wrong.push(format!("source-route drops not all counted: {counted:?}"));
    }
    (wrong, sent + q.list.len())
}

/// A UDP datagram `victim` sends the attacker from `VICTIM_FLOW_PORT`, and the
/// attacker's answer to it: through conntrack an established flow, so
/// it arrives although policy denies the attacker a new one.
fn answer_to_victim(p: &mut Probes, v6: bool, expect: Expect, what: &str) {
    let (a, v) = (p.addr("attacker", v6), p.addr("victim", v6));
    let id = p.id();
    spawn_in(&pod(p.c, "victim").netns, move || {
        let s = flow_socket(SocketAddr::new(v, VICTIM_FLOW_PORT));
        let _ = s.send_to(b"open", (a, id));
    })
    .join()
    .expect("victim sends");
    let m = l4(UDP, a, v, id, VICTIM_FLOW_PORT, 0, 8);
    let pk = match (a, v) {
        (IpAddr::V4(s), IpAddr::V4(d)) => ip4(s, d, UDP, id, (0, false), &[], &m),
        (IpAddr::V6(s), IpAddr::V6(d)) => ip6(s, d, 64, &[], UDP, &m),
        _ => unreachable!(),
    };
    p.push(
        &format!("answer to a datagram victim sent {what}"),
        "attacker",
        vec![(v, pk)],
        (UDP, a, id, VICTIM_FLOW_PORT),
        expect,
    );
}

fn probes(c: &SimCluster) -> Probes<'_> {
    Probes {
        c,
        next: 3000,
        ident: 0x7000,
        list: Vec::new(),
    }
}

fn every_probe(p: &mut Probes, bridged: bool) {
    for v6 in [false, true] {
        fragments(p, v6);
        answer_to_victim(p, v6, Expect::Arrive, "(control: conntrack lets it in)");
    }
    extension_headers(p);
    link_local_sources(p);
    odd_sources(p, p.c.topo.node("node1"), bridged);
    unnamed_protocols(p);
    source_routes(p, Expect::Never, " (node defaults)");
    ip4_options(p, Expect::Never, "");
}

/// What another program on the node installs: a table whose base chains
/// come first (`notrack` and a mark before defragmentation, an `accept`
/// in forward and input) and iptables rules accepting everything.
const INTRUDER: &str = "table inet intruder {
  chain early_prerouting { type filter hook prerouting priority -450; policy accept; meta mark set 0x1 notrack accept; }
  chain early_forward { type filter hook forward priority -10; policy accept; meta mark set 0xffffffff accept; }
  chain early_input { type filter hook input priority -10; policy accept; accept; }
}";

fn intruder(c: &SimCluster, on: bool) {
    for n in &c.topo.nodes {
        if on {
            c.load_nft(&n.name, INTRUDER);
        } else {
            run(Command::new("ip").args([
                "netns", "exec", &n.netns, "nft", "delete", "table", "inet", "intruder",
            ]));
        }
        for tool in ["iptables", "ip6tables"] {
            for chain in ["FORWARD", "INPUT"] {
                let op = if on { "-I" } else { "-D" };
                run(Command::new("ip")
                    .args(["netns", "exec", &n.netns, tool, op, chain, "-j", "ACCEPT"]));
            }
        }
    }
}

/// Under the intruder: untracked, undefragmented packets are still
/// judged by policy, and leave nothing conntrack would let back in.
fn beside_another_program(p: &mut Probes) {
    for v6 in [false, true] {
        for (from, to, proto, dport, expect) in [
            ("friend", "victim", UDP, PORT, Expect::Arrive),
            ("attacker", "remote", TCP, PORT, Expect::Arrive),
            ("friend", "guarded", TCP, PORT, Expect::Arrive),
            ("attacker", "victim", TCP, PORT, Expect::Never),
            ("attacker", "victim", UDP, PORT, Expect::Never),
            ("attacker", "victim2", UDP, PORT, Expect::Never),
            ("friend", "guarded", TCP, DENIED_PORT, Expect::Never),
            ("friend", "guarded", UDP, PORT, Expect::Never),
        ] {
            let (src, dst) = (p.addr(from, v6), p.addr(to, v6));
            let ctl = if expect == Expect::Arrive {
                " (control)"
            } else {
                ""
            };
            p.whole(
                &format!(
                    "under another program: protocol {proto} port {dport} {from} -> {to}{ctl}"
                ),
                from,
                (src, dst),
                (proto, dport),
                expect,
            );
        }
        // Fragments now reach `forward` one by one: a later fragment has
        // no port to match, so a port rule never passes it.
        let (src, dst) = (p.addr("friend", v6), p.addr("guarded", v6));
        let (small, big) = if v6 { (1256, 1400) } else { (16, 40) };
        for (proto, dport) in [(UDP, PORT), (TCP, DENIED_PORT)] {
            let id = p.id();
            let m = l4(
                proto,
                src,
                dst,
                id,
                dport,
                SYN,
                big - if proto == TCP { 20 } else { 8 },
            );
            let ident = p.fresh_ident();
            let packets = cut(
                src,
                dst,
                proto,
                &m,
                &[(0, small, true), (small, big - small, false)],
                ident,
            );
            p.push(
                &format!("under another program: protocol {proto} port {dport} in two fragments"),
                "friend",
                packets,
                (proto, src, id, dport),
                Expect::Never,
            );
        }
    }
}

fn evasions(bridged: bool) {
    let mut c = cluster(bridged);
    // A pod that forwards what it receives (CAP_NET_ADMIN in its own
    // namespace) and processes segment routing headers: the bounce must
    // still meet its node's source validation.
    run(Command::new("ip")
        .args([
            "netns",
            "exec",
            &pod(&c, "remote").netns,
            "sysctl",
            "-q",
            "-w",
        ])
        .args([
            "net.ipv6.conf.all.forwarding=1",
            "net.ipv6.conf.all.seg6_enabled=1",
            "net.ipv6.conf.eth0.seg6_enabled=1",
        ]));
    let layout = if bridged { "bridged" } else { "routed" };
    let t0 = Instant::now();
    let mut p = probes(&c);
    every_probe(&mut p, bridged);
    let mut wrong = run_probes(&c, &p.list);
    let n = p.list.len();
    // Another program's tables beside nftpol's.
    let mut q = probes(&c);
    q.next = 9000;
    intruder(&c, true);
    beside_another_program(&mut q);
    for v6 in [false, true] {
        // The victim's datagrams now pass untracked...
        answer_to_victim(
            &mut q,
            v6,
            Expect::Never,
            "untracked (after the other program is gone)",
        );
    }
    let (answers, first): (Vec<Probe>, Vec<Probe>) = q
        .list
        .into_iter()
        .partition(|k| k.name.contains("answer to"));
    wrong.extend(run_probes(&c, &first));
    // ...and once the other program is gone, nothing lets an answer in.
    intruder(&c, false);
    wrong.extend(run_probes(&c, &answers));
    // Last: the sysctls stay on.
    let (routed, honoured) = honoured_source_routes(&mut c);
    wrong.extend(routed);
    eprintln!(
        "{} evasion probes ({layout}), {:?}",
        n + first.len() + answers.len() + honoured,
        t0.elapsed()
    );
    assert!(
        wrong.is_empty(),
        "{}\nnode1:\n{}",
        wrong.join("\n"),
        c.ruleset("node1")
    );
}

#[test]
fn evasions_routed() {
    require_root!();
    evasions(false);
}

#[test]
fn evasions_bridged() {
    require_root!();
    require_br_netfilter!();
    evasions(true);
}

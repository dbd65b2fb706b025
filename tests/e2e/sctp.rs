//! SCTP through the data plane without an SCTP stack: this kernel has no
//! SCTP sockets (CONFIG_IP_SCTP unset), but raw IP sockets can send and
//! receive protocol 132 all the same, and netfilter (conntrack and
//! `sctp dport` matches) handles SCTP without the stack. So a probe is one
//! hand-built SCTP INIT packet (valid CRC32c, or conntrack would call it
//! invalid) sent from the source pod, and a raw socket in the destination
//! pod that records which INITs arrived. One-way, which is all a policy
//! decides: the INIT is the packet that opens an association.

use crate::cluster::{SimCluster, PROBE_TIMEOUT};
use crate::probe::{spawn_in, PORTS};
use crate::scenarios::np;
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const IPPROTO_SCTP: i32 = 132;

/// CRC32c (Castagnoli), reflected, as RFC 9260 appendix A specifies.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// An SCTP packet holding one INIT chunk whose initiate tag is `tag`.
fn init_packet(src_port: u16, dst_port: u16, tag: u32) -> Vec<u8> {
    let mut p = Vec::with_capacity(32);
    p.extend_from_slice(&src_port.to_be_bytes());
    p.extend_from_slice(&dst_port.to_be_bytes());
    p.extend_from_slice(&0u32.to_be_bytes()); // verification tag: 0 in INIT
    p.extend_from_slice(&0u32.to_be_bytes()); // checksum, filled below
    p.push(1); // chunk type INIT
    p.push(0); // flags
    p.extend_from_slice(&20u16.to_be_bytes()); // chunk length
    p.extend_from_slice(&tag.to_be_bytes()); // initiate tag (never 0)
    p.extend_from_slice(&65535u32.to_be_bytes()); // a_rwnd
    p.extend_from_slice(&1u16.to_be_bytes()); // outbound streams
    p.extend_from_slice(&1u16.to_be_bytes()); // inbound streams
    p.extend_from_slice(&tag.to_be_bytes()); // initial TSN
                                             // CRC32c goes on the wire little-endian (RFC 9260 appendix A).
    let crc = crc32c(&p);
    p[8..12].copy_from_slice(&crc.to_le_bytes());
    p
}

fn raw_socket(v6: bool) -> i32 {
    let family = if v6 { libc::AF_INET6 } else { libc::AF_INET };
    // SAFETY: plain socket(2) call; the fd is owned by the caller.
    let fd = unsafe { libc::socket(family, libc::SOCK_RAW | libc::SOCK_CLOEXEC, IPPROTO_SCTP) };
    assert!(
        fd >= 0,
        "raw SCTP socket: {}",
        std::io::Error::last_os_error()
    );
    fd
}

fn send_to(fd: i32, dst: IpAddr, packet: &[u8]) -> bool {
    // SAFETY: the sockaddr structs are fully initialised and outlive the
    // call; lengths match their types.
    let rc = unsafe {
        match dst {
            IpAddr::V4(a) => {
                let mut sa: libc::sockaddr_in = std::mem::zeroed();
                sa.sin_family = libc::AF_INET as libc::sa_family_t;
                sa.sin_addr.s_addr = u32::from_ne_bytes(a.octets());
                libc::sendto(
                    fd,
                    packet.as_ptr().cast(),
                    packet.len(),
                    0,
                    (&sa as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            }
            IpAddr::V6(a) => {
                let mut sa: libc::sockaddr_in6 = std::mem::zeroed();
                sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sa.sin6_addr.s6_addr = a.octets();
                libc::sendto(
                    fd,
                    packet.as_ptr().cast(),
                    packet.len(),
                    0,
                    (&sa as *const libc::sockaddr_in6).cast(),
                    std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                )
            }
        }
    };
    rc == packet.len() as isize
}

/// Receives on `fd`, recording the initiate tags of INITs, until `done`
/// is set and the socket's queue is empty (what arrived while this thread
/// waited for the CPU is still read).
fn collect(fd: i32, v6: bool, done: &AtomicBool, seen: &Mutex<BTreeSet<u32>>) {
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 20_000,
    };
    // SAFETY: setsockopt with a valid timeval.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
    }
    let mut buf = [0u8; 2048];
    // Bounded: the queue is finite and the caller sets `done` after at
    // most its window and cap; the count only guards against a bug.
    for _ in 0..1_000_000 {
        let finishing = done.load(Ordering::Relaxed);
        // SAFETY: buf is valid for its length.
        let n = unsafe {
            libc::recv(
                fd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                if finishing { libc::MSG_DONTWAIT } else { 0 },
            )
        };
        if n <= 0 {
            if finishing {
                return;
            }
            continue;
        }
        let pkt = &buf[..n as usize];
        // IPv4 raw sockets see the IP header, IPv6 ones do not.
        let off = if v6 {
            0
        } else {
            ((pkt[0] & 0x0f) as usize) * 4
        };
        if pkt.len() >= off + 32 && pkt[off + 12] == 1 {
            let tag =
                u32::from_be_bytes([pkt[off + 16], pkt[off + 17], pkt[off + 18], pkt[off + 19]]);
            seen.lock().expect("seen lock").insert(tag);
        }
    }
}

/// One SCTP probe: source pod, destination pod, family, port.
type Cell = (usize, usize, bool, u16);

/// One INIT to send: from the namespace `from` to `to` (an address of the
/// namespace `to_netns`, where it is watched for) on `port`.
#[derive(Clone, Debug)]
pub struct InitCell {
    pub from: String,
    pub to_netns: String,
    pub to: IpAddr,
    pub port: u16,
}

/// Sends every INIT of the matrix and reports which arrived, waiting
/// (bounded) for those `want` says must arrive.
fn sctp_matrix(c: &SimCluster, want: impl Fn(&Cell) -> bool) -> Vec<(Cell, bool)> {
    let (netns, ips) = c.netns_and_ips();
    let n = netns.len();
    let mut cells = Vec::new();
    for src in 0..n {
        for dst in 0..n {
            for v6 in [false, true] {
                for port in PORTS {
                    cells.push((src, dst, v6, port));
                }
            }
        }
    }
    let inits: Vec<InitCell> = cells
        .iter()
        .map(|&(src, dst, v6, port)| {
            let (v4a, v6a) = ips[dst];
            InitCell {
                from: netns[src].clone(),
                to_netns: netns[dst].clone(),
                to: if v6 { v6a.into() } else { v4a.into() },
                port,
            }
        })
        .collect();
    let window = PROBE_TIMEOUT + Duration::from_millis(300);
    let expected: Vec<bool> = cells.iter().map(&want).collect();
    let got = send_inits_tagged(&inits, window, 1, Some(&expected));
    cells.into_iter().zip(got).collect()
}

/// Sends one INIT per cell (twice, so one lost packet is not a verdict)
/// and reports, per cell, whether it arrived in its destination
/// namespace within `window` of the last send, with initiate tags counted
/// from `first_tag` (callers sending round after round keep their rounds
/// apart), and, when `expected` says which cells should arrive, waiting
/// past `window` (up to [`ARRIVAL_CAP`]) until those have: what a receiver that the load
/// kept off the CPU reads late is then still counted, so a cell reads as
/// dropped only when it was.
pub fn send_inits_tagged(
    cells: &[InitCell],
    window: Duration,
    first_tag: u32,
    expected: Option<&[bool]>,
) -> Vec<bool> {
    let tag_of = |i: usize| first_tag.wrapping_add(i as u32).max(1);
    let seen = Arc::new(Mutex::new(BTreeSet::new()));
    let done = Arc::new(AtomicBool::new(false));
    let mut listeners: Vec<(String, bool)> = cells
        .iter()
        .map(|c| (c.to_netns.clone(), c.to.is_ipv6()))
        .collect();
    listeners.sort();
    listeners.dedup();
    // Receivers first, so no INIT arrives before someone listens.
    let ready = Arc::new(std::sync::Barrier::new(listeners.len() + 1));
    let mut receivers = Vec::new();
    for (ns, v6) in listeners {
        let (seen, ready, done) = (seen.clone(), ready.clone(), done.clone());
        receivers.push(spawn_in(&ns, move || {
            let fd = raw_socket(v6);
            ready.wait();
            collect(fd, v6, &done, &seen);
            // SAFETY: closing the fd this thread opened.
            unsafe { libc::close(fd) };
        }));
    }
    ready.wait();
    let mut sources: Vec<&str> = cells.iter().map(|c| c.from.as_str()).collect();
    sources.sort();
    sources.dedup();
    let mut senders = Vec::new();
    for src in sources {
        let mine: Vec<(u32, IpAddr, u16)> = cells
            .iter()
            .enumerate()
            .filter(|(_, c)| c.from == src)
            .map(|(i, c)| (tag_of(i), c.to, c.port))
            .collect();
        senders.push(spawn_in(src, move || {
            let (fd4, fd6) = (raw_socket(false), raw_socket(true));
            for (tag, ip, port) in mine {
                let pkt = init_packet(40000 + (tag % 20000) as u16, port, tag);
                // The tag is the same in both copies, so it counts once.
                for _ in 0..2 {
                    assert!(
                        send_to(if ip.is_ipv6() { fd6 } else { fd4 }, ip, &pkt),
                        "send SCTP INIT"
                    );
                }
            }
            // SAFETY: closing fds this thread opened.
            unsafe {
                libc::close(fd4);
                libc::close(fd6);
            }
        }));
    }
    for s in senders {
        s.join().expect("SCTP sender");
    }
    // The window starts once everything is sent: a sender the load held
    // back does not eat into it.
    std::thread::sleep(window);
    if let Some(expected) = expected {
        let cap = Instant::now() + ARRIVAL_CAP;
        while Instant::now() < cap {
            let got = seen.lock().expect("seen lock");
            let all = (0..cells.len()).all(|i| !expected[i] || got.contains(&tag_of(i)));
            drop(got);
            if all {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    done.store(true, Ordering::Relaxed);
    for r in receivers {
        r.join().expect("SCTP receiver");
    }
    let seen = seen.lock().expect("seen lock");
    (0..cells.len())
        .map(|i| seen.contains(&tag_of(i)))
        .collect()
}

/// How long [`send_inits_tagged`] waits at most for INITs expected to
/// arrive: only a wrong drop (or a broken machine) waits this long, so it
/// is generous enough for a receiver thread a loaded CI machine keeps off
/// the CPU for seconds.
const ARRIVAL_CAP: Duration = Duration::from_secs(30);

/// Programs the nodes, sends the SCTP matrix and compares with the
/// evaluator.
pub fn check_sctp(c: &mut SimCluster, step: &str) {
    c.program();
    let model = crate::oracle::Model::load(&c.manifests());
    let want = |&(src, dst, v6, port): &Cell| {
        src == dst || model.allowed_sctp(&c.pods[src], &c.pods[dst], v6, port)
    };
    let mut observed = sctp_matrix(c, want);
    // A lost INIT on a loaded machine must not read as a drop: if an
    // expected arrival is missing, send the matrix once more and accept
    // either round for those cells (never for the ones expected denied).
    if observed.iter().any(|(cell, got)| want(cell) && !got) {
        let again = sctp_matrix(c, want);
        for ((cell, got), (_, got2)) in observed.iter_mut().zip(again) {
            if want(cell) && !*got {
                *got = got2;
            }
        }
    }
    let mut wrong = Vec::new();
    let mut allowed = 0;
    for (cell, got) in observed {
        let (src, dst, v6, port) = cell;
        let want = want(&cell);
        allowed += got as usize;
        if want != got {
            wrong.push(format!(
                "{} -> {} {} SCTP/{port}: expected {want}, observed {got}",
                c.label(src),
                c.label(dst),
                if v6 { "IPv6" } else { "IPv4" }
            ));
        }
    }
    eprintln!(
        "step {step:?}: SCTP matrix, {allowed} arrived, {} wrong",
        wrong.len()
    );
    assert!(
        wrong.is_empty(),
        "{step}:\n{}\n{}\n{}",
        wrong.join("\n"),
        c.ruleset("node1"),
        c.ruleset("node2")
    );
}

#[test]
fn crc32c_matches_the_rfc_test_vector() {
    // RFC 3720 B.4: 32 bytes of zeros.
    assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa);
    assert_eq!(crc32c(b"123456789"), 0xe306_9283);
}

/// The upstream SCTP scenarios (default deny ingress, Ports, pod and
/// namespace selector), probed with real SCTP INIT packets.
#[test]
fn sctp_by_packets() {
    require_root!();
    let mut c = SimCluster::upstream_model();
    check_sctp(&mut c, "no policies");
    c.put_policy(&np(
        "x",
        "deny-all",
        "podSelector: {}\npolicyTypes: [Ingress]",
    ));
    check_sctp(&mut c, "default deny ingress in x");
    c.clear_policies();
    c.put_policy(&np(
        "x",
        "allow-ingress-on-port-81-ns-x",
        r#"
podSelector: {matchLabels: {pod: a}}
ingress:
- from:
  - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
  ports:
  - {port: 81, protocol: SCTP}
"#,
    ));
    c.put_policy(&np(
        "y",
        "allow-ns-x-pod-a-via-namespace-pod-selector",
        r#"
podSelector: {matchLabels: {pod: a}}
ingress:
- from:
  - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: x}}
    podSelector: {matchLabels: {pod: a}}
"#,
    ));
    c.put_policy(&np(
        "z",
        "egress-sctp-named",
        "podSelector: {}\negress:\n- ports:\n  - {port: serve-80-sctp, protocol: SCTP}",
    ));
    check_sctp(&mut c, "ports, selectors and a named SCTP port");
}

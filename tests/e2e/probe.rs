//! Real packets: TCP and UDP servers inside pod namespaces and short-lived
//! clients probing every (source pod, destination pod, family, protocol,
//! port) in parallel.
//!
//! Everything runs in threads of the test process that `setns(2)` into a
//! pod's network namespace: a socket belongs to the namespace of the thread
//! that created it, so no helper processes are needed and every probe is
//! bounded by its own socket timeout. Only pod addresses of the test's own
//! topology are ever dialled.

use std::fs::File;
use std::io::{ErrorKind, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Ports every simulated pod serves, as in the upstream netpol e2e model.
pub const PORTS: [u16; 2] = [80, 81];

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub const ALL: [Proto; 2] = [Proto::Tcp, Proto::Udp];
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
        }
    }
}

/// Moves the calling thread into the network namespace `/run/netns/<netns>`.
/// Only ever called on threads spawned for that purpose.
pub fn enter_netns(netns: &str) -> std::io::Result<()> {
    let f = File::open(format!("/run/netns/{netns}"))?;
    // SAFETY: setns on a valid fd affects only the calling thread's
    // network namespace (CLONE_NEWNET is per thread).
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Spawns `f` on a fresh thread inside `netns`.
pub fn spawn_in<T: Send + 'static>(
    netns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    let netns = netns.to_string();
    std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || {
            enter_netns(&netns).unwrap_or_else(|e| panic!("setns {netns}: {e}"));
            f()
        })
        .expect("spawn probe thread")
}

/// TCP and UDP servers of one pod on [`PORTS`]; stopped and joined on drop.
pub struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// How often idle server loops look at the stop flag.
const SERVER_POLL: Duration = Duration::from_millis(20);

impl Servers {
    /// Servers bound to the given addresses. A host with several addresses
    /// (a node) needs this: a UDP socket bound to the wildcard answers from
    /// whatever address routing picks, which the client then ignores.
    pub fn start_on(netns: &str, addrs: &[IpAddr]) -> Servers {
        Servers::start_ports(netns, addrs, &PORTS, &PORTS)
    }

    /// Servers on the given TCP and UDP ports of the given addresses.
    pub fn start_ports(
        netns: &str,
        addrs: &[IpAddr],
        tcp_ports: &[u16],
        udp_ports: &[u16],
    ) -> Servers {
        let stop = Arc::new(AtomicBool::new(false));
        let addrs = addrs.to_vec();
        let (tcp_ports, udp_ports) = (tcp_ports.to_vec(), udp_ports.to_vec());
        let sockets = spawn_in(netns, move || {
            let mut tcp = Vec::new();
            let mut udp = Vec::new();
            for ip in addrs {
                for &port in &tcp_ports {
                    let addr = SocketAddr::new(ip, port);
                    let l = TcpListener::bind(addr).expect("bind TCP server");
                    widen_backlog(&l);
                    tcp.push(l);
                }
                for &port in &udp_ports {
                    let addr = SocketAddr::new(ip, port);
                    udp.push(UdpSocket::bind(addr).expect("bind UDP server"));
                }
            }
            (tcp, udp)
        })
        .join()
        .expect("server setup thread");
        let mut threads = Vec::new();
        for l in sockets.0 {
            let stop = stop.clone();
            l.set_nonblocking(true).expect("nonblocking listener");
            threads.push(std::thread::spawn(move || {
                // The handshake completes in the kernel before accept, so a
                // slow accept loop never turns an allowed probe into a
                // denied one; accepting just keeps the backlog drained.
                while !stop.load(Ordering::Relaxed) {
                    match l.accept() {
                        Ok((mut s, _)) => {
                            let _ = s.write_all(b"ok");
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            std::thread::sleep(SERVER_POLL)
                        }
                        Err(_) => std::thread::sleep(SERVER_POLL),
                    }
                }
            }));
        }
        for s in sockets.1 {
            let stop = stop.clone();
            s.set_read_timeout(Some(SERVER_POLL))
                .expect("UDP read timeout");
            threads.push(std::thread::spawn(move || {
                let mut buf = [0u8; 512];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, peer)) = s.recv_from(&mut buf) {
                        let _ = s.send_to(&buf[..n], peer);
                    }
                }
            }));
        }
        Servers { stop, threads }
    }
}

/// Room for 4096 handshaken connections not yet accepted (the kernel
/// caps it at the namespace's somaxconn, 4096 by default) instead of the
/// 128 the standard library asks for: a full accept queue drops SYNs just
/// as a filter would, and the loops that probe one flow every few
/// milliseconds fill 128 in well under a second whenever a loaded machine
/// keeps the accepting thread off the CPU.
fn widen_backlog(l: &TcpListener) {
    // SAFETY: listen(2) on a socket this function borrows; calling it on
    // a listening socket only changes the backlog.
    let rc = unsafe { libc::listen(l.as_raw_fd(), 4096) };
    assert_eq!(rc, 0, "listen: {}", std::io::Error::last_os_error());
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// What a probe that must be answered waits at most: TCP resends its SYN
/// at 1, 3 and 7 s, and the wait ends at the answer, so only a wrongly
/// dropped flow pays it, and a loaded CI machine cannot fail a good run.
pub const ANSWER_LIMIT: Duration = Duration::from_secs(10);

/// Whether one connection attempt got through: TCP handshake completed or
/// UDP echo received. A drop shows as a timeout.
pub fn probe_once(dst: IpAddr, proto: Proto, port: u16, timeout: Duration) -> bool {
    // Two sends per UDP attempt so a single lost datagram on a busy
    // machine does not read as "denied".
    probe_with(dst, proto, port, timeout, 2)
}

/// One attempt with exactly one SYN or one datagram (the timeout must stay
/// under TCP's 1 s SYN retransmit): any packet dropped, even briefly, shows.
/// Used where a retransmission could hide a gap.
pub fn probe_strict(dst: IpAddr, proto: Proto, port: u16, timeout: Duration) -> bool {
    probe_with(dst, proto, port, timeout, 1)
}

fn probe_with(dst: IpAddr, proto: Proto, port: u16, timeout: Duration, udp_sends: u32) -> bool {
    let addr = SocketAddr::new(dst, port);
    match proto {
        Proto::Tcp => match TcpStream::connect_timeout(&addr, timeout) {
            Ok(_) => true,
            // A RST means the packet reached the pod: not filtered.
            Err(e) => e.kind() == ErrorKind::ConnectionRefused,
        },
        Proto::Udp => {
            let Some(s) = fresh_udp_socket(addr) else {
                return false;
            };
            if s.connect(addr).is_err() {
                return false;
            }
            let half = timeout / udp_sends;
            let deadline = Instant::now() + timeout;
            let mut buf = [0u8; 64];
            for _ in 0..udp_sends {
                if s.send(b"nftpol-e2e-probe").is_err() {
                    return false;
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                let _ = s.set_read_timeout(Some(half.min(left).max(Duration::from_millis(1))));
                match s.recv(&mut buf) {
                    Ok(_) => return true,
                    Err(e) if e.kind() == ErrorKind::ConnectionRefused => return true,
                    Err(_) => {}
                }
            }
            false
        }
    }
}

/// A UDP socket bound to `at` with SO_REUSEADDR, for flows from a fixed
/// source port that tests bind over and over. The socket of the flow before is
/// closed here but can live on for a moment: a child that another test
/// thread forked meanwhile holds a copy of this process's descriptors
/// until its exec, which a loaded machine delays, and a plain bind then
/// fails with AddrInUse (it did, on CI and under stress). Every bind of
/// these ports sets the option, so the lingering socket lets the new one
/// bind; these sockets only send (what arrives is watched by raw sockets
/// or conntrack), so two bound at once change nothing.
pub fn flow_socket(at: SocketAddr) -> std::net::UdpSocket {
    let s = socket2::Socket::new(socket2::Domain::for_address(at), socket2::Type::DGRAM, None)
        .expect("UDP socket");
    s.set_reuse_address(true).expect("SO_REUSEADDR");
    s.bind(&at.into())
        .unwrap_or_else(|e| panic!("bind {at}: {e}"));
    s.into()
}

/// Source ports of UDP probes: below the kernel's ephemeral range
/// (32768-60999), so nothing else picks them, and below 27,000: the
/// ports from there to the ephemeral range are left to the fixed flow
/// sources tests bind themselves (evasion, icmp_related), so no probe of
/// the same namespace can hold one.
const UDP_SOURCE_PORTS: std::ops::Range<u16> = 10_000..27_000;

/// A UDP socket for a new flow to `dst`, bound to a source port no earlier
/// probe to `dst` used (until 17,000 probes to the same address and port
/// have gone by).
///
/// Why not let the kernel pick: its pick is random, so sooner or later a
/// probe gets the 5-tuple of an earlier probe whose conntrack entry is
/// still alive (30 s for UDP). Every node accepts `ct state established`
/// first, so that probe is not a new flow: it rides on the old one, and a
/// flow allowed before a policy change reads as allowed after it. Over
/// the few thousand UDP probes of an agent run that happened about once
/// in twelve runs (one IPv6 UDP cell wrongly allowed; the node's conntrack
/// table held the earlier entry with the same source port, refreshed).
fn fresh_udp_socket(dst: SocketAddr) -> Option<UdpSocket> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static NEXT: OnceLock<Mutex<HashMap<SocketAddr, u16>>> = OnceLock::new();
    let unspecified: IpAddr = match dst {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    // A port some other socket of this namespace holds is skipped. The
    // probes of one wave from one pod hold dozens of ports at once, and
    // every destination's counter runs through the same band: a matrix
    // of 9 pods needed up to 8 tries, so the bound is far above that (a
    // probe left without a socket reads as dropped); a bind costs
    // microseconds.
    for _ in 0..1024 {
        let port = {
            let mut next = NEXT
                .get_or_init(Default::default)
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let p = next.entry(dst).or_insert(UDP_SOURCE_PORTS.start);
            let port = *p;
            *p = if port + 1 >= UDP_SOURCE_PORTS.end {
                UDP_SOURCE_PORTS.start
            } else {
                port + 1
            };
            port
        };
        if let Ok(s) = UdpSocket::bind(SocketAddr::new(unspecified, port)) {
            return Some(s);
        }
    }
    None
}

/// One cell of a reachability matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Probe {
    /// Index into the topology's pod list.
    pub src: usize,
    pub dst: usize,
    pub v6: bool,
    pub proto: Proto,
    pub port: u16,
}

/// Every probe between `pods` pods for the given families.
pub fn all_probes(pods: usize, families: &[bool]) -> Vec<Probe> {
    let mut v = Vec::new();
    for &v6 in families {
        for proto in Proto::ALL {
            for port in PORTS {
                for src in 0..pods {
                    for dst in 0..pods {
                        v.push(Probe {
                            src,
                            dst,
                            v6,
                            proto,
                            port,
                        });
                    }
                }
            }
        }
    }
    v
}

/// Runs every probe in parallel, each from a thread inside its source
/// pod's namespace. `netns[i]` and `ips[i]` describe pod i.
pub fn run_probes(
    probes: &[Probe],
    netns: &[String],
    ips: &[(Ipv4Addr, Ipv6Addr)],
    timeout: Duration,
) -> Vec<bool> {
    // Bounded parallelism: enough to finish a 648-probe matrix in about one
    // timeout, few enough not to starve the 2-core machine.
    const WAVE: usize = 256;
    let mut out = Vec::with_capacity(probes.len());
    for chunk in probes.chunks(WAVE) {
        let handles: Vec<_> = chunk
            .iter()
            .map(|p| {
                let (v4, v6) = ips[p.dst];
                let dst = if p.v6 { IpAddr::V6(v6) } else { IpAddr::V4(v4) };
                let (proto, port) = (p.proto, p.port);
                spawn_in(&netns[p.src], move || probe_once(dst, proto, port, timeout))
            })
            .collect();
        out.extend(handles.into_iter().map(|h| h.join().expect("probe thread")));
    }
    out
}

//! The benchmark's network and traffic: per configuration, a node
//! namespace routing between a client pod namespace and a server pod
//! namespace over veth pairs (the e2e suite's routed layout: the pod's /32
//! routed on the node, a link-local gateway in the pod), a server that
//! answers TCP and UDP, and the three measurements. Every namespace is a
//! `nftpol_test_support::Netns` (`nftpol-t-…`, deleted on drop); the host
//! namespace is only ever the place `ip` is started from.

use crate::cluster::{CLIENT_IP, DENIED_PORT, PORT, SERVER_IP};
use nftpol_test_support::Netns;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const GW: &str = "169.254.1.1";
/// How long a blocked server thread takes to notice the stop flag.
const POLL: Duration = Duration::from_millis(200);
const IO_TIMEOUT: Duration = Duration::from_secs(3);
const UDP_LOSS_WAIT: Duration = Duration::from_millis(20);

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn ip(ns: &Netns, args: &[&str]) -> Result<(), String> {
    run(Command::new("ip").arg("-n").arg(ns.name()).args(args))
}

pub fn sysctl(ns: &Netns, settings: &[&str]) -> Result<(), String> {
    run(ns.cmd("sysctl").args(["-q", "-w"]).args(settings))
}

/// Runs `prog args…` inside `ns` with `input` on its stdin.
pub fn pipe(ns: &Netns, prog: &str, args: &[&str], input: &str) -> Result<(), String> {
    let mut child = ns
        .cmd(prog)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{prog}: {e}"))?;
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    stdin
        .write_all(input.as_bytes())
        .map_err(|e| format!("{prog}: writing stdin: {e}"))?;
    drop(stdin);
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{prog}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{prog} {args:?} in {} failed: {}",
            ns.name(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The calling thread's id, as /proc names it.
fn own_tid() -> Option<u32> {
    let link = std::fs::read_link("/proc/thread-self").ok()?;
    link.file_name()?.to_str()?.parse().ok()
}

/// Nanoseconds thread `tid` of this process has run on a CPU so far
/// (/proc's schedstat: the scheduler's own clock, not tick samples). This
/// kernel charges softirq work to the task it interrupted, so a sending
/// thread's time includes the node's forwarding and the receiving pod's
/// stack that the send set off; what ksoftirqd or a timer does later
/// (TIME_WAIT, conntrack expiry) is nobody's here.
fn cpu_ns(tid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// What one connection phase measured.
pub struct TcpRun {
    /// New connections per second.
    pub rate: f64,
    pub failed: usize,
    /// Connections completed.
    pub done: usize,
    /// CPU time the phase's client threads and the server's TCP workers
    /// used, in nanoseconds.
    pub cpu_ns: u64,
}

/// Server threads answering one byte per TCP connection (then closing,
/// so TIME_WAIT stays on the server and the client's ports are free
/// again) and echoing UDP; stopped and joined on drop. Threads are named
/// after the site (`<tag>-srv`, `<tag>-udp`) so a system profile can tell
/// configurations apart.
struct Server {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// Thread ids of the TCP workers, for their CPU time.
    tcp_tids: Arc<Mutex<Vec<u32>>>,
    /// Bound and listening but never accepted from: a connection to it
    /// completes only when nothing drops the SYN.
    _denied: TcpListener,
}

impl Server {
    fn start(ns: &Netns, tag: &str, workers: usize) -> Result<Server, String> {
        let (tcp, udp, denied) = ns
            .run(|| -> std::io::Result<_> {
                let listener = |port: u16| -> std::io::Result<TcpListener> {
                    let s = socket2::Socket::new(
                        socket2::Domain::IPV4,
                        socket2::Type::STREAM,
                        Some(socket2::Protocol::TCP),
                    )?;
                    s.set_reuse_address(true)?;
                    s.bind(&SocketAddr::from((SERVER_IP, port)).into())?;
                    s.listen(4096)?;
                    // accept() honours SO_RCVTIMEO: the workers wake to see
                    // the stop flag.
                    s.set_read_timeout(Some(POLL))?;
                    Ok(s.into())
                };
                let udp = UdpSocket::bind((SERVER_IP, PORT))?;
                udp.set_read_timeout(Some(POLL))?;
                Ok((listener(PORT)?, udp, listener(DENIED_PORT)?))
            })
            .map_err(|e| format!("server sockets: {e}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let tcp_tids = Arc::new(Mutex::new(Vec::new()));
        let mut threads = Vec::new();
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(format!("{tag}-{name}"))
                .spawn(f)
                .map_err(|e| format!("server thread: {e}"))
        };
        for _ in 0..workers {
            let (l, stop) = (tcp.try_clone().map_err(|e| e.to_string())?, stop.clone());
            let tids = tcp_tids.clone();
            threads.push(spawn(
                "srv",
                Box::new(move || {
                    if let (Some(tid), Ok(mut v)) = (own_tid(), tids.lock()) {
                        v.push(tid);
                    }
                    while !stop.load(Ordering::Relaxed) {
                        if let Ok((mut s, _)) = l.accept() {
                            let _ = s.set_read_timeout(Some(IO_TIMEOUT));
                            let mut b = [0u8; 1];
                            if s.read_exact(&mut b).is_ok() {
                                let _ = s.write_all(&b);
                            }
                        }
                    }
                }),
            )?);
        }
        let stop2 = stop.clone();
        threads.push(spawn(
            "udp",
            Box::new(move || {
                let mut b = [0u8; 64];
                while !stop2.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = udp.recv_from(&mut b) {
                        let _ = udp.send_to(&b[..n], from);
                    }
                }
            }),
        )?);
        Ok(Server {
            stop,
            threads,
            tcp_tids,
            _denied: denied,
        })
    }

    /// CPU time the TCP workers have used so far, in nanoseconds.
    fn tcp_cpu_ns(&self) -> u64 {
        self.tcp_tids
            .lock()
            .map(|v| v.iter().map(|&t| cpu_ns(t)).sum())
            .unwrap_or(0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// One configuration's namespaces. Fields drop in order: the server's
/// threads stop before the namespaces go.
pub struct Site {
    tag: String,
    server: Server,
    pub node: Netns,
    pub client: Netns,
    _server_ns: Netns,
}

/// One connection: connect, one byte each way, wait for the server's close,
/// close. Returns how long `connect` took.
fn one_connection(to: SocketAddr, connect_timeout: Duration) -> std::io::Result<Duration> {
    let t = Instant::now();
    let mut s = TcpStream::connect_timeout(&to, connect_timeout)?;
    let connected = t.elapsed();
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.write_all(&[1])?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b)?;
    if s.read(&mut b)? != 0 {
        return Err(std::io::Error::other("server sent more than one byte"));
    }
    Ok(connected)
}

impl Site {
    /// Builds the three namespaces and starts the server.
    pub fn build(tag: &str, server_workers: usize) -> Result<Site, String> {
        let node = Netns::try_create(&format!("{tag}-node"))?;
        let client = Netns::try_create(&format!("{tag}-cli"))?;
        let server_ns = Netns::try_create(&format!("{tag}-srv"))?;
        sysctl(
            &node,
            &["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"],
        )?;
        // Tens of thousands of connections per configuration: the whole
        // port range, and reuse of ports whose TIME_WAIT the client holds.
        sysctl(
            &client,
            &[
                "net.ipv4.ip_local_port_range=1024 65535",
                "net.ipv4.tcp_tw_reuse=1",
            ],
        )?;
        for (pod, dev, addr) in [
            (&client, "vcli", CLIENT_IP),
            (&server_ns, "vsrv", SERVER_IP),
        ] {
            ip(
                &node,
                &[
                    "link",
                    "add",
                    dev,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "eth0",
                    "netns",
                    pod.name(),
                ],
            )?;
            ip(&node, &["addr", "add", &format!("{GW}/32"), "dev", dev])?;
            ip(&node, &["link", "set", dev, "up"])?;
            ip(&node, &["route", "add", &format!("{addr}/32"), "dev", dev])?;
            ip(pod, &["addr", "add", &format!("{addr}/32"), "dev", "eth0"])?;
            ip(pod, &["link", "set", "eth0", "up"])?;
            ip(pod, &["route", "add", GW, "dev", "eth0", "scope", "link"])?;
            ip(pod, &["route", "add", "default", "via", GW, "dev", "eth0"])?;
        }
        let server = Server::start(&server_ns, tag, server_workers)?;
        Ok(Site {
            tag: tag.to_string(),
            server,
            node,
            client,
            _server_ns: server_ns,
        })
    }

    /// Waits (bounded) until a connection and a UDP exchange get through,
    /// then checks that the denied port is dropped exactly when the
    /// configuration enforces: a ruleset that lets everything through
    /// would make its figures meaningless.
    pub fn check(&self, enforces: bool) -> Result<(), String> {
        self.client.run(|| {
            let to = SocketAddr::from((SERVER_IP, PORT));
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match one_connection(to, Duration::from_millis(500)) {
                    Ok(_) => break,
                    Err(e) if Instant::now() > deadline => {
                        return Err(format!("client cannot reach the server: {e}"))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
            udp_exchange(1, Duration::from_secs(5))
                .map_err(|e| format!("no UDP answer from the server: {e}"))?;
            let denied = SocketAddr::from((SERVER_IP, DENIED_PORT));
            let got = TcpStream::connect_timeout(&denied, Duration::from_millis(500)).is_ok();
            if got == enforces {
                return Err(format!(
                    "port {DENIED_PORT}: connection {}, but the configuration {}",
                    if got { "accepted" } else { "dropped" },
                    if enforces {
                        "enforces policy"
                    } else {
                        "has no rules"
                    }
                ));
            }
            Ok(())
        })
    }

    /// New connections per second from `clients` parallel clients (threads
    /// named `<tag>-cli`), for `time` or `max` connections, whichever ends
    /// first.
    pub fn tcp_rate(&self, clients: usize, time: Duration, max: usize) -> TcpRun {
        let done = AtomicUsize::new(0);
        let failed = AtomicUsize::new(0);
        let client_cpu = AtomicU64::new(0);
        let server_cpu = self.server.tcp_cpu_ns();
        let t0 = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..clients {
                let spawned = std::thread::Builder::new()
                    .name(format!("{}-cli", self.tag))
                    .spawn_scoped(s, || {
                        let cpu0 = own_tid().map(cpu_ns);
                        if self.client.enter().is_err() {
                            failed.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                        let to = SocketAddr::from((SERVER_IP, PORT));
                        while t0.elapsed() < time && done.load(Ordering::Relaxed) < max {
                            match one_connection(to, IO_TIMEOUT) {
                                Ok(_) => done.fetch_add(1, Ordering::Relaxed),
                                Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                            };
                        }
                        if let (Some(c0), Some(c1)) = (cpu0, own_tid().map(cpu_ns)) {
                            client_cpu.fetch_add(c1.saturating_sub(c0), Ordering::Relaxed);
                        }
                    });
                if spawned.is_err() {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        let n = done.load(Ordering::Relaxed);
        TcpRun {
            rate: n as f64 / t0.elapsed().as_secs_f64(),
            failed: failed.into_inner(),
            done: n,
            cpu_ns: client_cpu.into_inner() + self.server.tcp_cpu_ns().saturating_sub(server_cpu),
        }
    }

    /// Connect times of one client (a thread named `<tag>-lat`) making
    /// connections one after another.
    pub fn connect_latency(&self, time: Duration, max: usize) -> Vec<Duration> {
        std::thread::scope(|s| {
            let spawned = std::thread::Builder::new()
                .name(format!("{}-lat", self.tag))
                .spawn_scoped(s, || {
                    let mut v = Vec::new();
                    if self.client.enter().is_err() {
                        return v;
                    }
                    let to = SocketAddr::from((SERVER_IP, PORT));
                    let t0 = Instant::now();
                    while t0.elapsed() < time && v.len() < max {
                        if let Ok(d) = one_connection(to, IO_TIMEOUT) {
                            v.push(d);
                        }
                    }
                    v
                });
            spawned.ok().and_then(|h| h.join().ok()).unwrap_or_default()
        })
    }

    /// UDP request/response exchanges per second on one flow (established
    /// after its first packet), and the requests that went unanswered.
    pub fn udp_rate(&self, time: Duration, max: usize) -> (f64, usize) {
        self.client
            .run(|| udp_exchange(max, time))
            .unwrap_or((0.0, max))
    }
}

/// One byte to the server and its echo back, `max` times or for `time`;
/// returns exchanges per second (after one exchange that establishes the
/// flow) and how many requests went unanswered. A lost datagram costs
/// `UDP_LOSS_WAIT` and is sent again, so a loss under load does not stall
/// the phase.
fn udp_exchange(max: usize, time: Duration) -> std::io::Result<(f64, usize)> {
    let s = UdpSocket::bind((CLIENT_IP, 0))?;
    s.connect((SERVER_IP, PORT))?;
    s.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut b = [0u8; 64];
    s.send(&[1])?;
    s.recv(&mut b)?;
    s.set_read_timeout(Some(UDP_LOSS_WAIT))?;
    let t0 = Instant::now();
    let (mut n, mut lost) = (0, 0);
    while n < max && t0.elapsed() < time {
        s.send(&[1])?;
        match s.recv(&mut b) {
            Ok(_) => n += 1,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                lost += 1
            }
            Err(e) => return Err(e),
        }
    }
    Ok((n as f64 / t0.elapsed().as_secs_f64(), lost))
}

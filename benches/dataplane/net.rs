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
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
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

/// Server threads answering one byte per TCP connection (then closing,
/// so TIME_WAIT stays on the server and the client's ports are free
/// again) and echoing UDP; stopped and joined on drop.
struct Server {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// Bound and listening but never accepted from: a connection to it
    /// completes only when nothing drops the SYN.
    _denied: TcpListener,
}

impl Server {
    fn start(ns: &Netns, workers: usize) -> Result<Server, String> {
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
        let mut threads = Vec::new();
        for _ in 0..workers {
            let (l, stop) = (tcp.try_clone().map_err(|e| e.to_string())?, stop.clone());
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((mut s, _)) = l.accept() {
                        let _ = s.set_read_timeout(Some(IO_TIMEOUT));
                        let mut b = [0u8; 1];
                        if s.read_exact(&mut b).is_ok() {
                            let _ = s.write_all(&b);
                        }
                    }
                }
            }));
        }
        let stop2 = stop.clone();
        threads.push(std::thread::spawn(move || {
            let mut b = [0u8; 64];
            while !stop2.load(Ordering::Relaxed) {
                if let Ok((n, from)) = udp.recv_from(&mut b) {
                    let _ = udp.send_to(&b[..n], from);
                }
            }
        }));
        Ok(Server {
            stop,
            threads,
            _denied: denied,
        })
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
    _server: Server,
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
        let server = Server::start(&server_ns, server_workers)?;
        Ok(Site {
            _server: server,
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

    /// New connections per second from `clients` parallel clients, for
    /// `time` or `max` connections, whichever ends first. Returns (rate,
    /// failed connections).
    pub fn tcp_rate(&self, clients: usize, time: Duration, max: usize) -> (f64, usize) {
        let done = AtomicUsize::new(0);
        let failed = AtomicUsize::new(0);
        let t0 = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..clients {
                s.spawn(|| {
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
                });
            }
        });
        let n = done.load(Ordering::Relaxed);
        (n as f64 / t0.elapsed().as_secs_f64(), failed.into_inner())
    }

    /// Connect times of one client making connections one after another.
    pub fn connect_latency(&self, time: Duration, max: usize) -> Vec<Duration> {
        self.client.run(|| {
            let to = SocketAddr::from((SERVER_IP, PORT));
            let t0 = Instant::now();
            let mut v = Vec::new();
            while t0.elapsed() < time && v.len() < max {
                if let Ok(d) = one_connection(to, IO_TIMEOUT) {
                    v.push(d);
                }
            }
            v
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

//! The agent cutting live connections a policy change denies
//! (`--revoke-denied-connections`), and leaving them alone without it.
//!
//! Open TCP connections, IPv4 and IPv6, from x/a and x/c (node1) to an
//! echo server in x/b (node2). With the option on: a policy admitting only
//! x/c into x/b cuts x/a's connections and keeps x/c's; a loosening keeps
//! x/c's too. With it off (upstream behaviour), the same tightening leaves
//! x/a's connections working.

use crate::agent::{converge, Agent};
use crate::cluster::SimCluster;
use crate::probe::spawn_in;
use crate::scenarios::np;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const ECHO_PORT: u16 = 7070;
/// An answer a working connection must give (generous: a busy machine;
/// a working connection answers at once).
const ANSWER: Duration = Duration::from_secs(30);
/// How long a cut connection is given to answer anyway. A slow machine
/// can only make this pass for a connection that was really cut.
const SILENCE: Duration = Duration::from_secs(2);
/// How long the agent may take to report its revocation pass (polled, so
/// generous costs nothing: a debug-built agent on a loaded CI machine).
const REVOKED: Duration = Duration::from_secs(60);
/// Connections the echo server serves at most.
const MAX_CONNS: usize = 16;

/// A TCP echo server in a pod; stopped and joined on drop.
struct Echo {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Echo {
    fn start(netns: &str) -> Echo {
        let stop = Arc::new(AtomicBool::new(false));
        let l = spawn_in(netns, || {
            TcpListener::bind(SocketAddr::new(
                IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
                ECHO_PORT,
            ))
            .expect("bind echo server")
        })
        .join()
        .expect("echo setup");
        l.set_nonblocking(true).expect("nonblocking");
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut conns: Vec<JoinHandle<()>> = Vec::new();
            while !s.load(Ordering::Relaxed) && conns.len() < MAX_CONNS {
                match l.accept() {
                    Ok((mut c, _)) => {
                        let s = s.clone();
                        conns.push(std::thread::spawn(move || {
                            let _ = c.set_nonblocking(false);
                            let _ = c.set_read_timeout(Some(Duration::from_millis(50)));
                            let mut buf = [0u8; 64];
                            while !s.load(Ordering::Relaxed) {
                                match c.read(&mut buf) {
                                    Ok(0) => return,
                                    Ok(n) => {
                                        if c.write_all(&buf[..n]).is_err() {
                                            return;
                                        }
                                    }
                                    Err(e)
                                        if matches!(
                                            e.kind(),
                                            ErrorKind::WouldBlock | ErrorKind::TimedOut
                                        ) => {}
                                    Err(_) => return,
                                }
                            }
                        }));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
            for c in conns {
                let _ = c.join();
            }
        });
        Echo {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A connection from pod netns `from` to `to`, already echoing once.
fn connect(from: &str, to: IpAddr) -> TcpStream {
    let mut s = spawn_in(from, move || {
        TcpStream::connect_timeout(&SocketAddr::new(to, ECHO_PORT), ANSWER)
            .expect("connect to echo")
    })
    .join()
    .expect("connect thread");
    assert!(echoes(&mut s, ANSWER), "a fresh connection to {to} echoes");
    s
}

/// Whether the connection echoes a message within `within`.
fn echoes(s: &mut TcpStream, within: Duration) -> bool {
    let msg = b"ping";
    if s.write_all(msg).is_err() {
        return false;
    }
    let _ = s.set_read_timeout(Some(within));
    let mut got = [0u8; 4];
    s.read_exact(&mut got).is_ok() && &got == msg
}

fn wait_for_log(agent: &Agent, needle: &str) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < REVOKED {
        if agent.log_text().contains(needle) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

const CUT_LOG: &str = "cut live connections the new ruleset denies";

fn b_only_from(pods: &str) -> String {
    np(
        "x",
        "b-ingress",
        &format!("podSelector: {{matchLabels: {{pod: b}}}}\ningress:\n- from:\n  - podSelector: {{matchExpressions: [{{key: pod, operator: In, values: [{pods}]}}]}}"),
    )
}

struct Flows {
    denied: Vec<TcpStream>,
    kept: Vec<TcpStream>,
}

/// x/a -> x/b (to be denied) and x/c -> x/b (kept), both families.
fn open_flows(c: &SimCluster) -> Flows {
    let pod = |n: &str| &c.topo.pods[c.pod_index("x", n)];
    let (a, b, cc) = (pod("a"), pod("b"), pod("c"));
    let to = [IpAddr::V4(b.v4), IpAddr::V6(b.v6)];
    Flows {
        denied: to.iter().map(|t| connect(&a.netns, *t)).collect(),
        kept: to.iter().map(|t| connect(&cc.netns, *t)).collect(),
    }
}

fn start_agents(c: &SimCluster, dir: &std::path::Path, tag: &str, extra: &[&str]) -> Vec<Agent> {
    c.topo
        .nodes
        .iter()
        .map(|n| {
            let log = c.dir.join(format!("revoke-{tag}-{}.log", n.name));
            Agent::start_with(&n.netns, &n.name, dir, log, extra)
        })
        .collect()
}

fn logs(agents: &[Agent]) -> String {
    agents
        .iter()
        .map(Agent::log_text)
        .collect::<Vec<_>>()
        .join("\n---\n")
}

#[test]
fn open_connections_are_cut_on_tightening_only_when_asked() {
    require_root!();
    let mut c = SimCluster::upstream_model();
    let scratch = c.topo.add_scratch();
    c.topo.wait_links_up();
    let b = c.pod_index("x", "b");
    assert_eq!(
        c.topo.pods[b].node, "node2",
        "x/b is on the other node than x/a and x/c"
    );
    let _echo = Echo::start(&c.topo.pods[b].netns);
    let dir = c.dir.join("revoke");

    // With the option on.
    c.write_manifests_to(&dir);
    let mut agents = start_agents(&c, &dir, "on", &["--revoke-denied-connections"]);
    converge(&c, &mut agents, &scratch, &dir, Instant::now());
    let mut f = open_flows(&c);
    c.put_policy(&b_only_from("c"));
    c.write_manifests_to(&dir);
    converge(&c, &mut agents, &scratch, &dir, Instant::now());
    assert!(
        wait_for_log(&agents[1], CUT_LOG),
        "node2's agent never reported cutting connections:\n{}",
        logs(&agents)
    );
    for (i, s) in f.denied.iter_mut().enumerate() {
        assert!(
            !echoes(s, SILENCE),
            "x/a -> x/b connection {i} still answers after the tightening:\n{}",
            logs(&agents)
        );
    }
    for (i, s) in f.kept.iter_mut().enumerate() {
        assert!(
            echoes(s, ANSWER),
            "x/c -> x/b connection {i} was cut by the tightening"
        );
    }
    // A loosening runs a revocation pass too; it cuts nothing allowed.
    c.put_policy(&b_only_from("a, c"));
    c.write_manifests_to(&dir);
    converge(&c, &mut agents, &scratch, &dir, Instant::now());
    for (i, s) in f.kept.iter_mut().enumerate() {
        assert!(
            echoes(s, ANSWER),
            "x/c -> x/b connection {i} was cut by the loosening"
        );
    }
    let m2 = agents[1].log_text();
    assert_eq!(
        m2.matches(CUT_LOG).count(),
        1,
        "only the tightening cut anything:\n{m2}"
    );
    assert!(
        m2.contains("cut=2"),
        "both families' x/a connections, on node2:\n{m2}"
    );
    drop(agents);
    drop(f);

    // With it off: the same tightening leaves open connections alone.
    c.clear_policies();
    c.write_manifests_to(&dir);
    let mut agents = start_agents(&c, &dir, "off", &[]);
    converge(&c, &mut agents, &scratch, &dir, Instant::now());
    let mut f = open_flows(&c);
    c.put_policy(&b_only_from("c"));
    c.write_manifests_to(&dir);
    converge(&c, &mut agents, &scratch, &dir, Instant::now());
    for (i, s) in f.denied.iter_mut().chain(f.kept.iter_mut()).enumerate() {
        assert!(
            echoes(s, ANSWER),
            "connection {i} was cut without --revoke-denied-connections"
        );
    }
    assert!(!logs(&agents).contains(CUT_LOG));
}

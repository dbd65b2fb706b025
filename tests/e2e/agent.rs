//! The long-running agent on the simulated cluster: `nftpol agent
//! --manifests DIR` runs in every node namespace and watches one manifest
//! directory; each step rewrites the directory, waits until both nodes'
//! tables equal what `nftpol compile` says (bounded), reports how long
//! enforcement took, and then probes the full matrix against the
//! evaluator.

use crate::cluster::{labels, nftpol_bin, SimCluster};
use crate::netns::run;
use crate::scenarios::np;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a change may take to reach the kernel before the test fails:
/// generous, since a debug-built agent starting on a loaded 2-core CI
/// machine can take seconds, and every wait on it ends as soon as it is
/// done.
pub const CONVERGE: Duration = Duration::from_secs(60);

/// One agent process; SIGTERM (then SIGKILL) on drop.
pub struct Agent {
    child: Child,
    log: PathBuf,
}

impl Agent {
    pub fn start(netns: &str, node: &str, dir: &Path, log: PathBuf) -> Agent {
        Agent::start_with(netns, node, dir, log, &[])
    }

    /// [`Agent::start`] with more command-line options.
    pub fn start_with(netns: &str, node: &str, dir: &Path, log: PathBuf, extra: &[&str]) -> Agent {
        let map = dir.join(format!("{node}.interfaces"));
        let map = map.to_str().expect("utf-8 temp dir");
        let mut args = extra.to_vec();
        args.extend(["--pod-interfaces", map, "--drift-interval", "5s"]);
        Agent::spawn(netns, node, dir, log, &args)
    }

    /// The agent with exactly these options besides node, manifests and
    /// metrics address (without `--pod-interfaces` it learns the pod
    /// interfaces from the node, as deployed).
    pub fn spawn(netns: &str, node: &str, dir: &Path, log: PathBuf, args: &[&str]) -> Agent {
        let err = std::fs::File::create(&log).expect("agent log file");
        let child = Command::new("ip")
            .args(["netns", "exec", netns, nftpol_bin(), "agent"])
            .args(["--node-name", node, "--manifests"])
            .arg(dir)
            .args(args)
            // Each node namespace has its own loopback: no port clash.
            .args(["--metrics-addr", "127.0.0.1:9464"])
            // Plain logs in the failure report; debug so a reconcile that
            // changed nothing is visible too.
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info,nftpol::agent=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("spawn nftpol agent");
        Agent { child, log }
    }

    /// `Some(log)` when the process has already exited.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(format!(
                "agent exited ({status}):\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            )),
            _ => None,
        }
    }
}

impl Agent {
    /// SIGKILL, as a crash or an OOM kill would: the agent gets no chance
    /// to do anything.
    pub fn kill_hard(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (bounded) until the agent has reconciled once, whether or
    /// not that changed the table, and returns its log; `Err` with the log
    /// if it exits first or never gets there.
    pub fn wait_reconciled(&mut self) -> Result<String, String> {
        let t0 = Instant::now();
        loop {
            if let Some(log) = self.exited() {
                return Err(format!("the agent exited at start: {log}"));
            }
            let log = self.log_text();
            if log.contains("kernel table updated")
                || log.contains("kernel table already up to date")
            {
                return Ok(log);
            }
            if t0.elapsed() > CONVERGE {
                return Err(format!(
                    "the agent did not reconcile within {CONVERGE:?}:\n{log}"
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // `ip netns exec` execs the agent, so this pid is the agent's own.
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: signalling a child this test spawned and has not reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The listing as a sorted multiset of tokens: element order inside a
/// set may differ between two equal tables, nothing else matters here.
/// Counter values are traffic, not ruleset: `counter packets N bytes M`
/// becomes `counter`.
fn normalize(listing: &str) -> Vec<String> {
    let mut t: Vec<String> = Vec::new();
    let mut skip = 0;
    for tok in listing
        .split(|c: char| c.is_whitespace() || c == ',' || c == '{' || c == '}')
        .filter(|s| !s.is_empty())
    {
        if skip > 0 {
            skip -= 1;
            continue;
        }
        if tok == "counter" {
            skip = 4;
        }
        t.push(tok.to_string());
    }
    t.sort();
    t
}

/// What each node's table must look like: `nftpol compile` loaded into a
/// scratch namespace and listed back by the same nft.
fn reference(c: &SimCluster, scratch: &str, node: &str, dir: &Path) -> Vec<String> {
    let script = c.compile(node, dir);
    let mut child = Command::new("ip")
        .args(["netns", "exec", scratch, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn nft");
    std::io::Write::write_all(
        &mut child.stdin.take().expect("nft stdin"),
        script.as_bytes(),
    )
    .expect("write reference script");
    assert!(
        child.wait().expect("nft").success(),
        "reference ruleset does not load"
    );
    normalize(&run(Command::new("ip").args([
        "netns", "exec", scratch, "nft", "list", "table", "inet", "nftpol",
    ])))
}

/// Waits until both nodes hold the reference tables; returns how long.
pub fn converge(
    c: &SimCluster,
    agents: &mut [Agent],
    scratch: &str,
    dir: &Path,
    since: Instant,
) -> Duration {
    let want: Vec<(String, Vec<String>)> = ["node1", "node2"]
        .iter()
        .map(|n| (n.to_string(), reference(c, scratch, n, dir)))
        .collect();
    loop {
        if want.iter().all(|(n, w)| &normalize(&c.ruleset(n)) == w) {
            return since.elapsed();
        }
        for a in agents.iter_mut() {
            if let Some(log) = a.exited() {
                panic!("{log}");
            }
        }
        if since.elapsed() > CONVERGE {
            let logs: String = agents
                .iter()
                .map(|a| std::fs::read_to_string(&a.log).unwrap_or_default())
                .collect();
            panic!(
                "the agents did not converge within {CONVERGE:?}\nnode1:\n{}\nnode2:\n{}\nagent logs:\n{logs}",
                c.ruleset("node1"),
                c.ruleset("node2")
            );
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

#[test]
fn agent_enforces_changes_in_a_watched_directory() {
    require_root!();
    let mut c = SimCluster::upstream_model();
    let scratch = c.topo.add_scratch();
    let dir = c.dir.join("watched");
    c.write_manifests_to(&dir);
    // Programming once via the normal path waits for links and checks the
    // baseline; the agents then take over the same (empty) table.
    c.check("baseline, before the agents start");
    let mut agents: Vec<Agent> = c
        .topo
        .nodes
        .iter()
        .map(|n| {
            Agent::start(
                &n.netns,
                &n.name,
                &dir,
                c.dir.join(format!("agent-{}.log", n.name)),
            )
        })
        .collect();
    // Each has taken over the table before the first change is written.
    for a in agents.iter_mut() {
        if let Err(e) = a.wait_reconciled() {
            panic!("{e}");
        }
    }
    type Step = Box<dyn Fn(&mut SimCluster)>;
    let steps: Vec<(&str, Step)> = vec![
        (
            "deny all ingress in x",
            Box::new(|c| c.put_policy(&np("x", "deny", "podSelector: {}\npolicyTypes: [Ingress]"))),
        ),
        (
            "x/a open to pods labelled role=client",
            Box::new(|c| {
                c.put_policy(&np(
                    "x",
                    "a-from-clients",
                    "podSelector: {matchLabels: {pod: a}}\ningress:\n- from:\n  - namespaceSelector: {}\n    podSelector: {matchLabels: {role: client}}",
                ))
            }),
        ),
        (
            "z/b gets role=client",
            Box::new(|c| c.set_pod_labels("z", "b", labels(&[("pod", "b"), ("role", "client")]))),
        ),
        (
            "namespace y restricted egress to ns=x",
            Box::new(|c| {
                c.put_policy(&np(
                    "y",
                    "egress-x",
                    "podSelector: {}\negress:\n- to:\n  - namespaceSelector: {matchLabels: {ns: x}}",
                ))
            }),
        ),
        (
            "namespace x relabelled (ns=x2)",
            Box::new(|c| c.set_namespace_labels("x", labels(&[("ns", "x2")]))),
        ),
        ("every policy deleted", Box::new(|c| c.clear_policies())),
    ];
    for (name, change) in steps {
        change(&mut c);
        let t0 = Instant::now();
        c.write_manifests_to(&dir);
        let took = converge(&c, &mut agents, &scratch, &dir, t0);
        eprintln!("agent step {name:?}: kernel converged in {took:.1?}");
        let r = c.verify_programmed(name, Instant::now(), |_| {});
        eprint!(
            "{}",
            r.text
                .lines()
                .next()
                .map(|l| format!("{l}\n"))
                .unwrap_or_default()
        );
        if !r.mismatches.is_empty() {
            panic!("{}{}", r.text, diagnose(&c, &agents, &r.mismatches));
        }
    }
}

/// What a failed step needs to be explained: each node's conntrack
/// entries between the mismatched pods (an entry left over from an earlier
/// step lets a now-denied flow through as established) and the agents'
/// logs (what was programmed when).
fn diagnose(
    c: &SimCluster,
    agents: &[Agent],
    mismatches: &[(crate::probe::Probe, bool, bool)],
) -> String {
    let mut text = String::new();
    for node in &c.topo.nodes {
        // Absent without the conntrack proc interface: then only the logs.
        let table = Command::new("ip")
            .args([
                "netns",
                "exec",
                &node.netns,
                "cat",
                "/proc/net/nf_conntrack",
            ])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        text.push_str(&format!(
            "\n--- {}: conntrack entries of the mismatched pairs ---\n",
            node.name
        ));
        for (p, _, _) in mismatches {
            let (s, d) = (&c.topo.pods[p.src], &c.topo.pods[p.dst]);
            let (sa, da) = if p.v6 {
                (expand6(s.v6), expand6(d.v6))
            } else {
                (s.v4.to_string(), d.v4.to_string())
            };
            for line in table.lines() {
                if line.contains(&format!("src={sa} dst={da}")) {
                    text.push_str(line);
                    text.push('\n');
                }
            }
        }
    }
    for a in agents {
        text.push_str(&format!("\n--- {} ---\n{}", a.log.display(), a.log_text()));
    }
    text
}

/// `/proc/net/nf_conntrack` prints IPv6 addresses in full.
fn expand6(a: std::net::Ipv6Addr) -> String {
    a.segments()
        .iter()
        .map(|s| format!("{s:04x}"))
        .collect::<Vec<_>>()
        .join(":")
}

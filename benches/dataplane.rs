//! Data-plane cost of enforcement: new TCP connections per second, UDP
//! request/response rate on an established flow and connect latency
//! between two pods through a node, for a table of named configurations
//! measured in interleaved rounds so the machine's noise hits all alike.
//!
//! Run as root: `cargo bench --bench dataplane` (iptables configurations
//! need `apt-get install -y iptables ipset`; without them they are left
//! out with a note). Each configuration gets its own node, client and
//! server namespaces (`nftpol-t-…`, deleted on drop; the host namespace is
//! never configured), programmed once; then every round measures every
//! configuration, starting one further along the table each round.
//! Prints markdown for docs/BENCHMARKS.md.
//!
//! Env: `NFTPOL_BENCH_ROUNDS` (default 5), `NFTPOL_BENCH_SECS` (the
//! connection phase per configuration and round, default 1; the latency
//! and UDP phases take half of it each), `NFTPOL_BENCH_CLIENTS` (parallel
//! connecting clients, default 4), `NFTPOL_BENCH_POLICIES` (cluster sizes,
//! default `10,500,5000`), `NFTPOL_BENCH_ONLY` (comma-separated parts of
//! configuration names to run; `no table` always runs).
//!
//! `logging all` configurations annotate every policy `nftpol.io/log:
//! all` (rate-limited log rules before each allow and each default drop)
//! and are compared with the same cluster without logging.
//!
//! To add a configuration, add a [`Config`] in [`configs`]: a name, the
//! cluster size, whether it enforces, and how it programs the node.

#[path = "dataplane/cluster.rs"]
mod cluster;
#[path = "dataplane/iptables.rs"]
mod iptables;
#[path = "dataplane/net.rs"]
mod net;

use cluster::{CLIENT, NODE, SERVER};
use nftpol::netlink::Session;
use nftpol_test_support::Netns;
use policy_compiler::compile::pod_chain_name;
use policy_compiler::ir::{Match, Ruleset};
use policy_compiler::model::LogMode;
use policy_compiler::{compile_node, Cluster, Direction, NodeNet};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Programs a node namespace for a cluster; returns a one-line summary of
/// what it loaded.
type Program = Box<dyn Fn(&Cluster, &Netns) -> Result<String, String>>;

struct Config {
    name: String,
    /// Policies in the cluster (see `cluster::cluster`).
    policies: usize,
    /// Admin policies on top, whose subject is the server (see
    /// `cluster::with_admin`).
    admin: usize,
    /// Whether the configuration drops what no policy admits (checked
    /// before measuring).
    enforces: bool,
    program: Program,
    /// Another configuration's name: the report adds the ratio of this
    /// one's figures to that one's, taken round by round.
    versus: Option<String>,
}

impl Config {
    fn new(name: impl Into<String>, policies: usize, enforces: bool, program: Program) -> Config {
        Config {
            name: name.into(),
            policies,
            admin: 0,
            enforces,
            program,
            versus: None,
        }
    }
    fn admin(mut self, admin: usize) -> Config {
        self.admin = admin;
        self
    }
    fn versus(mut self, other: impl Into<String>) -> Config {
        self.versus = Some(other.into());
        self
    }
}

/// The interfaces of the benchmark's two real pods on the node, as the
/// agent would discover them.
fn node_net(source_validation: bool) -> NodeNet {
    NodeNet {
        pod_interfaces: [(CLIENT, "vcli"), (SERVER, "vsrv")]
            .into_iter()
            .map(|((ns, name), dev)| (format!("{ns}/{name}"), dev.to_string()))
            .collect(),
        source_validation,
    }
}

/// nftpol's ruleset as `compile` makes it for the node, applied through
/// the netlink applier as `nftpol apply` and the agent do.
fn nftpol(compile: impl Fn(&Cluster) -> Ruleset + 'static) -> Program {
    Box::new(move |c, ns| {
        let rs = compile(c);
        let server = c.pod(SERVER.0, SERVER.1).ok_or("no server pod")?;
        let chain = pod_chain_name(Direction::Ingress, server);
        let n = rs.chains.get(&chain).map_or(0, |ch| ch.rules.len());
        ns.run(|| Session::open().and_then(|mut s| s.apply(&rs)))
            .map_err(|e| e.to_string())?;
        let logs = rs
            .chains
            .values()
            .flat_map(|ch| &ch.rules)
            .filter(|r| r.matches.iter().any(|m| matches!(m, Match::Log { .. })))
            .count();
        Ok(format!(
            "{n} rules in the server's chain; {} chains, {} rules ({logs} of them log), {} sets, {} elements",
            rs.chains.len(),
            rs.rule_count(),
            rs.sets.len(),
            rs.element_count()
        ))
    })
}

/// The same policies as iptables + ipset enforcers render them, loaded
/// with `ipset restore` and `restore` (`iptables-legacy-restore` or
/// `iptables-nft-restore`).
fn iptables(restore: &'static str) -> Program {
    Box::new(move |c, ns| {
        let r = iptables::render(c, NODE)?;
        net::pipe(ns, "ipset", &["restore"], &r.ipsets)?;
        net::pipe(ns, restore, &[], &r.rules)?;
        let key = format!("{}/{}", SERVER.0, SERVER.1);
        Ok(format!(
            "{} rules in the server's chain; {} rules, {} ipsets",
            r.ingress_chain_rules.get(&key).copied().unwrap_or(0),
            r.total_rules,
            r.set_count
        ))
    })
}

/// The smallest and the largest cluster size (once when equal).
fn ends_of(sizes: &[usize]) -> Vec<usize> {
    let mut ends: Vec<usize> = [sizes.first(), sizes.last()]
        .into_iter()
        .flatten()
        .copied()
        .collect();
    ends.dedup();
    ends
}

/// The cluster with every policy annotated `nftpol.io/log: all`: each
/// allow and each isolated pod's default drop gets its rate-limited log
/// rule (the compiler's default rate and nflog group).
fn logging_all(c: &Cluster) -> Cluster {
    let mut c = c.clone();
    let policies: Vec<_> = c.policies().cloned().collect();
    for mut p in policies {
        p.audit.log = LogMode::All;
        c.apply_policy(p);
    }
    c
}

/// Every configuration, in the order of the report.
fn configs(sizes: &[usize]) -> Vec<Config> {
    let mut v = vec![Config::new(
        "no table",
        0,
        false,
        Box::new(|_, _| Ok("nothing loaded".into())),
    )];
    for &n in sizes {
        v.push(Config::new(
            format!("nftpol, {n} policies"),
            n,
            true,
            nftpol(|c| compile_node(c, NODE, &node_net(true))),
        ));
    }
    for n in ends_of(sizes) {
        v.push(
            Config::new(
                format!("nftpol, {n} policies, no source validation"),
                n,
                true,
                nftpol(|c| compile_node(c, NODE, &node_net(false))),
            )
            .versus(format!("nftpol, {n} policies")),
        );
    }
    for n in ends_of(sizes) {
        v.push(
            Config::new(
                format!("nftpol, {n} policies, logging all"),
                n,
                true,
                nftpol(|c| compile_node(&logging_all(c), NODE, &node_net(true))),
            )
            .versus(format!("nftpol, {n} policies")),
        );
    }
    if let Some(&n) = sizes.last() {
        v.push(
            Config::new(
                format!("nftpol, {n} policies, no rule counters"),
                n,
                true,
                nftpol(|c| {
                    let mut rs = compile_node(c, NODE, &node_net(true));
                    policy_compiler::counters::strip(&mut rs);
                    rs
                }),
            )
            .versus(format!("nftpol, {n} policies")),
        );
    }
    // The admin tier: the server is the subject of ADMIN admin policies
    // whose rules the client matches none of, so its new flows walk them
    // all before the NetworkPolicy part; in the shared chain the node
    // gets, and inlined into the server's chain as nftpol compiled it
    // before the admin tier was shared.
    if let Some(&n) = sizes.first() {
        let shared = format!("nftpol, {n} policies, {ADMIN} admin policies");
        v.push(
            Config::new(
                shared.clone(),
                n,
                true,
                nftpol(|c| compile_node(c, NODE, &node_net(true))),
            )
            .admin(ADMIN)
            .versus(format!("nftpol, {n} policies")),
        );
        v.push(
            Config::new(
                format!("nftpol, {n} policies, {ADMIN} admin policies inlined per pod"),
                n,
                true,
                nftpol(|c| cluster::inline_admin_tier(compile_node(c, NODE, &node_net(true)))),
            )
            .admin(ADMIN)
            .versus(shared),
        );
    }
    for &n in sizes {
        v.push(
            Config::new(
                format!("iptables-legacy + ipset, {n} policies"),
                n,
                true,
                iptables("iptables-legacy-restore"),
            )
            .versus(format!("nftpol, {n} policies")),
        );
    }
    if let Some(&n) = sizes.last() {
        v.push(
            Config::new(
                format!("iptables-nft + ipset, {n} policies"),
                n,
                true,
                iptables("iptables-nft-restore"),
            )
            .versus(format!("nftpol, {n} policies")),
        );
    }
    v
}

/// Admin policies selecting the server in the admin configurations.
const ADMIN: usize = 100;

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn have(tool: &str) -> bool {
    std::process::Command::new(tool)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[derive(Default)]
struct Figures {
    conn: Vec<f64>,
    udp: Vec<f64>,
    connect: Vec<Duration>,
    /// Connections that failed.
    failed: usize,
    /// UDP requests that went unanswered.
    lost: usize,
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

fn percentile(v: &[Duration], p: f64) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v.get(((v.len().max(1) - 1) as f64 * p).round() as usize)
        .copied()
        .unwrap_or_default()
}

/// Median over rounds of `a[round] / b[round]`.
fn ratio(a: &[f64], b: &[f64]) -> f64 {
    let r: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / y).collect();
    median(&r)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn main() {
    if !nftpol_test_support::run_by_cargo_bench() {
        eprintln!("root and minutes of work: run with `cargo bench --bench dataplane`");
        return;
    }
    if let Some(why) = nftpol_test_support::privilege::missing_privilege() {
        eprintln!("dataplane bench: {why}");
        return;
    }
    let rounds: usize = env("NFTPOL_BENCH_ROUNDS", 5);
    let secs: f64 = env("NFTPOL_BENCH_SECS", 1.0);
    let clients: usize = env("NFTPOL_BENCH_CLIENTS", 4);
    let sizes: Vec<usize> = env("NFTPOL_BENCH_POLICIES", "10,500,5000".to_string())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let only: Vec<String> = env("NFTPOL_BENCH_ONLY", String::new())
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    let iptables_ok = have("ipset") && have("iptables-legacy-restore");
    let mut configs: Vec<Config> = configs(&sizes)
        .into_iter()
        .filter(|c| {
            c.name == "no table"
                || only.is_empty()
                || only.iter().any(|o| c.name.contains(o.as_str()))
        })
        .collect();
    if !iptables_ok {
        eprintln!("iptables or ipset missing (apt-get install -y iptables ipset): iptables configurations left out");
        configs.retain(|c| !c.name.starts_with("iptables"));
    }
    let load_before = loadavg();
    let started = Instant::now();

    let mut clusters: BTreeMap<(usize, usize), Cluster> = BTreeMap::new();
    let mut sites = Vec::new();
    let mut setup = Vec::new();
    for (i, cfg) in configs.iter().enumerate() {
        let cluster = clusters
            .entry((cfg.policies, cfg.admin))
            .or_insert_with(|| cluster::with_admin(cfg.policies, cfg.admin));
        let site = match net::Site::build(&format!("dp{i}"), clients) {
            Ok(s) => s,
            Err(e) => panic!("{}: building the namespaces: {e}", cfg.name),
        };
        let t = Instant::now();
        let what = (cfg.program)(cluster, &site.node)
            .unwrap_or_else(|e| panic!("{}: programming the node: {e}", cfg.name));
        let took = t.elapsed();
        if let Err(e) = site.check(cfg.enforces) {
            panic!("{}: {e}", cfg.name);
        }
        eprintln!("{}: {what} (programmed in {took:.1?})", cfg.name);
        setup.push(what);
        sites.push(site);
    }

    let phase = Duration::from_secs_f64(secs);
    let mut figures: Vec<Figures> = configs.iter().map(|_| Figures::default()).collect();
    for round in 0..rounds {
        for k in 0..configs.len() {
            let i = (round + k) % configs.len();
            let (site, f) = (&sites[i], &mut figures[i]);
            let (rate, failed) = site.tcp_rate(clients, phase, 1_000_000);
            f.conn.push(rate);
            f.failed += failed;
            f.connect.extend(site.connect_latency(phase / 2, 100_000));
            let (udp, lost) = site.udp_rate(phase / 2, 10_000_000);
            f.udp.push(udp);
            f.lost += lost;
        }
        eprintln!("round {} of {rounds} done", round + 1);
    }
    drop(sites);

    let by_name: BTreeMap<&str, usize> = configs
        .iter()
        .enumerate()
        .map(|(i, c)| (c.name.as_str(), i))
        .collect();
    let none = &figures[0];
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "Load average before {load_before}, after {}; {rounds} rounds, {secs} s of connections \
         from {clients} clients per configuration and round; {:.0} s in all.\n",
        loadavg(),
        started.elapsed().as_secs_f64()
    );
    println!("| configuration | conn/s | vs no table | UDP rr/s | vs no table | connect p50 | connect p99 | failed conn / lost UDP |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for (c, f) in configs.iter().zip(&figures) {
        println!(
            "| {} | {:.0} | {:.2} | {:.0} | {:.2} | {:.0} µs | {:.0} µs | {} / {} |",
            c.name,
            median(&f.conn),
            ratio(&f.conn, &none.conn),
            median(&f.udp),
            ratio(&f.udp, &none.udp),
            us(percentile(&f.connect, 0.5)),
            us(percentile(&f.connect, 0.99)),
            f.failed,
            f.lost
        );
    }
    println!();
    for (c, f) in configs.iter().zip(&figures) {
        let Some(j) = c.versus.as_deref().and_then(|v| by_name.get(v)) else {
            continue;
        };
        let g = &figures[*j];
        println!(
            "- {} vs {}: conn/s {:.2}, UDP rr/s {:.2}, connect p50 {:+.0} µs",
            c.name,
            configs[*j].name,
            ratio(&f.conn, &g.conn),
            ratio(&f.udp, &g.udp),
            us(percentile(&f.connect, 0.5)) - us(percentile(&g.connect, 0.5)),
        );
    }
    println!();
    for (c, what) in configs.iter().zip(&setup) {
        println!("- {}: {what}", c.name);
    }
}

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
//! configuration names to run; `no table` always runs, and so does every
//! configuration a selected one is compared with).
//!
//! Besides the rates, each configuration's CPU time per connection: what
//! the connecting client threads and the server's TCP workers ran (the
//! scheduler's clock; this kernel charges the softirq work a send sets
//! off, the node's forwarding included, to the sending thread), divided
//! by the connections made. It is steadier than a rate on a shared
//! machine, since other processes' load delays a connection without
//! adding to its CPU time. The report ends with each configuration's
//! thread tag (`dp<N>-cli`, `-lat`, `-srv`) and connections, for
//! `benches/dataplane/profile.py` to split a `perf record -a -g` of the
//! run by configuration.
//!
//! `conntrack only` holds nothing but the conntrack rules every stateful
//! enforcer starts with, the floor under any of them; every plain nftpol
//! configuration is also compared with it. `logging all`
//! configurations annotate every policy `nftpol.io/log: all` (rate-limited
//! log rules before each allow and each default drop), `no non-SYN or
//! no-pod drops` leaves those drops out of the forward chain, `guard
//! without IP fast paths` makes IP frames walk every L2 guard check,
//! `source validation in the guard chain` moves each `src_` chain into the
//! guard chain on its interface (one ingress hook a packet instead of two);
//! each is compared with the same cluster as compiled. The report gives every
//! ratio round by round as well as its median.
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
use policy_compiler::compile::{pod_chain_name, BASE_PRIORITY, CHAIN_FORWARD};
use policy_compiler::ir::{
    BaseChain, Chain, ChainPolicy, CtState, Dir, Hook, Match, Rule, Ruleset, Verdict,
};
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
        ..NodeNet::default()
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

/// The floor every stateful enforcer pays: a forward base chain holding
/// only `ct state established,related accept` and `ct state invalid drop`
/// (instantiating conntrack in the node, which "no table" never does).
fn conntrack_only() -> Ruleset {
    let rule = |state: CtState, also: Option<CtState>, verdict: Verdict| Rule {
        matches: vec![Match::CtState(std::iter::once(state).chain(also).collect())],
        verdict,
        comment: None,
    };
    let mut rs = Ruleset::default();
    rs.chains.insert(
        CHAIN_FORWARD.to_string(),
        Chain {
            base: Some(BaseChain {
                hook: Hook::Forward,
                priority: BASE_PRIORITY,
                policy: ChainPolicy::Accept,
                device: None,
            }),
            rules: vec![
                rule(
                    CtState::Established,
                    Some(CtState::Related),
                    Verdict::Accept,
                ),
                rule(CtState::Invalid, None, Verdict::Drop),
            ],
        },
    );
    rs
}

/// Removes from the forward base chain the drops that came after the
/// conntrack rules and before dispatch: new TCP without SYN, and
/// destinations that name no pod (multicast, broadcast, IPv6
/// link-local). Returns how many rules went.
fn strip_forward_drops(rs: &mut Ruleset) -> usize {
    let mut removed = 0;
    for chain in rs.chains.values_mut() {
        if chain.base.as_ref().is_none_or(|b| b.hook != Hook::Forward) {
            continue;
        }
        let before = chain.rules.len();
        chain.rules.retain(|r| {
            r.verdict != Verdict::Drop
                || !r.matches.iter().any(|m| {
                    matches!(
                        m,
                        Match::TcpNotSyn
                            | Match::DaddrBroadcast
                            | Match::AddrPrefix { dir: Dir::Dst, .. }
                    )
                })
        });
        removed += before - chain.rules.len();
    }
    removed
}

/// Removes the L2 guard's IPv4 and IPv6 fast paths (`ether type ip
/// accept` ahead of the checks: policy_compiler::l2fast), so IP frames walk
/// every check as before. Returns how many rules went.
fn strip_guard_fast_paths(rs: &mut Ruleset) -> usize {
    let Some(guard) = rs.guard.as_mut() else {
        return 0;
    };
    let mut removed = 0;
    for chain in guard.chains.values_mut() {
        let before = chain.rules.len();
        chain.rules.retain(|r| {
            !(r.verdict == Verdict::Accept
                && matches!(r.matches[..], [Match::EtherType { negate: false, .. }]))
        });
        removed += before - chain.rules.len();
    }
    removed
}

/// Moves each `src_` chain (`inet` ingress) into the L2 guard chain on the
/// same interface (`netdev` ingress), so a pod's packet takes one ingress
/// hook instead of two: what folding source validation into the guard
/// would save. The merged chain: the own-TCP fast paths, each behind the
/// untagged ethertype of its family (`ether type` reads back a tag the
/// kernel took off, `meta protocol` would not); the guard's checks
/// without their IP fast paths; ARP, the only other frame those checks
/// let on, accepted; then the `src_` chain's other rules. Benchmark
/// only: the `netdev` family does not drop malformed IP headers as the
/// `inet` ingress hook does, and nothing else (audit, read-back of the
/// bindings) knows this layout. Returns how many chains moved.
fn merge_src_into_guard(rs: &mut Ruleset) -> usize {
    let Some(guard) = rs.guard.as_mut() else {
        return 0;
    };
    let device = |c: &Chain| c.base.as_ref().and_then(|b| b.device.clone());
    let src: Vec<String> = rs
        .chains
        .iter()
        .filter(|(_, c)| c.base.as_ref().is_some_and(|b| b.hook == Hook::Ingress))
        .map(|(name, _)| name.clone())
        .collect();
    let mut moved = 0;
    for name in src {
        let dev = device(&rs.chains[&name]);
        let Some(g) = guard.chains.values_mut().find(|g| device(g) == dev) else {
            continue;
        };
        let Some(s) = rs.chains.remove(&name) else {
            continue;
        };
        let ether = |ty| Match::EtherType { ty, negate: false };
        let (fast, rest): (Vec<Rule>, Vec<Rule>) = s.rules.into_iter().partition(|r| {
            r.verdict == Verdict::Accept
                && r.matches
                    .iter()
                    .any(|m| matches!(m, Match::Ip4HdrLen(_) | Match::Ip6NextHeader(_)))
        });
        let mut rules: Vec<Rule> = fast
            .into_iter()
            .map(|mut r| {
                let ty = if r.matches.iter().any(|m| matches!(m, Match::Ip4HdrLen(_))) {
                    policy_compiler::srcval::ETH_P_IP
                } else {
                    policy_compiler::srcval::ETH_P_IPV6
                };
                r.matches.insert(0, ether(ty));
                r
            })
            .collect();
        rules.extend(g.rules.drain(..).filter(|r| {
            !(r.verdict == Verdict::Accept
                && matches!(r.matches[..], [Match::EtherType { negate: false, .. }]))
        }));
        rules.push(Rule {
            matches: vec![ether(policy_compiler::srcval::ETH_P_ARP)],
            verdict: Verdict::Accept,
            comment: None,
        });
        rules.extend(rest);
        g.rules = rules;
        moved += 1;
    }
    moved
}

/// Every configuration, in the order of the report.
fn configs(sizes: &[usize]) -> Vec<Config> {
    let mut v = vec![
        Config::new(
            "no table",
            0,
            false,
            Box::new(|_, _| Ok("nothing loaded".into())),
        ),
        Config::new(
            "conntrack only",
            0,
            false,
            Box::new(|_, ns| {
                let rs = conntrack_only();
                ns.run(|| Session::open().and_then(|mut s| s.apply(&rs)))
                    .map_err(|e| e.to_string())?;
                Ok(format!("{} rules in a forward base chain", rs.rule_count()))
            }),
        )
        .versus("no table"),
    ];
    // Compared with the conntrack floor, so every run says what nftpol
    // costs above what any stateful enforcer pays.
    for &n in sizes {
        v.push(
            Config::new(
                format!("nftpol, {n} policies"),
                n,
                true,
                nftpol(|c| compile_node(c, NODE, &node_net(true))),
            )
            .versus("conntrack only"),
        );
    }
    for n in ends_of(sizes) {
        v.push(
            Config::new(
                format!("nftpol, {n} policies, no non-SYN or no-pod drops"),
                n,
                true,
                nftpol(|c| {
                    let mut rs = compile_node(c, NODE, &node_net(true));
                    // An empty strip would measure nftpol against itself.
                    assert!(
                        strip_forward_drops(&mut rs) > 0,
                        "the forward chain holds no non-SYN or no-pod drop"
                    );
                    rs
                }),
            )
            .versus(format!("nftpol, {n} policies")),
        );
    }
    for n in ends_of(sizes) {
        v.push(
            Config::new(
                format!("nftpol, {n} policies, guard without IP fast paths"),
                n,
                true,
                nftpol(|c| {
                    let mut rs = compile_node(c, NODE, &node_net(true));
                    assert!(
                        strip_guard_fast_paths(&mut rs) > 0,
                        "the guard holds no IP fast path"
                    );
                    rs
                }),
            )
            .versus(format!("nftpol, {n} policies")),
        );
    }
    for n in ends_of(sizes) {
        v.push(
            Config::new(
                format!("nftpol, {n} policies, source validation in the guard chain"),
                n,
                true,
                nftpol(|c| {
                    let mut rs = compile_node(c, NODE, &node_net(true));
                    assert!(
                        merge_src_into_guard(&mut rs) > 0,
                        "no src_ chain shares an interface with a guard chain"
                    );
                    rs
                }),
            )
            .versus(format!("nftpol, {n} policies")),
        );
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
    /// CPU time per connection of the connection phase, in µs, a round.
    cpu: Vec<f64>,
    udp: Vec<f64>,
    connect: Vec<Duration>,
    /// The median connect time of each round.
    connect_p50: Vec<Duration>,
    /// Connections made in the connection and latency phases.
    made: usize,
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

/// `a[round] / b[round]` for every round.
fn ratios(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x / y).collect()
}

/// Median over rounds of `a[round] / b[round]`.
fn ratio(a: &[f64], b: &[f64]) -> f64 {
    median(&ratios(a, b))
}

/// Median over rounds of `a[round] - b[round]`.
fn difference(a: &[f64], b: &[f64]) -> f64 {
    median(&a.iter().zip(b).map(|(x, y)| x - y).collect::<Vec<_>>())
}

/// Figures a round, in round order, one decimal.
fn each_round(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.1}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The round-by-round ratios, in round order.
fn rounds_of(a: &[f64], b: &[f64]) -> String {
    ratios(a, b)
        .iter()
        .map(|r| format!("{r:.2}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The configurations `only` asks for (parts of their names; all when
/// empty), "no table", and every configuration one of those is compared
/// with, in the order of the report.
fn select(all: Vec<Config>, only: &[String]) -> Vec<Config> {
    let mut keep: Vec<bool> = all
        .iter()
        .map(|c| {
            c.name == "no table"
                || only.is_empty()
                || only.iter().any(|o| c.name.contains(o.as_str()))
        })
        .collect();
    // Comparisons chain (inlined -> shared -> plain): follow them all.
    loop {
        let wanted: Vec<&str> = all
            .iter()
            .zip(&keep)
            .filter(|(_, k)| **k)
            .filter_map(|(c, _)| c.versus.as_deref())
            .collect();
        let mut grew = false;
        for (c, k) in all.iter().zip(keep.iter_mut()) {
            if !*k && wanted.contains(&c.name.as_str()) {
                *k = true;
                grew = true;
            }
        }
        if !grew {
            break;
        }
    }
    all.into_iter()
        .zip(keep)
        .filter_map(|(c, k)| k.then_some(c))
        .collect()
}

/// What the bench can check without root, in the smoke run `cargo test
/// --all-targets` makes: every shape of `NFTPOL_BENCH_POLICIES` and
/// `NFTPOL_BENCH_ONLY` gives a well-formed selection, the report's
/// arithmetic survives empty and zero figures, and the rulesets the
/// configurations derive from the compiler's still have what they strip.
fn smoke() {
    for sizes in [&[][..], &[10], &[10, 10], &[10, 5000], &[0]] {
        for only in [
            &[][..],
            &["nftpol"],
            &["admin"],
            &["conntrack"],
            &["no such"],
        ] {
            let only: Vec<String> = only.iter().map(|s| s.to_string()).collect();
            let picked = select(configs(sizes), &only);
            assert_eq!(picked[0].name, "no table");
            let names: Vec<&str> = picked.iter().map(|c| c.name.as_str()).collect();
            for c in &picked {
                if let Some(v) = &c.versus {
                    assert!(names.contains(&v.as_str()), "{}: {v} not selected", c.name);
                }
            }
        }
    }
    let report = rounds_of(&[0.0, 1.0], &[0.0, 0.0]);
    assert_eq!(report, "NaN inf");
    assert!(median(&[]).is_nan() && percentile(&[], 0.99) == Duration::ZERO);
    assert_eq!(conntrack_only().rule_count(), 2);
    let mut rs = compile_node(&cluster::cluster(10), NODE, &node_net(true));
    let rules = rs.rule_count();
    let removed = strip_forward_drops(&mut rs);
    assert!(removed >= 2, "the forward chain's non-SYN and no-pod drops");
    assert_eq!(rs.rule_count(), rules - removed);
    // Two fast paths (IPv4, IPv6) on each of the client's and the server's
    // interfaces.
    let mut rs = compile_node(&cluster::cluster(10), NODE, &node_net(true));
    assert_eq!(strip_guard_fast_paths(&mut rs), 4);
    // The client's and the server's `src_` chains move into their guard
    // chains, ahead of everything but the own-TCP fast path.
    let mut rs = compile_node(&cluster::cluster(10), NODE, &node_net(true));
    let rules = rs.rule_count();
    assert_eq!(merge_src_into_guard(&mut rs), 2);
    let guard = rs.guard.as_ref().expect("the guard");
    // Two IP fast paths a chain go, one ARP accept a chain comes.
    assert_eq!(rs.rule_count(), rules - 2);
    for c in guard.chains.values() {
        assert_eq!(
            c.rules[0].matches[..2],
            [
                Match::EtherType {
                    ty: policy_compiler::srcval::ETH_P_IP,
                    negate: false
                },
                Match::Ip4HdrLen(policy_compiler::srcval::IP4_WORDS)
            ]
        );
    }
}

fn main() {
    if !nftpol_test_support::run_by_cargo_bench() {
        smoke();
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
    let mut configs = select(configs(&sizes), &only);
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
            let run = site.tcp_rate(clients, phase, 1_000_000);
            f.conn.push(run.rate);
            f.cpu.push(run.cpu_ns as f64 / 1e3 / run.done.max(1) as f64);
            f.failed += run.failed;
            let connect = site.connect_latency(phase / 2, 100_000);
            f.made += run.done + connect.len();
            f.connect_p50.push(percentile(&connect, 0.5));
            f.connect.extend(connect);
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
    println!("| configuration | conn/s | vs no table | CPU µs/conn | over no table | UDP rr/s | vs no table | connect p50 | connect p99 | failed conn / lost UDP |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for (c, f) in configs.iter().zip(&figures) {
        println!(
            "| {} | {:.0} | {:.2} | {:.1} | {:+.1} | {:.0} | {:.2} | {:.0} µs | {:.0} µs | {} / {} |",
            c.name,
            median(&f.conn),
            ratio(&f.conn, &none.conn),
            median(&f.cpu),
            difference(&f.cpu, &none.cpu),
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
            "- {} vs {}: conn/s {:.2} (rounds: {}), CPU per connection {:+.1} µs (rounds: {}), UDP rr/s {:.2}, connect p50 {:+.0} µs",
            c.name,
            configs[*j].name,
            ratio(&f.conn, &g.conn),
            rounds_of(&f.conn, &g.conn),
            difference(&f.cpu, &g.cpu),
            each_round(&f.cpu.iter().zip(&g.cpu).map(|(x, y)| x - y).collect::<Vec<_>>()),
            ratio(&f.udp, &g.udp),
            us(percentile(&f.connect, 0.5)) - us(percentile(&g.connect, 0.5)),
        );
    }
    println!();
    println!("Round by round, in round order (each round starts one further along the table):\n");
    println!("| configuration | conn/s vs no table | CPU µs/conn | connect p50 a round |");
    println!("| --- | --- | --- | --- |");
    for (c, f) in configs.iter().zip(&figures) {
        println!(
            "| {} | {} | {} | {} |",
            c.name,
            rounds_of(&f.conn, &none.conn),
            each_round(&f.cpu),
            f.connect_p50
                .iter()
                .map(|d| format!("{:.0}", us(*d)))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    println!();
    for (c, what) in configs.iter().zip(&setup) {
        println!("- {}: {what}", c.name);
    }
    println!();
    println!("Threads for a profile (`benches/dataplane/profile.py`): `<tag>-cli`, `<tag>-lat` and `<tag>-srv` made and served these connections:\n");
    println!("| tag | configuration | connections |");
    println!("| --- | --- | --- |");
    for (i, (c, f)) in configs.iter().zip(&figures).enumerate() {
        println!("| dp{i} | {} | {} |", c.name, f.made);
    }
}

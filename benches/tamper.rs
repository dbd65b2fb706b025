//! Time to repair tampering with the `inet nftpol` table: the agent with
//! nftables notifications (drift check an hour away) and with only the
//! periodic drift check.
//!
//! Run as root: `cargo bench --bench tamper`. The process moves itself
//! into a fresh network namespace (`unshare(CLONE_NEWNET)`) before it
//! starts anything, so the agent and the `nft` processes it starts
//! inherit that namespace and the host's ruleset is never touched. The
//! clock is the kernel's own announcement of each commit: this process
//! subscribes to the nftables notifications, and a repair time is the time
//! from the notification of the tampering batch (sent by `nft`) to the
//! notification of the next batch from any other socket (the agent's
//! repair). Prints a markdown table for docs/BENCHMARKS.md.
//! Env: `NFTPOL_BENCH_ROUNDS` (tamperings per kind, default 5),
//! `NFTPOL_BENCH_PODS` (local pods of the large table, default 1000).

use nftpol::netlink::notify::{Seen, Watcher};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_nftpol");
const LIMIT: Duration = Duration::from_secs(10);

/// `pods` local pods, each isolated by one policy that admits the `cli`
/// pods on TCP 8080, so each has its own chain and sets.
fn manifests(pods: usize) -> String {
    let mut y = String::from(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: prod}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {name: cli-0, namespace: prod, labels: {app: cli}}\n\
         spec: {nodeName: node-2, containers: [{name: c, image: x}]}\n\
         status: {podIP: 10.8.0.1, podIPs: [{ip: 10.8.0.1}]}\n---\n\
         apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {name: web, namespace: prod}\n\
         spec:\n  podSelector: {matchLabels: {tier: web}}\n  ingress:\n\
         \x20 - from: [{podSelector: {matchLabels: {app: cli}}}]\n    ports: [{port: 8080}]\n",
    );
    for p in 0..pods {
        let _ = write!(
            y,
            "---\napiVersion: v1\nkind: Pod\n\
             metadata: {{name: web-{p}, namespace: prod, labels: {{tier: web, app: web-{p}}}}}\n\
             spec: {{nodeName: node-1, containers: [{{name: c, image: x}}]}}\n\
             status: {{podIP: 10.9.{}.{}, podIPs: [{{ip: 10.9.{}.{}}}]}}\n",
            p / 250,
            p % 250 + 1,
            p / 250,
            p % 250 + 1
        );
    }
    y
}

/// Tamperings that work on any table `manifests` compiles to.
const KINDS: [(&str, &str); 8] = [
    ("dormant flag", "add table inet nftpol { flags dormant; }"),
    (
        "base chain policy",
        "add chain inet nftpol forward { policy drop; }",
    ),
    ("rule inserted", "insert rule inet nftpol forward accept"),
    (
        "element added",
        "add element inet nftpol ingress_v4 { 10.66.6.6 : drop }",
    ),
    ("chain deleted", "delete chain inet nftpol forward"),
    ("table deleted", "delete table inet nftpol"),
    // The guard of web-0's interface (`interfaces`).
    (
        "guard rule inserted",
        "insert rule netdev nftpol l2_prod_web-0 accept",
    ),
    ("guard table deleted", "delete table netdev nftpol"),
];

/// Every pod on an interface of its own (`vpw<N>`; the devices need not
/// exist), so the agent keeps a guard chain per pod.
fn interfaces(pods: usize) -> String {
    (0..pods)
        .map(|p| format!("prod/web-{p}: vpw{p}\n"))
        .collect()
}

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn nft(script: &str) {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("nft");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{script}\n").as_bytes())
        .expect("write");
    assert!(child.wait().expect("nft").success(), "nft -f {script:?}");
}

fn table_listed() -> bool {
    Command::new("nft")
        .args(["list", "table", "inet", "nftpol"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Waits for the next foreign batch; returns its port and when it was
/// seen.
fn next_batch(w: &mut Watcher, not_from: Option<u32>) -> (u32, Instant) {
    let t0 = Instant::now();
    loop {
        match w.wait().expect("watch") {
            Some(Seen::Foreign { port, .. }) if Some(port) != not_from => {
                return (port, Instant::now())
            }
            _ => assert!(t0.elapsed() < LIMIT, "no batch within {LIMIT:?}"),
        }
    }
}

/// Skips whatever is still queued (the tail of a batch just seen).
fn settle(w: &mut Watcher) {
    while w.wait().expect("watch").is_some() {}
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn run(dir: &Path, pods: usize, mode: &str, args: &[&str], rounds: usize, out: &mut String) {
    std::fs::write(dir.join("cluster.yaml"), manifests(pods)).expect("write");
    let ifmap = dir.with_extension("interfaces");
    std::fs::write(&ifmap, interfaces(pods)).expect("write");
    let mut w = Watcher::open(Duration::from_millis(30)).expect("subscribe");
    let _agent = Agent(
        Command::new(BIN)
            .args(["agent", "--node-name", "node-1", "--manifests"])
            .arg(dir)
            .args(["--metrics-addr", "127.0.0.1:0"])
            .arg("--pod-interfaces")
            .arg(&ifmap)
            .args(args)
            .env("RUST_LOG", "warn")
            .stderr(Stdio::null())
            .spawn()
            .expect("agent"),
    );
    let t0 = Instant::now();
    while !table_listed() {
        assert!(t0.elapsed() < LIMIT, "agent never programmed the table");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    settle(&mut w);
    for (kind, script) in KINDS {
        let mut times = Vec::new();
        for _ in 0..rounds {
            nft(script);
            let (tamperer, at) = next_batch(&mut w, None);
            let (_, repaired) = next_batch(&mut w, Some(tamperer));
            times.push(repaired - at);
            settle(&mut w);
        }
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let _ = writeln!(
            out,
            "| {pods} | {mode} | {kind} | {:.1} | {:.1} | {:.1} |",
            ms(percentile(&mut times, 0.5)),
            ms(percentile(&mut times, 0.9)),
            ms(percentile(&mut times, 1.0)),
        );
        eprintln!("{pods} pods, {mode}, {kind}: done");
    }
}

fn main() {
    if !nftpol_test_support::run_by_cargo_bench() {
        eprintln!("root and minutes of work: run with `cargo bench --bench tamper`");
        return;
    }
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("tamper bench: needs root (CAP_NET_ADMIN) for a network namespace");
        return;
    }
    // SAFETY: unshare affects only this (still single-threaded) process.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        eprintln!("tamper bench: unshare: {}", std::io::Error::last_os_error());
        std::process::exit(1);
    }
    let _ = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status();
    let rounds = std::env::var("NFTPOL_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let big = std::env::var("NFTPOL_BENCH_PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let dir = std::env::temp_dir().join(format!("nftpol-bench-tamper-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let mut out = String::from(
        "| local pods | agent mode | tampering | median ms | p90 ms | max ms |\n|---|---|---|---|---|---|\n",
    );
    for pods in [10, big] {
        run(
            &dir,
            pods,
            "notifications",
            &["--drift-interval", "1h"],
            rounds,
            &mut out,
        );
        run(
            &dir,
            pods,
            "drift check 1s",
            &["--no-kernel-watch", "--drift-interval", "1s"],
            rounds,
            &mut out,
        );
        for family in ["inet", "netdev"] {
            let _ = Command::new("nft")
                .args(["delete", "table", family, "nftpol"])
                .status();
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(dir.with_extension("interfaces"));
    println!("{out}");
}

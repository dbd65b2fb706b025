//! Cost of one revocation pass (`agent --revoke-denied-connections`):
//! dumping the conntrack table over netlink, judging every entry with the
//! IR interpreter, and deleting the denied ones.
//!
//! Run as root: `cargo bench --bench revoke`. The process moves its main
//! thread into a fresh `nftpol-t-` network namespace before anything
//! else (removed at the end), loads a ruleset of `NFTPOL_BENCH_PODS`
//! (default 1000) isolated local pods, and makes N conntrack entries with
//! real UDP datagrams on `lo` for each N of `NFTPOL_BENCH_ENTRIES`
//! (default `1000,10000`): first N flows the ruleset allows (a pass that
//! judges and cuts nothing, the cost after every batch), then N it denies
//! (a pass that deletes them all). Prints a markdown table for
//! docs/BENCHMARKS.md.

use nftpol::netlink::conntrack::Conntrack;
use nftpol::netlink::Session;
use nftpol::revoke::{revoke_with, Scope};
use nftpol_test_support::Netns;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::Duration;

const ROUNDS: usize = 5;
/// Pod addresses that carry traffic (the rest only fill the ruleset).
const TALKING: usize = 10;

fn web(p: usize) -> IpAddr {
    format!("10.9.{}.{}", p / 250, p % 250 + 1)
        .parse()
        .expect("ip")
}

fn cli() -> IpAddr {
    "10.8.0.1".parse().expect("ip")
}

/// `pods` local pods, each isolated by one policy admitting `cli` on TCP
/// 8080 (so UDP to them is denied, UDP from them allowed).
fn manifests(pods: usize) -> String {
    let mut y = String::from(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: cli, namespace: prod, labels: {app: cli}}\n\
         spec: {nodeName: node-1}\nstatus: {podIPs: [{ip: 10.8.0.1}]}\n---\n\
         apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {name: web, namespace: prod}\n\
         spec:\n  podSelector: {matchLabels: {tier: web}}\n  ingress:\n\
         \x20 - from: [{podSelector: {matchLabels: {app: cli}}}]\n    ports: [{port: 8080}]\n",
    );
    for p in 0..pods {
        let _ = write!(
            y,
            "---\napiVersion: v1\nkind: Pod\n\
             metadata: {{name: web-{p}, namespace: prod, labels: {{tier: web}}}}\n\
             spec: {{nodeName: node-1}}\nstatus: {{podIPs: [{{ip: {}}}]}}\n",
            web(p)
        );
    }
    y
}

/// `n` UDP flows (one datagram each, distinct destination ports) from
/// `from` to the talking pods (`to_web`) or the other way round.
fn flows(n: usize, to_web: bool) {
    for k in 0..TALKING {
        let (src, dst) = if to_web {
            (cli(), web(k))
        } else {
            (web(k), cli())
        };
        let s = UdpSocket::bind(SocketAddr::new(src, 0)).expect("bind");
        for i in (k..n).step_by(TALKING) {
            // The same ports every round: the allowed entries are
            // refreshed, not multiplied; the denied ones were deleted.
            let port = 10_000 + (i / TALKING % 50_000) as u16;
            let _ = s.send_to(b"x", SocketAddr::new(dst, port));
        }
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    if !nftpol_test_support::run_by_cargo_bench() {
        return;
    }
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
    let pods: usize = env("NFTPOL_BENCH_PODS", "1000")
        .parse()
        .expect("NFTPOL_BENCH_PODS");
    let sizes: Vec<usize> = env("NFTPOL_BENCH_ENTRIES", "1000,10000")
        .split(',')
        .map(|s| s.trim().parse().expect("NFTPOL_BENCH_ENTRIES"))
        .collect();
    let ns = Netns::create("revoke-bench");
    let mut batch = String::new();
    for a in std::iter::once(cli()).chain((0..TALKING).map(web)) {
        let _ = writeln!(batch, "addr add {a}/32 dev lo");
    }
    let mut ip = ns.cmd("ip");
    ip.args(["-batch", "-"]).stdin(std::process::Stdio::piped());
    let mut child = ip.spawn().expect("ip -batch");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), batch.as_bytes())
        .expect("write ip batch");
    assert!(child.wait().expect("ip").success(), "ip -batch failed");
    ns.enter().expect("enter the bench namespace");
    let loaded = policy_compiler::manifest::parse("bench.yaml", &manifests(pods));
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let cluster = policy_compiler::Cluster::from_objects(loaded.objects);
    let rs = policy_compiler::compile(&cluster, "node-1");
    Session::open()
        .expect("netlink")
        .apply(&rs)
        .expect("apply the ruleset");
    let scope = Scope {
        local_pods: nftpol::revoke::local_pod_addresses(&cluster, "node-1"),
        node_local: Vec::new(),
    };
    let mut ct = Conntrack::open().expect("conntrack netlink");
    let mut out = String::from(
        "| isolated local pods | entries | pass | median ms | entries cut |\n|---|---|---|---|---|\n",
    );
    for &n in &sizes {
        let (mut dump, mut keep, mut cut) = (Vec::new(), Vec::new(), Vec::new());
        let mut cut_count = 0;
        for _ in 0..ROUNDS {
            flows(n, false);
            let t0 = std::time::Instant::now();
            let mut seen = 0usize;
            ct.dump(|_| seen += 1).expect("dump");
            dump.push(t0.elapsed());
            assert!(seen >= n, "{n}: dumped {seen}");
            let r = revoke_with(&mut ct, &rs, &scope).expect("revoke (allowed)");
            assert!(
                r.denied.is_empty() && r.judged >= n,
                "{n}: {} judged",
                r.judged
            );
            keep.push(r.elapsed);
            flows(n, true);
            let r = revoke_with(&mut ct, &rs, &scope).expect("revoke (denied)");
            cut_count = r.deleted;
            cut.push(r.elapsed);
        }
        let _ = writeln!(
            out,
            "| {pods} | {n} allowed | dump only | {:.1} | 0 |",
            median(dump).as_secs_f64() * 1e3
        );
        let _ = writeln!(
            out,
            "| {pods} | {n} allowed | dump + judge, nothing cut | {:.1} | 0 |",
            median(keep).as_secs_f64() * 1e3
        );
        let _ = writeln!(
            out,
            "| {pods} | {n} allowed + {n} denied | dump + judge + delete | {:.1} | {cut_count} |",
            median(cut).as_secs_f64() * 1e3
        );
    }
    print!("{out}");
    drop(ct);
    drop(ns);
}

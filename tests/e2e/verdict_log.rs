//! The verdict log on the simulated cluster: the agents read the nflog
//! group while real probes run. A denied probe is logged naming the
//! policy and both pods; a flood of denied packets is logged only at the
//! rate the kernel lets through, and dropped in full, and the agent's
//! per-policy metric counts every dropped packet; a staged policy
//! drops nothing and logs `would-deny`, and enforces once its annotation
//! goes; the whole matrix matches the evaluator with logging on.

use crate::agent::Agent;
use crate::cluster::{nftpol_bin, SimCluster};
use crate::probe::{Probe, Proto};
use std::process::Command;
use std::time::{Duration, Instant};

/// How long a change may take to reach a node's table, or a logged
/// packet the agent's log: every wait on it is polled and ends early, so
/// it is generous for debug-built agents on a loaded CI machine.
const WAIT: Duration = Duration::from_secs(60);
/// `--log-rate` of the agents: lines per second each log rule lets out
/// (burst 5 on top).
const RATE: u64 = 2;
const BURST: u64 = 5;

fn policy(name: &str, annotations: &str, pod: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: {name}\n  namespace: x\n  annotations: {{{annotations}}}\nspec:\n  podSelector: {{matchLabels: {{pod: {pod}}}}}\n  policyTypes: [Ingress]\n"
    )
}

/// Waits (bounded) until `node`'s table contains `needle`.
fn wait_for_table(c: &SimCluster, node: &str, needle: &str) {
    let t0 = Instant::now();
    while !c.ruleset(node).contains(needle) {
        assert!(
            t0.elapsed() < WAIT,
            "{node} never got {needle:?}:\n{}",
            c.ruleset(node)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The agent's verdict lines that contain every one of `parts`.
fn lines(agent: &Agent, parts: &[&str]) -> Vec<String> {
    agent
        .log_text()
        .lines()
        .filter(|l| l.contains("nftpol::verdict") && parts.iter().all(|p| l.contains(p)))
        .map(str::to_string)
        .collect()
}

/// Waits (bounded) for at least one such line.
fn wait_for_line(agent: &Agent, parts: &[&str]) -> String {
    let t0 = Instant::now();
    loop {
        if let Some(l) = lines(agent, parts).into_iter().next() {
            return l;
        }
        assert!(
            t0.elapsed() < WAIT,
            "no verdict line with {parts:?}; agent log:\n{}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `name{labels} value` from the agent's /metrics on `node`.
fn metric(c: &SimCluster, node: &str, series: &str) -> u64 {
    let out = Command::new("ip")
        .args(["netns", "exec", &c.topo.node(node).netns])
        .args([
            "curl",
            "-sf",
            // Generous: a debug-built agent on a loaded CI machine may
            // answer late, and a failed read would read as 0.
            "--max-time",
            "30",
            "http://127.0.0.1:9464/metrics",
        ])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn denied_and_staged_verdicts_are_logged_rate_limited_and_change_nothing() {
    require_root!();
    let mut c = SimCluster::upstream_model();
    let dir = c.dir.join("watched");
    c.write_manifests_to(&dir);
    c.check("baseline, before the agents start");
    let rate = RATE.to_string();
    let mut agents: Vec<Agent> = c
        .topo
        .nodes
        .iter()
        .map(|n| {
            Agent::start_with(
                &n.netns,
                &n.name,
                &dir,
                c.dir.join(format!("agent-{}.log", n.name)),
                &["--log-rate", &rate, "--counters-interval", "200ms"],
            )
        })
        .collect();
    let xa = c.pod_index("x", "a");
    let xb = c.pod_index("x", "b");
    let zb = c.pod_index("z", "b");
    let node_of = |i: usize| c.topo.pods[i].node.clone();
    let agent_of = |node: &str| {
        c.topo
            .nodes
            .iter()
            .position(|n| n.name == node)
            .expect("node")
    };
    let (na, nb) = (node_of(xa), node_of(xb));
    let (ia, ib) = (agent_of(&na), agent_of(&nb));

    // 1. x/a isolated, its drops logged: a denied probe names the policy
    // and both pods.
    c.put_policy(&policy("deny-a", r#"nftpol.io/log: deny"#, "a"));
    c.write_manifests_to(&dir);
    let zb_name = c.label(zb);
    let xa_name = c.label(xa);
    wait_for_table(&c, &na, &format!("{xa_name} default-deny"));
    for a in agents.iter_mut() {
        if let Some(log) = a.exited() {
            panic!("{log}");
        }
    }
    let probe = |src, dst, proto, port| Probe {
        src,
        dst,
        v6: false,
        proto,
        port,
    };
    let denied = [probe(zb, xa, Proto::Tcp, 80)];
    let expected = c.expected(&denied);
    assert_eq!(expected, [false]);
    assert_eq!(c.observe(&denied, &expected), expected);
    let l = wait_for_line(
        &agents[ia],
        &[
            "verdict=deny",
            "policy=x/deny-a",
            "direction=ingress",
            &format!("src_pod={zb_name}"),
            &format!("dst_pod={xa_name}"),
            "proto=tcp",
            "port=80",
        ],
    );
    eprintln!("denied probe logged: {l}");

    // 2. A flood of 300 denied UDP packets: all dropped (the drop rule
    // counts them), at most burst + rate x time of them logged.
    let udp_lines = |a: &Agent| lines(a, &["verdict=deny", "proto=udp", "port=81", &xa_name]).len();
    let before = udp_lines(&agents[ia]);
    let drops_before = isolation_drops(&c, &na, "x/deny-a");
    let t0 = Instant::now();
    let target = c.topo.pods[xa].v4.to_string();
    let script = format!(
        "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\nfor _ in range(300): s.sendto(b'x',('{target}',81))\n"
    );
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &c.topo.pods[zb].netns,
            "python3",
            "-c",
            &script,
        ])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let flood_secs = t0.elapsed().as_secs() + 1;
    // Let the reader catch up: at least one line, then the count
    // unchanged for a second (bounded by WAIT). A fixed pause read 0
    // lines whenever a loaded machine kept the agent off the CPU; the
    // kernel's limit, not the reader, bounds the count from above.
    let settle = Instant::now();
    let mut logged = udp_lines(&agents[ia]) - before;
    let mut still = 0;
    while (logged == 0 || still < 10) && settle.elapsed() < WAIT {
        std::thread::sleep(Duration::from_millis(100));
        let now = udp_lines(&agents[ia]) - before;
        still = if now == logged { still + 1 } else { 0 };
        logged = now;
    }
    let drops = isolation_drops(&c, &na, "x/deny-a") - drops_before;
    let bound = BURST + RATE * (flood_secs + 1);
    eprintln!(
        "flood: 300 packets sent in {:.2?}, {drops} dropped, {logged} logged (bound {bound})",
        t0.elapsed()
    );
    assert!(drops >= 300, "every flood packet is dropped: {drops}");
    assert!(
        (1..=bound as usize).contains(&logged),
        "{logged} lines for 300 packets"
    );
    let counted = metric(&c, &na, r#"nftpol_verdict_logs_total{verdict="deny"}"#);
    assert!(
        counted >= logged as u64 && counted <= logged as u64 + 10,
        "metric {counted} vs {logged} lines"
    );

    // The agent's per-policy metric follows the kernel's counters: every
    // packet counted on behalf of x/deny-a (its chain was written once,
    // after the agent started, and no traffic goes to x/a any more).
    let kernel = isolation_drops(&c, &na, "x/deny-a");
    let series = r#"nftpol_policy_packets_total{policy="x/deny-a",direction="ingress"}"#;
    let mut exported = metric(&c, &na, series);
    let t1 = Instant::now();
    while exported != kernel && t1.elapsed() < WAIT {
        std::thread::sleep(Duration::from_millis(100));
        exported = metric(&c, &na, series);
    }
    assert_eq!(
        exported, kernel,
        "{series} on {na} vs the kernel's counters"
    );

    // 3. A staged policy on x/b drops nothing and logs what it would deny.
    c.put_policy(&policy("staged-b", r#"nftpol.io/enforcement: audit"#, "b"));
    c.write_manifests_to(&dir);
    wait_for_table(&c, &nb, "would-deny");
    let staged = [probe(zb, xb, Proto::Tcp, 80)];
    let expected = c.expected(&staged);
    assert_eq!(expected, [true], "a staged policy enforces nothing");
    assert_eq!(c.observe(&staged, &expected), expected);
    let l = wait_for_line(
        &agents[ib],
        &[
            "verdict=would-deny",
            "x/staged-b",
            &format!("src_pod={zb_name}"),
            &format!("dst_pod={}", c.label(xb)),
        ],
    );
    eprintln!("staged denial logged: {l}");
    // Logging never changes a verdict: the whole matrix, as evaluated.
    let r = c.verify_programmed("logging on, x/a denied, x/b staged", Instant::now(), |_| {});
    assert!(r.mismatches.is_empty(), "{}", r.text);

    // 4. Without the annotation the same policy enforces.
    c.put_policy(&policy("staged-b", "", "b"));
    c.write_manifests_to(&dir);
    wait_for_table(&c, &nb, "ingress isolated by x/staged-b");
    let expected = c.expected(&staged);
    assert_eq!(expected, [false]);
    assert_eq!(c.observe(&staged, &expected), expected);
    for a in agents.iter_mut() {
        if let Some(log) = a.exited() {
            panic!("{log}");
        }
    }
    let lost = metric(
        &c,
        &na,
        r#"nftpol_verdict_logs_lost_total{reason="malformed"}"#,
    );
    assert_eq!(lost, 0, "the kernel's messages all decode");
}

/// Isolation drops counted for `policy` ingress on `node` (`nftpol hits`).
fn isolation_drops(c: &SimCluster, node: &str, policy: &str) -> u64 {
    let out = Command::new("ip")
        .args(["netns", "exec", &c.topo.node(node).netns, nftpol_bin()])
        .args(["hits", "--format", "json"])
        .output()
        .expect("nftpol hits");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("hits JSON");
    v.as_array()
        .and_then(|rows| {
            rows.iter()
                .find(|r| r["policy"] == policy && r["direction"] == "ingress")
        })
        .and_then(|r| r["isolation_drops"].as_u64())
        .unwrap_or_else(|| panic!("{policy} not on {node}: {v}"))
}

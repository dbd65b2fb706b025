//! Generated policies: random selectors, ports, ipBlocks and policy types
//! over the upstream model, with random pod and namespace label changes
//! between steps, every step compared cell by cell with the evaluator.
//!
//! The seed is printed and can be fixed with NFTPOL_E2E_SEED to replay a
//! failure; NFTPOL_E2E_GENERATED_STEPS sets how many steps run (default 8,
//! one shared topology, so each step also exercises an incremental update).

use crate::cluster::{labels, SimCluster};
use crate::scenarios::np;

/// xorshift64*: small, deterministic, good enough to pick shapes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

const PODS: [&str; 3] = ["a", "b", "c"];
const NSS: [&str; 3] = ["x", "y", "z"];

fn pod_selector(r: &mut Rng) -> String {
    match r.below(5) {
        0 => "{}".into(),
        1 => format!("{{matchLabels: {{pod: {}}}}}", r.pick(&PODS)),
        2 => format!(
            "{{matchExpressions: [{{key: pod, operator: In, values: [{}, {}]}}]}}",
            r.pick(&PODS),
            r.pick(&PODS)
        ),
        3 => format!(
            "{{matchExpressions: [{{key: pod, operator: NotIn, values: [{}]}}]}}",
            r.pick(&PODS)
        ),
        _ => "{matchExpressions: [{key: extra, operator: Exists}]}".into(),
    }
}

fn namespace_selector(r: &mut Rng) -> String {
    match r.below(4) {
        0 => "{}".into(),
        1 => format!("{{matchLabels: {{ns: {}}}}}", r.pick(&NSS)),
        2 => format!(
            "{{matchExpressions: [{{key: kubernetes.io/metadata.name, operator: NotIn, values: [{}]}}]}}",
            r.pick(&NSS)
        ),
        _ => "{matchExpressions: [{key: team, operator: DoesNotExist}]}".into(),
    }
}

/// One peer; ipBlocks use the cluster's real addresses so they matter.
fn peer(r: &mut Rng, c: &SimCluster) -> String {
    match r.below(6) {
        0 => format!("- podSelector: {}", pod_selector(r)),
        1 => format!("- namespaceSelector: {}", namespace_selector(r)),
        2 => format!(
            "- podSelector: {}\n  namespaceSelector: {}",
            pod_selector(r),
            namespace_selector(r)
        ),
        3 => {
            // A node's pod CIDR, or everything, minus one pod.
            let p = &c.topo.pods[r.below(c.topo.pods.len())];
            let node = c.topo.node(&p.node).index;
            let (v4, v6) = if r.chance(50) {
                (
                    format!("10.244.{node}.0/24"),
                    format!("fd00:10:244:{node}::/64"),
                )
            } else {
                ("10.0.0.0/8".to_string(), "fd00::/8".to_string())
            };
            format!(
                "- ipBlock: {{cidr: {v4}, except: [{}/32]}}\n- ipBlock: {{cidr: \"{v6}\", except: [\"{}/128\"]}}",
                p.v4, p.v6
            )
        }
        4 => {
            let p = &c.topo.pods[r.below(c.topo.pods.len())];
            if r.chance(50) {
                format!("- ipBlock: {{cidr: {}/32}}", p.v4)
            } else {
                format!("- ipBlock: {{cidr: \"{}/128\"}}", p.v6)
            }
        }
        _ => format!(
            "- podSelector: {}\n- namespaceSelector: {}",
            pod_selector(r),
            namespace_selector(r)
        ),
    }
}

fn port(r: &mut Rng) -> String {
    match r.below(8) {
        0 => "- port: 80".into(),
        1 => "- {port: 81, protocol: UDP}".into(),
        2 => format!("- port: serve-{}-tcp", r.pick(&[80, 81])),
        3 => format!("- {{port: serve-{}-udp, protocol: UDP}}", r.pick(&[80, 81])),
        4 => format!(
            "- {{port: 70, endPort: {}, protocol: {}}}",
            r.pick(&[80, 81, 90]),
            r.pick(&["TCP", "UDP"])
        ),
        5 => format!("- protocol: {}", r.pick(&["TCP", "UDP"])),
        6 => "- {port: 80, protocol: SCTP}".into(),
        _ => "- {port: 81, protocol: TCP}".into(),
    }
}

fn rule(r: &mut Rng, c: &SimCluster, peer_key: &str) -> String {
    let mut s = String::from("- ");
    let mut first = true;
    if !r.chance(20) {
        s.push_str(&format!("{peer_key}:\n"));
        first = false;
        for _ in 0..1 + r.below(2) {
            for l in peer(r, c).lines() {
                s.push_str(&format!("  {l}\n"));
            }
        }
    }
    if r.chance(60) {
        if !first {
            s.push_str("  ");
        }
        s.push_str("ports:\n");
        first = false;
        for _ in 0..1 + r.below(2) {
            s.push_str(&format!("  {}\n", port(r)));
        }
    }
    if first {
        s.push_str("{}\n");
    }
    s
}

fn policy(r: &mut Rng, c: &SimCluster, name: &str) -> String {
    let ns = *r.pick(&NSS);
    let mut spec = format!("podSelector: {}\n", pod_selector(r));
    let (ing, eg) = match r.below(3) {
        0 => (true, false),
        1 => (false, true),
        _ => (true, true),
    };
    let types: Vec<&str> = [("Ingress", ing), ("Egress", eg)]
        .into_iter()
        .filter(|t| t.1)
        .map(|t| t.0)
        .collect();
    spec.push_str(&format!("policyTypes: [{}]\n", types.join(", ")));
    if ing && !r.chance(15) {
        spec.push_str("ingress:\n");
        for _ in 0..1 + r.below(2) {
            spec.push_str(&rule(r, c, "from"));
        }
    }
    if eg && !r.chance(15) {
        spec.push_str("egress:\n");
        for _ in 0..1 + r.below(2) {
            spec.push_str(&rule(r, c, "to"));
        }
    }
    np(ns, name, &spec)
}

#[test]
fn generated_policies_match_the_evaluator() {
    require_root!();
    let seed: u64 = std::env::var("NFTPOL_E2E_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
        | 1;
    let steps: usize = std::env::var("NFTPOL_E2E_GENERATED_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    eprintln!("generated policies: NFTPOL_E2E_SEED={seed} ({steps} steps)");
    let mut r = Rng(seed);
    let mut c = SimCluster::upstream_model();
    for step in 0..steps {
        c.clear_policies();
        for i in 0..1 + r.below(4) {
            let p = policy(&mut r, &c, &format!("gen-{step}-{i}"));
            c.put_policy(&p);
        }
        // Relabel one pod and one namespace now and then, so selectors
        // that match nothing at first start matching (and back).
        if r.chance(50) {
            let (ns, pod) = (*r.pick(&NSS), *r.pick(&PODS));
            let mut l = labels(&[("pod", pod)]);
            if r.chance(50) {
                l.insert("extra".into(), "yes".into());
            }
            c.set_pod_labels(ns, pod, l);
        }
        if r.chance(30) {
            let ns = *r.pick(&NSS);
            let mut l = labels(&[("ns", ns)]);
            if r.chance(50) {
                l.insert("team".into(), "blue".into());
            }
            c.set_namespace_labels(ns, l);
        }
        c.check(&format!("generated step {step} (seed {seed})"));
        crate::sctp::check_sctp(&mut c, &format!("generated step {step}, SCTP packets"));
    }
}

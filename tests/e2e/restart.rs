//! "Restart without a gap": while allowed and denied connections run
//! continuously, every node is reprogrammed over and over (each run of
//! `nftpol apply` is a fresh process, like an agent restart or upgrade,
//! and never removes the table), and not one probe may be wrongly dropped
//! or wrongly allowed.
//!
//! Probes here are strict (one SYN or one datagram, timeout below TCP's
//! SYN retransmit) and never retried, so even a short window shows. With
//! a changed policy set, only flows whose verdict is the same before and
//! after are judged; the flows the change flips are checked by a full
//! matrix at the end.

use crate::agent::Agent;
use crate::cluster::{Programmer, SimCluster};
use crate::probe::{self, spawn_in, Probe};
use crate::scenarios::np;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Under TCP's 1 s initial retransmission timeout.
const STRICT_TIMEOUT: Duration = Duration::from_millis(900);
/// How long the re-apply loop runs per phase.
const PHASE: Duration = Duration::from_secs(6);
/// Re-applies every phase runs, however long they take: what the phases
/// assert (both sets applied, a restart that found its table) needs two,
/// and on a loaded CI machine two agent restarts can outlast [`PHASE`].
const MIN_APPLIES: usize = 2;
/// Upper bound on re-applies per phase (each is two process runs).
const MAX_APPLIES: usize = 200;
/// Concurrent loops per denied flow (each sample costs a full timeout).
const DENIED_LOOPS: usize = 3;

fn policies_a() -> Vec<String> {
    vec![
        np(
            "x",
            "deny-ingress",
            "podSelector: {}\npolicyTypes: [Ingress]",
        ),
        np(
            "x",
            "a-from-y",
            r#"
podSelector: {matchLabels: {pod: a}}
ingress:
- from:
  - namespaceSelector: {matchLabels: {ns: y}}
  ports:
  - {port: 80, protocol: TCP}
  - {port: 80, protocol: UDP}
"#,
        ),
        np(
            "z",
            "egress-to-x-only",
            "podSelector: {}\negress:\n- to:\n  - namespaceSelector: {matchLabels: {ns: x}}",
        ),
    ]
}

/// A differs from B in rules, peers, ports and set elements.
fn policies_b() -> Vec<String> {
    let mut v = policies_a();
    v[1] = np(
        "x",
        "a-from-y",
        r#"
podSelector: {matchLabels: {pod: a}}
ingress:
- from:
  - namespaceSelector: {matchLabels: {ns: y}}
  - podSelector: {matchLabels: {pod: b}}
  ports:
  - {port: 80, protocol: TCP}
  - {port: 80, endPort: 81, protocol: UDP}
"#,
    );
    v.push(np(
        "y",
        "c-from-z",
        "podSelector: {matchLabels: {pod: c}}\ningress:\n- from:\n  - namespaceSelector: {matchLabels: {ns: z}}",
    ));
    v
}

fn set_policies(c: &mut SimCluster, set: &[String]) {
    c.clear_policies();
    for p in set {
        c.put_policy(p);
    }
}

/// Up to `per_kind` flows of each (verdict, family, protocol, same/cross
/// node) class whose verdict is identical under every given set.
fn stable_flows(c: &mut SimCluster, sets: &[Vec<String>], per_kind: usize) -> Vec<(Probe, bool)> {
    let probes = probe::all_probes(c.pods.len(), &[false, true]);
    let mut verdicts: Vec<Vec<bool>> = Vec::new();
    for s in sets {
        set_policies(c, s);
        verdicts.push(c.expected(&probes));
    }
    let mut picked: Vec<(Probe, bool)> = Vec::new();
    let mut counts = std::collections::BTreeMap::new();
    for (i, p) in probes.iter().enumerate() {
        if p.src == p.dst || verdicts.iter().any(|v| v[i] != verdicts[0][i]) {
            continue;
        }
        let cross = c.topo.pods[p.src].node != c.topo.pods[p.dst].node;
        let class = (verdicts[0][i], p.v6, p.proto, cross);
        let n = counts.entry(class).or_insert(0usize);
        if *n < per_kind {
            *n += 1;
            picked.push((*p, verdicts[0][i]));
        }
    }
    picked
}

struct Tally {
    samples: AtomicUsize,
    wrong: AtomicUsize,
}

/// Runs `flows` continuously until `stop`; returns per-flow tallies.
fn probe_loops(
    c: &SimCluster,
    flows: &[(Probe, bool)],
    stop: &Arc<AtomicBool>,
) -> (Vec<Arc<Tally>>, Vec<std::thread::JoinHandle<()>>) {
    let (netns, ips) = c.netns_and_ips();
    let mut tallies = Vec::new();
    let mut handles = Vec::new();
    for &(p, allowed) in flows {
        let t = Arc::new(Tally {
            samples: AtomicUsize::new(0),
            wrong: AtomicUsize::new(0),
        });
        tallies.push(t.clone());
        let (v4, v6) = ips[p.dst];
        let dst: IpAddr = if p.v6 { v6.into() } else { v4.into() };
        let loops = if allowed { 1 } else { DENIED_LOOPS };
        let timeout = strict_timeout(p.proto, allowed);
        for k in 0..loops {
            let (t, stop) = (t.clone(), stop.clone());
            handles.push(spawn_in(&netns[p.src], move || {
                // Stagger the denied loops so their samples cover the
                // timeline instead of bunching together.
                std::thread::sleep(STRICT_TIMEOUT * k as u32 / DENIED_LOOPS as u32);
                let start = Instant::now();
                // A backstop only (the stop flag ends the loop): past the
                // longest phase a loaded machine can stretch to.
                let deadline = start + PHASE * 50;
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let ok = probe::probe_strict(dst, p.proto, p.port, timeout);
                    t.samples.fetch_add(1, Ordering::Relaxed);
                    if ok != allowed {
                        // Only the first few: a broken ruleset would print
                        // thousands.
                        if t.wrong.fetch_add(1, Ordering::Relaxed) < 3 {
                            eprintln!(
                                "wrong probe: {p:?} expected {allowed} at +{:.2?}",
                                start.elapsed()
                            );
                        }
                    }
                    if ok {
                        // Keep fast (answered) loops frequent but bounded,
                        // so the ephemeral port range and the conntrack
                        // table are not exhausted.
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }));
        }
    }
    (tallies, handles)
}

/// How long one strict sample of a flow waits for its answer. TCP must
/// stay under the SYN retransmit, which would hide a dropped SYN; that
/// wait is all in the kernel (the handshake needs no server thread). An
/// allowed UDP sample's answer needs the echo server's thread, which a
/// loaded CI machine can keep off the CPU for longer, and its single
/// datagram is never resent, so waiting longer hides no gap: a datagram
/// dropped in one is never answered. The wait ends at the answer.
fn strict_timeout(proto: probe::Proto, allowed: bool) -> Duration {
    if allowed && proto == probe::Proto::Udp {
        probe::ANSWER_LIMIT
    } else {
        STRICT_TIMEOUT
    }
}

/// What one phase saw.
struct PhaseResult {
    applies: usize,
    /// What each programming run printed, in order.
    outputs: Vec<String>,
    wrong_allowed: usize,
    wrong_dropped: usize,
    report: String,
}

/// Re-applies `sets` in turn on every node for [`PHASE`] while the flows
/// run.
fn run_phase(
    c: &mut SimCluster,
    name: &str,
    sets: &[Vec<String>],
    flows: &[(Probe, bool)],
) -> PhaseResult {
    run_phase_with(c, name, sets, flows, |c, i| {
        set_policies(c, &sets[i % sets.len()]);
        let dir = c.write_manifests();
        ["node1", "node2"]
            .iter()
            .map(|node| c.program_node(node, &dir))
            .collect()
    })
}

/// The probe loops of [`run_phase`] around any reprogramming step:
/// `reprogram(c, i)` runs once per iteration and returns what each
/// programming run printed (or why it failed).
fn run_phase_with(
    c: &mut SimCluster,
    name: &str,
    sets: &[Vec<String>],
    flows: &[(Probe, bool)],
    mut reprogram: impl FnMut(&mut SimCluster, usize) -> Result<Vec<String>, String>,
) -> PhaseResult {
    set_policies(c, &sets[0]);
    c.program();
    let stop = Arc::new(AtomicBool::new(false));
    let (tallies, handles) = probe_loops(c, flows, &stop);
    // Let every loop take a first sample under the settled ruleset.
    std::thread::sleep(STRICT_TIMEOUT);
    let t0 = Instant::now();
    let mut applies = 0;
    let mut apply_out = Vec::new();
    let max_applies: usize = std::env::var("NFTPOL_E2E_MAX_APPLIES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(MAX_APPLIES);
    if max_applies == 0 {
        std::thread::sleep(PHASE);
    }
    while (t0.elapsed() < PHASE || applies < MIN_APPLIES.min(max_applies)) && applies < max_applies
    {
        match reprogram(c, applies) {
            Ok(out) => apply_out.extend(out),
            Err(e) => {
                stop.store(true, Ordering::Relaxed);
                panic!("{name}: {e}");
            }
        }
        applies += 1;
    }
    // One more timeout so probes in flight during the last apply finish.
    std::thread::sleep(STRICT_TIMEOUT);
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().expect("probe loop");
    }
    let mut report = String::new();
    let (mut ok_samples, mut deny_samples) = (0, 0);
    let (mut wrong_allowed, mut wrong_dropped) = (0, 0);
    for ((p, allowed), t) in flows.iter().zip(&tallies) {
        let (s, w) = (
            t.samples.load(Ordering::Relaxed),
            t.wrong.load(Ordering::Relaxed),
        );
        if *allowed {
            ok_samples += s;
            wrong_dropped += w;
        } else {
            deny_samples += s;
            wrong_allowed += w;
        }
        if w > 0 || s == 0 {
            report.push_str(&format!(
                "  {} -> {} {} {}/{} expected {}: {w} wrong of {s}\n",
                c.label(p.src),
                c.label(p.dst),
                if p.v6 { "IPv6" } else { "IPv4" },
                p.proto.name(),
                p.port,
                if *allowed { "allowed" } else { "denied" },
            ));
        }
    }
    let last = apply_out
        .last()
        .and_then(|o| o.trim().lines().last().map(str::to_string))
        .unwrap_or_default();
    let unchanged = apply_out
        .iter()
        .filter(|o| o.contains("no changes"))
        .count();
    eprintln!(
        "{name}: {applies} re-applies x 2 nodes in {:.1?}; {ok_samples} allowed and \
         {deny_samples} denied probes over {} flows; {wrong_allowed} wrongly allowed, \
         {wrong_dropped} wrongly dropped; {unchanged} runs said \"no changes\" (last: {})",
        t0.elapsed(),
        flows.len(),
        last.trim()
    );
    PhaseResult {
        applies,
        outputs: apply_out,
        wrong_allowed,
        wrong_dropped,
        report,
    }
}

/// [`run_phase`], asserting not one wrong probe.
fn phase(c: &mut SimCluster, name: &str, sets: &[Vec<String>], flows: &[(Probe, bool)]) {
    let r = run_phase(c, name, sets, flows);
    assert!(
        r.wrong_allowed + r.wrong_dropped == 0 && r.report.is_empty(),
        "{name}: probes went wrong while re-applying:\n{}\n{}\n{}",
        r.report,
        c.ruleset("node1"),
        c.ruleset("node2")
    );
    assert!(r.applies >= 2, "{name}: only {} re-applies ran", r.applies);
    // `nftpol apply` of an unchanged set must send nothing: every run
    // after the table was first brought up to date says so.
    if c.programmer == Programmer::Apply && sets.len() == 1 {
        let busy: Vec<&String> = r
            .outputs
            .iter()
            .filter(|o| !o.contains("no changes"))
            .collect();
        assert!(
            busy.is_empty(),
            "{name}: re-applying an unchanged set changed something: {busy:?}"
        );
    }
}

/// Agent restarts: every iteration SIGKILLs the running agents (a crash:
/// no cleanup at all) and starts new ones on the same manifests, which
/// must take over the table they find without disturbing a single flow.
fn agent_restarts(c: &mut SimCluster, set: &[String], flows: &[(Probe, bool)]) -> PhaseResult {
    set_policies(c, set);
    let dir = c.dir.join("agent-restarts");
    c.write_manifests_to(&dir);
    let mut running: Vec<Agent> = Vec::new();
    let r = run_phase_with(
        c,
        "agent restarts",
        std::slice::from_ref(&set.to_vec()),
        flows,
        |c, i| {
            for a in running.iter_mut() {
                a.kill_hard();
            }
            running.clear();
            for n in &c.topo.nodes {
                let log = c.dir.join(format!("restart-{}-{i}.log", n.name));
                running.push(Agent::start(&n.netns, &n.name, &dir, log));
            }
            // Each has listed the files, read the kernel back and decided.
            running.iter_mut().map(Agent::wait_reconciled).collect()
        },
    );
    drop(running);
    r
}

#[test]
fn restart_without_a_gap() {
    require_root!();
    let mut c = SimCluster::upstream_model();
    if c.programmer != Programmer::Apply {
        eprintln!("note: re-applying with `nftpol compile | nft -f` (also one atomic transaction)");
    }
    let a = policies_a();
    let b = policies_b();
    let flows = stable_flows(&mut c, &[a.clone(), b.clone()], 2);
    assert!(
        flows.iter().any(|f| f.1) && flows.iter().any(|f| !f.1),
        "need both allowed and denied stable flows"
    );
    phase(
        &mut c,
        "unchanged policy set",
        std::slice::from_ref(&a),
        &flows,
    );
    phase(
        &mut c,
        "changed policy sets (A, B, A, ...)",
        &[a.clone(), b.clone()],
        &flows,
    );
    if c.programmer == Programmer::Apply {
        let r = agent_restarts(&mut c, &a, &flows);
        assert!(
            r.wrong_allowed + r.wrong_dropped == 0 && r.report.is_empty(),
            "agent restarts: probes went wrong:\n{}\n{}\n{}",
            r.report,
            c.ruleset("node1"),
            c.ruleset("node2")
        );
        assert!(r.applies >= 2, "only {} agent restarts ran", r.applies);
        // A restarted agent finds the table right and sends no batch.
        let updated: Vec<&String> = r
            .outputs
            .iter()
            .filter(|l| l.contains("kernel table updated"))
            .collect();
        let idle = r
            .outputs
            .iter()
            .filter(|l| l.contains("already up to date"))
            .count();
        eprintln!(
            "agent restarts: {idle} of {} restarted agents logged an idle reconcile",
            r.outputs.len()
        );
        assert!(
            updated.is_empty(),
            "a restarted agent changed an already correct table:\n{}",
            updated
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n---\n")
        );
    }
    // The flipping flows: the final state must be exactly B's matrix.
    set_policies(&mut c, &b);
    c.check("after the re-apply loop, policy set B");
}

/// The gap detector itself: a programmer that deletes the table and loads
/// it again 200 ms later (not atomic) must be caught letting denied
/// probes through.
#[test]
fn restart_gap_detector_catches_a_gap() {
    require_root!();
    let mut c = SimCluster::upstream_model();
    let a = policies_a();
    let flows = stable_flows(&mut c, std::slice::from_ref(&a), 2);
    c.programmer = Programmer::GappyForSelfTest;
    let r = run_phase(
        &mut c,
        "deliberately gappy re-apply",
        std::slice::from_ref(&a),
        &flows,
    );
    assert!(
        r.wrong_allowed > 0,
        "a 200 ms unfiltered window on every re-apply went unnoticed ({} re-applies)",
        r.applies
    );
}

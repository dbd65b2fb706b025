//! Change review for `nftpol diff`: what changes in the `inet nftpol`
//! table between two rulesets, as a reader wants it (chains with their
//! rules line by line, sets with their elements), and which pod-to-pod
//! flows change verdict. The transaction `apply` would send is computed by
//! `policy_compiler::diff`; this shows the same difference for people.

use super::describe_side;
use policy_compiler::compile::CHAIN_FORWARD;
use policy_compiler::eval::Endpoint;
use policy_compiler::interp::{self, Packet, Trace};
use policy_compiler::ir::{Chain, Ruleset, Set, SetKind, TABLE_F_DORMANT};
use policy_compiler::matrix::{FlowChange, Probe};
use policy_compiler::render::{render_element, render_rule};
use similar::{capture_diff_slices, Algorithm, ChangeTag};
use std::fmt::Write as _;
use std::net::IpAddr;

fn base_text(c: &Chain) -> Option<String> {
    c.base.as_ref().map(|b| {
        let device = b
            .device
            .as_ref()
            .map(|d| format!(" device \"{d}\""))
            .unwrap_or_default();
        format!(
            "type filter hook {}{device} priority {}; policy {};",
            b.hook.as_str(),
            b.priority,
            match b.policy {
                policy_compiler::ir::ChainPolicy::Accept => "accept",
                policy_compiler::ir::ChainPolicy::Drop => "drop",
            }
        )
    })
}

/// `set NAME (type ...)` / `map NAME (type ... : verdict)`.
fn set_head(name: &str, kind: SetKind) -> String {
    let (kw, ty) = match kind {
        SetKind::Addr { family, interval } => (
            "set",
            format!(
                "type {}{}",
                family.addr_type(),
                if interval { ", flags interval" } else { "" }
            ),
        ),
        SetKind::Ports => ("set", "type inet_service, flags interval".into()),
        SetKind::AddrProtoPort { family } => (
            "set",
            format!("type {} . inet_proto . inet_service", family.addr_type()),
        ),
        SetKind::Vmap { family } => ("map", format!("type {} : verdict", family.addr_type())),
    };
    format!("{kw} {name} ({ty})")
}

fn rule_lines(c: &Chain) -> Vec<String> {
    c.rules.iter().map(render_rule).collect()
}

fn plural(n: usize, one: &str) -> String {
    if n == 1 {
        format!("{n} {one}")
    } else {
        format!("{n} {one}s")
    }
}

fn chain_changes(before: &Ruleset, after: &Ruleset, s: &mut String) -> usize {
    let mut n = 0;
    let names: std::collections::BTreeSet<&String> =
        before.chains.keys().chain(after.chains.keys()).collect();
    for name in names {
        match (before.chains.get(name), after.chains.get(name)) {
            (None, Some(c)) => {
                n += 1;
                let _ = writeln!(s, "+ chain {name} ({})", plural(c.rules.len(), "rule"));
                if let Some(b) = base_text(c) {
                    let _ = writeln!(s, "    + {b}");
                }
                for r in rule_lines(c) {
                    let _ = writeln!(s, "    + {r}");
                }
            }
            (Some(c), None) => {
                n += 1;
                let _ = writeln!(s, "- chain {name} ({})", plural(c.rules.len(), "rule"));
                for r in rule_lines(c) {
                    let _ = writeln!(s, "    - {r}");
                }
            }
            (Some(a), Some(b)) if a != b => {
                n += 1;
                let _ = writeln!(s, "~ chain {name}");
                let (ba, bb) = (base_text(a), base_text(b));
                if ba != bb {
                    let none = || "(regular chain)".to_string();
                    let _ = writeln!(s, "    - {}", ba.unwrap_or_else(none));
                    let _ = writeln!(s, "    + {}", bb.unwrap_or_else(none));
                }
                let (ra, rb) = (rule_lines(a), rule_lines(b));
                for op in capture_diff_slices(Algorithm::Myers, &ra, &rb) {
                    for change in op.iter_changes(&ra, &rb) {
                        let mark = match change.tag() {
                            ChangeTag::Equal => ' ',
                            ChangeTag::Delete => '-',
                            ChangeTag::Insert => '+',
                        };
                        let _ = writeln!(s, "    {mark} {}", change.value());
                    }
                }
            }
            _ => {}
        }
    }
    n
}

fn set_changes(before: &Ruleset, after: &Ruleset, s: &mut String) -> usize {
    let mut n = 0;
    let names: std::collections::BTreeSet<&String> =
        before.sets.keys().chain(after.sets.keys()).collect();
    let empty = |kind| Set {
        kind,
        elements: Default::default(),
    };
    for name in names {
        let (a, b) = (before.sets.get(name), after.sets.get(name));
        let (head, a, b) = match (a, b) {
            (None, Some(b)) => (
                format!(
                    "+ {}: {}",
                    set_head(name, b.kind),
                    plural(b.elements.len(), "element")
                ),
                empty(b.kind),
                b.clone(),
            ),
            (Some(a), None) => (
                format!(
                    "- {}: {}",
                    set_head(name, a.kind),
                    plural(a.elements.len(), "element")
                ),
                a.clone(),
                empty(a.kind),
            ),
            (Some(a), Some(b)) if a.kind != b.kind => (
                format!("~ {} -> {}", set_head(name, a.kind), set_head(name, b.kind)),
                a.clone(),
                b.clone(),
            ),
            (Some(a), Some(b)) if a != b => {
                let added = b.elements.difference(&a.elements).count();
                let removed = a.elements.difference(&b.elements).count();
                (
                    format!("~ {}: +{added} -{removed} elements", set_head(name, b.kind)),
                    a.clone(),
                    b.clone(),
                )
            }
            _ => continue,
        };
        n += 1;
        let _ = writeln!(s, "{head}");
        for e in a.elements.difference(&b.elements) {
            let _ = writeln!(s, "    - {}", render_element(e));
        }
        for e in b.elements.difference(&a.elements) {
            let _ = writeln!(s, "    + {}", render_element(e));
        }
    }
    n
}

/// The `netdev nftpol` guard's part: the table coming or going or
/// changing flags, then its chains as [`chain_changes`] shows them.
fn guard_changes(before: &Ruleset, after: &Ruleset, s: &mut String) -> usize {
    let chains_of = |r: &Ruleset| Ruleset {
        chains: r
            .guard
            .as_ref()
            .map(|g| g.chains.clone())
            .unwrap_or_default(),
        ..Ruleset::default()
    };
    let mut body = String::new();
    let n = chain_changes(&chains_of(before), &chains_of(after), &mut body);
    let state = |r: &Ruleset| match &r.guard {
        None => "absent",
        Some(g) if g.flags & TABLE_F_DORMANT != 0 => "dormant (guarding nothing)",
        Some(_) => "active",
    };
    let (was, is) = (state(before), state(after));
    if was == is && n == 0 {
        return 0;
    }
    let _ = writeln!(s, "~ table netdev nftpol (L2 guard): {was} -> {is}");
    s.push_str(&body);
    n + usize::from(was != is)
}

/// The readable difference from `before` to `after`: `before_label` and
/// `after_label` say what each side is (the kernel, a manifest set).
/// `None` for `before` means no table.
pub fn ruleset_changes(
    before: Option<&Ruleset>,
    after: &Ruleset,
    (before_label, after_label): (&str, &str),
) -> String {
    let empty = Ruleset::default();
    let b = before.unwrap_or(&empty);
    let tx = match before {
        Some(actual) => policy_compiler::diff::diff(after, actual),
        None => policy_compiler::diff::create(after),
    };
    let mut s = format!("--- {before_label}\n+++ {after_label}\n");
    if before.is_none() {
        s.push_str("(no table inet nftpol: all of it would be created)\n");
    }
    let mut body = String::new();
    let flags = |r: &Ruleset| {
        if r.table_flags & TABLE_F_DORMANT != 0 {
            "dormant (enforcing nothing)"
        } else {
            "active"
        }
    };
    let table = usize::from(before.is_some() && b.table_flags != after.table_flags);
    if table > 0 {
        let _ = writeln!(
            body,
            "~ table inet nftpol: {} -> {}",
            flags(b),
            flags(after)
        );
    }
    let chains = chain_changes(b, after, &mut body);
    let sets = set_changes(b, after, &mut body);
    let guard = guard_changes(b, after, &mut body);
    if table + chains + sets + guard == 0 {
        s.push_str("no changes to table inet nftpol\n");
    } else {
        s.push_str(&body);
        let _ = writeln!(s, "apply would send: {}", tx.summary());
    }
    s
}

/// One line per flow whose verdict changes between two cluster states
/// (evaluator), with what decides it after the change.
pub fn flow_changes(changes: &[FlowChange], probes: &[Probe], scope: &str) -> String {
    let mut s = format!("flows changing verdict ({scope}):\n");
    if changes.is_empty() {
        s.push_str("  none\n");
    }
    for p in probes {
        for c in changes.iter().filter(|c| c.probe == *p) {
            let word = |a: bool| if a { "ALLOWED" } else { "DENIED" };
            // The side that denies now, or that denied before and admits now.
            let egress = if c.after.allowed {
                !c.before.egress.allows()
            } else {
                !c.after.egress.allows()
            };
            let why = if egress {
                format!("egress of {}: {}", c.from, describe_side(&c.after.egress))
            } else {
                format!("ingress of {}: {}", c.to, describe_side(&c.after.ingress))
            };
            let _ = writeln!(
                s,
                "  {p} {} -> {}: {} -> {} ({why})",
                c.from,
                c.to,
                word(c.before.allowed),
                word(c.after.allowed)
            );
        }
    }
    s
}

/// A flow whose verdict differs between two tables of one node.
pub struct KernelFlowChange {
    pub probe: Probe,
    pub from: Endpoint,
    pub to: Endpoint,
    pub before: Trace,
    pub after: Trace,
}

/// The flows among `pods` (with their addresses) that cross the node's
/// forward hook and whose verdict differs between `before` (`None`: no
/// table) and `after`, by the IR interpreter.
pub fn kernel_flow_changes(
    before: Option<&Ruleset>,
    after: &Ruleset,
    pods: &[(Endpoint, IpAddr, bool)],
    probes: &[Probe],
) -> Vec<KernelFlowChange> {
    let empty = Ruleset::default();
    let b = before.unwrap_or(&empty);
    let mut out = Vec::new();
    for p in probes {
        for (from, saddr, from_local) in pods {
            for (to, daddr, to_local) in pods {
                if from == to || !(*from_local || *to_local) {
                    continue;
                }
                let pkt = Packet::new_connection(*saddr, *daddr, p.protocol, p.port);
                let (tb, ta) = (
                    interp::trace(b, CHAIN_FORWARD, &pkt),
                    interp::trace(after, CHAIN_FORWARD, &pkt),
                );
                if tb.accepted != ta.accepted {
                    out.push(KernelFlowChange {
                        probe: *p,
                        from: from.clone(),
                        to: to.clone(),
                        before: tb,
                        after: ta,
                    });
                }
            }
        }
    }
    out
}

/// One line per [`KernelFlowChange`], naming the rule that decides after.
pub fn kernel_flow_lines(changes: &[KernelFlowChange], node: &str) -> String {
    let mut s =
        format!("flows through node {node} changing verdict (kernel now -> after apply):\n");
    if changes.is_empty() {
        s.push_str("  none\n");
    }
    for c in changes {
        let word = |t: &Trace| if t.accepted { "ALLOWED" } else { "DENIED" };
        let why = match c.after.deciding() {
            Some(st) => format!("chain {}: {}", st.chain, render_rule(&st.rule)),
            None => "no rule decides: forward chain policy".into(),
        };
        let _ = writeln!(
            s,
            "  {} {} -> {}: {} -> {} ({why})",
            c.probe,
            c.from,
            c.to,
            word(&c.before),
            word(&c.after)
        );
    }
    s
}

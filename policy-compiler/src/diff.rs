//! Ruleset diffing: the smallest ordered [`Transaction`] that turns the
//! kernel's `inet nftpol` table (read back into the IR) into the desired
//! one. Its property test applies every diff to the fake kernel
//! ([`crate::fake`]), so the order below is checked without root.
//!
//! Pure: no I/O. The netlink layer turns each [`Op`] into messages of one
//! batch in exactly the order given here, so the order is part of the
//! contract:
//!
//! 1. create the table (only when it is absent);
//! 2. create new sets and maps, then new chains (rules and map elements
//!    added later name them);
//! 3. delete set elements (a vmap element that jumps to a chain about to be
//!    deleted must go first);
//! 4. flush chains whose rules change (a rule naming a set or chain about to
//!    be deleted must go first);
//! 5. replace objects whose type changed (delete + add under the same name);
//! 6. add set elements, then the rules of new and changed chains;
//! 7. delete chains, then sets, that are no longer wanted;
//! 8. set the table's flags when they differ (a dormant table is woken);
//! 9. the `netdev nftpol` guard table ([`GuardOp`]): it names nothing in
//!    `inet nftpol`, so its changes simply follow, in the same batch.

use crate::ir::*;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

pub use crate::fake::{FakeError, FakeKernel};

/// One operation of a transaction; each becomes one or more netlink
/// messages of the same batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Create the `inet nftpol` table.
    AddTable,
    /// Delete the `inet nftpol` table with everything in it.
    DelTable,
    /// Set the flags of the existing table (clearing `dormant` hooks its
    /// base chains again).
    SetTableFlags { flags: u32 },
    /// Create an empty named set or map.
    AddSet { name: String, kind: SetKind },
    /// Delete a set or map (it must be unreferenced by then).
    DelSet { name: String },
    /// Create an empty chain (a base chain when `base` is set).
    AddChain {
        name: String,
        base: Option<BaseChain>,
    },
    /// Delete a chain and its rules (it must be unreferenced by then).
    DelChain { name: String },
    /// Delete every rule of a chain.
    FlushChain { name: String },
    /// Append rules to a chain, in order.
    AddRules { chain: String, rules: Vec<Rule> },
    /// Add elements to a set (each must be absent).
    AddElements { set: String, elements: Vec<Element> },
    /// Delete elements from a set (each must be present).
    DelElements { set: String, elements: Vec<Element> },
    /// A change to the `netdev nftpol` guard table.
    Guard(GuardOp),
}

/// One operation on the `netdev nftpol` table (chains only, no sets).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GuardOp {
    /// Create the table.
    AddTable,
    /// Delete the table with its chains.
    DelTable,
    /// Delete the table if it exists, whatever it holds: its state is
    /// unknown (the `inet` table is being created or replaced whole).
    /// An add that finds the table (no `NLM_F_EXCL`) and a delete.
    Reset,
    SetFlags {
        flags: u32,
    },
    AddChain {
        name: String,
        base: Option<BaseChain>,
    },
    DelChain {
        name: String,
    },
    FlushChain {
        name: String,
    },
    AddRules {
        chain: String,
        rules: Vec<Rule>,
    },
}

/// An ordered list of operations applied as one atomic unit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Transaction {
    pub ops: Vec<Op>,
}

impl Transaction {
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Counts of what the transaction changes.
    pub fn stats(&self) -> TxStats {
        let mut s = TxStats::default();
        let added: BTreeSet<&str> = self
            .ops
            .iter()
            .filter_map(|op| match op {
                Op::AddChain { name, .. } => Some(name.as_str()),
                _ => None,
            })
            .collect();
        let deleted: BTreeSet<&str> = self
            .ops
            .iter()
            .filter_map(|op| match op {
                Op::DelChain { name } => Some(name.as_str()),
                _ => None,
            })
            .collect();
        let mut changed: BTreeSet<&str> = BTreeSet::new();
        for op in &self.ops {
            match op {
                Op::AddTable => s.tables_added += 1,
                Op::DelTable => s.tables_deleted += 1,
                Op::SetTableFlags { .. } => s.tables_changed += 1,
                Op::AddSet { .. } => s.sets_added += 1,
                Op::DelSet { .. } => s.sets_deleted += 1,
                // Rules added to a chain that already exists change it,
                // flushed first or (when it was emptied) not.
                Op::FlushChain { name: chain } | Op::AddRules { chain, .. } => {
                    changed.insert(chain);
                }
                Op::AddElements { elements, .. } => s.elements_added += elements.len(),
                Op::DelElements { elements, .. } => s.elements_deleted += elements.len(),
                Op::AddChain { .. } | Op::DelChain { .. } => {}
                Op::Guard(g) => match g {
                    GuardOp::AddTable => s.tables_added += 1,
                    GuardOp::DelTable => s.tables_deleted += 1,
                    GuardOp::SetFlags { .. } => s.tables_changed += 1,
                    GuardOp::AddChain { .. } => s.chains_added += 1,
                    GuardOp::DelChain { .. } => s.chains_deleted += 1,
                    GuardOp::FlushChain { .. } => s.chains_changed += 1,
                    GuardOp::Reset | GuardOp::AddRules { .. } => {}
                },
            }
        }
        // A chain deleted and re-added under the same name (its base
        // changed) is a change, not an add plus a delete.
        let replaced: BTreeSet<&str> = added.intersection(&deleted).copied().collect();
        s.chains_added += added.len() - replaced.len();
        s.chains_deleted += deleted.len() - replaced.len();
        changed.extend(replaced.iter().copied());
        s.chains_changed += changed
            .iter()
            .filter(|c| !added.contains(*c) || replaced.contains(*c))
            .filter(|c| !deleted.contains(*c) || replaced.contains(*c))
            .count();
        s
    }

    /// One line for humans: `+2 chains, ~1 chain, +14 elements, -3
    /// elements`, or `no changes`.
    pub fn summary(&self) -> String {
        self.stats().to_string()
    }
}

/// What a transaction changes, counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxStats {
    pub tables_added: usize,
    pub tables_deleted: usize,
    pub tables_changed: usize,
    pub chains_added: usize,
    pub chains_changed: usize,
    pub chains_deleted: usize,
    pub sets_added: usize,
    pub sets_deleted: usize,
    pub elements_added: usize,
    pub elements_deleted: usize,
}

impl fmt::Display for TxStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = [
            ('+', self.tables_added, "table"),
            ('-', self.tables_deleted, "table"),
            ('~', self.tables_changed, "table"),
            ('+', self.chains_added, "chain"),
            ('~', self.chains_changed, "chain"),
            ('-', self.chains_deleted, "chain"),
            ('+', self.sets_added, "set"),
            ('-', self.sets_deleted, "set"),
            ('+', self.elements_added, "element"),
            ('-', self.elements_deleted, "element"),
        ]
        .iter()
        .filter(|(_, n, _)| *n > 0)
        .map(|(sign, n, what)| {
            let plural = if *n == 1 { "" } else { "s" };
            format!("{sign}{n} {what}{plural}")
        })
        .collect();
        if parts.is_empty() {
            f.write_str("no changes")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

/// Names of the sets/maps a rule refers to.
pub fn rule_set_refs(rule: &Rule) -> impl Iterator<Item = &str> {
    let from_matches = rule.matches.iter().filter_map(|m| match m {
        Match::AddrInSet { set, .. }
        | Match::DPortInSet { set }
        | Match::DAddrProtoPortInSet { set, .. } => Some(set.as_str()),
        _ => None,
    });
    let from_verdict = match &rule.verdict {
        Verdict::AddrVmap { map, .. } => Some(map.as_str()),
        _ => None,
    };
    from_matches.chain(from_verdict)
}

/// The chain a rule jumps to, if any.
pub fn rule_chain_ref(rule: &Rule) -> Option<&str> {
    match &rule.verdict {
        Verdict::Jump(c) | Verdict::Goto(c) => Some(c.as_str()),
        _ => None,
    }
}

/// The transaction that turns `actual` into `desired`, assuming the table
/// exists. Steady state (`desired == actual`) gives an empty transaction.
pub fn diff(desired: &Ruleset, actual: &Ruleset) -> Transaction {
    // Objects whose type changed cannot be updated in place: they are
    // deleted and created again, which first requires removing everything
    // that refers to them.
    let replaced_sets: BTreeSet<&str> = desired
        .sets
        .iter()
        .filter(|(n, s)| actual.sets.get(*n).is_some_and(|a| a.kind != s.kind))
        .map(|(n, _)| n.as_str())
        .collect();
    let replaced_chains: BTreeSet<&str> = desired
        .chains
        .iter()
        .filter(|(n, c)| actual.chains.get(*n).is_some_and(|a| a.base != c.base))
        .map(|(n, _)| n.as_str())
        .collect();

    // Chains whose rules must be rewritten: different rules, or rules in
    // the kernel that name a replaced object (they must let go of it).
    let refers_to_replaced = |r: &Rule| {
        rule_set_refs(r).any(|s| replaced_sets.contains(s))
            || rule_chain_ref(r).is_some_and(|c| replaced_chains.contains(c))
    };
    let mut rewrite: BTreeSet<&str> = BTreeSet::new();
    for (name, dc) in &desired.chains {
        if let Some(ac) = actual.chains.get(name) {
            if replaced_chains.contains(name.as_str())
                || ac.rules != dc.rules
                || ac.rules.iter().any(refers_to_replaced)
            {
                rewrite.insert(name);
            }
        }
    }

    let mut ops = Vec::new();

    // 2. new sets and chains, in the order `render` writes them (sets,
    // regular chains, maps, base chains), so `nft list` of a table built
    // by netlink prints exactly like one loaded with `nft -f`.
    let is_map = |s: &Set| matches!(s.kind, SetKind::Vmap { .. });
    let new_sets = |maps: bool| {
        desired
            .sets
            .iter()
            .filter(move |(n, s)| !actual.sets.contains_key(*n) && is_map(s) == maps)
            .map(|(name, set)| Op::AddSet {
                name: name.clone(),
                kind: set.kind,
            })
    };
    let mut new_chains: Vec<(&String, &Chain)> = desired
        .chains
        .iter()
        .filter(|(n, _)| !actual.chains.contains_key(*n))
        .collect();
    new_chains.sort_by_key(|(name, c)| (c.base.is_some(), c.base.clone(), name.as_str()));
    let (regular, based): (Vec<_>, Vec<_>) =
        new_chains.into_iter().partition(|(_, c)| c.base.is_none());
    let add_chain = |(name, c): (&String, &Chain)| Op::AddChain {
        name: name.clone(),
        base: c.base.clone(),
    };
    ops.extend(new_sets(false));
    ops.extend(regular.into_iter().map(add_chain));
    ops.extend(new_sets(true));
    ops.extend(based.into_iter().map(add_chain));

    // 3. element deletions. Sets being replaced or deleted lose their
    // elements with them, except that vmap elements jumping to a chain
    // that goes away must be removed explicitly first.
    let chain_goes = |c: &str| !desired.chains.contains_key(c) || replaced_chains.contains(c);
    for (name, aset) in &actual.sets {
        let dels: Vec<Element> = match desired.sets.get(name) {
            // Fast path for the common case of an untouched set: one
            // linear comparison instead of a lookup per element.
            Some(dset) if dset == aset && replaced_chains.is_empty() => continue,
            Some(dset) if !replaced_sets.contains(name.as_str()) => aset
                .elements
                .iter()
                .filter(|e| {
                    !dset.elements.contains(*e)
                        || matches!(e, Element::VmapJump(_, c) if replaced_chains.contains(c.as_str()))
                })
                .cloned()
                .collect(),
            _ => aset
                .elements
                .iter()
                .filter(|e| matches!(e, Element::VmapJump(_, c) if chain_goes(c)))
                .cloned()
                .collect(),
        };
        if !dels.is_empty() {
            ops.push(Op::DelElements {
                set: name.clone(),
                elements: dels,
            });
        }
    }

    // 4. flush chains that get new rules. Chains that will be deleted
    // keep their rules: deleting the chain removes them, and no rule of
    // theirs blocks anything the kernel checks before that.
    for name in &rewrite {
        if !actual.chains[*name].rules.is_empty() {
            ops.push(Op::FlushChain {
                name: (*name).to_string(),
            });
        }
    }
    // Chains that will be deleted let go of their jumps and of replaced
    // objects first: the kernel refuses to delete a chain that another
    // chain still jumps to, whatever the order of the deletions.
    for (name, ac) in &actual.chains {
        if !desired.chains.contains_key(name)
            && ac
                .rules
                .iter()
                .any(|r| refers_to_replaced(r) || rule_chain_ref(r).is_some())
        {
            ops.push(Op::FlushChain { name: name.clone() });
        }
    }

    // 5. replacements.
    for name in &replaced_chains {
        ops.push(Op::DelChain {
            name: (*name).to_string(),
        });
        ops.push(Op::AddChain {
            name: (*name).to_string(),
            base: desired.chains[*name].base.clone(),
        });
    }
    for name in &replaced_sets {
        ops.push(Op::DelSet {
            name: (*name).to_string(),
        });
        ops.push(Op::AddSet {
            name: (*name).to_string(),
            kind: desired.sets[*name].kind,
        });
    }

    // 6. element additions, then rules.
    for (name, dset) in &desired.sets {
        let adds: Vec<Element> = match actual.sets.get(name) {
            Some(aset) if dset == aset && replaced_chains.is_empty() => continue,
            Some(aset) if !replaced_sets.contains(name.as_str()) => dset
                .elements
                .iter()
                .filter(|e| {
                    !aset.elements.contains(*e)
                        || matches!(e, Element::VmapJump(_, c) if replaced_chains.contains(c.as_str()))
                })
                .cloned()
                .collect(),
            _ => dset.elements.iter().cloned().collect(),
        };
        if !adds.is_empty() {
            ops.push(Op::AddElements {
                set: name.clone(),
                elements: adds,
            });
        }
    }
    for (name, dc) in &desired.chains {
        let fresh = !actual.chains.contains_key(name);
        if (fresh || rewrite.contains(name.as_str())) && !dc.rules.is_empty() {
            ops.push(Op::AddRules {
                chain: name.clone(),
                rules: dc.rules.clone(),
            });
        }
    }

    // 7. deletions of what is no longer wanted.
    for name in actual.chains.keys() {
        if !desired.chains.contains_key(name) {
            ops.push(Op::DelChain { name: name.clone() });
        }
    }
    for name in actual.sets.keys() {
        if !desired.sets.contains_key(name) {
            ops.push(Op::DelSet { name: name.clone() });
        }
    }

    // 8. table flags last: a dormant table wakes up with its chains
    // already repaired, in the same atomic batch.
    if desired.table_flags != actual.table_flags {
        ops.push(Op::SetTableFlags {
            flags: desired.table_flags,
        });
    }

    ops.extend(diff_guard(desired.guard.as_ref(), actual.guard.as_ref()));
    Transaction { ops }
}

/// The guard table's part of a transaction: chain by chain (a chain
/// whose hook or device changed is replaced), its flags last.
pub fn diff_guard(desired: Option<&Guard>, actual: Option<&Guard>) -> Vec<Op> {
    let mut ops = Vec::new();
    let empty = Guard::default();
    let actual = match (desired, actual) {
        (None, None) => return ops,
        (None, Some(_)) => return vec![Op::Guard(GuardOp::DelTable)],
        (Some(_), None) => {
            ops.push(Op::Guard(GuardOp::AddTable));
            &empty
        }
        (Some(_), Some(a)) => a,
    };
    let desired = desired.unwrap_or(&empty);
    for (name, ac) in &actual.chains {
        if desired.chains.get(name).is_none_or(|dc| dc.base != ac.base) {
            ops.push(Op::Guard(GuardOp::DelChain { name: name.clone() }));
        }
    }
    for (name, dc) in &desired.chains {
        let fresh = actual.chains.get(name).is_none_or(|ac| ac.base != dc.base);
        if fresh {
            ops.push(Op::Guard(GuardOp::AddChain {
                name: name.clone(),
                base: dc.base.clone(),
            }));
        } else if actual
            .chains
            .get(name)
            .is_some_and(|ac| ac.rules != dc.rules)
        {
            ops.push(Op::Guard(GuardOp::FlushChain { name: name.clone() }));
        } else {
            continue;
        }
        if !dc.rules.is_empty() {
            ops.push(Op::Guard(GuardOp::AddRules {
                chain: name.clone(),
                rules: dc.rules.clone(),
            }));
        }
    }
    if desired.flags != actual.flags {
        ops.push(Op::Guard(GuardOp::SetFlags {
            flags: desired.flags,
        }));
    }
    ops
}

/// The chains and sets an incremental update may have changed (by name:
/// added, changed or removed); everything else is known to be equal.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Touched {
    /// Anything may have changed: compare the whole ruleset.
    pub all: bool,
    pub chains: BTreeSet<String>,
    pub sets: BTreeSet<String>,
    /// The guard table may have changed (it is diffed whole: one chain per
    /// local pod interface).
    pub guard: bool,
}

impl Touched {
    pub fn everything() -> Touched {
        Touched {
            all: true,
            ..Touched::default()
        }
    }

    pub fn is_empty(&self) -> bool {
        !self.all && !self.guard && self.chains.is_empty() && self.sets.is_empty()
    }

    /// Adds what `other` touched (changes not yet in the kernel add up).
    pub fn extend(&mut self, other: &Touched) {
        self.all |= other.all;
        self.guard |= other.guard;
        self.chains.extend(other.chains.iter().cloned());
        self.sets.extend(other.sets.iter().cloned());
    }

    /// The touched objects of `rs`, alone.
    fn pick(&self, rs: &Ruleset) -> Ruleset {
        Ruleset {
            table_flags: rs.table_flags,
            guard: if self.guard { rs.guard.clone() } else { None },
            chains: self
                .chains
                .iter()
                .filter_map(|n| rs.chains.get(n).map(|c| (n.clone(), c.clone())))
                .collect(),
            sets: self
                .sets
                .iter()
                .filter_map(|n| rs.sets.get(n).map(|s| (n.clone(), s.clone())))
                .collect(),
        }
    }
}

/// [`diff`] of the touched objects alone: the same transaction as the
/// whole diff when every object outside `touched` is equal in both, at a
/// cost that grows with the change, not with the table. Falls back to the
/// whole diff when an object must be replaced (its kind or hook changed:
/// whatever refers to it must let go first, touched or not).
pub fn diff_touched(desired: &Ruleset, actual: &Ruleset, touched: &Touched) -> Transaction {
    if touched.all || desired.table_flags != actual.table_flags {
        return diff(desired, actual);
    }
    let (d, a) = (touched.pick(desired), touched.pick(actual));
    let replaced = d
        .sets
        .iter()
        .any(|(n, s)| a.sets.get(n).is_some_and(|x| x.kind != s.kind))
        || d.chains
            .iter()
            .any(|(n, c)| a.chains.get(n).is_some_and(|x| x.base != c.base));
    if replaced {
        return diff(desired, actual);
    }
    diff(&d, &a)
}

/// Makes `known` equal `desired` on the touched objects (after a batch
/// built by [`diff_touched`] went through).
pub fn copy_touched(known: &mut Ruleset, desired: &Ruleset, touched: &Touched) {
    if touched.all {
        *known = desired.clone();
        return;
    }
    known.table_flags = desired.table_flags;
    if touched.guard {
        known.guard = desired.guard.clone();
    }
    for n in &touched.chains {
        match desired.chains.get(n) {
            Some(c) => known.chains.insert(n.clone(), c.clone()),
            None => known.chains.remove(n),
        };
    }
    for n in &touched.sets {
        match desired.sets.get(n) {
            Some(s) => known.sets.insert(n.clone(), s.clone()),
            None => known.sets.remove(n),
        };
    }
}

/// The transaction that creates the table and fills it with `desired`
/// (the table is absent from the kernel).
/// The guard table is reset first: the kernel may hold one nonetheless
/// (only the `inet` table was deleted).
pub fn create(desired: &Ruleset) -> Transaction {
    let mut tx = diff(desired, &Ruleset::default());
    tx.ops.insert(0, Op::AddTable);
    tx.ops.insert(1, Op::Guard(GuardOp::Reset));
    tx
}

/// Whether an element has the shape its set's kind holds.
pub fn element_fits(kind: SetKind, e: &Element) -> bool {
    let fam = |a: &std::net::IpAddr, f: Family| Family::of(a) == f;
    match (kind, e) {
        (
            SetKind::Addr {
                family,
                interval: false,
            },
            Element::Addr(a),
        ) => fam(a, family),
        (
            SetKind::Addr {
                family,
                interval: true,
            },
            Element::AddrRange(lo, hi),
        ) => fam(lo, family) && fam(hi, family) && lo <= hi,
        (SetKind::Ports, Element::PortRange(lo, hi)) => lo <= hi,
        (SetKind::AddrProtoPort { family }, Element::AddrProtoPort(a, _, _)) => fam(a, family),
        (SetKind::Vmap { family }, Element::VmapJump(a, _)) => fam(a, family),
        _ => false,
    }
}

/// Diffs grouped by object, for tests and logs: which chains get new rules.
pub fn rewritten_chains(tx: &Transaction) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for op in &tx.ops {
        if let Op::AddRules { chain, rules } = op {
            *out.entry(chain.clone()).or_insert(0) += rules.len();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use crate::fixture::{allow_tcp_from, base, pod_chain, set};

    fn rule(matches: Vec<Match>, verdict: Verdict) -> Rule {
        crate::fixture::rule(matches, verdict, None)
    }

    fn v4(a: u8, b: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, a, b))
    }

    /// A small ruleset in the shape the compiler emits.
    fn sample(pods: &[(u8, &str)]) -> Ruleset {
        let mut rs = Ruleset::default();
        let mut vmap = BTreeSet::new();
        for (ip, name) in pods {
            let chain = format!("ing_default_{name}");
            vmap.insert(Element::VmapJump(v4(1, *ip), chain.clone()));
            let allow = allow_tcp_from("pod4_a", "tcp_a", Some("default/a ingress[0]"));
            rs.chains.insert(chain, pod_chain(vec![allow], None));
        }
        let v4_set = |interval| SetKind::Addr {
            family: Family::Ipv4,
            interval,
        };
        let vmap_kind = SetKind::Vmap {
            family: Family::Ipv4,
        };
        rs.sets.insert("ingress_v4".into(), set(vmap_kind, vmap));
        rs.sets.insert(
            "pod4_a".into(),
            set(v4_set(false), [Element::Addr(v4(2, 1))]),
        );
        rs.sets.insert(
            "tcp_a".into(),
            set(SetKind::Ports, [Element::PortRange(80, 80)]),
        );
        rs.chains.insert(
            "forward".into(),
            Chain {
                base: base(Hook::Forward),
                rules: vec![
                    rule(
                        vec![Match::CtState(
                            [CtState::Established, CtState::Related].into(),
                        )],
                        Verdict::Accept,
                    ),
                    rule(
                        vec![],
                        Verdict::AddrVmap {
                            family: Family::Ipv4,
                            dir: Dir::Dst,
                            map: "ingress_v4".into(),
                        },
                    ),
                ],
            },
        );
        rs
    }

    fn check(desired: &Ruleset, actual: &Ruleset) -> Transaction {
        let tx = diff(desired, actual);
        let mut k = FakeKernel::with(actual.clone());
        k.apply(&tx).unwrap_or_else(|e| panic!("{e}\n{tx:#?}"));
        assert_eq!(k.table.as_ref(), Some(desired));
        tx
    }

    #[test]
    fn steady_state_is_empty() {
        let rs = sample(&[(1, "a"), (2, "b")]);
        let tx = diff(&rs, &rs);
        assert!(tx.is_empty());
        assert_eq!(tx.summary(), "no changes");
    }

    #[test]
    fn create_from_nothing() {
        let rs = sample(&[(1, "a")]);
        let tx = create(&rs);
        let mut k = FakeKernel::default();
        k.apply(&tx).unwrap();
        assert_eq!(k.table, Some(rs));
        assert_eq!(tx.summary(), "+1 table, +2 chains, +3 sets, +3 elements");
    }

    #[test]
    fn adding_a_pod_is_one_chain_and_one_element() {
        let old = sample(&[(1, "a")]);
        let new = sample(&[(1, "a"), (2, "b")]);
        let tx = check(&new, &old);
        assert_eq!(tx.summary(), "+1 chain, +1 element");
        assert_eq!(
            tx.ops[0],
            Op::AddChain {
                name: "ing_default_b".into(),
                base: None
            }
        );
    }

    #[test]
    fn removing_a_pod_deletes_the_element_before_the_chain() {
        let old = sample(&[(1, "a"), (2, "b")]);
        let new = sample(&[(1, "a")]);
        let tx = check(&new, &old);
        assert_eq!(tx.summary(), "-1 chain, -1 element");
        let del_elem = tx
            .ops
            .iter()
            .position(|o| matches!(o, Op::DelElements { .. }));
        let del_chain = tx.ops.iter().position(|o| matches!(o, Op::DelChain { .. }));
        assert!(del_elem < del_chain);
    }

    #[test]
    fn peer_change_is_one_element() {
        let old = sample(&[(1, "a")]);
        let mut new = old.clone();
        if let Some(s) = new.sets.get_mut("pod4_a") {
            s.elements.insert(Element::Addr(v4(2, 2)));
            s.elements.remove(&Element::Addr(v4(2, 1)));
        }
        let tx = check(&new, &old);
        assert_eq!(tx.summary(), "+1 element, -1 element");
        assert_eq!(tx.ops.len(), 2);
    }

    #[test]
    fn rule_change_flushes_and_refills_one_chain() {
        let old = sample(&[(1, "a"), (2, "b")]);
        let mut new = old.clone();
        if let Some(c) = new.chains.get_mut("ing_default_b") {
            c.rules
                .insert(0, rule(vec![Match::L4Proto(l4::UDP)], Verdict::Accept));
        }
        let tx = check(&new, &old);
        assert_eq!(tx.summary(), "~1 chain");
        assert_eq!(
            tx.ops,
            vec![
                Op::FlushChain {
                    name: "ing_default_b".into()
                },
                Op::AddRules {
                    chain: "ing_default_b".into(),
                    rules: new.chains["ing_default_b"].rules.clone()
                }
            ]
        );
    }

    #[test]
    fn set_kind_change_replaces_set_and_rewrites_users() {
        let old = sample(&[(1, "a")]);
        let mut new = old.clone();
        if let Some(s) = new.sets.get_mut("pod4_a") {
            s.kind = SetKind::Addr {
                family: Family::Ipv4,
                interval: true,
            };
            s.elements = [Element::AddrRange(v4(2, 0), v4(2, 255))].into();
        }
        let tx = check(&new, &old);
        assert_eq!(tx.summary(), "~1 chain, +1 set, -1 set, +1 element");
    }

    #[test]
    fn base_chain_change_replaces_chain() {
        let old = sample(&[(1, "a")]);
        let mut new = old.clone();
        if let Some(c) = new.chains.get_mut("forward") {
            c.base = Some(BaseChain {
                hook: Hook::Forward,
                priority: -5,
                policy: ChainPolicy::Accept,
                device: None,
            });
        }
        let tx = check(&new, &old);
        assert_eq!(tx.summary(), "~1 chain");
    }

    #[test]
    fn a_dormant_table_is_woken_last_in_the_same_transaction() {
        let want = sample(&[(1, "a")]);
        let mut tampered = want.clone();
        tampered.table_flags = TABLE_F_DORMANT;
        tampered.chains.get_mut("forward").unwrap().rules.clear();
        let tx = check(&want, &tampered);
        assert_eq!(tx.summary(), "~1 table, ~1 chain");
        assert_eq!(tx.ops.last(), Some(&Op::SetTableFlags { flags: 0 }));
        assert!(diff(&want, &want).is_empty());
    }

    #[test]
    fn jump_target_replaced_from_regular_to_base_reorders() {
        let mut old = sample(&[(1, "a")]);
        old.chains.insert(
            "helper".into(),
            Chain {
                base: None,
                rules: vec![],
            },
        );
        if let Some(c) = old.chains.get_mut("ing_default_a") {
            c.rules
                .insert(0, rule(vec![], Verdict::Jump("helper".into())));
        }
        let mut new = old.clone();
        new.chains.remove("ing_default_a");
        if let Some(s) = new.sets.get_mut("ingress_v4") {
            s.elements.clear();
        }
        new.chains.insert(
            "helper".into(),
            Chain {
                base: base(Hook::Input),
                rules: vec![],
            },
        );
        check(&new, &old);
    }

    #[test]
    fn fake_rejects_bad_transactions_atomically() {
        let rs = sample(&[(1, "a")]);
        let mut k = FakeKernel::with(rs.clone());
        // Element added twice.
        let tx = Transaction {
            ops: vec![
                Op::AddElements {
                    set: "pod4_a".into(),
                    elements: vec![Element::Addr(v4(9, 9))],
                },
                Op::AddElements {
                    set: "pod4_a".into(),
                    elements: vec![Element::Addr(v4(2, 1))],
                },
            ],
        };
        assert!(matches!(
            k.apply(&tx),
            Err(FakeError::Exists { index: 1, .. })
        ));
        assert_eq!(
            k.table.as_ref(),
            Some(&rs),
            "a failed batch changes nothing"
        );
        // Rule referencing a missing set.
        let tx = Transaction {
            ops: vec![Op::AddRules {
                chain: "forward".into(),
                rules: vec![rule(
                    vec![Match::DPortInSet { set: "nope".into() }],
                    Verdict::Accept,
                )],
            }],
        };
        assert!(matches!(k.apply(&tx), Err(FakeError::NotFound { .. })));
        // Deleting a referenced chain / set, a missing object.
        for op in [
            Op::DelChain {
                name: "ing_default_a".into(),
            },
            Op::DelSet {
                name: "pod4_a".into(),
            },
        ] {
            let r = k.apply(&Transaction { ops: vec![op] });
            assert!(matches!(r, Err(FakeError::Busy { .. })), "{r:?}");
        }
        let r = k.apply(&Transaction {
            ops: vec![Op::DelSet {
                name: "missing".into(),
            }],
        });
        assert!(matches!(r, Err(FakeError::NotFound { .. })));
        assert_eq!(k.table.as_ref(), Some(&rs));
    }

    // ---- property test over generated rulesets ----

    const SET_NAMES: [&str; 6] = ["s0", "s1", "s2", "s3", "s4", "s5"];
    const CHAIN_NAMES: [&str; 5] = ["c0", "c1", "c2", "c3", "c4"];

    fn arb_kind() -> impl Strategy<Value = SetKind> {
        let fam = prop_oneof![Just(Family::Ipv4), Just(Family::Ipv6)];
        prop_oneof![
            (fam.clone(), any::<bool>())
                .prop_map(|(family, interval)| SetKind::Addr { family, interval }),
            Just(SetKind::Ports),
            fam.clone()
                .prop_map(|family| SetKind::AddrProtoPort { family }),
            fam.prop_map(|family| SetKind::Vmap { family }),
        ]
    }

    fn addr(f: Family, n: u8) -> IpAddr {
        match f {
            Family::Ipv4 => IpAddr::V4(Ipv4Addr::new(10, 0, 0, n)),
            Family::Ipv6 => IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(n))),
        }
    }

    fn element(kind: SetKind, n: u8, chains: &[String]) -> Option<Element> {
        Some(match kind {
            SetKind::Addr {
                family,
                interval: false,
            } => Element::Addr(addr(family, n)),
            SetKind::Addr {
                family,
                interval: true,
            } => Element::AddrRange(addr(family, n), addr(family, n.saturating_add(n % 3))),
            SetKind::Ports => Element::PortRange(u16::from(n), u16::from(n) + u16::from(n % 4)),
            SetKind::AddrProtoPort { family } => {
                Element::AddrProtoPort(addr(family, n), [6, 17, 132][usize::from(n % 3)], 8080)
            }
            SetKind::Vmap { family } => {
                if chains.is_empty() {
                    return None;
                }
                Element::VmapJump(
                    addr(family, n),
                    chains[usize::from(n) % chains.len()].clone(),
                )
            }
        })
    }

    /// A generated ruleset whose references all resolve: rules only name
    /// sets of the right kind and regular chains, map elements only jump
    /// to regular chains.
    fn arb_ruleset() -> impl Strategy<Value = Ruleset> {
        (
            proptest::collection::vec(proptest::option::of(arb_kind()), SET_NAMES.len()),
            proptest::collection::vec(proptest::option::of(any::<bool>()), CHAIN_NAMES.len()),
            proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..5), 12),
            proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..4), 6),
            any::<bool>(),
            // The guard: absent, or up to three chains (device, priority
            // and rule count from the number) and the dormant flag.
            proptest::option::of((
                proptest::collection::vec(proptest::option::of(0..4u8), 3),
                any::<bool>(),
            )),
        )
            .prop_map(|(kinds, chains, elems, rules, dormant, guard)| {
                let mut rs = Ruleset {
                    table_flags: if dormant { TABLE_F_DORMANT } else { 0 },
                    guard: guard.map(|(chains, dormant)| Guard {
                        flags: if dormant { TABLE_F_DORMANT } else { 0 },
                        chains: ["l2_a", "l2_b", "l2_c"]
                            .iter()
                            .zip(chains)
                            .filter_map(|(name, n)| {
                                let n = n?;
                                let chain = Chain {
                                    base: Some(BaseChain {
                                        hook: Hook::Ingress,
                                        priority: -600 - i32::from(n % 2),
                                        policy: ChainPolicy::Accept,
                                        device: Some(format!("vp{}", n / 2)),
                                    }),
                                    rules: (0..n)
                                        .map(|t| {
                                            rule(
                                                vec![
                                                    Match::EtherType {
                                                        ty: 0x8100 + u16::from(t),
                                                        negate: false,
                                                    },
                                                    Match::Counter,
                                                ],
                                                Verdict::Drop,
                                            )
                                        })
                                        .collect(),
                                };
                                Some(((*name).to_string(), chain))
                            })
                            .collect(),
                    }),
                    ..Ruleset::default()
                };
                for (name, is_base) in CHAIN_NAMES.iter().zip(&chains) {
                    if let Some(is_base) = is_base {
                        rs.chains.insert(
                            (*name).to_string(),
                            Chain {
                                base: if *is_base { base(Hook::Input) } else { None },
                                rules: vec![],
                            },
                        );
                    }
                }
                let regular: Vec<String> = rs
                    .chains
                    .iter()
                    .filter(|(_, c)| c.base.is_none())
                    .map(|(n, _)| n.clone())
                    .collect();
                for (i, (name, kind)) in SET_NAMES.iter().zip(&kinds).enumerate() {
                    if let Some(kind) = kind {
                        let elements = elems[i]
                            .iter()
                            .filter_map(|n| element(*kind, *n, &regular))
                            .collect();
                        rs.sets.insert(
                            (*name).to_string(),
                            Set {
                                kind: *kind,
                                elements,
                            },
                        );
                    }
                }
                let sets: Vec<(String, SetKind)> =
                    rs.sets.iter().map(|(n, s)| (n.clone(), s.kind)).collect();
                let chain_names: Vec<String> = rs.chains.keys().cloned().collect();
                for (ci, name) in chain_names.iter().enumerate() {
                    let mut out = Vec::new();
                    for (ri, seed) in rules[ci % rules.len()].iter().enumerate() {
                        let seed = usize::from(*seed) + ri;
                        let mut r = rule(vec![], Verdict::Accept);
                        if !sets.is_empty() {
                            let (sname, kind) = &sets[seed % sets.len()];
                            match kind {
                                SetKind::Addr { family, .. } => r.matches.push(Match::AddrInSet {
                                    family: *family,
                                    dir: Dir::Src,
                                    set: sname.clone(),
                                }),
                                SetKind::Ports => {
                                    r.matches.push(Match::L4Proto(l4::TCP));
                                    r.matches.push(Match::DPortInSet { set: sname.clone() });
                                }
                                SetKind::AddrProtoPort { family } => {
                                    r.matches.push(Match::DAddrProtoPortInSet {
                                        family: *family,
                                        set: sname.clone(),
                                    })
                                }
                                SetKind::Vmap { family } => {
                                    r.verdict = Verdict::AddrVmap {
                                        family: *family,
                                        dir: Dir::Dst,
                                        map: sname.clone(),
                                    }
                                }
                            }
                        }
                        if seed % 5 == 0 && !regular.is_empty() {
                            r.verdict = Verdict::Jump(regular[seed % regular.len()].clone());
                        }
                        if seed % 7 == 0 {
                            r.comment = Some(format!("ns/p ingress[{seed}]"));
                        }
                        out.push(r);
                    }
                    if let Some(c) = rs.chains.get_mut(name) {
                        c.rules = out;
                    }
                }
                rs
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]
        #[test]
        fn diff_applied_to_actual_gives_desired(a in arb_ruleset(), d in arb_ruleset()) {
            // The generated actual ruleset itself must load from nothing.
            let mut k = FakeKernel::default();
            k.apply(&create(&a)).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(k.table.as_ref(), Some(&a));
            let tx = diff(&d, &a);
            k.apply(&tx).map_err(|e| TestCaseError::fail(format!("{e}\n{tx:#?}")))?;
            prop_assert_eq!(k.table.as_ref(), Some(&d));
            prop_assert!(diff(&d, &d).is_empty());
            // Untouched elements are never re-sent.
            for op in &tx.ops {
                if let Op::AddElements { set, elements } = op {
                    if let (Some(aset), Some(dset)) = (a.sets.get(set), d.sets.get(set)) {
                        if aset.kind == dset.kind {
                            for e in elements {
                                let stale_jump = matches!(e, Element::VmapJump(_, c)
                                    if a.chains.get(c).map(|x| &x.base) != d.chains.get(c).map(|x| &x.base));
                                prop_assert!(!aset.elements.contains(e) || stale_jump);
                            }
                        }
                    }
                }
            }
        }
    }
}

//! [`FakeKernel`]: an in-memory stand-in for the kernel's `inet nftpol`
//! table that applies a [`Transaction`] atomically, with the kernel's
//! reference rules (EEXIST, ENOENT, EBUSY for objects still referenced,
//! EINVAL for jumps to base chains or elements of the wrong shape).
//!
//! It is public on purpose, as knftables ships its Fake: the diff's
//! property test, the agent's in-memory backend (`--dry-run`, tests and
//! benchmarks of everything in front of the kernel) and anyone embedding
//! the compiler can check a transaction without root. It carries no test
//! hooks; failures are injected by wrapping it.

use crate::diff::{element_fits, rule_chain_ref, rule_set_refs, GuardOp, Op, Transaction};
use crate::ir::*;
use std::collections::BTreeSet;

/// Why [`FakeKernel::apply`] refused a transaction, named like the errno
/// the kernel would return.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FakeError {
    #[error("op {index}: {what}: No such file or directory (ENOENT)")]
    NotFound { index: usize, what: String },
    #[error("op {index}: {what}: File exists (EEXIST)")]
    Exists { index: usize, what: String },
    #[error("op {index}: {what}: Device or resource busy (EBUSY)")]
    Busy { index: usize, what: String },
    #[error("op {index}: {what}: Invalid argument (EINVAL)")]
    Invalid { index: usize, what: String },
}

/// An in-memory stand-in for the kernel's `inet nftpol` table. `apply`
/// works on a copy and keeps it only when every op succeeds, as the
/// kernel does with a batch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FakeKernel {
    /// `None` when the table does not exist.
    pub table: Option<Ruleset>,
}

impl FakeKernel {
    /// A kernel whose table holds `rs`.
    pub fn with(rs: Ruleset) -> Self {
        FakeKernel { table: Some(rs) }
    }

    /// Applies all of `tx` or nothing.
    pub fn apply(&mut self, tx: &Transaction) -> Result<(), FakeError> {
        let mut next = self.table.clone();
        for (index, op) in tx.ops.iter().enumerate() {
            apply_op(&mut next, index, op)?;
        }
        self.table = next;
        Ok(())
    }
}

fn apply_op(table: &mut Option<Ruleset>, index: usize, op: &Op) -> Result<(), FakeError> {
    let not_found = |what: String| FakeError::NotFound { index, what };
    let exists = |what: String| FakeError::Exists { index, what };
    let busy = |what: String| FakeError::Busy { index, what };
    let invalid = |what: String| FakeError::Invalid { index, what };
    if let Op::AddTable = op {
        if table.is_some() {
            return Err(exists("table inet nftpol".into()));
        }
        *table = Some(Ruleset::default());
        return Ok(());
    }
    let Some(rs) = table.as_mut() else {
        return Err(not_found("table inet nftpol".into()));
    };
    match op {
        Op::AddTable => {}
        Op::DelTable => *table = None,
        Op::SetTableFlags { flags } => rs.table_flags = *flags,
        Op::AddSet { name, kind } => {
            if rs.sets.contains_key(name) {
                return Err(exists(format!("set {name}")));
            }
            rs.sets.insert(
                name.clone(),
                Set {
                    kind: *kind,
                    elements: BTreeSet::new(),
                },
            );
        }
        Op::DelSet { name } => {
            if !rs.sets.contains_key(name) {
                return Err(not_found(format!("set {name}")));
            }
            if let Some((chain, _)) = rs
                .chains
                .iter()
                .find(|(_, c)| c.rules.iter().any(|r| rule_set_refs(r).any(|s| s == name)))
            {
                return Err(busy(format!("set {name} (used by chain {chain})")));
            }
            rs.sets.remove(name);
        }
        Op::Guard(g) => {
            let guard = &mut rs.guard;
            fn chains(
                guard: &mut Option<Guard>,
                index: usize,
            ) -> Result<&mut std::collections::BTreeMap<String, Chain>, FakeError> {
                match guard {
                    Some(g) => Ok(&mut g.chains),
                    None => Err(FakeError::NotFound {
                        index,
                        what: "table netdev nftpol".into(),
                    }),
                }
            }
            match g {
                GuardOp::AddTable if guard.is_some() => {
                    return Err(exists("table netdev nftpol".into()))
                }
                GuardOp::AddTable => *guard = Some(Guard::default()),
                GuardOp::DelTable if guard.is_none() => {
                    return Err(not_found("table netdev nftpol".into()))
                }
                GuardOp::DelTable | GuardOp::Reset => *guard = None,
                GuardOp::SetFlags { flags } => match guard {
                    Some(g) => g.flags = *flags,
                    None => return Err(not_found("table netdev nftpol".into())),
                },
                GuardOp::AddChain { name, base } => {
                    let chains = chains(guard, index)?;
                    if chains.contains_key(name) {
                        return Err(exists(format!("chain {name} of table netdev nftpol")));
                    }
                    chains.insert(
                        name.clone(),
                        Chain {
                            base: base.clone(),
                            rules: Vec::new(),
                        },
                    );
                }
                GuardOp::DelChain { name } => {
                    if chains(guard, index)?.remove(name).is_none() {
                        return Err(not_found(format!("chain {name} of table netdev nftpol")));
                    }
                }
                GuardOp::FlushChain { name: chain } | GuardOp::AddRules { chain, .. } => {
                    let Some(c) = chains(guard, index)?.get_mut(chain) else {
                        return Err(not_found(format!("chain {chain} of table netdev nftpol")));
                    };
                    match g {
                        GuardOp::AddRules { rules, .. } => c.rules.extend(rules.iter().cloned()),
                        _ => c.rules.clear(),
                    }
                }
            }
        }
        Op::AddChain { name, base } => {
            if rs.chains.contains_key(name) {
                return Err(exists(format!("chain {name}")));
            }
            rs.chains.insert(
                name.clone(),
                Chain {
                    base: base.clone(),
                    rules: Vec::new(),
                },
            );
        }
        Op::DelChain { name } => {
            if !rs.chains.contains_key(name) {
                return Err(not_found(format!("chain {name}")));
            }
            let by_rule = rs.chains.iter().find(|(n, c)| {
                *n != name
                    && c.rules
                        .iter()
                        .any(|r| rule_chain_ref(r) == Some(name.as_str()))
            });
            if let Some((user, _)) = by_rule {
                return Err(busy(format!("chain {name} (jumped to from chain {user})")));
            }
            let by_elem = rs.sets.iter().find(|(_, s)| {
                s.elements
                    .iter()
                    .any(|e| matches!(e, Element::VmapJump(_, c) if c == name))
            });
            if let Some((map, _)) = by_elem {
                return Err(busy(format!("chain {name} (jumped to from map {map})")));
            }
            rs.chains.remove(name);
        }
        Op::FlushChain { name } => match rs.chains.get_mut(name) {
            Some(c) => c.rules.clear(),
            None => return Err(not_found(format!("chain {name}"))),
        },
        Op::AddRules { chain, rules } => {
            for r in rules {
                for s in rule_set_refs(r) {
                    let Some(set) = rs.sets.get(s) else {
                        return Err(not_found(format!("set {s} (rule in chain {chain})")));
                    };
                    let is_map = matches!(set.kind, SetKind::Vmap { .. });
                    let wants_map = matches!(&r.verdict, Verdict::AddrVmap { map, .. } if map == s);
                    if is_map != wants_map {
                        return Err(invalid(format!(
                            "set {s} used as the wrong kind in chain {chain}"
                        )));
                    }
                }
                if let Some(target) = rule_chain_ref(r) {
                    match rs.chains.get(target) {
                        None => {
                            return Err(not_found(format!(
                                "chain {target} (jump from chain {chain})"
                            )))
                        }
                        Some(t) if t.base.is_some() => {
                            return Err(invalid(format!("jump to base chain {target}")))
                        }
                        Some(_) => {}
                    }
                }
            }
            match rs.chains.get_mut(chain) {
                Some(c) => c.rules.extend(rules.iter().cloned()),
                None => return Err(not_found(format!("chain {chain}"))),
            }
        }
        Op::AddElements { set, elements } => {
            for e in elements {
                if let Element::VmapJump(_, target) = e {
                    match rs.chains.get(target) {
                        None => {
                            return Err(not_found(format!("chain {target} (element of {set})")))
                        }
                        Some(t) if t.base.is_some() => {
                            return Err(invalid(format!("jump to base chain {target}")))
                        }
                        Some(_) => {}
                    }
                }
            }
            let Some(s) = rs.sets.get_mut(set) else {
                return Err(not_found(format!("set {set}")));
            };
            for e in elements {
                if !element_fits(s.kind, e) {
                    return Err(invalid(format!("element {e:?} in set {set}")));
                }
                // Keys are what the kernel compares: a vmap key that is
                // already present with another verdict still exists.
                if s.elements.iter().any(|x| same_key(x, e)) {
                    return Err(exists(format!("element {e:?} in set {set}")));
                }
                s.elements.insert(e.clone());
            }
        }
        Op::DelElements { set, elements } => {
            let Some(s) = rs.sets.get_mut(set) else {
                return Err(not_found(format!("set {set}")));
            };
            for e in elements {
                if !s.elements.remove(e) {
                    return Err(not_found(format!("element {e:?} in set {set}")));
                }
            }
        }
    }
    Ok(())
}

fn same_key(a: &Element, b: &Element) -> bool {
    match (a, b) {
        (Element::VmapJump(x, _), Element::VmapJump(y, _)) => x == y,
        _ => a == b,
    }
}

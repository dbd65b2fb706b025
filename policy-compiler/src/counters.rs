//! Per-rule kernel counters: which compiled rules count the packets they
//! decide, and how the counts read back from the kernel add up per policy
//! and direction.
//!
//! Every rule of a per-pod chain that carries a comment (each policy rule,
//! admin rule and default drop names its origin there) gets a `counter`
//! statement after its matches. Only the statement is part of the IR; the
//! values are not: the netlink read-back returns them beside the ruleset
//! ([`Counters`], keyed by chain and rule position), so a table read back
//! compares equal to the compiled one however many packets it has seen,
//! and the diff never rewrites a rule because its count moved.
//!
//! Attribution goes by the rule comment, which is what the kernel holds:
//! `<ns>/<policy> ingress[<i>]`, `<Kind>/<name> egress[<i>] <Action>`, a
//! rule serving several policy rules on one port `<ns>/<a> ingress[0],
//! <ns>/<b> ingress[1] and 3 more` (its packets count for each policy it
//! names: the kernel cannot tell which of them admitted a packet), and
//! the default drop `ingress isolated by <ns>/<a>, <ns>/<b>`. A comment cut
//! to the kernel's 128 bytes may lose the last policies of that list, or
//! make a rule unattributable; such rules still count in the kernel and in
//! `explain --live`.

use crate::ir::{Match, Rule, Ruleset, Verdict};
use crate::model::Direction;
use std::collections::BTreeMap;

/// Adds a `counter` statement to every commented rule of every regular
/// (per-pod) chain that has none yet.
pub fn add(rs: &mut Ruleset) {
    for chain in rs.chains.values_mut().filter(|c| c.base.is_none()) {
        for rule in chain.rules.iter_mut().filter(|r| r.comment.is_some()) {
            if !rule.matches.contains(&Match::Counter) {
                rule.matches.push(Match::Counter);
            }
        }
    }
}

/// Removes every `counter` statement from the regular chains: the
/// counters-off configuration the data-plane benchmark measures against.
pub fn strip(rs: &mut Ruleset) {
    for chain in rs.chains.values_mut().filter(|c| c.base.is_none()) {
        for rule in &mut chain.rules {
            rule.matches.retain(|m| *m != Match::Counter);
        }
    }
}

/// Whether `rule` counts its packets.
pub fn counts(rule: &Rule) -> bool {
    rule.matches.contains(&Match::Counter)
}

/// What a rule of a pod chain enforces, from its comment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A rule of one policy: `ns/name` for a NetworkPolicy,
    /// `Kind/name` for an admin or baseline policy.
    Rule {
        policy: String,
        direction: Direction,
        index: usize,
    },
    /// A rule serving the rules of several policies (the allows of a pod
    /// on one port): the policies its comment names, and how many more
    /// policy rules it serves that the comment had no room for.
    Shared {
        policies: Vec<String>,
        direction: Direction,
        unnamed: usize,
    },
    /// The drop at the end of an isolated pod's NetworkPolicy part, on
    /// behalf of every policy named.
    Isolation {
        policies: Vec<String>,
        direction: Direction,
    },
}

fn direction_of(word: &str) -> Option<Direction> {
    Direction::ALL.into_iter().find(|d| d.word() == word)
}

impl Origin {
    /// The origin a comment names, or `None` for comments that name no
    /// policy (or were cut before they did).
    pub fn of(comment: &str) -> Option<Origin> {
        for d in Direction::ALL {
            if let Some(list) = comment.strip_prefix(&format!("{} isolated by ", d.word())) {
                let policies: Vec<String> = list
                    .split(", ")
                    // A cut comment ends in "...": its last name may be partial.
                    .filter(|p| !p.ends_with("...") && p.contains('/'))
                    .map(str::to_string)
                    .collect();
                return (!policies.is_empty()).then_some(Origin::Isolation {
                    policies,
                    direction: d,
                });
            }
        }
        if comment.contains(", ") {
            return Origin::shared(comment);
        }
        Origin::single(comment)
    }

    /// `a/x ingress[0], a/y ingress[2] and 3 more` (the count optional).
    fn shared(comment: &str) -> Option<Origin> {
        let (list, unnamed) = match comment.rsplit_once(" and ") {
            Some((list, more)) => (list, more.strip_suffix(" more")?.parse().ok()?),
            None => (comment, 0),
        };
        let mut policies: Vec<String> = Vec::new();
        let mut direction = None;
        for item in list.split(", ") {
            match Origin::single(item)? {
                Origin::Rule {
                    policy,
                    direction: d,
                    ..
                } if direction.is_none_or(|x| x == d) => {
                    direction = Some(d);
                    if !policies.contains(&policy) {
                        policies.push(policy);
                    }
                }
                _ => return None,
            }
        }
        Some(Origin::Shared {
            policies,
            direction: direction?,
            unnamed,
        })
    }

    fn single(comment: &str) -> Option<Origin> {
        let mut words = comment.split(' ');
        let policy = words.next().filter(|p| p.contains('/'))?;
        let (dir, index) = words.next()?.strip_suffix(']')?.split_once('[')?;
        // At most the admin action follows.
        if words.clone().count() > 1 || words.next().is_some_and(|a| a.ends_with("...")) {
            return None;
        }
        Some(Origin::Rule {
            policy: policy.to_string(),
            direction: direction_of(dir)?,
            index: index.parse().ok()?,
        })
    }
}

/// One counted rule's values as the kernel reported them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleCounter {
    pub chain: String,
    /// Position of the rule in its chain (0-based, as in an interpreter trace).
    pub index: usize,
    pub comment: Option<String>,
    /// Whether the rule lets the packet on (accept, return, goto) rather
    /// than dropping it.
    pub allows: bool,
    pub packets: u64,
    pub bytes: u64,
}

impl RuleCounter {
    /// The values of `rule` at `chain`/`index` (the verdict decides
    /// `allows`).
    pub fn new(chain: &str, index: usize, rule: &Rule, packets: u64, bytes: u64) -> RuleCounter {
        RuleCounter {
            chain: chain.to_string(),
            index,
            comment: rule.comment.clone(),
            allows: !matches!(rule.verdict, Verdict::Drop),
            packets,
            bytes,
        }
    }
}

/// Every counted rule of the table, sorted by chain and position.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub rules: Vec<RuleCounter>,
}

/// The traffic one policy carried in one direction, summed over the rules
/// and chains (pods) where it is enforced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyHits {
    /// Packets its rules matched (allowed, or dropped by an admin Deny).
    pub matched: u64,
    /// Packets dropped because it isolates the pod and nothing allowed them.
    pub isolation_drops: u64,
    /// Pod chains and rules of its that count (how much it is enforced).
    pub rules: u64,
}

impl PolicyHits {
    /// Everything counted on its behalf.
    pub fn total(&self) -> u64 {
        self.matched + self.isolation_drops
    }
}

impl Counters {
    /// The counter of the rule at `chain`/`index`, if it counts.
    pub fn at(&self, chain: &str, index: usize) -> Option<&RuleCounter> {
        self.rules
            .binary_search_by(|r| (r.chain.as_str(), r.index).cmp(&(chain, index)))
            .ok()
            .map(|i| &self.rules[i])
    }

    /// Keeps the sort order [`Counters::at`] relies on.
    pub fn from_rules(mut rules: Vec<RuleCounter>) -> Counters {
        rules.sort_by(|a, b| (&a.chain, a.index).cmp(&(&b.chain, b.index)));
        Counters { rules }
    }

    /// Sums per (policy, direction). Every policy named by a counted rule
    /// appears, with zeros when it carried nothing.
    pub fn per_policy(&self) -> BTreeMap<(String, Direction), PolicyHits> {
        let mut out: BTreeMap<(String, Direction), PolicyHits> = BTreeMap::new();
        for r in &self.rules {
            match r.comment.as_deref().and_then(Origin::of) {
                Some(Origin::Rule {
                    policy, direction, ..
                }) => {
                    let h = out.entry((policy, direction)).or_default();
                    h.matched += r.packets;
                    h.rules += 1;
                }
                Some(Origin::Shared {
                    policies,
                    direction,
                    ..
                }) => {
                    for policy in policies {
                        let h = out.entry((policy, direction)).or_default();
                        h.matched += r.packets;
                        h.rules += 1;
                    }
                }
                Some(Origin::Isolation {
                    policies,
                    direction,
                }) => {
                    for policy in policies {
                        let h = out.entry((policy, direction)).or_default();
                        h.isolation_drops += r.packets;
                        h.rules += 1;
                    }
                }
                None => {}
            }
        }
        out
    }

    /// Packets dropped by default drops (isolated pods, nothing allowed)
    /// and packets let on by commented rules, per direction.
    pub fn totals(&self) -> BTreeMap<(Direction, bool), u64> {
        let mut out = BTreeMap::new();
        for r in &self.rules {
            let direction = match r.comment.as_deref().and_then(Origin::of) {
                Some(
                    Origin::Rule { direction, .. }
                    | Origin::Shared { direction, .. }
                    | Origin::Isolation { direction, .. },
                ) => direction,
                None => continue,
            };
            *out.entry((direction, r.allows)).or_default() += r.packets;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Chain, Rule, Verdict};

    #[test]
    fn comments_name_their_origin() {
        assert_eq!(
            Origin::of("prod/api-from-dev ingress[2]"),
            Some(Origin::Rule {
                policy: "prod/api-from-dev".into(),
                direction: Direction::Ingress,
                index: 2
            })
        );
        assert_eq!(
            Origin::of("AdminNetworkPolicy/sec egress[0] Deny"),
            Some(Origin::Rule {
                policy: "AdminNetworkPolicy/sec".into(),
                direction: Direction::Egress,
                index: 0
            })
        );
        assert_eq!(
            Origin::of("egress isolated by a/x, a/y, a/zz..."),
            Some(Origin::Isolation {
                policies: vec!["a/x".into(), "a/y".into()],
                direction: Direction::Egress
            })
        );
        assert_eq!(
            Origin::of("a/x ingress[0], a/y ingress[2], a/x ingress[1] and 7 more"),
            Some(Origin::Shared {
                policies: vec!["a/x".into(), "a/y".into()],
                direction: Direction::Ingress,
                unnamed: 7
            })
        );
        assert_eq!(
            Origin::of("a/x egress[0], a/y egress[0]"),
            Some(Origin::Shared {
                policies: vec!["a/x".into(), "a/y".into()],
                direction: Direction::Egress,
                unnamed: 0
            })
        );
        for none in [
            "a/x ingress[0], a/y egress[0]",
            "a/x ingress[0], a/y ingress[0] and some more",
            "end of admin tier",
            "forged source: not an address of a/b",
            "address 10.0.0.1 shared by a/b, a/c",
            "a/b ingress[",
            "a/b sideways[0]",
            "a/b ingress[0] Deny extra",
            "a/b ingress[0] Den...",
            "ingress isolated by ...",
        ] {
            assert_eq!(Origin::of(none), None, "{none}");
        }
    }

    fn rule(comment: Option<&str>, verdict: Verdict) -> Rule {
        Rule {
            matches: vec![],
            verdict,
            comment: comment.map(str::to_string),
        }
    }

    #[test]
    fn add_counts_commented_pod_chain_rules_once() {
        let mut rs = Ruleset::default();
        rs.chains.insert(
            "ing_a_p".into(),
            Chain {
                base: None,
                rules: vec![
                    rule(Some("a/x ingress[0]"), Verdict::Accept),
                    rule(None, Verdict::Accept),
                    rule(Some("ingress isolated by a/x"), Verdict::Drop),
                ],
            },
        );
        let mut base = crate::compile(&crate::Cluster::default(), "n");
        rs.chains.append(&mut base.chains);
        add(&mut rs);
        let again = {
            let mut r = rs.clone();
            add(&mut r);
            r
        };
        assert_eq!(rs, again, "a second pass adds nothing");
        let pod = &rs.chains["ing_a_p"].rules;
        assert!(counts(&pod[0]) && !counts(&pod[1]) && counts(&pod[2]));
        assert_eq!(pod[0].matches.last(), Some(&Match::Counter));
        assert!(rs.chains["forward"].rules.iter().all(|r| !counts(r)));
        strip(&mut rs);
        assert!(rs
            .chains
            .values()
            .flat_map(|c| &c.rules)
            .all(|r| !counts(r)));
    }

    #[test]
    fn per_policy_sums_rules_and_shares_isolation_drops() {
        let rules = vec![
            RuleCounter::new(
                "ing_a_p",
                0,
                &rule(Some("a/x ingress[0]"), Verdict::Accept),
                5,
                500,
            ),
            RuleCounter::new(
                "ing_a_q",
                0,
                &rule(Some("a/x ingress[0]"), Verdict::Accept),
                2,
                200,
            ),
            RuleCounter::new(
                "ing_a_p",
                1,
                &rule(Some("ingress isolated by a/x, a/y"), Verdict::Drop),
                3,
                300,
            ),
            RuleCounter::new(
                "ing_a_r",
                0,
                &rule(
                    Some("a/x ingress[1], a/z ingress[0] and 2 more"),
                    Verdict::Accept,
                ),
                4,
                400,
            ),
            RuleCounter::new(
                "dup_x",
                0,
                &rule(Some("address 10.0.0.1 shared by a/b, a/c"), Verdict::Drop),
                9,
                900,
            ),
        ];
        let c = Counters::from_rules(rules);
        assert_eq!(c.at("ing_a_p", 1).map(|r| r.packets), Some(3));
        assert_eq!(c.at("ing_a_p", 2), None);
        let p = c.per_policy();
        assert_eq!(
            p[&("a/x".to_string(), Direction::Ingress)],
            PolicyHits {
                matched: 11,
                isolation_drops: 3,
                rules: 4
            }
        );
        assert_eq!(p[&("a/y".to_string(), Direction::Ingress)].total(), 3);
        assert_eq!(p[&("a/z".to_string(), Direction::Ingress)].matched, 4);
        assert_eq!(p.len(), 3);
        let t = c.totals();
        assert_eq!(t[&(Direction::Ingress, true)], 11);
        assert_eq!(t[&(Direction::Ingress, false)], 3);
    }
}

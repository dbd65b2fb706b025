//! `nftpol hits`: the kernel's per-rule counters summed per policy and
//! direction, and the policies that carried nothing (clean-up
//! candidates). The sums come from `policy_compiler::counters`; this only
//! lays them out.

use policy_compiler::counters::{Counters, PolicyHits};
use policy_compiler::model::Direction;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// One row per (policy, direction).
pub fn rows(c: &Counters) -> BTreeMap<(String, Direction), PolicyHits> {
    c.per_policy()
}

/// A table, widest policy name first column; `zero_only` keeps the
/// policies with no packet counted on their behalf.
pub fn text(c: &Counters, zero_only: bool) -> String {
    let rows = rows(c);
    let shown: Vec<_> = rows
        .iter()
        .filter(|(_, h)| !zero_only || h.total() == 0)
        .collect();
    let width = shown
        .iter()
        .map(|((p, _), _)| p.len())
        .chain(["POLICY".len()])
        .max()
        .unwrap_or(6);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:width$}  {:9}  {:>12}  {:>15}  {:>5}",
        "POLICY", "DIRECTION", "MATCHED", "ISOLATION-DROPS", "RULES"
    );
    for ((policy, direction), h) in &shown {
        let _ = writeln!(
            s,
            "{policy:width$}  {:9}  {:>12}  {:>15}  {:>5}",
            direction.word(),
            h.matched,
            h.isolation_drops,
            h.rules
        );
    }
    let zero: Vec<String> = rows
        .iter()
        .filter(|(_, h)| h.total() == 0)
        .map(|((p, d), _)| format!("{p} {}", d.word()))
        .collect();
    let _ = writeln!(
        s,
        "{} of {} policy directions counted no packet since their rules were last written{}",
        zero.len(),
        rows.len(),
        if zero.is_empty() || zero_only {
            String::new()
        } else {
            format!(": {}", zero.join(", "))
        }
    );
    s
}

/// The same as JSON: `[{policy, direction, matched, isolation_drops, rules}]`.
pub fn json(c: &Counters, zero_only: bool) -> serde_json::Value {
    serde_json::Value::Array(
        rows(c)
            .into_iter()
            .filter(|(_, h)| !zero_only || h.total() == 0)
            .map(|((policy, direction), h)| {
                serde_json::json!({
                    "policy": policy,
                    "direction": direction.word(),
                    "matched": h.matched,
                    "isolation_drops": h.isolation_drops,
                    "rules": h.rules,
                })
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use policy_compiler::counters::RuleCounter;
    use policy_compiler::ir::{Rule, Verdict};

    fn counter(chain: &str, comment: &str, verdict: Verdict, packets: u64) -> RuleCounter {
        let rule = Rule {
            matches: vec![],
            verdict,
            comment: Some(comment.into()),
        };
        RuleCounter::new(chain, 0, &rule, packets, packets * 60)
    }

    #[test]
    fn lists_policies_and_the_idle_ones() {
        let c = Counters::from_rules(vec![
            counter("ing_a_p", "a/busy ingress[0]", Verdict::Accept, 12),
            counter("ing_a_q", "a/idle ingress[0]", Verdict::Accept, 0),
            counter(
                "ing_a_r",
                "ingress isolated by a/deny-all",
                Verdict::Drop,
                0,
            ),
        ]);
        let t = text(&c, false);
        assert!(
            t.lines()
                .any(|l| l.starts_with("a/busy ") && l.contains(" 12 ")),
            "{t}"
        );
        assert!(
            t.contains("2 of 3 policy directions counted no packet since their rules were last written: a/deny-all ingress, a/idle ingress"),
            "{t}"
        );
        let z = text(&c, true);
        assert!(!z.contains("a/busy"), "{z}");
        assert!(z.contains("a/idle"), "{z}");
        let j = json(&c, true);
        assert_eq!(j.as_array().map(Vec::len), Some(2));
        assert_eq!(j[0]["policy"], "a/deny-all");
    }
}

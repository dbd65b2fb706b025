//! Verdict logging and staged policies in the ruleset: the nflog rules the
//! compiler adds beside the rules whose verdicts are logged, their
//! prefixes, and the rewrite that turns a pod chain compiled with staged
//! policies into a chain that only logs what they would deny.
//!
//! Logging can never change a verdict: `limit` is a match (above the rate
//! it stops matching), so the rate-limited `log` never shares a rule with
//! a verdict. It sits in a rule of its own with the same matches as the
//! rule it reports and no verdict ([`Verdict::Continue`]), right before
//! that rule: whether it matches or not, the packet goes on to the rule
//! that decides, exactly as if the log rule were absent.
//!
//! A staged chain (`ings_`/`egrs_`) is jumped to first from the pod's
//! enforced chain. Every verdict in it is `return`, and its end (where
//! the staged policies would drop) is a log `would-deny` then `return`,
//! so the enforced chain that follows decides as if it were absent.

use crate::ir::{Match, Rule, Verdict};
use crate::model::{Direction, LogMode, Pod, Policy};

/// The nflog group the agent reads by default.
pub const DEFAULT_GROUP: u16 = 2;
/// Log lines per second each log rule lets through, by default.
pub const DEFAULT_RATE: u32 = 10;
/// Burst each log rule allows above the rate (nft's default).
pub const DEFAULT_BURST: u32 = 5;
/// Longest prefix, in bytes: the kernel keeps 128 with the NUL
/// (NF_LOG_PREFIXLEN).
pub const MAX_PREFIX: usize = 127;

/// The last word of the prefix of a staged chain's log.
pub const WOULD_DENY: &str = "would-deny";
/// The last word of the prefix of an isolated pod's default drop.
pub const DEFAULT_DENY: &str = "default-deny";

/// How the compiler logs verdicts for the whole node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditOptions {
    /// Logged for every policy, in addition to each policy's annotation.
    pub log: LogMode,
    /// nflog group of every log statement.
    pub group: u16,
    /// Rate limit of each log rule, packets per second.
    pub rate: u32,
    pub burst: u32,
}

impl Default for AuditOptions {
    fn default() -> Self {
        AuditOptions {
            log: LogMode::Off,
            group: DEFAULT_GROUP,
            rate: DEFAULT_RATE,
            burst: DEFAULT_BURST,
        }
    }
}

impl AuditOptions {
    /// What a policy logs: its own mode or the node's, whichever logs more.
    pub fn mode(&self, pol: &Policy) -> LogMode {
        self.log.max(pol.audit.log)
    }

    /// The rate-limited log rule that reports the packets `rule` sees,
    /// to be placed right before it. Counters are left out: they count
    /// on the rule that decides.
    pub fn log_before(&self, rule: &Rule, prefix: String) -> Rule {
        let mut matches: Vec<Match> = rule
            .matches
            .iter()
            .filter(|m| !matches!(m, Match::Counter))
            .cloned()
            .collect();
        matches.extend(self.log_matches(prefix));
        Rule {
            matches,
            verdict: Verdict::Continue,
            comment: None,
        }
    }

    fn log_matches(&self, prefix: String) -> [Match; 2] {
        [
            Match::Limit {
                per_second: self.rate,
                burst: self.burst,
            },
            Match::Log {
                group: self.group,
                prefix: cut(prefix),
            },
        ]
    }

    /// The end of a staged chain: log that the staged policies would
    /// deny, then give the packet back to the enforced chain.
    pub fn would_deny(&self, direction: Direction, staged: &[&Policy]) -> [Rule; 2] {
        [
            Rule {
                matches: self
                    .log_matches(would_deny_prefix(direction, staged))
                    .into(),
                verdict: Verdict::Continue,
                comment: None,
            },
            Rule {
                matches: vec![],
                verdict: Verdict::Return,
                comment: Some(crate::names::comment(format!(
                    "staged: {} would be denied by {}",
                    direction.word(),
                    names(staged)
                ))),
            },
        ]
    }
}

fn names(policies: &[&Policy]) -> String {
    let names: Vec<String> = policies
        .iter()
        .map(|p| format!("{}/{}", p.namespace, p.name))
        .collect();
    names.join(", ")
}

/// `<ns>/<policy> <direction>[<i>] allow`.
pub fn rule_prefix(pol: &Policy, direction: Direction, index: usize) -> String {
    format!(
        "{}/{} {}[{index}] allow",
        pol.namespace,
        pol.name,
        direction.word()
    )
}

/// `<Kind>/<name> <direction>[<i>] <Action>` for an admin rule.
pub fn admin_prefix(id: &str, direction: Direction, index: usize, action: &str) -> String {
    format!("{id} {}[{index}] {action}", direction.word())
}

/// `<ns>/<pod> default-deny`.
pub fn default_deny_prefix(pod: &Pod) -> String {
    format!("{}/{} {DEFAULT_DENY}", pod.namespace, pod.name)
}

/// `<ns>/<policy>[,<policy>...] <direction> would-deny`: the staged
/// policies isolating the pod, none of which admits the packet.
pub fn would_deny_prefix(direction: Direction, staged: &[&Policy]) -> String {
    let ns = staged.first().map_or("", |p| p.namespace.as_str());
    let names: Vec<&str> = staged.iter().map(|p| p.name.as_str()).collect();
    format!("{ns}/{} {} {WOULD_DENY}", names.join(","), direction.word())
}

/// A prefix cut to what the kernel keeps. The verdict word is the last
/// word and must survive, so the middle goes.
fn cut(prefix: String) -> String {
    if prefix.len() <= MAX_PREFIX {
        return prefix;
    }
    let (head, last) = prefix.rsplit_once(' ').unwrap_or((&prefix, ""));
    let room = MAX_PREFIX.saturating_sub(last.len() + 4);
    let mut end = room.min(head.len());
    while !head.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... {last}", &head[..end])
}

/// Rewrites rules compiled as if the staged policies were enforced into
/// rules of a staged chain: every verdict returns (the enforced chain
/// decides), and a Pass goes to the staged NetworkPolicy part instead.
pub fn stage(rules: &mut [Rule], rename: impl Fn(&str) -> String) {
    for r in rules {
        r.verdict = match std::mem::replace(&mut r.verdict, Verdict::Continue) {
            Verdict::Accept | Verdict::Drop | Verdict::Return => Verdict::Return,
            Verdict::Goto(c) => Verdict::Goto(rename(&c)),
            Verdict::Jump(c) => Verdict::Jump(rename(&c)),
            v @ (Verdict::AddrVmap { .. } | Verdict::Continue) => v,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(annotations: &str) -> Result<Policy, String> {
        let text = format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
             metadata: {{name: p, namespace: n, annotations: {{{annotations}}}}}\n\
             spec: {{podSelector: {{}}}}\n"
        );
        let loaded = crate::manifest::parse("p.yaml", &text);
        if let Some(e) = loaded.errors.first() {
            return Err(e.to_string());
        }
        match loaded.objects.into_iter().next() {
            Some(crate::manifest::Object::Policy(p)) => Ok(p),
            other => Err(format!("{other:?}")),
        }
    }

    #[test]
    fn annotations_set_the_audit_mode_and_bad_values_name_the_field() {
        let p = policy("nftpol.io/log: all, nftpol.io/enforcement: audit").expect("valid");
        assert_eq!(p.audit.log, LogMode::All);
        assert!(p.audit.staged);
        let p = policy("nftpol.io/log: deny, nftpol.io/enforcement: enforce").expect("valid");
        assert_eq!((p.audit.log, p.audit.staged), (LogMode::Deny, false));
        assert_eq!(policy("other: x").expect("valid").audit, Default::default());
        let e = policy("nftpol.io/log: everything").expect_err("invalid");
        assert!(
            e.contains("p.yaml") && e.contains("n/p") && e.contains("nftpol.io/log"),
            "{e}"
        );
        let e = policy("nftpol.io/enforcement: Audit").expect_err("invalid");
        assert!(e.contains("nftpol.io/enforcement"), "{e}");
    }

    #[test]
    fn the_node_mode_raises_a_policy_mode_never_lowers_it() {
        let mut p = policy("nftpol.io/log: all").expect("valid");
        let node = AuditOptions {
            log: LogMode::Deny,
            ..AuditOptions::default()
        };
        assert_eq!(node.mode(&p), LogMode::All);
        p.audit.log = LogMode::Off;
        assert_eq!(node.mode(&p), LogMode::Deny);
    }

    #[test]
    fn long_prefixes_keep_the_verdict_word() {
        let p = cut(format!(
            "{}/{} ingress[0] allow",
            "n".repeat(60),
            "p".repeat(200)
        ));
        assert!(p.len() <= MAX_PREFIX, "{}", p.len());
        assert!(p.ends_with("... allow"), "{p}");
        assert_eq!(cut("a/b default-deny".into()), "a/b default-deny");
    }
}

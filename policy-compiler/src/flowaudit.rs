//! What verdict logging and staged policies mean for one flow, as
//! `explain` and `matrix` show it beside the enforced verdict: the verdict
//! the evaluator gives with every staged policy enforced (naming the
//! staged policies that would deny), and the log rules the flow's first
//! packet meets in the compiled rulesets of the nodes it crosses.
//!
//! The logs come from the interpreter's trace of the compiled rulesets,
//! not from a second reading of the annotations, so the prefixes and
//! groups shown are exactly the ones the kernel is given, and a flow is
//! shown logged exactly where a rule on its path logs it.

use crate::audit::AuditOptions;
use crate::compile::{compile_node_with, CHAIN_FORWARD};
use crate::eval::{self, Decision, Endpoint, EvalError, SideVerdict};
use crate::index::Cluster;
use crate::interp::{self, Packet, Step, Trace};
use crate::ir::{Match, Ruleset};
use crate::model::{LogMode, Protocol};
use crate::NodeNet;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// The verdict of a flow if every staged policy were enforced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Staged {
    pub allowed: bool,
    pub egress: SideVerdict,
    pub ingress: SideVerdict,
    /// The staged policies (`namespace/name`) isolating a side that the
    /// staged verdict denies: enforcing them is what would deny the flow.
    pub would_deny: Vec<String>,
}

/// A log rule on a flow's path: where it is and what the packet is
/// logged with.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct LogLine {
    pub node: String,
    pub chain: String,
    /// Position of the log rule in its chain (0-based).
    pub index: usize,
    /// The nflog group.
    pub group: u16,
    pub prefix: String,
}

impl LogLine {
    /// The log statements of the log rules in `trace` (its `logged`
    /// steps), on `node`.
    pub fn of_trace(node: &str, trace: &Trace) -> Vec<LogLine> {
        trace
            .logged
            .iter()
            .flat_map(|s| LogLine::of_step(node, s))
            .collect()
    }

    fn of_step<'s>(node: &'s str, s: &'s Step) -> impl Iterator<Item = LogLine> + 's {
        s.rule.matches.iter().filter_map(move |m| match m {
            Match::Log { group, prefix } => Some(LogLine {
                node: node.to_string(),
                chain: s.chain.clone(),
                index: s.index,
                group: *group,
                prefix: prefix.clone(),
            }),
            _ => None,
        })
    }
}

impl std::fmt::Display for LogLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "\"{}\" (nflog group {}) by chain {} rule #{} on node {}",
            self.prefix, self.group, self.chain, self.index, self.node
        )
    }
}

/// The staged verdict and the logs of one flow.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FlowAudit {
    /// `None` when no policy is staged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub staged: Option<Staged>,
    /// The log rules the first packet meets, in path order (source's node
    /// first); their rate limits taken as not reached.
    pub logged: Vec<LogLine>,
}

/// Judges flows of one cluster: holds the cluster with its staged
/// policies enforced and compiles each node's ruleset once, when a flow
/// first crosses it.
pub struct Auditor<'c> {
    cluster: &'c Cluster,
    as_if: Option<Cluster>,
    staged: BTreeSet<String>,
    opts: AuditOptions,
    rulesets: BTreeMap<String, Ruleset>,
}

impl<'c> Auditor<'c> {
    /// `opts` are the node-wide logging options the rulesets are compiled
    /// with (policies' own annotations apply regardless).
    pub fn new(cluster: &'c Cluster, opts: &AuditOptions) -> Auditor<'c> {
        let staged = cluster
            .policies()
            .filter(|p| p.audit.staged)
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .collect();
        Auditor {
            cluster,
            as_if: cluster.with_staged_enforced(),
            staged,
            opts: opts.clone(),
            rulesets: BTreeMap::new(),
        }
    }

    /// Whether any policy is staged.
    pub fn stages_anything(&self) -> bool {
        self.as_if.is_some()
    }

    /// Whether any rule of the cluster's rulesets can log: a policy asks
    /// for it, the node-wide mode does, or a policy is staged (its
    /// would-deny log).
    pub fn logs_anything(&self) -> bool {
        self.opts.log != LogMode::Off
            || self.as_if.is_some()
            || self.cluster.policies().any(|p| p.audit.log != LogMode::Off)
    }

    /// The staged verdict and the logs of the flow `d` decided (from
    /// `src` to `dst`, `protocol`/`port`, at `d`'s addresses).
    pub fn flow(
        &mut self,
        (src, dst): (&Endpoint, &Endpoint),
        d: &Decision,
        protocol: Protocol,
        port: u16,
    ) -> Result<FlowAudit, EvalError> {
        let staged = match &self.as_if {
            Some(as_if) => {
                let family = crate::ir::Family::of(&d.src_ip);
                let s = eval::allowed(as_if, src, dst, family, protocol, port)?;
                let would_deny = [&s.egress, &s.ingress]
                    .into_iter()
                    .flat_map(|side| match side {
                        SideVerdict::Denied { isolated_by } => isolated_by.clone(),
                        _ => Vec::new(),
                    })
                    .filter(|p| self.staged.contains(p))
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                Some(Staged {
                    allowed: s.allowed,
                    egress: s.egress,
                    ingress: s.ingress,
                    would_deny,
                })
            }
            None => None,
        };
        // A pod talking to itself never leaves its network namespace: no
        // chain sees the packet.
        let logged = if self.logs_anything() && src != dst {
            self.logs(&Packet::new_connection(d.src_ip, d.dst_ip, protocol, port))
        } else {
            Vec::new()
        };
        Ok(FlowAudit { staged, logged })
    }

    /// The log rules `pkt` meets on the nodes it crosses: the nodes of
    /// the pods claiming its source, then those of its destination, each
    /// once, through their `forward` hook; a node that drops it ends the
    /// path.
    fn logs(&mut self, pkt: &Packet) -> Vec<LogLine> {
        let mut nodes: Vec<String> = Vec::new();
        for ip in [pkt.saddr, pkt.daddr] {
            for p in self.cluster.claimants(ip) {
                if let Some(n) = &p.node_name {
                    if !nodes.contains(n) {
                        nodes.push(n.clone());
                    }
                }
            }
        }
        let mut out = Vec::new();
        for node in nodes {
            let rs = self.rulesets.entry(node.clone()).or_insert_with(|| {
                compile_node_with(self.cluster, &node, &NodeNet::default(), &self.opts)
            });
            let t = interp::trace(rs, CHAIN_FORWARD, pkt);
            out.extend(LogLine::of_trace(&node, &t));
            if !t.accepted {
                break;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::parse;

    fn cluster(file: &str, text: &str) -> Cluster {
        let loaded = parse(file, text);
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        Cluster::from_objects(loaded.objects)
    }

    fn staged_example() -> Cluster {
        cluster(
            "25-staged-policy.yaml",
            include_str!("../../examples/policies/25-staged-policy.yaml"),
        )
    }

    fn logging_example() -> Cluster {
        cluster(
            "24-verdict-logging.yaml",
            include_str!("../../examples/policies/24-verdict-logging.yaml"),
        )
    }

    fn judge(c: &Cluster, src: &str, dst: &str, port: u16) -> (Decision, FlowAudit) {
        let ep = |s: &str| {
            let (ns, name) = s.split_once('/').expect("ns/pod");
            Endpoint::pod(ns, name)
        };
        let (src, dst) = (ep(src), ep(dst));
        let family = eval::common_family(c, &src, &dst).expect("family");
        let d = eval::allowed(c, &src, &dst, family, Protocol::Tcp, port).expect("decision");
        let a = Auditor::new(c, &AuditOptions::default())
            .flow((&src, &dst), &d, Protocol::Tcp, port)
            .expect("audit");
        (d, a)
    }

    #[test]
    fn a_staged_policy_names_itself_as_what_would_deny_and_is_logged_would_deny() {
        let c = staged_example();
        // Enforced: nothing isolates api-0. Staged: api-lockdown admits
        // only cart pods on 8080.
        let (d, a) = judge(&c, "dev/tool-0", "shop/api-0", 80);
        assert!(d.allowed);
        let s = a.staged.expect("a policy is staged");
        assert!(!s.allowed, "{s:?}");
        assert_eq!(s.would_deny, vec!["shop/api-lockdown".to_string()]);
        let prefixes: Vec<&str> = a.logged.iter().map(|l| l.prefix.as_str()).collect();
        assert_eq!(prefixes, vec!["shop/api-lockdown ingress would-deny"]);
        assert_eq!(
            (a.logged[0].node.as_str(), a.logged[0].chain.as_str()),
            ("node-1", "ings_shop_api-0")
        );
        assert_eq!(a.logged[0].group, crate::audit::DEFAULT_GROUP);

        // What the staged policy admits: allowed either way, nothing logged.
        let (d, a) = judge(&c, "shop/cart-0", "shop/api-0", 8080);
        let s = a.staged.expect("staged");
        assert!(d.allowed && s.allowed && s.would_deny.is_empty(), "{s:?}");
        assert!(a.logged.is_empty(), "{:?}", a.logged);

        // cart-0 is isolated by an enforced policy; the staged one would
        // admit every namespace: denied now, allowed if enforced.
        let (d, a) = judge(&c, "dev/tool-0", "shop/cart-0", 80);
        let s = a.staged.expect("staged");
        assert!(!d.allowed && s.allowed, "{d:?} {s:?}");
    }

    #[test]
    fn without_staged_policies_there_is_no_staged_verdict() {
        let c = logging_example();
        let (_, a) = judge(&c, "prod/web-0", "prod/db-0", 5432);
        assert!(a.staged.is_none());
        assert!(!Auditor::new(&c, &AuditOptions::default()).stages_anything());
    }

    #[test]
    fn logs_name_the_rule_and_prefix_on_the_path() {
        let c = logging_example();
        // db-from-web logs all: the allow of web -> db 5432 is logged.
        let (d, a) = judge(&c, "prod/web-0", "prod/db-0", 5432);
        assert!(d.allowed);
        let prefixes: Vec<&str> = a.logged.iter().map(|l| l.prefix.as_str()).collect();
        assert_eq!(prefixes, vec!["prod/db-from-web ingress[0] allow"]);
        assert_eq!(a.logged[0].chain, "ing_prod_db-0");
        // The same flow on another port is dropped by db-0's isolation,
        // logged as its default drop.
        let (d, a) = judge(&c, "prod/web-0", "prod/db-0", 80);
        assert!(!d.allowed);
        let prefixes: Vec<&str> = a.logged.iter().map(|l| l.prefix.as_str()).collect();
        assert_eq!(prefixes, vec!["prod/db-0 default-deny"]);
        // web-egress logs denies only: db -> web is not isolated on
        // ingress (web has no ingress policy), db has no egress policy.
        let (d, a) = judge(&c, "prod/db-0", "prod/web-0", 80);
        assert!(d.allowed && a.logged.is_empty(), "{:?}", a.logged);
        // A pod to itself meets no chain, though db-0's chain would drop
        // and log the packet.
        let (d, a) = judge(&c, "prod/db-0", "prod/db-0", 80);
        assert!(d.allowed && a.logged.is_empty(), "{:?}", a.logged);
    }

    #[test]
    fn the_node_wide_mode_logs_what_no_annotation_asks_for() {
        let c = cluster("b-from-a.yaml", include_str!("testdata/b-from-a.yaml"));
        let (a_, b_) = (Endpoint::pod("x", "a"), Endpoint::pod("x", "b"));
        let d = eval::allowed(&c, &a_, &b_, crate::ir::Family::Ipv4, Protocol::Tcp, 80)
            .expect("decision");
        let mut quiet = Auditor::new(&c, &AuditOptions::default());
        assert!(!quiet.logs_anything());
        let a = quiet
            .flow((&a_, &b_), &d, Protocol::Tcp, 80)
            .expect("audit");
        assert!(a.logged.is_empty());
        let all = AuditOptions {
            log: LogMode::All,
            ..AuditOptions::default()
        };
        let a = Auditor::new(&c, &all)
            .flow((&a_, &b_), &d, Protocol::Tcp, 80)
            .expect("audit");
        assert_eq!(
            a.logged
                .iter()
                .map(|l| l.prefix.as_str())
                .collect::<Vec<_>>(),
            vec!["x/b-from-a ingress[0] allow"]
        );
    }
}

//! `explain --live`: one flow through the table the kernel really holds
//! (read back over netlink) and through the ruleset the compiler intends
//! for the node, side by side. Both runs use the IR interpreter, so a
//! difference is a difference of the tables, never of two evaluators: the
//! verdict or the deciding rule differing is drift, a hand edit or a bug,
//! and is reported as a mismatch. So is a difference in the log rules
//! the packet meets (a verdict log or a staged policy's `would-deny`
//! removed or altered in the kernel is an audit gap). The kernel's
//! deciding rule is shown with its hit count, read back in the same dump
//! as the table.

use policy_compiler::audit::AuditOptions;
use policy_compiler::compile::CHAIN_FORWARD;
use policy_compiler::counters::{Counters, RuleCounter};
use policy_compiler::eval::Endpoint;
use policy_compiler::flowaudit::LogLine;
use policy_compiler::interp::{self, Packet, Step, Trace};
use policy_compiler::ir::{Ruleset, TABLE_F_DORMANT};
use policy_compiler::model::Protocol;
use policy_compiler::render::render_rule;
use policy_compiler::Cluster;
use std::fmt::Write as _;

/// The two runs of one flow on one node.
#[derive(Clone, Debug)]
pub struct LiveExplain {
    pub node: String,
    pub packet: Packet,
    /// Whether the kernel has an `inet nftpol` table at all.
    pub table_present: bool,
    /// Whether that table is dormant (present, enforcing nothing).
    pub dormant: bool,
    pub kernel: Trace,
    pub intended: Trace,
    /// Whether the source or the destination is a pod of this node (else
    /// the node's kernel never sees the flow).
    pub local: bool,
    /// The kernel counter of the deciding rule, when it counts (see
    /// [`LiveExplain::with_counters`]).
    pub hits: Option<RuleCounter>,
}

/// What decided a trace, comparable across the two tables: the chain and
/// the whole rule (matches, verdict, comment), or the base chain policy.
fn decider(t: &Trace) -> Option<(&str, &policy_compiler::ir::Rule)> {
    t.deciding().map(|s| (s.chain.as_str(), &s.rule))
}

impl LiveExplain {
    /// Runs the new connection `src -> dst` (addresses already resolved)
    /// through `kernel` (`None`: no table) and through the ruleset
    /// compiled for `node` with the node-wide logging options `opts`.
    pub fn run(
        cluster: &Cluster,
        (node, opts): (&str, &AuditOptions),
        kernel: Option<&Ruleset>,
        (src, dst): (std::net::IpAddr, std::net::IpAddr),
        protocol: Protocol,
        port: u16,
    ) -> LiveExplain {
        let packet = Packet::new_connection(src, dst, protocol, port);
        let intended_rs = policy_compiler::compile_node_with(
            cluster,
            node,
            &policy_compiler::NodeNet::default(),
            opts,
        );
        let empty = Ruleset::default();
        let local = [src, dst].iter().any(|ip| {
            cluster
                .policy_pod_by_ip(*ip)
                .is_some_and(|p| p.node_name.as_deref() == Some(node))
        });
        LiveExplain {
            node: node.to_string(),
            packet,
            table_present: kernel.is_some(),
            dormant: kernel.is_some_and(|k| k.table_flags & TABLE_F_DORMANT != 0),
            kernel: interp::trace(kernel.unwrap_or(&empty), CHAIN_FORWARD, &packet),
            intended: interp::trace(&intended_rs, CHAIN_FORWARD, &packet),
            local,
            hits: None,
        }
    }

    /// Looks up the hit count of the kernel's deciding rule in
    /// `counters`, read back together with the kernel's table.
    pub fn with_counters(mut self, counters: &Counters) -> LiveExplain {
        self.hits = self
            .kernel
            .deciding()
            .and_then(|s| counters.at(&s.chain, s.index))
            .cloned();
        self
    }

    /// Whether the kernel decides as the compiler intends, by the same
    /// rule, and logs the packet by the same rules.
    pub fn agrees(&self) -> bool {
        self.kernel.accepted == self.intended.accepted
            && decider(&self.kernel) == decider(&self.intended)
            && self.logs_agree()
    }

    /// The log rules the packet meets in the kernel's table.
    pub fn kernel_logs(&self) -> Vec<LogLine> {
        LogLine::of_trace(&self.node, &self.kernel)
    }

    /// The log rules the packet meets in the compiled ruleset.
    pub fn intended_logs(&self) -> Vec<LogLine> {
        LogLine::of_trace(&self.node, &self.intended)
    }

    /// Whether the kernel logs the packet as the compiler intends.
    pub fn logs_agree(&self) -> bool {
        self.kernel_logs() == self.intended_logs()
    }
}

fn word(accepted: bool) -> &'static str {
    if accepted {
        "ACCEPTS"
    } else {
        "DROPS"
    }
}

fn step_line(s: &Step) -> String {
    format!(
        "chain {} rule #{}: {}",
        s.chain,
        s.index,
        render_rule(&s.rule)
    )
}

fn decided_line(t: &Trace) -> String {
    match t.deciding() {
        Some(s) => format!("decided by {}", step_line(s)),
        None => "no rule decided: the forward chain's policy (accept)".to_string(),
    }
}

fn log_lines(s: &mut String, logs: &[LogLine]) {
    for l in logs {
        let _ = writeln!(
            s,
            "    logged: \"{}\" (nflog group {}) by chain {} rule #{}",
            l.prefix, l.group, l.chain, l.index
        );
    }
}

/// The report: verdicts, the deciding rule with its comment, the path
/// through the kernel's chains, and on a mismatch what the compiler
/// intended and how to find out more.
pub fn render(e: &LiveExplain, src: &Endpoint, dst: &Endpoint, protocol: Protocol) -> String {
    let p = &e.packet;
    let flow = format!(
        "{src} ({}) -> {dst} ({}) {}/{}",
        p.saddr,
        p.daddr,
        p.dport,
        protocol.api()
    );
    let mut s = String::new();
    if e.agrees() {
        let _ = writeln!(
            s,
            "LIVE {} on node {}: {flow}; the kernel agrees with the compiler",
            if e.kernel.accepted {
                "ALLOWED"
            } else {
                "DENIED"
            },
            e.node
        );
    } else if e.kernel.accepted != e.intended.accepted {
        let _ = writeln!(
            s,
            "MISMATCH on node {}: the kernel {} {flow} but the compiled ruleset {} it",
            e.node,
            word(e.kernel.accepted),
            word(e.intended.accepted)
        );
    } else if decider(&e.kernel) != decider(&e.intended) {
        let _ = writeln!(
            s,
            "MISMATCH on node {}: the kernel {} {flow} as the compiler intends, but by a \
             different rule",
            e.node,
            word(e.kernel.accepted),
        );
    } else {
        let _ = writeln!(
            s,
            "MISMATCH on node {}: the kernel {} {flow} as the compiler intends, but does not \
             log it as the compiler intends",
            e.node,
            word(e.kernel.accepted),
        );
    }
    if e.dormant {
        let _ = writeln!(
            s,
            "  the kernel's table inet nftpol is dormant: its chains are unhooked, nothing is \
             enforced on this node"
        );
    }
    if !e.table_present {
        let _ = writeln!(
            s,
            "  the kernel has no table inet nftpol: nothing is enforced on this node"
        );
    }
    if !e.local {
        let _ = writeln!(
            s,
            "  note: neither end is a pod on node {}; its kernel does not see this flow",
            e.node
        );
    }
    let _ = writeln!(s, "  kernel:   {}", decided_line(&e.kernel));
    if let Some(h) = &e.hits {
        let _ = writeln!(
            s,
            "    hits: {} packets, {} bytes on this rule since it was last written{}",
            h.packets,
            h.bytes,
            if policy_compiler::admin::compile::is_tier_chain(&h.chain) {
                " (a shared tier chain: counted for every pod that goes to it)"
            } else {
                ""
            }
        );
    }
    for step in &e.kernel.steps {
        let _ = writeln!(s, "    path: {}", step_line(step));
    }
    log_lines(&mut s, &e.kernel_logs());
    if e.agrees() {
        return s;
    }
    let _ = writeln!(s, "  compiler: {}", decided_line(&e.intended));
    for step in &e.intended.steps {
        let _ = writeln!(s, "    path: {}", step_line(step));
    }
    log_lines(&mut s, &e.intended_logs());
    let _ = writeln!(
        s,
        "  the kernel's table differs from what nftpol compiles for node {} (drift, a hand \
         edit, or a bug): `nftpol diff` shows the differences, `nftpol apply` restores the table",
        e.node
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use policy_compiler::ir::{Rule, Verdict};
    use std::net::IpAddr;

    fn cluster() -> Cluster {
        let loaded = policy_compiler::parse(
            "b-from-a.yaml",
            include_str!("../../policy-compiler/src/testdata/b-from-a.yaml"),
        );
        assert!(loaded.errors.is_empty());
        Cluster::from_objects(loaded.objects)
    }

    /// The report of a TCP flow from x/a to x/b, the flow every test runs.
    fn render_xa_to_xb(e: &LiveExplain) -> String {
        render(
            e,
            &Endpoint::pod("x", "a"),
            &Endpoint::pod("x", "b"),
            Protocol::Tcp,
        )
    }

    /// The live explain of a TCP flow from x/a to x/b on node n1, with
    /// default audit options, against `kernel`.
    fn run_xa_to_xb(c: &Cluster, kernel: Option<&Ruleset>, port: u16) -> LiveExplain {
        LiveExplain::run(
            c,
            ("n1", &AuditOptions::default()),
            kernel,
            ips(),
            Protocol::Tcp,
            port,
        )
    }

    fn ips() -> (IpAddr, IpAddr) {
        (
            "10.0.0.1".parse().expect("ip"),
            "10.0.0.2".parse().expect("ip"),
        )
    }

    #[test]
    fn an_equal_table_agrees_and_names_the_policy_rule() {
        let c = cluster();
        let kernel = policy_compiler::compile(&c, "n1");
        let e = run_xa_to_xb(&c, Some(&kernel), 80);
        assert!(e.agrees());
        let text = render_xa_to_xb(&e);
        assert!(text.starts_with("LIVE ALLOWED on node n1"), "{text}");
        assert!(
            text.contains(r#"counter accept comment "x/b-from-a ingress[0]""#),
            "{text}"
        );
        assert!(!text.contains("hits:"), "no counters read: {text}");
        // The deciding rule's counter, by chain and position.
        let step = e.kernel.deciding().expect("a rule decides").clone();
        let counters = Counters::from_rules(vec![
            RuleCounter::new(&step.chain, step.index, &step.rule, 7, 420),
            RuleCounter::new(&step.chain, step.index + 1, &step.rule, 99, 990),
        ]);
        let e = e.with_counters(&counters);
        assert_eq!(e.hits.as_ref().map(|h| h.packets), Some(7));
        let text = render_xa_to_xb(&e);
        assert!(
            text.contains("hits: 7 packets, 420 bytes on this rule"),
            "{text}"
        );
    }

    #[test]
    fn a_log_rule_missing_from_the_kernel_is_a_mismatch() {
        let loaded = policy_compiler::parse(
            "24-verdict-logging.yaml",
            include_str!("../../examples/policies/24-verdict-logging.yaml"),
        );
        assert!(loaded.errors.is_empty());
        let c = Cluster::from_objects(loaded.objects);
        let web_db: (IpAddr, IpAddr) = (
            "10.244.1.10".parse().expect("ip"),
            "10.244.1.11".parse().expect("ip"),
        );
        let node = ("node-1", &AuditOptions::default());
        let show = |e: &LiveExplain| {
            render(
                e,
                &Endpoint::pod("prod", "web-0"),
                &Endpoint::pod("prod", "db-0"),
                Protocol::Tcp,
            )
        };
        let mut kernel = policy_compiler::compile(&c, "node-1");
        let e = LiveExplain::run(&c, node, Some(&kernel), web_db, Protocol::Tcp, 5432);
        assert!(e.agrees());
        let text = show(&e);
        assert!(
            text.contains(
                r#"logged: "prod/db-from-web ingress[0] allow" (nflog group 2) by chain ing_prod_db-0 rule #0"#
            ),
            "{text}"
        );
        // The log rule removed by hand: same verdict, same deciding rule,
        // but the flow is no longer logged.
        let chain = kernel.chains.get_mut("ing_prod_db-0").expect("db chain");
        assert_eq!(chain.rules[0].verdict, Verdict::Continue);
        chain.rules.remove(0);
        let e = LiveExplain::run(&c, node, Some(&kernel), web_db, Protocol::Tcp, 5432);
        assert!(e.kernel.accepted && e.intended.accepted && !e.logs_agree());
        assert!(!e.agrees());
        let text = show(&e);
        assert!(
            text.contains("as the compiler intends, but does not log it as the compiler intends"),
            "{text}"
        );
        // The compiler's side names the log the kernel lacks.
        let compiler = text.split_once("  compiler:").expect("compiler part").1;
        assert!(
            compiler.contains(r#"logged: "prod/db-from-web ingress[0] allow""#),
            "{text}"
        );
    }

    #[test]
    fn a_count_of_a_shared_admin_chain_says_it_is_shared() {
        let admin = r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: deny-a}
spec:
  tier: Admin
  priority: 1
  subject: {namespaces: {}}
  ingress:
  - action: Deny
    from: [{pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: a}}}}]
"#;
        let loaded = policy_compiler::parse("admin.yaml", admin);
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        let mut objects = policy_compiler::parse(
            "b-from-a.yaml",
            include_str!("../../policy-compiler/src/testdata/b-from-a.yaml"),
        )
        .objects;
        objects.extend(loaded.objects);
        let c = Cluster::from_objects(objects);
        let kernel = policy_compiler::compile(&c, "n1");
        let e = run_xa_to_xb(&c, Some(&kernel), 80);
        let step = e.kernel.deciding().expect("the admin Deny decides").clone();
        assert!(
            policy_compiler::admin::compile::is_tier_chain(&step.chain),
            "{step:?}"
        );
        let counters = Counters::from_rules(vec![RuleCounter::new(
            &step.chain,
            step.index,
            &step.rule,
            5,
            300,
        )]);
        let text = render_xa_to_xb(&e.with_counters(&counters));
        assert!(
            text.contains("hits: 5 packets, 300 bytes on this rule since it was last written (a shared tier chain"),
            "{text}"
        );
    }

    #[test]
    fn a_tampered_rule_is_a_mismatch() {
        let c = cluster();
        let mut kernel = policy_compiler::compile(&c, "n1");
        let chain = kernel.chains.get_mut("ing_x_b").expect("pod chain");
        chain.rules.insert(
            0,
            Rule {
                matches: vec![],
                verdict: Verdict::Accept,
                comment: None,
            },
        );
        // Port 81 should be dropped; the inserted accept lets it in.
        let e = run_xa_to_xb(&c, Some(&kernel), 81);
        assert!(!e.agrees());
        let text = render_xa_to_xb(&e);
        assert!(
            text.starts_with("MISMATCH on node n1: the kernel ACCEPTS"),
            "{text}"
        );
        assert!(text.contains("compiled ruleset DROPS"), "{text}");
        // Port 80 is accepted either way, but by the wrong rule.
        let e = run_xa_to_xb(&c, Some(&kernel), 80);
        assert!(e.kernel.accepted && e.intended.accepted && !e.agrees());
        let text = render_xa_to_xb(&e);
        assert!(
            text.contains("as the compiler intends, but by a different rule"),
            "{text}"
        );
        // No table at all: the drop the compiler intends is missing.
        let e = run_xa_to_xb(&c, None, 81);
        assert!(!e.agrees());
        assert!(render(
            &e,
            &Endpoint::pod("x", "a"),
            &Endpoint::pod("x", "b"),
            Protocol::Tcp
        )
        .contains("no table inet nftpol"));
        // A dormant table enforces nothing either.
        let mut dormant = policy_compiler::compile(&c, "n1");
        dormant.table_flags = TABLE_F_DORMANT;
        let e = run_xa_to_xb(&c, Some(&dormant), 81);
        assert!(!e.agrees() && e.kernel.accepted);
        let text = render(
            &e,
            &Endpoint::pod("x", "a"),
            &Endpoint::pod("x", "b"),
            Protocol::Tcp,
        );
        assert!(text.contains("is dormant"), "{text}");
    }
}

//! The L2 guard's fast path for IP frames. Almost every frame a pod sends
//! is IPv4 or IPv6, and the guard's checks are about other frames: VLAN
//! tags, other ethertypes, ARP, neighbour advertisements. Without a fast
//! path an IPv4 frame fails each check in turn, one link-layer load a rule
//! (measured in benches/dataplane.rs as the largest part of what nftpol
//! costs a connection above conntrack). So each guard chain gets an
//! `ether type ip accept` (and `ip6`) placed after the last rule that could
//! still match such a frame: what the frame met is unchanged, it only
//! stops walking rules that cannot match it. Accept ends only this base
//! chain, as falling off its end does; the `inet` checks on the same
//! interface still run.

use crate::ir::{Chain, Match, Rule, Verdict};
use crate::srcval::{ETH_P_IP, ETH_P_IPV6};

/// Whether `rule` may match a frame whose `ether type` reads `ty`
/// (conservative: only what decides it for sure counts).
fn may_match(rule: &Rule, ty: u16) -> bool {
    !rule.matches.iter().any(|m| match m {
        Match::EtherType { ty: t, negate } => (*t == ty) == *negate,
        // Lowered behind `meta protocol ip6` in the netdev family. A frame
        // whose `ether type` reads `ty` carries no VLAN tag (the load puts a
        // removed tag back), so the kernel's protocol for it is `ty`.
        Match::Icmpv6Type { .. } | Match::Ip6HopLimit(_) => ty != ETH_P_IPV6,
        _ => false,
    })
}

/// The fast-path rule for frames of ethertype `ty`.
fn fast_path(ty: u16, what: &str) -> Rule {
    Rule {
        matches: vec![Match::EtherType { ty, negate: false }],
        verdict: Verdict::Accept,
        comment: Some(format!("{what}: no check below applies")),
    }
}

/// Adds the IPv4 and IPv6 fast paths to a guard chain, each right after
/// the last rule that may match its frames; none where that rule is the
/// last one.
pub fn add_fast_paths(chain: &mut Chain) {
    for (ty, what) in [(ETH_P_IPV6, "IPv6"), (ETH_P_IP, "IPv4")] {
        let at = chain
            .rules
            .iter()
            .rposition(|r| may_match(r, ty))
            .map_or(0, |i| i + 1);
        if at < chain.rules.len() {
            chain.rules.insert(at, fast_path(ty, what));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::srcval::{ETH_P_8021Q, ETH_P_ARP};

    fn rule(matches: Vec<Match>, verdict: Verdict) -> Rule {
        Rule {
            matches,
            verdict,
            comment: None,
        }
    }

    fn ether(ty: u16, negate: bool) -> Match {
        Match::EtherType { ty, negate }
    }

    /// What a frame of ethertype `ty` meets: the verdict of the first rule
    /// whose ethertype and family matches admit it, with every other match
    /// taken as true (the worst case for a fast path: a rule it skips
    /// would have decided). `None`: it falls off the end.
    fn first_hit(chain: &Chain, ty: u16) -> Option<(usize, Verdict)> {
        chain.rules.iter().enumerate().find_map(|(i, r)| {
            r.matches
                .iter()
                .all(|m| match m {
                    Match::EtherType { ty: t, negate } => (*t == ty) != *negate,
                    Match::Icmpv6Type { .. } | Match::Ip6HopLimit(_) => ty == ETH_P_IPV6,
                    _ => true,
                })
                .then(|| (i, r.verdict.clone()))
        })
    }

    #[test]
    fn ip_frames_skip_only_rules_that_cannot_match_them() {
        let drop = Verdict::Drop;
        let mut chain = Chain {
            base: None,
            rules: vec![
                rule(
                    vec![ether(ETH_P_8021Q, false), Match::Counter],
                    drop.clone(),
                ),
                rule(
                    vec![ether(ETH_P_IP, true), ether(ETH_P_IPV6, true)],
                    drop.clone(),
                ),
                rule(vec![ether(ETH_P_ARP, false)], drop.clone()),
                rule(vec![Match::Icmpv6Type { lo: 136, hi: 136 }], drop.clone()),
                rule(vec![ether(ETH_P_ARP, false)], drop.clone()),
            ],
        };
        let before = chain.clone();
        add_fast_paths(&mut chain);
        let names: Vec<_> = chain.rules.iter().map(|r| r.comment.clone()).collect();
        assert_eq!(chain.rules.len(), 7, "{names:?}");
        // IPv4 leaves at once; IPv6 after the advertisement check.
        assert_eq!(chain.rules[0], fast_path(ETH_P_IP, "IPv4"));
        assert_eq!(chain.rules[5], fast_path(ETH_P_IPV6, "IPv6"));
        // Every other frame meets the same rule, and an IP frame that a
        // rule of the old chain could have decided still meets it.
        for ty in [ETH_P_IP, ETH_P_IPV6, ETH_P_ARP, ETH_P_8021Q, 0x88cc] {
            let old = first_hit(&before, ty).map(|(i, v)| (before.rules[i].clone(), v));
            let new = first_hit(&chain, ty).map(|(i, v)| (chain.rules[i].clone(), v));
            match (old, new) {
                (Some(o), Some(n)) if o == n => {}
                (None, Some((r, Verdict::Accept))) if r.comment.is_some() => {}
                (o, n) => panic!("ethertype {ty:#x}: {o:?} became {n:?}"),
            }
        }
    }

    #[test]
    fn a_rule_any_frame_may_match_keeps_the_fast_paths_behind_it() {
        let mut chain = Chain {
            base: None,
            rules: vec![
                rule(vec![ether(ETH_P_8021Q, false)], Verdict::Drop),
                rule(vec![Match::Counter], Verdict::Drop),
            ],
        };
        let before = chain.clone();
        add_fast_paths(&mut chain);
        assert_eq!(chain, before, "nothing after the catch-all to skip");
        chain
            .rules
            .push(rule(vec![ether(ETH_P_ARP, false)], Verdict::Drop));
        add_fast_paths(&mut chain);
        assert_eq!(chain.rules.len(), 5);
        assert_eq!(chain.rules[1].matches, [Match::Counter]);
    }

    #[test]
    fn the_compiled_guard_lets_ip_frames_leave_first() {
        let yaml = "---\napiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\n\
                    spec: {nodeName: n1}\nstatus: {podIPs: [{ip: 10.0.0.1}]}\n";
        let loaded = crate::manifest::parse("t.yaml", yaml);
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        let cluster = crate::Cluster::from_objects(loaded.objects);
        let net = crate::NodeNet {
            pod_interfaces: [("x/a".to_string(), "veth0".to_string())].into(),
            ..crate::NodeNet::default()
        };
        let rs = crate::compile_node(&cluster, "n1", &net);
        let guard = rs.guard.expect("a guard for the pod's interface");
        let chain = guard.chains.values().next().expect("its chain");
        assert_eq!(chain.rules[0], fast_path(ETH_P_IP, "IPv4"), "{chain:?}");
        assert_eq!(chain.rules[1], fast_path(ETH_P_IPV6, "IPv6"), "{chain:?}");
        assert!(chain.rules.len() > 2, "the checks stay: {chain:?}");
    }
}

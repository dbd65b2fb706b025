//! Revocation of live connections the ruleset now denies: the optional
//! strict mode of the agent (`--revoke-denied-connections`).
//!
//! The base chains accept `ct state established` (and related packets from
//! the connection's own ends or from outside the node's pods) before any policy,
//! so a connection lives as long as its conntrack entry. After a batch that
//! changed the table, every entry that touches a local pod is judged as if
//! its first packet arrived now, by the IR interpreter over the ruleset
//! just applied, and the entries that judgement drops are deleted. The
//! connection's next packet then finds no entry and is judged by policy as
//! a new one (TCP's default loose pick-up), so it is dropped.
//!
//! How an entry is judged, as the hooks saw its first packet:
//! - source: the original source (source NAT happens after the filter
//!   hooks); destination and port: the reply tuple's source, which is the
//!   destination after DNAT (a Service address is judged as the backend pod
//!   it was translated to, as the `forward` hook saw it);
//! - a connection the node itself opened left through `output`, which
//!   nftpol never filters: never touched;
//! - a connection to one of the node's own addresses went through `input`,
//!   anything else through `forward`;
//! - entries where neither end (after DNAT) is a local pod are never
//!   touched, whatever the ruleset says.
//!
//! Source validation is not judged again: an entry only exists for a
//! packet that passed it.

use crate::netlink::conntrack::{Conntrack, Entry, Tuple};
use crate::netlink::NetlinkError;
use policy_compiler::compile::{CHAIN_FORWARD, CHAIN_INPUT};
use policy_compiler::interp::{self, Packet};
use policy_compiler::ir::{CtState, Ruleset};
use policy_compiler::Cluster;
use std::collections::HashSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Which entries may be touched, and which addresses are the node's own.
#[derive(Clone, Debug, Default)]
pub struct Scope {
    /// Addresses of the pods on this node (hostNetwork pods excluded).
    pub local_pods: HashSet<IpAddr>,
    /// Prefixes the node answers for itself (its local routes).
    pub node_local: Vec<ipnet::IpNet>,
}

impl Scope {
    /// The local pods of `node` in `cluster`, and the node's own
    /// addresses read from the caller's network namespace.
    pub fn of_node(cluster: &Cluster, node: &str) -> Scope {
        Scope {
            local_pods: local_pod_addresses(cluster, node),
            node_local: node_local_prefixes(),
        }
    }

    fn is_node(&self, a: IpAddr) -> bool {
        self.node_local.iter().any(|n| n.contains(&a))
    }
}

/// Every address of every live, non-hostNetwork pod scheduled on `node`.
pub fn local_pod_addresses(cluster: &Cluster, node: &str) -> HashSet<IpAddr> {
    cluster
        .pods()
        .filter(|p| p.node_name.as_deref() == Some(node) && p.is_policy_pod())
        .flat_map(|p| p.ips.iter().copied())
        .collect()
}

/// The node's own addresses, from `/proc/net/fib_trie` (IPv4 `host LOCAL`
/// routes) and `/proc/net/if_inet6` of the caller's network namespace. A
/// file that cannot be read gives nothing: then a connection the node
/// opened to a local pod may be judged as forwarded, which at worst cuts
/// it once (the node's next packet opens it again through `output`).
pub fn node_local_prefixes() -> Vec<ipnet::IpNet> {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let mut out = parse_fib_trie_local(&read("/proc/net/fib_trie"));
    out.extend(parse_if_inet6(&read("/proc/net/if_inet6")));
    out.sort();
    out.dedup();
    out
}

/// The `host LOCAL` prefixes of `/proc/net/fib_trie`: a `|-- ADDR` line
/// followed by `/LEN host LOCAL`.
pub fn parse_fib_trie_local(text: &str) -> Vec<ipnet::IpNet> {
    let mut last: Option<IpAddr> = None;
    let mut out = Vec::new();
    for line in text.lines() {
        let l = line.trim();
        if let Some(a) = l.strip_prefix("|-- ") {
            last = a.trim().parse().ok();
        } else if let (Some(a), Some(len)) = (last, l.strip_prefix('/')) {
            let mut f = len.split_whitespace();
            let len = f.next().and_then(|n| n.parse::<u8>().ok());
            if let (Some(len), Some("host"), Some("LOCAL")) = (len, f.next(), f.next()) {
                out.extend(ipnet::IpNet::new(a, len).ok());
            }
        }
    }
    out
}

/// The addresses of `/proc/net/if_inet6` (32 hex digits first).
pub fn parse_if_inet6(text: &str) -> Vec<ipnet::IpNet> {
    text.lines()
        .filter_map(|l| {
            let hex = l.split_whitespace().next()?;
            let a = u128::from_str_radix(hex, 16).ok()?;
            Some(ipnet::IpNet::from(IpAddr::V6(a.into())))
        })
        .collect()
}

/// What the ruleset says about one entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Judgement {
    /// Not ours to judge: no local pod at either end, or the node's own.
    Untouched,
    Allowed,
    Denied,
}

/// The packet the filter hooks saw first for this entry.
fn first_packet(e: &Entry) -> Packet {
    let ported = matches!(e.orig.proto, 6 | 17 | 33 | 132 | 136);
    Packet {
        saddr: e.orig.src,
        daddr: e.reply.src,
        proto: e.orig.proto,
        // For ICMP the tuple's "port" is the type, which DNAT keeps.
        dport: if ported { e.reply.sport } else { e.orig.dport },
        ct: CtState::New,
        hoplimit: 64,
        ct_saddrs: None,
    }
}

/// Judges one entry as a new connection under `rs`.
pub fn judge(rs: &Ruleset, scope: &Scope, e: &Entry) -> Judgement {
    let pkt = first_packet(e);
    if !scope.local_pods.contains(&pkt.saddr) && !scope.local_pods.contains(&pkt.daddr) {
        return Judgement::Untouched;
    }
    if scope.is_node(pkt.saddr) {
        return Judgement::Untouched;
    }
    let hook = if scope.is_node(pkt.daddr) {
        CHAIN_INPUT
    } else {
        CHAIN_FORWARD
    };
    if interp::hook_accepts(rs, hook, &pkt) {
        Judgement::Allowed
    } else {
        Judgement::Denied
    }
}

/// What one revocation pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Entries in the table.
    pub examined: usize,
    /// Entries with a local pod at one end (judged).
    pub judged: usize,
    /// Judged and denied: the flows cut (deleted or already gone).
    pub denied: Vec<Tuple>,
    pub deleted: usize,
    /// Ended by themselves between the dump and the deletion.
    pub gone: usize,
    /// Deletions the kernel refused, and dump messages not understood.
    pub failed: usize,
    pub elapsed: Duration,
}

/// Something that cuts the connections a ruleset denies (the kernel's
/// conntrack table, or a test double).
pub trait Revoke: Send {
    fn revoke(&mut self, rs: &Ruleset, scope: &Scope) -> Result<Report, NetlinkError>;
}

/// The kernel's conntrack table over netlink.
pub struct ConntrackRevoker {
    ct: Option<Conntrack>,
}

impl ConntrackRevoker {
    /// Opens the socket lazily: a node without conntrack netlink fails
    /// each pass (counted) rather than the agent's start.
    pub fn new() -> ConntrackRevoker {
        ConntrackRevoker { ct: None }
    }
}

impl Default for ConntrackRevoker {
    fn default() -> Self {
        Self::new()
    }
}

impl Revoke for ConntrackRevoker {
    fn revoke(&mut self, rs: &Ruleset, scope: &Scope) -> Result<Report, NetlinkError> {
        let ct = match &mut self.ct {
            Some(ct) => ct,
            None => self.ct.insert(Conntrack::open()?),
        };
        let result = revoke_with(ct, rs, scope);
        if result.is_err() {
            // Unread answers may be left in the socket: start afresh.
            self.ct = None;
        }
        result
    }
}

/// One pass: dump, judge, delete the denied entries.
pub fn revoke_with(
    ct: &mut Conntrack,
    rs: &Ruleset,
    scope: &Scope,
) -> Result<Report, NetlinkError> {
    let t0 = Instant::now();
    let mut report = Report::default();
    let mut doomed = Vec::new();
    report.failed = ct.dump(|e| {
        report.examined += 1;
        match judge(rs, scope, &e) {
            Judgement::Untouched => {}
            Judgement::Allowed => report.judged += 1,
            Judgement::Denied => {
                report.judged += 1;
                doomed.push(e);
            }
        }
    })?;
    let d = ct.delete(&doomed)?;
    report.denied = doomed.iter().map(|e| e.orig).collect();
    report.deleted = d.deleted;
    report.gone = d.gone;
    report.failed += d.failed;
    report.elapsed = t0.elapsed();
    Ok(report)
}

#[cfg(test)]
mod kernel_tests;
#[cfg(test)]
mod revival_tests;

#[cfg(test)]
mod tests {
    use super::*;

    use crate::netlink::conntrack::{tuple as t, Entry, Tuple};

    #[test]
    fn entries_are_judged_as_the_filter_hooks_saw_their_first_packet() {
        let loaded = policy_compiler::manifest::parse("t.yaml", kernel_tests::CLUSTER);
        let cluster = Cluster::from_objects(loaded.objects);
        let rs = policy_compiler::compile(&cluster, "n1");
        let scope = Scope {
            local_pods: local_pod_addresses(&cluster, "n1"),
            node_local: vec!["192.168.1.10/32".parse().unwrap()],
        };
        let judge = |o: Tuple, r: Tuple| judge(&rs, &scope, &Entry::new(o, r));
        let plain = |o: Tuple| Tuple {
            src: o.dst,
            dst: o.src,
            sport: o.dport,
            dport: o.sport,
            ..o
        };
        let allowed = t("10.77.0.1", "10.77.0.2", 6, 4000, 80);
        assert_eq!(judge(allowed, plain(allowed)), Judgement::Allowed);
        let denied = t("10.77.0.3", "10.77.0.2", 6, 4000, 80);
        assert_eq!(judge(denied, plain(denied)), Judgement::Denied);
        // Through a Service: judged as the backend and port DNAT chose.
        let via_vip = t("10.77.0.1", "10.96.0.10", 6, 4000, 8080);
        assert_eq!(
            judge(via_vip, t("10.77.0.2", "10.77.0.1", 6, 80, 4000)),
            Judgement::Allowed
        );
        assert_eq!(
            judge(via_vip, t("10.77.0.2", "10.77.0.1", 6, 81, 4000)),
            Judgement::Denied
        );
        // The node's own connection (output, never filtered), and flows
        // with no local pod at either end, are never touched.
        let from_node = t("192.168.1.10", "10.77.0.2", 6, 4000, 9999);
        assert_eq!(judge(from_node, plain(from_node)), Judgement::Untouched);
        let foreign = t("10.9.0.1", "10.9.0.2", 17, 1, 2);
        assert_eq!(judge(foreign, plain(foreign)), Judgement::Untouched);
        // ICMP echo: the type stands in for the port.
        let echo = t("10.77.0.1", "10.77.0.2", 1, 7, 8);
        assert_eq!(
            judge(echo, t("10.77.0.2", "10.77.0.1", 1, 7, 0)),
            Judgement::Denied
        );
        let v6 = t("fd77::3", "fd77::2", 6, 4000, 80);
        assert_eq!(judge(v6, plain(v6)), Judgement::Denied);
        // To the node itself: through `input`, where b's ingress chain is
        // never met (b may reach the node).
        let to_node = t("10.77.0.2", "192.168.1.10", 6, 4000, 10250);
        assert_eq!(judge(to_node, plain(to_node)), Judgement::Allowed);
    }

    #[test]
    fn local_addresses_come_from_host_local_routes_and_if_inet6() {
        let trie = "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 0.0.0.0\n        /0 universe UNICAST\n     |-- 10.244.1.1\n        /32 host LOCAL\n     |-- 10.244.1.0\n        /24 link UNICAST\n     |-- 127.0.0.0\n        /8 host LOCAL\n";
        let got = parse_fib_trie_local(trie);
        assert_eq!(
            got,
            vec![
                "10.244.1.1/32".parse::<ipnet::IpNet>().unwrap(),
                "127.0.0.0/8".parse().unwrap()
            ]
        );
        let v6 = parse_if_inet6("fd000000000000000000000000000002 04 40 00 82     eth0\nzz\n");
        assert_eq!(v6, vec!["fd00::2/128".parse::<ipnet::IpNet>().unwrap()]);
        assert!(parse_fib_trie_local("/32 host LOCAL\n|-- nonsense\n/32 host LOCAL").is_empty());
    }
}

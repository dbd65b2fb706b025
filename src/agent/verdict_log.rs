//! The verdict log: a thread reading the nflog group the log rules send
//! to, printing one structured line per logged packet (time, both pods by
//! name and address, protocol, port, verdict, policy) and counting them.
//!
//! Pods are named from the agent's own cluster state: the reconcile loop
//! keeps a [`Directory`] of pod addresses up to date as it applies each
//! change (per pod, so a busy cluster costs nothing per log line), and
//! after each batch the policies isolating every rewritten pod chain
//! (from the chain's default drop), which is how a `default-deny` line,
//! whose prefix names only the pod, names its policies too.
//!
//! Nothing here can stop the agent or change a verdict: a message that
//! does not decode is skipped with a counted warning, an overrun
//! (ENOBUFS) is counted and reading goes on, and a reader that cannot
//! bind the group logs why and ends (the rules keep enforcing).

use crate::agent::metrics::{Metrics, ReasonLabels, VerdictOnlyLabels};
use crate::netlink::nflog::{Logged, Reader, Received};
use policy_compiler::diff::Touched;
use policy_compiler::index::Cluster;
use policy_compiler::ir::Ruleset;
use policy_compiler::model::Pod;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// What the log lines need of the cluster, shared between the reconcile
/// loop (writer) and the reader thread.
#[derive(Debug, Default)]
pub struct Directory {
    /// The pod at each address, shared with the cluster index: a copy of
    /// every pod's name was 15 MiB at 150,000 pods. A B-tree, not a hash
    /// table: a rebuild grows it node by node, where a table is copied
    /// whole at each doubling.
    pods: RwLock<BTreeMap<IpAddr, Arc<Pod>>>,
    /// The policies isolating each pod chain, as its default drop names
    /// them.
    isolation: RwLock<HashMap<String, String>>,
}

const ISOLATED_BY: &str = " isolated by ";

impl Directory {
    /// After a change to the pod `namespace/name`, which held `old` before.
    pub fn note_pod(&self, cluster: &Cluster, namespace: &str, name: &str, old: &[IpAddr]) {
        let now: Vec<IpAddr> = cluster
            .pod(namespace, name)
            .map(|p| p.ips.clone())
            .unwrap_or_default();
        let mut pods = write(&self.pods);
        for ip in old.iter().chain(&now) {
            match cluster.claimant_shared(*ip) {
                Some(p) => pods.insert(*ip, p.clone()),
                None => pods.remove(ip),
            };
        }
    }

    /// After a relisting: every pod afresh.
    pub fn rebuild(&self, cluster: &Cluster) {
        let mut pods = write(&self.pods);
        pods.clear();
        for p in cluster.pods() {
            for ip in &p.ips {
                if let Some(claimant) = cluster.claimant_shared(*ip) {
                    pods.entry(*ip).or_insert_with(|| claimant.clone());
                }
            }
        }
    }

    /// After a batch: the isolating policies of the chains it rewrote.
    pub fn note_chains(&self, rs: &Ruleset, touched: &Touched) {
        let isolating = |name: &str| -> Option<String> {
            let chain = rs.chains.get(name)?;
            chain.rules.iter().rev().find_map(|r| {
                let c = r.comment.as_deref()?;
                c.split_once(ISOLATED_BY).map(|(_, p)| p.to_string())
            })
        };
        let mut iso = write(&self.isolation);
        if touched.all {
            iso.clear();
            for name in rs.chains.keys() {
                if let Some(p) = isolating(name) {
                    iso.insert(name.clone(), p);
                }
            }
            return;
        }
        for name in &touched.chains {
            match isolating(name) {
                Some(p) => iso.insert(name.clone(), p),
                None => iso.remove(name),
            };
        }
    }

    fn pod(&self, ip: &IpAddr) -> Option<String> {
        read(&self.pods)
            .get(ip)
            .map(|p| format!("{}/{}", p.namespace, p.name))
    }

    fn isolation(&self, chain: &str) -> Option<String> {
        read(&self.isolation).get(chain).cloned()
    }
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

/// One log line's fields, from a logged packet and the directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// allow, deny, would-deny, or an admin action (Accept, Deny, Pass,
    /// Allow).
    pub verdict: String,
    /// The policy rules the prefix names, or for a default drop the
    /// policies isolating the pod.
    pub policy: String,
    pub direction: Option<&'static str>,
    pub src_pod: Option<String>,
    pub dst_pod: Option<String>,
}

/// Reads a log prefix (`<ns>/<policy> <direction>[<i>] allow`,
/// `<Kind>/<name> <direction>[<i>] <Action>`, `<ns>/<policy>[,...]
/// <direction> would-deny`, `<ns>/<pod> default-deny`) against the pods
/// at the packet's addresses.
pub fn line(l: &Logged, dir: &Directory) -> Line {
    let src_pod = dir.pod(&l.src);
    let dst_pod = dir.pod(&l.dst);
    let (subject, last) = l.prefix.rsplit_once(' ').unwrap_or(("", &l.prefix));
    let direction = |s: &str| {
        if s.contains("ingress") {
            Some("ingress")
        } else if s.contains("egress") {
            Some("egress")
        } else {
            None
        }
    };
    if last == policy_compiler::audit::DEFAULT_DENY {
        // The pod isolated is the destination (ingress) or the source.
        let direction = if dst_pod.as_deref() == Some(subject) {
            Some("ingress")
        } else if src_pod.as_deref() == Some(subject) {
            Some("egress")
        } else {
            None
        };
        let policy = direction
            .and_then(|d| {
                let (ns, name) = subject.split_once('/')?;
                let prefix = if d == "ingress" { "ing" } else { "egr" };
                dir.isolation(&policy_compiler::names::ident(prefix, &[ns, name]))
            })
            .unwrap_or_else(|| format!("isolation of {subject}"));
        return Line {
            verdict: "deny".into(),
            policy,
            direction,
            src_pod,
            dst_pod,
        };
    }
    Line {
        verdict: last.to_string(),
        policy: subject.to_string(),
        direction: direction(subject),
        src_pod,
        dst_pod,
    }
}

/// The metric label of a verdict: a fixed set, whatever the prefix says.
fn verdict_label(verdict: &str) -> &'static str {
    match verdict {
        "allow" => "allow",
        "deny" => "deny",
        "would-deny" => "would-deny",
        _ => "admin",
    }
}

fn proto_name(p: u8) -> String {
    match p {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        58 => "icmpv6".into(),
        132 => "sctp".into(),
        136 => "udplite".into(),
        n => n.to_string(),
    }
}

/// Prints the line of one logged packet and counts it.
pub fn report(l: &Logged, dir: &Directory, metrics: &Metrics) {
    let f = line(l, dir);
    metrics
        .verdict_logs
        .get_or_create(&VerdictOnlyLabels {
            verdict: verdict_label(&f.verdict),
        })
        .inc();
    let none = || "-".to_string();
    tracing::info!(
        target: "nftpol::verdict",
        time = %humantime::format_rfc3339_micros(l.time),
        verdict = %f.verdict,
        policy = %f.policy,
        direction = %f.direction.unwrap_or("-"),
        src_pod = %f.src_pod.unwrap_or_else(none),
        src = %l.src,
        dst_pod = %f.dst_pod.unwrap_or_else(none),
        dst = %l.dst,
        proto = %proto_name(l.proto),
        port = l.ports.map(|p| p.1),
        prefix = %l.prefix,
        "verdict"
    );
}

/// Handles one receive; the reader loop and the tests share it.
pub fn handle(r: Received, dir: &Directory, metrics: &Metrics) {
    let lost = |reason| {
        metrics
            .verdict_log_lost
            .get_or_create(&ReasonLabels { reason })
            .inc()
    };
    match r {
        Received::Idle => {}
        Received::Overrun => {
            lost("overrun");
            tracing::warn!("verdict log overrun: the kernel dropped log messages (reader behind)");
        }
        Received::Messages(ms) => {
            for m in ms {
                match m {
                    Ok(l) => report(&l, dir, metrics),
                    Err(e) => {
                        lost("malformed");
                        tracing::warn!(error = %e, "skipping a verdict log message");
                    }
                }
            }
        }
    }
}

/// The reader thread; stops when told to (within one tick).
pub struct VerdictLog {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl VerdictLog {
    /// Binds `group` now (so a permission or busy-group error shows at
    /// start) and reads it on a thread of its own.
    pub fn spawn(
        group: u16,
        dir: Arc<Directory>,
        metrics: Arc<Metrics>,
    ) -> Result<VerdictLog, crate::netlink::NetlinkError> {
        let tick = Duration::from_millis(200);
        let mut reader = Reader::open(group, tick)?;
        tracing::info!(group, "reading the verdict log (nflog)");
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("nftpol-nflog".into())
            .spawn(move || {
                let mut failures = 0u32;
                while !stopped.load(Ordering::Relaxed) {
                    match reader.recv() {
                        Ok(r) => {
                            failures = 0;
                            handle(r, &dir, &metrics);
                        }
                        Err(e) => {
                            // A receive error is not the kernel's data:
                            // warn, back off, go on.
                            failures = failures.saturating_add(1);
                            metrics
                                .verdict_log_lost
                                .get_or_create(&ReasonLabels { reason: "receive" })
                                .inc();
                            tracing::warn!(error = %e, "verdict log receive failed");
                            std::thread::sleep(tick * failures.min(25));
                        }
                    }
                }
            })
            .map_err(crate::netlink::NetlinkError::Socket)?;
        Ok(VerdictLog { stop, thread })
    }

    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn logged(prefix: &str, src: &str, dst: &str) -> Logged {
        Logged {
            prefix: prefix.into(),
            time: SystemTime::UNIX_EPOCH,
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            proto: 6,
            ports: Some((40000, 80)),
            indev: None,
            outdev: None,
        }
    }

    fn cluster() -> Cluster {
        let text = r#"
apiVersion: v1
kind: Pod
metadata: {name: api-0, namespace: prod, labels: {app: api}}
spec: {nodeName: n}
status: {podIP: 10.0.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: tool-0, namespace: dev}
spec: {nodeName: n}
status: {podIP: 10.0.0.9}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: prod}
spec: {podSelector: {}}
"#;
        let loaded = policy_compiler::parse("t.yaml", text);
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        Cluster::from_objects(loaded.objects)
    }

    #[test]
    fn lines_name_both_pods_and_the_policies() {
        let c = cluster();
        let dir = Directory::default();
        dir.rebuild(&c);
        let rs = policy_compiler::compile(&c, "n");
        dir.note_chains(&rs, &Touched::everything());
        let l = line(
            &logged("prod/api-0 default-deny", "10.0.0.9", "10.0.0.2"),
            &dir,
        );
        assert_eq!(
            l,
            Line {
                verdict: "deny".into(),
                policy: "prod/deny-all".into(),
                direction: Some("ingress"),
                src_pod: Some("dev/tool-0".into()),
                dst_pod: Some("prod/api-0".into()),
            }
        );
        let l = line(
            &logged(
                "prod/web,prod/db ingress would-deny",
                "10.0.0.9",
                "10.9.9.9",
            ),
            &dir,
        );
        assert_eq!(l.verdict, "would-deny");
        assert_eq!(l.policy, "prod/web,prod/db ingress");
        assert_eq!(l.direction, Some("ingress"));
        assert_eq!(l.dst_pod, None);
        let l = line(&logged("noprefix", "10.0.0.9", "10.0.0.2"), &dir);
        assert_eq!((l.verdict.as_str(), l.policy.as_str()), ("noprefix", ""));
    }

    #[test]
    fn pods_moving_addresses_and_leaving_update_the_directory() {
        let mut c = cluster();
        let dir = Directory::default();
        dir.rebuild(&c);
        let old = c.pod("dev", "tool-0").unwrap().ips.clone();
        let mut p = c.pod("dev", "tool-0").unwrap().clone();
        p.ips = vec!["10.0.0.10".parse().unwrap()];
        c.apply_pod(p);
        dir.note_pod(&c, "dev", "tool-0", &old);
        assert_eq!(dir.pod(&"10.0.0.9".parse().unwrap()), None);
        assert_eq!(
            dir.pod(&"10.0.0.10".parse().unwrap()).as_deref(),
            Some("dev/tool-0")
        );
        let old = c.pod("dev", "tool-0").unwrap().ips.clone();
        c.delete_pod("dev", "tool-0");
        dir.note_pod(&c, "dev", "tool-0", &old);
        assert_eq!(dir.pod(&"10.0.0.10".parse().unwrap()), None);
    }

    #[test]
    fn malformed_messages_and_overruns_are_counted_not_fatal() {
        let dir = Directory::default();
        let metrics = Metrics::new();
        handle(Received::Overrun, &dir, &metrics);
        handle(
            Received::Messages(vec![
                Err(crate::netlink::nflog::DecodeError("x".into())),
                Ok(logged("a/b ingress[0] allow", "10.0.0.1", "10.0.0.2")),
            ]),
            &dir,
            &metrics,
        );
        let text = metrics.encode();
        for want in [
            r#"nftpol_verdict_logs_lost_total{reason="overrun"} 1"#,
            r#"nftpol_verdict_logs_lost_total{reason="malformed"} 1"#,
            r#"nftpol_verdict_logs_total{verdict="allow"} 1"#,
        ] {
            assert!(text.contains(want), "{want} missing:\n{text}");
        }
    }
}

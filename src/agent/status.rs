//! What the agent reports about its node beyond /metrics: per-policy hit
//! totals kept across rule rewrites ([`HitTracker`]), the
//! `NodeNetworkPolicyStatus` content built from the last applied ruleset
//! ([`StatusState`]), the watch-side [`Inventory`] of policy
//! resourceVersions and invalid objects it names, and the task that writes
//! the object to the API server ([`write_status`], server-side apply).
//!
//! The reconcile loop owns the backend (and so the netlink socket): it
//! reads the counters every `counters_interval` (one rule dump) and hands
//! a finished status to the writer at most every `status_interval`, timed
//! by its injected clock. The writer only sends what it is given.

use crate::agent::metrics::Metrics;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, OwnerReference, Time};
use kube::api::{Api, ListParams, Patch, PatchParams};
use nftpol_crds::status::{
    EnforcedPolicy, EnforcementCounts, IdlePolicy, InvalidObject, NodeEnforcement,
    NodeNetworkPolicyStatus, NodeNetworkPolicyStatusSpec,
};
use policy_compiler::counters::{Counters, Origin};
use policy_compiler::ir::{Element, Ruleset};
use policy_compiler::model::Direction;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

/// The field manager of every write the agent makes.
pub const FIELD_MANAGER: &str = "nftpol";

/// How per-policy hit counts reach /metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PolicyMetrics {
    /// No hit metrics (the status object and `nftpol hits` still have them).
    Off,
    /// Totals per direction and verdict only.
    Aggregate,
    /// One series per policy and direction for the first
    /// --policy-metrics-max policies by name (the rest are summed under
    /// policy="_other").
    PerPolicy,
    /// Per policy while the node enforces at most --policy-metrics-max
    /// policies, aggregate beyond (no series per policy, no `_other`).
    Auto,
}

/// resourceVersions of the policies and the objects skipped as invalid,
/// as the watches last saw them. Shared between the watch tasks (writers)
/// and the reconcile loop (reader).
#[derive(Clone, Debug, Default)]
pub struct Inventory(Arc<Mutex<InventoryInner>>);

#[derive(Debug, Default)]
pub struct InventoryInner {
    /// By policy key as rule comments name it: `ns/name`, `Kind/name`.
    pub versions: BTreeMap<String, String>,
    /// By (kind, namespace, name): the error.
    pub invalid: BTreeMap<(String, String, String), String>,
}

impl Inventory {
    pub fn lock(&self) -> MutexGuard<'_, InventoryInner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The key a policy's rules carry in their comments, `None` for kinds
    /// that are not policies.
    pub fn policy_key(kind: &str, namespace: &str, name: &str) -> Option<String> {
        match kind {
            "NetworkPolicy" => Some(format!("{namespace}/{name}")),
            "ClusterNetworkPolicy" | "AdminNetworkPolicy" | "BaselineAdminNetworkPolicy" => {
                Some(format!("{kind}/{name}"))
            }
            _ => None,
        }
    }

    /// A valid object was seen at `rv`.
    pub fn valid(&self, kind: &str, namespace: &str, name: &str, rv: Option<&str>) {
        let mut i = self.lock();
        // Called for every listed pod: build the key only when there is
        // something to forget.
        if !i.invalid.is_empty() {
            i.invalid
                .remove(&(kind.into(), namespace.into(), name.into()));
        }
        if let (Some(key), Some(rv)) = (Self::policy_key(kind, namespace, name), rv) {
            i.versions.insert(key, rv.to_string());
        }
    }

    /// The object was skipped (counts as absent).
    pub fn invalid(&self, kind: &str, namespace: &str, name: &str, error: String) {
        let mut i = self.lock();
        if let Some(key) = Self::policy_key(kind, namespace, name) {
            i.versions.remove(&key);
        }
        i.invalid
            .insert((kind.into(), namespace.into(), name.into()), error);
    }

    /// The object is gone.
    pub fn deleted(&self, kind: &str, namespace: &str, name: &str) {
        let mut i = self.lock();
        i.invalid
            .remove(&(kind.into(), namespace.into(), name.into()));
        if let Some(key) = Self::policy_key(kind, namespace, name) {
            i.versions.remove(&key);
        }
    }

    /// A new listing of `kind` starts: forget what the last one said.
    pub fn relisting(&self, kind: &str) {
        let mut i = self.lock();
        i.invalid.retain(|(k, _, _), _| k != kind);
        let prefix = if kind == "NetworkPolicy" {
            None
        } else {
            Some(format!("{kind}/"))
        };
        i.versions.retain(|key, _| match &prefix {
            // NetworkPolicy keys start with a lowercase namespace.
            None => key.starts_with(|c: char| c.is_ascii_uppercase()),
            Some(p) => !key.starts_with(p.as_str()),
        });
    }
}

/// One policy direction's traffic since the agent first saw its rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyTotal {
    pub packets: u64,
    pub last_hit: Option<SystemTime>,
    /// When its rules were first seen on this node by this agent.
    pub since: SystemTime,
}

/// Per-policy totals from successive counter readings. Kernel counters
/// start again from zero when a chain is rewritten (the rules are deleted
/// and added anew), so each rule's reading is compared with its previous
/// one: a smaller value means a fresh rule and counts whole. A rule
/// rewritten and then hit more than it had counted before, between two
/// readings, is under-counted by its old value.
#[derive(Debug, Default)]
pub struct HitTracker {
    last: HashMap<(String, usize, Option<String>), u64>,
    pub totals: BTreeMap<(String, Direction), PolicyTotal>,
    /// Deltas of the last observation, per (policy, direction).
    pub last_deltas: BTreeMap<(String, Direction), u64>,
    /// Deltas of the last observation per (direction, allows).
    pub last_verdict_deltas: BTreeMap<(Direction, bool), u64>,
}

impl HitTracker {
    /// Folds in one reading; returns whether any total moved or a policy
    /// appeared or went.
    pub fn observe(&mut self, c: &Counters, now: SystemTime) -> bool {
        let mut last = HashMap::with_capacity(c.rules.len());
        let mut deltas: BTreeMap<(String, Direction), u64> = BTreeMap::new();
        let mut verdict_deltas: BTreeMap<(Direction, bool), u64> = BTreeMap::new();
        for r in &c.rules {
            let key = (r.chain.clone(), r.index, r.comment.clone());
            let delta = match self.last.get(&key) {
                Some(&before) if r.packets >= before => r.packets - before,
                _ => r.packets,
            };
            last.insert(key, r.packets);
            let (policies, direction) = match r.comment.as_deref().and_then(Origin::of) {
                Some(Origin::Rule {
                    policy, direction, ..
                }) => (vec![policy], direction),
                Some(
                    Origin::Shared {
                        policies,
                        direction,
                        ..
                    }
                    | Origin::Isolation {
                        policies,
                        direction,
                    },
                ) => (policies, direction),
                None => continue,
            };
            *verdict_deltas.entry((direction, r.allows)).or_default() += delta;
            for p in policies {
                *deltas.entry((p, direction)).or_default() += delta;
            }
        }
        self.last = last;
        let before: BTreeSet<_> = self.totals.keys().cloned().collect();
        self.totals.retain(|k, _| deltas.contains_key(k));
        let mut moved = before.len() != self.totals.len();
        for (k, d) in &deltas {
            let t = self.totals.entry(k.clone()).or_insert_with(|| {
                moved = true;
                PolicyTotal {
                    packets: 0,
                    last_hit: None,
                    since: now,
                }
            });
            if *d > 0 {
                t.packets += d;
                t.last_hit = Some(now);
                moved = true;
            }
        }
        self.last_deltas = deltas;
        self.last_verdict_deltas = verdict_deltas;
        moved
    }
}

/// The per-policy series of `nftpol_policy_packets_total` that exist
/// now, so that a series goes when its policy's rules leave the node
/// (deleted, or no longer selecting a local pod) or it loses its place
/// under the cap: /metrics never holds more than `max` policies (plus
/// `_other` per direction), however many policies come and go over the
/// agent's life.
#[derive(Debug)]
pub struct HitExport {
    mode: PolicyMetrics,
    max: usize,
    named: BTreeSet<(String, Direction)>,
}

/// The series that sums the policies beyond the cap.
pub const OTHER_POLICIES: &str = "_other";

impl HitExport {
    pub fn new(mode: PolicyMetrics, max: usize) -> HitExport {
        HitExport {
            mode,
            max,
            named: BTreeSet::new(),
        }
    }

    /// The policies that have a series of their own after the last export.
    pub fn named(&self) -> impl Iterator<Item = &(String, Direction)> {
        self.named.iter()
    }

    /// Feeds the last observation into the hit metrics. A policy's
    /// series counts its packets from when it got the series; `_other`
    /// counts the packets of every policy without a series of its own at
    /// the time they were counted, and is never removed (a counter must
    /// not go back). So per direction the increments of all series add up
    /// to the packets counted on behalf of each policy, whichever series
    /// they landed in.
    pub fn export(&mut self, m: &Metrics, t: &HitTracker) {
        if self.mode == PolicyMetrics::Off {
            return;
        }
        for ((direction, allows), d) in &t.last_verdict_deltas {
            m.rule_hits(direction.word(), if *allows { "allow" } else { "drop" }, *d);
        }
        let policies: BTreeSet<&String> = t.totals.keys().map(|(p, _)| p).collect();
        let per_policy = match self.mode {
            PolicyMetrics::PerPolicy => true,
            PolicyMetrics::Auto => policies.len() <= self.max,
            PolicyMetrics::Off | PolicyMetrics::Aggregate => false,
        };
        // The first `max` policies by name, so every node and every
        // restart picks the same ones.
        let named: BTreeSet<&String> = if per_policy {
            policies.into_iter().take(self.max).collect()
        } else {
            BTreeSet::new()
        };
        let now: BTreeSet<(String, Direction)> = t
            .totals
            .keys()
            .filter(|(p, _)| named.contains(p))
            .cloned()
            .collect();
        for (policy, direction) in self.named.difference(&now) {
            m.forget_policy(policy, direction.word());
        }
        for ((policy, direction), d) in &t.last_deltas {
            if named.contains(policy) {
                m.policy_hits(policy, direction.word(), *d);
            } else if per_policy {
                m.policy_hits(OTHER_POLICIES, direction.word(), *d);
            }
        }
        self.named = now;
    }
}

fn time(t: SystemTime) -> Time {
    let ts = k8s_openapi::jiff::Timestamp::try_from(t).unwrap_or_default();
    Time(ts)
}

/// The FNV-1a 64 hash of the table as `nftpol compile` prints it.
pub fn ruleset_hash(rs: &Ruleset) -> String {
    format!(
        "{:016x}",
        policy_compiler::names::stable_hash(&policy_compiler::render::render_table(rs))
    )
}

/// Local pods with a chain: those the verdict maps jump for.
fn pods_isolated(rs: &Ruleset) -> usize {
    rs.sets
        .values()
        .flat_map(|s| &s.elements)
        .filter_map(|e| match e {
            Element::VmapJump(_, chain) => chain
                .strip_prefix("ing_")
                .or_else(|| chain.strip_prefix("egr_")),
            _ => None,
        })
        .collect::<BTreeSet<_>>()
        .len()
}

/// The policies with rules in `rs`, from the rule comments.
fn policies_in(rs: &Ruleset) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for r in rs.chains.values().flat_map(|c| &c.rules) {
        match r.comment.as_deref().and_then(Origin::of) {
            Some(Origin::Rule { policy, .. }) => {
                out.insert(policy);
            }
            Some(Origin::Shared { policies, .. } | Origin::Isolation { policies, .. }) => {
                out.extend(policies)
            }
            None => {}
        }
    }
    out
}

/// What the loop knows that the status object shows.
#[derive(Debug, Default)]
pub struct StatusState {
    pub generation: u64,
    pub last_apply: Option<SystemTime>,
    /// The last failure to program the kernel, cleared by a success.
    pub last_error: Option<String>,
    /// Kinds whose listing has held changes back too long, with what the
    /// `Degraded` condition says about each.
    pub stalled: BTreeMap<&'static str, String>,
    /// (type, status) -> when it last changed, so transition times stay put.
    transitions: BTreeMap<&'static str, (bool, SystemTime)>,
}

impl StatusState {
    fn condition(
        &mut self,
        ty: &'static str,
        on: bool,
        reason: &str,
        message: String,
        now: SystemTime,
    ) -> Condition {
        let entry = self.transitions.entry(ty).or_insert((on, now));
        if entry.0 != on {
            *entry = (on, now);
        }
        Condition {
            type_: ty.into(),
            status: if on { "True" } else { "False" }.into(),
            reason: reason.into(),
            message,
            last_transition_time: time(entry.1),
            observed_generation: None,
        }
    }

    /// The status object's content.
    pub fn build(
        &mut self,
        applied: Option<&Ruleset>,
        hits: &HitTracker,
        inventory: &Inventory,
        now: SystemTime,
    ) -> NodeEnforcement {
        let empty = Ruleset::default();
        let rs = applied.unwrap_or(&empty);
        let inv = inventory.lock();
        let policies: Vec<EnforcedPolicy> = policies_in(rs)
            .into_iter()
            .map(|key| {
                let (kind, namespace, name) = match key.split_once('/') {
                    Some((k, n)) if k.starts_with(|c: char| c.is_ascii_uppercase()) => {
                        (k.to_string(), None, n.to_string())
                    }
                    Some((ns, n)) => ("NetworkPolicy".into(), Some(ns.to_string()), n.to_string()),
                    None => ("NetworkPolicy".into(), None, key.clone()),
                };
                let total = |d| hits.totals.get(&(key.clone(), d));
                let last_hit = Direction::ALL
                    .into_iter()
                    .filter_map(|d| total(d).and_then(|t| t.last_hit))
                    .max();
                EnforcedPolicy {
                    kind,
                    namespace,
                    name,
                    resource_version: inv.versions.get(&key).cloned(),
                    ingress_packets: total(Direction::Ingress).map_or(0, |t| t.packets),
                    egress_packets: total(Direction::Egress).map_or(0, |t| t.packets),
                    last_hit_time: last_hit.map(time),
                }
            })
            .collect();
        let idle_policies = hits
            .totals
            .iter()
            .filter(|(_, t)| t.packets == 0)
            .map(|((policy, direction), t)| IdlePolicy {
                policy: policy.clone(),
                direction: direction.word().into(),
                since: time(t.since),
            })
            .collect();
        let invalid_objects: Vec<InvalidObject> = inv
            .invalid
            .iter()
            .map(|((kind, ns, name), error)| InvalidObject {
                kind: kind.clone(),
                namespace: (!ns.is_empty()).then(|| ns.clone()),
                name: name.clone(),
                error: error.clone(),
            })
            .collect();
        drop(inv);
        let ready = applied.is_some() && self.last_error.is_none();
        let conditions = vec![
            self.condition(
                "Ready",
                ready,
                if ready { "Enforcing" } else { "NotApplied" },
                if ready {
                    "the kernel holds the compiled ruleset".into()
                } else {
                    "no ruleset applied yet, or the last attempt failed".into()
                },
                now,
            ),
            {
                // A failure to program goes first: it is the newer news.
                let stalled: Vec<&str> = self.stalled.values().map(String::as_str).collect();
                let (degraded, reason, message) = match &self.last_error {
                    Some(e) => (true, "ApplyFailed", e.clone()),
                    None if !stalled.is_empty() => (true, "ListingStalled", stalled.join("; ")),
                    None => (false, "AsExpected", String::new()),
                };
                self.condition("Degraded", degraded, reason, message, now)
            },
        ];
        NodeEnforcement {
            ruleset_generation: self.generation,
            ruleset_hash: applied.map(ruleset_hash).unwrap_or_default(),
            last_apply_time: self.last_apply.map(time),
            counts: EnforcementCounts {
                policies: policies.len() as u64,
                pods_isolated: pods_isolated(rs) as u64,
                chains: rs.chains.len() as u64,
                rules: rs.rule_count() as u64,
                set_elements: rs.element_count() as u64,
                invalid_objects: invalid_objects.len() as u64,
            },
            policies,
            idle_policies,
            invalid_objects,
            conditions,
        }
    }
}

/// Writes each status it receives to the node's `NodeNetworkPolicyStatus`
/// with server-side apply: the object itself (spec and an ownerReference
/// to the Node, so it goes with the node), then the status subresource.
/// The object is applied again with each status until it has its owner:
/// a Node not found or not listable at first (a transient error, or the
/// agent started before its Node was registered) must not leave an object
/// the garbage collector never deletes. A failed write is logged and
/// retried with the next status; the loop's rate limit bounds how often
/// that is.
pub async fn write_status(
    client: kube::Client,
    node: String,
    mut rx: tokio::sync::watch::Receiver<Option<NodeEnforcement>>,
) {
    let api: Api<NodeNetworkPolicyStatus> = Api::all(client.clone());
    // Listed by name rather than read with `get`: the agent already may
    // list Nodes, and needs no further verb for it.
    let nodes: Api<Node> = Api::all(client);
    let by_name = ListParams::default().fields(&format!("metadata.name={node}"));
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut created = false;
    let mut owned = false;
    while rx.changed().await.is_ok() {
        let Some(status) = rx.borrow_and_update().clone() else {
            continue;
        };
        if !created || !owned {
            let listed = nodes.list(&by_name).await;
            let me = listed.map(|l| {
                l.items
                    .into_iter()
                    .find(|n| n.metadata.name.as_deref() == Some(node.as_str()))
            });
            let owner = match me {
                Ok(n) => n.and_then(|n| n.metadata.uid).map(|uid| OwnerReference {
                    api_version: "v1".into(),
                    kind: "Node".into(),
                    name: node.clone(),
                    uid,
                    ..OwnerReference::default()
                }),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read this node's Node object; the status object gets no owner");
                    None
                }
            };
            let mut obj = NodeNetworkPolicyStatus::new(
                &node,
                NodeNetworkPolicyStatusSpec {
                    node_name: node.clone(),
                },
            );
            if owner.is_none() && !created {
                tracing::warn!("this node's Node object is not found yet; the status object gets its owner once it is");
            }
            let has_owner = owner.is_some();
            obj.metadata.owner_references = owner.map(|o| vec![o]);
            match api.patch(&node, &params, &Patch::Apply(&obj)).await {
                Ok(_) => {
                    created = true;
                    owned = has_owner;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot write the NodeNetworkPolicyStatus object");
                    continue;
                }
            }
        }
        let patch = serde_json::json!({
            "apiVersion": "nftpol.io/v1alpha1",
            "kind": "NodeNetworkPolicyStatus",
            "status": status,
        });
        if let Err(e) = api
            .patch_status(&node, &params, &Patch::Apply(&patch))
            .await
        {
            tracing::warn!(error = %e, "cannot write the NodeNetworkPolicyStatus status");
            // Deleted behind our back: create it again next time.
            if matches!(&e, kube::Error::Api(s) if s.code == 404) {
                created = false;
            }
        }
    }
}

/// `nftpol_policy_packets_total` as /metrics shows it: (policy,
/// direction) -> packets. Shared by this module's tests and the agent's.
#[cfg(test)]
pub(crate) fn policy_series(m: &Metrics) -> BTreeMap<(String, String), u64> {
    m.encode()
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("nftpol_policy_packets_total{policy=\"")?;
            let (policy, rest) = rest.split_once("\",direction=\"")?;
            let (direction, value) = rest.split_once("\"} ")?;
            Some(((policy.into(), direction.into()), value.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use policy_compiler::counters::RuleCounter;
    use policy_compiler::ir::{Rule, Verdict};
    use std::time::Duration;

    fn reading(chain: &str, comment: &str, packets: u64) -> RuleCounter {
        let rule = Rule {
            matches: vec![],
            verdict: Verdict::Accept,
            comment: Some(comment.into()),
        };
        RuleCounter::new(chain, 0, &rule, packets, 0)
    }

    #[test]
    fn totals_survive_rewritten_rules_and_policies_come_and_go() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let t1 = t0 + Duration::from_secs(10);
        let t2 = t1 + Duration::from_secs(10);
        let mut h = HitTracker::default();
        let c = |rules| Counters::from_rules(rules);
        assert!(h.observe(
            &c(vec![
                reading("ing_a_p", "a/x ingress[0]", 5),
                reading("ing_a_q", "a/idle ingress[0]", 0),
            ]),
            t0
        ));
        let x = ("a/x".to_string(), Direction::Ingress);
        assert_eq!(h.totals[&x].packets, 5);
        // The chain was rewritten: its counter restarted at 2.
        assert!(h.observe(
            &c(vec![
                reading("ing_a_p", "a/x ingress[0]", 2),
                reading("ing_a_q", "a/idle ingress[0]", 0),
            ]),
            t1
        ));
        assert_eq!(h.totals[&x].packets, 7);
        assert_eq!(h.totals[&x].last_hit, Some(t1));
        assert_eq!(h.last_deltas[&x], 2);
        // Nothing moved: nothing to report.
        assert!(!h.observe(
            &c(vec![
                reading("ing_a_p", "a/x ingress[0]", 2),
                reading("ing_a_q", "a/idle ingress[0]", 0),
            ]),
            t2
        ));
        let idle = &h.totals[&("a/idle".to_string(), Direction::Ingress)];
        assert_eq!((idle.packets, idle.since), (0, t0));
        // a/idle's rules went away.
        assert!(h.observe(&c(vec![reading("ing_a_p", "a/x ingress[0]", 2)]), t2));
        assert_eq!(h.totals.len(), 1);
    }

    fn rule_packets(m: &Metrics, direction: &str) -> u64 {
        let prefix = format!("nftpol_rule_packets_total{{direction=\"{direction}\",");
        m.encode()
            .lines()
            .filter(|l| l.starts_with(&prefix))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
            .sum()
    }

    /// One reading: policy `ns/<name>` counted `packets` on its ingress
    /// rule (each policy on a pod chain of its own).
    fn policies(hits: &[(&str, u64)]) -> Counters {
        Counters::from_rules(
            hits.iter()
                .map(|(p, n)| reading(&format!("ing_{p}"), &format!("ns/{p} ingress[0]"), *n))
                .collect(),
        )
    }

    fn series<const N: usize>(pairs: [(&str, u64); N]) -> BTreeMap<(String, String), u64> {
        pairs
            .into_iter()
            .map(|(p, n)| ((p.to_string(), "ingress".to_string()), n))
            .collect()
    }

    #[test]
    fn auto_above_its_cap_keeps_the_totals_only_and_comes_back_below_it() {
        let t0 = SystemTime::UNIX_EPOCH;
        let m = Metrics::new();
        let mut h = HitTracker::default();
        let mut e = HitExport::new(PolicyMetrics::Auto, 2);
        h.observe(&policies(&[("a", 3), ("b", 4)]), t0);
        e.export(&m, &h);
        assert_eq!(policy_series(&m), series([("ns/a", 3), ("ns/b", 4)]));
        // A third policy: above the cap, so no series per policy at all
        // (not even `_other`), and the totals go on.
        h.observe(&policies(&[("a", 5), ("b", 4), ("c", 7)]), t0);
        e.export(&m, &h);
        assert_eq!(policy_series(&m), series([]));
        assert_eq!(rule_packets(&m, "ingress"), 3 + 4 + 2 + 7);
        // Back at the cap: each policy has its series again, counting
        // from then on.
        h.observe(&policies(&[("a", 6), ("b", 4)]), t0);
        e.export(&m, &h);
        assert_eq!(policy_series(&m), series([("ns/a", 1), ("ns/b", 0)]));
        assert_eq!(rule_packets(&m, "ingress"), 3 + 4 + 2 + 7 + 1);
    }

    #[test]
    fn policies_beyond_the_cap_sum_into_other_and_every_packet_counts_once() {
        let t0 = SystemTime::UNIX_EPOCH;
        let m = Metrics::new();
        let mut h = HitTracker::default();
        let mut e = HitExport::new(PolicyMetrics::PerPolicy, 2);
        // The first two by name have a series, the rest sum into _other,
        // by direction.
        let c = Counters::from_rules(vec![
            reading("ing_b", "ns/b ingress[0]", 2),
            reading("ing_d", "ns/d ingress[0]", 10),
            reading("egr_d", "ns/d egress[0]", 100),
            reading("ing_a", "ns/a ingress[0]", 1),
            reading("ing_c", "ns/c ingress[0]", 5),
            // One rule serving two policies counts for each.
            reading("ing_x", "ns/a ingress[1], ns/c ingress[1]", 1000),
        ]);
        h.observe(&c, t0);
        e.export(&m, &h);
        let mut want = series([("ns/a", 1001), ("ns/b", 2), ("_other", 1015)]);
        want.insert(("_other".into(), "egress".into()), 100);
        assert_eq!(policy_series(&m), want);
        // A policy that sorts first takes a place: ns/b's series goes, and
        // its packets from now on count in _other.
        let c = Counters::from_rules(vec![
            reading("ing_0", "ns/0 ingress[0]", 7),
            reading("ing_a", "ns/a ingress[0]", 1),
            reading("ing_b", "ns/b ingress[0]", 2 + 20),
            reading("ing_c", "ns/c ingress[0]", 5),
        ]);
        h.observe(&c, t0);
        e.export(&m, &h);
        let mut want = series([("ns/0", 7), ("ns/a", 1001), ("_other", 1015 + 20)]);
        want.insert(("_other".into(), "egress".into()), 100);
        assert_eq!(policy_series(&m), want);
        // Every packet counted on behalf of a policy is in exactly one
        // series' increase, whichever: 1001 + 2 + 1015 before, 7 + 20 since.
        let shown: u64 = policy_series(&m)
            .iter()
            .filter(|((_, d), _)| d == "ingress")
            .map(|(_, n)| n)
            .sum();
        assert_eq!(
            shown + 2,
            1001 + 2 + 1015 + 7 + 20,
            "ns/b's 2 left with its series"
        );
    }

    #[test]
    fn a_policy_series_goes_with_its_rules_and_churn_stays_bounded() {
        let t0 = SystemTime::UNIX_EPOCH;
        let m = Metrics::new();
        let mut h = HitTracker::default();
        let mut e = HitExport::new(PolicyMetrics::PerPolicy, 3);
        h.observe(&policies(&[("keep", 1), ("gone", 2)]), t0);
        e.export(&m, &h);
        assert_eq!(policy_series(&m), series([("ns/gone", 2), ("ns/keep", 1)]));
        // ns/gone was deleted (or selects no local pod any more): its rules
        // left the table, and so does its series.
        h.observe(&policies(&[("keep", 1)]), t0);
        e.export(&m, &h);
        assert_eq!(policy_series(&m), series([("ns/keep", 1)]));
        // An API server creating and deleting policies without end: the
        // series come and go with them and never exceed the cap.
        let mut most = 0;
        for i in 0..500 {
            let a = format!("flap-{i}");
            let b = format!("flap-{}", i + 1);
            h.observe(&policies(&[("keep", 1), (&a, 1), (&b, 0)]), t0);
            e.export(&m, &h);
            most = most.max(policy_series(&m).len());
        }
        assert_eq!(most, 3);
        h.observe(&policies(&[("keep", 1)]), t0);
        e.export(&m, &h);
        assert_eq!(policy_series(&m), series([("ns/keep", 1)]));
    }

    #[test]
    fn inventory_follows_versions_errors_and_relists() {
        let inv = Inventory::default();
        inv.valid("NetworkPolicy", "prod", "web", Some("12"));
        inv.valid("AdminNetworkPolicy", "", "sec", Some("13"));
        inv.valid("Pod", "prod", "web-0", Some("14"));
        inv.invalid("NetworkPolicy", "prod", "bad", "spec: nope".into());
        {
            let i = inv.lock();
            assert_eq!(i.versions.len(), 2);
            assert_eq!(i.versions["prod/web"], "12");
            assert_eq!(i.invalid.len(), 1);
        }
        inv.relisting("NetworkPolicy");
        {
            let i = inv.lock();
            assert_eq!(
                i.versions.keys().collect::<Vec<_>>(),
                ["AdminNetworkPolicy/sec"]
            );
            assert!(i.invalid.is_empty());
        }
        inv.deleted("AdminNetworkPolicy", "", "sec");
        assert!(inv.lock().versions.is_empty());
    }

    #[test]
    fn status_names_policies_counts_and_conditions() {
        let loaded = policy_compiler::parse(
            "b-from-a.yaml",
            include_str!("../../policy-compiler/src/testdata/b-from-a.yaml"),
        );
        let cluster = policy_compiler::Cluster::from_objects(loaded.objects);
        let rs = policy_compiler::compile(&cluster, "n1");
        let inv = Inventory::default();
        inv.valid("NetworkPolicy", "x", "b-from-a", Some("42"));
        inv.invalid("Pod", "x", "broken", "spec.containers: missing".into());
        let mut h = HitTracker::default();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000);
        h.observe(
            &Counters::from_rules(vec![reading("ing_x_b", "x/b-from-a ingress[0]", 3)]),
            now,
        );
        let mut st = StatusState {
            generation: 4,
            last_apply: Some(now),
            ..StatusState::default()
        };
        let s = st.build(Some(&rs), &h, &inv, now);
        assert_eq!(s.ruleset_generation, 4);
        assert_eq!(s.ruleset_hash, ruleset_hash(&rs));
        assert_eq!(s.counts.rules, rs.rule_count() as u64);
        assert_eq!(s.counts.pods_isolated, 1);
        assert_eq!(s.policies.len(), 1);
        let p = &s.policies[0];
        assert_eq!(
            (
                p.namespace.as_deref(),
                p.name.as_str(),
                p.resource_version.as_deref()
            ),
            (Some("x"), "b-from-a", Some("42"))
        );
        assert_eq!(p.ingress_packets, 3);
        assert_eq!(s.invalid_objects.len(), 1);
        let cond = |s: &NodeEnforcement, ty: &str| {
            s.conditions
                .iter()
                .find(|c| c.type_ == ty)
                .map(|c| (c.status.clone(), c.last_transition_time.clone()))
        };
        assert_eq!(cond(&s, "Ready").map(|c| c.0).as_deref(), Some("True"));
        assert_eq!(cond(&s, "Degraded").map(|c| c.0).as_deref(), Some("False"));
        // A failure turns Degraded on, with a new transition time.
        st.last_error = Some("netlink: rejected".into());
        let later = now + Duration::from_secs(5);
        let s2 = st.build(Some(&rs), &h, &inv, later);
        assert_eq!(
            cond(&s2, "Degraded"),
            Some(("True".to_string(), time(later)))
        );
        assert_eq!(cond(&s2, "Ready").map(|c| c.0).as_deref(), Some("False"));
    }
}

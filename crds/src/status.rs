//! `NodeNetworkPolicyStatus` (nftpol.io/v1alpha1): what nftpol enforces on
//! one node, written by that node's agent. Cluster-scoped, one object per
//! node, named after the node and owned by its Node object (an
//! ownerReference), so the garbage collector deletes it with the node.
//! Everything is in `status` (the agent writes it through the status
//! subresource); `spec` only names the node.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The node a status object describes.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "nftpol.io",
    version = "v1alpha1",
    kind = "NodeNetworkPolicyStatus",
    plural = "nodenetworkpolicystatuses",
    shortname = "nnps",
    status = "NodeEnforcement",
    derive = "PartialEq",
    doc = "NodeNetworkPolicyStatus is what nftpol enforces on one node, written by that node's agent.",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Degraded","type":"string","jsonPath":".status.conditions[?(@.type==\"Degraded\")].status"}"#,
    printcolumn = r#"{"name":"Generation","type":"integer","jsonPath":".status.rulesetGeneration"}"#,
    printcolumn = r#"{"name":"Policies","type":"integer","jsonPath":".status.counts.policies"}"#,
    printcolumn = r#"{"name":"Isolated","type":"integer","jsonPath":".status.counts.podsIsolated"}"#,
    printcolumn = r#"{"name":"Rules","type":"integer","jsonPath":".status.counts.rules"}"#,
    printcolumn = r#"{"name":"Invalid","type":"integer","jsonPath":".status.counts.invalidObjects"}"#,
    printcolumn = r#"{"name":"Applied","type":"date","jsonPath":".status.lastApplyTime"}"#,
    printcolumn = r#"{"name":"Hash","type":"string","priority":1,"jsonPath":".status.rulesetHash"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct NodeNetworkPolicyStatusSpec {
    /// The node this object describes (also its name).
    pub node_name: String,
}

/// The enforcement state of one node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeEnforcement {
    /// Rulesets this agent has committed to the kernel since it started
    /// (each apply that changed the table counts one).
    #[serde(default)]
    pub ruleset_generation: u64,
    /// FNV-1a 64 hash (hex) of the ruleset in the kernel, as `nftpol
    /// compile` prints its table: equal hashes, equal rulesets.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ruleset_hash: String,
    /// When the kernel last accepted a change to the ruleset (a policy
    /// change or a drift repair); a drift check that finds nothing to do
    /// leaves it, so a quiet node does not rewrite its status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_apply_time: Option<Time>,
    /// Sizes of the enforced ruleset.
    #[serde(default)]
    pub counts: EnforcementCounts,
    /// The policies with rules on this node, sorted by kind and name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<EnforcedPolicy>,
    /// Policy directions that counted no packet since `since` (clean-up
    /// candidates).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub idle_policies: Vec<IdlePolicy>,
    /// Objects skipped as invalid (they count as absent), with the error.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub invalid_objects: Vec<InvalidObject>,
    /// `Ready`: the kernel enforces the latest ruleset. `Degraded`: the
    /// last attempt to program the kernel failed, or a relisting of a
    /// kind has not completed for over a minute (either way the previous
    /// ruleset stays enforced and newer changes wait).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// Sizes of the enforced ruleset.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnforcementCounts {
    /// Policies with rules on this node.
    pub policies: u64,
    /// Local pods with a chain in either direction.
    pub pods_isolated: u64,
    pub chains: u64,
    pub rules: u64,
    pub set_elements: u64,
    /// Objects skipped as invalid.
    pub invalid_objects: u64,
}

/// One policy with rules on this node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnforcedPolicy {
    /// `NetworkPolicy`, `ClusterNetworkPolicy`, `AdminNetworkPolicy` or
    /// `BaselineAdminNetworkPolicy`.
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    /// The resourceVersion the enforced rules were compiled from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    /// Packets counted on its behalf since the agent started: matched by
    /// its ingress rules, or dropped because it isolates a pod.
    pub ingress_packets: u64,
    /// The same for egress.
    pub egress_packets: u64,
    /// When its count last grew.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_hit_time: Option<Time>,
}

/// A policy direction with no packet counted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IdlePolicy {
    /// `namespace/name` of a NetworkPolicy, `Kind/name` of an admin policy.
    pub policy: String,
    /// `ingress` or `egress`.
    pub direction: String,
    /// Since when it has been watched without a hit (agent start, or when
    /// its rules appeared on this node).
    pub since: Time,
}

/// An object skipped as invalid.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InvalidObject {
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    /// The field and what is wrong with it.
    pub error: String,
}

//! `AdminNetworkPolicy` and `BaselineAdminNetworkPolicy`
//! (policy.networking.k8s.io/v1alpha1): the first generation of admin
//! network policies, actions Allow/Deny/Pass (Allow/Deny in the baseline).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// AdminNetworkPolicy is a cluster level resource that is part of the
/// AdminNetworkPolicy API.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "policy.networking.k8s.io",
    version = "v1alpha1",
    kind = "AdminNetworkPolicy",
    plural = "adminnetworkpolicies",
    shortname = "anp",
    status = "AdminNetworkPolicyStatus",
    derive = "PartialEq",
    doc = "AdminNetworkPolicy is a cluster level resource that is part of the AdminNetworkPolicy API.",
    printcolumn = r#"{"name":"Priority","type":"string","jsonPath":".spec.priority"}"#,
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct AdminNetworkPolicySpec {
    /// Priority from 0 to 1000; lower values are checked first. Every
    /// AdminNetworkPolicy rule precedes NetworkPolicy and baseline rules.
    #[schemars(range(min = 0, max = 1000))]
    pub priority: i32,
    /// Subject defines the pods to which this AdminNetworkPolicy applies.
    pub subject: AdminNetworkPolicySubject,
    /// Ingress rules, in precedence order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub ingress: Vec<AdminNetworkPolicyIngressRule>,
    /// Egress rules, in precedence order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub egress: Vec<AdminNetworkPolicyEgressRule>,
}

/// AdminNetworkPolicyStatus defines the observed state of
/// AdminNetworkPolicy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AdminNetworkPolicyStatus {
    pub conditions: Vec<Condition>,
}

/// An action on traffic destined for the subject's pods.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AdminNetworkPolicyIngressRule {
    /// Name is an identifier for this rule.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 100))]
    pub name: String,
    /// Action: Allow, Deny or Pass.
    pub action: AdminNetworkPolicyRuleAction,
    /// From is the list of sources whose traffic this rule applies to.
    #[schemars(length(min = 1, max = 100))]
    pub from: Vec<AdminNetworkPolicyIngressPeer>,
    /// Destination ports (on the subject's pods); unset matches all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 100))]
    pub ports: Option<Vec<AdminNetworkPolicyPort>>,
}

/// An action on traffic originating from the subject's pods.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!(self.to.exists(peer, has(peer.networks) || has(peer.nodes) || has(peer.domainNames)) && has(self.ports) && self.ports.exists(port, has(port.namedPort)))",
    "message": "networks/nodes/domainNames peer cannot be set with namedPorts since there are no namedPorts for networks/nodes/domainNames"
}]))]
pub struct AdminNetworkPolicyEgressRule {
    /// Name is an identifier for this rule.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 100))]
    pub name: String,
    /// Action: Allow, Deny or Pass.
    pub action: AdminNetworkPolicyRuleAction,
    /// To is the list of destinations whose traffic this rule applies to.
    #[schemars(length(min = 1, max = 100))]
    pub to: Vec<AdminNetworkPolicyEgressPeer>,
    /// Destination ports; unset matches all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 100))]
    pub ports: Option<Vec<AdminNetworkPolicyPort>>,
}

/// Allow, Deny or Pass (skip the remaining AdminNetworkPolicy rules).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum AdminNetworkPolicyRuleAction {
    #[default]
    Allow,
    Deny,
    Pass,
}

/// A destination peer; exactly one field must be set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("minProperties" = 1, "maxProperties" = 1))]
pub struct AdminNetworkPolicyEgressPeer {
    /// All pods within a set of namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,
    /// A set of pods in a set of namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPod>,
    /// Nodes by label; their addresses come from `status.addresses`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<LabelSelector>,
    /// CIDR blocks (cluster-internal traffic is matched too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 25))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub networks: Option<Vec<Cidr>>,
    /// Domain names (Allow rules only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 25))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub domain_names: Option<Vec<DomainName>>,
}

/// A domain name, optionally with a `*.` prefix.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct DomainName(
    #[schemars(regex(
        pattern = r"^(\*\.)?([a-zA-z0-9]([-a-zA-Z0-9_]*[a-zA-Z0-9])?\.)+[a-zA-z0-9]([-a-zA-Z0-9_]*[a-zA-Z0-9])?\.?$"
    ))]
    pub String,
);

/// BaselineAdminNetworkPolicy is a cluster level resource that is part of
/// the AdminNetworkPolicy API; the only one allowed is named `default`.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "policy.networking.k8s.io",
    version = "v1alpha1",
    kind = "BaselineAdminNetworkPolicy",
    plural = "baselineadminnetworkpolicies",
    shortname = "banp",
    status = "BaselineAdminNetworkPolicyStatus",
    derive = "PartialEq",
    doc = "BaselineAdminNetworkPolicy is a cluster level resource that is part of the AdminNetworkPolicy API.",
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
pub struct BaselineAdminNetworkPolicySpec {
    /// Subject defines the pods to which this BaselineAdminNetworkPolicy
    /// applies.
    pub subject: AdminNetworkPolicySubject,
    /// Ingress rules, in precedence order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub ingress: Vec<BaselineAdminNetworkPolicyIngressRule>,
    /// Egress rules, in precedence order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub egress: Vec<BaselineAdminNetworkPolicyEgressRule>,
}

/// BaselineAdminNetworkPolicyStatus defines the observed state of
/// BaselineAdminNetworkPolicy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BaselineAdminNetworkPolicyStatus {
    pub conditions: Vec<Condition>,
}

/// An action on traffic destined for the subject's pods.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BaselineAdminNetworkPolicyIngressRule {
    /// Name is an identifier for this rule.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 100))]
    pub name: String,
    /// Action: Allow or Deny.
    pub action: BaselineAdminNetworkPolicyRuleAction,
    /// From is the list of sources whose traffic this rule applies to.
    #[schemars(length(min = 1, max = 100))]
    pub from: Vec<AdminNetworkPolicyIngressPeer>,
    /// Destination ports (on the subject's pods); unset matches all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 100))]
    pub ports: Option<Vec<AdminNetworkPolicyPort>>,
}

/// An action on traffic originating from the subject's pods.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!(self.to.exists(peer, has(peer.networks) || has(peer.nodes)) && has(self.ports) && self.ports.exists(port, has(port.namedPort)))",
    "message": "networks/nodes peer cannot be set with namedPorts since there are no namedPorts for networks/nodes"
}]))]
pub struct BaselineAdminNetworkPolicyEgressRule {
    /// Name is an identifier for this rule.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 100))]
    pub name: String,
    /// Action: Allow or Deny.
    pub action: BaselineAdminNetworkPolicyRuleAction,
    /// To is the list of destinations whose traffic this rule applies to.
    #[schemars(length(min = 1, max = 100))]
    pub to: Vec<BaselineAdminNetworkPolicyEgressPeer>,
    /// Destination ports; unset matches all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 100))]
    pub ports: Option<Vec<AdminNetworkPolicyPort>>,
}

/// Allow or Deny.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum BaselineAdminNetworkPolicyRuleAction {
    #[default]
    Allow,
    Deny,
}

/// A destination peer; exactly one field must be set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(extend("minProperties" = 1, "maxProperties" = 1))]
pub struct BaselineAdminNetworkPolicyEgressPeer {
    /// All pods within a set of namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,
    /// A set of pods in a set of namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPod>,
    /// Nodes by label; their addresses come from `status.addresses`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<LabelSelector>,
    /// CIDR blocks (cluster-internal traffic is matched too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 25))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub networks: Option<Vec<Cidr>>,
}

/// What resources the policy applies to; exactly one field must be set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(extend("minProperties" = 1, "maxProperties" = 1))]
pub struct AdminNetworkPolicySubject {
    /// Namespaces is used to select pods via namespace selectors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,
    /// Pods is used to select pods via namespace AND pod selectors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPod>,
}

/// Pods selected by namespace AND pod selectors.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NamespacedPod {
    /// Empty selects all namespaces.
    pub namespace_selector: LabelSelector,
    /// Empty selects all pods.
    pub pod_selector: LabelSelector,
}

/// A port by number, by name, or a range; exactly one must be set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("minProperties" = 1, "maxProperties" = 1))]
pub struct AdminNetworkPolicyPort {
    /// A port on the pod(s) by number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_number: Option<Port>,
    /// A container port by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub named_port: Option<String>,
    /// A port range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_range: Option<PortRange>,
}

/// A protocol and port number.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Port {
    /// TCP, UDP or SCTP; defaults to TCP.
    #[serde(default = "tcp")]
    #[schemars(default = "tcp")]
    pub protocol: String,
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

/// An inclusive range of ports of one protocol.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PortRange {
    /// TCP, UDP or SCTP; defaults to TCP.
    #[serde(default = "tcp", skip_serializing_if = "String::is_empty")]
    #[schemars(default = "tcp")]
    pub protocol: String,
    #[schemars(range(min = 1, max = 65535))]
    pub start: i32,
    #[schemars(range(min = 1, max = 65535))]
    pub end: i32,
}

fn tcp() -> String {
    "TCP".to_string()
}

/// A source peer; exactly one field must be set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(extend("minProperties" = 1, "maxProperties" = 1))]
pub struct AdminNetworkPolicyIngressPeer {
    /// All pods within a set of namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,
    /// A set of pods in a set of namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPod>,
}

/// An IP address range in CIDR notation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "isCIDR(self)",
    "message": "Invalid CIDR format provided"
}]))]
pub struct Cidr(#[schemars(length(max = 43))] pub String);

impl AsRef<str> for Cidr {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

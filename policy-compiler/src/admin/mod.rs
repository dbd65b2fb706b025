//! Admin network policies in the model: ClusterNetworkPolicy (v1alpha2)
//! and AdminNetworkPolicy / BaselineAdminNetworkPolicy (v1alpha1) reduced
//! to one validated shape, plus the Node objects that node peers name.
//!
//! Both API generations mean the same thing, so both become an
//! `AdminPolicy` in a `Tier` with ordered rules whose `Action` is Accept
//! (v1alpha1 `Allow`), Deny or Pass. Within a tier, policies are checked
//! in `order_key` order: priority (lower first), then the kind, then the
//! name. Upstream leaves equal priorities to the implementation; nftpol
//! makes them deterministic this way. The BaselineAdminNetworkPolicy has no
//! priority and comes after every baseline ClusterNetworkPolicy.

pub mod compile;
pub mod convert;
#[cfg(test)]
mod convert_tests;
pub(crate) mod select;

use crate::model::{Direction, Protocol};
use crate::selector::Selector;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// The API kind an admin policy came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AdminKind {
    ClusterNetworkPolicy,
    AdminNetworkPolicy,
    BaselineAdminNetworkPolicy,
}

impl AdminKind {
    pub fn api(self) -> &'static str {
        match self {
            AdminKind::ClusterNetworkPolicy => "ClusterNetworkPolicy",
            AdminKind::AdminNetworkPolicy => "AdminNetworkPolicy",
            AdminKind::BaselineAdminNetworkPolicy => "BaselineAdminNetworkPolicy",
        }
    }
    /// The short name (`kubectl get cnp`), used in generated set names.
    pub fn short(self) -> &'static str {
        match self {
            AdminKind::ClusterNetworkPolicy => "cnp",
            AdminKind::AdminNetworkPolicy => "anp",
            AdminKind::BaselineAdminNetworkPolicy => "banp",
        }
    }
    pub fn from_api(s: &str) -> Option<AdminKind> {
        [
            AdminKind::ClusterNetworkPolicy,
            AdminKind::AdminNetworkPolicy,
            AdminKind::BaselineAdminNetworkPolicy,
        ]
        .into_iter()
        .find(|k| k.api() == s)
    }
}

/// Admin: before NetworkPolicy. Baseline: after it, for pods no
/// NetworkPolicy isolates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Admin,
    Baseline,
}

impl Tier {
    pub fn word(self) -> &'static str {
        match self {
            Tier::Admin => "admin",
            Tier::Baseline => "baseline",
        }
    }
}

/// What a matching rule does. v1alpha1 `Allow` is `Accept`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Action {
    Accept,
    Deny,
    /// Skip the rest of the tier: the next tier decides.
    Pass,
}

impl Action {
    /// The action as the policy's own API spells it.
    pub fn api(self, kind: AdminKind) -> &'static str {
        match (self, kind) {
            (Action::Accept, AdminKind::ClusterNetworkPolicy) => "Accept",
            (Action::Accept, _) => "Allow",
            (Action::Deny, _) => "Deny",
            (Action::Pass, _) => "Pass",
        }
    }
}

/// One admin or baseline policy, validated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminPolicy {
    pub kind: AdminKind,
    pub name: String,
    pub tier: Tier,
    /// 0..=1000; `None` for the BaselineAdminNetworkPolicy.
    pub priority: Option<u16>,
    pub subject: Subject,
    pub ingress: Vec<AdminRule>,
    pub egress: Vec<AdminRule>,
}

impl AdminPolicy {
    /// `Kind/name`, as comments and explanations name it.
    pub fn id(&self) -> String {
        format!("{}/{}", self.kind.api(), self.name)
    }
    pub fn rules(&self, direction: Direction) -> &[AdminRule] {
        match direction {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
    /// The order policies of one tier are checked in.
    pub fn order_key(&self) -> (u16, AdminKind, &str) {
        (self.priority.unwrap_or(u16::MAX), self.kind, &self.name)
    }
}

/// The pods a policy applies to (never hostNetwork pods).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Subject {
    /// Every pod of the selected namespaces.
    Namespaces(Selector),
    /// The selected pods of the selected namespaces.
    Pods {
        namespaces: Selector,
        pods: Selector,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminRule {
    /// The rule's `name` (may be empty).
    pub name: String,
    pub action: Action,
    /// Any of these matches the peer.
    pub peers: Vec<AdminPeer>,
    /// `None`: every port and protocol.
    pub ports: Option<Vec<AdminPort>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminPeer {
    /// Every pod of the selected namespaces.
    Namespaces(Selector),
    /// The selected pods of the selected namespaces.
    Pods {
        namespaces: Selector,
        pods: Selector,
    },
    /// The addresses of the selected Node objects (egress only).
    Nodes(Selector),
    /// CIDRs, matched against any address, pods' included (egress only).
    Networks(Vec<IpNet>),
    /// Every address: what a peer with no known field means in a Deny or
    /// Pass rule (upstream's "fail closed").
    All,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminPort {
    /// `lo..=hi` of one protocol (a single port has lo == hi).
    Range {
        protocol: Protocol,
        lo: u16,
        hi: u16,
    },
    /// A container port name on the destination pod, of whatever protocol
    /// the container declares.
    Named(String),
}

/// What node peers need of a Node: its labels and addresses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    pub labels: crate::model::Labels,
    /// Every address of `status.addresses` that is an IP, sorted, deduplicated.
    pub ips: Vec<IpAddr>,
}

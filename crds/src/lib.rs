//! The admin network policy CRDs of `policy.networking.k8s.io`, as Rust
//! types (kube-derive): `ClusterNetworkPolicy` (v1alpha2) and its
//! predecessors `AdminNetworkPolicy` / `BaselineAdminNetworkPolicy`
//! (v1alpha1), field for field as SIG Network's network-policy-api defines
//! them. Beside them, nftpol's own `NodeNetworkPolicyStatus`
//! (nftpol.io/v1alpha1), which each agent writes. The CRD manifests checked
//! in beside this crate are generated from these types (`yaml()`), and a
//! test keeps the two equal.

pub mod status;
pub mod v1alpha1;
pub mod v1alpha2;

use kube::CustomResourceExt;

/// The API group of the admin network policy kinds.
pub const GROUP: &str = "policy.networking.k8s.io";
/// The API group of nftpol's own kinds.
pub const NFTPOL_GROUP: &str = "nftpol.io";

/// Every CRD, as (file name under `crds/`, manifest YAML).
pub fn yaml() -> Vec<(&'static str, String)> {
    vec![
        (
            "policy.networking.k8s.io_adminnetworkpolicies.yaml",
            render(v1alpha1::AdminNetworkPolicy::crd()),
        ),
        (
            "policy.networking.k8s.io_baselineadminnetworkpolicies.yaml",
            render(banp_crd()),
        ),
        (
            "policy.networking.k8s.io_clusternetworkpolicies.yaml",
            render(v1alpha2::ClusterNetworkPolicy::crd()),
        ),
        (
            "nftpol.io_nodenetworkpolicystatuses.yaml",
            render(status::NodeNetworkPolicyStatus::crd()),
        ),
    ]
}

/// All CRDs as one multi-document YAML stream (what `nftpol crds` prints
/// and `kubectl apply -f -` takes).
pub fn all_yaml() -> String {
    yaml()
        .into_iter()
        .map(|(_, y)| y)
        .collect::<Vec<_>>()
        .join("---\n")
}

/// The BaselineAdminNetworkPolicy CRD with upstream's root-level rule that
/// the only such object is named `default` (a rule on `metadata`, which
/// the derived schema of the spec cannot carry).
fn banp_crd(
) -> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::ValidationRule;
    let mut crd = v1alpha1::BaselineAdminNetworkPolicy::crd();
    for v in &mut crd.spec.versions {
        if let Some(schema) = v
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            schema.x_kubernetes_validations = Some(vec![ValidationRule {
                rule: "self.metadata.name == 'default'".into(),
                message: Some(
                    "Only one baseline admin network policy with metadata.name=\"default\" can be created in the cluster".into(),
                ),
                ..Default::default()
            }]);
        }
    }
    crd
}

fn render(
    crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> String {
    // Serialising a typed value into YAML cannot fail.
    serde_yaml::to_string(&crd).unwrap_or_default()
}

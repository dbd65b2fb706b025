//! Static checks of the deployment manifests (no root needed): every YAML
//! document in deploy/ and tests/e2e/kind/ parses, the typed ones
//! deserialize into their k8s-openapi types, and the RBAC stays read-only
//! (get/list/watch on what the agent reads, plus creating Events).

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde::Deserialize;
use std::path::{Path, PathBuf};

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(yaml_files(&p));
        } else if matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Every document of every YAML file, with its file for error messages.
fn documents() -> Vec<(PathBuf, serde_yaml::Value)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut docs = Vec::new();
    for dir in ["deploy", "tests/e2e/kind"] {
        for f in yaml_files(&root.join(dir)) {
            let text = std::fs::read_to_string(&f).expect("read YAML file");
            for d in serde_yaml::Deserializer::from_str(&text) {
                let v = serde_yaml::Value::deserialize(d)
                    .unwrap_or_else(|e| panic!("{}: invalid YAML: {e}", f.display()));
                if !v.is_null() {
                    docs.push((f.clone(), v));
                }
            }
        }
    }
    docs
}

fn typed<T: serde::de::DeserializeOwned>(f: &Path, v: &serde_yaml::Value) -> T {
    serde_yaml::from_value(v.clone()).unwrap_or_else(|e| {
        panic!(
            "{}: not a valid {}: {e}",
            f.display(),
            std::any::type_name::<T>()
        )
    })
}

#[test]
fn deploy_manifests_parse() {
    let docs = documents();
    assert!(!docs.is_empty(), "no YAML found under deploy/");
    let mut kinds = Vec::new();
    let mut sa_name = None;
    let mut ds_sa = None;
    for (f, v) in &docs {
        let kind = v["kind"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: document without kind", f.display()));
        assert!(
            v["apiVersion"].as_str().is_some(),
            "{}: {kind} without apiVersion",
            f.display()
        );
        kinds.push(kind.to_string());
        match kind {
            "ServiceAccount" => {
                let sa: ServiceAccount = typed(f, v);
                sa_name = sa.metadata.name;
            }
            "ClusterRole" => {
                let role: ClusterRole = typed(f, v);
                for rule in role.rules.unwrap_or_default() {
                    let resources = rule.resources.clone().unwrap_or_default();
                    for verb in &rule.verbs {
                        let read = matches!(verb.as_str(), "get" | "list" | "watch");
                        let event_create =
                            verb == "create" && resources.iter().all(|r| r == "events");
                        assert!(
                            read || event_create,
                            "{}: ClusterRole grants {verb:?} on {resources:?}; the agent only reads",
                            f.display()
                        );
                    }
                    for r in &resources {
                        assert!(
                            matches!(
                                r.as_str(),
                                "namespaces" | "pods" | "networkpolicies" | "events"
                            ),
                            "{}: ClusterRole names unexpected resource {r:?}",
                            f.display()
                        );
                    }
                }
            }
            "ClusterRoleBinding" => {
                let _: ClusterRoleBinding = typed(f, v);
            }
            "DaemonSet" => {
                let ds: DaemonSet = typed(f, v);
                let pod = ds
                    .spec
                    .and_then(|s| s.template.spec)
                    .expect("DaemonSet has a pod template spec");
                assert_eq!(
                    pod.host_network,
                    Some(true),
                    "the agent must run in the host netns"
                );
                ds_sa = pod.service_account_name;
            }
            _ => {}
        }
    }
    for want in [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "DaemonSet",
    ] {
        assert!(kinds.iter().any(|k| k == want), "deploy/ has no {want}");
    }
    assert_eq!(
        sa_name, ds_sa,
        "the DaemonSet must run as the ServiceAccount in deploy/"
    );
}

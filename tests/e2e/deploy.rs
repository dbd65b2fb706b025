//! Static checks of what a cluster receives from deploy/ (no root needed,
//! except the listen test): every YAML document parses into its
//! k8s-openapi type, the ClusterRole grants exactly what the agent's code
//! calls, the DaemonSet's security-relevant fields hold, and the build
//! context and versions stay consistent. The schema validation against the
//! Kubernetes OpenAPI of the targeted version is `.ci/check-scripts.sh`.

use crate::netns::{unique_tag, PREFIX};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Container, PodSpec, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use nftpol_test_support::Netns;
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn files(dir: &Path, exts: &[&str]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p, exts));
        } else if p
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| exts.contains(&e))
        {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Every document of every YAML file, with its file for error messages.
fn documents() -> Vec<(PathBuf, serde_json::Value)> {
    let mut docs = Vec::new();
    for dir in ["deploy", "tests/e2e/kind"] {
        for f in files(&root().join(dir), &["yaml", "yml"]) {
            let text = std::fs::read_to_string(&f).expect("read YAML file");
            let parsed = policy_compiler::manifest::documents(&text)
                .unwrap_or_else(|e| panic!("{}: invalid YAML: {e}", f.display()));
            for v in parsed {
                if !v.is_null() {
                    docs.push((f.clone(), v));
                }
            }
        }
    }
    docs
}

fn typed<T: serde::de::DeserializeOwned>(f: &Path, v: &serde_json::Value) -> T {
    serde_json::from_value(v.clone()).unwrap_or_else(|e| {
        panic!(
            "{}: not a valid {}: {e}",
            f.display(),
            std::any::type_name::<T>()
        )
    })
}

/// The one document of `kind` under deploy/.
fn only<T: serde::de::DeserializeOwned>(kind: &str) -> (PathBuf, T) {
    let mut found: Vec<(PathBuf, T)> = documents()
        .into_iter()
        .filter(|(f, v)| f.starts_with(root().join("deploy")) && v["kind"] == kind)
        .map(|(f, v)| {
            let t = typed(&f, &v);
            (f, t)
        })
        .collect();
    assert_eq!(found.len(), 1, "deploy/ must hold exactly one {kind}");
    found.remove(0)
}

#[test]
fn deploy_manifests_parse() {
    let docs = documents();
    assert!(!docs.is_empty(), "no YAML found under deploy/");
    for (f, v) in &docs {
        let kind = v["kind"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: document without kind", f.display()));
        assert!(
            v["apiVersion"].as_str().is_some(),
            "{}: {kind} without apiVersion",
            f.display()
        );
        match kind {
            "ServiceAccount" => drop(typed::<ServiceAccount>(f, v)),
            "ClusterRole" => drop(typed::<ClusterRole>(f, v)),
            "ClusterRoleBinding" => drop(typed::<ClusterRoleBinding>(f, v)),
            "DaemonSet" => drop(typed::<DaemonSet>(f, v)),
            "CustomResourceDefinition" => drop(typed::<CustomResourceDefinition>(f, v)),
            _ => {}
        }
    }
    let (_, sa) = only::<ServiceAccount>("ServiceAccount");
    let (_, binding) = only::<ClusterRoleBinding>("ClusterRoleBinding");
    let (_, role) = only::<ClusterRole>("ClusterRole");
    let pod = pod_spec();
    assert_eq!(
        pod.service_account_name, sa.metadata.name,
        "the DaemonSet must run as the ServiceAccount in deploy/"
    );
    assert_eq!(
        binding.role_ref.name,
        role.metadata.name.unwrap_or_default()
    );
    let subjects = binding.subjects.unwrap_or_default();
    assert!(
        subjects.iter().any(|s| s.kind == "ServiceAccount"
            && Some(&s.name) == sa.metadata.name.as_ref()
            && s.namespace == sa.metadata.namespace),
        "the ClusterRoleBinding must bind the agent's ServiceAccount: {subjects:?}"
    );
}

/// The API group of the admin network policy kinds (deploy/crds.yaml).
const ADMIN: &str = "policy.networking.k8s.io";

/// (API group, resource, verb) triples.
type Grants = BTreeSet<(String, String, String)>;

/// What the agent's code calls, read from its source: every `Api<T>` it
/// builds (and every kind its generic watch is given), with the verbs that use implies (watchers list and watch; Events
/// are created). Test-only files are left out. An unknown `T` fails the
/// test so that whoever adds a watch adds its RBAC here and in
/// deploy/clusterrole.yaml together.
fn grants_the_code_needs() -> Grants {
    let mut needed = Grants::new();
    let mut add = |group: &str, resource: &str, verbs: &[&str]| {
        for v in verbs {
            needed.insert((group.into(), resource.into(), (*v).into()));
        }
    };
    for f in files(&root().join("src"), &["rs"]) {
        let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if matches!(name, "tests.rs" | "fakeapi.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&f).expect("read source");
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        if code.contains("Recorder::new") {
            // kube-runtime's Recorder creates events.k8s.io/v1 Events and
            // patches them when the same event repeats.
            add("events.k8s.io", "events", &["create", "patch"]);
        }
        // The generic watch builds `Api<K>` for every kind that
        // implements `Watched`: each such kind is listed and watched.
        for pat in ["Api::<", "Api<", "impl Watched for "] {
            for (i, _) in code.match_indices(pat) {
                let rest = &code[i + pat.len()..];
                // A guarded watch reads the same kind.
                let rest = rest.strip_prefix("Slim<").unwrap_or(rest);
                let ty: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                match ty.as_str() {
                    "Namespace" => add("", "namespaces", &["list", "watch"]),
                    "Pod" => add("", "pods", &["list", "watch"]),
                    "NetworkPolicy" => {
                        add("networking.k8s.io", "networkpolicies", &["list", "watch"])
                    }
                    "Node" => add("", "nodes", &["list", "watch"]),
                    "AdminNetworkPolicy" => add(ADMIN, "adminnetworkpolicies", &["list", "watch"]),
                    "BaselineAdminNetworkPolicy" => {
                        add(ADMIN, "baselineadminnetworkpolicies", &["list", "watch"])
                    }
                    "ClusterNetworkPolicy" => {
                        add(ADMIN, "clusternetworkpolicies", &["list", "watch"])
                    }
                    "CoreEvent" | "Event" => add("", "events", &["create"]),
                    // Server-side apply of the node's status object:
                    // authorized as patch, and as create when the object
                    // does not exist yet; then its status subresource.
                    "NodeNetworkPolicyStatus" => {
                        add(
                            "nftpol.io",
                            "nodenetworkpolicystatuses",
                            &["create", "patch"],
                        );
                        add("nftpol.io", "nodenetworkpolicystatuses/status", &["patch"]);
                    }
                    // A generic parameter (a helper over the kinds above).
                    t if t.len() == 1 => {}
                    other => panic!(
                        "{}: the agent builds Api<{other}>; add its RBAC to \
                         deploy/clusterrole.yaml and to this table",
                        f.display()
                    ),
                }
            }
        }
    }
    needed
}

#[test]
fn cluster_role_grants_exactly_what_the_agent_calls() {
    let (f, role) = only::<ClusterRole>("ClusterRole");
    let mut granted = Grants::new();
    for rule in role.rules.unwrap_or_default() {
        assert!(
            rule.resource_names.is_none() && rule.non_resource_urls.is_none(),
            "{}: unexpected resourceNames/nonResourceURLs",
            f.display()
        );
        for g in rule.api_groups.clone().unwrap_or_default() {
            for r in rule.resources.clone().unwrap_or_default() {
                for v in &rule.verbs {
                    assert!(
                        g != "*" && r != "*" && v != "*",
                        "{}: wildcard in {rule:?}",
                        f.display()
                    );
                    assert!(
                        granted.insert((g.clone(), r.clone(), v.clone())),
                        "{}: ({g:?}, {r}, {v}) granted twice",
                        f.display()
                    );
                }
            }
        }
    }
    let needed = grants_the_code_needs();
    let unused: Vec<_> = granted.difference(&needed).collect();
    let missing: Vec<_> = needed.difference(&granted).collect();
    assert!(
        unused.is_empty() && missing.is_empty(),
        "{}: ClusterRole differs from what src/ calls\n  granted but unused: {unused:?}\n  \
         needed but not granted: {missing:?}",
        f.display()
    );
    // The watches themselves must be present (a source scan that found
    // nothing would make the comparison above vacuous).
    for r in ["namespaces", "pods", "networkpolicies"] {
        assert!(
            needed.iter().any(|(_, res, v)| res == r && v == "watch"),
            "no watch of {r} found in src/"
        );
    }
}

fn pod_spec() -> PodSpec {
    let (_, ds) = only::<DaemonSet>("DaemonSet");
    ds.spec
        .and_then(|s| s.template.spec)
        .expect("DaemonSet has a pod template spec")
}

fn agent_container(pod: &PodSpec) -> &Container {
    assert_eq!(pod.containers.len(), 1, "one container: the agent");
    assert!(pod.init_containers.is_none(), "no init containers");
    &pod.containers[0]
}

/// The value of `--metrics-addr` in the DaemonSet's args.
fn daemonset_metrics_addr() -> SocketAddr {
    let pod = pod_spec();
    let args = agent_container(&pod).args.clone().unwrap_or_default();
    let value = args
        .iter()
        .find_map(|a| a.strip_prefix("--metrics-addr="))
        .expect("the DaemonSet passes --metrics-addr=ADDR");
    value
        .parse()
        .unwrap_or_else(|e| panic!("--metrics-addr={value}: {e}"))
}

#[test]
fn daemonset_security_fields() {
    let pod = pod_spec();
    assert_eq!(
        pod.host_network,
        Some(true),
        "the agent programs the host netns"
    );
    assert_ne!(pod.host_pid, Some(true), "no host PID namespace");
    assert_ne!(pod.host_ipc, Some(true), "no host IPC namespace");
    assert!(pod.volumes.is_none(), "no host paths or other volumes");
    assert_eq!(
        pod.dns_policy.as_deref(),
        Some("ClusterFirstWithHostNet"),
        "a hostNetwork pod needs ClusterFirstWithHostNet to resolve the apiserver Service"
    );
    // A node without its agent has no policies at all: never evicted
    // first, scheduled on every node whatever its taints.
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    let tolerations = pod.tolerations.clone().unwrap_or_default();
    assert!(
        tolerations
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists")
                && t.key.is_none()
                && t.effect.is_none()),
        "the agent must tolerate every taint: {tolerations:?}"
    );

    let c = agent_container(&pod);
    assert_eq!(
        c.image.as_deref(),
        Some("nftpol:dev"),
        "run-netpol-e2e.sh rewrites `image: nftpol:dev`"
    );
    let sc = c.security_context.clone().expect("securityContext");
    assert_eq!(sc.privileged, Some(false));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    let caps = sc.capabilities.expect("capabilities");
    assert_eq!(caps.drop, Some(vec!["ALL".to_string()]));
    assert_eq!(
        caps.add,
        Some(vec!["NET_ADMIN".to_string()]),
        "CAP_NET_ADMIN (nftables over netlink) and nothing else"
    );
    assert!(
        c.resources
            .as_ref()
            .and_then(|r| r.limits.as_ref())
            .is_some(),
        "memory limit"
    );

    // Probes reach the port the agent listens on, on both families.
    let addr = daemonset_metrics_addr();
    assert!(
        addr.ip().is_unspecified() && addr.is_ipv6(),
        "--metrics-addr={addr}: the kubelet probes the node's primary IP, which is IPv6 on \
         IPv6-only and IPv6-primary clusters, so the agent must listen on [::]"
    );
    let port = c
        .ports
        .clone()
        .unwrap_or_default()
        .into_iter()
        .find(|p| p.name.as_deref() == Some("metrics"))
        .expect("a port named metrics");
    assert_eq!(port.container_port, i32::from(addr.port()));
    for (probe, path) in [
        (c.liveness_probe.clone(), "/healthz"),
        (c.readiness_probe.clone(), "/readyz"),
    ] {
        let get = probe
            .and_then(|p| p.http_get)
            .unwrap_or_else(|| panic!("an httpGet probe of {path}"));
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(
            get.port,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("metrics".into())
        );
        assert!(
            get.host.is_none(),
            "probe host unset: the kubelet probes the pod IP, whose family the listen address covers"
        );
    }
}

#[test]
fn build_context_and_versions_stay_consistent() {
    // Both builders read the root .dockerignore; BuildKit would prefer a
    // Dockerfile-specific one and the two could drift apart.
    assert!(
        !root().join("deploy/Dockerfile.dockerignore").exists(),
        "deploy/Dockerfile.dockerignore is read by BuildKit only; keep the filter in .dockerignore"
    );
    let ignore = std::fs::read_to_string(root().join(".dockerignore")).expect(".dockerignore");
    for entry in ["target", "_artifacts", ".git"] {
        assert!(
            ignore.lines().any(|l| l.trim() == entry),
            ".dockerignore must exclude {entry} from the build context"
        );
    }
    let gitignore = std::fs::read_to_string(root().join(".gitignore")).expect(".gitignore");
    assert!(
        gitignore.lines().any(|l| l.trim() == "/_artifacts/"),
        ".gitignore must ignore /_artifacts/ (admin kubeconfigs, test binaries)"
    );

    // The cluster version the kind e2e targets is the API the agent is
    // compiled against.
    let versions =
        std::fs::read_to_string(root().join("tests/e2e/kind/versions.env")).expect("versions.env");
    let k8s = versions
        .lines()
        .find_map(|l| l.strip_prefix("K8S_VERSION="))
        .expect("K8S_VERSION in versions.env");
    let minor = k8s
        .strip_prefix("v1.")
        .and_then(|r| r.split('.').next())
        .expect("K8S_VERSION=v1.MINOR.PATCH");
    let cargo = std::fs::read_to_string(root().join("Cargo.toml")).expect("Cargo.toml");
    assert!(
        cargo.contains(&format!("\"v1_{minor}\"")),
        "versions.env targets Kubernetes {k8s} but k8s-openapi is built for another version"
    );
    let node = versions
        .lines()
        .find_map(|l| l.strip_prefix("NODE_IMAGE="))
        .expect("NODE_IMAGE in versions.env");
    assert!(
        node.starts_with(&format!("kindest/node:{k8s}@sha256:")),
        "NODE_IMAGE must be the digest-pinned kind image of {k8s}, not {node}"
    );
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The agent's process; killed on drop.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `GET path` to `addr` from inside `ns`: the status line, or None
/// when nothing answers.
fn http_get(ns: &Netns, addr: SocketAddr, path: &str) -> Option<String> {
    let path = path.to_string();
    ns.run(move || {
        let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
        conn.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        write!(conn, "GET {path} HTTP/1.0\r\n\r\n").ok()?;
        let mut reply = String::new();
        conn.read_to_string(&mut reply).ok()?;
        reply.lines().next().map(str::to_string)
    })
}

/// The DaemonSet's listen address answers the kubelet's probes on IPv4
/// and on IPv6: the agent runs in a namespace of its own with exactly the
/// DaemonSet's `--metrics-addr`, and /healthz and /readyz must answer 200
/// on 127.0.0.1 and on ::1.
#[test]
fn daemonset_listen_address_answers_probes_on_both_families() {
    require_root!();
    let addr = daemonset_metrics_addr();
    let ns = Netns::create("listen");
    let dir = std::env::temp_dir().join(format!("{PREFIX}{}", unique_tag()));
    std::fs::create_dir_all(&dir).expect("manifest dir");
    let _cleanup = TempDir(dir.clone());
    let child = ns
        .cmd(crate::cluster::nftpol_bin())
        .args(["agent", "--node-name", "node-1", "--dry-run", "--manifests"])
        .arg(&dir)
        .arg(format!("--metrics-addr={addr}"))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn nftpol agent");
    let _agent = Child(child);
    // Generous: a debug-built agent starting on a loaded CI machine can
    // take seconds to listen; the loop ends at the first 200.
    let deadline = Instant::now() + Duration::from_secs(60);
    for ip in [
        IpAddr::from(Ipv4Addr::LOCALHOST),
        IpAddr::from(Ipv6Addr::LOCALHOST),
    ] {
        let target = SocketAddr::new(ip, addr.port());
        for path in ["/healthz", "/readyz"] {
            loop {
                let status = http_get(&ns, target, path);
                if status.as_deref().is_some_and(|s| s.contains(" 200")) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "GET http://{target}{path} with --metrics-addr={addr}: {status:?}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

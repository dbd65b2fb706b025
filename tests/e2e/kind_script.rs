//! The kind e2e script, tests/e2e/kind/run-netpol-e2e.sh, run without a
//! container engine: stub `kind`, `kubectl`, `docker`, `ginkgo` and
//! `e2e.test` (tests/e2e/kind/stubs) record every call. Checked: the dry
//! run prints the whole sequence for ipv4, ipv6 and dual and runs nothing
//! but read-only queries; a stubbed run executes that sequence in order
//! (kindnet's NetworkPolicy controller replaced before nftpol is deployed,
//! ServiceAccount and RBAC before the DaemonSet) with a private kubeconfig;
//! a cluster that existed beforehand is never deleted; test binaries of
//! another Kubernetes version are never used; IPVS is refused. No root.

use crate::deploy::TempDir;
use crate::netns::{unique_tag, PREFIX};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn kind_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/kind")
}

/// A value pinned in versions.env.
fn pinned(key: &str) -> String {
    let text = std::fs::read_to_string(kind_dir().join("versions.env")).expect("versions.env");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("versions.env has no {key}"))
        .to_string()
}

const ALL_TOOLS: &[&str] = &["kind", "kubectl", "docker", "ginkgo", "e2e.test"];
const ENGINE_TOOLS: &[&str] = &["kind", "kubectl", "docker"];

struct Outcome {
    ok: bool,
    stdout: String,
    stderr: String,
    /// Calls the stubs received, "<tool> <args...>".
    calls: Vec<String>,
    work: PathBuf,
    home: PathBuf,
    _dir: TempDir,
}

impl Outcome {
    /// The commands the script printed ("+ cmd args"), first word reduced
    /// to its file name so printed and executed sequences compare alike.
    fn printed(&self) -> Vec<String> {
        self.stdout
            .lines()
            .filter_map(|l| l.strip_prefix("+ "))
            .map(normalize)
            .collect()
    }

    fn dump(&self) -> String {
        format!(
            "stdout:\n{}\nstderr:\n{}\ncalls:\n{}",
            self.stdout,
            self.stderr,
            self.calls.join("\n")
        )
    }
}

fn normalize(cmd: &str) -> String {
    let (first, rest) = cmd.split_once(' ').unwrap_or((cmd, ""));
    let base = Path::new(first)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(first);
    format!("{base} {rest}").trim_end().to_string()
}

/// Runs the script with a clean environment: PATH holds `tools` (links to
/// the stub) and the system directories, HOME is an empty directory of the
/// test, WORK_DIR another.
fn script(tools: &[&str], env: &[(&str, &str)]) -> Outcome {
    let dir = std::env::temp_dir().join(format!("{PREFIX}{}", unique_tag()));
    let bin = dir.join("bin");
    let home = dir.join("home");
    let work = dir.join("work");
    for d in [&bin, &home] {
        std::fs::create_dir_all(d).expect("test dir");
    }
    let stub = kind_dir().join("stubs/stub");
    for t in tools {
        std::os::unix::fs::symlink(&stub, bin.join(t)).expect("link stub");
    }
    let log = dir.join("calls");
    let out = Command::new("bash")
        .arg(kind_dir().join("run-netpol-e2e.sh"))
        .env_clear()
        .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
        .env("HOME", &home)
        .env("WORK_DIR", &work)
        .env("STUB_LOG", &log)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run run-netpol-e2e.sh");
    let calls = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect();
    Outcome {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        calls,
        work,
        home,
        _dir: TempDir(dir),
    }
}

/// Index of the first command at or after `from` that starts with
/// `prefix` and contains every one of `parts`.
fn find(cmds: &[String], from: usize, prefix: &str, parts: &[&str], o: &Outcome) -> usize {
    cmds.iter()
        .enumerate()
        .skip(from)
        .find(|(_, c)| c.starts_with(prefix) && parts.iter().all(|p| c.contains(p)))
        .map(|(i, _)| i)
        .unwrap_or_else(|| {
            panic!(
                "no `{prefix} .. {parts:?}` after step {from} in:\n{}\n\n{}",
                cmds.join("\n"),
                o.dump()
            )
        })
}

/// The kinds of the YAML documents in a file.
fn kinds(file: &str) -> Vec<String> {
    std::fs::read_to_string(file)
        .unwrap_or_else(|e| panic!("{file}: {e}"))
        .lines()
        .filter_map(|l| l.strip_prefix("kind: "))
        .map(|k| k.trim().to_string())
        .collect()
}

/// Checks one complete pass per entry of `passes`, in order, in `cmds`.
fn assert_full_sequence(cmds: &[String], passes: &[(&str, &str)], o: &Outcome) {
    let kindnetd = format!("kindnet-cni={}", pinned("KINDNETD_IMAGE"));
    let mut at = 0;
    for (pass, cluster) in passes {
        let dir = o.work.join(pass);
        let kubeconfig = format!("--kubeconfig {}", dir.join("kubeconfig").display());
        let config = format!("--config {}", dir.join("kind-config.yaml").display());
        let name = format!("--name {cluster}");
        let create = find(
            cmds,
            at,
            "kind create cluster",
            &[&name, &config, &kubeconfig],
            o,
        );
        // kindnet's embedded NetworkPolicy controller goes before nftpol
        // comes: its image is swapped, the rollout awaited, its table gone.
        let swap = find(
            cmds,
            create,
            "kubectl",
            &[&kubeconfig, "set image daemonset/kindnet", &kindnetd],
            o,
        );
        let rolled = find(
            cmds,
            swap,
            "kubectl",
            &[&kubeconfig, "rollout status daemonset/kindnet"],
            o,
        );
        let mut tables_gone = rolled;
        for node in ["control-plane", "worker", "worker2"] {
            let exec = format!(
                "docker exec {cluster}-{node} nft delete table inet kindnet-network-policies"
            );
            tables_gone = tables_gone.max(find(cmds, rolled, &exec, &[], o));
        }
        let load = find(
            cmds,
            tables_gone,
            "kind load docker-image nftpol:dev",
            &[&name],
            o,
        );
        // Manifests: every apply after the kindnet swap, ServiceAccount and
        // RBAC before the DaemonSet, and the DaemonSet last.
        let applies: Vec<(usize, String)> = cmds
            .iter()
            .enumerate()
            .skip(load)
            .take_while(|(_, c)| !c.starts_with("kind delete"))
            .filter(|(_, c)| c.starts_with("kubectl") && c.contains(" apply -f "))
            .map(|(i, c)| (i, c.rsplit(' ').next().unwrap_or_default().to_string()))
            .collect();
        let first = |kind: &str| {
            applies
                .iter()
                .find(|(_, f)| kinds(f).iter().any(|k| k == kind))
                .map(|(i, _)| *i)
                .unwrap_or_else(|| panic!("pass {pass}: no {kind} applied\n{}", o.dump()))
        };
        let ds = first("DaemonSet");
        // CRDs go first and must be established before anything uses them.
        for (i, f) in applies
            .iter()
            .filter(|(_, f)| kinds(f).iter().any(|k| k == "CustomResourceDefinition"))
        {
            let established = find(
                cmds,
                *i,
                "kubectl",
                &["wait --for=condition=established", f],
                o,
            );
            assert!(
                established < ds,
                "pass {pass}: CRDs of {f} not established before the DaemonSet"
            );
        }
        for before in ["ServiceAccount", "ClusterRole", "ClusterRoleBinding"] {
            assert!(
                first(before) < ds,
                "pass {pass}: {before} applied after the DaemonSet"
            );
        }
        assert!(
            swap < ds,
            "pass {pass}: nftpol deployed before kindnet's policy controller was replaced"
        );
        assert_eq!(
            applies.last().map(|(i, _)| *i),
            Some(ds),
            "pass {pass}: the DaemonSet is not the last manifest applied"
        );
        let ready = find(
            cmds,
            ds,
            "kubectl",
            &[&kubeconfig, "rollout status daemonset/nftpol"],
            o,
        );
        let e2e_kubeconfig = format!("--kubeconfig={}", dir.join("kubeconfig").display());
        let e2e = find(
            cmds,
            ready,
            "ginkgo",
            &["--focus=Netpol", "e2e.test", &e2e_kubeconfig],
            o,
        );
        assert!(
            !cmds[e2e].contains("--skip"),
            "pass {pass}: tests skipped by default (SCTP must run): {}",
            cmds[e2e]
        );
        at = find(cmds, e2e, "kind delete cluster", &[&name, &kubeconfig], o);
    }
    let builds: Vec<usize> = (0..cmds.len())
        .filter(|&i| cmds[i].starts_with("docker build"))
        .collect();
    assert_eq!(
        builds.len(),
        1,
        "the image is built once:\n{}",
        cmds.join("\n")
    );
    let first_load = find(cmds, 0, "kind load docker-image", &[], o);
    assert!(builds[0] < first_load, "image loaded before it was built");
    // Never any other cluster than the passes' own.
    for c in cmds.iter().filter(|c| c.starts_with("kind delete")) {
        assert!(
            passes
                .iter()
                .any(|(_, name)| c.contains(&format!("--name {name} "))),
            "deletes a cluster that is not the run's own: {c}"
        );
    }
}

fn passes(family: &str) -> Vec<(&'static str, &'static str)> {
    match family {
        "ipv4" => vec![("ipv4", "nftpol-e2e")],
        "ipv6" => vec![("ipv6", "nftpol-e2e")],
        _ => vec![
            ("dual-ipv4", "nftpol-e2e-dual-ipv4"),
            ("dual-ipv6", "nftpol-e2e-dual-ipv6"),
        ],
    }
}

/// Only these calls may run in a dry run: they change nothing.
fn is_query(call: &str) -> bool {
    [
        "kind version",
        "kind get clusters",
        "kubectl version --client",
        "e2e.test --version",
    ]
    .iter()
    .any(|q| call.starts_with(q))
}

#[test]
fn dry_run_shows_the_full_sequence_for_every_family() {
    for family in ["ipv4", "ipv6", "dual"] {
        for mode in ["iptables", "nftables"] {
            let o = script(
                ALL_TOOLS,
                &[
                    ("DRY_RUN", "1"),
                    ("IP_FAMILY", family),
                    ("KUBEPROXY_MODE", mode),
                ],
            );
            assert!(o.ok, "{family}/{mode}: dry run failed\n{}", o.dump());
            let header = o.stdout.lines().next().unwrap_or_default();
            for v in [
                pinned("KIND_VERSION"),
                pinned("K8S_VERSION"),
                pinned("NODE_IMAGE"),
            ] {
                assert!(
                    header.contains(&v),
                    "resolved versions not printed: {header}"
                );
            }
            let ps = passes(family);
            assert_full_sequence(&o.printed(), &ps, &o);
            for c in &o.calls {
                assert!(is_query(c), "{family}: the dry run ran `{c}`");
            }
            // The kind configs the clusters would be created from.
            for (pass, _) in &ps {
                let config = std::fs::read_to_string(o.work.join(pass).join("kind-config.yaml"))
                    .expect("rendered kind config");
                let want_family = pass.split('-').next().unwrap_or_default();
                assert!(
                    config.contains(&format!("\n  ipFamily: {want_family}\n")),
                    "{config}"
                );
                assert!(
                    config.contains(&format!("\n  kubeProxyMode: {mode}\n")),
                    "{config}"
                );
                if *pass == "dual-ipv6" {
                    assert!(
                        config.contains("serviceSubnet: \"fd00:"),
                        "IPv6 primary: {config}"
                    );
                }
            }
        }
    }
}

#[test]
fn stubbed_run_executes_the_sequence_with_a_private_kubeconfig() {
    for family in ["ipv4", "dual"] {
        let o = script(
            ALL_TOOLS,
            &[
                ("IP_FAMILY", family),
                ("KUBECONFIG", "/nonexistent/user-config"),
            ],
        );
        assert!(o.ok, "{family}: stubbed run failed\n{}", o.dump());
        assert_full_sequence(&o.calls, &passes(family), &o);
        let private = o.work.display().to_string();
        for c in &o.calls {
            let talks_to_cluster = (c.starts_with("kubectl") && !c.starts_with("kubectl version"))
                || c.starts_with("kind create")
                || c.starts_with("kind delete");
            if talks_to_cluster {
                assert!(
                    c.contains(&format!("--kubeconfig {private}/")),
                    "{family}: `{c}` does not use the run's own kubeconfig"
                );
            }
        }
        assert!(
            !o.home.join(".kube").exists(),
            "the user's ~/.kube was touched"
        );
    }
}

#[test]
fn a_cluster_that_existed_before_is_never_deleted() {
    let o = script(ALL_TOOLS, &[("STUB_KIND_CLUSTERS", "other nftpol-e2e")]);
    assert!(!o.ok, "ran on despite an existing cluster\n{}", o.dump());
    assert!(o.stderr.contains("already exists"), "{}", o.dump());
    for c in &o.calls {
        assert!(
            !c.starts_with("kind create") && !c.starts_with("kind delete"),
            "{}",
            o.dump()
        );
    }
    // dual: the first pass runs and removes its own cluster; the second
    // finds its name taken and stops without touching it.
    let o = script(
        ALL_TOOLS,
        &[
            ("IP_FAMILY", "dual"),
            ("STUB_KIND_CLUSTERS", "nftpol-e2e-dual-ipv6"),
        ],
    );
    assert!(!o.ok, "{}", o.dump());
    assert!(o
        .calls
        .iter()
        .any(|c| c.starts_with("kind delete cluster --name nftpol-e2e-dual-ipv4 ")));
    assert!(
        !o.calls
            .iter()
            .any(|c| c.contains("--name nftpol-e2e-dual-ipv6")),
        "touched the existing cluster\n{}",
        o.dump()
    );
}

#[test]
fn a_failed_create_deletes_nothing() {
    let o = script(ALL_TOOLS, &[("STUB_FAIL", "kind create")]);
    assert!(!o.ok, "{}", o.dump());
    assert!(
        !o.calls
            .iter()
            .any(|c| c.starts_with("kind delete") || c.starts_with("kind export")),
        "cleaned up a cluster it may not have created\n{}",
        o.dump()
    );
}

#[test]
fn a_failure_after_create_exports_logs_and_removes_only_its_cluster() {
    let o = script(ALL_TOOLS, &[("STUB_FAIL", "ginkgo")]);
    assert!(!o.ok, "{}", o.dump());
    let export = find(&o.calls, 0, "kind export logs --name nftpol-e2e", &[], &o);
    find(
        &o.calls,
        export,
        "kind delete cluster --name nftpol-e2e",
        &["--kubeconfig"],
        &o,
    );

    let o = script(ALL_TOOLS, &[("STUB_FAIL", "ginkgo"), ("KEEP_CLUSTER", "1")]);
    assert!(!o.ok, "{}", o.dump());
    assert!(
        !o.calls.iter().any(|c| c.starts_with("kind delete")),
        "{}",
        o.dump()
    );
}

#[test]
fn ipvs_and_unknown_settings_are_refused_before_anything_runs() {
    let o = script(ALL_TOOLS, &[("KUBEPROXY_MODE", "ipvs")]);
    assert!(!o.ok && o.stderr.contains("IPVS"), "{}", o.dump());
    assert!(o.calls.is_empty(), "{}", o.dump());
    for (k, v) in [
        ("IP_FAMILY", "ipv5"),
        ("KIND_EXPERIMENTAL_PROVIDER", "podman"),
        ("CLUSTER_NAME", "Bad_Name"),
    ] {
        let o = script(ALL_TOOLS, &[(k, v)]);
        assert!(
            !o.ok && o.calls.is_empty(),
            "{k}={v} accepted\n{}",
            o.dump()
        );
    }
    let o = script(ALL_TOOLS, &[("STUB_KIND_VERSION", "v0.23.0")]);
    assert!(
        !o.ok && o.stderr.contains(&pinned("KIND_VERSION")),
        "{}",
        o.dump()
    );
}

#[test]
fn test_binaries_of_another_version_are_never_used() {
    let k8s = pinned("K8S_VERSION");
    let cache = |o: &Outcome| o.work.join("k8s-test").join(&k8s);
    // On PATH but built for another release: ignored, downloaded afresh.
    let o = script(
        ALL_TOOLS,
        &[("DRY_RUN", "1"), ("STUB_E2E_VERSION", "v1.30.0")],
    );
    assert!(o.ok, "{}", o.dump());
    let cmds = o.printed();
    let url = format!("https://dl.k8s.io/{k8s}/kubernetes-test-linux-");
    let get = find(&cmds, 0, "curl", &[&url], &o);
    let e2e = format!("{}/e2e.test", cache(&o).display());
    find(&cmds, get, "ginkgo", &[&e2e], &o);
    // Without downloads the run stops instead.
    let o = script(
        ALL_TOOLS,
        &[("STUB_E2E_VERSION", "v1.30.0"), ("DOWNLOAD", "0")],
    );
    assert!(!o.ok && o.stderr.contains("DOWNLOAD=0"), "{}", o.dump());
    assert!(
        !o.calls.iter().any(|c| c.starts_with("kind create")),
        "{}",
        o.dump()
    );

    // In the per-version cache: used when it reports the right version,
    // downloaded again when it does not.
    for (reported, reused) in [(k8s.as_str(), true), ("v1.30.0", false)] {
        let dir = std::env::temp_dir().join(format!("{PREFIX}{}", unique_tag()));
        let _cleanup = TempDir(dir.clone());
        let bin = dir.join("k8s-test").join(&k8s);
        std::fs::create_dir_all(&bin).expect("cache dir");
        for t in ["e2e.test", "ginkgo"] {
            std::os::unix::fs::symlink(kind_dir().join("stubs/stub"), bin.join(t)).expect("link");
        }
        let work = dir.display().to_string();
        let o = script(
            ENGINE_TOOLS,
            &[
                ("DRY_RUN", "1"),
                ("WORK_DIR", &work),
                ("STUB_E2E_VERSION", reported),
            ],
        );
        assert!(o.ok, "{}", o.dump());
        let downloads = o.printed().iter().any(|c| c.starts_with("curl"));
        assert_eq!(
            downloads,
            !reused,
            "cache reporting {reported}\n{}",
            o.dump()
        );
    }
}

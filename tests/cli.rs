//! The offline CLI as users run it: exit statuses, error lines naming file,
//! object and field, JSON output, explain and matrix.

use std::path::Path;
use std::process::{Command, Output};

fn nftpol(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nftpol"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .output()
        .expect("run nftpol")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn invalid_object_is_skipped_with_exit_2_and_the_rest_compiles() {
    let out = nftpol(&["compile", "--manifests", "tests/data/bad-and-good.yaml"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains(r#"tests/data/bad-and-good.yaml: NetworkPolicy default/web: spec.ingress[0].from[1].ipBlock.cidr: invalid CIDR "10.0.0/33""#),
        "{err}"
    );
    let script = text(&out.stdout);
    assert!(
        script.contains("ingress isolated by default/deny"),
        "{script}"
    );
    assert!(!script.contains("default/web ingress"), "{script}");
}

#[test]
fn strict_fails_on_the_first_invalid_object() {
    let out = nftpol(&["compile", "--strict", "-m", "tests/data/bad-and-good.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("ipBlock.cidr"));
    assert!(out.stdout.is_empty());
}

#[test]
fn several_nodes_need_a_node_name() {
    let out = nftpol(&["compile", "-m", "examples/policies/01-web-allow.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("pass --node-name"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn json_format_is_the_ir_and_round_trips() {
    let out = nftpol(&[
        "compile",
        "-m",
        "examples/policies/09-dual-stack.yaml",
        "--node-name",
        "node-1",
        "--format",
        "json",
    ]);
    assert!(out.status.success());
    let rs: policy_compiler::Ruleset = serde_json::from_slice(&out.stdout).expect("IR JSON");
    assert!(rs.chains.contains_key("ing_ds_server"));
    let nft = nftpol(&[
        "compile",
        "-m",
        "examples/policies/09-dual-stack.yaml",
        "--node-name",
        "node-1",
    ]);
    assert_eq!(
        policy_compiler::render::render_script(&rs),
        text(&nft.stdout)
    );
}

#[test]
fn explain_names_the_deciding_rules() {
    let out = nftpol(&[
        "explain",
        "-m",
        "examples/policies/01-web-allow.yaml",
        "--from",
        "default/trusted-app-0",
        "--to",
        "default/my-app-7d9f8c6b5-x2k4p",
        "--port",
        "80/TCP",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let t = text(&out.stdout);
    assert!(t.starts_with("ALLOWED"), "{t}");
    assert!(t.contains("allowed by default/my-app ingress[0]"), "{t}");

    let out = nftpol(&[
        "explain",
        "-m",
        "examples/policies/06-ipblock-except.yaml",
        "--from",
        "192.168.1.7",
        "--to",
        "edge/gateway-0",
        "--port",
        "443",
    ]);
    let t = text(&out.stdout);
    assert!(t.starts_with("DENIED"), "{t}");
    assert!(t.contains("isolated by edge/gateway-cidrs"), "{t}");

    let out = nftpol(&[
        "explain",
        "-m",
        "examples/policies/06-ipblock-except.yaml",
        "--from",
        "192.168.2.0/24",
        "--to",
        "edge/gateway-0",
        "--port",
        "443",
        "--format",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["allowed"], true);
    assert_eq!(v["ingress"]["rules"][0]["policy"], "edge/gateway-cidrs");
}

#[test]
fn explain_rejects_bad_endpoints_and_ports() {
    let out = nftpol(&[
        "explain",
        "-m",
        "examples/policies/01-web-allow.yaml",
        "--from",
        "nope",
        "--to",
        "default/trusted-app-0",
        "--port",
        "80",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("neither NAMESPACE/POD"));
    let out = nftpol(&[
        "explain",
        "-m",
        "examples/policies/01-web-allow.yaml",
        "--from",
        "default/x",
        "--to",
        "default/trusted-app-0",
        "--port",
        "80/ICMP",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("TCP, UDP or SCTP"));
}

#[test]
fn matrix_prints_reachability() {
    let out = nftpol(&[
        "matrix",
        "-m",
        "examples/policies/02-default-deny-ingress.yaml",
        "--port",
        "80/TCP",
    ]);
    assert!(out.status.success());
    let t = text(&out.stdout);
    let row = t
        .lines()
        .find(|l| l.starts_with("dev/tool-0"))
        .expect("row for dev/tool-0");
    // Columns: dev/tool-0, prod/api-0, prod/db-0.
    let marks: Vec<&str> = row.split_whitespace().skip(1).collect();
    assert_eq!(marks, vec![".", "X", "X"], "{t}");
}

#[test]
fn directories_are_read_recursively() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/policies");
    let out = nftpol(&[
        "matrix",
        "-m",
        dir.to_str().expect("utf-8"),
        "--namespace",
        "prod",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("prod/api-0"));
}

//! Golden tests: every examples/policies/*.yaml compiles (for node-1) to
//! exactly the `*.nft` beside it, and as root every golden loads with
//! `nft -f` twice in a row inside a scratch network namespace.
//! `nftpol diff` between two manifest sets matches tests/data/diff/*.diff.
//! `NFTPOL_BLESS=1 cargo test --test golden` rewrites the goldens.

use std::path::{Path, PathBuf};
use std::process::Command;

const NODE: &str = "node-1";

fn examples() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/policies");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("examples/policies exists")
        .map(|e| e.expect("readable dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    v
}

/// Compiles one example; an `<example>.interfaces` file beside it is its
/// pod interface map (source validation).
fn compile(path: &Path) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nftpol"));
    cmd.args(["compile", "--strict", "--node-name", NODE, "--manifests"])
        .arg(path);
    let interfaces = path.with_extension("interfaces");
    if interfaces.exists() {
        cmd.arg("--pod-interfaces").arg(interfaces);
    }
    let out = cmd.output().expect("run nftpol compile");
    assert!(
        out.status.success(),
        "nftpol compile {} failed: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

#[test]
fn examples_match_their_goldens() {
    let bless = std::env::var_os("NFTPOL_BLESS").is_some();
    let examples = examples();
    assert!(examples.len() >= 12, "want at least 12 examples");
    let mut stale = Vec::new();
    for ex in &examples {
        let text = compile(ex);
        assert_eq!(
            text,
            compile(ex),
            "{}: output not deterministic",
            ex.display()
        );
        let golden = ex.with_extension("nft");
        if bless {
            std::fs::write(&golden, &text).expect("write golden");
            continue;
        }
        match std::fs::read_to_string(&golden) {
            Ok(g) if g == text => {}
            _ => stale.push(golden.display().to_string()),
        }
    }
    assert!(
        stale.is_empty(),
        "goldens differ from the compiler output (rerun with NFTPOL_BLESS=1 and review the diff): {stale:?}"
    );
}

#[test]
fn goldens_load_with_nft_twice() {
    nftpol_test_support::require_root!();
    let ns = nftpol_test_support::Netns::create("golden");
    for ex in examples() {
        let golden = ex.with_extension("nft");
        let g = golden.to_str().expect("utf-8 path");
        for round in 1..=2 {
            let out = ns.nft(&["-f", g]);
            assert!(
                out.status.success(),
                "nft -f {g} (round {round}) failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let listed = ns.nft(&["list", "table", "inet", "nftpol"]);
        assert!(listed.status.success());
        let text = String::from_utf8_lossy(&listed.stdout);
        assert!(
            text.contains("chain forward"),
            "{g}: table lacks forward chain"
        );
    }
}

/// `nftpol diff` between two manifest sets (offline change review): each
/// case's output must equal tests/data/diff/<case>.diff.
#[test]
fn offline_diffs_match_their_goldens() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cases: [(&str, &[&str]); 2] = [
        (
            "web-port-8080",
            &[
                "-m",
                "tests/data/diff/web-port-8080.yaml",
                "--against-manifests",
                "examples/policies/01-web-allow.yaml",
                "--node-name",
                NODE,
                "--port",
                "80/TCP",
                "--port",
                "8080/TCP",
            ],
        ),
        (
            "allow-api-from-dev",
            &[
                "-m",
                "examples/policies/02-default-deny-ingress.yaml",
                "tests/data/diff/allow-api-from-dev.yaml",
                "--against-manifests",
                "examples/policies/02-default-deny-ingress.yaml",
            ],
        ),
    ];
    let bless = std::env::var_os("NFTPOL_BLESS").is_some();
    let mut stale = Vec::new();
    for (name, args) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_nftpol"))
            .current_dir(root)
            .arg("diff")
            .args(args)
            .output()
            .expect("run nftpol diff");
        assert!(
            out.status.success(),
            "nftpol diff ({name}) failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).expect("utf-8 output");
        let golden = root.join(format!("tests/data/diff/{name}.diff"));
        if bless {
            std::fs::write(&golden, &text).expect("write golden");
        } else if std::fs::read_to_string(&golden).ok().as_deref() != Some(text.as_str()) {
            stale.push(format!("{}:\n{text}", golden.display()));
        }
    }
    assert!(
        stale.is_empty(),
        "diff goldens differ (rerun with NFTPOL_BLESS=1 and review): {stale:#?}"
    );
}

/// A manifest set against itself changes nothing.
#[test]
fn offline_diff_of_a_set_against_itself_is_empty() {
    let out = Command::new(env!("CARGO_BIN_EXE_nftpol"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "diff",
            "-m",
            "examples/policies/01-web-allow.yaml",
            "--against-manifests",
            "examples/policies/01-web-allow.yaml",
            "--node-name",
            NODE,
        ])
        .output()
        .expect("run nftpol diff");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("no changes to table inet nftpol"), "{text}");
    assert!(
        text.contains("flows changing verdict") && text.contains("  none"),
        "{text}"
    );
}

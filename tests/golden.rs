//! Golden tests: every examples/policies/*.yaml compiles (for node-1) to
//! exactly the `*.nft` beside it, and as root every golden loads with
//! `nft -f` twice in a row inside a scratch network namespace.
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

fn compile(path: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_nftpol"))
        .args(["compile", "--strict", "--node-name", NODE, "--manifests"])
        .arg(path)
        .output()
        .expect("run nftpol compile");
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

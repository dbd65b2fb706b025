//! The shipped `nftpol` binary carries no test support: the fake API
//! server and the synthetic cluster generator live in the
//! `nftpol-test-support` crate, a dev-dependency only.
//!
//! Checked on the binary cargo builds for these tests (dev profile): which
//! crates and modules a binary links does not depend on the profile, and
//! dev-dependencies are never linked into it, so this holds for the
//! release build too without paying for one. Any linked function leaves
//! its mangled path in the symbol table or the debug info (both profiles
//! keep debug info), so the module names are enough to look for.

use std::process::Command;

/// How often each pattern occurs in the binary: one `grep -o` pass.
fn occurrences(binary: &str, patterns: &[&str]) -> Vec<usize> {
    let mut cmd = Command::new("grep");
    cmd.args(["-a", "-o", "-F"]);
    for p in patterns {
        cmd.args(["-e", p]);
    }
    let out = cmd.arg(binary).output().expect("run grep");
    let found = String::from_utf8_lossy(&out.stdout);
    patterns
        .iter()
        .map(|p| found.lines().filter(|l| l == p).count())
        .collect()
}

#[test]
fn the_binary_has_no_fake_api_server_or_synthetic_clusters() {
    let binary = env!("CARGO_BIN_EXE_nftpol");
    // "Reconciler" shows the search works: the agent's loop is in there.
    let patterns = [
        "Reconciler",
        "nftpol_test_support",
        "fakeapi",
        "FakeApi",
        "5synth",
    ];
    let n = occurrences(binary, &patterns);
    assert!(n[0] > 0, "{binary}: no symbols found at all");
    for (pattern, count) in patterns.iter().zip(&n).skip(1) {
        assert_eq!(
            *count, 0,
            "{binary} contains {pattern:?}: test support is linked into the shipped binary"
        );
    }
}

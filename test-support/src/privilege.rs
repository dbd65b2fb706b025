//! Skipping tests that need privileges. A root-only test that cannot run
//! says so on the real stderr (libtest hides the output of passing tests,
//! and a silent skip reads as a pass); under CI (`CI` set to anything but
//! empty, `0` or `false`) the skip is a failure instead, so no test passes
//! in CI for want of privileges.

use std::process::{Command, Stdio};

/// Whether the tests run in CI, where skipping a privileged test fails.
pub fn in_ci() -> bool {
    means_ci(std::env::var("CI").ok().as_deref())
}

fn means_ci(value: Option<&str>) -> bool {
    value.is_some_and(|v| !matches!(v, "" | "0" | "false"))
}

/// Why root tests cannot run here (not root, or `ip`/`nft` missing).
pub fn missing_privilege() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root (CAP_NET_ADMIN, network namespaces)".into());
    }
    for tool in ["ip", "nft"] {
        let found = Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Some(format!("needs `{tool}` on PATH"));
        }
    }
    None
}

/// Reports that `test` cannot run because of `why`; panics under CI.
pub fn skip(test: &str, why: &str) {
    skip_in(in_ci(), test, why);
}

fn skip_in(ci: bool, test: &str, why: &str) {
    if ci {
        panic!("{test}: {why}; CI=true, so a skipped privileged test is a failure");
    }
    use std::io::Write as _;
    // Straight to the process's stderr, past libtest's capture.
    let _ = writeln!(std::io::stderr(), "SKIP {test}: {why}");
}

/// Whether `test` may run as root with `ip` and `nft`; reports the skip
/// (or fails under CI) when not.
pub fn require_root(test: &str) -> bool {
    match missing_privilege() {
        None => true,
        Some(why) => {
            skip(test, &why);
            false
        }
    }
}

/// Returns from the calling test unless it can run as root (see
/// [`require_root`]); the skip line names the test's module.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::require_root(module_path!()) {
            return;
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ci_values() {
        for (value, want) in [
            (Some("true"), true),
            (Some("1"), true),
            (Some("false"), false),
            (Some("0"), false),
            (Some(""), false),
            (None, false),
        ] {
            assert_eq!(means_ci(value), want, "CI={value:?}");
        }
    }

    #[test]
    fn a_skip_fails_only_in_ci() {
        skip_in(false, "t", "why");
        let panicked = std::panic::catch_unwind(|| skip_in(true, "t", "why")).is_err();
        assert!(panicked, "a skip under CI must fail");
    }
}

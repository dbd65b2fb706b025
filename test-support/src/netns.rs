//! Scratch network namespaces for kernel tests and benches. Each is named
//! `nftpol-t-<pid>-<n>-<tag>` (the e2e suite's sweeper removes such names
//! left behind by a killed run), starts with `lo` up, and is deleted on
//! drop, also when the test panics. Nothing here touches the host's
//! namespace: commands run through `ip netns exec`, and code runs on a
//! thread that has entered the namespace.

use nix::sched::{setns, CloneFlags};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The prefix of every namespace nftpol's tests create.
pub const PREFIX: &str = "nftpol-t-";

/// A named network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `nftpol-t-<pid>-<n>-<tag>`; panics when `ip netns add`
    /// fails (callers check privileges first, see `require_root`).
    pub fn create(tag: &str) -> Netns {
        match Netns::try_create(tag) {
            Ok(ns) => ns,
            Err(e) => panic!("{e}"),
        }
    }

    /// Like [`Netns::create`], but reports failure instead of panicking
    /// (for benches that fall back to running without a kernel).
    pub fn try_create(tag: &str) -> Result<Netns, String> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "{PREFIX}{}-{}-{tag}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        // The counter makes the name unique in this process, so one that
        // exists already was left by a killed earlier process that had
        // the same pid (pids are reused, often within 32768): stale.
        if std::path::Path::new("/run/netns").join(&name).exists() {
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
        let added = Command::new("ip").args(["netns", "add", &name]).status();
        if !added.as_ref().is_ok_and(|s| s.success()) {
            return Err(format!("ip netns add {name} failed: {added:?}"));
        }
        let ns = Netns { name };
        let lo = Command::new("ip")
            .args(["-n", &ns.name, "link", "set", "lo", "up"])
            .status();
        if !lo.as_ref().is_ok_and(|s| s.success()) {
            return Err(format!("ip -n {} link set lo up failed: {lo:?}", ns.name));
        }
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `prog` to be run inside the namespace (`ip netns exec`).
    pub fn cmd(&self, prog: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, prog]);
        c
    }

    /// Runs `nft args…` inside the namespace and returns its output.
    pub fn nft(&self, args: &[&str]) -> Output {
        self.cmd("nft").args(args).output().expect("run nft")
    }

    /// Moves the calling thread (and the threads and processes it creates
    /// from now on) into the namespace. It stays there: call this only on
    /// a thread that exists for the test, or in a bench's `main`.
    pub fn enter(&self) -> Result<(), String> {
        let path = format!("/run/netns/{}", self.name);
        let file = std::fs::File::open(&path).map_err(|e| format!("open {path}: {e}"))?;
        setns(file, CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns into {path}: {e}"))
    }

    /// Runs `f` on a thread inside the namespace and returns its result
    /// (a panic in `f` is re-raised here, after the thread is gone).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                if let Err(e) = self.enter() {
                    panic!("{e}");
                }
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(name: &str) -> bool {
        let out = Command::new("ip")
            .args(["netns", "list"])
            .output()
            .expect("ip netns list");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.split_whitespace().next() == Some(name))
    }

    #[test]
    fn scratch_namespace_is_private_and_removed_on_drop() {
        crate::require_root!();
        let ns = Netns::create("selftest");
        let name = ns.name().to_string();
        assert!(name.starts_with(PREFIX), "{name}");
        assert!(listed(&name));
        let own = || std::fs::read_link("/proc/thread-self/ns/net").expect("netns link");
        assert_ne!(ns.run(own), own(), "run() stayed in the caller's namespace");
        // Inside, only the namespace's own loopback exists, and it is up.
        let out = ns
            .cmd("ip")
            .args(["-o", "link", "show"])
            .output()
            .expect("ip link");
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains("lo:") && text.contains("UP"), "{text}");
        drop(ns);
        assert!(!listed(&name), "{name} outlived its guard");
    }
}

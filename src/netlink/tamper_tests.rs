//! Kernel tests of tamper repair by `apply`: one test per way someone
//! else can change the `inet nftpol` table (flags, base chains, rules,
//! elements, chains, the table itself, foreign objects) or the `netdev
//! nftpol` guard beside it. Each loads a
//! ruleset with every feature, tampers with `nft` inside a scratch
//! namespace, checks the read-back shows it (or refuses to decode it),
//! and checks one `apply` makes the table exactly the desired one again.
//! Also: the notification watcher reports those changes and not our own
//! batches. Root only, like kernel_tests.

use super::kernel_tests::{every_feature, nft, session};
use super::notify::{Seen, Watcher};
use super::NetlinkError;
use nftpol_test_support::{require_root, Netns};
use std::time::Duration;

/// Applies the reference ruleset, runs `script` with `nft -f`, and checks
/// that `apply` repairs it.
fn repaired_by_apply(script: &str) {
    if !require_root("tamper") {
        return;
    }
    let ns = Netns::create("tamper");
    ns.run(|| {
        let want = every_feature(&[1]);
        let mut s = session();
        s.apply(&want).expect("apply");
        nft(&["-f", "-"], Some(&format!("{script}\n")));
        match s.read_table() {
            Ok(have) => assert_ne!(
                have.as_ref(),
                Some(&want),
                "tampering not visible: {script}"
            ),
            Err(NetlinkError::Decode { .. }) => {}
            Err(e) => panic!("read-back after {script:?}: {e}"),
        }
        let r = s.apply(&want).expect("repair");
        assert!(r.batch_sent, "{script}: apply sent nothing ({})", r.summary);
        assert_eq!(
            s.read_table().expect("read").as_ref(),
            Some(&want),
            "{script}"
        );
        let listing = nft(&["list", "table", "inet", "nftpol"], None);
        for word in ["dormant", "evil", "flowtable", "counter"] {
            assert!(!listing.contains(word), "{script}: {word} left:\n{listing}");
        }
        let listing = nft(&["list", "table", "netdev", "nftpol"], None);
        for word in ["dormant", "evil", "vpx", "accept\n"] {
            assert!(!listing.contains(word), "{script}: {word} left:\n{listing}");
        }
        let again = s.apply(&want).expect("second apply");
        assert_eq!(again.summary, "no changes", "{script}");
    });
}

#[test]
fn dormant_flag_is_cleared() {
    repaired_by_apply("add table inet nftpol { flags dormant; }");
}

#[test]
fn base_chain_policy_is_restored() {
    repaired_by_apply("add chain inet nftpol forward { policy drop; }");
}

#[test]
fn base_chain_priority_is_restored() {
    repaired_by_apply(
        "delete chain inet nftpol input\n\
         add chain inet nftpol input { type filter hook input priority 10; policy accept; }",
    );
}

#[test]
fn base_chain_hook_is_restored() {
    repaired_by_apply(
        "delete chain inet nftpol input\n\
         add chain inet nftpol input { type filter hook output priority 0; policy accept; }",
    );
}

#[test]
fn base_chain_type_is_restored() {
    repaired_by_apply(
        "delete chain inet nftpol input\n\
         add chain inet nftpol input { type route hook output priority 0; policy accept; }",
    );
}

#[test]
fn inserted_accept_rule_is_removed() {
    repaired_by_apply("insert rule inet nftpol forward accept");
}

#[test]
fn inserted_foreign_rule_is_removed() {
    repaired_by_apply("insert rule inet nftpol forward ip saddr 10.0.0.0/8 counter accept");
}

#[test]
fn deleted_rules_are_restored() {
    repaired_by_apply("flush chain inet nftpol ing_default_a");
}

#[test]
fn added_element_is_removed() {
    repaired_by_apply("add element inet nftpol pod4_a { 10.66.6.6 }");
}

#[test]
fn removed_element_is_restored() {
    repaired_by_apply("delete element inet nftpol pod4_a { 10.1.0.5 }");
}

#[test]
fn map_element_with_another_verdict_is_restored() {
    repaired_by_apply(
        "delete element inet nftpol ingress_v4 { 10.1.0.7 }\n\
         add element inet nftpol ingress_v4 { 10.1.0.7 : accept }",
    );
}

#[test]
fn deleted_chain_is_restored() {
    repaired_by_apply(
        "delete element inet nftpol egress_v4 { 10.1.0.7 }\n\
         delete chain inet nftpol egr_default_a",
    );
}

#[test]
fn deleted_base_chain_is_restored() {
    repaired_by_apply("delete chain inet nftpol forward");
}

#[test]
fn deleted_table_is_restored() {
    repaired_by_apply("delete table inet nftpol");
}

#[test]
fn foreign_chain_and_set_are_removed() {
    repaired_by_apply(
        "add chain inet nftpol evil\nadd set inet nftpol evil_set { type ipv4_addr; }",
    );
}

#[test]
fn foreign_stateful_object_is_removed() {
    repaired_by_apply("add counter inet nftpol evil");
}

#[test]
fn deleted_guard_table_is_restored() {
    repaired_by_apply("delete table netdev nftpol");
}

#[test]
fn flushed_guard_table_is_restored() {
    repaired_by_apply("flush table netdev nftpol");
}

#[test]
fn dormant_guard_table_is_woken() {
    repaired_by_apply("add table netdev nftpol { flags dormant; }");
}

#[test]
fn deleted_guard_chain_is_restored() {
    repaired_by_apply("delete chain netdev nftpol l2_default_p0");
}

#[test]
fn guard_chain_priority_and_device_are_restored() {
    repaired_by_apply(
        "delete chain netdev nftpol l2_default_p1\n\
         add chain netdev nftpol l2_default_p1 \
         { type filter hook ingress device \"vpx\" priority 10; policy accept; }",
    );
}

#[test]
fn inserted_guard_accept_rule_is_removed() {
    repaired_by_apply("insert rule netdev nftpol l2_default_p0 accept");
}

#[test]
fn deleted_guard_rules_are_restored() {
    repaired_by_apply("flush chain netdev nftpol l2_default_p0");
}

#[test]
fn foreign_objects_in_the_guard_table_are_removed() {
    repaired_by_apply(
        "add chain netdev nftpol evil\nadd set netdev nftpol evil_set { type ipv4_addr; }",
    );
}

/// Every foreign change queued on the watcher (the kernel queues a
/// batch's notifications before the sender's `send` returns, so a short
/// tick with nothing more means all have been read).
fn drain(w: &mut Watcher) -> Vec<Seen> {
    let mut out = Vec::new();
    for _ in 0..10_000 {
        match w.wait().expect("watch") {
            Some(seen) => out.push(seen),
            None => return out,
        }
    }
    out
}

#[test]
fn watcher_reports_foreign_changes_and_skips_our_batches() {
    if !require_root("watcher_reports_foreign_changes_and_skips_our_batches") {
        return;
    }
    let ns = Netns::create("watch");
    ns.run(|| {
        // A short tick: `wait` returns None as soon as the queue is empty.
        let mut w = Watcher::open(Duration::from_millis(20)).expect("subscribe");
        let mut s = session();
        s.apply(&every_feature(&[1])).expect("apply");
        s.apply(&every_feature(&[1, 2])).expect("apply");
        assert_eq!(drain(&mut w), vec![], "our own batches are not foreign");
        // Other tables are not ours.
        nft(&["add", "table", "inet", "other"], None);
        assert_eq!(drain(&mut w), vec![]);
        nft(&["add", "table", "inet", "nftpol", "{ flags dormant; }"], None);
        let seen = drain(&mut w);
        assert!(
            matches!(seen.first(), Some(Seen::Foreign { what, .. }) if what.starts_with("add table")),
            "{seen:?}"
        );
        nft(&["flush", "chain", "netdev", "nftpol", "l2_default_p0"], None);
        let seen = drain(&mut w);
        assert!(
            matches!(seen.first(), Some(Seen::Foreign { what, .. }) if what == "delete rule"),
            "the guard table is watched too: {seen:?}"
        );
        nft(&["delete", "element", "inet", "nftpol", "pod4_a", "{ 10.1.0.5 }"], None);
        let seen = drain(&mut w);
        assert!(
            matches!(seen.first(), Some(Seen::Foreign { what, .. }) if what == "delete element"),
            "{seen:?}"
        );
        // The repair is ours again.
        s.apply(&every_feature(&[1, 2])).expect("repair");
        assert_eq!(drain(&mut w), vec![]);
    });
}

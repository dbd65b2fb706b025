//! Watching the kernel for changes to our table as they are committed.
//!
//! nftables announces every committed change on the netlink multicast
//! group NFNLGRP_NFTABLES: one message per object touched (table, chain,
//! rule, set, element, object, flowtable), each naming its table in its
//! first attribute and stamped with the port id of the socket whose batch
//! made it, then a NEWGEN closing the batch. A [`Watcher`] subscribes to
//! that group and reports a batch that touched `inet nftpol` from any
//! socket but this process's own, so the agent can read back and repair
//! within milliseconds instead of waiting for its next periodic check.
//! A receive-queue overflow (ENOBUFS) is reported too: whatever was
//! dropped may have been a change to our table.

use super::read::table_of;
use super::socket::{is_own_port, Msg, Socket};
use super::wire;
use super::NetlinkError;
use policy_compiler::ir::TABLE_NAME;
use std::time::Duration;

/// What a [`Watcher`] saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    /// Someone else changed our table: the first such message, e.g.
    /// `delete chain`, `add rule`, `add table` (flags), and the port id
    /// of the socket that did it.
    Foreign { what: String, port: u32 },
    /// Notifications were dropped for lack of buffer space; the table
    /// may have changed.
    Lost,
}

/// A socket subscribed to nftables notifications.
pub struct Watcher {
    sock: Socket,
}

impl Watcher {
    /// Subscribes; each [`Watcher::wait`] blocks at most `tick`.
    pub fn open(tick: Duration) -> Result<Watcher, NetlinkError> {
        let sock = Socket::open()?;
        sock.subscribe_nftables(tick)?;
        Ok(Watcher { sock })
    }

    /// Waits for a change to our table by someone else; `None` when a
    /// tick passes with nothing more queued. Notifications of our own
    /// batches are consumed and skipped.
    pub fn wait(&mut self) -> Result<Option<Seen>, NetlinkError> {
        loop {
            let msgs = match self.sock.recv(false) {
                Ok(Some(m)) => m,
                Ok(None) => return Ok(None),
                Err(NetlinkError::Receive(e)) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    return Ok(Some(Seen::Lost))
                }
                Err(e) => return Err(e),
            };
            if let Some(seen) = msgs.iter().find_map(foreign_change) {
                return Ok(Some(seen));
            }
        }
    }
}

/// The change `m` announces, when it concerns `inet nftpol` or the
/// `netdev nftpol` guard and did not come from this process.
pub fn foreign_change(m: &Msg) -> Option<Seen> {
    if m.ty >> 8 != wire::NFT_MSG_BASE >> 8
        || !matches!(
            m.family(),
            Some(wire::FAMILY_INET) | Some(wire::FAMILY_NETDEV)
        )
        || table_of(m) != Some(TABLE_NAME)
        || is_own_port(m.pid)
    {
        return None;
    }
    Some(Seen::Foreign {
        what: describe(i32::from(m.ty & 0xff)).to_string(),
        port: m.pid,
    })
}

fn describe(ty: i32) -> &'static str {
    match ty {
        libc::NFT_MSG_NEWTABLE => "add table (or change its flags)",
        libc::NFT_MSG_DELTABLE => "delete table",
        libc::NFT_MSG_NEWCHAIN => "add chain (or change it)",
        libc::NFT_MSG_DELCHAIN => "delete chain",
        libc::NFT_MSG_NEWRULE => "add rule",
        libc::NFT_MSG_DELRULE => "delete rule",
        libc::NFT_MSG_NEWSET => "add set",
        libc::NFT_MSG_DELSET => "delete set",
        libc::NFT_MSG_NEWSETELEM => "add element",
        libc::NFT_MSG_DELSETELEM => "delete element",
        libc::NFT_MSG_NEWOBJ => "add object",
        libc::NFT_MSG_DELOBJ => "delete object",
        wire::NFT_MSG_NEWFLOWTABLE => "add flowtable",
        wire::NFT_MSG_DELFLOWTABLE => "delete flowtable",
        _ => "change",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notification(ty: i32, family: u8, table: &str, port: u32) -> Msg {
        let mut attrs = Vec::new();
        wire::put_str(&mut attrs, wire::ATTR_TABLE, table);
        let mut b = wire::message(ty, 0, 0, &attrs);
        b[12..16].copy_from_slice(&port.to_ne_bytes());
        b[16] = family;
        Msg::from_bytes(&b).expect("whole message")
    }

    #[test]
    fn only_foreign_changes_to_our_table_count() {
        // Opening a netlink socket needs no privilege.
        let sock = Socket::open().expect("netfilter netlink socket");
        let own = sock.portid();
        let m = notification(libc::NFT_MSG_DELCHAIN, wire::FAMILY_INET, "nftpol", 4242);
        assert_eq!(
            foreign_change(&m),
            Some(Seen::Foreign {
                what: "delete chain".into(),
                port: 4242
            })
        );
        // Another table, another family, our own socket, a NEWGEN.
        for m in [
            notification(libc::NFT_MSG_NEWRULE, wire::FAMILY_INET, "filter", 4242),
            notification(
                libc::NFT_MSG_NEWRULE,
                libc::NFPROTO_IPV4 as u8,
                "nftpol",
                4242,
            ),
            notification(libc::NFT_MSG_NEWRULE, wire::FAMILY_INET, "nftpol", own),
            notification(libc::NFT_MSG_NEWGEN, 0, "", 4242),
        ] {
            assert_eq!(foreign_change(&m), None);
        }
    }
}

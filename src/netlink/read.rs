//! Read-back of the `inet nftpol` table into the IR: one dump each for
//! chains, rules and sets, then one element dump per set (the kernel
//! dumps elements per set only). The requests name our table, but the
//! kernel does not filter every dump by it (chain dumps list every inet
//! table), so each object's table is checked here too.
//! Anything nftpol would not have written is a `Decode` error naming the
//! object, never silently dropped.

use super::elem::{decode_elements, set_kind};
use super::raw::{self, DumpWhat};
use super::socket::{Msg, Socket};
use super::NetlinkError;
use policy_compiler::ir::{BaseChain, Chain, ChainPolicy, Hook, Ruleset, Set, TABLE_NAME};

const NFT_MSG_BASE: u16 = (libc::NFNL_SUBSYS_NFTABLES as u16) << 8;

fn dump(
    sock: &mut Socket,
    what: DumpWhat<'_>,
    label: &str,
    seq: u32,
) -> Result<Vec<Msg>, NetlinkError> {
    let req = raw::dump_request(&what, seq).map_err(|reason| NetlinkError::Encode {
        object: format!("dump request for {label}"),
        reason,
    })?;
    match sock.request(&req, seq)? {
        Ok(msgs) => Ok(msgs),
        Err((libc::EPERM, _)) => Err(NetlinkError::PermissionDenied {
            during: format!("reading back {label}"),
        }),
        Err((errno, _)) => Err(NetlinkError::Dump {
            what: label.to_string(),
            errno,
        }),
    }
}

/// Whether the `inet nftpol` table exists.
pub fn table_exists(sock: &mut Socket) -> Result<bool, NetlinkError> {
    match dump(sock, DumpWhat::Table, "table inet nftpol", 1) {
        Ok(_) => Ok(true),
        Err(NetlinkError::Dump { errno, .. }) if errno == libc::ENOENT => Ok(false),
        Err(e) => Err(e),
    }
}

fn of_type(msgs: Vec<Msg>, ty: i32) -> impl Iterator<Item = Msg> {
    msgs.into_iter()
        .filter(move |m| m.ty == NFT_MSG_BASE | ty as u16)
}

fn decode_hook(n: u32) -> Option<Hook> {
    Some(match n as i32 {
        libc::NF_INET_PRE_ROUTING => Hook::Prerouting,
        libc::NF_INET_LOCAL_IN => Hook::Input,
        libc::NF_INET_FORWARD => Hook::Forward,
        libc::NF_INET_LOCAL_OUT => Hook::Output,
        libc::NF_INET_POST_ROUTING => Hook::Postrouting,
        _ => return None,
    })
}

/// The table read back, or `None` when it does not exist.
pub fn read_table(sock: &mut Socket) -> Result<Option<Ruleset>, NetlinkError> {
    if !table_exists(sock)? {
        return Ok(None);
    }
    let mut rs = Ruleset::default();
    let dec = |object: String| move |reason: String| NetlinkError::Decode { object, reason };

    for m in of_type(
        dump(sock, DumpWhat::Chains, "chains", 2)?,
        libc::NFT_MSG_NEWCHAIN,
    ) {
        // SAFETY: m holds one complete message from the kernel.
        let info = unsafe { raw::parse_chain(m.header_ptr()) }.map_err(dec("a chain".into()))?;
        // The kernel dumps the chains of every inet table: keep ours only.
        if info.table != TABLE_NAME {
            continue;
        }
        let base = match info.base {
            None => None,
            Some((hooknum, priority, policy, ty)) => {
                let object = format!("chain {}", info.name);
                if ty != "filter" {
                    return Err(dec(object)(format!("chain type {ty:?}")));
                }
                let hook = decode_hook(hooknum)
                    .ok_or_else(|| dec(object.clone())(format!("hook {hooknum}")))?;
                let policy = match policy as i32 {
                    libc::NF_ACCEPT => ChainPolicy::Accept,
                    libc::NF_DROP => ChainPolicy::Drop,
                    p => return Err(dec(object)(format!("policy {p}"))),
                };
                Some(BaseChain {
                    hook,
                    priority,
                    policy,
                })
            }
        };
        rs.chains.insert(
            info.name,
            Chain {
                base,
                rules: Vec::new(),
            },
        );
    }

    // The kernel dumps each chain's rules in order.
    for m in of_type(
        dump(sock, DumpWhat::Rules, "rules", 3)?,
        libc::NFT_MSG_NEWRULE,
    ) {
        // SAFETY: as above.
        let info = unsafe { raw::parse_rule(m.header_ptr()) }.map_err(dec("a rule".into()))?;
        if info.table != TABLE_NAME {
            continue;
        }
        let object = format!("rule handle {} in chain {}", info.handle, info.chain);
        let rule = super::expr::raise_rule(&info.exprs, raw::parse_comment(&info.userdata))
            .map_err(dec(object.clone()))?;
        rs.chains
            .get_mut(&info.chain)
            .ok_or_else(|| dec(object)("its chain was not listed".into()))?
            .rules
            .push(rule);
    }

    let mut sets = Vec::new();
    for m in of_type(dump(sock, DumpWhat::Sets, "sets", 4)?, libc::NFT_MSG_NEWSET) {
        // SAFETY: as above.
        let (table, name, attrs) =
            unsafe { raw::parse_set(m.header_ptr()) }.map_err(dec("a set".into()))?;
        if table != TABLE_NAME {
            continue;
        }
        let kind = set_kind(attrs).map_err(dec(format!("set {name}")))?;
        sets.push((name, kind));
    }
    for (i, (name, kind)) in sets.into_iter().enumerate() {
        let label = format!("elements of set {name}");
        let seq = 5 + i as u32;
        let mut raw_elems = Vec::new();
        for m in of_type(
            dump(sock, DumpWhat::Elements(&name), &label, seq)?,
            libc::NFT_MSG_NEWSETELEM,
        ) {
            // SAFETY: as above.
            raw_elems
                .extend(unsafe { raw::parse_elems(m.header_ptr()) }.map_err(dec(label.clone()))?);
        }
        let elements = decode_elements(kind, &raw_elems).map_err(dec(label))?;
        rs.sets.insert(name, Set { kind, elements });
    }
    Ok(Some(rs))
}

//! Read-back of the `inet nftpol` table into the IR: one dump each for
//! chains, rules and sets, then one element dump per set (the kernel
//! dumps elements per set only). The requests name our table, but the
//! kernel does not filter every dump by it (chain dumps list every inet
//! table), so each object's table is checked here too.
//! Anything nftpol would not have written is a `Decode` error naming the
//! object, never silently dropped.

use super::elem::{decode_elements, set_kind};
use super::raw;
use super::socket::{Msg, Socket};
use super::wire::{self, Dump};
use super::NetlinkError;
use policy_compiler::ir::{BaseChain, Chain, ChainPolicy, Hook, Ruleset, Set, TABLE_NAME};

/// The answers of type NEW* to one request.
fn dump(
    sock: &mut Socket,
    what: Dump<'_>,
    label: &str,
    seq: u32,
) -> Result<Vec<Msg>, NetlinkError> {
    let req = what.request(TABLE_NAME, seq);
    let want = wire::NFT_MSG_BASE | what.types().1 as u16;
    match sock.request(&req, seq)? {
        Ok(msgs) => Ok(msgs.into_iter().filter(|m| m.ty == want).collect()),
        Err((libc::EPERM, _)) => Err(NetlinkError::PermissionDenied {
            during: format!("reading back {label}"),
        }),
        Err((errno, _)) => Err(NetlinkError::Dump {
            what: label.to_string(),
            errno,
        }),
    }
}

/// The flags of the `inet nftpol` table, or `None` when it does not exist.
pub fn table_flags(sock: &mut Socket) -> Result<Option<u32>, NetlinkError> {
    match dump(sock, Dump::Table, "table inet nftpol", 1) {
        Ok(msgs) => Ok(Some(
            msgs.iter()
                .flat_map(|m| wire::attrs(m.body()))
                .find(|(ty, _)| *ty == wire::TABLE_ATTR_FLAGS)
                .and_then(|(_, v)| wire::be32_of(v))
                .unwrap_or(0),
        )),
        Err(NetlinkError::Dump { errno, .. }) if errno == libc::ENOENT => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether the `inet nftpol` table exists.
pub fn table_exists(sock: &mut Socket) -> Result<bool, NetlinkError> {
    Ok(table_flags(sock)?.is_some())
}

/// The table an nftables message belongs to (its first attribute).
pub fn table_of(m: &Msg) -> Option<&str> {
    wire::attrs(m.body())
        .find(|(ty, _)| *ty == wire::ATTR_TABLE)
        .map(|(_, v)| wire::str_of(v))
}

fn decode_hook(n: u32) -> Option<Hook> {
    Some(match n as i32 {
        libc::NF_INET_INGRESS => Hook::Ingress,
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
    let Some(table_flags) = table_flags(sock)? else {
        return Ok(None);
    };
    let mut rs = Ruleset {
        table_flags,
        ..Ruleset::default()
    };
    let dec = |object: String| move |reason: String| NetlinkError::Decode { object, reason };

    // nftpol creates no stateful objects and no flowtables: any in its
    // table was put there by someone else.
    for (what, label, seq) in [
        (Dump::Objects, "stateful objects", 2),
        (Dump::Flowtables, "flowtables", 3),
    ] {
        let msgs = dump(sock, what, label, seq)?;
        if msgs.iter().any(|m| table_of(m) == Some(TABLE_NAME)) {
            return Err(dec(format!("table inet {TABLE_NAME}"))(format!(
                "it holds {label}, which nftpol never creates"
            )));
        }
    }

    for m in dump(sock, Dump::Chains, "chains", 4)? {
        let info = raw::parse_chain(&m).map_err(dec("a chain".into()))?;
        // The kernel dumps the chains of every inet table: keep ours only.
        if info.table != TABLE_NAME {
            continue;
        }
        let base = match info.base {
            None => None,
            Some((hooknum, priority, policy, ty, device)) => {
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
                    device,
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
    for m in dump(sock, Dump::Rules, "rules", 5)? {
        let info = raw::parse_rule(&m).map_err(dec("a rule".into()))?;
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
    for m in dump(sock, Dump::Sets, "sets", 6)? {
        let (table, name, attrs) = raw::parse_set(&m).map_err(dec("a set".into()))?;
        if table != TABLE_NAME {
            continue;
        }
        let kind = set_kind(attrs).map_err(dec(format!("set {name}")))?;
        sets.push((name, kind));
    }
    for (i, (name, kind)) in sets.into_iter().enumerate() {
        let label = format!("elements of set {name}");
        let seq = 7 + i as u32;
        let mut raw_elems = Vec::new();
        for m in dump(sock, Dump::Elements(&name), &label, seq)? {
            raw_elems.extend(raw::parse_elems(&m).map_err(dec(label.clone()))?);
        }
        let elements = decode_elements(kind, &raw_elems).map_err(dec(label))?;
        rs.sets.insert(name, Set { kind, elements });
    }
    Ok(Some(rs))
}

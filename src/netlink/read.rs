//! Read-back of the `inet nftpol` table (and the `netdev nftpol` guard
//! beside it) into the IR: one dump each for
//! chains, rules and sets, then one element dump per set (the kernel
//! dumps elements per set only). Counter values come back beside the IR,
//! never in it, and alone from one rule dump. The requests name our table, but the
//! kernel does not filter every dump by it (chain dumps list every inet
//! table), so each object's table is checked here too.
//! Anything nftpol would not have written is a `Decode` error naming the
//! object, never silently dropped.

use super::elem::{decode_elements, set_kind};
use super::parse;
use super::socket::{Msg, Socket};
use super::wire::{self, Dump};
use super::NetlinkError;
use policy_compiler::counters::{Counters, RuleCounter};
use policy_compiler::ir::{
    BaseChain, Chain, ChainPolicy, Guard, Hook, Rule, Ruleset, Set, SetKind, TABLE_NAME,
};
use std::collections::BTreeMap;

/// The answers of type NEW* to one request.
fn dump(
    sock: &mut Socket,
    what: Dump<'_>,
    label: &str,
    seq: u32,
) -> Result<Vec<Msg>, NetlinkError> {
    dump_in(sock, wire::FAMILY_INET, what, label, seq)
}

/// [`dump`] of the `nftpol` table of `family`.
fn dump_in(
    sock: &mut Socket,
    family: u8,
    what: Dump<'_>,
    label: &str,
    seq: u32,
) -> Result<Vec<Msg>, NetlinkError> {
    let req = what.request_in(family, TABLE_NAME, seq);
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
    table_flags_in(sock, wire::FAMILY_INET)
}

/// The flags of the `nftpol` table of `family`, or `None` when absent.
pub fn table_flags_in(sock: &mut Socket, family: u8) -> Result<Option<u32>, NetlinkError> {
    let label = if family == wire::FAMILY_NETDEV {
        "table netdev nftpol"
    } else {
        "table inet nftpol"
    };
    match dump_in(sock, family, Dump::Table, label, 1) {
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
    Ok(read_table_counted(sock)?.map(|(rs, _)| rs))
}

/// Chain, handle, rule and (packets, bytes) of one dumped rule.
pub(crate) type DumpedRule = (String, u64, Rule, Option<(u64, u64)>);

/// The rules of our table in kernel order, decoded, each with its counter
/// values (the first `counter` statement's).
fn rules(sock: &mut Socket) -> Result<Vec<DumpedRule>, NetlinkError> {
    let mut out = Vec::new();
    // The kernel dumps each chain's rules in order.
    for m in dump(sock, Dump::Rules, "rules", 5)? {
        out.extend(decode_rule(&m)?);
    }
    Ok(out)
}

/// The values of every counted rule, from one rule dump (no chains, sets
/// or elements): cheap enough to poll. An absent table has no counters.
pub fn read_counters(sock: &mut Socket) -> Result<Counters, NetlinkError> {
    let mut position: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = Vec::new();
    let rules = match rules(sock) {
        Err(NetlinkError::Dump { errno, .. }) if errno == libc::ENOENT => Vec::new(),
        r => r?,
    };
    for (chain, _, rule, counter) in rules {
        let index = position.entry(chain.clone()).or_default();
        if let Some((packets, bytes)) = counter {
            out.push(RuleCounter::new(&chain, *index, &rule, packets, bytes));
        }
        *index += 1;
    }
    Ok(Counters::from_rules(out))
}

/// [`read_table`] with the counter values of its rules, read in the same
/// dump (so positions agree with the ruleset).
pub fn read_table_counted(sock: &mut Socket) -> Result<Option<(Ruleset, Counters)>, NetlinkError> {
    let Some(table_flags) = table_flags(sock)? else {
        return Ok(None);
    };
    let mut rs = Ruleset {
        table_flags,
        ..Ruleset::default()
    };
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
        if let Some((name, chain)) = decode_chain(&m)? {
            rs.chains.insert(name, chain);
        }
    }

    let mut counted = Vec::new();
    for (chain_name, handle, rule, counter) in rules(sock)? {
        let object = format!("rule handle {handle} in chain {chain_name}");
        let chain = rs
            .chains
            .get_mut(&chain_name)
            .ok_or_else(|| dec(object)("its chain was not listed".into()))?;
        if let Some((packets, bytes)) = counter {
            counted.push(RuleCounter::new(
                &chain_name,
                chain.rules.len(),
                &rule,
                packets,
                bytes,
            ));
        }
        chain.rules.push(rule);
    }

    rs.guard = read_guard(sock)?;

    let mut sets = Vec::new();
    for m in dump(sock, Dump::Sets, "sets", 6)? {
        sets.extend(decode_set(&m)?);
    }
    for (i, (name, kind)) in sets.into_iter().enumerate() {
        let label = format!("elements of set {name}");
        let msgs = dump(sock, Dump::Elements(&name), &label, 7 + i as u32)?;
        let set = decode_elements_of(&name, kind, &msgs)?;
        rs.sets.insert(name, set);
    }
    Ok(Some((rs, Counters::from_rules(counted))))
}

/// The `netdev nftpol` guard table, or `None` when absent. It holds base
/// chains and their rules only: a set, stateful object or flowtable in
/// it is foreign.
pub fn read_guard(sock: &mut Socket) -> Result<Option<Guard>, NetlinkError> {
    const NETDEV: u8 = wire::FAMILY_NETDEV;
    let Some(flags) = table_flags_in(sock, NETDEV)? else {
        return Ok(None);
    };
    let mut guard = Guard {
        flags,
        chains: BTreeMap::new(),
    };
    for (what, label, seq) in [
        (Dump::Objects, "stateful objects", 12),
        (Dump::Flowtables, "flowtables", 13),
        (Dump::Sets, "sets", 14),
    ] {
        let msgs = dump_in(sock, NETDEV, what, label, seq)?;
        if msgs.iter().any(|m| table_of(m) == Some(TABLE_NAME)) {
            return Err(dec(format!("table netdev {TABLE_NAME}"))(format!(
                "it holds {label}, which nftpol never creates there"
            )));
        }
    }
    for m in dump_in(sock, NETDEV, Dump::Chains, "netdev chains", 15)? {
        if let Some((name, chain)) = decode_chain_in(&m, true)? {
            guard.chains.insert(name, chain);
        }
    }
    for m in dump_in(sock, NETDEV, Dump::Rules, "netdev rules", 16)? {
        let Some((chain_name, handle, rule, _)) = decode_rule(&m)? else {
            continue;
        };
        let object = format!("rule handle {handle} in chain {chain_name} of table netdev");
        guard
            .chains
            .get_mut(&chain_name)
            .ok_or_else(|| dec(object)("its chain was not listed".into()))?
            .rules
            .push(rule);
    }
    Ok(Some(guard))
}

fn dec(object: String) -> impl FnOnce(String) -> NetlinkError {
    move |reason: String| NetlinkError::Decode { object, reason }
}

/// One NEWCHAIN answer: the chain's name and the chain, or `None` when
/// it belongs to another table (chain dumps list every inet table).
pub(crate) fn decode_chain(m: &Msg) -> Result<Option<(String, Chain)>, NetlinkError> {
    decode_chain_in(m, false)
}

/// [`decode_chain`] of the inet table or (`netdev`) the guard table,
/// whose family numbers its hooks apart (`NF_NETDEV_INGRESS` is 0).
fn decode_chain_in(m: &Msg, netdev: bool) -> Result<Option<(String, Chain)>, NetlinkError> {
    let info = parse::parse_chain(m).map_err(dec("a chain".into()))?;
    if info.table != TABLE_NAME {
        return Ok(None);
    }
    let base = match info.base {
        None => None,
        Some((hooknum, priority, policy, ty, device)) => {
            let object = format!("chain {}", info.name);
            if ty != "filter" {
                return Err(dec(object)(format!("chain type {ty:?}")));
            }
            let hook = if netdev {
                (hooknum == libc::NF_NETDEV_INGRESS as u32).then_some(Hook::Ingress)
            } else {
                decode_hook(hooknum)
            }
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
    let chain = Chain {
        base,
        rules: Vec::new(),
    };
    Ok(Some((info.name, chain)))
}

/// One NEWRULE answer: its chain, handle, the rule and its counter
/// values, or `None` when it belongs to another table.
pub(crate) fn decode_rule(m: &Msg) -> Result<Option<DumpedRule>, NetlinkError> {
    let info = parse::parse_rule(m).map_err(dec("a rule".into()))?;
    if info.table != TABLE_NAME {
        return Ok(None);
    }
    let object = format!("rule handle {} in chain {}", info.handle, info.chain);
    let rule = super::expr::raise_rule(&info.exprs, parse::parse_comment(&info.userdata))
        .map_err(dec(object))?;
    Ok(Some((info.chain, info.handle, rule, info.counter)))
}

/// One NEWSET answer: the set's name and kind, or `None` when it belongs
/// to another table.
pub(crate) fn decode_set(m: &Msg) -> Result<Option<(String, SetKind)>, NetlinkError> {
    let (table, name, attrs) = parse::parse_set(m).map_err(dec("a set".into()))?;
    if table != TABLE_NAME {
        return Ok(None);
    }
    let kind = set_kind(attrs).map_err(dec(format!("set {name}")))?;
    Ok(Some((name, kind)))
}

/// The NEWSETELEM answers of one set's element dump, as the IR set.
pub(crate) fn decode_elements_of(
    name: &str,
    kind: SetKind,
    msgs: &[Msg],
) -> Result<Set, NetlinkError> {
    let label = format!("elements of set {name}");
    let mut raw_elems = Vec::new();
    for m in msgs {
        raw_elems.extend(parse::parse_elems(m).map_err(dec(label.clone()))?);
    }
    let elements = decode_elements(kind, &raw_elems).map_err(dec(label))?;
    Ok(Set { kind, elements })
}

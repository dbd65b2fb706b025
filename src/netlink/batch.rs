//! Transaction -> one nftables batch (BATCH_BEGIN, messages, BATCH_END,
//! each with NLM_F_ACK), and sending it: the pages nftnl builds are joined
//! into one buffer and sent in one `send` (docs/NETLINK.md, kernel fact 1); acks are
//! matched to messages by sequence number, so a rejection names the
//! object of the failing message.
//!
//! Tables, chains, rules (with comments) and flushes use nftnl's safe
//! types; sets, elements and expressions go through `raw`.

use super::elem::{encode_element, set_attrs, RawElem};
use super::expr::RawExpr;
use super::raw::{cstring, ExprRef};
use super::socket::Socket;
use super::wire::{self, ObjMsg};
use super::NetlinkError;
use nftnl::{Batch, MsgType, ProtoFamily};
use policy_compiler::diff::{GuardOp, Op, Transaction};
use policy_compiler::ir::{ChainPolicy, Element, Family, Hook, Rule, SetKind, TABLE_NAME};
use policy_compiler::render::{render_element, render_rule};

/// What one message of a batch concerns: op `op` of the transaction,
/// and for rules and elements which of its items (`first`, `count`).
/// Kept as indices and rendered only when the kernel rejects the message,
/// so building a large batch formats no text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsgRef {
    pub op: usize,
    pub first: usize,
    pub count: usize,
}

/// An encoded batch.
pub struct Encoded {
    pub buf: Vec<u8>,
    /// What each message (BEGIN/END excluded) concerns, in order.
    pub objects: Vec<MsgRef>,
    /// Sequence number of the first message.
    pub first_seq: u32,
    /// Sequence number of BATCH_END when the kernel acks it.
    pub end_seq: Option<u32>,
}

/// Human description of one message, e.g. `add rule 3 of chain ing_x:
/// ip saddr @s accept` or `add element 10.0.0.1 of set pod4_x`.
pub fn describe(tx: &Transaction, r: MsgRef) -> String {
    let Some(op) = tx.ops.get(r.op) else {
        return format!("message for op {}", r.op);
    };
    let elems = |verb: &str, set: &str, elements: &[Element]| {
        let chunk = elements.get(r.first..r.first + r.count).unwrap_or_default();
        match chunk {
            [e] => format!("{verb} element {} of set {set}", render_element(e)),
            [e, ..] => format!(
                "{verb} one of {} elements of set {set} (from {})",
                chunk.len(),
                render_element(e)
            ),
            [] => format!("{verb} elements of set {set}"),
        }
    };
    match op {
        Op::AddTable => format!("add table inet {TABLE_NAME}"),
        Op::DelTable => format!("delete table inet {TABLE_NAME}"),
        Op::SetTableFlags { flags } => format!("set flags {flags:#x} of table inet {TABLE_NAME}"),
        Op::AddSet { name, .. } => format!("add set {name}"),
        Op::DelSet { name } => format!("delete set {name}"),
        Op::AddChain { name, .. } => format!("add chain {name}"),
        Op::DelChain { name } => format!("delete chain {name}"),
        Op::FlushChain { name } => format!("flush chain {name}"),
        Op::AddRules { chain, rules } => match rules.get(r.first) {
            Some(rule) => format!(
                "add rule {} of chain {chain}: {}",
                r.first,
                render_rule(rule)
            ),
            None => format!("add rule {} of chain {chain}", r.first),
        },
        Op::AddElements { set, elements } => elems("add", set, elements),
        Op::DelElements { set, elements } => elems("delete", set, elements),
        Op::Guard(g) => match g {
            GuardOp::AddTable => format!("add table netdev {TABLE_NAME}"),
            GuardOp::DelTable => format!("delete table netdev {TABLE_NAME}"),
            GuardOp::Reset => format!("reset table netdev {TABLE_NAME}"),
            GuardOp::SetFlags { flags } => {
                format!("set flags {flags:#x} of table netdev {TABLE_NAME}")
            }
            GuardOp::AddChain { name, .. } => format!("add chain {name} of table netdev"),
            GuardOp::DelChain { name } => format!("delete chain {name} of table netdev"),
            GuardOp::FlushChain { name } => format!("flush chain {name} of table netdev"),
            GuardOp::AddRules { chain, rules } => match rules.get(r.first) {
                Some(rule) => format!(
                    "add rule {} of chain {chain} of table netdev: {}",
                    r.first,
                    render_rule(rule)
                ),
                None => format!("add rule {} of chain {chain} of table netdev", r.first),
            },
        },
    }
}

/// The set kind an element belongs to; elements are self-describing, so
/// element ops need no lookup of their set.
fn kind_of(e: &Element) -> SetKind {
    let fam = |a: &std::net::IpAddr| Family::of(a);
    match e {
        Element::Addr(a) => SetKind::Addr {
            family: fam(a),
            interval: false,
        },
        Element::AddrRange(a, _) => SetKind::Addr {
            family: fam(a),
            interval: true,
        },
        Element::PortRange(..) => SetKind::Ports,
        Element::AddrProtoPort(a, ..) => SetKind::AddrProtoPort { family: fam(a) },
        Element::VmapJump(a, _) => SetKind::Vmap { family: fam(a) },
    }
}

/// The hook number of a chain in `family`: the netdev family numbers its
/// hooks apart (`NF_NETDEV_INGRESS` is 0), and nftnl's `Hook` carries the
/// number only, so the variant of the same value stands for it.
fn hook_in(netdev: bool, h: Hook) -> nftnl::Hook {
    match (netdev, h) {
        (true, Hook::Ingress) => nftnl::Hook::PreRouting,
        _ => hook(h),
    }
}

fn hook(h: Hook) -> nftnl::Hook {
    match h {
        Hook::Ingress => nftnl::Hook::Ingress,
        Hook::Prerouting => nftnl::Hook::PreRouting,
        Hook::Input => nftnl::Hook::In,
        Hook::Forward => nftnl::Hook::Forward,
        Hook::Output => nftnl::Hook::Out,
        Hook::Postrouting => nftnl::Hook::PostRouting,
    }
}

/// An encoding error; `object` is only rendered when there is one.
fn enc_err(object: impl FnOnce() -> String) -> impl FnOnce(String) -> NetlinkError {
    move |reason| NetlinkError::Encode {
        object: object(),
        reason,
    }
}

/// Adds element messages for `elements` of `set`, chunked so each message
/// stays well under the 64 KiB attribute limit.
fn add_elements(
    batch: &mut Batch,
    objects: &mut Vec<MsgRef>,
    op: usize,
    set: &str,
    elements: &[Element],
    ty: MsgType,
) -> Result<(), NetlinkError> {
    let mut chunk: Vec<RawElem> = Vec::new();
    let (mut first, mut size) = (0usize, 0usize);
    let mut emit =
        |chunk: &mut Vec<RawElem>, first: usize, end: usize| -> Result<(), NetlinkError> {
            let msg = ObjMsg::elements(TABLE_NAME, set, chunk)
                .map_err(enc_err(|| format!("elements of set {set}")))?;
            batch.add(&msg, ty);
            objects.push(MsgRef {
                op,
                first,
                count: end - first,
            });
            chunk.clear();
            Ok(())
        };
    for (i, e) in elements.iter().enumerate() {
        let raw = encode_element(kind_of(e), e).map_err(enc_err(|| {
            format!("element {} of set {set}", render_element(e))
        }))?;
        let add: usize = raw.iter().map(wire::elem_size_estimate).sum();
        // An interval's start and end keys stay in one message.
        if size + add > wire::ELEMS_MSG_BUDGET && !chunk.is_empty() {
            emit(&mut chunk, first, i)?;
            first = i;
            size = 0;
        }
        size += add;
        chunk.extend(raw);
    }
    if !chunk.is_empty() {
        emit(&mut chunk, first, elements.len())?;
    }
    Ok(())
}

/// An add message for a chain of `table`.
fn chain_msg<'t>(
    table: &'t nftnl::Table,
    netdev: bool,
    name: &str,
    base: Option<&policy_compiler::ir::BaseChain>,
) -> Result<nftnl::Chain<'t>, String> {
    let cname = cstring(name)?;
    let mut chain = nftnl::Chain::new(&cname, table);
    if let Some(b) = base {
        chain.set_hook(hook_in(netdev, b.hook), b.priority);
        if let Some(dev) = &b.device {
            chain.set_device(cstring(dev)?);
        }
        chain.set_type(nftnl::ChainType::Filter);
        chain.set_policy(match b.policy {
            ChainPolicy::Accept => nftnl::Policy::Accept,
            ChainPolicy::Drop => nftnl::Policy::Drop,
        });
    }
    Ok(chain)
}

/// A delete message for chain `name` of `table`, or with `flush` one for
/// all its rules.
fn del_chain(
    batch: &mut Batch,
    table: &nftnl::Table,
    name: &str,
    flush: bool,
) -> Result<(), String> {
    let cname = cstring(name)?;
    let chain = nftnl::Chain::new(&cname, table);
    if flush {
        // A rule delete without a handle flushes the chain.
        batch.add(&nftnl::Rule::new(&chain), MsgType::Del);
    } else {
        batch.add(&chain, MsgType::Del);
    }
    Ok(())
}

/// One add message per rule of op `op` for chain `chain` of `table`;
/// `lower` is the lowering of that table's family. An error names the
/// message it concerns.
fn add_rules(
    batch: &mut Batch,
    objects: &mut Vec<MsgRef>,
    table: &nftnl::Table,
    chain: &str,
    op: usize,
    rules: &[Rule],
    lower: fn(&Rule) -> Vec<RawExpr>,
) -> Result<(), (MsgRef, String)> {
    let one = |first| MsgRef {
        op,
        first,
        count: 1,
    };
    let cname = cstring(chain).map_err(|e| (one(0), e))?;
    let nchain = nftnl::Chain::new(&cname, table);
    for (i, rule) in rules.iter().enumerate() {
        let mut r = nftnl::Rule::new(&nchain);
        for e in lower(rule) {
            r.add_expr(&ExprRef(&e));
        }
        if let Some(c) = &rule.comment {
            let c = cstring(c).map_err(|e| (one(i), e))?;
            r.set_comment(c).map_err(|e| (one(i), e.to_string()))?;
        }
        batch.add(&r, MsgType::Add);
        objects.push(one(i));
    }
    Ok(())
}

/// Encodes `tx` into one batch buffer.
pub fn encode(tx: &Transaction) -> Result<Encoded, NetlinkError> {
    let table = nftnl::Table::new(c"nftpol", ProtoFamily::Inet);
    let guard = nftnl::Table::new(c"nftpol", ProtoFamily::NetDev);
    let mut batch = Batch::new();
    let mut objects: Vec<MsgRef> = Vec::new();
    let mut set_id = 0u32;
    // Encoding errors name their object like kernel rejections do.
    let fail = |r: MsgRef| {
        move |reason: String| NetlinkError::Encode {
            object: describe(tx, r),
            reason,
        }
    };
    for (op_i, op) in tx.ops.iter().enumerate() {
        let one = MsgRef {
            op: op_i,
            first: 0,
            count: 1,
        };
        match op {
            Op::AddTable | Op::DelTable => {
                let ty = if matches!(op, Op::AddTable) {
                    MsgType::Add
                } else {
                    MsgType::Del
                };
                batch.add(&table, ty);
                objects.push(one);
            }
            Op::SetTableFlags { flags } => {
                batch.add(&ObjMsg::table_flags(TABLE_NAME, *flags), MsgType::Add);
                objects.push(one);
            }
            Op::AddSet { name, kind } => {
                set_id += 1;
                let msg = ObjMsg::set(TABLE_NAME, name, set_id, Some(set_attrs(*kind)))
                    .map_err(fail(one))?;
                batch.add(&msg, MsgType::Add);
                objects.push(one);
            }
            Op::DelSet { name } => {
                let msg = ObjMsg::set(TABLE_NAME, name, 0, None).map_err(fail(one))?;
                batch.add(&msg, MsgType::Del);
                objects.push(one);
            }
            Op::Guard(g) => match g {
                GuardOp::AddTable | GuardOp::DelTable | GuardOp::Reset => {
                    if !matches!(g, GuardOp::DelTable) {
                        // Without NLM_F_EXCL: creates, or leaves it be.
                        batch.add(&guard, MsgType::Add);
                        objects.push(one);
                    }
                    if !matches!(g, GuardOp::AddTable) {
                        batch.add(&guard, MsgType::Del);
                        objects.push(one);
                    }
                }
                GuardOp::SetFlags { flags } => {
                    let msg = ObjMsg::table_flags_in(wire::FAMILY_NETDEV, TABLE_NAME, *flags);
                    batch.add(&msg, MsgType::Add);
                    objects.push(one);
                }
                GuardOp::AddChain { name, base } => {
                    let chain = chain_msg(&guard, true, name, base.as_ref()).map_err(fail(one))?;
                    batch.add(&chain, MsgType::Add);
                    objects.push(one);
                }
                GuardOp::DelChain { name } | GuardOp::FlushChain { name } => {
                    let flush = matches!(g, GuardOp::FlushChain { .. });
                    del_chain(&mut batch, &guard, name, flush).map_err(fail(one))?;
                    objects.push(one);
                }
                GuardOp::AddRules { chain, rules } => {
                    let lower = super::expr::lower_guard_rule;
                    add_rules(&mut batch, &mut objects, &guard, chain, op_i, rules, lower)
                        .map_err(|(r, reason)| fail(r)(reason))?;
                }
            },
            Op::AddChain { name, base } => {
                let chain = chain_msg(&table, false, name, base.as_ref()).map_err(fail(one))?;
                batch.add(&chain, MsgType::Add);
                objects.push(one);
            }
            Op::DelChain { name } | Op::FlushChain { name } => {
                let flush = matches!(op, Op::FlushChain { .. });
                del_chain(&mut batch, &table, name, flush).map_err(fail(one))?;
                objects.push(one);
            }
            Op::AddRules { chain, rules } => {
                let lower = super::expr::lower_rule;
                add_rules(&mut batch, &mut objects, &table, chain, op_i, rules, lower)
                    .map_err(|(r, reason)| fail(r)(reason))?;
            }
            Op::AddElements { set, elements } => {
                add_elements(&mut batch, &mut objects, op_i, set, elements, MsgType::Add)?
            }
            Op::DelElements { set, elements } => {
                add_elements(&mut batch, &mut objects, op_i, set, elements, MsgType::Del)?
            }
        }
    }
    let fin = batch.finalize();
    let seqs = fin.sequence_numbers();
    // nftnl acks BEGIN/END (and numbers them) only on kernels that honour
    // it (6.10+); then the range holds two more sequence numbers.
    let acked_ends = seqs.len() == objects.len() + 2;
    let (first_seq, end_seq) = if acked_ends {
        (seqs.start + 1, Some(seqs.end - 1))
    } else {
        (seqs.start, None)
    };
    let mut buf = Vec::with_capacity(fin.iter().map(<[u8]>::len).sum());
    for page in &fin {
        buf.extend_from_slice(page);
    }
    Ok(Encoded {
        buf,
        objects,
        first_seq,
        end_seq,
    })
}

/// Clears NLM_F_ACK on every message between BATCH_BEGIN and BATCH_END.
/// The kernel still reports each failing message (an error is always
/// sent) and acks BATCH_END, the only ack that means "committed"; what
/// goes away is one ack skb per message (about 10% of the kernel's time
/// for a full load). nftnl's safe types always set the flag, hence this
/// pass over the finished buffer.
pub fn strip_message_acks(b: &mut Encoded) {
    let n = b.objects.len();
    let mut off = 0usize;
    let mut index = 0usize;
    while off + 16 <= b.buf.len() {
        let len = u32::from_ne_bytes([b.buf[off], b.buf[off + 1], b.buf[off + 2], b.buf[off + 3]])
            as usize;
        if len < 16 {
            break;
        }
        // Message 0 is BATCH_BEGIN and message n + 1 BATCH_END.
        if index >= 1 && index <= n {
            let flags =
                u16::from_ne_bytes([b.buf[off + 6], b.buf[off + 7]]) & !(libc::NLM_F_ACK as u16);
            b.buf[off + 6..off + 8].copy_from_slice(&flags.to_ne_bytes());
        }
        off += len.next_multiple_of(4);
        index += 1;
    }
}

/// Sends an encoded batch and waits for its verdict.
pub fn send(sock: &mut Socket, b: &Encoded, tx: &Transaction) -> Result<(), NetlinkError> {
    sock.size_buffers(b.buf.len(), b.objects.len() + 2);
    sock.send_all_at_once(&b.buf)?;
    let mut errors: Vec<(u32, i32, Option<String>)> = Vec::new();
    let mut end_acked = false;
    let mut waited = false;
    loop {
        // Everything is queued by the time send returns; block only once,
        // briefly, in case a kernel ever answers later.
        let msgs = match sock.recv(true)? {
            Some(m) => m,
            None if end_acked || !errors.is_empty() || b.end_seq.is_none() || waited => break,
            None => {
                waited = true;
                std::thread::sleep(std::time::Duration::from_millis(50));
                continue;
            }
        };
        for m in msgs {
            let Some((errno, text)) = m.error() else {
                continue;
            };
            if errno == 0 {
                if Some(m.seq) == b.end_seq {
                    end_acked = true;
                }
            } else {
                errors.push((m.seq, errno, text));
            }
        }
    }
    if let Some((seq, errno, detail)) = errors.first().cloned() {
        let object = seq
            .checked_sub(b.first_seq)
            .and_then(|i| b.objects.get(i as usize))
            .map(|r| describe(tx, *r))
            .unwrap_or_else(|| format!("batch control message {seq}"));
        if errno == libc::EPERM {
            return Err(NetlinkError::PermissionDenied {
                during: format!("applying the batch ({object})"),
            });
        }
        return Err(NetlinkError::Rejected {
            seq,
            object,
            errno,
            detail,
            more: errors.len() - 1,
        });
    }
    if b.end_seq.is_some() && !end_acked {
        return Err(NetlinkError::NotCommitted);
    }
    Ok(())
}

//! Transaction -> one nftables batch (BATCH_BEGIN, messages, BATCH_END,
//! each with NLM_F_ACK), and sending it: the pages nftnl builds are joined
//! into one buffer and sent in one `send` (facts note, gotcha 1); acks are
//! matched to messages by sequence number, so a rejection names the
//! object of the failing message.
//!
//! Tables, chains, rules (with comments) and flushes use nftnl's safe
//! types; sets, elements and expressions go through `raw`.

use super::elem::{encode_element, set_attrs, RawElem};
use super::raw::{self, cstring, ElemsMsg, ExprRef, SetMsg};
use super::socket::Socket;
use super::NetlinkError;
use nftnl::{Batch, MsgType, ProtoFamily};
use policy_compiler::diff::{Op, Transaction};
use policy_compiler::ir::{ChainPolicy, Element, Family, Hook, SetKind, TABLE_NAME};
use policy_compiler::render::{render_element, render_rule};

/// An encoded batch.
pub struct Encoded {
    pub buf: Vec<u8>,
    /// What each message (BEGIN/END excluded) concerns, in order.
    pub objects: Vec<String>,
    /// Sequence number of the first message.
    pub first_seq: u32,
    /// Sequence number of BATCH_END when the kernel acks it.
    pub end_seq: Option<u32>,
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

fn hook(h: Hook) -> nftnl::Hook {
    match h {
        Hook::Prerouting => nftnl::Hook::PreRouting,
        Hook::Input => nftnl::Hook::In,
        Hook::Forward => nftnl::Hook::Forward,
        Hook::Output => nftnl::Hook::Out,
        Hook::Postrouting => nftnl::Hook::PostRouting,
    }
}

fn enc_err(object: impl Into<String>) -> impl FnOnce(String) -> NetlinkError {
    let object = object.into();
    move |reason| NetlinkError::Encode { object, reason }
}

/// Adds element messages for `elements` of `set`, chunked so each message
/// stays well under the 64 KiB attribute limit.
fn add_elements(
    batch: &mut Batch,
    objects: &mut Vec<String>,
    set: &str,
    elements: &[Element],
    ty: MsgType,
) -> Result<(), NetlinkError> {
    let verb = if ty == MsgType::Add { "add" } else { "delete" };
    let mut chunk: Vec<RawElem> = Vec::new();
    let mut first: Option<&Element> = None;
    let mut count = 0usize;
    let mut size = 0usize;
    let mut flush = |chunk: &mut Vec<RawElem>,
                     first: &mut Option<&Element>,
                     count: &mut usize,
                     size: &mut usize|
     -> Result<(), NetlinkError> {
        if chunk.is_empty() {
            return Ok(());
        }
        let what = match (*count, *first) {
            (1, Some(e)) => format!("{verb} element {} of set {set}", render_element(e)),
            (n, Some(e)) => format!(
                "{verb} {n} elements of set {set} (from {})",
                render_element(e)
            ),
            (n, None) => format!("{verb} {n} elements of set {set}"),
        };
        let msg = ElemsMsg::new(set, chunk).map_err(enc_err(what.clone()))?;
        batch.add(&msg, ty);
        objects.push(what);
        chunk.clear();
        *first = None;
        *count = 0;
        *size = 0;
        Ok(())
    };
    for e in elements {
        let raw = encode_element(kind_of(e), e).map_err(enc_err(format!(
            "element {} of set {set}",
            render_element(e)
        )))?;
        let add: usize = raw.iter().map(raw::elem_size_estimate).sum();
        // An interval's start and end keys stay in one message.
        if size + add > raw::ELEMS_MSG_BUDGET {
            flush(&mut chunk, &mut first, &mut count, &mut size)?;
        }
        first.get_or_insert(e);
        count += 1;
        size += add;
        chunk.extend(raw);
    }
    flush(&mut chunk, &mut first, &mut count, &mut size)
}

/// Encodes `tx` into one batch buffer.
pub fn encode(tx: &Transaction) -> Result<Encoded, NetlinkError> {
    let table = nftnl::Table::new(c"nftpol", ProtoFamily::Inet);
    let mut batch = Batch::new();
    let mut objects: Vec<String> = Vec::new();
    let mut set_id = 0u32;
    for op in &tx.ops {
        match op {
            Op::AddTable | Op::DelTable => {
                let ty = if matches!(op, Op::AddTable) {
                    MsgType::Add
                } else {
                    MsgType::Del
                };
                batch.add(&table, ty);
                let verb = if ty == MsgType::Add { "add" } else { "delete" };
                objects.push(format!("{verb} table inet {TABLE_NAME}"));
            }
            Op::AddSet { name, kind } => {
                set_id += 1;
                let what = format!("add set {name}");
                let msg = SetMsg::new(name, set_id, Some(set_attrs(*kind)))
                    .map_err(enc_err(what.clone()))?;
                batch.add(&msg, MsgType::Add);
                objects.push(what);
            }
            Op::DelSet { name } => {
                let what = format!("delete set {name}");
                let msg = SetMsg::new(name, 0, None).map_err(enc_err(what.clone()))?;
                batch.add(&msg, MsgType::Del);
                objects.push(what);
            }
            Op::AddChain { name, base } => {
                let what = format!("add chain {name}");
                let cname = cstring(name).map_err(enc_err(what.clone()))?;
                let mut chain = nftnl::Chain::new(&cname, &table);
                if let Some(b) = base {
                    chain.set_hook(hook(b.hook), b.priority);
                    chain.set_type(nftnl::ChainType::Filter);
                    chain.set_policy(match b.policy {
                        ChainPolicy::Accept => nftnl::Policy::Accept,
                        ChainPolicy::Drop => nftnl::Policy::Drop,
                    });
                }
                batch.add(&chain, MsgType::Add);
                objects.push(what);
            }
            Op::DelChain { name } | Op::FlushChain { name } => {
                let flush = matches!(op, Op::FlushChain { .. });
                let what = if flush {
                    format!("flush chain {name}")
                } else {
                    format!("delete chain {name}")
                };
                let cname = cstring(name).map_err(enc_err(what.clone()))?;
                let chain = nftnl::Chain::new(&cname, &table);
                if flush {
                    // A rule delete without a handle flushes the chain.
                    batch.add(&nftnl::Rule::new(&chain), MsgType::Del);
                } else {
                    batch.add(&chain, MsgType::Del);
                }
                objects.push(what);
            }
            Op::AddRules { chain, rules } => {
                let cname = cstring(chain).map_err(enc_err(format!("chain {chain}")))?;
                let nchain = nftnl::Chain::new(&cname, &table);
                for (i, rule) in rules.iter().enumerate() {
                    let what = format!("add rule {i} of chain {chain}: {}", render_rule(rule));
                    let mut r = nftnl::Rule::new(&nchain);
                    for e in super::expr::lower_rule(rule) {
                        r.add_expr(&ExprRef(&e));
                    }
                    if let Some(c) = &rule.comment {
                        let c = cstring(c).map_err(enc_err(what.clone()))?;
                        r.set_comment(c).map_err(|e| NetlinkError::Encode {
                            object: what.clone(),
                            reason: e.to_string(),
                        })?;
                    }
                    batch.add(&r, MsgType::Add);
                    objects.push(what);
                }
            }
            Op::AddElements { set, elements } => {
                add_elements(&mut batch, &mut objects, set, elements, MsgType::Add)?
            }
            Op::DelElements { set, elements } => {
                add_elements(&mut batch, &mut objects, set, elements, MsgType::Del)?
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
    let mut buf = Vec::new();
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

/// Sends an encoded batch and waits for its verdict.
pub fn send(sock: &mut Socket, b: &Encoded) -> Result<(), NetlinkError> {
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
            .cloned()
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

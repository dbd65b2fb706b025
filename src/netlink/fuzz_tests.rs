//! Bounded fuzzing of the read-back parser: whatever the kernel (or
//! anything else on the socket) sends, splitting a datagram into
//! messages, the libnftnl parsers and the decoding into the IR end in a
//! value or an error, never a panic or a crash.
//!
//! Seeds are the messages of a batch that creates a table with every IR
//! feature: NEWTABLE, NEWSET, NEWCHAIN, NEWRULE and NEWSETELEM with the
//! attribute layout of the kernel's dump answers, and conntrack entries
//! of both families (the connection revocation reads those). They are mutated at the
//! byte level and along their attribute structure (lengths, types,
//! nesting), then fed to every decoder, whatever their type. A second
//! target mutates the decoded expressions, elements and set attributes
//! directly, where byte mutations rarely reach. `NFTPOL_FUZZ_CASES=N`
//! sets the inputs per target (default 300, as `cargo test` runs it);
//! docs/FUZZING.md records longer runs.

use super::conntrack;
use super::elem::{self, decode_elements, RawElem, SetAttrs};
use super::expr::{lower_rule, raise_rule, RawExpr};
use super::parse;
use super::read::{decode_chain, decode_elements_of, decode_rule, decode_set, table_of};
use super::socket::Msg;
use super::wire;
use policy_compiler::fixture::SET_KINDS;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::cell::Cell;

fn cases() -> u32 {
    std::env::var("NFTPOL_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

fn runner() -> TestRunner {
    TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    })
}

/// The messages of the batch creating every IR feature, batch begin and
/// end left out.
fn seeds() -> Vec<Vec<u8>> {
    let rs = super::kernel_tests::every_feature(&[1, 2]);
    let batch = super::batch::encode(&policy_compiler::diff::create(&rs)).expect("encode");
    let msgs = Msg::split(&batch.buf).expect("a batch splits into messages");
    let mut out: Vec<Vec<u8>> = msgs
        .iter()
        .filter(|m| m.ty >> 8 == wire::NFT_MSG_BASE >> 8)
        .map(|m| m.bytes().to_vec())
        .collect();
    assert!(out.len() > 20, "{} seed messages", out.len());
    let tuple = |src, dst, sport, dport| conntrack::tuple(src, dst, 6, sport, dport);
    let ct = [
        conntrack::Entry::new(
            tuple("10.0.0.1", "10.0.0.2", 40000, 80),
            tuple("10.0.0.2", "10.0.0.1", 80, 40000),
        ),
        conntrack::Entry::new(
            tuple("fd00::1", "fd00::2", 40000, 443),
            tuple("fd00::2", "fd00::1", 443, 40000),
        ),
    ];
    // A delete request carries the original tuple; a dump entry also
    // has the reply tuple (CTA_TUPLE_REPLY = 2), here a copy of it.
    for e in &ct {
        let mut b = conntrack::delete_request(e, 1);
        let at = wire::NLMSG_HDR + wire::NFGEN_HDR;
        let len = usize::from(u16::from_ne_bytes([b[at], b[at + 1]]));
        let mut reply = b[at..at + len].to_vec();
        reply[2..4].copy_from_slice(&(2u16 | 0x8000).to_ne_bytes());
        b.extend(reply);
        out.push(fix_len(b));
    }
    out
}

/// The netlink type of a conntrack entry in a dump (`IPCTNL_MSG_CT_NEW`).
const CT_NEW: u16 = (libc::NFNL_SUBSYS_CTNETLINK as u16) << 8;

/// Runs one message through every decoder of the read-back, whatever its
/// type; only panics (and crashes) matter here.
fn decode_every_way(m: &Msg) {
    let _ = (m.error(), m.family(), table_of(m));
    let _ = decode_chain(m);
    let _ = decode_rule(m);
    let _ = decode_set(m);
    for kind in SET_KINDS {
        let _ = decode_elements_of("s", kind, std::slice::from_ref(m));
    }
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        let _ = conntrack::parse_entry(CT_NEW, family, m.body());
    }
}

#[derive(Clone, Debug)]
enum Edit {
    /// Overwrite a byte.
    Byte(usize, u8),
    /// Overwrite a 16-bit field (attribute lengths and types are u16).
    Word(usize, u16),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Truncate(usize),
    /// Copy a run from another seed into this one.
    Splice(usize, usize, usize, usize),
    /// Change the length of the n-th attribute found walking the message.
    AttrLen(usize, u16),
    /// Flip the nested flag or change the type of the n-th attribute.
    AttrType(usize, u16),
    /// Retype the message (an error, a done, another object) or change
    /// its header flags.
    Header(u16, u16),
}

/// 16-bit values that sit on the edges of attribute parsing.
fn word() -> impl Strategy<Value = u16> {
    prop_oneof![
        prop::sample::select(vec![
            0u16, 1, 2, 3, 4, 5, 7, 8, 12, 16, 0x7fff, 0x8000, 0xffff
        ]),
        any::<u16>(),
    ]
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        1 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Byte(i, b)),
        1 => (any::<usize>(), word()).prop_map(|(i, w)| Edit::Word(i, w)),
        1 => (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, b)| Edit::Insert(i, b)),
        1 => (any::<usize>(), 1usize..32).prop_map(|(i, n)| Edit::Delete(i, n)),
        1 => any::<usize>().prop_map(Edit::Truncate),
        1 => (any::<usize>(), any::<usize>(), any::<usize>(), 1usize..64)
            .prop_map(|(s, a, b, n)| Edit::Splice(s, a, b, n)),
        2 => (any::<usize>(), word()).prop_map(|(i, w)| Edit::AttrLen(i, w)),
        1 => (any::<usize>(), word()).prop_map(|(i, w)| Edit::AttrType(i, w)),
        1 => (
            prop::sample::select(vec![
                libc::NLMSG_ERROR as u16,
                libc::NLMSG_DONE as u16,
                wire::NFT_MSG_BASE | libc::NFT_MSG_NEWCHAIN as u16,
                wire::NFT_MSG_BASE | libc::NFT_MSG_NEWRULE as u16,
                wire::NFT_MSG_BASE | libc::NFT_MSG_NEWSET as u16,
                wire::NFT_MSG_BASE | libc::NFT_MSG_NEWSETELEM as u16,
            ]),
            word()
        )
            .prop_map(|(t, f)| Edit::Header(t, f)),
    ]
}

/// Offsets of every attribute header in `m` (nested ones included),
/// walking as a parser would while the lengths still make sense.
fn attr_offsets(m: &[u8]) -> Vec<usize> {
    fn walk(m: &[u8], mut off: usize, end: usize, out: &mut Vec<usize>, depth: u8) {
        while off + 4 <= end && depth < 8 {
            let len = usize::from(u16::from_ne_bytes([m[off], m[off + 1]]));
            if len < 4 || off + len > end {
                return;
            }
            out.push(off);
            if u16::from_ne_bytes([m[off + 2], m[off + 3]]) & 0x8000 != 0 {
                walk(m, off + 4, off + len, out, depth + 1);
            }
            off += len.next_multiple_of(4);
        }
    }
    let mut out = Vec::new();
    walk(m, wire::NLMSG_HDR + wire::NFGEN_HDR, m.len(), &mut out, 0);
    out
}

fn apply(mut b: Vec<u8>, edits: &[Edit], seeds: &[Vec<u8>]) -> Vec<u8> {
    for e in edits {
        let len = b.len().max(1);
        match e {
            Edit::Byte(i, v) if !b.is_empty() => b[i % len] = *v,
            Edit::Word(i, w) if b.len() >= 2 => {
                let at = i % (b.len() - 1);
                b[at..at + 2].copy_from_slice(&w.to_ne_bytes());
            }
            Edit::Insert(i, bytes) => {
                let at = i % (b.len() + 1);
                b.splice(at..at, bytes.iter().copied());
            }
            Edit::Delete(i, n) if !b.is_empty() => {
                let s = i % len;
                b.drain(s..(s + n).min(b.len()));
            }
            Edit::Truncate(i) => b.truncate(i % (b.len() + 1)),
            Edit::Splice(s, a, at, n) => {
                let src = &seeds[s % seeds.len()];
                let from = a % src.len().max(1);
                let chunk = &src[from..(from + n).min(src.len())];
                let at = at % (b.len() + 1);
                b.splice(at..at, chunk.iter().copied());
            }
            Edit::Header(ty, flags) if b.len() >= 8 => {
                b[4..6].copy_from_slice(&ty.to_ne_bytes());
                b[6..8].copy_from_slice(&flags.to_ne_bytes());
            }
            Edit::AttrLen(i, w) | Edit::AttrType(i, w) => {
                let offs = attr_offsets(&b);
                if let Some(&off) = offs.get(i % offs.len().max(1)) {
                    let at = if matches!(e, Edit::AttrLen(..)) {
                        off
                    } else {
                        off + 2
                    };
                    b[at..at + 2].copy_from_slice(&w.to_ne_bytes());
                }
            }
            _ => {}
        }
    }
    b
}

/// Sets the netlink header's length to the message's, as a message that
/// got through the datagram split would have.
fn fix_len(mut b: Vec<u8>) -> Vec<u8> {
    if b.len() >= 4 {
        let n = b.len() as u32;
        b[..4].copy_from_slice(&n.to_ne_bytes());
    }
    b
}

#[test]
fn mutated_kernel_messages_never_panic() {
    let seeds = seeds();
    // Every seed decodes as it is: the decoders are reached, not refused
    // at the door.
    let ran_clean = seeds
        .iter()
        .filter_map(|s| Msg::from_bytes(s))
        .filter(|m| decode_rule(m).is_ok_and(|r| r.is_some()))
        .count();
    assert!(ran_clean > 5, "{ran_clean} seed rules decode");
    let entries = seeds
        .iter()
        .filter_map(|s| Msg::from_bytes(s))
        .filter(|m| {
            m.family()
                .is_some_and(|f| conntrack::parse_entry(CT_NEW, f, m.body()).is_ok())
        })
        .count();
    assert_eq!(entries, 2, "the conntrack seeds decode");
    let strategy = (
        0..seeds.len(),
        prop::collection::vec(edit(), 1..8),
        any::<bool>(),
        0..3usize,
    );
    let ran = Cell::new(0u64);
    runner()
        .run(&strategy, |(seed, edits, keep_len, extra)| {
            let b = apply(seeds[seed].clone(), &edits, &seeds);
            let b = if keep_len { b } else { fix_len(b) };
            if let Some(m) = Msg::from_bytes(&b) {
                decode_every_way(&m);
            }
            // The same bytes inside a datagram, after other messages.
            let mut datagram: Vec<u8> = Vec::new();
            for k in 0..extra {
                datagram.extend(&seeds[(seed + k + 1) % seeds.len()]);
            }
            datagram.extend(&b);
            if let Ok(msgs) = Msg::split(&datagram) {
                for m in &msgs {
                    decode_every_way(m);
                }
            }
            ran.set(ran.get() + 1);
            Ok(())
        })
        .expect("no kernel message panics the read-back");
    eprintln!(
        "fuzz: {} mutated kernel messages decoded without a panic",
        ran.get()
    );
}

/// A small change to one decoded expression.
#[derive(Clone, Debug)]
enum ExprEdit {
    Number(usize, u32),
    Data(usize, Vec<u8>),
    Remove(usize),
    Duplicate(usize),
    Swap(usize, usize),
}

fn mutate_expr(e: &mut RawExpr, which: u32, v: u32) {
    let slots: Vec<&mut u32> = match e {
        RawExpr::Meta { key, dreg }
        | RawExpr::Ct { key, dreg }
        | RawExpr::CtDir { key, dreg, .. } => vec![key, dreg],
        RawExpr::Payload {
            base,
            offset,
            len,
            dreg,
        } => vec![base, offset, len, dreg],
        RawExpr::Cmp { sreg, op, .. } => vec![sreg, op],
        RawExpr::Bitwise {
            sreg, dreg, len, ..
        } => vec![sreg, dreg, len],
        RawExpr::Lookup { sreg, dreg, .. } => std::iter::once(sreg).chain(dreg.as_mut()).collect(),
        RawExpr::Verdict { code, .. } => {
            *code = v as i32;
            return;
        }
        _ => return,
    };
    let n = slots.len();
    if let Some(slot) = slots.into_iter().nth(which as usize % n.max(1)) {
        *slot = v;
    }
}

fn set_data(e: &mut RawExpr, d: Vec<u8>) {
    match e {
        RawExpr::Cmp { data, .. } => *data = d,
        RawExpr::Bitwise { mask, .. } => *mask = d,
        RawExpr::Lookup { set, .. } => *set = String::from_utf8_lossy(&d).into_owned(),
        RawExpr::Verdict { chain, .. } => *chain = Some(String::from_utf8_lossy(&d).into_owned()),
        _ => {}
    }
}

#[test]
fn mutated_expressions_elements_and_set_attributes_never_panic() {
    let rules: Vec<Vec<RawExpr>> = super::expr::tests::every_shape()
        .iter()
        .map(lower_rule)
        .collect();
    let numbers = prop_oneof![
        prop::sample::select(vec![
            0u32,
            1,
            2,
            3,
            4,
            8,
            9,
            10,
            13,
            15,
            16,
            17,
            255,
            u32::MAX
        ]),
        any::<u32>()
    ];
    let expr_edit = prop_oneof![
        (any::<usize>(), numbers.clone()).prop_map(|(i, v)| ExprEdit::Number(i, v)),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 0..20))
            .prop_map(|(i, d)| ExprEdit::Data(i, d)),
        any::<usize>().prop_map(ExprEdit::Remove),
        any::<usize>().prop_map(ExprEdit::Duplicate),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| ExprEdit::Swap(a, b)),
    ];
    let elem = (
        prop::collection::vec(any::<u8>(), 0..26),
        any::<bool>(),
        prop::option::of("[a-z_]{0,6}"),
    )
        .prop_map(|(key, end, jump)| RawElem { key, end, jump });
    let attrs = (
        numbers.clone(),
        numbers.clone(),
        numbers.clone(),
        prop::option::of(numbers),
    )
        .prop_map(|(flags, key_type, key_len, data_type)| SetAttrs {
            flags,
            key_type,
            key_len,
            data_type,
        });
    let strategy = (
        0..rules.len(),
        prop::collection::vec((expr_edit, any::<u32>()), 1..6),
        prop::collection::vec(elem, 0..12),
        attrs,
        prop::collection::vec(any::<u8>(), 0..40),
    );
    let ran = Cell::new(0u64);
    runner()
        .run(&strategy, |(rule, edits, elems, attrs, udata)| {
            let mut exprs = rules[rule].clone();
            for (e, which) in &edits {
                let n = exprs.len().max(1);
                match e {
                    ExprEdit::Number(i, v) => {
                        if let Some(x) = exprs.get_mut(i % n) {
                            mutate_expr(x, *which, *v);
                        }
                    }
                    ExprEdit::Data(i, d) => {
                        if let Some(x) = exprs.get_mut(i % n) {
                            set_data(x, d.clone());
                        }
                    }
                    ExprEdit::Remove(i) if !exprs.is_empty() => {
                        exprs.remove(i % n);
                    }
                    ExprEdit::Duplicate(i) if !exprs.is_empty() => {
                        let x = exprs[i % n].clone();
                        exprs.insert(i % n, x);
                    }
                    ExprEdit::Swap(a, b) if !exprs.is_empty() => exprs.swap(a % n, b % n),
                    _ => {}
                }
            }
            let _ = raise_rule(&exprs, parse::parse_comment(&udata));
            let _ = elem::set_kind(attrs);
            for kind in SET_KINDS {
                let _ = decode_elements(kind, &elems);
            }
            ran.set(ran.get() + 1);
            Ok(())
        })
        .expect("no decoded value panics the read-back");
    eprintln!(
        "fuzz: {} mutated expression lists, element lists and set attributes without a panic",
        ran.get()
    );
}

//! The libnftnl FFI (through nftnl-sys) for what nftnl's safe API lacks;
//! together with the libc socket calls in `socket.rs` the only `unsafe`
//! code of the netlink layer (docs/UNSAFE.md lists every site). It converts [`RawExpr`] and [`RawElem`]
//! to and from libnftnl objects, builds set and element messages (interval
//! end flags, concatenated keys, verdict-map data), builds dump requests,
//! and parses the kernel's chain, rule, set and element messages.
//!
//! Every libnftnl object allocated here is freed by an RAII guard, so an
//! early return cannot leak. The round trip "build a message, parse it
//! back" is tested without a kernel at the bottom of this file.

use super::elem::{RawElem, SetAttrs};
use super::expr::RawExpr;
use super::socket::Msg;
use super::wire::{nest_end, nest_start, put_attr, put_str};
use nftnl::nftnl_sys as sys;
use nftnl::{MsgType, NlMsg};
use std::ffi::{c_void, CStr, CString};
use std::os::raw::{c_char, c_int};
use std::ptr::NonNull;

pub const FAMILY_INET: u16 = libc::NFPROTO_INET as u16;

/// A NUL-terminated copy of an object name; names with NUL cannot exist
/// in nftables.
pub fn cstring(name: &str) -> Result<CString, String> {
    CString::new(name).map_err(|_| format!("name {name:?} contains a NUL byte"))
}

macro_rules! guard {
    ($name:ident, $ty:ty, $free:path) => {
        /// Owns one libnftnl object and frees it on drop.
        pub struct $name(NonNull<$ty>);
        impl $name {
            fn as_ptr(&self) -> *mut $ty {
                self.0.as_ptr()
            }
        }
        impl Drop for $name {
            fn drop(&mut self) {
                // SAFETY: the pointer came from the matching _alloc and is
                // freed exactly once, here.
                unsafe { $free(self.0.as_ptr()) }
            }
        }
    };
}

guard!(OwnedSet, sys::nftnl_set, sys::nftnl_set_free);
guard!(OwnedChain, sys::nftnl_chain, sys::nftnl_chain_free);
guard!(OwnedRule, sys::nftnl_rule, sys::nftnl_rule_free);

fn alloc<T>(p: *mut T) -> NonNull<T> {
    // libnftnl returns NULL only when malloc fails; nftnl aborts then too.
    NonNull::new(p).unwrap_or_else(|| std::process::abort())
}

// ---------------------------------------------------------------- exprs

/// Builds the libnftnl expression for `e`. The caller hands it to
/// `nftnl_rule_add_expr`, which takes ownership.
///
/// # Safety
/// Only calls libnftnl setters on a freshly allocated expression.
unsafe fn build_expr(e: &RawExpr) -> NonNull<sys::nftnl_expr> {
    let name: &CStr = match e {
        RawExpr::Meta { .. } => c"meta",
        RawExpr::Ct { .. } => c"ct",
        RawExpr::Payload { .. } => c"payload",
        RawExpr::Cmp { .. } => c"cmp",
        RawExpr::Bitwise { .. } => c"bitwise",
        RawExpr::Lookup { .. } => c"lookup",
        RawExpr::Verdict { .. } => c"immediate",
        RawExpr::Counter => c"counter",
        // Never produced by the encoder; an empty counter keeps this total.
        RawExpr::Other(_) => c"counter",
    };
    // SAFETY: `name` is a NUL-terminated expression type libnftnl knows.
    let x = alloc(unsafe { sys::nftnl_expr_alloc(name.as_ptr()) });
    let p = x.as_ptr();
    // SAFETY: `p` is the live expression allocated above; the setters
    // copy the value.
    let set_u32 = |attr: u32, v: u32| unsafe { sys::nftnl_expr_set_u32(p, attr as u16, v) };
    // SAFETY: as above; `d` is valid for `d.len()` bytes during the call.
    let set_data = |attr: u32, d: &[u8]| unsafe {
        sys::nftnl_expr_set(p, attr as u16, d.as_ptr().cast(), d.len() as u32);
    };
    match e {
        RawExpr::Meta { key, dreg } => {
            set_u32(sys::NFTNL_EXPR_META_KEY, *key);
            set_u32(sys::NFTNL_EXPR_META_DREG, *dreg);
        }
        RawExpr::Ct { key, dreg } => {
            set_u32(sys::NFTNL_EXPR_CT_KEY, *key);
            set_u32(sys::NFTNL_EXPR_CT_DREG, *dreg);
        }
        RawExpr::Payload {
            base,
            offset,
            len,
            dreg,
        } => {
            set_u32(sys::NFTNL_EXPR_PAYLOAD_BASE, *base);
            set_u32(sys::NFTNL_EXPR_PAYLOAD_OFFSET, *offset);
            set_u32(sys::NFTNL_EXPR_PAYLOAD_LEN, *len);
            set_u32(sys::NFTNL_EXPR_PAYLOAD_DREG, *dreg);
        }
        RawExpr::Cmp { sreg, op, data } => {
            set_u32(sys::NFTNL_EXPR_CMP_SREG, *sreg);
            set_u32(sys::NFTNL_EXPR_CMP_OP, *op);
            set_data(sys::NFTNL_EXPR_CMP_DATA, data);
        }
        RawExpr::Bitwise {
            sreg,
            dreg,
            len,
            mask,
            xor,
        } => {
            set_u32(sys::NFTNL_EXPR_BITWISE_SREG, *sreg);
            set_u32(sys::NFTNL_EXPR_BITWISE_DREG, *dreg);
            set_u32(sys::NFTNL_EXPR_BITWISE_LEN, *len);
            set_data(sys::NFTNL_EXPR_BITWISE_MASK, mask);
            set_data(sys::NFTNL_EXPR_BITWISE_XOR, xor);
        }
        RawExpr::Lookup { sreg, dreg, set } => {
            set_u32(sys::NFTNL_EXPR_LOOKUP_SREG, *sreg);
            if let Some(d) = dreg {
                set_u32(sys::NFTNL_EXPR_LOOKUP_DREG, *d);
            }
            // Sets are referenced by name; the kernel resolves names of
            // sets created earlier in the same batch too.
            let name = CString::new(set.as_str()).unwrap_or_default();
            // SAFETY: `p` is live; libnftnl copies the NUL-terminated name.
            unsafe { sys::nftnl_expr_set_str(p, sys::NFTNL_EXPR_LOOKUP_SET as u16, name.as_ptr()) };
            set_u32(sys::NFTNL_EXPR_LOOKUP_SET_ID, 0);
        }
        RawExpr::Verdict { code, chain } => {
            set_u32(sys::NFTNL_EXPR_IMM_DREG, super::expr::REG_VERDICT);
            set_u32(sys::NFTNL_EXPR_IMM_VERDICT, *code as u32);
            if let Some(c) = chain {
                let c = CString::new(c.as_str()).unwrap_or_default();
                // SAFETY: `p` is live; libnftnl copies the NUL-terminated name.
                unsafe { sys::nftnl_expr_set_str(p, sys::NFTNL_EXPR_IMM_CHAIN as u16, c.as_ptr()) };
            }
        }
        RawExpr::Counter | RawExpr::Other(_) => {}
    }
    x
}

/// Adapter so nftnl's safe `Rule::add_expr` takes our expressions.
pub struct ExprRef<'a>(pub &'a RawExpr);

impl nftnl::expr::Expression for ExprRef<'_> {
    fn to_expr(&self, _rule: &nftnl::Rule) -> NonNull<sys::nftnl_expr> {
        // SAFETY: build_expr only configures a fresh expression.
        unsafe { build_expr(self.0) }
    }
}

/// Reads one libnftnl expression back.
///
/// # Safety
/// `x` must be a valid expression owned by a live rule.
unsafe fn read_expr(x: *const sys::nftnl_expr) -> RawExpr {
    // SAFETY: `x` is live (the caller's contract) and only read.
    let name_ptr = unsafe { sys::nftnl_expr_get_str(x, sys::NFTNL_EXPR_NAME as u16) };
    if name_ptr.is_null() {
        return RawExpr::Other(String::new());
    }
    // SAFETY: non-null, NUL-terminated, owned by `x`, copied at once.
    let name = unsafe { CStr::from_ptr(name_ptr) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: getters on the live expression `x`; they only read it.
    let has = |a: u32| unsafe { sys::nftnl_expr_is_set(x, a as u16) };
    // SAFETY: as above.
    let u32_of = |a: u32| unsafe { sys::nftnl_expr_get_u32(x, a as u16) };
    let data_of = |a: u32| -> Vec<u8> {
        let mut len = 0u32;
        // SAFETY: as above; `len` is a live out-parameter.
        let d = unsafe { sys::nftnl_expr_get(x, a as u16, &mut len) };
        if d.is_null() {
            return Vec::new();
        }
        // SAFETY: libnftnl returned `len` valid bytes owned by `x`; copied at once.
        unsafe { std::slice::from_raw_parts(d.cast::<u8>(), len as usize) }.to_vec()
    };
    let str_of = |a: u32| -> Option<String> {
        if !has(a) {
            return None;
        }
        // SAFETY: getter on the live expression `x`.
        let s = unsafe { sys::nftnl_expr_get_str(x, a as u16) };
        // SAFETY: non-null, NUL-terminated, owned by `x`, copied at once.
        (!s.is_null()).then(|| unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned())
    };
    match name.as_str() {
        "meta" if has(sys::NFTNL_EXPR_META_DREG) => RawExpr::Meta {
            key: u32_of(sys::NFTNL_EXPR_META_KEY),
            dreg: u32_of(sys::NFTNL_EXPR_META_DREG),
        },
        "ct" if has(sys::NFTNL_EXPR_CT_DREG) && !has(sys::NFTNL_EXPR_CT_DIR) => RawExpr::Ct {
            key: u32_of(sys::NFTNL_EXPR_CT_KEY),
            dreg: u32_of(sys::NFTNL_EXPR_CT_DREG),
        },
        "payload" if has(sys::NFTNL_EXPR_PAYLOAD_DREG) => RawExpr::Payload {
            base: u32_of(sys::NFTNL_EXPR_PAYLOAD_BASE),
            offset: u32_of(sys::NFTNL_EXPR_PAYLOAD_OFFSET),
            len: u32_of(sys::NFTNL_EXPR_PAYLOAD_LEN),
            dreg: u32_of(sys::NFTNL_EXPR_PAYLOAD_DREG),
        },
        "cmp" => RawExpr::Cmp {
            sreg: u32_of(sys::NFTNL_EXPR_CMP_SREG),
            op: u32_of(sys::NFTNL_EXPR_CMP_OP),
            data: data_of(sys::NFTNL_EXPR_CMP_DATA),
        },
        "bitwise"
            if !has(sys::NFTNL_EXPR_BITWISE_OP)
                || u32_of(sys::NFTNL_EXPR_BITWISE_OP) == 0 /* NFT_BITWISE_BOOL */ =>
        {
            RawExpr::Bitwise {
                sreg: u32_of(sys::NFTNL_EXPR_BITWISE_SREG),
                dreg: u32_of(sys::NFTNL_EXPR_BITWISE_DREG),
                len: u32_of(sys::NFTNL_EXPR_BITWISE_LEN),
                mask: data_of(sys::NFTNL_EXPR_BITWISE_MASK),
                xor: data_of(sys::NFTNL_EXPR_BITWISE_XOR),
            }
        }
        "lookup"
            if !has(sys::NFTNL_EXPR_LOOKUP_FLAGS) || u32_of(sys::NFTNL_EXPR_LOOKUP_FLAGS) == 0 =>
        {
            RawExpr::Lookup {
                sreg: u32_of(sys::NFTNL_EXPR_LOOKUP_SREG),
                dreg: has(sys::NFTNL_EXPR_LOOKUP_DREG)
                    .then(|| u32_of(sys::NFTNL_EXPR_LOOKUP_DREG)),
                set: str_of(sys::NFTNL_EXPR_LOOKUP_SET).unwrap_or_default(),
            }
        }
        "immediate"
            if has(sys::NFTNL_EXPR_IMM_VERDICT)
                && u32_of(sys::NFTNL_EXPR_IMM_DREG) == super::expr::REG_VERDICT =>
        {
            RawExpr::Verdict {
                code: u32_of(sys::NFTNL_EXPR_IMM_VERDICT) as i32,
                chain: str_of(sys::NFTNL_EXPR_IMM_CHAIN),
            }
        }
        "counter" => RawExpr::Counter,
        _ => RawExpr::Other(name),
    }
}

// ------------------------------------------------------------- messages

/// NEWSET / DELSET for one named set.
pub struct SetMsg {
    set: OwnedSet,
}

impl SetMsg {
    /// `attrs: None` is enough for a delete (table and name).
    pub fn new(name: &str, id: u32, attrs: Option<SetAttrs>) -> Result<SetMsg, String> {
        let cname = cstring(name)?;
        // SAFETY: fresh object, setters copy their arguments.
        unsafe {
            let s = OwnedSet(alloc(sys::nftnl_set_alloc()));
            let p = s.as_ptr();
            sys::nftnl_set_set_str(p, sys::NFTNL_SET_TABLE as u16, c"nftpol".as_ptr());
            sys::nftnl_set_set_str(p, sys::NFTNL_SET_NAME as u16, cname.as_ptr());
            sys::nftnl_set_set_u32(p, sys::NFTNL_SET_FAMILY as u16, u32::from(FAMILY_INET));
            if let Some(a) = attrs {
                sys::nftnl_set_set_u32(p, sys::NFTNL_SET_ID as u16, id);
                sys::nftnl_set_set_u32(p, sys::NFTNL_SET_FLAGS as u16, a.flags);
                sys::nftnl_set_set_u32(p, sys::NFTNL_SET_KEY_TYPE as u16, a.key_type);
                sys::nftnl_set_set_u32(p, sys::NFTNL_SET_KEY_LEN as u16, a.key_len);
                if let Some(d) = a.data_type {
                    sys::nftnl_set_set_u32(p, sys::NFTNL_SET_DATA_TYPE as u16, d);
                    sys::nftnl_set_set_u32(p, sys::NFTNL_SET_DATA_LEN as u16, 0);
                }
            }
            Ok(SetMsg { set: s })
        }
    }
}

/// Writes the netlink header of an `inet` add (create, exclusive) or
/// delete message, each acked, and returns it for the payload.
///
/// # Safety
/// `buf` must have room for the header and the payload that follows.
unsafe fn add_or_del_hdr(
    buf: *mut c_void,
    seq: u32,
    msg_type: MsgType,
    new: i32,
    del: i32,
) -> *mut libc::nlmsghdr {
    let (ty, flags) = match msg_type {
        MsgType::Add => (new, libc::NLM_F_CREATE | libc::NLM_F_EXCL | libc::NLM_F_ACK),
        MsgType::Del => (del, libc::NLM_F_ACK),
    };
    // SAFETY: forwarded from the caller's contract.
    unsafe {
        sys::nftnl_nlmsg_build_hdr(
            buf.cast::<c_char>(),
            ty as u16,
            FAMILY_INET,
            flags as u16,
            seq,
        )
    }
}

// SAFETY: writes one message into the batch buffer nftnl hands us, which
// has room for nft_nlmsg_maxsize() bytes.
unsafe impl NlMsg for SetMsg {
    unsafe fn write(&self, buf: *mut c_void, seq: u32, msg_type: MsgType) {
        // EXCL: the diff only creates sets it read back as absent.
        // SAFETY: `buf` has room for the message (the impl's contract);
        // the set object is alive and only read.
        unsafe {
            let h = add_or_del_hdr(
                buf,
                seq,
                msg_type,
                libc::NFT_MSG_NEWSET,
                libc::NFT_MSG_DELSET,
            );
            sys::nftnl_set_nlmsg_build_payload(h, self.set.as_ptr());
        }
    }
}

/// Upper bound of one element's attribute bytes, to keep every element
/// message well under the 64 KiB a netlink attribute can hold.
pub fn elem_size_estimate(e: &RawElem) -> usize {
    48 + e.key.len() + e.jump.as_ref().map_or(0, |c| 24 + c.len())
}

/// Budget of element bytes in one NEWSETELEM/DELSETELEM message.
pub const ELEMS_MSG_BUDGET: usize = 48_000;

/// Netlink attribute types of element messages (linux/netfilter/nf_tables.h).
mod attr {
    pub const LIST_TABLE: u16 = 1;
    pub const LIST_SET: u16 = 2;
    pub const LIST_ELEMENTS: u16 = 3;
    pub const LIST_ELEM: u16 = 1;
    pub const ELEM_KEY: u16 = 1;
    pub const ELEM_DATA: u16 = 2;
    pub const ELEM_FLAGS: u16 = 3;
    pub const DATA_VALUE: u16 = 1;
    pub const DATA_VERDICT: u16 = 2;
    pub const VERDICT_CODE: u16 = 1;
    pub const VERDICT_CHAIN: u16 = 2;
}

/// NEWSETELEM / DELSETELEM for a chunk of elements of one set. The
/// attributes are written here directly: going through libnftnl costs
/// three allocations per element, which was most of the time spent
/// building a 100k-element batch. Round-trip tested against libnftnl's
/// parser below and against the kernel in kernel_tests.
pub struct ElemsMsg {
    /// Attributes after the nfgenmsg header.
    payload: Vec<u8>,
}

impl ElemsMsg {
    pub fn new(set_name: &str, elems: &[RawElem]) -> Result<ElemsMsg, String> {
        cstring(set_name)?;
        let mut b = Vec::with_capacity(64 + elems.iter().map(elem_size_estimate).sum::<usize>());
        put_str(&mut b, attr::LIST_TABLE, "nftpol");
        put_str(&mut b, attr::LIST_SET, set_name);
        let list = nest_start(&mut b, attr::LIST_ELEMENTS);
        for e in elems {
            let el = nest_start(&mut b, attr::LIST_ELEM);
            let key = nest_start(&mut b, attr::ELEM_KEY);
            put_attr(&mut b, attr::DATA_VALUE, &e.key);
            nest_end(&mut b, key)?;
            if e.end {
                put_attr(
                    &mut b,
                    attr::ELEM_FLAGS,
                    &super::elem::ELEM_F_INTERVAL_END.to_be_bytes(),
                );
            }
            if let Some(chain) = &e.jump {
                cstring(chain)?;
                let data = nest_start(&mut b, attr::ELEM_DATA);
                let verdict = nest_start(&mut b, attr::DATA_VERDICT);
                put_attr(&mut b, attr::VERDICT_CODE, &libc::NFT_JUMP.to_be_bytes());
                put_str(&mut b, attr::VERDICT_CHAIN, chain);
                nest_end(&mut b, verdict)?;
                nest_end(&mut b, data)?;
            }
            nest_end(&mut b, el)?;
        }
        nest_end(&mut b, list)?;
        Ok(ElemsMsg { payload: b })
    }
}

// SAFETY: the batch buffer nftnl hands us has room for
// nft_nlmsg_maxsize() bytes; the caller keeps each chunk under the
// budget, far below that.
unsafe impl NlMsg for ElemsMsg {
    unsafe fn write(&self, buf: *mut c_void, seq: u32, msg_type: MsgType) {
        // EXCL: adding an element that exists fails (EEXIST), which is
        // how a stale read-back shows up instead of passing silently.
        // SAFETY: `buf` has room for the header plus the payload (the
        // impl's contract); the copy does not overlap `self.payload`.
        unsafe {
            let h = add_or_del_hdr(
                buf,
                seq,
                msg_type,
                libc::NFT_MSG_NEWSETELEM,
                libc::NFT_MSG_DELSETELEM,
            );
            let at = (*h).nlmsg_len as usize;
            std::ptr::copy_nonoverlapping(
                self.payload.as_ptr(),
                buf.cast::<u8>().add(at),
                self.payload.len(),
            );
            (*h).nlmsg_len += self.payload.len() as u32;
        }
    }
}

// SAFETY: nftnl hands a batch page with room for nft_nlmsg_maxsize()
// bytes; messages written this way (table flags) are a few dozen bytes.
unsafe impl NlMsg for super::wire::ObjMsg {
    unsafe fn write(&self, buf: *mut c_void, seq: u32, msg_type: MsgType) {
        let bytes = self.bytes(seq, matches!(msg_type, MsgType::Add));
        // SAFETY: see the impl; source and destination do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), buf.cast::<u8>(), bytes.len()) }
    }
}

// ---------------------------------------------------------------- dumps

/// A chain as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainInfo {
    /// The table it belongs to: chain dumps are not filtered by table.
    pub table: String,
    pub name: String,
    /// (hook number, priority, policy verdict, type, device) of a base
    /// chain.
    pub base: Option<(u32, i32, u32, String, Option<String>)>,
}

/// A rule as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleInfo {
    pub table: String,
    pub chain: String,
    pub handle: u64,
    pub exprs: Vec<RawExpr>,
    pub userdata: Vec<u8>,
    /// (packets, bytes) of its first `counter` statement: kept out of
    /// `exprs` so that values never make two rules differ.
    pub counter: Option<(u64, u64)>,
}

fn check(rc: c_int, what: &str) -> Result<(), String> {
    if rc < 0 {
        Err(format!("libnftnl could not parse a {what} message"))
    } else {
        Ok(())
    }
}

/// The chain in one NEWCHAIN message.
pub fn parse_chain(m: &Msg) -> Result<ChainInfo, String> {
    let nlh = m.header_ptr();
    // SAFETY: `Msg` holds one complete message (its length checked when
    // it was received) in 4-byte aligned storage that outlives the call;
    // libnftnl only reads it. The chain object is owned by a guard, and
    // the strings it returns are copied before the guard frees it.
    unsafe {
        let c = OwnedChain(alloc(sys::nftnl_chain_alloc()));
        let p = c.as_ptr();
        check(sys::nftnl_chain_nlmsg_parse(nlh, p), "chain")?;
        let s = |a: u32| {
            let v = sys::nftnl_chain_get_str(p, a as u16);
            (!v.is_null()).then(|| CStr::from_ptr(v).to_string_lossy().into_owned())
        };
        let name = s(sys::NFTNL_CHAIN_NAME).ok_or("chain without a name")?;
        let table = s(sys::NFTNL_CHAIN_TABLE).unwrap_or_default();
        let base = sys::nftnl_chain_is_set(p, sys::NFTNL_CHAIN_HOOKNUM as u16).then(|| {
            (
                sys::nftnl_chain_get_u32(p, sys::NFTNL_CHAIN_HOOKNUM as u16),
                sys::nftnl_chain_get_s32(p, sys::NFTNL_CHAIN_PRIO as u16),
                sys::nftnl_chain_get_u32(p, sys::NFTNL_CHAIN_POLICY as u16),
                s(sys::NFTNL_CHAIN_TYPE).unwrap_or_default(),
                sys::nftnl_chain_is_set(p, sys::NFTNL_CHAIN_DEV as u16)
                    .then(|| s(sys::NFTNL_CHAIN_DEV))
                    .flatten(),
            )
        });
        Ok(ChainInfo { table, name, base })
    }
}

/// What `collect_expr` gathers from one rule.
#[derive(Default)]
struct Collected {
    exprs: Vec<RawExpr>,
    counter: Option<(u64, u64)>,
}

unsafe extern "C" fn collect_expr(e: *mut sys::nftnl_expr, data: *mut c_void) -> c_int {
    // SAFETY: data is the &mut Collected passed by parse_rule; e is live for the call.
    let out = unsafe { &mut *data.cast::<Collected>() };
    // SAFETY: `e` belongs to the rule being iterated, alive for the call.
    let expr = unsafe { read_expr(e) };
    if expr == RawExpr::Counter && out.counter.is_none() {
        // SAFETY: getters on the live counter expression `e`; they only read it.
        out.counter = Some(unsafe {
            (
                sys::nftnl_expr_get_u64(e, sys::NFTNL_EXPR_CTR_PACKETS as u16),
                sys::nftnl_expr_get_u64(e, sys::NFTNL_EXPR_CTR_BYTES as u16),
            )
        });
    }
    out.exprs.push(expr);
    0
}

/// The rule in one NEWRULE message.
pub fn parse_rule(m: &Msg) -> Result<RuleInfo, String> {
    let nlh = m.header_ptr();
    // SAFETY: as in `parse_chain`; the expressions are read by
    // `collect_expr` while the rule is alive, and the userdata bytes are
    // copied out before the guard frees the rule.
    unsafe {
        let r = OwnedRule(alloc(sys::nftnl_rule_alloc()));
        let p = r.as_ptr();
        check(sys::nftnl_rule_nlmsg_parse(nlh, p), "rule")?;
        let chain = sys::nftnl_rule_get_str(p, sys::NFTNL_RULE_CHAIN as u16);
        if chain.is_null() {
            return Err("rule without a chain".into());
        }
        let chain = CStr::from_ptr(chain).to_string_lossy().into_owned();
        let handle = sys::nftnl_rule_get_u64(p, sys::NFTNL_RULE_HANDLE as u16);
        let table = sys::nftnl_rule_get_str(p, sys::NFTNL_RULE_TABLE as u16);
        let table = if table.is_null() {
            String::new()
        } else {
            CStr::from_ptr(table).to_string_lossy().into_owned()
        };
        let mut collected = Collected::default();
        sys::nftnl_expr_foreach(
            p,
            Some(collect_expr),
            (&mut collected as *mut Collected).cast(),
        );
        let Collected { exprs, counter } = collected;
        let mut userdata = Vec::new();
        if sys::nftnl_rule_is_set(p, sys::NFTNL_RULE_USERDATA as u16) {
            let mut len = 0u32;
            let d = sys::nftnl_rule_get_data(p, sys::NFTNL_RULE_USERDATA as u16, &mut len);
            if !d.is_null() {
                userdata = std::slice::from_raw_parts(d.cast::<u8>(), len as usize).to_vec();
            }
        }
        Ok(RuleInfo {
            table,
            chain,
            handle,
            exprs,
            userdata,
            counter,
        })
    }
}

/// Table, name and attributes of the set in one NEWSET message.
pub fn parse_set(m: &Msg) -> Result<(String, String, SetAttrs), String> {
    let nlh = m.header_ptr();
    // SAFETY: as in `parse_chain`.
    unsafe {
        let s = OwnedSet(alloc(sys::nftnl_set_alloc()));
        let p = s.as_ptr();
        check(sys::nftnl_set_nlmsg_parse(nlh, p), "set")?;
        let name = sys::nftnl_set_get_str(p, sys::NFTNL_SET_NAME as u16);
        if name.is_null() {
            return Err("set without a name".into());
        }
        let name = CStr::from_ptr(name).to_string_lossy().into_owned();
        let table = sys::nftnl_set_get_str(p, sys::NFTNL_SET_TABLE as u16);
        let table = if table.is_null() {
            String::new()
        } else {
            CStr::from_ptr(table).to_string_lossy().into_owned()
        };
        let u = |a: u32| sys::nftnl_set_get_u32(p, a as u16);
        let attrs = SetAttrs {
            flags: u(sys::NFTNL_SET_FLAGS),
            key_type: u(sys::NFTNL_SET_KEY_TYPE),
            key_len: u(sys::NFTNL_SET_KEY_LEN),
            data_type: sys::nftnl_set_is_set(p, sys::NFTNL_SET_DATA_TYPE as u16)
                .then(|| u(sys::NFTNL_SET_DATA_TYPE)),
        };
        Ok((table, name, attrs))
    }
}

unsafe extern "C" fn collect_elem(e: *mut sys::nftnl_set_elem, data: *mut c_void) -> c_int {
    // SAFETY: data is the &mut Vec passed by parse_elems; e is live.
    let out = unsafe { &mut *data.cast::<Vec<RawElem>>() };
    // SAFETY: getters on the live element `e`; every pointer returned is
    // checked for null and copied before the callback returns.
    unsafe {
        let mut len = 0u32;
        let k = sys::nftnl_set_elem_get(e, sys::NFTNL_SET_ELEM_KEY as u16, &mut len);
        let key = if k.is_null() {
            Vec::new()
        } else {
            std::slice::from_raw_parts(k.cast::<u8>(), len as usize).to_vec()
        };
        let end = sys::nftnl_set_elem_is_set(e, sys::NFTNL_SET_ELEM_FLAGS as u16)
            && sys::nftnl_set_elem_get_u32(e, sys::NFTNL_SET_ELEM_FLAGS as u16)
                & super::elem::ELEM_F_INTERVAL_END
                != 0;
        // Only `jump` is nftpol's; any other verdict (accept, goto) reads
        // as no jump, which decoding a map rejects as foreign.
        let verdict_is_jump = !sys::nftnl_set_elem_is_set(e, sys::NFTNL_SET_ELEM_VERDICT as u16)
            || sys::nftnl_set_elem_get_u32(e, sys::NFTNL_SET_ELEM_VERDICT as u16) as i32
                == libc::NFT_JUMP;
        let jump =
            if verdict_is_jump && sys::nftnl_set_elem_is_set(e, sys::NFTNL_SET_ELEM_CHAIN as u16) {
                let c = sys::nftnl_set_elem_get_str(e, sys::NFTNL_SET_ELEM_CHAIN as u16);
                (!c.is_null()).then(|| CStr::from_ptr(c).to_string_lossy().into_owned())
            } else {
                None
            };
        out.push(RawElem { key, end, jump });
    }
    0
}

/// The elements in one NEWSETELEM message.
pub fn parse_elems(m: &Msg) -> Result<Vec<RawElem>, String> {
    let nlh = m.header_ptr();
    // SAFETY: as in `parse_chain`; `collect_elem` copies each element's
    // key and chain name while the set is alive.
    unsafe {
        let s = OwnedSet(alloc(sys::nftnl_set_alloc()));
        check(
            sys::nftnl_set_elems_nlmsg_parse(nlh, s.as_ptr()),
            "set element",
        )?;
        let mut out: Vec<RawElem> = Vec::new();
        sys::nftnl_set_elem_foreach(
            s.as_ptr(),
            Some(collect_elem),
            (&mut out as *mut Vec<RawElem>).cast(),
        );
        Ok(out)
    }
}

/// The comment in rule userdata (TLV: type 0 = comment, NUL-terminated),
/// parsed in Rust: nftnl writes it through `Rule::set_comment`.
pub fn parse_comment(udata: &[u8]) -> Option<String> {
    let mut rest = udata;
    while rest.len() >= 2 {
        let (ty, len) = (rest[0], usize::from(rest[1]));
        let value = rest.get(2..2 + len)?;
        if u32::from(ty) == sys::NFTNL_UDATA_RULE_COMMENT {
            let s = value.split(|b| *b == 0).next().unwrap_or_default();
            return Some(String::from_utf8_lossy(s).into_owned());
        }
        rest = &rest[2 + len..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::super::expr::{lower_rule, raise_rule};
    use super::*;
    use policy_compiler::ir::{Family, SetKind};

    /// Writes `msg` with nftnl into a buffer and returns it, aligned.
    fn write_msg(msg: &impl NlMsg, ty: MsgType) -> Msg {
        let mut buf = vec![0u32; nftnl::nft_nlmsg_maxsize() as usize / 4];
        // SAFETY: the buffer has the room nftnl promises its writers.
        unsafe { msg.write(buf.as_mut_ptr().cast(), 7, ty) };
        let bytes: Vec<u8> = buf.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let len = u32::from_ne_bytes(bytes[..4].try_into().unwrap()) as usize;
        Msg::from_bytes(&bytes[..len]).expect("one whole message")
    }

    #[test]
    fn rules_survive_nftnl_build_and_parse() {
        let table = nftnl::Table::new(c"nftpol", nftnl::ProtoFamily::Inet);
        let chain = nftnl::Chain::new(c"ing_a_b", &table);
        for rule in super::super::expr::tests::every_shape() {
            let mut r = nftnl::Rule::new(&chain);
            for e in lower_rule(&rule) {
                r.add_expr(&ExprRef(&e));
            }
            if let Some(c) = &rule.comment {
                r.set_comment(cstring(c).unwrap()).unwrap();
            }
            let buf = write_msg(&r, MsgType::Add);
            let info = parse_rule(&buf).unwrap();
            assert_eq!(
                (info.table.as_str(), info.chain.as_str()),
                ("nftpol", "ing_a_b")
            );
            let back = raise_rule(&info.exprs, parse_comment(&info.userdata)).unwrap();
            assert_eq!(back, rule);
        }
    }

    #[test]
    fn sets_and_elements_survive_build_and_parse() {
        let kind = SetKind::Vmap {
            family: Family::Ipv6,
        };
        let attrs = super::super::elem::set_attrs(kind);
        let buf = write_msg(
            &SetMsg::new("ingress_v6", 3, Some(attrs)).unwrap(),
            MsgType::Add,
        );
        let (table, name, back) = parse_set(&buf).unwrap();
        assert_eq!(
            (table.as_str(), name.as_str(), back),
            ("nftpol", "ingress_v6", attrs)
        );
        let elems = vec![
            RawElem {
                key: vec![0xfd; 16],
                end: false,
                jump: Some("ing_x".into()),
            },
            RawElem {
                key: vec![1; 16],
                end: true,
                jump: None,
            },
        ];
        let buf = write_msg(&ElemsMsg::new("ingress_v6", &elems).unwrap(), MsgType::Add);
        let mut back = parse_elems(&buf).unwrap();
        back.sort();
        let mut want = elems;
        want.sort();
        assert_eq!(back, want);
        // Chunks stay under the attribute limit.
        let many: Vec<RawElem> = (0..400u32)
            .map(|i| RawElem {
                key: i.to_be_bytes().to_vec(),
                end: i % 2 == 1,
                jump: None,
            })
            .collect();
        assert!(many.iter().map(elem_size_estimate).sum::<usize>() < ELEMS_MSG_BUDGET);
        let buf = write_msg(&ElemsMsg::new("s", &many).unwrap(), MsgType::Del);
        assert_eq!(parse_elems(&buf).unwrap().len(), 400);
        assert!(ElemsMsg::new("bad\0name", &[]).is_err());
    }

    #[test]
    fn comment_tlv() {
        assert_eq!(parse_comment(b"\x00\x03ab\x00"), Some("ab".into()));
        assert_eq!(parse_comment(b"\x01\x01x\x00\x02c\x00"), Some("c".into()));
        assert_eq!(parse_comment(b"\x00\x09ab"), None);
        assert_eq!(parse_comment(b""), None);
    }
}

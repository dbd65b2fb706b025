//! The libnftnl FFI (through nftnl-sys) for what nftnl's safe API lacks;
//! together with the libc socket calls in `socket.rs` the only `unsafe`
//! code of the netlink layer (docs/UNSAFE.md lists every site). It converts [`RawExpr`] and [`RawElem`]
//! to libnftnl expressions and builds set and element messages (interval
//! end flags, concatenated keys, verdict-map data). Reading the kernel's
//! answers needs no FFI: that is `parse`.
//!
//! Every libnftnl object allocated here is freed by an RAII guard, so an
//! early return cannot leak. The round trip "build with libnftnl, parse
//! in `parse`" is tested without a kernel at the bottom of this file.

use super::elem::{RawElem, SetAttrs};
use super::expr::RawExpr;
use super::wire::{nest_end, nest_start, put_attr, put_str};
use nftnl::nftnl_sys as sys;
use nftnl::{MsgType, NlMsg};
use std::ffi::{c_void, CStr, CString};
use std::os::raw::c_char;
use std::ptr::NonNull;

pub const FAMILY_INET: u16 = libc::NFPROTO_INET as u16;

/// A NUL-terminated copy of an object name; names with NUL cannot exist
/// in nftables.
pub fn cstring(name: &str) -> Result<CString, String> {
    CString::new(name).map_err(|_| format!("name {name:?} contains a NUL byte"))
}

/// Owns one libnftnl set and frees it on drop.
pub struct OwnedSet(NonNull<sys::nftnl_set>);

impl OwnedSet {
    fn as_ptr(&self) -> *mut sys::nftnl_set {
        self.0.as_ptr()
    }
}

impl Drop for OwnedSet {
    fn drop(&mut self) {
        // SAFETY: the pointer came from nftnl_set_alloc and is freed
        // exactly once, here.
        unsafe { sys::nftnl_set_free(self.0.as_ptr()) }
    }
}

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

#[cfg(test)]
mod tests {
    use super::super::expr::{lower_rule, raise_rule};
    use super::super::parse::{parse_comment, parse_elems, parse_rule, parse_set};
    use super::super::socket::Msg;
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

    /// A counter holding values, which nftnl's safe `Counter` cannot set.
    struct CounterWith(u64, u64);

    impl nftnl::expr::Expression for CounterWith {
        fn to_expr(&self, _rule: &nftnl::Rule) -> NonNull<sys::nftnl_expr> {
            // SAFETY: a fresh expression from libnftnl, owned by the rule
            // that takes it; the setters copy the values.
            unsafe {
                let x = alloc(sys::nftnl_expr_alloc(c"counter".as_ptr()));
                sys::nftnl_expr_set_u64(x.as_ptr(), sys::NFTNL_EXPR_CTR_PACKETS as u16, self.0);
                sys::nftnl_expr_set_u64(x.as_ptr(), sys::NFTNL_EXPR_CTR_BYTES as u16, self.1);
                x
            }
        }
    }

    #[test]
    fn counter_values_are_read_beside_the_rule() {
        let table = nftnl::Table::new(c"nftpol", nftnl::ProtoFamily::Inet);
        let chain = nftnl::Chain::new(c"ing_a_b", &table);
        let mut r = nftnl::Rule::new(&chain);
        r.add_expr(&CounterWith(5, 300));
        r.add_expr(&CounterWith(7, 700));
        let info = parse_rule(&write_msg(&r, MsgType::Add)).unwrap();
        assert_eq!(info.exprs, [RawExpr::Counter, RawExpr::Counter]);
        assert_eq!(info.counter, Some((5, 300)), "the first counter's values");
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
}

//! Every FFI call of the netlink layer, the one `unsafe` module of the
//! shipped crate besides one `mallopt` (docs/UNSAFE.md lists each site):
//! libnftnl expressions through nftnl-sys, which nftnl's safe API lacks
//! (verdict-map lookups, registers); copying messages written in safe
//! Rust (`wire`) into nftnl's batch pages; and the socket calls the mnl
//! crate does not offer (`setsockopt`, `recv` with MSG_TRUNC). Set and
//! element messages are built in `wire`, and the kernel's answers are
//! parsed in `parse`: neither needs FFI.
//!
//! Every libnftnl object allocated here is freed by an RAII guard, so an
//! early return cannot leak. The round trip "build with libnftnl, parse
//! in `parse`" is tested without a kernel at the bottom of this file.

use super::expr::RawExpr;
use nftnl::nftnl_sys as sys;
use nftnl::{MsgType, NlMsg};
use std::ffi::{c_int, c_void, CStr, CString};
use std::io;
use std::ptr::NonNull;

/// A NUL-terminated copy of an object name; names with NUL cannot exist
/// in nftables.
pub fn cstring(name: &str) -> Result<CString, String> {
    CString::new(name).map_err(|_| format!("name {name:?} contains a NUL byte"))
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
        RawExpr::Ct { .. } | RawExpr::CtDir { .. } => c"ct",
        RawExpr::Payload { .. } => c"payload",
        RawExpr::Cmp { .. } => c"cmp",
        RawExpr::Bitwise { .. } => c"bitwise",
        RawExpr::Lookup { .. } => c"lookup",
        RawExpr::Verdict { .. } => c"immediate",
        RawExpr::Fib { .. } => c"fib",
        RawExpr::Exthdr { .. } => c"exthdr",
        RawExpr::Counter => c"counter",
        RawExpr::Limit { .. } => c"limit",
        RawExpr::Log { .. } => c"log",
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
        RawExpr::CtDir { key, dir, dreg } => {
            set_u32(sys::NFTNL_EXPR_CT_KEY, *key);
            set_u32(sys::NFTNL_EXPR_CT_DREG, *dreg);
            // SAFETY: as above; NFTNL_EXPR_CT_DIR is a u8 attribute.
            unsafe { sys::nftnl_expr_set_u8(p, sys::NFTNL_EXPR_CT_DIR as u16, *dir) };
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
        RawExpr::Fib {
            flags,
            result,
            dreg,
        } => {
            set_u32(sys::NFTNL_EXPR_FIB_DREG, *dreg);
            set_u32(sys::NFTNL_EXPR_FIB_RESULT, *result);
            set_u32(sys::NFTNL_EXPR_FIB_FLAGS, *flags);
        }
        RawExpr::Exthdr {
            op,
            ty,
            offset,
            len,
            flags,
            dreg,
        } => {
            set_u32(sys::NFTNL_EXPR_EXTHDR_DREG, *dreg);
            // SAFETY: `p` is live; NFTNL_EXPR_EXTHDR_TYPE is a u8 attribute.
            unsafe { sys::nftnl_expr_set_u8(p, sys::NFTNL_EXPR_EXTHDR_TYPE as u16, *ty) };
            set_u32(sys::NFTNL_EXPR_EXTHDR_OFFSET, *offset);
            set_u32(sys::NFTNL_EXPR_EXTHDR_LEN, *len);
            set_u32(sys::NFTNL_EXPR_EXTHDR_FLAGS, *flags);
            set_u32(sys::NFTNL_EXPR_EXTHDR_OP, *op);
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
        RawExpr::Limit {
            rate,
            unit,
            burst,
            kind,
            flags,
        } => {
            // SAFETY: `p` is live; the setters copy the value.
            unsafe {
                sys::nftnl_expr_set_u64(p, sys::NFTNL_EXPR_LIMIT_RATE as u16, *rate);
                sys::nftnl_expr_set_u64(p, sys::NFTNL_EXPR_LIMIT_UNIT as u16, *unit);
            }
            set_u32(sys::NFTNL_EXPR_LIMIT_BURST, *burst);
            set_u32(sys::NFTNL_EXPR_LIMIT_TYPE, *kind);
            set_u32(sys::NFTNL_EXPR_LIMIT_FLAGS, *flags);
        }
        RawExpr::Log {
            prefix,
            group,
            snaplen,
            qthreshold,
            other: _,
        } => {
            let prefix = CString::new(prefix.as_str()).unwrap_or_default();
            // SAFETY: `p` is live; libnftnl copies the NUL-terminated
            // prefix and the values.
            unsafe {
                sys::nftnl_expr_set_str(p, sys::NFTNL_EXPR_LOG_PREFIX as u16, prefix.as_ptr());
                if let Some(g) = group {
                    sys::nftnl_expr_set_u16(p, sys::NFTNL_EXPR_LOG_GROUP as u16, *g);
                }
            }
            // Set only when non-zero, as nft does: a zero snaplen sent
            // still reads back as `snaplen 0`, a different statement.
            if *snaplen != 0 {
                set_u32(sys::NFTNL_EXPR_LOG_SNAPLEN, *snaplen);
            }
            if *qthreshold != 0 {
                // SAFETY: as above.
                unsafe {
                    sys::nftnl_expr_set_u16(p, sys::NFTNL_EXPR_LOG_QTHRESHOLD as u16, *qthreshold)
                };
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

// --------------------------------------------------------------- socket

/// `setsockopt` of one value (a c_int or a timeval) on `fd`: the mnl
/// crate exposes none of the options nftpol sets (NETLINK_CAP_ACK and
/// EXT_ACK, SO_SNDBUFFORCE/SO_RCVBUFFORCE, NETLINK_ADD_MEMBERSHIP,
/// SO_RCVTIMEO).
pub fn setsockopt<T: Copy>(fd: c_int, level: c_int, opt: c_int, v: &T) -> io::Result<()> {
    // SAFETY: passes a pointer to a live `T` and its size; the kernel
    // only reads that many bytes.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (v as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `recv` into `buf`; with MSG_TRUNC in `flags` the datagram's whole
/// length comes back even when it did not fit, which is how a truncated
/// datagram is told from a full one (`mnl::Socket::recv` cannot), and
/// MSG_DONTWAIT drains acks without blocking.
pub fn recv(fd: c_int, buf: &mut [u8], flags: c_int) -> io::Result<usize> {
    // SAFETY: `buf` is a live, writable slice of `buf.len()` bytes, and
    // the kernel writes at most that many.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), flags) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

// SAFETY: an mnl_socket is a heap block holding a file descriptor and
// its bound address, with no thread affinity. `Socket` stays !Sync, so
// one thread at a time uses it; moving it to another thread (the agent's
// reconcile thread) is sound.
unsafe impl Send for super::socket::Socket {}

// ------------------------------------------------------------- messages

// SAFETY: nftnl hands a batch page with room for nft_nlmsg_maxsize()
// bytes; messages written this way (table flags, sets, element chunks
// under `ELEMS_MSG_BUDGET`) stay far below that.
unsafe impl NlMsg for super::wire::ObjMsg {
    unsafe fn write(&self, buf: *mut c_void, seq: u32, msg_type: MsgType) {
        let bytes = self.bytes(seq, matches!(msg_type, MsgType::Add));
        // SAFETY: see the impl; source and destination do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), buf.cast::<u8>(), bytes.len()) }
    }
}

#[cfg(test)]
mod tests {
    use super::super::elem::{RawElem, SetAttrs};
    use super::super::expr::{lower_rule, raise_rule};
    use super::super::parse::{parse_comment, parse_elems, parse_rule, parse_set};
    use super::super::socket::Msg;
    use super::super::wire::{elem_size_estimate, ObjMsg, ELEMS_MSG_BUDGET};
    use super::*;
    use std::os::raw::c_char;

    const FAMILY_INET: u16 = libc::NFPROTO_INET as u16;
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

    /// The set message libnftnl writes for the same attributes.
    fn libnftnl_set_msg(name: &CStr, id: u32, a: Option<SetAttrs>, ty: MsgType) -> Vec<u8> {
        let mut buf = vec![0u32; nftnl::nft_nlmsg_maxsize() as usize / 4];
        let (msg, flags) = match ty {
            MsgType::Add => (
                libc::NFT_MSG_NEWSET,
                libc::NLM_F_CREATE | libc::NLM_F_EXCL | libc::NLM_F_ACK,
            ),
            MsgType::Del => (libc::NFT_MSG_DELSET, libc::NLM_F_ACK),
        };
        // SAFETY: a fresh set, freed at the end; setters copy their
        // arguments; the buffer has the room libnftnl's writers need.
        unsafe {
            let s = alloc(sys::nftnl_set_alloc()).as_ptr();
            sys::nftnl_set_set_str(s, sys::NFTNL_SET_TABLE as u16, c"nftpol".as_ptr());
            sys::nftnl_set_set_str(s, sys::NFTNL_SET_NAME as u16, name.as_ptr());
            sys::nftnl_set_set_u32(s, sys::NFTNL_SET_FAMILY as u16, u32::from(FAMILY_INET));
            if let Some(a) = a {
                sys::nftnl_set_set_u32(s, sys::NFTNL_SET_ID as u16, id);
                sys::nftnl_set_set_u32(s, sys::NFTNL_SET_FLAGS as u16, a.flags);
                sys::nftnl_set_set_u32(s, sys::NFTNL_SET_KEY_TYPE as u16, a.key_type);
                sys::nftnl_set_set_u32(s, sys::NFTNL_SET_KEY_LEN as u16, a.key_len);
                if let Some(d) = a.data_type {
                    sys::nftnl_set_set_u32(s, sys::NFTNL_SET_DATA_TYPE as u16, d);
                    sys::nftnl_set_set_u32(s, sys::NFTNL_SET_DATA_LEN as u16, 0);
                }
            }
            let h = sys::nftnl_nlmsg_build_hdr(
                buf.as_mut_ptr().cast::<c_char>(),
                msg as u16,
                FAMILY_INET,
                flags as u16,
                7,
            );
            sys::nftnl_set_nlmsg_build_payload(h, s);
            sys::nftnl_set_free(s);
        }
        let bytes: Vec<u8> = buf.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let len = u32::from_ne_bytes(bytes[..4].try_into().unwrap()) as usize;
        bytes[..len].to_vec()
    }

    #[test]
    fn set_messages_are_the_bytes_libnftnl_writes() {
        for kind in policy_compiler::fixture::SET_KINDS {
            let a = super::super::elem::set_attrs(kind);
            let ours = ObjMsg::set("nftpol", "pod4_x", 9, Some(a)).unwrap();
            let want = libnftnl_set_msg(c"pod4_x", 9, Some(a), MsgType::Add);
            assert_eq!(write_msg(&ours, MsgType::Add).bytes(), want, "{kind:?}");
        }
        let ours = ObjMsg::set("nftpol", "pod4_x", 0, None).unwrap();
        let want = libnftnl_set_msg(c"pod4_x", 0, None, MsgType::Del);
        assert_eq!(write_msg(&ours, MsgType::Del).bytes(), want);
    }

    #[test]
    fn sets_and_elements_survive_build_and_parse() {
        let kind = SetKind::Vmap {
            family: Family::Ipv6,
        };
        let attrs = super::super::elem::set_attrs(kind);
        let buf = write_msg(
            &ObjMsg::set("nftpol", "ingress_v6", 3, Some(attrs)).unwrap(),
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
        let buf = write_msg(
            &ObjMsg::elements("nftpol", "ingress_v6", &elems).unwrap(),
            MsgType::Add,
        );
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
        let buf = write_msg(
            &ObjMsg::elements("nftpol", "s", &many).unwrap(),
            MsgType::Del,
        );
        assert_eq!(parse_elems(&buf).unwrap().len(), 400);
        assert!(ObjMsg::elements("nftpol", "bad\0name", &[]).is_err());
        assert!(ObjMsg::set("nftpol", "bad\0name", 0, None).is_err());
    }
}

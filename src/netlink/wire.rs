//! The nftables netlink wire format written and read in safe Rust: message
//! headers, attributes (TLVs, nested ones included), the dump requests of
//! the read-back, and the walk over a received message's attributes. None
//! of this needs libnftnl, so none of it is `unsafe`; `raw` only copies
//! finished bytes into nftnl's batch pages.

use super::elem::{RawElem, SetAttrs, ELEM_F_INTERVAL_END};
use super::parse::nfta;

/// nfnetlink subsystem of nftables, the high byte of every message type.
pub const NFT_MSG_BASE: u16 = (libc::NFNL_SUBSYS_NFTABLES as u16) << 8;
pub const FAMILY_INET: u8 = libc::NFPROTO_INET as u8;
/// The family of the guard table.
pub const FAMILY_NETDEV: u8 = libc::NFPROTO_NETDEV as u8;
/// `struct nlmsghdr`.
pub const NLMSG_HDR: usize = 16;
/// `struct nfgenmsg` (family, version, resource id).
pub const NFGEN_HDR: usize = 4;
const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;

/// The first attribute of every nftables object message (table, chain,
/// rule, set, element list, object, flowtable) is the name of its table.
pub const ATTR_TABLE: u16 = 1;
/// `NFTA_TABLE_FLAGS` (big-endian u32).
pub const TABLE_ATTR_FLAGS: u16 = 2;
/// `NFTA_SET_ELEM_LIST_SET`: the set an element dump is about.
const ELEM_LIST_SET: u16 = 2;
/// linux/netfilter/nf_tables.h message types the libc crate lacks.
pub const NFT_MSG_NEWFLOWTABLE: i32 = 22;
pub const NFT_MSG_GETFLOWTABLE: i32 = 23;
pub const NFT_MSG_DELFLOWTABLE: i32 = 24;

/// Appends one netlink attribute, padded to 4 bytes.
pub fn put_attr(buf: &mut Vec<u8>, ty: u16, data: &[u8]) {
    let len = 4 + data.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(data);
    buf.resize(buf.len().next_multiple_of(4), 0);
}

/// Appends a NUL-terminated string attribute.
pub fn put_str(buf: &mut Vec<u8>, ty: u16, s: &str) {
    let mut z = Vec::with_capacity(s.len() + 1);
    z.extend_from_slice(s.as_bytes());
    z.push(0);
    put_attr(buf, ty, &z);
}

/// Opens a nested attribute; close it with [`nest_end`].
pub fn nest_start(buf: &mut Vec<u8>, ty: u16) -> usize {
    let at = buf.len();
    buf.extend_from_slice(&0u16.to_ne_bytes());
    buf.extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
    at
}

pub fn nest_end(buf: &mut [u8], at: usize) -> Result<(), String> {
    let len = u16::try_from(buf.len() - at).map_err(|_| "attribute over 64 KiB".to_string())?;
    buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    Ok(())
}

/// A whole nftables message: netlink header, `nfgenmsg` for the inet
/// family, then `attrs`.
pub fn message(msg: i32, flags: u16, seq: u32, attrs: &[u8]) -> Vec<u8> {
    nfnl_message(NFT_MSG_BASE | msg as u16, flags, seq, FAMILY_INET, attrs)
}

/// A whole nfnetlink message of any subsystem (`ty` carries the subsystem
/// in its high byte): netlink header, `nfgenmsg` for `family`, `attrs`.
pub fn nfnl_message(ty: u16, flags: u16, seq: u32, family: u8, attrs: &[u8]) -> Vec<u8> {
    let len = NLMSG_HDR + NFGEN_HDR + attrs.len();
    let mut b = Vec::with_capacity(len);
    b.extend_from_slice(&(len as u32).to_ne_bytes());
    b.extend_from_slice(&ty.to_ne_bytes());
    b.extend_from_slice(&flags.to_ne_bytes());
    b.extend_from_slice(&seq.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
    b.extend_from_slice(&[family, libc::NFNETLINK_V0 as u8, 0, 0]);
    b.extend_from_slice(attrs);
    b
}

/// One message of a batch whose attributes are written here rather than
/// by libnftnl: `new` or `del` type, header flags for each, attributes.
/// `raw` copies [`ObjMsg::bytes`] into nftnl's batch pages.
#[derive(Clone, Debug)]
pub struct ObjMsg {
    /// The table family the message is for (`inet` but for the guard's
    /// table flags).
    pub family: u8,
    pub new: (i32, u16),
    pub del: (i32, u16),
    pub attrs: Vec<u8>,
}

impl ObjMsg {
    /// NEWTABLE of the existing table with new flags (an update: no
    /// NLM_F_EXCL).
    pub fn table_flags(table: &str, flags: u32) -> ObjMsg {
        Self::table_flags_in(FAMILY_INET, table, flags)
    }

    /// [`ObjMsg::table_flags`] of a table of `family`.
    pub fn table_flags_in(family: u8, table: &str, flags: u32) -> ObjMsg {
        let mut attrs = Vec::with_capacity(32);
        put_str(&mut attrs, ATTR_TABLE, table);
        put_attr(&mut attrs, TABLE_ATTR_FLAGS, &flags.to_be_bytes());
        let ack = libc::NLM_F_ACK as u16;
        ObjMsg {
            family,
            new: (libc::NFT_MSG_NEWTABLE, ack),
            del: (libc::NFT_MSG_DELTABLE, ack),
            attrs,
        }
    }

    /// The whole message as the add (`true`) or the delete.
    pub fn bytes(&self, seq: u32, add: bool) -> Vec<u8> {
        let (ty, flags) = if add { self.new } else { self.del };
        let flags = libc::NLM_F_REQUEST as u16 | flags;
        nfnl_message(
            NFT_MSG_BASE | ty as u16,
            flags,
            seq,
            self.family,
            &self.attrs,
        )
    }
}

/// Upper bound of one element's attribute bytes, to keep every element
/// message well under the 64 KiB a netlink attribute can hold.
pub fn elem_size_estimate(e: &RawElem) -> usize {
    48 + e.key.len() + e.jump.as_ref().map_or(0, |c| 24 + c.len())
}

/// Budget of element bytes in one NEWSETELEM/DELSETELEM message.
pub const ELEMS_MSG_BUDGET: usize = 48_000;

fn no_nul(name: &str) -> Result<(), String> {
    if name.contains('\0') {
        return Err(format!("name {name:?} contains a NUL byte"));
    }
    Ok(())
}

/// Adds create objects exclusively (adding an existing set or element
/// fails with EEXIST, which is how a stale read-back shows up instead of
/// passing silently); every message is acked.
const ADD_FLAGS: u16 = (libc::NLM_F_CREATE | libc::NLM_F_EXCL | libc::NLM_F_ACK) as u16;
const DEL_FLAGS: u16 = libc::NLM_F_ACK as u16;

impl ObjMsg {
    /// NEWSET / DELSET of one set, with the attributes libnftnl writes
    /// for it in the same order; `attrs: None` is enough for a delete.
    pub fn set(
        table: &str,
        name: &str,
        id: u32,
        attrs: Option<SetAttrs>,
    ) -> Result<ObjMsg, String> {
        no_nul(name)?;
        let mut b = Vec::with_capacity(96);
        put_str(&mut b, ATTR_TABLE, table);
        put_str(&mut b, nfta::SET_NAME, name);
        if let Some(a) = attrs {
            put_attr(&mut b, nfta::SET_FLAGS, &a.flags.to_be_bytes());
            put_attr(&mut b, nfta::SET_KEY_TYPE, &a.key_type.to_be_bytes());
            put_attr(&mut b, nfta::SET_KEY_LEN, &a.key_len.to_be_bytes());
            if let Some(d) = a.data_type {
                put_attr(&mut b, nfta::SET_DATA_TYPE, &d.to_be_bytes());
                put_attr(&mut b, nfta::SET_DATA_LEN, &0u32.to_be_bytes());
            }
            put_attr(&mut b, nfta::SET_ID, &id.to_be_bytes());
        }
        Ok(ObjMsg {
            family: FAMILY_INET,
            new: (libc::NFT_MSG_NEWSET, ADD_FLAGS),
            del: (libc::NFT_MSG_DELSET, DEL_FLAGS),
            attrs: b,
        })
    }

    /// NEWSETELEM / DELSETELEM for a chunk of elements of one set.
    /// Written here rather than by libnftnl, which costs three
    /// allocations per element: most of the time spent building a
    /// 100k-element batch.
    pub fn elements(table: &str, set: &str, elems: &[RawElem]) -> Result<ObjMsg, String> {
        no_nul(set)?;
        let mut b = Vec::with_capacity(64 + elems.iter().map(elem_size_estimate).sum::<usize>());
        put_str(&mut b, ATTR_TABLE, table);
        put_str(&mut b, nfta::LIST_SET, set);
        let list = nest_start(&mut b, nfta::ELEM_LIST_ELEMENTS);
        for e in elems {
            let el = nest_start(&mut b, nfta::LIST_ELEM);
            let key = nest_start(&mut b, nfta::ELEM_KEY);
            put_attr(&mut b, nfta::DATA_VALUE, &e.key);
            nest_end(&mut b, key)?;
            if e.end {
                put_attr(&mut b, nfta::ELEM_FLAGS, &ELEM_F_INTERVAL_END.to_be_bytes());
            }
            if let Some(chain) = &e.jump {
                no_nul(chain)?;
                let data = nest_start(&mut b, nfta::ELEM_DATA);
                let verdict = nest_start(&mut b, nfta::DATA_VERDICT);
                put_attr(&mut b, nfta::VERDICT_CODE, &libc::NFT_JUMP.to_be_bytes());
                put_str(&mut b, nfta::VERDICT_CHAIN, chain);
                nest_end(&mut b, verdict)?;
                nest_end(&mut b, data)?;
            }
            nest_end(&mut b, el)?;
        }
        nest_end(&mut b, list)?;
        Ok(ObjMsg {
            family: FAMILY_INET,
            new: (libc::NFT_MSG_NEWSETELEM, ADD_FLAGS),
            del: (libc::NFT_MSG_DELSETELEM, DEL_FLAGS),
            attrs: b,
        })
    }
}

/// What a read-back request asks the kernel for. Every request names the
/// `inet nftpol` table.
#[derive(Clone, Copy, Debug)]
pub enum Dump<'a> {
    /// The table itself (a plain GET: ENOENT when absent).
    Table,
    Chains,
    Rules,
    Sets,
    /// The elements of one set.
    Elements(&'a str),
    /// Stateful objects (counters, quotas, ct helpers, ...); nftpol
    /// creates none, so any is foreign.
    Objects,
    /// Flowtables; nftpol creates none either.
    Flowtables,
}

impl Dump<'_> {
    /// The GET message type this asks with, and the NEW type of its answers.
    pub fn types(self) -> (i32, i32) {
        match self {
            Dump::Table => (libc::NFT_MSG_GETTABLE, libc::NFT_MSG_NEWTABLE),
            Dump::Chains => (libc::NFT_MSG_GETCHAIN, libc::NFT_MSG_NEWCHAIN),
            Dump::Rules => (libc::NFT_MSG_GETRULE, libc::NFT_MSG_NEWRULE),
            Dump::Sets => (libc::NFT_MSG_GETSET, libc::NFT_MSG_NEWSET),
            Dump::Elements(_) => (libc::NFT_MSG_GETSETELEM, libc::NFT_MSG_NEWSETELEM),
            Dump::Objects => (libc::NFT_MSG_GETOBJ, libc::NFT_MSG_NEWOBJ),
            Dump::Flowtables => (NFT_MSG_GETFLOWTABLE, NFT_MSG_NEWFLOWTABLE),
        }
    }

    /// The request message.
    pub fn request(self, table: &str, seq: u32) -> Vec<u8> {
        self.request_in(FAMILY_INET, table, seq)
    }

    /// [`Dump::request`] for a table of `family`.
    pub fn request_in(self, family: u8, table: &str, seq: u32) -> Vec<u8> {
        let mut attrs = Vec::with_capacity(64);
        put_str(&mut attrs, ATTR_TABLE, table);
        if let Dump::Elements(set) = self {
            put_str(&mut attrs, ELEM_LIST_SET, set);
        }
        let flags = match self {
            Dump::Table => libc::NLM_F_REQUEST | libc::NLM_F_ACK,
            _ => libc::NLM_F_REQUEST | libc::NLM_F_DUMP,
        };
        nfnl_message(
            NFT_MSG_BASE | self.types().0 as u16,
            flags as u16,
            seq,
            family,
            &attrs,
        )
    }
}

/// The attributes of a message body (after the `nfgenmsg`), as
/// `(type, value)`; the nested and byte-order flags are masked off the
/// type. Stops at the first malformed attribute.
pub fn attrs(body: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut rest = body;
    std::iter::from_fn(move || {
        if rest.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([rest[0], rest[1]]));
        let ty = u16::from_ne_bytes([rest[2], rest[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > rest.len() {
            return None;
        }
        let value = &rest[4..len];
        rest = &rest[len.next_multiple_of(4).min(rest.len())..];
        Some((ty, value))
    })
}

/// A string attribute's value without its NUL.
pub fn str_of(value: &[u8]) -> &str {
    let s = value.split(|b| *b == 0).next().unwrap_or_default();
    std::str::from_utf8(s).unwrap_or_default()
}

/// A big-endian u32 attribute's value.
pub fn be32_of(value: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(value.get(..4)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use policy_compiler::ir::TABLE_F_DORMANT;

    #[test]
    fn attributes_round_trip_with_padding_and_nesting() {
        let mut b = Vec::new();
        put_str(&mut b, ATTR_TABLE, "nftpol");
        let n = nest_start(&mut b, 3);
        put_attr(&mut b, 1, &7u32.to_be_bytes());
        nest_end(&mut b, n).unwrap();
        put_attr(&mut b, TABLE_ATTR_FLAGS, &TABLE_F_DORMANT.to_be_bytes());
        assert_eq!(b.len() % 4, 0);
        let got: Vec<(u16, Vec<u8>)> = attrs(&b).map(|(t, v)| (t, v.to_vec())).collect();
        assert_eq!(got.len(), 3);
        assert_eq!(str_of(&got[0].1), "nftpol");
        assert_eq!(got[1].0, 3, "nested flag masked off");
        assert_eq!(
            attrs(&got[1].1).next().map(|(t, v)| (t, be32_of(v))),
            Some((1, Some(7)))
        );
        assert_eq!(be32_of(&got[2].1), Some(TABLE_F_DORMANT));
        // A truncated attribute ends the walk instead of reading past it.
        assert_eq!(attrs(&b[..b.len() - 2]).count(), 2);
    }

    #[test]
    fn dump_requests_match_libnftnl_layout() {
        let r = Dump::Elements("pod4_a").request("nftpol", 9);
        assert_eq!(
            r.len() as u32,
            u32::from_ne_bytes(r[..4].try_into().unwrap())
        );
        assert_eq!(
            u16::from_ne_bytes([r[4], r[5]]),
            NFT_MSG_BASE | libc::NFT_MSG_GETSETELEM as u16
        );
        let flags = u16::from_ne_bytes([r[6], r[7]]);
        assert_ne!(flags & libc::NLM_F_DUMP as u16, 0);
        assert_eq!(u32::from_ne_bytes(r[8..12].try_into().unwrap()), 9);
        assert_eq!(r[16], FAMILY_INET);
        let names: Vec<&str> = attrs(&r[20..]).map(|(_, v)| str_of(v)).collect();
        assert_eq!(names, ["nftpol", "pod4_a"]);
        let t = Dump::Table.request("nftpol", 1);
        assert_eq!(
            u16::from_ne_bytes([t[6], t[7]]) & libc::NLM_F_DUMP as u16,
            0
        );
    }
}

//! The kernel's dump answers parsed in safe Rust: chains, rules with
//! their expressions, sets and set elements, read from the attribute
//! layout of linux/netfilter/nf_tables.h into the values `read` decodes.
//!
//! libnftnl's parsers are not used for this: on an attribute of the wrong
//! size they print "nf_tables kernel ABI is broken" and call `exit()`,
//! which would take the agent down on one malformed message. Here every
//! malformed attribute is an error naming what was being read, and the
//! caller reports the table as undecodable (which `apply` repairs).
//! Values read are the ones libnftnl would give: absent numbers read as
//! 0, strings end at their first NUL, numbers are big-endian.

use super::elem::{RawElem, SetAttrs, ELEM_F_INTERVAL_END};
use super::expr::{RawExpr, REG_VERDICT};
use super::socket::Msg;

/// Attribute numbers (linux/netfilter/nf_tables.h), for the messages
/// `wire` writes too.
pub(crate) mod nfta {
    pub const CHAIN_TABLE: u16 = 1;
    pub const CHAIN_NAME: u16 = 3;
    pub const CHAIN_HOOK: u16 = 4;
    pub const CHAIN_POLICY: u16 = 5;
    pub const CHAIN_TYPE: u16 = 7;
    pub const HOOK_HOOKNUM: u16 = 1;
    pub const HOOK_PRIORITY: u16 = 2;
    pub const HOOK_DEV: u16 = 3;

    pub const RULE_TABLE: u16 = 1;
    pub const RULE_CHAIN: u16 = 2;
    pub const RULE_HANDLE: u16 = 3;
    pub const RULE_EXPRESSIONS: u16 = 4;
    pub const RULE_USERDATA: u16 = 7;
    pub const LIST_ELEM: u16 = 1;
    pub const EXPR_NAME: u16 = 1;
    pub const EXPR_DATA: u16 = 2;

    pub const SET_TABLE: u16 = 1;
    pub const SET_NAME: u16 = 2;
    pub const SET_FLAGS: u16 = 3;
    pub const SET_KEY_TYPE: u16 = 4;
    pub const SET_KEY_LEN: u16 = 5;
    pub const SET_DATA_TYPE: u16 = 6;
    pub const SET_DATA_LEN: u16 = 7;
    pub const SET_ID: u16 = 10;

    pub const LIST_SET: u16 = 2;
    pub const ELEM_LIST_ELEMENTS: u16 = 3;
    pub const ELEM_KEY: u16 = 1;
    pub const ELEM_DATA: u16 = 2;
    pub const ELEM_FLAGS: u16 = 3;
    pub const DATA_VALUE: u16 = 1;
    pub const DATA_VERDICT: u16 = 2;
    pub const VERDICT_CODE: u16 = 1;
    pub const VERDICT_CHAIN: u16 = 2;

    // Expression data, per expression.
    pub const META_DREG: u16 = 1;
    pub const META_KEY: u16 = 2;
    pub const CT_DREG: u16 = 1;
    pub const CT_KEY: u16 = 2;
    pub const CT_DIRECTION: u16 = 3;
    pub const PAYLOAD_DREG: u16 = 1;
    pub const PAYLOAD_BASE: u16 = 2;
    pub const PAYLOAD_OFFSET: u16 = 3;
    pub const PAYLOAD_LEN: u16 = 4;
    pub const CMP_SREG: u16 = 1;
    pub const CMP_OP: u16 = 2;
    pub const CMP_DATA: u16 = 3;
    pub const BITWISE_SREG: u16 = 1;
    pub const BITWISE_DREG: u16 = 2;
    pub const BITWISE_LEN: u16 = 3;
    pub const BITWISE_MASK: u16 = 4;
    pub const BITWISE_XOR: u16 = 5;
    pub const BITWISE_OP: u16 = 6;
    pub const LOOKUP_SET: u16 = 1;
    pub const LOOKUP_SREG: u16 = 2;
    pub const LOOKUP_DREG: u16 = 3;
    pub const LOOKUP_FLAGS: u16 = 5;
    pub const IMMEDIATE_DREG: u16 = 1;
    pub const IMMEDIATE_DATA: u16 = 2;
    pub const COUNTER_BYTES: u16 = 1;
    pub const COUNTER_PACKETS: u16 = 2;
    pub const LIMIT_RATE: u16 = 1;
    pub const LIMIT_UNIT: u16 = 2;
    pub const LIMIT_BURST: u16 = 3;
    pub const LIMIT_TYPE: u16 = 4;
    pub const LIMIT_FLAGS: u16 = 5;
    pub const LOG_GROUP: u16 = 1;
    pub const LOG_PREFIX: u16 = 2;
    pub const LOG_SNAPLEN: u16 = 3;
    pub const LOG_QTHRESHOLD: u16 = 4;
    pub const LOG_LEVEL: u16 = 5;
    pub const LOG_FLAGS: u16 = 6;
    pub const FIB_DREG: u16 = 1;
    pub const FIB_RESULT: u16 = 2;
    pub const FIB_FLAGS: u16 = 3;
    pub const EXTHDR_DREG: u16 = 1;
    pub const EXTHDR_TYPE: u16 = 2;
    pub const EXTHDR_OFFSET: u16 = 3;
    pub const EXTHDR_LEN: u16 = 4;
    pub const EXTHDR_FLAGS: u16 = 5;
    pub const EXTHDR_OP: u16 = 6;
    pub const EXTHDR_SREG: u16 = 7;
}

const NLA_TYPE_MASK: u16 = 0x3fff;

/// The attributes of one message body or nest, in order. Where a type
/// repeats, the last one counts, as in libnftnl.
struct Attrs<'a> {
    what: &'a str,
    list: Vec<(u16, &'a [u8])>,
}

impl<'a> Attrs<'a> {
    /// Every attribute of `b`; an error at the first malformed one.
    fn of(b: &'a [u8], what: &'a str) -> Result<Attrs<'a>, String> {
        let mut list = Vec::new();
        let mut rest = b;
        while !rest.is_empty() {
            if rest.len() < 4 {
                return Err(format!("{what}: {} stray bytes", rest.len()));
            }
            let len = usize::from(u16::from_ne_bytes([rest[0], rest[1]]));
            let ty = u16::from_ne_bytes([rest[2], rest[3]]) & NLA_TYPE_MASK;
            if len < 4 || len > rest.len() {
                return Err(format!(
                    "{what}: attribute {ty} of length {len} in {} bytes",
                    rest.len()
                ));
            }
            list.push((ty, &rest[4..len]));
            rest = &rest[len.next_multiple_of(4).min(rest.len())..];
        }
        Ok(Attrs { what, list })
    }

    fn get(&self, ty: u16) -> Option<&'a [u8]> {
        self.list
            .iter()
            .rev()
            .find(|(t, _)| *t == ty)
            .map(|(_, v)| *v)
    }

    fn has(&self, ty: u16) -> bool {
        self.get(ty).is_some()
    }

    fn u32(&self, ty: u16) -> Result<Option<u32>, String> {
        self.get(ty)
            .map(|v| {
                <[u8; 4]>::try_from(v).map(u32::from_be_bytes).map_err(|_| {
                    format!(
                        "{}: attribute {ty} has {} bytes, want 4",
                        self.what,
                        v.len()
                    )
                })
            })
            .transpose()
    }

    fn u8(&self, ty: u16) -> Result<Option<u8>, String> {
        self.get(ty)
            .map(|v| match v {
                [b] => Ok(*b),
                _ => Err(format!(
                    "{}: attribute {ty} has {} bytes, want 1",
                    self.what,
                    v.len()
                )),
            })
            .transpose()
    }

    /// A number that reads as 0 when absent.
    fn u32_or_0(&self, ty: u16) -> Result<u32, String> {
        Ok(self.u32(ty)?.unwrap_or(0))
    }

    fn u16(&self, ty: u16) -> Result<Option<u16>, String> {
        self.get(ty)
            .map(|v| {
                <[u8; 2]>::try_from(v).map(u16::from_be_bytes).map_err(|_| {
                    format!(
                        "{}: attribute {ty} has {} bytes, want 2",
                        self.what,
                        v.len()
                    )
                })
            })
            .transpose()
    }

    fn u64(&self, ty: u16) -> Result<Option<u64>, String> {
        self.get(ty)
            .map(|v| {
                <[u8; 8]>::try_from(v).map(u64::from_be_bytes).map_err(|_| {
                    format!(
                        "{}: attribute {ty} has {} bytes, want 8",
                        self.what,
                        v.len()
                    )
                })
            })
            .transpose()
    }

    fn string(&self, ty: u16) -> Result<Option<String>, String> {
        self.get(ty)
            .map(|v| {
                if v.is_empty() {
                    return Err(format!("{}: empty string attribute {ty}", self.what));
                }
                let s = v.split(|b| *b == 0).next().unwrap_or_default();
                Ok(String::from_utf8_lossy(s).into_owned())
            })
            .transpose()
    }

    fn nested(&self, ty: u16, what: &'a str) -> Result<Option<Attrs<'a>>, String> {
        self.get(ty).map(|v| Attrs::of(v, what)).transpose()
    }

    /// `NFTA_DATA_VALUE` inside the nest `ty` (empty when absent).
    fn data_value(&self, ty: u16, what: &'a str) -> Result<Vec<u8>, String> {
        Ok(match self.nested(ty, what)? {
            Some(d) => d.get(nfta::DATA_VALUE).unwrap_or_default().to_vec(),
            None => Vec::new(),
        })
    }

    /// `NFTA_DATA_VERDICT` inside the nest `ty`: (code, chain).
    fn verdict(&self, ty: u16, what: &'a str) -> Result<Option<(i32, Option<String>)>, String> {
        let Some(data) = self.nested(ty, what)? else {
            return Ok(None);
        };
        let Some(v) = data.nested(nfta::DATA_VERDICT, what)? else {
            return Ok(None);
        };
        let code = v
            .u32(nfta::VERDICT_CODE)?
            .ok_or_else(|| format!("{what}: verdict without a code"))?;
        Ok(Some((code as i32, v.string(nfta::VERDICT_CHAIN)?)))
    }
}

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

/// The chain in one NEWCHAIN message.
pub fn parse_chain(m: &Msg) -> Result<ChainInfo, String> {
    let a = Attrs::of(m.body(), "chain")?;
    let name = a.string(nfta::CHAIN_NAME)?.ok_or("chain without a name")?;
    let table = a.string(nfta::CHAIN_TABLE)?.unwrap_or_default();
    let base = match a.nested(nfta::CHAIN_HOOK, "chain hook")? {
        Some(h) => match h.u32(nfta::HOOK_HOOKNUM)? {
            Some(hooknum) => Some((
                hooknum,
                h.u32_or_0(nfta::HOOK_PRIORITY)? as i32,
                a.u32_or_0(nfta::CHAIN_POLICY)?,
                a.string(nfta::CHAIN_TYPE)?.unwrap_or_default(),
                h.string(nfta::HOOK_DEV)?,
            )),
            None => None,
        },
        None => None,
    };
    Ok(ChainInfo { table, name, base })
}

/// One expression of a rule (anything nftpol never writes is `Other`),
/// and for a counter its (packets, bytes).
fn parse_expr(elem: &[u8]) -> Result<(RawExpr, Option<(u64, u64)>), String> {
    let e = Attrs::of(elem, "expression")?;
    let name = e
        .string(nfta::EXPR_NAME)?
        .ok_or("expression without a name")?;
    let d = match e.nested(nfta::EXPR_DATA, "expression data")? {
        Some(d) => d,
        None => Attrs::of(&[], "expression data")?,
    };
    use nfta::*;
    if name == "counter" {
        let values = (
            d.u64(COUNTER_PACKETS)?.unwrap_or(0),
            d.u64(COUNTER_BYTES)?.unwrap_or(0),
        );
        return Ok((RawExpr::Counter, Some(values)));
    }
    let expr = match name.as_str() {
        "meta" if d.has(META_DREG) => RawExpr::Meta {
            key: d.u32_or_0(META_KEY)?,
            dreg: d.u32_or_0(META_DREG)?,
        },
        "ct" if d.has(CT_DREG) && !d.has(CT_DIRECTION) => RawExpr::Ct {
            key: d.u32_or_0(CT_KEY)?,
            dreg: d.u32_or_0(CT_DREG)?,
        },
        "ct" if d.has(CT_DREG) => RawExpr::CtDir {
            key: d.u32_or_0(CT_KEY)?,
            dir: d.u8(CT_DIRECTION)?.unwrap_or(0),
            dreg: d.u32_or_0(CT_DREG)?,
        },
        "payload" if d.has(PAYLOAD_DREG) => RawExpr::Payload {
            base: d.u32_or_0(PAYLOAD_BASE)?,
            offset: d.u32_or_0(PAYLOAD_OFFSET)?,
            len: d.u32_or_0(PAYLOAD_LEN)?,
            dreg: d.u32_or_0(PAYLOAD_DREG)?,
        },
        "cmp" => RawExpr::Cmp {
            sreg: d.u32_or_0(CMP_SREG)?,
            op: d.u32_or_0(CMP_OP)?,
            data: d.data_value(CMP_DATA, "cmp data")?,
        },
        // Only the boolean bitwise (op 0) is nftpol's; shifts are not.
        "bitwise" if d.u32_or_0(BITWISE_OP)? == 0 => RawExpr::Bitwise {
            sreg: d.u32_or_0(BITWISE_SREG)?,
            dreg: d.u32_or_0(BITWISE_DREG)?,
            len: d.u32_or_0(BITWISE_LEN)?,
            mask: d.data_value(BITWISE_MASK, "bitwise mask")?,
            xor: d.data_value(BITWISE_XOR, "bitwise xor")?,
        },
        "lookup" if d.u32_or_0(LOOKUP_FLAGS)? == 0 => RawExpr::Lookup {
            sreg: d.u32_or_0(LOOKUP_SREG)?,
            dreg: d.u32(LOOKUP_DREG)?,
            set: d.string(LOOKUP_SET)?.unwrap_or_default(),
        },
        "immediate" if d.u32_or_0(IMMEDIATE_DREG)? == REG_VERDICT => {
            match d.verdict(IMMEDIATE_DATA, "immediate data")? {
                Some((code, chain)) => RawExpr::Verdict { code, chain },
                None => RawExpr::Other(name),
            }
        }
        "fib" if d.has(FIB_DREG) => RawExpr::Fib {
            flags: d.u32_or_0(FIB_FLAGS)?,
            result: d.u32_or_0(FIB_RESULT)?,
            dreg: d.u32_or_0(FIB_DREG)?,
        },
        // A load only: an exthdr that writes (sreg) is not nftpol's.
        "exthdr" if d.has(EXTHDR_DREG) && !d.has(EXTHDR_SREG) => RawExpr::Exthdr {
            op: d.u32_or_0(EXTHDR_OP)?,
            ty: d.u8(EXTHDR_TYPE)?.unwrap_or(0),
            offset: d.u32_or_0(EXTHDR_OFFSET)?,
            len: d.u32_or_0(EXTHDR_LEN)?,
            flags: d.u32_or_0(EXTHDR_FLAGS)?,
            dreg: d.u32_or_0(EXTHDR_DREG)?,
        },
        "limit" => RawExpr::Limit {
            rate: d.u64(LIMIT_RATE)?.unwrap_or(0),
            unit: d.u64(LIMIT_UNIT)?.unwrap_or(0),
            burst: d.u32_or_0(LIMIT_BURST)?,
            kind: d.u32_or_0(LIMIT_TYPE)?,
            flags: d.u32_or_0(LIMIT_FLAGS)?,
        },
        "log" => RawExpr::Log {
            prefix: d.string(LOG_PREFIX)?.unwrap_or_default(),
            group: d.u16(LOG_GROUP)?,
            snaplen: d.u32_or_0(LOG_SNAPLEN)?,
            qthreshold: d.u16(LOG_QTHRESHOLD)?.unwrap_or(0),
            other: d.has(LOG_LEVEL) || d.has(LOG_FLAGS),
        },
        _ => RawExpr::Other(name),
    };
    Ok((expr, None))
}

/// The rule in one NEWRULE message.
pub fn parse_rule(m: &Msg) -> Result<RuleInfo, String> {
    let a = Attrs::of(m.body(), "rule")?;
    let chain = a.string(nfta::RULE_CHAIN)?.ok_or("rule without a chain")?;
    let table = a.string(nfta::RULE_TABLE)?.unwrap_or_default();
    let handle = a.u64(nfta::RULE_HANDLE)?.unwrap_or(0);
    let mut exprs = Vec::new();
    let mut counter = None;
    if let Some(list) = a.nested(nfta::RULE_EXPRESSIONS, "rule expressions")? {
        for (ty, elem) in list.list {
            if ty != nfta::LIST_ELEM {
                return Err(format!("rule expressions: attribute {ty} in the list"));
            }
            let (expr, values) = parse_expr(elem)?;
            counter = counter.or(values);
            exprs.push(expr);
        }
    }
    let userdata = a.get(nfta::RULE_USERDATA).unwrap_or_default().to_vec();
    Ok(RuleInfo {
        table,
        chain,
        handle,
        exprs,
        userdata,
        counter,
    })
}

/// Table, name and attributes of the set in one NEWSET message.
pub fn parse_set(m: &Msg) -> Result<(String, String, SetAttrs), String> {
    let a = Attrs::of(m.body(), "set")?;
    let name = a.string(nfta::SET_NAME)?.ok_or("set without a name")?;
    let table = a.string(nfta::SET_TABLE)?.unwrap_or_default();
    let attrs = SetAttrs {
        flags: a.u32_or_0(nfta::SET_FLAGS)?,
        key_type: a.u32_or_0(nfta::SET_KEY_TYPE)?,
        key_len: a.u32_or_0(nfta::SET_KEY_LEN)?,
        data_type: a.u32(nfta::SET_DATA_TYPE)?,
    };
    Ok((table, name, attrs))
}

/// The elements in one NEWSETELEM message.
pub fn parse_elems(m: &Msg) -> Result<Vec<RawElem>, String> {
    let a = Attrs::of(m.body(), "set elements")?;
    let Some(list) = a.nested(nfta::ELEM_LIST_ELEMENTS, "element list")? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::with_capacity(list.list.len());
    for (ty, elem) in list.list {
        if ty != nfta::LIST_ELEM {
            return Err(format!("element list: attribute {ty} in the list"));
        }
        let e = Attrs::of(elem, "element")?;
        let key = e.data_value(nfta::ELEM_KEY, "element key")?;
        let end = e.u32_or_0(nfta::ELEM_FLAGS)? & ELEM_F_INTERVAL_END != 0;
        // Only `jump` is nftpol's; any other verdict (accept, goto) reads
        // as no jump, which decoding a map rejects as foreign.
        let jump = match e.verdict(nfta::ELEM_DATA, "element data")? {
            Some((code, chain)) if code == libc::NFT_JUMP => chain,
            _ => None,
        };
        out.push(RawElem { key, end, jump });
    }
    Ok(out)
}

/// The comment in rule userdata (TLV: type 0 = comment, NUL-terminated),
/// as `nftnl::Rule::set_comment` writes it.
pub fn parse_comment(udata: &[u8]) -> Option<String> {
    const UDATA_RULE_COMMENT: u8 = 0;
    let mut rest = udata;
    while rest.len() >= 2 {
        let (ty, len) = (rest[0], usize::from(rest[1]));
        let value = rest.get(2..2 + len)?;
        if ty == UDATA_RULE_COMMENT {
            let s = value.split(|b| *b == 0).next().unwrap_or_default();
            return Some(String::from_utf8_lossy(s).into_owned());
        }
        rest = &rest[2 + len..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comment_tlv() {
        assert_eq!(parse_comment(b"\x00\x03ab\x00"), Some("ab".into()));
        assert_eq!(parse_comment(b"\x01\x01x\x00\x02c\x00"), Some("c".into()));
        assert_eq!(parse_comment(b"\x00\x09ab"), None);
        assert_eq!(parse_comment(b""), None);
    }
}

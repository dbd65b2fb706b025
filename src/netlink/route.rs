//! The node's links and IPv6 neighbour entries, dumped over rtnetlink
//! (NETLINK_ROUTE), for learning pod interfaces: which ports each bridge
//! has and whether a port is a veth whose other end lives in another
//! network namespace (a pod), and which MAC the node resolved a pod's
//! IPv6 address to (`/proc` has no IPv6 neighbour table); and which
//! addresses are configured inside a pod's namespace on the veth peer,
//! read from the node with the address dump's target-namespace filter
//! (the peer namespace's id as the node sees it), so no namespace is
//! entered. Requests are written and answers parsed here in safe Rust;
//! link and neighbour dumps need no privilege, the address dump of another
//! namespace needs CAP_NET_ADMIN over it.

use super::socket::{Msg, Socket};
use super::wire;
use super::NetlinkError;
use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_NEWNEIGH: u16 = 28;
const RTM_GETNEIGH: u16 = 30;
const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;
/// `struct ifaddrmsg`.
const IFADDR_LEN: usize = 8;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
/// In a request: dump this namespace (an id of the caller's); in each
/// answer: echoed back, proving the filter was applied.
const IFA_TARGET_NETNSID: u16 = 10;
/// The peer's interface index (a veth's other end, in its namespace).
const IFLA_LINK: u16 = 5;
/// `struct ifinfomsg`.
const IFINFO_LEN: usize = 16;
/// `struct ndmsg`.
const NDMSG_LEN: usize = 12;
const IFLA_IFNAME: u16 = 3;
const IFLA_MASTER: u16 = 10;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
/// Present only when the link's peer is in another network namespace.
const IFLA_LINK_NETNSID: u16 = 37;
const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;
/// NUD_REACHABLE, STALE, DELAY, PROBE, PERMANENT: the entry holds a MAC
/// the node has heard from (INCOMPLETE, FAILED and NOARP hold none).
const NUD_RESOLVED: u16 = 0x02 | 0x04 | 0x08 | 0x10 | 0x80;
const RECV_TIMEOUT: Duration = Duration::from_secs(5);

/// One network interface of the caller's namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// The bridge (or bond) it is enslaved to.
    pub master: Option<u32>,
    /// `veth`, `bridge`, `vxlan`...; `None` for a physical device.
    pub kind: Option<String>,
    /// The id, in the caller's namespace, of the namespace its peer (a
    /// veth's other end) is in; `None` when the peer is in this one.
    pub netnsid: Option<i32>,
    /// The peer's interface index in that namespace.
    pub peer: Option<u32>,
}

impl Link {
    /// A pod's end of the node: a veth whose other end is in another
    /// namespace. Uplinks, bonds, tunnels and veths joining two devices
    /// of the node itself are the node's own.
    pub fn is_pod_facing(&self) -> bool {
        self.kind.as_deref() == Some("veth") && self.netnsid.is_some()
    }
}

fn request(ty: u16, seq: u32, header: &[u8]) -> Vec<u8> {
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    let len = wire::NLMSG_HDR + header.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&ty.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(header);
    m
}

/// The dump request for every link.
pub fn link_request(seq: u32) -> Vec<u8> {
    request(RTM_GETLINK, seq, &[0; IFINFO_LEN])
}

/// The dump request for every IPv6 neighbour entry.
pub fn neigh6_request(seq: u32) -> Vec<u8> {
    let mut nd = [0u8; NDMSG_LEN];
    nd[0] = libc::AF_INET6 as u8;
    request(RTM_GETNEIGH, seq, &nd)
}

/// The dump request for every address of `family` in the namespace the
/// caller knows by `netnsid`.
pub fn addr_request(seq: u32, family: u8, netnsid: i32) -> Vec<u8> {
    let mut body = vec![0u8; IFADDR_LEN];
    body[0] = family;
    wire::put_attr(&mut body, IFA_TARGET_NETNSID, &netnsid.to_ne_bytes());
    request(RTM_GETADDR, seq, &body)
}

/// An `RTM_NEWADDR` answer: (interface index, address, the target
/// namespace id it echoes).
pub fn parse_addr(payload: &[u8]) -> Option<(u32, IpAddr, Option<i32>)> {
    let family = *payload.first()?;
    let index = u32_at(payload, 4)?;
    let (mut local, mut address, mut target) = (None, None, None);
    let ip = |v: &[u8]| -> Option<IpAddr> {
        match i32::from(family) {
            libc::AF_INET => <[u8; 4]>::try_from(v).ok().map(IpAddr::from),
            libc::AF_INET6 => <[u8; 16]>::try_from(v).ok().map(IpAddr::from),
            _ => None,
        }
    };
    for (ty, v) in wire::attrs(payload.get(IFADDR_LEN..)?) {
        match ty {
            // IPv4: the interface's own address (IFA_ADDRESS is the far
            // end of a point-to-point link); IPv6 has IFA_ADDRESS only.
            IFA_LOCAL => local = ip(v),
            IFA_ADDRESS => address = ip(v),
            IFA_TARGET_NETNSID => target = u32_at(v, 0).map(|id| id as i32),
            _ => {}
        }
    }
    Some((index, local.or(address)?, target))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn name_of(v: &[u8]) -> String {
    let end = v.iter().position(|b| *b == 0).unwrap_or(v.len());
    String::from_utf8_lossy(&v[..end]).into_owned()
}

/// An `RTM_NEWLINK` message's payload (ifinfomsg and attributes).
pub fn parse_link(payload: &[u8]) -> Option<Link> {
    let index = u32_at(payload, 4)?;
    let mut link = Link {
        index,
        name: String::new(),
        master: None,
        kind: None,
        netnsid: None,
        peer: None,
    };
    for (ty, v) in wire::attrs(payload.get(IFINFO_LEN..)?) {
        match ty {
            IFLA_IFNAME => link.name = name_of(v),
            IFLA_MASTER => link.master = u32_at(v, 0).filter(|m| *m != 0),
            IFLA_LINK_NETNSID => {
                link.netnsid = u32_at(v, 0).map(|id| id as i32).filter(|id| *id >= 0)
            }
            IFLA_LINK => link.peer = u32_at(v, 0).filter(|i| *i != 0),
            IFLA_LINKINFO => {
                link.kind = wire::attrs(v)
                    .find(|(t, _)| *t == IFLA_INFO_KIND)
                    .map(|(_, k)| name_of(k));
            }
            _ => {}
        }
    }
    (!link.name.is_empty()).then_some(link)
}

/// A resolved IPv6 neighbour entry: (address, interface index, MAC).
pub fn parse_neigh6(payload: &[u8]) -> Option<(Ipv6Addr, u32, [u8; 6])> {
    if *payload.first()? != libc::AF_INET6 as u8 {
        return None;
    }
    let ifindex = u32_at(payload, 4)?;
    let state = u16::from_ne_bytes(payload.get(8..10)?.try_into().ok()?);
    if state & NUD_RESOLVED == 0 {
        return None;
    }
    let (mut dst, mut mac) = (None, None);
    for (ty, v) in wire::attrs(payload.get(NDMSG_LEN..)?) {
        match ty {
            NDA_DST => dst = <[u8; 16]>::try_from(v).ok().map(Ipv6Addr::from),
            NDA_LLADDR => mac = <[u8; 6]>::try_from(v).ok(),
            _ => {}
        }
    }
    Some((dst?, ifindex, mac.filter(|m| *m != [0; 6])?))
}

fn dump(req: &[u8], seq: u32, ty: u16, what: &str) -> Result<Vec<Msg>, NetlinkError> {
    let mut sock = Socket::open_route()?;
    sock.set_recv_timeout(RECV_TIMEOUT)?;
    match sock.request(req, seq)? {
        Ok(msgs) => Ok(msgs.into_iter().filter(|m| m.ty == ty).collect()),
        Err((errno, _)) => Err(NetlinkError::Dump {
            what: what.into(),
            errno,
        }),
    }
}

/// Every link of the caller's network namespace.
pub fn links() -> Result<Vec<Link>, NetlinkError> {
    Ok(dump(&link_request(1), 1, RTM_NEWLINK, "the links")?
        .iter()
        .filter_map(|m| parse_link(m.payload()))
        .collect())
}

/// Every address (IPv4 and IPv6) configured in the namespace the caller
/// knows as `netnsid`: (interface index there, address). `Ok(None)` when
/// the kernel has no target-namespace filter (before 4.20: it refuses
/// strict checking, which came with it). An answer that does not echo the
/// id (a kernel that ignored the filter, and would have listed the
/// caller's own addresses) is an error, never taken as the pod's.
pub fn addresses_in(netnsid: i32) -> Result<Option<Vec<(u32, IpAddr)>>, NetlinkError> {
    let mut sock = Socket::open_route()?;
    sock.set_recv_timeout(RECV_TIMEOUT)?;
    if let Err(e) = sock.set_strict_check() {
        return match e.raw_os_error() {
            Some(libc::ENOPROTOOPT) => Ok(None),
            _ => Err(NetlinkError::Socket(e)),
        };
    }
    let what = || format!("the addresses of network namespace id {netnsid}");
    let mut out = Vec::new();
    for (seq, family) in [(1, libc::AF_INET as u8), (2, libc::AF_INET6 as u8)] {
        let msgs = match sock.request(&addr_request(seq, family, netnsid), seq)? {
            Ok(msgs) => msgs,
            Err((errno, _)) => {
                return Err(NetlinkError::Dump {
                    what: what(),
                    errno,
                })
            }
        };
        for m in msgs.iter().filter(|m| m.ty == RTM_NEWADDR) {
            match parse_addr(m.payload()) {
                Some((index, ip, Some(id))) if id == netnsid => out.push((index, ip)),
                Some(_) => {
                    return Err(NetlinkError::Decode {
                        object: what(),
                        reason: "an answer does not name the namespace asked for".into(),
                    })
                }
                None => {}
            }
        }
    }
    Ok(Some(out))
}

/// Every resolved IPv6 neighbour entry: (address, interface index, MAC).
pub fn neighbours6() -> Result<Vec<(IpAddr, u32, [u8; 6])>, NetlinkError> {
    Ok(dump(
        &neigh6_request(1),
        1,
        RTM_NEWNEIGH,
        "the IPv6 neighbour table",
    )?
    .iter()
    .filter_map(|m| parse_neigh6(m.payload()))
    .map(|(a, i, m)| (IpAddr::V6(a), i, m))
    .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(ty: u16, v: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        wire::put_attr(&mut b, ty, v);
        b
    }

    #[test]
    fn parses_links_and_neighbours() {
        let mut p = vec![0u8; IFINFO_LEN];
        p[4..8].copy_from_slice(&7u32.to_ne_bytes());
        p.extend(attr(IFLA_IFNAME, b"vp3\0"));
        p.extend(attr(IFLA_MASTER, &4u32.to_ne_bytes()));
        p.extend(attr(IFLA_LINKINFO, &attr(IFLA_INFO_KIND, b"veth\0")));
        p.extend(attr(IFLA_LINK_NETNSID, &1i32.to_ne_bytes()));
        let l = parse_link(&p).expect("link");
        assert_eq!(
            (l.index, l.name.as_str(), l.master, l.kind.as_deref()),
            (7, "vp3", Some(4), Some("veth"))
        );
        assert!(l.is_pod_facing());
        // The same veth with its peer in this namespace is the node's own;
        // so is a physical uplink.
        let mut own = vec![0u8; IFINFO_LEN];
        own.extend(attr(IFLA_IFNAME, b"eth0\0"));
        own.extend(attr(IFLA_MASTER, &4u32.to_ne_bytes()));
        assert!(!parse_link(&own).expect("link").is_pod_facing());
        assert_eq!((l.netnsid, l.peer), (Some(1), None));
        let host_veth = Link { netnsid: None, ..l };
        assert!(!host_veth.is_pod_facing());

        let neigh = |state: u16, mac: &[u8]| {
            let mut n = vec![0u8; NDMSG_LEN];
            n[0] = libc::AF_INET6 as u8;
            n[4..8].copy_from_slice(&9u32.to_ne_bytes());
            n[8..10].copy_from_slice(&state.to_ne_bytes());
            n.extend(attr(
                NDA_DST,
                &"fd00::a".parse::<Ipv6Addr>().unwrap().octets(),
            ));
            n.extend(attr(NDA_LLADDR, mac));
            parse_neigh6(&n)
        };
        let mac = [2, 0, 0, 0, 0, 0xa];
        assert_eq!(
            neigh(0x04, &mac),
            Some(("fd00::a".parse().unwrap(), 9, mac))
        );
        assert_eq!(neigh(0x01, &mac), None, "incomplete");
        assert_eq!(neigh(0x20, &mac), None, "failed");
        assert_eq!(neigh(0x02, &[0; 6]), None, "no MAC");
        // Requests carry the dump flag and the right header size.
        let r = link_request(5);
        assert_eq!(r.len(), wire::NLMSG_HDR + IFINFO_LEN);
        assert_eq!(u32_at(&r, 0), Some(r.len() as u32));
        assert_eq!(neigh6_request(5)[wire::NLMSG_HDR], libc::AF_INET6 as u8);

        // An address request names the target namespace; an answer
        // yields the interface, the interface's own address and the echoed
        // id.
        let r = addr_request(3, libc::AF_INET as u8, 4);
        assert_eq!(u32_at(&r, 0), Some(r.len() as u32));
        let attrs: Vec<_> = wire::attrs(&r[wire::NLMSG_HDR + IFADDR_LEN..]).collect();
        assert_eq!(attrs, vec![(IFA_TARGET_NETNSID, &4i32.to_ne_bytes()[..])]);
        let mut a = vec![0u8; IFADDR_LEN];
        a[0] = libc::AF_INET as u8;
        a[4..8].copy_from_slice(&2u32.to_ne_bytes());
        a.extend(attr(IFA_ADDRESS, &[10, 0, 0, 9]));
        a.extend(attr(IFA_LOCAL, &[10, 244, 1, 5]));
        a.extend(attr(IFA_TARGET_NETNSID, &4i32.to_ne_bytes()));
        assert_eq!(
            parse_addr(&a),
            Some((2, "10.244.1.5".parse().unwrap(), Some(4)))
        );
        let mut a6 = vec![0u8; IFADDR_LEN];
        a6[0] = libc::AF_INET6 as u8;
        a6[4..8].copy_from_slice(&2u32.to_ne_bytes());
        a6.extend(attr(
            IFA_ADDRESS,
            &"fd00::5".parse::<Ipv6Addr>().unwrap().octets(),
        ));
        assert_eq!(parse_addr(&a6), Some((2, "fd00::5".parse().unwrap(), None)));
    }

    /// Needs no privilege: any namespace lists its own links.
    #[test]
    fn lists_the_loopback_link() {
        let links = links().expect("link dump");
        assert!(links.iter().any(|l| l.name == "lo"), "{links:?}");
        neighbours6().expect("neighbour dump");
    }
}

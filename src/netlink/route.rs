//! The node's links, routes, neighbour entries and bridge forwarding
//! databases, dumped over rtnetlink (NETLINK_ROUTE), for learning pod
//! interfaces: which ports each bridge has and whether a port is a veth
//! whose other end lives in another network namespace (a pod), which
//! interface the route to a pod's address leaves by, which MAC the node
//! resolved a pod's address to and which bridge port a MAC was
//! learned on; and which
//! addresses are configured inside a pod's namespace on the veth peer,
//! read from the node with the address dump's target-namespace filter
//! (the peer namespace's id as the node sees it), so no namespace is
//! entered. The messages are netlink-packet-route's, each attribute read
//! on its own so that one the crate cannot read costs that attribute, not
//! the link; the socket is the one of `socket`. Link and neighbour dumps
//! need no privilege, the address dump of another namespace needs
//! CAP_NET_ADMIN over it. All of it is of the caller's network namespace
//! (a thread that entered one reads that one, which `/proc/net` and
//! `/sys/class/net` do not promise).

use super::socket::{Msg, Socket};
use super::NetlinkError;
use netlink_packet_core::{
    Emitable, NetlinkHeader, NetlinkMessage, NetlinkPayload, Nla, NlaBuffer, NlasIterator,
    Parseable, ParseableParametrized, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressHeader, AddressMessage};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkHeader, LinkMessage};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourHeader, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteLwEnCapType, RouteMessage, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::LazyLock;
use std::time::Duration;

/// The states whose entry holds a MAC the node has heard from
/// (INCOMPLETE, FAILED and NOARP hold none).
const RESOLVED: [NeighbourState; 5] = [
    NeighbourState::Reachable,
    NeighbourState::Stale,
    NeighbourState::Delay,
    NeighbourState::Probe,
    NeighbourState::Permanent,
];
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

/// A dump request (`NLM_F_DUMP`) for `msg`, serialised by the crate.
fn request(seq: u32, msg: RouteNetlinkMessage) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = seq;
    let mut m = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
    m.finalize();
    let mut buf = vec![0; m.buffer_len()];
    m.serialize(&mut buf);
    buf
}

/// The dump request for every link.
pub fn link_request(seq: u32) -> Vec<u8> {
    request(seq, RouteNetlinkMessage::GetLink(LinkMessage::default()))
}

/// The dump request for every neighbour entry of `family`.
pub fn neigh_request(seq: u32, family: u8) -> Vec<u8> {
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::from(family);
    request(seq, RouteNetlinkMessage::GetNeighbour(m))
}

/// The dump request for every IPv6 neighbour entry.
pub fn neigh6_request(seq: u32) -> Vec<u8> {
    neigh_request(seq, libc::AF_INET6 as u8)
}

/// The dump request for every address of `family` in the namespace the
/// caller knows by `netnsid`.
pub fn addr_request(seq: u32, family: u8, netnsid: i32) -> Vec<u8> {
    let mut m = AddressMessage::default();
    m.header.family = AddressFamily::from(family);
    m.attributes.push(AddressAttribute::TargetNetNsId(netnsid));
    request(seq, RouteNetlinkMessage::GetAddress(m))
}

/// The dump request for every route of `family` (every table).
pub fn route_request(seq: u32, family: u8) -> Vec<u8> {
    let mut m = RouteMessage::default();
    m.header.address_family = AddressFamily::from(family);
    request(seq, RouteNetlinkMessage::GetRoute(m))
}

/// The dump request for every bridge forwarding database entry.
pub fn fdb_request(seq: u32) -> Vec<u8> {
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Bridge;
    request(seq, RouteNetlinkMessage::GetNeighbour(m))
}

/// One route of the caller's namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub table: u32,
    pub kind: RouteType,
    pub dst: ipnet::IpNet,
    /// The interfaces its next hops leave by: one, one per hop of a
    /// multipath route, none for a blackhole, unreachable or prohibit
    /// route.
    pub oifs: Vec<u32>,
}

impl Route {
    /// Whether a pod's address is looked up in it: IPv4 routes of the
    /// main table but broadcast and multicast ones, IPv6 routes of every
    /// table (what `/proc/net/route` and `/proc/net/ipv6_route` list).
    pub fn looked_up(&self) -> bool {
        match self.dst {
            ipnet::IpNet::V4(_) => {
                self.table == u32::from(RouteHeader::RT_TABLE_MAIN)
                    && !matches!(self.kind, RouteType::Broadcast | RouteType::Multicast)
            }
            ipnet::IpNet::V6(_) => true,
        }
    }
}

/// An `RTM_NEWROUTE` answer. A route without a destination is the
/// default route of its family.
pub fn parse_route(payload: &[u8]) -> Option<Route> {
    let header = RouteHeader::parse(payload).ok()?;
    let any = match header.address_family {
        AddressFamily::Inet => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        AddressFamily::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        _ => return None,
    };
    let mut table = u32::from(header.table);
    let (mut dst, mut oifs) = (Some(any), Vec::new());
    let param = (header.address_family, header.kind, RouteLwEnCapType::None);
    let dst_kind = RouteAttribute::Destination(RouteAddress::Other(Vec::new())).kind();
    for nla in attrs_after(payload, header.buffer_len()) {
        match RouteAttribute::parse_with_param(&nla, param) {
            Ok(RouteAttribute::Table(t)) => table = t,
            Ok(RouteAttribute::Destination(RouteAddress::Inet(a))) => dst = Some(IpAddr::V4(a)),
            Ok(RouteAttribute::Destination(RouteAddress::Inet6(a))) => dst = Some(IpAddr::V6(a)),
            Ok(RouteAttribute::Oif(i)) => oifs.push(i),
            Ok(RouteAttribute::MultiPath(hops)) => {
                oifs.extend(hops.iter().map(|h| h.interface_index))
            }
            // A destination that cannot be read is not the default route.
            Ok(RouteAttribute::Destination(_)) => dst = None,
            Err(_) if nla.kind() == dst_kind => dst = None,
            _ => {}
        }
    }
    // Nor is an address of the other family this route's.
    let dst = dst.filter(|d| d.is_ipv4() == any.is_ipv4())?;
    let dst = ipnet::IpNet::new(dst, header.destination_prefix_length).ok()?;
    Some(Route {
        table,
        kind: header.kind,
        dst,
        oifs,
    })
}

/// One entry of a bridge's forwarding database: the MAC was seen
/// behind `port` of bridge `bridge` (interface indexes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdbEntry {
    pub bridge: u32,
    pub port: u32,
    pub mac: [u8; 6],
}

/// An `RTM_NEWNEIGH` answer to [`fdb_request`], if it is an entry a
/// bridge forwards by: learned and not expired, or static. The bridge's
/// own addresses (local, reported permanent, or on the bridge device
/// itself), expired entries (stale) and the address lists of devices
/// that are no bridge ports (no master) are not.
pub fn parse_fdb(payload: &[u8]) -> Option<FdbEntry> {
    let header = NeighbourHeader::parse(payload).ok()?;
    if header.family != AddressFamily::Bridge
        || !matches!(
            header.state,
            NeighbourState::Reachable | NeighbourState::Noarp
        )
    {
        return None;
    }
    let (mut master, mut mac) = (None, None);
    for nla in attrs_after(payload, header.buffer_len()) {
        match NeighbourAttribute::parse_with_param(&nla, header.family) {
            Ok(NeighbourAttribute::Controller(m)) => master = Some(m),
            Ok(NeighbourAttribute::LinkLayerAddress(m)) => {
                mac = <[u8; 6]>::try_from(m.as_slice()).ok()
            }
            _ => {}
        }
    }
    let bridge = master.filter(|m| *m != header.ifindex)?;
    Some(FdbEntry {
        bridge,
        port: header.ifindex,
        mac: mac?,
    })
}

/// The attributes after a message's fixed header of `header_len` bytes,
/// up to the first malformed one. Each is handed over unparsed so that
/// the caller parses it alone with the crate: the crate's whole-message
/// parser fails the message for any one attribute it cannot read (a
/// kind or field of a kernel newer than the crate), and a link lost
/// that way would be a pod's port left without a fail-closed chain.
fn attrs_after(payload: &[u8], header_len: usize) -> impl Iterator<Item = NlaBuffer<&[u8]>> {
    NlasIterator::new(payload.get(header_len..).unwrap_or_default()).map_while(Result::ok)
}

/// An `RTM_NEWADDR` answer: (interface index, address, the target
/// namespace id it echoes).
pub fn parse_addr(payload: &[u8]) -> Option<(u32, IpAddr, Option<i32>)> {
    let header = AddressHeader::parse(payload).ok()?;
    // The crate reads an address by its length; one of the other family
    // is not this message's.
    let of_family = |ip: IpAddr| match (header.family, ip) {
        (AddressFamily::Inet, IpAddr::V4(_)) | (AddressFamily::Inet6, IpAddr::V6(_)) => Some(ip),
        _ => None,
    };
    let (mut local, mut address, mut target) = (None, None, None);
    for nla in attrs_after(payload, header.buffer_len()) {
        match AddressAttribute::parse(&nla) {
            // IPv4: the interface's own address (IFA_ADDRESS is the far
            // end of a point-to-point link); IPv6 has IFA_ADDRESS only.
            Ok(AddressAttribute::Local(ip)) => local = of_family(ip),
            Ok(AddressAttribute::Address(ip)) => address = of_family(ip),
            Ok(AddressAttribute::TargetNetNsId(id)) => target = Some(id),
            _ => {}
        }
    }
    Some((header.index, local.or(address)?, target))
}

/// The kind (`veth`, `bridge`...) among the attributes nested in
/// IFLA_LINKINFO, parsed alone with the crate's parser of that one
/// attribute. The crate's parser of the whole nest also parses the
/// kind's and the bridge port's data (dozens of attributes nothing here
/// uses: most of a link dump's cost) and fails the kind with any one of
/// them it cannot read; a pod's veth without its kind would be a port
/// left without a fail-closed chain.
fn kind_of(linkinfo: &[u8]) -> Option<String> {
    NlasIterator::new(linkinfo)
        .map_while(Result::ok)
        .find_map(|nla| InfoKind::parse(&nla).ok())
        .map(|k| k.to_string())
}

/// The link attribute types read, as the crate writes them: IFLA_LINKINFO
/// (for [`kind_of`]), then those the crate parses, IFLA_IFNAME first.
/// The others (counters, per-family data: most of a link message) are
/// not parsed at all.
static LINK_ATTRS: LazyLock<(u16, [u16; 4])> = LazyLock::new(|| {
    let parsed = [
        LinkAttribute::IfName(String::new()),
        LinkAttribute::Controller(0),
        LinkAttribute::LinkNetNsId(0),
        LinkAttribute::Link(0),
    ];
    (
        LinkAttribute::LinkInfo(Vec::new()).kind(),
        parsed.map(|a| a.kind()),
    )
});

/// An `RTM_NEWLINK` message's payload (ifinfomsg and attributes).
pub fn parse_link(payload: &[u8]) -> Option<Link> {
    let header = LinkHeader::parse(payload).ok()?;
    let mut link = Link {
        index: header.index,
        name: String::new(),
        master: None,
        kind: None,
        netnsid: None,
        peer: None,
    };
    let (linkinfo, parsed) = *LINK_ATTRS;
    let ifname = parsed[0];
    for nla in attrs_after(payload, header.buffer_len()) {
        if nla.kind() == linkinfo {
            link.kind = kind_of(nla.value());
            continue;
        }
        if !parsed.contains(&nla.kind()) {
            continue;
        }
        match LinkAttribute::parse_with_param(&nla, header.interface_family) {
            Ok(LinkAttribute::IfName(name)) => link.name = name,
            Ok(LinkAttribute::Controller(m)) => link.master = Some(m).filter(|m| *m != 0),
            Ok(LinkAttribute::LinkNetNsId(id)) => link.netnsid = Some(id).filter(|id| *id >= 0),
            Ok(LinkAttribute::Link(i)) => link.peer = Some(i).filter(|i| *i != 0),
            Ok(_) => {}
            // Linux allows any bytes but '/', ':' and blanks in a name;
            // the crate takes UTF-8 only.
            Err(_) if nla.kind() == ifname => {
                let v = nla.value();
                let v = v.split(|b| *b == 0).next().unwrap_or_default();
                link.name = String::from_utf8_lossy(v).into_owned();
            }
            Err(_) => {}
        }
    }
    (!link.name.is_empty()).then_some(link)
}

/// A neighbour entry of `family` in one of `states`: (address,
/// interface index, MAC).
fn parse_neigh(
    payload: &[u8],
    family: AddressFamily,
    states: &[NeighbourState],
) -> Option<(IpAddr, u32, [u8; 6])> {
    let header = NeighbourHeader::parse(payload).ok()?;
    if header.family != family {
        return None;
    }
    let wanted = states.iter().fold(0, |m, s| m | u16::from(*s));
    if u16::from(header.state) & wanted == 0 {
        return None;
    }
    let (mut dst, mut mac) = (None, None);
    for nla in attrs_after(payload, header.buffer_len()) {
        match NeighbourAttribute::parse_with_param(&nla, header.family) {
            Ok(NeighbourAttribute::Destination(NeighbourAddress::Inet6(a))) => {
                dst = Some(IpAddr::V6(a))
            }
            Ok(NeighbourAttribute::Destination(NeighbourAddress::Inet(a))) => {
                dst = Some(IpAddr::V4(a))
            }
            Ok(NeighbourAttribute::LinkLayerAddress(m)) => {
                mac = <[u8; 6]>::try_from(m.as_slice()).ok()
            }
            _ => {}
        }
    }
    Some((dst?, header.ifindex, mac.filter(|m| *m != [0; 6])?))
}

/// A resolved IPv6 neighbour entry: (address, interface index, MAC).
pub fn parse_neigh6(payload: &[u8]) -> Option<(Ipv6Addr, u32, [u8; 6])> {
    match parse_neigh(payload, AddressFamily::Inet6, &RESOLVED)? {
        (IpAddr::V6(a), index, mac) => Some((a, index, mac)),
        (IpAddr::V4(_), ..) => None,
    }
}

/// A resolved ARP entry: (address, interface index, MAC), what
/// `/proc/net/arp` flags complete (it leaves NOARP entries out).
pub fn parse_neigh4(payload: &[u8]) -> Option<(Ipv4Addr, u32, [u8; 6])> {
    match parse_neigh(payload, AddressFamily::Inet, &RESOLVED)? {
        (IpAddr::V4(a), index, mac) => Some((a, index, mac)),
        (IpAddr::V6(_), ..) => None,
    }
}

/// The netlink message type of the kernel's answers carrying `msg`.
fn answer_type(msg: RouteNetlinkMessage) -> u16 {
    msg.message_type()
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
    let ty = answer_type(RouteNetlinkMessage::NewLink(LinkMessage::default()));
    Ok(dump(&link_request(1), 1, ty, "the links")?
        .iter()
        .filter_map(|m| parse_link(m.payload()))
        .collect())
}

/// The addresses in one answer to [`addr_request`] for `netnsid`:
/// (interface index there, address). Every message must echo the id; one
/// that does not (a kernel that ignored the filter, and listed the
/// caller's own addresses) fails the whole answer.
pub fn addresses_of(netnsid: i32, answer: &[Msg]) -> Result<Vec<(u32, IpAddr)>, NetlinkError> {
    let ty = answer_type(RouteNetlinkMessage::NewAddress(AddressMessage::default()));
    let mut out = Vec::new();
    for m in answer.iter().filter(|m| m.ty == ty) {
        match parse_addr(m.payload()) {
            Some((index, ip, Some(id))) if id == netnsid => out.push((index, ip)),
            Some(_) => {
                return Err(NetlinkError::Decode {
                    object: format!("the addresses of network namespace id {netnsid}"),
                    reason: "an answer does not name the namespace asked for".into(),
                })
            }
            None => {}
        }
    }
    Ok(out)
}

/// Every address (IPv4 and IPv6) configured in the namespace the caller
/// knows as `netnsid`: (interface index there, address). `Ok(None)` when
/// the kernel has no target-namespace filter (before 4.20: it refuses
/// strict checking, which came with it). An answer that does not echo the
/// id is an error, never taken as the pod's ([`addresses_of`]).
pub fn addresses_in(netnsid: i32) -> Result<Option<Vec<(u32, IpAddr)>>, NetlinkError> {
    let mut sock = Socket::open_route()?;
    sock.set_recv_timeout(RECV_TIMEOUT)?;
    if let Err(e) = sock.set_strict_check() {
        return match e.raw_os_error() {
            Some(libc::ENOPROTOOPT) => Ok(None),
            _ => Err(NetlinkError::Socket(e)),
        };
    }
    let mut out = Vec::new();
    for (seq, family) in [(1, libc::AF_INET as u8), (2, libc::AF_INET6 as u8)] {
        match sock.request(&addr_request(seq, family, netnsid), seq)? {
            Ok(msgs) => out.extend(addresses_of(netnsid, &msgs)?),
            Err((errno, _)) => {
                return Err(NetlinkError::Dump {
                    what: format!("the addresses of network namespace id {netnsid}"),
                    errno,
                })
            }
        }
    }
    Ok(Some(out))
}

/// Every route of the caller's namespace, IPv4 then IPv6. A node without
/// IPv6 has no IPv6 routes, not an error.
pub fn routes() -> Result<Vec<Route>, NetlinkError> {
    let ty = answer_type(RouteNetlinkMessage::NewRoute(RouteMessage::default()));
    let v4 = dump(
        &route_request(1, libc::AF_INET as u8),
        1,
        ty,
        "the IPv4 routes",
    )?;
    let v6 = match dump(
        &route_request(2, libc::AF_INET6 as u8),
        2,
        ty,
        "the IPv6 routes",
    ) {
        Err(NetlinkError::Dump { errno, .. }) if errno == libc::EAFNOSUPPORT => Vec::new(),
        other => other?,
    };
    Ok(v4
        .iter()
        .chain(&v6)
        .filter_map(|m| parse_route(m.payload()))
        .collect())
}

/// Every forwarding entry of every bridge ([`parse_fdb`]), in the
/// kernel's order.
pub fn fdb() -> Result<Vec<FdbEntry>, NetlinkError> {
    let ty = answer_type(RouteNetlinkMessage::NewNeighbour(
        NeighbourMessage::default(),
    ));
    Ok(
        dump(&fdb_request(1), 1, ty, "the bridge forwarding databases")?
            .iter()
            .filter_map(|m| parse_fdb(m.payload()))
            .collect(),
    )
}

/// Every resolved ARP entry: (address, interface index, MAC).
pub fn neighbours4() -> Result<Vec<(Ipv4Addr, u32, [u8; 6])>, NetlinkError> {
    let ty = answer_type(RouteNetlinkMessage::NewNeighbour(
        NeighbourMessage::default(),
    ));
    let req = neigh_request(1, libc::AF_INET as u8);
    Ok(dump(&req, 1, ty, "the ARP table")?
        .iter()
        .filter_map(|m| parse_neigh4(m.payload()))
        .collect())
}

/// Every resolved IPv6 neighbour entry: (address, interface index, MAC).
pub fn neighbours6() -> Result<Vec<(IpAddr, u32, [u8; 6])>, NetlinkError> {
    let ty = answer_type(RouteNetlinkMessage::NewNeighbour(
        NeighbourMessage::default(),
    ));
    Ok(dump(&neigh6_request(1), 1, ty, "the IPv6 neighbour table")?
        .iter()
        .filter_map(|m| parse_neigh6(m.payload()))
        .map(|(a, i, m)| (IpAddr::V6(a), i, m))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::wire;

    // The kernel's uapi values, written out here so that the messages
    // below are built independently of the crate that reads them.
    const IFINFO_LEN: usize = 16;
    const NDMSG_LEN: usize = 12;
    const IFADDR_LEN: usize = 8;
    const IFLA_IFNAME: u16 = 3;
    const IFLA_MASTER: u16 = 10;
    const IFLA_LINKINFO: u16 = 18;
    const IFLA_INFO_KIND: u16 = 1;
    const IFLA_LINK_NETNSID: u16 = 37;
    const IFA_ADDRESS: u16 = 1;
    const IFA_LOCAL: u16 = 2;
    const IFA_TARGET_NETNSID: u16 = 10;
    const NDA_DST: u16 = 1;
    const NDA_LLADDR: u16 = 2;

    fn u32_at(b: &[u8], at: usize) -> Option<u32> {
        Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
    }

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
        // Type, NLM_F_REQUEST | NLM_F_DUMP, sequence number, port id 0.
        let head = |r: &[u8]| r[4..16].to_vec();
        let want = |ty: u16| {
            [
                &ty.to_ne_bytes()[..],
                &0x301u16.to_ne_bytes(),
                &5u32.to_ne_bytes(),
                &[0; 4],
            ]
            .concat()
        };
        assert_eq!(head(&r), want(18), "RTM_GETLINK");
        assert_eq!(head(&neigh6_request(5)), want(30), "RTM_GETNEIGH");
        assert_eq!(neigh6_request(5).len(), wire::NLMSG_HDR + NDMSG_LEN);
        assert_eq!(head(&addr_request(5, 2, 4)), want(22), "RTM_GETADDR");

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

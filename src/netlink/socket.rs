//! The netfilter netlink socket: opening it with buffers sized for the
//! batch, sending a whole batch in ONE `send` (docs/NETLINK.md, kernel
//! fact 1), collecting the per-message acks and errors by sequence number
//! (fact 3), and running dump requests for the read-back.
//!
//! The kernel processes a batch synchronously inside `send`, so every
//! ack is already queued when `send` returns: they are drained without
//! blocking, and only the ack of the batch END means "committed".

use super::raw;
use super::NetlinkError;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Mutex;

const NETLINK_CAP_ACK: libc::c_int = 10;
const NETLINK_EXT_ACK: libc::c_int = 11;
const NETLINK_ADD_MEMBERSHIP: libc::c_int = 1;
const NETLINK_GET_STRICT_CHK: libc::c_int = 12;
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;
const HDR: usize = std::mem::size_of::<libc::nlmsghdr>();
/// Receive buffer for one `recv`; the kernel's dump skbs are far smaller.
const RECV_BUF: usize = 1 << 20;

/// One netlink message received, copied out of the receive buffer.
pub struct Msg {
    pub ty: u16,
    pub flags: u16,
    pub seq: u32,
    /// Port id of the socket that caused it (for notifications: the
    /// socket that sent the batch).
    pub pid: u32,
    /// The whole message, header included.
    bytes: Vec<u8>,
}

impl Msg {
    /// Copies one whole message (header included) into aligned storage;
    /// `None` unless `m` is exactly as long as its header says.
    pub fn from_bytes(m: &[u8]) -> Option<Msg> {
        let len = u32::from_ne_bytes(m.get(..4)?.try_into().ok()?) as usize;
        if len < HDR || len != m.len() {
            return None;
        }
        Some(Msg {
            ty: u16::from_ne_bytes([m[4], m[5]]),
            flags: u16::from_ne_bytes([m[6], m[7]]),
            seq: u32::from_ne_bytes([m[8], m[9], m[10], m[11]]),
            pid: u32::from_ne_bytes([m[12], m[13], m[14], m[15]]),
            bytes: m.to_vec(),
        })
    }
    /// The messages of one datagram, each checked against its length.
    pub fn split(bytes: &[u8]) -> Result<Vec<Msg>, String> {
        let mut out = Vec::new();
        let mut off = 0;
        while off + HDR <= bytes.len() {
            let len =
                u32::from_ne_bytes(bytes[off..off + 4].try_into().unwrap_or_default()) as usize;
            if len < HDR || len > bytes.len() - off {
                return Err(format!("malformed netlink message of length {len}"));
            }
            out.extend(Msg::from_bytes(&bytes[off..off + len]));
            off = off.saturating_add((len + 3) & !3);
        }
        Ok(out)
    }
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
    /// Everything after the netlink header.
    pub fn payload(&self) -> &[u8] {
        &self.bytes[HDR.min(self.bytes.len())..]
    }
    /// The address family of an nftables message (`nfgenmsg`).
    pub fn family(&self) -> Option<u8> {
        self.payload().first().copied()
    }
    /// The attributes of an nftables message, after its `nfgenmsg`.
    pub fn body(&self) -> &[u8] {
        self.payload()
            .get(super::wire::NFGEN_HDR..)
            .unwrap_or_default()
    }
    /// For NLMSG_ERROR: (errno, extended-ack text). errno 0 is an ack.
    pub fn error(&self) -> Option<(i32, Option<String>)> {
        if self.ty != libc::NLMSG_ERROR as u16 {
            return None;
        }
        let p = self.payload();
        let code = i32::from_ne_bytes(p.get(..4)?.try_into().ok()?);
        let mut text = None;
        if self.flags & NLM_F_ACK_TLVS != 0 {
            // With NETLINK_CAP_ACK the echoed request is only its header.
            let mut tlv = p.get(4 + HDR..).unwrap_or_default();
            while tlv.len() >= 4 {
                let len = usize::from(u16::from_ne_bytes([tlv[0], tlv[1]]));
                let ty = u16::from_ne_bytes([tlv[2], tlv[3]]);
                if len < 4 || len > tlv.len() {
                    break;
                }
                if ty == NLMSGERR_ATTR_MSG {
                    let s = &tlv[4..len];
                    let s = s.split(|b| *b == 0).next().unwrap_or_default();
                    text = Some(String::from_utf8_lossy(s).into_owned());
                }
                tlv = &tlv[((len + 3) & !3).min(tlv.len())..];
            }
        }
        // A code of i32::MIN has no errno; saturating keeps it an error.
        Some((code.saturating_neg(), text))
    }
}

/// A kernel error answer: errno and the extended-ack text, if any.
pub type KernelError = (i32, Option<String>);

/// An open NETLINK_NETFILTER socket.
pub struct Socket {
    sock: mnl::Socket,
    buf: Vec<u8>,
    /// Whether its port id is listed in `OWN_PORTS` (netfilter sockets).
    own: bool,
}

/// Port ids of the NETLINK_NETFILTER sockets this process has open, one
/// entry per socket. The kernel stamps every nftables notification with
/// the port id of the socket whose batch caused it, so a watcher tells
/// this process's own batches from everyone else's with one lookup.
/// Port ids are unique only per protocol and network namespace: a route
/// socket takes the process id as port id just as the first netfilter
/// socket does, and a test process holds sockets in several namespaces.
/// So only netfilter sockets are listed (no other protocol commits
/// nftables batches), and closing a socket removes its own entry, never
/// that of another live socket with the same number.
static OWN_PORTS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn own_ports() -> std::sync::MutexGuard<'static, Vec<u32>> {
    OWN_PORTS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether a message with this port id came from a socket of this process.
pub fn is_own_port(pid: u32) -> bool {
    pid != 0 && own_ports().contains(&pid)
}

impl Drop for Socket {
    fn drop(&mut self) {
        if !self.own {
            return;
        }
        unlist_port(self.sock.portid());
    }
}

/// Removes one entry of `port` from `OWN_PORTS`.
fn unlist_port(port: u32) {
    let mut ports = own_ports();
    if let Some(i) = ports.iter().position(|p| *p == port) {
        ports.swap_remove(i);
    }
}

fn setsockopt_int(
    fd: libc::c_int,
    level: libc::c_int,
    opt: libc::c_int,
    v: libc::c_int,
) -> io::Result<()> {
    raw::setsockopt(fd, level, opt, &v)
}

impl Socket {
    pub fn open() -> Result<Socket, NetlinkError> {
        Socket::open_bus(mnl::Bus::Netfilter)
    }

    /// A NETLINK_ROUTE socket (links and neighbours, read-only dumps).
    pub fn open_route() -> Result<Socket, NetlinkError> {
        Socket::open_bus(mnl::Bus::Route)
    }

    fn open_bus(bus: mnl::Bus) -> Result<Socket, NetlinkError> {
        let own = matches!(bus, mnl::Bus::Netfilter);
        let sock = mnl::Socket::new(bus).map_err(NetlinkError::Socket)?;
        let fd = sock.as_raw_fd();
        // Best effort: without them errors are still reported, just with
        // the whole request echoed back and no text.
        let _ = setsockopt_int(fd, libc::SOL_NETLINK, NETLINK_CAP_ACK, 1);
        let _ = setsockopt_int(fd, libc::SOL_NETLINK, NETLINK_EXT_ACK, 1);
        if own {
            own_ports().push(sock.portid());
        }
        Ok(Socket {
            sock,
            buf: vec![0u8; RECV_BUF],
            own,
        })
    }

    /// Raises the socket buffers (docs/NETLINK.md, kernel fact 2): the send buffer must hold the
    /// whole batch, the receive buffer one ack per message. The FORCE
    /// variants need CAP_NET_ADMIN, which applying needs anyway; without
    /// it fall back to what the sysctl limits allow.
    pub fn size_buffers(&self, batch_bytes: usize, messages: usize) {
        let fd = self.sock.as_raw_fd();
        let clamp = |n: usize| n.min(i32::MAX as usize / 2) as libc::c_int;
        let snd = clamp(batch_bytes + (256 << 10));
        // An ack costs an skb of roughly 1 KiB of receive-buffer truesize.
        let rcv = clamp(messages * 2048 + (1 << 20));
        if setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, snd).is_err() {
            let _ = setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, snd);
        }
        if setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, rcv).is_err() {
            let _ = setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, rcv);
        }
    }

    /// Asks the kernel to check dump requests strictly and to honour their
    /// filters (an address dump's target namespace among them). Kernels
    /// before 4.20 have neither and refuse the option.
    pub fn set_strict_check(&self) -> io::Result<()> {
        setsockopt_int(
            self.sock.as_raw_fd(),
            libc::SOL_NETLINK,
            NETLINK_GET_STRICT_CHK,
            1,
        )
    }

    /// The port id the kernel stamps on this socket's messages.
    pub fn portid(&self) -> u32 {
        self.sock.portid()
    }

    /// Joins the nftables notification group: from now on the kernel
    /// queues a copy of every committed change in this network namespace.
    /// `timeout` bounds each blocking `recv` (which then returns `None`).
    /// Needs CAP_NET_ADMIN.
    pub fn subscribe_nftables(&self, timeout: std::time::Duration) -> Result<(), NetlinkError> {
        let fd = self.sock.as_raw_fd();
        let group = libc::NFNLGRP_NFTABLES as libc::c_int;
        setsockopt_int(fd, libc::SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group).map_err(
            |e| match e.raw_os_error() {
                Some(libc::EPERM) => NetlinkError::PermissionDenied {
                    during: "subscribing to nftables notifications".into(),
                },
                _ => NetlinkError::Socket(e),
            },
        )?;
        // Room for a burst (a whole-table replace by someone else is one
        // notification per object); an overflow is reported as ENOBUFS
        // and handled as "something changed".
        let rcv = 8 << 20;
        if setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, rcv).is_err() {
            let _ = setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, rcv);
        }
        self.set_recv_timeout(timeout)
    }

    /// Bounds each blocking `recv`: after `timeout` without a datagram it
    /// returns `None`, and [`Socket::request_each`] and
    /// [`Socket::send_acked`] fail instead of waiting for ever.
    pub fn set_recv_timeout(&self, timeout: std::time::Duration) -> Result<(), NetlinkError> {
        let tv = libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: timeout.subsec_micros() as libc::suseconds_t,
        };
        raw::setsockopt(
            self.sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv,
        )
        .map_err(NetlinkError::Socket)?;
        Ok(())
    }

    /// Sends `data` in one `send` call.
    pub fn send_all_at_once(&self, data: &[u8]) -> Result<(), NetlinkError> {
        let n = self.sock.send(data).map_err(|e| NetlinkError::Send {
            bytes: data.len(),
            source: e,
        })?;
        if n != data.len() {
            return Err(NetlinkError::Send {
                bytes: data.len(),
                source: io::Error::other(format!("sent {n} of {} bytes", data.len())),
            });
        }
        Ok(())
    }

    /// Receives one datagram of messages; `Ok(None)` when `nonblocking`
    /// and nothing is queued.
    pub fn recv(&mut self, nonblocking: bool) -> Result<Option<Vec<Msg>>, NetlinkError> {
        let Some(bytes) = self.recv_bytes(nonblocking)? else {
            return Ok(None);
        };
        let out = Msg::split(bytes).map_err(|e| NetlinkError::Receive(io::Error::other(e)))?;
        Ok(Some(out))
    }

    /// Waits for one datagram (at most the receive timeout) and returns
    /// its bytes unsplit, for readers that decode each message on its own.
    pub fn recv_datagram(&mut self) -> Result<Option<&[u8]>, NetlinkError> {
        self.recv_bytes(false)
    }

    fn recv_bytes(&mut self, nonblocking: bool) -> Result<Option<&[u8]>, NetlinkError> {
        let flags = if nonblocking { libc::MSG_DONTWAIT } else { 0 };
        let n = loop {
            let fd = self.sock.as_raw_fd();
            let err = match raw::recv(fd, &mut self.buf, flags | libc::MSG_TRUNC) {
                Ok(n) => break n,
                Err(e) => e,
            };
            match err.kind() {
                io::ErrorKind::Interrupted => continue,
                // Nothing queued (MSG_DONTWAIT) or the receive timeout
                // of a notification socket ran out.
                io::ErrorKind::WouldBlock => return Ok(None),
                _ => return Err(NetlinkError::Receive(err)),
            }
        };
        if n > self.buf.len() {
            return Err(NetlinkError::Receive(io::Error::other(format!(
                "netlink datagram of {n} bytes truncated"
            ))));
        }
        Ok(Some(&self.buf[..n]))
    }

    /// Sends a request and collects the data messages of its answer until
    /// NLMSG_DONE (dumps) or the ack (plain GETs). Errors come back as
    /// `Err((errno, text))` for the caller to classify.
    pub fn request(
        &mut self,
        req: &[u8],
        seq: u32,
    ) -> Result<Result<Vec<Msg>, KernelError>, NetlinkError> {
        let mut data = Vec::new();
        Ok(self
            .request_each(req, seq, |m| data.push(m))?
            .map(|()| data))
    }

    /// [`Socket::request`] handing each data message to `each` as it
    /// arrives instead of keeping them all (a conntrack dump of a busy
    /// node is hundreds of thousands of messages).
    pub fn request_each(
        &mut self,
        req: &[u8],
        seq: u32,
        mut each: impl FnMut(Msg),
    ) -> Result<Result<(), KernelError>, NetlinkError> {
        self.send_all_at_once(req)?;
        loop {
            let Some(msgs) = self.recv(false)? else {
                return Err(timed_out());
            };
            for m in msgs {
                if m.seq != seq {
                    continue; // a stale answer to an earlier request
                }
                if let Some((errno, text)) = m.error() {
                    if errno == 0 {
                        return Ok(Ok(()));
                    }
                    return Ok(Err((errno, text)));
                }
                if m.ty == libc::NLMSG_DONE as u16 {
                    let p = m.payload();
                    let code = p
                        .get(..4)
                        .and_then(|b| b.try_into().ok())
                        .map_or(0, i32::from_ne_bytes);
                    if code < 0 {
                        return Ok(Err((code.saturating_neg(), None)));
                    }
                    return Ok(Ok(()));
                }
                each(m);
            }
        }
    }

    /// Sends independent requests (each asking for an ack, sequence
    /// numbers `first_seq..`) in one `send` and returns each one's errno,
    /// 0 for success, in order. For messages the kernel handles one by
    /// one outside any batch (conntrack deletions); the receive buffer is
    /// sized for every ack.
    pub fn send_acked(
        &mut self,
        reqs: &[Vec<u8>],
        first_seq: u32,
    ) -> Result<Vec<i32>, NetlinkError> {
        let bytes: Vec<u8> = reqs.concat();
        self.size_buffers(bytes.len(), reqs.len());
        self.send_all_at_once(&bytes)?;
        let mut out: Vec<Option<i32>> = vec![None; reqs.len()];
        let mut pending = reqs.len();
        while pending > 0 {
            let Some(msgs) = self.recv(false)? else {
                return Err(timed_out());
            };
            for m in msgs {
                let Some(i) = m.seq.checked_sub(first_seq).map(|i| i as usize) else {
                    continue;
                };
                if let (Some(slot @ None), Some((errno, _))) = (out.get_mut(i), m.error()) {
                    *slot = Some(errno);
                    pending -= 1;
                }
            }
        }
        Ok(out.into_iter().map(|e| e.unwrap_or(0)).collect())
    }
}

fn timed_out() -> NetlinkError {
    NetlinkError::Receive(io::Error::new(
        io::ErrorKind::TimedOut,
        "no answer from the kernel before the receive timeout",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_msg(code: i32) -> Msg {
        let mut b = Vec::new();
        b.extend_from_slice(&36u32.to_ne_bytes());
        b.extend_from_slice(&(libc::NLMSG_ERROR as u16).to_ne_bytes());
        b.extend_from_slice(&0u16.to_ne_bytes());
        b.extend_from_slice(&[0; 8]);
        b.extend_from_slice(&code.to_ne_bytes());
        b.extend_from_slice(&[0; 16]);
        Msg::from_bytes(&b).expect("one message")
    }

    #[test]
    fn error_codes_at_the_edges_do_not_overflow() {
        assert_eq!(error_msg(-libc::ENOENT).error(), Some((libc::ENOENT, None)));
        assert_eq!(error_msg(0).error(), Some((0, None)));
        assert_eq!(error_msg(i32::MIN).error(), Some((i32::MAX, None)));
    }

    #[test]
    fn closing_another_socket_never_unlists_a_live_ones_port() {
        // Opening netlink sockets needs no privilege.
        let nf = Socket::open().expect("netfilter netlink socket");
        let port = nf.portid();
        assert!(is_own_port(port));
        // Route sockets number their ports apart (the first one of a
        // process takes its pid, as the first netfilter one does) and
        // commit no nftables batch: not listed, so closing one cannot
        // unlist a netfilter socket that holds the same number.
        let route = Socket::open_route().expect("route netlink socket");
        assert!(!route.own);
        drop(route);
        assert!(is_own_port(port));
        // A second socket with the same number (one in another network
        // namespace) closing takes its own entry only.
        own_ports().push(port);
        unlist_port(port);
        assert!(is_own_port(port));
        drop(nf);
    }

    #[test]
    fn a_datagram_splits_into_whole_messages_or_fails() {
        let one = error_msg(0).bytes().to_vec();
        let two = [one.clone(), one.clone()].concat();
        assert_eq!(Msg::split(&two).map(|m| m.len()), Ok(2));
        assert!(Msg::split(&two[..two.len() - 1]).is_err());
        let mut bad = one.clone();
        bad[..4].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert!(Msg::split(&bad).is_err());
        assert_eq!(Msg::split(&[]).map(|m| m.len()), Ok(0));
    }
}

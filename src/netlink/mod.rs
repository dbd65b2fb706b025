//! The netlink applier: makes the kernel's `inet nftpol` table (and the
//! `netdev nftpol` guard beside it) equal a desired [`Ruleset`] without
//! ever shelling out to `nft`.
//!
//! `apply` reads the table back into the IR ([`read`]), diffs it against
//! the desired ruleset (`policy_compiler::diff`), encodes the transaction
//! as ONE nftables batch ([`batch`]) and sends it in one `send`
//! ([`socket`]). The kernel commits the whole batch or none of it, and
//! processes it inside that one `sendmsg`, so a failure or a kill at any
//! moment leaves either the old or the new ruleset. Only the `inet
//! nftpol` and `netdev nftpol` tables are ever named in a message, and
//! read-back ignores every other table.
//!
//! Layout: `expr` and `elem` are the pure IR <-> kernel encodings,
//! `wire` the messages written in safe Rust (sets, elements, requests),
//! `parse` the kernel's answers read in safe Rust, `raw` every FFI call
//! (libnftnl expressions, the copy into nftnl's batch pages, the socket
//! calls mnl lacks), `socket` the netlink I/O, `batch` and `read` the two
//! directions. [`Session`] reads back and diffs on every apply;
//! [`Applier`] keeps what it committed for the agent's steady state.

pub mod batch;
pub mod conntrack;
pub mod elem;
pub mod expr;
pub mod nflog;
pub mod notify;
mod parse;
mod raw;
pub mod read;
pub mod route;
pub mod socket;
pub mod wire;

#[cfg(test)]
mod fuzz_tests;
#[cfg(test)]
mod kernel_tests;
#[cfg(test)]
mod route_tests;
#[cfg(test)]
mod tamper_tests;

use policy_compiler::diff::{self, Op, Transaction};
use policy_compiler::ir::Ruleset;
use std::io;
use std::time::{Duration, Instant};

/// Everything that can go wrong, one variant per phase of talking to the
/// kernel, each naming the object concerned.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error(
        "permission denied while {during}: nftpol needs CAP_NET_ADMIN in the node's network \
         namespace (run as root or grant the capability)"
    )]
    PermissionDenied { during: String },
    #[error("cannot open the netfilter netlink socket: {0}")]
    Socket(#[source] io::Error),
    #[error("cannot encode {object}: {reason}")]
    Encode { object: String, reason: String },
    #[error("sending the {bytes}-byte batch failed: {source}")]
    Send {
        bytes: usize,
        #[source]
        source: io::Error,
    },
    #[error("receiving from netlink failed: {0}")]
    Receive(#[source] io::Error),
    #[error(
        "the kernel rejected the batch, nothing was changed: {object} (message seq {seq}): {} \
         (errno {errno}){}{}",
        io::Error::from_raw_os_error(*errno),
        detail.as_ref().map(|d| format!(": {d}")).unwrap_or_default(),
        if *more > 0 { format!("; {more} more message(s) failed") } else { String::new() }
    )]
    Rejected {
        seq: u32,
        object: String,
        errno: i32,
        detail: Option<String>,
        more: usize,
    },
    #[error("the kernel did not acknowledge the end of the batch; it was not committed")]
    NotCommitted,
    #[error("reading back {what} failed: {} (errno {errno})", io::Error::from_raw_os_error(*errno))]
    Dump { what: String, errno: i32 },
    #[error("cannot decode {object} read back from the kernel: {reason}")]
    Decode { object: String, reason: String },
}

/// What one `apply` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApplyReport {
    /// `+2 chains, ~1 chain, +14 elements, -3 elements` or `no changes`.
    pub summary: String,
    /// Whether a batch was sent (false in steady state).
    pub batch_sent: bool,
    /// Messages in the batch, BEGIN and END excluded.
    pub messages: usize,
    /// Bytes of the batch.
    pub bytes: usize,
    /// Whether the table could not be decoded and was replaced whole
    /// (atomically, in the same single batch).
    pub replaced_foreign: bool,
}

/// What one sent batch cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchReport {
    pub messages: usize,
    pub bytes: usize,
    /// Building the batch buffer.
    pub build: Duration,
    /// From `send` until the END ack was read (the kernel's work).
    pub kernel: Duration,
}

/// An open connection to the kernel, reusable across operations.
pub struct Session {
    sock: socket::Socket,
    ack_each: bool,
}

impl Session {
    pub fn open() -> Result<Session, NetlinkError> {
        Ok(Session {
            sock: socket::Socket::open()?,
            ack_each: false,
        })
    }

    /// Whether every message of a batch asks for an ack. Off by default:
    /// the kernel reports a failing message whether or not it was asked
    /// to ack, so errors are still matched to their message by sequence
    /// number, and the END ack alone confirms the commit; per-message acks
    /// only cost the kernel one skb each (docs/BENCHMARKS.md).
    pub fn set_ack_each(&mut self, on: bool) {
        self.ack_each = on;
    }

    /// The `inet nftpol` table read back into the IR; `None` if absent.
    pub fn read_table(&mut self) -> Result<Option<Ruleset>, NetlinkError> {
        read::read_table(&mut self.sock)
    }

    /// [`Session::read_table`] with the values of the rules' counters.
    pub fn read_table_counted(
        &mut self,
    ) -> Result<Option<(Ruleset, policy_compiler::counters::Counters)>, NetlinkError> {
        read::read_table_counted(&mut self.sock)
    }

    /// The values of every counted rule of the table, from one rule dump
    /// (empty when the table is absent).
    pub fn read_counters(&mut self) -> Result<policy_compiler::counters::Counters, NetlinkError> {
        read::read_counters(&mut self.sock)
    }

    /// Sends `tx` as one atomic batch. An empty transaction sends nothing.
    pub fn send(&mut self, tx: &Transaction) -> Result<BatchReport, NetlinkError> {
        if tx.is_empty() {
            return Ok(BatchReport::default());
        }
        let t0 = Instant::now();
        let mut b = batch::encode(tx)?;
        if !self.ack_each && b.end_seq.is_some() {
            batch::strip_message_acks(&mut b);
        }
        let build = t0.elapsed();
        let t1 = Instant::now();
        batch::send(&mut self.sock, &b, tx)?;
        Ok(BatchReport {
            messages: b.objects.len(),
            bytes: b.buf.len(),
            build,
            kernel: t1.elapsed(),
        })
    }

    /// Read back, diff, and send the difference in one batch.
    pub fn apply(&mut self, desired: &Ruleset) -> Result<ApplyReport, NetlinkError> {
        let (tx, replaced_foreign) = match self.read_table() {
            Ok(Some(actual)) => (diff::diff(desired, &actual), false),
            Ok(None) => (diff::create(desired), false),
            // Something in our table that nftpol did not write (a rule
            // added by hand, say): replace the table whole, still in one
            // atomic batch, so traffic never sees it half-built.
            Err(NetlinkError::Decode { .. }) => {
                let mut tx = diff::create(desired);
                tx.ops.insert(0, Op::DelTable);
                (tx, true)
            }
            Err(e) => return Err(e),
        };
        let summary = if replaced_foreign {
            format!("replaced foreign table contents: {}", tx.summary())
        } else {
            tx.summary()
        };
        let sent = self.send(&tx)?;
        Ok(ApplyReport {
            summary,
            batch_sent: !tx.is_empty(),
            messages: sent.messages,
            bytes: sent.bytes,
            replaced_foreign,
        })
    }

    /// Deletes the table and the guard table; `false` if neither was
    /// there.
    pub fn cleanup(&mut self) -> Result<bool, NetlinkError> {
        let mut ops = Vec::new();
        if read::table_exists(&mut self.sock)? {
            ops.push(Op::DelTable);
        }
        if read::table_flags_in(&mut self.sock, wire::FAMILY_NETDEV)?.is_some() {
            ops.push(Op::Guard(diff::GuardOp::DelTable));
        }
        if ops.is_empty() {
            return Ok(false);
        }
        self.send(&Transaction { ops })?;
        Ok(true)
    }
}

/// A long-lived applier for the agent: remembers what it last committed,
/// so a steady-state reconcile costs an in-memory diff plus a batch the
/// size of the change, not a read-back of the whole table. It reads back
/// on the first apply, after any failure, and after [`Applier::forget`]
/// (e.g. on a periodic drift check). If the table changed behind its back
/// the kernel rejects the batch (EEXIST/ENOENT; nothing is applied) and
/// the apply is retried once from a fresh read-back.
pub struct Applier {
    session: Session,
    /// `Some(state)` when the kernel is known to hold `state`
    /// (`Some(None)`: known to have no table).
    known: Option<Option<Ruleset>>,
}

impl Applier {
    pub fn new() -> Result<Applier, NetlinkError> {
        Ok(Applier {
            session: Session::open()?,
            known: None,
        })
    }

    /// Drop the remembered state: the next apply reads the table back.
    pub fn forget(&mut self) {
        self.known = None;
    }

    pub fn apply(&mut self, desired: &Ruleset) -> Result<ApplyReport, NetlinkError> {
        self.apply_owned(desired.clone())
    }

    /// [`Applier::apply`] when `desired` differs from the last ruleset
    /// this applier committed only in the `touched` objects: the batch is
    /// built from those alone and the applier's picture of the kernel is
    /// updated in place, so the cost follows the change, not the table.
    /// Without a picture of the kernel (first apply, after a failure) it is
    /// a whole apply.
    pub fn apply_touched(
        &mut self,
        desired: &Ruleset,
        touched: &diff::Touched,
    ) -> Result<ApplyReport, NetlinkError> {
        let mut actual = match self.known.take() {
            Some(Some(actual)) if !touched.all => actual,
            other => {
                self.known = other;
                return self.apply(desired);
            }
        };
        let tx = diff::diff_touched(desired, &actual, touched);
        match self.session.send(&tx) {
            Ok(sent) => {
                diff::copy_touched(&mut actual, desired, touched);
                self.known = Some(Some(actual));
                Ok(ApplyReport {
                    summary: tx.summary(),
                    batch_sent: !tx.is_empty(),
                    messages: sent.messages,
                    bytes: sent.bytes,
                    replaced_foreign: false,
                })
            }
            // Our picture of the kernel was stale (the failed batch changed
            // nothing): start over from a read-back.
            Err(NetlinkError::Rejected { .. }) => self.apply(desired),
            Err(e) => {
                if let Ok(s) = Session::open() {
                    self.session = s;
                }
                Err(e)
            }
        }
    }

    /// [`Applier::apply`] taking the ruleset by value, which the applier
    /// keeps as its picture of the kernel (saves a copy per reconcile).
    pub fn apply_owned(&mut self, desired: Ruleset) -> Result<ApplyReport, NetlinkError> {
        let result = self.apply_inner(&desired);
        match result {
            Ok(report) => {
                self.known = Some(Some(desired));
                Ok(report)
            }
            Err(e) => {
                // Unread answers may still sit in the socket after an I/O
                // error; start the next attempt on a fresh one.
                if let Ok(s) = Session::open() {
                    self.session = s;
                }
                Err(e)
            }
        }
    }

    fn apply_inner(&mut self, desired: &Ruleset) -> Result<ApplyReport, NetlinkError> {
        let report = match self.known.take() {
            None => self.session.apply(desired)?,
            Some(known) => {
                let tx = match &known {
                    Some(actual) => diff::diff(desired, actual),
                    None => diff::create(desired),
                };
                match self.session.send(&tx) {
                    Ok(sent) => ApplyReport {
                        summary: tx.summary(),
                        batch_sent: !tx.is_empty(),
                        messages: sent.messages,
                        bytes: sent.bytes,
                        replaced_foreign: false,
                    },
                    // Our picture of the kernel was stale: start over from
                    // what the kernel really holds (the failed batch
                    // changed nothing).
                    Err(NetlinkError::Rejected { .. }) => self.session.apply(desired)?,
                    Err(e) => return Err(e),
                }
            }
        };
        Ok(report)
    }

    /// The underlying session (read-back, raw transactions).
    pub fn session(&mut self) -> &mut Session {
        &mut self.session
    }
}

/// Makes the kernel's `inet nftpol` table equal `desired` with one atomic
/// batch (none in steady state).
pub fn apply(desired: &Ruleset) -> Result<ApplyReport, NetlinkError> {
    Session::open()?.apply(desired)
}

/// Removes the `inet nftpol` table; `Ok(false)` when it was absent.
pub fn cleanup() -> Result<bool, NetlinkError> {
    Session::open()?.cleanup()
}

/// Whether the kernel enforces at all right now: the table exists and is
/// not dormant (one small request; for /readyz). `Err` says why not.
pub fn enforcement_state() -> Result<(), String> {
    let mut s = Session::open().map_err(|e| e.to_string())?;
    match read::table_flags(&mut s.sock) {
        Ok(None) => Err(format!(
            "table inet {} is absent",
            policy_compiler::ir::TABLE_NAME
        )),
        Ok(Some(f)) if f & policy_compiler::ir::TABLE_F_DORMANT != 0 => Err(format!(
            "table inet {} is dormant (flags dormant): nothing is enforced",
            policy_compiler::ir::TABLE_NAME
        )),
        Ok(Some(_)) => match read::table_flags_in(&mut s.sock, wire::FAMILY_NETDEV) {
            Ok(Some(f)) if f & policy_compiler::ir::TABLE_F_DORMANT != 0 => Err(format!(
                "table netdev {} is dormant (flags dormant): VLAN and ARP are not guarded",
                policy_compiler::ir::TABLE_NAME
            )),
            Ok(_) => Ok(()),
            Err(e) => Err(e.to_string()),
        },
        Err(e) => Err(e.to_string()),
    }
}

/// Reads the `inet nftpol` table back into the IR.
pub fn read_table() -> Result<Option<Ruleset>, NetlinkError> {
    Session::open()?.read_table()
}

/// [`read_table`] with the values of its rules' counters, in one dump.
pub fn read_table_counted(
) -> Result<Option<(Ruleset, policy_compiler::counters::Counters)>, NetlinkError> {
    Session::open()?.read_table_counted()
}

/// The values of every counted rule (one rule dump).
pub fn read_counters() -> Result<policy_compiler::counters::Counters, NetlinkError> {
    Session::open()?.read_counters()
}

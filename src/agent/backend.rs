//! Where rulesets go: the [`Backend`] trait the reconcile loop programs
//! through, the netlink backend for the real kernel, and an in-memory
//! backend for tests, demos (`--dry-run`) and benchmarks of everything in
//! front of the kernel.
//!
//! A backend's `apply` has the applier's contract: read the table back,
//! diff against the desired ruleset, send the difference as one atomic
//! batch (nothing when equal), and report whether anything changed. The
//! loop relies on "nothing changed" to detect drift.

use crate::netlink::{Applier, ApplyReport, NetlinkError};
use policy_compiler::counters::{Counters, RuleCounter};
use policy_compiler::diff;
use policy_compiler::ir::Ruleset;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// What one apply did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Whether a batch was sent (the kernel differed from the desired set).
    pub changed: bool,
    /// `+2 chains, -3 elements`, or `no changes`.
    pub summary: String,
    /// Size of the batch: operations (netlink messages) sent.
    pub messages: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("the in-memory kernel rejected the batch: {0}")]
    FakeKernel(#[from] diff::FakeError),
}

impl BackendError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            BackendError::Netlink(e) => match e {
                NetlinkError::PermissionDenied { .. } => "permission",
                NetlinkError::Socket(_) => "netlink_socket",
                NetlinkError::Encode { .. } => "netlink_encode",
                NetlinkError::Send { .. } => "netlink_send",
                NetlinkError::Receive(_) => "netlink_receive",
                NetlinkError::Rejected { .. } => "netlink_rejected",
                NetlinkError::NotCommitted => "netlink_not_committed",
                NetlinkError::Dump { .. } => "netlink_dump",
                NetlinkError::Decode { .. } => "netlink_decode",
            },
            BackendError::FakeKernel(_) => "fake_kernel",
        }
    }
}

/// Programs a desired ruleset into some kernel.
pub trait Backend: Send + 'static {
    /// Makes the kernel equal `desired`. May trust its own record of what
    /// it last wrote instead of reading the table back (the hot path).
    fn apply(&mut self, desired: &Ruleset) -> Result<Applied, BackendError>;

    /// Like `apply`, told that `desired` differs from the ruleset of the
    /// last successful call only in the `touched` objects, so the batch can
    /// be built from those alone (the incremental reconcile's hot path).
    fn apply_touched(
        &mut self,
        desired: &Ruleset,
        touched: &diff::Touched,
    ) -> Result<Applied, BackendError> {
        let _ = touched;
        self.apply(desired)
    }

    /// Like `apply`, but always reads the kernel back first: the drift
    /// check. `changed` then means the kernel had drifted.
    fn verify(&mut self, desired: &Ruleset) -> Result<Applied, BackendError> {
        self.apply(desired)
    }

    /// The values of the table's rule counters (none by default: a backend
    /// without a kernel counts nothing).
    fn counters(&mut self) -> Result<Counters, BackendError> {
        Ok(Counters::default())
    }
}

/// The state of the in-memory kernel, shared with whoever holds a
/// [`MemoryBackend`] clone (tests look at it, or change it behind the
/// agent's back to simulate drift).
#[derive(Debug, Default)]
pub struct MemoryKernel {
    /// `None` when the table does not exist.
    pub table: Option<Ruleset>,
    /// Every call to `apply`.
    pub applies: usize,
    /// Applies that sent a batch.
    pub batches: usize,
    /// Packets per counted rule, by (chain, position): what a test says
    /// went through (the in-memory kernel sees no packets).
    pub hits: BTreeMap<(String, usize), u64>,
}

/// An in-memory kernel. Clones share the same state. Public on purpose,
/// like the fake kernel it runs on: `agent --dry-run` uses it, and it
/// applies exactly the diff the netlink backend sends.
#[derive(Clone, Debug, Default)]
pub struct MemoryBackend(Arc<Mutex<MemoryKernel>>);

impl MemoryBackend {
    pub fn state(&self) -> MutexGuard<'_, MemoryKernel> {
        // A panic elsewhere while holding the lock leaves plain data that
        // is still consistent enough to read.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Backend for MemoryBackend {
    fn counters(&mut self) -> Result<Counters, BackendError> {
        let k = self.state();
        let Some(table) = &k.table else {
            return Ok(Counters::default());
        };
        let mut out = Vec::new();
        for (name, chain) in &table.chains {
            for (i, rule) in chain.rules.iter().enumerate() {
                if policy_compiler::counters::counts(rule) {
                    let packets = k.hits.get(&(name.clone(), i)).copied().unwrap_or(0);
                    out.push(RuleCounter::new(name, i, rule, packets, packets * 100));
                }
            }
        }
        Ok(Counters::from_rules(out))
    }

    fn apply(&mut self, desired: &Ruleset) -> Result<Applied, BackendError> {
        self.apply_touched(desired, &diff::Touched::everything())
    }

    fn apply_touched(
        &mut self,
        desired: &Ruleset,
        touched: &diff::Touched,
    ) -> Result<Applied, BackendError> {
        let mut k = self.state();
        k.applies += 1;
        // The same diff and atomic apply the netlink applier uses, on the
        // in-memory fake kernel, so summaries and batch sizes match.
        let tx = match &k.table {
            Some(t) => diff::diff_touched(desired, t, touched),
            None => diff::create(desired),
        };
        if tx.is_empty() {
            return Ok(Applied {
                changed: false,
                summary: "no changes".into(),
                messages: 0,
            });
        }
        let mut fake = diff::FakeKernel {
            table: k.table.take(),
        };
        let result = fake.apply(&tx);
        k.table = fake.table;
        result?;
        debug_assert_eq!(k.table.as_ref(), Some(desired));
        k.batches += 1;
        Ok(Applied {
            changed: true,
            summary: tx.summary(),
            messages: tx.ops.len(),
        })
    }
}

/// The real kernel, through the netlink applier's [`Applier`]: it diffs
/// against what it last committed (no read-back per event: reading the
/// whole table back costs more than the change at scale, and the agent is
/// the table's only writer) and reads back on the first apply, after any
/// failure (retrying once when the table changed behind its back) and on
/// `verify`, the periodic drift check.
pub struct NetlinkBackend {
    applier: Applier,
}

impl NetlinkBackend {
    pub fn new() -> Result<NetlinkBackend, BackendError> {
        Ok(NetlinkBackend {
            applier: Applier::new()?,
        })
    }

    fn report(r: ApplyReport) -> Applied {
        if r.replaced_foreign {
            tracing::warn!(
                "the inet nftpol table held objects nftpol did not write; replaced it whole"
            );
        }
        Applied {
            changed: r.batch_sent,
            summary: r.summary,
            messages: r.messages,
        }
    }
}

impl Backend for NetlinkBackend {
    fn apply(&mut self, desired: &Ruleset) -> Result<Applied, BackendError> {
        Ok(Self::report(self.applier.apply(desired)?))
    }

    fn apply_touched(
        &mut self,
        desired: &Ruleset,
        touched: &diff::Touched,
    ) -> Result<Applied, BackendError> {
        Ok(Self::report(self.applier.apply_touched(desired, touched)?))
    }

    fn verify(&mut self, desired: &Ruleset) -> Result<Applied, BackendError> {
        self.applier.forget();
        Ok(Self::report(self.applier.apply(desired)?))
    }

    fn counters(&mut self) -> Result<Counters, BackendError> {
        Ok(self.applier.session().read_counters()?)
    }
}

//! The reconcile loop: applies source changes to the cluster index, and
//! when the cluster changed, compiles the node's ruleset and hands it to
//! the backend (which diffs against the kernel and sends one atomic batch).
//!
//! Rules it keeps, in order of importance:
//! - it never touches the kernel before every watched kind has been listed
//!   once (a half-known cluster would drop allowed or allow denied
//!   traffic), and then diffs against whatever table is already there, so
//!   a restart leaves no gap;
//! - changes are coalesced by an adaptive window: a batch may follow the
//!   previous one after `settle` (1 ms), and the window doubles with every
//!   batch that follows its predecessor within `debounce`, up to
//!   `max_delay`; `debounce` of quiet resets it. So an isolated change, or
//!   a follow-up to it, is programmed at once (no half-applied state is
//!   left enforced for a fixed debounce), while a sustained stream settles
//!   at one batch per `max_delay` and a burst of 1,000 events gives a
//!   handful of batches. A change also goes after `debounce` of quiet even
//!   if the window is longer, so the tail of a stream does not wait it out;
//! - an event recompiles only what it feeds (`policy_compiler::incr`: the
//!   affected pods' chains, the sets at the addresses it touched) and the
//!   batch is built from those objects alone; a complete listing marks
//!   each object that changed the same way (`--full-compile` compiles the
//!   node every time);
//! - a failed batch changes nothing in the kernel (batches are atomic), so
//!   the last good ruleset stays enforced; it is retried with exponential
//!   backoff;
//! - every `drift_interval` the last applied ruleset is verified: the
//!   backend reads the table back (the hot path trusts its record of the
//!   last batch instead), and a non-empty difference means someone changed
//!   our table; it is repaired, logged and counted. A `Verify` change (the
//!   kernel announced that someone else touched the table) runs the same
//!   check at once; until it has repaired the table, /readyz says so.
//!
//! Time comes from a [`Clock`]: the loop thread uses the system clock,
//! tests drive a [`ManualClock`] and call [`Reconciler::handle`] and
//! [`Reconciler::poll`] themselves, so debounce, backoff and drift are
//! checked to the millisecond without sleeping.

use crate::agent::backend::{Applied, Backend};
use crate::agent::metrics::Metrics;
use crate::agent::status::{HitExport, HitTracker, Inventory, PolicyMetrics, StatusState};
use crate::revoke::{Revoke, Scope};
use nftpol_crds::status::NodeEnforcement;
use policy_compiler::admin::AdminKind;
use policy_compiler::audit::AuditOptions;
use policy_compiler::diff::{self, Touched};
use policy_compiler::incr::{Incremental, ObjectKey};
use policy_compiler::{Cluster, NodeNet, Object, Ruleset};
use std::collections::BTreeSet;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The kinds the agent watches; each must be listed before the first batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Namespace,
    Pod,
    Policy,
    Node,
    Admin(AdminKind),
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Namespace,
        Kind::Pod,
        Kind::Policy,
        Kind::Node,
        Kind::Admin(AdminKind::ClusterNetworkPolicy),
        Kind::Admin(AdminKind::AdminNetworkPolicy),
        Kind::Admin(AdminKind::BaselineAdminNetworkPolicy),
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Namespace => "namespace",
            Kind::Pod => "pod",
            Kind::Policy => "networkpolicy",
            Kind::Node => "node",
            Kind::Admin(AdminKind::ClusterNetworkPolicy) => "clusternetworkpolicy",
            Kind::Admin(AdminKind::AdminNetworkPolicy) => "adminnetworkpolicy",
            Kind::Admin(AdminKind::BaselineAdminNetworkPolicy) => "baselineadminnetworkpolicy",
        }
    }

    pub fn of(o: &Object) -> Kind {
        match o {
            Object::Namespace(_) => Kind::Namespace,
            Object::Pod(_) => Kind::Pod,
            Object::Policy(_) => Kind::Policy,
            Object::Node(_) => Kind::Node,
            Object::AdminPolicy(p) => Kind::Admin(p.kind),
        }
    }

    /// From an `ObjectError`'s kind (`Pod`, `NetworkPolicy`, ...).
    pub fn from_api(kind: &str) -> Option<Kind> {
        match kind {
            "Namespace" => Some(Kind::Namespace),
            "Pod" => Some(Kind::Pod),
            "NetworkPolicy" => Some(Kind::Policy),
            "Node" => Some(Kind::Node),
            k => AdminKind::from_api(k).map(Kind::Admin),
        }
    }
}

/// Most queued changes taken at once before the loop checks its deadline.
const DRAIN_MAX: usize = 4096;
/// How often to look for bridged pods still unlearned while there are
/// some: their ports drop everything but ARP and ND until then, so this
/// bounds the gap a pod that did not answer the first nudge sees. A look
/// is a read of the node's routes and tables (the nudge itself is
/// rate-limited by the prober).
const RELEARN: Duration = Duration::from_secs(1);

/// `(namespace, name)`; the namespace is empty for Namespaces.
pub type Key = (String, String);

fn key_of(o: &Object) -> Key {
    match o {
        Object::Namespace(n) => (String::new(), n.name.clone()),
        Object::Pod(p) => (p.namespace.clone(), p.name.clone()),
        Object::Policy(p) => (p.namespace.clone(), p.name.clone()),
        Object::Node(n) => (String::new(), n.name.clone()),
        Object::AdminPolicy(p) => (String::new(), p.name.clone()),
    }
}

/// What a source tells the loop.
#[derive(Debug)]
pub enum Change {
    /// An object was added or modified (already reduced to the model).
    Apply(Object),
    /// An object was deleted, or updated into something invalid: skipped
    /// objects count as absent, exactly as `nftpol compile` treats them,
    /// so the agent enforces what the auditor's command prints.
    Delete { kind: Kind, key: Key },
    /// A complete listing of these kinds handed over whole (a manifest
    /// directory reload, a CRD not installed): the same as a
    /// `ListStart`, `Listed`, `ListDone` of each kind, in one change, so
    /// no batch goes between two of its kinds. Objects of other kinds are
    /// ignored.
    Replace {
        kinds: Vec<Kind>,
        objects: Vec<Object>,
    },
    /// A complete listing of `kind` begins; its objects follow one by one
    /// as [`Change::Listed`], then [`Change::ListDone`]. The same as one
    /// `Replace`, but the listing is never held whole: each object goes
    /// into the index as it arrives (150,000 pods held as a list until
    /// the last one came were a fifth of the agent's peak heap). Another
    /// `ListStart` before the `ListDone` starts the listing over.
    ListStart(Kind),
    /// One object of the listing in progress of its kind.
    Listed(Object),
    /// The listing of `kind` is complete: objects it did not list are
    /// deleted, and the kind counts as synced.
    ListDone(Kind),
    /// Someone else changed the kernel table (seen in the kernel's
    /// notifications): read it back and repair it now rather than at the
    /// next drift check.
    Verify { reason: String },
    /// Stop the loop.
    Shutdown,
}

/// A change with the instant the source received it, the start of the
/// programming latency.
pub type Stamped = (Instant, Change);

/// Where the loop reads the time.
pub trait Clock: Send + 'static {
    fn now(&self) -> Instant;
}

/// The real clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that moves only when told to; clones share the same time.
#[cfg(test)]
#[derive(Clone, Debug)]
pub struct ManualClock(Arc<std::sync::Mutex<Instant>>);

#[cfg(test)]
impl Default for ManualClock {
    fn default() -> ManualClock {
        ManualClock(Arc::new(std::sync::Mutex::new(Instant::now())))
    }
}

#[cfg(test)]
impl ManualClock {
    pub fn advance(&self, by: Duration) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) += by;
    }

    /// Moves to `t` (never backwards).
    pub fn set(&self, t: Instant) {
        let mut now = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *now = (*now).max(t);
    }
}

#[cfg(test)]
impl Clock for ManualClock {
    fn now(&self) -> Instant {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Loop tuning.
#[derive(Clone, Debug)]
pub struct Settings {
    pub node: String,
    /// The first coalescing window after a quiet spell.
    pub settle: Duration,
    /// Quiet that resets the window, and that ends it early.
    pub debounce: Duration,
    /// The largest window: no change waits longer behind a batch.
    pub max_delay: Duration,
    pub drift_interval: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Source validation on (the default of `nftpol agent`).
    pub source_validation: bool,
    /// Pods may send tunnel packets (`--allow-pod-tunnels`).
    pub pod_tunnels: bool,
    /// Learn pod interfaces from this namespace's routes, ARP table and
    /// bridge FDBs at every reconcile and drift check (see `ifmap`); off,
    /// no interface is known and no validation chain is compiled.
    pub discover_interfaces: bool,
    /// A fixed `NAMESPACE/POD: INTERFACE` map (read at every compile)
    /// instead of discovery.
    pub pod_interfaces_file: Option<std::path::PathBuf>,
    /// How often the rule counters are read (one rule dump).
    pub counters_interval: Duration,
    /// The least time between two status objects handed to the writer.
    pub status_interval: Duration,
    pub policy_metrics: PolicyMetrics,
    /// Most policies with their own hit series.
    pub policy_metrics_max: usize,
    /// Write the NodeNetworkPolicyStatus object (with an API source).
    pub write_status: bool,
    /// Recompile only what each change feeds (off: the whole node).
    pub incremental: bool,
    /// Node-wide verdict logging (`--log`, `--log-group`, `--log-rate`).
    pub audit: AuditOptions,
}

impl Settings {
    pub fn new(node: &str) -> Settings {
        Settings {
            node: node.to_string(),
            settle: Duration::from_millis(1),
            debounce: Duration::from_millis(20),
            max_delay: Duration::from_millis(200),
            drift_interval: Duration::from_secs(30),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
            source_validation: true,
            pod_tunnels: false,
            discover_interfaces: false,
            pod_interfaces_file: None,
            counters_interval: Duration::from_secs(10),
            status_interval: Duration::from_secs(5),
            policy_metrics: PolicyMetrics::Auto,
            policy_metrics_max: 100,
            write_status: true,
            incremental: true,
            audit: AuditOptions::default(),
        }
    }
}

/// How long a listing may hold changes back before the agent warns (and
/// again each time as long again passes): a relist of 150,000 pods takes
/// seconds, and the watcher retries a failed one within 30 s.
const LISTING_STALLED: Duration = Duration::from_secs(60);

/// A listing in progress ([`Change::ListStart`]), across its restarts.
#[derive(Default)]
struct Listing {
    /// The objects in the index that the current attempt has not listed
    /// yet: what its end deletes. Empty at the first listing, so the first
    /// sync holds no copy of the keys.
    unlisted: BTreeSet<Key>,
    /// Whether an object it listed changed the index, in this attempt or
    /// one that failed part way before it.
    changed: bool,
    /// When it first changed the index: no batch has gone since.
    held_since: Option<Instant>,
    /// Attempts that started over (kube's watcher starts a failed
    /// listing again from its first page).
    restarts: u32,
    /// Warnings logged that it holds changes back.
    warnings: u32,
}

impl Listing {
    /// When it is next due a warning, if it holds changes back.
    fn warn_at(&self) -> Option<Instant> {
        let since = self.held_since?;
        Some(since + LISTING_STALLED * (self.warnings + 1))
    }
}

pub struct Reconciler<B, C = SystemClock> {
    settings: Settings,
    clock: C,
    backend: B,
    metrics: Arc<Metrics>,
    cluster: Cluster,
    synced: BTreeSet<Kind>,
    /// The listings in progress. No batch goes while one has changed the
    /// index, so the kernel never sees a half-listed kind (say a pod
    /// deleted during an outage beside the new one that took over its
    /// address), not even when the listing fails part way and starts
    /// over; a listing that keeps failing before its first object (the
    /// API server down) holds nothing back. The kernel keeps the last
    /// complete state meanwhile, still checked and repaired.
    listing: std::collections::BTreeMap<Kind, Listing>,
    /// When the oldest change not yet in the kernel arrived.
    dirty_since: Option<Instant>,
    last_change: Instant,
    /// When the last batch attempt finished.
    last_batch: Option<Instant>,
    /// Batches in a row that each followed the previous one within
    /// `debounce`; the window after the last one is `settle << streak`.
    streak: u32,
    /// Failed attempts in a row, and when to try again.
    failures: u32,
    retry_at: Option<Instant>,
    /// The ruleset the kernel was last made equal to.
    last_applied: Option<Ruleset>,
    next_drift: Instant,
    /// Why the table must be read back and repaired at once, if it must.
    verify_now: Option<String>,
    /// The interface map of the last compile, and what was last warned
    /// about (so a steady state logs once).
    last_net: NodeNet,
    /// Nudges bridged pods the node has not resolved yet (rate-limited
    /// across checks, so behind a lock for the `&self` discovery).
    prober: std::sync::Mutex<crate::ifmap::Prober>,
    /// When to look again for bridged pods still unlearned (their ports
    /// are closed until then); `None` when there are none.
    relearn_at: Option<Instant>,
    last_warned: (Vec<String>, Vec<String>),
    /// Cuts the connections each newly applied ruleset denies, when on.
    revoker: Option<Box<dyn Revoke>>,
    /// Hit totals across counter readings, and the next reading.
    hits: HitTracker,
    /// Which policies have a series of their own in /metrics.
    hit_export: HitExport,
    next_counters: Instant,
    /// What the status object says, where it goes, and when next.
    status: StatusState,
    inventory: Inventory,
    status_tx: Option<tokio::sync::watch::Sender<Option<NodeEnforcement>>>,
    status_dirty: bool,
    next_status: Instant,
    /// The node's ruleset, kept up to date change by change.
    incr: Incremental,
    /// What changed since the last successful batch.
    pending: Touched,
    /// Pod names and isolating policies for the verdict log, when on.
    directory: Option<Arc<crate::agent::verdict_log::Directory>>,
}

impl<B: Backend> Reconciler<B> {
    pub fn new(settings: Settings, backend: B, metrics: Arc<Metrics>) -> Self {
        Reconciler::with_clock(settings, backend, metrics, SystemClock)
    }
}

impl<B: Backend, C: Clock> Reconciler<B, C> {
    pub fn with_clock(settings: Settings, backend: B, metrics: Arc<Metrics>, clock: C) -> Self {
        let now = clock.now();
        let incr = Incremental::with_audit(&settings.node, settings.audit.clone());
        let hit_export = HitExport::new(settings.policy_metrics, settings.policy_metrics_max);
        Reconciler {
            hit_export,
            next_drift: now + settings.drift_interval,
            last_net: NodeNet::default(),
            prober: Default::default(),
            relearn_at: None,
            last_warned: Default::default(),
            settings,
            clock,
            backend,
            metrics,
            cluster: Cluster::new(),
            synced: BTreeSet::new(),
            listing: Default::default(),
            dirty_since: None,
            last_change: now,
            last_batch: None,
            streak: 0,
            failures: 0,
            retry_at: None,
            last_applied: None,
            verify_now: None,
            revoker: None,
            directory: None,
            hits: HitTracker::default(),
            next_counters: now,
            status: StatusState::default(),
            inventory: Inventory::default(),
            status_tx: None,
            status_dirty: true,
            next_status: now,
            incr,
            pending: Touched::default(),
        }
    }

    /// After every batch that changes the kernel table, cut the live
    /// connections the new ruleset denies through `r`.
    /// Hands a status to `tx` at most every `status_interval` whenever it
    /// changed, naming resourceVersions and invalid objects from
    /// `inventory`.
    pub fn set_status(
        &mut self,
        inventory: Inventory,
        tx: tokio::sync::watch::Sender<Option<NodeEnforcement>>,
    ) {
        self.inventory = inventory;
        self.status_tx = Some(tx);
    }

    /// Per-policy hit totals so far.
    pub fn hits(&self) -> &HitTracker {
        &self.hits
    }

    pub fn set_revoker(&mut self, r: Box<dyn Revoke>) {
        self.revoker = Some(r);
    }

    /// Keeps `dir` up to date for the verdict log's lines.
    pub fn set_directory(&mut self, dir: Arc<crate::agent::verdict_log::Directory>) {
        dir.rebuild(&self.cluster);
        self.directory = Some(dir);
    }

    pub fn into_backend(self) -> B {
        self.backend
    }

    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    fn all_synced(&self) -> bool {
        Kind::ALL.iter().all(|k| self.synced.contains(k))
    }

    /// Runs until `Shutdown` or until every sender is gone.
    pub fn run(mut self, rx: Receiver<Stamped>) -> Self {
        loop {
            let msg = match self.deadline() {
                Some(d) => rx.recv_timeout(d.saturating_duration_since(self.clock.now())),
                None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            match msg {
                Ok((_, Change::Shutdown)) | Err(RecvTimeoutError::Disconnected) => return self,
                Ok((at, change)) => self.handle(at, change),
                Err(RecvTimeoutError::Timeout) => {}
            }
            // Take what is already queued before deciding, so a burst
            // becomes one batch rather than one per event; bounded, so an
            // endless flood cannot hold off `max_delay`.
            for _ in 0..DRAIN_MAX {
                match rx.try_recv() {
                    Ok((_, Change::Shutdown)) => return self,
                    Ok((at, change)) => self.handle(at, change),
                    Err(_) => break,
                }
            }
            self.poll();
        }
    }

    /// Does what is due now (a batch, a retry or the drift check), if
    /// anything; returns whether it did.
    pub fn poll(&mut self) -> bool {
        let due = self.deadline().is_some_and(|d| d <= self.clock.now());
        if due {
            self.tick();
        }
        due
    }

    /// The next instant something is due, `None` while waiting for the
    /// initial lists.
    pub fn deadline(&self) -> Option<Instant> {
        let work = self.work_deadline()?;
        let mut due = work.min(self.next_counters);
        if self.status_dirty && self.status_tx.is_some() {
            due = due.min(self.next_status);
        }
        Some(due)
    }

    /// [`Reconciler::deadline`] of the kernel work alone.
    fn work_deadline(&self) -> Option<Instant> {
        if !self.all_synced() {
            return None;
        }
        let s = &self.settings;
        if self.verify_now.is_some() {
            return Some(self.retry_at.unwrap_or_else(|| self.clock.now()));
        }
        if self.held() {
            // Only the kernel's last complete state is looked after: the
            // drift check, the retry of a failed repair, and the warnings.
            let retry = self.retry_at.filter(|_| self.last_applied.is_some());
            let warn = self.listing.values().filter_map(Listing::warn_at).min();
            return [Some(self.next_drift), retry, warn]
                .into_iter()
                .flatten()
                .min();
        }
        match self.dirty_since {
            Some(first) => {
                // An isolated change goes at once; while batches follow
                // each other, the next waits for the window since the last
                // one (or `debounce` of quiet, whichever is first, but
                // never more than `max_delay`). Events that arrive during
                // a batch queue up and join the next one.
                let due = match self.last_batch {
                    None => first,
                    Some(last) => {
                        let windowed = (last + self.window()).min(self.last_change + s.debounce);
                        first.max(windowed).min(first + s.max_delay)
                    }
                };
                Some(match self.retry_at {
                    Some(r) => due.max(r),
                    None => due,
                })
            }
            None => Some(match self.relearn_at {
                Some(r) => r.min(self.next_drift),
                None => self.next_drift,
            }),
        }
    }

    /// Whether a listing holds batches back (it changed the index).
    fn held(&self) -> bool {
        self.listing.values().any(|l| l.changed)
    }

    /// The coalescing window after the last batch.
    fn window(&self) -> Duration {
        let s = &self.settings;
        s.settle
            .saturating_mul(1u32 << self.streak.min(20))
            .min(s.max_delay)
    }

    fn mark_dirty(&mut self, at: Instant) {
        self.last_change = self.clock.now();
        self.dirty_since = Some(self.dirty_since.map_or(at, |d| d.min(at)));
    }

    /// Applies one change to the index.
    pub fn handle(&mut self, at: Instant, change: Change) {
        // The verdict log names pods by address: what a pod held before.
        let pod_before = match (&self.directory, &change) {
            (Some(_), Change::Apply(o)) if Kind::of(o) == Kind::Pod => Some(key_of(o)),
            (
                Some(_),
                Change::Delete {
                    kind: Kind::Pod,
                    key,
                },
            ) => Some(key.clone()),
            _ => None,
        }
        .map(|k| {
            let ips = self.cluster.pod(&k.0, &k.1).map(|p| p.ips.clone());
            (k, ips.unwrap_or_default())
        });
        let relist = match &change {
            Change::Replace { kinds, .. } => kinds.contains(&Kind::Pod),
            Change::ListDone(kind) => *kind == Kind::Pod,
            _ => false,
        };
        let changed = match change {
            Change::Apply(o) => {
                let key = object_key(Kind::of(&o), &key_of(&o));
                self.tracked(key, |c| c.apply(o))
            }
            Change::Delete { kind, key } => {
                self.tracked(object_key(kind, &key), |c| delete(c, kind, &key))
            }
            // A listing of each kind, handed over whole: one change, so
            // no batch can go between the end of one kind and the next.
            Change::Replace { kinds, objects } => {
                let mut changed = false;
                for &kind in &kinds {
                    self.list_start(kind);
                }
                for o in objects {
                    if kinds.contains(&Kind::of(&o)) {
                        changed |= self.list_object(o);
                    }
                }
                for &kind in &kinds {
                    changed |= self.list_done(kind, kind == Kind::Pod);
                }
                changed
            }
            Change::ListStart(kind) => {
                self.list_start(kind);
                false
            }
            Change::Listed(o) => self.list_object(o),
            Change::ListDone(kind) => self.list_done(kind, relist),
            Change::Verify { reason } => {
                if self.verify_now.is_none() {
                    tracing::warn!(
                        change = %reason,
                        "someone else changed the nftpol table; reading it back to repair it"
                    );
                }
                self.metrics.health.set_tampered(true);
                self.verify_now = Some(reason);
                false
            }
            Change::Shutdown => false,
        };
        if let (Some(dir), true) = (&self.directory, changed) {
            if relist {
                dir.rebuild(&self.cluster);
            } else if let Some(((ns, name), old)) = &pod_before {
                dir.note_pod(&self.cluster, ns, name, old);
            }
        }
        if changed {
            self.mark_dirty(at);
        }
    }

    /// A listing of `kind` begins, or starts over after failing part way.
    /// Its end deletes what is in the index and not listed again,
    /// including what a failed attempt added; what that attempt changed
    /// keeps holding batches back, since the index holds it beside what
    /// only the end of a listing deletes.
    fn list_start(&mut self, kind: Kind) {
        let unlisted = keys(&self.cluster, kind).into_iter().collect();
        let Some(l) = self.listing.get_mut(&kind) else {
            self.listing.insert(
                kind,
                Listing {
                    unlisted,
                    ..Listing::default()
                },
            );
            return;
        };
        l.unlisted = unlisted;
        l.restarts += 1;
        if l.changed {
            tracing::info!(
                kind = kind.as_str(),
                attempt = l.restarts + 1,
                "listing started over; what it changed so far stays out of the kernel until one completes"
            );
        }
    }

    /// One object of the listing of its kind.
    fn list_object(&mut self, o: Object) -> bool {
        let kind = Kind::of(&o);
        let key = key_of(&o);
        let changed = self.tracked(object_key(kind, &key), |c| c.apply(o));
        if let Some(l) = self.listing.get_mut(&kind) {
            l.unlisted.remove(&key);
            l.changed |= changed;
            // Asked once a listing, not once an object (150,000 pods).
            if changed && l.held_since.is_none() {
                l.held_since = Some(self.clock.now());
            }
        }
        changed
    }

    /// A listing of `kind` completed: deletes what it did not list, and
    /// lets what it held back go.
    fn list_done(&mut self, kind: Kind, relist: bool) -> bool {
        let first_sync = !self.synced.contains(&kind);
        self.synced.insert(kind);
        let Listing {
            unlisted,
            mut changed,
            held_since,
            warnings,
            ..
        } = self.listing.remove(&kind).unwrap_or_default();
        for key in unlisted {
            changed |= self.tracked(object_key(kind, &key), |c| delete(c, kind, &key));
        }
        if warnings > 0 {
            let held_s = held_since.map_or(0, |t| self.clock.now().duration_since(t).as_secs());
            tracing::warn!(
                kind = kind.as_str(),
                held_s,
                "listing complete at last; the changes it held back go to the kernel now"
            );
            self.metrics.set_listing_stalled(kind, false);
            self.status.stalled.remove(kind.as_str());
            self.status_dirty = true;
        }
        self.listed(first_sync, relist, changed)
    }

    /// Warns about each listing that has held changes back for another
    /// `LISTING_STALLED`, and says so in the metrics and the status.
    fn warn_stalled(&mut self) {
        let now = self.clock.now();
        for (kind, l) in &mut self.listing {
            let (Some(since), Some(at)) = (l.held_since, l.warn_at()) else {
                continue;
            };
            if at > now {
                continue;
            }
            l.warnings = (now.duration_since(since).as_secs() / LISTING_STALLED.as_secs()) as u32;
            let held_s = now.duration_since(since).as_secs();
            tracing::warn!(
                kind = kind.as_str(),
                held_s,
                attempts = l.restarts + 1,
                "a listing has not completed: the changes it made are not programmed, and the kernel keeps the last complete state (see the watch errors)"
            );
            self.metrics.set_listing_stalled(*kind, true);
            let message = format!(
                "the listing of {} objects has not completed for {held_s} s ({} attempts); changes since are not programmed",
                kind.as_str(),
                l.restarts + 1
            );
            self.status.stalled.insert(kind.as_str(), message);
            self.status_dirty = true;
        }
    }

    /// What a complete listing ends with: glibc's free pages after a
    /// listing of pods go back to the kernel, and the first sync of the
    /// last kind always programs once (even an empty cluster: the kernel
    /// may hold a stale table). Returns whether to program.
    fn listed(&mut self, first_sync: bool, relist: bool, changed: bool) -> bool {
        if relist {
            crate::agent::release_free_memory();
        }
        if first_sync && self.all_synced() {
            tracing::info!(
                namespaces = self.cluster.namespaces().count(),
                pods = self.cluster.pod_count(),
                policies = self.cluster.policy_count(),
                "initial sync complete"
            );
            self.metrics.health.set_synced(true);
            true
        } else {
            changed
        }
    }

    /// Runs `change` on the index and tells the incremental compiler what
    /// the object fed before and feeds after, if it changed anything.
    fn tracked(&mut self, key: ObjectKey, change: impl FnOnce(&mut Cluster) -> bool) -> bool {
        if !self.settings.incremental || self.incr.rebuilding() {
            return change(&mut self.cluster);
        }
        let before = self.incr.mark(&self.cluster, &key);
        let changed = change(&mut self.cluster);
        if changed {
            self.incr.note(before);
            let after = self.incr.mark(&self.cluster, &key);
            self.incr.note(after);
        }
        changed
    }

    fn tick(&mut self) {
        let held = self.held();
        if held {
            self.warn_stalled();
        }
        if self.relearn_at.is_some_and(|r| r <= self.clock.now()) {
            self.relearn_at = Some(self.clock.now() + RELEARN);
        }
        // A pod interface that appeared or moved since the last compile
        // (a bridged pod first seen in the ARP table, a recreated veth)
        // changes the ruleset although no object changed.
        if self.dirty_since.is_none()
            && self.last_applied.is_some()
            && (self.settings.discover_interfaces || self.settings.pod_interfaces_file.is_some())
            && self.node_net() != self.last_net
        {
            self.mark_dirty(self.clock.now());
        }
        // A reported tampering is repaired back to the last ruleset the
        // kernel held (counted as drift) before any new change goes in.
        // While a listing holds changes back, that ruleset is all the
        // kernel may hold: it is checked on time (a pending batch would
        // read back otherwise), and a failed repair is retried.
        let trigger = self.verify_now.take();
        let now = self.clock.now();
        let drift_due = self.next_drift <= now;
        let retry_due = held && self.failures > 0 && self.retry_at.is_none_or(|r| r <= now);
        if trigger.is_some() || ((self.dirty_since.is_none() || held) && drift_due) || retry_due {
            let trigger = trigger.as_deref().unwrap_or("periodic check");
            match self.last_applied.take() {
                Some(last) => {
                    self.repair_drift(&last, trigger);
                    self.last_applied.get_or_insert(last);
                }
                None if self.dirty_since.is_none() || held => {
                    self.next_drift = self.clock.now() + self.settings.drift_interval;
                }
                // Nothing applied yet: the pending apply reads back anyway.
                None => {}
            }
        }
        if !held
            && self.dirty_since.is_some()
            && self.retry_at.is_none_or(|r| r <= self.clock.now())
        {
            self.reconcile();
        }
        self.report();
    }

    /// The node's pod interfaces, as the settings say to learn them.
    fn node_net(&self) -> NodeNet {
        NodeNet {
            pod_tunnels: self.settings.pod_tunnels,
            ..self.learned_net()
        }
    }

    fn learned_net(&self) -> NodeNet {
        let s = &self.settings;
        if let (Some(path), true) = (&s.pod_interfaces_file, s.source_validation) {
            let map = std::fs::read_to_string(path)
                .map_err(|e| e.to_string())
                .and_then(|t| policy_compiler::srcval::parse_interface_map(&t));
            return match map {
                Ok(pod_interfaces) => NodeNet {
                    pod_interfaces,
                    ..NodeNet::default()
                },
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot read the pod interface map; no source validation this round");
                    NodeNet::default()
                }
            };
        }
        if !s.discover_interfaces {
            return NodeNet {
                source_validation: s.source_validation,
                ..NodeNet::default()
            };
        }
        // What was learned before stays (a later ARP claim does not move
        // it); after a restart, the kernel's chains say what that was.
        let previous = if self.last_net.pod_interfaces.is_empty() {
            self.last_applied
                .as_ref()
                .map(|rs| policy_compiler::srcval::bindings_in(rs, &self.cluster, &s.node))
                .unwrap_or_default()
        } else {
            self.last_net.pod_interfaces.clone()
        };
        let mut prober = self.prober.lock().unwrap_or_else(|e| e.into_inner());
        match crate::ifmap::discover(
            &self.cluster,
            &s.node,
            s.source_validation,
            &previous,
            &mut prober,
        ) {
            Ok(net) => net,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the node's routes and bridges; no source validation this round");
                NodeNet::default()
            }
        }
    }

    /// Logs (once per change) pods left unvalidated and shared addresses,
    /// and exports both counts.
    fn warn_about(&mut self, net: &NodeNet) {
        let s = &self.settings;
        let unmapped: Vec<String> = if s.discover_interfaces || s.pod_interfaces_file.is_some() {
            net.unmapped(&self.cluster, &self.settings.node)
                .iter()
                .map(|p| format!("{}/{}", p.namespace, p.name))
                .collect()
        } else {
            Vec::new()
        };
        let shared: Vec<String> = self
            .cluster
            .shared_addresses()
            .iter()
            .map(|(ip, pods)| {
                let names: Vec<String> = pods
                    .iter()
                    .map(|p| format!("{}/{}", p.namespace, p.name))
                    .collect();
                format!("{ip} ({})", names.join(", "))
            })
            .collect();
        self.metrics.unvalidated_pods.set(unmapped.len() as i64);
        self.metrics.shared_addresses.set(shared.len() as i64);
        if (&unmapped, &shared) == (&self.last_warned.0, &self.last_warned.1) {
            return;
        }
        if !unmapped.is_empty() {
            tracing::warn!(pods = %unmapped.join(", "), "no host interface found for these local pods: their source addresses are not validated");
        }
        if !shared.is_empty() {
            tracing::warn!(addresses = %shared.join("; "), "addresses claimed by several live pods: new flows to and from them are dropped where a claimant is isolated");
        }
        self.last_warned = (unmapped, shared);
    }

    fn update_watched(&self) {
        let m = &self.metrics;
        m.set_watched(Kind::Namespace, self.cluster.namespaces().count());
        m.set_watched(Kind::Pod, self.cluster.pod_count());
        m.set_watched(Kind::Policy, self.cluster.policy_count());
        m.set_watched(Kind::Node, self.cluster.node_objects().count());
        for k in [
            AdminKind::ClusterNetworkPolicy,
            AdminKind::AdminNetworkPolicy,
            AdminKind::BaselineAdminNetworkPolicy,
        ] {
            let n = self
                .cluster
                .admin_policies()
                .filter(|p| p.kind == k)
                .count();
            m.set_watched(Kind::Admin(k), n);
        }
    }

    fn reconcile(&mut self) {
        let Some(since) = self.dirty_since else {
            return;
        };
        self.update_watched();
        // Compile time is measured on the real clock: it is a cost, not a
        // deadline.
        let t0 = Instant::now();
        let net = self.node_net();
        self.warn_about(&net);
        let full = if self.settings.incremental {
            let touched = self.incr.update(&self.cluster, &net);
            self.pending.extend(&touched);
            if cfg!(debug_assertions) {
                self.check_incremental(&net);
            }
            None
        } else {
            self.pending = Touched::everything();
            Some(policy_compiler::compile_node_with(
                &self.cluster,
                &self.settings.node,
                &net,
                &self.settings.audit,
            ))
        };
        let desired = full.as_ref().unwrap_or_else(|| self.incr.ruleset());
        // A pod on a bridge whose port is closed until it is learned
        // should not wait for the drift check: look again soon.
        let waiting = !net.bridge_ports.is_empty()
            && !net.unmapped(&self.cluster, &self.settings.node).is_empty();
        self.relearn_at = waiting.then(|| self.clock.now() + RELEARN);
        self.last_net = net;
        let compile = t0.elapsed();
        self.metrics.compile_seconds.observe(compile.as_secs_f64());
        let followed = self
            .last_batch
            .is_some_and(|t| since < t + self.settings.debounce);
        self.streak = if followed { self.streak + 1 } else { 0 };
        let result = self.backend.apply_touched(desired, &self.pending);
        let now = self.clock.now();
        self.last_batch = Some(now);
        match result {
            Ok(applied) => {
                self.metrics
                    .observe_apply(&applied, desired, Some(now.duration_since(since)));
                if applied.changed {
                    self.status.generation += 1;
                    tracing::info!(
                        changes = %applied.summary,
                        messages = applied.messages,
                        latency_ms = now.duration_since(since).as_secs_f64() * 1000.0,
                        compile_ms = compile.as_secs_f64() * 1000.0,
                        "kernel table updated"
                    );
                } else {
                    tracing::debug!("kernel table already up to date");
                }
                // What the kernel holds now, updated from the touched
                // objects alone.
                if let Some(dir) = &self.directory {
                    dir.note_chains(desired, &self.pending);
                }
                match &mut self.last_applied {
                    Some(last) if !self.pending.all => {
                        diff::copy_touched(last, desired, &self.pending)
                    }
                    last => *last = Some(desired.clone()),
                }
                self.pending = Touched::default();
                self.ok(now, applied.changed);
                // Revocation judges connections by what the kernel holds now.
                if applied.changed && self.revoker.is_some() {
                    let last = self.last_applied.take();
                    if let Some(l) = &last {
                        self.revoke(l);
                    }
                    self.last_applied = last;
                }
            }
            Err(e) => self.failed(&e),
        }
    }

    /// Debug builds hold the incremental ruleset to the full compile after
    /// every update, so every agent test checks it too.
    fn check_incremental(&self, net: &NodeNet) {
        let full = policy_compiler::compile_node_with(
            &self.cluster,
            &self.settings.node,
            net,
            &self.settings.audit,
        );
        if &full != self.incr.ruleset() {
            panic!(
                "incremental compile differs from the full compile; the full one needs: {}",
                diff::diff(&full, self.incr.ruleset()).summary()
            );
        }
    }

    /// Records a success. `changed` says whether the kernel took a batch;
    /// a drift check that only confirmed the table is no news for the
    /// status object unless it ends a failure: refreshing `lastApplyTime`
    /// on every check would make every node write its status once per
    /// drift interval, a cluster-wide heartbeat the API server pays for.
    fn ok(&mut self, now: Instant, changed: bool) {
        self.metrics.health.set_tampered(false);
        self.dirty_since = None;
        self.failures = 0;
        self.retry_at = None;
        self.next_drift = now + self.settings.drift_interval;
        self.metrics.health.set_last_apply_ok(true);
        if changed || self.status.last_error.is_some() || self.status.last_apply.is_none() {
            self.status.last_apply = Some(std::time::SystemTime::now());
            self.status.last_error = None;
            self.status_dirty = true;
        }
    }

    /// Reads the counters and hands the status on, when each is due.
    fn report(&mut self) {
        let now = self.clock.now();
        if self.next_counters <= now {
            self.next_counters = now + self.settings.counters_interval;
            match self.backend.counters() {
                Ok(c) => {
                    self.status_dirty |= self.hits.observe(&c, std::time::SystemTime::now());
                    self.hit_export.export(&self.metrics, &self.hits);
                }
                Err(e) => {
                    self.metrics.observe_error(e.metric_label());
                    tracing::debug!(error = %e, "cannot read the rule counters");
                }
            }
        }
        if !self.status_dirty || self.next_status > now {
            return;
        }
        if let Some(tx) = &self.status_tx {
            let status = self.status.build(
                self.last_applied.as_ref(),
                &self.hits,
                &self.inventory,
                std::time::SystemTime::now(),
            );
            tx.send_replace(Some(status));
            self.status_dirty = false;
            self.next_status = now + self.settings.status_interval;
        }
    }

    fn failed(&mut self, e: &crate::agent::backend::BackendError) {
        self.failures += 1;
        let exp = self.failures.saturating_sub(1).min(16);
        let delay = (self.settings.backoff_min * 2u32.pow(exp)).min(self.settings.backoff_max);
        self.retry_at = Some(self.clock.now() + delay);
        self.status.last_error = Some(e.to_string());
        self.status_dirty = true;
        self.metrics.observe_error(e.metric_label());
        self.metrics.health.set_last_apply_ok(false);
        tracing::warn!(
            error = %e,
            attempt = self.failures,
            retry_in_ms = delay.as_millis() as u64,
            "programming the kernel failed; the last good ruleset stays enforced"
        );
    }

    /// Reads the table back and makes it `last` again. Leaves pending
    /// changes (`dirty_since`) to the caller.
    fn repair_drift(&mut self, last: &Ruleset, trigger: &str) {
        let dirty = self.dirty_since;
        match self.backend.verify(last) {
            Ok(Applied { changed: false, .. }) => {
                self.ok(self.clock.now(), false);
                self.dirty_since = dirty;
            }
            Ok(applied) => {
                tracing::warn!(
                    changes = %applied.summary,
                    trigger,
                    "the kernel table drifted from the desired ruleset (changed outside nftpol); repaired"
                );
                self.metrics.drift_repairs.inc();
                self.status.generation += 1;
                self.metrics.observe_apply(&applied, last, None);
                self.ok(self.clock.now(), true);
                self.dirty_since = dirty;
                // Whatever the tampering let in may still be connected.
                self.revoke(last);
            }
            Err(e) => {
                // Retry through the normal path (which reads back after a
                // failure), with backoff.
                self.dirty_since = Some(dirty.unwrap_or_else(|| self.clock.now()));
                self.failed(&e);
            }
        }
    }
}

impl<B: Backend, C: Clock> Reconciler<B, C> {
    /// Cuts the live connections `applied` (just acknowledged by the
    /// kernel) denies, if revocation is on. A failure is logged and
    /// counted; the batch stands and the loop goes on.
    fn revoke(&mut self, applied: &Ruleset) {
        let Some(r) = self.revoker.as_mut() else {
            return;
        };
        let scope = Scope::of_node(&self.cluster, &self.settings.node);
        let m = &self.metrics;
        match r.revoke(applied, &scope) {
            Ok(rep) => {
                m.conntrack_revoked.inc_by(rep.deleted as u64);
                m.conntrack_revoke_failures.inc_by(rep.failed as u64);
                m.conntrack_revoke_seconds
                    .observe(rep.elapsed.as_secs_f64());
                let elapsed_ms = rep.elapsed.as_secs_f64() * 1000.0;
                if rep.denied.is_empty() {
                    tracing::debug!(
                        examined = rep.examined,
                        judged = rep.judged,
                        elapsed_ms,
                        "no live connection is denied by the new ruleset"
                    );
                } else {
                    tracing::info!(
                        cut = rep.deleted,
                        already_gone = rep.gone,
                        failed = rep.failed,
                        examined = rep.examined,
                        judged = rep.judged,
                        elapsed_ms,
                        "cut live connections the new ruleset denies"
                    );
                }
                for flow in &rep.denied {
                    tracing::debug!(%flow, "connection cut: its conntrack entry was deleted");
                }
            }
            Err(e) => {
                m.conntrack_revoke_failures.inc();
                m.errors
                    .get_or_create(&crate::agent::metrics::ErrorLabels { error: "conntrack" })
                    .inc();
                tracing::warn!(error = %e, "cutting denied connections failed; they live on until they end or the next change");
            }
        }
    }
}

/// What the incremental compiler needs to know of an object's identity.
fn object_key(kind: Kind, (ns, name): &Key) -> ObjectKey {
    match kind {
        Kind::Namespace => ObjectKey::Namespace(name.clone()),
        Kind::Pod => ObjectKey::Pod {
            namespace: ns.clone(),
            name: name.clone(),
        },
        Kind::Policy => ObjectKey::Policy {
            namespace: ns.clone(),
            name: name.clone(),
        },
        Kind::Node => ObjectKey::Node(name.clone()),
        Kind::Admin(kind) => ObjectKey::Admin {
            kind,
            name: name.clone(),
        },
    }
}

fn delete(c: &mut Cluster, kind: Kind, (ns, name): &Key) -> bool {
    match kind {
        Kind::Namespace => c.delete_namespace(name),
        Kind::Pod => c.delete_pod(ns, name),
        Kind::Policy => c.delete_policy(ns, name),
        Kind::Node => c.delete_node(name),
        Kind::Admin(k) => c.delete_admin_policy(k, name),
    }
}

fn keys(c: &Cluster, kind: Kind) -> Vec<Key> {
    match kind {
        Kind::Namespace => c
            .namespaces()
            .map(|n| (String::new(), n.name.clone()))
            .collect(),
        Kind::Pod => c.pods().map(|p| p.key()).collect(),
        Kind::Policy => c
            .policies()
            .map(|p| (p.namespace.clone(), p.name.clone()))
            .collect(),
        Kind::Node => c
            .node_objects()
            .map(|n| (String::new(), n.name.clone()))
            .collect(),
        Kind::Admin(k) => c
            .admin_policies()
            .filter(|p| p.kind == k)
            .map(|p| (String::new(), p.name.clone()))
            .collect(),
    }
}

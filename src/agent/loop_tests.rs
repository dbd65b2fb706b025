//! The reconcile loop's timing rules on virtual time: a [`ManualClock`]
//! and direct calls to `handle` and `poll`, so debounce, coalescing,
//! retry backoff and the drift check are asserted to the millisecond and
//! no test sleeps or depends on how fast the machine is.

use super::backend::{Applied, Backend, BackendError, MemoryBackend};
use super::metrics::Metrics;
use super::reconcile::{Change, Clock, Kind, ManualClock, Reconciler, Settings};
use crate::netlink::NetlinkError;
use policy_compiler::diff::Touched;
use policy_compiler::model::{Namespace, Pod};
use policy_compiler::{Object, Ruleset};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const NODE: &str = "node-a";
const MS: Duration = Duration::from_millis(1);

/// The in-memory kernel, plus a count of batches to refuse the way the
/// kernel refuses one (nothing changes).
#[derive(Clone, Default)]
struct Kernel {
    mem: MemoryBackend,
    refuse: Arc<AtomicUsize>,
    /// Counter readings so far.
    readings: Arc<AtomicUsize>,
    /// What each incremental batch was told had changed.
    touched: Arc<Mutex<Vec<Touched>>>,
}

impl Backend for Kernel {
    fn apply(&mut self, desired: &Ruleset) -> Result<Applied, BackendError> {
        let refuse = self
            .refuse
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if refuse {
            self.mem.state().applies += 1;
            return Err(NetlinkError::NotCommitted.into());
        }
        self.mem.apply(desired)
    }

    fn apply_touched(
        &mut self,
        desired: &Ruleset,
        touched: &Touched,
    ) -> Result<Applied, BackendError> {
        if let Ok(mut t) = self.touched.lock() {
            t.push(touched.clone());
        }
        if self.refuse.load(Ordering::SeqCst) > 0 {
            return self.apply(desired);
        }
        self.mem.apply_touched(desired, touched)
    }

    fn counters(&mut self) -> Result<policy_compiler::counters::Counters, BackendError> {
        self.readings.fetch_add(1, Ordering::SeqCst);
        self.mem.counters()
    }
}

struct Loop {
    r: Reconciler<Kernel, ManualClock>,
    clock: ManualClock,
    kernel: Kernel,
    metrics: Arc<Metrics>,
    t0: Instant,
    /// When each batch was sent, relative to `t0`.
    batch_times: Vec<Duration>,
}

fn settings() -> Settings {
    Settings {
        debounce: 20 * MS,
        max_delay: 100 * MS,
        drift_interval: Duration::from_secs(30),
        backoff_min: 100 * MS,
        backoff_max: 800 * MS,
        // Counter readings are deadlines too; these tests time the kernel
        // work alone (the counter cadence is tested on its own).
        counters_interval: Duration::from_secs(3600),
        ..Settings::new(NODE)
    }
}

#[test]
fn counters_are_read_on_their_own_cadence_without_drift_checks() {
    let mut l = Loop::synced(Settings {
        counters_interval: Duration::from_secs(10),
        ..settings()
    });
    l.run_for(Duration::from_secs(1));
    let applies = l.kernel.mem.state().applies;
    let readings = l.kernel.readings.load(Ordering::SeqCst);
    // 25 s: two counter readings are due before the 30 s drift check,
    // and neither reads the table back or applies anything.
    l.run_for(Duration::from_secs(25));
    assert_eq!(l.kernel.readings.load(Ordering::SeqCst), readings + 2);
    assert_eq!(l.kernel.mem.state().applies, applies);
    assert!(l.metrics.encode().contains("nftpol_drift_repairs_total 0"));
    l.run_for(Duration::from_secs(10));
    assert_eq!(l.kernel.mem.state().applies, applies + 1, "the drift check");
}

fn pod(i: usize) -> Object {
    Object::Pod(Pod {
        namespace: "prod".into(),
        name: format!("p{i}"),
        labels: [("app".to_string(), "web".to_string())].into(),
        node_name: Some(NODE.into()),
        host_network: false,
        ips: vec![format!("10.3.{}.{}", i / 200, i % 200 + 1)
            .parse()
            .expect("ip")],
        named_ports: vec![],
        terminal: false,
    })
}

/// A policy isolating `app=web` pods, so every new pod changes the table.
fn isolating_policy() -> Vec<Object> {
    let text = r#"{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "web", "namespace": "prod"},
        "spec": {"podSelector": {"matchLabels": {"app": "web"}}}}"#;
    let loaded = policy_compiler::parse("t", text);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    loaded.objects
}

impl Loop {
    fn new(settings: Settings) -> Loop {
        let clock = ManualClock::default();
        let kernel = Kernel::default();
        let metrics = Arc::new(Metrics::new());
        let r = Reconciler::with_clock(settings, kernel.clone(), metrics.clone(), clock.clone());
        Loop {
            t0: clock.now(),
            r,
            clock,
            kernel,
            metrics,
            batch_times: Vec::new(),
        }
    }

    /// A loop that has listed every kind and programmed the first batch.
    fn synced(settings: Settings) -> Loop {
        let mut l = Loop::new(settings);
        l.change(Change::Replace {
            kinds: Kind::ALL.to_vec(),
            objects: isolating_policy(),
        });
        assert_eq!(l.batches(), 1, "the initial sync is programmed at once");
        l
    }

    fn now(&self) -> Duration {
        self.clock.now() - self.t0
    }

    fn batches(&self) -> usize {
        self.kernel.mem.state().batches
    }

    fn applies(&self) -> usize {
        self.kernel.mem.state().applies
    }

    /// Does what is due now, recording batch times.
    fn poll(&mut self) -> bool {
        let before = self.batches();
        let did = self.r.poll();
        if self.batches() > before {
            self.batch_times.push(self.now());
        }
        did
    }

    /// A change arriving now; the loop then does what is due.
    fn change(&mut self, c: Change) {
        self.r.handle(self.clock.now(), c);
        self.poll();
    }

    /// Lets virtual time run to `at` (relative to `t0`), doing everything
    /// that falls due on the way at its exact instant.
    fn run_until(&mut self, at: Duration) {
        let end = self.t0 + at;
        for _ in 0..100_000 {
            match self.r.deadline() {
                Some(d) if d <= end => {
                    self.clock.set(d);
                    self.poll();
                }
                _ => {
                    self.clock.set(end);
                    return;
                }
            }
        }
        panic!("the loop kept finding work before {at:?}");
    }

    fn run_for(&mut self, d: Duration) {
        let at = self.now() + d;
        self.run_until(at);
    }
}

#[test]
fn nothing_is_programmed_before_every_kind_is_listed() {
    let mut l = Loop::new(settings());
    l.change(Change::Replace {
        kinds: vec![Kind::Namespace, Kind::Policy],
        objects: isolating_policy(),
    });
    assert_eq!(l.r.deadline(), None, "nothing is due with pods unlisted");
    l.run_for(Duration::from_secs(3600));
    assert_eq!(l.applies(), 0, "an hour later, still untouched");
    assert!(!l.metrics.health.ready());
    l.change(Change::Replace {
        kinds: vec![Kind::Pod],
        objects: vec![pod(1)],
    });
    assert_eq!(l.applies(), 0, "nodes and admin policies are unlisted");
    l.change(Change::Replace {
        kinds: Kind::ALL[3..].to_vec(),
        objects: vec![],
    });
    assert_eq!(
        l.batches(),
        1,
        "programmed the moment the last kind is listed"
    );
    assert!(l.metrics.health.ready());
}

/// A listing of pods as the watcher streams it: start, the objects, done.
fn list_pods(l: &mut Loop, pods: impl IntoIterator<Item = usize>) {
    l.change(Change::ListStart(Kind::Pod));
    for i in pods {
        l.change(Change::Listed(pod(i)));
    }
    l.change(Change::ListDone(Kind::Pod));
}

#[test]
fn listed_objects_go_into_the_index_as_they_arrive_and_the_first_batch_after_the_last_kind() {
    let mut l = Loop::new(settings());
    let mut others = isolating_policy();
    others.push(Object::Namespace(Namespace {
        name: "prod".into(),
        labels: Default::default(),
    }));
    let kinds: Vec<Kind> = Kind::ALL.into_iter().filter(|k| *k != Kind::Pod).collect();
    l.change(Change::Replace {
        kinds,
        objects: others,
    });
    l.change(Change::ListStart(Kind::Pod));
    for i in 0..3 {
        l.change(Change::Listed(pod(i)));
        assert!(
            l.r.cluster().pod("prod", &format!("p{i}")).is_some(),
            "pod {i} is in the index before the listing ends"
        );
    }
    assert_eq!(l.r.deadline(), None, "nothing is due with pods half listed");
    l.run_for(Duration::from_secs(3600));
    assert_eq!(l.applies(), 0, "an hour later, still untouched");
    assert!(!l.metrics.health.ready());
    l.change(Change::ListDone(Kind::Pod));
    assert_eq!(l.batches(), 1, "programmed the moment the listing ends");
    assert_eq!(l.r.cluster().pod_count(), 3);
    assert!(l.metrics.health.ready());
}

#[test]
fn a_relist_holds_batches_until_its_end_and_then_deletes_what_it_did_not_list() {
    let mut l = Loop::synced(settings());
    list_pods(&mut l, [1, 2]);
    l.run_for(Duration::from_secs(1));
    let batches = l.batches();
    // After an outage: p1 went away, p3 came.
    l.change(Change::ListStart(Kind::Pod));
    l.change(Change::Listed(pod(2)));
    l.run_for(Duration::from_secs(1));
    assert_eq!(l.batches(), batches, "p2 unchanged: nothing to hold back");
    l.change(Change::Listed(pod(3)));
    assert!(
        l.r.deadline() > Some(l.clock.now()),
        "p3 waits for the listing's end"
    );
    l.run_for(Duration::from_secs(60));
    assert_eq!(l.batches(), batches);
    assert!(l.r.cluster().pod("prod", "p1").is_some());
    l.change(Change::ListDone(Kind::Pod));
    assert_eq!(l.batches(), batches + 1, "one batch at the end");
    let names: Vec<&str> = l.r.cluster().pods().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["p2", "p3"]);
    // The same as one listing handed over whole.
    let mut whole = Loop::synced(settings());
    whole.change(Change::Replace {
        kinds: vec![Kind::Pod],
        objects: vec![pod(2), pod(3)],
    });
    assert_eq!(l.r.cluster(), whole.r.cluster());
}

/// Pod `i` at pod `at`'s address: a pod that took over the address of
/// one deleted meanwhile.
fn pod_at(i: usize, at: usize) -> Object {
    match (pod(i), pod(at)) {
        (Object::Pod(p), Object::Pod(q)) => {
            Object::Pod(policy_compiler::model::Pod { ips: q.ips, ..p })
        }
        _ => unreachable!("pod() makes pods"),
    }
}

/// kube's watcher starts a listing over from its first page when a page
/// fails (say the API server goes away mid-relist): the changes of the
/// failed attempt are in the index, beside the objects only the end of a
/// listing deletes, so nothing may go before an attempt completes.
#[test]
fn a_listing_that_starts_over_part_way_holds_batches_until_one_completes() {
    let mut l = Loop::synced(settings());
    list_pods(&mut l, [1, 2]);
    l.run_for(Duration::from_secs(1));
    let batches = l.batches();
    let table = l.kernel.mem.state().table.clone();
    // After an outage: p1 went away, p9 took its address. The relist
    // gets as far as p9 and fails, then starts over; the second attempt
    // fails too.
    l.change(Change::ListStart(Kind::Pod));
    l.change(Change::Listed(pod_at(9, 1)));
    for _ in 0..2 {
        l.change(Change::ListStart(Kind::Pod));
        assert_eq!(l.batches(), batches, "p1 and p9 share an address");
        l.run_for(Duration::from_secs(5));
        l.change(Change::Listed(pod(2)));
        l.change(Change::Listed(pod_at(9, 1)));
        l.run_for(Duration::from_secs(5));
    }
    assert_eq!(l.batches(), batches, "no attempt completed");
    assert_eq!(l.kernel.mem.state().table, table);
    assert!(l.r.cluster().pod("prod", "p1").is_some());
    l.change(Change::ListStart(Kind::Pod));
    l.change(Change::Listed(pod_at(9, 1)));
    l.change(Change::Listed(pod(2)));
    l.change(Change::ListDone(Kind::Pod));
    assert_eq!(l.batches(), batches + 1, "one batch when one completes");
    let names: Vec<&str> = l.r.cluster().pods().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["p2", "p9"]);
    let mut whole = Loop::synced(settings());
    whole.change(Change::Replace {
        kinds: vec![Kind::Pod],
        objects: vec![pod(2), pod_at(9, 1)],
    });
    whole.run_for(Duration::from_secs(1));
    assert_eq!(l.r.cluster(), whole.r.cluster());
    assert_eq!(l.kernel.mem.state().table, whole.kernel.mem.state().table);
}

/// What a failed attempt added and the next does not list again (deleted
/// in between) goes at the end, like anything else unlisted.
#[test]
fn a_listing_started_over_deletes_what_only_a_failed_attempt_listed() {
    let mut l = Loop::synced(settings());
    list_pods(&mut l, [1]);
    l.change(Change::ListStart(Kind::Pod));
    l.change(Change::Listed(pod(7)));
    l.change(Change::ListStart(Kind::Pod));
    l.change(Change::Listed(pod(1)));
    l.change(Change::ListDone(Kind::Pod));
    let names: Vec<&str> = l.r.cluster().pods().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["p1"]);
}

/// While a listing holds changes back the kernel keeps the last complete
/// state, and that is still looked after: drift is repaired on time, a
/// reported tampering at once, counters are read; after a minute the
/// stall is logged, counted in `nftpol_listing_stalled` and shown as
/// `Degraded` in the status, until the listing completes.
#[test]
fn a_stalled_listing_keeps_the_last_state_repaired_and_says_so() {
    let mut l = Loop::synced(Settings {
        counters_interval: Duration::from_secs(10),
        status_interval: Duration::from_secs(1),
        ..settings()
    });
    let (tx, mut rx) = tokio::sync::watch::channel(None);
    l.r.set_status(super::status::Inventory::default(), tx);
    l.run_for(Duration::from_secs(1));
    let degraded =
        |rx: &tokio::sync::watch::Receiver<Option<nftpol_crds::status::NodeEnforcement>>| {
            let st = rx.borrow().clone().expect("a status");
            let c = st
                .conditions
                .iter()
                .find(|c| c.type_ == "Degraded")
                .cloned()
                .expect("Degraded");
            (c.status, c.reason, c.message)
        };
    assert_eq!(degraded(&rx).0, "False");
    let want = l.kernel.mem.state().table.clone();
    let batches = l.batches();
    let stalled = "nftpol_listing_stalled{kind=\"pod\"} 1";
    l.change(Change::ListStart(Kind::Pod));
    l.change(Change::Listed(pod(1)));
    l.change(Change::ListStart(Kind::Pod));
    let held_at = l.now();
    // Drift: repaired at the periodic check, to the last complete state.
    l.kernel.mem.state().table = None;
    let readings = l.kernel.readings.load(Ordering::SeqCst);
    l.run_for(Duration::from_secs(31));
    assert_eq!(l.kernel.mem.state().table, want, "repaired while held");
    assert!(l.metrics.encode().contains("nftpol_drift_repairs_total 1"));
    assert!(l.kernel.readings.load(Ordering::SeqCst) >= readings + 3);
    // A reported tampering: at once.
    l.kernel.mem.state().table = None;
    l.r.handle(l.clock.now(), Change::Verify { reason: "t".into() });
    l.poll();
    assert_eq!(l.kernel.mem.state().table, want, "repaired at once");
    assert!(
        l.metrics.health.ready(),
        "the kernel holds a complete state"
    );
    // The stall is reported at a minute, not before.
    l.run_until(held_at + Duration::from_secs(59));
    assert!(!l.metrics.encode().contains(stalled));
    assert_eq!(degraded(&rx).0, "False");
    l.run_for(Duration::from_secs(2));
    assert!(
        l.metrics.encode().contains(stalled),
        "{}",
        l.metrics.encode()
    );
    status_sent(&mut rx);
    let (status, reason, message) = degraded(&rx);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "ListingStalled")
    );
    assert!(message.contains("pod"), "{message}");
    l.run_for(Duration::from_secs(600));
    assert_eq!(l.batches(), batches + 2, "the two repairs alone");
    // It completes: the held changes go, and the status says so.
    l.change(Change::Listed(pod(1)));
    l.change(Change::ListDone(Kind::Pod));
    assert_eq!(l.batches(), batches + 3);
    assert!(l.r.cluster().pod("prod", "p1").is_some());
    assert!(l
        .metrics
        .encode()
        .contains("nftpol_listing_stalled{kind=\"pod\"} 0"));
    l.run_for(Duration::from_secs(2));
    assert!(status_sent(&mut rx));
    assert_eq!(degraded(&rx).0, "False");
}

/// A relist that keeps failing part way, each attempt listing fewer pods
/// (they were deleted meanwhile), while other kinds go on: a policy
/// deleted by a watch event, the namespaces relisted to completion, the
/// table tampered with. Nothing new reaches the kernel until the pods'
/// listing completes, the tampering is repaired to the last complete
/// state meanwhile, and then one batch brings exactly what a whole
/// listing of the end state brings (no pod of a failed attempt left).
#[test]
fn a_relist_failing_again_and_again_with_fewer_pods_beside_other_kinds_ends_in_one_batch() {
    let mut l = Loop::synced(settings());
    list_pods(&mut l, 1..=6);
    l.run_for(Duration::from_secs(1));
    let batches = l.batches();
    let table = l.kernel.mem.state().table.clone();
    // Attempts listing p1..p6, then p1..p5, ... then p1..p2, each with a
    // new pod p9 at p1's old address first (p1 moved to p8's).
    for last in (3..=6).rev() {
        l.change(Change::ListStart(Kind::Pod));
        l.change(Change::Listed(pod_at(9, 1)));
        l.change(Change::Listed(pod_at(1, 8)));
        for i in 2..=last {
            l.change(Change::Listed(pod(i)));
        }
        l.run_for(Duration::from_secs(7));
        assert_eq!(l.batches(), batches, "attempt up to p{last} failed");
    }
    // Meanwhile: the policy is deleted, the namespaces are relisted to
    // completion, and the table is tampered with.
    l.change(Change::Delete {
        kind: Kind::Policy,
        key: ("prod".into(), "web".into()),
    });
    l.change(Change::ListStart(Kind::Namespace));
    l.change(Change::Listed(Object::Namespace(Namespace {
        name: "prod".into(),
        labels: Default::default(),
    })));
    l.change(Change::ListDone(Kind::Namespace));
    assert_eq!(l.batches(), batches, "the pods still hold batches back");
    l.kernel.mem.state().table = None;
    l.r.handle(l.clock.now(), Change::Verify { reason: "t".into() });
    l.poll();
    assert_eq!(l.kernel.mem.state().table, table, "repaired to the last");
    assert!(l.metrics.health.ready());
    l.run_for(Duration::from_secs(60));
    assert!(l
        .metrics
        .encode()
        .contains("nftpol_listing_stalled{kind=\"pod\"} 1"));
    assert_eq!(l.kernel.mem.state().table, table, "nothing new went");
    // The last attempt lists p9, p1 and p2 alone, and completes.
    let repairs = l.batches();
    l.change(Change::ListStart(Kind::Pod));
    for o in [pod_at(9, 1), pod_at(1, 8), pod(2)] {
        l.change(Change::Listed(o));
    }
    l.change(Change::ListDone(Kind::Pod));
    assert_eq!(l.batches(), repairs + 1, "one batch");
    let names: Vec<&str> = l.r.cluster().pods().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["p1", "p2", "p9"]);
    let mut whole = Loop::new(settings());
    whole.change(Change::Replace {
        kinds: Kind::ALL.to_vec(),
        objects: vec![
            Object::Namespace(Namespace {
                name: "prod".into(),
                labels: Default::default(),
            }),
            pod_at(9, 1),
            pod_at(1, 8),
            pod(2),
        ],
    });
    assert_eq!(l.r.cluster(), whole.r.cluster());
    assert_eq!(l.kernel.mem.state().table, whole.kernel.mem.state().table);
    assert!(l
        .metrics
        .encode()
        .contains("nftpol_listing_stalled{kind=\"pod\"} 0"));
}

/// A first batch the kernel refused, then a relist that stalls part way:
/// there is no complete state to keep, and the retry waits for the
/// listing like any batch (the kernel never sees a half-listed kind);
/// readiness says so all along, and the retry goes once it completes.
#[test]
fn a_refused_first_batch_then_a_stalled_relist_stays_unready_until_it_completes() {
    let mut l = Loop::new(settings());
    l.kernel.refuse.store(1, Ordering::SeqCst);
    l.change(Change::Replace {
        kinds: Kind::ALL.to_vec(),
        objects: isolating_policy(),
    });
    assert_eq!(l.kernel.mem.state().table, None, "refused");
    l.change(Change::ListStart(Kind::Pod));
    l.change(Change::Listed(pod(1)));
    l.run_for(Duration::from_secs(120));
    assert_eq!(l.kernel.mem.state().table, None, "held");
    assert!(!l.metrics.health.ready());
    l.change(Change::ListDone(Kind::Pod));
    l.run_for(Duration::from_secs(1));
    assert!(l.kernel.mem.state().table.is_some());
    assert!(l.metrics.health.ready());
}

/// A repair that fails while a listing holds changes back is retried
/// with backoff, not only at the next drift check.
#[test]
fn a_failed_repair_while_held_is_retried_with_backoff() {
    let mut l = Loop::synced(settings());
    let want = l.kernel.mem.state().table.clone();
    l.change(Change::ListStart(Kind::Pod));
    l.change(Change::Listed(pod(1)));
    l.kernel.mem.state().table = None;
    l.kernel.refuse.store(1, Ordering::SeqCst);
    l.r.handle(l.clock.now(), Change::Verify { reason: "t".into() });
    l.poll();
    assert!(!l.metrics.health.ready());
    assert_eq!(l.kernel.mem.state().table, None, "refused");
    l.run_for(100 * MS);
    assert_eq!(
        l.kernel.mem.state().table,
        want,
        "retried after backoff_min"
    );
    assert!(l.metrics.health.ready());
    assert!(l.r.cluster().pod("prod", "p1").is_some());
    assert_eq!(l.kernel.mem.state().table, want, "p1 still held back");
}

/// A `Replace` (a manifest directory reload) is a listing of each kind in
/// one change: what it changes in several kinds goes in one batch, never
/// one kind without the other, and objects of kinds it does not name are
/// left out.
#[test]
fn a_replace_of_several_kinds_is_one_batch() {
    let mut l = Loop::synced(settings());
    list_pods(&mut l, [1, 2]);
    l.run_for(Duration::from_secs(1));
    let batches = l.batches();
    // The reload drops the isolating policy and p1, and adds p3.
    l.change(Change::Replace {
        kinds: Kind::ALL.to_vec(),
        objects: vec![pod(2), pod(3)],
    });
    l.run_for(Duration::from_secs(1));
    assert_eq!(l.batches(), batches + 1);
    let mut fresh = Loop::new(settings());
    fresh.change(Change::Replace {
        kinds: Kind::ALL.to_vec(),
        objects: vec![pod(2), pod(3)],
    });
    assert_eq!(l.r.cluster(), fresh.r.cluster());
    assert_eq!(l.kernel.mem.state().table, fresh.kernel.mem.state().table);
    // Pods alone: the policy among the objects is not theirs to bring.
    let mut objects = isolating_policy();
    objects.push(pod(2));
    l.change(Change::Replace {
        kinds: vec![Kind::Pod],
        objects,
    });
    l.run_for(Duration::from_secs(1));
    assert_eq!(l.r.cluster().policy_count(), 0);
    let names: Vec<&str> = l.r.cluster().pods().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["p2"]);
    assert_eq!(l.batches(), batches + 2);
}

#[test]
fn a_listing_that_fails_before_its_first_object_holds_nothing_back() {
    let mut l = Loop::synced(settings());
    l.run_for(Duration::from_secs(1));
    let batches = l.batches();
    // The API server is down: the watcher starts a listing at each retry.
    l.change(Change::ListStart(Kind::Pod));
    l.change(Change::Apply(pod(1)));
    assert_eq!(
        l.batches(),
        batches + 1,
        "another kind's event goes at once"
    );
    l.change(Change::ListStart(Kind::Pod));
    list_pods(&mut l, [1]);
    assert_eq!(l.r.cluster().pod_count(), 1);
}

#[test]
fn an_empty_cluster_is_programmed_once_after_the_sync() {
    let mut l = Loop::new(settings());
    l.change(Change::Replace {
        kinds: Kind::ALL.to_vec(),
        objects: vec![],
    });
    assert_eq!(l.applies(), 1);
    l.run_for(Duration::from_secs(10));
    assert_eq!(l.applies(), 1);
}

#[test]
fn an_isolated_change_and_its_follow_ups_go_at_once() {
    let mut l = Loop::synced(settings());
    l.run_for(Duration::from_secs(1));
    let t = l.now();
    l.change(Change::Apply(pod(1)));
    // 5 ms later a follow-up (the rest of a rollout, say), and 15 ms after
    // that another: each is past the window since the last batch (1 ms,
    // then 2 ms), so neither is held back for a debounce while the
    // half-applied state stays enforced.
    l.run_for(5 * MS);
    l.change(Change::Apply(pod(2)));
    l.run_for(15 * MS);
    l.change(Change::Apply(pod(3)));
    assert_eq!(l.batch_times[1..], [t, t + 5 * MS, t + 20 * MS]);
    let want = policy_compiler::compile(l.r.cluster(), NODE);
    assert_eq!(l.kernel.mem.state().table.as_ref(), Some(&want));
}

#[test]
fn a_change_right_after_a_batch_waits_for_the_window_and_it_doubles() {
    let mut l = Loop::synced(settings());
    l.run_for(Duration::from_secs(1));
    let t = l.now();
    l.change(Change::Apply(pod(1)));
    // Half a millisecond after the batch: the window is 1 ms.
    l.run_for(MS / 2);
    l.change(Change::Apply(pod(2)));
    assert_eq!(l.batch_times.len(), 2, "inside the window");
    l.run_for(MS);
    // Right after that second batch: now the window is 2 ms.
    l.change(Change::Apply(pod(3)));
    l.run_for(5 * MS);
    assert_eq!(l.batch_times[1..], [t, t + MS, t + 3 * MS]);
    // 20 ms of quiet resets it: the next change goes at once.
    l.run_for(20 * MS);
    let u = l.now();
    l.change(Change::Apply(pod(4)));
    l.run_for(MS / 2);
    l.change(Change::Apply(pod(5)));
    l.run_for(MS);
    assert_eq!(l.batch_times[4..], [u, u + MS]);
}

#[test]
fn a_steady_stream_settles_at_one_batch_per_max_delay() {
    let mut l = Loop::synced(Settings {
        debounce: 50 * MS,
        max_delay: 100 * MS,
        ..settings()
    });
    l.run_for(Duration::from_secs(1));
    let start = l.now();
    // A change every 10 ms for a second: never 50 ms of quiet.
    let mut arrivals = Vec::new();
    for i in 0..100 {
        arrivals.push(l.now());
        l.change(Change::Apply(pod(i)));
        l.run_for(10 * MS);
    }
    l.run_for(Duration::from_secs(1));
    let batches: Vec<Duration> = l.batch_times[1..].iter().map(|t| *t - start).collect();
    // The window doubles from 1 ms per batch: the first five changes go at
    // once, then batches space out 16, 32, 64 ms and settle at 100 ms;
    // the last change goes after 50 ms of quiet, not the full window.
    let want: Vec<Duration> = [0, 10, 20, 30, 40, 56, 88, 152]
        .into_iter()
        .chain((1..=8).map(|k| 152 + k * 100))
        .chain([1040])
        .map(|ms| ms * MS)
        .collect();
    assert_eq!(batches, want);
    for a in arrivals {
        let a = a - start;
        let programmed = batches.iter().find(|b| **b >= a).expect("programmed");
        assert!(
            *programmed - a <= 100 * MS,
            "change at {a:?} waited until {programmed:?}"
        );
    }
}

#[test]
fn a_burst_arriving_together_is_one_batch() {
    let mut l = Loop::synced(settings());
    l.run_for(Duration::from_secs(1));
    for i in 0..1000 {
        l.r.handle(l.clock.now(), Change::Apply(pod(i)));
    }
    l.run_for(Duration::from_secs(1));
    assert_eq!(l.batches(), 2);
}

#[test]
fn failed_batches_back_off_exponentially_and_a_success_resets() {
    let mut l = Loop::synced(settings());
    l.run_for(Duration::from_secs(1));
    l.kernel.refuse.store(5, Ordering::SeqCst);
    let t = l.now();
    l.change(Change::Apply(pod(1)));
    assert_eq!(l.applies(), 2, "the sync, the first attempt");
    assert!(
        !l.metrics.health.ready(),
        "a failed batch makes the agent unready"
    );
    // Retries after 100, 200, 400, then 800 ms (the cap); the fifth
    // attempt fails too, the sixth succeeds.
    let mut attempts = vec![];
    for _ in 0..5 {
        let before = l.applies();
        let next = l.r.deadline().expect("a retry is due");
        l.run_until(next - l.t0);
        assert_eq!(l.applies(), before + 1);
        attempts.push(l.now() - t);
    }
    let want: Vec<Duration> = [100, 300, 700, 1500, 2300]
        .iter()
        .map(|&ms| ms * MS)
        .collect();
    assert_eq!(attempts, want);
    assert_eq!(l.batches(), 2);
    assert!(l.metrics.health.ready(), "ready again after the success");
    assert!(l
        .metrics
        .encode()
        .contains("nftpol_errors_total{error=\"netlink_not_committed\"} 5"));
    // The next failure starts from the minimum again.
    l.run_for(Duration::from_secs(1));
    l.kernel.refuse.store(1, Ordering::SeqCst);
    l.change(Change::Apply(pod(2)));
    let failed_at = l.now();
    l.run_for(99 * MS);
    assert_eq!(l.batches(), 2);
    l.run_for(MS);
    assert_eq!(l.batches(), 3);
    assert_eq!(*l.batch_times.last().expect("batch"), failed_at + 100 * MS);
}

#[test]
fn drift_is_checked_every_interval_and_repaired() {
    let mut l = Loop::synced(settings());
    let synced_at = l.now();
    let want = l.kernel.mem.state().table.clone();
    // Someone deletes our table a second later.
    l.run_for(Duration::from_secs(1));
    l.kernel.mem.state().table = None;
    l.run_until(synced_at + Duration::from_secs(30) - MS);
    assert_eq!(
        l.kernel.mem.state().table,
        None,
        "not checked before the interval"
    );
    l.run_for(MS);
    assert_eq!(l.kernel.mem.state().table, want, "repaired at the interval");
    assert!(l.metrics.encode().contains("nftpol_drift_repairs_total 1"));
    // An untouched table is read back every interval and left alone.
    let applies = l.applies();
    l.run_for(Duration::from_secs(60));
    assert_eq!(l.applies(), applies + 2, "two more checks");
    assert_eq!(l.batches(), 2, "only the repair sent a batch");
    assert!(l.metrics.encode().contains("nftpol_drift_repairs_total 1"));
}

#[test]
fn a_change_postpones_the_drift_check() {
    let mut l = Loop::synced(settings());
    l.run_for(Duration::from_secs(20));
    l.change(Change::Apply(Object::Namespace(Namespace {
        name: "prod".into(),
        labels: [("team".to_string(), "a".to_string())].into(),
    })));
    let programmed = l.now();
    let applies = l.applies();
    l.run_until(programmed + Duration::from_secs(30) - MS);
    assert_eq!(l.applies(), applies, "the batch just verified the table");
    l.run_for(MS);
    assert_eq!(l.applies(), applies + 1);
}

#[test]
fn a_reported_tampering_is_repaired_at_once_and_readiness_follows() {
    let mut l = Loop::synced(settings());
    let want = l.kernel.mem.state().table.clone();
    l.run_for(Duration::from_secs(1));
    if let Some(t) = l.kernel.mem.state().table.as_mut() {
        t.table_flags = policy_compiler::ir::TABLE_F_DORMANT;
    }
    l.r.handle(
        l.clock.now(),
        Change::Verify {
            reason: "add table by netlink port 7".into(),
        },
    );
    assert!(
        !l.metrics.health.ready(),
        "not ready while a reported change awaits repair"
    );
    assert_eq!(l.r.deadline(), Some(l.clock.now()), "due at once");
    l.poll();
    assert_eq!(
        l.kernel.mem.state().table,
        want,
        "repaired with no time passing"
    );
    assert!(l.metrics.encode().contains("nftpol_drift_repairs_total 1"));
    assert!(l.metrics.health.ready());
    // The next periodic check is a full interval after the repair.
    let repaired = l.now();
    assert_eq!(
        l.r.deadline(),
        Some(l.t0 + repaired + Duration::from_secs(30))
    );
}

#[test]
fn a_reported_tampering_goes_before_a_pending_change_and_both_land() {
    let mut l = Loop::synced(settings());
    // A change arrives during a batch series (so it waits for quiet) and
    // someone deletes the table meanwhile.
    l.change(Change::Apply(pod(1)));
    l.r.handle(l.clock.now(), Change::Apply(pod(2)));
    l.kernel.mem.state().table = None;
    l.r.handle(
        l.clock.now(),
        Change::Verify {
            reason: "delete table".into(),
        },
    );
    l.poll();
    assert!(l.kernel.mem.state().table.is_some(), "repaired at once");
    assert!(l.metrics.encode().contains("nftpol_drift_repairs_total 1"));
    l.run_for(Duration::from_secs(1));
    let want = policy_compiler::compile(l.r.cluster(), NODE);
    assert_eq!(l.kernel.mem.state().table.as_ref(), Some(&want));
}

#[test]
fn a_failed_repair_backs_off_and_stays_not_ready() {
    let mut l = Loop::synced(settings());
    l.kernel.mem.state().table = None;
    l.kernel.refuse.store(1, Ordering::SeqCst);
    l.r.handle(
        l.clock.now(),
        Change::Verify {
            reason: "delete table".into(),
        },
    );
    l.poll();
    assert_eq!(l.kernel.mem.state().table, None);
    assert!(!l.metrics.health.ready());
    l.run_for(100 * MS);
    assert!(
        l.kernel.mem.state().table.is_some(),
        "retried after the backoff"
    );
    assert!(l.metrics.health.ready());
}

/// Records every revocation pass: the ruleset it was given and the local
/// pods in scope; fails while `fail` is set.
#[derive(Clone, Default)]
struct Revoker {
    seen: Arc<std::sync::Mutex<Vec<(Ruleset, usize)>>>,
    fail: Arc<std::sync::atomic::AtomicBool>,
}

impl crate::revoke::Revoke for Revoker {
    fn revoke(
        &mut self,
        rs: &Ruleset,
        scope: &crate::revoke::Scope,
    ) -> Result<crate::revoke::Report, NetlinkError> {
        self.seen
            .lock()
            .unwrap()
            .push((rs.clone(), scope.local_pods.len()));
        if self.fail.load(Ordering::SeqCst) {
            return Err(NetlinkError::Dump {
                what: "the conntrack table".into(),
                errno: libc::EIO,
            });
        }
        Ok(crate::revoke::Report {
            examined: 5,
            judged: 3,
            denied: Vec::new(),
            deleted: 2,
            ..Default::default()
        })
    }
}

#[test]
fn revocation_follows_every_changed_batch_and_its_failure_is_not_fatal() {
    let mut l = Loop::new(settings());
    let rev = Revoker::default();
    l.r.set_revoker(Box::new(rev.clone()));
    l.change(Change::Replace {
        kinds: Kind::ALL.to_vec(),
        objects: isolating_policy(),
    });
    assert_eq!(rev.seen.lock().unwrap().len(), 1, "after the first batch");
    l.run_for(Duration::from_secs(1));
    l.change(Change::Apply(pod(1)));
    l.run_for(Duration::from_secs(1));
    {
        let seen = rev.seen.lock().unwrap();
        assert_eq!(seen.len(), 2, "after the batch adding the pod");
        assert_eq!(
            Some(&seen[1].0),
            l.kernel.mem.state().table.as_ref(),
            "judged against the ruleset just applied"
        );
        assert_eq!(seen[1].1, 1, "the new pod is local");
    }
    assert!(l
        .metrics
        .encode()
        .contains("nftpol_conntrack_revoked_total 4"));
    // A batch-less reconcile (the same pod again) and an untouched drift
    // check cut nothing.
    l.change(Change::Apply(pod(1)));
    l.run_for(Duration::from_secs(31));
    assert_eq!(rev.seen.lock().unwrap().len(), 2);
    // A repaired tampering is followed by a pass too.
    l.kernel.mem.state().table = None;
    l.change(Change::Verify {
        reason: "test".into(),
    });
    assert_eq!(rev.seen.lock().unwrap().len(), 3, "after the repair");
    // A failing pass is counted and warned about; the batch stands.
    rev.fail.store(true, Ordering::SeqCst);
    l.run_for(Duration::from_secs(1));
    l.change(Change::Apply(pod(2)));
    l.run_for(Duration::from_secs(1));
    assert_eq!(rev.seen.lock().unwrap().len(), 4);
    assert!(
        l.metrics.health.ready(),
        "a failed revocation is not a failed apply"
    );
    let m = l.metrics.encode();
    assert!(
        m.contains("nftpol_conntrack_revoke_failures_total 1"),
        "{m}"
    );
    assert!(
        m.contains(r#"nftpol_errors_total{error="conntrack"} 1"#),
        "{m}"
    );
    let batches = l.batches();
    l.run_for(Duration::from_secs(5));
    assert_eq!(l.batches(), batches, "nothing is retried because of it");
}

/// The agent's `--log` options shape what it programs, incrementally and
/// on a whole compile alike (debug builds also hold the incremental
/// ruleset to a whole compile under them after every reconcile).
#[test]
fn node_wide_log_options_reach_the_kernel_table() {
    use policy_compiler::audit::AuditOptions;
    use policy_compiler::ir::Match;
    use policy_compiler::model::LogMode;
    for incremental in [true, false] {
        let audit = AuditOptions {
            log: LogMode::Deny,
            group: 9,
            rate: 3,
            ..AuditOptions::default()
        };
        let mut l = Loop::synced(Settings {
            audit,
            incremental,
            ..settings()
        });
        l.change(Change::Apply(pod(1)));
        l.run_for(Duration::from_secs(1));
        let state = l.kernel.mem.state();
        let table = state.table.as_ref().expect("table");
        let chain = &table.chains["ing_prod_p1"];
        let log = chain
            .rules
            .iter()
            .flat_map(|r| &r.matches)
            .find_map(|m| match m {
                Match::Log { group, prefix } => Some((*group, prefix.clone())),
                _ => None,
            });
        assert_eq!(
            log,
            Some((9, "prod/p1 default-deny".to_string())),
            "incremental={incremental}: {chain:?}"
        );
        assert!(
            chain
                .rules
                .iter()
                .flat_map(|r| &r.matches)
                .any(|m| matches!(m, Match::Limit { per_second: 3, .. })),
            "{chain:?}"
        );
    }
}

/// Whether a status was handed to the writer since the last look.
fn status_sent(
    rx: &mut tokio::sync::watch::Receiver<Option<nftpol_crds::status::NodeEnforcement>>,
) -> bool {
    let sent = rx.has_changed().expect("the loop holds the sender");
    rx.mark_unchanged();
    sent
}

#[test]
fn the_status_goes_out_after_a_change_at_most_every_interval_and_never_when_nothing_changed() {
    let mut l = Loop::synced(Settings {
        counters_interval: Duration::from_secs(1),
        status_interval: Duration::from_secs(5),
        // Hundreds of drift checks in the hour below find the table as
        // it was: confirming it is no news, or every node would write its
        // status once per drift interval.
        drift_interval: Duration::from_secs(10),
        ..settings()
    });
    l.change(Change::Apply(pod(1)));
    l.run_for(Duration::from_secs(1));
    let (tx, mut rx) = tokio::sync::watch::channel(None);
    l.r.set_status(super::status::Inventory::default(), tx);
    l.poll();
    assert!(status_sent(&mut rx), "the first status goes out at once");
    // An hour of counter readings with no new packets and no change:
    // nothing to tell.
    l.run_for(Duration::from_secs(3600));
    assert!(!status_sent(&mut rx), "nothing changed, nothing sent");
    // A counted rule of the node's ruleset gets packets every second:
    // the status follows every 5 s, not every reading.
    let counted = {
        let mut k = l.kernel.mem.clone();
        let c = k.counters().expect("counters");
        let r = c
            .rules
            .iter()
            .find(|r| r.chain == "ing_prod_p1")
            .expect("the isolating policy counts pod 1's drops");
        (r.chain.clone(), r.index)
    };
    let mut sent_at = Vec::new();
    for i in 1..=20 {
        l.kernel.mem.state().hits.insert(counted.clone(), i);
        l.run_for(Duration::from_secs(1));
        if status_sent(&mut rx) {
            sent_at.push(l.now());
        }
    }
    let gaps: Vec<Duration> = sent_at.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(sent_at.len(), 4, "20 s of new packets: {sent_at:?}");
    assert!(
        gaps.iter().all(|g| *g == Duration::from_secs(5)),
        "{sent_at:?}"
    );
    // Quiet again: the last readings' news goes out once, then nothing.
    l.run_for(Duration::from_secs(5));
    status_sent(&mut rx);
    l.run_for(Duration::from_secs(600));
    assert!(!status_sent(&mut rx), "nothing changed, nothing sent");
    // A batch is news.
    l.change(Change::Apply(pod(2)));
    l.run_for(Duration::from_secs(5));
    assert!(status_sent(&mut rx), "the batch adding pod 2");
}

/// A relist is marked object by object, as watch events are: one that
/// brings back what the loop knows changes nothing, and one that differs
/// in a few objects recompiles those, not the node. Debug builds also
/// hold every batch to the full compile (`check_incremental`), so the
/// table is checked equal to it after each.
#[test]
fn a_relist_recompiles_only_the_objects_that_changed() {
    let mut l = Loop::synced(settings());
    let pods: Vec<Object> = (0..4).map(pod).collect();
    l.change(Change::Replace {
        kinds: vec![Kind::Pod],
        objects: pods.clone(),
    });
    l.run_for(100 * MS);
    let batches = l.batches();
    let last = |l: &Loop| l.kernel.touched.lock().expect("lock").last().cloned();
    assert!(last(&l).is_some_and(|t| t.all), "the first batch is whole");

    // The same listing again (a relist after 410 Gone that missed nothing).
    for kinds in [vec![Kind::Pod], Kind::ALL.to_vec()] {
        let mut objects = pods.clone();
        if kinds.len() > 1 {
            objects.extend(isolating_policy());
        }
        l.change(Change::Replace { kinds, objects });
        l.run_for(100 * MS);
        assert_eq!(l.batches(), batches, "nothing changed, nothing sent");
    }

    // p1 went away and p4 came while the watch was down.
    let mut relisted: Vec<Object> = pods.iter().filter(|o| !is_pod(o, "p1")).cloned().collect();
    relisted.push(pod(4));
    l.change(Change::Replace {
        kinds: vec![Kind::Pod],
        objects: relisted,
    });
    l.run_for(100 * MS);
    assert_eq!(l.batches(), batches + 1);
    let t = last(&l).expect("a batch");
    assert!(!t.all, "{t:?}");
    // Their own chains, and the related-packet chains of their addresses.
    let rel: Vec<String> = [1, 4]
        .iter()
        .map(|&i| match pod(i) {
            Object::Pod(p) => policy_compiler::related::chain_name(&p.ips[0]),
            _ => unreachable!("pod() makes pods"),
        })
        .collect();
    assert!(
        t.chains
            .iter()
            .all(|c| c.ends_with("_p1") || c.ends_with("_p4") || rel.contains(c)),
        "only the chains of the pods that changed: {t:?}"
    );
    assert!(t.chains.contains("ing_prod_p4"), "{t:?}");
}

fn is_pod(o: &Object, name: &str) -> bool {
    matches!(o, Object::Pod(p) if p.name == name)
}

/// `--allow-pod-tunnels` reaches the compiled table: the pod's source
/// validation chain keeps its tunnel drops only without it.
#[test]
fn pod_tunnels_setting_decides_the_tunnel_drops() {
    let dir = tempfile::Builder::new()
        .prefix("nftpol-t-tunnels-")
        .tempdir()
        .expect("temp dir");
    let map = dir.path().join("interfaces.yaml");
    std::fs::write(&map, "prod/p0: veth0\n").expect("write interface map");
    for pod_tunnels in [false, true] {
        let mut l = Loop::synced(Settings {
            pod_interfaces_file: Some(map.clone()),
            pod_tunnels,
            ..settings()
        });
        l.change(Change::Apply(pod(0)));
        l.run_for(Duration::from_secs(1));
        let table = l.kernel.mem.state().table.clone().expect("a table");
        let src = table
            .chains
            .get("src_prod_p0")
            .expect("the pod's validation chain");
        let drops = src
            .rules
            .iter()
            .filter(|r| {
                r.comment
                    .as_deref()
                    .is_some_and(|c| c.contains("tunnel packet"))
            })
            .count();
        assert_eq!(
            drops == 0,
            pod_tunnels,
            "{drops} tunnel drops, pod_tunnels={pod_tunnels}"
        );
        assert!(
            src.rules.iter().any(|r| r
                .comment
                .as_deref()
                .is_some_and(|c| c.contains("forged source"))),
            "validation stays on either way"
        );
    }
}

//! The Kubernetes source: one kube-runtime watcher per kind (Namespaces,
//! Pods, NetworkPolicies, Nodes, and the admin policy CRDs
//! ClusterNetworkPolicy, AdminNetworkPolicy, BaselineAdminNetworkPolicy)
//! turning API events into [`Change`]s. A CRD that is not installed counts
//! as an empty listing (logged once), so a cluster without the admin
//! policy API still gets its NetworkPolicies enforced.
//!
//! Objects are reduced to the compiler's model right here (labels, node,
//! hostNetwork, IPs, named ports), so the agent never holds whole API
//! objects: memory stays proportional to what the compiler needs. A
//! listing's objects go to the index one by one as they arrive, between
//! `ListStart` and `ListDone` (kube's `Init` and `InitDone`), so no listing
//! is ever held whole; the loop programs nothing while a kind is half
//! listed, and objects that vanished while the watch was down (a relist
//! after 410 Gone) are removed at its end.
//! Watch errors are logged and counted; the watcher retries with backoff
//! and the last known state stays enforced meanwhile.
//!
//! Pods are read straight into the model ([`WirePod`]), the other kinds
//! through [`Slim`]; both keep only the fields the reduction reads (a
//! served pod's managedFields, container specs and conditions are parsed
//! past, never built), and so one object the client cannot even
//! deserialize (a label that is not a string, a kept field of the wrong
//! type) is skipped like an invalid one instead of failing the whole list
//! or watch of its kind. An invalid object is skipped
//! (treated as absent), logged, counted, and reported once per
//! resourceVersion as a Warning Event on the object (kube's event
//! `Recorder`), so its owner sees it in `kubectl describe`.

use crate::agent::metrics::Metrics;
use crate::agent::reconcile::{Change, Kind, Stamped};
use crate::agent::slim::Slim;
use crate::agent::status::Inventory;
use crate::agent::wire_pod::WirePod;
use crate::agent::AgentError;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::utils::{Backoff, ResetTimerBackoff};
use kube::runtime::watcher::{self, watcher, Event, ExponentialBackoff};
use kube::runtime::WatchStreamExt;
use kube::{Api, Resource};
use nftpol_crds::v1alpha1::{AdminNetworkPolicy, BaselineAdminNetworkPolicy};
use nftpol_crds::v1alpha2::ClusterNetworkPolicy;
use policy_compiler::admin::{convert as admin, AdminKind};
use policy_compiler::{convert, Object, ObjectError};
use std::collections::HashSet;
use std::fmt::Debug;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One watched kind: where its objects go in the index, what the watcher
/// reads each object as, and how that is reduced to the compiler's model.
/// One impl a kind and one generic [`watch`] for all of them, so every
/// kind is listed, applied, deleted and skipped by the same code.
trait Watched: Send + 'static {
    const KIND: Kind;
    /// A CRD the API server may not serve (not installed).
    const CRD: bool = false;
    /// What the watcher decodes an object into.
    type Wire: Resource<DynamicType = ()>
        + Clone
        + Debug
        + serde::de::DeserializeOwned
        + Send
        + 'static;
    /// The object in the model, or why it is invalid (an object the reader
    /// could not decode included); takes what it can out of `o`, whose
    /// metadata stays.
    fn reduce(o: &mut Self::Wire) -> Result<Object, ObjectError>;
}

/// A kind other than pods: read through [`Slim`] into its `k8s_openapi`
/// type, then converted. These are few enough (and a policy is validated
/// whole) that the typed read costs little.
fn reduce_slim<K: Watched<Wire = Slim<K>> + Resource<DynamicType = ()>>(
    o: &Slim<K>,
    convert: impl FnOnce(&K) -> Result<Object, ObjectError>,
) -> Result<Object, ObjectError> {
    match &o.0 {
        Ok(obj) => convert(obj),
        Err(bad) => Err(undecodable(K::KIND, o, &bad.error)),
    }
}

impl Watched for Namespace {
    const KIND: Kind = Kind::Namespace;
    type Wire = Slim<Self>;
    fn reduce(o: &mut Slim<Self>) -> Result<Object, ObjectError> {
        reduce_slim(o, |n| convert::namespace(n, None).map(Object::Namespace))
    }
}

impl Watched for NetworkPolicy {
    const KIND: Kind = Kind::Policy;
    type Wire = Slim<Self>;
    fn reduce(o: &mut Slim<Self>) -> Result<Object, ObjectError> {
        reduce_slim(o, |p| convert::policy(p, None).map(Object::Policy))
    }
}

impl Watched for Node {
    const KIND: Kind = Kind::Node;
    type Wire = Slim<Self>;
    fn reduce(o: &mut Slim<Self>) -> Result<Object, ObjectError> {
        reduce_slim(o, |n| admin::node(n, None).map(Object::Node))
    }
}

impl Watched for ClusterNetworkPolicy {
    const KIND: Kind = Kind::Admin(AdminKind::ClusterNetworkPolicy);
    const CRD: bool = true;
    type Wire = Slim<Self>;
    fn reduce(o: &mut Slim<Self>) -> Result<Object, ObjectError> {
        reduce_slim(o, |p| {
            admin::cluster_network_policy(p, None).map(Object::AdminPolicy)
        })
    }
}

impl Watched for AdminNetworkPolicy {
    const KIND: Kind = Kind::Admin(AdminKind::AdminNetworkPolicy);
    const CRD: bool = true;
    type Wire = Slim<Self>;
    fn reduce(o: &mut Slim<Self>) -> Result<Object, ObjectError> {
        reduce_slim(o, |p| {
            admin::admin_network_policy(p, None).map(Object::AdminPolicy)
        })
    }
}

impl Watched for BaselineAdminNetworkPolicy {
    const KIND: Kind = Kind::Admin(AdminKind::BaselineAdminNetworkPolicy);
    const CRD: bool = true;
    type Wire = Slim<Self>;
    fn reduce(o: &mut Slim<Self>) -> Result<Object, ObjectError> {
        reduce_slim(o, |p| {
            admin::baseline_admin_network_policy(p, None).map(Object::AdminPolicy)
        })
    }
}

/// Pods, by far the most numerous and the largest objects, are read
/// straight into the model ([`WirePod`]).
impl Watched for Pod {
    const KIND: Kind = Kind::Pod;
    type Wire = WirePod;
    fn reduce(o: &mut WirePod) -> Result<Object, ObjectError> {
        o.take().map(Object::Pod)
    }
}

/// Where every watch sends its changes, counts its events and reports
/// the objects it skips.
#[derive(Clone)]
struct Sink {
    client: kube::Client,
    tx: Sender<Stamped>,
    metrics: Arc<Metrics>,
    reporter: InvalidReporter,
}

/// Watches every kind until the reconcile loop goes away.
pub async fn run(
    client: kube::Client,
    node: String,
    tx: Sender<Stamped>,
    metrics: Arc<Metrics>,
    inventory: Inventory,
) -> Result<(), AgentError> {
    let reporter = InvalidReporter(
        Recorder::new(
            client.clone(),
            Reporter {
                controller: "nftpol".into(),
                instance: Some(node),
            },
        ),
        inventory,
    );
    let sink = Sink {
        client,
        tx,
        metrics,
        reporter,
    };
    futures::join!(
        watch::<Namespace>(sink.clone()),
        watch::<Pod>(sink.clone()),
        watch::<NetworkPolicy>(sink.clone()),
        watch::<Node>(sink.clone()),
        watch::<ClusterNetworkPolicy>(sink.clone()),
        watch::<AdminNetworkPolicy>(sink.clone()),
        watch::<BaselineAdminNetworkPolicy>(sink),
    );
    Ok(())
}

/// Whether the API server serves the kind; a CRD that is not installed
/// (404) is reported as listed and empty instead.
async fn served<K: Watched>(api: &Api<K::Wire>, sink: &Sink) -> bool {
    let probe = api
        .list_metadata(&kube::api::ListParams::default().limit(1))
        .await;
    let Err(kube::Error::Api(status)) = &probe else {
        return true;
    };
    if status.code != 404 {
        return true;
    }
    tracing::warn!(
        kind = K::KIND.as_str(),
        "CRD not installed: no such policies to enforce (restart the agent after installing it; `nftpol crds` prints it)"
    );
    sink.metrics.event(K::KIND, "listed");
    let _ = sink.tx.send((
        Instant::now(),
        Change::Replace {
            kinds: vec![K::KIND],
            objects: Vec::new(),
        },
    ));
    false
}

/// The object's key as the index stores it (a namespaced object without a
/// namespace is in `default`, as the converter decides).
fn key<K: Resource>(o: &K, kind: Kind) -> (String, String) {
    let m = o.meta();
    let ns = match kind {
        Kind::Namespace | Kind::Node | Kind::Admin(_) => String::new(),
        _ => m
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".into()),
    };
    (ns, m.name.clone().unwrap_or_default())
}

/// Posts Warning Events about invalid objects, and keeps the inventory
/// of policy resourceVersions and invalid objects the status object shows.
#[derive(Clone)]
struct InvalidReporter(Recorder, Inventory);

impl InvalidReporter {
    /// Fire and forget: an Event that cannot be posted (no RBAC, API
    /// down) must never hold up the watch.
    fn report(&self, involved: k8s_openapi::api::core::v1::ObjectReference, e: &ObjectError) {
        let recorder = self.0.clone();
        let event = KubeEvent {
            type_: EventType::Warning,
            reason: "InvalidObject".into(),
            note: Some(format!(
                "nftpol skipped this object: {}: {}",
                e.field, e.message
            )),
            action: "Skipped".into(),
            secondary: None,
        };
        tokio::spawn(async move {
            if let Err(err) = recorder.publish(&event, &involved).await {
                tracing::debug!(error = %err, "cannot post the Event about an invalid object");
            }
        });
    }
}

/// The API kind name of a watched kind, as the status object names it.
fn api_kind(kind: Kind) -> &'static str {
    match kind {
        Kind::Namespace => "Namespace",
        Kind::Pod => "Pod",
        Kind::Policy => "NetworkPolicy",
        Kind::Node => "Node",
        Kind::Admin(k) => k.api(),
    }
}

impl Sink {
    /// Reduces one listed or applied object. A valid one is recorded
    /// with its resourceVersion for the status object. An invalid one,
    /// or one the guard could not deserialize, is logged, counted and
    /// reported (once per resourceVersion, so relists do not repeat the
    /// Event) and comes back as `None`: skipped, never an error that
    /// would stop the watch.
    fn accept<K: Watched>(
        &self,
        o: &mut K::Wire,
        reported: &mut HashSet<(String, String)>,
    ) -> Option<Object> {
        let kind = K::KIND;
        let reduced = K::reduce(o);
        let (ns, name) = key(&*o, kind);
        let e = match reduced {
            Ok(obj) => {
                self.reporter.1.valid(
                    api_kind(kind),
                    &ns,
                    &name,
                    o.meta().resource_version.as_deref(),
                );
                return Some(obj);
            }
            Err(e) => e,
        };
        self.metrics.invalid(kind);
        self.reporter.1.invalid(
            api_kind(kind),
            &ns,
            &name,
            format!("{}: {}", e.field, e.message),
        );
        tracing::warn!(
            kind = %e.kind,
            object = %e.object,
            field = %e.field,
            "invalid object skipped: {e}"
        );
        let uid = o.meta().uid.clone().unwrap_or_else(|| e.object.clone());
        let rv = o.meta().resource_version.clone().unwrap_or_default();
        // Bounded: an object rewritten forever must not grow this forever (at
        // worst an Event is posted again after the reset).
        if reported.len() >= 10_000 {
            reported.clear();
        }
        if reported.insert((uid, rv)) {
            self.reporter.report(o.object_ref(&()), &e);
        }
        None
    }
}

/// Objects per list page.
pub(crate) const PAGE_SIZE: u32 = 500;

/// Watches one kind; returns when the receiver is gone.
async fn watch<K: Watched>(sink: Sink) {
    let kind = K::KIND;
    let api = Api::<K::Wire>::all(sink.client.clone());
    if K::CRD && !served::<K>(&api, &sink).await {
        return;
    }
    let Sink {
        tx,
        metrics,
        reporter,
        ..
    } = &sink;
    let mut reported = HashSet::new();
    let config = watcher::Config::default().page_size(PAGE_SIZE);
    let mut stream = watcher(api, config)
        .backoff(WatchBackoff::default())
        .boxed();
    // Objects of the listing in progress sent so far.
    let mut listed = 0usize;
    while let Some(ev) = stream.next().await {
        let at = Instant::now();
        let change = match ev {
            Ok(Event::Init) => {
                metrics.event(kind, "init");
                reporter.1.relisting(api_kind(kind));
                tracing::debug!(kind = kind.as_str(), "listing");
                listed = 0;
                Some(Change::ListStart(kind))
            }
            Ok(Event::InitApply(mut o)) => sink.accept::<K>(&mut o, &mut reported).map(|obj| {
                listed += 1;
                Change::Listed(obj)
            }),
            Ok(Event::InitDone) => {
                metrics.event(kind, "listed");
                tracing::info!(kind = kind.as_str(), objects = listed, "listed");
                Some(Change::ListDone(kind))
            }
            Ok(Event::Apply(mut o)) => {
                metrics.event(kind, "apply");
                // An object that turned invalid is removed, not kept
                // enforced in its last valid form.
                Some(match sink.accept::<K>(&mut o, &mut reported) {
                    Some(obj) => Change::Apply(obj),
                    None => Change::Delete {
                        kind,
                        key: key(&o, kind),
                    },
                })
            }
            Ok(Event::Delete(o)) => {
                metrics.event(kind, "delete");
                let key = key(&o, kind);
                reporter.1.deleted(api_kind(kind), &key.0, &key.1);
                Some(Change::Delete { kind, key })
            }
            Err(e) => {
                // The watcher recovers by itself (relisting after 410
                // Gone, reconnecting after a dropped connection).
                metrics.source_error(watch_error_label(&e));
                tracing::warn!(kind = kind.as_str(), error = %e, "watch error; retrying");
                None
            }
        };
        if let Some(c) = change {
            if tx.send((at, c)).is_err() {
                return;
            }
        }
    }
}

/// Retry delays after watch errors: from 250 ms (kube's default starts
/// at 800 ms, and a 410 relist is routine, not an outage) doubling to 15 s,
/// plus a random 0-100% so thousands of agents do not hit a recovering API
/// server in step (so at most 30 s); back to the start only once a minute
/// has passed without an error.
///
/// kube's stream backoff resets its backoff on every item that is not an
/// error, and the watcher yields one (`Event::Init`) before each relist
/// attempt: with that reset, an agent facing an unreachable API server
/// relisted every 0.15-0.25 s forever. So this backoff ignores those
/// resets; only the quiet minute of `ResetTimerBackoff` restarts it.
struct WatchBackoff(ResetTimerBackoff<ExponentialBackoff>);

impl WatchBackoff {
    const MIN: Duration = Duration::from_millis(250);
    const MAX: Duration = Duration::from_secs(15);
    const RESET_AFTER: Duration = Duration::from_secs(60);
}

impl Default for WatchBackoff {
    fn default() -> Self {
        let exponential = backon::ExponentialBuilder::default()
            .with_min_delay(WatchBackoff::MIN)
            .with_max_delay(WatchBackoff::MAX)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times();
        WatchBackoff(ResetTimerBackoff::new(
            exponential.into(),
            WatchBackoff::RESET_AFTER,
        ))
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        self.0.next()
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {}
}

/// The invalid-object error for an object the client could not
/// deserialize.
fn undecodable<K: Resource<DynamicType = ()>>(kind: Kind, o: &Slim<K>, error: &str) -> ObjectError {
    let (ns, name) = key(o, kind);
    ObjectError {
        file: None,
        kind: K::kind(&()).into_owned(),
        object: if ns.is_empty() {
            name
        } else {
            format!("{ns}/{name}")
        },
        field: "(object)".into(),
        message: format!("cannot be read: {error}"),
    }
}

fn watch_error_label(e: &watcher::Error) -> &'static str {
    match e {
        watcher::Error::InitialListFailed(_) => "watch_list",
        watcher::Error::WatchStartFailed(_) => "watch_start",
        watcher::Error::WatchError(s) if s.code == 410 => "watch_gone",
        watcher::Error::WatchError(_) => "watch_error",
        watcher::Error::WatchFailed(_) => "watch_failed",
        _ => "watch_other",
    }
}

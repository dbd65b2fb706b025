//! The Kubernetes source: one kube-runtime watcher per kind (Namespaces,
//! Pods, NetworkPolicies) turning API events into [`Change`]s.
//!
//! Objects are reduced to the compiler's model right here (labels, node,
//! hostNetwork, IPs, named ports), so the agent never holds whole API
//! objects: memory stays proportional to what the compiler needs. Listing
//! pages are buffered (as reduced objects) until `InitDone` and sent as one
//! `Replace`, so the index never sees a half-listed kind and objects that
//! vanished while the watch was down (a relist after 410 Gone) are removed.
//! Watch errors are logged and counted; the watcher retries with backoff
//! and the last known state stays enforced meanwhile.

use crate::agent::metrics::Metrics;
use crate::agent::reconcile::{Change, Kind, Stamped};
use crate::agent::AgentError;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Resource};
use policy_compiler::{convert, Object, ObjectError};
use std::fmt::Debug;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Instant;

/// Watches all three kinds until the reconcile loop goes away.
pub async fn run(
    client: kube::Client,
    tx: Sender<Stamped>,
    metrics: Arc<Metrics>,
) -> Result<(), AgentError> {
    let ns = watch_kind(
        Api::<Namespace>::all(client.clone()),
        Kind::Namespace,
        |o| convert::namespace(o, None).map(Object::Namespace),
        tx.clone(),
        metrics.clone(),
    );
    let pods = watch_kind(
        Api::<Pod>::all(client.clone()),
        Kind::Pod,
        |o| convert::pod(o, None).map(Object::Pod),
        tx.clone(),
        metrics.clone(),
    );
    let pols = watch_kind(
        Api::<NetworkPolicy>::all(client),
        Kind::Policy,
        |o| convert::policy(o, None).map(Object::Policy),
        tx,
        metrics,
    );
    futures::join!(ns, pods, pols);
    Ok(())
}

/// The object's key as the index stores it (a namespaced object without a
/// namespace is in `default`, as the converter decides).
fn key<K: Resource>(o: &K, kind: Kind) -> (String, String) {
    let m = o.meta();
    let ns = match kind {
        Kind::Namespace => String::new(),
        _ => m
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".into()),
    };
    (ns, m.name.clone().unwrap_or_default())
}

fn skipped(e: &ObjectError, kind: Kind, metrics: &Metrics) {
    metrics.invalid(kind);
    tracing::warn!(
        kind = %e.kind,
        object = %e.object,
        field = %e.field,
        "invalid object skipped: {e}"
    );
}

/// Watches one kind; returns when the receiver is gone.
async fn watch_kind<K>(
    api: Api<K>,
    kind: Kind,
    reduce: fn(&K) -> Result<Object, ObjectError>,
    tx: Sender<Stamped>,
    metrics: Arc<Metrics>,
) where
    K: Resource + Clone + Debug + serde::de::DeserializeOwned + Send + 'static,
{
    let config = watcher::Config::default().page_size(500);
    let mut stream = watcher(api, config).default_backoff().boxed();
    // Reduced objects of a listing in progress.
    let mut listing: Option<Vec<Object>> = None;
    while let Some(ev) = stream.next().await {
        let at = Instant::now();
        let change = match ev {
            Ok(Event::Init) => {
                metrics.event(kind, "init");
                tracing::debug!(kind = kind.as_str(), "listing");
                listing = Some(Vec::new());
                None
            }
            Ok(Event::InitApply(o)) => {
                match reduce(&o) {
                    Ok(obj) => listing.get_or_insert_with(Vec::new).push(obj),
                    Err(e) => skipped(&e, kind, &metrics),
                }
                None
            }
            Ok(Event::InitDone) => {
                metrics.event(kind, "listed");
                let objects = listing.take().unwrap_or_default();
                tracing::info!(kind = kind.as_str(), objects = objects.len(), "listed");
                Some(Change::Replace {
                    kinds: vec![kind],
                    objects,
                })
            }
            Ok(Event::Apply(o)) => {
                metrics.event(kind, "apply");
                match reduce(&o) {
                    Ok(obj) => Some(Change::Apply(obj)),
                    Err(e) => {
                        skipped(&e, kind, &metrics);
                        Some(Change::Delete {
                            kind,
                            key: key(&o, kind),
                        })
                    }
                }
            }
            Ok(Event::Delete(o)) => {
                metrics.event(kind, "delete");
                Some(Change::Delete {
                    kind,
                    key: key(&o, kind),
                })
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

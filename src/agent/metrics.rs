//! Observability: the agent's Prometheus metrics (prometheus-client) and
//! the HTTP server for `/metrics`, `/healthz` (the process answers) and
//! `/readyz` (initial sync done, the last apply succeeded, no change by
//! someone else awaiting repair, and, with the netlink backend, the table
//! present and not dormant right now).

use crate::agent::backend::Applied;
use crate::agent::reconcile::Kind;
use crate::agent::AgentError;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use policy_compiler::Ruleset;
use prometheus_client::encoding::{text::encode, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabels {
    pub direction: &'static str,
    pub verdict: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    pub policy: String,
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub kind: &'static str,
    pub event: &'static str,
}

/// A live check that the kernel really enforces (the table exists and is
/// not dormant); `Err` says why not.
pub type Probe = Box<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Readiness inputs, set by the reconcile loop.
#[derive(Default)]
pub struct Health {
    synced: AtomicBool,
    last_apply_ok: AtomicBool,
    /// Someone else changed the table and it is not repaired yet.
    tampered: AtomicBool,
    probe: OnceLock<Probe>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("synced", &self.synced)
            .field("last_apply_ok", &self.last_apply_ok)
            .field("tampered", &self.tampered)
            .finish_non_exhaustive()
    }
}

impl Health {
    pub fn set_synced(&self, v: bool) {
        self.synced.store(v, Ordering::Relaxed);
    }
    pub fn set_last_apply_ok(&self, v: bool) {
        self.last_apply_ok.store(v, Ordering::Relaxed);
    }
    pub fn set_tampered(&self, v: bool) {
        self.tampered.store(v, Ordering::Relaxed);
    }
    /// Installs the live enforcement check /readyz runs (once).
    pub fn set_probe(&self, probe: Probe) {
        let _ = self.probe.set(probe);
    }
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Relaxed)
    }
    /// Initial sync done, the last apply succeeded, and no change by
    /// someone else awaits repair (the live probe is not consulted).
    pub fn ready(&self) -> bool {
        self.not_ready_cached().is_none()
    }
    fn not_ready_cached(&self) -> Option<String> {
        if !self.synced() {
            Some("initial sync not done".into())
        } else if !self.last_apply_ok.load(Ordering::Relaxed) {
            Some("last apply failed".into())
        } else if self.tampered.load(Ordering::Relaxed) {
            Some("the table was changed by someone else and is being repaired".into())
        } else {
            None
        }
    }
    /// Why the node is not enforcing, if it is not: the loop's state,
    /// then the live probe of the kernel (a deleted or dormant table
    /// between two drift checks shows here at once).
    pub fn not_ready(&self) -> Option<String> {
        self.not_ready_cached()
            .or_else(|| self.probe.get().and_then(|p| p().err()))
    }
}

pub struct Metrics {
    registry: Registry,
    pub health: Health,
    pub reconciles: Family<ResultLabels, Counter>,
    pub errors: Family<ErrorLabels, Counter>,
    pub latency: Histogram,
    pub compile_seconds: Histogram,
    pub batch_messages: Histogram,
    pub kernel_chains: Gauge,
    pub kernel_rules: Gauge,
    pub kernel_elements: Gauge,
    pub watched: Family<KindLabels, Gauge>,
    pub watch_events: Family<EventLabels, Counter>,
    pub drift_repairs: Counter,
    pub invalid_skipped: Family<KindLabels, Counter>,
    /// 1 while a listing of the kind has held changes back too long.
    pub listing_stalled: Family<KindLabels, Gauge>,
    pub unvalidated_pods: Gauge,
    pub shared_addresses: Gauge,
    /// Packets counted by the kernel on commented pod-chain rules.
    pub rule_packets: Family<VerdictLabels, Counter>,
    /// The same per policy (bounded: see `status::HitExport`).
    pub policy_packets: Family<PolicyLabels, Counter>,
    pub conntrack_revoked: Counter,
    pub conntrack_revoke_failures: Counter,
    pub conntrack_revoke_seconds: Histogram,
    /// Packets the verdict log reported, by verdict (a fixed set).
    pub verdict_logs: Family<VerdictOnlyLabels, Counter>,
    /// Log messages lost or unreadable, by reason (a fixed set).
    pub verdict_log_lost: Family<ReasonLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictOnlyLabels {
    pub verdict: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("nftpol");
        let m = Metrics {
            health: Health::default(),
            reconciles: Family::default(),
            errors: Family::default(),
            // 50 µs .. ~26 s: most updates take 0.1-0.4 ms, so the low
            // buckets must resolve them.
            latency: Histogram::new(exponential_buckets(0.00005, 2.0, 20)),
            compile_seconds: Histogram::new(exponential_buckets(0.00005, 2.0, 20)),
            // 1 .. ~262k messages.
            batch_messages: Histogram::new(exponential_buckets(1.0, 4.0, 10)),
            kernel_chains: Gauge::default(),
            kernel_rules: Gauge::default(),
            kernel_elements: Gauge::default(),
            watched: Family::default(),
            watch_events: Family::default(),
            drift_repairs: Counter::default(),
            invalid_skipped: Family::default(),
            listing_stalled: Family::default(),
            unvalidated_pods: Gauge::default(),
            shared_addresses: Gauge::default(),
            rule_packets: Family::default(),
            policy_packets: Family::default(),
            conntrack_revoked: Counter::default(),
            conntrack_revoke_failures: Counter::default(),
            conntrack_revoke_seconds: Histogram::new(exponential_buckets(0.00005, 2.0, 20)),
            verdict_logs: Family::default(),
            verdict_log_lost: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "verdict_logs",
            "Packets the verdict log reported (one log line each), by verdict: allow, deny, would-deny, admin",
            m.verdict_logs.clone(),
        );
        registry.register(
            "verdict_logs_lost",
            "Verdict log messages lost: overrun (the kernel dropped them, the reader fell behind) or malformed (skipped)",
            m.verdict_log_lost.clone(),
        );
        registry.register(
            "unvalidated_pods",
            "Local pods whose host interface is unknown, so their source addresses are not validated",
            m.unvalidated_pods.clone(),
        );
        registry.register(
            "shared_addresses",
            "Addresses claimed by several live pods (flows to and from them fail closed)",
            m.shared_addresses.clone(),
        );
        registry.register(
            "conntrack_revoked",
            "Connections cut because a new ruleset denies them (conntrack entries deleted; --revoke-denied-connections)",
            m.conntrack_revoked.clone(),
        );
        registry.register(
            "conntrack_revoke_failures",
            "Conntrack dumps that failed and entries that could not be decoded or deleted",
            m.conntrack_revoke_failures.clone(),
        );
        registry.register(
            "conntrack_revoke_seconds",
            "Time to dump the conntrack table, judge its entries and delete the denied ones",
            m.conntrack_revoke_seconds.clone(),
        );
        registry.register(
            "rule_packets",
            "Packets the kernel counted on policy rules and default drops, by direction and verdict",
            m.rule_packets.clone(),
        );
        registry.register(
            "policy_packets",
            "Packets counted on behalf of each policy (its rules, and the drops of pods it isolates), by direction; see --policy-metrics",
            m.policy_packets.clone(),
        );
        registry.register(
            "reconciles",
            "Attempts to program the kernel, by result",
            m.reconciles.clone(),
        );
        registry.register(
            "errors",
            "Errors by kind (netlink, watch, io, ...)",
            m.errors.clone(),
        );
        registry.register(
            "programming_latency_seconds",
            "Time from the first unprogrammed event to the kernel acknowledging the batch",
            m.latency.clone(),
        );
        registry.register(
            "compile_seconds",
            "Time to compile the node's ruleset from the index",
            m.compile_seconds.clone(),
        );
        registry.register(
            "batch_messages",
            "Messages in each batch sent to the kernel",
            m.batch_messages.clone(),
        );
        registry.register(
            "kernel_chains",
            "Chains in the inet nftpol table",
            m.kernel_chains.clone(),
        );
        registry.register(
            "kernel_rules",
            "Rules in the inet nftpol table",
            m.kernel_rules.clone(),
        );
        registry.register(
            "kernel_set_elements",
            "Set and map elements in the inet nftpol table",
            m.kernel_elements.clone(),
        );
        registry.register(
            "watched_objects",
            "Objects known to the agent, by kind",
            m.watched.clone(),
        );
        registry.register(
            "watch_events",
            "Events received from the source, by kind and type",
            m.watch_events.clone(),
        );
        registry.register(
            "drift_repairs",
            "Times the kernel table was found changed outside nftpol and repaired",
            m.drift_repairs.clone(),
        );
        registry.register(
            "listing_stalled",
            "1 while a listing of the kind has changed the index but not completed for over a minute (a relist failing part way): its changes, and all others, wait; the kernel keeps the last complete state",
            m.listing_stalled.clone(),
        );
        registry.register(
            "invalid_objects_skipped",
            "Invalid objects skipped (treated as absent), by kind",
            m.invalid_skipped.clone(),
        );
        Metrics { registry, ..m }
    }

    /// A successful apply; `latency` is `None` for drift repairs, which no
    /// event started.
    pub fn observe_apply(&self, a: &Applied, desired: &Ruleset, latency: Option<Duration>) {
        self.reconciles
            .get_or_create(&ResultLabels { result: "ok" })
            .inc();
        if a.changed {
            if let Some(l) = latency {
                self.latency.observe(l.as_secs_f64());
            }
            self.batch_messages.observe(a.messages as f64);
        }
        self.kernel_chains.set(desired.chains.len() as i64);
        self.kernel_rules.set(desired.rule_count() as i64);
        self.kernel_elements.set(desired.element_count() as i64);
    }

    pub fn rule_hits(&self, direction: &'static str, verdict: &'static str, packets: u64) {
        self.rule_packets
            .get_or_create(&VerdictLabels { direction, verdict })
            .inc_by(packets);
    }

    pub fn policy_hits(&self, policy: &str, direction: &'static str, packets: u64) {
        self.policy_packets
            .get_or_create(&PolicyLabels {
                policy: policy.to_string(),
                direction,
            })
            .inc_by(packets);
    }

    /// Removes a policy's series (its rules left the node, or it lost its
    /// place under the cardinality cap).
    pub fn forget_policy(&self, policy: &str, direction: &'static str) {
        self.policy_packets.remove(&PolicyLabels {
            policy: policy.to_string(),
            direction,
        });
    }

    pub fn observe_error(&self, label: &'static str) {
        self.reconciles
            .get_or_create(&ResultLabels { result: "error" })
            .inc();
        self.errors
            .get_or_create(&ErrorLabels { error: label })
            .inc();
    }

    /// A non-reconcile error (watch, manifest I/O).
    pub fn source_error(&self, label: &'static str) {
        self.errors
            .get_or_create(&ErrorLabels { error: label })
            .inc();
    }

    pub fn set_watched(&self, kind: Kind, n: usize) {
        self.watched
            .get_or_create(&KindLabels {
                kind: kind.as_str(),
            })
            .set(n as i64);
    }

    pub fn event(&self, kind: Kind, event: &'static str) {
        self.watch_events
            .get_or_create(&EventLabels {
                kind: kind.as_str(),
                event,
            })
            .inc();
    }

    pub fn set_listing_stalled(&self, kind: Kind, stalled: bool) {
        self.listing_stalled
            .get_or_create(&KindLabels {
                kind: kind.as_str(),
            })
            .set(i64::from(stalled));
    }

    pub fn invalid(&self, kind: Kind) {
        self.invalid_skipped
            .get_or_create(&KindLabels {
                kind: kind.as_str(),
            })
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Binds `addr` and serves the endpoints in a background task.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
) -> Result<tokio::task::JoinHandle<()>, AgentError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| AgentError::MetricsServer { addr, source })?;
    let local = listener.local_addr().unwrap_or(addr);
    tracing::info!(addr = %local, "serving /metrics, /healthz, /readyz");
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router(metrics)).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    }))
}

pub fn router(metrics: Arc<Metrics>) -> Router {
    let m1 = metrics.clone();
    let m2 = metrics;
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = m1.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        m.encode(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { (StatusCode::OK, "ok\n") }))
        .route(
            "/readyz",
            get(move || {
                let m = m2.clone();
                async move {
                    // The probe does a small blocking netlink request.
                    let why = tokio::task::spawn_blocking(move || m.health.not_ready())
                        .await
                        .unwrap_or_else(|e| Some(format!("readiness check failed: {e}")));
                    match why {
                        None => (StatusCode::OK, "ready\n".to_string()),
                        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
                    }
                }
            }),
        )
}

#[cfg(test)]
mod tests {
    use super::Metrics;

    /// The cumulative count of the latency bucket whose bound is `le`.
    fn bucket(text: &str, le: f64) -> Option<u64> {
        text.lines().find_map(|l| {
            let rest = l.strip_prefix("nftpol_programming_latency_seconds_bucket{le=\"")?;
            let (bound, count) = rest.split_once("\"} ")?;
            let bound: f64 = bound.parse().ok()?;
            ((bound - le).abs() < le * 1e-6).then(|| count.parse().ok())?
        })
    }

    #[test]
    fn latency_buckets_resolve_a_tenth_of_a_millisecond() {
        let m = Metrics::new();
        for s in [0.00004, 0.00015, 0.00035] {
            m.latency.observe(s);
        }
        let text = m.encode();
        assert_eq!(bucket(&text, 0.00005), Some(1), "{text}");
        assert_eq!(bucket(&text, 0.0001), Some(1), "{text}");
        assert_eq!(bucket(&text, 0.0002), Some(2), "{text}");
        assert_eq!(bucket(&text, 0.0004), Some(3), "{text}");
    }
}

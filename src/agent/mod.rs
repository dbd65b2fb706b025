//! `nftpol agent`: the long-running per-node process. A source (kube-rs
//! watchers on the API server, or a watched manifest directory) feeds
//! reduced objects into the reconcile loop, which keeps the kernel's
//! `inet nftpol` table equal to `compile(cluster, node)`; a small HTTP
//! server exposes /metrics, /healthz and /readyz.
//!
//! Threads and tasks: the sources and the HTTP server are tokio tasks; the
//! reconcile loop runs on its own OS thread because compiling and netlink
//! I/O are blocking CPU work that must not stall the watchers (and a plain
//! thread with `recv_timeout` is the simplest correct debounce).

pub mod backend;
pub mod files;
pub mod kernel_watch;
pub mod metrics;
pub mod reconcile;
pub mod slim;
pub mod status;
pub mod verdict_log;
pub mod watch;
pub mod wire_pod;

#[cfg(test)]
mod loop_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod wire_pod_tests;

use crate::agent::backend::{Backend, BackendError};
use crate::agent::metrics::Metrics;
use crate::agent::reconcile::{Change, Reconciler, Settings, Stamped};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `nftpol agent` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct AgentArgs {
    /// The node this agent enforces on (the DaemonSet passes the downward
    /// API's spec.nodeName as NODE_NAME).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    /// Standalone mode: watch this directory of manifests instead of the
    /// Kubernetes API (for nodes without API access, demos and tests).
    #[arg(long = "manifests", short = 'm')]
    pub manifests: Option<PathBuf>,
    /// Kubeconfig file; by default in-cluster config, then $KUBECONFIG or
    /// ~/.kube/config.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Where /metrics, /healthz and /readyz are served.
    #[arg(long, default_value = "0.0.0.0:9464")]
    pub metrics_addr: SocketAddr,
    /// How often the kernel table is read back and repaired if someone
    /// changed it (e.g. `30s`, `500ms`).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub drift_interval: Duration,
    /// Coalescing: an isolated change, and a follow-up to it, goes at once;
    /// the window between batches starts at 1 ms and doubles with each
    /// batch that follows the previous one within --debounce. This much
    /// quiet resets the window, and also ends it early.
    #[arg(long, default_value = "20ms", value_parser = parse_duration)]
    pub debounce: Duration,
    /// The largest coalescing window: while events keep arriving, the
    /// kernel is programmed about this often, and no change waits longer.
    #[arg(long, default_value = "200ms", value_parser = parse_duration)]
    pub max_delay: Duration,
    /// Do not subscribe to the kernel's nftables notifications. By default
    /// the agent hears of every change someone else commits to its table
    /// and repairs it within milliseconds; the drift check every
    /// --drift-interval remains the backstop either way.
    #[arg(long)]
    pub no_kernel_watch: bool,
    /// Keep the ruleset in memory instead of programming the kernel (no
    /// root needed; for demos and tests of the sources).
    #[arg(long, hide = true)]
    pub dry_run: bool,
    /// Turn source validation off. By default every local pod's host
    /// interface (learned from routes, the ARP table and bridge FDBs)
    /// admits only that pod's own source addresses. Turn it off only for
    /// networks that route other sources into a pod's interface; without
    /// it a pod with CAP_NET_RAW can forge another pod's address past
    /// ingress allow-lists and skip its own egress policy.
    #[arg(long)]
    pub no_source_validation: bool,
    /// Let pods send tunnel packets (IPIP, IPv6 in IP, GRE, UDP to ports
    /// 4789, 6081, 8472), for pods that run their own overlays. By default
    /// they are dropped at the pod's interface: the node's own overlay
    /// device would decapsulate one and take the source written inside
    /// unchecked, so with this on, such a pod can forge sources through it.
    #[arg(long)]
    pub allow_pod_tunnels: bool,
    /// A YAML map `NAMESPACE/POD: INTERFACE` of the local pods' host-side
    /// interfaces, re-read at every reconcile, instead of learning them
    /// from the node's routes, ARP table and bridge FDBs.
    #[arg(long, value_name = "FILE")]
    pub pod_interfaces: Option<PathBuf>,
    /// Cut live connections that a policy change denies. By default (as
    /// upstream Kubernetes) a connection opened while policy allowed it
    /// lives on after the policy tightens: `ct state established` is
    /// accepted before any policy rule. With this option, after every
    /// batch that changes the table the agent reads the node's conntrack
    /// table over netlink, judges each connection of a local pod as if it
    /// were opening now under the new rules, and deletes the entries those
    /// rules deny; their next packets are then dropped as new connections.
    /// Costs one conntrack dump per changed batch on the reconcile thread
    /// (up to about half a second for 10,000 connections on a busy
    /// 2-core node with 1,000 isolated pods; docs/BENCHMARKS.md).
    /// A failed dump or deletion is logged and counted
    /// (nftpol_conntrack_revoke_failures_total), never fatal.
    #[arg(long)]
    pub revoke_denied_connections: bool,
    /// How often the kernel's rule counters are read (one rule dump) for
    /// the per-policy hit metrics and the status object.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub counters_interval: Duration,
    /// The least time between two writes of this node's
    /// NodeNetworkPolicyStatus (written when something in it changed).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub status_interval: Duration,
    /// Per-policy hit counts in /metrics (nftpol_policy_packets_total):
    /// `auto` has one series per policy while the node enforces at most
    /// --policy-metrics-max policies and only the totals by direction and
    /// verdict (nftpol_rule_packets_total) beyond; `per-policy` keeps the
    /// first --policy-metrics-max by name and sums the rest as `_other`.
    /// A policy's series goes when its rules leave the node (the policy
    /// was deleted or selects no local pod any more) or it loses its
    /// place under the cap, so policies that come and go never pile up.
    #[arg(long, value_enum, default_value_t = status::PolicyMetrics::Auto)]
    pub policy_metrics: status::PolicyMetrics,
    /// The cardinality bound of --policy-metrics.
    #[arg(long, default_value_t = 100)]
    pub policy_metrics_max: usize,
    /// Do not write the NodeNetworkPolicyStatus object (API source only).
    #[arg(long)]
    pub no_status: bool,
    /// Compile the whole node on every change instead of only the chains,
    /// sets and elements the change feeds. The result is the same (the
    /// whole compile is the reference the incremental one is tested
    /// against); it is slower, and here to compare the two.
    #[arg(long)]
    pub full_compile: bool,
    #[command(flatten)]
    pub log: crate::cli::LogArgs,
    /// Do not read the verdict log. By default the agent reads nflog group
    /// --log-group and prints one line per logged packet (target
    /// `nftpol::verdict`: time, both pods by name and address, protocol,
    /// port, verdict, policy) and counts them (nftpol_verdict_logs_total).
    /// Turn it off to leave the group to another reader (ulogd): only one
    /// socket can bind a group.
    #[arg(long)]
    pub no_verdict_log: bool,
}

/// `30s`, `500ms`, `2m`, `1h30m` (humantime's syntax).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?}: {e}; expected a duration such as 30s or 500ms"))
}

/// What stops the agent. Each variant has a metric label.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("kubernetes client configuration: {0}")]
    KubeConfig(String),
    #[error("kubernetes client: {0}")]
    Kube(#[from] kube::Error),
    #[error("metrics server on {addr}: {source}")]
    MetricsServer {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("watching {}: {source}", path.display())]
    Notify {
        path: PathBuf,
        source: notify::Error,
    },
    #[error(transparent)]
    Manifests(#[from] crate::Error),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("runtime: {0}")]
    Runtime(std::io::Error),
    #[error("the reconcile loop stopped unexpectedly")]
    ReconcilerGone,
}

impl AgentError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            AgentError::KubeConfig(_) => "kubeconfig",
            AgentError::Kube(_) => "kube",
            AgentError::MetricsServer { .. } => "metrics_server",
            AgentError::Notify { .. } => "notify",
            AgentError::Manifests(e) => e.metric_label(),
            AgentError::Backend(e) => e.metric_label(),
            AgentError::Runtime(_) => "runtime",
            AgentError::ReconcilerGone => "reconciler_gone",
        }
    }
}

/// Where the objects come from.
pub enum Source {
    Kube(kube::Client),
    Dir(PathBuf),
}

/// Everything the agent needs besides its source and backend.
#[derive(Clone, Debug)]
pub struct Options {
    pub settings: Settings,
    /// `None`: no HTTP server (tests that only look at the backend).
    pub metrics_addr: Option<SocketAddr>,
    /// Watch the kernel's nftables notifications for changes to our table
    /// made by someone else (netlink backend only).
    pub kernel_watch: bool,
    /// Delete the conntrack entries of connections each new ruleset denies
    /// (netlink backend only).
    pub revoke_denied_connections: bool,
    /// Read this nflog group and print the verdict log (netlink backend
    /// only).
    pub verdict_log: Option<u16>,
}

impl Options {
    pub fn from_args(a: &AgentArgs) -> Options {
        Options {
            settings: Settings {
                node: a.node_name.clone(),
                debounce: a.debounce,
                max_delay: a.max_delay,
                drift_interval: a.drift_interval,
                source_validation: !a.no_source_validation,
                pod_tunnels: a.allow_pod_tunnels,
                discover_interfaces: !a.no_source_validation && a.pod_interfaces.is_none(),
                pod_interfaces_file: a.pod_interfaces.clone(),
                counters_interval: a.counters_interval,
                status_interval: a.status_interval,
                policy_metrics: a.policy_metrics,
                policy_metrics_max: a.policy_metrics_max,
                write_status: !a.no_status,
                incremental: !a.full_compile,
                audit: a.log.audit(),
                ..Settings::new(&a.node_name)
            },
            metrics_addr: Some(a.metrics_addr),
            kernel_watch: !a.no_kernel_watch && !a.dry_run,
            revoke_denied_connections: a.revoke_denied_connections && !a.dry_run,
            verdict_log: (!a.no_verdict_log && !a.dry_run).then_some(a.log.log_group),
        }
    }
}

/// Builds the kube client: the given kubeconfig, else in-cluster, else
/// $KUBECONFIG / ~/.kube/config.
pub async fn kube_client(kubeconfig: Option<&PathBuf>) -> Result<kube::Client, AgentError> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| AgentError::KubeConfig(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|e| AgentError::KubeConfig(format!("{}: {e}", path.display())))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| AgentError::KubeConfig(e.to_string()))?,
    };
    Ok(kube::Client::try_from(config)?)
}

/// Runs the agent until `shutdown` resolves (or a fatal error), then stops
/// the reconcile loop and returns its backend. The kernel table is left as
/// it is: the rules keep enforcing while no agent runs.
pub async fn run_with<B: Backend>(
    source: Source,
    backend: B,
    options: Options,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<B, AgentError> {
    let (tx, rx) = std::sync::mpsc::channel::<Stamped>();
    let mut reconciler = Reconciler::new(options.settings.clone(), backend, metrics.clone());
    let directory = Arc::new(verdict_log::Directory::default());
    if options.verdict_log.is_some() {
        reconciler.set_directory(directory.clone());
    }
    if options.revoke_denied_connections {
        tracing::info!("live connections that a policy change denies will be cut (conntrack)");
        reconciler.set_revoker(Box::new(crate::revoke::ConntrackRevoker::new()));
    }
    // The status object: only with an API server to write it to.
    let inventory = status::Inventory::default();
    let status_writer = match (&source, options.settings.write_status) {
        (Source::Kube(client), true) => {
            let (status_tx, status_rx) = tokio::sync::watch::channel(None);
            reconciler.set_status(inventory.clone(), status_tx);
            Some(tokio::spawn(status::write_status(
                client.clone(),
                options.settings.node.clone(),
                status_rx,
            )))
        }
        _ => None,
    };
    let loop_thread = std::thread::Builder::new()
        .name("nftpol-reconcile".into())
        .spawn(move || reconciler.run(rx))
        .map_err(AgentError::Runtime)?;

    let watcher = if options.kernel_watch {
        Some(kernel_watch::spawn(tx.clone())?)
    } else {
        None
    };
    // Never fatal: the rules log and enforce whether or not anyone reads.
    let verdict_log = options.verdict_log.and_then(|group| {
        verdict_log::VerdictLog::spawn(group, directory.clone(), metrics.clone())
            .inspect_err(|e| tracing::warn!(group, error = %e, "not reading the verdict log"))
            .ok()
    });

    let server = match options.metrics_addr {
        Some(addr) => Some(metrics::serve(addr, metrics.clone()).await?),
        None => None,
    };

    let src_tx = tx.clone();
    let src_metrics = metrics.clone();
    let node = options.settings.node.clone();
    let mut source_task = tokio::spawn(async move {
        match source {
            Source::Kube(client) => watch::run(client, node, src_tx, src_metrics, inventory).await,
            Source::Dir(dir) => files::run(dir, src_tx, src_metrics).await,
        }
    });

    let result = tokio::select! {
        () = shutdown => {
            tracing::info!("shutting down; the nftpol table stays in place");
            Ok(())
        }
        r = &mut source_task => match r {
            Ok(Ok(())) => Err(AgentError::ReconcilerGone),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(AgentError::Runtime(std::io::Error::other(e))),
        },
    };
    source_task.abort();
    if let Some(w) = status_writer {
        w.abort();
    }
    if let Some(s) = server {
        s.abort();
    }
    if let Some(w) = watcher {
        w.stop();
    }
    if let Some(v) = verdict_log {
        v.stop();
    }
    // The loop finishes the batch in flight (batches are atomic anyway).
    let _ = tx.send((Instant::now(), Change::Shutdown));
    drop(tx);
    let backend = tokio::task::spawn_blocking(move || loop_thread.join())
        .await
        .map_err(|e| AgentError::Runtime(std::io::Error::other(e)))?
        .map_err(|_| AgentError::ReconcilerGone)?;
    result.map(|()| backend.into_backend())
}

/// Resolves on SIGTERM or SIGINT.
pub async fn termination() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the agent");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// glibc gives each thread that allocates its own arena (up to 8 per
/// core), which costs a long-running agent a few MiB of resident memory
/// for nothing: its threads mostly hand data to one another. Two arenas
/// measured 3 MiB less RSS at 20k pods. `MALLOC_ARENA_MAX` still wins
/// when set.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only tunes the allocator; called before the
        // agent starts its threads.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

/// glibc's default for both thresholds below, restored after the listing.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const GLIBC_THRESHOLD: libc::c_int = 128 * 1024;

/// While the lists arrive, kube-client reads each page (500 pods, about
/// 2.6 MB at 150,000 served pods) into buffers of a few MiB that are
/// freed once it is decoded. glibc serves such blocks from fresh `mmap`s,
/// or trims them off the top of the heap when freed, so the kernel faults
/// in and zeroes every page of every buffer again: at 150,000 pods about
/// 0.8 s of the agent's start (docs/BENCHMARKS.md). Buffers up to 16 MiB
/// now come from the heap and 32 MiB of free top is kept, until the
/// listing of pods is done ([`release_free_memory`]). Environment
/// settings of glibc's allocator still win.
fn keep_page_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if !glibc_thresholds_set_by_env() {
        // SAFETY: mallopt only tunes the allocator.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 16 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 32 << 20);
        }
    }
}

/// Whether the operator tuned glibc's thresholds in the environment:
/// then neither the listing's thresholds nor the restore touch them.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn glibc_thresholds_set_by_env() -> bool {
    [
        "GLIBC_TUNABLES",
        "MALLOC_MMAP_THRESHOLD_",
        "MALLOC_TRIM_THRESHOLD_",
    ]
    .iter()
    .any(|v| std::env::var_os(v).is_some())
}

/// Hands the memory glibc keeps on its free lists back to the kernel.
/// A listing of every pod frees much of what it allocated (page bodies,
/// the buffered listing), and glibc keeps freed memory below the top of
/// each arena: at 150,000 pods this returned about 8 MiB of the resident
/// memory after the initial sync (docs/BENCHMARKS.md). Called after a
/// listing of pods has gone into the index. The page buffers'
/// thresholds ([`keep_page_buffers`]) go back to glibc's defaults first,
/// so what is freed later goes back to the kernel as before.
pub(crate) fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator; malloc_trim only returns
    // free pages of the allocator's own heaps to the kernel; no live
    // allocation is touched.
    unsafe {
        if !glibc_thresholds_set_by_env() {
            libc::mallopt(libc::M_MMAP_THRESHOLD, GLIBC_THRESHOLD);
            libc::mallopt(libc::M_TRIM_THRESHOLD, GLIBC_THRESHOLD);
        }
        libc::malloc_trim(0);
    }
}

/// `nftpol agent`: returns the process exit status.
pub fn run(args: &AgentArgs) -> Result<i32, AgentError> {
    limit_malloc_arenas();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(AgentError::Runtime)?;
    rt.block_on(async {
        let metrics = Arc::new(Metrics::new());
        let source = match &args.manifests {
            Some(dir) => Source::Dir(dir.clone()),
            None => {
                keep_page_buffers();
                Source::Kube(kube_client(args.kubeconfig.as_ref()).await?)
            }
        };
        let options = Options::from_args(args);
        tracing::info!(
            node = %args.node_name,
            source = match &args.manifests { Some(_) => "manifests", None => "kubernetes" },
            metrics_addr = %args.metrics_addr,
            "nftpol agent starting"
        );
        if args.dry_run {
            run_with(
                source,
                backend::MemoryBackend::default(),
                options,
                metrics,
                termination(),
            )
            .await?;
        } else {
            let backend = backend::NetlinkBackend::new()?;
            metrics
                .health
                .set_probe(Box::new(crate::netlink::enforcement_state));
            run_with(source, backend, options, metrics, termination()).await?;
        }
        Ok(0)
    })
}

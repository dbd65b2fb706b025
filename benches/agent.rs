//! Agent benchmark: on a fake API server holding a large
//! synthetic cluster (`nftpol_test_support::synth::Shape::LARGE`: 20k pods, 2k
//! namespaces, 5k policies, 100 nodes), the time from one event reaching
//! the API server to the node's batch being acknowledged, for three kinds
//! of event (a local pod's label change, a new policy, a peer pod added),
//! the bytes the agent receives, and the resident memory of the agent
//! process.
//!
//! `cargo bench --bench agent` (env `NFTPOL_BENCH_EVENTS`, default 300;
//! `NFTPOL_BENCH_ROUNDS`, default 2; `NFTPOL_BENCH_MODES`, default
//! `incremental,full`). Each backend is measured with the
//! incremental compile and with `--full-compile` (the whole node per
//! event), alternating in rounds so the machine's noise hits both alike.
//! The in-process part uses the in-memory backend; the memory part runs
//! the real `nftpol agent` binary against the same fake server (as root
//! programming the scratch namespace's kernel, else `--dry-run`) and reads
//! its VmRSS / VmHWM. Printed as Markdown for docs/BENCHMARKS.md.
//!
//! `NFTPOL_BENCH_MODES=commit` (root) times the kernel's commit alone
//! for the same events and for probe batches of one shape each (see
//! [`commit`]); alone it skips the rest.
//!
//! `NFTPOL_BENCH_SHAPE=limits` runs the Kubernetes scalability limits
//! instead (`Shape::LIMITS`: 150k pods, 10k namespaces, 20k policies, 5k
//! nodes, 110 pods on the measured node), with every pod served as the
//! API server serves a Deployment's pod (`fakeapi::as_served_pod`, about
//! 5 KB), so the wire bytes and the decoding cost are a real cluster's.

use nftpol::agent::backend::{Applied, Backend, BackendError, MemoryBackend, NetlinkBackend};
use nftpol::agent::metrics::Metrics;
use nftpol::agent::reconcile::Settings;
use nftpol::agent::{run_with, Options, Source};
use nftpol_test_support::fakeapi::{self, FakeApi};
use nftpol_test_support::synth::{self, Shape};
use nftpol_test_support::Netns;
use policy_compiler::diff::Touched;
use policy_compiler::Ruleset;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

const NODE: &str = "node-007";

/// The cluster measured, and how the fake serves its pods.
#[derive(Clone, Copy)]
struct Bench {
    shape: Shape,
    /// Pods dressed as the API server serves them.
    served: bool,
}

impl Bench {
    fn from_env() -> Bench {
        match std::env::var("NFTPOL_BENCH_SHAPE").as_deref() {
            Ok("limits") => Bench {
                shape: Shape::LIMITS,
                served: true,
            },
            _ => Bench {
                shape: Shape::LARGE,
                served: false,
            },
        }
    }

    /// The synthetic cluster; at the limits, the measured node holds 110
    /// pods (the kubelet's default maximum), not the average 30.
    fn cluster(self) -> policy_compiler::Cluster {
        let mut c = synth::cluster(self.shape);
        if self.served {
            let mut on_node = c
                .pods()
                .filter(|p| p.node_name.as_deref() == Some(NODE))
                .count();
            let moved: Vec<_> = c
                .pods()
                .filter(|p| p.node_name.as_deref() != Some(NODE))
                .step_by(997)
                .take(110usize.saturating_sub(on_node))
                .cloned()
                .collect();
            for mut p in moved {
                p.node_name = Some(NODE.into());
                c.apply_pod(p);
                on_node += 1;
            }
            assert_eq!(on_node, 110);
        }
        c
    }

    /// An object as the fake serves it.
    fn api(self, obj: Value) -> Value {
        if self.served && obj["kind"] == "Pod" {
            fakeapi::as_served_pod(obj)
        } else {
            obj
        }
    }

    /// A fresh fake holding `model`, with no watch history to replay.
    async fn fake(self, model: &policy_compiler::Cluster) -> FakeApi {
        use policy_compiler::Object;
        let t0 = Instant::now();
        let fake = FakeApi::start().await.expect("fake api");
        let objects = model
            .namespaces()
            .cloned()
            .map(Object::Namespace)
            .chain(model.pods().cloned().map(Object::Pod))
            .chain(model.policies().cloned().map(Object::Policy));
        for o in objects {
            fake.apply(self.api(fakeapi::to_api(&o))).expect("load");
        }
        fake.expire_watches();
        println!(
            "fake cluster: {} namespaces, {} pods, {} policies loaded in {}",
            model.namespaces().count(),
            model.pod_count(),
            model.policy_count(),
            ms(t0.elapsed())
        );
        fake
    }
}

/// Payload bytes the fake has served, over every kind.
fn served_bytes(fake: &FakeApi) -> (u64, u64) {
    fakeapi::ApiKind::ALL
        .into_iter()
        .map(|k| fake.sent(k))
        .fold((0, 0), |(l, w), s| (l + s.list_bytes, w + s.watch_bytes))
}

/// One batch acknowledged: when, and what the backend's part (diff,
/// encode, send, kernel) took.
#[derive(Clone, Copy, Debug)]
struct Ack {
    at: Instant,
    backend: Duration,
    /// CPU time of the thread over the backend's part, and whether it was
    /// preempted meanwhile: tells the kernel's work from waiting for a core.
    cpu: Duration,
    preempted: bool,
}

/// CPU time of the calling thread and its involuntary context switches
/// so far.
fn thread_usage() -> (Duration, i64) {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: both calls only write the structs passed, which outlive them.
    let ru = unsafe {
        libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts);
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &mut ru);
        ru
    };
    (
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32),
        ru.ru_nivcsw,
    )
}

/// Reports the instant each batch was acknowledged, and how long the
/// backend's part took (diff, encode, send, kernel).
struct Timed<B> {
    inner: B,
    acks: UnboundedSender<Ack>,
}

impl<B: Backend> Timed<B> {
    fn timed(
        &mut self,
        f: impl FnOnce(&mut B) -> Result<Applied, BackendError>,
    ) -> Result<Applied, BackendError> {
        let (cpu0, switches0) = thread_usage();
        let t0 = Instant::now();
        let r = f(&mut self.inner);
        if matches!(r, Ok(Applied { changed: true, .. })) {
            let now = Instant::now();
            let (cpu1, switches1) = thread_usage();
            let _ = self.acks.send(Ack {
                at: now,
                backend: now - t0,
                cpu: cpu1.saturating_sub(cpu0),
                preempted: switches1 > switches0,
            });
        }
        r
    }
}

impl<B: Backend> Backend for Timed<B> {
    fn apply(&mut self, desired: &Ruleset) -> Result<Applied, BackendError> {
        self.timed(|b| b.apply(desired))
    }

    fn apply_touched(
        &mut self,
        desired: &Ruleset,
        touched: &Touched,
    ) -> Result<Applied, BackendError> {
        self.timed(|b| b.apply_touched(desired, touched))
    }
}

/// What the agent's "kernel table updated" log says of one batch: the
/// latency from the watcher's stamp to the ack, and the compile's part.
#[derive(Clone, Copy, Debug, Default)]
struct Logged {
    latency_ms: f64,
    compile_ms: f64,
}

/// Hands the bench the timings of every batch the agent logs, so each
/// event's latency splits into the watch path (API server write to the
/// watcher's stamp), the loop (index update, wake-up), the compile and the
/// backend without instrumenting the product beyond its own log line.
struct Capture(std::sync::mpsc::Sender<Logged>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
    fn on_event(&self, e: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct V(Logged, bool);
        impl tracing::field::Visit for V {
            fn record_f64(&mut self, f: &tracing::field::Field, v: f64) {
                match f.name() {
                    "latency_ms" => self.0.latency_ms = v,
                    "compile_ms" => self.0.compile_ms = v,
                    _ => {}
                }
            }
            fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                if f.name() == "message" && format!("{v:?}") == "kernel table updated" {
                    self.1 = true;
                }
            }
        }
        let mut v = V(Logged::default(), false);
        e.record(&mut v);
        if v.1 {
            let _ = self.0.send(v.0);
        }
    }
}

/// Latencies of one (backend, compile mode), over all rounds.
#[derive(Default)]
struct Samples {
    by_kind: std::collections::BTreeMap<&'static str, Vec<Duration>>,
    in_backend: Vec<Duration>,
    /// CPU time of the backend's part, per event.
    backend_cpu: Vec<Duration>,
    /// The backend's part of the events whose thread was not preempted
    /// during it.
    backend_unpreempted: Vec<Duration>,
    /// Per event: API server write -> the watcher's stamp.
    watch: Vec<Duration>,
    /// Per event: stamp -> ack, less the compile and the backend.
    in_loop: Vec<Duration>,
    compile: Vec<Duration>,
    initial: Vec<Duration>,
    /// Watch bytes received per event kind: (bytes, events).
    wire: std::collections::BTreeMap<&'static str, (u64, u64)>,
    /// List bytes of the initial sync.
    listed: u64,
    missed: usize,
}

fn pod(ns: &str, name: &str, labels: Value, node: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]},
        "status": {"podIP": ip, "podIPs": [{"ip": ip}]}})
}

fn policy(ns: &str, name: &str, target: Value, from: Value, port: u16) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"podSelector": {"matchLabels": target},
            "ingress": [{"from": [{"podSelector": {"matchLabels": from}}],
                "ports": [{"protocol": "TCP", "port": port}]}]}})
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// How long the initial list and first batch may take: at the limits
/// (150k pods, about 750 MB listed) on a loaded machine this is tens of
/// seconds, far beyond an event's wait.
const INITIAL_WAIT: Duration = Duration::from_secs(600);

async fn ack(acks: &mut UnboundedReceiver<Ack>) -> Option<Ack> {
    ack_within(acks, Duration::from_secs(10)).await
}

async fn ack_within(acks: &mut UnboundedReceiver<Ack>, wait: Duration) -> Option<Ack> {
    tokio::time::timeout(wait, acks.recv()).await.ok().flatten()
}

/// The local pod the events revolve around, and its labels.
/// The node's pods; the first is the one most events revolve around.
fn local_pods(model: &policy_compiler::Cluster) -> Vec<policy_compiler::model::Pod> {
    let v: Vec<_> = model
        .pods()
        .filter(|p| p.node_name.as_deref() == Some(NODE) && p.is_policy_pod())
        .cloned()
        .collect();
    assert!(!v.is_empty(), "the synthetic cluster has pods on node-007");
    v
}

fn with_labels(p: &policy_compiler::model::Pod, extra: &[(&str, &str)]) -> Value {
    let mut p = p.clone();
    for (k, v) in extra {
        p.labels.insert(k.to_string(), v.to_string());
    }
    fakeapi::to_api(&policy_compiler::Object::Pod(p))
}

/// The `i`th event of kind `i % 3`, as the fake serves it.
fn event(bench: Bench, i: usize, locals: &[policy_compiler::model::Pod]) -> (&'static str, Value) {
    let (kind, obj) = raw_event(i, locals);
    (kind, bench.api(obj))
}

fn raw_event(i: usize, locals: &[policy_compiler::model::Pod]) -> (&'static str, Value) {
    let t = &locals[0];
    match i % 3 {
        0 => (
            "pod label change",
            with_labels(
                t,
                &[
                    ("bench", "p"),
                    ("flip", if (i / 3) % 2 == 0 { "on" } else { "off" }),
                ],
            ),
        ),
        1 => {
            // New policies go round the node's pods: one pod isolated by
            // hundreds of policies is not the case measured here.
            let p = &locals[(i / 3) % locals.len()];
            (
                "new policy",
                policy(
                    &p.namespace,
                    &format!("bn-{i}"),
                    json!(p.labels),
                    json!({"app": format!("app-{}", i % 5)}),
                    10_000 + (i % 50_000) as u16,
                ),
            )
        }
        _ => (
            "peer pod added",
            pod(
                &t.namespace,
                &format!("bench-peer-{i}"),
                json!({"role": "bench-peer"}),
                "node-b",
                &format!("10.200.{}.{}", (i / 250) % 250, i % 250 + 1),
            ),
        ),
    }
}

/// As root, moves the calling thread (and so every thread it creates
/// later: the runtime, the reconcile loop) into a fresh network namespace,
/// so the netlink backend programs a scratch kernel table.
fn enter_scratch_netns() -> Option<Netns> {
    if nftpol_test_support::privilege::missing_privilege().is_some() {
        return None;
    }
    let ns = Netns::try_create("bench").ok()?;
    ns.enter().ok()?;
    Some(ns)
}

fn main() {
    if !nftpol_test_support::run_by_cargo_bench() {
        eprintln!(
            "root and minutes of work: run with `cargo bench --bench {}`",
            env!("CARGO_CRATE_NAME")
        );
        return;
    }
    let (logged_tx, logged) = std::sync::mpsc::channel();
    {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        use tracing_subscriber::Layer;
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_filter(filter),
            )
            .with(Capture(logged_tx).with_filter(tracing_subscriber::filter::LevelFilter::INFO))
            .init();
    }
    let logged = std::sync::Mutex::new(logged);
    let netns = enter_scratch_netns();
    let events: usize = std::env::var("NFTPOL_BENCH_EVENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let bench = Bench::from_env();
        let model = bench.cluster();
        let locals = local_pods(&model);
        println!("measured node {NODE}: {} policy pods", locals.len());
        // Every run starts from a fresh fake holding the same cluster.
        let fresh = || bench.fake(&model);
        let rounds: usize = std::env::var("NFTPOL_BENCH_ROUNDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(2);
        let per_round = events.div_ceil(rounds.max(1));
        let wanted =
            std::env::var("NFTPOL_BENCH_MODES").unwrap_or_else(|_| "incremental,full".into());
        let modes: Vec<(&str, bool)> = [("incremental", true), ("full compile", false)]
            .into_iter()
            .filter(|(m, _)| wanted.split(',').any(|w| m.starts_with(w.trim())))
            .collect();
        if wanted.split(',').any(|w| w.trim() == "commit") {
            match &netns {
                Some(_) => commit::run(&model, events),
                None => println!("commit probe not run: needs root (a scratch netns)\n"),
            }
            if modes.is_empty() {
                return;
            }
        }
        let mut results: std::collections::BTreeMap<(&str, &str), Samples> = Default::default();
        for round in 0..rounds {
            for &(mode, incremental) in &modes {
                let base = round * per_round;
                match &netns {
                    Some(_) => match NetlinkBackend::new() {
                        Ok(nl) => {
                            let s = results.entry(("netlink", mode)).or_default();
                            let fake = fresh().await;
                            let run = Run {
                                bench,
                                fake: &fake,
                                locals: &locals,
                            };
                            measure(run, nl, per_round, base, incremental, s, &logged).await
                        }
                        Err(e) => println!("netlink backend not measured: {e}\n"),
                    },
                    None if round == 0 && incremental => {
                        println!("netlink backend not measured: needs root (a scratch netns)\n")
                    }
                    None => {}
                }
                let s = results.entry(("in-memory", mode)).or_default();
                let fake = fresh().await;
                let run = Run {
                    bench,
                    fake: &fake,
                    locals: &locals,
                };
                measure(
                    run,
                    MemoryBackend::default(),
                    per_round,
                    base,
                    incremental,
                    s,
                    &logged,
                )
                .await;
            }
        }
        if let Some(ns) = &netns {
            println!("netlink backend: kernel table in netns {}", ns.name());
        }
        report(&results);
        let fake = fresh().await;
        let run = Run {
            bench,
            fake: &fake,
            locals: &locals,
        };
        rss(run, netns.is_some(), events.min(150)).await;
    });
}

/// One measured run: the cluster, its fake and the measured node's pods.
#[derive(Clone, Copy)]
struct Run<'a> {
    bench: Bench,
    fake: &'a FakeApi,
    locals: &'a [policy_compiler::model::Pod],
}

/// Runs an in-process agent on `backend` and records the latencies.
#[allow(clippy::too_many_arguments)]
async fn measure<B: Backend>(
    Run {
        bench,
        fake,
        locals,
    }: Run<'_>,
    backend: B,
    events: usize,
    base: usize,
    incremental: bool,
    out: &mut Samples,
    logged: &std::sync::Mutex<std::sync::mpsc::Receiver<Logged>>,
) {
    let drain = || -> Option<Logged> {
        let rx = logged.lock().ok()?;
        rx.try_iter().last()
    };
    let t = &locals[0];
    let (acks_tx, mut acks) = unbounded_channel();
    let backend = Timed {
        inner: backend,
        acks: acks_tx,
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let started = Instant::now();
    let agent = tokio::spawn(run_with(
        Source::Kube(fake.client()),
        backend,
        Options {
            settings: Settings {
                drift_interval: Duration::from_secs(3600),
                incremental,
                ..Settings::new(NODE)
            },
            metrics_addr: None,
            kernel_watch: false,
            revoke_denied_connections: false,
            verdict_log: None,
        },
        Arc::new(Metrics::new()),
        async move {
            let _ = stopped.await;
        },
    ));
    let Some(Ack { at: first, .. }) = ack_within(&mut acks, INITIAL_WAIT).await else {
        // Reported as missed events, not a panic: the rest of the run
        // (the other backends, the agent process) still measures.
        println!(
            "no initial batch within {} s: this run's events not measured",
            INITIAL_WAIT.as_secs()
        );
        out.missed += events;
        let _ = stop.send(());
        let _ = agent.await;
        return;
    };
    out.initial.push(first - started);
    out.listed = served_bytes(fake).0;
    // The policies the events play against.
    for obj in [
        with_labels(t, &[("bench", "p"), ("flip", "off")]),
        policy(
            &t.namespace,
            "bench-peers",
            json!({"bench": "p"}),
            json!({"role": "bench-peer"}),
            9999,
        ),
        policy(
            &t.namespace,
            "bench-flip",
            json!({"flip": "on"}),
            json!({"app": "app-0"}),
            7777,
        ),
    ] {
        fake.apply(bench.api(obj)).expect("apply");
        // The relabel alone changes no ruleset: no batch to wait for.
        let _ = tokio::time::timeout(Duration::from_secs(2), acks.recv()).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    for i in 0..events {
        let (kind, obj) = event(bench, base + i, locals);
        drain();
        let wire = served_bytes(fake).1;
        let sent = Instant::now();
        fake.apply(obj).expect("apply");
        let acked = ack(&mut acks).await;
        // Quiet time, so every event is a single event (and its batch's
        // log line is out).
        tokio::time::sleep(Duration::from_millis(30)).await;
        match acked {
            Some(Ack {
                at,
                backend,
                cpu,
                preempted,
            }) => {
                let total = at - sent;
                out.by_kind.entry(kind).or_default().push(total);
                out.in_backend.push(backend);
                out.backend_cpu.push(cpu);
                if !preempted {
                    out.backend_unpreempted.push(backend);
                }
                if let Some(l) = drain() {
                    let since_stamp = Duration::from_secs_f64(l.latency_ms / 1000.0);
                    let compile = Duration::from_secs_f64(l.compile_ms / 1000.0);
                    out.watch.push(total.saturating_sub(since_stamp));
                    out.compile.push(compile);
                    out.in_loop
                        .push(since_stamp.saturating_sub(compile).saturating_sub(backend));
                }
                let w = out.wire.entry(kind).or_default();
                w.0 += served_bytes(fake).1 - wire;
                w.1 += 1;
            }
            None => out.missed += 1,
        }
    }
    let _ = stop.send(());
    let _ = agent.await;
}

/// Prints one Markdown table of every (backend, mode), side by side.
fn report(results: &std::collections::BTreeMap<(&str, &str), Samples>) {
    println!();
    println!("| backend | compile | event | n | p50 | p99 | max |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for ((backend, mode), s) in results {
        let mut all = Vec::new();
        for (kind, v) in &s.by_kind {
            let mut v = v.clone();
            v.sort();
            println!(
                "| {backend} | {mode} | {kind} | {} | {} | {} | {} |",
                v.len(),
                ms(pct(&v, 0.5)),
                ms(pct(&v, 0.99)),
                ms(*v.last().unwrap_or(&Duration::ZERO))
            );
            all.extend(v);
        }
        all.sort();
        println!(
            "| {backend} | {mode} | **all** | {} | **{}** | **{}** | {} |",
            all.len(),
            ms(pct(&all, 0.5)),
            ms(pct(&all, 0.99)),
            ms(*all.last().unwrap_or(&Duration::ZERO))
        );
    }
    println!();
    println!("Where each event's time goes (p50 / p99 over the events):");
    println!();
    println!("| backend | compile | watch path | loop | compile | backend |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for ((backend, mode), s) in results {
        let cell = |v: &[Duration]| {
            let mut v = v.to_vec();
            v.sort();
            format!("{} / {}", ms(pct(&v, 0.5)), ms(pct(&v, 0.99)))
        };
        println!(
            "| {backend} | {mode} | {} | {} | {} | {} |",
            cell(&s.watch),
            cell(&s.in_loop),
            cell(&s.compile),
            cell(&s.in_backend)
        );
    }
    println!();
    for ((backend, mode), s) in results {
        let mut b = s.in_backend.clone();
        b.sort();
        let initial: Vec<String> = s.initial.iter().map(|d| ms(*d)).collect();
        let wire: Vec<String> = s
            .wire
            .iter()
            .map(|(k, (b, n))| format!("{k} {} B", b / (*n).max(1)))
            .collect();
        println!(
            "{backend}, {mode}: in the backend (diff, encode, send, kernel ack) p50 {}, p99 {}; initial list + first batch {} ({:.1} MB listed); watch bytes per event: {}{}{}",
            ms(pct(&b, 0.5)),
            ms(pct(&b, 0.99)),
            initial.join(", "),
            s.listed as f64 / 1e6,
            wire.join(", "),
            {
                let (mut cpu, mut calm) = (s.backend_cpu.clone(), s.backend_unpreempted.clone());
                cpu.sort();
                calm.sort();
                format!(
                    "; the backend's CPU time p50 {}, p99 {}; its thread preempted during {} of {} events, the others' backend p99 {}",
                    ms(pct(&cpu, 0.5)),
                    ms(pct(&cpu, 0.99)),
                    s.in_backend.len() - calm.len(),
                    s.in_backend.len(),
                    ms(pct(&calm, 0.99))
                )
            },
            if s.missed > 0 {
                format!("; {} events produced no batch within 10 s", s.missed)
            } else {
                String::new()
            }
        );
    }
    println!();
}

/// Runs the agent binary against the fake and reports its memory; with a
/// kernel (root, in the scratch namespace) it programs the kernel, so
/// ready is the first batch acknowledged.
async fn rss(
    Run {
        bench,
        fake,
        locals,
    }: Run<'_>,
    kernel: bool,
    events: usize,
) {
    let dir = std::env::temp_dir().join(format!("nftpol-bench-agent-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let kubeconfig = dir.join("kubeconfig");
    let cfg = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: \"http://{}\"}}\n\
users:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context: {{cluster: fake, user: fake}}\n\
current-context: fake\n",
        fake.addr
    );
    std::fs::write(&kubeconfig, cfg).expect("kubeconfig");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let started = Instant::now();
    let mut agent = tokio::process::Command::new(env!("CARGO_BIN_EXE_nftpol"));
    agent.arg("agent");
    if !kernel {
        agent.arg("--dry-run");
    }
    let mut child = agent
        .args(["--node-name", NODE, "--kubeconfig"])
        .arg(&kubeconfig)
        .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .expect("spawn nftpol agent");
    let pid = child.id().unwrap_or(0);
    let own_cpu = cpu_seconds("self");
    let ready = loop {
        if started.elapsed() > INITIAL_WAIT {
            break false;
        }
        if http_get(port, "/readyz").await.starts_with("HTTP/1.0 200") {
            break true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let ready_after = started.elapsed();
    let field = |name: &str| {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with(name))
            .map(|l| l[name.len()..].trim().to_string())
            .unwrap_or_else(|| "?".into())
    };
    let (rss_ready, hwm_ready) = (field("VmRSS:"), field("VmHWM:"));
    // Who did the work of the start: the agent, or this process serving
    // it the lists (and whatever else the bench's threads do meanwhile).
    let agent_cpu = cpu_seconds(&pid.to_string());
    let server_cpu = cpu_seconds("self") - own_cpu;
    for i in 0..events {
        let (_, obj) = event(bench, 200_000 + i, locals);
        let _ = fake.apply(obj);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!(
        "agent process (`nftpol agent{}`): {} {} after start (CPU: agent {agent_cpu:.1} s, fake API server's process {server_cpu:.1} s; VmRSS {rss_ready}, VmHWM {hwm_ready}); after {events} more events: VmRSS {}, VmHWM (peak) {}",
        if kernel { "`, kernel" } else { " --dry-run`" },
        if ready { "ready" } else { "NOT ready" },
        ms(ready_after),
        field("VmRSS:"),
        field("VmHWM:")
    );
    // SIGTERM: the agent exits cleanly.
    // SAFETY: kill(2) on our own child's pid has no memory effects.
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
    let st = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    println!("exit after SIGTERM: {st:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// User plus system CPU time of a process (`self` or a pid), in seconds.
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses and may
    // hold spaces: utime and stime are the 12th and 13th of them.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let ticks: u64 = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|t| t.parse::<u64>().ok())
        .sum();
    // SAFETY: sysconf reads a constant of the system; no memory is shared.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
    ticks as f64 / hz as f64
}

async fn http_get(port: u16, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return String::new();
    };
    if s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .is_err()
    {
        return String::new();
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    out
}

/// The bench's events with the kernel's commit alone timed, next to
/// probe batches of one shape each (`NFTPOL_BENCH_MODES=commit`, root).
/// The same incremental engine as the agent, no API server: every event
/// is replayed into the cluster model, its batch built from the touched
/// objects as the agent builds it, and sent on a netlink session in the
/// scratch namespace; the time is `send` to the END ack. Each event's
/// batch is then undone and sent again with the other ack mode (one ack
/// per message, END only, alternating), so the two modes are compared on
/// identical batches. Between events, probes that each trigger one part
/// of the kernel's commit: an element into a plain address set, an
/// element into a verdict map (a `jump`), a rule with a verdict and a
/// rule without one (`counter` alone) in a chain nothing jumps to.
mod commit {
    use super::{local_pods, pct, raw_event, thread_usage, with_labels, NODE};
    use nftpol::netlink::Session;
    use policy_compiler::diff::{self, Op, Transaction};
    use policy_compiler::incr::{Incremental, ObjectKey};
    use policy_compiler::ir::{Element, Match, Rule, Ruleset, SetKind, Verdict};
    use policy_compiler::{Cluster, NodeNet, Object};
    use serde_json::{json, Value};
    use std::collections::BTreeMap;
    use std::net::{IpAddr, Ipv4Addr};
    use std::time::Duration;

    /// The agent's model object of one API object the bench serves.
    fn change(eng: &mut Incremental, c: &mut Cluster, obj: Value) {
        let kind = obj["kind"].as_str().unwrap_or_default().to_string();
        fn bad<T>(kind: &str, e: &dyn std::fmt::Display) -> T {
            panic!("bench object {kind}: {e}")
        }
        let (key, obj) = match kind.as_str() {
            "Pod" => {
                let api = serde_json::from_value(obj).unwrap_or_else(|e| bad(&kind, &e));
                let p =
                    policy_compiler::convert::pod(&api, None).unwrap_or_else(|e| bad(&kind, &e));
                let key = ObjectKey::Pod {
                    namespace: p.namespace.clone(),
                    name: p.name.clone(),
                };
                (key, Object::Pod(p))
            }
            _ => {
                let api = serde_json::from_value(obj).unwrap_or_else(|e| bad(&kind, &e));
                let p =
                    policy_compiler::convert::policy(&api, None).unwrap_or_else(|e| bad(&kind, &e));
                let key = ObjectKey::Policy {
                    namespace: p.namespace.clone(),
                    name: p.name.clone(),
                };
                (key, Object::Policy(p))
            }
        };
        let before = eng.mark(c, &key);
        if c.apply(obj) {
            eng.note(before);
            let after = eng.mark(c, &key);
            eng.note(after);
        }
    }

    #[derive(Clone, Copy)]
    struct Sample {
        wall: Duration,
        cpu: Duration,
        preempted: bool,
    }

    struct Kernel {
        s: Session,
        known: Ruleset,
    }

    impl Kernel {
        /// Sends `tx`: the kernel's part (send to END ack), the thread's
        /// CPU time meanwhile, and whether it was preempted.
        fn send(&mut self, tx: &Transaction, ack_each: bool) -> Sample {
            self.s.set_ack_each(ack_each);
            let (cpu0, sw0) = thread_usage();
            let r = self
                .s
                .send(tx)
                .unwrap_or_else(|e| panic!("batch {}: {e}", tx.summary()));
            let (cpu1, sw1) = thread_usage();
            Sample {
                wall: r.kernel,
                cpu: cpu1.saturating_sub(cpu0),
                preempted: sw1 > sw0,
            }
        }

        /// The engine's pending update, as the agent sends it.
        fn update(&mut self, eng: &mut Incremental, c: &Cluster) -> (Transaction, Transaction) {
            let touched = eng.update(c, &NodeNet::default());
            let tx = diff::diff_touched(eng.ruleset(), &self.known, &touched);
            let undo = diff::diff_touched(&self.known, eng.ruleset(), &touched);
            diff::copy_touched(&mut self.known, eng.ruleset(), &touched);
            (tx, undo)
        }
    }

    /// Sets the calling thread's nice value; whether it took.
    fn renice(nice: i32) -> bool {
        // SAFETY: gettid and setpriority touch no memory of ours.
        unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, nice) == 0
        }
    }

    /// What the kernel's validation of the table walks: from every base
    /// chain, each rule of each chain reached through a jump, a goto or a
    /// verdict map's element, once per path (the kernel keeps no record
    /// of chains already validated), counted by chain prefix.
    fn walk(rs: &Ruleset) {
        fn visit(rs: &Ruleset, chain: &str, depth: usize, out: &mut BTreeMap<String, usize>) {
            let Some(c) = rs.chains.get(chain) else {
                return;
            };
            let prefix = match chain.split_once('_') {
                Some((p, _)) => format!("{p}_"),
                None => chain.to_string(),
            };
            *out.entry(prefix).or_default() += c.rules.len();
            if depth > 16 {
                return;
            }
            for r in &c.rules {
                match &r.verdict {
                    Verdict::Jump(t) | Verdict::Goto(t) => visit(rs, t, depth + 1, out),
                    Verdict::AddrVmap { map, .. } => {
                        for e in rs.sets.get(map).iter().flat_map(|s| s.elements.iter()) {
                            if let Element::VmapJump(_, t) = e {
                                visit(rs, t, depth + 1, out);
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        let mut out = BTreeMap::new();
        for (name, c) in &rs.chains {
            if c.base.is_some() {
                visit(rs, name, 0, &mut out);
            }
        }
        let total: usize = out.values().sum();
        let by: Vec<String> = out.iter().map(|(p, n)| format!("{p} {n}")).collect();
        println!(
            "validation walk: {total} rule visits for {} rules in the table; by chain: {}",
            rs.rule_count(),
            by.join(", ")
        );
    }

    pub fn run(model: &Cluster, events: usize) {
        let mut c = model.clone();
        let locals = local_pods(&c);
        let mut eng = Incremental::new(NODE);
        eng.update(&c, &NodeNet::default());
        let mut k = Kernel {
            s: Session::open().expect("netlink session"),
            known: eng.ruleset().clone(),
        };
        k.send(&diff::create(eng.ruleset()), false);
        let rs = eng.ruleset();
        let plain = rs
            .sets
            .iter()
            .find(|(_, s)| {
                matches!(
                    s.kind,
                    SetKind::Addr {
                        interval: false,
                        ..
                    }
                ) && !s.elements.is_empty()
            })
            .map(|(n, _)| n.clone())
            .expect("a plain address set");
        let (vmap, target) = rs
            .sets
            .iter()
            .find_map(|(n, s)| match (s.kind, s.elements.iter().next()) {
                (SetKind::Vmap { .. }, Some(Element::VmapJump(_, c))) => {
                    Some((n.clone(), c.clone()))
                }
                _ => None,
            })
            .expect("a verdict map");
        let rules: usize = rs.chains.values().map(|c| c.rules.len()).sum();
        println!(
            "commit probe at {NODE}: {} chains, {rules} rules, {} sets, {} elements; probes on set {plain} and map {vmap} (-> {target})",
            rs.chains.len(),
            rs.sets.len(),
            rs.element_count()
        );
        const PROBE: &str = "bench_probe";
        k.send(
            &Transaction {
                ops: vec![Op::AddChain {
                    name: PROBE.into(),
                    base: None,
                }],
            },
            false,
        );
        let t = &locals[0];
        for obj in [
            with_labels(t, &[("bench", "p"), ("flip", "off")]),
            super::policy(
                &t.namespace,
                "bench-peers",
                json!({"bench": "p"}),
                json!({"role": "bench-peer"}),
                9999,
            ),
            super::policy(
                &t.namespace,
                "bench-flip",
                json!({"flip": "on"}),
                json!({"app": "app-0"}),
                7777,
            ),
        ] {
            change(&mut eng, &mut c, obj);
            let (tx, _) = k.update(&mut eng, &c);
            k.send(&tx, false);
        }
        let mut times: BTreeMap<String, Vec<Sample>> = BTreeMap::new();
        let mut shape: BTreeMap<&str, String> = BTreeMap::new();
        let mut push = |k: &str, d: Sample| times.entry(k.to_string()).or_default().push(d);
        let rule = |verdict| Rule {
            matches: vec![Match::Counter],
            verdict,
            comment: None,
        };
        walk(eng.ruleset());
        for i in 0..events {
            // Every other event, the sending thread at nice -10: whether
            // its priority, not the kernel's work, decides the tail.
            let boosted = i % 2 == 1 && renice(-10);
            if i % 2 == 0 {
                renice(0);
            }
            let sfx = if boosted { " [nice -10]" } else { "" };
            let mut push = |k: &str, d: Sample| push(&format!("{k}{sfx}"), d);
            let (kind, obj) = raw_event(i, &locals);
            change(&mut eng, &mut c, obj);
            let (tx, undo) = k.update(&mut eng, &c);
            push(kind, k.send(&tx, false));
            shape.insert(kind, format!("{} messages: {}", tx.ops.len(), tx.summary()));
            // The same batch again, in the other ack mode.
            let each = (i / 3) % 2 == 0;
            k.send(&undo, !each);
            let mode = if each {
                "ack per message"
            } else {
                "END ack only"
            };
            push(&format!("{kind}, again ({mode})"), k.send(&tx, each));
            let addr =
                |b: u8| IpAddr::V4(Ipv4Addr::new(10, b, (i / 250) as u8, (i % 250) as u8 + 1));
            let probes: [(&str, Op, Op); 4] = [
                (
                    "probe: 1 element into a plain address set",
                    Op::AddElements {
                        set: plain.clone(),
                        elements: vec![Element::Addr(addr(250))],
                    },
                    Op::DelElements {
                        set: plain.clone(),
                        elements: vec![Element::Addr(addr(250))],
                    },
                ),
                (
                    "probe: 1 element into a verdict map (jump)",
                    Op::AddElements {
                        set: vmap.clone(),
                        elements: vec![Element::VmapJump(addr(251), target.clone())],
                    },
                    Op::DelElements {
                        set: vmap.clone(),
                        elements: vec![Element::VmapJump(addr(251), target.clone())],
                    },
                ),
                (
                    "probe: 1 rule with a verdict (accept), unreferenced chain",
                    Op::AddRules {
                        chain: PROBE.into(),
                        rules: vec![rule(Verdict::Accept)],
                    },
                    Op::FlushChain { name: PROBE.into() },
                ),
                (
                    "probe: 1 rule without a verdict (counter), unreferenced chain",
                    Op::AddRules {
                        chain: PROBE.into(),
                        rules: vec![rule(Verdict::Continue)],
                    },
                    Op::FlushChain { name: PROBE.into() },
                ),
            ];
            for (name, add, del) in probes {
                push(name, k.send(&Transaction { ops: vec![add] }, false));
                k.send(&Transaction { ops: vec![del] }, false);
            }
        }
        renice(0);
        walk(eng.ruleset());
        println!();
        println!(
            "| batch | n | p50 | p99 | max | CPU p50 | CPU p99 | preempted | p99 unpreempted |"
        );
        println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
        for (name, v) in times {
            let sorted = |f: &dyn Fn(&Sample) -> Option<Duration>| {
                let mut d: Vec<Duration> = v.iter().filter_map(f).collect();
                d.sort();
                d
            };
            let (wall, cpu) = (sorted(&|s| Some(s.wall)), sorted(&|s| Some(s.cpu)));
            let calm = sorted(&|s| (!s.preempted).then_some(s.wall));
            let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1000.0);
            println!(
                "| {name} | {} | {} | {} | {} | {} | {} | {} | {} |",
                v.len(),
                ms(pct(&wall, 0.5)),
                ms(pct(&wall, 0.99)),
                ms(*wall.last().unwrap_or(&Duration::ZERO)),
                ms(pct(&cpu, 0.5)),
                ms(pct(&cpu, 0.99)),
                v.len() - calm.len(),
                ms(pct(&calm, 0.99)),
            );
        }
        println!();
        for (kind, s) in shape {
            println!("last {kind} batch: {s}");
        }
        println!();
    }
}

//! Agent tests: the real kube-rs watchers against the fake API server
//! (real HTTP list/watch), the reconcile loop on its thread, and the
//! in-memory backend. The oracle is always `nftpol compile` on the same
//! objects, so the agent must enforce exactly what auditors see.

use super::backend::MemoryBackend;
use super::metrics::Metrics;
use super::reconcile::Settings;
use super::status::policy_series;
use super::{run_with, AgentError, Options, Source};
use nftpol_test_support::fakeapi::{ApiKind, FakeApi};
use policy_compiler::render::render_script;
use policy_compiler::{Cluster, Ruleset};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

const NODE: &str = "node-a";

fn ns(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "labels": labels}})
}

fn pod(ns: &str, name: &str, labels: Value, node: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox",
            "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]}]},
        "status": {"podIP": ip, "podIPs": [{"ip": ip}]}})
}

/// Ingress to `app=<target>` from `app=<from>` pods in namespaces with
/// `team=<team>` on TCP `port`.
fn policy(ns: &str, name: &str, target: &str, from: &str, team: &str, port: Value) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"podSelector": {"matchLabels": {"app": target}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": from}},
                "namespaceSelector": {"matchLabels": {"team": team}}}],
                "ports": [{"protocol": "TCP", "port": port}]}]}})
}

/// A small cluster over two nodes and three namespaces.
fn seed(fake: &FakeApi) {
    for o in [
        ns("prod", json!({"team": "a"})),
        ns("dev", json!({"team": "b"})),
        ns("ops", json!({"team": "a"})),
        pod("prod", "web-0", json!({"app": "web"}), NODE, "10.1.0.10"),
        pod(
            "prod",
            "web-1",
            json!({"app": "web"}),
            "node-b",
            "10.1.1.10",
        ),
        pod(
            "prod",
            "cli-0",
            json!({"app": "cli"}),
            "node-b",
            "10.1.1.11",
        ),
        pod("ops", "cli-1", json!({"app": "cli"}), NODE, "10.1.0.12"),
        pod("dev", "cli-2", json!({"app": "cli"}), NODE, "10.1.0.13"),
        // Its namespace object is not there (yet): implicit labels only.
        pod("qa", "cli-4", json!({"app": "cli"}), "node-b", "10.1.1.40"),
        policy("prod", "web", "web", "cli", "a", json!(80)),
    ] {
        fake.apply(o).expect("valid test object");
    }
}

/// What `nftpol compile --node-name node-a` prints for the fake's objects,
/// through the CLI's own code path (a file on disk).
fn compile_cli(fake: &FakeApi) -> String {
    compile_cli_with(fake, false)
}

/// The same, with `--hash` when `hash`.
fn compile_cli_with(fake: &FakeApi, hash: bool) -> String {
    let dir = temp_dir("compile");
    let file = dir.path().join("dump.yaml");
    std::fs::write(&file, fake.dump()).expect("write dump");
    let args = crate::cli::CompileArgs {
        input: crate::cli::Input {
            manifests: vec![file],
            strict: false,
        },
        node_name: Some(NODE.into()),
        format: crate::cli::Format::Nft,
        hash,
        source: Default::default(),
        log: Default::default(),
    };
    let mut out = Vec::new();
    crate::cli::compile(&args, &mut out).expect("compile");
    String::from_utf8(out).expect("utf-8")
}

/// The ruleset compiled in-process from the fake's objects.
fn expected(fake: &FakeApi) -> Ruleset {
    let loaded = policy_compiler::parse("fake", &fake.dump());
    policy_compiler::compile(&Cluster::from_objects(loaded.objects), NODE)
}

/// A scratch directory, removed on drop.
fn temp_dir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("nftpol-t-agent-{tag}-"))
        .tempdir()
        .expect("create temp dir")
}

struct Running {
    backend: MemoryBackend,
    metrics: Arc<Metrics>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<MemoryBackend, AgentError>>,
}

fn settings() -> Settings {
    Settings {
        debounce: Duration::from_millis(20),
        max_delay: Duration::from_millis(100),
        drift_interval: Duration::from_secs(600),
        backoff_min: Duration::from_millis(20),
        ..Settings::new(NODE)
    }
}

fn start(source: Source, settings: Settings) -> Running {
    start_on(MemoryBackend::default(), source, settings)
}

/// Starts an agent on an existing (shared) in-memory kernel.
fn start_on(backend: MemoryBackend, source: Source, settings: Settings) -> Running {
    let metrics = Arc::new(Metrics::new());
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let options = Options {
        settings,
        metrics_addr: None,
        kernel_watch: false,
        revoke_denied_connections: false,
        verdict_log: None,
    };
    let task = tokio::spawn(run_with(
        source,
        backend.clone(),
        options,
        metrics.clone(),
        async move {
            let _ = stopped.await;
        },
    ));
    Running {
        backend,
        metrics,
        stop: Some(stop),
        task,
    }
}

impl Running {
    fn table(&self) -> Option<Ruleset> {
        self.backend.state().table.clone()
    }
    fn batches(&self) -> usize {
        self.backend.state().batches
    }
    /// Waits until the kernel holds `want`; panics with the difference
    /// after `limit`.
    async fn converges(&self, want: &Ruleset, limit: Duration) -> Duration {
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            if self.table().as_ref() == Some(want) {
                return t0.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!(
            "kernel did not converge in {limit:?}\nwant:\n{}\nhave:\n{}",
            policy_compiler::render::render_script(want),
            self.table()
                .map(|t| policy_compiler::render::render_script(&t))
                .unwrap_or_else(|| "<no table>".into())
        );
    }
    async fn stop(mut self) -> MemoryBackend {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.task
            .await
            .expect("agent task")
            .expect("agent stops cleanly")
    }
}

async fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    f()
}

/// Bound of every wait for something that must happen: polled, so it
/// costs nothing when it happens, and generous, since this debug build
/// runs on a loaded 2-core CI machine beside the rest of the suite.
const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_programmed_before_every_initial_list() {
    let fake = FakeApi::start().await.expect("fake api");
    seed(&fake);
    fake.hold_lists(&[ApiKind::Pod]);
    let agent = start(Source::Kube(fake.client()), settings());
    assert!(
        wait_for(LIMIT, || fake.list_count(ApiKind::Namespace) > 0
            && fake.list_count(ApiKind::NetworkPolicy) > 0)
        .await
    );
    // Namespaces and policies are known, pods are not: programming now
    // would isolate web-0 without its peers. (That nothing is due however
    // long this lasts is asserted on virtual time in `loop_tests`.)
    assert_eq!(agent.backend.state().applies, 0);
    assert!(!agent.metrics.health.ready());
    fake.release_lists();
    agent.converges(&expected(&fake), LIMIT).await;
    assert!(wait_for(LIMIT, || agent.metrics.health.ready()).await);
    assert_eq!(agent.batches(), 1, "one batch after the initial sync");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_cluster_still_programs_once_after_sync() {
    let fake = FakeApi::start().await.expect("fake api");
    let agent = start(Source::Kube(fake.client()), settings());
    assert!(wait_for(LIMIT, || agent.backend.state().applies == 1).await);
    assert_eq!(
        agent.table(),
        Some(policy_compiler::compile(&Cluster::new(), NODE))
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_add_update_delete_of_every_kind_and_matches_compile() {
    let fake = FakeApi::start().await.expect("fake api");
    seed(&fake);
    let agent = start(Source::Kube(fake.client()), settings());
    agent.converges(&expected(&fake), LIMIT).await;

    type Step = Box<dyn Fn(&FakeApi)>;
    let steps: Vec<(&str, Step)> = vec![
        (
            "add pod (new peer on another node)",
            Box::new(|f| {
                f.apply(pod(
                    "ops",
                    "cli-3",
                    json!({"app": "cli"}),
                    "node-b",
                    "10.1.1.14",
                ))
                .map(|_| ())
                .expect("apply")
            }),
        ),
        (
            "update pod labels (peer leaves)",
            Box::new(|f| {
                f.apply(pod(
                    "ops",
                    "cli-1",
                    json!({"app": "other"}),
                    NODE,
                    "10.1.0.12",
                ))
                .map(|_| ())
                .expect("apply")
            }),
        ),
        (
            "delete pod",
            Box::new(|f| {
                assert!(f.delete(ApiKind::Pod, "prod", "cli-0"));
            }),
        ),
        (
            "add local target pod",
            Box::new(|f| {
                f.apply(pod(
                    "prod",
                    "web-2",
                    json!({"app": "web"}),
                    NODE,
                    "10.1.0.20",
                ))
                .map(|_| ())
                .expect("apply")
            }),
        ),
        (
            "update namespace labels (dev joins team a)",
            Box::new(|f| {
                f.apply(ns("dev", json!({"team": "a"})))
                    .map(|_| ())
                    .expect("apply")
            }),
        ),
        (
            "add namespace (qa's pod becomes a peer)",
            Box::new(|f| {
                f.apply(ns("qa", json!({"team": "a"})))
                    .map(|_| ())
                    .expect("apply")
            }),
        ),
        (
            "delete namespace (dev's pod loses its labels)",
            Box::new(|f| {
                assert!(f.delete(ApiKind::Namespace, "", "dev"));
            }),
        ),
        (
            "add policy with a named port",
            Box::new(|f| {
                f.apply(policy("dev", "cli", "cli", "web", "a", json!("http")))
                    .map(|_| ())
                    .expect("apply")
            }),
        ),
        (
            "update policy port",
            Box::new(|f| {
                f.apply(policy("prod", "web", "web", "cli", "a", json!(443)))
                    .map(|_| ())
                    .expect("apply")
            }),
        ),
        (
            "delete policy",
            Box::new(|f| {
                assert!(f.delete(ApiKind::NetworkPolicy, "prod", "web"));
            }),
        ),
    ];
    for (what, step) in steps {
        let before = expected(&fake);
        step(&fake);
        let want = expected(&fake);
        assert_ne!(before, want, "step {what:?} must change the ruleset");
        agent.converges(&want, LIMIT).await;
        let table = agent.table().expect("table");
        assert_eq!(
            policy_compiler::render::render_script(&table),
            compile_cli(&fake),
            "after {what:?} the agent enforces what `nftpol compile` prints"
        );
    }
    // Nothing ever relisted: every change came through the watches.
    assert_eq!(fake.list_count(ApiKind::Pod), 1);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_1000_events_becomes_a_handful_of_batches() {
    let fake = FakeApi::start().await.expect("fake api");
    seed(&fake);
    let agent = start(Source::Kube(fake.client()), settings());
    agent.converges(&expected(&fake), LIMIT).await;
    let before = agent.batches();
    for i in 0..1000 {
        // Peers come and go on node-b: each changes the set elements.
        let ip = format!("10.2.{}.{}", i / 250, i % 250 + 1);
        fake.apply(pod(
            "prod",
            &format!("cli-b{i}"),
            json!({"app": "cli"}),
            "node-b",
            &ip,
        ))
        .expect("apply");
    }
    agent.converges(&expected(&fake), LIMIT).await;
    let batches = agent.batches() - before;
    eprintln!("burst: 1000 events -> {batches} batches");
    // How many depends on how fast the events arrive (the exact schedule
    // is asserted on virtual time in `loop_tests`); one per event would be
    // the bug.
    assert!(
        (1..=100).contains(&batches),
        "1000 events gave {batches} batches"
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relists_after_410_gone_and_drops_what_vanished_meanwhile() {
    let fake = FakeApi::start().await.expect("fake api");
    seed(&fake);
    let agent = start(Source::Kube(fake.client()), settings());
    agent.converges(&expected(&fake), LIMIT).await;
    // Every watch open, so every one gets the 410 (a watch started later
    // from the latest revision would resume: compaction keeps it).
    assert!(wait_for(LIMIT, || fake.open_watches() == ApiKind::ALL.len()).await);
    let lists = fake.list_count(ApiKind::Pod);
    // Hold the relist so the changes below happen while no watch is open:
    // only a relist can tell the agent about the deletion.
    fake.hold_lists(&ApiKind::ALL);
    fake.expire_watches();
    assert!(wait_for(LIMIT, || fake.open_watches() == 0).await);
    assert!(fake.delete(ApiKind::Pod, "ops", "cli-1"));
    fake.apply(pod(
        "prod",
        "web-3",
        json!({"app": "web"}),
        NODE,
        "10.1.0.30",
    ))
    .expect("apply");
    fake.release_lists();
    agent.converges(&expected(&fake), LIMIT).await;
    assert!(
        fake.list_count(ApiKind::Pod) > lists,
        "a 410 forces a relist"
    );
    let text = agent.metrics.encode();
    assert!(
        text.contains("nftpol_errors_total{error=\"watch_gone\"}"),
        "{text}"
    );
    agent.stop().await;
}

/// A relist whose second page fails (its continue token expired) is
/// started over by kube's watcher from the first page. What the first
/// page brought (a pod that took over the address of one deleted while
/// the watch was down) must not reach the kernel beside the deleted pod
/// that only a complete listing removes: one batch, after one completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relist_failing_part_way_programs_nothing_until_one_completes() {
    let fake = FakeApi::start().await.expect("fake api");
    seed(&fake);
    // A second page of pods, listed after the seed's.
    for i in 0..super::watch::PAGE_SIZE {
        let ip = format!("10.9.{}.{}", i / 200, i % 200 + 1);
        fake.apply(pod("zz", &format!("f{i}"), json!({}), "node-b", &ip))
            .expect("apply");
    }
    let agent = start(Source::Kube(fake.client()), settings());
    agent.converges(&expected(&fake), LIMIT).await;
    assert!(wait_for(LIMIT, || fake.open_watches() == ApiKind::ALL.len()).await);
    let batches = agent.batches();
    fake.hold_lists(&ApiKind::ALL);
    fake.expire_watches();
    assert!(wait_for(LIMIT, || fake.open_watches() == 0).await);
    // web-0 (isolated) goes; dev/web-9 (not isolated) takes its address.
    assert!(fake.delete(ApiKind::Pod, "prod", "web-0"));
    fake.apply(pod(
        "dev",
        "web-9",
        json!({"app": "web"}),
        NODE,
        "10.1.0.10",
    ))
    .expect("apply");
    fake.expire_continues(ApiKind::Pod, 1);
    fake.release_lists();
    agent.converges(&expected(&fake), LIMIT).await;
    assert_eq!(
        fake.expired_continues(ApiKind::Pod),
        1,
        "the relist failed part way"
    );
    assert_eq!(
        agent.batches(),
        batches + 1,
        "nothing went before a listing completed"
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_after_a_dropped_connection_and_bookmarks_without_relisting() {
    let fake = FakeApi::start().await.expect("fake api");
    seed(&fake);
    // In process, the bookmark queued on each watch is read before the
    // abort queued after it, without waiting for a socket to deliver it.
    let agent = start(Source::Kube(fake.client_in_process()), settings());
    agent.converges(&expected(&fake), LIMIT).await;
    // Every watch must be open to receive the bookmark.
    assert!(wait_for(LIMIT, || fake.open_watches() == ApiKind::ALL.len()).await);
    let lists: Vec<usize> = ApiKind::ALL.iter().map(|k| fake.list_count(*k)).collect();
    let watches = fake.watch_count(ApiKind::Pod);
    let ns_watches = fake.watch_count(ApiKind::Namespace);
    // Bump the resourceVersion with an unrelated kind, then bookmark: the
    // namespace watcher's next watch must resume from the bookmark.
    fake.apply(pod("ops", "noise", json!({}), "node-b", "10.1.1.77"))
        .expect("apply");
    let bookmark = fake.bookmark();
    fake.drop_connections();
    // A change made while the client reconnects is replayed from history.
    fake.apply(pod(
        "dev",
        "web-9",
        json!({"app": "web"}),
        NODE,
        "10.1.0.99",
    ))
    .expect("apply");
    fake.apply(policy("dev", "web", "web", "cli", "b", json!(8080)))
        .expect("apply");
    agent.converges(&expected(&fake), LIMIT).await;
    assert!(wait_for(LIMIT, || fake.watch_count(ApiKind::Pod) > watches).await);
    assert!(wait_for(LIMIT, || fake.watch_count(ApiKind::Namespace) > ns_watches).await);
    assert_eq!(
        fake.last_watch_rv(ApiKind::Namespace),
        Some(bookmark),
        "the watch resumes from the bookmark's resourceVersion"
    );
    let after: Vec<usize> = ApiKind::ALL.iter().map(|k| fake.list_count(*k)).collect();
    assert_eq!(
        lists, after,
        "a dropped connection resumes, it does not relist"
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_objects_are_skipped_one_by_one() {
    let fake = FakeApi::start().await.expect("fake api");
    seed(&fake);
    let mut bad = policy("prod", "bad", "web", "cli", "a", json!(80));
    bad["spec"]["ingress"][0]["from"] = json!([{"ipBlock": {"cidr": "10.0.0/33"}}]);
    fake.apply(bad.clone()).expect("apply");
    let agent = start(Source::Kube(fake.client()), settings());
    agent.converges(&expected(&fake), LIMIT).await;
    // An invalid update of a valid policy: the policy counts as absent,
    // exactly as `nftpol compile` treats it.
    let mut broken = policy("prod", "web", "web", "cli", "a", json!(80));
    broken["spec"]["ingress"][0]["from"][0]["podSelector"] = json!({"matchExpressions":
        [{"key": "app", "operator": "Sometimes", "values": ["x"]}]});
    fake.apply(broken).expect("apply");
    fake.apply(pod(
        "prod",
        "web-5",
        json!({"app": "web"}),
        NODE,
        "10.1.0.55",
    ))
    .expect("apply");
    agent.converges(&expected(&fake), LIMIT).await;
    assert_eq!(
        policy_compiler::render::render_script(&agent.table().expect("table")),
        compile_cli(&fake)
    );
    let text = agent.metrics.encode();
    assert!(
        text.contains("nftpol_invalid_objects_skipped_total{kind=\"networkpolicy\"} 2"),
        "{text}"
    );
    // Each invalid object got one Warning Event naming the field.
    assert!(wait_for(LIMIT, || fake.events().len() >= 2).await);
    let mut events = fake.events();
    assert_eq!(events.len(), 2, "{events:#?}");
    // Events are posted without waiting, so they may arrive in any order.
    events.sort_by_key(|e| e["regarding"]["name"].as_str().map(str::to_string));
    for (e, name, field) in [
        (&events[0], "bad", "spec.ingress[0].from[0].ipBlock.cidr"),
        (&events[1], "web", "spec.ingress[0].from[0].podSelector"),
    ] {
        // events.k8s.io/v1, as kube's Recorder posts them.
        assert_eq!(e["type"], "Warning");
        assert_eq!(e["reason"], "InvalidObject");
        assert_eq!(e["action"], "Skipped");
        assert_eq!(e["reportingController"], "nftpol");
        assert_eq!(e["reportingInstance"], NODE);
        assert_eq!(e["regarding"]["kind"], "NetworkPolicy");
        assert_eq!(e["regarding"]["name"], name);
        assert_eq!(e["metadata"]["namespace"], "prod");
        let msg = e["note"].as_str().unwrap_or_default();
        assert!(msg.contains(field), "{msg}");
    }
    agent.stop().await;
}

/// Admin policies of both API generations and Nodes are watched like the
/// other kinds: added, changed, deleted and invalid ones all end up as
/// `nftpol compile` sees them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_admin_policies_and_nodes() {
    let fake = FakeApi::start().await.expect("fake api");
    seed(&fake);
    let agent = start(Source::Kube(fake.client()), settings());
    agent.converges(&expected(&fake), LIMIT).await;
    fake.apply(json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "cp", "labels": {"role": "cp"}},
        "status": {"addresses": [{"type": "InternalIP", "address": "172.18.0.2"}]}}))
        .expect("apply");
    fake.apply(json!({"apiVersion": "policy.networking.k8s.io/v1alpha2",
        "kind": "ClusterNetworkPolicy", "metadata": {"name": "deny-dev"},
        "spec": {"tier": "Admin", "priority": 1,
            "subject": {"namespaces": {"matchLabels": {"team": "a"}}},
            "ingress": [{"action": "Deny", "from": [{"namespaces": {"matchLabels": {"team": "b"}}}]}],
            "egress": [{"action": "Accept", "to": [{"nodes": {"matchLabels": {"role": "cp"}}}]}]}}))
    .expect("apply");
    fake.apply(json!({"apiVersion": "policy.networking.k8s.io/v1alpha1",
        "kind": "BaselineAdminNetworkPolicy", "metadata": {"name": "default"},
        "spec": {"subject": {"namespaces": {}},
            "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]}}))
        .expect("apply");
    // Invalid: skipped, reported, and counted under its own kind.
    fake.apply(json!({"apiVersion": "policy.networking.k8s.io/v1alpha1",
        "kind": "AdminNetworkPolicy", "metadata": {"name": "dns"},
        "spec": {"priority": 2, "subject": {"namespaces": {}},
            "egress": [{"action": "Allow", "to": [{"domainNames": ["example.com"]}]}]}}))
        .expect("apply");
    let want = expected(&fake);
    assert!(
        render_script(&want).contains("ClusterNetworkPolicy/deny-dev ingress[0] Deny"),
        "the admin policy compiles into the expected ruleset"
    );
    agent.converges(&want, LIMIT).await;
    assert!(fake.delete(ApiKind::ClusterNetworkPolicy, "", "deny-dev"));
    assert!(fake.delete(ApiKind::Node, "", "cp"));
    let want = expected(&fake);
    assert!(!render_script(&want).contains("deny-dev"));
    agent.converges(&want, LIMIT).await;
    let text = agent.metrics.encode();
    assert!(
        text.contains("nftpol_invalid_objects_skipped_total{kind=\"adminnetworkpolicy\"} 1"),
        "{text}"
    );
    agent.stop().await;
}

/// End to end through the real watchers; the timing (a repair exactly
/// at the drift interval) is asserted on virtual time in `loop_tests`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_is_repaired() {
    let fake = FakeApi::start().await.expect("fake api");
    seed(&fake);
    let agent = start(
        Source::Kube(fake.client()),
        Settings {
            drift_interval: Duration::from_millis(200),
            ..settings()
        },
    );
    agent.converges(&expected(&fake), LIMIT).await;
    // Someone deletes our table: restored by the drift check.
    agent.backend.state().table = None;
    agent.converges(&expected(&fake), LIMIT).await;
    assert!(
        wait_for(LIMIT, || agent
            .metrics
            .encode()
            .contains("nftpol_drift_repairs_total 1"))
        .await,
        "{}",
        agent.metrics.encode()
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_leaves_the_table_in_place() {
    let fake = FakeApi::start().await.expect("fake api");
    seed(&fake);
    let agent = start(Source::Kube(fake.client()), settings());
    let want = expected(&fake);
    agent.converges(&want, LIMIT).await;
    let backend = agent.stop().await;
    assert_eq!(backend.state().table.as_ref(), Some(&want));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_directory_mode_follows_file_changes() {
    let dir = temp_dir("dir");
    let fake = FakeApi::start().await.expect("fake api");
    seed(&fake);
    std::fs::write(dir.path().join("cluster.yaml"), fake.dump()).expect("write");
    let agent = start(Source::Dir(dir.path().to_path_buf()), settings());
    agent.converges(&expected(&fake), LIMIT).await;
    // A new file with a policy, then an edit of the old one.
    let extra = policy("dev", "cli", "cli", "web", "a", json!("http"));
    std::fs::write(dir.path().join("extra.yaml"), extra.to_string()).expect("write");
    fake.apply(extra).expect("apply");
    agent.converges(&expected(&fake), LIMIT).await;
    assert!(fake.delete(ApiKind::Pod, "ops", "cli-1"));
    std::fs::write(dir.path().join("cluster.yaml"), {
        // The dump without extra.yaml's policy, which lives in its own file.
        let mut v: Value = serde_json::from_str(&fake.dump()).expect("json");
        if let Some(items) = v["items"].as_array_mut() {
            items.retain(|i| i["metadata"]["name"] != "cli" || i["kind"] != "NetworkPolicy");
        }
        v.to_string()
    })
    .expect("write");
    agent.converges(&expected(&fake), LIMIT).await;
    let table = agent.table().expect("table");
    assert_eq!(
        policy_compiler::render::render_script(&table),
        compile_cli(&fake)
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_readiness_endpoints() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let metrics = Arc::new(Metrics::new());
    // A port found free can be taken by another socket of the host's
    // namespace (parallel tests, other processes) before `serve` binds
    // it: a bind that fails tries another free port, a few times.
    let mut tries = 0;
    let (server, addr) = loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
        match super::metrics::serve(addr, metrics.clone()).await {
            Ok(server) => break (server, addr),
            Err(e) if tries < 20 => {
                tries += 1;
                eprintln!("port {port} taken meanwhile ({e}), trying another");
            }
            Err(e) => panic!("serve: {e}"),
        }
    };
    let get = |path: &'static str| async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
    };
    assert!(get("/healthz").await.starts_with("HTTP/1.0 200"));
    assert!(get("/readyz").await.starts_with("HTTP/1.0 503"));
    metrics.health.set_synced(true);
    metrics.health.set_last_apply_ok(true);
    assert!(get("/readyz").await.starts_with("HTTP/1.0 200"));
    metrics.drift_repairs.inc();
    let m = get("/metrics").await;
    assert!(m.contains("nftpol_drift_repairs_total 1"), "{m}");
    assert!(m.contains("nftpol_programming_latency_seconds"), "{m}");
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synthetic_clusters_round_trip_through_the_fake_api() {
    use nftpol_test_support::synth::{self, Shape};
    let shape = Shape {
        namespaces: 12,
        pods: 120,
        policies: 36,
        nodes: 3,
    };
    let model = synth::cluster(shape);
    let fake = FakeApi::start().await.expect("fake api");
    nftpol_test_support::fakeapi::load_cluster(&fake, &model).expect("load");
    let loaded = policy_compiler::parse("fake", &fake.dump());
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    assert_eq!(Cluster::from_objects(loaded.objects), model);
    // And the agent gets there through list/watch.
    let agent = start(
        Source::Kube(fake.client()),
        Settings::new(&synth::node_name(1)),
    );
    agent
        .converges(
            &policy_compiler::compile(&model, &synth::node_name(1)),
            LIMIT,
        )
        .await;
    agent.stop().await;
}

/// Pods served whole (managedFields, container specs, conditions) reach
/// the same ruleset through the agent's slim read, listed and watched, as
/// the compiler makes of the whole objects; among them a local pod whose
/// named port is only on a native sidecar and whose IPv6 address is only
/// in podIPs, enforced through a policy on that port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_pods_are_enforced_as_the_compiler_reads_the_whole_objects() {
    use nftpol_test_support::fakeapi::{as_served_pod, to_api};
    use nftpol_test_support::synth::{self, Shape};
    let model = synth::cluster(Shape {
        namespaces: 8,
        pods: 80,
        policies: 24,
        nodes: 3,
    });
    let node = synth::node_name(1);
    let fake = FakeApi::start().await.expect("fake api");
    for o in model
        .namespaces()
        .cloned()
        .map(policy_compiler::Object::Namespace)
        .chain(model.pods().cloned().map(policy_compiler::Object::Pod))
        .chain(
            model
                .policies()
                .cloned()
                .map(policy_compiler::Object::Policy),
        )
    {
        let v = to_api(&o);
        let served = if v["kind"] == "Pod" {
            as_served_pod(v)
        } else {
            v
        };
        fake.apply(served).expect("load");
    }
    let sidecar = |name: &str, v4: &str, v6: &str| {
        let mut p = as_served_pod(pod("prod", name, json!({"app": "dns"}), &node, v4));
        p["spec"]["initContainers"] = json!([{"name": "s", "restartPolicy": "Always",
            "ports": [{"name": "dns", "containerPort": 5353, "protocol": "UDP"}]}]);
        p["status"]["podIPs"] = json!([{"ip": v4}, {"ip": v6}]);
        p
    };
    fake.apply(ns("prod", json!({"team": "a"}))).expect("apply");
    fake.apply(sidecar("dns-0", "10.9.0.1", "fd00:9::1"))
        .expect("apply");
    fake.apply(
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "dns", "namespace": "prod"},
        "spec": {"podSelector": {"matchLabels": {"app": "dns"}},
            "ingress": [{"ports": [{"protocol": "UDP", "port": "dns"}]}]}}),
    )
    .expect("apply");
    let agent = start(Source::Kube(fake.client()), Settings::new(&node));
    let expect = |fake: &FakeApi| {
        let loaded = policy_compiler::parse("fake", &fake.dump());
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        policy_compiler::compile(&Cluster::from_objects(loaded.objects), &node)
    };
    let want = expect(&fake);
    let text = render_script(&want);
    assert!(
        text.contains("5353") && text.contains("fd00:9::1"),
        "the sidecar's port and the podIPs-only address are enforced"
    );
    agent.converges(&want, LIMIT).await;
    // The same through the watch.
    fake.apply(sidecar("dns-1", "10.9.0.2", "fd00:9::2"))
        .expect("apply");
    let want = expect(&fake);
    assert!(render_script(&want).contains("fd00:9::2"));
    agent.converges(&want, LIMIT).await;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_finds_the_table_right_and_sends_nothing() {
    let fake = FakeApi::start().await.expect("fake api");
    seed(&fake);
    let agent = start(Source::Kube(fake.client()), settings());
    let want = expected(&fake);
    agent.converges(&want, LIMIT).await;
    let kernel = agent.stop().await;
    let batches = kernel.state().batches;
    // The new agent holds off until it has listed everything, then diffs
    // against the table the old one left: nothing to send.
    fake.hold_lists(&[ApiKind::Pod]);
    let ns_lists = fake.list_count(ApiKind::Namespace);
    let pol_lists = fake.list_count(ApiKind::NetworkPolicy);
    let again = start_on(kernel.clone(), Source::Kube(fake.client()), settings());
    assert!(
        wait_for(LIMIT, || fake.list_count(ApiKind::Namespace) > ns_lists
            && fake.list_count(ApiKind::NetworkPolicy) > pol_lists)
        .await
    );
    assert_eq!(
        kernel.state().applies,
        batches,
        "untouched before the lists"
    );
    fake.release_lists();
    assert!(wait_for(LIMIT, || again.metrics.health.ready()).await);
    assert_eq!(kernel.state().batches, batches, "no batch after a restart");
    let kernel = again.stop().await;
    // A change made while no agent ran is picked up by the next one, in
    // exactly one batch.
    fake.apply(pod(
        "prod",
        "cli-9",
        json!({"app": "cli"}),
        "node-b",
        "10.1.1.99",
    ))
    .expect("apply");
    let again = start_on(kernel.clone(), Source::Kube(fake.client()), settings());
    again.converges(&expected(&fake), LIMIT).await;
    assert_eq!(kernel.state().batches, batches + 1);
    again.stop().await;
}

/// One object the client cannot even deserialize (a field of the wrong
/// type) must not break the listing or the watch of its kind: it is
/// skipped like an invalid object, as `nftpol compile` skips it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_object_does_not_break_its_kind() {
    let fake = FakeApi::start().await.expect("fake api");
    seed(&fake);
    let mut bad = pod("prod", "bad-0", json!({"app": "web"}), NODE, "10.1.0.66");
    bad["spec"]["hostNetwork"] = json!("yes");
    fake.apply(bad).expect("apply");
    let agent = start(Source::Kube(fake.client()), settings());
    let want = expected(&fake);
    assert!(
        !policy_compiler::render::render_script(&want).contains("10.1.0.66"),
        "the compiler skips the bad pod too"
    );
    agent.converges(&want, LIMIT).await;
    // A good pod turning undecodable through the watch counts as deleted.
    let mut worse = pod("ops", "cli-1", json!({"app": "cli"}), NODE, "10.1.0.12");
    worse["spec"]["containers"] = json!("not a list");
    fake.apply(worse).expect("apply");
    fake.apply(pod(
        "prod",
        "web-8",
        json!({"app": "web"}),
        NODE,
        "10.1.0.88",
    ))
    .expect("apply");
    agent.converges(&expected(&fake), LIMIT).await;
    assert_eq!(fake.list_count(ApiKind::Pod), 1, "no relist");
    let text = agent.metrics.encode();
    assert!(
        text.contains("nftpol_invalid_objects_skipped_total{kind=\"pod\"} 2"),
        "{text}"
    );
    assert!(wait_for(LIMIT, || fake.events().len() >= 2).await);
    let mut notes: Vec<String> = fake
        .events()
        .iter()
        .map(|e| {
            let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
            format!("{}: {}", s(&e["regarding"]["name"]), s(&e["note"]))
        })
        .collect();
    // Events are posted without waiting, so they may arrive in any order.
    notes.sort();
    // Each names the field that could not be read.
    assert!(notes[0].starts_with("bad-0: "), "{notes:?}");
    assert!(notes[0].contains("spec.hostNetwork"), "{notes:?}");
    assert!(notes[1].starts_with("cli-1: "), "{notes:?}");
    assert!(notes[1].contains("spec.containers"), "{notes:?}");
    assert!(
        notes.iter().all(|n| n.contains("cannot be read")),
        "{notes:?}"
    );
    agent.stop().await;
}

/// Requests per kind the fake saw (lists, watches).
fn requests(fake: &FakeApi) -> Vec<(usize, usize)> {
    ApiKind::ALL
        .iter()
        .map(|k| (fake.list_count(*k), fake.watch_count(*k)))
        .collect()
}

/// Waits on tokio's (paused) clock until `f` holds; returns how long that
/// took on that clock.
async fn virtual_wait(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let t0 = tokio::time::Instant::now();
    while t0.elapsed() <= limit {
        if f() {
            return Some(t0.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// Watch retries back off while the API server is down: on the paused
/// clock (no socket: the in-process client), 20 s of outage may cost at
/// most 10 requests per kind, and the agent must be back within one
/// backoff step (at most 30 s) once the server returns.
#[tokio::test(flavor = "current_thread")]
async fn watch_retries_back_off_during_an_outage() {
    let fake = FakeApi::start().await.expect("fake api");
    seed(&fake);
    let agent = start(Source::Kube(fake.client_in_process()), settings());
    agent.converges(&expected(&fake), LIMIT).await;
    assert!(wait_for(LIMIT, || agent.metrics.health.ready()).await);
    assert!(wait_for(LIMIT, || fake.open_watches() == ApiKind::ALL.len()).await);

    tokio::time::pause();
    // The history is compacted too, so every kind has to relist.
    fake.expire_watches();
    fake.start_outage();
    let before = requests(&fake);
    tokio::time::sleep(Duration::from_secs(20)).await;
    let during: Vec<(usize, usize)> = requests(&fake)
        .iter()
        .zip(&before)
        .map(|((l, w), (l0, w0))| (l - l0, w - w0))
        .collect();
    eprintln!("requests per kind (lists, watches) in 20 s of outage: {during:?}");
    for (k, (lists, watches)) in ApiKind::ALL.iter().zip(&during) {
        assert!(*lists >= 1, "{k:?}: the agent kept trying");
        assert!(
            lists + watches <= 10,
            "{k:?}: {lists} lists, {watches} watches"
        );
    }
    assert!(
        agent.metrics.health.ready(),
        "the last good state stays enforced"
    );

    fake.end_outage();
    let listed = requests(&fake);
    let back = virtual_wait(Duration::from_secs(60), || {
        fake.open_watches() == ApiKind::ALL.len()
            && requests(&fake)
                .iter()
                .zip(&listed)
                .all(|((l, _), (l0, _))| l > l0)
    })
    .await;
    eprintln!(
        "watching again {back:?} after the outage; requests {:?}, open watches {}",
        requests(&fake),
        fake.open_watches()
    );
    assert!(
        back.is_some_and(|d| d <= Duration::from_secs(30)),
        "back after {back:?}"
    );
    tokio::time::resume();
    fake.apply(pod(
        "prod",
        "web-4",
        json!({"app": "web"}),
        NODE,
        "10.1.0.44",
    ))
    .expect("apply");
    agent.converges(&expected(&fake), LIMIT).await;
    agent.stop().await;
}

/// The same from a cold start: the agent is not ready while it cannot
/// list, and does not hammer the server meanwhile.
#[tokio::test(flavor = "current_thread")]
async fn a_cold_start_during_an_outage_backs_off_and_stays_unready() {
    let fake = FakeApi::start().await.expect("fake api");
    seed(&fake);
    fake.start_outage();
    tokio::time::pause();
    let agent = start(Source::Kube(fake.client_in_process()), settings());
    tokio::time::sleep(Duration::from_secs(20)).await;
    let lists: Vec<usize> = ApiKind::ALL.iter().map(|k| fake.list_count(*k)).collect();
    eprintln!("LISTs per kind in 20 s of outage: {lists:?}");
    assert!(lists.iter().all(|n| (1..=10).contains(n)), "{lists:?}");
    assert!(!agent.metrics.health.ready());
    assert_eq!(agent.backend.state().applies, 0);
    fake.end_outage();
    let back = virtual_wait(Duration::from_secs(60), || {
        fake.open_watches() == ApiKind::ALL.len()
    })
    .await;
    assert!(
        back.is_some_and(|d| d <= Duration::from_secs(30)),
        "back after {back:?}"
    );
    tokio::time::resume();
    agent.converges(&expected(&fake), LIMIT).await;
    assert!(wait_for(LIMIT, || agent.metrics.health.ready()).await);
    agent.stop().await;
}

#[test]
fn durations_parse_with_units() {
    use super::parse_duration;
    assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
    assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
    assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
    assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
    // A unit is required: "30" could mean seconds or milliseconds.
    assert!(parse_duration("30").is_err());
    assert!(parse_duration("10 parsecs").is_err());
    assert!(parse_duration("-1s").is_err());
    assert!(parse_duration("").is_err());
}

/// Fails every apply while the switch is on (the in-memory kernel is left
/// as it was, as a rejected batch leaves the real one).
#[derive(Clone)]
struct Failing {
    inner: MemoryBackend,
    fail: Arc<std::sync::atomic::AtomicBool>,
}

impl super::backend::Backend for Failing {
    fn apply(
        &mut self,
        desired: &Ruleset,
    ) -> Result<super::backend::Applied, super::backend::BackendError> {
        if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(crate::netlink::NetlinkError::NotCommitted.into());
        }
        self.inner.apply(desired)
    }
    fn counters(
        &mut self,
    ) -> Result<policy_compiler::counters::Counters, super::backend::BackendError> {
        self.inner.counters()
    }
}

fn status_settings() -> Settings {
    Settings {
        counters_interval: Duration::from_millis(20),
        status_interval: Duration::from_millis(50),
        ..settings()
    }
}

fn node_object() -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.1"}]}})
}

/// The status's entry for NetworkPolicy `ns/name`.
fn enforced<'a>(st: &'a Value, ns: &str, name: &str) -> Option<&'a Value> {
    st.pointer("/status/policies")?
        .as_array()?
        .iter()
        .find(|p| p["namespace"] == ns && p["name"] == name)
}

fn condition(st: &Value, ty: &str) -> Option<String> {
    st.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == ty)
        .and_then(|c| c["status"].as_str().map(str::to_string))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_object_follows_policy_changes_and_hits() {
    let fake = FakeApi::start().await.expect("fake api");
    seed(&fake);
    fake.apply(node_object()).expect("node");
    let agent = start(Source::Kube(fake.client()), status_settings());
    agent.converges(&expected(&fake), LIMIT).await;
    let web_rv = fake.resource_version().to_string();
    let rv_of = |name: &str| -> Option<String> {
        fake.node_status(NODE)
            .and_then(|st| enforced(&st, "prod", name).cloned())
            .and_then(|p| p["resourceVersion"].as_str().map(str::to_string))
    };
    assert!(
        wait_for(LIMIT, || rv_of("web").is_some()).await,
        "{:?}",
        fake.node_status(NODE)
    );
    let st = fake.node_status(NODE).expect("status object");
    // Owned by the Node, so it goes with it.
    assert_eq!(
        st.pointer("/metadata/ownerReferences/0/kind"),
        Some(&json!("Node"))
    );
    assert_eq!(
        st.pointer("/metadata/ownerReferences/0/uid"),
        Some(&json!(format!("uid-Node--{NODE}")))
    );
    assert_eq!(st.pointer("/spec/nodeName"), Some(&json!(NODE)));
    assert_eq!(condition(&st, "Ready").as_deref(), Some("True"));
    assert_eq!(condition(&st, "Degraded").as_deref(), Some("False"));
    let want = expected(&fake);
    assert_eq!(
        st.pointer("/status/counts/rules"),
        Some(&json!(want.rule_count()))
    );
    assert_eq!(st.pointer("/status/counts/podsIsolated"), Some(&json!(1)));
    assert_eq!(
        st.pointer("/status/rulesetHash"),
        Some(&json!(super::status::ruleset_hash(&want)))
    );
    // What an auditor compares it with.
    assert_eq!(
        st.pointer("/status/rulesetHash").and_then(Value::as_str),
        Some(compile_cli_with(&fake, true).trim_end())
    );
    let gen0 = st.pointer("/status/rulesetGeneration").cloned();
    every_printer_column_has_its_value(&st);
    assert!(
        rv_of("web").is_some_and(|rv| rv.parse::<u64>().is_ok()),
        "{web_rv}"
    );
    // No packet yet: the policy is idle.
    assert!(st
        .pointer("/status/idlePolicies")
        .and_then(Value::as_array)
        .is_some_and(|a| a.iter().any(|p| p["policy"] == "prod/web")));

    // A second policy selecting web-0: listed with its resourceVersion,
    // a new generation.
    let rv2 = fake
        .apply(policy("prod", "web2", "web", "cli", "b", json!(81)))
        .expect("policy");
    assert!(
        wait_for(LIMIT, || rv_of("web2") == Some(rv2.to_string())).await,
        "{:?}",
        fake.node_status(NODE)
    );
    let st = fake.node_status(NODE).expect("status object");
    assert_ne!(st.pointer("/status/rulesetGeneration").cloned(), gen0);

    // Packets on prod/web's first rule show as hits, and it is no longer idle.
    let chain = "ing_prod_web-0".to_string();
    agent.backend.state().hits.insert((chain, 0), 5);
    assert!(
        wait_for(LIMIT, || fake
            .node_status(NODE)
            .and_then(|st| enforced(&st, "prod", "web").cloned())
            .is_some_and(|p| p["ingressPackets"] == 5))
        .await,
        "{:?}",
        fake.node_status(NODE)
    );
    assert!(agent
        .metrics
        .encode()
        .contains(r#"nftpol_policy_packets_total{policy="prod/web",direction="ingress"} 5"#));

    let web2_series = r#"nftpol_policy_packets_total{policy="prod/web2",direction="ingress"}"#;
    assert!(agent.metrics.encode().contains(web2_series));

    // Deleted: gone from the status, and its series from /metrics.
    assert!(fake.delete(ApiKind::NetworkPolicy, "prod", "web2"));
    assert!(
        wait_for(LIMIT, || rv_of("web2").is_none()).await,
        "{:?}",
        fake.node_status(NODE)
    );
    assert!(
        wait_for(LIMIT, || !agent.metrics.encode().contains(web2_series)).await,
        "{}",
        agent.metrics.encode()
    );
    // How often a status goes out (never while nothing changes, at most
    // once a status interval) is asserted on virtual time in `loop_tests`.
    agent.stop().await;
}

/// Each of the CRD's printer columns (`kubectl get nnps`), evaluated as
/// kubectl does on the object the agent wrote, finds exactly one value of
/// the column's type: a column naming a field the status never sets
/// would show `<none>` on every node.
fn every_printer_column_has_its_value(st: &Value) {
    use jsonpath_rust::JsonPath;
    use kube::CustomResourceExt;
    let crd = nftpol_crds::status::NodeNetworkPolicyStatus::crd();
    let columns = crd.spec.versions[0]
        .additional_printer_columns
        .clone()
        .unwrap_or_default();
    assert_eq!(columns.len(), 9, "{columns:?}");
    for c in columns {
        let found = st
            .query(&format!("${}", c.json_path))
            .unwrap_or_else(|e| panic!("column {}: {}: {e}", c.name, c.json_path));
        let [value] = found.as_slice() else {
            panic!(
                "column {} ({}) finds {found:?} in the status object: {st}",
                c.name, c.json_path
            );
        };
        let typed = match c.type_.as_str() {
            "integer" => value.is_u64(),
            "string" => value.as_str().is_some_and(|s| !s.is_empty()),
            "date" => value
                .as_str()
                .is_some_and(|s| s.parse::<k8s_openapi::jiff::Timestamp>().is_ok()),
            other => panic!("column {}: type {other} not checked", c.name),
        };
        assert!(
            typed,
            "column {} ({}): {value} is not a {}",
            c.name, c.json_path, c.type_
        );
    }
}

/// The agent may start before its Node is registered (or fail to list
/// it): the status object is written without an owner then, and gets its
/// ownerReference with a later status, so the garbage collector still
/// deletes it with the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_object_gets_its_owner_once_the_node_appears() {
    let fake = FakeApi::start().await.expect("fake api");
    seed(&fake);
    let agent = start(Source::Kube(fake.client()), status_settings());
    agent.converges(&expected(&fake), LIMIT).await;
    assert!(
        wait_for(LIMIT, || fake.node_status(NODE).is_some()).await,
        "no status object"
    );
    let owner = || {
        fake.node_status(NODE)
            .and_then(|st| st.pointer("/metadata/ownerReferences/0/uid").cloned())
    };
    assert_eq!(owner(), None, "{:?}", fake.node_status(NODE));
    fake.apply(node_object()).expect("node");
    // A change gives the loop a new status to write.
    fake.apply(policy("prod", "web2", "web", "cli", "b", json!(81)))
        .expect("policy");
    assert!(
        wait_for(LIMIT, || owner()
            == Some(json!(format!("uid-Node--{NODE}"))))
        .await,
        "{:?}",
        fake.node_status(NODE)
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_object_turns_degraded_when_apply_fails() {
    let fake = FakeApi::start().await.expect("fake api");
    seed(&fake);
    fake.apply(node_object()).expect("node");
    let backend = Failing {
        inner: MemoryBackend::default(),
        fail: Default::default(),
    };
    let metrics = Arc::new(Metrics::new());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let options = Options {
        settings: status_settings(),
        metrics_addr: None,
        kernel_watch: false,
        revoke_denied_connections: false,
        verdict_log: None,
    };
    let task = tokio::spawn(run_with(
        Source::Kube(fake.client()),
        backend.clone(),
        options,
        metrics,
        async move {
            let _ = stopped.await;
        },
    ));
    let state = |ty: &str| fake.node_status(NODE).and_then(|st| condition(&st, ty));
    assert!(
        wait_for(LIMIT, || state("Ready").as_deref() == Some("True")).await,
        "{:?}",
        fake.node_status(NODE)
    );
    backend
        .fail
        .store(true, std::sync::atomic::Ordering::SeqCst);
    fake.apply(policy("prod", "web2", "web", "cli", "b", json!(81)))
        .expect("policy");
    assert!(
        wait_for(LIMIT, || state("Degraded").as_deref() == Some("True")).await,
        "{:?}",
        fake.node_status(NODE)
    );
    let st = fake.node_status(NODE).expect("status");
    assert_eq!(condition(&st, "Ready").as_deref(), Some("False"));
    let degraded = st
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().find(|c| c["type"] == "Degraded").cloned())
        .expect("Degraded");
    assert_eq!(degraded["reason"], "ApplyFailed");
    assert!(
        degraded["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{degraded}"
    );
    // The last good ruleset is still what the status describes.
    assert!(enforced(&st, "prod", "web2").is_none());
    // It recovers.
    backend
        .fail
        .store(false, std::sync::atomic::Ordering::SeqCst);
    assert!(
        wait_for(LIMIT, || state("Degraded").as_deref() == Some("False")
            && fake
                .node_status(NODE)
                .is_some_and(|st| enforced(&st, "prod", "web2").is_some()))
        .await,
        "{:?}",
        fake.node_status(NODE)
    );
    let _ = stop.send(());
    task.await.expect("agent task").expect("agent stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_objects_are_listed_in_the_status() {
    let fake = FakeApi::start().await.expect("fake api");
    seed(&fake);
    let mut bad = policy("prod", "bad", "web", "cli", "a", json!(80));
    bad["spec"]["ingress"][0]["ports"][0]["protocol"] = json!("ICMP");
    fake.apply(bad).expect("bad policy");
    let agent = start(Source::Kube(fake.client()), status_settings());
    assert!(
        wait_for(LIMIT, || fake
            .node_status(NODE)
            .and_then(|st| st.pointer("/status/invalidObjects/0").cloned())
            .is_some_and(
                |o| o["name"] == "bad" && o["kind"] == "NetworkPolicy"
            ))
        .await,
        "{:?}",
        fake.node_status(NODE)
    );
    let st = fake.node_status(NODE).expect("status");
    assert_eq!(st.pointer("/status/counts/invalidObjects"), Some(&json!(1)));
    assert!(st
        .pointer("/status/invalidObjects/0/error")
        .and_then(Value::as_str)
        .is_some_and(|e| e.contains("protocol")));
    agent.stop().await;
}

/// Lets `packets` go through the kernel rule of `chain` whose comment
/// starts with `comment`.
fn hit(agent: &Running, chain: &str, comment: &str, packets: u64) {
    let table = agent.table().expect("a table");
    let index = table.chains[chain]
        .rules
        .iter()
        .position(|r| r.comment.as_deref().is_some_and(|c| c.starts_with(comment)))
        .unwrap_or_else(|| panic!("no rule {comment:?} in {chain}"));
    agent
        .backend
        .state()
        .hits
        .insert((chain.to_string(), index), packets);
}

/// `--policy-metrics auto` with a cap of one policy, fed by the watch:
/// one series while the node enforces one policy, none (the totals only)
/// once a second policy arrives, and the first one's again when that
/// second one is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_policy_metrics_drop_to_the_totals_above_the_cap_and_come_back() {
    let fake = FakeApi::start().await.expect("fake api");
    seed(&fake);
    let settings = Settings {
        policy_metrics_max: 1,
        write_status: false,
        ..status_settings()
    };
    let agent = start(Source::Kube(fake.client()), settings);
    agent.converges(&expected(&fake), LIMIT).await;
    hit(&agent, "ing_prod_web-0", "prod/web ingress[0]", 3);
    let only_web = || {
        let s = policy_series(&agent.metrics);
        s.keys().all(|(p, _)| p == "prod/web")
            && s.get(&("prod/web".into(), "ingress".into())) == Some(&3)
    };
    assert!(
        wait_for(LIMIT, only_web).await,
        "{}",
        agent.metrics.encode()
    );

    fake.apply(policy("prod", "web2", "web", "cli", "b", json!(81)))
        .expect("policy");
    agent.converges(&expected(&fake), LIMIT).await;
    hit(&agent, "ing_prod_web-0", "prod/web2 ingress[0]", 4);
    assert!(
        wait_for(LIMIT, || policy_series(&agent.metrics).is_empty()).await,
        "{}",
        agent.metrics.encode()
    );
    // The totals still count every packet.
    assert!(
        wait_for(LIMIT, || agent.metrics.encode().contains(
            r#"nftpol_rule_packets_total{direction="ingress",verdict="allow"} 7"#
        ))
        .await,
        "{}",
        agent.metrics.encode()
    );

    assert!(fake.delete(ApiKind::NetworkPolicy, "prod", "web2"));
    agent.converges(&expected(&fake), LIMIT).await;
    assert!(
        wait_for(LIMIT, || {
            let s = policy_series(&agent.metrics);
            s.len() == 1 && s.contains_key(&("prod/web".into(), "ingress".into()))
        })
        .await,
        "{}",
        agent.metrics.encode()
    );
    agent.stop().await;
}

/// `--policy-metrics per-policy` with a cap of one: the first policy by
/// name keeps its series, the other one's packets go to `_other`, which
/// outlives the policy (a counter never goes back) while the policy's own
/// place is taken by nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_policy_metrics_sum_policies_beyond_the_cap_into_other() {
    let fake = FakeApi::start().await.expect("fake api");
    seed(&fake);
    fake.apply(policy("prod", "web2", "web", "cli", "b", json!(81)))
        .expect("policy");
    let settings = Settings {
        policy_metrics: super::status::PolicyMetrics::PerPolicy,
        policy_metrics_max: 1,
        write_status: false,
        ..status_settings()
    };
    let agent = start(Source::Kube(fake.client()), settings);
    agent.converges(&expected(&fake), LIMIT).await;
    hit(&agent, "ing_prod_web-0", "prod/web ingress[0]", 3);
    hit(&agent, "ing_prod_web-0", "prod/web2 ingress[0]", 4);
    let want = |other: u64| {
        [
            (("_other".to_string(), "ingress".to_string()), other),
            (("prod/web".to_string(), "ingress".to_string()), 3),
        ]
        .into_iter()
        .collect::<std::collections::BTreeMap<_, _>>()
    };
    assert!(
        wait_for(LIMIT, || policy_series(&agent.metrics) == want(4)).await,
        "{}",
        agent.metrics.encode()
    );
    hit(&agent, "ing_prod_web-0", "prod/web2 ingress[0]", 4 + 5);
    assert!(
        wait_for(LIMIT, || policy_series(&agent.metrics) == want(9)).await,
        "{}",
        agent.metrics.encode()
    );
    // The delete rewrites the chain, and the kernel's counters of the
    // rewritten rules start from zero (cleared first: a reading between
    // the two must not see the old counts at the new positions).
    agent.backend.state().hits.clear();
    assert!(fake.delete(ApiKind::NetworkPolicy, "prod", "web2"));
    agent.converges(&expected(&fake), LIMIT).await;
    // Give the loop a few counter readings after the delete: nothing moves.
    let readings_later = Instant::now() + Duration::from_millis(200);
    tokio::time::sleep_until(readings_later.into()).await;
    assert_eq!(policy_series(&agent.metrics), want(9));
    agent.stop().await;
}

/// Series are born when a policy's rules reach the node, so they go when
/// it stops selecting any local pod (here: its one local pod is
/// relabelled), and come back when it selects one again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_series_goes_when_the_policy_selects_no_local_pod() {
    let fake = FakeApi::start().await.expect("fake api");
    seed(&fake);
    let agent = start(Source::Kube(fake.client()), status_settings());
    agent.converges(&expected(&fake), LIMIT).await;
    let web = ("prod/web".to_string(), "ingress".to_string());
    assert!(
        wait_for(LIMIT, || policy_series(&agent.metrics).contains_key(&web)).await,
        "{}",
        agent.metrics.encode()
    );
    fake.apply(pod(
        "prod",
        "web-0",
        json!({"app": "other"}),
        NODE,
        "10.1.0.10",
    ))
    .expect("pod");
    agent.converges(&expected(&fake), LIMIT).await;
    assert!(
        wait_for(LIMIT, || policy_series(&agent.metrics).is_empty()).await,
        "{}",
        agent.metrics.encode()
    );
    fake.apply(pod(
        "prod",
        "web-0",
        json!({"app": "web"}),
        NODE,
        "10.1.0.10",
    ))
    .expect("pod");
    agent.converges(&expected(&fake), LIMIT).await;
    assert!(
        wait_for(LIMIT, || policy_series(&agent.metrics).contains_key(&web)).await,
        "{}",
        agent.metrics.encode()
    );
    agent.stop().await;
}

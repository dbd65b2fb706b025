//! Tests of the agent binary as a process. Without root: `--dry-run` in
//! manifests mode serves /healthz, /readyz and /metrics and exits 0 on
//! SIGTERM. As root, against the real kernel: `nftpol agent
//! --manifests DIR` runs inside a network namespace created for the test
//! (prefix `nftpol-t-`, removed by a Drop guard, never connected to the
//! host's namespace). The kernel table must follow file changes within a
//! bounded time, be restored after an external `nft delete table`, and
//! stay in place after SIGTERM. The reference for "right" is `nftpol
//! compile` of the same directory, loaded with `nft -f` into a second
//! namespace and listed the same way.
//!
//! The root tests skip (with a visible line) when not root or when
//! `ip`/`nft` are missing; under CI (`CI=true`) that skip is a failure.

use nftpol_test_support::{require_root, Netns};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_nftpol");
/// How long the kernel may take to follow a change: a bound only a broken
/// agent reaches (a healthy one takes milliseconds, printed as "after"),
/// far enough out that a loaded 2-core machine never does. Waits return
/// as soon as the change shows, so passing runs do not pay for it.
const FOLLOW: Duration = Duration::from_secs(30);

/// `nft list table inet nftpol` in `ns` with its sets, maps and chains in
/// name order (the kernel lists them in creation order, which differs
/// between a fresh `nft -f` and incremental batches), or `None` when the
/// table is absent.
fn table(ns: &Netns) -> Option<String> {
    // The whole ruleset: `inet nftpol` and the `netdev nftpol` guard are
    // all a scratch namespace holds.
    let out = ns.nft(&["list", "ruleset"]);
    let text = String::from_utf8_lossy(&out.stdout);
    (out.status.success() && text.contains("table inet nftpol")).then(|| normalize(&text))
}

/// `nft args…` in `ns`, which must succeed.
fn nft(ns: &Netns, args: &[&str]) {
    let out = ns.nft(args);
    assert!(
        out.status.success(),
        "nft {args:?} failed in {}: {}",
        ns.name(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Sorts the top-level blocks of a table listing; rule order inside a
/// chain is kept (it matters).
fn normalize(listing: &str) -> String {
    let mut blocks: Vec<String> = Vec::new();
    let mut current: Option<String> = None;
    for line in listing.lines() {
        let top = line.starts_with('\t') && !line.starts_with("\t\t");
        match &mut current {
            Some(b) => {
                b.push_str(line);
                b.push('\n');
                if top && line.trim() == "}" {
                    blocks.extend(current.take());
                }
            }
            None if top && line.trim_end().ends_with('{') => {
                current = Some(format!("{line}\n"));
            }
            None => {}
        }
    }
    blocks.sort();
    blocks.concat()
}

/// A scratch directory, removed on drop.
fn temp_dir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("nftpol-t-agent-{tag}-"))
        .tempdir()
        .expect("create temp dir")
}

/// The agent process, killed on drop if still running.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_agent(ns: &Netns, dir: &Path, drift: &str) -> Agent {
    let child = ns
        .cmd(BIN)
        .args(["agent", "--node-name", "node-1", "--manifests"])
        .arg(dir)
        .args([
            "--metrics-addr",
            "127.0.0.1:9464",
            "--drift-interval",
            drift,
        ])
        .env("RUST_LOG", "info")
        .spawn()
        .expect("spawn nftpol agent");
    Agent(child)
}

/// What the kernel holds after `nft -f` of `nftpol compile DIR`, listed
/// from a scratch namespace.
fn reference(dir: &Path) -> String {
    reference_with(dir, &[])
}

/// [`reference`] compiled with `extra` arguments (`--pod-interfaces`).
fn reference_with(dir: &Path, extra: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(["compile", "--node-name", "node-1", "--manifests"])
        .arg(dir)
        .args(extra)
        .output()
        .expect("nftpol compile");
    assert!(out.status.success(), "compile failed");
    let scratch = Netns::create("ref");
    let mut child = scratch
        .cmd("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("nft -f");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&out.stdout)
        .expect("write script");
    assert!(
        child.wait().expect("nft").success(),
        "nft -f rejected compile output"
    );
    let table = table(&scratch).expect("reference table");
    assert!(
        table.contains("chain forward {"),
        "normalized listing lost its blocks: {table}"
    );
    table
}

/// Waits until the namespace's table equals `want`.
fn follows(ns: &Netns, want: &str, limit: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        let have = table(ns);
        if have.as_deref() == Some(want) {
            return t0.elapsed();
        }
        if t0.elapsed() > limit {
            panic!(
                "table did not follow within {limit:?}\nwant:\n{want}\nhave:\n{}",
                have.unwrap_or_else(|| "<no table>".into())
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: prod, labels: {team: a}}
---
apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: prod, labels: {app: web}}
spec: {nodeName: node-1, containers: [{name: c, image: x, ports: [{name: http, containerPort: 8080}]}]}
status: {podIP: 10.9.1.10, podIPs: [{ip: 10.9.1.10}, {ip: "fd00:9::10"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: cli-0, namespace: prod, labels: {app: cli}}
spec: {nodeName: node-2, containers: [{name: c, image: x}]}
status: {podIP: 10.9.2.10, podIPs: [{ip: 10.9.2.10}]}
"#;

const POLICY: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: cli}}}]
    ports: [{port: http}]
"#;

#[test]
fn agent_follows_files_repairs_drift_and_survives_sigterm() {
    require_root!();
    let dir = temp_dir("dir");
    std::fs::write(dir.path().join("cluster.yaml"), CLUSTER).expect("write");
    let ns = Netns::create("agent");
    let agent = start_agent(&ns, dir.path(), "500ms");
    let took = follows(&ns, &reference(dir.path()), FOLLOW);
    eprintln!("initial table after {took:?}");

    // A new file with a policy.
    std::fs::write(dir.path().join("policy.yaml"), POLICY).expect("write");
    let took = follows(&ns, &reference(dir.path()), FOLLOW);
    eprintln!("new policy file enforced after {took:?}");

    // An edit: a second peer pod appears.
    let more = format!(
        "{CLUSTER}---\n{}",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: cli-1, namespace: prod, labels: {app: cli}}\n\
spec: {nodeName: node-2, containers: [{name: c, image: x}]}\n\
status: {podIP: 10.9.2.11, podIPs: [{ip: 10.9.2.11}]}\n"
    );
    std::fs::write(dir.path().join("cluster.yaml"), more).expect("write");
    let want = reference(dir.path());
    let took = follows(&ns, &want, FOLLOW);
    eprintln!("edited file enforced after {took:?}");

    // Drift: someone deletes our table; restored within a drift period.
    nft(&ns, &["delete", "table", "inet", "nftpol"]);
    let took = follows(&ns, &want, FOLLOW);
    eprintln!("deleted table restored after {took:?}");
    // Someone flushes one chain.
    nft(&ns, &["flush", "chain", "inet", "nftpol", "forward"]);
    follows(&ns, &want, FOLLOW);

    // SIGTERM: the agent exits 0 and the rules stay.
    let mut agent = agent;
    let pid = agent.0.id() as i32;
    // SAFETY: kill(2) on our own child has no memory effects. `ip netns
    // exec` execs the agent, so the pid is the agent's.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = agent.0.try_wait().expect("wait") {
            break st;
        }
        assert!(t0.elapsed() < FOLLOW, "agent ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "agent exit status {status:?}");
    assert_eq!(
        table(&ns).as_deref(),
        Some(want.as_str()),
        "table left in place"
    );
}

fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .is_err()
    {
        return String::new();
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn dry_run_agent_serves_health_and_metrics_and_exits_on_sigterm() {
    let dir = temp_dir("dry");
    std::fs::write(
        dir.path().join("cluster.yaml"),
        format!("{CLUSTER}---\n{POLICY}"),
    )
    .expect("write");
    // Port 0, and the port read back from the agent's own log line: a
    // free port found first and handed over could be taken in between
    // by any socket of this (shared, host) namespace, and was.
    let child = Command::new(BIN)
        .args([
            "--log-format",
            "json",
            "agent",
            "--dry-run",
            "--node-name",
            "node-1",
            "--manifests",
        ])
        .arg(dir.path())
        .args(["--metrics-addr", "127.0.0.1:0"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn nftpol agent");
    let mut agent = Agent(child);
    let stderr = agent.0.stderr.take().expect("agent stderr");
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    // Drains the log as it comes (a full pipe would stall the agent) and
    // passes on the address the metrics server bound.
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut logs = String::new();
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.contains("serving /metrics") {
                let addr = serde_json::from_str::<serde_json::Value>(&line)
                    .ok()
                    .and_then(|v| v.pointer("/fields/addr")?.as_str()?.parse().ok());
                let _ = addr_tx.send(addr);
            }
            logs.push_str(&line);
            logs.push('\n');
        }
        logs
    });
    let addr: Option<std::net::SocketAddr> = addr_rx
        .recv_timeout(FOLLOW)
        .expect("the agent never said where it serves /metrics");
    let port = addr.expect("the serving line names its address").port();
    let t0 = Instant::now();
    while !http_get(port, "/readyz").starts_with("HTTP/1.0 200") {
        assert!(t0.elapsed() < FOLLOW, "agent never became ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(http_get(port, "/healthz").starts_with("HTTP/1.0 200"));
    let metrics = http_get(port, "/metrics");
    for want in [
        "nftpol_reconciles_total{result=\"ok\"} 1",
        "nftpol_watched_objects{kind=\"pod\"} 2",
        "nftpol_watched_objects{kind=\"networkpolicy\"} 1",
        "nftpol_programming_latency_seconds_count 1",
        "nftpol_kernel_chains ",
    ] {
        assert!(metrics.contains(want), "{want:?} missing from\n{metrics}");
    }
    // SAFETY: kill(2) on our own child has no memory effects.
    unsafe {
        libc::kill(agent.0.id() as i32, libc::SIGTERM);
    }
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = agent.0.try_wait().expect("wait") {
            break st;
        }
        assert!(t0.elapsed() < FOLLOW, "agent ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status {status:?}");
    let logs = reader.join().expect("log reader");
    // --log-format json: every log line is a JSON object.
    let first = logs.lines().next().unwrap_or_default();
    assert!(
        first.starts_with('{') && first.contains("\"level\""),
        "{logs}"
    );
    assert!(logs.contains("initial sync complete"), "{logs}");
}

#[test]
fn a_change_after_an_external_table_delete_is_still_applied() {
    require_root!();
    let dir = temp_dir("gone");
    std::fs::write(dir.path().join("cluster.yaml"), CLUSTER).expect("write");
    let ns = Netns::create("gone");
    // No drift check during the test: only the change path can recover.
    let _agent = start_agent(&ns, dir.path(), "1h");
    follows(&ns, &reference(dir.path()), FOLLOW);
    nft(&ns, &["delete", "table", "inet", "nftpol"]);
    std::fs::write(dir.path().join("policy.yaml"), POLICY).expect("write");
    // The incremental batch is rejected (the table is gone); the applier
    // reads the kernel back and recreates the table in the same attempt.
    let took = follows(&ns, &reference(dir.path()), FOLLOW);
    eprintln!("change after external delete enforced after {took:?}");
}

/// What `nftpol compile` makes of the fake API server's objects, as the
/// kernel lists it.
fn reference_of(fake: &nftpol_test_support::fakeapi::FakeApi) -> String {
    let dir = temp_dir("dump");
    std::fs::write(dir.path().join("dump.yaml"), fake.dump()).expect("write dump");
    reference(dir.path())
}

fn metric(port: u16, name: &str) -> Option<f64> {
    let text = http_get(port, "/metrics");
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The agent in Kubernetes mode, as a process in a node namespace, against
/// the fake API server (real HTTP list/watch) serving inside that same
/// namespace: initial sync, every kind of change, a relist after 410 Gone
/// with a deletion missed meanwhile, drift repair, and a restart during
/// which the table never changes and no batch is sent.
#[test]
fn kube_mode_agent_against_the_fake_api_server() {
    use nftpol_test_support::fakeapi::{ApiKind, FakeApi};
    use serde_json::json;
    require_root!();
    let ns = Netns::create("kube");
    ns.enter().expect("enter the test namespace");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let fake = rt.block_on(FakeApi::start()).expect("fake api");
    fake.load_yaml(&format!("{CLUSTER}---\n{POLICY}"))
        .expect("load");
    let dir = temp_dir("kube");
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: f\n  cluster: {{server: \"http://{}\"}}\n\
users:\n- name: f\n  user: {{}}\ncontexts:\n- name: f\n  context: {{cluster: f, user: f}}\n\
current-context: f\n",
            fake.addr
        ),
    )
    .expect("kubeconfig");
    let start = || {
        let child = Command::new(BIN)
            .args(["agent", "--node-name", "node-1", "--kubeconfig"])
            .arg(&kubeconfig)
            .args([
                "--metrics-addr",
                "127.0.0.1:9464",
                "--drift-interval",
                "500ms",
            ])
            .env("RUST_LOG", "info")
            .spawn()
            .expect("spawn agent");
        Agent(child)
    };
    let pod = |name: &str, app: &str, node: &str, ip: &str| {
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "prod", "labels": {"app": app}},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x",
                "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"podIP": ip, "podIPs": [{"ip": ip}]}})
    };

    let agent = start();
    let took = follows(&ns, &reference_of(&fake), FOLLOW);
    eprintln!("initial sync programmed after {took:?}");
    // The status object it writes names the ruleset the kernel holds by
    // the hash `nftpol compile --hash` prints for the same objects.
    let want_hash = {
        let dump = temp_dir("hash");
        std::fs::write(dump.path().join("dump.yaml"), fake.dump()).expect("write dump");
        let out = Command::new(BIN)
            .args(["compile", "--node-name", "node-1", "--hash", "--manifests"])
            .arg(dump.path())
            .output()
            .expect("nftpol compile --hash");
        assert!(out.status.success(), "compile --hash failed");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let status_hash = || {
        fake.node_status("node-1")
            .and_then(|st| st.pointer("/status/rulesetHash").cloned())
    };
    let t0 = Instant::now();
    while status_hash() != Some(json!(want_hash)) {
        assert!(
            t0.elapsed() < FOLLOW,
            "status {:?}, compile --hash {want_hash}",
            fake.node_status("node-1")
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // A change of each kind.
    fake.apply(pod("cli-1", "cli", "node-2", "10.9.2.11"))
        .expect("apply");
    follows(&ns, &reference_of(&fake), FOLLOW);
    fake.apply(pod("web-1", "web", "node-1", "10.9.1.11"))
        .expect("apply");
    follows(&ns, &reference_of(&fake), FOLLOW);
    fake.apply(
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "cli-egress", "namespace": "prod"},
        "spec": {"podSelector": {}, "policyTypes": ["Egress"],
            "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"team": "a"}}}]}]}}),
    )
    .expect("apply");
    follows(&ns, &reference_of(&fake), FOLLOW);
    fake.apply(json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "prod", "labels": {"team": "b"}}}))
        .expect("apply");
    follows(&ns, &reference_of(&fake), FOLLOW);
    assert!(fake.delete(ApiKind::NetworkPolicy, "prod", "web"));
    let took = follows(&ns, &reference_of(&fake), FOLLOW);
    eprintln!("policy deletion enforced after {took:?}");

    // 410 Gone: a pod deleted while the watches are down is only seen by
    // the relist.
    fake.hold_lists(&ApiKind::ALL);
    fake.expire_watches();
    assert!(fake.delete(ApiKind::Pod, "prod", "web-1"));
    fake.release_lists();
    let took = follows(&ns, &reference_of(&fake), FOLLOW);
    eprintln!("relist after 410 enforced after {took:?}");

    // Drift.
    let want = reference_of(&fake);
    nft(&ns, &["delete", "table", "inet", "nftpol"]);
    follows(&ns, &want, FOLLOW);
    assert!(metric(9464, "nftpol_drift_repairs_total").unwrap_or(0.0) >= 1.0);

    // Restart: SIGTERM, then a new agent whose pod list hangs. The table
    // must stay exactly as it is the whole time, and the new agent must
    // send no batch once it has listed everything.
    let mut agent = agent;
    // SAFETY: kill(2) on our own child has no memory effects.
    unsafe {
        libc::kill(agent.0.id() as i32, libc::SIGTERM);
    }
    let st = agent.0.wait().expect("wait");
    assert!(st.success(), "{st:?}");
    fake.hold_lists(&[ApiKind::Pod]);
    let _again = start();
    // Until the new agent has listed every kind but the pods (whose list
    // hangs). Whether it touched the table at any time shows in its batch
    // count below.
    let listed = |kind: &str| {
        metric(
            9464,
            &format!("nftpol_watch_events_total{{kind=\"{kind}\",event=\"listed\"}}"),
        ) == Some(1.0)
    };
    let t0 = Instant::now();
    while !ApiKind::ALL
        .iter()
        .filter(|k| **k != ApiKind::Pod)
        .all(|k| listed(&k.kind().to_ascii_lowercase()))
    {
        assert!(
            t0.elapsed() < FOLLOW,
            "new agent never listed the other kinds"
        );
        assert_eq!(
            table(&ns).as_deref(),
            Some(want.as_str()),
            "table changed during restart"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        !http_get(9464, "/readyz").starts_with("HTTP/1.0 200"),
        "not ready before the pods are listed"
    );
    fake.release_lists();
    let t0 = Instant::now();
    while !http_get(9464, "/readyz").starts_with("HTTP/1.0 200") {
        assert!(t0.elapsed() < FOLLOW, "new agent never ready");
        assert_eq!(
            table(&ns).as_deref(),
            Some(want.as_str()),
            "table changed during restart"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(table(&ns).as_deref(), Some(want.as_str()));
    assert_eq!(
        metric(9464, "nftpol_batch_messages_count"),
        Some(0.0),
        "a restart with nothing changed sends no batch"
    );
    // And it follows changes.
    fake.apply(pod("cli-2", "cli", "node-2", "10.9.2.12"))
        .expect("apply");
    follows(&ns, &reference_of(&fake), FOLLOW);
    drop(fake);
}

/// Ways someone else can change the table the agent keeps, as `nft -f`
/// scripts against the table `CLUSTER` + `POLICY` compile to
/// (`pod4_5cd47f554f1d5c4d` is the set of the policy's peers, pods
/// `app: cli` of namespace prod, named by that definition's hash).
const TAMPERINGS: [(&str, &str); 13] = [
    ("dormant flag", "add table inet nftpol { flags dormant; }"),
    (
        "base chain policy",
        "add chain inet nftpol forward { policy drop; }",
    ),
    (
        "base chain priority",
        "delete chain inet nftpol forward\n\
         add chain inet nftpol forward { type filter hook forward priority 10; policy accept; }",
    ),
    (
        "rule inserted",
        "insert rule inet nftpol ing_prod_web-0 accept",
    ),
    (
        "element added",
        "add element inet nftpol pod4_5cd47f554f1d5c4d { 10.66.6.6 }",
    ),
    (
        "element removed",
        "delete element inet nftpol pod4_5cd47f554f1d5c4d { 10.9.2.10 }",
    ),
    (
        "chain deleted",
        "delete element inet nftpol ingress_v4 { 10.9.1.10 }\n\
         delete element inet nftpol ingress_v6 { fd00:9::10 }\n\
         delete chain inet nftpol ing_prod_web-0",
    ),
    ("table deleted", "delete table inet nftpol"),
    ("foreign object", "add counter inet nftpol evil"),
    // The guard of web-0's interface (`GUARD_INTERFACES`).
    ("guard table deleted", "delete table netdev nftpol"),
    (
        "guard dormant flag",
        "add table netdev nftpol { flags dormant; }",
    ),
    (
        "guard chain deleted",
        "delete chain netdev nftpol l2_prod_web-0",
    ),
    (
        "guard rule inserted",
        "insert rule netdev nftpol l2_prod_web-0 accept",
    ),
];

/// The interface map the tampering agent is given, so that it keeps a
/// guard table (the device need not exist).
const GUARD_INTERFACES: &str = "prod/web-0: vpweb0\n";

/// Runs `script` with `nft -f` inside `ns`.
fn nft_script(ns: &Netns, script: &str) {
    use std::io::Write;
    let mut child = ns
        .cmd("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("nft -f");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{script}\n").as_bytes())
        .expect("write script");
    assert!(child.wait().expect("nft").success(), "nft -f {script:?}");
}

/// The raw `nft list table` text (flags and objects included).
fn raw_table(ns: &Netns) -> String {
    let out = ns
        .cmd("nft")
        .args(["list", "ruleset"])
        .output()
        .expect("run nft");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until the table is `want` again, with no flags and no object
/// the normalized listing would not show.
fn repaired(ns: &Netns, want: &str, what: &str) -> Duration {
    let t0 = Instant::now();
    loop {
        let raw = raw_table(ns);
        let clean = !raw.contains("dormant") && !raw.contains("counter evil");
        if clean && normalize(&raw) == want {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < FOLLOW,
            "{what}: not repaired within {FOLLOW:?}\nwant:\n{want}\nhave:\n{raw}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The agent with its log in `log`, serving metrics on 127.0.0.1:9464
/// inside `ns`.
fn start_logged_agent(ns: &Netns, dir: &Path, extra: &[&str], log: &Path) -> Agent {
    let file = std::fs::File::create(log).expect("log file");
    let child = ns
        .cmd(BIN)
        .args(["agent", "--node-name", "node-1", "--manifests"])
        .arg(dir)
        .args(["--metrics-addr", "127.0.0.1:9464"])
        .args(extra)
        .env("RUST_LOG", "info")
        .stderr(file)
        .spawn()
        .expect("spawn nftpol agent");
    Agent(child)
}

/// Runs every tampering against an agent started with `extra` and checks
/// each is repaired, logged and counted.
fn agent_repairs_every_tampering(tag: &str, extra: &[&str]) {
    let dir = temp_dir(tag);
    std::fs::write(dir.path().join("cluster.yaml"), CLUSTER).expect("write");
    std::fs::write(dir.path().join("policy.yaml"), POLICY).expect("write");
    let ifdir = temp_dir(&format!("{tag}-if"));
    let ifmap = ifdir.path().join("interfaces.yaml");
    std::fs::write(&ifmap, GUARD_INTERFACES).expect("write");
    let ifmap = ifmap.to_str().expect("utf-8 path");
    let ns = Netns::create(tag);
    let log = dir.path().join("agent.log");
    let mut args = vec!["--pod-interfaces", ifmap];
    args.extend_from_slice(extra);
    let _agent = start_logged_agent(&ns, dir.path(), &args, &log);
    let want = reference_with(dir.path(), &["--pod-interfaces", ifmap]);
    assert!(want.contains("l2_prod_web-0"), "no guard chain: {want}");
    follows(&ns, &want, FOLLOW);
    for (what, script) in TAMPERINGS {
        nft_script(&ns, script);
        let took = repaired(&ns, &want, what);
        eprintln!("{tag}: {what} repaired after {took:?}");
    }
    ns.enter().expect("enter the test namespace");
    let t0 = Instant::now();
    let repairs = loop {
        // The counter is bumped right after the batch that the listing
        // already shows.
        let n = metric(9464, "nftpol_drift_repairs_total").unwrap_or(0.0);
        if n >= TAMPERINGS.len() as f64 || t0.elapsed() > FOLLOW {
            break n;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        repairs >= TAMPERINGS.len() as f64,
        "{tag}: {repairs} repairs counted"
    );
    let logs = std::fs::read_to_string(&log).expect("read log");
    let warned = logs.matches("drifted from the desired ruleset").count();
    assert!(
        warned >= TAMPERINGS.len(),
        "{tag}: {warned} repair warnings\n{logs}"
    );
    assert!(
        logs.contains("~1 table"),
        "the dormant flag is repaired in place: {logs}"
    );
}

/// With the drift check an hour away, only the kernel's notifications
/// can bring the repair.
#[test]
fn agent_repairs_tampering_when_the_kernel_reports_it() {
    require_root!();
    agent_repairs_every_tampering("notify", &["--drift-interval", "1h"]);
}

/// Without notifications, the periodic drift check repairs everything.
#[test]
fn agent_repairs_tampering_at_the_drift_check() {
    require_root!();
    agent_repairs_every_tampering(
        "interval",
        &["--no-kernel-watch", "--drift-interval", "300ms"],
    );
}

/// /readyz says when nothing is enforced even before any repair: no
/// notifications and no drift check during the test.
#[test]
fn readyz_reports_a_dormant_or_missing_table() {
    require_root!();
    let dir = temp_dir("ready");
    std::fs::write(dir.path().join("cluster.yaml"), CLUSTER).expect("write");
    let ns = Netns::create("ready");
    let log = dir.path().join("agent.log");
    let _agent = start_logged_agent(
        &ns,
        dir.path(),
        &["--no-kernel-watch", "--drift-interval", "1h"],
        &log,
    );
    follows(&ns, &reference(dir.path()), FOLLOW);
    ns.enter().expect("enter the test namespace");
    let t0 = Instant::now();
    while !http_get(9464, "/readyz").starts_with("HTTP/1.0 200") {
        assert!(t0.elapsed() < FOLLOW, "never ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    ns.nft(&["add", "table", "inet", "nftpol", "{ flags dormant; }"]);
    let r = http_get(9464, "/readyz");
    assert!(
        r.starts_with("HTTP/1.0 503") && r.contains("dormant"),
        "{r}"
    );
    ns.nft(&["delete", "table", "inet", "nftpol"]);
    let r = http_get(9464, "/readyz");
    assert!(r.starts_with("HTTP/1.0 503") && r.contains("absent"), "{r}");
}

/// The agent's own batches are never taken for someone else's: with
/// interface discovery on (its rtnetlink dumps open and close sockets of
/// their own between batches), a run of changes raises no "someone else
/// changed" warning, leaves /readyz ready and counts no repair, while a
/// real change by `nft` in the same namespace is reported (naming `nft`'s
/// netlink port) and repaired. The foreign change comes last: the watcher
/// reads notifications in commit order, so once its warning is logged
/// every notification of the agent's own batches has been judged.
#[test]
fn own_batches_are_not_reported_as_tampering() {
    require_root!();
    let dir = temp_dir("own");
    std::fs::write(dir.path().join("cluster.yaml"), CLUSTER).expect("write");
    std::fs::write(dir.path().join("policy.yaml"), POLICY).expect("write");
    let ns = Netns::create("own");
    let log = dir.path().join("agent.log");
    // No --pod-interfaces: the agent discovers pod interfaces over
    // rtnetlink before each compile.
    let _agent = start_logged_agent(&ns, dir.path(), &["--drift-interval", "1h"], &log);
    follows(&ns, &reference(dir.path()), FOLLOW);
    let mut cluster = CLUSTER.to_string();
    for i in 1..=3 {
        cluster.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\n\
metadata: {{name: cli-{i}, namespace: prod, labels: {{app: cli}}}}\n\
spec: {{nodeName: node-2, containers: [{{name: c, image: x}}]}}\n\
status: {{podIP: 10.9.2.1{i}, podIPs: [{{ip: 10.9.2.1{i}}}]}}\n"
        ));
        std::fs::write(dir.path().join("cluster.yaml"), &cluster).expect("write");
        follows(&ns, &reference(dir.path()), FOLLOW);
    }
    let want = reference(dir.path());
    let mut nft = ns
        .cmd("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("nft -f");
    // `ip netns exec` execs nft, whose one netlink socket takes its pid
    // as port id.
    let nft_port = nft.id();
    {
        use std::io::Write;
        nft.stdin
            .take()
            .expect("stdin")
            .write_all(b"add element inet nftpol pod4_5cd47f554f1d5c4d { 10.66.6.6 }\n")
            .expect("write script");
    }
    assert!(nft.wait().expect("nft").success(), "nft add element");
    repaired(&ns, &want, "element added");
    let warning = "someone else changed the nftpol table";
    let t0 = Instant::now();
    let logs = loop {
        let logs = std::fs::read_to_string(&log).expect("read log");
        if logs.contains(warning) || t0.elapsed() > FOLLOW {
            break logs;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let warnings: Vec<&str> = logs.lines().filter(|l| l.contains(warning)).collect();
    assert!(
        warnings.len() == 1 && warnings[0].contains(&format!("by netlink port {nft_port}")),
        "one warning, for nft (port {nft_port}), expected:\n{logs}"
    );
    ns.enter().expect("enter the test namespace");
    let t0 = Instant::now();
    while metric(9464, "nftpol_drift_repairs_total") != Some(1.0) {
        assert!(
            t0.elapsed() < FOLLOW,
            "{:?} repairs counted, 1 expected",
            metric(9464, "nftpol_drift_repairs_total")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = http_get(9464, "/readyz");
    assert!(r.starts_with("HTTP/1.0 200"), "{r}");
}

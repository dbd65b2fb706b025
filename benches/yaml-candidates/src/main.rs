//! Measures YAML crates on nftpol's inputs: a large kubectl-style dump and
//! hostile nesting. Each candidate parses multi-document text into one
//! serde_json::Value per document, as the manifest loader does; serde-saphyr
//! runs with the budget nftpol sets (policy-compiler/src/manifest.rs).
//! `cargo run --release -- serde-saphyr dump` measures one candidate on one
//! input (both arguments match name prefixes).

use serde::Deserialize;
use std::fmt::Write;
use std::time::{Duration, Instant};

type Out = Result<usize, String>;

fn yaml(text: &str) -> Out {
    let mut n = 0;
    for d in serde_yaml::Deserializer::from_str(text) {
        serde_json::Value::deserialize(d).map_err(|e| e.to_string())?;
        n += 1;
    }
    Ok(n)
}
fn ng(text: &str) -> Out {
    let mut n = 0;
    for d in serde_yaml_ng::Deserializer::from_str(text) {
        serde_json::Value::deserialize(d).map_err(|e| e.to_string())?;
        n += 1;
    }
    Ok(n)
}
fn norway(text: &str) -> Out {
    let mut n = 0;
    for d in serde_norway::Deserializer::from_str(text) {
        serde_json::Value::deserialize(d).map_err(|e| e.to_string())?;
        n += 1;
    }
    Ok(n)
}
fn saphyr(text: &str) -> Out {
    let mut b = serde_saphyr::Budget::default();
    b.max_depth = 64;
    b.max_aliases = 1000;
    b.max_recorded_anchor_events = 100_000;
    b.max_nodes = usize::MAX;
    b.max_events = usize::MAX;
    b.max_documents = usize::MAX;
    b.max_total_scalar_bytes = 256 << 20;
    let mut o = serde_saphyr::Options::default();
    o.budget = Some(b);
    o.with_snippet = false;
    o.strict_booleans = true;
    serde_saphyr::from_multiple_with_options::<serde_json::Value>(text, o)
        .map(|v| v.len())
        .map_err(|e| e.to_string())
}

fn dump(pods: usize, policies: usize, namespaces: usize) -> String {
    let mut s = String::from("apiVersion: v1\nkind: List\nitems:\n");
    for n in 0..namespaces {
        write!(s, "- apiVersion: v1\n  kind: Namespace\n  metadata:\n    creationTimestamp: \"2026-01-01T00:00:00Z\"\n    labels:\n      kubernetes.io/metadata.name: ns-{n}\n      team: t{t}\n    name: ns-{n}\n    resourceVersion: \"{n}01\"\n    uid: 0000-{n}\n  spec:\n    finalizers:\n    - kubernetes\n  status:\n    phase: Active\n", t = n % 7).unwrap();
    }
    for p in 0..pods {
        let ns = p % namespaces;
        write!(s, "- apiVersion: v1\n  kind: Pod\n  metadata:\n    annotations:\n      kubectl.kubernetes.io/restartedAt: \"2026-01-01T00:00:00Z\"\n    creationTimestamp: \"2026-01-01T00:00:00Z\"\n    generateName: app-{a}-\n    labels:\n      app: app-{a}\n      pod-template-hash: 5d4f8\n      tier: \"{tier}\"\n    managedFields:\n    - apiVersion: v1\n      fieldsType: FieldsV1\n      fieldsV1:\n        f:metadata:\n          f:generateName: {{}}\n          f:labels:\n            .: {{}}\n            f:app: {{}}\n        f:spec:\n          f:containers:\n            k:{{\"name\":\"main\"}}:\n              .: {{}}\n              f:image: {{}}\n              f:ports:\n                .: {{}}\n                k:{{\"containerPort\":8080,\"protocol\":\"TCP\"}}:\n                  .: {{}}\n                  f:containerPort: {{}}\n                  f:name: {{}}\n      manager: kube-controller-manager\n      operation: Update\n      time: \"2026-01-01T00:00:00Z\"\n    name: app-{a}-{p}\n    namespace: ns-{ns}\n    ownerReferences:\n    - apiVersion: apps/v1\n      blockOwnerDeletion: true\n      controller: true\n      kind: ReplicaSet\n      name: app-{a}-5d4f8\n      uid: 1111-{p}\n    resourceVersion: \"{p}\"\n    uid: 2222-{p}\n  spec:\n    containers:\n    - env:\n      - name: MODE\n        value: production\n      image: registry.example/app:1.2.3\n      imagePullPolicy: IfNotPresent\n      name: main\n      ports:\n      - containerPort: 8080\n        name: http\n        protocol: TCP\n      - containerPort: 9090\n        name: metrics\n        protocol: TCP\n      resources:\n        requests:\n          cpu: 100m\n          memory: 128Mi\n      terminationMessagePath: /dev/termination-log\n      volumeMounts:\n      - mountPath: /var/run/secrets/kubernetes.io/serviceaccount\n        name: kube-api-access\n        readOnly: true\n    dnsPolicy: ClusterFirst\n    nodeName: node-{node:03}\n    restartPolicy: Always\n    serviceAccountName: default\n    tolerations:\n    - effect: NoExecute\n      key: node.kubernetes.io/not-ready\n      operator: Exists\n      tolerationSeconds: 300\n  status:\n    conditions:\n    - lastTransitionTime: \"2026-01-01T00:00:00Z\"\n      status: \"True\"\n      type: Ready\n    - lastTransitionTime: \"2026-01-01T00:00:00Z\"\n      status: \"True\"\n      type: PodScheduled\n    hostIP: 192.168.0.{h}\n    phase: Running\n    podIP: 10.{b}.{c}.{d}\n    podIPs:\n    - ip: 10.{b}.{c}.{d}\n    qosClass: Burstable\n    startTime: \"2026-01-01T00:00:00Z\"\n",
            a = p % 50, tier = p % 3, node = p % 100, h = p % 250, b = p >> 16 & 255, c = p >> 8 & 255, d = p & 255).unwrap();
    }
    for i in 0..policies {
        write!(s, "- apiVersion: networking.k8s.io/v1\n  kind: NetworkPolicy\n  metadata:\n    name: pol-{i}\n    namespace: ns-{ns}\n  spec:\n    podSelector:\n      matchLabels:\n        app: app-{a}\n    policyTypes: [Ingress, Egress]\n    ingress:\n    - from:\n      - namespaceSelector:\n          matchLabels: {{team: t{t}}}\n        podSelector:\n          matchExpressions:\n          - {{key: tier, operator: In, values: [\"0\", \"1\"]}}\n      - ipBlock:\n          cidr: 10.{i8}.0.0/16\n          except: [10.{i8}.1.0/24]\n      ports:\n      - {{port: http, protocol: TCP}}\n      - {{port: 9000, endPort: 9100}}\n    egress:\n    - to:\n      - namespaceSelector: {{}}\n        podSelector: {{matchLabels: {{k8s-app: kube-dns}}}}\n      ports:\n      - {{port: 53, protocol: UDP}}\n      - {{port: 53, protocol: TCP}}\n", ns = i % namespaces, a = i % 50, t = i % 7, i8 = i % 256).unwrap();
    }
    s
}

fn block_nest(bytes: usize) -> String {
    let mut s = String::from("apiVersion: v1\nkind: ConfigMap\ndata:\n");
    let mut d = 1;
    while s.len() < bytes {
        s.push_str(&"  ".repeat(d));
        s.push_str("a:\n");
        d += 1;
    }
    s.push_str(&"  ".repeat(d));
    s.push_str("x\n");
    s
}
fn flow_nest(depth: usize) -> String {
    format!("x: {}{}\n", "[".repeat(depth), "]".repeat(depth))
}
fn seq_nest(depth: usize) -> String {
    format!("{}x\n", "- ".repeat(depth))
}
fn laughs() -> String {
    let mut s = String::from("a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..10 {
        let prev = format!("*a{}", i - 1);
        write!(s, "a{i}: &a{i} [{}]\n", vec![prev; 9].join(", ")).unwrap();
    }
    s
}

/// CPU time of the calling thread: on a shared, loaded machine wall time
/// says more about the neighbours than about the parser.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn run(name: &str, text: &str, f: fn(&str) -> Out) {
    // Each run in a thread with a big stack and a deadline, so one
    // candidate's stack overflow or hang cannot stop the table.
    let t = text.to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .stack_size(64 << 20)
        .spawn(move || {
            let (start, cpu) = (Instant::now(), thread_cpu());
            let r = f(&t);
            let _ = tx.send((start.elapsed(), thread_cpu() - cpu, r));
        })
        .unwrap();
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok((d, cpu, r)) => {
            let r = match r {
                Ok(n) => format!("ok, {n} docs"),
                Err(e) => format!("error: {}", e.chars().take(70).collect::<String>().replace('\n', " ")),
            };
            println!("| {name} | {:.3} s | {:.3} s | {r} |", cpu.as_secs_f64(), d.as_secs_f64());
        }
        Err(_) => println!("| {name} | | >60 s | (gave up) |"),
    }
}

fn main() {
    let inputs: Vec<(String, String)> = vec![
        ("dump 20k pods, 5k policies, 2k ns".into(), dump(20_000, 5_000, 2_000)),
        ("block nesting 80 KB".into(), block_nest(80_000)),
        ("flow nesting 40,000 deep".into(), flow_nest(40_000)),
        ("block sequence nesting 40,000 deep".into(), seq_nest(40_000)),
        ("alias bomb 9^9".into(), laughs()),
    ];
    let only: Option<String> = std::env::args().nth(1);
    let input: Option<String> = std::env::args().nth(2);
    for (name, text) in &inputs {
        if input.as_deref().is_some_and(|i| !name.starts_with(i)) {
            continue;
        }
        println!("\n{name} ({} bytes)\n| crate | CPU | wall | result |\n|---|---|---|---|", text.len());
        for (c, f) in [("serde_yaml 0.9", yaml as fn(&str) -> Out), ("serde_yaml_ng 0.10", ng), ("serde_norway 0.9", norway), ("serde-saphyr 2", saphyr)] {
            if only.as_deref().is_some_and(|o| !c.starts_with(o)) { continue; }
            run(c, text, f);
        }
    }
}

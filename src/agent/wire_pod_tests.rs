//! The pod reader of served pages ([`WirePod`]) against the typed one
//! (`k8s_openapi`'s `Pod`, then `convert::pod`) on JSON text as an API
//! server could send it: generated pods with the bulk the reader skips,
//! written with keys in any order, strings escaped or not, repeated keys
//! and wrong-typed kept fields; and the inputs a hostile writer of the
//! page could try (nesting far past serde_json's recursion limit, huge
//! lists, numbers and escapes JSON barely allows).

use crate::agent::wire_pod::WirePod;
use k8s_openapi::api::core::v1::Pod;
use kube::core::ObjectList;
use kube::Resource;
use policy_compiler::{convert, model, ObjectError};
use proptest::prelude::Rng as _;
use proptest::prelude::*;
use proptest::test_runner::{RngAlgorithm, TestRng};
use serde_json::{json, Map, Value};

/// How the text is written (key order, escapes, repeats, spaces): drawn
/// from proptest's own generator, seeded by the case, so a failing case
/// replays the same text.
struct Rng(TestRng);

impl Rng {
    fn seeded(seed: u64) -> Rng {
        let mut bytes = [0u8; 32];
        bytes[..8].copy_from_slice(&seed.to_le_bytes());
        Rng(TestRng::from_seed(RngAlgorithm::ChaCha, &bytes))
    }

    fn next(&mut self) -> u64 {
        self.0.next_u64()
    }

    fn one_in(&mut self, n: u64) -> bool {
        self.next() % n == 0
    }
}

/// Writes `v` as JSON text the way any conforming writer may: map keys in
/// a random order, any character of a string as a `\u` escape (astral
/// ones as a surrogate pair), `/` as `\/`, random white space, and now
/// and then a key written twice, first with a decoy (the last one counts
/// for both readers).
fn write(v: &Value, rng: &mut Rng, out: &mut String) {
    if rng.one_in(4) {
        out.push_str([" ", "\n", "\t ", "\r\n"][(rng.next() % 4) as usize]);
    }
    match v {
        Value::String(s) => write_str(s, rng, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write(item, rng, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            for i in (1..entries.len()).rev() {
                entries.swap(i, (rng.next() % (i as u64 + 1)) as usize);
            }
            out.push('{');
            let mut first = true;
            for (k, v) in entries {
                let decoy = rng.one_in(12).then(|| decoy(k, v));
                for value in decoy.iter().chain(std::iter::once(v)) {
                    if !first {
                        out.push(',');
                    }
                    first = false;
                    write_str(k, rng, out);
                    out.push(':');
                    write(value, rng, out);
                }
            }
            out.push('}');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// The keys the reader keeps (a few are skipped elsewhere, where any
/// value of their JSON type is valid too).
const KEPT: &[&str] = &[
    "apiVersion",
    "kind",
    "metadata",
    "name",
    "namespace",
    "labels",
    "resourceVersion",
    "uid",
    "spec",
    "nodeName",
    "hostNetwork",
    "containers",
    "initContainers",
    "ports",
    "restartPolicy",
    "containerPort",
    "protocol",
    "hostPort",
    "status",
    "phase",
    "podIP",
    "podIPs",
    "ip",
];

/// For a kept key, a different value of the same JSON type; for another
/// (a timestamp, a probe), the same value again, since the typed reader
/// checks those too.
fn decoy(key: &str, v: &Value) -> Value {
    if !KEPT.contains(&key) {
        return v.clone();
    }
    match v {
        Value::Null => Value::Null,
        Value::Bool(b) => json!(!b),
        Value::Number(_) => json!(7),
        Value::String(s) => json!(format!("{s}-decoy")),
        Value::Array(_) => json!([]),
        Value::Object(_) => json!({}),
    }
}

fn write_str(s: &str, rng: &mut Rng, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '/' if rng.one_in(2) => out.push_str("\\/"),
            c if (c as u32) < 0x20 || rng.one_in(3) => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Text that tenants choose or that needs escaping, and plain names.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9]([-a-z0-9.]{0,12}[a-z0-9])?",
        prop::sample::select(vec![
            "café",
            "a\"b",
            "a/b",
            "a\\b",
            "tab\there",
            "line\u{2028}sep",
            "<script>&amp;",
            "日本",
            "🦀",
            "",
        ])
        .prop_map(str::to_string),
    ]
}

/// A value that is absent, null, or `v`.
fn field(v: impl Strategy<Value = Value>) -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        1 => Just(None),
        1 => Just(Some(Value::Null)),
        8 => v.prop_map(Some),
    ]
}

/// Like [`field`], but mostly present: a named port's number and
/// protocol, so that pods with valid named ports are common.
fn mostly(v: impl Strategy<Value = Value>) -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        1 => Just(None),
        1 => Just(Some(Value::Null)),
        30 => v.prop_map(Some),
    ]
}

/// Now and then a value of the wrong type instead of `v`.
fn or_wrong(v: impl Strategy<Value = Value>) -> impl Strategy<Value = Value> {
    prop_oneof![
        30 => v,
        1 => prop::sample::select(vec![
            json!(true),
            json!(80.5),
            json!("80"),
            json!([]),
            json!({}),
            json!(2_147_483_648u64),
        ]),
    ]
}

fn put(map: &mut Map<String, Value>, key: &str, v: Option<Value>) {
    if let Some(v) = v {
        map.insert(key.into(), v);
    }
}

fn ip() -> impl Strategy<Value = Value> {
    prop_oneof![
        6 => prop::sample::select(vec![
            "10.0.0.1",
            "10.0.0.2",
            "fd00::1",
            "fd00:0:0::1",
            "FD00::1",
            "::ffff:10.0.0.1",
        ]),
        1 => prop::sample::select(vec!["10.0.0.300", "010.0.0.1", "fe80::1%eth0", ""]),
    ]
    .prop_map(Value::from)
}

fn port() -> impl Strategy<Value = Value> {
    (
        field(prop_oneof![
            Just(json!("")),
            "[a-z]{1,6}".prop_map(Value::from),
            text().prop_map(Value::from)
        ]),
        mostly(or_wrong(
            prop_oneof![
                12 => prop::sample::select(vec![1i64, 53, 80, 8080, 65535]),
                1 => prop::sample::select(vec![0i64, 65536, -1, 2_147_483_647]),
            ]
            .prop_map(Value::from),
        )),
        mostly(or_wrong(
            prop_oneof![
                12 => prop::sample::select(vec!["TCP", "UDP", "SCTP", ""]),
                1 => prop::sample::select(vec!["tcp", "ICMP"]),
            ]
            .prop_map(Value::from),
        )),
        field(or_wrong(Just(json!(8443)))),
    )
        .prop_map(|(name, number, protocol, host)| {
            let mut p = Map::new();
            put(&mut p, "name", name);
            put(&mut p, "containerPort", number);
            put(&mut p, "protocol", protocol);
            put(&mut p, "hostPort", host);
            Value::Object(p)
        })
}

fn container(init: bool) -> impl Strategy<Value = Value> {
    (
        text(),
        field(prop::collection::vec(port(), 0..3).prop_map(Value::from)),
        field(or_wrong(
            prop::sample::select(if init {
                vec!["Always", "OnFailure", "Never", "always"]
            } else {
                vec!["Always"]
            })
            .prop_map(Value::from),
        )),
        text(),
    )
        .prop_map(|(name, ports, restart, env)| {
            // The bulk the reader parses past.
            let mut c = json!({"name": name, "image": "registry.example/i:1",
                "env": [{"name": "E", "value": env}],
                "resources": {"requests": {"cpu": "100m"}},
                "livenessProbe": {"httpGet": {"path": "/healthz", "port": 8080},
                    "periodSeconds": 10},
                "volumeMounts": [{"name": "v", "mountPath": "/v"}]});
            let m = c.as_object_mut().expect("map");
            put(m, "ports", ports);
            put(m, "restartPolicy", restart);
            c
        })
}

/// A pod as an API server could serve it, with what the reader skips:
/// annotations, managedFields, owner references, container bulk, status
/// conditions.
fn served_pod() -> impl Strategy<Value = Value> {
    let meta = (
        field(text().prop_map(Value::from)),
        field(text().prop_map(Value::from)),
        field(
            prop::collection::btree_map(text(), or_wrong(text().prop_map(Value::from)), 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ),
        field("[0-9]{1,6}".prop_map(Value::from)),
        text(),
    );
    let spec = (
        field(or_wrong(text().prop_map(Value::from))),
        field(or_wrong(any::<bool>().prop_map(Value::from))),
        field(prop::collection::vec(container(false), 0..3).prop_map(Value::from)),
        field(prop::collection::vec(container(true), 0..3).prop_map(Value::from)),
    );
    let status = (
        field(or_wrong(
            prop::sample::select(vec!["Running", "Pending", "Succeeded", "Failed", ""])
                .prop_map(Value::from),
        )),
        field(or_wrong(ip())),
        field(
            prop::collection::vec(field(or_wrong(ip())), 0..3).prop_map(|ips| {
                Value::from(
                    ips.into_iter()
                        .map(|ip| {
                            let mut m = Map::new();
                            put(&mut m, "ip", ip);
                            Value::Object(m)
                        })
                        .collect::<Vec<_>>(),
                )
            }),
        ),
    );
    (meta, spec, status).prop_map(
        |(
            (name, namespace, labels, rv, note),
            (node, host, containers, inits),
            (phase, pod_ip, pod_ips),
        )| {
            let mut meta = json!({
                "uid": "0b6f6c1e-4c1e-9a7b-0000",
                "creationTimestamp": "2026-11-30T09:12:44Z",
                "annotations": {"note": note, "kubectl.kubernetes.io/last-applied-configuration":
                    "{\"apiVersion\":\"v1\",\"kind\":\"Pod\"}"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": "rs", "uid": "u-rs", "controller": true}],
                "managedFields": [{"manager": "kubelet", "operation": "Update",
                    "apiVersion": "v1", "time": "2026-11-30T09:12:44Z",
                    "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {"f:conditions":
                        {"k:{\"type\":\"Ready\"}": {".": {}, "f:status": {}}}}}}]});
            let m = meta.as_object_mut().expect("map");
            put(m, "name", name);
            put(m, "namespace", namespace);
            put(m, "labels", labels);
            put(m, "resourceVersion", rv);
            let mut spec = json!({"restartPolicy": "Always", "dnsPolicy": "ClusterFirst",
                "volumes": [{"name": "v", "emptyDir": {}}], "priority": 0,
                "tolerations": [{"key": "k", "operator": "Exists", "effect": "NoSchedule"}]});
            let s = spec.as_object_mut().expect("map");
            put(s, "nodeName", node);
            put(s, "hostNetwork", host);
            put(s, "containers", containers);
            put(s, "initContainers", inits);
            let mut status = json!({"conditions": [{"type": "Ready", "status": "True",
                    "lastTransitionTime": "2026-11-30T09:12:50Z"}],
                "hostIP": "192.0.2.1", "qosClass": "Burstable",
                "startTime": "2026-11-30T09:12:44Z",
                "containerStatuses": [{"name": "c", "ready": true, "restartCount": 0,
                    "image": "i", "imageID": "", "state": {"running": {}}}]});
            let st = status.as_object_mut().expect("map");
            put(st, "phase", phase);
            put(st, "podIP", pod_ip);
            put(st, "podIPs", pod_ips);
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec,
                "status": status, "x-unknown": {"deep": [1, {"a": null}]}})
        },
    )
}

/// What the typed reader makes of `text`.
enum Typed {
    Pod(Box<Pod>, Result<model::Pod, ObjectError>),
    Unreadable(String),
}

fn typed(text: &str) -> Typed {
    match serde_json::from_str::<Pod>(text) {
        Ok(p) => {
            let reduced = convert::pod(&p, None);
            Typed::Pod(Box::new(p), reduced)
        }
        Err(e) => Typed::Unreadable(e.to_string()),
    }
}

/// Reads `text` both ways; the same pod, the same conversion error, or,
/// where the typed reader cannot read the object at all, an error of the
/// wire reader that names the pod and a field. The metadata the watcher
/// keeps (the key of a Delete, the object of an Event) is the same too.
fn same(text: &str) -> Result<model::Pod, ObjectError> {
    let mut wire: WirePod =
        serde_json::from_str(text).unwrap_or_else(|e| panic!("the page fails: {e}: {text}"));
    let got = wire.take();
    match (typed(text), &got) {
        (Typed::Pod(p, want), _) => {
            assert_eq!(&want, &got, "{text}");
            let (a, b) = (&p.metadata, wire.meta());
            assert_eq!(
                (&a.name, &a.namespace, &a.uid, &a.resource_version),
                (&b.name, &b.namespace, &b.uid, &b.resource_version),
                "{text}"
            );
        }
        (Typed::Unreadable(why), Ok(p)) => panic!("typed: {why}; wire: {p:?}; {text}"),
        (Typed::Unreadable(_), Err(e)) => {
            assert!(e.message.starts_with("cannot be read: "), "{e:?}: {text}");
            assert_eq!(e.kind, "Pod");
            assert!(!e.field.is_empty() && e.field != "(object)", "{e:?}");
            let m = wire.meta();
            let ns = m.namespace.as_deref().filter(|n| !n.is_empty());
            let object = format!(
                "{}/{}",
                ns.unwrap_or("default"),
                m.name.as_deref().unwrap_or_default()
            );
            assert_eq!(e.object, object, "{text}");
        }
    }
    got
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]
    /// Generated served pods, written every way JSON allows: both readers
    /// agree on every one.
    #[test]
    fn served_pods_written_any_way_read_as_the_typed_object_reads_them(
        pod in served_pod(),
        seed in any::<u64>(),
    ) {
        let mut out = String::new();
        write(&pod, &mut Rng::seeded(seed), &mut out);
        let _ = same(&out);
    }
}

/// The generator covers valid pods, named ports and invalid ones alike
/// (a generator that made only one of them would test little).
#[test]
fn the_generator_makes_valid_and_invalid_pods() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let (mut valid, mut named, mut invalid, mut unreadable) = (0, 0, 0, 0);
    for i in 0..120u64 {
        let pod = served_pod().new_tree(&mut runner).expect("tree").current();
        let mut out = String::new();
        write(&pod, &mut Rng::seeded(i), &mut out);
        match same(&out) {
            Ok(p) => {
                valid += 1;
                named += usize::from(!p.named_ports.is_empty());
            }
            Err(e) if e.message.starts_with("cannot be read") => unreadable += 1,
            Err(_) => invalid += 1,
        }
    }
    assert!(
        valid > 20 && named > 3 && invalid > 20 && unreadable > 10,
        "valid {valid}, named ports {named}, invalid {invalid}, unreadable {unreadable}"
    );
}

fn deep(open: &str, close: &str, depth: usize) -> String {
    format!("{}1{}", open.repeat(depth), close.repeat(depth))
}

/// Nesting far past serde_json's recursion limit (128) in the fields the
/// reader skips is parsed past without recursion (no stack overflow, and
/// the pod is read); in a kept field it is a wrong type, named, not a
/// failed page. The typed reader refuses the first (managedFields'
/// `fieldsV1` is a JSON value to it): the old slim reader dropped
/// managedFields too, so a pod is not refused for what nftpol never reads.
#[test]
fn nesting_past_the_recursion_limit_neither_overflows_nor_fails_the_page() {
    let depth = 50_000;
    let skipped = format!(
        r#"{{"metadata": {{"name": "p", "namespace": "n", "managedFields": [
            {{"manager": "m", "fieldsV1": {}}}], "x": {}}},
            "status": {{"podIP": "10.0.0.1"}}}}"#,
        deep(r#"{"a":"#, "}", depth),
        deep("[", "]", depth)
    );
    let mut p: WirePod = serde_json::from_str(&skipped).expect("page");
    let p = p.take().expect("valid");
    assert_eq!((p.name.as_str(), p.ips.len()), ("p", 1));
    assert!(matches!(typed(&skipped), Typed::Unreadable(e) if e.contains("recursion limit")));
    for (at, text) in [
        (
            "metadata.labels[\"a\"]",
            format!(
                r#"{{"metadata": {{"name": "p", "namespace": "n", "labels": {{"a": {}}}}}}}"#,
                deep("[", "]", depth)
            ),
        ),
        (
            "spec.containers[0]",
            format!(
                r#"{{"metadata": {{"name": "p", "namespace": "n"}}, "spec": {{"containers": [{}]}}}}"#,
                deep("[", "]", depth)
            ),
        ),
        (
            "status.podIPs[0].ip",
            format!(
                r#"{{"metadata": {{"name": "p", "namespace": "n"}}, "status": {{"podIPs": [{{"ip": {}}}]}}}}"#,
                deep(r#"{"a":"#, "}", depth)
            ),
        ),
    ] {
        let e = same(&text).expect_err("wrong type");
        assert_eq!((e.object.as_str(), e.field.as_str()), ("n/p", at));
    }
    // In a page: the deep item is one item, its neighbours are read.
    let page = format!(
        r#"{{"metadata": {{}}, "items": [{{"metadata": {{"name": "a"}}}},
            {{"metadata": {{"name": "b", "labels": {{"x": {}}}}}}}, {{"metadata": {{"name": "c"}}}}]}}"#,
        deep("[", "]", depth)
    );
    let list: ObjectList<WirePod> = serde_json::from_str(&page).expect("page");
    let read: Vec<bool> = list
        .items
        .into_iter()
        .map(|mut p| p.take().is_ok())
        .collect();
    assert_eq!(read, [true, false, true]);
}

/// Inputs at the edges of JSON and of each kept field, each read the
/// same both ways.
#[test]
fn edge_inputs_read_as_the_typed_object_reads_them() {
    let pod = |spec: &str, status: &str| {
        format!(
            r#"{{"metadata": {{"name": "p", "namespace": "n"}}, "spec": {spec}, "status": {status}}}"#
        )
    };
    let port = |v: &str| {
        pod(
            &format!(r#"{{"containers": [{{"ports": [{{"name": "h", "containerPort": {v}}}]}}]}}"#),
            "{}",
        )
    };
    // Numbers: a fraction or an exponent is not an int32 even when whole;
    // -0 is a float to serde_json.
    for v in ["-0", "8e1", "80.0", "1E2", "-1", "65536", "2147483648", "0"] {
        assert!(same(&port(v)).is_err(), "{v}");
    }
    assert_eq!(
        same(&port("65535")).expect("valid").named_ports[0].port,
        65535
    );
    // Metadata after status and spec, escapes everywhere, IPv6 in a
    // non-canonical form and IPv4-mapped (kept as written: an IPv6
    // address), podIPs that disagree with podIP (the union).
    let text = r#"{"status": {"podIP": "FD00:0:0::0001", "podIPs": [{"ip": "::ffff:10.0.0.1"},
        {"ip": "10.0.0.9"}]}, "spec": {"nodeName": "n\u006fde"}, "kind": "Pod",
        "metadata": {"namespace": "n\/s", "name": "caf\u00e9\"", "labels": {"k\/\u00e9": "v\"\\"}},
        "x-unknown": [{"deep": {}}]}"#;
    let p = same(text).expect("valid");
    assert_eq!((p.namespace.as_str(), p.name.as_str()), ("n/s", "café\""));
    assert_eq!(p.labels.get("k/é"), Some("v\"\\"));
    assert_eq!(p.node_name.as_deref(), Some("node"));
    let ips: Vec<String> = p.ips.iter().map(ToString::to_string).collect();
    assert_eq!(ips, ["10.0.0.9", "::ffff:10.0.0.1", "fd00::1"]);
    // A number past f64 in a kept field is a JSON error, as it is to
    // every serde_json reader: the page fails (the watcher retries); in
    // a skipped field it is parsed past.
    assert!(serde_json::from_str::<WirePod>(&port("1e400")).is_err());
    let p = same(r#"{"metadata": {"name": "p", "x": 1e400}}"#).expect("valid");
    assert_eq!(p.name, "p");
    // A lone surrogate escape in a skipped string is parsed past (the
    // typed reader refuses it); in a kept one the page fails.
    let text = r#"{"metadata": {"name": "p", "annotations": {"a": "\ud800"}}}"#;
    let mut w: WirePod = serde_json::from_str(text).expect("page");
    assert!(w.take().is_ok());
    assert!(serde_json::from_str::<WirePod>(r#"{"metadata": {"name": "\ud800"}}"#).is_err());
    // Repeated keys: the last wins, a wrong-typed first one still makes
    // the pod invalid (the typed reader stops at it).
    let e = same(r#"{"metadata": {"name": 7, "name": "p", "namespace": "n"}}"#).expect_err("7");
    assert_eq!(
        (e.object.as_str(), e.field.as_str()),
        ("n/p", "metadata.name")
    );
    let p = same(
        r#"{"metadata": {"name": "a"}, "metadata": {"name": "b", "labels": {"k": "1"},
        "labels": {"j": "2"}}}"#,
    )
    .expect("valid");
    assert_eq!(
        (p.name.as_str(), p.labels.get("j"), p.labels.get("k")),
        ("b", Some("2"), None)
    );
}

/// Huge lists in kept fields are read whole, and the same both ways.
#[test]
fn huge_lists_in_kept_fields() {
    let ports: Vec<Value> = (1..=5_000)
        .map(|i| json!({"name": format!("p{i}"), "containerPort": i}))
        .collect();
    let ips: Vec<Value> = (0..5_000)
        .map(|i| json!({"ip": format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256)}))
        .collect();
    let labels: Map<String, Value> = (0..5_000)
        .map(|i| (format!("k{i}"), json!(format!("v{i}"))))
        .collect();
    let v = json!({"metadata": {"name": "p", "labels": labels},
        "spec": {"containers": [{"ports": ports}]}, "status": {"podIPs": ips}});
    let p = same(&v.to_string()).expect("valid");
    assert_eq!(
        (p.named_ports.len(), p.ips.len(), p.labels.iter().count()),
        (5_000, 5_000, 5_000)
    );
}

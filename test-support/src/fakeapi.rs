//! A fake Kubernetes API server speaking real HTTP list and watch for
//! Namespaces, Pods and NetworkPolicies, so the agent's kube-rs code runs
//! exactly as it does against a cluster (a real `kube::Client` points at
//! `http://127.0.0.1:PORT`).
//!
//! What it implements, because the watcher depends on each:
//! - a global `resourceVersion` stamped on every object and list;
//! - paginated lists (`limit` / `continue`);
//! - watches from a resourceVersion, replaying the history after it, then
//!   streaming events as JSON lines (`ADDED`, `MODIFIED`, `DELETED`,
//!   `BOOKMARK`);
//! - compaction: a watch from a resourceVersion older than the compaction
//!   point gets an `ERROR` event with status 410 Gone (as the apiserver
//!   sends it), and [`FakeApi::expire_watches`] sends one to every open
//!   watch, which forces the client to relist;
//! - [`FakeApi::drop_connections`] aborts every open watch mid-stream (the
//!   client resumes from its last resourceVersion);
//! - `POST` of core/v1 and events.k8s.io/v1 Events and `PATCH` of the
//!   latter (how kube's event `Recorder` counts a repeat), recorded
//!   ([`FakeApi::events`]);
//! - `GET` of one object by name (the agent reads its own Node), with a
//!   `uid` stamped on every object as the apiserver does;
//! - server-side apply (`PATCH`, `application/apply-patch+yaml`) of
//!   `nftpol.io/v1alpha1` NodeNetworkPolicyStatus objects and of their
//!   status subresource (404 while the object does not exist, as the
//!   apiserver answers), recorded ([`FakeApi::node_status`],
//!   [`FakeApi::status_writes`]);
//! - [`FakeApi::hold_lists`] makes lists of a kind hang until released, to
//!   test that nothing is programmed before every initial list completed;
//! - [`FakeApi::expire_continues`] answers the next list pages of a kind
//!   asked for with a `continue` token 410 Gone, as the apiserver does
//!   when the token outlived compaction: the client's list fails part
//!   way;
//! - [`FakeApi::start_outage`] answers every request with 503 (counted)
//!   until [`FakeApi::end_outage`], as an API server that is down;
//! - [`FakeApi::client_in_process`]: a client that calls the server as a
//!   tower service, with no socket, so tests on tokio's paused clock run
//!   without real I/O moving time under them;
//! - [`FakeApi::sent`]: the bytes of lists and watch events served per
//!   kind, what a client pays on the wire.
//!
//! Objects are kept as their JSON text, shared by the store and the watch
//! history, so a cluster at the Kubernetes scalability limits (150,000
//! pods of several kilobytes each) fits in memory once.
//!
//! The agent's unit tests, the agent process tests and the agent benchmark
//! drive it.

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};

/// The kinds the fake serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ApiKind {
    Namespace,
    Pod,
    NetworkPolicy,
    Node,
    ClusterNetworkPolicy,
    AdminNetworkPolicy,
    BaselineAdminNetworkPolicy,
}

impl ApiKind {
    pub const ALL: [ApiKind; 7] = [
        ApiKind::Namespace,
        ApiKind::Pod,
        ApiKind::NetworkPolicy,
        ApiKind::Node,
        ApiKind::ClusterNetworkPolicy,
        ApiKind::AdminNetworkPolicy,
        ApiKind::BaselineAdminNetworkPolicy,
    ];

    fn path(self) -> &'static str {
        match self {
            ApiKind::Namespace => "/api/v1/namespaces",
            ApiKind::Pod => "/api/v1/pods",
            ApiKind::NetworkPolicy => "/apis/networking.k8s.io/v1/networkpolicies",
            ApiKind::Node => "/api/v1/nodes",
            ApiKind::ClusterNetworkPolicy => {
                "/apis/policy.networking.k8s.io/v1alpha2/clusternetworkpolicies"
            }
            ApiKind::AdminNetworkPolicy => {
                "/apis/policy.networking.k8s.io/v1alpha1/adminnetworkpolicies"
            }
            ApiKind::BaselineAdminNetworkPolicy => {
                "/apis/policy.networking.k8s.io/v1alpha1/baselineadminnetworkpolicies"
            }
        }
    }
    fn api_version(self) -> &'static str {
        match self {
            ApiKind::NetworkPolicy => "networking.k8s.io/v1",
            ApiKind::ClusterNetworkPolicy => "policy.networking.k8s.io/v1alpha2",
            ApiKind::AdminNetworkPolicy | ApiKind::BaselineAdminNetworkPolicy => {
                "policy.networking.k8s.io/v1alpha1"
            }
            _ => "v1",
        }
    }

    /// The API kind name (`Namespace`, `NetworkPolicy`, ...).
    pub fn kind(self) -> &'static str {
        match self {
            ApiKind::Namespace => "Namespace",
            ApiKind::Pod => "Pod",
            ApiKind::NetworkPolicy => "NetworkPolicy",
            ApiKind::Node => "Node",
            ApiKind::ClusterNetworkPolicy => "ClusterNetworkPolicy",
            ApiKind::AdminNetworkPolicy => "AdminNetworkPolicy",
            ApiKind::BaselineAdminNetworkPolicy => "BaselineAdminNetworkPolicy",
        }
    }
    fn from_kind(k: &str) -> Option<ApiKind> {
        ApiKind::ALL.into_iter().find(|a| a.kind() == k)
    }
    fn from_path(p: &str) -> Option<ApiKind> {
        ApiKind::ALL.into_iter().find(|a| a.path() == p)
    }
    fn namespaced(self) -> bool {
        matches!(self, ApiKind::Pod | ApiKind::NetworkPolicy)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FakeApiError {
    #[error("fake API server: {0}")]
    Io(#[from] std::io::Error),
    #[error("object without a known kind or a name: {0}")]
    BadObject(String),
    #[error("yaml: {0}")]
    Yaml(String),
}

impl FakeApiError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            FakeApiError::Io(_) => "io",
            FakeApiError::BadObject(_) => "bad_object",
            FakeApiError::Yaml(_) => "yaml",
        }
    }
}

enum Frame {
    Data(Bytes),
    /// Abort the connection mid-stream.
    Abort,
}

struct Watch {
    kind: ApiKind,
    tx: UnboundedSender<Frame>,
}

type Key = (String, String);

/// What the server has sent of one kind so far: payload bytes (JSON
/// bodies and event lines, without HTTP framing) and watch events.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sent {
    pub list_bytes: u64,
    pub watch_bytes: u64,
    pub watch_events: u64,
}

#[derive(Default)]
struct Inner {
    rv: u64,
    /// Each object's JSON text.
    objects: BTreeMap<ApiKind, BTreeMap<Key, Bytes>>,
    /// (resourceVersion, kind, event type, object) in order.
    history: Vec<(u64, ApiKind, &'static str, Bytes)>,
    sent: BTreeMap<ApiKind, Sent>,
    /// Watches from before this resourceVersion get 410 Gone.
    compacted: u64,
    watches: Vec<Watch>,
    lists: BTreeMap<ApiKind, usize>,
    /// Events the client created.
    events: Vec<Value>,
    watch_requests: BTreeMap<ApiKind, usize>,
    /// The resourceVersion of the latest watch request per kind.
    last_watch_rv: BTreeMap<ApiKind, u64>,
    /// NodeNetworkPolicyStatus objects by name, and how many writes.
    node_statuses: BTreeMap<String, Value>,
    status_writes: usize,
    /// Continued list pages per kind still to refuse, and refused so far.
    expire_continues: BTreeMap<ApiKind, usize>,
    expired_continues: BTreeMap<ApiKind, usize>,
}

struct Shared {
    inner: Mutex<Inner>,
    held: tokio::sync::watch::Sender<BTreeSet<ApiKind>>,
    outage: std::sync::atomic::AtomicBool,
}

/// A running fake API server; dropping it stops the server.
pub struct FakeApi {
    shared: Arc<Shared>,
    pub addr: SocketAddr,
    app: Router,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn line(v: &Value) -> Frame {
    let mut b = serde_json::to_vec(v).unwrap_or_default();
    b.push(b'\n');
    Frame::Data(Bytes::from(b))
}

/// A watch event line around an object's JSON text.
fn event_line(ty: &str, obj: &[u8]) -> Bytes {
    let mut b = Vec::with_capacity(obj.len() + 32);
    b.extend_from_slice(b"{\"type\":\"");
    b.extend_from_slice(ty.as_bytes());
    b.extend_from_slice(b"\",\"object\":");
    b.extend_from_slice(obj);
    b.extend_from_slice(b"}\n");
    Bytes::from(b)
}

/// `[a,b,...]` of JSON texts.
fn json_array<'a>(items: impl Iterator<Item = &'a Bytes>) -> Vec<u8> {
    let mut b = vec![b'['];
    for (i, o) in items.enumerate() {
        if i > 0 {
            b.push(b',');
        }
        b.extend_from_slice(o);
    }
    b.push(b']');
    b
}

fn gone() -> Value {
    json!({"type": "ERROR", "object": {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "too old resource version", "reason": "Expired", "code": 410
    }})
}

impl FakeApi {
    /// Starts a server on 127.0.0.1 (a free port).
    pub async fn start() -> Result<FakeApi, FakeApiError> {
        let (held, _) = tokio::sync::watch::channel(BTreeSet::new());
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                rv: 1000,
                ..Inner::default()
            }),
            held,
            outage: Default::default(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let served = app.clone();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, served).await;
        });
        Ok(FakeApi {
            shared,
            addr,
            app,
            task,
        })
    }

    /// A kube client that calls this server in-process (no socket).
    pub fn client_in_process(&self) -> kube::Client {
        kube::Client::new(self.app.clone(), "default")
    }

    /// From now on every request fails with 503 (and open watches are
    /// cut), as when the API server is down; requests are still counted.
    pub fn start_outage(&self) {
        self.shared
            .outage
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.drop_connections();
    }

    pub fn end_outage(&self) {
        self.shared
            .outage
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// A kube client talking to this server.
    pub fn client(&self) -> kube::Client {
        let url = format!("http://{}", self.addr)
            .parse()
            .expect("a socket address is a valid URI");
        let config = kube::Config::new(url);
        kube::Client::try_from(config).expect("a plain-http client always builds")
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.shared.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Creates or replaces an object (JSON with apiVersion, kind,
    /// metadata.name); returns its new resourceVersion.
    pub fn apply(&self, mut obj: Value) -> Result<u64, FakeApiError> {
        let kind = obj
            .get("kind")
            .and_then(Value::as_str)
            .and_then(ApiKind::from_kind)
            .ok_or_else(|| FakeApiError::BadObject(obj.to_string()))?;
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if name.is_empty() {
            return Err(FakeApiError::BadObject(obj.to_string()));
        }
        let ns = if kind.namespaced() {
            let ns = obj
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .unwrap_or("default")
                .to_string();
            obj["metadata"]["namespace"] = json!(ns);
            ns
        } else {
            String::new()
        };
        obj["apiVersion"] = json!(kind.api_version());
        if obj.pointer("/metadata/uid").is_none() {
            obj["metadata"]["uid"] = json!(format!("uid-{}-{ns}-{name}", kind.kind()));
        }
        let mut inner = self.inner();
        inner.rv += 1;
        let rv = inner.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let text = Bytes::from(obj.to_string());
        let old = inner
            .objects
            .entry(kind)
            .or_default()
            .insert((ns, name), text.clone());
        let ty = if old.is_some() { "MODIFIED" } else { "ADDED" };
        inner.publish(rv, kind, ty, text);
        Ok(rv)
    }

    /// Deletes an object; returns whether it existed.
    pub fn delete(&self, kind: ApiKind, namespace: &str, name: &str) -> bool {
        let mut inner = self.inner();
        let key = (
            if kind.namespaced() {
                namespace.to_string()
            } else {
                String::new()
            },
            name.to_string(),
        );
        let Some(text) = inner.objects.entry(kind).or_default().remove(&key) else {
            return false;
        };
        inner.rv += 1;
        let rv = inner.rv;
        let mut obj: Value = serde_json::from_slice(&text).unwrap_or_default();
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        inner.publish(rv, kind, "DELETED", Bytes::from(obj.to_string()));
        true
    }

    /// Loads every Namespace, Pod and NetworkPolicy of a multi-document
    /// YAML text (`kind: List` expanded); returns how many were applied.
    pub fn load_yaml(&self, text: &str) -> Result<usize, FakeApiError> {
        let mut n = 0;
        let docs = policy_compiler::manifest::documents(text).map_err(FakeApiError::Yaml)?;
        for v in docs {
            let items = match v.get("kind").and_then(Value::as_str) {
                Some("List") => v
                    .get("items")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default(),
                Some(_) => vec![v],
                None => continue,
            };
            for item in items {
                let known = item
                    .get("kind")
                    .and_then(Value::as_str)
                    .and_then(ApiKind::from_kind)
                    .is_some();
                if known {
                    self.apply(item)?;
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    /// Sends a BOOKMARK with the current resourceVersion to every watch.
    /// Returns the resourceVersion the bookmarks carry: other writes (the
    /// agent's status object) may move the server's on at any moment.
    pub fn bookmark(&self) -> u64 {
        let mut inner = self.inner();
        let sent = inner.rv;
        let rv = sent.to_string();
        inner.watches.retain(|w| {
            let ev = json!({"type": "BOOKMARK", "object": {
                "kind": w.kind.kind(), "apiVersion": w.kind.api_version(),
                "metadata": {"resourceVersion": rv}
            }});
            w.tx.send(line(&ev)).is_ok()
        });
        sent
    }

    /// Compacts the history and sends 410 Gone to every open watch, so
    /// every client has to relist.
    pub fn expire_watches(&self) {
        let mut inner = self.inner();
        // The latest revision survives compaction, as in etcd: a fresh
        // list's resourceVersion can be watched from.
        inner.compacted = inner.rv;
        inner.history.clear();
        for w in inner.watches.drain(..) {
            let _ = w.tx.send(line(&gone()));
        }
    }

    /// Aborts every open watch connection mid-stream.
    pub fn drop_connections(&self) {
        for w in self.inner().watches.drain(..) {
            let _ = w.tx.send(Frame::Abort);
        }
    }

    /// Makes list requests of these kinds hang until `release_lists`.
    pub fn hold_lists(&self, kinds: &[ApiKind]) {
        self.shared
            .held
            .send_modify(|h| h.extend(kinds.iter().copied()));
    }

    pub fn release_lists(&self) {
        self.shared.held.send_modify(BTreeSet::clear);
    }

    /// Answers the next `n` list requests of `kind` that carry a
    /// `continue` token (a second or later page) 410 Gone.
    pub fn expire_continues(&self, kind: ApiKind, n: usize) {
        self.inner().expire_continues.insert(kind, n);
    }

    /// Continued list pages of `kind` refused so far.
    pub fn expired_continues(&self, kind: ApiKind) -> usize {
        self.inner()
            .expired_continues
            .get(&kind)
            .copied()
            .unwrap_or(0)
    }

    /// Whole-kind list requests per kind so far (served, or refused in an
    /// outage); lookups by field selector are not counted.
    pub fn list_count(&self, kind: ApiKind) -> usize {
        self.inner().lists.get(&kind).copied().unwrap_or(0)
    }

    /// Watch requests per kind so far (served, or refused in an outage).
    pub fn watch_count(&self, kind: ApiKind) -> usize {
        self.inner().watch_requests.get(&kind).copied().unwrap_or(0)
    }

    /// The resourceVersion the latest watch of `kind` started from.
    pub fn last_watch_rv(&self, kind: ApiKind) -> Option<u64> {
        self.inner().last_watch_rv.get(&kind).copied()
    }

    /// Open watch connections.
    pub fn open_watches(&self) -> usize {
        let mut inner = self.inner();
        inner.watches.retain(|w| !w.tx.is_closed());
        inner.watches.len()
    }

    /// Every stored object as one `kind: List` document (JSON is YAML),
    /// the way `kubectl get ns,pods,networkpolicies -A -o yaml` prints
    /// them: what `nftpol compile` reads.
    pub fn dump(&self) -> String {
        let inner = self.inner();
        let items = json_array(inner.objects.values().flat_map(|m| m.values()));
        format!(
            "{{\"apiVersion\":\"v1\",\"kind\":\"List\",\"items\":{}}}",
            String::from_utf8_lossy(&items)
        )
    }

    /// Bytes and events served for `kind` so far.
    pub fn sent(&self, kind: ApiKind) -> Sent {
        self.inner().sent.get(&kind).copied().unwrap_or_default()
    }

    /// The Events clients created (core/v1 JSON), in order.
    pub fn events(&self) -> Vec<Value> {
        self.inner().events.clone()
    }

    pub fn resource_version(&self) -> u64 {
        self.inner().rv
    }

    /// The NodeNetworkPolicyStatus named `node`, as last written.
    pub fn node_status(&self, node: &str) -> Option<Value> {
        self.inner().node_statuses.get(node).cloned()
    }

    /// Server-side applies of NodeNetworkPolicyStatus objects and their
    /// status so far.
    pub fn status_writes(&self) -> usize {
        self.inner().status_writes
    }
}

impl Inner {
    fn publish(&mut self, rv: u64, kind: ApiKind, ty: &'static str, obj: Bytes) {
        let ev = event_line(ty, &obj);
        let mut delivered = 0;
        self.watches.retain(|w| {
            let open = w.kind != kind || w.tx.send(Frame::Data(ev.clone())).is_ok();
            delivered += u64::from(open && w.kind == kind);
            open
        });
        self.count_events(kind, delivered, ev.len());
        self.history.push((rv, kind, ty, obj));
    }

    fn count_events(&mut self, kind: ApiKind, events: u64, len: usize) {
        let s = self.sent.entry(kind).or_default();
        s.watch_events += events;
        s.watch_bytes += events * len as u64;
    }
}

fn status(code: StatusCode, message: &str) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "code": code.as_u16()});
    (
        code,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let outage = shared.outage.load(std::sync::atomic::Ordering::SeqCst);
    if let Some(rest) = uri.path().strip_prefix(NODE_STATUS_PATH) {
        if outage {
            return status(StatusCode::SERVICE_UNAVAILABLE, "outage");
        }
        return node_status(&shared, &method, rest, &q, &body);
    }
    if method == Method::POST || method == Method::PATCH {
        if outage {
            return status(StatusCode::SERVICE_UNAVAILABLE, "outage");
        }
        return post_event(&shared, &method, uri.path(), &body);
    }
    let Some(kind) = ApiKind::from_path(uri.path()) else {
        if method == Method::GET && !outage {
            return get_one(&shared, uri.path());
        }
        return status(StatusCode::NOT_FOUND, "not found");
    };
    let is_watch = q.get("watch").is_some_and(|w| w == "true" || w == "1");
    if outage {
        let mut inner = shared.inner.lock().unwrap_or_else(|e| e.into_inner());
        if is_watch {
            *inner.watch_requests.entry(kind).or_default() += 1;
        } else if is_whole_kind(&q) {
            *inner.lists.entry(kind).or_default() += 1;
        }
        return status(
            StatusCode::SERVICE_UNAVAILABLE,
            "the fake API server is down",
        );
    }
    if is_watch {
        watch(&shared, kind, &q)
    } else {
        list(&shared, kind, &q).await
    }
}

const NODE_STATUS_PATH: &str = "/apis/nftpol.io/v1alpha1/nodenetworkpolicystatuses/";

fn json_response(v: &Value) -> Response {
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        v.to_string(),
    )
        .into_response()
}

/// `GET <kind path>/NAME` of a cluster-scoped object.
fn get_one(shared: &Shared, path: &str) -> Response {
    let Some((base, name)) = path.rsplit_once('/') else {
        return status(StatusCode::NOT_FOUND, "not found");
    };
    let Some(kind) = ApiKind::from_path(base).filter(|k| !k.namespaced()) else {
        return status(StatusCode::NOT_FOUND, "not found");
    };
    let inner = shared.inner.lock().unwrap_or_else(|e| e.into_inner());
    match inner
        .objects
        .get(&kind)
        .and_then(|m| m.get(&(String::new(), name.to_string())))
    {
        Some(o) => (
            StatusCode::OK,
            [("content-type", "application/json")],
            o.clone(),
        )
            .into_response(),
        None => status(StatusCode::NOT_FOUND, "no such object"),
    }
}

/// Server-side apply of a NodeNetworkPolicyStatus (`NAME`) or of its
/// status (`NAME/status`): the applied fields replace what was there (one
/// field manager writes them all), and the apiserver's checks that matter
/// to a client are kept: a field manager, the object's name, and 404 for
/// the status of an object that does not exist.
fn node_status(
    shared: &Shared,
    method: &Method,
    rest: &str,
    q: &HashMap<String, String>,
    body: &[u8],
) -> Response {
    let (name, sub) = match rest.split_once('/') {
        Some((n, "status")) => (n, true),
        Some(_) => return status(StatusCode::NOT_FOUND, "not found"),
        None => (rest, false),
    };
    let mut inner = shared.inner.lock().unwrap_or_else(|e| e.into_inner());
    if *method == Method::GET {
        return match inner.node_statuses.get(name) {
            Some(o) => json_response(o),
            None => status(StatusCode::NOT_FOUND, "no such object"),
        };
    }
    if *method != Method::PATCH {
        return status(StatusCode::METHOD_NOT_ALLOWED, "only apply patches");
    }
    if q.get("fieldManager").is_none_or(String::is_empty) {
        return status(StatusCode::BAD_REQUEST, "apply needs a fieldManager");
    }
    let Ok(patch) = serde_json::from_slice::<Value>(body) else {
        return status(StatusCode::BAD_REQUEST, "body is not JSON");
    };
    if patch.pointer("/metadata/name").and_then(Value::as_str) != Some(name) && !sub {
        return status(
            StatusCode::BAD_REQUEST,
            "metadata.name differs from the URL",
        );
    }
    inner.rv += 1;
    let rv = inner.rv.to_string();
    inner.status_writes += 1;
    let obj = if sub {
        let Some(obj) = inner.node_statuses.get_mut(name) else {
            return status(StatusCode::NOT_FOUND, "no such object");
        };
        obj["status"] = patch.get("status").cloned().unwrap_or(Value::Null);
        obj
    } else {
        let old_status = inner
            .node_statuses
            .get(name)
            .and_then(|o| o.get("status").cloned());
        let mut obj = patch;
        obj.as_object_mut().map(|o| o.remove("status"));
        if let Some(st) = old_status {
            obj["status"] = st;
        }
        inner.node_statuses.insert(name.to_string(), obj);
        inner.node_statuses.get_mut(name).expect("just inserted")
    };
    obj["metadata"]["resourceVersion"] = json!(rv);
    json_response(obj)
}

/// `POST /api/v1/namespaces/NS/events` or
/// `/apis/events.k8s.io/v1/namespaces/NS/events`: recorded for tests to
/// look at; `PATCH .../events/NAME` merges into the recorded one.
fn post_event(shared: &Shared, method: &Method, path: &str, body: &[u8]) -> Response {
    let rest = path
        .strip_prefix("/api/v1/namespaces/")
        .or_else(|| path.strip_prefix("/apis/events.k8s.io/v1/namespaces/"))
        .unwrap_or_default();
    let mut parts = rest.split('/');
    let (ns, resource, name) = (parts.next(), parts.next(), parts.next());
    let is_events = ns.is_some_and(|n| !n.is_empty()) && resource == Some("events");
    let Ok(mut ev) = serde_json::from_slice::<Value>(body) else {
        return status(StatusCode::BAD_REQUEST, "body is not JSON");
    };
    if !is_events || (*method == Method::POST) != name.is_none() || parts.next().is_some() {
        return status(StatusCode::METHOD_NOT_ALLOWED, "only events can be created");
    }
    let mut inner = shared.inner.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(name) = name {
        let Some(old) = inner
            .events
            .iter_mut()
            .find(|e| e.pointer("/metadata/name").and_then(Value::as_str) == Some(name))
        else {
            return status(StatusCode::NOT_FOUND, "no such event");
        };
        if let (Some(old), Some(new)) = (old.as_object_mut(), ev.as_object()) {
            for (k, v) in new {
                old.insert(k.clone(), v.clone());
            }
        }
        let body = old.to_string();
        return (StatusCode::OK, [("content-type", "application/json")], body).into_response();
    }
    inner.rv += 1;
    let n = inner.events.len();
    if ev
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .is_none()
    {
        let prefix = ev
            .pointer("/metadata/generateName")
            .and_then(Value::as_str)
            .unwrap_or("event.")
            .to_string();
        ev["metadata"]["name"] = json!(format!("{prefix}{n}"));
    }
    ev["metadata"]["resourceVersion"] = json!(inner.rv.to_string());
    inner.events.push(ev.clone());
    (
        StatusCode::CREATED,
        [("content-type", "application/json")],
        ev.to_string(),
    )
        .into_response()
}

/// A list of every object of a kind, as a watcher's (re)list asks for;
/// a lookup by field selector (the status writer finding its Node) is not
/// one, so [`FakeApi::list_count`] leaves it out.
fn is_whole_kind(q: &HashMap<String, String>) -> bool {
    !q.contains_key("fieldSelector")
}

async fn list(shared: &Shared, kind: ApiKind, q: &HashMap<String, String>) -> Response {
    let mut held = shared.held.subscribe();
    // Hangs while the kind is held (the client sees a slow apiserver).
    let _ = held.wait_for(|h| !h.contains(&kind)).await;
    let mut inner = shared.inner.lock().unwrap_or_else(|e| e.into_inner());
    if is_whole_kind(q) {
        *inner.lists.entry(kind).or_default() += 1;
    }
    let left = inner.expire_continues.get(&kind).copied().unwrap_or(0);
    if q.contains_key("continue") && left > 0 {
        inner.expire_continues.insert(kind, left - 1);
        *inner.expired_continues.entry(kind).or_default() += 1;
        let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "reason": "Expired", "code": 410,
            "message": "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter."});
        return (
            StatusCode::GONE,
            [("content-type", "application/json")],
            body.to_string(),
        )
            .into_response();
    }
    let (offset, rv) = match q.get("continue").and_then(|c| c.split_once('/')) {
        Some((o, r)) => (o.parse().unwrap_or(0), r.to_string()),
        None => (0usize, inner.rv.to_string()),
    };
    let limit = q
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    let all = inner.objects.entry(kind).or_default();
    let total = all.len();
    let page: Vec<&Bytes> = all.values().skip(offset).take(limit).collect();
    let next = offset.saturating_add(page.len());
    let mut metadata = json!({ "resourceVersion": rv });
    if next < total {
        metadata["continue"] = json!(format!("{next}/{rv}"));
    }
    let head = json!({
        "apiVersion": kind.api_version(),
        "kind": format!("{}List", kind.kind()),
        "metadata": metadata,
    })
    .to_string();
    // The head object with `"items":[...]` spliced in before its `}`.
    let mut body = head.into_bytes();
    body.pop();
    body.extend_from_slice(b",\"items\":");
    body.extend_from_slice(&json_array(page.into_iter()));
    body.push(b'}');
    inner.sent.entry(kind).or_default().list_bytes += body.len() as u64;
    (StatusCode::OK, [("content-type", "application/json")], body).into_response()
}

fn watch(shared: &Shared, kind: ApiKind, q: &HashMap<String, String>) -> Response {
    let (tx, rx) = unbounded_channel::<Frame>();
    {
        let mut inner = shared.inner.lock().unwrap_or_else(|e| e.into_inner());
        *inner.watch_requests.entry(kind).or_default() += 1;
        let from: u64 = q
            .get("resourceVersion")
            .and_then(|r| r.parse().ok())
            .unwrap_or(0);
        inner.last_watch_rv.insert(kind, from);
        if from < inner.compacted {
            // What the apiserver does: 200, then one ERROR event.
            let _ = tx.send(line(&gone()));
            drop(tx);
        } else {
            let replay: Vec<Bytes> = inner
                .history
                .iter()
                .filter(|(rv, k, _, _)| *k == kind && *rv > from)
                .map(|(_, _, ty, obj)| event_line(ty, obj))
                .collect();
            for ev in replay {
                inner.count_events(kind, 1, ev.len());
                let _ = tx.send(Frame::Data(ev));
            }
            inner.watches.push(Watch { kind, tx });
        }
    }
    // Ends after an abort, so the connection is really cut mid-stream.
    let stream = futures::stream::unfold(Some(rx), |rx| async move {
        let mut rx = rx?;
        match rx.recv().await? {
            Frame::Data(b) => Some((Ok(b), Some(rx))),
            Frame::Abort => Some((Err(std::io::Error::other("connection dropped")), None)),
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| status(StatusCode::INTERNAL_SERVER_ERROR, "response"))
}

/// A model object back as the API object the apiserver would serve, so
/// synthetic clusters ([`crate::synth`]) can be loaded into the
/// fake: converting the result again gives the same model object.
pub fn to_api(o: &policy_compiler::Object) -> Value {
    use policy_compiler::model::{Peer, PolicyRule, PortRef};
    use policy_compiler::selector::Selector;
    use policy_compiler::Object;
    fn selector(s: &Selector) -> Value {
        let exprs: Vec<Value> = s
            .match_expressions
            .iter()
            .map(|r| json!({"key": r.key, "operator": format!("{:?}", r.operator), "values": r.values}))
            .collect();
        let mut v = json!({});
        if !s.match_labels.is_empty() {
            v["matchLabels"] = json!(s.match_labels);
        }
        if !exprs.is_empty() {
            v["matchExpressions"] = json!(exprs);
        }
        v
    }
    fn rule(r: &PolicyRule, peers_key: &str) -> Value {
        let mut v = json!({});
        if let Some(peers) = &r.peers {
            let peers: Vec<Value> = peers
                .iter()
                .map(|p| match p {
                    Peer::Pods {
                        pod_selector,
                        namespace_selector,
                    } => {
                        let mut v = json!({});
                        if let Some(s) = pod_selector {
                            v["podSelector"] = selector(s);
                        }
                        if let Some(s) = namespace_selector {
                            v["namespaceSelector"] = selector(s);
                        }
                        v
                    }
                    Peer::IpBlock { cidr, except, .. } => {
                        let except: Vec<String> = except.iter().map(|e| e.to_string()).collect();
                        json!({"ipBlock": {"cidr": cidr.to_string(), "except": except}})
                    }
                })
                .collect();
            v[peers_key] = json!(peers);
        }
        if let Some(ports) = &r.ports {
            let ports: Vec<Value> = ports
                .iter()
                .map(|p| {
                    let mut v = json!({"protocol": p.protocol.api()});
                    match &p.port {
                        PortRef::Any => {}
                        PortRef::Range(lo, hi) => {
                            v["port"] = json!(lo);
                            if hi != lo {
                                v["endPort"] = json!(hi);
                            }
                        }
                        PortRef::Named(n) => v["port"] = json!(n),
                    }
                    v
                })
                .collect();
            v["ports"] = json!(ports);
        }
        v
    }
    match o {
        Object::Namespace(n) => json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": n.name, "labels": n.labels}}),
        Object::Pod(p) => {
            let ports: Vec<Value> = p
                .named_ports
                .iter()
                .map(|np| json!({"name": np.name, "containerPort": np.port, "protocol": np.protocol.api()}))
                .collect();
            let ips: Vec<Value> = p
                .ips
                .iter()
                .map(|ip| json!({"ip": ip.to_string()}))
                .collect();
            let mut v = json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": p.name, "namespace": p.namespace, "labels": p.labels},
                "spec": {"containers": [{"name": "c", "image": "busybox", "ports": ports}]},
                "status": {"phase": if p.terminal { "Succeeded" } else { "Running" }}});
            if let Some(n) = &p.node_name {
                v["spec"]["nodeName"] = json!(n);
            }
            if p.host_network {
                v["spec"]["hostNetwork"] = json!(true);
            }
            if let Some(first) = p.ips.first() {
                v["status"]["podIP"] = json!(first.to_string());
                v["status"]["podIPs"] = json!(ips);
            }
            v
        }
        Object::Policy(p) => {
            let mut types = Vec::new();
            let mut spec = json!({"podSelector": selector(&p.pod_selector)});
            if let Some(rules) = &p.ingress {
                types.push("Ingress");
                spec["ingress"] = json!(rules.iter().map(|r| rule(r, "from")).collect::<Vec<_>>());
            }
            if let Some(rules) = &p.egress {
                types.push("Egress");
                spec["egress"] = json!(rules.iter().map(|r| rule(r, "to")).collect::<Vec<_>>());
            }
            spec["policyTypes"] = json!(types);
            let mut annotations = serde_json::Map::new();
            if p.audit.log != policy_compiler::model::LogMode::Off {
                annotations.insert("nftpol.io/log".into(), json!(p.audit.log));
            }
            if p.audit.staged {
                annotations.insert("nftpol.io/enforcement".into(), json!("audit"));
            }
            json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": p.name, "namespace": p.namespace, "annotations": annotations},
                "spec": spec})
        }
        Object::Node(n) => {
            let addresses: Vec<Value> = n
                .ips
                .iter()
                .map(|ip| json!({"type": "InternalIP", "address": ip.to_string()}))
                .collect();
            json!({"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": n.name, "labels": n.labels},
                "status": {"addresses": addresses}})
        }
        Object::AdminPolicy(p) => admin_to_api(p, selector),
    }
}

/// A Pod from [`to_api`] dressed as the API server serves a Deployment's
/// pod: owner reference, pod-template-hash label, the kubelet's and the
/// controller's managedFields, a container with resources, env, probes and
/// the service-account volume, status conditions and a container status.
/// About 5 KB of JSON, so benchmarks pay a realistic price on the wire and
/// in decoding; nothing added changes what the pod converts to.
pub fn as_served_pod(mut pod: Value) -> Value {
    let name = pod
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let hash = format!(
        "{:010x}",
        name.bytes().fold(0xcbf29ce484222325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
        }) & 0xff_ffff_ffff
    );
    let uid = format!("{}-4c1e-9a7b-{hash}00", &hash[..8]);
    let t = "2026-11-30T09:12:44Z";
    let ports = pod
        .pointer("/spec/containers/0/ports")
        .cloned()
        .unwrap_or(json!([]));
    let ip = pod.pointer("/status/podIP").cloned().unwrap_or(Value::Null);
    let meta = &mut pod["metadata"];
    meta["generateName"] = json!(format!("{name}-"));
    meta["uid"] = json!(uid);
    meta["creationTimestamp"] = json!(t);
    meta["annotations"] = json!({"kubectl.kubernetes.io/restartedAt": t,
        "prometheus.io/scrape": "true", "prometheus.io/port": "9090"});
    meta["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet",
        "name": format!("{name}-rs"), "uid": format!("{uid}-rs"), "controller": true,
        "blockOwnerDeletion": true}]);
    meta["managedFields"] = json!([
        {"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1", "time": t,
         "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {"f:generateName": {}, "f:labels": {".": {},
            "f:app": {}, "f:pod-template-hash": {}, "f:tier": {}}, "f:ownerReferences": {".": {},
            format!("k:{{\"uid\":\"{uid}-rs\"}}"): {}}}, "f:spec": {"f:containers": {"k:{\"name\":\"c\"}": {
            ".": {}, "f:env": {".": {}, "k:{\"name\":\"LOG_LEVEL\"}": {".": {}, "f:name": {}, "f:value": {}}},
            "f:image": {}, "f:imagePullPolicy": {}, "f:name": {}, "f:ports": {".": {}},
            "f:readinessProbe": {".": {}, "f:httpGet": {".": {}, "f:path": {}, "f:port": {}}},
            "f:resources": {".": {}, "f:limits": {".": {}, "f:memory": {}}, "f:requests": {".": {},
            "f:cpu": {}, "f:memory": {}}}, "f:terminationMessagePath": {}, "f:terminationMessagePolicy": {}}},
            "f:dnsPolicy": {}, "f:enableServiceLinks": {}, "f:restartPolicy": {}, "f:schedulerName": {},
            "f:securityContext": {}, "f:terminationGracePeriodSeconds": {}}}},
        {"manager": "kubelet", "operation": "Update", "apiVersion": "v1", "time": t,
         "fieldsType": "FieldsV1", "subresource": "status", "fieldsV1": {"f:status": {"f:conditions": {
            "k:{\"type\":\"ContainersReady\"}": {".": {}, "f:lastProbeTime": {}, "f:lastTransitionTime": {}, "f:status": {}, "f:type": {}},
            "k:{\"type\":\"Initialized\"}": {".": {}, "f:lastProbeTime": {}, "f:lastTransitionTime": {}, "f:status": {}, "f:type": {}},
            "k:{\"type\":\"PodReadyToStartContainers\"}": {".": {}, "f:lastProbeTime": {}, "f:lastTransitionTime": {}, "f:status": {}, "f:type": {}},
            "k:{\"type\":\"Ready\"}": {".": {}, "f:lastProbeTime": {}, "f:lastTransitionTime": {}, "f:status": {}, "f:type": {}}},
            "f:containerStatuses": {}, "f:hostIP": {}, "f:hostIPs": {}, "f:phase": {}, "f:podIP": {},
            "f:podIPs": {".": {}, format!("k:{{\"ip\":{ip}}}"): {".": {}, "f:ip": {}}}, "f:startTime": {}}}}
    ]);
    if let Some(labels) = meta["labels"].as_object_mut() {
        labels.insert("pod-template-hash".into(), json!(hash));
    }
    let c = &mut pod["spec"]["containers"][0];
    c["image"] = json!("registry.example.com/team/web:1.27.3");
    c["imagePullPolicy"] = json!("IfNotPresent");
    c["ports"] = ports;
    c["env"] = json!([{"name": "LOG_LEVEL", "value": "info"}]);
    c["resources"] =
        json!({"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}});
    c["readinessProbe"] = json!({"httpGet": {"path": "/healthz", "port": 8080, "scheme": "HTTP"},
        "timeoutSeconds": 1, "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3});
    c["terminationMessagePath"] = json!("/dev/termination-log");
    c["terminationMessagePolicy"] = json!("File");
    c["volumeMounts"] = json!([{"name": format!("kube-api-access-{}", &hash[..5]), "readOnly": true,
        "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}]);
    let spec = &mut pod["spec"];
    for (k, v) in [
        ("restartPolicy", json!("Always")),
        ("terminationGracePeriodSeconds", json!(30)),
        ("dnsPolicy", json!("ClusterFirst")),
        ("serviceAccountName", json!("default")),
        ("serviceAccount", json!("default")),
        ("securityContext", json!({})),
        ("schedulerName", json!("default-scheduler")),
        ("priority", json!(0)),
        ("enableServiceLinks", json!(true)),
        ("preemptionPolicy", json!("PreemptLowerPriority")),
        (
            "tolerations",
            json!([
            {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
            {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}]),
        ),
        (
            "volumes",
            json!([{"name": format!("kube-api-access-{}", &hash[..5]), "projected": {"sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}],
            "defaultMode": 420}}]),
        ),
    ] {
        spec[k] = v;
    }
    let st = &mut pod["status"];
    let cond = |ty: &str| json!({"type": ty, "status": "True", "lastProbeTime": null, "lastTransitionTime": t});
    st["conditions"] = json!([
        cond("PodReadyToStartContainers"),
        cond("Initialized"),
        cond("Ready"),
        cond("ContainersReady"),
        cond("PodScheduled")
    ]);
    st["hostIP"] = json!("192.168.7.21");
    st["hostIPs"] = json!([{"ip": "192.168.7.21"}]);
    st["startTime"] = json!(t);
    st["qosClass"] = json!("Burstable");
    st["containerStatuses"] = json!([{"name": "c", "state": {"running": {"startedAt": t}}, "lastState": {},
        "ready": true, "restartCount": 0, "image": "registry.example.com/team/web:1.27.3",
        "imageID": "registry.example.com/team/web@sha256:4f2a9c1d8e7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b2a1f",
        "containerID": format!("containerd://{hash}{hash}{hash}{hash}{hash}{hash}abcd"), "started": true,
        "volumeMounts": [{"name": format!("kube-api-access-{}", &hash[..5]),
            "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true, "recursiveReadOnly": "Disabled"}]}]);
    pod
}

/// The API object an admin policy came from (inverse of its conversion).
fn admin_to_api(
    p: &policy_compiler::admin::AdminPolicy,
    selector: fn(&policy_compiler::selector::Selector) -> Value,
) -> Value {
    use policy_compiler::admin::{AdminKind, AdminPeer, AdminPort, Subject, Tier};
    use policy_compiler::selector::Selector;
    let v2 = p.kind == AdminKind::ClusterNetworkPolicy;
    let pods = |ns: &Selector, pods: &Selector| json!({"namespaceSelector": selector(ns), "podSelector": selector(pods)});
    let subject = match &p.subject {
        Subject::Namespaces(s) => json!({"namespaces": selector(s)}),
        Subject::Pods {
            namespaces,
            pods: ps,
        } => json!({"pods": pods(namespaces, ps)}),
    };
    let port = |x: &AdminPort| match (x, v2) {
        (AdminPort::Named(n), true) => json!({"destinationNamedPort": n}),
        (AdminPort::Named(n), false) => json!({"namedPort": n}),
        (AdminPort::Range { protocol, lo, hi }, true) => {
            let dp = if lo == hi {
                json!({"number": lo})
            } else {
                json!({"range": {"start": lo, "end": hi}})
            };
            json!({ protocol.lower(): {"destinationPort": dp} })
        }
        (AdminPort::Range { protocol, lo, hi }, false) if lo == hi => {
            json!({"portNumber": {"protocol": protocol.api(), "port": lo}})
        }
        (AdminPort::Range { protocol, lo, hi }, false) => {
            json!({"portRange": {"protocol": protocol.api(), "start": lo, "end": hi}})
        }
    };
    let rules = |rules: &[policy_compiler::admin::AdminRule], peers_key: &str| -> Vec<Value> {
        rules
            .iter()
            .map(|r| {
                let peers: Vec<Value> = r
                    .peers
                    .iter()
                    .map(|x| match x {
                        AdminPeer::Namespaces(s) => json!({"namespaces": selector(s)}),
                        AdminPeer::Pods {
                            namespaces,
                            pods: ps,
                        } => {
                            json!({"pods": pods(namespaces, ps)})
                        }
                        AdminPeer::Nodes(s) => json!({"nodes": selector(s)}),
                        AdminPeer::Networks(n) => {
                            let n: Vec<String> = n.iter().map(|c| c.to_string()).collect();
                            json!({ "networks": n })
                        }
                        // Written as an empty peer: what fails closed.
                        AdminPeer::All => json!({}),
                    })
                    .collect();
                let mut v =
                    json!({"name": r.name, "action": r.action.api(p.kind), peers_key: peers});
                if let Some(ports) = &r.ports {
                    let ports: Vec<Value> = ports.iter().map(port).collect();
                    v[if v2 { "protocols" } else { "ports" }] = json!(ports);
                }
                v
            })
            .collect()
    };
    let mut spec = json!({"subject": subject,
        "ingress": rules(&p.ingress, "from"), "egress": rules(&p.egress, "to")});
    if let Some(prio) = p.priority {
        spec["priority"] = json!(prio);
    }
    if v2 {
        spec["tier"] = json!(match p.tier {
            Tier::Admin => "Admin",
            Tier::Baseline => "Baseline",
        });
    }
    let version = if v2 { "v1alpha2" } else { "v1alpha1" };
    json!({"apiVersion": format!("policy.networking.k8s.io/{version}"), "kind": p.kind.api(),
        "metadata": {"name": p.name}, "spec": spec})
}

/// Loads a whole model cluster into the fake (namespaces first).
pub fn load_cluster(fake: &FakeApi, c: &policy_compiler::Cluster) -> Result<(), FakeApiError> {
    use policy_compiler::Object;
    for n in c.namespaces() {
        fake.apply(to_api(&Object::Namespace(n.clone())))?;
    }
    for p in c.pods() {
        fake.apply(to_api(&Object::Pod(p.clone())))?;
    }
    for p in c.policies() {
        fake.apply(to_api(&Object::Policy(p.clone())))?;
    }
    for n in c.node_objects() {
        fake.apply(to_api(&Object::Node(n.clone())))?;
    }
    for p in c.admin_policies() {
        fake.apply(to_api(&Object::AdminPolicy(p.clone())))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

    fn pod(name: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "ns", "labels": {"app": "a"}},
            "spec": {"nodeName": "n1"}, "status": {"podIP": "10.0.0.1"}})
    }

    /// Sends `GET path` and returns the connection after the headers.
    async fn get(fake: &FakeApi, path: &str) -> BufReader<tokio::net::TcpStream> {
        let mut s = tokio::net::TcpStream::connect(fake.addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut r = BufReader::new(s);
        let mut l = String::new();
        while r.read_line(&mut l).await.unwrap() > 2 {
            l.clear();
        }
        r
    }

    #[tokio::test]
    async fn sent_counts_the_bytes_of_lists_and_watch_events_served() {
        let fake = FakeApi::start().await.unwrap();
        let first = fake.apply(pod("a")).unwrap();
        fake.apply(pod("b")).unwrap();
        assert_eq!(
            fake.sent(ApiKind::Pod),
            Sent::default(),
            "nothing served yet"
        );

        let mut body = Vec::new();
        get(&fake, "/api/v1/pods")
            .await
            .read_to_end(&mut body)
            .await
            .unwrap();
        let list: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(list["items"].as_array().map(Vec::len), Some(2), "{list}");
        assert_eq!(fake.sent(ApiKind::Pod).list_bytes, body.len() as u64);

        // A watch from the first pod's version replays the second one.
        let mut w = get(
            &fake,
            &format!("/api/v1/pods?watch=true&resourceVersion={first}"),
        )
        .await;
        let mut replayed = String::new();
        w.read_line(&mut replayed).await.unwrap();
        let mut live = String::new();
        fake.apply(pod("c")).unwrap();
        w.read_line(&mut live).await.unwrap();
        let ev: Value = serde_json::from_str(&live).unwrap();
        assert_eq!(ev["type"], "ADDED");
        assert_eq!(ev["object"]["metadata"]["name"], "c");
        let sent = fake.sent(ApiKind::Pod);
        assert_eq!(sent.watch_events, 2);
        assert_eq!(sent.watch_bytes, (replayed.len() + live.len()) as u64);
        assert_eq!(sent.list_bytes, body.len() as u64, "a watch is not a list");
        assert_eq!(fake.sent(ApiKind::Namespace), Sent::default());
    }

    #[test]
    fn a_pod_as_served_converts_to_the_same_pod_but_for_its_template_hash() {
        use policy_compiler::{convert, Object};
        let shape = crate::synth::Shape {
            namespaces: 3,
            pods: 30,
            policies: 0,
            nodes: 2,
        };
        for k in [0, 1, 10] {
            let model = crate::synth::pod(shape, k);
            let plain = to_api(&Object::Pod(model.clone()));
            let served = as_served_pod(plain.clone());
            let text = served.to_string();
            assert!(text.len() > 4 * plain.to_string().len(), "{}", text.len());
            let api: k8s_openapi::api::core::v1::Pod = serde_json::from_str(&text).unwrap();
            let mut back = convert::pod(&api, None).unwrap();
            let hash = back.labels.remove("pod-template-hash");
            assert!(hash.is_some_and(|h| h.len() == 10));
            assert_eq!(back, model);
        }
    }
}

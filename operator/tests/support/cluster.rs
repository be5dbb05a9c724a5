//! A stateful fake API server for a running controller: objects with
//! resource versions and generations, lists, watches that replay from a
//! resource version, and a script of faults (conflicts, 429s, 500s, calls
//! that never answer, connection resets, dropped and expired watches).
//!
//! Every replica gets its own client (named, so the writes each one sent
//! can be told apart), with kube's default retry layer as a real client has.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use kube::Client;
use kube::client::Body;
use kube::client::retry::RetryPolicy;
use llmesh_operator::lease::Fence;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tower::BoxError;

type ResponseBody = UnsyncBoxBody<Bytes, Infallible>;

/// What the fake does to a call a rule matches.
#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// Answer with this status and a `Status` body, doing nothing.
    Status(u16),
    /// 429 Too Many Requests, asking to come back after this many seconds.
    TooMany(u64),
    /// Do the call, then answer with this status: the client never learns
    /// that it succeeded (a timeout after the write was committed).
    DoneButStatus(u16),
    /// Never answer.
    Hang,
    /// Answer normally after this long.
    Delay(Duration),
    /// Fail the connection without an answer.
    Reset,
}

/// One scripted fault: for the next `times` calls of `method` on `path`
/// (from `identity`'s client only, when set).
#[derive(Debug)]
struct Rule {
    identity: Option<String>,
    method: String,
    path: String,
    times: usize,
    fault: Fault,
}

/// A write (anything but a GET) that reached the API server.
#[derive(Clone, Debug)]
pub struct Write {
    /// The client's name.
    pub identity: String,
    /// `POST`, `PUT`, `PATCH`.
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The status answered.
    pub status: u16,
    /// When it arrived.
    pub at: Instant,
}

/// Where an object lives: its collection (`/api/v1/secrets`), namespace
/// (`""` when cluster-scoped) and name.
type Key = (String, String, String);

struct Watch {
    collection: String,
    namespace: Option<String>,
    selector: Option<(String, String)>,
    metadata_only: bool,
    events: mpsc::UnboundedSender<Bytes>,
}

impl Watch {
    fn sees(&self, key: &Key, object: &Value) -> bool {
        self.collection == key.0
            && self.namespace.as_ref().is_none_or(|ns| *ns == key.1)
            && self
                .selector
                .as_ref()
                .is_none_or(|(k, v)| object["metadata"]["labels"][k] == json!(v))
    }

    fn send(&self, object: &Value) -> bool {
        self.events
            .send(event_line("MODIFIED", &shown(object, self.metadata_only)))
            .is_ok()
    }
}

/// `object` as a client asking for it is shown it: its metadata only when
/// it asked for `PartialObjectMetadata`.
fn shown(object: &Value, metadata_only: bool) -> Value {
    if metadata_only {
        json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": object["metadata"]})
    } else {
        object.clone()
    }
}

#[derive(Default)]
struct State {
    version: u64,
    objects: BTreeMap<Key, Value>,
    /// Every change, for watches resuming from a resource version.
    changes: Vec<(u64, Key, Value)>,
    /// Watches from a resource version below this are told it expired (410).
    compacted: u64,
    watches: Vec<Watch>,
    rules: Vec<Rule>,
    writes: Vec<Write>,
    /// The collections listed or watched with their objects' full content.
    full_reads: Vec<String>,
}

/// The fake API server, shared by the clients of every replica.
#[derive(Clone, Default)]
pub struct FakeCluster(Arc<Mutex<State>>);

/// A call's path split into its parts.
struct Target {
    collection: String,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

impl Target {
    fn parse(path: &str) -> Self {
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let prefix = if segments[0] == "api" { 2 } else { 3 };
        let rest = &segments[prefix..];
        let (namespace, rest) = if rest.len() >= 3 && rest[0] == "namespaces" {
            (Some(rest[1].to_owned()), &rest[2..])
        } else {
            (None, rest)
        };
        Self {
            collection: format!("/{}/{}", segments[..prefix].join("/"), rest[0]),
            namespace,
            name: rest.get(1).map(|s| (*s).to_owned()),
            status: rest.get(2) == Some(&"status"),
        }
    }

    fn key(&self, name: &str) -> Key {
        (
            self.collection.clone(),
            self.namespace.clone().unwrap_or_default(),
            name.to_owned(),
        )
    }
}

/// The `apiVersion` and `kind` of a collection's objects.
fn type_of(collection: &str) -> (String, String) {
    let (prefix, resource) = collection.rsplit_once('/').expect("collection");
    let api_version = prefix
        .trim_start_matches("/apis/")
        .trim_start_matches("/api/")
        .to_owned();
    let kind = match resource {
        "namespaces" => "Namespace",
        "secrets" => "Secret",
        "configmaps" => "ConfigMap",
        "llmroutes" => "LLMRoute",
        "providersecrets" => "ProviderSecret",
        "virtualkeys" => "VirtualKey",
        "budgets" => "Budget",
        "leases" => "Lease",
        "events" => "Event",
        "pods" => "Pod",
        other => panic!("the fake API server does not serve {other}"),
    };
    (api_version, kind.to_owned())
}

fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code})
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == name).then(|| percent_decode(value))
    })
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(byte) = text
                .get(i + 1..i + 3)
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
        {
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).expect("UTF-8 query")
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).expect("event");
    line.push(b'\n');
    Bytes::from(line)
}

fn gone() -> Bytes {
    event_line("ERROR", &status_body(410, "Expired", "too old resource version"))
}

fn reply(code: u16, body: &Value) -> Response<ResponseBody> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(body).expect("JSON"))).boxed_unsync())
        .expect("response")
}

impl FakeCluster {
    /// A client for the replica called `identity`, with the retry layer a
    /// client built from a kubeconfig has (429, 503 and 504 are retried,
    /// honouring `Retry-After`).
    pub fn client(&self, identity: &str) -> Client {
        let service = tower::ServiceBuilder::new()
            .layer(tower::retry::RetryLayer::new(RetryPolicy::server_retry()))
            .service(self.service(identity));
        Client::new(service, "default")
    }

    /// Like [`Self::client`], with `fence` outermost, as `main` builds the leader's client.
    pub fn fenced_client(&self, identity: &str, fence: Fence) -> Client {
        let service = tower::ServiceBuilder::new()
            .layer(fence)
            .layer(tower::retry::RetryLayer::new(RetryPolicy::server_retry()))
            .service(self.service(identity));
        Client::new(service, "default")
    }

    fn service(
        &self,
        identity: &str,
    ) -> impl tower::Service<
        Request<Body>,
        Response = Response<ResponseBody>,
        Error = BoxError,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static {
        let cluster = self.clone();
        let identity = identity.to_owned();
        tower::service_fn(move |request: Request<Body>| {
            let (cluster, identity) = (cluster.clone(), identity.clone());
            async move { cluster.handle(&identity, request).await }
        })
    }

    /// Scripts `fault` for the next `times` calls of `method` on `path`.
    pub fn fault(&self, method: &str, path: &str, times: usize, fault: Fault) {
        self.add_rule(None, method, path, times, fault);
    }

    /// Like [`Self::fault`], for the calls of `identity`'s client only.
    pub fn fault_for(&self, identity: &str, method: &str, path: &str, times: usize, fault: Fault) {
        self.add_rule(Some(identity.to_owned()), method, path, times, fault);
    }

    fn add_rule(&self, identity: Option<String>, method: &str, path: &str, times: usize, fault: Fault) {
        self.0.lock().rules.push(Rule {
            identity,
            method: method.to_owned(),
            path: path.to_owned(),
            times,
            fault,
        });
    }

    /// The scripted faults not yet played, as `METHOD path ×times`.
    pub fn unplayed_faults(&self) -> Vec<String> {
        let state = self.0.lock();
        state
            .rules
            .iter()
            .filter(|r| r.times > 0)
            .map(|r| format!("{} {} ×{} ({:?})", r.method, r.path, r.times, r.fault))
            .collect()
    }

    /// Ends every open watch (as an API server restart does).
    pub fn drop_watches(&self) {
        self.0.lock().watches.clear();
    }

    /// Tells every open watch its resource version expired (410 Gone) and
    /// forgets the history, so resuming from any earlier version fails too.
    pub fn expire_watches(&self) {
        let mut state = self.0.lock();
        for watch in state.watches.drain(..) {
            let _ = watch.events.send(gone());
        }
        state.compacted = state.version + 1;
        state.changes.clear();
    }

    /// How many watches are open.
    pub fn open_watches(&self) -> usize {
        let mut state = self.0.lock();
        state.watches.retain(|w| !w.events.is_closed());
        state.watches.len()
    }

    /// Whether a list or watch of `collection` ever asked for the objects'
    /// full content (not only their metadata).
    pub fn read_in_full(&self, collection: &str) -> bool {
        self.0.lock().full_reads.iter().any(|c| c == collection)
    }

    /// Every write that reached the server.
    pub fn writes(&self) -> Vec<Write> {
        self.0.lock().writes.clone()
    }

    /// Creates or updates `object` in `collection` as a user would
    /// (`kubectl apply`): a changed `spec` raises the generation.
    pub fn put(&self, collection: &str, object: Value) {
        let namespace = object["metadata"]["namespace"].as_str().unwrap_or_default();
        let name = object["metadata"]["name"].as_str().expect("name");
        let key = (collection.to_owned(), namespace.to_owned(), name.to_owned());
        self.0.lock().store(key, object);
    }

    /// The stored object, if any.
    pub fn get(&self, collection: &str, namespace: &str, name: &str) -> Option<Value> {
        let key = (collection.to_owned(), namespace.to_owned(), name.to_owned());
        self.0.lock().objects.get(&key).cloned()
    }

    /// The stored objects of `collection` in `namespace`.
    pub fn list(&self, collection: &str, namespace: &str) -> Vec<Value> {
        let state = self.0.lock();
        state
            .objects
            .iter()
            .filter(|((c, ns, _), _)| c == collection && ns == namespace)
            .map(|(_, object)| object.clone())
            .collect()
    }

    async fn handle(
        &self,
        identity: &str,
        request: Request<Body>,
    ) -> Result<Response<ResponseBody>, BoxError> {
        let method = request.method().to_string();
        let path = request.uri().path().to_owned();
        let query = request.uri().query().unwrap_or_default().to_owned();
        let metadata_only = request
            .headers()
            .get("accept")
            .and_then(|a| a.to_str().ok())
            .is_some_and(|a| a.contains("as=PartialObjectMetadata"));
        let bytes = request.into_body().collect().await?.to_bytes();
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)?
        };
        let fault = self.take_fault(identity, &method, &path);
        let mut answer_instead = None;
        match fault {
            None => {}
            Some(Fault::Status(code)) => {
                return Ok(self.record(identity, &method, &path, code, reply(code, &fault_status(code))));
            }
            Some(Fault::TooMany(seconds)) => {
                let mut response = reply(429, &status_body(429, "TooManyRequests", "slow down"));
                let value = seconds.to_string().parse().expect("header value");
                response.headers_mut().insert("retry-after", value);
                return Ok(self.record(identity, &method, &path, 429, response));
            }
            Some(Fault::DoneButStatus(code)) => answer_instead = Some(code),
            Some(Fault::Hang) => std::future::pending::<()>().await,
            Some(Fault::Delay(delay)) => tokio::time::sleep(delay).await,
            Some(Fault::Reset) => return Err("connection reset by peer".into()),
        }
        let target = Target::parse(&path);
        if method == "GET" && target.name.is_none() && !metadata_only {
            self.0.lock().full_reads.push(target.collection.clone());
        }
        let (code, response) = if method == "GET" && query_param(&query, "watch").as_deref() == Some("true") {
            return Ok(self.watch(&target, &query, metadata_only));
        } else {
            self.0.lock().serve(&method, &target, &query, body, metadata_only)
        };
        let (code, response) = match answer_instead {
            Some(instead) => (instead, reply(instead, &fault_status(instead))),
            None => (code, reply(code, &response)),
        };
        Ok(self.record(identity, &method, &path, code, response))
    }

    fn take_fault(&self, identity: &str, method: &str, path: &str) -> Option<Fault> {
        let mut state = self.0.lock();
        let rule = state.rules.iter_mut().find(|r| {
            r.times > 0
                && r.method == method
                && r.path == path
                && r.identity.as_deref().is_none_or(|i| i == identity)
        })?;
        rule.times -= 1;
        Some(rule.fault)
    }

    fn record(
        &self,
        identity: &str,
        method: &str,
        path: &str,
        status: u16,
        response: Response<ResponseBody>,
    ) -> Response<ResponseBody> {
        if method != "GET" {
            self.0.lock().writes.push(Write {
                identity: identity.to_owned(),
                method: method.to_owned(),
                path: path.to_owned(),
                status,
                at: Instant::now(),
            });
        }
        response
    }

    fn watch(&self, target: &Target, query: &str, metadata_only: bool) -> Response<ResponseBody> {
        let (events, mut receiver) = mpsc::unbounded_channel();
        let from: u64 = query_param(query, "resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let watch = Watch {
            collection: target.collection.clone(),
            namespace: target.namespace.clone(),
            selector: query_param(query, "labelSelector")
                .and_then(|s| s.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned()))),
            metadata_only,
            events,
        };
        let mut state = self.0.lock();
        if from < state.compacted {
            let _ = watch.events.send(gone());
        } else {
            for (_, key, object) in state.changes.iter().filter(|(v, _, _)| *v > from) {
                if watch.sees(key, object) {
                    watch.send(object);
                }
            }
            state.watches.push(watch);
        }
        let stream = futures::stream::poll_fn(move |cx| {
            receiver
                .poll_recv(cx)
                .map(|line| line.map(|line| Ok::<_, Infallible>(Frame::data(line))))
        });
        Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .body(StreamBody::new(stream).boxed_unsync())
            .expect("response")
    }
}

fn fault_status(code: u16) -> Value {
    match code {
        409 => status_body(
            409,
            "Conflict",
            "the object has been modified; please apply your changes to the latest version and try again",
        ),
        500 => status_body(500, "InternalError", "etcdserver: request timed out"),
        503 => status_body(
            503,
            "ServiceUnavailable",
            "the server is currently unable to handle the request",
        ),
        504 => status_body(
            504,
            "Timeout",
            "the server was unable to return a response in the time allotted",
        ),
        code => status_body(code, "Unknown", "scripted failure"),
    }
}

impl State {
    fn serve(
        &mut self,
        method: &str,
        target: &Target,
        query: &str,
        body: Value,
        metadata_only: bool,
    ) -> (u16, Value) {
        match (method, &target.name) {
            ("GET", Some(name)) => match self.objects.get(&target.key(name)) {
                Some(object) => (200, object.clone()),
                None => (404, status_body(404, "NotFound", &format!("{name} not found"))),
            },
            ("GET", None) => (200, self.list(target, query, metadata_only)),
            ("POST", None) => self.create(target, body),
            ("PUT", Some(name)) => self.replace(target, name, body),
            ("PATCH", Some(name)) => self.patch(target, name, &body),
            _ => (405, status_body(405, "MethodNotAllowed", method)),
        }
    }

    fn list(&self, target: &Target, query: &str, metadata_only: bool) -> Value {
        let selector = query_param(query, "labelSelector");
        let selector = selector.as_deref().and_then(|s| s.split_once('='));
        let items: Vec<Value> = self
            .objects
            .iter()
            .filter(|((c, ns, _), object)| {
                *c == target.collection
                    && target.namespace.as_ref().is_none_or(|t| t == ns)
                    && selector.is_none_or(|(k, v)| object["metadata"]["labels"][k] == json!(v))
            })
            .map(|(_, object)| shown(object, metadata_only))
            .collect();
        let (api_version, kind) = type_of(&target.collection);
        json!({"apiVersion": api_version, "kind": format!("{kind}List"),
            "metadata": {"resourceVersion": self.version.to_string()}, "items": items})
    }

    fn create(&mut self, target: &Target, mut body: Value) -> (u16, Value) {
        let name = match body["metadata"]["name"].as_str() {
            Some(name) => name.to_owned(),
            None => format!(
                "{}{}",
                body["metadata"]["generateName"].as_str().unwrap_or("object-"),
                self.version + 1
            ),
        };
        let key = target.key(&name);
        if self.objects.contains_key(&key) {
            let message = format!("{name} already exists");
            return (409, status_body(409, "AlreadyExists", &message));
        }
        body["metadata"]["name"] = json!(name);
        (201, self.store(key, body))
    }

    fn replace(&mut self, target: &Target, name: &str, body: Value) -> (u16, Value) {
        let key = target.key(name);
        let Some(stored) = self.objects.get(&key) else {
            return (404, status_body(404, "NotFound", &format!("{name} not found")));
        };
        let sent = &body["metadata"]["resourceVersion"];
        if !sent.is_null() && *sent != stored["metadata"]["resourceVersion"] {
            return (409, fault_status(409));
        }
        (200, self.store(key, body))
    }

    /// A merge of the patch into the stored object: what server-side apply
    /// and a merge patch do to the fields this operator sends.
    fn patch(&mut self, target: &Target, name: &str, patch: &Value) -> (u16, Value) {
        let key = target.key(name);
        let mut object = match self.objects.get(&key) {
            Some(stored) => stored.clone(),
            // Server-side apply creates what is missing; a status needs its object.
            None if !target.status => Value::Object(serde_json::Map::new()),
            None => return (404, status_body(404, "NotFound", &format!("{name} not found"))),
        };
        if target.status {
            json_patch::merge(&mut object["status"], &patch["status"]);
        } else {
            json_patch::merge(&mut object, patch);
            object["metadata"]["name"] = json!(name);
        }
        (200, self.store(key, object))
    }

    /// Stores `object` under `key` with a new resource version (and
    /// generation, when its spec changed), and tells the watches.
    fn store(&mut self, key: Key, mut object: Value) -> Value {
        self.version += 1;
        let previous = self.objects.get(&key);
        let generation = match previous {
            None => 1,
            Some(previous) => {
                let generation = previous["metadata"]["generation"].as_i64().unwrap_or(1);
                generation + i64::from(previous["spec"] != object["spec"])
            }
        };
        let uid = previous.map_or_else(
            || json!(format!("uid-{}", self.version)),
            |p| p["metadata"]["uid"].clone(),
        );
        let (api_version, kind) = type_of(&key.0);
        object["apiVersion"] = json!(api_version);
        object["kind"] = json!(kind);
        let metadata = &mut object["metadata"];
        metadata["resourceVersion"] = json!(self.version.to_string());
        metadata["generation"] = json!(generation);
        metadata["uid"] = uid;
        if !key.1.is_empty() {
            metadata["namespace"] = json!(key.1);
        }
        self.objects.insert(key.clone(), object.clone());
        self.changes.push((self.version, key.clone(), object.clone()));
        self.watches
            .retain(|watch| !watch.sees(&key, &object) || watch.send(&object));
        object
    }
}

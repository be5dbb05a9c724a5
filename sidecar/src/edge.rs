//! The listeners' defences against slow, hostile and too many clients: a cap on open connections, a header read timeout, a cap on concurrent requests, and a drain that waits for every connection.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::IntoResponse;
use axum::response::Response;
use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinHandle;
use tower::ServiceExt;

use crate::api::Api;
use crate::error::ApiError;

/// How a listener treats its connections.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Connections open at once; past it new ones wait in the kernel's backlog.
    pub max_connections: usize,
    /// How long a client may take to send a request's headers (HTTP/1),
    /// and how long a kept-alive connection may sit idle before its next one.
    pub header_read_timeout: Duration,
}

/// How long to wait before accepting again when `accept` fails (out of
/// file descriptors, most likely): retrying at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Serves `router` on `listener` until `signal` turns true, then lets open
/// connections finish their requests (streams included) and returns once
/// every one has closed.
pub fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    mut signal: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    // A semaphore's permits cannot exceed this; no sidecar needs more.
    let max = u32::try_from(limits.max_connections)
        .unwrap_or(u32::MAX >> 3)
        .clamp(1, u32::MAX >> 3);
    let open = Arc::new(Semaphore::new(max as usize));
    tokio::spawn(async move {
        loop {
            let permit = tokio::select! {
                permit = open.clone().acquire_owned() => permit,
                _ = signal.wait_for(|stop| *stop) => break,
            };
            let Ok(permit) = permit else { break };
            let stream = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = signal.wait_for(|stop| *stop) => break,
            };
            let (stream, peer) = match stream {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            // Stream chunks are small writes: with Nagle's algorithm on, each one
            // waits for the client's delayed ACK of the one before (about 40 ms).
            if let Err(error) = stream.set_nodelay(true) {
                tracing::debug!(%error, "cannot set TCP_NODELAY on an accepted connection");
            }
            let builder = builder.clone();
            // Who is calling: the debug endpoints answer only from inside the pod.
            let service = TowerToHyperService::new(router.clone().map_request(
                move |mut request: hyper::Request<hyper::body::Incoming>| {
                    request.extensions_mut().insert(ConnectInfo(peer));
                    request
                },
            ));
            let mut stop = signal.clone();
            tokio::spawn(async move {
                let _open = permit;
                let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                tokio::pin!(connection);
                let stopping = async {
                    let _ = stop.wait_for(|stop| *stop).await;
                };
                tokio::select! {
                    result = connection.as_mut() => return finished(result),
                    () = stopping => {}
                }
                connection.as_mut().graceful_shutdown();
                finished(connection.await);
            });
        }
        drop(listener);
        // Every connection holds a permit until it closes.
        let _ = open.acquire_many(max).await;
    })
}

fn finished(result: Result<(), Box<dyn std::error::Error + Send + Sync>>) {
    if let Err(error) = result {
        // Clients that hang up or time out are routine, not a fault here.
        tracing::debug!(%error, "connection ended with an error");
    }
}

/// The sidecar's cap on requests served at once: past it a request is
/// refused at once with a 503 and `Retry-After` rather than queued, so a
/// burst can neither hang the app nor exhaust the pod's memory.
#[derive(Debug)]
pub struct RequestCap {
    slots: Arc<Semaphore>,
    limit: usize,
}

impl RequestCap {
    /// A cap of `limit` requests in flight.
    pub fn new(limit: usize) -> Arc<Self> {
        let limit = limit.clamp(1, Semaphore::MAX_PERMITS);
        Arc::new(Self {
            slots: Arc::new(Semaphore::new(limit)),
            limit,
        })
    }

    /// Requests being served now.
    pub fn in_flight(&self) -> usize {
        self.limit - self.slots.available_permits()
    }
}

/// Middleware: serves the request if a slot is free, holding the slot
/// until its response body (a stream, perhaps) is done or dropped.
pub async fn limit_concurrency(State(cap): State<Arc<RequestCap>>, request: Request, next: Next) -> Response {
    let Ok(slot) = cap.slots.clone().try_acquire_owned() else {
        let api = if request.uri().path().starts_with("/v1/messages") {
            Api::Messages
        } else {
            Api::ChatCompletions
        };
        return ApiError::Overloaded { limit: cap.limit }.into_response_for(api);
    };
    next.run(request)
        .await
        .map(|body| Body::new(Holding { body, _slot: slot }))
}

/// A response body that keeps its request's slot until it ends.
struct Holding {
    body: Body,
    _slot: OwnedSemaphorePermit,
}

impl hyper::body::Body for Holding {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Middleware: answers only callers inside the pod (loopback: the app's
/// containers, `kubectl port-forward`, `kubectl exec`). The admin port is
/// open to the cluster for metrics and probes; what the debug endpoints
/// show or change is not for other pods.
pub async fn pod_local_only(request: Request, next: Next) -> Response {
    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    if peer.is_some_and(|peer| peer.ip().to_canonical().is_loopback()) {
        return next.run(request).await;
    }
    let message =
        "the debug endpoints answer only from inside the pod: use kubectl port-forward or kubectl exec";
    (http::StatusCode::FORBIDDEN, message).into_response()
}

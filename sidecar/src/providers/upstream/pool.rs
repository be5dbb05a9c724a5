//! Kept-alive connections to upstreams, on hyper's connection API.
//!
//! Not hyper-util's pooled client: on the pass-through path its checkout (a
//! race between the pool and a lazily started connect, keyed by a SipHash
//! of scheme and authority) and its return (a task spawned for every
//! response, to wait until the connection is idle again) cost about as many
//! instructions as the rest of the outbound request. Here an HTTP/1.1
//! connection goes back to the pool when its response body is done with, a
//! checkout takes the most recently used connection that is ready, and an
//! HTTP/2 connection (negotiated with ALPN) is shared by every request to
//! its upstream.
//!
//! Like that client, a request that a reused connection closed under before
//! any of it was written is sent again on a new connection: upstreams close
//! idle connections whenever they like.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::HOST;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::client::legacy::connect::Connection;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use parking_lot::Mutex;
use tokio::time::Instant;
use tower::ServiceExt;

use super::{BoxError, Connector};

type Body = Full<Bytes>;

/// The connections of one sidecar, by destination.
pub(super) struct Pool {
    connector: Connector,
    /// For the whole connection set-up: TCP, proxy CONNECT and the TLS
    /// handshake (the TCP connector's own timeout covers only the first).
    connect_timeout: Duration,
    idle_timeout: Duration,
    /// A handful of upstreams per sidecar: a list beats hashing the key.
    hosts: Mutex<Vec<Host>>,
    /// Started with the first connection: closes idle ones even when no
    /// request comes to check them out (an upstream a reload dropped, or a
    /// quiet night), so their sockets and memory are not held for ever.
    reaper: std::sync::Once,
}

/// The reaper's shortest period: a tiny idle timeout (in tests) must not spin it.
const MIN_REAP_INTERVAL: Duration = Duration::from_millis(10);

/// The connections to one scheme and authority.
struct Host {
    destination: Destination,
    /// Finished HTTP/1.1 connections, the most recently used last.
    idle: Vec<Idle>,
    /// The HTTP/2 connection every request shares.
    shared: Option<Open<http2::SendRequest<Body>>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Destination {
    scheme: Scheme,
    authority: Authority,
}

impl Destination {
    fn of(uri: &Uri) -> Result<Self, BoxError> {
        match (uri.scheme(), uri.authority()) {
            (Some(scheme), Some(authority)) => Ok(Self {
                scheme: scheme.clone(),
                authority: authority.clone(),
            }),
            _ => Err(format!("upstream URL {uri} is not absolute").into()),
        }
    }

    fn uri(&self) -> Result<Uri, BoxError> {
        Ok(Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query("/")
            .build()?)
    }

    /// `Host` as HTTP/1.1 wants it: the port only when it is not the scheme's own.
    fn host_header(&self) -> Result<HeaderValue, BoxError> {
        let default_port = if self.scheme == Scheme::HTTPS { 443 } else { 80 };
        let value = match self.authority.port_u16() {
            Some(port) if port != default_port => format!("{}:{port}", self.authority.host()),
            _ => self.authority.host().to_owned(),
        };
        Ok(HeaderValue::try_from(value)?)
    }
}

/// A connection's request handle, and whether it leads to an HTTP proxy
/// (which wants requests in absolute form).
struct Open<S> {
    sender: S,
    via_proxy: bool,
}

struct Idle {
    connection: Open<http1::SendRequest<Body>>,
    since: Instant,
}

/// A connection checked out for one request.
enum Checkout {
    Http1(Open<http1::SendRequest<Body>>),
    Http2(Open<http2::SendRequest<Body>>),
}

/// An HTTP/1.1 connection lent to a response: it goes back to the pool when
/// the response (and so its body) is dropped.
pub(super) struct Lease {
    pool: Arc<Pool>,
    destination: Destination,
    connection: Option<Open<http1::SendRequest<Body>>>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(connection) = self.connection.take() {
            self.pool.put_back(&self.destination, connection);
        }
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("destination", &self.destination)
            .finish()
    }
}

impl Pool {
    pub(super) fn new(connector: Connector, connect_timeout: Duration, idle_timeout: Duration) -> Self {
        Self {
            connector,
            connect_timeout,
            idle_timeout,
            hosts: Mutex::new(Vec::new()),
            reaper: std::sync::Once::new(),
        }
    }

    /// Closes idle connections past the timeout every half timeout, so none
    /// outlives it by more than half; ends with the pool.
    fn reap_in_background(self: &Arc<Self>) {
        self.reaper.call_once(|| {
            let pool = Arc::downgrade(self);
            let every = (self.idle_timeout / 2).max(MIN_REAP_INTERVAL);
            tokio::spawn(async move {
                let mut ticks = tokio::time::interval(every);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticks.tick().await;
                    let Some(pool) = pool.upgrade() else { return };
                    pool.reap();
                }
            });
        });
    }

    /// Drops closed connections and idle ones past the timeout.
    fn reap(&self) {
        let now = Instant::now();
        for host in self.hosts.lock().iter_mut() {
            host.idle.retain(|idle| self.usable(idle, now));
            if host
                .shared
                .as_ref()
                .is_some_and(|shared| shared.sender.is_closed())
            {
                host.shared = None;
            }
        }
    }

    fn usable(&self, idle: &Idle, now: Instant) -> bool {
        !idle.connection.sender.is_closed() && now.duration_since(idle.since) < self.idle_timeout
    }

    /// Sends `request` (with an absolute URI) on a pooled connection or a
    /// new one. An HTTP/1.1 response comes with the lease of its connection,
    /// to be dropped once its body has been read.
    ///
    /// # Errors
    /// No connection could be opened, or the request failed on it.
    pub(super) async fn send(
        self: &Arc<Self>,
        mut request: Request<Body>,
    ) -> Result<(Response<Incoming>, Option<Lease>), BoxError> {
        let destination = Destination::of(request.uri())?;
        let uri = request.uri().clone();
        let (mut checkout, mut reused) = match self.checkout(&destination) {
            Some(checkout) => (checkout, true),
            None => {
                self.reap_in_background();
                (self.connect(&destination).await?, false)
            }
        };
        loop {
            let sent = match &mut checkout {
                Checkout::Http1(open) => {
                    if !request.headers().contains_key(HOST) {
                        request.headers_mut().insert(HOST, destination.host_header()?);
                    }
                    if !open.via_proxy {
                        *request.uri_mut() = origin_form(&uri);
                    }
                    open.sender.try_send_request(request).await
                }
                Checkout::Http2(open) => open.sender.try_send_request(request).await,
            };
            match sent {
                Ok(response) => {
                    let lease = match checkout {
                        Checkout::Http1(connection) => Some(Lease {
                            pool: self.clone(),
                            destination,
                            connection: Some(connection),
                        }),
                        Checkout::Http2(_) => None,
                    };
                    return Ok((response, lease));
                }
                Err(mut error) => match error.take_message() {
                    // Not a byte of it was written: a fresh connection may
                    // carry it. A fresh connection that fails is the answer.
                    Some(unsent) if reused => {
                        request = unsent;
                        *request.uri_mut() = uri.clone();
                        checkout = self.connect(&destination).await?;
                        reused = false;
                    }
                    _ => return Err(error.into_error().into()),
                },
            }
        }
    }

    /// A ready connection to `destination`, dropping ones that closed or
    /// idled past the timeout on the way.
    fn checkout(&self, destination: &Destination) -> Option<Checkout> {
        let mut hosts = self.hosts.lock();
        let host = hosts.iter_mut().find(|host| host.destination == *destination)?;
        if let Some(shared) = &host.shared {
            if !shared.sender.is_closed() {
                return Some(Checkout::Http2(Open {
                    sender: shared.sender.clone(),
                    via_proxy: shared.via_proxy,
                }));
            }
            host.shared = None;
        }
        let now = Instant::now();
        host.idle.retain(|idle| self.usable(idle, now));
        // The most recently used first: the likeliest to be open at the far end.
        let ready = host
            .idle
            .iter()
            .rposition(|idle| idle.connection.sender.is_ready())?;
        Some(Checkout::Http1(host.idle.remove(ready).connection))
    }

    fn put_back(&self, destination: &Destination, connection: Open<http1::SendRequest<Body>>) {
        if connection.sender.is_closed() {
            return;
        }
        let idle = Idle {
            connection,
            since: Instant::now(),
        };
        host(&mut self.hosts.lock(), destination).idle.push(idle);
    }

    /// Opens a connection. Boxed: the TLS and HTTP/2 handshakes hold tens
    /// of kilobytes of state, which every request's future would otherwise
    /// carry (and copy) even when a pooled connection serves it.
    fn connect(
        &self,
        destination: &Destination,
    ) -> Pin<Box<dyn Future<Output = Result<Checkout, BoxError>> + Send + '_>> {
        let destination = destination.clone();
        Box::pin(async move { self.open(&destination).await })
    }

    /// Connects (TCP, proxy, TLS with ALPN), shakes hands in the protocol
    /// the upstream chose and starts the connection's task.
    async fn open(&self, destination: &Destination) -> Result<Checkout, BoxError> {
        let connecting = self.connector.clone().oneshot(destination.uri()?);
        let io = tokio::time::timeout(self.connect_timeout, connecting)
            .await
            .map_err(|_| {
                format!(
                    "no connection within {:?} (TCP, proxy and TLS)",
                    self.connect_timeout
                )
            })??;
        let connected = io.connected();
        let via_proxy = connected.is_proxied();
        if connected.is_negotiated_h2() {
            let (sender, connection) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(io)
                .await?;
            // A broken connection shows in the requests on it.
            tokio::spawn(connection);
            self.share(destination, sender.clone(), via_proxy);
            return Ok(Checkout::Http2(Open { sender, via_proxy }));
        }
        let (sender, connection) = http1::handshake(io).await?;
        tokio::spawn(connection);
        Ok(Checkout::Http1(Open { sender, via_proxy }))
    }

    fn share(&self, destination: &Destination, sender: http2::SendRequest<Body>, via_proxy: bool) {
        host(&mut self.hosts.lock(), destination).shared = Some(Open { sender, via_proxy });
    }
}

/// The entry of `destination`, made on first use.
fn host<'a>(hosts: &'a mut Vec<Host>, destination: &Destination) -> &'a mut Host {
    let index = match hosts.iter().position(|host| host.destination == *destination) {
        Some(index) => index,
        None => {
            hosts.push(Host {
                destination: destination.clone(),
                idle: Vec::new(),
                shared: None,
            });
            hosts.len() - 1
        }
    };
    &mut hosts[index]
}

/// `/path?query`: what HTTP/1.1 sends to the upstream itself.
fn origin_form(uri: &Uri) -> Uri {
    let path = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    Uri::from(path)
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::super::{Answer, UpstreamClient, UpstreamSettings};
    use super::*;

    /// How the test upstream treats a connection after an answer.
    #[derive(Clone, Copy)]
    enum Upstream {
        /// Keeps it open, answering after `delay`.
        KeepsAlive { delay: Duration },
        /// Answers as if it would keep it open, then closes it unannounced,
        /// as upstreams do to idle connections.
        HangsUp,
    }

    /// An upstream on loopback that counts the connections it accepts.
    async fn upstream(behaviour: Upstream) -> (SocketAddr, Arc<AtomicUsize>) {
        let (address, accepted, _) = counted_upstream(behaviour).await;
        (address, accepted)
    }

    /// An upstream on loopback that counts the connections it accepts and
    /// those still open.
    async fn counted_upstream(behaviour: Upstream) -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let accepted = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let (counter, still_open) = (accepted.clone(), open.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                still_open.fetch_add(1, Ordering::SeqCst);
                let still_open = still_open.clone();
                tokio::spawn(async move {
                    serve(tcp, behaviour).await;
                    still_open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        (address, accepted, open)
    }

    async fn serve(mut tcp: tokio::net::TcpStream, behaviour: Upstream) {
        match behaviour {
            Upstream::KeepsAlive { delay } => {
                let answer = service_fn(move |_| async move {
                    tokio::time::sleep(delay).await;
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"{}"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), answer)
                    .await;
            }
            Upstream::HangsUp => {
                let mut head = Vec::new();
                let mut buffer = [0_u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(read) => head.extend_from_slice(&buffer[..read]),
                    }
                }
                let answer =
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
                let _ = tcp.write_all(answer).await;
            }
        }
    }

    fn client(idle_timeout: Duration) -> UpstreamClient {
        UpstreamClient::new(&UpstreamSettings {
            pool_idle_timeout: idle_timeout,
            ..UpstreamSettings::default()
        })
        .expect("client")
    }

    async fn ask(client: &UpstreamClient, address: SocketAddr) {
        let request = client
            .post(format!("http://{address}/v1/chat/completions"))
            .body("{}");
        match client.send(request).await.expect("sent") {
            Answer::Success(response) => {
                let body = UpstreamClient::body(response).await.expect("body");
                assert_eq!(body, "{}");
            }
            Answer::Failure { status, .. } => panic!("upstream answered {status}"),
        }
    }

    #[tokio::test]
    async fn one_request_after_another_shares_one_connection() {
        let (address, accepted) = upstream(Upstream::KeepsAlive {
            delay: Duration::ZERO,
        })
        .await;
        let client = client(Duration::from_secs(90));
        for _ in 0..5 {
            ask(&client, address).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn requests_at_once_open_a_connection_each_and_keep_them() {
        let delay = Duration::from_millis(100);
        let (address, accepted) = upstream(Upstream::KeepsAlive { delay }).await;
        let client = client(Duration::from_secs(90));
        let asks = (0..3).map(|_| ask(&client, address));
        futures::future::join_all(asks).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
        let asks = (0..3).map(|_| ask(&client, address));
        futures::future::join_all(asks).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 3, "the second round reuses them");
    }

    #[tokio::test]
    async fn a_connection_the_upstream_hung_up_is_not_reused() {
        let (address, accepted) = upstream(Upstream::HangsUp).await;
        let client = client(Duration::from_secs(90));
        for _ in 0..3 {
            ask(&client, address).await;
            // Until the hang-up has arrived: a request racing it is the
            // retry path's, which no test can time.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn connections_idle_past_the_timeout_are_not_reused() {
        let (address, accepted) = upstream(Upstream::KeepsAlive {
            delay: Duration::ZERO,
        })
        .await;
        let client = client(Duration::from_millis(50));
        ask(&client, address).await;
        tokio::time::sleep(Duration::from_millis(120)).await;
        ask(&client, address).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn idle_connections_are_closed_without_another_request() {
        let (address, _, open) = counted_upstream(Upstream::KeepsAlive {
            delay: Duration::ZERO,
        })
        .await;
        let client = client(Duration::from_millis(100));
        futures::future::join_all((0..3).map(|_| ask(&client, address))).await;
        assert_eq!(open.load(Ordering::SeqCst), 3, "kept alive after the answers");
        // Timeout and a half, plus the close reaching the upstream.
        let mut waited = Duration::ZERO;
        while open.load(Ordering::SeqCst) > 0 && waited < Duration::from_secs(2) {
            tokio::time::sleep(Duration::from_millis(10)).await;
            waited += Duration::from_millis(10);
        }
        assert_eq!(open.load(Ordering::SeqCst), 0, "closed by the pool on its own");
        assert!(
            waited >= Duration::from_millis(50),
            "not before the idle timeout: {waited:?}"
        );
    }

    #[test]
    fn the_host_header_names_a_port_only_when_it_is_not_the_default() {
        let host = |url: &str| {
            let destination = Destination::of(&url.parse().expect("uri")).expect("absolute");
            destination.host_header().expect("valid")
        };
        assert_eq!(host("http://vllm.ml.svc:8000/v1"), "vllm.ml.svc:8000");
        assert_eq!(host("http://ollama/v1"), "ollama");
        assert_eq!(host("https://api.openai.com:443/v1"), "api.openai.com");
        assert_eq!(host("https://gateway.example:8443/v1"), "gateway.example:8443");
        assert!(Destination::of(&"/v1/chat".parse().expect("uri")).is_err());
    }
}

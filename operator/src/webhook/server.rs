//! The webhook's HTTPS server: rustls over TCP, HTTP/1.1, one route that
//! hands the body to [`Injector::review`], and a health route.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::header::CONTENT_TYPE;
use axum::routing::{get, post};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::Service;

use super::review::Injector;
use super::{Error, MUTATE_PATH};

/// Room for the largest pod the API server stores (1.5 MiB in etcd) inside its review.
const MAX_REVIEW_BYTES: usize = 4 * 1024 * 1024;
/// A client that has not finished its TLS handshake by now is dropped; the
/// API server's own webhook timeout is far shorter.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The webhook's routes.
pub fn router(injector: Injector) -> Router {
    Router::new()
        .route(
            MUTATE_PATH,
            post(|State(injector): State<Injector>, body: Bytes| async move {
                ([(CONTENT_TYPE, "application/json")], injector.review(&body))
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .layer(DefaultBodyLimit::max(MAX_REVIEW_BYTES))
        .with_state(injector)
}

/// Serves `router` over TLS on `listener` until `shutdown` resolves.
///
/// # Errors
/// Accepting connections failed for good.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let acceptor = TlsAcceptor::from(tls);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => accepted?,
            () = &mut shutdown => return Ok(()),
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    tracing::debug!(%peer, %error, "webhook TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let service = hyper::service::service_fn(move |request| {
                let mut router = router.clone();
                async move { router.call(request).await }
            });
            if let Err(error) = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, %error, "webhook connection ended with an error");
            }
        });
    }
}

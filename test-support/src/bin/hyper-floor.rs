//! The least a hyper-based proxy can do per request, as a reference point for
//! `bench/rates.sh`: accept HTTP/1.1, forward the request as it came to one
//! upstream over a keep-alive pool, and stream the answer back. No routing,
//! no JSON, no accounting: the distance from nginx to this is hyper's and
//! tokio's; the distance from this to the sidecar is llmesh's own.
//!
//!     hyper-floor --listen 127.0.0.1:8090 --upstream http://127.0.0.1:8080

use std::convert::Infallible;
use std::net::SocketAddr;

use anyhow::Context as _;
use clap::Parser;
use http::uri::{PathAndQuery, Uri};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

#[derive(Parser)]
struct Args {
    /// Address to accept requests on.
    #[arg(long)]
    listen: SocketAddr,
    /// Scheme and authority every request is forwarded to (`http` only).
    #[arg(long)]
    upstream: Uri,
}

type Pool = Client<HttpConnector, Incoming>;

/// The same runtime shape as the sidecar's default: one thread.
fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let pool: Pool = Client::builder(TokioExecutor::new()).build(connector);
    let upstream = args.upstream;
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let pool = pool.clone();
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| forward(pool.clone(), upstream.clone(), request));
            // A connection's errors are the client's business, not the floor's.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn forward(
    pool: Pool,
    upstream: Uri,
    mut request: http::Request<Incoming>,
) -> Result<http::Response<http_body_util::Either<Incoming, String>>, Infallible> {
    let path = request
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let mut parts = upstream.into_parts();
    parts.path_and_query = Some(path);
    *request.uri_mut() = Uri::from_parts(parts).expect("an upstream authority and a request path make a URI");
    request.headers_mut().remove(http::header::HOST);
    Ok(match pool.request(request).await {
        Ok(answer) => answer.map(http_body_util::Either::Left),
        Err(error) => http::Response::builder()
            .status(http::StatusCode::BAD_GATEWAY)
            .body(http_body_util::Either::Right(error.to_string()))
            .expect("a status and a string body make a response"),
    })
}

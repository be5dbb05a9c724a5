//! The sync channel's client: one watch held open to the operator (pushed
//! configuration and budget totals), and usage reports sent at most once a
//! second while there is spend, each resent until acknowledged.
//!
//! Nothing here is on the request path: requests read what the watch last
//! installed and add to what the reporter sends next, so a slow or dead
//! operator never delays one. Without the operator the sidecar serves its
//! mounted configuration and enforces budgets on the last totals plus its
//! own spend (`failMode: open`) or refuses (`closed`, once stale).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use llmesh_crds::sync::{self, Ack, Frame, Hello, Report};
use rand::Rng;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::budget::Budgets;
use crate::metrics::Metrics;
use crate::providers::{Answer, ProviderError, UpstreamClient, UpstreamSettings};
use crate::reload::{Outcome, Reloader};
use crate::settings::SyncSettings;

/// Reports are batched to at most one per interval; spend is reported no
/// later than this after it was settled (while the operator answers).
pub const REPORT_EVERY: Duration = Duration::from_secs(1);

/// A watch silent this long (three missed keepalives) is taken as dead.
const SILENCE: Duration = Duration::from_secs(45);

/// Reconnect and resend waits grow from this …
const BACKOFF_MIN: Duration = Duration::from_millis(200);
/// … to this, with jitter so sidecars restarted together spread out.
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// One report or watch request's limit (the watch's body is read with
/// [`SILENCE`] between chunks instead).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A watch is reopened at least this often (the body's overall deadline).
const WATCH_LIFETIME: Duration = Duration::from_secs(3600);

/// Why a sync request failed; the caller backs off and tries again.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The token file cannot be read.
    #[error("cannot read the sync token file {path}: {error}")]
    Token {
        /// The file.
        path: String,
        /// Why.
        error: std::io::Error,
    },
    /// The request could not be sent or its answer read.
    #[error("sync request failed: {0}")]
    Transport(#[from] ProviderError),
    /// The operator answered with an error status.
    #[error("the operator answered {status}: {body}")]
    Status {
        /// HTTP status.
        status: u16,
        /// Its body, for the log.
        body: String,
    },
    /// An answer or frame does not parse.
    #[error("unreadable answer from the operator: {0}")]
    Invalid(#[from] serde_json::Error),
    /// The watch stayed silent past its keepalive.
    #[error("no frame or keepalive from the operator for {0:?}")]
    Silent(Duration),
    /// The operator closed the watch.
    #[error("the operator closed the watch")]
    Closed,
}

/// The client's parts, shared by its two tasks and the final flush.
#[derive(Debug)]
pub struct SyncClient {
    settings: SyncSettings,
    budgets: Arc<Budgets>,
    reloader: Arc<Reloader>,
    metrics: Arc<Metrics>,
    reports: UpstreamClient,
    watch: UpstreamClient,
}

impl SyncClient {
    /// A client for `settings`, feeding `reloader` and `budgets`.
    ///
    /// # Errors
    /// The HTTP client cannot be built.
    pub fn new(
        settings: SyncSettings,
        budgets: Arc<Budgets>,
        reloader: Arc<Reloader>,
        metrics: Arc<Metrics>,
        connect_timeout: Duration,
    ) -> Result<Arc<Self>, ProviderError> {
        let client = |request_timeout| {
            UpstreamClient::new(&UpstreamSettings {
                connect_timeout,
                request_timeout,
                extra_roots_pem: settings.ca_pem.clone(),
                ..UpstreamSettings::default()
            })
        };
        let (reports, watch) = (client(REQUEST_TIMEOUT)?, client(WATCH_LIFETIME)?);
        Ok(Arc::new(Self {
            settings,
            budgets,
            reloader,
            metrics,
            reports,
            watch,
        }))
    }

    /// Runs the watch and the reporter until `stop` turns true.
    pub fn start(self: &Arc<Self>, stop: watch::Receiver<bool>) -> [tokio::task::JoinHandle<()>; 2] {
        [
            tokio::spawn(self.clone().watch_loop(stop.clone())),
            tokio::spawn(self.clone().report_loop(stop)),
        ]
    }

    /// Sends what is unreported until acknowledged or `deadline` passes
    /// (shutdown: the last requests' spend must reach the operator).
    pub async fn flush(&self, deadline: Instant) -> bool {
        let mut backoff = Backoff::default();
        while let Some(report) = self.budgets.next_report(&self.reloader.version()) {
            let attempt = tokio::time::timeout_at(deadline, self.send_report(&report)).await;
            match attempt {
                Err(_) => return false,
                Ok(Ok(())) => backoff = Backoff::default(),
                Ok(Err(error)) => {
                    tracing::warn!(%error, "cannot send the last usage report; retrying until the drain ends");
                    if tokio::time::timeout_at(deadline, tokio::time::sleep(backoff.next()))
                        .await
                        .is_err()
                    {
                        return false;
                    }
                }
            }
        }
        true
    }

    fn token(&self) -> Result<String, SyncError> {
        read_token(&self.settings.token_file)
    }

    async fn post(&self, client: &UpstreamClient, path: &str, body: Vec<u8>) -> Result<Answer, SyncError> {
        let token = self.token()?;
        let mut request = client
            .post(format!("{}{path}", self.settings.url))
            .bearer_auth(&token)
            .header(http::header::CONTENT_TYPE, "application/json");
        if let Some(namespace) = &self.settings.namespace {
            request = request.header(sync::NAMESPACE_HEADER, namespace.as_str());
        }
        let request = request.body(body);
        Ok(client.send(request).await?)
    }

    async fn send_report(&self, report: &Report) -> Result<(), SyncError> {
        let body = serde_json::to_vec(report)?;
        let answer = self.post(&self.reports, sync::REPORT_PATH, body).await;
        let answer = answer.inspect_err(|_| self.count_report("failed"))?;
        let response = match answer {
            Answer::Success(response) => response,
            Answer::Failure { status, body, .. } => {
                self.count_report("failed");
                return Err(SyncError::Status {
                    status,
                    body: String::from_utf8_lossy(&body).into_owned(),
                });
            }
        };
        let body = UpstreamClient::body(response).await?;
        let ack: Ack = serde_json::from_slice(&body)?;
        self.count_report(if ack.applied { "acknowledged" } else { "duplicate" });
        self.budgets.acknowledged(ack);
        self.heard();
        Ok(())
    }

    async fn report_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut last_sent: Option<Instant> = None;
        let mut backoff = Backoff::default();
        loop {
            if !self.budgets.has_unreported() {
                tokio::select! {
                    () = self.budgets.spend_to_report() => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
            // Batch: what settles within the interval goes in one report.
            if let Some(last) = last_sent {
                tokio::select! {
                    () = tokio::time::sleep_until(last + REPORT_EVERY) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
            let Some(report) = self.budgets.next_report(&self.reloader.version()) else {
                continue;
            };
            last_sent = Some(Instant::now());
            match self.send_report(&report).await {
                Ok(()) => backoff = Backoff::default(),
                Err(error) => {
                    tracing::warn!(%error, seq = report.seq, "usage report not acknowledged; resending");
                    tokio::select! {
                        () = tokio::time::sleep(backoff.next()) => {}
                        _ = stop.wait_for(|s| *s) => return,
                    }
                }
            }
        }
    }

    async fn watch_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut backoff = Backoff::default();
        loop {
            let outcome = tokio::select! {
                outcome = self.watch_once(&mut backoff) => outcome,
                _ = stop.wait_for(|s| *s) => return,
            };
            self.metrics.sync_connected.with_label_values::<&str>(&[]).set(0);
            if let Err(error) = outcome {
                tracing::warn!(%error, url = self.settings.url, "sync watch lost; reconnecting");
            }
            tokio::select! {
                () = tokio::time::sleep(backoff.next()) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    async fn watch_once(&self, backoff: &mut Backoff) -> Result<(), SyncError> {
        let hello = Hello {
            instance: self.budgets.instance().unwrap_or_default(),
            config_version: self.reloader.version(),
        };
        let answer = self
            .post(&self.watch, sync::WATCH_PATH, serde_json::to_vec(&hello)?)
            .await?;
        let response = match answer {
            Answer::Success(response) => response,
            Answer::Failure { status, body, .. } => {
                return Err(SyncError::Status {
                    status,
                    body: String::from_utf8_lossy(&body).into_owned(),
                });
            }
        };
        tracing::info!(url = self.settings.url, "sync watch open");
        self.metrics.sync_connected.with_label_values::<&str>(&[]).set(1);
        *backoff = Backoff::default();
        self.heard();
        let mut chunks = std::pin::pin!(response.bytes_stream());
        let mut pending = Vec::new();
        loop {
            let chunk = match tokio::time::timeout(SILENCE, chunks.next()).await {
                Err(_) => return Err(SyncError::Silent(SILENCE)),
                Ok(None) => return Err(SyncError::Closed),
                Ok(Some(chunk)) => chunk?,
            };
            pending.extend_from_slice(&chunk);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                self.frame(&line[..end]).await?;
            }
        }
    }

    async fn frame(&self, line: &[u8]) -> Result<(), SyncError> {
        self.heard();
        if line.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        match serde_json::from_slice::<Frame>(line)? {
            Frame::Totals { totals } => self.budgets.set_totals(totals),
            Frame::Config { config } => {
                let version = config.version.clone();
                let reloader = self.reloader.clone();
                let outcome = tokio::task::spawn_blocking(move || reloader.apply_pushed(*config))
                    .await
                    .unwrap_or_else(|e| Outcome::Rejected(e.to_string()));
                let label = match outcome {
                    Outcome::Applied(_) => "applied",
                    Outcome::Unchanged => "unchanged",
                    Outcome::Rejected(_) => "rejected",
                };
                tracing::info!(version, result = label, "configuration pushed by the operator");
                self.metrics.sync_config_pushes.with_label_values(&[label]).inc();
            }
        }
        Ok(())
    }

    fn heard(&self) {
        self.budgets.heard_from_operator();
        let now = jiff::Timestamp::now().as_second();
        self.metrics
            .sync_last_heard
            .with_label_values::<&str>(&[])
            .set(now);
    }

    fn count_report(&self, result: &str) {
        self.metrics.sync_reports.with_label_values(&[result]).inc();
    }
}

fn read_token(path: &Path) -> Result<String, SyncError> {
    std::fs::read_to_string(path)
        .map(|t| t.trim().to_owned())
        .map_err(|error| SyncError::Token {
            path: path.display().to_string(),
            error,
        })
}

/// Exponential backoff with jitter: each wait is drawn from the upper half
/// of a window that doubles up to [`BACKOFF_MAX`].
#[derive(Debug)]
struct Backoff {
    window: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { window: BACKOFF_MIN }
    }
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let window = self.window;
        self.window = (self.window * 2).min(BACKOFF_MAX);
        let half = window / 2;
        half + half.mul_f64(rand::rng().random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_ceiling_and_jitters() {
        let mut backoff = Backoff::default();
        let waits: Vec<Duration> = (0..12).map(|_| backoff.next()).collect();
        assert!(waits[0] >= BACKOFF_MIN / 2 && waits[0] <= BACKOFF_MIN);
        assert!(waits.iter().all(|w| *w <= BACKOFF_MAX));
        assert!(waits[11] >= BACKOFF_MAX / 2, "{waits:?}");
        let other: Vec<Duration> = {
            let mut b = Backoff::default();
            (0..12).map(|_| b.next()).collect()
        };
        assert_ne!(waits, other, "two sidecars do not retry in lockstep");
    }
}

//! Where eval records go: a JSON-lines file, rotated by size, and/or an
//! HTTP endpoint that takes batches of JSON lines. Each outlet has its own
//! bounded queue the request path pushes into without waiting; a record
//! that finds the queue full is dropped and counted.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::Record;
use crate::metrics::Metrics;
pub use crate::telemetry::export::Post;
use crate::telemetry::export::{FIRST_BACKOFF, MAX_BACKOFF};

/// The pod's eval sink settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SinkSettings {
    /// The JSON-lines file, if any.
    pub file: Option<PathBuf>,
    /// Rotate the file when it would grow past this.
    pub file_max_bytes: u64,
    /// Rotated files kept (`FILE.1` newest … `FILE.n`).
    pub file_keep: u32,
    /// The HTTP endpoint, if any.
    pub url: Option<String>,
    /// Records each outlet holds at most while it writes or retries.
    pub queue: usize,
    /// Records per HTTP post at most.
    pub batch: usize,
}

/// The request path's side of the sink.
#[derive(Clone)]
pub struct Sink {
    outlets: Vec<(&'static str, mpsc::Sender<Arc<str>>)>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink").finish_non_exhaustive()
    }
}

impl Sink {
    /// Starts the outlets the settings name; `None` when there are none.
    pub fn start(settings: &SinkSettings, post: Option<Post>, metrics: &Arc<Metrics>) -> Option<Arc<Self>> {
        let mut outlets = Vec::new();
        if let Some(path) = &settings.file {
            let (queue, records) = mpsc::channel(settings.queue.max(1));
            let file = RotatingFile {
                path: path.clone(),
                max_bytes: settings.file_max_bytes,
                keep: settings.file_keep,
            };
            let metrics = metrics.clone();
            // Plain file writes: a thread of their own, off the runtime.
            std::thread::spawn(move || file.run(records, &metrics));
            outlets.push(("file", queue));
        }
        if let Some(post) = post {
            let (queue, records) = mpsc::channel(settings.queue.max(1));
            tokio::spawn(post_batches(
                records,
                settings.batch.max(1),
                post,
                metrics.clone(),
            ));
            outlets.push(("http", queue));
        }
        (!outlets.is_empty()).then(|| {
            Arc::new(Self {
                outlets,
                metrics: metrics.clone(),
            })
        })
    }

    /// Queues a record for every outlet; never waits.
    pub fn submit(&self, record: &Record) {
        let line: Arc<str> = match serde_json::to_string(record) {
            Ok(line) => line.into(),
            Err(error) => {
                tracing::warn!(%error, "an eval record cannot be written");
                return;
            }
        };
        for (name, queue) in &self.outlets {
            if queue.try_send(line.clone()).is_err() {
                self.metrics
                    .eval_records_dropped
                    .with_label_values(&[name, "queue-full"])
                    .inc();
            }
        }
    }
}

/// A JSON-lines file that is renamed aside when it reaches its size.
struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
}

impl RotatingFile {
    fn run(self, mut records: mpsc::Receiver<Arc<str>>, metrics: &Metrics) {
        let mut file = None;
        let mut size = std::fs::metadata(&self.path).map_or(0, |m| m.len());
        while let Some(line) = records.blocking_recv() {
            let length = line.len() as u64 + 1;
            if size > 0 && size + length > self.max_bytes {
                file = None;
                if let Err(error) = self.rotate() {
                    tracing::warn!(path = %self.path.display(), %error, "cannot rotate the eval file");
                }
                size = 0;
            }
            let written = match &mut file {
                Some(open) => Ok(open),
                None => std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)
                    .map(|open| file.insert(open)),
            }
            .and_then(|open| writeln!(open, "{line}"));
            match written {
                Ok(()) => {
                    size += length;
                    metrics.eval_records_written.with_label_values(&["file"]).inc();
                }
                Err(error) => {
                    file = None;
                    metrics
                        .eval_records_dropped
                        .with_label_values(&["file", "write-failed"])
                        .inc();
                    tracing::warn!(path = %self.path.display(), %error, "cannot write the eval file");
                }
            }
        }
    }

    /// `FILE.n-1` → `FILE.n` … `FILE` → `FILE.1`; the oldest goes.
    fn rotate(&self) -> std::io::Result<()> {
        let numbered = |n: u32| {
            let mut name = self.path.clone().into_os_string();
            name.push(format!(".{n}"));
            PathBuf::from(name)
        };
        if self.keep == 0 {
            return std::fs::remove_file(&self.path);
        }
        for n in (1..self.keep).rev() {
            if numbered(n).exists() {
                std::fs::rename(numbered(n), numbered(n + 1))?;
            }
        }
        std::fs::rename(&self.path, numbered(1))
    }
}

/// The longest a record waits for its batch to fill.
const BATCH_DELAY: Duration = Duration::from_secs(1);

/// Posts records in batches; a failed batch is retried with backoff until
/// the endpoint takes it, while new records queue (and drop when the queue
/// is full), so a sink that is down loses at most what its queue cannot hold.
async fn post_batches(
    mut records: mpsc::Receiver<Arc<str>>,
    max_batch: usize,
    post: Post,
    metrics: Arc<Metrics>,
) {
    while let Some(first) = records.recv().await {
        let mut batch = vec![first];
        let due = Instant::now() + BATCH_DELAY;
        while batch.len() < max_batch {
            match tokio::time::timeout_at(due, records.recv()).await {
                Ok(Some(line)) => batch.push(line),
                Ok(None) | Err(_) => break,
            }
        }
        let mut body = Vec::new();
        for line in &batch {
            body.extend_from_slice(line.as_bytes());
            body.push(b'\n');
        }
        let mut backoff = FIRST_BACKOFF;
        loop {
            match post(body.clone()).await {
                Ok(()) => break,
                Err(error) => {
                    if backoff == FIRST_BACKOFF {
                        tracing::warn!(%error, "the eval endpoint does not take records; retrying");
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        metrics
            .eval_records_written
            .with_label_values(&["http"])
            .inc_by(batch.len() as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_rotates_by_size_and_keeps_the_newest() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("eval.jsonl");
        let file = RotatingFile {
            path: path.clone(),
            max_bytes: 100,
            keep: 2,
        };
        let (queue, records) = mpsc::channel(100);
        for i in 0..20 {
            queue
                .try_send(Arc::from(format!(
                    "{{\"n\":{i:03},\"pad\":\"{}\"}}",
                    "x".repeat(20)
                )))
                .expect("room");
        }
        drop(queue);
        let metrics = Metrics::new();
        file.run(records, &metrics);
        let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap_or_default();
        for name in ["eval.jsonl", "eval.jsonl.1", "eval.jsonl.2"] {
            assert!(read(name).len() <= 100, "{name} is over its size");
            assert!(!read(name).is_empty(), "{name}");
        }
        assert!(!dir.path().join("eval.jsonl.3").exists());
        assert!(read("eval.jsonl").ends_with("\"n\":019,\"pad\":\"xxxxxxxxxxxxxxxxxxxx\"}\n"));
        assert_eq!(
            metrics.eval_records_written.with_label_values(&["file"]).get(),
            20
        );
    }
}

//! Where log lines go: an in-memory batch that a thread of its own writes
//! out every few milliseconds.
//!
//! A writer that hands each line to another thread (tracing-appender's
//! `non_blocking`) wakes that thread once per request: a futex wake, a
//! context switch and the channel's spinning, which on a sidecar pinned to
//! one core cost more than the rest of the request's system calls together.
//! Here a request only appends its line under an uncontended lock; the
//! writer thread wakes on a timer, or at once for a warning or an error,
//! and the request path never blocks on stdout however slow its reader.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;
use tracing::Metadata;
use tracing_subscriber::fmt::MakeWriter;

/// How long a line may wait in memory: short enough for `kubectl logs -f`
/// to feel live, long enough that a busy sidecar writes a few large batches
/// a second rather than a line per request.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(50);

/// Bytes held at most while the output is slow; past it lines are dropped
/// and counted, so a stalled log reader costs lines, never memory or latency.
pub const MAX_BUFFERED_BYTES: usize = 4 * 1024 * 1024;

/// A batch buffer kept for reuse is cut back to this after a burst.
const KEPT_CAPACITY: usize = 256 * 1024;

#[derive(Debug)]
struct Shared {
    pending: Mutex<Vec<u8>>,
    max_buffered: usize,
    dropped: AtomicU64,
    stopping: AtomicBool,
}

/// The `MakeWriter` the log subscriber writes through.
#[derive(Clone, Debug)]
pub struct BatchedWriter {
    shared: Arc<Shared>,
    flusher: std::thread::Thread,
}

/// Writes what is still pending and stops the writer thread when dropped:
/// keep it alive for as long as the process logs.
#[derive(Debug)]
pub struct FlushOnDrop {
    shared: Arc<Shared>,
    flusher: Option<JoinHandle<()>>,
}

/// Starts the writer thread for `out`.
///
/// # Errors
/// The thread cannot be spawned.
pub fn batched(
    out: impl Write + Send + 'static,
    interval: Duration,
    max_buffered: usize,
) -> std::io::Result<(BatchedWriter, FlushOnDrop)> {
    let shared = Arc::new(Shared {
        pending: Mutex::new(Vec::new()),
        max_buffered,
        dropped: AtomicU64::new(0),
        stopping: AtomicBool::new(false),
    });
    let flusher = std::thread::Builder::new().name("log-writer".to_owned()).spawn({
        let shared = shared.clone();
        move || write_batches(&shared, out, interval)
    })?;
    let writer = BatchedWriter {
        shared: shared.clone(),
        flusher: flusher.thread().clone(),
    };
    Ok((
        writer,
        FlushOnDrop {
            shared,
            flusher: Some(flusher),
        },
    ))
}

fn write_batches(shared: &Shared, mut out: impl Write, interval: Duration) {
    let mut batch = Vec::new();
    loop {
        std::thread::park_timeout(interval);
        let stopping = shared.stopping.load(Ordering::Acquire);
        std::mem::swap(&mut *shared.pending.lock(), &mut batch);
        let dropped = shared.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            // Written as a line of its own so that log pipelines see the gap.
            let _ = writeln!(
                batch,
                r#"{{"level":"WARN","target":"llmesh::log","message":"log output too slow; {dropped} lines dropped"}}"#
            );
        }
        if !batch.is_empty() {
            // Nowhere to report a failing stdout; the lines are gone either way.
            let _ = out.write_all(&batch).and_then(|()| out.flush());
            batch.clear();
            batch.shrink_to(KEPT_CAPACITY);
        }
        if stopping {
            return;
        }
    }
}

impl Drop for FlushOnDrop {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::Release);
        if let Some(flusher) = self.flusher.take() {
            flusher.thread().unpark();
            let _ = flusher.join();
        }
    }
}

/// One log line on its way into the batch.
#[derive(Debug)]
pub struct LineWriter<'a> {
    writer: &'a BatchedWriter,
    urgent: bool,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let shared = &self.writer.shared;
        let mut pending = shared.pending.lock();
        if pending.len() + bytes.len() > shared.max_buffered {
            drop(pending);
            shared.dropped.fetch_add(1, Ordering::Relaxed);
        } else {
            pending.extend_from_slice(bytes);
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter<'_> {
    fn drop(&mut self) {
        if self.urgent {
            self.writer.flusher.unpark();
        }
    }
}

impl<'a> MakeWriter<'a> for BatchedWriter {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            writer: self,
            urgent: false,
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        LineWriter {
            writer: self,
            urgent: *meta.level() <= tracing::Level::WARN,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Sink {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock()).into_owned()
        }

        fn wait_for(&self, needle: &str) -> Duration {
            let started = Instant::now();
            while !self.text().contains(needle) {
                assert!(
                    started.elapsed() < Duration::from_secs(5),
                    "{needle} never written"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            started.elapsed()
        }
    }

    fn subscriber(writer: BatchedWriter) -> impl tracing::Subscriber {
        tracing_subscriber::fmt()
            .with_writer(writer)
            .with_ansi(false)
            .without_time()
            .finish()
    }

    #[test]
    fn lines_arrive_in_order_within_the_interval_and_the_rest_at_drop() {
        let sink = Sink::default();
        let (writer, flush) =
            batched(sink.clone(), Duration::from_millis(20), MAX_BUFFERED_BYTES).expect("thread");
        tracing::subscriber::with_default(subscriber(writer), || {
            for n in 0..100 {
                tracing::info!(n, "line");
            }
        });
        sink.wait_for("n=99");
        let text = sink.text();
        let numbers: Vec<usize> = text
            .lines()
            .filter_map(|l| l.rsplit("n=").next()?.parse().ok())
            .collect();
        assert_eq!(numbers, (0..100).collect::<Vec<_>>());

        let (writer, flush_late) =
            batched(sink.clone(), Duration::from_secs(3600), MAX_BUFFERED_BYTES).expect("thread");
        tracing::subscriber::with_default(subscriber(writer), || tracing::info!("at shutdown"));
        assert!(!sink.text().contains("at shutdown"), "held until the interval");
        drop(flush_late);
        assert!(sink.text().contains("at shutdown"), "written when the guard goes");
        drop(flush);
    }

    #[test]
    fn warnings_are_written_at_once() {
        let sink = Sink::default();
        let (writer, _flush) =
            batched(sink.clone(), Duration::from_secs(3600), MAX_BUFFERED_BYTES).expect("thread");
        tracing::subscriber::with_default(subscriber(writer), || {
            tracing::info!("routine");
            tracing::warn!("upstream failing");
        });
        let waited = sink.wait_for("upstream failing");
        assert!(waited < Duration::from_secs(1), "{waited:?}");
        assert!(
            sink.text().contains("routine"),
            "earlier lines go with it, in order"
        );
    }

    #[test]
    fn a_full_buffer_drops_lines_and_says_how_many() {
        let sink = Sink::default();
        let (writer, flush) = batched(sink.clone(), Duration::from_secs(3600), 200).expect("thread");
        tracing::subscriber::with_default(subscriber(writer), || {
            for n in 0..10 {
                tracing::info!(n, "a line of some forty bytes");
            }
        });
        drop(flush);
        let text = sink.text();
        let kept = text.lines().filter(|l| l.contains("forty bytes")).count();
        assert!((1..10).contains(&kept), "{text}");
        assert!(text.contains(&format!("{} lines dropped", 10 - kept)), "{text}");
    }
}

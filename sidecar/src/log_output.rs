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
//! After a second without lines the timer stops (an idle sidecar has no
//! periodic wake-up) and the next line wakes the thread.

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

/// How long the timer runs on without lines before the thread sleeps until
/// the next one: under traffic, even a few requests a second, no request
/// pays the wake-up; idle, nothing ticks.
const SLEEP_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Shared {
    pending: Mutex<Vec<u8>>,
    max_buffered: usize,
    dropped: AtomicU64,
    stopping: AtomicBool,
    /// The thread sleeps without a timer; the next line clears it and wakes it.
    asleep: AtomicBool,
    /// A warning or an error is waiting: write without waiting for the interval.
    urgent: AtomicBool,
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
        asleep: AtomicBool::new(false),
        urgent: AtomicBool::new(false),
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
    let quiet_limit = (SLEEP_AFTER.as_nanos() / interval.as_nanos().max(1)).max(1);
    let mut quiet = 0;
    let mut batch = Vec::new();
    loop {
        if quiet >= quiet_limit {
            sleep_until_a_line(shared);
            quiet = 0;
        }
        if !shared.stopping.load(Ordering::Acquire) && !shared.urgent.swap(false, Ordering::AcqRel) {
            std::thread::park_timeout(interval);
        }
        shared.urgent.store(false, Ordering::Release);
        let stopping = shared.stopping.load(Ordering::Acquire);
        std::mem::swap(&mut *shared.pending.lock(), &mut batch);
        quiet = if batch.is_empty() { quiet + 1 } else { 0 };
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

/// Parks without a timeout until a line arrives (or the writer stops).
fn sleep_until_a_line(shared: &Shared) {
    shared.asleep.store(true, Ordering::SeqCst);
    loop {
        // Checked under the lock lines are appended under: a line appended
        // before saw no `asleep` and is here; one appended after clears it.
        if !shared.pending.lock().is_empty() || shared.stopping.load(Ordering::Acquire) {
            shared.asleep.store(false, Ordering::SeqCst);
            return;
        }
        std::thread::park();
        if !shared.asleep.load(Ordering::SeqCst) {
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
            let wake = shared.asleep.swap(false, Ordering::SeqCst);
            drop(pending);
            if wake {
                self.writer.flusher.unpark();
            }
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
            self.writer.shared.urgent.store(true, Ordering::Release);
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
    fn the_timer_stops_when_idle_and_the_next_line_wakes_the_writer() {
        let sink = Sink::default();
        let (writer, _flush) =
            batched(sink.clone(), Duration::from_millis(20), MAX_BUFFERED_BYTES).expect("thread");
        let shared = writer.shared.clone();
        tracing::subscriber::with_default(subscriber(writer.clone()), || {
            tracing::info!("before the pause");
        });
        sink.wait_for("before the pause");
        let started = Instant::now();
        while !shared.asleep.load(Ordering::SeqCst) {
            assert!(
                started.elapsed() < SLEEP_AFTER * 5,
                "still ticking after a quiet second"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        tracing::subscriber::with_default(subscriber(writer), || tracing::info!("after the pause"));
        let waited = sink.wait_for("after the pause");
        assert!(waited < Duration::from_secs(1), "{waited:?}");
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

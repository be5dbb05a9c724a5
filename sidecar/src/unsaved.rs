//! Changed since the state file was last written: a flag its writer can await.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

/// Set on the request path, taken by the state file's writer, which sleeps
/// until it is set: an idle sidecar has no timer ticking for the file.
#[derive(Debug, Default)]
pub struct Unsaved {
    flag: AtomicBool,
    set: Notify,
}

impl Unsaved {
    /// Marks a change; wakes the writer only when the flag was clear, so a
    /// busy request path pays one wake-up per write, not one per request.
    pub fn mark(&self) {
        if !self.flag.swap(true, Ordering::AcqRel) {
            self.set.notify_one();
        }
    }

    /// Whether anything changed since the last call.
    pub fn take(&self) -> bool {
        self.flag.swap(false, Ordering::AcqRel)
    }

    /// Returns once something changed (at most once early, for a change
    /// already taken).
    pub async fn marked(&self) {
        if !self.flag.load(Ordering::Acquire) {
            // `notify_one` keeps a permit when nobody waits: a change between
            // the load and this await is not missed.
            self.set.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn the_writer_sleeps_until_a_change_and_takes_it_once() {
        let unsaved = Arc::new(Unsaved::default());
        let waiter = tokio::spawn({
            let unsaved = unsaved.clone();
            async move { unsaved.marked().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "nothing changed yet");
        unsaved.mark();
        unsaved.mark();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken by the change")
            .expect("task");
        assert!(unsaved.take());
        assert!(!unsaved.take(), "taken once");
    }

    #[tokio::test]
    async fn a_change_before_the_wait_is_not_missed() {
        let unsaved = Unsaved::default();
        unsaved.mark();
        tokio::time::timeout(Duration::from_secs(5), unsaved.marked())
            .await
            .expect("returns at once");
    }
}

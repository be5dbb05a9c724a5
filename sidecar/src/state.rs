//! Local state that outlives the process: budget spend, session tokens and
//! rate-limit buckets, kept in one file (`LLMESH_STATE_FILE`) so a
//! restarted sidecar neither forgets what a team spent nor hands every key
//! a fresh minute.

pub mod file;

use std::path::PathBuf;
use std::sync::Arc;

use crate::budget::{Budgets, Clock};
use crate::limits::RateLimiter;
use crate::metrics::Metrics;
pub use file::StateError;

/// The parts of the sidecar the state file restores, and the file.
#[derive(Debug)]
pub struct LocalState {
    file: Option<PathBuf>,
    clock: Arc<dyn Clock>,
    /// Budget spend and session tokens.
    pub budgets: Arc<Budgets>,
    /// Every key's rate-limit buckets.
    pub rate_limits: Arc<RateLimiter>,
}

impl LocalState {
    /// State carrying on from `file` (none, or no file yet: from zero).
    ///
    /// # Errors
    /// The file exists but cannot be read or is corrupt. It is left as it
    /// is for a person to look at; nothing is zeroed.
    pub fn open(
        file: Option<PathBuf>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        sync: bool,
    ) -> Result<Self, StateError> {
        let saved = match &file {
            Some(path) => file::load(path)?,
            None => file::Saved::default(),
        };
        let rate_limits = RateLimiter::restore(saved.rate_limits, clock.now());
        let budgets = Budgets::new(clock.clone(), metrics, (saved.budgets, saved.sessions));
        if sync {
            budgets.enable_sync(saved.sync);
        }
        Ok(Self {
            file,
            clock,
            budgets: Arc::new(budgets),
            rate_limits: Arc::new(rate_limits),
        })
    }

    /// Writes the file if anything changed since the last write.
    ///
    /// # Errors
    /// The file cannot be written; the next flush tries again.
    pub fn flush(&self) -> Result<(), StateError> {
        let Some(path) = &self.file else { return Ok(()) };
        let budgets_changed = self.budgets.take_changed();
        let limits_changed = self.rate_limits.take_changed();
        if !(budgets_changed || limits_changed) {
            return Ok(());
        }
        let (budgets, sessions) = self.budgets.recorded();
        let saved = file::Saved {
            budgets,
            sessions,
            rate_limits: self.rate_limits.saved(self.clock.now()),
            sync: self.budgets.saved_sync(),
        };
        file::save(path, &saved).inspect_err(|_| {
            self.budgets.mark_changed();
            self.rate_limits.mark_changed();
        })
    }
}

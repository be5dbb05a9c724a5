//! Charges held at admission and settled when the request is over.

use crate::api::Usage;

/// Something charged at admission (a rate-limit reservation, budget spend)
/// and settled with the actual usage and cost when the request is over —
/// for a stream, when its last chunk is out or the app hung up.
///
/// Budgets and rate limits implement it; the access record, which knows
/// when a request is over, settles them without knowing what they are.
pub trait Settle: Send + Sync + std::fmt::Debug {
    /// Accounts the request's actual usage and its cost, if priced.
    fn settle(&self, usage: &Usage, cost: Option<f64>);
}

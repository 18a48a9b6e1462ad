//! The business figures of a set of simulated conversations.
use crate::driver::ConversationResult;
use serde::Serialize;

/// Rates are per conversation unless named otherwise; money is in currency units.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Summary {
    /// Conversations.
    pub conversations: usize,
    /// Share that ended in an order.
    pub conversion_rate: f64,
    /// Revenue per conversation.
    pub revenue: f64,
    /// Margin per conversation.
    pub margin: f64,
    /// Offers shown per conversation.
    pub offers: f64,
    /// Accepted offers per offer shown.
    pub acceptance_rate: f64,
    /// Share with a complaint.
    pub complaint_rate: f64,
    /// Share with an opt-out.
    pub opt_out_rate: f64,
    /// Share handed to a person.
    pub handoff_rate: f64,
    /// Share where the customer left annoyed.
    pub gone_rate: f64,
    /// Offers made while a problem was open, per offer shown.
    pub offers_while_open: f64,
}

impl Summary {
    /// The figures of `results`.
    pub fn of(results: &[ConversationResult]) -> Summary {
        let n = results.len().max(1) as f64;
        let share = |f: &dyn Fn(&ConversationResult) -> bool| results.iter().filter(|r| f(r)).count() as f64 / n;
        let offers: u32 = results.iter().map(|r| r.offers).sum();
        let per_offer = |v: u32| {
            if offers > 0 {
                f64::from(v) / f64::from(offers)
            } else {
                0.0
            }
        };
        Summary {
            conversations: results.len(),
            conversion_rate: share(&|r| r.converted),
            revenue: results.iter().map(|r| r.revenue as f64 / 100.0).sum::<f64>() / n,
            margin: results.iter().map(|r| r.margin as f64 / 100.0).sum::<f64>() / n,
            offers: f64::from(offers) / n,
            acceptance_rate: per_offer(results.iter().map(|r| r.accepted).sum()),
            complaint_rate: share(&|r| r.complaint),
            opt_out_rate: share(&|r| r.opted_out),
            handoff_rate: share(&|r| r.handoff),
            gone_rate: share(&|r| r.gone),
            offers_while_open: per_offer(results.iter().map(|r| r.offers_while_open).sum()),
        }
    }
}

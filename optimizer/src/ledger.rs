//! Decisions (from the servers' decision logs) joined with their outcomes (from the optimizer's
//! own outcome log). Both logs are the source of truth: the ledger is rebuilt from them at start,
//! so a crash loses nothing that was acknowledged.
use crate::reward::{OutcomeFields, Reward};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};

/// The parts of a logged decision that learning needs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Decision {
    pub decision_id: String,
    pub time_ms: u64,
    pub policy_version: String,
    pub context: BTreeMap<String, f64>,
    pub candidates: Vec<Candidate>,
    pub option: usize,
    pub propensity: f64,
    /// Options the logging policy had (candidates, plus "no offer" if it was allowed).
    pub probabilities: Vec<f64>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Candidate {
    pub id: String,
    pub features: BTreeMap<String, f64>,
}

/// One outcome event as the optimizer logs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutcomeRecord {
    pub event_id: String,
    pub decision_id: String,
    /// shown, click, add_to_cart, convert, decline, opt_out, complaint
    pub kind: String,
    pub revenue: f64,
    pub margin: f64,
    pub time_ms: u64,
    pub received_ms: u64,
    /// After the decision's reward window: kept for the record, never trained on.
    pub late: bool,
}

#[derive(Default)]
pub struct Ledger {
    decisions: HashMap<String, Decision>,
    outcomes: HashMap<String, OutcomeFields>,
    event_ids: HashSet<String>,
    pub late_outcomes: u64,
    pub outcomes_recorded: u64,
}

/// A decision whose reward window has closed, with its reward.
#[derive(Debug, Clone)]
pub struct Example {
    pub decision: Decision,
    pub reward: f64,
}

impl Ledger {
    /// Adds a decision-log record; malformed ones are skipped (and counted by the caller).
    pub fn add_decision(&mut self, record: serde_json::Value) -> bool {
        match serde_json::from_value::<Decision>(record) {
            Ok(d) if d.option < d.probabilities.len() && d.propensity > 0.0 => {
                self.decisions.insert(d.decision_id.clone(), d);
                true
            }
            _ => false,
        }
    }

    pub fn decision(&self, id: &str) -> Option<&Decision> {
        self.decisions.get(id)
    }

    pub fn decisions(&self) -> usize {
        self.decisions.len()
    }

    /// Reserves an event id; false if it was seen before.
    pub fn claim_event(&mut self, event_id: &str) -> bool {
        self.event_ids.insert(event_id.to_string())
    }

    pub fn release_event(&mut self, event_id: &str) {
        self.event_ids.remove(event_id);
    }

    /// Applies a durable outcome record (its event id already claimed, or replayed at start).
    pub fn add_outcome(&mut self, o: &OutcomeRecord) {
        self.event_ids.insert(o.event_id.clone());
        self.outcomes_recorded += 1;
        if o.late {
            self.late_outcomes += 1;
            return;
        }
        let f = self.outcomes.entry(o.decision_id.clone()).or_default();
        match o.kind.as_str() {
            "convert" => {
                f.add("conversion", 1.0);
                f.add("revenue", o.revenue);
                f.add("margin", o.margin);
            }
            k => f.add(k, 1.0),
        }
    }

    /// Decisions whose reward window closed by `now_ms`, oldest first, with their rewards.
    pub fn examples(&self, reward: &Reward, now_ms: u64) -> Vec<Example> {
        let mut v: Vec<Example> = self
            .decisions
            .values()
            .filter(|d| d.time_ms.saturating_add(reward.window_ms) <= now_ms)
            .map(|d| Example {
                decision: d.clone(),
                reward: reward.value(self.outcomes.get(&d.decision_id)),
            })
            .collect();
        v.sort_by(|a, b| {
            (a.decision.time_ms, &a.decision.decision_id).cmp(&(b.decision.time_ms, &b.decision.decision_id))
        });
        v
    }
}

//! Decisions (from the servers' decision logs) joined with their outcomes (from the optimizer's
//! own outcome log). Both logs are the source of truth: the ledger is rebuilt from them at start,
//! so a crash loses nothing that was acknowledged. Both record types are `nudge_records`'s: the
//! servers write exactly what is read here.
use crate::reward::Reward;
use nudge_records::{read_all, DecisionRecord, LogError, OutcomeRecord, OutcomeTotals};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

/// Decisions by id, each with the totals of its outcomes so far.
#[derive(Default)]
pub struct Ledger {
    decisions: HashMap<String, DecisionRecord>,
    outcomes: HashMap<String, OutcomeTotals>,
    event_ids: HashSet<String>,
    /// Outcomes that arrived after their decision's reward window.
    pub late_outcomes: u64,
    /// Outcomes recorded (late included).
    pub outcomes_recorded: u64,
}

/// A decision whose reward window has closed, with its reward.
#[derive(Debug, Clone)]
pub struct Example {
    /// The logged decision.
    pub decision: DecisionRecord,
    /// The reward file's value of its outcomes.
    pub reward: f64,
}

impl Ledger {
    /// The ledger of every decision and outcome record in `dirs` (each may hold either kind),
    /// and how many lines were not valid records (each logged with its file and line).
    pub fn read(dirs: &[PathBuf]) -> Result<(Ledger, u64), LogError> {
        let mut ledger = Ledger::default();
        let mut malformed = 0;
        for dir in dirs {
            let (decisions, bad) = read_all::<DecisionRecord>(dir)?;
            malformed += bad;
            decisions.into_iter().for_each(|d| ledger.add_decision(d));
            let (outcomes, bad) = read_all::<OutcomeRecord>(dir)?;
            malformed += bad;
            outcomes.iter().for_each(|o| ledger.add_outcome(o));
        }
        Ok((ledger, malformed))
    }

    /// Adds a decision (already checked by the tailer that read it).
    pub fn add_decision(&mut self, d: DecisionRecord) {
        self.decisions.insert(d.decision_id.clone(), d);
    }

    /// The decision with this id, if logged.
    pub fn decision(&self, id: &str) -> Option<&DecisionRecord> {
        self.decisions.get(id)
    }

    /// How many decisions are known.
    pub fn decisions(&self) -> usize {
        self.decisions.len()
    }

    /// Reserves an event id; false if it was seen before.
    pub fn claim_event(&mut self, event_id: &str) -> bool {
        self.event_ids.insert(event_id.to_string())
    }

    /// True if an outcome with this event id is recorded (or claimed).
    pub fn has_event(&self, event_id: &str) -> bool {
        self.event_ids.contains(event_id)
    }

    /// Frees an event id whose outcome could not be made durable (the reporter retries).
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
        self.outcomes.entry(o.decision_id.clone()).or_default().add(o);
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

#[cfg(test)]
mod tests {
    use super::*;
    use nudge_records::{OutcomeKind, DECISION_SCHEMA, OUTCOME_SCHEMA};

    fn decision(id: &str, time_ms: u64) -> DecisionRecord {
        DecisionRecord {
            schema: DECISION_SCHEMA,
            decision_id: id.into(),
            time_ms,
            conversation_id: "c".into(),
            customer: String::new(),
            channel: String::new(),
            policy_version: "v1".into(),
            model_version: String::new(),
            context: Default::default(),
            candidates: vec![],
            offer_id: String::new(),
            option: 0,
            propensity: 1.0,
            probabilities: vec![1.0],
            scores: vec![],
            how: "greedy".into(),
        }
    }

    fn outcome(event: &str, decision: &str, kind: OutcomeKind, margin: f64, late: bool) -> OutcomeRecord {
        OutcomeRecord {
            schema: OUTCOME_SCHEMA,
            event_id: event.into(),
            decision_id: decision.into(),
            kind,
            revenue: 2.0 * margin,
            margin,
            time_ms: 0,
            received_ms: 0,
            late,
        }
    }

    #[test]
    fn joins_outcomes_with_closed_decisions_in_time_order() {
        let reward = Reward::from_toml(
            "r.toml",
            "reward = \"conversion * margin - complaint\"\nwindow_seconds = 10",
        )
        .unwrap();
        let mut l = Ledger::default();
        l.add_decision(decision("b", 2_000));
        l.add_decision(decision("a", 1_000));
        l.add_decision(decision("open", 50_000));
        assert!(l.claim_event("e1"));
        assert!(!l.claim_event("e1"), "an event id counts once");
        l.add_outcome(&outcome("e1", "a", OutcomeKind::Convert, 5.0, false));
        l.add_outcome(&outcome("e2", "a", OutcomeKind::Complaint, 0.0, false));
        l.add_outcome(&outcome("e3", "b", OutcomeKind::Convert, 7.0, true));
        let ex = l.examples(&reward, 20_000);
        let got: Vec<(&str, f64)> = ex.iter().map(|e| (e.decision.decision_id.as_str(), e.reward)).collect();
        // `open`'s window has not closed; `b`'s conversion came late and is not trained on.
        assert_eq!(got, vec![("a", 4.0), ("b", 0.0)]);
        assert_eq!((l.outcomes_recorded, l.late_outcomes), (3, 1));
        l.release_event("e1");
        assert!(l.claim_event("e1"));
    }
}

//! Conversations as episodes. A bandit judges each decision alone; a conversation is a sequence
//! in which an offer's timing decides its fate (a coupon during an open refund loses the sale,
//! the same coupon after the problem is solved converts). The logs already hold what a
//! sequential learner needs: every decision of a conversation carries its `conversation_id`,
//! the state the server saw (stage, turn, offers shown, intent… as context features), the
//! options it had with the probability of each, and the option taken. Grouped by conversation
//! and ordered by time, they are episodes of (state, action, propensity, reward) steps.
//!
//! Rewards are the reward file's value of each decision's own outcomes, credited to the step
//! that earned them (`credit = "decision"`, the default) or all to the last step of the
//! conversation (`credit = "end"`, for rewards that only make sense for the whole talk). A
//! decision without a conversation (the Decide API) is an episode of one step.
use crate::ledger::Example;
use nudge_policy::FeatureSchema;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// Where a step's outcomes are credited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Credit {
    /// To the decision whose outcomes they are.
    #[default]
    Decision,
    /// All to the conversation's last decision.
    End,
}

/// One decision of a conversation, as learners and estimators read it: the schema's context
/// vector and offer vectors (the joint rows are built on demand: they are `|offer|+1` times
/// larger), the logged option and its probability, and the reward credited to it.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// The decision's id (for audits).
    pub decision_id: String,
    /// Context features in schema order.
    pub context: Vec<f64>,
    /// Offer features of each candidate, in logged order.
    pub offers: Vec<Vec<f64>>,
    /// The option taken (an index into [`Step::options`]).
    pub action: usize,
    /// The logging policy's probability of `action`.
    pub propensity: f64,
    /// Reward credited to this step.
    pub reward: f64,
}

impl Step {
    /// Joint feature rows of every option (candidates, then "no offer" when allowed).
    pub fn options(&self, schema: &FeatureSchema) -> Vec<Vec<f64>> {
        schema.options(&self.context, &self.offers)
    }

    /// How many options the step had.
    pub fn option_count(&self, schema: &FeatureSchema) -> usize {
        self.offers.len() + usize::from(schema.allow_none)
    }
}

/// A conversation's decisions in time order.
#[derive(Debug, Clone, PartialEq)]
pub struct Episode {
    /// The conversation (or the decision id, for a decision made outside one).
    pub id: String,
    /// Its decisions, oldest first.
    pub steps: Vec<Step>,
}

impl Episode {
    /// Σₜ γᵗ rₜ: what the logging policy earned in this conversation.
    pub fn discounted_return(&self, gamma: f64) -> f64 {
        self.steps
            .iter()
            .enumerate()
            .map(|(t, s)| gamma.powi(t as i32) * s.reward)
            .sum()
    }
}

/// Episodes built from joined examples, and what could not be used.
#[derive(Debug, Clone, Default)]
pub struct Episodes {
    /// Oldest conversation first (by its first decision).
    pub episodes: Vec<Episode>,
    /// Conversations dropped because a decision's options do not match the schema's layout
    /// (made under another schema, or with "no offer" toggled): their steps are not comparable.
    pub dropped: usize,
}

/// Groups `examples` by conversation into episodes of `schema`'s features.
pub fn episodes(schema: &FeatureSchema, examples: &[Example], credit: Credit) -> Episodes {
    let mut by_conv: HashMap<&str, Vec<&Example>> = HashMap::new();
    for e in examples {
        let key = if e.decision.conversation_id.is_empty() {
            e.decision.decision_id.as_str()
        } else {
            e.decision.conversation_id.as_str()
        };
        by_conv.entry(key).or_default().push(e);
    }
    let turn = |e: &Example| {
        e.decision
            .context
            .get(nudge_policy::context::TURN)
            .copied()
            .unwrap_or(0.0)
    };
    let mut out = Episodes::default();
    let mut ordered: Vec<(u64, Episode)> = Vec::with_capacity(by_conv.len());
    'conv: for (id, mut decisions) in by_conv {
        decisions.sort_by(|a, b| {
            (a.decision.time_ms, turn(a))
                .partial_cmp(&(b.decision.time_ms, turn(b)))
                .unwrap_or(std::cmp::Ordering::Equal)
                .then_with(|| a.decision.decision_id.cmp(&b.decision.decision_id))
        });
        let mut steps = Vec::with_capacity(decisions.len());
        for e in &decisions {
            let d = &e.decision;
            let ctx: HashMap<String, f64> = d.context.iter().map(|(k, v)| (k.clone(), *v)).collect();
            let offers: Vec<Vec<f64>> = d
                .candidates
                .iter()
                .map(|o| schema.offer_vector(&o.features.iter().map(|(k, v)| (k.clone(), *v)).collect()))
                .collect();
            let n = offers.len() + usize::from(schema.allow_none);
            let valid_p = d.propensity > 0.0 && d.propensity <= 1.0 && d.propensity.is_finite();
            if n != d.probabilities.len() || d.option >= n || !valid_p {
                out.dropped += 1;
                continue 'conv;
            }
            steps.push(Step {
                decision_id: d.decision_id.clone(),
                context: schema.context_vector(&ctx),
                offers,
                action: d.option,
                propensity: d.propensity,
                reward: e.reward,
            });
        }
        if credit == Credit::End {
            let total: f64 = steps.iter().map(|s| s.reward).sum();
            let last = steps.len() - 1;
            for (i, s) in steps.iter_mut().enumerate() {
                s.reward = if i == last { total } else { 0.0 };
            }
        }
        let first = decisions.first().map_or(0, |e| e.decision.time_ms);
        ordered.push((
            first,
            Episode {
                id: id.to_string(),
                steps,
            },
        ));
    }
    ordered.sort_by(|a, b| (a.0, &a.1.id).cmp(&(b.0, &b.1.id)));
    out.episodes = ordered.into_iter().map(|(_, e)| e).collect();
    out
}

/// Steps per conversation, for reports: `{steps: conversations}`.
pub fn length_histogram(episodes: &[Episode]) -> BTreeMap<usize, usize> {
    let mut h = BTreeMap::new();
    for e in episodes {
        *h.entry(e.steps.len()).or_default() += 1;
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use nudge_records::{DecisionRecord, LoggedOffer, DECISION_SCHEMA};

    fn decision(conv: &str, id: &str, time_ms: u64, turn: f64, option: usize) -> Example {
        Example {
            decision: DecisionRecord {
                schema: DECISION_SCHEMA,
                decision_id: id.into(),
                time_ms,
                conversation_id: conv.into(),
                customer: String::new(),
                channel: String::new(),
                policy_version: "v1".into(),
                model_version: String::new(),
                offer_id: String::new(),
                scores: vec![],
                how: "sampled".into(),
                context: [("turn".to_string(), turn), ("stage=issue".to_string(), 1.0)].into(),
                candidates: vec![LoggedOffer {
                    id: "a".into(),
                    features: [("offer=a".to_string(), 1.0)].into(),
                }],
                option,
                propensity: 0.5,
                probabilities: vec![0.5, 0.5],
            },
            reward: turn,
        }
    }

    fn schema() -> FeatureSchema {
        FeatureSchema {
            context: vec!["stage=issue".into(), "turn".into()],
            offer: vec!["offer=a".into()],
            allow_none: true,
        }
    }

    #[test]
    fn groups_by_conversation_in_time_order_and_credits_rewards() {
        let ex = vec![
            decision("c2", "x", 50, 1.0, 0),
            decision("c1", "b", 20, 2.0, 1),
            decision("c1", "a", 10, 1.0, 0),
            // Same millisecond: the turn number orders them.
            decision("c1", "c", 20, 3.0, 0),
            decision("", "solo", 5, 1.0, 1),
        ];
        let e = episodes(&schema(), &ex, Credit::Decision);
        assert_eq!(e.dropped, 0);
        let ids: Vec<&str> = e.episodes.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, vec!["solo", "c1", "c2"]);
        let c1 = &e.episodes[1];
        let steps: Vec<(&str, usize, f64)> = c1
            .steps
            .iter()
            .map(|s| (s.decision_id.as_str(), s.action, s.reward))
            .collect();
        assert_eq!(steps, vec![("a", 0, 1.0), ("b", 1, 2.0), ("c", 0, 3.0)]);
        assert_eq!(c1.steps[1].context, vec![1.0, 2.0]);
        assert_eq!(c1.steps[0].options(&schema()).len(), 2);
        assert!((c1.discounted_return(0.5) - (1.0 + 0.5 * 2.0 + 0.25 * 3.0)).abs() < 1e-12);

        let end = episodes(&schema(), &ex, Credit::End);
        let rewards: Vec<f64> = end.episodes[1].steps.iter().map(|s| s.reward).collect();
        assert_eq!(rewards, vec![0.0, 0.0, 6.0]);
        assert_eq!(length_histogram(&end.episodes), [(1, 2), (3, 1)].into());

        // A decision logged without "no offer" does not fit this schema: its conversation goes.
        let mut odd = decision("c3", "z", 60, 1.0, 0);
        odd.decision.probabilities = vec![1.0];
        odd.decision.propensity = 1.0;
        let e = episodes(&schema(), &[ex, vec![odd]].concat(), Credit::Decision);
        assert_eq!((e.episodes.len(), e.dropped), (3, 1));
    }
}

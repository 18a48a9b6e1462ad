//! KPIs from conversation events: counts per minute by channel, intent, offer, policy version
//! and experiment arm, kept in memory for a bounded window and rebuilt from the event log at
//! start, so the console's charts, its CSV export and the experiment verdicts all read one
//! source — the same `ConversationEvent`s analysts read from the files. In a cluster the other
//! servers' events arrive through the cluster's event stream (`crate::cluster`'s `events`) and
//! are counted the same way.
//!
//! Why counts per minute and dimension rather than the events: the console asks for any slice
//! of the last days at any time, and counts make that a sum over a few thousand cells; the
//! events stay in the log for whoever needs more.
//!
//! An outcome knows only its decision; it is counted under the dimensions of the turn that made
//! the decision (kept for the window), so "conversion by intent" means the intent of the turn
//! that made the offer.
use crate::experiment::Sample;
use nudge_records::{ConversationEvent, EventKind, OutcomeKind};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

/// Width of a KPI bucket.
pub const BUCKET_MS: u64 = 60_000;

/// What KPIs can be grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dimension {
    /// web, app, mini_program, phone, social.
    Channel,
    /// The turn's intent.
    Intent,
    /// The offer made.
    Offer,
    /// The policy version that chose.
    Policy,
    /// `experiment/arm`.
    Arm,
}

impl Dimension {
    /// The dimension by its name in the console's API.
    pub fn from_name(s: &str) -> Option<Dimension> {
        Some(match s {
            "channel" => Dimension::Channel,
            "intent" => Dimension::Intent,
            "offer" => Dimension::Offer,
            "policy" => Dimension::Policy,
            "arm" => Dimension::Arm,
            _ => return None,
        })
    }
}

/// The dimensions of one turn.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
struct Dims {
    channel: String,
    intent: String,
    offer: String,
    policy: String,
    arm: String,
}

impl Dims {
    fn get(&self, d: Dimension) -> &str {
        match d {
            Dimension::Channel => &self.channel,
            Dimension::Intent => &self.intent,
            Dimension::Offer => &self.offer,
            Dimension::Policy => &self.policy,
            Dimension::Arm => &self.arm,
        }
    }
}

/// Counts of one slice.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Counts {
    /// Turns and nudges answered.
    pub turns: u64,
    /// Conversations started (their first turn).
    pub conversations: u64,
    /// Conversations whose problem was solved (the turn that moved them to `resolved`).
    pub resolved: u64,
    /// Sum of response times, in ms (for the mean).
    pub response_ms: f64,
    /// Turns that asked for a person.
    pub handoffs: u64,
    /// Offers made.
    pub offers: u64,
    /// Outcomes by kind.
    pub shown: u64,
    /// Clicks on an offer.
    pub clicks: u64,
    /// Offers put in the cart.
    pub carts: u64,
    /// Purchases.
    pub conversions: u64,
    /// Offers declined.
    pub declines: u64,
    /// Customers who asked for no more marketing.
    pub opt_outs: u64,
    /// Complaints.
    pub complaints: u64,
    /// Revenue of the purchases, in cents.
    pub revenue_cents: i64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.turns += o.turns;
        self.conversations += o.conversations;
        self.resolved += o.resolved;
        self.response_ms += o.response_ms;
        self.handoffs += o.handoffs;
        self.offers += o.offers;
        self.shown += o.shown;
        self.clicks += o.clicks;
        self.carts += o.carts;
        self.conversions += o.conversions;
        self.declines += o.declines;
        self.opt_outs += o.opt_outs;
        self.complaints += o.complaints;
        self.revenue_cents += o.revenue_cents;
    }

    /// The rates operators read, from these counts.
    pub fn rates(&self) -> Rates {
        let per = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        Rates {
            mean_response_ms: if self.turns == 0 {
                0.0
            } else {
                self.response_ms / self.turns as f64
            },
            resolution_rate: per(self.resolved, self.conversations),
            handoff_rate: per(self.handoffs, self.conversations.max(1)),
            offer_rate: per(self.offers, self.turns),
            click_rate: per(self.clicks, self.offers),
            accept_rate: per(self.carts + self.conversions, self.offers),
            conversion_rate: per(self.conversions, self.offers),
            revenue: self.revenue_cents as f64 / 100.0,
            order_value: if self.conversions == 0 {
                0.0
            } else {
                self.revenue_cents as f64 / 100.0 / self.conversions as f64
            },
            complaint_rate: per(self.complaints, self.conversations.max(1)),
            opt_out_rate: per(self.opt_outs, self.offers),
        }
    }
}

/// Rates derived from [`Counts`]; each names its denominator.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Rates {
    /// Mean response time per turn.
    pub mean_response_ms: f64,
    /// Resolved conversations / conversations started.
    pub resolution_rate: f64,
    /// Hand-offs / conversations started.
    pub handoff_rate: f64,
    /// Offers / turns.
    pub offer_rate: f64,
    /// Clicks / offers.
    pub click_rate: f64,
    /// (Put in cart + bought) / offers.
    pub accept_rate: f64,
    /// Purchases / offers.
    pub conversion_rate: f64,
    /// Revenue, in currency units.
    pub revenue: f64,
    /// Revenue / purchases.
    pub order_value: f64,
    /// Complaints / conversations started.
    pub complaint_rate: f64,
    /// Opt-outs / offers.
    pub opt_out_rate: f64,
}

/// One group's counts and rates.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// The group's value (`""`: none, e.g. turns without an offer).
    pub key: String,
    /// Counts.
    pub counts: Counts,
    /// Rates.
    pub rates: Rates,
}

/// What one customer did in one arm of an experiment.
#[derive(Debug, Clone, Copy, Default)]
struct Unit {
    offers: u64,
    conversions: u64,
    revenue_cents: i64,
}

/// Per-customer totals per experiment arm (the experiment's unit is the customer).
#[derive(Default)]
struct ArmUnits {
    units: HashMap<String, Unit>,
}

struct Inner {
    buckets: BTreeMap<u64, HashMap<Dims, Counts>>,
    /// Decision → the dimensions of its turn, for its outcomes (as long as buckets are kept).
    decisions: HashMap<String, (u64, Dims)>,
    /// `experiment` → arm → customers.
    experiments: HashMap<String, BTreeMap<String, ArmUnits>>,
    /// Stopped experiments: their events no longer gather customers (another server's may
    /// still arrive from the cluster after the console let them go).
    forgotten: std::collections::HashSet<String>,
}

/// The KPI store.
pub struct Kpis {
    inner: Mutex<Inner>,
    keep_ms: u64,
}

/// One arm's per-customer samples.
#[derive(Debug, Clone, Serialize)]
pub struct ArmSamples {
    /// The arm.
    pub arm: String,
    /// Customers who reached the arm.
    pub customers: u64,
    /// Per customer: bought at least once (0/1).
    pub converted: Sample,
    /// Per customer: revenue in currency units.
    pub revenue: Sample,
    /// Per customer: offers made.
    pub offers: Sample,
}

impl Kpis {
    /// Keeps `keep_hours` of buckets.
    pub fn new(keep_hours: u64) -> Kpis {
        Kpis {
            inner: Mutex::new(Inner {
                buckets: BTreeMap::new(),
                decisions: HashMap::new(),
                experiments: HashMap::new(),
                forgotten: Default::default(),
            }),
            keep_ms: keep_hours.max(1) * 3_600_000,
        }
    }

    /// Counts one event.
    pub fn observe(&self, e: &ConversationEvent) {
        self.count(e, true);
    }

    /// Counts one event for its experiment's customers only: an event older than the window
    /// of an experiment that may still run (start-up reads them so that a long experiment
    /// keeps its early customers).
    pub fn observe_experiment(&self, e: &ConversationEvent) {
        if !e.experiment.is_empty() {
            self.count(e, false);
        }
    }

    /// Lets an experiment's customers go (it stopped; its results were kept), and those of its
    /// events still to come.
    pub fn forget(&self, experiment: &str) {
        if let Ok(mut st) = self.inner.lock() {
            st.experiments.remove(experiment);
            st.forgotten.insert(experiment.to_string());
        }
    }

    fn count(&self, e: &ConversationEvent, in_buckets: bool) {
        let Ok(mut st) = self.inner.lock() else { return };
        let bucket = e.time_ms / BUCKET_MS * BUCKET_MS;
        let arm = if e.experiment.is_empty() {
            String::new()
        } else {
            format!("{}/{}", e.experiment, e.arm)
        };
        let mut c = Counts::default();
        let dims = match e.kind {
            EventKind::Turn | EventKind::Nudge => {
                c.turns = 1;
                c.conversations = u64::from(e.turn == 1);
                c.resolved = u64::from(e.resolved);
                c.response_ms = e.response_ms;
                c.handoffs = u64::from(!e.handoff.is_empty());
                c.offers = u64::from(!e.offer_id.is_empty());
                let d = Dims {
                    channel: e.channel.clone(),
                    intent: e.intent.clone(),
                    offer: e.offer_id.clone(),
                    policy: e.policy_version.clone(),
                    arm,
                };
                if in_buckets && !e.decision_id.is_empty() {
                    st.decisions.insert(e.decision_id.clone(), (e.time_ms, d.clone()));
                }
                d
            }
            EventKind::Outcome => {
                match e.outcome {
                    Some(OutcomeKind::Shown) => c.shown = 1,
                    Some(OutcomeKind::Click) => c.clicks = 1,
                    Some(OutcomeKind::AddToCart) => c.carts = 1,
                    Some(OutcomeKind::Convert) => {
                        c.conversions = 1;
                        c.revenue_cents = e.revenue_cents;
                    }
                    Some(OutcomeKind::Decline) => c.declines = 1,
                    Some(OutcomeKind::OptOut) => c.opt_outs = 1,
                    Some(OutcomeKind::Complaint) => c.complaints = 1,
                    None => {}
                }
                match st.decisions.get(&e.decision_id) {
                    Some((_, d)) => d.clone(),
                    None => Dims {
                        channel: e.channel.clone(),
                        offer: e.offer_id.clone(),
                        arm,
                        ..Default::default()
                    },
                }
            }
        };
        if in_buckets {
            st.buckets.entry(bucket).or_default().entry(dims).or_default().add(&c);
        }
        if !e.experiment.is_empty() && !st.forgotten.contains(&e.experiment) {
            let u = st
                .experiments
                .entry(e.experiment.clone())
                .or_default()
                .entry(e.arm.clone())
                .or_default()
                .units
                .entry(e.customer.clone())
                .or_default();
            u.offers += c.offers;
            u.conversions += c.conversions;
            u.revenue_cents += c.revenue_cents;
        }
        // Whole buckets leave once they are older than the window, with their decisions.
        let oldest = e.time_ms.saturating_sub(self.keep_ms) / BUCKET_MS * BUCKET_MS;
        if st.buckets.first_key_value().is_some_and(|(&t, _)| t < oldest) {
            st.buckets = st.buckets.split_off(&oldest);
            st.decisions.retain(|_, (t, _)| *t >= oldest);
        }
    }

    /// Totals per value of `group` for buckets in `[from_ms, to_ms)`, largest first by turns.
    pub fn totals(&self, group: Dimension, from_ms: u64, to_ms: u64) -> Vec<Row> {
        let Ok(st) = self.inner.lock() else { return Vec::new() };
        let mut by: HashMap<String, Counts> = HashMap::new();
        for (_, cells) in st.buckets.range(from_ms / BUCKET_MS * BUCKET_MS..to_ms) {
            for (d, c) in cells {
                by.entry(d.get(group).to_string()).or_default().add(c);
            }
        }
        let mut rows: Vec<Row> = by
            .into_iter()
            .map(|(key, counts)| Row {
                rates: counts.rates(),
                key,
                counts,
            })
            .collect();
        rows.sort_by(|a, b| b.counts.turns.cmp(&a.counts.turns).then(a.key.cmp(&b.key)));
        rows
    }

    /// Counts per `step_ms` (a multiple of a minute) and value of `group` in `[from_ms, to_ms)`:
    /// `(step start, key, counts)`, in time order.
    pub fn series(&self, group: Dimension, from_ms: u64, to_ms: u64, step_ms: u64) -> Vec<(u64, String, Counts)> {
        let step = step_ms.max(BUCKET_MS) / BUCKET_MS * BUCKET_MS;
        let Ok(st) = self.inner.lock() else { return Vec::new() };
        let mut out: BTreeMap<(u64, String), Counts> = BTreeMap::new();
        for (t, cells) in st.buckets.range(from_ms / BUCKET_MS * BUCKET_MS..to_ms) {
            for (d, c) in cells {
                out.entry((t / step * step, d.get(group).to_string()))
                    .or_default()
                    .add(c);
            }
        }
        out.into_iter().map(|((t, k), c)| (t, k, c)).collect()
    }

    /// Per-customer samples of each arm of `experiment` (arms in name order).
    pub fn arms(&self, experiment: &str) -> Vec<ArmSamples> {
        let Ok(st) = self.inner.lock() else { return Vec::new() };
        let Some(arms) = st.experiments.get(experiment) else {
            return Vec::new();
        };
        arms.iter()
            .map(|(arm, a)| ArmSamples {
                arm: arm.clone(),
                customers: a.units.len() as u64,
                converted: Sample::of(a.units.values().map(|u| f64::from(u8::from(u.conversions > 0)))),
                revenue: Sample::of(a.units.values().map(|u| u.revenue_cents as f64 / 100.0)),
                offers: Sample::of(a.units.values().map(|u| u.offers as f64)),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nudge_records::EVENT_SCHEMA;

    fn turn(t: u64, customer: &str, channel: &str, intent: &str, offer: &str, decision: &str) -> ConversationEvent {
        ConversationEvent {
            schema: EVENT_SCHEMA,
            id: format!("{t}-{customer}-{decision}"),
            time_ms: t,
            kind: EventKind::Turn,
            conversation_id: format!("conv-{customer}"),
            customer: customer.into(),
            channel: channel.into(),
            experiment: "x1".into(),
            arm: if customer.starts_with('a') { "A" } else { "B" }.into(),
            turn: 1,
            resolved: false,
            intent: intent.into(),
            response_ms: 10.0,
            handoff: String::new(),
            decision_id: decision.into(),
            offer_id: offer.into(),
            policy_version: "rules".into(),
            outcome: None,
            revenue_cents: 0,
        }
    }

    fn outcome(t: u64, customer: &str, decision: &str, kind: OutcomeKind, cents: i64) -> ConversationEvent {
        ConversationEvent {
            kind: EventKind::Outcome,
            intent: String::new(),
            offer_id: String::new(),
            response_ms: 0.0,
            outcome: Some(kind),
            revenue_cents: cents,
            turn: 0,
            ..turn(t, customer, "app", "", "", decision)
        }
    }

    #[test]
    fn outcomes_count_under_their_turn_and_old_buckets_leave() {
        let k = Kpis::new(1);
        k.observe(&turn(0, "a1", "web", "price", "coupon", "d1"));
        k.observe(&turn(30_000, "b1", "app", "price", "bundle", "d2"));
        k.observe(&turn(61_000, "b1", "app", "delivery", "", ""));
        k.observe(&outcome(70_000, "a1", "d1", OutcomeKind::Convert, 12_345));
        k.observe(&outcome(71_000, "b1", "d2", OutcomeKind::Decline, 0));

        let by_intent = k.totals(Dimension::Intent, 0, u64::MAX);
        let price = by_intent.iter().find(|r| r.key == "price").unwrap();
        assert_eq!(
            (price.counts.turns, price.counts.offers, price.counts.conversions),
            (2, 2, 1)
        );
        assert_eq!(price.counts.conversations, 2);
        assert_eq!(price.counts.revenue_cents, 12_345);
        assert!((price.rates.conversion_rate - 0.5).abs() < 1e-12);
        assert!((price.rates.order_value - 123.45).abs() < 1e-9);
        // The conversion is counted in the minute it happened, under the turn's channel.
        let series = k.series(Dimension::Channel, 0, u64::MAX, 60_000);
        assert!(series.contains(&(
            60_000,
            "web".into(),
            Counts {
                conversions: 1,
                revenue_cents: 12_345,
                ..Default::default()
            }
        )));
        let arms = k.arms("x1");
        assert_eq!(arms.len(), 2);
        assert_eq!(
            (arms[0].arm.as_str(), arms[0].customers, arms[0].converted.mean),
            ("A", 1, 1.0)
        );
        assert_eq!(
            (arms[1].customers, arms[1].converted.mean, arms[1].offers.mean),
            (1, 0.0, 1.0)
        );

        // Before the window, an event counts for its experiment's customers only.
        let old = Kpis::new(1);
        old.observe_experiment(&turn(0, "a9", "web", "price", "coupon", "d9"));
        old.observe_experiment(&outcome(1, "a9", "d9", OutcomeKind::Convert, 500));
        assert!(old.totals(Dimension::Channel, 0, u64::MAX).is_empty());
        let a = &old.arms("x1")[0];
        assert_eq!((a.customers, a.converted.mean, a.revenue.mean), (1, 1.0, 5.0));
        old.forget("x1");
        assert!(old.arms("x1").is_empty());
        old.observe_experiment(&turn(2, "a8", "web", "price", "coupon", "d8"));
        assert!(old.arms("x1").is_empty(), "a forgotten experiment gathers no customers");

        // An hour later the first minutes have left the window, and their decisions with them.
        k.observe(&turn(3_800_000, "a2", "web", "price", "", ""));
        assert_eq!(
            k.totals(Dimension::Channel, 0, u64::MAX)
                .iter()
                .map(|r| r.counts.turns)
                .sum::<u64>(),
            1
        );
        k.observe(&outcome(3_800_001, "a1", "d1", OutcomeKind::Click, 0));
        let web = k.totals(Dimension::Intent, 0, u64::MAX);
        assert!(web.iter().any(|r| r.key.is_empty() && r.counts.clicks == 1));
    }
}

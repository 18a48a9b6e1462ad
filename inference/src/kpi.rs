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
//!
//! Experiments are compared per customer, and each customer's outcome is adjusted for what they
//! bought in the [`PRE_EXPOSURE_DAYS`] before the experiment first reached them
//! ([`crate::experiment::cuped`]). So every purchase of the last that many days is kept by
//! customer, whichever window the charts keep: about 100 bytes a customer who bought in them
//! (`cargo bench --bench experiments`: 97 MB for a million buyers a fortnight), the price of
//! verdicts that need fewer customers.
use crate::experiment::{Paired, Sample};
use nudge_records::{ConversationEvent, EventKind, OutcomeKind};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

/// Width of a KPI bucket.
pub const BUCKET_MS: u64 = 60_000;

/// The days before a customer's first turn in an experiment whose purchases adjust their
/// outcome in its comparisons. Two weeks hold the regular customer's last purchases and a
/// weekly cycle twice; longer holds more of a past that predicts less.
pub const PRE_EXPOSURE_DAYS: u64 = 14;
const PRE_EXPOSURE_MS: u64 = PRE_EXPOSURE_DAYS * 86_400_000;

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

/// A customer's key in the purchase history: a 64-bit hash of the pseudonym, which halves the
/// history's memory against keeping the pseudonym (231 → 101 bytes a buyer). Two customers
/// that collide (a one-in-30-million chance among a million buyers) share a history, which
/// blurs their covariate and nothing else: an adjustment by any value fixed before exposure
/// leaves the comparison unbiased.
fn history_key(customer: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    customer.hash(&mut h);
    h.finish()
}

/// What one customer did in one arm of an experiment, and bought before it first reached them.
#[derive(Debug, Clone, Copy, Default)]
struct Unit {
    offers: u64,
    conversions: u64,
    revenue_cents: i64,
    /// Purchases in the [`PRE_EXPOSURE_DAYS`] before the customer's first event in the arm.
    before_purchases: u64,
    before_revenue_cents: i64,
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
    /// [`history_key`] of the customer → purchases `(time_ms, revenue_cents)` of the last
    /// [`PRE_EXPOSURE_DAYS`].
    purchases: HashMap<u64, Vec<(u64, i64)>>,
    /// The newest event's time, and when purchases were last pruned (event time).
    newest_ms: u64,
    pruned_ms: u64,
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
    /// Per customer: bought at least once (0/1), against purchases in the days before.
    pub converted: Paired,
    /// Per customer: revenue in currency units, against revenue in the days before.
    pub revenue: Paired,
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
                purchases: HashMap::new(),
                newest_ms: 0,
                pruned_ms: 0,
            }),
            keep_ms: keep_hours.max(1) * 3_600_000,
        }
    }

    /// Counts one event as it happens.
    pub fn observe(&self, e: &ConversationEvent) {
        self.count(e, true);
    }

    /// Counts one event read back (the event log at start, the cluster's stream) at `now_ms`:
    /// as it happens if it is inside the window; older, only for its experiment's customers
    /// (a long experiment keeps its early ones) and as a purchase before later ones.
    pub fn observe_replayed(&self, e: &ConversationEvent, now_ms: u64) {
        let in_window = e.time_ms >= now_ms.saturating_sub(self.keep_ms);
        // Start-up reads the whole log: most old events are neither, and cost nothing.
        if in_window || !e.experiment.is_empty() || e.outcome == Some(OutcomeKind::Convert) {
            self.count(e, in_window);
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
        let Ok(mut guard) = self.inner.lock() else { return };
        let st = &mut *guard;
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
                .or_insert_with(|| {
                    // First seen in the arm: what they bought before, not counting this event.
                    let from = e.time_ms.saturating_sub(PRE_EXPOSURE_MS);
                    let before = st.purchases.get(&history_key(&e.customer)).into_iter().flatten();
                    let before = before.filter(|(t, _)| (from..e.time_ms).contains(t));
                    let (n, cents) = before.fold((0, 0), |(n, c), (_, cents)| (n + 1, c + cents));
                    Unit {
                        before_purchases: n,
                        before_revenue_cents: cents,
                        ..Unit::default()
                    }
                });
            u.offers += c.offers;
            u.conversions += c.conversions;
            u.revenue_cents += c.revenue_cents;
        }
        if c.conversions > 0 && !e.customer.is_empty() {
            // Most customers buy once in the fortnight: room for one.
            st.purchases
                .entry(history_key(&e.customer))
                .or_insert_with(|| Vec::with_capacity(1))
                .push((e.time_ms, c.revenue_cents));
        }
        // Purchases leave once no customer's first turn can be within the days after them;
        // pruned hourly, by event time.
        st.newest_ms = st.newest_ms.max(e.time_ms);
        if st.newest_ms.saturating_sub(st.pruned_ms) >= 3_600_000 {
            let from = st.newest_ms.saturating_sub(PRE_EXPOSURE_MS);
            st.purchases.retain(|_, p| {
                p.retain(|(t, _)| *t >= from);
                !p.is_empty()
            });
            st.pruned_ms = st.newest_ms;
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
        // One pass over the customers for all three (they are many, and counting waits on
        // the lock); offers have no covariate.
        arms.iter()
            .map(|(arm, a)| {
                let (mut converted, mut revenue, mut offers) =
                    (Paired::default(), Paired::default(), Paired::default());
                for u in a.units.values() {
                    converted.push(u.before_purchases as f64, f64::from(u8::from(u.conversions > 0)));
                    revenue.push(u.before_revenue_cents as f64 / 100.0, u.revenue_cents as f64 / 100.0);
                    offers.push(0.0, u.offers as f64);
                }
                ArmSamples {
                    arm: arm.clone(),
                    customers: a.units.len() as u64,
                    converted,
                    revenue,
                    offers: offers.outcome(),
                }
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
            (arms[0].arm.as_str(), arms[0].customers, arms[0].converted.mean_y),
            ("A", 1, 1.0)
        );
        assert_eq!(
            (arms[1].customers, arms[1].converted.mean_y, arms[1].offers.mean),
            (1, 0.0, 1.0)
        );

        // Read back from before the window, an event counts for its experiment's customers only.
        let old = Kpis::new(1);
        let now = 3 * 3_600_000;
        old.observe_replayed(&turn(0, "a9", "web", "price", "coupon", "d9"), now);
        old.observe_replayed(&outcome(1, "a9", "d9", OutcomeKind::Convert, 500), now);
        assert!(old.totals(Dimension::Channel, 0, u64::MAX).is_empty());
        let a = &old.arms("x1")[0];
        assert_eq!((a.customers, a.converted.mean_y, a.revenue.mean_y), (1, 1.0, 5.0));
        old.forget("x1");
        assert!(old.arms("x1").is_empty());
        old.observe_replayed(&turn(2, "a8", "web", "price", "coupon", "d8"), now);
        assert!(old.arms("x1").is_empty(), "a forgotten experiment gathers no customers");
        // Inside the window, a replayed event counts as it happens.
        old.observe_replayed(&turn(now - 1_000, "a7", "web", "price", "", ""), now);
        assert_eq!(old.totals(Dimension::Channel, 0, u64::MAX)[0].counts.turns, 1);

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

    /// Each customer of an experiment carries what they bought in the 14 days before their
    /// first turn in it — not earlier, not that turn's own purchase, not after — live or read
    /// back from the log.
    #[test]
    fn customers_carry_their_purchases_before_the_experiment_reached_them() {
        const DAY: u64 = 86_400_000;
        let shop = |t: u64, customer: &str, cents: i64| ConversationEvent {
            experiment: String::new(),
            arm: String::new(),
            ..outcome(t, customer, &format!("pre-{t}"), OutcomeKind::Convert, cents)
        };
        let events = [
            shop(0, "a1", 10_000),       // 20 days before a1's first turn: too early
            shop(10 * DAY, "a1", 3_000), // 10 days before
            shop(12 * DAY, "a1", 1_200), // 8 days before
            shop(12 * DAY, "b1", 5_000), // 9 days before b1's first turn
            turn(20 * DAY, "a1", "app", "price", "coupon", "d1"),
            outcome(20 * DAY + 1, "a1", "d1", OutcomeKind::Convert, 9_900),
            turn(21 * DAY, "b1", "app", "price", "bundle", "d2"),
            turn(21 * DAY + 5, "a2", "app", "price", "coupon", "d3"),
            // a1's later turn does not move their start; a2 buys after theirs.
            turn(22 * DAY, "a1", "app", "price", "", ""),
            shop(22 * DAY, "a2", 700),
        ];
        let live = Kpis::new(48);
        for e in &events {
            live.observe(e);
        }
        let replayed = Kpis::new(48);
        for e in &events {
            replayed.observe_replayed(e, 60 * DAY);
        }
        for k in [&live, &replayed] {
            let arms = k.arms("x1");
            let (a, b) = (&arms[0], &arms[1]);
            assert_eq!((a.arm.as_str(), a.customers, b.customers), ("A", 2, 1));
            // A: a1 bought twice before (42.00) and once in the experiment; a2 nothing before.
            assert_eq!((a.converted.mean_x, a.converted.mean_y), (1.0, 0.5));
            assert_eq!((a.revenue.mean_x, a.revenue.mean_y), (21.0, 49.5));
            assert_eq!(
                (b.converted.mean_x, b.revenue.mean_x, b.revenue.mean_y),
                (1.0, 50.0, 0.0)
            );
        }
        // Purchases older than the days that matter leave (pruned by event time).
        live.observe(&shop(40 * DAY, "c1", 100));
        let st = live.inner.lock().unwrap();
        assert_eq!(st.purchases.keys().collect::<Vec<_>>(), [&history_key("c1")]);
    }
}

//! One turn's strategy, in the order the design fixes: the conversation state has taken the
//! turn in → the rules say which offers are eligible → the guardrails remove what they must →
//! every remaining offer is priced on the cart. What is left are the candidates a policy may
//! choose among; [`Strategy::commit`] records the choice only after checking it again, so no
//! caller, policy or race can show an offer the guardrails would refuse.
//!
//! Across conversations the engine keeps a [`Ledger`]: offers shown per customer per day,
//! remembered opt-outs, and offer budgets. A budget counts offers *made*, each of which may be
//! redeemed once: a declined offer is not given back, because the customer may still change
//! their mind, and redemptions must never exceed the budget whatever order the answers come in.
use crate::catalog::{Catalog, Offer};
use crate::conversation::{Conversation, OfferStatus};
use crate::guardrails::{CustomerFacts, Guardrails, HandoffReason, Skip};
use crate::link::SkuLinker;
use crate::money::Cents;
use crate::pricing::{quote, CartLine, Quote};
use crate::rules::{Rules, Situation};
use nudge_records::OutcomeKind;
use std::collections::{BTreeSet, HashMap};

/// A catalog, its rules and the guardrails, ready to plan turns.
pub struct Strategy {
    /// The products and offers.
    pub catalog: Catalog,
    /// The operators' rules.
    pub rules: Rules,
    /// The limits nobody lifts.
    pub guardrails: Guardrails,
    /// The catalog's names, compiled (shared by the strategies of experiment arms).
    pub linker: std::sync::Arc<SkuLinker>,
}

impl Strategy {
    /// The same catalog, guardrails and linker with other rules (an experiment arm's).
    pub fn with_rules(&self, rules: Rules) -> Strategy {
        Strategy {
            catalog: self.catalog.clone(),
            rules,
            guardrails: self.guardrails.clone(),
            linker: self.linker.clone(),
        }
    }
}

/// Who the customer is, as the request says.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CustomerProfile {
    /// Tier name.
    pub tier: String,
    /// Lifetime value.
    pub lifetime_value: Cents,
    /// Agreed to marketing.
    pub marketing_consent: bool,
    /// Opted out (the ledger also remembers earlier opt-outs).
    pub opted_out: bool,
    /// Free-form attributes rules may test (`city`, `member_since`…).
    pub attributes: std::collections::BTreeMap<String, String>,
}

/// An offer a policy may choose, priced.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// The offer's id.
    pub offer: String,
    /// Highest priority of the rules that allow it.
    pub priority: i32,
    /// The rules that allow it.
    pub rules: Vec<String>,
    /// The cart's price with the offer.
    pub quote: Quote,
}

/// The strategy's answer for one turn, before the policy chooses.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    /// What the policy may choose among (empty: no offer this turn).
    pub candidates: Vec<Candidate>,
    /// Offers the rules allowed but the guardrails (or pricing) removed, with the reason; and
    /// the ones rules forbade.
    pub skipped: Vec<(String, Skip)>,
    /// When set, no offer at all this turn, and why.
    pub blocked: Option<Skip>,
    /// The conversation should go to a person.
    pub handoff: Option<HandoffReason>,
}

/// What the engine remembers across conversations.
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Ledger {
    customers: HashMap<String, CustomerDay>,
    /// Offer → times it was made.
    budget_used: HashMap<String, u64>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
struct CustomerDay {
    day: i64,
    offers: u32,
    opted_out: bool,
}

impl Ledger {
    /// Offers shown to `customer` on local day `day`.
    pub fn offers_today(&self, customer: &str, day: i64) -> u32 {
        self.customers
            .get(customer)
            .filter(|c| c.day == day)
            .map_or(0, |c| c.offers)
    }

    /// Whether `customer` opted out at some point.
    pub fn opted_out(&self, customer: &str) -> bool {
        self.customers.get(customer).is_some_and(|c| c.opted_out)
    }

    /// Times `offer` was made (what its budget counts).
    pub fn budget_used(&self, offer: &str) -> u64 {
        self.budget_used.get(offer).copied().unwrap_or(0)
    }
}

/// The clock of a turn: unix time and the shop's local hour and day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clock {
    /// Unix milliseconds.
    pub now_ms: i64,
    /// Offset of the shop's time zone from UTC, in seconds (+8 h for China).
    pub utc_offset_s: i64,
}

impl Clock {
    /// The local hour, 0–23.
    pub fn local_hour(&self) -> u8 {
        (self.local_s().rem_euclid(86_400) / 3600) as u8
    }

    /// The local day number (days since 1970-01-01, local).
    pub fn local_day(&self) -> i64 {
        self.local_s().div_euclid(86_400)
    }

    fn local_s(&self) -> i64 {
        self.now_ms.div_euclid(1000).saturating_add(self.utc_offset_s)
    }
}

impl Strategy {
    /// Plans the turn the conversation has just taken in (see the module docs).
    pub fn plan(
        &self,
        c: &Conversation,
        customer: &CustomerProfile,
        cart: &[CartLine],
        negative: f32,
        clock: Clock,
        ledger: &Ledger,
    ) -> Plan {
        let handoff = self.guardrails.handoff(c);
        let facts = self.customer_facts(c, customer, clock, ledger);
        let mut plan = Plan {
            handoff,
            ..Plan::default()
        };
        let mut products: BTreeSet<String> = c.products.clone();
        products.extend(cart.iter().map(|l| l.sku.clone()));
        let categories: BTreeSet<String> = products
            .iter()
            .filter_map(|s| self.catalog.product(s).map(|p| p.category.clone()))
            .collect();
        let cart_value = quote(&self.catalog, cart, &[]).map_or(Cents::ZERO, |q| q.list_price);
        let last = c.recent.back();
        let situation = Situation {
            intent: last.and_then(|t| t.intent.as_deref()),
            sentiment: last.and_then(|t| t.sentiment.as_deref()),
            tier: &customer.tier,
            lifetime_value: customer.lifetime_value,
            channel: c.channel,
            categories: &categories,
            products: &products,
            cart_value,
            turn: c.turns,
            local_hour: clock.local_hour(),
            stage: c.stage,
            attributes: &customer.attributes,
        };
        let verdict = self.rules.evaluate(&situation);
        plan.skipped
            .extend(verdict.forbidden.iter().map(|(o, _)| (o.clone(), Skip::NotAllowed)));
        if let Err(skip) = self
            .guardrails
            .check_conversation(c, &facts, negative, clock.local_hour())
        {
            plan.skipped
                .extend(verdict.eligible.iter().map(|e| (e.offer.clone(), skip.clone())));
            plan.blocked = Some(skip);
            return plan;
        }
        for e in verdict.eligible {
            let Some(offer) = self.catalog.offer(&e.offer) else {
                continue;
            };
            if let Err(skip) = self.offer_ok(offer, c, clock, ledger) {
                plan.skipped.push((e.offer, skip));
                continue;
            }
            match quote(&self.catalog, cart, &[offer]) {
                Ok(q) => plan.candidates.push(Candidate {
                    offer: e.offer,
                    priority: e.priority,
                    rules: e.rules,
                    quote: q,
                }),
                // An upgrade without its product in the cart, say: not makeable now.
                Err(_) => plan.skipped.push((e.offer, Skip::NotAllowed)),
            }
        }
        plan
    }

    /// Records that `offer` is shown, after checking every guardrail again; the offer must be
    /// one of `plan`'s candidates.
    #[allow(clippy::too_many_arguments)]
    pub fn commit(
        &self,
        plan: &Plan,
        offer: &str,
        decision_id: &str,
        c: &mut Conversation,
        customer: &CustomerProfile,
        negative: f32,
        clock: Clock,
        ledger: &mut Ledger,
    ) -> Result<(), Skip> {
        if !plan.candidates.iter().any(|k| k.offer == offer) {
            return Err(Skip::NotAllowed);
        }
        let o = self.catalog.offer(offer).ok_or(Skip::NotAllowed)?;
        let facts = self.customer_facts(c, customer, clock, ledger);
        self.guardrails
            .check_conversation(c, &facts, negative, clock.local_hour())?;
        self.offer_ok(o, c, clock, ledger)?;
        c.offered(offer, decision_id, clock.now_ms);
        let day = clock.local_day();
        let entry = ledger.customers.entry(c.customer.clone()).or_default();
        if entry.day != day {
            entry.day = day;
            entry.offers = 0;
        }
        entry.offers += 1;
        *ledger.budget_used.entry(offer.to_string()).or_default() += 1;
        Ok(())
    }

    /// Takes an outcome of the offer made by `decision_id` into the conversation and ledger.
    pub fn outcome(&self, c: &mut Conversation, decision_id: &str, kind: OutcomeKind, ledger: &mut Ledger) {
        match kind {
            OutcomeKind::AddToCart | OutcomeKind::Convert => {
                c.answered(decision_id, OfferStatus::Accepted);
            }
            OutcomeKind::Decline => {
                c.answered(decision_id, OfferStatus::Declined);
            }
            OutcomeKind::OptOut => {
                ledger.customers.entry(c.customer.clone()).or_default().opted_out = true;
            }
            OutcomeKind::Complaint => c.complained = true,
            OutcomeKind::Shown | OutcomeKind::Click => {}
        }
    }

    fn customer_facts(
        &self,
        c: &Conversation,
        customer: &CustomerProfile,
        clock: Clock,
        ledger: &Ledger,
    ) -> CustomerFacts {
        CustomerFacts {
            marketing_consent: customer.marketing_consent,
            opted_out: customer.opted_out || ledger.opted_out(&c.customer),
            offers_today: ledger.offers_today(&c.customer, clock.local_day()),
        }
    }

    fn offer_ok(&self, offer: &Offer, c: &Conversation, clock: Clock, ledger: &Ledger) -> Result<(), Skip> {
        self.guardrails.check_offer(
            offer,
            c.channel,
            clock.now_ms.div_euclid(1000),
            ledger.budget_used(&offer.id),
        )
    }
}

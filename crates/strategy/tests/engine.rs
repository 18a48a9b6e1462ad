//! The strategy engine through its public API on real files: the battery example (a valuable
//! customer asks about a phone's battery → warranty + power bank bundle at its exact price), and
//! a property test that no sequence of turns, choices (honest or not) and outcomes over
//! interleaved conversations ever breaks a cap, a cool-down, consent, an opt-out or a budget.
use nudge_records::OutcomeKind;
use nudge_strategy::conversation::{Conversation, OfferStatus, TurnFacts};
use nudge_strategy::engine::{Clock, CustomerProfile, Ledger, Strategy};
use nudge_strategy::guardrails::{Guardrails, HandoffReason, Skip};
use nudge_strategy::link::SkuLinker;
use nudge_strategy::pricing::CartLine;
use nudge_strategy::rules::{Rules, Vocabulary};
use nudge_strategy::{Catalog, Cents, Channel};
use proptest::prelude::{prop_assert, prop_assert_eq, prop_oneof, proptest, ProptestConfig};
use proptest::strategy::Strategy as _;
use std::collections::HashMap;

const CATALOG: &str = r#"
[[product]]
sku = "X1"
name_zh = "X1 手机"
name_en = "X1 phone"
aliases = ["x1"]
category = "phone"
price = "3999.00"
[[product]]
sku = "PB-10K"
name_zh = "充电宝"
name_en = "power bank"
category = "accessory"
price = "129.00"
[[product]]
sku = "WAR-2Y"
name_zh = "两年延保"
name_en = "2-year extended warranty"
category = "service"
price = "299.00"

[[offer]]
id = "care_bundle"
kind = "bundle"
title_en = "Extended warranty + power bank"
items = ["WAR-2Y", "PB-10K"]
price = "329.00"
[[offer]]
id = "c20"
kind = "coupon"
amount = "20"
min_spend = "0"
budget = 2
[[offer]]
id = "m300"
kind = "spend_save"
threshold = "300"
save = "30"
"#;

const RULES: &str = r#"
[intents]
issue = ["refund"]
resolved = ["thanks_bye"]
human = ["human_agent"]
complaint = ["complaint"]

[[rule]]
name = "battery question: care bundle for valuable customers"
allow = ["care_bundle"]
priority = 10
[rule.when]
intent = ["presales_question"]
category = ["phone"]
tier = ["gold", "platinum"]
min_lifetime_value = "5000"

[[rule]]
name = "anyone may get a coupon"
allow = ["c20", "m300"]
"#;

const INTENTS: [&str; 6] = [
    "presales_question",
    "price",
    "refund",
    "thanks_bye",
    "human_agent",
    "complaint",
];

fn strategy(guardrails: Guardrails) -> Strategy {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("catalog.toml"), CATALOG).unwrap();
    std::fs::write(d.path().join("rules.toml"), RULES).unwrap();
    let catalog = Catalog::load(&d.path().join("catalog.toml")).unwrap();
    let intents: Vec<String> = INTENTS.map(String::from).to_vec();
    let sentiments: Vec<String> = ["negative", "neutral", "positive"].map(String::from).to_vec();
    let rules = Rules::load(
        &d.path().join("rules.toml"),
        &Vocabulary {
            intents: &intents,
            sentiments: &sentiments,
            catalog: &catalog,
        },
    )
    .unwrap();
    let linker = SkuLinker::new(&catalog).unwrap();
    Strategy {
        catalog,
        rules,
        guardrails,
        linker: linker.into(),
    }
}

#[test]
fn a_valuable_customer_asking_about_battery_life_gets_the_care_bundle_at_its_exact_price() {
    let s = strategy(Guardrails::default());
    let clock = Clock {
        now_ms: 1_790_000_000_000,
        utc_offset_s: 8 * 3600,
    };
    let text = "How long does the X1 phone battery last? my number is 13812345678";
    let products: Vec<String> = s.linker.link(text).into_iter().flat_map(|m| m.skus).collect();
    assert_eq!(products, vec!["X1"]);
    let mut c = Conversation::new("conv-1", "cust-key", Channel::Web, clock.now_ms);
    let facts = TurnFacts {
        text: text.into(),
        intent: Some("presales_question".into()),
        confidence: 0.92,
        sentiment: Some("neutral".into()),
        negative: 0.05,
        products,
        at_ms: clock.now_ms,
    };
    c.observe(
        &facts,
        s.rules.intents(),
        s.guardrails.unsure_below,
        s.guardrails.max_negative,
    );
    assert!(c.recent[0].text.ends_with("[phone ****5678]"), "{}", c.recent[0].text);
    let gold = CustomerProfile {
        tier: "gold".into(),
        lifetime_value: Cents::parse("12000").unwrap(),
        marketing_consent: true,
        opted_out: false,
        attributes: Default::default(),
    };
    let mut ledger = Ledger::default();
    let plan = s.plan(&c, &gold, &[], 0.05, clock, &ledger);
    assert_eq!(plan.blocked, None);
    let care = &plan.candidates[0];
    assert_eq!(care.offer, "care_bundle");
    assert_eq!(care.priority, 10);
    assert_eq!(care.rules, vec!["battery question: care bundle for valuable customers"]);
    assert_eq!(
        (care.quote.list_price, care.quote.discount, care.quote.final_price),
        (Cents(42_800), Cents(9_900), Cents(32_900))
    );
    s.commit(&plan, "care_bundle", "d1", &mut c, &gold, 0.05, clock, &mut ledger)
        .unwrap();

    // A regular customer is not offered the bundle, only what everyone may get.
    let regular = CustomerProfile {
        tier: "regular".into(),
        ..gold.clone()
    };
    let plan = s.plan(&c, &regular, &[], 0.05, clock, &ledger);
    assert!(plan.candidates.iter().all(|k| k.offer != "care_bundle"));
    // With a cart, the price counts the cart: the phone plus 满减 300-30 once.
    let cart = [CartLine {
        sku: "X1".into(),
        qty: 1,
    }];
    let plan = s.plan(&c, &regular, &cart, 0.05, clock, &ledger);
    let m300 = plan.candidates.iter().find(|k| k.offer == "m300").unwrap();
    assert_eq!(
        (m300.quote.list_price, m300.quote.final_price),
        (Cents(399_900), Cents(396_900))
    );

    // An angry turn blocks every offer and, twice in a row, hands off with the reason.
    for _ in 0..2 {
        c.observe(
            &TurnFacts {
                text: "this is useless".into(),
                intent: Some("price".into()),
                confidence: 0.9,
                sentiment: Some("negative".into()),
                negative: 0.9,
                products: vec![],
                at_ms: clock.now_ms,
            },
            s.rules.intents(),
            s.guardrails.unsure_below,
            s.guardrails.max_negative,
        );
    }
    let plan = s.plan(&c, &gold, &[], 0.9, clock, &ledger);
    assert_eq!(plan.blocked, Some(Skip::Negative));
    assert!(plan.candidates.is_empty());
    assert!(plan.skipped.iter().all(|(_, why)| *why == Skip::Negative) && !plan.skipped.is_empty());
    assert_eq!(plan.handoff, Some(HandoffReason::NegativeTurns));
}

#[derive(Debug, Clone)]
enum Op {
    Turn {
        conv: usize,
        intent: usize,
        negative: bool,
        consent: bool,
        hours: i64,
    },
    /// Commit the plan's candidate `pick`, or (`honest = false`) try an offer the plan may not have.
    Choose {
        conv: usize,
        pick: usize,
        honest: bool,
    },
    Outcome {
        conv: usize,
        kind: usize,
    },
}

fn op() -> impl proptest::strategy::Strategy<Value = Op> {
    prop_oneof![
        4 => (0usize..6, 0usize..INTENTS.len() + 1, proptest::bool::weighted(0.2), proptest::bool::weighted(0.85), 0i64..30)
            .prop_map(|(conv, intent, negative, consent, hours)| Op::Turn { conv, intent, negative, consent, hours }),
        4 => (0usize..6, 0usize..4, proptest::bool::weighted(0.7)).prop_map(|(conv, pick, honest)| Op::Choose { conv, pick, honest }),
        2 => (0usize..6, 0usize..4).prop_map(|(conv, kind)| Op::Outcome { conv, kind }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    fn no_sequence_breaks_a_guardrail(ops in proptest::collection::vec(op(), 1..120)) {
        let g = Guardrails {
            max_offers_per_conversation: 2,
            max_offers_per_customer_per_day: 3,
            cooldown_turns_after_decline: 2,
            ..Guardrails::default()
        };
        let s = strategy(g.clone());
        let mut ledger = Ledger::default();
        let mut clock = Clock { now_ms: 1_790_000_000_000, utc_offset_s: 8 * 3600 };
        // Six conversations of three customers, interleaved.
        let mut convs: Vec<Conversation> = (0..6)
            .map(|i| Conversation::new(&format!("c{i}"), &format!("k{}", i % 3), Channel::App, clock.now_ms))
            .collect();
        let mut profile: Vec<CustomerProfile> = vec![CustomerProfile { tier: "gold".into(), lifetime_value: Cents(1_000_000), marketing_consent: true, opted_out: false, attributes: Default::default() }; 6];
        let mut negative = [0.0f32; 6];
        let mut plans = vec![Default::default(); 6];
        // Shadow model: what the test itself knows must hold.
        let mut opted_out: HashMap<String, bool> = HashMap::new();
        let mut shown_per_day: HashMap<(String, i64), u32> = HashMap::new();
        let mut next_id = 0;
        for op in ops {
            match op {
                Op::Turn { conv, intent, negative: neg, consent, hours } => {
                    clock.now_ms += hours * 3_600_000 / 4;
                    let c = &mut convs[conv];
                    let facts = TurnFacts {
                        text: "hi".into(),
                        intent: INTENTS.get(intent).map(|i| i.to_string()),
                        confidence: 0.9,
                        sentiment: Some(if neg { "negative" } else { "neutral" }.into()),
                        negative: if neg { 0.9 } else { 0.1 },
                        products: vec!["X1".into()],
                        at_ms: clock.now_ms,
                    };
                    c.observe(&facts, s.rules.intents(), g.unsure_below, g.max_negative);
                    negative[conv] = facts.negative;
                    profile[conv].marketing_consent = consent;
                    plans[conv] = s.plan(c, &profile[conv], &[], negative[conv], clock, &ledger);
                }
                Op::Choose { conv, pick, honest } => {
                    let plan = &plans[conv];
                    let offer = if honest {
                        match plan.candidates.get(pick % plan.candidates.len().max(1)) {
                            Some(k) => k.offer.clone(),
                            None => continue,
                        }
                    } else {
                        ["care_bundle", "c20", "m300", "nope"][pick].to_string()
                    };
                    next_id += 1;
                    let c = &mut convs[conv];
                    let before = c.offers_made();
                    let r = s.commit(plan, &offer, &format!("d{next_id}"), c, &profile[conv], negative[conv], clock, &mut ledger);
                    if r.is_ok() {
                        // Every invariant, checked at the moment an offer is shown.
                        prop_assert!(profile[conv].marketing_consent, "shown without consent");
                        prop_assert!(!opted_out.get(&c.customer).copied().unwrap_or(false), "shown after opt-out");
                        prop_assert!(negative[conv] <= g.max_negative && c.negative_streak == 0, "shown to a negative customer");
                        prop_assert!(!c.complained && !c.asked_for_human);
                        prop_assert!(c.offers_made() <= g.max_offers_per_conversation as usize);
                        let day = (c.customer.clone(), clock.local_day());
                        let n = shown_per_day.entry(day).or_default();
                        *n += 1;
                        prop_assert!(*n <= g.max_offers_per_customer_per_day, "daily cap");
                        let shown_turn = c.turns;
                        for o in &c.offers[..c.offers.len() - 1] {
                            if o.status == OfferStatus::Declined {
                                prop_assert!(shown_turn > o.turn + g.cooldown_turns_after_decline, "cool-down");
                            }
                        }
                        prop_assert!(plan.candidates.iter().any(|k| k.offer == offer), "a non-candidate was shown");
                    } else {
                        prop_assert_eq!(c.offers_made(), before, "a refused commit changed the conversation");
                    }
                    // The budget of c20 (2) is never exceeded, in all conversations together.
                    let made = convs.iter().flat_map(|c| &c.offers).filter(|o| o.offer == "c20").count();
                    prop_assert!(made <= 2, "budget: c20 made {made} times");
                }
                Op::Outcome { conv, kind } => {
                    let c = &mut convs[conv];
                    let Some(last) = c.offers.last().map(|o| o.decision_id.clone()) else { continue };
                    let kind = [OutcomeKind::Convert, OutcomeKind::Decline, OutcomeKind::OptOut, OutcomeKind::Complaint][kind];
                    if kind == OutcomeKind::OptOut {
                        opted_out.insert(c.customer.clone(), true);
                    }
                    s.outcome(c, &last, kind, &mut ledger);
                }
            }
        }
    }
}

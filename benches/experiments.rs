//! What the experiment verdicts cost the server: the purchase history CUPED adjusts by (memory
//! per customer who bought in the last 14 days, time per event counted), and one look at a
//! running experiment (per-customer samples of both arms, the adjustment and the sequential
//! test) as its customers grow.
//!
//! ```text
//! cargo bench --bench experiments                        # 1M buyers, looks at 10k..1M customers
//! cargo bench --bench experiments -- --buyers 200000
//! ```
use nudge_inference::experiment::{cuped, sequential};
use nudge_inference::kpi::Kpis;
use nudge_records::{ConversationEvent, EventKind, OutcomeKind, EVENT_SCHEMA};
use std::time::Instant;

const DAY: u64 = 86_400_000;

/// A customer's keyed pseudonym as the server writes it (32 hex digits).
fn pseudonym(i: u64) -> String {
    format!(
        "{:032x}",
        u128::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
    )
}

fn event(time_ms: u64, customer: String, kind: EventKind) -> ConversationEvent {
    ConversationEvent {
        schema: EVENT_SCHEMA,
        id: String::new(),
        time_ms,
        kind,
        conversation_id: String::new(),
        customer,
        channel: "app".into(),
        experiment: String::new(),
        arm: String::new(),
        turn: 1,
        resolved: false,
        intent: String::new(),
        response_ms: 0.0,
        handoff: String::new(),
        decision_id: String::new(),
        offer_id: String::new(),
        policy_version: String::new(),
        outcome: None,
        revenue_cents: 0,
    }
}

fn purchase(time_ms: u64, customer: String, cents: i64) -> ConversationEvent {
    ConversationEvent {
        outcome: Some(OutcomeKind::Convert),
        revenue_cents: cents,
        ..event(time_ms, customer, EventKind::Outcome)
    }
}

fn rss_mb() -> f64 {
    nudge_testkit::proc_status_kb(std::process::id(), "VmRSS:") / 1024.0
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let buyers: u64 = args
        .iter()
        .position(|a| a == "--buyers")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);

    // The history: `buyers` customers buy once each over 14 days, read back as at start-up
    // (outside the charts' window: only the history and experiments keep them).
    let start = 1_780_000_000_000;
    let kpis = Kpis::new(1);
    let now = start + 30 * DAY;
    let before = rss_mb();
    let t = Instant::now();
    for i in 0..buyers {
        kpis.observe_replayed(&purchase(start + i * (14 * DAY / buyers), pseudonym(i), 10_000), now);
    }
    let secs = t.elapsed().as_secs_f64();
    let grown = rss_mb() - before;
    println!("| buyers in 14 days | events/s counted | resident memory | bytes / buyer |");
    println!("|---:|---:|---:|---:|");
    println!(
        "| {buyers} | {:.2e} | {grown:.0} MB | {:.0} |",
        buyers as f64 / secs,
        grown * 1024.0 * 1024.0 / buyers as f64
    );

    // An experiment reaching customers after the history, a third of them buyers before.
    println!();
    println!("| customers in the experiment | one look (samples + CUPED + mSPRT) | variance removed |");
    println!("|---:|---:|---:|");
    let t0 = start + 14 * DAY;
    let mut seen = 0u64;
    for target in [10_000u64, 100_000, 1_000_000] {
        for i in seen..target {
            let customer = if i % 3 == 0 {
                pseudonym(i % buyers)
            } else {
                pseudonym(buyers + i)
            };
            let arm = if i % 2 == 0 { "A" } else { "B" };
            let at = t0 + i;
            let mut turn = event(at, customer.clone(), EventKind::Turn);
            turn.experiment = "x".into();
            turn.arm = arm.into();
            kpis.observe_replayed(&turn, now);
            // Those who bought before buy again more often.
            if (i % 3 == 0 && i % 5 < 3) || i % 11 == 0 {
                let mut p = purchase(at, customer, 10_000);
                p.experiment = "x".into();
                p.arm = arm.into();
                kpis.observe_replayed(&p, now);
            }
        }
        seen = target;
        let t = Instant::now();
        let arms = kpis.arms("x");
        let adjusted = cuped(&arms[0].converted, &arms[1].converted).expect("the past predicts");
        let verdict = sequential(&adjusted.control, &adjusted.treatment, 0.05);
        let ms = t.elapsed().as_secs_f64() * 1e3;
        assert!(verdict.is_some());
        println!(
            "| {target} | {ms:.1} ms | {:.0} % |",
            100.0 * adjusted.variance_reduction
        );
    }
}

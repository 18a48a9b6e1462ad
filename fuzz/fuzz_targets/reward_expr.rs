//! The reward file (TOML with an arithmetic expression data scientists write): parsed, and when
//! it parses, evaluated on outcome totals taken from the input's tail.
#![no_main]
use libfuzzer_sys::fuzz_target;
use nudge_records::OutcomeTotals;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(reward) = nudge_optimizer::reward::Reward::from_toml("fuzz.toml", text) {
        let tail: Vec<f64> = (0..9)
            .map(|i| f64::from(data.get(data.len().saturating_sub(1 + i)).copied().unwrap_or(0)) - 100.0)
            .collect();
        let totals: OutcomeTotals = serde_json::from_value(serde_json::json!(tail)).expect("nine totals");
        let v = reward.value(Some(&totals));
        assert!(v.is_finite(), "a reward must be finite: {v}");
        let _ = reward.value(None);
    }
});

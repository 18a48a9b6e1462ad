//! Decision and outcome records as the optimizer reads them from logs and streams.
#![no_main]
use libfuzzer_sys::fuzz_target;
use nudge_records::{DecisionRecord, OutcomeRecord, Record};

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = serde_json::from_slice::<DecisionRecord>(data) {
        let _ = d.check();
    }
    if let Ok(o) = serde_json::from_slice::<OutcomeRecord>(data) {
        let _ = o.check();
    }
});

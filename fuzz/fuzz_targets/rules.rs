//! The rules file operators edit, checked against the example shop's catalog and the default
//! model's labels.
#![no_main]
use libfuzzer_sys::fuzz_target;
use nudge_strategy::rules::{Rules, Vocabulary};
use std::sync::OnceLock;

fn catalog() -> &'static nudge_strategy::Catalog {
    static C: OnceLock<nudge_strategy::Catalog> = OnceLock::new();
    C.get_or_init(|| {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        nudge_strategy::Catalog::load(&root.join("examples/shop/catalog.toml")).expect("the example catalog")
    })
}

fuzz_target!(|data: &[u8]| {
    let intents: Vec<String> = ["presales_question", "order_status", "complaint", "human_agent", "thanks", "oos"]
        .map(String::from)
        .to_vec();
    let sentiments: Vec<String> = ["negative", "neutral", "positive"].map(String::from).to_vec();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("rules.toml");
    std::fs::write(&path, data).expect("write");
    let _ = Rules::load(
        &path,
        &Vocabulary {
            intents: &intents,
            sentiments: &sentiments,
            catalog: catalog(),
        },
    );
});

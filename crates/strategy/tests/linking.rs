//! SKU linking on the example shop's catalog (229 SKUs) against 222 labelled zh/en messages
//! (`fixtures/mentions.jsonl`, written by `fixtures/make_mentions.py`): micro precision and
//! recall over the SKUs each message names, both at least 0.95, printed for the record.
use nudge_strategy::link::SkuLinker;
use nudge_strategy::Catalog;
use std::collections::BTreeSet;
use std::path::Path;

#[test]
fn linking_precision_and_recall_on_labelled_mentions() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let catalog = Catalog::load(&root.join("../../examples/shop/catalog.toml")).unwrap();
    let linker = SkuLinker::new(&catalog).unwrap();
    let text = std::fs::read_to_string(root.join("tests/fixtures/mentions.jsonl")).unwrap();
    let (mut tp, mut predicted, mut gold, mut exact, mut n) = (0usize, 0usize, 0usize, 0usize, 0usize);
    let mut misses = Vec::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let msg = v["text"].as_str().unwrap();
        let want: BTreeSet<String> = v["skus"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect();
        let got: BTreeSet<String> = linker.link(msg).into_iter().flat_map(|m| m.skus).collect();
        tp += got.intersection(&want).count();
        predicted += got.len();
        gold += want.len();
        n += 1;
        if got == want {
            exact += 1;
        } else {
            misses.push(format!("{msg:?}: got {got:?}"));
        }
    }
    let precision = tp as f64 / predicted.max(1) as f64;
    let recall = tp as f64 / gold.max(1) as f64;
    eprintln!(
        "SKU linking on {n} messages: precision {precision:.3}, recall {recall:.3}, exact sets {exact}/{n}; misses: {misses:#?}"
    );
    assert!(n >= 200);
    assert!(
        precision >= 0.95 && recall >= 0.95,
        "precision {precision:.3}, recall {recall:.3}: {misses:#?}"
    );
}

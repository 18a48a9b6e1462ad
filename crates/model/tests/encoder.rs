//! Loading, pooling and masking on a tiny random-weight encoder that the test writes in Hugging
//! Face layout, checked against a plain-Rust reference; batched equals one-by-one; and every
//! kind of broken bundle is refused with the file (and tensor) named.
use nudge_model::encoder::{BertEncoder, EncoderConfig, TextTokenizer};
use nudge_model::Pooling;
use nudge_model::{BackendKind, LoadError, NluModel};
use nudge_testkit::*;

fn encoder(dir: &std::path::Path) -> (BertEncoder, TextTokenizer) {
    let cfg = EncoderConfig::from_file(&dir.join("config.json")).unwrap();
    let max = cfg.max_tokens();
    let enc = BertEncoder::load(cfg, &dir.join("model.safetensors"), &candle_core::Device::Cpu).unwrap();
    let p = dir.join("tokenizer.json");
    let tok = TextTokenizer::from_bytes(&p, &std::fs::read(&p).unwrap(), String::new(), max).unwrap();
    (enc, tok)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn candle_encoder_matches_the_reference_for_bert_and_xlmr_with_both_poolings() {
    for variant in [Variant::Bert, Variant::XlmR] {
        let dir = tempfile::tempdir().unwrap();
        let tiny = Tiny::new(variant, 3);
        tiny.write_encoder(dir.path());
        let (enc, tok) = encoder(dir.path());
        let texts = texts(9);
        let ids: Vec<Vec<u32>> = texts.iter().map(|t| tok.tokenize(t).unwrap().ids).collect();
        let seqs: Vec<&[u32]> = ids.iter().map(|v| v.as_slice()).collect();
        for pooling in [Pooling::Mean, Pooling::Cls] {
            // One padded batch of mixed lengths: the mask must keep padding out of every row.
            let got = enc.embed(&seqs, pooling).unwrap();
            for (row, s) in got.iter().zip(&seqs) {
                let want = tiny.reference(s, pooling);
                let d = max_abs_diff(row, &want);
                assert!(d < 1e-4, "{:?} pooling, {} tokens: max diff {d}", pooling, s.len());
            }
        }
    }
}

#[test]
fn packed_inference_equals_the_padded_training_graph_in_f32_and_int8() {
    // `embed` packs sequences end to end; `forward` pads them and masks the padding. Both
    // are the same function of each sequence, so they must agree to float rounding, for
    // every length in one batch (1 to 40 words), and for the int8 layers too, where an input
    // that differs in its last bit can round to the neighbouring 7-bit step (hence 1e-3).
    for variant in [Variant::Bert, Variant::XlmR] {
        let dir = tempfile::tempdir().unwrap();
        Tiny::new(variant, 2).write_encoder(dir.path());
        let (enc, tok) = encoder(dir.path());
        let ids: Vec<Vec<u32>> = texts(40).iter().rev().map(|t| tok.tokenize(t).unwrap().ids).collect();
        let seqs: Vec<&[u32]> = ids.iter().map(|v| v.as_slice()).collect();
        let int8 = encoder(dir.path()).0.quantized().unwrap();
        for (enc, tolerance) in [(&enc, 2e-6), (&int8, 1e-3)] {
            for pooling in [Pooling::Mean, Pooling::Cls] {
                let packed = enc.embed(&seqs, pooling).unwrap();
                let padded = enc.forward(&seqs, pooling).unwrap().to_vec2::<f32>().unwrap();
                assert_eq!(packed.len(), seqs.len());
                for (i, (a, b)) in packed.iter().zip(&padded).enumerate() {
                    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
                    let d = max_abs_diff(a, b) / scale;
                    assert!(
                        d < tolerance,
                        "{variant:?} {pooling:?}, text {i} ({} tokens): {d} of {scale}",
                        seqs[i].len()
                    );
                }
            }
        }
        assert!(
            enc.embed(&[&[1, 2][..], &[][..]], Pooling::Mean).is_err(),
            "an empty sequence is refused"
        );
    }
}

#[test]
fn batched_results_equal_one_by_one_for_mixed_lengths() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = write_bundle(dir.path(), "tiny", Variant::Bert, Pooling::Mean);
    let model = NluModel::load(&bundle, BackendKind::Cpu).unwrap();
    let texts = texts(40);
    let ids: Vec<Vec<u32>> = texts.iter().map(|t| model.tokenize(t).unwrap().ids).collect();
    let seqs: Vec<&[u32]> = ids.iter().map(|v| v.as_slice()).collect();
    let batched = model.run(&seqs).unwrap();
    let mut worst = 0f32;
    for (s, b) in seqs.iter().zip(&batched) {
        let single = model.run(&[s]).unwrap().remove(0);
        worst = worst.max(max_abs_diff(&single.embedding, &b.embedding));
        worst = worst.max(max_abs_diff(
            single.intent.as_ref().unwrap(),
            b.intent.as_ref().unwrap(),
        ));
        worst = worst.max(max_abs_diff(
            single.sentiment.as_ref().unwrap(),
            b.sentiment.as_ref().unwrap(),
        ));
    }
    assert!(worst <= 1e-4, "batched vs single max abs diff {worst}");
}

#[test]
fn over_long_text_is_truncated_to_the_model_maximum_and_flagged() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = write_bundle(dir.path(), "tiny", Variant::XlmR, Pooling::Mean);
    let model = NluModel::load(&bundle, BackendKind::Cpu).unwrap();
    assert_eq!(model.max_tokens(), 48); // 49 positions, offset 1
    let long = vec!["order"; 200].join(" ");
    let t = model.tokenize(&long).unwrap();
    assert!(t.truncated);
    assert_eq!(t.ids.len(), 48);
    assert_eq!(*t.ids.last().unwrap(), 3, "the closing [SEP] survives truncation");
    assert!(!model.tokenize("where is my order").unwrap().truncated);
    model.run(&[&t.ids]).unwrap();
}

#[track_caller]
fn load_err(dir: &std::path::Path) -> String {
    match NluModel::load(dir, BackendKind::Cpu) {
        Ok(_) => panic!("a broken bundle loaded"),
        Err(e) => e.to_string(),
    }
}

fn rechecksum(dir: &std::path::Path) {
    let mut m = nudge_model::Manifest::read(dir).unwrap();
    let files: Vec<String> = m.files.keys().cloned().collect();
    let refs: Vec<&str> = files.iter().map(|s| s.as_str()).collect();
    m.write_with_checksums(dir, &refs).unwrap();
}

#[test]
fn broken_bundles_are_refused_with_the_file_and_tensor_named() {
    let fresh = || {
        let d = tempfile::tempdir().unwrap();
        write_bundle(d.path(), "tiny", Variant::Bert, Pooling::Mean);
        d
    };

    // A flipped byte in the weights: checksum mismatch naming the file.
    let d = fresh();
    let p = d.path().join("encoder/model.safetensors");
    let mut b = std::fs::read(&p).unwrap();
    let n = b.len() - 10;
    b[n] ^= 0xFF;
    std::fs::write(&p, b).unwrap();
    let e = load_err(d.path());
    assert!(e.contains("model.safetensors") && e.contains("sha256 mismatch"), "{e}");

    // A tensor of the wrong shape (checksums updated): the tensor is named.
    let d = fresh();
    let mut tiny = Tiny::new(Variant::Bert, 7);
    tiny.tensors.insert(
        "encoder.layer.1.intermediate.dense.weight".into(),
        (vec![31, 16], vec![0.0; 31 * 16]),
    );
    write_safetensors(&d.path().join("encoder/model.safetensors"), &tiny.tensors);
    rechecksum(d.path());
    let e = load_err(d.path());
    assert!(
        e.contains("encoder.layer.1.intermediate.dense.weight") && e.contains("shape"),
        "{e}"
    );

    // A missing tensor.
    let d = fresh();
    let mut tiny = Tiny::new(Variant::Bert, 7);
    tiny.tensors.remove("encoder.layer.0.attention.self.key.bias");
    write_safetensors(&d.path().join("encoder/model.safetensors"), &tiny.tensors);
    rechecksum(d.path());
    let e = load_err(d.path());
    assert!(
        e.contains("encoder.layer.0.attention.self.key.bias") && e.contains("missing"),
        "{e}"
    );

    // NaN weights.
    let d = fresh();
    let mut tiny = Tiny::new(Variant::Bert, 7);
    tiny.tensors.get_mut("embeddings.LayerNorm.bias").unwrap().1[3] = f32::NAN;
    write_safetensors(&d.path().join("encoder/model.safetensors"), &tiny.tensors);
    rechecksum(d.path());
    let e = load_err(d.path());
    assert!(e.contains("embeddings.LayerNorm.bias") && e.contains("NaN"), "{e}");

    // Not an encoder.
    let d = fresh();
    let cfg = d.path().join("encoder/config.json");
    std::fs::write(
        &cfg,
        std::fs::read_to_string(&cfg).unwrap().replace("\"bert\"", "\"gpt2\""),
    )
    .unwrap();
    rechecksum(d.path());
    let e = load_err(d.path());
    assert!(e.contains("config.json") && e.contains("gpt2"), "{e}");

    // A head whose label count disagrees with the manifest.
    let d = fresh();
    let mut m = nudge_model::Manifest::read(d.path()).unwrap();
    m.heads.intent.as_mut().unwrap().labels.push("extra".into());
    std::fs::write(d.path().join("manifest.json"), serde_json::to_vec(&m).unwrap()).unwrap();
    let e = load_err(d.path());
    assert!(
        e.contains("heads.safetensors") && e.contains("intent.weight") && e.contains("shape"),
        "{e}"
    );

    // A missing file and a missing manifest.
    let d = fresh();
    std::fs::remove_file(d.path().join("encoder/tokenizer.json")).unwrap();
    let e = load_err(d.path());
    assert!(e.contains("tokenizer.json"), "{e}");
    let e = load_err(&d.path().join("nowhere"));
    assert!(e.contains("manifest.json"), "{e}");

    // A manifest that does not checksum a file it loads.
    let d = fresh();
    let mut m = nudge_model::Manifest::read(d.path()).unwrap();
    m.files.remove("heads.safetensors");
    std::fs::write(d.path().join("manifest.json"), serde_json::to_vec(&m).unwrap()).unwrap();
    let e = load_err(d.path());
    assert!(e.contains("no sha256") && e.contains("heads.safetensors"), "{e}");
    let _: Option<LoadError> = None;
}

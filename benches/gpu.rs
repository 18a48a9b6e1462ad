//! The CUDA path's figures, measured in one run on the GPU machine: texts/s at batch 1, 32,
//! 256 and 1,024 for e5-small (the default bundle) and all-MiniLM-L6-v2 in f16 and bf16, on
//! real customer messages; the latency of a single request; the encoder's FLOP rate against
//! the measured rate of the same product on an 8192³ problem (the roofline) and against the
//! same batch's products alone (`dense_rate`: what the shapes allow); the same
//! texts on that machine's CPU; decision scoring candidates/s.
//!
//! ```text
//! cargo bench --bench gpu -- --pack DIR     # here (no GPU needed): what the GPU machine needs
//! cargo bench --bench gpu -- --from DIR [--out FILE]   # there: the figures, as a Markdown table
//! ```
//!
//! `--pack` writes `DIR/e5`, the default bundle with the word-embedding rows of every token
//! outside the texts used here and in `tests/gpu.rs` set to zero (a complete, checksummed
//! bundle that gives the same numbers on those texts and compresses from 470 MB to ~20 MB
//! for the trip), and `DIR/minilm`, MiniLM's config and tokenizer: its weights are random
//! there, which changes no timing (they are shaped and typed as the real ones).
use candle_core::{DType, Device, Tensor};
use nudge_kernels::{dense_rate, matmul_rate, Gpu, GpuEncoder, GpuScorer, Half};
use nudge_model::encoder::{weight_names, BertEncoder, EncoderConfig, NamedWeights, TextTokenizer};
use nudge_model::{BackendKind, Manifest, NluModel, Pooling};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// The messages: the default intents' training and evaluation sets, Chinese and English.
fn texts(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for f in ["eval_zh", "eval_en", "train_zh", "train_en"] {
        let p = root.join(format!("models/data/cs_intent/{f}.jsonl"));
        let body = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        for line in body.lines().filter(|l| !l.trim().is_empty()) {
            let v: serde_json::Value = serde_json::from_str(line).expect("jsonl");
            out.push(v["text"].as_str().expect("text").to_string());
        }
    }
    out
}

/// Texts the tests send besides the data files (and the load-time probe).
const EXTRA: &[&str] = &[
    "hello, where is my order?",
    "这单有没有能用的优惠券？",
    "My parcel still hasn't arrived, where is it?",
];

fn pack(out: &Path) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let src = root.join("models/bundles/default");
    let model = NluModel::load(&src, BackendKind::Cpu).expect("the default bundle (run `nudge models fetch`)");
    let mut keep = std::collections::HashSet::new();
    for t in texts(&root).iter().map(String::as_str).chain(EXTRA.iter().copied()) {
        keep.extend(model.tokenize(t).expect("tokenize").ids);
    }
    let e5 = out.join("e5");
    std::fs::create_dir_all(e5.join("encoder")).expect("mkdir");
    let mut manifest = Manifest::read(&src).expect("manifest");
    let enc = src.join("encoder");
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(enc.join(f), e5.join("encoder").join(f)).expect("copy");
    }
    std::fs::copy(src.join("heads.safetensors"), e5.join("heads.safetensors")).expect("copy heads");
    // Zero the rows in place: the safetensors layout (header, offsets) stays as it was.
    let mut bytes = std::fs::read(enc.join("model.safetensors")).expect("weights");
    let header_len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).expect("header");
    let (name, info) = header
        .as_object()
        .expect("object")
        .iter()
        .find(|(k, _)| k.ends_with("word_embeddings.weight"))
        .expect("word embeddings");
    assert_eq!(info["dtype"], "F32", "{name}");
    let (rows, width) = (
        info["shape"][0].as_u64().expect("rows") as usize,
        info["shape"][1].as_u64().expect("width") as usize,
    );
    let start = 8 + header_len + info["data_offsets"][0].as_u64().expect("offset") as usize;
    for r in (0..rows).filter(|r| !keep.contains(&(*r as u32))) {
        let at = start + r * width * 4;
        bytes[at..at + width * 4].fill(0);
    }
    std::fs::write(e5.join("encoder/model.safetensors"), &bytes).expect("write weights");
    manifest.version = format!("{}-travel", manifest.version);
    manifest
        .write_with_checksums(
            &e5,
            &[
                "encoder/config.json",
                "encoder/tokenizer.json",
                "encoder/model.safetensors",
                "heads.safetensors",
            ],
        )
        .expect("manifest");
    let minilm = out.join("minilm");
    std::fs::create_dir_all(&minilm).expect("mkdir");
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(root.join("models/bundles/minilm-en/encoder").join(f), minilm.join(f)).expect("copy minilm");
    }
    println!("packed {} tokens of {} into {}", keep.len(), rows, out.display());
}

/// MiniLM's shape with random weights (seeded), on the GPU.
fn random_minilm(gpu: &std::sync::Arc<Gpu>, dir: &Path, half: Half) -> (GpuEncoder, TextTokenizer) {
    let cfg_path = dir.join("config.json");
    let config = EncoderConfig::from_file(&cfg_path).expect("MiniLM config");
    let mut tensors = HashMap::new();
    for (name, shape) in weight_names(&config) {
        let scale = if name.ends_with("LayerNorm.weight") { 0.0 } else { 0.05 };
        let t = (Tensor::randn(0f32, 1.0, shape.as_slice(), &Device::Cpu).expect("randn") * scale).expect("scale");
        let t = if name.ends_with("LayerNorm.weight") {
            (t + 1.0).expect("ones")
        } else {
            t
        };
        tensors.insert(name, t.to_dtype(DType::F32).expect("f32"));
    }
    let weights = NamedWeights {
        origin: cfg_path.clone(),
        tensors,
    };
    let enc = BertEncoder::from_weights(config.clone(), &weights, &cfg_path, &Device::Cpu).expect("random MiniLM");
    let (shape, w) = enc.gpu_weights(Pooling::Mean).expect("gpu weights");
    let tok_path = dir.join("tokenizer.json");
    let tok = TextTokenizer::from_bytes(
        &tok_path,
        &std::fs::read(&tok_path).expect("tokenizer"),
        String::new(),
        128,
    )
    .expect("tokenizer");
    (
        GpuEncoder::new(gpu.clone(), shape, &w, half, &[], false).expect("GPU MiniLM"),
        tok,
    )
}

struct Row {
    model: &'static str,
    half: Half,
    batch: usize,
    texts_per_s: f64,
    tflops: f64,
    tokens_per_text: f64,
    /// The same batch's products alone (`dense_rate`), TFLOP/s.
    dense_tflops: f64,
}

/// Texts/s and FLOP/s of `run` over batches of `batch` texts cycling through `ids`.
fn measure(
    ids: &[Vec<u32>],
    batch: usize,
    flops_per: impl Fn(usize) -> f64,
    mut run: impl FnMut(&[&[u32]]),
) -> (f64, f64, f64) {
    let seqs: Vec<&[u32]> = ids.iter().cycle().take(batch).map(Vec::as_slice).collect();
    let flops: f64 = seqs.iter().map(|s| s.len() as f64 * flops_per(s.len())).sum();
    let tokens: usize = seqs.iter().map(|s| s.len()).sum();
    for _ in 0..3 {
        run(&seqs);
    }
    let (mut n, t) = (0usize, Instant::now());
    while n < 10 || t.elapsed().as_secs_f64() < 1.0 {
        run(&seqs);
        n += 1;
    }
    let secs = t.elapsed().as_secs_f64() / n as f64;
    (batch as f64 / secs, flops / secs, tokens as f64 / batch as f64)
}

/// Rows for batches of 1, 32, 256 and 1,024 texts of `ids` through `run`.
fn at_every_batch(
    gpu: &Gpu,
    model: &'static str,
    half: Half,
    ids: &[Vec<u32>],
    shape: &nudge_kernels::EncoderShape,
    mut run: impl FnMut(&[&[u32]]),
) -> Vec<Row> {
    [1, 32, 256, 1024]
        .into_iter()
        .map(|batch| {
            let (tps, fl, tpt) = measure(ids, batch, |l| shape.flops_per_token(l), &mut run);
            let tokens = (batch as f64 * tpt).round() as usize;
            let dense = dense_rate(gpu, half, shape, tokens, 20).expect("products alone");
            Row {
                model,
                half,
                batch,
                texts_per_s: tps,
                tflops: fl / 1e12,
                tokens_per_text: tpt,
                dense_tflops: dense / 1e12,
            }
        })
        .collect()
}

fn main() {
    if let Some(out) = arg("--pack") {
        pack(Path::new(&out));
        return;
    }
    let from = PathBuf::from(arg("--from").unwrap_or_else(|| "target/gpu-pack".into()));
    let root = PathBuf::from(arg("--root").unwrap_or_else(|| ".".into()));
    let gpu = Gpu::open(0).expect("a GPU (this bench runs on the GPU machine)");
    let (free, total) = gpu.memory().expect("memory");
    let mut report = format!(
        "GPU: {} (compute {}.{}), {:.1} of {:.1} GiB free\n\n",
        gpu.name(),
        gpu.arch().0,
        gpu.arch().1,
        free as f64 / 1073741824.0,
        total as f64 / 1073741824.0
    );
    let mut peak = HashMap::new();
    for half in [Half::F16, Half::Bf16] {
        let r = matmul_rate(&gpu, half, 8192, 20).expect("matmul rate");
        peak.insert(half, r);
        report += &format!(
            "{} product, 8192³, random inputs, f32 accumulate and output: {:.0} TFLOP/s\n",
            half.name(),
            r / 1e12
        );
    }
    report += "\n";
    let texts = texts(&root);
    let e5_dir = from.join("e5");
    if std::env::args().any(|a| a == "--profile") {
        profile(&e5_dir, &texts);
        return;
    }
    let mut rows = Vec::new();
    let mut latency = String::new();
    for half in [Half::F16, Half::Bf16] {
        let model = NluModel::load(
            &e5_dir,
            BackendKind::Cuda {
                ordinal: 0,
                bf16: half == Half::Bf16,
            },
        )
        .expect("e5 on the GPU");
        let ids: Vec<Vec<u32>> = texts.iter().map(|t| model.tokenize(t).expect("tokenize").ids).collect();
        let cfg = EncoderConfig::from_file(&e5_dir.join("encoder/config.json")).expect("config");
        let shape = flops_shape(&cfg);
        rows.extend(at_every_batch(&gpu, "e5-small", half, &ids, &shape, |s| {
            model.run(s).expect("GPU pass");
        }));
        // One request at a time: the encoder pass and heads for one message, 2,000 times.
        let mut lat: Vec<f64> = Vec::with_capacity(2000);
        for i in 0..2000 {
            let s = [ids[i % ids.len()].as_slice()];
            let t = Instant::now();
            model.run(&s).expect("GPU pass");
            lat.push(t.elapsed().as_secs_f64() * 1e3);
        }
        lat.sort_by(f64::total_cmp);
        latency += &format!(
            "e5-small {}: single request p50 {:.3} ms, p99 {:.3} ms\n",
            half.name(),
            lat[lat.len() / 2],
            lat[lat.len() * 99 / 100]
        );
        let (enc, tok) = random_minilm(&gpu, &from.join("minilm"), half);
        let ids: Vec<Vec<u32>> = texts.iter().map(|t| tok.tokenize(t).expect("tokenize").ids).collect();
        let shape = *enc.shape();
        rows.extend(at_every_batch(&gpu, "MiniLM-L6", half, &ids, &shape, |s| {
            enc.run(s).expect("GPU pass");
        }));
    }
    // The last two columns split the gap to the roofline: how far the batch's product shapes
    // are from the 8192³ rate on their own, and how much of that the rest of the pass costs.
    report += "| model | products | batch | tokens/text | texts/s | TFLOP/s | of the product's 8192³ rate | products alone, TFLOP/s (of 8192³) | pass / products alone |\n|---|---|---|---|---|---|---|---|---|\n";
    for r in &rows {
        report += &format!(
            "| {} | {} | {} | {:.1} | {:.0} | {:.1} | {:.1} % | {:.1} ({:.1} %) | {:.1} % |\n",
            r.model,
            r.half.name(),
            r.batch,
            r.tokens_per_text,
            r.texts_per_s,
            r.tflops,
            100.0 * r.tflops * 1e12 / peak[&r.half],
            r.dense_tflops,
            100.0 * r.dense_tflops * 1e12 / peak[&r.half],
            100.0 * r.tflops / r.dense_tflops
        );
    }
    report += &format!("\n{latency}");

    // The same texts on this machine's CPU, as served there (int8), batch 32.
    let cpu = NluModel::load(&e5_dir, BackendKind::Cpu).expect("e5 on the CPU");
    let ids: Vec<Vec<u32>> = texts.iter().map(|t| cpu.tokenize(t).expect("tokenize").ids).collect();
    let (cpu_tps, _, _) = measure(
        &ids,
        32,
        |_| 0.0,
        |s| {
            cpu.run(s).expect("CPU pass");
        },
    );
    report += &format!(
        "e5-small on this machine's CPU ({} threads, int8 as shipped), batch 32: {cpu_tps:.0} texts/s\n\n",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );

    // Decision scoring: UCB over 100,000 candidates, Thompson with 1,000 draws over 1,000.
    let d = 64;
    let theta: Vec<f32> = (0..d).map(|i| ((i * 37 % 11) as f32 - 5.0) / 10.0).collect();
    let mut chol = vec![0f32; d * d];
    for i in 0..d {
        for j in 0..=i {
            chol[i * d + j] = if i == j {
                0.3
            } else {
                0.01 * (((i * 7 + j * 3) % 5) as f32 - 2.0)
            };
        }
    }
    let scorer = GpuScorer::new(&gpu, &theta, &chol).expect("scorer");
    let k = 100_000;
    let feats: Vec<f32> = (0..k * d)
        .map(|i| ((i * 2654435761usize % 1000) as f32 / 500.0) - 1.0)
        .collect();
    scorer.ucb(&feats, 1.0).expect("ucb");
    let t = Instant::now();
    for _ in 0..10 {
        scorer.ucb(&feats, 1.0).expect("ucb");
    }
    let ucb_rate = 10.0 * k as f64 / t.elapsed().as_secs_f64();
    let few = &feats[..1000 * d];
    scorer.thompson(few, 1.0, 1000, 1).expect("thompson");
    let t = Instant::now();
    for s in 0..10 {
        scorer.thompson(few, 1.0, 1000, s).expect("thompson");
    }
    let ts_rate = 10.0 * 1000.0 / t.elapsed().as_secs_f64();
    report += &format!(
        "Decision scoring (d = {d}, host to host): LinUCB {:.1} M candidates/s (100,000 per call); Thompson, 1,000 draws each: {:.0} k candidates/s (1,000 per call)\n",
        ucb_rate / 1e6,
        ts_rate / 1e3
    );
    print!("{report}");
    if let Some(out) = arg("--out") {
        std::fs::write(&out, &report).expect("write report");
    }
}

/// Where a pass of e5 (f16) spends its GPU time at batch 1, 256 and 1,024: each stage's
/// share from events between the launches, next to the wall time of a plain pass.
fn profile(e5_dir: &Path, texts: &[String]) {
    let gpu = Gpu::open(0).expect("GPU");
    let cfg_path = e5_dir.join("encoder/config.json");
    let config = EncoderConfig::from_file(&cfg_path).expect("config");
    let weights = e5_dir.join("encoder/model.safetensors");
    let bytes = std::fs::read(&weights).expect("weights");
    let cpu = BertEncoder::load_bytes(config, &weights, &bytes, &Device::Cpu).expect("e5");
    let (shape, w) = cpu.gpu_weights(Pooling::Mean).expect("gpu weights");
    let enc = GpuEncoder::new(gpu, shape, &w, Half::F16, &[], false).expect("e5 on the GPU");
    let model = NluModel::load(e5_dir, BackendKind::Cpu).expect("tokenizer");
    let ids: Vec<Vec<u32>> = texts.iter().map(|t| model.tokenize(t).expect("tokenize").ids).collect();
    for batch in [1usize, 256, 1024] {
        let seqs: Vec<&[u32]> = ids.iter().cycle().take(batch).map(Vec::as_slice).collect();
        for _ in 0..5 {
            enc.run(&seqs).expect("GPU pass");
        }
        let t = Instant::now();
        for _ in 0..20 {
            enc.run(&seqs).expect("GPU pass");
        }
        let wall = t.elapsed().as_secs_f64() * 1e6 / 20.0;
        let stages = enc.stage_times(&seqs, 20).expect("stage times");
        let total: f64 = stages.iter().map(|s| s.1).sum();
        println!("batch {batch}: wall {wall:.0} us per pass; GPU stages {total:.0} us (events between launches)");
        let mut sorted = stages.clone();
        sorted.sort_by(|a, b| b.1.total_cmp(&a.1));
        for (name, us) in sorted {
            println!("  {us:8.1} us  {:5.1} %  {name}", 100.0 * us / total);
        }
    }
}

fn flops_shape(cfg: &EncoderConfig) -> nudge_kernels::EncoderShape {
    nudge_kernels::EncoderShape {
        hidden: cfg.hidden_size,
        heads: cfg.num_attention_heads,
        layers: cfg.num_hidden_layers,
        intermediate: cfg.intermediate_size,
        vocab: cfg.vocab_size,
        max_positions: cfg.max_position_embeddings,
        position_offset: cfg.position_offset(),
        eps: cfg.layer_norm_eps as f32,
        activation: nudge_kernels::Activation::GeluErf,
        pool: nudge_kernels::Pool::Mean,
    }
}

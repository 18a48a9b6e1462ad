//! How close the encoder is to the machine: a GEMM peak probe with the library the encoder uses
//! (candle's CPU matmul), then the encoder's forward pass over a grid of batch sizes × sequence
//! lengths with its FLOP rate as a fraction of that peak. Measured in one run, so the ratio
//! holds on any machine; both figures and the ratio go to stdout and JSON.
//!
//! ```text
//! cargo bench --bench encoder                            # default bundle, batches 1/8/32, 16/32/64 tokens
//! cargo bench --bench encoder -- --bundle DIR --batches 1,32 --lengths 16 --out target/encoder.json
//! ```
//! FLOPs per forward (dense layers and attention, the matmuls only): per layer
//! `2·T·(4H² + 2HI) + 4·B·L²·H` for `T = B·L` tokens, hidden `H`, intermediate `I`.
use candle_core::{Device, Tensor};
use nudge_model::{BackendKind, NluModel};
use std::path::PathBuf;
use std::time::Instant;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn list(name: &str, default: &[usize]) -> Vec<usize> {
    arg(name).map_or_else(
        || default.to_vec(),
        |v| {
            v.split(',')
                .map(|x| x.trim().parse().expect("a list of numbers"))
                .collect()
        },
    )
}

/// Best time of `reps` runs of `f` after one warm-up, seconds.
fn best(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// GFLOP/s of an `m×k · k×n` f32 matmul.
fn gemm(m: usize, k: usize, n: usize) -> f64 {
    let dev = Device::Cpu;
    let a = Tensor::randn(0f32, 1.0, (m, k), &dev).expect("a");
    let b = Tensor::randn(0f32, 1.0, (k, n), &dev).expect("b");
    let s = best(5, || {
        a.matmul(&b).expect("matmul");
    });
    2.0 * (m * k * n) as f64 / s / 1e9
}

#[derive(serde::Deserialize)]
struct Config {
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
}

fn main() {
    let bundle = PathBuf::from(arg("--bundle").unwrap_or_else(|| "models/bundles/default".into()));
    let batches = list("--batches", &[1, 8, 32]);
    let lengths = list("--lengths", &[16, 32, 64]);
    let out = PathBuf::from(arg("--out").unwrap_or_else(|| "target/encoder-bench.json".into()));

    println!("GEMM peak probe (candle CPU matmul, f32, best of 5):");
    let mut probes = Vec::new();
    for (m, k, n) in [
        (512, 512, 512),
        (1024, 1024, 1024),
        (2048, 2048, 2048),
        (512, 384, 1536),
        (512, 1536, 384),
    ] {
        let g = gemm(m, k, n);
        println!("  {m}×{k}·{k}×{n}: {g:.1} GFLOP/s");
        probes.push(serde_json::json!({"m": m, "k": k, "n": n, "gflops": g}));
    }
    let peak = probes.iter().filter_map(|p| p["gflops"].as_f64()).fold(0.0, f64::max);
    println!("  peak: {peak:.1} GFLOP/s");

    let model = NluModel::load(&bundle, BackendKind::Cpu).expect("the bundle (run `nudge models fetch` first)");
    let cfg: Config = serde_json::from_slice(
        &std::fs::read(bundle.join(&model.manifest().encoder.dir).join("config.json")).expect("config.json"),
    )
    .expect("an encoder config");
    let (h, i, layers) = (
        cfg.hidden_size as f64,
        cfg.intermediate_size as f64,
        cfg.num_hidden_layers as f64,
    );
    let text = "Could you tell me how long the battery of the X1 phone lasts, whether it supports fast \
                charging, and if the 256GB version is worth the extra money compared with the 128GB one \
                for someone who takes a lot of photos and videos? 这款手机的电池能用多久，支持快充吗？";
    let ids = model.tokenize(text).expect("tokenize").ids;
    println!(
        "\nEncoder forward ({}: {} layers, hidden {}, intermediate {}), pooled vectors, best of 5:",
        model.version(),
        cfg.num_hidden_layers,
        cfg.hidden_size,
        cfg.intermediate_size
    );
    println!("| batch | tokens | ms | texts/s | GFLOP/s | of peak |");
    println!("|---|---|---|---|---|---|");
    let mut rows = Vec::new();
    for &l in &lengths {
        let seq: Vec<u32> = ids.iter().copied().cycle().take(l).collect();
        for &b in &batches {
            let seqs: Vec<&[u32]> = (0..b).map(|_| seq.as_slice()).collect();
            let s = best(5, || {
                model.embed(&seqs).expect("forward");
            });
            let (bf, lf) = (b as f64, l as f64);
            let flops = layers * (2.0 * bf * lf * (4.0 * h * h + 2.0 * h * i) + 4.0 * bf * lf * lf * h);
            let gflops = flops / s / 1e9;
            println!(
                "| {b} | {l} | {:.2} | {:.1} | {gflops:.1} | {:.0} % |",
                s * 1e3,
                bf / s,
                100.0 * gflops / peak
            );
            rows.push(serde_json::json!({"batch": b, "tokens": l, "seconds": s, "texts_per_s": bf / s, "gflops": gflops, "of_peak": gflops / peak}));
        }
    }
    let json = serde_json::json!({"bundle": bundle, "version": model.version(), "gemm": probes, "peak_gflops": peak, "forward": rows});
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).expect("the output folder");
    }
    std::fs::write(&out, serde_json::to_string_pretty(&json).expect("json")).expect("writing the JSON");
    println!("\nall figures: {}", out.display());
}

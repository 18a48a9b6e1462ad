//! How close the encoder is to the machine: a GEMM peak probe with the library the f32 encoder
//! uses (candle's CPU matmul) and with our int8 kernels on the same shapes, then the encoder's
//! forward pass in each precision over a grid of batch sizes × sequence lengths, with its
//! (f32-equivalent) FLOP rate as a fraction of the f32 peak. Measured in one run, so the
//! ratios hold on any machine; figures and ratios go to stdout and JSON.
//!
//! ```text
//! cargo bench --bench encoder                            # default bundle, batches 1/8/32, 16/32/64 tokens
//! cargo bench --bench encoder -- --bundle DIR --batches 1,32 --lengths 16 --precision int8 \
//!     --out target/encoder.json
//! NUDGE_CPU_ISA=avx2 cargo bench --bench encoder    # what an AVX2-only CPU runs (no AVX-512)
//! ```
//! FLOPs per forward (dense layers and attention, the matmuls only): per layer
//! `2·T·(4H² + 2HI) + 4·B·L²·H` for `T = B·L` tokens, hidden `H`, intermediate `I`.
use candle_core::{Device, Tensor};
use nudge_model::encoder::Int8Linear;
use nudge_model::{BackendKind, NluModel, Precision};
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

/// GOP/s of the same product through our int8 layer (`b` as the weight, quantized once).
fn gemm_int8(m: usize, k: usize, n: usize) -> f64 {
    let x: Vec<f32> = (0..m * k).map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 250.0).collect();
    let w: Vec<f32> = (0..n * k)
        .map(|i| ((i * 104_729 % 1000) as f32 - 500.0) / 5000.0)
        .collect();
    let layer = Int8Linear::quantize(&w, &vec![0.0; n], n, k).expect("a layer");
    let s = best(5, || {
        layer.forward(&x, m);
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

    let precisions: Vec<String> = arg("--precision")
        .unwrap_or_else(|| "f32,int8".into())
        .split(',')
        .map(String::from)
        .collect();

    println!(
        "GEMM probe, best of 5: candle CPU matmul (f32) and our int8 layer ({} kernel):",
        Int8Linear::kernel()
    );
    let mut probes = Vec::new();
    for (m, k, n) in [
        (512, 512, 512),
        (1024, 1024, 1024),
        (2048, 2048, 2048),
        (16, 384, 1152),
        (512, 384, 1536),
        (512, 1536, 384),
    ] {
        let g = gemm(m, k, n);
        let q = gemm_int8(m, k, n);
        println!(
            "  {m}×{k}·{k}×{n}: f32 {g:.1} GFLOP/s, int8 {q:.1} GOP/s ({:.2}×)",
            q / g
        );
        probes.push(serde_json::json!({"m": m, "k": k, "n": n, "gflops": g, "int8_gops": q}));
    }
    let peak = probes.iter().filter_map(|p| p["gflops"].as_f64()).fold(0.0, f64::max);
    println!("  f32 peak: {peak:.1} GFLOP/s");
    let scratch = tempfile::tempdir().expect("a temporary directory");

    let base = NluModel::load(&bundle, BackendKind::Cpu).expect("the bundle (run `nudge models fetch` first)");
    let cfg: Config = serde_json::from_slice(
        &std::fs::read(bundle.join(&base.manifest().encoder.dir).join("config.json")).expect("config.json"),
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
    let ids = base.tokenize(text).expect("tokenize").ids;
    println!(
        "\nEncoder forward ({}: {} layers, hidden {}, intermediate {}), pooled vectors, best of 5:",
        base.version(),
        cfg.num_hidden_layers,
        cfg.hidden_size,
        cfg.intermediate_size
    );
    println!("| precision | batch | tokens | ms | texts/s | GFLOP/s (f32-equivalent) | of f32 peak |");
    println!("|---|---|---|---|---|---|---|");
    let mut rows = Vec::new();
    for precision in &precisions {
        let p: Precision = precision.parse().unwrap_or_else(|e| panic!("--precision: {e}"));
        let model = if p == base.manifest().encoder.precision {
            NluModel::load(&bundle, BackendKind::Cpu).expect("the bundle")
        } else {
            let dir = scratch.path().join(precision);
            nudge_model::bundle::with_precision(&bundle, &dir, p, None).expect("the bundle in that precision");
            NluModel::load(&dir, BackendKind::Cpu).expect("the converted bundle")
        };
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
                    "| {precision} | {b} | {l} | {:.2} | {:.1} | {gflops:.1} | {:.0} % |",
                    s * 1e3,
                    bf / s,
                    100.0 * gflops / peak
                );
                rows.push(serde_json::json!({"precision": precision, "batch": b, "tokens": l, "seconds": s, "texts_per_s": bf / s, "gflops": gflops, "of_peak": gflops / peak}));
            }
        }
    }
    let json = serde_json::json!({"bundle": bundle, "version": base.version(), "int8_kernel": Int8Linear::kernel(), "gemm": probes, "peak_gflops": peak, "forward": rows});
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).expect("the output folder");
    }
    std::fs::write(&out, serde_json::to_string_pretty(&json).expect("json")).expect("writing the JSON");
    println!("\nall figures: {}", out.display());
}

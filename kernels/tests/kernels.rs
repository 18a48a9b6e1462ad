//! Every kernel against its CPU reference, and the whole GPU encoder against the references
//! chained. Without a GPU these tests say so and pass; `NUDGE_REQUIRE_GPU=1` makes a missing
//! GPU a failure (the GPU machine's script sets it), and `NUDGE_REQUIRE_NVRTC=1` does the
//! same for NVRTC (CI sets it: every kernel must compile there).
use nudge_kernels::{
    reference, Activation, Dense, EncoderShape, EncoderWeights, Gpu, GpuEncoder, GpuScorer, Half, HeadWeights,
    LayerWeights, Norm, Pool, Single,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::Arc;

fn required(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| v == "1")
}

fn gpu() -> Option<Arc<Gpu>> {
    match Gpu::open(0) {
        Ok(g) => Some(g),
        Err(e) if !required("NUDGE_REQUIRE_GPU") => {
            eprintln!("skipped: no usable GPU here ({e}); set NUDGE_REQUIRE_GPU=1 to make this a failure");
            None
        }
        Err(e) => panic!("NUDGE_REQUIRE_GPU=1 but the GPU could not be opened: {e}"),
    }
}

fn randn(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| (rng.random::<f32>() * 2.0 - 1.0) * scale).collect()
}

/// Largest |a - b| over the pair, and where.
fn max_diff(a: &[f32], b: &[f32]) -> (f32, usize) {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .enumerate()
        .map(|(i, (x, y))| ((x - y).abs(), i))
        .fold((0.0, 0), |m, v| if v.0 > m.0 { v } else { m })
}

fn halves(half: Half, v: &[f32]) -> Vec<u16> {
    v.iter().map(|&x| half.encode(x)).collect()
}

fn decode(half: Half, v: &[u16]) -> Vec<f32> {
    v.iter().map(|&b| half.decode(b)).collect()
}

/// Half outputs agree to a rounding step of the half type (inputs rounded differently by a
/// last f32 bit may land on neighbouring halves).
fn assert_half_close(what: &str, half: Half, gpu: &[u16], cpu: &[u16]) {
    let (g, c) = (decode(half, gpu), decode(half, cpu));
    let rel = match half {
        Half::F16 => 2f32.powi(-9),
        Half::Bf16 => 2f32.powi(-6),
    };
    for (i, (x, y)) in g.iter().zip(&c).enumerate() {
        assert!(
            (x - y).abs() <= rel * y.abs().max(x.abs()) + 1e-4,
            "{what} ({}): element {i}: GPU {x}, CPU {y}",
            half.name()
        );
    }
}

fn assert_close(what: &str, gpu: &[f32], cpu: &[f32], tol: f32) {
    let (d, i) = max_diff(gpu, cpu);
    assert!(
        d <= tol,
        "{what}: max |GPU − CPU| = {d} at {i} (GPU {}, CPU {}), allowed {tol}",
        gpu[i],
        cpu[i]
    );
}

#[test]
fn nvrtc_compiles_every_kernel() {
    if !nudge_kernels::nvrtc_available() {
        assert!(
            !required("NUDGE_REQUIRE_NVRTC"),
            "NUDGE_REQUIRE_NVRTC=1 but libnvrtc.so was not found (LD_LIBRARY_PATH?)"
        );
        eprintln!("skipped: NVRTC (libnvrtc.so) not found; set NUDGE_REQUIRE_NVRTC=1 to make this a failure");
        return;
    }
    for arch in [(8, 0), (9, 0)] {
        let n = nudge_kernels::compile_all(arch).unwrap_or_else(|e| panic!("compute_{}{}: {e}", arch.0, arch.1));
        assert_eq!(n, nudge_kernels::SOURCES.len() * 2 * 3 * 3);
    }
    // A broken source is reported with NVRTC's log, naming the file.
    let bad = nudge_kernels::Source {
        name: "broken",
        text: "extern \"C\" __global__ void k() { undefined_thing(); }",
        kernels: &["k"],
    };
    let err = nudge_kernels::compile(
        &bad,
        nudge_kernels::Variant {
            arch: (9, 0),
            half: Half::F16,
            head_dim: 32,
            hidden: 384,
            activation: 0,
        },
    )
    .expect_err("an undefined identifier must not compile");
    let msg = err.to_string();
    assert!(msg.contains("broken.cu") && msg.contains("undefined_thing"), "{msg}");
}

#[test]
fn embedding_and_layer_norms_match_the_reference() {
    let Some(gpu) = gpu() else { return };
    let mut rng = StdRng::seed_from_u64(1);
    // 384: each lane keeps its values in registers; 1280: the generic loop.
    for h in [384, 1280] {
        let (vocab, max_pos, eps) = (1000, 64, 1e-12);
        let word = randn(&mut rng, vocab * h, 1.0);
        let position = randn(&mut rng, max_pos * h, 0.5);
        let (gamma, beta) = (randn(&mut rng, h, 1.5), randn(&mut rng, h, 0.2));
        let ids: Vec<u32> = (0..300).map(|_| rng.random_range(0..vocab as u32)).collect();
        let pos: Vec<u32> = (0..300).map(|i| (i % max_pos) as u32).collect();
        for half in [Half::F16, Half::Bf16] {
            let k = Single::new(gpu.clone(), half, 32, h, 0).unwrap();
            let (g_res, g_h) = k
                .embed_layer_norm(&ids, &pos, &word, &position, &gamma, &beta, eps)
                .unwrap();
            let (c_res, c_h) = reference::embed_layer_norm(&ids, &pos, &word, &position, &gamma, &beta, eps, half);
            assert_close(&format!("embedding LayerNorm, width {h}"), &g_res, &c_res, 2e-4);
            assert_half_close("embedding LayerNorm", half, &g_h, &c_h);

            let acc = halves(half, &randn(&mut rng, 300 * h, 3.0));
            let bias = randn(&mut rng, h, 0.5);
            let (g_res, g_h) = k
                .bias_residual_layer_norm(&acc, &bias, &c_res, &gamma, &beta, 1e-5)
                .unwrap();
            let (c_res2, c_h2) = reference::bias_residual_layer_norm(&acc, &bias, &c_res, &gamma, &beta, 1e-5, half);
            assert_close(&format!("residual LayerNorm, width {h}"), &g_res, &c_res2, 2e-4);
            assert_half_close("residual LayerNorm", half, &g_h, &c_h2);
        }
    }
}

#[test]
fn bias_and_activation_match_the_reference() {
    let Some(gpu) = gpu() else { return };
    let mut rng = StdRng::seed_from_u64(2);
    let (rows, cols) = (77, 1536);
    let raw = randn(&mut rng, rows * cols, 6.0);
    let bias = randn(&mut rng, cols, 1.0);
    for half in [Half::F16, Half::Bf16] {
        let acc = halves(half, &raw);
        for act in 0..3 {
            let k = Single::new(gpu.clone(), half, 32, 384, act).unwrap();
            let g = k.bias_activation(&acc, &bias).unwrap();
            let c = reference::bias_activation(&acc, &bias, act, half);
            assert_half_close(&format!("activation {act}"), half, &g, &c);
        }
    }
}

#[test]
fn packed_attention_matches_the_reference() {
    let Some(gpu) = gpu() else { return };
    let mut rng = StdRng::seed_from_u64(3);
    // Lengths cover one token, a partial key tile, several tiles and more queries than a
    // block has threads (200 > 128).
    let lens = [1usize, 7, 64, 65, 200, 16];
    let mut offsets = vec![0u32];
    for l in lens {
        offsets.push(offsets[offsets.len() - 1] + l as u32);
    }
    let tokens = *offsets.last().unwrap() as usize;
    for (hidden, heads) in [(384, 12), (256, 4), (320, 5)] {
        let raw = randn(&mut rng, tokens * 3 * hidden, 1.0);
        let bias = randn(&mut rng, 3 * hidden, 0.3);
        for half in [Half::F16, Half::Bf16] {
            let qkv = halves(half, &raw);
            let k = Single::new(gpu.clone(), half, hidden / heads, hidden, 0).unwrap();
            let g = k.attention(&qkv, &bias, &offsets, heads).unwrap();
            let c = reference::attention(&qkv, &bias, &offsets, heads, half);
            assert_half_close(&format!("attention, head dim {}", hidden / heads), half, &g, &c);
        }
    }
}

#[test]
fn pooling_heads_and_products_match_the_reference() {
    let Some(gpu) = gpu() else { return };
    let mut rng = StdRng::seed_from_u64(4);
    let h = 384;
    let offsets = [0u32, 1, 9, 40, 41];
    let x = randn(&mut rng, 41 * h, 2.0);
    let k = Single::new(gpu.clone(), Half::F16, 32, 384, 0).unwrap();
    for cls in [false, true] {
        let g = k.pool(&x, &offsets, h, cls).unwrap();
        assert_close("pooling", &g, &reference::pool(&x, &offsets, h, cls), 1e-5);
    }
    let labels = 17;
    let rows = randn(&mut rng, 5 * h, 1.0);
    let w = randn(&mut rng, labels * h, 0.3);
    let b = randn(&mut rng, labels, 0.5);
    for normalize in [false, true] {
        let g = k.linear_softmax(&rows, h, normalize, &w, &b).unwrap();
        let c = reference::linear_softmax(&rows, h, normalize, &w, &b);
        assert_close("head softmax", &g, &c, 1e-5);
    }
    for half in [Half::F16, Half::Bf16] {
        let k = Single::new(gpu.clone(), half, 32, 384, 0).unwrap();
        let (r, n, kk) = (33, 1152, 384);
        let xs: Vec<u16> = randn(&mut rng, r * kk, 1.0)
            .into_iter()
            .map(|v| half.encode(v))
            .collect();
        let ws: Vec<u16> = randn(&mut rng, n * kk, 0.1)
            .into_iter()
            .map(|v| half.encode(v))
            .collect();
        let g = k.matmul(&xs, &ws, r, n, kk).unwrap();
        // Exact products of the halves, f32 accumulation, one rounding to half at the end.
        let want = halves(half, &reference::matmul(&xs, &ws, r, n, kk, half));
        assert_half_close("matmul", half, &g, &want);
    }
}

#[test]
fn decision_scoring_matches_the_reference() {
    let Some(gpu) = gpu() else { return };
    let mut rng = StdRng::seed_from_u64(5);
    let (d, k) = (24, 1000);
    let theta = randn(&mut rng, d, 1.0);
    // A lower-triangular factor with a positive diagonal.
    let mut chol = vec![0f32; d * d];
    for i in 0..d {
        for j in 0..=i {
            chol[i * d + j] = if i == j {
                0.5 + rng.random::<f32>()
            } else {
                0.2 * (rng.random::<f32>() - 0.5)
            };
        }
    }
    let feats = randn(&mut rng, k * d, 1.0);
    let scorer = GpuScorer::new(&gpu, &theta, &chol).unwrap();
    let g = scorer.ucb(&feats, 0.7).unwrap();
    let (means, ucb) = reference::ucb(&feats, &theta, &chol, 0.7);
    assert_close("means", &g.means, &means, 1e-4);
    assert_close("UCB", &g.ucb, &ucb, 1e-4);

    // A few close candidates so that wins are spread; shares agree to sampling-free
    // precision (same Philox draws), up to near-ties that f32 products may order otherwise.
    let few = &feats[..8 * d];
    let gw = scorer.thompson(few, 1.0, 20_000, 42).unwrap();
    let cw = reference::thompson(few, &theta, &chol, 1.0, 20_000, 42);
    assert_close("Thompson win shares", &gw, &cw, 2e-3);
    assert!((gw.iter().sum::<f32>() - 1.0).abs() < 1e-4, "shares sum to 1: {gw:?}");
    assert!(
        gw.iter().filter(|&&p| p > 0.01).count() >= 2,
        "draws should spread: {gw:?}"
    );

    // Bad input is an error naming what is wrong, not a panic.
    let e = scorer.ucb(&feats[..d + 1], 1.0).unwrap_err().to_string();
    assert!(e.contains("candidate features"), "{e}");
}

fn random_encoder(rng: &mut StdRng, shape: &EncoderShape) -> EncoderWeights {
    let (h, f) = (shape.hidden, shape.intermediate);
    let dense = |rng: &mut StdRng, o: usize, i: usize| Dense {
        weight: randn(rng, o * i, 1.0 / (i as f32).sqrt() * 1.7),
        bias: randn(rng, o, 0.1),
    };
    let norm = |rng: &mut StdRng| Norm {
        weight: (0..h).map(|_| 0.8 + 0.4 * rng.random::<f32>()).collect(),
        bias: randn(rng, h, 0.1),
    };
    EncoderWeights {
        word: randn(rng, shape.vocab * h, 1.0),
        position: randn(rng, shape.max_positions * h, 0.3),
        emb_norm: norm(rng),
        layers: (0..shape.layers)
            .map(|_| LayerWeights {
                qkv: dense(rng, 3 * h, h),
                attn_out: dense(rng, h, h),
                attn_norm: norm(rng),
                ffn_in: dense(rng, f, h),
                ffn_out: dense(rng, h, f),
                out_norm: norm(rng),
            })
            .collect(),
    }
}

/// The references chained in the encoder's order: what `GpuEncoder::run` must equal.
fn reference_encoder(
    shape: &EncoderShape,
    w: &EncoderWeights,
    head: &HeadWeights,
    seqs: &[&[u32]],
    half: Half,
) -> (Vec<f32>, Vec<f32>) {
    let (h, f) = (shape.hidden, shape.intermediate);
    let mut offsets = vec![0u32];
    let (mut ids, mut pos) = (Vec::new(), Vec::new());
    for s in seqs {
        ids.extend_from_slice(s);
        pos.extend((0..s.len()).map(|i| (i + shape.position_offset) as u32));
        offsets.push(ids.len() as u32);
    }
    let t = ids.len();
    let enc = |v: &[f32]| -> Vec<u16> { v.iter().map(|&x| half.encode(x)).collect() };
    let (mut resid, mut xh) = reference::embed_layer_norm(
        &ids,
        &pos,
        &w.word,
        &w.position,
        &w.emb_norm.weight,
        &w.emb_norm.bias,
        shape.eps,
        half,
    );
    for l in &w.layers {
        let qkv = enc(&reference::matmul(&xh, &enc(&l.qkv.weight), t, 3 * h, h, half));
        let ctx = reference::attention(&qkv, &l.qkv.bias, &offsets, shape.heads, half);
        let a = enc(&reference::matmul(&ctx, &enc(&l.attn_out.weight), t, h, h, half));
        (resid, xh) = reference::bias_residual_layer_norm(
            &a,
            &l.attn_out.bias,
            &resid,
            &l.attn_norm.weight,
            &l.attn_norm.bias,
            shape.eps,
            half,
        );
        let inner = enc(&reference::matmul(&xh, &enc(&l.ffn_in.weight), t, f, h, half));
        let inner = reference::bias_activation(&inner, &l.ffn_in.bias, 0, half);
        let o = enc(&reference::matmul(&inner, &enc(&l.ffn_out.weight), t, h, f, half));
        (resid, xh) = reference::bias_residual_layer_norm(
            &o,
            &l.ffn_out.bias,
            &resid,
            &l.out_norm.weight,
            &l.out_norm.bias,
            shape.eps,
            half,
        );
    }
    let pooled = reference::pool(&resid, &offsets, h, shape.pool == Pool::Cls);
    let probs = reference::linear_softmax(&pooled, h, true, &head.weight, &head.bias);
    (pooled, probs)
}

#[test]
fn the_gpu_encoder_equals_its_kernels_chained() {
    let Some(gpu) = gpu() else { return };
    let mut rng = StdRng::seed_from_u64(6);
    let shape = EncoderShape {
        hidden: 128,
        heads: 4,
        layers: 2,
        intermediate: 512,
        vocab: 300,
        max_positions: 160,
        position_offset: 2,
        eps: 1e-12,
        activation: Activation::GeluErf,
        pool: Pool::Mean,
    };
    let w = random_encoder(&mut rng, &shape);
    let head = HeadWeights {
        weight: randn(&mut rng, 5 * shape.hidden, 1.0),
        bias: randn(&mut rng, 5, 0.2),
    };
    let seqs: Vec<Vec<u32>> = [3usize, 1, 40, 158, 12]
        .iter()
        .map(|&n| (0..n).map(|_| rng.random_range(0..shape.vocab as u32)).collect())
        .collect();
    let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
    for half in [Half::F16, Half::Bf16] {
        let enc = GpuEncoder::new(gpu.clone(), shape, &w, half, std::slice::from_ref(&head), true).unwrap();
        let out = enc.run(&refs).unwrap();
        let (pooled, probs) = reference_encoder(&shape, &w, &head, &refs, half);
        let flat: Vec<f32> = out.pooled.concat();
        let tol = match half {
            Half::F16 => 2e-2,
            Half::Bf16 => 1e-1,
        };
        assert_close(&format!("pooled ({})", half.name()), &flat, &pooled, tol);
        assert_close(
            &format!("head ({})", half.name()),
            &out.heads[0].concat(),
            &probs,
            tol / 4.0,
        );
        // A second, smaller batch on the same lanes gives the same rows.
        let again = enc.run(&refs[1..3]).unwrap();
        assert_close("rerun", &again.pooled.concat(), &out.pooled[1..3].concat(), 1e-6);
        // Bad input is an error naming the sequence.
        let too_long = vec![1u32; shape.max_tokens() + 1];
        let e = enc.run(&[&too_long]).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("sequence 0"), "{e}");
        let e = enc.run(&[&[5, 9999]]).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("vocabulary"), "{e}");
    }
}

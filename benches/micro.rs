//! criterion micro-benchmarks of the serving path's parts, on the shipped default bundle and
//! real messages: tokenizing, the encoder pass per batch × length in both precisions, the
//! heads on one vector, the batcher's own overhead (a round trip through its queue and thread
//! against calling the model directly on the same text), and the decision policy's scoring of
//! 20 candidates per exploration rule. The end-to-end figures are `load` and `decide`.
//!
//! ```text
//! cargo bench --bench micro                 # everything
//! cargo bench --bench micro -- encoder      # one group (criterion's filter)
//! ```
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use ndarray::Array1;
use nudge_inference::batcher::{Batcher, BatcherConfig};
use nudge_inference::metrics::Metrics;
use nudge_model::{BackendKind, NluModel, Precision};
use nudge_policy::{Exploration, FeatureSchema, Policy, RewardModel};
use rand::SeedableRng;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

const EN: &str = "I ordered a blender last week and it still hasn't shipped, can you check where it is?";
const ZH: &str = "我上周买的搅拌机还没发货，能帮我查一下物流到哪了吗？";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The default bundle (int8) and its f32 version, loaded once for every group.
fn models() -> &'static (Arc<NluModel>, Arc<NluModel>, tempfile::TempDir) {
    static MODELS: OnceLock<(Arc<NluModel>, Arc<NluModel>, tempfile::TempDir)> = OnceLock::new();
    MODELS.get_or_init(|| {
        let bundle = root().join("models/bundles/default");
        let int8 = NluModel::load(&bundle, BackendKind::Cpu).expect("the default bundle (run `nudge models fetch`)");
        let tmp = tempfile::tempdir().expect("a temporary directory");
        let f32_dir = tmp.path().join("f32");
        nudge_model::bundle::with_precision(&bundle, &f32_dir, Precision::F32, None).expect("an f32 version");
        let f32 = NluModel::load(&f32_dir, BackendKind::Cpu).expect("the f32 version");
        (Arc::new(int8), Arc::new(f32), tmp)
    })
}

/// Token ids of `n` real messages of exactly `len` tokens (longer ones cut, keeping the end
/// token), so a batch × length cell measures what its name says.
fn batch(model: &NluModel, n: usize, len: usize) -> Vec<Vec<u32>> {
    let body = std::fs::read_to_string(root().join("../shared/data/intent/en/banking77/val.jsonl"))
        .expect("../shared/data (Banking77 val)");
    body.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["text"].as_str().and_then(|t| model.tokenize(t).ok()).map(|t| t.ids))
        .filter(|ids| ids.len() >= len)
        .map(|mut ids| {
            let last = ids[ids.len() - 1];
            ids.truncate(len);
            ids[len - 1] = last;
            ids
        })
        .take(n)
        .collect()
}

fn tokenizer(c: &mut Criterion) {
    let (model, _, _) = models();
    let mut g = c.benchmark_group("tokenize");
    g.bench_function("en", |b| b.iter(|| model.tokenize(EN).expect("tokenizes")));
    g.bench_function("zh", |b| b.iter(|| model.tokenize(ZH).expect("tokenizes")));
    g.finish();
}

fn encoder(c: &mut Criterion) {
    let (int8, f32, _) = models();
    let mut g = c.benchmark_group("encoder");
    g.sample_size(10).measurement_time(Duration::from_secs(3));
    for (name, model) in [("int8", int8), ("f32", f32)] {
        for (n, len) in [(1, 16), (1, 32), (8, 16), (32, 16)] {
            let ids = batch(model, n, len);
            assert_eq!(ids.len(), n, "not enough messages of {len} tokens");
            let seqs: Vec<&[u32]> = ids.iter().map(|v| v.as_slice()).collect();
            g.bench_function(format!("{name}/{n}x{len}"), |b| {
                b.iter(|| model.embed(&seqs).expect("forward"))
            });
        }
    }
    g.finish();
}

fn heads(c: &mut Criterion) {
    let (model, _, _) = models();
    let ids = model.tokenize(EN).expect("tokenizes").ids;
    // The full per-text cost after the encoder: normalising, both heads, the intent verdict,
    // measured as `run` minus `embed` on the same text.
    let mut g = c.benchmark_group("heads");
    g.sample_size(20);
    g.bench_function("embed", |b| b.iter(|| model.embed(&[&ids]).expect("forward")));
    g.bench_function("run (embed + heads + verdict)", |b| {
        b.iter(|| model.run(&[&ids]).expect("forward"))
    });
    g.finish();
}

fn batcher(c: &mut Criterion) {
    let (model, _, _) = models();
    let batcher = Batcher::spawn(model.clone(), BatcherConfig::default(), Metrics::new()).expect("batcher thread");
    let ids = model.tokenize(ZH).expect("tokenizes").ids;
    let mut g = c.benchmark_group("batcher");
    g.sample_size(20);
    g.bench_function("model directly", |b| b.iter(|| model.run(&[&ids]).expect("forward")));
    g.bench_function("through the batcher", |b| {
        b.iter_batched(
            || vec![ids.clone()],
            |texts| {
                let rx = batcher.submit(texts).expect("queued");
                rx.into_iter()
                    .map(|r| r.blocking_recv().expect("answered").expect("computed"))
                    .collect::<Vec<_>>()
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn scoring(c: &mut Criterion) {
    let schema = FeatureSchema {
        context: ["seg=a", "seg=b", "channel=app", "intent_confidence"]
            .map(String::from)
            .to_vec(),
        offer: (0..20).map(|i| format!("offer={i}")).collect(),
        allow_none: true,
    };
    let dim = schema.dim();
    let mut model = RewardModel::prior(dim, 0.05);
    model.theta = Array1::from_iter((0..dim).map(|i| ((i * 37) % 11) as f64 / 100.0));
    let context = vec![1.0, 0.0, 1.0, 0.83];
    let offers: Vec<Vec<f64>> = (0..20)
        .map(|i| (0..20).map(|j| f64::from(u8::from(i == j))).collect())
        .collect();
    let xs = schema.options(&context, &offers);
    let mut g = c.benchmark_group("decide scoring, 20 candidates");
    for exploration in [
        Exploration::EpsilonGreedy { epsilon: 0.1 },
        Exploration::Thompson {
            scale: 1.0,
            samples: 256,
        },
        Exploration::LinUcb {
            alpha: 1.0,
            epsilon: 0.05,
        },
    ] {
        let policy = Policy {
            schema: schema.clone(),
            model: model.clone(),
            exploration: exploration.clone(),
            projection: None,
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        g.bench_function(exploration.name(), |b| {
            b.iter(|| policy.choose(&xs, &mut rng).expect("a choice"))
        });
    }
    g.finish();
}

criterion_group!(benches, tokenizer, encoder, heads, batcher, scoring);
criterion_main!(benches);

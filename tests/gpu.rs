//! The CUDA backend through its real interfaces: the GPU encoder against the CPU encoder on
//! real customer messages (the default bundle, e5-small, Chinese and English), and
//! `nudge serve --device cuda:0` as a process answering over gRPC and saying which device
//! served. On a machine without a GPU the GPU tests say they were skipped (set
//! `NUDGE_REQUIRE_GPU=1` to make that a failure), and the last test checks that asking for a
//! GPU there is refused at start-up with an error naming the device.
//!
//! `NUDGE_GPU_BUNDLE` picks another bundle, `NUDGE_BIN` another `nudge` binary (the GPU
//! machine runs binaries built here, from another directory).
use crate::support::{nudge_bin, start_nudge};
use nudge_model::{BackendKind, NluModel, Precision};
use nudge_proto::v1::model_admin_client::ModelAdminClient;
use nudge_proto::v1::{
    nlu_client::NluClient, ListModelsRequest, ReloadModelRequest, UnderstandBatchRequest, UnderstandRequest,
};
use std::path::PathBuf;
use std::process::Command;

fn repo_path(rel: &str) -> PathBuf {
    let here = PathBuf::from(rel);
    if here.exists() {
        here
    } else {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
    }
}

fn bundle() -> PathBuf {
    std::env::var("NUDGE_GPU_BUNDLE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_path("models/bundles/default"))
}

/// The GPU, or a message saying why the test is skipped.
fn have_gpu() -> bool {
    match nudge_kernels::Gpu::open(0) {
        Ok(_) => true,
        Err(e) => {
            assert!(
                std::env::var("NUDGE_REQUIRE_GPU").as_deref() != Ok("1"),
                "NUDGE_REQUIRE_GPU=1 but: {e}"
            );
            eprintln!("skipped: no usable GPU here ({e})");
            false
        }
    }
}

/// The evaluation messages of the default intents, Chinese and English (340).
fn texts() -> Vec<String> {
    let mut out = Vec::new();
    for f in [
        "models/data/cs_intent/eval_zh.jsonl",
        "models/data/cs_intent/eval_en.jsonl",
    ] {
        let body = std::fs::read_to_string(repo_path(f)).unwrap();
        for line in body.lines().filter(|l| !l.trim().is_empty()) {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            out.push(v["text"].as_str().unwrap().to_string());
        }
    }
    out
}

fn argmax(p: &[f32]) -> usize {
    p.iter().enumerate().fold(0, |b, (i, v)| if *v > p[b] { i } else { b })
}

#[test]
fn the_gpu_encoder_matches_the_cpu_encoder_on_real_messages() {
    let _suite = nudge_testkit::suite::enter(module_path!());
    if !have_gpu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let f32_bundle = dir.path().join("f32");
    nudge_model::bundle::with_precision(&bundle(), &f32_bundle, Precision::F32, None).unwrap();
    let cpu = NluModel::load(&f32_bundle, BackendKind::Cpu).unwrap();
    let texts = texts();
    let ids: Vec<Vec<u32>> = texts.iter().map(|t| cpu.tokenize(t).unwrap().ids).collect();
    let seqs: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
    let want = cpu.run(&seqs).unwrap();
    for (bf16, tol) in [(false, 5e-3f32), (true, 3e-2)] {
        let gpu = NluModel::load(&bundle(), BackendKind::Cuda { ordinal: 0, bf16 }).unwrap();
        assert_eq!(gpu.device(), "cuda:0");
        // One batch of all messages, and again in batches of 7: the same numbers either way.
        let got = gpu.run(&seqs).unwrap();
        let small: Vec<_> = seqs.chunks(7).flat_map(|c| gpu.run(c).unwrap()).collect();
        let (mut max_diff, mut min_cos, mut same, mut near_ties) = (0f32, 1f32, 0, 0);
        for ((g, s), c) in got.iter().zip(&small).zip(&want) {
            for (a, b) in g.embedding.iter().zip(&s.embedding) {
                assert!(
                    (a - b).abs() < 1e-3,
                    "batch composition changed an embedding: {a} vs {b}"
                );
            }
            let d = g
                .embedding
                .iter()
                .zip(&c.embedding)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            max_diff = max_diff.max(d);
            min_cos = min_cos.min(g.embedding.iter().zip(&c.embedding).map(|(a, b)| a * b).sum());
            let (gi, ci) = (g.intent.as_ref().unwrap(), c.intent.as_ref().unwrap());
            if argmax(gi) == argmax(ci) {
                same += 1;
            } else {
                // Only where the CPU itself barely separates its two best labels.
                let mut sorted = ci.clone();
                sorted.sort_by(|a, b| b.total_cmp(a));
                assert!(
                    sorted[0] - sorted[1] < 0.02,
                    "label differs with a clear CPU margin: {ci:?} vs {gi:?}"
                );
                near_ties += 1;
            }
        }
        println!(
            "GPU ({}) vs CPU f32 on {} messages: max |Δ| of normalised embeddings {max_diff:.2e}, min cosine {min_cos:.6}, same intent {same}/{} ({near_ties} near-ties differ)",
            gpu.backend_name(),
            texts.len(),
            texts.len()
        );
        assert!(max_diff < tol, "max |Δ| {max_diff} over {tol}");
        assert!(min_cos > 0.999, "min cosine {min_cos}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_device_cuda_answers_and_says_which_device_served() {
    let _suite = nudge_testkit::suite::enter(module_path!());
    if !have_gpu() {
        return;
    }
    let b = bundle().canonicalize().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("nudge.toml");
    // Ports of the system's choosing; the admin door reloads only bundles under the models root.
    let toml = format!(
        "grpc_addr = \"127.0.0.1:0\"\nadmin_addr = \"127.0.0.1:0\"\nmetrics_addr = \"127.0.0.1:0\"\nmodels_root = {:?}\n",
        b.parent().unwrap().display().to_string()
    );
    std::fs::write(&config, toml).unwrap();
    let (_server, addrs) = start_nudge(
        &["serve", "--device", "cuda:0", "--bundle", b.to_str().unwrap()],
        &config,
    );
    let mut c = NluClient::connect(addrs["grpc"].clone()).await.unwrap();
    let models = c
        .list_models(ListModelsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .models;
    assert_eq!(
        (models[0].device.as_str(), models[0].backend.as_str()),
        ("cuda:0", "cuda-f16")
    );

    let cpu = NluModel::load(&b, BackendKind::Cpu).unwrap();
    let labels = cpu.intent_spec().unwrap().labels.clone();
    for text in [
        "这单有没有能用的优惠券？",
        "My parcel still hasn't arrived, where is it?",
    ] {
        let r = c
            .understand(UnderstandRequest {
                text: text.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.timing.as_ref().unwrap().device, "cuda:0");
        let ids = cpu.tokenize(text).unwrap().ids;
        let want = &labels[argmax(cpu.run(&[&ids]).unwrap()[0].intent.as_ref().unwrap())];
        let result = r.result.unwrap();
        let intent = result.intent.unwrap();
        assert!(
            intent.label == *want || intent.out_of_scope,
            "{text}: GPU {} vs CPU {want}",
            intent.label
        );
    }
    // Many concurrent batches, with a hot reload of the model on the GPU in the middle:
    // everything answered, on the GPU.
    let texts = texts();
    let mut calls = spawn_batches(&c, &texts);
    let mut admin = ModelAdminClient::connect(addrs["admin"].clone()).await.unwrap();
    let reloaded = admin
        .reload_model(ReloadModelRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reloaded.version, reloaded.previous_version);
    calls.extend(spawn_batches(&c, &texts));
    let mut answered = 0;
    for call in calls {
        let r = call.await.unwrap().unwrap().into_inner();
        answered += r.results.len();
    }
    assert_eq!(answered, 2 * texts.len());
    let metrics = addrs["metrics"].trim_start_matches("http://").parse().unwrap();
    let body = nudge_testkit::scrape(metrics).await;
    let gpu_batches = nudge_testkit::metric(
        &body,
        "nudge_encoder_batches_total{device=\"cuda:0\",model=\"default\"}",
    );
    assert!(
        gpu_batches.is_some_and(|n| n >= 2.0),
        "GPU batches in /metrics: {gpu_batches:?}"
    );
}

/// `UnderstandBatch` calls of 20 texts each, all in flight at once.
fn spawn_batches(
    c: &NluClient<tonic::transport::Channel>,
    texts: &[String],
) -> Vec<tokio::task::JoinHandle<Result<tonic::Response<nudge_proto::v1::UnderstandBatchResponse>, tonic::Status>>> {
    texts
        .chunks(20)
        .map(|chunk| {
            let mut c = c.clone();
            let req = UnderstandBatchRequest {
                texts: chunk.to_vec(),
                ..Default::default()
            };
            tokio::spawn(async move { c.understand_batch(req).await })
        })
        .collect()
}

#[test]
fn asking_for_a_gpu_the_machine_lacks_is_refused_with_a_clear_error() {
    let _suite = nudge_testkit::suite::enter(module_path!());
    // A device name that is not one is refused by the flag parser.
    let out = Command::new(nudge_bin())
        .args(["serve", "--device", "gpu0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("unknown device `gpu0`"), "{err}");
    if nudge_kernels::driver_available() {
        eprintln!("skipped the no-GPU half: this machine has a CUDA driver");
        return;
    }
    let out = Command::new(nudge_bin())
        .args(["serve", "--device", "cuda:0", "--bundle"])
        .arg(bundle())
        .args([
            "--grpc-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "serve started without a GPU: {err}");
    assert!(err.contains("cuda:0") && err.contains("no CUDA driver"), "{err}");
}

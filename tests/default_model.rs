//! The shipped bundles over gRPC: the default (multilingual-e5-small + the committed heads) gives
//! Chinese and English messages of the default intents the right intent and reviews the right
//! sentiment; the fast English one (all-MiniLM-L6-v2) does the same for the English messages.
//! The default also keeps its intent and sentiment figures on data sets of ../shared/data mapped
//! onto its labels.
//! Needs the encoders: `cargo run --release -- models fetch` (CI runs it first).
use crate::common::*;
use nudge_proto::v1::{UnderstandBatchRequest, UnderstandRequest};
use std::path::{Path, PathBuf};

fn shipped_bundle(name: &str) -> PathBuf {
    let b = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("models/bundles")
        .join(name);
    assert!(
        b.join("encoder/model.safetensors").exists(),
        "the {name} bundle's encoder is missing: run `cargo run --release -- models fetch` first"
    );
    b
}

fn default_bundle() -> PathBuf {
    shipped_bundle("default")
}

/// Which of the test messages a bundle is for.
#[derive(Clone, Copy, PartialEq)]
enum Languages {
    ZhEn,
    En,
}

impl Languages {
    fn takes(self, text: &str) -> bool {
        self == Languages::ZhEn || text.is_ascii()
    }
}

/// Messages written for this test (not in the training or eval files).
const CASES: &[(&str, &str)] = &[
    ("Does this rice cooker have a keep-warm function?", "presales_question"),
    ("这款电饭煲有保温功能吗？", "presales_question"),
    ("How much are the noise cancelling headphones?", "price"),
    ("降噪耳机卖多少钱？", "price"),
    ("Is there any coupon I can use for this order?", "promotion_coupon"),
    ("这单有没有能用的优惠券？", "promotion_coupon"),
    ("Which vacuum would you recommend for pet hair?", "recommendation"),
    ("家里有猫，推荐哪款吸尘器？", "recommendation"),
    ("My parcel still hasn't arrived, where is it?", "order_status"),
    ("我的包裹怎么还没到，到哪了？", "order_status"),
    ("Do you ship to Singapore?", "delivery"),
    ("可以寄到新加坡吗？", "delivery"),
    (
        "These boots are too small, I want to exchange them for a bigger size",
        "return_exchange",
    ),
    ("靴子小了，想换大一码", "return_exchange"),
    ("I returned it last week, when do I get my money back?", "refund"),
    ("上周退货了，钱什么时候退给我？", "refund"),
    (
        "My tablet won't turn on, can you repair it under warranty?",
        "warranty_repair",
    ),
    ("平板开不了机，保修能修吗？", "warranty_repair"),
    ("Your courier was rude and threw my box, I'm really angry", "complaint"),
    ("你们快递员态度恶劣还乱扔包裹，我很生气", "complaint"),
    ("Can you issue a company invoice for this purchase?", "invoice"),
    ("这单能开公司抬头的发票吗？", "invoice"),
    ("My card payment keeps failing at checkout", "payment"),
    ("结账时银行卡一直付款失败", "payment"),
    ("Please cancel my order, I don't need it anymore", "cancel_order"),
    ("帮我把订单取消了，不想要了", "cancel_order"),
    ("I want to talk to a real human agent", "human_agent"),
    ("我要转人工客服", "human_agent"),
    ("Hi there, good morning", "greeting"),
    ("你好，早上好", "greeting"),
    ("Thanks a lot, bye!", "thanks_bye"),
    ("非常感谢，再见！", "thanks_bye"),
];

const REVIEWS: &[(&str, &str)] = &[
    (
        "The blender broke after two days and the customer service ignored me. Terrible.",
        "negative",
    ),
    ("用了两天就坏了，客服也不理人，太差了，不推荐", "negative"),
    ("Absolutely love it, great quality and fast delivery!", "positive"),
    ("质量很好，物流也快，非常满意，会回购", "positive"),
    // Plain service questions are neutral, not negative (the head has a neutral class).
    ("How do I print a return label?", "neutral"),
    ("Can I change my delivery address?", "neutral"),
    ("发票怎么开？", "neutral"),
];

/// Questions for a general assistant, not a shop (written for this test).
const OUT_OF_SCOPE: &[&str] = &[
    "What's the capital of Peru?",
    "Will it rain in Shanghai tomorrow?",
    "Set an alarm for 7 am please",
    "Who wrote Pride and Prejudice?",
    "How many calories are in a banana?",
    "Play some jazz music",
    "Translate good night into French",
    "How do I change a flat tire on my car?",
    "秘鲁的首都是哪里？",
    "明天上海会下雨吗？",
    "帮我定一个早上七点的闹钟",
    "放一首周杰伦的歌",
    "地球到月球有多远？",
    "怎么给汽车换轮胎？",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_intents_and_sentiment_in_chinese_and_english() {
    let _suite = nudge_testkit::suite::enter(module_path!());
    // The shipped default runs its encoder in int8 (heads fitted on int8 embeddings).
    answers_default_cases(default_bundle(), "cpu-int8", Languages::ZhEn).await;
}

/// The fast English bundle (all-MiniLM-L6-v2, int8) answers the English cases right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_english_bundle_answers_the_english_cases() {
    let _suite = nudge_testkit::suite::enter(module_path!());
    answers_default_cases(shipped_bundle("minilm-en"), "cpu-int8", Languages::En).await;
}

/// `nudge models quantize --precision f32` writes the default bundle as an f32 version (a real
/// process); the server serves it, says so, and answers the same cases right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_f32_version_of_the_default_bundle_answers_the_same_cases() {
    let _suite = nudge_testkit::suite::enter(module_path!());
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("default-f32");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_nudge"))
        .args(["models", "quantize", "--precision", "f32", "--bundle"])
        .arg(default_bundle())
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let m = nudge_model::Manifest::read(&out).unwrap();
    assert_eq!(m.encoder.precision, nudge_model::Precision::F32);
    assert!(m.version.ends_with("-f32"), "{}", m.version);
    // Converting twice to the same precision is refused, naming the field.
    let again = std::process::Command::new(env!("CARGO_BIN_EXE_nudge"))
        .args(["models", "quantize", "--precision", "f32", "--bundle"])
        .arg(&out)
        .arg("--out")
        .arg(tmp.path().join("again"))
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("encoder.precision is f32 already"));
    answers_default_cases(out, "cpu-f32", Languages::ZhEn).await;
}

/// On real customer messages (SMP2019 and Banking77 val), the int8 encoder's sentence vectors
/// stay close to f32's and the default head picks the same intent for nearly all of them.
#[test]
fn int8_embeddings_stay_close_to_f32_on_real_messages() {
    let _suite = nudge_testkit::suite::enter(module_path!());
    use nudge_model::{BackendKind, NluModel};
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("f");
    nudge_model::bundle::with_precision(&default_bundle(), &f, nudge_model::Precision::F32, None).unwrap();
    let f32_model = NluModel::load(&f, BackendKind::Cpu).unwrap();
    let int8_model = NluModel::load(&default_bundle(), BackendKind::Cpu).unwrap();
    assert_eq!(
        (f32_model.backend_name(), int8_model.backend_name()),
        ("cpu-f32", "cpu-int8")
    );
    let shared = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/intent");
    let mut texts = Vec::new();
    for f in ["zh/smp2019/val.jsonl", "en/banking77/val.jsonl"] {
        let body = std::fs::read_to_string(shared.join(f)).unwrap();
        texts.extend(body.lines().take(200).map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_string()
        }));
    }
    let ids: Vec<Vec<u32>> = texts.iter().map(|t| f32_model.tokenize(t).unwrap().ids).collect();
    let seqs: Vec<&[u32]> = ids.iter().map(|v| v.as_slice()).collect();
    let (mut worst, mut sum, mut same) = (1f32, 0f32, 0usize);
    for chunk in seqs.chunks(32) {
        let a = f32_model.run(chunk).unwrap();
        let b = int8_model.run(chunk).unwrap();
        for (x, y) in a.iter().zip(&b) {
            let cos: f32 = x.embedding.iter().zip(&y.embedding).map(|(p, q)| p * q).sum();
            worst = worst.min(cos);
            sum += cos;
            let top = |v: &[f32]| v.iter().enumerate().max_by(|p, q| p.1.total_cmp(q.1)).map(|p| p.0);
            same += usize::from(top(x.intent.as_ref().unwrap()) == top(y.intent.as_ref().unwrap()));
        }
    }
    let n = texts.len() as f32;
    eprintln!(
        "int8 vs f32 on {} texts: mean cosine {:.5}, worst {:.5}, same top intent {same}",
        texts.len(),
        sum / n,
        worst
    );
    assert!(sum / n > 0.9995 && worst > 0.999, "mean {} worst {worst}", sum / n);
    assert!(same as f32 >= 0.97 * n, "{same} of {n}");
}

/// `Understand` on one text: its intent, after checking which model answered.
async fn intent_of(
    c: &mut nudge_proto::v1::nlu_client::NluClient<tonic::transport::Channel>,
    text: &str,
    model: &str,
) -> nudge_proto::v1::Intent {
    let r = c
        .understand(UnderstandRequest {
            text: text.to_string(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.model, model);
    r.result.unwrap().intent.unwrap()
}

async fn answers_default_cases(bundle: PathBuf, backend: &str, languages: Languages) {
    let name = nudge_model::Manifest::read(&bundle).unwrap().name;
    let server = start_server(vec![bundle], |_| {}).await;
    let mut c = client(server.grpc_addr).await;
    let models = c
        .list_models(nudge_proto::v1::ListModelsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .models;
    assert_eq!(models[0].backend, backend);
    let mut wrong = Vec::new();
    let cases: Vec<_> = CASES.iter().filter(|(t, _)| languages.takes(t)).collect();
    for (text, want) in &cases {
        let i = intent_of(&mut c, text, &name).await;
        if i.top_k.first().map(|t| t.label.as_str()) != Some(*want) {
            wrong.push(format!(
                "{text:?}: want {want}, got {:?}",
                i.top_k.iter().map(|t| (&t.label, t.score)).collect::<Vec<_>>()
            ));
        }
    }
    // A frozen-encoder linear head is good, not perfect: at most 1 in 16 may miss (today the
    // default misses 1 of 32: "noise cancelling headphones" reads as a product question).
    eprintln!(
        "{name}: {} of {} default-intent cases wrong:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
    assert!(
        wrong.len() * 16 <= cases.len(),
        "{} of {} wrong:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );

    let reviews: Vec<_> = REVIEWS.iter().filter(|(t, _)| languages.takes(t)).collect();
    let texts = reviews.iter().map(|(t, _)| t.to_string()).collect();
    let r = c
        .understand_batch(UnderstandBatchRequest {
            texts,
            include_embedding: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.results.len(), reviews.len());
    for ((text, want), u) in reviews.iter().zip(&r.results) {
        let s = u.sentiment.as_ref().unwrap();
        assert_eq!(&s.label, want, "{text:?}: {:?}", s.scores);
        assert_eq!(u.embedding.len(), 384);
        let norm: f32 = u.embedding.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-3);
    }

    // Questions no customer-service intent covers fall under the threshold (or win as `oos`):
    // at least 3 in 4 of them (today the default misses 1 English one of 14, MiniLM 1 of 8).
    let mut kept = Vec::new();
    let oos: Vec<_> = OUT_OF_SCOPE.iter().filter(|t| languages.takes(t)).collect();
    for text in &oos {
        let i = intent_of(&mut c, text, &name).await;
        if i.out_of_scope {
            assert_eq!(i.label, "oos", "{text:?}");
        } else {
            kept.push(format!("{text:?}: {} {:.3}", i.label, i.confidence));
        }
    }
    eprintln!(
        "{name}: {} of {} out-of-scope questions kept in scope:\n{}",
        kept.len(),
        oos.len(),
        kept.join("\n")
    );
    assert!(kept.len() * 4 <= oos.len(), "{}", kept.join("\n"));
    server.shutdown().await.unwrap();
}

/// `nudge eval` on the independent intent eval files reproduces the figures `nudge train`
/// recorded in the manifest of each shipped bundle (one rule for out of scope, in the server and
/// in both tools).
#[test]
fn eval_reproduces_the_figures_recorded_at_training() {
    let _suite = nudge_testkit::suite::enter(module_path!());
    for (bundle, files) in [(default_bundle(), 2), (shipped_bundle("minilm-en"), 1)] {
        eval_reproduces_recorded_figures(bundle, files);
    }
}

/// `nudge eval --json` of `bundle`'s head for `task` (`intent` or `sentiment`) on `data`.
fn eval_json(bundle: &Path, task: &str, data: &Path) -> serde_json::Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nudge"))
        .args(["eval", "--json", "--task", task, "--bundle"])
        .arg(bundle)
        .arg("--data")
        .arg(data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{data:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn eval_reproduces_recorded_figures(bundle: PathBuf, files: usize) {
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("manifest.json")).unwrap()).unwrap();
    let recorded = manifest["metrics"]["intent"]["val"].as_array().unwrap().clone();
    assert_eq!(recorded.len(), files);
    for r in recorded {
        let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(r["file"].as_str().unwrap());
        let f = eval_json(&bundle, "intent", &data);
        let close =
            |a: &serde_json::Value, b: &serde_json::Value| (a.as_f64().unwrap() - b.as_f64().unwrap()).abs() < 1e-9;
        assert!(
            close(&f["oos"]["in_scope_accuracy"], &r["in_scope_accuracy"]),
            "{data:?}: {} vs {}",
            f["oos"],
            r
        );
        assert!(
            close(&f["oos"]["recall"], &r["oos_recall"]),
            "{data:?}: {} vs {}",
            f["oos"],
            r
        );
        assert!(
            f["oos"]["in_scope_accuracy"].as_f64().unwrap() >= 0.9,
            "{data:?}: in-scope accuracy fell under 90%"
        );
    }
}

/// The default bundle on text nobody here wrote (`models/data/mapped/make.py` maps val splits of
/// ../shared/data onto its labels) keeps the figures the README reports, a few points of margin
/// under them. Intent: Bitext's service requests stay in scope and with the right intent, and
/// requests a shop's bot does not serve (CLINC150, SMP2019, CAIS) are called out of scope;
/// 2026.11.30-2 fails every one of the first three (89.4 %, 90.0 %, 90.6 %). Sentiment: plain
/// requests (Bitext, SMP2019) are neutral, and angry helpdesk posts (STC-3) stay negative;
/// 2026.12.01-1 fails the requests (85.3 %, 32.0 %: its guardrails held back offers from half the
/// Chinese customers asking a plain question), the STC-3 accuracies (67.5 %, 65.0 %), the
/// hand-written eval (90.0 %) and EWECT (59.9 %). A rebuild that loses what these sets measure
/// fails here, not in a customer's chat.
#[test]
fn the_default_bundle_keeps_its_figures_on_mapped_shared_data() {
    let _suite = nudge_testkit::suite::enter(module_path!());
    let tmp = tempfile::tempdir().unwrap();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let made = std::process::Command::new("python3")
        .arg(root.join("models/data/mapped/make.py"))
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let mapped = |file: &str| tmp.path().join(file);
    let cs_sentiment = root.join("models/data/cs_sentiment/eval.jsonl");
    // One `nudge eval` a file; each (measure, floor) reads `accuracy` or one label's recall.
    // What `accuracy` means follows the file: in-scope accuracy after the verdict on Bitext,
    // out-of-scope recall on the `oos` sets, "called neutral" on the request sets.
    let mut failed = Vec::new();
    for (task, data, floors) in [
        ("intent", mapped("bitext_en_val.jsonl"), &[("accuracy", 0.97)][..]),
        ("intent", mapped("clinc_oos_en.jsonl"), &[("accuracy", 0.95)]),
        ("intent", mapped("smp2019_oos_zh.jsonl"), &[("accuracy", 0.95)]),
        ("intent", mapped("cais_oos_zh.jsonl"), &[("accuracy", 0.97)]),
        ("sentiment", mapped("requests_en_val.jsonl"), &[("accuracy", 0.96)]),
        ("sentiment", mapped("requests_zh_val.jsonl"), &[("accuracy", 0.90)]),
        (
            "sentiment",
            mapped("stc3_en.jsonl"),
            &[("accuracy", 0.72), ("negative", 0.75)],
        ),
        (
            "sentiment",
            mapped("stc3_zh.jsonl"),
            &[("accuracy", 0.67), ("negative", 0.85)],
        ),
        ("sentiment", mapped("ewect_val.jsonl"), &[("accuracy", 0.75)]),
        ("sentiment", cs_sentiment, &[("accuracy", 0.93), ("negative", 0.85)]),
    ] {
        let f = eval_json(&default_bundle(), task, &data);
        let name = data.file_name().unwrap().to_string_lossy();
        for &(measure, floor) in floors {
            let (what, got) = if measure == "accuracy" {
                ("accuracy".to_string(), f["accuracy"].as_f64().unwrap())
            } else {
                let label = f["labels"].as_array().unwrap().iter().find(|l| l["label"] == measure);
                let label = label.unwrap_or_else(|| panic!("{data:?}: no `{measure}` row in {}", f["labels"]));
                (format!("{measure} recall"), label["recall"].as_f64().unwrap())
            };
            eprintln!("{task} {name}: {what} {:.1} % of {}", 100.0 * got, f["examples"]);
            if got < floor {
                failed.push(format!(
                    "{task} {name}: {what} {:.1} % < {:.0} %; confusions {}",
                    100.0 * got,
                    100.0 * floor,
                    f["top_confusions"]
                ));
            }
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

//! Test support shared by the crates' tests: a tiny random-weight BERT (or XLM-R-style) encoder
//! and bundle in Hugging Face layout, written by the test itself, a plain-Rust reference forward
//! pass to check the backends against, and a Prometheus scrape helper. Never a dependency of
//! anything but tests and benches.
#![allow(missing_docs, clippy::unwrap_used)]
use nudge_model::bundle::{ClassifierSpec, EncoderSpec, HeadsSpec, IntentSpec, Manifest, FORMAT};
use nudge_model::Pooling;
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const WORDS: &[&str] = &[
    "where", "is", "my", "order", "refund", "please", "hello", "thanks", "the", "a", "coupon", "price", "how", "much",
    "cancel", "it", "return", "shoes", "blue", "red", "delivery", "today", "bad", "good", "service", "human", "agent",
    "invoice", "pay", "card",
];
pub const SPECIALS: &[&str] = &["[PAD]", "[UNK]", "[CLS]", "[SEP]"];

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Variant {
    Bert,
    XlmR,
}

pub struct Tiny {
    pub hidden: usize,
    pub heads: usize,
    pub layers: usize,
    pub ffn: usize,
    pub vocab: usize,
    pub max_pos: usize,
    pub type_vocab: usize,
    pub variant: Variant,
    pub tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
}

impl Tiny {
    pub fn new(variant: Variant, seed: u64) -> Self {
        let mut t = Tiny {
            hidden: 16,
            heads: 2,
            layers: 2,
            ffn: 32,
            vocab: SPECIALS.len() + WORDS.len(),
            max_pos: if variant == Variant::Bert { 48 } else { 49 },
            type_vocab: if variant == Variant::Bert { 2 } else { 0 },
            variant,
            tensors: BTreeMap::new(),
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut put = |name: String, shape: Vec<usize>, base: f32, scale: f32| {
            let n = shape.iter().product();
            let v = (0..n)
                .map(|_| base + scale * (rng.random::<f32>() * 2.0 - 1.0))
                .collect();
            t.tensors.insert(name, (shape, v));
        };
        let (h, f) = (16, 32);
        put("embeddings.word_embeddings.weight".into(), vec![t.vocab, h], 0.0, 1.0);
        put(
            "embeddings.position_embeddings.weight".into(),
            vec![t.max_pos, h],
            0.0,
            0.5,
        );
        if t.type_vocab > 0 {
            put(
                "embeddings.token_type_embeddings.weight".into(),
                vec![t.type_vocab, h],
                0.0,
                0.5,
            );
        }
        put("embeddings.LayerNorm.weight".into(), vec![h], 1.0, 0.2);
        put("embeddings.LayerNorm.bias".into(), vec![h], 0.0, 0.2);
        for l in 0..t.layers {
            let p = format!("encoder.layer.{l}");
            for (n, o, i) in [
                ("attention.self.query", h, h),
                ("attention.self.key", h, h),
                ("attention.self.value", h, h),
                ("attention.output.dense", h, h),
                ("intermediate.dense", f, h),
                ("output.dense", h, f),
            ] {
                put(format!("{p}.{n}.weight"), vec![o, i], 0.0, 0.4);
                put(format!("{p}.{n}.bias"), vec![o], 0.0, 0.1);
            }
            for n in ["attention.output.LayerNorm", "output.LayerNorm"] {
                put(format!("{p}.{n}.weight"), vec![h], 1.0, 0.2);
                put(format!("{p}.{n}.bias"), vec![h], 0.0, 0.2);
            }
        }
        t
    }

    pub fn config(&self) -> serde_json::Value {
        json!({
            "model_type": if self.variant == Variant::Bert { "bert" } else { "xlm-roberta" },
            "vocab_size": self.vocab, "hidden_size": self.hidden, "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads, "intermediate_size": self.ffn, "hidden_act": "gelu",
            "max_position_embeddings": self.max_pos, "type_vocab_size": self.type_vocab,
            "layer_norm_eps": 1e-12, "pad_token_id": 0
        })
    }

    pub fn write_encoder(&self, dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(
            dir.join("config.json"),
            serde_json::to_vec_pretty(&self.config()).unwrap(),
        )
        .unwrap();
        std::fs::write(
            dir.join("tokenizer.json"),
            serde_json::to_vec(&tokenizer_json()).unwrap(),
        )
        .unwrap();
        write_safetensors(&dir.join("model.safetensors"), &self.tensors);
    }

    fn t(&self, name: &str) -> &[f32] {
        &self.tensors[name].1
    }

    /// Straightforward f64 forward pass of one unpadded sequence, then pooling.
    #[allow(clippy::needless_range_loop)] // index loops mirror the formulas they check
    pub fn reference(&self, ids: &[u32], pooling: Pooling) -> Vec<f32> {
        let (h, nh) = (self.hidden, self.heads);
        let hd = h / nh;
        let l = ids.len();
        let offset = if self.variant == Variant::Bert { 0 } else { 1 };
        let mut x = vec![vec![0f64; h]; l];
        for (i, &id) in ids.iter().enumerate() {
            for d in 0..h {
                let mut v = self.t("embeddings.word_embeddings.weight")[id as usize * h + d] as f64
                    + self.t("embeddings.position_embeddings.weight")[(i + offset) * h + d] as f64;
                if self.type_vocab > 0 {
                    v += self.t("embeddings.token_type_embeddings.weight")[d] as f64;
                }
                x[i][d] = v;
            }
        }
        let ln = |x: &mut Vec<Vec<f64>>, w: &[f32], b: &[f32]| {
            for row in x.iter_mut() {
                let mean = row.iter().sum::<f64>() / h as f64;
                let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / h as f64;
                for d in 0..h {
                    row[d] = (row[d] - mean) / (var + 1e-12).sqrt() * w[d] as f64 + b[d] as f64;
                }
            }
        };
        let lin = |x: &Vec<Vec<f64>>, w: &[f32], b: &[f32], out: usize| -> Vec<Vec<f64>> {
            x.iter()
                .map(|row| {
                    (0..out)
                        .map(|o| {
                            b[o] as f64
                                + row
                                    .iter()
                                    .enumerate()
                                    .map(|(i, v)| v * w[o * row.len() + i] as f64)
                                    .sum::<f64>()
                        })
                        .collect()
                })
                .collect()
        };
        ln(
            &mut x,
            self.t("embeddings.LayerNorm.weight"),
            self.t("embeddings.LayerNorm.bias"),
        );
        for layer in 0..self.layers {
            let p = |n: &str| format!("encoder.layer.{layer}.{n}");
            let q = lin(
                &x,
                self.t(&p("attention.self.query.weight")),
                self.t(&p("attention.self.query.bias")),
                h,
            );
            let k = lin(
                &x,
                self.t(&p("attention.self.key.weight")),
                self.t(&p("attention.self.key.bias")),
                h,
            );
            let v = lin(
                &x,
                self.t(&p("attention.self.value.weight")),
                self.t(&p("attention.self.value.bias")),
                h,
            );
            let mut ctx = vec![vec![0f64; h]; l];
            for head in 0..nh {
                for i in 0..l {
                    let scores: Vec<f64> = (0..l)
                        .map(|j| {
                            (0..hd).map(|e| q[i][head * hd + e] * k[j][head * hd + e]).sum::<f64>() / (hd as f64).sqrt()
                        })
                        .collect();
                    let m = scores.iter().cloned().fold(f64::MIN, f64::max);
                    let ex: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                    let z: f64 = ex.iter().sum();
                    for j in 0..l {
                        for e in 0..hd {
                            ctx[i][head * hd + e] += ex[j] / z * v[j][head * hd + e];
                        }
                    }
                }
            }
            let a = lin(
                &ctx,
                self.t(&p("attention.output.dense.weight")),
                self.t(&p("attention.output.dense.bias")),
                h,
            );
            for i in 0..l {
                for d in 0..h {
                    x[i][d] += a[i][d];
                }
            }
            ln(
                &mut x,
                self.t(&p("attention.output.LayerNorm.weight")),
                self.t(&p("attention.output.LayerNorm.bias")),
            );
            let mut inner = lin(
                &x,
                self.t(&p("intermediate.dense.weight")),
                self.t(&p("intermediate.dense.bias")),
                self.ffn,
            );
            inner
                .iter_mut()
                .flatten()
                .for_each(|v| *v = 0.5 * *v * (1.0 + erf(*v / 2f64.sqrt())));
            let o = lin(
                &inner,
                self.t(&p("output.dense.weight")),
                self.t(&p("output.dense.bias")),
                h,
            );
            for i in 0..l {
                for d in 0..h {
                    x[i][d] += o[i][d];
                }
            }
            ln(
                &mut x,
                self.t(&p("output.LayerNorm.weight")),
                self.t(&p("output.LayerNorm.bias")),
            );
        }
        match pooling {
            Pooling::Cls => x[0].iter().map(|v| *v as f32).collect(),
            Pooling::Mean => (0..h)
                .map(|d| (x.iter().map(|r| r[d]).sum::<f64>() / l as f64) as f32)
                .collect(),
        }
    }
}

/// erf to ~1e-7 (Abramowitz & Stegun 7.1.26 is 1.5e-7; this uses the W. J. Cody-style series
/// for small |x| and the A&S form elsewhere), ample for 1e-4 comparisons.
pub fn erf(x: f64) -> f64 {
    if x.abs() < 0.5 {
        // Maclaurin series
        let mut sum = x;
        let mut term = x;
        let x2 = x * x;
        for n in 1..30 {
            term *= -x2 / n as f64;
            sum += term / (2 * n + 1) as f64;
        }
        return sum * 2.0 / std::f64::consts::PI.sqrt();
    }
    let t = 1.0 / (1.0 + 0.3275911 * x.abs());
    let y = 1.0
        - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592)
            * t
            * (-x * x).exp();
    if x >= 0.0 {
        y
    } else {
        -y
    }
}

pub fn tokenizer_json() -> serde_json::Value {
    let mut vocab = serde_json::Map::new();
    for (i, w) in SPECIALS.iter().chain(WORDS.iter()).enumerate() {
        vocab.insert(w.to_string(), json!(i));
    }
    let special = |id: usize, c: &str| json!({"id": id, "content": c, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true});
    json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [special(0, "[PAD]"), special(1, "[UNK]"), special(2, "[CLS]"), special(3, "[SEP]")],
        "normalizer": {"type": "Lowercase"},
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "[SEP]", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}, {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
            "special_tokens": {
                "[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]},
                "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}
            }
        },
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}
    })
}

pub fn write_safetensors(path: &Path, tensors: &BTreeMap<String, (Vec<usize>, Vec<f32>)>) {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(k, (s, v))| (k.clone(), s.clone(), v.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
        .iter()
        .map(|(k, s, b)| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap(),
            )
        })
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

pub const INTENTS: &[&str] = &["order_status", "refund", "greeting"];
pub const SENTIMENTS: &[&str] = &["negative", "positive"];

/// Random intent and sentiment heads over `hidden`-wide vectors, seeded.
pub fn write_heads(path: &Path, hidden: usize, seed: u64) {
    let mut heads = BTreeMap::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for (n, labels) in [("intent", INTENTS.len()), ("sentiment", SENTIMENTS.len())] {
        heads.insert(
            format!("{n}.weight"),
            (
                vec![labels, hidden],
                (0..labels * hidden).map(|_| rng.random::<f32>() * 4.0 - 2.0).collect(),
            ),
        );
        heads.insert(format!("{n}.bias"), (vec![labels], vec![0.0; labels]));
    }
    write_safetensors(path, &heads);
}

/// A complete bundle (encoder + random heads + manifest with checksums) under `dir`.
pub fn write_bundle(dir: &Path, name: &str, variant: Variant, pooling: Pooling) -> PathBuf {
    let tiny = Tiny::new(variant, 7);
    tiny.write_encoder(&dir.join("encoder"));
    write_heads(&dir.join("heads.safetensors"), tiny.hidden, 11);
    let mut m = Manifest {
        format: FORMAT,
        name: name.into(),
        version: "t1".into(),
        encoder: EncoderSpec {
            dir: "encoder".into(),
            pooling,
            normalize: true,
            text_prefix: String::new(),
            max_tokens: None,
            precision: Default::default(),
            source: None,
        },
        heads: HeadsSpec {
            file: Some("heads.safetensors".into()),
            intent: Some(IntentSpec {
                labels: INTENTS.iter().map(|s| s.to_string()).collect(),
                oos_threshold: 0.0,
                oos_label: None,
            }),
            sentiment: Some(ClassifierSpec {
                labels: SENTIMENTS.iter().map(|s| s.to_string()).collect(),
            }),
        },
        files: BTreeMap::new(),
        metrics: Default::default(),
    };
    m.write_with_checksums(
        dir,
        &[
            "encoder/config.json",
            "encoder/tokenizer.json",
            "encoder/model.safetensors",
            "heads.safetensors",
        ],
    )
    .unwrap();
    dir.to_path_buf()
}

/// Texts of 1..n words from the tiny vocabulary, deterministic.
pub fn texts(n: usize) -> Vec<String> {
    (1..=n)
        .map(|k| {
            (0..k)
                .map(|i| WORDS[(i * 7 + k) % WORDS.len()])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

/// GET /metrics over a plain TCP connection.
pub async fn scrape(addr: std::net::SocketAddr) -> String {
    http(
        addr,
        &format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    )
    .await
}

/// One HTTP/1.1 exchange over a plain TCP connection (the request should say
/// `Connection: close`): the whole response, status line and headers included.
pub async fn http(addr: std::net::SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).await.unwrap();
    response
}

/// A field of a process's `/proc/<pid>/status` in kB (`VmRSS:` resident now, `VmHWM:` its
/// peak); 0 where it cannot be read (not Linux, a process gone).
pub fn proc_status_kb(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<f64>().ok()))
        })
        .unwrap_or(0.0)
}

/// The value of a sample line `name{labels} value` whose text starts with `prefix`.
pub fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// One module's tests at a time, for a test binary that gathers several modules' tests (the
/// root crate's and the serving crate's end-to-end tests): a module's tests run in parallel with
/// each other, as in a binary of their own, and never beside another module's, whose servers and
/// timeouts assume the machine is theirs.
pub mod suite {
    use std::sync::{Condvar, Mutex, PoisonError};

    /// The module whose tests are running, and how many are.
    static RUNNING: Mutex<(Option<&'static str>, usize)> = Mutex::new((None, 0));
    static CHANGED: Condvar = Condvar::new();

    /// Held for as long as a test runs.
    pub struct Entered;

    /// Waits until no other module's test runs, then counts this one in (`module_path!()`).
    pub fn enter(module: &'static str) -> Entered {
        let mut running = RUNNING.lock().unwrap_or_else(PoisonError::into_inner);
        while running.0.is_some_and(|m| m != module) {
            running = CHANGED.wait(running).unwrap_or_else(PoisonError::into_inner);
        }
        *running = (Some(module), running.1 + 1);
        Entered
    }

    impl Drop for Entered {
        fn drop(&mut self) {
            let mut running = RUNNING.lock().unwrap_or_else(PoisonError::into_inner);
            running.1 -= 1;
            if running.1 == 0 {
                running.0 = None;
                CHANGED.notify_all();
            }
        }
    }
}

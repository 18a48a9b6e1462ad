//! Load generator: starts the server on loopback with a bundle (default: the shipped default
//! model) and drives `Nlu.Understand` with real customer messages (Banking77 and SMP2019 val
//! texts from ../shared/data, English and Chinese; `--lang en` for English only, as an English
//! bundle is fed) for a fixed time at each concurrency, in
//! each precision (the int8 version is written from the bundle into a temporary directory, so
//! both run the same files in one process, one after the other).
//!
//! ```text
//! cargo bench --bench load                      # default bundle, f32 and int8, 1/8/32/128, 10 s each
//! cargo bench --bench load -- --bundle DIR --precision int8 --seconds 20 --concurrency 1,32 \
//!     --unbatched --lang en --out target/load.json
//! ```
//!
//! Prints one markdown table (texts/s, p50/p95/p99, mean batch, errors) and writes everything,
//! with the server's batch-size histogram per run, as JSON (`target/load-bench.json`).
use nudge_proto::v1::{nlu_client::NluClient, UnderstandRequest};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn read_texts(path: &str, n: usize) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["text"].as_str().map(String::from))
        .take(n)
        .collect()
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

struct Run {
    label: String,
    precision: String,
    concurrency: usize,
    calls: usize,
    errors: usize,
    secs: f64,
    lat: Vec<Duration>,
    batches: f64,
    texts: f64,
    /// Server-side means per text, from its metrics: time queued, and the encoder pass of the
    /// batch it ran in (the rest of a call's latency is gRPC, tokenizing and the client).
    queue_ms: f64,
    compute_ms: f64,
    /// The server's handler time per call (tokenizing, queue, pass, answer), from its metrics.
    handler_ms: f64,
    /// (upper bound, batches of at most that many texts), cumulative as Prometheus reports it.
    histogram: Vec<(String, f64)>,
}

async fn drive(
    bundle: PathBuf,
    precision: &str,
    max_batch: usize,
    concurrency: usize,
    secs: f64,
    texts: Arc<Vec<String>>,
) -> Run {
    let server = nudge_inference::start(nudge_inference::ServeConfig {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        admin_addr: "127.0.0.1:0".parse().unwrap(),
        metrics_addr: "127.0.0.1:0".parse().unwrap(),
        bundles: vec![bundle],
        batcher: nudge_inference::batcher::BatcherConfig {
            max_batch_size: Some(max_batch),
            ..Default::default()
        },
        ..Default::default()
    })
    .await
    .expect("server starts");
    let addr = server.grpc_addr;
    // Warm up: first calls allocate buffers.
    let mut warm = NluClient::connect(format!("http://{addr}")).await.unwrap();
    for t in texts.iter().take(8) {
        warm.understand(UnderstandRequest {
            text: t.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let texts = texts.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = NluClient::connect(format!("http://{addr}")).await.unwrap();
            let (mut lat, mut errors, mut i) = (Vec::new(), 0usize, w * 7919);
            while Instant::now() < deadline {
                let t = Instant::now();
                match c
                    .understand(UnderstandRequest {
                        text: texts[i % texts.len()].clone(),
                        ..Default::default()
                    })
                    .await
                {
                    Ok(_) => lat.push(t.elapsed()),
                    Err(_) => errors += 1,
                }
                i += 1;
            }
            (lat, errors)
        }));
    }
    let (mut lat, mut errors) = (Vec::new(), 0);
    for t in tasks {
        let (l, e) = t.await.unwrap();
        lat.extend(l);
        errors += e;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let metrics = {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(server.metrics_addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut b = String::new();
        s.read_to_string(&mut b).await.unwrap();
        b
    };
    let m = |p: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(p))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let run = Run {
        label: if max_batch > 1 {
            format!("batched (≤{max_batch})")
        } else {
            "unbatched".into()
        },
        precision: precision.to_string(),
        concurrency,
        calls: lat.len(),
        errors,
        secs: elapsed,
        lat,
        batches: m("nudge_batch_size_count"),
        texts: m("nudge_batch_size_sum"),
        queue_ms: 1e3 * m("nudge_queue_duration_seconds_sum") / m("nudge_queue_duration_seconds_count").max(1.0),
        // Per batch: every text of a batch waits for the whole pass.
        handler_ms: 1e3 * m("nudge_request_duration_seconds_sum{method=\"Understand\"")
            / m("nudge_request_duration_seconds_count{method=\"Understand\"").max(1.0),
        compute_ms: 1e3 * m("nudge_compute_duration_seconds_sum") / m("nudge_compute_duration_seconds_count").max(1.0),
        histogram: metrics
            .lines()
            .filter(|l| l.starts_with("nudge_batch_size_bucket"))
            .filter_map(|l| {
                let le = l.split("le=\"").nth(1)?.split('"').next()?.to_string();
                Some((le, l.rsplit(' ').next()?.parse().ok()?))
            })
            .collect(),
    };
    server.shutdown().await.unwrap();
    run
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)].as_secs_f64() * 1e3
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let bundle = arg("--bundle")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("models/bundles/default"));
    let secs: f64 = arg("--seconds").and_then(|s| s.parse().ok()).unwrap_or(10.0);
    let levels: Vec<usize> = arg("--concurrency")
        .unwrap_or_else(|| "1,8,32,128".into())
        .split(',')
        .filter_map(|s| s.parse().ok())
        .collect();
    let precisions: Vec<String> = arg("--precision")
        .unwrap_or_else(|| "f32,int8".into())
        .split(',')
        .map(String::from)
        .collect();
    let unbatched = std::env::args().any(|a| a == "--unbatched");
    let out = PathBuf::from(arg("--out").unwrap_or_else(|| root.join("target/load-bench.json").display().to_string()));
    let shared = root.join("../shared/data/intent");
    let lang = arg("--lang");
    let (texts, sources) = match lang.as_deref() {
        None => {
            let mut t = read_texts(&shared.join("en/banking77/val.jsonl").to_string_lossy(), 500);
            t.extend(read_texts(&shared.join("zh/smp2019/val.jsonl").to_string_lossy(), 250));
            (t, "Banking77 + SMP2019 val")
        }
        Some("en") => (
            read_texts(&shared.join("en/banking77/val.jsonl").to_string_lossy(), 750),
            "Banking77 val",
        ),
        Some("zh") => (
            read_texts(&shared.join("zh/smp2019/val.jsonl").to_string_lossy(), 750),
            "SMP2019 val",
        ),
        Some(other) => panic!("--lang: `{other}` is not en or zh"),
    };
    let texts = Arc::new(texts);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let scratch = tempfile::tempdir().expect("a temporary directory");
    let machine = format!(
        "{} cores, {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| c.lines().find(|l| l.starts_with("model name")).map(|l| l
                .split(':')
                .nth(1)
                .unwrap_or("")
                .trim()
                .to_string()))
            .unwrap_or_default()
    );
    println!(
        "bundle {}, {} texts ({sources}), {secs}s per run, {machine}",
        bundle.display(),
        texts.len(),
    );
    println!("\n| precision | mode | concurrency | texts/s | p50 ms | p95 ms | p99 ms | mean batch | queued ms | pass ms | handler ms | errors |\n|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut results = Vec::new();
    let mut json = Vec::new();
    for precision in &precisions {
        let p: nudge_model::Precision = precision.parse().unwrap_or_else(|e| panic!("--precision: {e}"));
        let manifest = nudge_model::Manifest::read(&bundle).expect("the bundle's manifest");
        let dir = if manifest.encoder.precision == p {
            bundle.clone()
        } else {
            let dir = scratch.path().join(precision);
            nudge_model::bundle::with_precision(&bundle, &dir, p, None).expect("writing the bundle in that precision");
            dir
        };
        for &c in &levels {
            for max_batch in [32, 1] {
                if max_batch == 1 && (c == 1 || !unbatched) {
                    continue; // identical to batched at concurrency 1
                }
                let mut r = rt.block_on(drive(dir.clone(), precision, max_batch, c, secs, texts.clone()));
                r.lat.sort();
                let tput = r.calls as f64 / r.secs;
                let (p50, p95, p99) = (pct(&r.lat, 0.5), pct(&r.lat, 0.95), pct(&r.lat, 0.99));
                let mean_batch = r.texts / r.batches.max(1.0);
                println!(
                    "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} | {:.2} | {:.2} | {:.2} | {} |",
                    r.precision,
                    r.label,
                    r.concurrency,
                    tput,
                    p50,
                    p95,
                    p99,
                    mean_batch,
                    r.queue_ms,
                    r.compute_ms,
                    r.handler_ms,
                    r.errors
                );
                json.push(serde_json::json!({
                    "precision": r.precision, "max_batch": max_batch, "concurrency": c, "seconds": r.secs,
                    "calls": r.calls, "errors": r.errors, "texts_per_s": tput,
                    "p50_ms": p50, "p95_ms": p95, "p99_ms": p99, "mean_batch": mean_batch,
                    "mean_queue_ms": r.queue_ms, "mean_pass_ms": r.compute_ms, "mean_handler_ms": r.handler_ms,
                    "batch_size_histogram": r.histogram.iter().map(|(le, n)| serde_json::json!({"le": le, "batches": n})).collect::<Vec<_>>(),
                }));
                results.push((precision.clone(), c, max_batch, tput));
            }
        }
    }
    let find = |p: &str, c: usize, b: usize| results.iter().find(|r| r.0 == p && r.1 == c && r.2 == b).map(|r| r.3);
    for &c in &levels {
        if let (Some(i), Some(f)) = (find("int8", c, 32), find("f32", c, 32)) {
            println!("\nconcurrency {c}: int8 gives {:.2}× the f32 throughput", i / f);
        }
        for p in &precisions {
            if let (Some(b), Some(u)) = (find(p, c, 32), find(p, c, 1)) {
                println!(
                    "concurrency {c}, {p}: batching gives {:.2}× the unbatched throughput",
                    b / u
                );
            }
        }
    }
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).expect("the output folder");
    }
    let doc = serde_json::json!({"bundle": bundle, "machine": machine, "seconds_per_run": secs, "texts": texts.len(), "sources": sources, "runs": json});
    std::fs::write(&out, serde_json::to_string_pretty(&doc).expect("json")).expect("writing the JSON");
    println!("\nall figures: {}", out.display());
}

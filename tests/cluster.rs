//! Several machines' worth of Nudge on one NATS JetStream server, as real processes on loopback:
//! three `nudge serve` processes, two `nudge optimizer serve` and one `nats-server`, under
//! Decide and ReportOutcome load, while a server, the NATS server and an optimizer are killed
//! (SIGKILL) at random moments and started again on the same files.
//!
//! Afterwards every acknowledged decision and every acknowledged outcome is in each optimizer's
//! ledger exactly once (and nothing that was never sent is), one optimizer leads, and every
//! server serves the version an operator loaded on one server while another was down — without
//! anyone pushing to it. Further tests: NLU bundles fanned out the same way, and the optimizers'
//! leadership (one trains and publishes; a standby takes over; versions never collide).
use crate::common;
use crate::common::*;
use crate::support;
use crate::support::*;
use nudge_proto::v1 as pb;
use nudge_records::{DecisionRecord, OutcomeRecord};
use rand::{Rng, SeedableRng};
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SERVERS: usize = 3;
const OPTIMIZERS: usize = 2;

/// What the clients were told.
#[derive(Default)]
struct Acked {
    decisions: HashSet<String>,
    /// Event ids whose ReportOutcome answered OK, not duplicate.
    outcomes: HashSet<String>,
    /// Event ids ever sent (answered or not).
    outcomes_sent: HashSet<String>,
    decide_failures: u64,
    outcome_failures: u64,
}

/// Addresses of the processes as they are now (they change when one restarts).
#[derive(Default)]
struct Addrs {
    grpc: Vec<String>,
    admin: Vec<String>,
    optimizers: Vec<String>,
}

/// One client: Decide on a server picked at random, then ReportOutcome for most decisions.
async fn client_loop(
    id: u64,
    addrs: Arc<Mutex<Addrs>>,
    acked: Arc<Mutex<Acked>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(id);
    let mut n = id * 1_000_000;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        n += 1;
        let (grpc, opt) = {
            let a = addrs.lock().unwrap();
            (
                a.grpc[rng.random_range(0..SERVERS)].clone(),
                a.optimizers[rng.random_range(0..OPTIMIZERS)].clone(),
            )
        };
        let decided = async {
            let mut c = pb::decisions_client::DecisionsClient::connect(grpc)
                .await
                .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            c.decide(decide_request(n)).await
        };
        let Some(d) = with_timeout(decided).await.map(|r| r.into_inner()) else {
            acked.lock().unwrap().decide_failures += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        acked.lock().unwrap().decisions.insert(d.decision_id.clone());
        if rng.random::<f64>() < 0.3 {
            continue;
        }
        let event_id = format!("e{n}");
        acked.lock().unwrap().outcomes_sent.insert(event_id.clone());
        let reported = async {
            let mut c = pb::optimizer_client::OptimizerClient::connect(opt)
                .await
                .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            c.report_outcome(pb::ReportOutcomeRequest {
                event_id: event_id.clone(),
                decision_id: d.decision_id.clone(),
                kind: pb::OutcomeKind::Convert as i32,
                revenue: 10.0,
                margin: 2.0,
                ..Default::default()
            })
            .await
        };
        match with_timeout(reported).await.map(|r| r.into_inner()) {
            Some(r) if !r.duplicate => {
                acked.lock().unwrap().outcomes.insert(event_id);
            }
            Some(_) => panic!("{event_id} was sent once and reported as a duplicate"),
            None => {
                acked.lock().unwrap().outcome_failures += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// How many of the optimizers at `addrs` say they lead.
async fn leaders(addrs: &[String]) -> usize {
    let mut n = 0;
    for a in addrs {
        n += optimizer_status(a).await.is_some_and(|s| s.leader) as usize;
    }
    n
}

/// What every test here starts from: a folder, a NATS JetStream server on a free port (its store
/// in `<dir>/nats`, kept across restarts) and the tiny bundle in `<dir>/bundle`.
fn testbed() -> (tempfile::TempDir, u16, common::KillOnDrop, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let nats = start_nats(&nats_server_binary(), &dir.path().join("nats"), port);
    let bundle = write_bundle(
        &dir.path().join("bundle"),
        "tiny",
        Variant::Bert,
        nudge_model::Pooling::Mean,
    );
    (dir, port, nats, bundle)
}

/// The test's own hand on the cluster, named `name`.
async fn cluster_client(nats_url: &str, name: &str) -> nudge_cluster::Cluster {
    nudge_cluster::Cluster::connect(nudge_cluster::ClusterConfig {
        url: nats_url.to_string(),
        name: name.into(),
        ..Default::default()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_acknowledged_is_lost_or_doubled_when_servers_nats_and_optimizers_are_killed() {
    let _suite = nudge_testkit::suite::enter(module_path!());
    let (dir, port, nats, bundle) = testbed();
    let nats_url = format!("nats://127.0.0.1:{port}");
    let (nats_bin, nats_dir) = (nats_server_binary(), dir.path().join("nats"));
    let mut nats = Some(nats);
    let opt_cfgs: Vec<PathBuf> = (0..OPTIMIZERS)
        .map(|i| optimizer_config_with(dir.path(), &format!("opt{i}"), &nats_url, &COMPACTING))
        .collect();
    let addrs = Arc::new(Mutex::new(Addrs::default()));
    let mut optimizers = Vec::new();
    for c in &opt_cfgs {
        let (child, a) = start_nudge(&["optimizer", "serve"], c);
        optimizers.push(child);
        addrs.lock().unwrap().optimizers.push(a["grpc"].clone());
    }
    let cfgs: Vec<PathBuf> = (0..SERVERS)
        .map(|i| server_config(dir.path(), i, &bundle, &nats_url, ""))
        .collect();
    let mut servers = Vec::new();
    for c in &cfgs {
        let (child, a) = start_nudge(&["serve"], c);
        servers.push(child);
        let mut ad = addrs.lock().unwrap();
        ad.grpc.push(a["grpc"].clone());
        ad.admin.push(a["admin"].clone());
    }
    // The optimizer wrote v1 to the cluster; every server follows the pointer, unpushed.
    let t0 = Instant::now();
    loop {
        let admins = addrs.lock().unwrap().admin.clone();
        let mut all = true;
        for a in &admins {
            all &= serving_version(a).await.as_deref() == Some("v1");
        }
        if all {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "servers never served the cluster's v1"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let acked = Arc::new(Mutex::new(Acked::default()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (1..=6)
        .map(|id| tokio::spawn(client_loop(id, addrs.clone(), acked.clone(), stop.clone())))
        .collect();

    // Chaos: 12 kills at random moments, each process started again on the same files.
    let mut rng = rand::rngs::StdRng::seed_from_u64(2026);
    let mut loaded_while_down = false;
    for round in 0..12 {
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..1200))).await;
        match round % 4 {
            // A server: killed; while it is down an operator loads v900 on another one.
            0 | 2 => {
                let i = rng.random_range(0..SERVERS);
                servers[i].kill().unwrap();
                servers[i].wait().unwrap();
                if !loaded_while_down && nats.is_some() {
                    let other = addrs.lock().unwrap().admin[(i + 1) % SERVERS].clone();
                    let mut c = pb::policy_admin_client::PolicyAdminClient::connect(other)
                        .await
                        .unwrap();
                    let r = c.load_policy(operator_version("v900")).await.unwrap().into_inner();
                    assert_eq!(r.serving_version, "v900");
                    loaded_while_down = true;
                }
                tokio::time::sleep(Duration::from_millis(rng.random_range(100..800))).await;
                let cfg = cfgs[i].clone();
                let (child, a) = tokio::task::spawn_blocking(move || start_nudge(&["serve"], &cfg))
                    .await
                    .unwrap();
                servers[i] = child;
                let mut ad = addrs.lock().unwrap();
                ad.grpc[i] = a["grpc"].clone();
                ad.admin[i] = a["admin"].clone();
            }
            // The NATS server: servers keep answering from their local logs meanwhile.
            1 => {
                drop(nats.take());
                tokio::time::sleep(Duration::from_millis(rng.random_range(300..1500))).await;
                nats = Some(start_nats(&nats_bin, &nats_dir, port));
            }
            // An optimizer, whatever it was doing (leading or standing by).
            _ => {
                let i = rng.random_range(0..OPTIMIZERS);
                optimizers[i].kill().unwrap();
                optimizers[i].wait().unwrap();
                tokio::time::sleep(Duration::from_millis(rng.random_range(100..600))).await;
                let cfg = opt_cfgs[i].clone();
                let (child, a) = tokio::task::spawn_blocking(move || start_nudge(&["optimizer", "serve"], &cfg))
                    .await
                    .unwrap();
                optimizers[i] = child;
                addrs.lock().unwrap().optimizers[i] = a["grpc"].clone();
            }
        }
    }
    assert!(loaded_while_down);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let (decisions, outcomes) = {
        let a = acked.lock().unwrap();
        eprintln!(
            "acknowledged: {} decisions, {} outcomes; failed calls: {} Decide, {} ReportOutcome",
            a.decisions.len(),
            a.outcomes.len(),
            a.decide_failures,
            a.outcome_failures
        );
        (a.decisions.clone(), a.outcomes.clone())
    };
    assert!(
        decisions.len() > 300 && outcomes.len() > 100,
        "too little load to mean anything"
    );

    // Every acknowledged decision and outcome reaches each optimizer's ledger.
    let opt_dirs: Vec<PathBuf> = (0..OPTIMIZERS).map(|i| dir.path().join(format!("opt{i}"))).collect();
    let t0 = Instant::now();
    for d in &opt_dirs {
        loop {
            let have = counts::<DecisionRecord>(&d.join("ledger"));
            let have_out = counts::<OutcomeRecord>(&d.join("outcomes"));
            let missing = decisions.iter().filter(|x| !have.contains_key(*x)).count();
            let missing_out = outcomes.iter().filter(|e| !have_out.contains_key(*e)).count();
            if missing == 0 && missing_out == 0 {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "{}: {missing} acknowledged decisions and {missing_out} acknowledged outcomes never reached the ledger",
                d.display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // One optimizer leads (after a kill the standby takes over within about a lease), never two.
    let opt_addrs = addrs.lock().unwrap().optimizers.clone();
    let t0 = Instant::now();
    loop {
        let n = leaders(&opt_addrs).await;
        assert!(n <= 1, "two optimizers lead at once");
        if n == 1 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "no optimizer leads");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for a in &opt_addrs {
        if let Some(st) = optimizer_status(a).await {
            eprintln!("{a}: {} duplicates dropped since its last start", st.duplicates_dropped);
        }
    }
    // A last crash, then the files as a restarted optimizer would read them.
    let mut logged = HashSet::new();
    for i in 0..SERVERS {
        logged.extend(counts::<DecisionRecord>(&dir.path().join(format!("s{i}/decisions"))).into_keys());
    }
    let sent = acked.lock().unwrap().outcomes_sent.clone();
    let mut ledgers = Vec::new();
    for (o, d) in optimizers.iter_mut().zip(&opt_dirs) {
        o.kill().unwrap();
        o.wait().unwrap();
        let ledger = counts::<DecisionRecord>(&d.join("ledger"));
        let outcome_ledger = counts::<OutcomeRecord>(&d.join("outcomes"));
        let doubled: Vec<_> = ledger.iter().filter(|(_, n)| **n > 1).collect();
        assert!(doubled.is_empty(), "decisions in the ledger twice: {doubled:?}");
        let doubled: Vec<_> = outcome_ledger.iter().filter(|(_, n)| **n > 1).collect();
        assert!(doubled.is_empty(), "outcomes in the ledger twice: {doubled:?}");
        // Nothing in the ledger that no server logged, and no outcome nobody sent.
        assert!(ledger.keys().all(|d| logged.contains(d)));
        assert!(outcome_ledger.keys().all(|e| sent.contains(e)));
        eprintln!(
            "{}: {} decisions ({} acknowledged + {} logged but unanswered), {} outcomes",
            d.display(),
            ledger.len(),
            decisions.len(),
            ledger.len() - decisions.len(),
            outcome_ledger.len()
        );
        ledgers.push((ledger, outcome_ledger));
    }

    // Every server serves what the operator loaded, the one that was down included.
    let admins = addrs.lock().unwrap().admin.clone();
    let t0 = Instant::now();
    for a in &admins {
        loop {
            if serving_version(a).await.as_deref() == Some("v900") {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(20), "{a} does not serve v900");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // And a restarted optimizer follows it too (its next candidate is judged against v900).
    let (_optimizer, a) = start_nudge(&["optimizer", "serve"], &opt_cfgs[0]);
    let st = optimizer_status(&a["grpc"]).await.unwrap();
    assert_eq!(st.serving_version, "v900");
    // Every window has closed: from its first round (every second) the ledger keeps only its
    // newest 200 (`COMPACTING`); before it, it holds its checkpoint and the logs' tails.
    let want = ledgers[0].0.len().min(200);
    let t0 = Instant::now();
    let st = loop {
        let st = optimizer_status(&a["grpc"]).await.unwrap();
        if st.decisions_seen as usize == want || t0.elapsed() > Duration::from_secs(10) {
            break st;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(st.decisions_seen as usize, want);
    assert_eq!(st.outcomes_recorded as usize, ledgers[0].1.len());
}

/// A version in the cluster that fails validation is refused by every server, which keeps
/// serving the old one and counts the refusal; the next good version is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_version_in_the_cluster_is_refused_and_the_old_one_keeps_serving() {
    let _suite = nudge_testkit::suite::enter(module_path!());
    use nudge_cluster::POLICY;
    let (dir, port, _nats, bundle) = testbed();
    let nats_url = format!("nats://127.0.0.1:{port}");
    let cfg = server_config(dir.path(), 0, &bundle, &nats_url, "");
    let (_server, a) = start_nudge(&["serve"], &cfg);
    let mut admin = pb::policy_admin_client::PolicyAdminClient::connect(a["admin"].clone())
        .await
        .unwrap();
    let r = admin.load_policy(operator_version("v1")).await.unwrap().into_inner();
    assert_eq!(r.serving_version, "v1");

    // Someone writes a corrupt version straight into the cluster and points SERVING at it.
    let cluster = cluster_client(&nats_url, "intruder").await;
    let mut corrupt = operator_version("v2");
    corrupt
        .files
        .insert(nudge_policy::version::MANIFEST.into(), corrupt.manifest.clone());
    let weights = corrupt.files.get_mut(nudge_policy::version::WEIGHTS).unwrap();
    let last = weights.len() - 1;
    weights[last] ^= 0xff; // its checksum no longer matches
    cluster
        .put_artifact(POLICY, "v2", &corrupt.files.into_iter().collect())
        .await
        .unwrap();
    cluster.set_serving(POLICY, "v2").await.unwrap();

    let metrics: std::net::SocketAddr = a["metrics"].trim_start_matches("http://").parse().unwrap();
    let t0 = Instant::now();
    loop {
        let refused = metric(
            &scrape(metrics).await,
            "nudge_cluster_events_total{event=\"policy_refused\"}",
        )
        .unwrap_or(0.0);
        if refused >= 1.0 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the bad version was never refused"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(serving_version(&a["admin"]).await.as_deref(), Some("v1"));
    // Through the admin door the same bad bytes are refused with the field named.
    let mut bad = operator_version("v3");
    let n = bad.files.get(nudge_policy::version::WEIGHTS).unwrap().len();
    bad.files.get_mut(nudge_policy::version::WEIGHTS).unwrap()[n - 1] ^= 0xff;
    let err = admin.load_policy(bad).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().starts_with("manifest"), "{}", err.message());
    // The next good version moves every server on.
    let r = admin.load_policy(operator_version("v4")).await.unwrap().into_inner();
    assert_eq!(r.serving_version, "v4");
    assert_eq!(cluster.serving(POLICY).await.unwrap().as_deref(), Some("v4"));
}

/// A new version of the bundle at `base` in `out`: the encoder files copied from `encoder`
/// (taken from the fetched encoder `source` when given), heads drawn from `heads_seed`.
fn new_version(
    base: &std::path::Path,
    out: &std::path::Path,
    version: &str,
    heads_seed: u64,
    encoder: &std::path::Path,
    source: Option<&str>,
) -> nudge_model::Manifest {
    let mut m = nudge_model::Manifest::read(base).unwrap();
    std::fs::create_dir_all(out.join("encoder")).unwrap();
    for f in nudge_model::encoder::ENCODER_FILES {
        std::fs::copy(encoder.join(f), out.join("encoder").join(f)).unwrap();
    }
    write_heads(
        &out.join("heads.safetensors"),
        Tiny::new(Variant::Bert, 7).hidden,
        heads_seed,
    );
    m.version = version.into();
    m.encoder.source = source.map(str::to_string);
    let files: Vec<String> = m.files.keys().cloned().collect();
    m.write_with_checksums(out, &files.iter().map(String::as_str).collect::<Vec<_>>())
        .unwrap();
    m
}

fn reload_request(dir: &std::path::Path) -> pb::ReloadModelRequest {
    pb::ReloadModelRequest {
        model: "tiny".into(),
        bundle_dir: dir.display().to_string(),
    }
}

/// The default model's version as the server reports it.
async fn model_version(grpc: &str) -> Option<String> {
    let listed = async {
        let mut c = pb::nlu_client::NluClient::connect(grpc.to_string())
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        c.list_models(pb::ListModelsRequest {}).await
    };
    with_timeout(listed)
        .await
        .and_then(|r| r.into_inner().models.first().map(|m| m.version.clone()))
}

async fn wait_for_model(grpc: &str, version: &str) {
    let t0 = Instant::now();
    while model_version(grpc).await.as_deref() != Some(version) {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "{grpc} never served {version} (serves {:?})",
            model_version(grpc).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every text's intent scores as one server answers them, with the version that answered.
async fn understood(grpc: &str) -> Answers {
    let mut c = pb::nlu_client::NluClient::connect(grpc.to_string()).await.unwrap();
    let r = c
        .understand_batch(pb::UnderstandBatchRequest {
            texts: texts(12),
            top_k: 3,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let scores = r
        .results
        .iter()
        .map(|u| {
            u.intent
                .as_ref()
                .unwrap()
                .top_k
                .iter()
                .map(|s| (s.label.clone(), s.score))
                .collect()
        })
        .collect();
    (r.model_version, scores)
}

type Answers = (String, Vec<Vec<(String, f32)>>);

/// The same version with the same labels and scores (to float noise between processes).
fn same(a: &Answers, b: &Answers) -> bool {
    a.0 == b.0
        && a.1.len() == b.1.len()
        && a.1
            .iter()
            .zip(&b.1)
            .all(|(x, y)| x.len() == y.len() && x.iter().zip(y).all(|(p, q)| p.0 == q.0 && (p.1 - q.1).abs() < 1e-5))
}

/// An NLU bundle reloaded on one server is served by every server, the one that was down
/// included, with the same answers; files a server has already are linked, not fetched, and a
/// fetched encoder never travels (a server without it refuses the version, and serves it once it
/// has the encoder). A corrupt version
/// put straight into the cluster is refused everywhere; a reload the cluster cannot take changes
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_nlu_bundle_reloaded_on_one_server_is_served_by_every_server_and_a_bad_one_by_none() {
    let _suite = nudge_testkit::suite::enter(module_path!());
    use nudge_cluster::bundle_kind;
    use std::os::unix::fs::MetadataExt;
    let (dir, port, nats, base) = testbed();
    let nats_url = format!("nats://127.0.0.1:{port}");
    let cfgs: Vec<PathBuf> = (0..SERVERS)
        .map(|i| server_config(dir.path(), i, &base, &nats_url, ""))
        .collect();
    let models = |i: usize| dir.path().join(format!("s{i}/models"));
    let (_s0, a0) = start_nudge(&["serve"], &cfgs[0]);
    let (_s1, a1) = start_nudge(&["serve"], &cfgs[1]);
    let (v1, answers_t1) = understood(&a0["grpc"]).await;
    assert_eq!(v1, "t1");

    // t2 (new heads) reloaded on s0 while s2 is down.
    new_version(&base, &models(0).join("t2"), "t2", 99, &base.join("encoder"), None);
    let mut admin0 = pb::model_admin_client::ModelAdminClient::connect(a0["admin"].clone())
        .await
        .unwrap();
    let r = admin0
        .reload_model(reload_request(&models(0).join("t2")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.previous_version.as_str(), r.version.as_str()), ("t1", "t2"));
    wait_for_model(&a1["grpc"], "t2").await;
    let (_s2, a2) = start_nudge(&["serve"], &cfgs[2]);
    wait_for_model(&a2["grpc"], "t2").await;
    let answers_t2 = understood(&a0["grpc"]).await;
    assert_eq!(answers_t2.0, "t2");
    assert!(
        !same(&answers_t2, &("t2".into(), answers_t1)),
        "t2's heads answer differently from t1's"
    );
    for a in [&a1, &a2] {
        assert!(same(&understood(&a["grpc"]).await, &answers_t2));
    }
    // The followers linked the encoder they already served and fetched only the new heads.
    for i in [1, 2] {
        let got = models(i).join("cluster/tiny/t2");
        assert!(
            std::fs::metadata(got.join("encoder/model.safetensors"))
                .unwrap()
                .nlink()
                >= 2
        );
        assert_eq!(std::fs::metadata(got.join("heads.safetensors")).unwrap().nlink(), 1);
    }

    // Another bundle under a version the cluster has: refused, naming the field.
    new_version(&base, &models(1).join("t2-other"), "t2", 5, &base.join("encoder"), None);
    let mut admin1 = pb::model_admin_client::ModelAdminClient::connect(a1["admin"].clone())
        .await
        .unwrap();
    let err = admin1
        .reload_model(reload_request(&models(1).join("t2-other")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().starts_with("bundle_dir") && err.message().contains("new version"),
        "{}",
        err.message()
    );
    assert!(same(&understood(&a1["grpc"]).await, &answers_t2));

    // t3 takes its encoder from a fetched encoder, which s0 and s1 have and s2 lacks.
    for i in [0, 1] {
        Tiny::new(Variant::Bert, 8).write_encoder(&models(i).join("encoders/tiny-enc"));
    }
    let t3 = new_version(
        &base,
        &models(0).join("t3"),
        "t3",
        99,
        &models(0).join("encoders/tiny-enc"),
        Some("tiny-enc"),
    );
    let r = admin0
        .reload_model(reload_request(&models(0).join("t3")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.version, "t3");
    wait_for_model(&a1["grpc"], "t3").await;
    let answers_t3 = understood(&a0["grpc"]).await;
    assert!(
        !same(&answers_t3, &("t3".into(), answers_t2.1.clone())),
        "t3's encoder answers differently"
    );
    assert!(same(&understood(&a1["grpc"]).await, &answers_t3));
    let t0 = Instant::now();
    while cluster_count(&a2["metrics"], "bundle_refused").await < 1.0 {
        assert!(t0.elapsed() < Duration::from_secs(20), "s2 never refused t3");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(same(&understood(&a2["grpc"]).await, &answers_t2), "s2 keeps serving t2");
    // Once s2 has the fetched encoder too (put in place whole, as a fetch leaves it), it serves
    // t3 without a restart or a new version.
    let fetching = models(2).join("tiny-enc.part");
    Tiny::new(Variant::Bert, 8).write_encoder(&fetching);
    std::fs::create_dir_all(models(2).join("encoders")).unwrap();
    std::fs::rename(&fetching, models(2).join("encoders/tiny-enc")).unwrap();
    wait_for_model(&a2["grpc"], "t3").await;
    assert!(same(&understood(&a2["grpc"]).await, &answers_t3));
    let cluster = cluster_client(&nats_url, "intruder").await;
    let probe = dir.path().join("probe");
    let pinned = &t3.files["encoder/model.safetensors"];
    assert!(
        cluster.get_blob(pinned, &probe).await.is_err(),
        "a fetched encoder's weights went through the cluster"
    );
    let heads = &t3.files["heads.safetensors"];
    cluster.get_blob(heads, &probe).await.unwrap();

    // A version whose heads blob holds other bytes, written straight into the cluster.
    let t4 = new_version(&base, &dir.path().join("t4"), "t4", 123, &base.join("encoder"), None);
    cluster
        .put_blob(&t4.files["heads.safetensors"], &models(0).join("t2/heads.safetensors"))
        .await
        .unwrap();
    let kind = bundle_kind("tiny").unwrap();
    let manifest = std::fs::read(dir.path().join("t4/manifest.json")).unwrap();
    cluster
        .put_artifact(&kind, "t4", &[("manifest.json".to_string(), manifest)].into())
        .await
        .unwrap();
    cluster.set_serving(&kind, "t4").await.unwrap();
    let t0 = Instant::now();
    for (a, before) in [(&a0, 0.0), (&a1, 0.0), (&a2, 1.0)] {
        while cluster_count(&a["metrics"], "bundle_refused").await < before + 1.0 {
            assert!(t0.elapsed() < Duration::from_secs(20), "{} never refused t4", a["grpc"]);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert!(same(&understood(&a0["grpc"]).await, &answers_t3));
    assert!(same(&understood(&a1["grpc"]).await, &answers_t3));
    assert!(same(&understood(&a2["grpc"]).await, &answers_t3));
    for i in 0..SERVERS {
        assert!(
            !models(i).join("cluster/tiny/t4").exists(),
            "a refused version was left on disk"
        );
    }

    // With NATS down a reload is refused as unavailable and nothing changes.
    drop(nats);
    new_version(&base, &models(0).join("t5"), "t5", 7, &base.join("encoder"), None);
    let err = tokio::time::timeout(
        Duration::from_secs(30),
        admin0.reload_model(reload_request(&models(0).join("t5"))),
    )
    .await
    .expect("a reload with NATS down answers")
    .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{}", err.message());
    assert!(same(&understood(&a0["grpc"]).await, &answers_t3));
}

/// Conversion probability of offer o1..o4 for segments a, b, c (`decide_request`'s context).
const TRUTH: [[f64; 4]; 3] = [
    [0.04, 0.30, 0.08, 0.02],
    [0.35, 0.03, 0.10, 0.06],
    [0.05, 0.06, 0.03, 0.32],
];

/// An optimizer that trains every 300 ms once 100 decisions have closed, 2 s lease.
fn learning_optimizer_config(dir: &std::path::Path, name: &str, nats: &str) -> PathBuf {
    optimizer_config_with(
        dir,
        name,
        nats,
        &Training {
            window_seconds: 0.25,
            every_ms: 300,
            extra: "",
            learn: LEARN,
            lease_ms: 2000,
        },
    )
}

/// `n` decisions from the shop, each converting as `TRUTH` says, reported to either optimizer.
async fn shop_traffic(server: &str, optimizers: &[String], from: u64, n: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(from);
    let mut d = pb::decisions_client::DecisionsClient::connect(server.to_string())
        .await
        .unwrap();
    for k in from..from + n {
        let Ok(r) = timed(d.decide(decide_request(k))).await else {
            continue;
        };
        let r = r.into_inner();
        let offer: usize = r.offer_id.trim_start_matches('o').parse().unwrap();
        if rng.random::<f64>() >= TRUTH[(k % 3) as usize][offer - 1] {
            continue;
        }
        let opt = optimizers[rng.random_range(0..optimizers.len())].clone();
        let reported = async {
            let mut c = pb::optimizer_client::OptimizerClient::connect(opt)
                .await
                .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            c.report_outcome(pb::ReportOutcomeRequest {
                event_id: format!("conv{k}"),
                decision_id: r.decision_id.clone(),
                kind: pb::OutcomeKind::Convert as i32,
                revenue: 10.0,
                ..Default::default()
            })
            .await
        };
        let _ = timed(reported).await;
    }
}

/// Traffic until the cluster's policy pointer names something other than `from`.
async fn until_published(cluster: &nudge_cluster::Cluster, server: &str, optimizers: &[String], from: &str) -> String {
    let t0 = Instant::now();
    let mut k = 1_000_000 * (t0.elapsed().as_nanos() as u64 % 1000 + 1);
    loop {
        shop_traffic(server, optimizers, k, 150).await;
        k += 150;
        let now = cluster
            .serving(nudge_cluster::POLICY)
            .await
            .unwrap()
            .unwrap_or_default();
        if now != from {
            return now;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "no version after {from} was published"
        );
    }
}

/// Two optimizers on one cluster: exactly one leads, trains and publishes while the other keeps
/// its ledger and stands by; when the leader is killed the standby takes over after the lease
/// (not before) and publishes the next version; a leader that stops cleanly hands over at once.
/// Version names are claimed once, and the SERVING pointer moves only from the revision a
/// publisher read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_optimizer_leads_and_a_standby_takes_over_without_clashing_versions() {
    let _suite = nudge_testkit::suite::enter(module_path!());
    use nudge_cluster::POLICY;
    let (dir, port, _nats, bundle) = testbed();
    let nats_url = format!("nats://127.0.0.1:{port}");
    let (_server, s) = start_nudge(&["serve"], &server_config(dir.path(), 0, &bundle, &nats_url, ""));
    let cfgs: Vec<PathBuf> = (0..2)
        .map(|i| learning_optimizer_config(dir.path(), &format!("opt{i}"), &nats_url))
        .collect();
    let mut procs = Vec::new();
    let mut addrs = Vec::new();
    for c in &cfgs {
        let (child, a) = start_nudge(&["optimizer", "serve"], c);
        procs.push(Some(child));
        addrs.push(a["grpc"].clone());
    }
    let cluster = cluster_client(&nats_url, "observer").await;
    let t0 = Instant::now();
    let leader = loop {
        let mut st = Vec::new();
        for a in &addrs {
            st.push(optimizer_status(a).await.is_some_and(|s| s.leader));
        }
        assert!(!(st[0] && st[1]), "two optimizers lead at once");
        if let Some(i) = st.iter().position(|l| *l) {
            break i;
        }
        assert!(t0.elapsed() < Duration::from_secs(15), "no optimizer leads");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let standby = 1 - leader;
    let first = cluster.serving(POLICY).await.unwrap().unwrap();

    // The leader trains and publishes; the standby only follows. (The leader goes on training, so
    // the pointer may move on while this looks.)
    let v_leader = until_published(&cluster, &s["grpc"], &addrs, &first).await;
    let st = optimizer_status(&addrs[standby]).await.unwrap();
    assert!(!st.leader);
    assert_eq!(st.trainings, 0, "the standby trained");
    assert!(optimizer_status(&addrs[leader]).await.unwrap().trainings > 0);
    let t0 = Instant::now();
    let followed = loop {
        let now = cluster.serving(POLICY).await.unwrap().unwrap();
        if optimizer_status(&addrs[standby]).await.unwrap().serving_version == now {
            break now;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the standby never followed {now}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // SIGKILL: the standby waits out the lease (2 s), then leads and publishes the next version.
    let mut killed = procs[leader].take().unwrap();
    killed.kill().unwrap();
    let killed_at = Instant::now();
    killed.wait().unwrap();
    let before = cluster.serving(POLICY).await.unwrap().unwrap();
    while !optimizer_status(&addrs[standby]).await.unwrap().leader {
        assert!(
            killed_at.elapsed() < Duration::from_secs(10),
            "the standby never took over"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = killed_at.elapsed();
    assert!(
        took >= Duration::from_millis(1200),
        "took over {took:?} after the kill, before the lease could have run out"
    );
    let live = [addrs[standby].clone()];
    let v_standby = until_published(&cluster, &s["grpc"], &live, &before).await;
    assert!(optimizer_status(&addrs[standby]).await.unwrap().trainings > 0);
    // One name, one version: both registries hold the version the standby followed, byte for byte.
    let manifest =
        |i: usize, v: &str| std::fs::read(dir.path().join(format!("opt{i}/registry/{v}/manifest.json"))).unwrap();
    assert_eq!(manifest(0, &followed), manifest(1, &followed));
    assert!(
        !cluster.claim_version(POLICY, &v_standby).await.unwrap(),
        "a published name is claimed"
    );

    // The restarted optimizer stands by; when the leader stops cleanly it leads at once.
    let (child, a) = start_nudge(&["optimizer", "serve"], &cfgs[leader]);
    procs[leader] = Some(child);
    addrs[leader] = a["grpc"].clone();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!optimizer_status(&addrs[leader]).await.unwrap().leader);
    assert!(optimizer_status(&addrs[standby]).await.unwrap().leader);
    let pid = procs[standby].as_ref().unwrap().id();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    let stopped_at = Instant::now();
    while !optimizer_status(&addrs[leader]).await.is_some_and(|s| s.leader) {
        assert!(
            stopped_at.elapsed() < Duration::from_millis(1500),
            "a clean stop did not hand the lease over"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "{first} → {v_leader} (leader opt{leader}) → killed → opt{standby} led after {took:?} → {v_standby}; a clean stop handed over in {:?}",
        stopped_at.elapsed()
    );

    // With the optimizers stopped the pointer stays where they left it.
    for p in procs.iter_mut().flatten() {
        let _ = p.kill();
        let _ = p.wait();
    }
    let (pinned, rev) = cluster.serving_entry(POLICY).await.unwrap().unwrap();
    // An operator's load under a name an optimizer took is refused, naming the field; a claim
    // is its claimant's alone (it may retry).
    assert!(cluster.claim_version(POLICY, "v7777").await.unwrap());
    assert!(cluster.claim_version(POLICY, "v7777").await.unwrap());
    let mut admin = pb::policy_admin_client::PolicyAdminClient::connect(s["admin"].clone())
        .await
        .unwrap();
    for taken in [v_standby.as_str(), "v7777"] {
        let err = admin.load_policy(operator_version(taken)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{taken}");
        assert!(err.message().starts_with("manifest.version"), "{}", err.message());
    }
    assert_eq!(
        cluster.serving_entry(POLICY).await.unwrap(),
        Some((pinned.clone(), rev))
    );

    // The pointer moves only from the revision a publisher read.
    assert!(!cluster.move_serving(POLICY, "v1", Some(rev - 1)).await.unwrap());
    assert!(!cluster.move_serving(POLICY, "v1", None).await.unwrap());
    assert_eq!(cluster.serving(POLICY).await.unwrap(), Some(pinned.clone()));
    assert!(cluster.move_serving(POLICY, &pinned, Some(rev)).await.unwrap());
}

/// An outcome record with event id `e<i>`.
fn outcome(i: usize) -> OutcomeRecord {
    OutcomeRecord {
        schema: nudge_records::OUTCOME_SCHEMA,
        event_id: format!("e{i}"),
        decision_id: format!("d{i}"),
        kind: nudge_records::OutcomeKind::Convert,
        revenue: 2.0,
        margin: 1.0,
        time_ms: 0,
        received_ms: 0,
        late: false,
    }
}

/// What `ingest` hands out until `want` deliveries came and `dropped` redeliveries were dropped
/// (within 10 s), then checks that nothing more comes for half a second.
async fn drain(
    ingest: &mut nudge_cluster::Ingest<OutcomeRecord>,
    want: usize,
    dropped: u64,
) -> Vec<nudge_cluster::Delivery<OutcomeRecord>> {
    let mut all = Vec::new();
    let t0 = Instant::now();
    while all.len() < want || ingest.redeliveries_dropped() < dropped {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{} of {want} deliveries and {} of {dropped} dropped redeliveries came",
            all.len(),
            ingest.redeliveries_dropped()
        );
        all.extend(ingest.next_batch(1_000, Duration::from_millis(200)).await.unwrap());
    }
    let more = ingest.next_batch(1_000, Duration::from_millis(500)).await.unwrap();
    assert!(more.is_empty(), "{} deliveries more than expected", more.len());
    assert_eq!(ingest.redeliveries_dropped(), dropped);
    all
}

/// The consumer's side, as the optimizer does it: write, sync, then `done` with the log's end.
async fn keep(
    ingest: &mut nudge_cluster::Ingest<OutcomeRecord>,
    batch: &[nudge_cluster::Delivery<OutcomeRecord>],
    dir: &std::path::Path,
) {
    let log = nudge_records::EventLog::open(nudge_records::LogConfig::new(
        dir,
        "outcomes",
        nudge_records::Durability::Always,
    ))
    .unwrap();
    for d in batch.iter().filter(|d| !d.kept) {
        log.append(d.record.as_ref().unwrap()).await.unwrap();
    }
    let mut t = nudge_records::Tailer::<OutcomeRecord>::new(dir);
    t.poll().unwrap();
    ingest.done(batch, t.cursor()).await.unwrap();
}

/// JetStream forgets acknowledgements (a nats-server killed before it wrote them): here its
/// consumer is deleted outright, so every message comes again, long after the consumer's
/// ledger could remember the ids. None is handed out twice — nor lost when the crash fell
/// between the consumer's write and its record of it, nor when the stream was recreated and
/// its sequence numbers start again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeliveries_are_dropped_however_late_and_a_recreated_stream_is_read_anew() {
    let _suite = nudge_testkit::suite::enter(module_path!());
    let (dir, port, _nats, _) = testbed();
    let url = format!("nats://127.0.0.1:{port}");
    let cluster = cluster_client(&url, "t").await;
    cluster.ensure().await.unwrap();
    let js = async_nats::jetstream::new(async_nats::connect(&url).await.unwrap());
    let forget_acks = || async {
        let s = js.get_stream(nudge_cluster::OUTCOMES_STREAM).await.unwrap();
        s.delete_consumer("t-nudge_outcomes").await.unwrap();
    };
    let log_dir = dir.path().join("outcomes");
    let ids = |v: &[nudge_cluster::Delivery<OutcomeRecord>]| -> Vec<(String, bool)> {
        v.iter()
            .map(|d| (d.record.as_ref().unwrap().event_id.clone(), d.kept))
            .collect()
    };
    let expect =
        |r: std::ops::Range<usize>, kept: bool| -> Vec<(String, bool)> { r.map(|i| (format!("e{i}"), kept)).collect() };
    let publish = |r: std::ops::Range<usize>| {
        let cluster = cluster.clone();
        async move {
            for i in r {
                cluster
                    .publish(nudge_cluster::OUTCOMES_STREAM, &outcome(i))
                    .await
                    .unwrap();
            }
        }
    };
    let open = || async {
        cluster
            .ingest::<OutcomeRecord>(nudge_cluster::OUTCOMES_STREAM, &log_dir)
            .await
            .unwrap()
    };

    publish(0..50).await;
    let mut ingest = open().await;
    let first = drain(&mut ingest, 50, 0).await;
    assert_eq!(ids(&first), expect(0..50, false));
    keep(&mut ingest, &first, &log_dir).await;
    drop(ingest);

    // Every acknowledgement forgotten: all 50 come again and are dropped.
    forget_acks().await;
    let mut ingest = open().await;
    assert!(drain(&mut ingest, 0, 50).await.is_empty());

    // A crash after the write of e50..e60, before `done`: they come back, marked kept.
    publish(50..60).await;
    let second = drain(&mut ingest, 10, 50).await;
    assert_eq!(ids(&second), expect(50..60, false));
    let log = nudge_records::EventLog::open(nudge_records::LogConfig::new(
        &log_dir,
        "outcomes",
        nudge_records::Durability::Always,
    ))
    .unwrap();
    for d in &second {
        log.append(d.record.as_ref().unwrap()).await.unwrap();
    }
    drop((ingest, second, log));
    forget_acks().await;
    let mut ingest = open().await;
    let end = ingest.log_end().cloned().unwrap();
    let after: Vec<String> = nudge_records::Tailer::<OutcomeRecord>::resume(&log_dir, &end)
        .poll()
        .unwrap()
        .into_iter()
        .map(|o| o.event_id)
        .collect();
    assert_eq!(
        after.len(),
        10,
        "the log beyond its recorded end holds the unrecorded batch"
    );
    ingest.kept_before(after);
    let again = drain(&mut ingest, 10, 50).await;
    assert_eq!(ids(&again), expect(50..60, true));
    keep(&mut ingest, &again, &log_dir).await;
    drop((ingest, again));
    let (logged, _) = nudge_records::read_all::<OutcomeRecord>(&log_dir).unwrap();
    assert_eq!(logged.len(), 60, "each record in the consumer's log once");

    // The stream recreated: sequences 1, 2, … again, for new records that must be read.
    js.delete_stream(nudge_cluster::OUTCOMES_STREAM).await.unwrap();
    cluster.ensure().await.unwrap();
    publish(100..105).await;
    let mut ingest = open().await;
    assert_eq!(ids(&drain(&mut ingest, 5, 0).await), expect(100..105, false));
}

/// The example shop's rules, catalog and products CSV, copied for server `i`, and the
/// `[strategy]` section that serves them.
fn shop_strategy(dir: &std::path::Path, i: usize) -> String {
    let d = dir.join(format!("s{i}/shop"));
    std::fs::create_dir_all(&d).unwrap();
    for f in ["rules.toml", "catalog.toml", "products.csv"] {
        std::fs::copy(format!("examples/shop/{f}"), d.join(f)).unwrap();
    }
    format!(
        "\n[strategy]\ncatalog = \"{d}/catalog.toml\"\nrules = \"{d}/rules.toml\"\n",
        d = d.display()
    )
}

/// The offer a new regular customer asking about the X1's battery gets from `grpc`.
async fn battery_offer(grpc: &str, conv: &str) -> Option<String> {
    let asked = async {
        let mut c = pb::conversations_client::ConversationsClient::connect(grpc.to_string())
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        c.turn(battery_question(conv, &format!("cust-{conv}"))).await
    };
    with_timeout(asked)
        .await
        .map(|r| r.into_inner().offer.map(|o| o.offer_id).unwrap_or_default())
}

/// Waits (10 s at most) until `grpc` offers `offer`, asking a new customer each time.
async fn wait_for_offer(grpc: &str, offer: &str, tag: &str) {
    let t0 = Instant::now();
    for n in 0.. {
        let got = battery_offer(grpc, &format!("{tag}-{n}")).await;
        if got.as_deref() == Some(offer) {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{grpc} still offers {got:?}, not {offer}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_reloaded_on_one_server_are_served_by_every_server_and_a_server_that_was_down_catches_up() {
    let _suite = nudge_testkit::suite::enter(module_path!());
    let (dir, port, _nats, _) = testbed();
    let nats_url = format!("nats://127.0.0.1:{port}");
    // The real default model: the shop's rules name its intents.
    let model = std::fs::canonicalize("models/bundles/default").unwrap();
    let cfgs: Vec<PathBuf> = (0..2)
        .map(|i| server_config(dir.path(), i, &model, &nats_url, &shop_strategy(dir.path(), i)))
        .collect();
    let rules = |i: usize| dir.path().join(format!("s{i}/shop/rules.toml"));
    let (_s0, a0) = start_nudge(&["serve"], &cfgs[0]);
    let (s1, a1) = start_nudge(&["serve"], &cfgs[1]);
    assert_eq!(
        battery_offer(&a1["grpc"], "before").await.as_deref(),
        Some("warranty_1y")
    );

    // On s0: the care bundle for regular customers too, reloaded by hand.
    let original = std::fs::read_to_string(rules(0)).unwrap();
    let edited = original
        .replace(
            r#"tier = ["gold", "platinum"]"#,
            r#"tier = ["regular", "gold", "platinum"]"#,
        )
        .replace(r#"min_lifetime_value = "5000""#, r#"min_lifetime_value = "50""#);
    assert_ne!(edited, original);
    std::fs::write(rules(0), &edited).unwrap();
    let mut admin0 = pb::strategy_admin_client::StrategyAdminClient::connect(a0["admin"].clone())
        .await
        .unwrap();
    admin0.reload_strategy(pb::ReloadStrategyRequest {}).await.unwrap();
    wait_for_offer(&a1["grpc"], "care_bundle", "after-edit").await;
    assert_eq!(
        std::fs::read_to_string(rules(1)).unwrap(),
        edited,
        "s1 follows with s0's file"
    );

    // A file s0 refuses (an intent the model does not have) is neither served nor shared.
    std::fs::write(rules(0), edited.replace("\"price\"", "\"no_such_intent\"")).unwrap();
    let e = admin0.reload_strategy(pb::ReloadStrategyRequest {}).await.unwrap_err();
    assert!(e.message().contains("no_such_intent"), "{e}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(std::fs::read_to_string(rules(1)).unwrap(), edited);
    assert_eq!(
        battery_offer(&a1["grpc"], "after-refusal").await.as_deref(),
        Some("care_bundle")
    );

    // s1 is down while s0 goes back to the original rules; it starts on its stale file and
    // serves the cluster's.
    drop(s1);
    std::fs::write(rules(0), &original).unwrap();
    admin0.reload_strategy(pb::ReloadStrategyRequest {}).await.unwrap();
    let (_s1, a1) = start_nudge(&["serve"], &cfgs[1]);
    wait_for_offer(&a1["grpc"], "warranty_1y", "after-restart").await;
    assert_eq!(std::fs::read_to_string(rules(1)).unwrap(), original);
    wait_for_offer(&a0["grpc"], "warranty_1y", "s0").await;
}

/// `nudge_cluster_events_total{event}` as the server whose metrics are at `metrics` counts it.
async fn cluster_count(metrics: &str, event: &str) -> f64 {
    let addr: std::net::SocketAddr = metrics.trim_start_matches("http://").parse().unwrap();
    metric(
        &scrape(addr).await,
        &format!("nudge_cluster_events_total{{event=\"{event}\"}}"),
    )
    .unwrap_or(0.0)
}

/// Each kind of version follows its own pointer, so rules may reach a server before the bundle
/// whose intent they name. Rules naming an intent the servers' model lacks are refused by every
/// server, their files untouched; once a bundle with that intent is served, every server serves
/// those rules without anyone publishing them again — tried once more, not on every tick. The
/// other way round, a bundle that lacks an intent the serving rules name is refused at the door.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_refused_for_an_intent_the_model_lacks_are_served_once_a_bundle_has_it() {
    let _suite = nudge_testkit::suite::enter(module_path!());
    let (dir, port, _nats, _) = testbed();
    let nats_url = format!("nats://127.0.0.1:{port}");
    let model = std::fs::canonicalize("models/bundles/default").unwrap();
    let cfgs: Vec<PathBuf> = (0..2)
        .map(|i| server_config(dir.path(), i, &model, &nats_url, &shop_strategy(dir.path(), i)))
        .collect();
    let rules = |i: usize| dir.path().join(format!("s{i}/shop/rules.toml"));
    let (_s0, a0) = start_nudge(&["serve"], &cfgs[0]);
    let (_s1, a1) = start_nudge(&["serve"], &cfgs[1]);
    let cluster = cluster_client(&nats_url, "test").await;
    let t0 = Instant::now();
    while cluster.serving(nudge_cluster::STRATEGY).await.unwrap().is_none() {
        assert!(t0.elapsed() < Duration::from_secs(10), "no server published its files");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The shop's files, with price and coupon askers who write about their invoice too: an
    // intent `billing` the model lacks. Put into the cluster as the next version.
    let original = std::fs::read_to_string(rules(0)).unwrap();
    let billing_rules = original.replace(
        r#"intent = ["price", "promotion_coupon"]"#,
        r#"intent = ["price", "promotion_coupon", "billing"]"#,
    );
    assert_ne!(billing_rules, original);
    let shop = dir.path().join("s0/shop");
    let files = std::collections::BTreeMap::from([
        ("rules.toml".to_string(), billing_rules.clone().into_bytes()),
        (
            "catalog.toml".to_string(),
            std::fs::read(shop.join("catalog.toml")).unwrap(),
        ),
        (
            "products.csv".to_string(),
            std::fs::read(shop.join("products.csv")).unwrap(),
        ),
    ]);
    cluster.serve_content(nudge_cluster::STRATEGY, &files).await.unwrap();
    for a in [&a0, &a1] {
        let t0 = Instant::now();
        while cluster_count(&a["metrics"], "strategy_refused").await < 1.0 {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "{} never refused the rules",
                a["grpc"]
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert_eq!(std::fs::read_to_string(rules(0)).unwrap(), original);
    assert_eq!(std::fs::read_to_string(rules(1)).unwrap(), original);

    // A bundle whose `price` intent is called `billing` is refused at s0's door: the serving
    // rules name `price`. Nothing changes anywhere.
    let relabelled = |version: &str, from: &str| {
        support::default_bundle_as(&dir.path().join(format!("s0/models/{version}")), version, |m| {
            for label in m["heads"]["intent"]["labels"].as_array_mut().unwrap() {
                if label == from {
                    *label = "billing".into();
                }
            }
        })
    };
    let mut admin0 = pb::model_admin_client::ModelAdminClient::connect(a0["admin"].clone())
        .await
        .unwrap();
    let reload = |dir: PathBuf| pb::ReloadModelRequest {
        model: "default".into(),
        bundle_dir: dir.display().to_string(),
    };
    let e = admin0
        .reload_model(reload(relabelled("no-price", "price")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(
        e.message().starts_with("bundle_dir") && e.message().contains("the serving rules name intent `price`"),
        "{}",
        e.message()
    );

    // One whose `invoice` (which no rule names) is called `billing` is served by s0, every
    // server follows, and then serves the rules it refused.
    admin0
        .reload_model(reload(relabelled("billing-1", "invoice")))
        .await
        .unwrap();
    wait_for_model(&a0["grpc"], "billing-1").await;
    wait_for_model(&a1["grpc"], "billing-1").await;
    let t0 = Instant::now();
    while [0, 1].map(|i| std::fs::read_to_string(rules(i)).unwrap()) != [billing_rules.clone(), billing_rules.clone()] {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the refused rules were not served once the model had their intent"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for a in [&a0, &a1] {
        assert_eq!(
            cluster_count(&a["metrics"], "strategy_refused").await,
            1.0,
            "refused once"
        );
        assert!(cluster_count(&a["metrics"], "strategy_followed").await >= 1.0);
    }
}

/// One request to the console at `console` as `ana`, which must succeed: the answer's JSON.
async fn console_call(console: &str, method: &str, path: &str, body: &str) -> serde_json::Value {
    let (status, json) = support::console_call(console, ("ana", "ana's long password"), method, path, body).await;
    assert_eq!(status, 200, "{method} {path}: {json}");
    json
}

/// Turns of the last hour that the console at `console` counts.
async fn console_turns(console: &str) -> u64 {
    let kpis = console_call(console, "GET", "/api/kpis?group=channel&hours=1", "").await;
    kpis["totals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["counts"]["turns"].as_u64().unwrap())
        .sum()
}

/// One single-turn conversation per count on each server at `grpc`, each with a new customer
/// (`tag` keeps the ids apart between calls).
async fn converse<const N: usize>(servers: [(&String, usize); N], tag: &str) {
    for (s, (grpc, n)) in servers.into_iter().enumerate() {
        let mut c = pb::conversations_client::ConversationsClient::connect(grpc.clone())
            .await
            .unwrap();
        for k in 0..n {
            c.turn(battery_question(
                &format!("s{s}-{tag}-{k}"),
                &format!("cust-s{s}-{tag}-{k}"),
            ))
            .await
            .unwrap();
        }
    }
}

/// Waits (15 s at most) until both consoles count `want` turns; returns what they count.
async fn wait_for_turns(consoles: [&str; 2], want: u64) -> [u64; 2] {
    let t0 = Instant::now();
    loop {
        let got = [console_turns(consoles[0]).await, console_turns(consoles[1]).await];
        if got == [want; 2] || t0.elapsed() > Duration::from_secs(15) {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_console_counts_the_whole_cluster_and_an_experiment_runs_on_every_server() {
    let _suite = nudge_testkit::suite::enter(module_path!());
    let (dir, port, _nats, _) = testbed();
    let nats_url = format!("nats://127.0.0.1:{port}");
    let model = std::fs::canonicalize("models/bundles/default").unwrap();
    let users = dir.path().join("users.toml");
    support::users_file(&users, &[("ana", "editor", "ana's long password")]);
    let cfgs: Vec<PathBuf> = (0..2)
        .map(|i| {
            let d = dir.path().join(format!("s{i}"));
            let extra = format!(
                "{}events_log = \"{d}/events\"\n\n[console]\naddr = \"127.0.0.1:0\"\nusers_file = \"{users}\"\ndir = \"{d}/console\"\n",
                shop_strategy(dir.path(), i),
                d = d.display(),
                users = users.display()
            );
            server_config(dir.path(), i, &model, &nats_url, &extra)
        })
        .collect();
    let (_s0, a0) = start_nudge(&["serve"], &cfgs[0]);
    let (s1, a1) = start_nudge(&["serve"], &cfgs[1]);
    // Five conversations on s0, three on s1.
    converse([(&a0["grpc"], 5), (&a1["grpc"], 3)], "first").await;
    assert_eq!(
        wait_for_turns([&a0["console"], &a1["console"]], 8).await,
        [8, 8],
        "each console counts its own server's turns and the other's"
    );
    assert_eq!(
        cluster_count(&a0["metrics"], "events_read").await,
        3.0,
        "s0 read s1's three turns from the stream, and not its own"
    );

    // s1 restarts: its own turns come back from its log, s0's from the stream, none twice.
    drop(s1);
    let (_s1, a1) = start_nudge(&["serve"], &cfgs[1]);
    assert_eq!(wait_for_turns([&a0["console"], &a1["console"]], 8).await, [8, 8]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        [console_turns(&a0["console"]).await, console_turns(&a1["console"]).await],
        [8, 8],
        "nothing is counted twice"
    );

    // The event stream deleted and created anew under both: each reads the new one from its
    // start (its sequences start again at 1), so what comes after is counted everywhere.
    let js = async_nats::jetstream::new(async_nats::connect(&nats_url).await.unwrap());
    js.delete_stream(nudge_cluster::EVENTS_STREAM).await.unwrap();
    converse([(&a0["grpc"], 1), (&a1["grpc"], 2)], "anew").await;
    assert_eq!(
        wait_for_turns([&a0["console"], &a1["console"]], 11).await,
        [11, 11],
        "the turns after the stream was created anew are counted on both"
    );
    for a in [&a0, &a1] {
        assert_eq!(cluster_count(&a["metrics"], "events_stream_recreated").await, 1.0);
    }

    // An experiment started in s0's console splits s1's customers too, the same way.
    let started = console_call(
        &a0["console"],
        "POST",
        "/api/experiments",
        r#"{"name":"everywhere","arms":[{"name":"A","weight":1,"policy":"rules_only"},{"name":"B","weight":1,"policy":"serving"}]}"#,
    )
    .await;
    assert_eq!(started["id"], "exp-1-s0", "ids carry the server's name in a cluster");
    let mut c0 = pb::conversations_client::ConversationsClient::connect(a0["grpc"].clone())
        .await
        .unwrap();
    let mut c1 = pb::conversations_client::ConversationsClient::connect(a1["grpc"].clone())
        .await
        .unwrap();
    let t0 = Instant::now();
    for n in 0.. {
        let r = c1
            .turn(battery_question(&format!("probe-{n}"), "probe"))
            .await
            .unwrap()
            .into_inner();
        if r.experiment == "exp-1-s0" {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "s1 never served the experiment");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut arms = HashSet::new();
    for k in 0..12 {
        let customer = format!("split-{k}");
        let on0 = c0
            .turn(battery_question(&format!("{customer}-s0"), &customer))
            .await
            .unwrap()
            .into_inner();
        let on1 = c1
            .turn(battery_question(&format!("{customer}-s1"), &customer))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (on0.experiment.as_str(), on1.experiment.as_str()),
            ("exp-1-s0", "exp-1-s0")
        );
        assert_eq!(on0.arm, on1.arm, "{customer} is in one arm on every server");
        arms.insert(on0.arm);
    }
    assert_eq!(arms.len(), 2, "12 customers fall in both arms");
    // Each console's verdict counts the 12 customers once, though each talked to both servers
    // (and the probe customer, on s1 alone).
    let t0 = Instant::now();
    loop {
        let mut customers = Vec::new();
        for console in [&a0["console"], &a1["console"]] {
            let page = console_call(console, "GET", "/api/experiments", "").await;
            assert_eq!(page["running"]["spec"]["id"], "exp-1-s0", "{page}");
            let n: u64 = page["running"]["results"]["arms"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a["customers"].as_u64().unwrap())
                .sum();
            customers.push(n);
        }
        if customers == [13, 13] {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "customers counted: {customers:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Stopped in s1's console, it stops on s0 too, and s0's console records it stopped.
    console_call(&a1["console"], "POST", "/api/experiments/stop", "{}").await;
    let t0 = Instant::now();
    for n in 0.. {
        let r = c0
            .turn(battery_question(&format!("after-{n}"), "after"))
            .await
            .unwrap()
            .into_inner();
        if r.experiment.is_empty() {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "s0 kept serving the experiment");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let page = console_call(&a0["console"], "GET", "/api/experiments", "").await;
    assert!(page["running"].is_null(), "{page}");
    assert_eq!(page["past"][0]["spec"]["id"], "exp-1-s0");
    assert_eq!(page["past"][0]["stopped_by"], "(another server)");
    let page = console_call(&a1["console"], "GET", "/api/experiments", "").await;
    assert_eq!(page["past"][0]["stopped_by"], "ana");
}

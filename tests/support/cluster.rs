//! Processes for the end-to-end tests and the cluster bench: a NATS JetStream server, `nudge serve`
//! and `nudge optimizer serve` started from config files written here, and the checks both make
//! (what a server serves, how often each id is in a ledger).
#![allow(dead_code)]
use crate::common::KillOnDrop;
use nudge_policy::version::{PolicyManifest, PolicyVersion, FORMAT};
use nudge_policy::{Exploration, FeatureSchema, Policy, RewardModel};
use nudge_proto::v1 as pb;
use nudge_records::read_all;
use std::collections::HashMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_nudge");

/// The `nudge` binary to run: this build's, or `NUDGE_BIN` (the GPU machine runs binaries
/// built elsewhere, from another directory).
pub fn nudge_bin() -> String {
    std::env::var("NUDGE_BIN").unwrap_or_else(|_| BIN.to_string())
}

/// `nats-server` from Debian's package, installed here if missing (as `.ci/run` does).
pub fn nats_server_binary() -> PathBuf {
    let found = |p: &str| {
        Command::new(p)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    for p in ["nats-server", "/usr/sbin/nats-server", "/usr/bin/nats-server"] {
        if found(p) {
            return PathBuf::from(p);
        }
    }
    let installed = Command::new("apt-get")
        .args(["install", "-y", "-qq", "nats-server"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        installed && found("/usr/sbin/nats-server"),
        "these tests need NATS: `apt-get install nats-server` (Debian's package; .ci/run installs it)"
    );
    PathBuf::from("/usr/sbin/nats-server")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A NATS server with JetStream on `port`, its store in `dir` (kept across restarts).
pub fn start_nats(bin: &Path, dir: &Path, port: u16) -> KillOnDrop {
    let child = KillOnDrop(
        Command::new(bin)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t0.elapsed() < Duration::from_secs(10), "nats-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// Starts `nudge <args>` and reads its `listening ...` line: `key=addr` pairs.
pub fn start_nudge(args: &[&str], config: &Path) -> (KillOnDrop, HashMap<String, String>) {
    let mut child = KillOnDrop(
        Command::new(nudge_bin())
            .args(args)
            .arg("--config")
            .arg(config)
            .env("NUDGE_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addrs = line
        .trim()
        .strip_prefix("listening ")
        .unwrap_or_else(|| panic!("{args:?}: {line}"))
        .split(' ')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), format!("http://{v}")))
        .collect();
    (child, addrs)
}

pub const SCHEMA: &str = r#"context = ["seg=a", "seg=b", "seg=c"]
offer = ["offer=o1", "offer=o2", "offer=o3", "offer=o4"]
allow_none = false"#;

/// `extra`: more TOML at the end (a `[strategy]` section, say).
pub fn server_config(dir: &Path, i: usize, bundle: &Path, nats: &str, extra: &str) -> PathBuf {
    let d = dir.join(format!("s{i}"));
    std::fs::create_dir_all(&d).unwrap();
    let cfg = format!(
        r#"grpc_addr = "127.0.0.1:0"
admin_addr = "127.0.0.1:0"
metrics_addr = "127.0.0.1:0"
bundles = ["{bundle}"]
models_root = "{d}/models"

[decisions]
policy_registry = "{d}/registry"
decision_log = "{d}/decisions"
customer_id_key = "cluster test key, 16+ bytes"

[decisions.durability]
mode = "always"

[cluster]
url = "{nats}"
name = "s{i}"
request_timeout_ms = 2000
{extra}
"#,
        bundle = bundle.display(),
        d = d.display()
    );
    let p = d.join("nudge.toml");
    std::fs::write(&p, cfg).unwrap();
    p
}

/// How a test's optimizer trains and leads.
pub struct Training<'a> {
    /// The reward window, in seconds.
    pub window_seconds: f64,
    /// `train_every_ms`.
    pub every_ms: u64,
    /// More top-level keys (`max_examples = …`).
    pub extra: &'a str,
    /// `[learn]` tables ([`LEARN`], or none for the defaults).
    pub learn: &'a str,
    /// `cluster.lease_ms`.
    pub lease_ms: u64,
}

/// Never trains within a test; a 1 s lease, so that a standby takes over quickly.
pub const NO_TRAINING: Training<'static> = Training {
    window_seconds: 3600.0,
    every_ms: 3_600_000,
    extra: "",
    learn: "",
    lease_ms: 1000,
};

/// Never publishes (no round has enough examples) but compacts the ledger every second down to
/// 200 closed decisions of a 1 s window: a redelivery then comes long after its id left the
/// ledger, which is what the streams' redelivery filter must catch.
pub const COMPACTING: Training<'static> = Training {
    window_seconds: 1.0,
    every_ms: 1000,
    extra: "max_examples = 200",
    learn: "[learn]\nmin_examples = 1000000000\n",
    lease_ms: 1000,
};

/// Learning settings quick enough for tests: ridge regression, Thompson exploration, a DR gate.
pub const LEARN: &str = r#"[learn]
ridge = 1.0
noise_var = 0.2
holdout = 0.3
min_examples = 100
seed = 5

[learn.exploration]
kind = "thompson"
scale = 1.0
samples = 200

[learn.gate]
estimator = "dr"
tolerance = 0.0
"#;

/// A cluster optimizer named `name` (its directory under `dir` too) that does not train.
pub fn optimizer_config(dir: &Path, name: &str, nats: &str) -> PathBuf {
    optimizer_config_with(dir, name, nats, &NO_TRAINING)
}

/// A cluster optimizer named `name` (its directory under `dir` too) that trains as `t` says.
pub fn optimizer_config_with(dir: &Path, name: &str, nats: &str, t: &Training<'_>) -> PathBuf {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(
        d.join("reward.toml"),
        format!("reward = \"conversion\"\nwindow_seconds = {}\n", t.window_seconds),
    )
    .unwrap();
    let cfg = format!(
        r#"grpc_addr = "127.0.0.1:0"
decision_logs = []
decision_ledger = "{d}/ledger"
outcome_log = "{d}/outcomes"
audit_log = "{d}/audit"
registry = "{d}/registry"
servers = []
reward_file = "{d}/reward.toml"
train_every_outcomes = 1000000000
train_every_ms = {every}
{extra}

[durability]
mode = "always"

{learn}
[initial_schema]
{SCHEMA}

[cluster]
url = "{nats}"
name = "{name}"
request_timeout_ms = 2000
lease_ms = {lease}
"#,
        d = d.display(),
        every = t.every_ms,
        extra = t.extra,
        learn = t.learn,
        lease = t.lease_ms,
    );
    let p = d.join("optimizer.toml");
    std::fs::write(&p, cfg).unwrap();
    p
}

/// A policy version an operator loads by hand.
pub fn operator_version(name: &str) -> pb::LoadPolicyRequest {
    let schema: FeatureSchema = toml::from_str(SCHEMA).unwrap();
    let exploration = Exploration::EpsilonGreedy { epsilon: 0.2 };
    let pv = PolicyVersion {
        manifest: PolicyManifest {
            format: FORMAT,
            version: name.into(),
            parent: None,
            created_unix_ms: 1,
            schema: schema.clone(),
            exploration: exploration.clone(),
            reward_sha256: None,
            training_window: None,
            ope: None,
            files: Default::default(),
        },
        policy: Policy {
            model: RewardModel::prior(schema.dim(), 2.0),
            schema,
            exploration,
            projection: None,
        },
    };
    let (manifest, files) = pv.encode().unwrap();
    pb::LoadPolicyRequest {
        manifest,
        files: files.into_iter().collect(),
    }
}

pub fn decide_request(n: u64) -> pb::DecideRequest {
    pb::DecideRequest {
        conversation_id: format!("c{n}"),
        customer_id: format!("cust{n}"),
        channel: "web".into(),
        context: [(format!("seg={}", ["a", "b", "c"][(n % 3) as usize]), 1.0)].into(),
        candidates: (1..=4)
            .map(|o| pb::Offer {
                id: format!("o{o}"),
                features: [(format!("offer=o{o}"), 1.0)].into(),
            })
            .collect(),
        ..Default::default()
    }
}

/// An optimizer's Status, if it answers.
pub async fn optimizer_status(grpc: &str) -> Option<pb::StatusResponse> {
    let asked = async {
        let mut c = pb::optimizer_client::OptimizerClient::connect(grpc.to_string())
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        c.status(pb::StatusRequest {}).await
    };
    with_timeout(asked).await.map(|r| r.into_inner())
}

/// A call with a 5 s limit; the error says what the server answered (or that it did not).
pub async fn timed<T>(f: impl std::future::Future<Output = Result<T, tonic::Status>>) -> Result<T, String> {
    match tokio::time::timeout(Duration::from_secs(5), f).await {
        Ok(Ok(x)) => Ok(x),
        Ok(Err(s)) => Err(format!("{:?}: {}", s.code(), s.message())),
        Err(_) => Err("no answer in 5 s".into()),
    }
}

pub async fn with_timeout<T>(f: impl std::future::Future<Output = Result<T, tonic::Status>>) -> Option<T> {
    timed(f).await.ok()
}

pub async fn serving_version(admin: &str) -> Option<String> {
    let listed = async {
        let mut c = pb::policy_admin_client::PolicyAdminClient::connect(admin.to_string())
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        c.list_policies(pb::ListPoliciesRequest {}).await
    };
    with_timeout(listed).await.map(|r| r.into_inner().serving_version)
}

/// Counts of each id in a directory's records.
pub fn counts<T: nudge_records::Record>(dir: &Path) -> HashMap<String, usize> {
    let (records, malformed) = read_all::<T>(dir).unwrap();
    assert_eq!(malformed, 0, "{}", dir.display());
    let mut c = HashMap::new();
    for r in &records {
        *c.entry(r.id().to_string()).or_insert(0) += 1;
    }
    c
}

/// A regular customer (consenting, 100.00 spent so far) asks about the X1's battery on the web.
pub fn battery_question(conv: &str, customer_id: &str) -> pb::TurnRequest {
    pb::TurnRequest {
        conversation_id: conv.into(),
        customer_id: customer_id.into(),
        channel: "web".into(),
        text: "How long does the X1 phone battery last?".into(),
        customer: Some(pb::Customer {
            tier: "regular".into(),
            lifetime_value_cents: 10_000,
            marketing_consent: true,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// One request to the console at `console` (`http://addr`), signed in as `user` with
/// `password`: the answer's status and JSON body.
pub async fn console_call(
    console: &str,
    (user, password): (&str, &str),
    method: &str,
    path: &str,
    body: &str,
) -> (u16, serde_json::Value) {
    let addr: std::net::SocketAddr = console.trim_start_matches("http://").parse().unwrap();
    let request = |method: &str, path: &str, cookie: &str, body: &str| {
        format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let login = serde_json::json!({"user": user, "password": password}).to_string();
    let login = nudge_testkit::http(addr, &request("POST", "/api/login", "", &login)).await;
    let cookie = login
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .and_then(|c| c.split(';').next())
        .unwrap_or_else(|| panic!("no session: {login}"))
        .to_string();
    let answer = nudge_testkit::http(addr, &request(method, path, &cookie, body)).await;
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status: {answer}"));
    let (_, json) = answer.split_once("\r\n\r\n").unwrap();
    let json = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {answer}"));
    (status, json)
}

/// Writes a console users file at `path`: each `(name, role, password)` with its argon2id hash.
pub fn users_file(path: &Path, users: &[(&str, &str, &str)]) {
    let text: String = users
        .iter()
        .map(|(name, role, password)| {
            format!(
                "[[user]]\nname = \"{name}\"\nrole = \"{role}\"\npassword_hash = \"{}\"\n\n",
                nudge_inference::console::hash_password(password).unwrap()
            )
        })
        .collect();
    std::fs::write(path, text).unwrap();
}

/// A copy of the shipped default bundle as `version` in `dir`: its encoder and heads linked, its
/// manifest as `edit` leaves it (a label renamed, say).
pub fn default_bundle_as(dir: &Path, version: &str, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let src = std::fs::canonicalize("models/bundles/default").unwrap();
    std::fs::create_dir_all(dir).unwrap();
    for f in ["encoder", "heads.safetensors"] {
        std::os::unix::fs::symlink(src.join(f), dir.join(f)).unwrap();
    }
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(src.join("manifest.json")).unwrap()).unwrap();
    manifest["version"] = version.into();
    edit(&mut manifest);
    std::fs::write(dir.join("manifest.json"), serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
    dir.to_path_buf()
}

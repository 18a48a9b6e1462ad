//! A simulated shop on loopback: a real server (`examples/sim/nudge.toml`, the default model)
//! and, for learning arms, a real optimizer pushing to its admin listener, with simulated
//! customers (`nudge-sim`) talking to them over gRPC. Shared by `benches/rl.rs` and
//! `tests/rl.rs`, so the test checks what the benchmark measures.
#![allow(dead_code)]
use nudge_optimizer::learn::LearnConfig;
use nudge_optimizer::rl::RlConfig;
use nudge_optimizer::service::{OptimizerConfig, RunningOptimizer};
use nudge_policy::{Exploration, FeatureSchema};
use nudge_records::Durability;
use nudge_sim::{ConversationResult, Messages, SimConfig, Target, World};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The simulated shop's folder.
pub const SHOP: &str = "examples/sim";

/// What the policies read: where the conversation stands, who the customer is, what they said.
pub fn schema() -> FeatureSchema {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    FeatureSchema {
        context: s(&[
            "stage=open",
            "stage=issue",
            "stage=resolved",
            "turn",
            "offers_shown",
            "tier=gold",
            "tier=regular",
            "sentiment=negative",
            "intent=thanks_bye",
            "intent=presales_question",
            "intent=price",
            "out_of_scope",
        ]),
        offer: s(&["offer=thanks_coupon", "offer=warranty_1y", "offer=spend_save"]),
        allow_none: true,
    }
}

/// How a policy is made.
#[derive(Debug, Clone)]
pub enum Arm {
    /// No policy: the rules' highest-priority offer at the first chance.
    Rules,
    /// The optimizer's linear bandit, each decision alone.
    Bandit,
    /// The optimizer's RL learner over conversations.
    Rl(RlConfig),
}

impl Arm {
    pub fn name(&self) -> &'static str {
        match self {
            Arm::Rules => "rules only",
            Arm::Bandit => "bandit",
            Arm::Rl(rl) => match rl.learner {
                nudge_optimizer::rl::Learner::Cql => "RL (CQL)",
                nudge_optimizer::rl::Learner::PolicyGradient => "RL (policy gradient)",
            },
        }
    }

    fn learn(&self, seed: u64) -> Option<LearnConfig> {
        let base = LearnConfig {
            exploration: Exploration::EpsilonGreedy { epsilon: 0.1 },
            min_examples: 50,
            seed,
            ..Default::default()
        };
        match self {
            Arm::Rules => None,
            Arm::Bandit => Some(base),
            Arm::Rl(rl) => Some(LearnConfig {
                rl: Some(rl.clone()),
                ..base
            }),
        }
    }
}

/// The RL settings the benchmark and the test use: quick on 2 cores.
pub fn rl_config() -> RlConfig {
    RlConfig {
        gamma: 0.95,
        hidden: vec![32],
        steps: 1500,
        batch_size: 256,
        learning_rate: 3e-3,
        ..Default::default()
    }
}

/// The policy-gradient learner with the same budget, for comparison.
pub fn pg_config() -> RlConfig {
    RlConfig {
        learner: nudge_optimizer::rl::Learner::PolicyGradient,
        batch_size: 64,
        learning_rate: 1e-2,
        ..rl_config()
    }
}

/// The simulated customers of `examples/sim/sim.toml` and their messages.
pub fn customers() -> (World, Messages) {
    let cfg = SimConfig::load(&Path::new(SHOP).join("sim.toml")).expect("examples/sim/sim.toml");
    let messages = Messages::load(&cfg).expect("the message files of sim.toml");
    (World::new(cfg).expect("the simulated world"), messages)
}

/// A server (and an optimizer for learning arms) in a temporary folder.
pub struct Lab {
    pub dir: tempfile::TempDir,
    pub server: nudge_inference::RunningServer,
    pub optimizer: Option<RunningOptimizer>,
    pub target: Target,
    window: Duration,
}

impl Lab {
    /// Starts the arm's processes with `reward` (a reward file) and `seed`.
    pub async fn start(arm: &Arm, reward: &Path, seed: u64) -> Lab {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let text = std::fs::read_to_string(Path::new(SHOP).join("nudge.toml")).expect("examples/sim/nudge.toml");
        let mut config: nudge_inference::ServeConfig = toml::from_str(&text).expect("a server configuration");
        config.grpc_addr = "127.0.0.1:0".parse().unwrap();
        config.admin_addr = "127.0.0.1:0".parse().unwrap();
        config.metrics_addr = "127.0.0.1:0".parse().unwrap();
        let d = config.decisions.as_mut().expect("[decisions]");
        d.policy_registry = dir.path().join("server-policies");
        d.decision_log = dir.path().join("decisions");
        // A benchmark machine's fsyncs are not what is measured here.
        d.durability = Durability::Never;
        let server = nudge_inference::start(config)
            .await
            .expect("the simulated shop's server starts");
        let window_ms = nudge_optimizer::reward::Reward::load(reward)
            .expect("the reward file")
            .window_ms;
        let optimizer = match arm.learn(seed) {
            None => None,
            Some(learn) => {
                let cfg = OptimizerConfig {
                    grpc_addr: "127.0.0.1:0".parse().unwrap(),
                    decision_logs: vec![dir.path().join("decisions")],
                    outcome_log: dir.path().join("outcomes"),
                    audit_log: dir.path().join("audit"),
                    registry: dir.path().join("registry"),
                    servers: vec![format!("http://{}", server.admin_addr)],
                    reward_file: reward.to_path_buf(),
                    train_every_outcomes: u64::MAX,
                    train_every_ms: 86_400_000,
                    durability: Durability::Never,
                    learn,
                    initial_schema: Some(schema()),
                    ..Default::default()
                };
                Some(
                    nudge_optimizer::service::start(cfg)
                        .await
                        .expect("the optimizer starts"),
                )
            }
        };
        let target = Target {
            server: format!("http://{}", server.grpc_addr),
            optimizer: optimizer.as_ref().map(|o| format!("http://{}", o.grpc_addr)),
            run: format!("s{seed}"),
        };
        Lab {
            dir,
            server,
            optimizer,
            target,
            window: Duration::from_millis(window_ms),
        }
    }

    /// `n` conversations, `concurrency` at a time; `batch` distinguishes their ids.
    pub async fn converse(
        &mut self,
        world: &World,
        messages: &Messages,
        n: usize,
        concurrency: usize,
        seed: u64,
        batch: usize,
    ) -> Vec<ConversationResult> {
        let mut target = self.target.clone();
        target.run = format!("{}-b{batch}", target.run);
        nudge_sim::run(
            world,
            messages,
            &target,
            n,
            concurrency,
            seed ^ ((batch as u64 + 1) * 7919),
        )
        .await
        .expect("simulated conversations")
    }

    /// One training round, after the reward window of the last conversation has closed: the
    /// version pushed, if any, and the seconds the round took (the wait not counted).
    pub async fn train(&self) -> (Option<String>, f64) {
        let Some(o) = self.optimizer.as_ref() else {
            return (None, 0.0);
        };
        tokio::time::sleep(self.window + Duration::from_millis(100)).await;
        let t0 = std::time::Instant::now();
        let pushed = o.train_now().await.expect("a training round");
        (pushed, t0.elapsed().as_secs_f64())
    }

    /// The files the optimizer wrote (audit log…).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

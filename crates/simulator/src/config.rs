//! `sim.toml`: who the customers are and how they react. Every probability the simulator
//! draws is here, so a data scientist can read what a result assumed and change it.
//!
//! ```toml
//! seed = 7
//! server_config = "nudge.toml"   # its [strategy.guardrails] are the caps the optimum respects
//! catalog = "catalog.toml"       # the server's catalog: the sim prices orders as the server does
//! cost_share = 0.6               # cost of goods as a share of list price (margin = final − cost)
//!
//! [messages]                     # JSON lines {"text", "label"} per language
//! en = "../../models/data/cs_intent/eval_en.jsonl"
//! zh = "../../models/data/cs_intent/eval_zh.jsonl"
//!
//! [[segment]]
//! name = "after_sales"
//! share = 0.5
//! need = "service"               # service: a problem first, then thanks | purchase: browsing
//! intents = ["refund", "delivery"]   # what its messages are about while the need is open
//! turns = 2                      # customer messages before the bot solves it (or browsing ends)
//! tier = "gold"
//! lifetime_value = 800000        # cents
//! channel = "app"
//! zh_share = 0.5
//! cart = ["X1-128"]
//! patience = 2                   # annoyance a customer takes before leaving
//! price_sensitivity = 0.5        # 0..1: raises offer acceptance, lowers buying at list price
//! base_conversion = 0.1          # buys the cart at list price without an offer (× (1 − sensitivity))
//!
//! [offers.warranty_1y]
//! appeal = 0.4                   # acceptance at the right moment, before sensitivity
//!
//! [reaction]
//! accept_while_open = 0.1        # acceptance multiplier while a problem is open
//! annoyance_while_open = 2       # patience an offer costs while a problem is open
//! annoyance = 1                  # patience a declined offer costs otherwise
//! opt_out_while_open = 0.2       # chance a declined offer during an open problem makes them opt out
//! complaint_when_gone = 0.5      # chance of a complaint when patience runs out (the customer leaves)
//! convert_after_accept = 0.8     # chance an accepted offer becomes an order
//! ```
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Why the simulator cannot start or run.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A file cannot be read.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A setting is wrong.
    #[error("{path}: {reason}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the field.
        reason: String,
    },
    /// A call to the server or the optimizer failed.
    #[error("{call}: {status}")]
    Rpc {
        /// The call.
        call: &'static str,
        /// What it answered.
        status: Box<tonic::Status>,
    },
    /// A connection could not be made.
    #[error("connecting to {addr}: {source}")]
    Connect {
        /// Where.
        addr: String,
        /// Why not.
        source: tonic::transport::Error,
    },
}

/// What a customer came for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Need {
    /// A problem to solve (the bot solves it after `turns` messages; then the customer thanks).
    Service,
    /// Browsing before buying.
    Purchase,
}

/// A kind of customer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Segment {
    /// Its name in reports.
    pub name: String,
    /// Share of conversations, relative to the other segments'.
    pub share: f64,
    /// What they came for.
    pub need: Need,
    /// Intent labels of their messages while the need is open (message pool labels).
    pub intents: Vec<String>,
    /// Customer messages while the need is open.
    pub turns: u8,
    /// Tier sent with every turn.
    #[serde(default)]
    pub tier: String,
    /// Lifetime value sent with every turn, cents.
    #[serde(default)]
    pub lifetime_value: i64,
    /// Channel of the conversation.
    pub channel: String,
    /// Share of conversations in Chinese (the rest in English).
    #[serde(default = "half")]
    pub zh_share: f64,
    /// SKUs in the cart (quantity 1 each).
    #[serde(default)]
    pub cart: Vec<String>,
    /// Annoyance taken before leaving.
    pub patience: u8,
    /// 0..1.
    pub price_sensitivity: f64,
    /// Chance of buying the cart at list price without an accepted offer.
    pub base_conversion: f64,
}

fn half() -> f64 {
    0.5
}

/// How customers take one offer.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Appeal {
    /// Acceptance at the right moment, before price sensitivity.
    pub appeal: f64,
}

/// How customers react to offers.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reaction {
    /// Acceptance multiplier while a problem is open.
    pub accept_while_open: f64,
    /// Patience an offer costs while a problem is open.
    pub annoyance_while_open: u8,
    /// Patience a declined offer costs otherwise.
    pub annoyance: u8,
    /// Chance a declined offer during an open problem makes the customer opt out.
    pub opt_out_while_open: f64,
    /// Chance of a complaint when patience runs out.
    pub complaint_when_gone: f64,
    /// Chance an accepted offer becomes an order.
    pub convert_after_accept: f64,
}

/// Where the customers' messages come from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageFiles {
    /// English messages (JSON lines with `text` and `label`).
    pub en: PathBuf,
    /// Chinese messages.
    pub zh: PathBuf,
}

/// `sim.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimConfig {
    /// Seed of every draw.
    pub seed: u64,
    /// The server's configuration, for its guardrails.
    pub server_config: PathBuf,
    /// The catalog the server serves, for prices (the same quote the server makes).
    pub catalog: PathBuf,
    /// Cost of goods as a share of list price.
    pub cost_share: f64,
    /// Message pools.
    pub messages: MessageFiles,
    /// Kinds of customers.
    pub segment: Vec<Segment>,
    /// How each offer appeals, by offer id.
    pub offers: BTreeMap<String, Appeal>,
    /// How customers react.
    pub reaction: Reaction,
}

impl SimConfig {
    /// Reads and checks `path`; relative paths in it are relative to its folder.
    pub fn load(path: &Path) -> Result<SimConfig, SimError> {
        let text = std::fs::read_to_string(path).map_err(|source| SimError::File {
            path: path.to_path_buf(),
            source,
        })?;
        let mut cfg: SimConfig = toml::from_str(&text).map_err(|e| SimError::Config {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut cfg.server_config,
            &mut cfg.catalog,
            &mut cfg.messages.en,
            &mut cfg.messages.zh,
        ] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        cfg.validate().map_err(|reason| SimError::Config {
            path: path.to_path_buf(),
            reason,
        })?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), String> {
        let share = |v: f64| (0.0..=1.0).contains(&v);
        if self.segment.is_empty() {
            return Err("segment: at least one".into());
        }
        if !share(self.cost_share) {
            return Err("cost_share: a share in [0, 1]".into());
        }
        for s in &self.segment {
            let name = &s.name;
            if !(s.share > 0.0 && s.share.is_finite()) {
                return Err(format!("segment `{name}`.share: a positive number"));
            }
            if !share(s.price_sensitivity) || !share(s.base_conversion) || !share(s.zh_share) {
                return Err(format!(
                    "segment `{name}`: price_sensitivity, base_conversion and zh_share are shares in [0, 1]"
                ));
            }
            if s.turns == 0 || s.turns > 20 {
                return Err(format!("segment `{name}`.turns: 1..=20"));
            }
            if s.patience == 0 {
                return Err(format!("segment `{name}`.patience: at least 1"));
            }
            if s.intents.is_empty() {
                return Err(format!("segment `{name}`.intents: at least one label"));
            }
        }
        for (id, a) in &self.offers {
            if !share(a.appeal) {
                return Err(format!("offers.{id}.appeal: a share in [0, 1]"));
            }
        }
        let r = &self.reaction;
        for (f, v) in [
            ("accept_while_open", r.accept_while_open),
            ("opt_out_while_open", r.opt_out_while_open),
            ("complaint_when_gone", r.complaint_when_gone),
            ("convert_after_accept", r.convert_after_accept),
        ] {
            if !share(v) {
                return Err(format!("reaction.{f}: a share in [0, 1]"));
            }
        }
        Ok(())
    }

    /// The server's guardrails (`[strategy.guardrails]` of `server_config`; defaults if absent).
    pub fn guardrails(&self) -> Result<nudge_strategy::guardrails::Guardrails, SimError> {
        let path = &self.server_config;
        let text = std::fs::read_to_string(path).map_err(|source| SimError::File {
            path: path.clone(),
            source,
        })?;
        let bad = |reason: String| SimError::Config {
            path: path.clone(),
            reason,
        };
        let v: toml::Value = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
        match v.get("strategy").and_then(|s| s.get("guardrails")) {
            Some(g) => g.clone().try_into().map_err(|e: toml::de::Error| bad(e.to_string())),
            None => Ok(Default::default()),
        }
    }
}

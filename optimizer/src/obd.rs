//! The Open Bandit Dataset (Saito et al., 2021: ZOZOTOWN fashion recommendations, logged with
//! the propensity of every shown item) as Nudge logs, so `replay` judges policies on real
//! logged data with the same code that judges them in production.
//!
//! Each row of `<campaign>.csv` becomes one logged decision: the user's features and the
//! recommendation slot are the context, every item of the campaign is a candidate (its item
//! features and the row's user-item affinity), the shown item is the chosen option with its
//! logged propensity, and a click becomes a `click` outcome. Only uniform-random logs are
//! imported: a decision record holds the probability of every option, and for the Bernoulli-TS
//! logs the data set has only the shown item's.
use nudge_policy::version::FORMAT;
use nudge_policy::{Exploration, FeatureSchema, Policy, PolicyManifest, PolicyVersion, Registry, RewardModel};
use nudge_records::{
    DecisionRecord, Durability, EventLog, LogConfig, LoggedOffer, OutcomeKind, OutcomeRecord, DECISION_SCHEMA,
    OUTCOME_SCHEMA,
};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ObdError {
    #[error("{path}: {reason}")]
    Data { path: PathBuf, reason: String },
    #[error(
        "campaign `{campaign}`, row {row}: propensity {propensity} is not 1/{items}; only uniform-random logs \
         can be imported (the other items' probabilities are not in the data set)"
    )]
    NotUniform {
        campaign: String,
        row: usize,
        propensity: f64,
        items: usize,
    },
    #[error("{0}")]
    Output(String),
    #[error("writing the logs: {0}")]
    Log(#[from] nudge_records::LogError),
    #[error("writing the registry: {0}")]
    Registry(#[from] nudge_policy::PolicyError),
}

fn data_err(path: &Path, reason: impl Into<String>) -> ObdError {
    ObdError::Data {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// One row of a campaign file.
#[derive(Debug, Clone)]
pub struct ObdRow {
    pub time_ms: u64,
    pub item: usize,
    pub position: u32,
    pub click: bool,
    pub propensity: f64,
    pub user: [String; 4],
    /// `user-item_affinity_<item>` for every item.
    pub affinity: Vec<f64>,
}

/// A campaign: its item features (`item_context.csv`) and its logged rows, in time order.
#[derive(Debug, Clone)]
pub struct Campaign {
    pub name: String,
    /// Offer features of each item, by name (categorical values as `name=value` = 1).
    pub items: Vec<BTreeMap<String, f64>>,
    pub rows: Vec<ObdRow>,
}

/// A categorical value as a one-hot feature name.
fn category(column: &str, value: &str) -> String {
    format!("{column}={value}")
}

fn read_csv(path: &Path) -> Result<(csv::StringRecord, Vec<csv::StringRecord>), ObdError> {
    let mut r = csv::Reader::from_path(path).map_err(|e| data_err(path, e.to_string()))?;
    let header = r.headers().map_err(|e| data_err(path, e.to_string()))?.clone();
    let rows = r
        .records()
        .enumerate()
        .map(|(i, rec)| rec.map_err(|e| data_err(path, format!("line {}: {e}", i + 2))))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((header, rows))
}

/// Looks up named columns once, then reads typed fields with errors that name line and column.
struct Columns<'a> {
    path: &'a Path,
    header: &'a csv::StringRecord,
}

impl Columns<'_> {
    fn index(&self, name: &str) -> Result<usize, ObdError> {
        self.header
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| data_err(self.path, format!("no column `{name}`")))
    }

    fn parse<T: std::str::FromStr>(&self, rec: &csv::StringRecord, line: usize, col: usize) -> Result<T, ObdError> {
        let raw = rec.get(col).unwrap_or("");
        raw.trim().parse().map_err(|_| {
            data_err(
                self.path,
                format!("line {line}, column `{}`: cannot read {raw:?}", &self.header[col]),
            )
        })
    }
}

fn parse_time(path: &Path, line: usize, s: &str) -> Result<u64, ObdError> {
    chrono::DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f%:z")
        .ok()
        .and_then(|t| u64::try_from(t.timestamp_millis()).ok())
        .ok_or_else(|| data_err(path, format!("line {line}, column `timestamp`: cannot read {s:?}")))
}

impl Campaign {
    /// Reads `<dir>/item_context.csv` and the campaign file beside it (`all.csv`, `men.csv`…).
    pub fn read(dir: &Path) -> Result<Self, ObdError> {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| data_err(dir, "not a campaign directory"))?;
        let items = read_items(&dir.join("item_context.csv"))?;
        let path = dir.join(format!("{name}.csv"));
        let (header, records) = read_csv(&path)?;
        let cols = Columns {
            path: &path,
            header: &header,
        };
        let (c_time, c_item, c_pos, c_click, c_prop) = (
            cols.index("timestamp")?,
            cols.index("item_id")?,
            cols.index("position")?,
            cols.index("click")?,
            cols.index("propensity_score")?,
        );
        let mut c_user = [0usize; 4];
        for (k, c) in c_user.iter_mut().enumerate() {
            *c = cols.index(&format!("user_feature_{k}"))?;
        }
        let c_aff = (0..items.len())
            .map(|i| cols.index(&format!("user-item_affinity_{i}")))
            .collect::<Result<Vec<_>, _>>()?;
        let mut rows = Vec::with_capacity(records.len());
        for (i, rec) in records.iter().enumerate() {
            let line = rec.position().map_or(i + 2, |p| p.line() as usize);
            let item: usize = cols.parse(rec, line, c_item)?;
            let propensity: f64 = cols.parse(rec, line, c_prop)?;
            if item >= items.len() {
                return Err(data_err(
                    &path,
                    format!("line {line}: item_id {item} is not in item_context.csv"),
                ));
            }
            if !(propensity > 0.0 && propensity <= 1.0) {
                return Err(data_err(
                    &path,
                    format!("line {line}: propensity_score {propensity} is not in (0, 1]"),
                ));
            }
            let click: u8 = cols.parse(rec, line, c_click)?;
            if click > 1 {
                return Err(data_err(&path, format!("line {line}: click {click} is not 0 or 1")));
            }
            rows.push(ObdRow {
                time_ms: parse_time(&path, line, rec.get(c_time).unwrap_or(""))?,
                item,
                position: cols.parse(rec, line, c_pos)?,
                click: click == 1,
                propensity,
                user: c_user.map(|c| rec.get(c).unwrap_or("").to_string()),
                affinity: c_aff
                    .iter()
                    .map(|&c| cols.parse(rec, line, c))
                    .collect::<Result<_, _>>()?,
            });
        }
        // Stable: rows logged in the same millisecond keep their file order.
        rows.sort_by_key(|r| r.time_ms);
        Ok(Self { name, items, rows })
    }

    pub fn clicks(&self) -> usize {
        self.rows.iter().filter(|r| r.click).count()
    }

    /// Click rate of rows `[from, to)` (time order).
    pub fn click_rate(&self, from: usize, to: usize) -> f64 {
        let rows = &self.rows[from.min(self.rows.len())..to.min(self.rows.len())];
        rows.iter().filter(|r| r.click).count() as f64 / rows.len().max(1) as f64
    }

    /// Context: the slot and each user feature, one-hot. Offers: the item features (numeric
    /// `item_feature_0`, the categorical ones one-hot) and the user-item affinity.
    pub fn schema(&self) -> FeatureSchema {
        let mut context = BTreeSet::new();
        for r in &self.rows {
            context.insert(format!("position={}", r.position));
            for (k, v) in r.user.iter().enumerate() {
                context.insert(category(&format!("user_feature_{k}"), v));
            }
        }
        let mut offer: BTreeSet<String> = self.items.iter().flat_map(|f| f.keys().cloned()).collect();
        offer.insert("affinity".into());
        FeatureSchema {
            context: context.into_iter().collect(),
            offer: offer.into_iter().collect(),
            allow_none: false,
        }
    }
}

fn read_items(path: &Path) -> Result<Vec<BTreeMap<String, f64>>, ObdError> {
    let (header, records) = read_csv(path)?;
    let cols = Columns { path, header: &header };
    let c_id = cols.index("item_id")?;
    let c0 = cols.index("item_feature_0")?;
    let cats: Vec<(usize, String)> = header
        .iter()
        .enumerate()
        .filter(|(_, h)| h.starts_with("item_feature_") && *h != "item_feature_0")
        .map(|(i, h)| (i, h.to_string()))
        .collect();
    let mut items = vec![None; records.len()];
    for (i, rec) in records.iter().enumerate() {
        let line = rec.position().map_or(i + 2, |p| p.line() as usize);
        let id: usize = cols.parse(rec, line, c_id)?;
        let slot = items
            .get_mut(id)
            .ok_or_else(|| data_err(path, format!("line {line}: item_id {id} out of 0..{}", records.len())))?;
        let mut f = BTreeMap::new();
        f.insert("item_feature_0".to_string(), cols.parse::<f64>(rec, line, c0)?);
        for (c, name) in &cats {
            f.insert(category(name, rec.get(*c).unwrap_or("")), 1.0);
        }
        *slot = Some(f);
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, f)| f.ok_or_else(|| data_err(path, format!("item_id {i} is missing"))))
        .collect()
}

/// A decision as the servers log it (the fields `replay` reads, and the rest left empty).
#[derive(Debug, Clone, Serialize)]
pub struct ImportSummary {
    pub campaign: String,
    pub decisions: usize,
    pub items: usize,
    pub clicks: usize,
    pub click_rate: f64,
    pub context_features: usize,
    pub offer_features: usize,
    pub decisions_dir: PathBuf,
    pub outcomes_dir: PathBuf,
    pub registry: PathBuf,
}

/// Writes a uniform-random campaign under `out` as `decisions/`, `outcomes/` and a registry
/// whose version `logging` is the uniform policy that logged it (so `replay` judges a learned
/// policy against it and its IPS estimate equals the observed click rate).
pub async fn import(campaign: &Campaign, out: &Path) -> Result<ImportSummary, ObdError> {
    let n = campaign.items.len();
    let uniform = 1.0 / n as f64;
    if let Some((i, r)) = campaign
        .rows
        .iter()
        .enumerate()
        .find(|(_, r)| (r.propensity - uniform).abs() > 1e-3 * uniform)
    {
        return Err(ObdError::NotUniform {
            campaign: campaign.name.clone(),
            row: i,
            propensity: r.propensity,
            items: n,
        });
    }
    let (decisions_dir, outcomes_dir, registry) = (out.join("decisions"), out.join("outcomes"), out.join("registry"));
    for d in [&decisions_dir, &outcomes_dir, &registry] {
        if d.exists() {
            return Err(ObdError::Output(format!(
                "{} exists: import into an empty directory",
                d.display()
            )));
        }
    }
    let open = |dir: &PathBuf, prefix: &str| EventLog::open(LogConfig::new(dir, prefix, Durability::Never));
    let (decisions, outcomes) = (open(&decisions_dir, "decisions")?, open(&outcomes_dir, "outcomes")?);
    let schema = campaign.schema();
    let probabilities = vec![uniform; n];
    for (i, r) in campaign.rows.iter().enumerate() {
        let decision_id = format!("obd-{}-{i}", campaign.name);
        let mut context = BTreeMap::from([(format!("position={}", r.position), 1.0)]);
        for (k, v) in r.user.iter().enumerate() {
            context.insert(category(&format!("user_feature_{k}"), v), 1.0);
        }
        let candidates = campaign
            .items
            .iter()
            .zip(&r.affinity)
            .enumerate()
            .map(|(j, (f, &a))| {
                let mut features = f.clone();
                if a != 0.0 {
                    features.insert("affinity".into(), a);
                }
                LoggedOffer {
                    id: format!("item{j}"),
                    features,
                }
            })
            .collect();
        let rec = DecisionRecord {
            schema: DECISION_SCHEMA,
            decision_id: decision_id.clone(),
            time_ms: r.time_ms,
            conversation_id: String::new(),
            customer: String::new(),
            channel: "obd".into(),
            policy_version: "logging".into(),
            model_version: String::new(),
            context,
            candidates,
            offer_id: format!("item{}", r.item),
            option: r.item,
            propensity: r.propensity,
            probabilities: probabilities.clone(),
            scores: vec![],
            how: "logged".into(),
        };
        decisions.append(&rec).await?;
        if r.click {
            let o = OutcomeRecord {
                schema: OUTCOME_SCHEMA,
                event_id: format!("{decision_id}-click"),
                decision_id,
                kind: OutcomeKind::Click,
                revenue: 0.0,
                margin: 0.0,
                time_ms: r.time_ms,
                received_ms: r.time_ms,
                late: false,
            };
            outcomes.append(&o).await?;
        }
    }
    let logging = PolicyVersion {
        manifest: PolicyManifest {
            format: FORMAT,
            version: "logging".into(),
            parent: None,
            created_unix_ms: campaign.rows.first().map_or(0, |r| r.time_ms),
            schema: schema.clone(),
            exploration: Exploration::EpsilonGreedy { epsilon: 1.0 },
            reward_sha256: None,
            training_window: None,
            ope: None,
            files: Default::default(),
        },
        policy: Policy {
            model: RewardModel::prior(schema.dim(), 1.0),
            schema: schema.clone(),
            exploration: Exploration::EpsilonGreedy { epsilon: 1.0 },
            projection: None,
        },
    };
    let reg = Registry::open(&registry)?;
    reg.publish(&logging)?;
    reg.set_serving("logging")?;
    Ok(ImportSummary {
        campaign: campaign.name.clone(),
        decisions: campaign.rows.len(),
        items: n,
        clicks: campaign.clicks(),
        click_rate: campaign.click_rate(0, campaign.rows.len()),
        context_features: schema.context.len(),
        offer_features: schema.offer.len(),
        decisions_dir,
        outcomes_dir,
        registry,
    })
}

//! Experiments in the console: started, watched and stopped (or shipped) by operators.
//!
//! Every experiment ever started is kept in `<dir>/experiments.json` (written atomically) with
//! its definition, who started and stopped it, and — once stopped — its results as they were
//! then; a running one is served again after a restart. The results are computed from the KPIs
//! (`crate::kpi`), which the server rebuilds from its event log, so a restart loses neither the
//! experiment nor its customers.
//!
//! In a cluster an experiment runs on every server (`crate::cluster::experiment`), whichever
//! console started it; each console records one that reached it so (see `Console::sync_experiments`),
//! and any of them may stop or ship it.
//!
//! Shipping an arm writes what the arm served: its rules version becomes a new current rules
//! version (through the same checks and change log as an edit), its policy version becomes the
//! serving policy. An arm that served no learned policy cannot be shipped from here: there is
//! no "no policy" version to serve.
use super::{files, ApiError};
use crate::experiment::{balance_p_value, cuped, sequential, srm_p_value, ArmPolicy, ExperimentSpec, Paired, Sample};
use crate::kpi::{ArmSamples, Dimension, Kpis, Rates, PRE_EXPOSURE_DAYS};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The verdicts' error rate.
pub(crate) const ALPHA: f64 = 0.05;
/// A split this unlikely by chance is a sample-ratio mismatch.
pub(crate) const SRM_P: f64 = 0.001;

/// One experiment in the store.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Stored {
    pub spec: ExperimentSpec,
    /// Unix ms; `None` while it runs.
    pub stopped_ms: Option<u64>,
    #[serde(default)]
    pub stopped_by: String,
    /// The arm shipped when it stopped, if one was.
    #[serde(default)]
    pub shipped: Option<String>,
    /// The results when it stopped.
    #[serde(default)]
    pub results: Option<Results>,
    /// Each arm's rules text as it was served (None: the serving rules). Stores written before
    /// this field have none: their arms' texts are the console's rules versions.
    #[serde(default)]
    pub rules: Vec<Option<String>>,
}

impl Stored {
    /// Arm `i`'s rules text: as served, else the console's version the arm names.
    pub(crate) fn arm_rules(&self, i: usize, versions: &super::TextVersions) -> Result<Option<String>, ApiError> {
        if self.rules.len() == self.spec.arms.len() {
            return Ok(self.rules[i].clone());
        }
        match self.spec.arms.get(i).and_then(|a| a.rules_version) {
            Some(v) => Ok(Some(versions.get(v)?.text)),
            None => Ok(None),
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct StoreFile {
    format: u32,
    experiments: Vec<Stored>,
}

/// `<dir>/experiments.json`.
pub(crate) struct Experiments {
    path: PathBuf,
}

impl Experiments {
    pub(crate) fn open(dir: &Path) -> Result<Self, ApiError> {
        std::fs::create_dir_all(dir).map_err(|e| ApiError::Internal(format!("{}: {e}", dir.display())))?;
        let me = Self {
            path: dir.join("experiments.json"),
        };
        me.all()?;
        Ok(me)
    }

    /// Every experiment, oldest first.
    pub(crate) fn all(&self) -> Result<Vec<Stored>, ApiError> {
        match std::fs::read(&self.path) {
            Ok(b) => serde_json::from_slice::<StoreFile>(&b)
                .map(|f| f.experiments)
                .map_err(|e| ApiError::Internal(format!("{}: {e}", self.path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(ApiError::Internal(format!("{}: {e}", self.path.display()))),
        }
    }

    pub(crate) fn save(&self, experiments: Vec<Stored>) -> Result<(), ApiError> {
        let file = StoreFile { format: 1, experiments };
        let bytes = serde_json::to_vec_pretty(&file).map_err(|e| ApiError::Internal(e.to_string()))?;
        files::write_atomic(&self.path, &bytes)
    }

    /// The running one, if any.
    pub(crate) fn running(&self) -> Result<Option<Stored>, ApiError> {
        Ok(self.all()?.into_iter().find(|e| e.stopped_ms.is_none()))
    }
}

/// One arm's results.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ArmResult {
    pub arm: String,
    pub weight: u32,
    /// Customers (the unit of the split).
    pub customers: u64,
    /// Purchases per customer in the days before the experiment reached them (0 in results
    /// stored before it was kept).
    #[serde(default)]
    pub purchases_before: f64,
    /// Share of customers who bought, with its 95 % interval.
    pub conversion: f64,
    pub conversion_low: f64,
    pub conversion_high: f64,
    /// Revenue per customer, with its 95 % interval.
    pub revenue_per_customer: f64,
    pub revenue_low: f64,
    pub revenue_high: f64,
    /// Turn-level rates of the arm (offers, accepts, hand-offs, complaints…).
    pub rates: Rates,
    /// Against the control, valid at any look (None for the control, or too few customers).
    pub conversion_vs_control: Option<Seq>,
    pub revenue_vs_control: Option<Seq>,
}

/// [`crate::experiment::Sequential`], stored, with how much the customers' past narrowed it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) struct Seq {
    pub diff: f64,
    pub low: f64,
    pub high: f64,
    pub p_value: f64,
    /// The share of the difference's variance removed by adjusting each customer's outcome for
    /// their purchases in the days before the experiment reached them (0: not adjusted; results
    /// stored before the adjustment have none).
    #[serde(default)]
    pub variance_reduction: f64,
}

/// The treatment against the control, each customer's outcome adjusted for their past where
/// that narrows the comparison.
fn versus(control: &Paired, treatment: &Paired) -> Option<Seq> {
    let (seq, variance_reduction) = match cuped(control, treatment) {
        Some(adj) => (sequential(&adj.control, &adj.treatment, ALPHA)?, adj.variance_reduction),
        None => (sequential(&control.outcome(), &treatment.outcome(), ALPHA)?, 0.0),
    };
    Some(Seq {
        diff: seq.diff,
        low: seq.low,
        high: seq.high,
        p_value: seq.p_value,
        variance_reduction,
    })
}

/// An experiment's results at one look.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Results {
    pub computed_ms: u64,
    pub arms: Vec<ArmResult>,
    /// The χ² p-value of the split against the weights.
    pub srm_p_value: f64,
    /// `srm_p_value` < [`SRM_P`]: the split is broken and no comparison can be trusted.
    pub srm: bool,
    /// The smallest p-value, over the arms against the control, of a difference in purchases
    /// before the experiment at least this large (×(arms − 1), at most 1): arms drawn by a hash
    /// bought alike before. Results stored before it was kept read 1.
    #[serde(default = "one")]
    pub balance_p_value: f64,
    /// `balance_p_value` < [`SRM_P`]: one kind of customer reaches one arm more.
    #[serde(default)]
    pub imbalanced: bool,
    /// What an operator should read from it, in words.
    pub verdict: String,
}

fn one() -> f64 {
    1.0
}

/// The results of `spec` from `kpis` now.
pub(crate) fn results(spec: &ExperimentSpec, kpis: &Kpis, now_ms: u64) -> Results {
    let samples = kpis.arms(&spec.id);
    let rows = kpis.totals(Dimension::Arm, spec.started_ms, now_ms.saturating_add(1));
    let sample_of = |arm: &str| -> ArmSamples {
        samples
            .iter()
            .find(|s| s.arm == arm)
            .cloned()
            .unwrap_or_else(|| ArmSamples {
                arm: arm.to_string(),
                customers: 0,
                converted: Paired::default(),
                revenue: Paired::default(),
                offers: Sample::default(),
            })
    };
    let control = sample_of(&spec.arms[0].name);
    let arms: Vec<ArmResult> = spec
        .arms
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let s = sample_of(&a.name);
            let (cl, ch) = s.converted.outcome().interval95();
            let (rl, rh) = s.revenue.outcome().interval95();
            let key = format!("{}/{}", spec.id, a.name);
            ArmResult {
                arm: a.name.clone(),
                weight: a.weight,
                customers: s.customers,
                purchases_before: s.converted.mean_x,
                conversion: s.converted.mean_y,
                conversion_low: cl.max(0.0),
                conversion_high: ch.min(1.0),
                revenue_per_customer: s.revenue.mean_y,
                revenue_low: rl,
                revenue_high: rh,
                rates: rows.iter().find(|r| r.key == key).map(|r| r.rates).unwrap_or_default(),
                conversion_vs_control: (i > 0).then(|| versus(&control.converted, &s.converted)).flatten(),
                revenue_vs_control: (i > 0).then(|| versus(&control.revenue, &s.revenue)).flatten(),
            }
        })
        .collect();
    let observed: Vec<u64> = arms.iter().map(|a| a.customers).collect();
    let weights: Vec<u32> = spec.arms.iter().map(|a| a.weight).collect();
    let srm_p_value = srm_p_value(&observed, &weights);
    let srm = srm_p_value < SRM_P;
    // Purchases before, each arm against the control; Bonferroni over the arms.
    let before = |a: &ArmSamples| a.converted.covariate();
    let smallest = (spec.arms.iter().skip(1))
        .map(|a| balance_p_value(&before(&control), &before(&sample_of(&a.name))))
        .fold(1.0f64, f64::min);
    let balance_p_value = (smallest * (spec.arms.len() - 1) as f64).min(1.0);
    let imbalanced = balance_p_value < SRM_P;
    let mut verdict = verdict(&arms, srm, srm_p_value);
    if imbalanced && !srm {
        verdict = format!(
            "The arms' customers bought differently before the experiment (p = {balance_p_value:.2e}): something sends one kind of customer to one arm more. The comparison is adjusted for their purchases, not for whatever sorts them; find why. {verdict}"
        );
    }
    Results {
        computed_ms: now_ms,
        arms,
        srm_p_value,
        srm,
        balance_p_value,
        imbalanced,
        verdict,
    }
}

fn verdict(arms: &[ArmResult], srm: bool, srm_p: f64) -> String {
    if srm {
        return format!(
            "Sample-ratio mismatch (p = {srm_p:.2e}): customers are not split as the weights say. Find why before reading any result."
        );
    }
    let control = &arms[0].arm;
    let mut said = Vec::new();
    for a in &arms[1..] {
        let adjusted = match a.conversion_vs_control {
            Some(s) if s.variance_reduction > 0.0 => format!(
                "; adjusted for each customer's purchases in the {PRE_EXPOSURE_DAYS} days before, as good as {:.0} % more customers",
                100.0 * (1.0 / (1.0 - s.variance_reduction).max(1e-9) - 1.0)
            ),
            _ => String::new(),
        };
        match a.conversion_vs_control {
            Some(s) if s.p_value < ALPHA => said.push(format!(
                "{} converts {} than {control} by {:+.1} points (always-valid 95 % interval {:+.1} to {:+.1}, p = {:.3}{adjusted})",
                a.arm,
                if s.diff > 0.0 { "better" } else { "worse" },
                100.0 * s.diff,
                100.0 * s.low,
                100.0 * s.high,
                s.p_value
            )),
            Some(s) => said.push(format!(
                "{} vs {control}: no difference shown yet ({:+.1} points, interval {:+.1} to {:+.1}, p = {:.2}{adjusted}); keep it running",
                a.arm,
                100.0 * s.diff,
                100.0 * s.low,
                100.0 * s.high,
                s.p_value
            )),
            None => said.push(format!("{}: too few customers yet", a.arm)),
        }
    }
    said.join(". ") + "."
}

/// An arm as the console's form sends it.
#[derive(Debug, Deserialize)]
pub(crate) struct ArmForm {
    pub name: String,
    pub weight: u32,
    #[serde(default)]
    pub rules_version: Option<u32>,
    /// `serving`, `rules_only`, or a policy version.
    #[serde(default)]
    pub policy: String,
    /// Offer titles this arm shows instead of the catalog's.
    #[serde(default)]
    pub wording: Vec<crate::experiment::Wording>,
}

impl ArmForm {
    pub(crate) fn policy(&self) -> ArmPolicy {
        match self.policy.as_str() {
            "" | "serving" => ArmPolicy::Serving,
            "rules_only" => ArmPolicy::RulesOnly,
            v => ArmPolicy::Version(v.to_string()),
        }
    }
}

/// The catalog file's text with each wording's titles written into its offer (comments, order
/// and layout kept): what shipping an arm's wording makes the catalog.
pub(crate) fn worded_catalog(text: &str, wording: &[crate::experiment::Wording]) -> Result<String, ApiError> {
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| ApiError::Internal(format!("the catalog file: {e}")))?;
    let offers = doc
        .get_mut("offer")
        .and_then(|o| o.as_array_of_tables_mut())
        .ok_or_else(|| ApiError::invalid("ship", "the catalog file has no [[offer]] tables"))?;
    for w in wording {
        let offer = offers
            .iter_mut()
            .find(|t| t.get("id").and_then(|v| v.as_str()) == Some(w.offer.as_str()))
            .ok_or_else(|| ApiError::invalid("ship", format!("the catalog has no offer `{}` any more", w.offer)))?;
        for (key, title) in [("title_zh", &w.title_zh), ("title_en", &w.title_en)] {
            if !title.is_empty() {
                offer[key] = toml_edit::value(title.as_str());
            }
        }
    }
    Ok(doc.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiment::{ArmSpec, Wording};
    use nudge_records::{ConversationEvent, EventKind, OutcomeKind, EVENT_SCHEMA};

    /// 400 customers split A/B by parity, after purchases before the experiment by those
    /// `bought_before` picks; each B customer buys in it, every other A customer.
    fn looked_at(bought_before: impl Fn(u64) -> bool) -> Results {
        const DAY: u64 = 86_400_000;
        let event = |t: u64, i: u64, kind: EventKind, experiment: bool| ConversationEvent {
            schema: EVENT_SCHEMA,
            id: format!("{t}-{i}"),
            time_ms: t,
            kind,
            conversation_id: format!("conv-{i}-{t}"),
            customer: format!("c{i}"),
            channel: "app".into(),
            experiment: if experiment { "x1".into() } else { String::new() },
            arm: if !experiment {
                String::new()
            } else if i.is_multiple_of(2) {
                "A".into()
            } else {
                "B".into()
            },
            turn: 1,
            resolved: false,
            intent: String::new(),
            response_ms: 1.0,
            handoff: String::new(),
            decision_id: format!("d-{i}-{t}"),
            offer_id: "o".into(),
            policy_version: "rules".into(),
            outcome: (kind == EventKind::Outcome).then_some(OutcomeKind::Convert),
            revenue_cents: if kind == EventKind::Outcome { 1_000 } else { 0 },
        };
        let kpis = Kpis::new(48);
        for i in 0..400 {
            if bought_before(i) {
                kpis.observe_replayed(&event(10 * DAY, i, EventKind::Outcome, false), 30 * DAY);
            }
            kpis.observe_replayed(&event(20 * DAY, i, EventKind::Turn, true), 30 * DAY);
            if i % 2 == 1 || i % 4 == 0 {
                kpis.observe_replayed(&event(20 * DAY + 1, i, EventKind::Outcome, true), 30 * DAY);
            }
        }
        let arm = |name: &str| ArmSpec {
            name: name.into(),
            weight: 1,
            rules_version: None,
            policy: ArmPolicy::Serving,
            wording: Vec::new(),
        };
        let spec = ExperimentSpec {
            id: "x1".into(),
            name: "test".into(),
            salt: "s".into(),
            arms: vec![arm("A"), arm("B")],
            started_ms: 20 * DAY,
            started_by: "ana".into(),
        };
        results(&spec, &kpis, 30 * DAY)
    }

    #[test]
    fn arms_that_bought_alike_before_pass_and_a_sorted_split_is_flagged() {
        // A quarter of each arm bought before.
        let alike = looked_at(|i| i % 8 < 2);
        for a in &alike.arms {
            assert!(a.customers == 200 && (a.purchases_before - 0.25).abs() < 1e-12, "{a:?}");
        }
        assert!(!alike.imbalanced && alike.balance_p_value > 0.99, "{alike:?}");
        assert!(
            alike.verdict.starts_with("B converts better than A"),
            "{}",
            alike.verdict
        );
        // Only B's customers bought before: something sorts them.
        let sorted = looked_at(|i| i % 4 == 1);
        let before: Vec<f64> = sorted.arms.iter().map(|a| a.purchases_before).collect();
        assert!(before[0] == 0.0 && (before[1] - 0.5).abs() < 1e-12, "{before:?}");
        assert!(sorted.imbalanced && sorted.balance_p_value < 1e-10, "{sorted:?}");
        assert!(
            sorted
                .verdict
                .starts_with("The arms' customers bought differently before the experiment"),
            "{}",
            sorted.verdict
        );
        assert!(!sorted.srm, "200 and 200: the split itself is as the weights say");
    }

    #[test]
    fn shipping_wording_rewrites_only_those_titles_and_keeps_the_file_as_written() {
        let text = "# offers\n[[offer]]\nid = \"a\" # the first\ntitle_en = \"A\"\ntitle_zh = \"甲\"\n\n[[offer]]\nid = \"b\"\ntitle_en = \"B\"\n";
        let w = |offer: &str, en: &str| Wording {
            offer: offer.into(),
            title_zh: String::new(),
            title_en: en.into(),
        };
        let out = worded_catalog(text, &[w("b", "Bee \"quoted\"")]).unwrap();
        assert_eq!(out, text.replace("title_en = \"B\"", "title_en = 'Bee \"quoted\"'"));
        assert!(matches!(
            worded_catalog(text, &[w("c", "C")]),
            Err(ApiError::Invalid { field, .. }) if field == "ship"
        ));
    }
}

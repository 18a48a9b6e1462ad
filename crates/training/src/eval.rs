//! Classification figures for `nudge eval`: accuracy, macro-F1, per-label precision and recall,
//! out-of-scope recall and precision, in-scope accuracy, expected calibration error and the most
//! frequent confusions. `figures` is a pure function of (truth, prediction, confidence) so it can
//! be checked against hand-computed values; `evaluate_bundle` feeds it from a served model.
use crate::data::Task;
use crate::data::{read_examples, Columns, Example};
use crate::error::TrainError;
use nudge_model::batching::sorted_batches;
use nudge_model::bundle::{sha256_hex, stage_copy, FORMAT};
use nudge_model::{BackendKind, Manifest, NluModel, NluOutput, OOS_LABEL};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// One label's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LabelFigures {
    /// The label.
    pub label: String,
    /// Examples whose truth is this label.
    pub support: usize,
    /// Share of predictions of this label that were right.
    pub precision: f64,
    /// Share of this label's examples predicted as it.
    pub recall: f64,
    /// Harmonic mean of precision and recall.
    pub f1: f64,
}

/// Out-of-scope detection figures (only when the data has out-of-scope examples).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OosFigures {
    /// Share of out-of-scope texts called out of scope.
    pub recall: f64,
    /// Share of out-of-scope calls that were right.
    pub precision: f64,
    /// Share of in-scope texts given their right label (a false out-of-scope counts as wrong).
    pub in_scope_accuracy: f64,
}

/// Everything `nudge eval` reports for one data file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Figures {
    /// Examples scored.
    pub examples: usize,
    /// Share predicted right (out of scope counts as a label).
    pub accuracy: f64,
    /// Unweighted mean of the labels' F1.
    pub macro_f1: f64,
    /// Per-label figures, by label name.
    pub labels: Vec<LabelFigures>,
    /// Out-of-scope figures, when the data has out-of-scope examples.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oos: Option<OosFigures>,
    /// Expected calibration error over 15 equal-width confidence bins.
    pub ece: f64,
    /// (truth, prediction, count), most frequent first, at most 10.
    pub top_confusions: Vec<(String, String, usize)>,
}

/// One scored example, the input of [`figures`].
pub struct Prediction {
    /// Gold label.
    pub truth: String,
    /// The model's label (the out-of-scope label when its rule fired).
    pub predicted: String,
    /// The model's probability for `predicted`, for calibration error.
    pub confidence: f32,
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// `oos_label`: the label meaning out of scope, when the task has one.
pub fn figures(preds: &[Prediction], oos_label: Option<&str>) -> Figures {
    let n = preds.len();
    let correct = preds.iter().filter(|p| p.truth == p.predicted).count();
    let labels: BTreeSet<&str> = preds.iter().map(|p| p.truth.as_str()).collect();
    let mut per = Vec::new();
    for &l in &labels {
        let tp = preds.iter().filter(|p| p.truth == l && p.predicted == l).count();
        let support = preds.iter().filter(|p| p.truth == l).count();
        let predicted = preds.iter().filter(|p| p.predicted == l).count();
        let (precision, recall) = (ratio(tp, predicted), ratio(tp, support));
        let f1 = if precision + recall > 0.0 {
            2.0 * precision * recall / (precision + recall)
        } else {
            0.0
        };
        per.push(LabelFigures {
            label: l.to_string(),
            support,
            precision,
            recall,
            f1,
        });
    }
    let macro_f1 = if per.is_empty() {
        0.0
    } else {
        per.iter().map(|l| l.f1).sum::<f64>() / per.len() as f64
    };
    let oos = oos_label.filter(|o| preds.iter().any(|p| p.truth == *o)).map(|o| {
        let tp = preds.iter().filter(|p| p.truth == o && p.predicted == o).count();
        let in_scope: Vec<&Prediction> = preds.iter().filter(|p| p.truth != o).collect();
        OosFigures {
            recall: ratio(tp, preds.iter().filter(|p| p.truth == o).count()),
            precision: ratio(tp, preds.iter().filter(|p| p.predicted == o).count()),
            in_scope_accuracy: ratio(
                in_scope.iter().filter(|p| p.truth == p.predicted).count(),
                in_scope.len(),
            ),
        }
    });
    const BINS: usize = 15;
    let mut bins = vec![(0usize, 0usize, 0f64); BINS]; // (count, correct, confidence sum)
    for p in preds {
        let b = ((p.confidence.clamp(0.0, 1.0) * BINS as f32) as usize).min(BINS - 1);
        bins[b].0 += 1;
        bins[b].1 += (p.truth == p.predicted) as usize;
        bins[b].2 += p.confidence as f64;
    }
    let ece = bins
        .iter()
        .filter(|b| b.0 > 0)
        .map(|&(c, k, s)| (c as f64 / n as f64) * (k as f64 / c as f64 - s / c as f64).abs())
        .sum();
    let mut confusions: BTreeMap<(String, String), usize> = BTreeMap::new();
    for p in preds.iter().filter(|p| p.truth != p.predicted) {
        *confusions.entry((p.truth.clone(), p.predicted.clone())).or_default() += 1;
    }
    let mut top_confusions: Vec<(String, String, usize)> =
        confusions.into_iter().map(|((t, p), c)| (t, p, c)).collect();
    top_confusions.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| (&a.0, &a.1).cmp(&(&b.0, &b.1))));
    top_confusions.truncate(10);
    Figures {
        examples: n,
        accuracy: ratio(correct, n),
        macro_f1,
        labels: per,
        oos,
        ece,
        top_confusions,
    }
}

/// Runs a bundle over a JSONL file (batches of 32) and computes its figures. Intent predictions
/// follow the server's rules, out-of-scope verdict included.
pub fn evaluate_bundle(bundle: &Path, data: &Path, head: Task) -> Result<Figures, TrainError> {
    let model = NluModel::load(bundle, BackendKind::Cpu)?;
    let rows = read_examples(data, &Columns::default())?;
    let known: BTreeSet<String> = match head {
        Task::Intent => model
            .intent_spec()
            .map(|s| s.labels.iter().cloned().chain([OOS_LABEL.to_string()]).collect()),
        Task::Sentiment => model.sentiment_labels().map(|l| l.iter().cloned().collect()),
    }
    .ok_or_else(|| TrainError::invalid(bundle, format!("the bundle has no {} head", head.name())))?;
    check_known_labels(data, &rows, |l| known.contains(l))?;
    let mut preds = Vec::with_capacity(rows.len());
    for (r, out) in rows.iter().zip(run_all(&model, &rows, data)?) {
        let (predicted, confidence) = match head {
            Task::Intent => model.intent_spec().zip(out.intent.as_deref()).map(|(spec, p)| {
                let v = spec.verdict(p);
                (spec.answer_label(&v).to_string(), v.confidence)
            }),
            Task::Sentiment => model
                .sentiment_labels()
                .zip(out.sentiment.as_deref())
                .and_then(|(labels, p)| {
                    let best = p.iter().copied().enumerate().max_by(|a, b| a.1.total_cmp(&b.1))?;
                    Some((labels.get(best.0)?.clone(), best.1))
                }),
        }
        .unwrap_or_default();
        preds.push(Prediction {
            truth: r.label.clone(),
            predicted,
            confidence,
        });
    }
    let oos = match head {
        Task::Intent => Some(
            model
                .intent_spec()
                .and_then(|s| s.oos_label.clone())
                .unwrap_or_else(|| OOS_LABEL.into()),
        ),
        Task::Sentiment => None,
    };
    Ok(figures(&preds, oos.as_deref()))
}

/// The figures as a markdown report.
pub fn markdown(f: &Figures) -> String {
    let pct = |x: f64| format!("{:.1}%", 100.0 * x);
    let mut s = format!(
        "| examples | accuracy | macro-F1 | ECE |\n|---|---|---|---|\n| {} | {} | {} | {:.3} |\n",
        f.examples,
        pct(f.accuracy),
        pct(f.macro_f1),
        f.ece
    );
    if let Some(o) = &f.oos {
        s += &format!(
            "\n| in-scope accuracy | OOS recall | OOS precision |\n|---|---|---|\n| {} | {} | {} |\n",
            pct(o.in_scope_accuracy),
            pct(o.recall),
            pct(o.precision)
        );
    }
    s += "\n| label | support | precision | recall | F1 |\n|---|---|---|---|---|\n";
    for l in &f.labels {
        s += &format!(
            "| {} | {} | {} | {} | {} |\n",
            l.label,
            l.support,
            pct(l.precision),
            pct(l.recall),
            pct(l.f1)
        );
    }
    if !f.top_confusions.is_empty() {
        s += "\n| true | predicted | count |\n|---|---|---|\n";
        for (t, p, c) in &f.top_confusions {
            s += &format!("| {t} | {p} | {c} |\n");
        }
    }
    s
}

/// Refuses the first row whose label the bundle cannot predict, naming it.
fn check_known_labels(data: &Path, rows: &[Example], known: impl Fn(&str) -> bool) -> Result<(), TrainError> {
    match rows.iter().enumerate().find(|(_, r)| !known(&r.label)) {
        Some((i, r)) => Err(TrainError::invalid(
            data,
            format!(
                "example {}: label `{}` is not one of the bundle's labels",
                i + 1,
                r.label
            ),
        )),
        None => Ok(()),
    }
}

/// Runs every row through the model in length-sorted batches of 32 (little padding), results
/// in row order.
fn run_all(model: &NluModel, rows: &[Example], data: &Path) -> Result<Vec<NluOutput>, TrainError> {
    let ids: Vec<Vec<u32>> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            model
                .tokenize(&r.text)
                .map(|t| t.ids)
                .map_err(|e| TrainError::invalid(data, format!("example {}: {e}", i + 1)))
        })
        .collect::<Result<_, _>>()?;
    let lengths: Vec<usize> = ids.iter().map(Vec::len).collect();
    let mut out: Vec<Option<NluOutput>> = (0..ids.len()).map(|_| None).collect();
    for batch in sorted_batches(&lengths, 32, usize::MAX) {
        let seqs: Vec<&[u32]> = batch.iter().map(|&i| ids[i].as_slice()).collect();
        let outputs = model.run(&seqs)?;
        for (&i, o) in batch.iter().zip(outputs) {
            out[i] = Some(o);
        }
    }
    Ok(out.into_iter().flatten().collect())
}

/// What `calibrate_bundle` did.
#[derive(Debug, Clone, Serialize)]
pub struct Calibration {
    /// The threshold of the bundle it started from.
    pub old_threshold: f32,
    /// The threshold of the new version.
    pub new_threshold: f32,
    /// The version it started from.
    pub old_version: String,
    /// The version written.
    pub new_version: String,
}

/// Re-calibrates a bundle's out-of-scope threshold on labelled data with `oos` rows (see
/// `train::calibrate_oos_threshold`) and writes the result as a new bundle version at `out`
/// (the source is left as it is: a served bundle never changes behaviour under its old
/// version). `version` defaults to `<old>-cal-<sha256 of the data, 8 hex>`.
pub fn calibrate_bundle(
    bundle: &Path,
    data: &Path,
    max_in_scope_loss: f64,
    out: &Path,
    version: Option<String>,
) -> Result<Calibration, TrainError> {
    let model = NluModel::load(bundle, BackendKind::Cpu)?;
    let spec = model
        .intent_spec()
        .cloned()
        .ok_or_else(|| TrainError::invalid(bundle, "the bundle has no intent head"))?;
    let mut labels = spec.labels.clone();
    let rows = read_examples(data, &Columns::default())?;
    check_known_labels(data, &rows, |l| l == OOS_LABEL || labels.iter().any(|x| x == l))?;
    let probs: Vec<Vec<f32>> = run_all(&model, &rows, data)?
        .into_iter()
        .map(|o| o.intent.unwrap_or_default())
        .collect();
    // The bundle's own out-of-scope label (if any) plays the part of `oos`.
    if let Some(i) = spec.oos_index() {
        labels[i] = OOS_LABEL.into();
    }
    let vals = vec![(data.to_path_buf(), rows)];
    let t = crate::train::calibrate_oos_threshold(&labels, &vals, &[probs], max_in_scope_loss)
        .ok_or_else(|| TrainError::invalid(data, "no `oos` rows (or no in-scope rows) to calibrate on"))?;
    let data_sha = sha256_hex(&std::fs::read(data).map_err(|e| TrainError::io(data, e))?);
    let mut m: Manifest = model.manifest().clone();
    let old_version = m.version.clone();
    let new_version = version.unwrap_or_else(|| format!("{old_version}-cal-{}", &data_sha[..8]));
    if new_version == old_version {
        return Err(TrainError::invalid(
            out,
            "the calibrated bundle needs a version of its own",
        ));
    }
    m.format = FORMAT;
    m.version = new_version.clone();
    if let Some(i) = m.heads.intent.as_mut() {
        i.oos_threshold = t;
    }
    m.metrics.insert(
        "oos_calibration".into(),
        serde_json::json!({
            "data": data.display().to_string(),
            "data_sha256": data_sha,
            "max_in_scope_loss": max_in_scope_loss,
            "threshold": t,
            "from_version": old_version,
        }),
    );
    stage_copy(bundle, out, &m)?;
    Ok(Calibration {
        old_threshold: spec.oos_threshold,
        new_threshold: t,
        old_version,
        new_version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(t: &str, q: &str, c: f32) -> Prediction {
        Prediction {
            truth: t.into(),
            predicted: q.into(),
            confidence: c,
        }
    }

    #[test]
    fn figures_equal_hand_computed_values() {
        // Confusion (rows truth, columns predicted):
        //        A  B  oos
        //   A    2  1  1
        //   B    1  1  0
        //   oos  1  0  1
        let preds = vec![
            p("A", "A", 0.9),
            p("A", "A", 0.9),
            p("A", "B", 0.9),
            p("A", "oos", 0.3),
            p("B", "B", 0.5),
            p("B", "A", 0.5),
            p("oos", "oos", 0.3),
            p("oos", "A", 0.9),
        ];
        let f = figures(&preds, Some("oos"));
        assert_eq!(f.examples, 8);
        assert!((f.accuracy - 4.0 / 8.0).abs() < 1e-12);
        let a = &f.labels[0];
        assert_eq!((a.label.as_str(), a.support), ("A", 4));
        assert!(
            (a.precision - 2.0 / 4.0).abs() < 1e-12
                && (a.recall - 2.0 / 4.0).abs() < 1e-12
                && (a.f1 - 0.5).abs() < 1e-12
        );
        let b = &f.labels[1];
        assert!((b.precision - 0.5).abs() < 1e-12 && (b.recall - 0.5).abs() < 1e-12);
        let o = &f.labels[2];
        assert!((o.precision - 0.5).abs() < 1e-12 && (o.recall - 0.5).abs() < 1e-12);
        assert!((f.macro_f1 - 0.5).abs() < 1e-12);
        let oos = f.oos.clone().unwrap();
        assert!((oos.recall - 0.5).abs() < 1e-12 && (oos.precision - 0.5).abs() < 1e-12);
        assert!((oos.in_scope_accuracy - 3.0 / 6.0).abs() < 1e-12);
        // Bins: 0.9 → 4 texts, 2 right (|0.5-0.9| = 0.4); 0.5 → 2, 1 right (0); 0.3 → 2, 1 right (0.2).
        let ece = 4.0 / 8.0 * 0.4 + 2.0 / 8.0 * 0.0 + 2.0 / 8.0 * 0.2;
        assert!((f.ece - ece).abs() < 1e-6, "{} vs {ece}", f.ece);
        assert_eq!(f.top_confusions[0], ("A".to_string(), "B".to_string(), 1));
        assert_eq!(f.top_confusions.len(), 4);
        assert!(markdown(&f).contains("| A | 4 | 50.0% | 50.0% | 50.0% |"));
    }
}

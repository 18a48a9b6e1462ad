//! The one out-of-scope rule, used by the server on every request and by training when it
//! calibrates a threshold and reports figures — so the threshold a bundle ships with means in
//! serving exactly what it meant when it was chosen.
//!
//! A text is out of scope when the head's own out-of-scope label is its most probable label, or
//! when its most probable in-scope label is less probable than the bundle's threshold.
use crate::bundle::IntentSpec;

/// The label that marks out-of-scope rows in training data (CLINC150's convention), and the
/// label a bundle whose head has no out-of-scope class answers for an out-of-scope text.
pub const OOS_LABEL: &str = "oos";

/// What the out-of-scope rule says about one probability vector.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IntentVerdict {
    /// Index of the most probable in-scope label.
    pub best_in_scope: usize,
    /// Its probability.
    pub confidence: f32,
    /// The out-of-scope label itself is the most probable one (flagged whatever the threshold).
    pub oos_label_wins: bool,
    /// Out of scope under the threshold the verdict was taken with.
    pub out_of_scope: bool,
}

/// Applies the rule to `probs` (one per label), where `oos_index` is the out-of-scope label's
/// index if the head has one.
pub fn intent_verdict(probs: &[f32], oos_index: Option<usize>, threshold: f32) -> IntentVerdict {
    let (best_in_scope, confidence) = probs
        .iter()
        .copied()
        .enumerate()
        .filter(|(i, _)| Some(*i) != oos_index)
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap_or((0, 0.0));
    let top = probs
        .iter()
        .copied()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(i, _)| i);
    let oos_label_wins = oos_index.is_some() && top == oos_index;
    IntentVerdict {
        best_in_scope,
        confidence,
        oos_label_wins,
        out_of_scope: oos_label_wins || confidence < threshold,
    }
}

impl IntentSpec {
    /// Index of the bundle's out-of-scope label, if its head has one.
    pub fn oos_index(&self) -> Option<usize> {
        let l = self.oos_label.as_deref()?;
        self.labels.iter().position(|x| x == l)
    }

    /// The rule with this bundle's label and threshold.
    pub fn verdict(&self, probs: &[f32]) -> IntentVerdict {
        intent_verdict(probs, self.oos_index(), self.oos_threshold)
    }

    /// The label to answer for `v`: the out-of-scope label when out of scope, else the best
    /// in-scope label.
    pub fn answer_label(&self, v: &IntentVerdict) -> &str {
        if v.out_of_scope {
            self.oos_label.as_deref().unwrap_or(OOS_LABEL)
        } else {
            self.labels.get(v.best_in_scope).map_or(OOS_LABEL, |s| s.as_str())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(oos_label: Option<&str>, threshold: f32) -> IntentSpec {
        IntentSpec {
            labels: ["refund", "oos", "track"].iter().map(|s| s.to_string()).collect(),
            oos_threshold: threshold,
            oos_label: oos_label.map(str::to_string),
        }
    }

    #[test]
    fn the_oos_label_winning_flags_whatever_the_threshold() {
        let s = spec(Some("oos"), 0.0);
        let v = s.verdict(&[0.3, 0.5, 0.2]);
        assert_eq!((v.best_in_scope, v.oos_label_wins, v.out_of_scope), (0, true, true));
        assert!((v.confidence - 0.3).abs() < 1e-6);
        assert_eq!(s.answer_label(&v), "oos");
    }

    #[test]
    fn a_low_best_in_scope_probability_flags_under_the_threshold_only() {
        let probs = [0.35, 0.3, 0.35 - 1e-3];
        assert!(!spec(Some("oos"), 0.3).verdict(&probs).out_of_scope);
        let v = spec(Some("oos"), 0.4).verdict(&probs);
        assert!(v.out_of_scope && !v.oos_label_wins);
        assert_eq!(
            spec(Some("oos"), 0.3).answer_label(&spec(Some("oos"), 0.3).verdict(&probs)),
            "refund"
        );
    }

    #[test]
    fn without_an_oos_class_every_label_is_in_scope_and_the_default_label_answers() {
        // Label 1 is an ordinary label here: it can win.
        let s = spec(None, 0.6);
        let v = s.verdict(&[0.2, 0.5, 0.3]);
        assert_eq!(v.best_in_scope, 1);
        assert!(v.out_of_scope, "0.5 < 0.6");
        assert_eq!(s.answer_label(&v), OOS_LABEL);
        let v = s.verdict(&[0.1, 0.8, 0.1]);
        assert_eq!(
            s.answer_label(&v),
            "oos",
            "the in-scope label that happens to be called oos"
        );
    }
}

//! Which numbers a policy sees. A decision's context (request features, channel, NLU result,
//! a projection of the message embedding) and each candidate offer's features are read by name
//! into fixed vectors, and the model sees their outer product `[1, c] ⊗ [1, o]`: a bias, the
//! context's and the offer's main effects, and every context × offer interaction. The "no offer"
//! option has all offer features 0, so it is the baseline each offer is compared with.
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// The names a policy reads, in vector order; part of every policy version, so a server and
/// an optimizer always agree on what position `i` means.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureSchema {
    /// Context feature names (see [`crate::context`] for the ones the server derives).
    pub context: Vec<String>,
    /// Offer feature names, as candidates carry them.
    pub offer: Vec<String>,
    /// Whether "no offer" is one of the options.
    pub allow_none: bool,
}

impl FeatureSchema {
    /// Length of the joint vector, `(1 + |context|) · (1 + |offer|)`.
    pub fn dim(&self) -> usize {
        (1 + self.context.len()) * (1 + self.offer.len())
    }

    /// Values by name, in schema order; names the schema lacks are ignored, missing ones are 0.
    pub fn context_vector(&self, values: &HashMap<String, f64>) -> Vec<f64> {
        self.context
            .iter()
            .map(|n| values.get(n).copied().unwrap_or(0.0))
            .collect()
    }

    /// Like [`FeatureSchema::context_vector`], for an offer's features.
    pub fn offer_vector(&self, values: &HashMap<String, f64>) -> Vec<f64> {
        self.offer
            .iter()
            .map(|n| values.get(n).copied().unwrap_or(0.0))
            .collect()
    }

    /// `[1, c] ⊗ [1, o]`, row-major (context outer, offer inner).
    pub fn joint(&self, context: &[f64], offer: &[f64]) -> Vec<f64> {
        let mut x = Vec::with_capacity(self.dim());
        for c in std::iter::once(1.0).chain(context.iter().copied()) {
            for o in std::iter::once(1.0).chain(offer.iter().copied()) {
                x.push(c * o);
            }
        }
        x
    }

    /// Joint vectors of every option: each candidate in order, then "no offer" if allowed.
    pub fn options(&self, context: &[f64], offers: &[Vec<f64>]) -> Vec<Vec<f64>> {
        let mut xs: Vec<Vec<f64>> = offers.iter().map(|o| self.joint(context, o)).collect();
        if self.allow_none {
            xs.push(self.joint(context, &vec![0.0; self.offer.len()]));
        }
        xs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joint_is_the_outer_product_with_bias() {
        let s = FeatureSchema {
            context: vec!["a".into(), "b".into()],
            offer: vec!["x".into()],
            allow_none: true,
        };
        assert_eq!(s.dim(), 6);
        assert_eq!(s.joint(&[2.0, 3.0], &[5.0]), vec![1.0, 5.0, 2.0, 10.0, 3.0, 15.0]);
        let ctx = s.context_vector(&[("b".to_string(), 3.0), ("zzz".to_string(), 9.0)].into());
        assert_eq!(ctx, vec![0.0, 3.0]);
        let opts = s.options(&ctx, &[vec![1.0]]);
        assert_eq!(opts.len(), 2);
        assert_eq!(opts[1], vec![1.0, 0.0, 0.0, 0.0, 3.0, 0.0]);
    }
}

//! Linear classification heads over the pooled sentence vector. They are tiny (labels × hidden),
//! so they run in plain Rust on each request's own vector after the batched encoder pass.
use crate::error::LoadError;
use safetensors::{Dtype, SafeTensors};
use std::path::Path;

/// `softmax(W·x + b)` over one pooled vector.
#[derive(Debug, Clone)]
pub struct LinearHead {
    /// Row-major [labels, hidden].
    weight: Vec<f32>,
    bias: Vec<f32>,
    hidden: usize,
}

impl LinearHead {
    /// `weight` is row-major `[labels, hidden]`, `bias` `[labels]`.
    pub fn new(weight: Vec<f32>, bias: Vec<f32>, hidden: usize) -> Self {
        debug_assert_eq!(weight.len(), bias.len() * hidden);
        Self { weight, bias, hidden }
    }

    /// Reads `<name>.weight` and `<name>.bias` from a heads file, checking dtype, shape and
    /// that every value is finite.
    pub fn load(
        path: &Path,
        st: &SafeTensors<'_>,
        name: &str,
        labels: usize,
        hidden: usize,
    ) -> Result<Self, LoadError> {
        let read = |t: &str, shape: &[usize]| -> Result<Vec<f32>, LoadError> {
            let full = format!("{name}.{t}");
            let err = |reason: String| LoadError::Tensor {
                path: path.to_path_buf(),
                tensor: full.clone(),
                reason,
            };
            let v = st.tensor(&full).map_err(|_| err("missing".into()))?;
            if v.dtype() != Dtype::F32 {
                return Err(err(format!("dtype {:?}, expected F32", v.dtype())));
            }
            if v.shape() != shape {
                return Err(err(format!(
                    "shape {:?}, expected {:?} (labels in the manifest × encoder hidden size)",
                    v.shape(),
                    shape
                )));
            }
            let vals: Vec<f32> = v
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            if vals.iter().any(|x| !x.is_finite()) {
                return Err(err("contains NaN or infinite values".into()));
            }
            Ok(vals)
        };
        Ok(Self::new(
            read("weight", &[labels, hidden])?,
            read("bias", &[labels])?,
            hidden,
        ))
    }

    /// Input width.
    pub fn hidden(&self) -> usize {
        self.hidden
    }

    /// Number of classes.
    pub fn labels(&self) -> usize {
        self.bias.len()
    }

    /// Row-major `[labels, hidden]` weights.
    pub fn weight(&self) -> &[f32] {
        &self.weight
    }

    /// Per-class bias.
    pub fn bias(&self) -> &[f32] {
        &self.bias
    }

    /// Class probabilities for one pooled vector.
    pub fn probabilities(&self, x: &[f32]) -> Vec<f32> {
        let logits: Vec<f32> = self
            .weight
            .chunks_exact(self.hidden)
            .zip(&self.bias)
            .map(|(row, b)| row.iter().zip(x).map(|(w, v)| w * v).sum::<f32>() + b)
            .collect();
        softmax(&logits)
    }
}

/// Softmax that subtracts the true maximum first, so large logits cannot overflow `exp`.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// Scales `v` to unit length (a zero vector stays zero).
pub fn l2_normalize(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= n);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_survives_huge_logits() {
        let p = softmax(&[1000.0, 1000.0, -1000.0]);
        assert!((p[0] - 0.5).abs() < 1e-6 && (p[1] - 0.5).abs() < 1e-6 && p[2] == 0.0);
        assert!(p.iter().all(|x| x.is_finite()));
    }

    #[test]
    fn head_probabilities_are_the_softmax_of_affine_logits() {
        let h = LinearHead::new(vec![1.0, 0.0, 0.0, 2.0], vec![0.0, -1.0], 2);
        let p = h.probabilities(&[1.0, 1.0]);
        let e = softmax(&[1.0, 1.0]);
        assert!((p[0] - e[0]).abs() < 1e-6 && (p[1] - e[1]).abs() < 1e-6);
    }
}

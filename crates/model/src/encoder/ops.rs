//! Softmax over the last dimension and layer norm, each with a parallel CPU forward and a
//! backward. candle-nn's fast versions of both have no backward, and its composed ones make
//! several single-threaded passes; these serve inference and fine-tuning alike (candle records
//! no graph when no input is a variable, so inference pays nothing for the backward).
use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

/// Rows handed to one rayon task: enough work to amortise the scheduling.
pub(super) fn rows_per_task(dim: usize) -> usize {
    (16_384 / dim.max(1)).max(1)
}

fn contiguous_f32<'a>(op: &str, storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("{op}: f32 only")
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("{op}: contiguous input only")
    };
    Ok(&data[start..end])
}

pub struct SoftmaxLastDim;

impl CustomOp1 for SoftmaxLastDim {
    fn name(&self) -> &'static str {
        "nudge-softmax-last-dim"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let src = contiguous_f32(self.name(), storage, layout)?;
        let dim = layout.dims().last().copied().unwrap_or(1).max(1);
        let mut out = vec![0f32; src.len()];
        let chunk = dim * rows_per_task(dim);
        out.par_chunks_mut(chunk).zip(src.par_chunks(chunk)).for_each(|(o, s)| {
            for (o, s) in o.chunks_exact_mut(dim).zip(s.chunks_exact(dim)) {
                let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0f32;
                for (o, &x) in o.iter_mut().zip(s) {
                    *o = (x - max).exp();
                    sum += *o;
                }
                let inv = 1.0 / sum;
                o.iter_mut().for_each(|v| *v *= inv);
            }
        });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        // dx = y ⊙ (g − Σ g⊙y)
        let y = res.detach();
        let dot = (grad_res * &y)?.sum_keepdim(D::Minus1)?;
        Ok(Some((y * grad_res.broadcast_sub(&dot)?)?))
    }
}

/// Softmax over the last dimension, one fused op with its own backward pass.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(SoftmaxLastDim)
}

pub struct LayerNorm {
    pub eps: f32,
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "nudge-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(self.name(), s1, l1)?;
        let alpha = contiguous_f32(self.name(), s2, l2)?;
        let beta = contiguous_f32(self.name(), s3, l3)?;
        let dim = l1.dims().last().copied().unwrap_or(1).max(1);
        if alpha.len() != dim || beta.len() != dim {
            candle_core::bail!(
                "{}: weight and bias must have the last dimension's size {dim}",
                self.name()
            )
        }
        let eps = self.eps;
        let mut out = vec![0f32; x.len()];
        let chunk = dim * rows_per_task(dim);
        out.par_chunks_mut(chunk).zip(x.par_chunks(chunk)).for_each(|(o, s)| {
            for (o, s) in o.chunks_exact_mut(dim).zip(s.chunks_exact(dim)) {
                let mean = s.iter().sum::<f32>() / dim as f32;
                let var = s.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / dim as f32;
                let rstd = 1.0 / (var + eps).sqrt();
                for i in 0..dim {
                    o[i] = (s[i] - mean) * rstd * alpha[i] + beta[i];
                }
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        alpha: &Tensor,
        _beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dims = x.dims().to_vec();
        let h = dims.last().copied().unwrap_or(1);
        let n = x.elem_count() / h.max(1);
        let x = x.detach().reshape((n, h))?;
        let g = grad.reshape((n, h))?;
        let alpha = alpha.detach();
        let mean = x.mean_keepdim(1)?;
        let xc = x.broadcast_sub(&mean)?;
        let rstd = ((xc.sqr()?.mean_keepdim(1)? + self.eps as f64)?.sqrt()?).recip()?;
        let xhat = xc.broadcast_mul(&rstd)?;
        let gxhat = g.broadcast_mul(&alpha)?;
        let a = gxhat.mean_keepdim(1)?;
        let b = (&gxhat * &xhat)?.mean_keepdim(1)?;
        let gx = (gxhat.broadcast_sub(&a)? - xhat.broadcast_mul(&b)?)?
            .broadcast_mul(&rstd)?
            .reshape(dims)?;
        let galpha = (&g * &xhat)?.sum(0)?;
        let gbeta = g.sum(0)?;
        Ok((Some(gx), Some(galpha), Some(gbeta)))
    }
}

/// Layer norm over the last dimension (`alpha` scale, `beta` shift), one fused op with its own
/// backward pass, so fine-tuning does not pay for candle's composed version.
pub fn layer_norm(x: &Tensor, alpha: &Tensor, beta: &Tensor, eps: f32) -> Result<Tensor> {
    x.contiguous()?.apply_op3(alpha, beta, LayerNorm { eps })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn close(a: &Tensor, b: &Tensor, tol: f32) {
        let d = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < tol, "max diff {d}");
    }

    #[test]
    fn softmax_matches_candle_forward_and_backward() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&(Tensor::randn(0f32, 3.0, (4, 5, 33), &dev).unwrap())).unwrap();
        let w = Tensor::randn(0f32, 1.0, (4, 5, 33), &dev).unwrap();
        let ours = softmax_last_dim(x.as_tensor()).unwrap();
        let theirs = candle_nn::ops::softmax(x.as_tensor(), D::Minus1).unwrap();
        close(&ours, &theirs, 1e-6);
        let g1 = (ours * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (theirs * &w).unwrap().sum_all().unwrap().backward().unwrap();
        close(g1.get(&x).unwrap(), g2.get(&x).unwrap(), 1e-5);
    }

    #[test]
    fn layer_norm_matches_candle_forward_and_backward() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&(Tensor::randn(0.5f32, 2.0, (7, 48), &dev).unwrap())).unwrap();
        let a = Var::from_tensor(&(Tensor::randn(1f32, 0.3, 48, &dev).unwrap())).unwrap();
        let b = Var::from_tensor(&(Tensor::randn(0f32, 0.3, 48, &dev).unwrap())).unwrap();
        let w = Tensor::randn(0f32, 1.0, (7, 48), &dev).unwrap();
        let ours = layer_norm(x.as_tensor(), a.as_tensor(), b.as_tensor(), 1e-12).unwrap();
        let theirs = candle_nn::ops::layer_norm_slow(x.as_tensor(), a.as_tensor(), b.as_tensor(), 1e-12).unwrap();
        close(&ours, &theirs, 1e-5);
        let g1 = (ours * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (theirs * &w).unwrap().sum_all().unwrap().backward().unwrap();
        for v in [&x, &a, &b] {
            close(g1.get(v).unwrap(), g2.get(v).unwrap(), 1e-4);
        }
    }
}

//! Exact-form GELU, `x · (1 + erf(x/√2)) / 2`, as one parallel, vectorisable pass. candle's own
//! `gelu_erf` calls libm's scalar `erff` on one thread, which cost ~7 % of a forward pass here.
//! erf uses a rational approximation (the one Eigen uses for f32) with |error| < 3e-7. Plain
//! `*` and `+`, not `mul_add`: without the `fma` target feature that becomes a libm call.
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

pub struct GeluErf;

#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10_f32;
    p = p * x2 + 2.770_681_4e-8;
    p = p * x2 + -2.101_024e-6;
    p = p * x2 + -5.692_506_4e-5;
    p = p * x2 + -7.349_906_3e-4;
    p = p * x2 + -2.954_600_2e-3;
    p = p * x2 + -1.609_603_3e-2;
    let mut q = -1.456_607_2e-5_f32;
    q = q * x2 + -2.133_740_6e-4;
    q = q * x2 + -1.682_827e-3;
    q = q * x2 + -7.373_329e-3;
    q = q * x2 + -1.426_474e-2;
    x * p / q
}

/// GELU in its exact (erf) form.
#[inline(always)]
pub(super) fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// GELU in its tanh approximation, as candle's `gelu` computes it.
#[inline(always)]
pub(super) fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x)).tanh())
}

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "nudge-gelu-erf"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("nudge-gelu-erf: f32 only")
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("nudge-gelu-erf: contiguous input only")
        };
        let src = &data[start..end];
        let mut out = vec![0f32; src.len()];
        out.par_chunks_mut(8192).zip(src.par_chunks(8192)).for_each(|(o, s)| {
            for (o, &x) in o.iter_mut().zip(s) {
                *o = gelu(x);
            }
        });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let d = arg.detach().contiguous()?.apply_op1_no_bwd(&GeluErfDerivative)?;
        Ok(Some((grad_res * d)?))
    }
}

/// d/dx GELU(x) = Φ(x) + x·φ(x).
struct GeluErfDerivative;

impl CustomOp1 for GeluErfDerivative {
    fn name(&self) -> &'static str {
        "nudge-gelu-erf-derivative"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("nudge-gelu-erf-derivative: f32 only")
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("nudge-gelu-erf-derivative: contiguous input only")
        };
        let src = &data[start..end];
        let mut out = vec![0f32; src.len()];
        const INV_SQRT_2PI: f32 = 0.398_942_3;
        out.par_chunks_mut(8192).zip(src.par_chunks(8192)).for_each(|(o, s)| {
            for (o, &x) in o.iter_mut().zip(s) {
                *o = 0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2)) + x * INV_SQRT_2PI * (-0.5 * x * x).exp();
            }
        });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

/// Exact (erf) GELU as one custom op: one pass over memory forward and backward, where
/// candle's composed version makes several.
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(GeluErf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_candle_exact_gelu() {
        let xs: Vec<f32> = (-12_000..=12_000).map(|i| i as f32 / 1000.0).collect();
        let t = Tensor::new(xs.as_slice(), &candle_core::Device::Cpu).unwrap();
        let ours: Vec<f32> = gelu_erf(&t).unwrap().to_vec1().unwrap();
        let theirs: Vec<f32> = t.gelu_erf().unwrap().to_vec1().unwrap();
        let worst = ours
            .iter()
            .zip(&theirs)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst < 2e-6, "max diff {worst}");
    }

    #[test]
    fn gradient_matches_candle() {
        let xs: Vec<f32> = (-8_000..=8_000).map(|i| i as f32 / 1000.0).collect();
        let v = candle_core::Var::new(xs.as_slice(), &candle_core::Device::Cpu).unwrap();
        let ours = gelu_erf(v.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
        let theirs = v.as_tensor().gelu_erf().unwrap().sum_all().unwrap().backward().unwrap();
        let a: Vec<f32> = ours.get(&v).unwrap().to_vec1().unwrap();
        let b: Vec<f32> = theirs.get(&v).unwrap().to_vec1().unwrap();
        let worst = a.iter().zip(&b).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-5, "max diff {worst}");
    }
}

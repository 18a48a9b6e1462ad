//! One GPU: its context, the modules compiled for it, and the two primitives everything else
//! is made of — a kernel launch and a cuBLAS matrix product with f32 accumulation.
#![allow(unsafe_code)] // kernel launches and cuBLAS calls are FFI; each call site says why it holds.

use crate::error::GpuError;
use crate::source::{self, Variant};
use cudarc::cublas::{sys as blas_sys, CudaBlas};
use cudarc::driver::{CudaContext, CudaFunction, CudaStream, DevicePtr, DevicePtrMut};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Half type of matrix-product inputs (products accumulate in f32 either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Half {
    /// IEEE half: 10 mantissa bits, range ±65504. The default: BERT activations are small
    /// after each LayerNorm, so the extra precision is worth more than bf16's range.
    #[default]
    F16,
    /// bfloat16: f32's range, 7 mantissa bits.
    Bf16,
}

impl Half {
    /// `f16` or `bf16`.
    pub fn name(self) -> &'static str {
        match self {
            Half::F16 => "f16",
            Half::Bf16 => "bf16",
        }
    }

    /// Rounds `v` to this type (nearest even), as bits.
    pub fn encode(self, v: f32) -> u16 {
        match self {
            Half::F16 => half::f16::from_f32(v).to_bits(),
            Half::Bf16 => half::bf16::from_f32(v).to_bits(),
        }
    }

    /// The value of `bits` of this type.
    pub fn decode(self, bits: u16) -> f32 {
        match self {
            Half::F16 => half::f16::from_bits(bits).to_f32(),
            Half::Bf16 => half::bf16::from_bits(bits).to_f32(),
        }
    }

    fn cuda_type(self) -> blas_sys::cudaDataType {
        match self {
            Half::F16 => blas_sys::cudaDataType::CUDA_R_16F,
            Half::Bf16 => blas_sys::cudaDataType::CUDA_R_16BF,
        }
    }
}

/// A CUDA device opened for Nudge's kernels.
pub struct Gpu {
    ctx: Arc<CudaContext>,
    name: String,
    arch: (i32, i32),
    modules: Mutex<HashMap<(&'static str, Variant), Arc<cudarc::driver::CudaModule>>>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu")
            .field("ordinal", &self.ordinal())
            .field("name", &self.name)
            .field("arch", &self.arch)
            .finish()
    }
}

/// Whether this machine has a CUDA driver at all (no GPU work is attempted without one).
pub fn driver_available() -> bool {
    // SAFETY: only tries to dlopen the library under its known names.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

impl Gpu {
    /// Opens device `ordinal`. Every library is checked before first use, so a machine
    /// without a GPU gets an error, never a panic from the loader.
    pub fn open(ordinal: usize) -> Result<Arc<Self>, GpuError> {
        if !driver_available() {
            return Err(GpuError::NoDriver);
        }
        if !source::nvrtc_available() {
            return Err(GpuError::MissingLibrary("NVRTC (libnvrtc.so)"));
        }
        // SAFETY: as above.
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            return Err(GpuError::MissingLibrary("cuBLAS (libcublas.so)"));
        }
        cudarc::driver::result::init()?;
        let count = CudaContext::device_count()?.max(0) as usize;
        if ordinal >= count {
            return Err(GpuError::NoDevice { ordinal, count });
        }
        let ctx = CudaContext::new(ordinal)?;
        // Each stream here owns its buffers and the weights are written once before any
        // stream reads them, so cudarc's per-buffer event bookkeeping would only add calls.
        // SAFETY: no buffer is shared across streams except read-only weights, which are
        // synchronised after upload (see `upload`).
        unsafe { ctx.disable_event_tracking() };
        let arch = ctx.compute_capability()?;
        Ok(Arc::new(Self {
            name: ctx.name()?,
            ctx,
            arch,
            modules: Mutex::new(HashMap::new()),
        }))
    }

    /// `cuda:N`.
    pub fn label(&self) -> String {
        format!("cuda:{}", self.ordinal())
    }

    /// The device ordinal.
    pub fn ordinal(&self) -> usize {
        self.ctx.ordinal()
    }

    /// The device's name, e.g. `NVIDIA H200`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Compute capability.
    pub fn arch(&self) -> (i32, i32) {
        self.arch
    }

    /// Free and total device memory, bytes.
    pub fn memory(&self) -> Result<(usize, usize), GpuError> {
        Ok(self.ctx.mem_get_info()?)
    }

    pub(crate) fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// A new stream with its own cuBLAS handle.
    pub(crate) fn stream(&self) -> Result<(Arc<CudaStream>, CudaBlas), GpuError> {
        let stream = self.ctx.new_stream()?;
        let blas = CudaBlas::new(stream.clone())?;
        Ok((stream, blas))
    }

    /// Kernel `kernel` of source `source`, compiled for `variant` on this device's arch
    /// (compiled once per variant, then cached).
    pub(crate) fn function(
        &self,
        source: &'static str,
        kernel: &str,
        mut variant: Variant,
    ) -> Result<CudaFunction, GpuError> {
        variant.arch = self.arch;
        let src = source::source(source).ok_or_else(|| GpuError::invalid(format!("no kernel source {source}")))?;
        let module = {
            let mut modules = self
                .modules
                .lock()
                .map_err(|_| GpuError::invalid("module cache poisoned"))?;
            match modules.get(&(source, variant)) {
                Some(m) => m.clone(),
                None => {
                    let m = self.ctx.load_module(source::compile(src, variant)?)?;
                    modules.insert((source, variant), m.clone());
                    m
                }
            }
        };
        Ok(module.load_function(kernel)?)
    }

    /// Copies `data` to a new device buffer and waits for it, so any stream may read it.
    pub(crate) fn upload<T: cudarc::driver::DeviceRepr>(
        &self,
        data: &[T],
    ) -> Result<cudarc::driver::CudaSlice<T>, GpuError> {
        let stream = self.ctx.default_stream();
        let buf = stream.clone_htod(data)?;
        stream.synchronize()?;
        Ok(buf)
    }
}

/// `y[rows, n] = x[rows, k] · w[n, k]ᵀ` in row-major terms (every dense layer), inputs and
/// output in `half`, accumulation in f32. cuBLAS is column-major, so it computes
/// `yᵀ = w · xᵀ`: the same bytes.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul<X, W, Y>(
    blas: &CudaBlas,
    stream: &CudaStream,
    half: Half,
    x: &X,
    w: &W,
    y: &mut Y,
    rows: usize,
    n: usize,
    k: usize,
) -> Result<(), GpuError>
where
    X: DevicePtr<u16> + ?Sized,
    W: DevicePtr<u16> + ?Sized,
    Y: DevicePtrMut<u16> + ?Sized,
{
    let t = half.cuda_type();
    matmul_raw(blas, stream, (t, t), x, w, y, rows, n, k)
}

/// [`matmul`] in f32 throughout (decision scoring).
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_f32<X, W, Y>(
    blas: &CudaBlas,
    stream: &CudaStream,
    x: &X,
    w: &W,
    y: &mut Y,
    rows: usize,
    n: usize,
    k: usize,
) -> Result<(), GpuError>
where
    X: DevicePtr<f32> + ?Sized,
    W: DevicePtr<f32> + ?Sized,
    Y: DevicePtrMut<f32> + ?Sized,
{
    let t = blas_sys::cudaDataType::CUDA_R_32F;
    matmul_raw(blas, stream, (t, t), x, w, y, rows, n, k)
}

#[allow(clippy::too_many_arguments)]
fn matmul_raw<T, U, X, W, Y>(
    blas: &CudaBlas,
    stream: &CudaStream,
    (in_type, out_type): (blas_sys::cudaDataType, blas_sys::cudaDataType),
    x: &X,
    w: &W,
    y: &mut Y,
    rows: usize,
    n: usize,
    k: usize,
) -> Result<(), GpuError>
where
    X: DevicePtr<T> + ?Sized,
    W: DevicePtr<T> + ?Sized,
    Y: DevicePtrMut<U> + ?Sized,
{
    if x.len() < rows * k || w.len() < n * k || y.len() < rows * n {
        return Err(GpuError::invalid(format!(
            "matmul [{rows}×{k}]·[{n}×{k}]ᵀ: buffers of {}, {} and {} elements are too small",
            x.len(),
            w.len(),
            y.len()
        )));
    }
    if rows == 0 {
        return Ok(());
    }
    // cuBLAS runs in the calling thread's current context; batcher threads differ.
    stream.context().bind_to_thread()?;
    let to_int = |v: usize| i32::try_from(v).map_err(|_| GpuError::invalid(format!("matmul dimension {v} too large")));
    let (m_, n_, k_) = (to_int(n)?, to_int(rows)?, to_int(k)?);
    let (alpha, beta) = (1f32, 0f32);
    let (xp, _gx) = x.device_ptr(stream);
    let (wp, _gw) = w.device_ptr(stream);
    let (yp, _gy) = y.device_ptr_mut(stream);
    // SAFETY: the three buffers hold at least the elements the call reads and writes
    // (checked above), live on `stream`'s device, and `blas` is bound to `stream`.
    unsafe {
        cudarc::cublas::result::gemm_ex(
            *blas.handle(),
            blas_sys::cublasOperation_t::CUBLAS_OP_T,
            blas_sys::cublasOperation_t::CUBLAS_OP_N,
            m_,
            n_,
            k_,
            (&alpha) as *const f32 as *const _,
            wp as *const _,
            in_type,
            k_,
            xp as *const _,
            in_type,
            k_,
            (&beta) as *const f32 as *const _,
            yp as *mut _,
            out_type,
            m_,
            blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )?;
    }
    Ok(())
}

/// `len` values in [-1, 1) from a fixed xorshift sequence, as `half`: random, not zero, inputs
/// for the rate probes (zeros run faster and would flatter every ratio).
fn random_halves(half: Half, len: usize, seed: u64) -> Vec<u16> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ seed;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            half.encode(((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0)
        })
        .collect()
}

/// Measured rate of the encoder's product (`half` in and out, f32 accumulation) on an
/// `n × n × n` problem of random values, in FLOP/s: the ceiling the encoder is judged
/// against.
pub fn matmul_rate(gpu: &Gpu, half: Half, n: usize, reps: usize) -> Result<f64, GpuError> {
    let x = random_halves(half, n * n, 0);
    let (stream, blas) = gpu.stream()?;
    let xd = stream.clone_htod(&x)?;
    let wd = stream.clone_htod(&x)?;
    let mut y = stream.alloc_zeros::<u16>(n * n)?;
    for _ in 0..3 {
        matmul(&blas, &stream, half, &xd, &wd, &mut y, n, n, n)?;
    }
    stream.synchronize()?;
    let t = std::time::Instant::now();
    for _ in 0..reps.max(1) {
        matmul(&blas, &stream, half, &xd, &wd, &mut y, n, n, n)?;
    }
    stream.synchronize()?;
    Ok(2.0 * (n as f64).powi(3) * reps.max(1) as f64 / t.elapsed().as_secs_f64())
}

/// Measured rate of one encoder pass's products alone, in FLOP/s: every layer's QKV,
/// attention-out, feed-forward-in and feed-forward-out product for `tokens` tokens, back to back
/// on one stream as the encoder issues them, each layer with weights of its own (one set would
/// sit in L2 and flatter the figure).
///
/// Why: it is the ceiling of a pass at that batch if everything between the products were
/// free. Against [`matmul_rate`]'s 8192³ figure it says how far these narrow shapes (N and K of
/// 384 to 1,536) are from the roofline whatever the rest does; the encoder's rate against it
/// says what the rest (attention, norms, activations, launches) costs.
pub fn dense_rate(
    gpu: &Gpu,
    half: Half,
    shape: &crate::EncoderShape,
    tokens: usize,
    reps: usize,
) -> Result<f64, GpuError> {
    let (h, f, tokens) = (shape.hidden, shape.intermediate, tokens.max(1));
    // (n, k) of each product of a layer, in the encoder's order.
    let dims = [(3 * h, h), (h, h), (f, h), (h, f)];
    let (stream, blas) = gpu.stream()?;
    let x = stream.clone_htod(&random_halves(half, tokens * h.max(f), 1))?;
    let weights = (0..shape.layers * dims.len())
        .map(|i| {
            let (n, k) = dims[i % dims.len()];
            stream.clone_htod(&random_halves(half, n * k, 2 + i as u64))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut y = stream.alloc_zeros::<u16>(tokens * (3 * h).max(f))?;
    let mut pass = || -> Result<(), GpuError> {
        for (i, w) in weights.iter().enumerate() {
            let (n, k) = dims[i % dims.len()];
            matmul(&blas, &stream, half, &x, w, &mut y, tokens, n, k)?;
        }
        Ok(())
    };
    for _ in 0..3 {
        pass()?;
    }
    stream.synchronize()?;
    let t = std::time::Instant::now();
    for _ in 0..reps.max(1) {
        pass()?;
    }
    stream.synchronize()?;
    let flops = 2.0 * (tokens * shape.layers) as f64 * (4 * h * h + 2 * h * f) as f64;
    Ok(flops * reps.max(1) as f64 / t.elapsed().as_secs_f64())
}

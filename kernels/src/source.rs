//! The kernel sources and their compilation by NVRTC.
//!
//! Kernels are compiled when a GPU model is loaded, for the device's own compute capability
//! and with the model's shape baked in (`HEAD_DIM`, the activation, the half type), so the
//! build needs no CUDA toolkit and the loop bounds are constants to the compiler. The PTX is
//! handed to the driver, which compiles it for the exact chip. [`compile_all`] compiles every
//! source in every variant without a GPU: CI runs it with NVRTC alone.
use crate::error::GpuError;
use crate::Half;
use cudarc::nvrtc::{CompileError, CompileOptions, Ptx};

const PRELUDE: &str = include_str!("../cu/prelude.cuh");

/// One `.cu` file of `kernels/cu/` and the `extern "C"` kernels it defines.
#[derive(Debug, Clone, Copy)]
pub struct Source {
    /// File stem, e.g. `attention`.
    pub name: &'static str,
    /// The CUDA C++ text (without the prelude).
    pub text: &'static str,
    /// Kernels to load from it.
    pub kernels: &'static [&'static str],
}

/// Every kernel source.
pub const SOURCES: [Source; 6] = [
    Source {
        name: "layer_norm",
        text: include_str!("../cu/layer_norm.cu"),
        kernels: &["embed_layer_norm", "bias_residual_layer_norm"],
    },
    Source {
        name: "activation",
        text: include_str!("../cu/activation.cu"),
        kernels: &["bias_activation"],
    },
    Source {
        name: "attention",
        text: include_str!("../cu/attention.cu"),
        kernels: &["attention"],
    },
    Source {
        name: "pool",
        text: include_str!("../cu/pool.cu"),
        kernels: &["pool"],
    },
    Source {
        name: "heads",
        text: include_str!("../cu/heads.cu"),
        kernels: &["linear_softmax"],
    },
    Source {
        name: "scoring",
        text: include_str!("../cu/scoring.cu"),
        kernels: &["normal_draws", "ucb_scores", "thompson_wins"],
    },
];

/// The source called `name` (a fixed set, so a miss is a programming error caught by tests).
pub(crate) fn source(name: &str) -> Option<&'static Source> {
    SOURCES.iter().find(|s| s.name == name)
}

/// The compile-time shape a module is specialised for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Variant {
    /// `compute_XY` of the device, e.g. (9, 0).
    pub arch: (i32, i32),
    /// Half type of the matrix-product inputs.
    pub half: Half,
    /// Attention head width (`HEAD_DIM`).
    pub head_dim: usize,
    /// Width of token states (`HIDDEN`; 0 for kernels that do not use it).
    pub hidden: usize,
    /// 0 erf GELU, 1 tanh GELU, 2 ReLU (`ACT`).
    pub activation: u32,
}

/// NVRTC is loadable on this machine (it needs no GPU).
pub fn nvrtc_available() -> bool {
    // SAFETY: only tries to dlopen the library under its known names.
    #[allow(unsafe_code)]
    unsafe {
        cudarc::nvrtc::sys::is_culib_present()
    }
}

/// Compiles `source` for `variant` to PTX.
pub fn compile(source: &Source, variant: Variant) -> Result<Ptx, GpuError> {
    if !nvrtc_available() {
        return Err(GpuError::MissingLibrary("NVRTC (libnvrtc.so)"));
    }
    let (major, minor) = variant.arch;
    let opts = CompileOptions {
        options: vec![
            format!("--gpu-architecture=compute_{major}{minor}"),
            format!("-DNUDGE_BF16={}", u8::from(variant.half == Half::Bf16)),
            format!("-DHEAD_DIM={}", variant.head_dim),
            format!("-DHIDDEN={}", variant.hidden),
            format!("-DACT={}", variant.activation),
            "--std=c++17".into(),
        ],
        fmad: Some(true),
        name: Some(format!("{}.cu", source.name)),
        ..Default::default()
    };
    let text = format!("{PRELUDE}\n#line 1 \"{}.cu\"\n{}", source.name, source.text);
    cudarc::nvrtc::compile_ptx_with_opts(text, opts).map_err(|e| GpuError::Compile {
        source_name: source.name,
        log: match e {
            CompileError::CompileError { log, .. } => log.to_string_lossy().into_owned(),
            other => other.to_string(),
        },
    })
}

/// Compiles every source in the variants the encoder asks for on `arch`: both half types;
/// e5-small / MiniLM (heads of 32, width 384), BERT-base (64, 768) and a width past the
/// layer norms' register path (64, 1280); all three activations. Returns how many modules compiled.
pub fn compile_all(arch: (i32, i32)) -> Result<usize, GpuError> {
    let mut n = 0;
    for source in &SOURCES {
        for half in [Half::F16, Half::Bf16] {
            for (head_dim, hidden) in [(32, 384), (64, 768), (64, 1280)] {
                for activation in 0..3 {
                    compile(
                        source,
                        Variant {
                            arch,
                            half,
                            head_dim,
                            hidden,
                            activation,
                        },
                    )?;
                    n += 1;
                }
            }
        }
    }
    Ok(n)
}

use cudarc::cublas::result::CublasError;
use cudarc::driver::DriverError;

/// Why a GPU could not be used or a GPU call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GpuError {
    /// The CUDA driver library (`libcuda.so`) is not on this machine: no NVIDIA GPU or driver.
    #[error("no CUDA driver on this machine (libcuda.so not found)")]
    NoDriver,
    /// A CUDA library the GPU path needs (NVRTC, cuBLAS) could not be loaded.
    #[error("the CUDA library {0} was not found (add its directory to LD_LIBRARY_PATH)")]
    MissingLibrary(&'static str),
    /// The asked-for device ordinal does not exist.
    #[error("CUDA device {ordinal} does not exist ({count} found)")]
    NoDevice {
        /// The ordinal asked for.
        ordinal: usize,
        /// Devices the driver reports.
        count: usize,
    },
    /// A driver call failed.
    #[error("CUDA driver: {0}")]
    Driver(#[from] DriverError),
    /// A cuBLAS call failed.
    #[error("cuBLAS: {0}")]
    Cublas(#[from] CublasError),
    /// NVRTC refused a kernel source; `log` is its compiler output.
    #[error("NVRTC could not compile {source_name}.cu: {log}")]
    Compile {
        /// Which source.
        source_name: &'static str,
        /// NVRTC's log (or its error when there is no log).
        log: String,
    },
    /// Inputs that do not fit the model or kernel (names what is wrong).
    #[error("{0}")]
    Invalid(String),
}

impl GpuError {
    pub(crate) fn invalid(reason: impl Into<String>) -> Self {
        GpuError::Invalid(reason.into())
    }
}

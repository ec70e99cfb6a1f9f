//! The library's one error type.
//!
//! Every fallible public function returns [`Result<T>`]. Variants carry enough
//! context to say *what* was wrong (which tensor, which shape, which kernel)
//! without a backtrace.

use std::path::PathBuf;

/// Convenience alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in smarttrim.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The CUDA driver library (libcuda) could not be found on this machine.
    #[error("no CUDA driver: libcuda could not be loaded (is an NVIDIA driver installed?)")]
    NoDriver,

    /// The driver loaded but reports no usable device (or not the one asked for).
    #[error("no CUDA device: {0}")]
    NoDevice(String),

    /// The crate was built without nvcc, so no GPU kernels are embedded.
    #[error(
        "GPU kernels were not built into this binary ({0}); install the CUDA compiler with \
         scripts/setup-cuda.sh (or set NVCC / CUDA_HOME) and rebuild"
    )]
    KernelsNotBuilt(String),

    /// A CUDA driver call failed.
    #[error("CUDA driver error in {context}: {source}")]
    Driver {
        /// What the runtime was doing.
        context: String,
        /// The driver's error.
        #[source]
        source: cudarc::driver::DriverError,
    },

    /// A cuBLAS / cuBLASLt call failed.
    #[error("cuBLAS error in {context}: {message}")]
    Blas {
        /// What the runtime was doing.
        context: String,
        /// The library's status, as text.
        message: String,
    },

    /// A kernel name was not found in an embedded PTX module.
    #[error("kernel `{name}` not found in PTX module `{module}`")]
    MissingKernel {
        /// The module (kernel source file stem).
        module: String,
        /// The entry point asked for.
        name: String,
    },

    /// A PTX module asked for does not exist in this build.
    #[error("no PTX module named `{0}` is embedded in this build")]
    UnknownModule(String),

    /// Arguments to an operation are inconsistent (lengths, sizes, offsets).
    #[error("invalid argument to {op}: {message}")]
    InvalidArgument {
        /// The operation (kernel wrapper, layer, loader) that rejected it.
        op: &'static str,
        /// What is wrong, naming the argument.
        message: String,
    },

    /// An operation was given a dtype or head size it does not support.
    #[error("unsupported by {op}: {message}")]
    Unsupported {
        /// The operation.
        op: &'static str,
        /// What is unsupported.
        message: String,
    },

    /// A model configuration is invalid.
    #[error("invalid model config: {0}")]
    Config(String),

    /// Weights do not match the config; every problem is listed, by tensor name.
    #[error("weights do not match the config ({} problem(s)):\n  {}", .0.len(), .0.join("\n  "))]
    Weights(Vec<String>),

    /// Inputs do not match the model; every problem is listed.
    #[error("invalid input ({} problem(s)):\n  {}", .0.len(), .0.join("\n  "))]
    Input(Vec<String>),

    /// A safetensors file could not be parsed or written.
    #[error("safetensors error in {context}: {message}")]
    Safetensors {
        /// The file or buffer.
        context: String,
        /// The parser's message.
        message: String,
    },

    /// A JSON document could not be parsed or written.
    #[error("JSON error in {context}: {source}")]
    Json {
        /// The file or document.
        context: String,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },

    /// A file could not be read or written.
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// The tokenizer failed to load or to encode.
    #[error("tokenizer error: {0}")]
    Tokenizer(String),

    /// Work whose size, computed before allocating, exceeds the memory
    /// available or a stated limit ([`crate::limits`]).
    #[error(
        "{what} would need at least {} of memory, more than {} ({source_of_limit})",
        crate::limits::human_bytes(*needed),
        crate::limits::human_bytes(*limit)
    )]
    TooLarge {
        /// What was about to be allocated.
        what: String,
        /// A lower bound of the bytes it needs.
        needed: u64,
        /// The limit, in bytes.
        limit: u64,
        /// Where the limit comes from (`the memory available`, or
        /// `SMARTTRIM_MEMORY_LIMIT=...`).
        source_of_limit: String,
    },

    /// A picture could not be drawn or encoded.
    #[error("plotting error: {0}")]
    Plot(String),
}

impl Error {
    /// Shorthand for [`Error::InvalidArgument`].
    pub fn invalid(op: &'static str, message: impl Into<String>) -> Self {
        Error::InvalidArgument {
            op,
            message: message.into(),
        }
    }

    /// Shorthand for [`Error::Driver`].
    pub fn driver(context: impl Into<String>, source: cudarc::driver::DriverError) -> Self {
        Error::Driver {
            context: context.into(),
            source,
        }
    }

    /// Shorthand for [`Error::Io`].
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

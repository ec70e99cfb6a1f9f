//! The C boundary: status codes, a failure on its way to C and the
//! thread's last message ([`smarttrim_last_error_message`]), the panic
//! guard every entry point runs under, and the helpers that read and write
//! the caller's pointers.

use std::cell::RefCell;
use std::ffi::{c_char, c_int, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::Error;

/// Status codes returned by every function of the C API.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmarttrimStatus {
    /// Success.
    Ok = 0,
    /// A required pointer argument was null.
    NullPointer = 1,
    /// An argument or input is invalid (sizes, `cu_seqlens`, capacity, paths
    /// that are not UTF-8).
    InvalidArgument = 2,
    /// No CUDA driver (libcuda could not be loaded).
    NoDriver = 3,
    /// The driver reports no (such) CUDA device.
    NoDevice = 4,
    /// The library was built without the GPU kernels.
    KernelsNotBuilt = 5,
    /// A CUDA driver, cuBLAS or kernel-loading call failed.
    CudaError = 6,
    /// A file could not be read.
    IoError = 7,
    /// The model config is invalid (or not valid JSON).
    ConfigError = 8,
    /// The weights file is invalid or does not match the config.
    WeightsError = 9,
    /// The model or input kind is not supported (by the kernels or by this API).
    Unsupported = 10,
    /// The library panicked (a bug); the panic was caught at the boundary.
    Panic = 11,
    /// The model handle is not live (destroyed, or never created).
    BadHandle = 12,
}

thread_local! {
    static LAST_ERROR: RefCell<String> = const { RefCell::new(String::new()) };
}

/// A failure on its way to C: status and message.
#[derive(Debug)]
pub(super) struct Fail(pub(super) SmarttrimStatus, pub(super) String);

impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        Fail(status_of(&e), e.to_string())
    }
}

pub(super) fn fail(status: SmarttrimStatus, message: impl Into<String>) -> Fail {
    Fail(status, message.into())
}

/// The status code of a library error.
pub fn status_of(e: &Error) -> SmarttrimStatus {
    use SmarttrimStatus as S;
    match e {
        Error::NoDriver => S::NoDriver,
        Error::NoDevice(_) => S::NoDevice,
        Error::KernelsNotBuilt(_) => S::KernelsNotBuilt,
        Error::Driver { .. }
        | Error::Blas { .. }
        | Error::MissingKernel { .. }
        | Error::UnknownModule(_) => S::CudaError,
        Error::InvalidArgument { .. } | Error::Input(_) | Error::TooLarge { .. } => {
            S::InvalidArgument
        }
        Error::Unsupported { .. } => S::Unsupported,
        Error::Config(_) | Error::Json { .. } => S::ConfigError,
        Error::Weights(_) | Error::Safetensors { .. } => S::WeightsError,
        Error::Io { .. } => S::IoError,
        // Not reachable through this API (tokenizers, pictures).
        Error::Tokenizer(_) | Error::Plot(_) => S::InvalidArgument,
    }
}

/// Runs `body` with panics caught; records the message of a failure.
pub(super) fn guard(body: impl FnOnce() -> Result<(), Fail>) -> c_int {
    let result = catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|p| {
        let what = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown payload".into());
        Err(fail(
            SmarttrimStatus::Panic,
            format!("smarttrim panicked (a bug; please report it): {what}"),
        ))
    });
    match result {
        Ok(()) => SmarttrimStatus::Ok as c_int,
        Err(Fail(status, message)) => {
            LAST_ERROR.with(|m| *m.borrow_mut() = message);
            status as c_int
        }
    }
}

pub(super) fn nonnull<T>(p: *const T, name: &str) -> Result<(), Fail> {
    if p.is_null() {
        Err(fail(
            SmarttrimStatus::NullPointer,
            format!("`{name}` is a null pointer"),
        ))
    } else {
        Ok(())
    }
}

/// Reads `len` elements the caller promises are readable at `p`.
///
/// # Safety
///
/// `p` must be non-null, aligned and valid for reads of `len` elements.
pub(super) unsafe fn read_slice<'a, T>(p: *const T, len: usize) -> &'a [T] {
    if len == 0 {
        return &[];
    }
    // SAFETY: guaranteed by this function's contract (the C caller's promise).
    unsafe { std::slice::from_raw_parts(p, len) }
}

/// Writes one value to an out-pointer the caller promises is writable.
///
/// # Safety
///
/// `p` must be non-null, aligned and valid for a write of one `T`.
pub(super) unsafe fn write_out<T>(p: *mut T, v: T) {
    // SAFETY: guaranteed by this function's contract.
    unsafe { p.write(v) }
}

/// A NUL-terminated UTF-8 path from C.
///
/// # Safety
///
/// `p` must be non-null and point to a NUL-terminated string.
pub(super) unsafe fn c_path(p: *const c_char, name: &str) -> Result<String, Fail> {
    // SAFETY: guaranteed by this function's contract.
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str().map(str::to_string).map_err(|_| {
        fail(
            SmarttrimStatus::InvalidArgument,
            format!("`{name}` is not valid UTF-8"),
        )
    })
}

/// Copies the message of this thread's most recent failing call into `buf`
/// (`len` bytes, NUL included; truncated on a UTF-8 boundary; empty when no
/// call has failed on this thread).
///
/// # Safety
///
/// `buf` must be writable for `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn smarttrim_last_error_message(buf: *mut c_char, len: usize) -> c_int {
    // Not through `guard`: a failure here must not replace the message.
    let r = catch_unwind(AssertUnwindSafe(|| {
        if buf.is_null() {
            return SmarttrimStatus::NullPointer;
        }
        if len == 0 {
            return SmarttrimStatus::InvalidArgument;
        }
        LAST_ERROR.with(|m| {
            let m = m.borrow();
            let mut n = m.len().min(len - 1);
            while !m.is_char_boundary(n) {
                n -= 1;
            }
            // SAFETY: `buf` is non-null and writable for `len > n` bytes; the
            // source is our own string.
            unsafe {
                std::ptr::copy_nonoverlapping(m.as_ptr(), buf.cast::<u8>(), n);
                buf.add(n).write(0);
            }
        });
        SmarttrimStatus::Ok
    }));
    r.unwrap_or(SmarttrimStatus::Panic) as c_int
}

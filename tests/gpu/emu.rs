//! The emulated device's test exports (`emu/`, `smarttrim_emu_*` in its
//! libcuda), when the loaded driver is the emulator: host-involvement
//! counters and fault injection. On a real GPU [`Emu::get`] is `None`.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::{c_char, c_int, CStr, CString};
use std::sync::OnceLock;

/// The emulator's exports, resolved once.
pub struct Emu {
    counters: unsafe extern "C" fn(*mut u64, c_int, c_int) -> c_int,
    names: Vec<String>,
    fail_after: unsafe extern "C" fn(*const c_char, u64) -> c_int,
    injected: unsafe extern "C" fn() -> u64,
    calls: unsafe extern "C" fn(*const c_char) -> i64,
    describe: unsafe extern "C" fn() -> *const c_char,
    // Keeps the library (already loaded by cudarc) referenced.
    _lib: libloading::Library,
}

/// Counter values by name (`kernel_launches`, `allocs`, `stream_syncs`, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters(pub BTreeMap<String, u64>);

impl Counters {
    pub fn get(&self, name: &str) -> u64 {
        *self
            .0
            .get(name)
            .unwrap_or_else(|| panic!("the emulator has no counter `{name}`"))
    }
    /// `self - before`, counter by counter.
    pub fn since(&self, before: &Counters) -> Counters {
        Counters(
            self.0
                .iter()
                .map(|(k, v)| (k.clone(), v - before.0.get(k).copied().unwrap_or(0)))
                .collect(),
        )
    }
    /// Host waits: stream, event and context synchronizes.
    pub fn waits(&self) -> u64 {
        self.get("stream_syncs") + self.get("event_syncs") + self.get("ctx_syncs")
    }
}

impl Emu {
    /// The exports, or `None` when libcuda is not the emulator.
    pub fn get() -> Option<&'static Emu> {
        static EMU: OnceLock<Option<Emu>> = OnceLock::new();
        EMU.get_or_init(|| {
            // SAFETY: libcuda is already loaded by cudarc (same handle); the
            // emulator's exports have exactly these C signatures
            // (emu/driver/state.cpp); none is called with bad arguments.
            unsafe {
                let lib = libloading::Library::new("libcuda.so").ok()?;
                let count: libloading::Symbol<unsafe extern "C" fn() -> c_int> =
                    lib.get(b"smarttrim_emu_counter_count\0").ok()?;
                let name: libloading::Symbol<unsafe extern "C" fn(c_int) -> *const c_char> =
                    lib.get(b"smarttrim_emu_counter_name\0").ok()?;
                let n = count();
                let names = (0..n)
                    .map(|i| CStr::from_ptr(name(i)).to_string_lossy().into_owned())
                    .collect();
                let counters = *lib.get(b"smarttrim_emu_counters\0").ok()?;
                let fail_after = *lib.get(b"smarttrim_emu_fail_after\0").ok()?;
                let injected = *lib.get(b"smarttrim_emu_injected\0").ok()?;
                let calls = *lib.get(b"smarttrim_emu_calls\0").ok()?;
                let describe = *lib.get(b"smarttrim_emu_describe\0").ok()?;
                Some(Emu {
                    counters,
                    names,
                    fail_after,
                    injected,
                    calls,
                    describe,
                    _lib: lib,
                })
            }
        })
        .as_ref()
    }

    /// The calling thread's counters.
    pub fn counters(&self) -> Counters {
        let mut v = vec![0u64; self.names.len()];
        // SAFETY: `v` holds as many slots as the emulator has counters.
        unsafe { (self.counters)(v.as_mut_ptr(), v.len() as c_int, 0) };
        Counters(self.names.iter().cloned().zip(v).collect())
    }

    /// Makes the calling thread's `n`-th next call of `kind` fail
    /// (`driver`, `alloc`, `launch`, `blas`, `kernel_fault`; 0 disarms).
    pub fn fail_after(&self, kind: &str, n: u64) {
        let k = CString::new(kind).unwrap();
        // SAFETY: a valid C string.
        let r = unsafe { (self.fail_after)(k.as_ptr(), n) };
        assert_eq!(r, 0, "the emulator knows no injection kind `{kind}`");
    }

    /// Failures injected on the calling thread so far.
    pub fn injected(&self) -> u64 {
        // SAFETY: no arguments.
        unsafe { (self.injected)() }
    }

    /// Calls of `kind` this thread made since its last [`Emu::fail_after`]
    /// of that kind.
    pub fn calls(&self, kind: &str) -> u64 {
        let k = CString::new(kind).unwrap();
        // SAFETY: a valid C string.
        let n = unsafe { (self.calls)(k.as_ptr()) };
        assert!(n >= 0, "the emulator knows no injection kind `{kind}`");
        n as u64
    }

    /// The emulator's configuration, one line.
    pub fn describe(&self) -> String {
        // SAFETY: returns a NUL-terminated static string.
        unsafe {
            CStr::from_ptr((self.describe)())
                .to_string_lossy()
                .into_owned()
        }
    }
}

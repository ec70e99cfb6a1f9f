//! Device runtime and build pipeline checks that run on every machine: the
//! no-driver / no-device paths, the embedded PTX, the ptxas resource report,
//! and the wrappers' validation (which needs no GPU).

use std::io::Write as _;

use smarttrim::device::{self, Device};
use smarttrim::kernels;
use smarttrim::ops::{LayerNormLens, LayerNormShape};
use smarttrim::Error;

/// Every entry point the runtime loads, by module. A kernel file added
/// later lists its entries here too.
const EXPECTED_ENTRIES: &[(&str, &[&str])] = &[
    ("elementwise", &["layernorm_f16"]),
    (
        "embed",
        &["bert_embed_f16", "vit_patchify_f16", "vit_assemble_f16"],
    ),
];

/// True when the kernels are embedded; otherwise prints why the test is
/// skipped (failing instead under SMARTTRIM_REQUIRE_CUDA=1, as in CI).
fn kernels_built(test: &str) -> bool {
    if kernels::BUILT {
        return true;
    }
    let required = std::env::var("SMARTTRIM_REQUIRE_CUDA").is_ok_and(|v| v == "1");
    assert!(
        !required,
        "{test}: SMARTTRIM_REQUIRE_CUDA=1 but kernels were not built: {}",
        kernels::NOT_BUILT_REASON
    );
    let _ = writeln!(
        std::io::stderr(),
        "skipped {test}: GPU kernels not built: {}",
        kernels::NOT_BUILT_REASON
    );
    false
}

#[test]
fn missing_driver_or_device_is_an_error_not_a_panic() {
    match device::driver_available() {
        Err(Error::NoDriver) => {
            assert!(matches!(Device::open(0), Err(Error::NoDriver)));
            assert!(matches!(device::device_count(), Err(Error::NoDriver)));
            assert!(matches!(device::driver_version(), Err(Error::NoDriver)));
        }
        Err(other) => panic!("driver_available returned an unexpected error: {other}"),
        Ok(()) => {
            let n = device::device_count().expect("device count with a driver present");
            // Past the last device (or with none at all): NoDevice, not a panic.
            match Device::open(n) {
                Err(Error::NoDevice(msg)) => assert!(!msg.is_empty()),
                other => panic!("opening device {n} of {n} gave {other:?}"),
            }
        }
    }
}

#[test]
fn not_built_kernels_give_a_typed_error() {
    match kernels::ensure_built() {
        Ok(()) => {
            assert!(std::hint::black_box(kernels::BUILT) && kernels::NOT_BUILT_REASON.is_empty())
        }
        Err(Error::KernelsNotBuilt(reason)) => {
            assert!(!std::hint::black_box(kernels::BUILT));
            assert!(!reason.is_empty());
            assert!(kernels::MODULES.is_empty());
        }
        Err(other) => panic!("unexpected error {other}"),
    }
}

#[test]
fn embedded_ptx_has_every_entry_point_for_every_target() {
    if !kernels_built("embedded_ptx_has_every_entry_point_for_every_target") {
        return;
    }
    assert!(!kernels::TARGETS.is_empty());
    for (module, entries) in EXPECTED_ENTRIES {
        for target in kernels::TARGETS {
            let m = kernels::MODULES
                .iter()
                .find(|m| m.name == *module && m.target == *target)
                .unwrap_or_else(|| panic!("module {module} for {target} is not embedded"));
            assert!(
                m.ptx.lines().any(|l| l.starts_with(".version ")),
                "{module}/{target}: no .version line"
            );
            let arch = target
                .trim_start_matches("compute_")
                .trim_start_matches("sm_");
            assert!(
                m.ptx
                    .lines()
                    .any(|l| l.starts_with(".target sm_") && l.contains(arch)),
                "{module}/{target}: .target does not name {arch}"
            );
            let found = kernels::ptx_entries(m.ptx);
            for e in *entries {
                assert!(
                    found.iter().any(|f| f == e),
                    "{module}/{target}: entry {e} missing (found {found:?})"
                );
            }
        }
    }
}

#[test]
fn pinned_nvcc_emits_ptx_isa_9_0() {
    if !kernels_built("pinned_nvcc_emits_ptx_isa_9_0") {
        return;
    }
    if !kernels::NVCC_VERSION.contains("release 13.0") {
        let _ = writeln!(
            std::io::stderr(),
            "skipped pinned_nvcc_emits_ptx_isa_9_0: built with `{}`, not the pinned 13.0",
            kernels::NVCC_VERSION
        );
        return;
    }
    for m in kernels::MODULES {
        assert!(
            m.ptx.lines().any(|l| l.trim() == ".version 9.0"),
            "{}/{}: PTX is not ISA 9.0, which the 580 driver needs",
            m.name,
            m.target
        );
    }
}

#[test]
fn no_kernel_spills_registers() {
    if !kernels_built("no_kernel_spills_registers") {
        return;
    }
    let all = kernels::all_resources();
    // Every module must have produced a parsable report for every entry.
    for m in kernels::MODULES {
        let entries = kernels::ptx_entries(m.ptx);
        let reported: Vec<_> = all
            .iter()
            .filter(|(n, t, _)| *n == m.name && *t == m.target)
            .map(|(_, _, r)| r.name.clone())
            .collect();
        for e in entries {
            assert!(
                reported.contains(&e),
                "{}/{}: ptxas report lacks {e}",
                m.name,
                m.target
            );
        }
    }
    let spills: Vec<String> = all
        .iter()
        .filter(|(_, _, r)| r.spill_store_bytes > 0 || r.spill_load_bytes > 0)
        .map(|(m, t, r)| {
            format!(
                "{m}/{t} {}: {} B spill stores, {} B spill loads, {} registers",
                r.name, r.spill_store_bytes, r.spill_load_bytes, r.registers
            )
        })
        .collect();
    assert!(spills.is_empty(), "register spills:\n{}", spills.join("\n"));
}

#[test]
fn module_selection_by_compute_capability() {
    if !kernels_built("module_selection_by_compute_capability") {
        return;
    }
    assert!(matches!(
        kernels::select("elementwise", (7, 5)),
        Err(Error::Unsupported { .. })
    ));
    assert!(matches!(
        kernels::select("no_such_module", (9, 0)),
        Err(Error::UnknownModule(_))
    ));
    let ampere = kernels::select("elementwise", (8, 0)).unwrap();
    assert!(ampere.target.starts_with("compute_"));
    let hopper = kernels::select("elementwise", (9, 0)).unwrap();
    if kernels::TARGETS.contains(&"sm_90a") {
        assert_eq!(hopper.target, "sm_90a");
    }
    // Blackwell and later run the portable PTX, never the sm_90a code.
    let later = kernels::select("elementwise", (10, 0)).unwrap();
    assert_ne!(later.target, "sm_90a");
}

fn lens(rows: usize, d: usize) -> LayerNormLens {
    LayerNormLens {
        x: rows * d,
        gamma: d,
        beta: d,
        out: rows * d,
        residual: None,
        rows_dev: None,
    }
}

#[test]
fn layernorm_wrapper_rejects_inconsistent_shapes() {
    let ok = LayerNormShape {
        rows: 31,
        d: 384,
        eps: 1e-6,
    };
    ok.validate(&lens(31, 384)).unwrap();
    // Zero rows is valid (nothing to do).
    LayerNormShape { rows: 0, ..ok }
        .validate(&lens(0, 384))
        .unwrap();

    let cases: Vec<(&str, LayerNormShape, LayerNormLens, &str)> = vec![
        (
            "d not a multiple of 8",
            LayerNormShape { d: 100, ..ok },
            lens(31, 100),
            "multiple of 8",
        ),
        (
            "d zero",
            LayerNormShape { d: 0, ..ok },
            lens(31, 0),
            "multiple of 8",
        ),
        (
            "eps zero",
            LayerNormShape { eps: 0.0, ..ok },
            lens(31, 384),
            "eps",
        ),
        (
            "eps NaN",
            LayerNormShape {
                eps: f32::NAN,
                ..ok
            },
            lens(31, 384),
            "eps",
        ),
        (
            "x short",
            ok,
            LayerNormLens {
                x: 30 * 384,
                ..lens(31, 384)
            },
            "`x`",
        ),
        (
            "out short",
            ok,
            LayerNormLens {
                out: 384,
                ..lens(31, 384)
            },
            "`out`",
        ),
        (
            "gamma wrong",
            ok,
            LayerNormLens {
                gamma: 383,
                ..lens(31, 384)
            },
            "gamma",
        ),
        (
            "beta wrong",
            ok,
            LayerNormLens {
                beta: 768,
                ..lens(31, 384)
            },
            "beta",
        ),
        (
            "residual short",
            ok,
            LayerNormLens {
                residual: Some(10),
                ..lens(31, 384)
            },
            "`residual`",
        ),
        (
            "rows_dev empty",
            ok,
            LayerNormLens {
                rows_dev: Some(0),
                ..lens(31, 384)
            },
            "`rows_dev`",
        ),
        (
            "rows overflow i32",
            LayerNormShape {
                rows: 1 << 32,
                ..ok
            },
            lens(0, 384),
            "32-bit",
        ),
    ];
    for (what, shape, l, needle) in cases {
        match shape.validate(&l) {
            Err(e @ Error::InvalidArgument { .. }) => {
                let msg = e.to_string();
                assert!(
                    msg.contains(needle),
                    "{what}: message `{msg}` lacks `{needle}`"
                );
            }
            other => panic!("{what}: expected InvalidArgument, got {other:?}"),
        }
    }
}

#[test]
fn linear_wrapper_rejects_inconsistent_shapes() {
    use smarttrim::ops::LinearShape;
    let s = LinearShape {
        rows: 40,
        k: 768,
        n: 2304,
    };
    s.validate(40 * 768, 2304 * 768, Some(2304), 40 * 2304)
        .unwrap();
    let bad = [
        (s.validate(39 * 768, 2304 * 768, None, 40 * 2304), "`x`"),
        (
            s.validate(40 * 768, 2304 * 767, None, 40 * 2304),
            "`weight`",
        ),
        (s.validate(40 * 768, 2304 * 768, None, 40), "`y`"),
        (
            s.validate(40 * 768, 2304 * 768, Some(768), 40 * 2304),
            "bias",
        ),
        (
            LinearShape { k: 100, ..s }.validate(40 * 100, 2304 * 100, None, 40 * 2304),
            "multiples of 8",
        ),
        (
            LinearShape { n: 0, ..s }.validate(40 * 768, 0, None, 0),
            "positive",
        ),
    ];
    for (r, needle) in bad {
        let msg = r.expect_err(needle).to_string();
        assert!(msg.contains(needle), "`{msg}` lacks `{needle}`");
    }
}

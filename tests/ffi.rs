//! The C API (`smarttrim::ffi`) called as C would call it. Without a GPU:
//! null pointers, bad paths, configs, weights and unsupported models are
//! reported with their status and message; model creation then stops at
//! `NO_DRIVER` / `NO_DEVICE`; destroyed or made-up handles are `BAD_HANDLE`.
//! With a GPU, the same test also runs a pass and reads the statistics.

use std::ffi::{c_char, CString};
use std::path::Path;
use std::ptr;

use smarttrim::ffi::*;
use smarttrim::model::gpu_variant;
use smarttrim::spec::{preset, ModelConfig, Weights};

const OK: i32 = SmarttrimStatus::Ok as i32;

fn last_error() -> String {
    let mut buf = vec![0 as c_char; 4096];
    // SAFETY: `buf` is writable for its length.
    let st = unsafe { smarttrim_last_error_message(buf.as_mut_ptr(), buf.len()) };
    assert_eq!(st, OK);
    // SAFETY: the function NUL-terminates within `buf`.
    unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

fn cstr(p: &Path) -> CString {
    CString::new(p.to_str().unwrap()).unwrap()
}

fn create(config: &CString, weights: &CString) -> (i32, *mut SmarttrimModel) {
    let mut m = ptr::without_provenance_mut::<SmarttrimModel>(0x1234);
    // SAFETY: valid C strings and out pointer.
    let st = unsafe { smarttrim_model_create(config.as_ptr(), weights.as_ptr(), 0, &mut m) };
    (st, m)
}

/// The C example's model: the tiny-meter preset's GPU variant.
#[test]
fn example_config_is_the_tiny_meter_gpu_variant() {
    // The source tree, or the current directory (the GPU bundle runs this
    // executable from a copy of the repository at another path).
    let rel = "examples/c/tiny-meter-gpu.json";
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    let path = if built.exists() {
        built
    } else {
        Path::new(rel).to_path_buf()
    };
    let want = gpu_variant(&preset("tiny-meter").unwrap());
    if std::env::var("SMARTTRIM_UPDATE_EXAMPLE_CONFIG").is_ok_and(|v| v == "1") {
        std::fs::write(&path, want.to_json().unwrap() + "\n").unwrap();
    }
    let have = ModelConfig::from_file(&path).unwrap();
    assert_eq!(have, want);
    smarttrim::model::check_supported(&have).unwrap();
}

#[test]
fn null_pointers_are_reported() {
    let c = CString::new("x").unwrap();
    let mut m = ptr::null_mut();
    let null = SmarttrimStatus::NullPointer as i32;
    // SAFETY: every pointer is either valid or null (which must be reported).
    unsafe {
        assert_eq!(
            smarttrim_model_create(c.as_ptr(), c.as_ptr(), 0, ptr::null_mut()),
            null
        );
        assert_eq!(
            smarttrim_model_create(ptr::null(), c.as_ptr(), 0, &mut m),
            null
        );
        assert!(m.is_null());
        assert!(last_error().contains("config_path"), "{}", last_error());
        assert_eq!(
            smarttrim_model_create(c.as_ptr(), ptr::null(), 0, &mut m),
            null
        );
        assert_eq!(smarttrim_model_destroy(ptr::null_mut()), null);
        let mut n = 0usize;
        let lens = [1, 1];
        assert_eq!(
            smarttrim_model_workspace_bytes(ptr::null(), 1, lens.as_ptr(), &mut n),
            null
        );
        assert_eq!(
            smarttrim_forward(
                ptr::null_mut(),
                ptr::null_mut(),
                ptr::null(),
                0,
                ptr::null(),
                1,
                0
            ),
            null
        );
        assert_eq!(
            smarttrim_stats(
                ptr::null(),
                ptr::null_mut(),
                ptr::null_mut(),
                ptr::null_mut(),
                ptr::null_mut(),
                ptr::null_mut(),
                ptr::null_mut(),
                0
            ),
            null
        );
        assert_eq!(smarttrim_last_error_message(ptr::null_mut(), 10), null);
        assert_eq!(
            smarttrim_model_reserve(ptr::null_mut(), 1, lens.as_ptr()),
            null
        );
        assert_eq!(
            smarttrim_forward_device(
                ptr::null_mut(),
                ptr::null_mut(),
                ptr::null(),
                0,
                ptr::null(),
                1,
                ptr::null(),
                0,
                0
            ),
            null
        );
    }
}

#[test]
fn made_up_and_destroyed_handles_are_bad_handles() {
    let bad = SmarttrimStatus::BadHandle as i32;
    let h = ptr::without_provenance_mut::<SmarttrimModel>(0xdead_beef);
    let lens = [4, 4];
    let mut n = 0usize;
    let (mut l, mut s, mut b) = (0usize, 0usize, 0usize);
    // SAFETY: the handle is never dereferenced (registry lookup); the other
    // pointers are valid.
    unsafe {
        assert_eq!(smarttrim_model_destroy(h), bad);
        assert!(last_error().contains("not live"), "{}", last_error());
        assert_eq!(
            smarttrim_model_workspace_bytes(h, 1, lens.as_ptr(), &mut n),
            bad
        );
        assert_eq!(
            smarttrim_stats(
                h,
                &mut l,
                &mut s,
                &mut b,
                ptr::null_mut(),
                ptr::null_mut(),
                ptr::null_mut(),
                0
            ),
            bad
        );
        let inputs = [SmarttrimPackedInput {
            rows: ptr::null(),
            cu_seqlens: ptr::null(),
        }; 2];
        assert_eq!(
            smarttrim_forward(h, ptr::null_mut(), inputs.as_ptr(), 2, ptr::null(), 1, 0),
            bad
        );
        assert_eq!(smarttrim_model_reserve(h, 1, lens.as_ptr()), bad);
        assert_eq!(
            smarttrim_model_set_workspace(h, 0x1000, 1 << 20, 1, lens.as_ptr()),
            bad
        );
        assert_eq!(
            smarttrim_model_set_workspace(h, 0, 1 << 20, 1, lens.as_ptr()),
            SmarttrimStatus::NullPointer as i32
        );
        let cu = [0i32, 1];
        let dins = [SmarttrimDeviceInput {
            rows: 0,
            cu_seqlens: 0,
            host_cu_seqlens: cu.as_ptr(),
        }; 2];
        let douts = [SmarttrimDeviceOutput {
            rows: 0,
            rows_capacity: 0,
            cu_seqlens: 0,
            orig_index: 0,
            orig_capacity: 0,
        }; 2];
        assert_eq!(
            smarttrim_forward_device(
                h,
                ptr::null_mut(),
                dins.as_ptr(),
                2,
                ptr::null(),
                1,
                douts.as_ptr(),
                2,
                0
            ),
            bad
        );
    }
}

#[test]
fn file_config_and_support_errors_come_before_the_device() {
    let dir = tempfile::tempdir().unwrap();
    let missing = cstr(&dir.path().join("missing.json"));
    let (st, m) = create(&missing, &missing);
    assert_eq!(st, SmarttrimStatus::IoError as i32, "{}", last_error());
    assert!(m.is_null());
    assert!(last_error().contains("missing.json"), "{}", last_error());

    let bad_json = dir.path().join("bad.json");
    std::fs::write(&bad_json, "{ not json").unwrap();
    let (st, _) = create(&cstr(&bad_json), &missing);
    assert_eq!(st, SmarttrimStatus::ConfigError as i32, "{}", last_error());

    // The raw tiny-meter preset: weights fine, the token scorer does not support width 32.
    let raw = preset("tiny-meter").unwrap();
    let raw_cfg = dir.path().join("tiny.json");
    std::fs::write(&raw_cfg, raw.to_json().unwrap()).unwrap();
    let raw_w = dir.path().join("tiny.safetensors");
    Weights::random(&raw, 1).unwrap().save(&raw_w).unwrap();
    let (st, _) = create(&cstr(&raw_cfg), &cstr(&dir.path().join("nope.safetensors")));
    assert_eq!(st, SmarttrimStatus::IoError as i32, "{}", last_error());
    let (st, _) = create(&cstr(&raw_cfg), &cstr(&raw_w));
    assert_eq!(st, SmarttrimStatus::Unsupported as i32, "{}", last_error());

    // Weights of another model.
    let var = gpu_variant(&raw);
    let var_cfg = dir.path().join("var.json");
    std::fs::write(&var_cfg, var.to_json().unwrap()).unwrap();
    let (st, _) = create(&cstr(&var_cfg), &cstr(&raw_w));
    assert_eq!(st, SmarttrimStatus::WeightsError as i32, "{}", last_error());

    // A negative device ordinal.
    let var_w = dir.path().join("var.safetensors");
    Weights::random(&var, 1).unwrap().save(&var_w).unwrap();
    let mut m = ptr::null_mut();
    let (c, w) = (cstr(&var_cfg), cstr(&var_w));
    // SAFETY: valid strings and out pointer.
    let st = unsafe { smarttrim_model_create(c.as_ptr(), w.as_ptr(), -1, &mut m) };
    assert_eq!(st, SmarttrimStatus::InvalidArgument as i32);
}

#[test]
fn last_error_message_truncates_on_a_char_boundary() {
    let c = CString::new("/nonexistent/é/config.json").unwrap();
    let (st, _) = create(&c, &c);
    assert_eq!(st, SmarttrimStatus::IoError as i32);
    let full = last_error();
    let mut buf = [0x55 as c_char; 8];
    // SAFETY: `buf` is writable for 8 bytes.
    assert_eq!(
        unsafe { smarttrim_last_error_message(buf.as_mut_ptr(), 8) },
        OK
    );
    // SAFETY: NUL-terminated within `buf`.
    let short = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
        .to_str()
        .unwrap();
    assert!(
        full.starts_with(short) && short.len() <= 7,
        "{short:?} / {full:?}"
    );
    // SAFETY: as above; a zero length is rejected without writing.
    assert_eq!(
        unsafe { smarttrim_last_error_message(buf.as_mut_ptr(), 0) },
        SmarttrimStatus::InvalidArgument as i32
    );
}

#[test]
fn workspace_bytes_matches_the_layout() {
    let cfg = gpu_variant(&preset("tiny-meter").unwrap());
    let cap = smarttrim::model::Capacity {
        max_batch: 4,
        max_seqlen: vec![8, 17],
        context_max_seqlen: 0,
    };
    let lay = smarttrim::model::WorkspaceLayout::new(&cfg, &cap).unwrap();
    let want = lay.arena_bytes();
    assert_eq!(workspace_bytes(&cfg, 4, &[8, 17]).unwrap(), want);
    // Every buffer rounded up to 256 bytes: at least the raw sum.
    assert!(
        want >= lay.bytes() && want % 256 == 0,
        "{want} vs {}",
        lay.bytes()
    );
    assert!(workspace_bytes(&cfg, 4, &[8]).is_err());
    let blip = gpu_variant(&preset("tiny-blip").unwrap());
    assert!(workspace_bytes(&blip, 2, &[8, 5]).unwrap() > 0);
}

#[test]
fn status_codes_of_errors() {
    use smarttrim::Error;
    assert_eq!(status_of(&Error::NoDriver), SmarttrimStatus::NoDriver);
    assert_eq!(
        status_of(&Error::NoDevice("x".into())),
        SmarttrimStatus::NoDevice
    );
    assert_eq!(
        status_of(&Error::KernelsNotBuilt("x".into())),
        SmarttrimStatus::KernelsNotBuilt
    );
    assert_eq!(
        status_of(&Error::Config("x".into())),
        SmarttrimStatus::ConfigError
    );
    assert_eq!(
        status_of(&Error::Weights(vec![])),
        SmarttrimStatus::WeightsError
    );
    assert_eq!(
        status_of(&Error::Input(vec![])),
        SmarttrimStatus::InvalidArgument
    );
    assert_eq!(
        status_of(&Error::invalid("op", "m")),
        SmarttrimStatus::InvalidArgument
    );
}

/// Create, forward, statistics, destroy, destroy again. Without a GPU the
/// creation fails with the driver/device status and the rest is skipped.
#[test]
fn lifecycle_on_the_gpu_or_no_driver() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = gpu_variant(&preset("tiny-meter").unwrap());
    let (cp, wp) = (dir.path().join("c.json"), dir.path().join("w.safetensors"));
    std::fs::write(&cp, cfg.to_json().unwrap()).unwrap();
    Weights::random(&cfg, 7).unwrap().save(&wp).unwrap();
    let (st, m) = create(&cstr(&cp), &cstr(&wp));
    if st != OK {
        let msg = last_error();
        assert!(
            [
                SmarttrimStatus::NoDriver,
                SmarttrimStatus::NoDevice,
                SmarttrimStatus::KernelsNotBuilt
            ]
            .iter()
            .any(|s| *s as i32 == st),
            "status {st}: {msg}"
        );
        assert!(m.is_null());
        if std::env::var("SMARTTRIM_REQUIRE_GPU").is_ok_and(|v| v == "1") {
            panic!("SMARTTRIM_REQUIRE_GPU=1 but: {msg}");
        }
        eprintln!("skipping the GPU part: {msg}");
        return;
    }
    let (batch, d) = (2usize, 64usize);
    let cu_t = [0i32, 5, 8];
    let cu_i = [0i32, 17, 34];
    let rows_t: Vec<f32> = (0..8 * d)
        .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
        .collect();
    let rows_i: Vec<f32> = (0..34 * d)
        .map(|i| ((i * 53 % 97) as f32 / 48.0) - 1.0)
        .collect();
    let inputs = [
        SmarttrimPackedInput {
            rows: rows_t.as_ptr(),
            cu_seqlens: cu_t.as_ptr(),
        },
        SmarttrimPackedInput {
            rows: rows_i.as_ptr(),
            cu_seqlens: cu_i.as_ptr(),
        },
    ];
    let (mut l, mut s, mut b) = (0usize, 0usize, 0usize);
    let mut bytes = 0usize;
    let lens = [5, 17];
    // SAFETY: valid live handle and buffers as documented.
    unsafe {
        assert_eq!(
            smarttrim_model_workspace_bytes(m, 2, lens.as_ptr(), &mut bytes),
            OK,
            "{}",
            last_error()
        );
        assert!(bytes > 0);
        assert_eq!(
            smarttrim_stats(
                m,
                &mut l,
                &mut s,
                &mut b,
                ptr::null_mut(),
                ptr::null_mut(),
                ptr::null_mut(),
                0
            ),
            SmarttrimStatus::InvalidArgument as i32
        );
        assert_eq!(
            smarttrim_forward(
                m,
                ptr::null_mut(),
                inputs.as_ptr(),
                2,
                ptr::null(),
                batch,
                0
            ),
            OK,
            "{}",
            last_error()
        );
        assert_eq!(
            smarttrim_stats(
                m,
                &mut l,
                &mut s,
                &mut b,
                ptr::null_mut(),
                ptr::null_mut(),
                ptr::null_mut(),
                0
            ),
            OK
        );
        assert_eq!((l, s, b), (3, 2, batch));
        let n = l * s * b;
        let (mut kept, mut sh, mut ch) = (vec![0i32; n], vec![0i32; n], vec![0i32; n]);
        assert_eq!(
            smarttrim_stats(
                m,
                ptr::null_mut(),
                ptr::null_mut(),
                ptr::null_mut(),
                kept.as_mut_ptr(),
                sh.as_mut_ptr(),
                ch.as_mut_ptr(),
                n
            ),
            OK
        );
        // Layer 0 keeps every row: [text 5, 3 | image 17, 17].
        assert_eq!(&kept[..4], &[5, 3, 17, 17]);
        assert!(sh.iter().all(|&h| (1..=2).contains(&h)), "{sh:?}");
        assert_eq!(
            smarttrim_forward(m, ptr::null_mut(), inputs.as_ptr(), 2, ptr::null(), 0, 0),
            SmarttrimStatus::InvalidArgument as i32
        );
        assert_eq!(
            smarttrim_forward(
                m,
                ptr::null_mut(),
                inputs.as_ptr(),
                1,
                ptr::null(),
                batch,
                0
            ),
            SmarttrimStatus::InvalidArgument as i32
        );
        // Bad cu_seqlens are caught before the device.
        let bad_cu = [1i32, 5, 8];
        let bad = [
            SmarttrimPackedInput {
                rows: rows_t.as_ptr(),
                cu_seqlens: bad_cu.as_ptr(),
            },
            inputs[1],
        ];
        assert_eq!(
            smarttrim_forward(m, ptr::null_mut(), bad.as_ptr(), 2, ptr::null(), batch, 0),
            SmarttrimStatus::InvalidArgument as i32
        );
        // A second model, without a workspace yet (`m` has the one its
        // host-buffer passes grew).
        let (st, fresh) = create(&cstr(&cp), &cstr(&wp));
        assert_eq!(st, OK, "{}", last_error());
        device_pointer_pass(m, fresh, &rows_t, &rows_i, &cu_t, &cu_i, &kept);
        assert_eq!(smarttrim_model_destroy(fresh), OK);
        assert_eq!(smarttrim_model_destroy(m), OK);
        assert_eq!(
            smarttrim_model_destroy(m),
            SmarttrimStatus::BadHandle as i32
        );
        assert_eq!(
            smarttrim_forward(
                m,
                ptr::null_mut(),
                inputs.as_ptr(),
                2,
                ptr::null(),
                batch,
                0
            ),
            SmarttrimStatus::BadHandle as i32
        );
    }
}

/// The same pass through `smarttrim_forward_device` on a stream of the test's
/// own, with device buffers: refused on a model without a workspace
/// (`fresh`) until `smarttrim_model_reserve`; on `m` (whose host-buffer
/// passes grew a workspace) the same statistics as the host-buffer pass
/// (`kept_host`), the final `cu_seqlens` consistent with them, and the same
/// again as a CUDA graph.
fn device_pointer_pass(
    m: *mut SmarttrimModel,
    fresh: *mut SmarttrimModel,
    rows_t: &[f32],
    rows_i: &[f32],
    cu_t: &[i32],
    cu_i: &[i32],
    kept_host: &[i32],
) {
    use cudarc::driver::{CudaContext, DevicePtr};
    let ctx = CudaContext::new(0).unwrap();
    let stream = ctx.new_stream().unwrap();
    let d = 64usize;
    let f16s =
        |v: &[f32]| -> Vec<half::f16> { v.iter().map(|&x| half::f16::from_f32(x)).collect() };
    let rt = stream.clone_htod(&f16s(rows_t)).unwrap();
    let ri = stream.clone_htod(&f16s(rows_i)).unwrap();
    let ct = stream.clone_htod(cu_t).unwrap();
    let ci = stream.clone_htod(cu_i).unwrap();
    let ot = stream.alloc_zeros::<half::f16>(8 * d).unwrap();
    let oi = stream.alloc_zeros::<half::f16>(34 * d).unwrap();
    let (oct, oci) = (
        stream.alloc_zeros::<i32>(3).unwrap(),
        stream.alloc_zeros::<i32>(3).unwrap(),
    );
    let (oot, ooi) = (
        stream.alloc_zeros::<i32>(8).unwrap(),
        stream.alloc_zeros::<i32>(34).unwrap(),
    );
    stream.synchronize().unwrap();
    let p = |x: &dyn DevicePtr<half::f16>| x.device_ptr(&stream).0;
    let q = |x: &dyn DevicePtr<i32>| x.device_ptr(&stream).0;
    let dins = [
        SmarttrimDeviceInput {
            rows: p(&rt),
            cu_seqlens: q(&ct),
            host_cu_seqlens: cu_t.as_ptr(),
        },
        SmarttrimDeviceInput {
            rows: p(&ri),
            cu_seqlens: q(&ci),
            host_cu_seqlens: cu_i.as_ptr(),
        },
    ];
    let douts = [
        SmarttrimDeviceOutput {
            rows: p(&ot),
            rows_capacity: 8 * d,
            cu_seqlens: q(&oct),
            orig_index: q(&oot),
            orig_capacity: 8,
        },
        SmarttrimDeviceOutput {
            rows: p(&oi),
            rows_capacity: 34 * d,
            cu_seqlens: q(&oci),
            orig_index: q(&ooi),
            orig_capacity: 34,
        },
    ];
    let raw = stream.cu_stream() as *mut std::ffi::c_void;
    let run_on = |m: *mut SmarttrimModel, flags: u32| {
        // SAFETY: live handle, buffers of the documented sizes on the
        // model's (primary) context, a live stream of that context.
        unsafe {
            smarttrim_forward_device(
                m,
                raw,
                dins.as_ptr(),
                2,
                ptr::null(),
                2,
                douts.as_ptr(),
                2,
                flags,
            )
        }
    };
    let run = |flags: u32| run_on(m, flags);
    assert_eq!(run_on(fresh, 0), SmarttrimStatus::InvalidArgument as i32);
    assert!(
        last_error().contains("smarttrim_model_reserve"),
        "{}",
        last_error()
    );
    let lens = [5, 17];
    for model in [fresh, m] {
        // SAFETY: live handle, one length per stream.
        assert_eq!(
            unsafe { smarttrim_model_reserve(model, 2, lens.as_ptr()) },
            OK,
            "{}",
            last_error()
        );
    }
    assert_eq!(run_on(fresh, 0), OK, "{}", last_error());
    for flags in [
        0,
        SMARTTRIM_FORWARD_UPPER_BOUND,
        SMARTTRIM_FORWARD_UPPER_BOUND | SMARTTRIM_FORWARD_GRAPH,
    ] {
        assert_eq!(run(flags), OK, "flags {flags}: {}", last_error());
        let n = 3 * 2 * 2;
        let mut kept = vec![0i32; n];
        // SAFETY: live handle, `kept` holds `n` values.
        let st = unsafe {
            smarttrim_stats(
                m,
                ptr::null_mut(),
                ptr::null_mut(),
                ptr::null_mut(),
                kept.as_mut_ptr(),
                ptr::null_mut(),
                ptr::null_mut(),
                n,
            )
        };
        assert_eq!(st, OK, "{}", last_error());
        assert_eq!(kept, kept_host, "flags {flags}: statistics");
        stream.synchronize().unwrap();
        let cu: Vec<i32> = stream.clone_dtoh(&oct).unwrap();
        // The text stream's final lengths are its last layer's kept rows.
        let last = &kept[(2 * 2) * 2..(2 * 2) * 2 + 2];
        assert_eq!(cu, vec![0, last[0], last[0] + last[1]], "flags {flags}");
    }
    // A graph requested with waits inside (ReadCounts, threshold pruners).
    assert_eq!(
        run(SMARTTRIM_FORWARD_GRAPH),
        SmarttrimStatus::InvalidArgument as i32
    );
    // The pass recorded into the caller's own graph: while the graph lives,
    // the workspace and the model it uses are neither replaced nor freed.
    stream
        .begin_capture(
            cudarc::driver::sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
        )
        .unwrap();
    let recorded = run(SMARTTRIM_FORWARD_UPPER_BOUND);
    let graph = stream
        .end_capture(cudarc::driver::sys::CUgraphInstantiate_flags(0))
        .unwrap();
    assert_eq!(recorded, OK, "{}", last_error());
    let graph = graph.expect("the captured pass");
    graph.launch().unwrap();
    stream.synchronize().unwrap();
    // SAFETY: live handle, one length per stream.
    let st = unsafe { smarttrim_model_reserve(m, 2, lens.as_ptr()) };
    assert_eq!(st, SmarttrimStatus::InvalidArgument as i32);
    assert!(last_error().contains("CUDA graph"), "{}", last_error());
    // Refused, so the handle stays live.
    let st = smarttrim_model_destroy(m);
    assert_eq!(
        st,
        SmarttrimStatus::InvalidArgument as i32,
        "destroy while pinned"
    );
    let cu: Vec<i32> = stream.clone_dtoh(&oct).unwrap();
    assert_eq!(cu[0], 0, "the graph's pass wrote the outputs");
    drop(graph);
    // SAFETY: live handle, one length per stream.
    let st = unsafe { smarttrim_model_reserve(m, 2, lens.as_ptr()) };
    assert_eq!(st, OK, "after the graph is destroyed: {}", last_error());
}

/// `smarttrim_model_create_from_memory`: null pointers, text that is not
/// UTF-8 or not a config, weights that do not match are reported with their
/// status before the device; a valid model then reaches the device (here:
/// `NO_DRIVER`/`NO_DEVICE`, or a live handle on a GPU machine).
#[test]
fn create_from_memory() {
    let cfg = gpu_variant(&preset("tiny-meter").unwrap());
    let json = cfg.to_json().unwrap();
    let weights = Weights::random(&cfg, 3)
        .unwrap()
        .to_safetensors_bytes()
        .unwrap();
    let create = |j: &[u8], w: &[u8]| {
        let mut m = ptr::without_provenance_mut::<SmarttrimModel>(0x1234);
        // SAFETY: the slices are readable for their lengths; `m` is writable.
        let st = unsafe {
            smarttrim_model_create_from_memory(
                j.as_ptr().cast(),
                j.len(),
                w.as_ptr(),
                w.len(),
                0,
                &mut m,
            )
        };
        (st, m)
    };
    let (st, m) = create(b"{ not json", &weights);
    assert_eq!(st, SmarttrimStatus::ConfigError as i32, "{}", last_error());
    assert!(m.is_null());
    let (st, _) = create(&[0xff, 0xfe], &weights);
    assert_eq!(
        st,
        SmarttrimStatus::InvalidArgument as i32,
        "{}",
        last_error()
    );
    assert!(last_error().contains("UTF-8"), "{}", last_error());
    let (st, _) = create(json.as_bytes(), &weights[..weights.len() / 2]);
    assert_eq!(st, SmarttrimStatus::WeightsError as i32, "{}", last_error());
    let mut out = ptr::null_mut();
    // SAFETY: null pointers must be reported, not read.
    let st = unsafe {
        smarttrim_model_create_from_memory(
            ptr::null(),
            0,
            weights.as_ptr(),
            weights.len(),
            0,
            &mut out,
        )
    };
    assert_eq!(st, SmarttrimStatus::NullPointer as i32);
    let (st, m) = create(json.as_bytes(), &weights);
    if st == OK {
        assert_eq!(smarttrim_model_destroy(m), OK);
    } else {
        assert!(
            [
                SmarttrimStatus::NoDriver as i32,
                SmarttrimStatus::NoDevice as i32
            ]
            .contains(&st),
            "status {st}: {}",
            last_error()
        );
        assert!(m.is_null());
    }
}

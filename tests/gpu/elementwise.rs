//! bias_gelu / bias_residual / mean_pool / first_token (kernels/elementwise.cu)
//! against f64 CPU versions and `reference::ops`.

use half::f16;
use smarttrim::device::Device;
use smarttrim::ops::{
    bias_gelu, bias_residual, first_token, mean_pool, ColsShape, PoolOut, PoolShape,
};
use smarttrim::reference::ops::gelu;

use crate::common::*;

type NoRows = cudarc::driver::CudaSlice<i32>;

/// Runs mean_pool (f32 and f16 outputs) and first_token on `x` (`total`
/// rows of `d`) with the device `cu` (`batch + 1` entries), and checks them
/// against the rows `ranges` of `x`, per sequence, that they must pool: the
/// f64 mean and the first row, zeros for an empty range (the reference's
/// rule).
fn check_pooling(
    dev: &Device,
    x: &[f32],
    d: usize,
    cu: &[i32],
    ranges: &[(usize, usize)],
    what: &str,
) {
    let stream = dev.stream().clone();
    let batch = ranges.len();
    let mut want = vec![0f32; batch * d];
    let mut want_first = vec![0f32; batch * d];
    for (b, &(lo, hi)) in ranges.iter().enumerate() {
        let m = smarttrim::reference::ops::mean_rows(x, d, lo, hi);
        want[b * d..(b + 1) * d].copy_from_slice(&m);
        if hi > lo {
            want_first[b * d..(b + 1) * d].copy_from_slice(&x[lo * d..(lo + 1) * d]);
        }
    }
    let x_d = stream.clone_htod(&to_f16(x)).unwrap();
    let cu_d = stream.clone_htod(cu).unwrap();
    let shape = PoolShape {
        batch,
        total_rows: x.len() / d,
        d,
    };
    let mut o32 = stream.clone_htod(&vec![f32::NAN; batch * d]).unwrap();
    mean_pool(dev, shape, &x_d, &cu_d, PoolOut::F32(&mut o32)).unwrap();
    let err = rel_err(&stream.clone_dtoh(&o32).unwrap(), &want);
    assert!(err < 1e-4, "mean_pool f32 {what}: {err}");
    let mut o16 = stream.clone_htod(&nan_f16(batch * d)).unwrap();
    mean_pool(dev, shape, &x_d, &cu_d, PoolOut::F16(&mut o16)).unwrap();
    let err = rel_err(&from_f16(&stream.clone_dtoh(&o16).unwrap()), &want);
    assert!(err < 3e-3, "mean_pool f16 {what}: {err}");
    let mut of = stream.clone_htod(&nan_f16(batch * d)).unwrap();
    first_token(dev, shape, &x_d, &cu_d, &mut of).unwrap();
    let got: Vec<f32> = from_f16(&stream.clone_dtoh(&of).unwrap());
    assert_eq!(got, want_first, "first_token {what}");
}

#[test]
fn bias_gelu_and_residual_match_cpu() {
    let Some(dev) = device("bias_gelu_and_residual_match_cpu") else {
        return;
    };
    let stream = dev.stream().clone();
    let mut rng = Rng::new(21);
    for &(rows, n) in &[(1usize, 8usize), (31, 384), (577, 768), (1025, 3072)] {
        let x = round_f16(&rng.normals(rows * n, 1.5, 0.0));
        let bias = round_f16(&rng.normals(n, 0.5, 0.0));
        let res = round_f16(&rng.normals(rows * n, 1.0, 0.0));
        let want_gelu: Vec<f32> = (0..rows * n).map(|i| gelu(x[i] + bias[i % n])).collect();
        let want_res: Vec<f32> = (0..rows * n).map(|i| x[i] + bias[i % n] + res[i]).collect();
        let shape = ColsShape { rows, n };
        let b_d = stream.clone_htod(&to_f16(&bias)).unwrap();
        let r_d = stream.clone_htod(&to_f16(&res)).unwrap();
        let mut x_d = stream.clone_htod(&to_f16(&x)).unwrap();
        bias_gelu::<_, _, NoRows>(&dev, shape, &mut x_d, &b_d, None).unwrap();
        let err = rel_err(&from_f16(&stream.clone_dtoh(&x_d).unwrap()), &want_gelu);
        println!("bias_gelu rows={rows} n={n}: rel err {err:.2e}");
        assert!(err < 3e-3);
        let mut x_d = stream.clone_htod(&to_f16(&x)).unwrap();
        bias_residual::<_, _, _, NoRows>(&dev, shape, &mut x_d, &b_d, &r_d, None).unwrap();
        let err = rel_err(&from_f16(&stream.clone_dtoh(&x_d).unwrap()), &want_res);
        println!("bias_residual rows={rows} n={n}: rel err {err:.2e}");
        assert!(err < 3e-3);
    }
    // A device row count leaves the rows past it untouched.
    let (rows, n, valid) = (40usize, 64usize, 13i32);
    let x = round_f16(&rng.normals(rows * n, 1.0, 0.0));
    let bias = round_f16(&rng.normals(n, 0.5, 0.0));
    let b_d = stream.clone_htod(&to_f16(&bias)).unwrap();
    let n_d = stream.clone_htod(&[valid]).unwrap();
    let mut x_d = stream.clone_htod(&to_f16(&x)).unwrap();
    bias_gelu(&dev, ColsShape { rows, n }, &mut x_d, &b_d, Some(&n_d)).unwrap();
    let out = from_f16(&stream.clone_dtoh(&x_d).unwrap());
    let v = valid as usize * n;
    assert_eq!(&out[v..], &x[v..], "rows past rows_dev must be untouched");
}

#[test]
fn pooling_matches_cpu() {
    let Some(dev) = device("pooling_matches_cpu") else {
        return;
    };
    let mut rng = Rng::new(22);
    for lens in length_sets() {
        for d in [64usize, 768] {
            let cu = cu_of(&lens);
            let total = *cu.last().unwrap() as usize;
            let x = round_f16(&rng.normals(total * d, 1.0, 0.5));
            let ranges: Vec<_> = cu
                .windows(2)
                .map(|w| (w[0] as usize, w[1] as usize))
                .collect();
            check_pooling(&dev, &x, d, &cu, &ranges, &format!("lens={lens:?} d={d}"));
        }
    }
}

/// A device `cu_seqlens` that disagrees with the host bound (past the rows,
/// negative, decreasing): mean_pool and first_token pool the rows clamped
/// to `[0, total_rows)` and read nothing past `x` (the AddressSanitizer run
/// of the emulated device checks the reads; the values are checked here).
#[test]
fn pooling_clamps_inconsistent_cu_seqlens() {
    let Some(dev) = device("pooling_clamps_inconsistent_cu_seqlens") else {
        return;
    };
    let (total, d) = (24usize, 64usize);
    let mut rng = Rng::new(23);
    let x = round_f16(&rng.normals(total * d, 1.0, 0.5));
    for bad in [
        vec![0i32, 10, 1_000_000],
        vec![0, -50, 20],
        vec![0, 20, 5],
        vec![30, 40, 50],
        vec![-1_000_000, 0, i32::MAX],
    ] {
        let clamp = |v: i32, lo: usize| (v.max(0) as usize).min(total).max(lo);
        let ranges: Vec<_> = bad
            .windows(2)
            .map(|w| {
                let lo = clamp(w[0], 0);
                (lo, clamp(w[1], lo))
            })
            .collect();
        check_pooling(&dev, &x, d, &bad, &ranges, &format!("cu={bad:?}"));
    }
}

/// bias_act (erf GELU, quick GELU, tanh; with and without a bias, with a
/// device row count) and copy_cols against the CPU.
#[test]
fn bias_act_and_copy_cols_match_cpu() {
    use smarttrim::ops::{bias_act, copy_cols, Act, CopyColsShape};
    use smarttrim::reference::ops::quick_gelu;
    let Some(dev) = device("bias_act_and_copy_cols_match_cpu") else {
        return;
    };
    let stream = dev.stream().clone();
    let mut rng = Rng::new(23);
    for &(rows, n) in &[(1usize, 8usize), (31, 384), (577, 768), (1025, 3072)] {
        let x = round_f16(&rng.normals(rows * n, 2.0, 0.0));
        let bias = round_f16(&rng.normals(n, 0.5, 0.0));
        for act in [Act::Gelu, Act::QuickGelu, Act::Tanh] {
            let f = |v: f32| match act {
                Act::Gelu => gelu(v),
                Act::QuickGelu => quick_gelu(v),
                Act::Tanh => v.tanh(),
            };
            for with_bias in [true, false] {
                let want: Vec<f32> = (0..rows * n)
                    .map(|i| f(x[i] + if with_bias { bias[i % n] } else { 0.0 }))
                    .collect();
                let b_d = stream.clone_htod(&to_f16(&bias)).unwrap();
                let mut x_d = stream.clone_htod(&to_f16(&x)).unwrap();
                bias_act::<_, _, NoRows>(
                    &dev,
                    ColsShape { rows, n },
                    act,
                    &mut x_d,
                    with_bias.then_some(&b_d),
                    None,
                )
                .unwrap();
                let err = rel_err(&from_f16(&stream.clone_dtoh(&x_d).unwrap()), &want);
                println!("bias_act {act:?} bias={with_bias} rows={rows} n={n}: rel err {err:.2e}");
                assert!(
                    err < 3e-3,
                    "{act:?} bias={with_bias} rows={rows} n={n}: {err}"
                );
            }
        }
    }
    // A device row count leaves the rows past it untouched.
    let (rows, n, valid) = (40usize, 64usize, 13i32);
    let x = round_f16(&rng.normals(rows * n, 1.0, 0.0));
    let n_d = stream.clone_htod(&[valid]).unwrap();
    let mut x_d = stream.clone_htod(&to_f16(&x)).unwrap();
    bias_act(
        &dev,
        ColsShape { rows, n },
        Act::QuickGelu,
        &mut x_d,
        None::<&cudarc::driver::CudaSlice<f16>>,
        Some(&n_d),
    )
    .unwrap();
    let out = from_f16(&stream.clone_dtoh(&x_d).unwrap());
    let v = valid as usize * n;
    assert_eq!(&out[v..], &x[v..], "rows past rows_dev must be untouched");
    // copy_cols: two [B, D] blocks side by side in a NaN-poisoned [B, 2D + 8].
    for &(b, d) in &[(1usize, 8usize), (7, 64), (33, 768)] {
        let ld = 2 * d + 8;
        let a = round_f16(&rng.normals(b * d, 1.0, 0.0));
        let c = round_f16(&rng.normals(b * d, 1.0, 0.0));
        let a_d = stream.clone_htod(&to_f16(&a)).unwrap();
        let c_d = stream.clone_htod(&to_f16(&c)).unwrap();
        let mut dst = stream.clone_htod(&nan_f16(b * ld)).unwrap();
        for (src, col) in [(&a_d, 0), (&c_d, d)] {
            copy_cols(
                &dev,
                CopyColsShape {
                    rows: b,
                    n: d,
                    src_ld: d,
                    dst_ld: ld,
                    dst_col: col,
                },
                src,
                &mut dst,
            )
            .unwrap();
        }
        let got = from_f16(&stream.clone_dtoh(&dst).unwrap());
        for r in 0..b {
            assert_eq!(
                &got[r * ld..r * ld + d],
                &a[r * d..(r + 1) * d],
                "b={b} d={d} row {r}"
            );
            assert_eq!(&got[r * ld + d..r * ld + 2 * d], &c[r * d..(r + 1) * d]);
            assert!(got[r * ld + 2 * d..(r + 1) * ld].iter().all(|v| v.is_nan()));
        }
    }
}

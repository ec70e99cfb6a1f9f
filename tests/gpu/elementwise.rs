//! bias_gelu / bias_residual / mean_pool / first_token (kernels/elementwise.cu)
//! against f64 CPU versions and `reference::ops`.

use half::f16;
use smarttrim::ops::{
    bias_gelu, bias_residual, first_token, mean_pool, ColsShape, PoolOut, PoolShape,
};
use smarttrim::reference::ops::gelu;

use crate::common::*;

type NoRows = cudarc::driver::CudaSlice<i32>;

/// What mean_pool and first_token must give for the row ranges `ranges` of
/// `x` (`d` wide): the f64 mean and the first row, zeros for an empty range
/// (the reference's rule).
fn pool_expectations(x: &[f32], d: usize, ranges: &[(usize, usize)]) -> (Vec<f32>, Vec<f32>) {
    let mut mean = vec![0f32; ranges.len() * d];
    let mut first = vec![0f32; ranges.len() * d];
    for (b, &(lo, hi)) in ranges.iter().enumerate() {
        let m = smarttrim::reference::ops::mean_rows(x, d, lo, hi);
        mean[b * d..(b + 1) * d].copy_from_slice(&m);
        if hi > lo {
            first[b * d..(b + 1) * d].copy_from_slice(&x[lo * d..(lo + 1) * d]);
        }
    }
    (mean, first)
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
    let stream = dev.stream().clone();
    let mut rng = Rng::new(22);
    for lens in length_sets() {
        for d in [64usize, 768] {
            let cu = cu_of(&lens);
            let total = *cu.last().unwrap() as usize;
            let batch = lens.len();
            let x = round_f16(&rng.normals(total * d, 1.0, 0.5));
            let ranges: Vec<_> = (0..batch)
                .map(|b| (cu[b] as usize, cu[b + 1] as usize))
                .collect();
            let (want, want_first) = pool_expectations(&x, d, &ranges);
            let x_d = stream.clone_htod(&to_f16(&x)).unwrap();
            let cu_d = stream.clone_htod(&cu).unwrap();
            let shape = PoolShape {
                batch,
                total_rows: total,
                d,
            };
            let mut o32 = stream.clone_htod(&vec![f32::NAN; batch * d]).unwrap();
            mean_pool(&dev, shape, &x_d, &cu_d, PoolOut::F32(&mut o32)).unwrap();
            let err = rel_err(&stream.clone_dtoh(&o32).unwrap(), &want);
            assert!(err < 1e-4, "mean_pool f32 lens={lens:?} d={d}: {err}");
            let mut o16 = stream.clone_htod(&nan_f16(batch * d)).unwrap();
            mean_pool(&dev, shape, &x_d, &cu_d, PoolOut::F16(&mut o16)).unwrap();
            let err = rel_err(&from_f16(&stream.clone_dtoh(&o16).unwrap()), &want);
            assert!(err < 3e-3, "mean_pool f16 lens={lens:?} d={d}: {err}");
            let mut of = stream.clone_htod(&nan_f16(batch * d)).unwrap();
            first_token(&dev, shape, &x_d, &cu_d, &mut of).unwrap();
            let got: Vec<f32> = from_f16(&stream.clone_dtoh(&of).unwrap());
            assert_eq!(got, want_first, "first_token lens={lens:?} d={d}");
        }
    }
    let _ = f16::ZERO;
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
    let stream = dev.stream().clone();
    let (total, d) = (24usize, 64usize);
    let mut rng = Rng::new(23);
    let x = round_f16(&rng.normals(total * d, 1.0, 0.5));
    let x_d = stream.clone_htod(&to_f16(&x)).unwrap();
    for bad in [
        vec![0i32, 10, 1_000_000],
        vec![0, -50, 20],
        vec![0, 20, 5],
        vec![30, 40, 50],
        vec![-1_000_000, 0, i32::MAX],
    ] {
        let batch = bad.len() - 1;
        let clamp = |v: i32, lo: usize| (v.max(0) as usize).min(total).max(lo);
        let ranges: Vec<_> = (0..batch)
            .map(|b| {
                let lo = clamp(bad[b], 0);
                (lo, clamp(bad[b + 1], lo))
            })
            .collect();
        let (want, want_first) = pool_expectations(&x, d, &ranges);
        let cu_d = stream.clone_htod(&bad).unwrap();
        let shape = PoolShape {
            batch,
            total_rows: total,
            d,
        };
        let mut o32 = stream.clone_htod(&vec![f32::NAN; batch * d]).unwrap();
        mean_pool(&dev, shape, &x_d, &cu_d, PoolOut::F32(&mut o32)).unwrap();
        let err = rel_err(&stream.clone_dtoh(&o32).unwrap(), &want);
        assert!(err < 1e-4, "mean_pool cu={bad:?}: {err}");
        let mut of = stream.clone_htod(&nan_f16(batch * d)).unwrap();
        first_token(&dev, shape, &x_d, &cu_d, &mut of).unwrap();
        let got: Vec<f32> = from_f16(&stream.clone_dtoh(&of).unwrap());
        assert_eq!(got, want_first, "first_token cu={bad:?}");
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

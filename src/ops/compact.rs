//! Masked token compaction (`kernels/compact.cu`): keeps the flagged rows of
//! each packed sequence, order preserved, and rebuilds `cu_seqlens` and
//! `orig_index` on the device with no host round trip.
//!
//! Three launches on the device's stream: `compact_plan_flags` or
//! `compact_plan_budget` (one block per sequence: keep decision and a block
//! scan giving each kept row its place in its sequence; kept counts go to the
//! caller's statistics slot), `compact_scan` (one block: exclusive scan of the
//! counts into the new `cu_seqlens` and the new total), `compact_gather_f16`
//! (one warp per source row, 16-byte vector copies).

use cudarc::driver::{DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig, PushKernelArg};
use half::f16;

use super::{check_aligned, check_len, opt_ptr_mut, rows_i32};
use crate::device::Device;
use crate::{Error, Result};

const OP: &str = "compact";
const PLAN_THREADS: u32 = 1024;
const SCAN_THREADS: u32 = 1024;
const GATHER_WARPS: u32 = 4;
/// The longest sequence the budget rule handles (its rank-by-counting keeps a
/// sequence's scores and positions in 32 KiB of shared memory).
pub const BUDGET_MAX_ROWS: usize = 4096;

/// Sizes of one compaction. The row counts are host upper bounds (the true
/// lengths are read from `cu_seqlens` on the device).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactShape {
    /// Sequences; `cu_seqlens` holds `batch + 1` entries.
    pub batch: usize,
    /// Upper bound on the packed input rows (every buffer of rows is sized by it).
    pub total_rows: usize,
    /// Upper bound on any one sequence's length (sizes the gather grid).
    pub max_seqlen: usize,
    /// Row width; a positive multiple of 8.
    pub d: usize,
}

/// Which rows to keep.
pub enum KeepRuleDev<'a> {
    /// Keep flags per row (`u8`, non-zero = keep), e.g. from the scorer's
    /// threshold rule.
    Flags(&'a dyn DevicePtr<u8>),
    /// Budget rule: `k = max(1, ceil(rho * n))` rows of each sequence by score
    /// (ties to the lower `orig_index`).
    Budget {
        /// Scores per row, f32.
        scores: &'a dyn DevicePtr<f32>,
        /// Kept fraction, in (0, 1].
        rho: f32,
    },
}

/// The packed input.
pub struct CompactInputs<'a> {
    /// `[total_rows, d]` f16 rows.
    pub rows: &'a dyn DevicePtr<f16>,
    /// `[batch + 1]` i32.
    pub cu_seqlens: &'a dyn DevicePtr<i32>,
    /// `[total_rows]` i32, each row's position before any pruning.
    pub orig_index: &'a dyn DevicePtr<i32>,
}

/// Where the compacted sequences go.
pub struct CompactOutputs<'a> {
    /// `[total_rows, d]` f16 (only the first new-total rows are written).
    pub rows: &'a mut dyn DevicePtrMut<f16>,
    /// `[batch + 1]` i32.
    pub cu_seqlens: &'a mut dyn DevicePtrMut<i32>,
    /// `[total_rows]` i32 (first new-total entries written).
    pub orig_index: &'a mut dyn DevicePtrMut<i32>,
    /// Kept rows per sequence, `[batch]` i32: a slot of the caller's
    /// statistics buffer (a view into it).
    pub kept_counts: &'a mut dyn DevicePtrMut<i32>,
    /// Scratch, `[total_rows]` i32 (each row's place within its sequence).
    pub scratch: &'a mut dyn DevicePtrMut<i32>,
    /// Optional: the new total row count, one i32 (sizes later GEMMs).
    pub new_total: Option<&'a mut dyn DevicePtrMut<i32>>,
    /// Optional: the keep decision per input row, `[total_rows]` u8.
    pub keep_out: Option<&'a mut dyn DevicePtrMut<u8>>,
}

/// Buffer lengths (in elements) of a compaction, for [`validate_compact`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CompactLens {
    /// `inputs.rows`.
    pub rows: usize,
    /// `inputs.cu_seqlens`.
    pub cu_seqlens: usize,
    /// `inputs.orig_index`.
    pub orig_index: usize,
    /// The keep flags or the scores.
    pub rule: usize,
    /// `outputs.rows`.
    pub out_rows: usize,
    /// `outputs.cu_seqlens`.
    pub out_cu_seqlens: usize,
    /// `outputs.orig_index`.
    pub out_orig_index: usize,
    /// `outputs.kept_counts`.
    pub kept_counts: usize,
    /// `outputs.scratch`.
    pub scratch: usize,
    /// `outputs.new_total`, if given.
    pub new_total: Option<usize>,
    /// `outputs.keep_out`, if given.
    pub keep_out: Option<usize>,
}

/// Checks a compaction's sizes before any device use. `budget_rho` is the
/// budget rule's `rho` (None for the flags rule).
pub fn validate_compact(
    shape: CompactShape,
    budget_rho: Option<f32>,
    lens: &CompactLens,
) -> Result<()> {
    let CompactShape {
        batch,
        total_rows,
        max_seqlen,
        d,
    } = shape;
    if d == 0 || d % 8 != 0 {
        return Err(Error::invalid(
            OP,
            format!("d = {d}: the row width must be a positive multiple of 8"),
        ));
    }
    if batch == 0 || batch > 65_535 {
        return Err(Error::invalid(
            OP,
            format!("batch = {batch}: must be in 1..=65535"),
        ));
    }
    rows_i32(OP, total_rows, d)?;
    if max_seqlen > total_rows {
        return Err(Error::invalid(
            OP,
            format!("max_seqlen = {max_seqlen} exceeds total_rows = {total_rows}"),
        ));
    }
    if let Some(rho) = budget_rho {
        if !(rho.is_finite() && rho > 0.0 && rho <= 1.0) {
            return Err(Error::invalid(
                OP,
                format!("rho = {rho}: must be in (0, 1]"),
            ));
        }
        if max_seqlen > BUDGET_MAX_ROWS {
            return Err(Error::Unsupported {
                op: OP,
                message: format!(
                    "the budget rule handles sequences of up to {BUDGET_MAX_ROWS} rows; \
                     max_seqlen = {max_seqlen}"
                ),
            });
        }
    }
    for (name, have) in [
        ("cu_seqlens", lens.cu_seqlens),
        ("out.cu_seqlens", lens.out_cu_seqlens),
    ] {
        if have != batch + 1 {
            return Err(Error::invalid(
                OP,
                format!(
                    "`{name}` holds {have} entries; batch + 1 = {} needed",
                    batch + 1
                ),
            ));
        }
    }
    check_len(OP, "rows", lens.rows, total_rows * d)?;
    check_len(OP, "out.rows", lens.out_rows, total_rows * d)?;
    check_len(OP, "orig_index", lens.orig_index, total_rows)?;
    check_len(OP, "out.orig_index", lens.out_orig_index, total_rows)?;
    let rule_name = if budget_rho.is_some() {
        "scores"
    } else {
        "keep flags"
    };
    check_len(OP, rule_name, lens.rule, total_rows)?;
    check_len(OP, "kept_counts", lens.kept_counts, batch)?;
    check_len(OP, "scratch", lens.scratch, total_rows)?;
    if let Some(n) = lens.new_total {
        check_len(OP, "new_total", n, 1)?;
    }
    if let Some(n) = lens.keep_out {
        check_len(OP, "keep_out", n, total_rows)?;
    }
    Ok(())
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct CompactPlanShapeC {
    batch: i32,
    keep_first: i32,
    rho: f32,
    rows: i32,
    max_seqlen: i32,
}
// SAFETY: `#[repr(C)]` plain data, laid out as `struct CompactPlanShape`.
unsafe impl DeviceRepr for CompactPlanShapeC {}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct CompactGatherShapeC {
    batch: i32,
    max_seqlen: i32,
    d: i32,
    rows: i32,
}
// SAFETY: `#[repr(C)]` plain data, laid out as `struct CompactGatherShape`.
unsafe impl DeviceRepr for CompactGatherShapeC {}

/// Compacts each sequence to its kept rows (order preserved): new rows,
/// `cu_seqlens`, `orig_index`, kept counts (and optionally the new total and
/// the keep decisions) on the device. With `keep_first`, each sequence's
/// first row is kept whatever the rule says. No host synchronisation.
pub fn compact(
    dev: &Device,
    shape: CompactShape,
    rule: KeepRuleDev<'_>,
    keep_first: bool,
    input: CompactInputs<'_>,
    output: CompactOutputs<'_>,
) -> Result<()> {
    let (rule_len, rho) = match &rule {
        KeepRuleDev::Flags(k) => (k.len(), None),
        KeepRuleDev::Budget { scores, rho } => (scores.len(), Some(*rho)),
    };
    let lens = CompactLens {
        rows: input.rows.len(),
        cu_seqlens: input.cu_seqlens.len(),
        orig_index: input.orig_index.len(),
        rule: rule_len,
        out_rows: output.rows.len(),
        out_cu_seqlens: output.cu_seqlens.len(),
        out_orig_index: output.orig_index.len(),
        kept_counts: output.kept_counts.len(),
        scratch: output.scratch.len(),
        new_total: output.new_total.as_ref().map(|n| n.len()),
        keep_out: output.keep_out.as_ref().map(|n| n.len()),
    };
    validate_compact(shape, rho, &lens)?;
    crate::kernels::ensure_built()?;
    let plan_name = if rho.is_some() {
        "compact_plan_budget"
    } else {
        "compact_plan_flags"
    };
    let plan = dev.function("compact", plan_name)?;
    let scan = dev.function("compact", "compact_scan")?;
    let gather = dev.function("compact", "compact_gather_f16")?;
    let stream = dev.stream();

    let CompactOutputs {
        rows: out_rows,
        cu_seqlens: out_cu,
        orig_index: out_orig,
        kept_counts,
        scratch,
        new_total,
        keep_out,
    } = output;
    let (x_ptr, _gx) = input.rows.device_ptr(stream);
    let (cu_ptr, _gcu) = input.cu_seqlens.device_ptr(stream);
    let (oi_ptr, _goi) = input.orig_index.device_ptr(stream);
    let (ox_ptr, _gox) = out_rows.device_ptr_mut(stream);
    let (ocu_ptr, _gocu) = out_cu.device_ptr_mut(stream);
    let (ooi_ptr, _gooi) = out_orig.device_ptr_mut(stream);
    let (cnt_ptr, _gcnt) = kept_counts.device_ptr_mut(stream);
    let (scr_ptr, _gscr) = scratch.device_ptr_mut(stream);
    let (tot_ptr, _gtot) = opt_ptr_mut(new_total, stream);
    let (ko_ptr, _gko) = opt_ptr_mut(keep_out, stream);
    check_aligned(OP, "rows", x_ptr, 16)?;
    check_aligned(OP, "out.rows", ox_ptr, 16)?;

    // The host bounds the kernels clamp the device cu_seqlens to (validated
    // to fit i32 above), so inconsistent cu_seqlens cannot reach past the
    // buffers.
    let plan_params = CompactPlanShapeC {
        batch: shape.batch as i32,
        keep_first: keep_first as i32,
        rho: rho.unwrap_or(1.0),
        rows: shape.total_rows as i32,
        max_seqlen: shape.max_seqlen as i32,
    };
    let plan_cfg = LaunchConfig {
        grid_dim: (shape.batch as u32, 1, 1),
        block_dim: (PLAN_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    match rule {
        KeepRuleDev::Flags(keep) => {
            let (k_ptr, _gk) = keep.device_ptr(stream);
            let mut launch = stream.launch_builder(&plan);
            launch
                .arg(&cu_ptr)
                .arg(&k_ptr)
                .arg(&scr_ptr)
                .arg(&ko_ptr)
                .arg(&cnt_ptr)
                .arg(&plan_params);
            // SAFETY: arguments match `compact_plan_flags(const int*, const
            // u8*, int*, u8*, int*, CompactPlanShape)`. cu_seqlens has batch + 1
            // entries describing rows below total_rows (the caller's contract);
            // keep, scratch and keep_out (or null) hold total_rows entries and
            // kept_counts batch (validated). One block per sequence.
            unsafe { launch.launch(plan_cfg) }
                .map_err(|e| Error::driver("launching compact_plan_flags", e))?;
        }
        KeepRuleDev::Budget { scores, .. } => {
            let (s_ptr, _gs) = scores.device_ptr(stream);
            let mut launch = stream.launch_builder(&plan);
            launch
                .arg(&cu_ptr)
                .arg(&s_ptr)
                .arg(&oi_ptr)
                .arg(&scr_ptr)
                .arg(&ko_ptr)
                .arg(&cnt_ptr)
                .arg(&plan_params);
            // SAFETY: arguments match `compact_plan_budget(const int*, const
            // float*, const int*, int*, u8*, int*, CompactPlanShape)`; scores,
            // orig_index, scratch, keep_out hold total_rows entries, counts
            // batch; every sequence is at most max_seqlen <= BUDGET_MAX_ROWS
            // rows long (validated; the kernel's static shared arrays).
            unsafe { launch.launch(plan_cfg) }
                .map_err(|e| Error::driver("launching compact_plan_budget", e))?;
        }
    }
    dev.check_launch(plan_name)?;

    let batch_i = shape.batch as i32;
    let mut launch = stream.launch_builder(&scan);
    launch
        .arg(&cnt_ptr)
        .arg(&ocu_ptr)
        .arg(&tot_ptr)
        .arg(&batch_i);
    // SAFETY: arguments match `compact_scan(const int*, int*, int*, int)`;
    // counts holds batch entries, out cu_seqlens batch + 1, new_total one i32
    // or null. One block.
    unsafe {
        launch.launch(LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (SCAN_THREADS, 1, 1),
            shared_mem_bytes: 0,
        })
    }
    .map_err(|e| Error::driver("launching compact_scan", e))?;
    dev.check_launch("compact_scan")?;

    if shape.max_seqlen == 0 {
        return Ok(());
    }
    let gather_params = CompactGatherShapeC {
        batch: batch_i,
        max_seqlen: shape.max_seqlen as i32,
        d: shape.d as i32,
        rows: shape.total_rows as i32,
    };
    let mut launch = stream.launch_builder(&gather);
    launch
        .arg(&x_ptr)
        .arg(&cu_ptr)
        .arg(&oi_ptr)
        .arg(&scr_ptr)
        .arg(&ocu_ptr)
        .arg(&ox_ptr)
        .arg(&ooi_ptr)
        .arg(&gather_params);
    // SAFETY: arguments match `compact_gather_f16(const half*, const int*,
    // const int*, const int*, const int*, half*, int*, CompactGatherShape)`.
    // Source rows are below cu_seqlens[batch] <= total_rows; destinations are
    // below the new total <= the source total, so within out.rows (total_rows
    // * d, 16-byte aligned) and out.orig_index. Grid (ceil(max_seqlen / 4),
    // batch); warps past a sequence's device length return.
    unsafe {
        launch.launch(LaunchConfig {
            grid_dim: (
                (shape.max_seqlen as u32).div_ceil(GATHER_WARPS),
                shape.batch as u32,
                1,
            ),
            block_dim: (32 * GATHER_WARPS, 1, 1),
            shared_mem_bytes: 0,
        })
    }
    .map_err(|e| Error::driver("launching compact_gather_f16", e))?;
    dev.check_launch("compact_gather_f16")
}

/// Checks [`seq_positions`]'s sizes: `cu_len` must be `batch + 1`,
/// `orig_len` at least `total_rows` (the host bound on `cu_seqlens[batch]`),
/// and `max_seqlen` positive unless `total_rows` is 0. Needs no GPU.
pub fn validate_seq_positions(
    batch: usize,
    max_seqlen: usize,
    total_rows: usize,
    cu_len: usize,
    orig_len: usize,
) -> Result<()> {
    const OP: &str = "seq_positions";
    if batch == 0 || batch > 65_535 {
        return Err(Error::invalid(
            OP,
            format!("batch = {batch}: must be in 1..=65535"),
        ));
    }
    check_len(OP, "cu_seqlens", cu_len, batch + 1)?;
    if orig_len < total_rows {
        return Err(Error::invalid(
            OP,
            format!("orig_index holds {orig_len} entries, fewer than the {total_rows} rows"),
        ));
    }
    if max_seqlen > total_rows {
        return Err(Error::invalid(
            OP,
            format!("max_seqlen = {max_seqlen} exceeds total_rows = {total_rows}"),
        ));
    }
    rows_i32(OP, total_rows, 1)?;
    Ok(())
}

/// `orig_index[r] = r - cu_seqlens[b]` for every row `r` of sequence `b`
/// (the positions of rows entering a pass), from `cu_seqlens` on the device.
/// `max_seqlen` and `total_rows` are host upper bounds on the longest
/// sequence and `cu_seqlens[batch]` (the caller's contract: the device
/// values stay within them).
pub fn seq_positions<C: DevicePtr<i32>, O: DevicePtrMut<i32>>(
    dev: &Device,
    batch: usize,
    max_seqlen: usize,
    total_rows: usize,
    cu_seqlens: &C,
    orig_index: &mut O,
) -> Result<()> {
    validate_seq_positions(
        batch,
        max_seqlen,
        total_rows,
        cu_seqlens.len(),
        orig_index.len(),
    )?;
    crate::kernels::ensure_built()?;
    if max_seqlen == 0 {
        return Ok(());
    }
    let f = dev.function("compact", "seq_positions_i32")?;
    let stream = dev.stream();
    let (cu_ptr, _gcu) = cu_seqlens.device_ptr(stream);
    let (oi_ptr, _goi) = orig_index.device_ptr_mut(stream);
    let rows_i = total_rows as i32;
    let max_i = max_seqlen as i32;
    let mut launch = stream.launch_builder(&f);
    launch.arg(&cu_ptr).arg(&oi_ptr).arg(&rows_i).arg(&max_i);
    // SAFETY: arguments match `seq_positions_i32(const int*, int*, int,
    // int)`; cu_seqlens holds batch + 1 entries (validated); the kernel
    // clamps every sequence to [0, total_rows) and max_seqlen, and
    // orig_index holds at least total_rows entries (validated), so every
    // write is in bounds. Grid (ceil(max_seqlen / 256), batch).
    unsafe {
        launch.launch(LaunchConfig {
            grid_dim: ((max_seqlen as u32).div_ceil(256), batch as u32, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        })
    }
    .map_err(|e| Error::driver("launching seq_positions_i32", e))?;
    dev.check_launch("seq_positions_i32")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> CompactShape {
        CompactShape {
            batch: 2,
            total_rows: 100,
            max_seqlen: 60,
            d: 64,
        }
    }

    fn lens() -> CompactLens {
        CompactLens {
            rows: 6400,
            cu_seqlens: 3,
            orig_index: 100,
            rule: 100,
            out_rows: 6400,
            out_cu_seqlens: 3,
            out_orig_index: 100,
            kept_counts: 2,
            scratch: 100,
            new_total: Some(1),
            keep_out: None,
        }
    }

    #[test]
    fn accepts_consistent_sizes() {
        validate_compact(shape(), None, &lens()).unwrap();
        validate_compact(shape(), Some(0.3), &lens()).unwrap();
    }

    #[test]
    fn rejects_inconsistent_sizes() {
        let bad = |s: CompactShape, rho: Option<f32>, l: CompactLens| {
            assert!(validate_compact(s, rho, &l).is_err(), "{s:?} {rho:?} {l:?}");
        };
        bad(
            shape(),
            None,
            CompactLens {
                cu_seqlens: 2,
                ..lens()
            },
        );
        bad(
            shape(),
            None,
            CompactLens {
                out_cu_seqlens: 4,
                ..lens()
            },
        );
        bad(CompactShape { d: 60, ..shape() }, None, lens());
        bad(
            shape(),
            None,
            CompactLens {
                rows: 6399,
                ..lens()
            },
        );
        bad(
            shape(),
            None,
            CompactLens {
                out_rows: 10,
                ..lens()
            },
        );
        bad(shape(), None, CompactLens { rule: 99, ..lens() });
        bad(
            shape(),
            None,
            CompactLens {
                scratch: 99,
                ..lens()
            },
        );
        bad(
            shape(),
            None,
            CompactLens {
                kept_counts: 1,
                ..lens()
            },
        );
        bad(
            shape(),
            None,
            CompactLens {
                new_total: Some(0),
                ..lens()
            },
        );
        bad(
            shape(),
            None,
            CompactLens {
                keep_out: Some(5),
                ..lens()
            },
        );
        bad(
            CompactShape {
                max_seqlen: 101,
                ..shape()
            },
            None,
            lens(),
        );
        bad(
            CompactShape {
                batch: 0,
                ..shape()
            },
            None,
            lens(),
        );
        bad(shape(), Some(0.0), lens());
        bad(shape(), Some(1.5), lens());
        bad(shape(), Some(f32::NAN), lens());
        let long = CompactShape {
            total_rows: 5000,
            max_seqlen: 5000,
            batch: 1,
            d: 8,
        };
        let long_lens = CompactLens {
            rows: 40_000,
            cu_seqlens: 2,
            orig_index: 5000,
            rule: 5000,
            out_rows: 40_000,
            out_cu_seqlens: 2,
            out_orig_index: 5000,
            kept_counts: 1,
            scratch: 5000,
            new_total: None,
            keep_out: None,
        };
        validate_compact(long, None, &long_lens).unwrap();
        assert!(matches!(
            validate_compact(long, Some(0.5), &long_lens),
            Err(Error::Unsupported { .. })
        ));
    }
}

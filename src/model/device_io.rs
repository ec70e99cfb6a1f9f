//! Passes on device-resident inputs and outputs: the interop path for a
//! caller's CUDA stack ([`GpuModel::forward_device`]).
//!
//! The caller hands packed rows entering the first layer (already embedded,
//! f16) and `cu_seqlens` on the device, plus the same `cu_seqlens` on the
//! host (they size the launches and key the CUDA graphs; DESIGN.md keeps
//! lengths on the host as upper bounds anyway). smarttrim copies the inputs
//! into its workspace, runs the pass, and copies the final rows,
//! `cu_seqlens` and `orig_index` into the caller's buffers, all enqueued on
//! the caller's stream, and returns without waiting (unless the sync policy
//! reads row counts). Nothing is allocated on the device.

use std::sync::Arc;

use cudarc::driver::{CudaStream, CudaView, CudaViewMut};
use half::f16;

use super::forward::{PassEnd, PassShape, Source};
use super::layout::WorkspaceLayout;
use super::weights::GpuModel;
use super::workspace::{PassScope, Workspace};
use super::GpuForwardOptions;
use crate::ops::seq_positions;
use crate::pass::LayerStats;
use crate::spec::ModelKind;
use crate::{Error, Result};

const OP: &str = "GpuModel::forward_device";

/// One stream's (or a cross encoder's context's) packed rows on the device.
#[derive(Debug)]
pub struct DevicePacked<'a> {
    /// `[cu_seqlens[batch], width]` row-major f16 (at least that many
    /// elements; 16-byte aligned), the rows entering the first layer.
    pub rows: CudaView<'a, f16>,
    /// `[batch + 1]` on the device, equal to `host_cu_seqlens`.
    pub cu_seqlens: CudaView<'a, i32>,
    /// The same `cu_seqlens` on the host.
    pub host_cu_seqlens: &'a [i32],
}

/// Where one stream's results go, on the device.
#[derive(Debug)]
pub struct DeviceStreamOutput<'a> {
    /// At least `total_in * hidden` f16 (`total_in` the rows that entered):
    /// the final rows, packed; rows at and past the final `cu_seqlens[batch]`
    /// are unspecified.
    pub rows: CudaViewMut<'a, f16>,
    /// At least `batch + 1`: the final `cu_seqlens`.
    pub cu_seqlens: CudaViewMut<'a, i32>,
    /// At least `total_in`: each final row's position before any pruning.
    pub orig_index: CudaViewMut<'a, i32>,
}

/// What [`GpuModel::forward_device`] enqueued: the host-side facts of the
/// pass, for [`GpuModel::device_pass_stats`].
#[derive(Debug, Clone)]
pub struct DevicePass {
    shape: PassShape,
    end: PassEnd,
    /// Blocking host waits inside the pass (module docs of [`crate::model`]).
    pub syncs: usize,
    /// Whether the pass ran as smarttrim's own CUDA graph (false inside a
    /// caller's capture: the caller's graph records the launches).
    pub graph: bool,
    /// Per stream, the rows copied to [`DeviceStreamOutput::rows`] (the
    /// host's bound on the final row count).
    pub row_bounds: Vec<usize>,
}

/// Checks a host `cu_seqlens` against `batch` and returns the lengths.
fn lengths_of(what: &str, cu: &[i32], batch: usize) -> Result<Vec<i32>> {
    if cu.len() != batch + 1 {
        return Err(Error::invalid(
            OP,
            format!(
                "{what}: host cu_seqlens has {} entries, batch + 1 = {}",
                cu.len(),
                batch + 1
            ),
        ));
    }
    if cu[0] != 0 {
        return Err(Error::invalid(
            OP,
            format!("{what}: cu_seqlens[0] = {} (must be 0)", cu[0]),
        ));
    }
    if let Some(i) = cu.windows(2).position(|w| w[1] < w[0]) {
        return Err(Error::invalid(
            OP,
            format!("{what}: cu_seqlens decreases at index {}", i + 1),
        ));
    }
    Ok(cu.windows(2).map(|w| w[1] - w[0]).collect())
}

fn check_input(
    what: &str,
    p: &DevicePacked<'_>,
    batch: usize,
    width: usize,
    cap: usize,
) -> Result<Vec<i32>> {
    let lens = lengths_of(what, p.host_cu_seqlens, batch)?;
    if let Some(&n) = lens.iter().find(|&&n| n as usize > cap) {
        return Err(Error::invalid(
            OP,
            format!("{what}: a sequence of {n} rows exceeds the workspace capacity of {cap}"),
        ));
    }
    let total = p.host_cu_seqlens[batch] as usize;
    if p.rows.len() < total * width {
        return Err(Error::invalid(
            OP,
            format!(
                "{what}: rows holds {} elements, {total} rows x {width} needed",
                p.rows.len()
            ),
        ));
    }
    if p.cu_seqlens.len() < batch + 1 {
        return Err(Error::invalid(
            OP,
            format!(
                "{what}: device cu_seqlens holds {} entries, {} needed",
                p.cu_seqlens.len(),
                batch + 1
            ),
        ));
    }
    Ok(lens)
}

impl GpuModel {
    /// Runs the pass on device-resident inputs, writing device-resident
    /// outputs, all enqueued on `stream` (a stream of the model's context);
    /// returns without waiting for the device under
    /// [`super::SyncPolicy::UpperBound`] or with budget-rule pruners (otherwise it
    /// waits for the row counts of threshold-rule pruning layers, as
    /// [`GpuModel::forward`] does). Embeddings are not run: `inputs` are the
    /// rows entering the first layer, one per config stream; `context` is a
    /// cross encoder's context (required there, `None` elsewhere).
    ///
    /// `opts.graph` replays (or captures) smarttrim's own CUDA graph for the
    /// shape; when `stream` is already being captured by the caller, the
    /// launches go into the caller's graph instead and the pass must have no
    /// inner wait ([`GpuModel::graph_capturable`]).
    ///
    /// Ordering: the inputs must be ready in stream order on `stream`, and
    /// the outputs are ready when the work enqueued so far on `stream` is;
    /// the workspace must not be used by another pass until then (passes on
    /// one stream are ordered automatically).
    pub fn forward_device(
        &self,
        stream: &Arc<CudaStream>,
        ws: &mut Workspace,
        inputs: &[DevicePacked<'_>],
        context: Option<&DevicePacked<'_>>,
        outputs: &mut [DeviceStreamOutput<'_>],
        opts: &GpuForwardOptions,
    ) -> Result<DevicePass> {
        if self.config.is_composite() {
            return Err(Error::Unsupported {
                op: OP,
                message: "a whole model (BLIP, METER) embeds its inputs and hands rows between \
                          its stages on the device; use GpuModel::forward"
                    .into(),
            });
        }
        let cfg = &self.config;
        let ns = cfg.streams.len();
        if WorkspaceLayout::new(cfg, &ws.capacity)? != ws.layout {
            return Err(Error::invalid(
                OP,
                "the workspace was allocated for a different model",
            ));
        }
        if inputs.len() != ns || outputs.len() != ns {
            return Err(Error::invalid(
                OP,
                format!(
                    "{} inputs and {} outputs given, the model has {ns} streams",
                    inputs.len(),
                    outputs.len()
                ),
            ));
        }
        let batch = inputs[0].host_cu_seqlens.len().saturating_sub(1);
        if batch == 0 || batch > ws.capacity.max_batch {
            return Err(Error::invalid(
                OP,
                format!("batch = {batch}: must be in 1..={}", ws.capacity.max_batch),
            ));
        }
        let mut lengths = Vec::with_capacity(ns);
        for (s, (sc, p)) in cfg.streams.iter().zip(inputs).enumerate() {
            let what = format!("inputs[{s}] (`{}`)", sc.name);
            lengths.push(check_input(
                &what,
                p,
                batch,
                sc.hidden,
                ws.capacity.max_seqlen[s],
            )?);
        }
        let context = match (&cfg.kind, context) {
            (&ModelKind::CrossEncoder { context_hidden }, Some(c)) => {
                let lens = check_input(
                    "context",
                    c,
                    batch,
                    context_hidden,
                    ws.capacity.context_max_seqlen,
                )?;
                Some((c, lens, context_hidden))
            }
            (&ModelKind::CrossEncoder { .. }, None) => {
                return Err(Error::invalid(OP, "a cross encoder needs its context"));
            }
            (_, Some(_)) => {
                return Err(Error::invalid(
                    OP,
                    "a context was given to a model without one",
                ));
            }
            (_, None) => None,
        };
        for (s, (sc, o)) in cfg.streams.iter().zip(outputs.iter()).enumerate() {
            let total = *inputs[s].host_cu_seqlens.last().unwrap_or(&0) as usize;
            let checks = [
                ("rows", o.rows.len(), total * sc.hidden),
                ("cu_seqlens", o.cu_seqlens.len(), batch + 1),
                ("orig_index", o.orig_index.len(), total),
            ];
            for (name, have, need) in checks {
                if have < need {
                    return Err(Error::invalid(
                        OP,
                        format!(
                            "outputs[{s}] (`{}`).{name} holds {have} elements, {need} needed",
                            sc.name
                        ),
                    ));
                }
            }
        }
        let dev = self.dev.on_stream(stream.clone())?;
        let capturing = dev.is_capturing()?;
        if (opts.graph || capturing) && !self.graph_capturable(opts) {
            return Err(Error::invalid(
                OP,
                "graph capture needs a pass without host waits: use SyncPolicy::UpperBound, or \
                 budget-rule token pruners only",
            ));
        }
        // Outside a capture: ordered after the workspace's previous pass,
        // and its last use recorded at the end. Inside the caller's capture:
        // the caller's graph pins the workspace and the model until the
        // driver destroys the graph (Workspace::graph_pins).
        let scope = PassScope::begin(ws, stream, capturing)?;
        if capturing {
            crate::device::pin_to_capture(stream, vec![ws.pins.clone(), self.pins.clone()])?;
        }
        let shape = PassShape {
            batch,
            lengths,
            context: context
                .as_ref()
                .map(|(_, l, d)| super::forward::ContextShape::known(l.clone(), *d)),
            // The caller hands embedded rows: no embedding runs.
            sources: vec![Source::Rows; ns],
        };

        // Inputs into the workspace's first buffers, positions on the device.
        for (s, (sc, p)) in cfg.streams.iter().zip(inputs).enumerate() {
            let total = p.host_cu_seqlens[batch] as usize;
            let max_len = shape.lengths[s].iter().copied().max().unwrap_or(0).max(0) as usize;
            let w = &mut ws.streams[s];
            if total > 0 {
                stream
                    .memcpy_dtod(
                        &p.rows.slice(0..total * sc.hidden),
                        &mut w.x[0].slice_mut(0..total * sc.hidden),
                    )
                    .map_err(|e| Error::driver("copying input rows", e))?;
            }
            stream
                .memcpy_dtod(
                    &p.cu_seqlens.slice(0..batch + 1),
                    &mut w.cu[0].slice_mut(0..batch + 1),
                )
                .map_err(|e| Error::driver("copying input cu_seqlens", e))?;
            let cu0 = w.cu[0].slice(0..batch + 1);
            seq_positions(&dev, batch, max_len, total, &cu0, &mut w.orig[0])?;
        }
        if let Some((c, _, d)) = &context {
            let total = c.host_cu_seqlens[batch] as usize;
            if total > 0 {
                stream
                    .memcpy_dtod(
                        &c.rows.slice(0..total * d),
                        &mut ws.context_rows.slice_mut(0..total * d),
                    )
                    .map_err(|e| Error::driver("copying the context rows", e))?;
            }
            stream
                .memcpy_dtod(
                    &c.cu_seqlens.slice(0..batch + 1),
                    &mut ws.context_cu.slice_mut(0..batch + 1),
                )
                .map_err(|e| Error::driver("copying the context cu_seqlens", e))?;
        }

        let own_graph = opts.graph && !capturing;
        let end = if own_graph {
            self.run_graph(&dev, ws, &shape, opts)?
        } else {
            self.enqueue(&dev, ws, &shape, opts)?
        };

        // Results into the caller's buffers.
        let mut row_bounds = Vec::with_capacity(ns);
        for (s, (sc, o)) in cfg.streams.iter().zip(outputs.iter_mut()).enumerate() {
            let (rows, fin, c) = end.final_buffers(s);
            let w = &ws.streams[s];
            let d = sc.hidden;
            if rows > 0 {
                stream
                    .memcpy_dtod(&w.x[fin].slice(0..rows * d), &mut o.rows)
                    .map_err(|e| Error::driver("copying the final rows", e))?;
                stream
                    .memcpy_dtod(&w.orig[c].slice(0..rows), &mut o.orig_index)
                    .map_err(|e| Error::driver("copying orig_index", e))?;
            }
            stream
                .memcpy_dtod(&w.cu[c].slice(0..batch + 1), &mut o.cu_seqlens)
                .map_err(|e| Error::driver("copying cu_seqlens", e))?;
            row_bounds.push(rows);
        }
        scope.finish()?;
        Ok(DevicePass {
            syncs: end.syncs(),
            graph: own_graph,
            row_bounds,
            shape,
            end,
        })
    }

    /// The statistics of a pass [`GpuModel::forward_device`] enqueued on
    /// `stream` with `ws` (which no later pass may have used yet): waits for
    /// `stream`, then returns `[layer][stream]` -> (kept rows, active self
    /// heads, active cross heads) per sequence, as
    /// [`super::GpuOutputs::stats`].
    pub fn device_pass_stats(
        &self,
        stream: &Arc<CudaStream>,
        ws: &Workspace,
        pass: &DevicePass,
    ) -> Result<Vec<Vec<LayerStats>>> {
        let ns = self.config.streams.len();
        let nl = self.config.streams[0].layers.len();
        let n = nl * ns * 3 * pass.shape.batch;
        stream
            .synchronize()
            .map_err(|e| Error::driver("waiting for the pass", e))?;
        let stats_h: Vec<i32> = stream
            .clone_dtoh(&ws.stats.slice(0..n))
            .map_err(|e| Error::driver("reading the statistics", e))?;
        let per_stream: Vec<_> = (0..ns)
            .map(|s| self.layer_counts(&pass.shape, &pass.end, &stats_h, s))
            .collect();
        Ok((0..nl)
            .map(|l| {
                per_stream
                    .iter()
                    .map(|c| {
                        let c = &c[l];
                        (
                            c.kept.clone(),
                            c.active_self_heads.clone(),
                            c.active_cross_heads.clone(),
                        )
                    })
                    .collect()
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_cu_seqlens_checks() {
        assert_eq!(lengths_of("x", &[0, 3, 3, 7], 3).unwrap(), vec![3, 0, 4]);
        for (cu, b, needle) in [
            (&[0, 3][..], 2, "entries"),
            (&[1, 3][..], 1, "must be 0"),
            (&[0, 3, 2][..], 2, "decreases"),
        ] {
            let e = lengths_of("x", cu, b).unwrap_err().to_string();
            assert!(e.contains(needle), "{cu:?}: {e}");
        }
    }
}

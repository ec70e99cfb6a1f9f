//! The graph cache: a pass without inner waits captured as a CUDA graph the
//! first time a shape is seen, and replayed afterwards (module docs of
//! [`crate::model`]).

use super::super::weights::GpuModel;
use super::super::workspace::{GraphEntry, GraphKey, Workspace, MAX_GRAPHS};
use super::super::GpuForwardOptions;
use super::launch::drv;
use super::shape::{PassEnd, PassShape};
use crate::device::Device;
use crate::{Error, Result};

impl GpuModel {
    /// Replays the workspace's graph for this shape, or (first pass of a
    /// shape) runs the pass eagerly and then captures the same launches.
    /// The eager run loads every kernel module and cuBLASLt kernel the pass
    /// needs, which must not happen inside a capture, and gives this call's
    /// results; the capture itself executes nothing.
    pub(crate) fn run_graph(
        &self,
        dev: &Device,
        ws: &mut Workspace,
        shape: &PassShape,
        opts: &GpuForwardOptions,
    ) -> Result<PassEnd> {
        let key = GraphKey {
            sources: shape.sources.clone(),
            model: self.id,
            dense: opts.dense,
            sync: opts.sync,
            lengths: shape.lengths.clone(),
            context: shape.context.clone(),
        };
        if let Some(i) = ws.graphs.iter().position(|(k, _)| *k == key) {
            let entry = ws.graphs.remove(i);
            // SAFETY: the executable graph is live (owned by `entry`); it was
            // captured from this model's launches on this workspace's buffers
            // (the key names the model), all of which are alive, and the
            // inputs it reads were uploaded to the same buffers just before.
            let launched = unsafe {
                cudarc::driver::result::graph::launch(
                    entry.1.graph.cu_graph_exec(),
                    dev.stream().cu_stream(),
                )
            };
            let end = entry.1.end.clone();
            ws.graphs.push(entry);
            launched.map_err(drv("launching the captured forward pass"))?;
            return Ok(end);
        }
        let end = self.enqueue(dev, ws, shape, opts)?;
        // Captured on the workspace's own stream, never the caller's: a
        // capture records everything enqueued on its stream, whichever
        // thread enqueues it. The capture executes nothing; the graph is
        // then launched on the pass's stream.
        let stream = ws.stream.clone();
        let cap_dev = dev.on_stream(stream.clone())?;
        stream
            .begin_capture(
                cudarc::driver::sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
            )
            .map_err(drv("beginning the graph capture"))?;
        // Ends the capture even if the enqueue panics, so the stream is not
        // left capturing.
        let capture = CaptureGuard {
            stream: &stream,
            open: true,
        };
        let captured = self.enqueue(&cap_dev, ws, shape, opts);
        let graph = capture.end();
        let captured_end = captured?;
        let graph = graph
            .map_err(drv("ending the graph capture"))?
            .ok_or_else(|| Error::invalid("GpuModel::forward", "the capture recorded no work"))?;
        if ws.graphs.len() >= MAX_GRAPHS {
            ws.graphs.remove(0);
        }
        ws.graphs.push((
            key,
            GraphEntry {
                graph,
                end: captured_end,
            },
        ));
        Ok(end)
    }
}

/// An open stream capture, ended when dropped (discarding its graph) unless
/// [`CaptureGuard::end`] ended it.
struct CaptureGuard<'a> {
    stream: &'a std::sync::Arc<cudarc::driver::CudaStream>,
    open: bool,
}

impl CaptureGuard<'_> {
    fn end(
        mut self,
    ) -> std::result::Result<Option<cudarc::driver::CudaGraph>, cudarc::driver::DriverError> {
        self.open = false;
        self.stream
            .end_capture(cudarc::driver::sys::CUgraphInstantiate_flags(0))
    }
}

impl Drop for CaptureGuard<'_> {
    fn drop(&mut self) {
        if self.open {
            let _ = self
                .stream
                .end_capture(cudarc::driver::sys::CUgraphInstantiate_flags(0));
        }
    }
}

//! What goes into a forward pass: one input per input stream, plus a cross
//! encoder's fixed context.

/// One stream's input.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamInput {
    /// Rows entering the first layer, `[total, D]` packed, with `cu_seqlens`
    /// (streams with no embedding, e.g. METER's fusion encoder).
    Packed {
        /// `[total, D]` row-major.
        rows: Vec<f32>,
        /// `[batch + 1]`.
        cu_seqlens: Vec<i32>,
    },
    /// Token ids for a BERT stream.
    Tokens {
        /// Packed token ids `[total]`.
        ids: Vec<u32>,
        /// Packed token type ids `[total]` (None = all 0).
        type_ids: Option<Vec<u32>>,
        /// `[batch + 1]`.
        cu_seqlens: Vec<i32>,
    },
    /// Images for a ViT stream, `[batch, C, H, W]` row-major (NCHW).
    Pixels {
        /// `[batch * C * H * W]`.
        pixels: Vec<f32>,
        /// Number of images.
        batch: usize,
    },
}

/// Inputs of a forward pass (the CPU reference's [`crate::reference::forward`],
/// the GPU pass's [`crate::model::GpuModel::forward`]): one [`StreamInput`] per
/// config stream, in order,
/// plus the fixed context of a cross encoder (BLIP text: the image encoder's
/// final rows, `[total, context_hidden]` with their `cu_seqlens`).
#[derive(Debug, Clone, PartialEq)]
pub struct Inputs {
    /// One per config stream.
    pub streams: Vec<StreamInput>,
    /// Required for [`ModelKind::CrossEncoder`](crate::spec::ModelKind::CrossEncoder),
    /// ignored otherwise.
    pub context: Option<(Vec<f32>, Vec<i32>)>,
}

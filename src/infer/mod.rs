//! Inference: one model input tensor in, one low-resolution mask (probabilities in [0, 1]) out. The ONNX
//! Runtime implementation (providers TensorRT → CUDA → CPU) is in `onnx.rs`; several frames per call in
//! `batched.rs` (one file's consecutive frames) and `batcher.rs` (frames of concurrent files).

mod batched;
mod batcher;
mod onnx;

pub use batched::BatchPlan;
pub use batcher::{BatchClient, BatchServer, BatchStats, BATCH_WINDOW, DEFAULT_GPU_BATCH};
pub use onnx::{deform_im2col, ort_run_time, outside_capture, window_attention, DeviceIo, DeviceMask, OnnxSegmenter};

use crate::error::Result;
use crate::preprocess::ModelInput;
use crate::runtime::Provider;

/// The model's mask at model resolution, already through the manifest's activation.
#[derive(Debug, Clone, Default)]
pub struct LowResMask {
    pub data: Vec<f32>,
    pub width: u32,
    pub height: u32,
}

pub trait Segmenter: Send {
    fn run(&mut self, input: &ModelInput, out: &mut LowResMask) -> Result<()>;
    /// Several frames (tensors of one shape) in one call where the model allows it; `outs[i]` gets the mask of
    /// `inputs[i]`. The default runs them one by one.
    fn run_batch(&mut self, inputs: &[&ModelInput], outs: &mut [LowResMask]) -> Result<()> {
        for (i, o) in inputs.iter().zip(outs.iter_mut()) {
            self.run(i, o)?;
        }
        Ok(())
    }
    /// The execution provider that runs the model.
    fn provider(&self) -> Provider;
}

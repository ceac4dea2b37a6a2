//! Inference: one model input tensor in, one low-resolution mask (probabilities in [0, 1]) out. The ONNX
//! Runtime implementation (providers TensorRT → CUDA → CPU) is in `onnx.rs`.

mod onnx;

pub use onnx::{DeviceIo, DeviceMask, OnnxSegmenter};

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
    /// The execution provider that runs the model.
    fn provider(&self) -> Provider;
}

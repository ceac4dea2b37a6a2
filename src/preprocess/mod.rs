//! Preprocess: an RGBA frame becomes the model's input tensor (resize with the manifest's aspect handling,
//! colour order, scale/mean/std, NCHW or NHWC). The CPU implementation lives in `cpu.rs`; a CUDA one can sit
//! beside it behind the same trait.

mod cpu;

pub use cpu::CpuPreprocess;

use crate::error::Result;

/// Where the frame's content sits inside the model input (all of it for `stretch`, a centred box for
/// `letterbox`), in model pixels. Postprocessing cuts exactly this box out of the mask.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Geometry {
    pub model_w: u32,
    pub model_h: u32,
    pub content_x: u32,
    pub content_y: u32,
    pub content_w: u32,
    pub content_h: u32,
}

impl Geometry {
    pub fn stretch(model_w: u32, model_h: u32) -> Self {
        Geometry { model_w, model_h, content_x: 0, content_y: 0, content_w: model_w, content_h: model_h }
    }

    /// The largest box of the frame's aspect ratio that fits, centred.
    pub fn letterbox(model_w: u32, model_h: u32, frame_w: u32, frame_h: u32) -> Self {
        let s = (model_w as f64 / frame_w as f64).min(model_h as f64 / frame_h as f64);
        let cw = ((frame_w as f64 * s).round() as u32).clamp(1, model_w);
        let ch = ((frame_h as f64 * s).round() as u32).clamp(1, model_h);
        Geometry {
            model_w,
            model_h,
            content_x: (model_w - cw) / 2,
            content_y: (model_h - ch) / 2,
            content_w: cw,
            content_h: ch,
        }
    }
}

/// The model input for one frame.
#[derive(Debug, Clone, Default)]
pub struct ModelInput {
    /// Tensor values in the manifest's layout.
    pub data: Vec<f32>,
    pub shape: [i64; 4],
    pub geometry: Option<Geometry>,
}

/// Turns frames into model input tensors.
pub trait Preprocess: Send {
    /// `rgba` is `width * height * 4` bytes, rows packed.
    fn run(&mut self, rgba: &[u8], width: u32, height: u32, out: &mut ModelInput) -> Result<()>;
    fn name(&self) -> &'static str;
}

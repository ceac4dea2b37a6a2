//! Postprocess: the low-resolution mask becomes a frame-sized 8-bit alpha, aligned to the frame exactly
//! (the letterbox padding is cut away, then bilinear upsampling with pixel centres matched). Optional
//! temporal smoothing blends with the previous mask. No per-frame min/max rescaling: that makes masks flicker.

use fast_image_resize::{images::Image, images::ImageRef, FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};

use crate::error::{Error, Result};
use crate::infer::LowResMask;
use crate::preprocess::Geometry;

#[derive(Debug, Clone, Copy, Default)]
pub struct PostprocessConfig {
    /// Weight of the previous mask in an exponential moving average, 0 (off) to < 1.
    pub smooth: f32,
}

pub trait Postprocess: Send {
    /// Writes `frame_w * frame_h` alpha bytes into `alpha`.
    fn run(&mut self, mask: &LowResMask, geo: &Geometry, frame_w: u32, frame_h: u32, alpha: &mut Vec<u8>)
        -> Result<()>;
    fn name(&self) -> &'static str;
}

pub struct CpuPostprocess {
    cfg: PostprocessConfig,
    resizer: Resizer,
    mask8: Vec<u8>,
    prev: Vec<f32>,
}

impl CpuPostprocess {
    pub fn new(cfg: PostprocessConfig) -> Self {
        CpuPostprocess { cfg, resizer: Resizer::new(), mask8: Vec::new(), prev: Vec::new() }
    }
}

impl Postprocess for CpuPostprocess {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn run(
        &mut self,
        mask: &LowResMask,
        geo: &Geometry,
        frame_w: u32,
        frame_h: u32,
        alpha: &mut Vec<u8>,
    ) -> Result<()> {
        let n = (mask.width * mask.height) as usize;
        if mask.data.len() != n {
            return Err(Error::Runtime(format!("mask has {} values for {}x{}", mask.data.len(), mask.width, mask.height)));
        }
        let s = self.cfg.smooth.clamp(0.0, 0.99);
        if s > 0.0 && self.prev.len() == n {
            for (p, v) in self.prev.iter_mut().zip(&mask.data) {
                *p = s * *p + (1.0 - s) * v;
            }
        } else {
            self.prev.clear();
            self.prev.extend_from_slice(&mask.data);
        }
        self.mask8.clear();
        self.mask8.extend(self.prev.iter().map(|v| (v * 255.0 + 0.5) as u8));

        // The model's mask may be at another resolution than its input (some models return half size):
        // scale the content box accordingly.
        let sx = mask.width as f64 / geo.model_w as f64;
        let sy = mask.height as f64 / geo.model_h as f64;
        let opts = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear)).crop(
            geo.content_x as f64 * sx,
            geo.content_y as f64 * sy,
            geo.content_w as f64 * sx,
            geo.content_h as f64 * sy,
        );
        let err = |e: &dyn std::fmt::Display| Error::Runtime(format!("mask resize failed: {e}"));
        let src = ImageRef::new(mask.width, mask.height, &self.mask8, PixelType::U8).map_err(|e| err(&e))?;
        alpha.resize((frame_w * frame_h) as usize, 0);
        let mut dst = Image::from_slice_u8(frame_w, frame_h, alpha, PixelType::U8).map_err(|e| err(&e))?;
        self.resizer.resize(&src, &mut dst, &opts).map_err(|e| err(&e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn horizontal_ramp_survives_upsampling_in_place() {
        // A ramp mask v(x) = (x + 0.5) / W at model resolution must upsample to (X + 0.5) / FW.
        let (w, h) = (64u32, 32u32);
        let data: Vec<f32> = (0..h).flat_map(|_| (0..w).map(move |x| (x as f32 + 0.5) / w as f32)).collect();
        let mask = LowResMask { data, width: w, height: h };
        let mut p = CpuPostprocess::new(PostprocessConfig::default());
        let mut a = Vec::new();
        p.run(&mask, &Geometry::stretch(w, h), 256, 100, &mut a).unwrap();
        for x in 8..248usize {
            let want = (x as f32 + 0.5) / 256.0 * 255.0;
            let got = a[50 * 256 + x] as f32;
            assert!((got - want).abs() <= 1.5, "x={x}: {got} vs {want}");
        }
    }

    #[test]
    fn smoothing_blends_with_previous_mask() {
        let mut p = CpuPostprocess::new(PostprocessConfig { smooth: 0.5 });
        let g = Geometry::stretch(2, 2);
        let mut a = Vec::new();
        p.run(&LowResMask { data: vec![0.0; 4], width: 2, height: 2 }, &g, 2, 2, &mut a).unwrap();
        p.run(&LowResMask { data: vec![1.0; 4], width: 2, height: 2 }, &g, 2, 2, &mut a).unwrap();
        assert_eq!(a, vec![128; 4]);
    }
}

//! Postprocess: the low-resolution mask becomes a frame-sized 8-bit alpha, aligned to the frame exactly
//! (the letterbox padding is cut away, then bilinear upsampling with pixel centres matched). Optional, in
//! order: motion-aware temporal smoothing, threshold remap, guided-filter refinement against the full-resolution
//! frame, feather. No per-frame min/max rescaling: that makes masks flicker.

pub mod filters;

use fast_image_resize::images::{TypedImage, TypedImageRef};
use fast_image_resize::pixels::F32;
use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::infer::LowResMask;
use crate::preprocess::{Geometry, ModelInput};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostprocessConfig {
    /// Weight of the previous mask where the picture is still, 0 (off) to 0.95.
    pub smooth: f32,
    /// Mean change of a pixel between frames (0..1) at which smoothing stops entirely, so moving edges
    /// follow at once instead of smearing.
    pub motion_threshold: f32,
    /// Remap alpha so values ≤ lo become 0 and ≥ hi become 1.
    pub threshold: Option<(f32, f32)>,
    /// Guided-filter refinement of the upsampled mask against the frame (snaps edges to image edges).
    pub refine: bool,
    /// Box radius of the edge feather, pixels (0 = off).
    pub feather: u32,
}

impl Default for PostprocessConfig {
    fn default() -> Self {
        PostprocessConfig { smooth: 0.0, motion_threshold: 0.03, threshold: None, refine: false, feather: 0 }
    }
}

pub trait Postprocess: Send {
    /// Writes `frame_w * frame_h` alpha bytes into `alpha`. `frame` is the RGBA frame the mask belongs to and
    /// `input` the tensor the model saw (for motion detection).
    fn run(
        &mut self,
        frame: &[u8],
        input: &ModelInput,
        mask: &LowResMask,
        frame_w: u32,
        frame_h: u32,
        alpha: &mut Vec<u8>,
    ) -> Result<()>;
    fn name(&self) -> &'static str;
}

/// Per-pixel picture change between two model inputs, in pixel units (0..1), at the mask's resolution.
/// The signed difference is averaged over a 5×5 neighbourhood before taking its size, so sensor and
/// compression noise (which averages out) does not count as motion while a moving edge (which does not) does.
fn motion_map(cur: &ModelInput, prev: &[f32], std_over_scale: [f32; 3], mask: &LowResMask) -> Option<Vec<f32>> {
    let geo = cur.geometry?;
    if prev.len() != cur.data.len() {
        return None;
    }
    let (mw, mh) = (geo.model_w as usize, geo.model_h as usize);
    let plane = mw * mh;
    let nhwc = cur.shape[3] == 3;
    let mut d = vec![0f32; plane];
    let mut diff = vec![0f32; plane];
    let mut avg = Vec::new();
    for c in 0..3 {
        for (k, v) in diff.iter_mut().enumerate() {
            let i = if nhwc { k * 3 + c } else { c * plane + k };
            *v = (cur.data[i] - prev[i]) * std_over_scale[c] / 255.0;
        }
        filters::box_mean(&diff, mw, mh, 2, &mut avg);
        for (o, a) in d.iter_mut().zip(&avg) {
            *o += a.abs() / 3.0;
        }
    }
    // Spread so an edge that moves is covered on both sides.
    let mut spread = Vec::new();
    filters::box_mean(&d, mw, mh, 2, &mut spread);
    let spread: Vec<f32> = spread.iter().zip(&d).map(|(a, b)| (2.0 * a).max(*b)).collect();
    let (w, h) = (mask.width as usize, mask.height as usize);
    if (w, h) == (mw, mh) {
        return Some(spread);
    }
    Some((0..w * h).map(|k| spread[((k / w) * mh / h) * mw + (k % w) * mw / w]).collect())
}

/// Motion-aware exponential smoothing of `m` (the current mask, `mask`'s size) towards `prev_mask`.
#[allow(clippy::too_many_arguments)]
pub fn temporal_blend(
    input: &ModelInput,
    prev_input: &[f32],
    std_over_scale: [f32; 3],
    smooth: f32,
    threshold: f32,
    prev_mask: &[f32],
    mask: &LowResMask,
    m: &mut [f32],
) {
    let thr = threshold.max(1e-4);
    let motion = motion_map(input, prev_input, std_over_scale, mask);
    for k in 0..m.len() {
        let still = motion.as_ref().map_or(1.0, |d| (1.0 - d[k] / thr).clamp(0.0, 1.0));
        let w = smooth * still;
        m[k] = w * prev_mask[k] + (1.0 - w) * m[k];
    }
}

pub struct CpuPostprocess {
    cfg: PostprocessConfig,
    std_over_scale: [f32; 3],
    resizer: Resizer,
    prev: Vec<f32>,
    prev_input: Vec<f32>,
}

impl CpuPostprocess {
    /// `std_over_scale` turns the model's normalised input back into pixel units (std / scale per channel).
    pub fn new(cfg: PostprocessConfig, std_over_scale: [f32; 3]) -> Self {
        CpuPostprocess {
            cfg,
            std_over_scale,
            resizer: Resizer::new(),
            prev: Vec::new(),
            prev_input: Vec::new(),
        }
    }

    pub fn for_manifest(cfg: PostprocessConfig, m: &crate::model::Manifest) -> Self {
        Self::new(cfg, std::array::from_fn(|c| m.input.std[c] / m.input.scale))
    }

    fn resize(&mut self, src: &[f32], sw: u32, sh: u32, dw: u32, dh: u32, crop: Option<(f64, f64, f64, f64)>) -> Result<Vec<f32>> {
        let err = |e: &dyn std::fmt::Display| Error::Runtime(format!("mask resize failed: {e}"));
        let px: &[F32] = unsafe { std::slice::from_raw_parts(src.as_ptr() as *const F32, src.len()) };
        let s = TypedImageRef::new(sw, sh, px).map_err(|e| err(&e))?;
        let mut d = TypedImage::<F32>::new(dw, dh);
        let mut o = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
        if let Some((x, y, w, h)) = crop {
            o = o.crop(x, y, w, h);
        }
        self.resizer.resize_typed(&s, &mut d, &o).map_err(|e| err(&e))?;
        Ok(d.pixels().iter().map(|p| p.0).collect())
    }
}

impl Postprocess for CpuPostprocess {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn run(
        &mut self,
        frame: &[u8],
        input: &ModelInput,
        mask: &LowResMask,
        frame_w: u32,
        frame_h: u32,
        alpha: &mut Vec<u8>,
    ) -> Result<()> {
        let n = (mask.width * mask.height) as usize;
        if mask.data.len() != n {
            return Err(Error::Runtime(format!("mask has {} values for {}x{}", mask.data.len(), mask.width, mask.height)));
        }
        let geo = input.geometry.unwrap_or_else(|| Geometry::stretch(mask.width, mask.height));

        // 1. Temporal smoothing, only where the picture is still.
        let s = self.cfg.smooth.clamp(0.0, 0.95);
        let mut m = mask.data.clone();
        if s > 0.0 && self.prev.len() == n {
            temporal_blend(input, &self.prev_input, self.std_over_scale, s, self.cfg.motion_threshold, &self.prev, mask, &mut m);
        }
        if s > 0.0 {
            self.prev.clone_from(&m);
            self.prev_input.clone_from(&input.data);
        }

        // 2. Threshold remap.
        if let Some((lo, hi)) = self.cfg.threshold {
            let span = (hi - lo).max(1e-6);
            for v in m.iter_mut() {
                *v = ((*v - lo) / span).clamp(0.0, 1.0);
            }
        }

        // 3. Upsample the content box to the frame.
        let sx = mask.width as f64 / geo.model_w as f64;
        let sy = mask.height as f64 / geo.model_h as f64;
        let crop = (geo.content_x as f64 * sx, geo.content_y as f64 * sy, geo.content_w as f64 * sx, geo.content_h as f64 * sy);
        let mut a = self.resize(&m, mask.width, mask.height, frame_w, frame_h, Some(crop))?;
        let (fw, fh) = (frame_w as usize, frame_h as usize);

        // 4. Fast guided filter: fit alpha ≈ a·I + b at about the mask's resolution, apply at full resolution.
        if self.cfg.refine {
            let guide: Vec<f32> = frame
                .chunks_exact(4)
                .map(|p| (0.299 * p[0] as f32 + 0.587 * p[1] as f32 + 0.114 * p[2] as f32) / 255.0)
                .collect();
            let f = ((fw as f64 / crop.2.max(1.0)).max(1.0)).round() as u32;
            let (lw, lh) = ((frame_w / f).max(1), (frame_h / f).max(1));
            let gl = self.resize(&guide, frame_w, frame_h, lw, lh, None)?;
            let pl = self.resize(&a, frame_w, frame_h, lw, lh, None)?;
            let (ca, cb) = filters::guided_coefficients(&gl, &pl, lw as usize, lh as usize, 4, 1e-2);
            let fa = self.resize(&ca, lw, lh, frame_w, frame_h, None)?;
            let fb = self.resize(&cb, lw, lh, frame_w, frame_h, None)?;
            for k in 0..fw * fh {
                a[k] = fa[k] * guide[k] + fb[k];
            }
        }

        // 5. Feather: two box passes ≈ a tent filter.
        if self.cfg.feather > 0 {
            let r = self.cfg.feather as usize;
            let mut t = Vec::new();
            filters::box_mean(&a, fw, fh, r.div_ceil(2), &mut t);
            filters::box_mean(&t, fw, fh, r / 2 + 1, &mut a);
        }

        alpha.clear();
        alpha.extend(a.iter().map(|v| (v.clamp(0.0, 1.0) * 255.0 + 0.5) as u8));
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
        let mut p = CpuPostprocess::new(PostprocessConfig::default(), [255.0; 3]);
        let mut a = Vec::new();
        let input = ModelInput { data: vec![], shape: [1, h as i64, w as i64, 3], geometry: Some(Geometry::stretch(w, h)) };
        p.run(&[], &input, &mask, 256, 100, &mut a).unwrap();
        for x in 8..248usize {
            let want = (x as f32 + 0.5) / 256.0 * 255.0;
            let got = a[50 * 256 + x] as f32;
            assert!((got - want).abs() <= 1.5, "x={x}: {got} vs {want}");
        }
    }

    fn input(v: f32) -> ModelInput {
        ModelInput { data: vec![v; 2 * 2 * 3], shape: [1, 2, 2, 3], geometry: Some(Geometry::stretch(2, 2)) }
    }

    #[test]
    fn smoothing_blends_with_previous_mask_where_still() {
        let cfg = PostprocessConfig { smooth: 0.5, ..Default::default() };
        let mut p = CpuPostprocess::new(cfg, [255.0; 3]);
        let mut a = Vec::new();
        p.run(&[0; 16], &input(0.5), &LowResMask { data: vec![0.0; 4], width: 2, height: 2 }, 2, 2, &mut a).unwrap();
        p.run(&[0; 16], &input(0.5), &LowResMask { data: vec![1.0; 4], width: 2, height: 2 }, 2, 2, &mut a).unwrap();
        assert_eq!(a, vec![128; 4]);
    }

    #[test]
    fn smoothing_stops_where_the_picture_moves() {
        let cfg = PostprocessConfig { smooth: 0.9, ..Default::default() };
        let mut p = CpuPostprocess::new(cfg, [255.0; 3]);
        let mut a = Vec::new();
        p.run(&[0; 16], &input(0.0), &LowResMask { data: vec![0.0; 4], width: 2, height: 2 }, 2, 2, &mut a).unwrap();
        // Every pixel changed by 0.5 (far above the 0.03 threshold): the new mask is taken as is.
        p.run(&[0; 16], &input(0.5), &LowResMask { data: vec![1.0; 4], width: 2, height: 2 }, 2, 2, &mut a).unwrap();
        assert_eq!(a, vec![255; 4]);
    }

    #[test]
    fn threshold_remaps_and_feather_softens() {
        let cfg = PostprocessConfig { threshold: Some((0.25, 0.75)), ..Default::default() };
        let mut p = CpuPostprocess::new(cfg, [255.0; 3]);
        let mut a = Vec::new();
        let m = LowResMask { data: vec![0.2, 0.5, 0.8, 0.5], width: 2, height: 2 };
        let inp = ModelInput { data: vec![], shape: [1, 2, 2, 3], geometry: Some(Geometry::stretch(2, 2)) };
        p.run(&[0; 16], &inp, &m, 2, 2, &mut a).unwrap();
        assert_eq!(a, vec![0, 128, 255, 128]);
        let mut p = CpuPostprocess::new(PostprocessConfig { feather: 4, ..Default::default() }, [255.0; 3]);
        let step: Vec<f32> = (0..32).map(|x| if x < 16 { 0.0 } else { 1.0 }).collect();
        let inp = ModelInput { data: vec![], shape: [1, 1, 32, 3], geometry: Some(Geometry::stretch(32, 1)) };
        p.run(&[0; 32 * 4], &inp, &LowResMask { data: step, width: 32, height: 1 }, 32, 1, &mut a).unwrap();
        assert!(a[15] > 20 && a[15] < 128 && a[16] > 128 && a[16] < 235, "{:?}", &a[12..20]);
    }
}

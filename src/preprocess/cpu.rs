//! CPU preprocessing. The frame is converted to f32 first and resized in f32 (fast_image_resize's SIMD
//! convolution: PIL's antialiased bilinear, or plain bilinear sampling, as the manifest says), then
//! normalised and laid out in one pass. Working in f32 keeps the tensor equal to the model's reference
//! preprocessing computed without intermediate 8-bit rounding (tests/parity.rs checks ≤ 1e-5).

use fast_image_resize::images::{TypedImage, TypedImageRef};
use fast_image_resize::pixels::F32x3;
use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};

use super::{Geometry, ModelInput, Preprocess};
use crate::error::{Error, Result};
use crate::model::{ColorOrder, Interpolation, Layout, Manifest, ResizeMode};

pub struct CpuPreprocess {
    manifest: Manifest,
    resizer: Resizer,
    frame_f32: Vec<F32x3>,
    /// The resized content box, kept between frames (1024² × 3 f32 is 12 MB).
    resized: Vec<F32x3>,
}

impl CpuPreprocess {
    pub fn new(manifest: &Manifest) -> Self {
        CpuPreprocess { manifest: manifest.clone(), resizer: Resizer::new(), frame_f32: Vec::new(), resized: Vec::new() }
    }
}

fn resize_err(e: impl std::fmt::Display) -> Error {
    Error::config(format!("preprocess resize failed: {e}"))
}

impl Preprocess for CpuPreprocess {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn run(&mut self, rgba: &[u8], width: u32, height: u32, out: &mut ModelInput) -> Result<()> {
        let mut frame = std::mem::take(&mut self.frame_f32);
        frame.clear();
        frame.extend(rgba.chunks_exact(4).map(|p| F32x3::new([p[0] as f32, p[1] as f32, p[2] as f32])));
        let r = self.run_rgb_f32(&frame, width, height, out);
        self.frame_f32 = frame;
        r
    }
}

impl CpuPreprocess {
    /// The same preprocessing from an RGB frame already in f32 (0..255), e.g. converted from YUV.
    pub fn run_rgb_f32(&mut self, frame: &[F32x3], width: u32, height: u32, out: &mut ModelInput) -> Result<()> {
        let inp = &self.manifest.input;
        let (mw, mh) = self.manifest.model_size_for(width, height);
        let geo = match inp.resize {
            ResizeMode::Stretch => Geometry::stretch(mw, mh),
            ResizeMode::Letterbox => Geometry::letterbox(mw, mh, width, height),
        };
        let alg = match inp.interpolation {
            Interpolation::Antialias => ResizeAlg::Convolution(FilterType::Bilinear),
            Interpolation::Bilinear => ResizeAlg::Interpolation(FilterType::Bilinear),
        };
        let opts = ResizeOptions::new().resize_alg(alg);

        let content: &[F32x3] = if (geo.content_w, geo.content_h) == (width, height) {
            &frame[..(width * height) as usize]
        } else {
            let src = TypedImageRef::new(width, height, frame).map_err(resize_err)?;
            self.resized.resize((geo.content_w * geo.content_h) as usize, F32x3::default());
            let mut dst = TypedImage::from_pixels_slice(geo.content_w, geo.content_h, &mut self.resized).map_err(resize_err)?;
            self.resizer.resize_typed(&src, &mut dst, &opts).map_err(resize_err)?;
            &self.resized
        };

        // value = (pixel * scale - mean) / std per channel, as one multiply-add; padding is black (0).
        let order: [usize; 3] = match inp.color {
            ColorOrder::Rgb => [0, 1, 2],
            ColorOrder::Bgr => [2, 1, 0],
        };
        let mul: [f32; 3] = std::array::from_fn(|c| inp.scale / inp.std[c]);
        let add: [f32; 3] = std::array::from_fn(|c| -inp.mean[c] / inp.std[c]);
        let plane = (mw * mh) as usize;
        out.data.clear();
        out.data.resize(plane * 3, 0.0);
        let pad: [f32; 3] = add;
        let (cx, cy, cw) = (geo.content_x as usize, geo.content_y as usize, geo.content_w as usize);
        for y in 0..mh as usize {
            for x in 0..mw as usize {
                let inside = x >= cx && x < cx + cw && y >= cy && y < cy + geo.content_h as usize;
                let v: [f32; 3] = if inside {
                    let p = content[(y - cy) * cw + (x - cx)].0;
                    std::array::from_fn(|c| p[order[c]] * mul[c] + add[c])
                } else {
                    pad
                };
                let i = y * mw as usize + x;
                match inp.layout {
                    Layout::Nchw => {
                        out.data[i] = v[0];
                        out.data[plane + i] = v[1];
                        out.data[2 * plane + i] = v[2];
                    }
                    Layout::Nhwc => out.data[i * 3..i * 3 + 3].copy_from_slice(&v),
                }
            }
        }
        out.shape = self.manifest.input_shape(mh, mw);
        out.geometry = Some(geo);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(layout: Layout, resize: ResizeMode) -> Manifest {
        let mut m = crate::model::builtin("birefnet-general").unwrap();
        m.input.layout = layout;
        m.input.resize = resize;
        m.input.size = [8, 8];
        m
    }

    #[test]
    fn constant_frame_normalises_exactly_in_both_layouts() {
        let frame: Vec<u8> = [10u8, 128, 250, 255].repeat(16 * 12);
        for layout in [Layout::Nchw, Layout::Nhwc] {
            let m = manifest(layout, ResizeMode::Stretch);
            let mut p = CpuPreprocess::new(&m);
            let mut out = ModelInput::default();
            p.run(&frame, 16, 12, &mut out).unwrap();
            let want = [
                (10.0 / 255.0 - 0.485) / 0.229,
                (128.0 / 255.0 - 0.456) / 0.224,
                (250.0 / 255.0 - 0.406) / 0.225,
            ];
            for i in 0..64 {
                for c in 0..3 {
                    let v = match layout {
                        Layout::Nchw => out.data[c * 64 + i],
                        Layout::Nhwc => out.data[i * 3 + c],
                    };
                    assert!((v - want[c] as f32).abs() < 1e-5, "{layout:?} c{c}: {v} vs {}", want[c]);
                }
            }
        }
    }

    #[test]
    fn letterbox_centres_content_and_pads_black() {
        let m = manifest(Layout::Nchw, ResizeMode::Letterbox);
        let mut p = CpuPreprocess::new(&m);
        let mut out = ModelInput::default();
        let frame: Vec<u8> = [255u8, 255, 255, 255].repeat(16 * 8); // 2:1 → 8x4 box in 8x8
        p.run(&frame, 16, 8, &mut out).unwrap();
        let g = out.geometry.unwrap();
        assert_eq!((g.content_x, g.content_y, g.content_w, g.content_h), (0, 2, 8, 4));
        let black = (0.0 - 0.485f32) / 0.229;
        let white = (1.0 - 0.485f32) / 0.229;
        assert!((out.data[0] - black).abs() < 1e-5); // row 0 is padding
        assert!((out.data[2 * 8] - white).abs() < 1e-5); // row 2 is content
    }
}

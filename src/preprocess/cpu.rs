//! CPU preprocessing: fast_image_resize (SIMD, PIL-like bilinear convolution, which antialiases when
//! shrinking just as the reference Python pipelines' PIL/torchvision resizes do), then one pass that reorders
//! and normalises into the tensor.

use fast_image_resize::{images::Image, images::ImageRef, FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};

use super::{Geometry, ModelInput, Preprocess};
use crate::error::{Error, Result};
use crate::model::{ColorOrder, Layout, Manifest, ResizeMode};

pub struct CpuPreprocess {
    manifest: Manifest,
    resizer: Resizer,
    resized: Vec<u8>,
    scratch: Vec<u8>,
}

impl CpuPreprocess {
    pub fn new(manifest: &Manifest) -> Self {
        CpuPreprocess { manifest: manifest.clone(), resizer: Resizer::new(), resized: Vec::new(), scratch: Vec::new() }
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
        let inp = &self.manifest.input;
        let (mw, mh) = self.manifest.model_size_for(width, height);
        let geo = match inp.resize {
            ResizeMode::Stretch => Geometry::stretch(mw, mh),
            ResizeMode::Letterbox => Geometry::letterbox(mw, mh, width, height),
        };
        let opts = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear)).use_alpha(false);
        let src = ImageRef::new(width, height, rgba, PixelType::U8x4).map_err(resize_err)?;

        // Resize the frame into the content box (the whole input unless letterboxing).
        self.scratch.resize((geo.content_w * geo.content_h * 4) as usize, 0);
        let mut dst = Image::from_slice_u8(geo.content_w, geo.content_h, &mut self.scratch, PixelType::U8x4)
            .map_err(resize_err)?;
        self.resizer.resize(&src, &mut dst, &opts).map_err(resize_err)?;

        let resized: &[u8] = if geo.content_w == mw && geo.content_h == mh {
            &self.scratch
        } else {
            // Pad with black around the content box.
            self.resized.clear();
            self.resized.resize((mw * mh * 4) as usize, 0);
            let row = (geo.content_w * 4) as usize;
            for y in 0..geo.content_h as usize {
                let d = ((y + geo.content_y as usize) * mw as usize + geo.content_x as usize) * 4;
                self.resized[d..d + row].copy_from_slice(&self.scratch[y * row..(y + 1) * row]);
            }
            &self.resized
        };

        // value = (pixel * scale - mean) / std, folded into one multiply-add per element.
        let order: [usize; 3] = match inp.color {
            ColorOrder::Rgb => [0, 1, 2],
            ColorOrder::Bgr => [2, 1, 0],
        };
        let mul: [f32; 3] = std::array::from_fn(|c| inp.scale / inp.std[c]);
        let add: [f32; 3] = std::array::from_fn(|c| -inp.mean[c] / inp.std[c]);
        let plane = (mw * mh) as usize;
        out.data.resize(plane * 3, 0.0);
        match inp.layout {
            Layout::Nchw => {
                let (r, rest) = out.data.split_at_mut(plane);
                let (g, b) = rest.split_at_mut(plane);
                let planes = [r, g, b];
                for (i, px) in resized.chunks_exact(4).enumerate() {
                    for c in 0..3 {
                        planes[c][i] = px[order[c]] as f32 * mul[c] + add[c];
                    }
                }
            }
            Layout::Nhwc => {
                for (o, px) in out.data.chunks_exact_mut(3).zip(resized.chunks_exact(4)) {
                    for c in 0..3 {
                        o[c] = px[order[c]] as f32 * mul[c] + add[c];
                    }
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

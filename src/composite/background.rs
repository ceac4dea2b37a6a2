//! Backgrounds: a flat colour, an image (scaled to cover the frame), a looping video, or a blur of the frame.

use fast_image_resize::{images::Image, images::ImageRef, FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};

use crate::config::BackgroundSpec;
use crate::error::{Error, Result};
use crate::source::LoopingVideo;

pub enum Background {
    Transparent,
    /// Filled lazily at the frame size.
    Colour { rgb: [u8; 3], buf: Vec<u8> },
    Image { src: image::RgbaImage, buf: Vec<u8>, size: (u32, u32) },
    Video { video: Option<LoopingVideo>, path: std::path::PathBuf, buf: Vec<u8> },
    Blur { radius: u32, small: Vec<u8>, buf: Vec<u8>, resizer: Resizer },
}

fn rerr(e: impl std::fmt::Display) -> Error {
    Error::Runtime(format!("background resize failed: {e}"))
}

impl Background {
    /// Loads what the spec names (image files are decoded here, so a bad file fails before any work starts).
    pub fn open(spec: &BackgroundSpec) -> Result<Self> {
        Ok(match spec {
            BackgroundSpec::Transparent => Background::Transparent,
            BackgroundSpec::Colour(rgb) => Background::Colour { rgb: *rgb, buf: Vec::new() },
            BackgroundSpec::Image(p) => {
                let img = image::open(p)
                    .map_err(|e| Error::Config(format!("background image {}: cannot decode it ({e})", p.display())))?;
                Background::Image { src: img.to_rgba8(), buf: Vec::new(), size: (0, 0) }
            }
            BackgroundSpec::Video(p) => Background::Video { video: None, path: p.clone(), buf: Vec::new() },
            BackgroundSpec::Blur(r) => {
                Background::Blur { radius: *r, small: Vec::new(), buf: Vec::new(), resizer: Resizer::new() }
            }
        })
    }

    /// The background for this frame (RGBA, frame size), or `None` for transparent.
    pub fn frame(&mut self, frame: &[u8], w: u32, h: u32) -> Result<Option<&[u8]>> {
        let n = (w * h * 4) as usize;
        match self {
            Background::Transparent => Ok(None),
            Background::Colour { rgb, buf } => {
                if buf.len() != n {
                    *buf = [rgb[0], rgb[1], rgb[2], 255].repeat((w * h) as usize);
                }
                Ok(Some(buf))
            }
            Background::Image { src, buf, size } => {
                if *size != (w, h) {
                    let s = ImageRef::new(src.width(), src.height(), src.as_raw(), PixelType::U8x4).map_err(rerr)?;
                    buf.resize(n, 0);
                    let mut d = Image::from_slice_u8(w, h, buf, PixelType::U8x4).map_err(rerr)?;
                    // Cover the frame without distortion (crop the excess, centred).
                    let o = ResizeOptions::new()
                        .resize_alg(ResizeAlg::Convolution(FilterType::Bilinear))
                        .fit_into_destination(None);
                    Resizer::new().resize(&s, &mut d, &o).map_err(rerr)?;
                    for px in buf.chunks_exact_mut(4) {
                        px[3] = 255;
                    }
                    *size = (w, h);
                }
                Ok(Some(buf))
            }
            Background::Video { video, path, buf } => {
                if video.is_none() {
                    *video = Some(LoopingVideo::open(path, w, h)?);
                }
                video.as_mut().unwrap().next_frame(buf)?;
                Ok(Some(buf))
            }
            Background::Blur { radius, small, buf, resizer } => {
                // Box-filter down by the radius, then bilinear back up: a cheap, smooth, wide blur whose cost
                // does not grow with the radius.
                let f = (*radius / 2).max(1);
                let (sw, sh) = ((w / f).max(1), (h / f).max(1));
                let s = ImageRef::new(w, h, frame, PixelType::U8x4).map_err(rerr)?;
                small.resize((sw * sh * 4) as usize, 0);
                let mut d = Image::from_slice_u8(sw, sh, small, PixelType::U8x4).map_err(rerr)?;
                let down = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Box)).use_alpha(false);
                resizer.resize(&s, &mut d, &down).map_err(rerr)?;
                let s2 = ImageRef::new(sw, sh, small, PixelType::U8x4).map_err(rerr)?;
                buf.resize(n, 0);
                let mut d2 = Image::from_slice_u8(w, h, buf, PixelType::U8x4).map_err(rerr)?;
                let up = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear)).use_alpha(false);
                resizer.resize(&s2, &mut d2, &up).map_err(rerr)?;
                Ok(Some(buf))
            }
        }
    }
}

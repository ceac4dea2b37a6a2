//! Image inputs: photos (JPEG, PNG, WebP) and animated images (GIF, APNG, animated WebP), decoded by the
//! `image` crate and handed to the conversion pipeline through an appsrc, so everything after decoding is the
//! same as for video:
//!
//! ```text
//! [mf-image: image crate decoder] ─▶ appsrc (RGBA, timestamps from the frame delays) ─ videoconvert ─ appsink ─▶ …
//! ```
//!
//! Why not GStreamer's own decoders: in GStreamer 1.22 `avdemux_gif` never reaches the end of a GIF (its reader
//! returns 0 bytes at the end instead of end-of-file and the demuxer spins at a full core), `avdec_gif` stamps
//! every frame 0, APNG and animated WebP are not animated at all, and no decoder applies a JPEG's EXIF
//! orientation. Photos are turned upright by their EXIF orientation here.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::time::Duration;

use gstreamer as gst;
use gstreamer_app as gst_app;
use image::codecs::{gif::GifDecoder, png::PngDecoder, webp::WebPDecoder};
use image::{AnimationDecoder, DynamicImage, ImageDecoder, ImageFormat, ImageReader, RgbaImage};

use crate::error::{Error, Result};

/// The image formats taken as input (by their content, not their name).
const DECODED: [ImageFormat; 4] = [ImageFormat::Png, ImageFormat::Jpeg, ImageFormat::Gif, ImageFormat::WebP];

/// File name extensions of images, for walking folders.
pub const IMAGE_EXT: &[&str] = &["jpg", "jpeg", "png", "webp", "gif", "apng"];

/// Frame delays below this are shown as [`DEFAULT_DELAY`] by browsers (and ffmpeg): GIFs rely on it.
const MIN_DELAY: Duration = Duration::from_millis(20);
const DEFAULT_DELAY: Duration = Duration::from_millis(100);

/// How long a still image lasts when it is written into a video container: one frame of one second.
pub const STILL_DURATION: Duration = Duration::from_secs(1);

/// An image input: its format and whether it has several frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageInput {
    pub format: ImageFormat,
    pub animated: bool,
}

impl ImageInput {
    /// Looks at a local file's first bytes: `None` when it is not an image this module decodes (a video).
    pub fn sniff(path: &Path) -> Option<ImageInput> {
        let format = ImageReader::open(path).ok()?.with_guessed_format().ok()?.format().filter(|f| DECODED.contains(f))?;
        let reader = || File::open(path).ok().map(BufReader::new);
        let animated = match format {
            ImageFormat::Gif => true,
            ImageFormat::Png => reader().and_then(|r| PngDecoder::new(r).ok()?.is_apng().ok()).unwrap_or(false),
            ImageFormat::WebP => reader().and_then(|r| WebPDecoder::new(r).ok()).is_some_and(|d| d.has_animation()),
            _ => false,
        };
        Some(ImageInput { format, animated })
    }

    pub fn describe(&self) -> String {
        let name = format!("{:?}", self.format).to_uppercase();
        if self.animated {
            format!("animated {name}")
        } else {
            format!("{name} still image")
        }
    }
}

/// One decoded frame and how long it is shown (`None`: a still).
pub struct ImageFrame {
    pub rgba: RgbaImage,
    pub delay: Option<Duration>,
}

fn input_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Input { path: path.display().to_string(), reason: format!("cannot be decoded as an image ({e}); re-export it") }
}

/// The frames of an image input, decoded one by one (an animation is never held whole in memory).
pub fn frames(path: &Path, input: ImageInput) -> Result<Box<dyn Iterator<Item = Result<ImageFrame>>>> {
    let err = |e: image::ImageError| input_error(path, e);
    if !input.animated {
        let reader = ImageReader::open(path).map_err(|e| input_error(path, e))?;
        let mut decoder = reader.with_guessed_format().map_err(|e| input_error(path, e))?.into_decoder().map_err(err)?;
        let orientation = decoder.orientation().map_err(err)?;
        let mut image = DynamicImage::from_decoder(decoder).map_err(err)?;
        image.apply_orientation(orientation);
        return Ok(Box::new(std::iter::once(Ok(ImageFrame { rgba: image.to_rgba8(), delay: None }))));
    }
    let reader = BufReader::new(File::open(path).map_err(|e| input_error(path, e))?);
    let frames = match input.format {
        ImageFormat::Gif => GifDecoder::new(reader).map_err(err)?.into_frames(),
        ImageFormat::Png => PngDecoder::new(reader).and_then(|d| d.apng()).map_err(err)?.into_frames(),
        _ => WebPDecoder::new(reader).map_err(err)?.into_frames(),
    };
    let path = path.to_path_buf();
    Ok(Box::new(frames.map(move |f| {
        let f = f.map_err(|e| input_error(&path, e))?;
        let (numer, denom) = f.delay().numer_denom_ms();
        let delay = Duration::from_secs_f64(numer as f64 / denom.max(1) as f64 / 1e3);
        let delay = if delay < MIN_DELAY { DEFAULT_DELAY } else { delay };
        Ok(ImageFrame { rgba: f.into_buffer(), delay: Some(delay) })
    })))
}

/// The nominal frame rate of a frame shown for `delay` (each buffer carries its own timestamp and duration, so
/// animations with varying delays keep them).
fn frame_rate(delay: Duration) -> gst::Fraction {
    let us = delay.as_micros().max(1) as i64;
    let g = gcd(1_000_000, us);
    gst::Fraction::new((1_000_000 / g) as i32, (us / g) as i32)
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// The appsrc an image input enters the pipeline through (caps are set from the first frame).
pub fn appsrc() -> gst_app::AppSrc {
    gst_app::AppSrc::builder().name("imagesrc").format(gst::Format::Time).is_live(false).block(true).max_buffers(2).build()
}

/// Decodes `path` into `src` until the last frame (then end of stream), an error, or `stop()`. Runs on its
/// own thread (`mf-image`).
pub fn feed(path: &Path, input: ImageInput, src: &gst_app::AppSrc, stop: impl Fn() -> bool) -> Result<u64> {
    let mut pts = gst::ClockTime::ZERO;
    let mut count = 0u64;
    for frame in frames(path, input)? {
        let frame = frame?;
        if stop() {
            return Ok(count);
        }
        let (w, h) = frame.rgba.dimensions();
        let duration = frame.delay.unwrap_or(STILL_DURATION);
        if count == 0 {
            src.set_caps(Some(
                &gst::Caps::builder("video/x-raw")
                    .field("format", "RGBA")
                    .field("width", w as i32)
                    .field("height", h as i32)
                    .field("framerate", frame_rate(duration))
                    .field("pixel-aspect-ratio", gst::Fraction::new(1, 1))
                    .build(),
            ));
        }
        let mut buffer = gst::Buffer::from_mut_slice(frame.rgba.into_raw());
        let duration = gst::ClockTime::from_nseconds(duration.as_nanos() as u64);
        {
            let b = buffer.get_mut().unwrap();
            b.set_pts(pts);
            b.set_duration(duration);
        }
        pts += duration;
        if src.push_buffer(buffer).is_err() {
            // Flushing: the pipeline stopped (an error elsewhere or a cancel); the bus says why.
            return Ok(count);
        }
        count += 1;
    }
    let _ = src.end_of_stream();
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_rates_of_delays() {
        assert_eq!(frame_rate(Duration::from_millis(100)), gst::Fraction::new(10, 1));
        assert_eq!(frame_rate(Duration::from_millis(40)), gst::Fraction::new(25, 1));
        assert_eq!(frame_rate(Duration::from_millis(30)), gst::Fraction::new(100, 3));
        assert_eq!(frame_rate(STILL_DURATION), gst::Fraction::new(1, 1));
    }
}

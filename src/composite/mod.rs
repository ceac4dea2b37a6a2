//! Composite: frame + alpha + background → the output frame (alpha, composite, mask or side-by-side).
//! Backgrounds (colour, image, looping video, blur) are in `background.rs`.

mod background;

pub use background::Background;

use crate::config::OutputKind;
use crate::error::Result;

/// Exact rounding of x / 255 for x in 0..=255*255.
#[inline(always)]
fn div255(x: u32) -> u32 {
    (x + 128 + ((x + 128) >> 8)) >> 8
}

/// `fg * a + bg * (1 - a)` per channel, written into `fg`; alpha set opaque.
pub fn blend_into(fg: &mut [u8], bg: &[u8], alpha: &[u8]) {
    for ((f, b), &a) in fg.chunks_exact_mut(4).zip(bg.chunks_exact(4)).zip(alpha) {
        let a = a as u32;
        let na = 255 - a;
        f[0] = div255(f[0] as u32 * a + b[0] as u32 * na) as u8;
        f[1] = div255(f[1] as u32 * a + b[1] as u32 * na) as u8;
        f[2] = div255(f[2] as u32 * a + b[2] as u32 * na) as u8;
        f[3] = 255;
    }
}

/// Output frame size for a given kind.
pub fn output_size(kind: OutputKind, w: u32, h: u32) -> (u32, u32) {
    match kind {
        OutputKind::SideBySide => (w * 2, h),
        _ => (w, h),
    }
}

pub trait Composite: Send {
    /// Turns `frame` (RGBA, `w*h*4`) into the output frame. Kinds that keep the frame size work in place and
    /// return `None`; side-by-side returns a new, wider frame.
    fn run(&mut self, frame: &mut [u8], w: u32, h: u32, alpha: &[u8]) -> Result<Option<Vec<u8>>>;
    fn name(&self) -> &'static str;
}

pub struct CpuComposite {
    kind: OutputKind,
    background: Background,
    fg_estimate: bool,
}

impl CpuComposite {
    pub fn new(kind: OutputKind, background: Background) -> Self {
        CpuComposite { kind, background, fg_estimate: false }
    }

    /// Replace the colour of partly transparent pixels by the estimated foreground colour (blur fusion), so
    /// the old background does not tint the edges over a new one.
    pub fn set_foreground_estimation(&mut self, on: bool) {
        self.fg_estimate = on;
    }
}

/// Rewrites the RGB of `frame` with the estimated foreground colour where 0 < alpha < 1.
pub fn apply_foreground_estimation(frame: &mut [u8], w: u32, h: u32, alpha: &[u8]) {
    let n = (w * h) as usize;
    let a: Vec<f32> = alpha.iter().map(|v| *v as f32 / 255.0).collect();
    let img: Vec<f32> = frame.chunks_exact(4).flat_map(|p| [p[0] as f32 / 255.0, p[1] as f32 / 255.0, p[2] as f32 / 255.0]).collect();
    // Radii as BiRefNet's refine_foreground uses at 1024², scaled to the frame.
    let s = (w.max(h) as f32 / 1024.0).max(0.1);
    let f = crate::postprocess::filters::estimate_foreground(&img, &a, w as usize, h as usize, (90.0 * s) as usize + 1, (6.0 * s) as usize + 1);
    for k in 0..n {
        if alpha[k] > 0 && alpha[k] < 255 {
            for c in 0..3 {
                frame[k * 4 + c] = (f[k * 3 + c] * 255.0 + 0.5) as u8;
            }
        }
    }
}

impl Composite for CpuComposite {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn run(&mut self, frame: &mut [u8], w: u32, h: u32, alpha: &[u8]) -> Result<Option<Vec<u8>>> {
        let original = (self.fg_estimate && self.kind == OutputKind::SideBySide).then(|| frame.to_vec());
        if self.fg_estimate && self.kind != OutputKind::Mask {
            apply_foreground_estimation(frame, w, h, alpha);
        }
        match self.kind {
            OutputKind::Alpha => {
                for (px, &a) in frame.chunks_exact_mut(4).zip(alpha) {
                    px[3] = a;
                }
                Ok(None)
            }
            OutputKind::Mask => {
                for (px, &a) in frame.chunks_exact_mut(4).zip(alpha) {
                    px.copy_from_slice(&[a, a, a, 255]);
                }
                Ok(None)
            }
            OutputKind::Composite => {
                match self.background.frame(frame, w, h)? {
                    Some(bg) => blend_into(frame, bg, alpha),
                    None => {
                        for (px, &a) in frame.chunks_exact_mut(4).zip(alpha) {
                            px[3] = a;
                        }
                    }
                }
                Ok(None)
            }
            OutputKind::SideBySide => {
                let row = (w * 4) as usize;
                let mut out = vec![0u8; row * 2 * h as usize];
                let left: &[u8] = original.as_deref().unwrap_or(frame);
                for y in 0..h as usize {
                    out[y * 2 * row..y * 2 * row + row].copy_from_slice(&left[y * row..(y + 1) * row]);
                }
                match self.background.frame(frame, w, h)? {
                    Some(bg) => blend_into(frame, bg, alpha),
                    None => {
                        for (px, &a) in frame.chunks_exact_mut(4).zip(alpha) {
                            px[3] = a;
                        }
                    }
                }
                for y in 0..h as usize {
                    out[y * 2 * row + row..(y + 1) * 2 * row].copy_from_slice(&frame[y * row..(y + 1) * row]);
                }
                Ok(Some(out))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn div255_is_exact_rounding() {
        for x in 0..=255 * 255u32 {
            assert_eq!(div255(x), (x as f64 / 255.0).round() as u32, "x={x}");
        }
    }

    #[test]
    fn blend_endpoints_and_midpoint() {
        let mut fg = vec![200, 100, 0, 255, 200, 100, 0, 255, 200, 100, 0, 255];
        let bg = vec![0, 0, 255, 255, 0, 0, 255, 255, 0, 0, 255, 255];
        blend_into(&mut fg, &bg, &[255, 0, 128]);
        assert_eq!(&fg[0..4], &[200, 100, 0, 255]);
        assert_eq!(&fg[4..8], &[0, 0, 255, 255]);
        assert_eq!(&fg[8..12], &[100, 50, 127, 255]);
    }
}

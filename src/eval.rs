//! `matteflow eval`: matte quality on synthetic scenes whose alpha is known, comparing settings side by side.
//!
//! Scenes: a real person (from the shipped carphone clip, alpha taken once from the model with refinement
//! and then fixed as the truth) composited over a real street (the shipped bikes clip) with per-frame sensor
//! noise — once standing still (a static camera: every alpha change is flicker) and once moving sideways at a
//! known speed (measures lag). Metrics: SAD / MSE / gradient error of alpha against the truth, composite
//! error against the true composite on a new background, flicker (mean |Δα| between consecutive frames
//! where the truth does not change), and lag of the mask behind per-frame inference, in frames.

use std::path::Path;

use serde::Serialize;

use crate::config::{BackgroundSpec, OutputKind};
use crate::engine::{Alpha, Compositor, Mask, Matter, MatteSettings, Placement};
use crate::error::Result;
use crate::infer::OnnxSegmenter;
use crate::postprocess::PostprocessConfig;

#[derive(Debug, Clone, Serialize)]
pub struct Setting {
    pub name: String,
    pub post: PostprocessConfig,
    pub fg_estimate: bool,
}

/// The settings compared by default.
pub fn default_settings() -> Vec<Setting> {
    let base = PostprocessConfig::default();
    let smooth = PostprocessConfig { smooth: 0.7, ..base };
    vec![
        Setting { name: "naive (per frame)".into(), post: base, fg_estimate: false },
        Setting { name: "EMA 0.7, no motion gate".into(), post: PostprocessConfig { motion_threshold: 1e9, ..smooth }, fg_estimate: false },
        Setting { name: "smooth 0.7 (motion-aware)".into(), post: smooth, fg_estimate: false },
        Setting { name: "refine (guided filter)".into(), post: PostprocessConfig { refine: true, ..base }, fg_estimate: false },
        Setting { name: "fg estimate".into(), post: base, fg_estimate: true },
        Setting { name: "smooth + refine + fg".into(), post: PostprocessConfig { refine: true, ..smooth }, fg_estimate: true },
    ]
}

/// A synthetic clip with its truth.
pub struct Scene {
    pub name: &'static str,
    pub w: u32,
    pub h: u32,
    pub frames: Vec<Vec<u8>>,
    pub alpha: Vec<Vec<f32>>,
    /// True composite over the evaluation background.
    pub truth_composite: Vec<Vec<u8>>,
    /// Horizontal speed of the subject, pixels per frame (0 = still).
    pub speed: f32,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Metrics {
    pub setting: String,
    /// Sum of absolute alpha differences per frame, in thousands (as matting benchmarks report it).
    pub sad: f64,
    /// Mean squared alpha error ×1000.
    pub mse: f64,
    /// Squared gradient-magnitude error summed per frame, in thousands.
    pub grad: f64,
    /// Mean absolute error of the composite on the new background, 8-bit levels, over subject and edges.
    pub composite_error: f64,
    /// Mean |α_t − α_{t−1}| where the truth does not change, static scene (0..1).
    pub flicker_static: f64,
    /// Same on the moving scene, away from the moving subject.
    pub flicker_moving: f64,
    /// How many frames the mask trails per-frame inference on the moving scene (centroid based).
    pub lag_frames: f64,
    /// Per-frame flicker on the static scene (for the plot).
    pub flicker_series: Vec<f64>,
}

const EVAL_BG: [u8; 3] = [0, 177, 64];

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 32) as u32
    }
}

/// The engine on the host stages with these settings, over another handle on `seg`'s session.
fn engine(seg: &OnnxSegmenter, s: &MatteSettings) -> Result<(Matter, Compositor)> {
    Ok((Matter::open(seg.share(), s, &Placement::Host)?, Compositor::open(s, &Placement::Host)?))
}

/// The frame's alpha (the mask and the host alpha bytes).
fn run_alpha(matter: &mut Matter, rgba: &[u8], w: u32, h: u32) -> Result<(Mask, Vec<u8>)> {
    let (mask, _) = matter.mask(crate::cuda::stages::Pixels::Host(rgba), w, h)?;
    let a = match &mask.alpha {
        Alpha::Host(a) => a.clone(),
        Alpha::Device(_) => return Err(crate::Error::config("eval runs the host stages")),
    };
    Ok((mask, a))
}

/// Builds the static and the moving scene from the shipped clips.
pub fn build_scenes(seg: &mut OnnxSegmenter, person_clip: &Path, street_clip: &Path, frames: usize) -> Result<Vec<Scene>> {
    let person = crate::source::decode_frames(person_clip, 61)?;
    let (pw, ph, prgba) = person.last().cloned().ok_or_else(|| crate::Error::config("person clip has no frames"))?;
    let refined = MatteSettings { post: PostprocessConfig { refine: true, ..Default::default() }, ..Default::default() };
    let (mut matter, _) = engine(seg, &refined)?;
    let (_, palpha8) = run_alpha(&mut matter, &prgba, pw, ph)?;
    let palpha: Vec<f32> = palpha8.iter().map(|v| *v as f32 / 255.0).collect();
    let prgba = clean_foreground(&prgba, &palpha, pw as usize, ph as usize);
    let street = crate::source::decode_frames(street_clip, 1)?;
    let (w, h, bg) = street[0].clone();

    let mut scenes = Vec::new();
    for (name, speed, x0) in [("static", 0.0f32, (w - pw) / 2), ("moving", 3.0, 40)] {
        let mut rng = Rng(0x9e3779b97f4a7c15);
        let mut sc = Scene { name, w, h, frames: vec![], alpha: vec![], truth_composite: vec![], speed };
        for t in 0..frames {
            let ox = x0 as i64 + (speed * t as f32) as i64;
            let oy = (h - ph) as i64;
            let mut img = bg.clone();
            let mut a = vec![0f32; (w * h) as usize];
            let mut comp: Vec<u8> = bg.chunks_exact(4).flat_map(|_| [EVAL_BG[0], EVAL_BG[1], EVAL_BG[2], 255]).collect();
            for y in 0..ph as i64 {
                for x in 0..pw as i64 {
                    let (fx, fy) = (x + ox, y + oy);
                    if fx < 0 || fy < 0 || fx >= w as i64 || fy >= h as i64 {
                        continue;
                    }
                    let s = (y as usize * pw as usize + x as usize) * 4;
                    let d = (fy as usize * w as usize + fx as usize) * 4;
                    let al = palpha[s / 4];
                    a[d / 4] = al;
                    for c in 0..3 {
                        let f = prgba[s + c] as f32;
                        img[d + c] = (f * al + img[d + c] as f32 * (1.0 - al) + 0.5) as u8;
                        comp[d + c] = (f * al + EVAL_BG[c] as f32 * (1.0 - al) + 0.5) as u8;
                    }
                }
            }
            // Sensor noise, ±4 levels, different every frame.
            for v in img.chunks_exact_mut(4) {
                for c in v.iter_mut().take(3) {
                    let n = (rng.next() % 9) as i32 - 4;
                    *c = (*c as i32 + n).clamp(0, 255) as u8;
                }
            }
            sc.frames.push(img);
            sc.alpha.push(a);
            sc.truth_composite.push(comp);
        }
        scenes.push(sc);
    }
    Ok(scenes)
}

/// The person layer's true colour: where the subject is not fully opaque, the frame's pixel is a mix with
/// the car behind it; replace it by the colour pushed outwards from the opaque interior (average of already
/// known 4-neighbours, ring by ring), so the synthetic scenes have a clean, known foreground colour.
fn clean_foreground(rgba: &[u8], alpha: &[f32], w: usize, h: usize) -> Vec<u8> {
    let mut out = rgba.to_vec();
    let mut known: Vec<bool> = alpha.iter().map(|a| *a >= 0.95).collect();
    if !known.iter().any(|k| *k) {
        return out;
    }
    loop {
        let mut next = known.clone();
        let mut changed = false;
        for y in 0..h {
            for x in 0..w {
                let k = y * w + x;
                if known[k] {
                    continue;
                }
                let mut acc = [0u32; 3];
                let mut n = 0;
                let nb = [(x.wrapping_sub(1), y), (x + 1, y), (x, y.wrapping_sub(1)), (x, y + 1)];
                for (nx, ny) in nb {
                    if nx < w && ny < h && known[ny * w + nx] {
                        for c in 0..3 {
                            acc[c] += out[(ny * w + nx) * 4 + c] as u32;
                        }
                        n += 1;
                    }
                }
                if n > 0 {
                    for c in 0..3 {
                        out[k * 4 + c] = (acc[c] / n) as u8;
                    }
                    next[k] = true;
                    changed = true;
                }
            }
        }
        known = next;
        if !changed {
            return out;
        }
    }
}

fn centroid_x(a: &[f32], w: usize) -> f64 {
    let (mut s, mut sx) = (0f64, 0f64);
    for (k, v) in a.iter().enumerate() {
        s += *v as f64;
        sx += *v as f64 * (k % w) as f64;
    }
    if s > 0.0 {
        sx / s
    } else {
        0.0
    }
}

fn grad_mag(a: &[f32], w: usize, h: usize) -> Vec<f32> {
    let mut g = vec![0f32; w * h];
    for y in 1..h - 1 {
        for x in 1..w - 1 {
            let gx = (a[y * w + x + 1] - a[y * w + x - 1]) * 0.5;
            let gy = (a[(y + 1) * w + x] - a[(y - 1) * w + x]) * 0.5;
            g[y * w + x] = (gx * gx + gy * gy).sqrt();
        }
    }
    g
}

/// Runs every setting over every scene.
pub fn evaluate(seg: &mut OnnxSegmenter, scenes: &[Scene], settings: &[Setting]) -> Result<Vec<Metrics>> {
    // Per-frame (naive) alphas of the moving scene: the reference for lag.
    let mut results = Vec::new();
    let mut naive_centroids: Vec<f64> = Vec::new();
    for (si, setting) in settings.iter().enumerate() {
        let mut m = Metrics { setting: setting.name.clone(), ..Default::default() };
        let (mut n_frames, mut comp_n) = (0f64, 0f64);
        for sc in scenes {
            let (w, h) = (sc.w as usize, sc.h as usize);
            let s = MatteSettings {
                background: BackgroundSpec::Colour(EVAL_BG),
                kind: OutputKind::Composite,
                post: setting.post,
                fg_estimate: setting.fg_estimate,
                ..Default::default()
            };
            let (mut matter, mut comp) = engine(seg, &s)?;
            let mut prev: Option<Vec<f32>> = None;
            let (mut flick, mut flick_n) = (0f64, 0f64);
            let mut lags = Vec::new();
            for (t, frame) in sc.frames.iter().enumerate() {
                let (mask, a8) = run_alpha(&mut matter, frame, sc.w, sc.h)?;
                let a: Vec<f32> = a8.iter().map(|v| *v as f32 / 255.0).collect();
                let truth = &sc.alpha[t];
                n_frames += 1.0;
                let mut sad = 0f64;
                let mut se = 0f64;
                for (p, g) in a.iter().zip(truth) {
                    let d = (p - g) as f64;
                    sad += d.abs();
                    se += d * d;
                }
                m.sad += sad / 1000.0;
                m.mse += se / (w * h) as f64 * 1000.0;
                let (gp, gt) = (grad_mag(&a, w, h), grad_mag(truth, w, h));
                m.grad += gp.iter().zip(&gt).map(|(p, g)| ((p - g) as f64).powi(2)).sum::<f64>() / 1000.0;
                let mut out = frame.clone();
                comp.run(&mut out, sc.w, sc.h, &mask)?;
                let (mut ce, mut cn) = (0f64, 0f64);
                for k in 0..w * h {
                    if truth[k] > 0.02 || a[k] > 0.02 {
                        for c in 0..3 {
                            ce += (out[k * 4 + c] as f64 - sc.truth_composite[t][k * 4 + c] as f64).abs();
                        }
                        cn += 3.0;
                    }
                }
                m.composite_error += ce / cn.max(1.0);
                comp_n += 1.0;
                if let Some(p) = &prev {
                    let (mut s, mut n) = (0f64, 0f64);
                    for k in 0..w * h {
                        if (truth[k] - sc.alpha[t - 1][k]).abs() < 1e-3 {
                            s += (a[k] - p[k]).abs() as f64;
                            n += 1.0;
                        }
                    }
                    let f = s / n.max(1.0);
                    flick += f;
                    flick_n += 1.0;
                    if sc.speed == 0.0 {
                        m.flicker_series.push(f);
                    }
                }
                if sc.speed > 0.0 {
                    let c = centroid_x(&a, w);
                    if si == 0 {
                        naive_centroids.push(c);
                    } else if t >= 5 {
                        lags.push((naive_centroids[t] - c) / sc.speed as f64);
                    }
                }
                prev = Some(a);
            }
            if sc.speed == 0.0 {
                m.flicker_static = flick / flick_n.max(1.0);
            } else {
                m.flicker_moving = flick / flick_n.max(1.0);
                m.lag_frames = if lags.is_empty() { 0.0 } else { lags.iter().sum::<f64>() / lags.len() as f64 };
            }
        }
        m.sad /= n_frames;
        m.mse /= n_frames;
        m.grad /= n_frames;
        m.composite_error /= comp_n;
        results.push(m);
    }
    Ok(results)
}

/// Markdown table of the results.
pub fn table(model: &str, results: &[Metrics]) -> String {
    let mut t = format!(
        "model: {model}\n\n| setting | SAD (k) | MSE (×1e-3) | Grad (k) | composite err (levels) | flicker static | flicker moving | lag (frames) |\n|---|---|---|---|---|---|---|---|\n"
    );
    for m in results {
        t += &format!(
            "| {} | {:.3} | {:.3} | {:.3} | {:.2} | {:.5} | {:.5} | {:.2} |\n",
            m.setting, m.sad, m.mse, m.grad, m.composite_error, m.flicker_static, m.flicker_moving, m.lag_frames
        );
    }
    t
}

/// A line chart (SVG) of per-frame flicker on the static scene, one line per setting.
pub fn flicker_svg(results: &[Metrics]) -> String {
    let (w, h, l, b) = (760.0, 360.0, 70.0, 40.0);
    let max = results.iter().flat_map(|m| m.flicker_series.iter().copied()).fold(1e-6, f64::max) * 1.1;
    let n = results.iter().map(|m| m.flicker_series.len()).max().unwrap_or(1).max(2);
    let colours = ["#d62728", "#ff7f0e", "#2ca02c", "#1f77b4", "#9467bd", "#8c564b", "#17becf"];
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"18\" text-anchor=\"middle\" font-size=\"14\">Flicker per frame, static scene (mean |Δα| where nothing moves)</text>\n\
         <line x1=\"{l}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/><line x1=\"{l}\" y1=\"30\" x2=\"{l}\" y2=\"{}\" stroke=\"black\"/>\n",
        w / 2.0, h - b, w - 200.0, h - b, h - b
    );
    let pw = w - 200.0 - l;
    let ph = h - b - 30.0;
    for i in 0..=4 {
        let v = max * i as f64 / 4.0;
        let y = h - b - ph * i as f64 / 4.0;
        s += &format!("<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{:.4}</text>\n", l - 5.0, y + 4.0, v);
    }
    s += &format!("<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">frame</text>\n", l + pw / 2.0, h - 10.0);
    for (i, m) in results.iter().enumerate() {
        let c = colours[i % colours.len()];
        let pts: Vec<String> = m
            .flicker_series
            .iter()
            .enumerate()
            .map(|(k, v)| format!("{:.1},{:.1}", l + pw * k as f64 / (n - 1) as f64, h - b - ph * v / max))
            .collect();
        s += &format!("<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"1.5\" points=\"{}\"/>\n", pts.join(" "));
        s += &format!(
            "<rect x=\"{}\" y=\"{}\" width=\"12\" height=\"3\" fill=\"{c}\"/><text x=\"{}\" y=\"{}\">{}</text>\n",
            w - 190.0,
            40.0 + 18.0 * i as f64,
            w - 172.0,
            45.0 + 18.0 * i as f64,
            m.setting
        );
    }
    s + "</svg>\n"
}

//! `matteflow gpu-check`: compiles the kernels (no GPU needed) and, where a GPU is present, runs each one on
//! fresh random inputs against the CPU implementation of the same stage, with stated tolerances, and times
//! both. The numbers go into docs/BENCHMARKS.md.

use std::time::Instant;

use cudarc::driver::CudaSlice;
use fast_image_resize::pixels::F32x3;

use super::{FrameFormat, Gpu};
use crate::composite::{Background, Composite, CpuComposite};
use crate::config::{BackgroundSpec, OutputKind};
use crate::error::{Error, Result};
use crate::infer::LowResMask;
use crate::model::{self, Manifest, ResizeMode};
use crate::postprocess::{self, CpuPostprocess, Postprocess, PostprocessConfig};
use crate::preprocess::{CpuPreprocess, Geometry, ModelInput, Preprocess};

pub struct CaseResult {
    pub name: String,
    pub max_error: f64,
    pub tolerance: f64,
    pub gpu_ms: f64,
    pub cpu_ms: f64,
}

impl CaseResult {
    pub fn ok(&self) -> bool {
        self.max_error <= self.tolerance
    }
}

struct Rng(u64);
impl Rng {
    fn u8s(&mut self, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                (self.0 >> 56) as u8
            })
            .collect()
    }
    fn f32s(&mut self, n: usize) -> Vec<f32> {
        self.u8s(n * 2).chunks(2).map(|c| (c[0] as f32 * 256.0 + c[1] as f32) / 65535.0).collect()
    }
}

fn max_diff(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs() as f64).fold(0.0, f64::max)
}

fn e(what: &str, x: impl std::fmt::Display) -> Error {
    Error::Cuda(format!("{what}: {x}"))
}

/// Median milliseconds of `runs` calls of `f` (after one warm-up).
fn time(runs: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut v = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        f()?;
        v.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Ok(v[runs / 2])
}

/// CPU reference of the NV12 conversion in the kernel (same coefficients, float, no rounding).
pub fn nv12_to_rgb_f32(y: &[u8], uv: &[u8], w: usize, h: usize, bt709: bool) -> Vec<F32x3> {
    let mut out = Vec::with_capacity(w * h);
    for yy in 0..h {
        for xx in 0..w {
            let yv = 1.164383f32 * (y[yy * w + xx] as f32 - 16.0);
            let u = uv[(yy / 2) * w + (xx / 2) * 2] as f32 - 128.0;
            let v = uv[(yy / 2) * w + (xx / 2) * 2 + 1] as f32 - 128.0;
            let (r, g, b) = if bt709 {
                (yv + 1.792741 * v, yv - 0.213249 * u - 0.532909 * v, yv + 2.112402 * u)
            } else {
                (yv + 1.596027 * v, yv - 0.391762 * u - 0.812968 * v, yv + 2.017232 * u)
            };
            out.push(F32x3::new([r.clamp(0.0, 255.0), g.clamp(0.0, 255.0), b.clamp(0.0, 255.0)]));
        }
    }
    out
}

fn geometry(m: &Manifest, w: u32, h: u32) -> Geometry {
    let (mw, mh) = m.model_size_for(w, h);
    match m.input.resize {
        ResizeMode::Stretch => Geometry::stretch(mw, mh),
        ResizeMode::Letterbox => Geometry::letterbox(mw, mh, w, h),
    }
}

/// Runs every case. `runs` timed repetitions each.
pub fn run(runs: usize) -> Result<Vec<CaseResult>> {
    let gpu = Gpu::open(0)?;
    let st = gpu.stream.clone();
    let mut rng = Rng(0x2545f4914f6cdd1d ^ std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64);
    let mut results = Vec::new();

    // Preprocess, RGBA: BiRefNet (antialias, NCHW, ImageNet) at 1080p and 4K, selfie (bilinear, NHWC),
    // selfie letterboxed.
    let mut letterbox = model::builtin("selfie").unwrap();
    letterbox.input.resize = ResizeMode::Letterbox;
    let cases: Vec<(String, Manifest, u32, u32)> = vec![
        ("preprocess RGBA 1920x1080 → BiRefNet 1024² NCHW".into(), model::builtin("birefnet-general").unwrap(), 1920, 1080),
        ("preprocess RGBA 3840x2160 → BiRefNet 1024² NCHW".into(), model::builtin("birefnet-general").unwrap(), 3840, 2160),
        ("preprocess RGBA 1280x720 → selfie 256² NHWC".into(), model::builtin("selfie").unwrap(), 1280, 720),
        ("preprocess RGBA 1280x720 → selfie letterbox".into(), letterbox, 1280, 720),
    ];
    for (name, m, w, h) in cases {
        let frame = rng.u8s((w * h * 4) as usize);
        let geo = geometry(&m, w, h);
        let mut cpu = CpuPreprocess::new(&m);
        let mut want = ModelInput::default();
        let cpu_ms = time(runs.min(5), || cpu.run(&frame, w, h, &mut want))?;
        let d_frame = st.clone_htod(&frame).map_err(|x| e("upload", x))?;
        let mut d_out: CudaSlice<f32> = st.alloc_zeros(want.data.len()).map_err(|x| e("alloc", x))?;
        let gpu_ms = time(runs, || {
            gpu.preprocess(&d_frame, FrameFormat::Rgba { pitch: (w * 4) as usize }, w, h, &m, &geo, &mut d_out)?;
            st.synchronize().map_err(|x| e("sync", x))
        })?;
        let got = st.clone_dtoh(&d_out).map_err(|x| e("download", x))?;
        results.push(CaseResult { name, max_error: max_diff(&got, &want.data), tolerance: 1e-5, gpu_ms, cpu_ms });
    }

    // Preprocess, NV12 (what NVDEC produces): BT.709 1080p → BiRefNet.
    {
        let (w, h) = (1920u32, 1080u32);
        let m = model::builtin("birefnet-general").unwrap();
        let y = rng.u8s((w * h) as usize);
        let uv = rng.u8s((w * h / 2) as usize);
        let mut nv12 = y.clone();
        nv12.extend_from_slice(&uv);
        let rgb = nv12_to_rgb_f32(&y, &uv, w as usize, h as usize, true);
        let mut cpu = CpuPreprocess::new(&m);
        let mut want = ModelInput::default();
        let cpu_ms = time(runs.min(5), || cpu.run_rgb_f32(&rgb, w, h, &mut want))?;
        let geo = geometry(&m, w, h);
        let d_frame = st.clone_htod(&nv12).map_err(|x| e("upload", x))?;
        let mut d_out: CudaSlice<f32> = st.alloc_zeros(want.data.len()).map_err(|x| e("alloc", x))?;
        let fmt = FrameFormat::Nv12 { pitch: w as usize, uv_offset: (w * h) as usize, bt709: true };
        let gpu_ms = time(runs, || {
            gpu.preprocess(&d_frame, fmt, w, h, &m, &geo, &mut d_out)?;
            st.synchronize().map_err(|x| e("sync", x))
        })?;
        let got = st.clone_dtoh(&d_out).map_err(|x| e("download", x))?;
        results.push(CaseResult {
            name: "preprocess NV12 1920x1080 (BT.709) → BiRefNet 1024²".into(),
            max_error: max_diff(&got, &want.data),
            tolerance: 1e-5,
            gpu_ms,
            cpu_ms,
        });
    }

    // Mask upsampling 1024² → 1080p, and 256² → 720p letterboxed (8-bit alpha, ≤ 1 level).
    for (mw, mh, w, h, geo) in [
        (1024u32, 1024u32, 1920u32, 1080u32, Geometry::stretch(1024, 1024)),
        (256, 256, 1280, 720, Geometry::letterbox(256, 256, 1280, 720)),
    ] {
        let mask = LowResMask { data: rng.f32s((mw * mh) as usize), width: mw, height: mh };
        let input = ModelInput { data: vec![], shape: [1, 3, mh as i64, mw as i64], geometry: Some(geo) };
        let mut cpu = CpuPostprocess::new(PostprocessConfig::default(), [255.0; 3]);
        let mut want = Vec::new();
        let cpu_ms = time(runs.min(5), || cpu.run(&[], &input, &mask, w, h, &mut want))?;
        let d_mask = st.clone_htod(&mask.data).map_err(|x| e("upload", x))?;
        let mut d_alpha: CudaSlice<u8> = st.alloc_zeros((w * h) as usize).map_err(|x| e("alloc", x))?;
        let crop = (geo.content_x as f32, geo.content_y as f32, geo.content_w as f32, geo.content_h as f32);
        let gpu_ms = time(runs, || {
            gpu.upsample_mask(&d_mask, mw, mh, crop, &mut d_alpha, w, h)?;
            st.synchronize().map_err(|x| e("sync", x))
        })?;
        let got = st.clone_dtoh(&d_alpha).map_err(|x| e("download", x))?;
        let err = got.iter().zip(&want).map(|(a, b)| (*a as i32 - *b as i32).abs()).max().unwrap_or(0) as f64 / 255.0;
        results.push(CaseResult {
            name: format!("upsample mask {mw}x{mh} → {w}x{h}{}", if geo.content_h < mh { " (letterbox)" } else { "" }),
            max_error: err,
            tolerance: 1.0 / 255.0,
            gpu_ms,
            cpu_ms,
        });
    }

    // Composite 1080p: alpha, colour, image background, mask (exact integer blend: error must be 0).
    {
        let (w, h) = (1920u32, 1080u32);
        let n = (w * h) as usize;
        let frame = rng.u8s(n * 4);
        let alpha = rng.u8s(n);
        let bg = rng.u8s(n * 4);
        let bg_opaque: Vec<u8> = bg.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2], 255]).collect();
        let dir = std::env::temp_dir().join(format!("matteflow-gpu-check-{}.png", std::process::id()));
        image::RgbaImage::from_raw(w, h, bg_opaque.clone()).unwrap().save(&dir).map_err(|x| e("bg image", x))?;
        for (label, kind, spec) in [
            ("alpha", OutputKind::Alpha, BackgroundSpec::Transparent),
            ("over colour", OutputKind::Composite, BackgroundSpec::Colour([0, 177, 64])),
            ("over image", OutputKind::Composite, BackgroundSpec::Image(dir.clone())),
            ("mask", OutputKind::Mask, BackgroundSpec::Transparent),
        ] {
            let mut cpu = CpuComposite::new(kind, Background::open(&spec)?);
            let mut want = frame.clone();
            let t = Instant::now();
            cpu.run(&mut want, w, h, &alpha)?;
            let cpu_ms = t.elapsed().as_secs_f64() * 1000.0;
            let d_alpha = st.clone_htod(&alpha).map_err(|x| e("upload", x))?;
            let d_bg = st.clone_htod(&bg_opaque).map_err(|x| e("upload", x))?;
            let (k, colour, use_bg) = match (kind, &spec) {
                (OutputKind::Alpha, _) => (0, [0, 0, 0], false),
                (OutputKind::Mask, _) => (2, [0, 0, 0], false),
                (_, BackgroundSpec::Colour(c)) => (1, *c, false),
                _ => (1, [0, 0, 0], true),
            };
            let mut d_frame = st.clone_htod(&frame).map_err(|x| e("upload", x))?;
            let gpu_ms = time(runs, || {
                st.memcpy_htod(&frame, &mut d_frame).map_err(|x| e("upload", x))?;
                gpu.composite(&mut d_frame, &d_alpha, use_bg.then_some(&d_bg), n, k, colour)?;
                st.synchronize().map_err(|x| e("sync", x))
            })?;
            let got = st.clone_dtoh(&d_frame).map_err(|x| e("download", x))?;
            let err = got.iter().zip(&want).map(|(a, b)| (*a as i32 - *b as i32).abs()).max().unwrap_or(0) as f64 / 255.0;
            results.push(CaseResult { name: format!("composite 1080p {label}"), max_error: err, tolerance: 0.0, gpu_ms, cpu_ms });
        }
        let _ = std::fs::remove_file(&dir);
    }

    // Motion-aware temporal blend at 1024² NCHW.
    {
        let m = model::builtin("birefnet-general").unwrap();
        let (mw, mh) = (1024u32, 1024u32);
        let n = (mw * mh) as usize;
        let geo = Geometry::stretch(mw, mh);
        let prev_in: Vec<f32> = rng.f32s(n * 3).iter().map(|v| v * 4.0 - 2.0).collect();
        // The current input: mostly a small change (noise), a moving block changed a lot.
        let cur_in: Vec<f32> = prev_in
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let k = i % n;
                let (x, y) = (k % mw as usize, k / mw as usize);
                if (300..500).contains(&x) && (300..600).contains(&y) { v + 1.5 } else { v + 0.01 }
            })
            .collect();
        let prev_mask = rng.f32s(n);
        let cur_mask = rng.f32s(n);
        let so: [f32; 3] = std::array::from_fn(|c| m.input.std[c] / m.input.scale);
        let input = ModelInput { data: cur_in.clone(), shape: [1, 3, mh as i64, mw as i64], geometry: Some(geo) };
        let lr = LowResMask { data: cur_mask.clone(), width: mw, height: mh };
        let mut want = cur_mask.clone();
        let t = Instant::now();
        postprocess::temporal_blend(&input, &prev_in, so, 0.7, 0.03, &prev_mask, &lr, &mut want);
        let cpu_ms = t.elapsed().as_secs_f64() * 1000.0;
        let d_cur = st.clone_htod(&cur_in).map_err(|x| e("upload", x))?;
        let d_prev = st.clone_htod(&prev_in).map_err(|x| e("upload", x))?;
        let d_pm = st.clone_htod(&prev_mask).map_err(|x| e("upload", x))?;
        let mut d_mask = st.clone_htod(&cur_mask).map_err(|x| e("upload", x))?;
        let mut scratch: CudaSlice<f32> = st.alloc_zeros(n).map_err(|x| e("alloc", x))?;
        let gpu_ms = time(runs, || {
            st.memcpy_htod(&cur_mask, &mut d_mask).map_err(|x| e("upload", x))?;
            gpu.temporal_blend(&d_cur, &d_prev, true, so, 0.7, 0.03, &d_pm, &mut d_mask, &mut scratch, mw, mh)?;
            st.synchronize().map_err(|x| e("sync", x))
        })?;
        let got = st.clone_dtoh(&d_mask).map_err(|x| e("download", x))?;
        results.push(CaseResult {
            name: "temporal blend (motion-aware) 1024²".into(),
            max_error: max_diff(&got, &want),
            tolerance: 1e-5,
            gpu_ms,
            cpu_ms,
        });
    }
    Ok(results)
}

//! `matteflow gpu-check`: compiles the kernels (no GPU needed) and, where a GPU is present, runs each one on
//! fresh random inputs against the CPU implementation of the same stage, with stated tolerances, and times
//! both. The numbers go into docs/BENCHMARKS.md.

use std::time::Instant;

use cudarc::driver::CudaSlice;

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

pub(crate) struct Rng(pub(crate) u64);
impl Rng {
    pub(crate) fn u8s(&mut self, n: usize) -> Vec<u8> {
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

pub(crate) fn max_diff(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs() as f64).fold(0.0, f64::max)
}

fn e(what: &str, x: impl std::fmt::Display) -> Error {
    Error::Cuda(format!("{what}: {x}"))
}

/// Median milliseconds of `runs` calls of `f` (after one warm-up).
pub(crate) fn time(runs: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
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

pub(crate) fn geometry(m: &Manifest, w: u32, h: u32) -> Geometry {
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

    // Preprocess from BGRx (capture devices, screen grabbers), and into an f16 tensor (fp16-I/O models): the CPU
    // reference is the RGBA path on the same pixels; f16 values may differ by half an f16 step (≤ 2⁻¹¹·|x|, under
    // 1e-3 for ImageNet-normalised values) plus the f32 tolerance.
    {
        use cudarc::driver::DevicePtr;
        let (w, h) = (1920u32, 1080u32);
        let m = model::builtin("birefnet-general").unwrap();
        let bgrx = rng.u8s((w * h * 4) as usize);
        let rgba: Vec<u8> = bgrx.chunks_exact(4).flat_map(|p| [p[2], p[1], p[0], p[3]]).collect();
        let geo = geometry(&m, w, h);
        let mut cpu = CpuPreprocess::new(&m);
        let mut want = ModelInput::default();
        let cpu_ms = time(runs.min(5), || cpu.run(&rgba, w, h, &mut want))?;
        let d_bgrx = st.clone_htod(&bgrx).map_err(|x| e("upload", x))?;
        let d_rgba = st.clone_htod(&rgba).map_err(|x| e("upload", x))?;
        let mut d_out: CudaSlice<f32> = st.alloc_zeros(want.data.len()).map_err(|x| e("alloc", x))?;
        let pitch = (w * 4) as usize;
        let gpu_ms = time(runs, || {
            gpu.preprocess(&d_bgrx, FrameFormat::Bgrx { pitch }, w, h, &m, &geo, &mut d_out)?;
            st.synchronize().map_err(|x| e("sync", x))
        })?;
        let got = st.clone_dtoh(&d_out).map_err(|x| e("download", x))?;
        results.push(CaseResult {
            name: "preprocess BGRx 1920x1080 → BiRefNet 1024² NCHW".into(),
            max_error: max_diff(&got, &want.data),
            tolerance: 1e-5,
            gpu_ms,
            cpu_ms,
        });
        let d_half: CudaSlice<u16> = st.alloc_zeros(want.data.len()).map_err(|x| e("alloc", x))?;
        let gpu_ms = {
            let (src, _a) = d_rgba.device_ptr(&st);
            let (dst, _b) = d_half.device_ptr(&st);
            time(runs, || {
                gpu.preprocess_ptr(src, FrameFormat::Rgba { pitch }, w, h, &m, &geo, dst, super::TensorElem::F16)?;
                st.synchronize().map_err(|x| e("sync", x))
            })?
        };
        let got: Vec<f32> = st.clone_dtoh(&d_half).map_err(|x| e("download", x))?.into_iter().map(|b| half::f16::from_bits(b).to_f32()).collect();
        results.push(CaseResult {
            name: "preprocess RGBA 1920x1080 → BiRefNet 1024² NCHW f16".into(),
            max_error: max_diff(&got, &want.data),
            tolerance: 1e-3,
            gpu_ms,
            cpu_ms,
        });
    }

    // NV12 (what NVDEC produces) → RGBA and → model tensor: against the CPU reference of GStreamer's
    // videoconvert, on random frames and on frames GStreamer decoded or drew (cuda::nv12_check).
    results.extend(super::nv12_check::cases(&gpu, runs, &mut rng)?);

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

    // Mask upsampling from an f16 model output (logits, with the sigmoid): the CPU gets the same f16 values.
    {
        use cudarc::driver::DevicePtr;
        let (mw, mh, w, h) = (1024u32, 1024u32, 1920u32, 1080u32);
        let geo = Geometry::stretch(mw, mh);
        let bits: Vec<u16> = rng.f32s((mw * mh) as usize).iter().map(|v| half::f16::from_f32(v * 16.0 - 8.0).to_bits()).collect();
        let logits: Vec<f32> = bits.iter().map(|b| half::f16::from_bits(*b).to_f32()).collect();
        let mask = LowResMask { data: logits.iter().map(|v| 1.0 / (1.0 + (-v).exp())).collect(), width: mw, height: mh };
        let input = ModelInput { data: vec![], shape: [1, 3, mh as i64, mw as i64], geometry: Some(geo) };
        let mut cpu = CpuPostprocess::new(PostprocessConfig::default(), [255.0; 3]);
        let mut want = Vec::new();
        let cpu_ms = time(runs.min(5), || cpu.run(&[], &input, &mask, w, h, &mut want))?;
        let d_mask = st.clone_htod(&bits).map_err(|x| e("upload", x))?;
        let mut d_alpha: CudaSlice<u8> = st.alloc_zeros((w * h) as usize).map_err(|x| e("alloc", x))?;
        let crop = (0.0, 0.0, mw as f32, mh as f32);
        let gpu_ms = {
            let (ptr, _g) = d_mask.device_ptr(&st);
            time(runs, || {
                gpu.upsample_mask_raw(ptr, super::TensorElem::F16, mw, mh, crop, &mut d_alpha, w, h, true)?;
                st.synchronize().map_err(|x| e("sync", x))
            })?
        };
        let got = st.clone_dtoh(&d_alpha).map_err(|x| e("download", x))?;
        let err = got.iter().zip(&want).map(|(a, b)| (*a as i32 - *b as i32).abs()).max().unwrap_or(0) as f64 / 255.0;
        results.push(CaseResult { name: "upsample f16 logits 1024x1024 → 1920x1080 (sigmoid)".into(), max_error: err, tolerance: 1.0 / 255.0, gpu_ms, cpu_ms });
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
            // Each timed run starts from the frame again by a device copy (8 MB: microseconds), not an upload
            // from pageable memory (about 0.5 ms, which the GPU column showed until 2026-12-03).
            let pristine = st.clone_htod(&frame).map_err(|x| e("upload", x))?;
            let mut d_frame = st.clone_htod(&frame).map_err(|x| e("upload", x))?;
            let gpu_ms = time(runs, || {
                st.memcpy_dtod(&pristine, &mut d_frame).map_err(|x| e("copy", x))?;
                gpu.composite(&mut d_frame, &d_alpha, use_bg.then_some(&d_bg), n, k, colour)?;
                st.synchronize().map_err(|x| e("sync", x))
            })?;
            let got = st.clone_dtoh(&d_frame).map_err(|x| e("download", x))?;
            let err = got.iter().zip(&want).map(|(a, b)| (*a as i32 - *b as i32).abs()).max().unwrap_or(0) as f64 / 255.0;
            results.push(CaseResult { name: format!("composite 1080p {label}"), max_error: err, tolerance: 0.0, gpu_ms, cpu_ms });
        }
        let _ = std::fs::remove_file(&dir);
    }
    // Blurred backgrounds: box down, bilinear up, the CPU resizer's fixed-point arithmetic reproduced, so equal
    // to the level (odd sizes and a radius larger than the frame included); then the whole composite over it.
    for (w, h, radius) in [(1920u32, 1080u32, 20u32), (1280, 720, 7), (333, 201, 15), (97, 55, 200)] {
        let n = (w * h) as usize;
        let frame = rng.u8s(n * 4);
        let mut bg = Background::open(&BackgroundSpec::Blur(radius))?;
        let t = Instant::now();
        let want = bg.frame(&frame, w, h)?.map(|b| b.to_vec()).unwrap_or_default();
        let cpu_ms = t.elapsed().as_secs_f64() * 1000.0;
        let d_frame = st.clone_htod(&frame).map_err(|x| e("upload", x))?;
        let mut d_out: CudaSlice<u8> = st.alloc_zeros(n * 4).map_err(|x| e("alloc", x))?;
        let mut small = None;
        let gpu_ms = time(runs, || {
            gpu.blur_background(&d_frame, w, h, radius, &mut small, &mut d_out)?;
            st.synchronize().map_err(|x| e("sync", x))
        })?;
        let got = st.clone_dtoh(&d_out).map_err(|x| e("download", x))?;
        let err = got.iter().zip(&want).map(|(a, b)| (*a as i32 - *b as i32).abs()).max().unwrap_or(255) as f64 / 255.0;
        results.push(CaseResult { name: format!("blurred background {w}x{h} radius {radius}"), max_error: err, tolerance: 1.0 / 255.0, gpu_ms, cpu_ms });
    }
    {
        let (w, h) = (1920u32, 1080u32);
        let n = (w * h) as usize;
        let frame = rng.u8s(n * 4);
        let alpha = rng.u8s(n);
        let mut cpu = CpuComposite::new(OutputKind::Composite, Background::open(&BackgroundSpec::Blur(20))?);
        let mut want = frame.clone();
        let t = Instant::now();
        cpu.run(&mut want, w, h, &alpha)?;
        let cpu_ms = t.elapsed().as_secs_f64() * 1000.0;
        let d_alpha = st.clone_htod(&alpha).map_err(|x| e("upload", x))?;
        let pristine = st.clone_htod(&frame).map_err(|x| e("upload", x))?;
        let mut d_frame = st.clone_htod(&frame).map_err(|x| e("upload", x))?;
        let mut d_bg: CudaSlice<u8> = st.alloc_zeros(n * 4).map_err(|x| e("alloc", x))?;
        let mut small = None;
        let gpu_ms = time(runs, || {
            st.memcpy_dtod(&pristine, &mut d_frame).map_err(|x| e("copy", x))?;
            gpu.blur_background(&d_frame, w, h, 20, &mut small, &mut d_bg)?;
            gpu.composite(&mut d_frame, &d_alpha, Some(&d_bg), n, 1, [0, 0, 0])?;
            st.synchronize().map_err(|x| e("sync", x))
        })?;
        let got = st.clone_dtoh(&d_frame).map_err(|x| e("download", x))?;
        let err = got.iter().zip(&want).map(|(a, b)| (*a as i32 - *b as i32).abs()).max().unwrap_or(255) as f64 / 255.0;
        results.push(CaseResult { name: "composite 1080p over blur (radius 20)".into(), max_error: err, tolerance: 1.0 / 255.0, gpu_ms, cpu_ms });
    }

    // RGBA → I420 for the encoder (the download of `convert` to x264/vp9): the kernel against the CPU reference,
    // which tests/chroma.rs holds to videoconvert bit for bit. HD (BT.709, chroma on the even columns), SD (BT.601,
    // between them) with rows padded to 4 bytes; random frames.
    for (w, h) in [(1920u32, 1080u32), (642, 480)] {
        let layout = super::i420::I420Out::for_size(w, h).ok_or_else(|| Error::Cuda(format!("no I420 layout for {w}x{h}")))?;
        let rgba = rng.u8s((w * h * 4) as usize);
        let mut want = Vec::new();
        let cpu_ms = time(runs.min(3), || {
            want = layout.convert(&rgba);
            Ok(())
        })?;
        let d_rgba = st.clone_htod(&rgba).map_err(|x| e("upload", x))?;
        let mut d_out: CudaSlice<u8> = st.alloc_zeros(layout.size()).map_err(|x| e("alloc", x))?;
        let gpu_ms = time(runs, || {
            gpu.rgba_to_i420(&d_rgba, w, h, &layout.conv, &mut d_out)?;
            st.synchronize().map_err(|x| e("sync", x))
        })?;
        let got = st.clone_dtoh(&d_out).map_err(|x| e("download", x))?;
        let err = super::nv12_check::max_levels(&layout.visible(&got), &layout.visible(&want)) as f64 / 255.0;
        results.push(CaseResult { name: format!("rgba_to_i420 {w}x{h} (videoconvert's I420)"), max_error: err, tolerance: 0.0, gpu_ms, cpu_ms });
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
        // The same with f16 model inputs read where ONNX Runtime holds them (the CPU given the same rounded values).
        let h16 = |v: &[f32]| -> Vec<half::f16> { v.iter().map(|x| half::f16::from_f32(*x)).collect() };
        let back = |v: &[half::f16]| -> Vec<f32> { v.iter().map(|x| x.to_f32()).collect() };
        let (cur16, prev16) = (h16(&cur_in), h16(&prev_in));
        let input = ModelInput { data: back(&cur16), shape: [1, 3, mh as i64, mw as i64], geometry: Some(geo) };
        let mut want = cur_mask.clone();
        postprocess::temporal_blend(&input, &back(&prev16), so, 0.7, 0.03, &prev_mask, &lr, &mut want);
        let as_u16 = |v: &[half::f16]| -> Vec<u16> { v.iter().map(|x| x.to_bits()).collect() };
        let d_cur16 = st.clone_htod(&as_u16(&cur16)).map_err(|x| e("upload", x))?;
        let d_prev16 = st.clone_htod(&as_u16(&prev16)).map_err(|x| e("upload", x))?;
        let gpu_ms = {
            use cudarc::driver::DevicePtr;
            let (c, _g1) = d_cur16.device_ptr(&st);
            let (p, _g2) = d_prev16.device_ptr(&st);
            time(runs, || {
                st.memcpy_htod(&cur_mask, &mut d_mask).map_err(|x| e("upload", x))?;
                gpu.temporal_blend_raw(c, p, super::TensorElem::F16, true, so, 0.7, 0.03, &d_pm, &mut d_mask, &mut scratch, mw, mh)?;
                st.synchronize().map_err(|x| e("sync", x))
            })?
        };
        let got = st.clone_dtoh(&d_mask).map_err(|x| e("download", x))?;
        results.push(CaseResult {
            name: "temporal blend, f16 model inputs 1024²".into(),
            max_error: max_diff(&got, &want),
            tolerance: 1e-5,
            gpu_ms,
            cpu_ms,
        });
    }

    // The mask steps of --smooth / --threshold on the GPU stages: model output (f16 logits) → probabilities as
    // the CPU reads them (sigmoid, clamp), then the threshold remap.
    {
        let n = 1024 * 1024;
        let logits: Vec<half::f16> = rng.f32s(n).iter().map(|v| half::f16::from_f32(v * 16.0 - 8.0)).collect();
        let t = Instant::now();
        let want: Vec<f32> = logits
            .iter()
            .map(|v| {
                let p = (1.0 / (1.0 + (-v.to_f32()).exp())).clamp(0.0, 1.0);
                ((p - 0.1) / 0.8).clamp(0.0, 1.0)
            })
            .collect();
        let cpu_ms = t.elapsed().as_secs_f64() * 1000.0;
        let bits: Vec<u16> = logits.iter().map(|x| x.to_bits()).collect();
        let d_logits = st.clone_htod(&bits).map_err(|x| e("upload", x))?;
        let mut d_m: CudaSlice<f32> = st.alloc_zeros(n).map_err(|x| e("alloc", x))?;
        let gpu_ms = {
            use cudarc::driver::DevicePtr;
            let (l, _g) = d_logits.device_ptr(&st);
            time(runs, || {
                gpu.mask_prob(l, super::TensorElem::F16, true, n, &mut d_m)?;
                gpu.mask_threshold(&mut d_m, n, 0.1, 0.9)?;
                st.synchronize().map_err(|x| e("sync", x))
            })?
        };
        let got = st.clone_dtoh(&d_m).map_err(|x| e("download", x))?;
        results.push(CaseResult {
            name: "mask f16 logits → probabilities → threshold 0.1:0.9, 1024²".into(),
            max_error: max_diff(&got, &want),
            tolerance: 1e-5,
            gpu_ms,
            cpu_ms,
        });
    }
    results.extend(window_attention(&gpu, &mut rng, runs)?);
    results.extend(deform_im2col(&gpu, &mut rng, runs)?);
    Ok(results)
}

/// com.matteflow.DeformIm2Col's kernel (what `prepare --fp16` turns DeformConv into) on random f16 inputs, against
/// the host `im2col` on the same values: offsets in ±4 pixels (samples past every edge), modulation in [0, 2),
/// values in ±1. The kernel rounds its f32 result to f16 once: under 2e-3 (half an f16 step at 2).
fn deform_im2col(gpu: &Gpu, rng: &mut Rng, runs: usize) -> Result<Vec<CaseResult>> {
    use crate::infer::deform_im2col::{im2col, Dims, Geometry, Kernel};
    use cudarc::driver::{DevicePtr, DevicePtrMut};
    use half::f16;
    use std::ffi::c_void;
    let geo = |k: usize, s: usize, p: usize, d: usize| Geometry { kh: k, kw: k, stride: (s, s), pad: (p, p), dilation: (d, d), ones_rows: 0 };
    // (name, geometry, batch, channels, input side, modulated)
    let cases = [
        ("BiRefNet lite decoder 7×7 at 256², 64 channels, modulated", geo(7, 1, 3, 1), 1, 64, 256, true),
        ("3×3 at 64², 192 channels, batch 2, modulated", geo(3, 1, 1, 1), 2, 192, 64, true),
        ("1×1 at 32², 768 channels, modulated", geo(1, 1, 0, 1), 1, 768, 32, true),
        ("3×3 stride 2 dilation 2 at 45², 16 channels, no modulation", geo(3, 2, 2, 2), 1, 16, 45, false),
        ("3×3 at 64², 64 channels, batch 2, modulated, 8 ones rows (the bias's)", Geometry { ones_rows: 8, ..geo(3, 1, 1, 1) }, 2, 64, 64, true),
    ];
    let kern = Kernel::load(&gpu.ctx)?;
    let st = &gpu.stream;
    let mut results = Vec::new();
    for (name, g, n, c, side, modulated) in cases {
        let out_side = (side + 2 * g.pad.0 - g.dilation.0 * (g.kh - 1) - 1) / g.stride.0 + 1;
        let d = Dims { n, c, h: side, w: side, ho: out_side, wo: out_side };
        let (kk, p) = (g.taps(), out_side * out_side);
        let h16 = |v: Vec<f32>| -> Vec<f16> { v.into_iter().map(f16::from_f32).collect() };
        let x = h16(rng.f32s(n * c * side * side).iter().map(|v| v * 2.0 - 1.0).collect());
        let offset = h16(rng.f32s(n * 2 * kk * p).iter().map(|v| v * 8.0 - 4.0).collect());
        let mask = modulated.then(|| h16(rng.f32s(n * kk * p).iter().map(|v| v * 2.0).collect()));
        let f32s = |v: &[f16]| -> Vec<f32> { v.iter().map(|x| x.to_f32()).collect() };
        let t = Instant::now();
        let mut want = vec![0f32; n * g.rows(c) * p];
        im2col(g, d, &f32s(&x), &f32s(&offset), mask.as_deref().map(f32s).as_deref(), &mut want);
        let cpu_ms = t.elapsed().as_secs_f64() * 1000.0;
        let bits = |v: &[f16]| -> Vec<u16> { v.iter().map(|x| x.to_bits()).collect() };
        let d_x = st.clone_htod(&bits(&x)).map_err(|x| e("upload", x))?;
        let d_o = st.clone_htod(&bits(&offset)).map_err(|x| e("upload", x))?;
        let d_m = mask.as_deref().map(|m| st.clone_htod(&bits(m))).transpose().map_err(|x| e("upload", x))?;
        let mut d_cols: CudaSlice<u16> = st.alloc_zeros(want.len()).map_err(|x| e("alloc", x))?;
        let gpu_ms = {
            let (px, _g1) = d_x.device_ptr(st);
            let (po, _g2) = d_o.device_ptr(st);
            let pm = d_m.as_ref().map(|m| m.device_ptr(st));
            let pm = pm.as_ref().map_or(std::ptr::null(), |(p, _)| *p as *const c_void);
            let (pc, _g4) = d_cols.device_ptr_mut(st);
            let launch = || {
                // SAFETY: the buffers above, of the sizes `d` and `g` say, on this context's stream.
                unsafe { kern.launch(st.cu_stream(), g, d, px as *const c_void, po as *const c_void, pm, pc as *mut c_void) }
                    .map_err(|x| e("deformable im2col launch", x))
            };
            gpu_ms_per_launch(gpu, runs, launch)?
        };
        let got: Vec<f32> = st.clone_dtoh(&d_cols).map_err(|x| e("download", x))?.into_iter().map(|b| f16::from_bits(b).to_f32()).collect();
        results.push(CaseResult { name: format!("deformable im2col, {name}"), max_error: max_diff(&got, &want), tolerance: 2e-3, gpu_ms, cpu_ms });
    }
    Ok(results)
}

/// com.matteflow.WindowAttention's kernel (what `prepare --fp16` fuses BiRefNet's Swin attention into) on random
/// f16 inputs, against the host `attend` on the same values. The kernel adds qkv's bias in f32 and rounds the sum
/// to f16 before its GEMMs, so the reference is given that rounded sum; what differs then is the probabilities
/// rounded to f16 for P·v and the f16 output: under 5e-3 on values in ±2.5. The first case is also timed with
/// other kernel configurations (online-softmax step, blocks per SM) beside the one the operator uses.
fn window_attention(gpu: &Gpu, rng: &mut Rng, runs: usize) -> Result<Vec<CaseResult>> {
    use crate::infer::window_attention::{KernelConfig, Shape};
    // (name, heads, tokens, windows, bias (Wb, Hb), mask (Wm, Hm), qkv bias)
    type Case = (&'static str, usize, usize, usize, Option<(usize, usize)>, Option<(usize, usize)>, bool);
    let cases: [Case; 5] = [
        ("BiRefNet-L stage 1: 144 tokens, 6 heads, 484 windows, bias [1,6] + shift mask [484,1], qkv bias", 6, 144, 484, Some((1, 6)), Some((484, 1)), true),
        ("BiRefNet-L stage 3 at batch 4: 144 tokens, 24 heads, 4×36 windows, bias [1,24] + mask [36,1]", 24, 144, 144, Some((1, 24)), Some((36, 1)), true),
        ("144 tokens, 6 heads, 484 windows, one bias [484,6] (bias and mask added in memory)", 6, 144, 484, Some((484, 6)), None, true),
        ("49 tokens (Swin 7×7), 3 heads, 50 windows, one bias for all heads, no qkv bias", 3, 49, 50, Some((1, 1)), None, false),
        ("49 tokens, 3 heads, 50 windows, no bias", 3, 49, 50, None, None, false),
    ];
    let mut results = Vec::new();
    for (i, (name, heads, tokens, windows, bias, mask, with_qkv_bias)) in cases.into_iter().enumerate() {
        let sh = Shape { heads, head_dim: 32, tokens, scale: 32f32.powf(-0.5) };
        let input = AttentionInput::random(rng, sh, windows, bias, mask, with_qkv_bias);
        let t = Instant::now();
        let want = input.reference(sh, windows);
        let cpu_ms = t.elapsed().as_secs_f64() * 1000.0;
        let default = KernelConfig::for_tokens(tokens);
        let mut configs = vec![default];
        if i == 0 {
            for (chunk, min_blocks) in [(2, 1), (2, 3), (6, 1), (6, 2), (18, 1)] {
                configs.push(KernelConfig { chunk, min_blocks, ..default });
            }
        }
        for cfg in configs {
            let (got, gpu_ms) = input.run_gpu(gpu, cfg, sh, windows, runs)?;
            let label = if cfg == default { String::new() } else { format!(" [kernel chunk {} min blocks {}]", cfg.chunk, cfg.min_blocks) };
            results.push(CaseResult { name: format!("window attention, {name}{label}"), max_error: max_diff(&got, &want), tolerance: 5e-3, gpu_ms, cpu_ms });
        }
    }
    Ok(results)
}

/// `launch` once (warm-up, synchronised), then `runs` times back to back on `gpu`'s stream: the mean GPU
/// milliseconds of one launch, between CUDA events around them.
fn gpu_ms_per_launch(gpu: &Gpu, runs: usize, launch: impl Fn() -> Result<()>) -> Result<f64> {
    let st = &gpu.stream;
    launch()?;
    st.synchronize().map_err(|x| e("sync", x))?;
    let event = || gpu.ctx.new_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT)).map_err(|x| e("event", x));
    let (start, end) = (event()?, event()?);
    start.record(st).map_err(|x| e("event", x))?;
    for _ in 0..runs {
        launch()?;
    }
    end.record(st).map_err(|x| e("event", x))?;
    Ok(start.elapsed_ms(&end).map_err(|x| e("event", x))? as f64 / runs as f64)
}

/// One window-attention case's inputs, in f16 as the kernel reads them.
struct AttentionInput {
    qkv: Vec<half::f16>,
    qkv_bias: Option<Vec<half::f16>>,
    /// bias, then mask: (values, Wb, Hb)
    biases: Vec<(Vec<half::f16>, usize, usize)>,
    has_bias: bool,
}

impl AttentionInput {
    fn random(rng: &mut Rng, sh: crate::infer::window_attention::Shape, windows: usize, bias: Option<(usize, usize)>, mask: Option<(usize, usize)>, with_qkv_bias: bool) -> Self {
        use half::f16;
        let (c, s) = (sh.channels(), sh.tokens);
        let h16 = |v: Vec<f32>| -> Vec<f16> { v.into_iter().map(f16::from_f32).collect() };
        let qkv = h16(rng.f32s(windows * s * 3 * c).iter().map(|v| v * 4.0 - 2.0).collect());
        let qkv_bias = with_qkv_bias.then(|| h16(rng.f32s(3 * c).iter().map(|v| v - 0.5).collect()));
        // relative-position-like values in [−4, 0]; the mask −100 on one in five, else 0
        let mut make = |(wb, hb): (usize, usize), is_mask: bool| {
            let n = wb * hb * s * s;
            let r = rng.f32s(n);
            (h16(r.iter().map(|&x| if is_mask { if x < 0.2 { -100.0 } else { 0.0 } } else { -4.0 * x }).collect()), wb, hb)
        };
        let mut biases = Vec::new();
        biases.extend(bias.map(|b| make(b, false)));
        biases.extend(mask.map(|m| make(m, true)));
        AttentionInput { qkv, qkv_bias, biases, has_bias: bias.is_some() }
    }

    /// The host operator's output on qkv + its bias rounded to f16 (as the kernel rounds it).
    fn reference(&self, sh: crate::infer::window_attention::Shape, windows: usize) -> Vec<f32> {
        use half::f16;
        let c3 = 3 * sh.channels();
        let summed: Vec<f32> = self
            .qkv
            .iter()
            .enumerate()
            .map(|(i, v)| f16::from_f32(v.to_f32() + self.qkv_bias.as_ref().map_or(0.0, |b| b[i % c3].to_f32())).to_f32())
            .collect();
        let b32: Vec<(Vec<f32>, usize, usize)> = self.biases.iter().map(|(b, wb, hb)| (b.iter().map(|x| x.to_f32()).collect(), *wb, *hb)).collect();
        let refs: Vec<(&[f32], usize, usize)> = b32.iter().map(|(b, wb, hb)| (b.as_slice(), *wb, *hb)).collect();
        let mut want = vec![0f32; windows * sh.tokens * sh.channels()];
        crate::infer::window_attention::attend(sh, &summed, &refs, None, &mut want);
        want
    }

    /// The kernel compiled for `cfg`: its output and the mean GPU milliseconds of a launch (CUDA events).
    fn run_gpu(&self, gpu: &Gpu, cfg: crate::infer::window_attention::KernelConfig, sh: crate::infer::window_attention::Shape, windows: usize, runs: usize) -> Result<(Vec<f32>, f64)> {
        use cudarc::driver::{DevicePtr, DevicePtrMut};
        use std::ffi::c_void;
        let st = &gpu.stream;
        let kern = crate::infer::window_attention::Kernel::load(&gpu.ctx, cfg)?;
        let bits = |v: &[half::f16]| -> Vec<u16> { v.iter().map(|x| x.to_bits()).collect() };
        let d_qkv = st.clone_htod(&bits(&self.qkv)).map_err(|x| e("upload", x))?;
        let d_qb = self.qkv_bias.as_ref().map(|b| st.clone_htod(&bits(b))).transpose().map_err(|x| e("upload", x))?;
        let d_b: Vec<(CudaSlice<u16>, usize, usize)> =
            self.biases.iter().map(|(b, wb, hb)| st.clone_htod(&bits(b)).map(|d| (d, *wb, *hb))).collect::<std::result::Result<_, _>>().map_err(|x| e("upload", x))?;
        let mut d_out: CudaSlice<u16> = st.alloc_zeros(windows * sh.tokens * sh.channels()).map_err(|x| e("alloc", x))?;
        let gpu_ms = {
            let (p_qkv, _g1) = d_qkv.device_ptr(st);
            let p_qb = d_qb.as_ref().map(|b| b.device_ptr(st));
            let p_b: Vec<_> = d_b.iter().map(|(d, wb, hb)| (d.device_ptr(st), *wb, *hb)).collect();
            let arg = |k: usize| p_b.get(k).map(|((p, _), wb, hb)| (*p as *const c_void, *wb, *hb));
            let (bias, mask) = if self.has_bias { (arg(0), arg(1)) } else { (None, arg(0)) };
            let qb = p_qb.as_ref().map_or(std::ptr::null(), |(p, _)| *p as *const c_void);
            let (p_out, _g4) = d_out.device_ptr_mut(st);
            let launch = || {
                // SAFETY: the buffers above, of the sizes the shape says, on this context's stream.
                unsafe { kern.launch(st.cu_stream(), sh, windows, p_qkv as *const c_void, bias, qb, mask, p_out as *mut c_void) }
                    .map_err(|x| e("window attention launch", x))
            };
            gpu_ms_per_launch(gpu, runs, launch)?
        };
        let got = st.clone_dtoh(&d_out).map_err(|x| e("download", x))?.into_iter().map(|b| half::f16::from_bits(b).to_f32()).collect();
        Ok((got, gpu_ms))
    }
}

/// What `decode_check` saw.
pub struct DecodeCheck {
    /// The decoder elements in the pipeline and whether frames were uploaded (a software decoder).
    pub path: String,
    pub frames: usize,
    pub width: u32,
    pub height: u32,
    pub pitch: usize,
    /// How the decoder's caps say its NV12 is read (matrix, range, chroma siting).
    pub color: Option<super::nv12::YuvColor>,
    /// Frames per second from the first frame to the last (decode into CUDA memory and the two kernels).
    pub fps: f64,
    pub cases: Vec<CaseResult>,
}

/// Errors of the kernels on one decoded frame, against a host copy of its planes: the RGBA against the CPU
/// reference and against GStreamer's `videoconvert` of the same planes read with the frame's own caps (what the
/// CPU stages would see), and the tensor (`got_in`, BiRefNet's) against the CPU preprocess of the reference.
fn check_decoded(
    f: &super::gst_cuda::CudaFrame,
    info: gstreamer_video::VideoInfo,
    got_rgba: &[u8],
    got_in: &[f32],
    cpu: &mut CpuPreprocess,
    want: &mut ModelInput,
) -> Result<[f64; 3]> {
    use super::nv12::{Nv12Conversion, Nv12Planes, VIDEOCONVERT_THREADS};
    use super::nv12_check::max_levels;
    let (w, h) = (f.width as usize, f.height as usize);
    let mut host = vec![0u8; f.uv_offset + f.pitch * h.div_ceil(2)];
    // SAFETY: the mapped CUDA buffer holds at least the Y plane and the UV plane at uv_offset.
    unsafe { cudarc::driver::result::memcpy_dtoh_sync(&mut host, f.ptr) }.map_err(|x| e("download", x))?;
    let planes = Nv12Planes { data: &host, width: w, height: h, pitch: f.pitch, uv_offset: f.uv_offset };
    let reference = planes.to_rgba(&Nv12Conversion::new(f.color, f.height));
    let host_frame = super::nv12_frames::HostNv12::from_planes(&planes, info);
    let theirs = super::nv12_frames::videoconvert_rgba(&[host_frame], VIDEOCONVERT_THREADS)?;
    cpu.run(&reference, f.width, f.height, want)?;
    Ok([
        max_levels(got_rgba, &reference) as f64 / 255.0,
        max_levels(got_rgba, &theirs[0]) as f64 / 255.0,
        max_diff(got_in, &want.data),
    ])
}

/// Decodes `uri` into CUDA memory in our context (nvcodec) and checks, on up to `max_frames` real frames, that
/// the kernels read the decoder's buffers where they are: NV12 → RGBA and NV12 → BiRefNet tensor straight from
/// the device pointer, against the CPU reference run on a host copy of the same planes, and the RGBA against
/// GStreamer's `videoconvert` of that copy.
pub fn decode_check(uri: &str, max_frames: usize) -> Result<DecodeCheck> {
    use gstreamer as gst;
    use gstreamer::prelude::*;
    gst::init().map_err(|x| e("GStreamer init", x))?;
    let gpu = Gpu::open(0)?;
    let gcuda = super::gst_cuda::GstCuda::new(&gpu)?;
    let (pipeline, sink) = super::gst_cuda::decode_pipeline(&gcuda, uri, 4)?;
    pipeline.set_state(gst::State::Playing).map_err(|x| e("decode pipeline", x))?;
    let st = gpu.stream.clone();
    let m = model::builtin("birefnet-general").unwrap();
    // NV12 → RGBA against the reference and against videoconvert; the tensor against the CPU preprocess.
    let mut errs_max = [0f64; 3];
    let (mut frames, mut dims, mut t_first, mut color) = (0usize, (0u32, 0u32, 0usize), None, None);
    let mut gpu_ms = 0f64;
    let mut cpu = CpuPreprocess::new(&m);
    let mut want = ModelInput::default();
    let outcome = (|| -> Result<()> {
        while frames < max_frames {
            let Some(sample) = sink.try_pull_sample(gst::ClockTime::from_seconds(20)) else {
                if sink.is_eos() && frames > 0 {
                    return Ok(());
                }
                let bus_err = pipeline.bus().and_then(|b| b.pop_filtered(&[gst::MessageType::Error]));
                return Err(Error::Gst(match bus_err.as_ref().map(|m| m.view()) {
                    Some(gst::MessageView::Error(er)) => format!("decoding into CUDA memory: {} ({:?})", er.error(), er.debug()),
                    _ => "no frame decoded into CUDA memory within 20 s".into(),
                }));
            };
            let f = super::gst_cuda::CudaFrame::map(&sample)?;
            t_first.get_or_insert_with(Instant::now);
            let (w, h) = (f.width, f.height);
            (dims, color) = ((w, h, f.pitch), Some(f.color));
            let t = Instant::now();
            let mut d_rgba: CudaSlice<u8> = st.alloc_zeros((w * h * 4) as usize).map_err(|x| e("alloc", x))?;
            gpu.nv12_to_rgba(f.ptr, w, h, f.pitch, f.uv_offset, f.color, &mut d_rgba)?;
            let geo = geometry(&m, w, h);
            let d_in: CudaSlice<f32> = st.alloc_zeros((geo.model_w * geo.model_h * 3) as usize).map_err(|x| e("alloc", x))?;
            {
                use cudarc::driver::DevicePtr;
                let (p, _g) = d_in.device_ptr(&st);
                gpu.preprocess_ptr(f.ptr, FrameFormat::Nv12 { pitch: f.pitch, uv_offset: f.uv_offset, color: f.color }, w, h, &m, &geo, p, super::TensorElem::F32)?;
            }
            st.synchronize().map_err(|x| e("sync", x))?;
            gpu_ms += t.elapsed().as_secs_f64() * 1000.0;
            // Every 10th frame (and the first) against the CPU on a host copy of the planes.
            if frames % 10 == 0 {
                let got_rgba = st.clone_dtoh(&d_rgba).map_err(|x| e("download", x))?;
                let got_in = st.clone_dtoh(&d_in).map_err(|x| e("download", x))?;
                let caps = sample.caps().ok_or_else(|| Error::Gst("decoded sample without caps".into()))?;
                let info = gstreamer_video::VideoInfo::from_caps(caps).map_err(|x| e("caps", x))?;
                let errs = check_decoded(&f, info, &got_rgba, &got_in, &mut cpu, &mut want)?;
                for (worst, err) in errs_max.iter_mut().zip(errs) {
                    *worst = worst.max(err);
                }
            }
            frames += 1;
        }
        Ok(())
    })();
    let elapsed = t_first.map(|t| t.elapsed().as_secs_f64()).unwrap_or(0.0);
    let mut path = Vec::new();
    if let Ok(it) = pipeline.iterate_recurse().into_iter().collect::<std::result::Result<Vec<_>, _>>() {
        for el in it {
            let f = el.factory().map(|f| f.name().to_string()).unwrap_or_default();
            if f.contains("dec") && f != "uridecodebin" && f != "decodebin" || f == "cudaupload" {
                path.push(f);
            }
        }
    }
    let _ = pipeline.set_state(gst::State::Null);
    outcome?;
    let n = frames.max(1) as f64;
    Ok(DecodeCheck {
        path: path.join(" + "),
        frames,
        width: dims.0,
        height: dims.1,
        pitch: dims.2,
        color,
        fps: if elapsed > 0.0 { (frames.saturating_sub(1)) as f64 / elapsed } else { 0.0 },
        cases: vec![
            CaseResult { name: "decoded NV12 (CUDA memory) → RGBA, device pointer, vs reference".into(), max_error: errs_max[0], tolerance: 1.0 / 255.0, gpu_ms: gpu_ms / n, cpu_ms: 0.0 },
            CaseResult {
                name: "decoded NV12 (CUDA memory) → RGBA, device pointer, vs GStreamer videoconvert of the same planes".into(),
                max_error: errs_max[1],
                tolerance: 1.0 / 255.0,
                gpu_ms: gpu_ms / n,
                cpu_ms: 0.0,
            },
            CaseResult { name: "decoded NV12 (CUDA memory) → BiRefNet tensor, device pointer, vs reference".into(), max_error: errs_max[2], tolerance: 1e-5, gpu_ms: gpu_ms / n, cpu_ms: 0.0 },
        ],
    })
}

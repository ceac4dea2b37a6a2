//! The NV12 cases of `matteflow gpu-check`: the conversion kernels (`nv12_to_rgba`, `preprocess` from NV12)
//! against the CPU reference of the same math ([`super::nv12`]) on the same frames, random ones (pitches,
//! colorimetries, chroma sitings, odd sizes) and ones GStreamer made (a decoded clip, test patterns with sharp
//! colour edges; uploaded), and on the latter the reference against GStreamer's own `videoconvert`, so one
//! run shows the GPU frame is the CPU stages' frame.

use std::path::PathBuf;

use cudarc::driver::{CudaSlice, DevicePtr};
use gstreamer_video as gst_video;

use super::nv12::{Matrix, Nv12Conversion, Nv12Planes, YuvColor, VIDEOCONVERT_THREADS};
use super::nv12_frames::{videoconvert_rgba, FrameSource, HostNv12};
use super::selftest::{geometry, max_diff, time, CaseResult, Rng};
use super::{FrameFormat, Gpu, TensorElem};
use crate::error::{Error, Result};
use crate::model::{self, Manifest};
use crate::preprocess::{CpuPreprocess, ModelInput, Preprocess};

fn e(what: &str, x: impl std::fmt::Display) -> Error {
    Error::Cuda(format!("{what}: {x}"))
}

/// Greatest difference between two 8-bit images, in levels.
pub fn max_levels(a: &[u8], b: &[u8]) -> u32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| x.abs_diff(*y) as u32).max().unwrap_or(0)
}

/// The frame's planes on the device (as they are in host memory: same pitch and UV offset).
fn upload(gpu: &Gpu, f: &Nv12Planes) -> Result<CudaSlice<u8>> {
    let len = f.uv_offset + f.pitch * f.height.div_ceil(2);
    gpu.stream.clone_htod(&f.data[..len]).map_err(|x| e("upload", x))
}

/// The `nv12_to_rgba` kernel's RGBA of `f`, and its median time over `runs`.
fn device_rgba(gpu: &Gpu, f: &Nv12Planes, color: YuvColor, runs: usize) -> Result<(Vec<u8>, f64)> {
    let st = &gpu.stream;
    let d_src = upload(gpu, f)?;
    let mut d_out: CudaSlice<u8> = st.alloc_zeros(f.width * f.height * 4).map_err(|x| e("alloc", x))?;
    let (w, h) = (f.width as u32, f.height as u32);
    let gpu_ms = {
        let (ptr, _g) = d_src.device_ptr(st);
        time(runs, || {
            gpu.nv12_to_rgba(ptr, w, h, f.pitch, f.uv_offset, color, &mut d_out)?;
            st.synchronize().map_err(|x| e("sync", x))
        })?
    };
    Ok((st.clone_dtoh(&d_out).map_err(|x| e("download", x))?, gpu_ms))
}

/// `nv12_to_rgba` against the reference on one frame (≤ 1 level).
fn rgba_case(gpu: &Gpu, name: String, f: &Nv12Planes, color: YuvColor, runs: usize) -> Result<CaseResult> {
    let conv = Nv12Conversion::new(color, f.height as u32);
    let mut want = Vec::new();
    let cpu_ms = time(runs.min(3), || {
        want = f.to_rgba(&conv);
        Ok(())
    })?;
    let (got, gpu_ms) = device_rgba(gpu, f, color, runs)?;
    Ok(CaseResult { name, max_error: max_levels(&got, &want) as f64 / 255.0, tolerance: 1.0 / 255.0, gpu_ms, cpu_ms })
}

/// The fused preprocess from NV12 against the CPU preprocess of the reference's RGBA (≤ 1e-5).
fn preprocess_case(gpu: &Gpu, name: String, f: &Nv12Planes, color: YuvColor, m: &Manifest, runs: usize) -> Result<CaseResult> {
    let st = &gpu.stream;
    let (w, h) = (f.width as u32, f.height as u32);
    let conv = Nv12Conversion::new(color, h);
    let mut cpu = CpuPreprocess::new(m);
    let mut want = ModelInput::default();
    let cpu_ms = time(runs.min(3), || cpu.run(&f.to_rgba(&conv), w, h, &mut want))?;
    let geo = geometry(m, w, h);
    let d_src = upload(gpu, f)?;
    let d_out: CudaSlice<f32> = st.alloc_zeros(want.data.len()).map_err(|x| e("alloc", x))?;
    let fmt = FrameFormat::Nv12 { pitch: f.pitch, uv_offset: f.uv_offset, color };
    let gpu_ms = {
        let (src, _a) = d_src.device_ptr(st);
        let (dst, _b) = d_out.device_ptr(st);
        time(runs, || {
            gpu.preprocess_ptr(src, fmt, w, h, m, &geo, dst, TensorElem::F32)?;
            st.synchronize().map_err(|x| e("sync", x))
        })?
    };
    let got = st.clone_dtoh(&d_out).map_err(|x| e("download", x))?;
    Ok(CaseResult { name, max_error: max_diff(&got, &want.data), tolerance: 1e-5, gpu_ms, cpu_ms })
}

/// Random planes of a frame `h` rows high with rows `pitch` bytes apart (padding random too).
fn random_frame(rng: &mut Rng, h: usize, pitch: usize) -> Vec<u8> {
    rng.u8s(pitch * h + pitch * h.div_ceil(2))
}

fn color(matrix: Matrix, full_range: bool, h_cosited: bool, v_cosited: bool) -> YuvColor {
    YuvColor { matrix, full_range, h_cosited, v_cosited }
}

/// Random frames: every siting, both ranges, three matrices, NVDEC-like pitches, odd sizes, and the 1080p
/// frame whose lower half `videoconvert` does not interpolate vertically (its second thread's stripe).
fn random_cases(gpu: &Gpu, runs: usize, rng: &mut Rng) -> Result<Vec<CaseResult>> {
    let mut results = Vec::new();
    let frames = [
        (1920usize, 1080usize, 2048usize, color(Matrix::Bt709, false, true, false), "BT.709 limited, mpeg2 siting"),
        (1280, 720, 1280, color(Matrix::Bt601, true, false, false), "BT.601 full, jpeg siting"),
        (333, 201, 512, color(Matrix::Bt2020, false, true, true), "BT.2020 limited, cosited"),
        (97, 55, 128, color(Matrix::Bt601, false, false, false), "BT.601 limited, no siting"),
    ];
    for (w, h, pitch, c, label) in frames {
        let data = random_frame(rng, h, pitch);
        let f = Nv12Planes { data: &data, width: w, height: h, pitch, uv_offset: pitch * h };
        results.push(rgba_case(gpu, format!("NV12 → RGBA {w}x{h} (pitch {pitch}, {label}) vs reference"), &f, c, runs)?);
    }
    for (w, h, name, c) in [(1920usize, 1080usize, "birefnet-general", YuvColor::BT709), (333, 201, "selfie", color(Matrix::Bt601, true, true, false))] {
        // Rows 4-byte aligned as GStreamer lays NV12 out: an odd width's UV row holds ⌈w/2⌉ pairs, w + 1 bytes.
        let pitch = w.next_multiple_of(4);
        let data = random_frame(rng, h, pitch);
        let f = Nv12Planes { data: &data, width: w, height: h, pitch, uv_offset: pitch * h };
        let m = model::builtin(name).unwrap();
        let (mw, mh) = m.model_size_for(w as u32, h as u32);
        let label = format!("preprocess NV12 {w}x{h} → {name} {mw}x{mh} vs reference");
        results.push(preprocess_case(gpu, label, &f, c, &m, runs)?);
    }
    Ok(results)
}

/// A shipped clip (assets/media), found next to the sources or under the working directory.
pub fn shipped_clip(name: &str) -> Option<PathBuf> {
    [PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from(".")].into_iter().map(|d| d.join("assets/media").join(name)).find(|p| p.is_file())
}

/// Frame sources with sharp colour edges: a decoded clip (decoded to system memory and converted to NV12 there),
/// at its size and scaled to 1080p, and two test patterns at odd sizes.
pub fn gst_sources() -> Vec<FrameSource> {
    let mut v = Vec::new();
    if let Some(clip) = shipped_clip("bikes.mp4") {
        let launch = format!("filesrc location=\"{}\" ! decodebin", clip.display());
        v.push(FrameSource::new("bikes.mp4 decoded, 640x272", &launch, None));
        v.push(FrameSource::new("bikes.mp4 decoded, scaled to 1920x1080", &launch, Some((1920, 1080))));
    }
    // (A runtime bundle may lack the test-pattern plugin: those sources are then left out.)
    if gstreamer::init().is_ok() && gstreamer::ElementFactory::find("videotestsrc").is_some() {
        v.push(FrameSource::new("videotestsrc smpte 333x201", "videotestsrc pattern=smpte", Some((333, 201))));
        v.push(FrameSource::new("videotestsrc ball 97x55", "videotestsrc pattern=ball", Some((97, 55))));
    }
    v
}

/// Caps labels the frames are read with: both matrices of SD/HD video, both ranges, the four sitings, BT.2020,
/// and no colorimetry at all with MPEG-2 siting (a software H.264 decoder's caps: GStreamer's defaults for the
/// frame size apply, siting included).
pub fn labels() -> Vec<(gst_video::VideoColorimetry, gst_video::VideoChromaSite)> {
    use gst_video::{VideoChromaSite as Site, VideoColorMatrix as M, VideoColorPrimaries as P, VideoColorRange as R, VideoTransferFunction as T};
    let c = |r, m| gst_video::VideoColorimetry::new(r, m, T::Bt709, P::Bt709);
    vec![
        (gst_video::VideoColorimetry::new(R::Unknown, M::Unknown, T::Unknown, P::Unknown), Site::MPEG2),
        (c(R::Range16_235, M::Bt601), Site::MPEG2),
        (c(R::Range16_235, M::Bt709), Site::empty()),
        (c(R::Range0_255, M::Bt601), Site::JPEG),
        (c(R::Range0_255, M::Bt709), Site::COSITED),
        (c(R::Range16_235, M::Bt2020), Site::MPEG2),
    ]
}

/// Frames GStreamer made, uploaded: the kernels against the reference and the reference against GStreamer's
/// `videoconvert` (as the CPU stages run it), one row each per source over all its frames and labels.
fn gst_frame_cases(gpu: &Gpu, rng: &mut Rng) -> Result<Vec<CaseResult>> {
    let mut results = Vec::new();
    let birefnet = model::builtin("birefnet-general").unwrap();
    for source in gst_sources() {
        let (label, frames) = (&source.label, source.frames(2)?);
        let (mut kernel, mut vc, mut pre) = (Vec::new(), Vec::new(), Vec::new());
        for (colorimetry, site) in labels() {
            let relabelled = frames.iter().map(|f| f.relabel(colorimetry, site)).collect::<Result<Vec<HostNv12>>>()?;
            let gst_rgba = videoconvert_rgba(&relabelled, VIDEOCONVERT_THREADS)?;
            for (f, theirs) in relabelled.iter().zip(&gst_rgba) {
                let (planes, c) = (f.planes(), f.color());
                let r = rgba_case(gpu, String::new(), &planes, c, 1)?;
                vc.push(max_levels(&planes.to_rgba(&Nv12Conversion::new(c, planes.height as u32)), theirs) as f64 / 255.0);
                kernel.push(r);
            }
            // The tensor on one frame per label (at random, to vary which).
            let f = &relabelled[(rng.u8s(1)[0] as usize) % relabelled.len()];
            pre.push(preprocess_case(gpu, String::new(), &f.planes(), f.color(), &birefnet, 1)?);
        }
        let n = format!("{} frames × {} labels", frames.len(), labels().len());
        results.push(merge(format!("{label}: NV12 → RGBA kernel vs reference ({n})"), &kernel));
        results.push(merge(format!("{label}: NV12 → BiRefNet tensor kernel vs reference"), &pre));
        let worst = vc.iter().copied().fold(0.0, f64::max);
        results.push(CaseResult { name: format!("{label}: reference vs GStreamer videoconvert ({n})"), max_error: worst, tolerance: 1.0 / 255.0, gpu_ms: 0.0, cpu_ms: 0.0 });
    }
    Ok(results)
}

/// One row for several runs of a case: the greatest error, the median times.
fn merge(name: String, cases: &[CaseResult]) -> CaseResult {
    let median = |f: fn(&CaseResult) -> f64| {
        let mut v: Vec<f64> = cases.iter().map(f).collect();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    CaseResult {
        name,
        max_error: cases.iter().map(|c| c.max_error).fold(0.0, f64::max),
        tolerance: cases.first().map_or(0.0, |c| c.tolerance),
        gpu_ms: median(|c| c.gpu_ms),
        cpu_ms: median(|c| c.cpu_ms),
    }
}

/// Every NV12 case: random frames, then GStreamer's.
pub(crate) fn cases(gpu: &Gpu, runs: usize, rng: &mut Rng) -> Result<Vec<CaseResult>> {
    let mut results = random_cases(gpu, runs, rng)?;
    results.extend(gst_frame_cases(gpu, rng)?);
    Ok(results)
}

/// The clip `gpu-check` decodes with nvcodec when asked for no other: the shipped bikes.mp4, where GStreamer
/// has `nvh264dec`.
pub fn default_decode_clip() -> Option<PathBuf> {
    gstreamer::init().ok()?;
    gstreamer::ElementFactory::find("nvh264dec")?;
    shipped_clip("bikes.mp4")
}

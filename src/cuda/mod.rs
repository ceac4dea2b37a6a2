//! The CUDA side of the stages: kernels (kernels.cu, compiled at run time by NVRTC) for preprocess (RGBA or
//! NV12 → tensor, fused), mask upsampling, compositing and motion-aware temporal blending. Every entry point
//! checks that the driver and NVRTC can be loaded first, so machines without a GPU get an error value (and
//! the CPU path), never a panic.

pub mod bench;
pub mod composite;
pub mod gst_cuda;
pub mod i420;
pub mod nv12;
pub mod nv12_check;
pub mod nv12_frames;
pub mod nvdec;
pub mod selftest;
pub mod stages;

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, LaunchConfig, PushKernelArg};

use crate::error::{Error, Result};
use crate::model::{ColorOrder, Interpolation, Layout, Manifest};
use crate::preprocess::Geometry;

/// The kernel source, as compiled.
pub const KERNELS: &str = include_str!("kernels.cu");
/// com.matteflow.WindowAttention's kernel (src/infer/onnx/window_attention.rs launches it on ONNX Runtime's stream).
pub const ATTENTION: &str = include_str!("attention.cu");
/// com.matteflow.DeformIm2Col's kernel (src/infer/onnx/deform_im2col.rs launches it on ONNX Runtime's stream).
pub const DEFORM: &str = include_str!("deform.cu");
pub const KERNEL_NAMES: &[&str] = &["preprocess", "nv12_to_rgba", "upsample_mask", "composite", "motion_diff", "motion_blend", "resample_rgba", "mask_prob", "mask_threshold", "rgba_to_i420"];

fn err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Cuda(format!("{what}: {e}"))
}

/// Whether NVRTC can be loaded (no GPU needed).
pub fn nvrtc_present() -> bool {
    // SAFETY: only probes whether the shared library can be opened.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Whether a CUDA driver can be loaded.
pub fn driver_present() -> bool {
    // SAFETY: as above.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Compiles the kernels to PTX for `arch` (e.g. "compute_90"). Works without a GPU.
pub fn compile(arch: &'static str) -> Result<cudarc::nvrtc::Ptx> {
    compile_source(KERNELS, "matteflow_kernels.cu", arch, &[])
}

/// Compiles com.matteflow.WindowAttention's kernel (`ATTENTION`) to PTX for `arch` (compute_80 or later: it
/// uses the tensor cores' mma.sync), with its compile-time sizes as `-D` definitions (e.g. "WA_TILES=18";
/// none: the source's defaults). Works without a GPU.
pub fn compile_attention(arch: &'static str, defines: &[String]) -> Result<cudarc::nvrtc::Ptx> {
    compile_source(ATTENTION, "attention.cu", arch, defines)
}

/// Compiles com.matteflow.DeformIm2Col's kernel (`DEFORM`) to PTX for `arch`. Works without a GPU.
pub fn compile_deform(arch: &'static str) -> Result<cudarc::nvrtc::Ptx> {
    compile_source(DEFORM, "deform.cu", arch, &[])
}

fn compile_source(src: &str, name: &str, arch: &'static str, defines: &[String]) -> Result<cudarc::nvrtc::Ptx> {
    if !nvrtc_present() {
        return Err(Error::Cuda(
            "NVRTC (libnvrtc.so.13) not found: install the CUDA 13 toolkit or `pip install nvidia-cuda-nvrtc==13.0.88` \
             and add its lib folder to LD_LIBRARY_PATH"
                .into(),
        ));
    }
    let options = defines.iter().map(|d| format!("-D{d}")).collect();
    let opts = cudarc::nvrtc::CompileOptions { arch: Some(arch), name: Some(name.into()), options, ..Default::default() };
    cudarc::nvrtc::compile_ptx_with_opts(src, opts).map_err(|e| err(&format!("{name} compilation"), e))
}

/// A GPU with the kernels loaded (cloning shares the stream: the clone's launches are ordered with the original's).
#[derive(Clone)]
pub struct Gpu {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    _module: Arc<CudaModule>,
    f_pre: CudaFunction,
    f_nv12: CudaFunction,
    f_up: CudaFunction,
    f_comp: CudaFunction,
    f_mdiff: CudaFunction,
    f_mblend: CudaFunction,
    f_resample: CudaFunction,
    f_prob: CudaFunction,
    f_thr: CudaFunction,
    f_i420: CudaFunction,
}

fn grid(n: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: ((n as u32).div_ceil(256), 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

/// The fixed-point precision the CPU resizer (fast_image_resize 5, u8 pixels) uses for one axis of a box
/// (`filter` 0) or bilinear (1) convolution from `n` to `out` samples: the most fraction bits that keep the
/// largest normalised weight, doubled, inside an i16. The `resample_rgba` kernel needs it to round as the CPU
/// does. An axis whose size does not change is not convolved (1 is returned, unused).
pub fn resample_precision(n: u32, out: u32, filter: i32) -> i32 {
    if n == out || n == 0 || out == 0 {
        return 1;
    }
    let tap = |t: f64| -> f64 {
        if filter == 0 {
            f64::from(u8::from(t > -0.5 && t <= 0.5))
        } else {
            (1.0 - t.abs()).max(0.0)
        }
    };
    let scale = n as f64 / out as f64;
    let f = scale.max(1.0);
    let radius = if filter == 0 { 0.5 } else { 1.0 } * f;
    let rfs = 1.0 / f;
    let mut max_w = 0.0f64;
    for o in 0..out {
        let c = (o as f64 + 0.5) * scale;
        let (lo, hi) = (((c - radius).floor().max(0.0)) as u32, ((c + radius).ceil().min(n as f64)) as u32);
        let w = |x: u32| tap((x as f64 - (c - 0.5)) * rfs);
        let sum: f64 = (lo..hi).map(w).sum();
        if sum != 0.0 {
            max_w = (lo..hi).map(|x| w(x) / sum).fold(max_w, f64::max);
        }
    }
    let mut precision = 0;
    for p in 0..22 {
        precision = p;
        if (max_w * (1i64 << (p + 1)) as f64).round() as i64 >= 1 << 15 {
            break;
        }
    }
    precision
}

/// Source frame layout on the device.
#[derive(Debug, Clone, Copy)]
pub enum FrameFormat {
    /// RGBA or RGBx, 4 bytes per pixel, rows of `pitch` bytes.
    Rgba { pitch: usize },
    /// BGRA or BGRx (what many capture devices and screen grabbers give), rows of `pitch` bytes.
    Bgrx { pitch: usize },
    /// NV12 with Y rows of `pitch` bytes, the UV plane at `uv_offset`, read as `color` says (from the caps) and
    /// as GStreamer's `videoconvert` reads it (see [`nv12`]).
    Nv12 { pitch: usize, uv_offset: usize, color: nv12::YuvColor },
}

/// Element type of a model tensor on the device (the preprocess kernel's output, the upsample kernel's input).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TensorElem {
    #[default]
    F32,
    /// IEEE half precision (models exported with fp16 inputs/outputs); values are the f32 results rounded to
    /// nearest.
    F16,
}

impl TensorElem {
    pub fn size(self) -> usize {
        match self {
            TensorElem::F32 => 4,
            TensorElem::F16 => 2,
        }
    }
}

/// The virtual architecture NVRTC compiles for on `ctx`'s device ("compute_90" on Hopper).
pub(crate) fn arch_of(ctx: &CudaContext) -> Result<&'static str> {
    use cudarc::driver::sys::CUdevice_attribute::*;
    let (major, minor) = (
        ctx.attribute(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR).map_err(|e| err("query", e))?,
        ctx.attribute(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR).map_err(|e| err("query", e))?,
    );
    // (a few bytes per device opened; cudarc's CompileOptions takes a &'static str)
    Ok(Box::leak(format!("compute_{major}{minor}").into_boxed_str()))
}

impl Gpu {
    /// Opens device `ordinal`, compiles and loads the kernels. Errors (never panics) without a GPU.
    pub fn open(ordinal: usize) -> Result<Gpu> {
        if !driver_present() {
            return Err(Error::Cuda("no CUDA driver (libcuda.so) on this machine".into()));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| err("device open", e))?;
        let ptx = compile(arch_of(&ctx)?)?;
        let module = ctx.load_module(ptx).map_err(|e| err("module load", e))?;
        let f = |n: &str| module.load_function(n).map_err(|e| err("function load", e));
        Ok(Gpu {
            stream: ctx.default_stream(),
            f_pre: f("preprocess")?,
            f_nv12: f("nv12_to_rgba")?,
            f_up: f("upsample_mask")?,
            f_comp: f("composite")?,
            f_mdiff: f("motion_diff")?,
            f_mblend: f("motion_blend")?,
            f_resample: f("resample_rgba")?,
            f_prob: f("mask_prob")?,
            f_thr: f("mask_threshold")?,
            f_i420: f("rgba_to_i420")?,
            _module: module,
            ctx,
        })
    }

    /// Fused preprocess: device frame → device tensor laid out as the manifest says.
    #[allow(clippy::too_many_arguments)]
    pub fn preprocess(
        &self,
        frame: &CudaSlice<u8>,
        format: FrameFormat,
        w: u32,
        h: u32,
        m: &Manifest,
        geo: &Geometry,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        use cudarc::driver::DevicePtr;
        let (src, _s) = frame.device_ptr(&self.stream);
        let (dst, _d) = out.device_ptr(&self.stream);
        self.preprocess_ptr(src, format, w, h, m, geo, dst, TensorElem::F32)
    }

    /// As `preprocess`, between raw device pointers: the frame (e.g. a GStreamer CUDA memory buffer the decoder
    /// filled, alive until the stream has run the kernel) and the tensor (e.g. ONNX Runtime's bound input, or one
    /// frame's slice of a batch tensor, holding model_w · model_h · 3 values of `elem`).
    #[allow(clippy::too_many_arguments)]
    pub fn preprocess_ptr(
        &self,
        frame: u64,
        format: FrameFormat,
        w: u32,
        h: u32,
        m: &Manifest,
        geo: &Geometry,
        out: u64,
        elem: TensorElem,
    ) -> Result<()> {
        let i = &m.input;
        let (fmt, pitch, uv, nv) = match format {
            // (The NV12 parameters are not read for packed RGB.)
            FrameFormat::Rgba { pitch } => (0i32, pitch as i32, 0i32, nv12::Nv12Conversion::default()),
            FrameFormat::Bgrx { pitch } => (2, pitch as i32, 0, nv12::Nv12Conversion::default()),
            FrameFormat::Nv12 { pitch, uv_offset, color } => (1, pitch as i32, uv_offset as i32, nv12::Nv12Conversion::new(color, h)),
        };
        let mul: [f32; 3] = std::array::from_fn(|c| i.scale / i.std[c]);
        let add: [f32; 3] = std::array::from_fn(|c| -i.mean[c] / i.std[c]);
        let (ww, hh) = (w as i32, h as i32);
        let (mw, mh) = (geo.model_w as i32, geo.model_h as i32);
        let (cx, cy, cw, ch) = (geo.content_x as i32, geo.content_y as i32, geo.content_w as i32, geo.content_h as i32);
        let aa = (i.interpolation == Interpolation::Antialias) as i32;
        let nchw = (i.layout == Layout::Nchw) as i32;
        let bgr = (i.color == ColorOrder::Bgr) as i32;
        let f16 = (elem == TensorElem::F16) as i32;
        let mut b = self.stream.launch_builder(&self.f_pre);
        b.arg(&frame).arg(&fmt).arg(&ww).arg(&hh).arg(&pitch).arg(&uv).arg(&nv).arg(&out).arg(&f16);
        b.arg(&mw).arg(&mh).arg(&cx).arg(&cy).arg(&cw).arg(&ch).arg(&aa).arg(&nchw).arg(&bgr);
        b.arg(&mul[0]).arg(&mul[1]).arg(&mul[2]).arg(&add[0]).arg(&add[1]).arg(&add[2]);
        // SAFETY: argument list matches the kernel's signature; buffers are sized by the caller.
        unsafe { b.launch(grid((mw * mh) as usize)) }.map_err(|e| err("preprocess launch", e))?;
        Ok(())
    }

    /// NV12 frame at device address `src` (Y rows of `pitch` bytes, UV plane at `uv_offset`, values as `color`
    /// says) → packed RGBA, as GStreamer's `videoconvert` converts it (see [`nv12`]).
    #[allow(clippy::too_many_arguments)]
    pub fn nv12_to_rgba(&self, src: u64, w: u32, h: u32, pitch: usize, uv_offset: usize, color: nv12::YuvColor, out: &mut CudaSlice<u8>) -> Result<()> {
        let (ww, hh, p, uv) = (w as i32, h as i32, pitch as i32, uv_offset as i32);
        let nv = nv12::Nv12Conversion::new(color, h);
        let mut b = self.stream.launch_builder(&self.f_nv12);
        b.arg(&src).arg(&ww).arg(&hh).arg(&p).arg(&uv).arg(&nv).arg(out);
        // SAFETY: argument list matches the kernel; `src` holds an NV12 frame of this geometry, `out` w·h·4 bytes.
        unsafe { b.launch(grid((w * h) as usize)) }.map_err(|e| err("nv12_to_rgba launch", e))?;
        Ok(())
    }

    /// This GPU's kernels launched on `stream` instead (e.g. a download thread's own stream).
    pub fn on_stream(&self, stream: Arc<CudaStream>) -> Gpu {
        Gpu { stream, ..self.clone() }
    }

    /// Packed RGBA `src` (w × h, both even) → one I420 frame in `out` as `videoconvert` makes it for an encoder
    /// (see [`i420`]; `out` holds the layout's size).
    pub fn rgba_to_i420(&self, src: &CudaSlice<u8>, w: u32, h: u32, conv: &i420::I420Conversion, out: &mut CudaSlice<u8>) -> Result<()> {
        let (ww, hh) = (w as i32, h as i32);
        let mut b = self.stream.launch_builder(&self.f_i420);
        b.arg(src).arg(&ww).arg(&hh).arg(conv).arg(out);
        // SAFETY: argument list matches the kernel; `src` holds w·h·4 bytes, `out` the I420 layout `conv` describes.
        unsafe { b.launch(grid((w / 2 * (h / 2)) as usize)) }.map_err(|e| err("rgba_to_i420 launch", e))?;
        Ok(())
    }

    /// Mask (crop box in mask pixels) → frame-sized alpha.
    #[allow(clippy::too_many_arguments)]
    pub fn upsample_mask(
        &self,
        mask: &CudaSlice<f32>,
        mw: u32,
        mh: u32,
        crop: (f32, f32, f32, f32),
        alpha: &mut CudaSlice<u8>,
        w: u32,
        h: u32,
    ) -> Result<()> {
        use cudarc::driver::DevicePtr;
        let (ptr, _sync) = mask.device_ptr(&self.stream);
        self.upsample_mask_raw(ptr, TensorElem::F32, mw, mh, crop, alpha, w, h, false)
    }

    /// As `upsample_mask`, from a raw device pointer (e.g. ONNX Runtime's output buffer) to mw·mh values of
    /// `elem`, optionally applying the sigmoid.
    #[allow(clippy::too_many_arguments)]
    pub fn upsample_mask_raw(
        &self,
        mask: u64,
        elem: TensorElem,
        mw: u32,
        mh: u32,
        crop: (f32, f32, f32, f32),
        alpha: &mut CudaSlice<u8>,
        w: u32,
        h: u32,
        sigmoid: bool,
    ) -> Result<()> {
        let (mw, mh, w, h) = (mw as i32, mh as i32, w as i32, h as i32);
        let sig = sigmoid as i32;
        let f16 = (elem == TensorElem::F16) as i32;
        let mut b = self.stream.launch_builder(&self.f_up);
        b.arg(&mask).arg(&f16).arg(&mw).arg(&mh).arg(&crop.0).arg(&crop.1).arg(&crop.2).arg(&crop.3).arg(alpha).arg(&w).arg(&h).arg(&sig);
        // SAFETY: as above.
        unsafe { b.launch(grid((w * h) as usize)) }.map_err(|e| err("upsample launch", e))?;
        Ok(())
    }

    /// kind 0 alpha, 1 composite over `bg` (or `colour`), 2 mask; in place on the RGBA frame.
    pub fn composite(
        &self,
        frame: &mut CudaSlice<u8>,
        alpha: &CudaSlice<u8>,
        bg: Option<&CudaSlice<u8>>,
        n: usize,
        kind: i32,
        colour: [u8; 3],
    ) -> Result<()> {
        let ni = n as i32;
        let (r, g, bl) = (colour[0] as i32, colour[1] as i32, colour[2] as i32);
        let null: u64 = 0;
        let mut b = self.stream.launch_builder(&self.f_comp);
        b.arg(frame).arg(alpha);
        match bg {
            Some(s) => b.arg(s),
            None => b.arg(&null),
        };
        b.arg(&ni).arg(&kind).arg(&r).arg(&g).arg(&bl);
        // SAFETY: as above; a null background pointer is handled in the kernel.
        unsafe { b.launch(grid(n)) }.map_err(|e| err("composite launch", e))?;
        Ok(())
    }

    /// RGBA `src` (sw × sh) → `dst` (dw × dh) with the CPU resizer's box (`filter` 0) or bilinear (1)
    /// convolution, bit for bit (see `resample_rgba` in kernels.cu).
    #[allow(clippy::too_many_arguments)]
    pub fn resample_rgba(&self, src: &CudaSlice<u8>, sw: u32, sh: u32, dst: &mut CudaSlice<u8>, dw: u32, dh: u32, filter: i32) -> Result<()> {
        if src.len() < (sw * sh * 4) as usize || dst.len() < (dw * dh * 4) as usize {
            return Err(Error::Cuda(format!("resample: buffers of {} and {} bytes for {sw}x{sh} → {dw}x{dh} RGBA", src.len(), dst.len())));
        }
        let (px, py) = (resample_precision(sw, dw, filter), resample_precision(sh, dh, filter));
        let (a, b2, c, d) = (sw as i32, sh as i32, dw as i32, dh as i32);
        let mut b = self.stream.launch_builder(&self.f_resample);
        b.arg(src).arg(&a).arg(&b2).arg(&mut *dst).arg(&c).arg(&d).arg(&filter).arg(&px).arg(&py);
        // SAFETY: argument list matches the kernel; sizes checked above.
        unsafe { b.launch(grid((dw * dh) as usize)) }.map_err(|e| err("resample launch", e))?;
        Ok(())
    }

    /// The blurred background of `frame` (RGBA w × h) into `out`, as `Background::Blur` makes it on the CPU: a box
    /// filter down by f = max(radius / 2, 1) into `small` (resized as needed), then bilinear back up.
    pub fn blur_background(&self, frame: &CudaSlice<u8>, w: u32, h: u32, radius: u32, small: &mut Option<CudaSlice<u8>>, out: &mut CudaSlice<u8>) -> Result<()> {
        let f = (radius / 2).max(1);
        let (sw, sh) = ((w / f).max(1), (h / f).max(1));
        let len = (sw * sh * 4) as usize;
        if small.as_ref().is_none_or(|s| s.len() != len) {
            *small = Some(self.stream.alloc_zeros::<u8>(len).map_err(|e| err("alloc", e))?);
        }
        let s = small.as_mut().unwrap();
        self.resample_rgba(frame, w, h, s, sw, sh, 0)?;
        self.resample_rgba(s, sw, sh, out, w, h, 1)
    }

    /// Motion-aware temporal blend of `mask` with `prev_mask` (both mw × mh, the model's size), using the
    /// change between the model inputs `cur` and `prev`. `scratch` holds mw·mh floats.
    #[allow(clippy::too_many_arguments)]
    pub fn temporal_blend(
        &self,
        cur: &CudaSlice<f32>,
        prev: &CudaSlice<f32>,
        nchw: bool,
        std_over_scale: [f32; 3],
        smooth: f32,
        threshold: f32,
        prev_mask: &CudaSlice<f32>,
        mask: &mut CudaSlice<f32>,
        scratch: &mut CudaSlice<f32>,
        mw: u32,
        mh: u32,
    ) -> Result<()> {
        use cudarc::driver::DevicePtr;
        let (c, _g1) = cur.device_ptr(&self.stream);
        let (p, _g2) = prev.device_ptr(&self.stream);
        self.temporal_blend_raw(c, p, TensorElem::F32, nchw, std_over_scale, smooth, threshold, prev_mask, mask, scratch, mw, mh)
    }

    /// As `temporal_blend`, with the model inputs at raw device addresses (e.g. ONNX Runtime's bound input) of
    /// element type `elem`.
    #[allow(clippy::too_many_arguments)]
    pub fn temporal_blend_raw(
        &self,
        cur: u64,
        prev: u64,
        elem: TensorElem,
        nchw: bool,
        std_over_scale: [f32; 3],
        smooth: f32,
        threshold: f32,
        prev_mask: &CudaSlice<f32>,
        mask: &mut CudaSlice<f32>,
        scratch: &mut CudaSlice<f32>,
        mw: u32,
        mh: u32,
    ) -> Result<()> {
        let (w, h, n) = (mw as i32, mh as i32, (mw * mh) as usize);
        if mask.len() < n || prev_mask.len() < n || scratch.len() < n {
            return Err(Error::Cuda(format!("temporal blend: buffers smaller than {mw}x{mh}")));
        }
        let nchw = nchw as i32;
        let f16 = (elem == TensorElem::F16) as i32;
        let thr = threshold.max(1e-4);
        let mut b = self.stream.launch_builder(&self.f_mdiff);
        b.arg(&cur).arg(&prev).arg(&f16).arg(&w).arg(&h).arg(&nchw).arg(&std_over_scale[0]).arg(&std_over_scale[1]).arg(&std_over_scale[2]).arg(&mut *scratch);
        // SAFETY: as above; `cur` and `prev` hold mw·mh·3 values of `elem`.
        unsafe { b.launch(grid(n)) }.map_err(|e| err("motion launch", e))?;
        let mut b = self.stream.launch_builder(&self.f_mblend);
        b.arg(&*scratch).arg(&w).arg(&h).arg(&smooth).arg(&thr).arg(prev_mask).arg(mask);
        // SAFETY: as above.
        unsafe { b.launch(grid(n)) }.map_err(|e| err("blend launch", e))?;
        Ok(())
    }

    /// The model's output (`n` values of `elem` at `mask`, logits when `sigmoid`) → probabilities in `out`,
    /// clamped to [0, 1], as the CPU reads them.
    pub fn mask_prob(&self, mask: u64, elem: TensorElem, sigmoid: bool, n: usize, out: &mut CudaSlice<f32>) -> Result<()> {
        if out.len() < n {
            return Err(Error::Cuda(format!("mask_prob: {} floats for {n} values", out.len())));
        }
        let (f16, sig, ni) = ((elem == TensorElem::F16) as i32, sigmoid as i32, n as i32);
        let mut b = self.stream.launch_builder(&self.f_prob);
        b.arg(&mask).arg(&f16).arg(&sig).arg(&ni).arg(out);
        // SAFETY: `mask` holds n values of `elem`; `out` checked above.
        unsafe { b.launch(grid(n)) }.map_err(|e| err("mask_prob launch", e))?;
        Ok(())
    }

    /// Threshold remap of the first `n` values of `m` in place: (v − lo) / (hi − lo), clamped to [0, 1].
    pub fn mask_threshold(&self, m: &mut CudaSlice<f32>, n: usize, lo: f32, hi: f32) -> Result<()> {
        let (ni, span) = (n.min(m.len()) as i32, (hi - lo).max(1e-6));
        let mut b = self.stream.launch_builder(&self.f_thr);
        b.arg(m).arg(&ni).arg(&lo).arg(&span);
        // SAFETY: n is bounded by the buffer's length.
        unsafe { b.launch(grid(ni as usize)) }.map_err(|e| err("mask_threshold launch", e))?;
        Ok(())
    }
}

impl Gpu {
    /// The same kernels on a stream of their own, for a second thread (the compositing thread of the budgeted
    /// scheduler, which runs beside the model thread). Buffers cross between streams safely: cudarc records each
    /// buffer's last write as an event and a read on another stream waits for it.
    pub fn on_new_stream(&self) -> Result<Gpu> {
        Ok(Gpu { stream: self.ctx.new_stream().map_err(|e| err("stream", e))?, ..self.clone() })
    }
}

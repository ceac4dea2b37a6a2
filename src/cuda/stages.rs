//! The GPU frame path (`--cuda-stages`): upload the decoded frame once, then preprocess (fused kernel) →
//! ONNX Runtime with IO binding (input and output stay in device memory) → mask upsample (with the sigmoid) →
//! composite, all on the GPU; one download of the finished frame for the encoder. With nvcodec, the frame
//! arrives already in CUDA memory as NV12 (`process_nv12`, see gst_cuda.rs) and there is no upload at all.

use std::time::{Duration, Instant};

use cudarc::driver::CudaSlice;

use super::{FrameFormat, Gpu};
use crate::config::{BackgroundSpec, OutputKind};
use crate::error::{Error, Result};
use crate::infer::{DeviceIo, OnnxSegmenter};
use crate::model::{Manifest, ResizeMode};
use crate::preprocess::Geometry;

pub struct GpuStages {
    gpu: Gpu,
    manifest: Manifest,
    device_id: i32,
    kind: i32,
    colour: [u8; 3],
    io: DeviceIo,
    frame: Option<CudaSlice<u8>>,
    alpha: Option<CudaSlice<u8>>,
}

/// Time spent per stage for one frame.
#[derive(Debug, Default, Clone, Copy)]
pub struct GpuTimes {
    pub preprocess: Duration,
    pub infer: Duration,
    pub post_composite: Duration,
}

fn e(what: &str, x: impl std::fmt::Display) -> Error {
    Error::Cuda(format!("{what}: {x}"))
}

impl GpuStages {
    /// What the GPU path supports; anything else keeps the CPU stages (the caller says so).
    pub fn supports(kind: OutputKind, bg: &BackgroundSpec, m: &Manifest) -> std::result::Result<(), String> {
        if kind == OutputKind::SideBySide {
            return Err("side-by-side output".into());
        }
        if !matches!(bg, BackgroundSpec::Transparent | BackgroundSpec::Colour(_)) {
            return Err("image, video and blur backgrounds".into());
        }
        if !m.recurrent.is_empty() {
            return Err("recurrent models".into());
        }
        Ok(())
    }

    /// Opens the GPU and compiles the kernels. Call this before the GStreamer pipeline starts: initialising
    /// CUDA while GStreamer's nvcodec decoder initialises its own context was seen to hang (H200, 1.22).
    pub fn open_gpu(device_id: usize) -> Result<Gpu> {
        Gpu::open(device_id).map_err(|e| match e {
            Error::Cuda(m) => Error::Cuda(format!("{m}; --cuda-stages needs an NVIDIA GPU: run without it to use the CPU stages")),
            other => other,
        })
    }

    /// The stages on an opened GPU; create them on the thread that will run them (IO binding is per thread).
    pub fn new(gpu: Gpu, device_id: usize, manifest: &Manifest, kind: OutputKind, bg: &BackgroundSpec) -> Result<Self> {
        GpuStages::supports(kind, bg, manifest).map_err(|w| Error::Cuda(format!("the GPU stages do not handle {w} yet")))?;
        let (k, colour) = match (kind, bg) {
            (OutputKind::Alpha, _) => (0, [0; 3]),
            (OutputKind::Mask, _) => (2, [0; 3]),
            (_, BackgroundSpec::Colour(c)) => (1, *c),
            _ => (0, [0; 3]),
        };
        Ok(GpuStages {
            gpu,
            manifest: manifest.clone(),
            device_id: device_id as i32,
            kind: k,
            colour,
            io: DeviceIo::default(),
            frame: None,
            alpha: None,
        })
    }

    /// Mattes one NV12 frame that the decoder left in CUDA memory, writing the finished RGBA frame to `out`
    /// (w·h·4 bytes): NV12 → model tensor (fused kernel, straight from the decoder's buffer) and NV12 → RGBA for
    /// the composite, both on the GPU; the only copy is the finished frame's download for the encoder.
    pub fn process_nv12(&mut self, seg: &mut OnnxSegmenter, src: &super::gst_cuda::CudaFrame, out: &mut [u8]) -> Result<GpuTimes> {
        let st = self.gpu.stream.clone();
        let t0 = Instant::now();
        let (w, h) = (src.width, src.height);
        let n = (w * h) as usize;
        if out.len() != n * 4 {
            return Err(Error::Cuda(format!("output buffer of {} bytes for a {w}x{h} frame", out.len())));
        }
        if self.frame.as_ref().is_none_or(|f| f.len() != n * 4) {
            self.frame = Some(st.alloc_zeros::<u8>(n * 4).map_err(|x| e("alloc", x))?);
            self.alpha = Some(st.alloc_zeros::<u8>(n).map_err(|x| e("alloc", x))?);
        }
        let (mw, mh) = self.manifest.model_size_for(w, h);
        let geo = match self.manifest.input.resize {
            ResizeMode::Stretch => Geometry::stretch(mw, mh),
            ResizeMode::Letterbox => Geometry::letterbox(mw, mh, w, h),
        };
        let input = seg.device_input(&mut self.io, self.manifest.input_shape(mh, mw), self.device_id)?;
        let fmt = FrameFormat::Nv12 { pitch: src.pitch, uv_offset: src.uv_offset, bt709: src.bt709 };
        self.gpu.preprocess_ptr(src.ptr, fmt, w, h, &self.manifest, &geo, input)?;
        let frame = self.frame.as_mut().unwrap();
        self.gpu.nv12_to_rgba(src.ptr, w, h, src.pitch, src.uv_offset, src.bt709, frame)?;
        st.synchronize().map_err(|x| e("sync", x))?;
        let t1 = Instant::now();
        let mask = seg.run_device(&mut self.io)?;
        let t2 = Instant::now();
        let sx = mask.width as f32 / geo.model_w as f32;
        let sy = mask.height as f32 / geo.model_h as f32;
        let crop = (geo.content_x as f32 * sx, geo.content_y as f32 * sy, geo.content_w as f32 * sx, geo.content_h as f32 * sy);
        let alpha = self.alpha.as_mut().unwrap();
        self.gpu.upsample_mask_raw(mask.ptr, mask.width, mask.height, crop, alpha, w, h, mask.sigmoid)?;
        self.gpu.composite(frame, alpha, None, n, self.kind, self.colour)?;
        st.memcpy_dtoh(frame, out).map_err(|x| e("download", x))?;
        st.synchronize().map_err(|x| e("sync", x))?;
        Ok(GpuTimes { preprocess: t1 - t0, infer: t2 - t1, post_composite: t2.elapsed() })
    }

    /// Mattes one RGBA frame in place.
    pub fn process(&mut self, seg: &mut OnnxSegmenter, rgba: &mut [u8], w: u32, h: u32) -> Result<GpuTimes> {
        let st = self.gpu.stream.clone();
        let t0 = Instant::now();
        let n = (w * h) as usize;
        if self.frame.as_ref().is_none_or(|f| f.len() != rgba.len()) {
            self.frame = Some(st.alloc_zeros::<u8>(rgba.len()).map_err(|x| e("alloc", x))?);
            self.alpha = Some(st.alloc_zeros::<u8>(n).map_err(|x| e("alloc", x))?);
        }
        let frame = self.frame.as_mut().unwrap();
        st.memcpy_htod(rgba, frame).map_err(|x| e("upload", x))?;
        let (mw, mh) = self.manifest.model_size_for(w, h);
        let geo = match self.manifest.input.resize {
            ResizeMode::Stretch => Geometry::stretch(mw, mh),
            ResizeMode::Letterbox => Geometry::letterbox(mw, mh, w, h),
        };
        // The model input lives in a buffer ONNX Runtime allocated and bound (IO binding); the kernel writes it.
        let input = seg.device_input(&mut self.io, self.manifest.input_shape(mh, mw), self.device_id)?;
        self.gpu.preprocess_raw(frame, FrameFormat::Rgba { pitch: (w * 4) as usize }, w, h, &self.manifest, &geo, input)?;
        // ONNX Runtime runs on its own stream: the tensor must be complete before it starts.
        st.synchronize().map_err(|x| e("sync", x))?;
        let t1 = Instant::now();
        let mask = seg.run_device(&mut self.io)?;
        let t2 = Instant::now();
        let sx = mask.width as f32 / geo.model_w as f32;
        let sy = mask.height as f32 / geo.model_h as f32;
        let crop = (geo.content_x as f32 * sx, geo.content_y as f32 * sy, geo.content_w as f32 * sx, geo.content_h as f32 * sy);
        let alpha = self.alpha.as_mut().unwrap();
        self.gpu.upsample_mask_raw(mask.ptr, mask.width, mask.height, crop, alpha, w, h, mask.sigmoid)?;
        self.gpu.composite(frame, alpha, None, n, self.kind, self.colour)?;
        st.memcpy_dtoh(frame, rgba).map_err(|x| e("download", x))?;
        st.synchronize().map_err(|x| e("sync", x))?;
        Ok(GpuTimes { preprocess: t1 - t0, infer: t2 - t1, post_composite: t2.elapsed() })
    }
}

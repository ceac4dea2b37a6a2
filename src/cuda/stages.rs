//! The GPU frame path (`--cuda-stages`): upload the decoded frame once, then preprocess (fused kernel) →
//! ONNX Runtime with IO binding (input and output stay in device memory) → mask upsample (with the sigmoid) →
//! composite, all on the GPU; one download of the finished frame for the encoder, which the caller may run on
//! another thread and stream (`submit` queues, `Queued::download` finishes) so that it overlaps the next
//! inference call. With nvcodec, the frame arrives already in CUDA memory as NV12 (see gst_cuda.rs) and there
//! is no upload at all.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};

use super::{FrameFormat, Gpu, TensorElem};
use crate::composite::Background;
use crate::config::{BackgroundSpec, OutputKind};
use crate::error::{Error, Result};
use crate::infer::{DeviceIo, OnnxSegmenter};
use crate::model::{Manifest, ResizeMode};
use crate::postprocess::PostprocessConfig;
use crate::preprocess::Geometry;
use crate::source::Frame;

/// The state of the mask steps on the GPU: this frame's probabilities, the last frame's (after smoothing,
/// before the threshold) and its model input, and scratch for the motion map.
struct Smoothing {
    cur: CudaSlice<f32>,
    prev: CudaSlice<f32>,
    prev_input: CudaSlice<u8>,
    scratch: CudaSlice<f32>,
    has_prev: bool,
}

/// Sets of device frames in use at once: one being composited, one being downloaded.
const FRAME_SETS: usize = 2;

pub struct GpuStages {
    gpu: Gpu,
    manifest: Manifest,
    device_id: i32,
    kind: i32,
    colour: [u8; 3],
    io: DeviceIo,
    /// Sets of device frames (RGBA, the composite's canvas), one frame per batch slot. A set is taken for
    /// one inference call and comes back (through `returned`) once its frames are downloaded, so with the
    /// download on another thread ([`Queued::download`]) the next call runs while the last one's frames travel
    /// to host memory.
    free: Vec<Vec<CudaSlice<u8>>>,
    sets: usize,
    set_bytes: usize,
    give_back: Sender<Vec<CudaSlice<u8>>>,
    returned: Receiver<Vec<CudaSlice<u8>>>,
    alpha: Option<CudaSlice<u8>>,
    /// An image or video background for composites: made on the CPU (cover-scaled image, next video frame), and
    /// uploaded — an image once per frame size, a video frame by frame. A blurred background is made on the GPU.
    background: Option<Background>,
    bg: Option<CudaSlice<u8>>,
    bg_size: Option<(u32, u32)>,
    /// Temporal smoothing and the threshold remap (`--smooth`, `--threshold`), on the model-sized mask before
    /// upsampling, as the CPU postprocess does.
    post: PostprocessConfig,
    std_over_scale: [f32; 3],
    smoothing: Option<Smoothing>,
    /// A blurred background: the radius, and the box-filtered small frame between the two resizes.
    blur: Option<u32>,
    blur_small: Option<CudaSlice<u8>>,
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
    pub fn supports(kind: OutputKind, m: &Manifest) -> std::result::Result<(), String> {
        if kind == OutputKind::SideBySide {
            return Err("side-by-side output".into());
        }
        if !m.recurrent.is_empty() {
            return Err("recurrent models".into());
        }
        Ok(())
    }

    /// The matte-quality options the GPU stages do not apply yet (guided-filter refinement, feathering,
    /// foreground estimation): said up front rather than silently left out. Temporal smoothing and the threshold
    /// remap they do.
    pub fn supports_options(post: &PostprocessConfig, fg_estimate: bool) -> std::result::Result<(), String> {
        let mut not = Vec::new();
        if post.refine {
            not.push("--refine");
        }
        if post.feather > 0 {
            not.push("--feather");
        }
        if fg_estimate {
            not.push("--fg-estimate");
        }
        if not.is_empty() {
            Ok(())
        } else {
            Err(not.join(", "))
        }
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
    pub fn new(gpu: Gpu, device_id: usize, manifest: &Manifest, kind: OutputKind, bg: &BackgroundSpec, post: &PostprocessConfig) -> Result<Self> {
        GpuStages::supports(kind, manifest).map_err(|w| Error::Cuda(format!("the GPU stages do not handle {w} yet")))?;
        let (k, colour) = match (kind, bg) {
            (OutputKind::Alpha, _) => (0, [0; 3]),
            (OutputKind::Mask, _) => (2, [0; 3]),
            (_, BackgroundSpec::Colour(c)) => (1, *c),
            (_, BackgroundSpec::Image(_) | BackgroundSpec::Video(_) | BackgroundSpec::Blur(_)) => (1, [0; 3]),
            _ => (0, [0; 3]),
        };
        let background = match (k, bg) {
            (1, BackgroundSpec::Image(_) | BackgroundSpec::Video(_)) => Some(Background::open(bg)?),
            _ => None,
        };
        let (give_back, returned) = channel();
        Ok(GpuStages {
            gpu,
            manifest: manifest.clone(),
            device_id: device_id as i32,
            kind: k,
            colour,
            io: DeviceIo::default(),
            free: Vec::new(),
            sets: 0,
            set_bytes: 0,
            give_back,
            returned,
            alpha: None,
            background,
            bg: None,
            bg_size: None,
            blur: match (k, bg) {
                (1, BackgroundSpec::Blur(r)) => Some(*r),
                _ => None,
            },
            blur_small: None,
            post: *post,
            std_over_scale: std::array::from_fn(|c| manifest.input.std[c] / manifest.input.scale),
            smoothing: None,
        })
    }

    /// Brings the background for the next frame to the device (nothing for colour or transparent ones; an image
    /// only when the frame size changes; a video's next frame every time). The upload is ordered on the stream
    /// after the composites already queued, so each frame blends over its own background frame.
    fn next_background(&mut self, w: u32, h: u32) -> Result<()> {
        let Some(b) = self.background.as_mut() else { return Ok(()) };
        if !matches!(b, Background::Video { .. }) && self.bg_size == Some((w, h)) {
            return Ok(());
        }
        let host = b.frame(&[], w, h)?.ok_or_else(|| Error::Cuda("an image or video background gave no frame".into()))?;
        let st = &self.gpu.stream;
        match self.bg.as_mut() {
            Some(d) if d.len() == host.len() => st.memcpy_htod(host, d).map_err(|x| e("background upload", x))?,
            _ => self.bg = Some(st.clone_htod(host).map_err(|x| e("background upload", x))?),
        }
        self.bg_size = Some((w, h));
        Ok(())
    }

    /// The stream for [`Queued::download`] on another thread (downloads there overlap the next inference call).
    pub fn download_stream(&self) -> Result<Arc<CudaStream>> {
        self.gpu.ctx.new_stream().map_err(|x| e("stream", x))
    }

    /// A set of `batch` device frames of `bytes` each: a free one, a new one while fewer than FRAME_SETS exist,
    /// or else the next one a download gives back.
    fn take_set(&mut self, bytes: usize, batch: usize) -> Result<Vec<CudaSlice<u8>>> {
        if self.set_bytes != bytes {
            // A new frame size: the old sets go (those still downloading are dropped when they come back).
            self.free.clear();
            self.sets = 0;
            self.set_bytes = bytes;
            self.alpha = Some(self.gpu.stream.alloc_zeros::<u8>(bytes / 4).map_err(|x| e("alloc", x))?);
        }
        let current = |set: &Vec<CudaSlice<u8>>| set.first().is_some_and(|f| f.len() == bytes);
        self.free.extend(self.returned.try_iter().filter(current));
        loop {
            if let Some(set) = self.free.pop() {
                return Ok(set);
            }
            if self.sets < FRAME_SETS {
                self.sets += 1;
                return (0..batch).map(|_| self.gpu.stream.alloc_zeros::<u8>(bytes).map_err(|x| e("alloc", x))).collect();
            }
            // Sets of an earlier frame size are dropped.
            match self.returned.recv() {
                Ok(set) if current(&set) => self.free.push(set),
                Ok(_) => {}
                Err(_) => return Err(Error::Cuda("device frames were not given back".into())),
            }
        }
    }

    /// Mattes up to `batch` consecutive frames with one inference call, each either an RGBA frame in host
    /// memory (`data`, uploaded once) or an NV12 frame the decoder left in CUDA memory (`cuda`, read by device
    /// pointer, nothing uploaded), and queues their composites on the GPU; [`Queued::download`] brings them to
    /// each frame's `data`. The model input is always `batch` frames (a short last group leaves the spare slots
    /// as they were; their masks are not used), so the bound shapes never change. Frames of one call must share
    /// a size.
    pub fn submit(&mut self, seg: &mut OnnxSegmenter, frames: &mut [Frame], batch: usize) -> Result<(GpuTimes, Queued)> {
        let st = self.gpu.stream.clone();
        let t0 = Instant::now();
        let k = frames.len();
        if k == 0 || k > batch {
            return Err(Error::Cuda(format!("{k} frames for a batch of {batch}")));
        }
        let (w, h) = (frames[0].width, frames[0].height);
        if frames.iter().any(|f| (f.width, f.height) != (w, h)) {
            return Err(Error::Cuda("frames of one inference call differ in size".into()));
        }
        let n = (w * h) as usize;
        let mut set = self.take_set(n * 4, batch)?;
        let (mw, mh) = self.manifest.model_size_for(w, h);
        let geo = match self.manifest.input.resize {
            ResizeMode::Stretch => Geometry::stretch(mw, mh),
            ResizeMode::Letterbox => Geometry::letterbox(mw, mh, w, h),
        };
        let mut shape = self.manifest.input_shape(mh, mw);
        shape[0] = batch as i64;
        // The model input lives in a buffer ONNX Runtime allocated and bound (IO binding); the kernel writes
        // each frame's slice of it.
        let input = seg.device_input(&mut self.io, shape, self.device_id)?;
        let elem = self.io.input_elem();
        let per_frame = (mw * mh * 3) as u64 * elem.size() as u64;
        for (i, f) in frames.iter_mut().enumerate() {
            let slot = input + i as u64 * per_frame;
            let dframe = &mut set[i];
            match f.cuda.as_ref() {
                Some(c) => {
                    let fmt = FrameFormat::Nv12 { pitch: c.pitch, uv_offset: c.uv_offset, color: c.color };
                    self.gpu.preprocess_ptr(c.ptr, fmt, w, h, &self.manifest, &geo, slot, elem)?;
                    self.gpu.nv12_to_rgba(c.ptr, w, h, c.pitch, c.uv_offset, c.color, dframe)?;
                }
                None => {
                    if f.data.len() != n * 4 {
                        return Err(Error::Cuda(format!("frame of {} bytes for {w}x{h} RGBA", f.data.len())));
                    }
                    st.memcpy_htod(&f.data[..], dframe).map_err(|x| e("upload", x))?;
                    let (src, _s) = dframe.device_ptr(&st);
                    self.gpu.preprocess_ptr(src, FrameFormat::Rgba { pitch: (w * 4) as usize }, w, h, &self.manifest, &geo, slot, elem)?;
                }
            }
        }
        // ONNX Runtime runs on its own stream: the tensor must be complete before it starts. (This also waits
        // for the previous call's composites, which read that call's output: ONNX Runtime may overwrite it now.)
        st.synchronize().map_err(|x| e("sync", x))?;
        // The decoder's buffers can go back to its pool now.
        for f in frames.iter_mut() {
            f.cuda = None;
        }
        let t1 = Instant::now();
        let mask = seg.run_device(&mut self.io)?;
        let t2 = Instant::now();
        let sx = mask.width as f32 / geo.model_w as f32;
        let sy = mask.height as f32 / geo.model_h as f32;
        let crop = (geo.content_x as f32 * sx, geo.content_y as f32 * sy, geo.content_w as f32 * sx, geo.content_h as f32 * sy);
        let smooth = self.post.smooth.clamp(0.0, 0.95);
        let mask_steps = smooth > 0.0 || self.post.threshold.is_some();
        let mn = (mask.width * mask.height) as usize;
        if mask_steps && self.smoothing.as_ref().is_none_or(|s| s.cur.len() != mn) {
            if smooth > 0.0 && (mask.width, mask.height) != (mw, mh) {
                return Err(Error::Cuda(format!(
                    "--smooth with --cuda-stages needs a mask of the model input's size ({mw}x{mh}); this model gives {}x{}: \
                     run without --cuda-stages",
                    mask.width, mask.height
                )));
            }
            let z = |n: usize| st.alloc_zeros::<f32>(n).map_err(|x| e("alloc", x));
            self.smoothing = Some(Smoothing {
                cur: z(mn)?,
                prev: z(mn)?,
                prev_input: st.alloc_zeros::<u8>(per_frame as usize).map_err(|x| e("alloc", x))?,
                scratch: z(mn)?,
                has_prev: false,
            });
        }
        for i in 0..k {
            self.next_background(w, h)?;
            let alpha = self.alpha.as_mut().unwrap();
            match self.smoothing.as_mut().filter(|_| mask_steps) {
                None => {
                    self.gpu.upsample_mask_raw(mask.frame(i), mask.elem, mask.width, mask.height, crop, alpha, w, h, mask.sigmoid)?
                }
                Some(sm) => {
                    // The CPU postprocess's steps on the model-sized mask: probabilities, the motion-aware blend
                    // with the last frame (kept, with this frame's input, for the next), the threshold remap.
                    self.gpu.mask_prob(mask.frame(i), mask.elem, mask.sigmoid, mn, &mut sm.cur)?;
                    if smooth > 0.0 {
                        let cur_input = input + i as u64 * per_frame;
                        if sm.has_prev {
                            let (prev_input, _g) = sm.prev_input.device_ptr(&st);
                            let nchw = self.manifest.input.layout == crate::model::Layout::Nchw;
                            self.gpu.temporal_blend_raw(
                                cur_input, prev_input, elem, nchw, self.std_over_scale, smooth, self.post.motion_threshold,
                                &sm.prev, &mut sm.cur, &mut sm.scratch, mw, mh,
                            )?;
                        }
                        st.memcpy_dtod(&sm.cur, &mut sm.prev).map_err(|x| e("copy", x))?;
                        {
                            let (dst, _g) = sm.prev_input.device_ptr_mut(&st);
                            // SAFETY: both hold per_frame bytes (one frame's model input); ordered on `st`.
                            unsafe { cudarc::driver::result::memcpy_dtod_async(dst, cur_input, per_frame as usize, st.cu_stream()) }
                                .map_err(|x| e("copy", x))?;
                        }
                        sm.has_prev = true;
                    }
                    if let Some((lo, hi)) = self.post.threshold {
                        self.gpu.mask_threshold(&mut sm.cur, mn, lo, hi)?;
                    }
                    let (m, _g) = sm.cur.device_ptr(&st);
                    self.gpu.upsample_mask_raw(m, TensorElem::F32, mask.width, mask.height, crop, alpha, w, h, false)?;
                }
            }
            if let Some(r) = self.blur {
                // The blur of this frame, made before the composite overwrites it.
                if self.bg.as_ref().is_none_or(|b| b.len() != n * 4) {
                    self.bg = Some(st.alloc_zeros::<u8>(n * 4).map_err(|x| e("alloc", x))?);
                }
                self.gpu.blur_background(&set[i], w, h, r, &mut self.blur_small, self.bg.as_mut().unwrap())?;
            }
            self.gpu.composite(&mut set[i], alpha, self.bg.as_ref(), n, self.kind, self.colour)?;
        }
        let queued = Queued { set, k, give_back: self.give_back.clone() };
        Ok((GpuTimes { preprocess: t1 - t0, infer: t2 - t1, post_composite: t2.elapsed() }, queued))
    }
}

/// One inference call's composited frames, still on the GPU (queued behind the kernels that make them).
pub struct Queued {
    set: Vec<CudaSlice<u8>>,
    k: usize,
    give_back: Sender<Vec<CudaSlice<u8>>>,
}

impl Queued {
    /// Downloads the frames into each frame's `data` on `stream` (which waits for the composites: the device
    /// frames carry their last write as an event) and gives the device frames back for reuse. Returns the time
    /// it took.
    pub fn download(self, stream: &Arc<CudaStream>, frames: &mut [Frame]) -> Result<Duration> {
        let t = Instant::now();
        if frames.len() != self.k {
            return Err(Error::Cuda(format!("{} frames to download for a call of {}", frames.len(), self.k)));
        }
        for (d, f) in self.set.iter().zip(frames.iter_mut()) {
            if f.data.len() != d.len() {
                return Err(Error::Cuda(format!("frame buffer of {} bytes for a {}-byte RGBA frame", f.data.len(), d.len())));
            }
            stream.memcpy_dtoh(d, &mut f.data[..]).map_err(|x| e("download", x))?;
        }
        stream.synchronize().map_err(|x| e("sync", x))?;
        Ok(t.elapsed())
    }
}

impl Drop for Queued {
    /// The device frames go back however this ends (downloaded, failed, or dropped unread when the download
    /// thread stops), so the inference thread waiting for a free set never waits for ever.
    fn drop(&mut self) {
        let set = std::mem::take(&mut self.set);
        if !set.is_empty() {
            let _ = self.give_back.send(set);
        }
    }
}

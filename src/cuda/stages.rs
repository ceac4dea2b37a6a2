//! The GPU frame path (`--cuda-stages`): upload the decoded frame once, then preprocess (fused kernel) →
//! ONNX Runtime with IO binding (input and output stay in device memory) → mask upsample (with the sigmoid) →
//! composite, all on the GPU; one download of the finished frame for the encoder, which the caller may run on
//! another thread and stream (`submit` queues, `Queued::download` finishes) so that it overlaps the next
//! inference call. With nvcodec, the frame arrives already in CUDA memory as NV12 (see gst_cuda.rs) and there
//! is no upload at all.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaEvent, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, PinnedHostSlice};

use super::composite::GpuCompositor;
use super::gst_cuda::CudaFrame;
use super::i420::I420Out;
use super::{FrameFormat, Gpu, TensorElem};
use crate::config::{BackgroundSpec, OutputKind};
use crate::error::{Error, Result};
use crate::infer::{DeviceIo, DeviceMask, OnnxSegmenter};
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

/// One inference call's device frames: the composites (RGBA), and where frames go down as I420, their
/// conversions (one per batch slot, made when first needed).
#[derive(Default)]
struct FrameSet {
    rgba: Vec<CudaSlice<u8>>,
    i420: Vec<CudaSlice<u8>>,
}

/// Where one frame's pixels are when it reaches the GPU stages.
pub enum Pixels<'a> {
    /// RGBA with packed rows in host memory (uploaded once).
    Host(&'a [u8]),
    /// NV12 the decoder left in CUDA memory (read by device pointer, nothing uploaded).
    Nv12(&'a CudaFrame),
}

impl<'a> Pixels<'a> {
    pub fn of(f: &'a Frame) -> Pixels<'a> {
        match f.cuda.as_ref() {
            Some(c) => Pixels::Nv12(c),
            None => Pixels::Host(&f.data[..]),
        }
    }
}

/// The model input of one call, complete on the device: where each frame sat in it.
struct Prepared {
    geo: Geometry,
    /// Device address of the model input and the bytes of one frame's slice of it.
    input: u64,
    per_frame: u64,
    elem: TensorElem,
    /// When the input tensor was complete (preprocess done, inference about to start).
    preprocessed: Instant,
}

/// One inference call's result on the device: the model's mask and its input.
struct Inferred {
    mask: DeviceMask,
    prep: Prepared,
}

pub struct GpuStages {
    gpu: Gpu,
    manifest: Manifest,
    device_id: i32,
    io: DeviceIo,
    /// Sets of device frames (RGBA, the composite's canvas), one frame per batch slot. A set is taken for
    /// one inference call and comes back (through `returned`) once its frames are downloaded, so with the
    /// download on another thread ([`Queued::download`]) the next call runs while the last one's frames travel
    /// to host memory.
    free: Vec<FrameSet>,
    sets: usize,
    set_bytes: usize,
    give_back: Sender<FrameSet>,
    returned: Receiver<FrameSet>,
    /// Whether finished frames go down as I420 where their size allows it (an encoder that takes 4:2:0 next),
    /// and the I420 layout of the last frame size (`None` inside: that size stays RGBA).
    i420: bool,
    layout: Option<((u32, u32), Option<I420Out>)>,
    alpha: Option<CudaSlice<u8>>,
    /// Compositing, on the same stream (the ordered path composites right after the mask steps).
    compositor: GpuCompositor,
    /// Temporal smoothing and the threshold remap (`--smooth`, `--threshold`), on the model-sized mask before
    /// upsampling, as the CPU postprocess does.
    post: PostprocessConfig,
    std_over_scale: [f32; 3],
    smoothing: Option<Smoothing>,
    releaser: Releaser,
}

/// Hands decoded frames back to the decoder once the GPU has read them: each group waits for its event
/// (recorded after the kernels that read it) on a thread of its own, asleep, so that a frame goes back as soon
/// as it can, whatever the model's thread waits for meanwhile.
#[derive(Default)]
struct Releaser(Option<Sender<(CudaEvent, Vec<Arc<CudaFrame>>)>>);

impl Releaser {
    fn release(&mut self, stream: &CudaStream, frames: Vec<Arc<CudaFrame>>) -> Result<()> {
        if frames.is_empty() {
            return Ok(());
        }
        let done = stream.record_event(Some(CUevent_flags::CU_EVENT_BLOCKING_SYNC)).map_err(|x| e("event", x))?;
        if self.0.is_none() {
            let (tx, rx) = channel::<(CudaEvent, Vec<Arc<CudaFrame>>)>();
            let spawned = std::thread::Builder::new().name("mf-frame-release".into()).spawn(move || {
                for (done, frames) in rx {
                    let _ = done.synchronize();
                    drop(frames);
                }
            });
            if spawned.is_ok() {
                self.0 = Some(tx);
            }
        }
        match &self.0 {
            Some(tx) => tx.send((done, frames)).map_err(|_| Error::Cuda("the frame release thread ended".into())),
            None => done.synchronize().map_err(|x| e("sync", x)),
        }
    }
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
        GpuCompositor::supports(kind)?;
        if !m.recurrent.is_empty() {
            return Err("recurrent models".into());
        }
        if !m.constants.is_empty() {
            return Err("models with constant inputs".into());
        }
        Ok(())
    }

    /// The matte-quality options the GPU stages do not apply yet (guided-filter refinement, feathering,
    /// foreground estimation): said up front rather than silently left out. Temporal smoothing and the threshold
    /// remap they do.
    pub fn supports_options(post: &PostprocessConfig, fg_estimate: bool) -> std::result::Result<(), String> {
        use crate::hint::{FEATHER, FG_ESTIMATE, REFINE};
        let unsupported: Vec<crate::hint::Setting> = [(post.refine, REFINE), (post.feather > 0, FEATHER), (fg_estimate, FG_ESTIMATE)]
            .into_iter()
            .filter_map(|(on, setting)| on.then_some(setting))
            .collect();
        if unsupported.is_empty() {
            Ok(())
        } else {
            Err(crate::hint::names(&unsupported))
        }
    }

    /// Opens the GPU and compiles the kernels. Call this before the GStreamer pipeline starts: initialising
    /// CUDA while GStreamer's nvcodec decoder initialises its own context was seen to hang (H200, 1.22).
    pub fn open_gpu(device_id: usize) -> Result<Gpu> {
        Gpu::open(device_id).map_err(|e| match e {
            Error::Cuda(m) => {
                Error::Cuda(format!("{m}; the GPU stages need an NVIDIA GPU: use the CPU stages ({})", crate::hint::STAGES.to("cpu")))
            }
            other => other,
        })
    }

    /// The stages on an opened GPU; create them on the thread that will run them (IO binding is per thread).
    pub fn new(gpu: Gpu, device_id: usize, manifest: &Manifest, kind: OutputKind, bg: &BackgroundSpec, post: &PostprocessConfig) -> Result<Self> {
        GpuStages::supports(kind, manifest).map_err(|w| Error::Cuda(format!("the GPU stages do not handle {w} yet")))?;
        let compositor = GpuCompositor::new(gpu.clone(), kind, bg)?;
        let (give_back, returned) = channel();
        Ok(GpuStages {
            gpu,
            manifest: manifest.clone(),
            device_id: device_id as i32,
            io: DeviceIo::default(),
            free: Vec::new(),
            sets: 0,
            set_bytes: 0,
            give_back,
            returned,
            i420: false,
            layout: None,
            alpha: None,
            compositor,
            post: *post,
            std_over_scale: std::array::from_fn(|c| manifest.input.std[c] / manifest.input.scale),
            smoothing: None,
            releaser: Releaser::default(),
        })
    }

    /// The GPU these stages run on (a compositor for another thread takes a new stream on it).
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// New mask settings (smoothing starts afresh).
    pub fn set_post(&mut self, post: &PostprocessConfig) {
        self.post = *post;
        self.smoothing = None;
    }

    /// A new background or output kind for the ordered path's composites.
    pub fn set_background(&mut self, kind: OutputKind, bg: &BackgroundSpec) -> Result<()> {
        self.compositor = GpuCompositor::new(self.gpu.clone(), kind, bg)?;
        Ok(())
    }

    /// A new model (its IO binding and mask state start afresh).
    pub fn set_manifest(&mut self, manifest: &Manifest) {
        self.manifest = manifest.clone();
        self.io = DeviceIo::default();
        self.smoothing = None;
        self.std_over_scale = std::array::from_fn(|c| manifest.input.std[c] / manifest.input.scale);
    }

    /// Puts the stages' kernels on the stream the model runs on, where the session runs on a stream of ours: the
    /// preprocessing, the run and the mask steps then follow each other on one stream, with no waits between
    /// streams before and after each run (IS-Net end to end on the H200: 179.4–180.0 fps against 178.6–178.8,
    /// the same frames out). Handles that share one session (`batch --jobs N`) then launch on one stream from
    /// several threads: they must run without CUDA graphs ([`OnnxSegmenter::without_graphs`], as batch does), whose
    /// capture on that stream would take in another thread's kernels.
    fn follow_model_stream(&mut self, seg: &OnnxSegmenter) {
        if let Some(ours) = seg.compute_stream().filter(|s| s.cu_stream() != self.gpu.stream.cu_stream()) {
            self.gpu = self.gpu.on_stream(ours);
            self.compositor.set_gpu(self.gpu.clone());
        }
    }

    /// Whether finished frames go down as I420 where their size allows it (an encoder that takes 4:2:0 next:
    /// see [`Queued::download`]).
    pub fn set_i420(&mut self, on: bool) {
        self.i420 = on;
    }

    /// The I420 layout frames of `w` × `h` go down in, if any.
    fn layout_for(&mut self, w: u32, h: u32) -> Option<I420Out> {
        if !self.i420 {
            return None;
        }
        if self.layout.as_ref().is_none_or(|(size, _)| *size != (w, h)) {
            let l = I420Out::for_size(w, h);
            if l.is_none() {
                tracing::info!("{w}x{h} frames go down from the GPU as RGBA (I420 on the GPU takes even sizes)");
            }
            self.layout = Some(((w, h), l));
        }
        self.layout.as_ref().and_then(|(_, l)| l.clone())
    }

    /// Converts the call's `k` composites to I420 where they go down so, on the model's stream: a kernel on any
    /// other stream of the model's context slows every later CUDA-graph replay of the model (IS-Net on the H200:
    /// 5.11 → 5.43 ms, for the rest of the process; BENCHMARKS, twelfth session), whereas copies do not, so the
    /// download stream only copies. Returns the layout, if the frames were converted.
    fn convert_i420(&mut self, set: &mut FrameSet, k: usize, w: u32, h: u32) -> Result<Option<I420Out>> {
        let Some(l) = self.layout_for(w, h) else { return Ok(None) };
        let bytes = l.size();
        set.i420.retain(|c| c.len() == bytes);
        while set.i420.len() < k {
            set.i420.push(self.gpu.stream.alloc_zeros::<u8>(bytes).map_err(|x| e("alloc", x))?);
        }
        for (rgba, out) in set.rgba.iter().zip(set.i420.iter_mut()).take(k) {
            self.gpu.rgba_to_i420(rgba, w, h, &l.conv, out)?;
        }
        Ok(Some(l))
    }

    /// A set of `batch` device frames of `bytes` each: a free one, a new one while fewer than FRAME_SETS exist,
    /// or else the next one a download gives back.
    fn take_set(&mut self, bytes: usize, batch: usize) -> Result<FrameSet> {
        if self.set_bytes != bytes {
            // A new frame size: the old sets go (those still downloading are dropped when they come back).
            self.free.clear();
            self.sets = 0;
            self.set_bytes = bytes;
            self.alpha = Some(self.gpu.stream.alloc_zeros::<u8>(bytes / 4).map_err(|x| e("alloc", x))?);
        }
        let current = |set: &FrameSet| set.rgba.first().is_some_and(|f| f.len() == bytes);
        self.free.extend(self.returned.try_iter().filter(current));
        loop {
            if let Some(set) = self.free.pop() {
                return Ok(set);
            }
            if self.sets < FRAME_SETS {
                self.sets += 1;
                let rgba = (0..batch).map(|_| self.gpu.stream.alloc_zeros::<u8>(bytes).map_err(|x| e("alloc", x))).collect::<Result<_>>()?;
                return Ok(FrameSet { rgba, i420: Vec::new() });
            }
            // Sets of an earlier frame size are dropped.
            match self.returned.recv() {
                Ok(set) if current(&set) => self.free.push(set),
                Ok(_) => {}
                Err(_) => return Err(Error::Cuda("device frames were not given back".into())),
            }
        }
    }

    /// Queues the preprocessing of the frames into the model's bound input of `batch` slots (each frame also
    /// lands, as RGBA, in its device frame of `set`; a short group leaves the spare slots as they were, their
    /// masks are not used, so the bound shapes never change). Frames must share a size; an NV12 frame must stay
    /// alive until the stream has read it.
    fn prepare(&mut self, seg: &mut OnnxSegmenter, frames: &[Pixels], w: u32, h: u32, set: &mut [CudaSlice<u8>], batch: usize) -> Result<Prepared> {
        let st = self.gpu.stream.clone();
        let n = (w * h) as usize;
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
        for (i, (f, dframe)) in frames.iter().zip(set.iter_mut()).enumerate() {
            let slot = input + i as u64 * per_frame;
            match f {
                Pixels::Nv12(c) => {
                    let fmt = FrameFormat::Nv12 { pitch: c.pitch, uv_offset: c.uv_offset, color: c.color };
                    self.gpu.preprocess_ptr(c.ptr, fmt, w, h, &self.manifest, &geo, slot, elem)?;
                    self.gpu.nv12_to_rgba(c.ptr, w, h, c.pitch, c.uv_offset, c.color, dframe)?;
                }
                Pixels::Host(data) => {
                    if data.len() != n * 4 {
                        return Err(Error::Cuda(format!("frame of {} bytes for {w}x{h} RGBA", data.len())));
                    }
                    st.memcpy_htod(*data, dframe).map_err(|x| e("upload", x))?;
                    let (src, _s) = dframe.device_ptr(&st);
                    self.gpu.preprocess_ptr(src, FrameFormat::Rgba { pitch: (w * 4) as usize }, w, h, &self.manifest, &geo, slot, elem)?;
                }
            }
        }
        // No wait here: the run is ordered after these kernels (and after the previous call's composites,
        // which read that call's output) on the GPU, by `run_device_on`.
        Ok(Prepared { geo, input, per_frame, elem, preprocessed: Instant::now() })
    }

    /// Queues one run of the model on the prepared input, ordered on the stream between the preprocessing and
    /// what comes next (no host wait where the session runs on a stream of ours).
    fn infer(&mut self, seg: &mut OnnxSegmenter, prep: Prepared) -> Result<Inferred> {
        Ok(Inferred { mask: seg.run_device_on(&mut self.io, &self.gpu.stream)?, prep })
    }

    /// Makes sure the smoothing state fits this mask (allocated on first use and when the size changes).
    fn smoothing_for(&mut self, inf: &Inferred) -> Result<()> {
        let (mw, mh) = (inf.prep.geo.model_w, inf.prep.geo.model_h);
        let (smooth, mask) = (self.post.smooth.clamp(0.0, 0.95), &inf.mask);
        let mn = (mask.width * mask.height) as usize;
        if self.smoothing.as_ref().is_some_and(|s| s.cur.len() == mn) {
            return Ok(());
        }
        if smooth > 0.0 && (mask.width, mask.height) != (mw, mh) {
            return Err(Error::Cuda(format!(
                "{} on the GPU stages needs a mask of the model input's size ({mw}x{mh}); this model gives {}x{}: \
                 use the CPU stages ({})",
                crate::hint::SMOOTH.name(),
                mask.width,
                mask.height,
                crate::hint::STAGES.to("cpu")
            )));
        }
        let st = &self.gpu.stream;
        let z = |n: usize| st.alloc_zeros::<f32>(n).map_err(|x| e("alloc", x));
        self.smoothing = Some(Smoothing {
            cur: z(mn)?,
            prev: z(mn)?,
            prev_input: st.alloc_zeros::<u8>(inf.prep.per_frame as usize).map_err(|x| e("alloc", x))?,
            scratch: z(mn)?,
            has_prev: false,
        });
        Ok(())
    }

    /// Frame `i`'s mask → frame-sized 8-bit alpha in `alpha`: the CPU postprocess's steps on the model-sized mask
    /// when asked for (probabilities, the motion-aware blend with the last frame — kept, with this frame's input,
    /// for the next —, the threshold remap), then the upsampling of the content box.
    fn alpha_of(&mut self, inf: &Inferred, i: usize, alpha: &mut CudaSlice<u8>, w: u32, h: u32) -> Result<()> {
        let mask = &inf.mask;
        let g = &inf.prep.geo;
        let sx = mask.width as f32 / g.model_w as f32;
        let sy = mask.height as f32 / g.model_h as f32;
        let crop = (g.content_x as f32 * sx, g.content_y as f32 * sy, g.content_w as f32 * sx, g.content_h as f32 * sy);
        let smooth = self.post.smooth.clamp(0.0, 0.95);
        if smooth <= 0.0 && self.post.threshold.is_none() {
            return self.gpu.upsample_mask_raw(mask.frame(i), mask.elem, mask.width, mask.height, crop, alpha, w, h, mask.sigmoid);
        }
        self.smoothing_for(inf)?;
        let st = self.gpu.stream.clone();
        let mn = (mask.width * mask.height) as usize;
        let nchw = self.manifest.input.layout == crate::model::Layout::Nchw;
        let sm = self.smoothing.as_mut().unwrap();
        self.gpu.mask_prob(mask.frame(i), mask.elem, mask.sigmoid, mn, &mut sm.cur)?;
        if smooth > 0.0 {
            let cur_input = inf.prep.input + i as u64 * inf.prep.per_frame;
            if sm.has_prev {
                let (prev_input, _g) = sm.prev_input.device_ptr(&st);
                self.gpu.temporal_blend_raw(
                    cur_input, prev_input, inf.prep.elem, nchw, self.std_over_scale, smooth, self.post.motion_threshold,
                    &sm.prev, &mut sm.cur, &mut sm.scratch, g.model_w, g.model_h,
                )?;
            }
            st.memcpy_dtod(&sm.cur, &mut sm.prev).map_err(|x| e("copy", x))?;
            {
                let (dst, _g) = sm.prev_input.device_ptr_mut(&st);
                // SAFETY: both hold per_frame bytes (one frame's model input); ordered on `st`.
                unsafe { cudarc::driver::result::memcpy_dtod_async(dst, cur_input, inf.prep.per_frame as usize, st.cu_stream()) }
                    .map_err(|x| e("copy", x))?;
            }
            sm.has_prev = true;
        }
        if let Some((lo, hi)) = self.post.threshold {
            self.gpu.mask_threshold(&mut sm.cur, mn, lo, hi)?;
        }
        let (m, _g) = sm.cur.device_ptr(&st);
        self.gpu.upsample_mask_raw(m, TensorElem::F32, mask.width, mask.height, crop, alpha, w, h, false)
    }

    /// Mattes up to `batch` consecutive frames with one inference call, each either an RGBA frame in host
    /// memory (`data`, uploaded once) or an NV12 frame the decoder left in CUDA memory (`cuda`, read by device
    /// pointer, nothing uploaded), and queues their composites on the GPU; [`Queued::download`] brings them to
    /// each frame's `data`. Frames of one call must share a size.
    pub fn submit(&mut self, seg: &mut OnnxSegmenter, frames: &mut [Frame], batch: usize) -> Result<(GpuTimes, Queued)> {
        let t0 = Instant::now();
        self.follow_model_stream(seg);
        let k = frames.len();
        let (w, h) = same_size(frames.iter().map(|f| (f.width, f.height)), k, batch)?;
        let mut set = self.take_set((w * h * 4) as usize, batch)?;
        // The stream's timeline of this call (read once the frames are downloaded): before the preprocessing,
        // around the model, after the composites.
        let st = self.gpu.stream.clone();
        let timed = || st.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(|x| e("event", x));
        let before = timed()?;
        let pixels: Vec<Pixels> = frames.iter().map(Pixels::of).collect();
        let prepared = self.prepare(seg, &pixels, w, h, &mut set.rgba, batch);
        drop(pixels);
        // The decoder's buffers go back to its pool as soon as the preprocessing has read them, so it decodes
        // the next frames meanwhile.
        self.releaser.release(&self.gpu.stream, frames.iter_mut().filter_map(|f| f.cuda.take()).collect())?;
        let started = timed()?;
        let inf = self.infer(seg, prepared?)?;
        // Queued behind work the GPU had not finished: the GPU goes from that work to the run with no wait for the
        // host in between, so the events time the model alone. (Else the host's launch is inside them too.)
        let behind = started.try_is_complete().is_ok_and(|done| !done);
        let ended = timed()?;
        let t1 = Instant::now();
        let mut alpha = self.alpha.take().ok_or_else(|| Error::Cuda("no alpha buffer".into()))?;
        let composited = (0..k).try_for_each(|i| {
            self.alpha_of(&inf, i, &mut alpha, w, h)?;
            self.compositor.run(&mut set.rgba[i], &alpha, w, h)
        });
        self.alpha = Some(alpha);
        composited?;
        let layout = self.convert_i420(&mut set, k, w, h)?;
        let model = ModelRun { events: [before, started, ended, timed()?], behind };
        let queued = Queued { set, k, layout, give_back: self.give_back.clone(), model: Some(model) };
        let times = GpuTimes { preprocess: inf.prep.preprocessed - t0, infer: t1 - inf.prep.preprocessed, post_composite: t1.elapsed() };
        Ok((times, queued))
    }

    /// Mattes one frame without compositing it: its frame-sized alpha stays on the device (for a compositor on
    /// another thread, which may use it for later frames too).
    pub fn mask(&mut self, seg: &mut OnnxSegmenter, frame: Pixels, w: u32, h: u32) -> Result<(CudaSlice<u8>, GpuTimes)> {
        let t0 = Instant::now();
        self.follow_model_stream(seg);
        let mut set = self.take_set((w * h * 4) as usize, 1)?;
        // One mask per call, waited for (the caller's frame is read before this returns, and the live budget
        // takes the call's time as the model's).
        let inf = self.prepare(seg, &[frame], w, h, &mut set.rgba, 1).and_then(|p| {
            self.gpu.stream.synchronize().map_err(|x| e("sync", x))?;
            Ok(Inferred { mask: seg.run_device(&mut self.io)?, prep: p })
        });
        // The device frame only carried the upload; it goes back for the next call.
        drop(Queued { set, k: 1, layout: None, give_back: self.give_back.clone(), model: None });
        let inf = inf?;
        let t1 = Instant::now();
        let mut alpha = self.gpu.stream.alloc_zeros::<u8>((w * h) as usize).map_err(|x| e("alloc", x))?;
        self.alpha_of(&inf, 0, &mut alpha, w, h)?;
        let times = GpuTimes { preprocess: inf.prep.preprocessed - t0, infer: t1 - inf.prep.preprocessed, post_composite: t1.elapsed() };
        Ok((alpha, times))
    }
}

/// The common size of a group of `k` frames for a call of `batch` slots.
fn same_size(mut sizes: impl Iterator<Item = (u32, u32)>, k: usize, batch: usize) -> Result<(u32, u32)> {
    if k == 0 || k > batch {
        return Err(Error::Cuda(format!("{k} frames for a batch of {batch}")));
    }
    let first = sizes.next().unwrap_or_default();
    if sizes.any(|s| s != first) {
        return Err(Error::Cuda("frames of one inference call differ in size".into()));
    }
    Ok(first)
}

/// One inference call's composited frames, still on the GPU (queued behind the kernels that make them).
pub struct Queued {
    set: FrameSet,
    k: usize,
    /// The I420 layout of `set.i420`, where the frames go down as I420.
    layout: Option<I420Out>,
    give_back: Sender<FrameSet>,
    model: Option<ModelRun>,
}

/// Events on the stages' stream of one inference call: before its preprocessing, before and after the model run,
/// after its composites; and whether the run was queued behind work the GPU had not finished.
struct ModelRun {
    events: [CudaEvent; 4],
    behind: bool,
}

/// One inference call on the stages' stream, from its events: the model's GPU time, whether it was queued behind
/// unfinished work, the preprocessing's and the postprocessing + composites' GPU time, and the time from the
/// previous call's composites to this call's preprocessing (idle, or work of other streams it waited for; None
/// for the first call a downloader sees).
#[derive(Debug, Clone, Copy, Default)]
pub struct CallTimes {
    pub model: Duration,
    pub behind: bool,
    pub pre: Duration,
    pub post: Duration,
    pub gap: Option<Duration>,
}

/// Where finished frames go down to the host: a stream of its own (downloads overlap the next inference call)
/// and page-locked staging buffers (a download into pageable memory is a staged, blocking copy inside the
/// driver, at a fraction of the bus speed). Frames the stages converted to I420 ([`GpuStages::set_i420`]) go
/// down as I420: 12 bits a pixel cross the bus instead of 32, and the CPU's `videoconvert` has nothing left to
/// do. Only copies run on this stream (see [`GpuStages::convert_i420`]).
pub struct Downloader {
    stream: Arc<CudaStream>,
    staging: Vec<PinnedHostSlice<u8>>,
    /// The last downloaded call's event after its composites (the start of the next call's gap).
    last_done: Option<CudaEvent>,
}

impl Downloader {
    /// Downloads on a new stream of `gpu`'s device.
    pub fn new(gpu: &Gpu) -> Result<Downloader> {
        let stream = gpu.ctx.new_stream().map_err(|x| e("stream", x))?;
        Ok(Downloader { stream, staging: Vec::new(), last_done: None })
    }
}

impl Queued {
    /// Downloads the frames on `d`'s stream (which waits for the composites: the device frames carry their last
    /// write as an event) into each frame's `data`, as RGBA or, where the stages converted them, as I420 in the
    /// first bytes of `data` (the layout returned); the device frames go back for reuse. Returns the time it
    /// took, the model's time on the GPU (from its events, and whether the run was queued behind unfinished
    /// work: see `submit`) and the I420 layout, if the frames went down as I420.
    pub fn download(mut self, d: &mut Downloader, frames: &mut [Frame]) -> Result<(Duration, Option<CallTimes>, Option<I420Out>)> {
        let t = Instant::now();
        if frames.len() != self.k {
            return Err(Error::Cuda(format!("{} frames to download for a call of {}", frames.len(), self.k)));
        }
        let rgba_bytes = self.set.rgba.first().map_or(0, |s| s.len());
        let layout = self.layout.take();
        let bytes = layout.as_ref().map_or(rgba_bytes, |l| l.size());
        let stream = d.stream.clone();
        // SAFETY: page-locked host memory of `bytes`, written by the copies below before it is read.
        let pinned = || unsafe { stream.context().alloc_pinned_with_flags::<u8>(bytes, 0) }.map_err(|x| e("pinned alloc", x));
        // One staging buffer per frame, reused while the size stays.
        d.staging.retain(|p| p.len() == bytes);
        while d.staging.len() < self.k {
            d.staging.push(crate::infer::outside_capture(pinned)?);
        }
        let sources = if layout.is_some() { &self.set.i420 } else { &self.set.rgba };
        for (i, (dev, f)) in sources.iter().zip(frames.iter()).enumerate() {
            if f.data.len() != rgba_bytes {
                return Err(Error::Cuda(format!("frame buffer of {} bytes for a {rgba_bytes}-byte RGBA frame", f.data.len())));
            }
            stream.memcpy_dtoh(dev, &mut d.staging[i]).map_err(|x| e("download", x))?;
        }
        // Waits asleep (a blocking-sync event), not spinning: with the model queued ahead this wait lasts about a
        // frame, and a thread polling the driver that long may slow the model thread's launches.
        let copied = stream.record_event(Some(CUevent_flags::CU_EVENT_BLOCKING_SYNC)).map_err(|x| e("event", x))?;
        copied.synchronize().map_err(|x| e("sync", x))?;
        // The events are all behind the composites the download waited for: complete, no wait here.
        let span = |a: &CudaEvent, b: &CudaEvent| a.elapsed_ms(b).ok().map(|ms| Duration::from_secs_f64(ms.max(0.0) as f64 / 1e3));
        let run = self.model.take();
        let model = run.as_ref().and_then(|m| {
            let [before, started, ended, done] = &m.events;
            let gap = d.last_done.as_ref().and_then(|last| span(last, before));
            Some(CallTimes { model: span(started, ended)?, behind: m.behind, pre: span(before, started)?, post: span(ended, done)?, gap })
        });
        if let Some(ModelRun { events: [_, _, _, done], .. }) = run {
            d.last_done = Some(done);
        }
        drop(self);
        for (f, p) in frames.iter_mut().zip(d.staging.iter()) {
            f.data[..bytes].copy_from_slice(p.as_slice().map_err(|x| e("download", x))?);
        }
        Ok((t.elapsed(), model, layout))
    }
}

impl Drop for Queued {
    /// The device frames go back however this ends (downloaded, failed, or dropped unread when the download
    /// thread stops), so the inference thread waiting for a free set never waits for ever.
    fn drop(&mut self) {
        let set = std::mem::take(&mut self.set);
        if !set.rgba.is_empty() {
            let _ = self.give_back.send(set);
        }
    }
}

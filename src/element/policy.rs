//! The element's streaming state: the engine's ordered or budgeted policy over the negotiated stream, and the
//! finished buffers waiting to go out. Built in `start()` (the model is loaded there), dropped in `stop()`.
//!
//! ```text
//! buffer ─▶ Frame (RGBA in place, or NV12 in CUDA memory) ─┬─ ordered: held until `batch` ─▶ Ordered ─▶ Finisher ─┐
//!                                                          └─ budgeted: MaskScheduler ─▶ Compositor ───────────────┤
//!                                                                                                   out queue ◀───┘
//! ```
//!
//! Both policies take NV12 in CUDA memory where the GPU stages run: the ordered one reads it in its stages and
//! downloads the composites; the budgeted one hands the model thread a reference to the frame and converts,
//! composites and downloads it in its [`Compositor`].

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use gstreamer as gst;
use gstreamer_video as gst_video;

use crate::config::OutputKind;
use crate::cuda::gst_cuda::{CudaFrame, GstCuda};
use crate::engine::budget::{self, MaskScheduler, ToWorker};
use crate::engine::ordered::{to_buffer, Finisher, Ordered};
use crate::engine::{Compositor, FrameRef, Matter, MatteSettings, Placement, StagesChoice};
use crate::error::{Error, Result};
use crate::infer::{OnnxSegmenter, Segmenter};
use crate::live::stats::LiveStats;
use crate::postprocess::PostprocessConfig;
use crate::runtime::{DeviceChoice, ProviderOptions};
use crate::source::Frame;

/// What `start()` takes from the properties.
pub struct Start {
    pub matte: MatteSettings,
    /// The output kind asked for (`None`: the one the background implies, also after a change while playing).
    pub fixed_kind: Option<OutputKind>,
    pub manifest: Option<PathBuf>,
    pub device: DeviceChoice,
    pub stages: StagesChoice,
    pub batch: usize,
    /// Zero: the ordered policy; else the budgeted one with this budget.
    pub budget: Duration,
}

/// Opens model `name` (a shipped name, a manifest or an ONNX file) on the allowed devices, settles the batch
/// the model allows and warms it up, so that the first frame does not pay for that.
pub fn open_model(name: &str, manifest: Option<&Path>, device: DeviceChoice, batch: usize) -> Result<(OnnxSegmenter, usize)> {
    let resolved = crate::model::resolve(name, manifest, &Default::default())?;
    let mut seg = crate::pipeline::open_segmenter(resolved, &ProviderOptions { device, ..Default::default() })?;
    let batch = seg.configure_batch(batch, batch > 1);
    seg.warm_up()?;
    Ok((seg, batch))
}

/// The negotiated input.
#[derive(Clone)]
pub struct Video {
    pub info: gst_video::VideoInfo,
    pub caps: gst::Caps,
    /// NV12 in CUDA memory (else RGBA-like in system memory).
    pub cuda: bool,
}

pub struct State {
    policy: Policy,
    place: Placement,
    /// The matte settings in effect: the properties as last applied between frames.
    pub applied: MatteSettings,
    /// The settings generation `applied` comes from.
    pub generation: u64,
    pub fixed_kind: Option<OutputKind>,
    /// The batch asked for (a new model is asked the same).
    pub batch_requested: usize,
    /// The model in use (what the GPU stages support depends on it).
    manifest: crate::model::Manifest,
    video: Option<Video>,
    /// Our CUDA context, for upstream nvcodec elements (decoded frames then stay in our context's memory).
    pub cuda: Option<GstCuda>,
    out: VecDeque<gst::Buffer>,
    index: u64,
}

// One per running element, made once: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum Policy {
    Ordered(OrderedPolicy),
    Budgeted(BudgetedPolicy),
}

struct OrderedPolicy {
    stages: Stages,
    finisher: Finisher,
    /// Consecutive frames waiting for a full batch.
    held: Vec<Frame>,
}

/// The segmenter until the first batch, then the stages: they are opened on the streaming thread, which runs
/// them (the device stages' IO binding is per thread).
#[allow(clippy::large_enum_variant)]
enum Stages {
    Closed(OnnxSegmenter, usize),
    Open(Ordered),
    Failed,
}

struct BudgetedPolicy {
    sched: MaskScheduler,
    comp: Compositor,
    /// Settings and model changes for the model thread.
    tx: Sender<ToWorker>,
    worker: std::thread::JoinHandle<()>,
    stats: Arc<LiveStats>,
    budget: Duration,
    idx: u64,
}

impl State {
    /// Loads the model and opens the stages for `s`; `generation` is that of the settings `s` was made from.
    pub fn start(s: Start, generation: u64) -> Result<State> {
        let requested = if s.budget.is_zero() { s.batch } else { 1 };
        let (seg, batch) = open_model(&s.matte.model, s.manifest.as_deref(), s.device, requested)?;
        let applied = s.matte;
        let manifest = seg.model().manifest.clone();
        let place = Placement::resolve(s.stages, seg.provider(), &manifest, &applied)?;
        let policy = if s.budget.is_zero() {
            let finisher = Finisher::open(&applied, &place)?;
            Policy::Ordered(OrderedPolicy { stages: Stages::Closed(seg, batch), finisher, held: Vec::new() })
        } else {
            let comp = Compositor::open(&applied, &place)?;
            let stats = Arc::new(LiveStats::default());
            let (tx, rx, worker) = budget::spawn_worker(seg, &applied, place.clone(), stats.clone())?;
            let sched = MaskScheduler::new(tx.clone(), rx);
            Policy::Budgeted(BudgetedPolicy { sched, comp, tx, worker, stats, budget: s.budget, idx: 0 })
        };
        // Either policy takes NV12 in CUDA memory where the stages run on the GPU.
        let cuda = match &place {
            Placement::Device(gpu) => GstCuda::new(gpu).map_err(|e| tracing::info!("{e}")).ok(),
            Placement::Host => None,
        };
        Ok(State {
            policy,
            place,
            applied,
            generation,
            fixed_kind: s.fixed_kind,
            batch_requested: requested,
            manifest,
            video: None,
            cuda,
            out: VecDeque::new(),
            index: 0,
        })
    }

    /// Ends the model thread (budgeted) and waits for it.
    pub fn shutdown(self) {
        if let Policy::Budgeted(BudgetedPolicy { sched, tx, worker, .. }) = self.policy {
            drop((sched, tx));
            let _ = worker.join();
        }
    }

    pub fn is_device(&self) -> bool {
        self.place.is_device()
    }

    pub fn is_budgeted(&self) -> bool {
        matches!(self.policy, Policy::Budgeted(_))
    }

    /// Frames per inference call (1 for the budgeted policy).
    pub fn batch(&self) -> usize {
        match &self.policy {
            Policy::Ordered(o) => o.batch(),
            Policy::Budgeted(_) => 1,
        }
    }

    pub fn set_video(&mut self, v: Video) {
        self.video = Some(v);
    }

    /// The latency this element adds: `batch - 1` frames held (ordered), or the budget a frame may wait for
    /// its mask (budgeted).
    pub fn latency(&self) -> gst::ClockTime {
        match &self.policy {
            Policy::Budgeted(b) => gst::ClockTime::from_nseconds(b.budget.as_nanos() as u64),
            Policy::Ordered(o) => {
                let fps = self.video.as_ref().map(|v| v.info.fps()).filter(|f| f.numer() > 0);
                fps.map_or(gst::ClockTime::ZERO, |f| {
                    let ns = 1_000_000_000u128 * (o.batch() as u128 - 1) * f.denom() as u128 / f.numer() as u128;
                    gst::ClockTime::from_nseconds(ns as u64)
                })
            }
        }
    }

    /// Takes one input buffer; finished frames queue up for [`State::next_output`].
    pub fn push(&mut self, buffer: gst::Buffer) -> Result<()> {
        let frame = self.frame(buffer)?;
        // Paused frames go out as they came. An NV12 frame in CUDA memory has no RGBA picture to pass on without
        // the GPU stages: the budgeted compositor converts it unmatted; the ordered policy mattes it as usual.
        if self.applied.paused {
            match (&mut self.policy, frame.cuda.is_some()) {
                (_, false) => {
                    self.drain()?;
                    self.out.push_back(passthrough(frame, self.applied.kind));
                    return Ok(());
                }
                (Policy::Budgeted(b), true) => {
                    let out = b.unmatted(frame)?;
                    self.out.push_back(out);
                    return Ok(());
                }
                (Policy::Ordered(_), true) => {}
            }
        }
        match &mut self.policy {
            Policy::Ordered(o) => {
                o.held.push(frame);
                if o.held.len() >= o.batch() {
                    self.drain()?;
                }
            }
            Policy::Budgeted(b) => {
                let out = b.run(frame, &self.applied)?;
                self.out.push_back(out);
            }
        }
        Ok(())
    }

    pub fn next_output(&mut self) -> Option<gst::Buffer> {
        self.out.pop_front()
    }

    /// Mattes the frames held for a batch (end of stream, a caps or segment change): they go out before it.
    pub fn drain(&mut self) -> Result<()> {
        let Policy::Ordered(o) = &mut self.policy else { return Ok(()) };
        if o.held.is_empty() {
            return Ok(());
        }
        let frames = std::mem::take(&mut o.held);
        let (matted, _) = o.open(&self.applied, &self.place)?.matte(frames)?;
        for m in matted {
            let (buffers, _) = o.finisher.finish(m)?;
            self.out.extend(buffers);
        }
        Ok(())
    }

    /// A flushing seek: held and finished frames are dropped, temporal state starts afresh.
    pub fn flush(&mut self) {
        self.out.clear();
        match &mut self.policy {
            Policy::Ordered(o) => {
                o.held.clear();
                if let Stages::Open(ordered) = &mut o.stages {
                    ordered.matter_mut().reset(self.applied.post);
                }
            }
            Policy::Budgeted(b) => {
                b.sched.forget();
                let _ = b.tx.send(ToWorker::Reset);
            }
        }
    }

    /// Applies settings changed while running, between frames. Returns what could not be applied (it stays as
    /// it was). Models change through [`State::swap_model`].
    pub fn apply(&mut self, mut new: MatteSettings, generation: u64) -> Vec<String> {
        self.generation = generation;
        new.model = self.applied.model.clone();
        new.fg_estimate = self.applied.fg_estimate; // not changeable while playing (the property says so)
        let mut refused = Vec::new();
        if (&new.background, new.kind) != (&self.applied.background, self.applied.kind) {
            if let Err(e) = self.set_background(&new) {
                refused.push(format!("background {} cannot be used ({e}); keeping {}", String::from(new.background.clone()), String::from(self.applied.background.clone())));
                new.background = self.applied.background.clone();
                new.kind = self.applied.kind;
            }
        }
        if let (true, Err(what)) = (self.place.is_device(), crate::engine::device_supports(&new, &self.manifest)) {
            refused.push(format!("the GPU stages in use do not do {what}; restart with stages=cpu for it"));
            new.post = self.applied.post;
        }
        if new.post != self.applied.post {
            self.set_post(new.post);
        }
        if let (true, false, Policy::Budgeted(b)) = (new.paused, self.applied.paused, &mut self.policy) {
            b.sched.forget();
        }
        self.applied = new;
        refused
    }

    fn set_background(&mut self, new: &MatteSettings) -> Result<()> {
        match &mut self.policy {
            Policy::Ordered(o) => {
                let finisher = Finisher::open(new, &self.place)?;
                if let Stages::Open(ordered) = &mut o.stages {
                    ordered.matter_mut().set_background(new)?;
                }
                o.finisher = finisher;
            }
            Policy::Budgeted(b) => b.comp = Compositor::open(new, &self.place)?,
        }
        Ok(())
    }

    fn set_post(&mut self, post: PostprocessConfig) {
        match &mut self.policy {
            Policy::Ordered(o) => {
                if let Stages::Open(ordered) = &mut o.stages {
                    ordered.matter_mut().set_post(post);
                }
            }
            Policy::Budgeted(b) => {
                let _ = b.tx.send(ToWorker::Post(post));
            }
        }
    }

    /// Switches to a model loaded off the streaming thread (`name` as the property gave it; `batch` as the new
    /// model allows). Frames held for the old batch are matted with the old model first.
    pub fn swap_model(&mut self, seg: OnnxSegmenter, name: String, batch: usize) -> Result<()> {
        self.drain()?;
        let post = self.applied.post;
        self.manifest = seg.model().manifest.clone();
        match &mut self.policy {
            Policy::Ordered(o) => match &mut o.stages {
                Stages::Open(ordered) => {
                    ordered.matter_mut().swap_model(seg, post);
                    ordered.set_batch(batch);
                }
                stages => *stages = Stages::Closed(seg, batch),
            },
            Policy::Budgeted(b) => b.tx.send(ToWorker::Swap(Box::new(seg))).map_err(|_| Error::Runtime("the model thread stopped".into()))?,
        }
        self.applied.model = name;
        Ok(())
    }

    /// The buffer as a frame for the stages: RGBA in place (swizzled from BGRA/BGRx/RGBx), or mapped CUDA memory.
    fn frame(&mut self, buffer: gst::Buffer) -> Result<Frame> {
        let v = self.video.as_ref().ok_or_else(|| Error::Gst("a buffer came before the caps".into()))?;
        let index = self.index;
        self.index += 1;
        if v.cuda {
            cuda_frame(buffer, v, index)
        } else {
            host_frame(buffer, &v.info, index)
        }
    }
}

impl OrderedPolicy {
    fn batch(&self) -> usize {
        match &self.stages {
            Stages::Closed(_, b) => *b,
            Stages::Open(o) => o.batch(),
            Stages::Failed => 1,
        }
    }

    /// The stages, opened on first use with the settings then in effect.
    fn open(&mut self, s: &MatteSettings, place: &Placement) -> Result<&mut Ordered> {
        if let Stages::Closed(..) = self.stages {
            let Stages::Closed(seg, batch) = std::mem::replace(&mut self.stages, Stages::Failed) else { unreachable!() };
            self.stages = Stages::Open(Ordered::new(Matter::open(seg, s, place)?, batch));
        }
        match &mut self.stages {
            Stages::Open(o) => Ok(o),
            _ => Err(Error::config("the matting stages failed to open for an earlier frame")),
        }
    }
}

impl BudgetedPolicy {
    /// One frame: its own mask if the model gives it within the budget, else the latest mask. An NV12 frame in
    /// CUDA memory is shared with the model thread and composited on the device into the frame's `data`.
    fn run(&mut self, mut f: Frame, s: &MatteSettings) -> Result<gst::Buffer> {
        let (idx, w, h) = (self.idx, f.width, f.height);
        self.idx += 1;
        let deadline = Instant::now() + self.budget;
        let cuda = f.cuda.take();
        let frame = match &cuda {
            Some(c) => FrameRef::Device(c),
            None => FrameRef::Host(&f.data[..]),
        };
        let (mask, _) = self.sched.mask_for(idx, frame, w, h, s.infer_every, deadline, &self.stats)?;
        if let Some(c) = cuda {
            self.comp.run_nv12(&c, mask, &mut f.data[..])?;
            return Ok(to_buffer(f, None));
        }
        let Some(mask) = mask else { return Ok(passthrough(f, s.kind)) };
        let wider = self.comp.run(&mut f.data[..], w, h, mask)?;
        Ok(to_buffer(f, wider))
    }

    /// A paused NV12 frame in CUDA memory, converted to RGBA without a matte.
    fn unmatted(&mut self, mut f: Frame) -> Result<gst::Buffer> {
        let Some(c) = f.cuda.take() else { return Err(Error::config("an unmatted CUDA frame without its CUDA memory")) };
        self.idx += 1;
        self.comp.run_nv12(&c, None, &mut f.data[..])?;
        Ok(to_buffer(f, None))
    }
}

fn host_frame(buffer: gst::Buffer, info: &gst_video::VideoInfo, index: u64) -> Result<Frame> {
    let (w, h) = (info.width(), info.height());
    let (pts, duration) = (buffer.pts(), buffer.duration());
    let buffer = packed(buffer, w, h)?;
    let mut data = buffer.into_mapped_buffer_writable().map_err(|_| Error::Gst("a frame cannot be mapped for writing".into()))?;
    to_rgba(&mut data, info.format());
    Ok(Frame { index, pts, duration, width: w, height: h, data, cuda: None })
}

/// The buffer with rows of exactly `w * 4` bytes from its start and no video meta, to be made RGBA in place.
/// A buffer with a video meta (its layout, and its format, which downstream would read) is copied into a new
/// one: the meta of a pooled buffer is locked, and rewriting it would reach its pool's owner.
fn packed(mut buffer: gst::Buffer, w: u32, h: u32) -> Result<gst::Buffer> {
    let row = w as usize * 4;
    let need = row * h as usize;
    let Some((offset, stride)) = buffer.meta::<gst_video::VideoMeta>().map(|m| (m.offset()[0], m.stride()[0] as usize)) else {
        if buffer.size() < need {
            return Err(Error::Gst(format!("a {}-byte buffer for a {w}x{h} frame", buffer.size())));
        }
        if buffer.size() > need {
            buffer.make_mut().set_size(need);
        }
        return Ok(buffer);
    };
    if stride < row || buffer.size() < offset + stride * (h as usize - 1) + row {
        return Err(Error::Gst(format!("a {}-byte buffer for a {w}x{h} frame at offset {offset}, stride {stride}", buffer.size())));
    }
    let map = buffer.map_readable().map_err(|e| Error::Gst(format!("a frame cannot be read: {e}")))?;
    let rows: Vec<u8> = (0..h as usize).flat_map(|y| &map[offset + y * stride..offset + y * stride + row]).copied().collect();
    drop(map);
    let mut copy = gst::Buffer::from_mut_slice(rows);
    let what = gst::BufferCopyFlags::FLAGS | gst::BufferCopyFlags::TIMESTAMPS;
    buffer.copy_into(copy.make_mut(), what, ..).map_err(|e| Error::Gst(format!("copying a frame: {e}")))?;
    Ok(copy)
}

/// Reorders 4-byte pixels to RGBA in place (opaque where the format has no alpha).
fn to_rgba(px: &mut [u8], format: gst_video::VideoFormat) {
    use gst_video::VideoFormat as F;
    match format {
        F::Rgbx => px.chunks_exact_mut(4).for_each(|p| p[3] = 255),
        F::Bgra => px.chunks_exact_mut(4).for_each(|p| p.swap(0, 2)),
        F::Bgrx => px.chunks_exact_mut(4).for_each(|p| {
            p.swap(0, 2);
            p[3] = 255;
        }),
        _ => {}
    }
}

/// An NV12 frame in CUDA memory: read by device pointer; `data` is where the finished RGBA frame goes.
fn cuda_frame(buffer: gst::Buffer, v: &Video, index: u64) -> Result<Frame> {
    let sample = gst::Sample::builder().buffer(&buffer).caps(&v.caps).build();
    let cuda = CudaFrame::map(&sample)?;
    let (w, h) = (cuda.width, cuda.height);
    let data = gst::Buffer::with_size((w * h * 4) as usize)
        .map_err(|e| Error::Gst(format!("cannot allocate a {w}x{h} frame: {e}")))?
        .into_mapped_buffer_writable()
        .map_err(|_| Error::Gst("a new frame cannot be mapped for writing".into()))?;
    Ok(Frame { index, pts: buffer.pts(), duration: buffer.duration(), width: w, height: h, data, cuda: Some(Arc::new(cuda)) })
}

/// The frame unmatted (paused, or no mask yet); side by side, the original on both halves (the caps say so).
fn passthrough(f: Frame, kind: OutputKind) -> gst::Buffer {
    if kind != OutputKind::SideBySide {
        return to_buffer(f, None);
    }
    let row = f.width as usize * 4;
    let wide: Vec<u8> = f.data.chunks_exact(row).flat_map(|r| r.iter().chain(r.iter()).copied()).collect();
    to_buffer(f, Some(wide))
}


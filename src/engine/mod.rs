//! The matting engine: frames in, matted frames out, written once for every front end (convert, batch, eval,
//! live and the `matteflow` GStreamer element).
//!
//! ```text
//!         ┌──────────────────── Matter ────────────────────┐          ┌─ Compositor ─┐
//! frame ─▶ preprocess ─▶ infer (ONNX Runtime) ─▶ mask steps ─▶ alpha ─▶  composite   ─▶ output frame
//!                                        (smooth, threshold, upsample,            (alpha, colour, image,
//!                                         refine, feather)                          video, blur, mask)
//! ```
//!
//! Each stage has a host (CPU) and a device (CUDA kernels, model input and output bound in device memory)
//! implementation, chosen once ([`Placement`], candle's enum-of-backends shape): [`Matter`] and [`Compositor`]
//! are enums over the two. Two scheduling policies sit on top:
//! - [`ordered`]: every frame, in order, consecutive frames batched, the device path's download overlapped with
//!   the next call (convert, batch, eval, the element by default);
//! - [`budget`]: the newest frame to the model, earlier masks reused within a time budget (live, the element with
//!   `budget-ms`).

pub mod budget;
pub mod ordered;
pub mod settings;

use std::sync::Arc;

use cudarc::driver::CudaSlice;

pub use ordered::ModelTime;
pub use settings::MatteSettings;

use crate::composite::{Background, Composite, CpuComposite};
use crate::cuda::composite::GpuCompositor;
use crate::cuda::gst_cuda::CudaFrame;
use crate::cuda::stages::{GpuStages, Pixels};
use crate::cuda::Gpu;
use crate::error::{Error, Result};
use crate::infer::{BatchClient, LowResMask, OnnxSegmenter, Segmenter};
use crate::postprocess::{CpuPostprocess, Postprocess, PostprocessConfig};
use crate::preprocess::{CpuPreprocess, ModelInput, Preprocess};
use crate::runtime::Provider;

/// Which implementation of the stages to use, as asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum StagesChoice {
    /// The GPU stages where the model runs on CUDA or TensorRT and they do what was asked; else the CPU stages.
    #[default]
    Auto,
    Cpu,
    Gpu,
}

/// Where the stages run, settled once.
#[derive(Clone)]
pub enum Placement {
    Host,
    Device(Gpu),
}

impl Placement {
    /// Settles `choice` for a model on `provider` with these settings. `Gpu` that cannot be honoured is an error
    /// naming why (said before any GPU work where it can be); `Auto` falls back to the CPU stages and says why.
    pub fn resolve(choice: StagesChoice, provider: Provider, manifest: &crate::model::Manifest, s: &MatteSettings) -> Result<Placement> {
        match choice {
            StagesChoice::Cpu => Ok(Placement::Host),
            StagesChoice::Gpu => {
                let gpu = open_gpu_for(s, Some(manifest))?;
                if !matches!(provider, Provider::Cuda | Provider::TensorRt) {
                    return Err(Error::Cuda(format!(
                        "the GPU stages need the model on the GPU, but {} runs on {}: use {}, or the CPU stages ({})",
                        manifest.name,
                        provider.name(),
                        crate::hint::DEVICE.to("cuda"),
                        crate::hint::STAGES.to("cpu")
                    )));
                }
                Ok(Placement::Device(gpu))
            }
            StagesChoice::Auto if !matches!(provider, Provider::Cuda | Provider::TensorRt) => Ok(Placement::Host),
            StagesChoice::Auto => match open_gpu_for(s, Some(manifest)) {
                Ok(gpu) => Ok(Placement::Device(gpu)),
                Err(e) => {
                    tracing::info!("preprocess, mask steps and compositing run on the CPU ({e})");
                    Ok(Placement::Host)
                }
            },
        }
    }

    pub fn is_device(&self) -> bool {
        matches!(self, Placement::Device(_))
    }
}

/// A frame-sized 8-bit alpha, where the stages that made it keep it.
pub enum Alpha {
    Host(Vec<u8>),
    Device(CudaSlice<u8>),
}

/// One frame's mask.
pub struct Mask {
    pub width: u32,
    pub height: u32,
    pub alpha: Alpha,
}

/// A frame as the budgeted policy takes it, borrowed from the caller.
#[derive(Clone, Copy)]
pub enum FrameRef<'a> {
    /// RGBA with packed rows in host memory (composited in place by [`Compositor::run`]).
    Host(&'a [u8]),
    /// NV12 the decoder left in CUDA memory (composited by [`Compositor::run_nv12`]). Shared, not copied: the
    /// model thread preprocesses it while the frame loop composites it.
    Device(&'a Arc<CudaFrame>),
}

impl FrameRef<'_> {
    /// The model thread's own handle on the frame: a copy of host pixels, another reference to a device frame.
    pub fn to_picture(self) -> Picture {
        match self {
            FrameRef::Host(rgba) => Picture::Host(rgba.to_vec()),
            FrameRef::Device(f) => Picture::Device(f.clone()),
        }
    }
}

/// A frame the model thread holds (see [`FrameRef`]).
pub enum Picture {
    Host(Vec<u8>),
    Device(Arc<CudaFrame>),
}

impl Picture {
    /// The pixels as the stages read them.
    pub fn pixels(&self) -> Pixels<'_> {
        match self {
            Picture::Host(rgba) => Pixels::Host(rgba),
            Picture::Device(f) => Pixels::Nv12(f),
        }
    }
}

/// Preprocess → infer → mask steps, on the host or the device.
pub enum Matter {
    Host(HostMatter),
    Device(DeviceMatter),
}

pub struct HostMatter {
    seg: OnnxSegmenter,
    /// With `batch`'s shared batching thread, inference of frames of several files goes there (`seg` then only
    /// describes the model).
    shared: Option<BatchClient>,
    pre: CpuPreprocess,
    post: CpuPostprocess,
    inputs: Vec<ModelInput>,
    masks: Vec<LowResMask>,
}

/// Time spent per stage in one call.
#[derive(Debug, Default, Clone, Copy)]
pub struct StepTimes {
    pub preprocess: std::time::Duration,
    pub infer: std::time::Duration,
    pub postprocess: std::time::Duration,
}

impl HostMatter {
    /// The alphas of frames of one call (RGBA `w * h * 4` each), in one inference call where the model allows.
    pub fn alphas(&mut self, frames: &[(&[u8], u32, u32)]) -> Result<(Vec<Vec<u8>>, StepTimes)> {
        use std::time::Instant;
        let k = frames.len();
        self.inputs.resize_with(k.max(self.inputs.len()), ModelInput::default);
        self.masks.resize_with(k.max(self.masks.len()), LowResMask::default);
        let t0 = Instant::now();
        for (&(rgba, w, h), input) in frames.iter().zip(self.inputs.iter_mut()) {
            self.pre.run(rgba, w, h, input)?;
        }
        let t1 = Instant::now();
        match &self.shared {
            Some(b) if k == 1 => b.run(&mut self.inputs[0], &mut self.masks[0])?,
            Some(_) => return Err(Error::config("frames of a shared batch go one at a time")),
            None => {
                let refs: Vec<&ModelInput> = self.inputs[..k].iter().collect();
                self.seg.run_batch(&refs, &mut self.masks[..k])?;
            }
        }
        let t2 = Instant::now();
        let mut alphas = Vec::with_capacity(k);
        for (i, &(rgba, w, h)) in frames.iter().enumerate() {
            let mut a = Vec::new();
            self.post.run(rgba, &self.inputs[i], &self.masks[i], w, h, &mut a)?;
            alphas.push(a);
        }
        Ok((alphas, StepTimes { preprocess: t1 - t0, infer: t2 - t1, postprocess: t2.elapsed() }))
    }
}

pub struct DeviceMatter {
    seg: OnnxSegmenter,
    stages: GpuStages,
}

impl Matter {
    /// The stages for `seg` at `place`. Create them on the thread that runs them (device IO binding is per
    /// thread).
    pub fn open(seg: OnnxSegmenter, s: &MatteSettings, place: &Placement) -> Result<Matter> {
        let manifest = seg.model().manifest.clone();
        Ok(match place {
            Placement::Host => Matter::Host(HostMatter {
                pre: CpuPreprocess::new(&manifest),
                post: CpuPostprocess::for_manifest(s.post, &manifest),
                seg,
                shared: None,
                inputs: Vec::new(),
                masks: Vec::new(),
            }),
            Placement::Device(gpu) => {
                let stages = GpuStages::new(gpu.clone(), 0, &manifest, s.kind, &s.background, &s.post)?;
                Matter::Device(DeviceMatter { seg, stages })
            }
        })
    }

    /// Sends inference to `batch`'s shared batching thread (host stages only: the device stages batch
    /// consecutive frames themselves).
    pub fn share_inference(&mut self, client: BatchClient) -> Result<()> {
        match self {
            Matter::Host(m) => {
                m.shared = Some(client);
                Ok(())
            }
            Matter::Device(_) => Err(Error::config("the GPU stages batch a file's own frames; a shared batch is for the CPU stages")),
        }
    }

    pub fn segmenter(&self) -> &OnnxSegmenter {
        match self {
            Matter::Host(h) => &h.seg,
            Matter::Device(d) => &d.seg,
        }
    }

    /// The mask of one frame: RGBA in host memory (`w * h * 4` bytes, rows packed), or — on the device only —
    /// NV12 in CUDA memory.
    pub fn mask(&mut self, frame: Pixels, w: u32, h: u32) -> Result<(Mask, StepTimes)> {
        let (alpha, t) = match self {
            Matter::Host(m) => {
                let Pixels::Host(rgba) = frame else { return Err(on_the_cpu_stages()) };
                let (mut a, t) = m.alphas(&[(rgba, w, h)])?;
                (Alpha::Host(a.pop().unwrap_or_default()), t)
            }
            Matter::Device(m) => {
                let (a, t) = m.stages.mask(&mut m.seg, frame, w, h)?;
                (Alpha::Device(a), StepTimes { preprocess: t.preprocess, infer: t.infer, postprocess: t.post_composite })
            }
        };
        Ok((Mask { width: w, height: h, alpha }, t))
    }

    /// New mask settings (temporal state starts afresh).
    pub fn set_post(&mut self, post: PostprocessConfig) {
        match self {
            Matter::Host(m) => m.post = CpuPostprocess::for_manifest(post, &m.seg.model().manifest),
            Matter::Device(m) => m.stages.set_post(&post),
        }
    }

    /// Forgets what earlier frames left behind (temporal smoothing, a recurrent model's state): for a seek or a
    /// new stream, where the next frame does not follow the last one.
    pub fn reset(&mut self, post: PostprocessConfig) {
        self.set_post(post);
        match self {
            Matter::Host(m) => m.seg.reset(),
            Matter::Device(m) => m.seg.reset(),
        }
    }

    /// A new background or output kind between frames. The host stages composite after the mask (in a
    /// [`Compositor`] or [`ordered::Finisher`], which the caller opens anew); the device's ordered path composites
    /// in its stages, here.
    pub fn set_background(&mut self, s: &MatteSettings) -> Result<()> {
        match self {
            Matter::Host(_) => Ok(()),
            Matter::Device(m) => m.stages.set_background(s.kind, &s.background),
        }
    }

    /// Switches to another model between frames (mask settings kept).
    pub fn swap_model(&mut self, seg: OnnxSegmenter, post: PostprocessConfig) {
        let manifest = seg.model().manifest.clone();
        match self {
            Matter::Host(m) => {
                m.pre = CpuPreprocess::new(&manifest);
                m.post = CpuPostprocess::for_manifest(post, &manifest);
                m.seg = seg;
            }
            Matter::Device(m) => {
                m.stages.set_manifest(&manifest);
                m.seg = seg;
            }
        }
    }
}

/// A frame decoded into CUDA memory reached the CPU stages (only the GPU stages read it).
fn on_the_cpu_stages() -> Error {
    Error::Cuda(format!(
        "a frame decoded into CUDA memory reached the CPU stages, which read host memory only: use the GPU stages ({}), \
         or decode into system memory",
        crate::hint::STAGES.to("gpu")
    ))
}

/// Composite on the host or the device: frames in host memory ([`Compositor::run`]) or, on the device, NV12
/// frames in CUDA memory ([`Compositor::run_nv12`]).
pub enum Compositor {
    Host(CpuComposite),
    Device(GpuCompositor),
}

impl Compositor {
    /// A compositor for `s`'s kind and background. On the device it takes a stream of its own, so it can run on
    /// another thread beside the model's.
    pub fn open(s: &MatteSettings, place: &Placement) -> Result<Compositor> {
        Ok(match place {
            Placement::Host => Compositor::Host(host_compositor(s)?),
            Placement::Device(gpu) => Compositor::Device(GpuCompositor::new(gpu.on_new_stream()?, s.kind, &s.background)?),
        })
    }

    /// Turns `frame` (RGBA, `w * h * 4`, host memory) into the output frame with `mask`, in place; side-by-side
    /// returns a new, wider frame.
    pub fn run(&mut self, frame: &mut [u8], w: u32, h: u32, mask: &Mask) -> Result<Option<Vec<u8>>> {
        if (mask.width, mask.height) != (w, h) {
            return Err(Error::config(format!("a {}x{} mask for a {w}x{h} frame", mask.width, mask.height)));
        }
        match (self, &mask.alpha) {
            (Compositor::Host(c), Alpha::Host(a)) => c.run(frame, w, h, a),
            (Compositor::Device(c), Alpha::Device(a)) => c.run_host(frame, w, h, a).map(|_| None),
            _ => Err(Error::Cuda("a mask made on one side (CPU/GPU) composited on the other".into())),
        }
    }

    /// Turns an NV12 `frame` in CUDA memory into the output frame in `out` (RGBA, `w * h * 4`, host memory):
    /// converted and composited with `mask` on the device, downloaded once. Without a mask (none yet, or
    /// paused) the frame goes out unmatted. Device only.
    pub fn run_nv12(&mut self, frame: &CudaFrame, mask: Option<&Mask>, out: &mut [u8]) -> Result<()> {
        let Compositor::Device(c) = self else { return Err(on_the_cpu_stages()) };
        let alpha = match mask {
            Some(m) if (m.width, m.height) != (frame.width, frame.height) => {
                return Err(Error::config(format!("a {}x{} mask for a {}x{} frame", m.width, m.height, frame.width, frame.height)))
            }
            Some(Mask { alpha: Alpha::Device(a), .. }) => Some(a),
            Some(_) => return Err(Error::Cuda("a mask made on the CPU composited on the GPU".into())),
            None => None,
        };
        c.run_nv12(frame, alpha, out)
    }
}

/// What the GPU stages do not do of `s` (output kind, model, matte options), for a front end that checks a change
/// of settings before applying it.
pub fn device_supports(s: &MatteSettings, manifest: &crate::model::Manifest) -> std::result::Result<(), String> {
    GpuStages::supports(s.kind, manifest)?;
    GpuStages::supports_options(&s.post, s.fg_estimate)
}

/// Checks that the GPU stages do what `s` asks (output kind and model, when known; matte options), then opens
/// the GPU. Each refusal names what is not supported and what to do, before any GPU work.
pub fn open_gpu_for(s: &MatteSettings, manifest: Option<&crate::model::Manifest>) -> Result<Gpu> {
    if let Some(m) = manifest {
        GpuStages::supports(s.kind, m).map_err(|w| {
            Error::Cuda(format!("the GPU stages do not handle {w} yet: use the CPU stages ({})", crate::hint::STAGES.to("cpu")))
        })?;
    }
    GpuStages::supports_options(&s.post, s.fg_estimate).map_err(|o| {
        Error::Cuda(format!(
            "the GPU stages do not apply {o} yet: use the CPU stages ({}), which do, or leave out {o}",
            crate::hint::STAGES.to("cpu")
        ))
    })?;
    GpuStages::open_gpu(0)
}

/// The host compositor for `s`'s kind, background and edge colour estimation.
pub(crate) fn host_compositor(s: &MatteSettings) -> Result<CpuComposite> {
    let mut c = CpuComposite::new(s.kind, Background::open(&s.background)?);
    c.set_foreground_estimation(s.fg_estimate);
    Ok(c)
}

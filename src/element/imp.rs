//! The `matteflow` element: properties, caps, and the BaseTransform glue around [`super::policy::State`].
//!
//! Input buffers are taken in `submit_input_buffer` (after BaseTransform's own QoS check) and finished frames
//! handed out by `generate_output`, which BaseTransform calls until it has none: with `batch` > 1 a buffer in
//! often gives no buffer out, and a full batch several. Serialized events (EOS, caps, segment) first send the
//! held frames on; a flush drops them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::glib;
use gstreamer::prelude::*;
use gstreamer::subclass::prelude::*;
use gstreamer_base as gst_base;
use gstreamer_base::prelude::*;
use gstreamer_base::subclass::base_transform::GenerateOutputSuccess;
use gstreamer_base::subclass::prelude::*;
use gstreamer_video as gst_video;

use super::caps;
use super::policy::{self, Start, State, Video};
use crate::config::OutputKind;
use crate::engine::{MatteSettings, StagesChoice};
use crate::infer::OnnxSegmenter;
use crate::postprocess::PostprocessConfig;
use crate::runtime::DeviceChoice;

static CAT: LazyLock<gst::DebugCategory> =
    LazyLock::new(|| gst::DebugCategory::new("matteflow", gst::DebugColorFlags::empty(), Some("matteflow video matting")));

const DEFAULT_MODEL: &str = crate::model::DEFAULT_MODEL;
const DEFAULT_DEVICE: &str = "auto";
const DEFAULT_BACKGROUND: &str = "blur=16";
const DEFAULT_SMOOTH: f32 = 0.0;
const DEFAULT_MOTION_THRESHOLD: f32 = 0.03;
const DEFAULT_FEATHER: u32 = 0;
const DEFAULT_REFINE: bool = false;
const DEFAULT_FG_ESTIMATE: bool = false;
const DEFAULT_BATCH: u32 = 1;
const DEFAULT_INFER_EVERY: u32 = 1;
const DEFAULT_BUDGET_MS: u32 = 0;
const DEFAULT_PAUSED: bool = false;

/// Properties applied between frames while playing; the others take effect at the next start.
const LIVE: [&str; 9] = ["background", "smooth", "motion-threshold", "threshold", "feather", "refine", "infer-every", "paused", "model"];

#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstMatteFlowOutputKind")]
pub enum KindProp {
    #[enum_value(name = "Auto: alpha for background=transparent, else composite", nick = "auto")]
    Auto,
    #[enum_value(name = "Alpha: the frame with the matte as its alpha channel", nick = "alpha")]
    Alpha,
    #[enum_value(name = "Composite: the subject over the background", nick = "composite")]
    Composite,
    #[enum_value(name = "Mask: the matte, white on black", nick = "mask")]
    Mask,
    #[enum_value(name = "Side by side: original left, composite right (twice as wide)", nick = "side-by-side")]
    SideBySide,
}

impl KindProp {
    /// The kind asked for; `None`: the one the background implies.
    fn fixed(self) -> Option<OutputKind> {
        match self {
            KindProp::Auto => None,
            KindProp::Alpha => Some(OutputKind::Alpha),
            KindProp::Composite => Some(OutputKind::Composite),
            KindProp::Mask => Some(OutputKind::Mask),
            KindProp::SideBySide => Some(OutputKind::SideBySide),
        }
    }
}

#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstMatteFlowStages")]
pub enum StagesProp {
    #[enum_value(name = "Auto: the GPU stages where the model runs on CUDA and they do what was asked", nick = "auto")]
    Auto,
    #[enum_value(name = "CPU: preprocess, mask steps and compositing on the CPU", nick = "cpu")]
    Cpu,
    #[enum_value(name = "GPU: on the GPU (an error where they cannot run)", nick = "gpu")]
    Gpu,
}

impl From<StagesProp> for StagesChoice {
    fn from(s: StagesProp) -> Self {
        match s {
            StagesProp::Auto => StagesChoice::Auto,
            StagesProp::Cpu => StagesChoice::Cpu,
            StagesProp::Gpu => StagesChoice::Gpu,
        }
    }
}

#[derive(Debug, Clone)]
struct Settings {
    /// The engine's matte settings (`kind` is settled from `kind` below at start).
    matte: MatteSettings,
    kind: KindProp,
    manifest: Option<PathBuf>,
    device: String,
    stages: StagesProp,
    batch: u32,
    budget_ms: u32,
    /// Values that did not parse while stopped, by property: `start()` refuses to run with them.
    invalid: BTreeMap<String, String>,
    /// Bumped by every change; the streaming thread applies a new generation between frames.
    generation: u64,
}

impl Default for Settings {
    fn default() -> Self {
        let post = PostprocessConfig {
            smooth: DEFAULT_SMOOTH,
            motion_threshold: DEFAULT_MOTION_THRESHOLD,
            threshold: None,
            refine: DEFAULT_REFINE,
            feather: DEFAULT_FEATHER,
        };
        let background = DEFAULT_BACKGROUND.parse().expect("the default background parses");
        Settings {
            matte: MatteSettings {
                kind: MatteSettings::kind_for(&background),
                background,
                post,
                fg_estimate: DEFAULT_FG_ESTIMATE,
                paused: DEFAULT_PAUSED,
                infer_every: DEFAULT_INFER_EVERY,
                model: DEFAULT_MODEL.into(),
            },
            kind: KindProp::Auto,
            manifest: None,
            device: DEFAULT_DEVICE.into(),
            stages: StagesProp::Auto,
            batch: DEFAULT_BATCH,
            budget_ms: DEFAULT_BUDGET_MS,
            invalid: BTreeMap::new(),
            generation: 0,
        }
    }
}

impl Settings {
    /// The matte settings with the output kind settled (`fixed`, else what the background implies).
    fn matte_with(&self, fixed: Option<OutputKind>) -> MatteSettings {
        let mut m = self.matte.clone();
        m.kind = fixed.unwrap_or_else(|| MatteSettings::kind_for(&m.background));
        m
    }

    /// Sets property `name`; a value that does not parse is refused with the reason.
    fn set(&mut self, name: &str, value: &glib::Value) -> Result<(), String> {
        let text = || value.get::<Option<String>>().ok().flatten().unwrap_or_default();
        let post = &mut self.matte.post;
        match name {
            "model" if text().is_empty() => return Err("model must name a model (e.g. selfie)".into()),
            "model" => self.matte.model = text(),
            "manifest" => self.manifest = Some(text()).filter(|t| !t.is_empty()).map(PathBuf::from),
            "device" => {
                text().parse::<DeviceChoice>()?;
                self.device = text();
            }
            "stages" => self.stages = value.get().expect("type checked upstream"),
            "background" => self.matte.background = text().parse()?,
            "output-kind" => self.kind = value.get().expect("type checked upstream"),
            "smooth" => post.smooth = value.get().expect("type checked upstream"),
            "motion-threshold" => post.motion_threshold = value.get().expect("type checked upstream"),
            "threshold" => post.threshold = parse_threshold(&text())?,
            "feather" => post.feather = value.get().expect("type checked upstream"),
            "refine" => post.refine = value.get().expect("type checked upstream"),
            "fg-estimate" => self.matte.fg_estimate = value.get().expect("type checked upstream"),
            "batch" => self.batch = value.get().expect("type checked upstream"),
            "infer-every" => self.matte.infer_every = value.get().expect("type checked upstream"),
            "budget-ms" => self.budget_ms = value.get().expect("type checked upstream"),
            "paused" => self.matte.paused = value.get().expect("type checked upstream"),
            _ => unimplemented!("property {name}"),
        }
        Ok(())
    }

    fn get(&self, name: &str) -> glib::Value {
        let post = &self.matte.post;
        match name {
            "model" => self.matte.model.to_value(),
            "manifest" => self.manifest.as_ref().map(|p| p.display().to_string()).to_value(),
            "device" => self.device.to_value(),
            "stages" => self.stages.to_value(),
            "background" => String::from(self.matte.background.clone()).to_value(),
            "output-kind" => self.kind.to_value(),
            "smooth" => post.smooth.to_value(),
            "motion-threshold" => post.motion_threshold.to_value(),
            "threshold" => post.threshold.map(|(lo, hi)| format!("{lo},{hi}")).to_value(),
            "feather" => post.feather.to_value(),
            "refine" => post.refine.to_value(),
            "fg-estimate" => self.matte.fg_estimate.to_value(),
            "batch" => self.batch.to_value(),
            "infer-every" => self.matte.infer_every.to_value(),
            "budget-ms" => self.budget_ms.to_value(),
            "paused" => self.matte.paused.to_value(),
            _ => unimplemented!("property {name}"),
        }
    }
}

/// "lo,hi" (two values from 0 to 1, the first smaller) or empty for none.
fn parse_threshold(s: &str) -> Result<Option<(f32, f32)>, String> {
    if s.trim().is_empty() {
        return Ok(None);
    }
    let bad = || format!("threshold '{s}' must be \"lo,hi\" with 0 <= lo < hi <= 1 (e.g. 0.2,0.8), or empty for none");
    let (lo, hi) = s.split_once(',').ok_or_else(bad)?;
    let (lo, hi): (f32, f32) = (lo.trim().parse().map_err(|_| bad())?, hi.trim().parse().map_err(|_| bad())?);
    if !(0.0..=1.0).contains(&lo) || !(0.0..=1.0).contains(&hi) || lo >= hi {
        return Err(bad());
    }
    Ok(Some((lo, hi)))
}

/// A model being loaded off the streaming thread: the name wanted now, and a finished load for it.
#[derive(Default)]
struct ModelLoad {
    wanted: Option<String>,
    ready: Option<(String, crate::Result<(OnnxSegmenter, usize)>)>,
}

#[derive(Default)]
pub struct MatteFlow {
    settings: Mutex<Settings>,
    state: Mutex<Option<State>>,
    loading: Arc<Mutex<ModelLoad>>,
    running: AtomicBool,
    /// What caps queries need without waiting for a frame to finish: the latency added (ns), whether the
    /// output is side by side, and our CUDA context when NV12 in CUDA memory is taken.
    latency_ns: AtomicU64,
    side_by_side: AtomicBool,
    cuda_context: Mutex<Option<gst::Context>>,
}

#[glib::object_subclass]
impl ObjectSubclass for MatteFlow {
    const NAME: &'static str = "GstMatteFlow";
    type Type = super::MatteFlow;
    type ParentType = gst_base::BaseTransform;
}

impl ObjectImpl for MatteFlow {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(property_specs);
        PROPERTIES.as_ref()
    }

    fn constructed(&self) {
        self.parent_constructed();
        self.obj().set_qos(true);
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let name = pspec.name();
        let running = self.running.load(Ordering::SeqCst);
        let mut s = self.settings.lock().unwrap();
        if let Err(why) = s.set(name, value) {
            drop(s);
            if running {
                gst::element_imp_warning!(self, gst::LibraryError::Settings, ("{}; the previous value stays", why));
            } else {
                gst::warning!(CAT, imp = self, "{why}");
                self.settings.lock().unwrap().invalid.insert(name.into(), why);
            }
            return;
        }
        s.invalid.remove(name);
        s.generation += 1;
        let shown = s.get(name).serialize().map(|v| v.to_string()).unwrap_or_default();
        drop(s);
        match (running, LIVE.contains(&name)) {
            (true, false) => gst::warning!(CAT, imp = self, "{name} = {shown} takes effect at the next start (READY → PAUSED)"),
            (true, true) => gst::info!(CAT, imp = self, "{name} = {shown}, applied from the next frame"),
            (false, _) => gst::info!(CAT, imp = self, "{name} = {shown}"),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        self.settings.lock().unwrap().get(pspec.name())
    }
}

fn property_specs() -> Vec<glib::ParamSpec> {
    vec![
        glib::ParamSpecString::builder("model")
            .nick("Model")
            .blurb("A shipped model (selfie, selfie-landscape, isnet, birefnet-*, …: `matteflow models`), a manifest .toml or an .onnx file. While playing, the new model loads off the streaming thread and is swapped in between frames")
            .default_value(Some(DEFAULT_MODEL))
            .mutable_playing()
            .build(),
        glib::ParamSpecString::builder("manifest")
            .nick("Manifest")
            .blurb("A manifest .toml describing the .onnx file given as model (empty: read from the model)")
            .mutable_ready()
            .build(),
        glib::ParamSpecString::builder("device")
            .nick("Device")
            .blurb("Where the model runs: auto (TensorRT, CUDA, else CPU), cpu, cuda or cuda:N")
            .default_value(Some(DEFAULT_DEVICE))
            .mutable_ready()
            .build(),
        glib::ParamSpecEnum::builder_with_default("stages", StagesProp::Auto)
            .nick("Stages")
            .blurb("Where preprocess, mask steps and compositing run")
            .mutable_ready()
            .build(),
        glib::ParamSpecString::builder("background")
            .nick("Background")
            .blurb("What goes behind the subject: blur, blur=RADIUS, a colour (green, blue, black, white, grey, #RRGGBB), transparent, or an image or video file")
            .default_value(Some(DEFAULT_BACKGROUND))
            .mutable_playing()
            .build(),
        glib::ParamSpecEnum::builder_with_default("output-kind", KindProp::Auto)
            .nick("Output kind")
            .blurb("What the output frames show")
            .mutable_ready()
            .build(),
        glib::ParamSpecFloat::builder("smooth")
            .nick("Temporal smoothing")
            .blurb("Weight of the previous matte where the picture is still, 0 (off) to 0.95")
            .minimum(0.0)
            .maximum(0.95)
            .default_value(DEFAULT_SMOOTH)
            .mutable_playing()
            .build(),
        glib::ParamSpecFloat::builder("motion-threshold")
            .nick("Motion threshold")
            .blurb("Mean change of a pixel between frames (0 to 1) at which smoothing stops, so moving edges follow at once")
            .minimum(0.0)
            .maximum(1.0)
            .default_value(DEFAULT_MOTION_THRESHOLD)
            .mutable_playing()
            .build(),
        glib::ParamSpecString::builder("threshold")
            .nick("Threshold")
            .blurb("\"lo,hi\": alpha at or below lo becomes 0, at or above hi 1 (empty: off)")
            .mutable_playing()
            .build(),
        glib::ParamSpecUInt::builder("feather")
            .nick("Feather")
            .blurb("Box radius of the edge feather, pixels (0: off)")
            .maximum(256)
            .default_value(DEFAULT_FEATHER)
            .mutable_playing()
            .build(),
        glib::ParamSpecBoolean::builder("refine")
            .nick("Refine")
            .blurb("Guided-filter refinement of the matte against the frame (snaps edges to image edges)")
            .default_value(DEFAULT_REFINE)
            .mutable_playing()
            .build(),
        glib::ParamSpecBoolean::builder("fg-estimate")
            .nick("Foreground estimation")
            .blurb("Estimate the subject's true colour at soft edges so the old background does not show as a halo")
            .default_value(DEFAULT_FG_ESTIMATE)
            .mutable_ready()
            .build(),
        glib::ParamSpecUInt::builder("batch")
            .nick("Batch")
            .blurb("Consecutive frames per inference call (budget-ms 0 only; adds batch-1 frames of latency); the model may allow fewer")
            .minimum(1)
            .maximum(64)
            .default_value(DEFAULT_BATCH)
            .mutable_ready()
            .build(),
        glib::ParamSpecUInt::builder("infer-every")
            .nick("Infer every")
            .blurb("With budget-ms: run the model on every Nth frame only, reusing the last matte in between")
            .minimum(1)
            .maximum(1000)
            .default_value(DEFAULT_INFER_EVERY)
            .mutable_playing()
            .build(),
        glib::ParamSpecUInt::builder("budget-ms")
            .nick("Budget (ms)")
            .blurb("0: every frame matted in order. More: live mode, a frame waits at most this long for its own matte, else the latest one is used (the model never holds the stream up)")
            .maximum(10_000)
            .default_value(DEFAULT_BUDGET_MS)
            .mutable_ready()
            .build(),
        glib::ParamSpecBoolean::builder("paused")
            .nick("Paused")
            .blurb("Frames pass through unmatted")
            .default_value(DEFAULT_PAUSED)
            .mutable_playing()
            .build(),
    ]
}

impl GstObjectImpl for MatteFlow {}

impl ElementImpl for MatteFlow {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static META: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "Video matting",
                "Filter/Effect/Video",
                "Separates people from the background with a segmentation model (ONNX Runtime) and puts them over a blur, colour, image or video, or outputs alpha or the matte",
                "matteflow developers",
            )
        });
        Some(&*META)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            let sink = gst::PadTemplate::new("sink", gst::PadDirection::Sink, gst::PadPresence::Always, &caps::sink_template());
            let src = gst::PadTemplate::new("src", gst::PadDirection::Src, gst::PadPresence::Always, &caps::src_template());
            vec![sink.expect("sink template"), src.expect("src template")]
        });
        TEMPLATES.as_ref()
    }
}

impl MatteFlow {
    fn settings(&self) -> Settings {
        self.settings.lock().unwrap().clone()
    }

    /// Before start: whether the GPU stages may take frames in CUDA memory here (the stages and device allow it,
    /// a CUDA driver and GStreamer's nvcodec are there). `start()` settles it.
    fn may_take_cuda(&self) -> bool {
        let s = self.settings.lock().unwrap();
        let allowed = s.stages != StagesProp::Cpu && !s.device.trim().eq_ignore_ascii_case("cpu");
        drop(s);
        allowed && crate::cuda::driver_present() && gst::ElementFactory::find("cudaupload").is_some()
    }

    /// Side by side doubles the width: the kind settled at start, or the one the settings ask for before it.
    fn is_side_by_side(&self) -> bool {
        if self.running.load(Ordering::SeqCst) {
            return self.side_by_side.load(Ordering::SeqCst);
        }
        self.settings.lock().unwrap().kind == KindProp::SideBySide
    }

    /// Applies settings changed since the last frame and a model that finished loading.
    fn follow(&self, st: &mut State) {
        let s = {
            let s = self.settings.lock().unwrap();
            if s.generation == st.generation && s.matte.model == st.applied.model {
                return;
            }
            s.clone()
        };
        if s.generation != st.generation {
            for why in st.apply(s.matte_with(st.fixed_kind), s.generation) {
                gst::element_imp_warning!(self, gst::LibraryError::Settings, ("{}", why));
            }
        }
        self.follow_model(st, &s);
    }

    fn follow_model(&self, st: &mut State, s: &Settings) {
        let mut load = self.loading.lock().unwrap();
        if s.matte.model == st.applied.model {
            *load = ModelLoad::default();
            return;
        }
        if load.wanted.as_deref() != Some(s.matte.model.as_str()) {
            *load = ModelLoad { wanted: Some(s.matte.model.clone()), ready: None };
            if let Err(e) = self.spawn_load(s, st.batch_requested) {
                load.ready = Some((s.matte.model.clone(), Err(e)));
            }
            return;
        }
        let Some((name, loaded)) = load.ready.take() else { return };
        load.wanted = None;
        drop(load);
        let old = st.applied.model.clone();
        match loaded.and_then(|(seg, batch)| st.swap_model(seg, name.clone(), batch)) {
            Ok(()) => {
                gst::info!(CAT, imp = self, "now matting with model {name} (batch {})", st.batch());
                self.update_latency(st);
            }
            Err(e) => {
                gst::element_imp_warning!(self, gst::LibraryError::Settings, ("model '{}' cannot be used: {}; still matting with '{}'", name, e, old));
                let mut s = self.settings.lock().unwrap();
                if s.matte.model == name {
                    s.matte.model = old;
                }
            }
        }
    }

    /// Loads the model `s` names on a thread of its own; the streaming thread swaps it in when it is ready.
    fn spawn_load(&self, s: &Settings, batch: usize) -> crate::Result<()> {
        let (name, manifest, device) = (s.matte.model.clone(), s.manifest.clone(), s.device.parse().unwrap_or_default());
        let loading = self.loading.clone();
        gst::info!(CAT, imp = self, "loading model {name}");
        std::thread::Builder::new()
            .name("mf-model-load".into())
            .spawn(move || {
                let loaded = policy::open_model(&name, manifest.as_deref(), device, batch);
                let mut load = loading.lock().unwrap();
                // A load superseded by another model change (or a stop) is dropped here.
                if load.wanted.as_deref() == Some(name.as_str()) {
                    load.ready = Some((name, loaded));
                }
            })
            .map(drop)
            .map_err(|e| crate::Error::io("starting the model loading thread", e))
    }

    /// Records the latency this element adds now and tells the pipeline when it changed.
    fn update_latency(&self, st: &State) {
        let ns = st.latency().nseconds();
        if self.latency_ns.swap(ns, Ordering::SeqCst) != ns {
            gst::info!(CAT, imp = self, "latency {}", gst::ClockTime::from_nseconds(ns));
            let _ = self.obj().post_message(gst::message::Latency::builder().src(&*self.obj()).build());
        }
    }

    /// Sends the frames held for a batch on, ahead of a serialized event.
    fn drain(&self) -> Result<(), gst::FlowError> {
        let mut out = Vec::new();
        if let Some(st) = self.state.lock().unwrap().as_mut() {
            st.drain().map_err(|e| self.stream_error(e))?;
            out.extend(std::iter::from_fn(|| st.next_output()));
        }
        for b in out {
            self.obj().src_pad().push(b)?;
        }
        Ok(())
    }

    fn stream_error(&self, e: crate::Error) -> gst::FlowError {
        gst::element_imp_error!(self, gst::StreamError::Failed, ("matteflow: {}", e));
        gst::FlowError::Error
    }

    fn latency_query(&self, query: &mut gst::QueryRef) -> bool {
        if !BaseTransformImplExt::parent_query(self, gst::PadDirection::Src, query) {
            return false;
        }
        if let gst::QueryViewMut::Latency(q) = query.view_mut() {
            let ours = gst::ClockTime::from_nseconds(self.latency_ns.load(Ordering::SeqCst));
            let (live, min, max) = q.result();
            q.set(live, min + ours, max.map(|m| m + ours));
            gst::debug!(CAT, imp = self, "latency: upstream {min} (live {live}) + ours {ours}");
        }
        true
    }
}

/// The start failure as a GStreamer error, naming what failed and what to do.
fn start_error(s: &Settings, e: crate::Error) -> gst::ErrorMessage {
    use crate::Error as E;
    match &e {
        E::Model { .. } | E::ManifestMismatch { .. } | E::Manifest { .. } => {
            let shipped: Vec<&str> = crate::model::BUILTIN_MANIFESTS.iter().map(|(n, _)| *n).collect();
            gst::error_msg!(
                gst::LibraryError::Settings,
                ("matteflow cannot load model '{}': {}", s.matte.model, e),
                ["Set the model property to a shipped model ({}), a manifest .toml or an .onnx file", shipped.join(", ")]
            )
        }
        E::Runtime(_) => gst::error_msg!(gst::LibraryError::Init, ("matteflow: {}", e)),
        _ => gst::error_msg!(gst::LibraryError::Settings, ("matteflow cannot start: {}", e)),
    }
}

impl BaseTransformImpl for MatteFlow {
    const MODE: gst_base::subclass::BaseTransformMode = gst_base::subclass::BaseTransformMode::NeverInPlace;
    const PASSTHROUGH_ON_SAME_CAPS: bool = false;
    const TRANSFORM_IP_ON_PASSTHROUGH: bool = false;

    fn start(&self) -> Result<(), gst::ErrorMessage> {
        let s = self.settings();
        if let Some((name, why)) = s.invalid.iter().next() {
            return Err(gst::error_msg!(gst::LibraryError::Settings, ("matteflow: property {}: {}", name, why)));
        }
        let fixed_kind = s.kind.fixed();
        let matte = s.matte_with(fixed_kind);
        matte.validate().map_err(|e| gst::error_msg!(gst::LibraryError::Settings, ("matteflow: {}", e)))?;
        let start = Start {
            matte,
            fixed_kind,
            manifest: s.manifest.clone(),
            device: s.device.parse().unwrap_or_default(),
            stages: s.stages.into(),
            batch: s.batch as usize,
            budget: Duration::from_millis(s.budget_ms as u64),
        };
        let t = Instant::now();
        let state = State::start(start, s.generation).map_err(|e| start_error(&s, e))?;
        gst::info!(
            CAT,
            imp = self,
            "model {} ready in {:.0?}: {} policy, batch {}, {} stages",
            s.matte.model,
            t.elapsed(),
            if state.is_budgeted() { "budgeted" } else { "ordered" },
            state.batch(),
            if state.is_device() { "GPU" } else { "CPU" }
        );
        self.side_by_side.store(state.applied.kind == OutputKind::SideBySide, Ordering::SeqCst);
        *self.cuda_context.lock().unwrap() = state.cuda.as_ref().map(|c| c.context().clone());
        self.latency_ns.store(state.latency().nseconds(), Ordering::SeqCst);
        *self.loading.lock().unwrap() = ModelLoad::default();
        *self.state.lock().unwrap() = Some(state);
        self.running.store(true, Ordering::SeqCst);
        Ok(())
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        self.running.store(false, Ordering::SeqCst);
        if let Some(state) = self.state.lock().unwrap().take() {
            state.shutdown();
        }
        *self.loading.lock().unwrap() = ModelLoad::default();
        *self.cuda_context.lock().unwrap() = None;
        gst::info!(CAT, imp = self, "stopped");
        Ok(())
    }

    fn transform_caps(&self, direction: gst::PadDirection, caps: &gst::Caps, filter: Option<&gst::Caps>) -> Option<gst::Caps> {
        // Started: CUDA memory exactly when the GPU stages run. Not yet started (gst-launch links the elements in
        // NULL state): where they may run, so that `nvh264dec ! matteflow device=cuda` links at all.
        let started_cuda = self.cuda_context.lock().unwrap().is_some();
        let cuda = started_cuda || (!self.running.load(Ordering::SeqCst) && self.may_take_cuda());
        let out = caps::transform(direction, caps, filter, self.is_side_by_side(), cuda);
        gst::debug!(CAT, imp = self, "{direction:?} {caps} → {out}");
        Some(out)
    }

    fn fixate_caps(&self, direction: gst::PadDirection, caps: &gst::Caps, othercaps: gst::Caps) -> gst::Caps {
        if direction == gst::PadDirection::Sink {
            return caps::fixate_output(caps, othercaps, self.is_side_by_side());
        }
        self.parent_fixate_caps(direction, caps, othercaps)
    }

    fn set_caps(&self, incaps: &gst::Caps, outcaps: &gst::Caps) -> Result<(), gst::LoggableError> {
        let info = gst_video::VideoInfo::from_caps(incaps).map_err(|_| gst::loggable_error!(CAT, "input caps {incaps} are not raw video"))?;
        let out = gst_video::VideoInfo::from_caps(outcaps).map_err(|_| gst::loggable_error!(CAT, "output caps {outcaps} are not raw video"))?;
        let cuda = incaps.features(0).is_some_and(|f| f.contains(crate::cuda::gst_cuda::CAPS_FEATURE_CUDA));
        let mut guard = self.state.lock().unwrap();
        let st = guard.as_mut().ok_or_else(|| gst::loggable_error!(CAT, "caps before the element started"))?;
        let want = crate::composite::output_size(st.applied.kind, info.width(), info.height());
        if (out.width(), out.height()) != want {
            return Err(gst::loggable_error!(CAT, "output {}x{} for input {}x{}: expected {}x{}", out.width(), out.height(), info.width(), info.height(), want.0, want.1));
        }
        st.set_video(Video { info, caps: incaps.clone(), cuda });
        self.update_latency(st);
        gst::info!(CAT, imp = self, "{incaps} → {outcaps}");
        Ok(())
    }

    fn query(&self, direction: gst::PadDirection, query: &mut gst::QueryRef) -> bool {
        if direction == gst::PadDirection::Src && matches!(query.view(), gst::QueryView::Latency(_)) {
            return self.latency_query(query);
        }
        if let gst::QueryViewMut::Context(c) = query.view_mut() {
            if c.context_type() == "gst.cuda.context" {
                if let Some(ctx) = self.cuda_context.lock().unwrap().as_ref() {
                    c.set_context(ctx);
                    return true;
                }
            }
        }
        BaseTransformImplExt::parent_query(self, direction, query)
    }

    fn propose_allocation(&self, decide_query: Option<&gst::query::Allocation>, query: &mut gst::query::Allocation) -> Result<(), gst::LoggableError> {
        // Nothing is proposed for system memory (frames are read as packed rows, and upstream metas would not
        // describe the RGBA output); decoders' CUDA buffers are read by their plane offsets and pitch, which only
        // GstVideoMeta tells.
        let _ = decide_query;
        let cuda = query.get().0.and_then(|c| c.features(0)).is_some_and(|f| f.contains(crate::cuda::gst_cuda::CAPS_FEATURE_CUDA));
        if cuda {
            query.add_allocation_meta::<gst_video::VideoMeta>(None);
        }
        Ok(())
    }

    fn sink_event(&self, event: gst::Event) -> bool {
        match event.view() {
            gst::EventView::FlushStop(_) => {
                if let Some(st) = self.state.lock().unwrap().as_mut() {
                    st.flush();
                }
            }
            _ if event.is_serialized() => {
                if let Err(e) = self.drain() {
                    gst::debug!(CAT, imp = self, "held frames not sent before {:?}: {e:?}", event.type_());
                }
            }
            _ => {}
        }
        self.parent_sink_event(event)
    }

    fn submit_input_buffer(&self, is_discont: bool, inbuf: gst::Buffer) -> Result<gst::FlowSuccess, gst::FlowError> {
        // BaseTransform's own submit checks negotiation and QoS (a late buffer is dropped there).
        let submitted = self.parent_submit_input_buffer(is_discont, inbuf)?;
        let Some(buffer) = self.take_queued_buffer() else { return Ok(submitted) };
        let mut guard = self.state.lock().unwrap();
        let st = guard.as_mut().ok_or(gst::FlowError::Flushing)?;
        self.follow(st);
        st.push(buffer).map_err(|e| self.stream_error(e))?;
        Ok(gst::FlowSuccess::Ok)
    }

    fn generate_output(&self) -> Result<GenerateOutputSuccess, gst::FlowError> {
        let next = self.state.lock().unwrap().as_mut().and_then(State::next_output);
        Ok(next.map_or(GenerateOutputSuccess::NoOutput, GenerateOutputSuccess::Buffer))
    }
}

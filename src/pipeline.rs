//! The conversion pipeline: a file in, a matted file out. GStreamer decodes and encodes on its own threads;
//! between them four threads of ours, joined by bounded channels so memory stays bounded and stages overlap.
//! The frame work is the engine's ordered policy ([`crate::engine::ordered`]):
//!
//! ```text
//! uridecodebin ─ videoconvert ─ appsink ─▶ [mf-pull] ─▶ [mf-infer: Ordered::matte] ─▶ [mf-finish: Finisher::finish] ─┐
//!      │                                    bounded            bounded                       bounded    [mf-push] ◀┘
//!      └──────────── audio ──────────────────────────────────────────────────▶ mux ◀─ encoder ◀─ appsrc ◀─────┘
//! ```
//!
//! Why appsink/appsrc and not `… ! matteflow ! …` with the element: the two steps of an ordered call run on two
//! threads here (on the GPU the download of one call's frames overlaps the next call's inference; on the CPU the
//! composite overlaps the next inference), which an element's single streaming thread cannot do; and the
//! conversion needs the frame counts, stage times and stall watchdog the report gives.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;

use crate::config::{ConvertConfig, Format};
use crate::engine::ordered::{Finisher, Matted, Ordered};
use crate::engine::{Matter, MatteSettings, Placement};
use crate::error::{Error, Result};
use crate::images::ImageInput;
use crate::infer::{BatchClient, OnnxSegmenter, Segmenter};
use crate::model::ResolvedModel;
use crate::runtime::ProviderOptions;
use crate::sink::{self, StagedOutput};
use crate::source::{self, Frame, StreamInfo};
use crate::stats::{Report, StageTimes};

/// What the caller sees while a conversion runs.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub frames: u64,
    /// Estimated from the container's duration and frame rate, when known.
    pub total: Option<u64>,
}

/// Knobs for a conversion besides the config: cancellation and progress reporting.
pub struct RunControl<'a> {
    pub cancel: Arc<AtomicBool>,
    pub progress: Option<&'a mut dyn FnMut(Progress)>,
    /// Keep what was decoded when the input ends early (truncated files) instead of failing.
    pub allow_short: bool,
}

impl Default for RunControl<'_> {
    fn default() -> Self {
        RunControl { cancel: Arc::new(AtomicBool::new(false)), progress: None, allow_short: false }
    }
}

/// State the threads share.
struct Shared {
    stop: AtomicBool,
    /// The demuxer gives the video no frame rate: timestamps vary (set before the first frame is decoded).
    variable_rate: Arc<AtomicBool>,
    error: Mutex<Option<Error>>,
    frames_out: AtomicU64,
    duration_ns: AtomicU64,
    last_end_ns: AtomicU64,
    info: Mutex<Option<StreamInfo>>,
    times: Mutex<StageTimes>,
}

impl Shared {
    fn new() -> Self {
        Shared {
            stop: AtomicBool::new(false),
            variable_rate: Default::default(),
            error: Mutex::new(None),
            frames_out: AtomicU64::new(0),
            duration_ns: AtomicU64::new(u64::MAX),
            last_end_ns: AtomicU64::new(0),
            info: Mutex::new(None),
            times: Mutex::new(StageTimes::default()),
        }
    }

    fn fail(&self, e: Error) {
        let mut g = self.error.lock().unwrap();
        if g.is_none() {
            *g = Some(e);
        }
        self.stop.store(true, Ordering::SeqCst);
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// Opens the model with the chosen providers. Separate so batch jobs can share one session later.
pub fn open_segmenter(model: ResolvedModel, popts: &ProviderOptions) -> Result<OnnxSegmenter> {
    OnnxSegmenter::open(model, popts)
}

/// Converts one input to one output. On any failure or cancellation the temporary output is removed and
/// nothing is left at the destination.
pub fn convert(cfg: &ConvertConfig, segmenter: OnnxSegmenter, ctl: RunControl<'_>) -> Result<Report> {
    convert_with(cfg, segmenter, None, ctl)
}

/// [`convert`], with inference done by a batching thread shared with other conversions
/// ([`crate::infer::BatchServer`]); `segmenter` only describes the model.
pub fn convert_shared(cfg: &ConvertConfig, segmenter: OnnxSegmenter, batcher: BatchClient, ctl: RunControl<'_>) -> Result<Report> {
    convert_with(cfg, segmenter, Some(batcher), ctl)
}

/// What a conversion settled before anything runs.
struct Plan {
    format: Format,
    settings: MatteSettings,
    place: Placement,
    uri: String,
    staged: StagedOutput,
    model_name: String,
    provider: crate::runtime::Provider,
    /// A photo or an animated image, decoded by [`crate::images`] instead of GStreamer.
    image: Option<ImageInput>,
}

impl Plan {
    fn settle(cfg: &ConvertConfig, segmenter: &OnnxSegmenter, shared_batch: bool) -> Result<Plan> {
        let (format, settings) = cfg.resolve()?;
        let uri = source::input_uri(&cfg.input)?;
        let image = if cfg.input.contains("://") { None } else { ImageInput::sniff(std::path::Path::new(&cfg.input)) };
        if format.is_image() && image.is_none() {
            return Err(Error::Output {
                path: cfg.output.clone(),
                reason: format!(
                    "is one {}, but {} is a video: write PNG frames (-o frames/), .mov or .mkv (alpha), or .mp4/.webm",
                    format.describe(),
                    cfg.input
                ),
            });
        }
        if let Some(i) = image {
            tracing::info!("{} is {} {}", cfg.input, if i.animated { "an" } else { "a" }, i.describe());
        }
        if let (Ok(a), Ok(b)) = (std::fs::canonicalize(&cfg.input), std::fs::canonicalize(&cfg.output)) {
            if a == b {
                return Err(Error::Output { path: cfg.output.clone(), reason: "is the input file; choose another name".into() });
            }
        }
        let manifest = &segmenter.model().manifest;
        crate::composite::Background::open(&settings.background)?;
        // CUDA for the GPU stages is initialised here, before GStreamer's decoders start.
        let stages = if shared_batch && cfg.stages == crate::engine::StagesChoice::Auto { crate::engine::StagesChoice::Cpu } else { cfg.stages };
        let place = Placement::resolve(stages, segmenter.provider(), manifest, &settings)?;
        let staged = StagedOutput::prepare(&cfg.output, format, cfg.overwrite)?;
        let provider = segmenter.provider();
        tracing::info!(
            "converting {} → {} ({}, {:?}, background {}) with {} on {}",
            cfg.input,
            staged.final_path.display(),
            format.describe(),
            settings.kind,
            String::from(settings.background.clone()),
            manifest.name,
            provider.name()
        );
        Ok(Plan { format, settings, place, uri, staged, model_name: manifest.name.clone(), provider, image })
    }
}

fn convert_with(cfg: &ConvertConfig, segmenter: OnnxSegmenter, batcher: Option<BatchClient>, ctl: RunControl<'_>) -> Result<Report> {
    gst::init()?;
    let plan = Plan::settle(cfg, &segmenter, batcher.is_some())?;
    // NVDEC maps its pictures on the model's stream, which the GPU stages follow; a shared batching thread
    // (`batch --jobs`) runs the model elsewhere, so its files keep GStreamer's decoders.
    let graph = Graph::build(cfg, &plan, segmenter.compute_stream().filter(|_| batcher.is_none()))?;
    let shared = Arc::new(Shared::new());
    watch_frame_rate(&graph.pipeline, shared.variable_rate.clone());
    let start = Instant::now();
    if graph.pipeline.set_state(gst::State::Playing).is_err() {
        // The bus says why; the bus loop reads it.
        shared.stop.store(true, Ordering::SeqCst);
    }
    let (tx_frames, rx_frames) = crossbeam_channel::bounded::<Frame>(cfg.queue.max(1));
    let (tx_matted, rx_matted) = crossbeam_channel::bounded::<Matted>(cfg.queue.max(1));
    let (tx_done, rx_done) = crossbeam_channel::bounded::<Vec<gst::Buffer>>(cfg.queue.max(1));
    let mut threads = vec![
        spawn("mf-pull", pull_frames(&graph, cfg, shared.clone(), tx_frames))?,
        spawn("mf-infer", matte_frames(cfg, &plan, segmenter, batcher, shared.clone(), rx_frames, tx_matted, start))?,
        spawn("mf-finish", finish_frames(&plan, shared.clone(), rx_matted, tx_done))?,
        spawn("mf-push", push_frames(&plan, cfg, graph.appsrc.clone(), shared.clone(), rx_done))?,
    ];
    if let (Some(src), Some(input)) = (graph.image_src.clone(), plan.image) {
        threads.push(spawn("mf-image", feed_image(cfg, input, src, shared.clone()))?);
    }
    let mut progress = ctl.progress;
    let outcome = watch(cfg, &graph, &shared, &ctl.cancel, &mut progress);
    shared.stop.store(true, Ordering::SeqCst);
    let _ = graph.pipeline.set_state(gst::State::Null);
    join_or_abandon(threads, outcome)?;
    if let Some(e) = shared.error.lock().unwrap().take() {
        return Err(e);
    }
    check_complete(cfg, &shared, ctl.allow_short)?;
    if let Some(p) = progress.as_mut() {
        p(progress_now(&shared));
    }
    report(cfg, plan, &shared, start.elapsed(), graph.has_audio.load(Ordering::SeqCst))
}

/// Thread 0 for image inputs: decodes the image's frames into the pipeline's appsrc.
fn feed_image(cfg: &ConvertConfig, input: ImageInput, src: gst_app::AppSrc, shared: Arc<Shared>) -> impl FnOnce() + Send {
    let path = std::path::PathBuf::from(&cfg.input);
    move || {
        if let Err(e) = crate::images::feed(&path, input, &src, || shared.stopped()) {
            shared.fail(e);
        }
    }
}

fn spawn(name: &str, body: impl FnOnce() + Send + 'static) -> Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name(name.into()).spawn(body).map_err(|e| Error::io("starting a thread", e))
}

/// The GStreamer side of a conversion: decode into an appsink, encode from an appsrc.
struct Graph {
    pipeline: gst::Pipeline,
    decode: gst::Element,
    /// The element decoded video links to (errors from it count as decoding errors).
    video_head: gst::Element,
    appsink: gst_app::AppSink,
    appsrc: gst_app::AppSrc,
    /// Where an image input's frames enter (instead of a decoder).
    image_src: Option<gst_app::AppSrc>,
    on_device: bool,
    /// Where H.264 and HEVC are decoded by NVDEC directly ([`crate::cuda::nvdec`]): the model's stream, which
    /// the decoded pictures are mapped on.
    nvdec: Option<Arc<cudarc::driver::CudaStream>>,
    has_audio: Arc<AtomicBool>,
    /// The output's final name, for errors.
    output: std::path::PathBuf,
}

impl Graph {
    /// `model_stream`: the model's CUDA stream, where it runs on one of ours (NVDEC maps its pictures there).
    fn build(cfg: &ConvertConfig, plan: &Plan, model_stream: Option<Arc<cudarc::driver::CudaStream>>) -> Result<Graph> {
        let pipeline = gst::Pipeline::new();
        // With the GPU stages, decoded frames stay in CUDA memory when GStreamer's nvcodec can give them in our
        // context; otherwise they are decoded to system memory and uploaded.
        let device_decode = match (&plan.place, cfg.cuda_decode && plan.image.is_none()) {
            (Placement::Device(g), true) => match crate::cuda::gst_cuda::GstCuda::new(g) {
                Ok(c) => {
                    c.attach(&pipeline);
                    tracing::info!("decoded frames stay on the GPU (CUDA memory, NV12)");
                    true
                }
                Err(e) => {
                    tracing::info!("{e}; frames are decoded to system memory and uploaded");
                    false
                }
            },
            _ => false,
        };
        let image_src = plan.image.map(|_| crate::images::appsrc());
        let decode = match &image_src {
            Some(src) => src.clone().upcast::<gst::Element>(),
            None => gst::ElementFactory::make("uridecodebin").property("uri", &plan.uri).build()?,
        };
        pipeline.add(&decode)?;
        let nvdec = model_stream.filter(|_| device_decode && nvdec_usable());
        let (video_head, appsink) = if device_decode {
            crate::cuda::gst_cuda::prefer_cuda_output(&decode);
            if nvdec.is_some() {
                stop_at_nvdec_codecs(&decode);
            }
            let sink = crate::cuda::gst_cuda::device_appsink(cfg.queue.max(1) as u32, nvdec.is_some());
            pipeline.add(&sink)?;
            (sink.clone().upcast::<gst::Element>(), sink)
        } else {
            source::video_branch(&pipeline, cfg.queue.max(1) as u32, cfg.deinterlace)?
        };
        let on_gpu = matches!(plan.provider, crate::runtime::Provider::Cuda | crate::runtime::Provider::TensorRt);
        let enc = sink::build(&pipeline, plan.format, &plan.staged.temp_path, 1 << 20, on_gpu)?;
        hold_h264_encoder(&pipeline);
        let graph = Graph { pipeline, decode, video_head, appsink, appsrc: enc.appsrc, image_src, on_device: device_decode, nvdec, has_audio: Default::default(), output: plan.staged.final_path.clone() };
        match &graph.image_src {
            Some(src) => src.link(&graph.video_head)?,
            None => graph.link_pads(enc.audio_sink, &cfg.input, cfg.video_stream),
        }
        Ok(graph)
    }

    /// Links the decoder's pads as they appear: video stream `wanted` (counted in the order the decoder exposes
    /// them) to the video branch, audio to the encoder's audio branch (if the format carries audio), anything else
    /// to a fakesink. Several video streams are named in the log with the one used; no such stream is reported on
    /// the bus as an application message.
    fn link_pads(&self, audio_sink: Option<gst::Pad>, input: &str, wanted: usize) {
        let (videos, video_linked): (Arc<Mutex<Vec<String>>>, Arc<AtomicBool>) = Default::default();
        let (pipeline_weak, head, has_audio, seen, linked) =
            (self.pipeline.downgrade(), self.video_head.downgrade(), self.has_audio.clone(), videos.clone(), video_linked.clone());
        let on_device = self.on_device;
        self.decode.connect_pad_added(move |_, pad| {
            let Some(name) = source::pad_media_type(pad) else { return };
            let Some(pipeline) = pipeline_weak.upgrade() else { return };
            if name.starts_with("video/") {
                let index = {
                    let mut v = seen.lock().unwrap();
                    v.push(describe_video_pad(pad));
                    v.len() - 1
                };
                if let (true, Some(head)) = (index == wanted, head.upgrade()) {
                    if link_video(&pipeline, pad, &head, on_device) {
                        linked.store(true, Ordering::SeqCst);
                        return;
                    }
                }
            }
            if name.starts_with("audio/") {
                if let Some(a) = audio_sink.as_ref().filter(|a| !a.is_linked()) {
                    if pad.link(a).is_ok() {
                        has_audio.store(true, Ordering::SeqCst);
                        return;
                    }
                }
            }
            // Anything else (another video stream, audio this format cannot carry, subtitles) is discarded.
            discard(&pipeline, pad);
        });
        let input = input.to_string();
        self.decode.connect("no-more-pads", false, move |args| {
            let videos = videos.lock().unwrap();
            if videos.len() > 1 && wanted < videos.len() {
                let list: Vec<String> = videos.iter().enumerate().map(|(i, d)| format!("{i}: {d}")).collect();
                tracing::warn!(
                    "{input} has {} video streams ({}); converting stream {wanted} ({} picks another)",
                    videos.len(),
                    list.join(", "),
                    crate::hint::VIDEO_STREAM.to("N")
                );
            }
            if !video_linked.load(Ordering::SeqCst) {
                let el = args[0].get::<gst::Element>().unwrap();
                let s = gst::Structure::builder("matteflow-no-video").field("input", &input).field("streams", videos.len() as u32).build();
                let _ = el.post_message(gst::message::Application::builder(s).src(&el).build());
            }
            None
        });
    }
}

/// "1280×720 at 25/1 fps" for a decoded video pad.
fn describe_video_pad(pad: &gst::Pad) -> String {
    let caps = pad.current_caps().unwrap_or_else(|| pad.query_caps(None));
    match caps.structure(0).and_then(|s| Some((s.get::<i32>("width").ok()?, s.get::<i32>("height").ok()?, s.get::<gst::Fraction>("framerate").ok()))) {
        Some((w, h, Some(f))) => format!("{w}×{h} at {}/{} fps", f.numer(), f.denom()),
        Some((w, h, None)) => format!("{w}×{h}"),
        None => caps.to_string(),
    }
}

/// Links a decoded video pad to the video branch. Device decoding: a decoder that can give CUDA memory feeds
/// the appsink directly, any other goes through videoconvert ! cudaupload.
fn link_video(pipeline: &gst::Pipeline, pad: &gst::Pad, head: &gst::Element, on_device: bool) -> bool {
    if let Some(parser) = crate::cuda::nvdec::parser_for(&pad.current_caps().unwrap_or_else(|| pad.query_caps(None))) {
        return match au_branch(pipeline, parser, head) {
            Ok(p) => pad.link(&p).is_ok(),
            Err(e) => {
                tracing::warn!("cannot link the parser for NVDEC: {e}");
                false
            }
        };
    }
    let sink_pad = if on_device {
        match crate::cuda::gst_cuda::device_sink_pad(pipeline, pad, head) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("cannot link the decoder for the GPU: {e}");
                return false;
            }
        }
    } else {
        head.static_pad("sink").unwrap()
    };
    pad.link(&sink_pad).is_ok()
}

/// Whether H.264 and HEVC go to NVDEC directly (see [`crate::cuda::nvdec`]), else why not, in the log.
fn nvdec_usable() -> bool {
    match crate::cuda::nvdec::available() {
        Ok(()) => true,
        Err(e) => {
            tracing::info!("NVDEC is not driven directly ({e}): GStreamer's decoders decode");
            false
        }
    }
}

/// Makes `decodebin` expose H.264 and HEVC streams that NVDEC decodes here (8-bit 4:2:0 profiles, or no
/// profile said) before any decoder: they are parsed and decoded by [`crate::cuda::nvdec`].
fn stop_at_nvdec_codecs(decodebin: &gst::Element) {
    decodebin.connect("autoplug-continue", false, |args| {
        let go_on = args.get(2).and_then(|c| c.get::<gst::Caps>().ok()).is_none_or(|c| crate::cuda::nvdec::parser_for(&c).is_none());
        Some(go_on.to_value())
    });
}

/// parser ! byte-stream access units ! `sink`, added and started; returns the parser's sink pad.
fn au_branch(pipeline: &gst::Pipeline, parser: &str, sink: &gst::Element) -> Result<gst::Pad> {
    let parse = gst::ElementFactory::make(parser).build()?;
    pipeline.add(&parse)?;
    parse.link(sink)?;
    parse.sync_state_with_parent()?;
    Ok(parse.static_pad("sink").unwrap())
}

fn discard(pipeline: &gst::Pipeline, pad: &gst::Pad) {
    if let Ok(fake) = gst::ElementFactory::make("fakesink").property("sync", false).property("async", false).build() {
        let _ = pipeline.add(&fake);
        let _ = fake.sync_state_with_parent();
        let _ = pad.link(&fake.static_pad("sink").unwrap());
    }
}

/// Thread 1: pulls decoded frames (and notes the stream's format and duration on the first).
fn pull_frames(graph: &Graph, cfg: &ConvertConfig, shared: Arc<Shared>, tx: crossbeam_channel::Sender<Frame>) -> impl FnOnce() + Send {
    let (appsink, on_device) = (graph.appsink.clone(), graph.on_device);
    // Decoded pictures in use at once: those queued for the model, a call's group, and the last call's until
    // the GPU has read them.
    let surfaces = (cfg.queue.max(1) + 2 * cfg.batch.max(1) + 4) as u32;
    let mut nvdec = graph.nvdec.clone().map(|s| crate::cuda::nvdec::AuSource::new(s, surfaces));
    move || {
        let mut index = 0u64;
        let mut wait = Duration::ZERO;
        while !shared.stopped() {
            let t = Instant::now();
            let pulled = if on_device {
                source::pull_cuda_frame(&appsink, nvdec.as_mut(), index, Duration::from_millis(100))
            } else {
                source::pull_frame(&appsink, index, Duration::from_millis(100))
            };
            let frame = match pulled {
                Some(Ok(frame)) => frame,
                Some(Err(e)) => {
                    shared.fail(e);
                    break;
                }
                None if appsink.is_eos() => break,
                None => continue,
            };
            wait += t.elapsed();
            if index == 0 {
                if let Some(caps) = appsink.sink_pads().first().and_then(|p| p.current_caps()) {
                    *shared.info.lock().unwrap() = source::stream_info(&caps);
                }
                if let Some(d) = appsink.query_duration::<gst::ClockTime>() {
                    shared.duration_ns.store(d.nseconds(), Ordering::SeqCst);
                }
            }
            if let Some(p) = frame.pts {
                let end = p + frame.duration.unwrap_or(gst::ClockTime::ZERO);
                shared.last_end_ns.fetch_max(end.nseconds(), Ordering::SeqCst);
            }
            index += 1;
            if tx.send(frame).is_err() {
                break;
            }
        }
        shared.times.lock().unwrap().decode_wait += wait;
    }
}

/// Thread 2: the engine's first step on up to `batch` consecutive frames per call (a short last batch at the
/// end of the stream). The stages are built on this thread (device IO binding must not move between threads).
#[allow(clippy::too_many_arguments)]
fn matte_frames(
    cfg: &ConvertConfig,
    plan: &Plan,
    mut segmenter: OnnxSegmenter,
    batcher: Option<BatchClient>,
    shared: Arc<Shared>,
    rx: crossbeam_channel::Receiver<Frame>,
    tx: crossbeam_channel::Sender<Matted>,
    start: Instant,
) -> impl FnOnce() + Send {
    // Frames per inference call: up to `batch` consecutive frames (or a shared batching thread gathers across
    // files instead).
    let batch = if batcher.is_some() { 1 } else { segmenter.configure_batch(cfg.batch, true) };
    let (settings, place, format) = (plan.settings.clone(), plan.place.clone(), plan.format);
    move || {
        let opened = Matter::open(segmenter, &settings, &place).and_then(|mut m| {
            if let Some(b) = batcher {
                m.share_inference(b)?;
            }
            Ok(m)
        });
        let mut engine = match opened {
            Ok(m) => Ordered::new(m, batch),
            Err(e) => return shared.fail(e),
        };
        // An encoder that takes 4:2:0 gets I420 frames from the GPU stages (converted there as videoconvert would).
        engine.set_i420(matches!(format, Format::H264 | Format::Vp9));
        if place.is_device() {
            tracing::info!("preprocess, mask steps and compositing run on the GPU (IO binding)");
        }
        let mut t = StageTimes::default();
        while let Ok(frame) = rx.recv() {
            if shared.stopped() {
                break;
            }
            let mut group = vec![frame];
            group.extend(rx.iter().take(batch - 1));
            let k = group.len() as u64;
            let (matted, step) = match engine.matte(group) {
                Ok(r) => r,
                Err(e) => return shared.fail(e),
            };
            if t.infer_calls == 0 {
                (t.first_infer, t.first_infer_frames, t.first_infer_done) = (step.infer, k, start.elapsed());
                t.first_pre_post = step.preprocess + step.postprocess;
            }
            t.last_infer_done = start.elapsed();
            t.infer_calls += 1;
            (t.preprocess, t.infer, t.postprocess) = (t.preprocess + step.preprocess, t.infer + step.infer, t.postprocess + step.postprocess);
            if matted.into_iter().any(|m| tx.send(m).is_err()) {
                break;
            }
        }
        let mut all = shared.times.lock().unwrap();
        all.preprocess += t.preprocess;
        all.infer += t.infer;
        all.postprocess += t.postprocess;
        all.infer_calls += t.infer_calls;
        (all.first_infer, all.first_infer_frames, all.first_infer_done) = (t.first_infer, t.first_infer_frames, t.first_infer_done);
        (all.first_pre_post, all.last_infer_done) = (t.first_pre_post, t.last_infer_done);
    }
}

/// Thread 3: the engine's second step (composite on the host, download from the device). The finished frames
/// go on to their own thread for the encoder, so that a download (or composite) never waits behind an encoder
/// that is busy: the device frames go back for the next inference call as soon as they are downloaded.
fn finish_frames(plan: &Plan, shared: Arc<Shared>, rx: crossbeam_channel::Receiver<Matted>, tx: crossbeam_channel::Sender<Vec<gst::Buffer>>) -> impl FnOnce() + Send {
    let finisher = Finisher::open(&plan.settings, &plan.place);
    move || {
        let mut finisher = match finisher {
            Ok(f) => f,
            Err(e) => return shared.fail(e),
        };
        let (mut composite_time, mut download_time) = (Duration::ZERO, Duration::ZERO);
        for matted in rx.iter() {
            if shared.stopped() {
                break;
            }
            let on_device = matches!(matted, Matted::Device(..));
            let (buffers, took) = match finisher.finish(matted) {
                Ok(r) => r,
                Err(e) => return shared.fail(e),
            };
            *(if on_device { &mut download_time } else { &mut composite_time }) += took;
            if tx.send(buffers).is_err() {
                break;
            }
        }
        let mut t = shared.times.lock().unwrap();
        t.composite += composite_time;
        t.postprocess += download_time;
        let model = finisher.model_time();
        t.model_gpu = model;
    }
}

/// Thread 4: finished frames to the encoder (caps set from the first), then end of stream.
fn push_frames(plan: &Plan, cfg: &ConvertConfig, appsrc: gst_app::AppSrc, shared: Arc<Shared>, rx: crossbeam_channel::Receiver<Vec<gst::Buffer>>) -> impl FnOnce() + Send {
    let kind = plan.settings.kind;
    let one_image = plan.format.is_image().then(|| Error::Input {
        path: cfg.input.clone(),
        reason: format!(
            "has more than one frame, and a {} holds one: write PNG frames (-o frames/), .mov or .mkv (alpha), or .mp4/.webm",
            plan.format.describe()
        ),
    });
    move || {
        let mut push_time = Duration::ZERO;
        let mut caps_set = false;
        let mut one_image = one_image;
        let mut durations = Durations::default();
        let mut push = |buffer: gst::Buffer| -> bool {
            if shared.stopped() {
                return false;
            }
            if caps_set && one_image.is_some() {
                shared.fail(one_image.take().unwrap());
                return false;
            }
            let t = Instant::now();
            if !caps_set {
                set_output_caps(&appsrc, &shared, kind, &buffer);
                caps_set = true;
            }
            if appsrc.push_buffer(buffer).is_err() {
                // Flushing: the pipeline was stopped (error or cancel); the bus loop reports why.
                return false;
            }
            shared.frames_out.fetch_add(1, Ordering::SeqCst);
            push_time += t.elapsed();
            true
        };
        let vfr = shared.variable_rate.clone();
        let all_pushed = rx.iter().flatten().all(|b| durations.settle(b, vfr.load(Ordering::SeqCst)).into_iter().all(&mut push));
        if all_pushed && durations.finish().is_none_or(&mut push) && !shared.stopped() {
            let _ = appsrc.end_of_stream();
        }
        shared.times.lock().unwrap().encode_push += push_time;
    }
}

/// Frames of a variable-frame-rate input come with no duration or one the decoder derived from a frame rate the
/// stream does not keep, and a muxer then gives the last frame almost none (ProRes: 1 µs): it would hardly be
/// shown. Such frames (and any without a duration) are held until the next says how long they last; the last
/// lasts as long as the one before. Other frames pass at once.
#[derive(Default)]
struct Durations {
    held: Option<gst::Buffer>,
    last: Option<gst::ClockTime>,
}

impl Durations {
    /// The frames ready to go on, in order (at most two).
    fn settle(&mut self, buffer: gst::Buffer, variable_rate: bool) -> Vec<gst::Buffer> {
        let mut ready = Vec::with_capacity(2);
        if let Some(mut held) = self.held.take() {
            if let (Some(p), Some(n)) = (held.pts(), buffer.pts()) {
                if n > p {
                    held.make_mut().set_duration(n - p);
                }
            }
            self.last = held.duration().or(self.last);
            ready.push(held);
        }
        if !variable_rate && buffer.duration().is_some_and(|d| d > gst::ClockTime::ZERO) {
            self.last = buffer.duration();
            ready.push(buffer);
        } else {
            self.held = Some(buffer);
        }
        ready
    }

    /// The last frame, if it was held.
    fn finish(&mut self) -> Option<gst::Buffer> {
        let mut held = self.held.take()?;
        if let Some(d) = self.last {
            held.make_mut().set_duration(d);
        }
        Some(held)
    }
}

/// The encoder's caps, from the stream's format and the first finished frame: RGBA of the output size, or I420
/// where the GPU stages converted it (the buffer's `VideoMeta` says so).
fn set_output_caps(appsrc: &gst_app::AppSrc, shared: &Shared, kind: crate::config::OutputKind, first: &gst::Buffer) {
    let info = shared.info.lock().unwrap().unwrap_or(StreamInfo { width: 0, height: 0, fps: gst::Fraction::new(0, 1), par: gst::Fraction::new(1, 1) });
    let (ow, oh) = crate::composite::output_size(kind, info.width, info.height);
    let i420 = first
        .meta::<gst_video::VideoMeta>()
        .filter(|m| m.format() == gst_video::VideoFormat::I420)
        .and_then(|m| crate::cuda::i420::I420Out::for_size(m.width(), m.height()))
        .and_then(|l| l.caps(info.fps, info.par));
    if i420.is_none() && (ow * oh * 4) as usize != first.size() {
        tracing::warn!("finished frame of {} bytes for {ow}x{oh} RGBA", first.size());
    }
    appsrc.set_caps(Some(&i420.unwrap_or_else(|| {
        gst::Caps::builder("video/x-raw")
            .field("format", "RGBA")
            .field("width", ow as i32)
            .field("height", oh as i32)
            .field("framerate", info.fps)
            .field("pixel-aspect-ratio", info.par)
            .build()
    })));
    appsrc.set_max_bytes(ow as u64 * oh as u64 * 4 * 3);
    start_h264_encoder(appsrc, shared.variable_rate.load(Ordering::SeqCst));
}

/// Sets `flag` when a demuxer inside `pipeline` exposes a video stream without a frame rate (qtdemux does so for
/// a variable-frame-rate MP4; the decoder after it then invents one from the bitstream).
fn watch_frame_rate(pipeline: &gst::Pipeline, flag: Arc<AtomicBool>) {
    pipeline.connect_deep_element_added(move |_, _, element| {
        let demuxer = element.factory().is_some_and(|f| f.metadata(gst::ELEMENT_METADATA_KLASS).is_some_and(|k| k.contains("Demux")));
        if !demuxer {
            return;
        }
        let flag = flag.clone();
        element.connect_pad_added(move |_, pad| {
            let caps = pad.current_caps().unwrap_or_else(|| pad.query_caps(None));
            let Some(s) = caps.structure(0).filter(|s| s.name().starts_with("video/")) else { return };
            if s.get::<gst::Fraction>("framerate").map_or(true, |f| f.numer() == 0) {
                tracing::info!("the video has a variable frame rate: each frame keeps its own timestamp and duration");
                flag.store(true, Ordering::SeqCst);
            }
        });
    });
}

/// A variable frame rate into MP4: x264's B-frames make decoding lag presentation by a fixed number of frames,
/// which lasts longer where the rate drops, and mp4mux's edit list (the sum of decoding durations) then ends
/// before the last frames (ffmpeg decoded 42 of 44). Without B-frames decoding and presentation times are the
/// same and every frame is inside the edit list. Constant-rate inputs keep them.
///
/// x264enc takes that setting only in NULL or READY, and the frame rate is known once the demuxer has exposed
/// the stream (after the pipeline started), so [`hold_h264_encoder`] keeps it in NULL until here, before the first
/// frame reaches it.
fn start_h264_encoder(appsrc: &gst_app::AppSrc, variable_rate: bool) {
    let Some(bin) = appsrc.parent().and_downcast::<gst::Bin>() else { return };
    for enc in bin.iterate_all_by_element_factory_name("x264enc").into_iter().flatten() {
        if variable_rate {
            // (the `bframes` property cannot say 0: that is its "the preset decides" default)
            enc.set_property("option-string", "bframes=0");
            tracing::info!("variable frame rate: H.264 is encoded without B-frames so that every frame stays in the MP4's edit list");
        }
        enc.set_locked_state(false);
        if let Err(e) = enc.sync_state_with_parent() {
            tracing::warn!("the H.264 encoder did not start: {e}");
        }
    }
}

/// See [`start_h264_encoder`].
fn hold_h264_encoder(pipeline: &gst::Pipeline) {
    for enc in pipeline.iterate_all_by_element_factory_name("x264enc").into_iter().flatten() {
        enc.set_locked_state(true);
    }
}

/// The bus loop: errors, end of stream, cancellation, progress, and the stall watchdog.
fn watch(cfg: &ConvertConfig, graph: &Graph, shared: &Shared, cancel: &AtomicBool, progress: &mut Option<&mut dyn FnMut(Progress)>) -> Result<()> {
    let bus = graph.pipeline.bus().expect("pipeline has a bus");
    let mut missing_plugin: Option<String> = None;
    let mut last_report = Instant::now();
    // A pipeline that stops producing frames without an error or end of stream (seen with a truncated MP4
    // whose demuxer paused) must not hang the run: after this long without a frame it fails.
    let stall_limit = Duration::from_secs(if cfg.input.contains("://") { 60 } else { 20 });
    let mut last_progress = (0u64, Instant::now());
    loop {
        let done = shared.frames_out.load(Ordering::SeqCst);
        if done != last_progress.0 {
            last_progress = (done, Instant::now());
        } else if last_progress.1.elapsed() > stall_limit {
            return Err(stalled(cfg, stall_limit, done));
        }
        if cancel.load(Ordering::SeqCst) {
            return Err(Error::Interrupted(format!("stopped after {done} frames; the partial output was removed")));
        }
        if shared.stopped() && shared.error.lock().unwrap().is_some() {
            return Err(shared.error.lock().unwrap().take().unwrap());
        }
        if let Some(p) = progress.as_mut().filter(|_| last_report.elapsed() > Duration::from_millis(200)) {
            last_report = Instant::now();
            p(progress_now(shared));
        }
        let Some(msg) = bus.timed_pop(gst::ClockTime::from_mseconds(100)) else { continue };
        match msg.view() {
            gst::MessageView::Eos(_) => return Ok(()),
            gst::MessageView::Error(err) => return Err(explain_error(cfg, graph, &err, missing_plugin.clone())),
            gst::MessageView::Element(_) => {
                if let Ok(m) = gstreamer_pbutils::MissingPluginMessage::parse(&msg) {
                    missing_plugin = Some(m.description().to_string());
                }
            }
            gst::MessageView::Application(a) if a.structure().is_some_and(|s| s.name() == "matteflow-no-video") => {
                let streams = a.structure().and_then(|s| s.get::<u32>("streams").ok()).unwrap_or(0);
                let reason = match (&missing_plugin, streams) {
                    (Some(p), _) => format!("its video cannot be decoded: no plugin for {p}"),
                    (None, 0) => "has no video stream (audio only?)".into(),
                    (None, n) => format!(
                        "has {n} video stream{}, so {} does not exist: pick 0{}",
                        if n == 1 { "" } else { "s" },
                        crate::hint::VIDEO_STREAM.to(&cfg.video_stream.to_string()),
                        if n > 1 { format!(" to {}", n - 1) } else { String::new() }
                    ),
                };
                return Err(Error::Input { path: cfg.input.clone(), reason });
            }
            _ => {}
        }
    }
}

fn stalled(cfg: &ConvertConfig, limit: Duration, done: u64) -> Error {
    Error::Input {
        path: cfg.input.clone(),
        reason: format!(
            "is truncated or damaged, or its source stopped: no frame came through for {} s{}. Nothing was written",
            limit.as_secs(),
            if done > 0 { format!(" (after {done} frames)") } else { String::new() }
        ),
    }
}

/// A GStreamer error in the user's terms: decoding (with the missing plugin, if one was reported) or encoding.
fn explain_error(cfg: &ConvertConfig, graph: &Graph, err: &gst::message::Error, missing_plugin: Option<String>) -> Error {
    let from_decode = err.src().is_some_and(|s| {
        s.has_as_ancestor(&graph.decode) || s == graph.decode.upcast_ref::<gst::Object>() || s == graph.video_head.upcast_ref::<gst::Object>()
    });
    match (from_decode, missing_plugin) {
        (true, Some(codec)) => Error::MissingDecoder {
            path: cfg.input.clone(),
            codec,
            hint: "Install the GStreamer plugin packages (gstreamer1.0-plugins-bad, -ugly, gstreamer1.0-libav) \
                   or convert the file to H.264/H.265/VP9 first; `matteflow doctor` lists what is installed."
                .into(),
        },
        (true, None) => source::explain_decode_error(&cfg.input, err),
        (false, _) if err.error().matches(gst::ResourceError::NoSpaceLeft) => Error::Output {
            path: graph.output.clone(),
            reason: format!("disk full: {}. Nothing was kept", sink::disk_of(&graph.output)),
        },
        (false, _) => Error::Output {
            path: graph.output.clone(),
            reason: format!(
                "encoding failed in {}: {}{}",
                err.src().map(|s| s.name().to_string()).unwrap_or_default(),
                err.error(),
                err.debug().map(|d| format!(" ({})", d.lines().last().unwrap_or(""))).unwrap_or_default()
            ),
        },
    }
}

/// Waits for the stage threads, but never forever: a thread stuck in a driver call must not turn an error or a
/// Ctrl-C into a hang. Abandoned threads die with the process; the staged output is removed on return.
fn join_or_abandon(threads: Vec<std::thread::JoinHandle<()>>, outcome: Result<()>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while threads.iter().any(|t| !t.is_finished()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let stuck = threads.iter().filter(|t| !t.is_finished()).count();
    if stuck > 0 {
        tracing::warn!("{stuck} stage thread(s) did not stop within 10 s; abandoning them");
        outcome?;
        return Err(Error::Runtime(format!("{stuck} stage thread(s) stopped responding; the partial output was removed")));
    }
    for t in threads {
        let _ = t.join();
    }
    outcome
}

/// Refuses an output with no frames, or (unless allowed) one that stopped well before the input's duration.
fn check_complete(cfg: &ConvertConfig, shared: &Shared, allow_short: bool) -> Result<()> {
    if shared.frames_out.load(Ordering::SeqCst) == 0 {
        return Err(Error::Input { path: cfg.input.clone(), reason: "contains no video frames".into() });
    }
    let duration = shared.duration_ns.load(Ordering::SeqCst);
    let last_end = shared.last_end_ns.load(Ordering::SeqCst);
    if duration != u64::MAX && !allow_short && (last_end as f64) < duration as f64 * 0.9 - 1e9 {
        return Err(Error::Input {
            path: cfg.input.clone(),
            reason: format!(
                "is truncated or damaged: video stopped at {:.2} s but the file says it lasts {:.2} s. \
                 Nothing was written; with {} the frames that decode are kept",
                last_end as f64 / 1e9,
                duration as f64 / 1e9,
                crate::hint::ALLOW_SHORT.on()
            ),
        });
    }
    Ok(())
}

/// Renames the output into place and reports.
fn report(cfg: &ConvertConfig, plan: Plan, shared: &Shared, wall: Duration, has_audio: bool) -> Result<Report> {
    let info = shared.info.lock().unwrap().unwrap_or(StreamInfo { width: 0, height: 0, fps: gst::Fraction::new(0, 1), par: gst::Fraction::new(1, 1) });
    let final_path = plan.staged.commit()?;
    if plan.format == Format::Png {
        tracing::info!("PNG frames are in {}", final_path.display());
    }
    Ok(Report {
        input: cfg.input.clone(),
        output: final_path.display().to_string(),
        frames: shared.frames_out.load(Ordering::SeqCst),
        width: info.width,
        height: info.height,
        fps_num: info.fps.numer(),
        fps_den: info.fps.denom(),
        model: plan.model_name,
        provider: plan.provider.name().into(),
        wall,
        stages: *shared.times.lock().unwrap(),
        has_audio,
    })
}

fn progress_now(shared: &Shared) -> Progress {
    let frames = shared.frames_out.load(Ordering::SeqCst);
    let d = shared.duration_ns.load(Ordering::SeqCst);
    let total = shared.info.lock().unwrap().and_then(|i| {
        (d != u64::MAX && i.fps.numer() > 0)
            .then(|| (d as f64 / 1e9 * i.fps.numer() as f64 / i.fps.denom() as f64).round() as u64)
    });
    Progress { frames, total }
}

/// How long one of `bench`'s pipelines without matting took: all of it (its start included), and the time from
/// the first decoded frame to the last with the number of frames in between (the steady rate).
#[derive(Debug, Clone, Copy)]
pub struct EndsTime {
    pub wall: Duration,
    pub first_to_last: Option<(Duration, u64)>,
}

impl EndsTime {
    /// Milliseconds a frame from the first decoded frame to the last (the wall time over `frames` where fewer
    /// than two frames came).
    pub fn steady_ms_per_frame(&self, frames: u64) -> f64 {
        match self.first_to_last {
            Some((d, n)) if n > 0 => d.as_secs_f64() * 1e3 / n as f64,
            _ => self.wall.as_secs_f64() * 1e3 / frames.max(1) as f64,
        }
    }
}

/// Decodes the whole input to RGBA and discards it: the decode stage's cost on its own (for `bench`).
pub fn decode_only(input: &str) -> Result<EndsTime> {
    decode_alone(input, "RGBA", None)
}

/// The input decoded to RGBA (or, with `i420`, to the I420 the GPU stages hand an H.264/VP9 encoder) and encoded
/// as `format` into `location` by the encoder chain a conversion builds (`gpu`: where it may encode on the GPU),
/// no matting: the pipeline's ceiling from its two ends.
pub fn decode_encode_only(input: &str, format: Format, location: &std::path::Path, gpu: bool, i420: bool) -> Result<EndsTime> {
    decode_alone(input, if i420 { "I420" } else { "RGBA" }, Some((format, location, gpu)))
}

/// When the decoded frames leave for the encoder (or the sink): the first, the last, how many.
#[derive(Default)]
struct Seen {
    first: Option<Instant>,
    last: Option<Instant>,
    frames: u64,
}

impl Seen {
    fn frame(&mut self, now: Instant) {
        self.first.get_or_insert(now);
        (self.last, self.frames) = (Some(now), self.frames + 1);
    }

    /// The time from the first frame to the last and the frames after the first, where there are two or more.
    fn first_to_last(&self) -> Option<(Duration, u64)> {
        match (self.first, self.last) {
            (Some(a), Some(b)) if self.frames > 1 => Some((b - a, self.frames - 1)),
            _ => None,
        }
    }
}

fn decode_alone(input: &str, frames: &str, encode: Option<(Format, &std::path::Path, bool)>) -> Result<EndsTime> {
    gst::init()?;
    let uri = source::input_uri(input)?;
    let pipeline = gst::Pipeline::new();
    let decode = gst::ElementFactory::make("uridecodebin").property("uri", &uri).build()?;
    let convert = gst::ElementFactory::make("videoconvert").property("n-threads", 2u32).build()?;
    let caps = gst::ElementFactory::make("capsfilter")
        .property("caps", gst::Caps::builder("video/x-raw").field("format", frames).build())
        .build()?;
    pipeline.add_many([&decode, &convert, &caps])?;
    convert.link(&caps)?;
    match encode {
        Some((format, location, gpu)) => {
            let (head, _audio) = crate::sink::encoder_chain(&pipeline, format, location, gpu)?;
            caps.link(&head)?;
        }
        None => {
            let fake = gst::ElementFactory::make("fakesink").property("sync", false).build()?;
            pipeline.add(&fake)?;
            caps.link(&fake)?;
        }
    }
    source::link_video_pads(&decode, &convert);
    let seen: Arc<Mutex<Seen>> = Arc::default();
    if let Some(pad) = caps.static_pad("src") {
        let seen = seen.clone();
        pad.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
            seen.lock().unwrap_or_else(|p| p.into_inner()).frame(Instant::now());
            gst::PadProbeReturn::Ok
        });
    }
    let t = Instant::now();
    pipeline.set_state(gst::State::Playing)?;
    let bus = pipeline.bus().unwrap();
    let r = loop {
        let Some(msg) = bus.timed_pop(gst::ClockTime::from_seconds(60)) else {
            break Err(Error::Gst("decode timed out".into()));
        };
        match msg.view() {
            gst::MessageView::Eos(_) => {
                let wall = t.elapsed();
                let first_to_last = seen.lock().unwrap_or_else(|p| p.into_inner()).first_to_last();
                break Ok(EndsTime { wall, first_to_last });
            }
            gst::MessageView::Error(e) => break Err(source::explain_decode_error(input, &e)),
            _ => {}
        }
    };
    let _ = pipeline.set_state(gst::State::Null);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With NVDEC driven directly, decodebin stops before any H.264 decoder and the device appsink gets the
    /// clip's access units as Annex B byte-stream, one a buffer, the first with its parameter sets and an IDR
    /// picture (what cuvidParseVideoData needs), in the clip's order and number.
    #[test]
    fn h264_reaches_the_device_appsink_as_access_units_before_any_decoder() {
        gst::init().unwrap();
        let clip = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/media/carphone_pristine.mp4");
        let uri = gst::glib::filename_to_uri(&clip, None).unwrap();
        let pipeline = gst::Pipeline::new();
        let dec = gst::ElementFactory::make("uridecodebin").property("uri", uri.as_str()).build().unwrap();
        stop_at_nvdec_codecs(&dec);
        let sink = crate::cuda::gst_cuda::device_appsink(4, true);
        pipeline.add_many([&dec, sink.upcast_ref()]).unwrap();
        let (weak, head) = (pipeline.downgrade(), sink.clone().upcast::<gst::Element>());
        dec.connect_pad_added(move |_, pad| {
            if source::pad_media_type(pad).is_some_and(|t| t.starts_with("video/")) {
                assert!(link_video(&weak.upgrade().unwrap(), pad, &head, true), "{:?}", pad.current_caps());
            }
        });
        pipeline.set_state(gst::State::Playing).unwrap();
        let mut units = Vec::new();
        while let Some(s) = sink.try_pull_sample(gst::ClockTime::from_seconds(10)) {
            let caps = s.caps().unwrap();
            assert!(crate::cuda::nvdec::AuSource::takes(caps), "{caps}");
            let st = caps.structure(0).unwrap();
            assert_eq!((st.get::<&str>("stream-format").unwrap(), st.get::<&str>("alignment").unwrap()), ("byte-stream", "au"));
            let b = s.buffer().unwrap();
            units.push((b.map_readable().unwrap().to_vec(), b.pts()));
        }
        pipeline.set_state(gst::State::Null).unwrap();
        assert_eq!(units.len(), 120, "carphone has 120 frames");
        // NAL unit types after each start code.
        let nal_types = |d: &[u8]| -> Vec<u8> { d.windows(4).filter(|w| w[..3] == [0, 0, 1]).map(|w| w[3] & 0x1f).collect() };
        let (first, _) = &units[0];
        assert!(first.starts_with(&[0, 0, 0, 1]) || first.starts_with(&[0, 0, 1]), "{:?}", &first[..8]);
        let t = nal_types(first);
        assert!(t.contains(&7) && t.contains(&8) && t.contains(&5), "SPS, PPS and an IDR slice first: {t:?}");
        assert!(units.iter().all(|(d, pts)| d.len() > 4 && pts.is_some()));
    }

    #[test]
    fn the_ends_rate_is_timed_from_the_first_frame_to_the_last() {
        let mut seen = Seen::default();
        assert_eq!(seen.first_to_last(), None, "no frames");
        let t0 = Instant::now();
        seen.frame(t0);
        assert_eq!(seen.first_to_last(), None, "one frame has no interval");
        seen.frame(t0 + Duration::from_millis(5));
        seen.frame(t0 + Duration::from_millis(12));
        assert_eq!(seen.first_to_last(), Some((Duration::from_millis(12), 2)));
    }
}

//! The conversion pipeline: a file in, a matted file out. GStreamer decodes and encodes on its own threads;
//! between them three threads of ours, joined by bounded channels so memory stays bounded and stages overlap:
//!
//! ```text
//! uridecodebin ─ videoconvert ─ appsink ─▶ [pull] ─▶ (preprocess, infer, postprocess) ─▶ (composite, push)
//!      │                                    bounded          bounded                        │
//!      └──────────── audio ───────────────────────────────────────────────▶ mux ◀─ encoder ◀─ appsrc
//! ```

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;

use crate::composite::{self, Background, Composite, CpuComposite};
use crate::config::{ConvertConfig, Format};
use crate::error::{Error, Result};
use crate::infer::{BatchClient, LowResMask, OnnxSegmenter, Segmenter};
use crate::model::ResolvedModel;
use crate::postprocess::{CpuPostprocess, Postprocess};
use crate::preprocess::{CpuPreprocess, ModelInput, Preprocess};
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
    error: Mutex<Option<Error>>,
    frames_out: AtomicU64,
    duration_ns: AtomicU64,
    last_end_ns: AtomicU64,
    info: Mutex<Option<StreamInfo>>,
    times: Mutex<StageTimes>,
}

impl Shared {
    fn fail(&self, e: Error) {
        let mut g = self.error.lock().unwrap();
        if g.is_none() {
            *g = Some(e);
        }
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Opens the model with the chosen providers. Separate so batch jobs can share one session later.
pub fn open_segmenter(model: ResolvedModel, popts: &ProviderOptions) -> Result<OnnxSegmenter> {
    OnnxSegmenter::open(model, popts)
}

/// Converts one input to one output. On any failure or cancellation the temporary output is removed and
/// nothing is left at the destination.
pub fn convert(
    cfg: &ConvertConfig,
    segmenter: OnnxSegmenter,
    ctl: RunControl<'_>,
) -> Result<Report> {
    convert_with(cfg, segmenter, None, ctl)
}

/// [`convert`], with inference done by a batching thread shared with other conversions
/// ([`crate::infer::BatchServer`]); `segmenter` only describes the model.
pub fn convert_shared(cfg: &ConvertConfig, segmenter: OnnxSegmenter, batcher: BatchClient, ctl: RunControl<'_>) -> Result<Report> {
    convert_with(cfg, segmenter, Some(batcher), ctl)
}

fn convert_with(
    cfg: &ConvertConfig,
    mut segmenter: OnnxSegmenter,
    batcher: Option<BatchClient>,
    ctl: RunControl<'_>,
) -> Result<Report> {
    gst::init()?;
    let (format, kind, bg_spec) = cfg.resolve()?;
    let uri = source::input_uri(&cfg.input)?;
    if let (Ok(a), Ok(b)) = (std::fs::canonicalize(&cfg.input), std::fs::canonicalize(&cfg.output)) {
        if a == b {
            return Err(Error::Output { path: cfg.output.clone(), reason: "is the input file; choose another name".into() });
        }
    }
    let model_name = segmenter.model().manifest.name.clone();
    let provider = segmenter.provider();
    let manifest = segmenter.model().manifest.clone();
    let background = Background::open(&bg_spec)?;
    let staged = StagedOutput::prepare(&cfg.output, format, cfg.overwrite)?;
    tracing::info!(
        "converting {} → {} ({}, {:?}, background {}) with {} on {}",
        cfg.input,
        staged.final_path.display(),
        format.describe(),
        kind,
        String::from(bg_spec.clone()),
        model_name,
        provider.name()
    );

    // CUDA for the GPU stages is initialised here, before GStreamer's decoders start.
    let gpu = if cfg.cuda_stages {
        crate::cuda::stages::GpuStages::supports(kind, &manifest)
            .map_err(|w| Error::Cuda(format!("--cuda-stages does not handle {w} yet; run without it")))?;
        crate::cuda::stages::GpuStages::supports_options(&cfg.post, cfg.fg_estimate).map_err(|o| {
            Error::Cuda(format!("--cuda-stages does not apply {o} yet; run without --cuda-stages (the CPU stages do) or without {o}"))
        })?;
        Some(crate::cuda::stages::GpuStages::open_gpu(0)?)
    } else {
        None
    };
    let pipeline = gst::Pipeline::new();
    // With the GPU stages, decoded frames stay in CUDA memory when GStreamer's nvcodec can give them in our
    // context; otherwise they are decoded to system memory and uploaded.
    let device_decode = match (&gpu, cfg.cuda_decode) {
        (Some(g), true) => match crate::cuda::gst_cuda::GstCuda::new(g) {
            Ok(c) => {
                c.attach(&pipeline);
                tracing::info!("decoded frames stay on the GPU (CUDA memory, NV12)");
                Some(c)
            }
            Err(e) => {
                tracing::info!("{e}; frames are decoded to system memory and uploaded");
                None
            }
        },
        _ => None,
    };
    let decode = gst::ElementFactory::make("uridecodebin").property("uri", &uri).build()?;
    pipeline.add(&decode)?;
    if device_decode.is_some() {
        crate::cuda::gst_cuda::prefer_cuda_output(&decode);
    }
    let (video_head, appsink) = if device_decode.is_some() {
        let sink = crate::cuda::gst_cuda::device_appsink(cfg.queue.max(1) as u32);
        pipeline.add(&sink)?;
        (sink.clone().upcast::<gst::Element>(), sink)
    } else {
        source::video_branch(&pipeline, cfg.queue.max(1) as u32)?
    };
    let on_device = device_decode.is_some();
    let on_gpu = matches!(provider, crate::runtime::Provider::Cuda | crate::runtime::Provider::TensorRt);
    let enc = sink::build(&pipeline, format, &staged.temp_path, 1 << 20, on_gpu)?;
    let has_audio = Arc::new(AtomicBool::new(false));
    let video_linked = Arc::new(AtomicBool::new(false));
    {
        let pipeline_weak = pipeline.downgrade();
        let video_head = video_head.downgrade();
        let audio_sink = enc.audio_sink.clone();
        let has_audio = has_audio.clone();
        let video_linked = video_linked.clone();
        decode.connect_pad_added(move |_, pad| {
            let Some(name) = source::pad_media_type(pad) else { return };
            let Some(pipeline) = pipeline_weak.upgrade() else { return };
            if name.starts_with("video/") && !video_linked.load(Ordering::SeqCst) {
                if let Some(head) = video_head.upgrade() {
                    // Device decoding: a decoder that can give CUDA memory feeds the appsink directly, any
                    // other goes through videoconvert ! cudaupload.
                    let sink_pad = if on_device {
                        match crate::cuda::gst_cuda::device_sink_pad(&pipeline, pad, &head) {
                            Ok(p) => p,
                            Err(e) => {
                                tracing::warn!("cannot link the decoder for the GPU: {e}");
                                return;
                            }
                        }
                    } else {
                        head.static_pad("sink").unwrap()
                    };
                    if pad.link(&sink_pad).is_ok() {
                        video_linked.store(true, Ordering::SeqCst);
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
            // Anything else (a second video, audio this format cannot carry, subtitles) is discarded.
            if let Ok(fake) = gst::ElementFactory::make("fakesink").property("sync", false).property("async", false).build() {
                let _ = pipeline.add(&fake);
                let _ = fake.sync_state_with_parent();
                let _ = pad.link(&fake.static_pad("sink").unwrap());
            }
        });
    }
    {
        let video_linked = video_linked.clone();
        let input = cfg.input.clone();
        decode.connect("no-more-pads", false, move |args| {
            if !video_linked.load(Ordering::SeqCst) {
                let el = args[0].get::<gst::Element>().unwrap();
                let msg = gst::message::Application::builder(
                    gst::Structure::builder("matteflow-no-video").field("input", &input).build(),
                )
                .src(&el)
                .build();
                let _ = el.post_message(msg);
            }
            None
        });
    }

    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        error: Mutex::new(None),
        frames_out: AtomicU64::new(0),
        duration_ns: AtomicU64::new(u64::MAX),
        last_end_ns: AtomicU64::new(0),
        info: Mutex::new(None),
        times: Mutex::new(StageTimes::default()),
    });
    let start = Instant::now();
    if pipeline.set_state(gst::State::Playing).is_err() {
        // The bus says why; fall through to the loop below, which reads it.
        shared.stop.store(true, Ordering::SeqCst);
    }

    let (tx_frames, rx_frames) = crossbeam_channel::bounded::<Frame>(cfg.queue.max(1));
    let (tx_masked, rx_masked) = crossbeam_channel::bounded::<(Frame, Option<Vec<u8>>)>(cfg.queue.max(1));

    // Thread 1: pull decoded frames.
    let t_pull = {
        let shared = shared.clone();
        let appsink = appsink.clone();
        std::thread::Builder::new().name("mf-pull".into()).spawn(move || {
            let mut index = 0u64;
            let mut wait = Duration::ZERO;
            while !shared.stop.load(Ordering::SeqCst) {
                let t = Instant::now();
                let pulled = if on_device {
                    source::pull_cuda_frame(&appsink, index, Duration::from_millis(100))
                } else {
                    source::pull_frame(&appsink, index, Duration::from_millis(100))
                };
                match pulled {
                    Some(Ok(frame)) => {
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
                        if tx_frames.send(frame).is_err() {
                            break;
                        }
                    }
                    Some(Err(e)) => {
                        shared.fail(e);
                        break;
                    }
                    None => {
                        if appsink.is_eos() {
                            break;
                        }
                    }
                }
            }
            shared.times.lock().unwrap().decode_wait += wait;
        })
    }
    .map_err(|e| Error::io("starting a thread", e))?;

    // Frames per inference call: up to `batch` consecutive frames (or a shared batching thread gathers across
    // files instead).
    let batch = if batcher.is_some() { 1 } else { segmenter.configure_batch(cfg.batch, true) };

    // Thread 2: preprocess, infer, postprocess.
    let t_infer = {
        let shared = shared.clone();
        let mut segmenter = segmenter;
        let mut pre = CpuPreprocess::new(&manifest);
        let mut post = CpuPostprocess::for_manifest(cfg.post, &manifest);
        let opened_gpu = gpu;
        let (kind_g, bg_g, manifest_g, post_g) = (kind, bg_spec.clone(), manifest.clone(), cfg.post);
        std::thread::Builder::new().name("mf-infer".into()).spawn(move || {
            // The GPU path lives on this thread: its IO binding must not move between threads.
            let mut gpu = if let Some(opened) = opened_gpu {
                match crate::cuda::stages::GpuStages::new(opened, 0, &manifest_g, kind_g, &bg_g, &post_g) {
                    Ok(g) => {
                        tracing::info!("preprocess, mask upsampling and compositing run on the GPU (IO binding)");
                        Some(g)
                    }
                    Err(e) => {
                        shared.fail(e);
                        return;
                    }
                }
            } else {
                None
            };
            // With the GPU stages, finished frames come to host memory on a thread of their own ("mf-download"),
            // so one call's download overlaps the next call's inference; it passes them on in order.
            let mut downloads = match gpu.as_ref().map(|g| g.download_stream()) {
                Some(Ok(stream)) => {
                    let (tx, rx) = crossbeam_channel::bounded::<(Vec<Frame>, crate::cuda::stages::Queued)>(1);
                    let (shared_dl, tx_masked) = (shared.clone(), tx_masked.clone());
                    let spawned = std::thread::Builder::new().name("mf-download".into()).spawn(move || {
                        let shared = shared_dl;
                        let mut spent = Duration::ZERO;
                        for (mut group, queued) in rx {
                            match queued.download(&stream, &mut group) {
                                Ok(d) => spent += d,
                                Err(e) => {
                                    shared.fail(e);
                                    break;
                                }
                            }
                            if group.into_iter().any(|f| tx_masked.send((f, None)).is_err()) {
                                break;
                            }
                        }
                        shared.times.lock().unwrap().postprocess += spent;
                    });
                    match spawned {
                        Ok(h) => Some((tx, h)),
                        Err(e) => {
                            shared.fail(Error::io("starting a thread", e));
                            return;
                        }
                    }
                }
                Some(Err(e)) => {
                    shared.fail(e);
                    return;
                }
                None => None,
            };
            let mut inputs: Vec<ModelInput> = vec![ModelInput::default(); batch];
            let mut masks: Vec<LowResMask> = vec![LowResMask::default(); batch];
            let mut pending: Vec<Frame> = Vec::with_capacity(batch);
            let (mut tp, mut ti, mut tq) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
            let mut calls = 0u64;
            // The first call (its time, frames, and when it ended): warm-up, reported apart.
            let mut first: Option<(Duration, u64, Duration)> = None;
            'frames: while let Ok(frame) = rx_frames.recv() {
                if shared.stop.load(Ordering::SeqCst) {
                    break;
                }
                // Up to `batch` consecutive frames; a short last batch at the end of the stream.
                pending.push(frame);
                while pending.len() < batch {
                    match rx_frames.recv() {
                        Ok(f) => pending.push(f),
                        Err(_) => break,
                    }
                }
                if let Some(g) = gpu.as_mut() {
                    // Frames of one GPU call share a size (a resolution change mid-stream splits the group).
                    while !pending.is_empty() {
                        let size = (pending[0].width, pending[0].height);
                        let split = pending.iter().position(|f| (f.width, f.height) != size).unwrap_or(pending.len());
                        let mut group: Vec<Frame> = pending.drain(..split).collect();
                        let Some(tx_dl) = downloads.as_ref().map(|(tx, _)| tx) else { break 'frames };
                        match g.submit(&mut segmenter, &mut group, batch) {
                            Ok((t, queued)) => {
                                first.get_or_insert((t.infer, group.len() as u64, start.elapsed()));
                                tp += t.preprocess;
                                ti += t.infer;
                                tq += t.post_composite;
                                calls += 1;
                                // The download runs on its own thread and stream, alongside the next call.
                                if tx_dl.send((group, queued)).is_err() {
                                    break 'frames;
                                }
                            }
                            Err(e) => {
                                shared.fail(e);
                                break 'frames;
                            }
                        }
                    }
                    continue;
                }
                let k = pending.len();
                let ti_before = ti;
                let step = (|| -> Result<Vec<Vec<u8>>> {
                    let t0 = Instant::now();
                    for (f, input) in pending.iter().zip(inputs.iter_mut()) {
                        pre.run(&f.data, f.width, f.height, input)?;
                    }
                    let t1 = Instant::now();
                    match &batcher {
                        Some(b) => b.run(&mut inputs[0], &mut masks[0])?,
                        None => {
                            let refs: Vec<&ModelInput> = inputs[..k].iter().collect();
                            segmenter.run_batch(&refs, &mut masks[..k])?;
                        }
                    }
                    calls += 1;
                    let t2 = Instant::now();
                    let mut alphas = Vec::with_capacity(k);
                    for ((f, input), mask) in pending.iter().zip(&inputs).zip(&masks) {
                        let mut alpha = Vec::new();
                        post.run(&f.data, input, mask, f.width, f.height, &mut alpha)?;
                        alphas.push(alpha);
                    }
                    let t3 = Instant::now();
                    tp += t1 - t0;
                    ti += t2 - t1;
                    tq += t3 - t2;
                    Ok(alphas)
                })();
                match step {
                    Ok(alphas) => {
                        first.get_or_insert((ti - ti_before, k as u64, start.elapsed()));
                        if pending.drain(..).zip(alphas).any(|(f, a)| tx_masked.send((f, Some(a))).is_err()) {
                            break;
                        }
                    }
                    Err(e) => {
                        shared.fail(e);
                        break;
                    }
                }
            }
            if let Some((tx, h)) = downloads.take() {
                drop(tx);
                let _ = h.join();
            }
            let mut t = shared.times.lock().unwrap();
            t.preprocess += tp;
            t.infer += ti;
            t.postprocess += tq;
            t.infer_calls += calls;
            if let Some((d, n, at)) = first {
                t.first_infer = d;
                t.first_infer_frames = n;
                t.first_infer_done = at;
            }
        })
    }
    .map_err(|e| Error::io("starting a thread", e))?;

    // Thread 3: composite and hand to the encoder.
    let t_push = {
        let shared = shared.clone();
        let appsrc = enc.appsrc.clone();
        let mut comp = CpuComposite::new(kind, background);
        comp.set_foreground_estimation(cfg.fg_estimate);
        std::thread::Builder::new().name("mf-push".into()).spawn(move || {
            let (mut tc, mut te) = (Duration::ZERO, Duration::ZERO);
            let mut caps_set = false;
            for (mut frame, alpha) in rx_masked.iter() {
                if shared.stop.load(Ordering::SeqCst) {
                    break;
                }
                let t0 = Instant::now();
                let (w, h) = (frame.width, frame.height);
                let wider = match alpha.as_ref().map(|a| comp.run(&mut frame.data, w, h, a)).transpose() {
                    Ok(v) => v.flatten(),
                    Err(e) => {
                        shared.fail(e);
                        break;
                    }
                };
                let t1 = Instant::now();
                if !caps_set {
                    let info = shared.info.lock().unwrap().unwrap_or(StreamInfo {
                        width: w,
                        height: h,
                        fps: gst::Fraction::new(0, 1),
                        par: gst::Fraction::new(1, 1),
                    });
                    let (ow, oh) = composite::output_size(kind, w, h);
                    appsrc.set_caps(Some(
                        &gst::Caps::builder("video/x-raw")
                            .field("format", "RGBA")
                            .field("width", ow as i32)
                            .field("height", oh as i32)
                            .field("framerate", info.fps)
                            .field("pixel-aspect-ratio", info.par)
                            .build(),
                    ));
                    appsrc.set_max_bytes(ow as u64 * oh as u64 * 4 * 3);
                    caps_set = true;
                }
                let (pts, dur) = (frame.pts, frame.duration);
                let mut buffer = match wider {
                    Some(v) => gst::Buffer::from_mut_slice(v),
                    None => frame.data.into_buffer(),
                };
                {
                    let b = buffer.make_mut();
                    b.set_pts(pts);
                    b.set_dts(gst::ClockTime::NONE);
                    b.set_duration(dur);
                }
                if appsrc.push_buffer(buffer).is_err() {
                    // Flushing: the pipeline was stopped (error or cancel); the bus loop reports why.
                    break;
                }
                shared.frames_out.fetch_add(1, Ordering::SeqCst);
                te += t1.elapsed();
                tc += t1 - t0;
            }
            if !shared.stop.load(Ordering::SeqCst) {
                let _ = appsrc.end_of_stream();
            }
            let mut t = shared.times.lock().unwrap();
            t.composite += tc;
            t.encode_push += te;
        })
    }
    .map_err(|e| Error::io("starting a thread", e))?;

    // The bus loop: errors, end of stream, cancellation, progress.
    let bus = pipeline.bus().expect("pipeline has a bus");
    let mut missing_plugin: Option<String> = None;
    let mut progress = ctl.progress;
    let mut last_report = Instant::now();
    // A pipeline that stops producing frames without an error or end of stream (seen with a truncated MP4
    // whose demuxer paused) must not hang the run: after this long without a frame it fails.
    let stall_limit = Duration::from_secs(if cfg.input.contains("://") { 60 } else { 20 });
    let mut last_progress = (0u64, Instant::now());
    let outcome: Result<()> = loop {
        let done = shared.frames_out.load(Ordering::SeqCst);
        if done != last_progress.0 {
            last_progress = (done, Instant::now());
        } else if last_progress.1.elapsed() > stall_limit {
            break Err(Error::Input {
                path: cfg.input.clone(),
                reason: format!(
                    "is truncated or damaged, or its source stopped: no frame came through for {} s{}. Nothing was \
                     written",
                    stall_limit.as_secs(),
                    if done > 0 { format!(" (after {done} frames)") } else { String::new() }
                ),
            });
        }
        if ctl.cancel.load(Ordering::SeqCst) {
            break Err(Error::Interrupted(format!(
                "stopped after {} frames; the partial output was removed",
                shared.frames_out.load(Ordering::SeqCst)
            )));
        }
        if shared.stop.load(Ordering::SeqCst) && shared.error.lock().unwrap().is_some() {
            break Err(shared.error.lock().unwrap().take().unwrap());
        }
        if let Some(p) = progress.as_mut() {
            if last_report.elapsed() > Duration::from_millis(200) {
                last_report = Instant::now();
                p(progress_now(&shared));
            }
        }
        let Some(msg) = bus.timed_pop(gst::ClockTime::from_mseconds(100)) else { continue };
        match msg.view() {
            gst::MessageView::Eos(_) => break Ok(()),
            gst::MessageView::Error(err) => {
                let from_decode = err.src().is_some_and(|s| s.has_as_ancestor(&decode) || s == decode.upcast_ref::<gst::Object>() || s == video_head.upcast_ref::<gst::Object>());
                let e = if let (true, Some(codec)) = (from_decode, missing_plugin.clone()) {
                    Error::MissingDecoder {
                        path: cfg.input.clone(),
                        codec,
                        hint: "Install the GStreamer plugin packages (gstreamer1.0-plugins-bad, -ugly, gstreamer1.0-libav) \
                               or convert the file to H.264/H.265/VP9 first; `matteflow doctor` lists what is installed."
                            .into(),
                    }
                } else if from_decode {
                    source::explain_decode_error(&cfg.input, &err)
                } else {
                    Error::Output {
                        path: staged.final_path.clone(),
                        reason: format!(
                            "encoding failed in {}: {}{}",
                            err.src().map(|s| s.name().to_string()).unwrap_or_default(),
                            err.error(),
                            err.debug().map(|d| format!(" ({})", d.lines().last().unwrap_or(""))).unwrap_or_default()
                        ),
                    }
                };
                break Err(e);
            }
            gst::MessageView::Element(_) => {
                if let Ok(m) = gstreamer_pbutils::MissingPluginMessage::parse(&msg) {
                    missing_plugin = Some(m.description().to_string());
                }
            }
            gst::MessageView::Application(a) => {
                if a.structure().is_some_and(|s| s.name() == "matteflow-no-video") {
                    break Err(Error::Input {
                        path: cfg.input.clone(),
                        reason: if missing_plugin.is_some() {
                            format!("its video cannot be decoded: no plugin for {}", missing_plugin.clone().unwrap())
                        } else {
                            "has no video stream (audio only?)".into()
                        },
                    });
                }
            }
            _ => {}
        }
    };

    shared.stop.store(true, Ordering::SeqCst);
    let _ = pipeline.set_state(gst::State::Null);
    // Wait for the stage threads, but never forever: a thread stuck in a driver call must not turn an error or
    // a Ctrl-C into a hang. Abandoned threads die with the process; the staged output is removed on return.
    let deadline = Instant::now() + Duration::from_secs(10);
    while [&t_pull, &t_infer, &t_push].iter().any(|t| !t.is_finished()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let stuck = [&t_pull, &t_infer, &t_push].iter().filter(|t| !t.is_finished()).count();
    if stuck > 0 {
        tracing::warn!("{stuck} stage thread(s) did not stop within 10 s; abandoning them");
        outcome?;
        return Err(Error::Runtime(format!("{stuck} stage thread(s) stopped responding; the partial output was removed")));
    }
    let _ = t_pull.join();
    let _ = t_infer.join();
    let _ = t_push.join();
    outcome?;
    if let Some(e) = shared.error.lock().unwrap().take() {
        return Err(e);
    }
    let frames = shared.frames_out.load(Ordering::SeqCst);
    if frames == 0 {
        return Err(Error::Input { path: cfg.input.clone(), reason: "contains no video frames".into() });
    }
    let duration = shared.duration_ns.load(Ordering::SeqCst);
    let last_end = shared.last_end_ns.load(Ordering::SeqCst);
    if duration != u64::MAX && !ctl.allow_short && (last_end as f64) < duration as f64 * 0.9 - 1e9 {
        return Err(Error::Input {
            path: cfg.input.clone(),
            reason: format!(
                "is truncated or damaged: video stopped at {:.2} s but the file says it lasts {:.2} s. \
                 Nothing was written; pass --allow-short to keep the frames that decode",
                last_end as f64 / 1e9,
                duration as f64 / 1e9
            ),
        });
    }
    if let Some(p) = progress.as_mut() {
        p(progress_now(&shared));
    }
    let wall = start.elapsed();
    let info = shared.info.lock().unwrap().unwrap_or(StreamInfo {
        width: 0,
        height: 0,
        fps: gst::Fraction::new(0, 1),
        par: gst::Fraction::new(1, 1),
    });
    let final_path = staged.commit()?;
    if format == Format::Png {
        tracing::info!("PNG frames are in {}", final_path.display());
    }
    let stages = *shared.times.lock().unwrap();
    Ok(Report {
        input: cfg.input.clone(),
        output: final_path.display().to_string(),
        frames,
        width: info.width,
        height: info.height,
        fps_num: info.fps.numer(),
        fps_den: info.fps.denom(),
        model: model_name,
        provider: provider.name().into(),
        wall,
        stages,
        has_audio: has_audio.load(Ordering::SeqCst),
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

/// Decodes the whole input to RGBA and discards it: the decode stage's cost on its own (for `bench`).
pub fn decode_only(input: &str) -> Result<Duration> {
    gst::init()?;
    let uri = source::input_uri(input)?;
    let pipeline = gst::Pipeline::new();
    let decode = gst::ElementFactory::make("uridecodebin").property("uri", &uri).build()?;
    let convert = gst::ElementFactory::make("videoconvert").property("n-threads", 2u32).build()?;
    let caps = gst::ElementFactory::make("capsfilter")
        .property("caps", gst::Caps::builder("video/x-raw").field("format", "RGBA").build())
        .build()?;
    let fake = gst::ElementFactory::make("fakesink").property("sync", false).build()?;
    pipeline.add_many([&decode, &convert, &caps, &fake])?;
    gst::Element::link_many([&convert, &caps, &fake])?;
    source::link_video_pads(&decode, &convert);
    let t = Instant::now();
    pipeline.set_state(gst::State::Playing)?;
    let bus = pipeline.bus().unwrap();
    let r = loop {
        let Some(msg) = bus.timed_pop(gst::ClockTime::from_seconds(60)) else {
            break Err(Error::Gst("decode timed out".into()));
        };
        match msg.view() {
            gst::MessageView::Eos(_) => break Ok(t.elapsed()),
            gst::MessageView::Error(e) => break Err(source::explain_decode_error(input, &e)),
            _ => {}
        }
    };
    let _ = pipeline.set_state(gst::State::Null);
    r
}

//! Live matting: a camera, stream or test pattern in; matted video out to RTMP, a virtual camera, the screen and
//! recordings at once, at the source's frame rate, for hours.
//!
//! ```text
//! input pipeline ─ appsink ─▶ [capture] ─(2 frames, drop oldest)─▶ [matte + composite] ─▶ output pipeline(s)
//!                                                                     │        ▲
//!                                                                     ▼        │ newest mask
//!                                                                  [model: preprocess → infer → postprocess]
//! control endpoint (tokio): /metrics, /status, POST /background /model /pause /resume /matte
//!                   panel: GET / (the page), /preview.mjpg[?view=original] (the output, or the input before
//!                          matting: one frame every 200 ms encoded on mf-preview while someone watches that
//!                          view), /stats, /models, /backgrounds
//! ```
//!
//! Modules: [`audio`] (sound from the source or a capture device, in sync), [`input`] (sources), [`decode`]
//! (decoding into CUDA memory or system memory), [`matte`] (the
//! budgeted model scheduling), [`output`] (sinks), [`rtmp`] (RTMP streams and reconnection), [`stats`] (latency and
//! counters), [`gpu`] (GPU use through NVML), [`control`] (HTTP), [`panel`] (the browser page, its preview and
//! checks), [`job`] (pipeline files).

pub mod audio;
pub mod control;
pub mod decode;
pub mod gpu;
pub mod input;
pub mod job;
pub mod matte;
pub mod output;
mod recording;
pub mod panel;
pub mod rtmp;
pub mod stats;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;
use serde::{Deserialize, Serialize};

use crate::composite::Background;
use crate::config::BackgroundSpec;
use crate::cuda::gst_cuda::{CudaFrame, GstCuda, CAPS_FEATURE_CUDA};
use crate::engine::{budget, Compositor, FrameRef, MatteSettings, Placement, StagesChoice};
use crate::error::{Error, Result};
use crate::infer::{OnnxSegmenter, Segmenter};
use crate::postprocess::PostprocessConfig;

pub use decode::Decode;
pub use input::{Capture, InputSpec};
pub use matte::{Controls, Settings};
pub use output::{OutputOptions, OutputSpec};
pub use stats::{LiveStats, LiveSummary};

/// The control endpoint's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControlConfig {
    /// Address to listen on. Loopback unless you choose otherwise: nothing here is authenticated.
    pub listen: SocketAddr,
    /// Image and video backgrounds the endpoint may switch to must be files inside this folder; without it,
    /// only colours, blur and transparency can be chosen remotely.
    pub background_dir: Option<PathBuf>,
    /// Models the endpoint may switch to (empty: every shipped manifest).
    pub models: Vec<String>,
    /// Every request must carry this token; off loopback one is generated (and printed once) when none is given.
    pub token: Option<String>,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig { listen: SocketAddr::from(([127, 0, 0, 1], 8787)), background_dir: None, models: Vec::new(), token: None }
    }
}

/// Everything `live` needs to know (what the user asked for; runtime state lives in the stage threads).
#[derive(Debug, Clone)]
pub struct LiveConfig {
    pub input: InputSpec,
    pub capture: Capture,
    pub outputs: Vec<OutputSpec>,
    pub output_options: OutputOptions,
    /// Where the sound comes from and how it is encoded.
    pub audio: audio::AudioOptions,
    /// Background, mask settings, infer-every: the engine's settings, changeable while running.
    pub matte: MatteSettings,
    /// CPU or GPU stages (auto: the GPU's when the model runs on CUDA and they do what was asked).
    pub stages: StagesChoice,
    /// Decode to system memory and upload, even where nvcodec could leave a file's or a stream's frames in CUDA
    /// memory for the GPU stages (see [`decode`]).
    pub host_decode: bool,
    /// How long a frame may wait for its own mask before an earlier mask is used, ms.
    pub budget_ms: u32,
    /// Print a statistics line this often, seconds (0 = only at exit).
    pub stats_interval_s: u32,
    /// Stop after this many output frames (tests, benchmarks).
    pub max_frames: Option<u64>,
    /// Stop after this many seconds.
    pub duration_s: Option<f64>,
    pub control: Option<ControlConfig>,
}

impl LiveConfig {
    pub fn new(input: InputSpec, outputs: Vec<OutputSpec>) -> Self {
        LiveConfig {
            input,
            capture: Capture::default(),
            outputs,
            output_options: OutputOptions::default(),
            audio: audio::AudioOptions::default(),
            matte: MatteSettings { post: PostprocessConfig { smooth: 0.5, ..Default::default() }, ..Default::default() },
            stages: StagesChoice::Auto,
            host_decode: false,
            budget_ms: 40,
            stats_interval_s: 5,
            max_frames: None,
            duration_s: None,
            control: None,
        }
    }

    /// Checks combinations before anything starts.
    pub fn validate(&self) -> Result<()> {
        if self.outputs.is_empty() {
            return Err(Error::config(
                "no output: give at least one --output (rtmp://…, v4l2:/dev/videoN, screen, or a file such as rec.mp4)",
            ));
        }
        if self.matte.background == BackgroundSpec::Transparent {
            if let Some(o) = self.outputs.iter().find(|o| !o.keeps_alpha()) {
                return Err(Error::config(format!(
                    "background 'transparent' needs outputs that carry alpha (.mov, .mkv, folder/), but {} cannot; \
                     choose a colour, image, video or blur background",
                    String::from(o.clone())
                )));
            }
        }
        self.matte.validate()?;
        self.audio.validate()?;
        let mut seen = std::collections::HashSet::new();
        for o in &self.outputs {
            if !seen.insert(String::from(o.clone())) {
                return Err(Error::config(format!("output {} is given twice", String::from(o.clone()))));
            }
        }
        Ok(())
    }
}

/// Optional hooks into a live run.
pub struct LiveHooks<'a> {
    /// Set to stop: outputs are finished properly (files playable), then `run` returns.
    pub cancel: Arc<AtomicBool>,
    /// Called with each periodic statistics line.
    pub on_window: Option<&'a mut dyn FnMut(&LiveSummary)>,
    /// Opens a model by name, for switching models from the control endpoint.
    pub open_model: Option<control::ModelOpener>,
    /// Called once the pipeline runs (with the control endpoint's bound address, when there is one).
    pub on_started: Option<&'a mut dyn FnMut(Option<SocketAddr>)>,
}

impl Default for LiveHooks<'_> {
    fn default() -> Self {
        LiveHooks { cancel: Arc::new(AtomicBool::new(false)), on_window: None, open_model: None, on_started: None }
    }
}

/// What a live run did.
#[derive(Debug, Clone, Serialize)]
pub struct LiveReport {
    pub summary: LiveSummary,
    /// Recordings written (final names).
    pub recordings: Vec<PathBuf>,
    /// Why it stopped.
    pub stopped: String,
    /// Outputs that failed while the others went on ("disk full: PATH (…)"); their recordings are kept.
    pub output_failures: Vec<String>,
    /// How the video was decoded: `cuda` (nvcodec, into CUDA memory) or `host: <why>` (system memory).
    pub decode: String,
}

/// Runs until the source ends, `cancel` is set, a limit is reached, or something fails. Outputs are always
/// finished (end of stream through the muxers, temporary names renamed) before it returns, also on errors.
pub fn run(cfg: &LiveConfig, segmenter: OnnxSegmenter, hooks: LiveHooks<'_>) -> Result<LiveReport> {
    gst::init()?;
    cfg.validate()?;
    let LiveHooks { cancel, mut on_window, open_model, mut on_started } = hooks;
    let mut settings = cfg.matte.clone();
    settings.kind = MatteSettings::kind_for(&settings.background);
    settings.model = segmenter.model().manifest.name.clone();
    let controls = Controls::new(settings.clone());
    check_before_going_live(cfg, &settings)?;
    let place = Placement::resolve(cfg.stages, segmenter.provider(), &segmenter.model().manifest, &settings)?;
    let comp = Compositor::open(&settings, &place)?;
    let mut started = StartedInput::start(cfg, &cancel, &place)?;
    started.decode.announce();
    let decode = started.decode.to_string();
    let stats = Arc::new(LiveStats::default());
    let fps = started.info.fps();
    let fps_u = if fps.numer() > 0 { (fps.numer() as f64 / fps.denom() as f64).round() as u32 } else { 30 };
    let sound = match audio::resolve(&cfg.audio.source, started.audio_tap.take(), &started.clock, &cfg.input.describe()) {
        Ok(s) => s,
        Err(e) => {
            let _ = started.input.pipeline.set_state(gst::State::Null);
            return Err(e);
        }
    };
    let audio_opts = sound.as_ref().map(|_| &cfg.audio);
    let outputs = output::Outputs::build_with_audio(&cfg.outputs, &cfg.output_options, fps_u, started.clock.clone(), stats.clone(), audio_opts)
        .and_then(|o| o.start().map(|_| o));
    let mut outputs = match outputs {
        Ok(o) => o,
        Err(e) => {
            let _ = started.input.pipeline.set_state(gst::State::Null);
            return Err(e);
        }
    };
    tracing::info!(
        "live: {} ({}x{} @ {}/{}) → {}; model {} on {}, {} stages, decode {decode}",
        cfg.input.describe(),
        started.info.width(),
        started.info.height(),
        fps.numer(),
        fps.denom(),
        outputs.descriptions.join(", "),
        settings.model,
        segmenter.provider().name(),
        if place.is_device() { "GPU" } else { "CPU" }
    );

    let gpu_in_use = segmenter.provider() != crate::runtime::Provider::Cpu;
    let audio_shared = audio::AudioShared::new(cfg.audio.muted);
    let network = matches!(cfg.input, InputSpec::Uri(_));

    let (wtx, wrx, worker) = match budget::spawn_worker(segmenter, &settings, place.clone(), stats.clone()) {
        Ok(w) => w,
        Err(e) => {
            let _ = started.input.pipeline.set_state(gst::State::Null);
            let _ = outputs.finish();
            return Err(e);
        }
    };
    *controls.worker.lock().unwrap() = Some(wtx.clone());
    let panel = match &cfg.control {
        Some(_) => Some(panel::Panel::start()?),
        None => None,
    };
    let server = match (&cfg.control, &panel) {
        (Some(c), Some(panel)) => Some(control::Server::start(
            c.clone(),
            control::State {
                controls: controls.clone(),
                stats: stats.clone(),
                alpha_outputs: cfg.outputs.iter().all(|o| o.keeps_alpha()),
                audio: outputs.audio.as_ref().map(|_| audio_shared.clone()),
                open_model,
                gpu: gpu_in_use,
                panel: panel.clone(),
            },
        )?),
        _ => None,
    };
    if let Some(f) = on_started.as_mut() {
        f(server.as_ref().map(|s| s.addr));
    }

    // The sound starts with the picture; it never waits on the model.
    let audio_feed = match (sound, outputs.audio.as_ref()) {
        (Some(input), Some(branch)) => {
            Some(audio::spawn_feed(input, branch.appsrc.clone(), started.clock.clone(), audio_shared.clone(), network)?)
        }
        _ => None,
    };
    let capture = CaptureThread::spawn(&started, stats.clone(), network)?;
    let mut stage = MatteStage {
        sched: budget::MaskScheduler::new(wtx, wrx),
        comp,
        place,
        settings,
        generation: controls.generation(),
        budget: Duration::from_millis(cfg.budget_ms as u64),
        stamper: Stamper::new(network),
        clock: started.clock.clone(),
        audio: audio_shared.clone(),
        idx: 0,
        preview: panel.map(|p| p.preview.clone()),
    };
    let limits = Limits { cancel: &cancel, max_frames: cfg.max_frames, duration_s: cfg.duration_s, stats_interval_s: cfg.stats_interval_s };
    let outcome = frame_loop(cfg, &limits, &capture, &mut stage, &controls, &mut outputs, &stats, &mut on_window);

    // Wind down: stop the source, finish the outputs (always, so recordings are playable), stop the threads.
    stats.sample_threads();
    // The sound first, while the input still runs: it ends where the last picture ends.
    if let Some(f) = audio_feed {
        f.stop();
    }
    capture.stop(&started.input.pipeline);
    *controls.worker.lock().unwrap() = None;
    drop(stage);
    let _ = worker.join();
    if let Some(s) = server {
        s.stop();
    }
    let output_failures = outputs.failures();
    let finished = outputs.finish();
    let summary = stats.total();
    let recordings = finished?;
    match outcome {
        Ok(stopped) => Ok(LiveReport { summary, recordings, stopped, output_failures, decode }),
        Err(e) if recordings.is_empty() => Err(e),
        Err(e) => {
            let list = recordings.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
            Err(Error::Runtime(format!("{e} (the recording was finished and kept: {list})")))
        }
    }
}

/// What can be checked before going live: the input first (a missing camera is the first thing to say, at once,
/// before any wait for an RTMP server), the control address, the background, the RTMP servers.
fn check_before_going_live(cfg: &LiveConfig, settings: &MatteSettings) -> Result<()> {
    input::check(&cfg.input)?;
    if let Some(c) = &cfg.control {
        control::check(c)?;
    }
    Background::open(&settings.background)?;
    for o in &cfg.outputs {
        if let OutputSpec::Rtmp(url) = o {
            rtmp::check_rtmp(url, Duration::from_secs(cfg.output_options.rtmp_start_timeout_s as u64))?;
        }
    }
    Ok(())
}

/// When the frame loop stops besides the input ending.
struct Limits<'a> {
    cancel: &'a AtomicBool,
    max_frames: Option<u64>,
    duration_s: Option<f64>,
    stats_interval_s: u32,
}

/// Takes frames from the capture thread, mattes and composites them, and hands them to the outputs until the
/// input ends, a limit is reached or something fails. Returns why it stopped.
#[allow(clippy::too_many_arguments)]
fn frame_loop(
    cfg: &LiveConfig,
    limits: &Limits<'_>,
    capture: &CaptureThread,
    stage: &mut MatteStage,
    controls: &Controls,
    outputs: &mut output::Outputs,
    stats: &LiveStats,
    on_window: &mut Option<&mut dyn FnMut(&LiveSummary)>,
) -> Result<String> {
    let started = Instant::now();
    let mut last_window = Instant::now();
    loop {
        if limits.cancel.load(Ordering::SeqCst) {
            return Ok("stopped by signal".into());
        }
        if let Some(m) = limits.max_frames.filter(|m| stats.output.load(Ordering::Relaxed) >= *m) {
            return Ok(format!("reached {m} frames"));
        }
        if let Some(d) = limits.duration_s.filter(|d| started.elapsed().as_secs_f64() >= *d) {
            return Ok(format!("ran {d} s"));
        }
        if let Some(e) = outputs.poll_error() {
            return Err(e);
        }
        if limits.stats_interval_s > 0 && last_window.elapsed() >= Duration::from_secs(limits.stats_interval_s as u64) {
            last_window = Instant::now();
            stats.sample_threads();
            let w = stats.take_window();
            if let Some(f) = on_window.as_mut() {
                f(&w);
            }
        }
        let (sample, arrival) = match capture.next(Duration::from_millis(100)) {
            Next::Frame(s, a) => (s, a),
            Next::Waiting => continue,
            Next::Ended(Ok(())) => return Ok("the input ended".into()),
            Next::Ended(Err(e)) => return Err(Error::Input { path: cfg.input.describe(), reason: format!("stopped: {e}") }),
        };
        stage.follow(controls);
        // The panel's previews (only while watched): the input frame as captured, then the same frame matted.
        let due = stage.preview.as_ref().map(|p| p.due()).unwrap_or_default();
        let Some((data, w, h, pts)) = stage.matte(&sample, arrival, due.original, stats)? else { continue };
        if let (true, Some(p)) = (due.output, &stage.preview) {
            p.offer(panel::View::Output, &data, w, h);
        }
        if let Err(e) = outputs.push(data, w, h, capture.fps, pts) {
            return Err(outputs.poll_error().unwrap_or(e));
        }
        stage.pushed(pts, capture.fps);
        stats.output.fetch_add(1, Ordering::Relaxed);
    }
}

/// The compositing side of the budgeted policy: per frame, the mask to use (the scheduler) and the composite.
struct MatteStage {
    sched: budget::MaskScheduler,
    comp: Compositor,
    place: Placement,
    settings: MatteSettings,
    generation: u64,
    budget: Duration,
    stamper: Stamper,
    clock: output::ClockRef,
    /// Where the sound learns how long the picture waited (it is held as long) and the stream's time offset.
    audio: Arc<audio::AudioShared>,
    idx: u64,
    /// The control panel's previews, offered a frame every 200 ms while watched.
    preview: Option<Arc<panel::Preview>>,
}

impl MatteStage {
    /// A frame stamped `pts` has just been handed to the outputs: the sound of its instant may follow.
    fn pushed(&self, pts: Option<gst::ClockTime>, fps: gst::Fraction) {
        if let (Some(p), Some(n)) = (pts, self.clock.running_now()) {
            self.audio.video_delay_ns.store(n.saturating_sub(p).nseconds(), Ordering::Relaxed);
            let _ = self.audio.first_video_ns.compare_exchange(u64::MAX, p.nseconds(), Ordering::SeqCst, Ordering::SeqCst);
            let frame = if fps.numer() > 0 { gst::ClockTime::SECOND.mul_div_floor(fps.denom() as u64, fps.numer() as u64) } else { None };
            self.audio.video_end_ns.store((p + frame.unwrap_or(gst::ClockTime::ZERO)).nseconds(), Ordering::SeqCst);
        }
        if let Some(off) = self.stamper.offset {
            self.audio.stream_offset_ns.store(off as i64, Ordering::SeqCst);
        }
    }

    /// Picks up settings changed through the control endpoint.
    fn follow(&mut self, controls: &Controls) {
        let g = controls.generation();
        if g == self.generation {
            return;
        }
        self.generation = g;
        let mut new = controls.get();
        new.kind = MatteSettings::kind_for(&new.background);
        if new.background != self.settings.background {
            match Compositor::open(&new, &self.place) {
                Ok(c) => self.comp = c,
                Err(e) => {
                    tracing::warn!("background {} not used: {e}", String::from(new.background.clone()));
                    new.background = self.settings.background.clone();
                    new.kind = self.settings.kind;
                }
            }
        }
        if new.paused && !self.settings.paused {
            self.sched.forget();
        }
        self.settings = new;
    }

    /// Mattes one captured frame within the budget (offering it to the panel's original view first when
    /// `original_due`). Returns the output frame, its size and timestamp.
    #[allow(clippy::type_complexity)]
    fn matte(
        &mut self,
        sample: &gst::Sample,
        arrival: Option<gst::ClockTime>,
        original_due: bool,
        stats: &LiveStats,
    ) -> Result<Option<(Vec<u8>, u32, u32, Option<gst::ClockTime>)>> {
        let Some(buffer) = sample.buffer() else { return Ok(None) };
        let Some(caps) = sample.caps() else { return Ok(None) };
        let Some(info) = gstreamer_video::VideoInfo::from_caps(caps).ok() else { return Ok(None) };
        let (w, h) = (info.width(), info.height());
        let pts = self.stamper.stamp(crate::source::running_pts(sample), arrival);
        let deadline = self.deadline(pts, arrival);
        if caps.features(0).is_some_and(|f| f.contains(CAPS_FEATURE_CUDA)) {
            return self.matte_nv12(sample, pts, deadline, original_due, stats).map(Some);
        }
        if let (true, Some(p)) = (original_due, &self.preview) {
            p.offer_sample(panel::View::Original, sample);
        }
        let Ok(map) = buffer.map_readable() else { return Ok(None) };
        let mut data = map.as_slice()[..(w * h * 4) as usize].to_vec();
        drop(map);
        let idx = self.idx;
        self.idx += 1;
        if self.settings.paused {
            stats.passthrough.fetch_add(1, Ordering::Relaxed);
            return Ok(Some((data, w, h, pts)));
        }
        let (mask, how) = self.sched.mask_for(idx, FrameRef::Host(&data), w, h, self.settings.infer_every, deadline, stats)?;
        let Some(mask) = mask else {
            stats.passthrough.fetch_add(1, Ordering::Relaxed);
            return Ok(Some((data, w, h, pts)));
        };
        if how == budget::MaskUse::Reused {
            stats.reused.fetch_add(1, Ordering::Relaxed);
        }
        let t = Instant::now();
        let wider = self.comp.run(&mut data, w, h, mask)?;
        stats.record(stats::Measure::Composite, t.elapsed());
        let (ow, oh) = crate::composite::output_size(self.settings.kind, w, h);
        Ok(Some((wider.unwrap_or(data), ow, oh, pts)))
    }

    /// Until when a frame stamped `pts` (arrived at `arrival`) may wait for its own mask.
    fn deadline(&self, pts: Option<gst::ClockTime>, arrival: Option<gst::ClockTime>) -> Instant {
        let now = Instant::now();
        // The budget counts from capture: a camera's timestamp, or when a network frame reached us. A network
        // frame's stamp says when the least-delayed frame would have arrived (see `Stamper`): counting from it
        // charged the stream's own jitter and the decoder's reordering delay (~100 ms with B-frames) to the
        // budget, and most frames then got an earlier frame's mask without waiting at all.
        let since = if self.stamper.network { arrival } else { pts };
        let age = match (since, self.clock.running_now()) {
            (Some(p), Some(n)) => n.checked_sub(p).map(|d| Duration::from_nanos(d.nseconds())).unwrap_or_default(),
            _ => Duration::ZERO,
        };
        (now + self.budget).checked_sub(age).unwrap_or(now)
    }

    /// [`MatteStage::matte`] for an NV12 frame nvcodec left in CUDA memory: the model thread reads it where it
    /// is, and the compositor converts and composites it there and downloads the output frame once (unmatted
    /// while paused or before the first mask).
    fn matte_nv12(
        &mut self,
        sample: &gst::Sample,
        pts: Option<gst::ClockTime>,
        deadline: Instant,
        original_due: bool,
        stats: &LiveStats,
    ) -> Result<(Vec<u8>, u32, u32, Option<gst::ClockTime>)> {
        let frame = Arc::new(CudaFrame::map(sample)?);
        let (w, h) = (frame.width, frame.height);
        let mut out = vec![0u8; (w * h * 4) as usize];
        let idx = self.idx;
        self.idx += 1;
        if let (true, Some(p)) = (original_due, &self.preview) {
            self.comp.run_nv12(&frame, None, &mut out)?;
            p.offer(panel::View::Original, &out, w, h);
        }
        if self.settings.paused {
            if !original_due {
                self.comp.run_nv12(&frame, None, &mut out)?;
            }
            stats.passthrough.fetch_add(1, Ordering::Relaxed);
            return Ok((out, w, h, pts));
        }
        let (mask, how) = self.sched.mask_for(idx, FrameRef::Device(&frame), w, h, self.settings.infer_every, deadline, stats)?;
        match (mask.is_some(), how) {
            (false, _) => stats.passthrough.fetch_add(1, Ordering::Relaxed),
            (true, budget::MaskUse::Reused) => stats.reused.fetch_add(1, Ordering::Relaxed),
            (true, _) => 0,
        };
        let t = Instant::now();
        self.comp.run_nv12(&frame, mask, &mut out)?;
        if mask.is_some() {
            stats.record(stats::Measure::Composite, t.elapsed());
        }
        Ok((out, w, h, pts))
    }
}

/// Output timestamps. Cameras and the test pattern stamp frames when they are captured (kept as running time on
/// the shared clock); a network stream's timestamps say nothing about our clock, so they are shifted to the
/// earliest arrival they allow (latency is then measured from arrival).
struct Stamper {
    network: bool,
    offset: Option<i128>,
    last: i128,
}

impl Stamper {
    fn new(network: bool) -> Self {
        Stamper { network, offset: None, last: -1_000_000 }
    }

    fn stamp(&mut self, stream_rt: Option<gst::ClockTime>, arrival: Option<gst::ClockTime>) -> Option<gst::ClockTime> {
        if !self.network {
            return stream_rt;
        }
        // Keep the stream's own spacing (frames often arrive in bursts), anchored at the first arrival.
        let (Some(t), Some(a)) = (stream_rt, arrival) else { return arrival };
        let (t, a) = (t.nseconds() as i128, a.nseconds() as i128);
        let mut off = *self.offset.get_or_insert(a - t);
        // The least-delayed frame so far defines arrival (the first one is usually the latest: the stream starts
        // with a burst), so no frame is stamped after it arrived; a jump in the stream's timestamps (servers
        // restart them for a new viewer) re-anchors.
        if a - t < off || (t + off - a).abs() > 1_000_000_000 {
            off = a - t;
            self.offset = Some(off);
        }
        // Strictly increasing: servers stamp a new viewer's first frames alike.
        let v = (t + off).max(self.last + 1_000_000).max(0);
        self.last = v;
        Some(gst::ClockTime::from_nseconds(v as u64))
    }
}

/// The input pipeline, started, with its first frame's format and the clock frames are stamped on.
struct StartedInput {
    input: input::LiveInput,
    /// The source's audio track, tapped when the run may use it.
    audio_tap: Option<audio::SourceTap>,
    first: gst::Sample,
    info: gstreamer_video::VideoInfo,
    clock: output::ClockRef,
    /// How the frames are decoded.
    decode: Decode,
    /// Our CUDA context as GStreamer's, given to the decoders; held while the input runs.
    _gst_cuda: Option<GstCuda>,
}

/// How one try at starting the input ended, short of an error.
enum Attempt {
    Started(Box<StartedInput>),
    /// Decoding into CUDA memory turned out not to work for this stream, for this reason.
    CudaRefused(String),
}

impl StartedInput {
    /// Starts the input and waits for its first frame, which tells the size and rate; a source that gives none
    /// in time is reported as such. Decodes into CUDA memory where [`decode::decide`] allows; where the stream
    /// then shows that it cannot (its codec, its decoder failing, its pixels not square), starts it again
    /// decoding to system memory.
    fn start(cfg: &LiveConfig, cancel: &AtomicBool, place: &Placement) -> Result<StartedInput> {
        let gst_cuda = match place {
            Placement::Device(gpu) => Some(GstCuda::new(gpu).map_err(|e| match e {
                Error::Cuda(m) => m,
                other => other.to_string(),
            })),
            Placement::Host => None,
        };
        let cuda_ready = match &gst_cuda {
            Some(r) => r.as_ref().map(|_| ()).map_err(Clone::clone),
            None => Err("the stages run on the CPU".into()),
        };
        let ask = decode::DecodeAsk { device_stages: place.is_device(), input: &cfg.input, capture: cfg.capture, host_decode: cfg.host_decode, cuda_ready };
        let mut decode = decode::decide(&ask);
        let gst_cuda = gst_cuda.and_then(|r| r.ok());
        loop {
            let cuda = gst_cuda.as_ref().filter(|_| decode == Decode::Cuda);
            match Self::attempt(cfg, cancel, cuda)? {
                Attempt::Started(s) => match (cuda, decode::non_square(s.info.par())) {
                    (Some(_), Some(why)) => {
                        let _ = s.input.pipeline.set_state(gst::State::Null);
                        decode = Decode::Host(why);
                    }
                    _ => return Ok(StartedInput { decode, _gst_cuda: gst_cuda, ..*s }),
                },
                Attempt::CudaRefused(why) => decode = Decode::Host(why),
            }
            tracing::info!("{}: decoding into CUDA memory does not suit it; starting it again", cfg.input.describe());
        }
    }

    /// One try: builds and starts the input (decoding into CUDA memory in `cuda`'s context when given) and
    /// waits for its first frame.
    fn attempt(cfg: &LiveConfig, cancel: &AtomicBool, cuda: Option<&GstCuda>) -> Result<Attempt> {
        let input = input::build(&cfg.input, cfg.capture, cuda)?;
        let audio_tap = match cfg.audio.source {
            audio::AudioSpec::Auto | audio::AudioSpec::Source => audio::tap_source(&input),
            _ => None,
        };
        let clock = gst::SystemClock::obtain();
        input.pipeline.use_clock(Some(&clock));
        let fail = |input: &input::LiveInput, reason: String| {
            let _ = input.pipeline.set_state(gst::State::Null);
            Error::Input { path: cfg.input.describe(), reason }
        };
        let refused = |input: &input::LiveInput, why: String| {
            let _ = input.pipeline.set_state(gst::State::Null);
            Ok(Attempt::CudaRefused(why))
        };
        if input.pipeline.set_state(gst::State::Playing).is_err() {
            let msg = input_error_message(&input.pipeline, Duration::from_secs(2));
            if let Some(why) = cuda_trouble(&input, msg.as_ref()) {
                return refused(&input, why);
            }
            return Err(fail(&input, msg.as_ref().map(explain_input_error).unwrap_or_else(|| "it did not start".into())));
        }
        let waiting = Instant::now();
        let first_wait = Duration::from_secs(if matches!(cfg.input, InputSpec::Uri(_)) { 20 } else { 10 });
        let first = loop {
            if let Some(s) = input.appsink.try_pull_sample(gst::ClockTime::from_mseconds(100)) {
                break s;
            }
            let msg = input_error_message(&input.pipeline, Duration::ZERO);
            if let Some(why) = cuda_trouble(&input, msg.as_ref()) {
                return refused(&input, why);
            }
            if let Some(m) = msg {
                return Err(fail(&input, explain_input_error(&m)));
            }
            if input.appsink.is_eos() || waiting.elapsed() > first_wait || cancel.load(Ordering::SeqCst) {
                return Err(fail(&input, format!("gave no video frame within {} s", first_wait.as_secs())));
            }
        };
        let Some(info) = first.caps().and_then(|c| gstreamer_video::VideoInfo::from_caps(c).ok()) else {
            return Err(fail(&input, "gave a frame without video caps".into()));
        };
        let base_time = input.pipeline.base_time().unwrap_or(gst::ClockTime::ZERO);
        let clock = output::ClockRef { clock: clock.upcast(), base_time };
        let decode = Decode::Host(String::new());
        Ok(Attempt::Started(Box::new(StartedInput { first, info, clock, input, audio_tap, decode, _gst_cuda: None })))
    }
}

/// Why a start decoding into CUDA memory should be tried again decoding to system memory: the decoder gave
/// system memory only, or the GPU decoder failed (an error posted by an nvcodec decoder). None for anything
/// else (a source that cannot be reached fails the same either way), and where the input decodes to system
/// memory already.
fn cuda_trouble(input: &input::LiveInput, error: Option<&gst::Message>) -> Option<String> {
    if !input.cuda {
        return None;
    }
    if let Some(why) = input.cuda_refused() {
        return Some(why);
    }
    let msg = error?;
    let el = msg.src().and_then(|s| s.downcast_ref::<gst::Element>())?;
    let factory = el.factory()?;
    let gpu_decoder = factory.name().starts_with("nv") && factory.metadata("klass").is_some_and(|k| k.contains("Decoder"));
    gpu_decoder.then(|| format!("the GPU decoder {} failed: {}", factory.name(), explain_input_error(msg)))
}

/// How old a live camera's first frame may be when the run starts and still go out.
const STALE_FIRST_FRAME: gst::ClockTime = gst::ClockTime::from_mseconds(250);

/// What the capture thread has for the frame loop.
enum Next {
    Frame(gst::Sample, Option<gst::ClockTime>),
    Waiting,
    Ended(std::result::Result<(), String>),
}

type InputEnd = Arc<std::sync::Mutex<Option<std::result::Result<(), String>>>>;

/// The capture thread: takes every frame from the source at once, so the source is never held up; when the
/// matte stage is behind, the older waiting frame is dropped (and counted). Each frame travels with its arrival
/// time (running time on the shared clock).
struct CaptureThread {
    rx: crossbeam_channel::Receiver<(gst::Sample, Option<gst::ClockTime>)>,
    end: InputEnd,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    fps: gst::Fraction,
}

impl CaptureThread {
    fn spawn(started: &StartedInput, stats: Arc<LiveStats>, network: bool) -> Result<CaptureThread> {
        let (tx, rx) = crossbeam_channel::bounded::<(gst::Sample, Option<gst::ClockTime>)>(2);
        let end: InputEnd = Default::default();
        let stop = Arc::new(AtomicBool::new(false));
        stats.captured.fetch_add(1, Ordering::Relaxed);
        // A camera's first frame waited while the sound device and the outputs started. Once it is stale the
        // run starts with the next one: the muxers would take it as late and stop waiting for the sound of its
        // instant (and a capture device opened after it has no sound for it).
        let age = crate::source::running_pts(&started.first).zip(started.clock.running_now()).map(|(p, n)| n.saturating_sub(p));
        let stale = !network && !started.input.paced.load(Ordering::SeqCst) && age.is_some_and(|a| a > STALE_FIRST_FRAME);
        if stale {
            stats.dropped.fetch_add(1, Ordering::Relaxed);
        } else {
            let _ = tx.try_send((started.first.clone(), started.clock.running_now()));
        }
        let (appsink, pipeline, clock) = (started.input.appsink.clone(), started.input.pipeline.clone(), started.clock.clone());
        let paced = started.input.paced.clone();
        let (stop2, end2, rx2) = (stop.clone(), end.clone(), rx.clone());
        let thread = std::thread::Builder::new()
            .name("mf-capture".into())
            .spawn(move || {
                while !stop2.load(Ordering::SeqCst) {
                    match appsink.try_pull_sample(gst::ClockTime::from_mseconds(100)) {
                        Some(s) => {
                            stats.captured.fetch_add(1, Ordering::Relaxed);
                            if paced.load(Ordering::SeqCst) {
                                // A file waits for us: every frame goes on.
                                let mut item = (s, clock.running_now());
                                while let Err(crossbeam_channel::SendTimeoutError::Timeout(back)) = tx.send_timeout(item, Duration::from_millis(100)) {
                                    if stop2.load(Ordering::SeqCst) {
                                        break;
                                    }
                                    item = back;
                                }
                                continue;
                            }
                            if let Err(crossbeam_channel::TrySendError::Full(s)) = tx.try_send((s, clock.running_now())) {
                                if rx2.try_recv().is_ok() {
                                    stats.dropped.fetch_add(1, Ordering::Relaxed);
                                }
                                let _ = tx.try_send(s);
                            }
                        }
                        None => {
                            let ended = input_error(&pipeline, Duration::ZERO).map(Err).or(appsink.is_eos().then_some(Ok(())));
                            if let Some(r) = ended {
                                *end2.lock().unwrap() = Some(r);
                                break;
                            }
                        }
                    }
                }
            })
            .map_err(|e| Error::io("starting the capture thread", e))?;
        Ok(CaptureThread { rx, end, stop, thread: Some(thread), fps: started.info.fps() })
    }

    fn next(&self, wait: Duration) -> Next {
        match self.rx.recv_timeout(wait) {
            Ok((s, a)) => Next::Frame(s, a),
            Err(_) => match self.end.lock().unwrap().clone() {
                Some(end) if self.rx.is_empty() => Next::Ended(end),
                _ => Next::Waiting,
            },
        }
    }

    fn stop(mut self, pipeline: &gst::Pipeline) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = pipeline.set_state(gst::State::Null);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The input pipeline's error, explained, if it posted one.
fn input_error(p: &gst::Pipeline, wait: Duration) -> Option<String> {
    input_error_message(p, wait).map(|m| explain_input_error(&m))
}

/// The input pipeline's error message, if it posted one.
fn input_error_message(p: &gst::Pipeline, wait: Duration) -> Option<gst::Message> {
    p.bus()?.timed_pop_filtered(gst::ClockTime::from_nseconds(wait.as_nanos() as u64), &[gst::MessageType::Error])
}

/// An input error in the user's terms.
fn explain_input_error(msg: &gst::Message) -> String {
    let gst::MessageView::Error(e) = msg.view() else { return "an error".into() };
    let src = e.src().map(|s| s.name().to_string()).unwrap_or_default();
    let detail = e.debug().map(|d| d.lines().last().unwrap_or("").to_string()).unwrap_or_default();
    let mut why = format!("{} ({src}{})", e.error(), if detail.is_empty() { String::new() } else { format!(": {detail}") });
    if src.starts_with("v4l2src") {
        why.push_str(". Was the camera unplugged or taken by another program?");
    }
    why
}

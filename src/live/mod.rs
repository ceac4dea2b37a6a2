//! Live matting: a camera, stream or test pattern in; matted video out to RTMP, a virtual camera, the screen and
//! recordings at once, at the source's frame rate, for hours.
//!
//! ```text
//! input pipeline ─ appsink ─▶ [capture] ─(2 frames, drop oldest)─▶ [matte + composite] ─▶ output pipeline(s)
//!                                                                     │        ▲
//!                                                                     ▼        │ newest mask
//!                                                                  [model: preprocess → infer → postprocess]
//! control endpoint (tokio): /metrics, /status, POST /background /model /pause /resume /matte
//! ```
//!
//! Modules: [`input`] (sources), [`matte`] (the budgeted model scheduling), [`output`] (sinks), [`rtmp`]
//! (RTMP streams and reconnection), [`stats`] (latency and counters), [`control`] (HTTP), [`job`] (pipeline files).

pub mod control;
pub mod input;
pub mod job;
pub mod matte;
pub mod output;
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

use crate::composite::{Background, Composite, CpuComposite};
use crate::config::{BackgroundSpec, OutputKind};
use crate::error::{Error, Result};
use crate::infer::{OnnxSegmenter, Segmenter};
use crate::postprocess::PostprocessConfig;

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
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig { listen: SocketAddr::from(([127, 0, 0, 1], 8787)), background_dir: None, models: Vec::new() }
    }
}

/// Everything `live` needs to know (what the user asked for; runtime state lives in the stage threads).
#[derive(Debug, Clone)]
pub struct LiveConfig {
    pub input: InputSpec,
    pub capture: Capture,
    pub outputs: Vec<OutputSpec>,
    pub output_options: OutputOptions,
    pub background: BackgroundSpec,
    pub post: PostprocessConfig,
    /// Run the model on every Nth frame (the others reuse the latest mask).
    pub infer_every: u32,
    /// How long a frame may wait for its own mask before an earlier mask is used, ms.
    pub budget_ms: u32,
    /// Print a statistics line this often, seconds (0 = only at exit).
    pub stats_interval_s: u32,
    /// Stop after this many output frames (tests, benchmarks).
    pub max_frames: Option<u64>,
    /// Stop after this many seconds.
    pub duration_s: Option<f64>,
    /// Adds this many ms to every inference (to see how the pipeline behaves with a slow model).
    pub simulate_slow_model_ms: u32,
    pub control: Option<ControlConfig>,
}

impl LiveConfig {
    pub fn new(input: InputSpec, outputs: Vec<OutputSpec>) -> Self {
        LiveConfig {
            input,
            capture: Capture::default(),
            outputs,
            output_options: OutputOptions::default(),
            background: BackgroundSpec::Blur(crate::config::DEFAULT_BLUR),
            post: PostprocessConfig { smooth: 0.5, ..Default::default() },
            infer_every: 1,
            budget_ms: 40,
            stats_interval_s: 5,
            max_frames: None,
            duration_s: None,
            simulate_slow_model_ms: 0,
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
        if self.background == BackgroundSpec::Transparent {
            if let Some(o) = self.outputs.iter().find(|o| !o.keeps_alpha()) {
                return Err(Error::config(format!(
                    "background 'transparent' needs outputs that carry alpha (.mov, .mkv, folder/), but {} cannot; \
                     choose a colour, image, video or blur background",
                    String::from(o.clone())
                )));
            }
        }
        if self.infer_every == 0 {
            return Err(Error::config("--infer-every must be 1 or more"));
        }
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
}

/// Runs until the source ends, `cancel` is set, a limit is reached, or something fails. Outputs are always
/// finished (end of stream through the muxers, temporary names renamed) before it returns, also on errors.
pub fn run(cfg: &LiveConfig, segmenter: OnnxSegmenter, hooks: LiveHooks<'_>) -> Result<LiveReport> {
    gst::init()?;
    cfg.validate()?;
    let LiveHooks { cancel, mut on_window, open_model, mut on_started } = hooks;
    let manifest_name = segmenter.model().manifest.name.clone();
    let controls = Controls::new(Settings {
        background: cfg.background.clone(),
        post: cfg.post,
        paused: false,
        infer_every: cfg.infer_every,
        model: manifest_name.clone(),
    });
    // Check what can be checked before going live.
    let background = Background::open(&cfg.background)?;
    for o in &cfg.outputs {
        if let OutputSpec::Rtmp(url) = o {
            rtmp::check_rtmp(url, Duration::from_secs(cfg.output_options.rtmp_start_timeout_s as u64))?;
        }
    }

    let input = input::build(&cfg.input, cfg.capture)?;
    let clock = gst::SystemClock::obtain();
    input.pipeline.use_clock(Some(&clock));
    if input.pipeline.set_state(gst::State::Playing).is_err() {
        let why = input_error(&input.pipeline, Duration::from_secs(2)).unwrap_or_else(|| "it did not start".into());
        let _ = input.pipeline.set_state(gst::State::Null);
        return Err(Error::Input { path: cfg.input.describe(), reason: why });
    }
    // The first frame tells the size and rate; a source that gives none in time is reported as such.
    let waiting = Instant::now();
    let first_wait = Duration::from_secs(if matches!(cfg.input, InputSpec::Uri(_)) { 20 } else { 10 });
    let first = loop {
        if let Some(s) = input.appsink.try_pull_sample(gst::ClockTime::from_mseconds(100)) {
            break s;
        }
        if let Some(e) = input_error(&input.pipeline, Duration::ZERO) {
            let _ = input.pipeline.set_state(gst::State::Null);
            return Err(Error::Input { path: cfg.input.describe(), reason: e });
        }
        if input.appsink.is_eos() || waiting.elapsed() > first_wait || cancel.load(Ordering::SeqCst) {
            let _ = input.pipeline.set_state(gst::State::Null);
            return Err(Error::Input {
                path: cfg.input.describe(),
                reason: format!("gave no video frame within {} s", first_wait.as_secs()),
            });
        }
    };
    // Statistics count from the first frame.
    let stats = Arc::new(LiveStats::default());
    let info = first.caps().and_then(|c| gstreamer_video::VideoInfo::from_caps(c).ok()).ok_or_else(|| Error::Gst("input without video caps".into()))?;
    let fps = info.fps();
    let base_time = input.pipeline.base_time().unwrap_or(gst::ClockTime::ZERO);
    let clock_ref = output::ClockRef { clock: clock.clone(), base_time };
    let fps_u = if fps.numer() > 0 { (fps.numer() as f64 / fps.denom() as f64).round() as u32 } else { 30 };
    let mut outputs = match output::Outputs::build(&cfg.outputs, &cfg.output_options, fps_u, clock_ref.clone(), stats.clone())
        .and_then(|o| o.start().map(|_| o))
    {
        Ok(o) => o,
        Err(e) => {
            let _ = input.pipeline.set_state(gst::State::Null);
            return Err(e);
        }
    };
    tracing::info!(
        "live: {} ({}x{} @ {}/{}) → {}; model {} on {}",
        cfg.input.describe(),
        info.width(),
        info.height(),
        fps.numer(),
        fps.denom(),
        outputs.descriptions.join(", "),
        manifest_name,
        segmenter.provider().name()
    );

    let gpu_in_use = segmenter.provider() != crate::runtime::Provider::Cpu;
    let (wtx, wrx, worker) = matte::spawn_worker(segmenter, cfg.post, Duration::from_millis(cfg.simulate_slow_model_ms as u64), stats.clone())?;
    *controls.worker.lock().unwrap() = Some(wtx.clone());
    let mut sched = matte::MaskScheduler::new(wtx, wrx);

    let server = match &cfg.control {
        Some(c) => Some(control::Server::start(
            c.clone(),
            control::State {
                controls: controls.clone(),
                stats: stats.clone(),
                alpha_outputs: cfg.outputs.iter().all(|o| o.keeps_alpha()),
                open_model,
                gpu: gpu_in_use,
            },
        )?),
        None => None,
    };
    if let Some(f) = on_started.as_mut() {
        f(server.as_ref().map(|s| s.addr));
    }

    // Capture thread: takes every frame from the source at once, so the source is never held up; when the
    // matte stage is behind, the older waiting frame is dropped (and counted).
    let stop = Arc::new(AtomicBool::new(false));
    // Each frame travels with its arrival time (running time on the shared clock).
    let (ftx, frx) = crossbeam_channel::bounded::<(gst::Sample, Option<gst::ClockTime>)>(2);
    let input_end: Arc<std::sync::Mutex<Option<std::result::Result<(), String>>>> = Default::default();
    let t_capture = {
        let appsink = input.appsink.clone();
        let pipeline = input.pipeline.clone();
        let stop = stop.clone();
        let stats = stats.clone();
        let input_end = input_end.clone();
        let frx2 = frx.clone();
        let _ = ftx.try_send((first, clock_ref.running_now()));
        let clock_ref = clock_ref.clone();
        stats.captured.fetch_add(1, Ordering::Relaxed);
        std::thread::Builder::new()
            .name("mf-capture".into())
            .spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match appsink.try_pull_sample(gst::ClockTime::from_mseconds(100)) {
                        Some(s) => {
                            stats.captured.fetch_add(1, Ordering::Relaxed);
                            if let Err(crossbeam_channel::TrySendError::Full(s)) = ftx.try_send((s, clock_ref.running_now())) {
                                if frx2.try_recv().is_ok() {
                                    stats.dropped.fetch_add(1, Ordering::Relaxed);
                                }
                                let _ = ftx.try_send(s);
                            }
                        }
                        None => {
                            if let Some(e) = input_error(&pipeline, Duration::ZERO) {
                                *input_end.lock().unwrap() = Some(Err(e));
                                break;
                            }
                            if appsink.is_eos() {
                                *input_end.lock().unwrap() = Some(Ok(()));
                                break;
                            }
                        }
                    }
                }
            })
            .map_err(|e| Error::io("starting the capture thread", e))?
    };

    let mut comp = CpuComposite::new(kind_for(&cfg.background), background);
    let mut generation = controls.generation();
    let mut settings = controls.get();
    let mut last_window = Instant::now();
    let budget = Duration::from_millis(cfg.budget_ms as u64);
    let mut idx = 0u64;
    let mut net_offset: Option<i128> = None;
    let mut last_net_pts: i128 = -1_000_000;
    let started = Instant::now();
    let outcome: std::result::Result<String, Error> = loop {
        if cancel.load(Ordering::SeqCst) {
            break Ok("stopped by signal".into());
        }
        if cfg.max_frames.is_some_and(|m| stats.output.load(Ordering::Relaxed) >= m) {
            break Ok(format!("reached {} frames", cfg.max_frames.unwrap()));
        }
        if cfg.duration_s.is_some_and(|d| started.elapsed().as_secs_f64() >= d) {
            break Ok(format!("ran {} s", cfg.duration_s.unwrap()));
        }
        if let Some(e) = outputs.poll_error() {
            break Err(e);
        }
        if cfg.stats_interval_s > 0 && last_window.elapsed() >= Duration::from_secs(cfg.stats_interval_s as u64) {
            last_window = Instant::now();
            stats.sample_threads();
            let w = stats.take_window();
            if let Some(f) = on_window.as_mut() {
                f(&w);
            }
        }
        let (sample, arrival) = match frx.recv_timeout(Duration::from_millis(100)) {
            Ok(s) => s,
            Err(_) => {
                if let Some(end) = input_end.lock().unwrap().clone() {
                    if frx.is_empty() {
                        break match end {
                            Ok(()) => Ok("the input ended".into()),
                            Err(e) => Err(Error::Input { path: cfg.input.describe(), reason: format!("stopped: {e}") }),
                        };
                    }
                }
                continue;
            }
        };
        // Settings changed through the control endpoint?
        let g = controls.generation();
        if g != generation {
            generation = g;
            let new = controls.get();
            if new.background != settings.background {
                match Background::open(&new.background) {
                    Ok(b) => comp = CpuComposite::new(kind_for(&new.background), b),
                    Err(e) => tracing::warn!("background {} not used: {e}", String::from(new.background.clone())),
                }
            }
            if new.paused && !settings.paused {
                sched.forget();
            }
            settings = new;
        }
        let Some(buffer) = sample.buffer_owned() else { continue };
        let (w, h) = sample
            .caps()
            .and_then(|c| gstreamer_video::VideoInfo::from_caps(c).ok())
            .map(|i| (i.width(), i.height()))
            .unwrap_or((info.width(), info.height()));
        // The capture time as running time on the shared clock. Cameras and the test pattern stamp frames when
        // they are captured; a network stream's timestamps say nothing about our clock, so they are shifted to
        // the earliest arrival they allow (latency is then measured from arrival).
        let stream_rt = crate::source::running_pts(&sample);
        let pts = if matches!(cfg.input, InputSpec::Uri(_)) {
            // Keep the stream's own spacing (frames often arrive in bursts), anchored at the first arrival.
            match (stream_rt, arrival) {
                (Some(t), Some(a)) => {
                    let (t, a) = (t.nseconds() as i128, a.nseconds() as i128);
                    let mut off = *net_offset.get_or_insert(a - t);
                    // The least-delayed frame so far defines arrival (the first one is usually the latest: the
                    // stream starts with a burst), so no frame is stamped after it arrived; a jump in the
                    // stream's timestamps (servers restart them for a new viewer) re-anchors.
                    if a - t < off || (t + off - a).abs() > 1_000_000_000 {
                        off = a - t;
                        net_offset = Some(off);
                    }
                    // Strictly increasing: servers stamp a new viewer's first frames alike.
                    let v = (t + off).max(last_net_pts + 1_000_000).max(0);
                    last_net_pts = v;
                    Some(gst::ClockTime::from_nseconds(v as u64))
                }
                _ => arrival,
            }
        } else {
            stream_rt
        };
        let now = Instant::now();
        let age = match (pts, clock_ref.running_now()) {
            (Some(p), Some(n)) => n.checked_sub(p).map(|d| Duration::from_nanos(d.nseconds())).unwrap_or_default(),
            _ => Duration::ZERO,
        };
        let deadline = (now + budget).checked_sub(age).unwrap_or(now);
        let map = match buffer.map_readable() {
            Ok(m) => m,
            Err(_) => continue,
        };
        let mut data = map.as_slice()[..(w * h * 4) as usize].to_vec();
        drop(map);
        if settings.paused {
            stats.passthrough.fetch_add(1, Ordering::Relaxed);
        } else {
            match sched.mask_for(idx, &data, w, h, settings.infer_every, deadline, &stats) {
                Ok((Some(alpha), how)) => {
                    if how == matte::MaskUse::Reused {
                        stats.reused.fetch_add(1, Ordering::Relaxed);
                    }
                    let t = Instant::now();
                    if let Err(e) = comp.run(&mut data, w, h, alpha) {
                        break Err(e);
                    }
                    stats.record(stats::Measure::Composite, t.elapsed());
                }
                Ok((None, _)) => {
                    stats.passthrough.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => break Err(e),
            }
        }
        idx += 1;
        if let Err(e) = outputs.push(data, w, h, fps, pts) {
            break Err(outputs.poll_error().unwrap_or(e));
        }
        stats.output.fetch_add(1, Ordering::Relaxed);
    };

    // Wind down: stop the source, finish the outputs (always, so recordings are playable), stop the threads.
    stats.sample_threads();
    stop.store(true, Ordering::SeqCst);
    let _ = input.pipeline.set_state(gst::State::Null);
    let _ = t_capture.join();
    *controls.worker.lock().unwrap() = None;
    drop(sched);
    let _ = worker.join();
    if let Some(s) = server {
        s.stop();
    }
    let finished = outputs.finish();
    let summary = stats.total();
    match (outcome, finished) {
        (Ok(stopped), Ok(recordings)) => Ok(LiveReport { summary, recordings, stopped }),
        (Err(e), Ok(recordings)) => {
            if recordings.is_empty() {
                Err(e)
            } else {
                let list = recordings.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
                Err(Error::Runtime(format!("{e} (the recording was finished and kept: {list})")))
            }
        }
        (_, Err(e)) => Err(e),
    }
}

fn kind_for(bg: &BackgroundSpec) -> OutputKind {
    if *bg == BackgroundSpec::Transparent {
        OutputKind::Alpha
    } else {
        OutputKind::Composite
    }
}

/// The input pipeline's error, explained, if it posted one.
fn input_error(p: &gst::Pipeline, wait: Duration) -> Option<String> {
    let bus = p.bus()?;
    let msg = bus.timed_pop_filtered(gst::ClockTime::from_nseconds(wait.as_nanos() as u64), &[gst::MessageType::Error])?;
    let gst::MessageView::Error(e) = msg.view() else { return None };
    let src = e.src().map(|s| s.name().to_string()).unwrap_or_default();
    let detail = e.debug().map(|d| d.lines().last().unwrap_or("").to_string()).unwrap_or_default();
    let mut why = format!("{} ({src}{})", e.error(), if detail.is_empty() { String::new() } else { format!(": {detail}") });
    if src.starts_with("v4l2src") {
        why.push_str(". Was the camera unplugged or taken by another program?");
    }
    Some(why)
}

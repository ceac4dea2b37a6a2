//! Live outputs, any combination at once. Matted RGBA frames enter one output pipeline through a live appsrc
//! that drops rather than blocks; a tee feeds the local outputs, and one H.264 encoder is shared by the MP4/FLV
//! recordings and every RTMP stream:
//!
//! ```text
//! appsrc (RGBA, live, leaky) ─ tee ─┬─ queue ─ videoconvert ─ xvimagesink/waylandsink   (screen)
//!                                   ├─ queue ─ videoconvert ─ YUY2 ─ v4l2sink           (virtual camera)
//!                                   ├─ [bin: queue ─ encoder ─ mux ─ filesink]          (.mov / .mkv / .webm / PNG)
//!                                   └─ queue ─ x264enc ─ h264parse ─ tee ─┬─ [bin: queue ─ mp4mux (fragmented) ─ filesink] (.mp4)
//!                                                                         ├─ [bin: queue ─ flvmux ─ filesink] (.flv)
//!                                                                         └─ appsink ─▶ [feeder thread]
//! per RTMP URL, its own pipeline (rtmp.rs), rebuilt when the server drops:  appsrc ─ flvmux ─ rtmp2sink
//! ```
//!
//! RTMP streams live in pipelines of their own so that a server going away cannot stall or fail the recording:
//! the feeder drops that stream's pipeline, keeps feeding the others, and reconnects at the next keyframe.
//! Each recording is a bin of its own (recording.rs): one that fails (disk full) is cut off its tee and kept up
//! to the failure, and everything else goes on.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use serde::{Deserialize, Serialize};

use super::stats::{LiveStats, Measure};
use crate::config::Format;
use crate::error::{Error, Result};
use crate::sink::StagedOutput;
use super::recording::Recording;

/// Where live frames go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum OutputSpec {
    /// rtmp:// or rtmps:// URL (server/app/stream key).
    Rtmp(String),
    /// A v4l2loopback device: `v4l2:/dev/videoN` (or just `/dev/videoN`).
    VirtualCamera(String),
    /// An on-screen preview window.
    Screen,
    /// A recording file; the format follows the extension.
    Record(PathBuf),
}

/// Recording container/codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordFormat {
    /// The shared live H.264 stream in fragmented MP4 (playable even if the process is killed).
    Mp4,
    /// The shared live H.264 stream in FLV.
    Flv,
    /// One of the conversion formats (ProRes .mov, FFV1 .mkv, VP9 .webm, PNG folder/).
    Convert(Format),
}

impl RecordFormat {
    pub fn of(p: &std::path::Path) -> Option<RecordFormat> {
        match p.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("mp4") | Some("m4v") => Some(RecordFormat::Mp4),
            Some("flv") => Some(RecordFormat::Flv),
            _ => Format::from_path(p).filter(|f| !f.is_image()).map(RecordFormat::Convert),
        }
    }
    pub fn keeps_alpha(self) -> bool {
        matches!(self, RecordFormat::Convert(f) if f.keeps_alpha())
    }
}

impl std::str::FromStr for OutputSpec {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let s = s.trim();
        let l = s.to_ascii_lowercase();
        if l.starts_with("rtmp://") || l.starts_with("rtmps://") {
            if s.splitn(4, '/').nth(3).is_none_or(|p| p.is_empty()) {
                return Err(format!("RTMP URL '{s}' has no application/stream path: use rtmp://HOST[:PORT]/APP/STREAM_KEY"));
            }
            return Ok(OutputSpec::Rtmp(s.to_string()));
        }
        if let Some(d) = s.strip_prefix("v4l2:") {
            return Ok(OutputSpec::VirtualCamera(d.to_string()));
        }
        if s.starts_with("/dev/video") {
            return Ok(OutputSpec::VirtualCamera(s.to_string()));
        }
        if l == "screen" || l == "display" || l == "preview" {
            return Ok(OutputSpec::Screen);
        }
        if s.contains("://") {
            return Err(format!("output '{s}': only rtmp:// and rtmps:// URLs are supported as network outputs"));
        }
        let p = PathBuf::from(s);
        if RecordFormat::of(&p).is_none() {
            return Err(format!(
                "output '{s}' is not rtmp://…, v4l2:/dev/videoN, screen, or a recording named .mp4 or .flv (H.264), \
                 .mov (ProRes 4444, alpha), .mkv (FFV1, alpha), .webm (VP9) or folder/ (PNG)"
            ));
        }
        Ok(OutputSpec::Record(p))
    }
}

impl TryFrom<String> for OutputSpec {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        s.parse()
    }
}

impl From<OutputSpec> for String {
    fn from(o: OutputSpec) -> String {
        match o {
            OutputSpec::Rtmp(u) => u,
            OutputSpec::VirtualCamera(d) => format!("v4l2:{d}"),
            OutputSpec::Screen => "screen".into(),
            OutputSpec::Record(p) => p.display().to_string(),
        }
    }
}

impl OutputSpec {
    pub fn keeps_alpha(&self) -> bool {
        matches!(self, OutputSpec::Record(p) if RecordFormat::of(p).is_some_and(|f| f.keeps_alpha()))
    }
}

/// Encoder and network settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutputOptions {
    /// H.264 bitrate for RTMP and MP4/FLV recordings, kbit/s.
    pub bitrate_kbps: u32,
    /// x264 speed preset (ultrafast … medium); faster leaves more CPU for matting.
    pub x264_preset: String,
    /// RTMP server unreachable at start: fail at once (0) or keep trying for this many seconds.
    pub rtmp_start_timeout_s: u32,
    /// Seconds between reconnection attempts after the RTMP server drops.
    pub rtmp_retry_s: u32,
    /// Pixel format for the virtual camera (YUY2 is what browsers and most apps accept; I420 also works).
    pub vcam_format: String,
    /// Replace recordings that exist.
    pub overwrite: bool,
}

impl Default for OutputOptions {
    fn default() -> Self {
        OutputOptions {
            bitrate_kbps: 4000,
            x264_preset: "veryfast".into(),
            rtmp_start_timeout_s: 0,
            rtmp_retry_s: 2,
            vcam_format: "YUY2".into(),
            overwrite: false,
        }
    }
}

fn make(name: &str) -> Result<gst::Element> {
    gst::ElementFactory::make(name)
        .build()
        .map_err(|_| Error::Gst(format!("element '{name}' is missing: install {}", crate::sink::package_of(name))))
}

/// A queue, named for the branch it feeds: GStreamer names each streaming thread after its queue's pad, so
/// the CPU-by-thread summary reads `h264enc0:src`, `screen1:src`… instead of `queue3:src`.
pub(super) fn queue(branch: &str, leaky: bool) -> Result<gst::Element> {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let q = gst::ElementFactory::make("queue")
        .name(format!("{branch}{n}"))
        .property("max-size-buffers", 3u32)
        .property("max-size-bytes", 0u32)
        .property("max-size-time", 0u64)
        .build()?;
    if leaky {
        q.set_property_from_str("leaky", "downstream");
    }
    Ok(q)
}

/// Frames the output pipeline may hold before the oldest is dropped (a slow output must not block matting).
const OUT_QUEUE: u64 = 8;

/// Where a frame's latency is read: the running time now, on the clock shared with the input pipeline.
#[derive(Clone)]
pub struct ClockRef {
    pub clock: gst::Clock,
    pub base_time: gst::ClockTime,
}

impl ClockRef {
    pub fn running_now(&self) -> Option<gst::ClockTime> {
        self.clock.time().checked_sub(self.base_time)
    }
}

/// Records glass-to-glass latency of every buffer passing `pad`: its running time is the capture running
/// time (encoders may shift timestamps, e.g. x264enc by 1000 h, but they shift the segment with them).
fn probe_latency(pad: &gst::Pad, clock: ClockRef, stats: Arc<LiveStats>) {
    pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
        if let Some(gst::PadProbeData::Buffer(b)) = &info.data {
            let seg = pad.sticky_event::<gst::event::Segment>(0);
            let rt = b.pts().and_then(|p| match seg.as_ref().and_then(|s| s.segment().downcast_ref::<gst::ClockTime>().cloned()) {
                Some(s) => s.to_running_time(p),
                None => Some(p),
            });
            if let (Some(rt), Some(now)) = (rt, clock.running_now()) {
                if let Some(d) = now.checked_sub(rt) {
                    stats.record(Measure::GlassToGlass, Duration::from_nanos(d.nseconds()));
                }
            }
        }
        gst::PadProbeReturn::Ok
    });
}

fn first_error(p: &gst::Pipeline, wait: Duration) -> Option<String> {
    let bus = p.bus()?;
    let msg = bus.timed_pop_filtered(gst::ClockTime::from_nseconds(wait.as_nanos() as u64), &[gst::MessageType::Error])?;
    match msg.view() {
        gst::MessageView::Error(e) => Some(e.error().to_string()),
        _ => None,
    }
}

/// The running outputs.
pub struct Outputs {
    pub pipeline: gst::Pipeline,
    appsrc: gst_app::AppSrc,
    recordings: Vec<Recording>,
    /// Outputs that are not recordings (RTMP, virtual camera, screen).
    others: usize,
    feeder: Option<std::thread::JoinHandle<()>>,
    stop_feeder: Arc<AtomicBool>,
    stats: Arc<LiveStats>,
    caps_set: bool,
    pub descriptions: Vec<String>,
    /// The sound's way in, when the run has sound.
    pub audio: Option<super::audio::AudioBranch>,
}

impl Outputs {
    /// Checks every output (files writable, devices present) and builds the pipelines; nothing is written
    /// at the final names until `finish`.
    pub fn build(specs: &[OutputSpec], opts: &OutputOptions, fps: u32, clock: ClockRef, stats: Arc<LiveStats>) -> Result<Outputs> {
        Self::build_with_audio(specs, opts, fps, clock, stats, None)
    }

    /// As [`Outputs::build`], with sound (`audio`: its options) for the outputs that carry it.
    pub fn build_with_audio(
        specs: &[OutputSpec],
        opts: &OutputOptions,
        fps: u32,
        clock: ClockRef,
        stats: Arc<LiveStats>,
        audio: Option<&super::audio::AudioOptions>,
    ) -> Result<Outputs> {
        if specs.is_empty() {
            return Err(Error::config(
                "no output: give at least one --output (rtmp://…, v4l2:/dev/videoN, screen, or a file such as rec.mp4)",
            ));
        }
        let pipeline = gst::Pipeline::with_name("matteflow-output");
        pipeline.use_clock(Some(&clock.clock));
        pipeline.set_start_time(gst::ClockTime::NONE);
        pipeline.set_base_time(clock.base_time);
        let appsrc = gst_app::AppSrc::builder()
            .format(gst::Format::Time)
            .is_live(true)
            .block(false)
            .max_buffers(OUT_QUEUE)
            .max_bytes(0)
            .max_time(gst::ClockTime::ZERO)
            .leaky_type(gst_app::AppLeakyType::Downstream)
            .build();
        let tee = make("tee")?;
        // A recording that failed leaves the tee (recording.rs); the rest go on even when none is left.
        tee.set_property("allow-not-linked", true);
        pipeline.add_many([appsrc.upcast_ref(), &tee])?;
        appsrc.link(&tee)?;
        let mut sound = audio.map(|a| super::audio::AudioBranch::build(&pipeline, a)).transpose()?;
        let mut recordings = Vec::new();
        let mut descriptions = Vec::new();
        let mut h264_tee: Option<gst::Element> = None;
        let mut ensure_h264 = |pipeline: &gst::Pipeline, tee: &gst::Element| -> Result<gst::Element> {
            if let Some(t) = &h264_tee {
                return Ok(t.clone());
            }
            let q = queue("h264enc", false)?;
            let pad = crate::sink::even_pad()?;
            let conv = gst::ElementFactory::make("videoconvert").property("n-threads", 2u32).build()?;
            let caps = gst::ElementFactory::make("capsfilter")
                .property("caps", gst::Caps::builder("video/x-raw").field("format", "I420").build())
                .build()?;
            let enc = make("x264enc")?;
            enc.set_property_from_str("tune", "zerolatency");
            enc.set_property_from_str("speed-preset", &opts.x264_preset);
            enc.set_property("bitrate", opts.bitrate_kbps);
            enc.set_property("key-int-max", (fps.max(1) * 2) as u32);
            // As ingest services ask: real CBR (filler data where the picture needs fewer bits) and a keyframe
            // exactly every 2 s (none extra at scene cuts).
            enc.set_property("option-string", "nal-hrd=cbr:scenecut=0");
            let parse = make("h264parse")?;
            parse.set_property("config-interval", -1i32);
            let t = make("tee")?;
            t.set_property("allow-not-linked", true);
            pipeline.add_many([&q, &pad, &conv, &caps, &enc, &parse, &t])?;
            gst::Element::link_many([&q, &pad, &conv, &caps, &enc, &parse, &t])?;
            tee.link(&q)?;
            probe_latency(&t.static_pad("sink").unwrap(), clock.clone(), stats.clone());
            h264_tee = Some(t.clone());
            Ok(t)
        };
        let mut rtmp_urls = Vec::new();
        for spec in specs {
            match spec {
                OutputSpec::Screen => {
                    let q = queue("screen", true)?;
                    let conv = make("videoconvert")?;
                    let sink = screen_sink()?;
                    sink.set_property("sync", false);
                    pipeline.add_many([&q, &conv, &sink])?;
                    gst::Element::link_many([&q, &conv, &sink])?;
                    tee.link(&q)?;
                    probe_latency(&conv.static_pad("src").unwrap(), clock.clone(), stats.clone());
                    descriptions.push("screen preview".into());
                }
                OutputSpec::VirtualCamera(dev) => {
                    let sink = add_vcam_branch(&pipeline, &tee, dev, opts)?;
                    probe_latency(&sink.static_pad("sink").unwrap(), clock.clone(), stats.clone());
                    descriptions.push(format!("virtual camera {dev} ({})", opts.vcam_format));
                }
                OutputSpec::Record(path) => {
                    let rf = RecordFormat::of(path).expect("checked when parsed");
                    let format_for_staging = match rf {
                        RecordFormat::Convert(f) => f,
                        _ => Format::H264,
                    };
                    let st = StagedOutput::prepare(path, format_for_staging, opts.overwrite)?;
                    super::recording::announce_leftovers(&st.final_path);
                    descriptions.push(format!("recording {}", st.final_path.display()));
                    let feed = match rf {
                        RecordFormat::Mp4 | RecordFormat::Flv => ensure_h264(&pipeline, &tee)?,
                        RecordFormat::Convert(_) => tee.clone(),
                    };
                    let (rec, head) = Recording::attach(&pipeline, &feed, rf, st, sound.as_mut())?;
                    if matches!(rf, RecordFormat::Convert(_)) {
                        probe_latency(&head, clock.clone(), stats.clone());
                    }
                    recordings.push(rec);
                }
                OutputSpec::Rtmp(url) => {
                    ensure_h264(&pipeline, &tee)?;
                    rtmp_urls.push(url.clone());
                    descriptions.push(format!("RTMP {url}"));
                }
            }
        }
        let mut feeder = None;
        let stop_feeder = Arc::new(AtomicBool::new(false));
        if !rtmp_urls.is_empty() {
            let t = h264_tee.clone().unwrap();
            let q = queue("rtmp", true)?;
            // async=false: a live pipeline's sinks must not wait for a preroll buffer that only comes in PLAYING.
            let sink = gst_app::AppSink::builder().sync(false).max_buffers(60).drop(true).build();
            sink.set_property("async", false);
            // The end of stream must not wait for the RTMP thread to drain this sink.
            sink.set_property("wait-on-eos", false);
            pipeline.add_many([&q, sink.upcast_ref()])?;
            gst::Element::link_many([&t, &q, sink.upcast_ref()])?;
            let audio_sink = sound.as_mut().map(|a| a.rtmp_sink(&pipeline)).transpose()?;
            feeder = Some(super::rtmp::spawn_feeder(sink, audio_sink, rtmp_urls, opts.clone(), stop_feeder.clone(), stats.clone())?);
        }
        pipeline.bus().unwrap().set_sync_handler(Recording::sync_handler(&recordings));
        let others = specs.len() - recordings.len();
        if sound.is_some() {
            super::audio::say_silent_outputs(specs);
            super::audio::let_muxers_wait(&pipeline);
        }
        Ok(Outputs { pipeline, appsrc, recordings, others, feeder, stop_feeder, stats, caps_set: false, descriptions, audio: sound })
    }

    /// Starts the output pipeline; fails at once with the device or element's own words when an output
    /// cannot start (no such v4l2loopback device, no display).
    pub fn start(&self) -> Result<()> {
        let mut r = self.pipeline.set_state(gst::State::Playing);
        if r.is_ok() {
            // A live appsrc drops what it is given before PLAYING: wait until the state change completes.
            let (res, _, _) = self.pipeline.state(gst::ClockTime::from_seconds(5));
            r = res;
        }
        if let Some(e) = first_error(&self.pipeline, Duration::from_millis(if r.is_err() { 2000 } else { 200 })) {
            let _ = self.pipeline.set_state(gst::State::Null);
            return Err(explain_output_error(&e));
        }
        r.map_err(|_| Error::Gst("the output pipeline did not start (run with -v for GStreamer's reason)".into()))?;
        Ok(())
    }

    /// Hands one frame to every output without ever blocking: when an output's queue is full, the oldest
    /// frame waiting is dropped and counted.
    pub fn push(&mut self, data: Vec<u8>, w: u32, h: u32, fps: gst::Fraction, pts: Option<gst::ClockTime>) -> Result<()> {
        if !self.caps_set {
            self.appsrc.set_caps(Some(
                &gst::Caps::builder("video/x-raw")
                    .field("format", "RGBA")
                    .field("width", w as i32)
                    .field("height", h as i32)
                    .field("framerate", fps)
                    .field("pixel-aspect-ratio", gst::Fraction::new(1, 1))
                    .build(),
            ));
            self.caps_set = true;
        }
        if self.appsrc.current_level_buffers() >= OUT_QUEUE {
            self.stats.output_dropped.fetch_add(1, Ordering::Relaxed);
        }
        let mut b = gst::Buffer::from_mut_slice(data);
        {
            let b = b.get_mut().unwrap();
            b.set_pts(pts);
            if fps.numer() > 0 {
                b.set_duration(gst::ClockTime::SECOND.mul_div_floor(fps.denom() as u64, fps.numer() as u64));
            }
        }
        self.appsrc.push_buffer(b).map_err(|e| Error::Gst(format!("the output pipeline stopped ({e:?})")))?;
        Ok(())
    }

    /// An error that stops the outputs, if one happened (preview window closed, virtual camera gone, …). A
    /// recording that fails (disk full) ends alone: it is kept up to the failure, a warning says so, and this
    /// only returns an error once no output is left.
    pub fn poll_error(&mut self) -> Option<Error> {
        let bus = self.pipeline.bus()?;
        while let Some(msg) = bus.pop_filtered(&[gst::MessageType::Error]) {
            if let gst::MessageView::Error(e) = msg.view() {
                if self.recording_failed(&e) {
                    continue;
                }
                let who = e.src().map(|s| s.path_string().to_string()).unwrap_or_default();
                return Some(Error::Gst(format!("output failed in {who}: {}", e.error())));
            }
        }
        let failures = self.failures();
        if self.others == 0 && !self.recordings.is_empty() && failures.len() == self.recordings.len() {
            return Some(Error::Runtime(format!("no output is left: {}", failures.join("; "))));
        }
        None
    }

    /// Handles an error from inside a recording's bin (see [`Recording::fail`]); false if it came from elsewhere.
    fn recording_failed(&mut self, e: &gst::message::Error) -> bool {
        let Some(r) = self.recordings.iter_mut().find(|r| r.owns(e.src())) else { return false };
        // It says what it kept once the file is trimmed and renamed (recording.rs, `salvage`).
        r.fail(&self.pipeline, e);
        true
    }

    /// The recordings that failed, in words ("disk full: PATH (…)").
    pub fn failures(&self) -> Vec<String> {
        self.recordings.iter().filter_map(|r| r.failure().map(str::to_string)).collect()
    }

    /// Ends every output properly (end of stream through the muxers, so files are complete and playable),
    /// then renames recordings into place. Returns the paths written.
    pub fn finish(mut self) -> Result<Vec<PathBuf>> {
        let _ = self.appsrc.end_of_stream();
        if let Some(a) = &self.audio {
            let _ = a.appsrc.end_of_stream();
        }
        let bus = self.pipeline.bus().unwrap();
        let mut err = None;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                err = Some(Error::Gst("outputs did not finish within 30 s of the end of stream".into()));
                break;
            }
            let Some(msg) = bus.timed_pop_filtered(gst::ClockTime::from_nseconds(left.as_nanos() as u64), &[gst::MessageType::Eos, gst::MessageType::Error]) else {
                continue;
            };
            match msg.view() {
                gst::MessageView::Eos(_) => break,
                gst::MessageView::Error(e) if self.recording_failed(&e) => {
                    // Without that bin the others may all be done already.
                    if self.recordings.iter().all(|r| r.failure().is_some()) && self.others == 0 {
                        break;
                    }
                }
                gst::MessageView::Error(e) => {
                    let who = e.src().map(|s| s.path_string().to_string()).unwrap_or_default();
                    err = Some(Error::Gst(format!("finishing the outputs failed in {who}: {}", e.error())));
                    break;
                }
                _ => {}
            }
        }
        self.stop_feeder.store(true, Ordering::SeqCst);
        if let Some(f) = self.feeder.take() {
            let _ = f.join();
        }
        let _ = self.pipeline.set_state(gst::State::Null);
        let mut done = Vec::new();
        for r in self.recordings.drain(..) {
            // After an error only the failed recordings' salvage is waited for; the others are removed.
            if err.is_none() || r.failure().is_some() {
                done.extend(r.finish()?);
            }
        }
        match err {
            Some(e) => Err(e),
            None => Ok(done),
        }
    }
}

/// A window sink for the display in use. autovideosink is not used: without a display it can pick
/// DirectFB or KMS sinks, which take over the console or crash.
fn screen_sink() -> Result<gst::Element> {
    let env = |k: &str| std::env::var_os(k).is_some_and(|v| !v.is_empty());
    let candidates: &[&str] = if env("WAYLAND_DISPLAY") {
        &["waylandsink", "glimagesink"]
    } else if env("DISPLAY") {
        &["xvimagesink", "ximagesink", "glimagesink"]
    } else {
        return Err(Error::config(
            "screen preview needs a display: neither DISPLAY nor WAYLAND_DISPLAY is set (on a server, use a \
             recording or RTMP output instead)",
        ));
    };
    candidates
        .iter()
        .find_map(|n| gst::ElementFactory::make(n).build().ok())
        .ok_or_else(|| Error::Gst(format!("no video window sink installed ({}): install gstreamer1.0-plugins-base/-good/-gl", candidates.join(", "))))
}

/// Adds the virtual camera branch, `queue ─ videoconvert ─ capsfilter (opts.vcam_format) ─ v4l2sink`, fed by
/// `tee`; returns the sink. A format that videoconvert cannot make or v4l2sink does not take is refused here,
/// by name, rather than left to fail as an unexplained link or negotiation error.
fn add_vcam_branch(pipeline: &gst::Pipeline, tee: &gst::Element, dev: &str, opts: &OutputOptions) -> Result<gst::Element> {
    let q = queue("vcam", true)?;
    let conv = make("videoconvert")?;
    let sink = make("v4l2sink")?;
    let format = opts.vcam_format.trim();
    let wanted = gst::Caps::builder("video/x-raw").field("format", format).build();
    let takes = |e: &gst::Element, pad: &str| e.static_pad(pad).is_some_and(|p| p.pad_template_caps().can_intersect(&wanted));
    if format.is_empty() || !takes(&conv, "src") || !takes(&sink, "sink") {
        return Err(Error::config(format!(
            "virtual camera format '{format}' is not a raw video format that v4l2sink takes: use YUY2 (what browsers \
             and most apps accept), I420 or NV12 ({})",
            crate::hint::VCAM_FORMAT.to("YUY2")
        )));
    }
    let caps = gst::ElementFactory::make("capsfilter").property("caps", wanted).build()?;
    sink.set_property("device", dev);
    sink.set_property("sync", false);
    pipeline.add_many([&q, &conv, &caps, &sink])?;
    gst::Element::link_many([&q, &conv, &caps, &sink])?;
    tee.link(&q)?;
    Ok(sink)
}

fn explain_output_error(e: &str) -> Error {
    // GStreamer's messages end with a full stop; ours follow them.
    let e = e.trim_end_matches('.');
    if e.contains("Cannot identify device") || e.contains("/dev/video") || e.contains("not a output device") || e.contains("output device") {
        Error::Gst(format!(
            "virtual camera: {e}. Create one with v4l2loopback: `sudo modprobe v4l2loopback devices=1 video_nr=10 \
             card_label=matteflow exclusive_caps=1`, then use --output v4l2:/dev/video10 (see README, Virtual camera)"
        ))
    } else if e.to_ascii_lowercase().contains("display") || e.contains("window") {
        Error::Gst(format!("screen preview: {e}. Is there a display (DISPLAY / WAYLAND_DISPLAY)?"))
    } else {
        Error::Gst(format!("an output could not start: {e}"))
    }
}

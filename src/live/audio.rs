//! Live sound: the source's own audio or a capture device, delayed by as much as the picture waits for its
//! matte, to every output that carries audio.
//!
//! ```text
//! input pipeline:   uridecodebin ─ audio pad ─ queue ─ audioconvert ─ audioresample ─ S16LE/48k/2 ─ appsink ┐
//! or its own one:   pulsesrc / alsasrc / pipewiresrc ─ audioconvert ─ audioresample ─ S16LE/48k/2 ─ appsink ┤
//!                                                                                                          ▼
//!   [mf-audio]: stamps on the picture's time base, holds each buffer until the picture of its instant has been
//!   handed to the outputs (the measured matte delay), zeroes it while muted, fills silence if the device goes
//!                                                                                                          ▼
//! output pipeline:  appsrc ─ tee ─┬─ queue ─ audioconvert ─ avenc_aac (LC) ─ aacparse ─ tee ─┬─ mp4mux / flvmux (recordings)
//!                                 │                                                          └─ appsink ─▶ RTMP feeder
//!                                 └─ queue ─ the .mov / .mkv / .webm recording's own audio encoder
//! ```
//!
//! Audio and video carry the same running time (capture time on the shared clock), so the muxers interleave
//! them in sync; the hold only keeps the two arriving together. The audio path never waits on the model: a
//! frame that is dropped or shown with an older mask changes nothing here.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use serde::{Deserialize, Serialize};

use super::output::ClockRef;
use crate::error::{Error, Result};

pub const RATE: i32 = 48_000;
pub const CHANNELS: i32 = 2;
const BYTES_PER_FRAME: u64 = 4; // S16LE stereo

/// Where the sound comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum AudioSpec {
    /// The source's audio if it has some, else the default capture device where one exists, else none.
    Auto,
    None,
    /// The input's own audio track.
    Source,
    /// A PulseAudio source (default: the server's default source).
    Pulse(Option<String>),
    /// An ALSA capture device, e.g. `hw:1` or `hw:1,0`.
    Alsa(String),
    /// PipeWire's default source, or a node by target object/serial.
    Pipewire(Option<String>),
}

impl std::str::FromStr for AudioSpec {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let s = s.trim();
        let (kind, dev) = match s.split_once(':') {
            Some((k, d)) => (k, Some(d.trim().to_string()).filter(|d| !d.is_empty())),
            None => (s, None),
        };
        match (kind.to_ascii_lowercase().as_str(), dev) {
            ("auto", None) => Ok(AudioSpec::Auto),
            ("none" | "off", None) => Ok(AudioSpec::None),
            ("source", None) => Ok(AudioSpec::Source),
            ("pulse" | "pulseaudio", d) => Ok(AudioSpec::Pulse(d)),
            ("alsa", Some(d)) => Ok(AudioSpec::Alsa(d)),
            ("pipewire", d) => Ok(AudioSpec::Pipewire(d)),
            _ => Err(format!(
                "audio '{s}' is not one of auto, none, source, pulse[:DEVICE], alsa:hw:N, pipewire[:TARGET] \
                 (list devices with `pactl list short sources` or `arecord -l`)"
            )),
        }
    }
}

impl TryFrom<String> for AudioSpec {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        s.parse()
    }
}

impl From<AudioSpec> for String {
    fn from(a: AudioSpec) -> String {
        match a {
            AudioSpec::Auto => "auto".into(),
            AudioSpec::None => "none".into(),
            AudioSpec::Source => "source".into(),
            AudioSpec::Pulse(d) => d.map(|d| format!("pulse:{d}")).unwrap_or_else(|| "pulse".into()),
            AudioSpec::Alsa(d) => format!("alsa:{d}"),
            AudioSpec::Pipewire(d) => d.map(|d| format!("pipewire:{d}")).unwrap_or_else(|| "pipewire".into()),
        }
    }
}

/// The `[audio]` section of a pipeline file, and `--audio` / `--audio-bitrate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AudioOptions {
    pub source: AudioSpec,
    /// AAC bitrate for RTMP and .mp4/.flv recordings, kbit/s.
    pub bitrate_kbps: u32,
    /// Start muted (silence is still sent, so players keep their audio track); `POST /unmute` turns it on.
    pub muted: bool,
}

impl Default for AudioOptions {
    fn default() -> Self {
        AudioOptions { source: AudioSpec::Auto, bitrate_kbps: 160, muted: false }
    }
}

impl AudioOptions {
    pub fn validate(&self) -> Result<()> {
        if !(16..=512).contains(&self.bitrate_kbps) {
            return Err(Error::config(format!("audio bitrate {} kbit/s: choose 16 to 512 (160 is usual)", self.bitrate_kbps)));
        }
        Ok(())
    }
}

/// What `mf-audio` shares with the frame loop and the control endpoint.
#[derive(Default)]
pub struct AudioShared {
    /// How long the latest frame waited before reaching the outputs (capture → push), ns: the sound is held
    /// this long.
    pub video_delay_ns: AtomicU64,
    /// Network sources: the offset the frame loop adds to the stream's timestamps (`i64::MIN`: not yet known).
    pub stream_offset_ns: AtomicI64,
    /// The first picture's timestamp (`u64::MAX`: none yet). The sound starts there too: containers such as
    /// MP4 start every track at zero, so tracks that begin at different instants would play out of step.
    pub first_video_ns: AtomicU64,
    /// Where the latest picture handed to the outputs ends (`u64::MAX`: none yet): the sound ends there too.
    pub video_end_ns: AtomicU64,
    pub muted: AtomicBool,
}

impl AudioShared {
    pub fn new(muted: bool) -> Arc<AudioShared> {
        let s = AudioShared {
            muted: AtomicBool::new(muted),
            stream_offset_ns: AtomicI64::new(i64::MIN),
            first_video_ns: AtomicU64::new(u64::MAX),
            video_end_ns: AtomicU64::new(u64::MAX),
            video_delay_ns: AtomicU64::new(0),
        };
        Arc::new(s)
    }
}

fn make(name: &str) -> Result<gst::Element> {
    gst::ElementFactory::make(name)
        .build()
        .map_err(|_| Error::Gst(format!("element '{name}' is missing: install {}", package_of(name))))
}

fn package_of(name: &str) -> &'static str {
    match name {
        "pulsesrc" => "gstreamer1.0-pulseaudio",
        "pipewiresrc" => "gstreamer1.0-pipewire",
        "alsasrc" | "audioconvert" | "audioresample" => "gstreamer1.0-plugins-base (gstreamer1.0-alsa for alsasrc)",
        "avenc_aac" => "gstreamer1.0-libav",
        "aacparse" => "gstreamer1.0-plugins-good",
        _ => "the GStreamer plugin that provides it",
    }
}

pub fn raw_caps() -> gst::Caps {
    gst::Caps::builder("audio/x-raw")
        .field("format", "S16LE")
        .field("layout", "interleaved")
        .field("rate", RATE)
        .field("channels", CHANNELS)
        .build()
}

/// audioconvert ─ audioresample ─ S16LE/48k/2 ─ appsink, added to `pipeline`; returns the head and the sink.
fn capture_tail(pipeline: &gst::Pipeline, sync: bool) -> Result<(gst::Element, gst_app::AppSink)> {
    let conv = make("audioconvert")?;
    let res = make("audioresample")?;
    let caps = gst::ElementFactory::make("capsfilter").property("caps", raw_caps()).build()?;
    // About 2 s of 10–20 ms buffers; drop rather than ever hold the source up.
    let sink = gst_app::AppSink::builder().caps(&raw_caps()).max_buffers(200).drop(true).sync(sync).build();
    sink.set_property("async", false);
    pipeline.add_many([&conv, &res, &caps, sink.upcast_ref()])?;
    gst::Element::link_many([&conv, &res, &caps, sink.upcast_ref()])?;
    Ok((conv, sink))
}

/// The source's audio, tapped in the input pipeline: linked when (if) its decoder exposes an audio pad.
pub struct SourceTap {
    pub sink: gst_app::AppSink,
    pub linked: Arc<AtomicBool>,
}

/// Taps the first audio pad the input's `uridecodebin` exposes (call before the input starts). Inputs without
/// a decoder (webcams, the test pattern) have no source audio: `None`.
pub fn tap_source(input: &super::input::LiveInput) -> Option<SourceTap> {
    let dec = input.pipeline.iterate_elements().into_iter().flatten().find(|e| e.factory().is_some_and(|f| f.name() == "uridecodebin"))?;
    let sink = gst_app::AppSink::builder().caps(&raw_caps()).max_buffers(200).drop(true).build();
    sink.set_property("async", false);
    let linked = Arc::new(AtomicBool::new(false));
    let (pipeline, video_sink, s2, l2) = (input.pipeline.downgrade(), input.appsink.clone(), sink.clone(), linked.clone());
    dec.connect_pad_added(move |_, pad| {
        let audio = crate::source::pad_media_type(pad).is_some_and(|t| t.starts_with("audio/"));
        let Some(p) = pipeline.upgrade() else { return };
        if !audio || l2.load(Ordering::SeqCst) {
            return;
        }
        // Paced like the picture: a file or a non-live stream plays at its own rate.
        s2.set_property("sync", video_sink.property::<bool>("sync"));
        match link_tap(&p, pad, &s2) {
            Ok(()) => l2.store(true, Ordering::SeqCst),
            Err(e) => tracing::warn!("the source's audio cannot be used: {e}"),
        }
    });
    Some(SourceTap { sink, linked })
}

fn link_tap(p: &gst::Pipeline, pad: &gst::Pad, sink: &gst_app::AppSink) -> Result<()> {
    let q = make("queue")?;
    let conv = make("audioconvert")?;
    let res = make("audioresample")?;
    p.add_many([&q, &conv, &res, sink.upcast_ref()])?;
    gst::Element::link_many([&q, &conv, &res])?;
    res.link_filtered(sink, &raw_caps())?;
    for e in [sink.upcast_ref(), &res, &conv, &q] {
        e.sync_state_with_parent()?;
    }
    pad.link(&q.static_pad("sink").unwrap()).map_err(|e| Error::Gst(format!("linking the source's audio: {e:?}")))?;
    Ok(())
}

/// A capture device in a pipeline of its own (so a device that fails cannot stop the picture), on the shared
/// clock.
pub struct DeviceInput {
    pub pipeline: gst::Pipeline,
    pub sink: gst_app::AppSink,
    pub name: String,
}

fn device_element(spec: &AudioSpec) -> Result<(gst::Element, String)> {
    let (e, name) = match spec {
        AudioSpec::Pulse(d) => {
            let e = make("pulsesrc")?;
            if let Some(d) = d {
                e.set_property("device", d);
            }
            (e, String::from(spec.clone()))
        }
        AudioSpec::Alsa(d) => {
            let e = make("alsasrc")?;
            e.set_property("device", d);
            // Timed by the ring buffer on the shared clock (as pulsesrc is), not by the driver: a plugin device
            // (e.g. ALSA's PulseAudio plugin) reports wall-clock time, which is not the pipeline's clock.
            e.set_property("use-driver-timestamps", false);
            (e, String::from(spec.clone()))
        }
        AudioSpec::Pipewire(d) => {
            let e = make("pipewiresrc")?;
            if let Some(d) = d {
                e.set_property("target-object", d);
            }
            (e, String::from(spec.clone()))
        }
        _ => return Err(Error::config("not a capture device")),
    };
    Ok((e, name))
}

/// Opens a capture device and starts it; a device that does not open is an error naming it and how to list
/// the ones there are.
pub fn open_device(spec: &AudioSpec, clock: &ClockRef) -> Result<DeviceInput> {
    let (src, name) = device_element(spec)?;
    open_element(src, name, clock)
}

fn open_element(src: gst::Element, name: String, clock: &ClockRef) -> Result<DeviceInput> {
    let pipeline = gst::Pipeline::with_name("matteflow-audio-in");
    pipeline.use_clock(Some(&clock.clock));
    pipeline.set_start_time(gst::ClockTime::NONE);
    pipeline.set_base_time(clock.base_time);
    // Each buffer also carries its arrival (as DTS): what times the sound of a device that leaves it unstamped
    // (pipewiresrc 0.3) or stamps it on a clock of its own.
    if src.find_property("do-timestamp").is_some() {
        src.set_property("do-timestamp", true);
    }
    pipeline.add(&src)?;
    let (head, sink) = capture_tail(&pipeline, false)?;
    src.link(&head)?;
    let fail = |why: String| {
        let _ = pipeline.set_state(gst::State::Null);
        Error::Input {
            path: format!("audio device {name}"),
            reason: format!(
                "{why}. List capture devices with `pactl list short sources` (PulseAudio/PipeWire) or `arecord -l` \
                 (ALSA), or run with --audio none"
            ),
        }
    };
    let started = pipeline.set_state(gst::State::Playing);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(e) = bus_error(&pipeline) {
            return Err(fail(e));
        }
        // A device counts as open once sound comes from it (servers report a missing device only after
        // the element is already playing).
        if started.is_ok() && sink.try_pull_sample(gst::ClockTime::from_mseconds(20)).is_some() {
            return Ok(DeviceInput { pipeline, sink, name });
        }
        if started.is_err() || Instant::now() > deadline {
            return Err(fail(bus_error(&pipeline).unwrap_or_else(|| "it did not start".into())));
        }
    }
}

fn bus_error(p: &gst::Pipeline) -> Option<String> {
    let msg = p.bus()?.pop_filtered(&[gst::MessageType::Error])?;
    let gst::MessageView::Error(e) = msg.view() else { return None };
    Some(e.error().to_string().trim_end_matches('.').to_string())
}

/// The default capture device, when the system has one (`--audio auto` without source audio). Monitors of
/// outputs ("what the speakers play") are only taken when the user made one the default.
pub fn default_device() -> Option<gst::Device> {
    let monitor = gst::DeviceMonitor::new();
    monitor.add_filter(Some("Audio/Source"), None);
    monitor.start().ok()?;
    let devices = monitor.devices();
    monitor.stop();
    let prop = |d: &gst::Device, k: &str| d.properties().and_then(|p| p.get::<String>(k).ok());
    let is_default = |d: &gst::Device| d.properties().and_then(|p| p.get::<bool>("is-default").ok()).unwrap_or(false);
    let is_monitor = |d: &gst::Device| prop(d, "device.class").as_deref() == Some("monitor");
    devices.iter().find(|d| is_default(d)).or_else(|| devices.iter().find(|d| !is_monitor(d))).cloned()
}

/// Opens a device found by [`default_device`].
pub fn open_default(dev: &gst::Device, clock: &ClockRef) -> Result<DeviceInput> {
    let src = dev.create_element(None).map_err(|e| Error::Gst(format!("audio device {}: {e}", dev.display_name())))?;
    open_element(src, format!("'{}' (the default capture device)", dev.display_name()), clock)
}

/// The output pipeline's audio: raw sound in, a raw tee for recordings that encode their own, and one AAC-LC
/// encoder shared by the MP4/FLV recordings and every RTMP stream (as the H.264 encoder is).
pub struct AudioBranch {
    pub appsrc: gst_app::AppSrc,
    raw_tee: gst::Element,
    aac_tee: Option<gst::Element>,
    bitrate_kbps: u32,
}

/// Queue with room for a second of sound: a recording's muxer holds audio until the picture of the same
/// instant (encoded later) arrives.
pub(super) fn audio_queue() -> Result<gst::Element> {
    Ok(gst::ElementFactory::make("queue")
        .property("max-size-buffers", 0u32)
        .property("max-size-bytes", 0u32)
        .property("max-size-time", 2 * gst::ClockTime::SECOND.nseconds())
        .build()?)
}

impl AudioBranch {
    pub fn build(pipeline: &gst::Pipeline, opts: &AudioOptions) -> Result<AudioBranch> {
        let appsrc = gst_app::AppSrc::builder()
            .caps(&raw_caps())
            .format(gst::Format::Time)
            .is_live(true)
            .block(false)
            .max_bytes(RATE as u64 * BYTES_PER_FRAME)
            .leaky_type(gst_app::AppLeakyType::Downstream)
            .build();
        let raw_tee = make("tee")?;
        raw_tee.set_property("allow-not-linked", true);
        pipeline.add_many([appsrc.upcast_ref(), &raw_tee])?;
        appsrc.link(&raw_tee)?;
        Ok(AudioBranch { appsrc, raw_tee, aac_tee: None, bitrate_kbps: opts.bitrate_kbps })
    }

    /// The shared AAC-LC stream (built on first use).
    fn aac(&mut self, pipeline: &gst::Pipeline) -> Result<gst::Element> {
        if let Some(t) = &self.aac_tee {
            return Ok(t.clone());
        }
        let q = audio_queue()?;
        let conv = make("audioconvert")?;
        let enc = make("avenc_aac")?;
        enc.set_property("bitrate", (self.bitrate_kbps * 1000) as i32);
        compensate_priming(&enc);
        let parse = make("aacparse")?;
        let t = make("tee")?;
        pipeline.add_many([&q, &conv, &enc, &parse, &t])?;
        gst::Element::link_many([&q, &conv, &enc, &parse, &t])?;
        self.raw_tee.link(&q)?;
        self.aac_tee = Some(t.clone());
        Ok(t)
    }

    /// A pad of the sound tee a recording takes its sound from: the shared AAC stream (`aac`: MP4 and FLV
    /// muxers) or raw sound (a recording's own audio encoder, from `sink::encoder_chain`).
    pub fn tee_pad(&mut self, pipeline: &gst::Pipeline, aac: bool) -> Result<gst::Pad> {
        let t = if aac { self.aac(pipeline)? } else { self.raw_tee.clone() };
        t.request_pad_simple("src_%u").ok_or_else(|| Error::Gst("the sound tee gave no pad".into()))
    }

    /// An appsink with the shared AAC stream, for the RTMP feeder.
    pub fn rtmp_sink(&mut self, pipeline: &gst::Pipeline) -> Result<gst_app::AppSink> {
        let t = self.aac(pipeline)?;
        let q = audio_queue()?;
        q.set_property_from_str("leaky", "downstream");
        let sink = gst_app::AppSink::builder().sync(false).max_buffers(200).drop(true).build();
        sink.set_property("async", false);
        sink.set_property("wait-on-eos", false);
        pipeline.add_many([&q, sink.upcast_ref()])?;
        gst::Element::link_many([&t, &q, sink.upcast_ref()])?;
        Ok(sink)
    }
}

/// AAC encoders start with one frame (1024 samples) of priming: decoded, every sound comes out that much later
/// unless the container says to skip it, which FLV cannot and GStreamer's fragmented MP4 does not. The first
/// frame is dropped and the rest are stamped one frame earlier, so a decoder plays each sound at its instant.
fn compensate_priming(enc: &gst::Element) {
    let frame = gst::ClockTime::SECOND.mul_div_floor(1024, RATE as u64).unwrap();
    let first = AtomicBool::new(true);
    enc.static_pad("src").unwrap().add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        if first.swap(false, Ordering::Relaxed) {
            return gst::PadProbeReturn::Drop;
        }
        if let Some(gst::PadProbeData::Buffer(b)) = info.data.as_mut() {
            let bm = b.make_mut();
            bm.set_pts(bm.pts().map(|p| p.saturating_sub(frame)));
            bm.set_dts(bm.dts().map(|p| p.saturating_sub(frame)));
        }
        gst::PadProbeReturn::Ok
    });
}

/// Muxers in a live pipeline output what they have once a stream is late by more than the latency they were
/// told; the picture reaches them later than the sound of the same instant (it waits for its matte, then for
/// the encoder), so they are told to wait up to a second for it. Sound that arrives on time costs nothing.
/// Recordings' muxers sit inside their own bins: the search goes into bins (a muxer that does not wait writes
/// the picture ahead of the sound, and FLV then clamps the late sound's timestamps to the picture's).
pub fn let_muxers_wait(pipeline: &gst::Pipeline) {
    for e in pipeline.iterate_recurse().into_iter().flatten() {
        if e.is::<gstreamer_base::Aggregator>() {
            e.set_property("latency", gst::ClockTime::SECOND.nseconds());
        }
    }
}

/// Where `mf-audio` takes sound from.
pub enum AudioIn {
    Source(gst_app::AppSink),
    Device(DeviceInput),
}

impl AudioIn {
    fn sink(&self) -> &gst_app::AppSink {
        match self {
            AudioIn::Source(s) => s,
            AudioIn::Device(d) => &d.sink,
        }
    }
}

/// The running `mf-audio` thread.
pub struct AudioFeed {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<AudioIn>>,
}

impl AudioFeed {
    /// Stops the thread and the device's pipeline (the source's tap stops with the input).
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(AudioIn::Device(d)) = self.thread.take().and_then(|t| t.join().ok()) {
            let _ = d.pipeline.set_state(gst::State::Null);
        }
    }
}

fn duration_of(bytes: usize) -> gst::ClockTime {
    gst::ClockTime::SECOND.mul_div_floor(bytes as u64 / BYTES_PER_FRAME, RATE as u64).unwrap_or(gst::ClockTime::ZERO)
}

/// The feed's state: buffers held until their picture has gone out, and where the timeline has reached.
struct Feed {
    input: AudioIn,
    out: gst_app::AppSrc,
    clock: ClockRef,
    shared: Arc<AudioShared>,
    network: bool,
    /// A network source's sound that came before the stream's offset was known, on the stream's own time
    /// (stamped once the first picture fixes the offset, so the sound of that picture is not lost).
    unstamped: VecDeque<gst::Buffer>,
    held: VecDeque<gst::Buffer>,
    /// End of the last buffer sent: the timeline continues from here. It starts at the first picture.
    next: Option<gst::ClockTime>,
    /// The device stopped (unplugged, server gone): silence from then on.
    gone: bool,
    /// When the input last gave sound.
    last_sound: Instant,
    /// The device's timestamps were found on another clock (said once).
    foreign_clock: bool,
}

impl Feed {
    /// Takes a buffer from the input (waiting up to `wait`), stamped on the picture's time base. False when
    /// the input had none.
    fn take(&mut self, wait: Duration) -> bool {
        if self.gone {
            std::thread::sleep(wait);
            return false;
        }
        let Some(s) = self.input.sink().try_pull_sample(gst::ClockTime::from_nseconds(wait.as_nanos() as u64)) else {
            self.check_gone();
            return false;
        };
        let Some(mut buf) = s.buffer_owned() else { return true };
        let duration = duration_of(buf.size());
        let rt = match (crate::source::running_pts(&s), self.network) {
            (rt, true) => rt,
            (rt, false) => self.device_time(rt, arrival_dts(&s), duration),
        };
        let Some(rt) = rt else { return true };
        self.last_sound = Instant::now();
        let b = buf.make_mut();
        b.set_pts(rt);
        b.set_dts(gst::ClockTime::NONE);
        b.set_duration(duration);
        if !self.network {
            self.held.push_back(buf);
            return true;
        }
        self.unstamped.push_back(buf);
        self.stamp_unstamped();
        true
    }

    /// Moves a network source's sound onto the picture's time base once the stream's offset is known (the
    /// picture learns it from its first frame; until then at most the last second is kept).
    fn stamp_unstamped(&mut self) {
        let off = self.shared.stream_offset_ns.load(Ordering::SeqCst);
        if off == i64::MIN {
            while self.unstamped.len() > 100 {
                self.unstamped.pop_front();
            }
            return;
        }
        while let Some(mut buf) = self.unstamped.pop_front() {
            let rt = buf.pts().unwrap().nseconds() as i64;
            let Some(pts) = rt.checked_add(off).filter(|v| *v >= 0) else { continue };
            buf.make_mut().set_pts(gst::ClockTime::from_nseconds(pts as u64));
            self.held.push_back(buf);
        }
    }

    /// A device buffer's capture time. Devices stamp their sound on the shared clock; one that leaves it
    /// unstamped (pipewiresrc 0.3) or stamps it on a clock of its own (an ALSA plugin's wall-clock time) is
    /// taken at its arrival (the source's `do-timestamp`), less its length: its first sample was captured
    /// that much earlier.
    fn device_time(&mut self, pts: Option<gst::ClockTime>, arrived: Option<gst::ClockTime>, duration: gst::ClockTime) -> Option<gst::ClockTime> {
        let arrived = arrived.or_else(|| self.clock.running_now())?;
        match pts {
            Some(p) if p.nseconds().abs_diff(arrived.nseconds()) < gst::ClockTime::SECOND.nseconds() => Some(p),
            _ => {
                if pts.is_some() && !self.foreign_clock {
                    self.foreign_clock = true;
                    tracing::warn!("audio: the device stamps its sound on a clock of its own; it is timed by its arrival instead");
                }
                Some(arrived.saturating_sub(duration))
            }
        }
    }

    fn check_gone(&mut self) {
        let AudioIn::Device(d) = &self.input else { return };
        if self.gone {
            return;
        }
        let why = bus_error(&d.pipeline).or_else(|| d.sink.is_eos().then(|| "it ended".to_string()));
        if let Some(why) = why {
            self.gone = true;
            tracing::warn!("audio device {} stopped ({why}): the stream goes on with silence", d.name);
        }
    }

    /// Where the sound's timeline has reached. It starts with the first picture: a capture device opens only
    /// after the input gave its first frame, and a stream's sound may begin later than its picture; containers
    /// start every track at zero, so a track that began later would play early by the difference (the hole is
    /// filled with silence). `None` while no picture is out (the last second of sound is kept meanwhile).
    fn timeline(&mut self) -> Option<gst::ClockTime> {
        if self.network {
            self.stamp_unstamped();
        }
        let first = self.shared.first_video_ns.load(Ordering::SeqCst);
        if first == u64::MAX {
            while self.held.len() > 100 {
                self.held.pop_front();
            }
            return None;
        }
        Some(*self.next.get_or_insert(gst::ClockTime::from_nseconds(first)))
    }

    /// Sends every held buffer whose picture has reached the outputs by now.
    fn release(&mut self) {
        let Some(next) = self.timeline() else { return };
        let Some(now) = self.clock.running_now() else { return };
        let delay = gst::ClockTime::from_nseconds(self.shared.video_delay_ns.load(Ordering::Relaxed));
        let Some(due) = now.checked_sub(delay) else { return };
        self.fill_starved(next, due);
        self.send_until(due, false);
    }

    /// At the end of the run: the sound up to where the last picture ends and no further, so a recording's
    /// tracks end together (what the input has not given by then is silence).
    fn finish(&mut self) {
        while self.take(Duration::ZERO) {}
        let (Some(next), end) = (self.timeline(), self.shared.video_end_ns.load(Ordering::SeqCst)) else { return };
        if end == u64::MAX {
            return;
        }
        let end = gst::ClockTime::from_nseconds(end);
        self.send_until(end, true);
        let next = self.next.unwrap_or(next);
        if end > next {
            self.push(silence(next, end - next));
        }
    }

    /// Sends the held buffers that start by `due` (`cut`: and nothing of them past it).
    fn send_until(&mut self, due: gst::ClockTime, cut: bool) {
        while self.held.front().is_some_and(|b| b.pts().is_some_and(|p| p <= due)) {
            let b = self.held.pop_front().unwrap();
            // One unbroken timeline from the first picture on: MP4 fragments and FLV players place sound by
            // its length, not its timestamps, so a hole would put everything after it early and an overlap late.
            // Timestamps jitter (FLV's are whole milliseconds, capture clocks wander): within the tolerance a
            // buffer continues the timeline where the last one ended.
            let n = self.next.unwrap();
            let b = if b.pts().unwrap().nseconds().abs_diff(n.nseconds()) <= TOLERANCE.nseconds() { restamp(b, n) } else { b };
            let Some(b) = trim_before(b, n) else { continue };
            let Some(b) = (if cut { trim_after(b, due) } else { Some(b) }) else { continue };
            let (pts, dur) = (b.pts().unwrap(), b.duration().unwrap_or(gst::ClockTime::ZERO));
            if pts > n {
                tracing::debug!("audio: {} ms hole before {pts}, filled with silence", (pts - n).mseconds());
                self.push(silence(n, pts - n));
            }
            self.next = Some(pts + dur);
            self.push(b);
        }
    }

    /// Silence from `next` on when the input gives nothing: up to `due` once the device is gone, and while it
    /// has been quiet for [`STARVED`] (a device still starting or stalled, a stream whose sound starts later) up
    /// to that far behind `due`, so the muxers (told to wait a second for sound) never hold the picture up.
    /// Sound that turns up for time already filled is cut off when it is released. Sound that keeps coming,
    /// however late its stream carries it, is never replaced.
    fn fill_starved(&mut self, next: gst::ClockTime, due: gst::ClockTime) {
        let until = match (self.gone, self.last_sound.elapsed() >= Duration::from_nanos(STARVED.nseconds())) {
            (true, _) => due,
            (false, true) => due.saturating_sub(STARVED),
            (false, false) => return,
        };
        let covered = self.held.front().and_then(|b| b.pts()).is_some_and(|p| p <= until);
        if covered || until <= next + TOLERANCE {
            return;
        }
        if !self.gone {
            tracing::debug!("audio: no sound for {next}..{until}: silence");
        }
        let gap = silence(next, until - next);
        self.next = Some(next + gap.duration().unwrap_or(gst::ClockTime::ZERO));
        self.push(gap);
    }

    fn push(&mut self, mut b: gst::Buffer) {
        if self.shared.muted.load(Ordering::Relaxed) {
            if let Ok(mut m) = b.make_mut().map_writable() {
                m.as_mut_slice().fill(0);
            }
        }
        let _ = self.out.push_buffer(b);
    }
}

/// The running time a buffer's DTS says (what `do-timestamp` on a live source sets: its arrival).
fn arrival_dts(s: &gst::Sample) -> Option<gst::ClockTime> {
    let dts = s.buffer()?.dts()?;
    match s.segment().and_then(|g| g.downcast_ref::<gst::ClockTime>().cloned()) {
        Some(seg) => seg.to_running_time(dts),
        None => Some(dts),
    }
}

/// How far a buffer's timestamp may stray from where the timeline has reached and still be taken as following
/// on (below one frame at 60 fps).
const TOLERANCE: gst::ClockTime = gst::ClockTime::from_mseconds(15);

/// How long an input may give no sound before silence stands in for it, and how far behind the picture's
/// instant the silence then runs: longer than a capture device's own delay, well inside the second the muxers
/// wait.
const STARVED: gst::ClockTime = gst::ClockTime::from_mseconds(400);

fn restamp(mut b: gst::Buffer, pts: gst::ClockTime) -> gst::Buffer {
    b.make_mut().set_pts(pts);
    b
}

/// `length` of silence at `pts` (whole samples).
fn silence(pts: gst::ClockTime, length: gst::ClockTime) -> gst::Buffer {
    let frames = length.nseconds().mul_div_floor(RATE as u64, gst::ClockTime::SECOND.nseconds()).unwrap_or(0);
    let mut b = gst::Buffer::from_mut_slice(vec![0u8; (frames * BYTES_PER_FRAME) as usize]);
    let bm = b.get_mut().unwrap();
    bm.set_pts(pts);
    bm.set_duration(duration_of(bm.size()));
    b
}

/// The part of `b` from `start` on (`None`: all of it is earlier).
fn trim_before(b: gst::Buffer, start: gst::ClockTime) -> Option<gst::Buffer> {
    let pts = b.pts()?;
    if pts >= start {
        return Some(b);
    }
    let skip = (start - pts).nseconds().mul_div_floor(RATE as u64, gst::ClockTime::SECOND.nseconds())? * BYTES_PER_FRAME;
    if skip >= b.size() as u64 {
        return None;
    }
    let mut t = b.copy_region(gst::BufferCopyFlags::MEMORY | gst::BufferCopyFlags::FLAGS, skip as usize..).ok()?;
    let tm = t.make_mut();
    tm.set_pts(start);
    tm.set_duration(duration_of(tm.size()));
    Some(t)
}

/// The part of `b` before `end` (`None`: none of it).
fn trim_after(b: gst::Buffer, end: gst::ClockTime) -> Option<gst::Buffer> {
    let pts = b.pts()?;
    if pts >= end {
        return None;
    }
    if pts + b.duration()? <= end {
        return Some(b);
    }
    let keep = (end - pts).nseconds().mul_div_floor(RATE as u64, gst::ClockTime::SECOND.nseconds())? * BYTES_PER_FRAME;
    let mut t = b.copy_region(gst::BufferCopyFlags::MEMORY | gst::BufferCopyFlags::FLAGS, ..keep as usize).ok()?;
    let tm = t.make_mut();
    tm.set_pts(pts);
    tm.set_duration(duration_of(tm.size()));
    Some(t)
}

/// Starts `mf-audio`: `input` → hold for the picture's measured delay → `out`.
pub fn spawn_feed(input: AudioIn, out: gst_app::AppSrc, clock: ClockRef, shared: Arc<AudioShared>, network: bool) -> Result<AudioFeed> {
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let mut feed = Feed { input, out, clock, shared, network, unstamped: VecDeque::new(), held: VecDeque::new(), next: None, gone: false, last_sound: Instant::now(), foreign_clock: false };
    let thread = std::thread::Builder::new()
        .name("mf-audio".into())
        .spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                feed.take(Duration::from_millis(10));
                feed.release();
            }
            feed.finish();
            feed.input
        })
        .map_err(|e| Error::io("starting the audio thread", e))?;
    Ok(AudioFeed { stop, thread: Some(thread) })
}

/// Decides where the sound comes from, once the input runs (so the source's tracks are known), and says so.
pub fn resolve(spec: &AudioSpec, tap: Option<SourceTap>, clock: &ClockRef, input_name: &str) -> Result<Option<AudioIn>> {
    let source = tap.filter(|t| t.linked.load(Ordering::SeqCst)).map(|t| t.sink);
    let chosen = match (spec, source) {
        (AudioSpec::None, _) => None,
        (AudioSpec::Source | AudioSpec::Auto, Some(s)) => {
            tracing::info!("audio: the sound of {input_name}");
            Some(AudioIn::Source(s))
        }
        (AudioSpec::Source, None) => {
            return Err(Error::Input {
                path: input_name.to_string(),
                reason: "has no audio track (--audio source): capture a device instead (--audio pulse, alsa:hw:N, \
                         pipewire) or stream without sound (--audio none)"
                    .into(),
            })
        }
        (AudioSpec::Auto, None) => match default_device() {
            Some(d) => {
                let dev = open_default(&d, clock)?;
                tracing::info!("audio: {} ({input_name} has no sound of its own)", dev.name);
                Some(AudioIn::Device(dev))
            }
            None => None,
        },
        (device, _) => {
            let dev = open_device(device, clock)?;
            tracing::info!("audio: capture device {}", dev.name);
            Some(AudioIn::Device(dev))
        }
    };
    if chosen.is_none() {
        tracing::info!(
            "audio: none ({}); the outputs carry picture only",
            if *spec == AudioSpec::None { "--audio none" } else { "the input has no sound and there is no capture device" }
        );
    }
    Ok(chosen)
}

/// Says once which outputs cannot carry sound (a virtual camera, the preview window, PNG folders).
pub fn say_silent_outputs(specs: &[super::OutputSpec]) {
    use super::output::RecordFormat;
    let silent: Vec<String> = specs
        .iter()
        .filter(|o| match o {
            super::OutputSpec::VirtualCamera(_) | super::OutputSpec::Screen => true,
            super::OutputSpec::Record(p) => RecordFormat::of(p) == Some(RecordFormat::Convert(crate::config::Format::Png)),
            super::OutputSpec::Rtmp(_) => false,
        })
        .map(|o| String::from(o.clone()))
        .collect();
    if !silent.is_empty() {
        tracing::info!("audio: {} carry picture only (video devices, windows and PNG frames have no sound)", silent.join(", "));
    }
}

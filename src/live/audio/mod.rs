//! Live sound: the source's own audio or a capture device, delayed by as much as the picture waits for its
//! matte, to every output that carries audio.
//!
//! ```text
//! input pipeline:   uridecodebin ─ audio pad ─ queue ─ audioconvert ─ audioresample ─ S16LE/48k/2 ─ appsink ┐
//! or its own one:   pulsesrc / alsasrc / pipewiresrc ─ audioconvert ─ audioresample ─ S16LE/48k/2 ─ appsink ┤
//!                                                                                                          ▼
//!   [mf-audio]: stamps on the picture's time base, holds each buffer until the picture of its instant has been
//!   handed to the outputs (the measured matte delay), zeroes it while muted; one unbroken timeline from the
//!   first picture to the end of the last, silence where the input has none (before a device's or a stream's
//!   first sound, while it gives nothing for 0.4 s, after the device went)
//!                                                                                                          ▼
//! output pipeline:  appsrc ─ tee ─┬─ queue ─ audioconvert ─ avenc_aac (LC) ─ aacparse ─ tee ─┬─ mp4mux / flvmux (recordings)
//!                                 │                                                          └─ appsink ─▶ RTMP feeder
//!                                 └─ queue ─ the .mov / .mkv / .webm recording's own audio encoder
//! ```
//!
//! Audio and video carry the same running time (capture time on the shared clock), so the muxers interleave
//! them in sync; the hold only keeps the two arriving together. The audio path never waits on the model: a
//! frame that is dropped or shown with an older mask changes nothing here.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use serde::{Deserialize, Serialize};

use super::output::ClockRef;
use crate::error::{Error, Result};

mod feed;
pub use feed::{spawn_feed, AudioFeed, AudioIn};

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
                 (ALSA), or run with {}",
                crate::hint::AUDIO.to("none")
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
/// the picture ahead of the sound, and FLV then clamps the late sound's timestamps to the picture's). The wait
/// counts from the first buffer's running time: counted from zero (the default), it had run out before the
/// first picture arrived (the output pipeline runs a while before the first matte), and the first ~two frames
/// went out ahead of their sound (FLV sound starting 33–66 ms late: tests/live_audio.rs).
pub fn let_muxers_wait(pipeline: &gst::Pipeline) {
    for e in pipeline.iterate_recurse().into_iter().flatten() {
        if e.is::<gstreamer_base::Aggregator>() {
            e.set_property("latency", gst::ClockTime::SECOND.nseconds());
            e.set_property_from_str("start-time-selection", "first");
        }
    }
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
                reason: format!(
                    "has no audio track ({}): capture a device instead ({}, or alsa:hw:N, pipewire) or stream without \
                     sound ({})",
                    crate::hint::AUDIO.to("source"),
                    crate::hint::AUDIO.to("pulse"),
                    crate::hint::AUDIO.to("none")
                ),
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
            if *spec == AudioSpec::None {
                crate::hint::AUDIO.to("none")
            } else {
                "the input has no sound and there is no capture device".to_string()
            }
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

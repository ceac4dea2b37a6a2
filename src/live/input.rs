//! Live inputs: a webcam (V4L2), a network stream (RTSP, RTMP, SRT, HTTP, UDP), a test pattern, or a file
//! played at its own pace. Each becomes a GStreamer pipeline ending in an appsink that never blocks a live
//! source (it keeps the newest few frames and drops older ones): RGBA in system memory, or — for files and
//! network streams on the GPU stages ([`super::decode`]) — NV12 in CUDA memory straight from nvcodec.
//!
//! ```text
//! v4l2src ─ caps(WxH@fps, raw or MJPEG) ─ decodebin ─┐
//! videotestsrc is-live ───────────────────────────────┼─ videoconvert ─ videoscale ─ videorate ─ RGBA caps ─ appsink
//! uridecodebin (rtsp://, rtmp://, srt://, file) ──────┘                                        (drop, max 2)
//! uridecodebin ─ nvh264dec … ─ NV12 (memory:CUDAMemory) ─────────────────────────────────────── appsink (drop, max 2)
//! ```

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use serde::{Deserialize, Serialize};

use crate::cuda::gst_cuda::{self, GstCuda};
use crate::error::{Error, Result};

/// Where live frames come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum InputSpec {
    /// `testsrc` or `testsrc:PATTERN` (a videotestsrc pattern: smpte, ball, snow, …), produced live.
    TestPattern(String),
    /// `/dev/videoN` or `v4l2:/dev/videoN`.
    Webcam(String),
    /// rtsp://, rtsps://, rtmp://, rtmps://, srt://, http(s)://, udp://, file://
    Uri(String),
    /// A local file, played at its own frame rate as if it were live.
    File(String),
}

impl std::str::FromStr for InputSpec {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("the input is empty: give testsrc, /dev/videoN, a URI or a file".into());
        }
        if s == "testsrc" {
            return Ok(InputSpec::TestPattern("smpte".into()));
        }
        if let Some(p) = s.strip_prefix("testsrc:") {
            return Ok(InputSpec::TestPattern(p.to_string()));
        }
        if let Some(d) = s.strip_prefix("v4l2:") {
            return Ok(InputSpec::Webcam(d.to_string()));
        }
        if s.starts_with("/dev/video") {
            return Ok(InputSpec::Webcam(s.to_string()));
        }
        if let Some((scheme, _)) = s.split_once("://") {
            const OK: &[&str] = &["rtsp", "rtsps", "rtspt", "rtmp", "rtmps", "srt", "http", "https", "udp", "file"];
            if OK.contains(&scheme.to_ascii_lowercase().as_str()) {
                return Ok(InputSpec::Uri(s.to_string()));
            }
            return Err(format!(
                "input '{s}': the scheme '{scheme}' is not supported; use rtsp://, rtmp://, srt://, http(s)://, udp:// or file://"
            ));
        }
        Ok(InputSpec::File(s.to_string()))
    }
}

impl TryFrom<String> for InputSpec {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        s.parse()
    }
}

impl From<InputSpec> for String {
    fn from(i: InputSpec) -> String {
        match i {
            InputSpec::TestPattern(p) => format!("testsrc:{p}"),
            InputSpec::Webcam(d) => d,
            InputSpec::Uri(u) | InputSpec::File(u) => u,
        }
    }
}

impl InputSpec {
    /// A short name for messages.
    pub fn describe(&self) -> String {
        match self {
            InputSpec::TestPattern(p) => format!("test pattern '{p}'"),
            InputSpec::Webcam(d) => format!("webcam {d}"),
            InputSpec::Uri(u) => u.clone(),
            InputSpec::File(f) => format!("file {f}"),
        }
    }
}

/// What to ask the source for; unset fields take what it offers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Capture {
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub fps: Option<u32>,
}

/// The input pipeline and its appsink.
pub struct LiveInput {
    pub pipeline: gst::Pipeline,
    pub appsink: gst_app::AppSink,
    /// Source frames are timestamped on this pipeline's clock; true for cameras, test patterns, network.
    pub live: bool,
    /// The source waits for us (a file, or a network source that is not live): its appsink blocks instead of
    /// dropping and the capture thread takes every frame, so none is lost. Set when the source is known.
    pub paced: Arc<AtomicBool>,
    /// Decoding into CUDA memory: the appsink takes NV12 in CUDA memory.
    pub cuda: bool,
    /// Why the stream cannot be decoded into CUDA memory, once its decoder shows it (it gives system memory
    /// only): the input is then started again decoding to system memory.
    pub cuda_refused: Arc<Mutex<Option<String>>>,
}

impl LiveInput {
    /// See [`LiveInput::cuda_refused`].
    pub fn cuda_refused(&self) -> Option<String> {
        self.cuda_refused.lock().ok().and_then(|r| r.clone())
    }
}

fn make(name: &str) -> Result<gst::Element> {
    gst::ElementFactory::make(name)
        .build()
        .map_err(|_| Error::Gst(format!("element '{name}' is missing: install {}", crate::sink::package_of(name))))
}

/// Checks, without opening it, that the input is there: the camera's device node, the file.
pub fn check(spec: &InputSpec) -> Result<()> {
    match spec {
        InputSpec::Webcam(dev) if !Path::new(dev).exists() => Err(Error::Input {
            path: dev.clone(),
            reason: "no such video device: list cameras with `v4l2-ctl --list-devices` (package v4l-utils) and check \
                     the user is in the 'video' group"
                .into(),
        }),
        InputSpec::File(f) => crate::source::input_uri(f).map(|_| ()),
        _ => Ok(()),
    }
}

/// Builds (but does not start) the input pipeline. With `cuda` (a file or a network stream on the GPU stages),
/// decoded frames stay in CUDA memory in that context; every other input is decoded to RGBA in system memory.
pub fn build(spec: &InputSpec, cap: Capture, cuda: Option<&GstCuda>) -> Result<LiveInput> {
    gst::init()?;
    let pipeline = gst::Pipeline::with_name("matteflow-input");
    let is_file = matches!(spec, InputSpec::File(_));
    let network_or_file = matches!(spec, InputSpec::File(_) | InputSpec::Uri(_));
    let cuda = cuda.filter(|_| network_or_file);
    let (head, appsink) = match cuda {
        Some(c) => {
            c.attach(&pipeline);
            let sink = gst_cuda::device_appsink(2, false);
            pipeline.add(&sink)?;
            (None, sink)
        }
        None => {
            let (head, sink) = host_branch(&pipeline, cap)?;
            (Some(head), sink)
        }
    };
    appsink.set_max_buffers(2);
    // A live source cannot wait: the oldest frame goes (the capture thread takes them at once). A file can.
    appsink.set_drop(!is_file);
    // A file is paced to its own frame rate as if it were a camera; live sources come at their pace.
    appsink.set_property("sync", is_file);
    let paced = Arc::new(AtomicBool::new(is_file));
    let cuda_refused: Arc<Mutex<Option<String>>> = Default::default();
    let live = match (spec, &head) {
        (InputSpec::TestPattern(p), Some(head)) => {
            test_pattern(&pipeline, p, cap, head)?;
            true
        }
        (InputSpec::Webcam(dev), Some(head)) => {
            check(spec)?;
            webcam(&pipeline, dev, cap, head)?;
            true
        }
        (InputSpec::Uri(uri) | InputSpec::File(uri), _) => {
            let uri = if is_file { crate::source::input_uri(uri)? } else { uri.clone() };
            let dec = uri_source(&pipeline, &uri, &appsink, &paced)?;
            match &head {
                Some(head) => crate::source::link_video_pads(&dec, head),
                None => link_cuda_video(&dec, &appsink, cuda_refused.clone()),
            }
            !is_file
        }
        _ => return Err(Error::config(format!("{} cannot be decoded into CUDA memory", spec.describe()))),
    };
    Ok(LiveInput { pipeline, appsink, live, paced, cuda: cuda.is_some(), cuda_refused })
}

/// videoconvert ! videoscale ! videorate ! RGBA caps (the size and rate asked for, square pixels) ! appsink,
/// added to `pipeline`; returns its head and the appsink.
fn host_branch(pipeline: &gst::Pipeline, cap: Capture) -> Result<(gst::Element, gst_app::AppSink)> {
    let convert = gst::ElementFactory::make("videoconvert").property("n-threads", 2u32).build()?;
    let scale = make("videoscale")?;
    let rate = make("videorate")?;
    // videorate only duplicates/drops to reach a requested rate; it must not invent frames when the
    // source stalls (a live source's gaps are real).
    rate.set_property("drop-only", true);
    let mut caps = gst::Caps::builder("video/x-raw").field("format", "RGBA");
    if let Some(w) = cap.width {
        caps = caps.field("width", w as i32);
    }
    if let Some(h) = cap.height {
        caps = caps.field("height", h as i32);
    }
    if let Some(f) = cap.fps {
        caps = caps.field("framerate", gst::Fraction::new(f as i32, 1));
    }
    let caps = caps.field("pixel-aspect-ratio", gst::Fraction::new(1, 1)).build();
    let capsfilter = gst::ElementFactory::make("capsfilter").property("caps", &caps).build()?;
    let appsink = gst_app::AppSink::builder().build();
    pipeline.add_many([&convert, &scale, &rate, &capsfilter, appsink.upcast_ref()])?;
    gst::Element::link_many([&convert, &scale, &rate, &capsfilter, appsink.upcast_ref()])?;
    Ok((convert, appsink))
}

/// videotestsrc is-live with `pattern`, at the size and rate asked for, linked to `head`.
fn test_pattern(pipeline: &gst::Pipeline, p: &str, cap: Capture, head: &gst::Element) -> Result<()> {
    let src = make("videotestsrc")?;
    src.set_property("is-live", true);
    let known = src
        .find_property("pattern")
        .and_then(|ps| gst::glib::EnumClass::with_type(ps.value_type()))
        .is_some_and(|c| c.value_by_nick(p).is_some() || c.value_by_name(p).is_some());
    if !known {
        return Err(Error::config(format!(
            "test pattern '{p}' is unknown: try smpte, ball, snow, colors, circular, gamut, pinwheel (see \
             `gst-inspect-1.0 videotestsrc`)"
        )));
    }
    src.set_property_from_str("pattern", p);
    // Ask the test source for the requested size directly (no scaling work).
    let mut sc = gst::Caps::builder("video/x-raw");
    sc = sc.field("width", cap.width.unwrap_or(1280) as i32).field("height", cap.height.unwrap_or(720) as i32);
    sc = sc.field("framerate", gst::Fraction::new(cap.fps.unwrap_or(30) as i32, 1));
    let f = gst::ElementFactory::make("capsfilter").property("caps", sc.build()).build()?;
    pipeline.add_many([&src, &f])?;
    gst::Element::link_many([&src, &f, head])?;
    Ok(())
}

/// v4l2src `dev` in the mode asked for (raw or MJPEG, as the camera gives it) ! decodebin, linked to `head`.
fn webcam(pipeline: &gst::Pipeline, dev: &str, cap: Capture, head: &gst::Element) -> Result<()> {
    let src = make("v4l2src")?;
    src.set_property("device", dev);
    // Let the camera pick raw or MJPEG at the requested mode (most webcams only give 720p30 as MJPEG).
    let mut any = gst::Caps::new_empty();
    for media in ["video/x-raw", "image/jpeg"] {
        let mut b = gst::Caps::builder(media);
        if let Some(w) = cap.width {
            b = b.field("width", w as i32);
        }
        if let Some(h) = cap.height {
            b = b.field("height", h as i32);
        }
        if let Some(f) = cap.fps {
            b = b.field("framerate", gst::Fraction::new(f as i32, 1));
        }
        if let Some(c) = any.get_mut() {
            c.append(b.build());
        }
    }
    let f = gst::ElementFactory::make("capsfilter").property("caps", &any).build()?;
    let dec = make("decodebin")?;
    pipeline.add_many([&src, &f, &dec])?;
    gst::Element::link_many([&src, &f, &dec])?;
    crate::source::link_video_pads(&dec, head);
    Ok(())
}

/// uridecodebin for `uri`, added to `pipeline` (its pads are linked by the caller). Network sources keep their
/// jitter buffers short, this is live; a source that is not live (a file served over HTTP, say) is paced to its
/// own frame rate, like a local file.
fn uri_source(pipeline: &gst::Pipeline, uri: &str, appsink: &gst_app::AppSink, paced: &Arc<AtomicBool>) -> Result<gst::Element> {
    let dec = make("uridecodebin")?;
    dec.set_property("uri", uri);
    let (sink, paced) = (appsink.clone(), paced.clone());
    dec.connect("source-setup", false, move |args| {
        let src = args[1].get::<gst::Element>().ok()?;
        let live = src.downcast_ref::<gstreamer_base::BaseSrc>().is_none_or(|b| gstreamer_base::prelude::BaseSrcExt::is_live(b));
        if !live {
            tracing::info!("input {} is not live: played at its own frame rate", src.factory().map(|f| f.name().to_string()).unwrap_or_default());
            sink.set_property("sync", true);
            sink.set_property("drop", false);
            paced.store(true, Ordering::SeqCst);
        }
        if src.has_property("latency") {
            // rtspsrc takes ms as guint, srtsrc as gint: from a string fits both.
            src.set_property_from_str("latency", "200");
        }
        None
    });
    pipeline.add(&dec)?;
    Ok(dec)
}

/// Links the first video pad of `dec` to the CUDA-memory appsink, having asked its decoder for CUDA memory. A
/// decoder that can only give system memory (no nvcodec decoder for the codec) is left unlinked and the reason
/// noted in `refused`: the caller starts the input again decoding to system memory.
fn link_cuda_video(dec: &gst::Element, appsink: &gst_app::AppSink, refused: Arc<Mutex<Option<String>>>) {
    gst_cuda::prefer_cuda_output(dec);
    let sink = appsink.clone();
    dec.connect_pad_added(move |_, pad| {
        if !crate::source::pad_media_type(pad).is_some_and(|t| t.starts_with("video/")) {
            return;
        }
        let Some(sink_pad) = sink.static_pad("sink").filter(|p| !p.is_linked()) else { return };
        if !gst_cuda::pad_offers_cuda(pad) {
            if let Ok(mut r) = refused.lock() {
                let decoder = decoder_behind(pad).unwrap_or_else(|| "its decoder".into());
                r.get_or_insert_with(|| format!("{decoder} gives system memory only: nvcodec has no decoder here for this stream's codec"));
            }
            return;
        }
        if let Err(e) = pad.link(&sink_pad) {
            if let Ok(mut r) = refused.lock() {
                r.get_or_insert_with(|| format!("the decoder's CUDA memory cannot be linked ({e:?})"));
            }
        }
    });
}

/// The name of the decoder element behind a pad decodebin exposed (through its ghost pads), e.g. `avdec_vp9`.
fn decoder_behind(pad: &gst::Pad) -> Option<String> {
    let mut p = pad.clone();
    // Ghost pads of uridecodebin and decodebin, then the decoder's own source pad.
    for _ in 0..8 {
        match p.downcast_ref::<gst::GhostPad>().and_then(|g| g.target()) {
            Some(t) => p = t,
            None => break,
        }
    }
    p.parent_element().and_then(|e| e.factory()).map(|f| f.name().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CUDA-memory branch's link: a decoder that only gives system memory (e.g. avdec_h264; on a machine
    /// where nvcodec decodes H.264 the link succeeds instead) is left unlinked, and the refusal names it, so
    /// that the run starts again decoding to system memory.
    #[test]
    fn a_decoder_without_cuda_memory_is_named_and_left_unlinked() {
        gst::init().unwrap();
        let clip = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/media/carphone_pristine.mp4");
        let uri = crate::source::input_uri(clip.to_str().unwrap()).unwrap();
        let pipeline = gst::Pipeline::new();
        let sink = gst_cuda::device_appsink(2, false);
        pipeline.add(&sink).unwrap();
        let dec = uri_source(&pipeline, &uri, &sink, &Arc::new(AtomicBool::new(true))).unwrap();
        let refused: Arc<Mutex<Option<String>>> = Default::default();
        link_cuda_video(&dec, &sink, refused.clone());
        let _ = pipeline.set_state(gst::State::Playing);
        let linked = || sink.static_pad("sink").unwrap().is_linked();
        let t = std::time::Instant::now();
        while refused.lock().unwrap().is_none() && !linked() && t.elapsed() < std::time::Duration::from_secs(10) {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        pipeline.set_state(gst::State::Null).unwrap();
        let why = refused.lock().unwrap().clone();
        if gst::ElementFactory::find("nvh264dec").is_some() {
            assert!(linked() && why.is_none(), "nvcodec is here, but: {why:?}");
        } else {
            let why = why.expect("a refusal");
            assert!(!linked());
            // Named by its element (avdec_h264 here), not "its decoder".
            assert!(why.contains("gives system memory only") && why.contains("dec") && !why.starts_with("its decoder"), "{why}");
        }
    }
}
